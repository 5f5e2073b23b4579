//! `cohort unlearn` on a real run of examples/unlearn-imdb.toml (shortened): the backdoor client
//! is forgotten by retraining, the backdoor falls to the oracle's, and the ledger tells the
//! story (request, execution with its evidence, verification) and still verifies. Bad input is
//! refused by name before anything is recorded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use common::{cohort, p, text};
use serde_json::Value;

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/unlearn-imdb.toml")
}

/// The example, 3 rounds and fewer reviews, into `out`.
fn run(out: &Path) {
    let o = cohort(&[
        "run",
        p(&example()),
        "--out",
        p(out),
        "--set",
        "coordinator.rounds=3",
        "--set",
        "task.test_samples=1000",
    ]);
    assert!(o.status.success(), "{}", text(&o));
}

/// examples/clean-linear.toml with 4 clients, all sampled, 2 rounds, into `out`, with
/// `extra` arguments.
fn linear_run(out: &Path, extra: &[&str]) {
    let linear = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/clean-linear.toml");
    let mut args = vec![
        "run",
        p(&linear),
        "--out",
        p(out),
        "--set",
        "clients=4",
        "--set",
        "coordinator.clients_per_round=4",
        "--set",
        "coordinator.rounds=2",
    ];
    args.extend(extra);
    let o = cohort(&args);
    assert!(o.status.success(), "{}", text(&o));
}

