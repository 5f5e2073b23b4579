//! A run's configuration, and the one place its values are checked.
//!
//! [`RunConfig`] is what a TOML file says: serde structs with documented defaults, every
//! section refusing unknown fields. [`RunConfig::check`] turns it into a [`ValidConfig`], the
//! only form the runtime ([`crate::runtime`]), the in-process transport and the tasks
//! ([`crate::learner::build`]) accept, after checking every field against the range its
//! documentation gives and the fields against each other (a trimmed mean that would trim the
//! whole cohort, a stake below the protocol's minimum, a backdoor trigger outside the
//! vocabulary). Nothing reaches the ledger, a data file or an output directory before that
//! check: a value the run cannot work with (NaN, infinity, zero where a count is needed, a
//! size that would not fit in memory) is refused with the field named, instead of turning
//! into a non-finite model and slashed honest clients later.
//!
//! The check is pure: it reads no file. What only the data can tell (a corpus with too few
//! roles, a sequence longer than the base model's context) is checked when the task is built,
//! still before the ledger is created (`cohort_tasks::check_inputs` checks that the
//! files a task names exist).
//!
//! ```
//! use cohort_fl::config::RunConfig;
//!
//! let cfg: RunConfig = serde_json::from_str(r#"{"seed": 1, "clients": 4, "validators": 2}"#)
//!     .unwrap();
//! assert!(cfg.clone().check().is_ok());
//! let mut bad = cfg;
//! bad.coordinator.rounds = 0;
//! let e = bad.check().unwrap_err().to_string();
//! assert!(e.contains("coordinator.rounds"), "{e}");
//! ```

use std::ops::Deref;

use serde::{Deserialize, Serialize};

use crate::compress::{
    Compressor, DEFAULT_RANK, DEFAULT_TOPK_FRACTION, MAX_RANK, MIN_TOPK_FRACTION, UpdateCodec,
};
use crate::coordinator::CoordinatorConfig;
use crate::strategy::{
    Clipped, CoordinateMedian, FedAvg, FedOpt, Krum, MedianClipped, ScoreWeighted, Strategy,
    TrimmedMean,
};
use crate::task::{
    ImdbModel, ImdbPooling, ImdbTaskConfig, LinearTaskConfig, LmTaskConfig, TaskConfig,
};
use crate::{AttackKind, FlError};

/// The deployed protocol's minimum active stake of a client, in tokens (`minClientStake` in
/// contracts/src/Cohort.sol; a test checks it against the contract).
pub const PROTOCOL_MIN_CLIENT_STAKE: u64 = 100;
/// The deployed protocol's minimum active stake of a validator, in tokens
/// (`minValidatorStake`).
pub const PROTOCOL_MIN_VALIDATOR_STAKE: u64 = 1_000;
/// The deposit a client escrows with every update, in tokens (`updateDeposit`).
pub const PROTOCOL_UPDATE_DEPOSIT: u64 = 10;
/// The most updates the protocol takes in one round (`maxUpdatesPerRound`).
pub const PROTOCOL_MAX_UPDATES_PER_ROUND: usize = 256;
/// The most validators the protocol takes in one round (`maxValidatorsPerRound`).
pub const PROTOCOL_MAX_VALIDATORS: usize = 32;

/// The most rounds a run may have. A round writes every update and the new model to disk and
/// about ten ledger entries; a run of a billion rounds is a typo.
pub const MAX_ROUNDS: u64 = 10_000;
/// The most clients a run may have.
pub const MAX_CLIENTS: usize = 100_000;
/// The most values (samples times features) the linear task may draw, all parties together:
/// 2.5e8 `f32`s, 1 GB.
pub const MAX_LINEAR_VALUES: u64 = 250_000_000;
/// The longest a phase may wait for a silent party, in virtual seconds (a week).
pub const MAX_TIMEOUT: u64 = 604_800;
/// Token amounts (balances, stakes, rewards) are at most this many whole tokens.
pub const MAX_TOKENS: u64 = 1_000_000_000_000;

/// Which aggregation strategy, as configured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum StrategyConfig {
    /// Sample-weighted mean.
    FedAvg,
    /// Weighted by the on-chain consensus scores.
    ScoreWeighted,
    /// Coordinate-wise median.
    Median,
    /// Coordinate-wise trimmed mean.
    TrimmedMean {
        /// Values trimmed at each end: `2 k + 1` must not exceed the cohort (the clients
        /// sampled per round).
        k: usize,
    },
    /// Krum (m = 1) or Multi-Krum.
    Krum {
        /// Byzantine clients tolerated: `2 f + 3` must not exceed the cohort.
        f: usize,
        /// Updates averaged, 1 to the cohort minus `f` (default 1).
        #[serde(default = "one")]
        m: usize,
    },
}

fn one() -> usize {
    1
}

fn yes() -> bool {
    true
}

/// The strategy with its optional wrappers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregationConfig {
    /// The base strategy.
    pub strategy: StrategyConfig,
    /// Clip every update to this norm first: (0, 1e9].
    #[serde(default)]
    pub clip_norm: Option<f64>,
    /// Clip every accepted update to the median norm of the round's accepted updates
    /// before the strategy sees it (and before `clip_norm`, if both are given): a bound that
    /// adapts to the task and the round (FLAME's). A clipped update's consensus score is
    /// scaled by the same factor, so that score weighting weighs the update as aggregated.
    /// On by default (`false` turns it off): without it one accepted boosted update (scaled
    /// model replacement) moves the model many honest steps at once, see docs/fl.md.
    #[serde(default = "yes")]
    pub clip_to_median: bool,
    /// Server learning rate of FedAdam on top (none: apply the aggregate as is): (0, 10].
    #[serde(default)]
    pub fedadam_lr: Option<f64>,
    /// Aggregate every valid update, ignoring the validators' verdict: the undefended
    /// baseline that shows what an attack does.
    #[serde(default)]
    pub ignore_verdicts: bool,
}

impl Default for AggregationConfig {
    fn default() -> Self {
        Self {
            strategy: StrategyConfig::ScoreWeighted,
            clip_norm: None,
            clip_to_median: true,
            fedadam_lr: None,
            ignore_verdicts: false,
        }
    }
}

impl AggregationConfig {
    /// Builds the strategy.
    pub fn build(&self) -> Box<dyn Strategy> {
        let base: Box<dyn Strategy> = match self.strategy {
            StrategyConfig::FedAvg => Box::new(FedAvg::new()),
            StrategyConfig::ScoreWeighted => Box::new(ScoreWeighted::by_samples()),
            StrategyConfig::Median => Box::new(CoordinateMedian::new()),
            StrategyConfig::TrimmedMean { k } => Box::new(TrimmedMean::new(k)),
            StrategyConfig::Krum { f, m } => Box::new(Krum::multi(f, m)),
        };
        let clipped: Box<dyn Strategy> = match self.clip_norm {
            Some(c) => Box::new(Clipped::new(base, c)),
            None => base,
        };
        let clipped: Box<dyn Strategy> = if self.clip_to_median {
            Box::new(MedianClipped::new(clipped))
        } else {
            clipped
        };
        match self.fedadam_lr {
            Some(lr) => Box::new(FedOpt::adam(clipped, lr)),
            None => clipped,
        }
    }
}

/// Who attacks, and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttackConfig {
    /// Fraction of clients that attack (the highest-numbered ones): [0, 1].
    pub fraction: f64,
    /// What they do: to their updates (`random-noise` with `std` in (0, 1e6], `sign-flip`
    /// with `scale` in (0, 1e6], `scaled-replacement` with `factor` in (0, 1e6],
    /// `free-rider` with `fake_samples` in [1, 1e12]) or to their training data
    /// (`label-flip`; `backdoor` with 1 to 64 `trigger` ids inside the vocabulary, `target`
    /// 0 or 1 and `poison_fraction` in (0, 1]; both `imdb` only).
    pub attack: AttackKind,
    /// Validators that collude with the attackers: they score attackers' updates +1 and
    /// everyone else's -1. 0 to `validators`.
    #[serde(default)]
    pub colluding_validators: usize,
    /// Makes the attackers Sybils of one adversary: each identity stakes only this many
    /// tokens (instead of `incentives.client_stake`), and every Sybil sampled in a round sends
    /// the same update (the first one's), so that one adversary's update is counted many
    /// times. The protocol's `minClientStake` (100 tokens by default) still applies: a Sybil
    /// slashed below it can no longer submit. 1 to `incentives.initial_balance`.
    #[serde(default)]
    pub sybil_stake: Option<u64>,
}

/// Stakes and rewards, in whole tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IncentiveConfig {
    /// Tokens minted to every participant at the start: [1, 1e12], at least each stake (and
    /// a client's stake plus one update deposit of 10).
    pub initial_balance: u64,
    /// Stake of each client: at least the protocol's minimum of 100, and at most the initial
    /// balance less one update deposit (10).
    pub client_stake: u64,
    /// Stake of each validator: at least the protocol's minimum of 1,000, at most the initial
    /// balance.
    pub validator_stake: u64,
    /// Reward pool of each round, paid by the coordinator: [0, 1e12].
    pub reward_per_round: u64,
    /// Lowest consensus score accepted: [-1e6, 1e6]. Scores are loss reductions on the
    /// validators' holdouts, in the task's loss units (0.1 = the update cuts the loss by
    /// 0.1); a small negative threshold keeps honest clients with unusual data from being
    /// slashed near convergence, where their updates move the model slightly away from the
    /// validators' data.
    pub accept_threshold: f64,
    /// How validators score an update: `"full"` (the default), the loss reduction of the
    /// global model plus the whole update; `"share"`, of the global model plus the update's
    /// share of a mean of the round's `n` updates (a `1/n` of it), times `n`: what it brings
    /// to the aggregate, at its own scale. Left out of the serialization when `"full"`.
    #[serde(skip_serializing_if = "ScoreRule::is_full")]
    pub score: ScoreRule,
    /// Tokens paid per unit of consensus score (a nat of loss reduction), at most: an accepted
    /// update is paid the lesser of its share of the round's pool by score and its score times
    /// this, so a round pays in proportion to what its updates bring and early rounds, which
    /// bring the most, pay the most (the rest of the pool goes to the treasury). [0, 1e9], at
    /// most six decimals; 0 (the default) splits the whole pool by score. Left out of the
    /// serialization when 0.
    #[serde(skip_serializing_if = "is_zero_f64")]
    pub reward_per_nat: f64,
}

