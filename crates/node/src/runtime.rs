//! A run in one process: the parties of `cohort-node` composed around one ledger.
//!
//! [`run_in_process`] builds every party of a config, each with its own key from [`Keys`]:
//! the governance (which deploys the protocol, funds the coordinator and signs each party's
//! initial balance), the [`Coordinator`](crate::coordinator::Coordinator), and the clients and
//! validators ([`crate::party`]), attackers wrapped as [`crate::attack`] says. The clients and
//! validators answer through [`LocalParties`]: the plain [`Queues`] of the transport and a
//! table of parties to hand each request to. [`run_with_options`] runs the same with the
//! clients and validators behind any other [`Transport`]. This module also holds what a run
//! reports ([`RunSummary`] and its parts) and how it keeps its keys and files
//! ([`RunOptions`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use alloy_primitives::{B256, U256};
use cohort_blob::{BlobError, BlobStore, LocalDir};
use cohort_core::{Hash32, Identity, Score, tokens};
use cohort_ledger::protocol::{Cohort, Protocol, ProtocolError};
use cohort_ledger::{LedgerBackend, LedgerError, SignedCall};
use serde::{Deserialize, Serialize};

use cohort_fl::FlError;
pub use cohort_fl::blob::{decode_blob, encode_blob, encode_named_blob};
pub use cohort_fl::config::{
    AggregationConfig, AttackConfig, IncentiveConfig, RunConfig, StrategyConfig, ValidConfig,
};
use cohort_fl::events::{ProvenanceRecord, RunEvent};
use cohort_fl::learner::{Learner, Metrics};
use cohort_fl::shards::Shards;

use crate::attack::{AdversarialClient, CollusiveValidator, SybilRing};
use crate::coordinator::{Coordinator, Member, Roster};
use crate::party::{Client, PartyNode, Validator};
use crate::resume::Resume;
use crate::transport::{Party, Queues, Reply, Request, Transport, TransportError};

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
    /// The contract sampled another cohort than the coordinator planned from the same beacon
    /// (the roster on the ledger is not this run's clients in index order).
    #[error(
        "round {round}: the ledger sampled the cohort {drawn:?}, the coordinator planned \
         {planned:?} from the same beacon: the roster on the ledger is not this run's clients in \
         index order"
    )]
    CohortMismatch {
        /// The round.
        round: u64,
        /// The clients the contract sampled (roster indices).
        drawn: Vec<u32>,
        /// The clients the coordinator's plan sampled.
        planned: Vec<u32>,
    },
    /// The blob store failed.
    #[error("blob store: {0}")]
    Blob(#[from] BlobError),
    /// The run's events did not fold into its summary (a bug: the coordinator emits them).
    #[error("the run's summary: {0}")]
    Summary(#[from] crate::summary::Incomplete),
    /// A blob could not be written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// One round's outcome, folded from the round's [`RunEvent`]s by
/// [`SummaryBuilder`](crate::summary::SummaryBuilder) (all but `seconds`). Amounts are
/// integers in base units (10^18 per token), decimal strings in JSON.
// The private `legacy_rewards` field only refuses old summaries; that it also keeps other crates
// from building a summary by hand (they fold one from events) is intended.
#[allow(clippy::manual_non_exhaustive)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// Bytes of update blobs moved (clients to coordinator).
    pub bytes: u64,
    /// Bytes the same updates would have taken as uncompressed f32 blobs (the updates that
    /// decoded; 0 in a summary written before compressed updates existed).
    #[serde(default)]
    pub dense_bytes: u64,
    /// Clients in the order their updates were recorded on the ledger.
    pub submitted: Vec<u32>,
    /// The score matrix: `scores[v][i]` is validator `v`'s score of the `i`-th submitted
    /// update.
    pub scores: Vec<Vec<f64>>,
    /// Balance + stake of every participant after the round, base units.
    #[serde(with = "cohort_core::amount::decimal_map")]
    pub holdings: BTreeMap<String, U256>,
    /// Wall seconds per part of the round (not part of the replay contract, and not in the
    /// events: zero in a summary rebuilt from them).
    #[serde(default)]
    pub seconds: PhaseSeconds,
    /// Every update recorded on the ledger this round, in submission order: what its client
    /// claimed and sent.
    pub updates: Vec<UpdateFacts>,
    /// Reward and slash of every participant paid or slashed this round, by name, in base
    /// units.
    pub payouts: BTreeMap<String, Payout>,
    /// Where each recorded update came from and what became of it (`DIR/provenance.jsonl`).
    pub provenance: Vec<ProvenanceRecord>,
    /// Clients that sat the round out because their listed dataset does not allow its recipe
    /// (`[market]`; absent otherwise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<u32>,
    /// Royalties the round paid, by name, base units: each listed dataset's owner, and the
    /// fees under `coordinator` and `treasury` (`[market]`; absent otherwise).
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        with = "cohort_core::amount::decimal_map"
    )]
    pub royalties: BTreeMap<String, U256>,
    /// Summaries written before amounts were integers had `rewards` and `slashes` as
    /// formatted token strings and `holdings` as float tokens: such a summary is refused
    /// with an error naming the field, never read with amounts off by 10^18.
    #[serde(
        default,
        rename = "rewards",
        skip_serializing,
        deserialize_with = "refuse_formatted_rewards"
    )]
    pub(crate) legacy_rewards: (),
}

