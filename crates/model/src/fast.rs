//! A hand-written forward and backward pass of the GPT decoder (here) and of the Llama family
//! ([`llama`]) on CPU (f32) that bypasses candle's autograd for training.
//!
//! candle's backward allocates a zero tensor and adds into it for every gradient of every
//! node, runs its element-wise ops on a spinning thread pool of its own beside rayon's, and
//! computes weight gradients of frozen weights. On a 2-core machine that overhead was larger
//! than the arithmetic. This path runs the same fused kernels on plain buffers, keeps the
//! activations it needs, and writes each gradient once; frozen weights get no gradient work.
//! Its gradients are checked against candle's autograd (itself checked against finite
//! differences) by the tests.
//!
//! The weights are read in place from the parameters' storage (no copy) or, for a base loaded
//! with [`Gpt::load_mapped`], from the memory-mapped checkpoint ([`crate::mapped`]); the activation
//! buffers come from a per-thread pool that keeps them from one step to the next: fresh
//! multi-megabyte buffers every step cost page faults and zeroing (10% of a step's CPU time
//! under `perf`). The pool holds about one step's activations (~150 MB for the reference model
//! at batch 16); [`release_buffers`] gives them back. Used by [`crate::train::Trainer`] when the
//! model is a [`Gpt`] or a [`crate::llama::Llama`] on the CPU in f32 without SVD-factored layers
//! or a classification head; everything else goes through autograd.

use std::cell::RefCell;
use std::collections::HashMap;

use candle_core::{CpuStorage, DType, Storage};
use rayon::prelude::*;

use crate::config::GptConfig;
use crate::gpt::Gpt;
use crate::kernels::gemm::{MatMut, MatRef, matmul};
use crate::kernels::linear::WeightLayout;
use crate::kernels::{attention, cross_entropy, gelu, layer_norm, rows_per_task, threads};
use crate::model::{LanguageModel, LinearInfo};
use crate::{Result, lora};

pub mod llama;

/// Whether the hand-written pass handles this model's current state (the architecture is
/// the caller's business: [`Gpt`] here, [`crate::llama::Llama`] in [`llama`]).
pub fn supported(m: &dyn LanguageModel) -> bool {
    let p = m.params();
    // Layers factored by SVD run as their two factors, frozen only (the pass has no
    // gradients for trainable factors).
    let frozen = |name: String| p.get(&name).is_some_and(|p| !p.trainable);
    m.device().is_cpu()
        && m.weights()
            .lowrank
            .keys()
            .all(|path| frozen(crate::svd::a_name(path)) && frozen(crate::svd::b_name(path)))
        && p.iter().all(|p| p.var.dtype() == DType::F32)
        && p.get(crate::classify::SCORE).is_none()
}

/// Reusable `f32` buffers (best fit by capacity).
#[derive(Default)]
struct Pool {
    free: Vec<Vec<f32>>,
}

impl Pool {
    /// A buffer of `len` elements with unspecified (stale but initialised) contents: for
    /// outputs whose every element the caller overwrites.
    fn scratch(&mut self, len: usize) -> Vec<f32> {
        // A buffer of exactly `len` elements (a step asks for the same sizes every time, so
        // from the second step on there is one), else a fresh zeroed allocation, whose pages
        // the threads that first write them fault in, in parallel. Never a longer buffer cut
        // (its capacity would sit unused) or a shorter one grown (a serial memset on this
        // thread).
        match self.free.iter().rposition(|v| v.len() == len) {
            Some(i) => self.free.swap_remove(i),
            None => vec![0.0; len],
        }
    }

    /// A zeroed buffer of `len` elements.
    fn zeros(&mut self, len: usize) -> Vec<f32> {
        let mut v = self.scratch(len);
        v.par_chunks_mut(1 << 15).for_each(|c| c.fill(0.0));
        v
    }

    fn give(&mut self, v: Vec<f32>) {
        if v.capacity() > 0 {
            self.free.push(v);
        }
    }
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool::default());
}

/// Frees the activation buffers this thread keeps between training steps (they are
/// re-allocated by the next step).
pub fn release_buffers() {
    POOL.with(|p| p.borrow_mut().free = Vec::new());
}

/// Gives gradient buffers (from [`loss_and_grads`], once used) back to this thread's pool, for
/// the next step's gradients to be written into instead of freshly allocated (and faulted in).
/// The trainer does this after each optimiser step that took the hand-written path.
pub fn recycle(grads: Vec<Vec<f32>>) {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        for g in grads {
            p.give(g);
        }
    });
}

/// Bytes of activation buffers this thread keeps between training steps.
pub fn retained_bytes() -> usize {
    POOL.with(|p| {
        p.borrow()
            .free
            .iter()
            .map(|v| v.capacity() * std::mem::size_of::<f32>())
            .sum()
    })
}

struct Ctx<'a> {
    m: &'a dyn LanguageModel,
    w: HashMap<&'a str, &'a [f32]>,
    grads: HashMap<String, Vec<f32>>,
    pool: Pool,
    /// Rows (tokens) of the batch.
    n: usize,
    /// Tokens per sequence: the batch is `n / t` sequences of `t` rows.
    t: usize,
    /// Width of the hidden states.
    d: usize,
    /// The normalisation's epsilon (layer norm for the GPT, RMSNorm for Llama).
    eps: f64,
    /// When the batch is some sequences of a larger batch (a verifier's recomputation,
    /// [`stages::forward_rows`]): their indices in it, for the dropout masks.
    rows: Option<Vec<usize>>,
}

/// `dst = (accumulate ? dst : 0) + alpha * lhs @ rhs` for row-major `dst` and `lhs`, one
/// sequence (`t` rows) at a time, each product on one thread, the sequences in parallel.
///
/// For the adapter's thin products (rank `r` columns or inner size). The matrix kernel picks
/// its method by the product's shape, and for thin products a row's result then depends on
/// how many rows were multiplied with it (measured: `x Aᵀ` of 48 rows against 384 differ in
/// the last bit). Cut into sequences, every row is computed in a product of the same shape
/// whatever the batch, so a verifier recomputing some sequences of a stage call
/// ([`stages::forward_rows`]) gets the server's bits.
fn per_sequence(
    dst: &mut [f32],
    lhs: &[f32],
    rhs: MatRef<'_, f32>,
    t: usize,
    alpha: f32,
    accumulate: bool,
) -> Result<()> {
    let (k, cols) = (rhs.rows, rhs.cols);
    if t == 0
        || k == 0
        || cols == 0
        || !dst.len().is_multiple_of(t * cols)
        || lhs.len() / k != dst.len() / cols
        || !lhs.len().is_multiple_of(k)
    {
        return Err(crate::Error::Data(format!(
            "a product of {t} rows by [{k}, {cols}]"
        )));
    }
    dst.par_chunks_mut(t * cols)
        .zip(lhs.par_chunks(t * k))
        .try_for_each(|(d, l)| {
            let rows_here = d.len() / cols;
            matmul(
                MatMut::rows(d, 0, rows_here, cols, cols),
                rows(l, rows_here, k),
                rhs,
                alpha,
                accumulate,
                1,
            )
        })?;
    Ok(())
}

