//! Whole federated runs on the embedded ledger: scenarios of `n` clients, `f` attackers,
//! `R` rounds, with assertions on stakes, acceptance and quality.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cohort_core::Identity;
use cohort_fl::UpdateAttack;
use cohort_fl::coordinator::CoordinatorConfig;
use cohort_ledger::{EmbeddedLedger, LedgerConfig};
use cohort_node::runtime::{
    AggregationConfig, AttackConfig, RunConfig, RunSummary, StrategyConfig, run,
};
use cohort_tasks::{LinearTask, LinearTaskConfig};

fn config(attack: Option<AttackConfig>, strategy: StrategyConfig) -> RunConfig {
    RunConfig {
        seed: 11,
        clients: 10,
        validators: 3,
        task: Default::default(),
        coordinator: CoordinatorConfig {
            rounds: 4,
            clients_per_round: 10,
            ..CoordinatorConfig::default()
        },
        aggregation: AggregationConfig {
            strategy,
            ..AggregationConfig::default()
        },
        attack,
        unlearning: Default::default(),
        compression: Default::default(),
        pipeline: None,
        report: Default::default(),
        profiles: Vec::new(),
        market: None,
        governance: None,
        incentives: Default::default(),
    }
}

fn go(cfg: &RunConfig) -> (RunSummary, tempfile::TempDir) {
    let cfg = &cfg.clone().check().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ledger = EmbeddedLedger::create(
        dir.path().join("ledger"),
        LedgerConfig::new(
            "cohort.local/fl-test",
            Identity::from_seed(cfg.seed, "operator"),
        ),
    )
    .unwrap();
    let task = LinearTask::new(
        LinearTaskConfig::default(),
        cfg.clients,
        cfg.validators,
        cfg.seed,
    );
    std::fs::create_dir_all(dir.path().join("blobs")).unwrap();
    let (p, summary) = run(cfg, ledger, &task, Some(&dir.path().join("blobs")), |_| {}).unwrap();
    p.into_backend().verify().unwrap();
    (summary, dir)
}

fn tokens(v: &cohort_core::U256) -> f64 {
    cohort_core::to_tokens_f64(*v)
}

