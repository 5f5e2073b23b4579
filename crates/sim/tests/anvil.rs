#![cfg(feature = "anvil")]
//! The simulator's contracts on anvil, against the same calls in the embedded revm.
//!
//! `cargo test -p cohort-sim --features anvil --test anvil`. Needs anvil (`npm ci` in
//! `contracts/`, or `$COHORT_ANVIL`; cohort-testkit's `find_anvil` says where it looks);
//! without it the tests fail, unless `COHORT_SKIP_ANVIL=1`, which turns them into a printed
//! skip. anvil runs with `--auto-impersonate`, so the
//! simulator's participant addresses send their own transactions, as in revm.
//!
//! Both chains get the same deployments (the real bytecode of `contracts/out/`), then the same
//! scripted calls: each is mined on anvil first (at a scripted time after the mechanism's
//! deployment block, or at anvil's own clock during set-up) and then executed on revm at that
//! block's timestamp. Each call must succeed on both with the same events and gas used, or
//! revert on both with the same custom error and arguments; at the end every balance, total,
//! the model's `stateHash` and its predictions on real test reviews must be equal. Three
//! scenarios: Deposit-Refund-Take with the perceptron, Points with Naive Bayes, and the
//! prediction market with nearest centroid (commit, contributions with deposits, reveal in
//! pieces, two reward rounds on fresh models, claims), the last also checked call by call
//! against the Rust reference `Market`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use alloy_primitives::{Address, B256, Bytes, Log, U256, keccak256};
use alloy_sol_types::{SolCall, SolConstructor};
use cohort_sim::chain::bindings::{
    DepositRefundTake, NaiveBayes as NbContract, NearestCentroid as NcContract, Points,
    PredictionMarket, SparsePerceptron,
};
use cohort_sim::chain::{Chain, decode_revert, pack, participant};
use cohort_sim::drt::TOKEN_UNIT;
use cohort_sim::market::test_pieces;
use cohort_sim::{
    ChainModel, Dataset, EtaSchedule, FitConfig, Market, MarketParams, NaiveBayes, NearestCentroid,
    Perceptron, Reject, Sample,
};
use serde_json::{Value, json};

/// anvil (cohort-testkit's: on a free port, killed on drop) with the calls these scenarios
/// make.
struct Anvil(cohort_testkit::Anvil);

impl Anvil {
    /// anvil where the simulator's participants send their own transactions
    /// (`--auto-impersonate`), with room for the models' deployments.
    fn start(test: &str) -> Option<Self> {
        cohort_testkit::Anvil::start_with(
            test,
            &[
                "--auto-impersonate",
                "--gas-limit",
                "100000000",
                "--disable-code-size-limit",
            ],
        )
        .map(Self)
    }

    fn rpc(&self, method: &str, params: Value) -> Value {
        let v = self
            .0
            .rpc(method, params.clone())
            .unwrap_or_else(|| panic!("{method}: no answer"));
        if let Some(e) = v.get("error") {
            panic!("{method}({params}): {e}");
        }
        v["result"].clone()
    }

    /// Sends a transaction from `from` at `time` (next block's timestamp, if given) and
    /// returns its receipt.
    fn send(&self, time: Option<u64>, from: Address, to: Option<Address>, data: &[u8]) -> Value {
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
        if r["status"] != json!("0x1") && std::env::var_os("ANVIL_DEBUG").is_some() {
            let tr = self.rpc(
                "debug_traceTransaction",
                json!([hash, {"tracer": "callTracer"}]),
            );
            eprintln!("reverted: {r}\ntrace: {tr}");
        }
        r
    }

    /// The revert data of the reverted transaction of `receipt` (from its call trace).
    fn revert_data(&self, receipt: &Value) -> Vec<u8> {
        let tr = self.rpc(
            "debug_traceTransaction",
            json!([receipt["transactionHash"], {"tracer": "callTracer"}]),
        );
        let out = tr["output"].as_str().unwrap_or("0x");
        hex::decode(out.trim_start_matches("0x")).unwrap()
    }

    fn call<C: SolCall>(&self, to: Address, call: &C) -> C::Return {
        let out = self.rpc(
            "eth_call",
            json!([{"to": to.to_string(), "data": format!("0x{}", hex::encode(call.abi_encode()))}, "latest"]),
        );
        let bytes = hex::decode(out.as_str().unwrap().trim_start_matches("0x")).unwrap();
        C::abi_decode_returns(&bytes).unwrap()
    }