fn refuse_formatted_rewards<'de, D: serde::Deserializer<'de>>(_: D) -> Result<(), D::Error> {
    Err(serde::de::Error::custom(
        "field `rewards` (token amounts as formatted strings) is from a summary written before \
         cohort kept amounts as integers in base units (`payouts`, `holdings`); run it again \
         with this cohort",
    ))
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
    /// Bytes of the decoded update as an uncompressed f32 blob; `None` when it did not
    /// decode (or in a summary written before compressed updates existed).
    #[serde(default)]
    pub dense_bytes: Option<u64>,
    /// Why validation refused the update before scoring (wrong shape, non-finite values,
    /// wrong round), if it did.
    pub refused: Option<String>,
}

/// One participant's reward and slash in a round, in base units (decimal strings in JSON).
pub use cohort_fl::events::Amounts as Payout;

/// Where a round's wall time went.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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

/// The outcome of a run, folded from its [`RunEvent`]s by
/// [`RunSummaryBuilder`](crate::summary::RunSummaryBuilder) (all but the rounds' `seconds`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSummary {
    /// Test metrics of the initial model.
    pub initial: Metrics,
    /// Update bytes per client per round, as sent and as uncompressed f32 blobs (`None`
    /// when no update decoded, or in a summary written before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_bytes: Option<UpdateBytes>,
    /// Balance + stake of every participant after the set-up, base units, by name (empty in a
    /// summary written before cohort recorded it).
    #[serde(default, with = "cohort_core::amount::decimal_map")]
    pub initial_holdings: BTreeMap<String, U256>,
    /// Per round.
    pub rounds: Vec<RoundSummary>,
    /// Final balance + stake of every participant, base units, by name.
    #[serde(with = "cohort_core::amount::decimal_map")]
    pub final_holdings: BTreeMap<String, U256>,
    /// The ledger's root after the run.
    pub ledger_root: Hash32,
    /// Entries on the ledger.
    pub ledger_entries: u64,
    /// The parties that sat the run out, by name, and why (the ledger refused their
    /// enrolment or their dataset, or they were left out); empty when none, or on a resume.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub absent: BTreeMap<String, String>,
    /// The clients that took part without their listing (`[market]`) or their governance bond
    /// (`[governance]`), by name, and why the ledger refused it; empty when none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set_aside: BTreeMap<String, String>,
}

/// A run's update traffic, clients to coordinator: the mean bytes of an update blob (one
/// client's in one round), as sent and as the uncompressed f32 blob of the same update, over
/// every update that decoded; their ratio is what compression saved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateBytes {
    /// Updates counted (recorded and decoded, every round).
    pub updates: u64,
    /// Mean bytes of an update blob as sent.
    pub per_client_per_round: f64,
    /// Mean bytes the same updates take as f32 blobs (`[compression] update = "none"`).
    pub fp32_per_client_per_round: f64,
    /// `fp32_per_client_per_round / per_client_per_round`: how many times fewer bytes.
    pub ratio: f64,
}

impl UpdateBytes {
    /// The traffic of `rounds`' decoded updates; `None` when there is none.
    pub fn of(rounds: &[RoundSummary]) -> Option<Self> {
        let (mut n, mut sent, mut dense) = (0u64, 0u64, 0u64);
        for u in rounds.iter().flat_map(|r| &r.updates) {
            if let Some(d) = u.dense_bytes {
                n += 1;
                sent += u.bytes;
                dense += d;
            }
        }
        (n > 0 && sent > 0).then(|| Self {
            updates: n,
            per_client_per_round: sent as f64 / n as f64,
            fp32_per_client_per_round: dense as f64 / n as f64,
            ratio: dense as f64 / sent as f64,
        })
    }
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
    events: Option<EventSink>,
    pub(crate) blobs: Option<Box<dyn BlobStore>>,
    pub(crate) state: Option<PathBuf>,
    pub(crate) resume: Option<Resume>,
    roster: Option<Roster>,
    pub(crate) exclude: std::collections::BTreeSet<u32>,
    /// Digests of earlier configs a saved round may have been made with (a run extended to
    /// more rounds, [`Self::extended_from`]).
    earlier_configs: Vec<Hash32>,
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