/// A summary as JSON without the rounds' wall seconds (not events: a summary folded from the
/// events has them at zero).
fn without_seconds(s: &RunSummary) -> serde_json::Value {
    let mut v = serde_json::to_value(s).unwrap();
    for r in v["rounds"].as_array_mut().unwrap() {
        r.as_object_mut().unwrap().remove("seconds");
    }
    v
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

fn sign_flip(fraction: f64) -> Option<AttackConfig> {
    Some(AttackConfig {
        fraction,
        attack: UpdateAttack::SignFlip { scale: 3.0 }.into(),
        colluding_validators: 0,
        sybil_stake: None,
    })
}

#[test]
fn clean_run_learns_pays_everyone_and_replays() {
    let cfg = config(None, StrategyConfig::ScoreWeighted);
    let (a, _d1) = go(&cfg);
    let last = a.rounds.last().unwrap();
    assert!(
        last.test.loss < 0.2 * a.initial.loss,
        "{} -> {}",
        a.initial.loss,
        last.test.loss
    );
    assert!(a.rounds[0].rejected.is_empty());
    for k in 0..10 {
        let h = tokens(&a.final_holdings[&format!("client-{k}")]);
        assert!(h > 10_000.0, "client-{k} holds {h}");
    }
    let (b, _d2) = go(&cfg);
    assert_eq!(a.ledger_root, b.ledger_root, "same seed, same ledger");
    let mut other = cfg.clone();
    other.seed = 12;
    assert_ne!(go(&other).0.ledger_root, a.ledger_root);
}

#[test]
fn sign_flippers_are_rejected_slashed_every_round_and_do_no_harm() {
    let long = |mut c: RunConfig| {
        c.coordinator.rounds = 8;
        c
    };
    let clean = go(&long(config(None, StrategyConfig::ScoreWeighted))).0;
    let attacked = go(&long(config(sign_flip(0.3), StrategyConfig::ScoreWeighted))).0;
    let undefended = {
        let mut c = long(config(sign_flip(0.3), StrategyConfig::FedAvg));
        c.aggregation.ignore_verdicts = true;
        c.aggregation.clip_to_median = false;
        go(&c).0
    };
    for r in &attacked.rounds {
        assert_eq!(
            r.rejected,
            vec![7, 8, 9],
            "round {}: {:?}",
            r.round,
            r.consensus
        );
        for k in 7..10 {
            assert!(
                slashed(r, &format!("client-{k}")),
                "round {}: {:?}",
                r.round,
                r.payouts
            );
            assert!(!rewarded(r, &format!("client-{k}")));
        }
    }
    let q = |s: &RunSummary| s.rounds.last().unwrap().test.loss;
    let curve = |s: &RunSummary| s.rounds.iter().map(|r| r.test.loss).collect::<Vec<_>>();
    eprintln!(
        "clean {:?}\nattacked {:?}\nundefended {:?}",
        curve(&clean),
        curve(&attacked),
        curve(&undefended)
    );
    // The defended run learns from 7 clients instead of 10, so it trails the clean run a
    // little; it still gains more than 99% of the clean run's loss reduction.
    let gain = |s: &RunSummary| s.initial.loss - q(s);
    assert!(
        gain(&attacked) >= 0.99 * gain(&clean),
        "defended {} vs clean {}",
        q(&attacked),
        q(&clean)
    );
    assert!(
        q(&undefended) > 2.0 * q(&clean),
        "the attack is real: {} vs {}",
        q(&undefended),
        q(&clean)
    );
    for k in 0..7 {
        assert!(tokens(&attacked.final_holdings[&format!("client-{k}")]) > 10_000.0);
    }
    for k in 7..10 {
        assert!(tokens(&attacked.final_holdings[&format!("client-{k}")]) < 10_000.0);
    }
}

#[test]
fn free_riders_earn_nothing() {
    let cfg = config(
        Some(AttackConfig {
            fraction: 0.2,
            attack: UpdateAttack::FreeRider {
                fake_samples: 10_000,
            }
            .into(),
            colluding_validators: 0,
            sybil_stake: None,
        }),
        StrategyConfig::ScoreWeighted,
    );
    let s = go(&cfg).0;
    for r in &s.rounds {
        for k in 8..10 {
            assert!(
                !rewarded(r, &format!("client-{k}")),
                "round {}: {:?}",
                r.round,
                r.payouts
            );
        }
    }
    for k in 8..10 {
        assert!(tokens(&s.final_holdings[&format!("client-{k}")]) <= 10_000.0);
    }
}

/// A free-rider claiming more samples than its dataset was committed with is refused by the
/// ledger at submission (SamplesAboveDataset): under FedAvg, which weighs by the claim, it
/// never enters a round, and the run's model is the clean run's.
#[test]
fn free_riders_cannot_claim_samples_they_did_not_commit() {
    let cfg = config(
        Some(AttackConfig {
            fraction: 0.2,
            attack: UpdateAttack::FreeRider {
                fake_samples: 10_000,
            }
            .into(),
            colluding_validators: 0,
            sybil_stake: None,
        }),
        StrategyConfig::FedAvg,
    );
    let s = go(&cfg).0;
    for r in &s.rounds {
        for k in [8, 9] {
            assert!(
                !r.accepted.contains(&k) && !r.rejected.contains(&k),
                "round {}: client {k} entered",
                r.round
            );
        }
    }
}

#[test]
fn a_colluding_validator_is_outvoted_and_earns_least() {
    let mut cfg = config(sign_flip(0.2), StrategyConfig::Median);
    cfg.attack.as_mut().unwrap().colluding_validators = 1;
    let s = go(&cfg).0;
    for r in &s.rounds {
        assert_eq!(r.rejected, vec![8, 9], "round {}", r.round);
    }
    let v = |i: usize| tokens(&s.final_holdings[&format!("validator-{i}")]);
    assert!(
        v(0) < v(1) && v(0) < v(2),
        "colluder {} vs {} {}",
        v(0),
        v(1),
        v(2)
    );
}

#[test]
fn bad_configs_are_refused_with_the_field_named() {
    let mut c = config(None, StrategyConfig::FedAvg);
    c.validators = 0;
    assert!(
        c.clone()
            .check()
            .unwrap_err()
            .to_string()
            .contains("validators")
    );
    let mut c = config(sign_flip(1.5), StrategyConfig::FedAvg);
    assert!(
        c.clone()
            .check()
            .unwrap_err()
            .to_string()
            .contains("fraction")
    );
    c.attack = None;
    c.incentives.client_stake = 1_000_000;
    assert!(
        c.check()
            .unwrap_err()
            .to_string()
            .contains("incentives.client_stake")
    );
}

#[test]
fn sybils_with_small_stakes_send_one_update_and_are_priced_out_by_the_minimum_stake() {
    let mut attack = sign_flip(0.4).unwrap();
    attack.sybil_stake = Some(120);
    let cfg = config(Some(attack), StrategyConfig::ScoreWeighted);
    let clean = go(&config(None, StrategyConfig::ScoreWeighted)).0;
    let (s, dir) = go(&cfg);
    let sybils = [6u32, 7, 8, 9];
    // Round 1: every Sybil submits the same update (one blob), all are rejected and slashed.
    assert_eq!(s.rounds.len(), 4, "refused Sybils must not end the run");
    let first = &s.rounds[0];
    for k in sybils {
        assert!(first.rejected.contains(&k), "{:?}", first.consensus);
        assert!(slashed(first, &format!("client-{k}")));
    }
    let scores: Vec<f64> = sybils.iter().map(|k| first.consensus[k]).collect();
    assert!(scores.windows(2).all(|w| w[0] == w[1]), "{scores:?}");
    // Blobs: one per distinct update, so the 4 Sybils add one file per round, not four.
    let store = cohort_blob::LocalDir::open_existing(dir.path().join("blobs")).unwrap();
    let blobs = cohort_blob::BlobStore::list(&store).unwrap().len();
    let honest_updates: usize = s.rounds.iter().map(|r| r.accepted.len()).sum();
    // Every client is sampled every round: per round the honest updates, one Sybil update
    // (written even when the protocol refuses it) and the new global model; and the initial
    // global model.
    assert_eq!(blobs, honest_updates + 2 * s.rounds.len() + 1);
    assert_eq!(honest_updates, 6 * s.rounds.len());
    // 10% of 120 per slash: after two rejections the stake (97.2) is below the protocol's
    // minimum of 100 and the Sybils can no longer submit.
    for r in &s.rounds[2..] {
        assert!(
            r.submitted.iter().all(|k| !sybils.contains(k)),
            "round {}: {:?}",
            r.round,
            r.submitted
        );
    }
    for k in sybils {
        let h = tokens(&s.final_holdings[&format!("client-{k}")]);
        assert!(h < 10_000.0 && h > 9_900.0, "sybil {k}: {h}");
    }
    let q = |s: &RunSummary| s.rounds.last().unwrap().test.loss;
    assert!(
        s.initial.loss - q(&s) >= 0.95 * (clean.initial.loss - q(&clean)),
        "{} vs clean {}",
        q(&s),
        q(&clean)
    );
    let mut bad = cfg.clone();
    bad.attack.as_mut().unwrap().sybil_stake = Some(0);
    assert!(bad.check().unwrap_err().to_string().contains("sybil_stake"));
}

// ---------------------------------------------------------------------------------------
// Issue 11: runs that stop part-way resume; a non-finite model or a diverging honest client
// stops the run instead of punishing clients.

use std::cell::Cell;

use cohort_core::{Hash32, Rng};
use cohort_fl::events::RunEvent;
use cohort_fl::{FlError, ValidConfig};
use cohort_ledger::{LedgerBackend, SyncPolicy};
use cohort_node::resume;
use cohort_node::runtime::{RunError, RunOptions, run_in_process};
use cohort_tasks::{Learner, Metrics};

/// The ledger `go` uses, in `dir`, flushing once per round as `cohort run` does.
fn ledger_in(dir: &std::path::Path, seed: u64) -> EmbeddedLedger {
    let mut l = EmbeddedLedger::create(
        dir.join("ledger"),
        LedgerConfig::new(
            "cohort.local/fl-test",
            Identity::from_seed(seed, "operator"),
        ),
    )
    .unwrap();
    l.set_sync(SyncPolicy::OnFlush).unwrap();
    l
}

/// The linear task, failing once at its `fail_at`-th local training: a run that stops with an
/// error part-way through a round.
struct FailOnce<'a> {
    inner: &'a LinearTask,
    calls: Cell<usize>,
    fail_at: usize,
}

