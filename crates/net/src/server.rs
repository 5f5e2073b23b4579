//! The coordinator's side: the gRPC service parties dial into ([`Hub`]) and the transport the
//! coordinator drives over it ([`GrpcTransport`]).
//!
//! The hub keeps, under one lock: the open session of each party, the requests sent and not
//! yet answered (each with a wall-clock deadline), the replies that have arrived, and the blobs
//! offered to parties or uploaded by them. A request to a party that is not connected waits
//! for it: when the party's session opens (for the first time or again after a dropped
//! connection), every request it has not answered is sent to it again, so that a party or a
//! coordinator that reconnects needs no operator.
//!
//! [`GrpcTransport::poll`] returns when every request sent has been answered or the earliest
//! deadline among the unanswered ones has passed, the replies in the order their requests were
//! sent (client-index order), not the order they arrived: a run whose parties all answer in
//! time records the same ledger as the in-process run, whatever the network did.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cohort_blob::BlobStore;
use cohort_core::{Hash32, PublicKey};
use cohort_ledger::Published;
use cohort_node::transport::{Party, Reply, Request, Transport, TransportError};
use prost::bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Status, Streaming};

use crate::admit::Admit;
use crate::pb::federation_server::{Federation, FederationServer};
use crate::pb::{self, coordinator_frame, party_frame};
use crate::wire::{fill_reply, strip_request};
use crate::{CHUNK, NetError, PROTOCOL_VERSION, SESSION_HEADER, hash_of, os_random};

/// How long a party may take to say hello and to answer the challenge before the coordinator
/// drops the connection (a slow-loris connection costs this, never a hang).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The coordinator's settings for the network side.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// The run's identifier, signed into every session proof (the ledger's origin).
    pub run: String,
    /// Who may join.
    pub admit: Admit,
    /// Seconds between heartbeats; a session silent for three of them is dropped.
    pub heartbeat: Duration,
    /// The largest blob a party may upload.
    pub max_blob: u64,
    /// A blob store the parties share (`--blobs s3://...` on both sides): a reply whose blobs
    /// were not uploaded here is completed from it, so that blobs need not travel through the
    /// coordinator. `None`: every blob is uploaded here.
    pub blobs: Option<Arc<dyn BlobStore>>,
    /// The EVM chain the run records on (its id; `cohort coordinator --chain-rpc`), `None` for
    /// the embedded ledger: told to each party in its `Welcome`, and named to whoever asks the
    /// ledger calls (a chain is read on the chain).
    pub chain_id: Option<u64>,
}

impl HubConfig {
    /// Defaults: heartbeats every 5 s, blobs up to 2 GiB.
    pub fn new(run: impl Into<String>, admit: Admit) -> Self {
        Self {
            run: run.into(),
            admit,
            heartbeat: Duration::from_secs(5),
            max_blob: 2 << 30,
            blobs: None,
            chain_id: None,
        }
    }
}

struct Session {
    token: String,
    generation: u64,
    tx: mpsc::UnboundedSender<Result<pb::CoordinatorFrame, Status>>,
}

struct Pending {
    party: Party,
    envelope: pb::Envelope,
    blobs: Vec<Hash32>,
    deadline: Instant,
    what: &'static str,
}

/// An upload under way. Its bytes and their hash so far are behind a lock of their own, so
/// that a chunk is hashed and kept without holding the hub's lock (which every session takes).
struct Upload {
    total: u64,
    party: Party,
    progress: Arc<Mutex<Progress>>,
}

/// What an upload has received: the chunks in order, as tonic decoded them (each its own
/// buffer, never copied into one), and the SHA-256 of their bytes, hashed as they arrive.
struct Progress {
    chunks: Vec<Bytes>,
    len: u64,
    hasher: Sha256,
    /// The last byte is in: nothing more is taken.
    done: bool,
}

/// A complete upload whose hash was checked, until a reply takes it.
struct Held {
    party: Party,
    chunks: Vec<Bytes>,
    len: u64,
}

impl Held {
    /// The blob's bytes in one buffer.
    fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(usize::try_from(self.len).unwrap_or(0));
        for c in &self.chunks {
            v.extend_from_slice(c);
        }
        v
    }
}

fn lock_progress(p: &Mutex<Progress>) -> MutexGuard<'_, Progress> {
    // A panic while holding the lock leaves plain data behind: go on with it.
    p.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Default)]
