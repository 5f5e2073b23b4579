//! Whole federated runs of the real tasks on the embedded ledger: LoRA fine-tuning of a small
//! GPT on Tiny Shakespeare by role, and IMDB sentiment with label flippers and a backdoor.
//! Tiny settings so that a debug build runs them in seconds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use cohort_core::Identity;
use cohort_fl::coordinator::CoordinatorConfig;
use cohort_fl::{AttackKind, FlError};
use cohort_ledger::{EmbeddedLedger, LedgerConfig};
use cohort_node::runtime::{
    AggregationConfig, AttackConfig, IncentiveConfig, RunConfig, RunSummary, StrategyConfig, run,
};
use cohort_tasks::imdb::ImdbTaskConfig;
use cohort_tasks::lm::LmTaskConfig;
use cohort_tasks::{Learner, TaskConfig};

/// The task of `cfg`, checked first as a run checks it.
fn build(
    cfg: &RunConfig,
    base: &Path,
    cache: &Path,
) -> Result<Box<dyn Learner + Send + Sync>, FlError> {
    cohort_tasks::build(&cfg.clone().check()?, base, cache)
}

fn shared(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data")
        .join(rel)
}

fn lm_config(seed: u64) -> RunConfig {
    RunConfig {
        seed,
        clients: 4,
        validators: 2,
        task: TaskConfig::Lm(LmTaskConfig {
            corpus: shared("tinyshakespeare/input.txt"),
            pretrain_steps: 150,
            local_steps: 8,
            eval_windows: 16,
            ..LmTaskConfig::default()
        }),
        coordinator: CoordinatorConfig {
            rounds: 2,
            clients_per_round: 4,
            ..CoordinatorConfig::default()
        },
        aggregation: AggregationConfig {
            strategy: StrategyConfig::FedAvg,
            ..AggregationConfig::default()
        },
        attack: None,
        unlearning: Default::default(),
        compression: Default::default(),
        pipeline: None,
        report: Default::default(),
        profiles: Vec::new(),
        market: None,
        governance: None,
        incentives: IncentiveConfig::default(),
    }
}

fn imdb_config(attack: Option<AttackKind>) -> RunConfig {
    RunConfig {
        seed: 5,
        clients: 10,
        validators: 3,
        task: TaskConfig::Imdb(ImdbTaskConfig {
            data: shared("imdb"),
            ..ImdbTaskConfig::default()
        }),
        coordinator: CoordinatorConfig {
            rounds: 4,
            clients_per_round: 10,
            ..CoordinatorConfig::default()
        },
        aggregation: AggregationConfig::default(),
        attack: attack.map(|attack| AttackConfig {
            fraction: 0.3,
            attack,
            colluding_validators: 0,
            sybil_stake: None,
        }),
        unlearning: Default::default(),
        compression: Default::default(),
        pipeline: None,
        report: Default::default(),
        profiles: Vec::new(),
        market: None,
        governance: None,
        incentives: IncentiveConfig {
            accept_threshold: -0.04,
            ..IncentiveConfig::default()
        },
    }
}

/// Runs `cfg` in a fresh directory; returns the summary and the directory.
fn go(cfg: &RunConfig) -> (RunSummary, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let task = build(cfg, Path::new("."), dir.path()).unwrap();
    let cfg = &cfg.clone().check().unwrap();
    let ledger = EmbeddedLedger::create(
        dir.path().join("ledger"),
        LedgerConfig::new(
            "cohort.local/fl-task-test",
            Identity::from_seed(cfg.seed, "operator"),
        ),
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("blobs")).unwrap();
    let (p, summary) = run(cfg, ledger, &*task, Some(&dir.path().join("blobs")), |_| {}).unwrap();
    p.into_backend().verify().unwrap();
    (summary, dir)
}

fn tokens(v: &cohort_core::U256) -> f64 {
    cohort_core::to_tokens_f64(*v)
}

