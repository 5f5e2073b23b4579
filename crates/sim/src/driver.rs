//! The event-driven driver: agents take turns on a virtual clock, add samples, and sweep the
//! unclaimed deposits, exactly as the Python simulator of 0xDeCA10B does.
//!
//! A priority queue holds `(time, agent)`. On its turn an agent with a positive balance takes
//! the next unused training sample (a Bad agent flips its label; anyone may flip it by
//! mistake); a Good agent submits only with probability `last accuracy + 0.15`; the deposit
//! offered is drawn and must not exceed the balance; a refused submission leaves the sample
//! for the next agent. The agent is queued again after a drawn wait while its balance is
//! positive. Then it sweeps the unclaimed contributions older than the refund wait, in the
//! order they were added: those older than the take-all wait it takes; its own it asks to be
//! refunded; others' it reports. Once the data is used up only take-alls are tried. The run
//! ends when the data is used up and nothing is left to claim (or nobody can act). Accuracy
//! on the test set is evaluated at the first turn after 10,000 s, then every 200,000 s, and
//! at the end.
//!
//! Points ([`crate::points`]) runs the same loop without money: additions are free, agents
//! act while data is left, and each asks for the point of its own contributions. The
//! prediction market ([`crate::market`]) runs the same turns for participation (deposits,
//! no claims), then the initiator ends it, reveals the test set and runs the reward rounds,
//! and everyone claims. Rings of colluding agents ([`AgentSpec::ring`]) repeat a few samples.
//!
//! Every decision is made by the Rust reference of the rules ([`Drt`]); with the EVM engine
//! each accepted call is also sent to the contracts and its result must match, and at every
//! evaluation the model's weights and every balance are read back from chain and compared.
//! Calls the rules refuse are not sent (an agent would check with a free `eth_call` first)
//! unless `send_rejected` is set, in which case each is sent and must revert with the same
//! error.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::fmt::Debug;
use std::time::Instant;

use cohort_core::ChaCha8;
use rand::Rng;

use crate::SimError;
use crate::agent::{AgentKind, AgentSpec};
use crate::chain::Revert;
use crate::data::{Dataset, Sample};
use crate::drt::{DAY, Drt, DrtParams, EvmDrt, Reject, TOKEN_UNIT};
use crate::market::{EvmMarket, Market, MarketParams, RoundOutcome, test_pieces};
use crate::model::{ChainModel, Model, ModelKind};
use crate::perceptron::{EtaSchedule, FitConfig};
use crate::points::{EvmPoints, PointsRules};
use crate::report::{
    AccuracyPoint, AgentReport, BalancePoint, BalanceUnit, MarketReport, RunReport,
};

/// Where the mechanism runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// The contracts' bytecode in revm, checked against the Rust reference.
    Evm,
    /// The Rust reference alone (no EVM).
    Native,
}

/// How many training samples fit the initial model.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InitialPortion {
    /// The reference's rule: 8% when the whole training file is used, else 100 samples.
    Auto,
    /// This fraction of the training samples.
    Fraction(f64),
    /// This many samples.
    Samples(usize),
}

impl InitialPortion {
    /// The number of initial samples for `data` (at least 1, leaving at least 1).
    pub fn count(&self, data: &Dataset) -> Result<usize, SimError> {
        let n = data.train.len();
        let k = match *self {
            Self::Auto if n == data.available_train => (n as f64 * 0.08) as usize,
            Self::Auto => 100,
            Self::Fraction(f) if (0.0..1.0).contains(&f) => (n as f64 * f) as usize,
            Self::Fraction(f) => {
                return Err(SimError::Config(format!(
                    "initial fraction {f} is not in [0, 1)"
                )));
            }
            Self::Samples(k) => k,
        };
        if k == 0 || k >= n {
            return Err(SimError::Config(format!(
                "{k} initial samples out of {n}: the initial model needs at least one and the agents at least one"
            )));
        }
        Ok(k)
    }
}

/// Which incentive mechanism a run simulates.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum MechanismKind {
    /// Deposit, Refund and Take ([`crate::drt`]).
    #[default]
    Drt,
    /// Points, no money ([`crate::points`]).
    Points,
    /// The prediction market ([`crate::market`]).
    Market,
}

impl MechanismKind {
    /// `drt`, `points` or `market`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Drt => "drt",
            Self::Points => "points",
            Self::Market => "market",
        }
    }
}

/// Everything a run depends on besides the data.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SimConfig {
    /// Seeds the initial fit's shuffling and every draw of the agents.
    pub seed: u64,
    /// The mechanism (default `drt`).
    #[serde(default)]
    pub mechanism: MechanismKind,
    /// The classifier (default `perceptron`).
    #[serde(default)]
    pub model: ModelKind,
    /// The prediction market's parameters (used by `market` only; its cost weight is the
    /// one of `drt`).
    #[serde(default = "MarketParams::reference")]
    pub market: MarketParams,
    /// The mechanism's parameters.
    pub drt: DrtParams,
    /// Participants, in order (index = participant number).
    pub agents: Vec<AgentSpec>,
    /// Samples for the initial model.
    pub initial: InitialPortion,
    /// First accuracy evaluation at the first turn after this time (s).
    pub eval_first: u64,
    /// Then every this many seconds.
    pub eval_interval: u64,
    /// Balances are sampled for the time series every this many seconds.
    pub series_interval: u64,
    /// A Good agent submits with probability `last accuracy + submit_bonus`.
    pub submit_bonus: f64,
    /// The initial fit.
    pub fit: FitConfig,
    /// The perceptron's learning rate.
    pub eta: EtaSchedule,
    /// Where the mechanism runs.
    pub engine: Engine,
    /// Also send the calls the rules refuse (they must revert with the same error).
    pub send_rejected: bool,
    /// Samples each ring of colluding agents ([`AgentSpec::ring`]) takes before its members
    /// only resubmit those (default 1).
    #[serde(default = "default_ring_targets")]
    pub ring_targets: usize,
}

