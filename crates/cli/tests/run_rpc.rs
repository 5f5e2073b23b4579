#![cfg(feature = "evm-rpc")]
//! `cohort run --chain-rpc URL --funder-key HEX` against a real anvil, differentially against
//! the same run on the embedded ledger.
//!
//! Needs anvil: `<workspace>/contracts/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil`
//! (`npm ci` in `contracts/`) or `$COHORT_ANVIL`. Without it these tests fail, unless
//! `COHORT_SKIP_ANVIL=1`, which turns them into a printed skip.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{cohort, p, text};
use serde_json::{Value, json};

/// anvil's first default account (funds the derived accounts).
const ANVIL_KEY0: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

/// attack-linear.toml shrunk: 6 clients, all sampled (so both attackers, clients 4 and 5, send
/// sign-flipped updates every round), 2 rounds.
const SHRINK: [&str; 3] = [
    "clients=6",
    "coordinator.clients_per_round=6",
    "coordinator.rounds=2",
];

/// An anvil child process on a free port, killed on drop.
struct Anvil {
    child: Child,
    url: String,
    port: u16,
}

impl Anvil {
    /// Starts anvil with the embedded EVM's rules (Osaka); `None` (after printing why) when
    /// anvil is absent and `COHORT_SKIP_ANVIL=1`.
    fn start(test: &str) -> Option<Self> {
        let bin = std::env::var_os("COHORT_ANVIL")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("../../contracts/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil")
            });
        if !bin.is_file() {
            if std::env::var("COHORT_SKIP_ANVIL").as_deref() == Ok("1") {
                eprintln!(
                    "skipping {test}: no anvil at {} (COHORT_SKIP_ANVIL=1)",
                    bin.display()
                );
                return None;
            }
            panic!(
                "no anvil at {}: run `npm ci` in contracts/ (or set COHORT_ANVIL=/path/to/anvil, \
                 or COHORT_SKIP_ANVIL=1 to skip the anvil tests)",
                bin.display()
            );
        }
        let port = free_port();
        let child = Command::new(&bin)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--silent",
            ])
            .args(["--hardfork", "osaka"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let anvil = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while rpc(port, "eth_blockNumber", json!([])).is_none() {
            assert!(
                Instant::now() < deadline,
                "anvil at {} did not answer within 20 s",
                anvil.url
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(anvil)
    }
}

impl Drop for Anvil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nobody listens on (the OS picked it free; the listener is gone).
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// One JSON-RPC call over plain HTTP/1.0: the `result`, or `None` if nothing answered.
fn rpc(port: u16, method: &str, params: Value) -> Option<Value> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let body = json!({ "jsonrpc": "2.0", "id": 1, "method": method, "params": params }).to_string();
    write!(
        s,
        "POST / HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (_, body) = out.split_once("\r\n\r\n")?;
    let v: Value = serde_json::from_str(body).ok()?;
    v.get("result").cloned()
}

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
        &["--chain-rpc", &anvil.url, "--funder-key", ANVIL_KEY0],
    );
    assert!(!tmp.path().join("chain/ledger").exists());

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
    assert_eq!(rec["chain_rpc"], json!(anvil.url));
    let contract = rec["contract"].as_str().unwrap();
    let code = rpc(anvil.port, "eth_getCode", json!([contract, "latest"])).unwrap();
    assert!(
        code.as_str().unwrap().len() > 1_000,
        "no contract code at {contract}: {code}"
    );
    let txs = rec["transactions"].as_array().unwrap();
    assert_eq!(txs.len() as u64, c["ledger_entries"].as_u64().unwrap());
    assert!(txs.len() > 50, "{} transactions", txs.len());
    for t in [&txs[0], &txs[txs.len() / 2], &txs[txs.len() - 1]] {
        let receipt = rpc(
            anvil.port,
            "eth_getTransactionReceipt",
            json!([t["tx_hash"]]),
        )
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
    assert!(report.contains(&anvil.url), "{report}");
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
    let first = rpc(
        anvil.port,
        "eth_getTransactionReceipt",
        json!([txs[0]["tx_hash"]]),
    )
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
    args.extend([p(&out), "--chain-rpc", &url, "--funder-key", ANVIL_KEY0]);
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