fn is_zero_f64(x: &f64) -> bool {
    *x == 0.0
}

/// How validators score an update ([`IncentiveConfig::score`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScoreRule {
    /// The loss reduction of the global model plus the whole update.
    #[default]
    Full,
    /// `n` times the loss reduction of the global model plus `1/n` of the update, `n` the
    /// updates scored in the round.
    Share,
}

impl ScoreRule {
    /// Whether this is the default.
    pub fn is_full(&self) -> bool {
        *self == ScoreRule::Full
    }
}

impl Default for IncentiveConfig {
    fn default() -> Self {
        Self {
            initial_balance: 10_000,
            client_stake: 500,
            validator_stake: 2_000,
            reward_per_round: 100,
            accept_threshold: -0.05,
            score: ScoreRule::Full,
            reward_per_nat: 0.0,
        }
    }
}

/// A whole run, as written. [`RunConfig::check`] makes the [`ValidConfig`] a run takes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Everything random derives from it: any 64-bit number.
    pub seed: u64,
    /// Number of clients: [1, 100000].
    pub clients: usize,
    /// Number of validators: [1, 32] (the protocol's most per round).
    pub validators: usize,
    /// What is learned.
    #[serde(default)]
    pub task: TaskConfig,
    /// Rounds and cohort sizes.
    #[serde(default)]
    pub coordinator: CoordinatorConfig,
    /// Aggregation.
    #[serde(default)]
    pub aggregation: AggregationConfig,
    /// Attackers, if any.
    #[serde(default)]
    pub attack: Option<AttackConfig>,
    /// Stakes and rewards.
    #[serde(default)]
    pub incentives: IncentiveConfig,
    /// How the run prepares for unlearning (shards). Left out of the config's serialization
    /// when it is the default, so that the digest of every unsharded config stays as it was.
    #[serde(default, skip_serializing_if = "UnlearningConfig::is_default")]
    pub unlearning: UnlearningConfig,
    /// How clients' updates travel (docs/compression.md). Left out of the config's
    /// serialization when it is the default (`none`), so that the digest of every config
    /// written before it stays as it was.
    #[serde(default, skip_serializing_if = "CompressionConfig::is_default")]
    pub compression: CompressionConfig,
    /// Clients train through stage servers that hold the base model's layers
    /// (docs/pipeline.md). Left out of the config's serialization when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<PipelineConfig>,
    /// What the run measures besides its rounds. Left out of the config's serialization when
    /// it is the default (nothing), so that the digest of every config written before it
    /// stays as it was.
    #[serde(default, skip_serializing_if = "ReportConfig::is_default")]
    pub report: ReportConfig,
    /// Clients with a profile of their own (`[[profile]]`, a graded experiment: noisy,
    /// duplicated or scarce data, a free-rider, an attacker that attacks some rounds only).
    /// Left out of the config's serialization when there is none.
    #[serde(default, rename = "profile", skip_serializing_if = "Vec::is_empty")]
    pub profiles: Vec<ClientProfile>,
    /// The data market (`[market]`): clients whose datasets are listed at a price per round,
    /// the royalties' split and fund. Left out of the config's serialization when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub market: Option<MarketConfig>,
    /// Per-run governance (`[governance]`): enabled on the ledger after the enrolment, every
    /// enrolled client bonding to it. Left out of the config's serialization when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub governance: Option<GovernanceConfig>,
}

/// Per-run governance (`[governance]`, docs/economics.md): once the parties have enrolled, the
/// coordinator enables it with the enrolled clients' datasets as founding ones and each client
/// bonds `bond` tokens; from then on the members admit clients and datasets, approve unlearning
/// requests and adopt hyperparameters by stake-weighted vote (`cohort gov`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GovernanceConfig {
    /// The share of the bonded stake that must vote: (0, 1], default 0.5.
    pub quorum: f64,
    /// The share of the votes cast that must be for a proposal, exceeded: [0.5, 1), default
    /// 0.5 (a simple majority).
    pub majority: f64,
    /// Seconds a proposal is open for votes: [1, 31536000], default a day.
    pub voting_period: u64,
    /// Seconds a passed proposal waits before it executes: [0, 31536000], default a day.
    pub timelock: u64,
    /// Tokens each client bonds at enrolment: [1, initial balance - client stake - 10],
    /// default 100.
    pub bond: u64,
}

impl Default for GovernanceConfig {
    fn default() -> Self {
        Self {
            quorum: 0.5,
            majority: 0.5,
            voting_period: 86_400,
            timelock: 86_400,
            bond: 100,
        }
    }
}

/// The data market of a run (`[market]`, docs/economics.md): some clients list their datasets
/// at a price per round of use, allowing this run's training recipe or none; every round that
/// aggregates an update of a listed dataset pays its owner a royalty from the run's fund, less
/// the coordinator's and the treasury's fees.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarketConfig {
    /// The coordinator's share of each royalty: [0, 1], default 0.
    #[serde(default)]
    pub coordinator_fee: f64,
    /// The protocol treasury's share of each royalty: [0, 1] (with the coordinator's at most
    /// 1), default 0.
    #[serde(default)]
    pub treasury_fee: f64,
    /// Whole tokens the run's sponsor (its governance, through the coordinator) puts in the
    /// royalty fund before the first round: [0, 10^12].
    pub fund: u64,
    /// Where royalties come from: `sponsor` (the default: the `fund` put in before the first
    /// round) or `round` (each round's reward pool: the coordinator moves the royalties the
    /// round may owe, the prices of its listed clients in the cohort, from the pool into the
    /// fund as it opens the round, and the rest is the round's reward pool). Left out when
    /// `sponsor`.
    #[serde(default, skip_serializing_if = "RoyaltySource::is_sponsor")]
    pub source: RoyaltySource,
    /// The listings (`[[market.listing]]`): at least one.
    #[serde(rename = "listing")]
    pub listings: Vec<ListingConfig>,
    /// The recipe the listings with `allow = "run"` allow, when not this config's own: set by
    /// the run when it adopts hyperparameters by vote (its clients' listings allow the recipe
    /// they were made under; a new one is the owners' to allow). Left out when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipe: Option<cohort_core::Hash32>,
}

/// Clients that list their datasets (`[[market.listing]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListingConfig {
    /// The clients (indices; each in at most one listing).
    pub clients: Vec<u32>,
    /// Whole tokens per round of use: [1, 10^9].
    pub price: u64,
    /// Which recipes they allow: `run` (this run's, default) or `none` (they sit every round
    /// out, recording each refusal on the ledger).
    #[serde(default)]
    pub allow: AllowRecipes,
}

/// Where a run's royalties come from ([`MarketConfig::source`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RoyaltySource {
    /// A sponsor's fund, put in before the first round.
    #[default]
    Sponsor,
    /// Each round's reward pool.
    Round,
}

impl RoyaltySource {
    /// Whether this is the default (`sponsor`).
    pub fn is_sponsor(&self) -> bool {
        *self == Self::Sponsor
    }
}

impl MarketConfig {
    /// The most royalties one round may owe, whole tokens: the prices of the clients whose
    /// listings allow the run's recipe.
    pub fn most_per_round(&self) -> u64 {
        self.listings
            .iter()
            .filter(|l| l.allow == AllowRecipes::Run)
            .map(|l| l.price.saturating_mul(l.clients.len() as u64))
            .fold(0, u64::saturating_add)
    }

    /// The royalties a round with `cohort` may owe, whole tokens: the prices of its listed
    /// clients whose listings allow the run's recipe.
    pub fn owed_by(&self, cohort: &[u32]) -> u64 {
        self.listings
            .iter()
            .filter(|l| l.allow == AllowRecipes::Run)
            .map(|l| {
                let n = l.clients.iter().filter(|k| cohort.contains(k)).count() as u64;
                l.price.saturating_mul(n)
            })
            .fold(0, u64::saturating_add)
    }
}

/// The recipes a listing allows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AllowRecipes {
    /// This run's recipe (as the client's own build computes it).
    #[default]
    Run,
    /// None: nothing may train on the data.
    None,
}

impl RunConfig {
    /// Client `k`'s listing (`[[market.listing]]`), if it has one.
    pub fn listing(&self, k: u32) -> Option<&ListingConfig> {
        self.market
            .as_ref()?
            .listings
            .iter()
            .find(|l| l.clients.contains(&k))
    }
}

/// A profile for some clients (`[[profile]]`): what is done to their data and what they do
/// to their updates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientProfile {
    /// The clients it applies to (indices, each in at most one profile and none an attacker
    /// of `[attack]`).
    pub clients: Vec<u32>,
    /// What is done to their data: `label-noise` (`share`), `duplicate` (`of`), `subsample`
    /// (`share`); linear task only.
    #[serde(default)]
    pub data: Option<crate::DataProfile>,
    /// What they do to their updates: an update attack as `[attack]` names them
    /// (`sign-flip`, `random-noise`, `scaled-replacement`, `free-rider`).
    #[serde(default)]
    pub attack: Option<AttackKind>,
    /// With `attack`: attack in every `every`-th round only, from the first (2: rounds 1, 3,
    /// 5, ..., honest in the others): [1, 1000], default 1.
    #[serde(default = "every_round")]
    pub every: u64,
}

fn every_round() -> u64 {
    1
}

