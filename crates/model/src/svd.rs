//! Low-rank (truncated SVD) factorisation of linear layers, the eFedLLM idea: a weight
//! `W` `[out, in]` becomes `B A` with `A = S_k V_k^T` `[k, in]` and `B = U_k` `[out, k]`, so the
//! layer costs `k (in + out)` parameters and multiply-adds per token instead of `in * out`.
//!
//! The SVD is one-sided Jacobi (Hestenes) in f64: exact to rounding and simple, but cubic (a
//! 256 x 1024 matrix takes about a second; a 0.5B-parameter Qwen's 896 x 4864 matrices would
//! take minutes each). Matrices whose shorter side exceeds [`EXACT_MAX`] (and ranks well below
//! it) use a seeded randomised truncated SVD instead ([`svd_truncated`], Halko, Martinsson and
//! Tropp 2011: a Gaussian sketch with oversampling, power iterations, then Jacobi on the small
//! projected matrix), which costs a few products of the matrix with thin ones.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};
use serde::Serialize;

use crate::kernels::linear::WeightLayout;
use crate::model::{LanguageModel, LinearInfo};
use crate::{Error, Result};

/// A thin SVD: `a = u diag(s) vt`, singular values in decreasing order.
#[derive(Debug, Clone)]
pub struct Svd {
    /// `[m, r]` row-major.
    pub u: Vec<f64>,
    pub s: Vec<f64>,
    /// `[r, n]` row-major.
    pub vt: Vec<f64>,
    pub m: usize,
    pub n: usize,
}

/// The SVD of the row-major `[m, n]` matrix `a`.
pub fn svd(a: &[f64], m: usize, n: usize) -> Svd {
    if m < n {
        // Factor the transpose and swap the roles of u and v.
        let at: Vec<f64> = (0..n * m).map(|i| a[(i % m) * n + i / m]).collect();
        let t = svd(&at, n, m);
        let r = t.s.len();
        // a = (at)^T = (u s vt)^T = vt^T s u^T.
        let u: Vec<f64> = (0..m * r).map(|i| t.vt[(i % r) * m + i / r]).collect();
        let vt: Vec<f64> = (0..r * n).map(|i| t.u[(i % n) * r + i / n]).collect();
        return Svd {
            u,
            s: t.s,
            vt,
            m,
            n,
        };
    }
    // Columns of a (m >= n), stored column by column; v starts as the identity.
    let mut cols: Vec<Vec<f64>> = (0..n)
        .map(|j| (0..m).map(|i| a[i * n + j]).collect())
        .collect();
    let mut v: Vec<Vec<f64>> = (0..n)
        .map(|j| (0..n).map(|i| f64::from(u8::from(i == j))).collect())
        .collect();
    let dot = |x: &[f64], y: &[f64]| x.iter().zip(y).map(|(a, b)| a * b).sum::<f64>();
    for _sweep in 0..60 {
        let mut rotated = false;
        for p in 0..n {
            for q in p + 1..n {
                let alpha = dot(&cols[p], &cols[p]);
                let beta = dot(&cols[q], &cols[q]);
                let gamma = dot(&cols[p], &cols[q]);
                if gamma.abs() <= 1e-15 * (alpha * beta).sqrt() || gamma == 0.0 {
                    continue;
                }
                rotated = true;
                let zeta = (beta - alpha) / (2.0 * gamma);
                let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let c = 1.0 / (1.0 + t * t).sqrt();
                let s = c * t;
                let (lo, hi) = cols.split_at_mut(q);
                for (x, y) in lo[p].iter_mut().zip(hi[0].iter_mut()) {
                    let (a, b) = (*x, *y);
                    *x = c * a - s * b;
                    *y = s * a + c * b;
                }
                let (lo, hi) = v.split_at_mut(q);
                for (x, y) in lo[p].iter_mut().zip(hi[0].iter_mut()) {
                    let (a, b) = (*x, *y);
                    *x = c * a - s * b;
                    *y = s * a + c * b;
                }
            }
        }
        if !rotated {
            break;
        }
    }
    let mut order: Vec<(usize, f64)> = cols.iter().map(|c| dot(c, c).sqrt()).enumerate().collect();
    order.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let r = n;
    let mut u = vec![0.0; m * r];
    let mut vt = vec![0.0; r * n];
    let mut s = Vec::with_capacity(r);
    for (k, &(j, sv)) in order.iter().enumerate() {
        s.push(sv);
        for i in 0..m {
            u[i * r + k] = if sv > 0.0 { cols[j][i] / sv } else { 0.0 };
        }
        for i in 0..n {
            vt[k * n + i] = v[j][i];
        }
    }
    Svd { u, s, vt, m, n }
}

