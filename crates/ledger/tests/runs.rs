//! Per-run governance and the data market on the ledger (contracts/src/CohortRuns.sol).
//! Scenarios for each rule, then random histories against a model: every governance call
//! succeeds exactly when the model says it may; no vote is counted twice and no proposal
//! executes before its timelock; no royalty is paid twice; token supply is conserved after every
//! call.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use alloy_primitives::{Address, B256, U256};
use cohort_core::{Identity, Score, sha256, tokens};
use cohort_ledger::protocol::{
    Cohort::{CohortErrors, CohortEvents},
    GovParams, Protocol, ProtocolError, accepted_set_hash, roles, unlearning,
};
use cohort_ledger::runs::{address_target, kind, request_target};
use cohort_ledger::{EmbeddedLedger, LedgerBackend, LedgerConfig};
use proptest::prelude::*;

const START: u64 = 1_800_000_000;
const VOTING: u64 = 3_600;
const TIMELOCK: u64 = 600;

/// Actors: the coordinator (0), clients 1..=4 (the founding roster, one dataset each), client 5
/// (outside the roster), two validators (6, 7), a sponsor (8).
const COORD: usize = 0;
const OUTSIDER: usize = 5;
const VALIDATORS: [usize; 2] = [6, 7];
const SPONSOR: usize = 8;

struct World {
    p: Protocol<EmbeddedLedger>,
    actors: Vec<Identity>,
    /// datasets[i]: client i's dataset (1..=5; 0 unused).
    datasets: Vec<B256>,
    now: u64,
    _tmp: tempfile::TempDir,
}

fn revert<T: std::fmt::Debug>(r: Result<T, ProtocolError>) -> CohortErrors {
    match r {
        Err(e) => e
            .revert()
            .cloned()
            .unwrap_or_else(|| panic!("not a revert: {e}")),
        Ok(v) => panic!("expected a revert, got {v:?}"),
    }
}

fn gov_params(quorum: u16, majority: u16, timelock: u64) -> GovParams {
    GovParams {
        quorumBps: quorum,
        majorityBps: majority,
        votingPeriod: VOTING,
        timelock,
    }
}

impl World {
    /// The world; with `governed`, the coordinator enables governance (50% quorum, simple
    /// majority) with the founding clients' datasets.
    fn new(governed: bool) -> Self {
        Self::with(governed.then(|| gov_params(5_000, 5_000, TIMELOCK)))
    }

