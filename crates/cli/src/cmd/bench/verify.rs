//! `cohort bench verify`: how stage-server verification performs (docs/pipeline.md): how fast
//! dishonest servers are caught at a recompute rate over seeded trials, whether an honest
//! server is ever accused across thread counts, and what verification costs.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use candle_core::Device;
use cohort_core::SplitMix64;
use cohort_model::{Gpt, GptConfig, LanguageModel, Lora, LoraConfig};
use cohort_net::stage::{ForwardCall, Named, StageClient};
use serde::Serialize;

use super::pipeline::start_server;
use crate::args::{float_in, int_in};
use crate::cmd::model::Verify;
use crate::output::{Table, write_json};

/// Stage-server verification on loopback: dishonest servers (`serve-layers --misbehave`: noise
/// 1e-2, stale replay, bfloat16 outputs, a layer skipped; noise on the backward's gradient)
/// are each run for `--trials` seeded trials of `--calls` calls, with a verifier recomputing a
/// share `--rate` of each forward call's rows (or of the backward calls, whole); an honest server on one thread is checked on half the rows (drawn) of
/// `--honest-calls` calls by a verifier on two (false alarms); and the cost of verifying at
/// `--rate` is timed.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Write the results here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Model preset.
    #[arg(long, default_value = "tiny", value_parser = ["test", "tiny", "reference"])]
    preset: String,
    /// The share of rows (sequences) of each call a verifier recomputes, in [0, 1].
    #[arg(long, default_value_t = 0.1, value_parser = float_in(0.0..=1.0))]
    rate: f64,
    /// Seeded trials per dishonest server, in [1, 100000].
    #[arg(long, default_value_t = 100, value_parser = int_in(1..=100_000usize))]
    trials: usize,
    /// Forward calls per trial, in [1, 100000]: a trial in which the server is not caught
    /// within them is a miss.
    #[arg(long, default_value_t = 50, value_parser = int_in(1..=100_000usize))]
    calls: usize,
    /// Calls to an honest server with half their rows recomputed, in [0, 10000000].
    #[arg(long, default_value_t = 10_000, value_parser = int_in(0..=10_000_000usize))]
    honest_calls: usize,
    /// Calls timed at --rate for the cost of verification, in [1, 1000000].
    #[arg(long, default_value_t = 200, value_parser = int_in(1..=1_000_000usize))]
    cost_calls: usize,
    /// Sequences per call, in [1, 1024].
    #[arg(long, default_value_t = 16, value_parser = int_in(1..=1024usize))]
    batch: usize,
    /// Tokens per sequence, in [1, the preset's context].
    #[arg(long, default_value_t = 64, value_parser = int_in(1..=100_000usize))]
    tokens: usize,
}

#[derive(Debug, Serialize)]
struct Detection {
    misbehave: String,
    trials: usize,
    /// Trials in which the server was caught within the calls.
    caught: usize,
    caught_share: f64,
    /// The call at which it was caught, over the trials that caught it.
    mean_calls_to_catch: f64,
    max_calls_to_catch: usize,
    /// The probability of catching it within `calls` if each call were checked whole with
    /// probability `rate` (the reference: 1 - (1 - rate)^calls).
    whole_call_reference: f64,
}

#[derive(Debug, Serialize)]
struct Honest {
    calls: usize,
    rows_checked: u64,
    server_threads: usize,
    verifier_threads: usize,
    false_alarms: usize,
}

#[derive(Debug, Serialize)]
struct Cost {
    calls: usize,
    rate: f64,
    /// Seconds in the server's forward calls, and in the verifier's recomputations (wall
    /// clock, as the client waits).
    serve_seconds: f64,
    verify_seconds: f64,
    /// verify_seconds / serve_seconds.
    share: f64,
    /// CPU seconds the server's process and the verifier's spent in these calls (from
    /// /proc: the compute, whatever else the machine runs), and their ratio.
    server_cpu_seconds: Option<f64>,
    verifier_cpu_seconds: Option<f64>,
    cpu_share: Option<f64>,
    /// Rows recomputed over rows served.
    rows_share: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    preset: String,
    layers: String,
    batch: usize,
    tokens: usize,
    rate: f64,
    calls_per_trial: usize,
    detection: Vec<Detection>,
    honest: Honest,
    cost: Cost,
}

/// What a client sends a stage: its stream and its adapter.
struct Caller {
    adapter: Named,
    adapter_config: String,
    width: usize,
    batch: usize,
    tokens: usize,
}

impl Caller {
    /// Call `step` of `session`: a random stream (seeded by both), a dropout key.
    fn call(&self, session: u64, step: u64) -> ForwardCall {
        let mut r = SplitMix64::new(session.wrapping_mul(0x9e37_79b9).wrapping_add(step));
        ForwardCall {
            session,
            step,
            batch: self.batch,
            tokens: self.tokens,
            stream: r.normal_vec(self.batch * self.tokens * self.width, 1.0),
            adapter: self.adapter.clone(),
            dropout_key: Some(r.next_u64()),
            adapter_config: Some(self.adapter_config.clone()),
            rows: Vec::new(),
            inference: false,
            compression: cohort_net::stage::COMPRESSION_NONE,
            wire: None,
        }
    }
}

