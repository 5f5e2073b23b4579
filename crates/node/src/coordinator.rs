//! The coordinator: a party with its own key and nothing else's. It opens rounds, sends the
//! clients and validators their requests through the [`Transport`], checks what comes back,
//! relays the calls the parties signed to the ledger, validates and aggregates the updates,
//! finalizes and settles, and writes the blobs and the run's state.
//!
//! Per round, the coordinator opens the round on the ledger with the global model's hash; the
//! sampled clients train and send their delta as a content-addressed safetensors blob with
//! their signed submission of its hash, dataset and sample count; validators score every
//! update by the loss reduction it brings on their own holdout, commit to the scores and
//! reveal them, signing each; the contract takes the stake-weighted median and accepts or
//! rejects; the coordinator aggregates the accepted updates with the configured strategy and
//! finalizes with the new model's hash; settlement pays and slashes. Time on the ledger is the
//! run's virtual clock, so a run replays bit for bit from its seed.
//!
//! It knows the other parties only by their public [`Roster`] entries (name and address). A
//! call it relays for a party must be signed by that party: it checks the author before
//! relaying and the ledger checks the signature, so the coordinator cannot forge a party's
//! submission, commitment, reveal, registration or stake, and a party's forged or malformed
//! call is dropped (the party sits the phase out) instead of stopping the run.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Instant;

use alloy_primitives::{Address, B256, U256};
use alloy_sol_types::SolCall;
use cohort_blob::BlobStore;
use cohort_core::{Hash32, Identity, Score, sha256, tokens};
use cohort_ledger::protocol::{
    Cohort, Cohort::CohortEvents, CohortRuns, GovParams, Protocol, ProtocolError,
    accepted_set_hash, roles,
};
use cohort_ledger::{LedgerBackend, LedgerError, SignedCall, TxContext};

use cohort_fl::compress::decode_update;
use cohort_fl::config::ValidConfig;
use cohort_fl::coordinator::{Command, Coordinator as Machine, Event, Phase};
use cohort_fl::events::{Amounts, ClientContribution, RunEvent};
use cohort_fl::learner::{Learner, Metrics};
use cohort_fl::shards::Shards;
use cohort_fl::strategy::Strategy;
use cohort_fl::{ClientUpdate, FlError, Layout, NamedDelta};

use crate::resume::SavedRound;
use crate::runtime::{
    EventSink, PhaseSeconds, RoundSummary, RunError, RunOptions, RunSummary, state_error,
};
use crate::summary::{Incomplete, RunSummaryBuilder};
use crate::transport::{
    EnrolRequest, Party, Reply, Request, RevealRequest, ScoreItem, ScoreRequest, SignWith,
    TrainRequest, Transport,
};

/// A party as the coordinator knows it: public facts only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its name in the run (`client-3`, `validator-0`).
    pub name: String,
    /// The address it acts from on this ledger.
    pub address: Address,
}

/// The parties of a run as the coordinator knows them: `clients[k]` is client `k`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Roster {
    /// The clients, by index.
    pub clients: Vec<Member>,
    /// The validators, by index.
    pub validators: Vec<Member>,
}

impl Roster {
    /// The member `party` is, if listed.
    pub fn member(&self, party: Party) -> Option<&Member> {
        match party {
            Party::Client(k) => self.clients.get(k as usize),
            Party::Validator(v) => self.validators.get(v as usize),
        }
    }

    fn everyone(&self) -> impl Iterator<Item = (Party, &Member)> {
        let clients = self
            .clients
            .iter()
            .enumerate()
            .map(|(k, m)| (Party::Client(k as u32), m));
        let validators = self
            .validators
            .iter()
            .enumerate()
            .map(|(v, m)| (Party::Validator(v as u32), m));
        clients.chain(validators)
    }
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
    /// Its submission's position on the ledger.
    entry: u64,
    /// Samples it claimed.
    samples: u64,
    /// L2 norm of the decoded update (`None`: it did not decode or is not finite).
    norm: Option<f64>,
    /// Bytes of the decoded update as an f32 blob (`None`: it did not decode).
    dense_bytes: Option<u64>,
    /// Its index among the round's updates on the ledger: the order the ledger recorded them
    /// in, which the validators' score vectors follow. (The client-index order when the
    /// coordinator relays every submission; on a chain, parties that submit their own
    /// transactions (`--chain-rpc`) are included in the order the chain mined them.)
    index: u32,
}

/// Whether the ledger refused a relayed call because of the call itself (its signature,
/// nonce, time, target or a revert): the party's fault, so the party sits the phase out.
/// Anything else (storage, I/O, the chain's node) is the coordinator's and stops the run.
pub fn refused_by_ledger(e: &ProtocolError) -> bool {
    match e {
        ProtocolError::Reverted { .. }
        | ProtocolError::RevertedRaw { .. }
        | ProtocolError::WrongCall { .. }
        | ProtocolError::Decode { .. } => true,
        ProtocolError::Ledger(l) => matches!(
            l,
            LedgerError::BadSignature { .. }
                | LedgerError::Nonce { .. }
                | LedgerError::WrongOrigin { .. }
                | LedgerError::WrongChain { .. }
                | LedgerError::TimeAhead { .. }
                | LedgerError::TimeWentBackwards { .. }
                | LedgerError::Invalid { .. }
                | LedgerError::Exec(_)
        ),
        #[allow(unreachable_patterns)]
        _ => false,
    }
}

/// Decodes the call `signed` makes of function `C`, if it is one and comes from `author`.
fn decode_call<C: SolCall>(signed: &SignedCall, author: Address) -> Option<C> {
    if signed.author() != author {
        return None;
    }
    let (_, input) = signed.target_and_input().ok()?;
    C::abi_decode(&input).ok()
}

/// The coordinator of one run: its key, the protocol on its ledger, the roster, and the task
/// for the model's shape, blob layout and test evaluation (never a party's data).
pub struct Coordinator<'a, B: LedgerBackend, L: Learner + ?Sized> {
    cfg: &'a ValidConfig,
    p: Protocol<B>,
    key: Identity,
    address: Address,
    roster: Roster,
    learner: &'a L,
    absent: Vec<(Party, String)>,
    /// Clients whose listing (`[market]`) or governance bond (`[governance]`) the ledger
    /// refused: they take part unlisted, or without a vote (the summary's `set_aside`).
    set_aside: Vec<(Party, String)>,
    /// Clients left out of the run ([`Self::exclude`]).
    excluded: BTreeSet<u32>,
}

