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

/// Runs `cohort sim ARGS` with `--json` and `--plot` (an SVG, or a PNG when `png`), checks the
/// chart and returns the report.
fn run_json_plot(args: &[&str], png: bool) -> serde_json::Value {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("r.json");
    let plot = tmp.path().join(if png { "r.png" } else { "r.svg" });
    let dir = data();
    let mut all = vec!["sim"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--data", &dir, "--json", p(&json), "--plot", p(&plot)]);
    let o = cohort(&all);
    assert!(o.status.success(), "{}", text(&o));
    let chart = std::fs::read(&plot).unwrap();
    if png {
        assert_eq!(&chart[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
        assert!(chart.len() > 10_000, "an empty PNG: {} bytes", chart.len());
    } else {
        let svg = String::from_utf8(chart).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("Balance, % of start"),
            "{svg}"
        );
    }
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for k in KEYS {
        assert!(v.get(k).is_some(), "report lacks {k}");
    }
    v
}

fn run_json(args: &[&str]) -> serde_json::Value {
    run_json_plot(args, false)
}

#[test]
fn points_reports_points_and_no_bankruptcy() {
    let v = run_json_plot(
        &[
            "points",
            "--num-words",
            "100",
            "--train-size",
            "200",
            "--seed",
            "2",
            "--model",
            "ncc",
        ],
        true,
    );
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

/// Every numeric flag of every `cohort sim` command, with a value it accepts.
const NUMERIC: [(&str, &[&str]); 5] = [
    (
        "drt",
        &[
            "--good",
            "--bad",
            "--careless",
            "--careless-rate",
            "--colluders",
            "--ring-targets",
            "--spammers",
            "--start-balance",
            "--refund-wait",
            "--claim-wait",
            "--init-portion",
            "--init-samples",
            "--eval-interval",
            "--series-interval",
            "--num-words",
            "--train-size",
            "--cost-weight",
            "--seed",
        ],
    ),
    (
        "points",
        &[
            "--good",
            "--start-balance",
            "--num-words",
            "--train-size",
            "--seed",
        ],
    ),
    (
        "market",
        &[
            "--rounds",
            "--market-test-size",
            "--pieces",
            "--bounty",
            "--cost-weight",
        ],
    ),
    (
        "sweep",
        &[
            "--num-words",
            "--train-size",
            "--cost-weight",
            "--seeds",
            "--threads",
            "--good",
        ],
    ),
    ("baseline", &["--num-words", "--train-size", "--seeds"]),
];

/// Flags whose range starts at 0 (a count of agents, a probability, a wait, a weight).
const ZERO_OK: [&str; 10] = [
    "--good",
    "--bad",
    "--careless",
    "--careless-rate",
    "--colluders",
    "--spammers",
    "--refund-wait",
    "--claim-wait",
    "--cost-weight",
    "--seed",
];

#[test]
fn every_numeric_flag_is_range_checked_at_parse_time() {
    // A data directory that does not exist: a value that got past parsing would fail on it
    // instead, with another message.
    let nowhere = "/nonexistent/imdb";
    let mut tried = 0;
    for (cmd, flags) in NUMERIC {
        for flag in flags {
            let mut bad = vec![
                "-1",
                "nan",
                "inf",
                "-inf",
                "1e400",
                "x",
                "",
                "99999999999999999999999",
            ];
            if !ZERO_OK.contains(flag) {
                bad.push("0");
            }
            if *flag == "--seed" {
                // Any u64 is a seed: only what is not one is refused.
                bad = vec!["-1", "nan", "x", "", "99999999999999999999999"];
            }
            for v in bad {
                let arg = format!("{flag}={v}");
                let o = cohort(&["sim", cmd, &arg, "--data", nowhere]);
                let out = text(&o);
                assert_eq!(o.status.code(), Some(2), "sim {cmd} {arg}: {out}");
                let shown = format!("'{v}'");
                assert!(
                    out.contains(&format!("invalid value {shown} for '{flag}")),
                    "sim {cmd} {arg}: {out}"
                );
                tried += 1;
            }
        }
    }
    assert!(tried > 250, "{tried}");
    // The messages name the range.
    let o = cohort(&["sim", "drt", "--careless-rate", "1.5", "--data", nowhere]);
    assert!(
        text(&o).contains("must be a finite number in [0, 1]"),
        "{}",
        text(&o)
    );
    let o = cohort(&["sim", "sweep", "--num-words", "100,2", "--data", nowhere]);
    assert!(text(&o).contains("[3, 65536]"), "{}", text(&o));
}

#[test]
fn output_paths_are_checked_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let nowhere = "/nonexistent/imdb";
    let missing = tmp.path().join("no/such/dir");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "drt".into(),
                "--plot".into(),
                format!("{}/x.svg", missing.display()),
            ],
            "--plot",
        ),
        (
            vec![
                "drt".into(),
                "--plot".into(),
                p(&tmp.path().join("x.jpg")).into(),
            ],
            ".svg or .png",
        ),
        (
            vec![
                "points".into(),
                "--json".into(),
                format!("{}/r.json", missing.display()),
            ],
            "--json",
        ),
        (
            vec!["market".into(), "--plot".into(), p(tmp.path()).into()],
            ".svg or .png",
        ),
        (
            vec![
                "sweep".into(),
                "--csv".into(),
                format!("{}/s.csv", missing.display()),
            ],
            "--csv",
        ),
        (
            vec![
                "sweep".into(),
                "--plot".into(),
                p(&tmp.path().join("s.pdf")).into(),
            ],
            ".svg or .png",
        ),
        (
            vec!["sweep".into(), "--json".into(), p(tmp.path()).into()],
            "is a directory",
        ),
        (
            vec![
                "baseline".into(),
                "--json".into(),
                format!("{}/b.json", missing.display()),
            ],
            "--json",
        ),
    ];
    for (args, needle) in cases {
        let mut all = vec!["sim"];
        all.extend(args.iter().map(String::as_str));
        all.extend(["--data", nowhere]);
        let o = cohort(&all);
        let out = text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {out}");
        // Refused for the output, not for the missing data: nothing was loaded or run.
        assert!(out.contains(needle), "{args:?}: {out}");
        assert!(
            !out.contains(nowhere),
            "{args:?} read the data first: {out}"
        );
    }
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "a probe left a file"
    );
}

