//! Multinomial Naive Bayes in the `NaiveBayes` contract's fixed point: the contract's
//! reference, bit for bit.
//!
//! sklearn's `MultinomialNB(alpha=1)` on binary features, updated online. Per class `c`: the
//! samples `n_c`, the per-feature counts `N_{c,f}`, their total `T_c`, and
//! `L_{c,f} = log2(N_{c,f} + 1)`. The score of class `c` for present features `x` is
//! `log2(n_c) + Σ_{f∈x} L_{c,f} − |x|·log2(T_c + V)` (`V` features), the log of the prior
//! times the Laplace-smoothed likelihood up to a term common to both classes; 1 is
//! predicted iff its score is strictly larger. A class without samples is never predicted.
//!
//! Logs are [`log2_q32`]: `floor(2^32 · log2(x))` by the bit-by-bit squaring algorithm in
//! integers (the contract's `log2Q32`), so Rust and Solidity agree exactly. Its error is
//! below `2^-32` per bit step, far below what could change a prediction except on
//! near-ties, which both sides then break identically.

use alloy_primitives::{Address, Bytes, U256};
use alloy_sol_types::SolConstructor;

use crate::chain::Chain;
use crate::chain::bindings::NaiveBayes as NbContract;
use crate::data::Sample;
use crate::model::ChainModel;
use crate::{Classifier, SimError};

/// `floor(2^32 · log2(x))` for `1 <= x < 2^64` (0 for 0, which no caller passes): the
/// integer part from the most significant bit, then 32 fraction bits by squaring the
/// mantissa in Q60, rounding down at every step.
pub fn log2_q32(x: u64) -> u64 {
    if x == 0 {
        return 0;
    }
    let n = 63 - u64::from(x.leading_zeros());
    let mut r = n << 32;
    let mut y: u128 = (u128::from(x) << 60) >> n;
    let mut bit = 1u64 << 31;
    while bit > 0 {
        y = (y * y) >> 60;
        if y >= 1 << 61 {
            y >>= 1;
            r |= bit;
        }
        bit >>= 1;
    }
    r
}

/// Features per `load` transaction.
const LOAD_BATCH: usize = 256;

/// Multinomial Naive Bayes over sparse binary features.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NaiveBayes {
    /// Samples per class.
    pub docs: [u64; 2],
    /// Sum of the per-feature counts, per class.
    pub totals: [u64; 2],
    /// Per feature, the samples of each class in which it is present.
    pub counts: Vec<[u64; 2]>,
}

impl NaiveBayes {
    /// No samples seen.
    pub fn new(num_features: u32) -> Self {
        Self {
            docs: [0; 2],
            totals: [0; 2],
            counts: vec![[0; 2]; num_features as usize],
        }
    }

    /// Fit on `samples` from scratch (one pass: the counts).
    pub fn fit(&mut self, samples: &[Sample]) {
        *self = Self::new(self.counts.len() as u32);
        for s in samples {
            self.learn(&s.features, s.label);
        }
    }

    fn learn(&mut self, features: &[u32], label: u8) {
        let c = usize::from(label.min(1));
        for &f in features {
            self.counts[f as usize][c] += 1;
        }
        self.totals[c] += features.len() as u64;
        self.docs[c] += 1;
    }

    /// The contract's score of class `c` (log2 in Q32).
    pub fn score(&self, features: &[u32], c: usize) -> i128 {
        let sum: i128 = features
            .iter()
            .map(|&f| i128::from(log2_q32(self.counts[f as usize][c] + 1)))
            .sum();
        i128::from(log2_q32(self.docs[c])) + sum
            - features.len() as i128
                * i128::from(log2_q32(self.totals[c] + self.counts.len() as u64))
    }

    /// The contract's slot of feature `f`.
    pub fn cell(&self, f: usize) -> U256 {
        let cell = |n: u64| (U256::from(n) << 64) | U256::from(log2_q32(n + 1));
        cell(self.counts[f][0]) | (cell(self.counts[f][1]) << 128)
    }
}

impl Classifier for NaiveBayes {
    fn predict(&self, features: &[u32]) -> u8 {
        if self.docs[1] == 0 {
            return 0;
        }
        if self.docs[0] == 0 {
            return 1;
        }
        u8::from(self.score(features, 1) > self.score(features, 0))
    }

    fn update(&mut self, features: &[u32], label: u8) -> bool {
        self.learn(features, label);
        true
    }
}

impl ChainModel for NaiveBayes {
    fn name(&self) -> &'static str {
        "nb"
    }

    fn deploy(&self, chain: &mut Chain, owner: Address, now: u64) -> Result<Address, SimError> {
        let n = u32::try_from(self.counts.len())
            .map_err(|_| SimError::Config("too many features".into()))?;
        let ctor = NbContract::constructorCall { numFeatures_: n };
        let code = [NbContract::BYTECODE.as_ref(), &ctor.abi_encode()].concat();
        let at = chain.deploy(now, owner, Bytes::from(code))?;
        for (k, chunk) in self.counts.chunks(LOAD_BATCH).enumerate() {
            chain.must_send(
                now,
                owner,
                at,
                &NbContract::loadCall {
                    docs0: U256::from(self.docs[0]),
                    docs1: U256::from(self.docs[1]),
                    totals0: U256::from(self.totals[0]),
                    totals1: U256::from(self.totals[1]),
                    from: (k * LOAD_BATCH) as u32,
                    counts0: chunk.iter().map(|c| c[0]).collect(),
                    counts1: chunk.iter().map(|c| c[1]).collect(),
                },
            )?;
        }
        Ok(at)
    }

    fn check_chain(&self, chain: &mut Chain, at: Address, now: u64) -> Result<(), SimError> {
        let n = self.counts.len() as u32;
        let cells = chain.view(now, at, &NbContract::cellsCall { from: 0, count: n })?;
        let want: Vec<U256> = (0..self.counts.len()).map(|f| self.cell(f)).collect();
        let mut docs = [0u64; 2];
        let mut totals = [0u64; 2];
        for c in 0..2 {
            docs[c] = chain
                .view(now, at, &NbContract::docsCall(U256::from(c)))?
                .saturating_to();
            totals[c] = chain
                .view(now, at, &NbContract::totalsCall(U256::from(c)))?
                .saturating_to();
        }
        if cells != want || docs != self.docs || totals != self.totals {
            let first = cells.iter().zip(&want).position(|(a, b)| a != b);
            return Err(SimError::Diverged {
                call: "naive Bayes state".into(),
                reference: format!(
                    "docs {:?} totals {:?} first differing feature {first:?}",
                    self.docs, self.totals
                ),
                chain: format!("docs {docs:?} totals {totals:?}"),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log2_is_exact_on_powers_of_two_and_close_elsewhere() {
        assert_eq!(log2_q32(1), 0);
        assert_eq!(log2_q32(2), 1 << 32);
        assert_eq!(log2_q32(1024), 10 << 32);
        for x in [3u64, 5, 7, 10, 1000, 123_456_789, u64::MAX / 3] {
            let got = log2_q32(x) as f64 / 4_294_967_296.0;
            assert!((got - (x as f64).log2()).abs() < 1e-8, "{x}: {got}");
            // Rounded down.
            assert!(got <= (x as f64).log2() + 1e-12);
        }
    }
}