fn default_ring_targets() -> usize {
    1
}

impl SimConfig {
    /// The reference setup: one Good and one Bad agent, cost weight 1, refund after 1 day,
    /// take-all after 9, the EVM engine.
    pub fn reference(seed: u64) -> Self {
        Self {
            seed,
            mechanism: MechanismKind::Drt,
            model: ModelKind::Perceptron,
            market: MarketParams::reference(),
            drt: DrtParams::reference(),
            agents: vec![AgentSpec::good("good"), AgentSpec::bad("bad")],
            initial: InitialPortion::Auto,
            eval_first: 10_000,
            eval_interval: 200_000,
            series_interval: 6 * 3600,
            submit_bonus: 0.15,
            fit: FitConfig::default(),
            eta: EtaSchedule::default(),
            engine: Engine::Evm,
            send_rejected: false,
            ring_targets: 1,
        }
    }

    /// Checks the agents and intervals.
    pub fn validate(&self) -> Result<(), SimError> {
        if self.agents.is_empty() {
            return Err(SimError::Config("no agents".into()));
        }
        let mut names = std::collections::BTreeSet::new();
        for a in &self.agents {
            a.validate()?;
            if !names.insert(a.name.as_str()) {
                return Err(SimError::Config(format!("two agents named {:?}", a.name)));
            }
        }
        if self.ring_targets == 0 && self.agents.iter().any(|a| a.ring.is_some()) {
            return Err(SimError::Config(
                "colluding agents need at least one target sample (ring_targets)".into(),
            ));
        }
        if self.eval_interval == 0 || self.series_interval == 0 {
            return Err(SimError::Config(
                "evaluation and series intervals must be positive".into(),
            ));
        }
        Ok(())
    }
}

/// The mechanism as the driver sees it: the reference, and the chain when there is one.
struct Mechanism {
    rules: Drt<Model>,
    evm: Option<EvmDrt>,
    send_rejected: bool,
    transactions: u64,
    rejections: BTreeMap<&'static str, u64>,
}

fn check<T: PartialEq + Debug, U: Debug>(
    what: &str,
    want: &Result<T, Reject>,
    got: &Result<U, Revert>,
    same: impl Fn(&T, &U) -> bool,
) -> Result<(), SimError> {
    let ok = match (want, got) {
        (Ok(a), Ok(b)) => same(a, b),
        (Err(r), Err(v)) => r.name() == v.name,
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(SimError::Diverged {
            call: what.to_string(),
            reference: format!("{want:?}"),
            chain: format!("{got:?}"),
        })
    }
}

impl Mechanism {
    fn tally<T>(&mut self, r: &Result<T, Reject>) {
        match r {
            Ok(_) => self.transactions += 1,
            Err(e) => *self.rejections.entry(e.name()).or_default() += 1,
        }
    }

    fn sends<T>(&self, r: &Result<T, Reject>) -> bool {
        r.is_ok() || self.send_rejected
    }

    fn add_data(
        &mut self,
        now: u64,
        who: usize,
        s: &[u32],
        label: u8,
        max: u128,
    ) -> Result<Result<(usize, u128), Reject>, SimError> {
        let want = self.rules.add_data(now, who, s, label, max);
        if self.sends(&want)
            && let Some(evm) = &mut self.evm
        {
            check(
                "addData",
                &want,
                &evm.add_data(now, who, s, label, max)?,
                |a, b| a == b,
            )?;
        }
        self.tally(&want);
        Ok(want)
    }

    fn refund(
        &mut self,
        now: u64,
        who: usize,
        id: usize,
        s: &[u32],
    ) -> Result<Result<u128, Reject>, SimError> {
        let want = self.rules.refund(now, who, id, s);
        if self.sends(&want)
            && let Some(evm) = &mut self.evm
        {
            check("refund", &want, &evm.refund(now, who, id, s)?, |a, b| {
                a == b
            })?;
        }
        self.tally(&want);
        Ok(want)
    }

    fn report(
        &mut self,
        now: u64,
        who: usize,
        id: usize,
        s: &[u32],
    ) -> Result<Result<crate::drt::Take, Reject>, SimError> {
        let want = self.rules.report(now, who, id, s);
        if self.sends(&want)
            && let Some(evm) = &mut self.evm
        {
            check("report", &want, &evm.report(now, who, id, s)?, |a, b| {
                a.amount == *b
            })?;
        }
        self.tally(&want);
        Ok(want)
    }

    /// Test accuracy of the model; with the EVM, first reads the model and every balance back
    /// from chain and checks them against the reference.
    fn evaluate(&mut self, now: u64, test: &[Sample], agents: usize) -> Result<f64, SimError> {
        if let Some(evm) = &mut self.evm {
            self.rules
                .model
                .check_chain(&mut evm.chain, evm.model, now)?;
            for i in 0..agents {
                let b = evm.balance(now, i)?;
                if b != self.rules.balance(i) {
                    return Err(SimError::Diverged {
                        call: format!("balanceOf(participant {i})"),
                        reference: self.rules.balance(i).to_string(),
                        chain: b.to_string(),
                    });
                }
            }
            let (minted, escrowed, good) = evm.totals(now)?;
            if (minted, escrowed, good)
                != (
                    self.rules.total_minted,
                    self.rules.escrowed,
                    self.rules.total_good,
                )
            {
                return Err(SimError::Diverged {
                    call: "totals".into(),
                    reference: format!(
                        "{:?}",
                        (
                            self.rules.total_minted,
                            self.rules.escrowed,
                            self.rules.total_good
                        )
                    ),
                    chain: format!("{:?}", (minted, escrowed, good)),
                });
            }
        }
        Ok(crate::perceptron::accuracy(&self.rules.model, test))
    }
}

