//! The hand-written forward and backward pass of the Llama family (RMSNorm, RoPE, grouped-query
//! attention, SwiGLU; Qwen2's q/k/v biases; tied or separate output embeddings), on the same
//! machinery as the GPT's: weights read in place (from the parameters' storage or a
//! memory-mapped base, see [`Llama::load_mapped`]), pooled activation buffers, fused attention,
//! gradient work only for trainable weights. Checked against candle's autograd by the tests.
//!
//! Grouped-query attention repeats each key/value head for the query heads that share it when
//! packing `[q | k | v]` for the attention kernel, and sums the repeats' gradients back.

use std::collections::HashMap;

use rayon::prelude::*;

use super::{Ctx, Pool, check_batch, pooled, rows, with_weights};
use crate::Result;
use crate::kernels::gemm::{MatMut, matmul};
use crate::kernels::{attention, cross_entropy, rows_per_task, threads};
use crate::llama::Llama;
use crate::model::{LanguageModel, LinearInfo};

/// Mean next-token loss of `ids` `[b, t]` against `targets`, and the gradients of the
/// trainable parameters in [`crate::params::Params::trainable`] order.
pub fn loss_and_grads(
    m: &Llama,
    ids: &[u32],
    targets: &[u32],
    b: usize,
    t: usize,
) -> Result<(f64, Vec<Vec<f32>>)> {
    check_batch(m, ids, targets, b, t)?;
    pooled(|pool, back| {
        with_weights(m, |w| {
            let mut cx = ctx(m, w, pool, (b, t));
            let r = pass(&mut cx, m, ids, Some(targets), (b, t));
            *back = std::mem::take(&mut cx.pool);
            match r? {
                Pass::Train(loss, grads) => Ok((loss, grads)),
                Pass::Logits(_) => unreachable!("targets were given"),
            }
        })
    })
}

/// Logits `[b, t, vocab]` (row-major) of `ids` `[b, t]`, without keeping activations. No
/// dropout.
pub fn logits(m: &Llama, ids: &[u32], b: usize, t: usize) -> Result<Vec<f32>> {
    check_batch(m, ids, &[], b, t)?;
    pooled(|pool, back| {
        with_weights(m, |w| {
            let mut cx = ctx(m, w, pool, (b, t));
            let r = pass(&mut cx, m, ids, None, (b, t));
            *back = std::mem::take(&mut cx.pool);
            match r? {
                Pass::Logits(l) => Ok(l),
                Pass::Train(..) => unreachable!("no targets were given"),
            }
        })
    })
}

pub(super) fn ctx<'a>(
    m: &'a Llama,
    w: HashMap<&'a str, &'a [f32]>,
    pool: Pool,
    (b, t): (usize, usize),
) -> Ctx<'a> {
    Ctx {
        m,
        w,
        grads: HashMap::new(),
        pool,
        n: b * t,
        t,
        d: m.config.hidden_size,
        eps: m.config.rms_norm_eps,
        rows: None,
    }
}

enum Pass {
    Train(f64, Vec<Vec<f32>>),
    Logits(Vec<f32>),
}

/// An adapter's saved intermediates for one linear layer (see [`Ctx::lin_fwd`]).
#[derive(Default)]
struct Saved {
    u: Vec<f32>,
    mask: Vec<f32>,
}

impl Saved {
    fn refs(&self) -> (&[f32], &[f32]) {
        (&self.u, &self.mask)
    }
}

/// A layer's saved activations.
pub(super) struct Layer {
    x: Vec<f32>,
    r1: Vec<f32>,
    q: Saved,
    k: Saved,
    v: Saved,
    /// `[rope(q) | repeat(rope(k)) | repeat(v)]`, `[n, 3 * heads * head_dim]`.
    qkv: Vec<f32>,
    probs: Vec<f32>,
    att: Vec<f32>,
    o: Saved,
    mid: Vec<f32>,
    r2: Vec<f32>,
    g: Vec<f32>,
    gate: Saved,
    u: Vec<f32>,
    up: Saved,
    a: Vec<f32>,
    down: Saved,
}

