//! The prediction market of 0xDeCA10B, in Rust ([`Market`], the contract's reference) and on
//! chain ([`EvmMarket`], the `PredictionMarket` contract in revm).
//!
//! The initiator commits a hidden test set as the keccak of each of its pieces and funds a
//! bounty. During participation contributors add samples paying the Deposit-Refund-Take
//! cost as a deposit, and the model trains on them. At the end the initiator reveals the
//! pieces (each checked against its hash), and the contract runs `rounds` reward rounds:
//! each starts from a fresh copy of the initial model (checked by its `stateHash`) and
//! replays the contributions in order, skipping those that have lost their deposit. A
//! contribution that raises the number of revealed test samples predicted right by `d > 0`
//! scores `d` in that round (the test set is evaluated again only when the update changed the
//! model); one that lowers it forfeits its whole deposit to the pool and is
//! left out of later rounds. Round `r` of `R` pays `floor(pool / (R - r + 1))` (nothing if no
//! contribution scored) to the round's positive scores in proportion, rounded down; after
//! the last round the rest of the pool returns to the initiator, and every contributor
//! claims what is left of its deposits plus its shares.

use alloy_primitives::{Address, B256, Bytes, U256, keccak256};
use alloy_sol_types::SolConstructor;

use crate::chain::bindings::PredictionMarket;
use crate::chain::{Chain, ChainStats, Revert, amount, contribution_id, pack, participant};
use crate::data::Sample;
use crate::drt::{COST_WEIGHT_SCALE, DrtParams, Reject};
use crate::model::{ChainModel, hand_over};
use crate::{Classifier, SimError};

/// The market's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MarketParams {
    /// Cost weight of the deposit, scaled by [`COST_WEIGHT_SCALE`] (the Deposit-Refund-Take
    /// cost formula).
    pub cost_weight_e6: u64,
    /// Reward rounds (1 to 255).
    pub rounds: u8,
    /// Test reviews the initiator commits (the first ones of the test file).
    pub test_size: usize,
    /// Pieces they are committed and revealed in.
    pub pieces: usize,
    /// The bounty, in whole tokens.
    pub bounty: u64,
}

impl MarketParams {
    /// Checks the numbers.
    pub fn new(
        cost_weight: f64,
        rounds: u8,
        test_size: usize,
        pieces: usize,
        bounty: u64,
    ) -> Result<Self, SimError> {
        let cost = DrtParams::new(cost_weight, 0, 8 * crate::drt::DAY)?;
        if rounds == 0 {
            return Err(SimError::Config(
                "the market needs at least one reward round".into(),
            ));
        }
        if pieces == 0 || test_size < pieces {
            return Err(SimError::Config(format!(
                "the market's test set ({test_size} reviews) must have at least one review per piece ({pieces} pieces), and there must be a piece"
            )));
        }
        Ok(Self {
            cost_weight_e6: cost.cost_weight_e6,
            rounds,
            test_size,
            pieces,
            bounty,
        })
    }

    /// 3 rounds, 100 test reviews in 4 pieces, a bounty of 10,000 tokens, cost weight 1.
    pub fn reference() -> Self {
        Self {
            cost_weight_e6: COST_WEIGHT_SCALE,
            rounds: 3,
            test_size: 100,
            pieces: 4,
            bounty: 10_000,
        }
    }

    fn cost(&self, dt: u64) -> Option<u128> {
        DrtParams {
            cost_weight_e6: self.cost_weight_e6,
            refund_wait: 0,
            any_address_claim_wait: 0,
        }
        .cost(dt)
    }
}

/// The test set as committed: `test_size` samples cut into `pieces` consecutive pieces whose
/// sizes differ by at most one, each encoded as the contract reads it
/// (`[label][n: u16][n features: u16]` per sample, big-endian).
pub fn test_pieces(test: &[Sample], test_size: usize, pieces: usize) -> Vec<Vec<u8>> {
    let test = &test[..test_size.min(test.len())];
    let mut out = Vec::with_capacity(pieces);
    let mut start = 0;
    for k in 0..pieces {
        let len = test.len() / pieces + usize::from(k < test.len() % pieces);
        let mut b = Vec::new();
        for s in &test[start..start + len] {
            b.push(s.label);
            b.extend_from_slice(&(s.features.len() as u16).to_be_bytes());
            b.extend_from_slice(&pack(&s.features));
        }
        out.push(b);
        start += len;
    }
    out
}

