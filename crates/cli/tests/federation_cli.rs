//! A federation of separate processes on one machine: `cohort coordinator`, three `cohort
//! client`s and two `cohort validator`s over loopback gRPC, each party with its own key file.
//! It records what the in-process run of the same config records (verdicts, scores, test
//! metrics, holdings, every global model); a party that disappears costs a deadline, not a
//! hang; a party the coordinator did not admit is refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{outcome, wait};

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
    keys_for(dir, 3, 2)
}

/// Key files for `clients` clients and `validators` validators, and the admission list.
fn keys_for(dir: &Path, clients: u32, validators: u32) -> PathBuf {
    let mut admit = String::new();
    for (role, n) in [("client", clients), ("validator", validators)] {
        for i in 0..n {
            let f = dir.join(format!("{role}-{i}.key"));
            let o = common::cohort(&["keys", "new", "--out", common::p(&f), "--json"]);
            assert!(o.status.success(), "{}", common::text(&o));
            let v: Value = serde_json::from_slice(&o.stdout).unwrap();
            // With the chain address where this build can derive one (`--features evm-rpc`):
            // the embedded ledger ignores it, a coordinator on a chain needs it.
            match v["chain_address"].as_str() {
                Some(a) => admit.push_str(&format!(
                    "{role} {} {a}\n",
                    v["public_key"].as_str().unwrap()
                )),
                None => admit.push_str(&format!("{role} {}\n", v["public_key"].as_str().unwrap())),
            }
        }
    }
    let path = dir.join("admit.txt");
    std::fs::write(&path, admit).unwrap();
    path
}

fn spawn(args: &[String], log: &Path) -> Child {
    spawn_env(args, log, &[])
}

