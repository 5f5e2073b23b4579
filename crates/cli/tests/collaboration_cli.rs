//! `[report] collaboration_gain` in `cohort run`: each client's own held-out slice scored for
//! the base model, the client trained alone with the run's compute, and the federated model;
//! refused where it cannot be measured.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::{cohort, p, text};
use serde_json::Value;

/// [`common::run_small_lm`].
fn run(out: &Path, extra: &[&str]) -> Result<Value, String> {
    common::run_small_lm(out, extra)
}

/// Every client measured, the same figures in summary.json and on stdout, the same again in
/// a second run; with one client and one round, the federated model is that client's
/// update alone, so training alone gives its loss (the same batches, the same slice).
#[test]
fn each_client_is_scored_on_its_own_slice_for_the_base_alone_and_federated() {
    let tmp = tempfile::tempdir().unwrap();
    let on = "report.collaboration_gain=true";
    let a = run(&tmp.path().join("a"), &[on]).unwrap();
    let c = &a["collaboration"];
    let clients = c["clients"].as_array().unwrap();
    assert_eq!(clients.len(), 3, "{c}");
    for g in clients {
        for k in ["base_loss", "alone_loss", "federated_loss"] {
            let x = g[k].as_f64().unwrap();
            assert!(x.is_finite() && x > 0.0, "{k}: {g}");
        }
        let (b, p) = (
            g["base_loss"].as_f64().unwrap(),
            g["base_perplexity"].as_f64().unwrap(),
        );
        assert!((b.exp() - p).abs() < 1e-9 * p);
    }
    let share = c["federated_beats_alone"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&share));
    let written: Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("a/summary.json")).unwrap()).unwrap();
    assert_eq!(written["collaboration"]["clients"], c["clients"]);
    assert_eq!(written["config"]["report"]["collaboration_gain"], true);
    let again = run(&tmp.path().join("b"), &[on]).unwrap();
    assert_eq!(again["collaboration"]["clients"], c["clients"]);
    // The clients trained on 90% of their text: the run differs from one without the slice.
    let off = run(&tmp.path().join("off"), &[]).unwrap();
    assert!(off.get("collaboration").is_none() || off["collaboration"].is_null());
    assert_ne!(
        off["summary"]["rounds"][0]["test"],
        a["summary"]["rounds"][0]["test"]
    );
    // Two of three, drawn by the seed.
    let two = run(
        &tmp.path().join("two"),
        &[on, "report.collaboration_clients=2"],
    )
    .unwrap();
    assert_eq!(two["collaboration"]["clients"].as_array().unwrap().len(), 2);
    // One client, one round: the federated model is its update applied to the base.
    let one = run(
        &tmp.path().join("one"),
        &[
            on,
            "clients=1",
            "coordinator.clients_per_round=1",
            "coordinator.rounds=1",
        ],
    )
    .unwrap();
    let g = &one["collaboration"]["clients"][0];
    let (alone, fed) = (
        g["alone_loss"].as_f64().unwrap(),
        g["federated_loss"].as_f64().unwrap(),
    );
    assert!(
        (alone - fed).abs() <= 1e-6 * fed,
        "alone {alone}, federated {fed}"
    );
    assert!(alone < g["base_loss"].as_f64().unwrap(), "{g}");
}

/// `incentives.score = "share"`: validators score an update as `n` times what its `1/n` share
/// of the round's mean brings. With one update that is the whole update's score, bit for
/// bit; with three, other scores; the run's signal-to-noise is reported every round.
#[test]
fn validators_can_score_an_updates_share_of_the_mean() {
    let tmp = tempfile::tempdir().unwrap();
    let share = "incentives.score=\"share\"";
    let one = [
        "clients=1",
        "coordinator.clients_per_round=1",
        "coordinator.rounds=1",
    ];
    let scores = |v: &Value| v["summary"]["rounds"][0]["scores"].clone();
    let full1 = run(&tmp.path().join("full1"), &one).unwrap();
    let mut with = one.to_vec();
    with.push(share);
    let share1 = run(&tmp.path().join("share1"), &with).unwrap();
    assert_eq!(scores(&full1), scores(&share1));
    let full3 = run(&tmp.path().join("full3"), &[]).unwrap();
    let share3 = run(
        &tmp.path().join("share3"),
        &[share, "report.collaboration_gain=true"],
    )
    .unwrap();
    assert_ne!(scores(&full3), scores(&share3));
    let signal = share3["collaboration"]["scores"].as_array().unwrap();
    assert_eq!(signal.len(), 2);
    for r in signal {
        for k in ["honest_mean", "validator_spread", "snr"] {
            assert!(r[k].as_f64().unwrap().is_finite(), "{k}: {r}");
        }
    }
    let e = run(&tmp.path().join("bogus"), &["incentives.score=\"bogus\""]).unwrap_err();
    assert!(e.contains("score") && e.contains("bogus"), "{e}");
}

/// Bad settings are refused by name before anything is written.
#[test]
fn bad_report_settings_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    for (i, (set, what)) in [
        ("report.local_fraction=0", "report.local_fraction"),
        ("report.local_fraction=0.6", "report.local_fraction"),
        ("report.local_fraction=nan", "report.local_fraction"),
        ("report.local_fraction=-0.1", "report.local_fraction"),
        (
            "report.collaboration_clients=0",
            "report.collaboration_clients",
        ),
        (
            "report.collaboration_clients=99999",
            "report.collaboration_clients",
        ),
        ("report.nonsense=1", "nonsense"),
    ]
    .iter()
    .enumerate()
    {
        let out = tmp.path().join(format!("bad-{i}"));
        let e = run(&out, &["report.collaboration_gain=true", set]).unwrap_err();
        assert!(e.contains(what), "{set}: {e}");
        assert!(!out.exists(), "{set}: something was written");
    }
    // Only the lm task has a client's own held-out text.
    let linear = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/clean-linear.toml");
    {
        let out = tmp.path().join("linear");
        let o = cohort(&[
            "run",
            p(&linear),
            "--set",
            "report.collaboration_gain=true",
            "--out",
            p(&out),
        ]);
        assert!(!o.status.success());
        assert!(
            text(&o).contains("report.collaboration_gain"),
            "{}",
            text(&o)
        );
        assert!(!out.exists());
    }
    // A slice too small for one window is refused naming the role.
    let out = tmp.path().join("small");
    let e = run(
        &out,
        &[
            "report.collaboration_gain=true",
            "report.local_fraction=0.001",
        ],
    )
    .unwrap_err();
    assert!(
        e.contains("report.local_fraction") && e.contains("role"),
        "{e}"
    );
}
