//! `cohort value DIR`: each client's contribution to a finished run, from the updates the run
//! stored, by leave-one-out or Shapley values (docs/economics.md).
//!
//! Round by round, the utility of a coalition S of updates is the test loss of the round's
//! starting model minus the test loss of that model moved by S's aggregate (the empty
//! coalition's utility is 0). With `--weights samples` (the default, as GTG-Shapley defines
//! it) the players are every update submitted, aggregated by FedAvg over S (each weighted by
//! the samples it claimed): what each update brings whether or not the run kept it. With
//! `--weights run` the players are the updates that entered the run's aggregate, weighted as
//! the round weighted them (the strategy's recorded weight and clipping factor) and
//! renormalised within S: what each brought to the model the run made. A client's value is
//! the sum of its round values. Nothing is trained: each utility is one evaluation of a
//! re-aggregated model, memoised per round.
//!
//! - `loo`: U(P) − U(P \ {i}) per round (|P| + 1 evaluations a round).
//! - `exact-shapley`: every coalition (2^|P| evaluations; at most 12 players a round).
//! - `tmc-shapley`: truncated Monte-Carlo Shapley (Ghorbani and Zou, 2019): `--permutations`
//!   random orders a round, the marginals of a permutation's tail taken as 0 once its prefix is
//!   within `--truncation` of U(P).
//! - `gtg-shapley` (Liu et al., 2022): rounds whose gain is below `--truncation` of the mean
//!   round's are skipped (between-round truncation); permutations come in cycles in which each
//!   player leads once (guided sampling), truncated as in TMC, until a cycle moves no value by
//!   more than `--truncation` of U(P) (at least two cycles) or `--permutations` are spent.
//!
//! Reads only: the task's cache is a temporary directory where the run's cached bases are
//! linked, so that nothing is written into DIR.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use cohort_core::Hash32;
use cohort_fl::events::ProvenanceRecord;
use cohort_fl::learner::Learner;
use cohort_fl::shards::Shards;
use cohort_fl::strategy::Contribution;
use serde::Serialize;

use crate::args::{float_in, int_in};
use crate::output::{Table, print_json};

/// How a client's contribution is valued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Leave one out: what the round's aggregate loses without the update.
    Loo,
    /// Shapley values over every coalition (at most 12 updates a round).
    ExactShapley,
    /// Truncated Monte-Carlo Shapley values.
    TmcShapley,
    /// Guided truncation gradient Shapley values.
    GtgShapley,
}

/// How a coalition's updates are weighted, and who plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Weights {
    /// Every submitted update plays; a coalition's aggregate is FedAvg by claimed samples.
    Samples,
    /// The updates the run aggregated play, with the round's recorded weights.
    Run,
}

/// Each client's contribution to a finished run, from its stored updates: leave-one-out or
/// Shapley values of the test-loss reduction they bring round by round (re-aggregated from the
/// blob store, nothing retrained). Prints a table, or JSON with each client's value by name.
/// Reads only.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The run's output directory (`cohort run ... --out DIR`, finished).
    dir: PathBuf,
    /// How to value.
    #[arg(long, value_enum, default_value = "gtg-shapley")]
    method: Method,
    /// Who plays and how a coalition is aggregated: every submitted update by FedAvg
    /// (`samples`), or the updates the run aggregated with its weights (`run`).
    #[arg(long, value_enum, default_value = "samples")]
    weights: Weights,
    /// Permutations a round, at most (tmc-shapley: exactly).
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = int_in(1..=100_000usize))]
    permutations: usize,
    /// Truncation and convergence tolerance, as a share of the round's gain (0: none).
    #[arg(long, value_name = "SHARE", default_value_t = 0.01, value_parser = float_in(0.0..=1.0))]
    truncation: f64,
    /// Seed of the permutations.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = int_in(0..=u64::MAX))]
    seed: u64,
    /// The blob store the run used, if not DIR/blobs (a directory or s3://BUCKET/PREFIX).
    #[arg(long, value_name = "LOCATION")]
    blobs: Option<String>,
    /// Print JSON: each client's value by name, the rounds and the evaluations spent.
    #[arg(long)]
    json: bool,
}

/// A round's game: its starting model, its players' updates and weights, and the utilities
/// computed so far.
struct Round<'a> {
    round: u64,
    task: &'a dyn Learner,
    start: Vec<f32>,
    start_loss: f64,
    /// The players (client indices), their updates and their weights (weight × clip).
    clients: Vec<u32>,
    updates: Vec<Vec<f32>>,
    weights: Vec<f64>,
    memo: HashMap<u128, f64>,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Self::Loo => "loo",
            Self::ExactShapley => "exact-shapley",
            Self::TmcShapley => "tmc-shapley",
            Self::GtgShapley => "gtg-shapley",
        }
    }
}

