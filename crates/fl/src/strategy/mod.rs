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
//!
//! Every strategy also says what its last aggregate did with each update
//! ([`Strategy::contributions`], the provenance of the aggregate): a weight for the weighted
//! sums (after clipping, and marked when a server optimizer stepped on the sum), selected or
//! excluded for Krum, and the share of coordinates kept for the median and the trimmed mean.

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

use serde::{Deserialize, Serialize};

use crate::{ClientUpdate, FlError};

/// What a strategy did with one update in its last aggregate: the provenance a later step
/// (exact removal, FedEraser-style unlearning, contribution values) needs. Only
/// [`Contribution::Weighted`] makes an update's part in the aggregate a number that can be
/// subtracted or re-weighted; the others say what happened without one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Contribution {
    /// The aggregate (or, under a server optimizer, its pseudo-gradient) is
    /// `sum_i weight_i * clip_scale_i * delta_i`: this update entered with `weight` (the
    /// weights of a round sum to 1) after being scaled by `clip_scale` (1 when not clipped).
    Weighted {
        /// Its weight in the sum.
        weight: f64,
        /// The factor clipping applied to the update first (1 when it was not clipped).
        clip_scale: f64,
        /// Whether a server optimizer (FedAdam, FedYogi, FedAdagrad) turned the weighted sum
        /// into the step through its moments: the step is then not linear in the update.
        via_server_optimizer: bool,
    },
    /// Chosen as (one of) the aggregate's update(s) (Krum, multi-Krum): the aggregate is the
    /// mean of the selected updates.
    Selected {
        /// Its share of the mean (1 / number selected).
        share: f64,
    },
    /// Left out of the aggregate (not chosen by Krum).
    Excluded,
    /// A coordinate-wise statistic (median, trimmed mean): the share of the coordinates where
    /// this update's value entered the statistic (for a trimmed mean, was not trimmed; for a
    /// median, was a middle value).
    Coordinatewise {
        /// Share of the coordinates, in [0, 1].
        kept_share: f64,
    },
}

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

    /// What the last [`aggregate`](Self::aggregate) did with each of its updates, in the order
    /// they were given; empty before the first aggregate, after one that failed, and for a
    /// strategy that does not say.
    fn contributions(&self) -> Vec<Contribution> {
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
    fn contributions(&self) -> Vec<Contribution> {
        (**self).contributions()
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
    let d = first.delta.values.len();
    if let Some(u) = updates.iter().find(|u| u.delta.values.len() != d) {
        return Err(FlError::ShapeMismatch {
            a: d,
            b: u.delta.values.len(),
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
        for (a, &x) in acc.iter_mut().zip(&u.delta.values) {
            *a += w * f64::from(x);
        }
    }
    acc.into_iter().map(|a| (a / total) as f32).collect()
}
