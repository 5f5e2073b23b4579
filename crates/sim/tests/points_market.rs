//! Points and the prediction market: their rules on the contracts against the Rust
//! reference, and whole runs on small slices of IMDB.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use cohort_sim::driver::MechanismKind;
use cohort_sim::drt::TOKEN_UNIT;
use cohort_sim::market::test_pieces;
use cohort_sim::perceptron::WEIGHT_SCALE;
use cohort_sim::report::BalanceUnit;
use cohort_sim::{
    AgentKind, Dataset, Engine, EtaSchedule, EvmMarket, EvmPoints, Market, MarketParams,
    Perceptron, PointsRules, Reject, SimConfig, run,
};

fn imdb(num_words: u32, train: usize) -> Dataset {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/imdb");
    Dataset::load(&dir, num_words, Some(train)).unwrap()
}

/// The model says 1 for [0] and 0 for [1, 3], whatever it is trained with here.
fn fixed_model() -> Perceptron {
    let mut m = Perceptron::new(4, EtaSchedule::default());
    m.weights = vec![1000 * WEIGHT_SCALE, -1000 * WEIGHT_SCALE, 0, 0];
    m
}

fn same<T: std::fmt::Debug + PartialEq>(
    want: &Result<T, Reject>,
    got: &Result<T, cohort_sim::chain::Revert>,
) {
    match (want, got) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(r), Err(v)) => assert_eq!(r.name(), v.name, "{}", v.detail),
        _ => panic!("reference {want:?}, chain {got:?}"),
    }
}

#[test]
fn points_are_earned_once_by_the_submitter_after_the_wait_when_the_model_agrees() {
    let wait = 86_400;
    let mut evm = EvmPoints::deploy(wait, &fixed_model(), 0).unwrap();
    let mut rules = PointsRules::new(wait, fixed_model());
    // Additions are free and may share a timestamp.
    for (who, f, label) in [(0, &[0u32][..], 1u8), (0, &[1, 3], 1), (1, &[0], 1)] {
        let id = rules.add_data(5, who, f, label);
        assert_eq!(evm.add_data(5, who, f, label).unwrap().unwrap(), id);
    }
    let mut both = |now, who, id, f: &[u32]| {
        let want = rules.refund(now, who, id, f);
        same(&want, &evm.refund(now, who, id, f).unwrap());
        want
    };
    assert_eq!(both(5 + wait, 0, 0, &[0]), Err(Reject::TooEarly));
    assert_eq!(both(6 + wait, 1, 0, &[0]), Err(Reject::NotSubmitter));
    assert_eq!(both(6 + wait, 0, 1, &[1, 3]), Err(Reject::ModelDisagrees));
    assert_eq!(both(6 + wait, 0, 0, &[0]), Ok(1));
    assert_eq!(both(7 + wait, 0, 0, &[0]), Err(Reject::AlreadyClaimed));
    assert_eq!(both(7 + wait, 1, 2, &[0]), Ok(1));
    // The features are checked against the stored hash.
    assert_eq!(
        evm.refund(8 + wait, 0, 1, &[1]).unwrap().unwrap_err().name,
        "DataMismatch"
    );
    assert_eq!(evm.points_of(9 + wait, 0).unwrap(), 1);
    assert_eq!(evm.total_points(9 + wait).unwrap(), 2);
}

fn market_pieces() -> (Vec<cohort_sim::Sample>, Vec<Vec<u8>>) {
    let test: Vec<cohort_sim::Sample> = (0..6)
        .map(|i| cohort_sim::Sample {
            features: if i % 2 == 0 { vec![0] } else { vec![1, 3] },
            label: if i < 4 { (i % 2 == 0) as u8 } else { 0 },
        })
        .collect();
    let pieces = test_pieces(&test, 6, 2);
    (test, pieces)
}

