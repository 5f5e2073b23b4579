//! `cohort bench pipeline`: LoRA training through stage servers against single-process
//! training of the same model, in one run (docs/pipeline.md).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};
use candle_core::Device;
use cohort_core::SplitMix64;
use cohort_model::data::TokenData;
use cohort_model::train::{TrainConfig, Trainer};
use cohort_model::{Gpt, GptConfig, LanguageModel, Lora, LoraConfig};
use serde::Serialize;

use crate::args::int_in;
use crate::cmd::model::Pipeline;
use crate::output::{Table, write_json};

/// LoRA training of a GPT through `--stages` stage-server processes (`cohort serve-layers`
/// on loopback, plain text) against single-process training of the same model, same seeds,
/// in the same run: tokens per second and their ratio, the stream bytes a step sends, each
/// server's peak resident memory, and whether the two trainings give the same losses bit
/// for bit.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Write the results here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Model preset (`tiny`: 4 layers of width 128; `reference`: width 256).
    #[arg(long, default_value = "tiny",
          value_parser = ["test", "tiny", "reference", "small", "medium"])]
    preset: String,
    /// Stage servers, each holding an equal share of the layers (the first ones one more when
    /// they do not divide), in [1, the model's layers].
    #[arg(long, default_value_t = 3, value_parser = int_in(1..=64usize))]
    stages: usize,
    /// Timed steps per mode, in [1, 100000].
    #[arg(long, default_value_t = 20, value_parser = int_in(1..=100_000usize))]
    steps: usize,
    /// Sequences per batch, in [1, 4096].
    #[arg(long, default_value_t = 16, value_parser = int_in(1..=4096usize))]
    batch: usize,
    /// LoRA rank, in [1, 4096] and at most the model's width.
    #[arg(long, default_value_t = 8, value_parser = int_in(1..=4096usize))]
    rank: usize,
}

#[derive(Debug, Serialize)]
struct Mode {
    mode: String,
    steps: usize,
    seconds: f64,
    tokens_per_s: f64,
    losses: Vec<f64>,
}

#[derive(Debug, Serialize)]
struct Server {
    layers: String,
    peak_rss_bytes: Option<u64>,
}

#[derive(Debug, Serialize)]
struct Report {
    preset: String,
    layers: usize,
    model_bytes: u64,
    batch: usize,
    seq_len: usize,
    rank: usize,
    single: Mode,
    pipeline: Mode,
    /// Pipelined tokens/s over single-process tokens/s.
    ratio: f64,
    /// The share of a pipelined step not spent computing: (pipelined - single) / pipelined.
    overhead_share: f64,
    /// Stream and gradient bytes a step sends and receives, all stages together.
    stream_bytes_per_step: u64,
    same_losses: bool,
    servers: Vec<Server>,
}