/// Sums of the columns of row-major `x` with `cols` columns, over fixed row chunks in parallel
/// and then in chunk order (deterministic for any thread count).
fn column_sums(pool: &mut Pool, x: &[f32], cols: usize) -> Vec<f32> {
    let per = rows_per_task(x.len() / cols.max(1), cols) * cols;
    let partials: Vec<Vec<f32>> = x
        .par_chunks(per.max(1))
        .map(|c| {
            let mut acc = vec![0f32; cols];
            for r in c.chunks(cols) {
                acc.iter_mut().zip(r).for_each(|(a, b)| *a += b);
            }
            acc
        })
        .collect();
    let mut out = pool.zeros(cols);
    for p in partials {
        out.iter_mut().zip(p).for_each(|(a, b)| *a += b);
    }
    out
}

fn rows(data: &[f32], r: usize, c: usize) -> MatRef<'_, f32> {
    MatRef::rows(data, 0, r, c, c)
}

impl<'a> Ctx<'a> {
    fn w(&self, name: &str) -> &'a [f32] {
        self.w.get(name).copied().unwrap_or(&[])
    }

    fn trainable(&self, name: &str) -> bool {
        self.m.params().get(name).is_some_and(|p| p.trainable)
    }

    fn add_grad(&mut self, name: &str, g: Vec<f32>) {
        match self.grads.get_mut(name) {
            Some(acc) => {
                acc.iter_mut().zip(&g).for_each(|(a, b)| *a += b);
                self.pool.give(g);
            }
            None => {
                self.grads.insert(name.to_string(), g);
            }
        }
    }

    /// Adds row `i` of `dx` (`[n, d]`) into row `row_of(i)` of a zeroed `[rows, d]` gradient
    /// (an embedding table's) and records it under `name`.
    fn scatter_grad(
        &mut self,
        name: &str,
        rows: usize,
        dx: &[f32],
        row_of: impl Fn(usize) -> usize,
    ) {
        let d = self.d;
        let mut g = self.pool.zeros(rows * d);
        for (i, row) in dx.chunks(d).enumerate() {
            let r = row_of(i);
            g[r * d..(r + 1) * d]
                .iter_mut()
                .zip(row)
                .for_each(|(a, b)| *a += b);
        }
        self.add_grad(name, g);
    }

    /// The recorded gradients in [`crate::params::Params::trainable`] order (zeros for a
    /// trainable parameter that got none).
    fn take_grads(&mut self) -> Vec<Vec<f32>> {
        let m = self.m;
        m.params()
            .trainable()
            .map(|p| {
                self.grads
                    .remove(&p.name)
                    .unwrap_or_else(|| self.pool.zeros(p.var.elem_count()))
            })
            .collect()
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

    /// The adapter's dropout multipliers for module `path` (empty without dropout).
    fn mask(&self, path: &str, d_in: usize) -> Vec<f32> {
        let lora = self.m.weights().lora.as_ref();
        match &self.rows {
            None => lora.and_then(|l| l.dropout(path, self.n * d_in)),
            Some(rows) => {
                let t = self.n / rows.len().max(1);
                lora.and_then(|l| l.dropout_rows(path, t * d_in, rows))
            }
        }
        .unwrap_or_default()
    }

    /// `x ⊙ mask` into a pooled buffer.
    fn masked(&mut self, x: &[f32], mask: &[f32]) -> Vec<f32> {
        let mut y = self.pool.scratch(x.len());
        y.iter_mut()
            .zip(x.iter().zip(mask))
            .for_each(|(y, (a, b))| *y = a * b);
        y
    }

    /// `y = x W' + b (+ s (drop(x) A^T) B^T)`; returns y, the adapter's `drop(x) A^T` and its
    /// dropout multipliers (empty when there is no adapter or no dropout).
    fn lin_fwd(&mut self, l: &LinearInfo, x: &[f32]) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        let (n, din, dout) = (self.n, l.d_in, l.d_out);
        let mut y = self.pool.scratch(n * dout);
        let accumulate = if l.bias {
            let b = self.w(&format!("{}.bias", l.path));
            let per = rows_per_task(n, dout) * dout;
            y.par_chunks_mut(per)
                .for_each(|c| c.chunks_mut(dout).for_each(|r| r.copy_from_slice(b)));
            true
        } else {
            false
        };
        if let Some(&k) = self.m.weights().lowrank.get(&l.path) {
            // Factored by SVD: x Aᵀ, then Bᵀ (A [k, d_in], B [d_out, k]), one sequence at a
            // time so that a row's bits do not depend on the batch (see `per_sequence`).
            let t = self.t;
            let mut h = self.pool.scratch(n * k);
            per_sequence(
                &mut h,
                x,
                rows(self.w(&crate::svd::a_name(&l.path)), k, din).t(),
                t,
                1.0,
                false,
            )?;
            per_sequence(
                &mut y,
                &h,
                rows(self.w(&crate::svd::b_name(&l.path)), dout, k).t(),
                t,
                1.0,
                accumulate,
            )?;
            self.pool.give(h);
        } else {
            let w = self.w(&format!("{}.weight", l.path));
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
        }
        let (mut u, mut mask) = (Vec::new(), Vec::new());
        if let Some((a, b, s, r)) = self.lora(&l.path) {
            mask = self.mask(&l.path, din);
            let xd = (!mask.is_empty()).then(|| self.masked(x, &mask));
            u = self.pool.scratch(n * r);
            let t = self.t;
            per_sequence(
                &mut u,
                xd.as_deref().unwrap_or(x),
                rows(self.w(&a), r, din).t(),
                t,
                1.0,
                false,
            )?;
            if let Some(xd) = xd {
                self.pool.give(xd);
            }
            per_sequence(&mut y, &u, rows(self.w(&b), dout, r).t(), t, s, true)?;
        }
        Ok((y, u, mask))
    }

    /// Backward of [`Ctx::lin_fwd`]: records weight, bias and adapter gradients (trainable
    /// ones only) and returns `dx`.
    fn lin_bwd(
        &mut self,
        l: &LinearInfo,
        x: &[f32],
        (u, mask): (&[f32], &[f32]),
        dy: &[f32],
    ) -> Result<Vec<f32>> {
        let (n, din, dout) = (self.n, l.d_in, l.d_out);
        let wname = format!("{}.weight", l.path);
        let mut dx = self.pool.scratch(n * din);
        if let Some(&k) = self.m.weights().lowrank.get(&l.path) {
            // dx = (dy B) A for frozen factors.
            let mut h = self.pool.scratch(n * k);
            matmul(
                MatMut::rows(&mut h, 0, n, k, k),
                rows(dy, n, dout),
                rows(self.w(&crate::svd::b_name(&l.path)), dout, k),
                1.0,
                false,
                threads(),
            )?;
            matmul(
                MatMut::rows(&mut dx, 0, n, din, din),
                rows(&h, n, k),
                rows(self.w(&crate::svd::a_name(&l.path)), k, din),
                1.0,
                false,
                threads(),
            )?;
            self.pool.give(h);
        } else {
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
            let mut dw = self.pool.scratch(din * dout);
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
            let db = column_sums(&mut self.pool, dy, dout);
            self.add_grad(&bname, db);
        }
        if let Some((a, b, s, r)) = self.lora(&l.path) {
            // dB = s dy^T u, du = s dy B, dA = du^T x, dx += du A.
            let mut db = self.pool.scratch(dout * r);
            matmul(
                MatMut::rows(&mut db, 0, dout, r, r),
                rows(dy, n, dout).t(),
                rows(u, n, r),
                s,
                false,
                threads(),
            )?;
            let mut du = self.pool.scratch(n * r);
            matmul(
                MatMut::rows(&mut du, 0, n, r, r),
                rows(dy, n, dout),
                rows(self.w(&b), dout, r),
                s,
                false,
                threads(),
            )?;
            // With dropout: dA = du^T (x ⊙ m), dx += (du A) ⊙ m.
            let xd = (!mask.is_empty()).then(|| self.masked(x, mask));
            let mut da = self.pool.scratch(r * din);
            matmul(
                MatMut::rows(&mut da, 0, r, din, din),
                rows(&du, n, r).t(),
                rows(xd.as_deref().unwrap_or(x), n, din),
                1.0,
                false,
                threads(),
            )?;
            if let Some(xd) = xd {
                self.pool.give(xd);
            }
            if mask.is_empty() {
                matmul(
                    MatMut::rows(&mut dx, 0, n, din, din),
                    rows(&du, n, r),
                    rows(self.w(&a), r, din),
                    1.0,
                    true,
                    threads(),
                )?;
            } else {
                let mut t = self.pool.scratch(n * din);
                matmul(
                    MatMut::rows(&mut t, 0, n, din, din),
                    rows(&du, n, r),
                    rows(self.w(&a), r, din),
                    1.0,
                    false,
                    threads(),
                )?;
                dx.iter_mut()
                    .zip(t.iter().zip(mask))
                    .for_each(|(d, (t, m))| *d += t * m);
                self.pool.give(t);
            }
            self.pool.give(du);
            if self.trainable(&b) {
                self.add_grad(&b, db);
            }
            if self.trainable(&a) {
                self.add_grad(&a, da);
            }
        }
        Ok(dx)
    }

    fn ln_fwd(&mut self, x: &[f32], name: &str) -> Vec<f32> {
        let eps = self.eps;
        let mut y = self.pool.scratch(x.len());
        layer_norm::fwd_into(
            x,
            self.w(&format!("{name}.weight")),
            self.w(&format!("{name}.bias")),
            eps,
            &mut y,
        );
        y
    }

    /// Adds the layer norm's input gradient into `dx` and records its parameter gradients.
    fn ln_bwd(&mut self, x: &[f32], name: &str, dy: &[f32], dx: &mut [f32]) {
        let eps = self.eps;
        let (wn, bn) = (format!("{name}.weight"), format!("{name}.bias"));
        let d = self.d;
        let mut dwdb = self.pool.scratch(2 * d);
        layer_norm::bwd_acc(x, self.w(&wn), dy, eps, dx, &mut dwdb);
        for (name, part) in [(&wn, &dwdb[..d]), (&bn, &dwdb[d..])] {
            if self.trainable(name) {
                let mut g = self.pool.scratch(d);
                g.copy_from_slice(part);
                self.add_grad(name, g);
            }
        }
        self.pool.give(dwdb);
    }

    /// Token plus position embeddings of `ids` (rows of `t` positions) into a pooled buffer.
    fn embed(&mut self, ids: &[u32], t: usize) -> Vec<f32> {
        let d = self.d;
        let mut x = self.pool.scratch(ids.len() * d);
        let (wte, wpe) = (
            self.w("transformer.wte.weight"),
            self.w("transformer.wpe.weight"),
        );
        for (i, row) in x.chunks_mut(d).enumerate() {
            let (tok, pos) = (ids[i] as usize, i % t);
            for (k, r) in row.iter_mut().enumerate() {
                *r = wte[tok * d + k] + wpe[pos * d + k];
            }
        }
        x
    }

    /// [`Ctx::lin_fwd`]'s output alone (the adapter's intermediates go back to the pool).
    fn lin_fwd_eval(&mut self, l: &LinearInfo, x: &[f32]) -> Result<Vec<f32>> {
        let (y, u, mask) = self.lin_fwd(l, x)?;
        self.pool.give(u);
        self.pool.give(mask);
        Ok(y)
    }

    /// `a + b` element-wise into a pooled buffer.
    fn add(&mut self, a: &[f32], b: &[f32]) -> Vec<f32> {
        let mut y = self.pool.scratch(a.len());
        y.iter_mut()
            .zip(a.iter().zip(b))
            .for_each(|(y, (a, b))| *y = a + b);
        y
    }
}

