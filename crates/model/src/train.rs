//! Training and evaluation loops over any [`LanguageModel`]: micro-batches with gradient
//! accumulation, AdamW, evaluation loss and perplexity, and checkpoints that resume exactly
//! (weights, optimiser moments, step and the data generator's state).

use std::path::Path;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::data::{self, TokenData};
use crate::model::LanguageModel;
use crate::optim::{self, AdamW, AdamWConfig, StepInfo};
use crate::params;
use crate::{Error, Result};
use cohort_core::SplitMix64;

/// Settings of a training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Tokens per sequence (at most the model's context).
    pub seq_len: usize,
    /// Micro-batches whose gradients are averaged into one optimiser step.
    pub grad_accum: usize,
    /// Seed of the data sampler.
    pub seed: u64,
    /// Always use candle's autograd, even where the model has a hand-written backward pass
    /// (for comparisons; default false).
    #[serde(default)]
    pub autograd_only: bool,
    pub optim: AdamWConfig,
}

impl TrainConfig {
    /// Batch and sequence length with default optimiser settings.
    pub fn new(batch_size: usize, seq_len: usize) -> Self {
        Self {
            batch_size,
            seq_len,
            grad_accum: 1,
            seed: 0,
            autograd_only: false,
            optim: AdamWConfig::default(),
        }
    }
}

/// What one step did.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct StepStats {
    pub step: usize,
    /// Mean training loss over the step's micro-batches.
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    /// Tokens processed in this step.
    pub tokens: usize,
}

/// Evaluation result.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct EvalStats {
    /// Mean next-token cross-entropy (nats).
    pub loss: f64,
    pub perplexity: f64,
    /// Fraction of next tokens predicted exactly (argmax).
    pub accuracy: f64,
    pub tokens: usize,
}

/// Where [`Trainer::step_with`] takes a micro-batch's loss and gradients from: called with
/// the inputs, the targets and the adapter's dropout key; the gradients in the order of the
/// model's trainable parameters.
pub type GradSource<'a> =
    dyn FnMut(&Tensor, &Tensor, Option<u64>) -> Result<(f64, Vec<Vec<f32>>)> + 'a;

/// A training run: the optimiser state and the data sampler.
#[derive(Debug, Clone)]
pub struct Trainer {
    pub config: TrainConfig,
    pub optim: AdamW,
    rng: SplitMix64,
}

#[derive(Serialize, Deserialize)]
struct SavedState {
    step: usize,
    rng: u64,
    config: TrainConfig,
}

const STATE_FILE: &str = "trainer_state.json";
const OPTIM_FILE: &str = "optimizer.safetensors";

impl Trainer {
    /// A fresh run for `model`'s trainable parameters. Refuses zero sizes, a sequence longer
    /// than the model's context and optimiser settings [`AdamWConfig::validate`] refuses.
    pub fn new(model: &dyn LanguageModel, config: TrainConfig) -> Result<Self> {
        for (field, v) in [
            ("batch_size", config.batch_size),
            ("seq_len", config.seq_len),
            ("grad_accum", config.grad_accum),
        ] {
            if v == 0 {
                return Err(Error::config(field, "must be at least 1"));
            }
        }
        config.optim.validate()?;
        if config.seq_len > model.max_context() {
            return Err(Error::config(
                "seq_len",
                format!(
                    "{} exceeds the model's context {}",
                    config.seq_len,
                    model.max_context()
                ),
            ));
        }
        let optim = AdamW::new(model.params(), config.optim.clone());
        let rng = SplitMix64::derive(config.seed, "data");
        Ok(Self { config, optim, rng })
    }

    /// Steps taken.
    pub fn step_count(&self) -> usize {
        self.optim.step
    }

    /// Gradients of the mean loss over `batches` (each `(inputs, targets)`), and that loss:
    /// from the model's hand-written backward pass where it has one (unless `autograd_only`),
    /// else from candle's autograd.
    ///
    /// No dropout: see [`Trainer::gradients_with_dropout`].
    pub fn gradients(
        model: &dyn LanguageModel,
        batches: &[(Tensor, Tensor)],
        autograd_only: bool,
    ) -> Result<(f64, Vec<Vec<f32>>)> {
        Self::gradients_inner(model, batches, autograd_only, None).map(|(l, g, _)| (l, g))
    }

