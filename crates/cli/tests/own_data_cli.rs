//! A party with its own data: `cohort client --data FILE` trains on its own text instead of
//! its partition of the experiment's data, and commits to it on the ledger; `cohort validator
//! --holdout FILE` scores on its own held-out text. A federation of the LM task with one of
//! each runs to the end and its ledger verifies; every bad file is refused before any
//! dialling, naming the file and what is wrong.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use alloy_sol_types::SolCall;
use cohort_core::Hash32;
use cohort_ledger::merkle::{MerkleTree, leaf_hash};
use cohort_ledger::protocol::Cohort;
use serde_json::Value;

/// The LM task, small: a test-preset GPT pretrained for 30 steps, 2 rounds of 3 clients.
const SETS: [&str; 10] = [
    "clients=3",
    "validators=2",
    "coordinator.rounds=2",
    "coordinator.clients_per_round=3",
    "task.preset=test",
    "task.seq_len=32",
    "task.pretrain_steps=30",
    "task.local_steps=4",
    "task.eval_windows=8",
    "task.batch=8",
];

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

fn lm_config() -> PathBuf {
    examples().join("lm-shakespeare.toml")
}

fn shakespeare() -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/data/tinyshakespeare/input.txt"),
    )
    .unwrap()
}

fn sets() -> Vec<String> {
    SETS.iter()
        .flat_map(|s| ["--set".to_owned(), (*s).to_owned()])
        .collect()
}