/// A layer's saved activations; `u_*` are the adapters' `drop(x) A^T`, `m_*` their dropout
/// multipliers.
struct Layer {
    x: Vec<f32>,
    ln1: Vec<f32>,
    qkv: Vec<f32>,
    u_qkv: Vec<f32>,
    m_qkv: Vec<f32>,
    /// Attention probabilities `[B, H, T, T]`.
    probs: Vec<f32>,
    att: Vec<f32>,
    u_att: Vec<f32>,
    m_att: Vec<f32>,
    mid: Vec<f32>,
    ln2: Vec<f32>,
    h: Vec<f32>,
    u_fc: Vec<f32>,
    m_fc: Vec<f32>,
    g: Vec<f32>,
    u_proj: Vec<f32>,
    m_proj: Vec<f32>,
}

impl Layer {
    fn recycle(self, pool: &mut Pool) {
        for v in [
            self.x,
            self.ln1,
            self.qkv,
            self.u_qkv,
            self.att,
            self.u_att,
            self.mid,
            self.ln2,
            self.h,
            self.u_fc,
            self.g,
            self.u_proj,
            self.m_qkv,
            self.m_att,
            self.m_fc,
            self.m_proj,
            self.probs,
        ] {
            pool.give(v);
        }
    }
}

/// Calls `f` with every weight as a slice: the parameters' storage (under read locks, so the
/// weights are used where they are) and the mapped frozen weights, read in place from the
/// mapping.
fn with_weights<R>(
    m: &dyn LanguageModel,
    f: impl for<'x> FnOnce(HashMap<&'x str, &'x [f32]>) -> Result<R>,
) -> Result<R> {
    let guards: Vec<_> = m
        .params()
        .iter()
        .map(|p| {
            let (s, l) = p.var.as_tensor().storage_and_layout();
            (p.name.as_str(), s, l.contiguous_offsets())
        })
        .collect();
    let mut w = HashMap::new();
    for (name, s, offsets) in &guards {
        match (&**s, offsets) {
            (Storage::Cpu(CpuStorage::F32(data)), Some((a, e))) => {
                w.insert(*name, &data[*a..*e]);
            }
            _ => {
                return Err(crate::Error::Data(format!(
                    "parameter {name} is not a contiguous f32 CPU tensor"
                )));
            }
        }
    }
    if let Some(fr) = &m.weights().frozen {
        for name in fr.names() {
            let data = fr.slice(name).ok_or_else(|| {
                crate::Error::Data(format!("mapped weight {name} cannot be read"))
            })?;
            w.entry(name).or_insert(data);
        }
    }
    f(w)
}