impl<B: LedgerBackend, L: Learner + ?Sized> std::fmt::Debug for Coordinator<'_, B, L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("address", &self.address)
            .field("roster", &self.roster)
            .finish_non_exhaustive()
    }
}

impl<'a, B: LedgerBackend, L: Learner + ?Sized> Coordinator<'a, B, L> {
    /// The coordinator of run `cfg` on `protocol`, holding its own `key` (moved in) and the
    /// parties' public `roster`, which must list `cfg.clients` clients and `cfg.validators`
    /// validators.
    pub fn new(
        cfg: &'a ValidConfig,
        protocol: Protocol<B>,
        key: Identity,
        roster: Roster,
        learner: &'a L,
    ) -> Result<Self, RunError> {
        if roster.clients.len() != cfg.clients || roster.validators.len() != cfg.validators {
            return Err(RunError::Fl(FlError::InvalidConfig {
                what: "roster",
                reason: format!(
                    "{} clients and {} validators listed, the config has {} and {}",
                    roster.clients.len(),
                    roster.validators.len(),
                    cfg.clients,
                    cfg.validators
                ),
            }));
        }
        let address = protocol.backend().address_of(&key);
        Ok(Self {
            cfg,
            p: protocol,
            key,
            address,
            roster,
            learner,
            absent: Vec::new(),
            set_aside: Vec::new(),
            excluded: BTreeSet::new(),
        })
    }

    /// Its address on the ledger.
    pub fn address(&self) -> Address {
        self.address
    }

    /// The roster.
    pub fn roster(&self) -> &Roster {
        &self.roster
    }

    /// The protocol, to read.
    pub fn protocol(&self) -> &Protocol<B> {
        &self.p
    }

    /// The protocol, to hand back when the run ends.
    pub fn into_protocol(self) -> Protocol<B> {
        self.p
    }

    /// What the party at `who` signs its next call under (a relay hands this out).
    pub fn context_for(&self, who: Address) -> Result<TxContext, RunError> {
        Ok(self.p.context_for(who)?)
    }

    fn sign_with(&self, who: Address) -> Result<SignWith, RunError> {
        Ok(SignWith {
            contract: self.p.address(),
            ctx: self.p.context_for(who)?,
        })
    }

    /// Leaves `clients` out of the run: not asked to enrol, not on the roster, never sampled.
    /// Refuses an index that is not a client, and leaving out every client.
    pub fn exclude(&mut self, clients: &BTreeSet<u32>) -> Result<(), RunError> {
        let n = self.roster.clients.len();
        if let Some(k) = clients.iter().find(|&&k| k as usize >= n) {
            return Err(RunError::Fl(FlError::InvalidConfig {
                what: "exclude",
                reason: format!("client {k} is not one of the run's {n} clients"),
            }));
        }
        if clients.len() >= n {
            return Err(RunError::Fl(FlError::InvalidConfig {
                what: "exclude",
                reason: format!("all {n} clients left out: nobody would train"),
            }));
        }
        self.excluded = clients.clone();
        Ok(())
    }

    /// The clients that take part, in index order: the population cohorts are drawn from and,
    /// in that order, the coordinator's roster on the ledger.
    fn population(&self) -> Vec<u32> {
        (0..self.roster.clients.len() as u32)
            .filter(|k| !self.excluded.contains(k))
            .collect()
    }

    /// Registers the coordinator itself and publishes its roster of clients on the ledger,
    /// in client-index order (its own calls, signed with its own key): the contract samples
    /// every round's cohort from that roster and refuses an update from a client outside the
    /// round's cohort. The roster is fixed from the first round on.
    pub fn register(&mut self) -> Result<(), RunError> {
        self.p.register(&self.key, roles::COORDINATOR)?;
        let clients: Vec<Address> = self
            .population()
            .into_iter()
            .filter_map(|k| self.roster.clients.get(k as usize).map(|m| m.address))
            .collect();
        self.p.extend_roster(&self.key, &clients)?;
        Ok(())
    }

    /// Relays the funder's signed `mint` calls (in `cohort run`, governance gives each party
    /// its initial balance), as one batch; every one must go through.
    pub fn relay_funding(&mut self, calls: Vec<SignedCall>) -> Result<(), RunError> {
        for r in self.p.relay_batch::<Cohort::mintCall>(calls)? {
            r?;
        }
        Ok(())
    }