fn dial(url: &str) -> anyhow::Result<StageClient> {
    Ok(StageClient::connect(url, None, Duration::from_secs(120))?)
}

impl Args {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let cfg = GptConfig::preset(&self.preset, 65)?;
        if self.tokens > cfg.n_positions {
            bail!(
                "--tokens {}: the {} preset's context is {}",
                self.tokens,
                self.preset,
                cfg.n_positions
            );
        }
        // The middle of the model: layers 1..L-1 (1..2 of a 2-layer model).
        let layers = 1..(cfg.n_layer - 1).max(2);
        let tmp = tempfile::tempdir().context("a temporary directory for the model")?;
        let dir = tmp.path().join("model");
        Gpt::new(cfg.clone(), 1, &Device::Cpu)?.save_dir(&dir)?;
        // A rank-8 adapter with dropout on every linear of those layers, its B not zero so
        // that it changes the outputs.
        let mut m = Gpt::load_mapped(&dir, &Device::Cpu)?;
        let linears = m.linear_modules();
        let lora_cfg = LoraConfig::new(8, 16.0, &["all-linear"]).with_dropout(0.1);
        let w = m.weights_mut();
        w.lora = Some(Lora::attach(&mut w.params, &linears, lora_cfg.clone(), 3)?);
        let mut r = SplitMix64::new(11);
        let adapter: Named = m
            .params()
            .trainable()
            .filter(|p| {
                let name = p.name.strip_prefix("base_model.model.").unwrap_or(&p.name);
                layers
                    .clone()
                    .any(|l| name.starts_with(&format!("transformer.h.{l}.")))
            })
            .map(|p| -> anyhow::Result<(String, Vec<f32>)> {
                let v: Vec<f32> = p.var.flatten_all()?.to_vec1()?;
                let v = if p.name.contains("lora_B") {
                    r.normal_vec(v.len(), 0.05)
                } else {
                    v
                };
                Ok((p.name.clone(), v))
            })
            .collect::<anyhow::Result<_>>()?;
        let caller = Caller {
            adapter,
            adapter_config: serde_json::to_string(&lora_cfg)?,
            width: cfg.n_embd,
            batch: self.batch,
            tokens: self.tokens,
        };
        let exe = std::env::current_exe().context("this program's path")?;
        // Every server signs its answers, as a real one would: the cost counts.
        let key = |name: &str| -> anyhow::Result<String> {
            let path = tmp.path().join(format!("{name}.key"));
            cohort_core::keyfile::write_new(&path, &cohort_core::Identity::from_seed(7, name))?;
            Ok(path.to_string_lossy().into_owned())
        };
        let (honest_key, verifier_key, liar_key) = (key("honest")?, key("verifier")?, key("liar")?);
        let (honest_proc, honest_url) =
            start_server(&exe, &dir, &layers, &["--key", &honest_key], Some(1))?;
        let (verifier_proc, verifier_url) =
            start_server(&exe, &dir, &layers, &["--key", &verifier_key], Some(2))?;
        let cpu = |p: &super::pipeline::Proc| {
            super::net::proc_sample(p.0.id()).map(|(cpu_s, _, _)| cpu_s)
        };
        let mut server = dial(&honest_url)?;
        let verifiers = || -> anyhow::Result<Vec<(std::ops::Range<usize>, StageClient)>> {
            Ok(vec![(layers.clone(), dial(&verifier_url)?)])
        };
        eprintln!(
            "bench verify: {} preset, layers {layers:?}, {} x {} per call, rate {}",
            self.preset, self.batch, self.tokens, self.rate
        );

        // Detection: each dishonest server, trials of at most `calls` calls.
        let mut detection = Vec::new();
        for how in [
            "noise=0.01",
            "stale",
            "bf16",
            "skip-layer",
            "grad-noise=0.01",
        ] {
            // A backward cheat is checked on backward calls, drawn whole at the rate.
            let backward = how.starts_with("grad-noise");
            let (_liar, url) = start_server(
                &exe,
                &dir,
                &layers,
                &["--misbehave", how, "--key", &liar_key],
                None,
            )?;
            let mut liar = dial(&url)?;
            let mut at = Vec::new();
            for trial in 0..self.trials {
                let mut v = Verify::new(verifiers()?, self.rate, trial as u64)?;
                let session = 1_000_000 + trial as u64;
                for step in 1..=self.calls as u64 {
                    let call = caller.call(session, step);
                    let out = liar.forward(&call)?;
                    let caught = if backward {
                        let grad =
                            SplitMix64::new(session ^ step).normal_vec(out.stream.len(), 1.0);
                        let answer = liar.backward_signed(session, step, &grad)?;
                        !v.check_backward(&layers, &call, &grad, &liar, &answer)?
                            .is_empty()
                    } else {
                        !v.check(&layers, &call, &liar, &out)?.is_empty()
                    };
                    if caught {
                        at.push(step as usize);
                        break;
                    }
                }
            }
            let d = Detection {
                misbehave: how.into(),
                trials: self.trials,
                caught: at.len(),
                caught_share: at.len() as f64 / self.trials as f64,
                mean_calls_to_catch: at.iter().sum::<usize>() as f64 / at.len().max(1) as f64,
                max_calls_to_catch: at.iter().copied().max().unwrap_or(0),
                whole_call_reference: 1.0 - (1.0 - self.rate).powi(self.calls as i32),
            };
            eprintln!(
                "  {how}: caught in {}/{} trials (mean call {:.2}, max {})",
                d.caught, d.trials, d.mean_calls_to_catch, d.max_calls_to_catch
            );
            detection.push(d);
        }