impl Layer {
    /// Bytes of activations it holds.
    pub(super) fn bytes(&self) -> usize {
        let plain = [
            &self.x,
            &self.r1,
            &self.qkv,
            &self.probs,
            &self.att,
            &self.mid,
            &self.r2,
            &self.g,
            &self.u,
            &self.a,
        ];
        let saved = [
            &self.q, &self.k, &self.v, &self.o, &self.gate, &self.up, &self.down,
        ];
        4 * (plain.iter().map(|v| v.len()).sum::<usize>()
            + saved
                .iter()
                .map(|s| s.u.len() + s.mask.len())
                .sum::<usize>())
    }

    pub(super) fn recycle(self, pool: &mut Pool) {
        for v in [
            self.x, self.r1, self.qkv, self.probs, self.att, self.mid, self.r2, self.g, self.u,
            self.a,
        ] {
            pool.give(v);
        }
        for s in [
            self.q, self.k, self.v, self.o, self.gate, self.up, self.down,
        ] {
            pool.give(s.u);
            pool.give(s.mask);
        }
    }
}

/// Shapes of one pass.
#[derive(Clone, Copy)]
struct Dims {
    t: usize,
    nh: usize,
    nkv: usize,
    hd: usize,
}

impl Dims {
    fn qw(&self) -> usize {
        self.nh * self.hd
    }
    fn kvw(&self) -> usize {
        self.nkv * self.hd
    }
}

/// Packs `[rope(q) | repeat(rope(k)) | repeat(v)]` row by row.
fn pack_qkv(q: &[f32], k: &[f32], v: &[f32], cs: (&[f32], &[f32]), dm: Dims, out: &mut [f32]) {
    let (qw, kvw, hd, rep) = (dm.qw(), dm.kvw(), dm.hd, dm.nh / dm.nkv);
    let (cos, sin) = cs;
    out.par_chunks_mut(3 * qw).enumerate().for_each(|(r, o)| {
        let pos = r % dm.t;
        let (c, s) = (
            &cos[pos * hd..(pos + 1) * hd],
            &sin[pos * hd..(pos + 1) * hd],
        );
        let (oq, rest) = o.split_at_mut(qw);
        let (ok, ov) = rest.split_at_mut(qw);
        for (h, dst) in oq.chunks_mut(hd).enumerate() {
            rope_into(&q[r * qw + h * hd..r * qw + (h + 1) * hd], c, s, dst);
        }
        for (h, dst) in ok.chunks_mut(hd).enumerate() {
            let kh = h / rep;
            rope_into(&k[r * kvw + kh * hd..r * kvw + (kh + 1) * hd], c, s, dst);
        }
        for (h, dst) in ov.chunks_mut(hd).enumerate() {
            let kh = h / rep;
            dst.copy_from_slice(&v[r * kvw + kh * hd..r * kvw + (kh + 1) * hd]);
        }
    });
}

/// `x * cos + rotate_half(x) * sin` for one head (`rotate_half(x) = [-x2, x1]`).
fn rope_into(x: &[f32], cos: &[f32], sin: &[f32], out: &mut [f32]) {
    let half = x.len() / 2;
    for j in 0..half {
        out[j] = x[j] * cos[j] - x[j + half] * sin[j];
        out[j + half] = x[j + half] * cos[j + half] + x[j] * sin[j + half];
    }
}

/// The transpose of [`rope_into`] added into `dx`: `dy * cos + rotate_half^T(dy * sin)`.
fn unrope_add(dy: &[f32], cos: &[f32], sin: &[f32], dx: &mut [f32]) {
    let half = dy.len() / 2;
    for j in 0..half {
        dx[j] += dy[j] * cos[j] + dy[j + half] * sin[j + half];
        dx[j + half] += dy[j + half] * cos[j + half] - dy[j] * sin[j];
    }
}