/// Shorter sides up to this use the exact Jacobi SVD in [`factor`].
pub const EXACT_MAX: usize = 512;

/// The leading `k` singular triplets of the row-major `[m, n]` matrix `a`: exact (Jacobi) for
/// small matrices, else randomised with `k + 10` sketch columns and two power iterations from a
/// fixed seed (deterministic). Returns an [`Svd`] with `min(k, m, n)` columns.
pub fn svd_truncated(a: &[f64], m: usize, n: usize, k: usize) -> Svd {
    let r = m.min(n);
    let k = k.min(r);
    let l = (k + 10).min(r);
    if r <= EXACT_MAX || 2 * l >= r {
        return truncate(svd(a, m, n), k);
    }
    svd_randomized(a, m, n, k, l - k, 2)
}

/// The leading `k` singular triplets of the row-major `[m, n]` matrix `a` from a seeded
/// Gaussian sketch of `k + oversample` columns and `power_iters` power iterations.
pub fn svd_randomized(
    a: &[f64],
    m: usize,
    n: usize,
    k: usize,
    oversample: usize,
    power_iters: usize,
) -> Svd {
    let k = k.min(m.min(n));
    let l = (k + oversample).min(m.min(n));
    let mut rng = cohort_core::SplitMix64::new(0x5fd_5eed ^ (m as u64) << 32 ^ n as u64);
    let omega: Vec<f64> = rng
        .normal_vec(n * l, 1.0)
        .into_iter()
        .map(f64::from)
        .collect();
    let mm = |x: &[f64],
              (xr, xc, xt): (usize, usize, bool),
              y: &[f64],
              (yr, yc, yt): (usize, usize, bool)| {
        use crate::kernels::gemm::{MatMut, MatRef, matmul};
        let lhs = if xt {
            MatRef::rows(x, 0, xr, xc, xc).t()
        } else {
            MatRef::rows(x, 0, xr, xc, xc)
        };
        let rhs = if yt {
            MatRef::rows(y, 0, yr, yc, yc).t()
        } else {
            MatRef::rows(y, 0, yr, yc, yc)
        };
        let mut out = vec![0f64; lhs.rows * rhs.cols];
        let (or, oc) = (lhs.rows, rhs.cols);
        matmul(
            MatMut::rows(&mut out, 0, or, oc, oc),
            lhs,
            rhs,
            1.0,
            false,
            crate::kernels::threads(),
        )
        .expect("shapes agree by construction");
        out
    };
    // Q: an orthonormal basis of the range of A Omega, refined by (A A^T)^2.
    let mut q = mm(a, (m, n, false), &omega, (n, l, false));
    orthonormalize(&mut q, m, l);
    for _ in 0..power_iters {
        let mut z = mm(a, (m, n, true), &q, (m, l, false)); // A^T Q, [n, l]
        orthonormalize(&mut z, n, l);
        q = mm(a, (m, n, false), &z, (n, l, false));
        orthonormalize(&mut q, m, l);
    }
    // B = Q^T A [l, n] = Ub S Vt; A ~ (Q Ub) S Vt.
    let b = mm(&q, (m, l, true), a, (m, n, false));
    let small = truncate(svd(&b, l, n), k);
    let u = mm(&q, (m, l, false), &small.u, (l, k, false));
    Svd {
        u,
        s: small.s,
        vt: small.vt,
        m,
        n,
    }
}

