//! The published log (`EmbeddedLedger::published`): what a coordinator's server shows its
//! parties and auditors while it writes. It advances only at durable commits, every state it
//! shows extends the ones before (consistency proofs verify), an auditor's check of its
//! entries (`LedgerState::check`) gives what `cohort ledger verify` gives for the directory,
//! and a tampered entry or checkpoint is refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cohort_core::{Hash32, Identity, tokens};
use cohort_ledger::merkle::verify_consistency;
use cohort_ledger::protocol::{Protocol, roles};
use cohort_ledger::{
    Checkpoint, EmbeddedLedger, LedgerBackend, LedgerConfig, LedgerError, LedgerState,
    PublishedHead, SyncPolicy,
};

const ORIGIN: &str = "cohort.local/published";

fn root_of(head: &PublishedHead) -> (u64, Hash32) {
    let cp = Checkpoint::verify_log(&head.checkpoint, &head.origin, &head.operator).unwrap();
    assert_eq!(cp.size, head.size);
    (cp.size, cp.root)
}

#[test]
fn the_published_log_shows_durable_states_that_extend_each_other() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ledger");
    let operator = Identity::from_seed(1, "operator");
    let gov = Identity::from_seed(1, "gov");
    let config = LedgerConfig::new(ORIGIN, operator.clone()).with_start_time(1_700_000_000);
    let mut led = EmbeddedLedger::create(&dir, config).unwrap();
    let published = led.published();
    assert_eq!(published.len(), 0);
    led.set_sync(SyncPolicy::OnFlush).unwrap();
    let mut p = Protocol::deploy(led, &gov).unwrap();
    // Not durable yet: not shown.
    assert_eq!(published.len(), 0);
    p.mint(&gov, gov.address(), tokens(1_000)).unwrap();
    p.backend_mut().flush().unwrap();
    let first = published.head();
    assert_eq!(first.size, p.backend().head().unwrap().size);
    assert_eq!(first.operator, operator.public_key());
    let (s1, r1) = root_of(&first);
    assert_eq!(r1, p.backend().head().unwrap().root);

    // A unit of work that is thrown away is never shown.
    p.register(&gov, roles::DATA_OWNER).unwrap();
    assert_eq!(published.len(), s1);
    p.backend_mut().discard_unflushed().unwrap();
    assert_eq!(published.head(), first);

    p.register(&gov, roles::DATA_OWNER).unwrap();
    p.mint(&gov, gov.address(), tokens(5)).unwrap();
    p.backend_mut().flush().unwrap();
    let c = published.consistency(s1).unwrap();
    let (s2, r2) = root_of(&c.head);
    assert_eq!(s2, s1 + 2);
    verify_consistency(s1, s2, &r1, &r2, &c.proof).unwrap();
    // From the start and from the end too; past the end is refused.
    verify_consistency(
        0,
        s2,
        &Hash32::ZERO,
        &r2,
        &published.consistency(0).unwrap().proof,
    )
    .unwrap();
    assert!(published.consistency(s2).unwrap().proof.is_empty());
    assert!(published.consistency(s2 + 1).is_err());
    // A proof against a root the log never had fails.
    let forged = Hash32([7; 32]);
    assert!(verify_consistency(s1, s2, &forged, &r2, &c.proof).is_err());

    // An auditor re-checks the published entries as `ledger verify` checks the directory.
    let entries = published.entries(0, usize::MAX);
    assert_eq!(entries.len() as u64, s2);
    assert_eq!(published.entries(1, 1).len(), 1);
    assert!(published.entries(s2, 10).is_empty());
    assert!(published.entries(u64::MAX, usize::MAX).is_empty());
    let state = LedgerState::check(&c.head, &entries, 0.0).unwrap();
    let led = p.into_backend();
    let local = led.verify().unwrap();
    assert_eq!(state.report().root, local.root);
    assert_eq!(state.report().state_root, local.state_root);

    // A flipped byte in an entry, a dropped entry, another checkpoint: refused.
    let mut bad = entries.clone();
    let last = bad.last_mut().unwrap();
    let at = last.len() / 2;
    last[at] ^= 1;
    let e = LedgerState::check(&c.head, &bad, 0.0).unwrap_err();
    assert!(matches!(e, LedgerError::BadEntry { .. }), "{e}");
    let e = LedgerState::check(&c.head, &entries[..entries.len() - 1], 0.0).unwrap_err();
    assert!(matches!(e, LedgerError::BadCheckpoint(_)), "{e}");
    let other = PublishedHead {
        operator: Identity::from_seed(2, "operator").public_key(),
        ..c.head.clone()
    };
    assert!(LedgerState::check(&other, &entries, 0.0).is_err());

    // Reopened, the ledger publishes everything durable at once.
    drop(led);
    let led = EmbeddedLedger::open(&dir).unwrap();
    assert_eq!(led.published().head(), c.head);
    assert_eq!(led.published().entries(0, usize::MAX), entries);
}
