//! `cohort run` as a user runs it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::cohort;

fn example(name: &str) -> String {
    format!("{}/../../examples/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn an_example_run_writes_a_summary_and_a_verifiable_ledger() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let o = cohort(&[
        "run",
        &example("attack-linear.toml"),
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let rounds = s["summary"]["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 6);
    let first = rounds[0]["test"]["loss"].as_f64().unwrap();
    let last = rounds[5]["test"]["loss"].as_f64().unwrap();
    assert!(last < first / 10.0, "{first} -> {last}");
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(
        html.contains("var uPlot=") && html.contains("Score matrices"),
        "report.html lacks its charts"
    );
    let v = cohort(&["ledger", "verify", out.join("ledger").to_str().unwrap()]);
    assert!(v.status.success());
    // Running again into the same place is refused.
    let o = cohort(&[
        "run",
        &example("attack-linear.toml"),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("already holds a run"));
}

#[test]
fn bad_configs_name_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("bad.toml");
    std::fs::write(&cfg, "seed = 1\nclients = 4\nvalidators = 2\nrounds = 3\n").unwrap();
    let o = cohort(&[
        "run",
        cfg.to_str().unwrap(),
        "--out",
        tmp.path().join("o").to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success());
    assert!(err.contains("rounds"), "{err}");
    std::fs::write(&cfg, "seed = 1\nclients = 4\nvalidators = 0\n").unwrap();
    let o = cohort(&[
        "run",
        cfg.to_str().unwrap(),
        "--out",
        tmp.path().join("o").to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("validators"));
}

#[test]
fn the_imdb_example_rejects_label_flippers_and_reports_accuracy() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("imdb");
    let o = cohort(&[
        "run",
        &example("imdb-attack.toml"),
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let rounds = s["summary"]["rounds"].as_array().unwrap();
    let last = &rounds[rounds.len() - 1]["test"];
    assert!(last["accuracy"].as_f64().unwrap() > 0.7, "{last}");
    // Clients 14-19 flip labels: none of them is ever accepted.
    for r in rounds {
        for k in r["accepted"].as_array().unwrap() {
            assert!(k.as_u64().unwrap() < 14, "attacker accepted: {r}");
        }
    }
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(
        html.contains("test accuracy per round"),
        "no accuracy chart"
    );
    let v = cohort(&["ledger", "verify", out.join("ledger").to_str().unwrap()]);
    assert!(v.status.success());
}

#[test]
fn a_data_attack_on_the_language_model_task_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("bad.toml");
    std::fs::write(
        &cfg,
        "seed = 1\nclients = 4\nvalidators = 2\n[task]\nkind = \"lm\"\n\
         [attack]\nfraction = 0.25\nattack = { kind = \"label-flip\" }\n",
    )
    .unwrap();
    let o = cohort(&[
        "run",
        cfg.to_str().unwrap(),
        "--out",
        tmp.path().join("o").to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success());
    assert!(
        err.contains("attack.attack") && err.contains("label-flip"),
        "{err}"
    );
}

#[test]
fn set_overrides_config_values_and_names_bad_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("clean");
    // The attack example made clean and short from the command line.
    let o = cohort(&[
        "run",
        &example("attack-linear.toml"),
        "--out",
        out.to_str().unwrap(),
        "--json",
        "--set",
        "attack.fraction=0",
        "--set",
        "coordinator.rounds=2",
        "--set",
        "aggregation.strategy={kind=\"trimmed-mean\", k=1}",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(s["summary"]["rounds"].as_array().unwrap().len(), 2);
    assert_eq!(
        s["config"]["aggregation"]["strategy"]["kind"],
        "trimmed-mean"
    );
    for r in s["summary"]["rounds"].as_array().unwrap() {
        assert!(r["rejected"].as_array().unwrap().is_empty(), "{r}");
    }
    for (set, needle) in [
        ("attack.fraktion=1", "fraktion"),
        ("attack.fraction.x=1", "attack.fraction is a float"),
        ("seed", "KEY=VALUE"),
        ("attack.fraction=2", "attack.fraction"),
    ] {
        let o = cohort(&[
            "run",
            &example("attack-linear.toml"),
            "--out",
            tmp.path().join("bad").to_str().unwrap(),
            "--set",
            set,
        ]);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(!o.status.success(), "{set}");
        assert!(err.contains(needle), "--set {set}: {err}");
    }
}

// ---------------------------------------------------------------------------------------
// Issue 11: nonsense refused before any work, nothing half-written, runs that resume, keys
// kept apart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{p, text};
use serde_json::Value;

/// attack-linear.toml shrunk: 6 clients, all sampled (the attackers, clients 4 and 5, every
/// round), 3 rounds.
const SHRINK: [&str; 3] = [
    "clients=6",
    "coordinator.clients_per_round=6",
    "coordinator.rounds=3",
];

/// `cohort run attack-linear.toml --out out` shrunk, with `extra` arguments.
fn run_args(out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "run".into(),
        example("attack-linear.toml"),
        "--out".into(),
        p(out).into(),
        "--json".into(),
    ];
    for s in SHRINK {
        args.extend(["--set".into(), s.into()]);
    }
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args
}

fn cohort_s(args: &[String]) -> Output {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    cohort(&a)
}

fn summary(out: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap()
}

/// What must be equal between two runs of one config: every number of the summary but the
/// wall seconds.
fn outcome(s: &Value) -> Value {
    let mut v = s["summary"].clone();
    for r in v["rounds"].as_array_mut().unwrap() {
        r.as_object_mut().unwrap().remove("seconds");
    }
    v
}

#[test]
fn the_values_the_issue_found_are_refused_by_name_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("never");
    for (set, field) in [
        ("task.lr=nan", "task.lr"),
        ("task.lr=inf", "task.lr"),
        ("task.lr=-1", "task.lr"),
        ("task.batch=0", "task.batch"),
        ("task.samples_per_client=0", "task.samples_per_client"),
        ("aggregation.fedadam_lr=nan", "aggregation.fedadam_lr"),
        (
            "incentives.accept_threshold=nan",
            "incentives.accept_threshold",
        ),
        (
            "incentives.accept_threshold=1e300",
            "incentives.accept_threshold",
        ),
        (
            "aggregation.strategy={kind=\"krum\",f=2}",
            "aggregation.strategy.f",
        ),
        (
            "aggregation.strategy={kind=\"trimmed-mean\",k=3}",
            "aggregation.strategy.k",
        ),
        ("task.holdout_samples=0", "task.holdout_samples"),
        ("task.epochs=0", "task.epochs"),
        ("task.dim=0", "task.dim"),
        ("task.test_samples=0", "task.test_samples"),
        ("coordinator.rounds=1000000000", "coordinator.rounds"),
        ("task.bogus=1", "task.bogus"),
        ("attack.attack={kind=\"label-flip\"}", "attack.attack"),
    ] {
        let o = cohort_s(&run_args(&out, &["--set", set]));
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "--set {set}: {}", text(&o));
        assert!(
            err.contains(&format!("invalid {field}")),
            "--set {set} does not name {field}: {err}"
        );
        assert!(!out.exists(), "--set {set} created --out");
    }
}

/// The numeric leaves of a JSON config, as dotted paths, with whether each is an integer.
fn numeric_leaves(v: &Value, prefix: &str, out: &mut Vec<(String, &'static str)>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                numeric_leaves(x, &path, out);
            }
        }
        Value::Number(n) if n.is_f64() => out.push((prefix.to_owned(), "float")),
        Value::Number(_) => out.push((prefix.to_owned(), "int")),
        Value::Array(a) if a.first().is_some_and(Value::is_number) => {
            out.push((prefix.to_owned(), "ints"));
        }
        _ => {}
    }
}

#[test]
fn every_numeric_field_refuses_zero_negative_nan_infinite_and_huge_values_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("never");
    let linear = example("attack-linear.toml");
    let strategy = |s: &str| format!("aggregation.strategy={s}");
    // Configs that between them hold every field: each strategy, each attack, each task.
    let bases: Vec<(String, Vec<String>)> = vec![
        (linear.clone(), vec![]),
        (
            linear.clone(),
            vec![strategy("{kind=\"trimmed-mean\",k=1}")],
        ),
        (
            linear.clone(),
            vec![
                strategy("{kind=\"krum\",f=1,m=2}"),
                "aggregation.clip_norm=5.0".into(),
                "aggregation.fedadam_lr=0.1".into(),
                "attack.sybil_stake=200".into(),
            ],
        ),
        (
            linear.clone(),
            vec!["attack.attack={kind=\"random-noise\",std=1.0}".into()],
        ),
        (
            linear.clone(),
            vec!["attack.attack={kind=\"scaled-replacement\",factor=2.0}".into()],
        ),
        (
            linear.clone(),
            vec!["attack.attack={kind=\"free-rider\",fake_samples=10}".into()],
        ),
        (
            linear,
            vec![
                "compression.update=\"topk-int8\"".into(),
                "compression.topk_fraction=0.1".into(),
            ],
        ),
        (example("lm-attack.toml"), vec![]),
        (example("imdb-backdoor.toml"), vec![]),
    ];
    // Where 0 (or a negative number) is a meaningful value; everywhere else it is refused.
    let zero_ok = |kind: &str, path: &str| {
        matches!(
            path,
            "seed"
                | "attack.fraction"
                | "attack.colluding_validators"
                | "incentives.reward_per_round"
                | "incentives.accept_threshold"
                | "task.client_drift"
                | "task.noise"
                | "task.prox_mu"
                | "task.pretrain_steps"
                | "task.skip_top"
                | "aggregation.strategy.k"
                | "aggregation.strategy.f"
                | "attack.attack.target"
        ) || (kind == "imdb" && matches!(path, "task.train_samples" | "task.test_samples"))
    };
    let negative_ok = |path: &str| path == "incentives.accept_threshold";
    let mut seen = std::collections::BTreeSet::new();
    let (mut refused, mut accepted) = (0, 0);
    for (config, sets) in &bases {
        let mut args = vec![
            "run".to_owned(),
            config.clone(),
            "--out".into(),
            p(&out).into(),
            "--check".into(),
            "--json".into(),
        ];
        for s in sets {
            args.extend(["--set".into(), s.clone()]);
        }
        let o = cohort_s(&args);
        assert!(o.status.success(), "{args:?}: {}", text(&o));
        let checked: Value = serde_json::from_slice(&o.stdout).unwrap();
        let cfg = &checked["config"];
        let kind = cfg["task"]["kind"].as_str().unwrap().to_owned();
        let mut leaves = Vec::new();
        numeric_leaves(cfg, "", &mut leaves);
        for (path, ty) in leaves {
            if !seen.insert((kind.clone(), path.clone())) {
                continue;
            }
            let values: &[&str] = match ty {
                "float" => &["0.0", "-1.0", "nan", "inf", "-inf", "1e300"],
                "int" => &[
                    "0",
                    "-1",
                    "nan",
                    "inf",
                    "1000000000000000",
                    "18446744073709551615",
                ],
                _ => &["[-1]", "[1000000000000000]", "[]"],
            };
            for value in values {
                // Seeds are any 64-bit number (the largest through --seed only).
                if path == "seed" && !value.starts_with('-') {
                    continue;
                }
                let zero = value.trim_matches(['[', ']']).parse::<f64>() == Ok(0.0);
                let negative = value.starts_with("-1");
                let ok = (zero && zero_ok(&kind, &path))
                    || (negative && ty == "float" && negative_ok(&path));
                let set = format!("{path}={value}");
                let mut a = args.clone();
                a.extend(["--set".into(), set.clone()]);
                if ok {
                    let o = cohort_s(&a);
                    assert!(
                        o.status.success(),
                        "{kind}: --set {set} refused: {}",
                        text(&o)
                    );
                    accepted += 1;
                    continue;
                }
                a.retain(|x| x != "--check");
                let o = cohort_s(&a);
                let err = String::from_utf8_lossy(&o.stderr);
                assert_eq!(
                    o.status.code(),
                    Some(2),
                    "{kind}: --set {set}: {}",
                    text(&o)
                );
                assert!(
                    err.contains(&format!("invalid {path}")),
                    "{kind}: --set {set} does not name {path}: {err}"
                );
                assert!(!out.exists(), "{kind}: --set {set} created --out");
                refused += 1;
            }
        }
    }
    eprintln!(
        "{} fields, {refused} values refused, {accepted} accepted",
        seen.len()
    );
    assert!(seen.len() >= 60, "only {} fields walked", seen.len());
}

