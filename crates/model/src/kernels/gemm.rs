//! A bounds-checked, safe front for the `gemm` crate (the matrix kernel candle itself uses),
//! with its own two-thread split (see [`matmul`]).
//!
//! `gemm::gemm` takes raw pointers and strides. Every call here first checks that each matrix's
//! highest element index lies inside its slice and that the destination's rows and columns do
//! not overlap, so the `unsafe` call cannot read or write out of bounds. Strides let the
//! attention kernel address heads inside a packed `[T, 3D]` buffer without copying.
#![allow(unsafe_code)]

use rayon::prelude::*;

use super::Real;

/// A read-only strided matrix view: element (i, j) is `data[off + i * rs + j * cs]`.
#[derive(Debug, Clone, Copy)]
pub struct MatRef<'a, T> {
    pub data: &'a [T],
    pub off: usize,
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

/// A writable strided matrix view; rows and columns must not alias.
#[derive(Debug)]
pub struct MatMut<'a, T> {
    pub data: &'a mut [T],
    pub off: usize,
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a, T> MatRef<'a, T> {
    /// A row-major view (`cs = 1`).
    pub fn rows(data: &'a [T], off: usize, rows: usize, cols: usize, rs: usize) -> Self {
        Self {
            data,
            off,
            rows,
            cols,
            rs,
            cs: 1,
        }
    }

    /// The transpose of this view (no copy).
    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }
}

impl<'a, T> MatMut<'a, T> {
    /// A row-major view (`cs = 1`).
    pub fn rows(data: &'a mut [T], off: usize, rows: usize, cols: usize, rs: usize) -> Self {
        Self {
            data,
            off,
            rows,
            cols,
            rs,
            cs: 1,
        }
    }
}

fn in_bounds(len: usize, off: usize, rows: usize, cols: usize, rs: usize, cs: usize) -> bool {
    if rows == 0 || cols == 0 {
        return true;
    }
    let last = (rows - 1)
        .checked_mul(rs)
        .and_then(|a| (cols - 1).checked_mul(cs).and_then(|b| a.checked_add(b)))
        .and_then(|a| a.checked_add(off));
    matches!(last, Some(l) if l < len)
}

/// `dst = (accumulate ? dst : 0) + alpha * lhs @ rhs` on `threads` threads (1: this thread).
pub fn matmul<T: Real>(
    dst: MatMut<'_, T>,
    lhs: MatRef<'_, T>,
    rhs: MatRef<'_, T>,
    alpha: T,
    accumulate: bool,
    threads: usize,
) -> candle_core::Result<()> {
    let (m, n, k) = (dst.rows, dst.cols, lhs.cols);
    if lhs.rows != m || rhs.rows != k || rhs.cols != n {
        candle_core::bail!(
            "matmul: shapes [{m}, {n}] = [{}, {}] x [{}, {}]",
            lhs.rows,
            lhs.cols,
            rhs.rows,
            rhs.cols
        );
    }
    let ok = in_bounds(lhs.data.len(), lhs.off, lhs.rows, lhs.cols, lhs.rs, lhs.cs)
        && in_bounds(rhs.data.len(), rhs.off, rhs.rows, rhs.cols, rhs.rs, rhs.cs)
        && in_bounds(dst.data.len(), dst.off, m, n, dst.rs, dst.cs);
    // Destination rows and columns must not overlap (row-major or column-major packing).
    let disjoint = m <= 1 || n <= 1 || dst.rs >= n * dst.cs || dst.cs >= m * dst.rs;
    if !ok || !disjoint || (m > 1 && dst.rs == 0) || (n > 1 && dst.cs == 0) {
        candle_core::bail!("matmul: strided view out of bounds or aliasing");
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    dst.data[dst.off + i * dst.rs + j * dst.cs] = T::ZERO;
                }
            }
        }
        return Ok(());
    }
    let (rs, cs, off) = (dst.rs, dst.cs, dst.off);
    let flops = m.saturating_mul(n).saturating_mul(k);
    let parts = if flops >= SPLIT_MIN_MNK {
        threads.min(m.max(n))
    } else {
        1
    };
    // The destination's exclusive borrow, held for the whole call, as an address the threads
    // below can share.
    let base = dst.data.as_mut_ptr() as usize;
    if parts <= 1 {
        // SAFETY: the whole destination, checked above.
        unsafe { gemm_raw(base as *mut T, off, (rs, cs), lhs, rhs, alpha, accumulate) };
        return Ok(());
    }
    // Split the longer of the destination's two dimensions into `parts` bands, one
    // single-threaded gemm each. At these sizes this scales better than gemm's own threading
    // (which splits inside its blocking and synchronises per block), and every destination
    // element is computed by the same kernel over the same k blocks as on one thread, so the
    // result does not depend on the thread count (tested).
    let split_rows = m >= n;
    let len = if split_rows { m } else { n };
    let band = len.div_ceil(parts).next_multiple_of(16).min(len);
    let starts: Vec<usize> = (0..len).step_by(band).collect();
    starts.into_par_iter().for_each(|start| {
        let end = (start + band).min(len);
        let (l, r, at) = if split_rows {
            let l = MatRef {
                off: lhs.off + start * lhs.rs,
                rows: end - start,
                ..lhs
            };
            (l, rhs, off + start * rs)
        } else {
            let r = MatRef {
                off: rhs.off + start * rhs.cs,
                cols: end - start,
                ..rhs
            };
            (lhs, r, off + start * cs)
        };
        // SAFETY: band `start..end` of the destination lies inside the checked whole, and
        // the bands are disjoint sets of rows (or columns) of a destination whose rows and
        // columns do not overlap, so no two threads write the same element.
        unsafe { gemm_raw(base as *mut T, at, (rs, cs), l, r, alpha, accumulate) };
    });
    Ok(())
}