/// The first `k` triplets of a full [`Svd`].
fn truncate(d: Svd, k: usize) -> Svd {
    let r = d.s.len();
    let k = k.min(r);
    Svd {
        u: (0..d.m * k).map(|i| d.u[(i / k) * r + i % k]).collect(),
        s: d.s[..k].to_vec(),
        vt: d.vt[..k * d.n].to_vec(),
        m: d.m,
        n: d.n,
    }
}

/// Orthonormalises the `c` columns of the row-major `[r, c]` matrix `x` in place (modified
/// Gram-Schmidt, twice for stability; a column that vanishes becomes zero).
fn orthonormalize(x: &mut [f64], r: usize, c: usize) {
    for _ in 0..2 {
        for j in 0..c {
            for p in 0..j {
                let dot: f64 = (0..r).map(|i| x[i * c + j] * x[i * c + p]).sum();
                for i in 0..r {
                    x[i * c + j] -= dot * x[i * c + p];
                }
            }
            let norm = (0..r)
                .map(|i| x[i * c + j] * x[i * c + j])
                .sum::<f64>()
                .sqrt();
            for i in 0..r {
                x[i * c + j] = if norm > 1e-300 {
                    x[i * c + j] / norm
                } else {
                    0.0
                };
            }
        }
    }
}

/// Name of the `A` factor (`[k, in]`) of a factored linear layer.
pub fn a_name(path: &str) -> String {
    format!("{path}.svd_a.weight")
}

/// Name of the `B` factor (`[out, k]`) of a factored linear layer.
pub fn b_name(path: &str) -> String {
    format!("{path}.svd_b.weight")
}

/// What factorising one layer did.
#[derive(Debug, Clone, Serialize)]
pub struct LayerReport {
    pub path: String,
    pub rank: usize,
    pub params_before: usize,
    pub params_after: usize,
    /// Fraction of the squared Frobenius norm kept (`sum s_k^2 / sum s^2`).
    pub energy: f64,
}

/// What factorising a model did.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub rank: usize,
    pub layers: Vec<LayerReport>,
    pub params_before: usize,
    pub params_after: usize,
    /// Matmul multiply-adds per token of the forward pass, before and after (x2 for FLOPs).
    pub macs_per_token_before: usize,
    pub macs_per_token_after: usize,
}

/// `A` `[k, in]` and `B` `[out, k]` with `B A` the best rank-`k` approximation of the layer's
/// weight (viewed as `[out, in]`).
pub fn factor(w: &Tensor, layout: WeightLayout, k: usize) -> Result<(Tensor, Tensor, f64)> {
    let w = match layout {
        WeightLayout::OutIn => w.clone(),
        WeightLayout::InOut => w.t()?,
    };
    let (out, inp) = w.dims2()?;
    let data: Vec<f64> = w.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
    let d = svd_truncated(&data, out, inp, k);
    let (r, k) = (d.s.len(), d.s.len());
    let total: f64 = data.iter().map(|x| x * x).sum();
    let kept: f64 = d.s.iter().map(|s| s * s).sum();
    let a: Vec<f32> = (0..k * inp)
        .map(|i| (d.s[i / inp] * d.vt[i]) as f32)
        .collect();
    let b: Vec<f32> = (0..out * k)
        .map(|i| d.u[(i / k) * r + i % k] as f32)
        .collect();
    let dev = w.device();
    Ok((
        Tensor::from_vec(a, (k, inp), dev)?,
        Tensor::from_vec(b, (out, k), dev)?,
        if total > 0.0 { kept / total } else { 1.0 },
    ))
}

