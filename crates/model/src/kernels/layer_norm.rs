//! Layer norm over the last dimension, fused forward and backward (candle's own has no
//! backward). The backward recomputes each row's mean and variance rather than storing them.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{Real, contiguous, rows_per_task, unsupported};

/// `(x - mean) / sqrt(var + eps) * w + b` over the last dimension of `x`.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    if x.device().is_cpu() {
        x.contiguous()?
            .apply_op3(&w.contiguous()?, &b.contiguous()?, LayerNorm { eps })
    } else {
        super::reference::layer_norm(x, w, b, eps)
    }
}

#[derive(Debug, Clone, Copy)]
struct LayerNorm {
    eps: f64,
}

fn stats<T: Real>(x: &[T], eps: f64) -> (T, T) {
    let n = T::from_f64(x.len() as f64);
    let mean = x.iter().copied().sum::<T>() / n;
    let var = x.iter().map(|&v| (v - mean) * (v - mean)).sum::<T>() / n;
    (mean, T::ONE / (var + T::from_f64(eps)).sqrt())
}

pub(crate) fn fwd<T: Real>(x: &[T], w: &[T], b: &[T], eps: f64) -> Vec<T> {
    let mut y = vec![T::ZERO; x.len()];
    fwd_into(x, w, b, eps, &mut y);
    y
}

/// [`fwd`] into `y` (same length as `x`, every element overwritten).
pub(crate) fn fwd_into<T: Real>(x: &[T], w: &[T], b: &[T], eps: f64, y: &mut [T]) {
    let d = w.len();
    let per = rows_per_task(x.len() / d.max(1), d) * d;
    y.par_chunks_mut(per)
        .zip(x.par_chunks(per))
        .for_each(|(y, x)| {
            for (y, x) in y.chunks_mut(d).zip(x.chunks(d)) {
                let (mean, rstd) = stats(x, eps);
                for i in 0..d {
                    y[i] = (x[i] - mean) * rstd * w[i] + b[i];
                }
            }
        });
}

/// Returns `[dx (N*D), dw (D), db (D)]` packed in one buffer.
pub(crate) fn bwd<T: Real>(x: &[T], w: &[T], g: &[T], eps: f64) -> Vec<T> {
    let d = w.len();
    let mut out = vec![T::ZERO; x.len() + 2 * d];
    let (dx, dwdb) = out.split_at_mut(x.len());
    bwd_acc(x, w, g, eps, dx, dwdb);
    out
}

/// The backward of [`fwd`]: adds the input gradient into `dx` (so a residual gradient already
/// there is kept) and writes `[dw (D), db (D)]` into `dwdb`.
pub(crate) fn bwd_acc<T: Real>(x: &[T], w: &[T], g: &[T], eps: f64, dx: &mut [T], dwdb: &mut [T]) {
    let d = w.len();
    let n_rows = x.len() / d.max(1);
    let per = rows_per_task(n_rows, d) * d;
    let partials: Vec<Vec<T>> = dx
        .par_chunks_mut(per)
        .zip(x.par_chunks(per).zip(g.par_chunks(per)))
        .map(|(dx, (x, g))| {
            let mut acc = vec![T::ZERO; 2 * d];
            let inv_d = T::ONE / T::from_f64(d as f64);
            for ((dx, x), g) in dx.chunks_mut(d).zip(x.chunks(d)).zip(g.chunks(d)) {
                let (mean, rstd) = stats(x, eps);
                let mut s1 = T::ZERO; // sum(dxhat)
                let mut s2 = T::ZERO; // sum(dxhat * xhat)
                for i in 0..d {
                    let xhat = (x[i] - mean) * rstd;
                    let dxhat = g[i] * w[i];
                    s1 += dxhat;
                    s2 += dxhat * xhat;
                    acc[i] += g[i] * xhat;
                    acc[d + i] += g[i];
                }
                for i in 0..d {
                    let xhat = (x[i] - mean) * rstd;
                    dx[i] += rstd * (g[i] * w[i] - inv_d * s1 - xhat * inv_d * s2);
                }
            }
            acc
        })
        .collect();
    dwdb.iter_mut().for_each(|v| *v = T::ZERO);
    for p in partials {
        for (t, v) in dwdb.iter_mut().zip(p) {
            *t += v;
        }
    }
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "cohort-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let n = self.name();
        let d = l1.dims().last().copied().unwrap_or(0);
        if l2.shape().elem_count() != d || l3.shape().elem_count() != d {
            candle_core::bail!("{n}: weight and bias must have {d} elements");
        }
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(w), CpuStorage::F32(b)) => CpuStorage::F32(fwd(
                contiguous(x, l1, n)?,
                contiguous(w, l2, n)?,
                contiguous(b, l3, n)?,
                self.eps,
            )),
            (CpuStorage::F64(x), CpuStorage::F64(w), CpuStorage::F64(b)) => CpuStorage::F64(fwd(
                contiguous(x, l1, n)?,
                contiguous(w, l2, n)?,
                contiguous(b, l3, n)?,
                self.eps,
            )),
            (s, _, _) => return Err(unsupported(n, s)),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let packed = x.apply_op3_no_bwd(w, &g.contiguous()?, &LayerNormBwd { eps: self.eps })?;
        let (n, d) = (x.elem_count(), w.elem_count());
        let dx = packed.narrow(0, 0, n)?.reshape(x.shape())?;
        let dw = packed.narrow(0, n, d)?.reshape(w.shape())?;
        let db = packed.narrow(0, n + d, d)?.reshape(b.shape())?;
        Ok((
            x.track_op().then_some(dx),
            w.track_op().then_some(dw),
            b.track_op().then_some(db),
        ))
    }
}

struct LayerNormBwd {
    eps: f64,
}

impl CustomOp3 for LayerNormBwd {
    fn name(&self) -> &'static str {
        "cohort-layer-norm-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let n = self.name();
        let len = l1.shape().elem_count() + 2 * l2.shape().elem_count();
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(w), CpuStorage::F32(g)) => CpuStorage::F32(bwd(
                contiguous(x, l1, n)?,
                contiguous(w, l2, n)?,
                contiguous(g, l3, n)?,
                self.eps,
            )),
            (CpuStorage::F64(x), CpuStorage::F64(w), CpuStorage::F64(g)) => CpuStorage::F64(bwd(
                contiguous(x, l1, n)?,
                contiguous(w, l2, n)?,
                contiguous(g, l3, n)?,
                self.eps,
            )),
            (s, _, _) => return Err(unsupported(n, s)),
        };
        Ok((out, Shape::from(len)))
    }
}
