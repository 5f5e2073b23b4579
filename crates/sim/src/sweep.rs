//! Grids of runs: num_words × training size × cost weight × seeds, in parallel on all cores,
//! summarised by mean and range across seeds.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use rayon::prelude::*;

use crate::SimError;
use crate::data::Dataset;
use crate::driver::{MechanismKind, SimConfig, run};
use crate::drt::DrtParams;
use crate::model::ModelKind;
use crate::plot::{Chart, PALETTE, Panel, Series};

/// The grid.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SweepSpec {
    /// Mechanisms (empty: the base configuration's).
    pub mechanisms: Vec<MechanismKind>,
    /// Models (empty: the base configuration's).
    pub models: Vec<ModelKind>,
    /// Feature counts.
    pub num_words: Vec<u32>,
    /// Training sizes (first N reviews).
    pub train_sizes: Vec<usize>,
    /// Cost weights.
    pub cost_weights: Vec<f64>,
    /// Seeds per cell.
    pub seeds: Vec<u64>,
    /// Everything else (its seed and cost weight are replaced per run).
    pub base: SimConfig,
}

/// The figures of one run of a sweep.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunSummary {
    /// `drt`, `points` or `market`.
    pub mechanism: MechanismKind,
    /// `perceptron`, `nb` or `ncc`.
    pub model: ModelKind,
    /// Features.
    pub num_words: u32,
    /// Training reviews.
    pub train_size: usize,
    /// Cost weight.
    pub cost_weight: f64,
    /// Seed.
    pub seed: u64,
    /// Initial test accuracy.
    pub initial_accuracy: f64,
    /// Final test accuracy.
    pub final_accuracy: f64,
    /// Final − initial.
    pub accuracy_gap: f64,
    /// Lowest evaluated accuracy.
    pub min_accuracy: f64,
    /// Day the bad agents were all ruined, if they were.
    pub bad_bankrupt_day: Option<f64>,
    /// Good agents' final balance, % of start.
    pub good_final_balance_pct: Option<f64>,
    /// Bad agents' final balance, % of start.
    pub bad_final_balance_pct: Option<f64>,
    /// Simulated days.
    pub simulated_days: f64,
    /// Transactions.
    pub transactions: u64,
    /// Gas.
    pub gas_used: u64,
    /// Wall seconds of the run.
    pub wall_seconds: f64,
}

/// Mean and range of one figure across seeds (over the runs where it is defined).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Stat {
    /// Runs where the figure is defined.
    pub n: usize,
    /// Mean.
    pub mean: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
}

impl Stat {
    /// Over `xs`; `None` if empty.
    pub fn of(xs: impl IntoIterator<Item = f64>) -> Option<Self> {
        let xs: Vec<f64> = xs.into_iter().collect();
        if xs.is_empty() {
            return None;
        }
        Some(Self {
            n: xs.len(),
            mean: xs.iter().sum::<f64>() / xs.len() as f64,
            min: xs.iter().copied().fold(f64::INFINITY, f64::min),
            max: xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        })
    }
}

/// One cell of the grid, across seeds.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SweepRow {
    /// Mechanism.
    pub mechanism: MechanismKind,
    /// Model.
    pub model: ModelKind,
    /// Features.
    pub num_words: u32,
    /// Training reviews.
    pub train_size: usize,
    /// Cost weight.
    pub cost_weight: f64,
    /// Runs (seeds).
    pub runs: usize,
    /// Initial accuracy.
    pub initial_accuracy: Option<Stat>,
    /// Final accuracy.
    pub final_accuracy: Option<Stat>,
    /// Final − initial.
    pub accuracy_gap: Option<Stat>,
    /// Lowest evaluated accuracy.
    pub min_accuracy: Option<Stat>,
    /// Good agents' final balance %.
    pub good_final_balance_pct: Option<Stat>,
    /// Bad agents' final balance %.
    pub bad_final_balance_pct: Option<Stat>,
    /// Ruin day, over the runs where the bad agents were ruined.
    pub bad_bankrupt_day: Option<Stat>,
    /// Runs where the bad agents were ruined.
    pub bankrupt_runs: usize,
    /// Simulated days.
    pub simulated_days: Option<Stat>,
}

