#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The GPT decoder as a user meets it: gradients, training on Tiny Shakespeare, determinism,
//! checkpoints, the flat parameter view, generation.

use candle_core::{DType, Device, Tensor};
use cohort_core::SplitMix64;
use cohort_model::data::{self, TokenData};
use cohort_model::generate::{Sampling, generate};
use cohort_model::train::{TrainConfig, Trainer, evaluate, window_losses};
use cohort_model::{Gpt, GptConfig, LanguageModel, Tokenizer};

fn shakespeare(chars: usize) -> String {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/data/tinyshakespeare/input.txt"
    );
    std::fs::read_to_string(path)
        .expect("Tiny Shakespeare (shared/data)")
        .chars()
        .take(chars)
        .collect()
}

fn tiny(vocab: usize, seed: u64) -> Gpt {
    Gpt::new(
        GptConfig::preset("test", vocab).unwrap(),
        seed,
        &Device::Cpu,
    )
    .unwrap()
}

fn corpus() -> (Tokenizer, TokenData) {
    let text = shakespeare(20_000);
    let tok = Tokenizer::chars_of(&text);
    let ids = tok.encode(&text).unwrap();
    (tok, TokenData::split(ids, 0.1).unwrap())
}

fn train(model: &Gpt, data: &TokenData, steps: usize, seed: u64) -> (Trainer, Vec<f64>) {
    let mut cfg = TrainConfig::new(8, 32);
    cfg.seed = seed;
    cfg.optim.lr = 3e-3;
    cfg.optim.warmup_steps = 5;
    cfg.optim.total_steps = steps;
    let mut t = Trainer::new(model, cfg).unwrap();
    let losses = (0..steps)
        .map(|_| t.step(model, data).unwrap().loss)
        .collect();
    (t, losses)
}