    /// Asks every party of the roster to enrol, and relays what each signed: the
    /// registrations, then the stakes, then the clients' dataset commitments, one batch each
    /// (the order the ledger records them in). Every party must enrol: one that does not
    /// answer, answers for someone else, or whose call the ledger refuses stops the set-up
    /// with an error naming it. Returns each client's dataset id.
    pub fn enrol(
        &mut self,
        transport: &mut dyn Transport,
        now: u64,
    ) -> Result<Vec<B256>, RunError> {
        let excluded = &self.excluded;
        let everyone: Vec<(Party, Address)> = self
            .roster
            .everyone()
            .filter(|(p, _)| !matches!(p, Party::Client(k) if excluded.contains(k)))
            .map(|(p, m)| (p, m.address))
            .collect();
        for &(party, address) in &everyone {
            transport.send(Request::Enrol(EnrolRequest {
                party,
                sign: self.sign_with(address)?,
                run: self.address,
            }))?;
        }
        let mut got: BTreeMap<Party, crate::transport::EnrolReply> = BTreeMap::new();
        for reply in transport.poll(now)? {
            if let Reply::Enrol(e) = reply {
                got.entry(e.party).or_insert(e);
            }
        }
        // A party that did not enrol in time, or whose enrolment is malformed or refused by
        // the ledger, sits the run out (it is not registered, so it cannot submit or score);
        // the others go on.
        let mut absent: Vec<(Party, String)> = Vec::new();
        let mut registers = Vec::new();
        let mut stakes = Vec::new();
        let mut datasets = Vec::new();
        let mut listings = Vec::new();
        let mut bonds = Vec::new();
        for &(party, address) in &everyone {
            let Some(e) = got.remove(&party) else {
                absent.push((party, "did not enrol in time".into()));
                continue;
            };
            let mut calls = vec![&e.register, &e.stake];
            calls.extend(e.dataset.as_ref());
            if let Some(c) = calls.iter().find(|c| c.author() != address) {
                absent.push((
                    party,
                    format!(
                        "a call signed by {}, not by the party ({address})",
                        c.author()
                    ),
                ));
                continue;
            }
            match (party, &e.dataset) {
                (Party::Client(_), None) => {
                    absent.push((party, "no dataset commitment".into()));
                    continue;
                }
                (Party::Validator(_), Some(_)) => {
                    absent.push((party, "a validator commits no dataset".into()));
                    continue;
                }
                _ => {}
            }
            registers.push((party, e.register));
            stakes.push((party, e.stake));
            datasets.extend(e.dataset.map(|d| (party, d)));
            listings.extend(e.listing.map(|l| (party, l)));
            bonds.extend(e.bond.map(|b| (party, b)));
        }
        let mut refused = |who: &[Party], errors: Vec<Option<String>>| {
            let mut out = BTreeSet::new();
            for (party, r) in who.iter().zip(errors) {
                if let Some(e) = r {
                    absent.push((*party, format!("the ledger refused its enrolment: {e}")));
                    out.insert(*party);
                }
            }
            out
        };
        let (who, calls): (Vec<Party>, Vec<SignedCall>) = registers.into_iter().unzip();
        let results = self.p.relay_batch::<Cohort::registerCall>(calls)?;
        let out = refused(&who, errors(results));
        let (who, calls): (Vec<Party>, Vec<SignedCall>) =
            stakes.into_iter().filter(|(p, _)| !out.contains(p)).unzip();
        let results = self.p.relay_batch::<Cohort::stakeCall>(calls)?;
        let out2 = refused(&who, errors(results));
        let (who, calls): (Vec<Party>, Vec<SignedCall>) = datasets
            .into_iter()
            .filter(|(p, _)| !out.contains(p) && !out2.contains(p))
            .unzip();
        let results = self.p.relay_batch::<Cohort::commitDatasetCall>(calls)?;
        let mut ids: BTreeMap<Party, B256> = BTreeMap::new();
        for (party, r) in who.iter().zip(results) {
            match r {
                Ok(sent) => {
                    ids.insert(*party, sent.value);
                }
                Err(e) => absent.push((*party, format!("the ledger refused its dataset: {e}"))),
            }
        }
        // The listings of the datasets just committed (`[market]`), signed by their owners: a
        // client whose listing is refused takes part unlisted.
        let (who, calls): (Vec<Party>, Vec<SignedCall>) = listings
            .into_iter()
            .filter(|(p, _)| ids.contains_key(p))
            .unzip();
        if !calls.is_empty() {
            let results = self.p.relay_batch::<CohortRuns::listDatasetCall>(calls)?;
            for (party, r) in who.iter().zip(errors(results)) {
                if let Some(e) = r {
                    self.set_aside
                        .push((*party, format!("the ledger refused its listing: {e}")));
                }
            }
        }
        // The run's governance (`[governance]`): enabled with the enrolled clients' datasets
        // as founding ones, then each client's own bond. A bond the ledger refuses leaves its
        // client in the run without a vote.
        if let Some(g) = &self.cfg.governance {
            let params = GovParams {
                quorumBps: cohort_fl::config::bps(g.quorum),
                majorityBps: cohort_fl::config::bps(g.majority),
                votingPeriod: g.voting_period,
                timelock: g.timelock,
            };
            let founding: Vec<B256> = ids.values().copied().collect();
            self.p.enable_run_governance(&self.key, params, &founding)?;
            let (who, calls): (Vec<Party>, Vec<SignedCall>) = bonds
                .into_iter()
                .filter(|(p, _)| ids.contains_key(p))
                .unzip();
            let results = self.p.relay_batch::<CohortRuns::govBondCall>(calls)?;
            for (party, r) in who.iter().zip(errors(results)) {
                if let Some(e) = r {
                    self.set_aside.push((
                        *party,
                        format!("the ledger refused its governance bond: {e}"),
                    ));
                }
            }
        }
        for &k in &self.excluded {
            absent.push((Party::Client(k), "left out of this run".into()));
        }
        absent.sort();
        absent.dedup_by_key(|(p, _)| *p);
        let clients_in = ids.len();
        let validators_in = self.roster.validators.len()
            - absent
                .iter()
                .filter(|(p, _)| matches!(p, Party::Validator(_)))
                .count();
        if clients_in == 0 || validators_in == 0 {
            let why: Vec<String> = absent.iter().map(|(p, r)| format!("{p}: {r}")).collect();
            return Err(RunError::Fl(FlError::InvalidConfig {
                what: "enrolment",
                reason: format!(
                    "{clients_in} clients and {validators_in} validators enrolled, a run needs at \
                     least one of each ({})",
                    why.join("; ")
                ),
            }));
        }
        self.absent = absent;
        // One dataset id per client, in client order (zero for a client that sat out).
        Ok((0..self.roster.clients.len() as u32)
            .map(|k| ids.get(&Party::Client(k)).copied().unwrap_or(B256::ZERO))
            .collect())
    }

    /// Clients whose listing or bond the ledger refused, each with why: they take part
    /// unlisted, or without a vote.
    pub fn set_aside(&self) -> &[(Party, String)] {
        &self.set_aside
    }

    /// The run's market on the ledger, before its first round (`[market]`): the coordinator
    /// sets the royalties' split and puts the sponsor's fund in (the governance minted it to
    /// the coordinator for that).
    pub fn open_market(&mut self) -> Result<(), RunError> {
        let Some(m) = &self.cfg.market else {
            return Ok(());
        };
        let (c, t) = (
            cohort_fl::config::bps(m.coordinator_fee),
            cohort_fl::config::bps(m.treasury_fee),
        );
        self.p.set_market_fees(&self.key, c, t)?;
        if m.fund > 0 {
            let me = self.address;
            self.p.fund_royalties(&self.key, me, tokens(m.fund))?;
        }
        Ok(())
    }

    /// The parties that sit the run out, each with why: they did not enrol in time, or their
    /// enrolment was malformed or refused (filled by [`Self::enrol`]).
    pub fn absent(&self) -> &[(Party, String)] {
        &self.absent
    }
}
/// The error of each result, as text.
fn errors<T, E: std::fmt::Display>(results: Vec<Result<T, E>>) -> Vec<Option<String>> {
    results
        .into_iter()
        .map(|r| r.err().map(|e| e.to_string()))
        .collect()
}

/// The state saved after a round (or the set-up).
struct Snapshot<'a> {
    cfg_digest: Hash32,
    round: u64,
    now: u64,
    datasets: &'a [B256],
    initial: Metrics,
    initial_holdings: &'a BTreeMap<String, U256>,
    forgotten: &'a [u32],
}