    /// The timestamp of the block of `receipt`.
    fn receipt_time(&self, receipt: &Value) -> u64 {
        let b = self.rpc(
            "eth_getBlockByNumber",
            json!([receipt["blockNumber"], false]),
        );
        hex_u64(&b["timestamp"])
    }

    fn fund_gas(&self, who: Address) {
        self.rpc(
            "anvil_setBalance",
            json!([who.to_string(), "0x33b2e3c9fd0803ce8000000"]),
        );
    }
}

/// The same calls on revm and on anvil, at the same block timestamps: each transaction is
/// mined on anvil first, then executed on revm at the time of anvil's block.
struct Twin {
    anvil: Anvil,
    revm: Chain,
    /// The block time of sim time 0 (on both chains).
    offset: u64,
    /// The block time of the last transaction.
    now: u64,
}

impl Twin {
    /// Deploys on both at anvil's clock; returns the address (the same on both: same sender,
    /// same nonce).
    fn deploy(&mut self, from: Address, code: Vec<u8>) -> Address {
        self.deploy_at(None, from, code)
    }

    /// Deploys on both at sim time `t` (None: anvil's own clock).
    fn deploy_at(&mut self, t: Option<u64>, from: Address, code: Vec<u8>) -> Address {
        let r = self
            .anvil
            .send(t.map(|t| self.offset + t), from, None, &code);
        assert_eq!(r["status"], json!("0x1"), "deployment on anvil failed");
        self.now = self.anvil.receipt_time(&r);
        let a = self
            .revm
            .deploy(self.now, from, Bytes::from(code.clone()))
            .unwrap();
        let b: Option<Address> = r["contractAddress"].as_str().and_then(|a| a.parse().ok());
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
        self.send_both(t, from, to, call).is_ok()
    }

    /// Sends `call` on both at sim time `t` (None: setup, anvil's own clock). Both must
    /// succeed with the same events (emitter, topics, data, in order) and the same gas, or
    /// both revert with the same custom error and arguments. Returns revm's return value, or
    /// the error's name.
    fn send_both<C: SolCall>(
        &mut self,
        t: Option<u64>,
        from: Address,
        to: Address,
        call: &C,
    ) -> Result<C::Return, String> {
        let rc = self.anvil.send(
            t.map(|t| self.offset + t),
            from,
            Some(to),
            &call.abi_encode(),
        );
        self.now = self.anvil.receipt_time(&rc);
        let r = self.revm.send_logged(self.now, from, to, call).unwrap();
        let ok = rc["status"] == json!("0x1");
        match r {
            Ok(sent) => {
                assert!(ok, "{}: succeeded on revm, reverted on anvil", C::SIGNATURE);
                assert_eq!(sent.logs, receipt_logs(&rc), "{}: events", C::SIGNATURE);
                assert_eq!(
                    sent.gas_used,
                    hex_u64(&rc["gasUsed"]),
                    "{}: gas used",
                    C::SIGNATURE
                );
                Ok(sent.value)
            }
            Err(rev) => {
                assert!(
                    !ok,
                    "{}: reverted on revm ({}), succeeded on anvil",
                    C::SIGNATURE,
                    rev.detail
                );
                let theirs = decode_revert(&self.anvil.revert_data(&rc));
                assert_eq!(
                    rev,
                    theirs,
                    "{}: revm {}, anvil {}",
                    C::SIGNATURE,
                    rev.detail,
                    theirs.detail
                );
                Err(rev.name)
            }
        }
    }

    /// A view on both; they must be equal.
    fn view<C: SolCall>(&mut self, to: Address, call: &C) -> C::Return
    where
        C::Return: PartialEq + std::fmt::Debug,
    {
        let a = self.revm.view(self.now, to, call).unwrap();
        let b = self.anvil.call(to, call);
        assert_eq!(a, b, "{}", C::SIGNATURE);
        a
    }
}

