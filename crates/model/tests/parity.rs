#![allow(clippy::unwrap_used, clippy::expect_used)]
//! transformers parity over the configuration features cohort implements: each fixture in
//! `tests/fixtures/parity/` (written by `make_parity.py` with transformers) is a tiny random
//! model with one family's features switched on, and the logits and loss transformers computed
//! for a fixed sequence. cohort must load each directory as committed and give the same
//! logits (within 1e-4 of their scale) and loss, through candle's forward pass, the
//! hand-written evaluation pass and the memory-mapped loader. Then the refusals: every config
//! field cohort does not implement, with a non-default value, is refused with its name, and so
//! are weights the config does not describe.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use cohort_model::{Error, Gpt, LanguageModel, Llama, Tokenizer, load_any};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/parity")
        .join(name)
}

struct Golden {
    ids: Vec<u32>,
    logits: Vec<f32>,
    loss: f64,
}

fn golden(dir: &Path) -> Golden {
    let g = candle_core::safetensors::load(dir.join("golden.safetensors"), &Device::Cpu).unwrap();
    let ids: Vec<i64> = g["ids"].to_vec1().unwrap();
    Golden {
        ids: ids.into_iter().map(|i| i as u32).collect(),
        logits: g["logits"].flatten_all().unwrap().to_vec1().unwrap(),
        loss: f64::from(g["loss"].to_vec1::<f32>().unwrap()[0]),
    }
}

fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0f32, |m, x| m.max(x.abs()))
}

/// Logits through candle's forward pass and the evaluation pass, and the mean next-token loss,
/// against transformers'.
fn check(name: &str, model: &dyn LanguageModel) {
    let dir = fixture(name);
    let g = golden(&dir);
    let x = Tensor::from_slice(&g.ids, (1, g.ids.len()), &Device::Cpu).unwrap();
    let scale = max_abs(&g.logits).max(1.0);
    for (pass, logits) in [
        ("forward", model.forward(&x).unwrap()),
        ("forward_eval", model.forward_eval(&x).unwrap()),
    ] {
        let got: Vec<f32> = logits.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(got.len(), g.logits.len(), "{name} {pass}");
        let diff = got
            .iter()
            .zip(&g.logits)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            diff < 1e-4 * scale,
            "{name} {pass}: logits differ from transformers' by {diff} (scale {scale})"
        );
    }
    let n = g.ids.len() - 1;
    let inp = Tensor::from_slice(&g.ids[..n], (1, n), &Device::Cpu).unwrap();
    let tgt = Tensor::from_slice(&g.ids[1..], (1, n), &Device::Cpu).unwrap();
    let loss = f64::from(model.loss(&inp, &tgt).unwrap().to_scalar::<f32>().unwrap());
    assert!(
        (loss - g.loss).abs() < 1e-4,
        "{name}: loss {loss} against transformers' {}",
        g.loss
    );
}

/// Each fixture through `load_any` (copied weights) and the mapped loader.
fn both_loaders(name: &str) {
    let dir = fixture(name);
    check(name, load_any(&dir, &Device::Cpu).unwrap().as_ref());
    let mapped: Box<dyn LanguageModel> = if name.starts_with("gpt2") {
        Box::new(Gpt::load_mapped(&dir, &Device::Cpu).unwrap())
    } else {
        Box::new(Llama::load_mapped(&dir, &Device::Cpu).unwrap())
    };
    check(name, mapped.as_ref());
}

#[test]
fn gpt2_with_another_mlp_width_epsilon_gelu_name_and_upcast_attention() {
    both_loaders("gpt2_features");
    both_loaders("gpt2_pytorch_tanh");
}

#[test]
fn llama_with_biases_head_dim_tied_embeddings_and_llama3_rope() {
    both_loaders("llama_features");
    let m = Llama::load(&fixture("llama_features"), &Device::Cpu).unwrap();
    assert_eq!(m.config.head_dim(), 8);
    assert!(
        m.params()
            .get("model.layers.0.mlp.down_proj.bias")
            .is_some()
    );
    assert!(
        m.params()
            .get("model.layers.1.self_attn.o_proj.bias")
            .is_some()
    );
}

