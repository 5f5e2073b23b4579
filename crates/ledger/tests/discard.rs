//! `EmbeddedLedger::discard_unflushed` and a key file outside the ledger directory: what a
//! writer that stops part-way through a unit of work (a federated round) relies on.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cohort_core::{Identity, tokens};
use cohort_ledger::protocol::{Protocol, roles};
use cohort_ledger::{EmbeddedLedger, LedgerBackend, LedgerConfig, SyncPolicy};

fn config(dir: &std::path::Path) -> LedgerConfig {
    LedgerConfig::new("cohort.local/discard", Identity::from_seed(1, "operator"))
        .with_start_time(1_700_000_000)
        .with_key_file(dir.join("keys-operator.key"))
}

#[test]
fn unflushed_commits_are_discarded_as_a_crash_would_and_flushed_ones_stay() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ledger");
    let gov = Identity::from_seed(1, "gov");
    let mut led = EmbeddedLedger::create(&dir, config(tmp.path())).unwrap();
    led.set_sync(SyncPolicy::OnFlush).unwrap();
    let mut p = Protocol::deploy(led, &gov).unwrap();
    p.mint(&gov, gov.address(), tokens(1_000)).unwrap();
    p.backend_mut().flush().unwrap();
    let durable = p.backend().head().unwrap();
    // Nothing unflushed: nothing to discard.
    assert_eq!(p.backend_mut().discard_unflushed().unwrap(), 0);
    p.register(&gov, roles::DATA_OWNER).unwrap();
    p.mint(&gov, gov.address(), tokens(5)).unwrap();
    assert_eq!(p.backend().head().unwrap().size, durable.size + 2);
    assert_eq!(p.backend_mut().discard_unflushed().unwrap(), 2);
    assert_eq!(p.backend().head().unwrap(), durable);
    // The same calls again give the same entries and root as if nothing had been discarded.
    p.register(&gov, roles::DATA_OWNER).unwrap();
    let again = p.backend().head().unwrap().root;
    p.backend_mut().flush().unwrap();
    let led = p.into_backend();
    led.verify().unwrap();
    drop(led);
    // The key lives where the config said, not in the ledger directory.
    assert!(!dir.join("operator.key").exists());
    assert!(tmp.path().join("keys-operator.key").is_file());
    let led = EmbeddedLedger::open_as(&dir, Identity::from_seed(1, "operator")).unwrap();
    assert_eq!(led.head().unwrap().root, again);
    drop(led);
    let report = EmbeddedLedger::verify_dir(&dir).unwrap();
    assert_eq!(report.root, again);
    // Another operator key is refused.
    let e = EmbeddedLedger::open_as(&dir, Identity::from_seed(2, "operator")).unwrap_err();
    assert!(e.to_string().contains("operator"), "{e}");
}

#[test]
fn dropping_after_a_discard_keeps_the_discarded_entries_out() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ledger");
    let gov = Identity::from_seed(1, "gov");
    let mut led = EmbeddedLedger::create(&dir, config(tmp.path())).unwrap();
    led.set_sync(SyncPolicy::OnFlush).unwrap();
    let mut p = Protocol::deploy(led, &gov).unwrap();
    p.backend_mut().flush().unwrap();
    let durable = p.backend().head().unwrap();
    p.mint(&gov, gov.address(), tokens(1_000)).unwrap();
    p.backend_mut().discard_unflushed().unwrap();
    drop(p); // a drop flushes: there must be nothing left to flush
    let report = EmbeddedLedger::verify_dir(&dir).unwrap();
    assert_eq!((report.entries, report.root), (durable.size, durable.root));
}
