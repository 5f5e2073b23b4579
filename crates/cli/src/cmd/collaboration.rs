//! The collaboration gain of a finished run (`[report] collaboration_gain`): does federating
//! pay off for a client? For each client measured, the loss on the slice of its own data it
//! held out from its training, of the base model, of the client training alone with the same
//! compute (its local steps once a round, from the base, on the same batches), and of the
//! federated model.

use std::time::Instant;

use anyhow::Context;
use cohort_core::{Rng, SplitMix64};
use cohort_fl::learner::Learner;
use cohort_fl::{NamedDelta, ValidConfig};
use serde::Serialize;

/// One client's losses (nats) and perplexities on its own held-out slice.
#[derive(Debug, Clone, Serialize)]
pub struct ClientGain {
    pub client: u32,
    /// An attacker's (its updates were attacked; its data and its training alone are not).
    pub attacker: bool,
    pub base_loss: f64,
    pub alone_loss: f64,
    pub federated_loss: f64,
    pub base_perplexity: f64,
    pub alone_perplexity: f64,
    pub federated_perplexity: f64,
}

/// The run's collaboration gain.
#[derive(Debug, Clone, Serialize)]
pub struct Collaboration {
    /// The share of each client's own data it held out.
    pub local_fraction: f64,
    /// Rounds of training alone (the run's).
    pub rounds: u64,
    /// The clients measured (all, or `collaboration_clients` of them drawn by the seed).
    pub clients: Vec<ClientGain>,
    /// Every round's scores: the honest updates' mean against the validators' spread.
    pub scores: Vec<ScoreSignal>,
    /// Of the honest clients measured, the share whose federated perplexity is below its
    /// alone-trained one's.
    pub federated_beats_alone: f64,
    /// Over the honest clients measured, the mean of `1 − federated / base` perplexity, and
    /// of `1 − federated / alone`.
    pub federated_gain_over_base: f64,
    pub federated_gain_over_alone: f64,
    pub seconds: f64,
}

/// How well a round's scores tell an honest update's worth from the validators' noise.
#[derive(Debug, Clone, Serialize)]
pub struct ScoreSignal {
    pub round: u64,
    /// The mean consensus score of the honest updates (the signal).
    pub honest_mean: f64,
    /// The mean, over the honest updates, of the standard deviation of the validators' scores
    /// of one update (the noise).
    pub validator_spread: f64,
    /// `honest_mean / validator_spread`.
    pub snr: f64,
}

/// Every round's [`ScoreSignal`], from its scores (`rounds`' score matrices).
pub fn score_signal(
    cfg: &ValidConfig,
    rounds: &[cohort_node::runtime::RoundSummary],
) -> Vec<ScoreSignal> {
    rounds
        .iter()
        .map(|r| {
            let honest: Vec<(usize, u32)> = r
                .submitted
                .iter()
                .copied()
                .enumerate()
                .filter(|&(_, k)| !cfg.is_attacker(k))
                .collect();
            let n = honest.len().max(1) as f64;
            let honest_mean = honest
                .iter()
                .map(|(_, k)| r.consensus.get(k).copied().unwrap_or(0.0))
                .sum::<f64>()
                / n;
            let validator_spread = honest
                .iter()
                .map(|&(i, _)| {
                    let v: Vec<f64> = r.scores.iter().filter_map(|s| s.get(i).copied()).collect();
                    let m = v.iter().sum::<f64>() / v.len().max(1) as f64;
                    (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / v.len().max(1) as f64)
                        .sqrt()
                })
                .sum::<f64>()
                / n;
            ScoreSignal {
                round: r.round,
                honest_mean,
                validator_spread,
                snr: honest_mean / validator_spread.max(f64::MIN_POSITIVE),
            }
        })
        .collect()
}

/// The clients to measure: every one, or `max` of them drawn by `seed`, in order.
fn chosen(clients: u32, max: usize, seed: u64) -> Vec<u32> {
    let mut all: Vec<u32> = (0..clients).collect();
    if all.len() > max {
        let mut r = SplitMix64::derive(seed, "collaboration/clients");
        for i in 0..max {
            let j = i + r.below(all.len() - i);
            all.swap(i, j);
        }
        all.truncate(max);
        all.sort_unstable();
    }
    all
}

