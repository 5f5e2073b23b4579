use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use cohort_model::LanguageModel;
use cohort_model::svd::{densify, factorize};
use cohort_model::train::evaluate;
use serde::Serialize;

use crate::output::{Table, print_json};

/// Replace linear layers by their rank-K truncated SVD; report parameters, multiply-adds and
/// (with --data) perplexity for each rank, and write the factored model (--out, one rank).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The model directory.
    dir: PathBuf,
    /// Ranks to try (comma-separated).
    #[arg(long, required = true, value_delimiter = ',')]
    rank: Vec<usize>,
    /// Write the factored model here (needs exactly one --rank).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write dense rank-K weights instead of factors (loadable by transformers).
    #[arg(long)]
    dense: bool,
    /// Modules to factor (comma-separated suffixes, or all-linear).
    #[arg(long, default_value = "all-linear", value_delimiter = ',')]
    targets: Vec<String>,
    /// Evaluate perplexity on the last --tail of this text file.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Fraction of --data (from the end) to evaluate on.
    #[arg(long, default_value_t = 0.1)]
    tail: f64,
    /// At most this many evaluation windows.
    #[arg(long, default_value_t = 64)]
    max_windows: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Row {
    rank: Option<usize>,
    layers: usize,
    params: usize,
    macs_per_token: usize,
    energy: Option<f64>,
    perplexity: Option<f64>,
}

impl Args {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        if self.out.is_some() && self.rank.len() != 1 {
            anyhow::bail!("--out needs exactly one --rank");
        }
        let (base, tok) = super::load(&self.dir)?;
        let base = base.as_ref();
        let ids = match &self.data {
            Some(p) => {
                let text = super::read_text(p)?;
                let ids = tok
                    .encode(&text)
                    .with_context(|| format!("tokenising {}", p.display()))?;
                let skip = ((ids.len() as f64) * (1.0 - self.tail.clamp(0.0, 1.0))) as usize;
                Some(ids[skip..].to_vec())
            }
            None => None,
        };
        let ppl = |m: &dyn LanguageModel| -> anyhow::Result<Option<f64>> {
            match &ids {
                Some(ids) => Ok(Some(
                    evaluate(m, ids, 16, m.max_context(), self.max_windows)?.perplexity,
                )),
                None => Ok(None),
            }
        };
        let macs: usize = base.linear_modules().iter().map(|l| l.d_in * l.d_out).sum();
        let mut rows = vec![Row {
            rank: None,
            layers: 0,
            params: base.params().total_len(),
            macs_per_token: macs,
            energy: None,
            perplexity: ppl(base)?,
        }];
        for &k in &self.rank {
            let (mut m, _) = super::load(&self.dir)?;
            let r = factorize(m.as_mut(), k, &self.targets)?;
            let energy = if r.layers.is_empty() {
                None
            } else {
                Some(r.layers.iter().map(|l| l.energy).sum::<f64>() / r.layers.len() as f64)
            };
            rows.push(Row {
                rank: Some(k),
                layers: r.layers.len(),
                params: r.params_after,
                macs_per_token: r.macs_per_token_after,
                energy,
                perplexity: ppl(m.as_ref())?,
            });
            if let Some(out) = &self.out {
                if self.dense {
                    densify(m.as_mut())?;
                }
                m.save(out)
                    .with_context(|| format!("writing {}", out.display()))?;
                tok.save(out)?;
            }
        }
        if self.json {
            print_json(&rows)?;
        } else {
            let mut t = Table::new(&[
                "rank",
                "layers",
                "params",
                "matmul MACs/token",
                "energy kept",
                "perplexity",
            ]);
            for r in &rows {
                t.row(vec![
                    r.rank.map_or("full".into(), |k| k.to_string()),
                    r.layers.to_string(),
                    r.params.to_string(),
                    r.macs_per_token.to_string(),
                    r.energy.map_or("-".into(), |e| format!("{e:.4}")),
                    r.perplexity.map_or("-".into(), |p| format!("{p:.3}")),
                ]);
            }
            t.print();
        }
        Ok(ExitCode::SUCCESS)
    }
}
