use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use cohort_model::data::TokenData;
use cohort_model::train::{TrainConfig, Trainer, evaluate};
use cohort_model::{Gpt, LanguageModel, Lora, LoraConfig, Tokenizer};
use serde::Serialize;

use crate::output::{Table, print_json};

/// Fine-tune a LoRA adapter on a text file; writes adapter_config.json and
/// adapter_model.safetensors (Hugging Face PEFT's format) to --out.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The base model directory.
    dir: PathBuf,
    /// The fine-tuning text (the last --val-fraction is held out).
    #[arg(long)]
    data: PathBuf,
    /// Where to write the adapter.
    #[arg(long)]
    out: PathBuf,
    /// Rank.
    #[arg(long, default_value_t = 8)]
    rank: usize,
    /// Scale numerator (the update is multiplied by alpha / rank).
    #[arg(long, default_value_t = 16.0)]
    alpha: f64,
    /// Dropout probability on the adapter's input while training (PEFT's lora_dropout).
    #[arg(long, default_value_t = 0.0)]
    dropout: f64,
    /// Modules to adapt (comma-separated; GPT: c_attn, c_proj, c_fc; or all-linear).
    #[arg(long, default_value = "all-linear", value_delimiter = ',')]
    targets: Vec<String>,
    /// Optimiser steps.
    #[arg(long, default_value_t = 200)]
    steps: usize,
    /// Sequences per batch.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Seed for the adapter's initialisation and the data sampler.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Fraction of the text held out for evaluation.
    #[arg(long, default_value_t = 0.1)]
    val_fraction: f64,
    /// Copy the base weights into memory instead of reading them in place from the
    /// memory-mapped model.safetensors. Mapping is the default for GPT directories (whose LoRA
    /// training and evaluation run on the mapping directly); Llama-family bases are always
    /// copied.
    #[arg(long)]
    no_mmap: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Attaches the adapter saved in `dir` to `model`.
pub fn attach_saved(model: &mut dyn LanguageModel, dir: &Path) -> anyhow::Result<()> {
    let linears = model.linear_modules();
    let w = model.weights_mut();
    w.lora = Some(
        Lora::load(&mut w.params, &linears, dir)
            .with_context(|| format!("loading adapter {}", dir.display()))?,
    );
    Ok(())
}

#[derive(Debug, Serialize)]
struct Report {
    out: PathBuf,
    trainable: usize,
    base_val_loss: f64,
    val_loss: f64,
    val_perplexity: f64,
    tokens_per_s: f64,
    /// Whether the frozen base is read in place from the memory-mapped checkpoint.
    base_mapped: bool,
    /// Bytes of base weights read in place from the mapping, and copied (all of them without
    /// mapping; with it, tensors that are not f32 or not 4-byte aligned in the file).
    base_mapped_bytes: usize,
    base_copied_bytes: usize,
    /// The most memory resident at once during training (VmHWM, from the first step on:
    /// weights, optimiser state, activations); absent where /proc is not available.
    #[serde(skip_serializing_if = "Option::is_none")]
    peak_rss_bytes: Option<u64>,
    /// The largest anonymous (heap: copied weights, optimiser state, activations) and
    /// file-backed (code, mapped weights) resident memory seen during training (RssAnon and
    /// RssFile polled every 5 ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    peak_rss_anon_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    peak_rss_file_bytes: Option<u64>,
    /// The process's peak resident memory from its start to the end of training, loading
    /// included (VmHWM before the training phase's reset, or after it if higher).
    #[serde(skip_serializing_if = "Option::is_none")]
    process_peak_rss_bytes: Option<u64>,
}

/// The base model for fine-tuning and evaluation: a GPT or Llama-family model with its
/// weights memory-mapped unless `no_mmap`, anything else copied. Returns the model, its
/// tokeniser, and whether it is mapped.
pub(super) fn load_base(
    dir: &Path,
    no_mmap: bool,
) -> anyhow::Result<(Box<dyn LanguageModel>, Tokenizer, bool)> {
    let kind = cohort_model::checkpoint::model_type(dir)
        .with_context(|| format!("loading model {}", dir.display()))?;
    let cpu = candle_core::Device::Cpu;
    let (model, vocab): (Box<dyn LanguageModel>, usize) = match kind.as_str() {
        _ if no_mmap => {
            let (m, t) = super::load(dir)?;
            return Ok((m, t, false));
        }
        "gpt2" => {
            let m = Gpt::load_mapped(dir, &cpu)
                .with_context(|| format!("mapping model {}", dir.display()))?;
            let v = m.config.vocab_size;
            (Box::new(m), v)
        }
        "llama" | "qwen2" | "mistral" => {
            let m = cohort_model::Llama::load_mapped(dir, &cpu)
                .with_context(|| format!("mapping model {}", dir.display()))?;
            let v = m.config.vocab_size;
            (Box::new(m), v)
        }
        _ => {
            let (m, t) = super::load(dir)?;
            return Ok((m, t, false));
        }
    };
    let tok = super::load_tokenizer(dir, vocab)?;
    Ok((model, tok, true))
}

