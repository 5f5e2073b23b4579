//! `[pipeline]` in `cohort run`: federated clients train through stage servers (started in
//! the run's process on loopback, or `cohort serve-layers` processes) and the run is the run
//! without them, round for round; verifiers and compressed streams ride along; bad sections
//! are refused by name before anything is written.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use common::{Server, cohort, p, serve, text, tiny_llama};
use serde_json::Value;

fn config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/lm-shakespeare.toml")
}

/// [`common::run_small_lm`].
fn run(out: &Path, extra: &[&str]) -> Result<Value, String> {
    common::run_small_lm(out, extra)
}

/// What a round decided: its test metrics, every validator's scores, the consensus.
fn decided(summary: &Value) -> Vec<Value> {
    summary["summary"]["rounds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            serde_json::json!({
                "test": r["test"],
                "scores": r["scores"],
                "consensus": r["consensus"],
                "accepted": r["accepted"],
            })
        })
        .collect()
}

/// Clients training through two stage servers started in the run's process give the run
/// without them, round for round (uncompressed: bit for bit); with verifiers at a rate of
/// one half and int5-3 streams the run completes and still learns.
#[test]
fn in_process_stage_servers_give_the_run_without_them() {
    let tmp = tempfile::tempdir().unwrap();
    let alone = run(&tmp.path().join("alone"), &[]).unwrap();
    let staged = run(&tmp.path().join("staged"), &["pipeline.stages=2"]).unwrap();
    assert_eq!(decided(&alone), decided(&staged));
    let checked = run(
        &tmp.path().join("checked"),
        &[
            "pipeline.stages=2",
            "pipeline.verify_rate=0.5",
            "pipeline.compress=\"int5-3\"",
        ],
    )
    .unwrap();
    let loss = |s: &Value, r: usize| s["summary"]["rounds"][r]["test"]["loss"].as_f64().unwrap();
    assert_ne!(
        decided(&alone),
        decided(&checked),
        "compression changes nothing?"
    );
    // Within a percent of the uncompressed run, and learning.
    assert!((loss(&checked, 1) - loss(&alone, 1)).abs() < 0.01 * loss(&alone, 1));
    assert!(loss(&checked, 1) < loss(&checked, 0) + 1e-3);
}