/// Whether `name` was slashed (rewarded) in round `r`.
#[allow(dead_code)]
fn slashed(r: &cohort_node::runtime::RoundSummary, name: &str) -> bool {
    r.payouts.get(name).is_some_and(|p| !p.slash.is_zero())
}

#[allow(dead_code)]
fn rewarded(r: &cohort_node::runtime::RoundSummary, name: &str) -> bool {
    r.payouts.get(name).is_some_and(|p| !p.reward.is_zero())
}

#[test]
fn lm_by_role_accepts_honest_adapters_lowers_test_loss_and_replays() {
    let cfg = lm_config(3);
    let (a, dir_a) = go(&cfg);
    let curve: Vec<f64> = a.rounds.iter().map(|r| r.test.loss).collect();
    for r in &a.rounds {
        assert_eq!(r.accepted.len(), 4, "round {}: {:?}", r.round, r.consensus);
        assert!(r.rejected.is_empty());
        let ppl = r.test.perplexity.unwrap();
        assert!((ppl - r.test.loss.exp()).abs() < 1e-9);
    }
    assert!(
        curve.last().unwrap() < &a.initial.loss,
        "test loss {} -> {curve:?}",
        a.initial.loss
    );
    // Update blobs are safetensors with PEFT's adapter names.
    let store = cohort_blob::LocalDir::open_existing(dir_a.path().join("blobs")).unwrap();
    let first = cohort_blob::BlobStore::list(&store).unwrap()[0];
    let bytes = cohort_blob::BlobStore::get(&store, &first).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let names: Vec<&String> = header.as_object().unwrap().keys().collect();
    assert!(
        names.contains(&&"base_model.model.transformer.h.0.attn.c_attn.lora_A.weight".to_string()),
        "{names:?}"
    );
    assert_eq!(header["__metadata__"]["format"], "pt");
    // The pretrained base is cached under a content-addressed name.
    let bases: Vec<String> = std::fs::read_dir(dir_a.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("base-"))
        .collect();
    assert_eq!(bases.len(), 1, "{bases:?}");
    assert!(dir_a.path().join(&bases[0]).join("config.json").exists());
    // Same seed, fresh directory, the cached base given as `base`: the same ledger root
    // (pretraining itself replays bit for bit: see the next test).
    let mut again = cfg.clone();
    if let TaskConfig::Lm(t) = &mut again.task {
        t.base = Some(dir_a.path().join(&bases[0]));
    }
    let (b, _dir_b) = go(&again);
    assert_eq!(a.ledger_root, b.ledger_root);
}

#[test]
fn imdb_label_flippers_are_rejected_slashed_and_the_model_still_learns() {
    let cfg = imdb_config(Some(AttackKind::LabelFlip));
    let (s, _dir) = go(&cfg);
    let attackers: Vec<u32> = (0..10).filter(|&k| cfg.is_attacker(k)).collect();
    assert_eq!(attackers, vec![7, 8, 9]);
    for r in &s.rounds {
        for k in &attackers {
            assert!(
                r.rejected.contains(k),
                "round {}: {:?}",
                r.round,
                r.consensus
            );
        }
        assert!(
            r.accepted.iter().all(|k| !attackers.contains(k)),
            "round {}",
            r.round
        );
        assert!(
            r.accepted.len() >= 5,
            "round {}: {:?}",
            r.round,
            r.consensus
        );
    }
    for k in 0..10u32 {
        let h = tokens(&s.final_holdings[&format!("client-{k}")]);
        if attackers.contains(&k) {
            assert!(h < 10_000.0, "attacker {k}: {h}");
        } else {
            assert!(h >= 10_000.0, "honest {k}: {h}");
        }
    }
    let acc = s.rounds.last().unwrap().test.accuracy.unwrap();
    assert!(acc > 0.7, "final accuracy {acc}");
    assert!(s.initial.accuracy.unwrap() < 0.6);
}

