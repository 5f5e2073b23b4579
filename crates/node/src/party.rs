//! The parties that are not the coordinator: a [`Client`] and a [`Validator`], each a type
//! that owns its key, its view of the task (its own data) and its state, and signs its own
//! ledger calls. [`PartyNode`] is what a transport host hands requests to.
//!
//! A party's key goes into it at construction and never comes out: there is no accessor for
//! it, and what a party gives the coordinator are [`SignedCall`]s, which the coordinator can
//! relay or drop but not alter or make (the ledger checks the signature). The attackers of a
//! run are wrappers around these types ([`crate::attack`]), not branches inside them.
//!
//! ```compile_fail
//! // A client's key cannot be read back out of it.
//! fn steal<L: cohort_fl::learner::Learner>(c: &cohort_node::party::Client<'_, L>) {
//!     let _ = &c.id;
//! }
//! ```
//!
//! ```compile_fail
//! // Nor a validator's.
//! fn steal<L: cohort_fl::learner::Learner>(v: &cohort_node::party::Validator<'_, L>) {
//!     let _ = &v.id;
//! }
//! ```

use std::cell::OnceCell;
use std::sync::Arc;

use alloy_primitives::{Address, B256};
use alloy_sol_types::SolValue;
use cohort_core::{Hash32, Identity, Rng, Score, sha256, tokens};
use cohort_ledger::protocol::{Cohort, CohortRuns, roles, score_commitment};
use cohort_ledger::{LedgerError, SignedCall, TxContext};

use cohort_fl::compress::{Compressor, Residual, UpdateCodec, decode_update};
use cohort_fl::learner::Learner;
use cohort_fl::shards::Shards;
use cohort_fl::{ClientUpdate, FlError, Layout, NamedDelta};

use crate::transport::{
    CommitReply, EnrolReply, EnrolRequest, Party, RefusalReply, Reply, Request, RevealReply,
    RevealRequest, ScoreRequest, SignWith, TrainRequest, UpdateReply,
};

/// Why a party could not answer a request.
#[derive(Debug, thiserror::Error)]
pub enum PartyError {
    /// Its own work failed (a model operation, a data file, a diverged training).
    #[error(transparent)]
    Task(#[from] FlError),
    /// It could not sign under the context it was given (a malformed context, or a chain
    /// context without chain support).
    #[error("signing: {0}")]
    Sign(#[from] LedgerError),
    /// The request is not one this party acts on (a reveal without a commitment, a training
    /// request to a validator).
    #[error("{0}")]
    BadRequest(String),
}

/// A party that answers the coordinator's requests: what a transport host (the in-process
/// composition, or a network server in a process of its own) drives.
pub trait PartyNode {
    /// Who it is.
    fn party(&self) -> Party;
    /// Answers one request addressed to it.
    fn handle(&mut self, request: &Request) -> Result<Reply, PartyError>;
    /// What proves to a networked coordinator that this party holds its key. The signer can
    /// sign only session challenges ([`session_message`]), never a ledger call, and gives no
    /// access to the key: a party's network link holds it to answer the challenge of every
    /// reconnection while the party itself is busy.
    fn session_signer(&self) -> SessionSigner;
}

/// A party's capability to answer session challenges, and nothing else
/// ([`PartyNode::session_signer`]).
#[derive(Clone)]
pub struct SessionSigner {
    id: Identity,
}

impl std::fmt::Debug for SessionSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionSigner")
            .field("public_key", &hex::encode(self.id.public_key()))
            .finish()
    }
}

impl SessionSigner {
    /// The signer of `id`.
    pub fn new(id: &Identity) -> Self {
        Self { id: id.clone() }
    }

    /// The party's public key.
    pub fn public_key(&self) -> cohort_core::PublicKey {
        self.id.public_key()
    }

    /// The proof for the challenge `nonce` of `run`.
    pub fn prove(&self, run: &str, nonce: &[u8]) -> SessionProof {
        session_proof(&self.id, run, nonce)
    }
}

/// A party's answer to a coordinator's session challenge ([`PartyNode::authenticate`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionProof {
    /// The party's ed25519 public key.
    pub public_key: cohort_core::PublicKey,
    /// Its signature over [`session_message`].
    pub signature: [u8; 64],
}

