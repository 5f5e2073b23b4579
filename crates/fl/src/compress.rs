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
//!
//! `N` is the number of dense values, `T` the number of tensors, `K` the number kept. Int8
//! values are symmetric per tensor: `scale = max |v| / 127`, `q = round(v / scale)`, decoded
//! `q * scale`. Top-k keeps, in every tensor of `n` values, the `ceil(fraction * n)` largest
//! by magnitude (ties to the lower index); which ones is a bitmap (`mask`, bit `i % 8` of byte
//! `i / 8` for flat index `i`) or the sorted flat indices (`indices`), whichever is smaller
//! (the bitmap from about a 3% fraction up). Encoding is canonical: the same values give the
//! same bytes, hence the same hash on the ledger.
//!
//! A value that is not finite is not hidden by the codec: its tensor's scale is written as
//! NaN (int8), or the value kept as it is (top-k), so that validation still refuses the update
//! by the tensor's name.
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
}

impl UpdateCodec {
    /// Its name in configs and blobs (`none`, `int8`, `topk`, `topk-int8`).
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Int8 => "int8",
            Self::Topk => "topk",
            Self::TopkInt8 => "topk-int8",
        }
    }

    fn from_name(s: &str) -> Option<Self> {
        [Self::None, Self::Int8, Self::Topk, Self::TopkInt8]
            .into_iter()
            .find(|c| c.name() == s)
    }

    /// Whether it keeps only a fraction of the values.
    pub fn is_topk(self) -> bool {
        matches!(self, Self::Topk | Self::TopkInt8)
    }

    /// Whether the values travel as bytes.
    pub fn is_int8(self) -> bool {
        matches!(self, Self::Int8 | Self::TopkInt8)
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

/// The metadata key naming the codec.
const CODEC_KEY: &str = "cohort.codec";
/// The metadata key listing the dense tensors.
const TENSORS_KEY: &str = "cohort.tensors";

/// A run's update compression, checked: the codec, top-k's fraction and whether error
/// feedback is on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Compressor {
    codec: UpdateCodec,
    fraction: f64,
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
            feedback: false,
        }
    }

    /// `codec` keeping `fraction` of every tensor's values (top-k codecs; clamped into
    /// `[MIN_TOPK_FRACTION, 1]`, the config's range, NaN read as 1), error feedback on for
    /// the lossy codecs.
    pub fn new(codec: UpdateCodec, fraction: f64) -> Self {
        let fraction = if fraction.is_nan() {
            1.0
        } else {
            fraction.clamp(MIN_TOPK_FRACTION, 1.0)
        };
        Self {
            codec,
            fraction: if codec.is_topk() { fraction } else { 1.0 },
            feedback: codec != UpdateCodec::None,
        }
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
/// sent, zeros elsewhere). Errors name what is wrong: an unknown codec, a missing, extra or
/// misshapen tensor, an index out of range or out of order, a mask with the wrong number of
/// bits, a claimed size out of proportion to the blob.
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
    let f32s = |b: &[u8]| -> Vec<f32> {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
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
        for codec in [
            UpdateCodec::None,
            UpdateCodec::Int8,
            UpdateCodec::Topk,
            UpdateCodec::TopkInt8,
        ] {
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
            }
        }
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
        for codec in [UpdateCodec::Int8, UpdateCodec::Topk, UpdateCodec::TopkInt8] {
            let (blob, _) = Compressor::new(codec, 0.1).encode(&l, &v);
            let d = decode_update(&blob).unwrap().0;
            assert!(d.values[100..220].iter().any(|x| x.is_nan()), "{codec}");
            assert!(d.values[..100].iter().all(|x| x.is_finite()), "{codec}");
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
    fn the_codecs_are_deterministic_and_truncations_are_refused() {
        let l = layout();
        let v = values(l.len(), 9);
        for codec in [UpdateCodec::Int8, UpdateCodec::Topk, UpdateCodec::TopkInt8] {
            let c = Compressor::new(codec, 0.25);
            let (blob, _) = c.encode(&l, &v);
            for cut in [1, 7, blob.len() / 2, blob.len() - 1] {
                assert!(decode_update(&blob[..cut]).is_err(), "{codec} cut at {cut}");
            }
        }
    }
}
