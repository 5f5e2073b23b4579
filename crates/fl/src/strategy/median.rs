use std::ops::Range;

use super::{Contribution, Strategy, dim};
use crate::{ClientUpdate, FlError};

/// `x`'s bits mapped so that unsigned order is `f32::total_cmp`'s order.
fn ordered_bits(x: f32) -> u32 {
    let b = x.to_bits();
    if b >> 31 == 1 { !b } else { b | 0x8000_0000 }
}

/// The value of a sort key made by [`coordinatewise`]: the inverse of [`ordered_bits`] on its
/// upper half.
fn key_value(key: u64) -> f32 {
    let k = (key >> 32) as u32;
    f32::from_bits(if k >> 31 == 1 { k & 0x7fff_ffff } else { !k })
}

/// Sorts every coordinate's values ascending, applies `stat` to the sort keys at positions
/// `used` (the values it reads, ascending; [`key_value`] gives each one's value) and counts,
/// per update, the coordinates where its value sat at one of those positions. Returns the
/// statistic per coordinate and each update's share of the coordinates as a
/// [`Contribution::Coordinatewise`], in input order.
///
/// A sort key is the value's `total_cmp` rank in its upper half and the update's tie rank (by
/// client id, then input position) in its lower half: equal values sort by client id, so which
/// of them sits at a used position does not depend on the input order, and the statistic
/// cannot change (values equal under `total_cmp` are the same number). The cost is what the
/// statistic needs anyway, one sort of `n` integers per coordinate, plus at most `n / 2`
/// counter increments.
fn coordinatewise(
    updates: &[ClientUpdate],
    d: usize,
    used: Range<usize>,
    stat: impl Fn(&[u64]) -> f32,
) -> (Vec<f32>, Vec<Contribution>) {
    let n = updates.len();
    // `rank[r]` is the input position of the update of tie rank r.
    let mut rank: Vec<usize> = (0..n).collect();
    rank.sort_by_key(|&i| (updates[i].client, i));
    let ranked: Vec<&[f32]> = rank
        .iter()
        .map(|&i| updates[i].delta.values.as_slice())
        .collect();
    // Counted per tie rank: the positions in `used` or, when those are the majority (a trimmed
    // mean), the ones outside it, below and above.
    let count_used = 2 * used.len() <= n;
    let (below, above) = if count_used {
        (used.clone(), 0..0)
    } else {
        (0..used.start, used.end..n)
    };
    let mut counts = vec![0u64; n];
    let mut keys = vec![0u64; n];
    let out = (0..d)
        .map(|j| {
            for (r, (key, delta)) in keys.iter_mut().zip(&ranked).enumerate() {
                *key = u64::from(ordered_bits(delta[j])) << 32 | r as u64;
            }
            keys.sort_unstable();
            for &key in keys[below.clone()].iter().chain(&keys[above.clone()]) {
                counts[(key & 0xffff_ffff) as usize] += 1;
            }
            stat(&keys[used.clone()])
        })
        .collect();
    let mut kept = vec![0u64; n];
    for (r, &c) in counts.iter().enumerate() {
        kept[rank[r]] = if count_used { c } else { d as u64 - c };
    }
    let contributions = kept
        .into_iter()
        .map(|c| Contribution::Coordinatewise {
            kept_share: if d == 0 { 0.0 } else { c as f64 / d as f64 },
        })
        .collect();
    (out, contributions)
}

/// Coordinate-wise median (Yin et al. 2018): robust to fewer than half the clients being
/// arbitrary. For an even count, the mean of the two middle values. An update's contribution
/// is the share of the coordinates where its value was the middle one (or one of the two),
/// equal values taken in the order of their clients' ids. The shares of a round sum to 1 (odd
/// count) or 2 (even count).
#[derive(Debug, Clone, Default)]
pub struct CoordinateMedian {
    contributions: Vec<Contribution>,
}

impl CoordinateMedian {
    /// The coordinate-wise median.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Strategy for CoordinateMedian {
    fn aggregate(&mut self, updates: &[ClientUpdate]) -> Result<Vec<f32>, FlError> {
        self.contributions.clear();
        let d = dim(updates, "CoordinateMedian")?;
        let n = updates.len();
        let used = if n % 2 == 1 {
            n / 2..n / 2 + 1
        } else {
            n / 2 - 1..n / 2 + 1
        };
        let (out, contributions) = coordinatewise(updates, d, used, |mid| match *mid {
            [a, b] => ((f64::from(key_value(a)) + f64::from(key_value(b))) / 2.0) as f32,
            // An odd count: the one middle value (there is one: `dim` refuses no updates).
            _ => key_value(mid[0]),
        });
        self.contributions = contributions;
        Ok(out)
    }
    fn name(&self) -> String {
        "median".into()
    }
    fn contributions(&self) -> Vec<Contribution> {
        self.contributions.clone()
    }
}

/// Coordinate-wise trimmed mean: drops the `k` largest and `k` smallest values of every
/// coordinate and averages the rest; tolerates up to `k` arbitrary clients. Needs `n > 2k`.
/// An update's contribution is the share of the coordinates where its value was kept (not
/// trimmed), equal values taken in the order of their clients' ids. The shares of a round sum
/// to `n - 2k`.
#[derive(Debug, Clone)]
pub struct TrimmedMean {
    k: usize,
    contributions: Vec<Contribution>,
}

impl TrimmedMean {
    /// Trims `k` from each end.
    pub fn new(k: usize) -> Self {
        Self {
            k,
            contributions: Vec::new(),
        }
    }
}

impl Strategy for TrimmedMean {
    fn aggregate(&mut self, updates: &[ClientUpdate]) -> Result<Vec<f32>, FlError> {
        self.contributions.clear();
        let d = dim(updates, "TrimmedMean")?;
        let n = updates.len();
        if n <= self.k.saturating_mul(2) {
            return Err(FlError::NotEnoughUpdates {
                strategy: format!("TrimmedMean(k={})", self.k),
                need: self.k.saturating_mul(2).saturating_add(1),
                got: n,
            });
        }
        let k = self.k;
        let kept = (n - 2 * k) as f64;
        let (out, contributions) = coordinatewise(updates, d, k..n - k, |kept_keys| {
            let s: f64 = kept_keys.iter().map(|&x| f64::from(key_value(x))).sum();
            (s / kept) as f32
        });
        self.contributions = contributions;
        Ok(out)
    }
    fn name(&self) -> String {
        format!("trimmed-mean(k={})", self.k)
    }
    fn contributions(&self) -> Vec<Contribution> {
        self.contributions.clone()
    }
}