/// A server process, killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Peak resident memory (VmHWM) of process `pid`, where /proc tells.
fn peak_rss(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

impl Args {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let cfg = GptConfig::preset(&self.preset, 65)?;
        let layers = cfg.n_layer;
        if self.stages > layers {
            bail!(
                "--stages {}: the {} preset has {layers} layers",
                self.stages,
                self.preset
            );
        }
        let tmp = tempfile::tempdir().context("a temporary directory for the model")?;
        let dir = tmp.path().join("model");
        Gpt::new(cfg.clone(), 1, &Device::Cpu)?.save_dir(&dir)?;
        let model_bytes = std::fs::metadata(dir.join("model.safetensors"))?.len();
        // Equal shares of the layers, the first stages one more.
        let mut ranges = Vec::new();
        let mut at = 0;
        for s in 0..self.stages {
            let n = layers / self.stages + usize::from(s < layers % self.stages);
            ranges.push(at..at + n);
            at += n;
        }
        let exe = std::env::current_exe().context("this program's path")?;
        let mut procs = Vec::new();
        let mut urls = Vec::new();
        for r in &ranges {
            let mut child = Command::new(&exe)
                .args(["serve-layers"])
                .arg(&dir)
                .args([
                    "--layers",
                    &format!("{}..{}", r.start, r.end),
                    "--listen",
                    "127.0.0.1:0",
                    "--insecure",
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .context("starting a stage server")?;
            let mut line = String::new();
            BufReader::new(child.stdout.take().context("its output")?).read_line(&mut line)?;
            let addr = line
                .trim()
                .rsplit(' ')
                .next()
                .unwrap_or_default()
                .to_owned();
            if !line.starts_with("serving layers") {
                bail!("a stage server did not start: {line:?}");
            }
            urls.push(format!("http://{addr}"));
            procs.push(Proc(child));
        }
        let seq = cfg.n_positions.min(128);
        let mut r = SplitMix64::new(7);
        let tokens: Vec<u32> = (0..200_000).map(|_| r.below(65) as u32).collect();
        let data = TokenData::split(tokens, 0.1)?;
        let lora_cfg = LoraConfig::new(self.rank, 2.0 * self.rank as f64, &["all-linear"]);
        let make = || -> anyhow::Result<(Gpt, Trainer)> {
            let mut m = Gpt::load_mapped(&dir, &Device::Cpu)?;
            let linears = m.linear_modules();
            let w = m.weights_mut();
            w.lora = Some(Lora::attach(&mut w.params, &linears, lora_cfg.clone(), 3)?);
            let mut tc = TrainConfig::new(self.batch, seq);
            tc.seed = 3;
            let t = Trainer::new(&m, tc)?;
            Ok((m, t))
        };
        eprintln!(
            "bench pipeline: {} preset ({layers} layers), {} stages {ranges:?}, {} steps per mode",
            self.preset, self.stages, self.steps
        );
        let time =
            |name: &str, f: &mut dyn FnMut() -> anyhow::Result<f64>| -> anyhow::Result<Mode> {
                let start = Instant::now();
                let mut losses = Vec::new();
                for i in 0..self.steps {
                    losses.push(f()?);
                    if (i + 1) % 5 == 0 || i + 1 == self.steps {
                        eprintln!("  {name}: step {}/{}", i + 1, self.steps);
                    }
                }
                let seconds = start.elapsed().as_secs_f64();
                Ok(Mode {
                    mode: name.into(),
                    steps: self.steps,
                    seconds,
                    tokens_per_s: (self.steps * self.batch * seq) as f64 / seconds.max(1e-9),
                    losses,
                })
            };
        let (m, mut t) = make()?;
        let single = time("single process", &mut || Ok(t.step(&m, &data)?.loss))?;
        let (m, mut t) = make()?;
        let dials: Vec<(String, Option<cohort_net::tls::ClientTlsConfig>)> =
            urls.iter().map(|u| (u.clone(), None)).collect();
        let lora = m
            .weights()
            .lora
            .as_ref()
            .context("no adapter")?
            .config
            .clone();
        let mut p = Pipeline::connect(&dials, &dir, layers, &lora)?;
        let pipeline = time("pipeline", &mut || {
            let mut source = |x: &candle_core::Tensor,
                              y: &candle_core::Tensor,
                              key: Option<u64>|
             -> cohort_model::Result<(f64, Vec<Vec<f32>>)> {
                p.grads(&m, x, y, key)
                    .map_err(|e| cohort_model::Error::Data(format!("{e:#}")))
            };
            Ok(t.step_with(&m, &data, &mut source)?.loss)
        })?;
        let servers = ranges
            .iter()
            .zip(&procs)
            .map(|(r, p)| Server {
                layers: format!("{}..{}", r.start, r.end),
                peak_rss_bytes: peak_rss(p.0.id()),
            })
            .collect();
        // Per stage and step: the stream in and out, the gradient in and out (f32).
        let stream = (self.batch * seq * cfg.n_embd * 4) as u64;
        let report = Report {
            preset: self.preset.clone(),
            layers,
            model_bytes,
            batch: self.batch,
            seq_len: seq,
            rank: self.rank,
            ratio: pipeline.tokens_per_s / single.tokens_per_s.max(1e-9),
            overhead_share: ((pipeline.seconds - single.seconds) / pipeline.seconds.max(1e-9))
                .max(0.0),
            stream_bytes_per_step: 4 * stream * self.stages as u64,
            same_losses: single.losses == pipeline.losses,
            single,
            pipeline,
            servers,
        };
        let mut table = Table::new(&["mode", "steps", "seconds", "tokens/s", "vs single"]);
        for m in [&report.single, &report.pipeline] {
            table.row(vec![
                m.mode.clone(),
                m.steps.to_string(),
                format!("{:.2}", m.seconds),
                format!("{:.0}", m.tokens_per_s),
                format!(
                    "{:.2}x",
                    m.tokens_per_s / report.single.tokens_per_s.max(1e-9)
                ),
            ]);
        }
        table.print();
        println!(
            "{} preset, {} layers in {} stages over loopback; {:.1} MiB of streams and gradients \
             a step; overhead {:.0}% of a pipelined step; same losses bit for bit: {}",
            report.preset,
            layers,
            self.stages,
            report.stream_bytes_per_step as f64 / (1 << 20) as f64,
            100.0 * report.overhead_share,
            report.same_losses
        );
        for s in &report.servers {
            println!(
                "server {}: peak RSS {} (model file {:.1} MiB)",
                s.layers,
                s.peak_rss_bytes.map_or("-".into(), |b| format!(
                    "{:.1} MiB",
                    b as f64 / (1 << 20) as f64
                )),
                model_bytes as f64 / (1 << 20) as f64
            );
        }
        if let Some(path) = &self.json {
            write_json(path, &report)?;
        }
        Ok(ExitCode::SUCCESS)
    }
}
