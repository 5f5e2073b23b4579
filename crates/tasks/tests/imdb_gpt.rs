//! The IMDB task's `gpt` model pretrained on the public reviews and fine-tuned through a LoRA
//! adapter: pretraining lowers the language-model loss of the public reviews, only the
//! adapter and the classification head are federated, the pretrained base is cached, and
//! approximate unlearning moves the forgotten client's loss.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use cohort_fl::unlearning::{Objective, UnlearnSpec};
use cohort_tasks::Learner;
use cohort_tasks::imdb::{ImdbModel, ImdbPooling, ImdbTask, ImdbTaskConfig};

fn small(pretrain_steps: usize, lora_rank: usize) -> ImdbTaskConfig {
    ImdbTaskConfig {
        data: Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/imdb"),
        model: ImdbModel::Gpt,
        train_samples: 300,
        test_samples: 64,
        max_len: 32,
        d_model: 16,
        layers: 1,
        heads: 2,
        pretrain_steps,
        pretrain_batch: 8,
        pretrain_lr: 1e-2,
        lora_rank,
        pooling: ImdbPooling::Mean,
        batch: 8,
        local_steps: 2,
        lr: 3e-3,
        ..ImdbTaskConfig::default()
    }
}

#[test]
fn pretraining_on_the_public_reviews_lowers_their_language_model_loss() {
    let plain = ImdbTask::new(small(0, 0), 2, 1, 3).unwrap();
    let pretrained = ImdbTask::new(small(40, 0), 2, 1, 3).unwrap();
    let (before, after) = (
        plain.public_lm_loss().unwrap().unwrap(),
        pretrained.public_lm_loss().unwrap().unwrap(),
    );
    // A uniform guess over 500 ids is ln 500 = 6.2 nats.
    assert!(after < before - 0.5, "public LM loss {before} -> {after}");
}

#[test]
fn with_lora_only_the_adapter_and_the_head_are_federated_and_the_base_is_cached() {
    let cache = tempfile::tempdir().unwrap();
    let full = ImdbTask::new(small(5, 0), 2, 1, 3).unwrap();
    let task = ImdbTask::new_cached(small(5, 4), 2, 1, 3, Some(cache.path())).unwrap();
    let names: Vec<String> = task
        .layout()
        .tensors()
        .iter()
        .map(|(n, _)| n.clone())
        .collect();
    assert!(names.contains(&"score.weight".to_owned()), "{names:?}");
    assert!(
        names
            .iter()
            .all(|n| n == "score.weight" || n.contains("lora_A") || n.contains("lora_B")),
        "{names:?}"
    );
    // c_attn, attn.c_proj, c_fc and mlp.c_proj of one block, A and B each, and the head.
    assert_eq!(names.len(), 4 * 2 + 1);
    assert!(task.init().len() < full.init().len() / 4);
    // The base is on disk; a second build reads it back and starts from the same parameters.
    let base = task.base_dir().unwrap().to_path_buf();
    assert!(base.join("config.json").is_file(), "{}", base.display());
    let again = ImdbTask::new_cached(small(5, 4), 2, 1, 3, Some(cache.path())).unwrap();
    assert_eq!(again.init(), task.init());
    assert_eq!(
        again.public_lm_loss().unwrap(),
        task.public_lm_loss().unwrap()
    );
    // Local training moves the adapter or the head.
    let g = task.init();
    let d = task.train(0, &g, &mut cohort_core::Rng::new(1)).unwrap();
    assert!(d.iter().all(|x| x.is_finite()) && d.iter().any(|&x| x != 0.0));
}

#[test]
fn pretraining_needs_public_reviews() {
    // All 5000 reviews of train.tsv used: none is left to pretrain on.
    let cfg = ImdbTaskConfig {
        train_samples: 5_000,
        ..small(5, 0)
    };
    let err = ImdbTask::new(cfg, 2, 1, 3).unwrap_err().to_string();
    assert!(err.contains("task.pretrain_steps"), "{err}");
}

#[test]
fn lora_unlearning_raises_the_forgotten_clients_loss_and_the_bag_of_words_refuses() {
    let task = ImdbTask::new(small(5, 4), 2, 1, 3).unwrap();
    let mut g = task.init();
    let d = task.train(0, &g, &mut cohort_core::Rng::new(1)).unwrap();
    g.iter_mut().zip(&d).for_each(|(a, b)| *a += b);
    let before = task.client_samples(0, &g).unwrap().metrics.loss;
    for objective in [Objective::GradientAscent, Objective::Npo { beta: 0.5 }] {
        let spec = UnlearnSpec {
            objective,
            steps: 4,
            lr: 1e-2,
            retain_weight: 0.5,
            batch: 8,
        };
        let after = task.unlearn(0, &g, &spec, 7).unwrap();
        assert_eq!(after.len(), g.len());
        assert_eq!(
            after,
            task.unlearn(0, &g, &spec, 7).unwrap(),
            "deterministic"
        );
        let loss = task.client_samples(0, &after).unwrap().metrics.loss;
        assert!(
            loss > before,
            "{objective:?}: forget loss {before} -> {loss}"
        );
    }
    let bow = ImdbTask::new(
        ImdbTaskConfig {
            model: ImdbModel::Bow,
            pretrain_steps: 0,
            lora_rank: 0,
            pooling: ImdbPooling::Last,
            lr: 5.0,
            ..small(0, 0)
        },
        2,
        1,
        3,
    )
    .unwrap();
    let spec = UnlearnSpec {
        objective: Objective::GradientAscent,
        steps: 1,
        lr: 1e-3,
        retain_weight: 0.0,
        batch: 8,
    };
    let err = bow
        .unlearn(0, &bow.init(), &spec, 7)
        .unwrap_err()
        .to_string();
    assert!(err.contains("--method"), "{err}");
}