impl Learner for FailOnce<'_> {
    fn layout(&self) -> std::sync::Arc<cohort_fl::Layout> {
        self.inner.layout()
    }
    fn init(&self) -> Vec<f32> {
        self.inner.init()
    }
    fn train(&self, client: u32, global: &[f32], rng: &mut Rng) -> Result<Vec<f32>, FlError> {
        self.calls.set(self.calls.get() + 1);
        if self.calls.get() == self.fail_at {
            return Err(FlError::Task("the disk is full".into()));
        }
        self.inner.train(client, global, rng)
    }
    fn num_samples(&self, client: u32) -> u64 {
        self.inner.num_samples(client)
    }
    fn dataset_commitment(&self, client: u32) -> (Hash32, u64) {
        self.inner.dataset_commitment(client)
    }
    fn holdout_loss(&self, validator: u32, params: &[f32]) -> Result<f64, FlError> {
        self.inner.holdout_loss(validator, params)
    }
    fn evaluate(&self, params: &[f32]) -> Result<Metrics, FlError> {
        self.inner.evaluate(params)
    }
}

fn linear(cfg: &RunConfig) -> LinearTask {
    LinearTask::new(
        LinearTaskConfig::default(),
        cfg.clients,
        cfg.validators,
        cfg.seed,
    )
}