fn entries(dir: &Path) -> u64 {
    let o = cohort(&["ledger", "verify", p(&dir.join("ledger")), "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    v["report"]["entries"].as_u64().unwrap()
}

#[test]
fn retraining_forgets_the_backdoor_client_and_the_ledger_tells_the_story() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    run(&dir);
    let before = entries(&dir);
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    // client-9's updates reached the model: accepted every round.
    for r in summary["summary"]["rounds"].as_array().unwrap() {
        let accepted: Vec<u64> = r["accepted"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        assert!(accepted.contains(&9), "{r}");
    }

    // --check writes nothing.
    let o = cohort(&["unlearn", p(&dir), "--client", "client-9", "--check"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("nothing was written"), "{}", text(&o));
    assert_eq!(entries(&dir), before);

    let o = cohort(&[
        "unlearn",
        p(&dir),
        "--client",
        "client-9",
        "--method",
        "retrain",
        "--compare-retrain",
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("--json prints JSON");
    for key in [
        "method",
        "seconds",
        "retrain_seconds",
        "forget",
        "retain",
        "test",
        "mia_auc",
        "oracle",
        "ledger_request",
        "model_hash",
        "verified",
    ] {
        assert!(!v[key].is_null(), "{key} missing: {v}");
    }
    assert_eq!(v["method"], "retrain");
    assert_eq!(v["verified"], true);
    assert_eq!(v["ledger_request"], 1);
    assert!(v["mia_auc"]["min_k"].is_null(), "no min-k for a classifier");
    for set in ["forget", "retain", "test"] {
        assert!(v[set]["loss"].as_f64().unwrap() > 0.0, "{set}: {v}");
        assert!(v[set]["accuracy"].as_f64().is_some(), "{set}: {v}");
    }
    // Retraining is the oracle.
    for set in ["forget", "retain", "test"] {
        assert_eq!(v[set], v["oracle"][set], "{set}");
    }
    // The backdoor the client planted is gone: below the original model's.
    let backdoor = |x: &Value| x["test"]["backdoor_success"].as_f64().unwrap();
    assert!(
        backdoor(&v) < backdoor(&v["original"]),
        "backdoor {} after, {} before",
        backdoor(&v),
        backdoor(&v["original"])
    );
    assert_ne!(v["forget"], v["original"]["forget"]);

    // Request, execution and verification: three entries, and the ledger verifies.
    assert_eq!(entries(&dir), before + 3);
    let o = cohort(&["provenance", p(&dir)]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(dir.join("unlearn/request-1/result.json").is_file());
    assert!(dir.join("unlearn/request-1/retrain/ledger").is_dir());
    let o = cohort(&[
        "ledger",
        "show",
        p(&dir.join("ledger")),
        "--json",
        "--entries",
        "3",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let shown: Value = serde_json::from_slice(&o.stdout).unwrap();
    let calls: Vec<(&str, Vec<&str>)> = shown["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["call"].as_str().unwrap(),
                e["events"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_str().unwrap())
                    .collect(),
            )
        })
        .collect();
    assert_eq!(
        calls,
        [
            ("requestUnlearning", vec!["UnlearningRequested"]),
            ("recordUnlearning", vec!["UnlearningExecuted", "Clawback"]),
            ("verifyUnlearning", vec!["UnlearningVerified"]),
        ]
    );

    // The same client again: refused, nothing recorded.
    let o = cohort(&["unlearn", p(&dir), "--client", "client-9"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("forgotten already"), "{}", text(&o));
    assert_eq!(entries(&dir), before + 3);

    // Bad input: named, nothing recorded.
    for (args, why) in [
        (
            vec!["--client", "client-10"],
            "the run's clients are client-0 to client-9",
        ),
        (vec!["--client", "validator-0"], "client-0 to client-9"),
        (vec!["--client", ""], "client-0 to client-9"),
        (vec!["--client", "client-1", "--method", "magic"], "magic"),
    ] {
        let mut all = vec!["unlearn", p(&dir)];
        all.extend(args.iter().copied());
        let o = cohort(&all);
        assert!(!o.status.success(), "{all:?}");
        assert!(text(&o).contains(why), "{all:?}: {}", text(&o));
        assert_eq!(entries(&dir), before + 3, "{all:?}");
    }
    let o = cohort(&[
        "unlearn",
        p(&tmp.path().join("nowhere")),
        "--client",
        "client-0",
    ]);
    assert!(text(&o).contains("not a run directory"), "{}", text(&o));
    // A run that did not finish.
    let unfinished = tmp.path().join("unfinished");
    std::fs::create_dir_all(&unfinished).unwrap();
    std::fs::copy(dir.join("run.json"), unfinished.join("run.json")).unwrap();
    let o = cohort(&["unlearn", p(&unfinished), "--client", "client-0"]);
    assert!(text(&o).contains("not finished"), "{}", text(&o));
}

/// FedEraser replays the run from its stored updates without the client, measured beside a
/// retraining done in the same invocation: the backdoor goes as with retraining, faster.
/// Runs it cannot replay are refused before anything is recorded: a strategy whose step is not
/// a weighted sum, and stored updates that are gone.
#[test]
fn fed_eraser_replays_the_stored_updates_and_refuses_what_it_cannot_replay() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    run(&dir);
    let before = entries(&dir);
    let o = cohort(&[
        "unlearn",
        p(&dir),
        "--client",
        "client-9",
        "--method",
        "fed-eraser",
        "--compare-retrain",
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["method"], "fed-eraser");
    assert_eq!(v["verified"], true);
    assert!(v["retrain_seconds"].as_f64().unwrap() > 0.0);
    // (How much faster is the benchmark's business: `speedup` is there.)
    assert!(v["speedup"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["client_steps"].as_u64().unwrap() > 0);
    assert!(v["ledger_bytes"].as_u64().unwrap() > 0);
    // Not the oracle, but near it, and the backdoor is below the original's.
    assert_ne!(v["forget"], v["oracle"]["forget"]);
    let backdoor = |x: &Value| x["test"]["backdoor_success"].as_f64().unwrap();
    assert!(backdoor(&v) < backdoor(&v["original"]), "{v}");
    assert!((backdoor(&v) - backdoor(&v["oracle"])).abs() < 0.05, "{v}");
    assert_eq!(entries(&dir), before + 3);

    // FedEraser's retaining interval and calibration ratio: rounds 1 and 3 of the 3, a
    // quarter of the 16 local steps (4) instead of half (8): a third of the steps. The
    // evidence records the settings; bad values are refused by name.
    let again = tmp.path().join("interval");
    run(&again);
    let o = cohort(&[
        "unlearn",
        p(&again),
        "--client",
        "client-9",
        "--method",
        "fed-eraser",
        "--interval",
        "2",
        "--calibration-ratio",
        "0.25",
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let w: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(w["verified"], true);
    assert_eq!(
        w["client_steps"].as_u64().unwrap() * 3,
        v["client_steps"].as_u64().unwrap(),
        "{w}"
    );
    let h = w["evidence_hash"].as_str().unwrap();
    let evidence: Value = serde_json::from_slice(
        &std::fs::read(again.join(format!("blobs/sha256/{}/{h}", &h[..2]))).unwrap(),
    )
    .unwrap();
    assert_eq!(evidence["fed_eraser"]["interval"], 2, "{evidence}");
    for (flag, bad) in [
        ("--interval", "0"),
        ("--interval", "-1"),
        ("--calibration-ratio", "0"),
        ("--calibration-ratio", "1.5"),
        ("--calibration-ratio", "NaN"),
    ] {
        let arg = format!("{flag}={bad}");
        let o = cohort(&[
            "unlearn",
            p(&again),
            "--client",
            "client-1",
            "--method",
            "fed-eraser",
            &arg,
        ]);
        assert!(!o.status.success(), "{flag} {bad}");
        assert!(text(&o).contains(flag), "{flag} {bad}: {}", text(&o));
    }

    for (name, extra, why) in [
        (
            "median",
            vec!["--set", "aggregation.strategy={kind=\"median\"}"],
            "fed-eraser needs a weighted-sum aggregation",
        ),
        ("missing", vec![], "fed-eraser replays the stored updates"),
    ] {
        let dir = tmp.path().join(name);
        linear_run(&dir, &extra);
        if name == "missing" {
            // An update of a client that stays, gone from the store.
            let first: Value = serde_json::from_str(
                std::fs::read_to_string(dir.join("provenance.jsonl"))
                    .unwrap()
                    .lines()
                    .find(|l| l.contains("\"client\":0"))
                    .unwrap(),
            )
            .unwrap();
            let h = first["blob"].as_str().unwrap();
            std::fs::remove_file(dir.join(format!("blobs/sha256/{}/{h}", &h[..2]))).unwrap();
        }
        let before = entries(&dir);
        let o = cohort(&[
            "unlearn",
            p(&dir),
            "--client",
            "client-1",
            "--method",
            "fed-eraser",
        ]);
        assert!(!o.status.success(), "{name}");
        assert!(text(&o).contains(why), "{name}: {}", text(&o));
        assert_eq!(entries(&dir), before, "{name}: something was recorded");
    }
}

/// The LM task, small (as own_data_cli's): a test-preset GPT, 2 rounds of 3 clients by role.
const LM_SETS: [&str; 10] = [
    "clients=3",
    "validators=2",
    "coordinator.rounds=2",
    "coordinator.clients_per_round=3",
    "task.preset=test",
    "task.seq_len=32",
    "task.pretrain_steps=30",
    "task.local_steps=4",
    "task.eval_windows=8",
    "task.batch=8",
];

/// On the LM task: the LoRA methods move the adapter on the forgotten role's text (its
/// perplexity rises), with both membership-inference AUCs (loss and Min-K%) and the settings
/// in the evidence, verified; bad settings and the LoRA methods on a task without an adapter
/// are refused before anything is recorded.
#[test]
fn the_lora_methods_unlearn_a_role_and_refuse_what_they_cannot_do() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lm");
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/unlearn-lm.toml");
    let mut args = vec!["run", p(&config), "--out", p(&dir)];
    for s in LM_SETS {
        args.extend(["--set", s]);
    }
    let o = cohort(&args);
    assert!(o.status.success(), "{}", text(&o));
    let before = entries(&dir);
    for (i, method) in ["lora-ga", "lora-npo"].iter().enumerate() {
        let client = format!("client-{i}");
        let o = cohort(&[
            "unlearn",
            p(&dir),
            "--client",
            &client,
            "--method",
            method,
            "--steps",
            "5",
            "--lr",
            "1e-3",
            "--cache",
            p(&dir),
            "--json",
        ]);
        assert!(o.status.success(), "{method}: {}", text(&o));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["method"], *method);
        assert_eq!(v["verified"], true, "{v}");
        assert_eq!(v["client_steps"], 5);
        let ppl = |x: &Value| x["forget"]["perplexity"].as_f64().unwrap();
        assert!(ppl(&v) > ppl(&v["original"]), "{method}: {v}");
        assert!(v["mia_auc"]["loss"].as_f64().is_some(), "{v}");
        assert!(v["mia_auc"]["min_k"].as_f64().is_some(), "{v}");
        assert!(v["oracle"].is_null());
    }
    assert_eq!(entries(&dir), before + 6);
    for (args, why) in [
        (vec!["--lr", "nan"], "--lr"),
        (vec!["--lr", "0"], "--lr"),
        (vec!["--beta=-1"], "--beta"),
        (vec!["--retain-weight", "inf"], "--retain-weight"),
        (vec!["--steps", "0"], "--steps"),
    ] {
        let mut all = vec![
            "unlearn",
            p(&dir),
            "--client",
            "client-2",
            "--method",
            "lora-npo",
        ];
        all.extend(args.iter().copied());
        let o = cohort(&all);
        assert!(!o.status.success(), "{all:?}");
        assert!(text(&o).contains(why), "{all:?}: {}", text(&o));
        assert_eq!(entries(&dir), before + 6, "{all:?}");
    }
    // Not on a task without a LoRA adapter.
    let imdb = tmp.path().join("imdb");
    run(&imdb);
    let before = entries(&imdb);
    let o = cohort(&[
        "unlearn",
        p(&imdb),
        "--client",
        "client-9",
        "--method",
        "lora-ga",
    ]);
    assert!(
        text(&o).contains("only the lm task and the imdb task's gpt model"),
        "{}",
        text(&o)
    );
    assert_eq!(entries(&imdb), before);
}

/// `--delete-blobs`: after an accepted verification the client's update blobs leave the
/// store, the ledger records the manifest that lists them, and the provenance check counts
/// them as deleted by the unlearning, not as missing.
#[test]
fn deleting_the_forgotten_clients_blobs_is_recorded_and_the_provenance_still_checks() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    linear_run(&dir, &[]);
    let blobs_of_client_1: Vec<String> = std::fs::read_to_string(dir.join("provenance.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["client"] == 1)
        .map(|r| r["blob"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(blobs_of_client_1.len(), 2);
    let file = |h: &str| dir.join(format!("blobs/sha256/{}/{h}", &h[..2]));
    assert!(blobs_of_client_1.iter().all(|h| file(h).is_file()));
    let before = entries(&dir);
    let o = cohort(&[
        "unlearn",
        p(&dir),
        "--client",
        "client-1",
        "--delete-blobs",
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["deleted_blobs"]["count"], 2, "{v}");
    assert!(blobs_of_client_1.iter().all(|h| !file(h).exists()));
    assert_eq!(entries(&dir), before + 4);
    let o = cohort(&[
        "ledger",
        "show",
        p(&dir.join("ledger")),
        "--json",
        "--entries",
        "1",
    ]);
    let shown: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(shown["entries"][0]["call"], "recordBlobDeletion");
    // A run whose blobs live elsewhere (--blobs): named, and found with the same --blobs.
    let other_run = tmp.path().join("elsewhere");
    let store = tmp.path().join("store");
    linear_run(&other_run, &["--blobs", p(&store)]);
    let o = cohort(&["unlearn", p(&other_run), "--client", "client-1"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("give the same --blobs"), "{}", text(&o));
    let o = cohort(&[
        "unlearn",
        p(&other_run),
        "--client",
        "client-1",
        "--blobs",
        p(&store),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = cohort(&["provenance", p(&dir)]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("2 deleted by an unlearning"),
        "{}",
        text(&o)
    );
    // Another blob gone without a record is still a problem.
    let other: String = std::fs::read_to_string(dir.join("provenance.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|r| r["client"] == 2)
        .map(|r| r["blob"].as_str().unwrap().to_owned())
        .unwrap();
    std::fs::remove_file(file(&other)).unwrap();
    let o = cohort(&["provenance", p(&dir)]);
    assert!(!o.status.success());
    assert!(text(&o).contains(&other), "{}", text(&o));
}

/// After an unlearning the run goes on: `--resume --set coordinator.rounds=N` adds rounds,
/// which start from the unlearned model (the execution's model hash opens the next round on
/// the ledger) and never ask the forgotten client; `cohort provenance` tells it. A second
/// unlearning leaves both forgotten clients out of its replay and retraining. Fewer rounds,
/// or another change of config, are refused with nothing written.
#[test]
fn the_run_goes_on_from_the_unlearned_model_without_the_forgotten_client() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    linear_run(&dir, &[]);
    let linear = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/clean-linear.toml");
    let base = [
        "run",
        p(&linear),
        "--out",
        p(&dir),
        "--resume",
        "--set",
        "clients=4",
        "--set",
        "coordinator.clients_per_round=4",
    ];
    let with = |extra: &[&str]| {
        let mut a = base.to_vec();
        a.extend(extra);
        cohort(&a)
    };
    let o = cohort(&[
        "unlearn",
        p(&dir),
        "--client",
        "client-1",
        "--method",
        "fed-eraser",
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let first: Value = serde_json::from_slice(&o.stdout).unwrap();
    let model = first["model_hash"].as_str().unwrap().to_owned();

    // Refused, nothing written: fewer rounds; another change besides the rounds.
    let size = entries(&dir);
    let o = with(&["--set", "coordinator.rounds=1"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("not take them away"), "{}", text(&o));
    let o = with(&["--set", "coordinator.rounds=3", "--set", "task.lr=0.01"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("task.lr"), "{}", text(&o));
    assert_eq!(entries(&dir), size);
    assert!(dir.join("summary.json").is_file());

    // Two more rounds, from the unlearned model, without client-1.
    let o = with(&["--set", "coordinator.rounds=4"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(dir.join("summary-round-2.json").is_file());
    let records: Vec<Value> = std::fs::read_to_string(dir.join("provenance.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let later: Vec<&Value> = records.iter().filter(|r| r["round"] == 3).collect();
    assert_eq!(later.len(), 3, "{later:?}");
    assert!(
        later
            .iter()
            .all(|r| r["client"] != 1 && r["global_before"] == model)
    );
    assert!(
        records
            .iter()
            .filter(|r| r["round"].as_u64().unwrap() > 2)
            .all(|r| r["client"] != 1)
    );
    let o = cohort(&["provenance", p(&dir)]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("client-1's dataset forgotten")
            && text(&o).contains("went on from the unlearned model at ledger round 3"),
        "{}",
        text(&o)
    );
    // Finished again: a plain --resume says so and does nothing.
    let o = with(&["--set", "coordinator.rounds=4"]);
    assert!(
        o.status.success() && text(&o).contains("finished"),
        "{}",
        text(&o)
    );

    // A second unlearning: its retraining leaves out client-1 as well as client-2.
    let o = cohort(&[
        "unlearn",
        p(&dir),
        "--client",
        "client-2",
        "--method",
        "retrain",
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let second: Value = serde_json::from_slice(&o.stdout).unwrap();
    // Client steps: 2 clients (not 4) x 4 rounds x (2 epochs of 64 samples in batches of 16).
    assert_eq!(second["client_steps"], 2 * 4 * 8, "{second}");
    let retrain = dir.join(format!(
        "unlearn/request-{}/retrain/ledger",
        second["ledger_request"]
    ));
    let o = cohort(&["ledger", "verify", p(&retrain)]);
    assert!(o.status.success(), "{}", text(&o));
    let o = cohort(&["provenance", p(&dir), "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let stories = v["unlearnings"].as_array().unwrap();
    assert_eq!(stories.len(), 2);
    assert_eq!(stories[1]["verified"], true);
    // Not continued yet: no round after the second.
    assert!(stories[1]["next_round"].is_null());
}

/// The three steps one at a time, each by its own party, end where the one-shot command
/// ends (the same evidence and model); a step out of order, an unknown verifier or request
/// is refused by name with nothing recorded.
#[test]
fn request_execute_and_verify_as_separate_steps() {
    let tmp = tempfile::tempdir().unwrap();
    let (one, steps) = (tmp.path().join("one"), tmp.path().join("steps"));
    linear_run(&one, &[]);
    linear_run(&steps, &[]);
    let o = cohort(&[
        "unlearn",
        p(&one),
        "--client",
        "client-2",
        "--method",
        "fed-eraser",
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let together: Value = serde_json::from_slice(&o.stdout).unwrap();

    let size = entries(&steps);
    let refused = |args: &[&str], why: &str| {
        let o = cohort(args);
        assert!(!o.status.success(), "{args:?}: {}", text(&o));
        assert!(text(&o).contains(why), "{args:?}: {}", text(&o));
    };
    let d = p(&steps);
    refused(
        &["unlearn", "execute", d, "--request", "1"],
        "no unlearning request 1",
    );
    refused(&["unlearn", "execute", d, "--request", "0"], "--request");
    refused(
        &["unlearn", "request", d, "--client", "client-4"],
        "client-0 to client-3",
    );
    assert_eq!(entries(&steps), size);

    let o = cohort(&["unlearn", "request", d, "--client", "client-2", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["request"], 1);
    refused(
        &["unlearn", "verify", d, "--request", "1"],
        "filed and waiting for an execution",
    );
    refused(
        &["unlearn", "request", d, "--client", "client-2"],
        "UnlearningPending",
    );
    let o = cohort(&[
        "unlearn",
        "execute",
        d,
        "--request",
        "1",
        "--method",
        "fed-eraser",
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let x: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(x["verified"].is_null());
    refused(
        &["unlearn", "execute", d, "--request", "1"],
        "executed and waiting for a verifier",
    );
    refused(
        &[
            "unlearn",
            "verify",
            d,
            "--request",
            "1",
            "--as",
            "validator-3",
        ],
        "validator-0 to validator-2",
    );
    assert_eq!(entries(&steps), size + 2);
    let o = cohort(&[
        "unlearn",
        "verify",
        d,
        "--request",
        "1",
        "--as",
        "validator-2",
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["verified"], true);
    assert_eq!(entries(&steps), size + 3);
    // The same unlearning as in one invocation.
    assert_eq!(x["model_hash"], together["model_hash"]);
    assert_eq!(x["evidence_hash"], together["evidence_hash"]);
    assert_eq!(v["evidence_hash"], together["evidence_hash"]);
    assert_eq!(x["forget"], together["forget"]);
    refused(
        &[
            "unlearn",
            "verify",
            d,
            "--request",
            "1",
            "--as",
            "validator-1",
        ],
        "verified already",
    );
    let o = cohort(&["provenance", d]);
    assert!(
        o.status.success() && text(&o).contains("verified"),
        "{}",
        text(&o)
    );
}

/// A run whose provenance.jsonl no longer matches its ledger (a record dropped) is refused
/// by name before anything is recorded.
#[test]
fn a_run_whose_provenance_does_not_match_its_ledger_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    linear_run(&dir, &[]);
    let path = dir.join("provenance.jsonl");
    let written = std::fs::read_to_string(&path).unwrap();
    let kept: Vec<&str> = written.lines().skip(1).collect();
    std::fs::write(&path, kept.join("\n") + "\n").unwrap();
    let size = entries(&dir);
    for args in [
        vec!["unlearn", p(&dir), "--client", "client-1"],
        vec!["unlearn", "request", p(&dir), "--client", "client-1"],
    ] {
        let o = cohort(&args);
        assert!(!o.status.success());
        assert!(
            text(&o).contains("provenance.jsonl does not match its ledger")
                && text(&o).contains("missing from"),
            "{}",
            text(&o)
        );
    }
    assert_eq!(entries(&dir), size);
}

/// A run trained in shards (`--set unlearning.shards=2`: clients 0 and 2 in shard 0, 1 and 3
/// in shard 1) forgets a client by retraining its shard alone: with every client training
/// every round, the model is bit for bit the one retraining the whole federation gives, for a
/// third of the client steps. Forgetting the shard's last client gives its slice back the
/// initial model. The run goes on afterwards. Methods that do not fit are refused by name,
/// with nothing recorded: shards on an unsharded run, fed-eraser on a sharded one.
#[test]
fn shards_retrains_one_shard_exactly_and_refuses_what_does_not_fit() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    linear_run(&dir, &["--set", "unlearning.shards=2"]);
    let unlearn = |dir: &Path, client: &str, method: &str, extra: &[&str]| {
        let mut a = vec![
            "unlearn",
            p(dir),
            "--client",
            client,
            "--method",
            method,
            "--json",
        ];
        a.extend(extra);
        cohort(&a)
    };

    let before = entries(&dir);
    let o = unlearn(&dir, "client-1", "fed-eraser", &[]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("forgets exactly with --method shards"),
        "{}",
        text(&o)
    );
    assert_eq!(entries(&dir), before, "something was recorded");

    let o = unlearn(&dir, "client-1", "shards", &["--compare-retrain"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["method"], "shards");
    assert_eq!(v["verified"], true, "{v}");
    assert_eq!(v["model_hash"], v["oracle_hash"], "exact: {v}");
    assert_eq!(v["forget"], v["oracle"]["forget"]);
    assert_ne!(v["model_hash"], Value::Null);
    // One client of three retrained (client-3, shard 1's other member), 2 rounds.
    let steps = v["client_steps"].as_u64().unwrap();
    assert!(steps > 0);
    assert!(text(&o).contains("retraining shard 1 of 2 without client-1: clients [3]"));
    assert_eq!(entries(&dir), before + 3);

    // Shard 1's last client: its slice goes back to the initial model.
    let o = unlearn(&dir, "client-3", "shards", &[]);
    assert!(o.status.success(), "{}", text(&o));
    let w: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (w["verified"].as_bool(), w["client_steps"].as_u64()),
        (Some(true), Some(0))
    );
    assert!(
        text(&o).contains("shard 1 has no client left"),
        "{}",
        text(&o)
    );

    // The run goes on from the unlearned model, without either.
    let linear = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/clean-linear.toml");
    let o = cohort(&[
        "run",
        p(&linear),
        "--out",
        p(&dir),
        "--resume",
        "--set",
        "clients=4",
        "--set",
        "coordinator.clients_per_round=4",
        "--set",
        "unlearning.shards=2",
        "--set",
        "coordinator.rounds=3",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = cohort(&["provenance", p(&dir)]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("executed by shards"), "{}", text(&o));

    // An unsharded run refuses the method, by name, with nothing recorded.
    let plain = tmp.path().join("plain");
    linear_run(&plain, &[]);
    let before = entries(&plain);
    let o = unlearn(&plain, "client-1", "shards", &[]);
    assert!(!o.status.success());
    assert!(text(&o).contains("trained without shards"), "{}", text(&o));
    assert_eq!(entries(&plain), before);
}
