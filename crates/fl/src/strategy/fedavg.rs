use super::{Strategy, dim, weighted_mean};
use crate::{ClientUpdate, FlError};

/// Federated averaging (McMahan et al. 2017): the mean of the deltas weighted by the clients'
/// sample counts.
#[derive(Debug, Clone, Copy, Default)]
pub struct FedAvg;

impl Strategy for FedAvg {
    fn aggregate(&mut self, updates: &[ClientUpdate]) -> Result<Vec<f32>, FlError> {
        let d = dim(updates, "FedAvg")?;
        let w: Vec<f64> = updates.iter().map(|u| u.num_samples as f64).collect();
        Ok(weighted_mean(updates, &w, d))
    }
    fn name(&self) -> String {
        "fedavg".into()
    }
}

/// Weights each update by its validators' consensus score (negative scores count as zero),
/// times its sample count if `by_samples`. Updates without a score weigh nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScoreWeighted {
    by_samples: bool,
}

impl ScoreWeighted {
    /// Score weights alone.
    pub fn new() -> Self {
        Self { by_samples: false }
    }

    /// Score times sample count.
    pub fn by_samples() -> Self {
        Self { by_samples: true }
    }
}

impl Strategy for ScoreWeighted {
    fn aggregate(&mut self, updates: &[ClientUpdate]) -> Result<Vec<f32>, FlError> {
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
        Ok(weighted_mean(updates, &w, d))
    }
    fn name(&self) -> String {
        if self.by_samples {
            "score-weighted×samples".into()
        } else {
            "score-weighted".into()
        }
    }
}
