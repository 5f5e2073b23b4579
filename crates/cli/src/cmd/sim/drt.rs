use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use cohort_sim::driver::MechanismKind;
use cohort_sim::{Dataset, plot, run};

use super::args::{MAX_REVIEWS, SimArgs, cost_weight, num_words};
use crate::args::{check_output_file, int_in};
use crate::output::{Table, write_json};

/// One run of a mechanism (Deposit-Refund-Take, Points or the prediction market): the
/// initial model fit off-chain and deployed as the model contract's state, then the agents
/// adding, claiming and taking on a virtual clock.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    sim: SimArgs,
    /// Features per review: word ids at or above it become out-of-vocabulary (2).
    #[arg(long, default_value_t = 500, value_parser = num_words())]
    num_words: u32,
    /// Use the first N training reviews (default: all).
    #[arg(long, value_parser = int_in(1..=MAX_REVIEWS))]
    train_size: Option<usize>,
    /// Weight of the deposit: cost = max(1, cost_weight * 60 / sqrt(seconds since the last
    /// addition)) [default: 1]. Deposit-Refund-Take and the market; Points has no deposit
    /// and refuses it.
    #[arg(long, value_parser = cost_weight())]
    cost_weight: Option<f64>,
    /// Seed of every random draw.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the full report (figures, per-agent accounts, time series) here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write a chart of balances and accuracy over simulated days here: SVG, or PNG when the
    /// name ends in .png.
    #[arg(long)]
    plot: Option<PathBuf>,
}

fn pct(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.1}%")).unwrap_or_else(|| "-".into())
}

impl Args {
    pub fn execute(self, mechanism: MechanismKind) -> anyhow::Result<ExitCode> {
        if mechanism == MechanismKind::Points && self.cost_weight.is_some() {
            anyhow::bail!("--cost-weight does not apply to points: there are no deposits");
        }
        let cfg = self
            .sim
            .config(mechanism, self.seed, self.cost_weight.unwrap_or(1.0))?;
        // Output files are checked before the run, not after it.
        if let Some(p) = &self.json {
            check_output_file(p, "--json")?;
        }
        if let Some(p) = &self.plot {
            cohort_sim::plot::PlotFormat::from_path(p).context("--plot")?;
            check_output_file(p, "--plot")?;
        }
        let points = mechanism == MechanismKind::Points;
        let t = Instant::now();
        let data = Dataset::load(&self.sim.data, self.num_words, self.train_size)?;
        let load_s = t.elapsed().as_secs_f64();
        let r = run(&cfg, &data)?;

        let mut t = Table::new(&["measure", "value"]);
        let mut row = |k: &str, v: String| t.row(vec![k.into(), v]);
        row(
            "mechanism / model",
            format!("{} / {}", r.mechanism, r.model),
        );
        row(
            "num_words / train size / cost weight",
            if points {
                format!("{} / {} / - (no deposits)", r.num_words, r.train_size)
            } else {
                format!("{} / {} / {}", r.num_words, r.train_size, r.cost_weight)
            },
        );
        row(
            "initial model",
            format!(
                "{} reviews, {} epochs",
                r.initial_samples, r.initial_fit_epochs
            ),
        );
        row("initial accuracy", format!("{:.4}", r.initial_accuracy));
        row(
            "final accuracy (gap)",
            format!("{:.4} ({:+.4})", r.final_accuracy, r.accuracy_gap),
        );
        row("min accuracy", format!("{:.4}", r.min_accuracy));
        if points {
            row(
                "good: points / contributions",
                pct(r.good_final_balance_pct),
            );
            row("bad: points / contributions", pct(r.bad_final_balance_pct));
        } else {
            row("good final balance", pct(r.good_final_balance_pct));
            row("bad final balance", pct(r.bad_final_balance_pct));
            row(
                "bad ruined on day",
                r.bad_bankrupt_day
                    .map(|d| format!("{d:.1}"))
                    .unwrap_or_else(|| "never".into()),
            );
        }
        if let Some(m) = &r.market {
            row(
                "market: participation accuracy (day)",
                format!(
                    "{:.4} (day {:.1})",
                    m.participation_accuracy, m.participation_days
                ),
            );
            for (i, o) in m.rounds.iter().enumerate() {
                row(
                    &format!("market: round {}", i + 1),
                    format!(
                        "{} scored, {} forfeited, pot {:.2}, {}/{} test right",
                        o.scored,
                        o.forfeited,
                        o.pot as f64 / 1e18,
                        o.correct,
                        m.test_size
                    ),
                );
            }
            row(
                "market: back to the initiator",
                format!("{:.2} of {}", m.initiator_refund, m.bounty),
            );
        }
        row("simulated days", format!("{:.1}", r.simulated_days));
        row(
            "samples added",
            format!(
                "{} ({} still claimable at the end)",
                r.samples_added, r.unclaimed_at_end
            ),
        );
        row(
            "transactions (reverted)",
            format!("{} ({})", r.transactions, r.reverted_transactions),
        );
        row("refused attempts", format!("{}", r.rejected_attempts));
        row("gas used", format!("{}", r.gas_used));
        row(
            "wall time",
            format!("{:.3} s (+ {load_s:.3} s loading data)", r.wall_seconds),
        );
        row(
            "transactions/s",
            format!("{:.0}", r.transactions_per_second),
        );
        t.print();
        outln!();
        let mut a = Table::new(&[
            "agent",
            "kind",
            "accepted",
            if points { "points" } else { "refunds/claims" },
            "takes",
            if points { "points" } else { "final balance" },
            if points {
                "% of contributions"
            } else {
                "% of start"
            },
            "ruined day",
        ]);
        for x in &r.agents {
            a.row(vec![
                x.name.clone(),
                format!("{:?}", x.kind).to_lowercase(),
                x.accepted.to_string(),
                x.refunds.to_string(),
                format!("{} ({} all)", x.takes, x.take_alls),
                format!("{:.2}", x.final_balance),
                format!("{:.1}%", x.final_balance_pct),
                x.bankrupt_day
                    .map(|d| format!("{d:.1}"))
                    .unwrap_or_else(|| "-".into()),
            ]);
        }
        a.print();
        if let Some(p) = &self.json {
            write_json(p, &r)?;
        }
        if let Some(p) = &self.plot {
            plot::run_chart(&r)
                .write(p)
                .context("writing the --plot chart")?;
        }
        Ok(ExitCode::SUCCESS)
    }
}
