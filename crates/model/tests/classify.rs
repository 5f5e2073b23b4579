#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The sequence-classification head: it learns a synthetic rule, stays trainable under LoRA,
//! and the IMDB word-id files parse.

use candle_core::Device;
use cohort_core::SplitMix64;
use cohort_model::classify::{self, Example};
use cohort_model::lora::{Lora, LoraConfig};
use cohort_model::optim::collect_grads;
use cohort_model::train::{TrainConfig, Trainer};
use cohort_model::{Gpt, GptConfig, LanguageModel};

/// Label 1 when the first token is below 10; lengths vary, so pooling must find the last token.
fn synthetic(n: usize, seed: u64) -> Vec<Example> {
    let mut r = SplitMix64::new(seed);
    (0..n)
        .map(|_| {
            let len = 4 + r.below(12);
            let ids: Vec<u32> = (0..len).map(|_| 3 + r.below(17) as u32).collect();
            Example {
                label: u32::from(ids[0] < 10),
                ids,
            }
        })
        .collect()
}

fn train(m: &Gpt, data: &[Example], steps: usize) {
    let mut cfg = TrainConfig::new(32, 16);
    cfg.optim.lr = 3e-3;
    cfg.optim.warmup_steps = 5;
    cfg.optim.total_steps = steps;
    let mut t = Trainer::new(m, cfg).unwrap();
    let mut r = SplitMix64::new(9);
    for _ in 0..steps {
        let batch: Vec<&Example> = (0..32).map(|_| &data[r.below(data.len())]).collect();
        let (ids, lengths, labels) = classify::batch(&batch, 16, &Device::Cpu).unwrap();
        let loss = classify::loss(m, &ids, &lengths, &labels).unwrap();
        let grads = collect_grads(m.params(), &loss.backward().unwrap()).unwrap();
        t.step_grads(m, &grads).unwrap();
    }
}

#[test]
fn the_head_learns_a_rule_that_needs_attention_and_pooling() {
    let mut m = Gpt::new(GptConfig::preset("test", 20).unwrap(), 1, &Device::Cpu).unwrap();
    classify::add_head(&mut m, 2, 0).unwrap();
    let (tr, te) = (synthetic(2000, 1), synthetic(300, 2));
    let before = classify::accuracy(&m, &te, 16, 64).unwrap();
    train(&m, &tr, 80);
    let after = classify::accuracy(&m, &te, 16, 64).unwrap();
    assert!(after > 0.9, "accuracy {before} -> {after}");
}

#[test]
fn under_lora_the_head_and_adapter_train_and_the_base_stays() {
    let mut m = Gpt::new(GptConfig::preset("test", 20).unwrap(), 1, &Device::Cpu).unwrap();
    classify::add_head(&mut m, 2, 0).unwrap();
    let linears = m.linear_modules();
    let w = m.weights_mut();
    w.lora = Some(
        Lora::attach(
            &mut w.params,
            &linears,
            LoraConfig::new(4, 8.0, &["c_attn"]),
            0,
        )
        .unwrap(),
    );
    let names: Vec<String> = m.params().spec().into_iter().map(|s| s.name).collect();
    assert!(names.contains(&classify::SCORE.to_string()));
    assert_eq!(names.len(), 1 + 2 * 2);
    let wte: Vec<f32> = m
        .params()
        .get("transformer.wte.weight")
        .unwrap()
        .var
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    train(&m, &synthetic(500, 3), 5);
    let now: Vec<f32> = m
        .params()
        .get("transformer.wte.weight")
        .unwrap()
        .var
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(wte, now);
}