struct Unclaimed {
    added_at: u64,
    sender: usize,
    sample: usize,
    id: usize,
}

/// Runs one simulation of `cfg.mechanism` on `data`.
pub fn run(cfg: &SimConfig, data: &Dataset) -> Result<RunReport, SimError> {
    cfg.validate()?;
    match cfg.mechanism {
        MechanismKind::Drt => run_drt(cfg, data),
        MechanismKind::Points => run_points(cfg, data),
        MechanismKind::Market => run_market(cfg, data),
    }
}

/// What every mechanism starts from: the RNG, the initial model fit off-chain and the data
/// left for the agents.
struct Start<'a> {
    started: Instant,
    rng: ChaCha8,
    n_init: usize,
    remaining: &'a [Sample],
    model: Model,
    init_epochs: u32,
    initial_accuracy: f64,
}

fn start<'a>(cfg: &SimConfig, data: &'a Dataset) -> Result<Start<'a>, SimError> {
    let started = Instant::now();
    let mut rng = ChaCha8::new(cfg.seed);
    let n_init = cfg.initial.count(data)?;
    let (init, remaining) = data.train.split_at(n_init);
    let (model, init_epochs) = cfg
        .model
        .fit(data.num_words, init, &cfg.fit, cfg.eta, &mut rng);
    let initial_accuracy = crate::perceptron::accuracy(&model, &data.test);
    Ok(Start {
        started,
        rng,
        n_init,
        remaining,
        model,
        init_epochs,
        initial_accuracy,
    })
}

/// The samples each ring of colluding agents repeats.
///
/// A ring's first `targets` submissions take new samples, as anyone's do; after that its
/// members take turns resubmitting those same samples (with the label they choose: a Bad
/// colluder flips it), so the model learns their labels for them and their own later
/// refunds (DRT, Points) succeed. Members do not report each other's contributions.
struct Rings {
    targets: usize,
    chosen: BTreeMap<u32, Vec<usize>>,
    turn: BTreeMap<u32, usize>,
}

impl Rings {
    fn new(targets: usize) -> Self {
        Self {
            targets,
            chosen: BTreeMap::new(),
            turn: BTreeMap::new(),
        }
    }

    /// The sample `spec` would submit now, and whether it is a new one (`next`).
    fn peek(&self, spec: &AgentSpec, next: usize) -> (usize, bool) {
        let Some(ring) = spec.ring else {
            return (next, true);
        };
        let chosen = self.chosen.get(&ring).map_or(&[][..], Vec::as_slice);
        if chosen.len() < self.targets {
            return (next, true);
        }
        let turn = self.turn.get(&ring).copied().unwrap_or(0);
        (chosen[turn % chosen.len()], false)
    }

    /// Records that `spec` submitted `sample`.
    fn commit(&mut self, spec: &AgentSpec, sample: usize, fresh: bool) {
        let Some(ring) = spec.ring else {
            return;
        };
        if fresh {
            self.chosen.entry(ring).or_default().push(sample);
        } else {
            *self.turn.entry(ring).or_default() += 1;
        }
    }

    /// Whether agents `a` and `b` are in the same ring.
    fn mates(&self, agents: &[AgentSpec], a: usize, b: usize) -> bool {
        matches!((agents[a].ring, agents[b].ring), (Some(x), Some(y)) if x == y)
    }
}

/// The label agent `spec` submits for `sample` (Bad flips; anyone may err).
fn choose_label(spec: &AgentSpec, sample: &Sample, rng: &mut ChaCha8) -> u8 {
    let mut label = sample.label;
    if spec.flip_labels {
        label = 1 - label;
    }
    if spec.mistake_rate > 0.0 && rng.random::<f64>() < spec.mistake_rate {
        label = 1 - label;
    }
    label
}

