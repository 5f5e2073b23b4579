//! An adaptive binary range coder (LZMA's), for quantised stage streams: each value is coded
//! with probabilities that adapt to what came before in the same channel, so a stream costs
//! close to what its values' per-channel statistics say, well under the one bit a value that
//! Huffman codes cannot go below.
//!
//! Pure and deterministic: the same values give the same bytes on every machine. Decoding
//! garbage gives values in range or an error, never a panic.

/// Probabilities in 1/2048ths.
const BITS: u32 = 11;
const ONE: u32 = 1 << BITS;
/// How fast a probability adapts: it moves 1/16 of the way towards each bit seen.
const MOVE: u32 = 4;
const TOP: u32 = 1 << 24;
const HALF: u16 = (ONE / 2) as u16;

/// The most values one byte of a stream can code: a value costs at least one decision, and a
/// decision at least -log2(1 - 15/2048) bits (a probability stays within [15, 2033]/2048), so
/// at most 8 / 0.0106 < 760 values a byte. A decoder refuses a count beyond this before it
/// allocates.
pub const MAX_VALUES_PER_BYTE: usize = 760;

/// The widest rows coded: the models hold a few hundred bytes a channel.
pub const MAX_WIDTH: usize = 1 << 16;

struct Encoder {
    low: u64,
    range: u32,
    cache: u8,
    pending: u64,
    out: Vec<u8>,
}

impl Encoder {
    fn new(out: Vec<u8>) -> Self {
        Self {
            low: 0,
            range: u32::MAX,
            cache: 0,
            pending: 1,
            out,
        }
    }

    fn bit(&mut self, p: &mut u16, bit: bool) {
        let bound = (self.range >> BITS) * u32::from(*p);
        if bit {
            self.low += u64::from(bound);
            self.range -= bound;
            *p -= *p >> MOVE;
        } else {
            self.range = bound;
            *p += ((ONE - u32::from(*p)) >> MOVE) as u16;
        }
        while self.range < TOP {
            self.range <<= 8;
            self.shift_low();
        }
    }

    fn shift_low(&mut self) {
        if self.low < 0xFF00_0000 || self.low > 0xFFFF_FFFF {
            let carry = (self.low >> 32) as u8;
            let mut byte = self.cache;
            while self.pending > 0 {
                self.out.push(byte.wrapping_add(carry));
                byte = 0xFF;
                self.pending -= 1;
            }
            self.cache = (self.low >> 24) as u8;
        }
        self.pending += 1;
        self.low = (self.low & 0x00FF_FFFF) << 8;
    }

    fn finish(mut self) -> Vec<u8> {
        for _ in 0..5 {
            self.shift_low();
        }
        self.out
    }
}

struct Decoder<'a> {
    code: u32,
    range: u32,
    input: &'a [u8],
    at: usize,
}

impl<'a> Decoder<'a> {
    fn new(input: &'a [u8]) -> Result<Self, String> {
        if input.len() < 5 || input[0] != 0 {
            return Err(
                "not a range-coded stream (it must start with a zero byte and hold at least 5)"
                    .into(),
            );
        }
        let code = u32::from_be_bytes([input[1], input[2], input[3], input[4]]);
        Ok(Self {
            code,
            range: u32::MAX,
            input,
            at: 5,
        })
    }

    fn bit(&mut self, p: &mut u16) -> bool {
        let bound = (self.range >> BITS) * u32::from(*p);
        let bit = if self.code < bound {
            self.range = bound;
            *p += ((ONE - u32::from(*p)) >> MOVE) as u16;
            false
        } else {
            self.code -= bound;
            self.range -= bound;
            *p -= *p >> MOVE;
            true
        };
        while self.range < TOP {
            self.range <<= 8;
            // Past the end reads zeros; `overrun` tells.
            let b = self.input.get(self.at).copied().unwrap_or(0);
            self.at += 1;
            self.code = (self.code << 8) | u32::from(b);
        }
        bit
    }

    fn overrun(&self) -> bool {
        self.at > self.input.len()
    }
}

/// The adaptive models of one channel: whether a value is zero (given whether the value
/// before it in the row was), its sign, and its magnitude less one as a bit tree.
#[derive(Clone)]
struct Channel {
    zero: [u16; 3],
    sign: u16,
    tree: Vec<u16>,
}

/// What the models of a stream hold: one [`Channel`] a column, and the row exponents' model.
struct Models {
    channels: Vec<Channel>,
    /// Whether a row's exponent equals the row before's.
    same_exponent: u16,
    /// A changed exponent, as a byte tree.
    exponent: Vec<u16>,
    /// Bits of a magnitude less one.
    depth: u32,
}

impl Models {
    fn new(width: usize, steps: u8) -> Self {
        let depth = u32::BITS - u32::from(steps.max(1) - 1).leading_zeros();
        let channel = Channel {
            zero: [HALF; 3],
            sign: HALF,
            tree: vec![HALF; 1 << depth],
        };
        Self {
            channels: vec![channel; width],
            same_exponent: HALF,
            exponent: vec![HALF; 256],
            depth,
        }
    }
}