#[test]
fn llama_rope_scaling_linear_in_the_old_format_yarn_and_dynamic() {
    both_loaders("llama_linear_legacy");
    both_loaders("llama_yarn");
    both_loaders("llama_dynamic");
}

#[test]
fn qwen2_and_mistral_sliding_windows_up_to_the_window() {
    both_loaders("qwen2_sliding");
    both_loaders("mistral");
    for name in ["qwen2_sliding", "mistral"] {
        let m = load_any(&fixture(name), &Device::Cpu).unwrap();
        assert_eq!(m.max_context(), 16, "{name}");
        // Longer than the window: refused, naming the field, not computed as full attention.
        let x = Tensor::from_vec((0..17u32).collect(), (1, 17), &Device::Cpu).unwrap();
        for r in [m.forward(&x), m.forward_eval(&x)] {
            let e = r.unwrap_err().to_string();
            assert!(e.contains("sliding_window"), "{name}: {e}");
        }
    }
}

#[test]
fn a_tokenizer_that_adds_bos_gives_the_ids_transformers_gives_by_default() {
    let dir = fixture("llama_bos");
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokens.json")).unwrap()).unwrap();
    let ids: Vec<u32> = want["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let m = load_any(&dir, &Device::Cpu).unwrap();
    let tok = Tokenizer::load_for_model(&dir, m.vocab_size()).unwrap();
    let text = want["text"].as_str().unwrap();
    assert_eq!(tok.encode(text).unwrap(), ids);
    assert_eq!(tok.special_tokens_added().unwrap(), ids[..1]);
    assert_eq!(tok.encode_plain(text).unwrap(), ids[1..]);
    assert_eq!(golden(&dir).ids, ids);
    check("llama_bos", m.as_ref());
}

/// A copy of fixture `name` with `edit` applied to its config.json.
fn edited(
    name: &str,
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(fixture(name)).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, tmp.path().join(f.file_name().unwrap())).unwrap();
    }
    let p = tmp.path().join("config.json");
    let mut cfg: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(&p, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    tmp
}

/// Loading `dir` fails (copied and mapped) with an error that names `field`.
fn refused(dir: &Path, field: &str) {
    let copied = load_any(dir, &Device::Cpu).err().map(|e| e.to_string());
    let gpt = dir.join("config.json");
    let mapped = if std::fs::read_to_string(gpt).unwrap().contains("\"gpt2\"") {
        Gpt::load_mapped(dir, &Device::Cpu)
            .err()
            .map(|e| e.to_string())
    } else {
        Llama::load_mapped(dir, &Device::Cpu)
            .err()
            .map(|e| e.to_string())
    };
    for e in [copied, mapped] {
        let e = e.unwrap_or_else(|| panic!("{field}: loaded"));
        assert!(e.contains(field), "{field}: {e}");
    }
}

