use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use candle_core::Device;
use cohort_model::data::TokenData;
use cohort_model::train::{TrainConfig, Trainer, evaluate};
use cohort_model::{Gpt, GptConfig, LanguageModel, Tokenizer};
use serde::Serialize;

use crate::args::{float_in, int_in};
use crate::output::{Table, print_json};

/// Train a GPT-2-style model from scratch on a text file and write it (config.json,
/// model.safetensors, tokenizer, trainer state to resume) to a directory. The directory is
/// written whole at the end (through a staging directory beside it), never half.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The training text (the last `--val-fraction` is held out).
    #[arg(long)]
    corpus: PathBuf,
    /// Model size: test, tiny, reference, small, medium (default: tiny).
    #[arg(long, value_parser = ["test", "tiny", "reference", "small", "medium"])]
    preset: Option<String>,
    /// Output directory. An existing one that holds files is refused unless --resume (continue
    /// the run saved there) or --force (replace it).
    #[arg(long)]
    out: PathBuf,
    /// Replace what --out holds.
    #[arg(long, conflicts_with = "resume")]
    force: bool,
    /// Tokeniser: chars (the corpus's alphabet) or bytes (default: chars).
    #[arg(long, value_parser = ["chars", "bytes"])]
    tokenizer: Option<String>,
    /// Optimiser steps, in [1, 10000000] (with --resume: the total to reach).
    #[arg(long, default_value_t = 1000, value_parser = int_in(1..=10_000_000usize))]
    steps: usize,
    /// Sequences per micro-batch, in [1, 4096] (default: 16).
    #[arg(long, value_parser = int_in(1..=4096usize))]
    batch: Option<usize>,
    /// Tokens per sequence, in [1, the model's context] (default: the model's context).
    #[arg(long, value_parser = int_in(1..=1_048_576usize))]
    seq_len: Option<usize>,
    /// Micro-batches per step (gradient accumulation), in [1, 1024] (default: 1).
    #[arg(long, value_parser = int_in(1..=1024usize))]
    grad_accum: Option<usize>,
    /// Peak learning rate, in (0, 10] (cosine decay to a tenth after warm-up; default: 0.001).
    #[arg(long, value_parser = float_in(0.0..=10.0).open_start())]
    lr: Option<f64>,
    /// Warm-up steps, in [0, 10000000] (default: 100).
    #[arg(long, value_parser = int_in(0..=10_000_000usize))]
    warmup: Option<usize>,
    /// Seed for initialisation and data sampling (default: 0).
    #[arg(long)]
    seed: Option<u64>,
    /// Fraction of the corpus held out for evaluation, in (0, 1).
    #[arg(long, default_value_t = 0.1, value_parser = float_in(0.0..1.0).open_start())]
    val_fraction: f64,
    /// Evaluate every N steps, in [0, 10000000] (0: only at the end).
    #[arg(long, default_value_t = 0, value_parser = int_in(0..=10_000_000usize))]
    eval_every: usize,
    /// Without a terminal (CI, a pipe, a log file): a progress line (step, loss, tokens/s) on
    /// standard error every N steps, in [0, 10000000] (0: none; default: about 20 per run).
    /// With a terminal a progress bar is shown instead.
    #[arg(long, value_parser = int_in(0..=10_000_000u64))]
    log_every: Option<u64>,
    /// Continue the run saved in --out (weights, optimiser, data sampler) up to --steps. The
    /// model and training flags (--preset, --tokenizer, --batch, --seq-len, --grad-accum, --lr,
    /// --warmup, --seed) come from the saved run: given with another value, they are refused.
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
        if self.resume && !self.out.is_dir() {
            anyhow::bail!("--resume: {} holds no run to continue", self.out.display());
        }
        let staged = super::Staged::new(
            &self.out,
            "--out",
            self.resume || self.force,
            "pass --resume to continue the run saved there or --force to replace it",
        )?;
        let text = super::read_text(&self.corpus)?;
        let dev = Device::Cpu;
        let (model, tok, mut trainer) = if self.resume {
            let (model, tok) = super::load_gpt(&self.out)?;
            let t = Trainer::load_state(&model, &self.out)
                .with_context(|| format!("resuming {}", self.out.display()))?;
            self.check_resumed(&model, &tok, &t.config)?;
            (model, tok, t)
        } else {
            let tok = match self.tokenizer.as_deref() {
                Some("bytes") => Tokenizer::Bytes,
                _ => Tokenizer::chars_of(&text),
            };
            let preset = self.preset.as_deref().unwrap_or("tiny");
            let config = GptConfig::preset(preset, tok.vocab_size())?;
            let seed = self.seed.unwrap_or(0);
            let model = Gpt::new(config, seed, &dev)?;
            let seq = self.seq_len.unwrap_or(model.config.n_positions);
            if seq > model.config.n_positions {
                anyhow::bail!(
                    "--seq-len {seq}: exceeds the context of the {preset} preset ({})",
                    model.config.n_positions
                );
            }
            let lr = self.lr.unwrap_or(1e-3);
            let mut tc = TrainConfig::new(self.batch.unwrap_or(16), seq);
            tc.grad_accum = self.grad_accum.unwrap_or(1);
            tc.seed = seed;
            tc.optim.lr = lr;
            tc.optim.min_lr = lr / 10.0;
            tc.optim.warmup_steps = self.warmup.unwrap_or(100);
            tc.optim.total_steps = self.steps;
            let t = Trainer::new(&model, tc)?;
            (model, tok, t)
        };
        let ids = tok
            .encode(&text)
            .with_context(|| format!("tokenising {}", self.corpus.display()))?;
        let data = TokenData::split(ids, self.val_fraction)?;
        let seq = trainer.config.seq_len;
        let batch = trainer.config.batch_size;
        for (part, tokens, flag) in [
            ("training", &data.train, "--val-fraction"),
            ("held-out", &data.val, "--val-fraction"),
        ] {
            if tokens.len() <= seq + 1 {
                anyhow::bail!(
                    "{}: its {part} part has {} tokens, too few for one window of {} \
                     (a longer corpus, a smaller --seq-len, or another {flag})",
                    self.corpus.display(),
                    tokens.len(),
                    seq + 1
                );
            }
        }
        let todo = self.steps.saturating_sub(trainer.step_count()) as u64;
        let progress = super::Progress::new(todo, self.json, self.log_every);
        let start = Instant::now();
        let mut tokens = 0usize;
        let mut recent = Vec::new();
        let mut done = 0u64;
        while trainer.step_count() < self.steps {
            let s = trainer.step(&model, &data)?;
            if !s.loss.is_finite() {
                anyhow::bail!(
                    "step {}: the training loss is {} (try a smaller --lr); nothing was written",
                    s.step,
                    s.loss
                );
            }
            tokens += s.tokens;
            recent.push(s.loss);
            if recent.len() > 20 {
                recent.remove(0);
            }
            let tps = tokens as f64 / start.elapsed().as_secs_f64().max(1e-9);
            done += 1;
            progress.step(
                done,
                &format!("loss {:.4}  lr {:.2e}  {:.0} tok/s", s.loss, s.lr, tps),
            );
            if self.eval_every > 0 && s.step % self.eval_every == 0 {
                let e = evaluate(&model, &data.val, batch, seq, 64)?;
                progress.println(&format!(
                    "step {}: val loss {:.4} perplexity {:.2}",
                    s.step, e.loss, e.perplexity
                ));
            }
        }
        progress.finish();
        let seconds = start.elapsed().as_secs_f64();
        let dir = staged.path();
        model.save(dir)?;
        tok.save(dir)?;
        trainer.save_state(&model, dir)?;
        staged.commit()?;
        let e = evaluate(&model, &data.val, batch, seq, 256)?;
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