impl Round<'_> {
    fn players(&self) -> usize {
        self.clients.len()
    }

    /// U(S) for the coalition whose members are the set bits of `s`.
    fn utility(&mut self, s: u128) -> anyhow::Result<f64> {
        if s == 0 {
            return Ok(0.0);
        }
        if let Some(&u) = self.memo.get(&s) {
            return Ok(u);
        }
        let members: Vec<usize> = (0..self.players()).filter(|&i| s >> i & 1 == 1).collect();
        let total: f64 = members.iter().map(|&i| self.weights[i]).sum();
        let mut model: Vec<f64> = self.start.iter().map(|&x| f64::from(x)).collect();
        if total > 0.0 {
            for &i in &members {
                let w = self.weights[i] / total;
                for (m, &d) in model.iter_mut().zip(&self.updates[i]) {
                    *m += w * f64::from(d);
                }
            }
        }
        let model: Vec<f32> = model.into_iter().map(|x| x as f32).collect();
        let loss = self
            .task
            .evaluate(&model)
            .with_context(|| format!("round {}: evaluating a coalition's model", self.round))?
            .loss;
        let u = if loss.is_finite() {
            self.start_loss - loss
        } else {
            bail!(
                "round {}: a coalition's model has a test loss of {loss}",
                self.round
            );
        };
        self.memo.insert(s, u);
        Ok(u)
    }

    fn all(&self) -> u128 {
        if self.players() == 128 {
            u128::MAX
        } else {
            (1u128 << self.players()) - 1
        }
    }

    fn loo(&mut self) -> anyhow::Result<Vec<f64>> {
        let all = self.all();
        let full = self.utility(all)?;
        (0..self.players())
            .map(|i| Ok(full - self.utility(all & !(1u128 << i))?))
            .collect()
    }

    fn exact(&mut self) -> anyhow::Result<Vec<f64>> {
        let n = self.players();
        // w(|S|) = |S|! (n − |S| − 1)! / n!
        let fact = |k: usize| (1..=k).map(|x| x as f64).product::<f64>();
        let mut v = vec![0.0; n];
        for s in 0..(1u128 << n) {
            let us = self.utility(s)?;
            let size = s.count_ones() as usize;
            for (i, vi) in v.iter_mut().enumerate() {
                if s >> i & 1 == 0 {
                    let w = fact(size) * fact(n - size - 1) / fact(n);
                    *vi += w * (self.utility(s | 1u128 << i)? - us);
                }
            }
        }
        Ok(v)
    }

    /// The marginals along `order`, the tail's taken as 0 once the prefix is within `tol` of
    /// U(P) (`full`), added to `sum`.
    fn walk(
        &mut self,
        order: &[usize],
        full: f64,
        tol: f64,
        sum: &mut [f64],
    ) -> anyhow::Result<()> {
        let (mut s, mut before) = (0u128, 0.0);
        for &i in order {
            if tol > 0.0 && (full - before).abs() < tol * full.abs() {
                break;
            }
            s |= 1u128 << i;
            let after = self.utility(s)?;
            sum[i] += after - before;
            before = after;
        }
        Ok(())
    }

    fn tmc(
        &mut self,
        permutations: usize,
        tol: f64,
        rng: &mut cohort_core::Rng,
    ) -> anyhow::Result<Vec<f64>> {
        let n = self.players();
        let full = self.utility(self.all())?;
        let mut sum = vec![0.0; n];
        let mut order: Vec<usize> = (0..n).collect();
        for _ in 0..permutations {
            rng.shuffle(&mut order);
            self.walk(&order, full, tol, &mut sum)?;
        }
        Ok(sum.into_iter().map(|x| x / permutations as f64).collect())
    }

    fn gtg(
        &mut self,
        permutations: usize,
        tol: f64,
        rng: &mut cohort_core::Rng,
    ) -> anyhow::Result<(Vec<f64>, usize)> {
        let n = self.players();
        let full = self.utility(self.all())?;
        let mut sum = vec![0.0; n];
        let mut done = 0usize;
        let mut last: Option<Vec<f64>> = None;
        let mut cycles = 0;
        'cycles: loop {
            for lead in 0..n {
                if done == permutations {
                    break 'cycles;
                }
                let mut rest: Vec<usize> = (0..n).filter(|&j| j != lead).collect();
                rng.shuffle(&mut rest);
                let order: Vec<usize> = std::iter::once(lead).chain(rest).collect();
                self.walk(&order, full, tol, &mut sum)?;
                done += 1;
            }
            cycles += 1;
            let now: Vec<f64> = sum.iter().map(|x| x / done as f64).collect();
            if let Some(prev) = &last {
                let moved = now
                    .iter()
                    .zip(prev)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f64::max);
                if cycles >= 2 && moved <= tol * full.abs() {
                    break;
                }
            }
            last = Some(now);
        }
        Ok((
            sum.into_iter().map(|x| x / done.max(1) as f64).collect(),
            done,
        ))
    }
}