#[test]
fn an_agents_file_with_amounts_too_large_for_the_accounts_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let agents = tmp.path().join("agents.json");
    for (field, value, needle) in [
        (
            "start_balance",
            "18446744073709551615",
            "start balance must be between 1 and 10^12",
        ),
        (
            "start_balance",
            "0",
            "start balance must be between 1 and 10^12",
        ),
        ("deposit_mean", "1e30", "deposits must stay below 10^12"),
        ("wait_mean", "1e300", "waits must stay below 100 years"),
    ] {
        let spec = r#"[{"name":"g","kind":"good","start_balance":10000,"deposit_mean":50.0,"deposit_std":10.0,"wait_mean":600.0,"wait_std":60.0,"mistake_rate":0.0001,"flip_labels":false,"always_submit":false}]"#;
        let mut v: serde_json::Value = serde_json::from_str(spec).unwrap();
        v[0][field] = serde_json::from_str(value).unwrap();
        std::fs::write(&agents, v.to_string()).unwrap();
        let o = cohort(&[
            "sim",
            "drt",
            "--data",
            &data(),
            "--num-words",
            "100",
            "--train-size",
            "100",
            "--engine",
            "native",
            "--agents",
            p(&agents),
        ]);
        assert_eq!(o.status.code(), Some(2), "{field}={value}: {}", text(&o));
        assert!(text(&o).contains(needle), "{field}={value}: {}", text(&o));
    }
}
