//! A key/value cache for generation: the keys and values of every position already seen, per
//! layer, so that each new token costs one position's work instead of re-running the window.

use candle_core::{D, Tensor};

use crate::Result;

/// Keys and values `[B, past, H * hd]` of each layer (heads side by side, after RoPE for the
/// Llama family and after repeating grouped heads), and how many positions they hold.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

impl KvCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Positions cached so far (the position of the next token).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.layers.clear();
        self.len = 0;
    }

    /// Appends layer `layer`'s new keys and values `[B, T, H * hd]` and returns all of them.
    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        if self.layers.len() <= layer {
            self.layers.resize(layer + 1, None);
        }
        let kv = match self.layers[layer].take() {
            Some((pk, pv)) => (Tensor::cat(&[&pk, k], 1)?, Tensor::cat(&[&pv, v], 1)?),
            None => (k.clone(), v.clone()),
        };
        self.layers[layer] = Some(kv.clone());
        Ok(kv)
    }

    /// Records that `t` more positions were appended to every layer.
    pub(crate) fn advance(&mut self, t: usize) {
        self.len += t;
    }
}

/// Causal attention of new queries `q` `[B, T, H * hd]` (at positions `past..past + T`) over
/// all keys and values `k`, `v` `[B, past + T, H * hd]`; returns `[B, T, H * hd]`. Basic candle
/// ops: inference only (no backward), any device.
pub(crate) fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    n_head: usize,
    past: usize,
) -> Result<Tensor> {
    let (b, t, width) = q.dims3()?;
    let total = k.dim(1)?;
    let hd = width / n_head;
    let heads = |x: &Tensor, len: usize| -> Result<Tensor> {
        Ok(x.reshape((b, len, n_head, hd))?
            .transpose(1, 2)?
            .contiguous()?)
    };
    let (q, k, v) = (heads(q, t)?, heads(k, total)?, heads(v, total)?);
    let scale = 1.0 / (hd as f64).sqrt();
    let s = (q.matmul(&k.t()?.contiguous()?)? * scale)?; // [B, H, T, total]
    // Query i (position past + i) sees keys 0..=past + i.
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| {
            (0..total).map(move |j| {
                if j <= past + i {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    let mask = Tensor::from_vec(mask, (t, total), q.device())?.to_dtype(s.dtype())?;
    let s = s.broadcast_add(&mask)?;
    let max = s.max_keepdim(D::Minus1)?;
    let e = s.broadcast_sub(&max)?.exp()?;
    let p = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
    let o = p.matmul(&v)?; // [B, H, T, hd]
    Ok(o.transpose(1, 2)?.contiguous()?.reshape((b, t, width))?)
}
