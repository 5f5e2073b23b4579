#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The hand-written GPT backward pass against candle's autograd (which the f64 finite-
//! difference tests check), for full training and for LoRA with a frozen base.

use candle_core::{Device, Tensor};
use cohort_model::lora::{Lora, LoraConfig};
use cohort_model::rng::Rng;
use cohort_model::train::Trainer;
use cohort_model::{Gpt, GptConfig, LanguageModel};

fn batch(v: usize, b: usize, t: usize, seed: u64) -> (Tensor, Tensor) {
    let mut r = Rng::new(seed);
    let x: Vec<u32> = (0..b * t).map(|_| r.below(v) as u32).collect();
    let y: Vec<u32> = (0..b * t).map(|_| r.below(v) as u32).collect();
    (
        Tensor::from_vec(x, (b, t), &Device::Cpu).unwrap(),
        Tensor::from_vec(y, (b, t), &Device::Cpu).unwrap(),
    )
}

fn compare(m: &Gpt, b: usize, t: usize) {
    let (x, y) = batch(m.config.vocab_size, b, t, 3);
    let (lf, gf) = m
        .fast_loss_and_grads(&x, &y)
        .expect("fast path applies")
        .unwrap();
    let (la, ga) = Trainer::gradients(m, &[(x, y)], true).unwrap();
    assert!((lf - la).abs() < 1e-5 * la.abs(), "loss {lf} vs {la}");
    let spec = m.params().spec();
    assert_eq!(gf.len(), spec.len());
    for ((f, a), s) in gf.iter().zip(&ga).zip(&spec) {
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(scale > 0.0, "{} has no gradient", s.name);
        let diff = f.iter().zip(a).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            diff <= 2e-4 * scale + 1e-7,
            "{}: max diff {diff} (scale {scale})",
            s.name
        );
    }
}

#[test]
fn fast_gradients_match_autograd_for_full_training() {
    let cfg = GptConfig::new(23, 16, 32, 2, 4).with_n_inner(48);
    let m = Gpt::new(cfg, 5, &Device::Cpu).unwrap();
    compare(&m, 3, 16);
    compare(&m, 2, 7);
}

#[test]
fn fast_gradients_match_autograd_for_lora_and_skip_the_frozen_base() {
    let mut m = Gpt::new(GptConfig::preset("test", 23).unwrap(), 5, &Device::Cpu).unwrap();
    let linears = m.linear_modules();
    let w = m.weights_mut();
    w.lora = Some(
        Lora::attach(
            &mut w.params,
            &linears,
            LoraConfig::new(3, 6.0, &["c_attn", "c_proj"]),
            1,
        )
        .unwrap(),
    );
    // Make B non-zero so every adapter gradient is exercised.
    for s in m.params().spec() {
        if s.name.contains("lora_B") {
            let p = m.params().get(&s.name).unwrap();
            let r: Vec<f32> = Rng::new(s.name.len() as u64).normal_vec(p.var.elem_count(), 0.1);
            p.var
                .set(&Tensor::from_vec(r, p.var.shape(), &Device::Cpu).unwrap())
                .unwrap();
        }
    }
    compare(&m, 2, 12);
    // Merged: no adapter path; gradients only for the adapter, which are then zero.
    let params = m.params().clone();
    m.weights_mut()
        .lora
        .as_mut()
        .unwrap()
        .merge(&params)
        .unwrap();
    let (x, y) = batch(23, 2, 8, 4);
    let (_, g) = m.fast_loss_and_grads(&x, &y).unwrap().unwrap();
    assert!(g.iter().all(|g| g.iter().all(|&v| v == 0.0)));
}

#[test]
fn out_of_range_tokens_are_refused() {
    let m = Gpt::new(GptConfig::preset("test", 5).unwrap(), 0, &Device::Cpu).unwrap();
    let x = Tensor::new(&[[1u32, 7]], &Device::Cpu).unwrap();
    assert!(m.fast_loss_and_grads(&x, &x).unwrap().is_err());
}