#[test]
fn unimplemented_config_fields_are_refused_by_name() {
    use serde_json::json;
    let cases: Vec<(&str, &str, serde_json::Value)> = vec![
        ("gpt2_features", "scale_attn_weights", json!(false)),
        (
            "gpt2_features",
            "scale_attn_by_inverse_layer_idx",
            json!(true),
        ),
        ("gpt2_features", "add_cross_attention", json!(true)),
        ("gpt2_features", "activation_function", json!("gelu")),
        ("gpt2_features", "activation_function", json!("relu")),
        ("gpt2_features", "tie_word_embeddings", json!(false)),
        ("gpt2_features", "layer_norm_epsilon", json!(-1.0)),
        ("gpt2_features", "layer_norm_epsilon", json!(0.0)),
        ("gpt2_features", "pruned_heads", json!({"0": [1]})),
        (
            "gpt2_features",
            "quantization_config",
            json!({"quant_method": "bitsandbytes"}),
        ),
        ("gpt2_features", "is_encoder_decoder", json!(true)),
        ("llama_features", "hidden_act", json!("gelu")),
        ("llama_features", "rms_norm_eps", json!(-1.0)),
        (
            "llama_features",
            "rope_type",
            json!({"rope_type": "longrope", "rope_theta": 10000.0}),
        ),
        (
            "llama_features",
            "partial_rotary_factor",
            json!({"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}),
        ),
        (
            "llama_features",
            "low_freq_factor",
            json!({"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0}),
        ),
        ("llama_features", "layer_types", json!(["full_attention"])),
    ];
    for (name, field, value) in cases {
        let key = match field {
            "rope_type" | "partial_rotary_factor" | "low_freq_factor" => "rope_parameters",
            f => f,
        };
        let dir = edited(name, |c| {
            c.insert(key.to_string(), value.clone());
        });
        refused(dir.path(), field);
    }
    // rope_scaling (the older name) takes precedence over rope_parameters, as in transformers.
    let dir = edited("llama_features", |c| {
        c.insert("rope_scaling".into(), json!({"type": "su", "factor": 2.0}));
    });
    refused(dir.path(), "rope_type");
}

#[test]
fn a_config_that_does_not_describe_the_weights_is_refused() {
    // Fewer layers than the checkpoint: the leftover layer is named, not silently dropped.
    let dir = edited("llama_features", |c| {
        c.insert("num_hidden_layers".into(), 1.into());
    });
    refused(dir.path(), "model.layers.1.");
    let dir = edited("gpt2_features", |c| {
        c.insert("n_layer".into(), 1.into());
    });
    refused(dir.path(), "h.1.");
    // No MLP bias in the config, biases in the weights.
    let dir = edited("llama_features", |c| {
        c.insert("mlp_bias".into(), false.into());
    });
    refused(dir.path(), "mlp.down_proj.bias");
    // Another head_dim: a shape mismatch, named.
    let dir = edited("llama_features", |c| {
        c.remove("head_dim");
    });
    refused(dir.path(), "q_proj.weight");
    // Untied in the config, no lm_head in the weights.
    let dir = edited("llama_features", |c| {
        c.insert("tie_word_embeddings".into(), false.into());
    });
    refused(dir.path(), "lm_head.weight");
    // Fields transformers does not define for the family are ignored (as by transformers).
    let dir = edited("mistral", |c| {
        c.insert("some_future_field".into(), true.into());
        c.insert("attention_bias".into(), true.into());
    });
    assert!(load_any(dir.path(), &Device::Cpu).is_ok());
}

#[test]
fn tied_checkpoints_may_store_the_head_only_if_it_equals_the_embedding() {
    let dir = fixture("llama_features");
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(dir.join("config.json"), tmp.path().join("config.json")).unwrap();
    let mut t =
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let emb = t["model.embed_tokens.weight"].clone();
    t.insert("lm_head.weight".into(), emb.clone());
    // An old checkpoint's rotary buffer is accepted (transformers recomputes it too).
    t.insert(
        "model.layers.0.self_attn.rotary_emb.inv_freq".into(),
        Tensor::ones(4, candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&t, tmp.path().join("model.safetensors")).unwrap();
    assert!(load_any(tmp.path(), &Device::Cpu).is_ok());
    assert!(Llama::load_mapped(tmp.path(), &Device::Cpu).is_ok());
    t.insert("lm_head.weight".into(), (emb + 1.0).unwrap());
    candle_core::safetensors::save(&t, tmp.path().join("model.safetensors")).unwrap();
    refused(tmp.path(), "lm_head.weight");
    match load_any(tmp.path(), &Device::Cpu) {
        Err(Error::Config { field, .. }) => assert_eq!(field, "tie_word_embeddings"),
        other => panic!("{:?}", other.map(|_| ())),
    }
}
