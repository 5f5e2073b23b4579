//! The in-process runtime: the [`Coordinator`] state machine, clients and validators of a
//! [`Learner`], and the protocol contract on any [`LedgerBackend`].
//!
//! Per round, the coordinator opens the round on the ledger with the global model's hash; the
//! sampled clients train, store their delta as a content-addressed safetensors blob and submit
//! its hash, dataset commitment and sample count; validators score every update by the loss
//! reduction it brings on their own holdout, commit to the scores and reveal them; the
//! contract takes the stake-weighted median and accepts or rejects; the coordinator aggregates
//! the accepted updates with the configured strategy and finalizes with the new model's hash;
//! settlement pays and slashes. Time on the ledger is the run's virtual clock, so a run
//! replays bit for bit from its seed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use alloy_primitives::{Address, B256, U256};
use cohort_core::{Hash32, Identity, Score, sha256, tokens};
use cohort_ledger::demo::fmt_tokens;
use cohort_ledger::protocol::{
    Cohort, Cohort::CohortEvents, Protocol, ProtocolError, accepted_set_hash, roles,
};
use cohort_ledger::{LedgerBackend, LedgerError};
use serde::{Deserialize, Serialize};

pub use cohort_fl::blob::{decode_blob, encode_blob, encode_named_blob};
pub use cohort_fl::config::{
    AggregationConfig, AttackConfig, IncentiveConfig, RunConfig, StrategyConfig, ValidConfig,
};
use cohort_fl::coordinator::{Command, Coordinator, Event, Phase};
use cohort_fl::learner::{Learner, Metrics};
use cohort_fl::strategy::Strategy;
use cohort_fl::{ClientUpdate, FlError};

use crate::resume::{Resume, SavedRound};
use crate::transport::{
    InProcess, Reply, Request, RevealRequest, ScoreItem, ScoreRequest, TrainRequest, Transport,
    TransportError,
};

/// Why a run stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A protocol call failed unexpectedly.
    #[error("ledger: {0}")]
    Protocol(#[from] ProtocolError),
    /// The ledger itself failed.
    #[error("ledger: {0}")]
    Ledger(#[from] LedgerError),
    /// Aggregation or configuration failed.
    #[error(transparent)]
    Fl(#[from] FlError),
    /// The transport to the clients and validators failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The global model became non-finite after aggregation.
    #[error(
        "round {round}: the global model became non-finite after aggregating with {strategy}; \
         the run stops before the round is finalized, so no client is rejected or slashed for \
         it (check the aggregation's settings, such as a server learning rate, and the task's \
         learning rate)"
    )]
    NonFiniteModel {
        /// The round.
        round: u64,
        /// The strategy, as it names itself.
        strategy: String,
    },
    /// A run stopped with `error`, and the round in progress could not be taken back off the
    /// ledger.
    #[error("{error}; and the unfinished round could not be discarded from the ledger: {discard}")]
    Unwound {
        /// Why the run stopped.
        error: Box<RunError>,
        /// Why the discard failed.
        discard: LedgerError,
    },
    /// A blob could not be written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// One round's outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoundSummary {
    /// Round number.
    pub round: u64,
    /// Test metrics of the new global model.
    pub test: Metrics,
    /// Clients whose updates were accepted.
    pub accepted: Vec<u32>,
    /// Clients whose updates were rejected (by the validators or by validation).
    pub rejected: Vec<u32>,
    /// Consensus score per submitting client.
    pub consensus: BTreeMap<u32, f64>,
    /// Tokens rewarded per participant name this round.
    pub rewards: BTreeMap<String, String>,
    /// Tokens slashed per participant name this round.
    pub slashes: BTreeMap<String, String>,
    /// Bytes of update blobs moved (clients to coordinator).
    pub bytes: u64,
    /// Clients in the order their updates were recorded on the ledger.
    pub submitted: Vec<u32>,
    /// The score matrix: `scores[v][i]` is validator `v`'s score of the `i`-th submitted
    /// update.
    pub scores: Vec<Vec<f64>>,
    /// Balance + stake of every participant after the round, whole tokens.
    pub holdings: BTreeMap<String, f64>,
    /// Wall seconds per part of the round (not part of the replay contract).
    pub seconds: PhaseSeconds,
    /// Every update recorded on the ledger this round, in submission order: what its client
    /// claimed and sent (for reports; absent in summaries written before it existed).
    #[serde(default)]
    pub updates: Vec<UpdateFacts>,
    /// Reward and slash of every participant paid or slashed this round, by name, in base
    /// units (the exact amounts behind `rewards` and `slashes`).
    #[serde(default)]
    pub payouts: BTreeMap<String, Payout>,
}

/// One recorded update: its client's claim and what the coordinator saw of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateFacts {
    /// The client.
    pub client: u32,
    /// Samples the client claimed to have trained on (recorded on the ledger).
    pub samples: u64,
    /// L2 norm of the decoded update; `None` when the blob did not decode or holds
    /// non-finite values.
    pub update_norm: Option<f64>,
    /// Bytes of the update blob.
    pub bytes: u64,
    /// Why validation refused the update before scoring (wrong shape, non-finite values,
    /// wrong round), if it did.
    pub refused: Option<String>,
}