#[test]
fn imdb_backdoor_success_rate_is_reported_and_the_defence_keeps_it_low() {
    let backdoor = AttackKind::Backdoor {
        trigger: vec![497, 498, 499],
        target: 1,
        poison_fraction: 0.5,
    };
    let defended = imdb_config(Some(backdoor.clone()));
    let mut undefended = defended.clone();
    undefended.aggregation = AggregationConfig {
        strategy: StrategyConfig::FedAvg,
        ignore_verdicts: true,
        clip_to_median: false,
        ..AggregationConfig::default()
    };
    let (d, _d) = go(&defended);
    let (u, _u) = go(&undefended);
    let rate = |s: &RunSummary| s.rounds.last().unwrap().test.backdoor_success_rate.unwrap();
    for s in [&d, &u] {
        for r in &s.rounds {
            let b = r.test.backdoor_success_rate.unwrap();
            assert!((0.0..=1.0).contains(&b));
        }
    }
    assert!(
        rate(&u) > rate(&d) + 0.1,
        "undefended {} vs defended {}",
        rate(&u),
        rate(&d)
    );
}

/// Regression (scaled replacement on IMDB, docs/fl.md): 30% of the clients boost an honestly
/// trained delta ten-fold, and the validators accept the boosted updates that lower their loss
/// most. With the default (median clipping, the clipped update's score scaled with it, then
/// score weighting) the run ends within 1 accuracy point of the clean run; score weighting
/// without clipping ended 2.7 points below it.
#[test]
fn imdb_scaled_replacement_stays_within_a_point_of_the_clean_run() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/imdb-attack.toml");
    let mut cfg: RunConfig = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    if let TaskConfig::Imdb(t) = &mut cfg.task {
        t.data = shared("imdb");
    }
    assert!(
        cfg.aggregation.clip_to_median,
        "median clipping is the default"
    );
    cfg.attack.as_mut().unwrap().attack = AttackKind::ScaledReplacement { factor: 10.0 };
    let mut clean = cfg.clone();
    clean.attack.as_mut().unwrap().fraction = 0.0;
    let mut unclipped = cfg.clone();
    unclipped.aggregation.clip_to_median = false;
    let acc = |s: &RunSummary| s.rounds.last().unwrap().test.accuracy.unwrap();
    let (c, _c) = go(&clean);
    let (d, _d) = go(&cfg);
    let (u, _u) = go(&unclipped);
    // Some boosted updates are accepted: the fix is in the aggregation, not the verdicts.
    let attackers: Vec<u32> = (14..20).collect();
    assert!(
        d.rounds
            .iter()
            .any(|r| r.accepted.iter().any(|k| attackers.contains(k))),
        "no boosted update was accepted"
    );
    assert!(
        acc(&c) - acc(&d) <= 0.01,
        "defended {} vs clean {}",
        acc(&d),
        acc(&c)
    );
    assert!(
        acc(&c) - acc(&u) > 0.02,
        "unclipped {} vs clean {}: the attack should be visible without clipping",
        acc(&u),
        acc(&c)
    );
}

