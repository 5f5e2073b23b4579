//! Random unlearning histories against a model of the workflow: after the demo round, any
//! party may try to request, execute, verify (accept or reject) and record a deletion, in any
//! order, with any method and evidence. Every call succeeds exactly when the model says it may,
//! and then moves the request as the model does: only the owner or governance requests, one
//! open request per dataset and none for a forgotten one; only a coordinator executes, with a
//! known method; only a validator other than the executor gives a verdict, an acceptance only
//! with the executor's evidence; a rejection reopens the request; a deletion is recorded once,
//! by the executor or governance, after verification. After every call supply is conserved,
//! and a dataset's rewards are clawed back once, in full, at its first execution.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use alloy_primitives::{Address, B256, U256};
use cohort_core::{Identity, Score, sha256};
use cohort_ledger::demo::{self, Cast};
use cohort_ledger::protocol::{
    Cohort::CohortEvents, ProtocolError, UnlearningEvidence, roles, unlearning,
};
use cohort_ledger::{EmbeddedLedger, LedgerBackend, LedgerConfig};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Action {
    /// Actor, dataset (alice's, bob's, mallory's).
    Request(usize, usize),
    /// Actor, request (1-based, maybe unknown), method, evidence.
    Execute(usize, u64, u8, u8),
    /// Actor, request, accepted, evidence.
    Verify(usize, u64, bool, u8),
    /// Actor, request.
    Delete(usize, u64),
}

/// Mostly calls that may succeed (the right actor, a known method, an existing request, the
/// executor's evidence), some that may not.
fn action() -> impl Strategy<Value = Action> {
    let actor = |likely: Vec<usize>| {
        prop_oneof![
            3 => prop::sample::select(likely),
            1 => 0usize..ACTORS,
        ]
    };
    let request = prop_oneof![4 => 1u64..3, 1 => 0u64..5];
    prop_oneof![
        2 => (0usize..3, prop::bool::weighted(0.8), 0usize..ACTORS).prop_map(|(d, owner, other)| {
            Action::Request(if owner { d + 2 } else { other }, d)
        }),
        3 => (actor(vec![COORD, BOTH]), request.clone(), prop_oneof![5 => 1u8..6, 1 => 0u8..8], 0u8..2)
            .prop_map(|(a, r, m, e)| Action::Execute(a, r, m, e)),
        3 => (actor(vec![5, 6, BOTH]), request.clone(), prop::bool::weighted(0.6), 0u8..2)
            .prop_map(|(a, r, ok, e)| Action::Verify(a, r, ok, e)),
        1 => (actor(vec![COORD, BOTH, GOV]), request).prop_map(|(a, r)| Action::Delete(a, r)),
    ]
}

/// governance, the coordinator, alice, bob, mallory, validator-1, validator-2, and a party
/// that is both a coordinator and a validator.
const ACTORS: usize = 8;
const GOV: usize = 0;
const COORD: usize = 1;
const BOTH: usize = 7;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Requested,
    Executed,
    Verified,
}

#[derive(Debug, Clone)]
struct Req {
    dataset: usize,
    phase: Phase,
    executor: usize,
    evidence: u8,
    deleted: bool,
}

#[derive(Debug, Default)]
struct Model {
    requests: Vec<Req>,
    forgotten: [bool; 3],
    /// What each dataset has had clawed back.
    clawed: [U256; 3],
}

impl Model {
    fn is_coordinator(a: usize) -> bool {
        a == COORD || a == BOTH
    }
    fn is_validator(a: usize) -> bool {
        a == 5 || a == 6 || a == BOTH
    }
    fn get(&self, r: u64) -> Option<&Req> {
        (r as usize)
            .checked_sub(1)
            .and_then(|i| self.requests.get(i))
    }
    fn open(&self, d: usize) -> bool {
        self.requests
            .iter()
            .any(|q| q.dataset == d && q.phase != Phase::Verified)
    }
}

fn evidence_hash(e: u8) -> B256 {
    sha256(format!("evidence {e}").as_bytes()).into()
}

fn evidence() -> UnlearningEvidence {
    UnlearningEvidence {
        forgetMetric: Score::from_f64(0.5).0,
        miaAuc: Score::from_f64(0.52).0,
        testMetric: Score::from_f64(0.8).0,
        hasOracle: true,
        forgetGap: Score::from_f64(0.01).0,
        miaGap: Score::from_f64(0.02).0,
    }
}

