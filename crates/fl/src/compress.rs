//! Compressed update blobs: what a client sends when the run's `[compression] update` is not
//! `"none"`, and how the coordinator, the validators and the unlearning replay read it back.
//!
//! A compressed update is still a safetensors file, content-addressed like any blob (its
//! SHA-256 is what the client signs and the ledger records), so any safetensors reader opens
//! it. Its `__metadata__` names the codec (`"cohort.codec"`) and the dense tensors it stands
//! for (`"cohort.tensors"`: `[[name, shape], ...]` as JSON, in the delta's flat order); its
//! tensors pack every model tensor together, so that the header costs the same whatever the
//! number of tensors:
//!
//! | codec | tensors |
//! |---|---|
//! | `int8` | `values` I8 `[N]` (every value, flat order), `scales` F32 `[T]` (one per tensor) |
//! | `topk` | `values` F32 `[K]` (the kept values, flat order), and `mask` U8 `[ceil(N/8)]` or `indices` U32 `[K]` |
//! | `topk-int8` | `values` I8 `[K]`, `scales` F32 `[T]`, and `mask` or `indices` |
//! | `lowrank` | `values` F32 `[M]` (per tensor: `U·S` then `V`, or its dense values), `ranks` U16 `[T]` |
//! | `lowrank-int8` | `values` I8 `[M]`, `ranks` U16 `[T]`, `scales` F32 `[F]` (a factor's or a dense tensor's) |
//!
//! `N` is the number of dense values, `T` the number of tensors, `K` the number kept, `M` the
//! number of factor and dense values, `F` the number of factors and dense tensors. Int8
//! values are symmetric per tensor: `scale = max |v| / 127`, `q = round(v / scale)`, decoded
//! `q * scale`. Top-k keeps, in every tensor of `n` values, the `ceil(fraction * n)` largest
//! by magnitude (ties to the lower index); which ones is a bitmap (`mask`, bit `i % 8` of byte
//! `i / 8` for flat index `i`) or the sorted flat indices (`indices`), whichever is smaller
//! (the bitmap from about a 3% fraction up). Low rank sends every 2-D `[rows, cols]` tensor
//! as the factors `U·S` (`[rows, k]`) and `V` (`[k, cols]`) of its truncated SVD at `k =
//! min(rank, rows, cols)` (its rank 0 in `ranks` when they would hold as many values as the
//! tensor, which then travels dense, as do the other tensors); the receiver reads their
//! product (`truncated_svd` says how the SVD is made deterministic). Encoding is canonical:
//! the same values give the same bytes, hence the same hash on the ledger.
//!
//! A value that is not finite is not hidden by the codec: its tensor's scale is written as
//! NaN (int8), the value kept as it is (top-k), or its tensor sent dense (low rank), so that
//! validation still refuses the update by the tensor's name.
//!
//! Error feedback ([`Compressor::with_feedback`], on by default for the lossy codecs): the
//! client adds what it did not send last time (its residual) to its next delta before
//! compressing, and keeps what it does not send this time ([`Residual`]).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::FlError;
use crate::update::{Layout, NamedDelta};

/// How a client's update travels: `[compression] update` in a run's config.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateCodec {
    /// Every value as f32 (the named safetensors blob cohort always wrote).
    #[default]
    None,
    /// Every value as a signed byte with one f32 scale per tensor: 4x fewer bytes.
    Int8,
    /// The largest `topk_fraction` of every tensor's values, as f32, and where they are.
    Topk,
    /// The largest `topk_fraction` of every tensor's values as signed bytes with a scale per
    /// tensor, and where they are.
    TopkInt8,
    /// Every 2-D tensor as a truncated SVD of rank `rank`: its factors `U·S` and `V`, as f32
    /// (tensors the factors would not shrink travel dense).
    Lowrank,
    /// Those factors as signed bytes with a scale per factor (dense tensors as `int8`).
    LowrankInt8,
}

impl UpdateCodec {
    /// Every codec, in the order of the docs' table.
    pub const ALL: [Self; 6] = [
        Self::None,
        Self::Int8,
        Self::Topk,
        Self::TopkInt8,
        Self::Lowrank,
        Self::LowrankInt8,
    ];

    /// Its name in configs and blobs (`none`, `int8`, `topk`, `topk-int8`, `lowrank`,
    /// `lowrank-int8`).
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Int8 => "int8",
            Self::Topk => "topk",
            Self::TopkInt8 => "topk-int8",
            Self::Lowrank => "lowrank",
            Self::LowrankInt8 => "lowrank-int8",
        }
    }

    fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == s)
    }

    /// Whether it keeps only a fraction of the values.
    pub fn is_topk(self) -> bool {
        matches!(self, Self::Topk | Self::TopkInt8)
    }

    /// Whether it sends every 2-D tensor as the factors of a truncated SVD.
    pub fn is_lowrank(self) -> bool {
        matches!(self, Self::Lowrank | Self::LowrankInt8)
    }

    /// Whether the values travel as bytes.
    pub fn is_int8(self) -> bool {
        matches!(self, Self::Int8 | Self::TopkInt8 | Self::LowrankInt8)
    }
}

impl std::fmt::Display for UpdateCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The fraction top-k keeps when the config does not say.
pub const DEFAULT_TOPK_FRACTION: f64 = 0.1;
/// The smallest `topk_fraction` a run takes: a decoder can then bound the dense size a blob
/// may claim by its own length ([`MAX_VALUES_PER_BYTE`]).
pub const MIN_TOPK_FRACTION: f64 = 0.001;
/// A compressed blob may stand for at most this many dense values per byte of its own: a
/// top-k blob at [`MIN_TOPK_FRACTION`] holds at least one value (5 bytes or more) per 1,000,
/// so honest blobs stay far below it, and a hostile one cannot make a decoder allocate more
/// than 4 KiB per byte it sent.
pub const MAX_VALUES_PER_BYTE: usize = 1_024;
/// The rank the low-rank codecs keep when the config does not say.
pub const DEFAULT_RANK: u32 = 2;
/// The largest `rank` a run takes.
pub const MAX_RANK: u32 = 4_096;
/// Jacobi sweeps the low-rank codecs' eigen-solver makes at most (it converges in about ten
/// on LoRA-sized Gram matrices; the cap only bounds the work a pathological input costs).
const JACOBI_SWEEPS: usize = 64;

/// The metadata key naming the codec.
const CODEC_KEY: &str = "cohort.codec";
/// The metadata key listing the dense tensors.
const TENSORS_KEY: &str = "cohort.tensors";

/// A run's update compression, checked: the codec, top-k's fraction, low-rank's rank and
/// whether error feedback is on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Compressor {
    codec: UpdateCodec,
    fraction: f64,
    rank: u32,
    feedback: bool,
}

impl Default for Compressor {
    fn default() -> Self {
        Self::none()
    }
}

impl Compressor {
    /// No compression: the f32 blob.
    pub fn none() -> Self {
        Self {
            codec: UpdateCodec::None,
            fraction: 1.0,
            rank: 0,
            feedback: false,
        }
    }

    /// `codec` keeping `fraction` of every tensor's values (top-k codecs; clamped into
    /// `[MIN_TOPK_FRACTION, 1]`, the config's range, NaN read as 1), at rank [`DEFAULT_RANK`]
    /// (low-rank codecs; [`Compressor::with_rank`] sets it), error feedback on for the lossy
    /// codecs.
    pub fn new(codec: UpdateCodec, fraction: f64) -> Self {
        let fraction = if fraction.is_nan() {
            1.0
        } else {
            fraction.clamp(MIN_TOPK_FRACTION, 1.0)
        };
        Self {
            codec,
            fraction: if codec.is_topk() { fraction } else { 1.0 },
            rank: if codec.is_lowrank() { DEFAULT_RANK } else { 0 },
            feedback: codec != UpdateCodec::None,
        }
    }

    /// Keeping rank `rank` of every 2-D tensor (low-rank codecs; clamped into `[1,
    /// MAX_RANK]`, the config's range; ignored by the other codecs).
    pub fn with_rank(mut self, rank: u32) -> Self {
        if self.codec.is_lowrank() {
            self.rank = rank.clamp(1, MAX_RANK);
        }
        self
    }

    /// With error feedback on or off (always off for `none`).
    pub fn with_feedback(mut self, on: bool) -> Self {
        self.feedback = on && self.codec != UpdateCodec::None;
        self
    }

    /// The codec.
    pub fn codec(&self) -> UpdateCodec {
        self.codec
    }

    /// The fraction top-k keeps (1 for the other codecs).
    pub fn fraction(&self) -> f64 {
        self.fraction
    }

    /// The rank the low-rank codecs keep of every 2-D tensor (0 for the other codecs).
    pub fn rank(&self) -> u32 {
        self.rank
    }