fn check_batch(
    m: &dyn LanguageModel,
    ids: &[u32],
    targets: &[u32],
    b: usize,
    t: usize,
) -> Result<()> {
    let (n, v) = (b * t, m.vocab_size());
    let targets_ok = targets.is_empty() || targets.len() == n;
    if ids.len() != n || !targets_ok || t > m.max_context() {
        return Err(crate::Error::Data(format!(
            "batch of {b} x {t} does not match {} ids, {} targets, context {}",
            ids.len(),
            targets.len(),
            m.max_context()
        )));
    }
    if let Some(bad) = ids.iter().chain(targets).find(|&&i| i as usize >= v) {
        return Err(crate::Error::Tokenizer(format!(
            "token id {bad} out of range for vocabulary {v}"
        )));
    }
    Ok(())
}

/// A token tensor `[b, t]` as `(b, t, ids)`.
fn ids_of(ids: &candle_core::Tensor) -> Result<(usize, usize, Vec<u32>)> {
    let (b, t) = ids.dims2()?;
    Ok((
        b,
        t,
        ids.to_dtype(DType::U32)?.flatten_all()?.to_vec1::<u32>()?,
    ))
}

/// [`LanguageModel::fast_loss_and_grads`] for a model whose hand-written pass is `pass`
/// (`None` when [`supported`] says the model's state is not handled).
pub(crate) fn tensor_loss_and_grads<M: LanguageModel>(
    m: &M,
    ids: &candle_core::Tensor,
    targets: &candle_core::Tensor,
    pass: impl FnOnce(&M, &[u32], &[u32], usize, usize) -> Result<(f64, Vec<Vec<f32>>)>,
) -> Option<Result<(f64, Vec<Vec<f32>>)>> {
    if !supported(m) {
        return None;
    }
    let run = || {
        let (b, t, x) = ids_of(ids)?;
        let (_, _, y) = ids_of(targets)?;
        pass(m, &x, &y, b, t)
    };
    Some(run())
}

/// [`LanguageModel::forward_eval`] for a model whose hand-written forward pass is `pass`, with
/// candle's forward pass where [`supported`] says the model's state is not handled.
pub(crate) fn tensor_logits<M: LanguageModel>(
    m: &M,
    ids: &candle_core::Tensor,
    pass: impl FnOnce(&M, &[u32], usize, usize) -> Result<Vec<f32>>,
) -> Result<candle_core::Tensor> {
    if !supported(m) {
        return Ok(m.forward(ids)?.detach());
    }
    let (b, t, x) = ids_of(ids)?;
    let logits = pass(m, &x, b, t)?;
    Ok(candle_core::Tensor::from_vec(
        logits,
        (b, t, m.vocab_size()),
        m.device(),
    )?)
}

/// Runs `f` with this thread's buffer pool and puts back the pool it returns.
fn pooled<R>(f: impl FnOnce(Pool, &mut Pool) -> R) -> R {
    let pool = POOL.with(|p| std::mem::take(&mut *p.borrow_mut()));
    let mut pool_back = Pool::default();
    let r = f(pool, &mut pool_back);
    POOL.with(|p| *p.borrow_mut() = pool_back);
    r
}

/// Logits `[b, t, vocab]` (row-major) of `ids` `[b, t]`: the forward pass of
/// [`loss_and_grads`] without keeping activations, for evaluation. No dropout.
pub fn logits(m: &Gpt, ids: &[u32], b: usize, t: usize) -> Result<Vec<f32>> {
    pooled(|pool, back| forward_only(m, ids, b, t, pool, back))
}

fn forward_only(
    m: &Gpt,
    ids: &[u32],
    b: usize,
    t: usize,
    pool: Pool,
    pool_back: &mut Pool,
) -> Result<Vec<f32>> {
    check_batch(m, ids, &[], b, t)?;
    with_weights(m, |w| forward_with(m, w, ids, (b, t), pool, pool_back))
}

