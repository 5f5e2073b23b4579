use super::Strategy;
use crate::{ClientUpdate, FlError};

/// Norm clipping around any strategy: every delta longer than `max_norm` is scaled down to
/// it before the inner strategy sees it, bounding what one client (a scaled model-replacement
/// attack, say) can move the model.
#[derive(Debug, Clone)]
pub struct Clipped<S> {
    inner: S,
    max_norm: f64,
}

impl<S: Strategy> Clipped<S> {
    /// Clips to `max_norm` (must be positive and finite) before `inner`.
    pub fn new(inner: S, max_norm: f64) -> Self {
        Self { inner, max_norm }
    }
}

impl<S: Strategy> Strategy for Clipped<S> {
    fn aggregate(&mut self, updates: &[ClientUpdate]) -> Result<Vec<f32>, FlError> {
        if !(self.max_norm.is_finite() && self.max_norm > 0.0) {
            return Err(FlError::InvalidConfig {
                what: "clip norm",
                reason: format!("{} is not a positive number", self.max_norm),
            });
        }
        let clipped: Vec<ClientUpdate> = updates
            .iter()
            .map(|u| {
                let n = u.norm();
                if n <= self.max_norm {
                    return u.clone();
                }
                let s = (self.max_norm / n) as f32;
                ClientUpdate {
                    delta: u.delta.iter().map(|x| x * s).collect(),
                    ..u.clone()
                }
            })
            .collect();
        self.inner.aggregate(&clipped)
    }
    fn name(&self) -> String {
        format!("clip({})∘{}", self.max_norm, self.inner.name())
    }
}

/// Adaptive norm clipping around any strategy: every delta longer than the median norm of
/// the round's updates is scaled down to it (FLAME's bound, Nguyen et al. 2022), so no fixed
/// bound has to be tuned to the task and the round. While fewer than half of the updates are
/// boosted, the median is an honest norm, and a boosted update (scaled model replacement)
/// counts for no more than an honest one.
#[derive(Debug, Clone)]
pub struct MedianClipped<S> {
    inner: S,
}

impl<S: Strategy> MedianClipped<S> {
    /// Clips to the round's median update norm before `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S: Strategy> Strategy for MedianClipped<S> {
    fn aggregate(&mut self, updates: &[ClientUpdate]) -> Result<Vec<f32>, FlError> {
        let mut norms: Vec<f64> = updates.iter().map(ClientUpdate::norm).collect();
        norms.sort_by(f64::total_cmp);
        let Some(&bound) = norms.get(norms.len().saturating_sub(1) / 2) else {
            return self.inner.aggregate(updates);
        };
        let clipped: Vec<ClientUpdate> = updates
            .iter()
            .map(|u| {
                let n = u.norm();
                if n <= bound || n == 0.0 {
                    return u.clone();
                }
                let s = (bound / n) as f32;
                ClientUpdate {
                    delta: u.delta.iter().map(|x| x * s).collect(),
                    ..u.clone()
                }
            })
            .collect();
        self.inner.aggregate(&clipped)
    }
    fn name(&self) -> String {
        format!("clip(median)∘{}", self.inner.name())
    }
}
