//! Causal multi-head self-attention as one op on the packed `qkv` projection `[B, T, 3D]`.
//!
//! Heads are addressed through strides inside the packed buffer (no split, transpose or
//! contiguous copies), each (batch, head) pair runs its three small matmuls single-threaded,
//! and batches run in parallel, so both cores stay busy on the 128x128 products instead of
//! splitting each one. The backward recomputes the attention probabilities (one extra
//! `Q K^T` per head) instead of keeping `B * H * T * T` floats alive between passes.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::gemm::{MatMut, MatRef, matmul};
use super::{Real, contiguous, unsupported};

/// Causal self-attention of packed `qkv` `[B, T, 3D]` with `n_head` heads; returns `[B, T, D]`.
pub fn causal_attention(qkv: &Tensor, n_head: usize) -> candle_core::Result<Tensor> {
    let (_, _, d3) = qkv.dims3()?;
    if n_head == 0 || !d3.is_multiple_of(3 * n_head) {
        candle_core::bail!("attention: width {d3} is not 3 x n_head ({n_head}) x head_dim");
    }
    if qkv.device().is_cpu() {
        qkv.contiguous()?.apply_op1(Attention { n_head })
    } else {
        super::reference::causal_attention(qkv, n_head)
    }
}

#[derive(Debug, Clone, Copy)]
struct Attention {
    n_head: usize,
}

/// Scores `P = causal_softmax(Q K^T / sqrt(hd))` for head `h` of one batch element, into `p`.
fn probs<T: Real>(
    qkv: &[T],
    t: usize,
    d: usize,
    hd: usize,
    h: usize,
    p: &mut [T],
) -> candle_core::Result<()> {
    let scale = T::from_f64(1.0 / (hd as f64).sqrt());
    let q = MatRef::rows(qkv, h * hd, t, hd, 3 * d);
    let k = MatRef::rows(qkv, d + h * hd, t, hd, 3 * d);
    matmul(MatMut::rows(p, 0, t, t, t), q, k.t(), scale, false, 1)?;
    for i in 0..t {
        let row = &mut p[i * t..(i + 1) * t];
        let mut max = T::neg_infinity();
        for &v in &row[..=i] {
            max = max.max(v);
        }
        let mut sum = T::ZERO;
        for v in &mut row[..=i] {
            *v = (*v - max).exp();
            sum += *v;
        }
        let inv = T::ONE / sum;
        for v in &mut row[..=i] {
            *v = *v * inv;
        }
        for v in &mut row[i + 1..] {
            *v = T::ZERO;
        }
    }
    Ok(())
}

pub(crate) fn fwd<T: Real>(
    qkv: &[T],
    b: usize,
    t: usize,
    d: usize,
    n_head: usize,
) -> candle_core::Result<Vec<T>> {
    let hd = d / n_head;
    let mut out = vec![T::ZERO; b * t * d];
    out.par_chunks_mut(t * d)
        .zip(qkv.par_chunks(t * 3 * d))
        .try_for_each(|(o, x)| -> candle_core::Result<()> {
            let mut p = vec![T::ZERO; t * t];
            for h in 0..n_head {
                probs(x, t, d, hd, h, &mut p)?;
                let v = MatRef::rows(x, 2 * d + h * hd, t, hd, 3 * d);
                matmul(
                    MatMut::rows(o, h * hd, t, hd, d),
                    MatRef::rows(&p, 0, t, t, t),
                    v,
                    T::ONE,
                    false,
                    1,
                )?;
            }
            Ok(())
        })?;
    Ok(out)
}

