//! Flags shared by the `cohort sim` commands.

use std::path::PathBuf;

use anyhow::Context;

use crate::args::{float_in, int_in};
use cohort_sim::driver::MechanismKind;
use cohort_sim::{AgentSpec, DrtParams, Engine, InitialPortion, MarketParams, SimConfig};

/// The classifier the mechanism trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModelKind {
    /// sklearn's perceptron (`learning_rate='optimal'`) in fixed point.
    Perceptron,
    /// Multinomial Naive Bayes (alpha 1) with a fixed-point log2.
    Nb,
    /// Nearest centroid (running class means), exact integers.
    Ncc,
}

impl From<ModelKind> for cohort_sim::ModelKind {
    fn from(m: ModelKind) -> Self {
        match m {
            ModelKind::Perceptron => Self::Perceptron,
            ModelKind::Nb => Self::Nb,
            ModelKind::Ncc => Self::Ncc,
        }
    }
}

/// A mechanism, for sweeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MechanismArg {
    /// Deposit, Refund and Take.
    Drt,
    /// Points (no money).
    Points,
    /// The prediction market.
    Market,
}

impl From<MechanismArg> for MechanismKind {
    fn from(m: MechanismArg) -> Self {
        match m {
            MechanismArg::Drt => Self::Drt,
            MechanismArg::Points => Self::Points,
            MechanismArg::Market => Self::Market,
        }
    }
}

/// Where the mechanism runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineArg {
    /// The contracts' bytecode in revm, checked against the Rust reference.
    Evm,
    /// The Rust reference of the rules only.
    Native,
}

/// The most agents of one kind a run takes from the flags.
pub const MAX_AGENTS: usize = 10_000;
/// The largest amount of tokens a flag takes (10^12 tokens, 10^30 base units: sums over every
/// agent stay far inside the 128-bit arithmetic of the reference).
pub const MAX_TOKENS: u64 = 1_000_000_000_000;
/// The longest wait or interval a flag takes: 100 years in seconds.
pub const MAX_SECONDS: u64 = 100 * 365 * 86_400;
/// The most reviews a size flag takes.
pub const MAX_REVIEWS: usize = 10_000_000;
/// Feature counts the contracts address: 3 (room for the out-of-vocabulary index 2) to 65,536.
pub fn num_words() -> crate::args::IntRange<u32> {
    int_in(3..=cohort_sim::data::MAX_NUM_WORDS)
}
/// Cost weights the contracts take: [0, 1e6].
pub fn cost_weight() -> crate::args::FloatRange {
    float_in(0.0..=1e6)
}

/// Data, agents and mechanism parameters.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Directory holding train.tsv and test.tsv (LABEL<TAB>IDS per line).
    #[arg(long, default_value = "../shared/data/imdb")]
    pub data: PathBuf,
    /// The classifier (a sweep's `--models` overrides it).
    #[arg(long, value_enum, default_value_t = ModelKind::Perceptron)]
    pub model: ModelKind,
    /// Where the mechanism runs.
    #[arg(long, value_enum, default_value_t = EngineArg::Evm)]
    pub engine: EngineArg,
    /// Also send the calls the rules refuse; each must revert with the same error (slower).
    #[arg(long)]
    pub send_rejected: bool,
    /// Good agents (true labels, submit with probability accuracy + 0.15).
    #[arg(long, default_value_t = 1, value_parser = int_in(0..=MAX_AGENTS))]
    pub good: usize,
    /// Bad agents (always the flipped label).
    #[arg(long, default_value_t = 1, value_parser = int_in(0..=MAX_AGENTS))]
    pub bad: usize,
    /// Careless agents (like Good, with --careless-rate mistakes).
    #[arg(long, default_value_t = 0, value_parser = int_in(0..=MAX_AGENTS))]
    pub careless: usize,
    /// Label-flip probability of careless agents.
    #[arg(long, default_value_t = 0.2, value_parser = float_in(0.0..=1.0))]
    pub careless_rate: f64,
    /// Colluding bad agents: one ring that, after its first --ring-targets samples,
    /// only resubmits those with flipped labels and never reports its own members.
    #[arg(long, default_value_t = 0, value_parser = int_in(0..=MAX_AGENTS))]
    pub colluders: usize,
    /// Samples the ring of colluders takes before it only repeats them.
    #[arg(long, default_value_t = 1, value_parser = int_in(1..=1_000_000usize))]
    pub ring_targets: usize,
    /// Spammers (random labels, tiny deposits, a turn every minute).
    #[arg(long, default_value_t = 0, value_parser = int_in(0..=MAX_AGENTS))]
    pub spammers: usize,
    /// Starting balance of every agent made by the counts above, in tokens.
    #[arg(long, default_value_t = 10_000, value_parser = int_in(1..=MAX_TOKENS))]
    pub start_balance: u64,
    /// A JSON file with a list of agents, in the form of a report's `config.agents`;
    /// replaces the counts above.
    #[arg(long)]
    pub agents: Option<PathBuf>,
    /// Seconds after which a refund or take is allowed (strictly more).
    #[arg(long, default_value_t = 86_400, value_parser = int_in(0..=MAX_SECONDS))]
    pub refund_wait: u64,
    /// Seconds after which anyone may take all that is left (> refund wait + 7 days).
    #[arg(long, default_value_t = 9 * 86_400, value_parser = int_in(0..=MAX_SECONDS))]
    pub claim_wait: u64,
    /// Fraction of the training reviews that fit the initial model (default: 8% when all
    /// reviews are used, else 100 reviews).
    #[arg(long, conflicts_with = "init_samples", value_parser = float_in(0.0..=1.0).open_start())]
    pub init_portion: Option<f64>,
    /// Number of training reviews that fit the initial model.
    #[arg(long, value_parser = int_in(1..=MAX_REVIEWS))]
    pub init_samples: Option<usize>,
    /// Seconds between accuracy evaluations.
    #[arg(long, default_value_t = 200_000, value_parser = int_in(1..=MAX_SECONDS))]
    pub eval_interval: u64,
    /// Seconds between points of the balance time series.
    #[arg(long, default_value_t = 21_600, value_parser = int_in(1..=MAX_SECONDS))]
    pub series_interval: u64,
    /// Prediction market only: reward rounds [default: 3].
    #[arg(long, value_parser = int_in(1..=u8::MAX))]
    pub rounds: Option<u8>,
    /// Prediction market only: test reviews the initiator commits and reveals (the first
    /// ones of test.tsv) [default: 100].
    #[arg(long, value_parser = int_in(1..=MAX_REVIEWS))]
    pub market_test_size: Option<usize>,
    /// Prediction market only: pieces the test set is committed in [default: 4].
    #[arg(long, value_parser = int_in(1..=MAX_REVIEWS))]
    pub pieces: Option<usize>,
    /// Prediction market only: the initiator's bounty in tokens [default: 10000].
    #[arg(long, value_parser = int_in(1..=MAX_TOKENS))]
    pub bounty: Option<u64>,
}