#[derive(Serialize)]
struct ClientValue {
    value: f64,
    /// What the run paid it, net of slashes (tokens), from DIR/summary.json.
    earned: f64,
    /// Rounds in which its update entered the run's aggregate, and rounds it submitted.
    aggregated_rounds: u64,
    submitted_rounds: u64,
}

#[derive(Serialize)]
struct RoundOut {
    round: u64,
    /// The round's whole gain U(P) (test-loss reduction, nats) and its players.
    gain: f64,
    players: usize,
    /// Whether GTG skipped it (its gain below the truncation of the mean round's).
    skipped: bool,
    permutations: usize,
    evaluations: usize,
    /// Each player's value in this round, by client name.
    values: BTreeMap<String, f64>,
}

impl Args {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let started = Instant::now();
        let run = super::unlearn::RunDir::open(&self.dir)?;
        if run.cfg.unlearning.shards > 1 {
            bail!(
                "{}: a run trained in shards ([unlearning] shards = {}) is not valued yet",
                self.dir.display(),
                run.cfg.unlearning.shards
            );
        }
        // What each client earned, read before any work (a damaged summary stops it here).
        let earned = earnings(&run.dir)?;
        let wrong = super::provenance::mismatches(&run.dir)?;
        if let Some(first) = wrong.first() {
            bail!(
                "{}: its provenance.jsonl does not match its ledger ({first}); check it with \
                 `cohort provenance {}`",
                run.dir.display(),
                run.dir.display()
            );
        }
        let mut rounds: BTreeMap<u64, Vec<ProvenanceRecord>> = BTreeMap::new();
        for r in super::provenance::read_provenance(&run.dir)? {
            rounds.entry(r.round).or_default().push(r);
        }
        if rounds.is_empty() {
            bail!(
                "{}: the run's provenance records no update",
                run.dir.display()
            );
        }
        // Refused before any work: a step that is not a weighted sum of the updates (the run's
        // weights only; FedAvg over coalitions needs none).
        let by_run = self.weights == Weights::Run;
        for r in rounds.values().flatten().filter(|r| r.accepted && by_run) {
            match &r.contribution {
                Some(Contribution::Weighted {
                    via_server_optimizer: false,
                    ..
                })
                | None => {}
                Some(Contribution::Weighted { .. }) => bail!(
                    "round {}: the step went through a server optimizer (FedAdam and the like), \
                     which is not linear in the updates: cohort value re-aggregates weighted sums",
                    r.round
                ),
                Some(_) => bail!(
                    "round {}: the run aggregated with {}, not a weighted sum: cohort value \
                     re-aggregates weighted sums (fed-avg, score-weighted)",
                    r.round,
                    run.cfg.aggregation.build().name()
                ),
            }
        }
        for (round, records) in &rounds {
            if records.len() > 128 {
                bail!(
                    "round {round}: {} updates; at most 128 a round are valued",
                    records.len()
                );
            }
        }
        let plays = |r: &ProvenanceRecord| match self.weights {
            Weights::Samples => true,
            Weights::Run => r.accepted && r.contribution.is_some(),
        };
        let spec = self
            .blobs
            .clone()
            .unwrap_or_else(|| run.dir.join("blobs").display().to_string());
        let store = cohort_blob::open_existing(&spec)
            .with_context(|| format!("the run's blob store {spec} (give the run's --blobs)"))?;
        for r in rounds.values().flatten() {
            let needed = [(r.global_before, "its round's starting model")]
                .into_iter()
                .chain(plays(r).then_some((r.blob, "its update")));
            for (h, what) in needed {
                if !store.has(&h)? {
                    bail!(
                        "round {} update of client-{}: {what} (blob {h}) is not in {}",
                        r.round,
                        r.client,
                        store.location()
                    );
                }
            }
        }
        let cache = tempfile::tempdir().context("a temporary directory for the task")?;
        link_bases(&run.dir, cache.path())?;
        say("setting up the task");
        let task = cohort_tasks::build(&run.cfg, &run.config_dir, cache.path())
            .context("setting up the run's task")?;
        let shards = Shards::none(task.layout());
        let load = |h: &Hash32, what: &str| -> anyhow::Result<Vec<f32>> {
            let blob = store.get(h).with_context(|| format!("{what} {h}"))?;
            super::unlearn::decode_model(&blob, &shards)
        };

