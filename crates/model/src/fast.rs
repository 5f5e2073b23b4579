//! A hand-written forward and backward pass of the GPT decoder on CPU (f32) that bypasses
//! candle's autograd for training.
//!
//! candle's backward allocates a zero tensor and adds into it for every gradient of every
//! node, runs its element-wise ops on a spinning thread pool of its own beside rayon's, and
//! computes weight gradients of frozen weights. On a 2-core machine that overhead was larger
//! than the arithmetic. This path runs the same fused kernels on plain buffers, keeps the
//! activations it needs, and writes each gradient once; frozen weights get no gradient work.
//! Its gradients are checked against candle's autograd (itself checked against finite
//! differences) by the tests. Used by [`crate::train::Trainer`] when the model is a [`Gpt`]
//! on the CPU in f32 without SVD-factored layers; everything else goes through autograd.

use std::collections::HashMap;

use candle_core::{DType, Tensor};

use crate::gpt::Gpt;
use crate::kernels::gemm::{MatMut, MatRef, matmul};
use crate::kernels::linear::WeightLayout;
use crate::kernels::{attention, cross_entropy, gelu, layer_norm, threads};
use crate::model::{LanguageModel, LinearInfo};
use crate::{Result, lora};

/// Whether [`loss_and_grads`] handles this model.
pub fn supported(m: &Gpt) -> bool {
    let p = m.params();
    m.device().is_cpu()
        && m.weights().lowrank.is_empty()
        && p.iter().all(|p| p.var.dtype() == DType::F32)
        && p.get(crate::classify::SCORE).is_none()
}

struct Ctx<'a> {
    m: &'a Gpt,
    w: HashMap<&'a str, Vec<f32>>,
    grads: HashMap<String, Vec<f32>>,
    n: usize,
}

fn to_vec(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}

fn rows(data: &[f32], r: usize, c: usize) -> MatRef<'_, f32> {
    MatRef::rows(data, 0, r, c, c)
}

impl<'a> Ctx<'a> {
    fn w(&self, name: &str) -> &[f32] {
        self.w.get(name).map(Vec::as_slice).unwrap_or(&[])
    }

    fn trainable(&self, name: &str) -> bool {
        self.m.params().get(name).is_some_and(|p| p.trainable)
    }

    fn add_grad(&mut self, name: &str, g: Vec<f32>) {
        match self.grads.get_mut(name) {
            Some(acc) => acc.iter_mut().zip(g).for_each(|(a, b)| *a += b),
            None => {
                self.grads.insert(name.to_string(), g);
            }
        }
    }

    fn lora(&self, path: &str) -> Option<(String, String, f32, usize)> {
        let l = self.m.weights().lora.as_ref()?;
        l.is_active(path).then(|| {
            (
                lora::a_name(path),
                lora::b_name(path),
                l.config.scale() as f32,
                l.config.r,
            )
        })
    }

    /// `y = x W' + b (+ s (x A^T) B^T)`; returns y and the adapter's `x A^T`.
    fn lin_fwd(&self, l: &LinearInfo, x: &[f32]) -> Result<(Vec<f32>, Vec<f32>)> {
        let (n, din, dout) = (self.n, l.d_in, l.d_out);
        let w = self.w(&format!("{}.weight", l.path));
        let mut y = vec![0f32; n * dout];
        let accumulate = if l.bias {
            let b = self.w(&format!("{}.bias", l.path));
            y.chunks_mut(dout).for_each(|r| r.copy_from_slice(b));
            true
        } else {
            false
        };
        let wv = match l.layout {
            WeightLayout::InOut => rows(w, din, dout),
            WeightLayout::OutIn => rows(w, dout, din).t(),
        };
        matmul(
            MatMut::rows(&mut y, 0, n, dout, dout),
            rows(x, n, din),
            wv,
            1.0,
            accumulate,
            threads(),
        )?;
        let mut u = Vec::new();
        if let Some((a, b, s, r)) = self.lora(&l.path) {
            u = vec![0f32; n * r];
            matmul(
                MatMut::rows(&mut u, 0, n, r, r),
                rows(x, n, din),
                rows(self.w(&a), r, din).t(),
                1.0,
                false,
                threads(),
            )?;
            matmul(
                MatMut::rows(&mut y, 0, n, dout, dout),
                rows(&u, n, r),
                rows(self.w(&b), dout, r).t(),
                s,
                true,
                threads(),
            )?;
        }
        Ok((y, u))
    }

