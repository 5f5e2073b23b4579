#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The library refuses nonsense with typed errors naming the field, never a panic: other code
//! than the CLI (the federated runtime, examples, users of the crate) calls these functions
//! with values no parser has checked.

use candle_core::{Device, Tensor};
use cohort_model::generate::{Sampling, generate, generate_uncached};
use cohort_model::train::{TrainConfig, Trainer, evaluate};
use cohort_model::{Error, Gpt, GptConfig, LanguageModel, Lora, LoraConfig};

fn model() -> Gpt {
    Gpt::new(GptConfig::preset("test", 17).unwrap(), 0, &Device::Cpu).unwrap()
}

/// `r` is an `Error::Config` about `field`.
fn config_error<T>(r: cohort_model::Result<T>, field: &str) {
    match r {
        Err(Error::Config { field: f, .. }) => assert_eq!(f, field),
        Err(e) => panic!("{field}: another error: {e}"),
        Ok(_) => panic!("{field}: accepted"),
    }
}

#[test]
fn the_trainer_refuses_zero_sizes_and_non_finite_rates() {
    let m = model();
    for lr in [f64::NAN, f64::INFINITY, -1.0, 0.0] {
        let mut c = TrainConfig::new(2, 8);
        c.optim.lr = lr;
        config_error(Trainer::new(&m, c), "lr");
    }
    for (field, c) in [
        ("batch_size", TrainConfig::new(0, 8)),
        ("seq_len", TrainConfig::new(2, 0)),
        ("seq_len", TrainConfig::new(2, 33)),
    ] {
        config_error(Trainer::new(&m, c), field);
    }
    let mut c = TrainConfig::new(2, 8);
    c.grad_accum = 0;
    config_error(Trainer::new(&m, c), "grad_accum");
    for (field, set) in [
        (
            "beta1",
            (|c: &mut TrainConfig| c.optim.beta1 = 1.0) as fn(&mut TrainConfig),
        ),
        ("beta2", |c| c.optim.beta2 = f64::NAN),
        ("eps", |c| c.optim.eps = 0.0),
        ("weight_decay", |c| c.optim.weight_decay = -0.1),
        ("grad_clip", |c| c.optim.grad_clip = f64::INFINITY),
        ("min_lr", |c| c.optim.min_lr = f64::NAN),
    ] {
        let mut c = TrainConfig::new(2, 8);
        set(&mut c);
        config_error(Trainer::new(&m, c), field);
    }
}

/// Regression (issue 11): `evaluate` with a sequence length of 0 divided by zero
/// (data.rs:63).
#[test]
fn evaluation_refuses_zero_sizes() {
    let m = model();
    let tokens: Vec<u32> = (0..200).map(|i| i % 17).collect();
    config_error(evaluate(&m, &tokens, 4, 0, 8), "seq_len");
    config_error(evaluate(&m, &tokens, 0, 8, 8), "batch");
    config_error(evaluate(&m, &tokens, 4, 8, 0), "max_windows");
    assert!(evaluate(&m, &tokens[..5], 4, 8, 8).is_err());
    assert!(evaluate(&m, &tokens, 4, 8, 8).unwrap().loss.is_finite());
}