/// What a run measures besides its rounds (`[report]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReportConfig {
    /// The collaboration gain: for each of up to `collaboration_clients` clients, the loss on
    /// a slice of its own data that it holds out from its training (`local_fraction`) of the
    /// base model, of the client training alone with the same compute (its local steps, once
    /// a round, from the base), and of the federated model. The `lm` task only; the slice
    /// changes the run (the clients train on the rest).
    pub collaboration_gain: bool,
    /// The share of each client's own data held out for it: (0, 0.5], default 0.1.
    pub local_fraction: f64,
    /// Clients measured at most (drawn by the run's seed when there are more): [1, 1024],
    /// default 8. Each costs its training alone for as many rounds as the run.
    pub collaboration_clients: usize,
}

impl Default for ReportConfig {
    fn default() -> Self {
        Self {
            collaboration_gain: false,
            local_fraction: 0.1,
            collaboration_clients: 8,
        }
    }
}

impl ReportConfig {
    /// Whether this is the default (nothing measured, nothing set).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

fn check_report(r: &ReportConfig, task: &TaskConfig) -> Result<(), FlError> {
    float("report.local_fraction", r.local_fraction, 0.0, 0.5, true)?;
    count(
        "report.collaboration_clients",
        r.collaboration_clients,
        1,
        1024,
    )?;
    if r.collaboration_gain && !matches!(task, TaskConfig::Lm(_)) {
        return Err(bad(
            "report.collaboration_gain",
            "it needs each client's own held-out text: only the lm task has it".into(),
        ));
    }
    Ok(())
}

/// Clients' local training through stage servers (`[pipeline]`, the `lm` task only): each
/// client runs the embeddings, the head and its adapter, and the servers the transformer
/// layers, with the same result as training alone (uncompressed). Either `stages` (servers this
/// process starts on loopback) or `servers` (servers already running, `cohort serve-layers`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Stage servers to start in this process on loopback (real sockets), each holding an
    /// equal share of the base model's layers, the first ones one more: [1, 64] and at most
    /// the model's layers. Not with `servers`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stages: Option<usize>,
    /// Stage servers already running, in the order of their layers, together holding every
    /// layer: `"URL"` or `"URL|SPARE|..."` (a spare replaces a server that stops answering).
    /// `https://` URLs need `ca`; `http://` ones `insecure = true`. Not with `stages`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<String>,
    /// The CA certificate (PEM) that signed the servers' certificates, relative to the
    /// config's directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<std::path::PathBuf>,
    /// Plain text to `http://` servers (loopback and tests only).
    pub insecure: bool,
    /// The share of every forward call's rows a verifier recomputes, drawn after the server
    /// answered: [0, 1], default 0 (none). With `stages`, one verifier server per stage is
    /// started; with `servers`, `verifiers` lists them.
    pub verify_rate: f64,
    /// Verifiers for `servers`: stage servers holding the same layers as some stage.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub verifiers: Vec<String>,
    /// How streams and gradients travel: `"none"` (f32, the default: the same result as
    /// training alone), `"int8"`, `"int4"` or `"int5-3"` (docs/pipeline.md).
    pub compress: String,
    /// The deadline of every call to a server, in seconds: [1, 86400], default 120.
    pub timeout: u64,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            stages: None,
            servers: Vec::new(),
            ca: None,
            insecure: false,
            verify_rate: 0.0,
            verifiers: Vec::new(),
            compress: "none".into(),
            timeout: 120,
        }
    }
}

/// The compressions `[pipeline] compress` takes (the stage protocol's, by name).
pub const PIPELINE_COMPRESSIONS: [&str; 4] = ["none", "int8", "int4", "int5-3"];

/// How clients' updates travel: `[compression]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompressionConfig {
    /// The codec of every update blob: `"none"` (f32, the default), `"int8"` (a byte per
    /// value and an f32 scale per tensor), `"topk"` (the largest `topk_fraction` of every
    /// tensor's values, as f32, and where they are), `"topk-int8"` (those values as bytes),
    /// `"lowrank"` (every 2-D tensor as the f32 factors of its truncated SVD of rank `rank`)
    /// or `"lowrank-int8"` (those factors as bytes). The coordinator and the validators refuse
    /// an update blob of another codec.
    pub update: UpdateCodec,
    /// The share of every tensor's values top-k keeps: [0.001, 1], default 0.1. Only the
    /// top-k codecs take it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topk_fraction: Option<f64>,
    /// The rank the low-rank codecs keep of every 2-D tensor (capped by its smaller side):
    /// [1, 4096], default 2. Only the low-rank codecs take it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rank: Option<u32>,
    /// Error feedback: each client adds what it did not send of its last update to its next
    /// one before compressing. On by default for the lossy codecs (all but `none`); `false`
    /// turns it off; `none` sends everything and takes no setting.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_feedback: Option<bool>,
}

impl CompressionConfig {
    /// Whether this is the default (no compression, nothing set).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// The compressor a client uses (a checked config's fields are in range).
    pub fn compressor(&self) -> Compressor {
        Compressor::new(
            self.update,
            self.topk_fraction.unwrap_or(DEFAULT_TOPK_FRACTION),
        )
        .with_rank(self.rank.unwrap_or(DEFAULT_RANK))
        .with_feedback(self.error_feedback.unwrap_or(true))
    }
}

/// How a run prepares for unlearning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UnlearningConfig {
    /// Shards (SISA): clients are grouped into this many shards (client `k` in shard
    /// `k mod shards`), each training its own slice of the model from its own clients only;
    /// the model served is the mean of the slices. Forgetting a client then retrains its
    /// shard alone (`cohort unlearn --method shards`). 1 (the default) is an ordinary run;
    /// at most `clients` and 256. See `cohort_fl::shards`.
    pub shards: u32,
}

impl Default for UnlearningConfig {
    fn default() -> Self {
        Self { shards: 1 }
    }
}

impl UnlearningConfig {
    /// Whether this is the default (no shards).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

impl RunConfig {
    /// The stake client `k` puts up: a Sybil's if it is one, else `incentives.client_stake`.
    pub fn client_stake(&self, k: u32) -> u64 {
        match self.attack.as_ref().and_then(|a| a.sybil_stake) {
            Some(s) if self.is_attacker(k) => s,
            _ => self.incentives.client_stake,
        }
    }

    /// Whether client `k` attacks.
    pub fn is_attacker(&self, k: u32) -> bool {
        self.attack.as_ref().is_some_and(|a| {
            let n = (a.fraction * self.clients as f64).round() as usize;
            (k as usize) >= self.clients - n.min(self.clients)
        })
    }

    /// Client `k`'s profile (`[[profile]]`), if it has one.
    pub fn profile(&self, k: u32) -> Option<&ClientProfile> {
        self.profiles.iter().find(|p| p.clients.contains(&k))
    }

    /// Clients sampled per round: `clients_per_round`, or all of them when that is larger.
    pub fn cohort_size(&self) -> usize {
        self.coordinator.clients_per_round.min(self.clients)
    }

    /// Checks every field against its documented range and the fields against each other;
    /// the error names the first field that is wrong (`task.lr`, `aggregation.strategy.k`)
    /// and its valid range.
    pub fn check(self) -> Result<ValidConfig, FlError> {
        check_run(&self)?;
        Ok(ValidConfig(self))
    }
}

/// A [`RunConfig`] whose every field is in range: made only by [`RunConfig::check`], read
/// through `Deref`. Serializes as the config it holds.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct ValidConfig(RunConfig);

impl ValidConfig {
    /// The config.
    pub fn config(&self) -> &RunConfig {
        &self.0
    }

    /// The config, to change and check again.
    pub fn into_inner(self) -> RunConfig {
        self.0
    }
}

impl Deref for ValidConfig {
    type Target = RunConfig;

    fn deref(&self) -> &RunConfig {
        &self.0
    }
}

impl TryFrom<RunConfig> for ValidConfig {
    type Error = FlError;