fn forward_with<'a>(
    m: &'a Gpt,
    w: HashMap<&'a str, &'a [f32]>,
    ids: &[u32],
    (b, t): (usize, usize),
    pool: Pool,
    pool_back: &mut Pool,
) -> Result<Vec<f32>> {
    let c = &m.config;
    let (d, nh) = (c.n_embd, c.n_head);
    let n = b * t;
    let mut cx = Ctx {
        m,
        w,
        grads: HashMap::new(),
        pool,
        n,
        t,
        d,
        eps: c.layer_norm_epsilon,
        rows: None,
    };
    let mut x = cx.embed(ids, t);
    for (i, l) in Gpt::linears(c).chunks(4).enumerate() {
        let p = format!("transformer.h.{i}");
        let ln1 = cx.ln_fwd(&x, &format!("{p}.ln_1"));
        let qkv = cx.lin_fwd_eval(&l[0], &ln1)?;
        cx.pool.give(ln1);
        let mut att = cx.pool.scratch(n * d);
        attention::fwd_into(&qkv, b, t, d, nh, &mut att, None)?;
        cx.pool.give(qkv);
        let proj = cx.lin_fwd_eval(&l[1], &att)?;
        cx.pool.give(att);
        let mid = cx.add(&x, &proj);
        cx.pool.give(proj);
        cx.pool.give(x);
        let ln2 = cx.ln_fwd(&mid, &format!("{p}.ln_2"));
        let h = cx.lin_fwd_eval(&l[2], &ln2)?;
        cx.pool.give(ln2);
        let mut g = cx.pool.scratch(h.len());
        gelu::fwd_into(&h, &mut g);
        cx.pool.give(h);
        let out = cx.lin_fwd_eval(&l[3], &g)?;
        cx.pool.give(g);
        x = cx.add(&mid, &out);
        cx.pool.give(out);
        cx.pool.give(mid);
    }
    let logits = tied_logits(&mut cx, &x)?;
    cx.pool.give(x);
    *pool_back = std::mem::take(&mut cx.pool);
    Ok(logits)
}

/// The GPT's head on the last layer's output `x`: the final norm, then the tied embedding.
/// The logits leave the pool: they become the caller's.
fn tied_logits(cx: &mut Ctx<'_>, x: &[f32]) -> Result<Vec<f32>> {
    let (n, d) = (cx.n, cx.d);
    let v = cx.m.vocab_size();
    let lnf = cx.ln_fwd(x, "transformer.ln_f");
    let mut logits = vec![0f32; n * v];
    matmul(
        MatMut::rows(&mut logits, 0, n, v, v),
        rows(&lnf, n, d),
        rows(cx.w("transformer.wte.weight"), v, d).t(),
        1.0,
        false,
        threads(),
    )?;
    cx.pool.give(lnf);
    Ok(logits)
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
    pooled(|pool, back| run(m, ids, targets, b, t, pool, back))
}

fn run(
    m: &Gpt,
    ids: &[u32],
    targets: &[u32],
    b: usize,
    t: usize,
    pool: Pool,
    pool_back: &mut Pool,
) -> Result<(f64, Vec<Vec<f32>>)> {
    check_batch(m, ids, targets, b, t)?;
    with_weights(m, |w| run_with(m, w, ids, targets, (b, t), pool, pool_back))
}

fn run_with<'a>(
    m: &'a Gpt,
    w: HashMap<&'a str, &'a [f32]>,
    ids: &[u32],
    targets: &[u32],
    (b, t): (usize, usize),
    pool: Pool,
    pool_back: &mut Pool,
) -> Result<(f64, Vec<Vec<f32>>)> {
    let c = &m.config;
    let mut cx = Ctx {
        m,
        w,
        grads: HashMap::new(),
        pool,
        n: b * t,
        t,
        d: c.n_embd,
        eps: c.layer_norm_epsilon,
        rows: None,
    };
    // Forward.
    let x = cx.embed(ids, t);
    let (x, layers) = layers_fwd(&mut cx, c, 0..c.n_layer, x, (b, t))?;
    // The head: loss and the gradient of the last layer's output.
    let (loss, mut dx) = head_fwd_bwd(&mut cx, x, targets)?;
    // Backward.
    layers_bwd(&mut cx, c, 0..c.n_layer, layers, &mut dx, (b, t))?;
    embed_bwd(&mut cx, c, ids, t, dx);
    let grads = cx.take_grads();
    *pool_back = std::mem::take(&mut cx.pool);
    Ok((loss, grads))
}

/// A model split into stages (model parallelism, eFedLLM/Petals style): the client holds the
/// embeddings and the head, each stage server a contiguous range of layers. These functions
/// run the hand-written pass piece by piece, each piece the very code [`loss_and_grads`] runs,
/// so that chaining them (client embeddings, each stage forward, the head, each stage
/// backward in reverse, the embeddings' backward) gives the whole pass's loss and gradients
/// bit for bit ([`assemble`] puts the pieces' gradients in the trainable parameters' order).
pub mod stages {
    use super::*;
    use crate::llama::Llama;

    /// Gradients by parameter name (those of one piece's trainable parameters).
    pub type NamedGrads = HashMap<String, Vec<f32>>;

