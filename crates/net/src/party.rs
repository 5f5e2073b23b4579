//! The parties' side: dial the coordinator, authenticate, answer requests, reconnect.
//!
//! [`host`] runs one or more parties ([`PartyNode`]s: a `cohort client` process hosts one;
//! `cohort run --transport grpc` hosts them all) on the calling thread, one at a time in the
//! order their requests arrive, as the in-process host does. Each party has its own *link*, a
//! task on a small tokio runtime that owns the party's session: it dials out, answers the
//! challenge with the party's [`SessionSigner`], downloads the blobs a request names, hands
//! the request to the host thread, uploads the reply's blobs and sends the reply. The link
//! keeps heartbeating while its party works; when the connection drops it dials again (with
//! backoff) and the coordinator sends again whatever the party has not answered. A request
//! it has answered already (the reply was lost with the connection) is answered again from the
//! link's copy of the reply, so a party never trains twice for one request.

use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use cohort_blob::BlobStore;
use cohort_core::Hash32;
use cohort_ledger::{ChainSubmit, TxContext};
use cohort_node::party::{PartyNode, SessionSigner};
use cohort_node::transport::{Party, Reply, Request};
use prost::bytes::Bytes;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::ledger::{Watch, ledger_head};
use crate::pb::federation_client::FederationClient;
use crate::pb::{self, coordinator_frame, party_frame};
use crate::wire::{fill_request, strip_reply};
use crate::{CHUNK, NetError, PROTOCOL_VERSION, SESSION_HEADER};

/// Where and how the parties dial.
#[derive(Debug, Clone)]
pub struct Dial {
    /// The coordinator's URL (`https://host:port`, or `http://` with `--insecure`).
    pub url: String,
    /// TLS (the CA to trust and the server's name), `None` for plain text.
    pub tls: Option<ClientTlsConfig>,
    /// How long a party keeps dialling without getting a session before it gives up.
    pub give_up: Duration,
    /// A blob store the party shares with the coordinator (`--blobs s3://...`): the party reads
    /// the blobs a request names from it and writes its replies' blobs to it, so that they do
    /// not travel through the coordinator; a blob it cannot find or write there goes through
    /// the coordinator as usual. `None`: every blob through the coordinator.
    pub blobs: Option<Arc<dyn BlobStore>>,
    /// The party's own node of the chain the run records on (`--chain-rpc URL`): on a chain,
    /// the party broadcasts each transaction it signs itself, through this node, before it
    /// sends the reply to the coordinator (which then finds it on chain). A coordinator that
    /// says the run records on another ledger is refused. `None`: the coordinator relays.
    pub chain: Option<Arc<dyn ChainSubmit>>,
}

impl Dial {
    /// `url` in plain text, giving up after 10 minutes without a session.
    pub fn insecure(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            tls: None,
            give_up: Duration::from_secs(600),
            blobs: None,
            chain: None,
        }
    }
}

/// Runs a blocking blob-store call on a thread of its own (a store may run its own runtime,
/// which it cannot do inside the link's).
async fn off_runtime<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, cohort_blob::BlobError> + Send + 'static,
) -> Result<T, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("the blob store's thread stopped".into()),
    }
}

/// What a link hands the host thread.
enum ToHost {
    /// Request `id` for party number `link`.
    Request {
        link: usize,
        id: u64,
        request: Request,
    },
    /// The link is done: the run finished (`Ok`) or the link gave up (`Err`).
    Done { result: Result<String, NetError> },
}

