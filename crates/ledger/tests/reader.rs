//! Readers of a ledger directory never write it, never need the operator's secret, tell a busy
//! ledger from a damaged one, and read a crashed one without repairing it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use alloy_primitives::Bytes;
use cohort_core::{Hash32, Identity, sha256, tokens};
use cohort_ledger::demo::{self, Cast};
use cohort_ledger::protocol::roles;
use cohort_ledger::{
    EmbeddedLedger, LedgerBackend, LedgerConfig, LedgerError, LedgerReader, Protocol,
};

fn demo_dir(root: &Path) -> PathBuf {
    let dir = root.join("demo");
    let config = LedgerConfig::new("cohort.local/test", Cast::new(1).governance)
        .with_start_time(1_700_000_000);
    demo::run(EmbeddedLedger::create(&dir, config).unwrap(), 1).unwrap();
    dir
}

/// The SHA-256 of every file in `dir`, by name: the directory as a reader must leave it.
fn hashes(dir: &Path) -> BTreeMap<String, Hash32> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            let h = if e.path().is_file() {
                sha256(&std::fs::read(e.path()).unwrap())
            } else {
                Hash32::ZERO
            };
            (name, h)
        })
        .collect()
}

/// Everything a reader can do, once.
fn read_everything(dir: &Path) {
    let r = LedgerReader::open(dir).unwrap();
    let info = r.info().unwrap();
    let report = r.verify().unwrap();
    assert_eq!(report.entries, info.size);
    let state = r.replay().unwrap();
    assert_eq!(state.report().root, info.root);
    for i in 0..info.size {
        let p = r.prove(i).unwrap();
        p.check(Some(&r.operator_key())).unwrap();
        r.entry(i).unwrap();
    }
    r.consistency_proof(1).unwrap();
    drop(r);
    EmbeddedLedger::info(dir).unwrap();
    EmbeddedLedger::verify_dir(dir).unwrap();
}

#[test]
fn readers_leave_every_file_byte_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = demo_dir(tmp.path());
    let before = hashes(&dir);
    assert_eq!(before.len(), 2, "{before:?}");
    for _ in 0..3 {
        read_everything(&dir);
        assert_eq!(hashes(&dir), before);
    }
    // Two readers at once.
    let a = LedgerReader::open(&dir).unwrap();
    let b = LedgerReader::open(&dir).unwrap();
    a.verify().unwrap();
    b.verify().unwrap();
    drop((a, b));
    assert_eq!(hashes(&dir), before);
}

#[test]
fn readers_need_no_operator_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = demo_dir(tmp.path());
    let key = dir.join("operator.key");
    // Absent.
    std::fs::remove_file(&key).unwrap();
    read_everything(&dir);
    // Unreadable (a directory where the file was; root can read any mode, not this) and
    // garbage: neither is opened.
    std::fs::create_dir(&key).unwrap();
    read_everything(&dir);
    std::fs::remove_dir(&key).unwrap();
    std::fs::write(&key, "not a key").unwrap();
    read_everything(&dir);
    // Appending does need it, and says which file is wrong.
    let e = EmbeddedLedger::open(&dir).unwrap_err();
    assert!(e.to_string().contains("operator.key"), "{e}");
    std::fs::remove_file(&key).unwrap();
    let e = EmbeddedLedger::open(&dir).unwrap_err();
    assert!(e.to_string().contains("operator.key"), "{e}");
}

#[test]
fn a_busy_ledger_is_busy_not_tampered() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = demo_dir(tmp.path());
    let writer = EmbeddedLedger::open(&dir).unwrap();
    let e = LedgerReader::open(&dir).unwrap_err();
    assert!(matches!(e, LedgerError::Busy(_)), "{e:?}");
    assert!(!e.is_integrity_failure());
    assert!(e.to_string().contains("another process"), "{e}");
    // And a reader keeps a writer out while it reads.
    drop(writer);
    let r = LedgerReader::open(&dir).unwrap();
    let e = EmbeddedLedger::open(&dir).unwrap_err();
    assert!(matches!(e, LedgerError::Busy(_)), "{e:?}");
    drop(r);
    EmbeddedLedger::open(&dir).unwrap();
}

/// A copy of a ledger taken while its writer has it open is what a crash leaves: redb marks
/// the file as needing recovery until the writer closes it.
#[test]
fn a_crashed_ledger_is_recovered_in_a_private_copy_and_left_as_it_is() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = demo_dir(tmp.path());
    let crashed = tmp.path().join("crashed");
    std::fs::create_dir(&crashed).unwrap();
    let gov = Cast::new(1).governance;
    let (size, root) = {
        let led = EmbeddedLedger::open(&dir).unwrap();
        let contract = led.entry(0).unwrap().receipt.created.unwrap();
        let mut p = Protocol::at(led, contract);
        p.mint(&gov, gov.address(), tokens(5)).unwrap();
        let head = p.backend().head().unwrap();
        for f in ["ledger.redb", "operator.key"] {
            std::fs::copy(dir.join(f), crashed.join(f)).unwrap();
        }
        (head.size, head.root)
    };
    let before = hashes(&crashed);
    let r = LedgerReader::open(&crashed).unwrap();
    assert!(r.recovered(), "the copy should need recovery");
    let report = r.verify().unwrap();
    assert_eq!((report.entries, report.root), (size, root));
    drop(r);
    read_everything(&crashed);
    assert_eq!(
        hashes(&crashed),
        before,
        "a reader repaired the file in place"
    );
    // The writer repairs it; then it reads as closed cleanly, with the same content.
    drop(EmbeddedLedger::open(&crashed).unwrap());
    assert_ne!(hashes(&crashed), before);
    let r = LedgerReader::open(&crashed).unwrap();
    assert!(!r.recovered());
    assert_eq!(r.verify().unwrap().root, root);
    // The original closed cleanly.
    assert!(!LedgerReader::open(&dir).unwrap().recovered());
}