struct State {
    sessions: HashMap<Party, Session>,
    tokens: HashMap<String, Party>,
    pending: BTreeMap<u64, Pending>,
    replies: BTreeMap<u64, Reply>,
    /// Blobs offered to parties, with how many pending requests name each.
    offered: HashMap<Hash32, (Bytes, usize)>,
    /// Complete uploads, by hash, with the party that sent them, until a reply takes them.
    uploaded: HashMap<Hash32, Held>,
    uploads: HashMap<Hash32, Upload>,
    next_id: u64,
    next_generation: u64,
    finished: Option<String>,
    /// Parties that held a session with this hub.
    seen: HashSet<Party>,
    /// Parties sent the `Finished` frame.
    told: HashSet<Party>,
    /// Replies whose blobs were not uploaded here, to complete from the shared blob store (on
    /// the coordinator's thread: a store may not block inside the server's runtime).
    from_store: Vec<(Party, pb::Envelope)>,
    /// Blobs served by `GetBlob` and received by `PutBlob`, for the record.
    transfers: Transfers,
}

/// How many blobs went through the coordinator, each way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transfers {
    /// `GetBlob` calls served.
    pub served: u64,
    /// Uploads completed by `PutBlob`.
    pub received: u64,
    /// Reply blobs read from the shared store instead.
    pub from_store: u64,
}

impl State {
    fn release(&mut self, blobs: &[Hash32]) {
        for h in blobs {
            if let Some((_, n)) = self.offered.get_mut(h) {
                *n -= 1;
                if *n == 0 {
                    self.offered.remove(h);
                }
            }
        }
    }
}

/// The coordinator's network side: the sessions, requests, replies and blobs shared by the
/// gRPC service (on the server's runtime) and the [`GrpcTransport`] (on the coordinator's
/// thread).
pub struct Hub {
    cfg: HubConfig,
    state: Mutex<State>,
    changed: Condvar,
    /// The coordinator's ledger, as far as it is durable: served to parties and auditors.
    ledger: Mutex<Option<Published>>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("run", &self.cfg.run).finish()
    }
}

impl Hub {
    /// A hub for `cfg`. Its request numbers start at a random point, so that a coordinator
    /// started again (`--resume`) never reuses a number a party has already answered.
    pub fn new(cfg: HubConfig) -> Arc<Self> {
        let r = os_random().unwrap_or([7; 32]);
        let start = u64::from_le_bytes([r[0], r[1], r[2], r[3], r[4], r[5], r[6], 0]);
        Arc::new(Self {
            cfg,
            state: Mutex::new(State {
                next_id: start,
                ..State::default()
            }),
            changed: Condvar::new(),
            ledger: Mutex::new(None),
        })
    }

    /// Serves `ledger` (its durable part) to whoever asks: the parties check each new
    /// checkpoint against the last one they saw; auditors fetch the entries
    /// ([`crate::ledger`]). Until it is called, the ledger calls answer UNAVAILABLE.
    pub fn publish(&self, ledger: Published) {
        *self.ledger.lock().unwrap_or_else(|e| e.into_inner()) = Some(ledger);
    }

    fn published(&self) -> Result<Published, Status> {
        if let Some(id) = self.cfg.chain_id {
            return Err(Status::failed_precondition(format!(
                "this coordinator records on the EVM chain with id {id}, not on a ledger of its \
                 own: read the contract's events and transactions on that chain"
            )));
        }
        self.ledger
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| Status::unavailable("the coordinator has no ledger open yet"))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind: go on with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a complete upload of `h` is held (not yet taken by a reply).
    pub fn holds_upload(&self, h: &Hash32) -> bool {
        self.lock().uploaded.contains_key(h)
    }

    /// The parties connected now.
    pub fn connected(&self) -> Vec<Party> {
        let mut v: Vec<Party> = self.lock().sessions.keys().copied().collect();
        v.sort();
        v
    }

    /// Tells every connected party, and every party that connects from now on, that the run
    /// is over.
    pub fn finish(&self, reason: &str) {
        let mut st = self.lock();
        st.finished = Some(reason.to_owned());
        let mut told = Vec::new();
        for (party, s) in &st.sessions {
            let _ =
                s.tx.send(Ok(frame(coordinator_frame::Kind::Finished(pb::Finished {
                    reason: reason.to_owned(),
                }))));
            told.push(*party);
        }
        st.told.extend(told);
        drop(st);
        self.changed.notify_all();
    }

