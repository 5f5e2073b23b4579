//! `cohort run --events FILE` and `cohort provenance DIR`: the event stream, and the
//! provenance the run writes checked against the ledger and the blob store alone; every kind
//! of disagreement is found and named.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::cohort;

fn run(out: &Path, events: &Path) {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/attack-linear.toml");
    let o = cohort(&[
        "run",
        config.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--set",
        "clients=8",
        "--set",
        "coordinator.rounds=2",
        "--events",
        events.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", common::text(&o));
}

fn check(dir: &Path) -> (Option<i32>, String) {
    let o = cohort(&["provenance", dir.to_str().unwrap()]);
    (o.status.code(), common::text(&o))
}

/// Every file under `dir`, with its bytes.
fn snapshot(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn the_event_stream_and_the_provenance_of_a_run_agree_with_its_ledger_and_blobs() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let events = tmp.path().join("events.jsonl");
    run(&out, &events);

    // The events: JSON lines, tagged, in order; amounts are decimal strings of base units.
    let text = std::fs::read_to_string(&events).unwrap();
    let kinds: Vec<String> = text
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["event"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(kinds[0], "set-up");
    // Both files say which layout they follow.
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(first["schema"], cohort_fl::events::SCHEMA_VERSION);
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(written["schema"], cohort_node::summary::SCHEMA_VERSION);
    for k in [
        "round-opened",
        "update-received",
        "update-validated",
        "committed",
        "revealed",
        "consensus",
        "aggregated",
        "settled",
        "evaluated",
        "holdings",
        "checkpoint",
    ] {
        assert!(kinds.iter().any(|x| x == k), "no {k} event in {kinds:?}");
    }
    assert_eq!(kinds.iter().filter(|k| *k == "checkpoint").count(), 2);
    let settled: serde_json::Value =
        serde_json::from_str(text.lines().find(|l| l.contains("\"settled\"")).unwrap()).unwrap();
    let (_, pay) = settled["payouts"]
        .as_object()
        .unwrap()
        .iter()
        .next()
        .unwrap();
    let reward = pay["reward"].as_str().unwrap();
    assert!(reward.bytes().all(|b| b.is_ascii_digit()), "{reward}");

    // summary.json's whole `summary` (the initial model's metrics and the holdings after the
    // set-up, every round, the final holdings, the ledger's root and size) is the events
    // folded: rebuilt from the file alone, it is the same but for the rounds' wall seconds
    // (not events).
    let events: Vec<cohort_fl::events::RunEvent> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["config"]["validators"], 3);
    let rebuilt = cohort_node::summary::summary_from_events(3, &events).unwrap();
    let without_seconds = |mut v: serde_json::Value| {
        for r in v["rounds"].as_array_mut().unwrap() {
            r.as_object_mut().unwrap().remove("seconds");
        }
        v
    };
    let written = without_seconds(summary["summary"].clone());
    let keys: Vec<&String> = written.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        [
            "final_holdings",
            "initial",
            "initial_holdings",
            "ledger_entries",
            "ledger_root",
            "rounds",
            "update_bytes"
        ]
    );
    assert_eq!(rebuilt.rounds.len(), 2);
    assert_eq!(rebuilt.initial_holdings.len(), 8 + 3);
    assert_eq!(
        without_seconds(serde_json::to_value(&rebuilt).unwrap()),
        written
    );
    // The final holdings (read at the end) are the last round's.
    assert_eq!(written["rounds"][1]["holdings"], written["final_holdings"]);
    // The rounds alone, as the progress line folds them.
    let rounds = cohort_node::summary::rounds_from_events(3, &events);
    assert_eq!(
        without_seconds(serde_json::json!({ "rounds": rounds }))["rounds"],
        written["rounds"]
    );
    // The root is the ledger's own.
    let v = cohort(&[
        "ledger",
        "verify",
        out.join("ledger").to_str().unwrap(),
        "--json",
    ]);
    assert!(v.status.success(), "{}", common::text(&v));
    let verified: serde_json::Value = serde_json::from_slice(&v.stdout).unwrap();
    assert_eq!(verified["report"]["root"], written["ledger_root"]);
    assert_eq!(verified["report"]["entries"], written["ledger_entries"]);

    // The provenance agrees, and checking it writes nothing.
    let before = snapshot(&out);
    let (code, msg) = check(&out);
    assert_eq!(code, Some(0), "{msg}");
    assert!(msg.contains("OK: 16 provenance records"), "{msg}");
    assert_eq!(snapshot(&out), before, "provenance only reads");

    let prov = out.join("provenance.jsonl");
    let original = std::fs::read_to_string(&prov).unwrap();
    let first: serde_json::Value = serde_json::from_str(original.lines().next().unwrap()).unwrap();

    // A record that says something else than the ledger.
    let changed = original.replacen("\"samples\":", "\"samples\":1", 1);
    std::fs::write(&prov, &changed).unwrap();
    let (code, msg) = check(&out);
    assert_eq!(code, Some(1), "{msg}");
    assert!(msg.contains("samples: the file says"), "{msg}");

    // A record missing from the file.
    let dropped: String = original.lines().skip(1).map(|l| format!("{l}\n")).collect();
    std::fs::write(&prov, &dropped).unwrap();
    let (code, msg) = check(&out);
    assert_eq!(code, Some(1), "{msg}");
    assert!(msg.contains("missing from"), "{msg}");

    // A line that is not a record.
    std::fs::write(&prov, format!("{original}{{\"round\": \"x\"}}\n")).unwrap();
    let (code, msg) = check(&out);
    assert_eq!(code, Some(2), "{msg}");
    assert!(msg.contains("line 17"), "{msg}");
    std::fs::write(&prov, &original).unwrap();

    // An update blob altered, then missing.
    let blob = first["blob"].as_str().unwrap();
    let path = out.join("blobs/sha256").join(&blob[..2]).join(blob);
    let bytes = std::fs::read(&path).unwrap();
    let mut bad = bytes.clone();
    bad[10] ^= 1;
    std::fs::write(&path, &bad).unwrap();
    let (code, msg) = check(&out);
    assert_eq!(code, Some(1), "{msg}");
    assert!(msg.contains(blob), "{msg}");
    std::fs::remove_file(&path).unwrap();
    let (code, msg) = check(&out);
    assert_eq!(code, Some(1), "{msg}");
    assert!(msg.contains(blob), "{msg}");
    std::fs::write(&path, &bytes).unwrap();
    let (code, msg) = check(&out);
    assert_eq!(code, Some(0), "{msg}");

    // Not a run directory.
    let (code, msg) = check(tmp.path());
    assert_eq!(code, Some(2), "{msg}");
    assert!(msg.contains("no embedded ledger"), "{msg}");
}
