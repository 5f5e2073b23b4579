//! `cohort run CONFIG.toml --out DIR`: a whole federated experiment on the embedded ledger
//! (or, built with `--features evm-rpc`, on an EVM chain with `--chain-rpc URL`).
//!
//! Before any work: the config is parsed and checked field by field
//! ([`cohort_fl::config`]), the files it names are looked up, `--reference` is parsed, and
//! `--out DIR` is claimed with an advisory lock (`DIR/run.lock`, held by this process until
//! it ends, however it ends: a killed run leaves no stale claim). A run that fails during its
//! set-up leaves DIR as it found it. A run that is killed, or stops with an error part-way,
//! keeps its settled rounds (the ledger is flushed once per round, and what the runtime needs
//! to go on is saved beside it in `DIR/state/`); `--resume` continues it and ends at the same
//! ledger root as a run that was never interrupted.
//!
//! ```text
//! DIR/run.json       the effective config, the key mode and the ledger's origin
//! DIR/run.lock       the claim (flock)
//! DIR/keys/          operator.key (and run.key with --random-keys), mode 0600: never handed out
//! DIR/ledger/        the embedded ledger, what an auditor receives
//! DIR/state/         the saved state of the last settled round (resume::SavedRound)
//! DIR/blobs/         every update and global model, content-addressed safetensors
//! DIR/summary.json   written last, when the run is finished
//! DIR/report.html
//! ```

use std::fs;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use cohort_core::{Identity, sha256_parts};
use cohort_fl::config::{RunConfig, ValidConfig};
use cohort_ledger::{EmbeddedLedger, LedgerBackend, LedgerConfig, Protocol};
use cohort_node::resume;
use cohort_node::runtime::{Keys, RoundSummary, RunOptions, RunSummary, run_in_process};
use cohort_node::summary::RunSummaryBuilder;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use crate::args::{check_output_file, int_in};
use crate::output::{Table, print_json};
use cohort_fl::events::RunEvent;

/// Run a federated experiment: identities and stakes, dataset commitments, R rounds of local
/// training, validator scoring with commit-reveal, robust aggregation, rewards and slashes,
/// all recorded on an embedded ledger in DIR/ledger. Writes DIR/summary.json and update blobs
/// in DIR/blobs; a killed run continues with --resume.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The run's configuration (TOML; see examples/ and examples/README.md for every field's
    /// range).
    pub(crate) config: PathBuf,
    /// Output directory: created if missing; must not hold another run (unless --resume).
    #[arg(long)]
    out: PathBuf,
    /// Override the config's seed (any 64-bit number).
    #[arg(long, value_parser = int_in(0..=u64::MAX))]
    pub(crate) seed: Option<u64>,
    /// Override one config value, after the file: a dotted key and a TOML value, e.g.
    /// `attack.fraction=0` (a clean run), `aggregation.strategy={kind="fed-avg"}`,
    /// `attack.attack={kind="sign-flip",scale=3.0}`, `task.preset=test` (a bare word is a
    /// string). Repeatable; applied in order. The effective config is in DIR/run.json and
    /// DIR/summary.json.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub(crate) set: Vec<String>,
    /// Print the summary as JSON instead of tables (progress goes to stderr).
    #[arg(long)]
    json: bool,
    /// A reference run's summary.json (a clean run, say) to draw beside this one in the
    /// report; read before the run starts.
    #[arg(long, value_name = "SUMMARY")]
    reference: Option<PathBuf>,
    /// Continue the run in DIR from its last settled round (after a kill, a power loss or an
    /// error): give the same CONFIG, --set and --seed as when it started. The round that was in
    /// progress runs again from its start; the run ends with the same ledger root as one that
    /// was never interrupted. On a finished run it says so and does nothing, unless
    /// `--set coordinator.rounds=N` raises the rounds (the only change allowed): then the run
    /// goes on for the rounds added, from its last model (after `cohort unlearn`, the
    /// unlearned one, without the forgotten client).
    #[arg(long)]
    pub(crate) resume: bool,
    /// Derive every key from a fresh random secret (DIR/keys/run.key, mode 0600) instead of
    /// the seed that summary.json publishes: the run's ledger then cannot be forged from its
    /// summary, and its root differs from run to run (the model, verdicts and payouts do not).
    #[arg(long, conflicts_with = "resume")]
    pub(crate) random_keys: bool,
    /// Where the update and global-model blobs go (content-addressed, checked on every
    /// read): a directory, or `s3://bucket/prefix` for S3-compatible storage shared by
    /// parties on many machines, configured by the usual `AWS_*` variables
    /// (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`; see
    /// docs/blobs.md). Default: DIR/blobs.
    #[arg(long, value_name = "LOCATION")]
    pub(crate) blobs: Option<String>,
    /// Write every event of the run (set-up, round opened, update received and validated,
    /// commitment, reveal, consensus, aggregate, settlement in base units, test metrics,
    /// holdings in base units, checkpoint, resumed, finished) to FILE as JSON lines, one object
    /// per event tagged by "event", flushed as it happens; a resumed run appends. summary.json's
    /// `summary` and report.html are these events folded (cohort_node::summary). See
    /// docs/fl.md.
    #[arg(long, value_name = "FILE")]
    events: Option<PathBuf>,
    /// How the coordinator reaches the clients and validators: `in-process` (queues in one
    /// process) or `grpc` (each party with its own authenticated gRPC session over loopback
    /// TLS, trusting a CA made in memory for the run, as separate `cohort client`/`cohort validator` processes would have; the same parties,
    /// keys and ledger, for side-by-side comparison). The phase timeouts are then wall-clock
    /// deadlines; a run whose parties all answer in time records the same ledger root.
    #[arg(long, value_enum, default_value_t = TransportKind::InProcess)]
    pub(crate) transport: TransportKind,
    /// Set by `cohort coordinator`: the parties are processes of their own that dial in.
    #[arg(skip)]
    pub(crate) network: std::sync::Mutex<Option<super::federation::Network>>,
    /// Check the config, the files it names, --reference and DIR as a run would, print the
    /// effective config, and stop: nothing is created or written.
    #[arg(long)]
    pub(crate) check: bool,
    /// Run on an EVM chain at this JSON-RPC URL (http://) instead of the embedded ledger: the
    /// protocol is deployed there and every registration, stake, update, score and payout is
    /// a transaction on that chain. The chain must let the run set block time
    /// (`evm_setNextBlockTimestamp`: anvil, hardhat). DIR/summary.json then also holds the
    /// chain id, the contract address and every transaction hash, block and gas, and
    /// DIR/report.html names the chain in place of the ledger check; there is no DIR/ledger.
    #[cfg(feature = "evm-rpc")]
    #[arg(long, value_name = "URL", conflicts_with = "resume")]
    chain_rpc: Option<String>,
    /// Hex private key of an account that pays the participants' gas on that chain (for
    /// anvil, its first default account).
    #[cfg(feature = "evm-rpc")]
    #[arg(
        long,
        env = "COHORT_FUNDER_KEY",
        requires = "chain_rpc",
        hide_env_values = true
    )]
    funder_key: Option<String>,
}

/// How `cohort run` reaches its parties.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TransportKind {
    /// In one process, through queues.
    InProcess,
    /// Over loopback gRPC, one session per party.
    Grpc,
}

/// Writes DIR/provenance.jsonl: one [`ProvenanceRecord`] per recorded update, round by
/// round (`cohort provenance DIR` checks it against the ledger and the blob store).
fn write_provenance(dir: &Path, summary: &RunSummary) -> anyhow::Result<()> {
    let mut text = String::new();
    for r in &summary.rounds {
        for p in &r.provenance {
            text.push_str(&serde_json::to_string(p)?);
            text.push('\n');
        }
    }
    write_atomic(&dir.join("provenance.jsonl"), text.as_bytes())
}

/// The format of DIR/run.json.
const RUN_FORMAT: &str = "cohort-run/1";
const LOCK_FILE: &str = "run.lock";
/// When the embedded ledger starts (2026-01-01).
const START_TIME: u64 = 1_767_225_600;

/// What summary.json and the CLI say about seed-derived keys.
const SEEDED_NOTE: &str = "seed-derived keys: every key of this run (the ledger operator's, \
    the governance's, the coordinator's, every client's and validator's) derives from the seed \
    this summary publishes, so anyone holding it can re-derive them and sign another ledger for \
    this run. This is a reproducible experiment (the same config and seed give the same ledger \
    root), not a secured one; run with --random-keys for a ledger that cannot be forged from \
    its summary.";
/// What summary.json and the CLI say about random keys.
const RANDOM_NOTE: &str = "random keys: every key of this run derives from a secret kept in \
    DIR/keys/run.key (mode 0600) and published nowhere, so the ledger cannot be forged from this \
    summary. The ledger root differs from run to run: another run of the same config and seed \
    trains the same model with the same verdicts and payouts under other keys.";