/// Saves the run's state for `snap` into `dir` (before the ledger's flush).
fn save_state<B: LedgerBackend>(
    dir: &Path,
    p: &Protocol<B>,
    layout: &Layout,
    strategy: &dyn Strategy,
    global: &[f32],
    snap: Snapshot<'_>,
    round: Option<&RoundSummary>,
) -> Result<(), RunError> {
    let head = p.backend().head()?;
    let blob = layout.encode(global);
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
        initial_holdings: snap.initial_holdings.clone(),
        forgotten: snap.forgotten.to_vec(),
    };
    crate::resume::save(dir, &saved, &blob, round)?;
    Ok(())
}

impl<B: LedgerBackend, L: Learner + ?Sized> Coordinator<'_, B, L> {
    /// Runs the experiment on the protocol it was given (deployed, or attached to when
    /// resuming): unless `opts` resumes a saved round, the set-up first (its own registration,
    /// relaying the funder's signed `funding`, the parties' enrolment), then the rounds, with the
    /// virtual clock starting at `start`. `cfg_digest` identifies the config in saved state.
    pub fn run(
        &mut self,
        transport: &mut dyn Transport,
        opts: &mut RunOptions,
        funding: Vec<SignedCall>,
        cfg_digest: Hash32,
        start: u64,
        mut on_round: impl FnMut(&RoundSummary),
    ) -> Result<RunSummary, RunError> {
        let fresh = match &opts.resume {
            None => Some({
                self.register()?;
                self.relay_funding(funding)?;
                let datasets = self.enrol(transport, start)?;
                self.open_market()?;
                datasets
            }),
            Some(_) => None,
        };
        // Every fact of the run is an event; its summary is folded from them (continuing, on a
        // resume, from what was saved of the rounds before).
        let validators = self.roster.validators.len() as u32;
        let mut events = Events {
            sink: opts.take_events(),
            summary: match &opts.resume {
                None => RunSummaryBuilder::new(validators),
                Some(r) => RunSummaryBuilder::resuming(
                    validators,
                    r.saved.initial,
                    r.saved.initial_holdings.clone(),
                    r.rounds.clone(),
                ),
            },
        };
        if fresh.is_some() {
            events.emit(RunEvent::SetUp {
                schema: cohort_fl::events::SCHEMA_VERSION,
                clients: self.roster.clients.len() as u32,
                validators: self.roster.validators.len() as u32,
            });
        }
        let population = self.population();
        let Self {
            cfg,
            p,
            key: coord,
            address: coord_addr,
            roster,
            learner,
            ..
        } = self;
        let (cfg, learner, coord_addr) = (*cfg, *learner, *coord_addr);
        let inc = &cfg.incentives;
        // The training recipe every round records, for the listings (`[market]`).
        let recipe = cfg.market.as_ref().map(|_| crate::market::recipe_of(cfg).0);
        let names: BTreeMap<Address, String> = roster
            .everyone()
            .map(|(_, m)| (m.address, m.name.clone()))
            .chain([(coord_addr, "coordinator".to_owned())])
            .collect();
        let names = &names;
        let members: Vec<Member> = roster.everyone().map(|(_, m)| m.clone()).collect();
        let blobs: Option<&dyn BlobStore> = opts.blobs.as_deref();
        // The model's tensors: what every update must carry; a global model blob carries
        // them once per shard (`[unlearning] shards`, one for an ordinary run).
        let shards = Shards::new(cfg.unlearning.shards, learner.layout())?;
        let layout = std::sync::Arc::clone(shards.layout());
        // The codec every update blob must be written with (`[compression] update`).
        let codec = cfg.compression.update;
        let mut coordinator = Machine::new(
            cfg.coordinator.clone(),
            population.clone(),
            (0..cfg.validators as u32).collect(),
            std::sync::Arc::clone(shards.inner()),
        )?;
        let mut strategy = shards.strategy(|| cfg.aggregation.build());
        let (mut now, datasets, mut global) = match (fresh, &opts.resume) {
            (Some(datasets), _) => {
                let global = shards.init(learner.init());
                let initial = learner.evaluate(&shards.served(&global))?;
                events.emit(RunEvent::Evaluated {
                    round: 0,
                    test: initial,
                });
                let mut held = BTreeMap::new();
                for m in &members {
                    held.insert(m.name.clone(), holdings(p, m.address)?);
                }
                events.emit(RunEvent::Holdings {
                    round: 0,
                    holdings: held,
                });
                if let Some(dir) = &opts.state {
                    let snap = Snapshot {
                        cfg_digest,
                        round: 0,
                        now: start,
                        datasets: &datasets,
                        initial,
                        initial_holdings: events.summary.initial_holdings(),
                        forgotten: &[],
                    };
                    save_state(dir, p, &layout, &*strategy, &global, snap, None)?;
                }
                // The set-up is durable before the first round starts (and is not counted in it).
                p.backend_mut().flush()?;
                (start, datasets, global)
            }
            (None, None) => return Err(state_error("neither a set-up nor a saved round")),
            (None, Some(r)) => {
                let s = &r.saved;
                let state: Vec<Vec<f64>> = s
                    .strategy
                    .iter()
                    .map(|v| v.iter().map(|&b| f64::from_bits(b)).collect())
                    .collect();
                strategy.restore(&state)?;
                let global = NamedDelta::decode(&r.global)
                    .and_then(|g| g.into_layout(&layout))
                    .map_err(|e| {
                        state_error(format!(
                            "the saved global model is not the task's model: {e}"
                        ))
                    })?
                    .values;
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
                let head = p.backend().head()?;
                events.emit(RunEvent::Resumed {
                    round: s.round,
                    ledger_entries: head.size,
                    ledger_root: head.root,
                });
                let datasets = s.datasets.iter().map(|h| b256(*h)).collect();
                (s.now, datasets, global)
            }
        };
        // The virtual clock never runs behind the ledger's: a chain moves its block time on by
        // itself (a second a block on anvil when blocks come faster than that), so a set-up
        // of many transactions can leave it ahead of where the run started. (The embedded
        // ledger's clock is the run's own: this changes nothing there.)
        now = now.max(p.backend().head()?.time);
        let initial = *events.summary.initial().ok_or(Incomplete::NoInitialModel)?;
        let initial_holdings = events.summary.initial_holdings().clone();
        // Clients an unlearning forgot since the set-up: their datasets can back no update any
        // more, and they are not asked to train on them (a cohort the contract draws may still
        // name them; the round goes on without their update, as without any silent client's).
        let forgotten: Vec<u32> = opts
            .resume
            .as_ref()
            .map(|r| r.saved.forgotten.clone())
            .unwrap_or_default();

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
        // Wall seconds per part of the open round (not events: outside the replay contract).
        let mut secs = PhaseSeconds::default();
        let mut beacon = B256::ZERO;

        loop {
            // The seed of a cohort about to be sampled: the coordinator's beacon on the ledger,
            // which only the closing of a round's reveals moves on.
            if matches!(coordinator.phase(), Phase::Idle | Phase::Settle) {
                beacon = p.roster(coord_addr)?.beacon;
            }
            let tick = coordinator.tick(now, beacon);
            now += 60;
            p.backend_mut().set_time(now)?;
            // On a chain, parties that submit their own transactions move its time on too: the
            // clock follows it.
            if p.backend().chain_id().is_some() {
                now = now.max(p.backend().head()?.time);
            }
            match tick {
                Some(Command::Finished) => break,
                // Waiting for a party that has not answered (a client the protocol refused, or
                // one that is silent): the virtual clock runs on until the phase times out.
                None if coordinator.phase() == Phase::Done => break,
                None => {}
                Some(Command::OpenRound { round: r, cohort }) => {
                    let t = Instant::now();
                    round = r;
                    global_blob = layout.encode(&global);
                    global_hash = sha256(&global_blob);
                    // Every global model is in the store, the first one included, so that
                    // provenance can be checked from the store alone.
                    if let Some(store) = blobs {
                        store.put(&global_blob)?;
                    }
                    // Royalties from the round's pool (`[market] source = "round"`): what the
                    // round may owe its listed clients moves from the pool into the fund.
                    let mut pool = inc.reward_per_round;
                    if let Some(m) = cfg
                        .market
                        .as_ref()
                        .filter(|m| m.source == cohort_fl::config::RoyaltySource::Round)
                    {
                        let owed = m.owed_by(&cohort).min(pool);
                        if owed > 0 {
                            p.fund_royalties(coord, coord_addr, tokens(owed))?;
                            pool -= owed;
                        }
                    }
                    chain_round = p
                        .open_round(
                            coord,
                            b256(global_hash),
                            tokens(pool),
                            false,
                            u32::try_from(cfg.coordinator.clients_per_round).unwrap_or(u32::MAX),
                        )?
                        .value;
                    if let Some(r) = recipe {
                        p.set_round_recipe(coord, chain_round, r)?;
                    }
                    // The contract drew the cohort it will enforce; the plan must be the same.
                    // (The contract draws roster indices; the roster is the population.)
                    let (_, drawn) = p.round_cohort(chain_round)?;
                    let drawn: Vec<u32> = drawn
                        .iter()
                        .map(|&i| population.get(i as usize).copied().unwrap_or(u32::MAX))
                        .collect();
                    if drawn != cohort {
                        return Err(RunError::CohortMismatch {
                            round,
                            drawn,
                            planned: cohort,
                        });
                    }
                    onchain.clear();
                    committed.clear();
                    revealed.clear();
                    cohort_members = cohort.iter().copied().collect();
                    events.emit(RunEvent::RoundOpened {
                        round,
                        ledger_round: chain_round,
                        global: global_hash,
                        cohort: cohort.clone(),
                    });
                    for &client in &cohort {
                        let Some(m) = roster.clients.get(client as usize) else {
                            continue;
                        };
                        if forgotten.contains(&client) {
                            continue;
                        }
                        transport.send(Request::Train(TrainRequest {
                            round,
                            ledger_round: chain_round,
                            client,
                            global_hash,
                            global: global_blob.clone(),
                            sign: SignWith {
                                contract: p.address(),
                                ctx: p.context_for(m.address)?,
                            },
                            recipe,
                        }))?;
                    }
                    secs = PhaseSeconds::default();
                    secs.ledger += t.elapsed().as_secs_f64();
                }
                Some(Command::Score {
                    updates, rejected, ..
                }) => {
                    events.require_round()?;
                    let t = Instant::now();
                    let closed = p.close_submissions(coord, chain_round)?;
                    // What the ledger holds is what the validators score: an update a party
                    // put on the chain itself whose blob never reached the coordinator is
                    // scored as missing (the worst score), in its place.
                    let on_ledger = closed
                        .events
                        .iter()
                        .find_map(|e| match e {
                            CohortEvents::SubmissionsClosed(c) => Some(c.numUpdates),
                            _ => None,
                        })
                        .unwrap_or(onchain.len() as u32);
                    if on_ledger as usize != onchain.len() {
                        for index in 0..on_ledger {
                            if onchain.iter().any(|x| x.index == index) {
                                continue;
                            }
                            let u = p.update(chain_round, index)?;
                            let client = roster
                                .clients
                                .iter()
                                .position(|m| m.address == u.client)
                                .map_or(u32::MAX, |k| k as u32);
                            events.emit(RunEvent::UpdateReceived {
                                round,
                                client,
                                blob: Hash32(u.blobHash.0),
                                address: u.client,
                                bytes: 0,
                                dense_bytes: None,
                                samples: u.numSamples,
                                entry: 0,
                                norm: None,
                            });
                            onchain.push(OnChain {
                                client,
                                hash: Hash32(u.blobHash.0),
                                blob: Vec::new(),
                                update: None,
                                entry: 0,
                                samples: u.numSamples,
                                norm: None,
                                dense_bytes: None,
                                index,
                            });
                        }
                        onchain.sort_by_key(|x| x.index);
                    }
                    let valid: BTreeSet<u32> = updates.iter().map(|u| u.client).collect();
                    // Invalid updates (bad shape, NaN, wrong round) get the worst score.
                    for x in onchain.iter_mut() {
                        if !valid.contains(&x.client) {
                            x.update = None;
                        }
                    }
                    // Reported in client-index order, whatever order the ledger holds them in.
                    let mut by_client: Vec<&OnChain> = onchain.iter().collect();
                    by_client.sort_by_key(|x| x.client);
                    for x in by_client {
                        let refused = rejected
                            .iter()
                            .find(|(k, _)| *k == x.client)
                            .map(|(_, r)| r.clone())
                            .or_else(|| {
                                x.blob.is_empty().then(|| {
                                    "submitted on the chain by the client, but its blob never \
                                     reached the coordinator"
                                        .to_owned()
                                })
                            });
                        events.emit(RunEvent::UpdateValidated {
                            round,
                            client: x.client,
                            refused,
                        });
                    }
                    let items: Vec<ScoreItem> = onchain
                        .iter()
                        .map(|x| ScoreItem {
                            client: x.client,
                            hash: x.hash,
                            blob: x.update.as_ref().map(|_| x.blob.clone()),
                        })
                        .collect();
                    for (v, m) in roster.validators.iter().enumerate() {
                        transport.send(Request::Score(ScoreRequest {
                            round,
                            ledger_round: chain_round,
                            validator: v as u32,
                            global_hash,
                            global: global_blob.clone(),
                            updates: items.clone(),
                            sign: SignWith {
                                contract: p.address(),
                                ctx: p.context_for(m.address)?,
                            },
                        }))?;
                    }
                    secs.ledger += t.elapsed().as_secs_f64();
                }
                Some(Command::Reveal { .. }) => {
                    events.require_round()?;
                    let t = Instant::now();
                    p.close_commits(coord, chain_round)?;
                    for &v in &committed {
                        let Some(m) = roster.validators.get(v as usize) else {
                            continue;
                        };
                        transport.send(Request::Reveal(RevealRequest {
                            round,
                            ledger_round: chain_round,
                            validator: v,
                            sign: SignWith {
                                contract: p.address(),
                                ctx: p.context_for(m.address)?,
                            },
                        }))?;
                    }
                    secs.ledger += t.elapsed().as_secs_f64();
                }
                Some(Command::Aggregate { .. }) => {
                    events.require_round()?;
                    let t = Instant::now();
                    let tally = p.tally_all(coord, chain_round, 64)?;
                    secs.ledger += t.elapsed().as_secs_f64();
                    let mut accepted_idx = Vec::new();
                    let mut accepted = Vec::new();
                    // The verdicts in client-index order (the tally's is the ledger's order).
                    let mut verdicts: Vec<(&OnChain, u32, i64, bool)> = tally
                        .events
                        .iter()
                        .filter_map(|e| match e {
                            CohortEvents::UpdateAccepted(a) => {
                                Some((a.index, a.consensusScore, true))
                            }
                            CohortEvents::UpdateRejected(r) => {
                                Some((r.index, r.consensusScore, false))
                            }
                            _ => None,
                        })
                        .filter_map(|(index, score, ok)| {
                            let x = onchain.iter().find(|x| x.index == index)?;
                            Some((x, index, score, ok))
                        })
                        .collect();
                    verdicts.sort_by_key(|(x, ..)| x.client);
                    for (x, index, score, ok) in verdicts {
                        let (k, u) = (&x.client, &x.update);
                        events.emit(RunEvent::Consensus {
                            round,
                            client: *k,
                            score: Score(score).to_f64(),
                            accepted: ok,
                        });
                        if let (false, true, Some(u)) = (ok, cfg.aggregation.ignore_verdicts, u) {
                            accepted.push(u.clone().with_score(Score(score)));
                        }
                        if let (true, Some(u)) = (ok, u) {
                            accepted_idx.push(index);
                            accepted.push(u.clone().with_score(Score(score)));
                        }
                    }
                    accepted_idx.sort_unstable();
                    let t = Instant::now();
                    let mut contributions: Vec<ClientContribution> = Vec::new();
                    if !accepted.is_empty() {
                        match strategy.aggregate(&accepted) {
                            Ok(delta) => {
                                for (g, d) in global.iter_mut().zip(&delta) {
                                    *g += d;
                                }
                                contributions = accepted
                                    .iter()
                                    .map(|u| u.client)
                                    .zip(strategy.contributions())
                                    .map(|(client, contribution)| ClientContribution {
                                        client,
                                        contribution,
                                    })
                                    .collect();
                            }
                            // Too few accepted updates for a robust strategy: keep the model.
                            Err(FlError::NotEnoughUpdates { .. }) => {}
                            Err(e) => return Err(e.into()),
                        }
                    }
                    secs.aggregate += t.elapsed().as_secs_f64();
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
                    let global_blob = layout.encode(&global);
                    let new_hash = sha256(&global_blob);
                    if let Some(store) = blobs {
                        store.put(&global_blob)?;
                    }
                    p.finalize(
                        coord,
                        chain_round,
                        b256(new_hash),
                        accepted_set_hash(&accepted_idx),
                    )?;
                    events.emit(RunEvent::Aggregated {
                        round,
                        strategy: strategy.name(),
                        contributions,
                        global_before: global_hash,
                        global_after: new_hash,
                    });
                    secs.ledger += t.elapsed().as_secs_f64();
                }
                Some(Command::Settle { .. }) => {
                    events.require_round()?;
                    let t = Instant::now();
                    let settled = p.settle_all(coord, chain_round, 64)?;
                    secs.ledger += t.elapsed().as_secs_f64();
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
                    let mut amounts: BTreeMap<String, Amounts> = BTreeMap::new();
                    for (name, amount) in &rewards {
                        amounts.entry(name.clone()).or_default().reward = *amount;
                    }
                    for (name, amount) in &slashes {
                        amounts.entry(name.clone()).or_default().slash = *amount;
                    }
                    events.emit(RunEvent::Settled {
                        round,
                        payouts: amounts,
                    });
                    // The royalties of the listed datasets the round aggregated (`[market]`),
                    // paid from the run's fund: one per dataset the contract finds owed.
                    if recipe.is_some() {
                        let t = Instant::now();
                        let mut paid: BTreeMap<String, U256> = BTreeMap::new();
                        for x in onchain.iter().filter(|x| cfg.listing(x.client).is_some()) {
                            if !p.update(chain_round, x.index)?.accepted {
                                continue;
                            }
                            let sent = match p.pay_royalty(coord, chain_round, x.index) {
                                Ok(sent) => sent,
                                // Not owed (a listing that allows no recipe of this run) or
                                // not payable (the fund ran dry): nothing is recorded.
                                Err(e) if refused_by_ledger(&e) => continue,
                                Err(e) => return Err(e.into()),
                            };
                            for e in &sent.events {
                                if let CohortEvents::RoyaltyPaid(r) = e {
                                    *paid.entry(name_of(names, r.owner)).or_default() += r.toOwner;
                                    if !r.toCoordinator.is_zero() {
                                        *paid.entry("coordinator".into()).or_default() +=
                                            r.toCoordinator;
                                    }
                                    if !r.toTreasury.is_zero() {
                                        *paid.entry("treasury".into()).or_default() += r.toTreasury;
                                    }
                                }
                            }
                        }
                        if !paid.is_empty() {
                            events.emit(RunEvent::Royalties { round, paid });
                        }
                        secs.ledger += t.elapsed().as_secs_f64();
                    }
                    events.emit(RunEvent::Evaluated {
                        round,
                        test: learner.evaluate(&shards.served(&global))?,
                    });
                    let t = Instant::now();
                    let mut held = BTreeMap::new();
                    for m in &members {
                        held.insert(m.name.clone(), holdings(p, m.address)?);
                    }
                    events.emit(RunEvent::Holdings {
                        round,
                        holdings: held,
                    });
                    secs.report += t.elapsed().as_secs_f64();
                    let mut s = events.summary.open().cloned().ok_or_else(no_round)?;
                    s.seconds = std::mem::take(&mut secs);
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
                            initial_holdings: &initial_holdings,
                            forgotten: &forgotten,
                        };
                        save_state(dir, p, &layout, &*strategy, &global, snap, Some(&s))?;
                    }
                    p.backend_mut().flush()?;
                    if let Some(dir) = &opts.state {
                        crate::resume::prune(dir, round)?;
                    }
                    let head = p.backend().head()?;
                    events.emit(RunEvent::Checkpoint {
                        round,
                        ledger_entries: head.size,
                        ledger_root: head.root,
                    });
                    s.seconds.ledger += t.elapsed().as_secs_f64();
                    // The checkpoint closed the round in the fold; the wall seconds are not
                    // events, the fold's round gets them here.
                    events.summary.time_round(round, s.seconds.clone());
                    on_round(&s);
                }
            }

            // The replies that have arrived: updates go on the ledger (signed by their client),
            // then to the coordinator; commitments and reveals likewise. The replies of one poll
            // go on the ledger as one batch per kind (one durable commit on the embedded ledger
            // instead of one per transaction; the entries, and so the root, are the same).
            let t = Instant::now();
            let phase = coordinator.phase();
            let replies = transport.poll(now)?;
            if !events.summary.in_round() {
                continue; // between rounds: nothing is expected
            }
            let dt = t.elapsed().as_secs_f64();
            match phase {
                Phase::Train => secs.train += dt,
                _ => secs.score += dt,
            }
            let t = Instant::now();
            // Each update as decoded, or why its blob does not decode.
            let mut updates: Vec<(OnChain, Result<ClientUpdate, String>, SignedCall)> = Vec::new();
            let mut commits: Vec<(u32, SignedCall)> = Vec::new();
            let mut reveals: Vec<(u32, Vec<Score>, SignedCall)> = Vec::new();
            let mut refusals: Vec<(u32, SignedCall)> = Vec::new();
            for reply in replies {
                match reply {
                    Reply::Update(u) => {
                        let k = u.client;
                        let fresh = phase == Phase::Train
                            && u.round == round
                            && cohort_members.contains(&k)
                            && !onchain.iter().any(|x| x.client == k)
                            && !updates.iter().any(|(x, ..)| x.client == k);
                        // A late, unsolicited or repeated reply is dropped; so is one whose signed
                        // submission is not its client's, or names another round or blob.
                        let Some(m) = roster.clients.get(k as usize) else {
                            continue;
                        };
                        let Some(call) =
                            decode_call::<Cohort::submitUpdateCall>(&u.submission, m.address)
                        else {
                            continue;
                        };
                        let hash = sha256(&u.blob);
                        if !fresh
                            || u.blob.is_empty()
                            || call.roundId != chain_round
                            || call.blobHash != b256(hash)
                        {
                            continue;
                        }
                        if let Some(store) = blobs {
                            store.put(&u.blob)?;
                        }
                        // The blob decodes to a named delta, put in the model's order when it
                        // holds the model's tensors; the state machine validates it against the
                        // layout (tensor names and shapes, finite values). A blob that does not
                        // decode is still recorded, and refused with the reason.
                        // A compressed blob decodes to the dense delta it stands for; a blob
                        // of another codec than the run's is refused by name.
                        let update = decode_update(&u.blob)
                            .and_then(|(d, got)| {
                                if got == codec {
                                    Ok(d)
                                } else {
                                    Err(FlError::MalformedBlob {
                                        reason: format!(
                                            "a {got} update blob; this run's updates are {codec} \
                                             (compression.update)"
                                        ),
                                    })
                                }
                            })
                            .map(|d| {
                                let d = d.arranged(shards.inner());
                                ClientUpdate::new(k, u.round, d, call.numSamples)
                            })
                            .map_err(|e| e.to_string());
                        let dense_bytes =
                            update.as_ref().ok().map(|u| u.delta.encode().len() as u64);
                        let update_norm = update
                            .as_ref()
                            .ok()
                            .map(|u| {
                                u.delta
                                    .values
                                    .iter()
                                    .map(|&x| f64::from(x).powi(2))
                                    .sum::<f64>()
                                    .sqrt()
                            })
                            .filter(|n| n.is_finite());
                        let x = OnChain {
                            client: k,
                            hash,
                            blob: u.blob,
                            update: update.as_ref().ok().cloned(),
                            entry: 0,
                            samples: call.numSamples,
                            norm: update_norm,
                            dense_bytes,
                            index: 0,
                        };
                        updates.push((x, update, u.submission));
                    }
                    Reply::Commit(c) => {
                        let v = c.validator;
                        let Some(m) = roster.validators.get(v as usize) else {
                            continue;
                        };
                        let Some(call) =
                            decode_call::<Cohort::commitScoresCall>(&c.call, m.address)
                        else {
                            continue;
                        };
                        if phase != Phase::Commit
                            || c.round != round
                            || call.roundId != chain_round
                            || committed.contains(&v)
                            || commits.iter().any(|(w, _)| *w == v)
                        {
                            continue;
                        }
                        commits.push((v, c.call));
                    }
                    Reply::Reveal(r) => {
                        let v = r.validator;
                        let Some(m) = roster.validators.get(v as usize) else {
                            continue;
                        };
                        let Some(call) =
                            decode_call::<Cohort::revealScoresCall>(&r.call, m.address)
                        else {
                            continue;
                        };
                        if phase != Phase::Reveal
                            || r.round != round
                            || call.roundId != chain_round
                            || !committed.contains(&v)
                            || revealed.contains_key(&v)
                            || reveals.iter().any(|(w, ..)| *w == v)
                        {
                            continue;
                        }
                        let scores = call.scores.iter().map(|&x| Score(x)).collect();
                        reveals.push((v, scores, r.call));
                    }
                    Reply::Refusal(r) => {
                        let k = r.client;
                        let Some(m) = roster.clients.get(k as usize) else {
                            continue;
                        };
                        let Some(call) =
                            decode_call::<CohortRuns::refuseRoundCall>(&r.refusal, m.address)
                        else {
                            continue;
                        };
                        if phase != Phase::Train
                            || r.round != round
                            || call.roundId != chain_round
                            || !cohort_members.contains(&k)
                            || refusals.iter().any(|(c, _)| *c == k)
                        {
                            continue;
                        }
                        refusals.push((k, r.refusal));
                    }
                    // Enrolment happens once, at set-up.
                    Reply::Enrol(_) => {}
                }
            }
            if !refusals.is_empty() {
                let (who, calls): (Vec<u32>, Vec<SignedCall>) = refusals.into_iter().unzip();
                let results = p.relay_batch::<CohortRuns::refuseRoundCall>(calls)?;
                for (client, result) in who.into_iter().zip(results) {
                    match result {
                        Ok(_) => events.emit(RunEvent::Refused { round, client }),
                        // A refusal the ledger does not take (the recipe is allowed there
                        // after all) is the client's: it sits the round out unrecorded.
                        Err(e) if refused_by_ledger(&e) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            if !updates.is_empty() {
                let (rest, calls): (Vec<_>, Vec<SignedCall>) =
                    updates.into_iter().map(|(x, u, c)| ((x, u), c)).unzip();
                let results = p.relay_batch::<Cohort::submitUpdateCall>(calls)?;
                for ((mut x, update), result) in rest.into_iter().zip(results) {
                    match result {
                        Ok(sent) => {
                            x.entry = sent.position;
                            x.index = sent.value;
                            events.emit(RunEvent::UpdateReceived {
                                round,
                                client: x.client,
                                blob: x.hash,
                                address: roster
                                    .clients
                                    .get(x.client as usize)
                                    .map_or(Address::ZERO, |m| m.address),
                                bytes: x.blob.len() as u64,
                                dense_bytes: x.dense_bytes,
                                samples: x.samples,
                                entry: sent.position,
                                norm: x.norm,
                            });
                            let event = match update {
                                Ok(u) => Event::Update(u),
                                Err(reason) => Event::Unreadable {
                                    client: x.client,
                                    round,
                                    reason,
                                },
                            };
                            onchain.push(x);
                            // Refusals by the coordinator are recorded through validation.
                            let _ = coordinator.handle(event);
                        }
                        // A submission the ledger refuses (a bad signature or nonce, a client
                        // slashed below the minimum stake) is the client's: it sits the round out.
                        Err(e) if refused_by_ledger(&e) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                onchain.sort_by_key(|x| x.index);
            }
            if !commits.is_empty() {
                let (who, calls): (Vec<u32>, Vec<SignedCall>) = commits.into_iter().unzip();
                let results = p.relay_batch::<Cohort::commitScoresCall>(calls)?;
                for (v, result) in who.into_iter().zip(results) {
                    match result {
                        Ok(_) => {
                            events.emit(RunEvent::Committed {
                                round,
                                validator: v,
                            });
                            committed.insert(v);
                            coordinator.handle(Event::Committed { validator: v })?;
                        }
                        Err(e) if refused_by_ledger(&e) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            if !reveals.is_empty() {
                let (rest, calls): (Vec<_>, Vec<SignedCall>) =
                    reveals.into_iter().map(|(v, sc, c)| ((v, sc), c)).unzip();
                let results = p.relay_batch::<Cohort::revealScoresCall>(calls)?;
                for ((v, scores), result) in rest.into_iter().zip(results) {
                    match result {
                        Ok(_) => {
                            // A score per update in the ledger's order; reported in
                            // client-index order.
                            let mut pairs: Vec<(u32, f64)> = scores
                                .iter()
                                .enumerate()
                                .map(|(i, x)| {
                                    let client = onchain
                                        .iter()
                                        .find(|u| u.index as usize == i)
                                        .map_or(u32::MAX, |u| u.client);
                                    (client, x.to_f64())
                                })
                                .collect();
                            pairs.sort_by_key(|(client, _)| *client);
                            let scores: Vec<f64> = pairs.into_iter().map(|(_, x)| x).collect();
                            events.emit(RunEvent::Revealed {
                                round,
                                validator: v,
                                scores: scores.clone(),
                            });
                            revealed.insert(v, scores);
                            coordinator.handle(Event::Revealed { validator: v })?;
                        }
                        // A reveal that does not match the commitment is refused by the
                        // contract: the validator counts as not having revealed.
                        Err(e) if refused_by_ledger(&e) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            secs.ledger += t.elapsed().as_secs_f64();
        }
        let mut final_holdings = BTreeMap::new();
        for m in &members {
            final_holdings.insert(m.name.clone(), holdings(p, m.address)?);
        }
        let head = p.backend().head()?;
        events.emit(RunEvent::Finished {
            rounds: coordinator.round(),
            holdings: final_holdings,
            ledger_entries: head.size,
            ledger_root: head.root,
        });
        // What the run returns is the fold of its events, like anyone's fold of the stream,
        // and who sat it out.
        let mut summary = events.summary.summary()?;
        summary.absent = self
            .absent
            .iter()
            .map(|(p, why)| (p.to_string(), why.clone()))
            .collect();
        summary.set_aside = self
            .set_aside
            .iter()
            .map(|(p, why)| (p.to_string(), why.clone()))
            .collect();
        Ok(summary)
    }
}

/// Where the coordinator's events go: the run's sink, and the fold that makes the run's
/// summary from them.
struct Events {
    sink: Option<EventSink>,
    summary: RunSummaryBuilder,
}

impl Events {
    fn emit(&mut self, event: RunEvent) {
        self.summary.apply(&event);
        if let Some(f) = self.sink.as_mut() {
            (f.0)(&event);
        }
    }

    fn require_round(&self) -> Result<(), FlError> {
        if self.summary.in_round() {
            Ok(())
        } else {
            Err(no_round())
        }
    }
}

fn no_round() -> FlError {
    FlError::InvalidConfig {
        what: "round",
        reason: "the coordinator issued a command outside an open round".into(),
    }
}

/// Balance + stake (active and unbonding) of `a`, base units.
fn holdings<B: LedgerBackend>(p: &mut Protocol<B>, a: Address) -> Result<U256, ProtocolError> {
    let (active, unbonding, _) = p.stake_of(a)?;
    Ok(p.balance_of(a)? + active + unbonding)
}

fn name_of(names: &BTreeMap<Address, String>, a: Address) -> String {
    names.get(&a).cloned().unwrap_or_else(|| a.to_string())
}