/// Splits the attention's `dqkv` back into the gradients of the projections' outputs: RoPE
/// transposed for q and k, the repeated key/value heads summed.
fn unpack_dqkv(
    dqkv: &[f32],
    cs: (&[f32], &[f32]),
    dm: Dims,
    (dq, dk, dv): (&mut [f32], &mut [f32], &mut [f32]),
) {
    let (qw, kvw, hd, rep) = (dm.qw(), dm.kvw(), dm.hd, dm.nh / dm.nkv);
    let (cos, sin) = cs;
    dq.par_chunks_mut(qw)
        .zip(dk.par_chunks_mut(kvw).zip(dv.par_chunks_mut(kvw)))
        .enumerate()
        .for_each(|(r, (dq, (dk, dv)))| {
            let pos = r % dm.t;
            let (c, s) = (
                &cos[pos * hd..(pos + 1) * hd],
                &sin[pos * hd..(pos + 1) * hd],
            );
            let g = &dqkv[r * 3 * qw..(r + 1) * 3 * qw];
            dq.fill(0.0);
            dk.fill(0.0);
            dv.fill(0.0);
            for h in 0..dm.nh {
                unrope_add(
                    &g[h * hd..(h + 1) * hd],
                    c,
                    s,
                    &mut dq[h * hd..(h + 1) * hd],
                );
                let kh = h / rep;
                let gk = &g[qw + h * hd..qw + (h + 1) * hd];
                unrope_add(gk, c, s, &mut dk[kh * hd..(kh + 1) * hd]);
                let gv = &g[2 * qw + h * hd..2 * qw + (h + 1) * hd];
                dv[kh * hd..(kh + 1) * hd]
                    .iter_mut()
                    .zip(gv)
                    .for_each(|(a, b)| *a += b);
            }
        });
}

/// `y = x / sqrt(mean(x^2) + eps) * w` over rows of `w.len()`.
fn rms_fwd(x: &[f32], w: &[f32], eps: f64, y: &mut [f32]) {
    let d = w.len();
    let per = rows_per_task(x.len() / d, d) * d;
    y.par_chunks_mut(per)
        .zip(x.par_chunks(per))
        .for_each(|(y, x)| {
            for (y, x) in y.chunks_mut(d).zip(x.chunks(d)) {
                let rstd = rstd(x, eps);
                for j in 0..d {
                    y[j] = x[j] * rstd * w[j];
                }
            }
        });
}

fn rstd(x: &[f32], eps: f64) -> f32 {
    let ms = x.iter().map(|&v| v * v).sum::<f32>() / x.len() as f32;
    1.0 / (ms + eps as f32).sqrt()
}

/// Backward of [`rms_fwd`]: adds `dx` into `dx_acc` and returns `dw` (summed over fixed row
/// chunks in order, so it does not depend on the thread count).
fn rms_bwd(x: &[f32], w: &[f32], eps: f64, dy: &[f32], dx_acc: &mut [f32]) -> Vec<f32> {
    let d = w.len();
    let per = rows_per_task(x.len() / d, d) * d;
    let partials: Vec<Vec<f32>> = dx_acc
        .par_chunks_mut(per)
        .zip(x.par_chunks(per).zip(dy.par_chunks(per)))
        .map(|(dx, (x, dy))| {
            let mut dw = vec![0f32; d];
            for ((dx, x), dy) in dx.chunks_mut(d).zip(x.chunks(d)).zip(dy.chunks(d)) {
                let r = rstd(x, eps);
                // dx = r (w dy - xh mean(w dy xh)), xh = x r; dw += dy xh.
                let mut dot = 0f32;
                for j in 0..d {
                    dot += w[j] * dy[j] * x[j] * r;
                    dw[j] += dy[j] * x[j] * r;
                }
                let mean = dot / d as f32;
                for j in 0..d {
                    dx[j] += r * (w[j] * dy[j] - x[j] * r * mean);
                }
            }
            dw
        })
        .collect();
    let mut dw = vec![0f32; d];
    for p in partials {
        dw.iter_mut().zip(p).for_each(|(a, b)| *a += b);
    }
    dw
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

impl Ctx<'_> {
    fn rms(&mut self, x: &[f32], name: &str) -> Vec<f32> {
        let mut y = self.pool.scratch(x.len());
        rms_fwd(x, self.w(name), self.eps, &mut y);
        y
    }

    /// Adds the RMSNorm's input gradient into `dx` and records its weight's gradient.
    fn rms_back(&mut self, x: &[f32], name: &str, dy: &[f32], dx: &mut [f32]) {
        let dw = rms_bwd(x, self.w(name), self.eps, dy, dx);
        if self.trainable(name) {
            self.add_grad(name, dw);
        }
    }

    fn lin(&mut self, l: &LinearInfo, x: &[f32]) -> Result<(Vec<f32>, Saved)> {
        let (y, u, mask) = self.lin_fwd(l, x)?;
        Ok((y, Saved { u, mask }))
    }

    /// `dst += src`.
    fn acc(dst: &mut [f32], src: &[f32]) {
        let per = 1 << 14;
        dst.par_chunks_mut(per)
            .zip(src.par_chunks(per))
            .for_each(|(d, s)| d.iter_mut().zip(s).for_each(|(a, b)| *a += b));
    }
}

