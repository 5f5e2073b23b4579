use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use cohort_model::data::TokenData;
use cohort_model::train::{TrainConfig, Trainer, evaluate};
use cohort_model::{Gpt, LanguageModel, Lora, LoraConfig, Tokenizer};
use serde::Serialize;

use crate::args::{float_in, int_in};
use crate::output::{Table, print_json};

/// Fine-tune a LoRA adapter on a text file; writes adapter_config.json and
/// adapter_model.safetensors (Hugging Face PEFT's format) to --out, whole at the end (through a
/// staging directory beside it), never half.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The base model directory.
    dir: PathBuf,
    /// The fine-tuning text (the last --val-fraction is held out).
    #[arg(long)]
    data: PathBuf,
    /// Where to write the adapter (an existing directory that holds files is refused unless
    /// --force).
    #[arg(long)]
    out: PathBuf,
    /// Replace what --out holds.
    #[arg(long)]
    force: bool,
    /// Rank, in [1, 4096] and at most the smaller side of every adapted layer.
    #[arg(long, default_value_t = 8, value_parser = int_in(1..=4096usize))]
    rank: usize,
    /// Scale numerator (the update is multiplied by alpha / rank), in (0, 1000000].
    #[arg(long, default_value_t = 16.0, value_parser = float_in(0.0..=1e6).open_start())]
    alpha: f64,
    /// Dropout probability on the adapter's input while training (PEFT's lora_dropout), in
    /// [0, 1).
    #[arg(long, default_value_t = 0.0, value_parser = float_in(0.0..1.0))]
    dropout: f64,
    /// Modules to adapt (comma-separated; GPT: c_attn, c_proj, c_fc; or all-linear).
    #[arg(long, default_value = "all-linear", value_delimiter = ',')]
    targets: Vec<String>,
    /// Optimiser steps, in [1, 10000000].
    #[arg(long, default_value_t = 200, value_parser = int_in(1..=10_000_000usize))]
    steps: usize,
    /// Sequences per batch, in [1, 4096].
    #[arg(long, default_value_t = 16, value_parser = int_in(1..=4096usize))]
    batch: usize,
    /// Peak learning rate, in (0, 10].
    #[arg(long, default_value_t = 1e-3, value_parser = float_in(0.0..=10.0).open_start())]
    lr: f64,
    /// Seed for the adapter's initialisation and the data sampler.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Fraction of the text held out for evaluation, in (0, 1).
    #[arg(long, default_value_t = 0.1, value_parser = float_in(0.0..1.0).open_start())]
    val_fraction: f64,
    /// Without a terminal (CI, a pipe, a log file): a progress line (step, loss, tokens/s) on
    /// standard error every N steps, in [0, 10000000] (0: none; default: about 20 per run).
    /// With a terminal a progress bar is shown instead.
    #[arg(long, value_parser = int_in(0..=10_000_000u64))]
    log_every: Option<u64>,
    /// Copy the base weights into memory instead of reading them in place from the
    /// memory-mapped model.safetensors. Mapping is the default for GPT and Llama-family
    /// directories (whose LoRA training and evaluation run on the mapping directly).
    #[arg(long)]
    no_mmap: bool,
    /// Train through stage servers (`cohort serve-layers`) that together hold every layer,
    /// listed in the order of their layers: URL,URL,... (https://HOST:PORT with --ca, or
    /// http://HOST:PORT with --insecure). A stage may list replacements holding its layers
    /// after its server, separated by `|` (URL|URL2): a server that stops answering is
    /// replaced by the next, and the step replayed there. The embeddings, the head and the
    /// adapter stay here; the result is the same as without (docs/pipeline.md). GPT and
    /// Llama-family models.
    #[arg(long, value_delimiter = ',', value_name = "URLS")]
    pipeline: Vec<String>,
    /// The deadline of each call to a stage server or verifier, in seconds, in [1, 86400]: a
    /// server past it is replaced by the stage's next replacement, or stops the training.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 120,
        value_parser = int_in(1..=86_400u64),
        requires = "pipeline"
    )]
    stage_timeout: u64,
    /// How streams and gradients travel between this process and the stage servers: `none`
    /// (f32), `int8` (a power-of-two scale a row, a quarter of the bytes), `int4` (4 bits a
    /// value, entropy-coded: about a tenth), `int5-3` (activations in 5 bits, gradients in 3
    /// rounded stochastically, entropy-coded: about a tenth) or `qF/B[s][c][r][k]` (F and B
    /// steps; `k`: activations in the model's stream bases, which `cohort model calibrate`
    /// writes and every server must hold too; `q63/15sckr` sends about a twelfth). All are
    /// approximations, so results differ from one process's (docs/pipeline.md measures by how
    /// much).
    #[arg(long, default_value = "none", value_parser = super::stage_compression, requires = "pipeline")]
    compress: String,
    /// Where the stage servers are declared: every stage server, spare and verifier must be a
    /// declared stage server of this model's layers there (`cohort stage register`), with a
    /// key and never slashed, checked before any step (read only); --pay-per-token pays there.
    #[command(flatten)]
    place: crate::cmd::stage::Place,
    /// Your key file (with --pay-per-token): it signs the escrow payments.
    #[arg(long, value_name = "FILE", requires = "pay_per_token")]
    key: Option<PathBuf>,
    /// When the adapter is written, escrow to every stage server that completed training steps
    /// this many protocol tokens for each model token it processed (`--batch` × the sequence
    /// length a step), for the pipeline's session as the period (`cohort stage pay`; the
    /// server takes it with `cohort stage release` after the challenge window, unless a
    /// quorum of verifiers slashed it). Your balance must cover every server's share of every
    /// step, checked before any step.
    #[arg(long, value_name = "TOKENS", value_parser = crate::args::token_amount,
          requires = "key")]
    pay_per_token: Option<alloy_primitives::U256>,
    /// The CA that signed the stage servers' certificates (for https:// URLs).
    #[arg(long, value_name = "FILE", conflicts_with = "insecure")]
    ca: Option<PathBuf>,
    /// Talk to the stage servers in plain text (http:// URLs; loopback and tests only).
    #[arg(long)]
    insecure: bool,
    /// Verifiers for --pipeline: stage servers holding the same layers as some stage, which
    /// recompute a share of the rows of its forward calls (--verify-rate); an output that
    /// differs bit for bit stops the training before anything is written. A verifier may list
    /// replacements holding its layers after `|` (V|V2): one that stops answering is replaced
    /// by the next; with none left, the training stops.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "URLS",
        requires = "pipeline"
    )]
    verifiers: Vec<String>,
    /// The share of rows (sequences) of each forward call a verifier recomputes, in [0, 1],
    /// drawn after each server answered.
    #[arg(long, default_value_t = 0.1, value_parser = float_in(0.0..=1.0), requires = "verifiers")]
    verify_rate: f64,
    /// Where to write the fraud claims' evidence (a JSON array) when a verifier's
    /// recomputation differs from a server's signed commitment: for each, the call's digests,
    /// the server's commitment and signature, the verifier's recomputation and signature. A
    /// server caught is dropped and its stage routed to the next server listed for it
    /// (`--pipeline A,B|B2,C`); with none, the training stops.
    #[arg(long, value_name = "FILE", requires = "verifiers")]
    evidence: Option<PathBuf>,
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
    /// With --verifiers: forward calls made to the stage servers, and how many a verifier
    /// recomputed (all equal: a difference stops the training).
    #[serde(skip_serializing_if = "Option::is_none")]
    verification: Option<super::pipeline::VerifyStats>,
    /// With --pipeline: stage calls that got no answer (a server unreachable, its connection
    /// broken, or past --stage-timeout) and were replayed on a replacement server.
    #[serde(skip_serializing_if = "Option::is_none")]
    replays: Option<u64>,
    /// Stage servers verifiers caught, each dropped and routed around (with --pipeline).
    caught: Option<Vec<String>>,
    /// The claims sent to the verifiers to attest on their ledgers, and what each did.
    #[serde(skip_serializing_if = "Option::is_none")]
    attestations: Option<Vec<super::pipeline::AttestOutcome>>,
    /// Bytes of streams and gradients the training steps sent and received (with --pipeline).
    stream_bytes: Option<u64>,
    /// What was escrowed to each stage server (`--pay-per-token`).
    paid: Vec<Paid>,
}