    fn with(gov_params: Option<GovParams>) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let id = |n: &str| Identity::from_seed(17, n);
        let gov = id("governance");
        let led = EmbeddedLedger::create(
            tmp.path().join("l"),
            LedgerConfig::new("cohort.local/runs", gov.clone()).with_start_time(START),
        )
        .unwrap();
        let mut p = Protocol::deploy(led, &gov).unwrap();
        let names = [
            "coordinator",
            "client-1",
            "client-2",
            "client-3",
            "client-4",
            "outsider",
            "validator-0",
            "validator-1",
            "sponsor",
        ];
        let actors: Vec<Identity> = names.iter().map(|n| id(n)).collect();
        for a in &actors {
            p.mint(&gov, a.address(), tokens(5_000)).unwrap();
        }
        p.approve_coordinator(&gov, actors[COORD].address())
            .unwrap();
        p.register(&actors[COORD], roles::COORDINATOR).unwrap();
        let mut datasets = vec![B256::ZERO];
        for (i, c) in actors.iter().enumerate().take(OUTSIDER + 1).skip(1) {
            p.register(c, roles::CLIENT | roles::DATA_OWNER).unwrap();
            p.stake(c, tokens(500)).unwrap();
            let root = sha256(format!("data of {i}").as_bytes()).into();
            datasets.push(p.commit_dataset(c, root, B256::ZERO, 100).unwrap().value);
        }
        for &v in &VALIDATORS {
            p.register(&actors[v], roles::VALIDATOR).unwrap();
            p.stake(&actors[v], tokens(2_000)).unwrap();
        }
        let roster: Vec<Address> = (1..=4).map(|i| actors[i].address()).collect();
        p.extend_roster(&actors[COORD], &roster).unwrap();
        if let Some(g) = gov_params {
            p.enable_run_governance(&actors[COORD], g, &datasets[1..=4])
                .unwrap();
        }
        Self {
            p,
            actors,
            datasets,
            now: START,
            _tmp: tmp,
        }
    }

    fn addr(&self, i: usize) -> Address {
        self.actors[i].address()
    }

    fn run(&self) -> Address {
        self.addr(COORD)
    }

    fn advance(&mut self, secs: u64) {
        self.now += secs;
        self.p.backend_mut().set_time(self.now).unwrap();
    }

    fn balance(&mut self, i: usize) -> U256 {
        let a = self.addr(i);
        self.p.balance_of(a).unwrap()
    }

    fn conserved(&mut self) -> bool {
        self.p.supply().unwrap().conserved()
    }

    fn bond(&mut self, i: usize, amount: u64) -> Result<(), ProtocolError> {
        let run = self.run();
        self.p
            .gov_bond(&self.actors[i], run, tokens(amount))
            .map(drop)
    }

    fn propose(&mut self, i: usize, k: u8, target: B256) -> Result<u64, ProtocolError> {
        let run = self.run();
        let payload = if k == kind::HYPERPARAMS {
            sha256(b"lr = 0.01").into()
        } else {
            B256::ZERO
        };
        self.p
            .propose(&self.actors[i], run, k, target, payload)
            .map(|s| s.value)
    }

    fn vote(&mut self, i: usize, proposal: u64, support: bool) -> Result<(), ProtocolError> {
        let run = self.run();
        self.p
            .vote(&self.actors[i], run, proposal, support)
            .map(drop)
    }

    fn execute(&mut self, proposal: u64) -> Result<Vec<CohortEvents>, ProtocolError> {
        let run = self.run();
        self.p
            .execute_proposal(&self.actors[SPONSOR], run, proposal)
            .map(|s| s.events)
    }

    /// Opens a round with every roster client in the cohort and `recipe` (when some).
    fn open(&mut self, recipe: Option<B256>) -> u64 {
        let coord = self.actors[COORD].clone();
        let round = self
            .p
            .open_round(&coord, sha256(b"model").into(), tokens(100), false, 64)
            .unwrap()
            .value;
        if let Some(r) = recipe {
            self.p.set_round_recipe(&coord, round, r).unwrap();
        }
        round
    }

    fn submit(&mut self, client: usize, round: u64, dataset: B256) -> Result<u32, ProtocolError> {
        let blob = sha256(format!("update {client} {round}").as_bytes()).into();
        self.p
            .submit_update(&self.actors[client], round, blob, dataset, 50)
            .map(|s| s.value)
    }

    /// Scores every update of `round` positively, tallies, finalizes and settles it.
    fn close(&mut self, round: u64, updates: usize) {
        let coord = self.actors[COORD].clone();
        self.p.close_submissions(&coord, round).unwrap();
        let scores: Vec<Score> = (0..updates).map(|_| Score(100_000)).collect();
        for &v in &VALIDATORS {
            let salt = B256::from(sha256(format!("salt {v} {round}").as_bytes()));
            self.p
                .commit_scores(&self.actors[v], round, &scores, salt)
                .unwrap();
        }
        self.p.close_commits(&coord, round).unwrap();
        for &v in &VALIDATORS {
            let salt = B256::from(sha256(format!("salt {v} {round}").as_bytes()));
            self.p
                .reveal_scores(&self.actors[v], round, &scores, salt)
                .unwrap();
        }
        self.p.tally_all(&coord, round, 8).unwrap();
        let accepted: Vec<u32> = (0..updates as u32).collect();
        self.p
            .finalize(&coord, round, B256::ZERO, accepted_set_hash(&accepted))
            .unwrap();
        self.p.settle_all(&coord, round, 8).unwrap();
    }
}

#[test]
fn a_forty_percent_coalition_can_neither_pass_nor_block_a_proposal() {
    let mut w = World::new(true);
    // Clients 1 and 2 hold 40% of the bonded stake, 3 and 4 the other 60%.
    for (i, amount) in [(1, 20), (2, 20), (3, 30), (4, 30)] {
        w.bond(i, amount).unwrap();
    }
    let outsider = address_target(w.addr(OUTSIDER));

    // The coalition alone votes for: 40% of the stake is below the 50% quorum.
    let alone = w.propose(1, kind::ADMIT_CLIENT, outsider).unwrap();
    w.vote(1, alone, true).unwrap();
    w.vote(2, alone, true).unwrap();
    assert!(!w.p.proposal(w.run(), alone).unwrap().1);
    w.advance(VOTING + TIMELOCK);
    match revert(w.execute(alone)) {
        CohortErrors::ProposalRejected(x) => assert_eq!(x.proposalId, alone),
        other => panic!("expected ProposalRejected, got {other:?}"),
    }
    let (p, passing) = w.p.proposal(w.run(), alone).unwrap();
    assert_eq!(
        (p.yes, p.no, p.snapshotTotal, passing),
        (tokens(40), U256::ZERO, tokens(100), false)
    );
    let coord = w.actors[COORD].clone();
    let out = w.addr(OUTSIDER);
    assert!(matches!(
        revert(w.p.extend_roster(&coord, &[out])),
        CohortErrors::NotAdmitted(_)
    ));

    // The other 60% vote for and the coalition against: it passes.
    let majority = w.propose(3, kind::ADMIT_CLIENT, outsider).unwrap();
    for (i, support) in [(1, false), (2, false), (3, true), (4, true)] {
        w.vote(i, majority, support).unwrap();
    }
    assert!(w.p.proposal(w.run(), majority).unwrap().1);
    // Not before voting ends, nor before the timelock after it.
    assert!(matches!(
        revert(w.execute(majority)),
        CohortErrors::VotingOpen(_)
    ));
    w.advance(VOTING);
    match revert(w.execute(majority)) {
        CohortErrors::Timelocked(x) => assert_eq!(x.executableAt, w.now + TIMELOCK),
        other => panic!("expected Timelocked, got {other:?}"),
    }
    w.advance(TIMELOCK - 1);
    assert!(matches!(
        revert(w.execute(majority)),
        CohortErrors::Timelocked(_)
    ));
    w.advance(1);
    let events = w.execute(majority).unwrap();
    assert!(events.iter().any(
        |e| matches!(e, CohortEvents::ClientAdmitted(a) if a.client == out && a.proposalId == majority)
    ));
    assert!(matches!(
        revert(w.execute(majority)),
        CohortErrors::AlreadyExecuted(_)
    ));
    // The admitted client joins the roster; one nobody admitted does not.
    w.p.extend_roster(&coord, &[out]).unwrap();
    let sponsor = w.addr(SPONSOR);
    assert!(matches!(
        revert(w.p.extend_roster(&coord, &[sponsor])),
        CohortErrors::NotAdmitted(_)
    ));

    // The coalition against and nobody for: below the quorum, it does not pass either (the
    // coalition cannot carry a "no" alone any more than a "yes").
    let third = w.propose(4, kind::HYPERPARAMS, B256::ZERO).unwrap();
    w.vote(1, third, false).unwrap();
    w.vote(2, third, false).unwrap();
    w.advance(VOTING + TIMELOCK);
    assert!(matches!(
        revert(w.execute(third)),
        CohortErrors::ProposalRejected(_)
    ));
    assert!(w.conserved());
}

