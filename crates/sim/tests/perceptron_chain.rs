//! The on-chain perceptron against the Rust reference on real IMDB reviews.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use cohort_sim::drt::TOKEN_UNIT;
use cohort_sim::{Classifier, Dataset, DrtParams, EtaSchedule, EvmDrt, FitConfig, Perceptron};

fn imdb() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/imdb")
}

#[test]
fn on_chain_predictions_and_weights_match_the_reference_through_300_updates() {
    let data = Dataset::load(&imdb(), 500, Some(400)).unwrap();
    let (init, rest) = data.train.split_at(100);
    let mut model = Perceptron::new(500, EtaSchedule::default());
    let mut rng = cohort_core::ChaCha8::new(7);
    model.fit(init, &FitConfig::default(), &mut rng);
    let mut evm = EvmDrt::deploy(
        &DrtParams::reference(),
        &model,
        &[1_000_000 * TOKEN_UNIT],
        0,
    )
    .unwrap();

    // The deployed weights are the fitted ones, and so are the predictions.
    let (w, bias, seen) = evm.read_model(0).unwrap();
    assert_eq!(
        (w.as_slice(), bias, seen),
        (model.weights.as_slice(), model.bias, model.samples_seen)
    );
    let mut mistakes = 0;
    for s in data.test.iter().take(300) {
        let p = model.predict(&s.features);
        assert_eq!(evm.predict(0, &s.features).unwrap(), p);
        mistakes += usize::from(p != s.label);
    }
    assert!(
        mistakes > 0,
        "a model that makes no mistakes would not exercise both labels"
    );

    // 300 contributions train both; labels flipped on every third to force updates both ways.
    let mut changed = 0;
    for (i, s) in rest.iter().enumerate() {
        let label = if i % 3 == 0 { 1 - s.label } else { s.label };
        let before = model.weights.clone();
        model.update(&s.features, label);
        changed += usize::from(before != model.weights);
        evm.add_data(1 + i as u64, 0, &s.features, label, 1_000 * TOKEN_UNIT)
            .unwrap()
            .unwrap();
    }
    assert!(changed > 30, "only {changed} updates moved the weights");
    let (w, bias, seen) = evm.read_model(400).unwrap();
    assert_eq!(w, model.weights);
    assert_eq!(bias, model.bias);
    assert_eq!(seen, model.samples_seen);
    let mut ones = 0;
    for s in data.test.iter().take(300) {
        let p = model.predict(&s.features);
        assert_eq!(evm.predict(400, &s.features).unwrap(), p);
        ones += usize::from(p);
    }
    assert!(ones > 0 && ones < 300, "both labels predicted");
}
