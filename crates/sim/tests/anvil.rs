#![cfg(feature = "anvil")]
//! The simulator's contracts on anvil, against the same calls in the embedded revm.
//!
//! `cargo test -p cohort-sim --features anvil --test anvil`. Needs anvil:
//! `<workspace>/contracts/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil` (`npm ci` in
//! `contracts/`) or `$COHORT_ANVIL`; without it the tests fail, unless `COHORT_SKIP_ANVIL=1`,
//! which turns them into a printed skip. anvil runs with `--auto-impersonate`, so the
//! simulator's participant addresses send their own transactions, as in revm.
//!
//! Both chains get the same deployments (the real bytecode of `contracts/out/`), then the same
//! scripted calls, one a second on both clocks (anvil's offset by the deployment block's
//! time); each call must succeed or revert on both, and at the end every balance, total, the
//! model's `stateHash` and its predictions on real test reviews must be equal.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use alloy_primitives::{Address, Bytes, U256};
use alloy_sol_types::{SolCall, SolConstructor};
use cohort_sim::chain::bindings::{
    DepositRefundTake, NaiveBayes as NbContract, Points, SparsePerceptron,
};
use cohort_sim::chain::{Chain, pack, participant};
use cohort_sim::drt::TOKEN_UNIT;
use cohort_sim::{ChainModel, Dataset, EtaSchedule, FitConfig, NaiveBayes, Perceptron, Sample};
use rand::SeedableRng;
use serde_json::{Value, json};

/// An anvil child process on a free port, killed on drop.
struct Anvil {
    child: Child,
    port: u16,
}

