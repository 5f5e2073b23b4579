//! Token streams for language modelling: a train/validation split, random training windows
//! drawn from a seeded generator, and fixed validation windows.

use candle_core::{Device, Tensor};

use crate::{Error, Result};
use cohort_core::SplitMix64;

/// A tokenised corpus split into a training and a validation part.
#[derive(Debug, Clone)]
pub struct TokenData {
    pub train: Vec<u32>,
    pub val: Vec<u32>,
}

impl TokenData {
    /// The last `val_fraction` (in [0, 1)) of `tokens` is the validation part.
    pub fn split(tokens: Vec<u32>, val_fraction: f64) -> Result<Self> {
        if !(0.0..1.0).contains(&val_fraction) {
            return Err(Error::config(
                "val_fraction",
                format!("{val_fraction} is not in [0, 1)"),
            ));
        }
        let n_val = ((tokens.len() as f64) * val_fraction).round() as usize;
        let mut train = tokens;
        let val = train.split_off(train.len() - n_val.min(train.len()));
        Ok(Self { train, val })
    }
}

/// `batch` random windows of `seq + 1` tokens: inputs and next-token targets, `[batch, seq]`.
pub fn sample_batch(
    tokens: &[u32],
    batch: usize,
    seq: usize,
    rng: &mut SplitMix64,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    positive("batch", batch)?;
    positive("seq_len", seq)?;
    if tokens.len() <= seq.saturating_add(1) {
        return Err(Error::Data(format!(
            "{} tokens cannot fill a window of {}",
            tokens.len(),
            seq.saturating_add(1)
        )));
    }
    let n = batch.checked_mul(seq).ok_or_else(|| {
        Error::config("batch", format!("{batch} windows of {seq} tokens overflow"))
    })?;
    let mut x = Vec::with_capacity(n);
    let mut y = Vec::with_capacity(n);
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
    positive("batch", batch)?;
    positive("seq_len", seq)?;
    positive("max_windows", max_windows)?;
    let n = ((tokens.len().saturating_sub(1)) / seq).min(max_windows);
    if n == 0 {
        return Err(Error::Data(format!(
            "{} tokens cannot fill an evaluation window of {}",
            tokens.len(),
            seq.saturating_add(1)
        )));
    }
    let starts: Vec<usize> = (0..n).map(|i| i * seq).collect();
    starts
        .chunks(batch)
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

/// Refuses a zero size with a typed error naming it.
fn positive(field: &str, v: usize) -> Result<()> {
    if v == 0 {
        return Err(Error::config(field, "must be at least 1"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_sizes_and_bad_fractions_are_typed_errors() {
        let t: Vec<u32> = (0..100).collect();
        let d = Device::Cpu;
        let mut rng = SplitMix64::new(0);
        for (b, s) in [(0, 4), (4, 0)] {
            assert!(matches!(
                sample_batch(&t, b, s, &mut rng, &d),
                Err(Error::Config { .. })
            ));
            assert!(matches!(
                eval_batches(&t, b, s, 8, &d),
                Err(Error::Config { .. })
            ));
        }
        assert!(eval_batches(&t, 4, 4, 0, &d).is_err());
        assert!(sample_batch(&t, 1, usize::MAX, &mut rng, &d).is_err());
        for f in [f64::NAN, -0.1, 1.0, f64::INFINITY] {
            assert!(TokenData::split(t.clone(), f).is_err(), "{f}");
        }
        assert_eq!(TokenData::split(t, 0.1).unwrap().val.len(), 10);
    }
}