/// What a party signs to open a networked session: the domain, the run's identifier, the
/// coordinator's nonce and the party's own public key, so that a signature proves the key's
/// holder answered this challenge of this run and cannot be replayed to another run or key.
pub fn session_message(run: &str, nonce: &[u8], public_key: &[u8]) -> Vec<u8> {
    let mut m = b"cohort-federation-v1/session".to_vec();
    m.extend_from_slice(&(run.len() as u32).to_be_bytes());
    m.extend_from_slice(run.as_bytes());
    m.extend_from_slice(nonce);
    m.extend_from_slice(public_key);
    m
}

/// `id`'s [`SessionProof`] for the challenge `nonce` of `run`.
fn session_proof(id: &Identity, run: &str, nonce: &[u8]) -> SessionProof {
    let public_key = id.public_key();
    SessionProof {
        public_key,
        signature: id.sign(&session_message(run, nonce, &public_key)),
    }
}

impl<T: PartyNode + ?Sized> PartyNode for Box<T> {
    fn party(&self) -> Party {
        (**self).party()
    }
    fn handle(&mut self, request: &Request) -> Result<Reply, PartyError> {
        (**self).handle(request)
    }
    fn session_signer(&self) -> SessionSigner {
        (**self).session_signer()
    }
}

fn sign<C: alloy_sol_types::SolCall>(
    id: &Identity,
    with: &SignWith,
    ahead: u64,
    call: &C,
) -> Result<SignedCall, LedgerError> {
    let ctx: TxContext = with.ctx.ahead(ahead)?;
    SignedCall::sign_sol(id, with.contract, call, &ctx)
}

/// A party's registration with `roles` and its stake of `stake` whole tokens, signed at the
/// context's nonce and the next one (after checking the context).
fn register_and_stake(
    id: &Identity,
    with: &SignWith,
    roles: u8,
    stake: u64,
) -> Result<(SignedCall, SignedCall), PartyError> {
    with.ctx.check()?;
    let register = sign(
        id,
        with,
        0,
        &Cohort::registerCall {
            roles,
            keyHash: id.key_hash(),
        },
    )?;
    let stake = sign(
        id,
        with,
        1,
        &Cohort::stakeCall {
            amount: tokens(stake),
        },
    )?;
    Ok((register, stake))
}

/// The last global model a party decoded, by hash: every request of a round carries the same.
#[derive(Default)]
struct GlobalCache(Option<(Hash32, Vec<f32>)>);

impl GlobalCache {
    /// The global model `blob` (of SHA-256 `hash`) in `layout`: its tensors must be the
    /// model's, by name and shape.
    fn get(
        &mut self,
        layout: &Arc<Layout>,
        hash: Hash32,
        blob: &[u8],
    ) -> Result<Vec<f32>, FlError> {
        match &self.0 {
            Some((h, g)) if *h == hash => Ok(g.clone()),
            _ => {
                let g = NamedDelta::decode(blob)?.into_layout(layout)?.values;
                self.0 = Some((hash, g.clone()));
                Ok(g)
            }
        }
    }
}

/// A client: its own key, its own data (client `index` of the task), its stake; it trains on
/// the global model it is sent and signs its own submission.
pub struct Client<'a, L: Learner + ?Sized> {
    index: u32,
    id: Identity,
    learner: &'a L,
    /// The model's tensors, shared by every update it makes.
    layout: Arc<Layout>,
    /// The run's shards: the global model holds a slice per shard, and it trains its own.
    shards: Shards,
    seed: u64,
    stake: u64,
    stop_if_diverged: bool,
    global: GlobalCache,
    /// The dataset commitment (root, shards) and the dataset's id for the address it was
    /// computed for.
    dataset: OnceCell<(Hash32, u64)>,
    /// How its updates travel (`[compression]`).
    compressor: Compressor,
    /// What it has not sent of its updates so far (error feedback): its own, never sent.
    residual: Residual,
    /// Where it keeps its residual between processes ([`Client::keeping_residual_in`]).
    residual_dir: Option<std::path::PathBuf>,
    /// Whether it has read its residual back from `residual_dir`.
    residual_loaded: bool,
    /// Its dataset's listing in the run's data market (`[market]`), if any.
    listing: Option<ListingTerms>,
    /// What it bonds to the run's governance at enrolment (`[governance]`), base units.
    bond: Option<alloy_primitives::U256>,
}

