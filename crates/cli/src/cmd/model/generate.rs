use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;

use crate::args::{float_in, int_in};
use crate::output::print_json;
use cohort_model::Tokenizer;
use cohort_model::generate::{Sampling, generate_with};

/// Generate text from a model directory: greedy by default, or sampled with temperature,
/// top-k and top-p (deterministic from --seed). The text is printed as it is generated; with
/// --json, one JSON object at the end instead.
///
/// The prompt is tokenised as transformers' tokenizer does by default: a tokenizer.json whose
/// post-processor adds special tokens (Llama 2/3 and Mistral put BOS first) adds them here too
/// (`prompt_ids` in --json shows them). Generation does not stop at an end-of-sequence token.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The model directory.
    dir: PathBuf,
    /// The text to continue.
    #[arg(long)]
    prompt: String,
    /// Tokens to generate, in [0, 1000000] (0: only load the model and tokenise the prompt).
    #[arg(long, default_value_t = 200, value_parser = int_in(0..=1_000_000usize))]
    max_new: usize,
    /// Sampling temperature, in [0, 100] (0: greedy).
    #[arg(long, default_value_t = 0.0, value_parser = float_in(0.0..=100.0))]
    temperature: f64,
    /// Sample among the k most likely tokens only, in [0, 10000000] (0: all).
    #[arg(long, default_value_t = 0, value_parser = int_in(0..=10_000_000usize))]
    top_k: usize,
    /// Sample among the most likely tokens whose mass reaches p, in (0, 1].
    #[arg(long, default_value_t = 1.0, value_parser = float_in(0.0..=1.0).open_start())]
    top_p: f64,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// An adapter directory to apply (from `cohort model lora`).
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Print one JSON object at the end (prompt, completion, token ids, tokens/s) instead of
    /// streaming the text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    stages: super::pipeline::PipelineArgs,
}

#[derive(Debug, Serialize)]
struct Report {
    prompt: String,
    completion: String,
    /// The prompt's ids as the model saw them (with any special token the tokenizer adds).
    prompt_ids: Vec<u32>,
    completion_ids: Vec<u32>,
    /// Generated tokens per second (the prompt's forward pass included).
    tokens_per_s: f64,
    seconds: f64,
}

/// Incremental detokenisation: the text of the tokens produced so far, handed out as soon as
/// it is complete (a token that ends inside a multi-byte character waits for the next one).
/// Decodes only from a recent offset, so each token costs the same whatever the length.
struct Stream<'a> {
    tok: &'a Tokenizer,
    ids: Vec<u32>,
    prefix: usize,
    read: usize,
}

impl<'a> Stream<'a> {
    fn new(tok: &'a Tokenizer) -> Self {
        Self {
            tok,
            ids: Vec::new(),
            prefix: 0,
            read: 0,
        }
    }

    /// The new text after `id`, if any is complete.
    fn push(&mut self, id: u32) -> cohort_model::Result<Option<String>> {
        self.ids.push(id);
        let before = self.tok.decode(&self.ids[self.prefix..self.read])?;
        let now = self.tok.decode(&self.ids[self.prefix..])?;
        if now.len() > before.len()
            && !now.ends_with('\u{fffd}')
            && let Some(new) = now.get(before.len()..)
        {
            self.prefix = self.read;
            self.read = self.ids.len();
            return Ok(Some(new.to_string()));
        }
        Ok(None)
    }

    /// What is left when generation ends.
    fn finish(&self) -> cohort_model::Result<String> {
        let before = self.tok.decode(&self.ids[self.prefix..self.read])?;
        let now = self.tok.decode(&self.ids[self.prefix..])?;
        Ok(now.get(before.len()..).unwrap_or_default().to_string())
    }
}

fn flush() -> anyhow::Result<()> {
    use std::io::Write as _;
    match std::io::stdout().flush() {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        r => Ok(r?),
    }
}

impl Args {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let (mut model, tok) = match self.stages.pipeline.is_empty() {
            true => super::load(&self.dir)?,
            // Mapped: only the pages of the embeddings and the head are read.
            false => {
                let (m, t, _) = super::lora::load_base(&self.dir, false)?;
                (m, t)
            }
        };
        if let Some(a) = &self.adapter {
            super::lora::attach_saved(model.as_mut(), a)?;
        }
        let prompt = tok.encode(&self.prompt).context("tokenising the prompt")?;
        if prompt.is_empty() {
            anyhow::bail!("--prompt: the prompt has no token");
        }
        let s = Sampling {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            seed: self.seed,
        };
        let mut stream = Stream::new(&tok);
        if !self.json {
            out!("{}", self.prompt);
            flush()?;
        }
        let mut pipeline = self.stages.connect(&self.dir, model.as_ref())?;
        let start = Instant::now();
        let mut on_token = |id| {
            if !self.json
                && let Some(text) = stream.push(id)?
            {
                out!("{text}");
                let _ = flush();
            }
            Ok(())
        };
        let ids = match &mut pipeline {
            None => generate_with(model.as_ref(), &prompt, self.max_new, &s, &mut on_token)?,
            Some(p) => {
                let m = model.as_ref();
                let v = m.vocab_size();
                let mut next = |window: &[u32]| -> cohort_model::Result<Vec<f32>> {
                    let t = window.len();
                    let logits = p
                        .logits(m, window, 1, t)
                        .map_err(|e| cohort_model::Error::Data(format!("{e:#}")))?;
                    Ok(logits[(t - 1) * v..t * v].to_vec())
                };
                cohort_model::generate::generate_by(
                    &mut next,
                    v,
                    m.max_context(),
                    &prompt,
                    self.max_new,
                    &s,
                    &mut on_token,
                )?
            }
        };
        let seconds = start.elapsed().as_secs_f64();
        let completion_ids = ids[prompt.len()..].to_vec();
        if self.json {
            print_json(&Report {
                prompt: self.prompt.clone(),
                completion: tok.decode(&completion_ids)?,
                prompt_ids: prompt,
                tokens_per_s: completion_ids.len() as f64 / seconds.max(1e-9),
                completion_ids,
                seconds,
            })?;
        } else {
            outln!("{}", stream.finish()?);
        }
        Ok(ExitCode::SUCCESS)
    }
}