        // False alarms: half the rows of every call recomputed (each drawn with probability
        // 1/2, so the verifier runs every kind of subset), the server on one thread and the
        // verifier on two.
        let mut v = Verify::new(verifiers()?, 0.5, 5)?;
        let mut false_alarms = 0;
        for step in 1..=self.honest_calls as u64 {
            let call = caller.call(7, step);
            let out = server.forward(&call)?;
            if let Some(bad) = v.check(&layers, &call, &server, &out)?.first() {
                false_alarms += 1;
                eprintln!("  FALSE ALARM at call {step}: row {}", bad.row);
            }
            if step % 1000 == 0 {
                eprintln!("  honest: {step}/{} calls", self.honest_calls);
            }
        }
        let honest = Honest {
            calls: self.honest_calls,
            rows_checked: v.stats().rows_checked,
            server_threads: 1,
            verifier_threads: 2,
            false_alarms,
        };

        // Cost at --rate: time in the server's calls against time in the verifier's.
        let mut v = Verify::new(verifiers()?, self.rate, 9)?;
        let (mut serve, mut verify) = (Duration::ZERO, Duration::ZERO);
        let cpu_before = (cpu(&honest_proc), cpu(&verifier_proc));
        for step in 1..=self.cost_calls as u64 {
            let call = caller.call(8, step);
            let t0 = Instant::now();
            let out = server.forward(&call)?;
            let t1 = Instant::now();
            if !v.check(&layers, &call, &server, &out)?.is_empty() {
                bail!("an honest server was accused at call {step}");
            }
            serve += t1 - t0;
            verify += t1.elapsed();
        }
        let st = v.stats();
        let server_cpu_seconds = cpu(&honest_proc).zip(cpu_before.0).map(|(a, b)| a - b);
        let verifier_cpu_seconds = cpu(&verifier_proc).zip(cpu_before.1).map(|(a, b)| a - b);
        let cost = Cost {
            server_cpu_seconds,
            verifier_cpu_seconds,
            cpu_share: server_cpu_seconds
                .zip(verifier_cpu_seconds)
                .map(|(s, v)| v / s.max(1e-9)),
            calls: self.cost_calls,
            rate: self.rate,
            serve_seconds: serve.as_secs_f64(),
            verify_seconds: verify.as_secs_f64(),
            share: verify.as_secs_f64() / serve.as_secs_f64().max(1e-12),
            rows_share: st.rows_checked as f64 / st.rows.max(1) as f64,
        };

        let report = Report {
            preset: self.preset.clone(),
            layers: format!("{}..{}", layers.start, layers.end),
            batch: self.batch,
            tokens: self.tokens,
            rate: self.rate,
            calls_per_trial: self.calls,
            detection,
            honest,
            cost,
        };
        let mut t = Table::new(&[
            "dishonest server",
            "caught",
            "mean call",
            "max call",
            "whole-call reference",
        ]);
        for d in &report.detection {
            t.row(vec![
                d.misbehave.clone(),
                format!("{}/{}", d.caught, d.trials),
                format!("{:.2}", d.mean_calls_to_catch),
                d.max_calls_to_catch.to_string(),
                format!("{:.4}", d.whole_call_reference),
            ]);
        }
        t.print();
        println!(
            "honest server (1 thread) checked on {} rows of {} calls by a verifier on 2 threads: \
             {} false alarms",
            report.honest.rows_checked, report.honest.calls, report.honest.false_alarms
        );
        println!(
            "cost at rate {}: {} of the server's CPU time ({} s against {} s over {} calls), \
             {:.1}% of its wall time, {:.1}% of rows recomputed",
            report.rate,
            report
                .cost
                .cpu_share
                .map_or("-".into(), |c| format!("{:.1}%", 100.0 * c)),
            report
                .cost
                .verifier_cpu_seconds
                .map_or("-".into(), |c| format!("{c:.2}")),
            report
                .cost
                .server_cpu_seconds
                .map_or("-".into(), |c| format!("{c:.2}")),
            report.cost.calls,
            100.0 * report.cost.share,
            100.0 * report.cost.rows_share
        );
        if let Some(path) = &self.json {
            write_json(path, &report)?;
        }
        Ok(ExitCode::SUCCESS)
    }
}
