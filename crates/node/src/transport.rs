//! The transport port: how the coordinator side of a run reaches clients and validators.
//!
//! The runtime never calls a client's or a validator's code directly. It [`send`]s them
//! [`Request`]s (train on this global model; score these updates and commit; reveal) and
//! [`poll`]s for the [`Reply`]s that have arrived (an update blob with its metadata; a score
//! commitment; the revealed scores and salt). Messages are plain serde structs of bytes,
//! numbers and hashes, so a networked adapter (gRPC, say) can carry them as they are; models
//! and updates travel as the same safetensors blobs whose SHA-256 goes on the ledger.
//!
//! The port never blocks on a party: [`send`] only hands a request over, and [`poll`] returns
//! what has arrived by the virtual time `now`, possibly nothing. A party that never answers is
//! therefore not a hang: the runtime keeps ticking the [`Coordinator`](cohort_fl::Coordinator),
//! whose phase times out on the virtual clock (`train_timeout`, `commit_timeout`,
//! `reveal_timeout`), and the round goes on without it. A reply that comes too late (for a
//! phase that has closed, or another round) is dropped by the runtime.
//!
//! [`InProcess`] is the adapter that ships first: it runs the clients and validators of a
//! [`Learner`] in this process, queueing requests on [`send`] and doing the work on [`poll`],
//! in the order the requests were sent, so that a run replays bit for bit from its seed. The
//! attackers of a run's [`AttackConfig`](crate::runtime::AttackConfig) live here too, as the
//! clients and validators they are: update attacks, Sybils that share one update, colluding
//! validators. A networked adapter implements the same two methods over the wire; it must
//! authenticate each reply's sender (the `client` or `validator` field) and leave out replies
//! it cannot attribute.
//!
//! [`send`]: Transport::send
//! [`poll`]: Transport::poll

use std::collections::{BTreeMap, VecDeque};

use alloy_primitives::Address;
use cohort_core::{Hash32, Rng, Score, sha256};
use cohort_ledger::protocol::score_commitment;
use serde::{Deserialize, Serialize};

use cohort_fl::config::ValidConfig;
use cohort_fl::learner::Learner;
use cohort_fl::{ClientUpdate, FlError};

/// Who a message is for, or from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Party {
    /// Client `k` (its index in the run).
    Client(u32),
    /// Validator `v`.
    Validator(u32),
}

impl std::fmt::Display for Party {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Client(k) => write!(f, "client-{k}"),
            Self::Validator(v) => write!(f, "validator-{v}"),
        }
    }
}

/// Train on the round's global model and send back the update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainRequest {
    /// The coordinator's round number (from 1).
    pub round: u64,
    /// The round's id on the ledger.
    pub ledger_round: u64,
    /// The client asked.
    pub client: u32,
    /// SHA-256 of `global`, as opened on the ledger.
    pub global_hash: Hash32,
    /// The global model's safetensors blob.
    pub global: Vec<u8>,
}

/// A client's update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateReply {
    /// The round the update was trained for.
    pub round: u64,
    /// The sender.
    pub client: u32,
    /// SHA-256 of `blob`, which the runtime checks and records on the ledger.
    pub hash: Hash32,
    /// The delta as a safetensors blob.
    pub blob: Vec<u8>,
    /// Samples the client claims to have trained on.
    pub num_samples: u64,
}

/// One update a validator is asked to score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreItem {
    /// Who submitted it.
    pub client: u32,
    /// Its hash on the ledger.
    pub hash: Hash32,
    /// The update's blob, or `None` when the coordinator refused it in validation (wrong
    /// shape, NaN, wrong round): the protocol's rule is then to score it -1.
    pub blob: Option<Vec<u8>>,
}

/// Score the round's updates (in their ledger order) and commit to the scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreRequest {
    /// The coordinator's round number.
    pub round: u64,
    /// The round's id on the ledger.
    pub ledger_round: u64,
    /// The validator asked.
    pub validator: u32,
    /// SHA-256 of `global`.
    pub global_hash: Hash32,
    /// The global model the updates apply to, as a safetensors blob.
    pub global: Vec<u8>,
    /// The updates, in the order they were recorded on the ledger.
    pub updates: Vec<ScoreItem>,
}

/// A validator's commitment to its scores:
/// [`score_commitment`]`(ledger_round, validator address, scores, salt)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommitReply {
    /// The coordinator's round number.
    pub round: u64,
    /// The sender.
    pub validator: u32,
    /// The commitment, recorded on the ledger.
    pub commitment: Hash32,
}

/// Reveal the scores committed to in this round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RevealRequest {
    /// The coordinator's round number.
    pub round: u64,
    /// The round's id on the ledger.
    pub ledger_round: u64,
    /// The validator asked.
    pub validator: u32,
}

/// A validator's revealed scores; the contract checks them against the commitment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RevealReply {
    /// The coordinator's round number.
    pub round: u64,
    /// The sender.
    pub validator: u32,
    /// One score per update, in the request's order (fixed-point, loss units).
    pub scores: Vec<Score>,
    /// The commitment's salt.
    pub salt: Hash32,
}

