//! Protocol scenarios on the embedded ledger.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cohort_ledger::demo::{self, Cast};
use cohort_ledger::{EmbeddedLedger, LedgerConfig};

fn fresh(dir: &std::path::Path) -> EmbeddedLedger {
    let op = Cast::new(1).governance;
    EmbeddedLedger::create(
        dir,
        LedgerConfig::new("cohort.local/test", op).with_start_time(1_700_000_000),
    )
    .expect("create ledger")
}

#[test]
fn demo_round_pays_honest_and_slashes_harmful() {
    let dir = tempfile::tempdir().unwrap();
    let (p, report) = demo::run(fresh(dir.path()), 1).expect("demo runs");
    assert_eq!(report.accepted, vec![0, 1]);
    assert_eq!(report.rejected, vec![2]);
    assert!(report.supply_conserved);
    let led = p.into_backend();
    let v = led.verify().expect("verifies");
    assert_eq!(v.entries, led.len());
    drop(led);
    let reopened = EmbeddedLedger::open(dir.path()).expect("reopens");
    assert_eq!(reopened.state_root(), v.state_root);
}

/// A full round at the contract's limits (256 updates, 32 validators) settles in batches whose
/// every transaction stays under the 2^24 gas cap.
#[test]
fn a_full_round_at_the_limits_fits_the_gas_cap() {
    use alloy_primitives::{B256, Bytes};
    use alloy_sol_types::{SolCall, SolValue};
    use cohort_core::{Identity, Score, keccak256, sha256, tokens};
    use cohort_ledger::evm::TX_GAS_CAP;
    use cohort_ledger::protocol::{
        Cohort, Protocol, accepted_set_hash, phase, roles, score_commitment,
    };

    let dir = tempfile::tempdir().unwrap();
    let gov = Identity::from_seed(4, "gov");
    let coord = Identity::from_seed(4, "coord");
    let led = EmbeddedLedger::create(
        dir.path(),
        LedgerConfig::new("cohort.local/big", gov.clone()),
    )
    .unwrap();
    let mut p = Protocol::deploy(led, &gov).unwrap();
    let c = p.address();
    let clients: Vec<Identity> = (0..256)
        .map(|i| Identity::from_seed(4, &format!("c{i}")))
        .collect();
    let vals: Vec<Identity> = (0..32)
        .map(|i| Identity::from_seed(4, &format!("v{i}")))
        .collect();
    let call = |x: &dyn Fn() -> Vec<u8>| Bytes::from(x());
    // Mints, in one batch.
    let everyone: Vec<&Identity> = std::iter::once(&coord)
        .chain(&clients)
        .chain(&vals)
        .collect();
    let led = p.backend_mut();
    let mints = everyone
        .iter()
        .enumerate()
        .map(|(k, w)| {
            let data = call(&|| {
                Cohort::mintCall {
                    to: w.address(),
                    amount: tokens(10_000),
                }
                .abi_encode()
            });
            led.sign(&gov, Some(c), data, k as u64)
        })
        .collect();
    for r in led.submit_batch(mints).unwrap() {
        r.unwrap();
    }
    p.approve_coordinator(&gov, coord.address()).unwrap();
    p.register(&coord, roles::COORDINATOR).unwrap();
    let round = p
        .open_round(&coord, B256::ZERO, tokens(1_000), false)
        .unwrap()
        .value;
    assert_eq!(round, 1);
    // Every client registers, stakes, commits a dataset and submits, in one batch.
    let led = p.backend_mut();
    let mut txs = Vec::new();
    for (i, cl) in clients.iter().enumerate() {
        let root: B256 = sha256(&(i as u64).to_be_bytes()).into();
        let id = keccak256((cl.address(), root, B256::ZERO, 1u64).abi_encode_params());
        let calls: Vec<Vec<u8>> = vec![
            Cohort::registerCall {
                roles: roles::CLIENT,
                keyHash: cl.key_hash(),
            }
            .abi_encode(),
            Cohort::stakeCall {
                amount: tokens(500),
            }
            .abi_encode(),
            Cohort::commitDatasetCall {
                merkleRoot: root,
                manifestHash: B256::ZERO,
                size: 1,
            }
            .abi_encode(),
            Cohort::submitUpdateCall {
                roundId: 1,
                blobHash: root,
                datasetId: id,
                numSamples: 10,
            }
            .abi_encode(),
        ];
        for (k, d) in calls.into_iter().enumerate() {
            txs.push(led.sign(cl, Some(c), d.into(), k as u64));
        }
    }
    for v in &vals {
        let calls: Vec<Vec<u8>> = vec![
            Cohort::registerCall {
                roles: roles::VALIDATOR,
                keyHash: v.key_hash(),
            }
            .abi_encode(),
            Cohort::stakeCall {
                amount: tokens(2_000),
            }
            .abi_encode(),
        ];
        for (k, d) in calls.into_iter().enumerate() {
            txs.push(led.sign(v, Some(c), d.into(), k as u64));
        }
    }
    for r in led.submit_batch(txs).unwrap() {
        r.unwrap();
    }
    p.close_submissions(&coord, round).unwrap();
    // Validators score even updates up, odd ones down.
    let scores: Vec<Score> = (0..256)
        .map(|i| Score(if i % 2 == 0 { 100_000 } else { -100_000 }))
        .collect();
    let salt = B256::repeat_byte(3);
    let led = p.backend_mut();
    let commits = vals
        .iter()
        .map(|v| {
            let commitment = score_commitment(round, v.address(), &scores, salt);
            led.sign(
                v,
                Some(c),
                Cohort::commitScoresCall {
                    roundId: round,
                    commitment,
                }
                .abi_encode()
                .into(),
                0,
            )
        })
        .collect();
    for r in led.submit_batch(commits).unwrap() {
        r.unwrap();
    }
    p.close_commits(&coord, round).unwrap();
    let mut max_gas = 0;
    for v in &vals {
        max_gas = max_gas.max(p.reveal_scores(v, round, &scores, salt).unwrap().gas_used);
    }
    while p.round(round).unwrap().phase < phase::TALLIED {
        max_gas = max_gas.max(p.tally(&coord, round, 64).unwrap().gas_used);
    }
    let accepted: Vec<u32> = (0..256).step_by(2).collect();
    p.finalize(&coord, round, B256::ZERO, accepted_set_hash(&accepted))
        .unwrap();
    while p.round(round).unwrap().phase < phase::SETTLED {
        max_gas = max_gas.max(p.settle(&coord, round, 64).unwrap().gas_used);
    }
    assert!(max_gas < TX_GAS_CAP, "a call used {max_gas} gas");
    assert!(p.supply().unwrap().conserved());
    eprintln!("largest call of a 256x32 round: {max_gas} gas (cap {TX_GAS_CAP})");
}

