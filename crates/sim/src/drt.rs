//! Deposit, Refund and Take: the rules in Rust ([`Drt`], the contract's reference) and on
//! chain ([`EvmDrt`], the `DepositRefundTake` and `SparsePerceptron` contracts in revm).
//!
//! Both follow the Python simulator of "Sharing Updatable Models on Blockchain" (0xDeCA10B,
//! `Stakeable`), in integers:
//! - **deposit**: `cost = max(1, floor(cost_weight * 60 / floor(sqrt(dt))))` whole tokens, `dt`
//!   the seconds since the last accepted addition by anyone; `dt = 0` is rejected; the sender
//!   offers at most `max_deposit` and is charged only `cost`; the model trains on the sample;
//! - **refund**: the submitter, once, when the contribution is *more* than `refund_wait` old
//!   and the model now predicts its label, gets all that is left and one good contribution;
//! - **take**: anyone else with good contributions, once per contribution, when it is more
//!   than `refund_wait` old and the model disagrees with it, takes `initial_deposit *
//!   good(reporter) / total_good` (all that is left if that rounds to 0 or exceeds it);
//! - **take all**: once it is `any_address_claim_wait` old, anyone, the submitter too, takes
//!   all that is left.
//!
//! Amounts are base units, [`TOKEN_UNIT`] per token; the Python original's floats become
//! integer divisions rounded down, at 1e-18 of a token.

use alloy_primitives::{Address, Bytes, U256};
use alloy_sol_types::{SolCall, SolConstructor};

use crate::chain::bindings::{DepositRefundTake, SparsePerceptron};
use crate::chain::{Chain, ChainStats, Revert, amount, contribution_id, pack, participant};
use crate::model::{ChainModel, hand_over};
use crate::{Classifier, SimError};

/// Base units per token (the contract's `TOKEN_UNIT`).
pub const TOKEN_UNIT: u128 = 1_000_000_000_000_000_000;
/// Fixed-point scale of the cost weight (the contract's `COST_WEIGHT_SCALE`).
pub const COST_WEIGHT_SCALE: u64 = 1_000_000;
/// One day in seconds.
pub const DAY: u64 = 86_400;

/// Mechanism parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DrtParams {
    /// Cost weight scaled by [`COST_WEIGHT_SCALE`].
    pub cost_weight_e6: u64,
    /// Seconds before a refund or take (strictly more is needed).
    pub refund_wait: u64,
    /// Seconds after which anyone may take all that is left.
    pub any_address_claim_wait: u64,
}

impl DrtParams {
    /// Checks the windows (`any_address_claim_wait > refund_wait + 7 days`, as the contract
    /// does) and scales the cost weight (non-negative, at most 1e6).
    pub fn new(
        cost_weight: f64,
        refund_wait: u64,
        any_address_claim_wait: u64,
    ) -> Result<Self, SimError> {
        if !(0.0..=1e6).contains(&cost_weight) {
            return Err(SimError::Config(format!(
                "cost weight {cost_weight} is not between 0 and 1e6"
            )));
        }
        if any_address_claim_wait <= refund_wait.saturating_add(7 * DAY) {
            return Err(SimError::Config(format!(
                "the any-address claim wait ({any_address_claim_wait} s) must exceed the refund wait ({refund_wait} s) by more than 7 days"
            )));
        }
        Ok(Self {
            cost_weight_e6: (cost_weight * COST_WEIGHT_SCALE as f64).round() as u64,
            refund_wait,
            any_address_claim_wait,
        })
    }

    /// The reference's defaults: cost weight 1, refund after 1 day, take-all after 9 days.
    pub fn reference() -> Self {
        Self {
            cost_weight_e6: COST_WEIGHT_SCALE,
            refund_wait: DAY,
            any_address_claim_wait: 9 * DAY,
        }
    }

    /// The deposit for an addition `dt` seconds after the last one, or `None` for `dt = 0`.
    pub fn cost(&self, dt: u64) -> Option<u128> {
        if dt == 0 {
            return None;
        }
        let coins = (u128::from(self.cost_weight_e6) * 60)
            / (u128::from(dt.isqrt()) * u128::from(COST_WEIGHT_SCALE));
        Some(coins.max(1) * TOKEN_UNIT)
    }
}

