//! `cohort unlearn DIR --client NAME --method M`: a participant's data forgotten, measured and
//! proved on the run's ledger.
//!
//! On a finished run (DIR from `cohort run`, on its embedded ledger), in one invocation:
//! 1. **Request**: the client signs `requestUnlearning` for its dataset, committing to its
//!    forget set (its data's Merkle root, the dataset commitment of the set-up).
//! 2. **Execute**: the method makes the unlearned model (`retrain`: the federation rerun from
//!    round 0 without the client, the same seeds, keys and data otherwise, on a ledger of its
//!    own in DIR/unlearn/request-N/retrain); the model goes into the blob store, and the
//!    evidence (the measures of the original and the unlearned model and of the oracle, and
//!    every model's hash) is a content-addressed JSON blob. The coordinator records the
//!    execution with both hashes; the contract claws the client's rewards back.
//! 3. **Verify**: validator-0, not the executor, reads the models back from the store (hash
//!    checked), recomputes the measures from them, the test set and the disclosed forget set
//!    (checked against the request's commitment), rebuilds the evidence and compares it byte
//!    for byte; it accepts (the same evidence hash) or rejects (the request reopens).
//!
//! What the measures are: `cohort_fl::unlearning`.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use alloy_primitives::{Address, B256};
use anyhow::{Context, bail};
use cohort_blob::BlobStore;
use cohort_core::{Hash32, Identity, Score, sha256};
use cohort_fl::NamedDelta;
use cohort_fl::config::ValidConfig;
use cohort_fl::events::ProvenanceRecord;
use cohort_fl::learner::{Learner, Metrics};
use cohort_fl::shards::Shards;
use cohort_fl::task::{ImdbModel, TaskConfig};
use cohort_fl::unlearning::{Measures, Objective, UnlearnSpec, measure};
use cohort_ledger::protocol::{
    Cohort, CohortRuns, Protocol, UnlearningEvidence, roles, unlearning,
};
use cohort_ledger::{EmbeddedLedger, LedgerBackend, LedgerConfig};
use cohort_node::resume::SavedRound;
use cohort_node::runtime::{Keys, RunOptions, run_in_process};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::output::print_json;

/// Forget a client's data in a finished run: request (signed by the client), execute by
/// METHOD, measure, record the execution and its evidence on the run's ledger, and have a
/// validator other than the executor verify it. Prints a table (or `--json`): the forget,
/// retain and test metrics and the membership-inference AUC of the model before and after,
/// and of the oracle (a model retrained without the data). The three steps also run one at a
/// time, each signed by its own party: `cohort unlearn request|execute|verify`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct Args {
    #[command(subcommand)]
    step: Option<Step>,
    /// The run's output directory (`cohort run ... --out DIR`), finished, on the embedded
    /// ledger.
    #[arg(required = true)]
    dir: Option<PathBuf>,
    /// The client whose data is forgotten (`client-K`, as in the run's summary).
    #[arg(long, value_name = "NAME", required = true)]
    client: Option<String>,
    #[command(flatten)]
    how: How,
    #[command(flatten)]
    files: Files,
    /// After a verification that accepts, delete the client's update blobs from the run's
    /// blob store and record on the ledger that it was done (the hash of a manifest blob that
    /// lists them); `cohort provenance DIR` then counts them as deleted, not missing.
    #[arg(long)]
    delete_blobs: bool,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Check DIR, the client, its dataset on the ledger, the task's data against the
    /// client's commitment and the final model, print what would be done and exit: nothing is
    /// written.
    #[arg(long)]
    check: bool,
}

/// One step of an unlearning, by its own party (what `cohort unlearn DIR --client NAME` does
/// in one invocation).
#[derive(Debug, clap::Subcommand)]
enum Step {
    /// The data owner files its request: `requestUnlearning(dataset, reason, forgetSet)`,
    /// signed by the client, committing to the forget set it will disclose to the verifier
    /// (its data's Merkle root). Prints the request's number.
    Request {
        /// The run's output directory.
        dir: PathBuf,
        /// The client whose data is to be forgotten (`client-K`); it signs.
        #[arg(long, value_name = "NAME")]
        client: String,
        #[command(flatten)]
        files: Files,
        /// Print the result as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Check, print what would be done, write nothing.
        #[arg(long)]
        check: bool,
    },
    /// The executor (the coordinator) carries a filed request out by METHOD and records the
    /// execution: the unlearned model and the evidence blob (the measures of the original and
    /// the unlearned model, and of the oracle with --compare-retrain); the contract marks the
    /// dataset forgotten and claws the client's rewards back.
    Execute {
        /// The run's output directory.
        dir: PathBuf,
        /// The request's number (`cohort unlearn request` printed it).
        #[arg(long, value_name = "N", value_parser = crate::args::int_in(1..=u64::MAX))]
        request: u64,
        #[command(flatten)]
        how: How,
        #[command(flatten)]
        files: Files,
        /// Print the result as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Check, print what would be done, write nothing.
        #[arg(long)]
        check: bool,
    },
    /// A verifier, a validator other than the executor, recomputes the executed request's
    /// evidence from the blobs, the test set and the disclosed forget set, and records its
    /// verdict: accepted (the run goes on from the unlearned model) or rejected (the request
    /// reopens). Exits 1 when it rejects.
    Verify {
        /// The run's output directory.
        dir: PathBuf,
        /// The request's number.
        #[arg(long, value_name = "N", value_parser = crate::args::int_in(1..=u64::MAX))]
        request: u64,
        /// The verifying validator (`validator-K`).
        #[arg(long = "as", value_name = "NAME", default_value = "validator-0")]
        verifier: String,
        #[command(flatten)]
        files: Files,
        /// After an accepted verification, delete the client's update blobs and record it.
        #[arg(long)]
        delete_blobs: bool,
        /// Print the result as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Check (the request is executed, the verifier another party), print what would be
        /// done, write nothing.
        #[arg(long)]
        check: bool,
    },
}

/// How an execution unlearns.
#[derive(Debug, Clone, clap::Args)]
struct How {
    /// How: `retrain`, exact: the federation rerun from round 0 without the client (same
    /// seeds, keys and data otherwise), the oracle every other method is measured against;
    /// `shards`, exact: only the client's shard rerun without it (runs trained with
    /// `[unlearning] shards` above 1, which forget with shards or retrain only);
    /// `fed-eraser`: the run replayed from its stored updates without the client, the others'
    /// updates calibrated with half their local training (runs with a weighted-sum
    /// aggregation: fed-avg, score-weighted); `lora-ga`, `lora-npo`: the run's LoRA adapter
    /// moved off the client's text or reviews (lm task, or imdb with model = "gpt" and
    /// task.lora_rank above 0; --steps, --lr, --retain-weight, --beta, --batch).
    #[arg(long, value_enum, default_value_t = Method::Retrain)]
    method: Method,
    /// lora-ga, lora-npo: optimiser steps on the forget set.
    #[arg(long, default_value_t = 10, value_parser = crate::args::int_in(1..=100_000usize))]
    steps: usize,
    /// lora-ga, lora-npo: learning rate (AdamW, constant).
    #[arg(long, default_value_t = 4e-4)]
    lr: f64,
    /// lora-ga, lora-npo: weight of the retain term (mean loss on public text, or for imdb
    /// the classification loss on public reviews labelled by the model before unlearning;
    /// 0: none).
    #[arg(long, default_value_t = 1.0)]
    retain_weight: f64,
    /// lora-npo: the inverse temperature beta.
    #[arg(long, default_value_t = 0.1)]
    beta: f64,
    /// lora-ga, lora-npo: forget windows (imdb: reviews) per step.
    #[arg(long, default_value_t = 8, value_parser = crate::args::int_in(1..=4096usize))]
    batch: usize,
    /// fed-eraser: calibrate every N-th round only (rounds 1, 1 + N, 1 + 2N, ...), the
    /// others left out of the reconstruction: FedEraser's retaining interval (its paper uses
    /// 2). About N times less work, and a model trained for fewer rounds.
    #[arg(long, default_value_t = 1, value_parser = crate::args::int_in(1..=10_000u64))]
    interval: u64,
    /// fed-eraser: the share of a client's local training its calibration does (its local
    /// steps, or for the linear task its epochs, times this, rounded, at least 1).
    #[arg(long, default_value_t = 0.5,
          value_parser = crate::args::float_in(0.0..=1.0).open_start())]
    calibration_ratio: f64,
    /// Also retrain without the client in this invocation and measure the result beside the
    /// method's (`oracle`, `retrain_seconds`). For `retrain` the oracle is its own result.
    #[arg(long)]
    compare_retrain: bool,
}

/// Where the run's files are, beyond DIR.
#[derive(Debug, Clone, clap::Args)]
struct Files {
    /// Where the task may cache what it builds (a pretrained base model); default: DIR,
    /// where `cohort run` left the run's pretrained base (with --check: a new temporary
    /// directory, so that nothing is written).
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,
    /// The blob store the run used, if not DIR/blobs (its `--blobs`: a directory or
    /// s3://BUCKET/PREFIX, credentials from the AWS_* environment).
    #[arg(long, value_name = "LOCATION")]
    blobs: Option<String>,
    /// The parties' own key files, for a run whose parties held them (a federation of
    /// processes, examples/federation.sh): NAME.key or NAME.pem (`client-0.key`,
    /// `validator-1.pem`, as `cohort keys new` writes them). A party whose file is there
    /// signs its step with it (the client its request, the verifier its verdict), checked
    /// against its role on the ledger before anything is written; any other signs with the
    /// run's keys.
    #[arg(long, value_name = "DIR")]
    keys: Option<PathBuf>,
}