#[test]
fn a_run_stopped_by_an_error_part_way_resumes_from_its_last_round_to_the_same_root() {
    let mut with_adam = config(sign_flip(0.3), StrategyConfig::TrimmedMean { k: 2 });
    with_adam.aggregation.fedadam_lr = Some(0.05);
    for cfg in [
        config(sign_flip(0.3), StrategyConfig::ScoreWeighted),
        with_adam,
    ] {
        let (want, _d) = go(&cfg);
        let v: ValidConfig = cfg.clone().check().unwrap();
        let task = linear(&cfg);
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        // 10 clients a round: the 25th training is in round 3.
        let failing = FailOnce {
            inner: &task,
            calls: Cell::new(0),
            fail_at: 25,
        };
        // Both runs' events in one stream, as `--events FILE` appends them.
        let events = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let sink = |events: &std::rc::Rc<std::cell::RefCell<Vec<RunEvent>>>| {
            let events = events.clone();
            move |e: &RunEvent| events.borrow_mut().push(e.clone())
        };
        let opts = RunOptions::new()
            .with_state(&state)
            .with_events(sink(&events));
        let e = run_in_process(&v, ledger_in(dir.path(), cfg.seed), &failing, opts, |_| {})
            .unwrap_err();
        assert!(e.to_string().contains("the disk is full"), "{e}");
        // The ledger ends at round 2's settlement: round 3's entries were taken back.
        let led = EmbeddedLedger::open(dir.path().join("ledger")).unwrap();
        let head = led.head().unwrap();
        let saved = resume::list(&state).unwrap();
        let last = saved.last().unwrap();
        assert_eq!(last.round, 2);
        assert_eq!(
            (head.size, head.root),
            (last.ledger_entries, last.ledger_root)
        );
        let r = resume::load(&state, head.size, head.root).unwrap().unwrap();
        assert_eq!(r.rounds.len(), 2);
        let opts = RunOptions::new()
            .with_state(&state)
            .with_events(sink(&events))
            .resuming(r);
        let (p, got) = run_in_process(&v, led, &task, opts, |_| {}).unwrap();
        p.into_backend().verify().unwrap();
        assert_eq!(got.ledger_root, want.ledger_root, "{:?}", cfg.aggregation);
        assert_eq!(got.final_holdings, want.final_holdings);
        // The resumed summary is the uninterrupted run's, and the fold of the one stream both
        // runs wrote (round 3's first attempt, cut short by the error, is void after the
        // `resumed` event).
        assert_eq!(without_seconds(&got), without_seconds(&want));
        let events = events.borrow();
        assert!(events.contains(&RunEvent::Resumed {
            round: 2,
            ledger_entries: last.ledger_entries,
            ledger_root: last.ledger_root,
        }));
        let opened = |r: u64| {
            events
                .iter()
                .filter(|e| matches!(e, RunEvent::RoundOpened { round, .. } if *round == r))
                .count()
        };
        assert_eq!((opened(2), opened(3)), (1, 2));
        let folded = cohort_node::summary::summary_from_events(3, events.iter()).unwrap();
        assert_eq!(without_seconds(&folded), without_seconds(&want));
        for (a, b) in got.rounds.iter().zip(&want.rounds) {
            assert_eq!((&a.accepted, &a.rejected), (&b.accepted, &b.rejected));
            assert_eq!(a.test, b.test);
            assert_eq!(a.holdings, b.holdings);
        }
        assert_eq!(got.rounds.len(), 4);
        // Under another config the saved state is refused.
        let mut other = cfg.clone();
        other.incentives.reward_per_round = 7;
        let led = EmbeddedLedger::open(dir.path().join("ledger")).unwrap();
        let head = led.head().unwrap();
        let saved = resume::list(&state).unwrap();
        let last = saved.last().unwrap();
        assert_eq!(last.round, 4);
        let r = resume::load(&state, head.size, head.root).unwrap().unwrap();
        let e = run_in_process(
            &other.check().unwrap(),
            led,
            &task,
            RunOptions::new().resuming(r),
            |_| {},
        )
        .unwrap_err();
        assert!(e.to_string().contains("another config"), "{e}");
    }
}