/// One participant's reward and slash in a round, in base units (10^-18 token).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payout {
    /// Tokens rewarded, base units (a decimal string in JSON).
    #[serde(with = "u256_decimal")]
    pub reward: U256,
    /// Tokens slashed, base units (a decimal string in JSON).
    #[serde(with = "u256_decimal")]
    pub slash: U256,
}

/// Base-unit amounts as decimal strings in JSON: exact, and readable by any JSON tool.
mod u256_decimal {
    use alloy_primitives::U256;

    pub fn serialize<S: serde::Serializer>(v: &U256, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<U256, D::Error> {
        let s: String = serde::Deserialize::deserialize(d)?;
        U256::from_str_radix(&s, 10).map_err(serde::de::Error::custom)
    }
}

/// Where a round's wall time went.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PhaseSeconds {
    /// Local training: waiting on the transport while clients train (in process: the
    /// clients' training and the encoding and hashing of their blobs).
    pub train: f64,
    /// Validators' scoring and commitments: waiting on the transport after submissions
    /// close.
    pub score: f64,
    /// Aggregation.
    pub aggregate: f64,
    /// The coordination overhead: ledger transactions, checking and decoding the received
    /// blobs, hashing and storing models and blobs.
    pub ledger: f64,
    /// Reading every participant's holdings for the report (not needed by the protocol).
    #[serde(default)]
    pub report: f64,
}

/// The outcome of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSummary {
    /// Test metrics of the initial model.
    pub initial: Metrics,
    /// Per round.
    pub rounds: Vec<RoundSummary>,
    /// Final balance + stake of every participant, in tokens, by name.
    pub final_holdings: BTreeMap<String, String>,
    /// The ledger's root after the run.
    pub ledger_root: Hash32,
    /// Entries on the ledger.
    pub ledger_entries: u64,
}

struct Party {
    id: Identity,
    addr: Address,
}

fn b256(h: Hash32) -> B256 {
    h.into()
}

/// An update recorded on the ledger in the current round.
struct OnChain {
    client: u32,
    hash: Hash32,
    blob: Vec<u8>,
    /// `None` once validation refused it.
    update: Option<ClientUpdate>,
}

/// Where a run's signing keys come from: the governance, the coordinator, every client and
/// validator (and, in `cohort run`, the ledger's operator).
#[derive(Clone, PartialEq, Eq)]
pub enum Keys {
    /// Derived from the config's seed, as `Identity::from_seed(seed, name)`. Anyone who knows
    /// the seed (`cohort run` publishes it in summary.json) can derive every key and so sign
    /// a different ledger for the same run: a reproducible experiment (the same seed gives the
    /// same ledger root), not a secured one.
    Seeded(u64),
    /// Derived from a 32-byte secret kept apart from the ledger and the summary
    /// (`sha256("cohort-run-keys-v1" || secret || name)`): the run's ledger cannot be forged
    /// from its summary. A new secret per run makes a new root per run.
    Secret([u8; 32]),
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Seeded(seed) => write!(f, "Keys::Seeded({seed})"),
            Self::Secret(_) => f.write_str("Keys::Secret(..)"),
        }
    }
}

impl Keys {
    /// The identity called `name` (`governance`, `coordinator`, `client-3`, `validator-0`).
    pub fn identity(&self, name: &str) -> Identity {
        match self {
            Self::Seeded(seed) => Identity::from_seed(*seed, name),
            Self::Secret(secret) => Identity::from_secret(
                name,
                cohort_core::sha256_parts(&[b"cohort-run-keys-v1", secret, name.as_bytes()]).0,
            ),
        }
    }

    /// Whether anyone with the seed can derive the keys.
    pub fn is_seeded(&self) -> bool {
        matches!(self, Self::Seeded(_))
    }
}

/// How a run keeps its keys and its files, beyond the config: consuming `with_*` setters.
#[derive(Debug, Default)]
pub struct RunOptions {
    keys: Option<Keys>,
    blobs: Option<PathBuf>,
    state: Option<PathBuf>,
    resume: Option<Resume>,
}

impl RunOptions {
    /// Keys from the seed, no files.
    pub fn new() -> Self {
        Self::default()
    }

    /// The parties' keys (default: [`Keys::Seeded`] with the config's seed).
    pub fn with_keys(mut self, keys: Keys) -> Self {
        self.keys = Some(keys);
        self
    }

    /// Writes every update and global model blob into `dir` (content-addressed).
    pub fn with_blobs(mut self, dir: impl Into<PathBuf>) -> Self {
        self.blobs = Some(dir.into());
        self
    }

    /// Saves what the run needs to continue into `dir` after the set-up and after every
    /// settled round, before the ledger's flush ([`crate::resume`]).
    pub fn with_state(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state = Some(dir.into());
        self
    }

