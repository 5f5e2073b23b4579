#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The hand-written GPT backward pass against candle's autograd (which the f64 finite-
//! difference tests check), for full training and for LoRA with a frozen base.

use candle_core::{Device, Tensor};
use cohort_core::SplitMix64;
use cohort_model::lora::{Lora, LoraConfig};
use cohort_model::train::Trainer;
use cohort_model::{Gpt, GptConfig, LanguageModel};

fn batch(v: usize, b: usize, t: usize, seed: u64) -> (Tensor, Tensor) {
    let mut r = SplitMix64::new(seed);
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

/// Attaches a LoRA adapter of `cfg` to `m`, its B matrices made non-zero so that every
/// adapter gradient is exercised.
fn with_lora(m: &mut Gpt, cfg: LoraConfig) {
    let linears = m.linear_modules();
    let w = m.weights_mut();
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
    with_lora(&mut m, LoraConfig::new(3, 6.0, &["c_attn", "c_proj"]));
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

fn lora_model(dropout: f64) -> Gpt {
    // Context 48: long enough for two 32-row attention blocks.
    let cfg = GptConfig::new(23, 48, 32, 2, 2);
    let mut m = Gpt::new(cfg, 5, &Device::Cpu).unwrap();
    with_lora(
        &mut m,
        LoraConfig::new(3, 6.0, &["all-linear"]).with_dropout(dropout),
    );
    m
}

fn fast_grads(m: &Gpt, x: &Tensor, y: &Tensor) -> Vec<Vec<f32>> {
    m.fast_loss_and_grads(x, y).unwrap().unwrap().1
}

#[test]
fn fast_gradients_match_autograd_with_lora_dropout_and_long_blocked_context() {
    let m = lora_model(0.3);
    let lora = m.weights().lora.as_ref().unwrap();
    // Both paths draw the same masks from the key (40 positions: two attention blocks).
    lora.set_dropout_key(Some(9));
    compare(&m, 2, 40);
    let (x, y) = batch(23, 2, 20, 5);
    // No key (evaluation): no dropout, the same as an adapter without dropout.
    lora.set_dropout_key(None);
    let eval = fast_grads(&m, &x, &y);
    assert_eq!(eval, fast_grads(&lora_model(0.0), &x, &y));
    // A key changes the gradients, the same key gives the same ones, another key others.
    lora.set_dropout_key(Some(9));
    let k9 = fast_grads(&m, &x, &y);
    assert_ne!(k9, eval);
    assert_eq!(k9, fast_grads(&m, &x, &y));
    lora.set_dropout_key(Some(10));
    assert_ne!(k9, fast_grads(&m, &x, &y));
}

#[test]
fn dropout_masks_are_deterministic_and_drop_at_the_rate_asked() {
    let m = cohort_model::lora::dropout_mask(7, "transformer.h.0.attn.c_attn", 0.25, 200_000);
    assert_eq!(
        m,
        cohort_model::lora::dropout_mask(7, "transformer.h.0.attn.c_attn", 0.25, 200_000)
    );
    let dropped = m.iter().filter(|&&v| v == 0.0).count() as f64 / m.len() as f64;
    assert!((dropped - 0.25).abs() < 0.01, "dropped {dropped}");
    assert!(m.iter().all(|&v| v == 0.0 || v == 1.0 / 0.75));
    // The prefix of a longer mask is the shorter mask (element i depends on i alone).
    let long = cohort_model::lora::dropout_mask(7, "transformer.h.0.attn.c_attn", 0.25, 300_000);
    assert_eq!(&long[..200_000], &m[..]);
    assert_ne!(
        m,
        cohort_model::lora::dropout_mask(7, "transformer.h.0.attn.c_proj", 0.25, 200_000)
    );
}

#[test]
fn training_with_dropout_is_deterministic_and_leaves_evaluation_mode() {
    use cohort_model::train::TrainConfig;
    let run = |p: f64| {
        let m = lora_model(p);
        let mut t = Trainer::new(&m, TrainConfig::new(2, 16)).unwrap();
        for i in 0..2 {
            t.step_on(&m, &[batch(23, 2, 16, i)]).unwrap();
        }
        assert!(
            m.weights()
                .lora
                .as_ref()
                .unwrap()
                .dropout("transformer.h.0.attn.c_attn", 4)
                .is_none()
        );
        m.params().flat().unwrap()
    };
    let a = run(0.2);
    assert_eq!(a, run(0.2));
    assert_ne!(a, run(0.0));
}

#[test]
fn out_of_range_tokens_are_refused() {
    let m = Gpt::new(GptConfig::preset("test", 5).unwrap(), 0, &Device::Cpu).unwrap();
    let x = Tensor::new(&[[1u32, 7]], &Device::Cpu).unwrap();
    assert!(m.fast_loss_and_grads(&x, &x).unwrap().is_err());
}

#[test]
fn pooled_buffers_are_kept_between_steps_and_released_on_request() {
    let m = lora_model(0.0);
    let (x, y) = batch(23, 2, 20, 6);
    cohort_model::fast::release_buffers();
    assert_eq!(cohort_model::fast::retained_bytes(), 0);
    let first = fast_grads(&m, &x, &y);
    assert!(cohort_model::fast::retained_bytes() > 0);
    // Reused (stale) buffers give the same gradients as fresh ones.
    assert_eq!(first, fast_grads(&m, &x, &y));
    cohort_model::fast::release_buffers();
    assert_eq!(cohort_model::fast::retained_bytes(), 0);
    assert_eq!(first, fast_grads(&m, &x, &y));
}

#[test]
fn recycled_gradients_keep_the_pool_from_growing_across_steps() {
    use cohort_model::train::TrainConfig;
    let m = Gpt::new(GptConfig::new(23, 48, 32, 2, 2), 5, &Device::Cpu).unwrap();
    let mut t = Trainer::new(&m, TrainConfig::new(2, 40)).unwrap();
    cohort_model::fast::release_buffers();
    let mut sizes = Vec::new();
    for i in 0..6 {
        t.step_on(&m, &[batch(23, 2, 40, i)]).unwrap();
        sizes.push(cohort_model::fast::retained_bytes());
    }
    // The first step fills the pool (activations, then the gradients handed back); after that
    // every buffer a step takes comes from the pool, at exactly the size asked, and goes back
    // to it.
    assert!(sizes[1] > 0);
    assert!(sizes[2..].iter().all(|&s| s == sizes[1]), "{sizes:?}");
}

/// The model split into stages (the client's embeddings and head, three stage servers'
/// layer ranges) gives the whole hand-written pass's loss and gradients bit for bit, for full
/// training (the tied embedding's two contributions included) and for LoRA; a stage refuses
/// a stream or a layer range that does not fit, before any work.
#[test]
fn stages_chained_give_the_whole_pass_bit_for_bit() {
    use cohort_model::fast::stages;

    let run = |m: &Gpt, b: usize, t: usize| {
        let (x, y) = batch(m.config.vocab_size, b, t, 9);
        let (whole_loss, whole) = m.fast_loss_and_grads(&x, &y).unwrap().unwrap();
        let ids: Vec<u32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let targets: Vec<u32> = y.flatten_all().unwrap().to_vec1().unwrap();
        let ranges = [0..1, 1..3, 3..4];
        let mut h = stages::embed(m, &ids, b, t).unwrap();
        let mut saved = Vec::new();
        for r in &ranges {
            let (out, s) = stages::forward(m, r.clone(), &h, b, t).unwrap();
            assert!(s.bytes() > 0);
            saved.push(s);
            h = out;
        }
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
            let same =
                a.len() == w.len() && a.iter().zip(w).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "gradient {i} differs");
        }
    };
    let cfg = GptConfig::new(23, 16, 32, 4, 4).with_n_inner(48);
    let full = Gpt::new(cfg.clone(), 5, &Device::Cpu).unwrap();
    run(&full, 3, 16);
    run(&full, 2, 7);

    let mut m = Gpt::new(cfg, 5, &Device::Cpu).unwrap();
    with_lora(
        &mut m,
        LoraConfig::new(3, 6.0, &["c_attn", "c_proj", "c_fc"]),
    );
    run(&m, 2, 12);

    // Refused before any work: a range outside the model, an empty one, a stream of the
    // wrong size, a non-finite value, a batch longer than the context.
    let x = vec![0.0f32; 2 * 12 * 16];
    for (range, len, t) in [(0..5, x.len(), 12), (2..2, x.len(), 12), (0..1, 7, 12)] {
        assert!(stages::forward(&m, range, &x[..len.min(x.len())], 2, t).is_err());
    }
    let mut nan = x.clone();
    nan[3] = f32::NAN;
    assert!(stages::forward(&m, 0..1, &nan, 2, 12).is_err());
    assert!(stages::forward(&m, 0..1, &vec![0.0; 2 * 40 * 16], 2, 40).is_err());
}

