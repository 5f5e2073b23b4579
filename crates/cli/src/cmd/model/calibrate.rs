use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use cohort_model::fast::stages;
use serde::Serialize;

use super::pipeline::{STREAM_BASES_FILE, parse_stream_bases};
use crate::args::int_in;
use crate::output::{Table, print_json};

/// Measure the streams between a model's layers on a text file and write their bases
/// (stream_bases.safetensors in the model directory): the mean and the principal directions
/// of the stream entering each layer and the head. Stage servers and clients of the same
/// model then send activations as coefficients in these bases (`--compress qF/Bk`), which
/// take far fewer bits than the channels: a transformer's residual stream lies mostly in a
/// few directions. Every stage server and the client need the same file.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The model directory (GPT or Llama family); the bases are written into it.
    dir: PathBuf,
    /// Text to measure the streams on (windows spread evenly over it).
    #[arg(long)]
    data: PathBuf,
    /// Batches to run, in [1, 10000].
    #[arg(long, default_value_t = 4, value_parser = int_in(1..=10_000usize))]
    batches: usize,
    /// Sequences a batch, in [1, 1024].
    #[arg(long, default_value_t = 8, value_parser = int_in(1..=1024usize))]
    batch: usize,
    /// Tokens a sequence, in [2, 65536] and at most the model's context (default: the
    /// context, at most 128).
    #[arg(long, value_parser = int_in(2..=65_536usize))]
    seq_len: Option<usize>,
    /// Replace bases the directory already holds (servers holding the old file then refuse
    /// this client's calls until they hold the new one).
    #[arg(long)]
    force: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// The most memory the running sums may take (f64 outer products of every boundary).
const MAX_SUMS_BYTES: u64 = 8 << 30;

/// One boundary's measurement.
#[derive(Debug, Serialize)]
struct Boundary {
    /// The stream entering this layer (the model's layer count: entering the head).
    layer: usize,
    /// Mean squared value of the stream.
    energy: f64,
    /// Share of the energy around the mean in the first eighth of the directions.
    top_eighth: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    file: PathBuf,
    sha256: String,
    tokens: usize,
    width: usize,
    boundaries: Vec<Boundary>,
}