/// Updates of 3e38 per value: finite, accepted (the holdout loss falls as the model grows),
/// and the second one added to the first overflows `f32`.
#[derive(Debug)]
struct Overflow;

impl Learner for Overflow {
    fn layout(&self) -> std::sync::Arc<cohort_fl::Layout> {
        std::sync::Arc::new(cohort_fl::Layout::flat(2))
    }
    fn init(&self) -> Vec<f32> {
        vec![0.0; 2]
    }
    fn train(&self, _: u32, _: &[f32], _: &mut Rng) -> Result<Vec<f32>, FlError> {
        Ok(vec![3e38; 2])
    }
    fn num_samples(&self, _: u32) -> u64 {
        10
    }
    fn dataset_commitment(&self, client: u32) -> (Hash32, u64) {
        (cohort_core::sha256(&client.to_be_bytes()), 10)
    }
    fn holdout_loss(&self, _: u32, p: &[f32]) -> Result<f64, FlError> {
        Ok(1.0 / (1.0 + f64::from(p[0]).abs() / 1e38))
    }
    fn evaluate(&self, p: &[f32]) -> Result<Metrics, FlError> {
        Ok(Metrics::loss(self.holdout_loss(0, p)?))
    }
}

#[test]
fn a_global_model_that_turns_non_finite_stops_the_run_and_nobody_is_slashed_for_it() {
    let cfg = config(None, StrategyConfig::ScoreWeighted);
    let v = cfg.clone().check().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut rounds = Vec::new();
    let opts = RunOptions::new().with_state(&state);
    let e = run_in_process(&v, ledger_in(dir.path(), cfg.seed), &Overflow, opts, |r| {
        rounds.push(r.clone());
    })
    .unwrap_err();
    assert!(
        matches!(&e, RunError::NonFiniteModel { round: 2, strategy } if strategy.contains("score")),
        "{e}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("round 2") && msg.contains("no client is rejected or slashed"),
        "{msg}"
    );
    // Round 1 was settled (everyone accepted), round 2 left no trace on the ledger.
    assert_eq!(rounds.len(), 1);
    assert!(rounds[0].rejected.is_empty() && rounds[0].payouts.values().all(|p| p.slash.is_zero()));
    let led = EmbeddedLedger::open(dir.path().join("ledger")).unwrap();
    let last = resume::list(&state).unwrap().pop().unwrap();
    assert_eq!(last.round, 1);
    assert_eq!(led.head().unwrap().size, last.ledger_entries);
}

#[test]
fn an_honest_client_whose_training_diverges_stops_the_run_instead_of_being_slashed() {
    let mut cfg = config(None, StrategyConfig::FedAvg);
    let t = LinearTaskConfig {
        lr: 10.0,
        epochs: 50,
        ..LinearTaskConfig::default()
    };
    cfg.task = cohort_tasks::TaskConfig::Linear(t.clone());
    let v = cfg.clone().check().unwrap();
    let task = LinearTask::new(t, cfg.clients, cfg.validators, cfg.seed);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let e = run_in_process(
        &v,
        ledger_in(dir.path(), cfg.seed),
        &task,
        RunOptions::new().with_state(&state),
        |_| panic!("no round may settle"),
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("in round 1") && msg.contains("diverged") && msg.contains("client-"),
        "{msg}"
    );
    // Nothing of round 1 is on the ledger: the set-up only, nobody rejected or slashed.
    let led = EmbeddedLedger::open(dir.path().join("ledger")).unwrap();
    let saved = resume::list(&state).unwrap();
    assert_eq!(saved.len(), 1);
    assert_eq!(saved[0].round, 0);
    assert_eq!(led.head().unwrap().size, saved[0].ledger_entries);
}

