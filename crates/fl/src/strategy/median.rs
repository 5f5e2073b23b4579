use super::{Strategy, dim};
use crate::{ClientUpdate, FlError};

/// Coordinate-wise median (Yin et al. 2018): robust to fewer than half the clients being
/// arbitrary. For an even count, the mean of the two middle values.
#[derive(Debug, Clone, Copy, Default)]
pub struct CoordinateMedian;

impl Strategy for CoordinateMedian {
    fn aggregate(&mut self, updates: &[ClientUpdate]) -> Result<Vec<f32>, FlError> {
        let d = dim(updates, "CoordinateMedian")?;
        let n = updates.len();
        let mut col = vec![0f32; n];
        Ok((0..d)
            .map(|j| {
                for (c, u) in col.iter_mut().zip(updates) {
                    *c = u.delta[j];
                }
                col.sort_unstable_by(f32::total_cmp);
                if n % 2 == 1 {
                    col[n / 2]
                } else {
                    ((f64::from(col[n / 2 - 1]) + f64::from(col[n / 2])) / 2.0) as f32
                }
            })
            .collect())
    }
    fn name(&self) -> String {
        "median".into()
    }
}

/// Coordinate-wise trimmed mean: drops the `k` largest and `k` smallest values of every
/// coordinate and averages the rest; tolerates up to `k` arbitrary clients. Needs `n > 2k`.
#[derive(Debug, Clone, Copy)]
pub struct TrimmedMean {
    k: usize,
}

impl TrimmedMean {
    /// Trims `k` from each end.
    pub fn new(k: usize) -> Self {
        Self { k }
    }
}

impl Strategy for TrimmedMean {
    fn aggregate(&mut self, updates: &[ClientUpdate]) -> Result<Vec<f32>, FlError> {
        let d = dim(updates, "TrimmedMean")?;
        let n = updates.len();
        if n <= 2 * self.k {
            return Err(FlError::NotEnoughUpdates {
                strategy: format!("TrimmedMean(k={})", self.k),
                need: 2 * self.k + 1,
                got: n,
            });
        }
        let mut col = vec![0f32; n];
        let kept = (n - 2 * self.k) as f64;
        Ok((0..d)
            .map(|j| {
                for (c, u) in col.iter_mut().zip(updates) {
                    *c = u.delta[j];
                }
                col.sort_unstable_by(f32::total_cmp);
                let s: f64 = col[self.k..n - self.k].iter().map(|&x| f64::from(x)).sum();
                (s / kept) as f32
            })
            .collect())
    }
    fn name(&self) -> String {
        format!("trimmed-mean(k={})", self.k)
    }
}
