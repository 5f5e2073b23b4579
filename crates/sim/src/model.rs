//! The classifiers as the mechanisms use them: the Rust reference of each on-chain model,
//! how to deploy it with its off-chain initial fit, and how to check the chain's copy
//! against it.
//!
//! [`Model`] is the closed set the driver picks from with [`ModelKind`]; [`ChainModel`] is
//! what a mechanism needs of one.

use alloy_primitives::{Address, B256};
use rand::Rng;

use crate::centroid::NearestCentroid;
use crate::chain::Chain;
use crate::chain::bindings::SparsePerceptron;
use crate::data::Sample;
use crate::naive_bayes::NaiveBayes;
use crate::perceptron::{EtaSchedule, FitConfig, Perceptron};
use crate::{Classifier, SimError};

/// A classifier with an on-chain twin implementing `ISimClassifier`.
pub trait ChainModel: Classifier + Clone + std::fmt::Debug {
    /// `perceptron`, `nb` or `ncc`.
    fn name(&self) -> &'static str;
    /// Deploys the contract from `owner` at `now` and loads this state into it; the
    /// contract stays owned by `owner`.
    fn deploy(&self, chain: &mut Chain, owner: Address, now: u64) -> Result<Address, SimError>;
    /// Reads the whole state of the contract at `at` and fails with
    /// [`SimError::Diverged`] unless it equals this one.
    fn check_chain(&self, chain: &mut Chain, at: Address, now: u64) -> Result<(), SimError>;
}

/// Hands the model contract at `model` from `owner` to `next` (every simulator model has
/// the same `setOwner(address)`).
pub fn hand_over(
    chain: &mut Chain,
    now: u64,
    owner: Address,
    model: Address,
    next: Address,
) -> Result<(), SimError> {
    chain.must_send(now, owner, model, &SparsePerceptron::setOwnerCall { next })?;
    Ok(())
}

/// The model contract's `stateHash()`.
pub fn state_hash(chain: &mut Chain, now: u64, model: Address) -> Result<B256, SimError> {
    chain.view(now, model, &SparsePerceptron::stateHashCall {})
}

/// Which classifier a run trains.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, Hash,
)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// sklearn's perceptron (`learning_rate='optimal'`) in fixed point ([`Perceptron`]).
    #[default]
    Perceptron,
    /// Multinomial Naive Bayes, alpha 1, fixed-point log2 ([`NaiveBayes`]).
    Nb,
    /// Nearest centroid, exact integers ([`NearestCentroid`]).
    Ncc,
}

impl ModelKind {
    /// `perceptron`, `nb` or `ncc`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Perceptron => "perceptron",
            Self::Nb => "nb",
            Self::Ncc => "ncc",
        }
    }

    /// The model fit off-chain on `samples` (the initial portion, or a whole training set
    /// for a baseline), with the number of epochs the fit ran (1 for Naive Bayes and
    /// nearest centroid, which fit in one pass of counting).
    pub fn fit(
        self,
        num_features: u32,
        samples: &[Sample],
        fit: &FitConfig,
        eta: EtaSchedule,
        rng: &mut impl Rng,
    ) -> (Model, u32) {
        match self {
            Self::Perceptron => {
                let mut p = Perceptron::new(num_features, eta);
                let epochs = p.fit(samples, fit, rng);
                (Model::Perceptron(p), epochs)
            }
            Self::Nb => {
                let mut m = NaiveBayes::new(num_features);
                m.fit(samples);
                (Model::NaiveBayes(m), 1)
            }
            Self::Ncc => {
                let mut m = NearestCentroid::new(num_features);
                m.fit(samples);
                (Model::NearestCentroid(m), 1)
            }
        }
    }
}

/// One of the simulator's classifiers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Model {
    /// The sparse perceptron.
    Perceptron(Perceptron),
    /// Multinomial Naive Bayes.
    NaiveBayes(NaiveBayes),
    /// Nearest centroid.
    NearestCentroid(NearestCentroid),
}

macro_rules! each {
    ($self:expr, $m:ident => $e:expr) => {
        match $self {
            Model::Perceptron($m) => $e,
            Model::NaiveBayes($m) => $e,
            Model::NearestCentroid($m) => $e,
        }
    };
}

impl Classifier for Model {
    fn predict(&self, features: &[u32]) -> u8 {
        each!(self, m => m.predict(features))
    }

    fn update(&mut self, features: &[u32], label: u8) -> bool {
        each!(self, m => m.update(features, label))
    }
}

impl ChainModel for Model {
    fn name(&self) -> &'static str {
        each!(self, m => m.name())
    }

    fn deploy(&self, chain: &mut Chain, owner: Address, now: u64) -> Result<Address, SimError> {
        each!(self, m => m.deploy(chain, owner, now))
    }

    fn check_chain(&self, chain: &mut Chain, at: Address, now: u64) -> Result<(), SimError> {
        each!(self, m => m.check_chain(chain, at, now))
    }
}
