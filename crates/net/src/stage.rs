//! Stage servers (docs/pipeline.md): the gRPC protocol of `proto/cohort/stage/v1/stage.proto`
//! between a client that holds a model's embeddings, head and adapter and the servers that
//! each hold a contiguous range of its transformer layers.
//!
//! This module is the network side only. What a server computes is behind [`StageCompute`]
//! (implemented with cohort-model's stage passes by the `cohort serve-layers` command), so
//! that this crate does not depend on the model library; [`StageClient`] is the client's
//! blocking handle on one server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};

use cohort_core::{Identity, PublicKey};
use sha2::{Digest as _, Sha256};

use crate::NetError;
use crate::stage_pb as pb;
use crate::stage_pb::stage_client::StageClient as GrpcClient;
use crate::stage_pb::stage_server::{Stage, StageServer};

/// The stage protocol's version (3: custom stream codecs, answers without the first stage's
/// input gradient, servers' compute kinds).
pub const STAGE_PROTOCOL_VERSION: u32 = 3;

/// The longest compute kind a server may announce, in bytes.
const MAX_COMPUTE_KIND: usize = 256;

/// The largest message either side takes: a stream of 64 MiB (for example 16 sequences of
/// 1,024 tokens of width 1,024 in f32).
pub const MAX_STAGE_MESSAGE: usize = 64 << 20;

/// What a server holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageInfo {
    /// SHA-256 of the model's files as the server read them.
    pub model_sha256: [u8; 32],
    /// Its layers, `first..end`.
    pub layers: std::ops::Range<usize>,
    /// The stream's width.
    pub width: usize,
    /// The model's number of layers.
    pub total_layers: usize,
    /// The server's ed25519 public key, which signs its answers (`None`: it has no key).
    pub public_key: Option<PublicKey>,
    /// The rank of the SVD factors its layers' weights are replaced by (0: none).
    pub svd_rank: usize,
    /// What its recomputation bit for bit depends on besides the inputs (build, architecture,
    /// instruction sets): verifiers must be of the kind of the servers they check.
    pub compute_kind: String,
    /// The SHA-256 of the model's stream bases it holds (`None`: none), which codecs with
    /// stream bases need: a client and its servers must hold the same.
    pub stream_bases: Option<Digest>,
}

/// A tensor by name, its values.
pub type Named = Vec<(String, Vec<f32>)>;

/// One forward call.
#[derive(Debug, Clone)]
pub struct ForwardCall {
    /// The client's session.
    pub session: u64,
    /// The step within it.
    pub step: u64,
    /// Sequences.
    pub batch: usize,
    /// Tokens per sequence.
    pub tokens: usize,
    /// The stream entering the first layer.
    pub stream: Vec<f32>,
    /// The adapter weights of the server's layers.
    pub adapter: Named,
    /// The adapter's dropout key, when training with dropout.
    pub dropout_key: Option<u64>,
    /// The adapter's configuration (PEFT's adapter_config.json, as JSON).
    pub adapter_config: Option<String>,
    /// Empty for a call to serve. Otherwise a verifier's recomputation of these rows
    /// (sequences) of a call of `batch` rows, whose inputs `stream` then holds: nothing is
    /// kept for a backward, and only the rows' commitments are answered.
    pub rows: Vec<usize>,
    /// Inference (evaluation, generation): nothing is kept for a backward; without an adapter
    /// configuration and weights the layers run without an adapter.
    pub inference: bool,
    /// How its streams and its backward's travel ([`COMPRESSION_NONE`],
    /// [`COMPRESSION_INT8`]); with int8, `stream` should already be rounded
    /// ([`int8_round`]), as the server will see it.
    pub compression: u32,
    /// `stream` as another server sent it, under `compression` for this boundary: sent as it
    /// is rather than encoded again (every codec is exact on what it decodes to, so these are
    /// the bytes encoding `stream` gives, and the server decodes what the client holds).
    /// Ignored for a verifier's call, whose stream holds some rows only.
    pub wire: Option<Arc<Vec<u8>>>,
}

/// A SHA-256 digest.
pub type Digest = [u8; 32];

/// The widest stream a server may announce: codecs keep per-channel state of this size.
pub const MAX_STAGE_WIDTH: usize = crate::rangecode::MAX_WIDTH;

/// Streams as little-endian f32 ([`ForwardCall::compression`]).
pub const COMPRESSION_NONE: u32 = 0;
/// Streams and gradients as int8 rows (127 steps each side of zero, a power-of-two scale a
/// row): about a quarter of the bytes.
pub const COMPRESSION_INT8: u32 = 1;
/// Streams and gradients as 4-bit rows (7 steps each side of zero), entropy-coded (deflate's
/// Huffman codes, no matches): about a tenth of the bytes.
pub const COMPRESSION_INT4: u32 = 2;
/// Streams as 5-bit rows (15 steps), gradients as 3-bit rows (3 steps) rounded
/// stochastically (unbiased, from a seed both sides derive: [`grad_seed`]), both
/// entropy-coded: about a tenth of the bytes, spent where the loss needs them.
pub const COMPRESSION_INT5_3: u32 = 3;

/// The compressions by name, as the command line takes them.
pub const COMPRESSIONS: [(&str, u32); 4] = [
    ("none", COMPRESSION_NONE),
    ("int8", COMPRESSION_INT8),
    ("int4", COMPRESSION_INT4),
    ("int5-3", COMPRESSION_INT5_3),
];

/// Which way a stream travels: the forward's activations, or the backward's gradients.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Way<'a> {
    /// Activations, at a boundary whose basis (a codec with stream bases needs it) is given.
    Forward(Option<&'a StreamBasis>),
    /// Gradients; stochastic rounding (where the compression has it) draws from this seed
    /// ([`grad_seed`]).
    Backward(u64),
}

/// How one compression quantises: steps each side of zero for activations and for gradients,
/// whether gradients round stochastically, whether the bytes are entropy-coded.
#[derive(Debug, Clone, Copy)]
struct Codec {
    forward: i8,
    backward: i8,
    stochastic: bool,
    huffman: bool,
    /// Range-coded with adaptive per-channel statistics ([`crate::rangecode`]) in place of
    /// Huffman codes.
    range: bool,
    /// Activations travel as their coefficients in the boundary's [`StreamBasis`] (the
    /// model's `stream_bases.safetensors`), not channel by channel.
    basis: bool,
    /// Gradients take one scale for the whole call (each row's exponent byte then the same),
    /// not one a row: the rows of small gradients cost few bits.
    call_scale: bool,
}

/// The codec of `compression` (`None` for f32 or an unknown compression).
fn codec(compression: u32) -> Option<Codec> {
    let (forward, backward, stochastic, huffman, call_scale, range, basis) = match compression {
        COMPRESSION_INT8 => (127, 127, false, false, false, false, false),
        COMPRESSION_INT4 => (7, 7, false, true, false, false, false),
        COMPRESSION_INT5_3 => (15, 3, true, true, false, false, false),
        c if c & 0xff == COMPRESSION_CUSTOM => {
            let forward = ((c >> 8) & 0xff) as u8;
            let backward = ((c >> 16) & 0xff) as u8;
            let flags = c >> 24;
            let steps = |s: u8| s % 2 == 1 && s <= 127;
            if !steps(forward) || !steps(backward) || flags & !15 != 0 {
                return None;
            }
            (
                forward as i8,
                backward as i8,
                flags & 1 != 0,
                flags & 4 == 0,
                flags & 2 != 0,
                flags & 4 != 0,
                flags & 8 != 0,
            )
        }
        _ => return None,
    };
    Some(Codec {
        forward,
        backward,
        stochastic,
        huffman,
        range,
        basis,
        call_scale,
    })
}

/// The low byte of a custom compression ([`custom_compression`]).
pub const COMPRESSION_CUSTOM: u32 = 4;

/// A compression of activations in `forward` steps each side of zero (a scale a row) and
/// gradients in `backward` steps, rounded `stochastic`ally or to the nearest, with a scale a
/// row or, `call_scale`, one for the whole call; entropy-coded, with Huffman codes or, `range`,
/// an adaptive range coder; activations as they are or, `basis`, as coefficients in the
/// model's stream bases ([`StreamBases`]). Steps must be odd, in [1, 127] (an odd count keeps a
/// rounded row's scale: its largest value rounds to more than half the steps). `int4` is 7
/// and 7 to the nearest, `int5-3` 15 and 3 stochastic.
///
/// # Errors
/// Steps that are even, zero or above 127.
pub fn custom_compression(
    forward: u32,
    backward: u32,
    stochastic: bool,
    call_scale: bool,
    range: bool,
    basis: bool,
) -> Result<u32, String> {
    for (what, s) in [("activations", forward), ("gradients", backward)] {
        if s % 2 == 0 || s > 127 {
            return Err(format!(
                "{s} steps for {what}: expected an odd number in [1, 127]"
            ));
        }
    }
    Ok(COMPRESSION_CUSTOM
        | forward << 8
        | backward << 16
        | u32::from(stochastic) << 24
        | u32::from(call_scale) << 25
        | u32::from(range) << 26
        | u32::from(basis) << 27)
}

/// Whether `compression` sends activations in the model's stream bases ([`StreamBases`]).
pub fn uses_stream_bases(compression: u32) -> bool {
    codec(compression).is_some_and(|c| c.basis)
}

impl Codec {
    /// Whether `way`'s stream takes one scale for the whole call.
    fn one_scale(self, way: Way<'_>) -> bool {
        self.call_scale && matches!(way, Way::Backward(_))
    }

    fn steps(self, way: Way<'_>) -> i8 {
        match way {
            Way::Forward(_) => self.forward,
            Way::Backward(_) => self.backward,
        }
    }
}

