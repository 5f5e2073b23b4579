//! What unlearning measures, shared by whoever executes an unlearning and whoever verifies it
//! (the same numbers, bit for bit, from the same blobs and data on the same build): a model's
//! metrics on the forgotten client's data (the forget set), on the other clients' data (the
//! retain set) and on the test set, and how well a loss-threshold membership-inference attack
//! tells the forget set from unseen data (its AUC: 0.5 is chance, what a model that never saw
//! the data gives when forget and test data are alike).

use serde::{Deserialize, Serialize};

use crate::FlError;
use crate::learner::{Learner, Metrics, SampleLosses};

/// What an approximate unlearning optimises on the forget set.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Objective {
    /// Gradient ascent: the forget set's mean loss maximised.
    GradientAscent,
    /// Negative preference optimisation (Zhang et al., 2024):
    /// `(2/beta) mean log(1 + (p(x) / p_ref(x))^beta)` over forget windows, `p_ref` the model
    /// before unlearning; bounded where gradient ascent is not.
    Npo {
        /// The inverse temperature.
        beta: f64,
    },
}

/// How an approximate unlearning trains: `steps` optimiser steps (AdamW, constant `lr`) on
/// batches of `batch` forget windows, each adding `retain_weight` times the mean loss on as
/// many windows of public retain text (what the executor holds: the base model's
/// pretraining text), so that the model keeps what it should.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct UnlearnSpec {
    /// The forget objective.
    pub objective: Objective,
    /// Optimiser steps.
    pub steps: usize,
    /// Learning rate.
    pub lr: f64,
    /// Weight of the retain term.
    pub retain_weight: f64,
    /// Windows per batch.
    pub batch: usize,
}

impl UnlearnSpec {
    /// Refuses steps or a batch of 0, a learning rate or weight that is not finite and
    /// non-negative (the rate positive), and a beta that is not finite and positive; each by
    /// its flag's name.
    pub fn check(&self) -> Result<(), FlError> {
        let bad = |what: &'static str, reason: String| Err(FlError::InvalidConfig { what, reason });
        if self.steps == 0 || self.steps > 100_000 {
            return bad("--steps", format!("{} (1 to 100000)", self.steps));
        }
        if self.batch == 0 || self.batch > 4096 {
            return bad("--batch", format!("{} (1 to 4096)", self.batch));
        }
        if !(self.lr.is_finite() && self.lr > 0.0 && self.lr <= 1.0) {
            return bad("--lr", format!("{} (above 0, at most 1)", self.lr));
        }
        if !(self.retain_weight.is_finite() && (0.0..=1e6).contains(&self.retain_weight)) {
            return bad(
                "--retain-weight",
                format!("{} (0 to 1e6)", self.retain_weight),
            );
        }
        if let Objective::Npo { beta } = self.objective
            && !(beta.is_finite() && beta > 0.0 && beta <= 1e3)
        {
            return bad("--beta", format!("{beta} (above 0, at most 1000)"));
        }
        Ok(())
    }
}

/// The loss attack's AUC: the chance that a random member (forget-set sample) has a lower
/// loss than a random non-member (test sample), ties counting half (Mann–Whitney U over the
/// pooled ranks). `None` when either set is empty or a loss is not finite.
pub fn mia_auc(members: &[f64], nonmembers: &[f64]) -> Option<f64> {
    if members.is_empty()
        || nonmembers.is_empty()
        || members.iter().chain(nonmembers).any(|x| !x.is_finite())
    {
        return None;
    }
    let mut all: Vec<(f64, bool)> = members
        .iter()
        .map(|&x| (x, true))
        .chain(nonmembers.iter().map(|&x| (x, false)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Ranks from 1, ties sharing their mean rank; the members' rank sum gives U.
    let mut member_ranks = 0.0;
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j + 1 < all.len() && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        member_ranks += rank * all[i..=j].iter().filter(|(_, m)| *m).count() as f64;
        i = j + 1;
    }
    let (m, n) = (members.len() as f64, nonmembers.len() as f64);
    let u = member_ranks - m * (m + 1.0) / 2.0;
    // U counts the pairs where the member's loss is higher: the attack's AUC is the rest.
    Some(1.0 - u / (m * n))
}

/// A model's measures for unlearning client `client`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measures {
    /// On the forgotten client's own data.
    pub forget: Metrics,
    /// On the other clients' data (those not forgotten), pooled.
    pub retain: Metrics,
    /// On the test set ([`Learner::evaluate`]'s metrics).
    pub test: Metrics,
    /// The loss attack's AUC, forget set against the test set.
    pub mia_auc_loss: Option<f64>,
    /// The Min-K% attack's AUC (language models), forget set against the test set.
    #[serde(default)]
    pub mia_auc_min_k: Option<f64>,
}