/// After the demo round, alice asks for her dataset to be forgotten: the coordinator records
/// the execution, a validator the evidence; her reward is clawed back and the dataset can no
/// longer back an update. Anchors must grow.
#[test]
fn unlearning_claws_back_rewards_and_anchors_grow() {
    use alloy_primitives::B256;
    use cohort_core::{Score, sha256, tokens};
    use cohort_ledger::LedgerBackend;
    use cohort_ledger::protocol::Cohort::{CohortErrors, CohortEvents};
    use cohort_ledger::protocol::ProtocolError;

    let dir = tempfile::tempdir().unwrap();
    let (mut p, _) = demo::run(fresh(dir.path()), 1).unwrap();
    let cast = Cast::new(1);
    let (alice, coord, val) = (&cast.clients[0], &cast.coordinator, &cast.validators[0]);
    // Alice's dataset and reward come from the ledger's own events.
    let (logs, _) = p.backend().logs_since(0).unwrap();
    let events = cohort_ledger::protocol::decode_events(
        p.address(),
        &logs.into_iter().map(|(_, l)| l).collect::<Vec<_>>(),
    );
    let dataset = events
        .iter()
        .find_map(|e| match e {
            CohortEvents::DatasetCommitted(d) if d.owner == alice.address() => Some(d.id),
            _ => None,
        })
        .unwrap();
    let reward = events
        .iter()
        .find_map(|e| match e {
            CohortEvents::Rewarded(r) if r.who == alice.address() => Some(r.amount),
            _ => None,
        })
        .unwrap();
    assert!(reward > alloy_primitives::U256::ZERO);

    // Only the owner (or governance) may ask.
    let e = p
        .request_unlearning(&cast.clients[1], dataset, B256::ZERO)
        .unwrap_err();
    assert!(matches!(e, ProtocolError::Reverted { .. }), "{e}");
    let req = p
        .request_unlearning(alice, dataset, sha256(b"GDPR art. 17").into())
        .unwrap()
        .value;
    let before = p.balance_of(alice.address()).unwrap();
    let exec = p
        .record_unlearning(coord, req, sha256(b"model without alice").into(), 0)
        .unwrap();
    let clawed = exec
        .events
        .iter()
        .find_map(|e| match e {
            CohortEvents::Clawback(c) => Some(c.amount),
            _ => None,
        })
        .unwrap();
    assert_eq!(clawed, reward);
    assert_eq!(p.balance_of(alice.address()).unwrap(), before - reward);
    p.record_unlearning_evidence(
        val,
        req,
        sha256(b"evidence").into(),
        Score::from_f64(0.5),
        Score::from_f64(0.01),
    )
    .unwrap();
    assert!(p.supply().unwrap().conserved());

    // The forgotten dataset cannot back a new update.
    let round = p
        .open_round(coord, B256::ZERO, tokens(1), false)
        .unwrap()
        .value;
    let e = p
        .submit_update(alice, round, B256::ZERO, dataset, 1)
        .unwrap_err();
    assert!(
        matches!(e.revert(), Some(CohortErrors::DatasetIsForgotten(_))),
        "{e}"
    );

    // Anchors of the log's own checkpoints must grow.
    let head = p.backend().head().unwrap();
    p.anchor(&cast.governance, head.size, head.root.into())
        .unwrap();
    let e = p
        .anchor(&cast.governance, head.size, head.root.into())
        .unwrap_err();
    assert!(
        matches!(e.revert(), Some(CohortErrors::AnchorNotGrowing(_))),
        "{e}"
    );
}

