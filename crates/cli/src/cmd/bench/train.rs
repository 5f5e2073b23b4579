use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use cohort_core::SplitMix64;
use cohort_model::data::sample_batch;
use cohort_model::train::{TrainConfig, Trainer};
use cohort_model::{Gpt, GptConfig, LanguageModel, Lora, LoraConfig};
use serde::{Deserialize, Serialize};

use crate::args::int_in;

use crate::output::{Table, write_json};

/// Training throughput of the reference model (GPT decoder, vocabulary 65, context 128,
/// d_model 256, 4 layers, 4 heads, MLP 4x, batch 16, AdamW, f32): full training and LoRA
/// rank 8 on every linear layer, against this machine's f32 matmul peak; with --torch, the
/// same model in PyTorch (bench/torch_reference.py) back to back in the same run.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Write the results here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Timed steps per mode, in [1, 100000] (the median step time is reported).
    #[arg(long, default_value_t = 10, value_parser = int_in(1..=100_000usize))]
    steps: usize,
    /// Untimed warm-up steps per mode, in [0, 100000].
    #[arg(long, default_value_t = 3, value_parser = int_in(0..=100_000usize))]
    warmup: usize,
    /// Sequences per batch, in [1, 4096].
    #[arg(long, default_value_t = 16, value_parser = int_in(1..=4096usize))]
    batch: usize,
    /// Model preset (the benchmark is defined on `reference`; `test` makes a quick smoke run).
    #[arg(long, default_value = "reference", hide = true,
          value_parser = ["test", "tiny", "reference", "small", "medium"])]
    preset: String,
    /// LoRA rank, in [1, 4096] and at most the model's width.
    #[arg(long, default_value_t = 8, value_parser = int_in(1..=4096usize))]
    rank: usize,
    /// Also run bench/torch_reference.py with this Python (e.g. `python3`) right after, and
    /// report the ratio.
    #[arg(long)]
    torch: Option<String>,
    /// Also time candle's autograd (instead of the hand-written backward pass), to show what
    /// the latter buys.
    #[arg(long)]
    autograd: bool,
    /// Threads for both engines (default: rayon's pool, one per core; the benchmark is defined
    /// at 2). One thread compares the engines' per-core efficiency, which a shared machine
    /// disturbs far less than two threads' synchronisation. In [1, 1024].
    #[arg(long, value_parser = int_in(1..=1024usize))]
    threads: Option<usize>,
    /// The PyTorch script.
    #[arg(long, default_value = "bench/torch_reference.py")]
    torch_script: PathBuf,
}

#[derive(Debug, Serialize)]
struct Results {
    model: String,
    batch: usize,
    seq_len: usize,
    threads: usize,
    steps: usize,
    full_tokens_per_s: f64,
    lora_tokens_per_s: f64,
    full_step_ms: f64,
    lora_step_ms: f64,
    matmul_peak_gflops: f64,
    full_gflops: f64,
    lora_gflops: f64,
    full_fraction_of_peak: f64,
    lora_fraction_of_peak: f64,
    load_average_1m: Option<f64>,
    /// The most memory resident at once while training the full model (VmHWM over its timed
    /// and warm-up steps: weights, optimiser state, activations), and under LoRA.
    #[serde(skip_serializing_if = "Option::is_none")]
    full_peak_rss_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lora_peak_rss_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    autograd_full_tokens_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    autograd_lora_tokens_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    torch: Option<TorchResults>,
    #[serde(skip_serializing_if = "Option::is_none")]
    full_ratio_to_torch: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lora_ratio_to_torch: Option<f64>,
}

