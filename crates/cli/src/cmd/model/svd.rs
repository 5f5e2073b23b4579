use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use cohort_model::LanguageModel;
use cohort_model::svd::{densify, factorize};
use cohort_model::train::evaluate;
use serde::Serialize;

use crate::args::{float_in, int_in};
use crate::output::{Table, print_json};

/// Replace linear layers by their rank-K truncated SVD; report parameters, multiply-adds and
/// (with --data) perplexity for each rank, and write the factored model (--out, one rank).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The model directory.
    dir: PathBuf,
    /// Ranks to try (comma-separated), each in [1, 65536]; layers whose smaller side is not
    /// above the rank stay dense.
    #[arg(long, required = true, value_delimiter = ',', value_parser = int_in(1..=65_536usize))]
    rank: Vec<usize>,
    /// Write the factored model here (needs exactly one --rank; an existing directory that
    /// holds files is refused unless --force). Written whole, through a staging directory.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Replace what --out holds.
    #[arg(long, requires = "out")]
    force: bool,
    /// Write dense rank-K weights instead of factors (loadable by transformers).
    #[arg(long)]
    dense: bool,
    /// Modules to factor (comma-separated suffixes, or all-linear).
    #[arg(long, default_value = "all-linear", value_delimiter = ',')]
    targets: Vec<String>,
    /// Evaluate perplexity on the last --tail of this text file.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Fraction of --data (from the end) to evaluate on, in (0, 1].
    #[arg(long, default_value_t = 0.1, value_parser = float_in(0.0..=1.0).open_start())]
    tail: f64,
    /// At most this many evaluation windows, in [1, 100000000].
    #[arg(long, default_value_t = 64, value_parser = int_in(1..=100_000_000usize))]
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
        let staged = match &self.out {
            Some(out) => Some(super::Staged::new(
                out,
                "--out",
                self.force,
                "pass --force to replace it",
            )?),
            None => None,
        };
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
                    evaluate(m, ids, 16, m.max_context().min(1024), self.max_windows)?.perplexity,
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
            if let Some(st) = &staged {
                if self.dense {
                    densify(m.as_mut())?;
                }
                m.save(st.path())
                    .with_context(|| format!("writing {}", st.path().display()))?;
                tok.save(st.path())?;
            }
        }
        if let Some(st) = staged {
            st.commit()?;
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
