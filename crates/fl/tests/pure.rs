//! cohort-fl is the pure domain: it must build without candle, cohort-model and the ledger
//! (issue 12), so that a coordinator or a party can hold the domain types without an ML
//! library or a ledger. This test reads the crate's normal dependency graph from `cargo tree`
//! and fails, naming the crate, if one of them comes back (directly or through another
//! dependency).

use std::process::Command;

/// Crates cohort-fl may not depend on, at any depth.
const FORBIDDEN: [&str; 5] = [
    "candle-core",
    "candle-nn",
    "cohort-model",
    "cohort-ledger",
    "cohort-tasks",
];

#[test]
fn cohort_fl_depends_on_no_ml_library_and_no_ledger() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = Command::new(cargo)
        .args([
            "tree",
            "--offline",
            "--locked",
            "-p",
            "cohort-fl",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "cargo tree failed: {stderr}");
    let tree = String::from_utf8_lossy(&out.stdout);
    let names: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        names.contains(&"cohort-fl"),
        "unexpected cargo tree output:\n{tree}"
    );
    for bad in FORBIDDEN {
        assert!(
            !names.contains(&bad),
            "cohort-fl depends on {bad} (issue 12: the pure domain builds without it):\n{tree}"
        );
    }
}
