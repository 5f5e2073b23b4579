//! The `cohort ledger` commands as a user runs them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{cohort, p, text};
use redb::ReadableDatabase;

#[test]
fn demo_show_verify_prove_and_a_tampered_ledger() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ledger");

    let o = cohort(&["ledger", "demo", p(&dir), "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let demo: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(demo["report"]["rejected"], serde_json::json!([2]));
    let entries = demo["verify"]["entries"].as_u64().unwrap();

    // A second demo in the same place is refused, clearly.
    let o = cohort(&["ledger", "demo", p(&dir)]);
    assert!(!o.status.success());
    assert!(text(&o).contains("already exists"), "{}", text(&o));

    let o = cohort(&["ledger", "show", p(&dir), "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let show: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(show["size"].as_u64(), Some(entries));
    assert_eq!(show["accounts"].as_array().unwrap().len(), 6);

    let o = cohort(&["ledger", "verify", p(&dir)]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).starts_with("OK"));

    let proof = tmp.path().join("proof.json");
    let o = cohort(&[
        "ledger",
        "prove",
        p(&dir),
        "--entry",
        "5",
        "--out",
        p(&proof),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = cohort(&["ledger", "prove", p(&dir), "--check", p(&proof)]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("entry 5"), "{}", text(&o));

    // A forged proof fails with exit 1.
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&proof).unwrap()).unwrap();
    v["index"] = serde_json::json!(6);
    let forged = tmp.path().join("forged.json");
    std::fs::write(&forged, v.to_string()).unwrap();
    let o = cohort(&["ledger", "prove", p(&dir), "--check", p(&forged)]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let o = cohort(&[
        "ledger",
        "prove",
        p(&dir),
        "--check",
        p(&dir.join("ledger.redb")),
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("not an inclusion proof"), "{}", text(&o));

    // Alter entry 7 behind the ledger's back: verify exits 1 and names it.
    {
        let db = redb::Database::open(dir.join("ledger.redb")).unwrap();
        let t: redb::TableDefinition<'_, u64, &[u8]> = redb::TableDefinition::new("entries");
        let mut bytes = {
            let r = db.begin_read().unwrap();
            let tab = r.open_table(t).unwrap();
            tab.get(7).unwrap().unwrap().value().to_vec()
        };
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        let w = db.begin_write().unwrap();
        w.open_table(t)
            .unwrap()
            .insert(7, bytes.as_slice())
            .unwrap();
        w.commit().unwrap();
    }
    let o = cohort(&["ledger", "verify", p(&dir)]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("entry 7"), "{}", text(&o));
    let o = cohort(&["ledger", "verify", p(&dir), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["bad_entry"], serde_json::json!(7));

    // Not a ledger at all.
    let o = cohort(&["ledger", "show", p(tmp.path())]);
    assert!(!o.status.success());
    assert!(text(&o).contains("not a cohort ledger"), "{}", text(&o));
}

#[test]
fn bench_ledger_writes_json() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("bench.json");
    let o = cohort(&[
        "bench",
        "ledger",
        "--entries",
        "300",
        "--batch",
        "100",
        "--proofs",
        "50",
        "--json",
        p(&out),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    for k in ["append_per_s", "verify_100k_s", "proof_bytes", "proof_us"] {
        assert!(v[k].as_f64().is_some_and(|x| x > 0.0), "{k}: {}", v[k]);
    }
}