#[test]
fn a_vote_counts_once_and_the_same_tokens_cannot_vote_twice() {
    let mut w = World::new(true);
    let run = w.run();
    // Without a bond, nobody proposes; a party outside the run cannot bond.
    assert!(matches!(
        revert(w.propose(1, kind::HYPERPARAMS, B256::ZERO)),
        CohortErrors::NoBond(_)
    ));
    assert!(matches!(
        revert(w.bond(SPONSOR, 10)),
        CohortErrors::NotAMember(_)
    ));
    assert!(matches!(revert(w.bond(1, 0)), CohortErrors::ZeroAmount(_)));
    w.bond(1, 50).unwrap();
    w.bond(2, 50).unwrap();
    let before = w.balance(1);
    let id = w.propose(1, kind::HYPERPARAMS, B256::ZERO).unwrap();
    w.vote(1, id, true).unwrap();
    assert!(matches!(
        revert(w.vote(1, id, false)),
        CohortErrors::AlreadyVoted(_)
    ));
    // Its bond is locked until the vote ends.
    match revert(w.p.gov_unbond(&w.actors[1].clone(), run, tokens(1))) {
        CohortErrors::BondLocked(x) => assert_eq!(x.until, w.now + VOTING),
        other => panic!("expected BondLocked, got {other:?}"),
    }
    // Client 2 takes its bond back and bonds it again: those tokens do not vote on a proposal
    // made before; nor do tokens client 1 hands to client 3, who bonds them now.
    w.p.gov_unbond(&w.actors[2].clone(), run, tokens(50))
        .unwrap();
    w.bond(2, 50).unwrap();
    assert!(matches!(
        revert(w.vote(2, id, true)),
        CohortErrors::BondAfterProposal(_)
    ));
    let c3 = w.addr(3);
    w.p.transfer(&w.actors[1].clone(), c3, tokens(100)).unwrap();
    w.bond(3, 100).unwrap();
    assert!(matches!(
        revert(w.vote(3, id, true)),
        CohortErrors::BondAfterProposal(_)
    ));
    let (p, _) = w.p.proposal(run, id).unwrap();
    assert_eq!(
        (p.yes, p.no, p.snapshotTotal),
        (tokens(50), U256::ZERO, tokens(100))
    );
    // After the vote the bond comes back.
    w.advance(VOTING);
    assert!(matches!(
        revert(w.vote(2, id, true)),
        CohortErrors::VotingClosed(_)
    ));
    w.p.gov_unbond(&w.actors[1].clone(), run, tokens(50))
        .unwrap();
    assert_eq!(w.balance(1), before - tokens(100) + tokens(50));
    assert!(matches!(
        revert(w.p.gov_unbond(&w.actors[1].clone(), run, tokens(1))),
        CohortErrors::InsufficientStake(_)
    ));
    // Unknown proposals and malformed ones are refused by name.
    assert!(matches!(
        revert(w.vote(2, 99, true)),
        CohortErrors::UnknownProposal(_)
    ));
    for (k, target) in [
        (0, B256::ZERO),
        (9, B256::ZERO),
        (kind::ADMIT_CLIENT, B256::repeat_byte(0xff)),
        (kind::ADMIT_CLIENT, B256::ZERO),
        (kind::ADMIT_DATASET, w.datasets[1]),
    ] {
        assert!(
            matches!(
                revert(w.propose(2, k, target)),
                CohortErrors::InvalidProposal(_)
            ),
            "kind {k} target {target}"
        );
    }
    assert!(matches!(
        revert(w.propose(2, kind::ADMIT_CLIENT, address_target(w.addr(1)))),
        CohortErrors::AlreadyInRoster(_)
    ));
    assert!(matches!(
        revert(w.propose(2, kind::ADMIT_CLIENT, address_target(w.addr(SPONSOR)))),
        CohortErrors::MissingRole(_)
    ));
    assert!(matches!(
        revert(w.propose(2, kind::ADMIT_DATASET, B256::repeat_byte(7))),
        CohortErrors::UnknownDataset(_)
    ));
    assert!(matches!(
        revert(w.propose(2, kind::APPROVE_UNLEARNING, request_target(5))),
        CohortErrors::UnknownRequest(_)
    ));
    // Governance is enabled once, with parameters in range.
    let coord = w.actors[COORD].clone();
    assert!(matches!(
        revert(w.p.enable_run_governance(&coord, gov_params(5_000, 5_000, 0), &[])),
        CohortErrors::GovernanceEnabled(_)
    ));
    assert!(w.conserved());
}