    /// [`Trainer::gradients`] in training mode: an attached LoRA adapter with `lora_dropout`
    /// draws its masks for micro-batch `i` from `(key, i)`; the adapter is back in evaluation
    /// mode (no dropout) afterwards, also on error.
    pub fn gradients_with_dropout(
        model: &dyn LanguageModel,
        batches: &[(Tensor, Tensor)],
        autograd_only: bool,
        key: u64,
    ) -> Result<(f64, Vec<Vec<f32>>)> {
        Self::gradients_inner(model, batches, autograd_only, Some(key)).map(|(l, g, _)| (l, g))
    }

    /// [`Trainer::gradients`], each micro-batch's loss and gradients from `source` (called with
    /// the micro-batch and its dropout key, derived from `key` as the model's own pass would:
    /// `None` without dropout) instead of the model's own passes; summed and averaged the same
    /// way.
    pub fn gradients_from(
        model: &dyn LanguageModel,
        batches: &[(Tensor, Tensor)],
        key: Option<u64>,
        source: &mut GradSource<'_>,
    ) -> Result<(f64, Vec<Vec<f32>>)> {
        Self::gradients_via(model, batches, false, key, Some(source)).map(|(l, g, _)| (l, g))
    }

    fn gradients_inner(
        model: &dyn LanguageModel,
        batches: &[(Tensor, Tensor)],
        autograd_only: bool,
        key: Option<u64>,
    ) -> Result<(f64, Vec<Vec<f32>>, bool)> {
        Self::gradients_via(model, batches, autograd_only, key, None)
    }

