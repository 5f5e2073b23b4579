//! The sparse perceptron, in the same fixed point as the `SparsePerceptron` contract.
//!
//! scikit-learn's `SGDClassifier(loss='perceptron', penalty=None, learning_rate='optimal')`
//! with `alpha = 1e-4` moves the weights of a wrongly scored sample (`y * s <= 0`, `y = ±1`,
//! `s = w·x + b`) by `eta_t * y`, with `eta_t = 1 / (alpha * (t0 + t - 1))` for the `t`-th sample
//! seen and `t0 = 1 / (eta0 * alpha)`, `eta0 = sqrt(1 / sqrt(alpha))`: `eta_t = 10000 / (999 + t)`.
//! Here weights are integers scaled by [`WEIGHT_SCALE`] and
//! `eta_t = floor(numerator / (offset + t))`, exactly what the contract computes, so this type
//! is the contract's reference implementation: the same samples in the same order give the
//! same weights, bit for bit.
//!
//! [`Perceptron::fit`] is sklearn's `fit` in that arithmetic: weights from zero, epochs over a
//! shuffled copy of the data, stopping when the summed perceptron loss has not improved by
//! `tol * n` for `n_iter_no_change` epochs running (or at `max_iter`).

use alloy_primitives::{Address, Bytes, I256, U256};
use alloy_sol_types::SolConstructor;
use rand::Rng;
use rand::seq::SliceRandom;

use crate::chain::Chain;
use crate::chain::bindings::SparsePerceptron;
use crate::data::Sample;
use crate::model::ChainModel;
use crate::{Classifier, SimError};

/// Fixed-point scale of weights, bias and the learning rate (the contract's `WEIGHT_SCALE`).
pub const WEIGHT_SCALE: i128 = 1_000_000_000;

/// `eta_t = floor(numerator / (offset + t))`, scaled by [`WEIGHT_SCALE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EtaSchedule {
    /// Scaled numerator (`WEIGHT_SCALE / alpha`).
    pub numerator: u128,
    /// `t0 - 1`.
    pub offset: u128,
}

impl EtaSchedule {
    /// sklearn's `learning_rate='optimal'` for the perceptron loss at regularisation `alpha`
    /// (`1e-4` is sklearn's default and gives `10000 / (999 + t)`).
    pub fn sklearn_optimal(alpha: f64) -> Self {
        let eta0 = (1.0 / alpha.sqrt()).sqrt();
        let t0 = (1.0 / (eta0 * alpha)).round();
        Self {
            numerator: (WEIGHT_SCALE as f64 / alpha).round() as u128,
            offset: (t0 as u128).saturating_sub(1),
        }
    }

    /// The scaled rate for the `t`-th sample.
    pub fn eta(&self, t: u64) -> i128 {
        (self.numerator / (self.offset + u128::from(t))) as i128
    }
}

impl Default for EtaSchedule {
    fn default() -> Self {
        Self::sklearn_optimal(1e-4)
    }
}

/// sklearn's stopping rule for `fit`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FitConfig {
    /// At most this many epochs (sklearn: `max_iter = 1000`).
    pub max_iter: u32,
    /// Required improvement of the summed loss per sample (sklearn: `tol = 1e-3`).
    pub tol: f64,
    /// Epochs without that improvement before stopping (sklearn: 5).
    pub n_iter_no_change: u32,
    /// Shuffle the samples before every epoch (sklearn: true).
    pub shuffle: bool,
}

impl Default for FitConfig {
    fn default() -> Self {
        Self {
            max_iter: 1000,
            tol: 1e-3,
            n_iter_no_change: 5,
            shuffle: true,
        }
    }
}

/// A binary perceptron over sparse binary features.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Perceptron {
    /// One weight per feature, scaled by [`WEIGHT_SCALE`].
    pub weights: Vec<i128>,
    /// Intercept, scaled by [`WEIGHT_SCALE`].
    pub bias: i128,
    /// Samples seen (the `t` of the last update).
    pub samples_seen: u64,
    /// The learning-rate schedule.
    pub eta: EtaSchedule,
}