/// Why the mechanism refused a call; each is the contract's custom error of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Reject {
    /// No time has passed since the last accepted addition.
    TooSoon,
    /// The offered deposit is below the cost.
    DepositTooLow,
    /// The balance is below the cost.
    InsufficientBalance,
    /// A refund asked by someone other than the submitter.
    NotSubmitter,
    /// This address has already claimed from this contribution.
    AlreadyClaimed,
    /// Nothing is left of the deposit.
    NothingLeft,
    /// Not more than the refund wait has passed.
    TooEarly,
    /// Refund: the model does not predict the submitted label.
    ModelDisagrees,
    /// Take: the model predicts the submitted label.
    ModelAgrees,
    /// Take of one's own contribution before the take-all wait.
    CannotTakeOwn,
    /// Take by an address without good contributions.
    NoGoodContributions,
    /// Market: the call does not belong to the current phase.
    WrongPhase,
    /// Market: test pieces are revealed in order.
    WrongPiece,
    /// Market: the revealed piece does not match its committed hash.
    PieceMismatch,
    /// Market: a round is already open.
    RoundOpen,
    /// Market: no round is open.
    NoRoundOpen,
}

impl Reject {
    /// The Solidity error's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::TooSoon => "TooSoon",
            Self::DepositTooLow => "DepositTooLow",
            Self::InsufficientBalance => "InsufficientBalance",
            Self::NotSubmitter => "NotSubmitter",
            Self::AlreadyClaimed => "AlreadyClaimed",
            Self::NothingLeft => "NothingLeft",
            Self::TooEarly => "TooEarly",
            Self::ModelDisagrees => "ModelDisagrees",
            Self::ModelAgrees => "ModelAgrees",
            Self::CannotTakeOwn => "CannotTakeOwn",
            Self::NoGoodContributions => "NoGoodContributions",
            Self::WrongPhase => "WrongPhase",
            Self::WrongPiece => "WrongPiece",
            Self::PieceMismatch => "PieceMismatch",
            Self::RoundOpen => "RoundOpen",
            Self::NoRoundOpen => "NoRoundOpen",
        }
    }
}

/// One added sample's deposit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contribution {
    /// The submitting participant.
    pub sender: usize,
    /// When it was added.
    pub added_at: u64,
    /// The submitted label.
    pub label: u8,
    /// The deposit charged.
    pub initial_deposit: u128,
    /// What is left to claim.
    pub claimable: u128,
    /// Who has claimed from it (refund or take).
    pub claimed_by: Vec<usize>,
}

/// A successful take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Take {
    /// Amount taken.
    pub amount: u128,
    /// Whether it was the take-all after `any_address_claim_wait`.
    pub all: bool,
}

/// The mechanism's state and rules in Rust: the reference the contract is checked against.
#[derive(Debug, Clone)]
pub struct Drt<M> {
    /// Parameters.
    pub params: DrtParams,
    /// The classifier trained with every accepted sample.
    pub model: M,
    /// Time of the last accepted addition.
    pub last_update_time: u64,
    /// Good contributions of everyone.
    pub total_good: u64,
    /// Good contributions per participant.
    pub num_good: Vec<u64>,
    /// Free balance per participant.
    pub balances: Vec<u128>,
    /// Ever minted.
    pub total_minted: u128,
    /// Deposits still claimable.
    pub escrowed: u128,
    /// Every contribution, by id.
    pub contributions: Vec<Contribution>,
}

impl<M: Classifier> Drt<M> {
    /// A mechanism deployed at time `now` around `model`.
    pub fn new(params: DrtParams, model: M, now: u64) -> Self {
        Self {
            params,
            model,
            last_update_time: now,
            total_good: 0,
            num_good: Vec::new(),
            balances: Vec::new(),
            total_minted: 0,
            escrowed: 0,
            contributions: Vec::new(),
        }
    }

    fn grow(&mut self, who: usize) {
        if self.balances.len() <= who {
            self.balances.resize(who + 1, 0);
            self.num_good.resize(who + 1, 0);
        }
    }

    /// Mints `amount` to `who`.
    pub fn fund(&mut self, who: usize, amount: u128) {
        self.grow(who);
        self.balances[who] += amount;
        self.total_minted += amount;
    }

    /// Free balance of `who`.
    pub fn balance(&self, who: usize) -> u128 {
        self.balances.get(who).copied().unwrap_or(0)
    }

    /// Good contributions of `who`.
    pub fn good(&self, who: usize) -> u64 {
        self.num_good.get(who).copied().unwrap_or(0)
    }

    /// The deposit an addition at `now` costs.
    pub fn add_cost(&self, now: u64) -> Result<u128, Reject> {
        if now <= self.last_update_time {
            return Err(Reject::TooSoon);
        }
        self.params
            .cost(now - self.last_update_time)
            .ok_or(Reject::TooSoon)
    }