/// Measures `cfg`'s collaboration gain on `task` (built with the held-out slices) given the
/// run's final global model `global` (its blob, in the task's layout). `say` reports progress.
pub fn measure(
    cfg: &ValidConfig,
    task: &dyn Learner,
    global: &[u8],
    rounds_run: &[cohort_node::runtime::RoundSummary],
    mut say: impl FnMut(&str),
) -> anyhow::Result<Collaboration> {
    let started = Instant::now();
    let federated = NamedDelta::decode(global)
        .and_then(|d| d.into_layout(&task.layout()))
        .context("the run's final global model")?
        .values;
    let base = task.init();
    let rounds = cfg.coordinator.rounds;
    let which = chosen(
        cfg.clients as u32,
        cfg.report.collaboration_clients,
        cfg.seed,
    );
    let mut clients = Vec::with_capacity(which.len());
    for (i, &k) in which.iter().enumerate() {
        say(&format!(
            "collaboration gain: client {k} ({} of {}): training alone for {rounds} rounds",
            i + 1,
            which.len()
        ));
        let mut alone = base.clone();
        for r in 1..=rounds {
            // The batches the client drew in the run's round r.
            let mut rng = Rng::derive(cfg.seed, &format!("train/{r}/{k}"));
            let delta = task.train(k, &alone, &mut rng)?;
            alone.iter_mut().zip(&delta).for_each(|(a, d)| *a += d);
        }
        let (b, a, f) = (
            task.local_loss(k, &base)?,
            task.local_loss(k, &alone)?,
            task.local_loss(k, &federated)?,
        );
        clients.push(ClientGain {
            client: k,
            attacker: cfg.is_attacker(k),
            base_loss: b,
            alone_loss: a,
            federated_loss: f,
            base_perplexity: b.exp(),
            alone_perplexity: a.exp(),
            federated_perplexity: f.exp(),
        });
    }
    let honest: Vec<&ClientGain> = clients.iter().filter(|c| !c.attacker).collect();
    let n = honest.len().max(1) as f64;
    let mean = |f: &dyn Fn(&ClientGain) -> f64| honest.iter().map(|c| f(c)).sum::<f64>() / n;
    Ok(Collaboration {
        local_fraction: cfg.report.local_fraction,
        rounds,
        federated_beats_alone: mean(&|c| f64::from(u8::from(c.federated_loss < c.alone_loss))),
        federated_gain_over_base: mean(&|c| 1.0 - c.federated_perplexity / c.base_perplexity),
        federated_gain_over_alone: mean(&|c| 1.0 - c.federated_perplexity / c.alone_perplexity),
        clients,
        scores: score_signal(cfg, rounds_run),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The table's lines.
pub fn lines(c: &Collaboration) -> Vec<String> {
    let mut out = vec![format!(
        "collaboration gain (perplexity on each client's own held-out {:.0}%; alone: its local \
         steps for {} rounds from the base)",
        100.0 * c.local_fraction,
        c.rounds
    )];
    out.push(format!(
        "{:>8}  {:>9}  {:>9}  {:>9}",
        "client", "base", "alone", "federated"
    ));
    for g in &c.clients {
        out.push(format!(
            "{:>8}  {:>9.3}  {:>9.3}  {:>9.3}{}",
            g.client,
            g.base_perplexity,
            g.alone_perplexity,
            g.federated_perplexity,
            if g.attacker { "  (attacker)" } else { "" }
        ));
    }
    for r in &c.scores {
        out.push(format!(
            "round {}: honest updates' mean score {:+.5}, validators' spread {:.5}, \
             signal-to-noise {:+.2}",
            r.round, r.honest_mean, r.validator_spread, r.snr
        ));
    }
    out.push(format!(
        "federated beats alone for {:.0}% of the honest clients; {:+.1}% perplexity against \
         the base, {:+.1}% against alone (means)",
        100.0 * c.federated_beats_alone,
        -100.0 * c.federated_gain_over_base,
        -100.0 * c.federated_gain_over_alone
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_client_or_a_seeded_draw() {
        assert_eq!(chosen(5, 8, 1), vec![0, 1, 2, 3, 4]);
        let a = chosen(40, 8, 1);
        assert_eq!(a.len(), 8);
        assert!(a.windows(2).all(|w| w[0] < w[1]) && a[7] < 40);
        assert_eq!(a, chosen(40, 8, 1));
        assert_ne!(a, chosen(40, 8, 2));
    }
}