#[test]
fn governance_parameters_out_of_range_are_refused_by_field() {
    let mut w = World::new(false);
    let coord = w.actors[COORD].clone();
    let cases = [
        (gov_params(0, 5_000, 0), 0),
        (gov_params(10_001, 5_000, 0), 0),
        (gov_params(5_000, 4_999, 0), 1),
        (gov_params(5_000, 10_000, 0), 1),
        (
            GovParams {
                votingPeriod: 0,
                ..gov_params(5_000, 5_000, 0)
            },
            2,
        ),
        (
            GovParams {
                votingPeriod: 366 * 86_400,
                ..gov_params(5_000, 5_000, 0)
            },
            2,
        ),
        (gov_params(5_000, 5_000, 366 * 86_400), 3),
    ];
    for (g, field) in cases {
        match revert(w.p.enable_run_governance(&coord, g.clone(), &[])) {
            CohortErrors::InvalidGovParam(x) => assert_eq!(x.field, field, "{g:?}"),
            other => panic!("{g:?}: expected InvalidGovParam, got {other:?}"),
        }
    }
    // Only a coordinator enables governance, and only with datasets that exist.
    assert!(matches!(
        revert(w.p.enable_run_governance(&w.actors[1].clone(), gov_params(5_000, 5_000, 0), &[])),
        CohortErrors::MissingRole(_)
    ));
    assert!(matches!(
        revert(w.p.enable_run_governance(
            &coord,
            gov_params(5_000, 5_000, 0),
            &[B256::repeat_byte(1)]
        )),
        CohortErrors::UnknownDataset(_)
    ));
    // Without governance, bonding and proposing are refused by name.
    assert!(matches!(
        revert(w.bond(1, 1)),
        CohortErrors::NoGovernance(_)
    ));
    assert_eq!(w.p.run_governance(w.run()).unwrap().votingPeriod, 0);
}

#[test]
fn a_governed_run_trains_on_admitted_datasets_and_forgets_with_approval() {
    let mut w = World::new(true);
    w.bond(1, 60).unwrap();
    w.bond(2, 40).unwrap();
    // Client 1 commits a second dataset, not admitted: the run's rounds refuse it.
    let c1 = w.actors[1].clone();
    let extra =
        w.p.commit_dataset(&c1, sha256(b"more data of 1").into(), B256::ZERO, 100)
            .unwrap()
            .value;
    let round = w.open(None);
    match revert(w.submit(1, round, extra)) {
        CohortErrors::NotAdmitted(x) => assert_eq!(x.what, extra),
        other => panic!("expected NotAdmitted, got {other:?}"),
    }
    // Founding datasets train.
    w.submit(1, round, w.datasets[1]).unwrap();
    w.submit(2, round, w.datasets[2]).unwrap();
    w.close(round, 2);
    // Admitted by a vote, the dataset trains in the next round.
    let id = w.propose(2, kind::ADMIT_DATASET, extra).unwrap();
    w.vote(1, id, true).unwrap();
    w.advance(VOTING + TIMELOCK);
    w.execute(id).unwrap();
    let next = w.open(None);
    w.submit(1, next, extra).unwrap();

    // Client 2 asks to be forgotten: its dataset was admitted to this run, so the execution
    // waits for the run's approval.
    let c2 = w.actors[2].clone();
    let request =
        w.p.request_unlearning(&c2, w.datasets[2], B256::ZERO, B256::ZERO)
            .unwrap()
            .value;
    let coord = w.actors[COORD].clone();
    let record = |w: &mut World| {
        w.p.record_unlearning(
            &coord,
            request,
            unlearning::RETRAIN,
            sha256(b"unlearned").into(),
            sha256(b"evidence").into(),
        )
    };
    match revert(record(&mut w)) {
        CohortErrors::UnlearningNotApproved(x) => {
            assert_eq!((x.requestId, x.run), (request, w.run()))
        }
        other => panic!("expected UnlearningNotApproved, got {other:?}"),
    }
    let id = w
        .propose(1, kind::APPROVE_UNLEARNING, request_target(request))
        .unwrap();
    w.vote(1, id, true).unwrap();
    w.vote(2, id, true).unwrap();
    w.advance(VOTING + TIMELOCK);
    let events = w.execute(id).unwrap();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, CohortEvents::UnlearningApproved(a) if a.requestId == request))
    );
    record(&mut w).unwrap();
    // Hyperparameters are recorded by hash with the round count at execution.
    let id = w.propose(1, kind::HYPERPARAMS, B256::ZERO).unwrap();
    w.vote(1, id, true).unwrap();
    w.advance(VOTING + TIMELOCK);
    w.execute(id).unwrap();
    let (p, _) = w.p.proposal(w.run(), id).unwrap();
    assert!(p.executed);
    assert_eq!(p.roundsAtExecution, next);
    assert_eq!(p.payloadHash, B256::from(sha256(b"lr = 0.01")));
    assert!(w.conserved());
}

