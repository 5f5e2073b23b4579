//! Text generation: greedy, temperature, top-k and nucleus (top-p) sampling, deterministic
//! from a seed. With a key/value cache ([`crate::KvCache`], GPT and Llama family) each new
//! token costs one position's work; once the sequence outgrows the context, each token re-runs
//! the model on the last `max_context` tokens (a sliding window, as without the cache).

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::cache::KvCache;
use crate::model::LanguageModel;
use crate::{Error, Result};
use cohort_core::SplitMix64;

/// How the next token is picked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    /// 0 means greedy (argmax).
    pub temperature: f64,
    /// Keep only the k most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1.0: all).
    pub top_p: f64,
    pub seed: u64,
}

impl Sampling {
    /// Checks the settings: `temperature` finite and at least 0, `top_p` finite in (0, 1].
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(Error::config(
                "temperature",
                format!("{} is not a finite number >= 0", self.temperature),
            ));
        }
        if !(self.top_p.is_finite() && self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::config(
                "top_p",
                format!("{} is not in (0, 1]", self.top_p),
            ));
        }
        Ok(())
    }

    /// Always the most likely token.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

/// Picks a token id from `logits` (one row). Refuses settings [`Sampling::validate`] refuses.
pub fn sample(logits: &[f32], s: &Sampling, rng: &mut SplitMix64) -> Result<u32> {
    s.validate()?;
    if logits.is_empty() {
        return Err(Error::Data("empty logits".into()));
    }
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
                if v > bv { (i, v) } else { (bi, bv) }
            })
            .0 as u32
    };
    if s.temperature <= 0.0 {
        return Ok(argmax());
    }
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    if s.top_k > 0 {
        idx.truncate(s.top_k);
    }
    let max = f64::from(logits[idx[0]]);
    let mut probs: Vec<f64> = idx
        .iter()
        .map(|&i| ((f64::from(logits[i]) - max) / s.temperature).exp())
        .collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if s.top_p < 1.0 {
        let mut cum = 0.0;
        let mut keep = probs.len();
        for (i, p) in probs.iter().enumerate() {
            cum += p;
            if cum >= s.top_p {
                keep = i + 1;
                break;
            }
        }
        probs.truncate(keep);
        idx.truncate(keep);
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
    }
    let mut u = rng.uniform();
    for (i, p) in idx.iter().zip(&probs) {
        if u < *p {
            return Ok(*i as u32);
        }
        u -= p;
    }
    Ok(idx[idx.len() - 1] as u32)
}

/// Refuses an empty prompt, a token id outside the model's vocabulary and bad sampling
/// settings, before any work.
fn check_prompt(model: &dyn LanguageModel, prompt: &[u32], s: &Sampling) -> Result<()> {
    s.validate()?;
    if prompt.is_empty() {
        return Err(Error::Data(
            "the prompt must have at least one token".into(),
        ));
    }
    let vocab = model.vocab_size();
    if let Some(&id) = prompt.iter().find(|&&id| id as usize >= vocab) {
        return Err(Error::Tokenizer(format!(
            "prompt token id {id} is outside the model's vocabulary of {vocab}"
        )));
    }
    Ok(())
}

/// `prompt` followed by `max_new` generated tokens, through the model's key/value cache where
/// it has one (the same tokens as [`generate_uncached`], faster).
pub fn generate(
    model: &dyn LanguageModel,
    prompt: &[u32],
    max_new: usize,
    s: &Sampling,
) -> Result<Vec<u32>> {
    generate_with(model, prompt, max_new, s, |_| Ok(()))
}

/// [`generate`], calling `on_token` with each new token as soon as it is chosen (to stream
/// it); an error from `on_token` stops the generation and is returned.
pub fn generate_with(
    model: &dyn LanguageModel,
    prompt: &[u32],
    max_new: usize,
    s: &Sampling,
    mut on_token: impl FnMut(u32) -> Result<()>,
) -> Result<Vec<u32>> {
    check_prompt(model, prompt, s)?;
    let mut rng = SplitMix64::derive(s.seed, "sample");
    let mut ids = prompt.to_vec();
    let ctx = model.max_context();
    let mut cache = Some(KvCache::new());
    for _ in 0..max_new {
        // The cache holds positions 0.. of the current window: usable while the whole sequence
        // fits the context; after that the window slides and every step starts afresh.
        if ids.len() > ctx {
            cache = None;
        }
        let h = match cache.as_mut() {
            Some(c) => {
                let new = &ids[c.len()..];
                let x = Tensor::from_slice(new, (1, new.len()), model.device())?;
                match model.hidden_cached(&x, c) {
                    Some(h) => Some(h?.narrow(1, new.len() - 1, 1)?),
                    None => None,
                }
            }
            None => None,
        };
        let h = match h {
            Some(h) => h,
            None => {
                cache = None;
                last_hidden(model, &ids)?
            }
        };
        let id = sample(&row(model, &h)?, s, &mut rng)?;
        ids.push(id);
        on_token(id)?;
    }
    Ok(ids)
}