/// Reads a run configuration, applies `--seed` and the `KEY=VALUE` overrides in order (see
/// `--set`) and checks the result field by field ([`RunConfig::check`]). Every error names the
/// field: `invalid task.lr: NaN is not a finite number in (0, 10]`, `invalid task.dim:
/// invalid value: integer `-1`, expected usize`.
/// The directory `config`'s relative paths are read from, once the files `cfg`'s task reads
/// there have been checked (named by the config on error).
pub fn check_task_inputs(cfg: &ValidConfig, config: &Path) -> anyhow::Result<PathBuf> {
    let dir = config.parent().map(Path::to_path_buf).unwrap_or_default();
    cohort_tasks::check_inputs(cfg, &dir).with_context(|| format!("{}", config.display()))?;
    Ok(dir)
}

/// The settings a vote may change in a running run (`cohort gov propose --hyperparams`):
/// how clients train and how updates are weighed and paid, not who takes part or what is
/// learned.
pub const HYPERPARAMETERS: &[&str] = &[
    "task.lr",
    "task.local_steps",
    "coordinator.clients_per_round",
    "incentives.accept_threshold",
    "incentives.reward_per_nat",
    "aggregation.",
];

/// A hyperparameter proposal's settings, adopted by vote.
#[derive(Debug, Clone)]
pub struct Adoption {
    /// The proposal.
    pub proposal: u64,
    /// Its settings, by dotted key.
    pub settings: Vec<(String, toml::Value)>,
}

/// A hyperparameters file's settings by dotted key (`[task] lr = 0.02` is `task.lr`), each one
/// a vote may change ([`HYPERPARAMETERS`]; `aggregation.` for any setting of aggregation).
pub fn hyperparameters(text: &str) -> anyhow::Result<Vec<(String, toml::Value)>> {
    let table: toml::Table = toml::from_str(text).context("not TOML")?;
    let mut out = Vec::new();
    flatten("", &table, &mut out);
    if out.is_empty() {
        bail!("sets nothing");
    }
    for (k, _) in &out {
        let allowed = HYPERPARAMETERS.iter().any(|h| {
            if h.ends_with('.') {
                k.starts_with(h)
            } else {
                k == h
            }
        });
        if !allowed {
            bail!(
                "{k} is not a hyperparameter a vote may change (these are: {})",
                HYPERPARAMETERS
                    .iter()
                    .map(|h| if h.ends_with('.') {
                        format!("{h}*")
                    } else {
                        (*h).to_owned()
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    Ok(out)
}

fn flatten(prefix: &str, t: &toml::Table, out: &mut Vec<(String, toml::Value)>) {
    for (k, v) in t {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            // An inline strategy (`strategy = { kind = ... }`) is one setting.
            toml::Value::Table(inner) if !key.starts_with("aggregation.strategy") => {
                flatten(&key, inner, out)
            }
            other => out.push((key, other.clone())),
        }
    }
}

/// `cfg` with `adoptions`' settings, in order, checked as any config is.
pub fn adopt(cfg: &ValidConfig, adoptions: &[Adoption]) -> anyhow::Result<ValidConfig> {
    let mut table = toml::Table::try_from(cfg.config()).context("the run's config")?;
    // The listings were made under the run's recipe before the adoption: they keep allowing
    // that one (`market.recipe`), and the new one is the owners' to allow.
    if let Some(toml::Value::Table(m)) = table.get_mut("market")
        && !m.contains_key("recipe")
    {
        let recipe = cohort_node::market::recipe_of(cfg.config()).0;
        m.insert("recipe".into(), toml::Value::String(recipe.to_string()));
    }
    for a in adoptions {
        for (key, value) in &a.settings {
            let parts: Vec<&str> = key.split('.').collect();
            let Some((last, path)) = parts.split_last() else {
                continue;
            };
            let mut t = &mut table;
            for p in path {
                let entry = t
                    .entry((*p).to_owned())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                t = match entry {
                    toml::Value::Table(inner) => inner,
                    _ => bail!(
                        "proposal {}: {key} is not a setting of this run",
                        a.proposal
                    ),
                };
            }
            t.insert((*last).to_owned(), value.clone());
        }
    }
    let what = format!(
        "the hyperparameters adopted by proposal(s) {}",
        adoptions
            .iter()
            .map(|a| a.proposal.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let cfg = parse_config(&table).with_context(|| what.clone())?;
    cfg.check().with_context(|| what)
}

pub fn load_config(
    path: &Path,
    overrides: &[String],
    seed: Option<u64>,
) -> anyhow::Result<ValidConfig> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut table: toml::Table = toml::from_str(&text)
        .with_context(|| format!("{} is not a valid run config", path.display()))?;
    for o in overrides {
        apply_override(&mut table, o).with_context(|| format!("--set {o}"))?;
    }
    let what = path.display().to_string();
    if let Some(s) = seed {
        // Any u64, also those TOML's integers (i64) cannot hold.
        table.insert("seed".into(), toml::Value::Integer(0));
        let mut cfg = parse_config(&table).with_context(|| what.clone())?;
        cfg.seed = s;
        return cfg.check().with_context(|| what);
    }
    let cfg = parse_config(&table).with_context(|| what.clone())?;
    cfg.check().with_context(|| what)
}

/// The table as a [`RunConfig`]; a deserialization error names the field it is about (its
/// dotted path). toml names it, except inside a tagged section (`task`,
/// `aggregation.strategy`, `attack.attack`), whose contents serde reads as a whole: there the
/// field is the leaf of that section whose removal changes the error.
fn parse_config(table: &toml::Table) -> anyhow::Result<RunConfig> {
    let de = |t: &toml::Table| toml::Value::Table(t.clone()).try_into::<RunConfig>();
    let err = match de(table) {
        Ok(cfg) => return Ok(cfg),
        Err(e) => e,
    };
    let message = err.message().trim().to_owned();
    let shown = err.to_string();
    let section = shown
        .lines()
        .find_map(|l| l.trim().strip_prefix("in `")?.strip_suffix('`'))
        .map(str::to_owned);
    // A missing field is no leaf to take out.
    if message.starts_with("missing field") {
        bail!(
            "invalid {}: {message}",
            section.as_deref().unwrap_or("config")
        );
    }
    let mut leaves = Vec::new();
    collect_leaves(table, "", &mut leaves);
    let within = |leaf: &str| {
        section
            .as_deref()
            .is_none_or(|s| leaf == s || leaf.starts_with(&format!("{s}.")))
    };
    leaves.retain(|l| within(l));
    // The tags (`kind`) last: taking one out always changes the error.
    leaves.sort_by_key(|l| l.rsplit('.').next() == Some("kind"));
    for leaf in &leaves {
        let mut t = table.clone();
        remove_leaf(&mut t, leaf);
        let changed = match de(&t) {
            Ok(_) => true,
            Err(e) => e.message().trim() != message,
        };
        if changed {
            bail!("invalid {leaf}: {message}");
        }
    }
    match section {
        Some(s) => bail!("invalid {s}: {message}"),
        None => bail!("invalid config: {message}"),
    }
}

/// The dotted paths of every value that is not a table.
fn collect_leaves(t: &toml::Table, prefix: &str, out: &mut Vec<String>) {
    for (k, v) in t {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(inner) => collect_leaves(inner, &path, out),
            _ => out.push(path),
        }
    }
}

fn remove_leaf(t: &mut toml::Table, path: &str) {
    match path.split_once('.') {
        None => {
            t.remove(path);
        }
        Some((head, rest)) => {
            if let Some(toml::Value::Table(inner)) = t.get_mut(head) {
                remove_leaf(inner, rest);
            }
        }
    }
}

/// Sets the dotted `KEY` of `table` to `VALUE` (a TOML value; anything that does not parse as
/// one is taken as a string), creating the tables on the way.
fn apply_override(table: &mut toml::Table, o: &str) -> anyhow::Result<()> {
    let Some((key, value)) = o.split_once('=') else {
        bail!("expected KEY=VALUE");
    };
    let value = match toml::from_str::<toml::Table>(&format!("v = {value}")) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(value.to_owned())),
        Err(_) => toml::Value::String(value.trim().to_owned()),
    };
    let parts: Vec<&str> = key.trim().split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        bail!("the key {key:?} has an empty part");
    }
    let (last, path) = parts.split_last().context("empty key")?;
    let mut t = table;
    for (i, p) in path.iter().enumerate() {
        let entry = t
            .entry((*p).to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        t = match entry {
            toml::Value::Table(inner) => inner,
            other => bail!(
                "{} is a {}, not a table",
                parts[..=i].join("."),
                other.type_str()
            ),
        };
    }
    t.insert((*last).to_owned(), value);
    Ok(())
}

/// What DIR holds, read without changing anything.
#[derive(Debug)]
enum Found {
    /// Nothing of a run (DIR may not exist, or holds other files).
    Nothing,
    /// A run: its DIR/run.json, and whether it finished.
    Run { record: Value, finished: bool },
    /// A run without DIR/run.json (made by an older cohort, or by hand).
    Foreign,
}

fn inspect(dir: &Path) -> anyhow::Result<Found> {
    if dir.exists() && !dir.is_dir() {
        bail!("--out {}: is not a directory", dir.display());
    }
    let record = dir.join("run.json");
    if record.is_file() {
        let text =
            fs::read_to_string(&record).with_context(|| format!("reading {}", record.display()))?;
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a cohort run record", record.display()))?;
        if v["format"] != RUN_FORMAT {
            bail!(
                "{} has format {}, this cohort reads {RUN_FORMAT}",
                record.display(),
                v["format"]
            );
        }
        let finished = dir.join("summary.json").is_file();
        return Ok(Found::Run {
            record: v,
            finished,
        });
    }
    if dir.join("ledger").exists() || dir.join("summary.json").exists() {
        return Ok(Found::Foreign);
    }
    Ok(Found::Nothing)
}

/// `--out DIR` held by this process: an exclusive `flock` on DIR/run.lock, which the kernel
/// releases when the process ends, however it ends (a killed run leaves no stale claim).
#[derive(Debug)]
struct Claim {
    dir: PathBuf,
    /// Kept open: the lock lives as long as the file handle.
    _lock: fs::File,
    /// The topmost directory this claim created (DIR or an ancestor), if any.
    created: Option<PathBuf>,
    /// What DIR held before (what a failed set-up leaves).
    before: Vec<std::ffi::OsString>,
}

impl Claim {
    fn take(dir: &Path) -> anyhow::Result<Self> {
        let created = create_dir_tracked(dir)?;
        let mut before: Vec<_> = fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        before.sort();
        let path = dir.join(LOCK_FILE);
        loop {
            let f = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .with_context(|| format!("--out {}: cannot be written", dir.display()))?;
            match f.try_lock() {
                Ok(()) => {}
                Err(fs::TryLockError::WouldBlock) => {
                    let pid = fs::read_to_string(&path).unwrap_or_default();
                    bail!(
                        "{} is in use by another `cohort run` (pid {}): wait for it to end, or \
                         choose another --out",
                        dir.display(),
                        pid.trim()
                    );
                }
                Err(fs::TryLockError::Error(e)) => {
                    return Err(e).with_context(|| format!("locking {}", path.display()));
                }
            }
            // A run that gave up its claim removes the lock file: if that happened between
            // our open and our lock, the file we hold is no longer DIR's; take the new one.
            if same_file(&f, &path) {
                f.set_len(0)
                    .and_then(|()| {
                        use std::io::Write as _;
                        (&f).write_all(std::process::id().to_string().as_bytes())
                    })
                    .with_context(|| format!("writing {}", path.display()))?;
                return Ok(Self {
                    dir: dir.to_path_buf(),
                    _lock: f,
                    created,
                    before,
                });
            }
        }
    }

    /// Puts DIR back as it was before the claim (everything the run made there is removed)
    /// and gives the claim up: for a run that failed during its set-up.
    fn undo(self) {
        if let Some(top) = &self.created {
            let _ = fs::remove_dir_all(top);
            return;
        }
        if let Ok(entries) = fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                let name = e.file_name();
                if self.before.binary_search(&name).is_ok() || name == LOCK_FILE {
                    continue;
                }
                let p = e.path();
                let _ = if p.is_dir() {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
            }
        }
        // The lock file last, while it is still held.
        if self.before.binary_search(&LOCK_FILE.into()).is_err() {
            let _ = fs::remove_file(self.dir.join(LOCK_FILE));
        }
    }
}

#[cfg(unix)]
fn same_file(f: &fs::File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (f.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_: &fs::File, path: &Path) -> bool {
    path.exists()
}

/// Creates `dir` and its missing ancestors; returns the topmost one it created.
fn create_dir_tracked(dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    if dir.is_dir() {
        return Ok(None);
    }
    let mut top = dir.to_path_buf();
    while let Some(parent) = top.parent() {
        if parent.as_os_str().is_empty() || parent.exists() {
            break;
        }
        top = parent.to_path_buf();
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(Some(top))
}

/// Writes `bytes` to `path` whole or not at all (a temporary file, synced, renamed).
fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("partial");
    let write = || -> std::io::Result<()> {
        use std::io::Write as _;
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().with_context(|| format!("writing {}", path.display()))
}

/// Writes a secret file (mode 0600), failing if it exists.
fn write_secret(path: &Path, hex_secret: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    writeln!(f, "{hex_secret}")
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// Creates DIR/keys (mode 0700).
fn create_keys_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    let keys = dir.join("keys");
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(&keys)
        .with_context(|| format!("creating {}", keys.display()))?;
    Ok(keys)
}

/// The run's checkpoint origin: its own per config and keys, `cohort.local/run/<16 hex>`.
fn origin_of(cfg: &ValidConfig, operator: &Identity) -> String {
    let cfg_json = serde_json::to_vec(cfg).unwrap_or_default();
    let h = sha256_parts(&[b"cohort-run-origin-v1", &cfg_json, &operator.public_key()]);
    format!("cohort.local/run/{}", &h.to_hex()[..16])
}

/// The config fields that differ between `a` (the run in DIR) and `b` (this command's), as
/// `path: A there, B here`.
fn differences(a: &Value, b: &Value, prefix: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                differences(
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    &path,
                    out,
                );
            }
        }
        _ if a == b => {}
        _ => out.push(format!("{prefix}: {a} there, {b} here")),
    }
}