#[derive(Debug, Serialize, Deserialize)]
struct TorchResults {
    torch_version: String,
    threads: usize,
    full_tokens_per_s: f64,
    lora_tokens_per_s: f64,
    #[serde(default)]
    matmul_peak_gflops: Option<f64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median seconds per training step of `model` after `warmup` steps.
fn time_steps(
    model: &Gpt,
    batch: usize,
    seq: usize,
    warmup: usize,
    steps: usize,
    autograd: bool,
) -> anyhow::Result<f64> {
    Ok(time_steps_rss(model, batch, seq, warmup, steps, autograd)?.0)
}

/// [`time_steps`] and the peak resident memory over the steps (None without /proc). The
/// hand-written path's kept activation buffers are released first, so each mode's peak is its
/// own.
fn time_steps_rss(
    model: &Gpt,
    batch: usize,
    seq: usize,
    warmup: usize,
    steps: usize,
    autograd: bool,
) -> anyhow::Result<(f64, Option<u64>)> {
    cohort_model::fast::release_buffers();
    let measured = cohort_model::mem::reset_peak_rss();
    let mut cfg = TrainConfig::new(batch, seq);
    cfg.autograd_only = autograd;
    cfg.optim.warmup_steps = 1;
    let mut t = Trainer::new(model, cfg)?;
    let mut rng = SplitMix64::new(1);
    let tokens: Vec<u32> = (0..100_000).map(|_| rng.below(65) as u32).collect();
    let mut times = Vec::new();
    for i in 0..warmup + steps {
        let b = sample_batch(&tokens, batch, seq, &mut rng, &Device::Cpu)?;
        let s = Instant::now();
        t.step_on(model, &[b])?;
        if i >= warmup {
            times.push(s.elapsed().as_secs_f64());
        }
    }
    let peak = cohort_model::mem::peak_rss_bytes().filter(|_| measured);
    Ok((median(times), peak))
}

/// Best of five 2048x2048 f32 matmuls, in GFLOP/s.
fn matmul_peak() -> anyhow::Result<f64> {
    let n = 2048;
    let mut rng = SplitMix64::new(2);
    let a = Tensor::from_vec(rng.normal_vec(n * n, 1.0), (n, n), &Device::Cpu)?;
    let b = Tensor::from_vec(rng.normal_vec(n * n, 1.0), (n, n), &Device::Cpu)?;
    let mut best = f64::MAX;
    for _ in 0..6 {
        let s = Instant::now();
        let c = a.matmul(&b)?;
        let _ = c.dtype() == DType::F32;
        best = best.min(s.elapsed().as_secs_f64());
    }
    Ok(2.0 * (n as f64).powi(3) / best / 1e9)
}

fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

impl Args {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        if let Some(p) = &self.json {
            crate::args::check_output_file(p, "--json")?;
        }
        if self.torch.is_some() && !self.torch_script.is_file() {
            anyhow::bail!(
                "--torch-script {}: no such file (run from the repository root or pass the \
                 script's path)",
                self.torch_script.display()
            );
        }
        match self.threads {
            Some(n) => rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .context("building the thread pool")?
                .install(|| self.run()),
            None => self.run(),
        }
    }

