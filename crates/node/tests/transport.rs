//! The transport port and the parties as units: a run through a wire-like adapter replays the
//! in-process run; a party that does not answer, or answers with garbage, costs a phase
//! timeout or a recorded rejection, never a hang or a panic; and what a party signs cannot be
//! altered or forged by whoever carries it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use cohort_core::Identity;
use cohort_fl::coordinator::CoordinatorConfig;
use cohort_fl::{Layout, NamedDelta, UpdateAttack};
use cohort_ledger::protocol::Cohort;
use cohort_ledger::{EmbeddedLedger, LedgerBackend, LedgerConfig, SignedCall};
use cohort_node::party::{Client, PartyError, PartyNode};
use cohort_node::runtime::{
    AttackConfig, Keys, LocalParties, RunConfig, RunSummary, parties, run, run_with,
};
use cohort_node::transport::{Party, Reply, Request, Transport, TransportError};
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

/// How the in-process parties are reached.
enum Via {
    Direct,
    Wire,
    Lossy(Vec<Party>, fn(Reply) -> Reply),
}

/// Runs `cfg` with its parties in this process, reached as `via` says; `swap` replaces some
/// of them (a party of the test's own).
fn go_with<'t>(
    cfg: &RunConfig,
    via: Via,
    swap: impl FnOnce(&'t LinearTask, &mut Vec<Box<dyn PartyNode + 't>>),
    t: &'t LinearTask,
) -> RunSummary {
    let cfg = &cfg.clone().check().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let backend = ledger(&dir, cfg.seed);
    let mut nodes = parties(cfg, &Keys::Seeded(cfg.seed), t);
    swap(t, &mut nodes);
    let inner = LocalParties::new(nodes);
    let mut transport: Box<dyn Transport + '_> = match via {
        Via::Direct => Box::new(inner),
        Via::Wire => Box::new(Wire(inner)),
        Via::Lossy(silent, mangle) => Box::new(Lossy {
            inner,
            silent,
            mangle,
        }),
    };
    let (p, s) = run_with(cfg, backend, t, &mut *transport, None, |_| {}).unwrap();
    p.into_backend().verify().unwrap();
    s
}

fn go(cfg: &RunConfig, via: Via) -> RunSummary {
    let t = task(cfg);
    go_with(cfg, via, |_, _| {}, &t)
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

/// Replies from `silent` never arrive; `mangle` rewrites the others (a carrier that tampers).
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
            .filter(|r| !self.silent.contains(&r.from()) || matches!(r, Reply::Enrol(_)))
            .map(self.mangle)
            .collect())
    }
}

/// A signed call with one byte of its signature flipped: same author, same call.
fn bad_signature(c: &SignedCall) -> SignedCall {
    let mut bytes = c.encode();
    let n = bytes.len();
    bytes[n - 1] ^= 1;
    SignedCall::decode(&bytes).unwrap()
}

#[test]
fn a_run_through_the_port_replays_and_a_wire_adapter_gives_the_same_ledger() {
    let cfg = config();
    let dir = tempfile::tempdir().unwrap();
    let valid = cfg.clone().check().unwrap();
    let (_, direct) = run(&valid, ledger(&dir, cfg.seed), &task(&cfg), None, |_| {}).unwrap();
    let a = go(&cfg, Via::Direct);
    let b = go(&cfg, Via::Direct);
    assert_eq!(a.ledger_root, b.ledger_root, "same seed, same ledger");
    assert_eq!(
        a.ledger_root, direct.ledger_root,
        "run is run_with(LocalParties(parties))"
    );
    let wired = go(&cfg, Via::Wire);
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
    let s = go(
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

/// A client of the test's own: an ordinary client, except that it sends bytes that are not
/// a safetensors file, which it signs as its update (the wrapper pattern of
/// `cohort_node::attack`).
struct Garbage<'a>(Client<'a, LinearTask>);

impl PartyNode for Garbage<'_> {
    fn party(&self) -> Party {
        self.0.party()
    }
    fn session_signer(&self) -> cohort_node::party::SessionSigner {
        self.0.session_signer()
    }
    fn handle(&mut self, request: &Request) -> Result<Reply, PartyError> {
        let Request::Train(r) = request else {
            return self.0.handle(request);
        };
        let u = self.0.train(r)?;
        // Bytes that are not a safetensors file, signed with its own key: what a broken or
        // malicious client can do.
        let reply = self
            .0
            .submit_blob(r, b"not a safetensors file".to_vec(), u.num_samples)?;
        Ok(Reply::Update(reply))
    }
}