/// A sweep's runs and their summary.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SweepResult {
    /// Every run, in grid order.
    pub runs: Vec<RunSummary>,
    /// One row per (num_words, train size, cost weight).
    pub rows: Vec<SweepRow>,
    /// Wall time of the whole sweep.
    pub wall_seconds: f64,
    /// Worker threads.
    pub threads: usize,
}

/// Runs the grid on the rayon pool; `on_done` is called after each run.
pub fn run_sweep(
    data_dir: &Path,
    spec: &SweepSpec,
    on_done: &(dyn Fn(&RunSummary) + Sync),
) -> Result<SweepResult, SimError> {
    let started = std::time::Instant::now();
    for &w in &spec.cost_weights {
        DrtParams::new(
            w,
            spec.base.drt.refund_wait,
            spec.base.drt.any_address_claim_wait,
        )?;
    }
    let mut datasets = BTreeMap::new();
    for &nw in &spec.num_words {
        let full = Dataset::load(data_dir, nw, None)?;
        for &ts in &spec.train_sizes {
            if ts == 0 || ts > full.train.len() {
                return Err(SimError::Config(format!(
                    "train size {ts} is not between 1 and {}",
                    full.train.len()
                )));
            }
            let mut d = full.clone();
            d.train.truncate(ts);
            datasets.insert((nw, ts), d);
        }
    }
    let mechanisms = if spec.mechanisms.is_empty() {
        vec![spec.base.mechanism]
    } else {
        spec.mechanisms.clone()
    };
    let models = if spec.models.is_empty() {
        vec![spec.base.model]
    } else {
        spec.models.clone()
    };
    let mut jobs = Vec::new();
    for &mech in &mechanisms {
        for &model in &models {
            for &nw in &spec.num_words {
                for &ts in &spec.train_sizes {
                    for &w in &spec.cost_weights {
                        for &seed in &spec.seeds {
                            jobs.push((mech, model, nw, ts, w, seed));
                        }
                    }
                }
            }
        }
    }
    let runs: Vec<RunSummary> = jobs
        .par_iter()
        .map(|&(mech, model, nw, ts, w, seed)| {
            let mut cfg = spec.base.clone();
            cfg.seed = seed;
            cfg.mechanism = mech;
            cfg.model = model;
            cfg.drt = DrtParams::new(w, cfg.drt.refund_wait, cfg.drt.any_address_claim_wait)?;
            cfg.market.cost_weight_e6 = cfg.drt.cost_weight_e6;
            let r = run(&cfg, &datasets[&(nw, ts)])?;
            let s = RunSummary {
                mechanism: mech,
                model,
                num_words: nw,
                train_size: ts,
                cost_weight: w,
                seed,
                initial_accuracy: r.initial_accuracy,
                final_accuracy: r.final_accuracy,
                accuracy_gap: r.accuracy_gap,
                min_accuracy: r.min_accuracy,
                bad_bankrupt_day: r.bad_bankrupt_day,
                good_final_balance_pct: r.good_final_balance_pct,
                bad_final_balance_pct: r.bad_final_balance_pct,
                simulated_days: r.simulated_days,
                transactions: r.transactions,
                gas_used: r.gas_used,
                wall_seconds: r.wall_seconds,
            };
            on_done(&s);
            Ok(s)
        })
        .collect::<Result<_, SimError>>()?;
    let rows = summarise(&runs);
    Ok(SweepResult {
        runs,
        rows,
        wall_seconds: started.elapsed().as_secs_f64(),
        threads: rayon::current_num_threads(),
    })
}