fn pass(
    cx: &mut Ctx<'_>,
    m: &Llama,
    ids: &[u32],
    targets: Option<&[u32]>,
    (b, t): (usize, usize),
) -> Result<Pass> {
    let layers = 0..m.config.num_hidden_layers;
    let x = embed(cx, m, ids);
    let train = targets.is_some();
    let (x, saved) = layers_fwd(cx, m, layers.clone(), x, (b, t), train)?;
    let Some(targets) = targets else {
        let logits = head_logits(cx, m, &x)?;
        cx.pool.give(x);
        return Ok(Pass::Logits(logits));
    };
    let (loss, mut dx) = head_fwd_bwd(cx, m, x, targets)?;
    layers_bwd(cx, m, layers, saved, &mut dx, (b, t))?;
    embed_bwd(cx, m, ids, dx);
    let grads = cx.take_grads();
    Ok(Pass::Train(loss, grads))
}

/// The name of the output embedding (the token embedding when tied).
fn head_name(m: &Llama) -> &'static str {
    if m.config.tie_word_embeddings {
        EMBED
    } else {
        "lm_head.weight"
    }
}

const EMBED: &str = "model.embed_tokens.weight";

/// The token embeddings of `ids` into a pooled buffer: the stream entering layer 0.
pub(super) fn embed(cx: &mut Ctx<'_>, m: &Llama, ids: &[u32]) -> Vec<f32> {
    let h = m.config.hidden_size;
    let mut x = cx.pool.scratch(ids.len() * h);
    let table = cx.w(EMBED);
    x.par_chunks_mut(h)
        .zip(ids.par_iter())
        .for_each(|(row, &id)| {
            row.copy_from_slice(&table[id as usize * h..(id as usize + 1) * h]);
        });
    x
}

/// The forward pass of layers `range` on `x` (the residual stream `[b t, h]` entering the
/// first of them): the stream leaving the last and, when `train`, the activations their
/// backward needs (none otherwise: evaluation).
pub(super) fn layers_fwd(
    cx: &mut Ctx<'_>,
    m: &Llama,
    range: std::ops::Range<usize>,
    mut x: Vec<f32>,
    (b, t): (usize, usize),
    train: bool,
) -> Result<(Vec<f32>, Vec<Layer>)> {
    let c = &m.config;
    let dm = Dims {
        t,
        nh: c.num_attention_heads,
        nkv: c.kv_heads(),
        hd: c.head_dim(),
    };
    let (f, n) = (c.intermediate_size, b * t);
    let qw = dm.qw();
    m.check_len(t)?;
    let (cos, sin) = c.rope()?.tables(t);
    let lins = m.linear_modules();
    let mut layers = Vec::with_capacity(if train { range.len() } else { 0 });
    for i in range {
        let l = &lins[7 * i..7 * i + 7];
        let p = format!("model.layers.{i}");
        let r1 = cx.rms(&x, &format!("{p}.input_layernorm.weight"));
        let (q, sq) = cx.lin(&l[0], &r1)?;
        let (k, sk) = cx.lin(&l[1], &r1)?;
        let (vv, sv) = cx.lin(&l[2], &r1)?;
        let mut qkv = cx.pool.scratch(n * 3 * qw);
        pack_qkv(&q, &k, &vv, (&cos, &sin), dm, &mut qkv);
        for z in [q, k, vv] {
            cx.pool.give(z);
        }
        let mut att = cx.pool.scratch(n * qw);
        let mut probs = if train {
            cx.pool.scratch(b * dm.nh * t * t)
        } else {
            Vec::new()
        };
        attention::fwd_into(
            &qkv,
            b,
            t,
            qw,
            dm.nh,
            &mut att,
            train.then_some(&mut probs[..]),
        )?;
        let (o, so) = cx.lin(&l[3], &att)?;
        let mid = cx.add(&x, &o);
        cx.pool.give(o);
        let r2 = cx.rms(&mid, &format!("{p}.post_attention_layernorm.weight"));
        let (g, sg) = cx.lin(&l[4], &r2)?;
        let (u, su) = cx.lin(&l[5], &r2)?;
        let mut a = cx.pool.scratch(n * f);
        a.par_chunks_mut(1 << 14)
            .zip(g.par_chunks(1 << 14).zip(u.par_chunks(1 << 14)))
            .for_each(|(a, (g, u))| {
                for j in 0..a.len() {
                    a[j] = g[j] * sigmoid(g[j]) * u[j];
                }
            });
        let (dn, sd) = if train {
            cx.lin(&l[6], &a)?
        } else {
            (cx.lin_fwd_eval(&l[6], &a)?, Saved::default())
        };
        let next = cx.add(&mid, &dn);
        cx.pool.give(dn);
        let layer = Layer {
            x: std::mem::replace(&mut x, next),
            r1,
            q: sq,
            k: sk,
            v: sv,
            qkv,
            probs,
            att,
            o: so,
            mid,
            r2,
            g,
            gate: sg,
            u,
            up: su,
            a,
            down: sd,
        };
        if train {
            layers.push(layer);
        } else {
            layer.recycle(&mut cx.pool);
        }
    }
    Ok((x, layers))
}