#[test]
fn generation_refuses_bad_sampling_and_ids_outside_the_vocabulary_before_any_work() {
    let m = model();
    let ok = Sampling::greedy();
    for (field, s) in [
        (
            "temperature",
            Sampling {
                temperature: f64::NAN,
                ..ok.clone()
            },
        ),
        (
            "temperature",
            Sampling {
                temperature: -1.0,
                ..ok.clone()
            },
        ),
        (
            "temperature",
            Sampling {
                temperature: f64::INFINITY,
                ..ok.clone()
            },
        ),
        (
            "top_p",
            Sampling {
                top_p: 2.0,
                ..ok.clone()
            },
        ),
        (
            "top_p",
            Sampling {
                top_p: -1.0,
                ..ok.clone()
            },
        ),
        (
            "top_p",
            Sampling {
                top_p: f64::NAN,
                ..ok.clone()
            },
        ),
        (
            "top_p",
            Sampling {
                top_p: 0.0,
                ..ok.clone()
            },
        ),
    ] {
        config_error(generate(&m, &[1, 2], 3, &s), field);
        config_error(generate_uncached(&m, &[1, 2], 3, &s), field);
    }
    for g in [generate, generate_uncached] {
        assert!(matches!(g(&m, &[1, 17], 3, &ok), Err(Error::Tokenizer(_))));
        assert!(matches!(g(&m, &[], 3, &ok), Err(Error::Data(_))));
        assert_eq!(g(&m, &[1, 2], 0, &ok).unwrap(), [1, 2]);
    }
}

#[test]
fn lora_refuses_a_non_finite_alpha_and_a_rank_beyond_the_layers() {
    let mut m = model();
    let linears = m.linear_modules();
    let w = m.weights_mut();
    for alpha in [f64::NAN, f64::INFINITY, 0.0, -1.0] {
        let c = LoraConfig::new(2, alpha, &["all-linear"]);
        config_error(Lora::attach(&mut w.params, &linears, c, 0), "lora_alpha");
    }
    let c = LoraConfig::new(2, 4.0, &["c_fc"]).with_dropout(f64::NAN);
    config_error(Lora::attach(&mut w.params, &linears, c, 0), "lora_dropout");
    // c_fc is 32 x 128: rank 33 adds nothing a rank-32 adapter could not do.
    let c = LoraConfig::new(33, 4.0, &["c_fc"]);
    config_error(Lora::attach(&mut w.params, &linears, c, 0), "r");
    let c = LoraConfig::new(32, 4.0, &["c_fc"]);
    assert!(Lora::attach(&mut w.params, &linears, c, 0).is_ok());
}

#[test]
fn gpt_configs_refuse_bad_epsilons_and_unimplemented_fields() {
    for (field, set) in [
        (
            "layer_norm_epsilon",
            (|c: &mut GptConfig| c.layer_norm_epsilon = -1.0) as fn(&mut GptConfig),
        ),
        ("layer_norm_epsilon", |c| c.layer_norm_epsilon = f64::NAN),
        ("initializer_range", |c| c.initializer_range = f64::INFINITY),
        ("activation_function", |c| {
            c.activation_function = "gelu".into()
        }),
        ("n_inner", |c| c.n_inner = Some(0)),
        ("scale_attn_weights", |c| {
            c.extra.insert("scale_attn_weights".into(), false.into());
        }),
    ] {
        let mut c = GptConfig::preset("test", 17).unwrap();
        set(&mut c);
        config_error(Gpt::new(c, 0, &Device::Cpu), field);
    }
    // A saved model with fewer layers in its config than in its weights is refused.
    let m = model();
    let dir = tempfile::tempdir().unwrap();
    m.save_dir(dir.path()).unwrap();
    let p = dir.path().join("config.json");
    let cfg = std::fs::read_to_string(&p)
        .unwrap()
        .replace("\"n_layer\": 2", "\"n_layer\": 1");
    std::fs::write(&p, cfg).unwrap();
    for r in [
        Gpt::load(dir.path(), &Device::Cpu).map(|_| ()),
        Gpt::load_mapped(dir.path(), &Device::Cpu).map(|_| ()),
    ] {
        match r {
            Err(Error::UnusedTensors { names, count, .. }) => {
                assert_eq!(count, 12);
                assert!(
                    names.iter().all(|n| n.starts_with("transformer.h.1.")),
                    "{names:?}"
                );
            }
            other => panic!("{other:?}"),
        }
    }
    let x = Tensor::new(&[[1u32, 2]], &Device::Cpu).unwrap();
    assert!(m.forward(&x).is_ok());
}
