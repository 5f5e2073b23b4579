//! The federation over real gRPC sockets on loopback: a run whose every party has its own
//! authenticated session records what the in-process run records, and a key the coordinator
//! did not admit, a forged proof or another protocol version is refused before any work.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use cohort_core::Identity;
use cohort_fl::UpdateAttack;
use cohort_fl::coordinator::CoordinatorConfig;
use cohort_ledger::{EmbeddedLedger, LedgerConfig};
use cohort_net::NetError;
use cohort_net::admit::Admit;
use cohort_net::party::{Dial, host};
use cohort_net::pb::federation_client::FederationClient;
use cohort_net::pb::{self, coordinator_frame, party_frame};
use cohort_net::server::{Hub, HubConfig};
use cohort_node::party::{Client, PartyNode};
use cohort_node::runtime::{AttackConfig, RunConfig, RunOptions, RunSummary, run_in_process};
use cohort_tasks::{LinearTask, LinearTaskConfig};

fn config() -> RunConfig {
    RunConfig {
        seed: 11,
        clients: 6,
        validators: 3,
        task: Default::default(),
        coordinator: CoordinatorConfig {
            rounds: 3,
            clients_per_round: 5,
            ..CoordinatorConfig::default()
        },
        aggregation: Default::default(),
        attack: Some(AttackConfig {
            fraction: 0.34,
            attack: UpdateAttack::SignFlip { scale: 3.0 }.into(),
            colluding_validators: 0,
            sybil_stake: None,
        }),
        unlearning: Default::default(),
        compression: Default::default(),
        pipeline: None,
        report: Default::default(),
        profiles: Vec::new(),
        market: None,
        governance: None,
        incentives: Default::default(),
    }
}

fn task(cfg: &RunConfig) -> LinearTask {
    LinearTask::new(
        LinearTaskConfig::default(),
        cfg.clients,
        cfg.validators,
        cfg.seed,
    )
}

fn ledger(dir: &tempfile::TempDir) -> EmbeddedLedger {
    EmbeddedLedger::create(
        dir.path().join("ledger"),
        LedgerConfig::new("cohort.local/net-test", Identity::from_seed(1, "operator")),
    )
    .unwrap()
}