#[test]
fn data_attacks_and_bad_task_settings_are_refused_with_the_field_named() {
    let mut cfg = lm_config(1);
    cfg.attack = Some(AttackConfig {
        fraction: 0.25,
        attack: AttackKind::LabelFlip,
        colluding_validators: 0,
        sybil_stake: None,
    });
    let dir = tempfile::tempdir().unwrap();
    let err = |cfg: &RunConfig| match build(cfg, Path::new("."), dir.path()) {
        Ok(_) => panic!("accepted a bad config"),
        Err(e) => e,
    };
    // Checked before any pretraining: the LM task has no labels to flip.
    assert!(matches!(
        err(&cfg),
        FlError::InvalidConfig {
            what: "attack.attack",
            ..
        }
    ));
    let mut c = lm_config(1);
    if let TaskConfig::Lm(t) = &mut c.task {
        t.min_lines = 100_000;
    }
    assert!(matches!(
        err(&c),
        FlError::InvalidConfig {
            what: "task.min_lines",
            ..
        }
    ));
    let mut c = lm_config(1);
    if let TaskConfig::Lm(t) = &mut c.task {
        t.corpus = "/nonexistent/input.txt".into();
    }
    assert!(matches!(
        err(&c),
        FlError::InvalidConfig {
            what: "task.corpus",
            ..
        }
    ));
    let mut c = imdb_config(None);
    if let TaskConfig::Imdb(t) = &mut c.task {
        t.data = "/nonexistent".into();
    }
    assert!(matches!(
        err(&c),
        FlError::InvalidConfig {
            what: "task.data",
            ..
        }
    ));
    let c = imdb_config(Some(AttackKind::Backdoor {
        trigger: vec![5_000],
        target: 1,
        poison_fraction: 0.5,
    }));
    assert!(matches!(
        err(&c),
        FlError::InvalidConfig {
            what: "attack.attack.trigger",
            ..
        }
    ));
    let mut c = lm_config(1);
    if let TaskConfig::Lm(t) = &mut c.task {
        t.lora_rank = 0;
    }
    assert!(matches!(
        err(&c),
        FlError::InvalidConfig {
            what: "task.lora_rank",
            ..
        }
    ));
}

#[test]
fn imdb_bag_of_words_learns_from_one_client_and_prox_shrinks_the_step() {
    let cfg = imdb_config(None);
    let dir = tempfile::tempdir().unwrap();
    let task = build(&cfg, Path::new("."), dir.path()).unwrap();
    let g = task.init();
    let mut rng = cohort_core::Rng::new(1);
    let d = task.train(0, &g, &mut rng).unwrap();
    let after: Vec<f32> = g.iter().zip(&d).map(|(a, b)| a + b).collect();
    assert!(task.holdout_loss(0, &after).unwrap() < task.holdout_loss(0, &g).unwrap());
    let mut prox = cfg.clone();
    if let TaskConfig::Imdb(t) = &mut prox.task {
        t.prox_mu = 0.1;
    }
    let task_p = build(&prox, Path::new("."), dir.path()).unwrap();
    let dp = task_p.train(0, &g, &mut cohort_core::Rng::new(1)).unwrap();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!(norm(&dp) < norm(&d), "{} vs {}", norm(&dp), norm(&d));
}

#[test]
fn fedprox_pulls_linear_and_lm_local_training_towards_the_global_model() {
    use cohort_tasks::{LinearTask, LinearTaskConfig};
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let train = |mu: f64| {
        let t = LinearTask::new(
            LinearTaskConfig {
                prox_mu: mu,
                ..LinearTaskConfig::default()
            },
            2,
            1,
            4,
        );
        let g = vec![0.3; 32];
        t.train(0, &g, &mut cohort_core::Rng::new(2)).unwrap()
    };
    let (plain, prox) = (train(0.0), train(2.0));
    assert!(
        norm(&prox) < 0.9 * norm(&plain),
        "{} vs {}",
        norm(&prox),
        norm(&plain)
    );
    assert_eq!(train(0.0), plain, "deterministic");

    // The LoRA task: a strong proximal term keeps the local adapter closer to the global one.
    let dir = tempfile::tempdir().unwrap();
    let lm = |mu: f64| {
        let mut cfg = lm_config(2);
        if let TaskConfig::Lm(t) = &mut cfg.task {
            t.pretrain_steps = 20;
            t.local_steps = 6;
            t.lr = 2e-2;
            t.prox_mu = mu;
        }
        build(&cfg, Path::new("."), dir.path()).unwrap()
    };
    let (t0, t1) = (lm(0.0), lm(50.0));
    let g = t0.init();
    let d0 = t0.train(0, &g, &mut cohort_core::Rng::new(3)).unwrap();
    let d1 = t1.train(0, &g, &mut cohort_core::Rng::new(3)).unwrap();
    assert!(norm(&d1) < norm(&d0), "{} vs {}", norm(&d1), norm(&d0));
}