/// Runs `parties` against the coordinator at `dial` until it says the run is over. Returns
/// the reason it gave.
///
/// # Errors
/// A party that cannot answer a request (its learner failed), a session the coordinator
/// refuses (an unadmitted key, another protocol version), or no session for `dial.give_up`.
pub fn host(mut parties: Vec<Box<dyn PartyNode + '_>>, dial: &Dial) -> Result<String, NetError> {
    crate::tls::check_dial(&dial.url, dial.tls.is_some())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("cohort-link")
        .enable_all()
        .build()
        .map_err(|e| NetError::Connect {
            what: "start the network runtime".into(),
            source: Box::new(e),
        })?;
    let (to_host, from_links) = std_mpsc::channel::<ToHost>();
    let mut replies = Vec::new();
    for (link, p) in parties.iter().enumerate() {
        let (tx, rx) = mpsc::unbounded_channel::<(u64, Reply)>();
        replies.push(tx);
        let ctx = Link {
            link,
            party: p.party(),
            signer: p.session_signer(),
            dial: dial.clone(),
            to_host: to_host.clone(),
        };
        rt.spawn(ctx.run(rx));
    }
    drop(to_host);
    let mut open = parties.len();
    let mut reason = String::new();
    while open > 0 {
        let Ok(msg) = from_links.recv() else {
            break;
        };
        match msg {
            ToHost::Request { link, id, request } => {
                let party = parties[link].party();
                let reply = parties[link].handle(&request).map_err(|e| {
                    tracing::error!(%party, "cannot answer request {id}: {e}");
                    NetError::Party(e)
                })?;
                let _ = replies[link].send((id, reply));
            }
            ToHost::Done { result, .. } => {
                open -= 1;
                reason = result?;
            }
        }
    }
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(reason)
}

struct Link {
    link: usize,
    party: Party,
    signer: SessionSigner,
    dial: Dial,
    to_host: std_mpsc::Sender<ToHost>,
}

/// How a session ended.
enum End {
    /// The coordinator said the run is over.
    Finished(String),
    /// The connection dropped (or never came up): dial again.
    Dropped(NetError),
}

