use super::{Contribution, Strategy, dim, weighted_mean};
use crate::{ClientUpdate, FlError};

/// Federated averaging (McMahan et al. 2017): the mean of the deltas weighted by the clients'
/// sample counts. Each update's [`Contribution::Weighted`] weight is its share of the round's
/// samples. A round whose sample counts are all 0 (validated updates never are) is refused:
/// the mean would divide by 0.
#[derive(Debug, Clone, Default)]
pub struct FedAvg {
    contributions: Vec<Contribution>,
}

impl FedAvg {
    /// Federated averaging.
    pub fn new() -> Self {
        Self::default()
    }
}

/// `Weighted` contributions with the normalised weights `w_i / sum w` that
/// [`weighted_mean`] divides by, unclipped and without a server optimizer.
fn normalised(weights: &[f64]) -> Vec<Contribution> {
    let total: f64 = weights.iter().sum();
    weights
        .iter()
        .map(|&w| Contribution::Weighted {
            weight: w / total,
            clip_scale: 1.0,
            via_server_optimizer: false,
        })
        .collect()
}

impl Strategy for FedAvg {
    fn aggregate(&mut self, updates: &[ClientUpdate]) -> Result<Vec<f32>, FlError> {
        self.contributions.clear();
        let d = dim(updates, "FedAvg")?;
        let w: Vec<f64> = updates.iter().map(|u| u.num_samples as f64).collect();
        if w.iter().all(|&x| x == 0.0) {
            return Err(FlError::NotEnoughUpdates {
                strategy: "FedAvg (positive sample counts)".into(),
                need: 1,
                got: 0,
            });
        }
        let out = weighted_mean(updates, &w, d);
        self.contributions = normalised(&w);
        Ok(out)
    }
    fn name(&self) -> String {
        "fedavg".into()
    }
    fn contributions(&self) -> Vec<Contribution> {
        self.contributions.clone()
    }
}

/// Weights each update by its validators' consensus score (negative scores count as zero),
/// times its sample count if `by_samples`. Updates without a score weigh nothing (a
/// [`Contribution::Weighted`] of weight 0).
#[derive(Debug, Clone, Default)]
pub struct ScoreWeighted {
    by_samples: bool,
    contributions: Vec<Contribution>,
}

impl ScoreWeighted {
    /// Score weights alone.
    pub fn new() -> Self {
        Self::default()
    }

    /// Score times sample count.
    pub fn by_samples() -> Self {
        Self {
            by_samples: true,
            ..Self::default()
        }
    }
}

impl Strategy for ScoreWeighted {
    fn aggregate(&mut self, updates: &[ClientUpdate]) -> Result<Vec<f32>, FlError> {
        self.contributions.clear();
        let d = dim(updates, "ScoreWeighted")?;
        let w: Vec<f64> = updates
            .iter()
            .map(|u| {
                let s = u.score.map_or(0.0, |s| s.to_f64().max(0.0));
                if self.by_samples {
                    s * u.num_samples as f64
                } else {
                    s
                }
            })
            .collect();
        if w.iter().all(|&x| x == 0.0) {
            return Err(FlError::NotEnoughUpdates {
                strategy: "ScoreWeighted (positive scores)".into(),
                need: 1,
                got: 0,
            });
        }
        let out = weighted_mean(updates, &w, d);
        self.contributions = normalised(&w);
        Ok(out)
    }
    fn name(&self) -> String {
        if self.by_samples {
            "score-weighted×samples".into()
        } else {
            "score-weighted".into()
        }
    }
    fn contributions(&self) -> Vec<Contribution> {
        self.contributions.clone()
    }
}