    /// The architectures with stage passes.
    #[derive(Clone, Copy)]
    enum Arch<'a> {
        Gpt(&'a Gpt),
        Llama(&'a Llama),
    }

    impl<'a> Arch<'a> {
        /// `m`'s architecture, if it has stage passes and its state is one the hand-written
        /// pass handles ([`supported`]).
        fn of(m: &'a dyn LanguageModel) -> Result<Self> {
            let arch = match (m.as_gpt(), m.as_llama()) {
                (Some(g), _) => Arch::Gpt(g),
                (None, Some(l)) => Arch::Llama(l),
                (None, None) => {
                    return Err(bad(
                        "stage passes exist for GPT and Llama-family models only".into(),
                    ));
                }
            };
            if !supported(m) {
                return Err(bad(
                    "stage passes run on the CPU in f32, with SVD-factored layers frozen and no \
                     classification head"
                        .into(),
                ));
            }
            Ok(arch)
        }

        fn layers(self) -> usize {
            match self {
                Arch::Gpt(g) => g.config.n_layer,
                Arch::Llama(l) => l.config.num_hidden_layers,
            }
        }

        fn model(self) -> &'a dyn LanguageModel {
            match self {
                Arch::Gpt(g) => g,
                Arch::Llama(l) => l,
            }
        }

        /// Runs `f` on a pass context over this model's weights and this thread's pool.
        fn with_ctx<R>(
            self,
            (b, t): (usize, usize),
            rows: Option<Vec<usize>>,
            f: impl for<'x> FnOnce(&mut Ctx<'x>) -> Result<R>,
        ) -> Result<R> {
            pooled(|pool, back| {
                with_weights(self.model(), |w| {
                    let mut cx = match self {
                        Arch::Gpt(g) => ctx(g, w, pool, (b, t)),
                        Arch::Llama(l) => llama::ctx(l, w, pool, (b, t)),
                    };
                    cx.rows = rows;
                    let r = f(&mut cx);
                    *back = std::mem::take(&mut cx.pool);
                    r
                })
            })
        }
    }

    /// A stage's saved activations, per architecture.
    enum Layers {
        Gpt(Vec<Layer>),
        Llama(Vec<llama::Layer>),
    }

    /// What a stage keeps from its forward for its backward ([`forward`], [`backward`]).
    pub struct Saved {
        range: std::ops::Range<usize>,
        b: usize,
        t: usize,
        layers: Layers,
    }

    impl std::fmt::Debug for Saved {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Saved")
                .field("range", &self.range)
                .field("batch", &(self.b, self.t))
                .field("bytes", &self.bytes())
                .finish()
        }
    }

    impl Saved {
        /// The layers it covers.
        pub fn range(&self) -> std::ops::Range<usize> {
            self.range.clone()
        }

        /// Bytes of activations it holds.
        pub fn bytes(&self) -> usize {
            match &self.layers {
                Layers::Gpt(layers) => layers
                    .iter()
                    .map(|l| {
                        [
                            &l.x, &l.ln1, &l.qkv, &l.u_qkv, &l.m_qkv, &l.probs, &l.att, &l.u_att,
                            &l.m_att, &l.mid, &l.ln2, &l.h, &l.u_fc, &l.m_fc, &l.g, &l.u_proj,
                            &l.m_proj,
                        ]
                        .iter()
                        .map(|v| v.len() * 4)
                        .sum::<usize>()
                    })
                    .sum(),
                Layers::Llama(layers) => layers.iter().map(llama::Layer::bytes).sum(),
            }
        }
    }

    fn bad(what: String) -> crate::Error {
        crate::Error::Data(what)
    }

    /// Refuses a batch shape, layer range or stream that does not fit `m`; `m`'s
    /// architecture.
    fn check<'a>(
        m: &'a dyn LanguageModel,
        range: &std::ops::Range<usize>,
        x: &[f32],
        (b, t): (usize, usize),
    ) -> Result<Arch<'a>> {
        let arch = Arch::of(m)?;
        let (layers, ctx, d) = (arch.layers(), m.max_context(), m.hidden_size());
        if range.is_empty() || range.end > layers {
            return Err(bad(format!(
                "layers {range:?}: the model has layers 0..{layers}"
            )));
        }
        if b == 0 || t == 0 || t > ctx {
            return Err(bad(format!("a batch of {b} x {t} (the context is {ctx})")));
        }
        let want = b.checked_mul(t).and_then(|n| n.checked_mul(d));
        if want != Some(x.len()) {
            return Err(bad(format!(
                "{} values for a stream of {b} x {t} x {d}",
                x.len()
            )));
        }
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            return Err(bad(format!("value {i} of the stream is not finite")));
        }
        Ok(arch)
    }

    /// Every layer of `m` (for the client's pieces, which take the whole stream).
    fn all(m: &dyn LanguageModel) -> Result<std::ops::Range<usize>> {
        Ok(0..Arch::of(m)?.layers())
    }

    fn ctx<'a>(
        m: &'a Gpt,
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
            d: m.config.n_embd,
            eps: m.config.layer_norm_epsilon,
            rows: None,
        }
    }

    /// The client's first piece: the embeddings of `ids` `[b, t]`, the stream entering
    /// layer 0.
    pub fn embed(m: &dyn LanguageModel, ids: &[u32], b: usize, t: usize) -> Result<Vec<f32>> {
        let arch = Arch::of(m)?;
        check_batch(m, ids, &[], b, t)?;
        if b == 0 || t == 0 {
            return Err(bad(format!("a batch of {b} x {t}")));
        }
        arch.with_ctx((b, t), None, |cx| {
            Ok(match arch {
                Arch::Gpt(_) => cx.embed(ids, t),
                Arch::Llama(l) => llama::embed(cx, l, ids),
            })
        })
    }

    /// Layers `range` forward on `x` in `cx`, with the activations their backward needs
    /// when `train`.
    fn layers_forward(
        arch: Arch<'_>,
        cx: &mut Ctx<'_>,
        range: std::ops::Range<usize>,
        x: &[f32],
        (b, t): (usize, usize),
        train: bool,
    ) -> Result<(Vec<f32>, Layers)> {
        let mut input = cx.pool.scratch(x.len());
        input.copy_from_slice(x);
        Ok(match arch {
            Arch::Gpt(g) => {
                let (y, layers) = layers_fwd(cx, &g.config, range, input, (b, t))?;
                (y, Layers::Gpt(layers))
            }
            Arch::Llama(l) => {
                let (y, layers) = llama::layers_fwd(cx, l, range, input, (b, t), train)?;
                (y, Layers::Llama(layers))
            }
        })
    }

    /// A stage's forward: layers `range` on `x`, the stream `[b, t, d]` entering the first
    /// of them; the stream leaving the last, and what the backward needs.
    pub fn forward(
        m: &dyn LanguageModel,
        range: std::ops::Range<usize>,
        x: &[f32],
        b: usize,
        t: usize,
    ) -> Result<(Vec<f32>, Saved)> {
        let arch = check(m, &range, x, (b, t))?;
        arch.with_ctx((b, t), None, |cx| {
            let (y, layers) = layers_forward(arch, cx, range.clone(), x, (b, t), true)?;
            Ok((
                y,
                Saved {
                    range,
                    b,
                    t,
                    layers,
                },
            ))
        })
    }

    /// A verifier's recomputation of some sequences of a stage call: the outputs of rows
    /// `rows` (sorted, distinct, each below `b`) of a `b × t` batch through `range`, given
    /// those rows' inputs `x` (`rows.len() × t × d`). Sequences do not mix in a transformer
    /// layer and every kernel computes a row the same way whatever the other rows are, so these
    /// are, bit for bit, the same rows of [`forward`] on the whole batch (tested), dropout
    /// included: the masks are drawn for the rows' places in the whole batch. Keeps nothing.
    pub fn forward_rows(
        m: &dyn LanguageModel,
        range: std::ops::Range<usize>,
        x: &[f32],
        rows: &[usize],
        b: usize,
        t: usize,
    ) -> Result<Vec<f32>> {
        if rows.is_empty() || rows.windows(2).any(|w| w[0] >= w[1]) || rows[rows.len() - 1] >= b {
            return Err(bad(format!(
                "rows {rows:?} of a batch of {b}: expected sorted, distinct rows below {b}"
            )));
        }
        let n = rows.len();
        let arch = check(m, &range, x, (n, t))?;
        arch.with_ctx((n, t), Some(rows.to_vec()), |cx| {
            // The training forward (the server's), so that the bits are the server's.
            let (y, layers) = layers_forward(arch, cx, range.clone(), x, (n, t), true)?;
            recycle_layers(cx, layers);
            Ok(y)
        })
    }

    fn recycle_layers(cx: &mut Ctx<'_>, layers: Layers) {
        match layers {
            Layers::Gpt(l) => l.into_iter().for_each(|l| l.recycle(&mut cx.pool)),
            Layers::Llama(l) => l.into_iter().for_each(|l| l.recycle(&mut cx.pool)),
        }
    }

    /// The client's head on `x` (the last layer's output): the mean next-token loss against
    /// `targets`, the gradient of `x`, and the head's weight gradients.
    pub fn head(
        m: &dyn LanguageModel,
        x: &[f32],
        targets: &[u32],
        b: usize,
        t: usize,
    ) -> Result<(f64, Vec<f32>, NamedGrads)> {
        check_batch(m, targets, targets, b, t)?;
        let arch = check(m, &all(m)?, x, (b, t))?;
        arch.with_ctx((b, t), None, |cx| {
            let mut input = cx.pool.scratch(x.len());
            input.copy_from_slice(x);
            let (loss, dx) = match arch {
                Arch::Gpt(_) => head_fwd_bwd(cx, input, targets)?,
                Arch::Llama(l) => llama::head_fwd_bwd(cx, l, input, targets)?,
            };
            Ok((loss, dx, std::mem::take(&mut cx.grads)))
        })
    }

    /// The client's head for inference: the logits `[b, t, vocab]` (row-major) of `x`, the
    /// last layer's output (the final norm, then the output embedding).
    pub fn head_logits(m: &dyn LanguageModel, x: &[f32], b: usize, t: usize) -> Result<Vec<f32>> {
        let arch = check(m, &all(m)?, x, (b, t))?;
        arch.with_ctx((b, t), None, |cx| match arch {
            Arch::Gpt(_) => tied_logits(cx, x),
            Arch::Llama(l) => llama::head_logits(cx, l, x),
        })
    }

    /// A stage's backward: `dy`, the gradient of the stream its forward returned, to the
    /// gradient of the stream it was given, and its layers' weight gradients.
    pub fn backward(
        m: &dyn LanguageModel,
        saved: Saved,
        dy: &[f32],
    ) -> Result<(Vec<f32>, NamedGrads)> {
        let (b, t, range) = (saved.b, saved.t, saved.range.clone());
        let arch = check(m, &range, dy, (b, t))?;
        arch.with_ctx((b, t), None, |cx| {
            let mut dx = cx.pool.scratch(dy.len());
            dx.copy_from_slice(dy);
            match (arch, saved.layers) {
                (Arch::Gpt(g), Layers::Gpt(layers)) => {
                    layers_bwd(cx, &g.config, range, layers, &mut dx, (b, t))?;
                }
                (Arch::Llama(l), Layers::Llama(layers)) => {
                    llama::layers_bwd(cx, l, range, layers, &mut dx, (b, t))?;
                }
                (_, layers) => {
                    recycle_layers(cx, layers);
                    return Err(bad(
                        "activations saved by another architecture's forward".into()
                    ));
                }
            }
            Ok((dx, std::mem::take(&mut cx.grads)))
        })
    }

    /// The client's last piece: `dx`, the gradient of the stream entering layer 0, into the
    /// embeddings' gradients, added to `head`'s (the token embedding may be tied to the head).
    pub fn embed_backward(
        m: &dyn LanguageModel,
        ids: &[u32],
        b: usize,
        t: usize,
        dx: &[f32],
        head: NamedGrads,
    ) -> Result<NamedGrads> {
        check_batch(m, ids, &[], b, t)?;
        let arch = check(m, &all(m)?, dx, (b, t))?;
        arch.with_ctx((b, t), None, |cx| {
            cx.grads = head;
            let mut g = cx.pool.scratch(dx.len());
            g.copy_from_slice(dx);
            match arch {
                Arch::Gpt(gpt) => embed_bwd(cx, &gpt.config, ids, t, g),
                Arch::Llama(l) => llama::embed_bwd(cx, l, ids, g),
            }
            Ok(std::mem::take(&mut cx.grads))
        })
    }

    /// The pieces' gradients in the order of `m`'s trainable parameters (zeros for one no
    /// piece computed: a frozen path). A parameter two pieces claim is refused.
    pub fn assemble(m: &dyn LanguageModel, parts: Vec<NamedGrads>) -> Result<Vec<Vec<f32>>> {
        let mut all: NamedGrads = HashMap::new();
        for part in parts {
            for (name, g) in part {
                if all.insert(name.clone(), g).is_some() {
                    return Err(bad(format!("two pieces computed the gradient of {name}")));
                }
            }
        }
        let out: Vec<Vec<f32>> = m
            .params()
            .trainable()
            .map(|p| {
                all.remove(&p.name)
                    .unwrap_or_else(|| vec![0.0; p.var.elem_count()])
            })
            .collect();
        if let Some(name) = all.keys().next() {
            return Err(bad(format!(
                "{name} is no trainable parameter of the model"
            )));
        }
        Ok(out)
    }
}