#[test]
fn tampered_and_undecodable_updates_are_dropped_or_recorded_as_rejected() {
    let cfg = config();
    let s = go(
        &cfg,
        Via::Lossy(vec![], |r| match r {
            // Client 1's blob no longer matches the hash its client signed: dropped, as if
            // never sent (the carrier cannot re-sign it).
            Reply::Update(mut u) if u.client == 1 => {
                u.blob.push(0);
                Reply::Update(u)
            }
            r => r,
        }),
    );
    for r in &s.rounds {
        assert!(!r.submitted.contains(&1), "round {}", r.round);
        assert_eq!(r.submitted.len(), 7, "round {}", r.round);
    }
}

#[test]
fn a_client_that_signs_garbage_is_recorded_rejected_and_slashed() {
    let cfg = config();
    let t = task(&cfg);
    let s = go_with(
        &cfg,
        Via::Direct,
        |t, nodes| {
            let valid = config().check().unwrap();
            let id = Keys::Seeded(valid.seed).identity("client-3");
            let c = Client::new(3, id, t, valid.seed, valid.client_stake(3));
            nodes[3] = Box::new(Garbage(c));
        },
        &t,
    );
    for r in &s.rounds {
        assert!(r.submitted.contains(&3), "round {}", r.round);
        // Refused with what is wrong with its bytes, not as an empty update.
        let facts = r.updates.iter().find(|f| f.client == 3).unwrap();
        let why = facts.refused.as_deref().unwrap_or_default();
        assert!(
            why.contains("rejected: malformed blob: header of"),
            "round {}: {why:?}",
            r.round
        );
        assert!(
            r.rejected.contains(&3),
            "round {}: {:?}",
            r.round,
            r.rejected
        );
        assert!(
            r.payouts
                .get("client-3")
                .is_some_and(|p| !p.slash.is_zero()),
            "round {}",
            r.round
        );
    }
}

/// A client of the test's own whose update is its honest one under another tensor name: the
/// right number of values, the right shape, but a tensor `weight` where the model's is
/// `delta`. A client for another model (or a broken one), signing its own blob.
struct Renamed<'a>(Client<'a, LinearTask>);

impl PartyNode for Renamed<'_> {
    fn party(&self) -> Party {
        self.0.party()
    }
    fn session_signer(&self) -> cohort_node::party::SessionSigner {
        self.0.session_signer()
    }
    fn handle(&mut self, request: &Request) -> Result<Reply, PartyError> {
        let Request::Train(r) = request else {
            return self.0.handle(request);
        };
        let u = self.0.train(r)?;
        let n = u.delta.values.len();
        let renamed = Layout::new(vec![("weight".to_owned(), vec![n])]).unwrap();
        let blob = NamedDelta::new(Arc::new(renamed), u.delta.values).encode();
        Ok(Reply::Update(self.0.submit_blob(r, blob, u.num_samples)?))
    }
}