fn run_drt(cfg: &SimConfig, data: &Dataset) -> Result<RunReport, SimError> {
    let Start {
        started,
        mut rng,
        n_init,
        remaining,
        model,
        init_epochs,
        initial_accuracy,
    } = start(cfg, data)?;

    let n = cfg.agents.len();
    let funds: Vec<u128> = cfg
        .agents
        .iter()
        .map(|a| u128::from(a.start_balance) * TOKEN_UNIT)
        .collect();
    let evm = match cfg.engine {
        Engine::Evm => Some(EvmDrt::deploy(&cfg.drt, &model, &funds, 0)?),
        Engine::Native => None,
    };
    let setup = evm.as_ref().map(|e| e.stats()).unwrap_or_default();
    let mut rules = Drt::new(cfg.drt, model, 0);
    for (i, &f) in funds.iter().enumerate() {
        rules.fund(i, f);
    }
    let mut mech = Mechanism {
        rules,
        evm,
        send_rejected: cfg.send_rejected,
        transactions: 0,
        rejections: BTreeMap::new(),
    };

    let mut agents: Vec<AgentReport> = cfg.agents.iter().map(AgentReport::new).collect();
    let mut queue = BinaryHeap::new();
    for (i, a) in cfg.agents.iter().enumerate() {
        queue.push(Reverse((a.next_wait(&mut rng), i)));
    }
    let mut accuracy = initial_accuracy;
    let mut accuracy_series = vec![AccuracyPoint::new(0, accuracy)];
    let mut balance_series = vec![BalancePoint::new(0, &mech.rules, &cfg.agents)];
    let mut next_series = cfg.series_interval;
    let mut next_eval = cfg.eval_first;
    let mut unclaimed: Vec<Unclaimed> = Vec::new();
    let mut next = 0usize;
    let mut rings = Rings::new(cfg.ring_targets);
    let mut now = 0u64;
    let wait = cfg.drt.refund_wait;
    let take_all = cfg.drt.any_address_claim_wait;

    loop {
        if next >= remaining.len() && unclaimed.is_empty() {
            break;
        }
        let Some(Reverse((t, a))) = queue.pop() else {
            break;
        };
        now = t;
        while next_series <= now {
            balance_series.push(BalancePoint::new(next_series, &mech.rules, &cfg.agents));
            next_series += cfg.series_interval;
        }
        if now > next_eval {
            next_eval += cfg.eval_interval;
            accuracy = mech.evaluate(now, &data.test, n)?;
            accuracy_series.push(AccuracyPoint::new(now, accuracy));
        }
        let spec = &cfg.agents[a];
        let mut balance = mech.rules.balance(a);
        if balance > 0 && next < remaining.len() {
            let (pick, fresh) = rings.peek(spec, next);
            let sample = &remaining[pick];
            let label = choose_label(spec, sample, &mut rng);
            if spec.always_submit || rng.random::<f64>() < accuracy + cfg.submit_bonus {
                let value = u128::from(spec.next_deposit(&mut rng)) * TOKEN_UNIT;
                if value <= balance {
                    match mech.add_data(now, a, &sample.features, label, value)? {
                        Ok((id, cost)) => {
                            balance = mech.rules.balance(a);
                            let r = &mut agents[a];
                            r.accepted += 1;
                            r.deposited += cost;
                            if r.bankrupt_day.is_none()
                                && balance * 100 < u128::from(spec.start_balance) * TOKEN_UNIT
                            {
                                r.bankrupt_day = Some(now as f64 / DAY as f64);
                            }
                            unclaimed.push(Unclaimed {
                                added_at: now,
                                sender: a,
                                sample: pick,
                                id,
                            });
                            rings.commit(spec, pick, fresh);
                            if fresh {
                                next += 1;
                            }
                        }
                        Err(_) => agents[a].refused_additions += 1,
                    }
                }
            }
        }
        if balance > 0 {
            queue.push(Reverse((now + spec.next_wait(&mut rng), a)));
        }

        let exhausted = next >= remaining.len();
        let mut done = Vec::new();
        for (k, u) in unclaimed.iter().enumerate() {
            let age = now - u.added_at;
            if age < wait || (exhausted && age < take_all) {
                break;
            }
            let features = &remaining[u.sample].features;
            if age <= take_all && u.sender != a && rings.mates(&cfg.agents, a, u.sender) {
                // Colluders leave each other's contributions alone until the take-all.
                continue;
            }
            if age > take_all || u.sender != a {
                if let Ok(take) = mech.report(now, a, u.id, features)? {
                    let r = &mut agents[a];
                    r.takes += 1;
                    r.taken += take.amount;
                    if take.all {
                        r.take_alls += 1;
                    }
                }
            } else if let Ok(amount) = mech.refund(now, a, u.id, features)? {
                agents[a].refunds += 1;
                agents[a].refunded += amount;
            }
            if mech.rules.contributions[u.id].claimable == 0 {
                done.push(k);
            }
        }
        for k in done.into_iter().rev() {
            unclaimed.remove(k);
        }
    }

    let final_accuracy = mech.evaluate(now, &data.test, n)?;
    accuracy_series.push(AccuracyPoint::new(now, final_accuracy));
    balance_series.push(BalancePoint::new(now, &mech.rules, &cfg.agents));
    if !mech.rules.conserved() {
        return Err(SimError::Diverged {
            call: "conservation".into(),
            reference: "minted == balances + escrowed".into(),
            chain: format!(
                "minted {} escrowed {}",
                mech.rules.total_minted, mech.rules.escrowed
            ),
        });
    }
    for (i, r) in agents.iter_mut().enumerate() {
        r.final_balance = mech.rules.balance(i) as f64 / TOKEN_UNIT as f64;
        r.final_balance_pct = 100.0 * mech.rules.balance(i) as f64
            / (u128::from(cfg.agents[i].start_balance) * TOKEN_UNIT) as f64;
        r.good_contributions = mech.rules.good(i);
    }
    let stats = mech.evm.as_ref().map(|e| e.stats()).unwrap_or_default();
    let wall_seconds = started.elapsed().as_secs_f64();
    let pct = |kind: AgentKind| -> Option<f64> {
        let (mut start, mut fin) = (0u128, 0u128);
        for (i, a) in cfg
            .agents
            .iter()
            .enumerate()
            .filter(|(_, a)| a.kind == kind)
        {
            start += u128::from(a.start_balance) * TOKEN_UNIT;
            fin += mech.rules.balance(i);
        }
        (start > 0).then(|| 100.0 * fin as f64 / start as f64)
    };
    let bad: Vec<&AgentReport> = agents.iter().filter(|r| r.kind == AgentKind::Bad).collect();
    let bad_bankrupt_day = if bad.is_empty() || bad.iter().any(|r| r.bankrupt_day.is_none()) {
        None
    } else {
        bad.iter().filter_map(|r| r.bankrupt_day).reduce(f64::max)
    };
    let min_accuracy = accuracy_series
        .iter()
        .map(|p| p.accuracy)
        .fold(f64::INFINITY, f64::min);
    let transactions = match cfg.engine {
        Engine::Evm => stats.transactions - setup.transactions,
        Engine::Native => mech.transactions,
    };
    let reverted = stats.reverted - setup.reverted;
    Ok(RunReport {
        mechanism: "drt".into(),
        model: cfg.model.name().into(),
        balance_unit: BalanceUnit::Tokens,
        market: None,
        engine: cfg.engine,
        seed: cfg.seed,
        num_words: data.num_words,
        train_size: data.train.len(),
        test_size: data.test.len(),
        cost_weight: cfg.drt.cost_weight_e6 as f64 / crate::drt::COST_WEIGHT_SCALE as f64,
        initial_samples: n_init,
        initial_fit_epochs: init_epochs,
        samples_added: next,
        initial_accuracy,
        final_accuracy,
        accuracy_gap: final_accuracy - initial_accuracy,
        min_accuracy,
        bad_bankrupt_day,
        good_final_balance_pct: pct(AgentKind::Good),
        bad_final_balance_pct: pct(AgentKind::Bad),
        simulated_days: now as f64 / DAY as f64,
        accepted: agents
            .iter()
            .map(|r| (r.name.clone(), r.accepted))
            .collect(),
        transactions,
        reverted_transactions: reverted,
        rejected_attempts: mech.rejections.values().sum(),
        rejections: mech
            .rejections
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect(),
        gas_used: stats.gas_used - setup.gas_used,
        setup_transactions: setup.transactions,
        views: stats.views,
        wall_seconds,
        transactions_per_second: (transactions + reverted) as f64 / wall_seconds.max(1e-9),
        unclaimed_at_end: unclaimed.len(),
        config: cfg.clone(),
        agents,
        accuracy_series,
        balance_series,
    })
}

