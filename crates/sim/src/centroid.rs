//! The nearest-centroid classifier in the `NearestCentroid` contract's exact integers: the
//! contract's reference, bit for bit.
//!
//! sklearn's `NearestCentroid` (Euclidean) with each class's centroid the running mean of
//! its samples. Per class `c`: the samples `n_c`, the per-feature sums `S_{c,f}` and
//! `Q_c = Σ_f S_{c,f}²`. With `A_c = Σ_{f∈x} S_{c,f}`, `n_c²·(|x − μ_c|² − |x|) = Q_c − 2·n_c·A_c
//! = D_c`, so 1 is predicted iff `D_1·n_0² < D_0·n_1²`: no rounding anywhere. A class
//! without samples is never predicted.

use alloy_primitives::{Address, Bytes, U256};
use alloy_sol_types::SolConstructor;

use crate::chain::Chain;
use crate::chain::bindings::NearestCentroid as NcContract;
use crate::data::Sample;
use crate::model::ChainModel;
use crate::{Classifier, SimError};

/// Features per `load` transaction.
const LOAD_BATCH: usize = 256;

/// Binary nearest centroid over sparse binary features.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NearestCentroid {
    /// Samples per class.
    pub docs: [u64; 2],
    /// Per feature, the samples of each class in which it is present.
    pub sums: Vec<[u64; 2]>,
    /// `Σ_f S_{c,f}²` per class.
    pub sq: [u128; 2],
}

impl NearestCentroid {
    /// No samples seen.
    pub fn new(num_features: u32) -> Self {
        Self {
            docs: [0; 2],
            sums: vec![[0; 2]; num_features as usize],
            sq: [0; 2],
        }
    }

    /// Fit on `samples` from scratch (the class means).
    pub fn fit(&mut self, samples: &[Sample]) {
        *self = Self::new(self.sums.len() as u32);
        for s in samples {
            self.learn(&s.features, s.label);
        }
    }

    fn learn(&mut self, features: &[u32], label: u8) {
        let c = usize::from(label.min(1));
        for &f in features {
            let s = &mut self.sums[f as usize][c];
            self.sq[c] += 2 * u128::from(*s) + 1;
            *s += 1;
        }
        self.docs[c] += 1;
    }

    /// `D_c = Q_c − 2·n_c·A_c`.
    pub fn distance(&self, features: &[u32], c: usize) -> i128 {
        let a: u128 = features
            .iter()
            .map(|&f| u128::from(self.sums[f as usize][c]))
            .sum();
        self.sq[c] as i128 - 2 * i128::from(self.docs[c]) * a as i128
    }

    fn packed(&self, f: usize) -> U256 {
        U256::from(self.sums[f][0]) | (U256::from(self.sums[f][1]) << 128)
    }
}

impl Classifier for NearestCentroid {
    fn predict(&self, features: &[u32]) -> u8 {
        let (n0, n1) = (i128::from(self.docs[0]), i128::from(self.docs[1]));
        if n1 == 0 {
            return 0;
        }
        if n0 == 0 {
            return 1;
        }
        u8::from(self.distance(features, 1) * n0 * n0 < self.distance(features, 0) * n1 * n1)
    }

    fn update(&mut self, features: &[u32], label: u8) -> bool {
        self.learn(features, label);
        true
    }
}

impl ChainModel for NearestCentroid {
    fn name(&self) -> &'static str {
        "ncc"
    }

    fn deploy(&self, chain: &mut Chain, owner: Address, now: u64) -> Result<Address, SimError> {
        let n = u32::try_from(self.sums.len())
            .map_err(|_| SimError::Config("too many features".into()))?;
        let ctor = NcContract::constructorCall { numFeatures_: n };
        let code = [NcContract::BYTECODE.as_ref(), &ctor.abi_encode()].concat();
        let at = chain.deploy(now, owner, Bytes::from(code))?;
        let packed: Vec<U256> = (0..self.sums.len()).map(|f| self.packed(f)).collect();
        for (k, chunk) in packed.chunks(LOAD_BATCH).enumerate() {
            chain.must_send(
                now,
                owner,
                at,
                &NcContract::loadCall {
                    docs0: U256::from(self.docs[0]),
                    docs1: U256::from(self.docs[1]),
                    from: (k * LOAD_BATCH) as u32,
                    packed: chunk.to_vec(),
                },
            )?;
        }
        Ok(at)
    }

    fn check_chain(&self, chain: &mut Chain, at: Address, now: u64) -> Result<(), SimError> {
        let n = self.sums.len() as u32;
        let sums = chain.view(now, at, &NcContract::sumsCall { from: 0, count: n })?;
        let want: Vec<U256> = (0..self.sums.len()).map(|f| self.packed(f)).collect();
        let mut docs = [0u64; 2];
        let mut sq = [0u128; 2];
        for c in 0..2 {
            docs[c] = chain
                .view(now, at, &NcContract::docsCall(U256::from(c)))?
                .saturating_to();
            sq[c] = chain
                .view(now, at, &NcContract::sqCall(U256::from(c)))?
                .saturating_to();
        }
        if sums != want || docs != self.docs || sq != self.sq {
            return Err(SimError::Diverged {
                call: "nearest-centroid state".into(),
                reference: format!("docs {:?} sq {:?}", self.docs, self.sq),
                chain: format!("docs {docs:?} sq {sq:?}"),
            });
        }
        Ok(())
    }
}