    /// After [`finish`](Self::finish): waits until the parties have been told that the run is
    /// over and have closed their sessions, or `max` has passed. `everyone`: every admitted
    /// party must have been told (a coordinator started again on a finished run, whose
    /// parties are still dialling after it was stopped); otherwise the parties that held a
    /// session with this hub. Returns the admitted parties that were not told, in order.
    pub fn linger(&self, everyone: bool, max: Duration) -> Vec<Party> {
        let until = std::time::Instant::now() + max;
        let admitted = self.cfg.admit.parties();
        let mut st = self.lock();
        loop {
            let waiting: Vec<Party> = admitted
                .iter()
                .filter(|p| (everyone || st.seen.contains(p)) && !st.told.contains(p))
                .copied()
                .collect();
            let now = std::time::Instant::now();
            if (waiting.is_empty() && st.sessions.is_empty()) || now >= until {
                let mut untold: Vec<Party> = admitted
                    .into_iter()
                    .filter(|p| !st.told.contains(p))
                    .collect();
                untold.sort();
                return untold;
            }
            let wait = (until - now).min(Duration::from_millis(100));
            st = self
                .changed
                .wait_timeout(st, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The gRPC service over this hub, for a [`tonic::transport::Server`].
    pub fn service(self: &Arc<Self>) -> FederationServer<Service> {
        FederationServer::new(Service {
            hub: Arc::clone(self),
        })
        .max_decoding_message_size(crate::MAX_MESSAGE + CHUNK)
        .max_encoding_message_size(crate::MAX_MESSAGE + CHUNK)
    }

    fn party_of(&self, meta: &tonic::metadata::MetadataMap) -> Result<Party, Status> {
        let token = meta
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Status::unauthenticated(format!("no {SESSION_HEADER} metadata")))?;
        self.lock()
            .tokens
            .get(token)
            .copied()
            .ok_or_else(|| Status::unauthenticated("no open session has this token"))
    }

    /// The handshake and then the session's frames until it ends.
    async fn drive(
        self: Arc<Self>,
        mut inbound: Streaming<pb::PartyFrame>,
        tx: mpsc::UnboundedSender<Result<pb::CoordinatorFrame, Status>>,
        peer: Option<SocketAddr>,
    ) {
        let peer = peer.map_or_else(|| "unknown peer".to_owned(), |a| a.to_string());
        let (party, generation) = match self.handshake(&mut inbound, &tx, &peer).await {
            Ok(x) => x,
            Err(reason) => {
                tracing::warn!(%peer, "session refused: {reason}");
                let _ = tx.send(Ok(frame(coordinator_frame::Kind::Refused(pb::Refused {
                    reason,
                }))));
                return;
            }
        };
        tracing::info!(%peer, %party, "session open");
        let silence = self.cfg.heartbeat * 3;
        let mut beat = tokio::time::interval(self.cfg.heartbeat);
        let mut seq = 0u64;
        let end = loop {
            tokio::select! {
                _ = beat.tick() => {
                    seq += 1;
                    if tx.send(Ok(frame(coordinator_frame::Kind::Heartbeat(pb::Heartbeat { seq })))).is_err() {
                        break "the stream closed".to_owned();
                    }
                }
                m = tokio::time::timeout(silence, inbound.message()) => match m {
                    Err(_) => break format!("silent for {} s", silence.as_secs()),
                    Ok(Err(status)) => break format!("the stream failed: {}", status.message()),
                    Ok(Ok(None)) => break "the party closed the stream".to_owned(),
                    Ok(Ok(Some(f))) => match f.kind {
                        Some(party_frame::Kind::Reply(e)) => self.on_reply(party, e),
                        Some(party_frame::Kind::Heartbeat(_)) => {}
                        _ => break "a handshake frame inside an open session".to_owned(),
                    },
                },
            }
        };
        tracing::info!(%peer, %party, "session closed: {end}");
        let mut st = self.lock();
        if st
            .sessions
            .get(&party)
            .is_some_and(|s| s.generation == generation)
            && let Some(s) = st.sessions.remove(&party)
        {
            st.tokens.remove(&s.token);
        }
        drop(st);
        self.changed.notify_all();
    }

    async fn handshake(
        &self,
        inbound: &mut Streaming<pb::PartyFrame>,
        tx: &mpsc::UnboundedSender<Result<pb::CoordinatorFrame, Status>>,
        peer: &str,
    ) -> Result<(Party, u64), String> {
        let Some(party_frame::Kind::Hello(hello)) = next_frame(inbound).await? else {
            return Err("the first frame is not a hello".into());
        };
        if hello.protocol_version != PROTOCOL_VERSION {
            return Err(format!(
                "the party speaks protocol version {}, this coordinator version {PROTOCOL_VERSION}",
                hello.protocol_version
            ));
        }
        let party = match hello.role.as_str() {
            "client" => Party::Client(hello.index),
            "validator" => Party::Validator(hello.index),
            other => return Err(format!("unknown role {other:?}")),
        };
        let key: PublicKey = hello.public_key.as_slice().try_into().map_err(|_| {
            format!(
                "{party}: a public key of {} bytes (32 expected)",
                hello.public_key.len()
            )
        })?;
        let hexkey = hex::encode(key);
        match self.cfg.admit.key_of(party) {
            Some(k) if *k == key => {}
            Some(_) => {
                return Err(format!(
                    "key {hexkey} is not the key admitted as {party} (agent {:?})",
                    hello.agent
                ));
            }
            None => return Err(format!("key {hexkey}: no {party} is admitted")),
        }
        let nonce = os_random().map_err(|e| e.to_string())?;
        let challenge = pb::Challenge {
            nonce: nonce.to_vec(),
            protocol_version: PROTOCOL_VERSION,
            run: self.cfg.run.clone(),
        };
        tx.send(Ok(frame(coordinator_frame::Kind::Challenge(challenge))))
            .map_err(|_| "the stream closed".to_owned())?;
        let Some(party_frame::Kind::Proof(proof)) = next_frame(inbound).await? else {
            return Err(format!(
                "{party}: the answer to the challenge is not a proof"
            ));
        };
        let sig: [u8; 64] = proof
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| format!("{party}: a signature of {} bytes", proof.signature.len()))?;
        let msg = crate::session_message(&self.cfg.run, &nonce, &key);
        cohort_core::Identity::verify(&key, &msg, &sig)
            .map_err(|_| format!("{party}: the proof is not signed by key {hexkey}"))?;
        let token = hex::encode(os_random().map_err(|e| e.to_string())?);
        let mut st = self.lock();
        st.next_generation += 1;
        let generation = st.next_generation;
        if let Some(old) = st.sessions.remove(&party) {
            // A party that dialled again: its old session is over.
            st.tokens.remove(&old.token);
        }
        st.tokens.insert(token.clone(), party);
        st.seen.insert(party);
        st.sessions.insert(
            party,
            Session {
                token: token.clone(),
                generation,
                tx: tx.clone(),
            },
        );
        let _ = tx.send(Ok(frame(coordinator_frame::Kind::Welcome(pb::Welcome {
            party: party.to_string(),
            session: token,
            heartbeat_seconds: self.cfg.heartbeat.as_secs().max(1) as u32,
            blob_store: self
                .cfg
                .blobs
                .as_ref()
                .map(|b| b.location())
                .unwrap_or_default(),
            chain_id: self.cfg.chain_id.unwrap_or(0),
        }))));
        // Everything it has not answered yet, again (it may have missed it).
        for p in st.pending.values().filter(|p| p.party == party) {
            let _ = tx.send(Ok(frame(coordinator_frame::Kind::Request(
                p.envelope.clone(),
            ))));
        }
        if let Some(reason) = &st.finished {
            let _ = tx.send(Ok(frame(coordinator_frame::Kind::Finished(pb::Finished {
                reason: reason.clone(),
            }))));
            st.told.insert(party);
        }
        drop(st);
        self.changed.notify_all();
        tracing::debug!(%peer, %party, "authenticated");
        Ok((party, generation))
    }

    fn on_reply(&self, party: Party, e: pb::Envelope) {
        let mut st = self.lock();
        let Some(p) = st.pending.get(&e.id) else {
            tracing::debug!(%party, id = e.id, "a reply to no pending request (late or repeated): dropped");
            return;
        };
        if p.party != party {
            tracing::warn!(%party, id = e.id, "a reply to another party's request: dropped");
            return;
        }
        if self.cfg.blobs.is_some()
            && let Ok(hashes) = crate::wire::blob_hashes(&e)
            && hashes.iter().any(|h| !st.uploaded.contains_key(h))
        {
            if st.from_store.iter().any(|(_, q)| q.id == e.id) {
                tracing::debug!(%party, id = e.id, "the same reply again: dropped");
                return;
            }
            // Left in the shared store: completed on the coordinator's thread.
            st.from_store.push((party, e));
            drop(st);
            self.changed.notify_all();
            return;
        }
        let reply = {
            let uploaded = &st.uploaded;
            fill_reply(&e, |h| {
                uploaded
                    .get(h)
                    .map(Held::to_vec)
                    .ok_or_else(|| NetError::Protocol(format!("blob {h} was not uploaded")))
            })
        };
        self.take_reply(&mut st, party, &e, reply);
        drop(st);
        self.changed.notify_all();
    }

    /// Records `reply` (the envelope `e` filled) as `party`'s answer to its pending request,
    /// or drops it with a log line naming why.
    fn take_reply(
        &self,
        st: &mut State,
        party: Party,
        e: &pb::Envelope,
        reply: Result<Reply, NetError>,
    ) {
        match st.pending.get(&e.id) {
            Some(p) if p.party == party => {}
            _ => {
                tracing::debug!(%party, id = e.id, "a reply to no pending request (late or repeated): dropped");
                return;
            }
        }
        let reply = match reply {
            Ok(r) if r.from() == party => r,
            Ok(r) => {
                tracing::warn!(%party, id = e.id, claimed = %r.from(), "a reply in another party's name: dropped");
                return;
            }
            Err(err) => {
                tracing::warn!(%party, id = e.id, "a malformed reply: {err}");
                return;
            }
        };
        if let Ok(hashes) = crate::wire::blob_hashes(e) {
            for h in hashes {
                st.uploaded.remove(&h);
            }
        }
        if let Some(p) = st.pending.remove(&e.id) {
            st.release(&p.blobs);
        }
        st.replies.insert(e.id, reply);
    }

    /// Completes the replies left in the shared store (outside the lock: the store may be
    /// remote) and records them.
    fn complete_from_store(&self) {
        let Some(store) = &self.cfg.blobs else {
            return;
        };
        let waiting = std::mem::take(&mut self.lock().from_store);
        for (party, e) in waiting {
            let mut read = 0;
            let reply = {
                let st = self.lock();
                let here: HashMap<Hash32, Vec<u8>> = crate::wire::blob_hashes(&e)
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|h| st.uploaded.get(&h).map(|b| (h, b.to_vec())))
                    .collect();
                drop(st);
                fill_reply(&e, |h| match here.get(h) {
                    Some(b) => Ok(b.clone()),
                    None => {
                        read += 1;
                        store.get(h).map_err(|err| {
                            NetError::Protocol(format!(
                                "blob {h} was neither uploaded nor in the shared store ({err})"
                            ))
                        })
                    }
                })
            };
            let mut st = self.lock();
            st.transfers.from_store += read;
            self.take_reply(&mut st, party, &e, reply);
        }
        self.changed.notify_all();
    }