impl Link {
    async fn run(self, mut replies: mpsc::UnboundedReceiver<(u64, Reply)>) {
        let mut last_session = Instant::now();
        let mut backoff = Duration::from_millis(100);
        let mut answered: Option<(u64, Reply)> = None;
        // What this party trusts of the coordinator's ledger, kept across sessions.
        let mut watch = Watch::new();
        let result = loop {
            match self
                .session(&mut replies, &mut answered, &mut last_session, &mut watch)
                .await
            {
                Ok(End::Finished(reason)) => break Ok(reason),
                Err(e) => break Err(e),
                Ok(End::Dropped(e)) => {
                    if last_session.elapsed() > self.dial.give_up {
                        break Err(NetError::Connect {
                            what: format!(
                                "{}: no session with {} for {} s",
                                self.party,
                                self.dial.url,
                                self.dial.give_up.as_secs()
                            ),
                            source: Box::new(e),
                        });
                    }
                    tracing::info!(party = %self.party, "connection lost ({e}); dialling again in {} ms", backoff.as_millis());
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        };
        let _ = self.to_host.send(ToHost::Done { result });
    }

    async fn connect(&self) -> Result<Channel, NetError> {
        let fail = |what: &str, e: tonic::transport::Error| NetError::Connect {
            what: format!("{what} {}", self.dial.url),
            source: Box::new(e),
        };
        endpoint(&self.dial.url, self.dial.tls.as_ref())
            .map_err(|e| fail("the coordinator URL or TLS for", e))?
            .connect()
            .await
            .map_err(|e| fail("connect to", e))
    }

    /// One session, from dialling to its end. `Err` only for what dialling again cannot mend
    /// (a refusal, a party that failed).
    async fn session(
        &self,
        replies: &mut mpsc::UnboundedReceiver<(u64, Reply)>,
        answered: &mut Option<(u64, Reply)>,
        last_session: &mut Instant,
        watch: &mut Watch,
    ) -> Result<End, NetError> {
        let dropped = |e: NetError| Ok(End::Dropped(e));
        let channel = match self.connect().await {
            Ok(c) => c,
            // A certificate the party cannot trust: dialling again cannot mend it.
            Err(e) => match crate::tls::handshake_refusal(&self.dial.url, &e) {
                Some(reason) => {
                    return Err(NetError::Tls {
                        what: self.party.to_string(),
                        reason,
                    });
                }
                None => return dropped(e),
            },
        };
        let mut client = FederationClient::new(channel)
            .max_decoding_message_size(crate::MAX_MESSAGE + CHUNK)
            .max_encoding_message_size(crate::MAX_MESSAGE + CHUNK);
        let (out, out_rx) = mpsc::unbounded_channel::<pb::PartyFrame>();
        let send = |kind: party_frame::Kind| {
            out.send(pb::PartyFrame { kind: Some(kind) })
                .map_err(|_| NetError::Protocol("the session's stream closed".into()))
        };
        let (role, index) = match self.party {
            Party::Client(k) => ("client", k),
            Party::Validator(v) => ("validator", v),
        };
        if let Err(e) = send(party_frame::Kind::Hello(pb::Hello {
            protocol_version: PROTOCOL_VERSION,
            role: role.into(),
            index,
            public_key: self.signer.public_key().to_vec(),
            agent: format!("cohort {}", env!("CARGO_PKG_VERSION")),
        })) {
            return dropped(e);
        }
        let mut inbound = match client.session(UnboundedReceiverStream::new(out_rx)).await {
            Ok(r) => r.into_inner(),
            Err(s) => {
                // Plain text to a coordinator that serves TLS: it drops the connection. Ask
                // it in TLS, and if it answers so, say so rather than dial again.
                if self.dial.tls.is_none() && crate::tls::speaks_tls(&self.dial.url).await {
                    return Err(crate::tls::plain_to_tls(&self.dial.url, &self.party));
                }
                return dropped(status("open a session", s));
            }
        };
        let mut next = async || -> Result<Option<coordinator_frame::Kind>, NetError> {
            match inbound.message().await {
                Ok(Some(f)) => Ok(f.kind),
                Ok(None) => Err(NetError::Protocol(
                    "the coordinator closed the stream".into(),
                )),
                Err(s) => Err(status("the session", s)),
            }
        };
        let challenge = match next().await {
            Ok(Some(coordinator_frame::Kind::Challenge(c))) => c,
            Ok(Some(coordinator_frame::Kind::Refused(r))) => {
                return Err(NetError::Refused(r.reason));
            }
            Ok(_) => return dropped(NetError::Protocol("no challenge".into())),
            Err(e) => return dropped(e),
        };
        if challenge.protocol_version != PROTOCOL_VERSION {
            return Err(NetError::Refused(format!(
                "the coordinator speaks protocol version {}, this party version {PROTOCOL_VERSION}",
                challenge.protocol_version
            )));
        }
        let proof = self.signer.prove(&challenge.run, &challenge.nonce);
        if let Err(e) = send(party_frame::Kind::Proof(pb::Proof {
            signature: proof.signature.to_vec(),
        })) {
            return dropped(e);
        }
        let welcome = match next().await {
            Ok(Some(coordinator_frame::Kind::Welcome(w))) => w,
            Ok(Some(coordinator_frame::Kind::Refused(r))) => {
                return Err(NetError::Refused(r.reason));
            }
            Ok(_) => return dropped(NetError::Protocol("no welcome".into())),
            Err(e) => return dropped(e),
        };
        *last_session = Instant::now();
        tracing::info!(party = %self.party, url = %self.dial.url, "session open");
        let token: MetadataValue<_> = welcome
            .session
            .parse()
            .map_err(|_| NetError::Protocol("a malformed session token".into()))?;
        let store = self.shared_store(&welcome.blob_store)?;
        // The ledger the run records on, the same in every session: a coordinator that shows
        // this party an embedded ledger once and a chain another time (or two chains) shows
        // it two histories.
        let chain = (welcome.chain_id != 0).then_some(welcome.chain_id);
        if let Some(id) = chain
            && !cohort_ledger::CHAIN_SUPPORT
        {
            return Err(NetError::Refused(format!(
                "the coordinator records on the EVM chain with id {id}, and this build of cohort \
                 cannot sign chain transactions: build it with `--features evm-rpc`"
            )));
        }
        if let Some(own) = &self.dial.chain
            && chain != Some(own.chain_id())
        {
            return Err(NetError::Refused(format!(
                "--chain-rpc {} is a node of the EVM chain with id {}, and the coordinator \
                 records the run on {}",
                own.url(),
                own.chain_id(),
                ledger_name(chain)
            )));
        }
        match watch.chain {
            None => watch.chain = Some(chain),
            Some(seen) if seen != chain => {
                return Err(NetError::SplitView(format!(
                    "the coordinator said the run records on {} and now on {}",
                    ledger_name(seen),
                    ledger_name(chain)
                )));
            }
            Some(_) => {}
        }
        let beat_every = Duration::from_secs(u64::from(welcome.heartbeat_seconds.clamp(1, 3600)));
        let silence = beat_every * 3;
        let mut beat = tokio::time::interval(beat_every);
        let mut seq = 0u64;
        loop {
            tokio::select! {
                _ = beat.tick() => {
                    seq += 1;
                    if let Err(e) = send(party_frame::Kind::Heartbeat(pb::Heartbeat { seq })) {
                        return dropped(e);
                    }
                }
                r = replies.recv() => {
                    let Some((id, reply)) = r else {
                        return Err(NetError::Protocol("the host stopped".into()));
                    };
                    *answered = Some((id, reply.clone()));
                    if let Err(e) = self.send_reply(&mut client, &token, &send, id, reply, store.as_ref()).await {
                        return dropped(e);
                    }
                }
                f = tokio::time::timeout(silence, next()) => {
                    let kind = match f {
                        Err(_) => return dropped(NetError::Protocol(format!("the coordinator was silent for {} s", silence.as_secs()))),
                        Ok(Err(e)) => return dropped(e),
                        Ok(Ok(k)) => k,
                    };
                    match kind {
                        Some(coordinator_frame::Kind::Request(e)) => {
                            if let Some((id, reply)) = answered.as_ref().filter(|(id, _)| *id == e.id) {
                                // Answered before the connection dropped: the same reply again.
                                let (id, reply) = (*id, reply.clone());
                                if let Err(err) = self.send_reply(&mut client, &token, &send, id, reply, store.as_ref()).await {
                                    return dropped(err);
                                }
                                continue;
                            }
                            let request = match self.fetch(&mut client, &token, &e, store.as_ref()).await {
                                Ok(r) => r,
                                Err(NetError::Protocol(why)) => {
                                    tracing::warn!(party = %self.party, id = e.id, "a malformed request: {why}");
                                    continue;
                                }
                                Err(err) => return dropped(err),
                            };
                            if request.to() != self.party {
                                tracing::warn!(party = %self.party, id = e.id, "a request for {}: ignored", request.to());
                                continue;
                            }
                            // Nothing is signed for a ledger other than the one the run
                            // records on.
                            check_ledger_kind(&request, chain)?;
                            // Nothing is signed on top of a ledger that rewrote its history
                            // (a chain's history is the chain's to keep).
                            if chain.is_some() {
                                let _ = self.to_host.send(ToHost::Request { link: self.link, id: e.id, request });
                                continue;
                            }
                            match ledger_head(&mut client, watch.size()).await {
                                Ok((head, proof)) => {
                                    let cp = watch.check(&head, &proof)?;
                                    tracing::debug!(party = %self.party, size = cp.size, root = %cp.root, "ledger checked");
                                }
                                // A proof from a size the ledger never reached: another history.
                                Err(NetError::Status { status, .. }) if status.code() == tonic::Code::OutOfRange => {
                                    return Err(NetError::SplitView(format!(
                                        "it has no consistency proof from the {} entries it showed before: {}",
                                        watch.size(),
                                        status.message()
                                    )));
                                }
                                Err(err @ NetError::Protocol(_)) => return Err(NetError::SplitView(err.to_string())),
                                Err(err) => return dropped(err),
                            }
                            let _ = self.to_host.send(ToHost::Request { link: self.link, id: e.id, request });
                        }
                        Some(coordinator_frame::Kind::Finished(f)) => return Ok(End::Finished(f.reason)),
                        Some(coordinator_frame::Kind::Refused(r)) => return Err(NetError::Refused(r.reason)),
                        Some(coordinator_frame::Kind::Heartbeat(_)) | None => {}
                        Some(_) => return dropped(NetError::Protocol("a handshake frame inside an open session".into())),
                    }
                }
            }
        }
    }

    /// The blob store to use this session: the party's `--blobs` when the coordinator shares
    /// one (`coordinator`, its location, non-empty); none otherwise, with a warning. Two
    /// different S3 locations are a misconfiguration the party stops on (the coordinator could
    /// never read what it writes).
    fn shared_store(&self, coordinator: &str) -> Result<Option<Arc<dyn BlobStore>>, NetError> {
        let Some(mine) = &self.dial.blobs else {
            return Ok(None);
        };
        if coordinator.is_empty() {
            tracing::warn!(party = %self.party, "--blobs {}: the coordinator shares no blob store; blobs go through it", mine.location());
            return Ok(None);
        }
        let here = mine.location();
        if here.starts_with("s3://") && coordinator.starts_with("s3://") && here != coordinator {
            return Err(NetError::Protocol(format!(
                "--blobs {here}: the coordinator shares {coordinator}; give the same store"
            )));
        }
        Ok(Some(Arc::clone(mine)))
    }

    /// The request an envelope carries, with its blobs downloaded.
    async fn fetch(
        &self,
        client: &mut FederationClient<Channel>,
        token: &MetadataValue<tonic::metadata::Ascii>,
        e: &pb::Envelope,
        store: Option<&Arc<dyn BlobStore>>,
    ) -> Result<Request, NetError> {
        let hashes = crate::wire::blob_hashes(e)?;
        let mut blobs = std::collections::HashMap::new();
        for h in &hashes {
            if blobs.contains_key(h) {
                continue;
            }
            // From the shared store first (the store checks the hash), else the coordinator.
            if let Some(store) = store {
                let (store, want) = (Arc::clone(store), *h);
                match off_runtime(move || store.get(&want)).await {
                    Ok(b) => {
                        blobs.insert(*h, b);
                        continue;
                    }
                    Err(why) => {
                        tracing::debug!(party = %self.party, blob = %h, "not from the shared store ({why}): from the coordinator");
                    }
                }
            }
            blobs.insert(*h, download(client, token, h).await?);
        }
        fill_request(e, |h| {
            blobs
                .get(h)
                .cloned()
                .ok_or_else(|| NetError::Protocol(format!("blob {h} missing")))
        })
    }

    async fn send_reply(
        &self,
        client: &mut FederationClient<Channel>,
        token: &MetadataValue<tonic::metadata::Ascii>,
        send: &impl Fn(party_frame::Kind) -> Result<(), NetError>,
        id: u64,
        reply: Reply,
        store: Option<&Arc<dyn BlobStore>>,
    ) -> Result<(), NetError> {
        let what = match &reply {
            Reply::Enrol(_) => "enrolment",
            Reply::Update(_) => "update",
            Reply::Refusal(_) => "refusal",
            Reply::Commit(_) => "commitment",
            Reply::Reveal(_) => "reveal",
        };
        if let Some(own) = &self.dial.chain {
            self.submit_own(own.as_ref(), what, &reply).await;
        }
        let (envelope, blobs) = strip_reply(id, reply)?;
        for (h, b) in blobs {
            // To the shared store when there is one (the coordinator reads it from there).
            if let Some(store) = store {
                let store = Arc::clone(store);
                let (b2, want) = (b.clone(), h);
                match off_runtime(move || store.put(&b2)).await {
                    Ok(got) if got == want => continue,
                    Ok(got) => {
                        tracing::warn!(party = %self.party, "the shared store named blob {want} {got}: sent through the coordinator")
                    }
                    Err(why) => {
                        tracing::warn!(party = %self.party, blob = %h, "the shared store refused the blob ({why}): sent through the coordinator")
                    }
                }
            }
            upload(client, token, &h, Bytes::from(b)).await?;
        }
        send(party_frame::Kind::Reply(envelope))?;
        tracing::info!(party = %self.party, id, "{what} sent");
        Ok(())
    }
}

impl Link {
    /// Broadcasts the transactions `reply` carries through the party's own node, in order (an
    /// enrolment's are consecutive nonces), each once included before the next. One the chain
    /// would refuse is not sent (the coordinator refuses it too), and one the node cannot take
    /// goes through the coordinator's relay: either way the reply is sent, with a log line.
    async fn submit_own(&self, own: &dyn ChainSubmit, what: &str, reply: &Reply) {
        for call in reply.signed_calls() {
            match own.submit(call).await {
                Ok(s) => tracing::info!(
                    party = %self.party,
                    tx = %s.tx_hash,
                    block = s.block,
                    "{what}: its transaction is on the chain{}",
                    if s.known { " (the node had it already)" } else { "" }
                ),
                Err(e) => {
                    tracing::warn!(party = %self.party, "{what}: not submitted through {} ({e}); the coordinator relays it", own.url());
                    return;
                }
            }
        }
    }
}

fn status(what: &str, s: tonic::Status) -> NetError {
    NetError::Status {
        what: what.to_owned(),
        status: Box::new(s),
    }
}

fn with_token<T>(m: T, token: &MetadataValue<tonic::metadata::Ascii>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(m);
    r.metadata_mut().insert(SESSION_HEADER, token.clone());
    r
}

/// Downloads a blob, resuming from the bytes already in after a broken stream (three tries).
/// The chunks are kept as tonic decoded them and put together once, at the end (the caller
/// checks the blob's hash).
async fn download(
    client: &mut FederationClient<Channel>,
    token: &MetadataValue<tonic::metadata::Ascii>,
    h: &Hash32,
) -> Result<Vec<u8>, NetError> {
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut len = 0u64;
    let mut tries = 0;
    loop {
        let range = pb::BlobRange {
            hash: h.0.to_vec(),
            offset: len,
        };
        let result: Result<(), tonic::Status> = async {
            let mut s = client
                .get_blob(with_token(range, token))
                .await?
                .into_inner();
            while let Some(c) = s.message().await? {
                if c.offset != len {
                    return Err(tonic::Status::data_loss("a chunk out of order"));
                }
                len += c.data.len() as u64;
                chunks.push(c.data);
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => {
                let mut data = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
                for c in &chunks {
                    data.extend_from_slice(c);
                }
                return Ok(data);
            }
            Err(s)
                if tries < 3
                    && matches!(
                        s.code(),
                        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal
                    ) =>
            {
                tries += 1;
                tracing::debug!(
                    "download of {h} broke at {len} bytes ({}); resuming",
                    s.message()
                );
            }
            Err(s) => return Err(status(&format!("download blob {h}"), s)),
        }
    }
}

/// How a party dials `url`: timeouts, keep-alives, flow-control windows and `tls`.
pub(crate) fn endpoint(
    url: &str,
    tls: Option<&tonic::transport::ClientTlsConfig>,
) -> Result<Endpoint, tonic::transport::Error> {
    let ep = Endpoint::from_shared(url.to_owned())?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .initial_stream_window_size(crate::STREAM_WINDOW)
        .initial_connection_window_size(crate::CONNECTION_WINDOW)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20));
    match tls {
        Some(tls) => ep.tls_config(tls.clone()),
        None => Ok(ep),
    }
}

/// Uploads blob `h`, its bytes `b`, from where the coordinator's copy ends (three tries).
pub(crate) async fn upload(
    client: &mut FederationClient<Channel>,
    token: &MetadataValue<tonic::metadata::Ascii>,
    h: &Hash32,
    b: Bytes,
) -> Result<(), NetError> {
    let mut tries = 0;
    loop {
        let held = client
            .blob_offset(with_token(pb::BlobRef { hash: h.0.to_vec() }, token))
            .await
            .map_err(|s| status("ask how much of a blob is held", s))?
            .into_inner();
        if held.complete {
            return Ok(());
        }
        let start = usize::try_from(held.offset)
            .unwrap_or(usize::MAX)
            .min(b.len());
        let total = b.len() as u64;
        let hash = h.0.to_vec();
        // Each chunk a slice of the blob's buffer, not a copy.
        let shared = b.clone();
        let chunks = (start..shared.len())
            .step_by(CHUNK)
            .map(move |at| pb::BlobChunk {
                hash: hash.clone(),
                offset: at as u64,
                total,
                data: shared.slice(at..(at + CHUNK).min(shared.len())),
            });
        match client
            .put_blob(with_token(tokio_stream::iter(chunks), token))
            .await
        {
            Ok(r) if r.get_ref().complete => return Ok(()),
            Ok(_) | Err(_) if tries < 3 => tries += 1,
            Ok(r) => {
                return Err(NetError::Protocol(format!(
                    "the upload of {h} stopped at {} of {total} bytes",
                    r.get_ref().offset
                )));
            }
            Err(s) => return Err(status(&format!("upload blob {h}"), s)),
        }
    }
}

/// "the EVM chain with id N" or "its own embedded ledger".
fn ledger_name(chain: Option<u64>) -> String {
    match chain {
        Some(id) => format!("the EVM chain with id {id}"),
        None => "its own embedded ledger".into(),
    }
}

/// Refuses a request whose calls would be signed for another ledger than the one the
/// coordinator said the run records on (`chain`, from its `Welcome`): a signature is only ever
/// given for that one.
fn check_ledger_kind(request: &Request, chain: Option<u64>) -> Result<(), NetError> {
    let asked = match &request.sign_with().ctx {
        TxContext::Chain { chain_id, .. } => Some(*chain_id),
        TxContext::Embedded { .. } => None,
    };
    if asked == chain {
        return Ok(());
    }
    Err(NetError::SplitView(format!(
        "the coordinator said the run records on {} but asks {} to sign a call for {}",
        ledger_name(chain),
        request.to(),
        ledger_name(asked)
    )))
}

#[cfg(test)]
mod tests {
    use cohort_node::transport::{RevealRequest, SignWith};

