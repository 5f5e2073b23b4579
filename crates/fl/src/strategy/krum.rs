use super::{Contribution, Strategy, dim, weighted_mean};
use crate::{ClientUpdate, FlError};

/// Krum and Multi-Krum (Blanchard et al. 2017; El Mhamdi et al. 2018).
///
/// Each update is scored by the sum of squared distances to its `n - f - 2` nearest
/// neighbours; Krum returns the update with the lowest score, Multi-Krum (`m > 1`) repeatedly
/// selects the best-scored update among those left, recomputing scores, and averages the `m`
/// selected ones. Tolerates `f` Byzantine clients when `n > 2f + 2`. Ties break by client id,
/// so the result does not depend on input order. The selected updates' contributions are
/// [`Contribution::Selected`] with share `1 / m`, the others' [`Contribution::Excluded`].
#[derive(Debug, Clone)]
pub struct Krum {
    f: usize,
    m: usize,
    contributions: Vec<Contribution>,
}

impl Krum {
    /// Krum tolerating `f` Byzantine clients (selects one update).
    pub fn new(f: usize) -> Self {
        Self::multi(f, 1)
    }

    /// Multi-Krum: averages the `m` best updates.
    pub fn multi(f: usize, m: usize) -> Self {
        Self {
            f,
            m: m.max(1),
            contributions: Vec::new(),
        }
    }
}

fn sq_dist(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| {
            let d = f64::from(x) - f64::from(y);
            d * d
        })
        .sum()
}

impl Strategy for Krum {
    fn aggregate(&mut self, updates: &[ClientUpdate]) -> Result<Vec<f32>, FlError> {
        self.contributions.clear();
        let d = dim(updates, "Krum")?;
        let n = updates.len();
        let need = self.f.saturating_mul(2).saturating_add(3);
        if n < need || n < self.m {
            return Err(FlError::NotEnoughUpdates {
                strategy: self.name(),
                need: need.max(self.m),
                got: n,
            });
        }
        let mut dist = vec![vec![0f64; n]; n];
        for i in 0..n {
            for j in i + 1..n {
                let x = sq_dist(&updates[i].delta.values, &updates[j].delta.values);
                dist[i][j] = x;
                dist[j][i] = x;
            }
        }
        let mut left: Vec<usize> = (0..n).collect();
        let mut chosen = Vec::with_capacity(self.m);
        while chosen.len() < self.m {
            let k = left.len().saturating_sub(self.f + 2).max(1);
            let score = |i: usize| -> f64 {
                let mut ds: Vec<f64> = left
                    .iter()
                    .filter(|&&j| j != i)
                    .map(|&j| dist[i][j])
                    .collect();
                ds.sort_unstable_by(f64::total_cmp);
                ds.iter().take(k).sum()
            };
            let best = left
                .iter()
                .copied()
                .min_by(|&a, &b| {
                    score(a)
                        .total_cmp(&score(b))
                        .then(updates[a].client.cmp(&updates[b].client))
                })
                .ok_or_else(|| FlError::NotEnoughUpdates {
                    strategy: self.name(),
                    need: self.m,
                    got: chosen.len(),
                })?;
            chosen.push(best);
            left.retain(|&j| j != best);
        }
        let picked: Vec<ClientUpdate> = chosen.iter().map(|&i| updates[i].clone()).collect();
        let out = weighted_mean(&picked, &vec![1.0; picked.len()], d);
        let share = 1.0 / chosen.len() as f64;
        self.contributions = vec![Contribution::Excluded; n];
        for &i in &chosen {
            self.contributions[i] = Contribution::Selected { share };
        }
        Ok(out)
    }
    fn contributions(&self) -> Vec<Contribution> {
        self.contributions.clone()
    }
    fn name(&self) -> String {
        if self.m == 1 {
            format!("krum(f={})", self.f)
        } else {
            format!("multi-krum(f={},m={})", self.f, self.m)
        }
    }
}