/// How the run shows its progress: a bar on a terminal, a line per round elsewhere.
/// Progress on stderr: a bar on a terminal, one line per round otherwise. The per-round line
/// is printed from the run's events ([`Progress::round_lines`]), like summary.json.
struct Progress {
    bar: Option<ProgressBar>,
    rounds: u64,
}

impl Progress {
    fn new(rounds: u64, json: bool) -> Self {
        let tty = std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
        let bar = (tty && !json).then(|| {
            let bar = ProgressBar::new(rounds).with_style(
                ProgressStyle::with_template("round {pos}/{len} {bar:30} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.enable_steady_tick(std::time::Duration::from_millis(500));
            bar
        });
        Self { bar, rounds }
    }

    /// A step outside the rounds (the set-up).
    fn say(&self, msg: &str) {
        match &self.bar {
            Some(b) => b.set_message(msg.to_owned()),
            None => eprintln!("{msg}"),
        }
    }

    fn resumed(&self, done: u64) {
        if let Some(b) = &self.bar {
            b.set_position(done);
        }
    }

    /// The event sink that prints each round's line when the round is checkpointed, from the
    /// round's summary as [`RunSummaryBuilder`] folds it from the events (the fold that makes
    /// summary.json).
    fn round_lines(&self, validators: u32) -> impl FnMut(&RunEvent) + 'static {
        let bar = self.bar.clone();
        let rounds = self.rounds;
        let mut fold = RunSummaryBuilder::new(validators);
        let mut last = Instant::now();
        move |e: &RunEvent| {
            if let Some(r) = fold.apply(e) {
                print_round(bar.as_ref(), rounds, r, last.elapsed().as_secs_f64());
                last = Instant::now();
            }
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Args {
    /// Whether the run goes to an EVM chain (`--chain-rpc`).
    pub(crate) fn on_a_chain(&self) -> bool {
        #[cfg(feature = "evm-rpc")]
        return self.chain_rpc.is_some();
        #[cfg(not(feature = "evm-rpc"))]
        false
    }

    pub fn execute(self) -> anyhow::Result<ExitCode> {
        // Log lines (the gRPC sessions of --transport grpc, the chain's calls) when asked for.
        if std::env::var_os("COHORT_LOG").is_some() {
            super::federation::init_logging();
        }
        // Everything that can be refused is refused here, before DIR is touched.
        let mut cfg = load_config(&self.config, &self.set, self.seed)?;
        check_task_inputs(&cfg, &self.config)?;
        let reference = self.reference()?;
        let mut adopted: Vec<Adoption> = Vec::new();
        if let Some(path) = &self.events {
            check_output_file(path, "--events")?;
        }
        if let Some(spec) = &self.blobs {
            // An S3 location is checked now (its form, credentials, bucket, endpoint); a
            // directory only by its form, so that --check creates nothing.
            if spec.starts_with("s3://") {
                cohort_blob::open(spec).context("--blobs")?;
            } else if spec.contains("://") && !spec.starts_with("file://") || spec.trim().is_empty()
            {
                cohort_blob::open_existing(spec).context("--blobs")?;
            }
        }
        let networked = self
            .network
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some();
        if cfg.report.collaboration_gain && (networked || self.on_a_chain()) {
            bail!(
                "report.collaboration_gain: measured by runs whose parties are in this process \
                 on the embedded ledger (it trains each client alone on its own data, which a \
                 networked coordinator does not hold); set it to false here"
            );
        }
        #[cfg(feature = "evm-rpc")]
        if let Some(url) = &self.chain_rpc {
            if self.check {
                return self.print_check(&cfg, "the run would go to the chain at its URL");
            }
            return self.on_chain(&cfg, url, reference.as_ref());
        }
        let found = inspect(&self.out)?;
        // The rounds a finished (or stopped) run had before --set coordinator.rounds raised
        // them: it is extended.
        let mut extend = None;
        let plan = match (&found, self.resume) {
            (Found::Foreign, _) => bail!(
                "{} already holds a run without a run record (DIR/run.json; made by an older \
                 cohort?): it cannot be continued; choose another --out",
                self.out.display()
            ),
            (Found::Run { finished, .. }, false) => {
                if *finished {
                    bail!(
                        "{} already holds a run (finished: {}); choose another --out",
                        self.out.display(),
                        self.out.join("summary.json").display()
                    );
                }
                bail!(
                    "{} already holds a run (not finished); `--resume` continues it, or choose \
                     another --out",
                    self.out.display()
                );
            }
            (Found::Nothing, true) => bail!(
                "{} holds no run to resume (no run.json there); drop --resume to start one",
                self.out.display()
            ),
            (Found::Nothing, false) => "start a new run",
            (Found::Run { record, finished }, true) => {
                // Hyperparameters the run's members adopted by vote (`[governance]`): those
                // adopted before apply to the config given, those executed since are adopted
                // now, from the next round on (when the run goes on).
                let (given, pending) = self.adoptions(record, &cfg)?;
                extend = self.check_same_config(record, &given)?;
                if !pending.is_empty() && (extend.is_some() || !*finished) {
                    cfg = adopt(&given, &pending)?;
                    adopted = pending;
                } else {
                    cfg = given;
                }
                match (extend, *finished) {
                    (Some(_), _) => "continue the run for the rounds the config adds",
                    (None, true) => "say that the run is finished",
                    (None, false) => "continue the run from its last settled round",
                }
            }
        };
        if self.check {
            return self.print_check(&cfg, plan);
        }
        let found = match found {
            Found::Run { record, finished } if !adopted.is_empty() => Found::Run {
                record: self.record_adoptions(&record, &cfg, &adopted)?,
                finished,
            },
            other => other,
        };
        match found {
            Found::Run { record, .. } if extend.is_some() => {
                let claim = Claim::take(&self.out)?;
                let record = self.extend(&record, &cfg, extend.unwrap_or_default())?;
                self.continue_run(claim, &cfg, &record, reference.as_ref())
            }
            Found::Run {
                finished: true,
                record,
            } => {
                let summary = self.out.join("summary.json");
                let network = self
                    .network
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .take();
                if let Some(net) = network {
                    // A coordinator stopped after its run was over but before every party
                    // heard so: the parties still dialling are told now.
                    let origin = record["origin"].as_str().unwrap_or_default().to_owned();
                    let addr = net.addr()?;
                    eprintln!(
                        "{}: the run is finished; listening on {addr} for up to {} s to tell \
                         the parties that dial in",
                        self.out.display(),
                        cohort_net::run::LINGER.as_secs()
                    );
                    cohort_net::run::tell_finished(
                        net.into_listen(&origin),
                        cohort_net::run::LINGER,
                    )
                    .context("serving the finished run")?;
                }
                if self.json {
                    print_json(&json!({ "finished": true, "summary": summary }))?;
                } else {
                    outln!(
                        "{}: the run is finished; nothing to resume (its results: {})",
                        self.out.display(),
                        summary.display()
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
            Found::Run { record, .. } => {
                let claim = Claim::take(&self.out)?;
                self.continue_run(claim, &cfg, &record, reference.as_ref())
            }
            _ => {
                let claim = Claim::take(&self.out)?;
                self.start_run(claim, &cfg, reference.as_ref())
            }
        }
    }

    /// The config given with the hyperparameters the run adopted before applied (what
    /// run.json holds, if the run is the same), and the hyperparameter proposals its
    /// governance executed since, not adopted yet, with their files: none for a run without
    /// `[governance]` or without a ledger of its own.
    fn adoptions(
        &self,
        record: &Value,
        cfg: &ValidConfig,
    ) -> anyhow::Result<(ValidConfig, Vec<Adoption>)> {
        let ledger = self.out.join("ledger");
        if cfg.governance.is_none() || !ledger.join("ledger.redb").exists() {
            return Ok((cfg.clone(), Vec::new()));
        }
        let done: Vec<u64> = record["adopted_hyperparameters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_u64)
            .collect();
        let state = cohort_ledger::LedgerReader::open(&ledger)
            .and_then(|r| r.replay())
            .with_context(|| format!("reading {}", ledger.display()))?;
        let p = super::stage::protocol_on(
            Box::new(state) as Box<dyn cohort_ledger::LedgerBackend>,
            &ledger.display().to_string(),
        )?;
        let run = super::gov::run_address(&p, None)?;
        let store = self.blob_store()?;
        let mut before = Vec::new();
        let mut pending = Vec::new();
        for e in super::gov::all_events(&p)? {
            let cohort_ledger::protocol::Cohort::CohortEvents::ProposalExecuted(x) = e else {
                continue;
            };
            if x.run != run || x.kind != cohort_ledger::runs::kind::HYPERPARAMS {
                continue;
            }
            let hash = cohort_core::Hash32(x.payloadHash.0);
            let bytes = store.get(&hash).map_err(|e| {
                anyhow::anyhow!(
                    "proposal {} adopted the hyperparameters with SHA-256 {hash}, which are not \
                     in the run's blob store ({e}): `cohort gov propose --hyperparams FILE` on \
                     the run's directory puts them there",
                    x.proposalId
                )
            })?;
            let what = format!("the hyperparameters of proposal {}", x.proposalId);
            let text = String::from_utf8(bytes).with_context(|| what.clone())?;
            let a = Adoption {
                proposal: x.proposalId,
                settings: hyperparameters(&text).with_context(|| what.clone())?,
            };
            if done.contains(&x.proposalId) {
                before.push(a);
            } else {
                pending.push(a);
            }
        }
        let given = if before.is_empty() {
            cfg.clone()
        } else {
            adopt(cfg, &before)?
        };
        Ok((given, pending))
    }

    /// run.json with `adopted` recorded: the config they make (`cfg`), their proposals, and the
    /// config before them (its saved rounds still resume).
    fn record_adoptions(
        &self,
        record: &Value,
        cfg: &ValidConfig,
        adopted: &[Adoption],
    ) -> anyhow::Result<Value> {
        let mut record = record.clone();
        let mut before: Vec<Value> = record["configs_before_adoptions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        before.push(record["config"].clone());
        record["configs_before_adoptions"] = json!(before);
        let mut done: Vec<Value> = record["adopted_hyperparameters"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        done.extend(adopted.iter().map(|a| json!(a.proposal)));
        record["adopted_hyperparameters"] = json!(done);
        record["config"] = serde_json::to_value(cfg)?;
        write_atomic(
            &self.out.join("run.json"),
            serde_json::to_string_pretty(&record)?.as_bytes(),
        )?;
        for a in adopted {
            eprintln!(
                "{}: adopting the hyperparameters of proposal {} from the next round: {}",
                self.out.display(),
                a.proposal,
                a.settings
                    .iter()
                    .map(|(k, v)| format!("{k} = {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        Ok(record)
    }

    /// `--check`: the effective config and what a run would do.
    fn print_check(&self, cfg: &ValidConfig, plan: &str) -> anyhow::Result<ExitCode> {
        if self.json {
            print_json(&json!({ "config": cfg, "out": self.out, "would": plan }))?;
        } else {
            let text = toml::to_string(cfg.config()).context("printing the config")?;
            outln!("{text}");
            outln!(
                "# {} is valid; a run into {} would {plan}.",
                self.config.display(),
                self.out.display()
            );
        }
        Ok(ExitCode::SUCCESS)
    }

    /// Refuses to continue the run in DIR under another config, naming what differs, except
    /// for more rounds (`--set coordinator.rounds=N` above the run's): then the run's rounds
    /// so far, to extend it from.
    fn check_same_config(&self, record: &Value, cfg: &ValidConfig) -> anyhow::Result<Option<u64>> {
        let now = serde_json::to_value(cfg)?;
        let mut diff = Vec::new();
        let before = record["config"]["coordinator"]["rounds"].as_u64();
        let mut then = record["config"].clone();
        if let (Some(_), Some(r)) = (before, then.pointer_mut("/coordinator/rounds")) {
            *r = json!(cfg.coordinator.rounds);
        }
        differences(&then, &now, "", &mut diff);
        let extend = before.filter(|&b| b != cfg.coordinator.rounds);
        if let Some(b) = extend
            && diff.is_empty()
            && b > cfg.coordinator.rounds
        {
            bail!(
                "the run in {} has {b} rounds; --resume can add rounds \
                 (coordinator.rounds above {b}), not take them away",
                self.out.display()
            );
        }
        if !diff.is_empty() {
            // Named in full, the rounds too: more rounds alone would have been allowed.
            let mut all = Vec::new();
            differences(&record["config"], &now, "", &mut all);
            let diff = all;
            bail!(
                "the run in {} was started with another config ({}): resume it with the \
                 config, --set and --seed it was started with, or choose another --out",
                self.out.display(),
                diff.join("; ")
            );
        }
        Ok(extend)
    }

    /// Extends the run in the claimed DIR from `before` rounds to the config's: DIR/run.json
    /// takes the new config (noting the rounds it had, so that the saved rounds made under the
    /// old one still resume), and a finished run's summary.json is kept as
    /// summary-round-N.json, so that DIR holds an unfinished run until the new rounds are over.
    fn extend(&self, record: &Value, cfg: &ValidConfig, before: u64) -> anyhow::Result<Value> {
        let mut record = record.clone();
        record["config"] = serde_json::to_value(cfg)?;
        let mut from: Vec<Value> = record["extended_from_rounds"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        from.push(json!(before));
        record["extended_from_rounds"] = json!(from);
        let summary = self.out.join("summary.json");
        if summary.is_file() {
            let kept = self.out.join(format!("summary-round-{before}.json"));
            fs::rename(&summary, &kept)
                .with_context(|| format!("moving {} to {}", summary.display(), kept.display()))?;
        }
        write_atomic(
            &self.out.join("run.json"),
            serde_json::to_string_pretty(&record)?.as_bytes(),
        )?;
        eprintln!(
            "{}: extending the run from {before} to {} rounds",
            self.out.display(),
            cfg.coordinator.rounds
        );
        Ok(record)
    }

    /// A new run into the claimed DIR. A failure before the set-up is durable puts DIR back
    /// as it was.
    fn start_run(
        &self,
        claim: Claim,
        cfg: &ValidConfig,
        reference: Option<&RunSummary>,
    ) -> anyhow::Result<ExitCode> {
        let keys = if self.random_keys {
            Keys::Secret(rand::random::<[u8; 32]>())
        } else {
            Keys::Seeded(cfg.seed)
        };
        let operator = keys.identity("ledger-operator");
        let origin = origin_of(cfg, &operator);
        let set_up = || -> anyhow::Result<()> {
            let keys_dir = create_keys_dir(&self.out)?;
            // Left by a start killed before it wrote DIR/run.json: no run uses it.
            let _ = fs::remove_file(keys_dir.join("run.key"));
            if let Keys::Secret(secret) = &keys {
                write_secret(&keys_dir.join("run.key"), &hex::encode(secret))?;
            }
            fs::copy(&self.config, self.out.join("config.toml"))
                .with_context(|| format!("copying the config into {}", self.out.display()))?;
            let record = json!({
                "format": RUN_FORMAT,
                "config_file": self.config,
                "config": cfg,
                "keys": if keys.is_seeded() { "seed-derived" } else { "random" },
                "origin": origin,
                "operator_key": hex::encode(operator.public_key()),
                "resumed_after_rounds": [],
            });
            // Last: from here on DIR holds a run that --resume continues.
            write_atomic(
                &self.out.join("run.json"),
                serde_json::to_string_pretty(&record)?.as_bytes(),
            )
        };
        if let Err(e) = set_up() {
            claim.undo();
            return Err(e);
        }
        let result = self.go(cfg, &keys, &origin, None, reference);
        if result.is_err() && !self.state_dir().exists_saved() {
            // Failed before the set-up was saved: nothing of the run is left.
            claim.undo();
        }
        result
    }

    /// Continues the run in the claimed DIR from its last settled round.
    fn continue_run(
        &self,
        claim: Claim,
        cfg: &ValidConfig,
        record: &Value,
        reference: Option<&RunSummary>,
    ) -> anyhow::Result<ExitCode> {
        let keys = match record["keys"].as_str() {
            Some("random") => {
                let path = self.out.join("keys/run.key");
                let hex_secret = fs::read_to_string(&path).with_context(|| {
                    format!("reading {} (the run's random keys)", path.display())
                })?;
                let secret: cohort_core::Hash32 = hex_secret.trim().parse().map_err(|_| {
                    anyhow::anyhow!("{} is not a 32-byte hex secret", path.display())
                })?;
                Keys::Secret(secret.0)
            }
            _ => Keys::Seeded(cfg.seed),
        };
        let operator = keys.identity("ledger-operator");
        let origin = record["origin"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| origin_of(cfg, &operator));
        let result = self.go(cfg, &keys, &origin, Some(record), reference);
        drop(claim);
        result
    }

    fn state_dir(&self) -> StateDir {
        StateDir(self.out.join("state"))
    }

    /// Opens (or creates) the ledger, finds where to continue from, builds the task and runs.
    fn go(
        &self,
        cfg: &ValidConfig,
        keys: &Keys,
        origin: &str,
        record: Option<&Value>,
        reference: Option<&RunSummary>,
    ) -> anyhow::Result<ExitCode> {
        let started = Instant::now();
        let progress = Progress::new(cfg.coordinator.rounds, self.json);
        let operator = keys.identity("ledger-operator");
        let ledger_dir = self.out.join("ledger");
        let state = self.state_dir();
        let opened = if ledger_dir.join("ledger.redb").is_file() {
            match EmbeddedLedger::open_as(&ledger_dir, operator.clone()) {
                Ok(l) => Some(l),
                // Killed while the ledger was being created: nothing was recorded yet.
                Err(_) if !state.exists_saved() => None,
                Err(e) => {
                    return Err(e).with_context(|| format!("opening {}", ledger_dir.display()));
                }
            }
        } else {
            None
        };
        let mut ledger = if let Some(l) = opened {
            l
        } else {
            // A new run, or one killed before its ledger was made: start from nothing.
            let _ = fs::remove_dir_all(&ledger_dir);
            let key_file = self.out.join("keys/operator.key");
            let _ = fs::remove_file(&key_file);
            EmbeddedLedger::create(
                &ledger_dir,
                LedgerConfig::new(origin, operator)
                    .with_start_time(START_TIME)
                    .with_key_file(key_file),
            )?
        };
        // One disk sync per round (the runtime flushes after settling) instead of one per
        // commit; a crash loses at most the round in progress.
        ledger.set_sync(cohort_ledger::SyncPolicy::OnFlush)?;
        let head = ledger.head()?;
        let resume = resume::load(&state.0, head.size, head.root)?;
        let mut resumed_after: Vec<u64> = record
            .and_then(|r| r["resumed_after_rounds"].as_array())
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        match (&resume, head.size, record) {
            (Some(r), _, Some(_)) => {
                progress.say(&format!(
                    "resuming {} after round {} of {} (ledger: {} entries, root {})",
                    self.out.display(),
                    r.saved.round,
                    cfg.coordinator.rounds,
                    head.size,
                    head.root
                ));
                progress.resumed(r.saved.round);
                resumed_after.push(r.saved.round);
            }
            (Some(_), _, None) => bail!(
                "{}: a new ledger already has saved rounds",
                ledger_dir.display()
            ),
            (None, 0, _) => {
                if record.is_some() {
                    progress.say(&format!(
                        "{}: the run was stopped during its set-up; starting the set-up again",
                        self.out.display()
                    ));
                }
            }
            (None, n, _) => {
                let saved: Vec<String> = resume::list(&state.0)?
                    .iter()
                    .map(|s| {
                        format!(
                            "round {} at {} entries, root {}",
                            s.round, s.ledger_entries, s.ledger_root
                        )
                    })
                    .collect();
                bail!(
                    "cannot resume {}: its ledger holds {n} entries (root {}) and no saved round \
                     in {} matches them (saved: {})",
                    self.out.display(),
                    head.root,
                    state.0.display(),
                    if saved.is_empty() {
                        "none".to_owned()
                    } else {
                        saved.join("; ")
                    }
                );
            }
        }
        if record.is_some() {
            self.record_resume(&resumed_after)?;
        }
        let settled = resume.as_ref().map_or(0, |r| r.saved.round);
        let config_dir = self
            .config
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        // Data files are relative to the config file; a pretrained base model is cached in
        // DIR/base-<hash> (pass it as `base` to reuse it).
        progress.say("set-up: preparing the task (reading data, pretraining a base model)");
        let task = crate::cmd::model::build_task(cfg, &config_dir, &self.out, None, true)
            .context("setting up the task")?;
        let blobs = self.blob_store()?;
        if resume.is_none() {
            let shards = match cfg.unlearning.shards {
                1 => String::new(),
                k => format!(" in {k} shards (each its own slice of the model)"),
            };
            progress.say(&format!(
                "set-up: registering {} clients and {} validators on the ledger, then {} rounds{shards}",
                cfg.clients, cfg.validators, cfg.coordinator.rounds
            ));
        }
        let mut opts = RunOptions::new()
            .with_keys(keys.clone())
            .with_blobs(blobs)
            .with_state(&state.0);
        opts = opts.with_events(self.events_to(&progress, cfg)?);
        if let Some(r) = resume {
            opts = opts.resuming(r);
        }
        let earlier: Vec<u64> = record
            .and_then(|r| r["extended_from_rounds"].as_array())
            .map(|v| v.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        opts = opts.extended_from(cfg.config(), earlier.clone());
        // The configs the run had before it adopted hyperparameters by vote: the rounds saved
        // under them resume too.
        for before in record
            .and_then(|r| r["configs_before_adoptions"].as_array())
            .into_iter()
            .flatten()
        {
            let before: RunConfig = serde_json::from_value(before.clone())
                .context("run.json: a config before an adoption does not read")?;
            let mut rounds = earlier.clone();
            rounds.push(before.coordinator.rounds);
            opts = opts.extended_from(&before, rounds);
        }
        let mut last = settled;
        let run = self.run_parties(
            cfg,
            ledger,
            &*task,
            opts,
            origin,
            "each registers itself when it connects",
            &progress,
            |r| last = r.round,
        )?;
        progress.finish();
        let (p, summary) = match run {
            Ok(x) => x,
            Err(e) if state.exists_saved() => {
                return Err(anyhow::Error::new(e).context(format!(
                    "the run stopped in round {}; {} keeps rounds 1 to {last} (the ledger and \
                     DIR/state end there): fix the cause and continue with `cohort run {} \
                     --out {} --resume` (with the same --set and --seed)",
                    last + 1,
                    self.out.display(),
                    self.config.display(),
                    self.out.display()
                )));
            }
            Err(e) => return Err(anyhow::Error::new(e).context("the run failed during its set-up")),
        };
        let collaboration = match cfg.report.collaboration_gain {
            false => None,
            true => {
                let r = resume::load(&state.0, summary.ledger_entries, summary.ledger_root)?
                    .context("the run's final global model is not in DIR/state")?;
                Some(super::collaboration::measure(
                    cfg,
                    &*task,
                    &r.global,
                    &summary.rounds,
                    |l| progress.say(l),
                )?)
            }
        };
        self.finish(
            cfg,
            keys,
            origin,
            p,
            (summary, collaboration),
            started,
            &resumed_after,
            reference,
        )
    }

    /// Runs `cfg` on `backend` with its parties where this command puts them: the processes
    /// that dial in (`cohort coordinator`: `run_id` names the run in their session proofs,
    /// `joining` says how each joins), tasks behind loopback gRPC (`--transport grpc`) or
    /// this process. The outer error is the listening socket's; the inner one the run's.
    #[allow(clippy::too_many_arguments)]
    fn run_parties<B: LedgerBackend>(
        &self,
        cfg: &ValidConfig,
        backend: B,
        task: &(dyn cohort_fl::learner::Learner + Send + Sync),
        opts: RunOptions,
        run_id: &str,
        joining: &str,
        progress: &Progress,
        on_round: impl FnMut(&RoundSummary),
    ) -> anyhow::Result<Result<(Protocol<B>, RunSummary), cohort_node::runtime::RunError>> {
        let network = self
            .network
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        Ok(match (network, self.transport) {
            (Some(net), _) => {
                let addr = net.addr()?;
                let tls = if net.is_tls() {
                    "TLS"
                } else {
                    "plain text: --insecure"
                };
                let listen = net.into_listen(run_id);
                progress.say(&format!(
                    "listening on {addr} ({tls}) for {} clients and {} validators; {joining}",
                    cfg.clients, cfg.validators,
                ));
                cohort_net::run::run_as_coordinator(cfg, backend, task, opts, listen, on_round)
            }
            (None, TransportKind::InProcess) => run_in_process(cfg, backend, task, opts, on_round),
            (None, TransportKind::Grpc) => {
                // On a chain each party also puts its own transactions on it.
                #[cfg(feature = "evm-rpc")]
                let chain: Option<std::sync::Arc<dyn cohort_ledger::ChainSubmit>> =
                    match &self.chain_rpc {
                        Some(url) => Some(std::sync::Arc::new(
                            cohort_ledger::ChainSubmitter::connect(url)
                                .context("--chain-rpc: the parties' own connection")?,
                        )),
                        None => None,
                    };
                #[cfg(not(feature = "evm-rpc"))]
                let chain = None;
                cohort_net::run::run_over_loopback(cfg, backend, task, opts, chain, on_round)
            }
        })
    }

    /// Notes in DIR/run.json after which rounds the run was resumed.
    fn record_resume(&self, resumed_after: &[u64]) -> anyhow::Result<()> {
        let path = self.out.join("run.json");
        let mut v: Value = serde_json::from_str(
            &fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
        )?;
        v["resumed_after_rounds"] = json!(resumed_after);
        write_atomic(&path, serde_json::to_string_pretty(&v)?.as_bytes())
    }

    /// Verifies the ledger, writes the report and, last, summary.json; prints the summary.
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        cfg: &ValidConfig,
        keys: &Keys,
        origin: &str,
        p: Protocol<EmbeddedLedger>,
        (summary, collaboration): (RunSummary, Option<super::collaboration::Collaboration>),
        started: Instant,
        resumed_after: &[u64],
        reference: Option<&RunSummary>,
    ) -> anyhow::Result<ExitCode> {
        let ledger = p.into_backend();
        let verified = ledger.verify().context("verifying the run's ledger")?;
        let operator_key = hex::encode(ledger.operator_key());
        drop(ledger);
        let wall = started.elapsed().as_secs_f64();
        let key_record = json!({
            "mode": if keys.is_seeded() { "seed-derived" } else { "random" },
            "note": if keys.is_seeded() { SEEDED_NOTE } else { RANDOM_NOTE },
            "origin": origin,
            "operator_key": operator_key,
        });
        let report = crate::report::write(
            &self.out,
            cfg,
            &summary,
            crate::report::Record::Embedded(&verified),
            reference,
            &self.report_info(wall, keys),
        )?;
        let mut doc = json!({
            "schema": cohort_node::summary::SCHEMA_VERSION,
            "config": cfg,
            "summary": summary,
            "verify": verified,
            "keys": key_record,
            "resumed_after_rounds": resumed_after,
            "wall_seconds": wall,
        });
        if let Some(c) = &collaboration {
            doc["collaboration"] = json!(c);
        }
        write_provenance(&self.out, &summary)?;
        // Written last: its presence says that the run is finished.
        write_atomic(
            &self.out.join("summary.json"),
            (serde_json::to_string_pretty(&doc)? + "\n").as_bytes(),
        )?;
        if self.json {
            let mut v = json!({
                "summary": summary,
                "verify": verified,
                "keys": key_record,
                "resumed_after_rounds": resumed_after,
                "wall_seconds": wall,
            });
            if let Some(c) = &collaboration {
                v["collaboration"] = json!(c);
            }
            print_json(&v)?;
        } else {
            print_human(&summary, cfg);
            for (party, why) in &summary.absent {
                outln!("sat out {party}: {why}");
            }
            for (party, why) in &summary.set_aside {
                outln!("{party} took part without it: {why}");
            }
            if let Some(c) = &collaboration {
                outln!();
                for l in super::collaboration::lines(c) {
                    outln!("{l}");
                }
            }
            outln!(
                "\nledger {}: {} entries verified, root {}, origin {origin}",
                self.out.join("ledger").display(),
                verified.entries,
                verified.root
            );
            if keys.is_seeded() {
                outln!(
                    "keys    seed-derived: anyone holding summary.json can re-derive them and \
                     forge this ledger (a reproducible experiment, not a secured one; \
                     --random-keys for one that cannot be forged)"
                );
            } else {
                outln!(
                    "keys    random, in {} (mode 0600; not in the ledger directory): the ledger \
                     cannot be forged from the summary; its root differs from run to run",
                    self.out.join("keys").display()
                );
            }
            if !resumed_after.is_empty() {
                outln!(
                    "resumed after round{} {}",
                    if resumed_after.len() > 1 { "s" } else { "" },
                    resumed_after
                        .iter()
                        .map(u64::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            outln!(
                "summary {} ({wall:.1} s)",
                self.out.join("summary.json").display()
            );
            outln!("report  {}", report.display());
        }
        Ok(ExitCode::SUCCESS)
    }

    /// What the report names about this run: config, command line, version, start time, and
    /// how its keys were made.
    fn report_info(&self, wall_seconds: f64, keys: &Keys) -> crate::report::RunInfo {
        crate::report::RunInfo::of_this_process(&self.config, wall_seconds).with_note(
            if keys.is_seeded() {
                SEEDED_NOTE
            } else {
                RANDOM_NOTE
            },
        )
    }

    /// Where the run's events go: the `--events FILE` writer, if asked for, then the
    /// per-round progress line.
    fn events_to(
        &self,
        progress: &Progress,
        cfg: &ValidConfig,
    ) -> anyhow::Result<impl FnMut(&RunEvent) + 'static> {
        let mut file = self.event_sink()?;
        let mut lines = progress.round_lines(cfg.validators as u32);
        Ok(move |e: &RunEvent| {
            if let Some(f) = file.as_mut() {
                f(e);
            }
            lines(e);
        })
    }

    /// The `--events FILE` writer: one JSON line per event, each written whole by one write
    /// as it comes, so that a killed run leaves whole lines. A file that does not end with a
    /// newline (a line torn by a crash) gets one first, so the torn line stays apart. A write
    /// that fails is reported once on stderr and the run goes on (the ledger, not this file,
    /// is the record).
    fn event_sink(&self) -> anyhow::Result<Option<impl FnMut(&RunEvent) + 'static>> {
        use std::io::{Read as _, Seek as _, Write as _};
        let Some(path) = &self.events else {
            return Ok(None);
        };
        let mut out = fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .with_context(|| format!("--events {}: opening it", path.display()))?;
        let len = out
            .metadata()
            .with_context(|| format!("--events {}: reading it", path.display()))?
            .len();
        if len > 0 {
            let mut last = [0u8; 1];
            out.seek(std::io::SeekFrom::Start(len - 1))
                .and_then(|_| out.read_exact(&mut last))
                .and_then(|()| {
                    if last[0] == b'\n' {
                        Ok(())
                    } else {
                        out.write_all(b"\n")
                    }
                })
                .with_context(|| format!("--events {}: appending to it", path.display()))?;
        }
        let shown = path.display().to_string();
        let mut failed = false;
        Ok(Some(move |e: &RunEvent| {
            let line = serde_json::to_string(e).unwrap_or_default() + "\n";
            if let Err(err) = out.write_all(line.as_bytes())
                && !failed
            {
                eprintln!("warning: --events {shown}: {err}; the run goes on without it");
                failed = true;
            }
        }))
    }

    /// The blob store of `--blobs`, or DIR/blobs (created if missing).
    fn blob_store(&self) -> anyhow::Result<Box<dyn cohort_blob::BlobStore>> {
        match &self.blobs {
            Some(spec) => cohort_blob::open(spec).context("--blobs"),
            None => {
                let dir = self.out.join("blobs");
                Ok(Box::new(
                    cohort_blob::LocalDir::open(&dir)
                        .with_context(|| format!("opening {}", dir.display()))?,
                ))
            }
        }
    }

    /// The `--reference` run's summary, if one was given.
    fn reference(&self) -> anyhow::Result<Option<RunSummary>> {
        let Some(path) = &self.reference else {
            return Ok(None);
        };
        let text = fs::read_to_string(path)
            .with_context(|| format!("--reference {}: reading it", path.display()))?;
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("--reference {}: not JSON", path.display()))?;
        let s: RunSummary = serde_json::from_value(v["summary"].clone()).with_context(|| {
            format!(
                "--reference {}: not a cohort run summary.json",
                path.display()
            )
        })?;
        Ok(Some(s))
    }
}

/// DIR/state.
struct StateDir(PathBuf);

impl StateDir {
    /// Whether the set-up (round 0) or a later round was saved.
    fn exists_saved(&self) -> bool {
        resume::list(&self.0).is_ok_and(|l| !l.is_empty())
    }
}

#[cfg(feature = "evm-rpc")]
impl Args {
    /// The run on the EVM chain at `url`: the same experiment through
    /// [`cohort_ledger::EvmRpcLedger`], recorded in DIR/summary.json with the chain's id, the
    /// contract address and every transaction.
    fn on_chain(
        &self,
        cfg: &ValidConfig,
        url: &str,
        reference: Option<&RunSummary>,
    ) -> anyhow::Result<ExitCode> {
        if !matches!(inspect(&self.out)?, Found::Nothing) {
            bail!(
                "{} already holds a run; choose another --out",
                self.out.display()
            );
        }
        let funder = crate::args::funder_key(self.funder_key.as_deref())?;
        let chain = cohort_ledger::EvmRpcLedger::connect(url, funder)?;
        let chain_id = chain.chain_id();
        let claim = Claim::take(&self.out)?;
        let keys = if self.random_keys {
            Keys::Secret(rand::random::<[u8; 32]>())
        } else {
            Keys::Seeded(cfg.seed)
        };
        let started = Instant::now();
        let config_dir = self
            .config
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let progress = Progress::new(cfg.coordinator.rounds, self.json);
        let run = (|| -> anyhow::Result<_> {
            // The secret the accounts' keys derive from (the coordinator's and the
            // governance's hold the run's funds on the chain), kept as summary.json says.
            if let Keys::Secret(secret) = &keys {
                let keys_dir = create_keys_dir(&self.out)?;
                write_secret(&keys_dir.join("run.key"), &hex::encode(secret))?;
            }
            let blobs = self.blob_store()?;
            fs::copy(&self.config, self.out.join("config.toml"))
                .with_context(|| format!("copying the config into {}", self.out.display()))?;
            progress.say("set-up: preparing the task (reading data, pretraining a base model)");
            let task = crate::cmd::model::build_task(cfg, &config_dir, &self.out, None, true)
                .context("setting up the task")?;
            let opts = RunOptions::new()
                .with_keys(keys.clone())
                .with_blobs(blobs)
                .with_events(self.events_to(&progress, cfg)?);
            // The run's name in every session proof: fresh, so that a proof made for one run
            // is worth nothing in another on the same chain.
            let run_id = format!(
                "cohort-chain/{chain_id}/{}",
                hex::encode(rand::random::<[u8; 16]>())
            );
            let words =
                format!("each registers itself on the chain (id {chain_id}) when it connects");
            let out = self
                .run_parties(cfg, chain, &*task, opts, &run_id, &words, &progress, |_| {})?
                .with_context(|| format!("on the chain at {url}"))?;
            Ok(out)
        })();
        progress.finish();
        let (p, summary) = match run {
            Ok(x) => x,
            Err(e) => {
                claim.undo();
                return Err(e);
            }
        };
        let contract = p.address();
        let chain = p.into_backend();
        let head = chain.head()?;
        let gas: u64 = chain.recorded().iter().map(|t| t.gas_used).sum();
        let txs: Vec<Value> = chain
            .recorded()
            .iter()
            .map(|t| json!({ "tx_hash": t.tx_hash, "block": t.block, "gas_used": t.gas_used }))
            .collect();
        let wall = started.elapsed().as_secs_f64();
        let record = json!({
            "chain_rpc": url,
            "chain_id": chain_id,
            "contract": contract,
            "head": head,
            "gas_used": gas,
            "transactions": txs,
        });
        let key_record = json!({
            "mode": if keys.is_seeded() { "seed-derived" } else { "random" },
            "note": if keys.is_seeded() { SEEDED_NOTE } else { RANDOM_NOTE },
        });
        let recorded = chain.recorded();
        let blocks = recorded
            .first()
            .zip(recorded.last())
            .map(|(a, b)| (a.block, b.block));
        let report = crate::report::write(
            &self.out,
            cfg,
            &summary,
            crate::report::Record::Chain(&crate::report::ChainRecord {
                url: url.to_owned(),
                chain_id,
                contract: contract.to_string(),
                transactions: txs.len(),
                gas_used: gas,
                blocks,
                root: head.root.to_string(),
            }),
            reference,
            &self.report_info(wall, &keys),
        )?;
        write_provenance(&self.out, &summary)?;
        write_atomic(
            &self.out.join("summary.json"),
            (serde_json::to_string_pretty(&json!({
                "schema": cohort_node::summary::SCHEMA_VERSION,
                "config": cfg, "summary": summary, "chain": record, "keys": key_record,
                "wall_seconds": wall,
            }))? + "\n")
                .as_bytes(),
        )?;
        if self.json {
            print_json(&json!({
                "summary": summary,
                "chain": { "chain_rpc": url, "chain_id": chain_id, "contract": contract,
                    "transactions": txs.len(), "gas_used": gas },
                "keys": key_record,
                "wall_seconds": wall,
            }))?;
        } else {
            print_human(&summary, cfg);
            outln!(
                "\nchain {url} (id {chain_id}): protocol at {contract}; {} transactions, {gas} gas, \
                 their receipts on chain (hashes in summary.json)",
                txs.len()
            );
            outln!(
                "summary {} ({wall:.1} s)",
                self.out.join("summary.json").display()
            );
            outln!("report  {}", report.display());
        }
        drop(claim);
        Ok(ExitCode::SUCCESS)
    }
}

/// One round's progress: the bar's message on a terminal, a line on stderr otherwise.
fn print_round(bar: Option<&ProgressBar>, rounds: u64, r: &RoundSummary, secs: f64) {
    let metric = format!(
        "test loss {:.4}{}{}",
        r.test.loss,
        r.test
            .perplexity
            .map(|p| format!(", perplexity {p:.3}"))
            .unwrap_or_default(),
        r.test
            .accuracy
            .map(|a| format!(", accuracy {a:.3}"))
            .unwrap_or_default()
    );
    match bar {
        Some(b) => {
            b.set_message(format!(
                "{metric}, accepted {}, rejected {}",
                r.accepted.len(),
                r.rejected.len()
            ));
            b.set_position(r.round);
        }
        None => eprintln!(
            "round {}/{rounds}: {metric}, accepted {}, rejected {}, {secs:.2} s",
            r.round,
            r.accepted.len(),
            r.rejected.len()
        ),
    }
}

fn print_human(s: &RunSummary, cfg: &RunConfig) {
    outln!("initial test loss {:.4}", s.initial.loss);
    // Columns for the metrics this task reports.
    let acc = s.initial.accuracy.is_some();
    let ppl = s.initial.perplexity.is_some();
    let backdoor = s
        .rounds
        .iter()
        .any(|r| r.test.backdoor_success_rate.is_some());
    let mut head = vec!["round", "test loss"];
    head.extend(ppl.then_some("perplexity"));
    head.extend(acc.then_some("accuracy"));
    head.extend(backdoor.then_some("backdoor"));
    head.extend(["accepted", "rejected", "slashed", "ledger s", "train s"]);
    let mut t = Table::new(&head);
    let opt = |x: Option<f64>, prec: usize| x.map_or("-".into(), |v| format!("{v:.prec$}"));
    for r in &s.rounds {
        let mut row = vec![r.round.to_string(), format!("{:.4}", r.test.loss)];
        if ppl {
            row.push(opt(r.test.perplexity, 3));
        }
        if acc {
            row.push(opt(r.test.accuracy, 3));
        }
        if backdoor {
            row.push(opt(r.test.backdoor_success_rate, 3));
        }
        row.extend([
            r.accepted.len().to_string(),
            format!("{:?}", r.rejected),
            r.payouts
                .iter()
                .filter(|(_, p)| !p.slash.is_zero())
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(","),
            format!("{:.2}", r.seconds.ledger),
            format!("{:.2}", r.seconds.train),
        ]);
        t.row(row);
    }
    t.print();
    if let Some(b) = &s.update_bytes {
        outln!(
            "update bytes per client per round: {:.0} ({}), {:.0} as fp32: {:.1}x fewer",
            b.per_client_per_round,
            cfg.compression.update,
            b.fp32_per_client_per_round,
            b.ratio
        );
    }
    if let Some(g) = &cfg.governance {
        outln!(
            "governance: every client bonded {} tokens; proposals pass with {}% of the bonded \
             stake voting and over {}% for, {} s of votes and {} s of timelock (cohort gov show \
             --ledger DIR; a party's key: cohort keys export DIR --party NAME --out FILE)",
            g.bond,
            g.quorum * 100.0,
            g.majority * 100.0,
            g.voting_period,
            g.timelock
        );
    }
    if cfg.market.is_some() {
        // The data market: royalties over the run, and the rounds listed clients sat out.
        let mut paid: std::collections::BTreeMap<&str, cohort_core::U256> = Default::default();
        let mut refused: std::collections::BTreeMap<u32, usize> = Default::default();
        for r in &s.rounds {
            for (n, a) in &r.royalties {
                *paid.entry(n.as_str()).or_default() += *a;
            }
            for k in &r.refused {
                *refused.entry(*k).or_default() += 1;
            }
        }
        let fmt = |a: &cohort_core::U256| cohort_ledger::demo::fmt_tokens(*a);
        outln!(
            "royalties: {}",
            if paid.is_empty() {
                "none paid".to_owned()
            } else {
                paid.iter()
                    .map(|(n, a)| format!("{n} {}", fmt(a)))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
        for (k, n) in refused {
            outln!(
                "client-{k} sat out {n} round(s): its listing does not allow this run's recipe \
                 (the refusals are on the ledger)"
            );
        }
    }
    outln!();
    let mut t = Table::new(&["participant", "role", "holdings (balance + stake)"]);
    let mut rows: Vec<(&String, &cohort_core::U256)> = s.final_holdings.iter().collect();
    rows.sort_by_key(|(n, _)| {
        let (kind, num) = n.rsplit_once('-').unwrap_or((n.as_str(), ""));
        (kind.to_owned(), num.parse::<u64>().unwrap_or(0))
    });
    for (name, h) in rows {
        let role = match name
            .strip_prefix("client-")
            .and_then(|k| k.parse::<u32>().ok())
        {
            Some(k) if cfg.is_attacker(k) => "client (attacker)",
            Some(_) => "client",
            None => "validator",
        };
        t.row(vec![
            name.clone(),
            role.into(),
            cohort_ledger::demo::fmt_tokens(*h),
        ]);
    }
    t.print();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn deserialization_errors_name_the_field_even_inside_a_tagged_section() {
        let base = "seed = 1\nclients = 4\nvalidators = 2\n";
        let e = |extra: &str| {
            parse_config(&table(&format!("{base}{extra}")))
                .unwrap_err()
                .to_string()
        };
        assert!(e("[task]\nkind = \"linear\"\ndim = -1\n").starts_with("invalid task.dim:"));
        assert!(e("[task]\nkind = \"imdb\"\nmax_len = -1\n").starts_with("invalid task.max_len:"));
        assert!(e("[task]\nkind = \"linear\"\nbogus = 1\n").starts_with("invalid task.bogus:"));
        assert!(
            e("[aggregation]\nstrategy = { kind = \"krum\", f = -1 }\n")
                .starts_with("invalid aggregation.strategy.f:")
        );
        assert!(
            e("[coordinator]\nrounds = 1.5\n").starts_with("invalid coordinator.rounds:"),
            "{}",
            e("[coordinator]\nrounds = 1.5\n")
        );
        assert!(e("[task]\nkind = \"nope\"\n").starts_with("invalid task.kind:"));
        assert!(
            e("[attack]\nattack = { kind = \"sign-flip\", scale = 3.0 }\n")
                .starts_with("invalid attack: missing field `fraction`"),
            "{}",
            e("[attack]\nattack = { kind = \"sign-flip\", scale = 3.0 }\n")
        );
        parse_config(&table(base)).unwrap();
    }

    #[test]
    fn config_differences_are_named_by_path() {
        let a = json!({"seed": 1, "task": {"kind": "linear", "lr": 0.05}});
        let b = json!({"seed": 1, "task": {"kind": "linear", "lr": 0.1}});
        let mut d = Vec::new();
        differences(&a, &b, "", &mut d);
        assert_eq!(d, ["task.lr: 0.05 there, 0.1 here"]);
    }

    #[test]
    fn a_claim_excludes_a_second_and_undo_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        let claim = Claim::take(&dir).unwrap();
        let e = Claim::take(&dir).unwrap_err().to_string();
        assert!(e.contains("in use by another `cohort run`"), "{e}");
        assert!(e.contains(&std::process::id().to_string()), "{e}");
        fs::write(dir.join("x"), b"made by the run").unwrap();
        claim.undo();
        assert!(
            !tmp.path().join("a").exists(),
            "the created parents are removed"
        );
        // In a directory that was there, only what the run made goes.
        fs::create_dir(tmp.path().join("c")).unwrap();
        fs::write(tmp.path().join("c/mine"), b"kept").unwrap();
        let claim = Claim::take(&tmp.path().join("c")).unwrap();
        fs::write(tmp.path().join("c/x"), b"made by the run").unwrap();
        claim.undo();
        let left: Vec<_> = fs::read_dir(tmp.path().join("c"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["mine"]);
        // A claim given up (dropped) can be taken again.
        let c = Claim::take(&tmp.path().join("c")).unwrap();
        drop(c);
        Claim::take(&tmp.path().join("c")).unwrap();
    }
}

#[cfg(test)]
mod hyperparameter_tests {
    use super::hyperparameters;

    #[test]
    fn only_hyperparameters_may_be_adopted() {
        let ok = hyperparameters(
            "[task]\nlr = 0.1\nlocal_steps = 3\n[aggregation]\nstrategy = { kind = \"fed-avg\" }\n",
        )
        .unwrap();
        let keys: Vec<&str> = ok.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            ["aggregation.strategy", "task.local_steps", "task.lr"]
        );
        for bad in [
            "seed = 3",
            "[task]\nkind = \"lm\"",
            "clients = 9",
            "[market]\nfund = 1",
            "",
            "= =",
        ] {
            assert!(hyperparameters(bad).is_err(), "{bad:?} was taken");
        }
    }
}
