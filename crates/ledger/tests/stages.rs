//! Stage servers on the ledger: escrowed pay per token, fraud claims by a quorum of verifiers,
//! slashing. Scenarios for each rule, then random histories against a model: every call
//! succeeds exactly when the model says it may and moves balances, stakes and escrows as the
//! model does; token supply is conserved after every call; no escrow is released before its
//! window or to a slashed server; a server is slashed at most once, and only by a quorum.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use alloy_primitives::{Address, B256, U256};
use cohort_core::{Identity, sha256, tokens};
use cohort_ledger::protocol::{
    Cohort::{CohortErrors, CohortEvents},
    Protocol, ProtocolError, Sent, StageParams, roles, stage_claim_id,
};
use cohort_ledger::{EmbeddedLedger, LedgerBackend, LedgerConfig};
use proptest::prelude::*;

const START: u64 = 1_800_000_000;
/// The default challenge window, seconds.
const WINDOW: u64 = 3_600;

/// A deployment with four stage servers (0, 1, 2 hold layers 0..2 of the model, 3 holds
/// layers 2..4), a registered and staked participant that is no stage server, and two
/// clients with balances.
struct World {
    p: Protocol<EmbeddedLedger>,
    gov: Identity,
    /// servers 0..4, then `other` (4), then the clients (5, 6).
    actors: Vec<Identity>,
    now: u64,
    _tmp: tempfile::TempDir,
}

const OTHER: usize = 4;
const CLIENTS: [usize; 2] = [5, 6];

fn model() -> B256 {
    sha256(b"model files").into()
}

impl World {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let id = |n: &str| Identity::from_seed(11, n);
        let gov = id("governance");
        let led = EmbeddedLedger::create(
            tmp.path().join("l"),
            LedgerConfig::new("cohort.local/stages", gov.clone()).with_start_time(START),
        )
        .unwrap();
        let mut p = Protocol::deploy(led, &gov).unwrap();
        let actors: Vec<Identity> = [
            "server-0", "server-1", "server-2", "server-3", "other", "client-0", "client-1",
        ]
        .iter()
        .map(|n| id(n))
        .collect();
        for a in &actors {
            p.mint(&gov, a.address(), tokens(3_000)).unwrap();
        }
        for (i, s) in actors[..=OTHER].iter().enumerate() {
            p.register(s, roles::VALIDATOR).unwrap();
            p.stake(s, tokens(2_000)).unwrap();
            if i < OTHER {
                let layers = if i < 3 { 0..2 } else { 2..4 };
                p.register_stage(s, model(), layers).unwrap();
            }
        }
        Self {
            p,
            gov,
            actors,
            now: START,
            _tmp: tmp,
        }
    }

    fn addr(&self, i: usize) -> Address {
        self.actors[i].address()
    }

    fn advance(&mut self, secs: u64) {
        self.now += secs;
        self.p.backend_mut().set_time(self.now).unwrap();
    }

    fn pay(&mut self, payer: usize, server: usize, period: u64, amount: U256) -> Sent<()> {
        let s = self.addr(server);
        self.p
            .pay_stage(&self.actors[payer], s, period, 1_000, amount)
            .unwrap()
    }

    fn attest(
        &mut self,
        verifier: usize,
        server: usize,
        claim: u8,
    ) -> Result<Sent<U256>, ProtocolError> {
        let (call, committed, recomputed) = claim_of(claim);
        let s = self.addr(server);
        self.p
            .attest_stage_fraud(&self.actors[verifier], s, 1, call, committed, recomputed)
    }

    fn release(&mut self, server: usize, period: u64) -> Result<Sent<()>, ProtocolError> {
        let s = self.addr(server);
        self.p.release_stage(&self.actors[CLIENTS[0]], s, period)
    }

    fn refund(
        &mut self,
        server: usize,
        period: u64,
        payer: usize,
    ) -> Result<Sent<()>, ProtocolError> {
        let (s, who) = (self.addr(server), self.addr(payer));
        self.p.refund_stage(&self.actors[OTHER], s, period, who)
    }

    fn balance(&mut self, i: usize) -> U256 {
        let a = self.addr(i);
        self.p.balance_of(a).unwrap()
    }

    fn conserved(&mut self) -> bool {
        self.p.supply().unwrap().conserved()
    }
}

