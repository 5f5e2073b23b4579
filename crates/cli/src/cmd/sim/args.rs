//! Flags shared by the `cohort sim` commands.

use std::path::PathBuf;

use anyhow::Context;
use cohort_sim::{AgentSpec, DrtParams, Engine, InitialPortion, SimConfig};

/// The classifier the mechanism trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModelKind {
    /// sklearn's perceptron (`learning_rate='optimal'`) in fixed point.
    Perceptron,
}

/// Where the mechanism runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineArg {
    /// The contracts' bytecode in revm, checked against the Rust reference.
    Evm,
    /// The Rust reference of the rules only.
    Native,
}

/// Data, agents and mechanism parameters.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Directory holding train.tsv and test.tsv (LABEL<TAB>IDS per line).
    #[arg(long, default_value = "../shared/data/imdb")]
    pub data: PathBuf,
    /// The classifier.
    #[arg(long, value_enum, default_value_t = ModelKind::Perceptron)]
    pub model: ModelKind,
    /// Where the mechanism runs.
    #[arg(long, value_enum, default_value_t = EngineArg::Evm)]
    pub engine: EngineArg,
    /// Also send the calls the rules refuse; each must revert with the same error (slower).
    #[arg(long)]
    pub send_rejected: bool,
    /// Good agents (true labels, submit with probability accuracy + 0.15).
    #[arg(long, default_value_t = 1)]
    pub good: usize,
    /// Bad agents (always the flipped label).
    #[arg(long, default_value_t = 1)]
    pub bad: usize,
    /// Careless agents (like Good, with --careless-rate mistakes).
    #[arg(long, default_value_t = 0)]
    pub careless: usize,
    /// Label-flip probability of careless agents.
    #[arg(long, default_value_t = 0.2)]
    pub careless_rate: f64,
    /// Spammers (random labels, tiny deposits, a turn every minute).
    #[arg(long, default_value_t = 0)]
    pub spammers: usize,
    /// Starting balance of every agent made by the counts above, in tokens.
    #[arg(long, default_value_t = 10_000)]
    pub start_balance: u64,
    /// A JSON file with a list of agents, in the form of a report's `config.agents`;
    /// replaces the counts above.
    #[arg(long)]
    pub agents: Option<PathBuf>,
    /// Seconds after which a refund or take is allowed (strictly more).
    #[arg(long, default_value_t = 86_400)]
    pub refund_wait: u64,
    /// Seconds after which anyone may take all that is left (> refund wait + 7 days).
    #[arg(long, default_value_t = 9 * 86_400)]
    pub claim_wait: u64,
    /// Fraction of the training reviews that fit the initial model (default: 8% when all
    /// reviews are used, else 100 reviews).
    #[arg(long, conflicts_with = "init_samples")]
    pub init_portion: Option<f64>,
    /// Number of training reviews that fit the initial model.
    #[arg(long)]
    pub init_samples: Option<usize>,
    /// Seconds between accuracy evaluations.
    #[arg(long, default_value_t = 200_000)]
    pub eval_interval: u64,
    /// Seconds between points of the balance time series.
    #[arg(long, default_value_t = 21_600)]
    pub series_interval: u64,
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
        for i in 0..self.spammers {
            v.push(AgentSpec::spammer(name("spammer", i, self.spammers)));
        }
        for a in &mut v {
            a.start_balance = self.start_balance;
        }
        Ok(v)
    }

    /// The run's configuration at `seed` and `cost_weight`.
    pub fn config(&self, seed: u64, cost_weight: f64) -> anyhow::Result<SimConfig> {
        let mut cfg = SimConfig::reference(seed);
        cfg.drt = DrtParams::new(cost_weight, self.refund_wait, self.claim_wait)?;
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
        cfg.validate()?;
        Ok(cfg)
    }
}
