//! One experiment with every party behind the network: the coordinator on this thread, the
//! gRPC server on a runtime of its own, and the clients and validators on a host thread that
//! dials the server over loopback, each party with its own authenticated session
//! over TLS (`cohort run --transport grpc`). The same parties, keys and ledger as the in-process run,
//! so the two can be compared side by side.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cohort_fl::learner::Learner;
use cohort_ledger::LedgerBackend;
use cohort_ledger::protocol::Protocol;
use cohort_node::runtime::{
    RoundSummary, RunError, RunOptions, RunSummary, ValidConfig, parties, run_with_options,
};
use cohort_node::transport::{Party, TransportError};

use crate::NetError;
use crate::admit::Admit;
use crate::party::{Dial, host};
use crate::server::{Deadlines, GrpcTransport, Hub, HubConfig};

/// A gRPC server for `hub` on `listener`, served by `rt` until the runtime stops.
///
/// # Errors
/// The listener cannot be handed to tokio.
pub fn serve(
    rt: &tokio::runtime::Runtime,
    hub: &Arc<Hub>,
    listener: std::net::TcpListener,
    tls: Option<tonic::transport::ServerTlsConfig>,
) -> Result<SocketAddr, NetError> {
    let io = |e: std::io::Error| NetError::Io {
        path: "the listening socket".into(),
        source: e,
    };
    listener.set_nonblocking(true).map_err(io)?;
    let addr = listener.local_addr().map_err(io)?;
    let service = hub.service();
    let listener = {
        let _guard = rt.enter();
        tokio::net::TcpListener::from_std(listener).map_err(io)?
    };
    let mut builder = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .initial_stream_window_size(crate::STREAM_WINDOW)
        .initial_connection_window_size(crate::CONNECTION_WINDOW)
        // Blob chunks are 1 MiB: let the parties send them in frames that large rather
        // than HTTP/2's default 16 KiB.
        .max_frame_size(crate::CHUNK as u32)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)));
    if let Some(tls) = tls {
        builder = builder.tls_config(tls).map_err(|e| NetError::Connect {
            what: "TLS for the server".into(),
            source: Box::new(e),
        })?;
    }
    let router = builder.add_service(service);
    rt.spawn(async move {
        if let Err(e) = router.serve_with_incoming(accepted(listener)).await {
            tracing::error!("the gRPC server stopped: {e}");
        }
    });
    Ok(addr)
}

/// The runtime servers run on (its type, for callers that keep one).
pub type Runtime = tokio::runtime::Runtime;

/// The tokio runtime a coordinator's gRPC server runs on, with `workers` threads.
///
/// # Errors
/// The operating system refuses the threads.
pub fn server_runtime(workers: usize) -> Result<tokio::runtime::Runtime, NetError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("cohort-grpc")
        .enable_all()
        .build()
        .map_err(|e| NetError::Io {
            path: "the server runtime".into(),
            source: e,
        })
}

/// The wall-clock deadlines of `cfg`: its phase timeouts, read as seconds of wall time, and
/// `enrol` for every party to connect and enrol.
pub fn deadlines(cfg: &ValidConfig, enrol: Duration) -> Deadlines {
    let c = &cfg.coordinator;
    Deadlines {
        enrol,
        train: Duration::from_secs(c.train_timeout),
        score: Duration::from_secs(c.commit_timeout),
        reveal: Duration::from_secs(c.reveal_timeout),
    }
}