/// The market's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Phase {
    /// Contributions accepted.
    Participation,
    /// Test pieces being revealed.
    Reveal,
    /// Reward rounds.
    Reward,
    /// Claims.
    Done,
}

/// One contribution's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarketContribution {
    /// The submitting participant.
    pub sender: usize,
    /// The submitted label.
    pub label: u8,
    /// Deposit paid.
    pub deposit: u128,
    /// What is left of it.
    pub balance: u128,
    /// Whether it was claimed.
    pub claimed: bool,
}

/// A closed reward round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RoundOutcome {
    /// Paid to the round's positive scores (base units; as a string in JSON).
    #[serde(with = "crate::report::u128_string")]
    pub pot: u128,
    /// Sum of the positive scores.
    pub positive: u64,
    /// Contributions that scored.
    pub scored: u64,
    /// Contributions that forfeited their deposit in this round.
    pub forfeited: u64,
    /// Revealed test samples the round's final model predicts right.
    pub correct: u64,
}

/// The market's rules in Rust.
#[derive(Debug, Clone)]
pub struct Market<M> {
    /// Parameters.
    pub params: MarketParams,
    /// The model trained during participation.
    pub model: M,
    /// The initial model every round starts from.
    pub initial: M,
    /// The current round's model.
    pub reward_model: Option<M>,
    /// Phase.
    pub phase: Phase,
    /// Participant number of the initiator.
    pub initiator: usize,
    /// Time of the last accepted addition.
    pub last_update_time: u64,
    /// Free balances.
    pub balances: Vec<u128>,
    /// Ever minted.
    pub total_minted: u128,
    /// Deposits, pool and unclaimed pots.
    pub escrowed: u128,
    /// Bounty pool not yet assigned to a round.
    pub pool: u128,
    /// Committed piece hashes.
    pub hashes: Vec<B256>,
    /// Revealed test samples.
    pub test: Vec<Sample>,
    /// Pieces revealed.
    pub revealed: usize,
    /// Contributions, by id.
    pub contributions: Vec<MarketContribution>,
    /// Current round (1-based; 0 before the first).
    pub round: u8,
    /// Whether a round is open.
    pub round_open: bool,
    /// Next contribution to process.
    pub next_index: usize,
    /// Test samples right before the next contribution.
    pub prev_correct: u64,
    /// Closed rounds, in order.
    pub rounds: Vec<RoundOutcome>,
    /// Scores per round (index round − 1), per contribution.
    pub scores: Vec<Vec<u64>>,
}

impl<M: Classifier + Clone> Market<M> {
    /// A market deployed by participant `initiator` around `model`, committing `pieces`.
    pub fn new(params: MarketParams, model: M, initiator: usize, pieces: &[Vec<u8>]) -> Self {
        Self {
            params,
            initial: model.clone(),
            model,
            reward_model: None,
            phase: Phase::Participation,
            initiator,
            last_update_time: 0,
            balances: Vec::new(),
            total_minted: 0,
            escrowed: 0,
            pool: 0,
            hashes: pieces.iter().map(keccak256).collect(),
            test: Vec::new(),
            revealed: 0,
            contributions: Vec::new(),
            round: 0,
            round_open: false,
            next_index: 0,
            prev_correct: 0,
            rounds: Vec::new(),
            scores: Vec::new(),
        }
    }

    fn grow(&mut self, who: usize) {
        if self.balances.len() <= who {
            self.balances.resize(who + 1, 0);
        }
    }

    /// Mints `amount` to `who`.
    pub fn fund(&mut self, who: usize, amount: u128) {
        self.grow(who);
        self.balances[who] += amount;
        self.total_minted += amount;
    }

    /// Mints `amount` into the pool.
    pub fn add_bounty(&mut self, amount: u128) {
        self.pool += amount;
        self.escrowed += amount;
        self.total_minted += amount;
    }

    /// Free balance of `who`.
    pub fn balance(&self, who: usize) -> u128 {
        self.balances.get(who).copied().unwrap_or(0)
    }

