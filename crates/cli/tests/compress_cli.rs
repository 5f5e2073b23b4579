//! Compressed federated updates as a user runs them: `[compression] update = "topk-int8"` on
//! a small LoRA language-model run cuts the update bytes per client per round at least ten
//! times against the f32 blobs, the run completes and verifies, the blobs in the store are
//! the compressed ones whose hashes the ledger holds, the same seed gives the same root, and
//! bad settings are refused by name before anything is written. `lowrank-int8` (every LoRA
//! tensor as int8 factors of its truncated SVD) does the same.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::{cohort, p, text};
use serde_json::Value;

/// The LM task, small: the tiny GPT (d 128, 4 layers, rank-4 LoRA on c_attn, c_proj, c_fc:
/// 32 tensors, 32,768 values) pretrained for 30 steps, 2 rounds of 3 clients.
const SETS: [&str; 9] = [
    "clients=3",
    "validators=2",
    "coordinator.rounds=2",
    "coordinator.clients_per_round=3",
    "task.seq_len=32",
    "task.pretrain_steps=30",
    "task.local_steps=4",
    "task.eval_windows=8",
    "task.batch=8",
];

fn lm_run(out: &Path, extra: &[&str]) -> std::process::Output {
    let config = format!(
        "{}/../../examples/lm-shakespeare.toml",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut args = vec!["run", config.as_str(), "--out", p(out)];
    for s in SETS.iter().chain(extra) {
        args.extend(["--set", s]);
    }
    cohort(&args)
}

fn summary(out: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap()
}

#[test]
fn topk_int8_cuts_the_update_bytes_ten_times_and_the_run_completes() {
    let tmp = tempfile::tempdir().unwrap();
    let plain = tmp.path().join("none");
    let o = lm_run(&plain, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let packed = tmp.path().join("topk-int8");
    let codec = [
        "compression.update=\"topk-int8\"",
        "compression.topk_fraction=0.1",
    ];
    let o = lm_run(&packed, &codec);
    assert!(o.status.success(), "{}", text(&o));
    let printed = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        printed.contains("update bytes per client per round:") && printed.contains("(topk-int8)"),
        "{printed}"
    );

    let (a, b) = (summary(&plain), summary(&packed));
    let fp32 = &a["summary"]["update_bytes"];
    assert_eq!(fp32["ratio"].as_f64(), Some(1.0));
    let bytes = &b["summary"]["update_bytes"];
    assert_eq!(bytes["updates"].as_u64(), Some(6));
    // The f32 size of the same model's update, whatever the codec.
    assert_eq!(
        bytes["fp32_per_client_per_round"],
        fp32["per_client_per_round"]
    );
    let ratio = bytes["ratio"].as_f64().unwrap();
    assert!(ratio >= 10.0, "only {ratio:.2}x fewer bytes");
    assert_eq!(b["config"]["compression"]["update"], "topk-int8");

    // Every update blob in the store is the compressed one the ledger names, with the bytes
    // the summary counts, and every one was accepted (it decoded and helped).
    for r in b["summary"]["rounds"].as_array().unwrap() {
        assert_eq!(r["accepted"].as_array().unwrap().len(), 3, "{r}");
        for (u, prov) in r["updates"]
            .as_array()
            .unwrap()
            .iter()
            .zip(r["provenance"].as_array().unwrap())
        {
            let hash = prov["blob"].as_str().unwrap().trim_start_matches("0x");
            let blob =
                std::fs::read(packed.join("blobs/sha256").join(&hash[..2]).join(hash)).unwrap();
            assert_eq!(u["bytes"].as_u64(), Some(blob.len() as u64));
            let header_len = u64::from_le_bytes(blob[..8].try_into().unwrap()) as usize;
            let header: Value = serde_json::from_slice(&blob[8..8 + header_len]).unwrap();
            assert_eq!(header["__metadata__"]["cohort.codec"], "topk-int8");
            assert_eq!(header["values"]["dtype"], "I8");
        }
    }
    let v = cohort(&["ledger", "verify", p(&packed.join("ledger"))]);
    assert!(v.status.success(), "{}", text(&v));

    // The same seed gives the same digests: the same ledger root.
    let again = tmp.path().join("again");
    let o = lm_run(&again, &codec);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        summary(&again)["summary"]["ledger_root"],
        b["summary"]["ledger_root"]
    );
}

