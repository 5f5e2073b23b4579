//! The transport port: what the coordinator and the other parties send each other, and the
//! in-process adapter, [`Queues`].
//!
//! The coordinator never calls a client's or a validator's code. It [`send`]s them
//! [`Request`]s (enrol; train on this global model; score these updates and commit; reveal)
//! and [`poll`]s for the [`Reply`]s that have arrived. Every reply that is to go on the ledger
//! carries a [`SignedCall`] its party signed with its own key under the [`SignWith`] context
//! the request brought: the coordinator relays it to the ledger and cannot change it (the
//! ledger checks the signature), and it checks before relaying that the call is the one the
//! reply claims (the blob's hash, the round) and that its author is the party the reply says
//! it is from. Messages are plain serde structs of bytes, numbers, hashes and signed calls, so
//! a networked adapter carries them as they are; models and updates travel as the same
//! safetensors blobs whose SHA-256 goes on the ledger.
//!
//! The port never blocks on a party: [`send`] only hands a request over, and [`poll`] returns
//! what has arrived by the virtual time `now`, possibly nothing. A party that never answers is
//! therefore not a hang: the coordinator's phase times out on the virtual clock
//! (`train_timeout`, `commit_timeout`, `reveal_timeout`) and the round goes on without it. A
//! reply that comes too late (for a phase that has closed, or another round) is dropped.
//!
//! [`Queues`] is the in-process adapter: two plain queues, requests in the order they were
//! sent and replies in the order they were made, with no party logic. Whoever composes a run
//! in one process ([`crate::runtime`]) hands each queued request to its party
//! ([`PartyNode`](crate::party::PartyNode)) and queues the reply. A networked adapter implements the same
//! two methods over the wire; it must authenticate each reply's sender and leave out replies
//! it cannot attribute.
//!
//! [`send`]: Transport::send
//! [`poll`]: Transport::poll

use std::collections::VecDeque;

use alloy_primitives::Address;
use cohort_core::Hash32;
use cohort_ledger::{SignedCall, TxContext};
use serde::{Deserialize, Serialize};

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

/// What a party signs its reply's ledger calls under: the protocol contract they call and the
/// ledger's context for the party (its next nonce and the ledger's clock, or a chain's fees;
/// see [`cohort_ledger::signer`]). The party checks the context before signing
/// ([`TxContext::check`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignWith {
    /// The protocol contract.
    pub contract: Address,
    /// The recipient's context.
    pub ctx: TxContext,
}

/// Join the run: register, stake, and (a client) commit to the dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrolRequest {
    /// The party asked.
    pub party: Party,
    /// What to sign under; the party signs its calls at this nonce and the following ones.
    pub sign: SignWith,
    /// The run's coordinator, whose governance a client bonds to (`[governance]`).
    #[serde(default)]
    pub run: Address,
}

/// A party's own registration, stake and dataset commitment, each signed by it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrolReply {
    /// The sender.
    pub party: Party,
    /// `register(roles, keyHash)`.
    pub register: SignedCall,
    /// `stake(amount)`.
    pub stake: SignedCall,
    /// `commitDataset(root, manifest, size)`: clients only.
    pub dataset: Option<SignedCall>,
    /// `listDataset(id, price, recipes)`: a client whose dataset the run's `[market]` lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listing: Option<SignedCall>,
    /// `govBond(run, amount)`: a client of a run with `[governance]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bond: Option<SignedCall>,
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
    /// What to sign the submission under.
    pub sign: SignWith,
    /// The round's training recipe, as recorded on the ledger (a run with a `[market]`): a
    /// client whose listed dataset does not allow it refuses the round.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipe: Option<alloy_primitives::B256>,
}

/// A client whose listed dataset does not allow the round's recipe sits the round out: its
/// signed `refuseRound(ledger_round, dataset)`, for the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusalReply {
    /// The round refused.
    pub round: u64,
    /// The sender.
    pub client: u32,
    /// `refuseRound(ledger_round, dataset)`, signed by the client.
    pub refusal: SignedCall,
}

/// A client's update and its signed submission.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateReply {
    /// The round the update was trained for.
    pub round: u64,
    /// The sender.
    pub client: u32,
    /// The delta as a safetensors blob.
    pub blob: Vec<u8>,
    /// `submitUpdate(ledger_round, sha256(blob), dataset, samples)`, signed by the client:
    /// the coordinator relays it only if it names this round and this blob.
    pub submission: SignedCall,
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
    /// What to sign the commitment under.
    pub sign: SignWith,
}

/// A validator's signed commitment to its scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommitReply {
    /// The coordinator's round number.
    pub round: u64,
    /// The sender.
    pub validator: u32,
    /// `commitScores(ledger_round, commitment)`, signed by the validator, where the
    /// commitment is `score_commitment(ledger_round, validator address, scores, salt)`.
    pub call: SignedCall,
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
    /// What to sign the reveal under.
    pub sign: SignWith,
}

