//! The learning task behind a run, as the runtime sees it.
//!
//! A [`Learner`] holds every party's private data for an in-process run (each party only ever
//! touches its own) and knows how to train locally, evaluate on a validator's holdout and on
//! the test set. The runtime does not know the architecture: parameters are one flat vector.
//! [`LinearTask`] is a small real task (least squares on non-IID synthetic data, trained by
//! mini-batch gradient descent) that needs no data files; language models plug in through the
//! same trait.

use cohort_core::{Hash32, Rng};
use cohort_ledger::merkle::{MerkleTree, leaf_hash};
use serde::{Deserialize, Serialize};

/// Quality of a model on some data.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Mean loss.
    pub loss: f64,
    /// Accuracy, for classifiers.
    pub accuracy: Option<f64>,
}

/// A federated learning task.
pub trait Learner {
    /// Number of trainable values.
    fn dim(&self) -> usize;
    /// The initial global parameters.
    fn init(&self) -> Vec<f32>;
    /// Client `k` trains from `global` on its own data and returns its delta.
    fn train(&self, client: u32, global: &[f32], rng: &mut Rng) -> Vec<f32>;
    /// How many samples client `k` holds.
    fn num_samples(&self, client: u32) -> u64;
    /// Merkle root over client `k`'s data shards and the number of shards, for the dataset
    /// commitment on the ledger.
    fn dataset_commitment(&self, client: u32) -> (Hash32, u64);
    /// Loss of `params` on validator `v`'s held-out data.
    fn holdout_loss(&self, validator: u32, params: &[f32]) -> f64;
    /// Metrics of `params` on the test set.
    fn evaluate(&self, params: &[f32]) -> Metrics;
}

/// Which learning task a run trains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum TaskConfig {
    /// Least squares on non-IID synthetic data ([`LinearTask`]).
    Linear(LinearTaskConfig),
}

impl Default for TaskConfig {
    fn default() -> Self {
        Self::Linear(LinearTaskConfig::default())
    }
}

/// Settings of [`LinearTask`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LinearTaskConfig {
    /// Features.
    pub dim: usize,
    /// Samples per client.
    pub samples_per_client: usize,
    /// Samples per validator holdout.
    pub holdout_samples: usize,
    /// Test samples.
    pub test_samples: usize,
    /// How far each client's true weights drift from the shared ones (non-IID-ness).
    pub client_drift: f64,
    /// Label noise.
    pub noise: f64,
    /// Local epochs.
    pub epochs: usize,
    /// Mini-batch size.
    pub batch: usize,
    /// Learning rate.
    pub lr: f64,
}

impl Default for LinearTaskConfig {
    fn default() -> Self {
        Self {
            dim: 32,
            samples_per_client: 64,
            holdout_samples: 128,
            test_samples: 512,
            client_drift: 0.03,
            noise: 0.1,
            epochs: 2,
            batch: 16,
            lr: 0.05,
        }
    }
}

struct Set {
    x: Vec<Vec<f32>>,
    y: Vec<f32>,
}

impl Set {
    fn draw(rng: &mut Rng, w: &[f64], n: usize, noise: f64) -> Self {
        let mut x = Vec::with_capacity(n);
        let mut y = Vec::with_capacity(n);
        for _ in 0..n {
            let xi: Vec<f32> = w.iter().map(|_| rng.normal() as f32).collect();
            let yi: f64 = xi
                .iter()
                .zip(w)
                .map(|(&a, &b)| f64::from(a) * b)
                .sum::<f64>()
                + noise * rng.normal();
            x.push(xi);
            y.push(yi as f32);
        }
        Self { x, y }
    }

    fn mse(&self, p: &[f32]) -> f64 {
        let n = self.y.len().max(1) as f64;
        self.x
            .iter()
            .zip(&self.y)
            .map(|(x, &y)| {
                let e = dot(x, p) - f64::from(y);
                e * e
            })
            .sum::<f64>()
            / n
    }
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| f64::from(x) * f64::from(y))
        .sum()
}

/// Least-squares regression with a shared true weight vector, each client's data drawn around
/// its own perturbation of it.
pub struct LinearTask {
    cfg: LinearTaskConfig,
    clients: Vec<Set>,
    holdouts: Vec<Set>,
    test: Set,
}