/// A verifier recomputing some sequences of a stage call (`stages::forward_rows`) gets those
/// rows of the whole call's output bit for bit, with adapter dropout on (the masks drawn for
/// the rows' places in the whole batch), on one thread and on several, for any choice of
/// rows; bad row lists are refused.
#[test]
fn forward_rows_recompute_the_rows_of_a_whole_call_bit_for_bit() {
    use cohort_model::fast::stages;

    // Wide enough that the matrix products split across threads (m n k >= 2^20).
    let cfg = GptConfig::new(23, 64, 128, 4, 4);
    let mut m = Gpt::new(cfg, 5, &Device::Cpu).unwrap();
    with_lora(
        &mut m,
        LoraConfig::new(4, 8.0, &["all-linear"]).with_dropout(0.2),
    );
    let (b, t, d) = (8, 48, 128);
    let x: Vec<f32> = SplitMix64::new(3).normal_vec(b * t * d, 1.0);
    m.weights().lora.as_ref().unwrap().set_dropout_key(Some(77));
    let whole = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| stages::forward(&m, 1..3, &x, b, t).unwrap().0)
    };
    let out = whole(2);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&whole(1)), bits(&out), "one thread against two");
    let row = t * d;
    for rows in [
        vec![0],
        vec![7],
        vec![1, 4],
        vec![0, 2, 3, 5, 6, 7],
        (0..8).collect(),
    ] {
        let sub: Vec<f32> = rows
            .iter()
            .flat_map(|&r| x[r * row..(r + 1) * row].iter().copied())
            .collect();
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let got = pool
                .install(|| stages::forward_rows(&m, 1..3, &sub, &rows, b, t))
                .unwrap();
            for (i, &r) in rows.iter().enumerate() {
                let (a, w) = (&got[i * row..(i + 1) * row], &out[r * row..(r + 1) * row]);
                let first = a
                    .iter()
                    .zip(w)
                    .position(|(a, w)| a.to_bits() != w.to_bits());
                assert!(
                    first.is_none(),
                    "row {r} of {rows:?} on {threads} threads: first difference at {first:?}: \
                     {:?} against {:?}",
                    first.map(|j| a[j]),
                    first.map(|j| w[j])
                );
            }
        }
    }
    // Another dropout key draws other masks: the rows differ.
    m.weights().lora.as_ref().unwrap().set_dropout_key(Some(78));
    let other = stages::forward_rows(&m, 1..3, &x[..row], &[0], b, t).unwrap();
    assert_ne!(bits(&other), bits(&out[..row]));
    // Refused: no rows, unsorted, repeated, past the batch, a stream of the wrong size.
    for rows in [vec![], vec![2, 1], vec![1, 1], vec![8]] {
        let n = rows.len().max(1);
        assert!(stages::forward_rows(&m, 1..3, &x[..n * row], &rows, b, t).is_err());
    }
    assert!(stages::forward_rows(&m, 1..3, &x[..row], &[0, 1], b, t).is_err());
}