/// Claim `k`: a call digest, the committed row and the recomputed one (equal for `k == 2`,
/// which is no mismatch).
fn claim_of(k: u8) -> (B256, B256, B256) {
    let call = sha256(format!("call {}", k % 2).as_bytes()).into();
    let committed = sha256(b"committed").into();
    let recomputed = if k == 2 {
        committed
    } else {
        sha256(b"recomputed").into()
    };
    (call, committed, recomputed)
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

#[test]
fn an_honest_server_is_paid_after_the_window_and_not_before() {
    let mut w = World::new();
    let before = w.balance(0);
    w.pay(CLIENTS[0], 0, 7, tokens(100));
    w.advance(WINDOW / 2);
    // A second payment moves the release on.
    w.pay(CLIENTS[1], 0, 7, tokens(20));
    let e = w.p.stage_escrow(w.addr(0), 7).unwrap();
    assert_eq!(
        (e.amount, e.tokens, e.releaseAt, e.released),
        (tokens(120), 2_000, w.now + WINDOW, false)
    );
    w.advance(WINDOW - 1);
    match revert(w.release(0, 7)) {
        CohortErrors::EscrowLocked(x) => {
            assert_eq!((x.releaseAt, x.nowTs), (w.now + 1, w.now));
        }
        other => panic!("expected EscrowLocked, got {other:?}"),
    }
    assert_eq!(w.balance(0), before, "nothing paid before the window ends");
    w.advance(1);
    let sent = w.release(0, 7).unwrap();
    assert!(sent.events.iter().any(|e| matches!(e,
        CohortEvents::StageReleased(r) if r.amount == tokens(120) && r.tokens == 2_000)));
    assert_eq!(w.balance(0), before + tokens(120));
    // Once: a second release, a payment after it, and a refund are refused.
    assert!(matches!(
        revert(w.release(0, 7)),
        CohortErrors::EscrowReleased(_)
    ));
    let s = w.addr(0);
    assert!(matches!(
        revert(w.p.pay_stage(&w.actors[CLIENTS[0]], s, 7, 1, tokens(1))),
        CohortErrors::EscrowReleased(_)
    ));
    assert!(matches!(
        revert(w.refund(0, 7, CLIENTS[0])),
        CohortErrors::StageNotSlashed(_)
    ));
    // An empty period has nothing to release.
    assert!(matches!(
        revert(w.release(0, 8)),
        CohortErrors::NothingEscrowed(_)
    ));
    assert!(w.conserved());
    w.p.into_backend().verify().unwrap();
}

#[test]
fn a_quorum_of_the_same_claim_slashes_exactly_once() {
    let mut w = World::new();
    let stake = w.p.stake_of(w.addr(1)).unwrap().0;
    let treasury_before = w.p.supply().unwrap().treasury;
    let (b0, b2) = (w.balance(0), w.balance(2));
    let first = w.attest(0, 1, 0).unwrap();
    assert_eq!(first.value, U256::from(1));
    assert!(w.p.stage_active(w.addr(1)).unwrap());
    let second = w.attest(2, 1, 0).unwrap();
    assert_eq!(second.value, U256::from(2));
    let slashed: Vec<_> = second
        .events
        .iter()
        .filter_map(|e| match e {
            CohortEvents::StageSlashed(s) => Some(s.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(slashed.len(), 1);
    let half = stake / U256::from(2);
    let share = half / U256::from(10) / U256::from(2);
    assert_eq!(slashed[0].amount, half, "stageSlashBps 5000 of the stake");
    assert_eq!(slashed[0].toAttesters, share * U256::from(2));
    let (call, committed, recomputed) = claim_of(0);
    let claim = stage_claim_id(w.addr(1), call, committed, recomputed);
    assert_eq!(slashed[0].claimId, claim);
    assert_eq!(w.p.stage_claim(claim).unwrap(), vec![w.addr(0), w.addr(2)]);
    assert_eq!(w.balance(0), b0 + share);
    assert_eq!(w.balance(2), b2 + share);
    assert_eq!(
        w.p.supply().unwrap().treasury,
        treasury_before + half - share * U256::from(2)
    );
    assert_eq!(w.p.stake_of(w.addr(1)).unwrap().0, stake - half);
    let rec = w.p.stage_server(w.addr(1)).unwrap();
    assert_eq!((rec.slashClaim, rec.slashedAt), (claim, w.now));
    assert!(!w.p.stage_active(w.addr(1)).unwrap());
    // Slashed once: more attesters of the same claim, or of another, are refused, and the
    // stake stays where the one slash left it.
    w.p.set_stage_params(
        &w.gov.clone(),
        StageParams {
            minStageStake: tokens(1_000),
            stageChallengeWindow: WINDOW,
            stageQuorum: 3,
            stageSlashBps: 5_000,
            stageAttesterBps: 1_000,
        },
    )
    .unwrap();
    let s = w.addr(1);
    assert!(matches!(revert(w.attest(0, 1, 1)), CohortErrors::StageInactive(x) if x.server == s));
    assert_eq!(w.p.stake_of(w.addr(1)).unwrap().0, stake - half);
    // A slashed server cannot verify others either.
    assert!(matches!(
        revert(w.attest(1, 0, 0)),
        CohortErrors::NotAStageVerifier(_)
    ));
    assert!(w.conserved());
}

#[test]
fn a_single_verifier_cannot_slash_and_duplicates_do_not_count() {
    let mut w = World::new();
    w.pay(CLIENTS[0], 1, 1, tokens(10));
    assert_eq!(w.attest(0, 1, 0).unwrap().value, U256::from(1));
    let (call, committed, recomputed) = claim_of(0);
    let claim = stage_claim_id(w.addr(1), call, committed, recomputed);
    match revert(w.attest(0, 1, 0)) {
        CohortErrors::AlreadyAttested(x) => assert_eq!(x.claimId, claim),
        other => panic!("expected AlreadyAttested, got {other:?}"),
    }
    // Another claim by another verifier does not add up with the first.
    assert_eq!(w.attest(2, 1, 1).unwrap().value, U256::from(1));
    assert!(w.p.stage_active(w.addr(1)).unwrap());
    assert_eq!(w.p.stage_claim(claim).unwrap(), vec![w.addr(0)]);
    // The server is paid after the window as if nothing was claimed.
    w.advance(WINDOW);
    w.release(1, 1).unwrap();
    assert!(w.conserved());
}

#[test]
fn the_server_cannot_attest_against_itself_and_only_its_peers_verify() {
    let mut w = World::new();
    let s = w.addr(1);
    assert!(matches!(revert(w.attest(1, 1, 0)), CohortErrors::SelfAttestation(x) if x.server == s));
    // A participant that is no stage server, and a server of other layers, are no verifiers.
    for v in [OTHER, 3, CLIENTS[0]] {
        let who = w.addr(v);
        assert!(
            matches!(revert(w.attest(v, 1, 0)), CohortErrors::NotAStageVerifier(x) if x.who == who),
            "actor {v}"
        );
    }
    // Equal rows are no mismatch; a zero call digest is refused.
    assert!(matches!(
        revert(w.attest(0, 1, 2)),
        CohortErrors::NotAMismatch(_)
    ));
    let v = w.actors[0].clone();
    assert!(matches!(
        revert(w.p.attest_stage_fraud(&v, s, 1, B256::ZERO, B256::ZERO, B256::repeat_byte(1))),
        CohortErrors::ZeroCommitment(_)
    ));
    // A verifier that unstaked below the minimum cannot attest.
    w.p.request_unstake(&v, tokens(1_500)).unwrap();
    assert!(matches!(
        revert(w.attest(0, 1, 0)),
        CohortErrors::InsufficientStake(_)
    ));
    // An unknown server.
    let x = w.actors[OTHER].address();
    assert!(matches!(
        revert(w.p.attest_stage_fraud(
            &v,
            x,
            1,
            B256::repeat_byte(1),
            B256::ZERO,
            B256::repeat_byte(2)
        )),
        CohortErrors::UnknownStage(_)
    ));
}

#[test]
fn an_upheld_claim_refunds_every_unreleased_escrow_and_blocks_release() {
    let mut w = World::new();
    let (c0, c1) = (CLIENTS[0], CLIENTS[1]);
    let (b0, b1) = (w.balance(c0), w.balance(c1));
    w.pay(c0, 1, 1, tokens(40));
    w.advance(WINDOW);
    w.release(1, 1).unwrap();
    w.pay(c0, 1, 2, tokens(30));
    w.pay(c1, 1, 2, tokens(20));
    w.pay(c1, 1, 3, tokens(5));
    w.attest(0, 1, 0).unwrap();
    w.attest(2, 1, 0).unwrap();
    assert!(!w.p.stage_active(w.addr(1)).unwrap());
    // Nothing is released to a slashed server, however long one waits.
    w.advance(10 * WINDOW);
    for period in [2, 3] {
        assert!(matches!(
            revert(w.release(1, period)),
            CohortErrors::StageInactive(_)
        ));
    }
    // A slashed server is paid nothing more.
    let s = w.addr(1);
    assert!(matches!(
        revert(w.p.pay_stage(&w.actors[c0], s, 4, 1, tokens(1))),
        CohortErrors::StageInactive(_)
    ));
    // The payers take back what was not released, each once; the released period stays paid.
    w.refund(1, 2, c0).unwrap();
    w.refund(1, 2, c1).unwrap();
    w.refund(1, 3, c1).unwrap();
    assert!(matches!(
        revert(w.refund(1, 2, c0)),
        CohortErrors::NothingEscrowed(_)
    ));
    assert!(matches!(
        revert(w.refund(1, 1, c0)),
        CohortErrors::EscrowReleased(_)
    ));
    assert_eq!(w.balance(c0), b0 - tokens(40));
    assert_eq!(w.balance(c1), b1);
    let e = w.p.stage_escrow(w.addr(1), 2).unwrap();
    assert_eq!((e.amount, e.released), (U256::ZERO, false));
    assert_eq!(w.p.supply().unwrap().escrowed, U256::ZERO);
    assert!(w.conserved());
}

#[test]
fn registration_and_params_are_checked() {
    let mut w = World::new();
    let fresh = Identity::from_seed(12, "fresh");
    w.p.mint(&w.gov.clone(), fresh.address(), tokens(5_000))
        .unwrap();
    let m = model();
    assert!(matches!(
        revert(w.p.register_stage(&fresh, B256::ZERO, 0..1)),
        CohortErrors::ZeroCommitment(_)
    ));
    assert!(matches!(
        revert(w.p.register_stage(&fresh, m, 2..2)),
        CohortErrors::InvalidLayers(_)
    ));
    assert!(matches!(
        revert(w.p.register_stage(&fresh, m, 0..1)),
        CohortErrors::NotRegistered(_)
    ));
    w.p.register(&fresh, roles::CLIENT).unwrap();
    w.p.stake(&fresh, tokens(999)).unwrap();
    assert!(matches!(
        revert(w.p.register_stage(&fresh, m, 0..1)),
        CohortErrors::InsufficientStake(_)
    ));
    w.p.stake(&fresh, tokens(1)).unwrap();
    let sent = w.p.register_stage(&fresh, m, 0..1).unwrap();
    assert!(sent.events.iter().any(|e| matches!(e,
        CohortEvents::StageRegistered(r) if r.server == fresh.address() && r.firstLayer == 0 && r.endLayer == 1)));
    assert!(matches!(
        revert(w.p.register_stage(&fresh, m, 0..1)),
        CohortErrors::StageExists(_)
    ));
    let rec = w.p.stage_server(fresh.address()).unwrap();
    assert_eq!(
        (
            rec.modelHash,
            rec.firstLayer,
            rec.endLayer,
            rec.registeredAt
        ),
        (m, 0, 1, w.now)
    );
    // Pay needs the server's stake still there.
    w.p.request_unstake(&fresh, tokens(1)).unwrap();
    assert!(matches!(
        revert(w.p.pay_stage(&w.actors[CLIENTS[0]], fresh.address(), 1, 1, tokens(1))),
        CohortErrors::InsufficientStake(_)
    ));
    assert!(matches!(
        revert(w.p.pay_stage(&w.actors[CLIENTS[0]], w.addr(0), 1, 1, U256::ZERO)),
        CohortErrors::ZeroAmount(_)
    ));
    assert!(matches!(
        revert(w.p.pay_stage(&w.actors[CLIENTS[0]], w.addr(0), 1, 1, tokens(1_000_000))),
        CohortErrors::InsufficientBalance(_)
    ));

    let good = w.p.stage_params().unwrap();
    assert_eq!(
        (
            good.minStageStake,
            good.stageChallengeWindow,
            good.stageQuorum,
            good.stageSlashBps,
            good.stageAttesterBps
        ),
        (tokens(1_000), WINDOW, 2, 5_000, 1_000)
    );
    let gov = w.gov.clone();
    let bad = |f: &dyn Fn(&mut StageParams)| {
        let mut p = good.clone();
        f(&mut p);
        p
    };
    for (field, p) in [
        (0u8, bad(&|p| p.minStageStake = U256::ZERO)),
        (1, bad(&|p| p.stageChallengeWindow = 0)),
        (1, bad(&|p| p.stageChallengeWindow = 86_401)),
        (2, bad(&|p| p.stageQuorum = 1)),
        (2, bad(&|p| p.stageQuorum = 17)),
        (3, bad(&|p| p.stageSlashBps = 10_001)),
        (4, bad(&|p| p.stageAttesterBps = 10_001)),
    ] {
        match revert(w.p.set_stage_params(&gov, p)) {
            CohortErrors::InvalidStageParam(x) => assert_eq!(x.field, field),
            other => panic!("expected InvalidStageParam({field}), got {other:?}"),
        }
    }
    assert!(matches!(
        revert(w.p.set_stage_params(&w.actors[0].clone(), good.clone())),
        CohortErrors::NotGovernance(_)
    ));
    let sent = w.p.set_stage_params(&gov, good).unwrap();
    assert!(
        sent.events
            .iter()
            .any(|e| matches!(e, CohortEvents::StageParamsUpdated(_)))
    );
}

#[test]
fn a_quorum_of_three_needs_three() {
    let mut w = World::new();
    let fourth = Identity::from_seed(12, "fourth");
    let gov = w.gov.clone();
    w.p.mint(&gov, fourth.address(), tokens(5_000)).unwrap();
    w.p.register(&fourth, roles::VALIDATOR).unwrap();
    w.p.stake(&fourth, tokens(1_000)).unwrap();
    w.p.register_stage(&fourth, model(), 0..2).unwrap();
    let mut sp = w.p.stage_params().unwrap();
    sp.stageQuorum = 3;
    sp.stageAttesterBps = 10_000;
    w.p.set_stage_params(&gov, sp).unwrap();
    let stake = w.p.stake_of(w.addr(1)).unwrap().0;
    w.attest(0, 1, 0).unwrap();
    w.attest(2, 1, 0).unwrap();
    assert!(w.p.stage_active(w.addr(1)).unwrap());
    let (call, committed, recomputed) = claim_of(0);
    let s = w.addr(1);
    let sent =
        w.p.attest_stage_fraud(&fourth, s, 1, call, committed, recomputed)
            .unwrap();
    assert_eq!(sent.value, U256::from(3));
    let rewarded: Vec<Address> = sent
        .events
        .iter()
        .filter_map(|e| match e {
            CohortEvents::StageAttesterRewarded(r) => Some(r.verifier),
            _ => None,
        })
        .collect();
    assert_eq!(rewarded, vec![w.addr(0), w.addr(2), fourth.address()]);
    assert_eq!(w.p.stake_of(s).unwrap().0, stake / U256::from(2));
    assert!(w.conserved());
}

// ---- random histories against a model ----

#[derive(Debug, Clone)]
enum Action {
    /// payer (any actor), server (0..=OTHER; OTHER is no stage server), period, amount.
    Pay(usize, usize, u64, u64),
    /// server, period.
    Release(usize, u64),
    /// server, period, payer.
    Refund(usize, u64, usize),
    /// verifier (0..=OTHER or a client), server, claim (2: no mismatch).
    Attest(usize, usize, u8),
    /// seconds.
    Advance(u64),
    /// actor (0..=OTHER), whole tokens.
    Unstake(usize, u64),
}

fn action() -> impl Strategy<Value = Action> {
    let server = prop_oneof![6 => 0usize..3, 1 => 3usize..5];
    let period = 0u64..3;
    prop_oneof![
        4 => (0usize..7, server.clone(), period.clone(), prop_oneof![9 => 1u64..400, 1 => Just(0u64)])
            .prop_map(|(a, s, p, x)| Action::Pay(a, s, p, x)),
        3 => (server.clone(), period.clone()).prop_map(|(s, p)| Action::Release(s, p)),
        2 => (server.clone(), period, 0usize..7).prop_map(|(s, p, a)| Action::Refund(s, p, a)),
        4 => (prop_oneof![8 => 0usize..3, 1 => 3usize..7], server, prop_oneof![6 => 0u8..2, 1 => Just(2u8)])
            .prop_map(|(v, s, k)| Action::Attest(v, s, k)),
        2 => prop_oneof![0u64..600, 3_000u64..4_000].prop_map(Action::Advance),
        1 => (0usize..5, 0u64..1_500).prop_map(|(a, x)| Action::Unstake(a, x)),
    ]
}

#[derive(Debug, Default, Clone)]
struct Esc {
    amount: U256,
    tokens: u64,
    release_at: u64,
    released: bool,
    paid: BTreeMap<usize, U256>,
}

#[derive(Debug)]
struct Model {
    now: u64,
    balance: [U256; 7],
    active: [U256; 5],
    unbonding: [U256; 5],
    slashed: [bool; 4],
    escrows: BTreeMap<(usize, u64), Esc>,
    claims: BTreeMap<(usize, u8), Vec<usize>>,
}

impl Model {
    fn new(now: u64) -> Self {
        let mut balance = [tokens(3_000); 7];
        for b in &mut balance[..=OTHER] {
            *b = tokens(1_000);
        }
        Self {
            now,
            balance,
            active: [tokens(2_000); 5],
            unbonding: [U256::ZERO; 5],
            slashed: [false; 4],
            escrows: BTreeMap::new(),
            claims: BTreeMap::new(),
        }
    }

    fn is_stage(s: usize) -> bool {
        s < OTHER
    }

    fn layers(s: usize) -> u8 {
        u8::from(s == 3)
    }

    fn staked(&self, s: usize) -> bool {
        s <= OTHER && self.active[s] >= tokens(1_000)
    }

    /// Applies `a` if the contract must accept it; whether it did.
    fn apply(&mut self, a: &Action) -> bool {
        match *a {
            Action::Pay(payer, s, period, x) => {
                let amount = tokens(x);
                let e = self.escrows.get(&(s, period)).cloned().unwrap_or_default();
                if x == 0
                    || !Self::is_stage(s)
                    || self.slashed[s]
                    || !self.staked(s)
                    || e.released
                    || self.balance[payer] < amount
                {
                    return false;
                }
                self.balance[payer] -= amount;
                let e = self.escrows.entry((s, period)).or_default();
                e.amount += amount;
                e.tokens += 1_000;
                e.release_at = e.release_at.max(self.now + WINDOW);
                *e.paid.entry(payer).or_default() += amount;
                true
            }
            Action::Release(s, period) => {
                if !Self::is_stage(s) || self.slashed[s] {
                    return false;
                }
                let now = self.now;
                let Some(e) = self.escrows.get_mut(&(s, period)) else {
                    return false;
                };
                if e.released || e.amount.is_zero() || now < e.release_at {
                    return false;
                }
                e.released = true;
                self.balance[s] += e.amount;
                true
            }
            Action::Refund(s, period, payer) => {
                if !Self::is_stage(s) || !self.slashed[s] {
                    return false;
                }
                let Some(e) = self.escrows.get_mut(&(s, period)) else {
                    return false;
                };
                let paid = e.paid.get(&payer).copied().unwrap_or_default();
                if e.released || paid.is_zero() {
                    return false;
                }
                e.paid.insert(payer, U256::ZERO);
                e.amount -= paid;
                self.balance[payer] += paid;
                true
            }
            Action::Attest(v, s, k) => {
                if k == 2
                    || !Self::is_stage(s)
                    || self.slashed[s]
                    || v == s
                    || !Self::is_stage(v)
                    || Self::layers(v) != Self::layers(s)
                    || self.slashed[v]
                    || !self.staked(v)
                {
                    return false;
                }
                let att = self.claims.entry((s, k)).or_default();
                if att.contains(&v) {
                    return false;
                }
                att.push(v);
                if att.len() >= 2 {
                    let att = att.clone();
                    self.slashed[s] = true;
                    let amount = (self.active[s] + self.unbonding[s]) * U256::from(5_000)
                        / U256::from(10_000);
                    let from_active = amount.min(self.active[s]);
                    self.active[s] -= from_active;
                    self.unbonding[s] -= amount - from_active;
                    let share =
                        amount * U256::from(1_000) / U256::from(10_000) / U256::from(att.len());
                    for a in att {
                        self.balance[a] += share;
                    }
                }
                true
            }
            Action::Advance(secs) => {
                self.now += secs;
                true
            }
            Action::Unstake(who, x) => {
                let amount = tokens(x);
                if x == 0 || self.active[who] < amount {
                    return false;
                }
                self.active[who] -= amount;
                self.unbonding[who] += amount;
                true
            }
        }
    }
}

fn run(w: &mut World, a: &Action) -> Result<Vec<CohortEvents>, ProtocolError> {
    let events = |r: Result<Sent<()>, ProtocolError>| r.map(|s| s.events);
    match *a {
        Action::Pay(payer, s, period, x) => {
            let server = w.addr(s);
            events(w.p.pay_stage(&w.actors[payer], server, period, 1_000, tokens(x)))
        }
        Action::Release(s, period) => events(w.release(s, period)),
        Action::Refund(s, period, payer) => events(w.refund(s, period, payer)),
        Action::Attest(v, s, k) => w.attest(v, s, k).map(|s| s.events),
        Action::Advance(secs) => {
            w.advance(secs);
            Ok(Vec::new())
        }
        Action::Unstake(who, x) => events(w.p.request_unstake(&w.actors[who], tokens(x))),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn random_stage_histories_follow_the_model(actions in prop::collection::vec(action(), 1..40)) {
        let mut w = World::new();
        let mut m = Model::new(w.now);
        let mut slashes = [0usize; 4];
        for (i, a) in actions.iter().enumerate() {
            let want = m.apply(a);
            let got = run(&mut w, a);
            match &got {
                Ok(_) => prop_assert!(want, "step {i}: {a:?} succeeded, the model refuses it"),
                Err(ProtocolError::Reverted { error, .. }) => {
                    prop_assert!(!want, "step {i}: {a:?} reverted ({error:?}), the model accepts it")
                }
                Err(e) => return Err(TestCaseError::fail(format!("step {i}: {a:?}: {e}"))),
            }
            for e in got.unwrap_or_default() {
                match e {
                    CohortEvents::StageReleased(r) => {
                        let s = (0..4).find(|&s| w.addr(s) == r.server).unwrap();
                        let esc = &m.escrows[&(s, r.period)];
                        prop_assert!(w.now >= esc.release_at, "released before the window");
                        prop_assert!(!m.slashed[s], "released to a slashed server");
                    }
                    CohortEvents::StageSlashed(x) => {
                        let s = (0..4).find(|&s| w.addr(s) == x.server).unwrap();
                        slashes[s] += 1;
                        prop_assert_eq!(slashes[s], 1, "server {} slashed twice", s);
                    }
                    _ => {}
                }
            }
            prop_assert!(w.conserved(), "step {i}: supply not conserved");
            for k in 0..7 {
                prop_assert_eq!(w.balance(k), m.balance[k], "step {}: balance of {}", i, k);
            }
            for k in 0..5 {
                let (active, unbonding, _) = w.p.stake_of(w.addr(k)).unwrap();
                prop_assert_eq!((active, unbonding), (m.active[k], m.unbonding[k]), "step {}: stake of {}", i, k);
            }
            for s in 0..4 {
                prop_assert_eq!(w.p.stage_active(w.addr(s)).unwrap(), !m.slashed[s]);
            }
            let held: U256 = m.escrows.values().filter(|e| !e.released).map(|e| e.amount).sum();
            prop_assert_eq!(w.p.supply().unwrap().escrowed, held, "step {}: escrowed", i);
        }
        for ((s, period), e) in &m.escrows {
            let got = w.p.stage_escrow(w.addr(*s), *period).unwrap();
            prop_assert_eq!((got.amount, got.tokens, got.releaseAt, got.released),
                (e.amount, e.tokens, e.release_at, e.released));
        }
        w.p.into_backend().verify().unwrap();
    }
}