    /// The clients and validators as the coordinator knows them, when they hold keys of their
    /// own (a networked federation's admission list) rather than keys from [`Keys`]: their
    /// number must be the config's.
    pub fn with_roster(mut self, roster: Roster) -> Self {
        self.roster = Some(roster);
        self
    }

    /// Leaves `clients` out of the run: they are not asked to enrol, not on the coordinator's
    /// roster and never sampled (the others keep their indices, data and keys). What exact
    /// unlearning by retraining runs: the federation without the forgotten client.
    pub fn excluding(mut self, clients: impl IntoIterator<Item = u32>) -> Self {
        self.exclude.extend(clients);
        self
    }

    /// Puts every update and global model blob into `store` (content-addressed; a local
    /// directory, [`LocalDir`], or S3-compatible storage, see `cohort_blob::open`).
    pub fn with_blobs(mut self, store: Box<dyn BlobStore>) -> Self {
        self.blobs = Some(store);
        self
    }

    /// Calls `sink` with every [`RunEvent`] of the run, as it happens.
    pub fn with_events(mut self, sink: impl FnMut(&RunEvent) + 'static) -> Self {
        self.events = Some(EventSink(Box::new(sink)));
        self
    }

    pub(crate) fn take_events(&mut self) -> Option<EventSink> {
        self.events.take()
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

    /// The run was extended to more rounds than it was started with: a saved round made
    /// under the same config with `rounds` rounds (each of `rounds`) is resumed too. Only the
    /// number of rounds may differ; anything else is still refused as another config.
    pub fn extended_from(mut self, cfg: &RunConfig, rounds: impl IntoIterator<Item = u64>) -> Self {
        for r in rounds {
            let mut earlier = cfg.clone();
            earlier.coordinator.rounds = r;
            self.earlier_configs
                .push(crate::resume::config_digest(&earlier));
        }
        self
    }

    /// Whether the run continues from a saved round.
    pub fn is_resuming(&self) -> bool {
        self.resume.is_some()
    }

    /// The keys the run signs with: those given, or derived from the config's seed.
    pub fn keys(&self, cfg: &RunConfig) -> Keys {
        self.keys.clone().unwrap_or(Keys::Seeded(cfg.seed))
    }
}

/// Where a run's [`RunEvent`]s go.
pub struct EventSink(pub(crate) Box<dyn FnMut(&RunEvent)>);

impl std::fmt::Debug for EventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventSink(..)")
    }
}

fn local_blobs(dir: Option<&Path>) -> Result<RunOptions, RunError> {
    let mut opts = RunOptions::new();
    if let Some(dir) = dir {
        opts = opts.with_blobs(Box::new(LocalDir::open(dir)?));
    }
    Ok(opts)
}

/// Runs the federated experiment `cfg` on `backend` with `learner`, its clients and
/// validators in this process, keys from the seed. Update and model blobs go to a
/// [`LocalDir`] at `blobs` when given. Progress is reported through `on_round`.
pub fn run<B: LedgerBackend, L: Learner + ?Sized>(
    cfg: &ValidConfig,
    backend: B,
    learner: &L,
    blobs: Option<&Path>,
    on_round: impl FnMut(&RoundSummary),
) -> Result<(Protocol<B>, RunSummary), RunError> {
    run_in_process(cfg, backend, learner, local_blobs(blobs)?, on_round)
}

/// [`run`] with [`RunOptions`]: every party of `cfg` in this process, each holding its own
/// key ([`parties`]), the clients and validators behind [`LocalParties`].
pub fn run_in_process<B: LedgerBackend, L: Learner + ?Sized>(
    cfg: &ValidConfig,
    backend: B,
    learner: &L,
    opts: RunOptions,
    on_round: impl FnMut(&RoundSummary),
) -> Result<(Protocol<B>, RunSummary), RunError> {
    let keys = opts.keys(cfg);
    let residuals = opts.state.as_ref().map(|d| d.join("residuals"));
    let mut host = LocalParties::new(parties_keeping(cfg, &keys, learner, residuals.as_deref()));
    run_with_options(cfg, backend, learner, &mut host, opts, on_round)
}

