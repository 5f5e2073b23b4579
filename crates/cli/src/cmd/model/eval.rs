use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::args::{float_in, int_in};
use cohort_model::train::evaluate;

use crate::output::{Table, print_json};

/// Next-token loss, perplexity and accuracy of a model on a text file (consecutive windows).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The model directory.
    dir: PathBuf,
    /// The text to evaluate on.
    #[arg(long)]
    data: PathBuf,
    /// Evaluate only the last fraction of the file (0.1 matches pretrain's held-out part; 1:
    /// the whole file).
    #[arg(long, default_value_t = 1.0, value_parser = float_in(0.0..=1.0).open_start())]
    tail: f64,
    /// Tokens per window (default: the model's context).
    #[arg(long, value_parser = int_in(1..=1_048_576usize))]
    seq_len: Option<usize>,
    /// Windows per batch.
    #[arg(long, default_value_t = 16, value_parser = int_in(1..=65_536usize))]
    batch: usize,
    /// At most this many windows.
    #[arg(long, default_value_t = 512, value_parser = int_in(1..=100_000_000usize))]
    max_windows: usize,
    /// An adapter directory to apply (from `cohort model lora`).
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Copy the weights into memory instead of reading a GPT's weights in place from the
    /// memory-mapped safetensors (Llama-family models are always copied).
    #[arg(long)]
    no_mmap: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, serde::Serialize)]
struct Report {
    #[serde(flatten)]
    eval: cohort_model::train::EvalStats,
    /// Whether the base weights were read in place from the mapped file.
    base_mapped: bool,
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
        let seq = self.seq_len.unwrap_or(model.max_context().min(1024));
        let e = evaluate(
            model.as_ref(),
            &ids[skip..],
            self.batch,
            seq,
            self.max_windows,
        )?;
        if self.json {
            print_json(&Report {
                eval: e,
                base_mapped: mapped,
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