    fn try_from(cfg: RunConfig) -> Result<Self, FlError> {
        cfg.check()
    }
}

fn bad(what: &'static str, reason: String) -> FlError {
    FlError::InvalidConfig { what, reason }
}

/// `v` in `[lo, hi]`.
fn int(what: &'static str, v: u64, lo: u64, hi: u64) -> Result<(), FlError> {
    if (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(bad(what, format!("{v} is not in [{lo}, {hi}]")))
    }
}

fn count(what: &'static str, v: usize, lo: u64, hi: u64) -> Result<(), FlError> {
    int(what, v as u64, lo, hi)
}

/// `v` finite and in `[lo, hi]`, or `(lo, hi]` when `open` (a positive quantity).
fn float(what: &'static str, v: f64, lo: f64, hi: f64, open: bool) -> Result<(), FlError> {
    let above = if open { v > lo } else { v >= lo };
    if v.is_finite() && above && v <= hi {
        Ok(())
    } else {
        let (l, r) = if open { ("(", "]") } else { ("[", "]") };
        Err(bad(
            what,
            format!("{v} is not a finite number in {l}{lo}, {hi}{r}"),
        ))
    }
}

/// A positive number up to `hi`: `(0, hi]`.
fn positive(what: &'static str, v: f64, hi: f64) -> Result<(), FlError> {
    float(what, v, 0.0, hi, true)
}

/// A share strictly between 0 and a half: `(0, 0.5)`.
fn share(what: &'static str, v: f64) -> Result<(), FlError> {
    if v.is_finite() && v > 0.0 && v < 0.5 {
        Ok(())
    } else {
        Err(bad(what, format!("{v} is not a finite number in (0, 0.5)")))
    }
}

fn path(what: &'static str, p: &std::path::Path) -> Result<(), FlError> {
    if p.as_os_str().is_empty() {
        return Err(bad(what, "the path is empty".into()));
    }
    Ok(())
}

fn check_run(c: &RunConfig) -> Result<(), FlError> {
    count("clients", c.clients, 1, MAX_CLIENTS as u64)?;
    count(
        "validators",
        c.validators,
        1,
        PROTOCOL_MAX_VALIDATORS as u64,
    )?;
    check_coordinator(&c.coordinator)?;
    check_incentives(&c.incentives)?;
    // The task before the attack, which refers to it (a trigger inside the vocabulary).
    match &c.task {
        TaskConfig::Linear(t) => check_linear(t, c)?,
        TaskConfig::Lm(t) => check_lm(t)?,
        TaskConfig::Imdb(t) => check_imdb(t)?,
    }
    check_aggregation(&c.aggregation, c.cohort_size(), c)?;
    int(
        "unlearning.shards",
        u64::from(c.unlearning.shards),
        1,
        (c.clients as u64).min(u64::from(crate::shards::MAX_SHARDS)),
    )?;
    check_compression(&c.compression)?;
    check_report(&c.report, &c.task)?;
    if let Some(p) = &c.pipeline {
        check_pipeline(p, &c.task)?;
    }
    if let Some(a) = &c.attack {
        check_attack(a, c)?;
    }
    if let Some(m) = &c.market {
        check_market(m, c)?;
    }
    if let Some(g) = &c.governance {
        check_governance(g, c)?;
    }
    check_profiles(c)
}

fn check_market(m: &MarketConfig, c: &RunConfig) -> Result<(), FlError> {
    float("market.coordinator_fee", m.coordinator_fee, 0.0, 1.0, false)?;
    float("market.treasury_fee", m.treasury_fee, 0.0, 1.0, false)?;
    // In basis points, as the contract takes them.
    if bps(m.coordinator_fee) + bps(m.treasury_fee) > 10_000 {
        return Err(bad(
            "market.treasury_fee",
            format!(
                "the coordinator's {} and the treasury's {} add up to more than 1",
                m.coordinator_fee, m.treasury_fee
            ),
        ));
    }
    int("market.fund", m.fund, 0, 1_000_000_000_000)?;
    if m.listings.is_empty() {
        return Err(bad("market.listing", "lists no dataset".into()));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, l) in m.listings.iter().enumerate() {
        let at = |what: String| bad("market.listing", format!("listing {i}: {what}"));
        if l.clients.is_empty() {
            return Err(at("names no clients".into()));
        }
        for &k in &l.clients {
            if k as usize >= c.clients {
                return Err(at(format!(
                    "client {k} is not one of the run's {}",
                    c.clients
                )));
            }
            if !seen.insert(k) {
                return Err(at(format!("client {k} is in another listing")));
            }
        }
        int("market.listing.price", l.price, 1, 1_000_000_000)?;
    }
    if m.source == RoyaltySource::Round && m.most_per_round() > c.incentives.reward_per_round {
        return Err(bad(
            "market.source",
            format!(
                "royalties from each round's pool need incentives.reward_per_round ({}) to \
                 cover a round's most royalties, the listed prices ({})",
                c.incentives.reward_per_round,
                m.most_per_round()
            ),
        ));
    }
    Ok(())
}

fn check_governance(g: &GovernanceConfig, c: &RunConfig) -> Result<(), FlError> {
    float("governance.quorum", g.quorum, 0.0, 1.0, true)?;
    if bps(g.quorum) == 0 {
        return Err(bad(
            "governance.quorum",
            format!("{} is below 0.0001", g.quorum),
        ));
    }
    if !(g.majority.is_finite() && (0.5..1.0).contains(&g.majority) && bps(g.majority) < 10_000) {
        return Err(bad(
            "governance.majority",
            format!("{} is not a finite number in [0.5, 1)", g.majority),
        ));
    }
    int("governance.voting_period", g.voting_period, 1, 31_536_000)?;
    int("governance.timelock", g.timelock, 0, 31_536_000)?;
    let most = c
        .incentives
        .initial_balance
        .saturating_sub(c.incentives.client_stake)
        .saturating_sub(PROTOCOL_UPDATE_DEPOSIT);
    int("governance.bond", g.bond, 1, most.max(1))?;
    if most == 0 {
        return Err(bad(
            "governance.bond",
            "incentives.initial_balance leaves nothing to bond after the stake and a deposit"
                .into(),
        ));
    }
    Ok(())
}

/// A share in [0, 1] as basis points (rounded).
pub fn bps(share: f64) -> u16 {
    (share.clamp(0.0, 1.0) * 10_000.0).round() as u16
}

fn check_profiles(c: &RunConfig) -> Result<(), FlError> {
    let mut seen = std::collections::BTreeMap::new();
    for (i, p) in c.profiles.iter().enumerate() {
        let at = |what: String| bad("profile", format!("profile {i}: {what}"));
        if p.clients.is_empty() {
            return Err(at("names no clients".into()));
        }
        for &k in &p.clients {
            if k as usize >= c.clients {
                return Err(at(format!(
                    "client {k} does not exist (clients = {})",
                    c.clients
                )));
            }
            if let Some(j) = seen.insert(k, i) {
                return Err(at(format!("client {k} is in profile {j} already")));
            }
            if c.is_attacker(k) {
                return Err(at(format!(
                    "client {k} is an attacker of [attack] (attack.fraction); a client has one \
                     role"
                )));
            }
        }
        match &p.data {
            None => {}
            Some(_) if !matches!(c.task, TaskConfig::Linear(_)) => {
                return Err(at(
                    "data profiles are supported by the linear task only".into()
                ));
            }
            Some(
                crate::DataProfile::LabelNoise { share } | crate::DataProfile::Subsample { share },
            ) if !(share.is_finite() && *share > 0.0 && *share <= 1.0) => {
                return Err(at(format!("share {share} is not a number in (0, 1]")));
            }
            Some(crate::DataProfile::LabelNoise { .. } | crate::DataProfile::Subsample { .. }) => {}
            Some(crate::DataProfile::Duplicate { of }) => {
                if *of as usize >= c.clients {
                    return Err(at(format!(
                        "of = {of}: no such client (clients = {})",
                        c.clients
                    )));
                }
                if p.clients.contains(of) {
                    return Err(at(format!("client {of} cannot duplicate itself")));
                }
            }
        }
        match &p.attack {
            None if p.every != 1 => {
                return Err(at("every without an attack".into()));
            }
            None => {}
            Some(a) => {
                if a.update().is_none() {
                    return Err(at(format!(
                        "attack {:?}: a profile's attack is an update attack (sign-flip, \
                         random-noise, scaled-replacement, free-rider); data goes in `data`",
                        a
                    )));
                }
                let fine = match a {
                    AttackKind::RandomNoise { std: x }
                    | AttackKind::SignFlip { scale: x }
                    | AttackKind::ScaledReplacement { factor: x } => {
                        x.is_finite() && *x > 0.0 && *x <= 1e6
                    }
                    AttackKind::FreeRider { fake_samples } => {
                        (1..=MAX_TOKENS).contains(fake_samples)
                    }
                    _ => true,
                };
                if !fine {
                    return Err(at(format!(
                        "attack {a:?}: its parameter is out of range (0, 1e6]"
                    )));
                }
                if !(1..=1000).contains(&p.every) {
                    return Err(at(format!("every = {}: not in [1, 1000]", p.every)));
                }
            }
        }
        if p.data.is_none() && p.attack.is_none() {
            return Err(at("has neither `data` nor `attack`".into()));
        }
    }
    // A duplicate copies an original: not another duplicate.
    for p in &c.profiles {
        if let Some(crate::DataProfile::Duplicate { of }) = &p.data
            && c.profiles.iter().any(|q| {
                q.clients.contains(of)
                    && matches!(q.data, Some(crate::DataProfile::Duplicate { .. }))
            })
        {
            return Err(bad(
                "profile",
                format!("client {of} is copied and is itself a duplicate; copy an original"),
            ));
        }
    }
    Ok(())
}

/// Whether `s` has the form of a custom stage codec, `qF/B` with flags `s`, `c`, `r` and `k`
/// after B, each at most once, F and B odd in [1, 127] (what
/// `cohort_net::stage::custom_compression` takes).
fn custom_stage_codec(s: &str) -> bool {
    let odd = |x: &str| x.parse::<u32>().is_ok_and(|n| n % 2 == 1 && n <= 127);
    let Some((f, b)) = s.strip_prefix('q').and_then(|x| x.split_once('/')) else {
        return false;
    };
    let digits = b.trim_end_matches(['s', 'c', 'r', 'k']);
    let flags = &b[digits.len()..];
    let once = flags
        .chars()
        .enumerate()
        .all(|(i, c)| !flags[i + 1..].contains(c));
    odd(f) && odd(digits) && once
}

fn check_pipeline(p: &PipelineConfig, task: &TaskConfig) -> Result<(), FlError> {
    if !matches!(task, TaskConfig::Lm(_)) {
        return Err(bad(
            "pipeline",
            "stage servers hold a language model's transformer layers: only the lm task \
             trains through them"
                .into(),
        ));
    }
    match (p.stages, p.servers.is_empty()) {
        (Some(_), false) => {
            return Err(bad(
                "pipeline.stages",
                "either stages (servers started here) or servers (running ones), not both".into(),
            ));
        }
        (None, true) => {
            return Err(bad(
                "pipeline",
                "set stages (servers started here) or servers (running ones)".into(),
            ));
        }
        (Some(n), true) => count("pipeline.stages", n, 1, 64)?,
        (None, false) => {}
    }
    for url in p.servers.iter().chain(&p.verifiers) {
        for u in url.split('|') {
            let what = if p.servers.contains(url) {
                "pipeline.servers"
            } else {
                "pipeline.verifiers"
            };
            match u.split_once("://").map(|(s, _)| s) {
                Some("https") if p.ca.is_none() => {
                    return Err(bad(what, format!("{u}: https:// needs pipeline.ca")));
                }
                Some("http") if !p.insecure => {
                    return Err(bad(
                        what,
                        format!("{u}: http:// is plain text; set pipeline.insecure = true"),
                    ));
                }
                Some("https" | "http") => {}
                _ => {
                    return Err(bad(
                        what,
                        format!("{u:?} is not an https:// or http:// URL"),
                    ));
                }
            }
        }
    }
    if let Some(ca) = &p.ca {
        path("pipeline.ca", ca)?;
    }
    float("pipeline.verify_rate", p.verify_rate, 0.0, 1.0, false)?;
    if !p.verifiers.is_empty() && p.stages.is_some() {
        return Err(bad(
            "pipeline.verifiers",
            "with stages, one verifier per stage is started here (set verify_rate)".into(),
        ));
    }
    if !p.verifiers.is_empty() && p.verify_rate == 0.0 {
        return Err(bad(
            "pipeline.verify_rate",
            "0 with verifiers listed: they would check nothing".into(),
        ));
    }
    if !PIPELINE_COMPRESSIONS.contains(&p.compress.as_str()) && !custom_stage_codec(&p.compress) {
        return Err(bad(
            "pipeline.compress",
            format!(
                "{:?}: known are {}, and qF/B[s][c][r][k] (odd steps in [1, 127])",
                p.compress,
                PIPELINE_COMPRESSIONS.join(", ")
            ),
        ));
    }
    int("pipeline.timeout", p.timeout, 1, 86_400)
}

fn check_compression(c: &CompressionConfig) -> Result<(), FlError> {
    if let Some(f) = c.topk_fraction {
        if !c.update.is_topk() {
            return Err(bad(
                "compression.topk_fraction",
                format!(
                    "only the top-k codecs (update = \"topk\" or \"topk-int8\") take it, \
                     not update = \"{}\"",
                    c.update
                ),
            ));
        }
        float(
            "compression.topk_fraction",
            f,
            MIN_TOPK_FRACTION,
            1.0,
            false,
        )?;
    }
    if let Some(r) = c.rank {
        if !c.update.is_lowrank() {
            return Err(bad(
                "compression.rank",
                format!(
                    "only the low-rank codecs (update = \"lowrank\" or \"lowrank-int8\") take \
                     it, not update = \"{}\"",
                    c.update
                ),
            ));
        }
        int("compression.rank", u64::from(r), 1, u64::from(MAX_RANK))?;
    }
    if c.update == UpdateCodec::None && c.error_feedback.is_some() {
        return Err(bad(
            "compression.error_feedback",
            "update = \"none\" sends every value: there is nothing to feed back".into(),
        ));
    }
    Ok(())
}

fn check_coordinator(c: &CoordinatorConfig) -> Result<(), FlError> {
    int("coordinator.rounds", c.rounds, 1, MAX_ROUNDS)?;
    count(
        "coordinator.clients_per_round",
        c.clients_per_round,
        1,
        PROTOCOL_MAX_UPDATES_PER_ROUND as u64,
    )?;
    int("coordinator.train_timeout", c.train_timeout, 1, MAX_TIMEOUT)?;
    int(
        "coordinator.commit_timeout",
        c.commit_timeout,
        1,
        MAX_TIMEOUT,
    )?;
    int(
        "coordinator.reveal_timeout",
        c.reveal_timeout,
        1,
        MAX_TIMEOUT,
    )
}

fn check_incentives(i: &IncentiveConfig) -> Result<(), FlError> {
    float(
        "incentives.reward_per_nat",
        i.reward_per_nat,
        0.0,
        1e9,
        false,
    )?;
    int(
        "incentives.initial_balance",
        i.initial_balance,
        1,
        MAX_TOKENS,
    )?;
    let most = i.initial_balance.saturating_sub(PROTOCOL_UPDATE_DEPOSIT);
    if i.client_stake < PROTOCOL_MIN_CLIENT_STAKE || i.client_stake > most {
        return Err(bad(
            "incentives.client_stake",
            format!(
                "{} is not in [{PROTOCOL_MIN_CLIENT_STAKE}, {most}]: at least the protocol's \
                 minimum client stake, and leaving one update deposit \
                 ({PROTOCOL_UPDATE_DEPOSIT}) of incentives.initial_balance ({})",
                i.client_stake, i.initial_balance
            ),
        ));
    }
    if i.validator_stake < PROTOCOL_MIN_VALIDATOR_STAKE || i.validator_stake > i.initial_balance {
        return Err(bad(
            "incentives.validator_stake",
            format!(
                "{} is not in [{PROTOCOL_MIN_VALIDATOR_STAKE}, {}]: at least the protocol's \
                 minimum validator stake, at most incentives.initial_balance",
                i.validator_stake, i.initial_balance
            ),
        ));
    }
    int(
        "incentives.reward_per_round",
        i.reward_per_round,
        0,
        MAX_TOKENS,
    )?;
    float(
        "incentives.accept_threshold",
        i.accept_threshold,
        -1e6,
        1e6,
        false,
    )
}

fn check_aggregation(a: &AggregationConfig, cohort: usize, c: &RunConfig) -> Result<(), FlError> {
    let per_round = || {
        format!(
            "a cohort of {cohort} (coordinator.clients_per_round {}, clients {})",
            c.coordinator.clients_per_round, c.clients
        )
    };
    match a.strategy {
        StrategyConfig::FedAvg | StrategyConfig::ScoreWeighted | StrategyConfig::Median => {}
        StrategyConfig::TrimmedMean { k } => {
            if k.saturating_mul(2).saturating_add(1) > cohort {
                return Err(bad(
                    "aggregation.strategy.k",
                    format!(
                        "{k} trims {} values of {}: 2 k + 1 must not exceed it",
                        k.saturating_mul(2),
                        per_round()
                    ),
                ));
            }
        }
        StrategyConfig::Krum { f, m } => {
            if f.saturating_mul(2).saturating_add(3) > cohort {
                return Err(bad(
                    "aggregation.strategy.f",
                    format!(
                        "{f} Byzantine clients need at least 2 f + 3 = {} updates, more than {}",
                        f.saturating_mul(2).saturating_add(3),
                        per_round()
                    ),
                ));
            }
            let most = cohort - f;
            if m == 0 || m > most {
                return Err(bad(
                    "aggregation.strategy.m",
                    format!("{m} is not in [1, {most}] (the cohort {cohort} less f = {f})"),
                ));
            }
        }
    }
    if let Some(x) = a.clip_norm {
        positive("aggregation.clip_norm", x, 1e9)?;
    }
    if let Some(x) = a.fedadam_lr {
        positive("aggregation.fedadam_lr", x, 10.0)?;
    }
    Ok(())
}

fn check_attack(a: &AttackConfig, c: &RunConfig) -> Result<(), FlError> {
    float("attack.fraction", a.fraction, 0.0, 1.0, false)?;
    match &a.attack {
        AttackKind::RandomNoise { std } => positive("attack.attack.std", *std, 1e6)?,
        AttackKind::SignFlip { scale } => positive("attack.attack.scale", *scale, 1e6)?,
        AttackKind::ScaledReplacement { factor } => {
            positive("attack.attack.factor", *factor, 1e6)?;
        }
        AttackKind::FreeRider { fake_samples } => {
            int("attack.attack.fake_samples", *fake_samples, 1, MAX_TOKENS)?;
        }
        AttackKind::LabelFlip | AttackKind::Backdoor { .. } => {
            if !matches!(c.task, TaskConfig::Imdb(_)) {
                return Err(bad(
                    "attack.attack",
                    format!(
                        "the {} attack needs a classification task (kind = \"imdb\")",
                        a.attack.data().map_or("data", |d| d.name())
                    ),
                ));
            }
        }
    }
    if let AttackKind::Backdoor {
        trigger,
        target,
        poison_fraction,
    } = &a.attack
    {
        count("attack.attack.trigger", trigger.len(), 1, 64).map_err(|_| {
            bad(
                "attack.attack.trigger",
                format!("holds {} ids; give 1 to 64", trigger.len()),
            )
        })?;
        if let TaskConfig::Imdb(t) = &c.task
            && let Some(id) = trigger.iter().find(|&&id| id >= t.num_words)
        {
            return Err(bad(
                "attack.attack.trigger",
                format!(
                    "id {id} is outside the vocabulary (task.num_words = {})",
                    t.num_words
                ),
            ));
        }
        int("attack.attack.target", u64::from(*target), 0, 1)?;
        float(
            "attack.attack.poison_fraction",
            *poison_fraction,
            0.0,
            1.0,
            true,
        )?;
    }
    count(
        "attack.colluding_validators",
        a.colluding_validators,
        0,
        c.validators as u64,
    )?;
    if let Some(s) = a.sybil_stake {
        int("attack.sybil_stake", s, 1, c.incentives.initial_balance)?;
    }
    Ok(())
}

fn check_linear(t: &LinearTaskConfig, c: &RunConfig) -> Result<(), FlError> {
    count("task.dim", t.dim, 1, 1_000_000)?;
    count(
        "task.samples_per_client",
        t.samples_per_client,
        1,
        1_000_000,
    )?;
    count("task.holdout_samples", t.holdout_samples, 1, 1_000_000)?;
    count("task.test_samples", t.test_samples, 1, 1_000_000)?;
    let samples = (c.clients as u64) * (t.samples_per_client as u64)
        + (c.validators as u64) * (t.holdout_samples as u64)
        + t.test_samples as u64;
    let values = samples.saturating_mul(t.dim as u64 + 1);
    if values > MAX_LINEAR_VALUES {
        return Err(bad(
            "task.samples_per_client",
            format!(
                "{samples} samples of task.dim {} features (clients x samples_per_client + \
                 validators x holdout_samples + test_samples) are {values} values, more than \
                 {MAX_LINEAR_VALUES}",
                t.dim
            ),
        ));
    }
    float("task.client_drift", t.client_drift, 0.0, 100.0, false)?;
    float("task.noise", t.noise, 0.0, 100.0, false)?;
    count("task.epochs", t.epochs, 1, 1_000)?;
    count("task.batch", t.batch, 1, 1_000_000)?;
    positive("task.lr", t.lr, 10.0)?;
    float("task.prox_mu", t.prox_mu, 0.0, 1_000.0, false)?;
    stable_prox(t.lr, t.prox_mu)
}

/// SGD with a proximal term shrinks towards the global model by `1 - lr * mu` per step.
fn stable_prox(lr: f64, mu: f64) -> Result<(), FlError> {
    if lr * mu >= 1.0 {
        return Err(bad(
            "task.prox_mu",
            format!(
                "task.lr * task.prox_mu = {} must stay below 1 for SGD to be stable",
                lr * mu
            ),
        ));
    }
    Ok(())
}

/// The GPT presets a pretrained `lm` base may have (`cohort_model::GptConfig::preset`).
pub const LM_PRESETS: [&str; 5] = ["test", "tiny", "reference", "small", "medium"];

/// The `lm` task's ranges; also checked by `cohort_tasks::lm::LmTask::new`.
pub fn check_lm(t: &LmTaskConfig) -> Result<(), FlError> {
    path("task.corpus", &t.corpus)?;
    if let Some(b) = &t.base {
        path("task.base", b)?;
    }
    if !LM_PRESETS.contains(&t.preset.as_str()) {
        return Err(bad(
            "task.preset",
            format!("{:?} is not one of {}", t.preset, LM_PRESETS.join(", ")),
        ));
    }
    count("task.pretrain_steps", t.pretrain_steps, 0, 1_000_000)?;
    positive("task.pretrain_lr", t.pretrain_lr, 1.0)?;
    count("task.pretrain_batch", t.pretrain_batch, 1, 4_096)?;
    count("task.min_lines", t.min_lines, 1, 1_000_000)?;
    count("task.clients_per_role", t.clients_per_role, 1, 10_000)?;
    count("task.seq_len", t.seq_len, 1, 4_096)?;
    count("task.batch", t.batch, 1, 4_096)?;
    count("task.local_steps", t.local_steps, 1, 100_000)?;
    positive("task.lr", t.lr, 1.0)?;
    check_lora(
        1,
        t.lora_rank,
        t.lora_alpha,
        t.lora_dropout,
        &t.lora_targets,
    )?;
    share("task.holdout_fraction", t.holdout_fraction)?;
    share("task.test_fraction", t.test_fraction)?;
    count("task.eval_windows", t.eval_windows, 1, 1_000_000)?;
    float("task.prox_mu", t.prox_mu, 0.0, 1_000.0, false)
}

/// A task's LoRA settings (`task.lora_*`): rank from `min_rank` (0: no adapter) to 1,024,
/// alpha in (0, 1e4], dropout in [0, 1), 1 to 32 module names, none empty.
fn check_lora(
    min_rank: usize,
    rank: usize,
    alpha: f64,
    dropout: f64,
    targets: &[String],
) -> Result<(), FlError> {
    count("task.lora_rank", rank, min_rank as u64, 1_024)?;
    positive("task.lora_alpha", alpha, 1e4)?;
    if !(dropout.is_finite() && (0.0..1.0).contains(&dropout)) {
        return Err(bad(
            "task.lora_dropout",
            format!("{dropout} is not in [0, 1)"),
        ));
    }
    if targets.is_empty() || targets.len() > 32 {
        return Err(bad(
            "task.lora_targets",
            format!("names {} modules; name 1 to 32", targets.len()),
        ));
    }
    if targets.iter().any(|m| m.trim().is_empty()) {
        return Err(bad("task.lora_targets", "a module name is empty".into()));
    }
    Ok(())
}

/// The `imdb` task's ranges; also checked by `cohort_tasks::imdb::ImdbTask::new`.
pub fn check_imdb(t: &ImdbTaskConfig) -> Result<(), FlError> {
    path("task.data", &t.data)?;
    int("task.num_words", u64::from(t.num_words), 4, 10_000_000)?;
    count("task.max_len", t.max_len, 1, 4_096)?;
    count("task.train_samples", t.train_samples, 0, 10_000_000)?;
    count("task.test_samples", t.test_samples, 0, 10_000_000)?;
    share("task.holdout_fraction", t.holdout_fraction)?;
    positive("task.alpha", t.alpha, 1e6)?;
    count(
        "task.min_client_samples",
        t.min_client_samples,
        1,
        1_000_000,
    )?;
    count("task.d_model", t.d_model, 1, 4_096)?;
    count("task.layers", t.layers, 1, 64)?;
    count("task.heads", t.heads, 1, 64)?;
    if !t.d_model.is_multiple_of(t.heads) {
        return Err(bad(
            "task.heads",
            format!("{} does not divide task.d_model {}", t.heads, t.d_model),
        ));
    }
    count(
        "task.skip_top",
        t.skip_top,
        0,
        u64::from(t.num_words).saturating_sub(1),
    )?;
    count("task.batch", t.batch, 1, 4_096)?;
    count("task.local_steps", t.local_steps, 1, 100_000)?;
    positive("task.lr", t.lr, 100.0)?;
    float("task.prox_mu", t.prox_mu, 0.0, 1_000.0, false)?;
    if t.model == ImdbModel::Bow {
        stable_prox(t.lr, t.prox_mu)?;
    }
    count("task.pretrain_steps", t.pretrain_steps, 0, 1_000_000)?;
    positive("task.pretrain_lr", t.pretrain_lr, 1.0)?;
    count("task.pretrain_batch", t.pretrain_batch, 1, 4_096)?;
    check_lora(
        0,
        t.lora_rank,
        t.lora_alpha,
        t.lora_dropout,
        &t.lora_targets,
    )?;
    if t.model == ImdbModel::Gpt {
        if t.lora_rank > t.d_model {
            return Err(bad(
                "task.lora_rank",
                format!("{} exceeds task.d_model {}", t.lora_rank, t.d_model),
            ));
        }
        if t.pretrain_steps > 0 && t.train_samples == 0 {
            return Err(bad(
                "task.pretrain_steps",
                "pretraining reads the reviews of train.tsv after the first \
                 task.train_samples, and task.train_samples = 0 uses them all"
                    .into(),
            ));
        }
    } else {
        for (what, set) in [
            ("task.pretrain_steps", t.pretrain_steps > 0),
            ("task.lora_rank", t.lora_rank > 0),
            ("task.lora_dropout", t.lora_dropout > 0.0),
            ("task.pooling", t.pooling != ImdbPooling::Last),
        ] {
            if set {
                return Err(bad(
                    what,
                    "only the gpt model (task.model = \"gpt\") takes it".into(),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Custom stage codecs: odd steps in [1, 127], the flags s, c, r and k each at most once
    /// in any order.
    #[test]
    fn custom_stage_codecs_take_each_flag_once() {
        for ok in ["q15/9sc", "q63/9sckr", "q1/1", "q127/127krcs", "q15/3k"] {
            assert!(custom_stage_codec(ok), "{ok}");
        }
        for bad in [
            "q15/9ss", "q15/9x", "q16/9", "q15/128", "q15/9kk", "q/9", "15/9", "q15", "q-1/9",
            "q15/9 k",
        ] {
            assert!(!custom_stage_codec(bad), "{bad}");
        }
    }

    fn base() -> RunConfig {
        RunConfig {
            seed: 1,
            clients: 10,
            validators: 3,
            task: TaskConfig::default(),
            coordinator: CoordinatorConfig::default(),
            aggregation: AggregationConfig::default(),
            attack: None,
            incentives: IncentiveConfig::default(),
            unlearning: UnlearningConfig::default(),
            compression: CompressionConfig::default(),
            pipeline: None,
            report: ReportConfig::default(),
            profiles: Vec::new(),
            market: None,
            governance: None,
        }
    }

    fn refused(c: RunConfig, field: &str) {
        let e = c.check().expect_err(field).to_string();
        assert!(e.contains(&format!("invalid {field}:")), "{field}: {e}");
    }

    #[test]
    fn the_defaults_pass() {
        base().check().unwrap();
    }

    /// `[market]`: a valid market passes and travels; every wrong field is refused by name; a
    /// config without one serializes as before.
    #[test]
    fn market_settings_are_checked_by_name() {
        let market = |f: &dyn Fn(&mut MarketConfig)| {
            let mut m = MarketConfig {
                recipe: None,
                source: RoyaltySource::Sponsor,
                coordinator_fee: 0.1,
                treasury_fee: 0.05,
                fund: 100,
                listings: vec![
                    ListingConfig {
                        clients: vec![0, 1],
                        price: 10,
                        allow: AllowRecipes::Run,
                    },
                    ListingConfig {
                        clients: vec![2],
                        price: 5,
                        allow: AllowRecipes::None,
                    },
                ],
            };
            f(&mut m);
            RunConfig {
                market: Some(m),
                ..base()
            }
        };
        let ok = market(&|_| {}).check().unwrap();
        assert_eq!(ok.listing(2).map(|l| l.allow), Some(AllowRecipes::None));
        assert!(ok.listing(3).is_none());
        let text = toml::to_string(ok.config()).unwrap();
        let back: RunConfig = toml::from_str(&text).unwrap();
        assert_eq!(&back, ok.config());
        assert!(!toml::to_string(&base()).unwrap().contains("market"));
        refused(
            market(&|m| m.coordinator_fee = f64::NAN),
            "market.coordinator_fee",
        );
        refused(
            market(&|m| m.coordinator_fee = -0.1),
            "market.coordinator_fee",
        );
        refused(market(&|m| m.treasury_fee = 1.5), "market.treasury_fee");
        refused(
            market(&|m| (m.coordinator_fee, m.treasury_fee) = (0.6, 0.5)),
            "market.treasury_fee",
        );
        refused(market(&|m| m.fund = u64::MAX), "market.fund");
        refused(market(&|m| m.listings.clear()), "market.listing");
        refused(market(&|m| m.listings[0].clients.clear()), "market.listing");
        refused(
            market(&|m| m.listings[0].clients.push(10)),
            "market.listing",
        );
        refused(market(&|m| m.listings[1].clients.push(0)), "market.listing");
        refused(market(&|m| m.listings[0].price = 0), "market.listing.price");
        // From each round's pool, the pool must cover a round's most royalties (2 * 10 here).
        let mut round = market(&|m| m.source = RoyaltySource::Round);
        round.incentives.reward_per_round = 19;
        refused(round.clone(), "market.source");
        round.incentives.reward_per_round = 20;
        round.check().unwrap();
        refused(
            market(&|m| m.listings[0].price = 2_000_000_000),
            "market.listing.price",
        );
        let e = toml::from_str::<RunConfig>(
            "seed = 1\nclients = 2\nvalidators = 1\n[market]\nfund = 1\n[[market.listing]]\nclients = [0]\nprice = 1\nallow = \"some\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("allow") || e.contains("some"), "{e}");
    }

    /// `[[profile]]`: the graded example's profiles pass and travel; every wrong one is
    /// refused by name, saying what is wrong; none is left out of the config's serialization.
    #[test]
    fn client_profiles_are_checked() {
        let with = |profiles: &str| {
            toml::from_str::<RunConfig>(&format!(
                "seed = 1\nclients = 6\nvalidators = 1\n[task]\nkind = \"linear\"\n{profiles}\n"
            ))
        };
        let none = with("").unwrap();
        assert!(!serde_json::to_string(&none).unwrap().contains("profile"));
        let good = with(
            "[[profile]]\nclients = [1]\ndata = { kind = \"label-noise\", share = 0.3 }\n\
             [[profile]]\nclients = [2]\ndata = { kind = \"duplicate\", of = 0 }\n\
             [[profile]]\nclients = [3]\ndata = { kind = \"subsample\", share = 0.1 }\n\
             [[profile]]\nclients = [4]\nattack = { kind = \"free-rider\", fake_samples = 64 }\n\
             [[profile]]\nclients = [5]\nattack = { kind = \"sign-flip\", scale = 3.0 }\nevery = 2",
        )
        .unwrap();
        let v = good.clone().check().unwrap();
        assert_eq!(v.profile(5).map(|p| p.every), Some(2));
        assert!(v.profile(0).is_none());
        let back: RunConfig = serde_json::from_str(&serde_json::to_string(&*v).unwrap()).unwrap();
        assert_eq!(back, good);
        let p = |body: &str| format!("[[profile]]\n{body}");
        for (bad, says) in [
            (
                p("clients = []\ndata = { kind = \"subsample\", share = 0.5 }"),
                "names no clients",
            ),
            (
                p("clients = [6]\ndata = { kind = \"subsample\", share = 0.5 }"),
                "does not exist",
            ),
            (
                p("clients = [1]\ndata = { kind = \"subsample\", share = 0.5 }\n")
                    + &p("clients = [1]\nattack = { kind = \"sign-flip\", scale = 1.0 }"),
                "is in profile 0 already",
            ),
            (
                p("clients = [1]\ndata = { kind = \"subsample\", share = 0.0 }"),
                "share 0",
            ),
            (
                p("clients = [1]\ndata = { kind = \"label-noise\", share = 1.5 }"),
                "share 1.5",
            ),
            (
                p("clients = [1]\ndata = { kind = \"label-noise\", share = nan }"),
                "share NaN",
            ),
            (
                p("clients = [1]\ndata = { kind = \"duplicate\", of = 1 }"),
                "duplicate itself",
            ),
            (
                p("clients = [1]\ndata = { kind = \"duplicate\", of = 9 }"),
                "no such client",
            ),
            (
                p("clients = [1]\ndata = { kind = \"duplicate\", of = 0 }\n")
                    + &p("clients = [2]\ndata = { kind = \"duplicate\", of = 1 }"),
                "itself a duplicate",
            ),
            (
                p("clients = [1]\nattack = { kind = \"label-flip\" }"),
                "update attack",
            ),
            (
                p("clients = [1]\nattack = { kind = \"sign-flip\", scale = -1.0 }"),
                "out of range",
            ),
            (
                p("clients = [1]\nattack = { kind = \"free-rider\", fake_samples = 0 }"),
                "out of range",
            ),
            (
                p("clients = [1]\nattack = { kind = \"sign-flip\", scale = 1.0 }\nevery = 0"),
                "every = 0",
            ),
            (
                p("clients = [1]\nattack = { kind = \"sign-flip\", scale = 1.0 }\nevery = 1001"),
                "every = 1001",
            ),
            (p("clients = [1]\nevery = 2"), "every without an attack"),
            (p("clients = [1]"), "neither"),
        ] {
            let c = with(&bad).unwrap_or_else(|e| panic!("{bad}: {e}"));
            let e = c.check().expect_err(&bad).to_string();
            assert!(
                e.contains("invalid profile:") && e.contains(says),
                "{bad}: {e}"
            );
        }
        // An attacker of [attack] has its role already.
        let c = with(
            "[attack]\nfraction = 0.5\nattack = { kind = \"sign-flip\", scale = 1.0 }\n\
             [[profile]]\nclients = [5]\ndata = { kind = \"subsample\", share = 0.5 }",
        )
        .unwrap();
        assert!(c.check().unwrap_err().to_string().contains("one role"));
        // Data profiles need the linear task; unknown fields are refused by the parser.
        let lm = toml::from_str::<RunConfig>(
            "seed = 1\nclients = 2\nvalidators = 1\n[task]\nkind = \"lm\"\n\
             [[profile]]\nclients = [1]\ndata = { kind = \"subsample\", share = 0.5 }\n",
        )
        .unwrap();
        assert!(
            lm.check()
                .unwrap_err()
                .to_string()
                .contains("linear task only")
        );
        assert!(with(&p("clients = [1]\nbogus = 1")).is_err());
        assert!(with(&p("clients = [1]\ndata = { kind = \"cloned\" }")).is_err());
    }

    /// `[compression]`: every field in range or refused by name, the default left out of the
    /// serialized config (so that older configs keep their digest).
    #[test]
    fn compression_is_checked_and_the_default_is_not_serialized() {
        let json = serde_json::to_string(&base()).unwrap();
        assert!(!json.contains("compression"), "{json}");
        let with = |toml_text: &str| {
            toml::from_str::<RunConfig>(&format!(
                "seed = 1\nclients = 2\nvalidators = 1\n[compression]\n{toml_text}\n"
            ))
        };
        for ok in [
            "update = \"none\"",
            "update = \"int8\"",
            "update = \"int8\"\nerror_feedback = false",
            "update = \"topk\"",
            "update = \"topk-int8\"\ntopk_fraction = 0.05",
            "update = \"topk-int8\"\ntopk_fraction = 1.0",
            "update = \"topk\"\ntopk_fraction = 0.001\nerror_feedback = true",
            "update = \"lowrank\"",
            "update = \"lowrank-int8\"\nrank = 1",
            "update = \"lowrank\"\nrank = 4096\nerror_feedback = false",
        ] {
            let c = with(ok).unwrap();
            let v = c.clone().check().unwrap_or_else(|e| panic!("{ok}: {e}"));
            let back: RunConfig =
                serde_json::from_str(&serde_json::to_string(&*v).unwrap()).unwrap();
            assert_eq!(back, c, "{ok}");
        }
        for (bad, field) in [
            ("topk_fraction = 0.0", "compression.topk_fraction"),
            ("topk_fraction = -0.1", "compression.topk_fraction"),
            ("topk_fraction = 1.5", "compression.topk_fraction"),
            ("topk_fraction = 1e300", "compression.topk_fraction"),
            ("topk_fraction = nan", "compression.topk_fraction"),
            ("topk_fraction = inf", "compression.topk_fraction"),
            ("topk_fraction = 0.0001", "compression.topk_fraction"),
        ] {
            refused(with(&format!("update = \"topk\"\n{bad}")).unwrap(), field);
        }
        refused(
            with("update = \"int8\"\ntopk_fraction = 0.1").unwrap(),
            "compression.topk_fraction",
        );
        refused(
            with("topk_fraction = 0.1").unwrap(),
            "compression.topk_fraction",
        );
        refused(
            with("error_feedback = true").unwrap(),
            "compression.error_feedback",
        );
        for bad in ["rank = 0", "rank = 4097", "rank = 4294967295"] {
            refused(
                with(&format!("update = \"lowrank\"\n{bad}")).unwrap(),
                "compression.rank",
            );
        }
        for other in ["none", "int8", "topk", "topk-int8"] {
            refused(
                with(&format!("update = \"{other}\"\nrank = 2")).unwrap(),
                "compression.rank",
            );
        }
        refused(
            with("update = \"lowrank\"\ntopk_fraction = 0.1").unwrap(),
            "compression.topk_fraction",
        );
        // Garbage does not parse, naming what is wrong.
        for (garbage, says) in [
            ("update = \"zip\"", "zip"),
            ("update = 8", "update"),
            ("topk_fraction = \"a tenth\"", "topk_fraction"),
            ("error_feedback = 1", "error_feedback"),
            ("update = \"lowrank\"\nrank = -1", "rank"),
            ("update = \"lowrank\"\nrank = nan", "rank"),
            ("update = \"lowrank\"\nrank = 1.5", "rank"),
            ("update = \"lowrank\"\nrank = \"two\"", "rank"),
            ("update = \"lowrank\"\nrank = 99999999999", "rank"),
            ("ratio = 10", "ratio"),
        ] {
            let e = with(garbage).unwrap_err().to_string();
            assert!(e.contains(says), "{garbage}: {e}");
        }
        let c = with("update = \"topk-int8\"").unwrap();
        let k = c.compression.compressor();
        assert_eq!(
            (k.codec(), k.fraction(), k.feedback()),
            (UpdateCodec::TopkInt8, 0.1, true)
        );
        assert_eq!(k.rank(), 0);
        let k = with("update = \"lowrank-int8\"")
            .unwrap()
            .compression
            .compressor();
        assert_eq!(
            (k.codec(), k.rank(), k.feedback()),
            (UpdateCodec::LowrankInt8, 2, true)
        );
        let k = with("update = \"lowrank\"\nrank = 3\nerror_feedback = false")
            .unwrap()
            .compression
            .compressor();
        assert_eq!((k.rank(), k.feedback()), (3, false));
    }

    /// Shards: 1 to the number of clients; the default left out of the serialized config, so
    /// that an unsharded config's digest is what it was before shards existed.
    #[test]
    fn shards_are_checked_and_the_default_is_not_serialized() {
        let json = serde_json::to_string(&base()).unwrap();
        assert!(!json.contains("unlearning"), "{json}");
        for bad in [0, 11, u32::MAX] {
            let mut c = base();
            c.unlearning.shards = bad;
            refused(c, "unlearning.shards");
        }
        let mut c = base();
        c.unlearning.shards = 10;
        let v = c.check().unwrap();
        assert!(
            serde_json::to_string(&*v)
                .unwrap()
                .contains("\"shards\":10")
        );
        let e = toml::from_str::<RunConfig>(
            "seed = 1\nclients = 2\nvalidators = 1\n[unlearning]\nshard = 2\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("shard"), "{e}");
    }

    /// LoRA dropout: [0, 1), refused by name otherwise; left out of the serialized config at
    /// 0 (so that configs written before it keep their digest), read back when set.
    #[test]
    fn lora_dropout_is_checked_and_serialized_only_when_set() {
        let lm = |p: f64| {
            let mut c = base();
            c.task = TaskConfig::Lm(crate::task::LmTaskConfig {
                lora_dropout: p,
                ..Default::default()
            });
            c
        };
        for p in [1.0, -0.1, f64::NAN, f64::INFINITY, 1e300] {
            refused(lm(p), "task.lora_dropout");
        }
        for p in [0.0, 0.05, 0.2, 0.999] {
            lm(p).check().unwrap();
        }
        let plain = serde_json::to_string(&lm(0.0)).unwrap();
        assert!(!plain.contains("lora_dropout"), "{plain}");
        let set = serde_json::to_string(&lm(0.1)).unwrap();
        let back: RunConfig = serde_json::from_str(&set).unwrap();
        assert_eq!(back, lm(0.1));
        let back: RunConfig = serde_json::from_str(&plain).unwrap();
        assert_eq!(back, lm(0.0));
    }

    #[test]
    fn the_values_the_issue_found_are_refused_by_name() {
        let linear = |f: &dyn Fn(&mut LinearTaskConfig)| {
            let mut c = base();
            let mut t = LinearTaskConfig::default();
            f(&mut t);
            c.task = TaskConfig::Linear(t);
            c
        };
        for lr in [f64::NAN, f64::INFINITY, -1.0, 0.0] {
            refused(linear(&|t| t.lr = lr), "task.lr");
        }
        refused(linear(&|t| t.batch = 0), "task.batch");
        refused(
            linear(&|t| t.samples_per_client = 0),
            "task.samples_per_client",
        );
        refused(linear(&|t| t.holdout_samples = 0), "task.holdout_samples");
        refused(linear(&|t| t.epochs = 0), "task.epochs");
        refused(linear(&|t| t.dim = 0), "task.dim");
        refused(linear(&|t| t.test_samples = 0), "task.test_samples");
        refused(
            linear(&|t| t.samples_per_client = 1_000_000),
            "task.samples_per_client",
        );
        let mut c = base();
        c.aggregation.fedadam_lr = Some(f64::NAN);
        refused(c, "aggregation.fedadam_lr");
        for x in [f64::NAN, 1e300] {
            let mut c = base();
            c.incentives.accept_threshold = x;
            refused(c, "incentives.accept_threshold");
        }
        let mut c = base();
        c.coordinator.rounds = 1_000_000_000;
        refused(c, "coordinator.rounds");
    }

    #[test]
    fn robust_strategies_must_fit_the_cohort() {
        let with = |s: StrategyConfig, per_round: usize| {
            let mut c = base();
            c.coordinator.clients_per_round = per_round;
            c.aggregation.strategy = s;
            c
        };
        with(StrategyConfig::TrimmedMean { k: 4 }, 10)
            .check()
            .unwrap();
        refused(
            with(StrategyConfig::TrimmedMean { k: 5 }, 10),
            "aggregation.strategy.k",
        );
        // The cohort is the smaller of clients_per_round and clients (10 here).
        refused(
            with(StrategyConfig::TrimmedMean { k: 5 }, 50),
            "aggregation.strategy.k",
        );
        with(StrategyConfig::Krum { f: 3, m: 1 }, 10)
            .check()
            .unwrap();
        refused(
            with(StrategyConfig::Krum { f: 4, m: 1 }, 10),
            "aggregation.strategy.f",
        );
        refused(
            with(StrategyConfig::Krum { f: 3, m: 8 }, 10),
            "aggregation.strategy.m",
        );
        refused(
            with(
                StrategyConfig::Krum {
                    f: usize::MAX,
                    m: 1,
                },
                10,
            ),
            "aggregation.strategy.f",
        );
    }

    #[test]
    fn stakes_must_clear_the_protocol_minimums() {
        let mut c = base();
        c.incentives.client_stake = 99;
        refused(c, "incentives.client_stake");
        let mut c = base();
        c.incentives.client_stake = c.incentives.initial_balance;
        refused(c, "incentives.client_stake");
        let mut c = base();
        c.incentives.validator_stake = 999;
        refused(c, "incentives.validator_stake");
        let mut c = base();
        c.incentives.initial_balance = 0;
        refused(c, "incentives.initial_balance");
    }

    /// The IMDB GPT's pretraining and LoRA settings: out-of-range values refused by name,
    /// the GPT-only ones refused for the bag of words, and left out of the serialized config
    /// at their defaults (so that older configs keep their digest).
    #[test]
    fn imdb_pretraining_and_lora_settings_are_checked() {
        let gpt = |f: &dyn Fn(&mut ImdbTaskConfig)| {
            let mut t = ImdbTaskConfig {
                model: ImdbModel::Gpt,
                pretrain_steps: 100,
                lora_rank: 4,
                pooling: ImdbPooling::Mean,
                lr: 3e-3,
                ..ImdbTaskConfig::default()
            };
            f(&mut t);
            let mut c = base();
            c.task = TaskConfig::Imdb(t);
            c
        };
        gpt(&|_| {}).check().unwrap();
        refused(
            gpt(&|t| t.pretrain_steps = 1_000_001),
            "task.pretrain_steps",
        );
        refused(gpt(&|t| t.train_samples = 0), "task.pretrain_steps");
        for v in [0.0, -1.0, f64::NAN, f64::INFINITY, 2.0] {
            refused(gpt(&|t| t.pretrain_lr = v), "task.pretrain_lr");
        }
        refused(gpt(&|t| t.pretrain_batch = 0), "task.pretrain_batch");
        refused(gpt(&|t| t.pretrain_batch = 5_000), "task.pretrain_batch");
        refused(gpt(&|t| t.lora_rank = 2_000), "task.lora_rank");
        refused(gpt(&|t| t.lora_rank = 33), "task.lora_rank");
        for v in [0.0, -8.0, f64::NAN, 1e5] {
            refused(gpt(&|t| t.lora_alpha = v), "task.lora_alpha");
        }
        for v in [1.0, -0.1, f64::NAN] {
            refused(gpt(&|t| t.lora_dropout = v), "task.lora_dropout");
        }
        refused(gpt(&|t| t.lora_targets = vec![]), "task.lora_targets");
        refused(
            gpt(&|t| t.lora_targets = vec![" ".into()]),
            "task.lora_targets",
        );
        for (what, f) in [
            (
                "task.pretrain_steps",
                &(|t: &mut ImdbTaskConfig| t.pretrain_steps = 10) as &dyn Fn(&mut ImdbTaskConfig),
            ),
            ("task.lora_rank", &|t: &mut ImdbTaskConfig| t.lora_rank = 4),
            ("task.pooling", &|t: &mut ImdbTaskConfig| {
                t.pooling = ImdbPooling::Mean
            }),
        ] {
            let mut t = ImdbTaskConfig::default();
            f(&mut t);
            let mut c = base();
            c.task = TaskConfig::Imdb(t);
            refused(c, what);
        }
        let mut plain = base();
        plain.task = TaskConfig::Imdb(ImdbTaskConfig::default());
        let json = serde_json::to_string(&plain).unwrap();
        for field in ["pretrain", "lora", "pooling"] {
            assert!(!json.contains(field), "{json}");
        }
        let set = serde_json::to_string(&gpt(&|_| {})).unwrap();
        let back: RunConfig = serde_json::from_str(&set).unwrap();
        assert_eq!(back, gpt(&|_| {}));
    }

    #[test]
    fn data_attacks_need_the_classification_task() {
        let mut c = base();
        c.attack = Some(AttackConfig {
            fraction: 0.2,
            attack: AttackKind::LabelFlip,
            colluding_validators: 0,
            sybil_stake: None,
        });
        refused(c.clone(), "attack.attack");
        c.task = TaskConfig::Imdb(ImdbTaskConfig::default());
        c.check().unwrap();
    }

    #[test]
    fn backdoor_triggers_stay_inside_the_vocabulary() {
        let mut c = base();
        c.task = TaskConfig::Imdb(ImdbTaskConfig::default());
        let backdoor = |trigger: Vec<u32>, target: u32, poison_fraction: f64| AttackConfig {
            fraction: 0.2,
            attack: AttackKind::Backdoor {
                trigger,
                target,
                poison_fraction,
            },
            colluding_validators: 0,
            sybil_stake: None,
        };
        let with = |a| {
            let mut c = c.clone();
            c.attack = Some(a);
            c
        };
        with(backdoor(vec![497, 498], 1, 0.5)).check().unwrap();
        refused(with(backdoor(vec![500], 1, 0.5)), "attack.attack.trigger");
        refused(with(backdoor(vec![], 1, 0.5)), "attack.attack.trigger");
        refused(with(backdoor(vec![4], 2, 0.5)), "attack.attack.target");
        refused(
            with(backdoor(vec![4], 1, 0.0)),
            "attack.attack.poison_fraction",
        );
    }
}
