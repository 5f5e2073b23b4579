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
use cohort_model::{Gpt, GptConfig, LanguageModel, Llama, LlamaConfig, Lora, LoraConfig};
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
    /// A model directory (a GPT from `cohort model pretrain`, or a Llama-family one) to train
    /// the adapter of, instead of a fresh `--preset` model with random weights: with `--data`,
    /// the losses (and what compression costs) are those of a model that learns.
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// A text file to train on, tokenised with `--model`'s tokeniser (the last tenth held
    /// back); without it, uniformly random tokens.
    #[arg(long, value_name = "FILE", requires = "model")]
    data: Option<PathBuf>,
    /// Model preset: a GPT (`tiny`: 4 layers of width 128; `reference`: width 256; `medium`:
    /// GPT-2's 85M), or `smollm2-135m`, a Llama of SmolLM2-135M's shape (30 layers of width
    /// 576, grouped-query attention, 49,152 tokens, tied head), random weights in f32.
    #[arg(long, default_value = "tiny", conflicts_with = "model",
          value_parser = ["test", "tiny", "reference", "small", "medium", SMOLLM2])]
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
    /// How the pipeline's streams and gradients travel: `none` (f32), `int8`, `int4`,
    /// `int5-3` or `qF/B[s][c][r][k]` (docs/pipeline.md; `k` needs the model's stream bases,
    /// `cohort model calibrate`).
    #[arg(long, default_value = "none", value_parser = crate::cmd::model::stage_compression)]
    compress: String,
    /// Seed of the adapter's initialisation and of the batches drawn (both modes use it).
    #[arg(long, default_value_t = 3)]
    seed: u64,
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
    /// Peak resident memory (VmHWM).
    peak_rss_bytes: Option<u64>,
    /// The model file's pages resident in the process at the end (its share of the weights,
    /// mapped; pages only come in while it serves).
    weights_resident_bytes: Option<u64>,
    /// Peak anonymous memory (activations kept for the backward, buffers, the runtime),
    /// sampled every few milliseconds.
    peak_anon_bytes: Option<u64>,
    /// `k / L` of the model file: the share of the weights its layers are.
    weights_share_bytes: u64,
    /// The bound: `1.2 × k / L × model bytes` plus the fixed overhead (the peak
    /// resident memory of a server holding no layers), with activation memory on top
    /// (`peak_anon_bytes` above the baseline's).
    bound_bytes: Option<u64>,
    /// Whether the peak resident memory, less its activation memory, is within the bound.
    within_bound: Option<bool>,
}

/// The memory of a process: peak resident, and anonymous now (from /proc/PID/status).
#[derive(Debug, Clone, Copy, Default, Serialize)]
struct Memory {
    peak_rss_bytes: u64,
    anon_bytes: u64,
    file_bytes: u64,
}

#[derive(Debug, Serialize)]
struct Report {
    /// The preset, or the model directory given.
    preset: String,
    /// The text trained on (`None`: random tokens).
    data: Option<String>,
    layers: usize,
    model_bytes: u64,
    batch: usize,
    seq_len: usize,
    rank: usize,
    seed: u64,
    single: Mode,
    pipeline: Mode,
    /// Pipelined tokens/s over single-process tokens/s.
    ratio: f64,
    /// The share of a pipelined step not spent computing: (pipelined - single) / pipelined.
    overhead_share: f64,
    /// How the pipeline's streams travelled (`none`, `int8`).
    compress: String,
    /// Stream and gradient bytes a step sends and receives, all stages together, as sent,
    /// and as the uncompressed (f32) pipeline sends them (every stream and gradient but the
    /// gradient of the first stage's input: the embeddings are frozen).
    stream_bytes_per_step: u64,
    f32_stream_bytes_per_step: u64,
    same_losses: bool,
    /// The pipeline's mean loss over the last tenth of the steps against one process's,
    /// relative (0 when the losses are the same).
    final_loss_gap: f64,
    /// A server holding no layers, after answering a call: the fixed overhead of the process.
    baseline: Option<Memory>,
    servers: Vec<Server>,
    /// The client's resident share of the model file after the pipelined steps (it computes
    /// the embeddings and the head only).
    client_weights_resident_bytes: Option<u64>,
}

const MIB: f64 = (1u64 << 20) as f64;

/// A server process, killed when dropped.
pub(super) struct Proc(pub(super) Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The memory of process `pid` (a number, or `self`), where /proc tells.
fn memory(pid: &str) -> Option<Memory> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = s.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    };
    Some(Memory {
        peak_rss_bytes: field("VmHWM:")?,
        anon_bytes: field("RssAnon:")?,
        file_bytes: field("RssFile:")?,
    })
}