impl Args {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let (mut model, tok, mapped) = load_base(&self.dir, self.no_mmap)?;
        let (base_mapped_bytes, base_copied_bytes) = match &model.weights().frozen {
            Some(f) => (f.stats().mapped_bytes, f.stats().copied_bytes),
            None => (0, 4 * model.weights().total_len()),
        };
        let text = super::read_text(&self.data)?;
        let ids = tok
            .encode(&text)
            .with_context(|| format!("tokenising {}", self.data.display()))?;
        let data = TokenData::split(ids, self.val_fraction);
        let seq = model.max_context().min(256);
        let base = evaluate(model.as_ref(), &data.val, self.batch, seq, 64)?;
        let targets: Vec<&str> = self.targets.iter().map(String::as_str).collect();
        let mut cfg = LoraConfig::new(self.rank, self.alpha, &targets).with_dropout(self.dropout);
        cfg.base_model_name_or_path = Some(self.dir.display().to_string());
        let linears = model.linear_modules();
        let w = model.weights_mut();
        w.lora = Some(Lora::attach(&mut w.params, &linears, cfg, self.seed)?);
        let mut tc = TrainConfig::new(self.batch, seq);
        tc.seed = self.seed;
        tc.optim.lr = self.lr;
        tc.optim.min_lr = self.lr / 10.0;
        tc.optim.warmup_steps = (self.steps / 10).max(1);
        tc.optim.total_steps = self.steps;
        tc.optim.weight_decay = 0.0;
        let mut trainer = Trainer::new(model.as_ref(), tc)?;
        let bar = super::train_bar(self.steps as u64, self.json);
        let start = Instant::now();
        let mut tokens = 0;
        let before = cohort_model::mem::peak_rss_bytes();
        let sampler = cohort_model::mem::MemorySampler::start(Duration::from_millis(5));
        for _ in 0..self.steps {
            let s = trainer.step(model.as_ref(), &data)?;
            tokens += s.tokens;
            bar.set_message(format!(
                "loss {:.4} {:.0} tok/s",
                s.loss,
                tokens as f64 / start.elapsed().as_secs_f64()
            ));
            bar.inc(1);
        }
        bar.finish_and_clear();
        let tps = tokens as f64 / start.elapsed().as_secs_f64().max(1e-9);
        let peaks = sampler.map(|s| s.finish());
        let e = evaluate(model.as_ref(), &data.val, self.batch, seq, 64)?;
        let lora = model.weights().lora.as_ref().context("adapter vanished")?;
        lora.save(model.params(), &self.out)?;
        let r = Report {
            out: self.out.clone(),
            trainable: model.params().trainable_len(),
            base_val_loss: base.loss,
            val_loss: e.loss,
            val_perplexity: e.perplexity,
            tokens_per_s: tps,
            base_mapped: mapped,
            base_mapped_bytes,
            base_copied_bytes,
            peak_rss_bytes: peaks.map(|p| p.peak_rss_bytes),
            peak_rss_anon_bytes: peaks.map(|p| p.peak_rss_anon_bytes),
            peak_rss_file_bytes: peaks.map(|p| p.peak_rss_file_bytes),
            process_peak_rss_bytes: before.zip(peaks).map(|(b, p)| b.max(p.peak_rss_bytes)),
        };
        if self.json {
            print_json(&r)?;
        } else {
            let mut t = Table::new(&[
                "adapter",
                "trainable",
                "base val loss",
                "val loss",
                "val ppl",
                "tokens/s",
                "base",
                "peak RSS",
                "anon",
                "file",
            ]);
            t.row(vec![
                r.out.display().to_string(),
                r.trainable.to_string(),
                format!("{:.4}", r.base_val_loss),
                format!("{:.4}", r.val_loss),
                format!("{:.2}", r.val_perplexity),
                format!("{:.0}", r.tokens_per_s),
                if r.base_mapped { "mapped" } else { "copied" }.into(),
                mib(r.peak_rss_bytes),
                mib(r.peak_rss_anon_bytes),
                mib(r.peak_rss_file_bytes),
            ]);
            t.print();
        }
        Ok(ExitCode::SUCCESS)
    }
}

fn mib(b: Option<u64>) -> String {
    b.map_or("-".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0))
}