/// The head for inference: the logits `[b t, vocab]` of `x`, the last layer's output (the
/// final norm, then the output embedding). The logits leave the pool: they become the
/// caller's.
pub(super) fn head_logits(cx: &mut Ctx<'_>, m: &Llama, x: &[f32]) -> Result<Vec<f32>> {
    let (h, v, n) = (m.config.hidden_size, m.config.vocab_size, cx.n);
    let xf = cx.rms(x, "model.norm.weight");
    let mut logits = vec![0f32; n * v];
    matmul(
        MatMut::rows(&mut logits, 0, n, v, v),
        rows(&xf, n, h),
        rows(cx.w(head_name(m)), v, h).t(),
        1.0,
        false,
        threads(),
    )?;
    cx.pool.give(xf);
    Ok(logits)
}

/// The head on `x` (the last layer's output): the final norm, the logits, the mean
/// cross-entropy against `targets`, and its backward down to the gradient of `x` (the head's
/// weight gradients go into `cx`).
pub(super) fn head_fwd_bwd(
    cx: &mut Ctx<'_>,
    m: &Llama,
    x: Vec<f32>,
    targets: &[u32],
) -> Result<(f64, Vec<f32>)> {
    let (h, v, n) = (m.config.hidden_size, m.config.vocab_size, cx.n);
    let head = head_name(m);
    let xf = cx.rms(&x, "model.norm.weight");
    let mut logits = cx.pool.scratch(n * v);
    matmul(
        MatMut::rows(&mut logits, 0, n, v, v),
        rows(&xf, n, h),
        rows(cx.w(head), v, h).t(),
        1.0,
        false,
        threads(),
    )?;
    let losses = cross_entropy::fwd(&logits, targets, v)?;
    let loss = losses.iter().map(|&l| f64::from(l)).sum::<f64>() / n as f64;

    // Backward.
    let mut dlogits = cx.pool.scratch(n * v);
    cross_entropy::bwd_into(&logits, targets, &vec![1.0 / n as f32; n], v, &mut dlogits)?;
    cx.pool.give(logits);
    let mut dxf = cx.pool.scratch(n * h);
    matmul(
        MatMut::rows(&mut dxf, 0, n, h, h),
        rows(&dlogits, n, v),
        rows(cx.w(head), v, h),
        1.0,
        false,
        threads(),
    )?;
    if cx.trainable(head) {
        let mut dw = cx.pool.scratch(v * h);
        matmul(
            MatMut::rows(&mut dw, 0, v, h, h),
            rows(&dlogits, n, v).t(),
            rows(&xf, n, h),
            1.0,
            false,
            threads(),
        )?;
        cx.add_grad(head, dw);
    }
    cx.pool.give(dlogits);
    let mut dx = cx.pool.zeros(n * h);
    cx.rms_back(&x, "model.norm.weight", &dxf, &mut dx);
    for z in [dxf, xf, x] {
        cx.pool.give(z);
    }
    Ok((loss, dx))
}

