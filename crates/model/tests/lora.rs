#![allow(clippy::unwrap_used, clippy::expect_used)]
//! LoRA as a user meets it: a fresh adapter changes nothing, training touches only the
//! adapter, merge/unmerge, and PEFT-named files that load back.

use candle_core::{Device, Tensor};
use cohort_core::SplitMix64;
use cohort_model::data::TokenData;
use cohort_model::lora::{self, Lora, LoraConfig};
use cohort_model::train::{TrainConfig, Trainer};
use cohort_model::{Gpt, GptConfig, LanguageModel};

fn model() -> Gpt {
    Gpt::new(GptConfig::preset("test", 17).unwrap(), 4, &Device::Cpu).unwrap()
}

fn attach(m: &mut Gpt, targets: &[&str]) {
    let linears = m.linear_modules();
    let w = m.weights_mut();
    w.lora =
        Some(Lora::attach(&mut w.params, &linears, LoraConfig::new(4, 8.0, targets), 1).unwrap());
}

fn logits(m: &Gpt) -> Vec<f32> {
    let ids: Vec<u32> = (0..24).map(|i| (i * 5 % 17) as u32).collect();
    let x = Tensor::from_vec(ids, (2, 12), &Device::Cpu).unwrap();
    m.forward(&x)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn data() -> TokenData {
    // A learnable pattern with noise: runs of three, one token in ten random.
    let mut r = SplitMix64::new(5);
    let ids: Vec<u32> = (0..4000)
        .map(|i| {
            if r.below(10) == 0 {
                r.below(17) as u32
            } else {
                ((i / 3) % 17) as u32
            }
        })
        .collect();
    TokenData::split(ids, 0.1).unwrap()
}

#[test]
fn a_fresh_adapter_changes_nothing() {
    let mut m = model();
    let base = logits(&m);
    attach(&mut m, &["all-linear"]);
    assert_eq!(logits(&m), base);
    // And the adapter is not a no-op once B is non-zero.
    let b = m
        .params()
        .get(&lora::b_name("transformer.h.0.attn.c_attn"))
        .unwrap();
    b.var
        .set(&(b.var.ones_like().unwrap() * 0.1).unwrap())
        .unwrap();
    assert_ne!(logits(&m), base);
}

#[test]
fn training_moves_only_the_adapter_and_merge_unmerge_agree() {
    let mut m = model();
    let base_names: Vec<String> = m.params().iter().map(|p| p.name.clone()).collect();
    let before: Vec<Vec<f32>> = m
        .params()
        .iter()
        .map(|p| p.var.flatten_all().unwrap().to_vec1().unwrap())
        .collect();
    attach(&mut m, &["c_attn", "c_fc"]);
    // 2 layers x 2 modules x (A, B).
    assert_eq!(m.params().spec().len(), 8);
    assert!(
        m.params()
            .spec()
            .iter()
            .all(|s| s.name.starts_with("base_model.model.transformer.h."))
    );
    let d = 32;
    assert_eq!(
        m.params().trainable_len(),
        2 * (4 * d + 3 * d * 4) + 2 * (4 * d + 4 * d * 4)
    );
    let mut cfg = TrainConfig::new(4, 16);
    cfg.optim.lr = 1e-2;
    cfg.optim.warmup_steps = 1;
    let mut t = Trainer::new(&m, cfg).unwrap();
    let data = data();
    let first = t.step(&m, &data).unwrap().loss;
    let mut last = first;
    for _ in 0..15 {
        last = t.step(&m, &data).unwrap().loss;
    }
    assert!(last < first, "LoRA loss {first} -> {last}");
    for (name, old) in base_names.iter().zip(&before) {
        let now: Vec<f32> = m
            .params()
            .get(name)
            .unwrap()
            .var
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(&now, old, "frozen {name} moved");
    }

    let adapted = logits(&m);
    let lin = m.weights().params.clone();
    let w = m.weights_mut();
    let l = w.lora.as_mut().unwrap();
    l.merge(&lin).unwrap();
    assert!(l.is_merged());
    let merged = logits(&m);
    assert!(
        adapted
            .iter()
            .zip(&merged)
            .all(|(a, b)| (a - b).abs() < 1e-4)
    );
    let w = m.weights_mut();
    w.lora.as_mut().unwrap().unmerge(&lin).unwrap();
    for (name, old) in base_names.iter().zip(&before) {
        let now: Vec<f32> = m
            .params()
            .get(name)
            .unwrap()
            .var
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(
            now.iter().zip(old).all(|(a, b)| (a - b).abs() < 1e-5),
            "{name} not restored"
        );
    }
}

#[test]
fn adapters_save_with_peft_names_and_load_back() {
    let mut m = model();
    attach(&mut m, &["c_proj"]);
    let spec = m.params().spec();
    for s in &spec {
        let p = m.params().get(&s.name).unwrap();
        p.var
            .set(&(p.var.ones_like().unwrap() * 0.05).unwrap())
            .unwrap();
    }
    let want = logits(&m);
    let dir = tempfile::tempdir().unwrap();
    m.weights()
        .lora
        .as_ref()
        .unwrap()
        .save(m.params(), dir.path())
        .unwrap();
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["r"], 4);
    assert_eq!(cfg["fan_in_fan_out"], true);
    let names =
        candle_core::safetensors::load(dir.path().join("adapter_model.safetensors"), &Device::Cpu)
            .unwrap();
    assert!(names.contains_key("base_model.model.transformer.h.1.mlp.c_proj.lora_B.weight"));
    assert_eq!(
        names["base_model.model.transformer.h.0.attn.c_proj.lora_A.weight"].dims(),
        &[4, 32]
    );
    assert_eq!(
        names["base_model.model.transformer.h.0.mlp.c_proj.lora_B.weight"].dims(),
        &[32, 4]
    );

    let mut fresh = model();
    let linears = fresh.linear_modules();
    let w = fresh.weights_mut();
    w.lora = Some(Lora::load(&mut w.params, &linears, dir.path()).unwrap());
    assert_eq!(logits(&fresh), want);
}