/// Key files for `clients` clients and `validators` validators in `dir`, and the admission
/// list naming them.
fn keys_for(dir: &Path, clients: u32, validators: u32) -> PathBuf {
    let mut admit = String::new();
    for (role, n) in [("client", clients), ("validator", validators)] {
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

/// `role` `i` of the LM federation at `url`, with `extra` arguments (`--data FILE`).
fn party(dir: &Path, role: &str, i: u32, url: &str, extra: &[&str]) -> Child {
    let mut args: Vec<String> = [
        role,
        "--coordinator",
        url,
        "--insecure",
        "--key",
        common::p(&dir.join(format!("{role}-{i}.key"))),
        "--config",
        common::p(&lm_config()),
        "--index",
        &i.to_string(),
        "--give-up",
        "60",
    ]
    .iter()
    .chain(extra)
    .map(|s| (*s).to_owned())
    .collect();
    args.extend(sets());
    spawn(&args, &dir.join(format!("{role}-{i}.log")))
}

/// The dataset commitment of a text file's lines, one leaf per line: what a client that
/// trains on it must commit.
fn lines_root(text: &str) -> (Hash32, u64) {
    let mut tree = MerkleTree::new();
    for l in text.lines() {
        tree.push_hash(leaf_hash(l.as_bytes()));
    }
    (tree.root(), text.lines().count() as u64)
}

/// The config the federation runs, as the parties read it, through cohort-fl.
fn lm_run_config() -> cohort_fl::config::ValidConfig {
    let mut table: toml::Table =
        toml::from_str(&std::fs::read_to_string(lm_config()).unwrap()).unwrap();
    for s in SETS {
        let (key, value) = s.split_once('=').unwrap();
        let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .map(|mut t| t.remove("v").unwrap())
            .unwrap_or_else(|_| toml::Value::String(value.to_owned()));
        let mut t = &mut table;
        let parts: Vec<&str> = key.split('.').collect();
        for p in &parts[..parts.len() - 1] {
            t = t.get_mut(*p).unwrap().as_table_mut().unwrap();
        }
        t.insert(parts[parts.len() - 1].to_owned(), value);
    }
    toml::Value::Table(table)
        .try_into::<cohort_fl::config::RunConfig>()
        .unwrap()
        .check()
        .unwrap()
}

/// Every `commitDataset` on the ledger in `dir`, as (author, root, size).
fn committed_datasets(dir: &Path) -> Vec<(alloy_primitives::Address, Hash32, u64)> {
    let state = cohort_ledger::LedgerReader::open(dir)
        .unwrap()
        .replay()
        .unwrap();
    state
        .entries()
        .iter()
        .filter_map(|e| {
            let c = Cohort::commitDatasetCall::abi_decode(&e.tx.tx.data).ok()?;
            Some((e.tx.sender(), Hash32::from(c.merkleRoot), c.size))
        })
        .collect()
}

#[test]
fn a_client_and_a_validator_with_their_own_text_run_an_lm_federation() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let admit = keys_for(d, 3, 2);
    // Client 0's own corpus and validator 0's own held-out text: slices of Tiny Shakespeare
    // far from each other (the file is ASCII, so any byte offset is a character boundary).
    let corpus = shakespeare();
    let own = d.join("own.txt");
    std::fs::write(&own, &corpus[600_000..630_000]).unwrap();
    let holdout = d.join("holdout.txt");
    std::fs::write(&holdout, &corpus[1_000_000..1_006_000]).unwrap();

    let port = cohort_testkit::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut args: Vec<String> = [
        "coordinator",
        common::p(&lm_config()),
        "--out",
        common::p(&d.join("run")),
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--admit",
        common::p(&admit),
        "--insecure",
        "--json",
        "--enrol-timeout",
        "300",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    args.extend(sets());
    let coordinator = spawn(&args, &d.join("coordinator.log"));
    let parties = vec![
        party(d, "client", 0, &url, &["--data", common::p(&own)]),
        party(d, "client", 1, &url, &[]),
        party(d, "client", 2, &url, &[]),
        party(d, "validator", 0, &url, &["--holdout", common::p(&holdout)]),
        party(d, "validator", 1, &url, &[]),
    ];
    let out = common::wait(
        coordinator,
        600,
        "the coordinator",
        &d.join("coordinator.log"),
    );
    let log = std::fs::read_to_string(d.join("coordinator.log")).unwrap();
    assert!(out.status.success(), "{log}");
    for (i, p) in parties.into_iter().enumerate() {
        let o = common::wait(p, 60, "a party", &d.join("coordinator.log"));
        assert!(o.status.success(), "party {i}: {}", common::text(&o));
    }
    let net: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rounds = net["summary"]["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 2, "{}", net["summary"]);
    for r in rounds {
        // Every client trained and was scored, the own-data one too.
        assert_eq!(r["submitted"], serde_json::json!([0, 1, 2]), "{r}");
    }
    let o = common::cohort(&["ledger", "verify", common::p(&d.join("run/ledger"))]);
    assert!(o.status.success(), "{}", common::text(&o));

    // Each party said what it uses.
    let c0 = std::fs::read_to_string(d.join("client-0.log")).unwrap();
    assert!(
        c0.contains("data: its own data") && c0.contains("own.txt"),
        "{c0}"
    );
    let v0 = std::fs::read_to_string(d.join("validator-0.log")).unwrap();
    assert!(
        v0.contains("data: its own data") && v0.contains("holdout.txt"),
        "{v0}"
    );
    let c1 = std::fs::read_to_string(d.join("client-1.log")).unwrap();
    assert!(c1.contains("data: its partition of"), "{c1}");

    // The ledger holds client 0's commitment to its own file, not to its partition; the
    // others committed to their partitions, computed the same way.
    let committed = committed_datasets(&d.join("run/ledger"));
    assert_eq!(committed.len(), 3, "{committed:?}");
    let address = |i: u32| {
        cohort_core::keyfile::load(&d.join(format!("client-{i}.key")))
            .unwrap()
            .address()
    };
    let of = |i: u32| {
        let a = address(i);
        let v: Vec<_> = committed.iter().filter(|c| c.0 == a).collect();
        assert_eq!(v.len(), 1, "client {i}: {committed:?}");
        (v[0].1, v[0].2)
    };
    let own_root = lines_root(&corpus[600_000..630_000]);
    assert_eq!(of(0), own_root);
    // Its updates claim its own file's lines as their samples.
    for r in rounds {
        let u = r["updates"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["client"] == 0)
            .unwrap();
        assert_eq!(u["samples"], own_root.1, "{r}");
    }
    let cache = tempfile::tempdir().unwrap();
    let task = cohort_tasks::build(&lm_run_config(), &examples(), cache.path()).unwrap();
    assert_ne!(task.dataset_commitment(0), own_root);
    assert_ne!(task.dataset_commitment(0).0, of(0).0);
    assert_eq!(of(1), task.dataset_commitment(1));
    assert_eq!(of(2), task.dataset_commitment(2));
}

/// `cohort ROLE ... --check` (or a start when `check` is false) of the LM config with
/// `extra` arguments, against a coordinator address that listens but must never be dialled.
fn party_with(role: &str, config: &Path, extra: &[&str], check: bool) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.key");
    let o = common::cohort(&["keys", "new", "--out", common::p(&key)]);
    assert!(o.status.success(), "{}", common::text(&o));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let mut args: Vec<String> = [
        role,
        "--coordinator",
        &url,
        "--insecure",
        "--key",
        common::p(&key),
        "--config",
        common::p(config),
        "--index",
        "0",
        "--give-up",
        "1",
    ]
    .iter()
    .chain(extra)
    .map(|s| (*s).to_owned())
    .collect();
    if config == lm_config() {
        args.extend(sets());
    }
    if check {
        args.push("--check".into());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = common::cohort(&args);
    assert_ne!(o.status.code(), Some(101), "{}", common::text(&o));
    assert!(o.status.code().is_some(), "killed: {}", common::text(&o));
    assert!(
        listener.accept().is_err(),
        "it dialled the coordinator: {}",
        common::text(&o)
    );
    o
}

/// The refusal of `role` with `extra`, checked both by `--check` and by a start; its text.
fn refused(role: &str, config: &Path, extra: &[&str]) -> String {
    let mut last = String::new();
    for check in [true, false] {
        let o = party_with(role, config, extra, check);
        assert!(!o.status.success(), "{}", common::text(&o));
        last = common::text(&o);
    }
    last
}

#[test]
fn check_says_what_own_data_a_party_would_use() {
    let dir = tempfile::tempdir().unwrap();
    let text = &shakespeare()[..3_000];
    let own = dir.path().join("own.txt");
    std::fs::write(&own, text).unwrap();
    let o = party_with("client", &lm_config(), &["--data", common::p(&own)], true);
    let out = common::text(&o);
    assert!(o.status.success(), "{out}");
    let (root, lines) = lines_root(text);
    for needle in [
        "task lm".to_owned(),
        common::p(&own).to_owned(),
        "3000 bytes".to_owned(),
        format!("{lines} lines"),
        // The test preset's tokenizer is the corpus's characters: one token each.
        "3000 tokens".to_owned(),
        format!("dataset root 0x{} of {lines} samples", root.to_hex()),
        "nothing was started".to_owned(),
    ] {
        assert!(out.contains(&needle), "{needle:?} in {out}");
    }
    let o = party_with(
        "validator",
        &lm_config(),
        &["--holdout", common::p(&own)],
        true,
    );
    let out = common::text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("validator-0") && out.contains("3000 tokens") && !out.contains("dataset root"),
        "{out}"
    );
    let o = party_with("client", &lm_config(), &[], true);
    let out = common::text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("data: its partition of"), "{out}");

    // An IMDB client's own reviews, in train.tsv's format.
    let reviews: String = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/imdb/train.tsv"),
    )
    .unwrap()
    .lines()
    .take(40)
    .flat_map(|l| [l, "\n"])
    .collect();
    let tsv = dir.path().join("mine.tsv");
    std::fs::write(&tsv, &reviews).unwrap();
    let imdb = examples().join("imdb-attack.toml");
    for (role, flag) in [("client", "--data"), ("validator", "--holdout")] {
        let o = party_with(role, &imdb, &[flag, common::p(&tsv)], true);
        let out = common::text(&o);
        assert!(o.status.success(), "{out}");
        assert!(
            out.contains("task imdb") && out.contains("40 reviews"),
            "{out}"
        );
    }
}