pub(crate) fn bwd<T: Real>(
    qkv: &[T],
    g: &[T],
    b: usize,
    t: usize,
    d: usize,
    n_head: usize,
) -> candle_core::Result<Vec<T>> {
    let hd = d / n_head;
    let scale = T::from_f64(1.0 / (hd as f64).sqrt());
    let mut dqkv = vec![T::ZERO; b * t * 3 * d];
    dqkv.par_chunks_mut(t * 3 * d)
        .zip(qkv.par_chunks(t * 3 * d).zip(g.par_chunks(t * d)))
        .try_for_each(|(dx, (x, g))| -> candle_core::Result<()> {
            let mut p = vec![T::ZERO; t * t];
            let mut dp = vec![T::ZERO; t * t];
            for h in 0..n_head {
                probs(x, t, d, hd, h, &mut p)?;
                let q = MatRef::rows(x, h * hd, t, hd, 3 * d);
                let k = MatRef::rows(x, d + h * hd, t, hd, 3 * d);
                let v = MatRef::rows(x, 2 * d + h * hd, t, hd, 3 * d);
                let go = MatRef::rows(g, h * hd, t, hd, d);
                let pm = MatRef::rows(&p, 0, t, t, t);
                // dV = P^T dO
                matmul(
                    MatMut::rows(dx, 2 * d + h * hd, t, hd, 3 * d),
                    pm.t(),
                    go,
                    T::ONE,
                    false,
                    1,
                )?;
                // dP = dO V^T
                matmul(
                    MatMut::rows(&mut dp, 0, t, t, t),
                    go,
                    v.t(),
                    T::ONE,
                    false,
                    1,
                )?;
                // dS = P * (dP - rowsum(P * dP)) * scale, on the causal part only.
                for i in 0..t {
                    let pr = &p[i * t..i * t + i + 1];
                    let dr = &mut dp[i * t..(i + 1) * t];
                    let dot: T = pr.iter().zip(dr.iter()).map(|(&a, &b)| a * b).sum();
                    for (dv, &pv) in dr.iter_mut().zip(pr) {
                        *dv = pv * (*dv - dot) * scale;
                    }
                    for dv in &mut dr[i + 1..] {
                        *dv = T::ZERO;
                    }
                }
                let ds = MatRef::rows(&dp, 0, t, t, t);
                // dQ = dS K, dK = dS^T Q
                matmul(
                    MatMut::rows(dx, h * hd, t, hd, 3 * d),
                    ds,
                    k,
                    T::ONE,
                    false,
                    1,
                )?;
                matmul(
                    MatMut::rows(dx, d + h * hd, t, hd, 3 * d),
                    ds.t(),
                    q,
                    T::ONE,
                    false,
                    1,
                )?;
            }
            Ok(())
        })?;
    Ok(dqkv)
}

impl CustomOp1 for Attention {
    fn name(&self) -> &'static str {
        "cohort-causal-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, t, d3) = l.shape().dims3()?;
        let d = d3 / 3;
        let n = self.name();
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(fwd(contiguous(v, l, n)?, b, t, d, self.n_head)?),
            CpuStorage::F64(v) => CpuStorage::F64(fwd(contiguous(v, l, n)?, b, t, d, self.n_head)?),
            s => return Err(unsupported(n, s)),
        };
        Ok((out, Shape::from((b, t, d))))
    }

    fn bwd(&self, qkv: &Tensor, _y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(qkv.apply_op2_no_bwd(
            &g.contiguous()?,
            &AttentionBwd {
                n_head: self.n_head,
            },
        )?))
    }
}

struct AttentionBwd {
    n_head: usize,
}

impl CustomOp2 for AttentionBwd {
    fn name(&self) -> &'static str {
        "cohort-causal-attention-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, t, d3) = l1.shape().dims3()?;
        let d = d3 / 3;
        let n = self.name();
        let out = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(g)) => CpuStorage::F32(bwd(
                contiguous(x, l1, n)?,
                contiguous(g, l2, n)?,
                b,
                t,
                d,
                self.n_head,
            )?),
            (CpuStorage::F64(x), CpuStorage::F64(g)) => CpuStorage::F64(bwd(
                contiguous(x, l1, n)?,
                contiguous(g, l2, n)?,
                b,
                t,
                d,
                self.n_head,
            )?),
            (s, _) => return Err(unsupported(n, s)),
        };
        Ok((out, l1.shape().clone()))
    }
}
