#![cfg(feature = "evm-rpc")]
//! `cohort run --chain-rpc URL --funder-key HEX` against a real anvil, differentially against
//! the same run on the embedded ledger.
//!
//! Needs anvil (`npm ci` in `contracts/`, or `$COHORT_ANVIL`; cohort-testkit's `find_anvil`
//! says where it looks). Without it these tests fail, unless `COHORT_SKIP_ANVIL=1`, which
//! turns them into a printed skip.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use cohort_testkit::{Anvil, FUNDER_KEY, free_port};
use common::{cohort, p, text};
use serde_json::{Value, json};

/// attack-linear.toml shrunk: 6 clients, all sampled (so both attackers, clients 4 and 5, send
/// sign-flipped updates every round), 2 rounds.
const SHRINK: [&str; 3] = [
    "clients=6",
    "coordinator.clients_per_round=6",
    "coordinator.rounds=2",
];

fn example(name: &str) -> String {
    format!("{}/../../examples/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// `cohort run attack-linear.toml` shrunk, into `out`, with `extra` arguments; the parsed
/// summary.json.
fn run(out: &Path, extra: &[&str]) -> Value {
    let config = example("attack-linear.toml");
    let mut args = vec!["run", config.as_str(), "--out", p(out), "--json"];
    for s in SHRINK {
        args.extend(["--set", s]);
    }
    args.extend(extra);
    let o = cohort(&args);
    assert!(o.status.success(), "cohort {args:?} failed:\n{}", text(&o));
    let printed: Value = serde_json::from_slice(&o.stdout).expect("--json prints JSON");
    assert!(printed["summary"]["rounds"].is_array(), "{printed}");
    serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap()
}

#[test]
fn a_run_on_anvil_matches_the_embedded_run_and_its_transactions_are_on_chain() {
    let Some(anvil) = Anvil::start("a_run_on_anvil_matches_the_embedded_run") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let embedded = run(&tmp.path().join("embedded"), &[]);
    let chain = run(
        &tmp.path().join("chain"),
        &["--chain-rpc", anvil.url(), "--funder-key", FUNDER_KEY],
    );
    assert!(!tmp.path().join("chain/ledger").exists());
    // The same run with every party behind its own gRPC session, signing its own chain
    // transactions for the coordinator to relay.
    let grpc = run(
        &tmp.path().join("chain-grpc"),
        &[
            "--chain-rpc",
            anvil.url(),
            "--funder-key",
            FUNDER_KEY,
            "--transport",
            "grpc",
        ],
    );
    assert_eq!(
        common::outcome(&grpc["summary"]),
        common::outcome(&chain["summary"])
    );
    assert_eq!(
        grpc["summary"]["final_holdings"],
        chain["summary"]["final_holdings"]
    );
    // As many transactions (not the same bytes: validators' salts are fresh randomness).
    let txs = |v: &Value| v["chain"]["transactions"].as_array().unwrap().len();
    assert_eq!(txs(&grpc), txs(&chain));
    assert_ne!(grpc["chain"]["contract"], chain["chain"]["contract"]);

    // The same experiment: same rounds, verdicts, consensus scores, payouts and test metrics.
    let (e, c) = (&embedded["summary"], &chain["summary"]);
    let rounds = c["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 2);
    for (re, rc) in e["rounds"].as_array().unwrap().iter().zip(rounds) {
        for key in [
            "accepted",
            "rejected",
            "consensus",
            "payouts",
            "submitted",
            "scores",
            "holdings",
            "test",
        ] {
            assert_eq!(re[key], rc[key], "round {}: {key} differs", rc["round"]);
        }
    }
    // The attackers (clients 4 and 5) are rejected and slashed on chain, the others accepted.
    for r in rounds {
        assert_eq!(r["accepted"], json!([0, 1, 2, 3]), "{r}");
        let mut rejected: Vec<u64> = r["rejected"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        rejected.sort_unstable();
        assert_eq!(rejected, [4, 5], "{r}");
        assert_ne!(r["payouts"]["client-4"]["slash"], json!("0"), "{r}");
    }
    assert_eq!(e["final_holdings"], c["final_holdings"]);
    let last = |s: &Value| s["rounds"][1]["test"]["loss"].as_f64().unwrap();
    assert_eq!(last(e), last(c));
    assert!(last(c) < c["initial"]["loss"].as_f64().unwrap());

    // The record of the chain: its id, the contract and every transaction, all on chain.
    let rec = &chain["chain"];
    assert_eq!(rec["chain_id"], json!(31337), "{rec}");
    assert_eq!(rec["chain_rpc"], json!(anvil.url()));
    let contract = rec["contract"].as_str().unwrap();
    let code = anvil
        .result("eth_getCode", json!([contract, "latest"]))
        .unwrap();
    assert!(
        code.as_str().unwrap().len() > 1_000,
        "no contract code at {contract}: {code}"
    );
    let txs = rec["transactions"].as_array().unwrap();
    assert_eq!(txs.len() as u64, c["ledger_entries"].as_u64().unwrap());
    assert!(txs.len() > 50, "{} transactions", txs.len());
    for t in [&txs[0], &txs[txs.len() / 2], &txs[txs.len() - 1]] {
        let receipt = anvil
            .result("eth_getTransactionReceipt", json!([t["tx_hash"]]))
            .unwrap();
        assert_eq!(receipt["status"], json!("0x1"), "{receipt}");
        let block = u64::from_str_radix(
            receipt["blockNumber"]
                .as_str()
                .unwrap()
                .trim_start_matches("0x"),
            16,
        )
        .unwrap();
        assert_eq!(json!(block), t["block"]);
    }
    // The report is written in chain mode too, from the chain's record: it names the chain,
    // the contract and the transaction count where an embedded run shows its ledger check.
    let report = std::fs::read_to_string(tmp.path().join("chain/report.html"))
        .expect("chain/report.html is written");
    assert!(report.contains(">Chain</h2>"), "{report}");
    assert!(report.contains("id <b>31337</b>"), "{report}");
    assert!(report.contains(anvil.url()), "{report}");
    assert!(
        report.to_lowercase().contains(&contract.to_lowercase()),
        "{report}"
    );
    assert!(
        report.contains(&format!("{} transactions", txs.len())),
        "{report}"
    );
    assert!(!report.contains(">Ledger</h2>"), "{report}");
    let embedded_report = std::fs::read_to_string(tmp.path().join("embedded/report.html")).unwrap();
    assert!(embedded_report.contains(">Ledger</h2>"));
    assert!(embedded_report.contains("verified"));

    // The deployment is the first recorded transaction.
    let first = anvil
        .result("eth_getTransactionReceipt", json!([txs[0]["tx_hash"]]))
        .unwrap();
    assert_eq!(
        first["contractAddress"].as_str().unwrap().to_lowercase(),
        contract.to_lowercase()
    );
}

#[test]
fn an_unreachable_chain_and_a_bad_key_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{}", free_port());
    let config = example("attack-linear.toml");
    let base = ["run", config.as_str(), "--out"];
    let out = tmp.path().join("a");
    let mut args = base.to_vec();
    args.extend([p(&out), "--chain-rpc", &url, "--funder-key", FUNDER_KEY]);
    let o = cohort(&args);
    assert!(!o.status.success());
    let err = text(&o);
    assert!(err.contains(&format!("cannot reach {url}")), "{err}");

    let out = tmp.path().join("b");
    let mut args = base.to_vec();
    args.extend([p(&out), "--chain-rpc", &url, "--funder-key", "0xnot-a-key"]);
    let o = cohort(&args);
    assert!(!o.status.success());
    let err = text(&o);
    assert!(
        err.contains("--funder-key is not a secp256k1 private key"),
        "{err}"
    );
    // Nothing was written for either.
    assert!(!tmp.path().join("a/summary.json").exists());
    assert!(!tmp.path().join("b").exists());
}

/// `examples/market.toml` on anvil, its parties behind gRPC sessions: the same royalties and
/// refusals as on the embedded ledger, read back with `cohort market list|show` from the
/// chain; then the run's coordinator and clients govern it there with `cohort gov` (a proposal
/// passes 60-40 and executes after its timelock; the 40% alone cannot pass one).
#[test]
fn a_market_run_and_its_governance_on_anvil() {
    let Some(anvil) = Anvil::start("a_market_run_and_its_governance_on_anvil") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let config = example("market.toml");
    let run = |out: &Path, extra: &[&str]| -> Value {
        let mut args = vec!["run", config.as_str(), "--out", p(out), "--json"];
        args.extend(extra);
        let o = cohort(&args);
        assert!(o.status.success(), "cohort {args:?} failed:\n{}", text(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let embedded = run(&tmp.path().join("embedded"), &[]);
    let chain = run(
        &tmp.path().join("chain"),
        &[
            "--chain-rpc",
            anvil.url(),
            "--funder-key",
            FUNDER_KEY,
            "--transport",
            "grpc",
        ],
    );
    let market = |s: &Value| -> Vec<(Value, Value)> {
        s["summary"]["rounds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["royalties"].clone(), r["refused"].clone()))
            .collect()
    };
    assert_eq!(market(&chain), market(&embedded));
    assert!(
        market(&chain)
            .iter()
            .all(|(_, refused)| *refused == json!([2]))
    );
    assert!(
        market(&chain)
            .iter()
            .any(|(paid, _)| paid["client-0"].is_string())
    );
    let contract = chain["chain"]["contract"].as_str().unwrap().to_owned();
    let on_chain = |args: &[&str]| -> Value {
        let mut a = args.to_vec();
        a.extend([
            "--chain-rpc",
            anvil.url(),
            "--contract",
            &contract,
            "--json",
        ]);
        let o = cohort(&a);
        assert!(o.status.success(), "cohort {a:?}:\n{}", text(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let list = on_chain(&["market", "list"]);
    let rows = list["listings"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{list}");
    assert!(rows.iter().any(|r| r["royalties"] != "0"), "{list}");

    // The run's keys are derived from its seed (3): the coordinator and two clients govern it.
    let key = |name: &str| {
        let f = tmp.path().join(format!("{name}.pem"));
        cohort_core::keyfile::write_new(&f, &cohort_core::Identity::from_seed(3, name)).unwrap();
        f.to_str().unwrap().to_owned()
    };
    let (coord, c0, c1) = (key("coordinator"), key("client-0"), key("client-1"));
    let signed = |k: &str, args: &[&str]| -> Value {
        let mut a = args.to_vec();
        a.extend(["--key", k, "--funder-key", FUNDER_KEY]);
        on_chain(&a)
    };
    let enabled = signed(
        &coord,
        &["gov", "enable", "--voting-period", "60", "--timelock", "30"],
    );
    let run_addr = enabled["run"].as_str().unwrap().to_owned();
    signed(&c0, &["gov", "bond", "--run", &run_addr, "--amount", "60"]);
    signed(&c1, &["gov", "bond", "--run", &run_addr, "--amount", "40"]);
    let hp = tmp.path().join("hp.toml");
    std::fs::write(&hp, "[task]\nlr = 0.05\n").unwrap();
    let hp = p(&hp);
    let lone = signed(
        &c1,
        &["gov", "propose", "--run", &run_addr, "--hyperparams", hp],
    );
    let both = signed(
        &c0,
        &["gov", "propose", "--run", &run_addr, "--hyperparams", hp],
    );
    let (lone, both) = (lone["proposal"].to_string(), both["proposal"].to_string());
    signed(
        &c1,
        &[
            "gov",
            "vote",
            "--run",
            &run_addr,
            "--proposal",
            &lone,
            "--for",
        ],
    );
    signed(
        &c0,
        &[
            "gov",
            "vote",
            "--run",
            &run_addr,
            "--proposal",
            &both,
            "--for",
        ],
    );
    signed(
        &c1,
        &[
            "gov",
            "vote",
            "--run",
            &run_addr,
            "--proposal",
            &both,
            "--against",
        ],
    );
    // After the vote and the timelock (anvil's clock moved on with --at).
    let ends = on_chain(&["gov", "show", "--run", &run_addr]);
    let later = ends["proposals"][1]["executable_at"].as_u64().unwrap() + 1;
    let later = later.to_string();
    let o = cohort(&[
        "gov",
        "execute",
        "--run",
        &run_addr,
        "--proposal",
        &lone,
        "--key",
        &c0,
        "--funder-key",
        FUNDER_KEY,
        "--chain-rpc",
        anvil.url(),
        "--contract",
        &contract,
        "--at",
        &later,
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("did not pass"), "{}", text(&o));
    let after = (ends["proposals"][1]["executable_at"].as_u64().unwrap() + 2).to_string();
    signed(
        &c0,
        &[
            "gov",
            "execute",
            "--run",
            &run_addr,
            "--proposal",
            &both,
            "--at",
            &after,
        ],
    );
    let show = on_chain(&["gov", "show", "--run", &run_addr]);
    let statuses: Vec<&str> = show["proposals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["rejected", "executed"], "{show}");
}