#[test]
fn a_run_over_grpc_records_what_the_in_process_run_records() {
    let cfg = config().check().unwrap();
    let t = task(&cfg);
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (_, local) = run_in_process(&cfg, ledger(&d1), &t, RunOptions::new(), |_| {}).unwrap();
    let (_, net) =
        cohort_net::run::run_over_loopback(&cfg, ledger(&d2), &t, RunOptions::new(), None, |_| {})
            .unwrap();
    let verdicts = |s: &RunSummary| {
        s.rounds
            .iter()
            .map(|r| (r.accepted.clone(), r.rejected.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(verdicts(&net), verdicts(&local));
    assert!(
        net.rounds.iter().any(|r| !r.rejected.is_empty()),
        "the attackers are caught"
    );
    assert_eq!(net.final_holdings, local.final_holdings);
    assert_eq!(net.ledger_entries, local.ledger_entries);
    assert_eq!(net.ledger_root, local.ledger_root);
}

/// A coordinator admitting `cfg`'s seeded parties, serving on loopback.
fn coordinator(cfg: &RunConfig) -> (tokio::runtime::Runtime, Arc<Hub>, String) {
    let key = |n: String| Identity::from_seed(cfg.seed, &n).public_key();
    let admit = Admit {
        clients: (0..cfg.clients)
            .map(|k| key(format!("client-{k}")))
            .collect(),
        validators: (0..cfg.validators)
            .map(|v| key(format!("validator-{v}")))
            .collect(),
        chain: Default::default(),
    };
    let hub = Hub::new(HubConfig::new("net-test", admit));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = cohort_net::run::serve(&rt, &hub, listener, None).unwrap();
    (rt, hub, format!("http://{addr}"))
}

fn refusal(parties: Vec<Box<dyn PartyNode + '_>>, url: &str) -> String {
    let mut dial = Dial::insecure(url);
    dial.give_up = Duration::from_secs(5);
    match host(parties, &dial) {
        Err(NetError::Refused(reason)) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_key_that_is_not_admitted_is_refused_naming_it() {
    let cfg = config();
    let t = task(&cfg);
    let (_rt, hub, url) = coordinator(&cfg);
    // A stranger's key in client 0's place.
    let rogue = Identity::from_seed(99, "rogue");
    let hexkey = hex::encode(rogue.public_key());
    let c = Client::new(0, rogue, &t, cfg.seed, 100);
    let why = refusal(vec![Box::new(c)], &url);
    assert!(why.contains(&hexkey) && why.contains("client-0"), "{why}");
    // Client 1's real key, claiming to be client 2.
    let c = Client::new(
        2,
        Identity::from_seed(cfg.seed, "client-1"),
        &t,
        cfg.seed,
        100,
    );
    let why = refusal(vec![Box::new(c)], &url);
    assert!(why.contains("not the key admitted as client-2"), "{why}");
    // An index beyond the list.
    let c = Client::new(
        6,
        Identity::from_seed(cfg.seed, "client-1"),
        &t,
        cfg.seed,
        100,
    );
    let why = refusal(vec![Box::new(c)], &url);
    assert!(why.contains("no client-6 is admitted"), "{why}");
    assert!(hub.connected().is_empty());
}

/// Opens a raw session, sends `hello`, and answers the challenge with `sign`.
async fn raw_session(
    url: &str,
    hello: pb::Hello,
    sign: impl FnOnce(&pb::Challenge) -> Vec<u8>,
) -> coordinator_frame::Kind {
    let mut client = FederationClient::connect(url.to_owned()).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let frame = |k| pb::PartyFrame { kind: Some(k) };
    tx.send(frame(party_frame::Kind::Hello(hello))).unwrap();
    let mut inbound = client
        .session(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = inbound.message().await.unwrap().unwrap().kind.unwrap();
    let coordinator_frame::Kind::Challenge(c) = first else {
        return first;
    };
    tx.send(frame(party_frame::Kind::Proof(pb::Proof {
        signature: sign(&c),
    })))
    .unwrap();
    inbound.message().await.unwrap().unwrap().kind.unwrap()
}

#[test]
fn a_forged_proof_and_another_protocol_version_are_refused() {
    let cfg = config();
    let (rt, hub, url) = coordinator(&cfg);
    let client0 = Identity::from_seed(cfg.seed, "client-0");
    let hello = |version| pb::Hello {
        protocol_version: version,
        role: "client".into(),
        index: 0,
        public_key: client0.public_key().to_vec(),
        agent: "test".into(),
    };
    rt.block_on(async {
        // Client 0's public key, the proof signed by another key.
        let other = Identity::from_seed(7, "other");
        let k = raw_session(&url, hello(cohort_net::PROTOCOL_VERSION), |c| {
            let msg = cohort_net::session_message(&c.run, &c.nonce, &client0.public_key());
            other.sign(&msg).to_vec()
        })
        .await;
        let coordinator_frame::Kind::Refused(r) = k else {
            panic!("{k:?}")
        };
        assert!(r.reason.contains("not signed by key"), "{}", r.reason);
        // A proof for another run's challenge.
        let k = raw_session(&url, hello(cohort_net::PROTOCOL_VERSION), |c| {
            let msg = cohort_net::session_message("another-run", &c.nonce, &client0.public_key());
            client0.sign(&msg).to_vec()
        })
        .await;
        assert!(matches!(k, coordinator_frame::Kind::Refused(_)), "{k:?}");
        // The right proof opens the session.
        let k = raw_session(&url, hello(cohort_net::PROTOCOL_VERSION), |c| {
            let msg = cohort_net::session_message(&c.run, &c.nonce, &client0.public_key());
            client0.sign(&msg).to_vec()
        })
        .await;
        assert!(matches!(k, coordinator_frame::Kind::Welcome(_)), "{k:?}");
        // Another version: refused with both named, before any challenge.
        let k = raw_session(&url, hello(99), |_| unreachable!()).await;
        let coordinator_frame::Kind::Refused(r) = k else {
            panic!("{k:?}")
        };
        assert!(
            r.reason.contains("version 99")
                && r.reason
                    .contains(&format!("version {}", cohort_net::PROTOCOL_VERSION)),
            "{}",
            r.reason
        );
    });
    drop(hub);
}