/// A batch commits its good calls together; a refused call leaves its author's later calls
/// in the batch refused too (their nonces no longer line up), and other authors unaffected.
#[test]
fn batches_commit_good_calls_and_refuse_the_rest() {
    use cohort_core::{Identity, tokens};
    use cohort_ledger::protocol::{Cohort, Protocol, roles};

    let dir = tempfile::tempdir().unwrap();
    let gov = Identity::from_seed(9, "gov");
    let led = EmbeddedLedger::create(
        dir.path(),
        LedgerConfig::new("cohort.local/batch", gov.clone()),
    )
    .unwrap();
    let mut p = Protocol::deploy(led, &gov).unwrap();
    let (a, b) = (Identity::from_seed(9, "a"), Identity::from_seed(9, "b"));
    let reg = |x: &Identity| Cohort::registerCall {
        roles: roles::CLIENT,
        keyHash: x.key_hash(),
    };
    let bad = Cohort::registerCall {
        roles: 0,
        keyHash: a.key_hash(),
    };
    let before = p.backend().len();
    let out = p
        .send_batch(vec![(&a, bad), (&a, reg(&a)), (&b, reg(&b))])
        .unwrap();
    assert!(matches!(&out[0], Err(e) if e.revert().is_some()));
    assert!(out[1].is_err(), "a's second call follows a refused one");
    assert!(out[2].is_ok());
    assert_eq!(p.backend().len(), before + 1);
    // Mints by one author in one batch take consecutive nonces.
    let mints = (0..5)
        .map(|_| {
            (
                &gov,
                Cohort::mintCall {
                    to: b.address(),
                    amount: tokens(1),
                },
            )
        })
        .collect();
    assert!(p.send_batch(mints).unwrap().iter().all(Result::is_ok));
    assert_eq!(p.balance_of(b.address()).unwrap(), tokens(5));
    p.into_backend().verify().unwrap();
}