#[test]
fn every_recorded_update_and_payout_is_reported_per_participant() {
    let cfg = config(sign_flip(0.3), StrategyConfig::ScoreWeighted);
    let (s, _d) = go(&cfg);
    for r in &s.rounds {
        let clients: Vec<u32> = r.updates.iter().map(|u| u.client).collect();
        assert_eq!(clients, r.submitted, "round {}", r.round);
        assert_eq!(
            r.updates.iter().map(|u| u.bytes).sum::<u64>(),
            r.bytes,
            "round {}",
            r.round
        );
        let norm = |k: u32| {
            r.updates
                .iter()
                .find(|u| u.client == k)
                .unwrap()
                .update_norm
                .unwrap()
        };
        // Sign-flippers send -3 times an honest update: their norms stand out.
        let honest_max = (0..7).map(norm).fold(0.0, f64::max);
        for k in 7..10 {
            assert!(norm(k) > honest_max, "round {}: {:?}", r.round, r.updates);
        }
        for u in &r.updates {
            assert!(u.samples > 0 && u.refused.is_none(), "{u:?}");
        }
        // Every party listed was paid or slashed something; the holdings moved by exactly
        // the round's payouts for a client (its balance + stake changes by reward - slash).
        for (name, p) in &r.payouts {
            assert!(!(p.reward.is_zero() && p.slash.is_zero()), "{name}: {p:?}");
        }
        for k in 7..10 {
            assert!(!r.payouts[&format!("client-{k}")].slash.is_zero());
        }
    }
    // Base units survive the summary's JSON exactly.
    let back: RunSummary = serde_json::from_value(serde_json::to_value(&s).unwrap()).unwrap();
    assert_eq!(back.rounds[0].payouts, s.rounds[0].payouts);
    assert_eq!(back.rounds[0].updates, s.rounds[0].updates);
}

#[test]
fn the_run_summary_is_rebuilt_exactly_from_the_events_file_also_across_a_resume() {
    use std::io::Write as _;
    let mut cfg = config(sign_flip(0.3), StrategyConfig::Median);
    cfg.attack.as_mut().unwrap().colluding_validators = 1;
    let cfg = &cfg.check().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ledger = EmbeddedLedger::create(
        dir.path().join("ledger"),
        LedgerConfig::new(
            "cohort.local/fl-test",
            Identity::from_seed(cfg.seed, "operator"),
        ),
    )
    .unwrap();
    let task = LinearTask::new(
        LinearTaskConfig::default(),
        cfg.clients,
        cfg.validators,
        cfg.seed,
    );
    // The events as `cohort run --events FILE` writes them: one JSON object per line.
    let path = dir.path().join("events.jsonl");
    let mut file = std::fs::File::create(&path).unwrap();
    let opts = cohort_node::RunOptions::new().with_events(move |e: &RunEvent| {
        writeln!(file, "{}", serde_json::to_string(e).unwrap()).unwrap();
    });
    let (_, s) = cohort_node::run_in_process(cfg, ledger, &task, opts, |_| {}).unwrap();
    let events: Vec<RunEvent> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // The whole summary is the events folded, but for the wall seconds.
    let whole = cohort_node::summary::summary_from_events(cfg.validators as u32, &events).unwrap();
    assert_eq!(without_seconds(&whole), without_seconds(&s));
    assert_eq!(whole.initial_holdings.len(), 13);
    let rebuilt = cohort_node::summary::rounds_from_events(cfg.validators as u32, &events);
    let mut want = s.rounds.clone();
    for r in &mut want {
        // Wall seconds are not events.
        r.seconds = Default::default();
    }
    assert_eq!(rebuilt.len(), 4);
    assert_eq!(rebuilt, want);
    // What the rounds show is really there: verdicts, slashes, a colluder's scores, holdings.
    for r in &rebuilt {
        assert_eq!(r.rejected, vec![7, 8, 9], "round {}", r.round);
        assert!(r.payouts["client-7"].slash > cohort_core::U256::ZERO);
        assert_eq!(r.scores.len(), 3);
        // The median says what it kept of every accepted update.
        for p in &r.provenance {
            assert_eq!(p.contribution.is_some(), p.accepted, "{p:?}");
        }
        assert!(
            r.provenance
                .iter()
                .all(|p| p.global_after != p.global_before)
        );
    }
    assert_eq!(rebuilt.last().unwrap().holdings, s.final_holdings);
    assert!(events.contains(&RunEvent::Evaluated {
        round: 0,
        test: s.initial
    }));

    // What a stopped and resumed run appends to its file folds to the same summary.
    use cohort_node::summary::{Incomplete, summary_from_events};
    let v = cfg.validators as u32;
    let fold = |events: &[RunEvent]| summary_from_events(v, events).map(|x| without_seconds(&x));
    let at = |pred: &dyn Fn(&RunEvent) -> bool| events.iter().position(pred).unwrap();
    let checkpoint2 = at(&|e| matches!(e, RunEvent::Checkpoint { round: 2, .. }));
    let opened3 = at(&|e| matches!(e, RunEvent::RoundOpened { round: 3, .. }));
    let RunEvent::Checkpoint {
        ledger_entries,
        ledger_root,
        ..
    } = events[checkpoint2].clone()
    else {
        unreachable!()
    };
    let resumed = RunEvent::Resumed {
        round: 2,
        ledger_entries,
        ledger_root,
    };
    // Stopped in round 3, after its updates: round 3 runs again after `resumed`.
    let cut = [
        &events[..opened3 + 3],
        std::slice::from_ref(&resumed),
        &events[opened3..],
    ]
    .concat();
    assert_eq!(fold(&cut), Ok(without_seconds(&s)));
    // Stopped once round 2 was durable but before its checkpoint was written: `resumed`
    // says round 2 is settled, and its events so far are the whole round.
    let cut = [
        &events[..checkpoint2],
        std::slice::from_ref(&resumed),
        &events[opened3..],
    ]
    .concat();
    assert_eq!(fold(&cut), Ok(without_seconds(&s)));
    // Stopped during a set-up that then started over.
    let cut = [&events[..opened3], &events[..]].concat();
    assert_eq!(fold(&cut), Ok(without_seconds(&s)));
    // A stream that lacks a round's checkpoint, or the end, makes no summary.
    let cut = [&events[..checkpoint2], &events[checkpoint2 + 1..]].concat();
    assert_eq!(
        fold(&cut),
        Err(Incomplete::MissingRounds {
            finished: 4,
            settled: vec![1, 3, 4]
        })
    );
    assert_eq!(
        fold(&events[..events.len() - 1]),
        Err(Incomplete::NotFinished)
    );
    assert_eq!(fold(&events[1..]), Ok(without_seconds(&s)));
    assert_eq!(fold(&events[3..]), Err(Incomplete::NoInitialModel));
}