fn hex_u64(v: &Value) -> u64 {
    u64::from_str_radix(v.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
}

/// The events of an anvil receipt.
fn receipt_logs(receipt: &Value) -> Vec<Log> {
    receipt["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let topics = l["topics"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap().parse::<B256>().unwrap())
                .collect();
            let data = hex::decode(l["data"].as_str().unwrap().trim_start_matches("0x")).unwrap();
            Log::new_unchecked(
                l["address"].as_str().unwrap().parse().unwrap(),
                topics,
                data.into(),
            )
        })
        .collect()
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
        now: 0,
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
        &mut cohort_core::ChaCha8::new(1),
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
    t.offset = t.now;
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
    t.offset = t.now;
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

/// Deploys the nearest-centroid contract holding `ncc` from `op` at sim time `t` on both (its
/// constructor and one `load`), still owned by `op`.
fn deploy_ncc(t: &mut Twin, time: Option<u64>, op: Address, ncc: &NearestCentroid) -> Address {
    let ctor = NcContract::constructorCall {
        numFeatures_: ncc.sums.len() as u32,
    };
    let m = t.deploy_at(
        time,
        op,
        [NcContract::BYTECODE.as_ref(), &ctor.abi_encode()].concat(),
    );
    assert!(
        t.send(
            time,
            op,
            m,
            &NcContract::loadCall {
                docs0: U256::from(ncc.docs[0]),
                docs1: U256::from(ncc.docs[1]),
                from: 0,
                packed: ncc
                    .sums
                    .iter()
                    .map(|s| U256::from(s[0]) | (U256::from(s[1]) << 128))
                    .collect(),
            },
        )
    );
    // The chain state is the reference's.
    ncc.check_chain(&mut t.revm, m, t.now).unwrap();
    m
}

/// The chain's outcome is the reference's: the same value, or the same error.
fn same_outcome<T: PartialEq + std::fmt::Debug>(
    call: &str,
    chain: Result<T, String>,
    reference: Result<T, Reject>,
) {
    assert_eq!(chain, reference.map_err(|r| r.name().to_string()), "{call}");
}

#[test]
fn prediction_market_with_nearest_centroid_on_anvil_matches_revm() {
    let Some(mut t) = twin("prediction_market_with_nearest_centroid_on_anvil_matches_revm") else {
        return;
    };
    let data = imdb();
    let (init, rest) = data.train.split_at(40);
    let mut ncc = NearestCentroid::new(100);
    ncc.fit(init);
    // Participants 0, 1 and 2 contribute (2 flips every label); 3 is the initiator.
    let initiator = 3;
    let op = participant(initiator);
    t.anvil.fund_gas(op);
    let params = MarketParams::new(1.0, 2, 24, 3, 1000).unwrap();
    let pieces = test_pieces(&data.test, params.test_size, params.pieces);
    let piece_samples: Vec<&[Sample]> = data.test[..24].chunks(8).collect();
    assert!(
        pieces
            .iter()
            .zip(&piece_samples)
            .all(|(p, s)| p.len() == s.iter().map(|s| 3 + 2 * s.features.len()).sum::<usize>())
    );
    let m = deploy_ncc(&mut t, None, op, &ncc);
    let ctor = PredictionMarket::constructorCall {
        model_: m,
        costWeight_: U256::from(params.cost_weight_e6),
        rounds_: params.rounds,
        testHashes_: pieces.iter().map(keccak256).collect(),
    };
    let pm = t.deploy(
        op,
        [PredictionMarket::BYTECODE.as_ref(), &ctor.abi_encode()].concat(),
    );
    t.offset = t.now;
    // The Rust reference, on the same clock (the market's deployment is sim time 0).
    let mut market = Market::new(params, ncc.clone(), initiator, &pieces);
    market.last_update_time = t.offset;
    let at = |t: &Twin, now: u64| t.offset + now;
    t.send(None, op, m, &NcContract::setOwnerCall { next: pm });
    let hash0 = t.view(m, &NcContract::stateHashCall {});
    assert_eq!(
        t.view(pm, &PredictionMarket::initialModelHashCall {}),
        hash0
    );
    for i in 0..3 {
        let amount = 1000 * TOKEN_UNIT;
        assert!(t.send(
            None,
            op,
            pm,
            &PredictionMarket::fundCall {
                to: participant(i),
                amount: U256::from(amount),
            },
        ));
        market.fund(i, amount);
    }
    let bounty = u128::from(params.bounty) * TOKEN_UNIT;
    assert!(t.send(
        None,
        op,
        pm,
        &PredictionMarket::addBountyCall {
            amount: U256::from(bounty),
        },
    ));
    market.add_bounty(bounty);

    // Participation: 18 contributions at uneven intervals (deposits from 60 tokens down to 1).
    let mut now = 0;
    let mut added: Vec<(usize, &Sample)> = Vec::new();
    for (k, s) in rest.iter().take(18).enumerate() {
        let who = k % 3;
        let label = if who == 2 { 1 - s.label } else { s.label };
        if k == 4 {
            // An offer below the cost is refused by both.
            now += 1;
            let r = t.send_both(
                Some(now),
                participant(who),
                pm,
                &PredictionMarket::addDataCall {
                    features: pack(&s.features),
                    label,
                    maxDeposit: U256::ZERO,
                },
            );
            let want = market.add_data(at(&t, now), who, &s.features, label, 0);
            same_outcome("addData below the cost", r.map(|_| ()), want.map(|_| ()));
        }
        now += [1, 2, 30, 150, 600, 3600][k % 6];
        let r = t.send_both(
            Some(now),
            participant(who),
            pm,
            &PredictionMarket::addDataCall {
                features: pack(&s.features),
                label,
                maxDeposit: U256::from(100 * TOKEN_UNIT),
            },
        );
        let want = market.add_data(at(&t, now), who, &s.features, label, 100 * TOKEN_UNIT);
        same_outcome(
            "addData",
            r.map(|r| (r.id.to::<usize>(), r.cost.to::<u128>())),
            want,
        );
        added.push((who, s));
    }
    assert_eq!(
        t.view(pm, &PredictionMarket::contributionCountCall {}),
        U256::from(added.len())
    );
    market.model.check_chain(&mut t.revm, m, t.now).unwrap();
    t.view(m, &NcContract::stateHashCall {});

    // Reveal: only the initiator ends the market; pieces in order and matching their hashes.
    now += 60;
    let r = t.send_both(
        Some(now),
        participant(0),
        pm,
        &PredictionMarket::endMarketCall {},
    );
    assert_eq!(r.err().as_deref(), Some("NotInitiator"));
    now += 1;
    assert!(t.send(Some(now), op, pm, &PredictionMarket::endMarketCall {}));
    market.end_market().unwrap();
    now += 1;
    let (who, s) = added[0];
    let r = t.send_both(
        Some(now),
        participant(who),
        pm,
        &PredictionMarket::addDataCall {
            features: pack(&s.features),
            label: s.label,
            maxDeposit: U256::from(100 * TOKEN_UNIT),
        },
    );
    let want = market.add_data(at(&t, now), who, &s.features, s.label, 100 * TOKEN_UNIT);
    same_outcome("addData after the end", r.map(|_| ()), want.map(|_| ()));
    let mut tampered = pieces[0].clone();
    tampered[0] ^= 1;
    for (k, piece) in [(1, &pieces[1]), (0, &tampered)] {
        now += 1;
        let r = t.send_both(
            Some(now),
            participant(2),
            pm,
            &PredictionMarket::revealCall {
                k: U256::from(k),
                piece: Bytes::copy_from_slice(piece),
            },
        );
        let want = market.reveal(k, piece, piece_samples[k]);
        same_outcome("a wrong reveal", r.map(|_| ()), want);
    }
    for (k, piece) in pieces.iter().enumerate() {
        now += 1;
        // Anyone may reveal: participant 1 reveals the middle piece.
        let from = if k == 1 { participant(1) } else { op };
        let r = t.send_both(
            Some(now),
            from,
            pm,
            &PredictionMarket::revealCall {
                k: U256::from(k),
                piece: Bytes::copy_from_slice(piece),
            },
        );
        same_outcome(
            "reveal",
            r.map(|_| ()),
            market.reveal(k, piece, piece_samples[k]),
        );
    }
    assert_eq!(
        t.view(pm, &PredictionMarket::testSizeCall {}),
        U256::from(24)
    );

    // Reward rounds, each on a fresh copy of the initial model.
    now += 1;
    let r = t.send_both(
        Some(now),
        participant(1),
        pm,
        &PredictionMarket::processCall {
            features: pack(&added[0].1.features),
        },
    );
    same_outcome(
        "process before a round",
        r.map(|_| ()),
        market.process(&added[0].1.features).map(|_| ()),
    );
    now += 1;
    let r = t.send_both(
        Some(now),
        participant(0),
        pm,
        &PredictionMarket::startRoundCall { fresh: m },
    );
    assert_eq!(r.err().as_deref(), Some("ModelMismatch"), "a trained model");
    let mut fresh_models = Vec::new();
    for round in 1..=params.rounds {
        now += 1;
        let fresh = deploy_ncc(&mut t, Some(now), op, &ncc);
        assert_eq!(t.view(fresh, &NcContract::stateHashCall {}), hash0);
        now += 1;
        assert!(t.send(Some(now), op, fresh, &NcContract::setOwnerCall { next: pm }));
        now += 1;
        let r = t.send_both(
            Some(now),
            op,
            pm,
            &PredictionMarket::startRoundCall { fresh },
        );
        same_outcome("startRound", r.map(|_| ()), market.start_round());
        for (id, (_, s)) in added.iter().enumerate() {
            if round == 1 && id == 2 {
                // Features other than the contribution's are refused.
                now += 1;
                let r = t.send_both(
                    Some(now),
                    participant(1),
                    pm,
                    &PredictionMarket::processCall {
                        features: pack(&added[3].1.features),
                    },
                );
                assert_eq!(r.err().as_deref(), Some("DataMismatch"));
            }
            now += 1;
            let r = t.send_both(
                Some(now),
                op,
                pm,
                &PredictionMarket::processCall {
                    features: pack(&s.features),
                },
            );
            same_outcome(
                "process",
                r.map(|d| d.as_i64()),
                market.process(&s.features),
            );
        }
        let o = market.rounds[usize::from(round) - 1];
        let r = U256::from(round);
        assert_eq!(
            t.view(pm, &PredictionMarket::roundPotCall(r)),
            U256::from(o.pot)
        );
        assert_eq!(
            t.view(pm, &PredictionMarket::roundPositiveCall(r)),
            U256::from(o.positive)
        );
        assert_eq!(
            t.view(pm, &PredictionMarket::prevCorrectCall {}),
            U256::from(o.correct)
        );
        market
            .reward_model
            .as_ref()
            .unwrap()
            .check_chain(&mut t.revm, fresh, t.now)
            .unwrap();
        t.view(fresh, &NcContract::stateHashCall {});
        fresh_models.push(fresh);
    }
    let (r1, r2) = (market.rounds[0], market.rounds[1]);
    assert!(
        r1.scored > 0 && r1.forfeited > 0 && r1.pot > 0 && r2.pot > 0,
        "rounds {:?}",
        market.rounds
    );
    now += 1;
    let r = t.send_both(
        Some(now),
        op,
        pm,
        &PredictionMarket::startRoundCall {
            fresh: fresh_models[0],
        },
    );
    same_outcome("a round too many", r.map(|_| ()), market.start_round());

    // Claims: each contribution by its submitter, once.
    for (id, _) in added.iter().enumerate() {
        let id_ = U256::from(id);
        assert_eq!(
            t.view(pm, &PredictionMarket::depositLeftCall { id: id_ }),
            U256::from(market.contributions[id].balance)
        );
        for round in 1..=params.rounds {
            let s = t.view(
                pm,
                &PredictionMarket::scoreCall {
                    r: U256::from(round),
                    id: id_,
                },
            );
            assert_eq!(s, U256::from(market.scores[usize::from(round) - 1][id]));
        }
        assert_eq!(
            t.view(pm, &PredictionMarket::claimableCall { id: id_ }),
            U256::from(market.claimable(id))
        );
    }
    now += 1;
    let r = t.send_both(
        Some(now),
        participant(1),
        pm,
        &PredictionMarket::claimCall { id: U256::ZERO },
    );
    same_outcome(
        "claim by another",
        r.map(|a| a.to::<u128>()),
        market.claim(1, 0),
    );
    let mut paid = 0;
    for (id, &(who, _)) in added.iter().enumerate() {
        now += 1;
        let r = t.send_both(
            Some(now),
            participant(who),
            pm,
            &PredictionMarket::claimCall { id: U256::from(id) },
        );
        let want = market.claim(who, id);
        paid += want.unwrap_or(0);
        same_outcome("claim", r.map(|a| a.to::<u128>()), want);
    }
    assert!(paid > 0);
    now += 1;
    let r = t.send_both(
        Some(now),
        participant(0),
        pm,
        &PredictionMarket::claimCall { id: U256::ZERO },
    );
    same_outcome("claim again", r.map(|a| a.to::<u128>()), market.claim(0, 0));

    // Every balance and total, and both models.
    assert!(market.conserved());
    for i in 0..=initiator {
        assert_eq!(
            t.view(pm, &PredictionMarket::balanceOfCall(participant(i))),
            U256::from(market.balance(i)),
            "balance of participant {i}"
        );
    }
    assert_eq!(
        t.view(pm, &PredictionMarket::totalMintedCall {}),
        U256::from(market.total_minted)
    );
    assert_eq!(
        t.view(pm, &PredictionMarket::escrowedCall {}),
        U256::from(market.escrowed)
    );
    assert_eq!(
        t.view(pm, &PredictionMarket::poolCall {}),
        U256::from(market.pool)
    );
    assert_eq!(t.view(pm, &PredictionMarket::phaseCall {}), 3, "Done");
    assert_eq!(
        t.view(pm, &PredictionMarket::rewardModelCall {}),
        fresh_models[1]
    );
    for model in [m, fresh_models[1]] {
        same_predictions(&mut t, model, &data.test[..60]);
    }
}
