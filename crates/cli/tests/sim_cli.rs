//! `cohort sim points|market|drt|baseline|sweep` as a user runs them, on small slices of IMDB.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{cohort, p, text};

fn data() -> String {
    format!("{}/../../../shared/data/imdb", env!("CARGO_MANIFEST_DIR"))
}

const KEYS: [&str; 14] = [
    "initial_accuracy",
    "final_accuracy",
    "accuracy_gap",
    "min_accuracy",
    "bad_bankrupt_day",
    "good_final_balance_pct",
    "bad_final_balance_pct",
    "simulated_days",
    "accepted",
    "transactions",
    "gas_used",
    "wall_seconds",
    "accuracy_series",
    "balance_series",
];

fn run_json(args: &[&str]) -> serde_json::Value {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("r.json");
    let plot = tmp.path().join("r.svg");
    let dir = data();
    let mut all = vec!["sim"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--data", &dir, "--json", p(&json), "--plot", p(&plot)]);
    let o = cohort(&all);
    assert!(o.status.success(), "{}", text(&o));
    assert!(std::fs::read_to_string(&plot).unwrap().contains("<svg"));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for k in KEYS {
        assert!(v.get(k).is_some(), "report lacks {k}");
    }
    v
}

#[test]
fn points_reports_points_and_no_bankruptcy() {
    let v = run_json(&[
        "points",
        "--num-words",
        "100",
        "--train-size",
        "200",
        "--seed",
        "2",
        "--model",
        "ncc",
    ]);
    assert_eq!(v["mechanism"], "points");
    assert_eq!(v["model"], "ncc");
    assert_eq!(v["balance_unit"], "points");
    assert!(v["bad_bankrupt_day"].is_null());
}

#[test]
fn market_reports_its_rounds() {
    let v = run_json(&[
        "market",
        "--num-words",
        "100",
        "--train-size",
        "150",
        "--cost-weight",
        "2",
        "--model",
        "nb",
        "--rounds",
        "2",
        "--market-test-size",
        "20",
        "--pieces",
        "2",
        "--bounty",
        "500",
    ]);
    assert_eq!(v["mechanism"], "market");
    assert_eq!(v["market"]["rounds"].as_array().unwrap().len(), 2);
    assert_eq!(v["cost_weight"], 2.0);
}

#[test]
fn flags_that_do_not_apply_are_refused_by_name() {
    let o = cohort(&["sim", "points", "--cost-weight", "2", "--data", &data()]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("--cost-weight does not apply to points"),
        "{}",
        text(&o)
    );
    let o = cohort(&["sim", "drt", "--rounds", "2", "--data", &data()]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("--rounds applies to the prediction market only"),
        "{}",
        text(&o)
    );
    let o = cohort(&["sim", "drt", "--model", "svm", "--data", &data()]);
    assert!(!o.status.success());
}

#[test]
fn a_sweep_across_mechanisms_and_models_writes_one_row_each() {
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("s.csv");
    let o = cohort(&[
        "sim",
        "sweep",
        "--data",
        &data(),
        "--mechanisms",
        "drt,points",
        "--models",
        "perceptron,nb",
        "--num-words",
        "100",
        "--train-size",
        "150",
        "--cost-weight",
        "1",
        "--seeds",
        "1",
        "--engine",
        "native",
        "--csv",
        p(&csv),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let csv = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(csv.lines().count(), 1 + 4, "{csv}");
    for m in ["drt,perceptron", "drt,nb", "points,perceptron", "points,nb"] {
        assert!(csv.contains(m), "{csv}");
    }
    let o = cohort(&[
        "sim",
        "baseline",
        "--data",
        &data(),
        "--model",
        "nb",
        "--num-words",
        "100",
        "--seeds",
        "1",
    ]);
    assert!(o.status.success(), "{}", text(&o));
}