/// Runs the federated experiment `cfg` on `backend`, its clients and validators reached
/// through `transport` (see [`crate::transport`]). The coordinator uses `learner` only for
/// the model's shape, initial parameters, blob layout and test evaluation. Update blobs go to
/// a [`LocalDir`] at `blobs` when given. Progress is reported through `on_round`.
pub fn run_with<B: LedgerBackend, L: Learner + ?Sized>(
    cfg: &ValidConfig,
    backend: B,
    learner: &L,
    transport: &mut dyn Transport,
    blobs: Option<&Path>,
    on_round: impl FnMut(&RoundSummary),
) -> Result<(Protocol<B>, RunSummary), RunError> {
    run_with_options(
        cfg,
        backend,
        learner,
        transport,
        local_blobs(blobs)?,
        on_round,
    )
}

/// [`run_with`] with [`RunOptions`]: keys, the blob store and state directory, and a saved
/// round to continue from.
///
/// The governance and the coordinator are built here from `opts`' keys; the clients and
/// validators are whatever answers on `transport`. The ledger is flushed once after the
/// set-up and once per settled round. A run that stops with an error part-way through a round
/// (or the set-up) takes what it recorded of it back off the ledger
/// ([`LedgerBackend::discard_unflushed`], where the backend can), so that the ledger ends at
/// its last settled round, as after a kill, and `with_state` runs can continue from there. A
/// global model that becomes non-finite stops the run before the round is finalized
/// ([`RunError::NonFiniteModel`]): no client is rejected or slashed for it.
pub fn run_with_options<B: LedgerBackend, L: Learner + ?Sized>(
    cfg: &ValidConfig,
    backend: B,
    learner: &L,
    transport: &mut dyn Transport,
    mut opts: RunOptions,
    on_round: impl FnMut(&RoundSummary),
) -> Result<(Protocol<B>, RunSummary), RunError> {
    let keys = opts.keys(cfg);
    let gov = keys.identity("governance");
    let coord = keys.identity("coordinator");
    let roster = match opts.roster.take() {
        None => roster(cfg, &keys, &backend),
        Some(r) if (r.clients.len(), r.validators.len()) == (cfg.clients, cfg.validators) => r,
        Some(r) => {
            return Err(RunError::Fl(FlError::InvalidConfig {
                what: "roster",
                reason: format!(
                    "{} clients and {} validators are admitted, the config has {} and {}",
                    r.clients.len(),
                    r.validators.len(),
                    cfg.clients,
                    cfg.validators
                ),
            }));
        }
    };
    let digest = crate::resume::config_digest(cfg);
    let head = backend.head()?;
    let mut p = match &opts.resume {
        None => Protocol::deploy(backend, &gov)?,
        Some(r) => {
            let s = &r.saved;
            if s.config_sha256 != digest && !opts.earlier_configs.contains(&s.config_sha256) {
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
    let funding = match &opts.resume {
        None => govern(cfg, &mut p, &gov, &coord, &roster),
        Some(_) => Ok(Vec::new()),
    };
    let result = match funding {
        Err(e) => Err(e),
        Ok(funding) => {
            let mut c = Coordinator::new(cfg, p, coord, roster, learner)?;
            let exclude = std::mem::take(&mut opts.exclude);
            let r = c
                .exclude(&exclude)
                .and_then(|()| c.run(transport, &mut opts, funding, digest, head.time, on_round));
            p = c.into_protocol();
            r
        }
    };
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

/// The governance's part of the set-up: it funds the coordinator (the balance plus every
/// round's reward), approves it, sets the acceptance threshold, and signs each party's
/// initial balance for the coordinator to relay once it has registered.
fn govern<B: LedgerBackend>(
    cfg: &RunConfig,
    p: &mut Protocol<B>,
    gov: &Identity,
    coord: &Identity,
    roster: &Roster,
) -> Result<Vec<SignedCall>, RunError> {
    let inc = &cfg.incentives;
    let coord_addr = p.backend().address_of(coord);
    // The coordinator's balance, every round's reward pool, and the royalty fund it puts in
    // for the run's sponsor (`[market] fund`).
    let fund = cfg.market.as_ref().map_or(0, |m| m.fund);
    p.mint(
        gov,
        coord_addr,
        tokens(inc.initial_balance)
            + tokens(inc.reward_per_round) * U256::from(cfg.coordinator.rounds)
            + tokens(fund),
    )?;
    p.approve_coordinator(gov, coord_addr)?;
    let mut params = p.params()?;
    params.acceptThreshold = Score::from_f64(inc.accept_threshold).0;
    // Base units per 1.0 of score, from tokens per nat with six decimals.
    params.rewardPerScore =
        U256::from((inc.reward_per_nat * 1e6).round() as u128) * U256::from(1_000_000_000_000u64);
    p.set_params(gov, params)?;
    let ctx = p.context_for(p.backend().address_of(gov))?;
    let amount = tokens(inc.initial_balance);
    roster
        .clients
        .iter()
        .chain(&roster.validators)
        .enumerate()
        .map(|(i, m)| {
            let call = Cohort::mintCall {
                to: m.address,
                amount,
            };
            SignedCall::sign_sol(gov, p.address(), &call, &ctx.ahead(i as u64)?)
        })
        .collect::<Result<Vec<_>, LedgerError>>()
        .map_err(|e| RunError::Protocol(ProtocolError::Ledger(e)))
}

/// The public roster of `cfg`'s parties under `keys` on `backend`: what the coordinator knows.
pub fn roster<B: LedgerBackend>(cfg: &RunConfig, keys: &Keys, backend: &B) -> Roster {
    let member = |name: String| Member {
        address: backend.address_of(&keys.identity(&name)),
        name,
    };
    Roster {
        clients: (0..cfg.clients)
            .map(|k| member(format!("client-{k}")))
            .collect(),
        validators: (0..cfg.validators)
            .map(|v| member(format!("validator-{v}")))
            .collect(),
    }
}

/// The clients and validators of `cfg` on `learner`, each holding its own key from `keys`:
/// honest ones, and the config's attackers as the wrappers of [`crate::attack`] (an update
/// attack or a Sybil ring around a client; a colluding validator scoring for the attackers).
/// Data attacks were applied to the task (`Learner::poison`) when it was built; their
/// clients only stop stopping the run when their training diverges.
pub fn parties<'a, L: Learner + ?Sized>(
    cfg: &ValidConfig,
    keys: &Keys,
    learner: &'a L,
) -> Vec<Box<dyn PartyNode + 'a>> {
    parties_keeping(cfg, keys, learner, None)
}

/// [`parties`], whose clients keep their error-feedback residuals in `residuals` when given
/// ([`Client::keeping_residual_in`]; `cohort run` gives `DIR/state/residuals`), so that a
/// resumed run goes on with them.
pub fn parties_keeping<'a, L: Learner + ?Sized>(
    cfg: &ValidConfig,
    keys: &Keys,
    learner: &'a L,
    residuals: Option<&std::path::Path>,
) -> Vec<Box<dyn PartyNode + 'a>> {
    let ring = SybilRing::new();
    let everyone = (0..cfg.clients as u32)
        .map(Party::Client)
        .chain((0..cfg.validators as u32).map(Party::Validator));
    everyone
        .map(|p| {
            let id = keys.identity(&p.to_string());
            party_node_keeping(cfg, p, id, learner, &ring, false, residuals)
        })
        .collect()
}