    /// Whether error feedback is on.
    pub fn feedback(&self) -> bool {
        self.feedback
    }

    /// The blob of `values` (flat, in `layout`'s order) and the values it decodes to: what
    /// the receiver will see. `none` writes [`Layout::encode`]'s f32 blob; values of another
    /// length than `layout` (a malformed update) are written that way too, to be stored,
    /// hashed and refused.
    pub fn encode(&self, layout: &Layout, values: &[f32]) -> (Vec<u8>, Vec<f32>) {
        if self.codec == UpdateCodec::None || values.len() != layout.len() {
            return (layout.encode(values), values.to_vec());
        }
        if self.codec.is_lowrank() {
            return self.encode_lowrank(layout, values);
        }
        let ranges = ranges(layout);
        let keep: Option<Vec<usize>> = self
            .codec
            .is_topk()
            .then(|| top_k(values, &ranges, self.fraction));
        let mut sent = vec![0.0f32; values.len()];
        let mut scales = Vec::new();
        let mut kept_values: Vec<u8> = Vec::new();
        match &keep {
            None => {
                for r in &ranges {
                    let (scale, qs) = quantize(&values[r.clone()]);
                    scales.push(scale);
                    for (i, q) in r.clone().zip(qs) {
                        sent[i] = f32::from(q) * scale;
                        kept_values.push(q as u8);
                    }
                }
            }
            Some(idx) => {
                let mut at = 0usize;
                for r in &ranges {
                    let end = at + idx[at..].iter().take_while(|&&i| i < r.end).count();
                    let mine = &idx[at..end];
                    if self.codec.is_int8() {
                        let picked: Vec<f32> = mine.iter().map(|&i| values[i]).collect();
                        let (scale, qs) = quantize(&picked);
                        scales.push(scale);
                        for (&i, q) in mine.iter().zip(qs) {
                            sent[i] = f32::from(q) * scale;
                            kept_values.push(q as u8);
                        }
                    } else {
                        for &i in mine {
                            sent[i] = values[i];
                            kept_values.extend_from_slice(&values[i].to_le_bytes());
                        }
                    }
                    at = end;
                }
            }
        }
        let n = values.len();
        let mut tensors: Vec<(&str, &str, Vec<usize>, Vec<u8>)> = Vec::new();
        let kept = keep.as_ref().map_or(n, Vec::len);
        let vdtype = if self.codec.is_int8() { "I8" } else { "F32" };
        tensors.push(("values", vdtype, vec![kept], kept_values));
        if self.codec.is_int8() {
            let bytes = scales.iter().flat_map(|s| s.to_le_bytes()).collect();
            tensors.push(("scales", "F32", vec![scales.len()], bytes));
        }
        if let Some(idx) = &keep {
            let mask_len = n.div_ceil(8);
            if mask_len <= 4 * idx.len() {
                let mut mask = vec![0u8; mask_len];
                for &i in idx {
                    mask[i / 8] |= 1 << (i % 8);
                }
                tensors.push(("mask", "U8", vec![mask_len], mask));
            } else {
                let bytes = idx.iter().flat_map(|&i| (i as u32).to_le_bytes()).collect();
                tensors.push(("indices", "U32", vec![idx.len()], bytes));
            }
        }
        (write(self.codec, layout, tensors), sent)
    }

    /// [`Compressor::encode`] for the low-rank codecs: every tensor [`factors`] factors as its
    /// `U·S` and `V`, every other tensor dense; all of them packed in `values` (f32, or int8
    /// with a scale for each factor and each dense tensor) in flat order, and each tensor's
    /// rank (0: dense) in `ranks`.
    fn encode_lowrank(&self, layout: &Layout, values: &[f32]) -> (Vec<u8>, Vec<f32>) {
        let int8 = self.codec.is_int8();
        let mut sent = Vec::with_capacity(values.len());
        let mut ranks: Vec<u8> = Vec::new();
        let mut scales: Vec<f32> = Vec::new();
        let mut packed: Vec<u8> = Vec::new();
        // Appends `xs` to the packed values (int8: with a scale of their own) and returns
        // what the receiver will read back.
        let mut pack = |xs: &[f32]| -> Vec<f32> {
            if int8 {
                let (scale, qs) = quantize(xs);
                scales.push(scale);
                packed.extend(qs.iter().map(|&q| q as u8));
                qs.iter().map(|&q| f32::from(q) * scale).collect()
            } else {
                packed.extend(xs.iter().flat_map(|x| x.to_le_bytes()));
                xs.to_vec()
            }
        };
        for ((_, shape), r) in layout.tensors().iter().zip(ranges(layout)) {
            let x = &values[r];
            match factors(x, shape, self.rank as usize) {
                Some(f) => {
                    let k = u16::try_from(f.k).unwrap_or(u16::MAX);
                    ranks.extend_from_slice(&k.to_le_bytes());
                    let us = pack(&f.us);
                    let v = pack(&f.v);
                    sent.extend(expand(&us, &v, f.rows, f.k, f.cols));
                }
                None => {
                    ranks.extend_from_slice(&0u16.to_le_bytes());
                    sent.extend(pack(x));
                }
            }
        }
        let count = if int8 { packed.len() } else { packed.len() / 4 };
        let t = layout.tensors().len();
        let mut tensors: Vec<(&str, &str, Vec<usize>, Vec<u8>)> = vec![
            (
                "values",
                if int8 { "I8" } else { "F32" },
                vec![count],
                packed,
            ),
            ("ranks", "U16", vec![t], ranks),
        ];
        if int8 {
            let bytes = scales.iter().flat_map(|s| s.to_le_bytes()).collect();
            tensors.push(("scales", "F32", vec![scales.len()], bytes));
        }
        (write(self.codec, layout, tensors), sent)
    }
}

/// A tensor's truncated SVD as the low-rank codecs send it: `us` (`U·S`, `[rows, k]`) and
/// `v` (`V`, `[k, cols]`), both row-major, whose product approximates the tensor.
#[derive(Debug)]
struct Factors {
    rows: usize,
    cols: usize,
    k: usize,
    us: Vec<f32>,
    v: Vec<f32>,
}

/// The rank a `[rows, cols]` tensor is factored at: `min(rank, rows, cols)`, raised to
/// `ceil(min(rows, cols) / MAX_VALUES_PER_BYTE)` so that no honest blob stands for more dense
/// values per byte than a decoder takes (a `[rows, cols]` tensor's int8 factors at rank `k`
/// take `k (rows + cols)` bytes for fewer than `min(rows, cols) / k` values each); `None`
/// when its factors would hold as many values as the tensor, which then travels dense.
fn factor_rank(rows: usize, cols: usize, rank: usize) -> Option<usize> {
    let small = rows.min(cols);
    let k = rank.min(small).max(small.div_ceil(MAX_VALUES_PER_BYTE));
    let factored = rows.checked_add(cols)?.checked_mul(k)?;
    (k > 0 && k <= usize::from(u16::MAX) && factored < rows.checked_mul(cols)?).then_some(k)
}

/// The factors low-rank sends for a tensor of `shape` holding `x`, or `None` when the tensor
/// travels dense: it is not 2-D, its factors would not be smaller ([`factor_rank`]), or it
/// holds a value that is not finite (dense, the value stays visible to validation; a factor
/// would smear it over its whole row and column, or hide it).
fn factors(x: &[f32], shape: &[usize], rank: usize) -> Option<Factors> {
    let &[rows, cols] = shape else {
        return None;
    };
    let k = factor_rank(rows, cols, rank)?;
    if x.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let (us, v) = truncated_svd(x, rows, cols, k);
    // Values near f32::MAX can give factors that overflow: dense then.
    if us.iter().chain(&v).any(|v| !v.is_finite()) {
        return None;
    }
    Some(Factors {
        rows,
        cols,
        k,
        us,
        v,
    })
}