    /// [`Self::gradients_inner`], each micro-batch's loss and gradients from `source` where
    /// given (called with the micro-batch and its dropout key) instead of the model's own
    /// passes; summed and averaged the same way.
    #[allow(clippy::type_complexity)]
    fn gradients_via(
        model: &dyn LanguageModel,
        batches: &[(Tensor, Tensor)],
        autograd_only: bool,
        key: Option<u64>,
        mut source: Option<&mut GradSource<'_>>,
    ) -> Result<(f64, Vec<Vec<f32>>, bool)> {
        /// Clears the adapter's training key when dropped.
        struct Eval<'a>(Option<&'a crate::Lora>);
        impl Drop for Eval<'_> {
            fn drop(&mut self) {
                if let Some(l) = self.0 {
                    l.set_dropout_key(None);
                }
            }
        }
        let lora = model.weights().lora.as_ref();
        let _eval = Eval(key.and(lora));
        let mut total: Option<Vec<Vec<f32>>> = None;
        let mut loss_sum = 0.0;
        let mut used_fast = false;
        let k = batches.len().max(1) as f32;
        for (i, (x, y)) in batches.iter().enumerate() {
            let micro = key.map(|key| SplitMix64::derive(key, &format!("micro/{i}")).state());
            if let (Some(l), Some(k)) = (lora, micro) {
                l.set_dropout_key(Some(k));
            }
            let fast = if let Some(f) = source.as_mut() {
                Some(f(x, y, micro.filter(|_| lora.is_some())))
            } else if autograd_only {
                None
            } else {
                model.fast_loss_and_grads(x, y)
            };
            let (loss, g) = match fast {
                Some(r) => {
                    used_fast = true;
                    r?
                }
                None => {
                    let loss = model.loss(x, y)?;
                    (
                        f64::from(loss.to_scalar::<f32>()?),
                        optim::collect_grads(model.params(), &loss.backward()?)?,
                    )
                }
            };
            loss_sum += loss;
            match &mut total {
                None => total = Some(g),
                Some(t) => {
                    for (a, b) in t.iter_mut().zip(g) {
                        for (a, b) in a.iter_mut().zip(b) {
                            *a += b;
                        }
                    }
                }
            }
        }
        let mut g = total.ok_or_else(|| Error::Data("no batches".into()))?;
        if k > 1.0 {
            g.iter_mut().flatten().for_each(|v| *v /= k);
        }
        Ok((loss_sum / f64::from(k), g, used_fast))
    }

    /// One optimiser step on `grad_accum` freshly sampled micro-batches of `data.train`.
    pub fn step(&mut self, model: &dyn LanguageModel, data: &TokenData) -> Result<StepStats> {
        let batches = self.sample(model, data)?;
        self.step_on(model, &batches)
    }

    /// `grad_accum` micro-batches of `data.train`, from the trainer's sampler.
    fn sample(
        &mut self,
        model: &dyn LanguageModel,
        data: &TokenData,
    ) -> Result<Vec<(Tensor, Tensor)>> {
        let c = &self.config;
        (0..c.grad_accum)
            .map(|_| {
                data::sample_batch(
                    &data.train,
                    c.batch_size,
                    c.seq_len,
                    &mut self.rng,
                    model.device(),
                )
            })
            .collect()
    }

    /// One optimiser step on the given micro-batches.
    pub fn step_on(
        &mut self,
        model: &dyn LanguageModel,
        batches: &[(Tensor, Tensor)],
    ) -> Result<StepStats> {
        self.step_from(model, batches, None)
    }

    /// [`Self::step`] with each micro-batch's loss and gradients from `source` (called with
    /// the micro-batch and the adapter's dropout key for it, if the model has an adapter):
    /// the same batches, keys, averaging and optimiser step, so that a source that computes
    /// what the model's own pass does (a pipeline of stage servers) trains the same model.
    pub fn step_with(
        &mut self,
        model: &dyn LanguageModel,
        data: &TokenData,
        source: &mut GradSource<'_>,
    ) -> Result<StepStats> {
        let batches = self.sample(model, data)?;
        self.step_from(model, &batches, Some(source))
    }

    /// One optimiser step on `batches`, their gradients from `source` or the model's own pass.
    fn step_from(
        &mut self,
        model: &dyn LanguageModel,
        batches: &[(Tensor, Tensor)],
        source: Option<&mut GradSource<'_>>,
    ) -> Result<StepStats> {
        // Dropout masks (LoRA's `lora_dropout`) from the seed, the step and the micro-batch.
        let key =
            SplitMix64::derive(self.config.seed, &format!("dropout/{}", self.optim.step)).state();
        let (loss, grads, used_fast) =
            Self::gradients_via(model, batches, self.config.autograd_only, Some(key), source)?;
        let StepInfo { lr, grad_norm } = self.optim.step(model.params(), &grads)?;
        if used_fast {
            // The next step's hand-written pass writes its gradients into these buffers.
            crate::fast::recycle(grads);
        }
        let tokens = batches.iter().map(|(x, _)| x.elem_count()).sum();
        Ok(StepStats {
            step: self.optim.step,
            loss,
            lr,
            grad_norm,
            tokens,
        })
    }

    /// One optimiser step from gradients the caller computed (e.g. of a classification loss,
    /// with [`crate::optim::collect_grads`]).
    pub fn step_grads(
        &mut self,
        model: &dyn LanguageModel,
        grads: &[Vec<f32>],
    ) -> Result<StepInfo> {
        self.optim.step(model.params(), grads)
    }

    /// Saves the weights (`model.safetensors` of the trainable parameters is not enough to
    /// resume: this writes optimiser moments, step and sampler state too) into `dir`.
    pub fn save_state(&self, model: &dyn LanguageModel, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        params::save_file(
            &self.optim.state_tensors(model.params())?,
            &dir.join(OPTIM_FILE),
        )?;
        let path = dir.join(STATE_FILE);
        let s = SavedState {
            step: self.optim.step,
            rng: self.rng.state(),
            config: self.config.clone(),
        };
        let json = serde_json::to_string_pretty(&s).map_err(|e| Error::Json {
            path: path.clone(),
            error: e,
        })?;
        std::fs::write(&path, json + "\n").map_err(|e| Error::io(&path, e))
    }

    /// Restores a run saved by [`Trainer::save_state`] for `model` (whose weights must have
    /// been restored from the same checkpoint).
    pub fn load_state(model: &dyn LanguageModel, dir: &Path) -> Result<Self> {
        let path = dir.join(STATE_FILE);
        let s = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let saved: SavedState =
            serde_json::from_str(&s).map_err(|e| Error::Json { path, error: e })?;
        let mut t = Self::new(model, saved.config)?;
        let file = dir.join(OPTIM_FILE);
        t.optim
            .load_state_tensors(&params::load_file(&file, model.device())?, &file)?;
        t.optim.step = saved.step;
        t.rng = SplitMix64::from_state(saved.rng);
        Ok(t)
    }
}