/// The terms a client lists its dataset on (`[[market.listing]]`): a price per round of use,
/// in base units, and the recipes it allows (none: it sits every round out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListingTerms {
    /// Base units per round that trains on the data.
    pub price: alloy_primitives::U256,
    /// The recipes allowed to train on it.
    pub recipes: Vec<B256>,
}

impl<L: Learner + ?Sized> std::fmt::Debug for Client<'_, L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("index", &self.index)
            .field("public_key", &hex_key(&self.id))
            .finish_non_exhaustive()
    }
}

fn hex_key(id: &Identity) -> String {
    id.public_key().iter().map(|b| format!("{b:02x}")).collect()
}

impl<'a, L: Learner + ?Sized> Client<'a, L> {
    /// Client `index` of `learner`, holding `id` (moved in; it never comes out), staking
    /// `stake` whole tokens. `seed` drives its training's randomness
    /// (`Rng::derive(seed, "train/{round}/{index}")`), so a run replays.
    pub fn new(index: u32, id: Identity, learner: &'a L, seed: u64, stake: u64) -> Self {
        Self {
            index,
            id,
            layout: learner.layout(),
            shards: Shards::none(learner.layout()),
            learner,
            seed,
            stake,
            stop_if_diverged: true,
            global: GlobalCache::default(),
            dataset: OnceCell::new(),
            compressor: Compressor::none(),
            residual: Residual::new(),
            residual_dir: None,
            residual_loaded: false,
            listing: None,
            bond: None,
        }
    }

    /// Keeps its error-feedback residual in `dir` as well as in memory, so that a run that
    /// stops and resumes goes on with it: after each update it sends it writes the residual
    /// for that round (`client-K.round-NNNNNN.residual`, little-endian f32, written to a
    /// temporary name and renamed) and keeps its last two such files; the first time it
    /// sends an update for round `N` it reads the newest one for a round before `N` (a round
    /// that is run again after a stop finds the residual of the round before it, not the one
    /// its cut-short attempt wrote).
    pub fn keeping_residual_in(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.residual_dir = Some(dir.into());
        self
    }