fn diverged(call: impl Into<String>, reference: impl Debug, chain: impl Debug) -> SimError {
    SimError::Diverged {
        call: call.into(),
        reference: format!("{reference:?}"),
        chain: format!("{chain:?}"),
    }
}

/// Sum of `value(i)` over the agents of `kind`, against the sum of `base(i)`, in %.
fn kind_pct(
    agents: &[AgentSpec],
    kind: AgentKind,
    value: impl Fn(usize) -> f64,
    base: impl Fn(usize) -> f64,
) -> Option<f64> {
    let (mut b, mut v) = (0.0, 0.0);
    let mut any = false;
    for (i, _) in agents.iter().enumerate().filter(|(_, a)| a.kind == kind) {
        any = true;
        b += base(i);
        v += value(i);
    }
    any.then(|| if b > 0.0 { 100.0 * v / b } else { 0.0 })
}

fn min_accuracy(series: &[AccuracyPoint]) -> f64 {
    series
        .iter()
        .map(|p| p.accuracy)
        .fold(f64::INFINITY, f64::min)
}

fn bad_bankrupt_day(agents: &[AgentReport]) -> Option<f64> {
    let bad: Vec<&AgentReport> = agents.iter().filter(|r| r.kind == AgentKind::Bad).collect();
    if bad.is_empty() || bad.iter().any(|r| r.bankrupt_day.is_none()) {
        None
    } else {
        bad.iter().filter_map(|r| r.bankrupt_day).reduce(f64::max)
    }
}

struct PendingPoint {
    added_at: u64,
    sender: usize,
    sample: usize,
    id: usize,
}