/// Groups runs by (mechanism, model, num_words, train size, cost weight), in first-seen
/// order.
pub fn summarise(runs: &[RunSummary]) -> Vec<SweepRow> {
    type Key = (MechanismKind, ModelKind, u32, usize, f64);
    let key = |r: &RunSummary| -> Key {
        (
            r.mechanism,
            r.model,
            r.num_words,
            r.train_size,
            r.cost_weight,
        )
    };
    let mut keys: Vec<Key> = Vec::new();
    for r in runs {
        let k = key(r);
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys.into_iter()
        .map(|k| {
            let (mechanism, model, nw, ts, w) = k;
            let g: Vec<&RunSummary> = runs.iter().filter(|r| key(r) == k).collect();
            SweepRow {
                mechanism,
                model,
                num_words: nw,
                train_size: ts,
                cost_weight: w,
                runs: g.len(),
                initial_accuracy: Stat::of(g.iter().map(|r| r.initial_accuracy)),
                final_accuracy: Stat::of(g.iter().map(|r| r.final_accuracy)),
                accuracy_gap: Stat::of(g.iter().map(|r| r.accuracy_gap)),
                min_accuracy: Stat::of(g.iter().map(|r| r.min_accuracy)),
                good_final_balance_pct: Stat::of(g.iter().filter_map(|r| r.good_final_balance_pct)),
                bad_final_balance_pct: Stat::of(g.iter().filter_map(|r| r.bad_final_balance_pct)),
                bad_bankrupt_day: Stat::of(g.iter().filter_map(|r| r.bad_bankrupt_day)),
                bankrupt_runs: g.iter().filter(|r| r.bad_bankrupt_day.is_some()).count(),
                simulated_days: Stat::of(g.iter().map(|r| r.simulated_days)),
            }
        })
        .collect()
}

fn opt(v: Option<f64>) -> String {
    v.map(|x| format!("{x}")).unwrap_or_default()
}

/// Every run as CSV, one line per run, with a header.
pub fn runs_csv(runs: &[RunSummary]) -> String {
    let mut s = String::from(
        "mechanism,model,num_words,train_size,cost_weight,seed,initial_accuracy,final_accuracy,accuracy_gap,min_accuracy,bad_bankrupt_day,good_final_balance_pct,bad_final_balance_pct,simulated_days,transactions,gas_used,wall_seconds\n",
    );
    for r in runs {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            r.mechanism.name(),
            r.model.name(),
            r.num_words,
            r.train_size,
            r.cost_weight,
            r.seed,
            r.initial_accuracy,
            r.final_accuracy,
            r.accuracy_gap,
            r.min_accuracy,
            opt(r.bad_bankrupt_day),
            opt(r.good_final_balance_pct),
            opt(r.bad_final_balance_pct),
            r.simulated_days,
            r.transactions,
            r.gas_used,
            r.wall_seconds
        );
    }
    s
}

/// Charts of a sweep with one cost weight and several training sizes: the bad agents' final
/// balance, the good agents' and the final accuracy against the training size, one line per
/// (mechanism, model, num_words): colour by model and num_words, dash by mechanism.
fn across_chart(rows: &[SweepRow]) -> Chart {
    let mut lines: Vec<(MechanismKind, ModelKind, u32)> = rows
        .iter()
        .map(|r| (r.mechanism, r.model, r.num_words))
        .collect();
    lines.sort_unstable_by_key(|&(m, k, nw)| (m.name(), k.name(), nw));
    lines.dedup();
    let mut colours: Vec<(ModelKind, u32)> = lines.iter().map(|&(_, k, nw)| (k, nw)).collect();
    colours.sort_unstable_by_key(|&(k, nw)| (k.name(), nw));
    colours.dedup();
    type Metric = (&'static str, &'static str, fn(&SweepRow) -> Option<f64>);
    let metrics: [Metric; 3] = [
        (
            "bad agents' final balance",
            "% of start (points: % of contributions)",
            |r| r.bad_final_balance_pct.map(|s| s.mean),
        ),
        (
            "good agents' final balance",
            "% of start (points: % of contributions)",
            |r| r.good_final_balance_pct.map(|s| s.mean),
        ),
        ("final test accuracy", "accuracy %", |r| {
            r.final_accuracy.map(|s| 100.0 * s.mean)
        }),
    ];
    let panels = metrics
        .iter()
        .map(|&(title, y_label, f)| Panel {
            title: title.into(),
            x_label: "log2(training reviews)".into(),
            y_label: y_label.into(),
            series: lines
                .iter()
                .map(|&(mech, model, nw)| {
                    let mut points: Vec<(f64, f64)> = rows
                        .iter()
                        .filter(|r| (r.mechanism, r.model, r.num_words) == (mech, model, nw))
                        .filter_map(|r| f(r).map(|y| ((r.train_size as f64).log2(), y)))
                        .collect();
                    points.sort_by(|a, b| a.0.total_cmp(&b.0));
                    let c = colours.iter().position(|&x| x == (model, nw)).unwrap_or(0);
                    Series {
                        name: format!("{} {} {nw}", mech.name(), model.name()),
                        color: PALETTE[c % PALETTE.len()].into(),
                        dash: match mech {
                            MechanismKind::Drt => None,
                            MechanismKind::Points => Some((2, 3)),
                            MechanismKind::Market => Some((8, 4)),
                        },
                        points,
                        markers: true,
                    }
                })
                .collect(),
            y_range: None,
            x_range: None,
        })
        .collect::<Vec<_>>();
    let w = rows.first().map_or(0.0, |r| r.cost_weight);
    Chart {
        title: format!(
            "mechanisms and models at cost weight {w} (means across seeds; solid DRT, dotted Points, dashed market)"
        ),
        panels,
        cols: 3,
    }
}

