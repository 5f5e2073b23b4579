//! A federation on several hosts: the coordinator in one Linux network namespace, 3 clients
//! and 2 validators in five others, each joined to the coordinator's by a veth pair, over TLS
//! with a certificate for the addresses the parties dial. Client 0's link drops 1% of the
//! packets both ways (nftables) and delays each byte by 50 ms both ways (a relay in its
//! namespace). The run equals the in-process run of the same config: verdicts, consensus,
//! test metrics, holdings and every global model.
//!
//! Needs root, `ip` and `nft` (`.ci/run` installs them and sets `COHORT_REQUIRE_NETNS=1`;
//! elsewhere the test says why it skips).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{outcome, wait};

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use cohort_testkit::netns::Lab;
use serde_json::Value;

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../examples/{name}"))
}

fn sets(sets: &[&str]) -> Vec<String> {
    sets.iter()
        .flat_map(|s| ["--set".to_owned(), (*s).to_owned()])
        .collect()
}

/// Runs `config` with `overrides` on five party namespaces and in process; compares.
fn federation_on_namespaces(test: &str, config: &Path, overrides: &[&str]) {
    let Some(mut lab) = Lab::start(test) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let bin = env!("CARGO_BIN_EXE_cohort");
    let parties: Vec<(&str, u32)> = vec![
        ("client", 0),
        ("client", 1),
        ("client", 2),
        ("validator", 0),
        ("validator", 1),
    ];

    // Every party's key and the admission list.
    let mut admit = String::new();
    for (role, i) in &parties {
        let f = d.join(format!("{role}-{i}.pem"));
        let o = common::cohort(&["keys", "new", "--out", common::p(&f), "--json"]);
        assert!(o.status.success(), "{}", common::text(&o));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        admit.push_str(&format!("{role} {}\n", v["public_key"].as_str().unwrap()));
    }
    std::fs::write(d.join("admit.txt"), admit).unwrap();

    // The hosts: the coordinator's namespace and one per party, each on a link of its own.
    let coordinator_ns = lab.namespace("c");
    let mut hosts = Vec::new();
    for k in 0..parties.len() {
        let ns = lab.namespace(&format!("p{k}"));
        let net = k + 1;
        let (ic, ip) = lab.link(
            &coordinator_ns,
            &format!("10.77.{net}.1/24"),
            &ns,
            &format!("10.77.{net}.2/24"),
        );
        hosts.push((ns, ic, ip, format!("10.77.{net}.1")));
    }
    // Client 0's link: 1% loss each way, 50 ms each way through a relay in its namespace.
    let (ns0, ic0, ip0, addr0) = &hosts[0];
    lab.loss(&coordinator_ns, ic0, 1);
    lab.loss(ns0, ip0, 1);
    let relay = lab.relay(
        ns0,
        "127.0.0.1:0".parse().unwrap(),
        format!("{addr0}:50051").parse().unwrap(),
        Duration::from_millis(50),
    );

    // TLS for every address a party dials.
    let mut tls = vec![
        "keys".to_owned(),
        "tls".to_owned(),
        "--out".to_owned(),
        common::p(&d.join("tls")).to_owned(),
        "--name".to_owned(),
        "127.0.0.1".to_owned(),
    ];
    for (_, _, _, addr) in &hosts {
        tls.extend(["--name".to_owned(), addr.clone()]);
    }
    let o = common::cohort(&tls.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", common::text(&o));

    let config_s = common::p(config).to_owned();
    let mut args = vec![
        "coordinator".to_owned(),
        config_s.clone(),
        "--out".to_owned(),
        common::p(&d.join("run")).to_owned(),
        "--listen".to_owned(),
        "0.0.0.0:50051".to_owned(),
        "--admit".to_owned(),
        common::p(&d.join("admit.txt")).to_owned(),
        "--tls-cert".to_owned(),
        common::p(&d.join("tls/server.pem")).to_owned(),
        "--tls-key".to_owned(),
        common::p(&d.join("tls/server.key")).to_owned(),
        "--json".to_owned(),
        "--enrol-timeout".to_owned(),
        "120".to_owned(),
    ];
    args.extend(sets(overrides));
    let coordinator_log = d.join("coordinator.log");
    let started = Instant::now();
    let coordinator = lab
        .exec(&coordinator_ns, bin)
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&coordinator_log).unwrap())
        .spawn()
        .unwrap();
    let cache = d.join("cache");
    let mut children = Vec::new();
    for (k, (role, i)) in parties.iter().enumerate() {
        let (ns, _, _, addr) = &hosts[k];
        let url = if k == 0 {
            format!("https://{relay}")
        } else {
            format!("https://{addr}:50051")
        };
        let mut a = vec![
            (*role).to_owned(),
            "--coordinator".to_owned(),
            url,
            "--ca".to_owned(),
            common::p(&d.join("tls/ca.pem")).to_owned(),
            "--key".to_owned(),
            common::p(&d.join(format!("{role}-{i}.pem"))).to_owned(),
            "--config".to_owned(),
            config_s.clone(),
            "--index".to_owned(),
            i.to_string(),
            "--cache".to_owned(),
            common::p(&cache.join(format!("{role}-{i}"))).to_owned(),
            "--give-up".to_owned(),
            "120".to_owned(),
        ];
        a.extend(sets(overrides));
        let log = d.join(format!("{role}-{i}.log"));
        let child = lab
            .exec(ns, bin)
            .args(&a)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        children.push((child, log));
    }
    let out = wait(coordinator, 900, "the coordinator", &coordinator_log);
    let log = std::fs::read_to_string(&coordinator_log).unwrap();
    assert!(out.status.success(), "{log}");
    let networked = started.elapsed();
    for (child, log) in children {
        let o = wait(child, 60, "a party", &log);
        assert!(
            o.status.success(),
            "{}: {}",
            log.display(),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    // Every party came from its own host (client 0 through the relay on its host).
    for (k, (role, i)) in parties.iter().enumerate() {
        let from = format!("peer=10.77.{}.2:", k + 1);
        assert!(
            log.lines().any(|l| l.contains("session open")
                && l.contains(&from)
                && l.contains(&format!("party={role}-{i}"))),
            "{role}-{i} from {from}: {log}"
        );
    }
    let net: Value = serde_json::from_slice(&out.stdout).unwrap();

    let mut args = vec![
        "run".to_owned(),
        config_s,
        "--out".to_owned(),
        common::p(&d.join("local")).to_owned(),
        "--json".to_owned(),
    ];
    args.extend(sets(overrides));
    let o = common::cohort(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", common::text(&o));
    let local: Value = serde_json::from_slice(&o.stdout).unwrap();
    let (a, b) = (outcome(&net["summary"]), outcome(&local["summary"]));
    assert_eq!(a.len(), 3);
    assert_eq!(a, b);
    assert_eq!(
        net["summary"]["final_holdings"],
        local["summary"]["final_holdings"]
    );
    let o = common::cohort(&["ledger", "verify", common::p(&d.join("run/ledger"))]);
    assert!(o.status.success(), "{}", common::text(&o));
    let (ns0, ic0, ip0, _) = &hosts[0];
    eprintln!(
        "{test}: {} rounds over five namespaces (one link 1% loss, 50 ms) in {:.1} s; the lossy \
         link dropped {} packets to client 0 and {} from it",
        a.len(),
        networked.as_secs_f64(),
        lab.dropped(&coordinator_ns, ic0),
        lab.dropped(ns0, ip0),
    );
}

#[test]
fn the_linear_task_on_five_namespaces_with_a_lossy_slow_link_equals_one_process() {
    federation_on_namespaces(
        "the_linear_task_on_five_namespaces",
        &example("attack-linear.toml"),
        &[
            "clients=3",
            "validators=2",
            "coordinator.rounds=3",
            "coordinator.clients_per_round=3",
            "attack.fraction=0.34",
        ],
    );
}

#[test]
fn the_lm_task_on_five_namespaces_with_a_lossy_slow_link_equals_one_process() {
    // LoRA fine-tuning of a small GPT (test preset, a short pretraining each party makes for
    // itself from the shared corpus), one client a sign-flipping attacker.
    federation_on_namespaces(
        "the_lm_task_on_five_namespaces",
        &example("lm-attack.toml"),
        &[
            "clients=3",
            "validators=2",
            "coordinator.rounds=3",
            "coordinator.clients_per_round=3",
            "attack.fraction=0.34",
            "task.preset=test",
            "task.seq_len=32",
            "task.pretrain_steps=30",
            "task.local_steps=4",
            "task.eval_windows=8",
            // Measured only where the parties are in one process.
            "report.collaboration_gain=false",
        ],
    );
}