fn run_points(cfg: &SimConfig, data: &Dataset) -> Result<RunReport, SimError> {
    let Start {
        started,
        mut rng,
        n_init,
        remaining,
        model,
        init_epochs,
        initial_accuracy,
    } = start(cfg, data)?;
    let n = cfg.agents.len();
    let wait = cfg.drt.refund_wait;
    let give_up = cfg.drt.any_address_claim_wait;
    let mut evm = match cfg.engine {
        Engine::Evm => Some(EvmPoints::deploy(wait, &model, 0)?),
        Engine::Native => None,
    };
    let setup = evm.as_ref().map(|e| e.stats()).unwrap_or_default();
    let mut rules = PointsRules::new(wait, model);
    let mut calls = 0u64;
    let mut rejections: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut agents: Vec<AgentReport> = cfg.agents.iter().map(AgentReport::new).collect();
    for r in &mut agents {
        r.start_balance = 0.0;
    }
    let pct = |rules: &PointsRules<Model>, agents: &[AgentReport]| -> Vec<f64> {
        (0..n)
            .map(|i| {
                let acc = agents[i].accepted;
                if acc == 0 {
                    0.0
                } else {
                    100.0 * rules.points(i) as f64 / acc as f64
                }
            })
            .collect()
    };
    let evaluate = |rules: &PointsRules<Model>,
                    evm: &mut Option<EvmPoints>,
                    now: u64|
     -> Result<f64, SimError> {
        if let Some(e) = evm {
            rules.model.check_chain(&mut e.chain, e.model, now)?;
            for i in 0..n {
                let p = e.points_of(now, i)?;
                if p != rules.points(i) {
                    return Err(diverged(
                        format!("pointsOf(participant {i})"),
                        rules.points(i),
                        p,
                    ));
                }
            }
            let t = e.total_points(now)?;
            if t != rules.total_points {
                return Err(diverged("totalPoints", rules.total_points, t));
            }
        }
        Ok(crate::perceptron::accuracy(&rules.model, &data.test))
    };

    let mut queue = BinaryHeap::new();
    for (i, a) in cfg.agents.iter().enumerate() {
        queue.push(Reverse((a.next_wait(&mut rng), i)));
    }
    let mut accuracy = initial_accuracy;
    let mut accuracy_series = vec![AccuracyPoint::new(0, accuracy)];
    let mut balance_series = vec![BalancePoint::from_pct(0, vec![0.0; n])];
    let mut next_series = cfg.series_interval;
    let mut next_eval = cfg.eval_first;
    let mut pending: Vec<PendingPoint> = Vec::new();
    let mut next = 0usize;
    let mut rings = Rings::new(cfg.ring_targets);
    let mut now = 0u64;
    let mut expired = 0usize;
    loop {
        if next >= remaining.len() && pending.is_empty() {
            break;
        }
        let Some(Reverse((t, a))) = queue.pop() else {
            break;
        };
        now = t;
        while next_series <= now {
            balance_series.push(BalancePoint::from_pct(next_series, pct(&rules, &agents)));
            next_series += cfg.series_interval;
        }
        if now > next_eval {
            next_eval += cfg.eval_interval;
            accuracy = evaluate(&rules, &mut evm, now)?;
            accuracy_series.push(AccuracyPoint::new(now, accuracy));
        }
        let spec = &cfg.agents[a];
        if next < remaining.len() {
            let (pick, fresh) = rings.peek(spec, next);
            let sample = &remaining[pick];
            let label = choose_label(spec, sample, &mut rng);
            if spec.always_submit || rng.random::<f64>() < accuracy + cfg.submit_bonus {
                let id = rules.add_data(now, a, &sample.features, label);
                if let Some(e) = &mut evm {
                    let got = e.add_data(now, a, &sample.features, label)?;
                    if got.as_ref().ok() != Some(&id) {
                        return Err(diverged("addData", id, got));
                    }
                }
                calls += 1;
                agents[a].accepted += 1;
                pending.push(PendingPoint {
                    added_at: now,
                    sender: a,
                    sample: pick,
                    id,
                });
                rings.commit(spec, pick, fresh);
                if fresh {
                    next += 1;
                }
            }
        }
        queue.push(Reverse((now + spec.next_wait(&mut rng), a)));

        let mut k = 0;
        while k < pending.len() {
            let u = &pending[k];
            let age = now - u.added_at;
            if age < wait {
                break;
            }
            if age >= give_up {
                expired += 1;
                pending.remove(k);
                continue;
            }
            if u.sender == a {
                let features = &remaining[u.sample].features;
                let want = rules.refund(now, a, u.id, features);
                if (want.is_ok() || cfg.send_rejected)
                    && let Some(e) = &mut evm
                {
                    check(
                        "refund",
                        &want,
                        &e.refund(now, a, u.id, features)?,
                        |x, y| x == y,
                    )?;
                }
                match want {
                    Ok(_) => {
                        calls += 1;
                        agents[a].refunds += 1;
                        pending.remove(k);
                        continue;
                    }
                    Err(r) => *rejections.entry(r.name()).or_default() += 1,
                }
            }
            k += 1;
        }
    }

    let final_accuracy = evaluate(&rules, &mut evm, now)?;
    accuracy_series.push(AccuracyPoint::new(now, final_accuracy));
    balance_series.push(BalancePoint::from_pct(now, pct(&rules, &agents)));
    let final_pct = pct(&rules, &agents);
    for (i, r) in agents.iter_mut().enumerate() {
        r.final_balance = rules.points(i) as f64;
        r.final_balance_pct = final_pct[i];
        r.good_contributions = rules.points(i);
    }
    let stats = evm.as_ref().map(|e| e.stats()).unwrap_or_default();
    let wall_seconds = started.elapsed().as_secs_f64();
    let points_pct = |kind| {
        kind_pct(
            &cfg.agents,
            kind,
            |i| rules.points(i) as f64,
            |i| agents[i].accepted as f64,
        )
    };
    let transactions = match cfg.engine {
        Engine::Evm => stats.transactions - setup.transactions,
        Engine::Native => calls,
    };
    let reverted = stats.reverted - setup.reverted;
    Ok(RunReport {
        mechanism: "points".into(),
        model: cfg.model.name().into(),
        balance_unit: BalanceUnit::Points,
        market: None,
        engine: cfg.engine,
        seed: cfg.seed,
        num_words: data.num_words,
        train_size: data.train.len(),
        test_size: data.test.len(),
        cost_weight: 0.0,
        initial_samples: n_init,
        initial_fit_epochs: init_epochs,
        samples_added: next,
        initial_accuracy,
        final_accuracy,
        accuracy_gap: final_accuracy - initial_accuracy,
        min_accuracy: min_accuracy(&accuracy_series),
        bad_bankrupt_day: None,
        good_final_balance_pct: points_pct(AgentKind::Good),
        bad_final_balance_pct: points_pct(AgentKind::Bad),
        simulated_days: now as f64 / DAY as f64,
        accepted: agents
            .iter()
            .map(|r| (r.name.clone(), r.accepted))
            .collect(),
        transactions,
        reverted_transactions: reverted,
        rejected_attempts: rejections.values().sum(),
        rejections: rejections
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect(),
        gas_used: stats.gas_used - setup.gas_used,
        setup_transactions: setup.transactions,
        views: stats.views,
        wall_seconds,
        transactions_per_second: (transactions + reverted) as f64 / wall_seconds.max(1e-9),
        unclaimed_at_end: expired,
        config: cfg.clone(),
        agents,
        accuracy_series,
        balance_series,
    })
}

/// Checks every balance and the market's totals on chain against the reference.
fn check_market(
    rules: &Market<Model>,
    evm: &mut Option<EvmMarket>,
    now: u64,
    participants: usize,
) -> Result<(), SimError> {
    let Some(e) = evm else {
        return Ok(());
    };
    for i in 0..participants {
        let b = e.balance(now, i)?;
        if b != rules.balance(i) {
            return Err(diverged(
                format!("balanceOf(participant {i})"),
                rules.balance(i),
                b,
            ));
        }
    }
    let got = e.totals(now)?;
    let want = (rules.total_minted, rules.escrowed, rules.pool);
    if got != want {
        return Err(diverged("totals (minted, escrowed, pool)", want, got));
    }
    Ok(())
}