#[test]
fn bad_adapter_configs_are_refused() {
    let mut m = model();
    let linears = m.linear_modules();
    let w = m.weights_mut();
    assert!(
        Lora::attach(
            &mut w.params,
            &linears,
            LoraConfig::new(0, 8.0, &["c_attn"]),
            0
        )
        .is_err()
    );
    let err = Lora::attach(
        &mut w.params,
        &linears,
        LoraConfig::new(4, 8.0, &["q_proj"]),
        0,
    )
    .unwrap_err();
    assert!(err.to_string().contains("target_modules"), "{err}");
}

#[test]
fn dropout_is_written_as_peft_lora_dropout_and_read_back() {
    let mut m = model();
    let linears = m.linear_modules();
    let w = m.weights_mut();
    let cfg = LoraConfig::new(4, 8.0, &["c_attn"]).with_dropout(0.1);
    w.lora = Some(Lora::attach(&mut w.params, &linears, cfg, 1).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let l = m.weights().lora.as_ref().unwrap();
    l.save(m.params(), dir.path()).unwrap();
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join(lora::ADAPTER_CONFIG_FILE)).unwrap(),
    )
    .unwrap();
    assert_eq!(json["lora_dropout"], 0.1);
    let mut m2 = model();
    let linears = m2.linear_modules();
    let w2 = m2.weights_mut();
    let l2 = Lora::load(&mut w2.params, &linears, dir.path()).unwrap();
    assert_eq!(l2.config.lora_dropout, 0.1);
    // Outside training (no key) dropout does nothing: logits equal with and without it.
    w2.lora = Some(l2);
    assert_eq!(logits(&m2), logits(&m));
    // A probability of 1 or more is refused.
    let mut m3 = model();
    let linears = m3.linear_modules();
    let w3 = m3.weights_mut();
    let bad = LoraConfig::new(4, 8.0, &["c_attn"]).with_dropout(1.0);
    let err = Lora::attach(&mut w3.params, &linears, bad, 0).unwrap_err();
    assert!(err.to_string().contains("lora_dropout"), "{err}");
}

/// The dropout mask is part of the replay contract: these answers were computed with the
/// SplitMix64 stream before it moved to cohort-core. Also the same on one thread and on
/// many (a length over one 16,384-element chunk).
#[test]
fn dropout_masks_are_fixed_and_thread_independent() {
    let m = lora::dropout_mask(11, "model.layers.0.self_attn.q_proj", 0.3, 24);
    let pattern: Vec<u8> = m.iter().map(|&x| u8::from(x != 0.0)).collect();
    assert_eq!(
        pattern,
        [
            0, 1, 1, 1, 0, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 0, 1
        ]
    );
    assert!(m.iter().all(|&x| x == 0.0 || x.to_bits() == 1_068_948_334));
    let long = lora::dropout_mask(3, "h.0.attn.c_attn", 0.5, 40_000);
    let stream = SplitMix64::derive(3, "h.0.attn.c_attn");
    for (i, &x) in long.iter().enumerate() {
        assert_eq!(x == 0.0, stream.uniform_at(i as u64) < 0.5, "element {i}");
    }
}
