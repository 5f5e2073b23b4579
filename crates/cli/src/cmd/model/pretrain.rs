use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use candle_core::Device;
use cohort_model::data::TokenData;
use cohort_model::train::{TrainConfig, Trainer, evaluate};
use cohort_model::{Gpt, GptConfig, LanguageModel, Tokenizer};
use serde::Serialize;

use crate::output::{Table, print_json};

/// Train a GPT-2-style model from scratch on a text file and write it (config.json,
/// model.safetensors, tokenizer, trainer state to resume) to a directory.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The training text (the last `--val-fraction` is held out).
    #[arg(long)]
    corpus: PathBuf,
    /// Model size: test, tiny, reference, small, medium.
    #[arg(long, default_value = "tiny")]
    preset: String,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Tokeniser: chars (the corpus's alphabet) or bytes.
    #[arg(long, default_value = "chars")]
    tokenizer: String,
    /// Optimiser steps.
    #[arg(long, default_value_t = 1000)]
    steps: usize,
    /// Sequences per micro-batch.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Tokens per sequence (default: the model's context).
    #[arg(long)]
    seq_len: Option<usize>,
    /// Micro-batches per step (gradient accumulation).
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    /// Peak learning rate (cosine decay to a tenth after warm-up).
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Warm-up steps.
    #[arg(long, default_value_t = 100)]
    warmup: usize,
    /// Seed for initialisation and data sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Fraction of the corpus held out for evaluation.
    #[arg(long, default_value_t = 0.1)]
    val_fraction: f64,
    /// Evaluate every N steps (0: only at the end).
    #[arg(long, default_value_t = 0)]
    eval_every: usize,
    /// Continue the run saved in --out (weights, optimiser, data sampler) up to --steps.
    #[arg(long)]
    resume: bool,
    /// Print the result as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    out: PathBuf,
    params: usize,
    steps: usize,
    train_loss: f64,
    val_loss: f64,
    val_perplexity: f64,
    tokens_per_s: f64,
    seconds: f64,
}

impl Args {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let text = super::read_text(&self.corpus)?;
        let dev = Device::Cpu;
        let (model, tok, mut trainer) = if self.resume {
            let (model, tok) = super::load_gpt(&self.out)?;
            let t = Trainer::load_state(&model, &self.out)
                .with_context(|| format!("resuming {}", self.out.display()))?;
            (model, tok, t)
        } else {
            let tok = match self.tokenizer.as_str() {
                "chars" => Tokenizer::chars_of(&text),
                "bytes" => Tokenizer::Bytes,
                other => anyhow::bail!("--tokenizer: unknown `{other}` (chars, bytes)"),
            };
            let config = GptConfig::preset(&self.preset, tok.vocab_size())?;
            let model = Gpt::new(config, self.seed, &dev)?;
            let seq = self.seq_len.unwrap_or(model.config.n_positions);
            let mut tc = TrainConfig::new(self.batch, seq);
            tc.grad_accum = self.grad_accum;
            tc.seed = self.seed;
            tc.optim.lr = self.lr;
            tc.optim.min_lr = self.lr / 10.0;
            tc.optim.warmup_steps = self.warmup;
            tc.optim.total_steps = self.steps;
            let t = Trainer::new(&model, tc)?;
            (model, tok, t)
        };
        let ids = tok
            .encode(&text)
            .with_context(|| format!("tokenising {}", self.corpus.display()))?;
        let data = TokenData::split(ids, self.val_fraction);
        let seq = trainer.config.seq_len;
        let bar = super::train_bar(
            self.steps.saturating_sub(trainer.step_count()) as u64,
            self.json,
        );
        let start = Instant::now();
        let mut tokens = 0usize;
        let mut recent = Vec::new();
        while trainer.step_count() < self.steps {
            let s = trainer.step(&model, &data)?;
            tokens += s.tokens;
            recent.push(s.loss);
            if recent.len() > 20 {
                recent.remove(0);
            }
            let tps = tokens as f64 / start.elapsed().as_secs_f64();
            bar.set_message(format!(
                "loss {:.4} lr {:.2e} {:.0} tok/s",
                s.loss, s.lr, tps
            ));
            bar.inc(1);
            if self.eval_every > 0 && s.step % self.eval_every == 0 {
                let e = evaluate(&model, &data.val, self.batch, seq, 64)?;
                bar.println(format!(
                    "step {}: val loss {:.4} perplexity {:.2}",
                    s.step, e.loss, e.perplexity
                ));
            }
        }
        bar.finish_and_clear();
        let seconds = start.elapsed().as_secs_f64();
        model.save(&self.out)?;
        tok.save(&self.out)?;
        trainer.save_state(&model, &self.out)?;
        let e = evaluate(&model, &data.val, self.batch, seq, 256)?;
        let r = Report {
            out: self.out.clone(),
            params: model.config.n_params(),
            steps: trainer.step_count(),
            train_loss: recent.iter().sum::<f64>() / recent.len().max(1) as f64,
            val_loss: e.loss,
            val_perplexity: e.perplexity,
            tokens_per_s: tokens as f64 / seconds.max(1e-9),
            seconds,
        };
        if self.json {
            print_json(&r)?;
        } else {
            let mut t = Table::new(&[
                "model",
                "params",
                "steps",
                "train loss",
                "val loss",
                "val ppl",
                "tokens/s",
            ]);
            t.row(vec![
                r.out.display().to_string(),
                r.params.to_string(),
                r.steps.to_string(),
                format!("{:.4}", r.train_loss),
                format!("{:.4}", r.val_loss),
                format!("{:.2}", r.val_perplexity),
                format!("{:.0}", r.tokens_per_s),
            ]);
            t.print();
        }
        Ok(ExitCode::SUCCESS)
    }
}
