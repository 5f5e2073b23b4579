//! Parties sign their own transactions; a relay (the coordinator) carries them to the embedded
//! ledger and can neither alter nor forge one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::RefCell;

use alloy_primitives::{Address, B256, Bytes};
use cohort_core::{Identity, sha256, tokens};
use cohort_ledger::protocol::{Cohort, Cohort::CohortEvents, Protocol, ProtocolError, roles};
use cohort_ledger::{
    EmbeddedLedger, LedgerBackend, LedgerConfig, LedgerError, SignedCall, SignedTx, TxContext,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

const ORIGIN: &str = "cohort.local/relay";
const START: u64 = 1_700_000_000;

/// A protocol with a coordinator that has opened a round, and a registered, staked client
/// with a committed dataset, every one of the client's transactions signed by the client and
/// relayed by the coordinator.
struct World {
    p: Protocol<EmbeddedLedger>,
    coordinator: Identity,
    client: Identity,
    dataset: B256,
    round: u64,
    _dir: tempfile::TempDir,
}

/// The client's side: it signs with its own key under the context the relay hands it.
fn client_signs<C: alloy_sol_types::SolCall>(
    p: &Protocol<EmbeddedLedger>,
    who: &Identity,
    call: &C,
) -> SignedCall {
    let ctx = p.context_for(who.address()).expect("context");
    SignedCall::sign_sol(who, p.address(), call, &ctx).expect("signs")
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let gov = Identity::from_seed(9, "governance");
    let coordinator = Identity::from_seed(9, "coordinator");
    let client = Identity::from_seed(9, "client");
    let led = EmbeddedLedger::create(
        dir.path(),
        LedgerConfig::new(ORIGIN, gov.clone()).with_start_time(START),
    )
    .unwrap();
    let mut p = Protocol::deploy(led, &gov).unwrap();
    p.mint(&gov, coordinator.address(), tokens(1_000)).unwrap();
    p.mint(&gov, client.address(), tokens(1_000)).unwrap();
    p.approve_coordinator(&gov, coordinator.address()).unwrap();
    p.register(&coordinator, roles::COORDINATOR).unwrap();
    // The client registers, stakes and commits its dataset itself.
    let reg = client_signs(
        &p,
        &client,
        &Cohort::registerCall {
            roles: roles::CLIENT | roles::DATA_OWNER,
            keyHash: client.key_hash(),
        },
    );
    p.relay::<Cohort::registerCall>(reg).unwrap();
    let stake = client_signs(
        &p,
        &client,
        &Cohort::stakeCall {
            amount: tokens(100),
        },
    );
    p.relay::<Cohort::stakeCall>(stake).unwrap();
    let commit = client_signs(
        &p,
        &client,
        &Cohort::commitDatasetCall {
            merkleRoot: sha256(b"shards").into(),
            manifestHash: sha256(b"manifest").into(),
            size: 100,
        },
    );
    let dataset = p.relay::<Cohort::commitDatasetCall>(commit).unwrap().value;
    p.extend_roster(&coordinator, &[client.address()]).unwrap();
    p.backend_mut().set_time(START + 60).unwrap();
    let round = p
        .open_round(&coordinator, sha256(b"global").into(), tokens(10), false, 1)
        .unwrap()
        .value;
    World {
        p,
        coordinator,
        client,
        dataset,
        round,
        _dir: dir,
    }
}

impl World {
    fn submit_call(&self) -> Cohort::submitUpdateCall {
        Cohort::submitUpdateCall {
            roundId: self.round,
            blobHash: sha256(b"the client's delta").into(),
            datasetId: self.dataset,
            numSamples: 100,
        }
    }

    /// The client's submission, signed by the client under `ctx`.
    fn signed_submit(&self, ctx: &TxContext) -> SignedCall {
        SignedCall::sign_sol(&self.client, self.p.address(), &self.submit_call(), ctx).unwrap()
    }

    fn ctx(&self) -> TxContext {
        self.p.context_for(self.client.address()).unwrap()
    }

    fn head(&self) -> (u64, cohort_core::Hash32) {
        let h = self.p.backend().head().unwrap();
        (h.size, h.root)
    }

    /// Relays `signed` and expects a refusal that leaves the ledger as it was.
    fn refused(&mut self, signed: SignedCall) -> LedgerError {
        let before = self.head();
        // The ledger's own checks, below the protocol facade's target and selector check.
        let err = match self.p.backend_mut().relay(signed) {
            Err(e) => e,
            Ok(o) => panic!("expected a ledger refusal, got {o:?}"),
        };
        assert_eq!(self.head(), before, "a refused call changed the ledger");
        err
    }
}

fn with_tx(signed: &SignedCall, f: impl FnOnce(&mut SignedTx)) -> SignedCall {
    let SignedCall::Embedded { origin, tx } = signed else {
        panic!("embedded call expected")
    };
    let mut tx = tx.clone();
    f(&mut tx);
    SignedCall::Embedded {
        origin: origin.clone(),
        tx,
    }
}

#[test]
fn a_client_signed_submission_relayed_by_the_coordinator_is_the_clients() {
    let mut w = world();
    let signed = w.signed_submit(&w.ctx());
    // It travels as bytes (what a transport carries) and the coordinator relays it.
    let carried = SignedCall::decode(&signed.encode()).unwrap();
    let sent = w.p.relay::<Cohort::submitUpdateCall>(carried).unwrap();
    let index = sent.value;
    let upd = w.p.update(w.round, index).unwrap();
    assert_eq!(upd.client, w.client.address());
    assert_ne!(upd.client, w.coordinator.address());
    assert!(sent.events.iter().any(|e| matches!(
        e,
        CohortEvents::UpdateSubmitted(u) if u.client == w.client.address()
    )));
    let entry = w.p.backend().entry(sent.position).unwrap();
    assert_eq!(entry.tx.author, w.client.public_key());
    w.p.backend().verify().expect("verifies");
}

#[test]
fn forged_altered_replayed_and_foreign_calls_are_refused_and_change_nothing() {
    let mut w = world();
    let ctx = w.ctx();
    let good = w.signed_submit(&ctx);
    let client_address = w.client.address();

    // Signed by another key (the coordinator's) but claiming the client as author.
    let forged = with_tx(&good, |t| {
        let msg = SignedTx::signing_message(ORIGIN, &t.author, &t.tx);
        t.signature = w.coordinator.sign(&msg);
    });
    let e = w.refused(forged);
    assert!(
        matches!(e, LedgerError::BadSignature { author } if author == client_address),
        "{e}"
    );

    // One flipped bit in the data, the nonce, the time, the signature, the author.
    let altered = [
        with_tx(&good, |t| {
            let mut d = t.tx.data.to_vec();
            let last = d.len() - 1;
            d[last] ^= 1;
            t.tx.data = Bytes::from(d);
        }),
        with_tx(&good, |t| t.tx.nonce ^= 1),
        with_tx(&good, |t| t.tx.time ^= 1),
        with_tx(&good, |t| t.signature[10] ^= 1),
        with_tx(&good, |t| t.tx.to = Some(Address::repeat_byte(1))),
    ];
    for a in altered {
        let e = w.refused(a);
        assert!(matches!(e, LedgerError::BadSignature { .. }), "{e}");
    }
    // A different author key with the client's signature.
    let e = w.refused(with_tx(&good, |t| {
        t.author = w.coordinator.public_key();
    }));
    assert!(matches!(e, LedgerError::BadSignature { .. }), "{e}");

    // Properly signed, but a skipped nonce.
    let skipped = w.signed_submit(&ctx.ahead(1).unwrap());
    let e = w.refused(skipped);
    assert!(
        matches!(e, LedgerError::Nonce { expected, got, .. } if got == expected + 1),
        "{e}"
    );

    // Signed for another log; and the origin relabelled to this log after signing.
    let TxContext::Embedded { nonce, time, .. } = ctx.clone() else {
        unreachable!()
    };
    let other = TxContext::Embedded {
        origin: "cohort.local/other".into(),
        nonce,
        time,
    };
    let foreign = w.signed_submit(&other);
    let e = w.refused(foreign.clone());
    assert!(
        matches!(&e, LedgerError::WrongOrigin { got, .. } if got == "cohort.local/other"),
        "{e}"
    );
    let SignedCall::Embedded { tx, .. } = foreign else {
        unreachable!()
    };
    let e = w.refused(SignedCall::Embedded {
        origin: ORIGIN.into(),
        tx,
    });
    assert!(matches!(e, LedgerError::BadSignature { .. }), "{e}");

    // Properly signed with a time before the last entry, or after the ledger's clock.
    let at = |t: u64| TxContext::Embedded {
        origin: ORIGIN.into(),
        nonce,
        time: t,
    };
    let e = w.refused(w.signed_submit(&at(time - 1)));
    assert!(matches!(e, LedgerError::TimeWentBackwards { .. }), "{e}");
    let e = w.refused(w.signed_submit(&at(time + 1)));
    assert!(
        matches!(e, LedgerError::TimeAhead { clock, got, .. } if clock == time && got == time + 1),
        "{e}"
    );

    // A signed call of another function is not relayed as a submission.
    let other_fn = SignedCall::sign_sol(
        &w.client,
        w.p.address(),
        &Cohort::stakeCall { amount: tokens(1) },
        &ctx,
    )
    .unwrap();
    let before = w.head();
    let e = w.p.relay::<Cohort::submitUpdateCall>(other_fn).unwrap_err();
    assert!(matches!(e, ProtocolError::WrongCall { .. }), "{e}");
    assert_eq!(w.head(), before);

    // The genuine call still goes through, once; its replay is refused.
    w.p.relay::<Cohort::submitUpdateCall>(good.clone()).unwrap();
    let e = w.refused(good);
    assert!(
        matches!(e, LedgerError::Nonce { expected, got, .. } if expected == got + 1),
        "{e}"
    );
    let v = w.p.backend().verify().expect("verifies");
    assert_eq!(v.entries, w.head().0);
}

#[test]
fn a_batch_relays_each_call_on_its_own_merits() {
    let mut w = world();
    let ctx = w.ctx();
    let good = w.signed_submit(&ctx);
    let bad = with_tx(&good, |t| t.signature[0] ^= 1);
    let size = w.head().0;
    let out =
        w.p.relay_batch::<Cohort::submitUpdateCall>(vec![bad, good.clone(), good])
            .unwrap();
    assert!(matches!(
        out[0],
        Err(ProtocolError::Ledger(LedgerError::BadSignature { .. }))
    ));
    assert_eq!(out[1].as_ref().unwrap().value, 0);
    assert!(matches!(
        out[2],
        Err(ProtocolError::Ledger(LedgerError::Nonce { .. }))
    ));
    assert_eq!(w.head().0, size + 1);
    w.p.backend().verify().expect("verifies");
}

#[test]
fn a_chain_call_is_not_relayed_to_the_embedded_ledger() {
    let mut w = world();
    let e = w.refused(SignedCall::Chain {
        from: w.client.address(),
        raw: Bytes::from(vec![2, 0xc0]),
    });
    assert!(e.to_string().contains("chain"), "{e}");
}

fn arb_call() -> impl Strategy<Value = SignedCall> {
    let embedded = (
        "[a-z]{1,12}(\\.[a-z]{1,8})?/[a-z0-9]{1,8}",
        any::<u64>(),
        any::<u64>(),
        proptest::option::of(any::<[u8; 20]>()),
        proptest::collection::vec(any::<u8>(), 0..200),
        any::<u64>(),
    )
        .prop_map(|(origin, nonce, time, to, data, seed)| {
            let ctx = TxContext::Embedded {
                origin,
                nonce,
                time,
            };
            let id = Identity::from_seed(seed, "party");
            SignedCall::sign(&id, to.map(Address::from), Bytes::from(data), &ctx).unwrap()
        });
    let chain = (
        any::<[u8; 20]>(),
        proptest::collection::vec(any::<u8>(), 0..200),
    )
        .prop_map(|(from, raw)| SignedCall::Chain {
            from: Address::from(from),
            raw: Bytes::from(raw),
        });
    prop_oneof![embedded, chain]
}

proptest! {
    #![proptest_config(Config { cases: 128, ..Config::default() })]

    /// A signed call survives its byte and JSON round trips unchanged.
    #[test]
    fn a_signed_call_survives_its_round_trips(call in arb_call()) {
        let bytes = call.encode();
        prop_assert_eq!(&SignedCall::decode(&bytes).unwrap(), &call);
        let json = serde_json::to_string(&call).unwrap();
        prop_assert_eq!(&serde_json::from_str::<SignedCall>(&json).unwrap(), &call);
    }
}

/// Any single-byte change to a carried submission is refused (it no longer parses, or the
/// ledger refuses it) and leaves the ledger unchanged; the genuine bytes still go through.
#[test]
fn any_changed_byte_of_a_carried_call_is_refused() {
    let w = RefCell::new(world());
    let bytes = {
        let w = w.borrow();
        w.signed_submit(&w.ctx()).encode()
    };
    let mut runner = TestRunner::new(Config {
        cases: 512,
        ..Config::default()
    });
    runner
        .run(&(0..bytes.len(), 1u8..=255), |(at, x)| {
            let mut b = bytes.clone();
            b[at] ^= x;
            let Ok(call) = SignedCall::decode(&b) else {
                return Ok(());
            };
            let mut w = w.borrow_mut();
            let before = w.head();
            let r = w.p.relay::<Cohort::submitUpdateCall>(call);
            prop_assert!(r.is_err(), "byte {at} ^ {x:#04x} was accepted");
            prop_assert_eq!(w.head(), before);
            Ok(())
        })
        .unwrap();
    let mut w = w.into_inner();
    let call = SignedCall::decode(&bytes).unwrap();
    w.p.relay::<Cohort::submitUpdateCall>(call).unwrap();
    w.p.backend().verify().expect("verifies");
}