    /// `who` adds a sample offering at most `max_deposit`; returns its id and the deposit.
    pub fn add_data(
        &mut self,
        now: u64,
        who: usize,
        features: &[u32],
        label: u8,
        max_deposit: u128,
    ) -> Result<(usize, u128), Reject> {
        if self.phase != Phase::Participation {
            return Err(Reject::WrongPhase);
        }
        if now <= self.last_update_time {
            return Err(Reject::TooSoon);
        }
        let cost = self
            .params
            .cost(now - self.last_update_time)
            .ok_or(Reject::TooSoon)?;
        if cost > max_deposit {
            return Err(Reject::DepositTooLow);
        }
        if self.balance(who) < cost {
            return Err(Reject::InsufficientBalance);
        }
        self.balances[who] -= cost;
        self.escrowed += cost;
        self.last_update_time = now;
        self.contributions.push(MarketContribution {
            sender: who,
            label,
            deposit: cost,
            balance: cost,
            claimed: false,
        });
        self.model.update(features, label);
        Ok((self.contributions.len() - 1, cost))
    }

    /// The initiator ends participation.
    pub fn end_market(&mut self) -> Result<(), Reject> {
        if self.phase != Phase::Participation {
            return Err(Reject::WrongPhase);
        }
        self.phase = Phase::Reveal;
        Ok(())
    }

    /// Reveals piece `k`, whose samples are `samples` and encoding `piece`.
    pub fn reveal(&mut self, k: usize, piece: &[u8], samples: &[Sample]) -> Result<(), Reject> {
        if self.phase != Phase::Reveal {
            return Err(Reject::WrongPhase);
        }
        if k != self.revealed {
            return Err(Reject::WrongPiece);
        }
        if keccak256(piece) != self.hashes[k] {
            return Err(Reject::PieceMismatch);
        }
        self.test.extend_from_slice(samples);
        self.revealed += 1;
        if self.revealed == self.hashes.len() {
            self.phase = Phase::Reward;
        }
        Ok(())
    }

    fn correct(&self) -> u64 {
        let Some(m) = &self.reward_model else {
            return 0;
        };
        self.test
            .iter()
            .filter(|s| m.predict(&s.features) == s.label)
            .count() as u64
    }

    /// Opens the next round on a fresh copy of the initial model.
    pub fn start_round(&mut self) -> Result<(), Reject> {
        if self.phase != Phase::Reward {
            return Err(Reject::WrongPhase);
        }
        if self.round_open {
            return Err(Reject::RoundOpen);
        }
        self.reward_model = Some(self.initial.clone());
        self.round += 1;
        self.next_index = 0;
        self.round_open = true;
        self.scores.push(vec![0; self.contributions.len()]);
        self.rounds.push(RoundOutcome {
            pot: 0,
            positive: 0,
            scored: 0,
            forfeited: 0,
            correct: 0,
        });
        self.prev_correct = self.correct();
        if self.contributions.is_empty() {
            self.close_round();
        }
        Ok(())
    }

    /// Replays the next contribution; returns the change in test samples right.
    pub fn process(&mut self, features: &[u32]) -> Result<i64, Reject> {
        if self.phase != Phase::Reward {
            return Err(Reject::WrongPhase);
        }
        if !self.round_open {
            return Err(Reject::NoRoundOpen);
        }
        let id = self.next_index;
        let r = usize::from(self.round) - 1;
        let mut delta = 0i64;
        if self.contributions[id].balance > 0 {
            let label = self.contributions[id].label;
            let changed = match &mut self.reward_model {
                Some(m) => m.update(features, label),
                None => false,
            };
            let prev = self.prev_correct;
            let correct = if changed { self.correct() } else { prev };
            if correct > prev {
                self.scores[r][id] = correct - prev;
                self.rounds[r].positive += correct - prev;
                self.rounds[r].scored += 1;
            } else if correct < prev {
                let c = &mut self.contributions[id];
                self.pool += c.balance;
                c.balance = 0;
                self.rounds[r].forfeited += 1;
            }
            self.prev_correct = correct;
            delta = correct as i64 - prev as i64;
        }
        self.next_index = id + 1;
        if id + 1 == self.contributions.len() {
            self.close_round();
        }
        Ok(delta)
    }