/// The backward pass of layers `range` (whose forward saved `layers`): `dx`, the gradient of
/// the stream leaving the last of them, becomes the gradient of the stream entering the
/// first; the layers' weight gradients go into `cx`.
pub(super) fn layers_bwd(
    cx: &mut Ctx<'_>,
    m: &Llama,
    range: std::ops::Range<usize>,
    layers: Vec<Layer>,
    dx: &mut [f32],
    (b, t): (usize, usize),
) -> Result<()> {
    let c = &m.config;
    let dm = Dims {
        t,
        nh: c.num_attention_heads,
        nkv: c.kv_heads(),
        hd: c.head_dim(),
    };
    let (f, n) = (c.intermediate_size, b * t);
    let (qw, kvw) = (dm.qw(), dm.kvw());
    if layers.len() != range.len() {
        return Err(crate::Error::Data(format!(
            "{} saved layers for layers {range:?}",
            layers.len()
        )));
    }
    let (cos, sin) = c.rope()?.tables(t);
    let lins = m.linear_modules();
    for (i, s) in range.zip(layers).rev() {
        let l = &lins[7 * i..7 * i + 7];
        let p = format!("model.layers.{i}");
        // x_{i+1} = mid + down(silu(gate(r2)) * up(r2)), r2 = rms(mid).
        let da = cx.lin_bwd(&l[6], &s.a, s.down.refs(), dx)?;
        let (mut dg, mut du) = (cx.pool.scratch(n * f), cx.pool.scratch(n * f));
        dg.par_chunks_mut(1 << 14)
            .zip(du.par_chunks_mut(1 << 14))
            .zip(
                da.par_chunks(1 << 14)
                    .zip(s.g.par_chunks(1 << 14).zip(s.u.par_chunks(1 << 14))),
            )
            .for_each(|((dg, du), (da, (g, u)))| {
                for j in 0..dg.len() {
                    let sg = sigmoid(g[j]);
                    du[j] = da[j] * g[j] * sg;
                    dg[j] = da[j] * u[j] * sg * (1.0 + g[j] * (1.0 - sg));
                }
            });
        cx.pool.give(da);
        let mut dr2 = cx.lin_bwd(&l[4], &s.r2, s.gate.refs(), &dg)?;
        let dr2u = cx.lin_bwd(&l[5], &s.r2, s.up.refs(), &du)?;
        Ctx::acc(&mut dr2, &dr2u);
        for z in [dg, du, dr2u] {
            cx.pool.give(z);
        }
        cx.rms_back(
            &s.mid,
            &format!("{p}.post_attention_layernorm.weight"),
            &dr2,
            dx,
        );
        cx.pool.give(dr2);
        // mid = x + o(attention(rope(q(r1)), rope(k(r1)), v(r1))), r1 = rms(x).
        let datt = cx.lin_bwd(&l[3], &s.att, s.o.refs(), dx)?;
        let mut dqkv = cx.pool.scratch(n * 3 * qw);
        attention::bwd_into(&s.qkv, &datt, b, t, qw, dm.nh, &mut dqkv, Some(&s.probs))?;
        cx.pool.give(datt);
        let (mut dq, mut dk, mut dv) = (
            cx.pool.scratch(n * qw),
            cx.pool.scratch(n * kvw),
            cx.pool.scratch(n * kvw),
        );
        unpack_dqkv(&dqkv, (&cos, &sin), dm, (&mut dq, &mut dk, &mut dv));
        cx.pool.give(dqkv);
        let mut dr1 = cx.lin_bwd(&l[0], &s.r1, s.q.refs(), &dq)?;
        let dr1k = cx.lin_bwd(&l[1], &s.r1, s.k.refs(), &dk)?;
        let dr1v = cx.lin_bwd(&l[2], &s.r1, s.v.refs(), &dv)?;
        Ctx::acc(&mut dr1, &dr1k);
        Ctx::acc(&mut dr1, &dr1v);
        for z in [dq, dk, dv, dr1k, dr1v] {
            cx.pool.give(z);
        }
        cx.rms_back(&s.x, &format!("{p}.input_layernorm.weight"), &dr1, dx);
        cx.pool.give(dr1);
        s.recycle(&mut cx.pool);
    }
    Ok(())
}

/// The embeddings' backward: `dx`, the gradient of the stream entering the first layer, into
/// the token embedding's gradient (where trainable; added to the head's when tied).
pub(super) fn embed_bwd(cx: &mut Ctx<'_>, m: &Llama, ids: &[u32], dx: Vec<f32>) {
    if cx.trainable(EMBED) {
        cx.scatter_grad(EMBED, m.config.vocab_size, &dx, |i| ids[i] as usize);
    }
    cx.pool.give(dx);
}