/// Provenance is exact for a weighted strategy: each round's step of the global model is the
/// sum of its recorded updates, each scaled by its recorded weight and clip factor, all read
/// back from the blob store by the hashes the records give. (What exact unlearning relies on.)
#[test]
fn provenance_of_a_weighted_strategy_rebuilds_each_step_from_the_blobs() {
    use cohort_blob::BlobStore;
    use cohort_fl::learner::Learner;
    use cohort_fl::strategy::Contribution;

    for strategy in [StrategyConfig::FedAvg, StrategyConfig::ScoreWeighted] {
        let cfg = config(sign_flip(0.2), strategy.clone());
        let (s, dir) = go(&cfg);
        let store = cohort_blob::LocalDir::open_existing(dir.path().join("blobs")).unwrap();
        let task = LinearTask::new(
            LinearTaskConfig::default(),
            cfg.clients,
            cfg.validators,
            cfg.seed,
        );
        let mut clipped = 0;
        for r in &s.rounds {
            assert_eq!(r.provenance.len(), r.submitted.len(), "round {}", r.round);
            let first = &r.provenance[0];
            let layout = task.layout();
            let decode = |blob: &[u8]| {
                cohort_fl::NamedDelta::decode(blob)
                    .and_then(|d| d.into_layout(&layout))
                    .unwrap()
                    .values
            };
            let before = decode(&store.get(&first.global_before).unwrap());
            let after = decode(&store.get(&first.global_after).unwrap());
            let mut step = vec![0f64; before.len()];
            let mut weights = 0.0;
            for p in &r.provenance {
                assert_eq!(p.contribution.is_some(), p.accepted, "{strategy:?} {p:?}");
                let Some(Contribution::Weighted {
                    weight,
                    clip_scale,
                    via_server_optimizer: false,
                }) = p.contribution
                else {
                    assert!(p.contribution.is_none(), "{p:?}");
                    continue;
                };
                clipped += usize::from(clip_scale < 1.0);
                weights += weight;
                let delta = decode(&store.get(&p.blob).unwrap());
                for (s, d) in step.iter_mut().zip(delta) {
                    *s += weight * clip_scale * f64::from(d);
                }
            }
            assert!((weights - 1.0).abs() < 1e-9, "round {}: {weights}", r.round);
            for (i, ((a, b), s)) in after.iter().zip(&before).zip(&step).enumerate() {
                let got = f64::from(*a) - f64::from(*b);
                assert!(
                    (got - s).abs() <= 1e-4 * (1.0 + s.abs()),
                    "{strategy:?} round {} coordinate {i}: the model moved {got}, the records say {s}",
                    r.round
                );
            }
        }
        // The default clipping (to the median norm) clipped some honest update.
        assert!(clipped > 0, "{strategy:?}: nothing was clipped");
    }
}

