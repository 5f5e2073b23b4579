//! Aggregation strategies.
//!
//! A [`Strategy`] turns validated client deltas into one delta for the global model. Plain
//! averages ([`FedAvg`], [`ScoreWeighted`]), robust statistics ([`CoordinateMedian`],
//! [`TrimmedMean`], [`Krum`]) and wrappers ([`Clipped`] bounds every update's norm before the
//! inner strategy sees it; [`FedOpt`] runs a server optimizer — FedAdam, FedYogi, FedAdagrad —
//! on the inner strategy's output) compose freely: `FedOpt::adam(Clipped::new(TrimmedMean::new(2), 5.0), 1e-2)`.
//!
//! Every strategy is deterministic and, apart from Krum's documented tie-break by client id,
//! invariant to the order of its inputs. FedProx changes the clients' objective, not the
//! server's: its server side is FedAvg.

mod clip;
mod fedavg;
mod fedopt;
mod krum;
mod median;

pub use clip::{Clipped, MedianClipped};
pub use fedavg::{FedAvg, ScoreWeighted};
pub use fedopt::{FedOpt, ServerOpt};
pub use krum::Krum;
pub use median::{CoordinateMedian, TrimmedMean};

use crate::{ClientUpdate, FlError};

/// Combines client updates into one delta.
pub trait Strategy: Send {
    /// The aggregate delta. `updates` are validated (same length, finite) and non-empty.
    fn aggregate(&mut self, updates: &[ClientUpdate]) -> Result<Vec<f32>, FlError>;

    /// A short name for reports.
    fn name(&self) -> String;

    /// What the strategy carries from one round to the next (a server optimiser's moments),
    /// as vectors of numbers, for saving a run that may have to resume; a wrapper puts its
    /// own vectors before its inner strategy's. Stateless strategies have none (the default).
    fn state(&self) -> Vec<Vec<f64>> {
        Vec::new()
    }

    /// Takes back what [`state`](Self::state) returned, exactly: aggregating afterwards gives
    /// what the saved strategy would have given. A state of another shape is refused.
    fn restore(&mut self, state: &[Vec<f64>]) -> Result<(), FlError> {
        match state {
            [] => Ok(()),
            _ => Err(FlError::InvalidConfig {
                what: "strategy state",
                reason: format!(
                    "{} holds no state, but {} vectors were given",
                    self.name(),
                    state.len()
                ),
            }),
        }
    }
}

impl<S: Strategy + ?Sized> Strategy for Box<S> {
    fn aggregate(&mut self, updates: &[ClientUpdate]) -> Result<Vec<f32>, FlError> {
        (**self).aggregate(updates)
    }
    fn name(&self) -> String {
        (**self).name()
    }
    fn state(&self) -> Vec<Vec<f64>> {
        (**self).state()
    }
    fn restore(&mut self, state: &[Vec<f64>]) -> Result<(), FlError> {
        (**self).restore(state)
    }
}

/// The common length of the updates' deltas.
pub(crate) fn dim(updates: &[ClientUpdate], strategy: &str) -> Result<usize, FlError> {
    let first = updates.first().ok_or_else(|| FlError::NotEnoughUpdates {
        strategy: strategy.to_owned(),
        need: 1,
        got: 0,
    })?;
    let d = first.delta.len();
    if let Some(u) = updates.iter().find(|u| u.delta.len() != d) {
        return Err(FlError::ShapeMismatch {
            a: d,
            b: u.delta.len(),
        });
    }
    Ok(d)
}

/// `sum_i w_i x_i / sum_i w_i`, accumulated in f64. Weights must be non-negative and not all 0.
pub(crate) fn weighted_mean(updates: &[ClientUpdate], weights: &[f64], d: usize) -> Vec<f32> {
    let total: f64 = weights.iter().sum();
    let mut acc = vec![0f64; d];
    for (u, &w) in updates.iter().zip(weights) {
        if w == 0.0 {
            continue;
        }
        for (a, &x) in acc.iter_mut().zip(&u.delta) {
            *a += w * f64::from(x);
        }
    }
    acc.into_iter().map(|a| (a / total) as f32).collect()
}
