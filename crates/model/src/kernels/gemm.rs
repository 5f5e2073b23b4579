//! A bounds-checked, safe front for the `gemm` crate (the matrix kernel candle itself uses).
//!
//! `gemm::gemm` takes raw pointers and strides. Every call here first checks that each matrix's
//! highest element index lies inside its slice and that the destination's rows and columns do
//! not overlap, so the `unsafe` call cannot read or write out of bounds. Strides let the
//! attention kernel address heads inside a packed `[T, 3D]` buffer without copying.
#![allow(unsafe_code)]

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
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the checks above guarantee that every element gemm reads (lhs, rhs) or writes
    // (dst) lies inside its slice, that dst's elements are distinct, and the borrow checker
    // guarantees dst does not alias lhs or rhs. gemm dispatches on T's TypeId (f32 or f64).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.data.as_mut_ptr().add(dst.off),
            dst.cs as isize,
            dst.rs as isize,
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
            par,
        );
    }
    Ok(())
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