    /// How many blobs went through the coordinator, and how many replies' blobs came from the
    /// shared store instead.
    pub fn transfers(&self) -> Transfers {
        self.lock().transfers
    }

    fn get_blob(&self, party: Party, range: &pb::BlobRange) -> Result<Bytes, Status> {
        let h = hash_of(&range.hash, "the blob's hash")
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mut st = self.lock();
        let allowed = st
            .pending
            .values()
            .any(|p| p.party == party && p.blobs.contains(&h));
        let blob = st.offered.get(&h).map(|(b, _)| b.clone());
        match blob {
            Some(b) if allowed => {
                if range.offset == 0 {
                    st.transfers.served += 1;
                }
                Ok(b)
            }
            _ => Err(Status::not_found(format!(
                "blob {h} is not offered to {party}"
            ))),
        }
    }

    fn blob_status(&self, h: &Hash32) -> pb::BlobStatus {
        let st = self.lock();
        if let Some(b) = st.uploaded.get(h) {
            return pb::BlobStatus {
                offset: b.len,
                complete: true,
            };
        }
        pb::BlobStatus {
            offset: st
                .uploads
                .get(h)
                .map_or(0, |u| lock_progress(&u.progress).len),
            complete: false,
        }
    }

    /// Takes one chunk of an upload of `h` (`first`: the first of its stream). The checks and
    /// the party's quota are under the hub's lock; the chunk is hashed and kept under its
    /// upload's lock only, and the hash checked once the last byte is in.
    fn put_chunk(
        &self,
        party: Party,
        chunk: &pb::BlobChunk,
        h: Hash32,
        first: bool,
    ) -> Result<pb::BlobStatus, Status> {
        let progress = {
            let mut st = self.lock();
            if st.uploaded.contains_key(&h) {
                return Ok(pb::BlobStatus {
                    offset: chunk.total,
                    complete: true,
                });
            }
            if first && !st.uploads.contains_key(&h) {
                if chunk.total == 0 || chunk.total > self.cfg.max_blob {
                    return Err(Status::invalid_argument(format!(
                        "a blob of {} bytes (1 to {} accepted)",
                        chunk.total, self.cfg.max_blob
                    )));
                }
                if chunk.offset != 0 {
                    return Err(Status::failed_precondition(format!(
                        "the upload of {h} starts at {}, the coordinator holds 0 bytes",
                        chunk.offset
                    )));
                }
                // What one party may have the coordinator hold at once (uploads under way and
                // complete ones no reply has taken yet): one largest blob. More is refused, so
                // a party cannot fill the coordinator's memory with blobs nobody asked for.
                let held: u64 = st
                    .uploads
                    .values()
                    .filter(|u| u.party == party)
                    .map(|u| u.total)
                    .chain(
                        st.uploaded
                            .values()
                            .filter(|b| b.party == party)
                            .map(|b| b.len),
                    )
                    .sum();
                if held.saturating_add(chunk.total) > self.cfg.max_blob {
                    tracing::warn!(%party, held, announced = chunk.total, "an upload over the party's quota: refused");
                    return Err(Status::resource_exhausted(format!(
                        "{party} already has {held} bytes of uploads held by the coordinator; with \
                         {} more that is over the {} a party may have at once",
                        chunk.total, self.cfg.max_blob
                    )));
                }
                st.uploads.insert(
                    h,
                    Upload {
                        total: chunk.total,
                        party,
                        progress: Arc::new(Mutex::new(Progress {
                            chunks: Vec::new(),
                            len: 0,
                            hasher: Sha256::new(),
                            done: false,
                        })),
                    },
                );
            }
            let up = st
                .uploads
                .get(&h)
                .ok_or_else(|| Status::failed_precondition("no upload in progress"))?;
            if up.total != chunk.total {
                return Err(Status::invalid_argument(format!(
                    "blob {h} was announced at {} bytes, now {}",
                    up.total, chunk.total
                )));
            }
            Arc::clone(&up.progress)
        };
        let total = chunk.total;
        let mut p = lock_progress(&progress);
        // Every chunk where the bytes held end: a second stream of the same blob (a party
        // that resumed while its first stream was still being read) cannot interleave.
        if p.done || chunk.offset != p.len {
            return Err(Status::failed_precondition(format!(
                "a chunk of {h} at {}, the coordinator holds {} bytes",
                chunk.offset, p.len
            )));
        }
        let n = chunk.data.len() as u64;
        if p.len.saturating_add(n) > total {
            drop(p);
            self.drop_upload(&h, &progress);
            return Err(Status::invalid_argument(format!(
                "more bytes than the {h} blob's announced size"
            )));
        }
        p.hasher.update(&chunk.data);
        p.chunks.push(chunk.data.clone());
        p.len += n;
        if p.len < total {
            return Ok(pb::BlobStatus {
                offset: p.len,
                complete: false,
            });
        }
        let hashed = Hash32(p.hasher.finalize_reset().into());
        let chunks = std::mem::take(&mut p.chunks);
        p.done = true;
        drop(p);
        let mut st = self.lock();
        if !st
            .uploads
            .get(&h)
            .is_some_and(|u| Arc::ptr_eq(&u.progress, &progress))
        {
            // Dropped meanwhile (its request's deadline passed).
            return Err(Status::failed_precondition("no upload in progress"));
        }
        st.uploads.remove(&h);
        if hashed != h {
            return Err(Status::data_loss(format!(
                "the uploaded bytes do not hash to {h}: upload them again"
            )));
        }
        st.uploaded.insert(
            h,
            Held {
                party,
                chunks,
                len: total,
            },
        );
        st.transfers.received += 1;
        Ok(pb::BlobStatus {
            offset: total,
            complete: true,
        })
    }