/// The seed of the stochastic rounding of the gradient a backward sends down from layer
/// `layer` (the first layer of the server that computed it; the model's layer count for the
/// head's, which the client computes) at `step`, given the gradient `grad` that came in (the
/// head's own for the head): the server, its verifiers (which answer under a session of their
/// own) and a replay derive the same one.
///
/// It hashes the whole gradient: derive it only where the compression rounds stochastically
/// ([`rounds_stochastically`]).
pub fn grad_seed(step: u64, layer: usize, grad: &[f32]) -> u64 {
    let mut h = Sha256::new();
    h.update(b"cohort/stage/grad-rounding");
    h.update(step.to_be_bytes());
    h.update((layer as u64).to_be_bytes());
    for v in grad {
        h.update(v.to_le_bytes());
    }
    let d = h.finalize();
    u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// Whether `compression` rounds gradients stochastically (and so needs [`grad_seed`]).
pub fn rounds_stochastically(compression: u32) -> bool {
    codec(compression).is_some_and(|c| c.stochastic)
}

/// The exponent of the power-of-two scale of a row whose largest magnitude is `max` with
/// `steps` steps each side of zero: the smallest `e` with `max / 2^e <= steps`, within what an
/// `i8` holds (and at least -126, so that `2^e` is a normal f32).
fn exponent(max: f32, steps: i8) -> i8 {
    if max <= 0.0 || !max.is_finite() {
        return 0;
    }
    let e = (f64::from(max) / f64::from(steps)).log2().ceil();
    e.clamp(-126.0, 127.0) as i8
}

/// `values`, rows of `width`, quantised to `steps` steps each side of zero: for each row, the
/// exponent `e` of its scale `2^e` (one signed byte) and each value divided by the scale,
/// rounded, within [-steps, steps] (`width` signed bytes). A power-of-two scale makes the
/// encoding exact on what it decodes to, so that a stream rounded once ([`round_stream`])
/// travels again unchanged (a replayed or recomputed call gives the same bits).
fn quant_rows(values: &[f32], width: usize, steps: i8, one_scale: bool) -> Vec<u8> {
    let width = width.max(1);
    let s = f32::from(steps);
    let all = values.iter().fold(0f32, |m, v| m.max(v.abs()));
    let mut out = Vec::with_capacity(values.len() + values.len() / width + 1);
    for row in values.chunks(width) {
        let max = if one_scale {
            all
        } else {
            row.iter().fold(0f32, |m, v| m.max(v.abs()))
        };
        let e = exponent(max, steps);
        let scale = 2f32.powi(i32::from(e));
        out.push(e as u8);
        out.extend(
            row.iter()
                .map(|v| ((v / scale).round().clamp(-s, s) as i8) as u8),
        );
    }
    out
}

/// The values [`quant_rows`] quantised, rows of `width`.
fn dequant_rows(bytes: &[u8], width: usize, steps: i8) -> Result<Vec<f32>, String> {
    if width == 0 || !bytes.len().is_multiple_of(width + 1) {
        return Err(format!(
            "{} bytes is not a whole number of quantised rows of {width} values",
            bytes.len()
        ));
    }
    let mut out = Vec::with_capacity(bytes.len() / (width + 1) * width);
    for row in bytes.chunks(width + 1) {
        let e = row[0] as i8;
        if !(-126..=127).contains(&e) {
            return Err(format!("a row's scale exponent {e} is out of range"));
        }
        let scale = 2f32.powi(i32::from(e));
        if !(f32::from(steps) * scale).is_finite() {
            return Err(format!(
                "a row's scale 2^{e} overflows f32 at {steps} steps"
            ));
        }
        for &q in &row[1..] {
            let q = q as i8;
            if q < -steps || q > steps {
                return Err(format!("a value of {q} steps, beyond the {steps} allowed"));
            }
            out.push(f32::from(q) * scale);
        }
    }
    Ok(out)
}

/// Deflate with Huffman codes only (no matches): an order-0 entropy coder, fast, and at most
/// 8 decoded bytes per encoded byte, so that decoding can be bounded by the input.
fn huffman(bytes: &[u8]) -> Vec<u8> {
    use miniz_oxide::deflate::core::{
        CompressionStrategy, CompressorOxide, TDEFLFlush, TDEFLStatus, compress,
        create_comp_flags_from_zip_params,
    };
    let flags = create_comp_flags_from_zip_params(1, 0, CompressionStrategy::HuffmanOnly as i32);
    let mut c = CompressorOxide::new(flags);
    let mut out = vec![0u8; bytes.len() / 2 + 64];
    let (mut input, mut at) = (bytes, 0);
    loop {
        let (status, read, wrote) = compress(&mut c, input, &mut out[at..], TDEFLFlush::Finish);
        at += wrote;
        input = &input[read.min(input.len())..];
        match status {
            TDEFLStatus::Done => break,
            TDEFLStatus::Okay => {
                if out.len() - at < 64 {
                    out.resize(out.len() * 2, 0);
                }
            }
            // The compressor only fails on bad parameters, which these are not; keep the
            // bytes as they are rather than lose them (the decoder refuses them by name).
            _ => return bytes.to_vec(),
        }
    }
    out.truncate(at);
    out
}

/// What [`huffman`] encoded, at most 8 bytes for each byte given (what Huffman codes of at
/// least one bit allow) and at most `limit`.
fn unhuffman(bytes: &[u8], limit: usize) -> Result<Vec<u8>, String> {
    let bound = bytes.len().saturating_mul(8).saturating_add(64).min(limit);
    miniz_oxide::inflate::decompress_to_vec_with_limit(bytes, bound).map_err(|e| {
        format!(
            "not a deflate stream of at most {bound} bytes decoded ({:?})",
            e.status
        )
    })
}

/// `values` (rows of `width`) as they arrive once sent `way` under `compression`: decoded
/// from their encoding (unchanged for f32).
///
/// Gradients of a stochastic codec round each value down or up with the probability that
/// keeps it unbiased, from `way`'s seed and the value's place, except each row's largest
/// magnitude, which rounds to the nearest step: that keeps the row's scale, so that the result
/// travels again unchanged ([`encode_stream`] is exact on it).
///
/// # Errors
/// The compression codes activations in stream bases and `way` has none, or one of another
/// width.
pub fn round_stream(
    values: &mut [f32],
    width: usize,
    compression: u32,
    way: Way<'_>,
) -> Result<(), String> {
    let Some(c) = codec(compression) else {
        return Ok(());
    };
    if let (Way::Forward(basis), true) = (way, c.basis) {
        let basis = needs_basis(basis, width)?;
        let q = quant_coeffs(values, basis, c.forward)?;
        let back = dequant_coeffs(&q, basis, c.forward)?;
        values.copy_from_slice(&back);
        return Ok(());
    }
    let steps = c.steps(way);
    let seed = match way {
        Way::Backward(seed) if c.stochastic => Some(seed),
        _ => None,
    };
    let width = width.max(1);
    let s = f32::from(steps);
    let largest = |row: &[f32]| {
        row.iter().enumerate().fold(
            (0, 0f32),
            |(i, m), (j, v)| {
                if v.abs() > m { (j, v.abs()) } else { (i, m) }
            },
        )
    };
    // With one scale for the call, the call's largest value (its first place) keeps it.
    let (all_at, all_max) = largest(values);
    let one = c.one_scale(way);
    for (r, row) in values.chunks_mut(width).enumerate() {
        let (at, max) = if one {
            match all_at.checked_sub(r * width) {
                Some(j) if j < row.len() => (j, all_max),
                _ => (usize::MAX, all_max),
            }
        } else {
            largest(row)
        };
        let scale = 2f32.powi(i32::from(exponent(max, steps)));
        let mut draws = seed.map(|seed| {
            cohort_core::SplitMix64::new(seed ^ (r as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
        });
        for (j, v) in row.iter_mut().enumerate() {
            let x = *v / scale;
            let q = match &mut draws {
                Some(d) => {
                    // One draw per value, in order, whatever is rounded.
                    let u = (d.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
                    if j == at {
                        x.round()
                    } else {
                        x.signum() * (x.abs() + u).floor()
                    }
                }
                None => x.round(),
            };
            // Through the byte, as decoding gives it (-0.0 becomes 0.0).
            let q = q.clamp(-s, s) as i8;
            *v = f32::from(q) * scale;
        }
    }
    Ok(())
}

/// The basis a codec with stream bases codes a boundary's activations in.
fn needs_basis(basis: Option<&StreamBasis>, width: usize) -> Result<&StreamBasis, String> {
    let b = basis.ok_or(
        "this compression sends activations in the model's stream bases, and this boundary \
         has none (`cohort model calibrate` writes them)",
    )?;
    if b.width() != width {
        return Err(format!(
            "a stream basis of width {} for a stream of width {width}",
            b.width()
        ));
    }
    Ok(b)
}

/// Rows of `values` as their coefficients in `basis`, each row quantised to `steps` steps
/// each side of zero with a power-of-two scale, as [`quant_rows`] lays them out.
///
/// Exact on what it decodes to ([`dequant_coeffs`]): decoded values give their coefficients
/// back within rounding errors far below half a step, so they round to the same steps, and the
/// scale is chosen with a margin (2^-12 of it) so that a row's largest coefficient, a whole
/// number of steps, keeps it. A step is never below 2^-14 of the mean's largest magnitude
/// ([`StreamBasis::least_exponent`]): subtracting the mean costs rounding errors of that
/// order, which must stay under half a step for a row that barely differs from the mean.
fn quant_coeffs(values: &[f32], basis: &StreamBasis, steps: i8) -> Result<Vec<u8>, String> {
    let w = basis.width();
    if !values.len().is_multiple_of(w) {
        return Err(format!(
            "{} values is not a whole number of rows of {w}",
            values.len()
        ));
    }
    let s = f32::from(steps);
    let mut all = vec![0f32; values.len()];
    basis.coefficients_rows(values, &mut all);
    let mut out = Vec::with_capacity(values.len() + values.len() / w);
    for z in all.chunks_exact(w) {
        let max = z.iter().fold(0f32, |m, v| m.max(v.abs()));
        // A row of zeros takes the least step too (0 without one), as it decodes to the mean
        // and comes back as zeros.
        let natural = match max > 0.0 {
            true => exponent(max * (1.0 - 1.0 / 4096.0), steps),
            false => i8::MIN,
        };
        let e = match natural.max(basis.least_exponent) {
            i8::MIN => 0,
            e => e,
        };
        let scale = 2f32.powi(i32::from(e));
        out.push(e as u8);
        out.extend(
            z.iter()
                .map(|v| ((v / scale).round().clamp(-s, s) as i8) as u8),
        );
    }
    Ok(out)
}

/// The values whose coefficients [`quant_coeffs`] quantised.
fn dequant_coeffs(bytes: &[u8], basis: &StreamBasis, steps: i8) -> Result<Vec<f32>, String> {
    let z = dequant_rows(bytes, basis.width(), steps)?;
    let mut x = vec![0f32; z.len()];
    basis.values_rows(&z, &mut x);
    if x.iter().any(|v| !v.is_finite()) {
        return Err("a row's coefficients overflow f32 in the stream basis".into());
    }
    Ok(x)
}

/// An orthonormal basis of a stream boundary's activations, and their mean: a codec with
/// stream bases sends each row `x` as `V (x - mean)`, whose first coefficients hold most of
/// its energy (a transformer's residual stream lies mostly in a few directions), so that the
/// same steps cost far fewer bits than channel by channel.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamBasis {
    mean: Vec<f32>,
    /// `width × width`, row-major: row `i` is the `i`-th basis vector.
    vectors: Vec<f32>,
    /// The exponent of the smallest step a row's coefficients take: that of 2^-14 of the
    /// mean's largest magnitude (`i8::MIN`, none, for a zero mean).
    least_exponent: i8,
}

/// Largest difference allowed between `VᵀV p` and `p` for a probe `p` of unit entries.
const ORTHONORMAL_TOLERANCE: f32 = 1e-3;

impl StreamBasis {
    /// The basis of rows `vectors` (`width × width`, row-major) around `mean`.
    ///
    /// # Errors
    /// Shapes that disagree, a value that is not finite, or vectors that are not orthonormal
    /// (probed: `VᵀV p = p` for four pseudo-random probes `p`), which would not decode to what
    /// was coded.
    pub fn new(mean: Vec<f32>, vectors: Vec<f32>) -> Result<Self, String> {
        let w = mean.len();
        if w == 0 || vectors.len() != w.saturating_mul(w) {
            return Err(format!(
                "a basis of {} values for a mean of {w}: expected {w} x {w}",
                vectors.len()
            ));
        }
        if mean.iter().chain(&vectors).any(|v| !v.is_finite()) {
            return Err("a value that is not finite".into());
        }
        let top = mean.iter().fold(0f32, |m, v| m.max(v.abs()));
        let least_exponent = match top > 0.0 {
            true => (f64::from(top) / 16384.0)
                .log2()
                .ceil()
                .clamp(-126.0, 127.0) as i8,
            false => i8::MIN,
        };
        let b = Self {
            mean,
            vectors,
            least_exponent,
        };
        let mut draws = cohort_core::SplitMix64::new(0x5eed_ba5e);
        let (mut z, mut back) = (vec![0f32; w], vec![0f32; w]);
        for _ in 0..4 {
            let p: Vec<f32> = (0..w)
                .map(|_| if draws.next_u64() & 1 == 0 { 1.0 } else { -1.0 })
                .collect();
            matvec(&b.vectors, &p, &mut z);
            back.fill(0.0);
            for (zi, v) in z.iter().zip(b.vectors.chunks_exact(w)) {
                axpy(*zi, v, &mut back);
            }
            let off = back
                .iter()
                .zip(&p)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            if off > ORTHONORMAL_TOLERANCE || off.is_nan() {
                return Err(format!(
                    "its vectors are not orthonormal (VᵀV p differs from p by {off})"
                ));
            }
        }
        Ok(b)
    }

    /// The stream's width.
    pub fn width(&self) -> usize {
        self.mean.len()
    }

    /// The coefficients of `row` (`width`) into `out`.
    #[cfg(test)]
    fn coefficients(&self, row: &[f32], out: &mut [f32]) {
        let d: Vec<f32> = row.iter().zip(&self.mean).map(|(x, m)| x - m).collect();
        matvec(&self.vectors, &d, out);
    }

    /// The coefficients of every row of `rows` (each `width`) into `out`, the same bits as
    /// [`Self::coefficients`] row by row: four rows a pass over the vectors, each row's sums
    /// in the same order.
    fn coefficients_rows(&self, rows: &[f32], out: &mut [f32]) {
        let w = self.width();
        let d: Vec<f32> = rows
            .chunks_exact(w)
            .flat_map(|row| row.iter().zip(&self.mean).map(|(x, m)| x - m))
            .collect();
        for (x, o) in d.chunks(4 * w).zip(out.chunks_mut(4 * w)) {
            let xs: Vec<&[f32]> = x.chunks_exact(w).collect();
            match (&xs[..], o.len() / w) {
                (&[a, b, c, e], 4) => {
                    let (o0, rest) = o.split_at_mut(w);
                    let (o1, rest) = rest.split_at_mut(w);
                    let (o2, o3) = rest.split_at_mut(w);
                    matvec4(&self.vectors, [a, b, c, e], [o0, o1, o2, o3]);
                }
                _ => {
                    for (xr, or) in x.chunks_exact(w).zip(o.chunks_exact_mut(w)) {
                        matvec(&self.vectors, xr, or);
                    }
                }
            }
        }
    }

    /// The row of coefficients `z` into `out`.
    #[cfg(test)]
    fn values(&self, z: &[f32], out: &mut [f32]) {
        out.copy_from_slice(&self.mean);
        let w = self.width();
        for (zi, v) in z.iter().zip(self.vectors.chunks_exact(w)) {
            if *zi != 0.0 {
                axpy(*zi, v, out);
            }
        }
    }

    /// The rows of coefficients `z` (each `width`) into `out`, the same bits as
    /// [`Self::values`] row by row: each vector read once for four rows, each row's sums in
    /// the same order.
    fn values_rows(&self, z: &[f32], out: &mut [f32]) {
        let w = self.width();
        for (zs, os) in z.chunks(4 * w).zip(out.chunks_mut(4 * w)) {
            for o in os.chunks_exact_mut(w) {
                o.copy_from_slice(&self.mean);
            }
            for (i, v) in self.vectors.chunks_exact(w).enumerate() {
                for (zr, o) in zs.chunks_exact(w).zip(os.chunks_exact_mut(w)) {
                    if zr[i] != 0.0 {
                        axpy(zr[i], v, o);
                    }
                }
            }
        }
    }
}

/// [`matvec`] of four vectors `x` at once, into four `out`s: each the same bits as alone.
fn matvec4(m: &[f32], x: [&[f32]; 4], out: [&mut [f32]; 4]) {
    let w = x[0].len();
    let rr = w / 8 * 8;
    let [o0, o1, o2, o3] = out;
    for (i, row) in m.chunks_exact(w).enumerate() {
        let mut acc = [[0f32; 8]; 4];
        for (j, r) in row.chunks_exact(8).enumerate() {
            for (a, xs) in acc.iter_mut().zip(&x) {
                let c = &xs[j * 8..j * 8 + 8];
                for k in 0..8 {
                    a[k] += r[k] * c[k];
                }
            }
        }
        let mut sums = [0f32; 4];
        for ((s, a), xs) in sums.iter_mut().zip(&acc).zip(&x) {
            let mut sum = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
            for (p, q) in row[rr..].iter().zip(&xs[rr..]) {
                sum += p * q;
            }
            *s = sum;
        }
        o0[i] = sums[0];
        o1[i] = sums[1];
        o2[i] = sums[2];
        o3[i] = sums[3];
    }
}

/// `out[i] = m[i] · x` for the rows of `m` (row-major, rows of `x.len()`): eight running sums
/// a row, added in a fixed order, so that the result is the same bits wherever this build
/// runs on this kind of CPU.
fn matvec(m: &[f32], x: &[f32], out: &mut [f32]) {
    for (o, row) in out.iter_mut().zip(m.chunks_exact(x.len())) {
        let mut acc = [0f32; 8];
        let (rc, rr) = (row.chunks_exact(8), row.len() / 8 * 8);
        for (r, c) in rc.zip(x.chunks_exact(8)) {
            for k in 0..8 {
                acc[k] += r[k] * c[k];
            }
        }
        let mut sum =
            ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
        for (a, b) in row[rr..].iter().zip(&x[rr..]) {
            sum += a * b;
        }
        *o = sum;
    }
}

/// `out += a · v`.
fn axpy(a: f32, v: &[f32], out: &mut [f32]) {
    for (o, x) in out.iter_mut().zip(v) {
        *o += a * x;
    }
}

/// The stream bases of a model's boundaries (`stream_bases.safetensors`, written by `cohort
/// model calibrate`): boundary `b` is the stream entering layer `b` (the model's layer count:
/// the stream entering the head). Servers and clients must hold the same ([`Self::sha256`],
/// compared at [`StageClient::info`]).
#[derive(Debug, Clone)]
pub struct StreamBases {
    sha256: Digest,
    boundaries: std::collections::BTreeMap<usize, StreamBasis>,
}

impl StreamBases {
    /// Bases by boundary, whose file's SHA-256 is `sha256`.
    pub fn new(sha256: Digest, boundaries: std::collections::BTreeMap<usize, StreamBasis>) -> Self {
        Self { sha256, boundaries }
    }

    /// The SHA-256 of the file they were read from.
    pub fn sha256(&self) -> Digest {
        self.sha256
    }

    /// The basis of the stream entering layer `boundary`.
    pub fn get(&self, boundary: usize) -> Option<&StreamBasis> {
        self.boundaries.get(&boundary)
    }
}

/// A stream's bytes on the wire, sent `way` under `compression` (rows of `width`).
///
/// # Errors
/// As [`round_stream`].
pub fn encode_stream(
    values: &[f32],
    width: usize,
    compression: u32,
    way: Way<'_>,
) -> Result<Vec<u8>, String> {
    Ok(match codec(compression) {
        Some(c) => {
            let steps = c.steps(way);
            let q = match (way, c.basis) {
                (Way::Forward(b), true) => quant_coeffs(values, needs_basis(b, width)?, steps)?,
                _ => quant_rows(values, width, steps, c.one_scale(way)),
            };
            entropy_code(c, q, width, steps)
        }
        None => bytes(values),
    })
}

/// Quantised rows `q` as `c` sends them.
fn entropy_code(c: Codec, q: Vec<u8>, width: usize, steps: i8) -> Vec<u8> {
    if c.range {
        crate::rangecode::encode(&q, width, steps as u8)
    } else if c.huffman {
        huffman(&q)
    } else {
        q
    }
}

/// [`round_stream`] then [`encode_stream`] of what it rounded, the same bytes, with the
/// coefficients of a codec with stream bases computed once instead of twice.
///
/// # Errors
/// As [`round_stream`].
pub fn round_and_encode(
    values: &mut [f32],
    width: usize,
    compression: u32,
    way: Way<'_>,
) -> Result<Vec<u8>, String> {
    match (codec(compression), way) {
        (Some(c), Way::Forward(b)) if c.basis => {
            let basis = needs_basis(b, width)?;
            let q = quant_coeffs(values, basis, c.forward)?;
            values.copy_from_slice(&dequant_coeffs(&q, basis, c.forward)?);
            Ok(entropy_code(c, q, width, c.forward))
        }
        _ => {
            round_stream(values, width, compression, way)?;
            encode_stream(values, width, compression, way)
        }
    }
}

/// The values of a stream's bytes, sent `way` under `compression` (rows of `width`).
///
/// # Errors
/// The bytes are not such a stream, or would decode to more than [`MAX_STAGE_VALUES`] values.
pub fn decode_stream_values(
    b: &[u8],
    width: usize,
    compression: u32,
    way: Way<'_>,
) -> Result<Vec<f32>, String> {
    match (compression, codec(compression)) {
        (COMPRESSION_NONE, _) => {
            if !b.len().is_multiple_of(4) {
                return Err(format!("{} bytes is not a whole number of f32", b.len()));
            }
            Ok(b.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect())
        }
        // A verifier's answer carries no stream: no bytes, no rows.
        (_, Some(_)) if b.is_empty() => Ok(Vec::new()),
        (_, Some(c)) => {
            let steps = c.steps(way);
            let q = if c.range {
                crate::rangecode::decode(b, width, steps as u8, MAX_STAGE_VALUES)?
            } else if c.huffman {
                let limit = MAX_STAGE_VALUES.saturating_mul(width + 1) / width.max(1);
                unhuffman(b, limit)?
            } else {
                b.to_vec()
            };
            match (way, c.basis) {
                (Way::Forward(basis), true) => {
                    dequant_coeffs(&q, needs_basis(basis, width)?, steps)
                }
                _ => dequant_rows(&q, width, steps),
            }
        }
        (c, None) => Err(format!(
            "compression {c}: this build knows {}",
            COMPRESSIONS
                .iter()
                .map(|(n, c)| format!("{c} ({n})"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// The most values a decoded stream may hold: a stream of [`MAX_STAGE_MESSAGE`] bytes as f32.
pub const MAX_STAGE_VALUES: usize = MAX_STAGE_MESSAGE / 4;

/// A stream from the wire under `compression`.
fn decode_stream(
    b: &[u8],
    width: usize,
    compression: u32,
    way: Way<'_>,
    what: &str,
) -> Result<Vec<f32>, Status> {
    decode_stream_values(b, width, compression, way)
        .map_err(|e| Status::invalid_argument(format!("{what}: {e}")))
}

/// A server's answer to a forward call: the stream (empty from a verifier) and its commitment,
/// the SHA-256 of each row of the output, signed when the server has a key.
#[derive(Debug, Clone)]
pub struct Forwarded {
    /// The stream leaving the server's last layer.
    pub stream: Vec<f32>,
    /// SHA-256 of each row (sequence) of it.
    pub row_sha256: Vec<Digest>,
    /// The digest of the call answered ([`call_digest`]).
    pub call: Digest,
    /// The server's signature over [`commitment_message`], checked against its key.
    pub signature: Option<[u8; 64]>,
    /// The stream's bytes on the wire, sent and received, as encoded.
    pub wire_bytes: u64,
    /// The stream as it came (empty from a verifier): what the next server is sent
    /// ([`ForwardCall::wire`]).
    pub wire: Vec<u8>,
}

/// The digest of what a forward call asks of a server holding `info`'s layers: the model,
/// the layers, the session and step, the batch shape, the stream in, the adapter (names and
/// values in the order sent), its configuration, the dropout key, the rows (for a
/// verifier's call), the compression and, for a codec with stream bases, the bases' hash.
pub fn call_digest(info: &StageInfo, call: &ForwardCall) -> Digest {
    let mut h = Sha256::new();
    h.update(b"cohort-stage-call-v1");
    h.update(info.model_sha256);
    for n in [
        info.layers.start,
        info.layers.end,
        info.svd_rank,
        call.batch,
        call.tokens,
        call.adapter.len(),
        call.rows.len(),
    ] {
        h.update((n as u64).to_be_bytes());
    }
    h.update(call.session.to_be_bytes());
    h.update(call.step.to_be_bytes());
    let mut stream = Sha256::new();
    for x in &call.stream {
        stream.update(x.to_le_bytes());
    }
    h.update(stream.finalize());
    for (name, values) in &call.adapter {
        h.update((name.len() as u64).to_be_bytes());
        h.update(name.as_bytes());
        h.update((values.len() as u64).to_be_bytes());
        for x in values {
            h.update(x.to_le_bytes());
        }
    }
    match call.dropout_key {
        None => h.update([0u8]),
        Some(k) => {
            h.update([1u8]);
            h.update(k.to_be_bytes());
        }
    }
    let config = call.adapter_config.as_deref().unwrap_or_default();
    h.update((config.len() as u64).to_be_bytes());
    h.update(config.as_bytes());
    for &r in &call.rows {
        h.update((r as u64).to_be_bytes());
    }
    h.update([u8::from(call.inference)]);
    h.update(call.compression.to_be_bytes());
    // The bases a codec with stream bases codes in (other codecs' digests are as before).
    if uses_stream_bases(call.compression) {
        h.update(info.stream_bases.unwrap_or_default());
    }
    h.finalize().into()
}

/// A server's answer to a backward call, signed when the server has a key.
#[derive(Debug, Clone)]
pub struct Backwarded {
    /// The gradient of the stream the forward was given.
    pub dx: Vec<f32>,
    /// The adapter weights' gradients.
    pub grads: Named,
    /// What the server signs ([`backward_digest`]).
    pub digest: Digest,
    /// Its signature over `digest`, checked against its key.
    pub signature: Option<[u8; 64]>,
    /// The gradients' bytes on the wire (in and out), as encoded.
    pub wire_bytes: u64,
}

/// What a server signs when it answers a backward: the session and step (which its signed
/// forward commitment binds to the call's inputs), the digests of the gradient in, of the
/// gradient out and of the adapter gradients (names and values, in order).
pub fn backward_digest(session: u64, step: u64, grad: &[f32], dx: &[f32], grads: &Named) -> Digest {
    backward_digest_of(
        session,
        step,
        &floats_sha256(grad),
        &BackwardOutcome::of(dx, grads),
    )
}

/// The SHA-256 of `v`'s little-endian f32 values.
pub fn floats_sha256(v: &[f32]) -> Digest {
    let mut h = Sha256::new();
    for x in v {
        h.update(x.to_le_bytes());
    }
    h.finalize().into()
}

/// What a backward answer gave, as digests: of the gradient of the input and of each adapter
/// weight's gradient (by name, in the order answered). Anyone holding these can check a
/// signed [`backward_digest`] without the values, and set two answers side by side.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BackwardOutcome {
    /// The SHA-256 of the gradient of the input (of no values for the first stage, which
    /// sends none).
    #[serde(with = "hex_digest")]
    pub dx: Digest,
    /// Each adapter gradient's name and SHA-256.
    pub grads: Vec<(String, HexDigest)>,
}

/// A digest written as 64 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HexDigest(#[serde(with = "hex_digest")] pub Digest);

mod hex_digest {
    pub fn serialize<S: serde::Serializer>(d: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(d))
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let v = <String as serde::Deserialize>::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(v.trim(), &mut out).map_err(|_| {
            serde::de::Error::custom(format!("{v:?} is not 32 bytes of hex (64 digits)"))
        })?;
        Ok(out)
    }
}

impl BackwardOutcome {
    /// The digests of a backward's answer.
    pub fn of(dx: &[f32], grads: &Named) -> Self {
        Self {
            dx: floats_sha256(dx),
            grads: grads
                .iter()
                .map(|(n, v)| (n.clone(), HexDigest(floats_sha256(v))))
                .collect(),
        }
    }

    /// One digest of the whole answer, independent of the session it was computed in: what
    /// a backward fraud claim sets side by side on the ledger (the server's against the
    /// verifiers', who recompute in sessions of their own).
    pub fn digest(&self) -> Digest {
        let mut h = Sha256::new();
        h.update(b"cohort-stage-backward-outcome-v1");
        h.update(self.dx);
        self.grads_into(&mut h);
        h.finalize().into()
    }

    fn grads_into(&self, h: &mut Sha256) {
        h.update((self.grads.len() as u64).to_be_bytes());
        for (name, d) in &self.grads {
            h.update((name.len() as u64).to_be_bytes());
            h.update(name.as_bytes());
            h.update(d.0);
        }
    }
}

/// [`backward_digest`] from the digests of the gradient in (`grad`, [`floats_sha256`]) and of
/// the answer: the same 32 bytes.
pub fn backward_digest_of(
    session: u64,
    step: u64,
    grad: &Digest,
    outcome: &BackwardOutcome,
) -> Digest {
    let mut h = Sha256::new();
    h.update(b"cohort-stage-backward-v1");
    h.update(session.to_be_bytes());
    h.update(step.to_be_bytes());
    h.update(grad);
    h.update(outcome.dx);
    outcome.grads_into(&mut h);
    h.finalize().into()
}

/// The call a backward fraud claim names on the ledger (the contract's `callDigest`): the
/// forward call's digest (its inputs, session and step: [`call_digest`]) and the gradient
/// the server was given. Verifiers who recomputed the same backward name the same call.
pub fn backward_claim_call(call: &Digest, grad: &Digest) -> Digest {
    let mut h = Sha256::new();
    h.update(b"cohort-stage-backward-claim-v1");
    h.update(call);
    h.update(grad);
    h.finalize().into()
}

/// What a server signs when it answers: the call's digest and its commitment to the output
/// (the rows' digests). A verifier signs the same for the rows it recomputed, so that a
/// server's signed commitment and verifiers' signed recomputations of the same call can be
/// set side by side (a fraud claim).
pub fn commitment_message(call: &Digest, row_sha256: &[Digest]) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(b"cohort-stage-commitment-v1");
    h.update(call);
    h.update((row_sha256.len() as u64).to_be_bytes());
    for r in row_sha256 {
        h.update(r);
    }
    h.finalize().to_vec()
}

/// The commitment to `stream` cut into `rows` rows of equal length: the SHA-256 of each row's
/// little-endian f32 values.
pub fn row_hashes(stream: &[f32], rows: usize) -> Vec<Digest> {
    use sha2::{Digest as _, Sha256};
    if rows == 0 {
        return Vec::new();
    }
    stream
        .chunks(stream.len().div_ceil(rows).max(1))
        .map(|r| {
            let mut h = Sha256::new();
            for x in r {
                h.update(x.to_le_bytes());
            }
            h.finalize().into()
        })
        .collect()
}

/// What a stage server computes: its layers forward and backward. Errors are messages for
/// the client (a refusal of its input, or the server's failure).
pub trait StageCompute: Send + Sync + 'static {
    /// What it holds.
    fn info(&self) -> StageInfo;
    /// Its layers forward on `call.stream`: the stream leaving its last layer. Keeps what the
    /// backward of `(session, step)` needs, unless the call is a verifier's (`call.rows`
    /// not empty), which gets the output of those rows only.
    fn forward(&self, call: ForwardCall) -> Result<Vec<f32>, String>;
    /// Its layers backward for the forward of `(session, step)`: the gradient of the stream
    /// that forward was given, and the adapter weights' gradients.
    fn backward(
        &self,
        session: u64,
        step: u64,
        grad: Vec<f32>,
    ) -> Result<(Vec<f32>, Named), String>;
    /// Attests `claim` (a forward claim's evidence, JSON) on its ledger under its own key,
    /// when it is a verifier that attests and the claim holds: what was recorded. By default
    /// it attests nothing.
    fn attest(&self, claim: &[u8]) -> Result<Attested, String> {
        let _ = claim;
        Err(
            "this server attests nothing (a verifier attests with `serve-layers \
             --attest-ledger DIR --key FILE`)"
                .into(),
        )
    }
    /// The model's stream bases it holds (those [`StageInfo::stream_bases`] names).
    fn stream_bases(&self) -> Option<Arc<StreamBases>> {
        None
    }
}

/// A verifier's attestation of a fraud claim, as recorded on its ledger
/// ([`StageCompute::attest`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Attested {
    /// The claim's id on the ledger (hex).
    pub claim_id: String,
    /// Attestations of the claim so far, and how many slash.
    pub attestations: u64,
    pub quorum: u32,
    /// Whether this attestation slashed the server.
    pub slashed: bool,
}

/// The largest claim a verifier reads (a forward claim is a few kilobytes; the server's
/// commitment grows with the batch).
pub const MAX_CLAIM_BYTES: usize = 1 << 20;

fn floats(bytes: &[u8], what: &str) -> Result<Vec<f32>, Status> {
    if !bytes.len().is_multiple_of(4) {
        return Err(Status::invalid_argument(format!(
            "{what}: {} bytes is not a whole number of f32 values",
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

fn bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn tensors(t: Vec<pb::Tensor>, what: &str) -> Result<Named, Status> {
    t.into_iter()
        .map(|t| {
            let v = floats(&t.data, &format!("{what} {}", t.name))?;
            Ok((t.name, v))
        })
        .collect()
}

fn pb_tensors(t: Named) -> Vec<pb::Tensor> {
    t.into_iter()
        .map(|(name, v)| pb::Tensor {
            name,
            data: bytes(&v),
        })
        .collect()
}

struct Service(Arc<dyn StageCompute>, Option<Identity>);

#[tonic::async_trait]
impl Stage for Service {
    async fn info(&self, _: Request<pb::InfoRequest>) -> Result<Response<pb::InfoReply>, Status> {
        let i = self.0.info();
        Ok(Response::new(pb::InfoReply {
            protocol_version: STAGE_PROTOCOL_VERSION,
            model_sha256: i.model_sha256.to_vec(),
            first_layer: i.layers.start as u32,
            end_layer: i.layers.end as u32,
            width: i.width as u32,
            layers: i.total_layers as u32,
            public_key: i.public_key.map(|k| k.to_vec()).unwrap_or_default(),
            svd_rank: i.svd_rank as u32,
            compute_kind: i.compute_kind,
            stream_bases_sha256: i.stream_bases.map(|d| d.to_vec()).unwrap_or_default(),
        }))
    }

    async fn forward(
        &self,
        r: Request<pb::ForwardRequest>,
    ) -> Result<Response<pb::ForwardReply>, Status> {
        let r = r.into_inner();
        let info = self.0.info();
        let width = info.width;
        let bases = match uses_stream_bases(r.compression) {
            true => Some(self.0.stream_bases().ok_or_else(|| {
                Status::failed_precondition(
                    "this compression sends activations in the model's stream bases, and this \
                     server holds none (`cohort model calibrate` writes them)",
                )
            })?),
            false => None,
        };
        let basis_in = bases.as_ref().and_then(|b| b.get(info.layers.start));
        let basis_out = bases.as_ref().and_then(|b| b.get(info.layers.end));
        let call = ForwardCall {
            session: r.session,
            step: r.step,
            batch: r.batch as usize,
            tokens: r.tokens as usize,
            stream: decode_stream(
                &r.stream,
                width,
                r.compression,
                Way::Forward(basis_in),
                "the stream",
            )?,
            adapter: tensors(r.adapter, "adapter tensor")?,
            dropout_key: r.dropout_key,
            adapter_config: r.adapter_config,
            rows: r.rows.iter().map(|&r| r as usize).collect(),
            inference: r.inference,
            compression: r.compression,
            wire: None,
        };
        let compression = r.compression;
        let checking = !call.rows.is_empty();
        let rows = if checking {
            call.rows.len()
        } else {
            call.batch
        };
        let digest = self.1.as_ref().map(|_| call_digest(&self.0.info(), &call));
        let compute = Arc::clone(&self.0);
        let out = tokio::task::spawn_blocking(move || compute.forward(call))
            .await
            .map_err(|e| Status::internal(format!("the forward pass failed: {e}")))?
            .map_err(Status::invalid_argument)?;
        let mut out = out;
        let way = Way::Forward(basis_out);
        let its = |e| Status::failed_precondition(format!("its output: {e}"));
        let stream = match checking {
            true => {
                round_stream(&mut out, width, compression, way).map_err(its)?;
                Vec::new()
            }
            false => round_and_encode(&mut out, width, compression, way).map_err(its)?,
        };
        let hashes = row_hashes(&out, rows);
        let signature = match (&self.1, digest) {
            (Some(id), Some(d)) => id.sign(&commitment_message(&d, &hashes)).to_vec(),
            _ => Vec::new(),
        };
        Ok(Response::new(pb::ForwardReply {
            stream,
            row_sha256: hashes.into_iter().map(|h| h.to_vec()).collect(),
            signature,
        }))
    }

    async fn backward(
        &self,
        r: Request<pb::BackwardRequest>,
    ) -> Result<Response<pb::BackwardReply>, Status> {
        let r = r.into_inner();
        let width = self.0.info().width;
        let grad = decode_stream(
            &r.grad,
            width,
            r.compression,
            Way::Backward(0),
            "the gradient",
        )?;
        let first = self.0.info().layers.start;
        let compute = Arc::clone(&self.0);
        let signer = self.1.clone();
        let compression = r.compression;
        let (dx, grads, signature) = tokio::task::spawn_blocking(move || {
            let (mut dx, grads) = compute.backward(r.session, r.step, grad.clone())?;
            if r.no_input_grad {
                dx.clear();
            }
            let seed = match rounds_stochastically(compression) {
                true => grad_seed(r.step, first, &grad),
                false => 0,
            };
            let way = Way::Backward(seed);
            round_stream(&mut dx, width, compression, way)?;
            let signature = signer.map(|id| {
                id.sign(&backward_digest(r.session, r.step, &grad, &dx, &grads))
                    .to_vec()
            });
            Ok::<_, String>((dx, grads, signature.unwrap_or_default()))
        })
        .await
        .map_err(|e| Status::internal(format!("the backward pass failed: {e}")))?
        .map_err(Status::failed_precondition)?;
        Ok(Response::new(pb::BackwardReply {
            grad: encode_stream(&dx, width, compression, Way::Backward(0))
                .map_err(Status::failed_precondition)?,
            grads: pb_tensors(grads),
            signature,
        }))
    }

    async fn attest(
        &self,
        r: Request<pb::AttestRequest>,
    ) -> Result<Response<pb::AttestReply>, Status> {
        let claim = r.into_inner().claim;
        if claim.len() > MAX_CLAIM_BYTES {
            return Err(Status::invalid_argument(format!(
                "a claim of {} bytes (at most {MAX_CLAIM_BYTES})",
                claim.len()
            )));
        }
        let compute = Arc::clone(&self.0);
        let a = tokio::task::spawn_blocking(move || compute.attest(&claim))
            .await
            .map_err(|e| Status::internal(format!("the attestation failed: {e}")))?
            .map_err(Status::failed_precondition)?;
        Ok(Response::new(pb::AttestReply {
            claim_id: a.claim_id,
            attestations: a.attestations,
            quorum: a.quorum,
            slashed: a.slashed,
        }))
    }
}

/// Serves `compute` on `listener` (TLS with `tls`, else plain text) on `rt` until the runtime
/// stops, signing every forward answer with `signer` (whose public key `compute`'s info must
/// give); the address it listens on.
///
/// # Errors
/// The listener cannot be handed to tokio, or the TLS configuration is refused.
pub fn serve_stage(
    rt: &tokio::runtime::Runtime,
    compute: Arc<dyn StageCompute>,
    signer: Option<Identity>,
    listener: std::net::TcpListener,
    tls: Option<tonic::transport::ServerTlsConfig>,
) -> Result<SocketAddr, NetError> {
    let io = |e: std::io::Error| NetError::Io {
        path: "the listening socket".into(),
        source: e,
    };
    listener.set_nonblocking(true).map_err(io)?;
    let addr = listener.local_addr().map_err(io)?;
    let listener = {
        let _guard = rt.enter();
        tokio::net::TcpListener::from_std(listener).map_err(io)?
    };
    let mut builder = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .initial_stream_window_size(crate::STREAM_WINDOW)
        .initial_connection_window_size(crate::CONNECTION_WINDOW);
    if let Some(tls) = tls {
        builder = builder.tls_config(tls).map_err(|e| NetError::Connect {
            what: "TLS for the stage server".into(),
            source: Box::new(e),
        })?;
    }
    let service = StageServer::new(Service(compute, signer))
        .max_decoding_message_size(MAX_STAGE_MESSAGE)
        .max_encoding_message_size(MAX_STAGE_MESSAGE);
    let router = builder.add_service(service);
    rt.spawn(async move {
        // Each accepted socket with TCP_NODELAY, or a call waits ~40 ms for a delayed ACK.
        if let Err(e) = router
            .serve_with_incoming(crate::run::accepted(listener))
            .await
        {
            tracing::error!("the stage server stopped: {e}");
        }
    });
    Ok(addr)
}

/// A client's handle on one stage server: blocking calls, each with a deadline (a server past
/// it is an error, never a hang).
pub struct StageClient {
    rt: tokio::runtime::Runtime,
    client: GrpcClient<tonic::transport::Channel>,
    url: String,
    deadline: Duration,
    /// What the server said it holds ([`StageClient::info`]); its answers are checked against
    /// it (their signatures, when it has a key).
    info: Option<StageInfo>,
    /// How backward calls' gradients travel.
    compression: u32,
    /// The model's stream bases, for codecs that send activations in them.
    bases: Option<Arc<StreamBases>>,
    /// Whether backward answers carry the gradient of the stream in
    /// ([`StageClient::set_input_gradient`]).
    input_gradient: bool,
}

impl std::fmt::Debug for StageClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StageClient")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// Why a stage call failed.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The server could not be reached or the connection broke.
    #[error("stage server {url}: {reason}")]
    Unreachable {
        /// The server.
        url: String,
        /// Why.
        reason: String,
    },
    /// The server did not answer within the deadline.
    #[error("stage server {url}: no answer within {secs} s")]
    Deadline {
        /// The server.
        url: String,
        /// The deadline.
        secs: u64,
    },
    /// The server refused the call.
    #[error("stage server {url} refused the call: {reason}")]
    Refused {
        /// The server.
        url: String,
        /// Its reason.
        reason: String,
    },
}

impl StageClient {
    /// Dials `url` (`https://HOST:PORT` with `tls`, `http://HOST:PORT` without), waiting at
    /// most `deadline` for it and for every call after.
    ///
    /// # Errors
    /// The URL or TLS settings are refused, or the server cannot be reached.
    pub fn connect(
        url: &str,
        tls: Option<&tonic::transport::ClientTlsConfig>,
        deadline: Duration,
    ) -> Result<Self, StageError> {
        let unreachable = |reason: String| StageError::Unreachable {
            url: url.to_owned(),
            reason,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| unreachable(format!("no runtime: {e}")))?;
        let ep = crate::party::endpoint(url, tls).map_err(|e| unreachable(e.to_string()))?;
        let channel = rt
            .block_on(async { tokio::time::timeout(deadline, ep.connect()).await })
            .map_err(|_| unreachable(format!("no connection within {} s", deadline.as_secs())))?
            .map_err(|e| unreachable(format!("{e}")))?;
        let client = GrpcClient::new(channel)
            .max_decoding_message_size(MAX_STAGE_MESSAGE)
            .max_encoding_message_size(MAX_STAGE_MESSAGE);
        Ok(Self {
            rt,
            client,
            url: url.to_owned(),
            deadline,
            info: None,
            compression: COMPRESSION_NONE,
            bases: None,
            input_gradient: true,
        })
    }

    /// The server's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn call<T>(
        &mut self,
        f: impl AsyncFnOnce(&mut GrpcClient<tonic::transport::Channel>) -> Result<T, Status>,
    ) -> Result<T, StageError> {
        let (url, secs) = (self.url.clone(), self.deadline.as_secs());
        let client = &mut self.client;
        let deadline = self.deadline;
        let t0 = std::time::Instant::now();
        let r = self
            .rt
            .block_on(async { tokio::time::timeout(deadline, f(client)).await });
        if std::env::var("COHORT_STAGE_TRACE").is_ok() {
            eprintln!(
                "stage call {url}: {:.2} ms",
                t0.elapsed().as_secs_f64() * 1e3
            );
        }
        match r {
            Err(_) => Err(StageError::Deadline { url, secs }),
            Ok(Ok(x)) => Ok(x),
            Ok(Err(s)) => match s.code() {
                tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition => {
                    Err(StageError::Refused {
                        url,
                        reason: s.message().to_owned(),
                    })
                }
                _ => Err(StageError::Unreachable {
                    url,
                    reason: format!("{}: {}", s.code(), s.message()),
                }),
            },
        }
    }

    /// What the server holds.
    ///
    /// # Errors
    /// See [`StageError`]; a server speaking another protocol version is refused.
    pub fn info(&mut self) -> Result<StageInfo, StageError> {
        let r = self
            .call(async |c| c.info(pb::InfoRequest {}).await)?
            .into_inner();
        let url = self.url.clone();
        if r.protocol_version != STAGE_PROTOCOL_VERSION {
            return Err(StageError::Refused {
                url,
                reason: format!(
                    "it speaks stage protocol {}, this client {STAGE_PROTOCOL_VERSION}",
                    r.protocol_version
                ),
            });
        }
        let model_sha256: [u8; 32] =
            r.model_sha256
                .as_slice()
                .try_into()
                .map_err(|_| StageError::Refused {
                    url: url.clone(),
                    reason: "its model hash is not 32 bytes".into(),
                })?;
        let public_key = match r.public_key.len() {
            0 => None,
            _ => Some(PublicKey::try_from(r.public_key.as_slice()).map_err(|_| {
                StageError::Refused {
                    url: url.clone(),
                    reason: "its public key is not 32 bytes".into(),
                }
            })?),
        };
        if !(1..=MAX_STAGE_WIDTH).contains(&(r.width as usize)) {
            return Err(StageError::Refused {
                url: url.clone(),
                reason: format!(
                    "its stream width {} is not in [1, {MAX_STAGE_WIDTH}]",
                    r.width
                ),
            });
        }
        if r.compute_kind.len() > MAX_COMPUTE_KIND {
            return Err(StageError::Refused {
                url: url.clone(),
                reason: format!(
                    "its compute kind is {} bytes long, more than {MAX_COMPUTE_KIND}",
                    r.compute_kind.len()
                ),
            });
        }
        let info = StageInfo {
            model_sha256,
            layers: r.first_layer as usize..r.end_layer as usize,
            width: r.width as usize,
            total_layers: r.layers as usize,
            public_key,
            svd_rank: r.svd_rank as usize,
            compute_kind: r.compute_kind,
            stream_bases: match r.stream_bases_sha256.len() {
                0 => None,
                _ => Some(r.stream_bases_sha256.as_slice().try_into().map_err(|_| {
                    StageError::Refused {
                        url: url.clone(),
                        reason: "its stream bases' hash is not 32 bytes".into(),
                    }
                })?),
            },
        };
        self.info = Some(info.clone());
        Ok(info)
    }

    /// The server's layers forward: the stream and the server's commitment to it, checked to
    /// agree (one digest per row, each the digest of its row). For a verifier's call
    /// (`call.rows` not empty) the stream is empty and the commitment covers those rows.
    ///
    /// # Errors
    /// See [`StageError`]; an answer whose commitment does not fit its stream is refused.
    pub fn forward(&mut self, call: &ForwardCall) -> Result<Forwarded, StageError> {
        let checking = !call.rows.is_empty();
        // The call as the server holds it (asked of it by `info` first).
        let held = match &self.info {
            Some(i) => i.clone(),
            None => self.info()?,
        };
        let width = held.width;
        let refused = |reason: String| StageError::Refused {
            url: self.url.clone(),
            reason,
        };
        let bases = match uses_stream_bases(call.compression) {
            false => None,
            true => {
                let own = self.bases.as_ref().ok_or_else(|| {
                    refused(
                        "this compression sends activations in the model's stream bases, and \
                         this client holds none (`cohort model calibrate` writes them)"
                            .into(),
                    )
                })?;
                if held.stream_bases != Some(own.sha256()) {
                    return Err(refused(format!(
                        "it holds {} stream bases, this client {}: both must hold the model's \
                         same stream_bases.safetensors",
                        held.stream_bases
                            .map_or_else(|| "no".to_owned(), |d| hex::encode(&d[..8])),
                        hex::encode(&own.sha256()[..8])
                    )));
                }
                Some(Arc::clone(own))
            }
        };
        let basis_in = bases.as_ref().and_then(|b| b.get(held.layers.start));
        let basis_out = bases.as_ref().and_then(|b| b.get(held.layers.end));
        let stream = match &call.wire {
            Some(w) if !checking => w.to_vec(),
            _ => encode_stream(
                &call.stream,
                width,
                call.compression,
                Way::Forward(basis_in),
            )
            .map_err(refused)?,
        };
        let req = pb::ForwardRequest {
            session: call.session,
            step: call.step,
            batch: call.batch as u32,
            tokens: call.tokens as u32,
            stream,
            adapter: pb_tensors(call.adapter.clone()),
            dropout_key: call.dropout_key,
            adapter_config: call.adapter_config.clone(),
            rows: call.rows.iter().map(|&r| r as u32).collect(),
            inference: call.inference,
            compression: call.compression,
        };
        let sent = req.stream.len() as u64;
        let r = self.call(async |c| c.forward(req).await)?.into_inner();
        let wire_bytes = sent + r.stream.len() as u64;
        let bad = |reason: String| StageError::Refused {
            url: self.url.clone(),
            reason: format!("its answer: {reason}"),
        };
        let stream = decode_stream(
            &r.stream,
            width,
            call.compression,
            Way::Forward(basis_out),
            "the stream",
        )
        .map_err(|s| bad(s.message().into()))?;
        let rows = if checking {
            call.rows.len()
        } else {
            call.batch
        };
        let row_sha256: Vec<Digest> = r
            .row_sha256
            .iter()
            .map(|h| h.as_slice().try_into())
            .collect::<Result<_, _>>()
            .map_err(|_| bad("a row digest is not 32 bytes".into()))?;
        if row_sha256.len() != rows {
            return Err(bad(format!(
                "{} row digests for {rows} rows",
                row_sha256.len()
            )));
        }
        if !checking {
            if stream.len() != call.stream.len() {
                return Err(bad(format!(
                    "a stream of {} values for one of {}",
                    stream.len(),
                    call.stream.len()
                )));
            }
            if let Some(i) = row_hashes(&stream, rows)
                .iter()
                .zip(&row_sha256)
                .position(|(a, b)| a != b)
            {
                return Err(bad(format!(
                    "row {i} of its stream is not the row it committed to"
                )));
            }
        }
        // Its signature, when it has a key, must verify.
        let call_d = call_digest(&held, call);
        let bad = |reason: String| StageError::Refused {
            url: self.url.clone(),
            reason: format!("its answer: {reason}"),
        };
        let signature = match (held.public_key, r.signature.len()) {
            (None, 0) => None,
            (None, _) => return Err(bad("a signature from a server without a key".into())),
            (Some(pk), _) => {
                let sig: [u8; 64] = r
                    .signature
                    .as_slice()
                    .try_into()
                    .map_err(|_| bad("no signature, or one that is not 64 bytes".into()))?;
                Identity::verify(&pk, &commitment_message(&call_d, &row_sha256), &sig)
                    .map_err(|_| bad("its signature does not verify against its key".into()))?;
                Some(sig)
            }
        };
        Ok(Forwarded {
            stream,
            row_sha256,
            call: call_d,
            signature,
            wire_bytes,
            wire: r.stream,
        })
    }

    /// Asks the server, a verifier, to attest `claim` (a forward claim's evidence, JSON) on
    /// its ledger: what it recorded.
    ///
    /// # Errors
    /// See [`StageError`]: a server that attests nothing, or finds the claim does not hold,
    /// refuses.
    pub fn attest(&mut self, claim: &[u8]) -> Result<Attested, StageError> {
        let claim = claim.to_vec();
        let r = self
            .call(async |c| c.attest(pb::AttestRequest { claim }).await)?
            .into_inner();
        if r.claim_id.len() > 80 {
            return Err(StageError::Refused {
                url: self.url.clone(),
                reason: "its claim id is not a 32-byte hex digest".into(),
            });
        }
        Ok(Attested {
            claim_id: r.claim_id,
            attestations: r.attestations,
            quorum: r.quorum,
            slashed: r.slashed,
        })
    }

    /// How backward calls' gradients travel ([`COMPRESSION_NONE`] by default,
    /// [`COMPRESSION_INT8`]); forward calls say it themselves
    /// ([`ForwardCall::compression`]). With int8, the gradients given should already be
    /// rounded ([`int8_round`]).
    pub fn set_compression(&mut self, compression: u32) {
        self.compression = compression;
    }

    /// The model's stream bases, which codecs with stream bases code activations in (the
    /// server must hold the same: checked at each forward).
    pub fn set_stream_bases(&mut self, bases: Option<Arc<StreamBases>>) {
        self.bases = bases;
    }

    /// Whether backward answers carry the gradient of the stream the forward was given (by
    /// default they do). The first stage's is needed only to train the embeddings: a client
    /// whose embeddings are frozen (a LoRA adapter's) asks it not to send it, and its
    /// answers then carry an empty one, which their signatures cover.
    pub fn set_input_gradient(&mut self, on: bool) {
        self.input_gradient = on;
    }

    /// What the server said it holds, once [`StageClient::info`] was asked.
    pub fn held(&self) -> Option<&StageInfo> {
        self.info.as_ref()
    }

    /// The server's layers backward for the forward of `(session, step)`.
    ///
    /// # Errors
    /// See [`StageError`].
    pub fn backward(
        &mut self,
        session: u64,
        step: u64,
        grad: &[f32],
    ) -> Result<(Vec<f32>, Named), StageError> {
        self.backward_signed(session, step, grad)
            .map(|b| (b.dx, b.grads))
    }

    /// [`StageClient::backward`] with the server's signed digest of its answer, checked
    /// against its key when it has one.
    ///
    /// # Errors
    /// See [`StageError`]; an answer whose signature does not verify is refused.
    pub fn backward_signed(
        &mut self,
        session: u64,
        step: u64,
        grad: &[f32],
    ) -> Result<Backwarded, StageError> {
        // The server's key and width, asked of it by `info` first.
        let held = match &self.info {
            Some(i) => i.clone(),
            None => self.info()?,
        };
        let (key, width) = (held.public_key, held.width);
        let grad_bytes =
            encode_stream(grad, width, self.compression, Way::Backward(0)).map_err(|reason| {
                StageError::Refused {
                    url: self.url.clone(),
                    reason,
                }
            })?;
        let req = pb::BackwardRequest {
            session,
            step,
            grad: grad_bytes,
            compression: self.compression,
            no_input_grad: !self.input_gradient,
        };
        let sent = req.grad.len() as u64;
        let r = self.call(async |c| c.backward(req).await)?.into_inner();
        let wire_bytes = sent + r.grad.len() as u64;
        let bad = |reason: String| StageError::Refused {
            url: self.url.clone(),
            reason: format!("its answer: {reason}"),
        };
        let dx = decode_stream(
            &r.grad,
            width,
            self.compression,
            Way::Backward(0),
            "the gradient",
        )
        .map_err(|s| bad(s.message().into()))?;
        let want = if self.input_gradient { grad.len() } else { 0 };
        if dx.len() != want {
            return Err(bad(format!(
                "a gradient of {} values for one of {want}",
                dx.len()
            )));
        }
        let grads = tensors(r.grads, "gradient").map_err(|s| bad(s.message().into()))?;
        let digest = backward_digest(session, step, grad, &dx, &grads);
        let signature = match (key, r.signature.len()) {
            (None, 0) => None,
            (None, _) => return Err(bad("a signature from a server without a key".into())),
            (Some(pk), _) => {
                let sig: [u8; 64] = r
                    .signature
                    .as_slice()
                    .try_into()
                    .map_err(|_| bad("no signature, or one that is not 64 bytes".into()))?;
                Identity::verify(&pk, &digest, &sig)
                    .map_err(|_| bad("its signature does not verify against its key".into()))?;
                Some(sig)
            }
        };
        Ok(Backwarded {
            dx,
            grads,
            digest,
            signature,
            wire_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The quantised encodings: int8 a quarter of the bytes, int4 and int5-3 (entropy-coded)
    /// less than a seventh of them on values shaped like a stream; a row's power-of-two
    /// scale; exact on what they decode to (so that a stream rounded once travels again
    /// unchanged), within a step of each value; bad bytes refused.
    /// A backward digest from its parts' digests is the digest of the values, as servers
    /// signed it before backward claims had parts (the formula written out again here), and
    /// an answer's outcome digest does not depend on the session.
    #[test]
    fn backward_digests_from_parts_are_the_digests_of_the_values() {
        let grad = [0.5f32, -1.25, 3.0];
        let dx = [1.0f32, f32::MIN_POSITIVE, -0.0];
        let grads: Named = vec![("a".into(), vec![1.0, 2.0]), ("bc".into(), vec![])];
        let floats = |v: &[f32]| {
            let mut h = Sha256::new();
            for x in v {
                h.update(x.to_le_bytes());
            }
            h.finalize()
        };
        let mut h = Sha256::new();
        h.update(b"cohort-stage-backward-v1");
        h.update(7u64.to_be_bytes());
        h.update(9u64.to_be_bytes());
        h.update(floats(&grad));
        h.update(floats(&dx));
        h.update(2u64.to_be_bytes());
        for (name, values) in &grads {
            h.update((name.len() as u64).to_be_bytes());
            h.update(name.as_bytes());
            h.update(floats(values));
        }
        let old: Digest = h.finalize().into();
        assert_eq!(backward_digest(7, 9, &grad, &dx, &grads), old);
        let outcome = BackwardOutcome::of(&dx, &grads);
        assert_eq!(
            backward_digest_of(7, 9, &floats_sha256(&grad), &outcome),
            old
        );
        // The outcome travels as JSON and back; another answer has another digest.
        let json = serde_json::to_string(&outcome).unwrap();
        let back: BackwardOutcome = serde_json::from_str(&json).unwrap();
        assert_eq!(back, outcome);
        assert_eq!(back.digest(), outcome.digest());
        let mut other = grads.clone();
        other[0].1[1] = 2.5;
        assert_ne!(BackwardOutcome::of(&dx, &other).digest(), outcome.digest());
        // Renaming a gradient changes it too; so does another gradient in.
        other = grads.clone();
        other[1].0 = "bd".into();
        assert_ne!(BackwardOutcome::of(&dx, &other).digest(), outcome.digest());
        let call = [3u8; 32];
        assert_ne!(
            backward_claim_call(&call, &floats_sha256(&grad)),
            backward_claim_call(&call, &floats_sha256(&dx))
        );
        assert!(serde_json::from_str::<BackwardOutcome>(r#"{"dx":"zz","grads":[]}"#).is_err());
    }

    #[test]
    fn quantised_streams_round_once_and_travel_unchanged() {
        let width = 16;
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let ways = [Way::Forward(None), Way::Backward(7)];
        let custom = |f, b, s, c| custom_compression(f, b, s, c, false, false).unwrap();
        for compression in [
            COMPRESSION_INT8,
            COMPRESSION_INT4,
            COMPRESSION_INT5_3,
            custom(15, 15, true, true),
            custom(1, 1, false, false),
            custom(127, 5, true, false),
            custom_compression(15, 9, true, true, true, false).unwrap(),
            custom_compression(1, 1, false, false, true, false).unwrap(),
            custom_compression(127, 127, false, false, true, false).unwrap(),
        ] {
            for way in ways {
                let c = codec(compression).unwrap();
                let steps = f32::from(c.steps(way));
                let mut r = cohort_core::SplitMix64::new(3);
                let mut v: Vec<f32> = r.normal_vec(width * 64, 3.0);
                v[20..36].fill(0.0);
                v[40] = 1e-30;
                v[3] = -1e-9;
                let mut rounded = v.clone();
                round_stream(&mut rounded, width, compression, way).unwrap();
                // Within a step (half a step when rounding to the nearest).
                let all = v.iter().fold(0f32, |m, x| m.max(x.abs()));
                for (row, got) in v.chunks(width).zip(rounded.chunks(width)) {
                    let max = match c.one_scale(way) {
                        true => all,
                        false => row.iter().fold(0f32, |m, x| m.max(x.abs())),
                    };
                    for (a, b) in row.iter().zip(got) {
                        assert!(
                            (a - b).abs() <= 2.0 * max / steps + 1e-30,
                            "{a} against {b}"
                        );
                    }
                }
                let bytes = encode_stream(&rounded, width, compression, way).unwrap();
                if compression == COMPRESSION_INT8 {
                    assert_eq!(bytes.len(), 64 * (width + 1));
                } else if c.forward < 127 {
                    // Fewer than int8's bytes, and gradients of int5-3 a fifth of f32.
                    assert!(bytes.len() < 64 * (width + 1), "{} bytes", bytes.len());
                    if way != Way::Forward(None) || compression == COMPRESSION_INT4 {
                        assert!(bytes.len() * 5 < v.len() * 4, "{} bytes", bytes.len());
                    }
                }
                let back = decode_stream_values(&bytes, width, compression, way).unwrap();
                assert_eq!(bits(&back), bits(&rounded), "not what was rounded");
                // Rounding again changes nothing, whatever the seed.
                let mut again = back.clone();
                let other = match way {
                    Way::Forward(_) => Way::Forward(None),
                    Way::Backward(_) => Way::Backward(99),
                };
                round_stream(&mut again, width, compression, other).unwrap();
                assert_eq!(bits(&again), bits(&back));
                assert_eq!(
                    encode_stream(&back, width, compression, way).unwrap(),
                    bytes
                );
                assert!(decode_stream_values(&bytes[1..], width, compression, way).is_err());
                assert!(decode_stream_values(&bytes, 0, compression, way).is_err());
                assert!(decode_stream_values(&bytes, width + 1, compression, way).is_err());
            }
        }
        // A row's exponent out of range; a value beyond its steps.
        let mut bad = encode_stream(&[1.0; 16], 16, COMPRESSION_INT8, Way::Forward(None)).unwrap();
        bad[0] = (-127i8) as u8;
        assert!(decode_stream_values(&bad, 16, COMPRESSION_INT8, Way::Forward(None)).is_err());
        let four = quant_rows(&[1.0; 16], 16, 127, false);
        assert!(
            decode_stream_values(&huffman(&four), 16, COMPRESSION_INT4, Way::Forward(None))
                .unwrap_err()
                .contains("beyond the 7")
        );
        let e = decode_stream_values(&[1, 2, 3], 16, 9, Way::Forward(None)).unwrap_err();
        assert!(e.contains("3 (int5-3)"), "{e}");
        // Custom compressions: odd steps in [1, 127]; a code with even steps or unknown flags
        // is no compression.
        assert!(custom_compression(16, 3, false, false, false, false).is_err());
        assert!(custom_compression(15, 0, false, false, false, false).is_err());
        assert!(custom_compression(129, 3, false, false, false, false).is_err());
        assert!(codec(COMPRESSION_CUSTOM | 16 << 8 | 3 << 16).is_none());
        assert!(codec(custom(15, 3, true, false) | 1 << 30).is_none());
        let same = codec(custom(15, 3, true, false)).unwrap();
        let int53 = codec(COMPRESSION_INT5_3).unwrap();
        assert_eq!(
            (same.forward, same.backward, same.stochastic),
            (int53.forward, int53.backward, int53.stochastic)
        );
    }

    /// Gradients of int5-3 round stochastically: unbiased over seeds (the mean of many
    /// roundings of a value between two steps tends to it), the same for the same seed.
    #[test]
    fn stochastic_gradient_rounding_is_unbiased_and_seeded() {
        // A row whose largest value (4 steps of 1) sets the scale: the others fall between
        // steps.
        let row = [4.0f32, 0.25, -0.6, 1.5, 0.0, -2.9, 3.2, 0.01];
        let mut sum = [0f64; 8];
        let n = 20_000;
        for seed in 0..n {
            let mut v = row;
            round_stream(&mut v, 8, COMPRESSION_INT5_3, Way::Backward(seed)).unwrap();
            assert_eq!(v[0], 4.0, "the row's largest rounds to the nearest step");
            for (s, x) in sum.iter_mut().zip(v) {
                *s += f64::from(x);
            }
        }
        for (s, x) in sum.iter().zip(row) {
            let mean = s / n as f64;
            assert!((mean - f64::from(x)).abs() < 0.03, "{mean} against {x}");
        }
        let (mut a, mut b) = (row, row);
        round_stream(&mut a, 8, COMPRESSION_INT5_3, Way::Backward(5)).unwrap();
        round_stream(&mut b, 8, COMPRESSION_INT5_3, Way::Backward(5)).unwrap();
        assert_eq!(a, b);
        // Activations round to the nearest step (of 0.5: 15 steps each side hold 4).
        let mut f = row;
        round_stream(&mut f, 8, COMPRESSION_INT5_3, Way::Forward(None)).unwrap();
        assert_eq!(f[2], -0.5);
        assert_eq!(f[6], 3.0);
        assert_ne!(grad_seed(1, 2, &row), grad_seed(1, 3, &row));
    }

    /// An int4 stream decodes to at most 8 bytes for each byte sent: a deflate stream that
    /// expands further (here with matches, which the encoder never writes) is refused before
    /// it is held whole.
    #[test]
    fn an_int4_stream_that_expands_beyond_huffman_codes_is_refused() {
        let f = Way::Forward(None);
        let zeros = vec![0u8; 17 * 100_000];
        let bomb = miniz_oxide::deflate::compress_to_vec(&zeros, 6);
        assert!(bomb.len() * 8 < zeros.len());
        let e = decode_stream_values(&bomb, 16, COMPRESSION_INT4, f).unwrap_err();
        assert!(e.contains("not a deflate stream"), "{e}");
        assert!(decode_stream_values(b"garbage", 16, COMPRESSION_INT4, f).is_err());
        // No bytes are no rows (a verifier's answer carries no stream).
        assert!(
            decode_stream_values(&[], 16, COMPRESSION_INT4, f)
                .unwrap()
                .is_empty()
        );
        // The most compressible stream there is, all zeros, is within the bound.
        let zeros = vec![0f32; 16 * 10_000];
        let z = encode_stream(&zeros, 16, COMPRESSION_INT4, f).unwrap();
        assert_eq!(
            decode_stream_values(&z, 16, COMPRESSION_INT4, f).unwrap(),
            zeros
        );
    }

    /// An orthonormal basis of `w` (Gram-Schmidt on seeded normal vectors, in f64).
    fn random_basis(w: usize, seed: u64) -> Vec<f32> {
        let mut r = cohort_core::SplitMix64::new(seed);
        let mut rows: Vec<Vec<f64>> = Vec::new();
        while rows.len() < w {
            let mut v: Vec<f64> = r.normal_vec(w, 1.0).into_iter().map(f64::from).collect();
            for u in &rows {
                let d: f64 = v.iter().zip(u).map(|(a, b)| a * b).sum();
                v.iter_mut().zip(u).for_each(|(a, b)| *a -= d * b);
            }
            let n = v.iter().map(|a| a * a).sum::<f64>().sqrt();
            rows.push(v.into_iter().map(|a| a / n).collect());
        }
        rows.into_iter().flatten().map(|a| a as f32).collect()
    }

    /// Activations in stream bases: exact on what they decode to (a stream rounded once
    /// travels again unchanged, through the range coder and through Huffman codes), within
    /// half a step of each coefficient, far fewer bytes than channel by channel on rows that
    /// lie mostly in a few directions; a missing basis, one of another width, and a basis
    /// that is not orthonormal refused by name.
    #[test]
    fn activations_in_stream_bases_round_once_and_cost_fewer_bytes() {
        let w = 32;
        let v_basis = random_basis(w, 11);
        let mut r = cohort_core::SplitMix64::new(4);
        let mean: Vec<f32> = r.normal_vec(w, 0.5);
        let basis = StreamBasis::new(mean.clone(), v_basis.clone()).unwrap();
        // Rows in 4 directions of the basis, plus a little noise, plus the mean.
        let rows = 256;
        let mut v = vec![0f32; rows * w];
        for row in v.chunks_mut(w) {
            let c: Vec<f32> = r.normal_vec(4, 5.0);
            for (k, ck) in c.iter().enumerate() {
                for (x, b) in row.iter_mut().zip(&v_basis[k * w..(k + 1) * w]) {
                    *x += ck * b;
                }
            }
            let noise: Vec<f32> = r.normal_vec(w, 0.01);
            for ((x, n), m) in row.iter_mut().zip(noise).zip(&mean) {
                *x += n + m;
            }
        }
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let plain = custom_compression(15, 9, true, true, true, false).unwrap();
        let plain_bytes = encode_stream(&v, w, plain, Way::Forward(None)).unwrap();
        for range in [true, false] {
            let c = custom_compression(15, 9, true, true, range, true).unwrap();
            assert!(uses_stream_bases(c) && !uses_stream_bases(plain));
            let way = Way::Forward(Some(&basis));
            let mut rounded = v.clone();
            round_stream(&mut rounded, w, c, way).unwrap();
            let err = v
                .iter()
                .zip(&rounded)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(err < 1.0, "{err}");
            let bytes = encode_stream(&rounded, w, c, way).unwrap();
            assert_eq!(encode_stream(&v, w, c, way).unwrap(), bytes);
            let mut fused = v.clone();
            assert_eq!(round_and_encode(&mut fused, w, c, way).unwrap(), bytes);
            assert_eq!(bits(&fused), bits(&rounded));
            let back = decode_stream_values(&bytes, w, c, way).unwrap();
            assert_eq!(bits(&back), bits(&rounded), "not what was rounded");
            let mut again = back.clone();
            round_stream(&mut again, w, c, way).unwrap();
            assert_eq!(bits(&again), bits(&back));
            assert_eq!(encode_stream(&back, w, c, way).unwrap(), bytes);
            if range {
                assert!(
                    bytes.len() * 2 < plain_bytes.len(),
                    "{} bytes in the basis, {} channel by channel",
                    bytes.len(),
                    plain_bytes.len()
                );
            }
            // Gradients travel as they did.
            let mut g = v.clone();
            let mut g2 = v.clone();
            round_stream(&mut g, w, c, Way::Backward(3)).unwrap();
            round_stream(&mut g2, w, plain, Way::Backward(3)).unwrap();
            assert_eq!(bits(&g), bits(&g2));
            // No basis; one of another width.
            for bad in [
                None,
                Some(&StreamBasis::new(vec![0.0; 8], random_basis(8, 1)).unwrap()),
            ] {
                let e = encode_stream(&v, w, c, Way::Forward(bad)).unwrap_err();
                assert!(e.contains("stream bases") || e.contains("width 8"), "{e}");
                assert!(decode_stream_values(&bytes, w, c, Way::Forward(bad)).is_err());
                assert!(round_stream(&mut v.clone(), w, c, Way::Forward(bad)).is_err());
            }
        }
        // Rows that barely differ from a large mean still travel again unchanged.
        let far: Vec<f32> = mean.iter().map(|m| m * 1000.0 + 300.0).collect();
        let far_basis = StreamBasis::new(far.clone(), v_basis.clone()).unwrap();
        let c = custom_compression(63, 15, true, true, true, true).unwrap();
        let way = Way::Forward(Some(&far_basis));
        for eps in [0.0f64, 1e-9, 1e-6, 1e-4, 1e-2, 1.0] {
            let mut rows: Vec<f32> = (0..8)
                .flat_map(|r| {
                    let noise = cohort_core::SplitMix64::new(r).normal_vec(w, eps);
                    far.iter()
                        .zip(noise)
                        .map(|(m, n)| m + n)
                        .collect::<Vec<f32>>()
                })
                .collect();
            let bytes = round_and_encode(&mut rows, w, c, way).unwrap();
            let back = decode_stream_values(&bytes, w, c, way).unwrap();
            assert_eq!(bits(&back), bits(&rows), "{eps}");
            assert_eq!(encode_stream(&back, w, c, way).unwrap(), bytes, "{eps}");
        }
        // Not orthonormal, not finite, not square.
        let mut skew = v_basis.clone();
        skew[5] += 0.1;
        let e = StreamBasis::new(mean.clone(), skew).unwrap_err();
        assert!(e.contains("orthonormal"), "{e}");
        let mut nan = v_basis.clone();
        nan[0] = f32::NAN;
        assert!(StreamBasis::new(mean.clone(), nan).is_err());
        assert!(StreamBasis::new(mean.clone(), v_basis[1..].to_vec()).is_err());
        assert!(StreamBasis::new(Vec::new(), Vec::new()).is_err());
    }

    /// The blocked transforms give the bits of the row-by-row ones, for row counts that are
    /// and are not multiples of four and widths that are and are not multiples of eight.
    #[test]
    fn blocked_transforms_are_the_row_by_row_bits() {
        for (w, rows) in [(16, 9), (13, 4), (40, 7), (8, 1)] {
            let mut r = cohort_core::SplitMix64::new(w as u64);
            let b = StreamBasis::new(r.normal_vec(w, 1.0), random_basis(w, 3)).unwrap();
            let x: Vec<f32> = r.normal_vec(w * rows, 2.0);
            let mut z = x.clone();
            z.iter_mut().step_by(3).for_each(|v| *v = 0.0);
            let (mut blocked, mut one) = (vec![0f32; x.len()], vec![0f32; x.len()]);
            b.coefficients_rows(&x, &mut blocked);
            for (xr, o) in x.chunks(w).zip(one.chunks_mut(w)) {
                b.coefficients(xr, o);
            }
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&blocked), bits(&one), "{w} x {rows}");
            b.values_rows(&z, &mut blocked);
            for (zr, o) in z.chunks(w).zip(one.chunks_mut(w)) {
                b.values(zr, o);
            }
            assert_eq!(bits(&blocked), bits(&one), "{w} x {rows}");
        }
    }

    /// Range-coded streams: garbage decodes to values in range or an error, never a panic
    /// and never more than the bound; a stream cut short is refused; a row count its bytes
    /// cannot hold is refused before anything is allocated.
    #[test]
    fn range_coded_garbage_is_refused_or_in_range() {
        let w = 16;
        let basis = StreamBasis::new(vec![0.0; w], random_basis(w, 2)).unwrap();
        let mut r = cohort_core::SplitMix64::new(9);
        let v: Vec<f32> = r.normal_vec(w * 100, 1.0);
        for c in [
            custom_compression(15, 9, true, true, true, false).unwrap(),
            custom_compression(15, 9, true, true, true, true).unwrap(),
            custom_compression(127, 1, false, false, true, false).unwrap(),
        ] {
            for way in [Way::Forward(Some(&basis)), Way::Backward(1)] {
                let bytes = encode_stream(&v, w, c, way).unwrap();
                // Cut short: the missing bytes read as zeros until the coder notices (a value
                // beyond the steps may show first).
                let e = decode_stream_values(&bytes[..bytes.len() / 2], w, c, way).unwrap_err();
                assert!(e.contains("ends before") || e.contains("beyond"), "{e}");
                for seed in 0..300u64 {
                    let mut g = bytes.clone();
                    let mut d = cohort_core::SplitMix64::new(seed);
                    for _ in 0..1 + seed % 8 {
                        let at = (d.next_u64() % g.len() as u64) as usize;
                        g[at] ^= 1 << (d.next_u64() % 8);
                    }
                    if let Ok(back) = decode_stream_values(&g, w, c, way) {
                        assert!(back.iter().all(|x| x.is_finite()));
                        assert!(back.len() <= MAX_STAGE_VALUES);
                    }
                    let random: Vec<u8> = (0..seed as usize).map(|_| d.next_u64() as u8).collect();
                    let _ = decode_stream_values(&random, w, c, way);
                }
            }
            // Four bytes claiming 2^32 - 1 rows, and a short body claiming more than it holds.
            let e =
                decode_stream_values(&[255, 255, 255, 255, 0, 0, 0, 0, 0], w, c, Way::Backward(0))
                    .unwrap_err();
            assert!(e.contains("claims"), "{e}");
        }
        // Rows wider than any model's: refused before the models are allocated.
        let e = crate::rangecode::decode(&[0, 0, 0, 1, 0, 0, 0, 0, 0], 1 << 30, 9, usize::MAX)
            .unwrap_err();
        assert!(e.contains("at most"), "{e}");
        // All zeros, the most compressible stream, is within the bound of values a byte.
        let zeros = vec![0u8; 100_000 * (w + 1)];
        let coded = crate::rangecode::encode(&zeros, w, 9);
        assert!(coded.len() * crate::rangecode::MAX_VALUES_PER_BYTE >= 100_000 * w);
        assert_eq!(
            crate::rangecode::decode(&coded, w, 9, usize::MAX).unwrap(),
            zeros
        );
    }
}