/// An unlearning method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// The federation rerun from round 0 without the client: exact.
    Retrain,
    /// Only the client's shard rerun from round 0 without it, the other shards' slices
    /// kept (runs trained with `[unlearning] shards` above 1): exact, and about `shards`
    /// times faster than retrain.
    Shards,
    /// FedEraser: the run replayed from its stored updates without the client, each remaining
    /// client's update calibrated by training for half its local steps from the replayed
    /// global model (norm per tensor from the stored update, direction from the calibration).
    /// Approximate; needs a weighted-sum aggregation.
    FedEraser,
    /// Gradient ascent on the forget set through the run's LoRA adapter, with a retain term
    /// on public text (lm task, imdb's LoRA gpt). Approximate.
    LoraGa,
    /// Negative preference optimisation on the forget set through the run's LoRA adapter,
    /// with a retain term on public text (lm task, imdb's LoRA gpt). Approximate.
    LoraNpo,
}

impl Method {
    fn id(self) -> u8 {
        match self {
            Self::Retrain => unlearning::RETRAIN,
            Self::Shards => unlearning::SHARDS,
            Self::FedEraser => unlearning::FED_ERASER,
            Self::LoraGa => unlearning::LORA_GA,
            Self::LoraNpo => unlearning::LORA_NPO,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Self::Retrain => "retrain",
            Self::Shards => "shards",
            Self::FedEraser => "fed-eraser",
            Self::LoraGa => "lora-ga",
            Self::LoraNpo => "lora-npo",
        }
    }
}

/// The evidence blob: what the executor measured, and what a verifier must rebuild exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Evidence {
    format: String,
    request: u64,
    client: String,
    dataset: B256,
    method: String,
    /// The forget set's commitment: the client's data's Merkle root.
    forget_set: Hash32,
    original_model: Hash32,
    model: Hash32,
    /// The oracle's model, where one was measured (for `retrain`, the model itself).
    oracle_model: Option<Hash32>,
    /// The approximate methods' settings.
    settings: Option<UnlearnSpec>,
    /// fed-eraser's interval and calibration ratio, where not the defaults (1, 0.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fed_eraser: Option<FedEraserSettings>,
    /// Clients forgotten by earlier unlearnings of the run: left out of the retain set (and
    /// of the retraining and replay). Absent when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    forgotten_before: Vec<u32>,
    original: Measures,
    unlearned: Measures,
    oracle: Option<Measures>,
}

/// fed-eraser's settings (`--interval`, `--calibration-ratio`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct FedEraserSettings {
    interval: u64,
    calibration_ratio: f64,
}

impl FedEraserSettings {
    const DEFAULT: Self = Self {
        interval: 1,
        calibration_ratio: 0.5,
    };
}

const EVIDENCE_FORMAT: &str = "cohort-unlearning-evidence/1";

/// A finished run's directory, read.
pub(crate) struct RunDir {
    pub(crate) dir: PathBuf,
    pub(crate) cfg: ValidConfig,
    pub(crate) config_dir: PathBuf,
    keys: Keys,
    saved: SavedRound,
}

impl RunDir {
    /// The identity of the run's party `name` (`coordinator`, `client-K`, `validator-V`).
    pub(crate) fn identity(&self, name: &str) -> Identity {
        self.keys.identity(name)
    }

    pub(crate) fn open(dir: &Path) -> anyhow::Result<Self> {
        let record_path = dir.join("run.json");
        let record: Value = serde_json::from_str(
            &fs::read_to_string(&record_path)
                .with_context(|| format!("{}: not a run directory", dir.display()))?,
        )
        .with_context(|| format!("{}: not JSON", record_path.display()))?;
        if !dir.join("summary.json").is_file() {
            bail!(
                "{}: the run is not finished (no summary.json); finish it with `cohort run ... \
                 --resume` first",
                dir.display()
            );
        }
        if !dir.join("ledger").is_dir() {
            bail!(
                "{}: no embedded ledger (DIR/ledger); a run on a chain cannot be unlearned or \
                 valued yet",
                dir.display()
            );
        }
        let cfg: cohort_fl::config::RunConfig = serde_json::from_value(record["config"].clone())
            .with_context(|| format!("{}: its config does not read", record_path.display()))?;
        let cfg = cfg
            .check()
            .with_context(|| format!("{}: its config", record_path.display()))?;
        let config_file = record["config_file"]
            .as_str()
            .map(PathBuf::from)
            .unwrap_or_else(|| dir.join("config.toml"));
        let config_dir = config_file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let keys = match record["keys"].as_str() {
            Some("random") => {
                let path = dir.join("keys/run.key");
                let text = fs::read_to_string(&path)
                    .with_context(|| format!("reading {} (the run's keys)", path.display()))?;
                let secret: Hash32 = text.trim().parse().map_err(|_| {
                    anyhow::anyhow!("{} is not a 32-byte hex secret", path.display())
                })?;
                Keys::Secret(secret.0)
            }
            _ => Keys::Seeded(cfg.seed),
        };
        let state = dir.join("state");
        let saved = cohort_node::resume::list(&state)
            .with_context(|| format!("reading {}", state.display()))?
            .into_iter()
            .max_by_key(|s| s.round)
            .with_context(|| format!("{}: no saved round", state.display()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            cfg,
            config_dir,
            keys,
            saved,
        })
    }

    /// `client-K` → K, refused with the run's names otherwise.
    fn client(&self, name: &str) -> anyhow::Result<u32> {
        let n = self.cfg.clients;
        name.strip_prefix("client-")
            .and_then(|k| k.parse::<u32>().ok())
            .filter(|&k| (k as usize) < n && name == format!("client-{k}"))
            .with_context(|| {
                format!(
                    "--client {name:?}: the run's clients are client-0 to client-{}",
                    n.saturating_sub(1)
                )
            })
    }

    /// The run's shards over `learner`'s layout (one for an ordinary run).
    fn shards(&self, learner: &dyn Learner) -> anyhow::Result<Shards> {
        Ok(Shards::new(self.cfg.unlearning.shards, learner.layout())?)
    }

    /// The final global model's parameters (every shard's slice) and its blob's hash.
    fn final_model(&self, learner: &dyn Learner) -> anyhow::Result<(Vec<f32>, Hash32)> {
        let path = self
            .dir
            .join("state")
            .join(format!("round-{:06}.global", self.saved.round));
        let blob = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let h = sha256(&blob);
        if h != self.saved.global_sha256 {
            bail!(
                "{}: SHA-256 {h} is not the saved {}",
                path.display(),
                self.saved.global_sha256
            );
        }
        Ok((decode_model(&blob, &self.shards(learner)?)?, h))
    }
}

/// A global model blob's parameters: every shard's slice (the task's layout for an ordinary
/// run).
pub(crate) fn decode_model(blob: &[u8], shards: &Shards) -> anyhow::Result<Vec<f32>> {
    Ok(NamedDelta::decode(blob)?
        .into_layout(shards.layout())?
        .values)
}

/// Measures the model served from `model` (the mean of its shards' slices).
fn measure_served(
    task: &dyn Learner,
    shards: &Shards,
    model: &[f32],
    k: u32,
    retain: &[u32],
) -> Result<Measures, cohort_fl::FlError> {
    measure(task, &shards.served(model), k, retain)
}

/// A metric in fixed point, for the ledger.
fn fixed(x: Option<f64>) -> i64 {
    x.filter(|v| v.is_finite())
        .map_or(i64::MIN, |v| Score::from_f64(v).0)
}

/// The forget metric the ledger keeps: accuracy for a classifier, else perplexity, else loss.
fn forget_metric(m: &Metrics) -> f64 {
    m.accuracy.or(m.perplexity).unwrap_or(m.loss)
}

fn test_metric(m: &Metrics) -> f64 {
    m.accuracy.or(m.perplexity).unwrap_or(m.loss)
}

impl How {
    /// The approximate methods' settings, checked (and the task, which must have a LoRA
    /// adapter: lm, or imdb's gpt with `lora_rank` above 0); `None`
    /// for the other methods.
    fn spec(&self, cfg: &ValidConfig) -> anyhow::Result<Option<UnlearnSpec>> {
        let objective = match self.method {
            Method::LoraGa => Objective::GradientAscent,
            Method::LoraNpo | Method::Retrain | Method::Shards | Method::FedEraser => {
                Objective::Npo { beta: self.beta }
            }
        };
        let spec = UnlearnSpec {
            objective,
            steps: self.steps,
            lr: self.lr,
            retain_weight: self.retain_weight,
            batch: self.batch,
        };
        // Checked whatever the method: a bad value is refused, not ignored.
        spec.check()?;
        let shards = cfg.unlearning.shards;
        match self.method {
            Method::Shards if shards < 2 => bail!(
                "--method shards: this run was trained without shards (its config has no \
                 [unlearning] shards above 1), so no shard can be retrained alone; train with \
                 `--set unlearning.shards=K`, or use retrain, fed-eraser or a LoRA method"
            ),
            Method::FedEraser | Method::LoraGa | Method::LoraNpo if shards > 1 => bail!(
                "--method {}: this run was trained in {shards} shards, each its own slice of \
                 the model; it forgets exactly with --method shards (its client's shard \
                 retrained alone) or retrain",
                self.method.name()
            ),
            _ => {}
        }
        if matches!(
            self.method,
            Method::Retrain | Method::Shards | Method::FedEraser
        ) {
            return Ok(None);
        }
        let adapter = match &cfg.task {
            TaskConfig::Lm(_) => true,
            TaskConfig::Imdb(i) => i.model == ImdbModel::Gpt && i.lora_rank > 0,
            TaskConfig::Linear(_) => false,
        };
        if !adapter {
            bail!(
                "--method {}: the LoRA methods unlearn through the run's LoRA adapter, which \
                 only the lm task and the imdb task's gpt model with task.lora_rank above 0 \
                 have; use retrain or fed-eraser",
                self.method.name()
            );
        }
        Ok(Some(spec))
    }
}

