//! The on-chain Naive Bayes and nearest-centroid classifiers against their Rust references
//! on real IMDB reviews, and whole runs of every mechanism with each model.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use cohort_sim::driver::MechanismKind;
use cohort_sim::drt::TOKEN_UNIT;
use cohort_sim::model::state_hash;
use cohort_sim::naive_bayes::log2_q32;
use cohort_sim::{
    ChainModel, Dataset, DrtParams, Engine, EvmDrt, MarketParams, ModelKind, NaiveBayes,
    NearestCentroid, SimConfig, run,
};

fn imdb(num_words: u32, train: usize) -> Dataset {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/imdb");
    Dataset::load(&dir, num_words, Some(train)).unwrap()
}

fn chain_matches_reference<M: ChainModel>(
    mut model: M,
    fit: impl Fn(&mut M, &[cohort_sim::Sample]),
) {
    let data = imdb(500, 400);
    let (init, rest) = data.train.split_at(100);
    fit(&mut model, init);
    let mut evm = EvmDrt::deploy(
        &DrtParams::reference(),
        &model,
        &[1_000_000 * TOKEN_UNIT],
        0,
    )
    .unwrap();
    model.check_chain(&mut evm.chain, evm.model, 0).unwrap();
    let mut mistakes = 0;
    for s in data.test.iter().take(300) {
        let p = model.predict(&s.features);
        assert_eq!(evm.predict(0, &s.features).unwrap(), p);
        mistakes += usize::from(p != s.label);
    }
    assert!(mistakes > 0 && mistakes < 200, "{mistakes} mistakes");
    // 300 contributions train both, every third label flipped.
    for (i, s) in rest.iter().enumerate() {
        let label = if i % 3 == 0 { 1 - s.label } else { s.label };
        model.update(&s.features, label);
        evm.add_data(1 + i as u64, 0, &s.features, label, 1_000 * TOKEN_UNIT)
            .unwrap()
            .unwrap();
    }
    model.check_chain(&mut evm.chain, evm.model, 400).unwrap();
    let mut ones = 0;
    for s in data.test.iter().take(300) {
        let p = model.predict(&s.features);
        assert_eq!(
            evm.predict(400, &s.features).unwrap(),
            p,
            "{:?}",
            s.features
        );
        ones += usize::from(p);
    }
    assert!(ones > 0 && ones < 300, "both labels predicted");
    // A model deployed from the trained state hashes like the trained contract.
    let owner = evm.operator;
    let copy = model.deploy(&mut evm.chain, owner, 401).unwrap();
    assert_eq!(
        state_hash(&mut evm.chain, 401, copy).unwrap(),
        state_hash(&mut evm.chain, 401, evm.model).unwrap()
    );
    // And a state that differs is seen.
    let mut other = model.clone();
    other.update(&rest[0].features, 1);
    assert!(other.check_chain(&mut evm.chain, evm.model, 401).is_err());
}

#[test]
fn on_chain_naive_bayes_matches_the_reference_through_300_updates() {
    chain_matches_reference(NaiveBayes::new(500), |m, s| m.fit(s));
}

#[test]
fn on_chain_nearest_centroid_matches_the_reference_through_300_updates() {
    chain_matches_reference(NearestCentroid::new(500), |m, s| m.fit(s));
}

#[test]
fn the_fixed_point_log_agrees_with_the_contract() {
    let nb = NaiveBayes::new(100);
    let mut evm = EvmDrt::deploy(&DrtParams::reference(), &nb, &[], 0).unwrap();
    let mut rng = cohort_core::ChaCha8::new(1);
    for k in 0..200u64 {
        let x = if k < 100 {
            k + 1
        } else {
            rand::Rng::random_range(&mut rng, 1..u64::MAX)
        };
        let got = evm
            .chain
            .view(
                0,
                evm.model,
                &cohort_sim::chain::bindings::NaiveBayes::log2Q32Call {
                    x: alloy_primitives::U256::from(x),
                },
            )
            .unwrap();
        assert_eq!(got, alloy_primitives::U256::from(log2_q32(x)), "log2({x})");
    }
}

#[test]
fn every_mechanism_runs_with_every_model_identically_on_chain_and_in_rust() {
    let data = imdb(100, 160);
    for mechanism in [
        MechanismKind::Drt,
        MechanismKind::Points,
        MechanismKind::Market,
    ] {
        for model in [ModelKind::Nb, ModelKind::Ncc] {
            let mut cfg = SimConfig::reference(4);
            cfg.mechanism = mechanism;
            cfg.model = model;
            cfg.market = MarketParams::new(1.0, 2, 20, 2, 500).unwrap();
            let evm = run(&cfg, &data).unwrap();
            cfg.engine = Engine::Native;
            let native = run(&cfg, &data).unwrap();
            assert_eq!(evm.model, model.name());
            assert_eq!(evm.agents, native.agents, "{mechanism:?} {model:?}");
            assert_eq!(evm.accuracy_series, native.accuracy_series);
            assert_eq!(evm.balance_series, native.balance_series);
            assert!(
                evm.initial_accuracy > 0.5,
                "{model:?}: {}",
                evm.initial_accuracy
            );
        }
    }
}