    fn run(&self) -> anyhow::Result<ExitCode> {
        let load = load_average();
        let cfg = GptConfig::preset(&self.preset, 65)?;
        let seq = cfg.n_positions;
        let dev = Device::Cpu;
        let full = Gpt::new(cfg.clone(), 0, &dev)?;
        let (full_s, full_rss) =
            time_steps_rss(&full, self.batch, seq, self.warmup, self.steps, false)?;
        let mut lora = Gpt::new(cfg.clone(), 0, &dev)?;
        let linears = lora.linear_modules();
        let w = lora.weights_mut();
        w.lora = Some(
            Lora::attach(
                &mut w.params,
                &linears,
                LoraConfig::new(self.rank, 2.0 * self.rank as f64, &["all-linear"]),
                0,
            )
            .context("--rank")?,
        );
        let lora_params: usize = lora.params().trainable_len();
        drop(full);
        let (lora_s, lora_rss) =
            time_steps_rss(&lora, self.batch, seq, self.warmup, self.steps, false)?;
        let full = Gpt::new(cfg.clone(), 0, &dev)?;
        let tok = (self.batch * seq) as f64;
        let (auto_full, auto_lora) = if self.autograd {
            (
                Some(tok / time_steps(&full, self.batch, seq, self.warmup, self.steps, true)?),
                Some(tok / time_steps(&lora, self.batch, seq, self.warmup, self.steps, true)?),
            )
        } else {
            (None, None)
        };
        let peak = matmul_peak()?;
        let full_flops = cfg.train_flops_per_token(seq);
        // LoRA: no weight gradients for the frozen base (4N instead of 6N), plus the adapters.
        let n_matmul = (full_flops - 12.0 * (cfg.n_layer * seq * cfg.n_embd) as f64) / 6.0;
        let lora_flops = 4.0 * n_matmul
            + 12.0 * (cfg.n_layer * seq * cfg.n_embd) as f64
            + 6.0 * lora_params as f64;
        let (full_tps, lora_tps) = (tok / full_s, tok / lora_s);
        let torch = match &self.torch {
            Some(py) => Some(self.run_torch(py)?),
            None => None,
        };
        let r = Results {
            model: format!(
                "gpt vocab {}, ctx {}, d {}, {} layers, {} heads, mlp 4x, f32",
                cfg.vocab_size, cfg.n_positions, cfg.n_embd, cfg.n_layer, cfg.n_head
            ),
            batch: self.batch,
            seq_len: seq,
            threads: rayon::current_num_threads(),
            steps: self.steps,
            full_tokens_per_s: full_tps,
            lora_tokens_per_s: lora_tps,
            full_step_ms: full_s * 1e3,
            lora_step_ms: lora_s * 1e3,
            matmul_peak_gflops: peak,
            full_gflops: full_tps * full_flops / 1e9,
            lora_gflops: lora_tps * lora_flops / 1e9,
            full_fraction_of_peak: full_tps * full_flops / 1e9 / peak,
            lora_fraction_of_peak: lora_tps * lora_flops / 1e9 / peak,
            load_average_1m: load,
            full_peak_rss_bytes: full_rss,
            lora_peak_rss_bytes: lora_rss,
            autograd_full_tokens_per_s: auto_full,
            autograd_lora_tokens_per_s: auto_lora,
            full_ratio_to_torch: torch.as_ref().map(|t| full_tps / t.full_tokens_per_s),
            lora_ratio_to_torch: torch.as_ref().map(|t| lora_tps / t.lora_tokens_per_s),
            torch,
        };
        let mut t = Table::new(&[
            "engine", "mode", "tokens/s", "step ms", "GFLOP/s", "of peak",
        ]);
        t.row(vec![
            "cohort (candle)".into(),
            "full".into(),
            format!("{full_tps:.0}"),
            format!("{:.1}", r.full_step_ms),
            format!("{:.1}", r.full_gflops),
            format!("{:.0}%", 100.0 * r.full_fraction_of_peak),
        ]);
        t.row(vec![
            "cohort (candle)".into(),
            format!("lora r{}", self.rank),
            format!("{lora_tps:.0}"),
            format!("{:.1}", r.lora_step_ms),
            format!("{:.1}", r.lora_gflops),
            format!("{:.0}%", 100.0 * r.lora_fraction_of_peak),
        ]);
        for (mode, tps, flops) in [
            ("full", auto_full, full_flops),
            ("lora", auto_lora, lora_flops),
        ] {
            if let Some(tps) = tps {
                t.row(vec![
                    "cohort (candle autograd)".into(),
                    mode.into(),
                    format!("{tps:.0}"),
                    format!("{:.1}", tok / tps * 1e3),
                    format!("{:.1}", tps * flops / 1e9),
                    format!("{:.0}%", 100.0 * tps * flops / 1e9 / peak),
                ]);
            }
        }
        if let Some(tr) = &r.torch {
            t.row(vec![
                format!("pytorch {}", tr.torch_version),
                "full".into(),
                format!("{:.0}", tr.full_tokens_per_s),
                format!("{:.1}", tok / tr.full_tokens_per_s * 1e3),
                format!("{:.1}", tr.full_tokens_per_s * full_flops / 1e9),
                format!(
                    "{:.0}%",
                    100.0 * tr.full_tokens_per_s * full_flops / 1e9 / peak
                ),
            ]);
            t.row(vec![
                format!("pytorch {}", tr.torch_version),
                format!("lora r{}", self.rank),
                format!("{:.0}", tr.lora_tokens_per_s),
                format!("{:.1}", tok / tr.lora_tokens_per_s * 1e3),
                format!("{:.1}", tr.lora_tokens_per_s * lora_flops / 1e9),
                format!(
                    "{:.0}%",
                    100.0 * tr.lora_tokens_per_s * lora_flops / 1e9 / peak
                ),
            ]);
        }
        t.print();
        outln!(
            "matmul peak (2048^2 f32, candle): {peak:.0} GFLOP/s; threads {}; load average {}",
            r.threads,
            load.map_or("?".into(), |l| format!("{l:.2}"))
        );
        if let (Some(f), Some(l)) = (r.full_peak_rss_bytes, r.lora_peak_rss_bytes) {
            outln!(
                "peak resident memory while training: full {:.0} MiB, LoRA {:.0} MiB",
                f as f64 / 1048576.0,
                l as f64 / 1048576.0
            );
        }
        if let (Some(f), Some(l)) = (r.full_ratio_to_torch, r.lora_ratio_to_torch) {
            outln!("ratio to PyTorch: full {f:.2}x, LoRA {l:.2}x");
        }
        if let Some(p) = &self.json {
            write_json(p, &r)?;
        }
        Ok(ExitCode::SUCCESS)
    }

    fn run_torch(&self, python: &str) -> anyhow::Result<TorchResults> {
        let out = tempfile::NamedTempFile::new()?;
        let status = Command::new(python)
            .arg(&self.torch_script)
            .args([
                "--steps",
                &self.steps.to_string(),
                "--warmup",
                &self.warmup.to_string(),
            ])
            .args([
                "--batch",
                &self.batch.to_string(),
                "--rank",
                &self.rank.to_string(),
            ])
            .args(["--threads", &rayon::current_num_threads().to_string()])
            .arg("--json")
            .arg(out.path())
            .status()
            .with_context(|| format!("running {python} {}", self.torch_script.display()))?;
        if !status.success() {
            anyhow::bail!("{} exited with {status}", self.torch_script.display());
        }
        let s = std::fs::read_to_string(out.path())?;
        serde_json::from_str(&s)
            .with_context(|| format!("parsing the output of {}", self.torch_script.display()))
    }
}
