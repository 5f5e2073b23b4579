//! Partitions of the project's real data sets (../shared/data).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use cohort_fl::partition::shakespeare_roles;

fn shared(rel: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data")
        .join(rel);
    assert!(
        p.exists(),
        "{} is missing: the data sets live in ../shared/data beside the checkout",
        p.display()
    );
    p
}

#[test]
fn tiny_shakespeare_splits_into_many_roles() {
    let text = std::fs::read_to_string(shared("tinyshakespeare/input.txt")).unwrap();
    let roles = shakespeare_roles(&text, 100);
    let lines: usize = roles.iter().map(|r| r.lines).sum();
    eprintln!(
        "{} roles with >= 100 lines, {lines} lines; top: {} ({})",
        roles.len(),
        roles[0].role,
        roles[0].lines
    );
    assert!(roles.len() >= 30, "{} roles", roles.len());
    let all = shakespeare_roles(&text, 1);
    let total: usize = all.iter().map(|r| r.lines).sum();
    // Every non-blank line that is not a speaker line is someone's speech.
    let speech = text.lines().filter(|l| !l.trim().is_empty()).count() - text.split("\n\n").count();
    assert!(total.abs_diff(speech) <= 1, "{total} vs {speech}");
}