impl std::fmt::Debug for LinearTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinearTask")
            .field("cfg", &self.cfg)
            .field("clients", &self.clients.len())
            .field("validators", &self.holdouts.len())
            .finish()
    }
}

impl LinearTask {
    /// Draws the data of `clients` clients and `validators` validators from `seed`.
    pub fn new(cfg: LinearTaskConfig, clients: usize, validators: usize, seed: u64) -> Self {
        let mut rng = Rng::derive(seed, "linear-task/truth");
        let w: Vec<f64> = (0..cfg.dim).map(|_| rng.normal()).collect();
        let clients = (0..clients)
            .map(|k| {
                let mut r = Rng::derive(seed, &format!("linear-task/client/{k}"));
                let wk: Vec<f64> = w
                    .iter()
                    .map(|&v| v + cfg.client_drift * r.normal())
                    .collect();
                Set::draw(&mut r, &wk, cfg.samples_per_client, cfg.noise)
            })
            .collect();
        let holdouts = (0..validators)
            .map(|v| {
                let mut r = Rng::derive(seed, &format!("linear-task/validator/{v}"));
                Set::draw(&mut r, &w, cfg.holdout_samples, cfg.noise)
            })
            .collect();
        let mut r = Rng::derive(seed, "linear-task/test");
        let test = Set::draw(&mut r, &w, cfg.test_samples, cfg.noise);
        Self {
            cfg,
            clients,
            holdouts,
            test,
        }
    }
}

impl Learner for LinearTask {
    fn dim(&self) -> usize {
        self.cfg.dim
    }

    fn init(&self) -> Vec<f32> {
        vec![0.0; self.cfg.dim]
    }

    fn train(&self, client: u32, global: &[f32], rng: &mut Rng) -> Vec<f32> {
        let Some(data) = self.clients.get(client as usize) else {
            return vec![0.0; global.len()];
        };
        let mut p: Vec<f64> = global.iter().map(|&x| f64::from(x)).collect();
        let n = data.y.len();
        let mut order: Vec<usize> = (0..n).collect();
        for _ in 0..self.cfg.epochs {
            rng.shuffle(&mut order);
            for batch in order.chunks(self.cfg.batch.max(1)) {
                let mut g = vec![0f64; p.len()];
                for &i in batch {
                    let x = &data.x[i];
                    let e: f64 = x
                        .iter()
                        .zip(&p)
                        .map(|(&a, &b)| f64::from(a) * b)
                        .sum::<f64>()
                        - f64::from(data.y[i]);
                    for (gj, &xj) in g.iter_mut().zip(x) {
                        *gj += 2.0 * e * f64::from(xj);
                    }
                }
                let s = self.cfg.lr / batch.len() as f64;
                for (pj, gj) in p.iter_mut().zip(&g) {
                    *pj -= s * gj;
                }
            }
        }
        p.iter()
            .zip(global)
            .map(|(&a, &b)| (a - f64::from(b)) as f32)
            .collect()
    }

    fn num_samples(&self, client: u32) -> u64 {
        self.clients
            .get(client as usize)
            .map_or(0, |c| c.y.len() as u64)
    }

    fn dataset_commitment(&self, client: u32) -> (Hash32, u64) {
        let Some(c) = self.clients.get(client as usize) else {
            return (Hash32::ZERO, 0);
        };
        // One shard per sample: the leaf is the sample's bytes.
        let mut tree = MerkleTree::new();
        for (x, y) in c.x.iter().zip(&c.y) {
            let mut b = Vec::with_capacity(4 * (x.len() + 1));
            for v in x.iter().chain(std::iter::once(y)) {
                b.extend_from_slice(&v.to_le_bytes());
            }
            tree.push_hash(leaf_hash(&b));
        }
        (tree.root(), c.y.len() as u64)
    }

    fn holdout_loss(&self, validator: u32, params: &[f32]) -> f64 {
        self.holdouts
            .get(validator as usize)
            .map_or(f64::INFINITY, |h| h.mse(params))
    }

    fn evaluate(&self, params: &[f32]) -> Metrics {
        Metrics {
            loss: self.test.mse(params),
            accuracy: None,
        }
    }
}