/// One evaluation window's losses: what membership inference compares window by window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowLoss {
    /// Mean next-token cross-entropy over the window (nats).
    pub loss: f64,
    /// Mean cross-entropy of the window's `MIN_K_FRACTION` least likely tokens (Min-K%
    /// probability, Shi et al. 2023, as a loss: lower for text the model has seen).
    pub min_k: f64,
}

/// The share of a window's tokens Min-K% averages over (its least likely ones).
pub const MIN_K_FRACTION: f64 = 0.2;

/// The losses of each of the first `max_windows` windows of `tokens` ([`evaluate`]'s windows,
/// in order).
///
/// # Errors
/// Too few tokens for one window, or a model error.
pub fn window_losses(
    model: &dyn LanguageModel,
    tokens: &[u32],
    batch: usize,
    seq: usize,
    max_windows: usize,
) -> Result<Vec<WindowLoss>> {
    let mut out = Vec::new();
    for (x, y) in data::eval_batches(tokens, batch, seq, max_windows, model.device())? {
        let logits = model.forward_eval(&x)?;
        let (b, t, v) = logits.dims3()?;
        let flat = logits.reshape((b * t, v))?;
        let yf = y.reshape(b * t)?;
        let rows = crate::kernels::cross_entropy_rows(&flat, &yf)?.to_vec1::<f32>()?;
        let k = ((t as f64 * MIN_K_FRACTION).ceil() as usize).clamp(1, t.max(1));
        for w in rows.chunks(t.max(1)) {
            let mut ce: Vec<f64> = w.iter().map(|&x| f64::from(x)).collect();
            let loss = ce.iter().sum::<f64>() / ce.len().max(1) as f64;
            ce.sort_by(|a, b| b.total_cmp(a));
            let min_k = ce.iter().take(k).sum::<f64>() / k as f64;
            out.push(WindowLoss { loss, min_k });
        }
    }
    Ok(out)
}

/// Loss, perplexity and next-token accuracy of `model` over fixed windows of `tokens`.
pub fn evaluate(
    model: &dyn LanguageModel,
    tokens: &[u32],
    batch: usize,
    seq: usize,
    max_windows: usize,
) -> Result<EvalStats> {
    evaluate_with(
        &mut |x| model.forward_eval(x),
        tokens,
        batch,
        seq,
        max_windows,
        model.device(),
    )
}

/// [`evaluate`] with the logits `[b, t, vocab]` of each window batch `[b, t]` from `logits`
/// (a model elsewhere: the stage servers of a pipeline).
pub fn evaluate_with(
    logits: &mut dyn FnMut(&Tensor) -> Result<Tensor>,
    tokens: &[u32],
    batch: usize,
    seq: usize,
    max_windows: usize,
    device: &candle_core::Device,
) -> Result<EvalStats> {
    let mut loss_sum = 0.0;
    let mut correct = 0usize;
    let mut n = 0usize;
    for (x, y) in data::eval_batches(tokens, batch, seq, max_windows, device)? {
        let logits = logits(&x)?;
        let (b, t, v) = logits.dims3()?;
        let flat = logits.reshape((b * t, v))?;
        let yf = y.reshape(b * t)?;
        let rows = crate::kernels::cross_entropy_rows(&flat, &yf)?;
        loss_sum += f64::from(rows.sum_all()?.to_scalar::<f32>()?);
        let pred = flat.argmax(1)?.to_vec1::<u32>()?;
        correct += pred
            .iter()
            .zip(yf.to_vec1::<u32>()?)
            .filter(|(a, b)| **a == *b)
            .count();
        n += b * t;
    }
    if n == 0 {
        return Err(Error::Data("no evaluation window".into()));
    }
    let loss = loss_sum / n as f64;
    Ok(EvalStats {
        loss,
        perplexity: loss.exp(),
        accuracy: correct as f64 / n as f64,
        tokens: n,
    })
}