    /// Drops the upload of `h` if it is still the one `progress` belongs to.
    fn drop_upload(&self, h: &Hash32, progress: &Arc<Mutex<Progress>>) {
        let mut st = self.lock();
        if st
            .uploads
            .get(h)
            .is_some_and(|u| Arc::ptr_eq(&u.progress, progress))
        {
            st.uploads.remove(h);
        }
    }
}

/// The next handshake frame, within [`HANDSHAKE_TIMEOUT`].
async fn next_frame(
    inbound: &mut Streaming<pb::PartyFrame>,
) -> Result<Option<party_frame::Kind>, String> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, inbound.message()).await {
        Err(_) => Err(format!(
            "no handshake frame within {} s",
            HANDSHAKE_TIMEOUT.as_secs()
        )),
        Ok(Err(s)) => Err(format!("the stream failed: {}", s.message())),
        Ok(Ok(None)) => Err("the stream ended during the handshake".to_owned()),
        Ok(Ok(Some(f))) => Ok(f.kind),
    }
}

fn frame(kind: coordinator_frame::Kind) -> pb::CoordinatorFrame {
    pb::CoordinatorFrame { kind: Some(kind) }
}

/// The gRPC service (what [`Hub::service`] wraps).
#[derive(Debug)]
pub struct Service {
    hub: Arc<Hub>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Federation for Service {
    type SessionStream = UnboundedReceiverStream<Result<pb::CoordinatorFrame, Status>>;
    type GetBlobStream = BoxStream<pb::BlobChunk>;
    type LedgerEntriesStream = BoxStream<pb::LedgerEntry>;

    async fn ledger_head(
        &self,
        request: tonic::Request<pb::LedgerQuery>,
    ) -> Result<tonic::Response<pb::LedgerHeadReply>, Status> {
        let published = self.hub.published()?;
        let old = request.get_ref().old_size;
        let c = published.consistency(old).map_err(|e| {
            Status::out_of_range(format!(
                "no consistency proof from {old} entries: the ledger has {} ({e})",
                published.len()
            ))
        })?;
        Ok(tonic::Response::new(pb::LedgerHeadReply {
            origin: c.head.origin,
            operator_key: c.head.operator.to_vec(),
            start_time: c.head.start_time,
            checkpoint: c.head.checkpoint,
            proof: c.proof.iter().map(|h| h.0.to_vec()).collect(),
        }))
    }

    async fn ledger_entries(
        &self,
        request: tonic::Request<pb::EntryRange>,
    ) -> Result<tonic::Response<Self::LedgerEntriesStream>, Status> {
        let published = self.hub.published()?;
        let r = request.into_inner();
        let max = usize::try_from(r.max.min(crate::ledger::MAX_ENTRIES_PER_CALL)).unwrap_or(0);
        let from = r.from;
        let entries = published.entries(from, max);
        let stream = entries.into_iter().enumerate().map(move |(i, bytes)| {
            Ok(pb::LedgerEntry {
                seq: from + i as u64,
                bytes,
            })
        });
        Ok(tonic::Response::new(Box::pin(tokio_stream::iter(stream))))
    }

    async fn session(
        &self,
        request: tonic::Request<Streaming<pb::PartyFrame>>,
    ) -> Result<tonic::Response<Self::SessionStream>, Status> {
        let peer = request.remote_addr();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(Arc::clone(&self.hub).drive(request.into_inner(), tx, peer));
        Ok(tonic::Response::new(UnboundedReceiverStream::new(rx)))
    }

    async fn get_blob(
        &self,
        request: tonic::Request<pb::BlobRange>,
    ) -> Result<tonic::Response<Self::GetBlobStream>, Status> {
        let party = self.hub.party_of(request.metadata())?;
        let range = request.into_inner();
        let blob = self.hub.get_blob(party, &range)?;
        let total = blob.len() as u64;
        if range.offset > total {
            return Err(Status::out_of_range(format!(
                "offset {} beyond the blob's {total} bytes",
                range.offset
            )));
        }
        let hash = range.hash.clone();
        let start = range.offset as usize;
        // Each chunk a slice of the offered blob's buffer, not a copy.
        let chunks = (start..blob.len()).step_by(CHUNK).map(move |at| {
            let end = (at + CHUNK).min(blob.len());
            Ok(pb::BlobChunk {
                hash: hash.clone(),
                offset: at as u64,
                total,
                data: blob.slice(at..end),
            })
        });
        Ok(tonic::Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    async fn put_blob(
        &self,
        request: tonic::Request<Streaming<pb::BlobChunk>>,
    ) -> Result<tonic::Response<pb::BlobStatus>, Status> {
        let party = self.hub.party_of(request.metadata())?;
        let mut inbound = request.into_inner();
        let mut hash = None;
        let mut status = pb::BlobStatus::default();
        while let Some(chunk) = inbound.message().await? {
            let first = hash.is_none();
            let h = match hash {
                Some(h) => h,
                None => {
                    let h = hash_of(&chunk.hash, "the blob's hash")
                        .map_err(|e| Status::invalid_argument(e.to_string()))?;
                    hash = Some(h);
                    h
                }
            };
            status = self.hub.put_chunk(party, &chunk, h, first)?;
            if status.complete {
                break;
            }
        }
        Ok(tonic::Response::new(status))
    }

    async fn blob_offset(
        &self,
        request: tonic::Request<pb::BlobRef>,
    ) -> Result<tonic::Response<pb::BlobStatus>, Status> {
        self.hub.party_of(request.metadata())?;
        let h = hash_of(&request.get_ref().hash, "the blob's hash")
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(tonic::Response::new(self.hub.blob_status(&h)))
    }
}

/// Wall-clock deadlines per kind of request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// For a party to connect and enrol.
    pub enrol: Duration,
    /// For a client to train and upload.
    pub train: Duration,
    /// For a validator to score and commit.
    pub score: Duration,
    /// For a validator to reveal.
    pub reveal: Duration,
}

/// The coordinator's transport over a [`Hub`]: [`Transport::send`] queues a request for its
/// party (sent now if it is connected, else when it connects); [`Transport::poll`] waits for
/// the replies (see the module's docs).
#[derive(Debug)]
pub struct GrpcTransport {
    hub: Arc<Hub>,
    deadlines: Deadlines,
}

impl GrpcTransport {
    /// The transport over `hub` with `deadlines`.
    pub fn new(hub: Arc<Hub>, deadlines: Deadlines) -> Self {
        Self { hub, deadlines }
    }
}

impl Transport for GrpcTransport {
    fn send(&mut self, request: Request) -> Result<(), TransportError> {
        let party = request.to();
        if self.hub.cfg.admit.key_of(party).is_none() {
            return Err(TransportError::UnknownParty { party });
        }
        let (what, wait) = match &request {
            Request::Enrol(_) => ("enrolment", self.deadlines.enrol),
            Request::Train(_) => ("training", self.deadlines.train),
            Request::Score(_) => ("scoring", self.deadlines.score),
            Request::Reveal(_) => ("reveal", self.deadlines.reveal),
        };
        let mut st = self.hub.lock();
        st.next_id += 1;
        let id = st.next_id;
        let (envelope, blobs) =
            strip_request(id, request).map_err(|e| TransportError::Link(e.to_string()))?;
        let hashes: Vec<Hash32> = blobs.iter().map(|(h, _)| *h).collect();
        for (h, b) in blobs {
            offer(&mut st, h, b);
        }
        if let Some(s) = st.sessions.get(&party) {
            let _ = s.tx.send(Ok(frame(coordinator_frame::Kind::Request(
                envelope.clone(),
            ))));
        }
        st.pending.insert(
            id,
            Pending {
                party,
                envelope,
                blobs: hashes,
                deadline: Instant::now() + wait,
                what,
            },
        );
        Ok(())
    }

    fn poll(&mut self, _now: u64) -> Result<Vec<Reply>, TransportError> {
        // Waits until every pending request is answered or one passes its deadline, so that a
        // phase's replies come back together, in request order; replies left in the shared
        // blob store are completed on this thread meanwhile.
        let mut st = loop {
            self.hub.complete_from_store();
            let mut st = self.hub.lock();
            while st.from_store.is_empty()
                && let Some(first) = st.pending.values().map(|p| p.deadline).min()
            {
                let now = Instant::now();
                if first <= now {
                    break;
                }
                st = self
                    .hub
                    .changed
                    .wait_timeout(st, first - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            if st.from_store.is_empty() {
                break st;
            }
        };
        let now = Instant::now();
        let expired: Vec<u64> = st
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(p) = st.pending.remove(&id) {
                tracing::warn!(party = %p.party, id, "no answer to the {} request in time", p.what);
                st.release(&p.blobs);
                // What the party uploaded for it can only come with a late reply, which is
                // dropped: its uploads go too, unless another of its requests is pending.
                let party = p.party;
                if !st.pending.values().any(|q| q.party == party) {
                    st.uploaded.retain(|_, b| b.party != party);
                    st.uploads.retain(|_, u| u.party != party);
                }
            }
        }
        Ok(std::mem::take(&mut st.replies).into_values().collect())
    }
}

fn offer(st: &mut State, h: Hash32, b: Vec<u8>) {
    st.offered
        .entry(h)
        .and_modify(|(_, n)| *n += 1)
        .or_insert_with(|| (Bytes::from(b), 1));
}
