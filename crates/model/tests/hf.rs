#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Hugging Face checkpoints: tiny random GPT-2, Llama (grouped-query attention) and Qwen2
//! (q/k/v biases, tied embeddings) written by `transformers` (tests/fixtures/make_fixtures.py),
//! loaded here; the logits must match those transformers computed, and the BPE tokenizer must
//! give the same ids.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use cohort_model::generate::{Sampling, generate};
use cohort_model::lora::{Lora, LoraConfig};
use cohort_model::{LanguageModel, Llama, Tokenizer, load_any};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn golden(name: &str) -> (Vec<u32>, Tensor) {
    let g = candle_core::safetensors::load(fixture(name).join("golden.safetensors"), &Device::Cpu)
        .unwrap();
    let ids: Vec<i64> = g["ids"].to_vec1().unwrap();
    (
        ids.into_iter().map(|i| i as u32).collect(),
        g["logits"].clone(),
    )
}

fn check_logits(name: &str) -> Box<dyn LanguageModel> {
    let model = load_any(&fixture(name), &Device::Cpu).unwrap();
    let (ids, want) = golden(name);
    let x = Tensor::from_slice(&ids, (1, ids.len()), &Device::Cpu).unwrap();
    let got = model.forward(&x).unwrap().squeeze(0).unwrap();
    assert_eq!(got.dims(), want.dims());
    let diff = (got - &want)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let scale = want
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(
        diff < 1e-4 * scale.max(1.0),
        "{name}: logits differ from transformers by {diff} (scale {scale})"
    );
    model
}

#[test]
fn gpt2_logits_match_transformers() {
    check_logits("gpt2");
}

#[test]
fn llama_with_grouped_query_attention_matches_transformers() {
    check_logits("llama");
}

#[test]
fn qwen2_with_biases_and_tied_embeddings_matches_transformers() {
    let m = check_logits("qwen2");
    // Tied: there is no lm_head parameter.
    assert!(m.params().get("lm_head.weight").is_none());
    assert!(
        m.params()
            .get("model.layers.0.self_attn.q_proj.bias")
            .is_some()
    );
}

#[test]
fn the_bpe_tokenizer_gives_the_ids_transformers_used() {
    let tok = Tokenizer::load(&fixture("llama")).unwrap();
    assert!(matches!(tok, Tokenizer::Hf(_)));
    let (ids, _) = golden("llama");
    let text = "First Citizen: Before we proceed any further";
    assert_eq!(tok.encode(text).unwrap(), ids);
    assert_eq!(tok.decode(&ids).unwrap(), text);
}

#[test]
fn llama_generates_saves_and_reloads_bit_exactly_and_takes_a_lora_adapter() {
    let dir = fixture("llama");
    let mut m = Llama::load(&dir, &Device::Cpu).unwrap();
    let out = generate(&m, &[1, 2, 3], 5, &Sampling::greedy()).unwrap();
    assert_eq!(out.len(), 8);
    let tmp = tempfile::tempdir().unwrap();
    m.save(tmp.path()).unwrap();
    let back = Llama::load(tmp.path(), &Device::Cpu).unwrap();
    assert_eq!(back.params().flat().unwrap(), m.params().flat().unwrap());
    assert_eq!(back.config.theta(), m.config.theta());
    // LoRA on the attention projections; a fresh adapter changes nothing.
    let x = Tensor::new(&[[5u32, 9, 2, 7]], &Device::Cpu).unwrap();
    let before: Vec<f32> = m
        .forward(&x)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let linears = m.linear_modules();
    let w = m.weights_mut();
    w.lora = Some(
        Lora::attach(
            &mut w.params,
            &linears,
            LoraConfig::new(2, 4.0, &["q_proj", "v_proj"]),
            0,
        )
        .unwrap(),
    );
    assert_eq!(m.params().spec().len(), 2 * 2 * 2);
    assert!(!m.weights().lora.as_ref().unwrap().config.fan_in_fan_out);
    let after: Vec<f32> = m
        .forward(&x)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(before, after);
    // Gradients reach the adapter through RMSNorm, RoPE and SwiGLU.
    let y = Tensor::new(&[[9u32, 2, 7, 1]], &Device::Cpu).unwrap();
    let g = m.loss(&x, &y).unwrap().backward().unwrap();
    let a = m
        .params()
        .get("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight")
        .unwrap();
    let gn = g
        .get(a.var.as_tensor())
        .unwrap()
        .abs()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(gn > 0.0);
}

#[test]
fn unsupported_configs_name_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("llama").join("config.json")).unwrap(),
    )
    .unwrap();
    // Llama 3.1's RoPE is implemented (tests/parity.rs), LongRoPE is not.
    cfg["rope_scaling"] = serde_json::json!({"rope_type": "longrope", "factor": 8.0});
    std::fs::write(tmp.path().join("config.json"), cfg.to_string()).unwrap();
    let err = load_any(tmp.path(), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("rope_type") && err.contains("longrope"),
        "{err}"
    );
    cfg["model_type"] = "falcon".into();
    std::fs::write(tmp.path().join("config.json"), cfg.to_string()).unwrap();
    let err = load_any(tmp.path(), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("falcon"), "{err}");
}
