//! A coordinator that rewrites its ledger's history is caught by its parties: each checks,
//! before it acts on a request, that the coordinator's latest durable checkpoint is signed by
//! the key it saw first and extends the last one it verified. A real party (its own link, real
//! sockets) against a coordinator's hub that serves, in turn, a ledger, the same ledger grown
//! (fine), and then another history under the same key (the party stops, naming it). The same
//! for a log rolled back, and for another operator key. Meanwhile an auditor fetches the
//! whole published log over the network and re-checks it as `cohort ledger verify` does.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use cohort_core::{Identity, tokens};
use cohort_ledger::protocol::Protocol;
use cohort_ledger::{EmbeddedLedger, LedgerConfig, LedgerState, TxContext};
use cohort_net::NetError;
use cohort_net::admit::Admit;
use cohort_net::party::{Dial, host};
use cohort_net::server::{Deadlines, GrpcTransport, Hub, HubConfig};
use cohort_node::party::Client;
use cohort_node::transport::{EnrolRequest, Party, Reply, Request, SignWith, Transport};
use cohort_tasks::{LinearTask, LinearTaskConfig};

const SEED: u64 = 8;
const ORIGIN: &str = "cohort.local/split";

fn key(name: &str) -> Identity {
    Identity::from_seed(SEED, name)
}

fn enrol() -> Request {
    Request::Enrol(EnrolRequest {
        party: Party::Client(0),
        run: Default::default(),
        sign: SignWith {
            contract: Default::default(),
            ctx: TxContext::Embedded {
                origin: ORIGIN.into(),
                nonce: 0,
                time: 60,
            },
        },
    })
}

/// A ledger of `origin` signed by `operator`, with the protocol deployed and `mints` mints.
fn ledger(dir: &std::path::Path, operator: &str, mints: &[u64]) -> Protocol<EmbeddedLedger> {
    let led = EmbeddedLedger::create(dir, LedgerConfig::new(ORIGIN, key(operator))).unwrap();
    let gov = key("gov");
    let mut p = Protocol::deploy(led, &gov).unwrap();
    for &m in mints {
        p.mint(&gov, gov.address(), tokens(m)).unwrap();
    }
    p
}

/// Sends `request` and waits up to 20 s for the party's reply.
fn ask(t: &mut GrpcTransport, request: Request) -> Option<Reply> {
    ask_within(t, request, Duration::from_secs(20))
}

/// Sends `request` and waits up to `wait` for the party's reply.
fn ask_within(t: &mut GrpcTransport, request: Request, wait: Duration) -> Option<Reply> {
    t.send(request).unwrap();
    let start = Instant::now();
    while start.elapsed() < wait {
        if let Some(r) = t.poll(0).unwrap().into_iter().next() {
            return Some(r);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Serves a hub on loopback; hosts client 0 on a thread; runs `script` as the coordinator
/// (with the hub's URL); returns what the party's host returned.
fn with_party(script: impl FnOnce(&Hub, &mut GrpcTransport, &str)) -> Result<String, NetError> {
    let t = LinearTask::new(LinearTaskConfig::default(), 1, 1, SEED);
    let admit = Admit {
        clients: vec![key("client-0").public_key()],
        validators: vec![key("validator-0").public_key()],
        chain: Default::default(),
    };
    let hub = Hub::new(HubConfig::new(ORIGIN, admit));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = cohort_net::run::serve(&rt, &hub, listener, None).unwrap();
    let url = format!("http://{addr}");
    let mut transport = GrpcTransport::new(
        Arc::clone(&hub),
        Deadlines {
            enrol: Duration::from_secs(20),
            train: Duration::from_secs(20),
            score: Duration::from_secs(20),
            reveal: Duration::from_secs(20),
        },
    );
    let mut dial = Dial::insecure(url.clone());
    dial.give_up = Duration::from_secs(20);
    std::thread::scope(|s| {
        let party = s.spawn(|| {
            let c = Client::new(0, key("client-0"), &t, SEED, 100);
            host(vec![Box::new(c)], &dial)
        });
        script(&hub, &mut transport, &url);
        hub.finish("the test is over");
        party.join().unwrap()
    })
}

/// The party's host ended with a split view whose message contains `want`.
fn split_view(result: Result<String, NetError>, want: &str) {
    match result {
        Err(e @ NetError::SplitView(_)) => {
            let msg = e.to_string();
            assert!(msg.contains(want), "{msg}");
            assert!(msg.contains("rewrites its history"), "{msg}");
        }
        other => panic!("expected a split view ({want}), got {other:?}"),
    }
}

#[test]
fn a_rewritten_history_stops_the_party_and_a_grown_one_does_not() {
    let tmp = tempfile::tempdir().unwrap();
    let result = with_party(|hub, t, url| {
        let mut a = ledger(&tmp.path().join("a"), "operator", &[1, 2]);
        hub.publish(a.backend().published());
        assert!(
            ask(t, enrol()).is_some(),
            "the party answers on the first ledger"
        );
        // The same ledger, grown: it extends what the party saw.
        a.mint(&key("gov"), key("gov").address(), tokens(3))
            .unwrap();
        assert!(
            ask(t, enrol()).is_some(),
            "the party answers on the grown ledger"
        );

        // An auditor reads the published log over the network and re-checks it: the same
        // figures as a check of the directory.
        let (head, entries, _) = cohort_net::ledger::fetch_ledger(&Dial::insecure(url)).unwrap();
        let remote = LedgerState::check(&head, &entries, 0.0).unwrap();
        let local = a.backend().verify().unwrap();
        assert_eq!(remote.report().root, local.root);
        assert_eq!(remote.report().state_root, local.state_root);
        assert_eq!(remote.report().entries, local.entries);

        // Another history under the same key, longer than the first.
        let b = ledger(&tmp.path().join("b"), "operator", &[1, 5, 5, 5]);
        assert!(b.backend().published().len() > a.backend().published().len());
        hub.publish(b.backend().published());
        assert!(
            ask_within(t, enrol(), Duration::from_secs(3)).is_none(),
            "the party must not answer on a rewritten ledger"
        );
    });
    split_view(result, "does not extend");
}

#[test]
fn a_rolled_back_ledger_or_another_key_stops_the_party() {
    let tmp = tempfile::tempdir().unwrap();
    let result = with_party(|hub, t, _| {
        let a = ledger(&tmp.path().join("a"), "operator", &[1, 2, 3]);
        hub.publish(a.backend().published());
        assert!(ask(t, enrol()).is_some());
        // A shorter log under the same key: the history the party saw is gone.
        let b = ledger(&tmp.path().join("b"), "operator", &[1]);
        hub.publish(b.backend().published());
        assert!(ask_within(t, enrol(), Duration::from_secs(3)).is_none());
    });
    split_view(result, "consistency proof");

    let result = with_party(|hub, t, _| {
        let a = ledger(&tmp.path().join("c"), "operator", &[1]);
        hub.publish(a.backend().published());
        assert!(ask(t, enrol()).is_some());
        // The same entries' shape, signed by another operator key.
        let b = ledger(&tmp.path().join("d"), "another operator", &[1, 2]);
        hub.publish(b.backend().published());
        assert!(ask_within(t, enrol(), Duration::from_secs(3)).is_none());
    });
    split_view(result, "signed by");
}
