#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A GPT whose frozen base is read in place from the memory-mapped checkpoint
//! ([`Gpt::load_mapped`]) trains and evaluates a LoRA adapter bit for bit like the same model
//! with its base copied into candle tensors; broken checkpoints are refused with the file and
//! the tensor named.

use std::path::Path;

use candle_core::{Device, Tensor};
use cohort_core::SplitMix64;
use cohort_model::checkpoint::WEIGHTS_FILE;
use cohort_model::train::{TrainConfig, Trainer, evaluate};
use cohort_model::{Gpt, GptConfig, LanguageModel, Lora, LoraConfig};

fn saved_model(dir: &Path) {
    // Context 48: two 32-row attention blocks.
    let m = Gpt::new(GptConfig::new(23, 48, 32, 2, 2), 7, &Device::Cpu).unwrap();
    m.save_dir(dir).unwrap();
}

fn with_lora(mut m: Gpt, dropout: f64) -> Gpt {
    let linears = m.linear_modules();
    let w = m.weights_mut();
    let cfg = LoraConfig::new(4, 8.0, &["all-linear"]).with_dropout(dropout);
    w.lora = Some(Lora::attach(&mut w.params, &linears, cfg, 3).unwrap());
    // Non-zero B, so every gradient path of the adapter carries signal.
    for s in m.params().spec() {
        if s.name.contains("lora_B") {
            let p = m.params().get(&s.name).unwrap();
            let r = SplitMix64::new(s.name.len() as u64).normal_vec(p.var.elem_count(), 0.05);
            p.var
                .set(&Tensor::from_vec(r, p.var.shape(), &Device::Cpu).unwrap())
                .unwrap();
        }
    }
    m
}

fn tokens(n: usize) -> Vec<u32> {
    let mut r = SplitMix64::new(9);
    (0..n).map(|_| r.below(23) as u32).collect()
}