#[test]
fn a_bad_reference_or_out_path_is_refused_before_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    let bad = tmp.path().join("bad.json");
    std::fs::write(&bad, "{\"summary\": 3}").unwrap();
    for reference in [p(&bad), "/nonexistent/summary.json"] {
        let o = cohort_s(&run_args(&out, &["--reference", reference]));
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(text(&o).contains("--reference"), "{}", text(&o));
        assert!(!out.exists());
    }
    let file = tmp.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let o = cohort_s(&run_args(&file, &[]));
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("not a directory"), "{}", text(&o));
}

#[test]
fn a_set_up_that_fails_leaves_nothing_behind() {
    // The corpus exists (the config is valid), but it has too few roles for 5000 lines each:
    // the task's set-up fails after DIR was claimed and the ledger created.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("runs/lm");
    let args = [
        "run",
        &example("lm-shakespeare.toml"),
        "--out",
        p(&out),
        "--set",
        "task.min_lines=5000",
    ];
    for _ in 0..2 {
        let o = cohort(&args);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(text(&o).contains("task.min_lines"), "{}", text(&o));
        assert!(
            !tmp.path().join("runs").exists(),
            "a failed set-up left files"
        );
    }
    // In a directory that was there, what was there stays and nothing else.
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("notes.txt"), b"mine").unwrap();
    let o = cohort(&args);
    assert_eq!(o.status.code(), Some(2));
    let left: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["notes.txt"]);
}

