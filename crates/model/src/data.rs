//! Token streams for language modelling: a train/validation split, random training windows
//! drawn from a seeded generator, and fixed validation windows.

use candle_core::{Device, Tensor};

use crate::rng::Rng;
use crate::{Error, Result};

/// A tokenised corpus split into a training and a validation part.
#[derive(Debug, Clone)]
pub struct TokenData {
    pub train: Vec<u32>,
    pub val: Vec<u32>,
}

impl TokenData {
    /// The last `val_fraction` of `tokens` is the validation part.
    pub fn split(tokens: Vec<u32>, val_fraction: f64) -> Self {
        let n_val = ((tokens.len() as f64) * val_fraction.clamp(0.0, 1.0)).round() as usize;
        let mut train = tokens;
        let val = train.split_off(train.len() - n_val.min(train.len()));
        Self { train, val }
    }
}

/// `batch` random windows of `seq + 1` tokens: inputs and next-token targets, `[batch, seq]`.
pub fn sample_batch(
    tokens: &[u32],
    batch: usize,
    seq: usize,
    rng: &mut Rng,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    if tokens.len() <= seq + 1 {
        return Err(Error::Data(format!(
            "{} tokens cannot fill a window of {}",
            tokens.len(),
            seq + 1
        )));
    }
    let mut x = Vec::with_capacity(batch * seq);
    let mut y = Vec::with_capacity(batch * seq);
    for _ in 0..batch {
        let s = rng.below(tokens.len() - seq - 1);
        x.extend_from_slice(&tokens[s..s + seq]);
        y.extend_from_slice(&tokens[s + 1..s + seq + 1]);
    }
    Ok((
        Tensor::from_vec(x, (batch, seq), device)?,
        Tensor::from_vec(y, (batch, seq), device)?,
    ))
}

/// Consecutive non-overlapping windows over `tokens` (at most `max_windows`), grouped into
/// batches of up to `batch`: the fixed evaluation set.
pub fn eval_batches(
    tokens: &[u32],
    batch: usize,
    seq: usize,
    max_windows: usize,
    device: &Device,
) -> Result<Vec<(Tensor, Tensor)>> {
    let n = ((tokens.len().saturating_sub(1)) / seq).min(max_windows);
    if n == 0 {
        return Err(Error::Data(format!(
            "{} tokens cannot fill an evaluation window of {}",
            tokens.len(),
            seq + 1
        )));
    }
    let starts: Vec<usize> = (0..n).map(|i| i * seq).collect();
    starts
        .chunks(batch.max(1))
        .map(|ch| {
            let x: Vec<u32> = ch
                .iter()
                .flat_map(|&s| tokens[s..s + seq].iter().copied())
                .collect();
            let y: Vec<u32> = ch
                .iter()
                .flat_map(|&s| tokens[s + 1..s + seq + 1].iter().copied())
                .collect();
            Ok((
                Tensor::from_vec(x, (ch.len(), seq), device)?,
                Tensor::from_vec(y, (ch.len(), seq), device)?,
            ))
        })
        .collect()
}
