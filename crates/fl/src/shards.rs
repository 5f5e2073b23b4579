//! Sharded training for exact, fast unlearning (SISA, Bourtoule et al. 2021; S3T for adapters).
//!
//! A run with `[unlearning] shards = K` groups its clients into K shards (client `k` in shard
//! `k mod K`), and each shard trains its own copy of the model's trainable tensors (its slice)
//! from its own clients' updates only: a client trains on its shard's slice, validators score
//! its update against that slice, and each shard aggregates with its own strategy. The model
//! served (evaluated, unlearned, measured) is the mean of the slices, the way federated
//! averaging combines adapters. No shard's slice ever depends on another shard's data, so
//! forgetting a client retrains its shard alone (`cohort unlearn --method shards`), exactly.
//!
//! On the ledger a sharded model is one blob: every slice's tensors, named `shard-{s}.{name}`
//! ([`Shards::layout`]); its hash is the round's model, so one entry covers all the slices. An
//! unsharded run (`K = 1`) is unchanged: its layout is the task's own.
//!
//! ```
//! use std::sync::Arc;
//! use cohort_fl::{Layout, shards::Shards};
//!
//! let s = Shards::new(2, Arc::new(Layout::flat(3))).unwrap();
//! let model = s.init(vec![1.0, 2.0, 3.0]);
//! assert_eq!(model.len(), 6);
//! assert_eq!(s.of(5), 1);
//! assert_eq!(&*s.served(&[1.0, 2.0, 3.0, 3.0, 4.0, 5.0]), &[2.0, 3.0, 4.0]);
//! ```

use std::borrow::Cow;
use std::sync::Arc;

use crate::strategy::{Contribution, Strategy};
use crate::{ClientUpdate, FlError, Layout};

/// The most shards a run may have.
pub const MAX_SHARDS: u32 = 256;

/// How a run's model is split into shards.
#[derive(Debug, Clone)]
pub struct Shards {
    k: u32,
    inner: Arc<Layout>,
    outer: Arc<Layout>,
}

impl Shards {
    /// `k` shards of a model of layout `inner` (the task's). `k` of 0 or above
    /// [`MAX_SHARDS`], or a model too large for `k` copies, is refused.
    pub fn new(k: u32, inner: Arc<Layout>) -> Result<Self, FlError> {
        if k == 0 || k > MAX_SHARDS {
            return Err(FlError::InvalidConfig {
                what: "unlearning.shards",
                reason: format!("{k} is not in [1, {MAX_SHARDS}]"),
            });
        }
        if k == 1 {
            return Ok(Self::none(inner));
        }
        let tensors = (0..k)
            .flat_map(|s| {
                inner
                    .tensors()
                    .iter()
                    .map(move |(name, shape)| (format!("shard-{s}.{name}"), shape.clone()))
            })
            .collect();
        let outer = Arc::new(Layout::new(tensors)?);
        Ok(Self { k, inner, outer })
    }

    /// One shard: the model is the task's, unchanged.
    pub fn none(inner: Arc<Layout>) -> Self {
        Self {
            k: 1,
            outer: Arc::clone(&inner),
            inner,
        }
    }

    /// Number of shards.
    pub fn count(&self) -> u32 {
        self.k
    }

    /// Whether there is more than one shard.
    pub fn is_sharded(&self) -> bool {
        self.k > 1
    }

    /// Client `client`'s shard.
    pub fn of(&self, client: u32) -> u32 {
        client % self.k
    }

    /// The clients among `0..clients` in shard `s`, ascending.
    pub fn members(&self, clients: u32, s: u32) -> Vec<u32> {
        (0..clients).filter(|&k| self.of(k) == s).collect()
    }

    /// The task's layout: one slice, what a client trains and what an update carries.
    pub fn inner(&self) -> &Arc<Layout> {
        &self.inner
    }

    /// The sharded model's layout: every slice's tensors (the task's for one shard).
    pub fn layout(&self) -> &Arc<Layout> {
        &self.outer
    }

    /// The sharded model whose every slice is `init` (a slice of the task's layout).
    pub fn init(&self, init: Vec<f32>) -> Vec<f32> {
        if self.k == 1 {
            return init;
        }
        let mut out = Vec::with_capacity(init.len() * self.k as usize);
        for _ in 0..self.k {
            out.extend_from_slice(&init);
        }
        out
    }

