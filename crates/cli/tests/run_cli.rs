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
