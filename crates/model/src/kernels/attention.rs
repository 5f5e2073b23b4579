//! Causal multi-head self-attention as one op on the packed `qkv` projection `[B, T, 3D]`.
//!
//! Heads are addressed through strides inside the packed buffer (no split, transpose or
//! contiguous copies), each (batch, head) pair runs its small matmuls single-threaded, and
//! batches run in parallel, so both cores stay busy on the 128x128 products instead of
//! splitting each one. The products are blocked by 32 rows and touch only the blocks on or
//! below the diagonal (10 of 16 at T = 128), so the causal mask costs no arithmetic. The
//! backward recomputes the attention probabilities (one extra `Q K^T` per head) instead of
//! keeping `B * H * T * T` floats alive between passes.

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

/// Rows (and columns) of the score matrix handled as one block: products touch only the
/// blocks on or below the diagonal, so the masked upper triangle costs no arithmetic.
const BLOCK: usize = 32;

/// The row blocks `(r0, r1)` of a `t`-row causal score matrix.
fn blocks(t: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..t.div_ceil(BLOCK)).map(move |i| (i * BLOCK, ((i + 1) * BLOCK).min(t)))
}

/// Scores `P = causal_softmax(Q K^T / sqrt(hd))` for head `h` of one batch element, into `p`
/// (`[t, t]`, zero above the diagonal).
fn probs<T: Real>(
    qkv: &[T],
    t: usize,
    d: usize,
    hd: usize,
    h: usize,
    p: &mut [T],
) -> candle_core::Result<()> {
    let scale = T::from_f64(1.0 / (hd as f64).sqrt());
    for (r0, r1) in blocks(t) {
        // S[r0..r1, 0..r1] = Q[r0..r1] K[0..r1]^T; columns past r1 are masked anyway.
        let q = MatRef::rows(qkv, r0 * 3 * d + h * hd, r1 - r0, hd, 3 * d);
        let k = MatRef::rows(qkv, d + h * hd, r1, hd, 3 * d);
        matmul(
            MatMut::rows(p, r0 * t, r1 - r0, r1, t),
            q,
            k.t(),
            scale,
            false,
            1,
        )?;
    }
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
    let mut out = vec![T::ZERO; b * t * d];
    fwd_into(qkv, b, t, d, n_head, &mut out, None)?;
    Ok(out)
}

/// [`fwd`] into `out` (`[B, T, D]`, every element overwritten); with `keep`
/// (`[B, H, T, T]`), also the attention probabilities, for [`bwd_into`] to reuse.
pub(crate) fn fwd_into<T: Real>(
    qkv: &[T],
    b: usize,
    t: usize,
    d: usize,
    n_head: usize,
    out: &mut [T],
    keep: Option<&mut [T]>,
) -> candle_core::Result<()> {
    let hd = d / n_head;
    if qkv.len() != b * t * 3 * d || out.len() != b * t * d {
        candle_core::bail!("attention: buffers do not match [{b}, {t}, 3 x {d}]");
    }
    let mut scratch;
    let keep = match keep {
        Some(k) if k.len() == b * n_head * t * t => k,
        Some(_) => {
            candle_core::bail!("attention: probability buffer is not [{b}, {n_head}, {t}, {t}]")
        }
        None => {
            // One batch element's probabilities at a time.
            scratch = vec![T::ZERO; b * n_head * t * t];
            &mut scratch[..]
        }
    };
    out.par_chunks_mut(t * d)
        .zip(
            qkv.par_chunks(t * 3 * d)
                .zip(keep.par_chunks_mut(n_head * t * t)),
        )
        .try_for_each(|(o, (x, pk))| -> candle_core::Result<()> {
            for h in 0..n_head {
                let p = &mut pk[h * t * t..(h + 1) * t * t];
                probs(x, t, d, hd, h, p)?;
                for (r0, r1) in blocks(t) {
                    // O[r0..r1] = P[r0..r1, 0..r1] V[0..r1]
                    matmul(
                        MatMut::rows(o, r0 * d + h * hd, r1 - r0, hd, d),
                        MatRef::rows(p, r0 * t, r1 - r0, r1, t),
                        MatRef::rows(x, 2 * d + h * hd, r1, hd, 3 * d),
                        T::ONE,
                        false,
                        1,
                    )?;
                }
            }
            Ok(())
        })
}