#[test]
fn a_writer_refuses_a_damaged_file_and_leaves_it_as_it_is() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = demo_dir(tmp.path());
    let db = dir.join("ledger.redb");
    let mut b = std::fs::read(&db).unwrap();
    // A byte of a live page of the latest commit: the root of the entries table is near the
    // end of the written part of the file; any live page will do, so damage all of them in
    // turn until the reader says damaged.
    let pages: Vec<usize> = (1..b.len() / 4096)
        .filter(|p| b[p * 4096..(p + 1) * 4096].iter().any(|&x| x != 0))
        .collect();
    let mut hit = false;
    for p in pages {
        b[p * 4096 + 100] ^= 0x10;
        std::fs::write(&db, &b).unwrap();
        if matches!(LedgerReader::open(&dir), Err(LedgerError::Damaged { .. })) {
            hit = true;
            break;
        }
        b[p * 4096 + 100] ^= 0x10;
    }
    assert!(hit, "no live page is checked");
    let before = hashes(&dir);
    let e = EmbeddedLedger::open(&dir).unwrap_err();
    assert!(matches!(e, LedgerError::Damaged { .. }), "{e:?}");
    assert!(e.is_integrity_failure());
    assert_eq!(hashes(&dir), before);
}

#[test]
fn the_replayed_state_answers_queries_and_refuses_transactions() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = demo_dir(tmp.path());
    let r = LedgerReader::open(&dir).unwrap();
    let state = r.replay().unwrap();
    let size = state.len();
    let contract = state.entries()[0].receipt.created.unwrap();
    let mut p = Protocol::at(state, contract);
    assert!(p.supply().unwrap().conserved());
    let gov = Cast::new(1).governance;
    let e = p.register(&gov, roles::CLIENT).unwrap_err();
    assert!(e.to_string().contains("read-only"), "{e}");
    let mut state = p.into_backend();
    assert!(matches!(
        state.transact(&Identity::from_seed(1, "x"), None, Bytes::new()),
        Err(LedgerError::ReadOnly(_))
    ));
    assert_eq!(state.len(), size);
    let (logs, next) = state.logs_since(0).unwrap();
    assert_eq!(next, size);
    assert!(!logs.is_empty());
}

#[test]
fn wrong_paths_are_not_ledgers() {
    let tmp = tempfile::tempdir().unwrap();
    for (dir, want) in [
        (tmp.path().join("missing"), "no such directory"),
        (tmp.path().to_path_buf(), "no ledger.redb"),
    ] {
        let e = LedgerReader::open(&dir).unwrap_err();
        assert!(matches!(e, LedgerError::NotALedger { .. }), "{e:?}");
        assert!(!e.is_integrity_failure());
        assert!(e.to_string().contains(want), "{e}");
    }
    std::fs::create_dir(tmp.path().join("ledger.redb")).unwrap();
    let e = LedgerReader::open(tmp.path()).unwrap_err();
    assert!(matches!(e, LedgerError::NotALedger { .. }), "{e:?}");
    // An empty or foreign file is damage: ledger.redb is cohort's.
    std::fs::remove_dir(tmp.path().join("ledger.redb")).unwrap();
    std::fs::write(tmp.path().join("ledger.redb"), b"").unwrap();
    assert!(matches!(
        LedgerReader::open(tmp.path()),
        Err(LedgerError::Damaged { .. })
    ));
}

/// redb can fall back to the previous commit when the latest fails its checksums: recovery
/// after a crash, but on a file its writer closed cleanly it would show an older ledger as the
/// current one. A clean file's last commit is a two-phase one, for which redb refuses instead;
/// clearing that flag in the header and damaging the latest commit forces the fallback, which
/// the reader must refuse too.
#[test]
fn a_clean_file_is_never_rolled_back_to_an_older_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = demo_dir(tmp.path());
    let db = dir.join("ledger.redb");
    let clean = std::fs::read(&db).unwrap();
    let shown = LedgerReader::open(&dir).unwrap().verify().unwrap();
    let live: Vec<usize> = (1..clean.len() / 4096)
        .filter(|p| clean[p * 4096..(p + 1) * 4096].iter().any(|&x| x != 0))
        .collect();
    let mut refused = 0;
    for p in live {
        let mut b = clean.clone();
        b[9] &= !0x04; // the god byte's two-phase-commit flag
        b[p * 4096 + 64] ^= 0x20;
        std::fs::write(&db, &b).unwrap();
        match LedgerReader::open(&dir).and_then(|r| r.verify()) {
            Ok(r) => assert_eq!(
                (r.entries, r.root),
                (shown.entries, shown.root),
                "page {p}: read as an older ledger"
            ),
            Err(e) => {
                assert!(e.is_integrity_failure(), "page {p}: {e:?}");
                if e.to_string().contains("closed it cleanly") {
                    refused += 1;
                }
            }
        }
        assert_eq!(std::fs::read(&db).unwrap(), b);
    }
    assert!(refused > 0, "no damage made redb fall back");
}