        // GTG's between-round truncation needs every round's gain first.
        let mut games = Vec::new();
        for (&round, records) in &rounds {
            let players: Vec<&ProvenanceRecord> = records.iter().filter(|r| plays(r)).collect();
            let start = load(
                &records[0].global_before,
                &format!("round {round}'s starting model"),
            )?;
            let start_loss = task.evaluate(&start)?.loss;
            let mut g = Round {
                round,
                task: task.as_ref(),
                start,
                start_loss,
                clients: Vec::new(),
                updates: Vec::new(),
                weights: Vec::new(),
                memo: HashMap::new(),
            };
            for r in players {
                let weight = match (self.weights, &r.contribution) {
                    (Weights::Samples, _) => r.samples as f64,
                    (
                        Weights::Run,
                        Some(Contribution::Weighted {
                            weight, clip_scale, ..
                        }),
                    ) => weight * clip_scale,
                    (Weights::Run, _) => continue,
                };
                g.clients.push(r.client);
                g.updates.push(load(
                    &r.blob,
                    &format!("round {round} update of client-{}", r.client),
                )?);
                g.weights.push(weight);
            }
            if self.method == Method::ExactShapley && g.players() > 12 {
                bail!(
                    "--method exact-shapley: round {round} has {} updates; at most 12 (use \
                     gtg-shapley or tmc-shapley)",
                    g.players()
                );
            }
            let gain = g.utility(g.all())?;
            say(&format!(
                "round {round}: {} updates, gain {gain:.5} nats",
                g.players()
            ));
            games.push((g, gain));
        }
        let mean_gain = games.iter().map(|(_, u)| u.abs()).sum::<f64>() / games.len() as f64;
        let mut rng = cohort_core::Rng::derive(self.seed, "cohort value");
        let mut values: BTreeMap<u32, f64> = BTreeMap::new();
        let mut per_round = Vec::new();
        let mut evaluations = 0usize;
        let total = games.len();
        for (k, (mut g, gain)) in games.into_iter().enumerate() {
            let skipped = self.method == Method::GtgShapley
                && (g.players() == 0 || gain.abs() < self.truncation * mean_gain);
            let (v, permutations) = if skipped || g.players() == 0 {
                (vec![0.0; g.players()], 0)
            } else {
                match self.method {
                    Method::Loo => (g.loo()?, 0),
                    Method::ExactShapley => (g.exact()?, 0),
                    Method::TmcShapley => (
                        g.tmc(self.permutations, self.truncation, &mut rng)?,
                        self.permutations,
                    ),
                    Method::GtgShapley => g.gtg(self.permutations, self.truncation, &mut rng)?,
                }
            };
            for (&c, &x) in g.clients.iter().zip(&v) {
                *values.entry(c).or_default() += x;
            }
            // The starting model's and the coalitions' evaluations.
            let evals = g.memo.len() + 1;
            evaluations += evals;
            say(&format!(
                "valued round {} ({}/{total}): {} evaluations{}",
                g.round,
                k + 1,
                evals,
                if skipped {
                    ", skipped (gain below the truncation)"
                } else {
                    ""
                }
            ));
            per_round.push(RoundOut {
                round: g.round,
                gain,
                players: g.players(),
                skipped,
                permutations,
                evaluations: evals,
                values: g
                    .clients
                    .iter()
                    .zip(&v)
                    .map(|(&c, &x)| (format!("client-{c}"), x))
                    .collect(),
            });
        }
        let mut clients: BTreeMap<String, ClientValue> = BTreeMap::new();
        for k in 0..run.cfg.clients as u32 {
            let submitted = rounds.values().flatten().filter(|r| r.client == k).count() as u64;
            let aggregated = rounds
                .values()
                .flatten()
                .filter(|r| r.client == k && r.accepted && r.contribution.is_some())
                .count() as u64;
            clients.insert(
                format!("client-{k}"),
                ClientValue {
                    value: values.get(&k).copied().unwrap_or(0.0),
                    earned: earned.get(&format!("client-{k}")).copied().unwrap_or(0.0),
                    aggregated_rounds: aggregated,
                    submitted_rounds: submitted,
                },
            );
        }
        let (v, e): (Vec<f64>, Vec<f64>) = clients.values().map(|c| (c.value, c.earned)).unzip();
        let spearman = spearman(&v, &e);
        let seconds = started.elapsed().as_secs_f64();
        if self.json {
            print_json(&serde_json::json!({
                "dir": self.dir,
                "method": self.method,
                "weights": self.weights,
                "utility": "test-loss reduction of the round's model moved by the coalition's \
                            updates (nats)",
                "values": clients.iter().map(|(n, c)| (n.clone(), c.value)).collect::<BTreeMap<_, _>>(),
                "clients": clients,
                "rounds": per_round,
                "evaluations": evaluations,
                "spearman_earned_value": spearman,
                "seconds": seconds,
            }))?;
            return Ok(ExitCode::SUCCESS);
        }
        let mut t = Table::new(&[
            "client",
            "value (nats)",
            "earned",
            "aggregated",
            "submitted",
        ]);
        for (name, c) in &clients {
            t.row(vec![
                name.clone(),
                format!("{:+.5}", c.value),
                format!("{:.4}", c.earned),
                c.aggregated_rounds.to_string(),
                c.submitted_rounds.to_string(),
            ]);
        }
        t.print();
        outln!(
            "\n{} over {} rounds: {evaluations} model evaluations, {seconds:.1} s",
            self.method.name(),
            per_round.len()
        );
        if let Some(r) = spearman {
            outln!("rank correlation (Spearman) of what clients earned with their values: {r:.3}");
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Links every cached base of the run directory (`base-*`) into `cache`, so that the task
/// finds them there and anything it would write goes to `cache`.
fn link_bases(dir: &Path, cache: &Path) -> anyhow::Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e?;
        if e.file_name().to_string_lossy().starts_with("base-") && e.path().is_dir() {
            std::os::unix::fs::symlink(e.path(), cache.join(e.file_name()))
                .with_context(|| format!("linking {}", e.path().display()))?;
        }
    }
    Ok(())
}