#[test]
fn whole_model_gradient_matches_finite_differences_in_f64() {
    let model = tiny(11, 1).with_dtype(DType::F64).unwrap();
    let mut rng = SplitMix64::new(2);
    let ids: Vec<u32> = (0..2 * 6).map(|_| rng.below(11) as u32).collect();
    let x = Tensor::from_vec(ids[..].to_vec(), (2, 6), &Device::Cpu).unwrap();
    let y = Tensor::from_vec(
        ids.iter().map(|i| (i * 7 + 3) % 11).collect::<Vec<u32>>(),
        (2, 6),
        &Device::Cpu,
    )
    .unwrap();
    let loss = |m: &Gpt| m.loss(&x, &y).unwrap().to_scalar::<f64>().unwrap();
    let grads = model.loss(&x, &y).unwrap().backward().unwrap();
    let eps = 1e-5;
    let mut checked = 0;
    for p in model.params().iter() {
        let g: Vec<f64> = grads
            .get(p.var.as_tensor())
            .expect(&p.name)
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let base: Vec<f64> = p.var.flatten_all().unwrap().to_vec1().unwrap();
        // Three elements of every parameter tensor.
        for _ in 0..3 {
            let i = rng.below(base.len());
            let at = |d: f64| {
                let mut v = base.clone();
                v[i] += d;
                p.var
                    .set(&Tensor::from_vec(v, p.var.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                let l = loss(&model);
                p.var
                    .set(&Tensor::from_vec(base.clone(), p.var.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                l
            };
            let num = (at(eps) - at(-eps)) / (2.0 * eps);
            assert!(
                (num - g[i]).abs() < 1e-7 + 1e-5 * num.abs(),
                "{}[{i}]: analytic {} numeric {num}",
                p.name,
                g[i]
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 3 * (2 + 12 * 2 + 2));
}

#[test]
fn training_on_shakespeare_lowers_the_loss_and_replays_from_its_seed() {
    let (_, data) = corpus();
    let v = 1 + *data.train.iter().chain(&data.val).max().unwrap() as usize;
    let a = tiny(v, 7);
    let before = evaluate(&a, &data.val, 8, 32, 16).unwrap();
    assert!(
        (before.loss - (v as f64).ln()).abs() < 0.3,
        "untrained loss {} vs ln V {}",
        before.loss,
        (v as f64).ln()
    );
    let (_, losses) = train(&a, &data, 30, 3);
    let after = evaluate(&a, &data.val, 8, 32, 16).unwrap();
    assert!(
        after.loss < before.loss - 0.5,
        "val loss {} -> {}",
        before.loss,
        after.loss
    );
    assert!((after.perplexity - after.loss.exp()).abs() < 1e-9);
    assert!(losses[25..].iter().sum::<f64>() < losses[..5].iter().sum::<f64>());

    let b = tiny(v, 7);
    train(&b, &data, 30, 3);
    assert_eq!(
        a.params().flat().unwrap(),
        b.params().flat().unwrap(),
        "same seeds, different weights"
    );
    let c = tiny(v, 7);
    train(&c, &data, 30, 4);
    assert_ne!(a.params().flat().unwrap(), c.params().flat().unwrap());
}

#[test]
fn save_load_round_trips_bit_exactly() {
    let (tok, data) = corpus();
    let model = tiny(tok.vocab_size(), 5);
    train(&model, &data, 3, 1);
    let dir = tempfile::tempdir().unwrap();
    model.save(dir.path()).unwrap();
    tok.save(dir.path()).unwrap();
    let back = Gpt::load(dir.path(), &Device::Cpu).unwrap();
    assert_eq!(back.config, model.config);
    let (fa, fb) = (
        model.params().flat().unwrap(),
        back.params().flat().unwrap(),
    );
    assert!(fa.iter().zip(&fb).all(|(a, b)| a.to_bits() == b.to_bits()));
    let x = Tensor::from_vec(data.val[..32].to_vec(), (1, 32), &Device::Cpu).unwrap();
    let (la, lb) = (model.forward(&x).unwrap(), back.forward(&x).unwrap());
    assert_eq!(
        la.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        lb.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
    // Saving the loaded model gives the same bytes.
    let dir2 = tempfile::tempdir().unwrap();
    back.save(dir2.path()).unwrap();
    let bytes = |d: &std::path::Path| std::fs::read(d.join("model.safetensors")).unwrap();
    assert_eq!(bytes(dir.path()), bytes(dir2.path()));
    let t2 = Tokenizer::load(dir.path()).unwrap();
    assert_eq!(
        t2.encode("First Citizen").unwrap(),
        tok.encode("First Citizen").unwrap()
    );
}

#[test]
fn a_resumed_run_matches_an_uninterrupted_one_bit_for_bit() {
    let (tok, data) = corpus();
    let v = tok.vocab_size();
    let straight = tiny(v, 9);
    train(&straight, &data, 6, 2);

    let first = tiny(v, 9);
    let (mut t, _) = train(&first, &data, 6, 2);
    // Rewind: redo with a checkpoint after step 3.
    let first = tiny(v, 9);
    let mut cfg = t.config.clone();
    cfg.optim.total_steps = 6;
    t = Trainer::new(&first, cfg).unwrap();
    for _ in 0..3 {
        t.step(&first, &data).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    first.save(dir.path()).unwrap();
    t.save_state(&first, dir.path()).unwrap();
    let resumed = Gpt::load(dir.path(), &Device::Cpu).unwrap();
    let mut t2 = Trainer::load_state(&resumed, dir.path()).unwrap();
    assert_eq!(t2.step_count(), 3);
    for _ in 0..3 {
        t2.step(&resumed, &data).unwrap();
    }
    assert_eq!(
        straight.params().flat().unwrap(),
        resumed.params().flat().unwrap()
    );
}

#[test]
fn the_flat_view_gets_sets_adds_and_serialises() {
    let a = tiny(13, 1);
    let b = tiny(13, 2);
    let n = a.config.n_params();
    assert_eq!(a.params().trainable_len(), n);
    let (fa, fb) = (a.params().flat().unwrap(), b.params().flat().unwrap());
    assert_eq!(fa.len(), n);
    assert_ne!(fa, fb);
    // Apply b - a to a: a becomes b.
    let delta: Vec<f32> = fb.iter().zip(&fa).map(|(b, a)| b - a).collect();
    a.params().add_flat(&delta, 1.0).unwrap();
    let got = a.params().flat().unwrap();
    assert!(got.iter().zip(&fb).all(|(x, y)| (x - y).abs() < 1e-6));
    a.params().set_flat(&fa).unwrap();
    assert_eq!(a.params().flat().unwrap(), fa);
    assert!(a.params().set_flat(&fa[1..]).is_err());
    // Serialised bytes are canonical and load back.
    let bytes = b.params().to_safetensors().unwrap();
    assert_eq!(bytes, b.params().to_safetensors().unwrap());
    a.params().load_safetensors(&bytes).unwrap();
    assert_eq!(a.params().flat().unwrap(), fb);
    let spec = a.params().spec();
    assert_eq!(spec[0].name, "transformer.wte.weight");
    assert_eq!(
        spec.iter()
            .map(|s| s.shape.iter().product::<usize>())
            .sum::<usize>(),
        n
    );
    // A wrong-shaped tensor is refused, naming it.
    let other = Gpt::new(GptConfig::preset("test", 14).unwrap(), 0, &Device::Cpu).unwrap();
    let err = a
        .params()
        .load_safetensors(&other.params().to_safetensors().unwrap())
        .unwrap_err();
    assert!(err.to_string().contains("transformer.wte.weight"), "{err}");
}

#[test]
fn generation_is_deterministic_and_greedy_follows_the_argmax() {
    let (tok, data) = corpus();
    let model = tiny(tok.vocab_size(), 3);
    train(&model, &data, 10, 1);
    let prompt = tok.encode("ROMEO:").unwrap();
    let g1 = generate(&model, &prompt, 40, &Sampling::greedy()).unwrap();
    assert_eq!(g1.len(), prompt.len() + 40);
    assert_eq!(&g1[..prompt.len()], &prompt[..]);
    // Greedy: each generated token is the argmax of the model on its (windowed) prefix.
    for k in [prompt.len(), prompt.len() + 35] {
        let w = &g1[k.saturating_sub(32)..k];
        let x = Tensor::from_slice(w, (1, w.len()), &Device::Cpu).unwrap();
        let last = model
            .forward(&x)
            .unwrap()
            .narrow(1, w.len() - 1, 1)
            .unwrap()
            .flatten_all()
            .unwrap();
        assert_eq!(last.argmax(0).unwrap().to_scalar::<u32>().unwrap(), g1[k]);
    }
    let s = Sampling {
        temperature: 0.8,
        top_k: 10,
        top_p: 0.95,
        seed: 42,
    };
    let a = generate(&model, &prompt, 30, &s).unwrap();
    assert_eq!(a, generate(&model, &prompt, 30, &s).unwrap());
    assert_ne!(
        a,
        generate(&model, &prompt, 30, &Sampling { seed: 43, ..s }).unwrap()
    );
    assert!(tok.decode(&a).unwrap().starts_with("ROMEO:"));
}

#[test]
fn sequences_longer_than_the_context_are_refused() {
    let m = tiny(5, 0);
    let x = Tensor::zeros((1, 33), DType::U32, &Device::Cpu).unwrap();
    assert!(m.forward(&x).is_err());
    let (x, _) = data::sample_batch(
        &[0, 1, 2, 3, 4, 0, 1, 2],
        2,
        4,
        &mut SplitMix64::new(0),
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(x.dims(), &[2, 4]);
}

/// Window by window, the losses `evaluate` averages: as many windows, their mean its loss,
/// and each window's Min-K% loss (its least likely fifth of tokens) at least its mean loss;
/// training on text lowers its windows' losses.
#[test]
fn window_losses_are_the_windows_evaluate_averages() {
    let (_, data) = corpus();
    let v = 1 + *data.train.iter().chain(&data.val).max().unwrap() as usize;
    let a = tiny(v, 5);
    let all = evaluate(&a, &data.val, 8, 32, 12).unwrap();
    let w = window_losses(&a, &data.val, 8, 32, 12).unwrap();
    assert_eq!(w.len(), 12);
    let mean = w.iter().map(|x| x.loss).sum::<f64>() / w.len() as f64;
    assert!((mean - all.loss).abs() < 1e-5, "{mean} vs {}", all.loss);
    for x in &w {
        assert!(x.min_k >= x.loss - 1e-9, "{x:?}");
        assert!(x.loss.is_finite() && x.min_k.is_finite());
    }
    // Fewer tokens than one window: refused.
    assert!(window_losses(&a, &data.val[..10], 8, 32, 12).is_err());
    let before = window_losses(&a, &data.train, 8, 32, 8).unwrap();
    train(&a, &data, 30, 3);
    let after = window_losses(&a, &data.train, 8, 32, 8).unwrap();
    let sum = |w: &[cohort_model::train::WindowLoss]| w.iter().map(|x| x.loss).sum::<f64>();
    assert!(sum(&after) < sum(&before));
}
