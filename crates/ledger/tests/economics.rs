//! Random protocol histories: supply is conserved after every transaction, a rejected
//! update is never paid, an update is paid at most its score times `rewardPerScore` when that
//! is set, an accepted update whose consensus score is not above zero (a
//! free-rider's, or a harmful one under a negative threshold) is never paid either, also when
//! no update scored above zero, only a round's sampled cohort may submit (the cohort the Rust
//! `sample_cohort` draws from the coordinator's beacon), and the beacon moves on by the
//! revealed salts alone.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use alloy_primitives::{Address, B256, U256};
use alloy_sol_types::SolValue;
use cohort_core::{Identity, Score, keccak256, sample_cohort, sha256, tokens};
use cohort_ledger::protocol::{
    Cohort::{CohortErrors, CohortEvents},
    Protocol, ProtocolError, accepted_set_hash, roles,
};
use cohort_ledger::{EmbeddedLedger, LedgerBackend, LedgerConfig};
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct Plan {
    clients: usize,
    /// The acceptance threshold (score units): at or below zero, updates that bring nothing
    /// or make things worse are accepted (refunded) and must not be paid.
    threshold: i64,
    /// Base units paid per 1.0 of score at most (`rewardPerScore`; 0: the whole share).
    per_score: u64,
    /// The first `roster` clients are the coordinator's roster; the others may never submit.
    roster: usize,
    rounds: Vec<RoundPlan>,
}

#[derive(Debug, Clone)]
struct RoundPlan {
    /// scores[v][u]
    scores: Vec<Vec<i64>>,
    reveals: Vec<bool>,
    pool: u64,
    transfers: Vec<(usize, usize, u64)>,
    unstake: Vec<(usize, u64)>,
    cohort: u32,
}

fn plan() -> impl Strategy<Value = Plan> {
    (1usize..5, 1usize..4).prop_flat_map(|(clients, validators)| {
        let round = (
            prop::collection::vec(
                prop::collection::vec(
                    prop_oneof![-400_000i64..400_000, Just(0i64), -20_000i64..=0,],
                    clients,
                ),
                validators,
            ),
            prop::collection::vec(prop::bool::weighted(0.8), validators),
            0u64..500,
            prop::collection::vec((0usize..8, 0usize..8, 0u64..20_000), 0..4),
            prop::collection::vec((0usize..8, 0u64..600), 0..3),
            1u32..6,
        )
            .prop_map(
                |(scores, reveals, pool, transfers, unstake, cohort)| RoundPlan {
                    scores,
                    reveals,
                    pool,
                    transfers,
                    unstake,
                    cohort,
                },
            );
        (
            1..=clients,
            prop::collection::vec(round, 1..4),
            prop_oneof![Just(0i64), -50_000i64..=0],
            prop_oneof![Just(0u64), 1u64..1_000_000_000_000_000_000],
        )
            .prop_map(move |(roster, rounds, threshold, per_score)| Plan {
                clients,
                threshold,
                per_score,
                roster,
                rounds,
            })
    })
}

fn check_supply(p: &mut Protocol<EmbeddedLedger>) -> Result<(), TestCaseError> {
    let s = p.supply().map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert!(s.conserved(), "supply not conserved: {s:?}");
    Ok(())
}