/// A run opened for an unlearning step: its ledger, its task and its blob store.
struct Session {
    run: RunDir,
    p: Protocol<EmbeddedLedger>,
    task: Box<dyn Learner + Send + Sync>,
    store: Box<dyn BlobStore>,
    cache: PathBuf,
    /// The ledger's size when the session opened: what the session recorded follows.
    first_entry: u64,
    /// The parties' own key files (`--keys`).
    keys_dir: Option<PathBuf>,
    _tmp: Option<tempfile::TempDir>,
}

/// What an execution made and recorded.
struct Executed {
    evidence: Evidence,
    evidence_hash: Hash32,
    seconds: f64,
    retrain_seconds: Option<f64>,
    /// The client steps the retraining spent, with --compare-retrain.
    retrain_client_steps: Option<u64>,
    client_steps: u64,
    clawed_back: alloy_primitives::U256,
}

/// A verifier's verdict, as recorded.
struct Verdict {
    accepted: bool,
    why: Option<String>,
    deleted: Option<Value>,
}

fn say(msg: &str) {
    eprintln!("unlearn: {msg}");
}

impl Session {
    /// Opens DIR's run, its ledger (nothing written), its task and its blob store.
    fn open(dir: &Path, files: &Files, check: bool) -> anyhow::Result<Self> {
        let run = RunDir::open(dir)?;
        // The run's provenance is what fed-eraser replays and blob deletion lists: it must be
        // the ledger's before anything is recorded.
        let wrong = super::provenance::mismatches(&run.dir)?;
        if let Some(first) = wrong.first() {
            bail!(
                "{}: its provenance.jsonl does not match its ledger ({first}{}); check it with \
                 `cohort provenance {}`",
                run.dir.display(),
                if wrong.len() > 1 {
                    format!(" and {} more", wrong.len() - 1)
                } else {
                    String::new()
                },
                run.dir.display()
            );
        }
        let ledger_dir = run.dir.join("ledger");
        let operator = run.keys.identity("ledger-operator");
        let ledger = EmbeddedLedger::open_as(&ledger_dir, operator)
            .with_context(|| format!("opening {}", ledger_dir.display()))?;
        let p = Protocol::at(ledger, run.saved.contract);
        let first_entry = p.backend().head()?.size;
        let mut tmp = None;
        let cache = match &files.cache {
            Some(d) => d.clone(),
            None if !check => run.dir.clone(),
            None => {
                let t = tempfile::tempdir().context("a temporary directory for the task")?;
                let path = t.path().to_path_buf();
                tmp = Some(t);
                path
            }
        };
        say("setting up the task");
        let task = cohort_tasks::build(&run.cfg, &run.config_dir, &cache)
            .context("setting up the run's task")?;
        let spec_of_store = files
            .blobs
            .clone()
            .unwrap_or_else(|| run.dir.join("blobs").display().to_string());
        let store = cohort_blob::open_existing(&spec_of_store).with_context(|| {
            format!(
                "the run's blob store {spec_of_store} (for a run made with --blobs LOCATION, \
                 give the same --blobs)"
            )
        })?;
        if let Some(d) = &files.keys
            && !d.is_dir()
        {
            bail!("--keys {}: not a directory", d.display());
        }
        Ok(Self {
            run,
            p,
            task,
            store,
            cache,
            first_entry,
            keys_dir: files.keys.clone(),
            _tmp: tmp,
        })
    }

    /// Party `name`'s key: its own file in `--keys` (NAME.key or NAME.pem) if there is one,
    /// else the run's.
    fn identity(&self, name: &str) -> anyhow::Result<Identity> {
        if let Some(d) = &self.keys_dir {
            for ext in ["key", "pem"] {
                let f = d.join(format!("{name}.{ext}"));
                if f.exists() {
                    let id = cohort_core::keyfile::load(&f)
                        .with_context(|| format!("{name}'s key file {}", f.display()))?;
                    return Ok(Identity::from_secret(name, id.secret_bytes()));
                }
            }
        }
        Ok(self.run.keys.identity(name))
    }

    /// Where party `name`'s key comes from, for an error.
    fn key_source(&self, name: &str) -> String {
        match &self.keys_dir {
            Some(d) => format!(
                "its key ({}/{name}.key or .pem, else the run's keys)",
                d.display()
            ),
            None => "the run's keys (give its own key file with --keys DIR)".to_owned(),
        }
    }

    /// Refuses, before anything is written, a signer `name` whose key is not registered on
    /// the ledger with `role` (`roles::VALIDATOR`, `roles::COORDINATOR`).
    fn check_signer(&mut self, name: &str, role: u8) -> anyhow::Result<()> {
        let who = self.p.backend().address_of(&self.identity(name)?);
        let p = self.p.view(Cohort::participantCall { who })?;
        if p.roles & role == 0 {
            bail!(
                "{name} would sign as {who}, from {}, which the ledger has not registered as a \
                 {}",
                self.key_source(name),
                if role == roles::VALIDATOR {
                    "validator"
                } else {
                    "coordinator"
                }
            );
        }
        Ok(())
    }

    /// Client `k`'s dataset id, as the set-up registered it.
    fn dataset_of(&self, k: u32, name: &str) -> anyhow::Result<B256> {
        Ok(B256::from(
            self.run
                .saved
                .datasets
                .get(k as usize)
                .copied()
                .with_context(|| format!("the saved state has no dataset for {name}"))?
                .0,
        ))
    }

    /// The client whose dataset `dataset` is.
    fn client_of(&self, dataset: B256) -> anyhow::Result<u32> {
        self.run
            .saved
            .datasets
            .iter()
            .position(|d| B256::from(d.0) == dataset)
            .map(|k| k as u32)
            .with_context(|| {
                format!(
                    "dataset {dataset} is none of the run's clients' (DIR's state does not match \
                     its ledger)"
                )
            })
    }

    /// What a request for client `k` needs, checked with nothing written: its dataset is its
    /// own on the ledger and not forgotten, the task's data is what it committed, and the
    /// run's last model is intact. Its dataset and forget set.
    fn check_request(&mut self, k: u32, name: &str) -> anyhow::Result<(B256, Hash32)> {
        let dataset = self.dataset_of(k, name)?;
        let d = self.p.view(Cohort::datasetCall { id: dataset })?;
        if d.forgotten {
            bail!("{name}'s dataset {dataset} is forgotten already (an earlier unlearning)");
        }
        let client_id = self.identity(name)?;
        let signer = self.p.backend().address_of(&client_id);
        if d.owner != signer {
            bail!(
                "{}: the ledger says dataset {dataset} is {}'s, and {name} would sign as \
                 {signer}, from {}; a run whose parties held key files of their own (a \
                 federation of processes) needs them",
                self.run.dir.display(),
                d.owner,
                self.key_source(name)
            );
        }
        let forget_set = self.task.dataset_commitment(k).0;
        if B256::from(forget_set.0) != d.merkleRoot {
            bail!(
                "{name}'s data (Merkle root {forget_set}) is not what it committed ({}): the \
                 task's data changed since the run",
                d.merkleRoot
            );
        }
        self.run.final_model(&*self.task)?;
        Ok((dataset, forget_set))
    }

    /// The clients left out of a retraining or replay for client `k`: it and any forgotten
    /// before.
    fn gone(&self, k: u32) -> BTreeSet<u32> {
        self.run
            .saved
            .forgotten
            .iter()
            .copied()
            .chain([k])
            .collect()
    }

    /// What method `how` needs, checked with nothing written (fed-eraser: the stored updates
    /// and a weighted-sum aggregation); its prepared replay.
    fn check_execute(&self, k: u32, how: &How) -> anyhow::Result<Option<Replay>> {
        match how.method {
            Method::FedEraser => {
                let rounds = fed_eraser_rounds(&self.run, &*self.store, &self.gone(k))?;
                // The calibration's task: the run's with a share of the local training.
                let half = cohort_tasks::build(
                    &calibration(&self.run.cfg, how.calibration_ratio)?,
                    &self.run.config_dir,
                    &self.cache,
                )
                .context("setting up the calibration's task")?;
                Ok(Some((rounds, half)))
            }
            Method::Retrain | Method::Shards | Method::LoraGa | Method::LoraNpo => Ok(None),
        }
    }

    /// Moves the ledger's clock a minute on (the next entry's time).
    fn tick(&mut self) -> anyhow::Result<()> {
        let now = self.p.backend().head()?.time;
        self.p.backend_mut().set_time(now + 60)?;
        Ok(())
    }

