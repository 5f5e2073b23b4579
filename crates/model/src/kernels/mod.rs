//! Fused CPU kernels with hand-written backward passes, wrapped as candle custom ops.
//!
//! candle's stock layer norm and softmax have no backward (the gradient silently stops), and
//! its GELU and attention built from basic ops are slow. Each op here runs one pass over
//! contiguous memory, splits work across threads in fixed-size pieces (so results do not
//! depend on scheduling) and has a backward written by hand, checked against finite
//! differences in f64 by the tests. On a non-CPU device each op falls back to the same maths
//! built from candle's basic ops ([`reference`]), which is also what the tests compare with.

pub mod attention;
pub mod cross_entropy;
pub mod gelu;
pub mod gemm;
pub mod layer_norm;
pub mod linear;
pub mod reference;

use candle_core::{CpuStorage, Layout};

pub use attention::causal_attention;
pub use cross_entropy::cross_entropy_rows;
pub use gelu::gelu;
pub use layer_norm::layer_norm;
pub use linear::linear;

/// The float types the kernels are written for (f32 for training, f64 for gradient checks).
pub trait Real:
    Copy
    + Send
    + Sync
    + Default
    + PartialOrd
    + std::fmt::Debug
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::Neg<Output = Self>
    + std::ops::AddAssign
    + std::iter::Sum
    + 'static
{
    const ZERO: Self;
    const ONE: Self;
    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn tanh(self) -> Self;
    /// `tanh`, as a branch-free rational approximation for f32 (within 1e-6 of the exact
    /// value, and vectorisable) and exact for f64.
    fn tanh_fast(self) -> Self;
    fn sqrt(self) -> Self;
    fn max(self, other: Self) -> Self;
    fn neg_infinity() -> Self;
}

/// Eigen's rational approximation of tanh on [-7.9, 7.9] (beyond which f32 tanh is +-1).
#[inline(always)]
#[allow(clippy::excessive_precision)]
pub fn tanh_f32(x: f32) -> f32 {
    let x = x.clamp(-7.905_311, 7.905_311);
    let x2 = x * x;
    let mut p = x2 * -2.760_768_5e-16 + 2.000_187_9e-13;
    p = p * x2 + -8.604_671_5e-11;
    p = p * x2 + 5.122_297_1e-8;
    p = p * x2 + 1.485_722_4e-5;
    p = p * x2 + 6.372_619_3e-4;
    p = p * x2 + 4.893_524_6e-3;
    p *= x;
    let mut q = x2 * 1.198_258_4e-6 + 1.185_347_1e-4;
    q = q * x2 + 2.268_434_6e-3;
    q = q * x2 + 4.893_525_2e-3;
    p / q
}

macro_rules! impl_real {
    ($t:ty, $fast:expr) => {
        impl Real for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            fn from_f64(x: f64) -> Self {
                x as $t
            }
            fn to_f64(self) -> f64 {
                self as f64
            }
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            fn tanh(self) -> Self {
                <$t>::tanh(self)
            }
            #[inline(always)]
            fn tanh_fast(self) -> Self {
                $fast(self)
            }
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            fn max(self, other: Self) -> Self {
                <$t>::max(self, other)
            }
            fn neg_infinity() -> Self {
                <$t>::NEG_INFINITY
            }
        }
    };
}
impl_real!(f32, tanh_f32);
impl_real!(f64, f64::tanh);

/// The contiguous slice a layout covers, or an error naming the op.
pub(crate) fn contiguous<'a, T>(
    data: &'a [T],
    layout: &Layout,
    op: &str,
) -> candle_core::Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

/// Rows handed to one thread at a time: fixed, so reductions do not depend on scheduling.
pub(crate) fn rows_per_task(n_rows: usize, row_len: usize) -> usize {
    // Aim for ~32k elements per task, at least one row.
    (32_768 / row_len.max(1)).clamp(1, n_rows.max(1))
}

/// The number of threads heavy ops use (rayon's pool, set by `RAYON_NUM_THREADS`).
pub(crate) fn threads() -> usize {
    rayon::current_num_threads()
}

pub(crate) fn unsupported(op: &str, s: &CpuStorage) -> candle_core::Error {
    use candle_core::backend::BackendStorage;
    candle_core::Error::Msg(format!("{op}: unsupported dtype {:?}", s.dtype()))
}

/// What recomputing a pass bit for bit depends on besides its inputs: this build of cohort's
/// model library (its version), the architecture, and the instruction sets the matrix kernel
/// (`gemm`) picks its kernels by. Two processes of the same kind give the same bits for the
/// same inputs (whatever their thread counts: measured by `cohort bench verify`); of
/// different kinds, possibly not, in the last bits.
pub fn compute_kind() -> String {
    #[allow(unused_mut)]
    let mut features: Vec<&str> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        for (name, on) in [
            ("avx512f", std::arch::is_x86_feature_detected!("avx512f")),
            ("avx2", std::arch::is_x86_feature_detected!("avx2")),
            ("fma", std::arch::is_x86_feature_detected!("fma")),
        ] {
            if on {
                features.push(name);
            }
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("neon") {
            features.push("neon");
        }
        if std::arch::is_aarch64_feature_detected!("fp16") {
            features.push("fp16");
        }
    }
    format!(
        "cohort-model {} {} [{}]",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH,
        features.join(",")
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn fast_tanh_is_within_a_millionth() {
        let mut worst = 0f64;
        for i in -200_000..=200_000 {
            let x = i as f64 * 1e-4;
            let e = (f64::from(super::tanh_f32(x as f32)) - x.tanh()).abs();
            worst = worst.max(e);
        }
        assert!(worst < 1e-6, "max error {worst}");
    }
}
