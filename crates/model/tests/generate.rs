#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Generation through the key/value cache gives the tokens of generation without it (greedy and
//! seeded sampling, across the end of the context) for GPT and the Llama family, and the
//! cached hidden states equal those of a full forward pass.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use cohort_model::generate::{Sampling, generate, generate_uncached};
use cohort_model::lora::{Lora, LoraConfig};
use cohort_model::{Gpt, GptConfig, KvCache, LanguageModel, load_any};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn sampled(seed: u64) -> Sampling {
    Sampling {
        temperature: 0.9,
        top_k: 0,
        top_p: 1.0,
        seed,
    }
}

/// Cached and uncached generation agree, past the end of the context too.
fn same_tokens(m: &dyn LanguageModel, prompt: &[u32]) {
    let n = m.max_context() + 8 - prompt.len();
    let cached = generate(m, prompt, n, &Sampling::greedy()).unwrap();
    assert_eq!(
        cached,
        generate_uncached(m, prompt, n, &Sampling::greedy()).unwrap()
    );
    assert_eq!(cached.len(), prompt.len() + n);
    let s = sampled(3);
    assert_eq!(
        generate(m, prompt, n, &s).unwrap(),
        generate_uncached(m, prompt, n, &s).unwrap()
    );
}

/// Hidden states of a prompt fed to the cache in pieces equal a full pass's.
fn cached_hidden_matches_full(m: &dyn LanguageModel, ids: &[u32]) {
    let x = Tensor::from_slice(ids, (1, ids.len()), &Device::Cpu).unwrap();
    let full = m.hidden(&x).unwrap();
    let mut cache = KvCache::new();
    let mut parts = Vec::new();
    for piece in [&ids[..5], &ids[5..6], &ids[6..]] {
        let x = Tensor::from_slice(piece, (1, piece.len()), &Device::Cpu).unwrap();
        parts.push(m.hidden_cached(&x, &mut cache).unwrap().unwrap());
    }
    assert_eq!(cache.len(), ids.len());
    let cached = Tensor::cat(&parts, 1).unwrap();
    let diff = (full - cached)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff < 1e-4, "cached hidden states differ by {diff}");
    // The cache refuses to grow past the context.
    let over = vec![1u32; m.max_context() - ids.len() + 1];
    let x = Tensor::from_slice(&over, (1, over.len()), &Device::Cpu).unwrap();
    assert!(m.hidden_cached(&x, &mut cache).unwrap().is_err());
}

#[test]
fn gpt_cached_generation_gives_the_uncached_tokens() {
    let mut m = Gpt::new(GptConfig::preset("test", 40).unwrap(), 7, &Device::Cpu).unwrap();
    let ids: Vec<u32> = (0..20).map(|i| (i * 7 % 40) as u32).collect();
    cached_hidden_matches_full(&m, &ids);
    same_tokens(&m, &ids[..4]);
    // With a LoRA adapter (non-zero B) on the attention projection.
    let linears = m.linear_modules();
    let w = m.weights_mut();
    w.lora = Some(
        Lora::attach(
            &mut w.params,
            &linears,
            LoraConfig::new(2, 4.0, &["c_attn"]).with_dropout(0.5),
            3,
        )
        .unwrap(),
    );
    for s in m.params().spec() {
        if s.name.contains("lora_B") {
            let p = m.params().get(&s.name).unwrap();
            let r = cohort_core::SplitMix64::new(9).normal_vec(p.var.elem_count(), 0.2);
            p.var
                .set(&Tensor::from_vec(r, p.var.shape(), &Device::Cpu).unwrap())
                .unwrap();
        }
    }
    cached_hidden_matches_full(&m, &ids);
    same_tokens(&m, &ids[..4]);
}

#[test]
fn llama_and_qwen2_cached_generation_gives_the_uncached_tokens() {
    for name in ["llama", "qwen2"] {
        let m = load_any(&fixture(name), &Device::Cpu).unwrap();
        let ids: Vec<u32> = (0..24).map(|i| (i * 37 % 300) as u32).collect();
        cached_hidden_matches_full(m.as_ref(), &ids);
        same_tokens(m.as_ref(), &ids[..6]);
    }
}