    /// Continues from a saved round ([`crate::resume::load`]) instead of setting up: the
    /// backend must be the ledger at the size and root the round was saved with.
    pub fn resuming(mut self, resume: Resume) -> Self {
        self.resume = Some(resume);
        self
    }

    fn keys(&self, cfg: &RunConfig) -> Keys {
        self.keys.clone().unwrap_or(Keys::Seeded(cfg.seed))
    }
}

/// Runs the federated experiment `cfg` on `backend` with `learner`, its clients and
/// validators in this process ([`InProcess`]), keys from the seed. Update blobs go to `blobs`
/// when given. Progress is reported through `on_round`.
pub fn run<B: LedgerBackend, L: Learner + ?Sized>(
    cfg: &ValidConfig,
    backend: B,
    learner: &L,
    blobs: Option<&Path>,
    on_round: impl FnMut(&RoundSummary),
) -> Result<(Protocol<B>, RunSummary), RunError> {
    let mut opts = RunOptions::new();
    if let Some(b) = blobs {
        opts = opts.with_blobs(b);
    }
    run_in_process(cfg, backend, learner, opts, on_round)
}

/// [`run`] with [`RunOptions`]: the clients and validators of `learner` in this process.
pub fn run_in_process<B: LedgerBackend, L: Learner + ?Sized>(
    cfg: &ValidConfig,
    backend: B,
    learner: &L,
    opts: RunOptions,
    on_round: impl FnMut(&RoundSummary),
) -> Result<(Protocol<B>, RunSummary), RunError> {
    let keys = opts.keys(cfg);
    let validators = (0..cfg.validators)
        .map(|v| backend.address_of(&keys.identity(&format!("validator-{v}"))))
        .collect();
    let mut transport = InProcess::new(cfg, learner, validators);
    run_with_options(cfg, backend, learner, &mut transport, opts, on_round)
}

/// Runs the federated experiment `cfg` on `backend`, reaching its clients and validators
/// through `transport` (see [`crate::transport`]). The coordinator side uses `learner` only
/// for the model's shape, initial parameters, blob layout and test evaluation, and to read
/// the clients' dataset commitments at set-up. Update blobs go to `blobs` when given.
/// Progress is reported through `on_round`.
pub fn run_with<B: LedgerBackend, L: Learner + ?Sized>(
    cfg: &ValidConfig,
    backend: B,
    learner: &L,
    transport: &mut dyn Transport,
    blobs: Option<&Path>,
    on_round: impl FnMut(&RoundSummary),
) -> Result<(Protocol<B>, RunSummary), RunError> {
    let mut opts = RunOptions::new();
    if let Some(b) = blobs {
        opts = opts.with_blobs(b);
    }
    run_with_options(cfg, backend, learner, transport, opts, on_round)
}

/// [`run_with`] with [`RunOptions`]: keys, the blob and state directories, and a saved round
/// to continue from.
///
/// The ledger is flushed once after the set-up and once per settled round. A run that stops
/// with an error part-way through a round (or the set-up) takes what it recorded of it back
/// off the ledger ([`LedgerBackend::discard_unflushed`], where the backend can), so that the
/// ledger ends at its last settled round, as after a kill, and `with_state` runs can continue
/// from there. A global model that becomes non-finite stops the run before the round is
/// finalized ([`RunError::NonFiniteModel`]): no client is rejected or slashed for it.
pub fn run_with_options<B: LedgerBackend, L: Learner + ?Sized>(
    cfg: &ValidConfig,
    backend: B,
    learner: &L,
    transport: &mut dyn Transport,
    opts: RunOptions,
    on_round: impl FnMut(&RoundSummary),
) -> Result<(Protocol<B>, RunSummary), RunError> {
    let keys = opts.keys(cfg);
    let parties = Parties::new(cfg, &keys, &backend);
    let digest = crate::resume::config_digest(cfg);
    let head = backend.head()?;
    let mut p = match &opts.resume {
        None => Protocol::deploy(backend, &parties.gov)?,
        Some(r) => {
            let s = &r.saved;
            if s.config_sha256 != digest {
                return Err(state_error("the saved round was made with another config"));
            }
            if (head.size, head.root) != (s.ledger_entries, s.ledger_root) {
                return Err(state_error(format!(
                    "round {} was saved at ledger size {} root {}, the ledger is at size {} \
                     root {}",
                    s.round, s.ledger_entries, s.ledger_root, head.size, head.root
                )));
            }
            Protocol::at(backend, s.contract)
        }
    };
    let result = drive(
        cfg, &mut p, learner, transport, &opts, &parties, digest, head.time, on_round,
    );
    match result {
        Ok(summary) => Ok((p, summary)),
        Err(error) => match p.backend_mut().discard_unflushed() {
            Ok(_) => Err(error),
            Err(discard) => Err(RunError::Unwound {
                error: Box::new(error),
                discard,
            }),
        },
    }
}

fn state_error(reason: impl Into<String>) -> RunError {
    RunError::Fl(FlError::InvalidConfig {
        what: "resume",
        reason: reason.into(),
    })
}