#[test]
fn the_market_checks_the_revealed_test_set_and_the_round_model_and_conserves_tokens() {
    let (test, pieces) = market_pieces();
    let p = MarketParams::new(1.0, 2, 6, 2, 1000).unwrap();
    let model = fixed_model();
    let funds = [1000 * TOKEN_UNIT, 1000 * TOKEN_UNIT];
    let mut evm = EvmMarket::deploy(&p, &model, 2, &pieces, &funds, 1000 * TOKEN_UNIT, 0).unwrap();
    let mut rules = Market::new(p, model.clone(), 2, &pieces);
    rules.fund(0, funds[0]);
    rules.fund(1, funds[1]);
    rules.add_bounty(1000 * TOKEN_UNIT);
    // Three contributions: one the fixed model already gets right, two that move it.
    let adds: [(u64, usize, &[u32], u8); 3] =
        [(100, 0, &[0], 1), (200, 1, &[2], 1), (300, 0, &[2], 0)];
    for (now, who, f, label) in adds {
        let want = rules.add_data(now, who, f, label, 100 * TOKEN_UNIT);
        same(
            &want,
            &evm.add_data(now, who, f, label, 100 * TOKEN_UNIT).unwrap(),
        );
        assert!(want.is_ok());
    }
    // Same second: refused by both.
    let want = rules.add_data(300, 1, &[0], 1, 100 * TOKEN_UNIT);
    same(
        &want,
        &evm.add_data(300, 1, &[0], 1, 100 * TOKEN_UNIT).unwrap(),
    );
    assert_eq!(want, Err(Reject::TooSoon));
    // Nothing is revealed before the end, and pieces come in order and must match.
    assert_eq!(
        evm.reveal(400, 0, &pieces[0]).unwrap().unwrap_err().name,
        "WrongPhase"
    );
    evm.end_market(400).unwrap().unwrap();
    rules.end_market().unwrap();
    assert_eq!(
        evm.reveal(400, 1, &pieces[1]).unwrap().unwrap_err().name,
        "WrongPiece"
    );
    assert_eq!(
        evm.reveal(400, 0, &pieces[1]).unwrap().unwrap_err().name,
        "PieceMismatch"
    );
    for k in 0..2 {
        let n = test.len() / 2;
        same(
            &rules.reveal(k, &pieces[k], &test[k * n..(k + 1) * n]),
            &evm.reveal(400, k, &pieces[k]).unwrap(),
        );
    }
    // A round must start from the initial model: a trained one is refused.
    let mut trained = model.clone();
    cohort_sim::Classifier::update(&mut trained, &[2], 1);
    assert_eq!(
        evm.start_round(400, &trained).unwrap().unwrap_err().name,
        "ModelMismatch"
    );
    let contributions: [&[u32]; 3] = [&[0], &[2], &[2]];
    for _round in 0..2 {
        same(&rules.start_round(), &evm.start_round(400, &model).unwrap());
        for f in contributions {
            same(&rules.process(f), &evm.process(400, f).unwrap());
        }
    }
    assert_eq!(rules.rounds.len(), 2);
    for (r, o) in rules.rounds.iter().enumerate() {
        assert_eq!(evm.round(400, r as u8 + 1).unwrap(), (o.pot, o.positive));
    }
    // Claims: only the submitter, only once; every token is accounted for.
    same(&rules.claim(1, 0), &evm.claim(400, 1, 0).unwrap());
    for (id, who) in [(0, 0), (1, 1), (2, 0)] {
        same(&rules.claim(who, id), &evm.claim(400, who, id).unwrap());
    }
    same(&rules.claim(0, 0), &evm.claim(400, 0, 0).unwrap());
    assert!(rules.conserved());
    for i in 0..3 {
        assert_eq!(evm.balance(400, i).unwrap(), rules.balance(i));
    }
    let (minted, escrowed, pool) = evm.totals(400).unwrap();
    assert_eq!(minted, 3000 * TOKEN_UNIT);
    assert_eq!(pool, 0);
    assert_eq!(escrowed, rules.escrowed);
    assert!(escrowed < 10, "only rounding dust stays: {escrowed}");
}

fn cfg(mechanism: MechanismKind, seed: u64) -> SimConfig {
    let mut c = SimConfig::reference(seed);
    c.mechanism = mechanism;
    c.market = MarketParams::new(1.0, 2, 30, 3, 1000).unwrap();
    c
}

#[test]
fn points_runs_agree_on_chain_and_in_rust_and_count_points_not_tokens() {
    let data = imdb(100, 250);
    let evm = run(&cfg(MechanismKind::Points, 2), &data).unwrap();
    let mut c = cfg(MechanismKind::Points, 2);
    c.engine = Engine::Native;
    let native = run(&c, &data).unwrap();
    assert_eq!(evm.agents, native.agents);
    assert_eq!(evm.balance_series, native.balance_series);
    assert_eq!(evm.accuracy_series, native.accuracy_series);
    assert_eq!(evm.transactions, native.transactions);
    assert_eq!(evm.balance_unit, BalanceUnit::Points);
    assert_eq!(evm.bad_bankrupt_day, None);
    assert_eq!(evm.samples_added, 150);
    let good = evm
        .agents
        .iter()
        .find(|a| a.kind == AgentKind::Good)
        .unwrap();
    assert!(good.final_balance > 0.0 && good.final_balance <= good.accepted as f64);
    assert_eq!(good.final_balance, good.refunds as f64);
    let again = run(&cfg(MechanismKind::Points, 2), &data).unwrap();
    assert_eq!(again.without_timing(), evm.without_timing());
}

#[test]
fn market_runs_agree_on_chain_and_in_rust_and_pay_out_the_bounty() {
    let data = imdb(100, 160);
    let evm = run(&cfg(MechanismKind::Market, 3), &data).unwrap();
    let mut c = cfg(MechanismKind::Market, 3);
    c.engine = Engine::Native;
    let native = run(&c, &data).unwrap();
    assert_eq!(evm.agents, native.agents);
    assert_eq!(evm.balance_series, native.balance_series);
    assert_eq!(evm.market, native.market);
    assert_eq!(evm.transactions, native.transactions);
    assert!(evm.gas_used > 0);
    let m = evm.market.as_ref().unwrap();
    assert_eq!(m.rounds.len(), 2);
    assert_eq!(evm.unclaimed_at_end, 0);
    // Everything minted (agents' 20,000 and the bounty's 1,000) is back with someone but
    // the rounding dust.
    let total: f64 = evm.agents.iter().map(|a| a.final_balance).sum::<f64>() + m.initiator_refund;
    assert!((total - 21_000.0).abs() < 1e-9, "{total}");
    let paid: u128 = m.rounds.iter().map(|r| r.pot).sum();
    assert!(paid > 0, "some contribution improved the revealed test set");
}

#[test]
fn market_parameters_that_cannot_work_are_refused() {
    assert!(MarketParams::new(1.0, 0, 10, 2, 1).is_err());
    assert!(MarketParams::new(1.0, 1, 1, 2, 1).is_err());
    assert!(MarketParams::new(-1.0, 1, 10, 2, 1).is_err());
    let data = imdb(100, 160);
    let mut c = cfg(MechanismKind::Market, 1);
    c.market = MarketParams::new(1.0, 1, 5000, 2, 1).unwrap();
    let e = run(&c, &data).unwrap_err().to_string();
    assert!(e.contains("larger than the test file"), "{e}");
}