pub(crate) fn bwd<T: Real>(
    qkv: &[T],
    g: &[T],
    b: usize,
    t: usize,
    d: usize,
    n_head: usize,
) -> candle_core::Result<Vec<T>> {
    let mut dqkv = vec![T::ZERO; b * t * 3 * d];
    bwd_into(qkv, g, b, t, d, n_head, &mut dqkv, None)?;
    Ok(dqkv)
}

/// [`bwd`] into `dqkv` (`[B, T, 3D]`, every element overwritten); `kept` are the
/// probabilities [`fwd_into`] kept (`[B, H, T, T]`), else they are recomputed.
#[allow(clippy::too_many_arguments)]
pub(crate) fn bwd_into<T: Real>(
    qkv: &[T],
    g: &[T],
    b: usize,
    t: usize,
    d: usize,
    n_head: usize,
    dqkv: &mut [T],
    kept: Option<&[T]>,
) -> candle_core::Result<()> {
    let hd = d / n_head;
    let scale = T::from_f64(1.0 / (hd as f64).sqrt());
    if qkv.len() != b * t * 3 * d || dqkv.len() != qkv.len() || g.len() != b * t * d {
        candle_core::bail!("attention backward: buffers do not match [{b}, {t}, 3 x {d}]");
    }
    if kept.is_some_and(|k| k.len() != b * n_head * t * t) {
        candle_core::bail!(
            "attention backward: probability buffer is not [{b}, {n_head}, {t}, {t}]"
        );
    }
    let ht = n_head * t * t;
    dqkv.par_chunks_mut(t * 3 * d)
        .zip(qkv.par_chunks(t * 3 * d).zip(g.par_chunks(t * d)))
        .enumerate()
        .try_for_each(|(bi, (dx, (x, g)))| -> candle_core::Result<()> {
            let mut own = Vec::new();
            let mut dp = vec![T::ZERO; t * t];
            for h in 0..n_head {
                let p: &[T] = match kept {
                    Some(k) => &k[bi * ht + h * t * t..bi * ht + (h + 1) * t * t],
                    None => {
                        own.resize(t * t, T::ZERO);
                        probs(x, t, d, hd, h, &mut own)?;
                        &own
                    }
                };
                let (qo, ko, vo) = (h * hd, d + h * hd, 2 * d + h * hd);
                for (c0, c1) in blocks(t) {
                    // dV[c0..c1] = P[c0..t, c0..c1]^T dO[c0..t] (rows above c0 are masked).
                    matmul(
                        MatMut::rows(dx, c0 * 3 * d + vo, c1 - c0, hd, 3 * d),
                        MatRef::rows(p, c0 * t + c0, t - c0, c1 - c0, t).t(),
                        MatRef::rows(g, c0 * d + qo, t - c0, hd, d),
                        T::ONE,
                        false,
                        1,
                    )?;
                }
                for (r0, r1) in blocks(t) {
                    // dP[r0..r1, 0..r1] = dO[r0..r1] V[0..r1]^T
                    matmul(
                        MatMut::rows(&mut dp, r0 * t, r1 - r0, r1, t),
                        MatRef::rows(g, r0 * d + qo, r1 - r0, hd, d),
                        MatRef::rows(x, vo, r1, hd, 3 * d).t(),
                        T::ONE,
                        false,
                        1,
                    )?;
                }
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
                for (r0, r1) in blocks(t) {
                    // dQ[r0..r1] = dS[r0..r1, 0..r1] K[0..r1]
                    matmul(
                        MatMut::rows(dx, r0 * 3 * d + qo, r1 - r0, hd, 3 * d),
                        MatRef::rows(&dp, r0 * t, r1 - r0, r1, t),
                        MatRef::rows(x, ko, r1, hd, 3 * d),
                        T::ONE,
                        false,
                        1,
                    )?;
                    // dK[r0..r1] = dS[r0..t, r0..r1]^T Q[r0..t]
                    matmul(
                        MatMut::rows(dx, r0 * 3 * d + ko, r1 - r0, hd, 3 * d),
                        MatRef::rows(&dp, r0 * t + r0, t - r0, r1 - r0, t).t(),
                        MatRef::rows(x, r0 * 3 * d + qo, t - r0, hd, 3 * d),
                        T::ONE,
                        false,
                        1,
                    )?;
                }
            }
            Ok(())
        })
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