/// The rank-`k` truncated SVD of the `[rows, cols]` row-major `x`, as `(U·S, V)`: `U·S`
/// `[rows, k]`, `V` `[k, cols]`, row-major, f32.
///
/// Deterministic and dependency-free: with `A` the matrix (or its transpose when it has more
/// rows than columns) of `s = min(rows, cols)` rows, the eigenvectors of the `s x s` Gram
/// matrix `A Aᵀ` (f64, cyclic Jacobi in a fixed order, [`symmetric_eigen`]) sorted by
/// eigenvalue, largest first (ties to the lower index), are the singular vectors of the small
/// side; those of the other side are `A` projected on them, `σ` its norm. The product of the
/// factors is then `x` projected on the top-`k` singular vectors of its small side, however
/// close two singular values are. The sign of each pair is canonical: the entry of largest
/// magnitude of the left vector (the first of equals) is positive. A component whose `σ` is
/// below `f32::EPSILON` times the largest (rounding noise of a rank-deficient tensor, or a zero
/// tensor) is sent as zeros. Only `+ - * /` and `sqrt` are used (correctly rounded in IEEE
/// 754), never a library function whose last bit may differ between platforms, so that the
/// same delta gives the same bytes everywhere. Cost: `rows·cols·s` for the Gram matrix and
/// about ten sweeps of `s³`: cheap for LoRA deltas (`s` is the LoRA rank).
fn truncated_svd(x: &[f32], rows: usize, cols: usize, k: usize) -> (Vec<f32>, Vec<f32>) {
    let wide = rows <= cols;
    let (s, l) = if wide { (rows, cols) } else { (cols, rows) };
    // A, s x l, in f64.
    let a: Vec<f64> = if wide {
        x.iter().map(|&v| f64::from(v)).collect()
    } else {
        (0..s * l)
            .map(|j| f64::from(x[(j % l) * cols + j / l]))
            .collect()
    };
    let row = |i: usize| &a[i * l..(i + 1) * l];
    let mut g = vec![0.0f64; s * s];
    for i in 0..s {
        for j in 0..=i {
            let d: f64 = row(i).iter().zip(row(j)).map(|(p, q)| p * q).sum();
            g[i * s + j] = d;
            g[j * s + i] = d;
        }
    }
    let (vals, w) = symmetric_eigen(g, s);
    let mut order: Vec<usize> = (0..s).collect();
    order.sort_by(|&p, &q| vals[q].total_cmp(&vals[p]).then(p.cmp(&q)));
    let mut us = vec![0.0f32; rows * k];
    let mut v = vec![0.0f32; k * cols];
    let mut lead = 0.0f64;
    for (i, &j) in order.iter().take(k).enumerate() {
        // e: the singular vector of the small side; q = eᵀ A = σ times the other side's.
        let mut e: Vec<f64> = (0..s).map(|r| w[r * s + j]).collect();
        let mut q = vec![0.0f64; l];
        for (r, &er) in e.iter().enumerate() {
            for (qc, &arc) in q.iter_mut().zip(row(r)) {
                *qc += er * arc;
            }
        }
        let sigma = q.iter().map(|x| x * x).sum::<f64>().sqrt();
        if i == 0 {
            lead = sigma;
        }
        if sigma == 0.0 || sigma <= lead * f64::from(f32::EPSILON) {
            continue;
        }
        let big = {
            let left = if wide { &e } else { &q };
            left.iter()
                .fold(0.0f64, |m, &x| if x.abs() > m.abs() { x } else { m })
        };
        if big < 0.0 {
            e.iter_mut().for_each(|x| *x = -*x);
            q.iter_mut().for_each(|x| *x = -*x);
        }
        if wide {
            for (r, &er) in e.iter().enumerate() {
                us[r * k + i] = (er * sigma) as f32;
            }
            for (c, &qc) in q.iter().enumerate() {
                v[i * cols + c] = (qc / sigma) as f32;
            }
        } else {
            for (r, &qr) in q.iter().enumerate() {
                us[r * k + i] = qr as f32;
            }
            for (c, &ec) in e.iter().enumerate() {
                v[i * cols + c] = ec as f32;
            }
        }
    }
    (us, v)
}

/// The eigenvalues and eigenvectors of the symmetric positive semi-definite `n x n` row-major
/// `a` (a Gram matrix): cyclic Jacobi rotations, pairs `(p, q)` in a fixed order, at most
/// [`JACOBI_SWEEPS`] sweeps, until a sweep finds every off-diagonal entry negligible (at most
/// `f64::EPSILON` times the geometric mean of its two diagonal entries, or `f64::EPSILON²`
/// times the trace). Returns the eigenvalues and the eigenvectors as the columns of a
/// row-major `n x n` matrix.
fn symmetric_eigen(mut a: Vec<f64>, n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut w = vec![0.0f64; n * n];
    for i in 0..n {
        w[i * n + i] = 1.0;
    }
    let trace: f64 = (0..n).map(|i| a[i * n + i]).sum();
    let floor = trace * f64::EPSILON * f64::EPSILON;
    // The rotation of columns (or rows) `p` and `q` by (c, s).
    let turn = |x: &mut [f64], i: usize, j: usize, c: f64, s: f64| {
        let (xi, xj) = (x[i], x[j]);
        x[i] = c * xi - s * xj;
        x[j] = s * xi + c * xj;
    };
    for _ in 0..JACOBI_SWEEPS {
        let mut rotated = false;
        for p in 0..n {
            for q in p + 1..n {
                let (apq, app, aqq) = (a[p * n + q], a[p * n + p], a[q * n + q]);
                if apq.abs() <= floor || apq.abs() <= f64::EPSILON * (app.abs() * aqq.abs()).sqrt()
                {
                    a[p * n + q] = 0.0;
                    a[q * n + p] = 0.0;
                    continue;
                }
                rotated = true;
                let theta = (aqq - app) / (2.0 * apq);
                let t = if theta.abs() > 1e150 {
                    0.5 / theta
                } else {
                    theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt())
                };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for r in 0..n {
                    turn(&mut a, r * n + p, r * n + q, c, s);
                }
                for r in 0..n {
                    turn(&mut a, p * n + r, q * n + r, c, s);
                }
                for r in 0..n {
                    turn(&mut w, r * n + p, r * n + q, c, s);
                }
            }
        }
        if !rotated {
            break;
        }
    }
    ((0..n).map(|i| a[i * n + i]).collect(), w)
}

/// The dense `[rows, cols]` product of `us` (`[rows, k]`) and `v` (`[k, cols]`), row-major:
/// each value summed in f64 in the order of `k`, then rounded to f32 once, so that the
/// encoder's residual and every decoder see the same bits.
fn expand(us: &[f32], v: &[f32], rows: usize, k: usize, cols: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows * cols);
    for u in us.chunks_exact(k.max(1)).take(rows) {
        for c in 0..cols {
            let acc: f64 = u
                .iter()
                .enumerate()
                .map(|(i, &ui)| f64::from(ui) * f64::from(v[i * cols + c]))
                .sum();
            out.push(acc as f32);
        }
    }
    out
}

/// What a client did not send: added to its next delta before compressing (error feedback).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Residual(Vec<f32>);

impl Residual {
    /// No residual yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The residual's values (empty before the first update).
    pub fn values(&self) -> &[f32] {
        &self.0
    }

    /// The residual saved earlier (its values), for a client that continues a run.
    pub fn from_values(values: Vec<f32>) -> Self {
        Self(values)
    }

    /// Compresses `delta` plus the residual with `c` and keeps what was not sent; returns the
    /// blob. Without feedback the residual stays empty. A residual of another length (a new
    /// model) or holding a non-finite value (a diverged update) is dropped first.
    pub fn compress(&mut self, c: &Compressor, layout: &Layout, delta: &[f32]) -> Vec<u8> {
        if !c.feedback() {
            self.0.clear();
            return c.encode(layout, delta).0;
        }
        if self.0.len() != delta.len() || self.0.iter().any(|x| !x.is_finite()) {
            self.0 = vec![0.0; delta.len()];
        }
        let wanted: Vec<f32> = delta.iter().zip(&self.0).map(|(d, r)| d + r).collect();
        let (blob, sent) = c.encode(layout, &wanted);
        self.0 = wanted.iter().zip(&sent).map(|(w, s)| w - s).collect();
        blob
    }
}

/// Each tensor's range of flat indices.
fn ranges(layout: &Layout) -> Vec<std::ops::Range<usize>> {
    let mut at = 0usize;
    layout
        .tensors()
        .iter()
        .map(|(_, shape)| {
            let n: usize = shape.iter().product();
            at += n;
            at - n..at
        })
        .collect()
}

/// The flat indices top-k keeps, sorted: in every tensor of `n` values the `ceil(fraction *
/// n)` of largest magnitude, ties to the lower index (a total order: deterministic).
fn top_k(values: &[f32], ranges: &[std::ops::Range<usize>], fraction: f64) -> Vec<usize> {
    let mut out = Vec::new();
    for r in ranges {
        let n = r.len();
        let k = ((fraction * n as f64).ceil() as usize).clamp(n.min(1), n);
        let mut idx: Vec<usize> = r.clone().collect();
        let order =
            |a: &usize, b: &usize| values[*b].abs().total_cmp(&values[*a].abs()).then(a.cmp(b));
        if k < n {
            idx.select_nth_unstable_by(k, order);
            idx.truncate(k);
        }
        idx.sort_unstable();
        out.extend(idx);
    }
    out
}