/// Every update as the rank-1 int8 factors of its LoRA tensors: the run completes with every
/// update accepted, the blobs in the store are the low-rank ones the ledger names, the ledger
/// verifies, and the same seed gives the same root (the SVD is deterministic).
#[test]
fn lowrank_int8_cuts_the_update_bytes_and_replays_to_the_same_root() {
    let tmp = tempfile::tempdir().unwrap();
    let codec = ["compression.update=\"lowrank-int8\"", "compression.rank=1"];
    let out = tmp.path().join("lowrank-int8");
    let o = lm_run(&out, &codec);
    assert!(o.status.success(), "{}", text(&o));
    let printed = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(printed.contains("(lowrank-int8)"), "{printed}");

    let s = summary(&out);
    assert_eq!(s["config"]["compression"]["update"], "lowrank-int8");
    assert_eq!(s["config"]["compression"]["rank"], 1);
    let bytes = &s["summary"]["update_bytes"];
    assert_eq!(bytes["updates"].as_u64(), Some(6));
    // Rank 1 of [4, 128] and [n, 4] tensors: 132 and n + 4 bytes of factors.
    let ratio = bytes["ratio"].as_f64().unwrap();
    assert!(ratio >= 10.0, "only {ratio:.2}x fewer bytes");
    for r in s["summary"]["rounds"].as_array().unwrap() {
        assert_eq!(r["accepted"].as_array().unwrap().len(), 3, "{r}");
        for (u, prov) in r["updates"]
            .as_array()
            .unwrap()
            .iter()
            .zip(r["provenance"].as_array().unwrap())
        {
            let hash = prov["blob"].as_str().unwrap().trim_start_matches("0x");
            let blob = std::fs::read(out.join("blobs/sha256").join(&hash[..2]).join(hash)).unwrap();
            assert_eq!(u["bytes"].as_u64(), Some(blob.len() as u64));
            let header_len = u64::from_le_bytes(blob[..8].try_into().unwrap()) as usize;
            let header: Value = serde_json::from_slice(&blob[8..8 + header_len]).unwrap();
            assert_eq!(header["__metadata__"]["cohort.codec"], "lowrank-int8");
            assert_eq!(header["values"]["dtype"], "I8");
            // 32 LoRA tensors, every one factored at rank 1.
            assert_eq!(header["ranks"]["shape"], serde_json::json!([32]));
            assert_eq!(header["scales"]["shape"], serde_json::json!([64]));
        }
    }
    let v = cohort(&["ledger", "verify", p(&out.join("ledger"))]);
    assert!(v.status.success(), "{}", text(&v));

    let again = tmp.path().join("again");
    let o = lm_run(&again, &codec);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        summary(&again)["summary"]["ledger_root"],
        s["summary"]["ledger_root"]
    );
}

#[test]
fn bad_compression_settings_are_refused_by_name_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("never");
    for (sets, field) in [
        (
            &["compression.update=\"topk\"", "compression.topk_fraction=0"][..],
            "compression.topk_fraction",
        ),
        (
            &[
                "compression.update=\"topk\"",
                "compression.topk_fraction=nan",
            ][..],
            "compression.topk_fraction",
        ),
        (
            &[
                "compression.update=\"topk\"",
                "compression.topk_fraction=2.0",
            ][..],
            "compression.topk_fraction",
        ),
        (
            &[
                "compression.update=\"int8\"",
                "compression.topk_fraction=0.1",
            ][..],
            "compression.topk_fraction",
        ),
        (
            &["compression.error_feedback=true"][..],
            "compression.error_feedback",
        ),
        (&["compression.update=\"zip\""][..], "compression.update"),
        (
            &["compression.update=\"lowrank\"", "compression.rank=0"][..],
            "compression.rank",
        ),
        (
            &["compression.update=\"lowrank\"", "compression.rank=-1"][..],
            "compression.rank",
        ),
        (
            &["compression.update=\"lowrank\"", "compression.rank=5000"][..],
            "compression.rank",
        ),
        (
            &["compression.update=\"lowrank\"", "compression.rank=nan"][..],
            "compression.rank",
        ),
        (
            &["compression.update=\"lowrank\"", "compression.rank=\"two\""][..],
            "compression.rank",
        ),
        (
            &["compression.update=\"topk\"", "compression.rank=2"][..],
            "compression.rank",
        ),
        (&["compression.ratio=10"][..], "compression.ratio"),
    ] {
        let o = lm_run(&out, sets);
        assert!(!o.status.success(), "{sets:?}");
        let e = text(&o);
        assert!(e.contains(&format!("invalid {field}")), "{sets:?}: {e}");
        assert!(!out.exists(), "{sets:?} wrote {}", out.display());
    }
}