/// What the coordinator side sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Request {
    /// To a client.
    Train(TrainRequest),
    /// To a validator.
    Score(ScoreRequest),
    /// To a validator.
    Reveal(RevealRequest),
}

impl Request {
    /// The recipient.
    pub fn to(&self) -> Party {
        match self {
            Self::Train(r) => Party::Client(r.client),
            Self::Score(r) => Party::Validator(r.validator),
            Self::Reveal(r) => Party::Validator(r.validator),
        }
    }
}

/// What comes back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reply {
    /// From a client.
    Update(UpdateReply),
    /// From a validator.
    Commit(CommitReply),
    /// From a validator.
    Reveal(RevealReply),
}

impl Reply {
    /// The sender.
    pub fn from(&self) -> Party {
        match self {
            Self::Update(r) => Party::Client(r.client),
            Self::Commit(r) => Party::Validator(r.validator),
            Self::Reveal(r) => Party::Validator(r.validator),
        }
    }
}

/// Why the transport failed. A party that is merely silent is not an error (its phase times
/// out); these are failures the run cannot go on from.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A party's own work failed (an in-process learner error: a model operation, a data
    /// file).
    #[error("{party} in round {round}: {source}")]
    Party {
        /// The party.
        party: Party,
        /// The round.
        round: u64,
        /// What failed.
        source: FlError,
    },
    /// A request named a party this transport does not know.
    #[error("{party} is not a party of this transport")]
    UnknownParty {
        /// The party.
        party: Party,
    },
    /// A request the party cannot act on (a reveal without a commitment, say).
    #[error("{party} cannot act on the request: {reason}")]
    BadRequest {
        /// The party.
        party: Party,
        /// Why.
        reason: String,
    },
    /// The link itself failed (for networked adapters).
    #[error("transport: {0}")]
    Link(String),
}

/// The port between the coordinator side and the clients and validators.
///
/// Contract: [`send`](Self::send) hands a request over and returns without waiting for the
/// party; [`poll`](Self::poll) returns the replies that arrived by virtual time `now`, each
/// once, and may return none. Neither blocks on a party, so a silent party is a phase timeout
/// on the coordinator's clock, never a hang. Replies to requests sent in one order are
/// returned in that order when they arrive together (the in-process adapter always does), so
/// that a run replays from its seed. Object-safe: the runtime takes `&mut dyn Transport`.
pub trait Transport {
    /// Hands `request` to its recipient ([`Request::to`]).
    fn send(&mut self, request: Request) -> Result<(), TransportError>;
    /// The replies that have arrived by `now` (virtual seconds).
    fn poll(&mut self, now: u64) -> Result<Vec<Reply>, TransportError>;
}

impl<T: Transport + ?Sized> Transport for &mut T {
    fn send(&mut self, request: Request) -> Result<(), TransportError> {
        (**self).send(request)
    }
    fn poll(&mut self, now: u64) -> Result<Vec<Reply>, TransportError> {
        (**self).poll(now)
    }
}

/// The in-process adapter: the clients and validators of `learner`, attackers included, run
/// in this process when [`poll`](Transport::poll) is called, in the order requests were sent.
pub struct InProcess<'a, L: Learner + ?Sized> {
    cfg: &'a ValidConfig,
    learner: &'a L,
    validators: Vec<Address>,
    queue: VecDeque<Request>,
    /// The last decoded global model, by hash (every client of a round gets the same one).
    global: Option<(Hash32, Vec<f32>)>,
    /// The update the round's first Sybil sent, which the other Sybils copy.
    sybil: Option<(u64, ClientUpdate)>,
    /// Each validator's committed scores and salt, until it reveals.
    committed: BTreeMap<u32, (u64, Vec<Score>, Hash32)>,
}

impl<L: Learner + ?Sized> std::fmt::Debug for InProcess<'_, L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcess")
            .field("validators", &self.validators)
            .field("queued", &self.queue.len())
            .finish_non_exhaustive()
    }
}

impl<'a, L: Learner + ?Sized> InProcess<'a, L> {
    /// The parties of run `cfg` on `learner`; `validators[v]` is validator `v`'s address on
    /// the ledger (its score commitment is bound to it).
    pub fn new(cfg: &'a ValidConfig, learner: &'a L, validators: Vec<Address>) -> Self {
        Self {
            cfg,
            learner,
            validators,
            queue: VecDeque::new(),
            global: None,
            sybil: None,
            committed: BTreeMap::new(),
        }
    }

    fn decode_global(&mut self, hash: Hash32, blob: &[u8]) -> Result<Vec<f32>, FlError> {
        match &self.global {
            Some((h, g)) if *h == hash => Ok(g.clone()),
            _ => {
                let g = self.learner.decode(blob)?;
                self.global = Some((hash, g.clone()));
                Ok(g)
            }
        }
    }