/// Symmetric int8 quantization: the scale (`max |v| / 127`; NaN when a value is not finite,
/// so that the decoded values are not either) and the quantized values.
fn quantize(values: &[f32]) -> (f32, Vec<i8>) {
    if values.iter().any(|x| !x.is_finite()) {
        return (f32::NAN, vec![0; values.len()]);
    }
    let max = values.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    if max == 0.0 {
        return (0.0, vec![0; values.len()]);
    }
    let scale = max / 127.0;
    let q = values
        .iter()
        .map(|x| (x / scale).round().clamp(-127.0, 127.0) as i8)
        .collect();
    (scale, q)
}

/// The safetensors bytes of `tensors` (name, dtype, shape, data) with the codec's metadata;
/// tensors sorted by name.
fn write(
    codec: UpdateCodec,
    layout: &Layout,
    mut tensors: Vec<(&str, &str, Vec<usize>, Vec<u8>)>,
) -> Vec<u8> {
    tensors.sort_by(|a, b| a.0.cmp(b.0));
    let mut header = serde_json::Map::new();
    let dense = serde_json::to_string(layout.tensors()).unwrap_or_default();
    header.insert(
        "__metadata__".into(),
        serde_json::json!({ "format": "pt", CODEC_KEY: codec.name(), TENSORS_KEY: dense }),
    );
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in &tensors {
        let begin = data.len();
        data.extend_from_slice(bytes);
        header.insert(
            (*name).to_owned(),
            serde_json::json!({ "dtype": dtype, "shape": shape, "data_offsets": [begin, data.len()] }),
        );
    }
    let mut h = serde_json::Value::Object(header).to_string().into_bytes();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + h.len() + data.len());
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(&data);
    out
}

/// Little-endian f32s.
fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// The dense values of a `lowrank` or `lowrank-int8` blob, [`decode_update`]'s part for them;
/// `tensor` reads one of the blob's tensors (name, dtype, bytes per value), `bad` words a
/// refusal. Refused: a rank count other than the tensors', a rank on a tensor that is not 2-D,
/// larger than its smaller side, or whose factors would not be smaller than the tensor; a
/// number of values or scales other than the ranks call for; a factor holding a value that is
/// not finite, or (int8) whose scale is negative or not finite. A dense tensor is read as the
/// `none` or `int8` codec reads it (a NaN scale included: how a non-finite value travels).
fn decode_lowrank<'a>(
    codec: UpdateCodec,
    layout: &Layout,
    tensor: impl Fn(&str, &str, usize) -> Result<(usize, &'a [u8]), FlError>,
    bad: impl Fn(String) -> FlError,
) -> Result<Vec<f32>, FlError> {
    let tensors = layout.tensors();
    let t = tensors.len();
    let (len, b) = tensor("ranks", "U16", 2)?;
    if len != t {
        return Err(bad(format!("{len} ranks for {t} tensors")));
    }
    let ranks: Vec<usize> = b
        .chunks_exact(2)
        .map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])))
        .collect();
    // The values and scales the ranks call for, checking each rank against its tensor.
    let (mut needed, mut n_scales) = (0usize, 0usize);
    for ((name, shape), &k) in tensors.iter().zip(&ranks) {
        if k == 0 {
            needed += shape.iter().product::<usize>();
            n_scales += 1;
            continue;
        }
        let &[rows, cols] = &shape[..] else {
            return Err(bad(format!(
                "tensor {name} of shape {shape:?} has rank {k}: only 2-D tensors are factored"
            )));
        };
        if k > rows.min(cols) {
            return Err(bad(format!(
                "tensor {name} of shape {shape:?} has rank {k}, more than its {} can have",
                rows.min(cols)
            )));
        }
        // Smaller than the tensor, so that the sum stays within the layout's length.
        needed += rows
            .checked_add(cols)
            .and_then(|s| s.checked_mul(k))
            .filter(|&s| s < rows * cols)
            .ok_or_else(|| {
                bad(format!(
                    "tensor {name} of shape {shape:?} has rank {k}, whose factors are no \
                     smaller than the tensor: it must travel dense (rank 0)"
                ))
            })?;
        n_scales += 2;
    }
    let int8 = codec.is_int8();
    let (len, raw) = tensor(
        "values",
        if int8 { "I8" } else { "F32" },
        if int8 { 1 } else { 4 },
    )?;
    if len != needed {
        return Err(bad(format!("{len} values; the ranks call for {needed}")));
    }
    let scales = if int8 {
        let (len, b) = tensor("scales", "F32", 4)?;
        if len != n_scales {
            return Err(bad(format!(
                "{len} scales; the ranks call for {n_scales} (one for each dense tensor and each factor)"
            )));
        }
        f32s(b)
    } else {
        Vec::new()
    };
    let (mut at, mut si) = (0usize, 0usize);
    // The next `m` packed values, decoded, and their scale (1 for f32).
    let mut next = |m: usize| -> (Vec<f32>, f32) {
        let out = if int8 {
            raw[at..at + m]
                .iter()
                .map(|&q| f32::from(q as i8) * scales[si])
                .collect()
        } else {
            f32s(&raw[4 * at..4 * (at + m)])
        };
        let scale = if int8 { scales[si] } else { 1.0 };
        at += m;
        si += 1;
        (out, scale)
    };
    let mut values = Vec::with_capacity(layout.len());
    for ((name, shape), &k) in tensors.iter().zip(&ranks) {
        if k == 0 {
            values.extend(next(shape.iter().product()).0);
            continue;
        }
        let (rows, cols) = (shape[0], shape[1]);
        let (us, us_scale) = next(rows * k);
        let (v, v_scale) = next(k * cols);
        for (factor, f, scale) in [("U·S", &us, us_scale), ("V", &v, v_scale)] {
            if !(scale.is_finite() && scale >= 0.0) {
                return Err(bad(format!(
                    "tensor {name}: the scale of its {factor} factor is {scale}, not a finite \
                     number >= 0"
                )));
            }
            if let Some(i) = f.iter().position(|x| !x.is_finite()) {
                return Err(bad(format!(
                    "tensor {name}: its {factor} factor holds {} at index {i}",
                    f[i]
                )));
            }
        }
        values.extend(expand(&us, &v, rows, k, cols));
    }
    Ok(values)
}

/// The codec a blob was written with: `none` for an f32 blob (or anything without the
/// codec's metadata), else the one its metadata names. Errors when the header does not parse
/// or names an unknown codec.
pub fn codec_of(blob: &[u8]) -> Result<UpdateCodec, FlError> {
    let (header, _) = crate::blob::header_of(blob)?;
    match header.get("__metadata__").and_then(|m| m.get(CODEC_KEY)) {
        None => Ok(UpdateCodec::None),
        Some(serde_json::Value::String(s)) => {
            UpdateCodec::from_name(s).ok_or_else(|| FlError::MalformedBlob {
                reason: format!("unknown codec {s:?} in the metadata's {CODEC_KEY}"),
            })
        }
        Some(other) => Err(FlError::MalformedBlob {
            reason: format!("the metadata's {CODEC_KEY} is {other}, not a string"),
        }),
    }
}

