//! A sequence-classification head on any [`LanguageModel`], as Hugging Face's
//! `*ForSequenceClassification`: a bias-free `score` projection `[num_labels, d]` of the final
//! hidden state at each sequence's last real token (or, [`Pooling::Mean`], of the mean of its
//! real tokens' states). The head stays trainable when a LoRA
//! adapter freezes the base (PEFT's `modules_to_save`).
//!
//! [`Example`] is a labelled token sequence (the IMDB reviews of `shared/data/imdb`, read by
//! `cohort_data::imdb`, pass their word ids through as token ids).

use candle_core::{DType, Device, Tensor};

use crate::kernels::{self, linear::WeightLayout};
use crate::model::LanguageModel;
use crate::{Error, Result};
use cohort_core::SplitMix64;

/// The head's parameter name.
pub const SCORE: &str = "score.weight";

/// Adds a `score` head with `num_labels` outputs (N(0, 0.02), seeded) to `model`.
pub fn add_head(model: &mut dyn LanguageModel, num_labels: usize, seed: u64) -> Result<()> {
    if num_labels < 2 {
        return Err(Error::config("num_labels", "need at least two labels"));
    }
    let d = model.hidden_size();
    let dev = model.device().clone();
    let w = SplitMix64::derive(seed, SCORE).normal_vec(num_labels * d, 0.02);
    model
        .weights_mut()
        .params
        .insert(SCORE, Tensor::from_vec(w, (num_labels, d), &dev)?, true)?;
    Ok(())
}

/// Which final hidden states the head reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pooling {
    /// The last real token's (Hugging Face's `*ForSequenceClassification`; the default).
    #[default]
    Last,
    /// The mean over every real token's: each position's state weighs the same, which a small
    /// causal model pretrained on next-token prediction needs, its last state saying more about
    /// the next word than about the whole sequence.
    Mean,
}

/// Class logits `[B, num_labels]` for right-padded `ids` `[B, T]` whose real lengths are
/// `lengths` (each between 1 and T), from the last real token's state.
pub fn logits(model: &dyn LanguageModel, ids: &Tensor, lengths: &[usize]) -> Result<Tensor> {
    logits_pooled(model, ids, lengths, Pooling::Last)
}

/// [`logits`] with the head reading the states `pooling` says.
pub fn logits_pooled(
    model: &dyn LanguageModel,
    ids: &Tensor,
    lengths: &[usize],
    pooling: Pooling,
) -> Result<Tensor> {
    let (b, t) = ids.dims2()?;
    if lengths.len() != b || lengths.iter().any(|&l| l == 0 || l > t) {
        return Err(Error::Data(format!(
            "{b} sequences of length {t} but lengths {lengths:?}"
        )));
    }
    let h = model.hidden(ids)?;
    let d = h.dim(2)?;
    let pooled = match pooling {
        Pooling::Last => {
            let rows: Vec<u32> = lengths
                .iter()
                .enumerate()
                .map(|(i, &l)| (i * t + l - 1) as u32)
                .collect();
            let idx = Tensor::from_vec(rows, b, model.device())?;
            h.reshape((b * t, d))?.index_select(&idx, 0)?
        }
        Pooling::Mean => {
            // [B, T] weights 1/len on the real positions, 0 on the padding.
            let w: Vec<f32> = lengths
                .iter()
                .flat_map(|&l| (0..t).map(move |j| if j < l { 1.0 / l as f32 } else { 0.0 }))
                .collect();
            let w = Tensor::from_vec(w, (b, 1, t), model.device())?.to_dtype(h.dtype())?;
            w.matmul(&h)?.reshape((b, d))?
        }
    };
    Ok(kernels::linear(
        &pooled,
        &model.params().tensor(SCORE)?,
        None,
        WeightLayout::OutIn,
    )?)
}

/// Mean cross-entropy of the class logits against `labels`.
pub fn loss(
    model: &dyn LanguageModel,
    ids: &Tensor,
    lengths: &[usize],
    labels: &[u32],
) -> Result<Tensor> {
    loss_pooled(model, ids, lengths, labels, Pooling::Last)
}

/// [`loss`] with the head reading the states `pooling` says.
pub fn loss_pooled(
    model: &dyn LanguageModel,
    ids: &Tensor,
    lengths: &[usize],
    labels: &[u32],
    pooling: Pooling,
) -> Result<Tensor> {
    let l = logits_pooled(model, ids, lengths, pooling)?;
    let y = Tensor::from_slice(labels, labels.len(), model.device())?;
    Ok(kernels::cross_entropy_rows(&l, &y)?.mean_all()?)
}

/// A labelled example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub label: u32,
    pub ids: Vec<u32>,
}

/// A right-padded batch (pad id 0) of the last `max_len` ids of each example: ids `[B, T]`,
/// lengths and labels.
pub fn batch(
    examples: &[&Example],
    max_len: usize,
    device: &Device,
) -> Result<(Tensor, Vec<usize>, Vec<u32>)> {
    let t = examples
        .iter()
        .map(|e| e.ids.len().min(max_len))
        .max()
        .unwrap_or(1)
        .max(1);
    let mut ids = Vec::with_capacity(examples.len() * t);
    let mut lengths = Vec::with_capacity(examples.len());
    for e in examples {
        let tail = &e.ids[e.ids.len().saturating_sub(max_len)..];
        ids.extend_from_slice(tail);
        ids.extend(std::iter::repeat_n(0, t - tail.len()));
        lengths.push(tail.len().max(1));
    }
    let labels = examples.iter().map(|e| e.label).collect();
    Ok((
        Tensor::from_vec(ids, (examples.len(), t), device)?.to_dtype(DType::U32)?,
        lengths,
        labels,
    ))
}

/// Accuracy of the head on `examples`.
pub fn accuracy(
    model: &dyn LanguageModel,
    examples: &[Example],
    max_len: usize,
    batch_size: usize,
) -> Result<f64> {
    accuracy_pooled(model, examples, max_len, batch_size, Pooling::Last)
}

/// [`accuracy`] with the head reading the states `pooling` says.
pub fn accuracy_pooled(
    model: &dyn LanguageModel,
    examples: &[Example],
    max_len: usize,
    batch_size: usize,
    pooling: Pooling,
) -> Result<f64> {
    let mut correct = 0;
    for chunk in examples.chunks(batch_size.max(1)) {
        let refs: Vec<&Example> = chunk.iter().collect();
        let (ids, lengths, labels) = batch(&refs, max_len, model.device())?;
        let pred = logits_pooled(model, &ids, &lengths, pooling)?
            .detach()
            .argmax(1)?
            .to_vec1::<u32>()?;
        correct += pred.iter().zip(&labels).filter(|(p, y)| p == y).count();
    }
    Ok(correct as f64 / examples.len().max(1) as f64)
}
