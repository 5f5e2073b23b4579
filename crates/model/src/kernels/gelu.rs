//! GELU (tanh approximation, GPT-2's `gelu_new`) in one pass, with a one-pass backward.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{Real, contiguous, unsupported};

const C: f64 = 0.797_884_560_802_865_4; // sqrt(2 / pi)
const A: f64 = 0.044_715;
const CHUNK: usize = 16_384;

/// GELU of `x` (any shape), fused on CPU, basic ops elsewhere.
pub fn gelu(x: &Tensor) -> candle_core::Result<Tensor> {
    if x.device().is_cpu() {
        x.contiguous()?.apply_op1(Gelu)
    } else {
        super::reference::gelu(x)
    }
}

pub(crate) fn fwd<T: Real>(x: &[T]) -> Vec<T> {
    let mut y = vec![T::ZERO; x.len()];
    fwd_into(x, &mut y);
    y
}

/// [`fwd`] into `y` (same length as `x`, every element overwritten).
pub(crate) fn fwd_into<T: Real>(x: &[T], y: &mut [T]) {
    let (c, a, half) = (T::from_f64(C), T::from_f64(A), T::from_f64(0.5));
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(y, x)| {
            for (y, &x) in y.iter_mut().zip(x) {
                let t = (c * (x + a * x * x * x)).tanh_fast();
                *y = half * x * (T::ONE + t);
            }
        });
}

pub(crate) fn bwd<T: Real>(x: &[T], g: &[T]) -> Vec<T> {
    let mut dx = vec![T::ZERO; x.len()];
    bwd_into(x, g, &mut dx);
    dx
}

/// [`bwd`] into `dx` (same length as `x`, every element overwritten).
pub(crate) fn bwd_into<T: Real>(x: &[T], g: &[T], dx: &mut [T]) {
    let (c, a, half) = (T::from_f64(C), T::from_f64(A), T::from_f64(0.5));
    let a3 = T::from_f64(3.0 * A);
    dx.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
        .for_each(|(dx, (x, g))| {
            for ((dx, &x), &g) in dx.iter_mut().zip(x).zip(g) {
                let x2 = x * x;
                let t = (c * (x + a * x2 * x)).tanh_fast();
                let d = half * (T::ONE + t) + half * x * (T::ONE - t * t) * c * (T::ONE + a3 * x2);
                *dx = g * d;
            }
        });
}

struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "cohort-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(fwd(contiguous(v, l, self.name())?)),
            CpuStorage::F64(v) => CpuStorage::F64(fwd(contiguous(v, l, self.name())?)),
            s => return Err(unsupported(self.name(), s)),
        };
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&g.contiguous()?, &GeluBwd)?))
    }
}

struct GeluBwd;

impl CustomOp2 for GeluBwd {
    fn name(&self) -> &'static str {
        "cohort-gelu-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let n = self.name();
        let out = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(g)) => {
                CpuStorage::F32(bwd(contiguous(x, l1, n)?, contiguous(g, l2, n)?))
            }
            (CpuStorage::F64(x), CpuStorage::F64(g)) => {
                CpuStorage::F64(bwd(contiguous(x, l1, n)?, contiguous(g, l2, n)?))
            }
            (s, _) => return Err(unsupported(n, s)),
        };
        Ok((out, l1.shape().clone()))
    }
}