/// A run that leaves a client out (what exact unlearning retrains): the client never enrols,
/// is never sampled, submits nothing and holds what it was given; the others keep their
/// indices and data, and the run differs from the full one. Leaving out a client that does not
/// exist, or every client, is refused before anything is recorded.
#[test]
fn a_client_left_out_of_a_run_takes_no_part_in_it() {
    let cfg = config(None, StrategyConfig::FedAvg);
    let v: ValidConfig = cfg.clone().check().unwrap();
    let task = linear(&cfg);
    let (full, _d) = go(&cfg);
    let dir = tempfile::tempdir().unwrap();
    let opts = RunOptions::new().excluding([3]);
    let (p, without) =
        run_in_process(&v, ledger_in(dir.path(), cfg.seed), &task, opts, |_| {}).unwrap();
    p.into_backend().verify().unwrap();
    assert_eq!(without.rounds.len(), full.rounds.len());
    for r in &without.rounds {
        assert!(!r.submitted.contains(&3), "{:?}", r.submitted);
        assert_eq!(r.submitted.len(), cfg.clients - 1);
        assert_eq!(r.accepted.len(), cfg.clients - 1);
        assert!(!r.payouts.contains_key("client-3"));
    }
    assert_eq!(
        without.final_holdings["client-3"],
        without.initial_holdings["client-3"]
    );
    assert_ne!(
        without.rounds.last().unwrap().test.loss,
        full.rounds.last().unwrap().test.loss
    );
    for (exclude, why) in [
        (vec![10], "client 10 is not one of the run's 10 clients"),
        ((0..10).collect(), "all 10 clients left out"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let opts = RunOptions::new().excluding(exclude);
        let e =
            run_in_process(&v, ledger_in(dir.path(), cfg.seed), &task, opts, |_| {}).unwrap_err();
        assert!(e.to_string().contains(why), "{e}");
    }
}

/// A sharded run (`[unlearning] shards`) keeps its shards apart: leaving a client out changes
/// its own shard's slice of the global model and leaves every other slice bit for bit as it
/// was (every client trains every round, so the cohorts are the same). What `cohort unlearn
/// --method shards` relies on to be exact. The model served is the mean of the slices.
#[test]
fn a_sharded_run_keeps_its_shards_apart() {
    use cohort_blob::BlobStore;
    use cohort_fl::learner::Learner;
    use cohort_fl::shards::Shards;
    use cohort_node::runtime::{RunOptions, run_in_process};

    let mut cfg = config(None, StrategyConfig::FedAvg);
    cfg.unlearning.shards = 3;
    let cfg = cfg.check().unwrap();
    let task = LinearTask::new(
        LinearTaskConfig::default(),
        cfg.clients,
        cfg.validators,
        cfg.seed,
    );
    let shards = Shards::new(3, task.layout()).unwrap();
    let finish = |exclude: &[u32]| {
        let dir = tempfile::tempdir().unwrap();
        let ledger = EmbeddedLedger::create(
            dir.path().join("ledger"),
            LedgerConfig::new(
                "cohort.local/fl-test",
                Identity::from_seed(cfg.seed, "operator"),
            ),
        )
        .unwrap();
        std::fs::create_dir_all(dir.path().join("blobs")).unwrap();
        let open = || cohort_blob::LocalDir::open_existing(dir.path().join("blobs")).unwrap();
        let store = open();
        let opts = RunOptions::new()
            .with_blobs(Box::new(open()))
            .excluding(exclude.iter().copied());
        let (p, s) = run_in_process(&cfg, ledger, &task, opts, |_| {}).unwrap();
        p.into_backend().verify().unwrap();
        let last = s
            .rounds
            .last()
            .unwrap()
            .provenance
            .last()
            .unwrap()
            .global_after;
        let model = cohort_fl::NamedDelta::decode(&store.get(&last).unwrap())
            .and_then(|d| d.into_layout(shards.layout()))
            .unwrap()
            .values;
        (model, s)
    };
    let (all, s) = finish(&[]);
    assert!(
        s.rounds.iter().all(|r| r.accepted.len() == 10),
        "all accepted"
    );
    // Every slice trained, and the test loss fell from the initial model's.
    for k in 0..3 {
        assert!(shards.slice(&all, k).iter().any(|&x| x != 0.0), "shard {k}");
    }
    let served = task.evaluate(&shards.served(&all)).unwrap();
    assert_eq!(
        served,
        s.rounds.last().unwrap().test,
        "the run reports the served model"
    );
    assert!(
        served.loss < s.initial.loss,
        "{served:?} vs {:?}",
        s.initial
    );
    // Client 4 is in shard 1: only slice 1 changes.
    let (without, _) = finish(&[4]);
    assert_eq!(shards.slice(&all, 0), shards.slice(&without, 0));
    assert_eq!(shards.slice(&all, 2), shards.slice(&without, 2));
    assert_ne!(shards.slice(&all, 1), shards.slice(&without, 1));
}