/// Every party's identity and address.
struct Parties {
    gov: Identity,
    coord: Identity,
    coord_addr: Address,
    clients: Vec<Party>,
    validators: Vec<Party>,
    names: BTreeMap<Address, String>,
}

impl Parties {
    fn new<B: LedgerBackend>(cfg: &RunConfig, keys: &Keys, backend: &B) -> Self {
        let party = |name: String| {
            let id = keys.identity(&name);
            let addr = backend.address_of(&id);
            Party { id, addr }
        };
        let clients: Vec<Party> = (0..cfg.clients)
            .map(|k| party(format!("client-{k}")))
            .collect();
        let validators: Vec<Party> = (0..cfg.validators)
            .map(|v| party(format!("validator-{v}")))
            .collect();
        let coord = keys.identity("coordinator");
        let coord_addr = backend.address_of(&coord);
        let names = clients
            .iter()
            .chain(&validators)
            .map(|x| (x.addr, x.id.name().to_owned()))
            .chain([(coord_addr, "coordinator".to_owned())])
            .collect();
        Self {
            gov: keys.identity("governance"),
            coord,
            coord_addr,
            clients,
            validators,
            names,
        }
    }
}

/// The set-up on the ledger: mint, register, stake, commit datasets. Returns each client's
/// dataset id.
fn set_up<B: LedgerBackend, L: Learner + ?Sized>(
    cfg: &RunConfig,
    p: &mut Protocol<B>,
    learner: &L,
    x: &Parties,
) -> Result<Vec<B256>, RunError> {
    let inc = &cfg.incentives;
    p.mint(
        &x.gov,
        x.coord_addr,
        tokens(inc.initial_balance)
            + tokens(inc.reward_per_round) * U256::from(cfg.coordinator.rounds),
    )?;
    p.approve_coordinator(&x.gov, x.coord_addr)?;
    let mut params = p.params()?;
    params.acceptThreshold = Score::from_f64(inc.accept_threshold).0;
    p.set_params(&x.gov, params)?;
    p.register(&x.coord, roles::COORDINATOR)?;
    // Everyone else in batches (one durable commit each on the embedded ledger).
    let everyone: Vec<&Party> = x.clients.iter().chain(&x.validators).collect();
    let amount = tokens(inc.initial_balance);
    all_ok(
        p.send_batch(
            everyone
                .iter()
                .map(|y| (&x.gov, Cohort::mintCall { to: y.addr, amount }))
                .collect(),
        )?,
    )?;
    let register = |y: &Party, roles| Cohort::registerCall {
        roles,
        keyHash: y.id.key_hash(),
    };
    all_ok(
        p.send_batch(
            x.clients
                .iter()
                .map(|c| (&c.id, register(c, roles::CLIENT | roles::DATA_OWNER)))
                .chain(
                    x.validators
                        .iter()
                        .map(|v| (&v.id, register(v, roles::VALIDATOR))),
                )
                .collect(),
        )?,
    )?;
    let stake = |n| Cohort::stakeCall { amount: tokens(n) };
    all_ok(
        p.send_batch(
            x.clients
                .iter()
                .enumerate()
                .map(|(k, c)| (&c.id, stake(cfg.client_stake(k as u32))))
                .chain(
                    x.validators
                        .iter()
                        .map(|v| (&v.id, stake(inc.validator_stake))),
                )
                .collect(),
        )?,
    )?;
    let commits = x
        .clients
        .iter()
        .enumerate()
        .map(|(k, c)| {
            let (root, size) = learner.dataset_commitment(k as u32);
            let manifest = sha256(format!("client-{k}: {size} samples").as_bytes());
            let call = Cohort::commitDatasetCall {
                merkleRoot: b256(root),
                manifestHash: b256(manifest),
                size,
            };
            (&c.id, call)
        })
        .collect();
    Ok(all_ok(p.send_batch(commits)?)?
        .into_iter()
        .map(|s| s.value)
        .collect())
}

/// The state saved after a round (or the set-up).
struct Snapshot<'a> {
    cfg_digest: Hash32,
    round: u64,
    now: u64,
    datasets: &'a [B256],
    initial: Metrics,
}

/// Saves the run's state for `snap` into `dir` (before the ledger's flush).
fn save_state<B: LedgerBackend, L: Learner + ?Sized>(
    dir: &Path,
    p: &Protocol<B>,
    learner: &L,
    strategy: &dyn Strategy,
    global: &[f32],
    snap: Snapshot<'_>,
    round: Option<&RoundSummary>,
) -> Result<(), RunError> {
    let head = p.backend().head()?;
    let blob = learner.encode(global);
    let saved = SavedRound {
        format: crate::resume::FORMAT.to_owned(),
        round: snap.round,
        config_sha256: snap.cfg_digest,
        ledger_entries: head.size,
        ledger_root: head.root,
        now: snap.now,
        contract: p.address(),
        datasets: snap.datasets.iter().map(|d| Hash32(d.0)).collect(),
        global_sha256: sha256(&blob),
        strategy: strategy
            .state()
            .iter()
            .map(|v| v.iter().map(|x| x.to_bits()).collect())
            .collect(),
        initial: snap.initial,
    };
    crate::resume::save(dir, &saved, &blob, round)?;
    Ok(())
}