    /// `who` adds a sample offering at most `max_deposit`; returns its id and the cost.
    pub fn add_data(
        &mut self,
        now: u64,
        who: usize,
        features: &[u32],
        label: u8,
        max_deposit: u128,
    ) -> Result<(usize, u128), Reject> {
        let cost = self.add_cost(now)?;
        if cost > max_deposit {
            return Err(Reject::DepositTooLow);
        }
        if self.balance(who) < cost {
            return Err(Reject::InsufficientBalance);
        }
        self.grow(who);
        self.balances[who] -= cost;
        self.escrowed += cost;
        self.last_update_time = now;
        let id = self.contributions.len();
        self.contributions.push(Contribution {
            sender: who,
            added_at: now,
            label,
            initial_deposit: cost,
            claimable: cost,
            claimed_by: Vec::new(),
        });
        self.model.update(features, label);
        Ok((id, cost))
    }

    fn contribution(&self, id: usize) -> &Contribution {
        &self.contributions[id]
    }

    /// The submitter's refund of contribution `id` (whose features are `features`).
    pub fn refund(
        &mut self,
        now: u64,
        who: usize,
        id: usize,
        features: &[u32],
    ) -> Result<u128, Reject> {
        let c = self.contribution(id);
        if c.sender != who {
            return Err(Reject::NotSubmitter);
        }
        if c.claimed_by.contains(&who) {
            return Err(Reject::AlreadyClaimed);
        }
        let amount = c.claimable;
        if amount == 0 {
            return Err(Reject::NothingLeft);
        }
        if now - c.added_at <= self.params.refund_wait {
            return Err(Reject::TooEarly);
        }
        if self.model.predict(features) != c.label {
            return Err(Reject::ModelDisagrees);
        }
        self.grow(who);
        self.num_good[who] += 1;
        self.total_good += 1;
        let c = &mut self.contributions[id];
        c.claimed_by.push(who);
        c.claimable = 0;
        self.escrowed -= amount;
        self.balances[who] += amount;
        Ok(amount)
    }

    /// `who` takes from contribution `id` (whose features are `features`).
    pub fn report(
        &mut self,
        now: u64,
        who: usize,
        id: usize,
        features: &[u32],
    ) -> Result<Take, Reject> {
        let c = self.contribution(id);
        let left = c.claimable;
        if left == 0 {
            return Err(Reject::NothingLeft);
        }
        let age = now - c.added_at;
        let all = age >= self.params.any_address_claim_wait;
        let amount = if all {
            left
        } else {
            if c.sender == who {
                return Err(Reject::CannotTakeOwn);
            }
            if c.claimed_by.contains(&who) {
                return Err(Reject::AlreadyClaimed);
            }
            if age <= self.params.refund_wait {
                return Err(Reject::TooEarly);
            }
            if self.model.predict(features) == c.label {
                return Err(Reject::ModelAgrees);
            }
            let mine = self.good(who);
            if mine == 0 {
                return Err(Reject::NoGoodContributions);
            }
            let share = c.initial_deposit * u128::from(mine) / u128::from(self.total_good);
            if share == 0 || share > left {
                left
            } else {
                share
            }
        };
        self.grow(who);
        let c = &mut self.contributions[id];
        c.claimed_by.push(who);
        c.claimable = left - amount;
        self.escrowed -= amount;
        self.balances[who] += amount;
        Ok(Take { amount, all })
    }

    /// Whether `total_minted == balances + escrowed` and `escrowed` is the sum of what is
    /// left of every contribution.
    pub fn conserved(&self) -> bool {
        let left: u128 = self.contributions.iter().map(|c| c.claimable).sum();
        self.total_minted == self.balances.iter().sum::<u128>() + self.escrowed
            && left == self.escrowed
    }
}

/// The mechanism on chain: `SparsePerceptron` and `DepositRefundTake` deployed in revm.
#[derive(Debug)]
pub struct EvmDrt {
    /// The EVM.
    pub chain: Chain,
    /// Deployer and minter.
    pub operator: Address,
    /// The model contract.
    pub model: Address,
    /// The mechanism contract.
    pub drt: Address,
}