fn say(msg: &str) {
    eprintln!("value: {msg}");
}

/// Each party's earnings over the run (rewards less slashes, in tokens), from the rounds of
/// DIR/summary.json.
fn earnings(dir: &Path) -> anyhow::Result<BTreeMap<String, f64>> {
    let path = dir.join("summary.json");
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("{}: not JSON", path.display()))?;
    let tokens = |v: &serde_json::Value| -> f64 {
        v.as_str()
            .and_then(|s| s.parse::<alloy_primitives::U256>().ok())
            .map_or(0.0, |u| f64::from(u) / 1e18)
    };
    let mut out: BTreeMap<String, f64> = BTreeMap::new();
    let rounds = summary["summary"]["rounds"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for r in &rounds {
        if let Some(p) = r["payouts"].as_object() {
            for (name, x) in p {
                *out.entry(name.clone()).or_default() += tokens(&x["reward"]) - tokens(&x["slash"]);
            }
        }
    }
    Ok(out)
}

/// Spearman's rank correlation of `a` and `b` (ties take their mean rank); `None` when
/// either is constant or there are fewer than two.
fn spearman(a: &[f64], b: &[f64]) -> Option<f64> {
    fn ranks(v: &[f64]) -> Vec<f64> {
        let mut idx: Vec<usize> = (0..v.len()).collect();
        idx.sort_by(|&i, &j| v[i].total_cmp(&v[j]));
        let mut r = vec![0.0; v.len()];
        let mut i = 0;
        while i < idx.len() {
            let mut j = i;
            while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
                j += 1;
            }
            let mean = (i + j) as f64 / 2.0 + 1.0;
            for &k in &idx[i..=j] {
                r[k] = mean;
            }
            i = j + 1;
        }
        r
    }
    if a.len() != b.len() || a.len() < 2 {
        return None;
    }
    let (ra, rb) = (ranks(a), ranks(b));
    let n = ra.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = ra.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = rb.iter().map(|y| (y - mb).powi(2)).sum();
    (va > 0.0 && vb > 0.0).then(|| cov / (va * vb).sqrt())
}

#[cfg(test)]
mod tests {
    use super::spearman;

    #[test]
    fn spearman_ranks_with_ties() {
        assert_eq!(spearman(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]), Some(1.0));
        assert_eq!(spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]), Some(-1.0));
        assert_eq!(spearman(&[1.0, 1.0], &[1.0, 2.0]), None);
        assert_eq!(spearman(&[1.0], &[1.0]), None);
        // Ties share their mean rank: ranks (1.5, 1.5, 3) against (1, 2, 3).
        let r = spearman(&[5.0, 5.0, 9.0], &[1.0, 2.0, 3.0]).unwrap();
        assert!((r - 0.866_025_403_784_438_6).abs() < 1e-12, "{r}");
    }
}