impl Perceptron {
    /// All-zero weights.
    pub fn new(num_features: u32, eta: EtaSchedule) -> Self {
        Self {
            weights: vec![0; num_features as usize],
            bias: 0,
            samples_seen: 0,
            eta,
        }
    }

    /// `bias + sum of the present features' weights`. Features must be in range.
    pub fn score(&self, features: &[u32]) -> i128 {
        self.bias
            + features
                .iter()
                .map(|&f| self.weights[f as usize])
                .sum::<i128>()
    }

    /// Trains with one sample; true if the weights moved.
    pub fn learn(&mut self, features: &[u32], label: u8) -> bool {
        let s = self.score(features);
        self.samples_seen += 1;
        let y: i128 = if label == 1 { 1 } else { -1 };
        if y * s > 0 {
            return false;
        }
        let delta = y * self.eta.eta(self.samples_seen);
        for &f in features {
            self.weights[f as usize] += delta;
        }
        self.bias += delta;
        true
    }

    /// sklearn's `fit` from zero weights; returns the number of epochs run.
    pub fn fit(&mut self, samples: &[Sample], cfg: &FitConfig, rng: &mut impl Rng) -> u32 {
        self.weights.iter_mut().for_each(|w| *w = 0);
        self.bias = 0;
        self.samples_seen = 0;
        if samples.is_empty() {
            return 0;
        }
        let n = samples.len() as i128;
        let tol = (cfg.tol * WEIGHT_SCALE as f64).round() as i128 * n;
        let mut order: Vec<usize> = (0..samples.len()).collect();
        let mut best = i128::MAX;
        let mut no_improvement = 0;
        let mut epochs = 0;
        for _ in 0..cfg.max_iter {
            epochs += 1;
            if cfg.shuffle {
                order.shuffle(rng);
            }
            let mut loss: i128 = 0;
            for &i in &order {
                let s = &samples[i];
                let y: i128 = if s.label == 1 { 1 } else { -1 };
                loss += (-y * self.score(&s.features)).max(0);
                self.learn(&s.features, s.label);
            }
            if best != i128::MAX && loss > best - tol {
                no_improvement += 1;
            } else {
                no_improvement = 0;
            }
            best = best.min(loss);
            if no_improvement >= cfg.n_iter_no_change {
                break;
            }
        }
        epochs
    }

    /// Fraction of `samples` predicted right.
    pub fn accuracy(&self, samples: &[Sample]) -> f64 {
        accuracy(self, samples)
    }
}

impl Classifier for Perceptron {
    fn predict(&self, features: &[u32]) -> u8 {
        u8::from(self.score(features) > 0)
    }

    fn update(&mut self, features: &[u32], label: u8) -> bool {
        self.learn(features, label)
    }
}

/// Weights per `load` transaction when deploying a model.
pub const LOAD_BATCH: usize = 256;

/// An `int256` from an `i128`.
pub fn i256(v: i128) -> I256 {
    let mut b = if v < 0 { [0xff; 32] } else { [0; 32] };
    b[16..].copy_from_slice(&v.to_be_bytes());
    I256::from_raw(U256::from_be_bytes(b))
}

fn to_i128(v: I256) -> Result<i128, SimError> {
    i128::try_from(v).map_err(|_| SimError::Chain(format!("weight {v} does not fit in i128")))
}

/// The weights, bias and samples seen of the `SparsePerceptron` at `at`.
pub fn read_chain(
    chain: &mut Chain,
    at: Address,
    now: u64,
) -> Result<(Vec<i128>, i128, u64), SimError> {
    let n = chain.view(now, at, &SparsePerceptron::numFeaturesCall {})?;
    let w = chain.view(
        now,
        at,
        &SparsePerceptron::weightsCall { from: 0, count: n },
    )?;
    let bias = to_i128(chain.view(now, at, &SparsePerceptron::biasCall {})?)?;
    let seen = chain.view(now, at, &SparsePerceptron::samplesSeenCall {})?;
    let seen = u64::try_from(seen).map_err(|_| SimError::Chain("samplesSeen overflows".into()))?;
    let w = w.into_iter().map(to_i128).collect::<Result<_, _>>()?;
    Ok((w, bias, seen))
}