/// The resident bytes of process `pid`'s mappings of `file` (from /proc/PID/smaps).
fn resident_of(pid: &str, file: &std::path::Path) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let file = file.to_str()?;
    let mut inside = false;
    let mut total = 0u64;
    for line in s.lines() {
        let first = line.split_whitespace().next().unwrap_or_default();
        if first.contains('-') && !first.ends_with(':') {
            // A mapping's header: range, perms, offset, device, inode, path.
            inside = line.split_whitespace().nth(5) == Some(file);
        } else if inside && let Some(kb) = line.strip_prefix("Rss:") {
            total += kb
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()?
                * 1024;
        }
    }
    Some(total)
}

/// Samples the anonymous memory of processes every few milliseconds until dropped; their
/// peaks come back from [`Watch::peaks`].
struct Watch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<Option<u64>>>>,
}

impl Watch {
    fn start(pids: Vec<u32>) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peaks: Vec<Option<u64>> = vec![None; pids.len()];
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                for (peak, pid) in peaks.iter_mut().zip(&pids) {
                    if let Some(m) = memory(&pid.to_string()) {
                        *peak = Some(peak.unwrap_or(0).max(m.anon_bytes));
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            peaks
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    fn peaks(mut self) -> Vec<Option<u64>> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Starts `cohort serve-layers DIR --layers R EXTRA` on a free loopback port (on `threads`
/// threads when given); its URL.
pub(super) fn start_server(
    exe: &std::path::Path,
    dir: &std::path::Path,
    r: &std::ops::Range<usize>,
    extra: &[&str],
    threads: Option<usize>,
) -> anyhow::Result<(Proc, String)> {
    let mut cmd = Command::new(exe);
    if let Some(n) = threads {
        cmd.env("RAYON_NUM_THREADS", n.to_string());
    }
    let mut child = cmd
        .args(["serve-layers"])
        .arg(dir)
        .args([
            "--layers",
            &format!("{}..{}", r.start, r.end),
            "--listen",
            "127.0.0.1:0",
            "--insecure",
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting a stage server")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("its output")?).read_line(&mut line)?;
    let proc = Proc(child);
    if !line.starts_with("serving layers") {
        bail!("a stage server did not start: {line:?}");
    }
    let addr = line.trim().rsplit(' ').next().unwrap_or_default();
    Ok((proc, format!("http://{addr}")))
}

/// The Llama-shaped preset.
const SMOLLM2: &str = "smollm2-135m";

/// SmolLM2-135M's shape (its `config.json` on the hub): 134.5M parameters.
fn smollm2_135m() -> LlamaConfig {
    let mut c = LlamaConfig::small("llama", 49_152, 576, 30, 9, 3);
    c.intermediate_size = 1536;
    c.tie_word_embeddings = true;
    c.rope_theta = Some(100_000.0);
    c.rms_norm_eps = 1e-5;
    c.max_position_embeddings = Some(8192);
    c
}

/// What the benchmark needs of a model's shape.
struct Shape {
    layers: usize,
    width: usize,
    context: usize,
    vocab: usize,
}

impl Shape {
    fn of(m: &dyn LanguageModel) -> Self {
        Self {
            layers: m.num_layers(),
            width: m.hidden_size(),
            context: m.max_context(),
            vocab: m.vocab_size(),
        }
    }
}

impl Args {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        // Before any work: the codec, the data reads and tokenises, the model loads.
        let codec = crate::cmd::model::compression(&self.compress)?;
        if cohort_net::stage::uses_stream_bases(codec) && self.model.is_none() {
            bail!(
                "--compress {}: sends activations in the model's stream bases, and a preset is \
                 written here with random weights and none: pass --model DIR, a model that \
                 `cohort model calibrate DIR --data FILE` gave its bases",
                self.compress
            );
        }
        let tmp = tempfile::tempdir().context("a temporary directory for the model")?;
        let (dir, cfg, text_tokens) = match &self.model {
            Some(d) => {
                let (m, tok) = crate::cmd::model::load_mapped(d)?;
                let tokens = match &self.data {
                    Some(f) => {
                        let text = std::fs::read_to_string(f)
                            .with_context(|| format!("reading {}", f.display()))?;
                        Some(
                            tok.encode(&text)
                                .with_context(|| format!("tokenising {}", f.display()))?,
                        )
                    }
                    None => None,
                };
                (d.clone(), Shape::of(&*m), tokens)
            }
            None if self.preset == SMOLLM2 => {
                let dir = tmp.path().join("model");
                eprintln!("bench pipeline: writing a {SMOLLM2}-shaped Llama with random weights");
                let m = Llama::new(smollm2_135m(), 1, &Device::Cpu)?;
                m.save_dir(&dir)?;
                (dir, Shape::of(&m), None)
            }
            None => {
                let cfg = GptConfig::preset(&self.preset, 65)?;
                let dir = tmp.path().join("model");
                let m = Gpt::new(cfg, 1, &Device::Cpu)?;
                m.save_dir(&dir)?;
                (dir, Shape::of(&m), None)
            }
        };
        let layers = cfg.layers;
        if self.stages > layers {
            bail!("--stages {}: the model has {layers} layers", self.stages,);
        }
        if self.rank > cfg.width {
            bail!("--rank {}: the model's width is {}", self.rank, cfg.width);
        }
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
            let (p, url) = start_server(&exe, &dir, r, &[], None)?;
            procs.push(p);
            urls.push(url);
        }
        // The fixed overhead: a server holding no layers, after it answered a call.
        let baseline = {
            let (p, url) = start_server(&exe, &dir, &(0..0), &[], None)?;
            let mut c = cohort_net::stage::StageClient::connect(
                &url,
                None,
                std::time::Duration::from_secs(30),
            )?;
            c.info()?;
            memory(&p.0.id().to_string())
        };
        let weights_file = dir
            .join("model.safetensors")
            .canonicalize()
            .context("the model file")?;
        let seq = cfg.context.min(128);
        let tokens = match text_tokens {
            Some(t) => t,
            None => {
                let mut r = SplitMix64::new(7);
                (0..200_000).map(|_| r.below(cfg.vocab) as u32).collect()
            }
        };
        if tokens.len() * 9 / 10 <= seq + 1 {
            bail!(
                "--data: {} tokens, too few for one window of {} in its first nine tenths",
                tokens.len(),
                seq + 1
            );
        }
        let data = TokenData::split(tokens, 0.1)?;
        let lora_cfg = LoraConfig::new(self.rank, 2.0 * self.rank as f64, &["all-linear"]);
        let make = || -> anyhow::Result<(Box<dyn LanguageModel>, Trainer)> {
            let mut m = cohort_model::load_mapped_any(&dir, &Device::Cpu)?;
            let linears = m.linear_modules();
            let w = m.weights_mut();
            w.lora = Some(Lora::attach(
                &mut w.params,
                &linears,
                lora_cfg.clone(),
                self.seed,
            )?);
            let mut tc = TrainConfig::new(self.batch, seq);
            tc.seed = self.seed;
            let t = Trainer::new(&*m, tc)?;
            Ok((m, t))
        };
        eprintln!(
            "bench pipeline: {} ({layers} layers), {} stages {ranges:?}, {} steps per mode",
            self.model
                .as_ref()
                .map_or(format!("{} preset", self.preset), |d| d
                    .display()
                    .to_string()),
            self.stages,
            self.steps
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
        // The pipeline first, so that the client's share of the model file is measured
        // before single-process training maps all of it.
        let watch = Watch::start(procs.iter().map(|p| p.0.id()).collect());
        let (pipeline, client_weights_resident_bytes, sent_bytes) = {
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
            let mut p = Pipeline::connect(&dials, &dir, layers, Some(&lora))?
                .with_compression(codec, &dir)?;
            let mode = time("pipeline", &mut || {
                let mut source = |x: &candle_core::Tensor,
                                  y: &candle_core::Tensor,
                                  key: Option<u64>|
                 -> cohort_model::Result<(f64, Vec<Vec<f32>>)> {
                    p.grads(&*m, x, y, key)
                        .map_err(|e| cohort_model::Error::Data(format!("{e:#}")))
                };
                Ok(t.step_with(&*m, &data, &mut source)?.loss)
            })?;
            let sent = p.stream_bytes();
            (mode, resident_of("self", &weights_file), sent)
        };
        let anon = watch.peaks();
        let (m, mut t) = make()?;
        let single = time("single process", &mut || Ok(t.step(&*m, &data)?.loss))?;
        let servers = ranges
            .iter()
            .zip(&procs)
            .zip(anon)
            .map(|((r, p), peak_anon_bytes)| {
                let pid = p.0.id().to_string();
                let peak_rss_bytes = memory(&pid).map(|m| m.peak_rss_bytes);
                let weights_share_bytes = model_bytes * r.len() as u64 / layers as u64;
                let bound_bytes =
                    baseline.map(|b| (1.2 * weights_share_bytes as f64) as u64 + b.peak_rss_bytes);
                // Activation memory: the anonymous peak above the baseline's.
                let activations = match (peak_anon_bytes, baseline) {
                    (Some(a), Some(b)) => Some(a.saturating_sub(b.anon_bytes)),
                    _ => None,
                };
                let within_bound = match (peak_rss_bytes, activations, bound_bytes) {
                    (Some(p), Some(a), Some(b)) => Some(p.saturating_sub(a) <= b),
                    _ => None,
                };
                Server {
                    layers: format!("{}..{}", r.start, r.end),
                    peak_rss_bytes,
                    weights_resident_bytes: resident_of(&pid, &weights_file),
                    peak_anon_bytes,
                    weights_share_bytes,
                    bound_bytes,
                    within_bound,
                }
            })
            .collect();
        // Per stage and step: the stream in and out, the gradient in and out (f32), but for
        // the gradient of the first stage's input, which frozen embeddings do not need and
        // the uncompressed pipeline does not send either.
        let stream = (self.batch * seq * cfg.width * 4) as u64;
        let report = Report {
            preset: self
                .model
                .as_ref()
                .map_or(self.preset.clone(), |d| d.display().to_string()),
            data: self.data.as_ref().map(|d| d.display().to_string()),
            layers,
            model_bytes,
            batch: self.batch,
            seq_len: seq,
            rank: self.rank,
            ratio: pipeline.tokens_per_s / single.tokens_per_s.max(1e-9),
            overhead_share: ((pipeline.seconds - single.seconds) / pipeline.seconds.max(1e-9))
                .max(0.0),
            compress: self.compress.clone(),
            seed: self.seed,
            stream_bytes_per_step: sent_bytes / self.steps as u64,
            f32_stream_bytes_per_step: (4 * self.stages as u64 - 1) * stream,
            same_losses: single.losses == pipeline.losses,
            final_loss_gap: {
                let tail = (self.steps / 10).max(1);
                let mean = |l: &[f64]| l[l.len() - tail..].iter().sum::<f64>() / tail as f64;
                let (a, b) = (mean(&single.losses), mean(&pipeline.losses));
                (b - a) / a.abs().max(1e-12)
            },
            single,
            pipeline,
            baseline,
            servers,
            client_weights_resident_bytes,
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
            "{}, {} layers in {} stages over loopback; {:.2} MiB of streams and gradients \
             a step ({}; {:.2} MiB as f32, {:.1}% fewer bytes); overhead {:.0}% of a pipelined \
             step; same losses bit for bit: {}; the last tenth's mean loss {:+.3}% against one \
             process's",
            match &self.model {
                Some(d) => d.display().to_string(),
                None => format!("{} preset", self.preset),
            },
            layers,
            self.stages,
            report.stream_bytes_per_step as f64 / (1 << 20) as f64,
            report.compress,
            report.f32_stream_bytes_per_step as f64 / (1 << 20) as f64,
            100.0
                * (1.0
                    - report.stream_bytes_per_step as f64
                        / report.f32_stream_bytes_per_step.max(1) as f64),
            100.0 * report.overhead_share,
            report.same_losses,
            100.0 * report.final_loss_gap
        );
        let mib = |b: Option<u64>| b.map_or("-".into(), |b| format!("{:.1}", b as f64 / MIB));
        let mut mem = Table::new(&[
            "server",
            "weights share MiB",
            "weights resident MiB",
            "peak anon MiB",
            "peak RSS MiB",
            "bound MiB",
            "within",
        ]);
        for s in &report.servers {
            mem.row(vec![
                s.layers.clone(),
                mib(Some(s.weights_share_bytes)),
                mib(s.weights_resident_bytes),
                mib(s.peak_anon_bytes),
                mib(s.peak_rss_bytes),
                mib(s.bound_bytes),
                s.within_bound.map_or("-".into(), |w| w.to_string()),
            ]);
        }
        mem.print();
        println!(
            "model file {:.1} MiB; a server holding no layers: peak RSS {} MiB (anon {} MiB); the \
             client's resident share of the model file: {} MiB; bound = 1.2 x share + the no-layer \
             server's peak, activation memory (peak anon above the no-layer server's) on top",
            model_bytes as f64 / MIB,
            mib(report.baseline.map(|b| b.peak_rss_bytes)),
            mib(report.baseline.map(|b| b.anon_bytes)),
            mib(report.client_weights_resident_bytes),
        );
        if let Some(path) = &self.json {
            write_json(path, &report)?;
        }
        Ok(ExitCode::SUCCESS)
    }
}