/// The dense named delta of an update blob of any codec, and the codec: an f32 blob as
/// [`crate::blob::decode_named_blob`] reads it, a compressed one expanded (the values it
/// sent, zeros elsewhere; a low-rank one as the products of its factors). Errors name what is
/// wrong: an unknown codec, a missing, extra or misshapen tensor, an index out of range or out
/// of order, a mask with the wrong number of bits, a claimed size out of proportion to the
/// blob, a rank a tensor cannot have, factors that are not finite.
pub fn decode_update(blob: &[u8]) -> Result<(NamedDelta, UpdateCodec), FlError> {
    let codec = codec_of(blob)?;
    if codec == UpdateCodec::None {
        return Ok((crate::blob::decode_named_blob(blob)?, codec));
    }
    let bad = |reason: String| FlError::MalformedBlob {
        reason: format!("{codec} blob: {reason}"),
    };
    let (header, start) = crate::blob::header_of(blob)?;
    let data = &blob[start..];
    let meta = &header["__metadata__"];
    let dense = meta
        .get(TENSORS_KEY)
        .and_then(|v| v.as_str())
        .ok_or_else(|| bad(format!("no {TENSORS_KEY} string in the metadata")))?;
    let tensors: Vec<(String, Vec<usize>)> =
        serde_json::from_str(dense).map_err(|e| bad(format!("{TENSORS_KEY}: {e}")))?;
    if tensors.is_empty() {
        return Err(bad("no tensors".into()));
    }
    let layout = Layout::new(tensors).map_err(|e| bad(e.to_string()))?;
    let n = layout.len();
    if n > MAX_VALUES_PER_BYTE.saturating_mul(blob.len()) {
        return Err(bad(format!(
            "it stands for {n} values, more than {MAX_VALUES_PER_BYTE} per byte of its {} bytes",
            blob.len()
        )));
    }
    let t = layout.tensors().len();
    let mut expected = vec!["values"];
    if codec.is_int8() {
        expected.push("scales");
    }
    if codec.is_lowrank() {
        expected.push("ranks");
    }
    let positions = if codec.is_topk() {
        match (header.contains_key("mask"), header.contains_key("indices")) {
            (true, false) => Some("mask"),
            (false, true) => Some("indices"),
            (true, true) => return Err(bad("both a mask and indices".into())),
            (false, false) => return Err(bad("neither a mask nor indices".into())),
        }
    } else {
        None
    };
    expected.extend(positions);
    if let Some(extra) = header
        .keys()
        .find(|k| *k != "__metadata__" && !expected.contains(&k.as_str()))
    {
        return Err(bad(format!("an unexpected tensor {extra}")));
    }
    // A tensor's bytes: the dtype, one dimension and offsets it must have.
    let tensor = |name: &str, dtype: &str, size: usize| -> Result<(usize, &[u8]), FlError> {
        let x = header
            .get(name)
            .ok_or_else(|| bad(format!("no tensor {name}")))?;
        if x["dtype"] != dtype {
            return Err(bad(format!("{name} has dtype {}, not {dtype}", x["dtype"])));
        }
        let shape: Vec<usize> = serde_json::from_value(x["shape"].clone())
            .map_err(|e| bad(format!("{name}: shape: {e}")))?;
        let [len] = shape[..] else {
            return Err(bad(format!(
                "{name} has shape {shape:?}, not one dimension"
            )));
        };
        let [begin, end]: [usize; 2] = serde_json::from_value(x["data_offsets"].clone())
            .map_err(|e| bad(format!("{name}: data_offsets: {e}")))?;
        let bytes = data
            .get(begin..end)
            .filter(|b| Some(b.len()) == len.checked_mul(size))
            .ok_or_else(|| {
                bad(format!(
                    "{name}: offsets {begin}..{end} do not hold {len} {dtype} values in {} data bytes",
                    data.len()
                ))
            })?;
        Ok((len, bytes))
    };
    if codec.is_lowrank() {
        let values = decode_lowrank(codec, &layout, tensor, bad)?;
        return Ok((NamedDelta::new(Arc::new(layout), values), codec));
    }
    let (k, raw) = tensor(
        "values",
        if codec.is_int8() { "I8" } else { "F32" },
        if codec.is_int8() { 1 } else { 4 },
    )?;
    let scales = if codec.is_int8() {
        let (len, b) = tensor("scales", "F32", 4)?;
        if len != t {
            return Err(bad(format!("{len} scales for {t} tensors")));
        }
        f32s(b)
    } else {
        Vec::new()
    };
    let ranges = ranges(&layout);
    // The flat index of every value sent, increasing.
    let idx: Vec<usize> = match positions {
        None => {
            if k != n {
                return Err(bad(format!("{k} values for {n} tensor values")));
            }
            (0..n).collect()
        }
        Some("mask") => {
            let (len, m) = tensor("mask", "U8", 1)?;
            if len != n.div_ceil(8) {
                return Err(bad(format!("a mask of {len} bytes for {n} values")));
            }
            let idx: Vec<usize> = (0..n).filter(|&i| m[i / 8] >> (i % 8) & 1 == 1).collect();
            if !n.is_multiple_of(8) && m[n / 8] >> (n % 8) != 0 {
                return Err(bad(format!("mask bits set past the {n} values")));
            }
            if idx.len() != k {
                return Err(bad(format!(
                    "the mask marks {} values, it holds {k}",
                    idx.len()
                )));
            }
            idx
        }
        Some(_) => {
            let (len, b) = tensor("indices", "U32", 4)?;
            if len != k {
                return Err(bad(format!("{len} indices for {k} values")));
            }
            let idx: Vec<usize> = b
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize)
                .collect();
            if let Some(w) = idx.windows(2).position(|w| w[0] >= w[1]) {
                return Err(bad(format!(
                    "index {} ({}) does not follow index {w} ({}): indices must increase",
                    w + 1,
                    idx[w + 1],
                    idx[w]
                )));
            }
            if let Some(&last) = idx.last().filter(|&&i| i >= n) {
                return Err(bad(format!("index {last} is out of the {n} values")));
            }
            idx
        }
    };
    let mut values = vec![0.0f32; n];
    let floats = if codec.is_int8() {
        Vec::new()
    } else {
        f32s(raw)
    };
    let mut tensor_of = 0usize;
    for (j, &i) in idx.iter().enumerate() {
        while i >= ranges[tensor_of].end {
            tensor_of += 1;
        }
        values[i] = if codec.is_int8() {
            f32::from(raw[j] as i8) * scales[tensor_of]
        } else {
            floats[j]
        };
    }
    Ok((NamedDelta::new(Arc::new(layout), values), codec))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout::new(vec![
            ("lora_A.weight".into(), vec![4, 25]),
            ("lora_B.weight".into(), vec![30, 4]),
            ("bias".into(), vec![3]),
        ])
        .unwrap()
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let x = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8;
                (x as f32 / (1u32 << 24) as f32 - 0.5) * if i % 7 == 0 { 4.0 } else { 0.1 }
            })
            .collect()
    }

    #[test]
    fn every_codec_round_trips_to_what_it_says_it_sent() {
        let l = layout();
        let v = values(l.len(), 1);
        for codec in UpdateCodec::ALL {
            let c = Compressor::new(codec, 0.1);
            let (blob, sent) = c.encode(&l, &v);
            let (d, got) = decode_update(&blob).unwrap();
            assert_eq!(got, codec);
            assert_eq!(codec_of(&blob).unwrap(), codec);
            let d = d.into_layout(&Arc::new(l.clone())).unwrap();
            let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&d.values), bits(&sent), "{codec}");
            // Canonical: the same values give the same bytes.
            assert_eq!(c.encode(&l, &v).0, blob);
            // Close to the values: int8 within half a step of each tensor's scale, top-k
            // exact on what it keeps.
            let kept = sent.iter().filter(|x| **x != 0.0).count();
            match codec {
                UpdateCodec::None => assert_eq!(sent, v),
                UpdateCodec::Int8 => {
                    for (a, b) in sent.iter().zip(&v) {
                        assert!((a - b).abs() <= 2.0 / 127.0 / 2.0 + 1e-6, "{a} {b}");
                    }
                }
                UpdateCodec::Topk => {
                    // ceil(0.1 * 100) + ceil(0.1 * 120) + ceil(0.1 * 3)
                    assert_eq!(kept, 10 + 12 + 1);
                    for (a, b) in sent.iter().zip(&v) {
                        assert!(*a == 0.0 || a == b);
                    }
                    // What it keeps in a tensor is at least as large as what it drops.
                    let (s, o) = (&sent[..100], &v[..100]);
                    let least_kept = (0..100)
                        .filter(|&i| s[i] != 0.0)
                        .map(|i| o[i].abs())
                        .fold(f32::INFINITY, f32::min);
                    let most_dropped = (0..100)
                        .filter(|&i| s[i] == 0.0)
                        .map(|i| o[i].abs())
                        .fold(0.0, f32::max);
                    assert!(least_kept >= most_dropped);
                }
                UpdateCodec::TopkInt8 => assert!(kept <= 23),
                UpdateCodec::Lowrank | UpdateCodec::LowrankInt8 => {
                    // Both LoRA tensors factored at rank 2 (2 x (4 + 25) < 100, 2 x (30 + 4)
                    // < 120), the 1-D bias dense.
                    assert_eq!(c.rank(), DEFAULT_RANK);
                    let (header, _) = crate::blob::header_of(&blob).unwrap();
                    assert_eq!(header["ranks"]["shape"], serde_json::json!([3]));
                    let packed = 2 * (4 + 25) + 2 * (30 + 4) + 3;
                    assert_eq!(header["values"]["shape"], serde_json::json!([packed]));
                    if codec == UpdateCodec::Lowrank {
                        assert_eq!(sent[220..], v[220..]);
                    }
                }
            }
        }
    }

    /// `[rows, cols]` values of rank `k` (a product of pseudo-random factors).
    fn of_rank(rows: usize, cols: usize, k: usize, seed: u32) -> Vec<f32> {
        let p = values(rows * k, seed);
        let q = values(k * cols, seed + 1);
        (0..rows * cols)
            .map(|j| {
                let (r, c) = (j / cols, j % cols);
                (0..k).map(|i| p[r * k + i] * q[i * cols + c]).sum()
            })
            .collect()
    }

    fn norm(x: &[f32]) -> f64 {
        x.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt()
    }

    fn distance(x: &[f32], y: &[f32]) -> f64 {
        x.iter()
            .zip(y)
            .map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2))
            .sum::<f64>()
            .sqrt()
    }

    /// A single tensor's layout.
    fn one(rows: usize, cols: usize) -> Layout {
        Layout::new(vec![("w".into(), vec![rows, cols])]).unwrap()
    }

    #[test]
    fn a_matrix_of_rank_k_round_trips_through_lowrank_within_1e_5() {
        for (rows, cols) in [(4, 128), (384, 4), (16, 300), (300, 16), (40, 40)] {
            for k in [1, 2, 3] {
                let m = of_rank(rows, cols, k, (rows * cols + k) as u32);
                // At rank k, and above it (the extra components are zeros).
                for rank in [k, k + 1] {
                    if factor_rank(rows, cols, rank).is_none() {
                        continue;
                    }
                    let c = Compressor::new(UpdateCodec::Lowrank, 0.1).with_rank(rank as u32);
                    let (blob, sent) = c.encode(&one(rows, cols), &m);
                    let got = decode_update(&blob).unwrap().0.values;
                    assert_eq!(got, sent);
                    let e = distance(&got, &m) / norm(&m);
                    assert!(e < 1e-5, "[{rows}, {cols}] of rank {k} at {rank}: {e}");
                    let f = factors(&m, &[rows, cols], rank).unwrap();
                    // The components past the matrix's rank are sent as zeros.
                    for r in 0..rows {
                        for i in k..rank {
                            assert_eq!(f.us[r * rank + i], 0.0, "[{rows}, {cols}] {k} {rank}");
                        }
                    }
                }
            }
        }
    }

    /// `n` orthonormal vectors of `len` values (Gram-Schmidt on pseudo-random ones), f64.
    fn orthonormal(n: usize, len: usize, seed: u64) -> Vec<Vec<f64>> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        };
        let mut out: Vec<Vec<f64>> = Vec::new();
        for _ in 0..n {
            let mut x: Vec<f64> = (0..len).map(|_| next()).collect();
            for _ in 0..2 {
                for o in &out {
                    let d: f64 = x.iter().zip(o).map(|(a, b)| a * b).sum();
                    x.iter_mut().zip(o).for_each(|(a, b)| *a -= d * b);
                }
            }
            let n = x.iter().map(|a| a * a).sum::<f64>().sqrt();
            out.push(x.iter().map(|a| a / n).collect());
        }
        out
    }

    #[test]
    fn lowrank_truncation_error_is_the_tail_of_the_singular_values() {
        // A random [8, 60] matrix with singular values 5, 3, 2, 1, 0.5, 0.25, 0.1, 0.05:
        // U S Vᵀ with random orthonormal U and V.
        let sigma = [5.0, 3.0, 2.0, 1.0, 0.5, 0.25, 0.1, 0.05];
        let (rows, cols) = (8, 60);
        let u = orthonormal(rows, rows, 11);
        let v = orthonormal(rows, cols, 31);
        let m: Vec<f32> = (0..rows * cols)
            .map(|j| {
                let (r, c) = (j / cols, j % cols);
                (0..rows).map(|i| u[i][r] * sigma[i] * v[i][c]).sum::<f64>() as f32
            })
            .collect();
        // The same matrix transposed ([60, 8]) has the same singular values.
        let t: Vec<f32> = (0..rows * cols)
            .map(|j| m[(j % rows) * cols + j / rows])
            .collect();
        let mut last = f64::INFINITY;
        for k in 1..=7 {
            let tail = sigma[k..].iter().map(|s| s * s).sum::<f64>().sqrt();
            for (x, shape) in [(&m, (rows, cols)), (&t, (cols, rows))] {
                let c = Compressor::new(UpdateCodec::Lowrank, 0.1).with_rank(k as u32);
                let l = one(shape.0, shape.1);
                let (blob, sent) = c.encode(&l, x);
                // Rank 7 of 8 rows is no smaller than dense: it travels as it is.
                if k * (rows + cols) >= rows * cols {
                    assert_eq!(&sent, x);
                    continue;
                }
                let got = decode_update(&blob).unwrap().0.values;
                let e = distance(&got, x);
                assert!(
                    (e - tail).abs() <= 1e-4 * sigma[0],
                    "rank {k}: {e} vs {tail}"
                );
                // The kept singular values are the largest: U·S's columns have their norms.
                let f = factors(x, &[shape.0, shape.1], k).unwrap();
                for (i, s) in sigma.iter().take(k).enumerate() {
                    let col = (0..shape.0).map(|r| f64::from(f.us[r * k + i]).powi(2));
                    let got = col.sum::<f64>().sqrt();
                    assert!((got - s).abs() < 1e-5 * sigma[0], "σ{i}: {got} vs {s}");
                }
                assert!(e < last);
            }
            last = tail + 1e-3;
        }
        // With int8 factors, close to the same.
        let c = Compressor::new(UpdateCodec::LowrankInt8, 0.1).with_rank(2);
        let got = decode_update(&c.encode(&one(rows, cols), &m).0)
            .unwrap()
            .0
            .values;
        let tail = sigma[2..].iter().map(|s| s * s).sum::<f64>().sqrt();
        assert!((distance(&got, &m) - tail).abs() < 0.02 * sigma[0]);
    }

    #[test]
    fn lowrank_bytes_are_canonical() {
        let l = Layout::new(vec![
            ("a.lora_A.weight".into(), vec![4, 128]),
            ("a.lora_B.weight".into(), vec![384, 4]),
            ("ln".into(), vec![128]),
        ])
        .unwrap();
        let v = values(l.len(), 7);
        for codec in [UpdateCodec::Lowrank, UpdateCodec::LowrankInt8] {
            for rank in [1, 2, 3] {
                let c = Compressor::new(codec, 0.1).with_rank(rank);
                let (blob, sent) = c.encode(&l, &v);
                assert_eq!(c.encode(&l, &v).0, blob, "{codec} {rank}");
                // What it decodes to encodes again to the same product, up to rounding, and
                // to the same bytes every time.
                let (again, resent) = c.encode(&l, &sent);
                assert_eq!(c.encode(&l, &sent).0, again);
                let e = distance(&resent, &sent) / norm(&sent);
                let bound = if codec.is_int8() { 2e-2 } else { 1e-5 };
                assert!(e < bound, "{codec} {rank}: {e}");
                // The negated delta gives the negated product (the sign is canonical, not
                // the input's).
                let neg: Vec<f32> = v.iter().map(|x| -x).collect();
                let (_, negated) = c.encode(&l, &neg);
                let e = distance(&negated.iter().map(|x| -x).collect::<Vec<_>>(), &sent);
                assert!(e <= 1e-5 * norm(&sent), "{codec} {rank}: {e}");
            }
        }
        // Equal singular values (the factorisation is not unique): still the same bytes.
        let mut eye = vec![0.0f32; 4 * 128];
        for i in 0..4 {
            eye[i * 128 + 3 * i] = 1.0;
        }
        let c = Compressor::new(UpdateCodec::Lowrank, 0.1).with_rank(2);
        let (blob, sent) = c.encode(&one(4, 128), &eye);
        assert_eq!(c.encode(&one(4, 128), &eye).0, blob);
        assert!((norm(&sent) - 2f64.sqrt()).abs() < 1e-6);
    }

    #[test]
    fn zero_and_rank_deficient_tensors_factor_cleanly() {
        for codec in [UpdateCodec::Lowrank, UpdateCodec::LowrankInt8] {
            let c = Compressor::new(codec, 0.1).with_rank(3);
            let (blob, sent) = c.encode(&one(6, 50), &[0.0; 300]);
            assert!(
                sent.iter().all(|x| *x == 0.0 && x.is_sign_positive()),
                "{codec}"
            );
            assert_eq!(decode_update(&blob).unwrap().0.values, sent);
            // A single non-zero value: a rank-1 tensor, exact.
            let mut x = vec![0.0f32; 300];
            x[57] = -3.5;
            let (_, sent) = c.encode(&one(6, 50), &x);
            assert_eq!(sent, x, "{codec}");
        }
        // Rank 2 with rank 3 asked: the third component is exactly zero.
        let m = of_rank(6, 50, 2, 3);
        let f = factors(&m, &[6, 50], 3).unwrap();
        assert!((0..6).all(|r| f.us[r * 3 + 2] == 0.0));
        assert!((0..50).all(|c| f.v[2 * 50 + c] == 0.0));
        // The rank is capped by the smaller side; no factors when they would not be smaller.
        assert_eq!(factor_rank(4, 128, 9), None);
        assert_eq!(factor_rank(4, 128, 3), Some(3));
        assert_eq!(factor_rank(2, 2, 1), None);
        assert_eq!(factor_rank(3, 3, 1), Some(1));
        assert_eq!(factor_rank(0, 10, 1), None);
        // A huge small side raises the rank so that the blob stays within a decoder's bound.
        assert_eq!(factor_rank(5_000, 6_000, 1), Some(5));
        assert!(factors(&[1.0; 8], &[8], 2).is_none());
    }

    #[test]
    fn lowrank_at_the_lora_rank_travels_dense() {
        let l = Layout::new(vec![
            ("a.lora_A.weight".into(), vec![4, 128]),
            ("a.lora_B.weight".into(), vec![384, 4]),
        ])
        .unwrap();
        let v = values(l.len(), 3);
        let (blob, sent) = Compressor::new(UpdateCodec::Lowrank, 0.1)
            .with_rank(4)
            .encode(&l, &v);
        assert_eq!(sent, v);
        assert_eq!(decode_update(&blob).unwrap().0.values, v);
        // Rank 1 int8: 520 bytes of factors for 2,048 values (top-k int8 at 0.1 sends 461:
        // a 256-byte mask and 205 values).
        let dense = l.encode(&v).len();
        let blob = Compressor::new(UpdateCodec::LowrankInt8, 0.1)
            .with_rank(1)
            .encode(&l, &v)
            .0;
        assert!(dense >= 9 * blob.len(), "{dense} vs {}", blob.len());
    }

    #[test]
    fn topk_int8_is_over_ten_times_smaller_than_f32_on_a_lora_sized_delta() {
        let l = Layout::new(vec![
            ("a.lora_A.weight".into(), vec![4, 128]),
            ("a.lora_B.weight".into(), vec![384, 4]),
        ])
        .unwrap();
        let v = values(l.len(), 3);
        let dense = l.encode(&v).len();
        let blob = Compressor::new(UpdateCodec::TopkInt8, 0.1).encode(&l, &v).0;
        assert!(dense >= 10 * blob.len(), "{dense} vs {}", blob.len());
        let int8 = Compressor::new(UpdateCodec::Int8, 0.1).encode(&l, &v).0;
        assert!(dense >= 3 * int8.len(), "{dense} vs {}", int8.len());
    }

    #[test]
    fn small_fractions_write_indices_and_large_ones_a_mask() {
        let l = Layout::new(vec![("w".into(), vec![10_000])]).unwrap();
        let v = values(l.len(), 5);
        for (f, name) in [(0.01, "indices"), (0.1, "mask")] {
            let (blob, sent) = Compressor::new(UpdateCodec::Topk, f).encode(&l, &v);
            let (header, _) = crate::blob::header_of(&blob).unwrap();
            assert!(header.contains_key(name), "{f}");
            assert_eq!(decode_update(&blob).unwrap().0.values, sent);
        }
    }

    #[test]
    fn lowrank_error_feedback_sends_what_the_truncation_left_out() {
        let l = one(4, 25);
        let delta = values(100, 17);
        let rounds = 40;
        let mut err = Vec::new();
        for on in [true, false] {
            let c = Compressor::new(UpdateCodec::Lowrank, 0.1)
                .with_rank(1)
                .with_feedback(on);
            let mut r = Residual::new();
            let mut total = vec![0.0f32; 100];
            for _ in 0..rounds {
                let blob = r.compress(&c, &l, &delta);
                let got = decode_update(&blob).unwrap().0.values;
                total.iter_mut().zip(&got).for_each(|(t, g)| *t += g);
                if on {
                    // The residual is what was asked less what was sent.
                    assert_eq!(r.values().len(), 100);
                }
            }
            let asked: Vec<f32> = delta.iter().map(|d| d * rounds as f32).collect();
            err.push(distance(&total, &asked) / norm(&asked));
        }
        // Without feedback a rank-1 truncation of a 4-row random matrix loses a large share
        // every round; with it, what is left out is sent later.
        assert!(err[1] > 0.4, "{err:?}");
        assert!(err[0] < 0.1, "{err:?}");
    }

    #[test]
    fn error_feedback_sends_what_was_left_out_later() {
        let l = Layout::new(vec![("w".into(), vec![10])]).unwrap();
        let c = Compressor::new(UpdateCodec::Topk, 0.1);
        assert!(c.feedback());
        let delta: Vec<f32> = (0..10).map(|i| 1.0 + i as f32 * 0.01).collect();
        let mut r = Residual::new();
        let mut total = vec![0.0f32; 10];
        for round in 0..10 {
            let blob = r.compress(&c, &l, &delta);
            let got = decode_update(&blob).unwrap().0.values;
            // Sent plus kept back is everything asked for so far.
            for i in 0..10 {
                total[i] += got[i];
                let asked = delta[i] * (round + 1) as f32;
                assert!((total[i] + r.values()[i] - asked).abs() < 1e-4);
            }
        }
        // Every coordinate has been sent at some point: nothing starves.
        assert!(total.iter().all(|x| *x > 0.0), "{total:?}");
        // Without feedback the smallest coordinate is never sent.
        let plain = c.with_feedback(false);
        let mut r = Residual::new();
        for _ in 0..10 {
            let got = decode_update(&r.compress(&plain, &l, &delta))
                .unwrap()
                .0
                .values;
            assert_eq!(got[0], 0.0);
            assert!(r.values().is_empty());
        }
    }

    #[test]
    fn non_finite_values_stay_visible_to_validation() {
        let l = layout();
        let mut v = values(l.len(), 2);
        v[105] = f32::NAN;
        for codec in UpdateCodec::ALL.into_iter().skip(1) {
            let (blob, _) = Compressor::new(codec, 0.1).encode(&l, &v);
            let d = decode_update(&blob).unwrap().0;
            assert!(d.values[100..220].iter().any(|x| x.is_nan()), "{codec}");
            assert!(d.values[..100].iter().all(|x| x.is_finite()), "{codec}");
        }
        // Infinities too; validation names the tensor.
        v[105] = f32::INFINITY;
        for codec in [UpdateCodec::Lowrank, UpdateCodec::LowrankInt8] {
            let (blob, _) = Compressor::new(codec, 0.1).encode(&l, &v);
            let d = decode_update(&blob).unwrap().0;
            assert!(d.values[..100].iter().all(|x| x.is_finite()), "{codec}");
            let u = crate::update::ClientUpdate::new(0, 1, d, 1);
            let e = crate::update::validate(&u, 1, &l).unwrap_err().to_string();
            assert!(e.contains("of tensor lora_B.weight is"), "{codec}: {e}");
        }
    }

    /// A blob with `header` as its JSON header and `data` after it.
    fn raw(header: &str, data: &[u8]) -> Vec<u8> {
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    fn refused(header: &str, data: &[u8]) -> String {
        decode_update(&raw(header, data)).unwrap_err().to_string()
    }

    #[test]
    fn malformed_compressed_blobs_are_refused_by_name() {
        let meta = |codec: &str, tensors: &str| {
            format!(
                r#""__metadata__":{{"cohort.codec":"{codec}","cohort.tensors":"{}"}}"#,
                tensors.replace('"', "\\\"")
            )
        };
        let m = meta("int8", r#"[["w",[4]]]"#);
        let ok = format!(
            r#"{{{m},"values":{{"dtype":"I8","shape":[4],"data_offsets":[0,4]}},"scales":{{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}}}"#
        );
        assert_eq!(
            decode_update(&raw(&ok, &[1, 2, 3, 4, 0, 0, 128, 63]))
                .unwrap()
                .0
                .values,
            vec![1.0, 2.0, 3.0, 4.0]
        );
        let e = refused(&ok, &[1, 2, 3]);
        assert!(
            e.contains("int8 blob: values: offsets 0..4 do not hold"),
            "{e}"
        );
        let e = refused(&ok.replace(r#""dtype":"I8""#, r#""dtype":"F32""#), &[0; 8]);
        assert!(e.contains("values has dtype \"F32\", not I8"), "{e}");
        let e = refused(
            &ok.replace("[[\\\"w\\\",[4]]]", "[[\\\"w\\\",[5]]]"),
            &[0; 8],
        );
        assert!(e.contains("4 values for 5 tensor values"), "{e}");
        let e = refused(&ok.replace(r#""scales""#, r#""scale""#), &[0; 8]);
        assert!(e.contains("an unexpected tensor scale"), "{e}");
        let e = refused(
            &ok.replace(r#""cohort.codec":"int8""#, r#""cohort.codec":"zip""#),
            &[0; 8],
        );
        assert!(e.contains("unknown codec \"zip\""), "{e}");
        let e = refused(&format!("{{{}}}", meta("int8", "nonsense")), &[]);
        assert!(e.contains("cohort.tensors"), "{e}");
        let huge = format!(
            r#"{{{}}}"#,
            meta("topk", r#"[["w",[4611686018427387904]]]"#)
        );
        let e = refused(&huge, &[]);
        assert!(e.contains("per byte"), "{e}");
        let dup = format!(r#"{{{}}}"#, meta("topk", r#"[["w",[1]],["w",[1]]]"#));
        assert!(refused(&dup, &[]).contains("tensor w appears twice"));

        // Top-k: indices out of order, out of range, a mask with the wrong bits.
        let t = meta("topk", r#"[["w",[100]]]"#);
        let idx = |a: u32, b: u32| {
            let mut d = Vec::new();
            d.extend_from_slice(&1.0f32.to_le_bytes());
            d.extend_from_slice(&2.0f32.to_le_bytes());
            d.extend_from_slice(&a.to_le_bytes());
            d.extend_from_slice(&b.to_le_bytes());
            d
        };
        let h = format!(
            r#"{{{t},"values":{{"dtype":"F32","shape":[2],"data_offsets":[0,8]}},"indices":{{"dtype":"U32","shape":[2],"data_offsets":[8,16]}}}}"#
        );
        let d = decode_update(&raw(&h, &idx(3, 50))).unwrap().0.values;
        assert_eq!(
            (d[3], d[50], d.iter().filter(|x| **x != 0.0).count()),
            (1.0, 2.0, 2)
        );
        assert!(refused(&h, &idx(50, 3)).contains("indices must increase"));
        assert!(refused(&h, &idx(3, 3)).contains("indices must increase"));
        assert!(refused(&h, &idx(3, 100)).contains("index 100 is out of the 100 values"));
        let both = h.replacen(
            r#""indices""#,
            r#""mask":{"dtype":"U8","shape":[13],"data_offsets":[0,13]},"indices""#,
            1,
        );
        assert!(refused(&both, &idx(3, 50)).contains("both a mask and indices"));
        let none =
            format!(r#"{{{t},"values":{{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}}}"#);
        assert!(refused(&none, &idx(3, 50)).contains("neither a mask nor indices"));
        let mask = |bits: &[usize]| {
            let mut d = vec![0u8; 8];
            d[..4].copy_from_slice(&1.0f32.to_le_bytes());
            d[4..].copy_from_slice(&2.0f32.to_le_bytes());
            let mut m = vec![0u8; 13];
            for &b in bits {
                m[b / 8] |= 1 << (b % 8);
            }
            d.extend(m);
            d
        };
        let h = format!(
            r#"{{{t},"values":{{"dtype":"F32","shape":[2],"data_offsets":[0,8]}},"mask":{{"dtype":"U8","shape":[13],"data_offsets":[8,21]}}}}"#
        );
        assert_eq!(
            decode_update(&raw(&h, &mask(&[0, 99]))).unwrap().0.values[99],
            2.0
        );
        assert!(refused(&h, &mask(&[0])).contains("the mask marks 1 values, it holds 2"));
        assert!(refused(&h, &mask(&[0, 1, 2])).contains("marks 3"));
        assert!(refused(&h, &mask(&[0, 101])).contains("mask bits set past the 100 values"));
        // Garbage is refused, never a panic.
        for n in 0..64 {
            let junk: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8).collect();
            assert!(decode_update(&junk).is_err());
        }
    }

    #[test]
    fn malformed_lowrank_blobs_are_refused_by_name() {
        let l = Layout::new(vec![("w".into(), vec![2, 8]), ("b".into(), vec![3])]).unwrap();
        let f32b = |x: &[f32]| x.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
        let u16b = |x: &[u16]| x.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
        let blob = |ranks: &[u16], vals: &[f32]| {
            write(
                UpdateCodec::Lowrank,
                &l,
                vec![
                    ("values", "F32", vec![vals.len()], f32b(vals)),
                    ("ranks", "U16", vec![ranks.len()], u16b(ranks)),
                ],
            )
        };
        let err = |b: Vec<u8>| decode_update(&b).unwrap_err().to_string();
        // w = [2, -1]ᵀ [1; 8] at rank 1, b dense.
        let good: Vec<f32> = [2.0, -1.0]
            .into_iter()
            .chain([1.0; 8])
            .chain([7.0, 8.0, 9.0])
            .collect();
        let d = decode_update(&blob(&[1, 0], &good)).unwrap().0.values;
        assert_eq!(&d[..8], &[2.0; 8]);
        assert_eq!(&d[8..16], &[-1.0; 8]);
        assert_eq!(&d[16..], &[7.0, 8.0, 9.0]);
        let e = err(blob(&[1], &good));
        assert!(e.contains("lowrank blob: 1 ranks for 2 tensors"), "{e}");
        let e = err(blob(&[3, 0], &good));
        assert!(
            e.contains("tensor w of shape [2, 8] has rank 3, more than its 2 can have"),
            "{e}"
        );
        let e = err(blob(&[2, 0], &good));
        assert!(
            e.contains("has rank 2, whose factors are no smaller"),
            "{e}"
        );
        let e = err(blob(&[1, 1], &good));
        assert!(
            e.contains("tensor b of shape [3] has rank 1: only 2-D"),
            "{e}"
        );
        // Truncated factors, or dense values where factors were announced.
        let e = err(blob(&[1, 0], &good[..12]));
        assert!(e.contains("12 values; the ranks call for 13"), "{e}");
        let e = err(blob(&[0, 0], &good));
        assert!(e.contains("13 values; the ranks call for 19"), "{e}");
        let mut x = good.clone();
        x[1] = f32::NAN;
        let e = err(blob(&[1, 0], &x));
        assert!(
            e.contains("tensor w: its U·S factor holds NaN at index 1"),
            "{e}"
        );
        let mut x = good.clone();
        x[4] = f32::INFINITY;
        let e = err(blob(&[1, 0], &x));
        assert!(
            e.contains("tensor w: its V factor holds inf at index 2"),
            "{e}"
        );
        // A non-finite value of a dense tensor is how a diverged update travels: decoded,
        // for validation to refuse by name.
        let mut x = good.clone();
        x[11] = f32::NAN;
        assert!(decode_update(&blob(&[1, 0], &x)).unwrap().0.values[17].is_nan());

        // int8: a scale per factor and per dense tensor.
        let q: Vec<u8> = [2i8, -1]
            .into_iter()
            .chain([1; 8])
            .chain([7, 8, 9])
            .map(|q| q as u8)
            .collect();
        let blob8 = |scales: &[f32], extra: Option<&str>| {
            let mut t = vec![
                ("values", "I8", vec![q.len()], q.clone()),
                ("ranks", "U16", vec![2], u16b(&[1, 0])),
                ("scales", "F32", vec![scales.len()], f32b(scales)),
            ];
            if let Some(name) = extra {
                t.push((name, "U8", vec![1], vec![0]));
            }
            write(UpdateCodec::LowrankInt8, &l, t)
        };
        let d = decode_update(&blob8(&[1.0, 1.0, 0.5], None))
            .unwrap()
            .0
            .values;
        assert_eq!((d[0], d[15], d[18]), (2.0, -1.0, 4.5));
        let e = err(blob8(&[1.0, f32::NAN, 1.0], None));
        assert!(
            e.contains("tensor w: the scale of its V factor is NaN"),
            "{e}"
        );
        let e = err(blob8(&[-1.0, 1.0, 1.0], None));
        assert!(e.contains("the scale of its U·S factor is -1"), "{e}");
        let e = err(blob8(&[f32::MAX, 1.0, 1.0], None));
        assert!(e.contains("its U·S factor holds inf at index 0"), "{e}");
        let e = err(blob8(&[1.0, 1.0], None));
        assert!(e.contains("2 scales; the ranks call for 3"), "{e}");
        let e = err(blob8(&[1.0, 1.0, 1.0], Some("mask")));
        assert!(e.contains("an unexpected tensor mask"), "{e}");
        assert!(
            decode_update(&blob8(&[1.0, 1.0, f32::NAN], None))
                .unwrap()
                .0
                .values[16..]
                .iter()
                .all(|x| x.is_nan())
        );
        // The ranks missing, or of another dtype.
        let e = err(write(
            UpdateCodec::Lowrank,
            &l,
            vec![("values", "F32", vec![13], f32b(&good))],
        ));
        assert!(e.contains("no tensor ranks"), "{e}");
        let e = err(write(
            UpdateCodec::Lowrank,
            &l,
            vec![
                ("values", "F32", vec![13], f32b(&good)),
                ("ranks", "U32", vec![2], u16b(&[1, 0, 0, 0])),
            ],
        ));
        assert!(e.contains("ranks has dtype \"U32\", not U16"), "{e}");
    }

    #[test]
    fn the_codecs_are_deterministic_and_truncations_are_refused() {
        let l = layout();
        let v = values(l.len(), 9);
        for codec in UpdateCodec::ALL.into_iter().skip(1) {
            let c = Compressor::new(codec, 0.25);
            let (blob, _) = c.encode(&l, &v);
            for cut in [1, 7, blob.len() / 2, blob.len() - 1] {
                assert!(decode_update(&blob[..cut]).is_err(), "{codec} cut at {cut}");
            }
        }
    }
}