fn batches(steps: usize) -> Vec<(Tensor, Tensor)> {
    let mut r = SplitMix64::new(11);
    (0..steps)
        .map(|_| {
            cohort_model::data::sample_batch(&tokens(4000), 3, 48, &mut r, &Device::Cpu).unwrap()
        })
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Every LoRA step's loss, the adapter after training, and the evaluation.
fn train(m: &Gpt) -> (Vec<u64>, Vec<u32>, u64) {
    let mut t = Trainer::new(m, TrainConfig::new(3, 48)).unwrap();
    let losses = batches(4)
        .chunks(2)
        .map(|b| t.step_on(m, b).unwrap().loss.to_bits())
        .collect();
    let e = evaluate(m, &tokens(2000), 4, 48, 8).unwrap();
    (losses, bits(&m.params().flat().unwrap()), e.loss.to_bits())
}

#[test]
fn mapped_base_trains_lora_bit_for_bit_like_the_copied_base() {
    let dir = tempfile::tempdir().unwrap();
    saved_model(dir.path());
    for dropout in [0.0, 0.2] {
        let copied = with_lora(Gpt::load(dir.path(), &Device::Cpu).unwrap(), dropout);
        let mapped = with_lora(Gpt::load_mapped(dir.path(), &Device::Cpu).unwrap(), dropout);

        // Only the adapter lives in candle tensors; the whole base is read in place.
        let f = mapped.weights().frozen.as_ref().expect("mapped");
        let base = Gpt::shapes(&mapped.config);
        assert_eq!(f.names().count(), base.len());
        assert!(mapped.params().iter().all(|p| p.name.contains("lora_")));
        let stats = f.stats();
        assert_eq!((stats.tensors_copied, stats.copied_bytes), (0, 0));
        assert_eq!((stats.files_mapped, stats.files), (1, 1));
        assert_eq!(
            stats.mapped_bytes,
            4 * copied.params().total_len() - 4 * copied.params().trainable_len()
        );
        assert_eq!(mapped.weights().total_len(), copied.params().total_len());
        assert_eq!(mapped.params().spec(), copied.params().spec());

        // The same gradients, bit for bit.
        let (x, y) = &batches(1)[0];
        let (la, ga) = copied.fast_loss_and_grads(x, y).unwrap().unwrap();
        let (lb, gb) = mapped
            .fast_loss_and_grads(x, y)
            .expect("fast path")
            .unwrap();
        assert_eq!(la.to_bits(), lb.to_bits());
        assert_eq!(ga.len(), gb.len());
        for (a, b) in ga.iter().zip(&gb) {
            assert_eq!(bits(a), bits(b));
        }
        assert!(ga.iter().flatten().any(|&g| g != 0.0));

        // Training (with accumulation and dropout) and evaluation, bit for bit.
        assert_eq!(train(&copied), train(&mapped), "dropout {dropout}");
        // None of that copied a base weight out of the mapping.
        assert_eq!(f.materialised_bytes(), 0);
    }
}

#[test]
fn candle_paths_copy_mapped_weights_on_first_use_only() {
    let dir = tempfile::tempdir().unwrap();
    saved_model(dir.path());
    let copied = with_lora(Gpt::load(dir.path(), &Device::Cpu).unwrap(), 0.0);
    let mapped = with_lora(Gpt::load_mapped(dir.path(), &Device::Cpu).unwrap(), 0.0);
    let f = mapped.weights().frozen.clone().unwrap();
    let (x, y) = &batches(1)[0];

    // The hand-written evaluation pass reads the mapping; candle's forward copies.
    let fast = mapped.forward_eval(x).unwrap();
    assert_eq!(f.materialised_bytes(), 0);
    let a = copied
        .forward(x)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let b = mapped
        .forward(x)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(bits(&a), bits(&b));
    assert_eq!(f.materialised_bytes(), 4 * f.len());
    let fast = fast.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let diff = fast
        .iter()
        .zip(&a)
        .fold(0f32, |m, (p, q)| m.max((p - q).abs()));
    assert!(diff < 1e-4, "hand-written vs candle forward: {diff}");

    // candle's autograd on a mapped base gives the copied base's gradients.
    let (la, ga) = Trainer::gradients(&copied, &[(x.clone(), y.clone())], true).unwrap();
    let (lb, gb) = Trainer::gradients(&mapped, &[(x.clone(), y.clone())], true).unwrap();
    assert_eq!(la.to_bits(), lb.to_bits());
    for (a, b) in ga.iter().zip(&gb) {
        assert_eq!(bits(a), bits(b));
    }
}

#[test]
fn a_mapped_model_saves_the_same_file_and_materialises_for_merging() {
    let dir = tempfile::tempdir().unwrap();
    saved_model(dir.path());
    let mut mapped = Gpt::load_mapped(dir.path(), &Device::Cpu).unwrap();
    let out = tempfile::tempdir().unwrap();
    mapped.save_dir(out.path()).unwrap();
    let read = |d: &Path| std::fs::read(d.join(WEIGHTS_FILE)).unwrap();
    assert_eq!(read(dir.path()), read(out.path()));

    // Merging writes into the base: it needs the weights in candle tensors.
    mapped.weights_mut().materialize_frozen().unwrap();
    assert!(mapped.weights().frozen.is_none());
    let mut m = with_lora(mapped, 0.0);
    let copied = with_lora(Gpt::load(dir.path(), &Device::Cpu).unwrap(), 0.0);
    let params = m.params().clone();
    m.weights_mut()
        .lora
        .as_mut()
        .unwrap()
        .merge(&params)
        .unwrap();
    let (x, _) = &batches(1)[0];
    let a = copied.forward(x).unwrap();
    let b = m.forward(x).unwrap();
    let d = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(d < 1e-4, "merged vs adapter: {d}");
}

/// The header and data of a safetensors file.
fn split(bytes: &[u8]) -> (serde_json::Map<String, serde_json::Value>, Vec<u8>) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    (header, bytes[8 + n..].to_vec())
}

/// A safetensors file from a header and data, the header padded with spaces to `pad` bytes
/// beyond its JSON.
fn join(header: &serde_json::Map<String, serde_json::Value>, data: &[u8], pad: usize) -> Vec<u8> {
    let mut h = serde_json::to_vec(header).unwrap();
    h.extend(std::iter::repeat_n(b' ', pad));
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(data);
    out
}