    /// Its residual files in `dir`, by round, oldest first.
    fn residual_files(
        &self,
        dir: &std::path::Path,
    ) -> Result<Vec<(u64, std::path::PathBuf)>, FlError> {
        let prefix = format!("client-{}.round-", self.index);
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(state_io(dir, &e)),
        };
        let mut out = Vec::new();
        for e in entries {
            let e = e.map_err(|e| state_io(dir, &e))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(round) = name
                .strip_prefix(&prefix)
                .and_then(|r| r.strip_suffix(".residual"))
                .and_then(|r| r.parse::<u64>().ok())
            {
                out.push((round, e.path()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Reads back its residual from before `round`, once.
    fn load_residual(&mut self, round: u64) -> Result<(), FlError> {
        let Some(dir) = self.residual_dir.clone() else {
            return Ok(());
        };
        if std::mem::replace(&mut self.residual_loaded, true) {
            return Ok(());
        }
        let files = self.residual_files(&dir)?;
        if let Some((_, path)) = files.iter().rev().find(|(r, _)| *r < round) {
            let bytes = std::fs::read(path).map_err(|e| state_io(path, &e))?;
            if !bytes.len().is_multiple_of(4) {
                return Err(FlError::State {
                    path: path.clone(),
                    reason: format!("{} bytes, not a whole number of f32 values", bytes.len()),
                });
            }
            let values = bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            self.residual = Residual::from_values(values);
        }
        Ok(())
    }

    /// Writes its residual after sending its update for `round`; keeps its last two files.
    fn save_residual(&self, round: u64) -> Result<(), FlError> {
        let Some(dir) = &self.residual_dir else {
            return Ok(());
        };
        std::fs::create_dir_all(dir).map_err(|e| state_io(dir, &e))?;
        let path = dir.join(format!("client-{}.round-{round:06}.residual", self.index));
        let tmp = path.with_extension("residual.tmp");
        let bytes: Vec<u8> = self
            .residual
            .values()
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        std::fs::write(&tmp, bytes).map_err(|e| state_io(&tmp, &e))?;
        std::fs::rename(&tmp, &path).map_err(|e| state_io(&path, &e))?;
        let files = self.residual_files(dir)?;
        for (_, old) in files.iter().take(files.len().saturating_sub(2)) {
            std::fs::remove_file(old).map_err(|e| state_io(old, &e))?;
        }
        Ok(())
    }

    /// Compresses its updates with `c` (`[compression]`; none by default), keeping what it
    /// does not send for its next update when `c` has error feedback.
    /// Bonds `amount` (base units) to the run's governance when it enrols (`[governance]`).
    pub fn bonding(mut self, amount: alloy_primitives::U256) -> Self {
        self.bond = Some(amount);
        self
    }

    /// Lists its dataset on `terms` in the run's data market: it signs the listing when it
    /// enrols, and refuses (signing the refusal) every round whose recipe the terms do not
    /// allow.
    pub fn listed(mut self, terms: ListingTerms) -> Self {
        self.listing = Some(terms);
        self
    }

    pub fn compressed(mut self, c: Compressor) -> Self {
        self.compressor = c;
        self
    }

    /// What it has not sent of its updates so far (empty without error feedback).
    pub fn residual(&self) -> &[f32] {
        self.residual.values()
    }

    /// Whether a training that diverges (a non-finite update) stops the run, as the task's
    /// settings' fault (default), or is sent as it is (for an attacker whose poisoned data
    /// may make it diverge).
    pub fn stop_if_diverged(mut self, yes: bool) -> Self {
        self.stop_if_diverged = yes;
        self
    }

    /// In a run of `shards` (`[unlearning] shards`): it trains its own shard's slice of the
    /// global model. `shards` must be over the task's layout.
    pub fn sharded(mut self, shards: Shards) -> Self {
        self.shards = shards;
        self
    }

    /// Its index in the run.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Its name (`client-3`, `validator-0`).
    pub fn name(&self) -> &str {
        self.id.name()
    }

    /// Its public key.
    pub fn public_key(&self) -> cohort_core::PublicKey {
        self.id.public_key()
    }

    fn commitment(&self) -> (Hash32, u64) {
        *self
            .dataset
            .get_or_init(|| self.learner.dataset_commitment(self.index))
    }

    fn manifest(&self, size: u64) -> Hash32 {
        sha256(format!("client-{}: {size} samples", self.index).as_bytes())
    }

    /// Its dataset's id on the ledger when it acts from `address`: the contract's
    /// `keccak256(abi.encode(owner, root, manifest, size))`.
    fn dataset_id(&self, address: Address) -> B256 {
        let (root, size) = self.commitment();
        let manifest = self.manifest(size);
        alloy_primitives::keccak256(
            (address, B256::from(root), B256::from(manifest), size).abi_encode_params(),
        )
    }

    /// Its registration (client and data owner), stake and dataset commitment, signed.
    pub fn enrol(&self, r: &EnrolRequest) -> Result<EnrolReply, PartyError> {
        let (register, stake) = register_and_stake(
            &self.id,
            &r.sign,
            roles::CLIENT | roles::DATA_OWNER,
            self.stake,
        )?;
        let (root, size) = self.commitment();
        let dataset = sign(
            &self.id,
            &r.sign,
            2,
            &Cohort::commitDatasetCall {
                merkleRoot: root.into(),
                manifestHash: self.manifest(size).into(),
                size,
            },
        )?;
        // The listing of the dataset it has just committed (its id follows from its address).
        let listing = match &self.listing {
            Some(terms) => Some(sign(
                &self.id,
                &r.sign,
                3,
                &CohortRuns::listDatasetCall {
                    datasetId: self.dataset_id(r.sign.ctx.address_of(&self.id)?),
                    pricePerRound: terms.price,
                    recipes: terms.recipes.clone(),
                },
            )?),
            None => None,
        };
        // Its bond to the run's governance, after the listing (if any).
        let bond = match self.bond {
            Some(amount) => Some(sign(
                &self.id,
                &r.sign,
                3 + u64::from(listing.is_some()),
                &CohortRuns::govBondCall { run: r.run, amount },
            )?),
            None => None,
        };
        Ok(EnrolReply {
            party: Party::Client(self.index),
            register,
            stake,
            dataset: Some(dataset),
            listing,
            bond,
        })
    }

    /// Its refusal of a round whose recipe its listing does not allow (`None`: it trains).
    pub fn refusal(&self, r: &TrainRequest) -> Result<Option<RefusalReply>, PartyError> {
        let (Some(terms), Some(recipe)) = (&self.listing, r.recipe) else {
            return Ok(None);
        };
        if terms.recipes.contains(&recipe) {
            return Ok(None);
        }
        r.sign.ctx.check()?;
        let address = r.sign.ctx.address_of(&self.id)?;
        let call = CohortRuns::refuseRoundCall {
            roundId: r.ledger_round,
            datasetId: self.dataset_id(address),
        };
        Ok(Some(RefusalReply {
            round: r.round,
            client: self.index,
            refusal: sign(&self.id, &r.sign, 0, &call)?,
        }))
    }

    /// Trains on the request's global model: its honest update (a named delta in the
    /// model's layout), not yet signed.
    pub fn train(&mut self, r: &TrainRequest) -> Result<ClientUpdate, FlError> {
        let global = self
            .global
            .get(self.shards.layout(), r.global_hash, &r.global)?;
        let k = self.index;
        let mut rng = Rng::derive(self.seed, &format!("train/{}/{k}", r.round));
        let mine = self.shards.slice(&global, self.shards.of(k));
        let delta = self.learner.train(k, mine, &mut rng)?;
        // An honest client whose training diverges is the task's settings' fault, not the
        // client's: stop rather than let the validators reject and slash it.
        if self.stop_if_diverged && delta.iter().any(|x| !x.is_finite()) {
            return Err(FlError::Diverged);
        }
        Ok(ClientUpdate::new(
            k,
            r.round,
            NamedDelta::new(Arc::clone(&self.layout), delta),
            self.learner.num_samples(k),
        ))
    }

    /// Encodes `update`'s named delta (its blob: one safetensors tensor per name, or the
    /// run's compressed form, [`cohort_fl::compress`], what it held back last time added
    /// first under error feedback) and signs its submission for the request's round.
    pub fn submit(
        &mut self,
        r: &TrainRequest,
        update: &ClientUpdate,
    ) -> Result<UpdateReply, PartyError> {
        let keep = self.compressor.feedback() && self.residual_dir.is_some();
        if keep {
            self.load_residual(r.round)?;
        }
        let blob =
            self.residual
                .compress(&self.compressor, &update.delta.layout, &update.delta.values);
        if keep {
            self.save_residual(r.round)?;
        }
        self.submit_blob(r, blob, update.num_samples)
    }

    /// Signs the submission of `blob` (an update already encoded), claiming `num_samples`,
    /// for the request's round.
    pub fn submit_blob(
        &self,
        r: &TrainRequest,
        blob: Vec<u8>,
        num_samples: u64,
    ) -> Result<UpdateReply, PartyError> {
        r.sign.ctx.check()?;
        let address = r.sign.ctx.address_of(&self.id)?;
        let call = Cohort::submitUpdateCall {
            roundId: r.ledger_round,
            blobHash: sha256(&blob).into(),
            datasetId: self.dataset_id(address),
            numSamples: num_samples,
        };
        Ok(UpdateReply {
            round: r.round,
            client: self.index,
            blob,
            submission: sign(&self.id, &r.sign, 0, &call)?,
        })
    }
}

impl<L: Learner + ?Sized> PartyNode for Client<'_, L> {
    fn party(&self) -> Party {
        Party::Client(self.index)
    }

    fn session_signer(&self) -> SessionSigner {
        SessionSigner::new(&self.id)
    }

    fn handle(&mut self, request: &Request) -> Result<Reply, PartyError> {
        match request {
            Request::Enrol(r) => self.enrol(r).map(Reply::Enrol),
            Request::Train(r) => {
                if let Some(refusal) = self.refusal(r)? {
                    return Ok(Reply::Refusal(refusal));
                }
                let u = self.train(r)?;
                self.submit(r, &u).map(Reply::Update)
            }
            other => Err(wrong_request(self.party(), other)),
        }
    }
}

pub(crate) fn wrong_request(party: Party, r: &Request) -> PartyError {
    let what = match r {
        Request::Enrol(_) => "enrol",
        Request::Train(_) => "train",
        Request::Score(_) => "score",
        Request::Reveal(_) => "reveal",
    };
    PartyError::BadRequest(format!("{party} does not act on a {what} request"))
}

/// What a validator committed to and has not yet revealed.
struct Committed {
    round: u64,
    ledger_round: u64,
    scores: Vec<Score>,
    salt: Hash32,
}

/// A validator: its own key, its own held-out data (validator `index` of the task), its
/// stake; it scores the round's updates, commits to the scores and reveals them, signing each.
pub struct Validator<'a, L: Learner + ?Sized> {
    index: u32,
    id: Identity,
    learner: &'a L,
    /// The model's tensors: an update that does not carry them scores -1.
    layout: Arc<Layout>,
    /// The run's shards: each update is scored against its client's shard's slice.
    shards: Shards,
    seed: u64,
    stake: u64,
    global: GlobalCache,
    committed: Option<Committed>,
    /// Salts from the operating system's random source instead of the seed.
    secret_salts: bool,
    /// The codec every update blob must have (`[compression] update`): another scores -1.
    codec: UpdateCodec,
    /// Score an update's share of the round's mean (`incentives.score = "share"`).
    share: bool,
}

impl<L: Learner + ?Sized> std::fmt::Debug for Validator<'_, L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validator")
            .field("index", &self.index)
            .field("public_key", &hex_key(&self.id))
            .finish_non_exhaustive()
    }
}