    fn close_round(&mut self) {
        let r = usize::from(self.round) - 1;
        self.round_open = false;
        let mut pot = 0;
        if self.rounds[r].positive > 0 {
            pot = self.pool / u128::from(self.params.rounds - self.round + 1);
            self.pool -= pot;
        }
        self.rounds[r].pot = pot;
        self.rounds[r].correct = self.prev_correct;
        if self.round == self.params.rounds {
            self.phase = Phase::Done;
            let left = self.pool;
            self.pool = 0;
            self.escrowed -= left;
            let i = self.initiator;
            self.grow(i);
            self.balances[i] += left;
        }
    }

    /// What `claim(id)` pays.
    pub fn claimable(&self, id: usize) -> u128 {
        let c = &self.contributions[id];
        if c.claimed {
            return 0;
        }
        let mut amount = c.balance;
        for (r, o) in self.rounds.iter().enumerate() {
            let s = self.scores[r].get(id).copied().unwrap_or(0);
            if s > 0 {
                amount += o.pot * u128::from(s) / u128::from(o.positive);
            }
        }
        amount
    }

    /// The submitter claims contribution `id`.
    pub fn claim(&mut self, who: usize, id: usize) -> Result<u128, Reject> {
        if self.phase != Phase::Done {
            return Err(Reject::WrongPhase);
        }
        let c = &self.contributions[id];
        if c.sender != who {
            return Err(Reject::NotSubmitter);
        }
        if c.claimed {
            return Err(Reject::AlreadyClaimed);
        }
        let amount = self.claimable(id);
        let c = &mut self.contributions[id];
        c.claimed = true;
        c.balance = 0;
        self.escrowed -= amount;
        self.grow(who);
        self.balances[who] += amount;
        Ok(amount)
    }

    /// Whether `total_minted == balances + escrowed`.
    pub fn conserved(&self) -> bool {
        self.total_minted == self.balances.iter().sum::<u128>() + self.escrowed
    }
}

/// The market on chain.
#[derive(Debug)]
pub struct EvmMarket {
    /// The EVM.
    pub chain: Chain,
    /// The initiator's address.
    pub operator: Address,
    /// The participation model.
    pub model: Address,
    /// The current round's model.
    pub reward_model: Option<Address>,
    /// The mechanism contract.
    pub market: Address,
}

impl EvmMarket {
    /// Deploys `model` and the market committing `pieces` from participant `initiator` at
    /// `now`, hands the model over, funds participant `i` with `funds[i]` and mints the
    /// bounty.
    pub fn deploy<M: ChainModel>(
        params: &MarketParams,
        model: &M,
        initiator: usize,
        pieces: &[Vec<u8>],
        funds: &[u128],
        bounty: u128,
        now: u64,
    ) -> Result<Self, SimError> {
        let mut chain = Chain::new();
        let operator = participant(initiator);
        let model_addr = model.deploy(&mut chain, operator, now)?;
        let ctor = PredictionMarket::constructorCall {
            model_: model_addr,
            costWeight_: U256::from(params.cost_weight_e6),
            rounds_: params.rounds,
            testHashes_: pieces.iter().map(keccak256).collect(),
        };
        let code = [PredictionMarket::BYTECODE.as_ref(), &ctor.abi_encode()].concat();
        let market = chain.deploy(now, operator, Bytes::from(code))?;
        hand_over(&mut chain, now, operator, model_addr, market)?;
        for (i, &a) in funds.iter().enumerate() {
            chain.must_send(
                now,
                operator,
                market,
                &PredictionMarket::fundCall {
                    to: participant(i),
                    amount: U256::from(a),
                },
            )?;
        }
        chain.must_send(
            now,
            operator,
            market,
            &PredictionMarket::addBountyCall {
                amount: U256::from(bounty),
            },
        )?;
        Ok(Self {
            chain,
            operator,
            model: model_addr,
            reward_model: None,
            market,
        })
    }

    /// What the EVM has executed so far.
    pub fn stats(&self) -> ChainStats {
        self.chain.stats
    }

    /// `addData` from participant `who`.
    pub fn add_data(
        &mut self,
        now: u64,
        who: usize,
        features: &[u32],
        label: u8,
        max_deposit: u128,
    ) -> Result<Result<(usize, u128), Revert>, SimError> {
        let call = PredictionMarket::addDataCall {
            features: pack(features),
            label,
            maxDeposit: U256::from(max_deposit),
        };
        match self.chain.send(now, participant(who), self.market, &call)? {
            Ok(s) => Ok(Ok((contribution_id(s.value.id)?, amount(s.value.cost)?))),
            Err(r) => Ok(Err(r)),
        }
    }