#[test]
fn a_cached_base_directory_can_be_given_as_the_lm_base() {
    let first = tempfile::tempdir().unwrap();
    let mut cfg = lm_config(4);
    if let TaskConfig::Lm(t) = &mut cfg.task {
        t.pretrain_steps = 20;
    }
    let a = build(&cfg, Path::new("."), first.path()).unwrap();
    let base = std::fs::read_dir(first.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("base-")
        })
        .unwrap();
    // The directory holds a Hugging Face-style model and its tokenizer.
    for f in ["config.json", "model.safetensors", "cohort_tokenizer.json"] {
        assert!(base.join(f).exists(), "{f}");
    }
    let second = tempfile::tempdir().unwrap();
    if let TaskConfig::Lm(t) = &mut cfg.task {
        t.base = Some(base.clone());
    }
    let b = build(&cfg, Path::new("."), second.path()).unwrap();
    assert_eq!(
        std::fs::read_dir(second.path()).unwrap().count(),
        0,
        "nothing pretrained"
    );
    // Pretraining again elsewhere gives the same directory name and the same weights, bit
    // for bit.
    let third = tempfile::tempdir().unwrap();
    let mut fresh = cfg.clone();
    if let TaskConfig::Lm(t) = &mut fresh.task {
        t.base = None;
    }
    build(&fresh, Path::new("."), third.path()).unwrap();
    let again = third.path().join(base.file_name().unwrap());
    assert_eq!(
        std::fs::read(again.join("model.safetensors")).unwrap(),
        std::fs::read(base.join("model.safetensors")).unwrap()
    );
    let g = a.init();
    assert_eq!(g, b.init());
    assert_eq!(a.evaluate(&g).unwrap(), b.evaluate(&g).unwrap());
    // A base that does not exist is a config error naming the field.
    if let TaskConfig::Lm(t) = &mut cfg.task {
        t.base = Some(second.path().join("missing"));
    }
    match build(&cfg, Path::new("."), second.path()) {
        Err(FlError::InvalidConfig {
            what: "task.base", ..
        }) => {}
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("accepted a missing base"),
    }
}

#[test]
fn every_example_config_parses_validates_and_finds_its_data() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_none_or(|x| x != "toml") {
            continue;
        }
        let cfg: RunConfig = toml::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        cfg.clone().check().unwrap();
        match &cfg.task {
            TaskConfig::Lm(t) => assert!(t.clone().resolve(&dir).corpus.exists()),
            TaskConfig::Imdb(t) => assert!(t.clone().resolve(&dir).data.join("train.tsv").exists()),
            TaskConfig::Linear(_) => {}
        }
        n += 1;
    }
    assert!(n >= 6, "{n} examples");
}

