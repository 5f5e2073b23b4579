#![cfg(feature = "evm-rpc")]
//! `cohort stage ... --chain-rpc URL --contract ADDR` against a real anvil: stage servers
//! register, are paid into escrow, attested, slashed, refunded and released on a chain as on
//! the embedded ledger, each party signing with the chain key its own key derives, and parties
//! named by their ed25519 keys found through their registrations on the chain.
//!
//! Needs anvil (`npm ci` in `contracts/`, or `$COHORT_ANVIL`; cohort-testkit's `find_anvil`
//! says where it looks). Without it these tests fail, unless `COHORT_SKIP_ANVIL=1`, which
//! turns them into a printed skip.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/stages.rs"]
mod stages;

use alloy_primitives::{Address, U256};
use cohort_core::{Identity, keyfile, tokens};
use cohort_ledger::protocol::Protocol;
use cohort_ledger::rpc::PrivateKeySigner;
use cohort_ledger::{EvmRpcLedger, LedgerBackend};
use cohort_testkit::{Anvil, FUNDER_KEY, free_port};
use common::{Server, cohort, p, serve, serve_with, text};
use serde_json::Value;
use stages::{evidence, write_claims};

/// A party with a key file.
struct Party {
    key: std::path::PathBuf,
    id: Identity,
    /// Its address on the chain (from its derived chain key).
    chain: Address,
}

impl Party {
    fn json(&self) -> Value {
        serde_json::to_value(self.chain).unwrap()
    }
    fn public_key(&self) -> String {
        hex::encode(self.id.public_key())
    }
}

