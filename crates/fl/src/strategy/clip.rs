use std::sync::Arc;

use cohort_core::Score;

use super::{Contribution, Strategy};
use crate::{ClientUpdate, FlError, NamedDelta};

/// `u` scaled down to norm `bound` if it is longer (a zero update is kept), and the factor it
/// was scaled by: `min(1, bound / norm)`, 1 for a zero update. Its consensus score is scaled
/// by the same factor: a score is the loss reduction of the update as submitted, and to first
/// order a step shortened by a factor `s` reduces the loss `s` times as much, so the clipped
/// update carries the first-order estimate of its own score. Without this a boosted update
/// (scaled model replacement) would be aggregated at an honest length but weighed, by a
/// score-weighted strategy, with the large score its boosted length earned.
pub(crate) fn clip_to(u: &ClientUpdate, bound: f64) -> (ClientUpdate, f64) {
    let n = u.norm();
    if n <= bound || n == 0.0 {
        return (u.clone(), 1.0);
    }
    let s = bound / n;
    let clipped = ClientUpdate {
        delta: NamedDelta::new(
            Arc::clone(&u.delta.layout),
            u.delta.values.iter().map(|x| x * s as f32).collect(),
        ),
        score: u.score.map(|x| Score::from_f64(x.to_f64() * s)),
        ..u.clone()
    };
    (clipped, s)
}

/// Clips every update to `bound`, aggregates the clipped updates with `inner` and returns the
/// aggregate with the inner strategy's contributions, a [`Contribution::Weighted`] one's
/// `clip_scale` multiplied by its update's clip factor (other kinds as they are).
fn clip_then<S: Strategy>(
    inner: &mut S,
    updates: &[ClientUpdate],
    bound: f64,
) -> Result<(Vec<f32>, Vec<Contribution>), FlError> {
    let (clipped, factors): (Vec<ClientUpdate>, Vec<f64>) =
        updates.iter().map(|u| clip_to(u, bound)).unzip();
    let out = inner.aggregate(&clipped)?;
    let contributions = inner
        .contributions()
        .into_iter()
        .zip(factors)
        .map(|(c, f)| match c {
            Contribution::Weighted {
                weight,
                clip_scale,
                via_server_optimizer,
            } => Contribution::Weighted {
                weight,
                clip_scale: clip_scale * f,
                via_server_optimizer,
            },
            other => other,
        })
        .collect();
    Ok((out, contributions))
}

/// Norm clipping around any strategy: every delta longer than `max_norm` is scaled down to
/// it before the inner strategy sees it, bounding what one client (a scaled model-replacement
/// attack, say) can move the model. A clipped update's score is scaled by the same factor,
/// the first-order estimate of the clipped update's own score. The contributions are the inner
/// strategy's, a weighted update's `clip_scale` multiplied by `min(1, max_norm / norm)`.
#[derive(Debug, Clone)]
pub struct Clipped<S> {
    inner: S,
    max_norm: f64,
    contributions: Vec<Contribution>,
}

impl<S: Strategy> Clipped<S> {
    /// Clips to `max_norm` (must be positive and finite) before `inner`.
    pub fn new(inner: S, max_norm: f64) -> Self {
        Self {
            inner,
            max_norm,
            contributions: Vec::new(),
        }
    }
}

impl<S: Strategy> Strategy for Clipped<S> {
    fn aggregate(&mut self, updates: &[ClientUpdate]) -> Result<Vec<f32>, FlError> {
        self.contributions.clear();
        if !(self.max_norm.is_finite() && self.max_norm > 0.0) {
            return Err(FlError::InvalidConfig {
                what: "clip norm",
                reason: format!("{} is not a positive number", self.max_norm),
            });
        }
        let (out, contributions) = clip_then(&mut self.inner, updates, self.max_norm)?;
        self.contributions = contributions;
        Ok(out)
    }
    fn name(&self) -> String {
        format!("clip({})∘{}", self.max_norm, self.inner.name())
    }
    fn state(&self) -> Vec<Vec<f64>> {
        self.inner.state()
    }
    fn contributions(&self) -> Vec<Contribution> {
        self.contributions.clone()
    }
    fn restore(&mut self, state: &[Vec<f64>]) -> Result<(), FlError> {
        self.inner.restore(state)
    }
}

/// Adaptive norm clipping around any strategy: every delta longer than the median norm of
/// the round's updates is scaled down to it (FLAME's bound, Nguyen et al. 2022), so no fixed
/// bound has to be tuned to the task and the round. While fewer than half of the updates are
/// boosted, the median is an honest norm, and a boosted update (scaled model replacement)
/// counts for no more than an honest one. Zero updates do not count towards the median. The
/// contributions are the inner strategy's, a weighted update's `clip_scale` multiplied by
/// `min(1, median / norm)`.
#[derive(Debug, Clone)]
pub struct MedianClipped<S> {
    inner: S,
    contributions: Vec<Contribution>,
}

impl<S: Strategy> MedianClipped<S> {
    /// Clips to the round's median update norm before `inner`.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            contributions: Vec::new(),
        }
    }
}

impl<S: Strategy> Strategy for MedianClipped<S> {
    fn aggregate(&mut self, updates: &[ClientUpdate]) -> Result<Vec<f32>, FlError> {
        self.contributions.clear();
        // A zero update (a free-rider's) moves nothing and has no say in the bound: otherwise
        // enough of them would make the median 0 and freeze the model.
        let mut norms: Vec<f64> = updates
            .iter()
            .map(ClientUpdate::norm)
            .filter(|&n| n > 0.0)
            .collect();
        norms.sort_by(f64::total_cmp);
        let Some(&bound) = norms.get(norms.len().saturating_sub(1) / 2) else {
            // Nothing to clip: every update is zero (or there are none).
            let out = self.inner.aggregate(updates)?;
            self.contributions = self.inner.contributions();
            return Ok(out);
        };
        let (out, contributions) = clip_then(&mut self.inner, updates, bound)?;
        self.contributions = contributions;
        Ok(out)
    }
    fn name(&self) -> String {
        format!("clip(median)∘{}", self.inner.name())
    }
    fn state(&self) -> Vec<Vec<f64>> {
        self.inner.state()
    }
    fn contributions(&self) -> Vec<Contribution> {
        self.contributions.clone()
    }
    fn restore(&mut self, state: &[Vec<f64>]) -> Result<(), FlError> {
        self.inner.restore(state)
    }
}
