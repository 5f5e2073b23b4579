//! Softmax cross-entropy per row in one pass, without materialising the softmax; the backward
//! is `(softmax - onehot) * g` in one pass.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{Real, contiguous, rows_per_task, unsupported};

/// `-log softmax(logits)[target]` for each row of `logits` `[N, V]`; `targets` `[N]` integer
/// ids below `V`. Returns `[N]`.
pub fn cross_entropy_rows(logits: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
    let (n, _) = logits.dims2()?;
    if targets.dims1()? != n {
        candle_core::bail!("cross-entropy: {n} rows but {} targets", targets.dims1()?);
    }
    let targets = targets.to_dtype(DType::U32)?;
    if logits.device().is_cpu() {
        logits
            .contiguous()?
            .apply_op2(&targets.contiguous()?, CrossEntropy)
    } else {
        super::reference::cross_entropy_rows(logits, &targets)
    }
}

fn lse<T: Real>(row: &[T]) -> T {
    let max = row.iter().fold(T::neg_infinity(), |m, &v| m.max(v));
    let s: T = row.iter().map(|&v| (v - max).exp()).sum();
    max + s.ln()
}

fn check(t: &[u32], v: usize) -> candle_core::Result<()> {
    match t.iter().find(|&&t| t as usize >= v) {
        Some(bad) => candle_core::bail!("cross-entropy: target {bad} out of range for {v} classes"),
        None => Ok(()),
    }
}

pub(crate) fn fwd<T: Real>(x: &[T], t: &[u32], v: usize) -> candle_core::Result<Vec<T>> {
    check(t, v)?;
    Ok(x.par_chunks(v)
        .zip(t.par_iter())
        .map(|(row, &t)| lse(row) - row[t as usize])
        .collect())
}

pub(crate) fn bwd<T: Real>(x: &[T], t: &[u32], g: &[T], v: usize) -> candle_core::Result<Vec<T>> {
    let mut dx = vec![T::ZERO; x.len()];
    bwd_into(x, t, g, v, &mut dx)?;
    Ok(dx)
}

/// [`bwd`] into `dx` (same length as `x`, every element overwritten).
pub(crate) fn bwd_into<T: Real>(
    x: &[T],
    t: &[u32],
    g: &[T],
    v: usize,
    dx: &mut [T],
) -> candle_core::Result<()> {
    check(t, v)?;
    if x.len() != t.len() * v || dx.len() != x.len() || g.len() != t.len() {
        candle_core::bail!(
            "cross-entropy backward: buffers do not match {} rows of {v}",
            t.len()
        );
    }
    let per = rows_per_task(t.len(), v);
    dx.par_chunks_mut(per * v)
        .zip(
            x.par_chunks(per * v)
                .zip(t.par_chunks(per).zip(g.par_chunks(per))),
        )
        .for_each(|(dx, (x, (t, g)))| {
            for (((dx, x), &t), &g) in dx.chunks_mut(v).zip(x.chunks(v)).zip(t).zip(g) {
                let l = lse(x);
                for (d, &xv) in dx.iter_mut().zip(x) {
                    *d = (xv - l).exp() * g;
                }
                dx[t as usize] = dx[t as usize] - g;
            }
        });
    Ok(())
}

struct CrossEntropy;

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "cohort-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, v) = l1.shape().dims2()?;
        let name = self.name();
        let CpuStorage::U32(t) = s2 else {
            return Err(unsupported(name, s2));
        };
        let t = contiguous(t, l2, name)?;
        let out = match s1 {
            CpuStorage::F32(x) => CpuStorage::F32(fwd(contiguous(x, l1, name)?, t, v)?),
            CpuStorage::F64(x) => CpuStorage::F64(fwd(contiguous(x, l1, name)?, t, v)?),
            s => return Err(unsupported(name, s)),
        };
        Ok((out, Shape::from(n)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        t: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((
            Some(x.apply_op3_no_bwd(t, &g.contiguous()?, &CrossEntropyBwd)?),
            None,
        ))
    }
}

struct CrossEntropyBwd;

impl CustomOp3 for CrossEntropyBwd {
    fn name(&self) -> &'static str {
        "cohort-cross-entropy-bwd"
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
        let (_, v) = l1.shape().dims2()?;
        let name = self.name();
        let CpuStorage::U32(t) = s2 else {
            return Err(unsupported(name, s2));
        };
        let t = contiguous(t, l2, name)?;
        let out = match (s1, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(g)) => CpuStorage::F32(bwd(
                contiguous(x, l1, name)?,
                t,
                contiguous(g, l3, name)?,
                v,
            )?),
            (CpuStorage::F64(x), CpuStorage::F64(g)) => CpuStorage::F64(bwd(
                contiguous(x, l1, name)?,
                t,
                contiguous(g, l3, name)?,
                v,
            )?),
            (s, _) => return Err(unsupported(name, s)),
        };
        Ok((out, l1.shape().clone()))
    }
}