/// The run after the protocol is deployed (or attached to, when resuming): the set-up, then
/// the rounds.
#[allow(clippy::too_many_arguments)]
fn drive<B: LedgerBackend, L: Learner + ?Sized>(
    cfg: &ValidConfig,
    p: &mut Protocol<B>,
    learner: &L,
    transport: &mut dyn Transport,
    opts: &RunOptions,
    parties: &Parties,
    cfg_digest: Hash32,
    start: u64,
    mut on_round: impl FnMut(&RoundSummary),
) -> Result<RunSummary, RunError> {
    let seed = cfg.seed;
    let inc = &cfg.incentives;
    let (coord, clients, validators, names) = (
        &parties.coord,
        &parties.clients,
        &parties.validators,
        &parties.names,
    );
    let blobs = opts.blobs.as_deref();
    let mut coordinator = Coordinator::new(
        cfg.coordinator.clone(),
        (0..cfg.clients as u32).collect(),
        (0..cfg.validators as u32).collect(),
        learner.dim(),
    )?;
    let mut strategy = cfg.aggregation.build();
    let (mut now, datasets, mut global, initial, mut rounds) = match &opts.resume {
        None => {
            let datasets = set_up(cfg, p, learner, parties)?;
            let global = learner.init();
            let initial = learner.evaluate(&global)?;
            if let Some(dir) = &opts.state {
                let snap = Snapshot {
                    cfg_digest,
                    round: 0,
                    now: start,
                    datasets: &datasets,
                    initial,
                };
                save_state(dir, p, learner, &*strategy, &global, snap, None)?;
            }
            // The set-up is durable before the first round starts (and is not counted in it).
            p.backend_mut().flush()?;
            (start, datasets, global, initial, Vec::new())
        }
        Some(r) => {
            let s = &r.saved;
            let state: Vec<Vec<f64>> = s
                .strategy
                .iter()
                .map(|v| v.iter().map(|&b| f64::from_bits(b)).collect())
                .collect();
            strategy.restore(&state)?;
            let global = learner.decode(&r.global)?;
            if global.len() != learner.dim() {
                return Err(state_error(format!(
                    "the saved global model has {} values, the task's model {}",
                    global.len(),
                    learner.dim()
                )));
            }
            if s.datasets.len() != cfg.clients {
                return Err(state_error(format!(
                    "{} dataset ids saved for {} clients",
                    s.datasets.len(),
                    cfg.clients
                )));
            }
            if let Some(dir) = &opts.state {
                crate::resume::rewrite_rounds(dir, &r.rounds)?;
            }
            coordinator = coordinator.after_round(s.round);
            let datasets = s.datasets.iter().map(|h| b256(*h)).collect();
            (s.now, datasets, global, s.initial, r.rounds.clone())
        }
    };

    // Per-round state the runtime keeps between commands.
    let mut chain_round = 0u64;
    let mut round = 0u64;
    let mut global_blob: Vec<u8> = Vec::new();
    let mut global_hash = Hash32::ZERO;
    let mut cohort_members: BTreeSet<u32> = BTreeSet::new();
    // The updates recorded on the ledger this round, in order: client, blob hash, blob, and
    // the decoded update (`None` once validation refused it).
    let mut onchain: Vec<OnChain> = Vec::new();
    let mut committed: BTreeSet<u32> = BTreeSet::new();
    let mut revealed: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
    let mut summary: Option<RoundSummary> = None;

    loop {
        let tick = coordinator.tick(now, seed);
        now += 60;
        p.backend_mut().set_time(now)?;
        match tick {
            Some(Command::Finished) => break,
            // Waiting for a party that has not answered (a client the protocol refused, or
            // one that is silent): the virtual clock runs on until the phase times out.
            None if coordinator.phase() == Phase::Done => break,
            None => {}
            Some(Command::OpenRound { round: r, cohort }) => {
                let t = Instant::now();
                round = r;
                global_blob = learner.encode(&global);
                global_hash = sha256(&global_blob);
                chain_round = p
                    .open_round(
                        coord,
                        b256(global_hash),
                        tokens(inc.reward_per_round),
                        false,
                    )?
                    .value;
                onchain.clear();
                committed.clear();
                revealed.clear();
                cohort_members = cohort.iter().copied().collect();
                for &client in &cohort {
                    transport.send(Request::Train(TrainRequest {
                        round,
                        ledger_round: chain_round,
                        client,
                        global_hash,
                        global: global_blob.clone(),
                    }))?;
                }
                let mut s = RoundSummary {
                    round,
                    test: initial,
                    accepted: Vec::new(),
                    rejected: Vec::new(),
                    consensus: BTreeMap::new(),
                    rewards: BTreeMap::new(),
                    slashes: BTreeMap::new(),
                    bytes: 0,
                    submitted: Vec::new(),
                    scores: Vec::new(),
                    holdings: BTreeMap::new(),
                    seconds: PhaseSeconds::default(),
                    updates: Vec::new(),
                    payouts: BTreeMap::new(),
                };
                s.seconds.ledger += t.elapsed().as_secs_f64();
                summary = Some(s);
            }
            Some(Command::Score {
                updates, rejected, ..
            }) => {
                let s = open_round(&mut summary)?;
                let t = Instant::now();
                p.close_submissions(coord, chain_round)?;
                let valid: BTreeSet<u32> = updates.iter().map(|u| u.client).collect();
                for (k, reason) in &rejected {
                    s.rejected.push(*k);
                    if let Some(f) = s.updates.iter_mut().find(|f| f.client == *k) {
                        f.refused = Some(reason.clone());
                    }
                }
                // Invalid updates (bad shape, NaN, wrong round) get the worst score.
                for x in onchain.iter_mut() {
                    if !valid.contains(&x.client) {
                        x.update = None;
                    }
                }
                s.submitted = onchain.iter().map(|x| x.client).collect();
                let items: Vec<ScoreItem> = onchain
                    .iter()
                    .map(|x| ScoreItem {
                        client: x.client,
                        hash: x.hash,
                        blob: x.update.as_ref().map(|_| x.blob.clone()),
                    })
                    .collect();
                for v in 0..cfg.validators as u32 {
                    transport.send(Request::Score(ScoreRequest {
                        round,
                        ledger_round: chain_round,
                        validator: v,
                        global_hash,
                        global: global_blob.clone(),
                        updates: items.clone(),
                    }))?;
                }
                s.seconds.ledger += t.elapsed().as_secs_f64();
            }
            Some(Command::Reveal { .. }) => {
                let s = open_round(&mut summary)?;
                let t = Instant::now();
                p.close_commits(coord, chain_round)?;
                for &v in &committed {
                    transport.send(Request::Reveal(RevealRequest {
                        round,
                        ledger_round: chain_round,
                        validator: v,
                    }))?;
                }
                s.seconds.ledger += t.elapsed().as_secs_f64();
            }
            Some(Command::Aggregate { .. }) => {
                let s = open_round(&mut summary)?;
                // The score matrix as revealed; a validator that did not reveal has an empty
                // row.
                s.scores = (0..cfg.validators as u32)
                    .map(|v| revealed.get(&v).cloned().unwrap_or_default())
                    .collect();
                let t = Instant::now();
                let tally = p.tally_all(coord, chain_round, 64)?;
                s.seconds.ledger += t.elapsed().as_secs_f64();
                let mut accepted_idx = Vec::new();
                let mut accepted = Vec::new();
                for e in &tally.events {
                    let (index, score, ok) = match e {
                        CohortEvents::UpdateAccepted(a) => (a.index, a.consensusScore, true),
                        CohortEvents::UpdateRejected(r) => (r.index, r.consensusScore, false),
                        _ => continue,
                    };
                    let Some(x) = onchain.get(index as usize) else {
                        continue;
                    };
                    let (k, u) = (&x.client, &x.update);
                    s.consensus.insert(*k, Score(score).to_f64());
                    if let (false, true, Some(u)) = (ok, cfg.aggregation.ignore_verdicts, u) {
                        accepted.push(u.clone().with_score(Score(score)));
                    }
                    match (ok, u) {
                        (true, Some(u)) => {
                            accepted_idx.push(index);
                            s.accepted.push(*k);
                            accepted.push(u.clone().with_score(Score(score)));
                        }
                        _ => {
                            if !s.rejected.contains(k) {
                                s.rejected.push(*k);
                            }
                        }
                    }
                }
                accepted_idx.sort_unstable();
                let t = Instant::now();
                if !accepted.is_empty() {
                    match strategy.aggregate(&accepted) {
                        Ok(delta) => {
                            for (g, d) in global.iter_mut().zip(&delta) {
                                *g += d;
                            }
                        }
                        // Too few accepted updates for a robust strategy: keep the model.
                        Err(FlError::NotEnoughUpdates { .. }) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                s.seconds.aggregate += t.elapsed().as_secs_f64();
                // A model the strategy made non-finite is the configuration's fault, not the
                // clients': stop before the round is finalized and settled, so that nobody is
                // rejected or slashed because of it (the validators would score every later
                // update against a NaN model).
                if global.iter().any(|x| !x.is_finite()) {
                    return Err(RunError::NonFiniteModel {
                        round,
                        strategy: strategy.name(),
                    });
                }
                let t = Instant::now();
                let global_blob = learner.encode(&global);
                let new_hash = sha256(&global_blob);
                if let Some(dir) = blobs {
                    let path = dir.join(format!("{new_hash}.safetensors"));
                    std::fs::write(&path, &global_blob)
                        .map_err(|source| RunError::Io { path, source })?;
                }
                p.finalize(
                    coord,
                    chain_round,
                    b256(new_hash),
                    accepted_set_hash(&accepted_idx),
                )?;
                s.seconds.ledger += t.elapsed().as_secs_f64();
            }
            Some(Command::Settle { .. }) => {
                let mut s = summary.take().ok_or_else(no_round)?;
                let t = Instant::now();
                let settled = p.settle_all(coord, chain_round, 64)?;
                s.seconds.ledger += t.elapsed().as_secs_f64();
                let mut rewards: BTreeMap<String, U256> = BTreeMap::new();
                let mut slashes: BTreeMap<String, U256> = BTreeMap::new();
                for e in &settled.events {
                    match e {
                        CohortEvents::Rewarded(r) => {
                            *rewards.entry(name_of(names, r.who)).or_default() += r.amount;
                        }
                        CohortEvents::Slashed(x) => {
                            *slashes.entry(name_of(names, x.who)).or_default() += x.amount;
                        }
                        _ => {}
                    }
                }
                for (name, amount) in &rewards {
                    s.payouts.entry(name.clone()).or_default().reward = *amount;
                }
                for (name, amount) in &slashes {
                    s.payouts.entry(name.clone()).or_default().slash = *amount;
                }
                s.rewards = rewards
                    .into_iter()
                    .map(|(k, v)| (k, fmt_tokens(v)))
                    .collect();
                s.slashes = slashes
                    .into_iter()
                    .map(|(k, v)| (k, fmt_tokens(v)))
                    .collect();
                s.test = learner.evaluate(&global)?;
                let t = Instant::now();
                for x in clients.iter().chain(validators.iter()) {
                    s.holdings
                        .insert(x.id.name().to_owned(), holdings(p, x.addr)?);
                }
                s.seconds.report += t.elapsed().as_secs_f64();
                // The round is the unit of durability: its state is saved first, then one
                // sync for all its commits where the ledger defers them
                // (`SyncPolicy::OnFlush`), nothing where each is durable; the previous
                // round's state goes once this one is durable.
                let t = Instant::now();
                if let Some(dir) = &opts.state {
                    let snap = Snapshot {
                        cfg_digest,
                        round,
                        now,
                        datasets: &datasets,
                        initial,
                    };
                    save_state(dir, p, learner, &*strategy, &global, snap, Some(&s))?;
                }
                p.backend_mut().flush()?;
                if let Some(dir) = &opts.state {
                    crate::resume::prune(dir, round)?;
                }
                s.seconds.ledger += t.elapsed().as_secs_f64();
                on_round(&s);
                rounds.push(s);
            }
        }

        // The replies that have arrived: updates go on the ledger (signed by their client),
        // then to the coordinator; commitments and reveals likewise. The replies of one poll
        // go on the ledger as one batch per kind (one durable commit on the embedded ledger
        // instead of one per transaction; the entries, and so the root, are the same).
        let t = Instant::now();
        let phase = coordinator.phase();
        let replies = transport.poll(now)?;
        let Some(s) = summary.as_mut() else {
            continue; // between rounds: nothing is expected
        };
        let dt = t.elapsed().as_secs_f64();
        match phase {
            Phase::Train => s.seconds.train += dt,
            _ => s.seconds.score += dt,
        }
        let t = Instant::now();
        let mut updates: Vec<(OnChain, ClientUpdate, UpdateFacts)> = Vec::new();
        let mut commits: Vec<(u32, Hash32)> = Vec::new();
        let mut reveals: Vec<(u32, Vec<Score>, Hash32)> = Vec::new();
        for reply in replies {
            match reply {
                Reply::Update(u) => {
                    let k = u.client;
                    let fresh = phase == Phase::Train
                        && u.round == round
                        && cohort_members.contains(&k)
                        && !onchain.iter().any(|x| x.client == k)
                        && !updates.iter().any(|(x, _, _)| x.client == k);
                    // A late, unsolicited, repeated or mislabelled reply is dropped.
                    if !fresh || sha256(&u.blob) != u.hash {
                        continue;
                    }
                    if let Some(dir) = blobs {
                        let path = dir.join(format!("{}.safetensors", u.hash));
                        std::fs::write(&path, &u.blob)
                            .map_err(|source| RunError::Io { path, source })?;
                    }
                    s.bytes += u.blob.len() as u64;
                    // A blob that does not decode is still recorded, as an empty update that
                    // validation refuses.
                    let decoded = learner.decode(&u.blob).ok();
                    let update_norm = decoded
                        .as_ref()
                        .map(|d| d.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt())
                        .filter(|n| n.is_finite());
                    let delta = decoded.unwrap_or_default();
                    let update = ClientUpdate::new(k, u.round, delta, u.num_samples);
                    let facts = UpdateFacts {
                        client: k,
                        samples: u.num_samples,
                        update_norm,
                        bytes: u.blob.len() as u64,
                        refused: None,
                    };
                    let x = OnChain {
                        client: k,
                        hash: u.hash,
                        blob: u.blob,
                        update: Some(update.clone()),
                    };
                    updates.push((x, update, facts));
                }
                Reply::Commit(c) => {
                    let v = c.validator;
                    if phase != Phase::Commit
                        || c.round != round
                        || v as usize >= validators.len()
                        || committed.contains(&v)
                        || commits.iter().any(|(w, _)| *w == v)
                    {
                        continue;
                    }
                    commits.push((v, c.commitment));
                }
                Reply::Reveal(r) => {
                    let v = r.validator;
                    if phase != Phase::Reveal
                        || r.round != round
                        || !committed.contains(&v)
                        || revealed.contains_key(&v)
                        || reveals.iter().any(|(w, _, _)| *w == v)
                    {
                        continue;
                    }
                    reveals.push((v, r.scores, r.salt));
                }
            }
        }
        if !updates.is_empty() {
            let calls = updates
                .iter()
                .map(|(x, _, f)| {
                    let call = Cohort::submitUpdateCall {
                        roundId: chain_round,
                        blobHash: b256(x.hash),
                        datasetId: datasets[x.client as usize],
                        numSamples: f.samples,
                    };
                    (&clients[x.client as usize].id, call)
                })
                .collect();
            let results = p.send_batch(calls)?;
            for ((x, update, facts), result) in updates.into_iter().zip(results) {
                match result {
                    Ok(_) => {
                        onchain.push(x);
                        s.updates.push(facts);
                        // Refusals by the coordinator are recorded through validation.
                        let _ = coordinator.handle(Event::Update(update));
                    }
                    // A client the protocol refuses (e.g. slashed below the minimum stake)
                    // sits the round out.
                    Err(ProtocolError::Reverted { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        if !commits.is_empty() {
            let calls = commits
                .iter()
                .map(|(v, c)| {
                    let call = Cohort::commitScoresCall {
                        roundId: chain_round,
                        commitment: b256(*c),
                    };
                    (&validators[*v as usize].id, call)
                })
                .collect();
            let results = p.send_batch(calls)?;
            for ((v, _), result) in commits.into_iter().zip(results) {
                match result {
                    Ok(_) => {
                        committed.insert(v);
                        coordinator.handle(Event::Committed { validator: v })?;
                    }
                    Err(ProtocolError::Reverted { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        if !reveals.is_empty() {
            let calls = reveals
                .iter()
                .map(|(v, scores, salt)| {
                    let call = Cohort::revealScoresCall {
                        roundId: chain_round,
                        scores: scores.iter().map(|x| x.0).collect(),
                        salt: b256(*salt),
                    };
                    (&validators[*v as usize].id, call)
                })
                .collect();
            let results = p.send_batch(calls)?;
            for ((v, scores, _), result) in reveals.into_iter().zip(results) {
                match result {
                    Ok(_) => {
                        revealed.insert(v, scores.iter().map(|x| x.to_f64()).collect());
                        coordinator.handle(Event::Revealed { validator: v })?;
                    }
                    // A reveal that does not match the commitment is refused by the
                    // contract: the validator counts as not having revealed.
                    Err(ProtocolError::Reverted { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        s.seconds.ledger += t.elapsed().as_secs_f64();
    }
    let mut final_holdings = BTreeMap::new();
    for x in clients.iter().chain(validators.iter()) {
        let (active, unbonding, _) = p.stake_of(x.addr)?;
        let bal = p.balance_of(x.addr)?;
        final_holdings.insert(x.id.name().to_owned(), fmt_tokens(bal + active + unbonding));
    }
    let head = p.backend().head()?;
    Ok(RunSummary {
        initial,
        rounds,
        final_holdings,
        ledger_root: head.root,
        ledger_entries: head.size,
    })
}

/// The score of an update: the relative loss reduction `(before - after) / before`, clamped to
/// [-1, 1]; a non-finite loss scores -1.
pub fn relative_gain(before: f64, after: f64) -> Score {
    if !(before.is_finite() && after.is_finite()) || before <= 0.0 {
        return Score::from_f64(-1.0);
    }
    Score::from_f64(((before - after) / before).clamp(-1.0, 1.0))
}

/// Fails on the first failed call of a set-up batch.
fn all_ok<T>(results: Vec<Result<T, ProtocolError>>) -> Result<Vec<T>, ProtocolError> {
    results.into_iter().collect()
}

fn no_round() -> FlError {
    FlError::InvalidConfig {
        what: "round",
        reason: "the coordinator issued a command outside an open round".into(),
    }
}

fn open_round(s: &mut Option<RoundSummary>) -> Result<&mut RoundSummary, FlError> {
    s.as_mut().ok_or_else(no_round)
}

fn holdings<B: LedgerBackend>(p: &mut Protocol<B>, a: Address) -> Result<f64, ProtocolError> {
    let (active, unbonding, _) = p.stake_of(a)?;
    let total = p.balance_of(a)? + active + unbonding;
    Ok(cohort_core::to_tokens_f64(total))
}

fn name_of(names: &BTreeMap<Address, String>, a: Address) -> String {
    names.get(&a).cloned().unwrap_or_else(|| a.to_string())
}