#[test]
fn an_update_with_a_wrong_tensor_name_is_rejected_by_name_scored_minus_one_and_the_run_goes_on() {
    let cfg = config();
    let t = task(&cfg);
    let s = go_with(
        &cfg,
        Via::Direct,
        |t, nodes| {
            let valid = config().check().unwrap();
            let id = Keys::Seeded(valid.seed).identity("client-3");
            let c = Client::new(3, id, t, valid.seed, valid.client_stake(3));
            nodes[3] = Box::new(Renamed(c));
        },
        &t,
    );
    assert_eq!(s.rounds.len(), 3, "every round finished");
    for r in &s.rounds {
        let i = r.submitted.iter().position(|&k| k == 3).unwrap();
        let facts = &r.updates[i];
        assert_eq!(facts.client, 3);
        // The blob decodes (its norm is known): only the tensor's name is wrong.
        assert!(
            facts.update_norm.is_some_and(|n| n > 0.0),
            "round {}",
            r.round
        );
        let why = facts.refused.as_deref().unwrap_or_default();
        assert!(
            why.contains("it has no tensor delta, which the model has")
                && why.contains("it has a tensor weight (shape [32]), which the model does not"),
            "round {}: {why:?}",
            r.round
        );
        for (v, scores) in r.scores.iter().enumerate() {
            assert_eq!(scores[i], -1.0, "round {} validator {v}", r.round);
        }
        assert!(r.rejected.contains(&3), "round {}", r.round);
        assert!(
            r.payouts
                .get("client-3")
                .is_some_and(|p| !p.slash.is_zero()),
            "round {}",
            r.round
        );
        // Everyone else is judged as without it: the sign flippers rejected, the rest in.
        assert_eq!(r.rejected, vec![3, 6, 7], "round {}", r.round);
        assert_eq!(r.accepted.len(), 5, "round {}", r.round);
    }
    assert!(s.rounds.last().unwrap().test.loss < 0.5 * s.initial.loss);
}

#[test]
fn a_submission_whose_signature_is_not_the_clients_is_refused_by_the_ledger() {
    let cfg = config();
    let s = go(
        &cfg,
        Via::Lossy(vec![], |r| match r {
            // One flipped bit of client 2's signature: the coordinator relays it (the author
            // is client 2), the ledger refuses it, nothing is recorded, client 2 sits out.
            Reply::Update(mut u) if u.client == 2 => {
                u.submission = bad_signature(&u.submission);
                Reply::Update(u)
            }
            r => r,
        }),
    );
    for r in &s.rounds {
        assert!(!r.submitted.contains(&2), "round {}", r.round);
        assert_eq!(r.submitted.len(), 7, "round {}", r.round);
        assert_eq!(r.rejected, vec![6, 7], "round {}", r.round);
    }
}

/// Client `k`'s submission, re-signed by the coordinator's key for the same call, nonce and
/// time: a coordinator forging a client's submission.
fn forged_by_coordinator(c: &SignedCall) -> SignedCall {
    let SignedCall::Embedded { origin, tx } = c else {
        panic!("embedded ledger")
    };
    let ctx = cohort_ledger::TxContext::Embedded {
        origin: origin.clone(),
        nonce: tx.tx.nonce,
        time: tx.tx.time,
    };
    let coordinator = Keys::Seeded(config().seed).identity("coordinator");
    SignedCall::sign(&coordinator, tx.tx.to, tx.tx.data.clone(), &ctx).unwrap()
}

#[test]
fn the_coordinator_cannot_submit_for_a_client() {
    let cfg = config();
    let s = go(
        &cfg,
        Via::Lossy(vec![], |r| match r {
            Reply::Update(mut u) if u.client == 4 => {
                u.submission = forged_by_coordinator(&u.submission);
                Reply::Update(u)
            }
            r => r,
        }),
    );
    for r in &s.rounds {
        assert!(!r.submitted.contains(&4), "round {}", r.round);
    }
    // Relayed anyway, the forgery is the coordinator's own call, which the contract refuses:
    // the coordinator is no client.
    let valid = cfg.clone().check().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let t = task(&cfg);
    let (mut p, _) = run(&valid, ledger(&dir, cfg.seed), &t, None, |_| {}).unwrap();
    let keys = Keys::Seeded(cfg.seed);
    let client = keys.identity("client-4");
    let ctx = p.context_for(client.address()).unwrap();
    let call = Cohort::submitUpdateCall {
        roundId: 1,
        blobHash: [7u8; 32].into(),
        datasetId: [0u8; 32].into(),
        numSamples: 1,
    };
    let honest = SignedCall::sign_sol(&client, p.address(), &call, &ctx).unwrap();
    let before = p.backend().head().unwrap();
    let coordinator = keys.identity("coordinator");
    let own = p.context_for(coordinator.address()).unwrap();
    let forged = SignedCall::sign_sol(&coordinator, p.address(), &call, &own).unwrap();
    let e = p.relay::<Cohort::submitUpdateCall>(forged).unwrap_err();
    assert!(
        e.to_string().contains("reverted"),
        "the coordinator's own call is refused by the contract: {e}"
    );
    let e = p
        .relay::<Cohort::submitUpdateCall>(bad_signature(&honest))
        .unwrap_err();
    assert!(e.to_string().contains("bad signature"), "{e}");
    assert_eq!(p.backend().head().unwrap(), before, "nothing was recorded");
}