/// `cohort ARGS` with `env` added to the environment, its stderr to `log`.
fn spawn_env(args: &[String], log: &Path, env: &[(String, String)]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_cohort"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

fn party(dir: &Path, role: &str, i: u32, url: &str, extra: &[&str]) -> Child {
    let args = party_args(dir, role, i, url, extra);
    spawn(&args, &dir.join(format!("{role}-{i}.log")))
}

/// The arguments of `cohort ROLE` for party `i` of the federation in `dir`.
fn party_args(dir: &Path, role: &str, i: u32, url: &str, extra: &[&str]) -> Vec<String> {
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
    args
}

struct Federation {
    dir: tempfile::TempDir,
    coordinator: Child,
    url: String,
}

fn start(extra: &[&str], enrol_secs: u64) -> Federation {
    start_with(extra, enrol_secs, 2, &[])
}

/// A coordinator for 3 clients and 2 validators, with `more` arguments and `env` added to its
/// environment.
fn start_env(
    extra: &[&str],
    enrol_secs: u64,
    more: &[&str],
    env: &[(String, String)],
) -> Federation {
    start_full(extra, enrol_secs, 2, more, env)
}

/// A coordinator for 3 clients and `validators` validators, with `more` arguments.
fn start_with(extra: &[&str], enrol_secs: u64, validators: u32, more: &[&str]) -> Federation {
    start_full(extra, enrol_secs, validators, more, &[])
}

fn start_full(
    extra: &[&str],
    enrol_secs: u64,
    validators: u32,
    more: &[&str],
    env: &[(String, String)],
) -> Federation {
    let dir = tempfile::tempdir().unwrap();
    let admit = keys_for(dir.path(), 3, validators);
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
    args.extend(
        more.iter()
            .map(|s| s.replace("{dir}", common::p(dir.path()))),
    );
    let coordinator = spawn_env(&args, &dir.path().join("coordinator.log"), env);
    Federation {
        dir,
        coordinator,
        url,
    }
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

    let local = in_process(d);

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

    // Forgetting client-0 of the federation: its request and the verdict are signed by the
    // parties' own key files (`--keys`); without them, or with a key the ledger does not know
    // in its role, refused by name before anything is written.
    let run = d.join("run");
    let unlearn = |extra: &[&str]| {
        let mut a = vec!["unlearn", common::p(&run), "--client", "client-0", "--json"];
        a.extend(extra);
        common::cohort(&a)
    };
    let entries = || {
        let o = common::cohort(&["ledger", "verify", common::p(&run.join("ledger")), "--json"]);
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        v["report"]["entries"].as_u64().unwrap()
    };
    let before = entries();
    let o = unlearn(&[]);
    assert!(!o.status.success());
    assert!(
        common::text(&o).contains("--keys DIR"),
        "{}",
        common::text(&o)
    );
    let wrong = d.join("wrong-keys");
    std::fs::create_dir(&wrong).unwrap();
    for (from, to) in [("client-0", "client-0"), ("client-1", "validator-0")] {
        std::fs::copy(
            d.join(format!("{from}.key")),
            wrong.join(format!("{to}.key")),
        )
        .unwrap();
    }
    let o = unlearn(&["--keys", common::p(&wrong)]);
    assert!(!o.status.success());
    assert!(
        common::text(&o).contains("validator-0 would sign as")
            && common::text(&o).contains("not registered as a validator"),
        "{}",
        common::text(&o)
    );
    assert_eq!(entries(), before, "something was recorded");
    let o = unlearn(&["--keys", common::p(d)]);
    assert!(o.status.success(), "{}", common::text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["verified"], true, "{v}");
    assert_eq!(entries(), before + 3);
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
            // The first three in rounds still to run, so that they land however fast the
            // machine is; then anywhere, the end of the run included.
            let last = if kills < 3 { ROUNDS - 1 } else { ROUNDS };
            let target = rng.random_range(settled().min(last)..=last);
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

/// The coordinator's `--json` output once it has finished, successfully.
/// The same experiment as the federations here (`sets(&[])`), in one process into `d/local`:
/// what `cohort run --json` prints.
fn in_process(d: &Path) -> Value {
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
    serde_json::from_slice(&o.stdout).unwrap()
}

fn finished(coordinator: Child, d: &Path) -> Value {
    let out = wait(
        coordinator,
        120,
        "the coordinator",
        &d.join("coordinator.log"),
    );
    let log = std::fs::read_to_string(d.join("coordinator.log")).unwrap();
    assert!(out.status.success(), "{log}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The run's ledger in `d` verifies and every one of `parties` ends successfully.
fn verified_and_parties_done(d: &Path, parties: impl IntoIterator<Item = Child>) {
    let o = common::cohort(&["ledger", "verify", common::p(&d.join("run/ledger"))]);
    assert!(o.status.success(), "{}", common::text(&o));
    for p in parties {
        let o = wait(p, 30, "a party", &d.join("coordinator.log"));
        assert!(o.status.success(), "{}", common::text(&o));
    }
}

/// Sends `signal` (`STOP`, `CONT`, `KILL`) to `child`.
fn signal(child: &Child, signal: &str) {
    let o = Command::new("kill")
        .args([format!("-{signal}"), child.id().to_string()])
        .output()
        .unwrap();
    assert!(o.status.success(), "kill -{signal}: {}", common::text(&o));
}

/// Waits until `file` holds a line with every one of `needles`, at most `secs`.
fn wait_for_line(file: &Path, needles: &[&str], secs: u64, what: &str) {
    let until = Instant::now() + Duration::from_secs(secs);
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if text.lines().any(|l| needles.iter().all(|n| l.contains(n))) {
            return;
        }
        assert!(
            Instant::now() < until,
            "{what}: no line with {needles:?} in {}:\n{text}",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// How many lines of `file` hold `needle`.
fn lines_with(file: &Path, needle: &str) -> usize {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

fn base_units(v: &Value) -> u128 {
    v.as_str().map_or(0, |s| s.parse().unwrap())
}

#[test]
fn a_client_killed_while_training_costs_its_round_a_deadline_and_the_others_are_paid() {
    // A clean run (every client honest); client 1 is frozen as round 2 opens, with the
    // round's training request on its way, and killed: it never answers.
    let extra = ["attack.fraction=0", "coordinator.train_timeout=3"];
    let f = start_with(&extra, 60, 2, &["--events", "{dir}/events.jsonl"]);
    let d = f.dir.path();
    let mut clients: Vec<Child> = (0..3)
        .map(|i| party(d, "client", i, &f.url, &extra))
        .collect();
    let validators: Vec<Child> = (0..2)
        .map(|i| party(d, "validator", i, &f.url, &extra))
        .collect();
    let events = d.join("events.jsonl");
    wait_for_line(
        &events,
        &["\"round-opened\"", "\"round\":2"],
        120,
        "round 2",
    );
    signal(&clients[1], "STOP");
    std::thread::sleep(Duration::from_millis(300));
    signal(&clients[1], "KILL");
    let killed_at = Instant::now();
    clients.remove(1).wait().unwrap();
    let net = finished(f.coordinator, d);
    let rounds = net["summary"]["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 3);
    // Round 1 had all three; after the kill client 1 is missing (its training deadline
    // passed, at least once), and the run did not wait longer than the deadlines.
    assert_eq!(rounds[0]["submitted"], serde_json::json!([0, 1, 2]));
    assert_eq!(
        rounds[2]["submitted"],
        serde_json::json!([0, 2]),
        "{}",
        rounds[2]
    );
    assert!(killed_at.elapsed() < Duration::from_secs(60));
    // The others are accepted and paid every round, nobody is slashed.
    for r in rounds {
        for c in ["client-0", "client-2"] {
            let k: u32 = c[7..].parse().unwrap();
            assert!(
                r["accepted"]
                    .as_array()
                    .unwrap()
                    .contains(&serde_json::json!(k)),
                "{r}"
            );
            assert!(base_units(&r["payouts"][c]["reward"]) > 0, "{c}: {r}");
        }
        for (name, p) in r["payouts"].as_object().unwrap() {
            assert_eq!(base_units(&p["slash"]), 0, "{name} slashed: {r}");
        }
    }
    verified_and_parties_done(d, clients.into_iter().chain(validators));
}

#[test]
fn a_validator_killed_before_revealing_is_slashed_and_consensus_comes_from_the_rest() {
    // Three validators. As round 2 opens validator 0 is frozen, so the commitment phase stays
    // open; once validator 2 has sent its commitment it is killed, and validator 0 thawed:
    // validator 2 committed and never reveals.
    let extra = [
        "validators=3",
        "coordinator.commit_timeout=3",
        "coordinator.reveal_timeout=3",
    ];
    let f = start_with(&extra, 60, 3, &["--events", "{dir}/events.jsonl"]);
    let d = f.dir.path();
    let clients: Vec<Child> = (0..3)
        .map(|i| party(d, "client", i, &f.url, &extra))
        .collect();
    let mut validators: Vec<Child> = (0..3)
        .map(|i| party(d, "validator", i, &f.url, &extra))
        .collect();
    let events = d.join("events.jsonl");
    let victim_log = d.join("validator-2.log");
    wait_for_line(
        &events,
        &["\"round-opened\"", "\"round\":2"],
        120,
        "round 2",
    );
    signal(&validators[0], "STOP");
    let until = Instant::now() + Duration::from_secs(30);
    while lines_with(&victim_log, "commitment sent") < 2 {
        assert!(
            Instant::now() < until,
            "validator 2 never committed in round 2"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    // The commitment is on its way: let it arrive, then kill the validator.
    std::thread::sleep(Duration::from_millis(200));
    signal(&validators[2], "KILL");
    validators.remove(2).wait().unwrap();
    signal(&validators[0], "CONT");
    assert_eq!(
        lines_with(&victim_log, "reveal sent"),
        1,
        "only round 1's reveal"
    );

    let net = finished(f.coordinator, d);
    let rounds = net["summary"]["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 3);
    // Round 2: validator 2 is slashed for not revealing; the others are not.
    let r2 = &rounds[1];
    assert!(
        base_units(&r2["payouts"]["validator-2"]["slash"]) > 0,
        "{r2}"
    );
    for v in ["validator-0", "validator-1"] {
        assert_eq!(base_units(&r2["payouts"][v]["slash"]), 0, "{v}: {r2}");
    }
    // Consensus comes from the two that revealed: the attacker is still caught, the honest
    // clients accepted, in every round.
    for r in rounds {
        assert_eq!(r["rejected"], serde_json::json!([2]), "{r}");
        assert_eq!(r["accepted"], serde_json::json!([0, 1]), "{r}");
    }
    verified_and_parties_done(d, clients.into_iter().chain(validators));
}

#[test]
fn an_auditor_reads_and_checks_a_running_coordinators_ledger_over_the_network() {
    // A running federation: its coordinator serves what it has made durable (nothing until
    // the parties' enrolment is, then each settled round). 200 rounds, so that it is still
    // running when the auditor comes (a round of this task takes a few milliseconds).
    let long = ["coordinator.rounds=200"];
    let f = start(&long, 60);
    let d = f.dir.path();
    let parties: Vec<Child> = (0..3)
        .map(|i| party(d, "client", i, &f.url, &long))
        .chain((0..2).map(|i| party(d, "validator", i, &f.url, &long)))
        .collect();
    let until = Instant::now() + Duration::from_secs(60);
    let verify = [
        "ledger",
        "verify",
        "--remote",
        &f.url,
        "--insecure",
        "--json",
    ];
    let report = loop {
        let o = common::cohort(&verify);
        if o.status.success() {
            let v = serde_json::from_slice::<Value>(&o.stdout).unwrap();
            if v["report"]["entries"].as_u64() > Some(0) {
                break v;
            }
        }
        assert!(
            Instant::now() < until,
            "no remote verify in 60 s: {}\n{}",
            common::text(&o),
            std::fs::read_to_string(d.join("coordinator.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(report["ok"], true, "{report}");
    let entries = report["report"]["entries"].as_u64().unwrap();
    assert!(entries >= 2, "the deployment and the set-up: {report}");
    let o = common::cohort(&[
        "ledger",
        "show",
        "--entries",
        "0",
        "--remote",
        &f.url,
        "--insecure",
        "--json",
    ]);
    assert!(o.status.success(), "{}", common::text(&o));
    let shown: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(shown["verified"], true);
    assert!(shown["size"].as_u64().unwrap() >= entries);
    assert!(
        shown["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["call"] == "extendRoster"),
        "the roster is on the ledger: {shown}"
    );

    // Bad ways to ask: refused before any work, naming what is wrong.
    let closed = format!("http://127.0.0.1:{}", cohort_testkit::free_port());
    for (args, want, code) in [
        (
            vec!["ledger", "verify", "--remote", "ftp://127.0.0.1:1"],
            "scheme",
            2,
        ),
        (
            vec!["ledger", "verify", "--remote", "http://127.0.0.1:1"],
            "--insecure",
            2,
        ),
        (
            vec!["ledger", "verify", "--remote", "https://127.0.0.1"],
            "port",
            2,
        ),
        (
            vec!["ledger", "verify", "--remote", &closed, "--insecure"],
            "127.0.0.1",
            2,
        ),
        (
            vec!["ledger", "verify", "x", "--remote", &f.url],
            "cannot be used",
            2,
        ),
        (vec!["ledger", "verify", "x", "--insecure"], "--remote", 2),
    ] {
        let o = common::cohort(&args);
        assert_eq!(
            o.status.code(),
            Some(code),
            "{args:?}: {}",
            common::text(&o)
        );
        assert!(
            common::text(&o).contains(want),
            "{args:?}: {}",
            common::text(&o)
        );
    }
    // The run ends as usual; the ledger it leaves extends what the auditor read.
    let net = finished(f.coordinator, d);
    assert!(net["summary"]["ledger_entries"].as_u64().unwrap() >= entries);
    verified_and_parties_done(d, parties);
}

#[test]
fn with_a_shared_s3_store_blobs_bypass_the_coordinator_and_the_run_is_the_same() {
    // A real S3 server (s3s-fs on loopback): the coordinator and every party give the same
    // --blobs; models and updates go through the bucket, only their hashes through the
    // coordinator, and the outcome is the in-process run's.
    let s3 = cohort_testkit::s3::S3Server::start();
    let bucket = format!("s3://{}/federation", cohort_testkit::s3::BUCKET);
    let env = s3.env_with("AWS_SECRET_ACCESS_KEY", cohort_testkit::s3::SECRET_KEY);
    let f = start_env(&[], 60, &["--blobs", &bucket], &env);
    let d = f.dir.path();
    let parties: Vec<Child> = (0..3)
        .map(|i| ("client", i))
        .chain((0..2).map(|i| ("validator", i)))
        .map(|(role, i)| {
            let mut args = party_args(d, role, i, &f.url, &[]);
            args.extend(["--blobs".to_owned(), bucket.clone()]);
            spawn_env(&args, &d.join(format!("{role}-{i}.log")), &env)
        })
        .collect();
    let net = finished(f.coordinator, d);
    verified_and_parties_done(d, parties);
    let log = std::fs::read_to_string(d.join("coordinator.log")).unwrap();
    assert!(
        log.contains("blobs: 0 sent and 0 received through the coordinator"),
        "{log}"
    );
    assert!(
        !log.contains(" 0 replies' blobs read from the shared store"),
        "{log}"
    );
    assert!(s3.objects().len() >= 4, "{:?}", s3.objects());

    let local = in_process(d);
    assert_eq!(outcome(&net["summary"]), outcome(&local["summary"]));
    assert_eq!(
        net["summary"]["final_holdings"],
        local["summary"]["final_holdings"]
    );
}

#[test]
fn a_party_whose_blob_store_is_not_the_coordinators_is_told_or_falls_back() {
    let s3 = cohort_testkit::s3::S3Server::start();
    let env = s3.env_with("AWS_SECRET_ACCESS_KEY", cohort_testkit::s3::SECRET_KEY);
    let bucket = |prefix: &str| format!("s3://{}/{prefix}", cohort_testkit::s3::BUCKET);
    // The coordinator shares one prefix; client 0 gives another: it stops, naming both.
    let f = start_env(&[], 20, &["--blobs", &bucket("one")], &env);
    let d = f.dir.path();
    let mut args = party_args(d, "client", 0, &f.url, &[]);
    args.extend(["--blobs".to_owned(), bucket("two")]);
    let wrong = spawn_env(&args, &d.join("client-0.log"), &env);
    let o = wait(
        wrong,
        60,
        "the misconfigured party",
        &d.join("client-0.log"),
    );
    assert!(!o.status.success());
    let log = std::fs::read_to_string(d.join("client-0.log")).unwrap();
    assert!(
        log.contains(&bucket("two")) && log.contains(&bucket("one")),
        "{log}"
    );
    let mut c = f.coordinator;
    let _ = c.kill();
    let _ = c.wait();

    // A coordinator that shares nothing: a party with --blobs sends its blobs through it, and
    // the run completes.
    let f = start_env(&[], 60, &[], &env);
    let d = f.dir.path();
    let parties: Vec<Child> = (0..3)
        .map(|i| ("client", i))
        .chain((0..2).map(|i| ("validator", i)))
        .map(|(role, i)| {
            let mut args = party_args(d, role, i, &f.url, &[]);
            args.extend(["--blobs".to_owned(), bucket("unshared")]);
            spawn_env(&args, &d.join(format!("{role}-{i}.log")), &env)
        })
        .collect();
    let net = finished(f.coordinator, d);
    verified_and_parties_done(d, parties);
    assert_eq!(net["summary"]["rounds"].as_array().unwrap().len(), 3);
    let log = std::fs::read_to_string(d.join("client-0.log")).unwrap();
    assert!(log.contains("shares no blob store"), "{log}");
}

/// A coordinator on an EVM chain (anvil) and five party processes: each party signs its own
/// chain transactions, the coordinator relays them, and the run records what the in-process
/// embedded run records. The coordinator keeps no ledger of its own, and says so to an auditor
/// who asks it for one.
#[cfg(feature = "evm-rpc")]
#[test]
fn a_federation_of_processes_on_a_chain_records_what_one_process_records() {
    use std::collections::BTreeSet;
    let Some(anvil) = cohort_testkit::Anvil::start("a_federation_of_processes_on_a_chain") else {
        return;
    };
    // An admission list without the parties' chain addresses is refused before anything is
    // written, naming who lacks one.
    {
        let dir = tempfile::tempdir().unwrap();
        let admit = keys_for(dir.path(), 3, 2);
        let text = std::fs::read_to_string(&admit).unwrap();
        let short: String = text
            .lines()
            .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" ") + "\n")
            .collect();
        std::fs::write(&admit, short).unwrap();
        let out = dir.path().join("run");
        let config = config();
        let mut args = vec![
            "coordinator",
            common::p(&config),
            "--out",
            common::p(&out),
            "--listen",
            "127.0.0.1:0",
            "--admit",
            common::p(&admit),
            "--insecure",
            "--chain-rpc",
            anvil.url(),
            "--funder-key",
            cohort_testkit::FUNDER_KEY,
        ];
        let sets = sets(&[]);
        args.extend(sets.iter().map(String::as_str));
        let o = common::cohort(&args);
        assert!(!o.status.success());
        let err = common::text(&o);
        assert!(
            err.contains("missing for client-0, client-1, client-2, validator-0, validator-1"),
            "{err}"
        );
        assert!(!out.exists());
    }
    // A party whose own node (`--chain-rpc`) is of another ledger than the one the
    // coordinator records on stops when it learns which, naming both, before it signs anything.
    {
        let mut f = start(&[], 60);
        let mut args = party_args(f.dir.path(), "client", 0, &f.url, &[]);
        args.extend(["--chain-rpc".to_owned(), anvil.url().to_owned()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = common::cohort(&args);
        f.coordinator.kill().unwrap();
        let _ = f.coordinator.wait();
        assert!(!o.status.success());
        let err = common::text(&o);
        assert!(
            err.contains(
                "is a node of the EVM chain with id 31337, and the coordinator records the run \
                 on its own embedded ledger"
            ),
            "{err}"
        );
    }
    let f = start_with(
        &[],
        60,
        2,
        &[
            "--chain-rpc",
            anvil.url(),
            "--funder-key",
            cohort_testkit::FUNDER_KEY,
        ],
    );
    let d = f.dir.path();
    // Clients 0 and 1 and validator 0 put their own transactions on the chain through a node
    // of their own (`--chain-rpc`); the others leave them to the coordinator's relay.
    let own = |role: &str, i: u32| {
        let mut args = party_args(d, role, i, &f.url, &[]);
        args.extend(["--chain-rpc".to_owned(), anvil.url().to_owned()]);
        spawn(&args, &d.join(format!("{role}-{i}.log")))
    };
    let parties: Vec<Child> = vec![
        own("client", 0),
        own("client", 1),
        party(d, "client", 2, &f.url, &[]),
        own("validator", 0),
        party(d, "validator", 1, &f.url, &[]),
    ];
    // An auditor asking the coordinator for its ledger is sent to the chain.
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let o = common::cohort(&["ledger", "verify", "--remote", &f.url, "--insecure"]);
        assert!(!o.status.success(), "{}", common::text(&o));
        if common::text(&o).contains("EVM chain with id 31337") {
            break;
        }
        assert!(
            Instant::now() < until,
            "no answer naming the chain in 60 s: {}",
            common::text(&o)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let net = finished(f.coordinator, d);
    for (i, p) in parties.into_iter().enumerate() {
        let o = common::wait(p, 30, "a party", &d.join("coordinator.log"));
        assert!(o.status.success(), "party {i}: {}", common::text(&o));
    }
    assert!(!d.join("run/ledger").exists());
    // Those with a node of their own submitted every transaction they signed through it:
    // enrolment (3 for a client, 2 for a validator), then one per round's update, commitment
    // and reveal (3 rounds, every client sampled).
    for (log, want) in [("client-0", 6), ("client-1", 6), ("validator-0", 8)] {
        let text = std::fs::read_to_string(d.join(format!("{log}.log"))).unwrap();
        assert_eq!(
            text.matches("its transaction is on the chain").count(),
            want,
            "{log}: {text}"
        );
    }
    let text = std::fs::read_to_string(d.join("client-2.log")).unwrap();
    assert!(!text.contains("on the chain"), "{text}");
    // The secret its accounts' keys derive from is kept, as summary.json says, for its owner
    // only.
    let key = std::fs::metadata(d.join("run/keys/run.key")).expect("DIR/keys/run.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(key.permissions().mode() & 0o777, 0o600);
    }

    let local = in_process(d);
    assert_eq!(outcome(&net["summary"]), outcome(&local["summary"]));
    assert_eq!(
        net["summary"]["final_holdings"],
        local["summary"]["final_holdings"]
    );

    // Every transaction is on the chain, and the parties' own come from their own accounts:
    // the coordinator relays, it does not sign for them.
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("run/summary.json")).unwrap())
            .unwrap();
    let txs = summary["chain"]["transactions"].as_array().unwrap();
    assert_eq!(
        txs.len() as u64,
        summary["summary"]["ledger_entries"].as_u64().unwrap()
    );
    let mut senders = BTreeSet::new();
    for t in txs {
        let tx = anvil
            .result(
                "eth_getTransactionByHash",
                serde_json::json!([t["tx_hash"]]),
            )
            .unwrap();
        senders.insert(tx["from"].as_str().unwrap().to_lowercase());
    }
    // The coordinator, its governance account and the five parties.
    assert!(senders.len() >= 6, "{senders:?}");
}
