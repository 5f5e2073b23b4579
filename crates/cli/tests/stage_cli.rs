//! `cohort stage`: three stage servers register and stake, a client escrows pay, two verifiers
//! attest the same mismatch from the evidence files a client wrote, the cheat is slashed and
//! inactive and the client takes its pay back; the honest server is paid after the challenge
//! window, not before. Malformed evidence is refused by name with nothing written.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/stages.rs"]
mod stages;

use std::path::Path;

use alloy_primitives::U256;
use cohort_core::tokens;
use cohort_ledger::LedgerReader;
use cohort_ledger::protocol::Protocol;
use common::{cohort, p, text};
use serde_json::Value;
use stages::{START, StageWorld, evidence, world, write_claims};

/// The tests of this file run one at a time: each opens its ledger in this process too (to set
/// it up and to read it), and a child another test spawns meanwhile would inherit that file's
/// lock until it execs, so that a `cohort` started just then finds the ledger busy.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs `cohort stage ARGS --json` and returns its JSON; panics with its output if it fails.
fn ok(args: &[&str]) -> Value {
    let mut a = vec!["stage"];
    a.extend_from_slice(args);
    a.push("--json");
    let o = cohort(&a);
    assert!(o.status.success(), "cohort {}: {}", a.join(" "), text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Runs `cohort stage ARGS` that must fail (exit 2): its output.
fn refused(args: &[&str]) -> String {
    let mut a = vec!["stage"];
    a.extend_from_slice(args);
    let o = cohort(&a);
    assert_eq!(
        o.status.code(),
        Some(2),
        "cohort {}: {}",
        a.join(" "),
        text(&o)
    );
    text(&o)
}

fn at(t: u64) -> String {
    (START + t).to_string()
}

/// The ledger's size, read-only.
fn entries(w: &StageWorld) -> u64 {
    LedgerReader::open(&w.ledger)
        .unwrap()
        .replay()
        .unwrap()
        .len()
}

fn reader(w: &StageWorld) -> Protocol<cohort_ledger::LedgerState> {
    Protocol::at(
        LedgerReader::open(&w.ledger).unwrap().replay().unwrap(),
        w.contract,
    )
}

fn claim_file(dir: &Path, name: &str, claims: &[Value]) -> String {
    let f = dir.join(name);
    write_claims(&f, claims);
    p(&f).to_owned()
}

#[test]
fn a_quorum_of_verifiers_slashes_a_cheat_and_an_honest_server_is_paid_after_the_window() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let w = world(dir.path());
    let l = p(&w.ledger);
    let [honest, cheat, third] = [&w.servers[0], &w.servers[1], &w.servers[2]];
    let client = &w.client;

    // Register: each server registers, stakes and declares itself in one command.
    for s in [honest, cheat, third] {
        let out = ok(&[
            "register",
            "--ledger",
            l,
            "--key",
            p(&s.key),
            "--model",
            &w.model,
            "--layers",
            "1..3",
            "--stake",
            "1500",
            "--at",
            &at(0),
        ]);
        assert_eq!(out["server"], s.json());
        assert_eq!(out["stake"], tokens(1_500).to_string());
        let calls: Vec<&str> = out["calls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["call"].as_str().unwrap())
            .collect();
        assert_eq!(calls, ["register", "stake", "registerStage"]);
    }
    let e = refused(&[
        "register",
        "--ledger",
        l,
        "--key",
        p(&honest.key),
        "--model",
        &w.model,
        "--layers",
        "1..3",
        "--at",
        &at(0),
    ]);
    assert!(e.contains("a stage server already"), "{e}");

    // Pay: the client escrows for period 1 to the honest server and to the cheat.
    let out = ok(&[
        "pay",
        "--ledger",
        l,
        "--key",
        p(&client.key),
        "--server",
        &honest.addr(),
        "--period",
        "1",
        "--tokens",
        "4096",
        "--amount",
        "100",
        "--at",
        &at(10),
    ]);
    assert_eq!(out["escrowed"], tokens(100).to_string());
    assert_eq!(out["release_at"], START + 10 + 3_600);
    // The cheat named by its public key, as its Info gives it.
    let cheat_key = hex::encode(cheat.id.public_key());
    let out = ok(&[
        "pay",
        "--ledger",
        l,
        "--key",
        p(&client.key),
        "--server",
        &cheat_key,
        "--period",
        "1",
        "--tokens",
        "2048",
        "--amount",
        "50.5",
        "--at",
        &at(10),
    ]);
    assert_eq!(out["server"], cheat.json());
    let paid_to_cheat = tokens(50) + tokens(1) / U256::from(2);
    assert_eq!(out["escrowed"], paid_to_cheat.to_string());
    let client_after_pay = reader(&w).balance_of(client.address()).unwrap();

    // Nothing is paid before the window ends.
    let e = refused(&[
        "release",
        "--ledger",
        l,
        "--key",
        p(&client.key),
        "--server",
        &honest.addr(),
        "--period",
        "1",
        "--at",
        &at(3_609),
    ]);
    assert!(
        e.contains("is locked until") && e.contains("nothing written"),
        "{e}"
    );

    // Attest: two verifiers, each with the evidence of its own recomputation (different rows
    // of the same call).
    let ev_honest = claim_file(
        dir.path(),
        "evidence-1.json",
        &[evidence(&cheat.id, &honest.id, &[0, 2], 2)],
    );
    let ev_third = claim_file(
        dir.path(),
        "evidence-3.json",
        &[evidence(&cheat.id, &third.id, &[1, 2, 3], 2)],
    );
    // A verifier cannot attest another verifier's recomputation.
    let e = refused(&[
        "attest",
        "--ledger",
        l,
        "--key",
        p(&third.key),
        "--evidence",
        &ev_honest,
        "--at",
        &at(20),
    ]);
    assert!(e.contains("is not the evidence's verifier key"), "{e}");
    // --check writes nothing.
    let before = entries(&w);
    let out = ok(&[
        "attest",
        "--ledger",
        l,
        "--key",
        p(&honest.key),
        "--evidence",
        &ev_honest,
        "--at",
        &at(20),
        "--check",
    ]);
    assert_eq!(out["checked_only"], true);
    assert_eq!(entries(&w), before);
    let first = ok(&[
        "attest",
        "--ledger",
        l,
        "--key",
        p(&honest.key),
        "--evidence",
        &ev_honest,
        "--at",
        &at(20),
    ]);
    assert_eq!(first["slashed"], false);
    assert_eq!(first["attestations"], "1");
    assert_eq!(first["quorum"], 2);
    assert_eq!(
        first["period"], 1,
        "the period defaults to the evidence's session"
    );
    assert_eq!(first["evidence"]["verifier_signature_checked"], true);
    // The same verifier twice counts once.
    let e = refused(&[
        "attest",
        "--ledger",
        l,
        "--key",
        p(&honest.key),
        "--evidence",
        &ev_honest,
        "--at",
        &at(21),
    ]);
    assert!(e.contains("attested claim") && e.contains("already"), "{e}");
    assert!(reader(&w).stage_active(cheat.address()).unwrap());
    let second = ok(&[
        "attest",
        "--ledger",
        l,
        "--key",
        p(&third.key),
        "--evidence",
        &ev_third,
        "--at",
        &at(30),
    ]);
    assert_eq!(second["claim_id"], first["claim_id"]);
    assert_eq!(second["attestations"], "2");
    assert_eq!(second["slashed"], true);
    assert_eq!(
        second["slashed_amount"],
        tokens(750).to_string(),
        "half of the cheat's 1,500 staked"
    );
    assert_eq!(
        second["attester_share"],
        (tokens(75) / U256::from(2)).to_string()
    );

    // The cheat is slashed and inactive.
    let shown = ok(&["show", "--ledger", l, "--server", &cheat.addr()]);
    let s = &shown["servers"][0];
    assert_eq!(s["active"], false);
    assert_eq!(s["slash_claim"], first["claim_id"]);
    assert_eq!(s["stake"], tokens(750).to_string());
    // Its pay is never released, and goes back to the client.
    let e = refused(&[
        "release",
        "--ledger",
        l,
        "--key",
        p(&client.key),
        "--server",
        &cheat.addr(),
        "--period",
        "1",
        "--at",
        &at(10_000),
    ]);
    assert!(e.contains("was slashed"), "{e}");
    let out = ok(&[
        "refund",
        "--ledger",
        l,
        "--key",
        p(&client.key),
        "--server",
        &cheat.addr(),
        "--period",
        "1",
        "--at",
        &at(10_000),
    ]);
    assert_eq!(out["refunded"], paid_to_cheat.to_string());
    let mut r = reader(&w);
    assert_eq!(
        r.balance_of(client.address()).unwrap(),
        client_after_pay + paid_to_cheat
    );
    assert_eq!(
        r.stage_escrow(cheat.address(), 1).unwrap().amount,
        U256::ZERO
    );
    let e = refused(&[
        "refund",
        "--ledger",
        l,
        "--key",
        p(&client.key),
        "--server",
        &cheat.addr(),
        "--period",
        "1",
        "--at",
        &at(10_000),
    ]);
    assert!(e.contains("holds nothing"), "{e}");
    // A slashed server is paid nothing more.
    let e = refused(&[
        "pay",
        "--ledger",
        l,
        "--key",
        p(&client.key),
        "--server",
        &cheat.addr(),
        "--period",
        "2",
        "--amount",
        "1",
        "--at",
        &at(10_000),
    ]);
    assert!(e.contains("was slashed"), "{e}");

    // The honest server is paid once the window has passed; anyone may release.
    let before = r.balance_of(honest.address()).unwrap();
    let out = ok(&[
        "release",
        "--ledger",
        l,
        "--key",
        p(&third.key),
        "--server",
        &honest.addr(),
        "--period",
        "1",
        "--at",
        &at(10_000),
    ]);
    assert_eq!(out["released"], tokens(100).to_string());
    assert_eq!(out["tokens"], 4096);
    let mut r = reader(&w);
    assert_eq!(
        r.balance_of(honest.address()).unwrap(),
        before + tokens(100)
    );
    assert!(r.supply().unwrap().conserved());
    let shown = ok(&[
        "show",
        "--ledger",
        l,
        "--server",
        &honest.addr(),
        "--period",
        "1",
        "--payer",
        &client.addr(),
    ]);
    assert_eq!(shown["escrow"]["released"], true);
    assert_eq!(shown["escrow"]["paid"], tokens(100).to_string());
    let all = ok(&["show", "--ledger", l]);
    assert_eq!(all["servers"].as_array().unwrap().len(), 3);
    // The ledger verifies, and `ledger show` names the stage calls.
    let o = cohort(&["ledger", "verify", l]);
    assert!(o.status.success(), "{}", text(&o));
    let o = cohort(&["ledger", "show", l, "--entries", "0", "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let calls: Vec<&str> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["call"].as_str().unwrap())
        .collect();
    for c in [
        "registerStage",
        "payStage",
        "attestStageFraud",
        "refundStage",
        "releaseStage",
    ] {
        assert!(calls.contains(&c), "ledger show lists no {c}: {calls:?}");
    }
}

#[test]
fn malformed_evidence_is_refused_by_name_before_anything_is_written() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let w = world(dir.path());
    w.register(&[0, 1, 2]);
    let l = p(&w.ledger);
    let [verifier, cheat] = [&w.servers[0], &w.servers[1]];
    let good = evidence(&cheat.id, &verifier.id, &[0, 2], 2);
    let before = entries(&w);
    let mut cases: Vec<(&str, Value, &str)> = Vec::new();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut v = good.clone();
        f(&mut v);
        v
    };
    cases.push((
        "bad hex",
        with(&|v| v["committed"] = "zz".into()),
        "committed \"zz\" is not 32 bytes of hex",
    ));
    cases.push((
        "no such row",
        with(&|v| v["row"] = 9.into()),
        "row 9 is outside the server's commitment",
    ));
    cases.push((
        "a committed row that is not the commitment's",
        with(&|v| v["committed"] = v["server_rows"][1].clone()),
        "is not the server's digest of row 2",
    ));
    cases.push((
        "no mismatch",
        with(&|v| v["recomputed"] = v["committed"].clone()),
        "committed and recomputed are equal",
    ));
    cases.push((
        "a row the verifier did not recompute",
        with(&|v| v["verifier_rows"] = serde_json::json!([0, 1])),
        "the verifier did not recompute row 2",
    ));
    cases.push((
        "a server without a key",
        with(&|v| v["server_key"] = Value::Null),
        "server_key is missing",
    ));
    cases.push((
        "an unsigned commitment",
        with(&|v| v["server_signature"] = Value::Null),
        "server_signature is missing",
    ));
    cases.push((
        "a commitment altered after it was signed",
        with(&|v| v["server_rows"][0] = v["recomputed"].clone()),
        "server_signature does not verify",
    ));
    cases.push((
        "a recomputation altered after it was signed",
        with(&|v| v["verifier_call"] = v["server_call"].clone()),
        "verifier_signature does not verify",
    ));
    cases.push((
        "a missing field",
        with(&|v| {
            v.as_object_mut().unwrap().remove("server_call");
        }),
        "missing field `server_call`",
    ));
    cases.push((
        "a negative row",
        with(&|v| v["row"] = (-1).into()),
        "claim 0",
    ));
    for (i, (what, v, says)) in cases.iter().enumerate() {
        let f = claim_file(
            dir.path(),
            &format!("bad-{i}.json"),
            std::slice::from_ref(v),
        );
        let e = refused(&[
            "attest",
            "--ledger",
            l,
            "--key",
            p(&verifier.key),
            "--evidence",
            &f,
            "--at",
            &at(100),
        ]);
        assert!(
            e.contains(says) && e.contains(&f),
            "{what}: expected {says:?} naming the file, got {e}"
        );
    }
    for (content, says) in [
        ("not json", "not JSON"),
        ("[]", "holds no claim"),
        ("42", "expected a claim"),
    ] {
        let f = dir.path().join("odd.json");
        std::fs::write(&f, content).unwrap();
        let e = refused(&[
            "attest",
            "--ledger",
            l,
            "--key",
            p(&verifier.key),
            "--evidence",
            p(&f),
        ]);
        assert!(e.contains(says), "{content}: {e}");
    }
    // Several claims: one is chosen by --claim.
    let two = claim_file(dir.path(), "two.json", &[good.clone(), good.clone()]);
    let e = refused(&[
        "attest",
        "--ledger",
        l,
        "--key",
        p(&verifier.key),
        "--evidence",
        &two,
    ]);
    assert!(e.contains("holds 2 claims; choose one with --claim"), "{e}");
    let e = refused(&[
        "attest",
        "--ledger",
        l,
        "--key",
        p(&verifier.key),
        "--evidence",
        &two,
        "--claim",
        "2",
    ]);
    assert!(e.contains("--claim 2"), "{e}");
    // The accused must be the stage server whose key signed: one that is none is refused.
    let stranger = evidence(&w.servers[3].id, &verifier.id, &[0, 2], 2);
    let f = claim_file(dir.path(), "stranger.json", &[stranger]);
    let e = refused(&[
        "attest",
        "--ledger",
        l,
        "--key",
        p(&verifier.key),
        "--evidence",
        &f,
        "--at",
        &at(100),
    ]);
    assert!(e.contains("is no stage server on this ledger"), "{e}");
    assert_eq!(entries(&w), before, "nothing was written");
    // The good one, for the record, is taken.
    let f = claim_file(dir.path(), "good.json", &[good]);
    let out = ok(&[
        "attest",
        "--ledger",
        l,
        "--key",
        p(&verifier.key),
        "--evidence",
        &f,
        "--claim",
        "0",
        "--at",
        &at(100),
    ]);
    assert_eq!(out["attestations"], "1");
    assert_eq!(entries(&w), before + 1);
}

#[test]
fn bad_arguments_are_refused_by_name() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let w = world(dir.path());
    let l = p(&w.ledger);
    let k = p(&w.client.key);
    for (args, says) in [
        (
            vec![
                "pay", "--ledger", l, "--key", k, "--server", "0x12", "--period", "1", "--amount",
                "1",
            ],
            "--server",
        ),
        (
            vec![
                "pay",
                "--ledger",
                l,
                "--key",
                k,
                "--server",
                &w.client.addr(),
                "--period",
                "1",
                "--amount",
                "0",
            ],
            "--amount",
        ),
        (
            vec![
                "pay",
                "--ledger",
                l,
                "--key",
                k,
                "--server",
                &w.client.addr(),
                "--period",
                "1",
                "--amount",
                "1.0000000000000000001",
            ],
            "--amount",
        ),
        (
            vec![
                "register", "--ledger", l, "--key", k, "--model", &w.model, "--layers", "3..3",
            ],
            "--layers",
        ),
        (
            vec![
                "register", "--ledger", l, "--key", k, "--model", "nope", "--layers", "0..1",
            ],
            "--model",
        ),
        (
            vec![
                "register", "--ledger", l, "--key", k, "--model", &w.model, "--layers", "0..1",
            ],
            "give --stake",
        ),
        (
            vec![
                "pay",
                "--ledger",
                l,
                "--key",
                k,
                "--server",
                &w.client.addr(),
                "--period",
                "1",
                "--amount",
                "1",
                "--at",
                "5",
            ],
            "--at 5: before the ledger's last entry",
        ),
        (
            vec![
                "pay",
                "--ledger",
                l,
                "--key",
                k,
                "--server",
                &w.client.addr(),
                "--period",
                "1",
                "--amount",
                "1",
            ],
            "is no stage server",
        ),
        (
            vec![
                "release",
                "--ledger",
                p(&dir.path().join("none")),
                "--key",
                k,
                "--server",
                &w.client.addr(),
                "--period",
                "1",
            ],
            "--ledger",
        ),
        (vec!["show", "--ledger", l, "--period", "1"], "--server"),
    ] {
        let e = refused(&args);
        assert!(e.contains(says), "{args:?}: expected {says:?}, got {e}");
    }
}

/// `cohort ledger deploy` makes a new embedded ledger with the protocol governed by a key;
/// `cohort ledger mint` gives a party tokens as that governance (and only as it); the party
/// then stakes and declares itself a stage server. Refusals write nothing.
#[test]
fn a_new_ledger_is_deployed_and_minted_for_its_stage_servers() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let key = |name: &str| {
        let id = cohort_core::Identity::from_seed(41, name);
        let f = dir.path().join(format!("{name}.pem"));
        cohort_core::keyfile::write_new(&f, &id).unwrap();
        (f, id)
    };
    let (gov, gov_id) = key("governance");
    let (server, server_id) = key("server");
    let l = dir.path().join("ledger");
    let run = |args: &[&str]| -> Value {
        let o = cohort(args);
        assert!(o.status.success(), "{args:?}: {}", text(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let fails = |args: &[&str], why: &str| {
        let o = cohort(args);
        assert!(!o.status.success(), "{args:?}");
        assert!(text(&o).contains(why), "{args:?}: {}", text(&o));
    };
    let out = run(&[
        "ledger",
        "deploy",
        "--ledger",
        p(&l),
        "--governance-key",
        p(&gov),
        "--json",
    ]);
    assert!(out["contract"].is_string(), "{out}");
    assert_eq!(out["governance"], serde_json::json!(gov_id.address()));
    assert!(l.join("operator.key").exists());
    let size = |l: &Path| LedgerReader::open(l).unwrap().replay().unwrap().len();
    let deployed = size(&l);
    // Not twice in one directory; not with a key file that is none.
    fails(
        &[
            "ledger",
            "deploy",
            "--ledger",
            p(&l),
            "--governance-key",
            p(&gov),
        ],
        "already",
    );
    assert_eq!(size(&l), deployed);
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a key").unwrap();
    let other = dir.path().join("other");
    fails(
        &[
            "ledger",
            "deploy",
            "--ledger",
            p(&other),
            "--governance-key",
            p(&garbage),
        ],
        "--governance-key",
    );
    assert!(!other.exists(), "a refused deploy left a directory");
    fails(
        &["ledger", "deploy", "--governance-key", p(&gov)],
        "--ledger",
    );

    // Minted by the governance, to the server named by its key.
    let pk = hex::encode(server_id.public_key());
    let mint = |key: &Path, amount: &str| {
        vec![
            "ledger".to_owned(),
            "mint".to_owned(),
            "--ledger".to_owned(),
            p(&l).to_owned(),
            "--key".to_owned(),
            p(key).to_owned(),
            "--to".to_owned(),
            pk.clone(),
            "--amount".to_owned(),
            amount.to_owned(),
            "--json".to_owned(),
        ]
    };
    let args = mint(&gov, "2000");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run(&args);
    assert_eq!(out["to"], serde_json::json!(server_id.address()));
    assert_eq!(out["balance"], tokens(2_000).to_string());
    // Not by anyone else.
    let before = size(&l);
    let args = mint(&server, "1");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    fails(&args, "mint refused, nothing written");
    assert_eq!(size(&l), before);
    // The server stakes what it was given and declares itself.
    let out = ok(&[
        "register",
        "--ledger",
        p(&l),
        "--key",
        p(&server),
        "--model",
        &"ab".repeat(32),
        "--layers",
        "0..2",
        "--stake",
        "1500",
    ]);
    assert_eq!(out["stake"], tokens(1_500).to_string());
    let o = cohort(&["ledger", "verify", p(&l)]);
    assert!(o.status.success(), "{}", text(&o));
}