impl SimArgs {
    /// The agents, from the file or the counts.
    pub fn agents(&self) -> anyhow::Result<Vec<AgentSpec>> {
        if let Some(path) = &self.agents {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            return serde_json::from_str(&text)
                .with_context(|| format!("{}: not a JSON list of agents", path.display()));
        }
        let mut v = Vec::new();
        let name = |kind: &str, i: usize, n: usize| {
            if n == 1 {
                kind.to_string()
            } else {
                format!("{kind}{}", i + 1)
            }
        };
        for i in 0..self.good {
            v.push(AgentSpec::good(name("good", i, self.good)));
        }
        for i in 0..self.bad {
            v.push(AgentSpec::bad(name("bad", i, self.bad)));
        }
        for i in 0..self.careless {
            v.push(AgentSpec::careless(
                name("careless", i, self.careless),
                self.careless_rate,
            ));
        }
        for i in 0..self.colluders {
            v.push(AgentSpec::colluder(name("colluder", i, self.colluders), 0));
        }
        for i in 0..self.spammers {
            v.push(AgentSpec::spammer(name("spammer", i, self.spammers)));
        }
        for a in &mut v {
            a.start_balance = self.start_balance;
        }
        Ok(v)
    }

    /// The run's configuration of `mechanism` at `seed` and `cost_weight`.
    pub fn config(
        &self,
        mechanism: MechanismKind,
        seed: u64,
        cost_weight: f64,
    ) -> anyhow::Result<SimConfig> {
        let mut cfg = SimConfig::reference(seed);
        cfg.mechanism = mechanism;
        cfg.model = self.model.into();
        cfg.drt = DrtParams::new(cost_weight, self.refund_wait, self.claim_wait)?;
        let r = MarketParams::reference();
        let market_flags = [
            ("--rounds", self.rounds.is_some()),
            ("--market-test-size", self.market_test_size.is_some()),
            ("--pieces", self.pieces.is_some()),
            ("--bounty", self.bounty.is_some()),
        ];
        if mechanism != MechanismKind::Market
            && let Some((flag, _)) = market_flags.iter().find(|(_, given)| *given)
        {
            anyhow::bail!(
                "{flag} applies to the prediction market only (`cohort sim market`), not to {}",
                mechanism.name()
            );
        }
        cfg.market = MarketParams::new(
            cost_weight,
            self.rounds.unwrap_or(r.rounds),
            self.market_test_size.unwrap_or(r.test_size),
            self.pieces.unwrap_or(r.pieces),
            self.bounty.unwrap_or(r.bounty),
        )?;
        cfg.agents = self.agents()?;
        cfg.initial = match (self.init_portion, self.init_samples) {
            (Some(f), _) => InitialPortion::Fraction(f),
            (None, Some(n)) => InitialPortion::Samples(n),
            (None, None) => InitialPortion::Auto,
        };
        cfg.eval_interval = self.eval_interval;
        cfg.series_interval = self.series_interval;
        cfg.engine = match self.engine {
            EngineArg::Evm => Engine::Evm,
            EngineArg::Native => Engine::Native,
        };
        cfg.send_rejected = self.send_rejected;
        cfg.ring_targets = self.ring_targets;
        cfg.validate()?;
        Ok(cfg)
    }
}
