use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::args::{float_in, int_in};
use cohort_model::train::evaluate;

use crate::output::{Table, print_json};

/// Next-token loss, perplexity and accuracy of a model on a text file (consecutive windows).
/// The text is tokenised as transformers' tokenizer does by default: a tokenizer.json whose
/// post-processor adds special tokens (Llama 2/3 and Mistral put BOS first) adds them to the
/// start of the text (`special_tokens_added` in --json).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The model directory.
    dir: PathBuf,
    /// The text to evaluate on.
    #[arg(long)]
    data: PathBuf,
    /// Evaluate only the last fraction of the file, in (0, 1] (0.1 matches pretrain's held-out
    /// part; 1: the whole file).
    #[arg(long, default_value_t = 1.0, value_parser = float_in(0.0..=1.0).open_start())]
    tail: f64,
    /// Tokens per window, in [1, the model's context] (default: the context, at most 1024).
    #[arg(long, value_parser = int_in(1..=1_048_576usize))]
    seq_len: Option<usize>,
    /// Windows per batch, in [1, 65536].
    #[arg(long, default_value_t = 16, value_parser = int_in(1..=65_536usize))]
    batch: usize,
    /// At most this many windows, in [1, 100000000].
    #[arg(long, default_value_t = 512, value_parser = int_in(1..=100_000_000usize))]
    max_windows: usize,
    /// An adapter directory to apply (from `cohort model lora`).
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Copy the weights into memory instead of reading them in place from the memory-mapped
    /// safetensors (the default for GPT and Llama-family models).
    #[arg(long)]
    no_mmap: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    stages: super::pipeline::PipelineArgs,
}

#[derive(Debug, serde::Serialize)]
struct Report {
    #[serde(flatten)]
    eval: cohort_model::train::EvalStats,
    /// Whether the base weights were read in place from the mapped file.
    base_mapped: bool,
    /// The special tokens the tokenizer added to the text (BOS for Llama-style tokenizers).
    special_tokens_added: Vec<u32>,
    /// The process's peak resident memory (VmHWM), where the platform reports it.
    #[serde(skip_serializing_if = "Option::is_none")]
    peak_rss_bytes: Option<u64>,
}

impl Args {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let (mut model, tok, mapped) = super::lora::load_base(&self.dir, self.no_mmap)?;
        if let Some(a) = &self.adapter {
            super::lora::attach_saved(model.as_mut(), a)?;
        }
        let text = super::read_text(&self.data)?;
        let ids = tok
            .encode(&text)
            .with_context(|| format!("tokenising {}", self.data.display()))?;
        let skip = ((ids.len() as f64) * (1.0 - self.tail.clamp(0.0, 1.0))) as usize;
        let ctx = model.max_context();
        let seq = self.seq_len.unwrap_or(ctx.min(1024));
        if seq > ctx {
            anyhow::bail!("--seq-len {seq}: exceeds the model's context of {ctx}");
        }
        let e = match self.stages.connect(&self.dir, model.as_ref())? {
            None => evaluate(
                model.as_ref(),
                &ids[skip..],
                self.batch,
                seq,
                self.max_windows,
            )?,
            // The layers on the servers: this process runs the embeddings and the head only.
            Some(mut p) => super::pipeline::evaluate_through(
                &mut p,
                model.as_ref(),
                &ids[skip..],
                self.batch,
                seq,
                self.max_windows,
            )?,
        };
        if self.json {
            print_json(&Report {
                eval: e,
                base_mapped: mapped,
                special_tokens_added: tok.special_tokens_added()?,
                peak_rss_bytes: cohort_model::mem::peak_rss_bytes(),
            })?;
        } else {
            let mut t = Table::new(&["tokens", "loss", "perplexity", "accuracy"]);
            t.row(vec![
                e.tokens.to_string(),
                format!("{:.4}", e.loss),
                format!("{:.3}", e.perplexity),
                format!("{:.4}", e.accuracy),
            ]);
            t.print();
        }
        Ok(ExitCode::SUCCESS)
    }
}