/// Party `party` of `cfg` holding the key `id`, as [`parties`] makes it: an honest client or
/// validator, or the attacker the config makes of it. The clients of a Sybil attack share
/// `ring` (they must live in one process for it). A validator with `secret_salts` draws its
/// commitment salts from the operating system ([`Validator::with_secret_salts`]).
pub fn party_node<'a, L: Learner + ?Sized>(
    cfg: &ValidConfig,
    party: Party,
    id: Identity,
    learner: &'a L,
    ring: &SybilRing,
    secret_salts: bool,
) -> Box<dyn PartyNode + 'a> {
    party_node_keeping(cfg, party, id, learner, ring, secret_salts, None)
}

/// [`party_node`], a client keeping its error-feedback residual in `residuals` when given.
pub fn party_node_keeping<'a, L: Learner + ?Sized>(
    cfg: &ValidConfig,
    party: Party,
    id: Identity,
    learner: &'a L,
    ring: &SybilRing,
    secret_salts: bool,
    residuals: Option<&std::path::Path>,
) -> Box<dyn PartyNode + 'a> {
    let attack = cfg.attack.as_ref();
    // A checked config's shard count is in range.
    let shards = Shards::new(cfg.unlearning.shards, learner.layout())
        .unwrap_or_else(|_| Shards::none(learner.layout()));
    match party {
        Party::Client(k) => {
            let update_attack = attack.and_then(|a| a.attack.update());
            let sybils = attack.is_some_and(|a| a.sybil_stake.is_some());
            let mut c = Client::new(k, id, learner, cfg.seed, cfg.client_stake(k))
                .sharded(shards)
                .compressed(cfg.compression.compressor());
            if let Some(g) = &cfg.governance {
                c = c.bonding(tokens(g.bond));
            }
            if let Some(l) = cfg.listing(k) {
                // Its own build's recipe of the run: a client on another build refuses.
                let run_recipe = cfg
                    .market
                    .as_ref()
                    .and_then(|m| m.recipe)
                    .map_or_else(|| crate::market::recipe_of(cfg).0, B256::from);
                let recipes = match l.allow {
                    cohort_fl::config::AllowRecipes::Run => vec![run_recipe],
                    cohort_fl::config::AllowRecipes::None => Vec::new(),
                };
                c = c.listed(crate::party::ListingTerms {
                    price: tokens(l.price),
                    recipes,
                });
            }
            if let Some(dir) = residuals {
                c = c.keeping_residual_in(dir);
            }
            if let Some(p) = cfg.profile(k).filter(|p| p.attack.is_some()) {
                // A profiled attacker (`[[profile]] attack`), maybe attacking some rounds only.
                let a = p.attack.as_ref().and_then(|a| a.update());
                Box::new(
                    AdversarialClient::new(c.stop_if_diverged(false), a, None, cfg.seed)
                        .every(p.every),
                )
            } else if !cfg.is_attacker(k) {
                Box::new(c)
            } else if update_attack.is_some() || sybils {
                let c = c.stop_if_diverged(false);
                let ring = sybils.then(|| ring.clone());
                Box::new(AdversarialClient::new(c, update_attack, ring, cfg.seed))
            } else {
                Box::new(c.stop_if_diverged(false))
            }
        }
        Party::Validator(v) => {
            let colluding = attack.map_or(0, |a| a.colluding_validators);
            let attackers: std::collections::BTreeSet<u32> = (0..cfg.clients as u32)
                .filter(|&k| cfg.is_attacker(k))
                .collect();
            let mut x = Validator::new(v, id, learner, cfg.seed, cfg.incentives.validator_stake)
                .sharded(shards)
                .expecting(cfg.compression.update)
                .scoring(cfg.incentives.score);
            if secret_salts {
                x = x.with_secret_salts();
            }
            if (v as usize) < colluding {
                Box::new(CollusiveValidator::new(x, attackers))
            } else {
                Box::new(x)
            }
        }
    }
}