/// One escrow payment to a stage server.
#[derive(Debug, Serialize)]
struct Paid {
    server: String,
    address: alloy_primitives::Address,
    period: u64,
    tokens: u64,
    amount: String,
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
        if self.pipeline.is_empty() && (self.ca.is_some() || self.insecure) {
            anyhow::bail!("--ca and --insecure are for the stage servers of --pipeline");
        }
        if self.place.given() {
            if self.pipeline.is_empty() {
                anyhow::bail!(
                    "{}: the stage servers of --pipeline are checked there; there is no \
                     --pipeline",
                    self.place.name()
                );
            }
            // Before any work: the ledger opens, or the chain answers with the contract (its
            // servers are checked once they are dialed).
            self.place.open_read()?;
        } else if self.pay_per_token.is_some() {
            anyhow::bail!(
                "--pay-per-token: where to pay? Give --ledger DIR (or --chain-rpc URL --contract \
                 ADDR)"
            );
        }
        // And the payer can pay every server's share of every step.
        let payer = match (&self.key, self.pay_per_token) {
            (Some(k), Some(price)) => {
                let signer = crate::cmd::stage::Signer::on(self.place.clone(), k.clone());
                let mut s = signer.open()?;
                let most = price
                    .checked_mul(alloy_primitives::U256::from(
                        (self.steps as u128)
                            .saturating_mul(self.batch as u128)
                            .saturating_mul(256)
                            .saturating_mul(self.pipeline.len() as u128),
                    ))
                    .context("--pay-per-token: the most the run could pay overflows")?;
                let has = s.p.balance_of(s.address())?;
                if has < most {
                    anyhow::bail!(
                        "--pay-per-token: {} may have to pay up to {} tokens ({} stages x {} \
                         steps x {} sequences x up to 256 tokens), and holds {}",
                        s.address(),
                        cohort_ledger::demo::fmt_tokens(most),
                        self.pipeline.len(),
                        self.steps,
                        self.batch,
                        cohort_ledger::demo::fmt_tokens(has)
                    );
                }
                Some((signer, price))
            }
            _ => None,
        };
        let staged =
            super::Staged::new(&self.out, "--out", self.force, "pass --force to replace it")?;
        let (mut model, tok, mapped) = load_base(&self.dir, self.no_mmap)?;
        let (base_mapped_bytes, base_copied_bytes) = match &model.weights().frozen {
            Some(f) => (f.stats().mapped_bytes, f.stats().copied_bytes),
            None => (0, 4 * model.weights().total_len()),
        };
        let text = super::read_text(&self.data)?;
        let ids = tok
            .encode(&text)
            .with_context(|| format!("tokenising {}", self.data.display()))?;
        let data = TokenData::split(ids, self.val_fraction)?;
        let seq = model.max_context().min(256);
        for (part, tokens) in [("training", &data.train), ("held-out", &data.val)] {
            if tokens.len() <= seq + 1 {
                anyhow::bail!(
                    "{}: its {part} part has {} tokens, too few for one window of {} (a longer \
                     text or another --val-fraction)",
                    self.data.display(),
                    tokens.len(),
                    seq + 1
                );
            }
        }
        let targets: Vec<&str> = self.targets.iter().map(String::as_str).collect();
        let mut cfg = LoraConfig::new(self.rank, self.alpha, &targets).with_dropout(self.dropout);
        cfg.base_model_name_or_path = Some(self.dir.display().to_string());
        // The pipeline, checked before any step: the servers hold this model's layers, all of
        // them, in order, and each replacement its stage's.
        let deadline = Duration::from_secs(self.stage_timeout);
        let (ca, insecure) = (self.ca.as_deref(), self.insecure);
        let mut pipeline = match self.pipeline.is_empty() {
            true => None,
            false => {
                let stages = super::pipeline::stage_dials(
                    "--pipeline",
                    &self.pipeline,
                    ca,
                    insecure,
                    deadline,
                )?;
                let p = super::pipeline::Pipeline::connect_stages(
                    &stages,
                    &self.dir,
                    model.num_layers(),
                    Some(&cfg),
                    deadline,
                )?;
                let p = match self.verifiers.is_empty() {
                    true => p,
                    false => p
                        .with_verifiers(
                            &super::pipeline::stage_dials(
                                "--verifiers",
                                &self.verifiers,
                                ca,
                                insecure,
                                deadline,
                            )?,
                            &self.dir,
                            self.verify_rate,
                        )?
                        .with_evidence(self.evidence.clone()),
                }
                .with_compression(super::pipeline::compression(&self.compress)?, &self.dir)?;
                if self.place.given() {
                    p.check_on_ledger(&self.place, super::pipeline::model_sha256(&self.dir)?)?;
                }
                Some(p)
            }
        };
        // Evaluated through the pipeline when there is one: the client never runs the layers.
        let eval = |model: &dyn LanguageModel,
                    pipeline: &mut Option<super::pipeline::Pipeline>|
         -> anyhow::Result<cohort_model::train::EvalStats> {
            match pipeline {
                None => Ok(evaluate(model, &data.val, self.batch, seq, 64)?),
                Some(p) => {
                    super::pipeline::evaluate_through(p, model, &data.val, self.batch, seq, 64)
                }
            }
        };
        let base = eval(model.as_ref(), &mut pipeline)?;
        let linears = model.linear_modules();
        let w = model.weights_mut();
        w.lora = Some(
            Lora::attach(&mut w.params, &linears, cfg.clone(), self.seed)
                .context("--rank, --targets")?,
        );
        let mut tc = TrainConfig::new(self.batch, seq);
        tc.seed = self.seed;
        tc.optim.lr = self.lr;
        tc.optim.min_lr = self.lr / 10.0;
        tc.optim.warmup_steps = (self.steps / 10).max(1);
        tc.optim.total_steps = self.steps;
        tc.optim.weight_decay = 0.0;
        let mut trainer = Trainer::new(model.as_ref(), tc)?;
        let progress = super::Progress::new(self.steps as u64, self.json, self.log_every);
        let start = Instant::now();
        let mut tokens = 0;
        let before = cohort_model::mem::peak_rss_bytes();
        let sampler = cohort_model::mem::MemorySampler::start(Duration::from_millis(5));
        for i in 0..self.steps {
            let s = match &mut pipeline {
                None => trainer.step(model.as_ref(), &data)?,
                Some(p) => {
                    let mut source =
                        |x: &candle_core::Tensor,
                         y: &candle_core::Tensor,
                         key: Option<u64>|
                         -> cohort_model::Result<(f64, Vec<Vec<f32>>)> {
                            p.grads(model.as_ref(), x, y, key)
                                .map_err(|e| cohort_model::Error::Data(format!("{e:#}")))
                        };
                    trainer.step_with(model.as_ref(), &data, &mut source)?
                }
            };
            if !s.loss.is_finite() {
                anyhow::bail!(
                    "step {}: the training loss is {} (try a smaller --lr); nothing was written",
                    s.step,
                    s.loss
                );
            }
            tokens += s.tokens;
            progress.step(
                i as u64 + 1,
                &format!(
                    "loss {:.4}  {:.0} tok/s",
                    s.loss,
                    tokens as f64 / start.elapsed().as_secs_f64().max(1e-9)
                ),
            );
        }
        progress.finish();
        let tps = tokens as f64 / start.elapsed().as_secs_f64().max(1e-9);
        let peaks = sampler.map(|s| s.finish());
        let e = eval(model.as_ref(), &mut pipeline)?;
        let lora = model.weights().lora.as_ref().context("adapter vanished")?;
        lora.save(model.params(), staged.path())?;
        staged.commit()?;
        // Pay the servers for the steps they completed (escrowed until the challenge window
        // has passed).
        let mut paid = Vec::new();
        if let (Some((signer, price)), Some(p)) = (&payer, &pipeline) {
            let mut s = signer.open()?;
            // A server caught is paid for nothing, not even the steps before.
            let caught = p.caught_servers();
            for (url, key, tokens) in p.served().iter().filter(|(u, _, _)| !caught.contains(u)) {
                let key = key.with_context(|| format!("stage server {url} has no key"))?;
                let server = crate::cmd::stage::resolve(&s.p, &crate::cmd::stage::Party::Key(key))?;
                let amount = price.saturating_mul(alloy_primitives::U256::from(*tokens));
                s.send(cohort_ledger::protocol::CohortStages::payStageCall {
                    server,
                    period: p.session(),
                    tokens: *tokens,
                    amount,
                })
                .with_context(|| format!("paying stage server {url} ({server})"))?;
                paid.push(Paid {
                    server: url.clone(),
                    address: server,
                    period: p.session(),
                    tokens: *tokens,
                    amount: cohort_ledger::demo::fmt_tokens(amount),
                });
            }
        }
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
            verification: pipeline.as_ref().and_then(|p| p.verify_stats()),
            replays: pipeline.as_ref().map(|p| p.replays()),
            caught: pipeline
                .as_ref()
                .map(super::pipeline::Pipeline::caught_servers),
            attestations: pipeline
                .as_ref()
                .map(super::pipeline::Pipeline::attestations),
            stream_bytes: pipeline
                .as_ref()
                .map(super::pipeline::Pipeline::stream_bytes),
            paid,
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
            if let Some(v) = r.verification {
                println!(
                    "verification: {} of {} rows ({} of {} forward calls) recomputed by a \
                     verifier; servers caught and routed around: {}",
                    v.rows_checked,
                    v.rows,
                    v.checked,
                    v.calls,
                    match r.caught.as_deref() {
                        None | Some([]) => "none".to_owned(),
                        Some(c) => c.join(", "),
                    }
                );
            }
            for p in &r.paid {
                println!(
                    "escrowed {} tokens to stage server {} ({}) for {} model tokens in period \
                     {} (cohort stage release, after the challenge window)",
                    p.amount, p.server, p.address, p.tokens, p.period
                );
            }
            if let Some(n) = r.replays.filter(|&n| n > 0) {
                println!(
                    "failover: {n} stage call(s) got no answer and were replayed on a \
                     replacement server"
                );
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

fn mib(b: Option<u64>) -> String {
    b.map_or("-".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0))
}
