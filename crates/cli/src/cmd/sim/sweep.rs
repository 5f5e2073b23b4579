use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use cohort_sim::driver::MechanismKind;
use cohort_sim::sweep::{self, Stat, SweepSpec};
use indicatif::{ProgressBar, ProgressStyle};

use super::args::{MAX_REVIEWS, MechanismArg, ModelKind, SimArgs, cost_weight, num_words};
use crate::args::{check_output_file, int_in};
use crate::output::{Table, write_json};

/// A grid of Deposit-Refund-Take runs on all cores: every combination of num_words, training
/// size and cost weight, each with several seeds, summarised by mean and range across seeds.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    sim: SimArgs,
    /// Feature counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [100, 200, 500], value_parser = num_words())]
    num_words: Vec<u32>,
    /// Training sizes (first N reviews), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1000, 2500, 5000], value_parser = int_in(1..=MAX_REVIEWS))]
    train_size: Vec<usize>,
    /// Mechanisms, comma-separated (drt, points, market) [default: drt].
    #[arg(long, value_delimiter = ',', value_enum)]
    mechanisms: Vec<MechanismArg>,
    /// Models, comma-separated (perceptron, nb, ncc) [default: --model].
    #[arg(long, value_delimiter = ',', value_enum)]
    models: Vec<ModelKind>,
    /// Cost weights, comma-separated (Points ignores them: its runs repeat per weight).
    #[arg(long, value_delimiter = ',', default_values_t = [0.5, 1.0, 2.0, 4.0, 8.0, 16.0], value_parser = cost_weight())]
    cost_weight: Vec<f64>,
    /// Seeds per cell: 1, 2, ..., N.
    #[arg(long, default_value_t = 5, value_parser = int_in(1..=100_000u64))]
    seeds: u64,
    /// Worker threads (default: all cores).
    #[arg(long, value_parser = int_in(1..=1024usize))]
    threads: Option<usize>,
    /// Write every run and the summary here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write every run here as CSV (one line per run).
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Write charts against the cost weight (one line per num_words) here: SVG, or PNG when
    /// the name ends in .png.
    #[arg(long)]
    plot: Option<PathBuf>,
}

fn stat(s: &Option<Stat>, scale: f64, digits: usize) -> String {
    match s {
        Some(s) if s.n > 1 => format!(
            "{:.d$} [{:.d$}, {:.d$}]",
            s.mean * scale,
            s.min * scale,
            s.max * scale,
            d = digits
        ),
        Some(s) => format!("{:.d$}", s.mean * scale, d = digits),
        None => "-".into(),
    }
}

impl Args {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        // Output files are checked before the runs, not after them.
        for (flag, path) in [
            ("--json", &self.json),
            ("--csv", &self.csv),
            ("--plot", &self.plot),
        ] {
            if let Some(p) = path {
                check_output_file(p, flag)?;
            }
        }
        if let Some(p) = &self.plot {
            cohort_sim::plot::PlotFormat::from_path(p).context("--plot")?;
        }
        // Market-only flags are accepted when the market is one of the mechanisms.
        let base_mechanism = if self.mechanisms.contains(&MechanismArg::Market) {
            MechanismKind::Market
        } else {
            self.mechanisms
                .first()
                .map_or(MechanismKind::Drt, |&m| m.into())
        };
        let base = self.sim.config(base_mechanism, 1, 1.0)?;
        let spec = SweepSpec {
            mechanisms: self.mechanisms.iter().map(|&m| m.into()).collect(),
            models: self.models.iter().map(|&m| m.into()).collect(),
            num_words: self.num_words.clone(),
            train_sizes: self.train_size.clone(),
            cost_weights: self.cost_weight.clone(),
            seeds: (1..=self.seeds).collect(),
            base,
        };
        let total = spec.num_words.len()
            * spec.train_sizes.len()
            * spec.cost_weights.len()
            * spec.seeds.len();
        let bar = ProgressBar::new(total as u64);
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} runs, {elapsed} elapsed, eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(self.threads.unwrap_or(0))
            .build()
            .context("starting the worker pool")?;
        let result = pool.install(|| sweep::run_sweep(&self.sim.data, &spec, &|_| bar.inc(1)))?;
        bar.finish_and_clear();

        let mut t = Table::new(&[
            "mechanism",
            "model",
            "num_words",
            "train",
            "cost w",
            "seeds",
            "final accuracy",
            "gap",
            "good final %",
            "bad final %",
            "bad ruined",
            "ruin day",
        ]);
        for r in &result.rows {
            t.row(vec![
                r.mechanism.name().to_string(),
                r.model.name().to_string(),
                r.num_words.to_string(),
                r.train_size.to_string(),
                r.cost_weight.to_string(),
                r.runs.to_string(),
                stat(&r.final_accuracy, 1.0, 3),
                stat(&r.accuracy_gap, 1.0, 3),
                stat(&r.good_final_balance_pct, 1.0, 0),
                stat(&r.bad_final_balance_pct, 1.0, 0),
                format!("{}/{}", r.bankrupt_runs, r.runs),
                stat(&r.bad_bankrupt_day, 1.0, 1),
            ]);
        }
        t.print();
        outln!(
            "\n{} runs in {:.1} s on {} threads; mean [min, max] across seeds",
            result.runs.len(),
            result.wall_seconds,
            result.threads
        );
        if let Some(p) = &self.json {
            write_json(p, &serde_json::json!({ "spec": spec, "result": result }))?;
        }
        if let Some(p) = &self.csv {
            std::fs::write(p, sweep::runs_csv(&result.runs))
                .with_context(|| format!("writing {}", p.display()))?;
        }
        if let Some(p) = &self.plot {
            sweep::sweep_chart(&result.rows)
                .write(p)
                .context("writing the --plot chart")?;
        }
        Ok(ExitCode::SUCCESS)
    }
}