#[test]
fn royalties_are_split_paid_once_per_round_and_only_under_allowed_recipes() {
    let mut w = World::new(false);
    let recipe: B256 = sha256(b"recipe A").into();
    let other: B256 = sha256(b"recipe B").into();
    let (c1, c2, coord) = (
        w.actors[1].clone(),
        w.actors[2].clone(),
        w.actors[COORD].clone(),
    );
    // Client 1 lists at 10 tokens a round, allowing recipe A; client 2 at 5, allowing B only;
    // client 3 does not list.
    w.p.list_dataset(&c1, w.datasets[1], tokens(10), &[recipe])
        .unwrap();
    w.p.list_dataset(&c2, w.datasets[2], tokens(5), &[other])
        .unwrap();
    assert!(matches!(
        revert(w.p.list_dataset(&c2, w.datasets[1], tokens(5), &[])),
        CohortErrors::NotDatasetOwner(_)
    ));
    assert!(matches!(
        revert(w.p.list_dataset(&c1, w.datasets[1], U256::ZERO, &[])),
        CohortErrors::ZeroAmount(_)
    ));
    assert!(matches!(
        revert(w.p.list_dataset(&c1, w.datasets[1], U256::MAX, &[])),
        CohortErrors::PriceAboveSupply(_)
    ));
    // 10% to the coordinator, 5% to the treasury, the rest to the owner.
    assert!(matches!(
        revert(w.p.set_market_fees(&coord, 6_000, 5_000)),
        CohortErrors::InvalidFees(_)
    ));
    w.p.set_market_fees(&coord, 1_000, 500).unwrap();
    let sponsor = w.actors[SPONSOR].clone();
    let run = w.run();
    w.p.fund_royalties(&sponsor, run, tokens(12)).unwrap();

    let round = w.open(Some(recipe));
    assert!(matches!(
        revert(w.p.set_round_recipe(&coord, round, other)),
        CohortErrors::RecipeSet(_)
    ));
    // Client 2's listing does not allow recipe A: its update is refused, and it records that
    // it sits the round out; client 1 cannot (recipe A is allowed on its data), nor can an
    // unlisted dataset's owner.
    assert!(matches!(
        revert(w.submit(2, round, w.datasets[2])),
        CohortErrors::RecipeNotAllowed(_)
    ));
    let refusal = w.p.refuse_round(&c2, round, w.datasets[2]).unwrap();
    assert!(refusal.events.iter().any(
        |e| matches!(e, CohortEvents::RoundRefused(r) if r.roundId == round && r.recipe == recipe)
    ));
    assert!(matches!(
        revert(w.p.refuse_round(&c1, round, w.datasets[1])),
        CohortErrors::RecipeAllowedThere(_)
    ));
    let i1 = w.submit(1, round, w.datasets[1]).unwrap();
    let i3 = w.submit(3, round, w.datasets[3]).unwrap();
    // Not before the round is finalized.
    assert!(matches!(
        revert(w.p.pay_royalty(&sponsor, round, i1)),
        CohortErrors::WrongPhase(_)
    ));
    w.close(round, 2);
    let (b1, bc, treasury) = (
        w.balance(1),
        w.balance(COORD),
        w.p.supply().unwrap().treasury,
    );
    let paid = w.p.pay_royalty(&sponsor, round, i1).unwrap();
    assert!(paid.events.iter().any(|e| matches!(e,
        CohortEvents::RoyaltyPaid(r) if r.toOwner == tokens(10) * U256::from(85) / U256::from(100)
            && r.toCoordinator == tokens(1) && r.toTreasury == tokens(10) / U256::from(20))));
    assert_eq!(w.balance(1), b1 + tokens(85) / U256::from(10));
    assert_eq!(w.balance(COORD), bc + tokens(1));
    assert_eq!(
        w.p.supply().unwrap().treasury,
        treasury + tokens(1) / U256::from(2)
    );
    assert_eq!(
        w.p.royalty(round, w.datasets[1]).unwrap(),
        (true, tokens(10))
    );
    assert_eq!(w.p.market_of(run).unwrap().1, tokens(2));
    // Once per round and dataset; an unlisted dataset owes none.
    assert!(matches!(
        revert(w.p.pay_royalty(&sponsor, round, i1)),
        CohortErrors::RoyaltyAlreadyPaid(_)
    ));
    assert!(matches!(
        revert(w.p.pay_royalty(&sponsor, round, i3)),
        CohortErrors::NotListed(_)
    ));
    assert!(matches!(
        revert(w.p.pay_royalty(&sponsor, round, 7)),
        CohortErrors::UnknownUpdate(_)
    ));

    // The next round finds 2 tokens in the fund: the royalty waits until it is refilled.
    let next = w.open(Some(recipe));
    let j1 = w.submit(1, next, w.datasets[1]).unwrap();
    w.close(next, 1);
    match revert(w.p.pay_royalty(&sponsor, next, j1)) {
        CohortErrors::InsufficientRoyaltyFund(x) => {
            assert_eq!((x.have, x.need), (tokens(2), tokens(10)))
        }
        other => panic!("expected InsufficientRoyaltyFund, got {other:?}"),
    }
    w.p.fund_royalties(&sponsor, run, tokens(8)).unwrap();
    w.p.pay_royalty(&sponsor, next, j1).unwrap();

    // Delisted, a dataset owes nothing for rounds opened after; a round opened before still
    // owes. Recipes are allowed by the owner only, on a listed dataset.
    let third = w.open(Some(recipe));
    let k1 = w.submit(1, third, w.datasets[1]).unwrap();
    w.p.delist_dataset(&c1, w.datasets[1]).unwrap();
    assert!(matches!(
        revert(w.p.allow_recipe(&c1, w.datasets[1], other, true)),
        CohortErrors::NotListed(_)
    ));
    w.close(third, 1);
    w.advance(10);
    let fourth = w.open(Some(recipe));
    let l1 = w.submit(1, fourth, w.datasets[1]).unwrap();
    w.close(fourth, 1);
    w.p.fund_royalties(&sponsor, run, tokens(20)).unwrap();
    w.p.pay_royalty(&sponsor, third, k1).unwrap();
    assert!(matches!(
        revert(w.p.pay_royalty(&sponsor, fourth, l1)),
        CohortErrors::NotListed(_)
    ));
    // Fees are fixed once the run has started.
    assert!(matches!(
        revert(w.p.set_market_fees(&coord, 0, 0)),
        CohortErrors::RosterFixed(_)
    ));
    assert!(w.conserved());
}