    /// Saves the run's last round again at the ledger's size (what `cohort run --resume`
    /// continues from), with client `forgotten` added and `global` as the global model.
    fn resave(&mut self, forgotten: Option<u32>, global: Option<&[f32]>) -> anyhow::Result<()> {
        let head = self.p.backend().head()?;
        let shards = self.run.shards(&*self.task)?;
        let saved = &mut self.run.saved;
        saved.ledger_entries = head.size;
        saved.ledger_root = head.root;
        saved.now = saved.now.max(head.time);
        if let Some(k) = forgotten.filter(|k| !saved.forgotten.contains(k)) {
            saved.forgotten.push(k);
        }
        let state = self.run.dir.join("state");
        let old = state.join(format!("round-{:06}.global", saved.round));
        let blob = match global {
            Some(g) => shards.layout().encode(g),
            None => fs::read(&old).with_context(|| format!("reading {}", old.display()))?,
        };
        saved.global_sha256 = sha256(&blob);
        cohort_node::resume::save(&state, saved, &blob, None)
            .with_context(|| format!("saving the run's state in {}", state.display()))?;
        Ok(())
    }

    /// Step 1, the request, signed by client `k`.
    fn request(
        &mut self,
        k: u32,
        name: &str,
        dataset: B256,
        forget_set: Hash32,
    ) -> anyhow::Result<u64> {
        self.tick()?;
        let client_id = self.identity(name)?;
        let request = self
            .p
            .request_unlearning(
                &client_id,
                dataset,
                sha256(b"cohort unlearn: the owner's request").into(),
                forget_set.into(),
            )?
            .value;
        self.p.backend_mut().flush()?;
        self.resave(None, None)?;
        say(&format!(
            "request {request}: client-{k} asks for its dataset to be forgotten"
        ));
        Ok(request)
    }

    /// The filed request `request` (refused unless in phase `phase`) and its client.
    fn filed(
        &mut self,
        request: u64,
        phase: u8,
    ) -> anyhow::Result<(
        cohort_ledger::protocol::bindings::CohortBase::UnlearningRequest,
        u32,
    )> {
        let q = self.p.unlearning_request(request)?;
        let now = match q.phase {
            unlearning::phase::REQUESTED => "filed and waiting for an execution",
            unlearning::phase::EXECUTED => "executed and waiting for a verifier",
            unlearning::phase::VERIFIED => "verified already",
            _ => bail!("there is no unlearning request {request} on the run's ledger"),
        };
        if q.phase != phase {
            bail!("unlearning request {request} is {now}");
        }
        let k = self.client_of(q.datasetId)?;
        Ok((q, k))
    }

    /// Step 2, the execution of `request` (client `k`) by `how`, recorded by the coordinator.
    fn execute(
        &mut self,
        request: u64,
        k: u32,
        how: &How,
        spec: Option<UnlearnSpec>,
        replay: Option<Replay>,
    ) -> anyhow::Result<Executed> {
        let cfg = self.run.cfg.clone();
        let name = format!("client-{k}");
        let dataset = self.dataset_of(k, &name)?;
        // A dataset a run's governance admitted is forgotten only once that run approved the
        // request (the contract refuses the execution otherwise): checked before any work.
        let admitted = self.p.view(CohortRuns::admittedCall {
            run: Address::ZERO,
            client: Address::ZERO,
            datasetId: dataset,
        })?;
        let run = admitted.datasetRun;
        if run != Address::ZERO
            && !self
                .p
                .view(CohortRuns::unlearningApprovedCall { requestId: request })?
        {
            bail!(
                "unlearning request {request} (the request is recorded) waits for the approval \
                 of the run {run}'s governance: a member proposes it (cohort gov propose \
                 --ledger {dir} --key FILE --approve-unlearning {request}), the members vote \
                 (cohort gov vote), and once it has passed and its timelock has run out it is \
                 executed (cohort gov execute); then `cohort unlearn execute {dir} --request \
                 {request}`. Nothing else was done.",
                dir = self.run.dir.display()
            );
        }
        let forget_set = self.task.dataset_commitment(k).0;
        let (original, original_hash) = self.run.final_model(&*self.task)?;
        let gone = self.gone(k);
        let forgotten_before: Vec<u32> = self.run.saved.forgotten.clone();
        let retain = retain_of(cfg.clients as u32, &gone);
        let work = self.run.dir.join(format!("unlearn/request-{request}"));
        fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
        let retrain_dir = work.join("retrain");
        let (keys, task, store) = (&self.run.keys, &*self.task, &*self.store);
        let shards = self.run.shards(task)?;
        let retrained = || -> anyhow::Result<(Vec<f32>, f64, u64)> {
            say(&format!(
                "retraining the federation without {name} ({} rounds)",
                cfg.coordinator.rounds
            ));
            let t = Instant::now();
            let (model, steps) = retrain(&cfg, keys, task, &gone, &retrain_dir, store, &say)?;
            Ok((model, t.elapsed().as_secs_f64(), steps))
        };
        let t = Instant::now();
        let (model, client_steps, oracle) = match how.method {
            Method::Retrain => {
                let (model, _, steps) = retrained()?;
                (model.clone(), steps, Some(model))
            }
            Method::Shards => {
                let (model, steps) = retrain_shard(
                    &cfg,
                    keys,
                    task,
                    &shards,
                    &original,
                    (k, &gone),
                    &work.join("shard"),
                    store,
                    &say,
                )?;
                (model, steps, None)
            }
            Method::LoraGa | Method::LoraNpo => {
                let spec = spec.as_ref().context("the settings were checked")?;
                say(&format!(
                    "{}: {} steps on {name}'s text from the run's adapter",
                    how.method.name(),
                    spec.steps,
                ));
                let model = task.unlearn(k, &original, spec, cfg.seed)?;
                (model, spec.steps as u64, None)
            }
            Method::FedEraser => {
                say(&format!(
                    "fed-eraser: replaying the run without {name} from its stored updates"
                ));
                let (rounds, half) = replay.as_ref().context("the replay was prepared")?;
                let settings = FedEraserSettings {
                    interval: how.interval,
                    calibration_ratio: how.calibration_ratio,
                };
                let (model, steps) = fed_eraser_replay(
                    &self.run,
                    (store, task, &**half),
                    &gone,
                    settings,
                    &say,
                    rounds,
                )?;
                (model, steps, None)
            }
        };
        let seconds = t.elapsed().as_secs_f64();
        let (oracle, retrain_seconds, retrain_client_steps) = match (oracle, how.compare_retrain) {
            (Some(m), compare) => (
                Some(m),
                compare.then_some(seconds),
                compare.then_some(client_steps),
            ),
            (None, true) => {
                let (m, secs, steps) = retrained()?;
                (Some(m), Some(secs), Some(steps))
            }
            (None, false) => (None, None, None),
        };
        let layout = shards.layout();
        let model_hash = store.put(&layout.encode(&model))?;
        let oracle_hash = match &oracle {
            Some(o) => Some(store.put(&layout.encode(o))?),
            None => None,
        };
        say("measuring the original and the unlearned model");
        let evidence = Evidence {
            format: EVIDENCE_FORMAT.into(),
            request,
            client: name.clone(),
            dataset,
            method: how.method.name().into(),
            forget_set,
            original_model: original_hash,
            model: model_hash,
            oracle_model: oracle_hash,
            settings: spec,
            fed_eraser: (how.method == Method::FedEraser)
                .then_some(FedEraserSettings {
                    interval: how.interval,
                    calibration_ratio: how.calibration_ratio,
                })
                .filter(|s| *s != FedEraserSettings::DEFAULT),
            forgotten_before,
            original: measure_served(task, &shards, &original, k, &retain)?,
            unlearned: measure_served(task, &shards, &model, k, &retain)?,
            oracle: match &oracle {
                Some(o) => Some(measure_served(task, &shards, o, k, &retain)?),
                None => None,
            },
        };
        let evidence_blob = serde_json::to_vec_pretty(&evidence)?;
        let evidence_hash = store.put(&evidence_blob)?;
        let coord = self.identity("coordinator")?;
        self.tick()?;
        let exec = self.p.record_unlearning(
            &coord,
            request,
            how.method.id(),
            model_hash.into(),
            evidence_hash.into(),
        )?;
        let clawed_back = exec
            .events
            .iter()
            .find_map(|e| match e {
                Cohort::CohortEvents::Clawback(c) => Some(c.amount),
                _ => None,
            })
            .unwrap_or_default();
        self.p.backend_mut().flush()?;
        // The dataset is forgotten from here on, whatever the verification says.
        self.resave(Some(k), None)?;
        Ok(Executed {
            evidence,
            evidence_hash,
            seconds,
            retrain_seconds,
            retrain_client_steps,
            client_steps,
            clawed_back,
        })
    }