impl Args {
    /// With --resume, the saved run defines the model and the training; a flag given with
    /// another value than the saved one is refused rather than silently ignored.
    fn check_resumed(&self, model: &Gpt, tok: &Tokenizer, tc: &TrainConfig) -> anyhow::Result<()> {
        let mut differ = Vec::new();
        let mut check = |flag: &str, given: Option<String>, saved: String| {
            if let Some(g) = given.filter(|g| *g != saved) {
                differ.push(format!("{flag} {g} (saved: {saved})"));
            }
        };
        let kind = match tok {
            Tokenizer::Bytes => "bytes",
            Tokenizer::Chars(_) => "chars",
            Tokenizer::Hf(_) => "a Hugging Face tokenizer",
        };
        check("--tokenizer", self.tokenizer.clone(), kind.to_owned());
        check(
            "--batch",
            self.batch.map(|v| v.to_string()),
            tc.batch_size.to_string(),
        );
        check(
            "--seq-len",
            self.seq_len.map(|v| v.to_string()),
            tc.seq_len.to_string(),
        );
        let accum = tc.grad_accum.to_string();
        check(
            "--grad-accum",
            self.grad_accum.map(|v| v.to_string()),
            accum,
        );
        check(
            "--lr",
            self.lr.map(|v| v.to_string()),
            tc.optim.lr.to_string(),
        );
        let warmup = tc.optim.warmup_steps.to_string();
        check("--warmup", self.warmup.map(|v| v.to_string()), warmup);
        check(
            "--seed",
            self.seed.map(|v| v.to_string()),
            tc.seed.to_string(),
        );
        if let Some(preset) = self.preset.as_deref() {
            let same =
                GptConfig::preset(preset, model.config.vocab_size).is_ok_and(|c| c == model.config);
            if !same {
                differ.push(format!(
                    "--preset {preset} (the saved model is not that preset)"
                ));
            }
        }
        if !differ.is_empty() {
            anyhow::bail!(
                "--resume continues the run saved in {} with its own settings; these flags \
                 differ from it: {} (drop them, or start a new run with --force)",
                self.out.display(),
                differ.join(", ")
            );
        }
        Ok(())
    }
}