// ---------------------------------------------------------------------------------------------
// Random histories
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Bond(usize, u64),
    Unbond(usize, u64),
    Propose(usize),
    Vote(usize, u64, bool),
    Execute(u64),
    Transfer(usize, usize, u64),
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    // Members 0..=4 (the coordinator and the roster); 5 is outside the run.
    prop_oneof![
        3 => (0usize..6, 0u64..80).prop_map(|(m, a)| Op::Bond(m, a)),
        1 => (0usize..6, 0u64..80).prop_map(|(m, a)| Op::Unbond(m, a)),
        2 => (0usize..6).prop_map(Op::Propose),
        4 => (0usize..6, 0u64..6, any::<bool>()).prop_map(|(m, p, s)| Op::Vote(m, p, s)),
        2 => (0u64..6).prop_map(Op::Execute),
        1 => (0usize..6, 0usize..6, 0u64..50).prop_map(|(a, b, x)| Op::Transfer(a, b, x)),
        2 => prop_oneof![0u64..60, Just(VOTING), Just(TIMELOCK), 3_000u64..5_000].prop_map(Op::Advance),
    ]
}

/// The model's view of a proposal.
#[derive(Debug, Clone)]
struct Prop {
    ends: u64,
    executable_at: u64,
    snapshot: u128,
    yes: u128,
    no: u128,
    voted: Vec<usize>,
    executed: bool,
}

#[derive(Debug, Default)]
struct Model {
    bond: [u128; 6],
    /// The proposal count at each member's last bond increase.
    epoch: [u64; 6],
    locked: [u64; 6],
    total: u128,
    props: Vec<Prop>,
}

fn passes(p: &Prop, quorum: u16, majority: u16) -> bool {
    let cast = p.yes + p.no;
    cast != 0
        && cast * 10_000 >= u128::from(quorum) * p.snapshot
        && p.yes * 10_000 > u128::from(majority) * cast
}

