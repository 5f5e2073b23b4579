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