/// Runs `cfg` as [`cohort_node::runtime::run_in_process`] does, with every client and
/// validator behind a loopback gRPC connection of its own, over TLS as a real federation's:
/// an ephemeral CA and a server certificate for `127.0.0.1` are made in memory for the run
/// ([`crate::tls::loopback`]; nothing is written) and every party trusts that CA, so the
/// comparison with the in-process run includes the cost of TLS. With `chain` (a run on an EVM
/// chain), every party also broadcasts its own transactions through that node, as
/// `cohort client --chain-rpc` does.
///
/// # Errors
/// What the run fails with; a party that fails or cannot connect ends the run with its error.
pub fn run_over_loopback<B: LedgerBackend, L: Learner + Sync + ?Sized>(
    cfg: &ValidConfig,
    backend: B,
    learner: &L,
    opts: RunOptions,
    chain: Option<Arc<dyn cohort_ledger::ChainSubmit>>,
    on_round: impl FnMut(&RoundSummary),
) -> Result<(Protocol<B>, RunSummary), RunError> {
    let link = |e: NetError| RunError::Transport(TransportError::Link(e.to_string()));
    let keys = opts.keys(cfg);
    let identity = |name: String| keys.identity(&name).public_key();
    let admit = Admit {
        clients: (0..cfg.clients)
            .map(|k| identity(format!("client-{k}")))
            .collect(),
        validators: (0..cfg.validators)
            .map(|v| identity(format!("validator-{v}")))
            .collect(),
        chain: Default::default(),
    };
    let run_id = format!(
        "cohort-run/{}",
        crate::hex_of(&cohort_node::resume::config_digest(cfg))
    );
    let mut hub_cfg = HubConfig::new(run_id, admit);
    hub_cfg.chain_id = backend.chain_id();
    let hub = Hub::new(hub_cfg);
    if let Some(ledger) = backend.published() {
        hub.publish(ledger);
    }
    let rt = server_runtime(2).map_err(link)?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| {
        link(NetError::Io {
            path: "127.0.0.1:0".into(),
            source: e,
        })
    })?;
    let (server_tls, party_tls) = crate::tls::loopback(SystemTime::now()).map_err(link)?;
    let addr = serve(&rt, &hub, listener, Some(server_tls)).map_err(link)?;
    let dial = Dial {
        url: format!("https://{addr}"),
        tls: Some(party_tls),
        give_up: Duration::from_secs(600),
        blobs: None,
        chain,
    };
    let mut transport =
        GrpcTransport::new(Arc::clone(&hub), deadlines(cfg, Duration::from_secs(600)));
    let result = std::thread::scope(|s| {
        let parties_thread = s.spawn(|| host(parties(cfg, &keys, learner), &dial));
        let run = run_with_options(cfg, backend, learner, &mut transport, opts, on_round);
        match &run {
            Ok(_) => hub.finish("the run is complete"),
            Err(e) => hub.finish(&format!("the run stopped: {e}")),
        }
        let parties = parties_thread
            .join()
            .unwrap_or_else(|_| Err(NetError::Protocol("the parties' thread panicked".into())));
        match (run, parties) {
            (Ok(x), Ok(_)) => Ok(x),
            (Err(e), _) => Err(e),
            (Ok(_), Err(e)) => Err(link(e)),
        }
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

/// The network side of a coordinator process (`cohort coordinator`).
#[derive(Debug)]
pub struct Listen {
    /// Where to listen.
    pub listener: std::net::TcpListener,
    /// Who may join.
    pub admit: Admit,
    /// The server's TLS (`None` only with `--insecure`).
    pub tls: Option<tonic::transport::ServerTlsConfig>,
    /// How long to wait for every admitted party to connect and enrol.
    pub enrol: Duration,
    /// The run's identifier the parties sign into their session proofs.
    pub run: String,
    /// A blob store shared with the parties (see [`HubConfig::blobs`]).
    pub blobs: Option<Arc<dyn cohort_blob::BlobStore>>,
}

/// Runs `cfg` as its coordinator, the clients and validators being separate processes that
/// dial in (`cohort client`, `cohort validator`) with the keys `net.admit` lists. Returns once
/// the run is over and the parties connected at the end have been told so.
///
/// # Errors
/// What the run fails with, or the server cannot start.
pub fn run_as_coordinator<B: LedgerBackend, L: Learner + ?Sized>(
    cfg: &ValidConfig,
    backend: B,
    learner: &L,
    opts: RunOptions,
    net: Listen,
    on_round: impl FnMut(&RoundSummary),
) -> Result<(Protocol<B>, RunSummary), RunError> {
    let link = |e: NetError| RunError::Transport(TransportError::Link(e.to_string()));
    // On a chain each party acts from the address of its own chain key, which only its line
    // in the admission list can tell (the key derives from the party's secret).
    let roster = match backend.chain_id() {
        Some(_) => net.admit.chain_roster().map_err(|why| {
            RunError::Transport(TransportError::Link(format!("the admission list: {why}")))
        })?,
        None => net.admit.roster(),
    };
    let mut hub_cfg = HubConfig::new(net.run, net.admit);
    hub_cfg.blobs = net.blobs;
    hub_cfg.chain_id = backend.chain_id();
    let hub = Hub::new(hub_cfg);
    // What the ledger makes durable is served: the parties check each checkpoint extends the
    // last, and auditors read it (`cohort ledger verify --remote`).
    if let Some(ledger) = backend.published() {
        hub.publish(ledger);
    }
    let rt = server_runtime(2).map_err(link)?;
    let addr = serve(&rt, &hub, net.listener, net.tls).map_err(link)?;
    tracing::info!(%addr, "listening");
    let mut transport = GrpcTransport::new(Arc::clone(&hub), deadlines(cfg, net.enrol));
    // A resumed coordinator may finish before parties still in their back-off have dialled
    // in again: it waits for all of them to be told.
    let resumed = opts.is_resuming();
    let run = run_with_options(
        cfg,
        backend,
        learner,
        &mut transport,
        opts.with_roster(roster),
        on_round,
    );
    match &run {
        Ok(_) => hub.finish("the run is complete"),
        Err(e) => hub.finish(&format!("the run stopped: {e}")),
    }
    let t = hub.transfers();
    tracing::info!(
        "blobs: {} sent and {} received through the coordinator, {} replies' blobs read from \
         the shared store",
        t.served,
        t.received,
        t.from_store
    );
    // Let the parties read that the run is over before the server goes.
    let untold = hub.linger(resumed, LINGER);
    log_untold(&untold);
    rt.shutdown_timeout(Duration::from_secs(1));
    run
}

/// How long a coordinator whose run is over waits for its parties to hear so: longer than a
/// party's longest back-off between two dials (5 s), so one that lost its connection when the
/// coordinator stopped hears it on its next dial.
pub const LINGER: Duration = Duration::from_secs(12);

fn log_untold(untold: &[Party]) {
    if !untold.is_empty() {
        let names: Vec<String> = untold.iter().map(ToString::to_string).collect();
        tracing::info!(
            "not told that the run is over (not connected): {}",
            names.join(", ")
        );
    }
}

/// Serves a run that is already over (`cohort coordinator --resume` on a finished run): every
/// admitted party that dials in within `max` is told so, and the server goes once all have
/// been, or after `max`. Returns the parties that were not told.
///
/// # Errors
/// The server cannot start.
pub fn tell_finished(net: Listen, max: Duration) -> Result<Vec<Party>, NetError> {
    let hub = Hub::new(HubConfig::new(net.run, net.admit));
    let rt = server_runtime(1)?;
    hub.finish("the run is complete");
    let addr = serve(&rt, &hub, net.listener, net.tls)?;
    tracing::info!(%addr, "the run is finished; telling the parties that dial in");
    let untold = hub.linger(true, max);
    log_untold(&untold);
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(untold)
}

/// The sockets `listener` accepts, each with `TCP_NODELAY`. The server builder's
/// `tcp_nodelay` applies only to sockets tonic accepts itself (`serve`), not to an incoming
/// stream: without it here a small frame can wait for the peer's delayed acknowledgement
/// (about 40 ms a message).
pub(crate) fn accepted(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|s| {
        if let Ok(s) = &s {
            let _ = s.set_nodelay(true);
        }
        s
    })
}