    /// Backward of [`Ctx::lin_fwd`]: records weight, bias and adapter gradients (trainable
    /// ones only) and returns `dx`.
    fn lin_bwd(&mut self, l: &LinearInfo, x: &[f32], u: &[f32], dy: &[f32]) -> Result<Vec<f32>> {
        let (n, din, dout) = (self.n, l.d_in, l.d_out);
        let wname = format!("{}.weight", l.path);
        let mut dx = vec![0f32; n * din];
        {
            let w = self.w(&wname);
            let wt = match l.layout {
                WeightLayout::InOut => rows(w, din, dout).t(),
                WeightLayout::OutIn => rows(w, dout, din),
            };
            matmul(
                MatMut::rows(&mut dx, 0, n, din, din),
                rows(dy, n, dout),
                wt,
                1.0,
                false,
                threads(),
            )?;
        }
        if self.trainable(&wname) {
            let mut dw = vec![0f32; din * dout];
            match l.layout {
                WeightLayout::InOut => matmul(
                    MatMut::rows(&mut dw, 0, din, dout, dout),
                    rows(x, n, din).t(),
                    rows(dy, n, dout),
                    1.0,
                    false,
                    threads(),
                )?,
                WeightLayout::OutIn => matmul(
                    MatMut::rows(&mut dw, 0, dout, din, din),
                    rows(dy, n, dout).t(),
                    rows(x, n, din),
                    1.0,
                    false,
                    threads(),
                )?,
            }
            self.add_grad(&wname, dw);
        }
        let bname = format!("{}.bias", l.path);
        if l.bias && self.trainable(&bname) {
            let mut db = vec![0f32; dout];
            for r in dy.chunks(dout) {
                db.iter_mut().zip(r).for_each(|(a, b)| *a += b);
            }
            self.add_grad(&bname, db);
        }
        if let Some((a, b, s, r)) = self.lora(&l.path) {
            // dB = s dy^T u, du = s dy B, dA = du^T x, dx += du A.
            let mut db = vec![0f32; dout * r];
            matmul(
                MatMut::rows(&mut db, 0, dout, r, r),
                rows(dy, n, dout).t(),
                rows(u, n, r),
                s,
                false,
                threads(),
            )?;
            let mut du = vec![0f32; n * r];
            matmul(
                MatMut::rows(&mut du, 0, n, r, r),
                rows(dy, n, dout),
                rows(self.w(&b), dout, r),
                s,
                false,
                threads(),
            )?;
            let mut da = vec![0f32; r * din];
            matmul(
                MatMut::rows(&mut da, 0, r, din, din),
                rows(&du, n, r).t(),
                rows(x, n, din),
                1.0,
                false,
                threads(),
            )?;
            matmul(
                MatMut::rows(&mut dx, 0, n, din, din),
                rows(&du, n, r),
                rows(self.w(&a), r, din),
                1.0,
                true,
                threads(),
            )?;
            if self.trainable(&b) {
                self.add_grad(&b, db);
            }
            if self.trainable(&a) {
                self.add_grad(&a, da);
            }
        }
        Ok(dx)
    }

    fn ln_fwd(&self, x: &[f32], name: &str) -> Vec<f32> {
        let eps = self.m.config.layer_norm_epsilon;
        layer_norm::fwd(
            x,
            self.w(&format!("{name}.weight")),
            self.w(&format!("{name}.bias")),
            eps,
        )
    }