#[test]
fn bad_own_data_is_refused_before_dialling_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let lm = lm_config();
    let write = |name: &str, bytes: &[u8]| {
        let p = d.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };

    let missing = d.join("missing.txt");
    let why = refused("client", &lm, &["--data", common::p(&missing)]);
    assert!(
        why.contains(common::p(&missing)) && why.contains("does not exist"),
        "{why}"
    );

    let why = refused("validator", &lm, &["--holdout", common::p(d)]);
    assert!(why.contains("is a directory"), "{why}");

    let empty = write("empty.txt", b"");
    let why = refused("client", &lm, &["--data", common::p(&empty)]);
    assert!(why.contains("empty.txt: is empty"), "{why}");

    let blank = write("blank.txt", b"  \n\n\t\n");
    let why = refused("client", &lm, &["--data", common::p(&blank)]);
    assert!(why.contains("blank.txt: holds only white space"), "{why}");

    let latin1 = write(
        "latin1.txt",
        b"First Citizen:\nBefore we proceed, caf\xe9\n",
    );
    let why = refused("client", &lm, &["--data", common::p(&latin1)]);
    assert!(
        why.contains("latin1.txt: is not UTF-8") && why.contains("offset 37 (line 2)"),
        "{why}"
    );

    // Shorter than one window of task.seq_len (32) + 2 tokens: the file, its size and the
    // minimum are named.
    let short = write("short.txt", b"First Citizen:\nSpeak.\n");
    for (role, flag) in [("client", "--data"), ("validator", "--holdout")] {
        let why = refused(role, &lm, &[flag, common::p(&short)]);
        assert!(
            why.contains("short.txt")
                && why.contains("22 bytes make 22 tokens")
                && why.contains("minimum of 34"),
            "{why}"
        );
    }

    // Characters the task's tokenizer (Tiny Shakespeare's characters) cannot encode.
    let foreign = write("foreign.txt", "Première ligne.\n".repeat(10).as_bytes());
    let why = refused("client", &lm, &["--data", common::p(&foreign)]);
    assert!(
        why.contains("foreign.txt") && why.contains("cannot encode it (line 1)"),
        "{why}"
    );

    // Over the 1 GiB cap (a sparse file: nothing is written).
    let huge = d.join("huge.txt");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(cohort_tasks::MAX_OWN_DATA_BYTES + 1)
        .unwrap();
    let why = refused("client", &lm, &["--data", common::p(&huge)]);
    assert!(
        why.contains("huge.txt: is 1073741825 bytes") && why.contains("1 GiB"),
        "{why}"
    );

    // A file it cannot read: mode 000 (root reads it anyway; then this case proves nothing
    // and is skipped).
    let locked = write("locked.txt", &shakespeare().as_bytes()[..3_000]);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
    if std::fs::File::open(&locked).is_err() {
        let why = refused("client", &lm, &["--data", common::p(&locked)]);
        assert!(why.contains("locked.txt: cannot be read"), "{why}");
    }

    // The linear task has no data file: refused, naming the tasks that take one.
    let own = write("own.txt", &shakespeare().as_bytes()[..3_000]);
    let linear = examples().join("attack-linear.toml");
    for (role, flag) in [("client", "--data"), ("validator", "--holdout")] {
        let why = refused(role, &linear, &[flag, common::p(&own)]);
        assert!(
            why.contains("the linear task has no data file")
                && why.contains("lm task")
                && why.contains("imdb task"),
            "{why}"
        );
    }

    // IMDB reviews must be LABEL<TAB>IDS lines: text is refused by file and line.
    let imdb = examples().join("imdb-attack.toml");
    let why = refused("client", &imdb, &["--data", common::p(&own)]);
    assert!(
        why.contains("own.txt:1") && why.contains("LABEL<TAB>"),
        "{why}"
    );
    // A client needs task.min_client_samples reviews.
    let few = write("few.tsv", b"1\t1 14 22 16\n0\t1 5 6\n");
    let why = refused("client", &imdb, &["--data", common::p(&few)]);
    assert!(
        why.contains("few.tsv") && why.contains("2 reviews, fewer than the minimum of 16"),
        "{why}"
    );

    // --data is a client's and --holdout a validator's: the other role does not take it.
    for (role, flag) in [("validator", "--data"), ("client", "--holdout")] {
        let o = party_with(role, &lm, &[flag, common::p(&own)], true);
        assert_eq!(o.status.code(), Some(2), "{}", common::text(&o));
        assert!(
            common::text(&o).contains(&format!("unexpected argument '{flag}'")),
            "{}",
            common::text(&o)
        );
    }
}