/// Measures `params` for forgetting `client` of `learner`; the retain set pools the data of
/// the clients `retain` (every other client whose data is still part of the run: clients
/// forgotten before are left out; `client` is skipped if listed).
///
/// # Errors
/// A task that cannot evaluate sample by sample, or an evaluation that fails.
pub fn measure<L: Learner + ?Sized>(
    learner: &L,
    params: &[f32],
    client: u32,
    retain: &[u32],
) -> Result<Measures, FlError> {
    let forget = learner.client_samples(client, params)?;
    let test = learner.test_samples(params)?;
    let mut pooled = Vec::new();
    let mut correct = 0.0;
    let mut classified = false;
    for &k in retain.iter().filter(|&&k| k != client) {
        let s: SampleLosses = learner.client_samples(k, params)?;
        if let Some(a) = s.metrics.accuracy {
            classified = true;
            correct += a * s.losses.len() as f64;
        }
        pooled.extend(s.losses);
    }
    let n = pooled.len().max(1) as f64;
    let mean = pooled.iter().sum::<f64>() / n;
    let retain = Metrics {
        accuracy: classified.then_some(correct / n),
        perplexity: forget.metrics.perplexity.map(|_| mean.exp()),
        ..Metrics::loss(mean)
    };
    let with_perplexity = |m: Metrics| Metrics {
        perplexity: m.perplexity.map(|_| m.loss.exp()),
        ..m
    };
    let min_k = match (&forget.min_k, &test.min_k) {
        (Some(f), Some(t)) => mia_auc(f, t),
        _ => None,
    };
    Ok(Measures {
        mia_auc_loss: mia_auc(&forget.losses, &test.losses),
        mia_auc_min_k: min_k,
        forget: with_perplexity(forget.metrics),
        retain,
        test: test.metrics,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_auc_of_the_loss_attack() {
        // Every member below every non-member: the attack always wins.
        assert_eq!(mia_auc(&[0.1, 0.2], &[0.3, 0.4, 0.5]), Some(1.0));
        assert_eq!(mia_auc(&[0.6, 0.7], &[0.3, 0.4, 0.5]), Some(0.0));
        // Identical distributions: chance.
        assert_eq!(mia_auc(&[0.1, 0.2, 0.3], &[0.1, 0.2, 0.3]), Some(0.5));
        assert_eq!(mia_auc(&[0.5], &[0.5, 0.5]), Some(0.5));
        // One of two pairs won.
        assert_eq!(mia_auc(&[0.2], &[0.1, 0.3]), Some(0.5));
        assert_eq!(mia_auc(&[0.2, 0.0], &[0.1]), Some(0.5));
        assert_eq!(mia_auc(&[], &[0.1]), None);
        assert_eq!(mia_auc(&[0.1], &[]), None);
        assert_eq!(mia_auc(&[f64::NAN], &[0.1]), None);
        // Against the pairwise definition on a pseudo-random sample with ties.
        let a: Vec<f64> = (0..40).map(|i| f64::from((i * 7919) % 13)).collect();
        let b: Vec<f64> = (0..30).map(|i| f64::from((i * 104_729) % 17)).collect();
        let mut wins = 0.0;
        for &x in &a {
            for &y in &b {
                wins += if x < y {
                    1.0
                } else if x == y {
                    0.5
                } else {
                    0.0
                };
            }
        }
        let want = wins / (a.len() * b.len()) as f64;
        let got = mia_auc(&a, &b).unwrap();
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    }
}