/// A validator's signed reveal; the contract checks it against the commitment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RevealReply {
    /// The coordinator's round number.
    pub round: u64,
    /// The sender.
    pub validator: u32,
    /// `revealScores(ledger_round, scores, salt)`, signed by the validator: one score per
    /// update in the request's order (fixed-point, loss units).
    pub call: SignedCall,
}

/// What the coordinator sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Request {
    /// To any party, once, at set-up.
    Enrol(EnrolRequest),
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
            Self::Enrol(r) => r.party,
            Self::Train(r) => Party::Client(r.client),
            Self::Score(r) => Party::Validator(r.validator),
            Self::Reveal(r) => Party::Validator(r.validator),
        }
    }

    /// What the recipient is asked to sign its reply's calls under.
    pub fn sign_with(&self) -> &SignWith {
        match self {
            Self::Enrol(r) => &r.sign,
            Self::Train(r) => &r.sign,
            Self::Score(r) => &r.sign,
            Self::Reveal(r) => &r.sign,
        }
    }

    /// The round it belongs to (0 for the set-up).
    pub fn round(&self) -> u64 {
        match self {
            Self::Enrol(_) => 0,
            Self::Train(r) => r.round,
            Self::Score(r) => r.round,
            Self::Reveal(r) => r.round,
        }
    }
}

/// What comes back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
// One per party per round: boxing the enrolment would save nothing that matters.
#[allow(clippy::large_enum_variant)]
pub enum Reply {
    /// From any party.
    Enrol(EnrolReply),
    /// From a client.
    Update(UpdateReply),
    /// From a client whose listed dataset does not allow the round's recipe.
    Refusal(RefusalReply),
    /// From a validator.
    Commit(CommitReply),
    /// From a validator.
    Reveal(RevealReply),
}

impl Reply {
    /// The signed calls this reply carries, in the order they are to be included (an
    /// enrolment's are consecutive nonces).
    pub fn signed_calls(&self) -> Vec<&SignedCall> {
        match self {
            Self::Enrol(e) => {
                let mut v = vec![&e.register, &e.stake];
                v.extend(e.dataset.as_ref());
                v.extend(e.listing.as_ref());
                v.extend(e.bond.as_ref());
                v
            }
            Self::Update(u) => vec![&u.submission],
            Self::Refusal(r) => vec![&r.refusal],
            Self::Commit(c) => vec![&c.call],
            Self::Reveal(r) => vec![&r.call],
        }
    }

    /// The sender.
    pub fn from(&self) -> Party {
        match self {
            Self::Enrol(r) => r.party,
            Self::Update(r) => Party::Client(r.client),
            Self::Refusal(r) => Party::Client(r.client),
            Self::Commit(r) => Party::Validator(r.validator),
            Self::Reveal(r) => Party::Validator(r.validator),
        }
    }
}

/// Why the transport failed. A party that is merely silent is not an error (its phase times
/// out); these are failures the run cannot go on from.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A party hosted in this process could not answer (its learner failed, it could not
    /// sign, or the request was not one it acts on).
    #[error("{party} in round {round}: {source}")]
    Party {
        /// The party.
        party: Party,
        /// The round.
        round: u64,
        /// What failed.
        source: crate::party::PartyError,
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

/// The port between the coordinator and the clients and validators.
///
/// Contract: [`send`](Self::send) hands a request over and returns without waiting for the
/// party; [`poll`](Self::poll) returns the replies that arrived by virtual time `now`, each
/// once, and may return none. Neither blocks on a party, so a silent party is a phase timeout
/// on the coordinator's clock, never a hang. Replies to requests sent in one order are
/// returned in that order when they arrive together (the in-process composition always
/// does), so that a run replays from its seed. Object-safe: the coordinator takes
/// `&mut dyn Transport`.
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

impl<T: Transport + ?Sized> Transport for Box<T> {
    fn send(&mut self, request: Request) -> Result<(), TransportError> {
        (**self).send(request)
    }
    fn poll(&mut self, now: u64) -> Result<Vec<Reply>, TransportError> {
        (**self).poll(now)
    }
}

/// The in-process adapter: a queue of requests, in the order they were sent, and a queue of
/// replies, in the order they were put. No party logic: the coordinator's side is
/// [`Transport`]; the parties' side is [`Self::next_request`] and [`Self::put_reply`].
#[derive(Debug, Default)]
pub struct Queues {
    requests: VecDeque<Request>,
    replies: VecDeque<Reply>,
}

impl Queues {
    /// Empty queues.
    pub fn new() -> Self {
        Self::default()
    }

    /// The oldest request not yet taken.
    pub fn next_request(&mut self) -> Option<Request> {
        self.requests.pop_front()
    }

    /// Queues a party's reply for the coordinator's next poll.
    pub fn put_reply(&mut self, reply: Reply) {
        self.replies.push_back(reply);
    }

    /// Requests waiting to be taken.
    pub fn pending(&self) -> usize {
        self.requests.len()
    }
}

impl Transport for Queues {
    fn send(&mut self, request: Request) -> Result<(), TransportError> {
        self.requests.push_back(request);
        Ok(())
    }

    fn poll(&mut self, _now: u64) -> Result<Vec<Reply>, TransportError> {
        Ok(self.replies.drain(..).collect())
    }
}