fn whole(x: U256) -> u128 {
    u128::try_from(x / tokens(1)).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn random_governance_histories_follow_the_model(
        quorum in prop_oneof![Just(5_000u16), 1u16..=10_000],
        majority in prop_oneof![Just(5_000u16), 5_000u16..10_000],
        timelock in prop_oneof![Just(0u64), Just(TIMELOCK)],
        ops in prop::collection::vec(op(), 1..40),
    ) {
        let mut w = World::with(Some(gov_params(quorum, majority, timelock)));
        let run = w.run();
        let mut m = Model::default();
        for op in ops {
            match op {
                Op::Bond(i, a) => {
                    let bal = whole(w.balance(i));
                    let ok = i <= 4 && a > 0 && bal >= u128::from(a);
                    let r = w.bond(i, a);
                    prop_assert_eq!(r.is_ok(), ok, "bond {} {}: {:?}", i, a, r.err());
                    if ok {
                        m.bond[i] += u128::from(a);
                        m.total += u128::from(a);
                        m.epoch[i] = m.props.len() as u64;
                    }
                }
                Op::Unbond(i, a) => {
                    let ok = a > 0 && m.bond[i] >= u128::from(a) && w.now >= m.locked[i];
                    let r = w.p.gov_unbond(&w.actors[i].clone(), run, tokens(a));
                    prop_assert_eq!(r.is_ok(), ok, "unbond {} {}: {:?}", i, a, r.err());
                    if ok {
                        m.bond[i] -= u128::from(a);
                        m.total -= u128::from(a);
                    }
                }
                Op::Propose(i) => {
                    let ok = m.bond[i] > 0;
                    let r = w.propose(i, kind::HYPERPARAMS, B256::ZERO);
                    prop_assert_eq!(r.is_ok(), ok, "propose {}: {:?}", i, r.as_ref().err());
                    if ok {
                        prop_assert_eq!(r.unwrap(), m.props.len() as u64 + 1);
                        m.props.push(Prop {
                            ends: w.now + VOTING,
                            executable_at: w.now + VOTING + timelock,
                            snapshot: m.total,
                            yes: 0,
                            no: 0,
                            voted: Vec::new(),
                            executed: false,
                        });
                    }
                }
                Op::Vote(i, id, support) => {
                    let known = id >= 1 && (id as usize) <= m.props.len();
                    let ok = known && {
                        let p = &m.props[id as usize - 1];
                        w.now < p.ends && m.bond[i] > 0 && m.epoch[i] < id && !p.voted.contains(&i)
                    };
                    let r = w.vote(i, id, support);
                    prop_assert_eq!(r.is_ok(), ok, "vote {} on {}: {:?}", i, id, r.err());
                    if ok {
                        let p = &mut m.props[id as usize - 1];
                        if support { p.yes += m.bond[i] } else { p.no += m.bond[i] }
                        p.voted.push(i);
                        m.locked[i] = m.locked[i].max(p.ends);
                    }
                }
                Op::Execute(id) => {
                    let known = id >= 1 && (id as usize) <= m.props.len();
                    let ok = known && {
                        let p = &m.props[id as usize - 1];
                        !p.executed && w.now >= p.executable_at && passes(p, quorum, majority)
                    };
                    let r = w.execute(id);
                    prop_assert_eq!(r.is_ok(), ok, "execute {}: {:?}", id, r.err());
                    if ok {
                        m.props[id as usize - 1].executed = true;
                    }
                }
                Op::Transfer(a, b, x) => {
                    let to = w.addr(b);
                    let _ = w.p.transfer(&w.actors[a].clone(), to, tokens(x));
                }
                Op::Advance(s) => w.advance(s),
            }
            prop_assert!(w.conserved(), "supply not conserved after {:?}", op);
        }
        // The contract's tallies are the model's: every vote counted once, with its weight.
        for (k, p) in m.props.iter().enumerate() {
            let (c, _) = w.p.proposal(run, k as u64 + 1).unwrap();
            prop_assert_eq!((whole(c.yes), whole(c.no), whole(c.snapshotTotal)), (p.yes, p.no, p.snapshot));
            prop_assert_eq!(c.executed, p.executed);
            prop_assert!(!c.executed || c.executedAt >= c.executableAt);
        }
        for i in 0..6 {
            let (bond, total, _) = w.p.gov_bond_of(run, w.addr(i)).unwrap();
            prop_assert_eq!((whole(bond), whole(total)), (m.bond[i], m.total));
        }
        w.p.into_backend().verify().unwrap();
    }

    #[test]
    fn a_royalty_is_never_paid_twice_and_supply_is_conserved(
        pays in prop::collection::vec((0usize..3, 0u32..4, 0u64..25), 1..30),
    ) {
        // Two listed datasets (10 and 5 tokens a round), one unlisted, over three rounds; a
        // random sequence of payments and top-ups of the fund.
        let mut w = World::new(false);
        let recipe: B256 = sha256(b"recipe").into();
        let run = w.run();
        for (i, price) in [(1usize, 10u64), (2, 5)] {
            let c = w.actors[i].clone();
            w.p.list_dataset(&c, w.datasets[i], tokens(price), &[recipe]).unwrap();
        }
        let coord = w.actors[COORD].clone();
        w.p.set_market_fees(&coord, 700, 300).unwrap();
        let mut rounds = Vec::new();
        for _ in 0..3 {
            let r = w.open(Some(recipe));
            for c in 1..=3 {
                w.submit(c, r, w.datasets[c]).unwrap();
            }
            w.close(r, 3);
            rounds.push(r);
        }
        let sponsor = w.actors[SPONSOR].clone();
        let mut paid = std::collections::BTreeSet::new();
        let mut fund = 0u128;
        for (r, index, top_up) in pays {
            if top_up > 0 {
                w.p.fund_royalties(&sponsor, run, tokens(top_up)).unwrap();
                fund += u128::from(top_up);
            }
            let round = rounds[r];
            let price = [10u128, 5, 0].get(index as usize).copied().unwrap_or(0);
            let ok = index < 2 && !paid.contains(&(round, index)) && fund >= price;
            let res = w.p.pay_royalty(&sponsor, round, index);
            prop_assert_eq!(res.is_ok(), ok, "round {} update {}: {:?}", round, index, res.err());
            if ok {
                paid.insert((round, index));
                fund -= price;
            }
            prop_assert_eq!(whole(w.p.market_of(run).unwrap().1), fund);
            prop_assert!(w.conserved());
        }
        for (i, price) in [(1usize, 10u128), (2, 5)] {
            let n = paid.iter().filter(|(_, k)| *k as usize == i - 1).count() as u128;
            let (_, total) = w.p.royalty(rounds[0], w.datasets[i]).unwrap();
            prop_assert_eq!(whole(total), n * price);
        }
    }
}