/// The commitment salt of validator `v` in ledger round `round`: secret until the reveal,
/// derived from the run's seed so that a run replays.
pub fn score_salt(v: u32, round: u64, seed: u64) -> Hash32 {
    sha256(format!("validator-{v}/{round}/{seed}").as_bytes())
}

impl<'a, L: Learner + ?Sized> Validator<'a, L> {
    /// Validator `index` of `learner`, holding `id` (moved in; it never comes out), staking
    /// `stake` whole tokens; `seed` derives its commitment salts.
    pub fn new(index: u32, id: Identity, learner: &'a L, seed: u64, stake: u64) -> Self {
        Self {
            index,
            id,
            layout: learner.layout(),
            shards: Shards::none(learner.layout()),
            learner,
            seed,
            stake,
            global: GlobalCache::default(),
            committed: None,
            secret_salts: false,
            codec: UpdateCodec::None,
            share: false,
        }
    }

    /// Scores by `rule` (`incentives.score`): the whole update, or its share of the round's
    /// mean, scaled back.
    pub fn scoring(mut self, rule: cohort_fl::config::ScoreRule) -> Self {
        self.share = rule == cohort_fl::config::ScoreRule::Share;
        self
    }

    /// Expects update blobs of `codec` (`[compression] update`; `none` by default): a blob of
    /// another codec scores -1, as the coordinator refuses it.
    pub fn expecting(mut self, codec: UpdateCodec) -> Self {
        self.codec = codec;
        self
    }