/// The zero model's context: the magnitude of the value before in the row, 0, 1 or more.
fn context(prev: u8) -> usize {
    usize::from(prev.min(2))
}

/// Rows of `width` quantised values, each row its exponent byte and `width` signed bytes
/// within `steps` each side of zero (what the stage codecs quantise to), range-coded: the row
/// count (4 bytes, big-endian), then the coder's bytes.
///
/// # Panics
/// Never on values within range; `quant` must be whole rows of `width + 1` bytes (the caller
/// makes them).
pub fn encode(quant: &[u8], width: usize, steps: u8) -> Vec<u8> {
    let width = width.max(1);
    let rows = quant.len() / (width + 1);
    let mut out = Vec::with_capacity(quant.len() / 4 + 16);
    out.extend_from_slice(&(rows as u32).to_be_bytes());
    let mut m = Models::new(width, steps);
    let mut e = Encoder::new(out);
    let mut last_exponent = 0u8;
    for row in quant.chunks_exact(width + 1) {
        let ex = row[0];
        let same = ex == last_exponent;
        e.bit(&mut m.same_exponent, !same);
        if !same {
            let mut node = 1usize;
            for i in (0..8).rev() {
                let b = (ex >> i) & 1 == 1;
                e.bit(&mut m.exponent[node], b);
                node = node * 2 + usize::from(b);
            }
            // 256 nodes hold an 8-level tree's 255 inner ones.
        }
        last_exponent = ex;
        let mut prev = 0u8;
        for (&q, ch) in row[1..].iter().zip(&mut m.channels) {
            let q = q as i8;
            let mag = q.unsigned_abs();
            e.bit(&mut ch.zero[context(prev)], mag != 0);
            if mag != 0 {
                e.bit(&mut ch.sign, q < 0);
                let v = u32::from(mag - 1);
                let mut node = 1usize;
                for i in (0..m.depth).rev() {
                    let b = (v >> i) & 1 == 1;
                    e.bit(&mut ch.tree[node], b);
                    node = node * 2 + usize::from(b);
                }
            }
            prev = mag;
        }
    }
    e.finish()
}

/// The rows [`encode`] coded, as it was given them, refusing a value beyond `steps`, a row
/// count beyond `max_values` values or beyond what the bytes can hold, and a stream that ends
/// early.
///
/// # Errors
/// Names what is wrong.
pub fn decode(bytes: &[u8], width: usize, steps: u8, max_values: usize) -> Result<Vec<u8>, String> {
    let width = width.max(1);
    let Some((count, body)) = bytes.split_first_chunk::<4>() else {
        return Err(format!(
            "{} bytes is too short for a range-coded stream",
            bytes.len()
        ));
    };
    let rows = u32::from_be_bytes(*count) as usize;
    if width > MAX_WIDTH {
        return Err(format!(
            "rows of {width} values: a range-coded stream's rows hold at most {MAX_WIDTH}"
        ));
    }
    if rows == 0 {
        return Ok(Vec::new());
    }
    let values = rows.saturating_mul(width);
    let room = body.len().saturating_mul(MAX_VALUES_PER_BYTE);
    if values > max_values || values > room {
        return Err(format!(
            "a range-coded stream of {} bytes claims {rows} rows of {width} values: more than {}",
            bytes.len(),
            if values > max_values {
                format!("the {max_values} allowed")
            } else {
                format!("its bytes can hold ({room})")
            }
        ));
    }
    let mut d = Decoder::new(body)?;
    let mut m = Models::new(width, steps);
    let mut out = Vec::with_capacity(rows * (width + 1));
    let mut last_exponent = 0u8;
    for _ in 0..rows {
        let mut ex = last_exponent;
        if d.bit(&mut m.same_exponent) {
            let mut node = 1usize;
            for _ in 0..8 {
                node = node * 2 + usize::from(d.bit(&mut m.exponent[node]));
            }
            ex = (node - 256) as u8;
        }
        last_exponent = ex;
        out.push(ex);
        let mut prev = 0u8;
        for ch in &mut m.channels {
            let mut mag = 0u32;
            let mut negative = false;
            if d.bit(&mut ch.zero[context(prev)]) {
                negative = d.bit(&mut ch.sign);
                let mut node = 1usize;
                for _ in 0..m.depth {
                    node = node * 2 + usize::from(d.bit(&mut ch.tree[node]));
                }
                mag = (node - (1 << m.depth)) as u32 + 1;
            }
            if mag > u32::from(steps) {
                return Err(format!(
                    "a value of {mag} steps, beyond the {steps} allowed"
                ));
            }
            let q = if negative { -(mag as i8) } else { mag as i8 };
            out.push(q as u8);
            prev = mag as u8;
        }
        if d.overrun() {
            return Err(format!(
                "the range-coded stream ends before its {rows} rows"
            ));
        }
    }
    Ok(out)
}