/// Products with fewer multiply-adds than this run on one thread (splitting costs more).
const SPLIT_MIN_MNK: usize = 1 << 20;

/// One single-threaded `gemm` call: `dst = (accumulate ? dst : 0) + alpha * lhs @ rhs` for the
/// `lhs.rows x rhs.cols` block starting at `dst.add(off)` with row and column strides `rs`, `cs`.
///
/// # Safety
/// Every element of `lhs` and `rhs` must lie inside its slice, every element of the block
/// must lie inside memory this call may write exclusively, and the block's elements must be
/// distinct.
unsafe fn gemm_raw<T: Real>(
    dst: *mut T,
    off: usize,
    (rs, cs): (usize, usize),
    lhs: MatRef<'_, T>,
    rhs: MatRef<'_, T>,
    alpha: T,
    accumulate: bool,
) {
    // SAFETY: guaranteed by the caller. gemm dispatches on T's TypeId (f32 or f64).
    unsafe {
        gemm::gemm(
            lhs.rows,
            rhs.cols,
            lhs.cols,
            dst.add(off),
            cs as isize,
            rs as isize,
            accumulate,
            lhs.data.as_ptr().add(lhs.off),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr().add(rhs.off),
            rhs.cs as isize,
            rhs.rs as isize,
            T::ONE,
            alpha,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    #[test]
    fn strided_and_transposed_views_match_naive() {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f64> = (0..m * k).map(|i| (i as f64 * 0.37).sin()).collect();
        let b: Vec<f64> = (0..k * n).map(|i| (i as f64 * 0.11).cos()).collect();
        let want = naive(&a, &b, m, k, n);
        let mut c = vec![1.0; m * n];
        matmul(
            MatMut::rows(&mut c, 0, m, n, n),
            MatRef::rows(&a, 0, m, k, k),
            MatRef::rows(&b, 0, k, n, n),
            1.0,
            false,
            1,
        )
        .unwrap();
        for (x, y) in c.iter().zip(&want) {
            assert!((x - y).abs() < 1e-12);
        }
        // b stored transposed ([n, k]) and read through .t(); accumulate twice the product.
        let bt: Vec<f64> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        matmul(
            MatMut::rows(&mut c, 0, m, n, n),
            MatRef::rows(&a, 0, m, k, k),
            MatRef::rows(&bt, 0, n, k, k).t(),
            2.0,
            true,
            2,
        )
        .unwrap();
        for (x, y) in c.iter().zip(&want) {
            assert!((x - 3.0 * y).abs() < 1e-12);
        }
    }

    #[test]
    fn split_products_equal_single_threaded_ones_bit_for_bit() {
        // Tall (rows split), wide (columns split), transposed operands, a strided destination
        // and accumulation, all above the split threshold.
        for (m, n, k, ta, tb) in [
            (300, 40, 100, false, false),
            (40, 300, 100, true, false),
            (257, 129, 64, false, true),
            (129, 257, 64, true, true),
        ] {
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7919) % 1013) as f32 / 97.0 - 5.0)
                .collect();
            let b: Vec<f32> = (0..k * n)
                .map(|i| ((i * 104_729) % 997) as f32 / 89.0 - 5.5)
                .collect();
            let lhs = if ta {
                MatRef::rows(&a, 0, k, m, m).t()
            } else {
                MatRef::rows(&a, 0, m, k, k)
            };
            let rhs = if tb {
                MatRef::rows(&b, 0, n, k, k).t()
            } else {
                MatRef::rows(&b, 0, k, n, n)
            };
            let stride = n + 3;
            let init: Vec<f32> = (0..m * stride).map(|i| (i % 13) as f32).collect();
            let mut outs = Vec::new();
            for threads in [1, 2, 3] {
                let mut c = init.clone();
                matmul(
                    MatMut::rows(&mut c, 0, m, n, stride),
                    lhs,
                    rhs,
                    0.5,
                    true,
                    threads,
                )
                .unwrap();
                outs.push(c);
            }
            assert!(m * n * k >= SPLIT_MIN_MNK);
            assert_eq!(outs[0], outs[1], "{m}x{n}x{k} two threads");
            assert_eq!(outs[0], outs[2], "{m}x{n}x{k} three threads");
            // The padding columns of the strided destination are untouched.
            for i in 0..m {
                assert_eq!(
                    outs[1][i * stride + n..(i + 1) * stride],
                    init[i * stride + n..(i + 1) * stride]
                );
            }
        }
    }

    #[test]
    fn out_of_bounds_views_are_rejected() {
        let a = vec![0.0f32; 6];
        let mut c = vec![0.0f32; 4];
        let r = matmul(
            MatMut::rows(&mut c, 0, 2, 2, 2),
            MatRef::rows(&a, 0, 2, 3, 3),
            MatRef::rows(&a, 1, 3, 2, 2),
            1.0,
            false,
            1,
        );
        assert!(r.is_err());
    }
}