/// Sweep charts, one column per training size: the bad agents' final balance, their ruin
/// day and the final accuracy against the cost weight, one line per num_words (means across
/// seeds).
///
/// With a single cost weight and several training sizes, the training size is the x axis
/// instead (one panel per figure, a line per mechanism, model and num_words).
pub fn sweep_chart(rows: &[SweepRow]) -> Chart {
    let one_weight = rows
        .iter()
        .all(|r| rows.first().is_some_and(|f| f.cost_weight == r.cost_weight));
    let sizes = rows
        .iter()
        .map(|r| r.train_size)
        .collect::<std::collections::BTreeSet<_>>();
    if one_weight && sizes.len() > 1 {
        return across_chart(rows);
    }
    let mut sizes: Vec<usize> = rows.iter().map(|r| r.train_size).collect();
    sizes.sort_unstable();
    sizes.dedup();
    let mut lines: Vec<(MechanismKind, ModelKind, u32)> = rows
        .iter()
        .map(|r| (r.mechanism, r.model, r.num_words))
        .collect();
    lines.sort_unstable_by_key(|&(m, k, nw)| (m.name(), k.name(), nw));
    lines.dedup();
    let one_kind = lines
        .iter()
        .all(|&(m, k, _)| (m, k) == (lines[0].0, lines[0].1));
    type Metric = (&'static str, &'static str, fn(&SweepRow) -> Option<f64>);
    let xs: Vec<f64> = rows
        .iter()
        .map(|r| r.cost_weight.max(1e-9).log2())
        .collect();
    let x_range = Some((
        xs.iter().copied().fold(f64::INFINITY, f64::min),
        xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    ));
    let metrics: [Metric; 3] = [
        ("bad agent's final balance", "% of start", |r| {
            r.bad_final_balance_pct.map(|s| s.mean)
        }),
        ("bad agent ruined on day", "day (runs where ruined)", |r| {
            r.bad_bankrupt_day.map(|s| s.mean)
        }),
        ("final test accuracy", "accuracy %", |r| {
            r.final_accuracy.map(|s| 100.0 * s.mean)
        }),
    ];
    let mut panels = Vec::new();
    for (title, y_label, f) in metrics {
        for &ts in &sizes {
            let series = lines
                .iter()
                .enumerate()
                .map(|(i, &(mech, model, nw))| {
                    let mut points: Vec<(f64, f64)> = rows
                        .iter()
                        .filter(|r| {
                            (r.mechanism, r.model, r.num_words, r.train_size)
                                == (mech, model, nw, ts)
                        })
                        .filter_map(|r| f(r).map(|y| (r.cost_weight.max(1e-9).log2(), y)))
                        .collect();
                    points.sort_by(|a, b| a.0.total_cmp(&b.0));
                    Series {
                        name: if one_kind {
                            format!("num_words {nw}")
                        } else {
                            format!("{} {} {nw}", mech.name(), model.name())
                        },
                        color: PALETTE[i % PALETTE.len()].into(),
                        dash: None,
                        points,
                        markers: true,
                    }
                })
                .collect();
            panels.push(Panel {
                title: format!("{title}, {ts} reviews"),
                x_label: "log2(cost weight)".into(),
                y_label: y_label.into(),
                series,
                y_range: None,
                x_range,
            });
        }
    }
    let title = match lines.first() {
        Some(&(m, k, _)) if one_kind => {
            format!("{} sweep, {} (means across seeds)", m.name(), k.name())
        }
        _ => "sweep across mechanisms and models (means across seeds)".to_string(),
    };
    Chart {
        title,
        panels,
        cols: sizes.len(),
    }
}