/// The forward pass of layers `range` on `x` (the residual stream `[b t, d]` entering the
/// first of them): the stream leaving the last, and the activations their backward needs.
fn layers_fwd(
    cx: &mut Ctx<'_>,
    c: &GptConfig,
    range: std::ops::Range<usize>,
    mut x: Vec<f32>,
    (b, t): (usize, usize),
) -> Result<(Vec<f32>, Vec<Layer>)> {
    let (n, d, nh) = (cx.n, cx.d, c.n_head);
    let lins = Gpt::linears(c);
    let mut layers = Vec::with_capacity(range.len());
    for i in range {
        let l = &lins[4 * i..4 * i + 4];
        let p = format!("transformer.h.{i}");
        let ln1 = cx.ln_fwd(&x, &format!("{p}.ln_1"));
        let (qkv, u_qkv, m_qkv) = cx.lin_fwd(&l[0], &ln1)?;
        let mut att = cx.pool.scratch(n * d);
        let mut probs = cx.pool.scratch(b * nh * t * t);
        attention::fwd_into(&qkv, b, t, d, nh, &mut att, Some(&mut probs))?;
        let (proj, u_att, m_att) = cx.lin_fwd(&l[1], &att)?;
        let mid = cx.add(&x, &proj);
        cx.pool.give(proj);
        let ln2 = cx.ln_fwd(&mid, &format!("{p}.ln_2"));
        let (h, u_fc, m_fc) = cx.lin_fwd(&l[2], &ln2)?;
        let mut g = cx.pool.scratch(h.len());
        gelu::fwd_into(&h, &mut g);
        let (out, u_proj, m_proj) = cx.lin_fwd(&l[3], &g)?;
        let next = cx.add(&mid, &out);
        cx.pool.give(out);
        layers.push(Layer {
            x: std::mem::replace(&mut x, next),
            ln1,
            qkv,
            u_qkv,
            m_qkv,
            probs,
            att,
            u_att,
            m_att,
            mid,
            ln2,
            h,
            u_fc,
            m_fc,
            g,
            u_proj,
            m_proj,
        });
    }
    Ok((x, layers))
}