impl Args {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let out = self.dir.join(STREAM_BASES_FILE);
        if out.exists() && !self.force {
            bail!(
                "{} exists: pass --force to measure again and replace it",
                out.display()
            );
        }
        let (m, tok) = super::load_mapped(&self.dir)?;
        let m = m.as_ref();
        let t = self.seq_len.unwrap_or(m.max_context().min(128));
        if t > m.max_context() {
            bail!(
                "--seq-len {t}: the model's context is {} tokens",
                m.max_context()
            );
        }
        let text = super::read_text(&self.data)?;
        let ids = tok
            .encode(&text)
            .with_context(|| format!("tokenising {}", self.data.display()))?;
        let windows = self.batches * self.batch;
        if ids.len() < t {
            bail!(
                "--data {}: {} tokens, fewer than one sequence of {t}",
                self.data.display(),
                ids.len()
            );
        }
        // Windows spread evenly over the text (overlapping when it is short).
        let span = ids.len() - t;
        let start = |i: usize| span * i / windows.saturating_sub(1).max(1);
        let (w, layers) = (m.hidden_size(), m.num_layers());
        // The running sums of outer products, in f64, one a boundary.
        let need = (layers as u64 + 1)
            .saturating_mul(w as u64)
            .saturating_mul(w as u64)
            .saturating_mul(8);
        if need > MAX_SUMS_BYTES {
            bail!(
                "{}: {} boundaries of width {w} need {} MiB of running sums, more than the {} MiB \
                 this command holds",
                self.dir.display(),
                layers + 1,
                need >> 20,
                MAX_SUMS_BYTES >> 20
            );
        }
        let mut sums = vec![vec![0f64; w]; layers + 1];
        let mut outer = vec![vec![0f64; w * w]; layers + 1];
        let mut n = 0usize;
        let progress = super::Progress::new(self.batches as u64, self.json, None);
        let rows: Vec<usize> = (0..self.batch).collect();
        for batch in 0..self.batches {
            let tokens: Vec<u32> = (0..self.batch)
                .flat_map(|s| {
                    let at = start(batch * self.batch + s).min(span);
                    ids[at..at + t].iter().copied()
                })
                .collect();
            let mut h = stages::embed(m, &tokens, self.batch, t)?;
            for layer in 0..=layers {
                accumulate(&h, w, &mut sums[layer], &mut outer[layer]);
                if layer < layers {
                    h = stages::forward_rows(m, layer..layer + 1, &h, &rows, self.batch, t)?;
                }
            }
            n += self.batch * t;
            progress.step(batch as u64 + 1, &format!("{n} tokens"));
        }
        progress.finish();
        if !self.json {
            eprintln!(
                "calibrate: {n} tokens measured; the bases of {} boundaries of width {w} (an SVD \
                 each)",
                layers + 1
            );
        }
        let mut tensors = std::collections::HashMap::new();
        let mut boundaries = Vec::new();
        for layer in 0..=layers {
            let mean: Vec<f64> = sums[layer].iter().map(|s| s / n as f64).collect();
            let mut cov = outer[layer].clone();
            // The upper triangle was summed; the covariance around the mean, whole.
            for i in 0..w {
                for j in i..w {
                    let c = cov[i * w + j] / n as f64 - mean[i] * mean[j];
                    cov[i * w + j] = c;
                    cov[j * w + i] = c;
                }
            }
            let energy = (0..w)
                .map(|i| cov[i * w + i] + mean[i] * mean[i])
                .sum::<f64>()
                / w as f64;
            let svd = cohort_model::svd::svd(&cov, w, w);
            if svd.s.len() != w {
                bail!(
                    "layer {layer}: the decomposition gave {} directions of {w}",
                    svd.s.len()
                );
            }
            let total: f64 = svd.s.iter().sum();
            let top: f64 = svd.s.iter().take(w.div_ceil(8)).sum();
            boundaries.push(Boundary {
                layer,
                energy,
                top_eighth: if total > 0.0 { top / total } else { 1.0 },
            });
            let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
            let cpu = &candle_core::Device::Cpu;
            tensors.insert(
                format!("boundary.{layer}.mean"),
                candle_core::Tensor::from_vec(f32s(&mean), w, cpu)?,
            );
            tensors.insert(
                format!("boundary.{layer}.basis"),
                candle_core::Tensor::from_vec(f32s(&svd.vt), (w, w), cpu)?,
            );
        }
        // Written beside, checked as a reader checks it, then renamed over.
        let staging = self.dir.join(format!(
            ".{STREAM_BASES_FILE}.{}.partial",
            std::process::id()
        ));
        candle_core::safetensors::save(&tensors, &staging)
            .with_context(|| format!("writing {}", staging.display()))?;
        let check =
            std::fs::read(&staging).with_context(|| format!("reading {}", staging.display()))?;
        let all: Vec<usize> = (0..=layers).collect();
        let bases = parse_stream_bases(&check, &staging, Some(&all)).inspect_err(|_| {
            let _ = std::fs::remove_file(&staging);
        })?;
        std::fs::rename(&staging, &out)
            .with_context(|| format!("renaming {} to {}", staging.display(), out.display()))?;
        let report = Report {
            file: out,
            sha256: hex::encode(bases.sha256()),
            tokens: n,
            width: w,
            boundaries,
        };
        if self.json {
            print_json(&report)?;
        } else {
            let mut table =
                Table::new(&["entering", "mean square", "energy in top 1/8 directions"]);
            for b in &report.boundaries {
                table.row(vec![
                    if b.layer == layers {
                        "head".into()
                    } else {
                        format!("layer {}", b.layer)
                    },
                    format!("{:.4}", b.energy),
                    format!("{:.1}%", 100.0 * b.top_eighth),
                ]);
            }
            table.print();
            println!(
                "wrote {} ({} boundaries of width {w}, from {n} tokens; sha256 {})",
                report.file.display(),
                report.boundaries.len(),
                &report.sha256[..16]
            );
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Adds the rows of `h` (of `w`) to the running sums and to the upper triangle of the sums
/// of outer products.
fn accumulate(h: &[f32], w: usize, sums: &mut [f64], outer: &mut [f64]) {
    for row in h.chunks_exact(w) {
        let r: Vec<f64> = row.iter().map(|&x| f64::from(x)).collect();
        for i in 0..w {
            sums[i] += r[i];
            let ri = r[i];
            let o = &mut outer[i * w..(i + 1) * w];
            for j in i..w {
                o[j] += ri * r[j];
            }
        }
    }
}