/// Sends, tolerating reverts (random ops may be refused), and checks supply after.
fn try_send<T>(
    p: &mut Protocol<EmbeddedLedger>,
    r: Result<T, ProtocolError>,
) -> Result<Option<T>, TestCaseError> {
    let out = match r {
        Ok(v) => Some(v),
        Err(ProtocolError::Reverted { .. }) => None,
        Err(e) => return Err(TestCaseError::fail(e.to_string())),
    };
    check_supply(p)?;
    Ok(out)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn supply_is_conserved_and_rejected_updates_are_never_paid(plan in plan()) {
        let tmp = tempfile::tempdir().unwrap();
        let id = |n: String| Identity::from_seed(3, &n);
        let gov = id("gov".into());
        let coord = id("coord".into());
        let clients: Vec<Identity> = (0..plan.clients).map(|i| id(format!("client-{i}"))).collect();
        let nv = plan.rounds[0].scores.len();
        let validators: Vec<Identity> = (0..nv).map(|i| id(format!("validator-{i}"))).collect();
        let everyone: Vec<&Identity> = std::iter::once(&coord).chain(&clients).chain(&validators).collect();
        let led = EmbeddedLedger::create(tmp.path().join("l"), LedgerConfig::new("cohort.local/prop", gov.clone())).unwrap();
        let mut p = Protocol::deploy(led, &gov).unwrap();
        let mut now = 1_000u64;
        for who in &everyone {
            p.mint(&gov, who.address(), tokens(5_000)).unwrap();
        }
        p.approve_coordinator(&gov, coord.address()).unwrap();
        let mut params = p.params().unwrap();
        params.acceptThreshold = plan.threshold;
        params.rewardPerScore = U256::from(plan.per_score);
        p.set_params(&gov, params).unwrap();
        p.register(&coord, roles::COORDINATOR).unwrap();
        let mut datasets = Vec::new();
        for (i, c) in clients.iter().enumerate() {
            p.register(c, roles::CLIENT | roles::DATA_OWNER).unwrap();
            p.stake(c, tokens(500)).unwrap();
            datasets.push(p.commit_dataset(c, sha256(&[i as u8]).into(), B256::ZERO, 100).unwrap().value);
        }
        for v in &validators {
            p.register(v, roles::VALIDATOR).unwrap();
            p.stake(v, tokens(2_000)).unwrap();
        }
        let roster: Vec<Address> = clients[..plan.roster].iter().map(Identity::address).collect();
        let (n, mut beacon) = p.extend_roster(&coord, &roster).unwrap();
        prop_assert_eq!(n as usize, plan.roster);
        check_supply(&mut p)?;
        for (r, rp) in plan.rounds.iter().enumerate() {
            for &(a, b, amt) in &rp.transfers {
                let (from, to) = (everyone[a % everyone.len()], everyone[b % everyone.len()]);
                let res = p.transfer(from, to.address(), tokens(amt));
                try_send(&mut p, res)?;
            }
            for &(a, amt) in &rp.unstake {
                let who = everyone[a % everyone.len()];
                let res = p.request_unstake(who, tokens(amt));
                try_send(&mut p, res)?;
            }
            now += 100_000;
            p.backend_mut().set_time(now).unwrap();
            for who in &everyone {
                let res = p.withdraw(who);
                try_send(&mut p, res)?;
            }
            let res = p.open_round(&coord, sha256(&r.to_be_bytes()).into(), tokens(rp.pool), false, rp.cohort);
            let Some(open) = try_send(&mut p, res)? else { continue };
            let round = open.value;
            let cohort = sample_cohort(beacon, plan.roster as u32, rp.cohort);
            prop_assert_eq!(p.round_cohort(round).unwrap(), (beacon, cohort.clone()));
            let mut submitted: Vec<Address> = Vec::new();
            for (i, (c, d)) in clients.iter().zip(&datasets).enumerate() {
                let sampled = cohort.contains(&(i as u32));
                let res = p.submit_update(c, round, sha256(c.name().as_bytes()).into(), *d, 100);
                if let Err(e) = &res {
                    let not_sampled = matches!(e.revert(), Some(CohortErrors::NotSampled(_)));
                    prop_assert_eq!(not_sampled, !sampled, "client {} (sampled {}): {}", i, sampled, e);
                }
                if try_send(&mut p, res)?.is_some() {
                    prop_assert!(sampled, "client {i}, not in the cohort {cohort:?}, submitted");
                    submitted.push(c.address());
                }
            }
            p.close_submissions(&coord, round).unwrap();
            let mut committed = Vec::new();
            for (v, s) in validators.iter().zip(&rp.scores) {
                let s: Vec<Score> = s[..submitted.len()].iter().map(|x| Score(*x)).collect();
                let salt = B256::from(sha256(v.name().as_bytes()));
                let res = p.commit_scores(v, round, &s, salt);
                if try_send(&mut p, res)?.is_some() {
                    committed.push((v, s, salt));
                }
            }
            p.close_commits(&coord, round).unwrap();
            let mut mix = B256::ZERO;
            for (i, (v, s, salt)) in committed.iter().enumerate() {
                if rp.reveals[i] {
                    let res = p.reveal_scores(v, round, s, *salt);
                    if try_send(&mut p, res)?.is_some() {
                        mix ^= keccak256((v.address(), *salt).abi_encode_params());
                    }
                }
            }
            let tally = p.tally_all(&coord, round, 2).unwrap();
            beacon = keccak256((beacon, round, mix).abi_encode_params());
            prop_assert_eq!(p.roster(coord.address()).unwrap().beacon, beacon);
            check_supply(&mut p)?;
            let mut accepted = Vec::new();
            let mut rejected = Vec::new();
            // Accepted clients whose consensus score is not above zero.
            let mut unearned = Vec::new();
            let mut score_of = std::collections::HashMap::new();
            for e in &tally.events {
                match e {
                    CohortEvents::UpdateAccepted(a) => {
                        accepted.push(a.index);
                        score_of.insert(a.client, a.consensusScore);
                        if a.consensusScore <= 0 {
                            unearned.push(a.client);
                        }
                    }
                    CohortEvents::UpdateRejected(x) => rejected.push(x.client),
                    _ => {}
                }
            }
            accepted.sort_unstable();
            p.finalize(&coord, round, B256::ZERO, accepted_set_hash(&accepted)).unwrap();
            let before: Vec<U256> = rejected.iter().map(|a| p.balance_of(*a).unwrap()).collect();
            let settle = p.settle_all(&coord, round, 3).unwrap();
            check_supply(&mut p)?;
            for e in &settle.events {
                if let CohortEvents::Rewarded(x) = e {
                    prop_assert!(!rejected.contains(&x.who), "rejected update's client {} was rewarded", x.who);
                    // Paid per unit of score at most, when the rule is on.
                    if plan.per_score != 0 && let Some(&sc) = score_of.get(&x.who) {
                        let cap = U256::from(sc.max(0) as u64) * U256::from(plan.per_score) / U256::from(1_000_000u64);
                        prop_assert!(x.amount <= cap, "{} paid {} for score {sc}, cap {cap}", x.who, x.amount);
                    }
                    prop_assert!(
                        !unearned.contains(&x.who),
                        "client {} was rewarded for an update scoring at most 0",
                        x.who
                    );
                }
                if let CohortEvents::Refunded(x) = e {
                    prop_assert!(!rejected.contains(&x.who), "rejected update's client {} was refunded", x.who);
                }
            }
            for (a, b) in rejected.iter().zip(before) {
                prop_assert!(p.balance_of(*a).unwrap() <= b);
            }
        }
        let led = p.into_backend();
        led.verify().unwrap();
    }
}