    /// Step 3, the verification of `request` (client `k`) by `verifier` (a validator other
    /// than the executor), recorded; after an accepted one, the blobs deleted if `delete`.
    fn verify(
        &mut self,
        request: u64,
        k: u32,
        verifier: &str,
        delete: bool,
    ) -> anyhow::Result<Verdict> {
        let q = self.p.unlearning_request(request)?;
        let evidence_hash = Hash32(q.evidenceHash.0);
        let forget_set = Hash32(q.forgetSetHash.0);
        say(&format!(
            "{verifier} recomputes the evidence from the blobs"
        ));
        // What the verifier knows of the run: the clients forgotten before this request.
        let before: Vec<u32> = self
            .run
            .saved
            .forgotten
            .iter()
            .copied()
            .filter(|&c| c != k)
            .collect();
        let shards = self.run.shards(&*self.task)?;
        let verdict = verify(
            (&*self.task, &shards),
            &*self.store,
            evidence_hash,
            request,
            k,
            (self.run.cfg.clients as u32, &before),
            forget_set,
        );
        // The measures the ledger keeps: the evidence's (read back; the verdict says whether
        // they hold).
        let evidence: Option<Evidence> = self
            .store
            .get(&evidence_hash)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let on_ledger = match &evidence {
            Some(ev) => {
                let e = &ev.unlearned;
                let oracle = ev.oracle.as_ref();
                UnlearningEvidence {
                    forgetMetric: fixed(Some(forget_metric(&e.forget))),
                    miaAuc: fixed(e.mia_auc_loss),
                    testMetric: fixed(Some(test_metric(&e.test))),
                    hasOracle: oracle.is_some(),
                    forgetGap: fixed(
                        oracle.map(|o| forget_metric(&e.forget) - forget_metric(&o.forget)),
                    ),
                    miaGap: fixed(oracle.and_then(|o| Some(e.mia_auc_loss? - o.mia_auc_loss?))),
                }
            }
            None => UnlearningEvidence {
                forgetMetric: i64::MIN,
                miaAuc: i64::MIN,
                testMetric: i64::MIN,
                hasOracle: false,
                forgetGap: i64::MIN,
                miaGap: i64::MIN,
            },
        };
        let (accepted, why) = match &verdict {
            Ok(()) => (true, B256::ZERO),
            Err(reason) => (false, sha256(reason.as_bytes()).into()),
        };
        let who = self.identity(verifier)?;
        self.tick()?;
        self.p.verify_unlearning(
            &who,
            request,
            accepted,
            evidence_hash.into(),
            on_ledger,
            why,
        )?;
        self.p.backend_mut().flush()?;
        let model = match (&evidence, accepted) {
            (Some(ev), true) => {
                let blob = self.store.get(&ev.model)?;
                Some(decode_model(&blob, &shards)?)
            }
            _ => None,
        };
        // Accepted: the run goes on from the unlearned model.
        self.resave(Some(k), model.as_deref())?;
        let deleted = match (delete, accepted) {
            (true, true) => {
                let d = delete_blobs(&self.run, &*self.store, k, request)?;
                let coord = self.identity("coordinator")?;
                self.tick()?;
                self.p.record_blob_deletion(&coord, request, d.1.into())?;
                self.p.backend_mut().flush()?;
                self.resave(None, None)?;
                say(&format!(
                    "deleted {} of client-{k}'s blobs from {} (manifest {})",
                    d.0,
                    self.store.location(),
                    d.1
                ));
                Some(json!({"count": d.0, "manifest": d.1}))
            }
            (true, false) => {
                say("the verification rejected the execution: no blob was deleted");
                None
            }
            _ => None,
        };
        Ok(Verdict {
            accepted,
            why: verdict.err(),
            deleted,
        })
    }

    /// The ledger after the session: its head, the bytes of what the session recorded, and
    /// the whole ledger verified.
    fn ledger_report(&mut self) -> anyhow::Result<(u64, Value)> {
        let head = self.p.backend().head()?;
        let mut bytes = 0u64;
        for seq in self.first_entry..head.size {
            bytes += self.p.backend().entry(seq)?.encode().len() as u64;
        }
        let verified = self
            .p
            .backend()
            .verify()
            .context("verifying the run's ledger")?;
        Ok((
            bytes,
            json!({"entries": head.size, "root": head.root, "verified": verified.entries}),
        ))
    }
}

/// The clients of `clients` whose data is the retain set: all but those `gone`.
fn retain_of(clients: u32, gone: &BTreeSet<u32>) -> Vec<u32> {
    (0..clients).filter(|c| !gone.contains(c)).collect()
}

/// FedEraser's prepared replay: the provenance by round and the calibration's task.
type Replay = (
    std::collections::BTreeMap<u64, Vec<ProvenanceRecord>>,
    Box<dyn Learner + Send + Sync>,
);

fn metrics_json(m: &Metrics) -> Value {
    json!({
        "loss": m.loss,
        "accuracy": m.accuracy,
        "perplexity": m.perplexity,
        "backdoor_success": m.backdoor_success_rate,
    })
}

fn measures_json(m: &Measures) -> Value {
    json!({
        "forget": metrics_json(&m.forget),
        "retain": metrics_json(&m.retain),
        "test": metrics_json(&m.test),
        "mia_auc": {"loss": m.mia_auc_loss, "min_k": m.mia_auc_min_k},
    })
}

/// The result of an execution (and of its verification, where one followed) as JSON.
fn result_json(x: &Executed, verdict: Option<&Verdict>, ledger_bytes: u64, ledger: Value) -> Value {
    let e = &x.evidence.unlearned;
    json!({
        "method": x.evidence.method,
        "client": x.evidence.client,
        "seconds": x.seconds,
        "retrain_seconds": x.retrain_seconds,
        "speedup": x.retrain_seconds.map(|r| r / x.seconds.max(1e-9)),
        "client_steps": x.client_steps,
        "retrain_client_steps": x.retrain_client_steps,
        "ledger_bytes": ledger_bytes,
        "forget": metrics_json(&e.forget),
        "retain": metrics_json(&e.retain),
        "test": metrics_json(&e.test),
        "mia_auc": {"loss": e.mia_auc_loss, "min_k": e.mia_auc_min_k},
        "original": measures_json(&x.evidence.original),
        "oracle": x.evidence.oracle.as_ref().map(measures_json),
        "ledger_request": x.evidence.request,
        "model_hash": x.evidence.model,
        "oracle_hash": x.evidence.oracle_model,
        "evidence_hash": x.evidence_hash,
        "clawed_back": x.clawed_back.to_string(),
        "verified": verdict.map(|v| v.accepted),
        "deleted_blobs": verdict.and_then(|v| v.deleted.clone()),
        "verification": verdict.and_then(|v| v.why.clone()),
        "ledger": ledger,
    })
}

/// `client-K` of the run, refused by name otherwise.
fn validator_name(run: &RunDir, name: &str) -> anyhow::Result<()> {
    let n = run.cfg.validators;
    let ok = name
        .strip_prefix("validator-")
        .and_then(|k| k.parse::<usize>().ok())
        .is_some_and(|k| k < n && name == format!("validator-{k}"));
    if !ok {
        bail!(
            "--as {name:?}: the run's validators are validator-0 to validator-{}",
            n.saturating_sub(1)
        );
    }
    Ok(())
}

impl Args {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        match self.step {
            Some(Step::Request {
                dir,
                client,
                files,
                json,
                check,
            }) => request_step(&dir, &client, &files, json, check),
            Some(Step::Execute {
                dir,
                request,
                how,
                files,
                json,
                check,
            }) => execute_step(&dir, request, &how, &files, json, check),
            Some(Step::Verify {
                dir,
                request,
                verifier,
                files,
                delete_blobs,
                json,
                check,
            }) => verify_step(&dir, request, &verifier, &files, delete_blobs, json, check),
            None => {
                let (Some(dir), Some(client)) = (&self.dir, &self.client) else {
                    bail!(
                        "cohort unlearn DIR --client NAME (or one step: request, execute, verify)"
                    );
                };
                self.all_steps(dir, client)
            }
        }
    }

    /// Request, execution and verification in one invocation.
    fn all_steps(&self, dir: &Path, client: &str) -> anyhow::Result<ExitCode> {
        let started = Instant::now();
        let mut s = Session::open(dir, &self.files, self.check)?;
        let k = s.run.client(client)?;
        let spec = self.how.spec(&s.run.cfg)?;
        // Nothing is written before the request is known to be possible.
        let (dataset, forget_set) = s.check_request(k, client)?;
        s.check_signer("coordinator", roles::COORDINATOR)?;
        s.check_signer("validator-0", roles::VALIDATOR)?;
        let replay = s.check_execute(k, &self.how)?;
        if self.check {
            println!(
                "would forget {client} (dataset {dataset}, forget set {forget_set}) from the \
                 model {} of round {} by {}, recorded on {}; nothing was written",
                s.run.saved.global_sha256,
                s.run.saved.round,
                self.how.method.name(),
                s.run.dir.join("ledger").display()
            );
            return Ok(ExitCode::SUCCESS);
        }
        let request = s.request(k, client, dataset, forget_set)?;
        let x = s.execute(request, k, &self.how, spec, replay)?;
        let verdict = s.verify(request, k, "validator-0", self.delete_blobs)?;
        let (bytes, ledger) = s.ledger_report()?;
        let mut out = result_json(&x, Some(&verdict), bytes, ledger);
        out["wall_seconds"] = json!(started.elapsed().as_secs_f64());
        let work = s.run.dir.join(format!("unlearn/request-{request}"));
        fs::write(
            work.join("result.json"),
            serde_json::to_string_pretty(&out)? + "\n",
        )
        .with_context(|| format!("writing {}", work.join("result.json").display()))?;
        if self.json {
            print_json(&out)?;
        } else {
            print_table(client, &x.evidence, &out);
        }
        Ok(if verdict.accepted {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        })
    }
}