/// The head on `x` (the last layer's output): the final layer norm, the logits (tied to the
/// token embedding), the mean cross-entropy against `targets`, and its backward down to the
/// gradient of `x` (the head's weight gradients go into `cx`).
fn head_fwd_bwd(cx: &mut Ctx<'_>, x: Vec<f32>, targets: &[u32]) -> Result<(f64, Vec<f32>)> {
    let (n, d) = (cx.n, cx.d);
    let v = cx.m.vocab_size();
    let lnf = cx.ln_fwd(&x, "transformer.ln_f");
    let mut logits = cx.pool.scratch(n * v);
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

    // Backward. The logits' buffer becomes their gradient.
    let dlogits = {
        let mut g = cx.pool.scratch(n * v);
        cross_entropy::bwd_into(&logits, targets, &vec![1.0 / n as f32; n], v, &mut g)?;
        cx.pool.give(logits);
        g
    };
    let mut dlnf = cx.pool.scratch(n * d);
    matmul(
        MatMut::rows(&mut dlnf, 0, n, d, d),
        rows(&dlogits, n, v),
        rows(cx.w("transformer.wte.weight"), v, d),
        1.0,
        false,
        threads(),
    )?;
    if cx.trainable("transformer.wte.weight") {
        let mut dwte = cx.pool.scratch(v * d);
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
    cx.pool.give(dlogits);
    let mut dx = cx.pool.zeros(n * d);
    cx.ln_bwd(&x, "transformer.ln_f", &dlnf, &mut dx);
    cx.pool.give(dlnf);
    cx.pool.give(lnf);
    cx.pool.give(x);
    Ok((loss, dx))
}

/// The backward pass of layers `range` (whose forward saved `layers`): `dx`, the gradient of
/// the stream leaving the last of them, becomes the gradient of the stream entering the
/// first; the layers' weight gradients go into `cx`.
fn layers_bwd(
    cx: &mut Ctx<'_>,
    c: &GptConfig,
    range: std::ops::Range<usize>,
    layers: Vec<Layer>,
    dx: &mut [f32],
    (b, t): (usize, usize),
) -> Result<()> {
    let (d, nh) = (cx.d, c.n_head);
    let lins = Gpt::linears(c);
    if layers.len() != range.len() {
        return Err(crate::Error::Data(format!(
            "{} saved layers for layers {range:?}",
            layers.len()
        )));
    }
    for (i, s) in range.zip(layers).rev() {
        let l = &lins[4 * i..4 * i + 4];
        let p = format!("transformer.h.{i}");
        // x_{i+1} = mid + proj(gelu(fc(ln2(mid)))).
        let dg = cx.lin_bwd(&l[3], &s.g, (&s.u_proj, &s.m_proj), dx)?;
        let mut dh = cx.pool.scratch(dg.len());
        gelu::bwd_into(&s.h, &dg, &mut dh);
        cx.pool.give(dg);
        let dln2 = cx.lin_bwd(&l[2], &s.ln2, (&s.u_fc, &s.m_fc), &dh)?;
        cx.pool.give(dh);
        cx.ln_bwd(&s.mid, &format!("{p}.ln_2"), &dln2, dx);
        cx.pool.give(dln2);
        // mid = x + c_proj(attn(c_attn(ln1(x)))).
        let datt = cx.lin_bwd(&l[1], &s.att, (&s.u_att, &s.m_att), dx)?;
        let mut dqkv = cx.pool.scratch(s.qkv.len());
        attention::bwd_into(&s.qkv, &datt, b, t, d, nh, &mut dqkv, Some(&s.probs))?;
        cx.pool.give(datt);
        let dln1 = cx.lin_bwd(&l[0], &s.ln1, (&s.u_qkv, &s.m_qkv), &dqkv)?;
        cx.pool.give(dqkv);
        cx.ln_bwd(&s.x, &format!("{p}.ln_1"), &dln1, dx);
        cx.pool.give(dln1);
        s.recycle(&mut cx.pool);
    }
    Ok(())
}

/// The embeddings' backward: `dx`, the gradient of the stream entering the first layer, into
/// the token and position embeddings' gradients (where trainable).
fn embed_bwd(cx: &mut Ctx<'_>, c: &GptConfig, ids: &[u32], t: usize, dx: Vec<f32>) {
    let v = c.vocab_size;
    if cx.trainable("transformer.wte.weight") {
        cx.scatter_grad("transformer.wte.weight", v, &dx, |i| ids[i] as usize);
    }
    if cx.trainable("transformer.wpe.weight") {
        cx.scatter_grad("transformer.wpe.weight", c.n_positions, &dx, |i| i % t);
    }
    cx.pool.give(dx);
}
