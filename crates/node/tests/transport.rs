//! The transport port: a run through a wire-like adapter replays the in-process run, and a
//! party that does not answer, or answers with garbage, costs a phase timeout or a recorded
//! rejection, never a hang or a panic.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cohort_core::{Identity, sha256};
use cohort_fl::UpdateAttack;
use cohort_fl::coordinator::CoordinatorConfig;
use cohort_ledger::{EmbeddedLedger, LedgerBackend, LedgerConfig};
use cohort_node::runtime::{AttackConfig, RunConfig, RunSummary, run, run_with};
use cohort_node::transport::{InProcess, Party, Reply, Request, Transport, TransportError};
use cohort_tasks::{LinearTask, LinearTaskConfig};

fn config() -> RunConfig {
    RunConfig {
        seed: 5,
        clients: 8,
        validators: 3,
        task: Default::default(),
        coordinator: CoordinatorConfig {
            rounds: 3,
            clients_per_round: 8,
            ..CoordinatorConfig::default()
        },
        aggregation: Default::default(),
        attack: Some(AttackConfig {
            fraction: 0.25,
            attack: UpdateAttack::SignFlip { scale: 3.0 }.into(),
            colluding_validators: 0,
            sybil_stake: None,
        }),
        incentives: Default::default(),
    }
}

fn ledger(dir: &tempfile::TempDir, seed: u64) -> EmbeddedLedger {
    EmbeddedLedger::create(
        dir.path().join("ledger"),
        LedgerConfig::new(
            "cohort.local/fl-test",
            Identity::from_seed(seed, "operator"),
        ),
    )
    .unwrap()
}

fn task(cfg: &RunConfig) -> LinearTask {
    LinearTask::new(
        LinearTaskConfig::default(),
        cfg.clients,
        cfg.validators,
        cfg.seed,
    )
}

/// How the in-process adapter is wrapped.
enum Via {
    Direct,
    Wire,
    Lossy(Vec<Party>, fn(Reply) -> Reply),
}

/// Runs `cfg` through the in-process adapter, wrapped as `via` says.
fn go_with(cfg: &RunConfig, via: Via) -> RunSummary {
    let cfg = &cfg.clone().check().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let backend = ledger(&dir, cfg.seed);
    let t = task(cfg);
    let validators = (0..cfg.validators)
        .map(|v| backend.address_of(&Identity::from_seed(cfg.seed, &format!("validator-{v}"))))
        .collect();
    let inner = InProcess::new(cfg, &t, validators);
    let mut transport: Box<dyn Transport + '_> = match via {
        Via::Direct => Box::new(inner),
        Via::Wire => Box::new(Wire(inner)),
        Via::Lossy(silent, mangle) => Box::new(Lossy {
            inner,
            silent,
            mangle,
        }),
    };
    let (p, s) = run_with(cfg, backend, &t, &mut *transport, None, |_| {}).unwrap();
    p.into_backend().verify().unwrap();
    s
}

/// Every message crosses a byte boundary (serde JSON), as it would over a network.
struct Wire<T>(T);

impl<T: Transport> Transport for Wire<T> {
    fn send(&mut self, request: Request) -> Result<(), TransportError> {
        let bytes = serde_json::to_vec(&request).unwrap();
        self.0.send(serde_json::from_slice(&bytes).unwrap())
    }
    fn poll(&mut self, now: u64) -> Result<Vec<Reply>, TransportError> {
        let replies = self.0.poll(now)?;
        let bytes = serde_json::to_vec(&replies).unwrap();
        Ok(serde_json::from_slice(&bytes).unwrap())
    }
}

/// Replies from `silent` never arrive; `mangle` rewrites the others.
struct Lossy<T> {
    inner: T,
    silent: Vec<Party>,
    mangle: fn(Reply) -> Reply,
}

impl<T: Transport> Transport for Lossy<T> {
    fn send(&mut self, request: Request) -> Result<(), TransportError> {
        self.inner.send(request)
    }
    fn poll(&mut self, now: u64) -> Result<Vec<Reply>, TransportError> {
        let replies = self.inner.poll(now)?;
        Ok(replies
            .into_iter()
            .filter(|r| !self.silent.contains(&r.from()))
            .map(self.mangle)
            .collect())
    }
}

#[test]
fn a_run_through_the_port_replays_and_a_wire_adapter_gives_the_same_ledger() {
    let cfg = config();
    let dir = tempfile::tempdir().unwrap();
    let valid = cfg.clone().check().unwrap();
    let (_, direct) = run(&valid, ledger(&dir, cfg.seed), &task(&cfg), None, |_| {}).unwrap();
    let a = go_with(&cfg, Via::Direct);
    let b = go_with(&cfg, Via::Direct);
    assert_eq!(a.ledger_root, b.ledger_root, "same seed, same ledger");
    assert_eq!(
        a.ledger_root, direct.ledger_root,
        "run is run_with(InProcess)"
    );
    let wired = go_with(&cfg, Via::Wire);
    assert_eq!(
        wired.ledger_root, a.ledger_root,
        "messages survive the wire"
    );
    // The attackers (clients 6 and 7) are still rejected every round.
    for r in &wired.rounds {
        assert_eq!(r.rejected, vec![6, 7], "round {}", r.round);
    }
}

#[test]
fn a_silent_client_and_a_silent_validator_time_out_and_the_rounds_go_on() {
    let cfg = config();
    let s = go_with(
        &cfg,
        Via::Lossy(vec![Party::Client(2), Party::Validator(1)], |r| r),
    );
    assert_eq!(s.rounds.len(), 3, "every round finished");
    for r in &s.rounds {
        assert!(
            !r.submitted.contains(&2),
            "round {}: {:?}",
            r.round,
            r.submitted
        );
        assert_eq!(r.submitted.len(), 7);
        assert!(r.scores[1].is_empty(), "validator 1 never revealed");
        assert_eq!(r.scores[0].len(), 7);
        assert_eq!(r.rejected, vec![6, 7], "round {}", r.round);
    }
    assert!(s.rounds.last().unwrap().test.loss < 0.5 * s.initial.loss);
}

#[test]
fn mislabelled_and_undecodable_updates_are_dropped_or_recorded_as_rejected() {
    let cfg = config();
    let s = go_with(
        &cfg,
        Via::Lossy(vec![], |r| match r {
            // Client 1's blob no longer matches its hash: dropped, as if never sent.
            Reply::Update(mut u) if u.client == 1 => {
                u.blob.push(0);
                Reply::Update(u)
            }
            // Client 3 sends bytes that are not safetensors, with their true hash: recorded
            // on the ledger and rejected by validation.
            Reply::Update(mut u) if u.client == 3 => {
                u.blob = b"not a safetensors file".to_vec();
                u.hash = sha256(&u.blob);
                Reply::Update(u)
            }
            r => r,
        }),
    );
    for r in &s.rounds {
        assert!(!r.submitted.contains(&1), "round {}", r.round);
        assert!(r.submitted.contains(&3), "round {}", r.round);
        assert!(
            r.rejected.contains(&3),
            "round {}: {:?}",
            r.round,
            r.rejected
        );
        assert!(r.slashes.contains_key("client-3"), "round {}", r.round);
    }
}