/// `cohort unlearn request`.
fn request_step(
    dir: &Path,
    client: &str,
    files: &Files,
    json_out: bool,
    check: bool,
) -> anyhow::Result<ExitCode> {
    let mut s = Session::open(dir, files, check)?;
    let k = s.run.client(client)?;
    let (dataset, forget_set) = s.check_request(k, client)?;
    if check {
        println!(
            "{client} would request that its dataset {dataset} (forget set {forget_set}) be \
             forgotten; nothing was written"
        );
        return Ok(ExitCode::SUCCESS);
    }
    let request = s.request(k, client, dataset, forget_set)?;
    let (_, ledger) = s.ledger_report()?;
    let out = json!({"request": request, "client": client, "dataset": dataset,
                     "forget_set": forget_set, "ledger": ledger});
    if json_out {
        print_json(&out)?;
    } else {
        println!(
            "request {request}: {client} asks for its dataset {dataset} to be forgotten (forget \
             set {forget_set}); next: cohort unlearn execute {} --request {request} --method M",
            dir.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `cohort unlearn execute`.
fn execute_step(
    dir: &Path,
    request: u64,
    how: &How,
    files: &Files,
    json_out: bool,
    check: bool,
) -> anyhow::Result<ExitCode> {
    let mut s = Session::open(dir, files, check)?;
    let spec = how.spec(&s.run.cfg)?;
    let (_, k) = s.filed(request, unlearning::phase::REQUESTED)?;
    s.check_signer("coordinator", roles::COORDINATOR)?;
    let replay = s.check_execute(k, how)?;
    s.run.final_model(&*s.task)?;
    if check {
        println!(
            "would execute request {request} (client-{k}) by {}; nothing was written",
            how.method.name()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let x = s.execute(request, k, how, spec, replay)?;
    let (bytes, ledger) = s.ledger_report()?;
    let out = result_json(&x, None, bytes, ledger);
    if json_out {
        print_json(&out)?;
    } else {
        print_table(&format!("client-{k}"), &x.evidence, &out);
        println!(
            "next: a validator other than the executor verifies it: cohort unlearn verify {} \
             --request {request} --as validator-K",
            dir.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `cohort unlearn verify`.
fn verify_step(
    dir: &Path,
    request: u64,
    verifier: &str,
    files: &Files,
    delete: bool,
    json_out: bool,
    check: bool,
) -> anyhow::Result<ExitCode> {
    let mut s = Session::open(dir, files, check)?;
    validator_name(&s.run, verifier)?;
    let (q, k) = s.filed(request, unlearning::phase::EXECUTED)?;
    s.check_signer(verifier, roles::VALIDATOR)?;
    if s.p.backend().address_of(&s.identity(verifier)?) == q.executor {
        bail!("--as {verifier}: it executed request {request}; the verifier must be another party");
    }
    if check {
        println!(
            "{verifier} would verify request {request} (client-{k}, evidence {}); nothing was \
             written",
            Hash32(q.evidenceHash.0)
        );
        return Ok(ExitCode::SUCCESS);
    }
    let v = s.verify(request, k, verifier, delete)?;
    let (_, ledger) = s.ledger_report()?;
    let out = json!({"request": request, "client": format!("client-{k}"),
                     "verifier": verifier, "verified": v.accepted, "verification": v.why,
                     "evidence_hash": Hash32(q.evidenceHash.0),
                     "model_hash": Hash32(q.resultModelHash.0),
                     "deleted_blobs": v.deleted, "ledger": ledger});
    if json_out {
        print_json(&out)?;
    } else if v.accepted {
        println!(
            "request {request}: {verifier} recomputed the evidence {} and accepts it; the run \
             goes on from the unlearned model {} (cohort run ... --resume --set \
             coordinator.rounds=N)",
            Hash32(q.evidenceHash.0),
            Hash32(q.resultModelHash.0)
        );
    } else {
        println!(
            "request {request}: {verifier} REJECTS the execution ({}); the request is open \
             again for another execution",
            v.why.as_deref().unwrap_or("")
        );
    }
    Ok(if v.accepted {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Deletes client `k`'s update blobs (every one its provenance names) from `store` and puts
/// the manifest that lists them; how many were there, and the manifest's hash.
fn delete_blobs(
    run: &RunDir,
    store: &dyn BlobStore,
    k: u32,
    request: u64,
) -> anyhow::Result<(usize, Hash32)> {
    let hashes: std::collections::BTreeSet<Hash32> = super::provenance::read_provenance(&run.dir)?
        .into_iter()
        .filter(|r| r.client == k)
        .map(|r| r.blob)
        .collect();
    let mut gone = 0;
    for h in &hashes {
        if store.delete(h)? {
            gone += 1;
        }
    }
    let manifest = json!({
        "format": "cohort-unlearning-deletion/1",
        "request": request,
        "client": format!("client-{k}"),
        "store": store.location(),
        "deleted": hashes.iter().map(|h| h.to_hex()).collect::<Vec<_>>(),
    });
    let h = store.put(&serde_json::to_vec_pretty(&manifest)?)?;
    Ok((gone, h))
}

/// Retrains the federation of `cfg` without the clients `gone` (the one forgotten now and
/// any forgotten before) in `dir` (its own ledger), its blobs in `store`; the final global
/// model.
fn retrain(
    cfg: &ValidConfig,
    keys: &Keys,
    task: &(dyn Learner + Send + Sync),
    gone: &BTreeSet<u32>,
    dir: &Path,
    store: &dyn BlobStore,
    say: &dyn Fn(&str),
) -> anyhow::Result<(Vec<f32>, u64)> {
    let _ = fs::remove_dir_all(dir);
    let operator = keys.identity("ledger-operator");
    let ledger = EmbeddedLedger::create(
        dir.join("ledger"),
        LedgerConfig::new("cohort.local/unlearn-retrain", operator),
    )?;
    let opts = RunOptions::new()
        .with_keys(keys.clone())
        .with_blobs(cohort_blob::open(&store.location())?)
        .excluding(gone.iter().copied());
    let rounds = cfg.coordinator.rounds;
    let (_, summary) = run_in_process(cfg, ledger, task, opts, |r| {
        say(&format!(
            "  retrain round {}/{rounds}: test loss {:.4}",
            r.round, r.test.loss
        ));
    })
    .context("retraining without the client")?;
    let last = summary
        .rounds
        .last()
        .and_then(|r| r.provenance.last().map(|x| x.global_after))
        .context("the retrained run has no rounds")?;
    let blob = store.get(&last)?;
    let steps: u64 = summary
        .rounds
        .iter()
        .map(|r| r.submitted.len() as u64)
        .sum::<u64>()
        * local_steps(cfg);
    let shards = Shards::new(cfg.unlearning.shards, task.layout())?;
    Ok((decode_model(&blob, &shards)?, steps))
}

/// SISA's unlearning: retrains, from round 0 and without the clients `gone` (client
/// `forgotten`, and any forgotten before), only `forgotten`'s shard, in `dir` (its own ledger), and puts its slice into `original` (the run's model), every
/// other slice kept. The shard reruns as the run did, its cohorts drawn from its own members
/// at the run's rate (`clients_per_round` scaled by the shard's share of the clients, rounded
/// up), so that with every client training every round the result is bit for bit what
/// `retrain` gives. A shard left without clients gets its initial slice back. The model and
/// the client steps spent.
#[allow(clippy::too_many_arguments)]
fn retrain_shard(
    cfg: &ValidConfig,
    keys: &Keys,
    task: &(dyn Learner + Send + Sync),
    shards: &Shards,
    original: &[f32],
    (forgotten, gone): (u32, &BTreeSet<u32>),
    dir: &Path,
    store: &dyn BlobStore,
    say: &dyn Fn(&str),
) -> anyhow::Result<(Vec<f32>, u64)> {
    let clients = cfg.clients as u32;
    let shard = shards.of(forgotten);
    let all = shards.members(clients, shard);
    let members: Vec<u32> = all.iter().copied().filter(|k| !gone.contains(k)).collect();
    let mut model = original.to_vec();
    if members.is_empty() {
        say(&format!(
            "shards: shard {shard} has no client left; its slice goes back to the initial model"
        ));
        shards
            .slice_mut(&mut model, shard)
            .copy_from_slice(&task.init());
        return Ok((model, 0));
    }
    let per_round = (cfg.coordinator.clients_per_round * all.len()).div_ceil(cfg.clients);
    let mut c = cfg.config().clone();
    c.coordinator.clients_per_round = per_round.max(1);
    let shard_cfg = c.check()?;
    say(&format!(
        "shards: retraining shard {shard} of {} without client-{forgotten}: clients {members:?}, \
         {} a round, {} rounds",
        shards.count(),
        shard_cfg.coordinator.clients_per_round.min(members.len()),
        cfg.coordinator.rounds
    ));
    let others: BTreeSet<u32> = (0..clients).filter(|k| !members.contains(k)).collect();
    let (retrained, steps) = retrain(&shard_cfg, keys, task, &others, dir, store, say)?;
    shards
        .slice_mut(&mut model, shard)
        .copy_from_slice(shards.slice(&retrained, shard));
    Ok((model, steps))
}

/// A client's local optimisation steps per round under `cfg` (for the linear task, its
/// epochs' worth of batches).
fn local_steps(cfg: &ValidConfig) -> u64 {
    match &cfg.task {
        TaskConfig::Linear(l) => (l.epochs * l.samples_per_client.div_ceil(l.batch.max(1))) as u64,
        TaskConfig::Imdb(i) => i.local_steps as u64,
        TaskConfig::Lm(l) => l.local_steps as u64,
    }
}

/// `cfg` with `ratio` (in (0, 1]) of the local training of each client, rounded (at least
/// one step or epoch): what FedEraser's calibration trains. Half (0.5) rounds down, as
/// FedEraser's `r = 0.5` of an odd count does.
fn calibration(cfg: &ValidConfig, ratio: f64) -> anyhow::Result<ValidConfig> {
    let share = |n: usize| -> usize {
        if ratio == 0.5 {
            (n / 2).max(1)
        } else {
            ((n as f64 * ratio).round() as usize).clamp(1, n.max(1))
        }
    };
    let mut c = cfg.config().clone();
    match &mut c.task {
        TaskConfig::Linear(l) => l.epochs = share(l.epochs),
        TaskConfig::Imdb(i) => i.local_steps = share(i.local_steps),
        TaskConfig::Lm(l) => l.local_steps = share(l.local_steps),
    }
    Ok(c.check()?)
}

/// The run's provenance by round, checked for what FedEraser needs before anything is
/// recorded: every accepted update entered a weighted sum (no server optimizer), and the
/// initial global model and every update it replays are in the blob store.
fn fed_eraser_rounds(
    run: &RunDir,
    store: &dyn BlobStore,
    gone: &BTreeSet<u32>,
) -> anyhow::Result<std::collections::BTreeMap<u64, Vec<ProvenanceRecord>>> {
    use cohort_fl::strategy::Contribution;
    let mut rounds: std::collections::BTreeMap<u64, Vec<ProvenanceRecord>> = Default::default();
    for r in super::provenance::read_provenance(&run.dir)? {
        rounds.entry(r.round).or_default().push(r);
    }
    // Refused before any work: a strategy whose step is not a weighted sum of the updates.
    for r in rounds.values().flatten().filter(|r| r.accepted) {
        match &r.contribution {
            Some(Contribution::Weighted {
                via_server_optimizer: false,
                ..
            }) => {}
            Some(Contribution::Weighted { .. }) => bail!(
                "fed-eraser needs a weighted-sum aggregation; this run's steps went through a \
                 server optimizer (aggregation.fedadam_lr or the like), which is not linear in \
                 the updates: use --method retrain"
            ),
            _ => bail!(
                "fed-eraser needs a weighted-sum aggregation (fed-avg, score-weighted); this \
                 run used {}: use --method retrain",
                run.cfg.aggregation.build().name()
            ),
        }
    }
    let first = rounds
        .values()
        .next()
        .and_then(|r| r.first())
        .context("the run's provenance records no update")?;
    let needed = std::iter::once((first.global_before, "the initial global model".to_owned()))
        .chain(
            rounds
                .values()
                .flatten()
                .filter(|r| r.accepted && !gone.contains(&r.client))
                .map(|r| {
                    (
                        r.blob,
                        format!("round {} update of client-{}", r.round, r.client),
                    )
                }),
        );
    for (h, what) in needed {
        if !store.has(&h)? {
            bail!(
                "{what} (blob {h}) is not in {}: fed-eraser replays the stored updates; use \
                 --method retrain",
                store.location()
            );
        }
    }
    Ok(rounds)
}

/// FedEraser (Liu et al., 2021) from the run's provenance (`rounds`, from
/// [`fed_eraser_rounds`]) and blob store: from the run's initial global model, every
/// `settings.interval`-th round again without the clients `gone` (the one forgotten now and
/// any forgotten before): every other accepted client trains (`half`: the run's task with
/// `settings.calibration_ratio` of the local training) from the replayed model (the
/// calibration), each tensor of its stored update keeps its norm and takes the calibration's
/// direction, and the replayed model moves by their weighted sum (the round's recorded
/// weights, renormalised without the client, and clipping factors). The unlearned model and
/// the client steps spent.
fn fed_eraser_replay(
    run: &RunDir,
    (store, task, half): (&dyn BlobStore, &dyn Learner, &dyn Learner),
    gone: &BTreeSet<u32>,
    settings: FedEraserSettings,
    say: &dyn Fn(&str),
    rounds: &std::collections::BTreeMap<u64, Vec<ProvenanceRecord>>,
) -> anyhow::Result<(Vec<f32>, u64)> {
    use cohort_fl::strategy::Contribution;
    let first = rounds
        .values()
        .next()
        .and_then(|r| r.first())
        .context("the run's provenance records no update")?;
    let load = |h: &Hash32, what: &str| -> anyhow::Result<Vec<f32>> {
        let blob = store
            .get(h)
            .with_context(|| format!("{what} {h}: the stored updates are needed by fed-eraser"))?;
        decode_model(&blob, &Shards::none(task.layout()))
    };
    let mut model = load(&first.global_before, "the initial global model")?;
    let layout = task.layout();
    let mut steps = 0u64;
    let per_client = local_steps(&calibration(&run.cfg, settings.calibration_ratio)?);
    let total = rounds.len();
    let interval = usize::try_from(settings.interval.max(1)).unwrap_or(usize::MAX);
    for (i, (round, records)) in rounds.iter().enumerate() {
        // FedEraser's retaining interval: only every `interval`-th round is reconstructed.
        if i % interval != 0 {
            continue;
        }
        let kept: Vec<(&ProvenanceRecord, f64, f64)> = records
            .iter()
            .filter(|r| r.accepted && !gone.contains(&r.client))
            .filter_map(|r| match r.contribution {
                Some(Contribution::Weighted {
                    weight, clip_scale, ..
                }) => Some((r, weight, clip_scale)),
                _ => None,
            })
            .collect();
        let sum: f64 = kept.iter().map(|(_, w, _)| w).sum();
        if kept.is_empty() || sum <= 0.0 || !sum.is_finite() {
            continue;
        }
        let mut step = vec![0f64; model.len()];
        for (r, w, clip) in &kept {
            let stored = load(
                &r.blob,
                &format!("round {round} update of client-{}", r.client),
            )?;
            let mut rng =
                cohort_core::Rng::derive(run.cfg.seed, &format!("fed-eraser/{round}/{}", r.client));
            let cal = half.train(r.client, &model, &mut rng)?;
            steps += per_client;
            let mut off = 0;
            for (_, shape) in layout.tensors() {
                let n: usize = shape.iter().product();
                let (Some(u), Some(c)) = (stored.get(off..off + n), cal.get(off..off + n)) else {
                    bail!("round {round}: an update that does not fill the model's tensors");
                };
                let norm = |v: &[f32]| v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
                let (nu, nc) = (norm(u), norm(c));
                let scale = if nc > 0.0 { nu / nc } else { 0.0 };
                for (j, &x) in c.iter().enumerate() {
                    step[off + j] += w / sum * clip * scale * f64::from(x);
                }
                off += n;
            }
        }
        for (m, d) in model.iter_mut().zip(&step) {
            *m += *d as f32;
        }
        say(&format!(
            "  round {}/{total}: {} updates calibrated",
            i + 1,
            kept.len()
        ));
    }
    if model.iter().any(|x| !x.is_finite()) {
        bail!("fed-eraser's model is not finite");
    }
    Ok((model, steps))
}

/// What a verifier does: reads the evidence and the models it names from the store (each hash
/// checked by the store), checks the forget set against the request's commitment, recomputes
/// every measure and rebuilds the evidence; `Ok` when it is the executor's byte for byte.
fn verify(
    (task, shards): (&dyn Learner, &Shards),
    store: &dyn BlobStore,
    evidence_hash: Hash32,
    request: u64,
    k: u32,
    (clients, before): (u32, &[u32]),
    forget_set: Hash32,
) -> Result<(), String> {
    let blob = store.get(&evidence_hash).map_err(|e| e.to_string())?;
    let claimed: Evidence =
        serde_json::from_slice(&blob).map_err(|e| format!("the evidence does not read: {e}"))?;
    if claimed.format != EVIDENCE_FORMAT || claimed.request != request {
        return Err("the evidence is not this request's".into());
    }
    if claimed.forget_set != forget_set || task.dataset_commitment(k).0 != forget_set {
        return Err("the disclosed forget set is not the committed one".into());
    }
    if claimed.model == claimed.original_model {
        return Err("the unlearned model is the original model".into());
    }
    let load = |h: Hash32| -> Result<Vec<f32>, String> {
        let b = store.get(&h).map_err(|e| e.to_string())?;
        decode_model(&b, shards).map_err(|e| e.to_string())
    };
    if claimed.forgotten_before != before {
        return Err(format!(
            "the evidence says clients {:?} were forgotten before, the run says {before:?}",
            claimed.forgotten_before
        ));
    }
    let gone: BTreeSet<u32> = before.iter().copied().chain([k]).collect();
    let retain = retain_of(clients, &gone);
    let m = |params: &[f32]| {
        measure(task, &shards.served(params), k, &retain).map_err(|e| e.to_string())
    };
    let original = load(claimed.original_model)?;
    let model = load(claimed.model)?;
    if model == original {
        return Err("the unlearned model has the original model's parameters".into());
    }
    // Sharded training keeps every other shard's slice apart from the client's data: an
    // exact unlearning by shards changes the client's shard alone.
    if claimed.method == Method::Shards.name() {
        if !shards.is_sharded() {
            return Err("a shards unlearning of a run trained without shards".into());
        }
        let mine = shards.of(k);
        if let Some(s) = (0..shards.count())
            .find(|&s| s != mine && shards.slice(&model, s) != shards.slice(&original, s))
        {
            return Err(format!(
                "the shards execution changed shard {s}, not only client-{k}'s shard {mine}"
            ));
        }
    }
    let oracle = match claimed.oracle_model {
        Some(h) => Some(m(&load(h)?)?),
        None => None,
    };
    let rebuilt = Evidence {
        original: m(&original)?,
        unlearned: m(&model)?,
        oracle,
        ..claimed.clone()
    };
    let bytes = serde_json::to_vec_pretty(&rebuilt).map_err(|e| e.to_string())?;
    if sha256(&bytes) != evidence_hash {
        return Err("the recomputed measures differ from the evidence".into());
    }
    Ok(())
}

fn print_table(client: &str, ev: &Evidence, out: &Value) {
    let row = |name: &str, m: &Measures| {
        let acc = |x: &Metrics| match (x.accuracy, x.perplexity) {
            (Some(a), _) => format!("{:.4} ({:.1}%)", x.loss, a * 100.0),
            (None, Some(p)) => format!("{:.4} (ppl {p:.2})", x.loss),
            (None, None) => format!("{:.4}", x.loss),
        };
        let mia = match (m.mia_auc_loss, m.mia_auc_min_k) {
            (Some(a), Some(b)) => format!("{a:.3}/{b:.3}"),
            (Some(a), None) => format!("{a:.3}"),
            _ => "-".into(),
        };
        println!(
            "{name:<10} {:>22} {:>22} {:>22} {:>11} {:>9}",
            acc(&m.forget),
            acc(&m.retain),
            acc(&m.test),
            mia,
            m.test
                .backdoor_success_rate
                .map_or("-".into(), |b| format!("{:.1}%", b * 100.0))
        );
    };
    println!(
        "forgetting {client} by {} (request {}):",
        ev.method, ev.request
    );
    println!(
        "{:<10} {:>22} {:>22} {:>22} {:>11} {:>9}",
        "model", "forget loss", "retain loss", "test loss", "MIA AUC", "backdoor"
    );
    row("original", &ev.original);
    row("unlearned", &ev.unlearned);
    if let Some(o) = &ev.oracle {
        row("oracle", o);
    }
    println!(
        "model {} in {:.2} s; rewards clawed back: {} base units; verified: {}",
        ev.model,
        out["seconds"].as_f64().unwrap_or(0.0),
        out["clawed_back"].as_str().unwrap_or("0"),
        if out["verified"].as_bool() == Some(true) {
            "accepted".to_owned()
        } else if out["verified"].is_null() {
            "not yet".to_owned()
        } else {
            format!("REJECTED ({})", out["verification"].as_str().unwrap_or(""))
        }
    );
}

#[cfg(test)]
mod tests {
    use cohort_blob::LocalDir;
    use cohort_tasks::{LinearTask, LinearTaskConfig};

    use super::*;

    /// An executor's evidence for `model` against `original`, honest or not, in `store`.
    fn evidence(
        task: &LinearTask,
        store: &LocalDir,
        original: &[f32],
        model: &[f32],
        k: u32,
    ) -> Evidence {
        let layout = task.layout();
        let original_model = store.put(&layout.encode(original)).unwrap();
        let model_hash = store.put(&layout.encode(model)).unwrap();
        Evidence {
            format: EVIDENCE_FORMAT.into(),
            request: 1,
            client: format!("client-{k}"),
            dataset: B256::ZERO,
            method: "retrain".into(),
            forget_set: task.dataset_commitment(k).0,
            original_model,
            model: model_hash,
            oracle_model: Some(model_hash),
            settings: None,
            fed_eraser: None,
            forgotten_before: Vec::new(),
            original: measure(task, original, k, &[0, 1, 2, 3]).unwrap(),
            unlearned: measure(task, model, k, &[0, 1, 2, 3]).unwrap(),
            oracle: Some(measure(task, model, k, &[0, 1, 2, 3]).unwrap()),
        }
    }

    fn put(store: &LocalDir, e: &Evidence) -> Hash32 {
        store.put(&serde_json::to_vec_pretty(e).unwrap()).unwrap()
    }

    /// Ten honest executions are accepted and ten fakes refused: the model unchanged, the
    /// original re-encoded under another hash (a relabelling), measures that are not the
    /// model's (better forgetting claimed, another model's metrics), an oracle that is not
    /// measured, another forget set, another request.
    #[test]
    fn the_verifier_accepts_honest_evidence_and_refuses_fakes() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDir::open(dir.path()).unwrap();
        let task = LinearTask::new(LinearTaskConfig::default(), 4, 2, 3);
        let n = task.init().len();
        let original: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
        let shifted = |s: f32| -> Vec<f32> { original.iter().map(|x| x + s).collect() };
        let check = |e: &Evidence, k: u32| {
            let h = put(&store, e);
            verify(
                (&task, &Shards::none(task.layout())),
                &store,
                h,
                1,
                k,
                (4, &[]),
                task.dataset_commitment(k).0,
            )
        };
        let mut accepted = 0;
        for i in 0..10u32 {
            let k = i % 4;
            let e = evidence(&task, &store, &original, &shifted(0.01 * (i + 1) as f32), k);
            check(&e, k).unwrap_or_else(|why| panic!("honest evidence {i} refused: {why}"));
            accepted += 1;
        }
        assert_eq!(accepted, 10);

        let honest = evidence(&task, &store, &original, &shifted(0.05), 1);
        let mut fakes: Vec<(&str, Evidence)> = Vec::new();
        fakes.push((
            "the model unchanged",
            evidence(&task, &store, &original, &original, 1),
        ));
        // The original's parameters under another hash: the same safetensors with eight more
        // bytes of header padding.
        let blob = task.layout().encode(&original);
        let len = u64::from_le_bytes(blob[..8].try_into().unwrap()) as usize;
        let mut padded = Vec::new();
        padded.extend_from_slice(&(len as u64 + 8).to_le_bytes());
        padded.extend_from_slice(&blob[8..8 + len]);
        padded.extend_from_slice(b"        ");
        padded.extend_from_slice(&blob[8 + len..]);
        let relabelled = store.put(&padded).unwrap();
        assert_ne!(relabelled, honest.original_model);
        let mut e = honest.clone();
        e.model = relabelled;
        e.unlearned = measure(&task, &original, 1, &[0, 1, 2, 3]).unwrap();
        fakes.push(("the original relabelled", e));
        let mut e = honest.clone();
        e.unlearned.forget.loss += 1.0;
        fakes.push(("a higher forget loss claimed", e));
        let mut e = honest.clone();
        e.unlearned.mia_auc_loss = Some(0.5);
        fakes.push(("a chance-level MIA AUC claimed", e));
        let mut e = honest.clone();
        e.unlearned = measure(&task, &shifted(0.2), 1, &[0, 1, 2, 3]).unwrap();
        fakes.push(("another model's measures", e));
        let mut e = honest.clone();
        e.oracle = Some(e.original.clone());
        fakes.push(("the original's measures as the oracle's", e));
        let mut e = honest.clone();
        e.forget_set = task.dataset_commitment(2).0;
        fakes.push(("another client's forget set", e));
        let mut e = honest.clone();
        e.request = 2;
        fakes.push(("another request's evidence", e));
        let mut e = honest.clone();
        e.model = sha256(b"a model nobody stored");
        fakes.push(("a model that is not in the store", e));
        let mut e = honest.clone();
        e.unlearned.retain.loss *= 0.5;
        fakes.push(("the retain loss halved", e));
        // A retain set that leaves out a client the run never forgot (its measures computed
        // so, honestly for that set).
        let mut e = honest.clone();
        e.forgotten_before = vec![2];
        for (m, params) in [
            (&mut e.original, &original),
            (&mut e.unlearned, &shifted(0.05)),
        ] {
            *m = measure(&task, params, 1, &[0, 3]).unwrap();
        }
        e.oracle = Some(e.unlearned.clone());
        fakes.push((
            "a client that was not forgotten left out of the retain set",
            e,
        ));
        assert_eq!(fakes.len(), 11);
        for (what, e) in &fakes {
            match check(e, 1) {
                Ok(()) => panic!("{what}: accepted"),
                Err(why) => eprintln!("{what}: refused: {why}"),
            }
        }
    }

    /// A shards execution may change the forgotten client's shard only: one that changes
    /// another shard's slice is refused, and so is a shards execution of an unsharded run.
    #[test]
    fn a_shards_execution_changes_only_the_clients_shard() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDir::open(dir.path()).unwrap();
        let task = LinearTask::new(LinearTaskConfig::default(), 4, 2, 3);
        let shards = Shards::new(2, task.layout()).unwrap();
        let n = task.init().len();
        let original: Vec<f32> = (0..2 * n).map(|i| (i as f32 * 0.37).sin()).collect();
        // Client 1 is in shard 1.
        let with = |shard: u32| {
            let mut m = original.clone();
            for x in shards.slice_mut(&mut m, shard) {
                *x += 0.05;
            }
            m
        };
        let evidence = |model: &[f32]| {
            let layout = shards.layout();
            let model_hash = store.put(&layout.encode(model)).unwrap();
            let m = |p: &[f32]| measure(&task, &shards.served(p), 1, &[0, 2, 3]).unwrap();
            Evidence {
                format: EVIDENCE_FORMAT.into(),
                request: 1,
                client: "client-1".into(),
                dataset: B256::ZERO,
                method: "shards".into(),
                forget_set: task.dataset_commitment(1).0,
                original_model: store.put(&layout.encode(&original)).unwrap(),
                model: model_hash,
                oracle_model: None,
                settings: None,
                fed_eraser: None,
                forgotten_before: Vec::new(),
                original: m(&original),
                unlearned: m(model),
                oracle: None,
            }
        };
        let check = |e: &Evidence, shards: &Shards| {
            let h = put(&store, e);
            verify(
                (&task, shards),
                &store,
                h,
                1,
                1,
                (4, &[]),
                task.dataset_commitment(1).0,
            )
        };
        check(&evidence(&with(1)), &shards).unwrap();
        let why = check(&evidence(&with(0)), &shards).unwrap_err();
        assert!(why.contains("changed shard 0"), "{why}");
        let why = check(&evidence(&with(1)), &Shards::none(task.layout())).unwrap_err();
        assert!(!why.is_empty());
    }
}