fn ok_or_revert<T>(r: Result<T, ProtocolError>) -> Result<Option<T>, TestCaseError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(ProtocolError::Reverted { .. }) => Ok(None),
        Err(e) => Err(TestCaseError::fail(e.to_string())),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn unlearning_follows_its_state_machine(actions in prop::collection::vec(action(), 1..64)) {
        let tmp = tempfile::tempdir().unwrap();
        let cast = Cast::new(1);
        let led = EmbeddedLedger::create(
            tmp.path(),
            LedgerConfig::new("cohort.local/unlearning", cast.governance.clone()),
        )
        .unwrap();
        let (mut p, _) = demo::run(led, 1).unwrap();
        let both = Identity::from_seed(1, "coordinator and validator");
        let both_addr = p.backend().address_of(&both);
        p.approve_coordinator(&cast.governance, both_addr).unwrap();
        p.register(&both, roles::COORDINATOR | roles::VALIDATOR).unwrap();
        let actors: Vec<&Identity> = vec![
            &cast.governance,
            &cast.coordinator,
            &cast.clients[0],
            &cast.clients[1],
            &cast.clients[2],
            &cast.validators[0],
            &cast.validators[1],
            &both,
        ];
        // Each client's dataset and what the round paid it.
        let (logs, _) = p.backend().logs_since(0).unwrap();
        let logs: Vec<_> = logs.into_iter().map(|(_, l)| l).collect();
        let events = cohort_ledger::protocol::decode_events(p.address(), &logs);
        let owners: Vec<Address> = cast.clients.iter().map(|c| p.backend().address_of(c)).collect();
        let mut datasets = [B256::ZERO; 3];
        let mut rewards: BTreeMap<Address, U256> = BTreeMap::new();
        for e in &events {
            match e {
                CohortEvents::DatasetCommitted(d) => {
                    if let Some(i) = owners.iter().position(|o| *o == d.owner) {
                        datasets[i] = d.id;
                    }
                }
                CohortEvents::Rewarded(r) => *rewards.entry(r.who).or_default() += r.amount,
                _ => {}
            }
        }
        let mut m = Model::default();
        for a in &actions {
            match *a {
                Action::Request(who, d) => {
                    let may = (who == d + 2 || who == GOV) && !m.forgotten[d] && !m.open(d);
                    let got = ok_or_revert(p.request_unlearning(actors[who], datasets[d], B256::ZERO, B256::ZERO))?;
                    prop_assert_eq!(got.is_some(), may, "{:?} with {:?}", a, m);
                    if let Some(s) = got {
                        prop_assert_eq!(s.value as usize, m.requests.len() + 1);
                        m.requests.push(Req { dataset: d, phase: Phase::Requested, executor: 0, evidence: 0, deleted: false });
                    }
                }
                Action::Execute(who, r, method, e) => {
                    let may = Model::is_coordinator(who)
                        && (1..=5).contains(&method)
                        && m.get(r).is_some_and(|q| q.phase == Phase::Requested);
                    let got = ok_or_revert(p.record_unlearning(actors[who], r, method, B256::ZERO, evidence_hash(e)))?;
                    prop_assert_eq!(got.is_some(), may, "{:?} with {:?}", a, m);
                    if let Some(s) = got {
                        let q = &mut m.requests[r as usize - 1];
                        let d = q.dataset;
                        q.phase = Phase::Executed;
                        q.executor = who;
                        q.evidence = e;
                        m.forgotten[d] = true;
                        let taken: U256 = s.events.iter().filter_map(|e| match e {
                            CohortEvents::Clawback(c) => Some(c.amount),
                            _ => None,
                        }).sum();
                        // The whole reward at the first execution (the owner holds enough),
                        // nothing later.
                        let owed = rewards.get(&owners[d]).copied().unwrap_or_default() - m.clawed[d];
                        prop_assert_eq!(taken, owed);
                        m.clawed[d] += taken;
                    }
                }
                Action::Verify(who, r, accepted, e) => {
                    let may = Model::is_validator(who)
                        && m.get(r).is_some_and(|q| {
                            q.phase == Phase::Executed && q.executor != who && (!accepted || q.evidence == e)
                        });
                    let got = ok_or_revert(p.verify_unlearning(actors[who], r, accepted, evidence_hash(e), evidence(), B256::ZERO))?;
                    prop_assert_eq!(got.is_some(), may, "{:?} with {:?}", a, m);
                    if got.is_some() {
                        m.requests[r as usize - 1].phase = if accepted { Phase::Verified } else { Phase::Requested };
                    }
                }
                Action::Delete(who, r) => {
                    let may = m.get(r).is_some_and(|q| {
                        q.phase == Phase::Verified && !q.deleted && (who == q.executor || who == GOV)
                    });
                    let got = ok_or_revert(p.record_blob_deletion(actors[who], r, evidence_hash(9)))?;
                    prop_assert_eq!(got.is_some(), may, "{:?} with {:?}", a, m);
                    if got.is_some() {
                        m.requests[r as usize - 1].deleted = true;
                    }
                }
            }
            let s = p.supply().unwrap();
            prop_assert!(s.conserved(), "supply not conserved: {:?}", s);
            // The contract's record agrees with the model.
            for (i, q) in m.requests.iter().enumerate() {
                let rec = p.unlearning_request(i as u64 + 1).unwrap();
                let phase = match q.phase {
                    Phase::Requested => unlearning::phase::REQUESTED,
                    Phase::Executed => unlearning::phase::EXECUTED,
                    Phase::Verified => unlearning::phase::VERIFIED,
                };
                prop_assert_eq!(rec.phase, phase);
                prop_assert_eq!(rec.deletedBlobs != B256::ZERO, q.deleted);
            }
        }
    }
}