/// Replaces every linear layer matched by `targets` (PEFT-style suffixes, or `all-linear`) by
/// its rank-`rank` factors, where that saves parameters. The factors keep the layer's
/// trainable flag and position in the flat parameter view.
pub fn factorize(model: &mut dyn LanguageModel, rank: usize, targets: &[String]) -> Result<Report> {
    if rank == 0 {
        return Err(Error::config("rank", "must be positive"));
    }
    // Factors replace weights in `params`: bring mapped frozen weights there first.
    model.weights_mut().materialize_frozen()?;
    let linears = model.linear_modules();
    let macs_before: usize = linears.iter().map(|l| l.d_in * l.d_out).sum();
    let params_before = model.params().total_len();
    let hit = |l: &LinearInfo| {
        targets
            .iter()
            .any(|t| t == "all-linear" || l.path.ends_with(&format!(".{t}")) || &l.path == t)
    };
    let mut layers = Vec::new();
    let w = model.weights_mut();
    if w.lora.is_some() {
        return Err(Error::config(
            "lora",
            "merge or drop the LoRA adapter before factorising",
        ));
    }
    for l in linears.iter().filter(|l| hit(l)) {
        if w.lowrank.contains_key(&l.path) || rank * (l.d_in + l.d_out) >= l.d_in * l.d_out {
            continue;
        }
        let name = format!("{}.weight", l.path);
        let p = w
            .params
            .get(&name)
            .ok_or_else(|| Error::Params(format!("no parameter `{name}`")))?;
        let trainable = p.trainable;
        let (a, b, energy) = factor(p.var.as_tensor(), l.layout, rank)?;
        let k = a.dim(0)?;
        w.params.replace(
            &name,
            vec![
                (a_name(&l.path), a, trainable),
                (b_name(&l.path), b, trainable),
            ],
        )?;
        w.lowrank.insert(l.path.clone(), k);
        layers.push(LayerReport {
            path: l.path.clone(),
            rank: k,
            params_before: l.d_in * l.d_out,
            params_after: k * (l.d_in + l.d_out),
            energy,
        });
    }
    let macs_after = linears
        .iter()
        .map(|l| match w.lowrank.get(&l.path) {
            Some(k) => k * (l.d_in + l.d_out),
            None => l.d_in * l.d_out,
        })
        .sum();
    Ok(Report {
        rank,
        layers,
        params_before,
        params_after: w.params.total_len(),
        macs_per_token_before: macs_before,
        macs_per_token_after: macs_after,
    })
}

/// Factors the linear layers whose paths are in `paths` (where that saves parameters) into
/// frozen rank-`rank` factors, reading only those layers' weights: a memory-mapped base
/// stays mapped and its other pages untouched (a stage server factors its own layers only).
/// The report counts the factored layers' parameters (`params_before`, `params_after`) and
/// their multiply-adds per token.
pub fn factorize_layers(
    model: &mut dyn LanguageModel,
    rank: usize,
    paths: &[String],
) -> Result<Report> {
    if rank == 0 {
        return Err(Error::config("rank", "must be positive"));
    }
    if model.weights().lora.is_some() {
        return Err(Error::config(
            "lora",
            "factor the layers before attaching an adapter",
        ));
    }
    let linears: Vec<LinearInfo> = model
        .linear_modules()
        .into_iter()
        .filter(|l| paths.contains(&l.path))
        .collect();
    let mut layers = Vec::new();
    let (mut before, mut after) = (0, 0);
    let w = model.weights_mut();
    for l in &linears {
        before += l.d_in * l.d_out;
        if w.lowrank.contains_key(&l.path) || rank * (l.d_in + l.d_out) >= l.d_in * l.d_out {
            after += l.d_in * l.d_out;
            continue;
        }
        let name = format!("{}.weight", l.path);
        let shape = match l.layout {
            WeightLayout::InOut => (l.d_in, l.d_out),
            WeightLayout::OutIn => (l.d_out, l.d_in),
        };
        let (weight, in_params) = match w.params.get(&name) {
            Some(p) => (p.var.as_tensor().clone(), true),
            None => {
                let data = w
                    .frozen
                    .as_ref()
                    .and_then(|f| f.slice(&name))
                    .ok_or_else(|| Error::Params(format!("no weight `{name}`")))?;
                (
                    Tensor::from_slice(data, shape, &candle_core::Device::Cpu)?,
                    false,
                )
            }
        };
        let (a, b, energy) = factor(&weight, l.layout, rank)?;
        let k = a.dim(0)?;
        if in_params {
            w.params.replace(
                &name,
                vec![(a_name(&l.path), a, false), (b_name(&l.path), b, false)],
            )?;
        } else {
            w.params.insert(&a_name(&l.path), a, false)?;
            w.params.insert(&b_name(&l.path), b, false)?;
        }
        w.lowrank.insert(l.path.clone(), k);
        after += k * (l.d_in + l.d_out);
        layers.push(LayerReport {
            path: l.path.clone(),
            rank: k,
            params_before: l.d_in * l.d_out,
            params_after: k * (l.d_in + l.d_out),
            energy,
        });
    }
    Ok(Report {
        rank,
        layers,
        params_before: before,
        params_after: after,
        macs_per_token_before: before,
        macs_per_token_after: after,
    })
}