/// The in-process host of the clients and validators: the transport's plain [`Queues`] and a
/// table of parties; on each poll every queued request goes, in the order it was sent, to its
/// party, and the reply is queued back. It holds no party logic of its own.
pub struct LocalParties<'a> {
    queues: Queues,
    parties: BTreeMap<Party, Box<dyn PartyNode + 'a>>,
}

impl std::fmt::Debug for LocalParties<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalParties")
            .field("parties", &self.parties.keys().collect::<Vec<_>>())
            .field("queues", &self.queues)
            .finish()
    }
}

impl<'a> LocalParties<'a> {
    /// Hosts `parties` (one per [`Party`]; a later one with the same identity replaces an
    /// earlier one).
    pub fn new(parties: Vec<Box<dyn PartyNode + 'a>>) -> Self {
        Self {
            queues: Queues::new(),
            parties: parties.into_iter().map(|p| (p.party(), p)).collect(),
        }
    }
}

impl Transport for LocalParties<'_> {
    fn send(&mut self, request: Request) -> Result<(), TransportError> {
        let party = request.to();
        if !self.parties.contains_key(&party) {
            return Err(TransportError::UnknownParty { party });
        }
        self.queues.send(request)
    }

    fn poll(&mut self, now: u64) -> Result<Vec<Reply>, TransportError> {
        while let Some(request) = self.queues.next_request() {
            let party = request.to();
            let node = self
                .parties
                .get_mut(&party)
                .ok_or(TransportError::UnknownParty { party })?;
            let reply = node
                .handle(&request)
                .map_err(|source| TransportError::Party {
                    party,
                    round: request.round(),
                    source,
                })?;
            self.queues.put_reply(reply);
        }
        self.queues.poll(now)
    }
}

pub(crate) fn state_error(reason: impl Into<String>) -> RunError {
    RunError::Fl(FlError::InvalidConfig {
        what: "resume",
        reason: reason.into(),
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