    /// Draws its commitment salts from the operating system's random source instead of
    /// deriving them from the seed ([`score_salt`]): in a real federation the seed is public,
    /// and a salt derived from it would let anyone open the commitment before the reveal.
    /// (`cohort run` keeps seeded salts, so that an experiment replays to the same root.)
    pub fn with_secret_salts(mut self) -> Self {
        self.secret_salts = true;
        self
    }

    /// In a run of `shards`: it scores each update against its client's shard's slice of the
    /// global model, so that no shard's verdicts depend on another's data. `shards` must be
    /// over the task's layout.
    pub fn sharded(mut self, shards: Shards) -> Self {
        self.shards = shards;
        self
    }

    /// Its index in the run.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Its name (`client-3`, `validator-0`).
    pub fn name(&self) -> &str {
        self.id.name()
    }

    /// Its public key.
    pub fn public_key(&self) -> cohort_core::PublicKey {
        self.id.public_key()
    }

    /// Its registration (validator) and stake, signed.
    pub fn enrol(&self, r: &EnrolRequest) -> Result<EnrolReply, PartyError> {
        let (register, stake) =
            register_and_stake(&self.id, &r.sign, roles::VALIDATOR, self.stake)?;
        Ok(EnrolReply {
            party: Party::Validator(self.index),
            register,
            stake,
            dataset: None,
            listing: None,
            bond: None,
        })
    }