/// What each governance call costs, bounded (a vote or an execution must stay cheap however
/// many members a run has: none loops over them). Prints the figures docs/economics.md quotes.
#[test]
fn governance_calls_cost_a_bounded_gas() {
    let mut w = World::new(true);
    let run = w.run();
    let c1 = w.actors[1].clone();
    let c2 = w.actors[2].clone();
    let bond = w.p.gov_bond(&c1, run, tokens(60)).unwrap().gas_used;
    w.p.gov_bond(&c2, run, tokens(40)).unwrap();
    let target = address_target(w.addr(OUTSIDER));
    let propose =
        w.p.propose(&c1, run, kind::ADMIT_CLIENT, target, B256::ZERO)
            .unwrap();
    let id = propose.value;
    let vote = w.p.vote(&c1, run, id, true).unwrap().gas_used;
    let vote2 = w.p.vote(&c2, run, id, false).unwrap().gas_used;
    w.advance(VOTING + TIMELOCK);
    let execute = w.p.execute_proposal(&c2, run, id).unwrap().gas_used;
    let unbond = w.p.gov_unbond(&c2, run, tokens(40)).unwrap().gas_used;
    eprintln!(
        "gas: govBond {bond}, propose {}, vote {vote} / {vote2}, execute (admit a client) \
         {execute}, govUnbond {unbond}",
        propose.gas_used
    );
    for (what, gas, bound) in [
        ("govBond", bond, 150_000),
        ("propose", propose.gas_used, 250_000),
        ("vote", vote.max(vote2), 120_000),
        ("execute", execute, 150_000),
        ("govUnbond", unbond, 100_000),
    ] {
        assert!(gas < bound, "{what} costs {gas} gas (bound {bound})");
    }
}

/// `rewardPerScore`: an accepted update is paid at most its score times the rate (the rest of
/// the pool goes to the treasury), so a round pays in proportion to what it brings; a rate
/// beyond the supply cap is refused by field.
#[test]
fn a_round_pays_per_unit_of_score_when_the_rate_is_set() {
    let mut w = World::new(false);
    let gov = Identity::from_seed(17, "governance");
    let mut params = w.p.params().unwrap();
    params.rewardPerScore = U256::from(u128::MAX) + U256::from(1);
    match revert(w.p.set_params(&gov, params.clone())) {
        CohortErrors::InvalidParam(x) => assert_eq!(x.field, 11),
        other => panic!("expected InvalidParam, got {other:?}"),
    }
    // 20 tokens per 1.0 of score; World::close scores every update 0.1.
    params.rewardPerScore = tokens(20);
    w.p.set_params(&gov, params).unwrap();
    let round = w.open(None);
    w.submit(1, round, w.datasets[1]).unwrap();
    w.submit(2, round, w.datasets[2]).unwrap();
    let treasury = w.p.supply().unwrap().treasury;
    let before = w.balance(1);
    w.close(round, 2);
    // Refunded its deposit, paid 0.1 * 20 = 2 tokens (its share of the pool would be 45).
    let deposit = w.p.params().unwrap().updateDeposit;
    assert_eq!(w.balance(1), before + deposit + tokens(2));
    // The pool's rest (100 - 2 * 2 - what the validators earned) went to the treasury.
    assert!(w.p.supply().unwrap().treasury > treasury + tokens(80));
    assert!(w.conserved());
}