#[test]
fn misaligned_data_is_copied_and_still_trains_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    saved_model(dir.path());
    let copied = with_lora(Gpt::load(dir.path(), &Device::Cpu).unwrap(), 0.1);
    let file = dir.path().join(WEIGHTS_FILE);
    let (header, data) = split(&std::fs::read(&file).unwrap());
    // Data starting at an offset that is 2 mod 4: no f32 can be read in place.
    let pad = (0..4)
        .find(|&p| (8 + serde_json::to_vec(&header).unwrap().len() + p) % 4 == 2)
        .unwrap();
    std::fs::write(&file, join(&header, &data, pad)).unwrap();
    let mapped = with_lora(Gpt::load_mapped(dir.path(), &Device::Cpu).unwrap(), 0.1);
    let s = mapped.weights().frozen.as_ref().unwrap().stats();
    assert_eq!(s.tensors_mapped, 0);
    assert_eq!(s.tensors_copied, Gpt::shapes(&mapped.config).len());
    // Nothing is read in place, so the file is not kept mapped beside the copies.
    assert_eq!((s.files_mapped, s.files), (0, 1));
    assert_eq!(train(&copied), train(&mapped));
}

/// The error of mapping `dir` after `edit` rewrote its weights file.
fn broken(edit: impl FnOnce(&Path)) -> String {
    let dir = tempfile::tempdir().unwrap();
    saved_model(dir.path());
    edit(&dir.path().join(WEIGHTS_FILE));
    Gpt::load_mapped(dir.path(), &Device::Cpu)
        .expect_err("a broken file must be refused")
        .to_string()
}

fn rewrite(path: &Path, f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let (mut header, data) = split(&std::fs::read(path).unwrap());
    f(&mut header);
    std::fs::write(path, join(&header, &data, 0)).unwrap();
}

#[test]
fn broken_checkpoints_are_refused_naming_the_file_and_the_tensor() {
    // Truncated: the tensor stored last runs past the end.
    let mut last = String::new();
    let e = broken(|p| {
        let b = std::fs::read(p).unwrap();
        let (header, _) = split(&b);
        last = header
            .iter()
            .filter(|(k, _)| *k != "__metadata__")
            .max_by_key(|(_, v)| v["data_offsets"][1].as_u64().unwrap())
            .map(|(k, _)| k.clone())
            .unwrap();
        std::fs::write(p, &b[..b.len() - 10]).unwrap();
    });
    assert!(e.contains(WEIGHTS_FILE) && e.contains("truncated"), "{e}");
    assert!(e.contains(&format!("tensor `{last}`")), "{e}");
    // Cut inside the header.
    let e = broken(|p| {
        let b = std::fs::read(p).unwrap();
        std::fs::write(p, &b[..40]).unwrap();
    });
    assert!(e.contains(WEIGHTS_FILE) && e.contains("header"), "{e}");
    // Another shape with the same number of bytes.
    let e = broken(|p| {
        rewrite(p, |h| {
            h["transformer.h.1.attn.c_attn.weight"]["shape"] = serde_json::json!([96, 32]);
        })
    });
    assert!(
        e.contains(WEIGHTS_FILE) && e.contains("transformer.h.1.attn.c_attn.weight"),
        "{e}"
    );
    assert!(e.contains("[96, 32]"), "{e}");
    // An integer dtype of the same width.
    let e = broken(|p| rewrite(p, |h| h["transformer.ln_f.bias"]["dtype"] = "I32".into()));
    assert!(
        e.contains("transformer.ln_f.bias") && e.contains("I32"),
        "{e}"
    );
    // A byte range that does not match the shape.
    let e = broken(|p| {
        rewrite(p, |h| {
            let o = &mut h["transformer.wpe.weight"]["data_offsets"];
            o[1] = (o[1].as_u64().unwrap() - 4).into();
        })
    });
    assert!(
        e.contains("transformer.wpe.weight") && e.contains("bytes of data"),
        "{e}"
    );
    // A tensor missing.
    let e = broken(|p| {
        rewrite(p, |h| {
            h.remove("transformer.h.0.mlp.c_fc.bias");
        })
    });
    assert!(
        e.contains("missing tensor `transformer.h.0.mlp.c_fc.bias`"),
        "{e}"
    );
}