impl Anvil {
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
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(&bin)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--silent",
            ])
            .args(["--hardfork", "osaka", "--auto-impersonate"])
            .args(["--gas-limit", "100000000", "--disable-code-size-limit"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut a = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = a.child.try_wait() {
                panic!("anvil exited during startup: {status}");
            }
            if a.try_rpc("eth_blockNumber", json!([])).is_some() {
                return Some(a);
            }
            assert!(
                Instant::now() < deadline,
                "anvil did not answer within 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One JSON-RPC request over plain HTTP/1.1 (std only).
    fn try_rpc(&self, method: &str, params: Value) -> Option<Value> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
        let body =
            json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string();
        write!(
            s,
            "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let json = out.split("\r\n\r\n").nth(1)?;
        serde_json::from_str(json).ok()
    }

    fn rpc(&self, method: &str, params: Value) -> Value {
        let v = self
            .try_rpc(method, params.clone())
            .unwrap_or_else(|| panic!("{method}: no answer"));
        if let Some(e) = v.get("error") {
            panic!("{method}({params}): {e}");
        }
        v["result"].clone()
    }

    /// Sends a transaction from `from` at `time` (next block's timestamp, if given); true if
    /// it succeeded, and the created address.
    fn send(
        &self,
        time: Option<u64>,
        from: Address,
        to: Option<Address>,
        data: &[u8],
    ) -> (bool, Option<Address>) {
        if let Some(t) = time {
            self.rpc("evm_setNextBlockTimestamp", json!([t]));
        }
        let mut tx = json!({
            "from": from.to_string(),
            "data": format!("0x{}", hex::encode(data)),
            "gas": "0x1000000",
        });
        if let Some(to) = to {
            tx["to"] = json!(to.to_string());
        }
        let hash = self.rpc("eth_sendTransaction", json!([tx]));
        let deadline = Instant::now() + Duration::from_secs(20);
        let r = loop {
            let r = self.rpc("eth_getTransactionReceipt", json!([hash.clone()]));
            if !r.is_null() {
                break r;
            }
            assert!(Instant::now() < deadline, "no receipt for {hash}");
            std::thread::sleep(Duration::from_millis(2));
        };
        let ok = r["status"] == json!("0x1");
        if !ok && std::env::var_os("ANVIL_DEBUG").is_some() {
            let tr = self.rpc(
                "debug_traceTransaction",
                json!([hash, {"tracer": "callTracer"}]),
            );
            eprintln!("reverted: {r}\ntrace: {tr}");
        }
        let created = r["contractAddress"].as_str().and_then(|a| a.parse().ok());
        (ok, created)
    }

    fn call<C: SolCall>(&self, to: Address, call: &C) -> C::Return {
        let out = self.rpc(
            "eth_call",
            json!([{"to": to.to_string(), "data": format!("0x{}", hex::encode(call.abi_encode()))}, "latest"]),
        );
        let bytes = hex::decode(out.as_str().unwrap().trim_start_matches("0x")).unwrap();
        C::abi_decode_returns(&bytes).unwrap()
    }

    fn block_time(&self) -> u64 {
        let b = self.rpc("eth_getBlockByNumber", json!(["latest", false]));
        u64::from_str_radix(
            b["timestamp"].as_str().unwrap().trim_start_matches("0x"),
            16,
        )
        .unwrap()
    }

    fn fund_gas(&self, who: Address) {
        self.rpc(
            "anvil_setBalance",
            json!([who.to_string(), "0x33b2e3c9fd0803ce8000000"]),
        );
    }
}

impl Drop for Anvil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The same calls on revm and on anvil.
struct Twin {
    anvil: Anvil,
    revm: Chain,
    /// anvil's time of sim time 0.
    offset: u64,
}

impl Twin {
    /// Deploys on both (revm at time 0); returns the address (the same on both: same sender,
    /// same nonce).
    fn deploy(&mut self, from: Address, code: Vec<u8>) -> Address {
        let a = self
            .revm
            .deploy(0, from, Bytes::from(code.clone()))
            .unwrap();
        let (ok, b) = self.anvil.send(None, from, None, &code);
        assert!(ok, "deployment on anvil failed");
        assert_eq!(
            Some(a),
            b,
            "the same sender and nonce give the same address"
        );
        a
    }

    /// Sends `call` on both at sim time `t` (None: setup, anvil's own clock); both must
    /// agree on success.
    fn send<C: SolCall>(&mut self, t: Option<u64>, from: Address, to: Address, call: &C) -> bool {
        let r = self.revm.send(t.unwrap_or(0), from, to, call).unwrap();
        let (ok, _) = self.anvil.send(
            t.map(|t| self.offset + t),
            from,
            Some(to),
            &call.abi_encode(),
        );
        assert_eq!(
            r.is_ok(),
            ok,
            "{}: revm {:?}, anvil ok={ok}",
            C::SIGNATURE,
            r.err()
        );
        ok
    }

    /// A view on both; they must be equal.
    fn view<C: SolCall>(&mut self, to: Address, call: &C) -> C::Return
    where
        C::Return: PartialEq + std::fmt::Debug,
    {
        let a = self.revm.view(0, to, call).unwrap();
        let b = self.anvil.call(to, call);
        assert_eq!(a, b, "{}", C::SIGNATURE);
        a
    }
}

fn imdb() -> Dataset {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/imdb");
    Dataset::load(&dir, 100, Some(160)).unwrap()
}

fn twin(test: &str) -> Option<Twin> {
    let anvil = Anvil::start(test)?;
    for i in [usize::MAX, 0, 1, 2] {
        anvil.fund_gas(participant(i));
    }
    Some(Twin {
        anvil,
        revm: Chain::new(),
        offset: 0,
    })
}

fn same_predictions(t: &mut Twin, model: Address, test: &[Sample]) {
    let mut ones = 0;
    for s in test {
        ones += t.view(
            model,
            &SparsePerceptron::predictCall {
                features: pack(&s.features),
            },
        );
    }
    assert!(
        ones > 0 && (ones as usize) < test.len(),
        "both labels predicted"
    );
}

#[test]
fn deposit_refund_take_with_the_perceptron_on_anvil_matches_revm() {
    let Some(mut t) = twin("deposit_refund_take_with_the_perceptron_on_anvil_matches_revm") else {
        return;
    };
    let data = imdb();
    let (init, rest) = data.train.split_at(100);
    let mut model = Perceptron::new(100, EtaSchedule::default());
    model.fit(
        init,
        &FitConfig::default(),
        &mut rand_chacha::ChaCha8Rng::seed_from_u64(1),
    );
    let op = participant(usize::MAX);
    // The model, deployed and loaded on both through the same calls.
    let ctor = SparsePerceptron::constructorCall {
        numFeatures_: 100,
        etaNumerator_: U256::from(model.eta.numerator),
        etaOffset_: U256::from(model.eta.offset),
    };
    let m = t.deploy(
        op,
        [SparsePerceptron::BYTECODE.as_ref(), &ctor.abi_encode()].concat(),
    );
    t.send(
        None,
        op,
        m,
        &SparsePerceptron::loadCall {
            bias_: cohort_sim::perceptron::i256(model.bias),
            samplesSeen_: U256::from(model.samples_seen),
            from: 0,
            w: model
                .weights
                .iter()
                .map(|&w| cohort_sim::perceptron::i256(w))
                .collect(),
        },
    );
    let ctor = DepositRefundTake::constructorCall {
        model_: m,
        costWeight_: U256::from(1_000_000u64),
        refundWait_: 86_400,
        anyAddressClaimWait_: 9 * 86_400,
    };
    let drt = t.deploy(
        op,
        [DepositRefundTake::BYTECODE.as_ref(), &ctor.abi_encode()].concat(),
    );
    t.offset = t.anvil.block_time();
    t.send(None, op, m, &SparsePerceptron::setOwnerCall { next: drt });
    for i in 0..2 {
        t.send(
            None,
            op,
            drt,
            &DepositRefundTake::fundCall {
                to: participant(i),
                amount: U256::from(1000 * TOKEN_UNIT),
            },
        );
    }
    // 40 contributions, one every 10 minutes, participant 1 flipping its labels.
    let mut now = 0;
    for (k, s) in rest.iter().take(40).enumerate() {
        now += 600;
        let who = k % 2;
        let label = if who == 1 { 1 - s.label } else { s.label };
        assert!(t.send(
            Some(now),
            participant(who),
            drt,
            &DepositRefundTake::addDataCall {
                features: pack(&s.features),
                label,
                maxDeposit: U256::from(100 * TOKEN_UNIT),
            },
        ));
    }
    // Two days later: every refund, then every report; some succeed, some revert, the same
    // on both chains.
    now += 2 * 86_400;
    let (mut ok, mut refused) = (0, 0);
    for pass in 0..2 {
        for (k, s) in rest.iter().take(40).enumerate() {
            now += 1;
            let who = if pass == 0 { k % 2 } else { 1 - k % 2 };
            let features = pack(&s.features);
            let id = U256::from(k);
            let sent = if pass == 0 {
                t.send(
                    Some(now),
                    participant(who),
                    drt,
                    &DepositRefundTake::refundCall { id, features },
                )
            } else {
                t.send(
                    Some(now),
                    participant(who),
                    drt,
                    &DepositRefundTake::reportCall { id, features },
                )
            };
            if sent {
                ok += 1;
            } else {
                refused += 1;
            }
        }
    }
    assert!(ok > 10 && refused > 10, "{ok} succeeded, {refused} refused");
    for i in 0..2 {
        t.view(drt, &DepositRefundTake::balanceOfCall(participant(i)));
        t.view(drt, &DepositRefundTake::numGoodCall(participant(i)));
    }
    t.view(drt, &DepositRefundTake::totalMintedCall {});
    t.view(drt, &DepositRefundTake::escrowedCall {});
    t.view(drt, &DepositRefundTake::totalGoodCall {});
    t.view(m, &SparsePerceptron::stateHashCall {});
    same_predictions(&mut t, m, &data.test[..60]);
}

#[test]
fn points_with_naive_bayes_on_anvil_matches_revm() {
    let Some(mut t) = twin("points_with_naive_bayes_on_anvil_matches_revm") else {
        return;
    };
    let data = imdb();
    let (init, rest) = data.train.split_at(100);
    let mut nb = NaiveBayes::new(100);
    nb.fit(init);
    let op = participant(usize::MAX);
    // Deploy the model with the library's own deployment on revm, and the same transactions
    // on anvil: the library's calls are replayed by hand for anvil.
    let ctor = NbContract::constructorCall { numFeatures_: 100 };
    let m = t.deploy(
        op,
        [NbContract::BYTECODE.as_ref(), &ctor.abi_encode()].concat(),
    );
    t.send(
        None,
        op,
        m,
        &NbContract::loadCall {
            docs0: U256::from(nb.docs[0]),
            docs1: U256::from(nb.docs[1]),
            totals0: U256::from(nb.totals[0]),
            totals1: U256::from(nb.totals[1]),
            from: 0,
            counts0: nb.counts.iter().map(|c| c[0]).collect(),
            counts1: nb.counts.iter().map(|c| c[1]).collect(),
        },
    );
    // The chain state is the reference's.
    nb.check_chain(&mut t.revm, m, 0).unwrap();
    let ctor = Points::constructorCall {
        model_: m,
        refundWait_: 86_400,
    };
    let pts = t.deploy(op, [Points::BYTECODE.as_ref(), &ctor.abi_encode()].concat());
    t.offset = t.anvil.block_time();
    t.send(None, op, m, &NbContract::setOwnerCall { next: pts });
    let mut now = 0;
    for (k, s) in rest.iter().take(30).enumerate() {
        now += 60;
        let who = k % 3;
        let label = if who == 2 { 1 - s.label } else { s.label };
        assert!(t.send(
            Some(now),
            participant(who),
            pts,
            &Points::addDataCall {
                features: pack(&s.features),
                label,
            },
        ));
    }
    now += 86_400 + 1;
    let mut earned = 0;
    for (k, s) in rest.iter().take(30).enumerate() {
        now += 1;
        earned += usize::from(t.send(
            Some(now),
            participant(k % 3),
            pts,
            &Points::refundCall {
                id: U256::from(k),
                features: pack(&s.features),
            },
        ));
    }
    assert!(earned > 5 && earned < 30, "{earned} points");
    for i in 0..3 {
        t.view(pts, &Points::pointsOfCall(participant(i)));
    }
    assert_eq!(t.view(pts, &Points::totalPointsCall {}), earned as u64);
    t.view(m, &NbContract::stateHashCall {});
    t.view(
        m,
        &NbContract::cellsCall {
            from: 0,
            count: 100,
        },
    );
    let mut ones = 0;
    for s in &data.test[..60] {
        ones += t.view(
            m,
            &NbContract::predictCall {
                features: pack(&s.features),
            },
        );
    }
    assert!(ones > 0 && ones < 60);
}
