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

/// The Llama-family model split into stages (the client's embeddings and head, three stage
/// servers' layer ranges) gives the whole hand-written pass's loss and gradients bit for bit:
/// grouped-query attention with Qwen2's biases and a tied head (the token embedding's two
/// contributions in the whole pass's order), a separate head, and LoRA with dropout.
#[test]
fn stages_chained_give_the_whole_pass_bit_for_bit() {
    use cohort_model::fast::stages;

    let run = |m: &Llama, b: usize, t: usize| {
        let (x, y) = batch(m.config.vocab_size, b, t, 9);
        let (whole_loss, whole) = m.fast_loss_and_grads(&x, &y).unwrap().unwrap();
        let ids: Vec<u32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let targets: Vec<u32> = y.flatten_all().unwrap().to_vec1().unwrap();
        let mut h = stages::embed(m, &ids, b, t).unwrap();
        let mut saved = Vec::new();
        for r in [0..1, 1..3, 3..4] {
            let (out, s) = stages::forward(m, r, &h, b, t).unwrap();
            assert!(s.bytes() > 0);
            saved.push(s);
            h = out;
        }
        // Inference through the same pieces: the whole pass's logits.
        let logits = stages::head_logits(m, &h, b, t).unwrap();
        let whole_logits = cohort_model::fast::llama::logits(m, &ids, b, t).unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&logits), bits(&whole_logits), "logits");
        let (loss, mut dx, head) = stages::head(m, &h, &targets, b, t).unwrap();
        let mut parts = Vec::new();
        for s in saved.into_iter().rev() {
            let (d, g) = stages::backward(m, s, &dx).unwrap();
            parts.push(g);
            dx = d;
        }
        parts.push(stages::embed_backward(m, &ids, b, t, &dx, head).unwrap());
        let grads = stages::assemble(m, parts).unwrap();
        assert_eq!(loss.to_bits(), whole_loss.to_bits(), "loss");
        assert_eq!(grads.len(), whole.len());
        for (i, (a, w)) in grads.iter().zip(&whole).enumerate() {
            assert_eq!(bits(a), bits(w), "gradient {i} differs");
        }
    };
    let four = |kind: &str, heads, kv, tied| {
        let mut c = LlamaConfig::small(kind, 29, 32, 4, heads, kv);
        c.intermediate_size = 40;
        c.tie_word_embeddings = tied;
        c.max_position_embeddings = Some(64);
        Llama::new(c, 7, &Device::Cpu).unwrap()
    };
    run(&four("qwen2", 4, 2, true), 3, 16);
    run(&four("llama", 4, 1, false), 2, 33);

    let mut m = four("qwen2", 4, 2, false);
    let linears = m.linear_modules();
    let w = m.weights_mut();
    let cfg = LoraConfig::new(3, 6.0, &["all-linear"]).with_dropout(0.2);
    w.lora = Some(Lora::attach(&mut w.params, &linears, cfg, 1).unwrap());
    m.weights().lora.as_ref().unwrap().set_dropout_key(Some(5));
    run(&m, 2, 12);

    // Refused before any work: a range outside the model, an empty one, a stream of the
    // wrong size, a non-finite value, a batch longer than the context.
    let x = vec![0.0f32; 2 * 12 * 32];
    for (range, len) in [(0..5, x.len()), (2..2, x.len()), (0..1, 7)] {
        assert!(stages::forward(&m, range, &x[..len], 2, 12).is_err());
    }
    let mut nan = x.clone();
    nan[3] = f32::NAN;
    assert!(stages::forward(&m, 0..1, &nan, 2, 12).is_err());
    assert!(stages::forward(&m, 0..1, &vec![0.0; 2 * 65 * 32], 2, 65).is_err());
    // Which block a parameter belongs to, for a server's share of an adapter.
    assert_eq!(
        m.layer_of("model.layers.3.mlp.up_proj.lora_A.weight"),
        Some(3)
    );
    assert_eq!(
        m.layer_of("base_model.model.model.layers.12.self_attn.q_proj.weight"),
        Some(12)
    );
    for name in [
        "model.embed_tokens.weight",
        "model.norm.weight",
        "lm_head.weight",
        "model.layers.x.mlp",
        "model.layers.",
    ] {
        assert_eq!(m.layer_of(name), None, "{name}");
    }
}

/// A verifier recomputing some sequences of a Llama-family stage call gets the whole call's
/// rows bit for bit, with grouped-query attention (key/value projections narrower than the
/// queries) and adapter dropout, on one thread and on two.
#[test]
fn forward_rows_recompute_the_rows_of_a_whole_call_bit_for_bit() {
    use cohort_model::fast::stages;

    // Wide enough that the matrix products split across threads.
    let mut c = LlamaConfig::small("qwen2", 31, 128, 4, 8, 2);
    c.intermediate_size = 256;
    c.max_position_embeddings = Some(64);
    let mut m = Llama::new(c, 3, &Device::Cpu).unwrap();
    let linears = m.linear_modules();
    let w = m.weights_mut();
    let cfg = LoraConfig::new(4, 8.0, &["all-linear"]).with_dropout(0.2);
    w.lora = Some(Lora::attach(&mut w.params, &linears, cfg, 1).unwrap());
    m.weights().lora.as_ref().unwrap().set_dropout_key(Some(77));
    let (b, t, d) = (8, 48, 128);
    let x: Vec<f32> = SplitMix64::new(3).normal_vec(b * t * d, 1.0);
    let on = |threads: usize, f: &(dyn Fn() -> Vec<f32> + Sync)| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(f)
    };
    let out = on(2, &|| stages::forward(&m, 1..3, &x, b, t).unwrap().0);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(
        bits(&on(1, &|| stages::forward(&m, 1..3, &x, b, t).unwrap().0)),
        bits(&out),
        "one thread against two"
    );
    let row = t * d;
    for rows in [vec![0], vec![7], vec![1, 4], (0..8).collect::<Vec<_>>()] {
        let sub: Vec<f32> = rows
            .iter()
            .flat_map(|&r| x[r * row..(r + 1) * row].iter().copied())
            .collect();
        for threads in [1, 2] {
            let got = on(threads, &|| {
                stages::forward_rows(&m, 1..3, &sub, &rows, b, t).unwrap()
            });
            for (i, &r) in rows.iter().enumerate() {
                assert_eq!(
                    bits(&got[i * row..(i + 1) * row]),
                    bits(&out[r * row..(r + 1) * row]),
                    "row {r} of {rows:?} on {threads} threads"
                );
            }
        }
    }
}