#[test]
fn progress_goes_to_stderr_one_line_per_round_and_json_stays_pure() {
    let tmp = tempfile::tempdir().unwrap();
    let o = cohort_s(&run_args(&tmp.path().join("o"), &[]));
    assert!(o.status.success(), "{}", text(&o));
    let printed: Value = serde_json::from_slice(&o.stdout).expect("stdout is one JSON document");
    assert_eq!(printed["summary"]["rounds"].as_array().unwrap().len(), 3);
    let err = String::from_utf8_lossy(&o.stderr);
    for r in 1..=3 {
        let line = err
            .lines()
            .find(|l| l.starts_with(&format!("round {r}/3: test loss ")))
            .unwrap_or_else(|| panic!("no progress line for round {r}: {err}"));
        assert!(
            line.contains("accepted 4, rejected 2") && line.ends_with(" s"),
            "{line}"
        );
    }
}

/// Mode bits of a file.
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn keys_are_kept_apart_from_the_ledger_and_random_keys_cannot_be_derived_from_the_summary() {
    let tmp = tempfile::tempdir().unwrap();
    let seeded = tmp.path().join("seeded");
    let o = cohort_s(&run_args(&seeded, &[]));
    assert!(o.status.success(), "{}", text(&o));
    let a = summary(&seeded);
    // The auditor's directory holds no secret; the keys are beside it, readable by the owner
    // only.
    assert!(!seeded.join("ledger/operator.key").exists());
    assert_eq!(mode(&seeded.join("keys/operator.key")), 0o600);
    assert_eq!(mode(&seeded.join("keys")), 0o700);
    assert!(!seeded.join("keys/run.key").exists());
    let v = cohort(&["ledger", "verify", p(&seeded.join("ledger"))]);
    assert!(v.status.success(), "{}", text(&v));
    // The summary says what seed-derived keys mean, and the operator key is the seed's.
    assert_eq!(a["keys"]["mode"], "seed-derived");
    let note = a["keys"]["note"].as_str().unwrap();
    assert!(
        note.contains("reproducible experiment") && note.contains("not a secured one"),
        "{note}"
    );
    let from_seed = cohort_core::Identity::from_seed(7, "ledger-operator").public_key();
    assert_eq!(a["keys"]["operator_key"], hex::encode(from_seed));
    // Its own origin.
    let origin = a["keys"]["origin"].as_str().unwrap();
    assert!(
        origin.starts_with("cohort.local/run/") && origin.len() > 20,
        "{origin}"
    );
    let other = tmp.path().join("other-seed");
    let o = cohort_s(&run_args(&other, &["--seed", "8"]));
    assert!(o.status.success(), "{}", text(&o));
    assert_ne!(summary(&other)["keys"]["origin"], a["keys"]["origin"]);
    // Same config and seed: same root.
    let again = tmp.path().join("again");
    assert!(cohort_s(&run_args(&again, &[])).status.success());
    assert_eq!(
        summary(&again)["summary"]["ledger_root"],
        a["summary"]["ledger_root"]
    );

    // Random keys: the same model, verdicts and payouts, another root each time, an operator
    // key that is not the seed's, and the secret kept in DIR/keys.
    let r1 = tmp.path().join("random1");
    let r2 = tmp.path().join("random2");
    for d in [&r1, &r2] {
        let o = cohort_s(&run_args(d, &["--random-keys"]));
        assert!(o.status.success(), "{}", text(&o));
        assert_eq!(mode(&d.join("keys/run.key")), 0o600);
        assert!(!d.join("ledger/operator.key").exists());
        let v = cohort(&["ledger", "verify", p(&d.join("ledger"))]);
        assert!(v.status.success(), "{}", text(&v));
    }
    let (b1, b2) = (summary(&r1), summary(&r2));
    assert_eq!(b1["keys"]["mode"], "random");
    assert!(
        b1["keys"]["note"]
            .as_str()
            .unwrap()
            .contains("differs from run to run")
    );
    assert_ne!(b1["summary"]["ledger_root"], b2["summary"]["ledger_root"]);
    assert_ne!(b1["summary"]["ledger_root"], a["summary"]["ledger_root"]);
    assert_ne!(b1["keys"]["operator_key"], a["keys"]["operator_key"]);
    assert_ne!(b1["keys"]["origin"], b2["keys"]["origin"]);
    let (sa, sb) = (&a["summary"], &b1["summary"]);
    for (ra, rb) in sa["rounds"]
        .as_array()
        .unwrap()
        .iter()
        .zip(sb["rounds"].as_array().unwrap())
    {
        for key in [
            "accepted",
            "rejected",
            "consensus",
            "payouts",
            "holdings",
            "test",
        ] {
            assert_eq!(ra[key], rb[key], "round {}: {key}", ra["round"]);
        }
    }
    assert_eq!(sa["final_holdings"], sb["final_holdings"]);
    // --random-keys is a start option: a resumed run keeps the keys it started with.
    let o = cohort_s(&run_args(&r1, &["--resume", "--random-keys"]));
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn resume_says_when_there_is_nothing_to_resume_and_names_a_different_config() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    let o = cohort_s(&run_args(&out, &["--resume"]));
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("holds no run to resume"), "{}", text(&o));
    assert!(!out.exists());
    assert!(cohort_s(&run_args(&out, &[])).status.success());
    // Finished: said, nothing changes.
    let before = std::fs::read(out.join("summary.json")).unwrap();
    let o = cohort_s(&run_args(&out, &["--resume"]));
    assert!(o.status.success(), "{}", text(&o));
    let said: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(said["finished"], true);
    assert_eq!(std::fs::read(out.join("summary.json")).unwrap(), before);
    // Another config: refused, naming what differs.
    let o = cohort_s(&run_args(
        &out,
        &["--resume", "--set", "coordinator.rounds=5", "--seed", "9"],
    ));
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o);
    assert!(
        err.contains("coordinator.rounds: 3 there, 5 here")
            && err.contains("seed: 7 there, 9 here"),
        "{err}"
    );
    // Without --resume: refused.
    let o = cohort_s(&run_args(&out, &[]));
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("already holds a run"), "{}", text(&o));
}