impl ChainModel for Perceptron {
    fn name(&self) -> &'static str {
        "perceptron"
    }

    fn deploy(&self, chain: &mut Chain, owner: Address, now: u64) -> Result<Address, SimError> {
        let num_features = u32::try_from(self.weights.len())
            .map_err(|_| SimError::Config("too many features".into()))?;
        let ctor = SparsePerceptron::constructorCall {
            numFeatures_: num_features,
            etaNumerator_: U256::from(self.eta.numerator),
            etaOffset_: U256::from(self.eta.offset),
        };
        let code = [SparsePerceptron::BYTECODE.as_ref(), &ctor.abi_encode()].concat();
        let at = chain.deploy(now, owner, Bytes::from(code))?;
        let weights: Vec<I256> = self.weights.iter().map(|&w| i256(w)).collect();
        for (k, chunk) in weights.chunks(LOAD_BATCH).enumerate() {
            chain.must_send(
                now,
                owner,
                at,
                &SparsePerceptron::loadCall {
                    bias_: i256(self.bias),
                    samplesSeen_: U256::from(self.samples_seen),
                    from: (k * LOAD_BATCH) as u32,
                    w: chunk.to_vec(),
                },
            )?;
        }
        Ok(at)
    }

    fn check_chain(&self, chain: &mut Chain, at: Address, now: u64) -> Result<(), SimError> {
        let (w, bias, seen) = read_chain(chain, at, now)?;
        if w != self.weights || bias != self.bias || seen != self.samples_seen {
            return Err(SimError::Diverged {
                call: "perceptron weights".into(),
                reference: format!("bias {} seen {}", self.bias, self.samples_seen),
                chain: format!("bias {bias} seen {seen}"),
            });
        }
        Ok(())
    }
}

/// Fraction of `samples` a classifier predicts right (0 for none).
pub fn accuracy(model: &impl Classifier, samples: &[Sample]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let right = samples
        .iter()
        .filter(|s| model.predict(&s.features) == s.label)
        .count();
    right as f64 / samples.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sklearn_optimal_rate_at_default_alpha() {
        let e = EtaSchedule::default();
        assert_eq!(e.offset, 999);
        assert_eq!(e.numerator, 10_000 * WEIGHT_SCALE as u128);
        assert_eq!(e.eta(1), 10 * WEIGHT_SCALE);
        assert_eq!(e.eta(9001), WEIGHT_SCALE);
        // floor(1e13 / 1002) = 9_980_039_920
        assert_eq!(e.eta(3), 9_980_039_920);
    }

    #[test]
    fn updates_only_on_mistakes_and_zero_scores() {
        let mut p = Perceptron::new(4, EtaSchedule::default());
        // Score 0 counts as a mistake for either label (y * s <= 0).
        assert!(p.learn(&[1, 3], 1));
        assert_eq!(p.weights, vec![0, 10 * WEIGHT_SCALE, 0, 10 * WEIGHT_SCALE]);
        assert_eq!(p.bias, 10 * WEIGHT_SCALE);
        assert_eq!(p.predict(&[1]), 1);
        // Right with margin: no change, but t still advances.
        assert!(!p.learn(&[1, 3], 1));
        assert_eq!(p.samples_seen, 2);
        // Wrong: moves by eta_3 downwards.
        assert!(p.learn(&[3], 0));
        assert_eq!(p.weights[3], 10 * WEIGHT_SCALE - 9_980_039_920);
    }

    #[test]
    fn fit_separates_separable_data_and_stops() {
        let samples: Vec<Sample> = (0..40)
            .map(|i| Sample {
                features: if i % 2 == 0 { vec![0, 2] } else { vec![1, 2] },
                label: (i % 2) as u8,
            })
            .collect();
        let mut p = Perceptron::new(3, EtaSchedule::default());
        let mut rng = cohort_core::ChaCha8::new(1);
        let epochs = p.fit(&samples, &FitConfig::default(), &mut rng);
        assert!(
            epochs < 1000,
            "stops early once the loss plateaus: {epochs}"
        );
        assert_eq!(p.accuracy(&samples), 1.0);
        assert_eq!(p.samples_seen, u64::from(epochs) * 40);
    }
}