fn run_market(cfg: &SimConfig, data: &Dataset) -> Result<RunReport, SimError> {
    let p = cfg.market;
    if p.test_size > data.test.len() {
        return Err(SimError::Config(format!(
            "the market's test set ({} reviews) is larger than the test file ({})",
            p.test_size,
            data.test.len()
        )));
    }
    let Start {
        started,
        mut rng,
        n_init,
        remaining,
        model,
        init_epochs,
        initial_accuracy,
    } = start(cfg, data)?;
    let n = cfg.agents.len();
    let initiator = n;
    let pieces = test_pieces(&data.test, p.test_size, p.pieces);
    let mut piece_samples = Vec::with_capacity(p.pieces);
    let mut at = 0;
    for k in 0..p.pieces {
        let len = p.test_size / p.pieces + usize::from(k < p.test_size % p.pieces);
        piece_samples.push(&data.test[at..at + len]);
        at += len;
    }
    let funds: Vec<u128> = cfg
        .agents
        .iter()
        .map(|a| u128::from(a.start_balance) * TOKEN_UNIT)
        .collect();
    let bounty = u128::from(p.bounty) * TOKEN_UNIT;
    let mut evm = match cfg.engine {
        Engine::Evm => Some(EvmMarket::deploy(
            &p, &model, initiator, &pieces, &funds, bounty, 0,
        )?),
        Engine::Native => None,
    };
    let setup = evm.as_ref().map(|e| e.stats()).unwrap_or_default();
    let mut rules = Market::new(p, model, initiator, &pieces);
    for (i, &f) in funds.iter().enumerate() {
        rules.fund(i, f);
    }
    rules.add_bounty(bounty);
    let mut calls = 0u64;
    let mut rejections: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut agents: Vec<AgentReport> = cfg.agents.iter().map(AgentReport::new).collect();
    let series_point = |t: u64, rules: &Market<Model>| {
        BalancePoint::from_pct(
            t,
            (0..n)
                .map(|i| 100.0 * rules.balance(i) as f64 / funds[i] as f64)
                .collect(),
        )
    };

    let mut queue = BinaryHeap::new();
    for (i, a) in cfg.agents.iter().enumerate() {
        queue.push(Reverse((a.next_wait(&mut rng), i)));
    }
    let mut accuracy = initial_accuracy;
    let mut accuracy_series = vec![AccuracyPoint::new(0, accuracy)];
    let mut balance_series = vec![series_point(0, &rules)];
    let mut next_series = cfg.series_interval;
    let mut next_eval = cfg.eval_first;
    let mut sample_of: Vec<usize> = Vec::new();
    let mut next = 0usize;
    let mut rings = Rings::new(cfg.ring_targets);
    let mut now = 0u64;
    while next < remaining.len() {
        let Some(Reverse((t, a))) = queue.pop() else {
            break;
        };
        now = t;
        while next_series <= now {
            balance_series.push(series_point(next_series, &rules));
            next_series += cfg.series_interval;
        }
        if now > next_eval {
            next_eval += cfg.eval_interval;
            check_market(&rules, &mut evm, now, n)?;
            if let Some(e) = &mut evm {
                rules.model.check_chain(&mut e.chain, e.model, now)?;
            }
            accuracy = crate::perceptron::accuracy(&rules.model, &data.test);
            accuracy_series.push(AccuracyPoint::new(now, accuracy));
        }
        let spec = &cfg.agents[a];
        let mut balance = rules.balance(a);
        if balance > 0 {
            let (pick, fresh) = rings.peek(spec, next);
            let sample = &remaining[pick];
            let label = choose_label(spec, sample, &mut rng);
            if spec.always_submit || rng.random::<f64>() < accuracy + cfg.submit_bonus {
                let value = u128::from(spec.next_deposit(&mut rng)) * TOKEN_UNIT;
                if value <= balance {
                    let want = rules.add_data(now, a, &sample.features, label, value);
                    if (want.is_ok() || cfg.send_rejected)
                        && let Some(e) = &mut evm
                    {
                        check(
                            "addData",
                            &want,
                            &e.add_data(now, a, &sample.features, label, value)?,
                            |x, y| x == y,
                        )?;
                    }
                    match want {
                        Ok((_, cost)) => {
                            calls += 1;
                            balance = rules.balance(a);
                            let r = &mut agents[a];
                            r.accepted += 1;
                            r.deposited += cost;
                            if r.bankrupt_day.is_none()
                                && balance * 100 < u128::from(spec.start_balance) * TOKEN_UNIT
                            {
                                r.bankrupt_day = Some(now as f64 / DAY as f64);
                            }
                            sample_of.push(pick);
                            rings.commit(spec, pick, fresh);
                            if fresh {
                                next += 1;
                            }
                        }
                        Err(r) => {
                            *rejections.entry(r.name()).or_default() += 1;
                            agents[a].refused_additions += 1;
                        }
                    }
                }
            }
        }
        if balance > 0 {
            queue.push(Reverse((now + spec.next_wait(&mut rng), a)));
        }
    }
    check_market(&rules, &mut evm, now, n)?;
    if let Some(e) = &mut evm {
        rules.model.check_chain(&mut e.chain, e.model, now)?;
    }
    let participation_accuracy = crate::perceptron::accuracy(&rules.model, &data.test);
    accuracy_series.push(AccuracyPoint::new(now, participation_accuracy));
    let participation_days = now as f64 / DAY as f64;

    // The initiator ends the market and reveals the test set, piece by piece.
    now += 1;
    let want = rules.end_market();
    if let Some(e) = &mut evm {
        check("endMarket", &want, &e.end_market(now)?, |_, _| true)?;
    }
    calls += 1;
    for (k, piece) in pieces.iter().enumerate() {
        let want = rules.reveal(k, piece, piece_samples[k]);
        if let Some(e) = &mut evm {
            check("reveal", &want, &e.reveal(now, k, piece)?, |_, _| true)?;
        }
        want.map_err(|r| SimError::Chain(format!("reveal of piece {k} refused: {r:?}")))?;
        calls += 1;
    }
    // Reward rounds: a fresh copy of the initial model replays the contributions.
    let mut round_setup = 0u64;
    for round in 1..=p.rounds {
        let before = evm.as_ref().map(|e| e.stats().transactions).unwrap_or(0);
        let want = rules.start_round();
        if let Some(e) = &mut evm {
            let initial = rules.initial.clone();
            check(
                "startRound",
                &want,
                &e.start_round(now, &initial)?,
                |_, _| true,
            )?;
        }
        calls += 1;
        round_setup += evm.as_ref().map(|e| e.stats().transactions).unwrap_or(0) - before;
        round_setup = round_setup.saturating_sub(u64::from(evm.is_some()));
        for &s in &sample_of {
            let features = &remaining[s].features;
            let want = rules.process(features);
            if let Some(e) = &mut evm {
                check("process", &want, &e.process(now, features)?, |x, y| x == y)?;
            }
            calls += 1;
        }
        if let Some(e) = &mut evm {
            let o = rules.rounds[usize::from(round) - 1];
            let got = e.round(now, round)?;
            if got != (o.pot, o.positive) {
                return Err(diverged(
                    format!("round {round} (pot, positive)"),
                    (o.pot, o.positive),
                    got,
                ));
            }
            if let (Some(m), Some(at)) = (&rules.reward_model, e.reward_model) {
                m.check_chain(&mut e.chain, at, now)?;
            }
        }
    }
    // Every contributor claims each of its contributions.
    for id in 0..rules.contributions.len() {
        let who = rules.contributions[id].sender;
        let want = rules.claim(who, id);
        if let Some(e) = &mut evm {
            check("claim", &want, &e.claim(now, who, id)?, |x, y| x == y)?;
        }
        if let Ok(amount) = want {
            calls += 1;
            agents[who].refunds += 1;
            agents[who].refunded += amount;
        }
    }
    check_market(&rules, &mut evm, now, n + 1)?;
    if !rules.conserved() {
        return Err(diverged(
            "conservation",
            "minted == balances + escrowed",
            (rules.total_minted, rules.escrowed),
        ));
    }
    let final_model = rules.reward_model.as_ref().unwrap_or(&rules.model);
    let final_accuracy = crate::perceptron::accuracy(final_model, &data.test);
    accuracy_series.push(AccuracyPoint::new(now, final_accuracy));
    balance_series.push(series_point(now, &rules));
    for (i, r) in agents.iter_mut().enumerate() {
        r.final_balance = rules.balance(i) as f64 / TOKEN_UNIT as f64;
        r.final_balance_pct = 100.0 * rules.balance(i) as f64 / funds[i] as f64;
        r.good_contributions = rules
            .scores
            .iter()
            .map(|s| {
                s.iter()
                    .enumerate()
                    .filter(|&(id, &v)| v > 0 && rules.contributions[id].sender == i)
                    .count() as u64
            })
            .sum();
    }
    let stats = evm.as_ref().map(|e| e.stats()).unwrap_or_default();
    let wall_seconds = started.elapsed().as_secs_f64();
    let bal_pct = |kind| {
        kind_pct(
            &cfg.agents,
            kind,
            |i| rules.balance(i) as f64,
            |i| funds[i] as f64,
        )
    };
    let reverted = stats.reverted - setup.reverted;
    let rounds: Vec<RoundOutcome> = rules.rounds.clone();
    Ok(RunReport {
        mechanism: "market".into(),
        model: cfg.model.name().into(),
        balance_unit: BalanceUnit::Tokens,
        market: Some(MarketReport {
            bounty: p.bounty as f64,
            test_size: p.test_size,
            pieces: p.pieces,
            participation_accuracy,
            participation_days,
            forfeited: rounds.iter().map(|r| r.forfeited).sum(),
            rounds,
            initiator_refund: rules.balance(initiator) as f64 / TOKEN_UNIT as f64,
            dust: rules.escrowed,
        }),
        engine: cfg.engine,
        seed: cfg.seed,
        num_words: data.num_words,
        train_size: data.train.len(),
        test_size: data.test.len(),
        cost_weight: p.cost_weight_e6 as f64 / crate::drt::COST_WEIGHT_SCALE as f64,
        initial_samples: n_init,
        initial_fit_epochs: init_epochs,
        samples_added: next,
        initial_accuracy,
        final_accuracy,
        accuracy_gap: final_accuracy - initial_accuracy,
        min_accuracy: min_accuracy(&accuracy_series),
        bad_bankrupt_day: bad_bankrupt_day(&agents),
        good_final_balance_pct: bal_pct(AgentKind::Good),
        bad_final_balance_pct: bal_pct(AgentKind::Bad),
        simulated_days: now as f64 / DAY as f64,
        accepted: agents
            .iter()
            .map(|r| (r.name.clone(), r.accepted))
            .collect(),
        transactions: calls,
        reverted_transactions: reverted,
        rejected_attempts: rejections.values().sum(),
        rejections: rejections
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect(),
        gas_used: stats.gas_used - setup.gas_used,
        setup_transactions: setup.transactions + round_setup,
        views: stats.views,
        wall_seconds,
        transactions_per_second: (calls + reverted) as f64 / wall_seconds.max(1e-9),
        unclaimed_at_end: rules.contributions.iter().filter(|c| !c.claimed).count(),
        config: cfg.clone(),
        agents,
        accuracy_series,
        balance_series,
    })
}