impl EvmDrt {
    /// Deploys `model` (with its weights) and the mechanism at time `now`, hands the model
    /// to the mechanism, and funds participant `i` with `funds[i]` base units.
    pub fn deploy<M: ChainModel>(
        params: &DrtParams,
        model: &M,
        funds: &[u128],
        now: u64,
    ) -> Result<Self, SimError> {
        let mut chain = Chain::new();
        let operator = participant(usize::MAX);
        let model_addr = model.deploy(&mut chain, operator, now)?;
        let ctor = DepositRefundTake::constructorCall {
            model_: model_addr,
            costWeight_: U256::from(params.cost_weight_e6),
            refundWait_: params.refund_wait,
            anyAddressClaimWait_: params.any_address_claim_wait,
        };
        let code = [DepositRefundTake::BYTECODE.as_ref(), &ctor.abi_encode()].concat();
        let drt = chain.deploy(now, operator, Bytes::from(code))?;
        hand_over(&mut chain, now, operator, model_addr, drt)?;
        for (i, &amount) in funds.iter().enumerate() {
            chain.must_send(
                now,
                operator,
                drt,
                &DepositRefundTake::fundCall {
                    to: participant(i),
                    amount: U256::from(amount),
                },
            )?;
        }
        Ok(Self {
            chain,
            operator,
            model: model_addr,
            drt,
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
        let call = DepositRefundTake::addDataCall {
            features: pack(features),
            label,
            maxDeposit: U256::from(max_deposit),
        };
        match self.chain.send(now, participant(who), self.drt, &call)? {
            Ok(s) => Ok(Ok((contribution_id(s.value.id)?, amount(s.value.cost)?))),
            Err(r) => Ok(Err(r)),
        }
    }

    /// `refund` from participant `who`.
    pub fn refund(
        &mut self,
        now: u64,
        who: usize,
        id: usize,
        features: &[u32],
    ) -> Result<Result<u128, Revert>, SimError> {
        let call = DepositRefundTake::refundCall {
            id: U256::from(id),
            features: pack(features),
        };
        match self.chain.send(now, participant(who), self.drt, &call)? {
            Ok(s) => Ok(Ok(amount(s.value)?)),
            Err(r) => Ok(Err(r)),
        }
    }

    /// `report` from participant `who`.
    pub fn report(
        &mut self,
        now: u64,
        who: usize,
        id: usize,
        features: &[u32],
    ) -> Result<Result<u128, Revert>, SimError> {
        let call = DepositRefundTake::reportCall {
            id: U256::from(id),
            features: pack(features),
        };
        match self.chain.send(now, participant(who), self.drt, &call)? {
            Ok(s) => Ok(Ok(amount(s.value)?)),
            Err(r) => Ok(Err(r)),
        }
    }

    /// Free balance of participant `who` on chain.
    pub fn balance(&mut self, now: u64, who: usize) -> Result<u128, SimError> {
        let v = self.chain.view(
            now,
            self.drt,
            &DepositRefundTake::balanceOfCall(participant(who)),
        )?;
        amount(v)
    }

    /// `(totalMinted, escrowed, totalGood)` on chain.
    pub fn totals(&mut self, now: u64) -> Result<(u128, u128, u64), SimError> {
        let minted = amount(self.chain.view(
            now,
            self.drt,
            &DepositRefundTake::totalMintedCall {},
        )?)?;
        let escrowed = amount(self.chain.view(
            now,
            self.drt,
            &DepositRefundTake::escrowedCall {},
        )?)?;
        let good = self
            .chain
            .view(now, self.drt, &DepositRefundTake::totalGoodCall {})?;
        Ok((minted, escrowed, good))
    }

    /// The model's prediction on chain.
    pub fn predict(&mut self, now: u64, features: &[u32]) -> Result<u8, SimError> {
        self.chain.view(
            now,
            self.model,
            &SparsePerceptron::predictCall {
                features: pack(features),
            },
        )
    }

    /// The perceptron's weights, bias and samples seen, read from chain (the model must be
    /// a `SparsePerceptron`).
    pub fn read_model(&mut self, now: u64) -> Result<(Vec<i128>, i128, u64), SimError> {
        crate::perceptron::read_chain(&mut self.chain, self.model, now)
    }

    /// Sends any call of the mechanism contract (tests use it for calls the driver never
    /// makes, such as a refund with the wrong features).
    pub fn send_raw<C: SolCall>(
        &mut self,
        now: u64,
        who: usize,
        call: &C,
    ) -> Result<Result<C::Return, Revert>, SimError> {
        Ok(self
            .chain
            .send(now, participant(who), self.drt, call)?
            .map(|s| s.value))
    }
}