/// Clients training through three in-process stage servers holding a Llama-family base
/// (`task.base`, Qwen2's shape) give the run without them, round for round (uncompressed);
/// with int8 streams, or activations in the base's stream bases, within a percent.
#[test]
fn stage_servers_of_a_llama_family_base_give_the_run_without_them() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_llama(tmp.path(), "qwen");
    let base = format!("task.base={:?}", p(&model));
    let targets = "task.lora_targets=[\"all-linear\"]";
    let alone = run(&tmp.path().join("alone"), &[&base, targets]).unwrap();
    let staged = run(
        &tmp.path().join("staged"),
        &[&base, targets, "pipeline.stages=3"],
    )
    .unwrap();
    assert_eq!(decided(&alone), decided(&staged));
    // The streams do travel through the servers: rounded to int8 on the way, the run differs,
    // within a percent.
    let int8 = run(
        &tmp.path().join("int8"),
        &[
            &base,
            targets,
            "pipeline.stages=3",
            "pipeline.compress=\"int8\"",
        ],
    )
    .unwrap();
    assert_ne!(decided(&alone), decided(&int8));
    let loss = |s: &Value, r: usize| s["summary"]["rounds"][r]["test"]["loss"].as_f64().unwrap();
    assert!((loss(&int8, 1) - loss(&alone, 1)).abs() < 0.01 * loss(&alone, 1));
    // Activations in the base's stream bases (`cohort model calibrate`), which the servers
    // started here load: the run differs, within a percent.
    let corpus = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/data/tinyshakespeare/input.txt"
    );
    let o = cohort(&[
        "model",
        "calibrate",
        p(&model),
        "--data",
        corpus,
        "--batches",
        "2",
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let k = run(
        &tmp.path().join("k"),
        &[
            &base,
            targets,
            "pipeline.stages=3",
            "pipeline.compress=\"q63/15sckr\"",
        ],
    )
    .unwrap();
    assert_ne!(decided(&alone), decided(&k));
    assert!((loss(&k, 1) - loss(&alone, 1)).abs() < 0.01 * loss(&alone, 1));
}

/// Clients of a run on a base model of its own (`task.base`) train through `cohort
/// serve-layers` processes holding its layers, checked by two verifier processes, with
/// adapter dropout (the keys travel): the run without them, round for round. A server that
/// is not listening stops the run's set-up by name.
#[test]
fn stage_server_processes_with_verifiers_give_the_run_without_them() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("base");
    let corpus = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/data/tinyshakespeare/input.txt"
    );
    let o = cohort(&[
        "model",
        "pretrain",
        "--corpus",
        corpus,
        "--preset",
        "test",
        "--out",
        p(&model),
        "--steps",
        "10",
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let base = format!("task.base={:?}", p(&model));
    let dropout = "task.lora_dropout=0.1";
    let alone = run(&tmp.path().join("alone"), &[&base, dropout]).unwrap();
    let servers = [serve(&model, "0..1"), serve(&model, "1..2")];
    let verifiers = [serve(&model, "0..1"), serve(&model, "1..2")];
    let list = |s: &[Server]| {
        format!(
            "[{}]",
            s.iter()
                .map(|s| format!("{:?}", s.url))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let staged = run(
        &tmp.path().join("staged"),
        &[
            &base,
            dropout,
            &format!("pipeline.servers={}", list(&servers)),
            &format!("pipeline.verifiers={}", list(&verifiers)),
            "pipeline.verify_rate=0.5",
            "pipeline.insecure=true",
        ],
    )
    .unwrap();
    assert_eq!(decided(&alone), decided(&staged));
    // A server that is not there: refused at set-up, naming it.
    let gone = format!(
        "pipeline.servers=[{:?}, \"http://127.0.0.1:9\"]",
        servers[0].url
    );
    let e = run(
        &tmp.path().join("gone"),
        &[&base, &gone, "pipeline.insecure=true", "pipeline.timeout=5"],
    )
    .unwrap_err();
    assert!(e.contains("127.0.0.1:9"), "{e}");
}

/// Bad `[pipeline]` sections are refused by name before anything is written.
#[test]
fn bad_pipeline_sections_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    for (set, names) in [
        ("pipeline.stages=0", "pipeline.stages"),
        ("pipeline.stages=65", "pipeline.stages"),
        ("pipeline.stages=-1", "pipeline.stages"),
        ("pipeline.verify_rate=nan", "pipeline.verify_rate"),
        ("pipeline.verify_rate=1.5", "pipeline.verify_rate"),
        ("pipeline.compress=\"int2\"", "pipeline.compress"),
        ("pipeline.timeout=0", "pipeline.timeout"),
        ("pipeline.servers=[\"ftp://x:1\"]", "pipeline.stages"),
        (
            "pipeline.verifiers=[\"http://127.0.0.1:1\"]",
            "pipeline.verifiers",
        ),
        ("pipeline.bogus=1", "pipeline.bogus"),
    ] {
        let out = tmp.path().join("out");
        let extra = ["pipeline.stages=2", set];
        let e = run(&out, &extra).unwrap_err();
        assert!(e.contains(names), "{set}: {e}");
        assert!(!out.exists(), "{set}: wrote {}", out.display());
    }
    // Stages beyond the base model's layers: refused at set-up (the base is known then).
    let out = tmp.path().join("deep");
    let e = run(&out, &["pipeline.stages=3"]).unwrap_err();
    assert!(
        e.contains("pipeline.stages 3: the base model has 2 layers"),
        "{e}"
    );
    assert!(!out.exists(), "wrote {}", out.display());
    // Not the lm task.
    let o = cohort(&[
        "run",
        p(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/clean-linear.toml")),
        "--set",
        "pipeline.stages=2",
        "--out",
        p(&tmp.path().join("linear")),
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("only the lm task"), "{}", text(&o));
}

/// A networked federation whose config has `[pipeline]`: a coordinator, three `cohort client`
/// processes (each starting its own two stage servers on loopback and training through them)
/// and two validators, over gRPC. Every round's test loss is the in-process run's without
/// `[pipeline]`, round for round.
#[test]
fn client_processes_of_a_federation_train_through_their_stage_servers() {
    use std::process::{Child, Command, Stdio};
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let alone = run(&d.join("alone"), &[]).unwrap();
    // Key files and the admission list.
    let mut admit = String::new();
    for (role, n) in [("client", 3), ("validator", 2)] {
        for i in 0..n {
            let f = d.join(format!("{role}-{i}.key"));
            let o = cohort(&["keys", "new", "--out", p(&f), "--json"]);
            assert!(o.status.success(), "{}", text(&o));
            let v: Value = serde_json::from_slice(&o.stdout).unwrap();
            admit.push_str(&format!("{role} {}\n", v["public_key"].as_str().unwrap()));
        }
    }
    std::fs::write(d.join("admit.txt"), admit).unwrap();
    let sets: Vec<String> = common::SMALL_LM
        .iter()
        .chain(&["pipeline.stages=2"])
        .flat_map(|s| ["--set".to_owned(), (*s).to_owned()])
        .collect();
    let spawn = |args: Vec<String>, log: &str| -> Child {
        Command::new(env!("CARGO_BIN_EXE_cohort"))
            .args(args.iter().chain(&sets))
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(d.join(log)).unwrap())
            .spawn()
            .unwrap()
    };
    let port = cohort_testkit::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let own = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let coordinator = spawn(
        own(&[
            "coordinator",
            p(&config()),
            "--out",
            p(&d.join("run")),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admit",
            p(&d.join("admit.txt")),
            "--insecure",
            "--json",
            "--enrol-timeout",
            "300",
        ]),
        "coordinator.log",
    );
    let mut parties = Vec::new();
    for (role, i) in [
        ("client", 0),
        ("client", 1),
        ("client", 2),
        ("validator", 0),
        ("validator", 1),
    ] {
        let key = d.join(format!("{role}-{i}.key"));
        parties.push(spawn(
            own(&[
                role,
                "--coordinator",
                &url,
                "--insecure",
                "--key",
                p(&key),
                "--config",
                p(&config()),
                "--index",
                &i.to_string(),
                "--give-up",
                "60",
            ]),
            &format!("{role}-{i}.log"),
        ));
    }
    let log = d.join("coordinator.log");
    let out = common::wait(coordinator, 600, "the coordinator", &log);
    assert!(
        out.status.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    for party in parties {
        let o = common::wait(party, 60, "a party", &log);
        assert!(o.status.success(), "{}", text(&o));
    }
    let c0 = std::fs::read_to_string(d.join("client-0.log")).unwrap();
    assert!(c0.contains("clients train through 2 stage servers"), "{c0}");
    let v0 = std::fs::read_to_string(d.join("validator-0.log")).unwrap();
    assert!(
        !v0.contains("stage servers"),
        "a validator started servers: {v0}"
    );
    let net: Value = serde_json::from_slice(&out.stdout).unwrap();
    let test = |s: &Value| -> Vec<Value> {
        s["summary"]["rounds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["test"].clone())
            .collect()
    };
    assert_eq!(test(&alone), test(&net));
}