#[test]
fn the_imdb_gpt_classifier_trains_and_names_its_tensors() {
    use cohort_tasks::imdb::{ImdbModel, ImdbTask};
    let cfg = ImdbTaskConfig {
        data: shared("imdb"),
        model: ImdbModel::Gpt,
        train_samples: 300,
        test_samples: 64,
        local_steps: 3,
        lr: 3e-3,
        ..ImdbTaskConfig::default()
    };
    let task = ImdbTask::new(cfg, 4, 2, 9).unwrap();
    let g = task.init();
    assert_eq!(g.len(), task.layout().len());
    let d = task.train(0, &g, &mut cohort_core::Rng::new(1)).unwrap();
    assert!(d.iter().all(|x| x.is_finite()) && d.iter().any(|&x| x != 0.0));
    let after: Vec<f32> = g.iter().zip(&d).map(|(a, b)| a + b).collect();
    let m = task.evaluate(&after).unwrap();
    assert!(m.loss.is_finite() && m.accuracy.is_some());
    // The update reaches the classifier (the holdout loss moves), and the blob names the
    // transformer's tensors and the classification head.
    assert_ne!(
        task.holdout_loss(0, &after).unwrap(),
        task.holdout_loss(0, &g).unwrap()
    );
    let blob = task.layout().encode(&after);
    let n = u64::from_le_bytes(blob[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8_lossy(&blob[8..8 + n]).into_owned();
    assert!(header.contains("\"score.weight\""), "{header}");
    assert!(header.contains("transformer.h.0.attn.c_attn.weight"));
}

#[test]
fn lm_roles_can_be_sharded_into_more_clients_than_there_are_roles() {
    let dir = tempfile::tempdir().unwrap();
    let task = |clients: usize, per_role: usize| {
        let mut c = match lm_config(6).task {
            TaskConfig::Lm(t) => t,
            _ => unreachable!(),
        };
        c.pretrain_steps = 1;
        c.clients_per_role = per_role;
        cohort_tasks::lm::LmTask::new(c, clients, 2, 6, dir.path()).unwrap()
    };
    let whole = task(3, 1);
    let sharded = task(7, 3);
    let roles = whole.roles();
    let names: Vec<String> = sharded.roles().iter().map(|s| s.to_string()).collect();
    let expect: Vec<String> = (0..7)
        .map(|k| format!("{}#{}", roles[k / 3], k % 3))
        .collect();
    assert_eq!(names, expect);
    // The shards of a role hold exactly its training text.
    for r in 0..2u32 {
        let shards: u64 = (0..3).map(|s| sharded.num_samples(3 * r + s)).sum();
        assert_eq!(shards, whole.num_samples(r), "role {}", roles[r as usize]);
    }
    let mut c = match lm_config(6).task {
        TaskConfig::Lm(t) => t,
        _ => unreachable!(),
    };
    c.clients_per_role = 0;
    let err = cohort_tasks::lm::LmTask::new(c.clone(), 4, 2, 6, dir.path()).unwrap_err();
    assert!(err.to_string().contains("clients_per_role"), "{err}");
    c.clients_per_role = 1;
    let err = cohort_tasks::lm::LmTask::new(c, 1_000, 2, 6, dir.path()).unwrap_err();
    assert!(
        err.to_string().contains("raise task.clients_per_role"),
        "{err}"
    );
}

/// `task.lora_dropout`: local training draws dropout masks on the adapter's input, so the
/// update differs from one without dropout, and replays from the same seed; approximate
/// unlearning trains through it too. At 0 nothing changes.
#[test]
fn lora_dropout_changes_local_training_and_replays() {
    let dir = tempfile::tempdir().unwrap();
    let lm = |p: f64| {
        let mut cfg = lm_config(2);
        if let TaskConfig::Lm(t) = &mut cfg.task {
            t.pretrain_steps = 20;
            t.local_steps = 4;
            t.lora_dropout = p;
        }
        build(&cfg, Path::new("."), dir.path()).unwrap()
    };
    let (t0, t1) = (lm(0.0), lm(0.3));
    let g = t0.init();
    let train = |t: &dyn Learner| t.train(0, &g, &mut cohort_core::Rng::new(3)).unwrap();
    let (d0, d1) = (train(&*t0), train(&*t1));
    assert_ne!(d0, d1, "dropout changed nothing");
    assert_eq!(train(&*t1), d1, "deterministic with dropout");
    assert_eq!(train(&*lm(0.0)), d0, "no dropout: as before");
    let spec = cohort_fl::unlearning::UnlearnSpec {
        objective: cohort_fl::unlearning::Objective::Npo { beta: 0.1 },
        steps: 2,
        lr: 1e-3,
        retain_weight: 1.0,
        batch: 4,
    };
    let u = t1.unlearn(0, &g, &spec, 7).unwrap();
    assert_ne!(u, g);
    assert_eq!(t1.unlearn(0, &g, &spec, 7).unwrap(), u, "deterministic");
}