    /// Shard `s`'s slice of `model` (a vector of [`Self::layout`]).
    pub fn slice<'a>(&self, model: &'a [f32], s: u32) -> &'a [f32] {
        let n = self.inner.len();
        let s = (s % self.k) as usize;
        model.get(s * n..(s + 1) * n).unwrap_or(&[])
    }

    /// Shard `s`'s slice of `model`, to change.
    pub fn slice_mut<'a>(&self, model: &'a mut [f32], s: u32) -> &'a mut [f32] {
        let n = self.inner.len();
        let s = (s % self.k) as usize;
        model.get_mut(s * n..(s + 1) * n).unwrap_or(&mut [])
    }

    /// The model served: the mean of the slices (accumulated in f64, in shard order), in the
    /// task's layout. With one shard, `model` itself.
    pub fn served<'a>(&self, model: &'a [f32]) -> Cow<'a, [f32]> {
        if self.k == 1 {
            return Cow::Borrowed(model);
        }
        let n = self.inner.len();
        let mut acc = vec![0f64; n];
        for s in 0..self.k {
            for (a, &x) in acc.iter_mut().zip(self.slice(model, s)) {
                *a += f64::from(x);
            }
        }
        let k = f64::from(self.k);
        Cow::Owned(acc.into_iter().map(|a| (a / k) as f32).collect())
    }

    /// The aggregation of a sharded run: a strategy per shard, each built by `build`, each
    /// aggregating its own clients' updates into its own slice (for one shard, `build()`).
    pub fn strategy(&self, build: impl Fn() -> Box<dyn Strategy>) -> Box<dyn Strategy> {
        if self.k == 1 {
            return build();
        }
        Box::new(PerShard {
            shards: self.clone(),
            inner: (0..self.k).map(|_| build()).collect(),
            contributions: Vec::new(),
        })
    }
}

/// A strategy per shard (see [`Shards::strategy`]): the aggregate is a delta of the sharded
/// model, each shard's slice its own strategy's aggregate of its clients' updates, zero for a
/// shard without any (or with too few for a robust strategy: its slice stays as it is).
struct PerShard {
    shards: Shards,
    inner: Vec<Box<dyn Strategy>>,
    contributions: Vec<Contribution>,
}

