//! A federation of separate processes on one machine: `cohort coordinator`, three `cohort
//! client`s and two `cohort validator`s over loopback gRPC, each party with its own key file.
//! It records what the in-process run of the same config records (verdicts, scores, test
//! metrics, holdings, every global model); a party that disappears costs a deadline, not a
//! hang; a party the coordinator did not admit is refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const SETS: [&str; 5] = [
    "clients=3",
    "validators=2",
    "coordinator.rounds=3",
    "coordinator.clients_per_round=3",
    "attack.fraction=0.34",
];

fn config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/attack-linear.toml")
}

fn sets(extra: &[&str]) -> Vec<String> {
    SETS.iter()
        .chain(extra)
        .flat_map(|s| ["--set".to_owned(), (*s).to_owned()])
        .collect()
}

/// Key files for 3 clients and 2 validators in `dir`, and the admission list naming them.
fn keys(dir: &Path) -> PathBuf {
    let mut admit = String::new();
    for (role, n) in [("client", 3), ("validator", 2)] {
        for i in 0..n {
            let f = dir.join(format!("{role}-{i}.key"));
            let o = common::cohort(&["keys", "new", "--out", common::p(&f), "--json"]);
            assert!(o.status.success(), "{}", common::text(&o));
            let v: Value = serde_json::from_slice(&o.stdout).unwrap();
            admit.push_str(&format!("{role} {}\n", v["public_key"].as_str().unwrap()));
        }
    }
    let path = dir.join("admit.txt");
    std::fs::write(&path, admit).unwrap();
    path
}

