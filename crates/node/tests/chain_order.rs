#![cfg(feature = "evm-rpc")]
//! On an EVM chain, parties that put their own transactions on it (`cohort client
//! --chain-rpc`) are included in the order the chain mines them, not in client-index order.
//! The contract numbers a round's updates in that order, and the validators' score vectors
//! follow it; the run must still equal the one in which the coordinator relays everything in
//! client-index order: same verdicts, consensus scores, score matrices, models, payouts and
//! holdings. Here every reply's transactions reach the chain in reverse client order before
//! the coordinator sees them, and the test checks that the ledger's order really was reversed.
//!
//! Needs anvil (`npm ci` in `contracts/`, or `$COHORT_ANVIL`); `COHORT_SKIP_ANVIL=1` turns the
//! test into a printed skip.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cohort_core::Identity;
use cohort_fl::UpdateAttack;
use cohort_fl::coordinator::CoordinatorConfig;
use cohort_ledger::rpc::PrivateKeySigner;
use cohort_ledger::{ChainSubmitter, EvmRpcLedger, LedgerBackend};
use cohort_node::runtime::{
    AttackConfig, Keys, LocalParties, RunConfig, RunOptions, RunSummary, parties, run_with_options,
};
use cohort_node::transport::{Reply, Request, Transport, TransportError};
use cohort_tasks::{LinearTask, LinearTaskConfig};
use cohort_testkit::{Anvil, FUNDER_KEY};
use serde_json::Value;

fn config() -> RunConfig {
    RunConfig {
        seed: 11,
        clients: 6,
        validators: 3,
        task: Default::default(),
        coordinator: CoordinatorConfig {
            rounds: 2,
            clients_per_round: 6,
            ..CoordinatorConfig::default()
        },
        aggregation: Default::default(),
        attack: Some(AttackConfig {
            fraction: 0.34,
            attack: UpdateAttack::SignFlip { scale: 3.0 }.into(),
            colluding_validators: 0,
            sybil_stake: None,
        }),
        unlearning: Default::default(),
        compression: Default::default(),
        pipeline: None,
        report: Default::default(),
        profiles: Vec::new(),
        market: None,
        governance: None,
        incentives: Default::default(),
    }
}

/// The in-process parties, whose replies' transactions this carrier puts on the chain itself,
/// in reverse order, before handing the replies (in their order) to the coordinator.
struct SelfSubmitting<'a> {
    inner: LocalParties<'a>,
    chain: ChainSubmitter,
    /// A client whose update replies are lost after it put them on the chain.
    lost: Option<u32>,
}

impl Transport for SelfSubmitting<'_> {
    fn send(&mut self, request: Request) -> Result<(), TransportError> {
        self.inner.send(request)
    }
    fn poll(&mut self, now: u64) -> Result<Vec<Reply>, TransportError> {
        let replies = self.inner.poll(now)?;
        for r in replies.iter().rev() {
            for call in r.signed_calls() {
                // An attacker's update is accepted by the contract (its scores reject it); a
                // submission the chain refuses would fail here.
                self.chain
                    .submit_blocking(call)
                    .expect("the chain takes it");
            }
        }
        Ok(replies
            .into_iter()
            .filter(|r| !matches!(r, Reply::Update(u) if Some(u.client) == self.lost))
            .collect())
    }
}

fn chain(anvil: &Anvil) -> EvmRpcLedger {
    let funder: PrivateKeySigner = FUNDER_KEY.parse().unwrap();
    EvmRpcLedger::connect(anvil.url(), Some(funder)).unwrap()
}

/// The summary's outcome: what must not depend on the order the chain mined the calls in.
fn outcome(s: &RunSummary) -> Value {
    let v = serde_json::to_value(s).unwrap();
    let rounds: Vec<Value> = v["rounds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let mut o = serde_json::Map::new();
            for key in [
                "accepted",
                "rejected",
                "consensus",
                "payouts",
                "submitted",
                "scores",
                "holdings",
                "test",
                "updates",
            ] {
                o.insert(key.into(), r[key].clone());
            }
            Value::Object(o)
        })
        .collect();
    serde_json::json!({ "rounds": rounds, "final": v["final_holdings"] })
}