    /// Its honest scores of the request's updates: the loss reduction each brings on its
    /// held-out data; -1 for an update validation refused, one that does not decode to the
    /// model's tensors (by name and shape), or one whose loss is not finite.
    pub fn score(&mut self, r: &ScoreRequest) -> Result<Vec<Score>, FlError> {
        let v = self.index;
        let global = self
            .global
            .get(self.shards.layout(), r.global_hash, &r.global)?;
        // Each shard's loss before any update, as its updates need it.
        let mut bases: std::collections::BTreeMap<u32, f64> = Default::default();
        r.updates
            .iter()
            .map(|item| {
                let Some(blob) = &item.blob else {
                    return Ok(Score::from_f64(-1.0));
                };
                let shard = self.shards.of(item.client);
                let slice = self.shards.slice(&global, shard);
                let delta = match decode_update(blob)
                    .and_then(|(d, codec)| Ok((d.into_layout(&self.layout)?, codec)))
                {
                    Ok((d, codec)) if d.values.len() == slice.len() && codec == self.codec => {
                        d.values
                    }
                    _ => return Ok(Score::from_f64(-1.0)),
                };
                let base = match bases.get(&shard) {
                    Some(&b) => b,
                    None => {
                        let b = self.learner.holdout_loss(v, slice)?;
                        bases.insert(shard, b);
                        b
                    }
                };
                // The whole update, or its share of the round's mean (scaled back after).
                let n = if self.share {
                    r.updates.len().max(1)
                } else {
                    1
                };
                let w = 1.0 / n as f32;
                let cand: Vec<f32> = slice.iter().zip(&delta).map(|(a, b)| a + w * b).collect();
                let l = self.learner.holdout_loss(v, &cand)?;
                Ok(if l.is_finite() {
                    Score::from_f64((base - l) * n as f64)
                } else {
                    Score::from_f64(-1.0)
                })
            })
            .collect()
    }

    /// Commits to `scores` (one per update of the request), signed; keeps them and the salt
    /// for the reveal.
    pub fn commit(
        &mut self,
        r: &ScoreRequest,
        scores: Vec<Score>,
    ) -> Result<CommitReply, PartyError> {
        r.sign.ctx.check()?;
        if scores.len() != r.updates.len() {
            return Err(PartyError::BadRequest(format!(
                "{} scores for {} updates",
                scores.len(),
                r.updates.len()
            )));
        }
        let salt = if self.secret_salts {
            let mut b = [0u8; 32];
            getrandom::fill(&mut b).map_err(|e| {
                PartyError::BadRequest(format!(
                    "no salt: the operating system's random source failed: {e}"
                ))
            })?;
            Hash32(b)
        } else {
            score_salt(self.index, r.ledger_round, self.seed)
        };
        let address = r.sign.ctx.address_of(&self.id)?;
        let commitment = score_commitment(r.ledger_round, address, &scores, salt.into());
        let call = sign(
            &self.id,
            &r.sign,
            0,
            &Cohort::commitScoresCall {
                roundId: r.ledger_round,
                commitment,
            },
        )?;
        self.committed = Some(Committed {
            round: r.round,
            ledger_round: r.ledger_round,
            scores,
            salt,
        });
        Ok(CommitReply {
            round: r.round,
            validator: self.index,
            call,
        })
    }

    /// Reveals what it committed to in the request's round, signed.
    pub fn reveal(&mut self, r: &RevealRequest) -> Result<RevealReply, PartyError> {
        r.sign.ctx.check()?;
        let c = match self.committed.take() {
            Some(c) if c.round == r.round && c.ledger_round == r.ledger_round => c,
            other => {
                self.committed = other;
                return Err(PartyError::BadRequest(format!(
                    "no commitment in round {} to reveal",
                    r.round
                )));
            }
        };
        let call = sign(
            &self.id,
            &r.sign,
            0,
            &Cohort::revealScoresCall {
                roundId: r.ledger_round,
                scores: c.scores.iter().map(|x| x.0).collect(),
                salt: c.salt.into(),
            },
        )?;
        Ok(RevealReply {
            round: r.round,
            validator: self.index,
            call,
        })
    }
}

impl<L: Learner + ?Sized> PartyNode for Validator<'_, L> {
    fn party(&self) -> Party {
        Party::Validator(self.index)
    }

    fn session_signer(&self) -> SessionSigner {
        SessionSigner::new(&self.id)
    }

    fn handle(&mut self, request: &Request) -> Result<Reply, PartyError> {
        match request {
            Request::Enrol(r) => self.enrol(r).map(Reply::Enrol),
            Request::Score(r) => {
                let scores = self.score(r)?;
                self.commit(r, scores).map(Reply::Commit)
            }
            Request::Reveal(r) => self.reveal(r).map(Reply::Reveal),
            other => Err(wrong_request(self.party(), other)),
        }
    }
}

/// A saved-state file that could not be read or written.
fn state_io(path: &std::path::Path, e: &std::io::Error) -> FlError {
    FlError::State {
        path: path.to_owned(),
        reason: e.to_string(),
    }
}
