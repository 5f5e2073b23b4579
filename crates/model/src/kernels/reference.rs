//! The same maths as the fused kernels, built only from candle's basic differentiable ops.
//!
//! Used on devices without a fused kernel (CUDA) and by the tests as the reference the fused
//! kernels must match. Slow on CPU; every op here has a backward in candle.

use candle_core::{D, DType, Tensor};

use super::linear::WeightLayout;

const GELU_C: f64 = 0.797_884_560_802_865_4; // sqrt(2 / pi)

/// GELU, tanh approximation (GPT-2's `gelu_new`).
pub fn gelu(x: &Tensor) -> candle_core::Result<Tensor> {
    let inner = ((x + x.powf(3.0)?.affine(0.044_715, 0.0)?)? * GELU_C)?;
    (x * (inner.tanh()? + 1.0)?)? * 0.5
}

/// Layer norm over the last dimension.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let xhat = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
    xhat.broadcast_mul(w)?.broadcast_add(b)
}

/// Softmax over the last dimension.
pub fn softmax(x: &Tensor) -> candle_core::Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// Causal multi-head self-attention on packed `qkv` `[B, T, 3D]`, returning `[B, T, D]`.
pub fn causal_attention(qkv: &Tensor, n_head: usize) -> candle_core::Result<Tensor> {
    let (b, t, d3) = qkv.dims3()?;
    let d = d3 / 3;
    let hd = d / n_head;
    let split = |i: usize| -> candle_core::Result<Tensor> {
        qkv.narrow(2, i * d, d)?
            .reshape((b, t, n_head, hd))?
            .transpose(1, 2)?
            .contiguous()
    };
    let (q, k, v) = (split(0)?, split(1)?, split(2)?);
    let scores = (q.matmul(&k.t()?.contiguous()?)? / (hd as f64).sqrt())?;
    let mask: Vec<u8> = (0..t)
        .flat_map(|i| (0..t).map(move |j| u8::from(j <= i)))
        .collect();
    let mask = Tensor::from_vec(mask, (t, t), qkv.device())?.broadcast_as(scores.shape())?;
    let neg =
        Tensor::full(f32::NEG_INFINITY, scores.shape(), qkv.device())?.to_dtype(scores.dtype())?;
    let p = softmax(&mask.where_cond(&scores, &neg)?)?;
    p.matmul(&v)?.transpose(1, 2)?.reshape((b, t, d))
}

/// Per-row cross-entropy of `logits` `[N, V]` against `targets` `[N]` (u32).
pub fn cross_entropy_rows(logits: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let logp = shifted.broadcast_sub(&lse)?;
    let t = targets.to_dtype(DType::U32)?.unsqueeze(1)?;
    logp.gather(&t, 1)?.squeeze(1)?.neg()
}

/// `x @ W' (+ b)` for a 2-D `x`, with `W'` read according to `layout`.
pub fn linear(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    layout: WeightLayout,
) -> candle_core::Result<Tensor> {
    let y = match layout {
        WeightLayout::InOut => x.matmul(w)?,
        WeightLayout::OutIn => x.matmul(&w.t()?)?,
    };
    match b {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}