/// [`generate_with`] where the model is elsewhere: `next_logits` gives the logits of the last
/// position of a window of token ids (at most `max_context` of them: the sequence's last), for
/// a model of `vocab` tokens. The same sampler and seed as [`generate_with`], so with the same
/// logits it picks the same tokens. For pipelines of stage servers, which keep no cache.
pub fn generate_by(
    next_logits: &mut dyn FnMut(&[u32]) -> Result<Vec<f32>>,
    vocab: usize,
    max_context: usize,
    prompt: &[u32],
    max_new: usize,
    s: &Sampling,
    mut on_token: impl FnMut(u32) -> Result<()>,
) -> Result<Vec<u32>> {
    s.validate()?;
    if prompt.is_empty() {
        return Err(Error::Data(
            "the prompt must have at least one token".into(),
        ));
    }
    if let Some(&id) = prompt.iter().find(|&&id| id as usize >= vocab) {
        return Err(Error::Tokenizer(format!(
            "prompt token id {id} is outside the model's vocabulary of {vocab}"
        )));
    }
    if max_context == 0 {
        return Err(Error::config("max_context", "must be positive"));
    }
    let mut rng = SplitMix64::derive(s.seed, "sample");
    let mut ids = prompt.to_vec();
    for _ in 0..max_new {
        let window = &ids[ids.len().saturating_sub(max_context)..];
        let logits = next_logits(window)?;
        if logits.len() != vocab {
            return Err(Error::Data(format!(
                "{} logits for a vocabulary of {vocab}",
                logits.len()
            )));
        }
        let id = sample(&logits, s, &mut rng)?;
        ids.push(id);
        on_token(id)?;
    }
    Ok(ids)
}

fn last_hidden(model: &dyn LanguageModel, ids: &[u32]) -> Result<Tensor> {
    let window = &ids[ids.len().saturating_sub(model.max_context())..];
    let x = Tensor::from_slice(window, (1, window.len()), model.device())?;
    Ok(model.hidden(&x)?.narrow(1, window.len() - 1, 1)?)
}

fn row(model: &dyn LanguageModel, h: &Tensor) -> Result<Vec<f32>> {
    Ok(model
        .logits(h)?
        .flatten_all()?
        .to_dtype(DType::F32)?
        .to_vec1::<f32>()?)
}

/// [`generate`] without the cache: each new token re-runs the model on the last
/// `max_context` tokens.
pub fn generate_uncached(
    model: &dyn LanguageModel,
    prompt: &[u32],
    max_new: usize,
    s: &Sampling,
) -> Result<Vec<u32>> {
    check_prompt(model, prompt, s)?;
    let mut rng = SplitMix64::derive(s.seed, "sample");
    let mut ids = prompt.to_vec();
    let ctx = model.max_context();
    for _ in 0..max_new {
        let window = &ids[ids.len().saturating_sub(ctx)..];
        let x = Tensor::from_slice(window, (1, window.len()), model.device())?;
        let h = model.hidden(&x)?.narrow(1, window.len() - 1, 1)?;
        let logits = model
            .logits(&h)?
            .flatten_all()?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?;
        ids.push(sample(&logits, s, &mut rng)?);
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_top_k_and_top_p_restrict_the_choice() {
        let logits = [0.0f32, 3.0, 2.9, -1.0, 2.8];
        let mut rng = SplitMix64::new(3);
        assert_eq!(sample(&logits, &Sampling::greedy(), &mut rng).unwrap(), 1);
        let k2 = Sampling {
            temperature: 1.0,
            top_k: 2,
            top_p: 1.0,
            seed: 0,
        };
        let seen: std::collections::BTreeSet<u32> = (0..400)
            .map(|_| sample(&logits, &k2, &mut rng).unwrap())
            .collect();
        assert_eq!(seen, [1, 2].into());
        // The top token alone has ~35% of the mass: top_p 0.3 keeps only it.
        let p = Sampling {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.3,
            seed: 0,
        };
        assert!((0..100).all(|_| sample(&logits, &p, &mut rng).unwrap() == 1));
        // Full sampling eventually picks every token with visible mass.
        let all = Sampling {
            temperature: 2.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        };
        let seen: std::collections::BTreeSet<u32> = (0..2000)
            .map(|_| sample(&logits, &all, &mut rng).unwrap())
            .collect();
        assert_eq!(seen.len(), 5);
    }

    #[test]
    fn bad_settings_are_typed_errors_not_panics() {
        let logits = [0.0f32, 1.0];
        let mut rng = SplitMix64::new(0);
        for (t, p) in [
            (f64::NAN, 1.0),
            (-1.0, 1.0),
            (f64::INFINITY, 1.0),
            (1.0, 0.0),
            (1.0, 2.0),
            (1.0, -1.0),
            (1.0, f64::NAN),
        ] {
            let s = Sampling {
                temperature: t,
                top_k: 0,
                top_p: p,
                seed: 0,
            };
            assert!(
                matches!(sample(&logits, &s, &mut rng), Err(Error::Config { .. })),
                "temperature {t} top_p {p}"
            );
        }
    }
}