#[test]
fn stage_servers_on_a_chain_are_paid_slashed_refunded_and_released() {
    let Some(anvil) = Anvil::start("stage_servers_on_a_chain") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // The protocol deployed on the chain and tokens minted to every party's chain address,
    // through the CLI as the governance.
    let key_of = |name: &str| {
        let id = Identity::from_seed(31, name);
        let key = dir.join(format!("{name}.pem"));
        keyfile::write_new(&key, &id).unwrap();
        let chain = cohort_ledger::rpc::evm_signer(&id).address();
        Party { key, id, chain }
    };
    let gov = key_of("governance");
    let o = cohort(&[
        "ledger",
        "deploy",
        "--chain-rpc",
        anvil.url(),
        "--funder-key",
        FUNDER_KEY,
        "--governance-key",
        p(&gov.key),
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let deployed: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(deployed["governance"], gov.json(), "{deployed}");
    let contract = deployed["contract"].as_str().unwrap().to_owned();
    let [honest, cheat, third, client] = ["stage-1", "stage-2", "stage-3", "client"].map(key_of);
    for who in [&honest, &cheat, &third, &client] {
        assert_ne!(
            who.chain,
            who.id.address(),
            "a chain address is not the ed25519 one"
        );
        let to = who.chain.to_string();
        let o = cohort(&[
            "ledger",
            "mint",
            "--chain-rpc",
            anvil.url(),
            "--contract",
            &contract,
            "--funder-key",
            FUNDER_KEY,
            "--key",
            p(&gov.key),
            "--to",
            &to,
            "--amount",
            "5000",
            "--json",
        ]);
        assert!(o.status.success(), "{}", text(&o));
        let minted: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(minted["balance"], tokens(5_000).to_string(), "{minted}");
    }
    let t0 = EvmRpcLedger::connect(anvil.url(), None)
        .unwrap()
        .head()
        .unwrap()
        .time;
    let at = |t: u64| (t0 + 100 + t).to_string();
    let place = [
        "--chain-rpc",
        anvil.url(),
        "--contract",
        contract.as_str(),
        "--funder-key",
        FUNDER_KEY,
    ];
    let stage = |args: &[&str]| {
        let mut a = vec!["stage", args[0]];
        a.extend_from_slice(&place);
        a.extend_from_slice(&args[1..]);
        a.push("--json");
        cohort(&a)
    };
    let ok = |args: &[&str]| -> Value {
        let o = stage(args);
        assert!(o.status.success(), "cohort stage {args:?}: {}", text(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let refused = |args: &[&str]| -> String {
        let o = stage(args);
        assert_eq!(
            o.status.code(),
            Some(2),
            "cohort stage {args:?}: {}",
            text(&o)
        );
        text(&o)
    };
    let model = hex::encode([7u8; 32]);

    // Register: each server registers, stakes and declares itself, from its chain address.
    for s in [&honest, &cheat, &third] {
        let out = ok(&[
            "register",
            "--key",
            p(&s.key),
            "--model",
            &model,
            "--layers",
            "1..3",
            "--stake",
            "1500",
            "--at",
            &at(0),
        ]);
        assert_eq!(out["server"], s.json(), "{out}");
        let calls: Vec<&str> = out["calls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["call"].as_str().unwrap())
            .collect();
        assert_eq!(calls, ["register", "stake", "registerStage"]);
    }

    // Pay, naming servers by their ed25519 keys: found by their registrations on the chain.
    let out = ok(&[
        "pay",
        "--key",
        p(&client.key),
        "--server",
        &honest.public_key(),
        "--period",
        "1",
        "--tokens",
        "4096",
        "--amount",
        "100",
        "--at",
        &at(10),
    ]);
    assert_eq!(out["server"], honest.json(), "{out}");
    assert_eq!(out["payer"], client.json(), "{out}");
    let out = ok(&[
        "pay",
        "--key",
        p(&client.key),
        "--server",
        &cheat.public_key(),
        "--period",
        "1",
        "--amount",
        "50",
        "--at",
        &at(10),
    ]);
    assert_eq!(out["server"], cheat.json(), "{out}");
    // A key nobody registered names nobody on the chain (the client paid unregistered).
    let e = refused(&[
        "pay",
        "--key",
        p(&client.key),
        "--server",
        &client.public_key(),
        "--period",
        "1",
        "--amount",
        "1",
    ]);
    assert!(e.contains("no participant registered it"), "{e}");

    // Attest: two verifiers' evidence of the cheat's row; the second slashes.
    let file = |name: &str, claim: Value| {
        let f = dir.join(name);
        write_claims(&f, &[claim]);
        f
    };
    let ev1 = file("ev1.json", evidence(&cheat.id, &honest.id, &[0, 2], 2));
    let ev3 = file("ev3.json", evidence(&cheat.id, &third.id, &[1, 2, 3], 2));
    let first = ok(&[
        "attest",
        "--key",
        p(&honest.key),
        "--evidence",
        p(&ev1),
        "--at",
        &at(20),
    ]);
    assert_eq!(first["attestations"], "1", "{first}");
    assert_eq!(first["evidence"]["server"], cheat.json(), "{first}");
    assert_eq!(first["verifier"], honest.json());
    // --check runs the call and sends nothing: the chain's block number does not move.
    let block = || {
        anvil
            .result("eth_blockNumber", serde_json::json!([]))
            .unwrap()
    };
    let before = block();
    let out = ok(&[
        "attest",
        "--key",
        p(&third.key),
        "--evidence",
        p(&ev3),
        "--check",
    ]);
    assert_eq!(out["checked_only"], true);
    assert_eq!(block(), before);
    let second = ok(&[
        "attest",
        "--key",
        p(&third.key),
        "--evidence",
        p(&ev3),
        "--at",
        &at(30),
    ]);
    assert_eq!(second["claim_id"], first["claim_id"]);
    assert_eq!(second["slashed"], true, "{second}");
    assert_eq!(second["slashed_amount"], tokens(750).to_string());

    // Show reads the chain's own logs (servers registered by other processes), and writes
    // nothing.
    let before = block();
    let shown = ok(&["show"]);
    assert_eq!(block(), before);
    let servers = shown["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 3, "{shown}");
    let cheat_shown = servers
        .iter()
        .find(|s| s["address"] == cheat.json())
        .unwrap();
    assert_eq!(cheat_shown["active"], false);
    assert_eq!(cheat_shown["slash_claim"], first["claim_id"]);
    let shown = ok(&[
        "show",
        "--server",
        &honest.public_key(),
        "--period",
        "1",
        "--payer",
        &client.chain.to_string(),
    ]);
    assert_eq!(shown["servers"][0]["active"], true);
    assert_eq!(shown["escrow"]["paid"], tokens(100).to_string());

    // The cheat's pay goes back to the client; the honest server's is released after the
    // window (3,600 s after the payment), not before.
    let out = ok(&[
        "refund",
        "--key",
        p(&client.key),
        "--server",
        &cheat.public_key(),
        "--period",
        "1",
        "--at",
        &at(40),
    ]);
    assert_eq!(out["refunded"], tokens(50).to_string());
    let e = refused(&[
        "release",
        "--key",
        p(&client.key),
        "--server",
        &honest.public_key(),
        "--period",
        "1",
        "--at",
        &at(50),
    ]);
    assert!(e.contains("is locked until"), "{e}");
    let out = ok(&[
        "release",
        "--key",
        p(&client.key),
        "--server",
        &honest.public_key(),
        "--period",
        "1",
        "--at",
        &at(3_700),
    ]);
    assert_eq!(out["released"], tokens(100).to_string());
    let check = Protocol::at(
        EvmRpcLedger::connect(anvil.url(), None).unwrap(),
        contract.parse::<Address>().unwrap(),
    );
    let mut check = check;
    assert_eq!(
        check.balance_of(honest.chain).unwrap(),
        tokens(5_000 - 1_500 + 100) + tokens(75) / U256::from(2),
        "its pay and its share of the slash"
    );

    // Bad places are refused by name, before anything is sent.
    let before = block();
    let bad = |extra: &[&str], why: &str| {
        let mut a = vec!["stage", "show", "--json"];
        a.extend_from_slice(extra);
        let o = cohort(&a);
        assert!(!o.status.success(), "{extra:?}");
        assert!(text(&o).contains(why), "{extra:?}: {}", text(&o));
    };
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    bad(
        &[
            "--chain-rpc",
            anvil.url(),
            "--contract",
            &Address::repeat_byte(9).to_string(),
        ],
        "no protocol contract with stage servers answers there",
    );
    bad(
        &["--chain-rpc", &nowhere, "--contract", &contract],
        "--chain-rpc",
    );
    bad(&["--chain-rpc", anvil.url()], "--contract");
    bad(&["--contract", &contract], "--chain-rpc");
    bad(
        &["--chain-rpc", anvil.url(), "--contract", "0x12"],
        "--contract",
    );
    bad(
        &[
            "--ledger",
            p(dir),
            "--chain-rpc",
            anvil.url(),
            "--contract",
            &contract,
        ],
        "cannot be used with",
    );
    bad(&[], "--ledger");
    let o = cohort(&[
        "stage",
        "pay",
        "--chain-rpc",
        anvil.url(),
        "--contract",
        &contract,
        "--funder-key",
        "not-a-key",
        "--key",
        p(&client.key),
        "--server",
        &honest.public_key(),
        "--period",
        "2",
        "--amount",
        "1",
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("--funder-key is not a secp256k1 private key"),
        "{}",
        text(&o)
    );
    assert_eq!(block(), before, "a refused command sent a transaction");
}

/// `cohort model lora --pipeline ... --chain-rpc URL --contract ADDR`: the stage servers are
/// checked against their declarations on the chain, an honest run pays each server into
/// escrow on the chain for the tokens it processed, and verifiers started with
/// `--attest-chain-rpc` attest on the chain the claims they catch: the quorum slashes the
/// cheat, which the next run refuses before any step.
#[test]
fn a_pipeline_on_a_chain_is_checked_paid_and_attested_there() {
    let Some(anvil) = Anvil::start("a_pipeline_on_a_chain") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (model, text_file) = common::tiny_model(dir);
    let funder: PrivateKeySigner = FUNDER_KEY.parse().unwrap();
    let chain = EvmRpcLedger::connect(anvil.url(), Some(funder)).unwrap();
    let gov = Identity::from_seed(32, "governance");
    let mut proto = Protocol::deploy(chain, &gov).unwrap();
    let party = |name: &str, proto: &Protocol<EvmRpcLedger>| {
        let id = Identity::from_seed(32, name);
        let key = dir.join(format!("{name}.pem"));
        keyfile::write_new(&key, &id).unwrap();
        let chain = proto.backend().chain_address(&id);
        Party { key, id, chain }
    };
    let [head, mid, cheat, v1, v2, tail, client] =
        ["head", "mid", "cheat", "v1", "v2", "tail", "client"].map(|n| party(n, &proto));
    for who in [&head, &mid, &cheat, &v1, &v2, &tail, &client] {
        proto.mint(&gov, who.chain, tokens(5_000)).unwrap();
    }
    let contract = proto.address().to_string();
    drop(proto);
    let place = [
        "--chain-rpc",
        anvil.url(),
        "--contract",
        contract.as_str(),
        "--funder-key",
        FUNDER_KEY,
    ];
    for (s, layers) in [
        (&head, "0..1"),
        (&mid, "1..3"),
        (&cheat, "1..3"),
        (&v1, "1..3"),
        (&v2, "1..3"),
        (&tail, "3..4"),
    ] {
        let mut a = vec!["stage", "register"];
        a.extend_from_slice(&place);
        a.extend_from_slice(&[
            "--key",
            p(&s.key),
            "--model",
            p(&model),
            "--layers",
            layers,
            "--stake",
            "1500",
        ]);
        let o = cohort(&a);
        assert!(o.status.success(), "{}", text(&o));
    }
    let first = serve_with(&model, "0..1", &["--key", p(&head.key)]);
    let honest = serve_with(&model, "1..3", &["--key", p(&mid.key)]);
    let last = serve_with(&model, "3..4", &["--key", p(&tail.key)]);
    let lora = |out: &str, middle: &Server, extra: &[&str]| {
        let list = format!("{},{},{}", first.url, middle.url, last.url);
        let mut a = vec![
            "model",
            "lora",
            p(&model),
            "--data",
            p(&text_file),
            "--out",
            out,
            "--steps",
            "2",
            "--batch",
            "2",
            "--json",
            "--pipeline",
            &list,
            "--insecure",
        ];
        a.extend_from_slice(&place);
        a.extend_from_slice(extra);
        cohort(&a)
    };
    let show = |server: &Party, period: Option<&str>| -> Value {
        let key = server.public_key();
        let mut a = vec!["stage", "show", "--json", "--server", &key];
        a.extend_from_slice(&place);
        if let Some(period) = period {
            a.extend_from_slice(&["--period", period]);
        }
        let o = cohort(&a);
        assert!(o.status.success(), "{}", text(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    };

    // An honest run pays each server for the tokens its layers processed, on the chain.
    let out = dir.join("paid");
    let o = lora(
        p(&out),
        &honest,
        &["--key", p(&client.key), "--pay-per-token", "0.01"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let paid = v["paid"].as_array().unwrap();
    assert_eq!(paid.len(), 3, "{v}");
    for (entry, server) in paid.iter().zip([&head, &mid, &tail]) {
        assert_eq!(entry["address"], server.json(), "{entry}");
        assert_eq!(entry["tokens"], 2 * 2 * 128, "{entry}");
        let period = entry["period"].as_u64().unwrap().to_string();
        let shown = show(server, Some(&period));
        assert_eq!(shown["escrow"]["tokens"], 2 * 2 * 128, "{shown}");
        assert_eq!(
            shown["escrow"]["amount"],
            (tokens(1) / U256::from(100) * U256::from(2 * 2 * 128)).to_string()
        );
    }

    // A server not declared on the chain is refused before any step.
    let stranger = serve(&model, "1..3");
    let o = lora(p(&dir.join("stranger")), &stranger, &[]);
    assert!(!o.status.success());
    assert!(text(&o).contains("has no key"), "{}", text(&o));
    let undeclared = Identity::from_seed(32, "undeclared");
    let undeclared_key = dir.join("undeclared.pem");
    keyfile::write_new(&undeclared_key, &undeclared).unwrap();
    let unknown = serve_with(&model, "1..3", &["--key", p(&undeclared_key)]);
    let o = lora(p(&dir.join("unknown")), &unknown, &[]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("no participant registered it"),
        "{}",
        text(&o)
    );

    // Verifiers attesting on the chain: the cheat is slashed as it is caught.
    let liar = serve_with(
        &model,
        "1..3",
        &["--misbehave", "noise=0.01", "--key", p(&cheat.key)],
    );
    let verifiers: Vec<Server> = [&v1, &v2]
        .iter()
        .map(|v| {
            serve_with(
                &model,
                "1..3",
                &[
                    "--key",
                    p(&v.key),
                    "--attest-chain-rpc",
                    anvil.url(),
                    "--attest-contract",
                    &contract,
                    "--attest-funder-key",
                    FUNDER_KEY,
                ],
            )
        })
        .collect();
    let vlist = format!("{},{}", verifiers[0].url, verifiers[1].url);
    let o = lora(
        p(&dir.join("caught")),
        &liar,
        &["--verifiers", &vlist, "--verify-rate", "1"],
    );
    assert!(!o.status.success(), "not caught");
    let said = text(&o);
    assert!(said.contains("(attestation 1 of 2)"), "{said}");
    assert!(said.contains("(attestation 2 of 2): slashed"), "{said}");
    let shown = show(&cheat, None);
    assert_eq!(shown["servers"][0]["active"], false, "{shown}");
    // The next run refuses the slashed server before any step.
    let o = lora(p(&dir.join("late")), &liar, &[]);
    assert!(!o.status.success());
    assert!(text(&o).contains("was slashed for fraud"), "{}", text(&o));
}
