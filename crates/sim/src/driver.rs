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

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::SimError;
use crate::agent::{AgentKind, AgentSpec};
use crate::chain::Revert;
use crate::data::{Dataset, Sample};
use crate::drt::{DAY, Drt, DrtParams, EvmDrt, Reject, TOKEN_UNIT};
use crate::perceptron::{EtaSchedule, FitConfig, Perceptron};
use crate::report::{AccuracyPoint, AgentReport, BalancePoint, RunReport};

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

/// Everything a run depends on besides the data.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SimConfig {
    /// Seeds the initial fit's shuffling and every draw of the agents.
    pub seed: u64,
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
}

impl SimConfig {
    /// The reference setup: one Good and one Bad agent, cost weight 1, refund after 1 day,
    /// take-all after 9, the EVM engine.
    pub fn reference(seed: u64) -> Self {
        Self {
            seed,
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
    rules: Drt<Perceptron>,
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
            let (w, bias, seen) = evm.read_model(now)?;
            let m = &self.rules.model;
            if w != m.weights || bias != m.bias || seen != m.samples_seen {
                return Err(SimError::Diverged {
                    call: "model weights".into(),
                    reference: format!("bias {} seen {}", m.bias, m.samples_seen),
                    chain: format!("bias {bias} seen {seen}"),
                });
            }
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

/// Runs one simulation of Deposit-Refund-Take on `data`.
pub fn run(cfg: &SimConfig, data: &Dataset) -> Result<RunReport, SimError> {
    cfg.validate()?;
    let started = Instant::now();
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let n_init = cfg.initial.count(data)?;
    let (init, remaining) = data.train.split_at(n_init);
    let mut model = Perceptron::new(data.num_words, cfg.eta);
    let init_epochs = model.fit(init, &cfg.fit, &mut rng);
    let initial_accuracy = model.accuracy(&data.test);

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
            let sample = &remaining[next];
            let mut label = sample.label;
            if spec.flip_labels {
                label = 1 - label;
            }
            if spec.mistake_rate > 0.0 && rng.random::<f64>() < spec.mistake_rate {
                label = 1 - label;
            }
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
                                sample: next,
                                id,
                            });
                            next += 1;
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
        model: "perceptron".into(),
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