/// Spawns `cohort` quietly.
fn spawn(args: &[String]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_cohort"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cohort starts")
}

#[test]
fn a_second_run_on_the_same_out_is_refused_and_a_killed_one_leaves_no_stale_claim() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    let long = run_args(&out, &["--set", "coordinator.rounds=40"]);
    let mut first = spawn(&long);
    // Wait until it holds DIR and has saved its set-up.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !out.join("state/rounds.jsonl").exists() {
        assert!(Instant::now() < deadline, "the first run did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = cohort_s(&[long.clone(), vec!["--resume".into()]].concat());
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = text(&o);
    assert!(
        err.contains("in use by another `cohort run`") && err.contains(&first.id().to_string()),
        "{err}"
    );
    let o = cohort_s(&long);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("already holds a run"), "{}", text(&o));
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    // No stale claim: --resume takes DIR at once and finishes the run.
    let o = cohort_s(&[long, vec!["--resume".into()]].concat());
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        summary(&out)["summary"]["rounds"].as_array().unwrap().len(),
        40
    );
}

#[test]
fn a_run_killed_at_random_points_resumes_to_the_same_root_and_summary() {
    killed_and_resumed(&["--set", "coordinator.rounds=4"], 24);
}

/// Regression: a compressed run's clients keep their error-feedback residuals in
/// DIR/state/residuals, so a run killed and resumed ends at the uninterrupted run's root (each
/// client's residual is part of what it sends next).
#[test]
fn a_compressed_run_killed_at_random_points_resumes_to_the_same_root() {
    killed_and_resumed(
        &[
            "--set",
            "coordinator.rounds=4",
            "--set",
            "compression.update=\"topk-int8\"",
            "--set",
            "compression.topk_fraction=0.25",
        ],
        8,
    );
}