    /// `endMarket` from the initiator.
    pub fn end_market(&mut self, now: u64) -> Result<Result<(), Revert>, SimError> {
        Ok(self
            .chain
            .send(
                now,
                self.operator,
                self.market,
                &PredictionMarket::endMarketCall {},
            )?
            .map(|_| ()))
    }

    /// `reveal(k, piece)` from the initiator.
    pub fn reveal(
        &mut self,
        now: u64,
        k: usize,
        piece: &[u8],
    ) -> Result<Result<(), Revert>, SimError> {
        let call = PredictionMarket::revealCall {
            k: U256::from(k),
            piece: Bytes::copy_from_slice(piece),
        };
        Ok(self
            .chain
            .send(now, self.operator, self.market, &call)?
            .map(|_| ()))
    }

    /// Deploys a fresh copy of `initial` from the initiator, hands it to the market and
    /// opens the next round on it.
    pub fn start_round<M: ChainModel>(
        &mut self,
        now: u64,
        initial: &M,
    ) -> Result<Result<(), Revert>, SimError> {
        let fresh = initial.deploy(&mut self.chain, self.operator, now)?;
        hand_over(&mut self.chain, now, self.operator, fresh, self.market)?;
        self.reward_model = Some(fresh);
        Ok(self
            .chain
            .send(
                now,
                self.operator,
                self.market,
                &PredictionMarket::startRoundCall { fresh },
            )?
            .map(|_| ()))
    }

    /// `process(features)` from the initiator.
    pub fn process(&mut self, now: u64, features: &[u32]) -> Result<Result<i64, Revert>, SimError> {
        let call = PredictionMarket::processCall {
            features: pack(features),
        };
        match self.chain.send(now, self.operator, self.market, &call)? {
            Ok(s) => Ok(Ok(i64::try_from(s.value)
                .map_err(|_| SimError::Chain("process delta overflows".into()))?)),
            Err(r) => Ok(Err(r)),
        }
    }

    /// `claim(id)` from participant `who`.
    pub fn claim(
        &mut self,
        now: u64,
        who: usize,
        id: usize,
    ) -> Result<Result<u128, Revert>, SimError> {
        let call = PredictionMarket::claimCall { id: U256::from(id) };
        match self.chain.send(now, participant(who), self.market, &call)? {
            Ok(s) => Ok(Ok(amount(s.value)?)),
            Err(r) => Ok(Err(r)),
        }
    }

    /// Free balance of participant `who` on chain.
    pub fn balance(&mut self, now: u64, who: usize) -> Result<u128, SimError> {
        amount(self.chain.view(
            now,
            self.market,
            &PredictionMarket::balanceOfCall(participant(who)),
        )?)
    }

    /// `(totalMinted, escrowed, pool)` on chain.
    pub fn totals(&mut self, now: u64) -> Result<(u128, u128, u128), SimError> {
        let m = amount(self.chain.view(
            now,
            self.market,
            &PredictionMarket::totalMintedCall {},
        )?)?;
        let e = amount(
            self.chain
                .view(now, self.market, &PredictionMarket::escrowedCall {})?,
        )?;
        let p = amount(
            self.chain
                .view(now, self.market, &PredictionMarket::poolCall {})?,
        )?;
        Ok((m, e, p))
    }

    /// The round's pot and positive score sum on chain.
    pub fn round(&mut self, now: u64, r: u8) -> Result<(u128, u64), SimError> {
        let pot = amount(self.chain.view(
            now,
            self.market,
            &PredictionMarket::roundPotCall(U256::from(r)),
        )?)?;
        let pos = self.chain.view(
            now,
            self.market,
            &PredictionMarket::roundPositiveCall(U256::from(r)),
        )?;
        let pos = u64::try_from(pos).map_err(|_| SimError::Chain("score overflows".into()))?;
        Ok((pot, pos))
    }

    /// The initial model's hash the market recorded.
    pub fn initial_model_hash(&mut self, now: u64) -> Result<B256, SimError> {
        self.chain
            .view(now, self.market, &PredictionMarket::initialModelHashCall {})
    }
}