    use super::*;

    fn reveal(ctx: TxContext) -> Request {
        Request::Reveal(RevealRequest {
            round: 1,
            ledger_round: 1,
            validator: 0,
            sign: SignWith {
                contract: Default::default(),
                ctx,
            },
        })
    }

    #[test]
    fn a_party_signs_only_for_the_ledger_the_coordinator_named() {
        let embedded = reveal(TxContext::Embedded {
            origin: "o".into(),
            nonce: 0,
            time: 0,
        });
        let chain = |chain_id| {
            reveal(TxContext::Chain {
                chain_id,
                nonce: 0,
                gas_limit: 1,
                max_fee_per_gas: 1,
                max_priority_fee_per_gas: 1,
            })
        };
        assert!(check_ledger_kind(&embedded, None).is_ok());
        assert!(check_ledger_kind(&chain(31337), Some(31337)).is_ok());
        for (request, named, want) in [
            (
                &embedded,
                Some(31337),
                "asks validator-0 to sign a call for its own embedded ledger",
            ),
            (
                &chain(31337),
                None,
                "records on its own embedded ledger but asks validator-0 to sign a call for the EVM chain with id 31337",
            ),
            (&chain(1), Some(31337), "the EVM chain with id 1"),
        ] {
            let err = check_ledger_kind(request, named).unwrap_err();
            assert!(matches!(err, NetError::SplitView(_)), "{err}");
            assert!(err.to_string().contains(want), "{err}");
        }
    }
}