#[test]
fn updates_the_chain_mines_out_of_order_give_the_run_the_relay_gives() {
    let Some(anvil) = Anvil::start("updates_the_chain_mines_out_of_order") else {
        return;
    };
    let cfg = config().check().unwrap();
    let task = LinearTask::new(
        LinearTaskConfig::default(),
        cfg.clients,
        cfg.validators,
        cfg.seed,
    );
    let keys = Keys::Seeded(cfg.seed);

    // The coordinator relays every call, in client-index order.
    let mut relayed = LocalParties::new(parties(&cfg, &keys, &task));
    let (_, reference) = run_with_options(
        &cfg,
        chain(&anvil),
        &task,
        &mut relayed,
        RunOptions::new(),
        |_| {},
    )
    .unwrap();

    // The parties put their calls on the chain first, in reverse client-index order.
    let mut own = SelfSubmitting {
        inner: LocalParties::new(parties(&cfg, &keys, &task)),
        chain: ChainSubmitter::connect(anvil.url()).unwrap(),
        lost: None,
    };
    let (mut p, mined) = run_with_options(
        &cfg,
        chain(&anvil),
        &task,
        &mut own,
        RunOptions::new(),
        |_| {},
    )
    .unwrap();

    // The ledger's order really is the reverse: the first update of the run's first round is
    // the last client's.
    let last = p.backend().address_of(&Identity::from_seed(
        cfg.seed,
        &format!("client-{}", cfg.clients - 1),
    ));
    // (A fresh contract numbers its rounds from 1.)
    assert_eq!(p.update(1, 0).unwrap().client, last);
    assert!(
        !mined.rounds[0].rejected.is_empty() && !mined.rounds[0].accepted.is_empty(),
        "a run with both verdicts: {:?}",
        mined.rounds[0]
    );
    assert_eq!(outcome(&mined), outcome(&reference));
}

/// A client's update that is on the chain but whose blob never reaches the coordinator: the
/// validators' score vectors must still have a score for it, in its place on the ledger, or
/// every reveal would be refused. It is scored as missing (as an update that does not decode)
/// and rejected; the others' verdicts
/// stand and every validator's reveal is accepted.
#[test]
fn an_update_on_the_chain_without_its_blob_is_scored_as_missing() {
    let Some(anvil) = Anvil::start("an_update_on_the_chain_without_its_blob") else {
        return;
    };
    let mut cfg = config();
    cfg.coordinator.rounds = 1;
    let cfg = cfg.check().unwrap();
    let task = LinearTask::new(
        LinearTaskConfig::default(),
        cfg.clients,
        cfg.validators,
        cfg.seed,
    );
    let keys = Keys::Seeded(cfg.seed);
    let mut own = SelfSubmitting {
        inner: LocalParties::new(parties(&cfg, &keys, &task)),
        chain: ChainSubmitter::connect(anvil.url()).unwrap(),
        lost: Some(1),
    };
    let (_, s) = run_with_options(
        &cfg,
        chain(&anvil),
        &task,
        &mut own,
        RunOptions::new(),
        |_| {},
    )
    .unwrap();
    let r = &s.rounds[0];
    assert!(r.rejected.contains(&1), "{r:?}");
    assert!(!r.accepted.contains(&1), "{r:?}");
    let missing = r.updates.iter().find(|u| u.client == 1).expect("listed");
    assert!(
        missing
            .refused
            .as_deref()
            .is_some_and(|why| why.contains("never reached the coordinator")),
        "{missing:?}"
    );
    assert_eq!(r.submitted.len(), cfg.clients);
    // Every validator revealed a full score vector, the missing update scored as one that
    // does not decode (-1).
    assert_eq!(r.scores.len(), cfg.validators);
    for row in &r.scores {
        assert_eq!(row.len(), cfg.clients, "{:?}", r.scores);
        assert_eq!(row[1], -1.0, "{row:?}");
    }
    // The honest clients are accepted as without the loss.
    for k in [0, 2, 3] {
        assert!(r.accepted.contains(&k), "{r:?}");
    }
}
