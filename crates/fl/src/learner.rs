//! The learning task behind a run, as the runtime sees it: the [`Learner`] trait and the
//! [`Metrics`] it reports. The trait speaks flat parameter vectors and the model's
//! [`Layout`] (its tensors' names and shapes, which a blob and an update carry), not tensors,
//! so the pure domain and the parties hold a `dyn Learner` without an ML dependency; the tasks
//! themselves (least squares, LoRA fine-tuning of a GPT, IMDB sentiment) live in
//! `cohort-tasks`.

use std::sync::Arc;

use cohort_core::{Hash32, Rng};
use serde::{Deserialize, Serialize};

use crate::FlError;
use crate::attack::DataAttack;
use crate::update::Layout;

/// Quality of a model on some data.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Mean loss.
    pub loss: f64,
    /// Accuracy, for classifiers.
    pub accuracy: Option<f64>,
    /// Perplexity (`exp(loss)`), for language models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perplexity: Option<f64>,
    /// Share of triggered test samples of the other classes that the model assigns to the
    /// backdoor's target class, when a backdoor attacker is present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backdoor_success_rate: Option<f64>,
}

impl Metrics {
    /// Just a loss.
    pub fn loss(loss: f64) -> Self {
        Self {
            loss,
            accuracy: None,
            perplexity: None,
            backdoor_success_rate: None,
        }
    }
}

/// How a model does on a set of samples, sample by sample: what unlearning measures on a
/// forgotten client's data (its forget set), the others' (the retain set) and unseen data
/// (membership inference compares the two loss distributions).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleLosses {
    /// The set's metrics (mean loss, and accuracy for a classifier).
    pub metrics: Metrics,
    /// Each sample's loss, in the set's order.
    pub losses: Vec<f64>,
    /// For language models, each sample's Min-K% loss (the mean loss of its least likely
    /// tokens), in the same order: a stronger membership signal than the mean loss.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_k: Option<Vec<f64>>,
}

fn no_samples(what: &str) -> FlError {
    FlError::InvalidConfig {
        what: "task",
        reason: format!("this task cannot evaluate {what} sample by sample"),
    }
}

/// A federated learning task.
///
/// Every method is deterministic in its arguments (randomness comes in through `rng`), so a
/// run replays from its seed. Implementations may keep one model and load parameters into it
/// for each call: calls are sequential.
pub trait Learner {
    /// The model's trainable tensors (name and shape, in flat order): every flat vector this
    /// learner takes or returns is in this layout, and its blobs name their tensors by it
    /// ([`Layout::encode`]). Tasks without named parameters give [`Layout::flat`]. The same
    /// `Arc` on every call, so that the updates of a run share it.
    fn layout(&self) -> Arc<Layout>;
    /// The initial global parameters.
    fn init(&self) -> Vec<f32>;
    /// Client `k` trains from `global` on its own data and returns its delta (flat, in
    /// [`layout`](Self::layout)'s order).
    fn train(&self, client: u32, global: &[f32], rng: &mut Rng) -> Result<Vec<f32>, FlError>;
    /// How many samples client `k` holds.
    fn num_samples(&self, client: u32) -> u64;
    /// Merkle root over client `k`'s data shards and the number of shards, for the dataset
    /// commitment on the ledger.
    fn dataset_commitment(&self, client: u32) -> (Hash32, u64);
    /// Loss of `params` on validator `v`'s held-out data.
    fn holdout_loss(&self, validator: u32, params: &[f32]) -> Result<f64, FlError>;
    /// Metrics of `params` on the test set.
    fn evaluate(&self, params: &[f32]) -> Result<Metrics, FlError>;
    /// `params` on client `k`'s own training data, sample by sample (for a data attacker,
    /// the poisoned data it trains on). Tasks that cannot refuse (the default).
    fn client_samples(&self, client: u32, params: &[f32]) -> Result<SampleLosses, FlError> {
        let _ = (client, params);
        Err(no_samples("a client's data"))
    }
    /// `params` on the test set, sample by sample; the metrics are [`Self::evaluate`]'s.
    /// Tasks that cannot refuse (the default).
    fn test_samples(&self, params: &[f32]) -> Result<SampleLosses, FlError> {
        let _ = params;
        Err(no_samples("the test set"))
    }
    /// Approximate unlearning of client `client`'s data from `params` as `spec` says (see
    /// [`crate::unlearning::UnlearnSpec`]), deterministic in `seed`: the new parameters.
    /// Tasks that cannot refuse (the default).
    fn unlearn(
        &self,
        client: u32,
        params: &[f32],
        spec: &crate::unlearning::UnlearnSpec,
        seed: u64,
    ) -> Result<Vec<f32>, FlError> {
        let _ = (client, params, spec, seed);
        Err(FlError::InvalidConfig {
            what: "--method",
            reason: "this task has no approximate unlearning (the LoRA methods need the lm \
                     task or the imdb task's LoRA gpt): use retrain or fed-eraser"
                .into(),
        })
    }
    /// Holds out the last `fraction` of every client's own data from its training, for
    /// [`Self::local_loss`] (a run's collaboration gain). Tasks that cannot refuse (the
    /// default).
    fn hold_out_locally(&mut self, fraction: f64) -> Result<(), FlError> {
        let _ = fraction;
        Err(FlError::InvalidConfig {
            what: "report.collaboration_gain",
            reason: "this task keeps no held-out slice of a client's own data (the lm task does)"
                .into(),
        })
    }
    /// Loss of `params` on the slice of client `k`'s own data it holds out
    /// ([`Self::hold_out_locally`]). Tasks that cannot refuse (the default).
    fn local_loss(&self, client: u32, params: &[f32]) -> Result<f64, FlError> {
        let _ = (client, params);
        Err(FlError::InvalidConfig {
            what: "report.collaboration_gain",
            reason: "this task keeps no held-out slice of a client's own data (the lm task does)"
                .into(),
        })
    }
    /// Reshapes client `client`'s training data as `profile` says (a graded experiment:
    /// noisy, duplicated or scarce data). Tasks that do not support a profile refuse it.
    fn reshape(&mut self, client: u32, profile: &crate::DataProfile) -> Result<(), FlError> {
        Err(FlError::InvalidConfig {
            what: "profile",
            reason: format!(
                "the {} data profile (client {client}) is supported by the linear task only",
                profile.name()
            ),
        })
    }

    /// Makes client `k` an attacker that poisons its own training data. Tasks without
    /// labelled data refuse.
    fn poison(&mut self, client: u32, attack: &DataAttack) -> Result<(), FlError> {
        Err(FlError::InvalidConfig {
            what: "attack.attack",
            reason: format!(
                "the {} attack needs a classification task (kind = \"imdb\"); client {client} cannot apply it",
                attack.name()
            ),
        })
    }
}