impl Strategy for PerShard {
    fn aggregate(&mut self, updates: &[ClientUpdate]) -> Result<Vec<f32>, FlError> {
        self.contributions = vec![Contribution::Excluded; updates.len()];
        let n = self.shards.inner.len();
        if let Some(u) = updates.iter().find(|u| u.delta.values.len() != n) {
            return Err(FlError::ShapeMismatch {
                a: n,
                b: u.delta.values.len(),
            });
        }
        let mut out = vec![0f32; n * self.shards.k as usize];
        for (s, strategy) in (0..self.shards.k).zip(&mut self.inner) {
            let (idx, mine): (Vec<usize>, Vec<ClientUpdate>) = updates
                .iter()
                .enumerate()
                .filter(|(_, u)| self.shards.of(u.client) == s)
                .map(|(i, u)| (i, u.clone()))
                .unzip();
            if mine.is_empty() {
                continue;
            }
            match strategy.aggregate(&mine) {
                Ok(delta) => {
                    self.shards.slice_mut(&mut out, s).copy_from_slice(&delta);
                    for (i, c) in idx.into_iter().zip(strategy.contributions()) {
                        self.contributions[i] = c;
                    }
                }
                Err(FlError::NotEnoughUpdates { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    fn name(&self) -> String {
        let inner = self.inner.first().map_or_else(String::new, |s| s.name());
        format!("{inner} per shard ({})", self.shards.k)
    }

    /// The shards' states one after another, after one vector holding how many vectors each
    /// shard has.
    fn state(&self) -> Vec<Vec<f64>> {
        let states: Vec<Vec<Vec<f64>>> = self.inner.iter().map(|s| s.state()).collect();
        if states.iter().all(Vec::is_empty) {
            return Vec::new();
        }
        let mut out = vec![states.iter().map(|s| s.len() as f64).collect()];
        out.extend(states.into_iter().flatten());
        out
    }

    fn contributions(&self) -> Vec<Contribution> {
        self.contributions.clone()
    }

    fn restore(&mut self, state: &[Vec<f64>]) -> Result<(), FlError> {
        let bad = |reason: String| FlError::InvalidConfig {
            what: "strategy state",
            reason,
        };
        let Some((counts, rest)) = state.split_first() else {
            for s in &mut self.inner {
                s.restore(&[])?;
            }
            return Ok(());
        };
        if counts.len() != self.inner.len()
            || counts.iter().any(|c| !(c.is_finite() && *c >= 0.0))
            || counts.iter().sum::<f64>() != rest.len() as f64
        {
            return Err(bad(format!(
                "the saved state does not split into {} shards' states",
                self.inner.len()
            )));
        }
        let mut at = 0usize;
        for (s, &c) in self.inner.iter_mut().zip(counts) {
            let c = c as usize;
            s.restore(&rest[at..at + c])?;
            at += c;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::{FedAvg, FedOpt};

    fn shards(k: u32) -> Shards {
        Shards::new(k, Arc::new(Layout::flat(2))).unwrap()
    }

    #[test]
    fn slices_names_and_refusals() {
        assert!(Shards::new(0, Arc::new(Layout::flat(2))).is_err());
        assert!(Shards::new(MAX_SHARDS + 1, Arc::new(Layout::flat(2))).is_err());
        let one = shards(1);
        assert!(!one.is_sharded());
        assert!(
            Arc::ptr_eq(one.layout(), one.inner()),
            "unsharded: the task's layout"
        );
        let s = shards(3);
        assert_eq!(s.layout().len(), 6);
        let names: Vec<&str> = s
            .layout()
            .tensors()
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(names, ["shard-0.delta", "shard-1.delta", "shard-2.delta"]);
        assert_eq!(s.members(8, 1), [1, 4, 7]);
        let m = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        assert_eq!(s.slice(&m, 2), &[5.0, 6.0]);
        assert_eq!(&*s.served(&m), &[3.0, 4.0]);
        assert!(s.slice(&m[..3], 2).is_empty(), "a short model is no panic");
    }

    #[test]
    fn each_shard_aggregates_its_own_clients() {
        let s = shards(2);
        let mut st = s.strategy(|| Box::new(FedAvg::new()));
        let ups = vec![
            ClientUpdate::new(0, 1, vec![1.0, 1.0], 1),
            ClientUpdate::new(1, 1, vec![5.0, 5.0], 1),
            ClientUpdate::new(2, 1, vec![3.0, 3.0], 1),
        ];
        // Shard 0: clients 0 and 2; shard 1: client 1 alone.
        assert_eq!(st.aggregate(&ups).unwrap(), [2.0, 2.0, 5.0, 5.0]);
        let c = st.contributions();
        assert_eq!(c.len(), 3);
        assert!(matches!(c[1], Contribution::Weighted { weight, .. } if weight == 1.0));
        // A shard without updates keeps its slice.
        let only = st.aggregate(&ups[1..2]).unwrap();
        assert_eq!(only, [0.0, 0.0, 5.0, 5.0]);
        assert!(
            st.aggregate(&[ClientUpdate::new(0, 1, vec![1.0; 3], 1)])
                .is_err()
        );
    }

    #[test]
    fn per_shard_state_saves_and_restores() {
        let s = shards(2);
        let build = || -> Box<dyn Strategy> { Box::new(FedOpt::adam(FedAvg::new(), 0.1)) };
        let mut a = s.strategy(build);
        let ups = vec![
            ClientUpdate::new(0, 1, vec![1.0, -1.0], 1),
            ClientUpdate::new(1, 1, vec![0.5, 2.0], 1),
        ];
        a.aggregate(&ups).unwrap();
        let saved = a.state();
        let mut b = s.strategy(build);
        b.restore(&saved).unwrap();
        assert_eq!(a.aggregate(&ups).unwrap(), b.aggregate(&ups).unwrap());
        assert!(
            b.restore(&saved[1..]).is_err(),
            "a state that does not split"
        );
        assert!(b.restore(&[vec![f64::NAN, 1.0]]).is_err());
    }
}