/// `config()` with its updates sent as `codec` (top-k keeping `fraction`).
fn compressed(codec: &str, fraction: Option<f64>) -> RunConfig {
    let mut cfg = config();
    cfg.compression = toml::from_str(&format!("update = \"{codec}\"")).unwrap();
    cfg.compression.topk_fraction = fraction;
    cfg
}

/// A client of the test's own that sends its honest update uncompressed (the `none` codec's
/// f32 blob) in a run whose updates are compressed.
struct Uncompressed<'a>(Client<'a, LinearTask>);

impl PartyNode for Uncompressed<'_> {
    fn party(&self) -> Party {
        self.0.party()
    }
    fn session_signer(&self) -> cohort_node::party::SessionSigner {
        self.0.session_signer()
    }
    fn handle(&mut self, request: &Request) -> Result<Reply, PartyError> {
        let Request::Train(r) = request else {
            return self.0.handle(request);
        };
        let u = self.0.train(r)?;
        let blob = u.delta.encode();
        Ok(Reply::Update(self.0.submit_blob(r, blob, u.num_samples)?))
    }
}

#[test]
fn compressed_updates_replay_over_the_wire_and_another_codec_is_refused_by_name() {
    // The linear task's one tensor of 32 values: top-k at a quarter keeps 8 of them, as bytes.
    let cfg = compressed("topk-int8", Some(0.25));
    let a = go(&cfg, Via::Direct);
    let b = go(&cfg, Via::Wire);
    assert_eq!(a.ledger_root, b.ledger_root, "same seed, same digests");
    let plain = go(&config(), Via::Direct);
    assert_ne!(a.ledger_root, plain.ledger_root);
    let bytes = a.update_bytes.as_ref().unwrap();
    let fp32 = plain.update_bytes.as_ref().unwrap();
    assert_eq!(fp32.ratio, 1.0);
    assert_eq!(bytes.fp32_per_client_per_round, fp32.per_client_per_round);
    // (32 values are too few for the packed header to pay: the ratio on a LoRA-sized delta
    // is tested in crates/cli/tests/compress_cli.rs.)
    assert_ne!(bytes.per_client_per_round, fp32.per_client_per_round);
    for r in &a.rounds {
        // The sign flippers are still caught through the codec.
        assert!(
            r.rejected.contains(&6) && r.rejected.contains(&7),
            "round {}",
            r.round
        );
        let dense = fp32.fp32_per_client_per_round as u64;
        assert!(r.updates.iter().all(|f| f.dense_bytes == Some(dense)));
    }
    // Honest clients learn through top-k with error feedback.
    assert!(a.rounds.last().unwrap().test.loss < 0.5 * a.initial.loss);

    // A client that sends the f32 blob anyway is refused with the codecs named, and scored -1.
    let t = task(&cfg);
    let s = go_with(
        &cfg,
        Via::Direct,
        |t, nodes| {
            let valid = compressed("topk-int8", Some(0.25)).check().unwrap();
            let id = Keys::Seeded(valid.seed).identity("client-3");
            let c = Client::new(3, id, t, valid.seed, valid.client_stake(3));
            nodes[3] = Box::new(Uncompressed(c));
        },
        &t,
    );
    for r in &s.rounds {
        let i = r.submitted.iter().position(|&k| k == 3).unwrap();
        let why = r.updates[i].refused.as_deref().unwrap_or_default();
        assert!(
            why.contains("a none update blob; this run's updates are topk-int8"),
            "round {}: {why:?}",
            r.round
        );
        for (v, scores) in r.scores.iter().enumerate() {
            assert_eq!(scores[i], -1.0, "round {} validator {v}", r.round);
        }
        assert!(r.rejected.contains(&3), "round {}", r.round);
    }
}