/// Runs `attack-linear.toml` shrunk with `extra`, then again killed at random points and
/// resumed until `kills_wanted` kills: every run ends at the uninterrupted run's root.
fn killed_and_resumed(extra: &[&str], kills_wanted: usize) {
    use rand::Rng;
    let seed: u64 = std::env::var("COHORT_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::random::<u64>() % 1_000_000);
    let mut rng = cohort_core::ChaCha8::new(seed);
    let tmp = tempfile::tempdir().unwrap();
    // The uninterrupted run, timed to choose the kill points.
    let reference = tmp.path().join("reference");
    let t = Instant::now();
    let o = cohort_s(&run_args(&reference, extra));
    let full = t.elapsed();
    assert!(o.status.success(), "{}", text(&o));
    let want = summary(&reference);
    let (mut kills, mut runs, mut resumes) = (0, 0, 0);
    let mut killed_after: BTreeMap<u64, usize> = BTreeMap::new();
    while kills < kills_wanted {
        runs += 1;
        let out: PathBuf = tmp.path().join(format!("run{runs}"));
        // Every attempt appends its events to one file.
        let events = tmp.path().join(format!("run{runs}.events.jsonl"));
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut args = run_args(&out, extra);
            args.extend(["--events".into(), p(&events).into()]);
            // Killed before it wrote DIR/run.json, a run is started again, not resumed.
            if out.join("run.json").exists() {
                args.push("--resume".into());
            }
            let mut child = spawn(&args);
            let wait = full.mul_f64(rng.random_range(0.0..1.1));
            let t = Instant::now();
            let mut done = None;
            while t.elapsed() < wait {
                if let Some(status) = child.try_wait().unwrap() {
                    done = Some(status);
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            let status = match done {
                Some(s) => s,
                None => {
                    child.kill().unwrap(); // SIGKILL
                    child.wait().unwrap();
                    kills += 1;
                    let settled = std::fs::read_to_string(out.join("state/rounds.jsonl"))
                        .map_or(0, |s| s.lines().count() as u64);
                    *killed_after.entry(settled).or_default() += 1;
                    continue;
                }
            };
            assert!(
                status.success(),
                "kill seed {seed}: run {runs} attempt {attempt} failed ({status})"
            );
            resumes += attempt - 1;
            break;
        }
        let got = summary(&out);
        assert_eq!(
            got["summary"]["ledger_root"], want["summary"]["ledger_root"],
            "kill seed {seed}: run {runs} ended at another root"
        );
        assert_eq!(
            outcome(&got),
            outcome(&want),
            "kill seed {seed}: run {runs} has other numbers"
        );
        let v = cohort(&["ledger", "verify", p(&out.join("ledger"))]);
        assert!(v.status.success(), "kill seed {seed}: {}", text(&v));
        // The events of every attempt, folded, are the summary of the finished run.
        let stream: Vec<cohort_fl::events::RunEvent> = std::fs::read_to_string(&events)
            .unwrap()
            .lines()
            .enumerate()
            .map(|(i, l)| {
                serde_json::from_str(l).unwrap_or_else(|e| {
                    panic!(
                        "kill seed {seed}: run {runs}: events line {}: {e}: {l}",
                        i + 1
                    )
                })
            })
            .collect();
        let folded = cohort_node::summary::summary_from_events(3, &stream)
            .unwrap_or_else(|e| panic!("kill seed {seed}: run {runs}: {e}"));
        let folded = serde_json::json!({ "summary": folded });
        assert_eq!(
            outcome(&folded),
            outcome(&got),
            "kill seed {seed}: run {runs}: the events do not fold to summary.json"
        );
    }
    eprintln!(
        "kill seed {seed}: {kills} kills over {runs} runs ({resumes} resumes; kills by rounds \
         settled: {killed_after:?}), every run at root {}",
        want["summary"]["ledger_root"]
    );
}
