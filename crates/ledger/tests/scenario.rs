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
    let roster: Vec<_> = clients.iter().map(Identity::address).collect();
    let extend = p
        .send_unit(&coord, Cohort::extendRosterCall { clients: roster })
        .unwrap();
    let open = p
        .open_round(&coord, B256::ZERO, tokens(1_000), false, 256)
        .unwrap();
    let round = open.value;
    assert_eq!(round, 1);
    let mut max_gas = extend.gas_used.max(open.gas_used);
    // Every client registers, stakes, commits a dataset and submits, in one batch.
    let led = p.backend_mut();
    let mut txs = Vec::new();
    for (i, cl) in clients.iter().enumerate() {
        let root: B256 = sha256(&(i as u64).to_be_bytes()).into();
        let id = keccak256((cl.address(), root, B256::ZERO, 10u64).abi_encode_params());
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
                size: 10,
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

/// After the demo round, alice asks for her dataset to be forgotten. Who may do what, in
/// which phase: only the owner (or governance) requests, with a known method a coordinator
/// executes, a validator other than the executor verifies, a rejection reopens the request and
/// an acceptance must carry the executor's evidence; the reward is clawed back once, the
/// dataset can be neither requested again nor back an update. Anchors must grow.
#[test]
fn unlearning_claws_back_rewards_and_anchors_grow() {
    use alloy_primitives::B256;
    use cohort_core::{Score, sha256, tokens};
    use cohort_ledger::LedgerBackend;
    use cohort_ledger::protocol::Cohort::{self, CohortErrors, CohortEvents};
    use cohort_ledger::protocol::{UnlearningEvidence, unlearning};

    let dir = tempfile::tempdir().unwrap();
    let (mut p, _) = demo::run(fresh(dir.path()), 1).unwrap();
    let cast = Cast::new(1);
    let (alice, coord) = (&cast.clients[0], &cast.coordinator);
    let (v1, v2) = (&cast.validators[0], &cast.validators[1]);
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
    let revert = |e: cohort_ledger::ProtocolError| e.revert().cloned();
    let h = |s: &str| B256::from(sha256(s.as_bytes()));

    // Only the owner (or governance) may ask, for a dataset that exists.
    let e = p
        .request_unlearning(&cast.clients[1], dataset, B256::ZERO, B256::ZERO)
        .unwrap_err();
    assert!(matches!(revert(e), Some(CohortErrors::NotAuthorized(_))));
    let e = p
        .request_unlearning(alice, h("no such dataset"), B256::ZERO, B256::ZERO)
        .unwrap_err();
    assert!(matches!(revert(e), Some(CohortErrors::UnknownDataset(_))));
    let req = p
        .request_unlearning(alice, dataset, h("GDPR art. 17"), h("forget set"))
        .unwrap()
        .value;
    // One open request per dataset.
    let e = p
        .request_unlearning(&cast.governance, dataset, B256::ZERO, B256::ZERO)
        .unwrap_err();
    assert!(
        matches!(revert(e), Some(CohortErrors::UnlearningPending(x)) if x.requestId == req),
        "a second request while one is open"
    );
    // Nothing to verify before an execution; an unknown method is refused; a validator is
    // no executor.
    let evidence = UnlearningEvidence {
        forgetMetric: Score::from_f64(0.5).0,
        miaAuc: Score::from_f64(0.5).0,
        testMetric: Score::from_f64(0.8).0,
        hasOracle: false,
        forgetGap: 0,
        miaGap: 0,
    };
    let e = p
        .verify_unlearning(v1, req, true, h("e"), evidence.clone(), B256::ZERO)
        .unwrap_err();
    assert!(matches!(
        revert(e),
        Some(CohortErrors::WrongRequestPhase(_))
    ));
    for method in [0u8, 6, 255] {
        let e = p
            .record_unlearning(coord, req, method, h("m"), h("e"))
            .unwrap_err();
        assert!(
            matches!(revert(e), Some(CohortErrors::InvalidMethod(m)) if m.method == method),
            "method {method}"
        );
    }
    let e = p
        .record_unlearning(v1, req, unlearning::RETRAIN, h("m"), h("e"))
        .unwrap_err();
    assert!(matches!(revert(e), Some(CohortErrors::MissingRole(_))));

    // Executed: the reward is clawed back.
    let before = p.balance_of(alice.address()).unwrap();
    let exec = p
        .record_unlearning(coord, req, unlearning::FED_ERASER, h("m1"), h("e1"))
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
    // A verdict from someone who is not a validator.
    let e = p
        .verify_unlearning(alice, req, true, h("e1"), evidence.clone(), B256::ZERO)
        .unwrap_err();
    assert!(matches!(revert(e), Some(CohortErrors::MissingRole(_))));
    // An acceptance that does not reproduce the executor's evidence.
    let e = p
        .verify_unlearning(v1, req, true, h("e-other"), evidence.clone(), B256::ZERO)
        .unwrap_err();
    assert!(matches!(revert(e), Some(CohortErrors::EvidenceMismatch(_))));
    // A rejection reopens the request; the dataset stays forgotten and nothing more is taken.
    p.verify_unlearning(v1, req, false, h("measured"), evidence.clone(), h("why"))
        .unwrap();
    let q = p.unlearning_request(req).unwrap();
    assert_eq!(q.phase, unlearning::phase::REQUESTED);
    assert_eq!(q.rejections, 1);
    // Executed again, by a party that is a coordinator and a validator: it cannot verify its
    // own execution.
    let both = cohort_core::Identity::from_seed(1, "coordinator and validator");
    let both_addr = p.backend().address_of(&both);
    p.approve_coordinator(&cast.governance, both_addr).unwrap();
    p.register(
        &both,
        cohort_ledger::protocol::roles::COORDINATOR | cohort_ledger::protocol::roles::VALIDATOR,
    )
    .unwrap();
    let again = p
        .record_unlearning(&both, req, unlearning::RETRAIN, h("m2"), h("e2"))
        .unwrap();
    assert!(again.events.iter().any(
        |e| matches!(e, CohortEvents::Clawback(c) if c.amount == alloy_primitives::U256::ZERO)
    ));
    let e = p
        .verify_unlearning(&both, req, true, h("e2"), evidence.clone(), B256::ZERO)
        .unwrap_err();
    assert!(matches!(
        revert(e),
        Some(CohortErrors::VerifierIsExecutor(_))
    ));
    p.verify_unlearning(v2, req, true, h("e2"), evidence.clone(), B256::ZERO)
        .unwrap();
    let q = p.unlearning_request(req).unwrap();
    assert_eq!(q.phase, unlearning::phase::VERIFIED);
    assert_eq!(q.clawedBack, reward);
    assert_eq!(q.evidenceHash, h("e2"));
    assert_eq!(q.evidence, evidence);
    assert_eq!(q.forgetSetHash, h("forget set"));
    // Verified: no second verdict; blobs deleted once, by the executor or governance.
    let e = p
        .verify_unlearning(v1, req, false, h("e2"), evidence, B256::ZERO)
        .unwrap_err();
    assert!(matches!(
        revert(e),
        Some(CohortErrors::WrongRequestPhase(_))
    ));
    let e = p.record_blob_deletion(alice, req, h("blobs")).unwrap_err();
    assert!(matches!(revert(e), Some(CohortErrors::NotAuthorized(_))));
    let e = p.record_blob_deletion(coord, req, h("blobs")).unwrap_err();
    assert!(
        matches!(revert(e), Some(CohortErrors::NotAuthorized(_))),
        "not this execution's executor"
    );
    p.record_blob_deletion(&both, req, h("blobs")).unwrap();
    let e = p
        .record_blob_deletion(&cast.governance, req, h("blobs"))
        .unwrap_err();
    assert!(matches!(
        revert(e),
        Some(CohortErrors::BlobsAlreadyDeleted(_))
    ));
    // A forgotten dataset is not forgotten twice.
    let e = p
        .request_unlearning(alice, dataset, B256::ZERO, B256::ZERO)
        .unwrap_err();
    assert!(matches!(
        revert(e),
        Some(CohortErrors::DatasetIsForgotten(_))
    ));
    // Methods: governance adds one, once; nobody else can.
    let e = p
        .send_unit(
            alice,
            Cohort::addUnlearningMethodCall {
                method: 6,
                exact: false,
            },
        )
        .unwrap_err();
    assert!(matches!(revert(e), Some(CohortErrors::NotGovernance(_))));
    p.send_unit(
        &cast.governance,
        Cohort::addUnlearningMethodCall {
            method: 6,
            exact: false,
        },
    )
    .unwrap();
    let e = p
        .send_unit(
            &cast.governance,
            Cohort::addUnlearningMethodCall {
                method: 6,
                exact: true,
            },
        )
        .unwrap_err();
    assert!(matches!(revert(e), Some(CohortErrors::InvalidMethod(_))));
    let m = p.view(Cohort::unlearningMethodCall { method: 6 }).unwrap();
    assert!(m.known && !m.exact);
    let m = p
        .view(Cohort::unlearningMethodCall {
            method: unlearning::RETRAIN,
        })
        .unwrap();
    assert!(m.known && m.exact);
    assert!(p.supply().unwrap().conserved());

    // The forgotten dataset cannot back a new update.
    let round = p
        .open_round(coord, B256::ZERO, tokens(1), false, 3)
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

/// A coordinator's cohorts: a roster fixed by its first round, cohorts drawn from its beacon
/// exactly as `sample_cohort` draws them, refused submissions from outside the cohort, the
/// beacon moving on only when reveals close (an abandoned round is followed by the same
/// cohort), and the roster's refusals; at the limits (a roster of MAX_ROSTER clients, a cohort
/// of 256) every call stays under the gas cap.
#[test]
fn cohorts_come_from_the_beacon_and_only_they_submit() {
    use alloy_primitives::{Address, B256};
    use alloy_sol_types::SolValue;
    use cohort_core::{Identity, keccak256, sample_cohort, sha256, tokens};
    use cohort_ledger::evm::TX_GAS_CAP;
    use cohort_ledger::protocol::Cohort::{self, CohortErrors};
    use cohort_ledger::protocol::{Protocol, ProtocolError, roles};

    fn refusal(e: ProtocolError) -> CohortErrors {
        e.revert()
            .cloned()
            .unwrap_or_else(|| panic!("not a revert: {e}"))
    }

    let dir = tempfile::tempdir().unwrap();
    let cast = Cast::new(7);
    let gov = cast.governance.clone();
    let coord = cast.coordinator.clone();
    let mut p = Protocol::deploy(fresh(dir.path()), &gov).unwrap();
    let clients: Vec<Identity> = (0..12)
        .map(|i| Identity::from_seed(7, &format!("client-{i}")))
        .collect();
    let outsider = Identity::from_seed(7, "outsider");
    p.mint(&gov, coord.address(), tokens(1_000)).unwrap();
    p.approve_coordinator(&gov, coord.address()).unwrap();
    p.register(&coord, roles::COORDINATOR).unwrap();
    let mut datasets = Vec::new();
    for (i, c) in clients.iter().chain([&outsider]).enumerate() {
        p.mint(&gov, c.address(), tokens(1_000)).unwrap();
        p.register(c, roles::CLIENT | roles::DATA_OWNER).unwrap();
        p.stake(c, tokens(100)).unwrap();
        let root = sha256(&[i as u8]).into();
        datasets.push(p.commit_dataset(c, root, B256::ZERO, 1).unwrap().value);
    }
    let v = &cast.validators[0];
    p.mint(&gov, v.address(), tokens(5_000)).unwrap();
    p.register(v, roles::VALIDATOR).unwrap();
    p.stake(v, tokens(2_000)).unwrap();

    // No roster, no round; a roster refuses the zero address and duplicates.
    let open = |p: &mut Protocol<_>, k| p.open_round(&coord, B256::ZERO, tokens(1), false, k);
    assert!(matches!(
        refusal(open(&mut p, 3).unwrap_err()),
        CohortErrors::EmptyRoster(_)
    ));
    let roster: Vec<Address> = clients.iter().map(Identity::address).collect();
    for bad in [vec![Address::ZERO], vec![roster[0], roster[0]], vec![]] {
        let e = p.send_unit(
            &coord,
            Cohort::extendRosterCall {
                clients: bad.clone(),
            },
        );
        let e = refusal(e.unwrap_err());
        assert!(
            matches!(
                e,
                CohortErrors::ZeroAddress(_)
                    | CohortErrors::AlreadyInRoster(_)
                    | CohortErrors::EmptyBatch(_)
            ),
            "{bad:?}: {e:?}"
        );
    }
    // Only a coordinator keeps a roster.
    let e = p.send_unit(
        &clients[0],
        Cohort::extendRosterCall {
            clients: roster.clone(),
        },
    );
    assert!(matches!(
        refusal(e.unwrap_err()),
        CohortErrors::MissingRole(_)
    ));
    // The roster chains into the beacon; it can grow until the first round.
    let (n, _) = p.extend_roster(&coord, &roster[..5]).unwrap();
    assert_eq!(n, 5);
    let (n, mut beacon) = p.extend_roster(&coord, &roster[5..]).unwrap();
    assert_eq!(n, 12);
    let expected = roster
        .iter()
        .fold(B256::ZERO, |b, c| keccak256((b, *c).abi_encode_params()));
    assert_eq!(beacon, expected);
    assert!(matches!(
        refusal(open(&mut p, 0).unwrap_err()),
        CohortErrors::ZeroCohort(_)
    ));

    let mut cohorts = Vec::new();
    for attempt in 0..3 {
        let round = open(&mut p, 4).unwrap().value;
        let cohort = sample_cohort(beacon, 12, 4);
        assert_eq!(p.round_cohort(round).unwrap(), (beacon, cohort.clone()));
        // Everyone tries; only the cohort gets in.
        for (i, c) in clients.iter().chain([&outsider]).enumerate() {
            let r = p.submit_update(c, round, B256::ZERO, datasets[i], 1);
            if cohort.contains(&(i as u32)) {
                r.unwrap();
            } else {
                let e = refusal(r.unwrap_err());
                assert!(
                    matches!(e, CohortErrors::NotSampled(_)),
                    "client {i}: {e:?}"
                );
            }
        }
        cohorts.push(cohort);
        if attempt == 1 {
            // Abandoned after the submissions: the beacon stays, and so does the cohort.
            continue;
        }
        p.close_submissions(&coord, round).unwrap();
        let scores = vec![cohort_core::Score(1); 4];
        let salt = B256::repeat_byte(attempt as u8 + 1);
        let commitment =
            cohort_ledger::protocol::score_commitment(round, v.address(), &scores, salt);
        p.send_unit(
            v,
            Cohort::commitScoresCall {
                roundId: round,
                commitment,
            },
        )
        .unwrap();
        p.close_commits(&coord, round).unwrap();
        p.reveal_scores(v, round, &scores, salt).unwrap();
        p.tally_all(&coord, round, 16).unwrap();
        let mix = keccak256((v.address(), salt).abi_encode_params());
        beacon = keccak256((beacon, round, mix).abi_encode_params());
        assert_eq!(p.roster(coord.address()).unwrap().beacon, beacon);
    }
    assert_ne!(cohorts[0], cohorts[1], "the beacon moved on after round 1");
    assert_eq!(
        cohorts[1], cohorts[2],
        "an abandoned round is followed by the same cohort"
    );
    // Fixed once a round opened.
    let e = p.send_unit(
        &coord,
        Cohort::extendRosterCall {
            clients: vec![outsider.address()],
        },
    );
    assert!(matches!(
        refusal(e.unwrap_err()),
        CohortErrors::RosterFixed(_)
    ));
    let r = p.roster(coord.address()).unwrap();
    assert!(r.fixed_);
    assert_eq!(r.size, 12);

    // At the limits: a roster of MAX_ROSTER clients (in batches) and a cohort of 256.
    let big = Identity::from_seed(7, "big coordinator");
    p.approve_coordinator(&gov, big.address()).unwrap();
    p.register(&big, roles::COORDINATOR).unwrap();
    let max = p.view(Cohort::MAX_ROSTERCall {}).unwrap() as usize;
    let everyone: Vec<Address> = (0..max as u64)
        .map(|i| Address::from_slice(&keccak256(i.to_be_bytes())[12..]))
        .collect();
    let mut most = 0;
    for batch in everyone.chunks(Protocol::<EmbeddedLedger>::ROSTER_BATCH) {
        let s = p
            .send_unit(
                &big,
                Cohort::extendRosterCall {
                    clients: batch.to_vec(),
                },
            )
            .unwrap();
        most = most.max(s.gas_used);
    }
    let e = p.send_unit(
        &big,
        Cohort::extendRosterCall {
            clients: vec![outsider.address()],
        },
    );
    assert!(matches!(
        refusal(e.unwrap_err()),
        CohortErrors::RosterFull(_)
    ));
    let beacon = p.roster(big.address()).unwrap().beacon;
    let opened = p
        .open_round(&big, B256::ZERO, tokens(0), false, 256)
        .unwrap();
    most = most.max(opened.gas_used);
    let cohort = sample_cohort(beacon, max as u32, 256);
    assert_eq!(cohort.len(), 256);
    assert_eq!(p.round_cohort(opened.value).unwrap().1, cohort);
    assert!(most < TX_GAS_CAP, "a roster or open call used {most} gas");
    eprintln!("largest roster/open call at MAX_ROSTER {max}: {most} gas (cap {TX_GAS_CAP})");
}

/// A dataset's Merkle root belongs to the first party that committed it: another party
/// committing the same data is refused (a copy of someone's data earns nothing twice), the
/// owner may commit it again under another manifest, and nothing of a refusal is recorded.
#[test]
fn a_copy_of_another_partys_dataset_is_refused() {
    use alloy_primitives::B256;
    use cohort_core::{Identity, sha256, tokens};
    use cohort_ledger::LedgerBackend;
    use cohort_ledger::protocol::Cohort::CohortErrors;
    use cohort_ledger::protocol::{Protocol, ProtocolError, roles};

    fn refusal(e: ProtocolError) -> CohortErrors {
        e.revert()
            .cloned()
            .unwrap_or_else(|| panic!("not a revert: {e}"))
    }

    let dir = tempfile::tempdir().unwrap();
    let cast = Cast::new(9);
    let gov = cast.governance.clone();
    let mut p = Protocol::deploy(fresh(dir.path()), &gov).unwrap();
    let [a, b] = ["client-a", "client-b"].map(|n| Identity::from_seed(9, n));
    for c in [&a, &b] {
        p.mint(&gov, c.address(), tokens(1_000)).unwrap();
        p.register(c, roles::CLIENT).unwrap();
    }
    let root: B256 = sha256(b"the same rows").into();
    p.commit_dataset(&a, root, B256::ZERO, 10).unwrap();
    let before = p.backend().head().unwrap();
    match refusal(p.commit_dataset(&b, root, B256::ZERO, 10).unwrap_err()) {
        CohortErrors::DatasetRootTaken(e) => {
            assert_eq!(e.merkleRoot, root);
            assert_eq!(e.owner, a.address());
        }
        other => panic!("{other:?}"),
    }
    // Another manifest or size does not make it another dataset.
    assert!(matches!(
        refusal(
            p.commit_dataset(&b, root, B256::repeat_byte(1), 11)
                .unwrap_err()
        ),
        CohortErrors::DatasetRootTaken(_)
    ));
    assert_eq!(
        p.backend().head().unwrap(),
        before,
        "a refusal was recorded"
    );
    // The owner may describe its data again; the other party commits its own.
    p.commit_dataset(&a, root, B256::repeat_byte(2), 10)
        .unwrap();
    p.commit_dataset(&b, sha256(b"other rows").into(), B256::ZERO, 10)
        .unwrap();
}

/// An update claims at most the samples its dataset was committed with: FedAvg weighs by the
/// claim, so a free-rider cannot outweigh the honest by claiming samples it never committed.
#[test]
fn an_update_claims_at_most_its_datasets_samples() {
    use alloy_primitives::B256;
    use cohort_core::{Identity, sha256, tokens};
    use cohort_ledger::protocol::Cohort::{self, CohortErrors};
    use cohort_ledger::protocol::{Protocol, roles};

    let dir = tempfile::tempdir().unwrap();
    let cast = Cast::new(3);
    let gov = cast.governance.clone();
    let coord = cast.coordinator.clone();
    let mut p = Protocol::deploy(fresh(dir.path()), &gov).unwrap();
    let c = Identity::from_seed(3, "client");
    for who in [&c, &coord] {
        p.mint(&gov, who.address(), tokens(1_000)).unwrap();
    }
    p.approve_coordinator(&gov, coord.address()).unwrap();
    p.register(&coord, roles::COORDINATOR).unwrap();
    p.register(&c, roles::CLIENT).unwrap();
    p.stake(&c, tokens(100)).unwrap();
    let dataset = p
        .commit_dataset(&c, sha256(b"rows").into(), B256::ZERO, 64)
        .unwrap()
        .value;
    p.send_unit(
        &coord,
        Cohort::extendRosterCall {
            clients: vec![c.address()],
        },
    )
    .unwrap();
    let round = p
        .open_round(&coord, B256::ZERO, tokens(10), false, 1)
        .unwrap()
        .value;
    let blob: B256 = sha256(b"update").into();
    let e = p
        .submit_update(&c, round, blob, dataset, 10_000)
        .unwrap_err();
    match e.revert() {
        Some(CohortErrors::SamplesAboveDataset(x)) => {
            assert_eq!((x.datasetId, x.numSamples, x.size), (dataset, 10_000, 64));
        }
        other => panic!("{other:?}"),
    }
    p.submit_update(&c, round, blob, dataset, 64).unwrap();
}