/// Multiplies factored layers back into dense weights (`B A`), for tools that expect the
/// original architecture (e.g. `transformers`).
pub fn densify(model: &mut dyn LanguageModel) -> Result<()> {
    let linears: BTreeMap<String, LinearInfo> = model
        .linear_modules()
        .into_iter()
        .map(|l| (l.path.clone(), l))
        .collect();
    let w = model.weights_mut();
    let paths: Vec<String> = w.lowrank.keys().cloned().collect();
    for path in paths {
        let l = linears
            .get(&path)
            .ok_or_else(|| Error::Params(format!("no linear layer `{path}`")))?;
        let a = w.params.tensor(&a_name(&path))?;
        let b = w.params.tensor(&b_name(&path))?;
        let trainable = w.params.get(&a_name(&path)).is_some_and(|p| p.trainable);
        let ba = b.matmul(&a)?;
        let dense = match l.layout {
            WeightLayout::OutIn => ba,
            WeightLayout::InOut => ba.t()?.contiguous()?,
        };
        w.params.remove(&b_name(&path));
        w.params.replace(
            &a_name(&path),
            vec![(format!("{path}.weight"), dense, trainable)],
        )?;
        w.lowrank.remove(&path);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(m: usize, n: usize) {
        let a: Vec<f64> = (0..m * n)
            .map(|i| ((i * 7919 % 101) as f64 / 50.0) - 1.0)
            .collect();
        let d = svd(&a, m, n);
        let r = m.min(n);
        assert_eq!(d.s.len(), r);
        assert!(d.s.windows(2).all(|w| w[0] >= w[1]));
        for i in 0..m {
            for j in 0..n {
                let x: f64 = (0..r)
                    .map(|k| d.u[i * r + k] * d.s[k] * d.vt[k * n + j])
                    .sum();
                assert!((x - a[i * n + j]).abs() < 1e-10, "reconstruction ({i},{j})");
            }
        }
        // u has orthonormal columns.
        for p in 0..r {
            for q in 0..r {
                let x: f64 = (0..m).map(|i| d.u[i * r + p] * d.u[i * r + q]).sum();
                assert!((x - f64::from(u8::from(p == q))).abs() < 1e-10);
            }
        }
    }

    #[test]
    fn svd_reconstructs_tall_and_wide_matrices() {
        check(7, 4);
        check(3, 8);
    }

    #[test]
    fn truncation_keeps_the_largest_singular_values() {
        // A rank-2 matrix is reproduced exactly at k = 2.
        let u = [1.0, 2.0, 0.0, -1.0, 0.5, 3.0];
        let v = [0.3, -0.2, 1.0, 2.0, 0.0, 0.7, 0.1, -1.5];
        let (m, n) = (3, 4);
        let w: Vec<f32> = (0..m * n)
            .map(|i| (u[(i / n) * 2] * v[i % n] + u[(i / n) * 2 + 1] * v[4 + i % n]) as f32)
            .collect();
        let wt = Tensor::from_vec(w.clone(), (m, n), &candle_core::Device::Cpu).unwrap();
        let (a, b, energy) = factor(&wt, WeightLayout::OutIn, 2).unwrap();
        assert!((energy - 1.0).abs() < 1e-9);
        let back: Vec<f32> = b
            .matmul(&a)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(back.iter().zip(&w).all(|(x, y)| (x - y).abs() < 1e-5));
        let (_, _, e1) = factor(&wt, WeightLayout::OutIn, 1).unwrap();
        assert!(e1 < 1.0 && e1 > 0.5);
    }
}
