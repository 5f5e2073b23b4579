#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The hand-written Llama-family pass (`fast::llama`) against candle's autograd, which the
//! finite-difference and transformers-logit tests check: full training and LoRA, grouped-query
//! attention, Qwen2's q/k/v biases, tied and separate output embeddings, two attention blocks.

use candle_core::{Device, Tensor};
use cohort_core::SplitMix64;
use cohort_model::lora::{Lora, LoraConfig};
use cohort_model::train::Trainer;
use cohort_model::{LanguageModel, Llama, LlamaConfig};

fn batch(v: usize, b: usize, t: usize, seed: u64) -> (Tensor, Tensor) {
    let mut r = SplitMix64::new(seed);
    let x: Vec<u32> = (0..b * t).map(|_| r.below(v) as u32).collect();
    let y: Vec<u32> = (0..b * t).map(|_| r.below(v) as u32).collect();
    (
        Tensor::from_vec(x, (b, t), &Device::Cpu).unwrap(),
        Tensor::from_vec(y, (b, t), &Device::Cpu).unwrap(),
    )
}

fn model(kind: &str, heads: usize, kv: usize, tied: bool) -> Llama {
    let mut c = LlamaConfig::small(kind, 29, 32, 2, heads, kv);
    c.intermediate_size = 40;
    c.tie_word_embeddings = tied;
    c.max_position_embeddings = Some(64);
    let m = Llama::new(c, 7, &Device::Cpu).unwrap();
    // Norm weights away from 1 and non-zero biases, so that their gradients are exercised.
    for s in m.params().spec() {
        if s.name.ends_with("norm.weight") || s.name.ends_with(".bias") {
            let p = m.params().get(&s.name).unwrap();
            let r: Vec<f32> = SplitMix64::new(s.name.len() as u64)
                .normal_vec(p.var.elem_count(), 0.3)
                .iter()
                .map(|v| {
                    if s.name.ends_with("norm.weight") {
                        1.0 + v
                    } else {
                        *v
                    }
                })
                .collect();
            p.var
                .set(&Tensor::from_vec(r, p.var.shape(), &Device::Cpu).unwrap())
                .unwrap();
        }
    }
    m
}

fn compare(m: &Llama, b: usize, t: usize) {
    let (x, y) = batch(m.config.vocab_size, b, t, 3);
    let (lf, gf) = m
        .fast_loss_and_grads(&x, &y)
        .expect("fast path applies")
        .unwrap();
    let (la, ga) = Trainer::gradients(m, &[(x.clone(), y)], true).unwrap();
    assert!((lf - la).abs() < 1e-5 * la.abs(), "loss {lf} vs {la}");
    let trainable: Vec<String> = m.params().trainable().map(|p| p.name.clone()).collect();
    assert_eq!(gf.len(), trainable.len());
    for ((f, a), name) in gf.iter().zip(&ga).zip(&trainable) {
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(scale > 0.0, "{name} has no gradient");
        let diff = f.iter().zip(a).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            diff <= 2e-4 * scale + 1e-7,
            "{name}: max diff {diff} (scale {scale})"
        );
    }
    // Evaluation logits: the hand-written forward against candle's.
    let fast = m
        .forward_eval(&x)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let slow = m
        .forward(&x)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let scale = slow.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = fast
        .iter()
        .zip(&slow)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(diff <= 1e-5 * scale + 1e-6, "logits differ by {diff}");
}

#[test]
fn full_training_matches_autograd_with_grouped_query_attention_and_qkv_biases() {
    let m = model("qwen2", 4, 2, true);
    compare(&m, 2, 12);
    compare(&m, 2, 40); // two 32-row attention blocks
}

#[test]
fn full_training_matches_autograd_for_llama_with_separate_head_and_full_heads() {
    let m = model("llama", 2, 2, false);
    compare(&m, 3, 9);
    let m = model("llama", 4, 1, false);
    compare(&m, 2, 33);
}

#[test]
fn lora_with_dropout_matches_autograd_and_skips_the_frozen_base() {
    let mut m = model("qwen2", 4, 2, false);
    let linears = m.linear_modules();
    let w = m.weights_mut();
    let cfg = LoraConfig::new(3, 6.0, &["all-linear"]).with_dropout(0.2);
    w.lora = Some(Lora::attach(&mut w.params, &linears, cfg, 1).unwrap());
    for s in m.params().spec() {
        if s.name.contains("lora_B") {
            let p = m.params().get(&s.name).unwrap();
            let r: Vec<f32> =
                SplitMix64::new(s.name.len() as u64).normal_vec(p.var.elem_count(), 0.1);
            p.var
                .set(&Tensor::from_vec(r, p.var.shape(), &Device::Cpu).unwrap())
                .unwrap();
        }
    }
    assert!(m.params().trainable().all(|p| p.name.contains("lora_")));
    // Both paths draw the same dropout masks from the key.
    m.weights().lora.as_ref().unwrap().set_dropout_key(Some(9));
    let (x, y) = batch(29, 2, 10, 5);
    let (lf, gf) = m.fast_loss_and_grads(&x, &y).unwrap().unwrap();
    let (la, ga) = Trainer::gradients(&m, &[(x, y)], true).unwrap();
    assert!((lf - la).abs() < 1e-5 * la.abs(), "loss {lf} vs {la}");
    for (f, a) in gf.iter().zip(&ga) {
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = f.iter().zip(a).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(scale > 0.0);
        assert!(
            diff <= 2e-4 * scale + 1e-7,
            "max diff {diff} (scale {scale})"
        );
    }
    // The key matters: no key (evaluation) means no dropout and other gradients.
    m.weights().lora.as_ref().unwrap().set_dropout_key(None);
    let (x, y) = batch(29, 2, 10, 5);
    let (_, g_eval) = m.fast_loss_and_grads(&x, &y).unwrap().unwrap();
    assert_ne!(g_eval, gf);
}