fn spawn(args: &[String], log: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_cohort"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

fn party(dir: &Path, role: &str, i: u32, url: &str, extra: &[&str]) -> Child {
    let mut args: Vec<String> = [
        role,
        "--coordinator",
        url,
        "--insecure",
        "--key",
        common::p(&dir.join(format!("{role}-{i}.key"))),
        "--config",
        common::p(&config()),
        "--index",
        &i.to_string(),
        "--give-up",
        "20",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    args.extend(sets(extra));
    spawn(&args, &dir.join(format!("{role}-{i}.log")))
}

/// Waits for `child` at most `secs`, killing it after that.
fn wait(mut child: Child, secs: u64, what: &str, log: &Path) -> std::process::Output {
    let until = Instant::now() + Duration::from_secs(secs);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > until {
            let _ = child.kill();
            panic!(
                "{what} still running after {secs} s: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

struct Federation {
    dir: tempfile::TempDir,
    coordinator: Child,
    url: String,
}

fn start(extra: &[&str], enrol_secs: u64) -> Federation {
    let dir = tempfile::tempdir().unwrap();
    let admit = keys(dir.path());
    let port = cohort_testkit::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut args: Vec<String> = [
        "coordinator",
        common::p(&config()),
        "--out",
        common::p(&dir.path().join("run")),
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--admit",
        common::p(&admit),
        "--insecure",
        "--json",
        "--enrol-timeout",
        &enrol_secs.to_string(),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    args.extend(sets(extra));
    let coordinator = spawn(&args, &dir.path().join("coordinator.log"));
    Federation {
        dir,
        coordinator,
        url,
    }
}

/// What must be the same whoever carries the messages: per round the verdicts, consensus,
/// test metrics, holdings and the global model after it.
fn outcome(summary: &Value) -> Vec<Value> {
    summary["rounds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            serde_json::json!({
                "accepted": r["accepted"],
                "rejected": r["rejected"],
                "consensus": r["consensus"],
                "test": r["test"],
                "holdings": r["holdings"],
                "models": r["provenance"].as_array().unwrap().iter().map(|p| p["global_after"].clone()).collect::<Vec<_>>(),
            })
        })
        .collect()
}

#[test]
fn five_processes_record_what_one_process_records() {
    let f = start(&[], 60);
    let d = f.dir.path();
    let parties: Vec<Child> = (0..3)
        .map(|i| party(d, "client", i, &f.url, &[]))
        .chain((0..2).map(|i| party(d, "validator", i, &f.url, &[])))
        .collect();
    let out = wait(
        f.coordinator,
        120,
        "the coordinator",
        &d.join("coordinator.log"),
    );
    let log = std::fs::read_to_string(d.join("coordinator.log")).unwrap();
    assert!(out.status.success(), "{log}");
    for (i, p) in parties.into_iter().enumerate() {
        let o = wait(p, 30, "a party", &d.join("coordinator.log"));
        assert!(o.status.success(), "party {i}: {}", common::text(&o));
    }
    let net: Value = serde_json::from_slice(&out.stdout).unwrap();

    let local_dir = d.join("local");
    let mut args = vec![
        "run".to_owned(),
        common::p(&config()).to_owned(),
        "--out".to_owned(),
        common::p(&local_dir).to_owned(),
        "--json".to_owned(),
    ];
    args.extend(sets(&[]));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = common::cohort(&args);
    assert!(o.status.success(), "{}", common::text(&o));
    let local: Value = serde_json::from_slice(&o.stdout).unwrap();

    let (a, b) = (outcome(&net["summary"]), outcome(&local["summary"]));
    assert_eq!(a.len(), 3);
    assert!(
        a.iter()
            .any(|r| !r["rejected"].as_array().unwrap().is_empty()),
        "the attacker is caught: {a:?}"
    );
    assert_eq!(a, b);
    assert_eq!(
        net["summary"]["final_holdings"],
        local["summary"]["final_holdings"]
    );
    // Its ledger verifies, and every party signed its own enrolment.
    let o = common::cohort(&["ledger", "verify", common::p(&d.join("run/ledger"))]);
    assert!(o.status.success(), "{}", common::text(&o));
    assert!(log.contains("session open"), "{log}");
}

#[test]
fn a_party_that_vanishes_costs_a_deadline_and_a_stranger_is_refused() {
    // Client 2 never comes; client 1 runs with a key the coordinator did not admit. The run
    // goes on without them after the enrolment deadline (3 s) and, each round, the training
    // deadline (2 s).
    let extra = ["coordinator.train_timeout=2"];
    let f = start(&extra, 3);
    let d = f.dir.path();
    let stranger = d.join("stranger.key");
    let o = common::cohort(&["keys", "new", "--out", common::p(&stranger)]);
    assert!(o.status.success());
    std::fs::copy(&stranger, d.join("client-1.key")).unwrap();
    let started = Instant::now();
    let mut parties = vec![party(d, "client", 0, &f.url, &extra)];
    let refused = party(d, "client", 1, &f.url, &extra);
    parties.extend((0..2).map(|i| party(d, "validator", i, &f.url, &extra)));
    let o = wait(refused, 30, "the stranger", &d.join("client-1.log"));
    assert!(!o.status.success());
    let why = std::fs::read_to_string(d.join("client-1.log")).unwrap();
    assert!(
        why.contains("refused") && why.contains("not the key admitted as client-1"),
        "{why}"
    );
    let out = wait(
        f.coordinator,
        120,
        "the coordinator",
        &d.join("coordinator.log"),
    );
    let log = std::fs::read_to_string(d.join("coordinator.log")).unwrap();
    assert!(out.status.success(), "{log}");
    assert!(log.contains("not the key admitted as client-1"), "{log}");
    // The enrolment deadline and three training deadlines, not a hang.
    assert!(started.elapsed() < Duration::from_secs(60));
    let net: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rounds = net["summary"]["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 3);
    for r in rounds {
        assert_eq!(r["submitted"], serde_json::json!([0]), "{r}");
    }
    for p in parties {
        let o = wait(p, 30, "a party", &d.join("coordinator.log"));
        assert!(o.status.success(), "{}", common::text(&o));
    }
}

#[test]
fn a_coordinator_killed_at_random_points_resumes_and_its_parties_reconnect() {
    use rand::Rng;
    let seed: u64 = std::env::var("COHORT_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::random::<u64>() % 1_000_000);
    let mut rng = cohort_core::ChaCha8::new(seed);
    const ROUNDS: usize = 8;
    let extra = ["coordinator.rounds=8"];
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // The in-process run of the same config: what the federation must end with.
    let mut args = vec![
        "run".to_owned(),
        common::p(&config()).to_owned(),
        "--out".to_owned(),
        common::p(&d.join("local")).to_owned(),
        "--json".to_owned(),
    ];
    args.extend(sets(&extra));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let t = Instant::now();
    let o = common::cohort(&args);
    let full = t.elapsed();
    assert!(o.status.success(), "{}", common::text(&o));
    let local: Value = serde_json::from_slice(&o.stdout).unwrap();

    let admit = keys(d);
    let port = cohort_testkit::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let out = d.join("run");
    let parties: Vec<Child> = (0..3)
        .map(|i| party(d, "client", i, &url, &extra))
        .chain((0..2).map(|i| party(d, "validator", i, &url, &extra)))
        .collect();
    let (mut kills, mut attempts) = (0, 0);
    let mut killed_after = Vec::new();
    let output = loop {
        attempts += 1;
        let mut args: Vec<String> = [
            "coordinator",
            common::p(&config()),
            "--out",
            common::p(&out),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admit",
            common::p(&admit),
            "--insecure",
            "--json",
            "--enrol-timeout",
            "60",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.extend(sets(&extra));
        // Killed before it wrote DIR/run.json, it starts again; after, it resumes.
        if out.join("run.json").exists() {
            args.push("--resume".into());
        }
        let log = d.join(format!("coordinator-{attempts}.log"));
        let mut child = spawn(&args, &log);
        // Six kills at random points of a run (its set-up, each round and its phases, after
        // the last round, after the end), then to the end: once `target` rounds are settled
        // (0: the set-up is under way), after a further random delay.
        let settled = || {
            std::fs::read_to_string(out.join("state/rounds.jsonl")).map_or(0, |s| s.lines().count())
        };
        let wait = if kills < 6 {
            let target = rng.random_range(settled()..=ROUNDS);
            let delay = full.mul_f64(rng.random_range(0.0..1.0) / ROUNDS as f64);
            Some((target, delay))
        } else {
            None
        };
        let t = Instant::now();
        let mut reached: Option<Instant> = None;
        let mut done = false;
        loop {
            if let Some((target, delay)) = wait {
                if reached.is_none() && settled() >= target {
                    reached = Some(Instant::now());
                }
                if reached.is_some_and(|r| r.elapsed() >= delay) {
                    break;
                }
            }
            if child.try_wait().unwrap().is_some() {
                done = true;
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "kill seed {seed}: attempt {attempts} hangs: {}\nclient-0: {}",
                std::fs::read_to_string(&log).unwrap_or_default(),
                std::fs::read_to_string(d.join("client-0.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        if done {
            let o = child.wait_with_output().unwrap();
            assert!(
                o.status.success(),
                "kill seed {seed}: attempt {attempts}: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            break o;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        killed_after.push(settled());
    };
    assert!(kills >= 3, "kill seed {seed}: only {kills} kills landed");
    let mut net: Value = serde_json::from_slice(&output.stdout).unwrap();
    if net["finished"] == true {
        // Killed after its summary was written: the last start only told the parties.
        net = serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap())
            .unwrap();
    }
    assert_eq!(
        outcome(&net["summary"]),
        outcome(&local["summary"]),
        "kill seed {seed}: killed after rounds {killed_after:?}"
    );
    assert_eq!(
        net["summary"]["final_holdings"],
        local["summary"]["final_holdings"]
    );
    let o = common::cohort(&["ledger", "verify", common::p(&out.join("ledger"))]);
    assert!(o.status.success(), "{}", common::text(&o));
    // The parties reconnected by themselves and were told the run is over.
    for p in parties {
        let o = wait(p, 30, "a party", &d.join("client-0.log"));
        assert!(o.status.success(), "kill seed {seed}: {}", common::text(&o));
    }
    eprintln!(
        "kill seed {seed}: {kills} kills of the coordinator (after rounds {killed_after:?}), \
         {attempts} starts"
    );
}
