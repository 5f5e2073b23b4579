use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use cohort_model::data::TokenData;
use cohort_model::train::{TrainConfig, Trainer, evaluate};
use cohort_model::{LanguageModel, Lora, LoraConfig};
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
    /// The most memory resident at once during training (VmHWM, from the first step on:
    /// weights, optimiser state, activations); absent where /proc is not available.
    #[serde(skip_serializing_if = "Option::is_none")]
    peak_rss_bytes: Option<u64>,
}

impl Args {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let (mut model, tok) = super::load(&self.dir)?;
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
        let measured = cohort_model::mem::reset_peak_rss();
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
        let peak = cohort_model::mem::peak_rss_bytes().filter(|_| measured);
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
            peak_rss_bytes: peak,
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
                "peak RSS",
            ]);
            t.row(vec![
                r.out.display().to_string(),
                r.trainable.to_string(),
                format!("{:.4}", r.base_val_loss),
                format!("{:.4}", r.val_loss),
                format!("{:.2}", r.val_perplexity),
                format!("{:.0}", r.tokens_per_s),
                r.peak_rss_bytes
                    .map_or("-".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0)),
            ]);
            t.print();
        }
        Ok(ExitCode::SUCCESS)
    }
}
