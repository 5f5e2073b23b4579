//! `cohort model ...`: train, evaluate, sample from and adapt language models.

mod eval;
mod generate;
mod lora;
mod pretrain;
mod svd;

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use cohort_model::{Gpt, LanguageModel, Tokenizer, load_any};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Debug, Subcommand)]
pub enum ModelCmd {
    /// Train a GPT from scratch on a text file; writes a Hugging Face-style directory.
    Pretrain(pretrain::Args),
    /// Loss, perplexity and next-token accuracy of a model directory on a text file.
    Eval(eval::Args),
    /// Generate text from a model directory.
    Generate(generate::Args),
    /// Fine-tune a LoRA adapter (PEFT format) on a text file.
    Lora(lora::Args),
    /// Factor linear layers by truncated SVD; report parameters, FLOPs and perplexity per rank.
    Svd(svd::Args),
}

impl ModelCmd {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        match self {
            Self::Pretrain(a) => a.execute(),
            Self::Eval(a) => a.execute(),
            Self::Generate(a) => a.execute(),
            Self::Lora(a) => a.execute(),
            Self::Svd(a) => a.execute(),
        }
    }
}

/// Reads a text file, naming it on failure.
fn read_text(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// A model directory (GPT-2 or Llama family) and its tokeniser.
fn load(dir: &Path) -> anyhow::Result<(Box<dyn LanguageModel>, Tokenizer)> {
    let model = load_any(dir, &candle_core::Device::Cpu)
        .with_context(|| format!("loading model {}", dir.display()))?;
    let tok = load_tokenizer(dir, model.vocab_size())?;
    Ok((model, tok))
}

/// A GPT directory written by `cohort model pretrain` and its tokeniser.
fn load_gpt(dir: &Path) -> anyhow::Result<(Gpt, Tokenizer)> {
    let model = Gpt::load(dir, &candle_core::Device::Cpu)
        .with_context(|| format!("loading model {}", dir.display()))?;
    let tok = load_tokenizer(dir, model.config.vocab_size)?;
    Ok((model, tok))
}

fn load_tokenizer(dir: &Path, vocab: usize) -> anyhow::Result<Tokenizer> {
    let tok =
        Tokenizer::load(dir).with_context(|| format!("loading tokenizer {}", dir.display()))?;
    if tok.vocab_size() > vocab {
        anyhow::bail!(
            "{}: tokenizer has {} tokens but the model only {vocab}",
            dir.display(),
            tok.vocab_size()
        );
    }
    Ok(tok)
}

/// A progress bar showing loss and tokens/s.
fn train_bar(steps: u64, hidden: bool) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    ProgressBar::new(steps).with_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    )
}