/// Layers factored by SVD (frozen `A`, `B` factors, as a stage server with `--svd-rank` holds
/// them) run in the hand-written pass: LoRA gradients as autograd computes them, and a
/// verifier's recomputation of some rows gives the whole call's rows bit for bit.
#[test]
fn factored_layers_run_in_the_fast_pass_like_autograd() {
    use cohort_model::fast::stages;

    let cfg = GptConfig::new(23, 16, 32, 4, 4).with_n_inner(48);
    let mut m = Gpt::new(cfg, 5, &Device::Cpu).unwrap();
    let paths: Vec<String> = m
        .linear_modules()
        .into_iter()
        .map(|l| l.path)
        .filter(|p| p.starts_with("transformer.h.1.") || p.starts_with("transformer.h.2."))
        .collect();
    let report = cohort_model::svd::factorize_layers(&mut m, 6, &paths).unwrap();
    assert_eq!(report.layers.len(), 8, "{report:?}");
    assert!(report.params_after < report.params_before);
    // Trainable factors are refused by the fast pass; frozen ones run in it.
    with_lora(
        &mut m,
        LoraConfig::new(3, 6.0, &["c_attn", "c_proj", "c_fc"]),
    );
    assert!(cohort_model::fast::supported(&m));
    compare(&m, 2, 12);

    let (b, t, d) = (4, 12, 32);
    let x: Vec<f32> = SplitMix64::new(8).normal_vec(b * t * d, 1.0);
    let whole = stages::forward(&m, 1..3, &x, b, t).unwrap().0;
    let row = t * d;
    let got = stages::forward_rows(&m, 1..3, &x[2 * row..3 * row], &[2], b, t).unwrap();
    assert!(
        got.iter()
            .zip(&whole[2 * row..3 * row])
            .all(|(a, w)| a.to_bits() == w.to_bits())
    );
}