    fn train(&mut self, r: &TrainRequest) -> Result<UpdateReply, FlError> {
        let cfg = self.cfg;
        let k = r.client;
        let attacker = cfg.is_attacker(k);
        let sybils = cfg.attack.as_ref().is_some_and(|a| a.sybil_stake.is_some());
        let u = match &self.sybil {
            Some((round, first)) if sybils && attacker && *round == r.round => ClientUpdate {
                client: k,
                ..first.clone()
            },
            _ => {
                let global = self.decode_global(r.global_hash, &r.global)?;
                let mut rng = Rng::derive(cfg.seed, &format!("train/{}/{k}", r.round));
                let delta = self.learner.train(k, &global, &mut rng)?;
                // An honest client whose training diverges is the task's settings' fault, not
                // the client's: stop rather than let the validators reject and slash it.
                if !attacker && delta.iter().any(|x| !x.is_finite()) {
                    return Err(FlError::Diverged);
                }
                let mut u = ClientUpdate::new(k, r.round, delta, self.learner.num_samples(k));
                if let (true, Some(a)) = (
                    attacker,
                    cfg.attack.as_ref().and_then(|a| a.attack.update()),
                ) {
                    u = a.apply(&u, cfg.seed);
                }
                if sybils && attacker {
                    self.sybil = Some((r.round, u.clone()));
                }
                u
            }
        };
        let blob = self.learner.encode(&u.delta);
        Ok(UpdateReply {
            round: u.round,
            client: k,
            hash: sha256(&blob),
            blob,
            num_samples: u.num_samples,
        })
    }

    fn score(&mut self, r: &ScoreRequest) -> Result<CommitReply, FlError> {
        let cfg = self.cfg;
        let v = r.validator;
        let colluding = (v as usize) < cfg.attack.as_ref().map_or(0, |a| a.colluding_validators);
        let global = self.decode_global(r.global_hash, &r.global)?;
        let base = self.learner.holdout_loss(v, &global)?;
        let scores = r
            .updates
            .iter()
            .map(|item| {
                if colluding {
                    return Ok(Score::from_f64(if cfg.is_attacker(item.client) {
                        1.0
                    } else {
                        -1.0
                    }));
                }
                let Some(blob) = &item.blob else {
                    return Ok(Score::from_f64(-1.0));
                };
                // An update that does not decode to the model's shape is worthless.
                let delta = match self.learner.decode(blob) {
                    Ok(d) if d.len() == global.len() => d,
                    _ => return Ok(Score::from_f64(-1.0)),
                };
                let cand: Vec<f32> = global.iter().zip(&delta).map(|(a, b)| a + b).collect();
                let l = self.learner.holdout_loss(v, &cand)?;
                Ok(if l.is_finite() {
                    Score::from_f64(base - l)
                } else {
                    Score::from_f64(-1.0)
                })
            })
            .collect::<Result<Vec<Score>, FlError>>()?;
        let salt = score_salt(v, r.ledger_round, cfg.seed);
        let addr =
            self.validators
                .get(v as usize)
                .copied()
                .ok_or_else(|| FlError::InvalidConfig {
                    what: "validator",
                    reason: format!("{v} has no address"),
                })?;
        let commitment = score_commitment(r.ledger_round, addr, &scores, salt.into()).into();
        self.committed.insert(v, (r.round, scores, salt));
        Ok(CommitReply {
            round: r.round,
            validator: v,
            commitment,
        })
    }
}

/// The commitment salt of validator `v` in ledger round `round`: secret until the reveal,
/// derived from the run's seed so that a run replays.
pub fn score_salt(v: u32, round: u64, seed: u64) -> Hash32 {
    sha256(format!("validator-{v}/{round}/{seed}").as_bytes())
}

impl<L: Learner + ?Sized> Transport for InProcess<'_, L> {
    fn send(&mut self, request: Request) -> Result<(), TransportError> {
        let party = request.to();
        let known = match party {
            Party::Client(k) => (k as usize) < self.cfg.clients,
            Party::Validator(v) => (v as usize) < self.cfg.validators,
        };
        if !known {
            return Err(TransportError::UnknownParty { party });
        }
        self.queue.push_back(request);
        Ok(())
    }

    fn poll(&mut self, _now: u64) -> Result<Vec<Reply>, TransportError> {
        let mut out = Vec::with_capacity(self.queue.len());
        while let Some(req) = self.queue.pop_front() {
            let party = req.to();
            let reply = match &req {
                Request::Train(r) => self.train(r).map(Reply::Update),
                Request::Score(r) => self.score(r).map(Reply::Commit),
                Request::Reveal(r) => match self.committed.remove(&r.validator) {
                    Some((round, scores, salt)) if round == r.round => {
                        Ok(Reply::Reveal(RevealReply {
                            round,
                            validator: r.validator,
                            scores,
                            salt,
                        }))
                    }
                    _ => {
                        return Err(TransportError::BadRequest {
                            party,
                            reason: format!("no commitment in round {} to reveal", r.round),
                        });
                    }
                },
            };
            let round = match &req {
                Request::Train(r) => r.round,
                Request::Score(r) => r.round,
                Request::Reveal(r) => r.round,
            };
            out.push(reply.map_err(|source| TransportError::Party {
                party,
                round,
                source,
            })?);
        }
        Ok(out)
    }
}
