use std::path::PathBuf;
use std::process::ExitCode;

use cohort_sim::perceptron::{EtaSchedule, FitConfig, accuracy};
use cohort_sim::sweep::Stat;
use cohort_sim::{Dataset, ModelKind as SimModel};
use serde::Serialize;

use super::args::{MAX_REVIEWS, ModelKind, num_words};
use crate::args::{check_output_file, int_in};
use crate::output::{Table, write_json};

/// The chosen model fit on the whole training set (the perceptron as sklearn's `fit`:
/// shuffled epochs, tol-based stop; Naive Bayes and nearest centroid by counting, so their
/// seeds all give the same result), and its test accuracy, per num_words.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory holding train.tsv and test.tsv.
    #[arg(long, default_value = "../shared/data/imdb")]
    data: PathBuf,
    /// The classifier.
    #[arg(long, value_enum, default_value_t = ModelKind::Perceptron)]
    model: ModelKind,
    /// Feature counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [100, 200, 500], value_parser = num_words())]
    num_words: Vec<u32>,
    /// Use the first N training reviews (default: all).
    #[arg(long, value_parser = int_in(1..=MAX_REVIEWS))]
    train_size: Option<usize>,
    /// Shuffling seeds: 1, 2, ..., N.
    #[arg(long, default_value_t = 5, value_parser = int_in(1..=100_000u64))]
    seeds: u64,
    /// Write the results here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Row {
    num_words: u32,
    train_size: usize,
    accuracy: Option<Stat>,
    train_accuracy: Option<Stat>,
    epochs: Option<Stat>,
    per_seed: Vec<f64>,
}

impl Args {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        if let Some(p) = &self.json {
            check_output_file(p, "--json")?;
        }
        let kind: SimModel = self.model.into();
        let mut rows = Vec::new();
        for &nw in &self.num_words {
            let data = Dataset::load(&self.data, nw, self.train_size)?;
            let (mut acc, mut train_acc, mut epochs) = (Vec::new(), Vec::new(), Vec::new());
            for seed in 1..=self.seeds {
                let mut rng = cohort_core::ChaCha8::new(seed);
                let (m, e) = kind.fit(
                    nw,
                    &data.train,
                    &FitConfig::default(),
                    EtaSchedule::default(),
                    &mut rng,
                );
                epochs.push(f64::from(e));
                acc.push(accuracy(&m, &data.test));
                train_acc.push(accuracy(&m, &data.train));
            }
            rows.push(Row {
                num_words: nw,
                train_size: data.train.len(),
                accuracy: Stat::of(acc.iter().copied()),
                train_accuracy: Stat::of(train_acc),
                epochs: Stat::of(epochs),
                per_seed: acc,
            });
        }
        let mut t = Table::new(&[
            "num_words",
            "train",
            "test accuracy mean [min, max]",
            "train accuracy",
            "epochs",
        ]);
        let f = |s: &Option<Stat>, d: usize| {
            s.map(|s| format!("{:.d$} [{:.d$}, {:.d$}]", s.mean, s.min, s.max, d = d))
                .unwrap_or_default()
        };
        for r in &rows {
            t.row(vec![
                r.num_words.to_string(),
                r.train_size.to_string(),
                f(&r.accuracy, 4),
                f(&r.train_accuracy, 4),
                f(&r.epochs, 1),
            ]);
        }
        t.print();
        if let Some(p) = &self.json {
            write_json(p, &rows)?;
        }
        Ok(ExitCode::SUCCESS)
    }
}