    /// Adds the layer norm's input gradient into `dx` and records its parameter gradients.
    fn ln_bwd(&mut self, x: &[f32], name: &str, dy: &[f32], dx: &mut [f32]) {
        let eps = self.m.config.layer_norm_epsilon;
        let (wn, bn) = (format!("{name}.weight"), format!("{name}.bias"));
        let packed = layer_norm::bwd(x, self.w(&wn), dy, eps);
        let d = self.m.config.n_embd;
        let (g, rest) = packed.split_at(x.len());
        dx.iter_mut().zip(g).for_each(|(a, b)| *a += b);
        if self.trainable(&wn) {
            self.add_grad(&wn, rest[..d].to_vec());
        }
        if self.trainable(&bn) {
            self.add_grad(&bn, rest[d..].to_vec());
        }
    }
}

struct Layer {
    x: Vec<f32>,
    ln1: Vec<f32>,
    qkv: Vec<f32>,
    u_qkv: Vec<f32>,
    att: Vec<f32>,
    u_att: Vec<f32>,
    mid: Vec<f32>,
    ln2: Vec<f32>,
    h: Vec<f32>,
    u_fc: Vec<f32>,
    g: Vec<f32>,
    u_proj: Vec<f32>,
}

/// Mean next-token loss of `ids` `[b, t]` against `targets`, and the gradients of the
/// trainable parameters in [`crate::params::Params::trainable`] order.
pub fn loss_and_grads(
    m: &Gpt,
    ids: &[u32],
    targets: &[u32],
    b: usize,
    t: usize,
) -> Result<(f64, Vec<Vec<f32>>)> {
    let c = &m.config;
    let (d, v, nh) = (c.n_embd, c.vocab_size, c.n_head);
    let n = b * t;
    if ids.len() != n || targets.len() != n || t > c.n_positions {
        return Err(crate::Error::Data(format!(
            "batch of {b} x {t} does not match {} ids, {} targets, context {}",
            ids.len(),
            targets.len(),
            c.n_positions
        )));
    }
    if let Some(bad) = ids.iter().chain(targets).find(|&&i| i as usize >= v) {
        return Err(crate::Error::Tokenizer(format!(
            "token id {bad} out of range for vocabulary {v}"
        )));
    }
    let mut w = HashMap::new();
    for p in m.params().iter() {
        w.insert(p.name.as_str(), to_vec(p.var.as_tensor())?);
    }
    let mut cx = Ctx {
        m,
        w,
        grads: HashMap::new(),
        n,
    };
    let lins = Gpt::linears(c);

    // Forward.
    let mut x = vec![0f32; n * d];
    {
        let (wte, wpe) = (
            cx.w("transformer.wte.weight"),
            cx.w("transformer.wpe.weight"),
        );
        for (i, row) in x.chunks_mut(d).enumerate() {
            let (tok, pos) = (ids[i] as usize, i % t);
            for (k, r) in row.iter_mut().enumerate() {
                *r = wte[tok * d + k] + wpe[pos * d + k];
            }
        }
    }
    let mut layers = Vec::with_capacity(c.n_layer);
    for (i, l) in lins.chunks(4).enumerate() {
        let p = format!("transformer.h.{i}");
        let ln1 = cx.ln_fwd(&x, &format!("{p}.ln_1"));
        let (qkv, u_qkv) = cx.lin_fwd(&l[0], &ln1)?;
        let att = attention::fwd(&qkv, b, t, d, nh)?;
        let (proj, u_att) = cx.lin_fwd(&l[1], &att)?;
        let mid: Vec<f32> = x.iter().zip(&proj).map(|(a, b)| a + b).collect();
        let ln2 = cx.ln_fwd(&mid, &format!("{p}.ln_2"));
        let (h, u_fc) = cx.lin_fwd(&l[2], &ln2)?;
        let g = gelu::fwd(&h);
        let (out, u_proj) = cx.lin_fwd(&l[3], &g)?;
        let next: Vec<f32> = mid.iter().zip(&out).map(|(a, b)| a + b).collect();
        layers.push(Layer {
            x: std::mem::replace(&mut x, next),
            ln1,
            qkv,
            u_qkv,
            att,
            u_att,
            mid,
            ln2,
            h,
            u_fc,
            g,
            u_proj,
        });
    }
    let lnf = cx.ln_fwd(&x, "transformer.ln_f");
    let mut logits = vec![0f32; n * v];
    matmul(
        MatMut::rows(&mut logits, 0, n, v, v),
        rows(&lnf, n, d),
        rows(cx.w("transformer.wte.weight"), v, d).t(),
        1.0,
        false,
        threads(),
    )?;
    let losses = cross_entropy::fwd(&logits, targets, v)?;
    let loss = losses.iter().map(|&l| f64::from(l)).sum::<f64>() / n as f64;

    // Backward.
    let dlogits = cross_entropy::bwd(&logits, targets, &vec![1.0 / n as f32; n], v)?;
    drop(logits);
    let mut dlnf = vec![0f32; n * d];
    matmul(
        MatMut::rows(&mut dlnf, 0, n, d, d),
        rows(&dlogits, n, v),
        rows(cx.w("transformer.wte.weight"), v, d),
        1.0,
        false,
        threads(),
    )?;
    let wte_trainable = cx.trainable("transformer.wte.weight");
    if wte_trainable {
        let mut dwte = vec![0f32; v * d];
        matmul(
            MatMut::rows(&mut dwte, 0, v, d, d),
            rows(&dlogits, n, v).t(),
            rows(&lnf, n, d),
            1.0,
            false,
            threads(),
        )?;
        cx.add_grad("transformer.wte.weight", dwte);
    }
    let mut dx = vec![0f32; n * d];
    cx.ln_bwd(&x, "transformer.ln_f", &dlnf, &mut dx);
    for (i, (l, s)) in lins.chunks(4).zip(layers.iter()).enumerate().rev() {
        let p = format!("transformer.h.{i}");
        // x_{i+1} = mid + proj(gelu(fc(ln2(mid)))).
        let dg = cx.lin_bwd(&l[3], &s.g, &s.u_proj, &dx)?;
        let dh = gelu::bwd(&s.h, &dg);
        let dln2 = cx.lin_bwd(&l[2], &s.ln2, &s.u_fc, &dh)?;
        cx.ln_bwd(&s.mid, &format!("{p}.ln_2"), &dln2, &mut dx);
        // mid = x + c_proj(attn(c_attn(ln1(x)))).
        let datt = cx.lin_bwd(&l[1], &s.att, &s.u_att, &dx)?;
        let dqkv = attention::bwd(&s.qkv, &datt, b, t, d, nh)?;
        let dln1 = cx.lin_bwd(&l[0], &s.ln1, &s.u_qkv, &dqkv)?;
        cx.ln_bwd(&s.x, &format!("{p}.ln_1"), &dln1, &mut dx);
    }
    if wte_trainable {
        let mut g = vec![0f32; v * d];
        for (i, row) in dx.chunks(d).enumerate() {
            let tok = ids[i] as usize;
            g[tok * d..(tok + 1) * d]
                .iter_mut()
                .zip(row)
                .for_each(|(a, b)| *a += b);
        }
        cx.add_grad("transformer.wte.weight", g);
    }
    if cx.trainable("transformer.wpe.weight") {
        let mut g = vec![0f32; c.n_positions * d];
        for (i, row) in dx.chunks(d).enumerate() {
            let pos = i % t;
            g[pos * d..(pos + 1) * d]
                .iter_mut()
                .zip(row)
                .for_each(|(a, b)| *a += b);
        }
        cx.add_grad("transformer.wpe.weight", g);
    }
    let grads = m
        .params()
        .trainable()
        .map(|p| {
            cx.grads
                .remove(&p.name)
                .unwrap_or_else(|| vec![0f32; p.var.elem_count()])
        })
        .collect();
    Ok((loss, grads))
}
