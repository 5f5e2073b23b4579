//! `cohort model ...`: train, evaluate, sample from and adapt language models.

mod eval;
pub(crate) use pipeline::model_sha256;
pub use pipeline::{Pipeline, ServeArgs, Verify, build_task, compression};
mod calibrate;
mod generate;
mod lora;
mod pipeline;
mod pretrain;
mod svd;

use std::path::{Path, PathBuf};
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
    Lora(Box<lora::Args>),
    /// Factor linear layers by truncated SVD; report parameters, FLOPs and perplexity per rank.
    Svd(svd::Args),
    /// Measure the streams between layers and write their bases (stream_bases.safetensors),
    /// which `--compress qF/Bk` sends activations in.
    Calibrate(calibrate::Args),
}

impl ModelCmd {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        match self {
            Self::Pretrain(a) => a.execute(),
            Self::Eval(a) => a.execute(),
            Self::Generate(a) => a.execute(),
            Self::Lora(a) => a.execute(),
            Self::Svd(a) => a.execute(),
            Self::Calibrate(a) => a.execute(),
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

/// A model directory (GPT-2 or Llama family) memory-mapped, and its tokeniser.
pub(crate) fn load_mapped(dir: &Path) -> anyhow::Result<(Box<dyn LanguageModel>, Tokenizer)> {
    let model = cohort_model::load_mapped_any(dir, &candle_core::Device::Cpu)
        .with_context(|| format!("mapping model {}", dir.display()))?;
    let tok = load_tokenizer(dir, model.vocab_size())?;
    Ok((model, tok))
}

/// A GPT directory written by `cohort model pretrain` and its tokeniser.
pub(crate) fn load_gpt(dir: &Path) -> anyhow::Result<(Gpt, Tokenizer)> {
    let model = Gpt::load(dir, &candle_core::Device::Cpu)
        .with_context(|| format!("loading model {}", dir.display()))?;
    let tok = load_tokenizer(dir, model.config.vocab_size)?;
    Ok((model, tok))
}

/// The tokeniser of a model directory, checked against the model's vocabulary.
fn load_tokenizer(dir: &Path, vocab: usize) -> anyhow::Result<Tokenizer> {
    Ok(Tokenizer::load_for_model(dir, vocab)?)
}

/// How training shows its progress: a bar on a terminal, else (CI, `| tee`, a log file) a
/// line on standard error every `every` steps and at the last one; nothing with `every` 0.
pub(super) struct Progress {
    bar: Option<ProgressBar>,
    every: u64,
    total: u64,
    start: std::time::Instant,
}

impl Progress {
    /// `total` steps; `json` hides the bar (the lines go to standard error and stay);
    /// `every` None picks about 20 lines per run.
    pub(super) fn new(total: u64, json: bool, every: Option<u64>) -> Self {
        use std::io::IsTerminal as _;
        let terminal = std::io::stderr().is_terminal();
        let bar = (terminal && !json).then(|| {
            ProgressBar::new(total).with_style(
                ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} eta {eta}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            )
        });
        let every = match (terminal, every) {
            (true, _) => 0,
            (false, Some(n)) => n,
            (false, None) => total.div_ceil(20).max(1),
        };
        Self {
            bar,
            every,
            total,
            start: std::time::Instant::now(),
        }
    }

    /// Records step `step` (1-based, of `total`) with its message (loss, tokens/s, ...).
    pub(super) fn step(&self, step: u64, msg: &str) {
        if let Some(b) = &self.bar {
            b.set_message(msg.to_string());
            b.set_position(step);
        } else if self.every > 0 && (step.is_multiple_of(self.every) || step == self.total) {
            eprintln!(
                "step {step}/{}  {msg}  {:.1}s",
                self.total,
                self.start.elapsed().as_secs_f64()
            );
        }
    }

    /// A line above the bar, or on standard error.
    pub(super) fn println(&self, line: &str) {
        match &self.bar {
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
        }
    }

    pub(super) fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// An output directory written whole or not at all. Checked when created, before any work:
/// its parent must exist and be writable, and an existing non-empty directory is refused unless
/// `replace` (`--force`, `--resume`). The files are written into a staging directory beside it,
/// which takes its place on [`Staged::commit`]; dropped before that (an error, a panic), the
/// staging directory is removed and the target is untouched.
pub(super) struct Staged {
    target: PathBuf,
    staging: PathBuf,
    committed: bool,
}

impl Staged {
    pub(super) fn new(
        target: &Path,
        flag: &str,
        replace: bool,
        hint: &str,
    ) -> anyhow::Result<Self> {
        let name = target
            .file_name()
            .filter(|n| !n.is_empty() && *n != "." && *n != "..")
            .with_context(|| format!("{flag} {}: not a directory name", target.display()))?;
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !parent.is_dir() {
            anyhow::bail!(
                "{flag} {}: the directory {} does not exist",
                target.display(),
                parent.display()
            );
        }
        if target.exists() && !target.is_dir() {
            anyhow::bail!("{flag} {}: is a file, not a directory", target.display());
        }
        let occupied = target.is_dir()
            && std::fs::read_dir(target)
                .with_context(|| format!("{flag} {}: cannot be read", target.display()))?
                .next()
                .is_some();
        if occupied && !replace {
            anyhow::bail!("{flag} {}: already holds files; {hint}", target.display());
        }
        let staging = parent.join(format!(
            ".{}.staging-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        if staging.exists() {
            std::fs::remove_dir_all(&staging)
                .with_context(|| format!("removing the old {}", staging.display()))?;
        }
        std::fs::create_dir(&staging)
            .with_context(|| format!("{flag} {}: cannot be written", target.display()))?;
        Ok(Self {
            target: target.to_path_buf(),
            staging,
            committed: false,
        })
    }

    /// Where to write the files.
    pub(super) fn path(&self) -> &Path {
        &self.staging
    }

    /// Puts the staging directory in the target's place (the old target, if any, is moved
    /// aside first and removed after).
    pub(super) fn commit(mut self) -> anyhow::Result<()> {
        let old = self.staging.with_extension("old");
        let had = self.target.exists();
        if had {
            std::fs::rename(&self.target, &old)
                .with_context(|| format!("moving {} aside", self.target.display()))?;
        }
        if let Err(e) = std::fs::rename(&self.staging, &self.target) {
            if had {
                // Put the old one back; the new files stay in the staging directory's place
                // until the drop removes them.
                let _ = std::fs::rename(&old, &self.target);
            }
            return Err(e).with_context(|| format!("writing {}", self.target.display()));
        }
        self.committed = true;
        if had {
            std::fs::remove_dir_all(&old)
                .with_context(|| format!("removing the replaced {}", old.display()))?;
        }
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.staging);
        }
    }
}

/// A stage stream compression (`--compress`): a name [`compression`] knows, checked when
/// parsed.
pub(crate) fn stage_compression(s: &str) -> Result<String, String> {
    compression(s)
        .map(|_| s.to_owned())
        .map_err(|e| format!("{e:#}"))
}
