//! Protocol scenarios on the embedded ledger.

use cohort_ledger::demo::{self, Cast};
use cohort_ledger::{EmbeddedLedger, LedgerConfig};

fn fresh(dir: &std::path::Path) -> EmbeddedLedger {
    let op = Cast::new(1).governance;
    EmbeddedLedger::create(dir, LedgerConfig::new("cohort.local/test", op).with_start_time(1_700_000_000))
        .expect("create ledger")
}

#[test]
fn demo_round_pays_honest_and_slashes_harmful() {
    let dir = tempfile::tempdir().unwrap();
    let (p, report) = demo::run(fresh(dir.path()), 1).expect("demo runs");
    assert_eq!(report.accepted, vec![0, 1]);
    assert_eq!(report.rejected, vec![2]);
    assert!(report.supply_conserved);
    let led = p.into_backend();
    let v = led.verify().expect("verifies");
    assert_eq!(v.entries, led.len());
    drop(led);
    let reopened = EmbeddedLedger::open(dir.path()).expect("reopens");
    assert_eq!(reopened.state_root(), v.state_root);
}
