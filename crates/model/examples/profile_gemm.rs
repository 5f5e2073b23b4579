//! The reference model's matmul shapes: throughput on one thread, with `gemm`'s own
//! two-thread parallelism, and with cohort's split (`kernels::gemm::matmul`: the longer side in
//! two bands, one single-threaded `gemm` each), best of 20.
//!
//! cargo run --release -p cohort-model --example profile_gemm
#![allow(unsafe_code)] // one raw `gemm::gemm` call, to time gemm's own threading for comparison

use std::time::Instant;

use cohort_model::kernels::gemm::{MatMut, MatRef, matmul};

/// `a` is `[m, k]` row-major, or stored `[k, m]` if `ta`; `b` is `[k, n]`, or `[n, k]` if `tb`.
struct Case {
    m: usize,
    n: usize,
    k: usize,
    a: Vec<f32>,
    b: Vec<f32>,
    ta: bool,
    tb: bool,
}

impl Case {
    fn lhs(&self) -> MatRef<'_, f32> {
        if self.ta {
            MatRef::rows(&self.a, 0, self.k, self.m, self.m).t()
        } else {
            MatRef::rows(&self.a, 0, self.m, self.k, self.k)
        }
    }

    fn rhs(&self) -> MatRef<'_, f32> {
        if self.tb {
            MatRef::rows(&self.b, 0, self.n, self.k, self.k).t()
        } else {
            MatRef::rows(&self.b, 0, self.k, self.n, self.n)
        }
    }

    /// Best seconds of 20 runs: `gemm_threads` = Some(t) times gemm's own `Rayon(t)`, None
    /// times cohort's `matmul` on rayon's pool.
    fn time(&self, gemm_threads: Option<usize>) -> f64 {
        let (m, n) = (self.m, self.n);
        let mut c = vec![0f32; m * n];
        let (l, r) = (self.lhs(), self.rhs());
        let mut best = f64::MAX;
        for _ in 0..20 {
            let t = Instant::now();
            match gemm_threads {
                Some(threads) => {
                    let par = if threads > 1 {
                        gemm::Parallelism::Rayon(threads)
                    } else {
                        gemm::Parallelism::None
                    };
                    // SAFETY: the views are the whole of `a`, `b` and `c` with these strides.
                    unsafe {
                        gemm::gemm(
                            m,
                            n,
                            self.k,
                            c.as_mut_ptr(),
                            1,
                            n as isize,
                            false,
                            l.data.as_ptr(),
                            l.cs as isize,
                            l.rs as isize,
                            r.data.as_ptr(),
                            r.cs as isize,
                            r.rs as isize,
                            1.0,
                            1.0,
                            false,
                            false,
                            false,
                            par,
                        )
                    }
                }
                None => matmul(
                    MatMut::rows(&mut c, 0, m, n, n),
                    l,
                    r,
                    1.0,
                    false,
                    rayon::current_num_threads(),
                )
                .expect("valid shapes"),
            }
            best = best.min(t.elapsed().as_secs_f64());
        }
        best
    }
}

fn main() {
    let threads = rayon::current_num_threads();
    let shapes: &[(&str, usize, usize, usize, bool, bool)] = &[
        ("fwd c_attn", 2048, 768, 256, false, true),
        ("fwd attn.c_proj", 2048, 256, 256, false, true),
        ("fwd c_fc", 2048, 1024, 256, false, true),
        ("fwd mlp.c_proj", 2048, 256, 1024, false, true),
        ("fwd logits", 2048, 65, 256, false, true),
        ("dx c_attn", 2048, 256, 768, false, false),
        ("dx c_fc", 2048, 256, 1024, false, false),
        ("dx mlp.c_proj", 2048, 1024, 256, false, false),
        ("dw c_attn", 768, 256, 2048, true, false),
        ("dw attn.c_proj", 256, 256, 2048, true, false),
        ("dw c_fc", 1024, 256, 2048, true, false),
        ("dw mlp.c_proj", 256, 1024, 2048, true, false),
        ("square 2048", 2048, 2048, 2048, false, false),
    ];
    println!(
        "{:16} {:>5} {:>5} {:>5} {:>10} {:>14} {:>14}",
        "shape", "m", "n", "k", "1 thread", "gemm threads", "cohort split"
    );
    println!(
        "{:35} {:>10} {:>14} {:>14}",
        "", "GFLOP/s", "GFLOP/s", "GFLOP/s"
    );
    let (mut t_gemm, mut t_split) = (0.0, 0.0);
    for &(name, m, n, k, ta, tb) in shapes {
        let fill = |len: usize, p: usize| -> Vec<f32> {
            (0..len)
                .map(|i| ((i * p) % 1009) as f32 / 1009.0 - 0.5)
                .collect()
        };
        let case = Case {
            m,
            n,
            k,
            a: fill(m * k, 7919),
            b: fill(k * n, 104_729),
            ta,
            tb,
        };
        let f = 2.0 * (m * n * k) as f64;
        let (t1, tg, ts) = (
            case.time(Some(1)),
            case.time(Some(threads)),
            case.time(None),
        );
        if name != "square 2048" {
            t_gemm += tg;
            t_split += ts;
        }
        println!(
            "{name:16} {m:5} {n:5} {k:5} {:10.1} {:14.1} {:14.1}",
            f / t1 / 1e9,
            f / tg / 1e9,
            f / ts / 1e9
        );
    }
    println!(
        "one layer's twelve products on {threads} threads: gemm's threading {:.2} ms, cohort's split {:.2} ms",
        t_gemm * 1e3,
        t_split * 1e3
    );
}
