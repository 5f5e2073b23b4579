use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::args::{float_in, int_in};
use cohort_model::generate::{Sampling, generate};

/// Generate text from a model directory: greedy by default, or sampled with temperature,
/// top-k and top-p (deterministic from --seed).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The model directory.
    dir: PathBuf,
    /// The text to continue.
    #[arg(long)]
    prompt: String,
    /// Tokens to generate.
    #[arg(long, default_value_t = 200, value_parser = int_in(1..=1_000_000usize))]
    max_new: usize,
    /// Sampling temperature (0: greedy).
    #[arg(long, default_value_t = 0.0, value_parser = float_in(0.0..=100.0))]
    temperature: f64,
    /// Sample among the k most likely tokens only (0: all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Sample among the most likely tokens whose mass reaches p.
    #[arg(long, default_value_t = 1.0, value_parser = float_in(0.0..=1.0).open_start())]
    top_p: f64,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// An adapter directory to apply (from `cohort model lora`).
    #[arg(long)]
    adapter: Option<PathBuf>,
}

impl Args {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let (mut model, tok) = super::load(&self.dir)?;
        if let Some(a) = &self.adapter {
            super::lora::attach_saved(model.as_mut(), a)?;
        }
        let prompt = tok.encode(&self.prompt).context("tokenising the prompt")?;
        let s = Sampling {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            seed: self.seed,
        };
        let ids = generate(model.as_ref(), &prompt, self.max_new, &s)?;
        outln!("{}", tok.decode(&ids)?);
        Ok(ExitCode::SUCCESS)
    }
}
