#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The fused kernels against finite differences (f64) and against the same maths built from
//! candle's basic ops (f32, the dtype training uses).

use candle_core::{DType, Device, Tensor, Var};
use cohort_core::SplitMix64;
use cohort_model::kernels::{self, linear::WeightLayout, reference};

fn rand(shape: &[usize], seed: u64, dtype: DType) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = {
        let mut r = SplitMix64::new(seed);
        (0..n).map(|_| r.normal()).collect()
    };
    Tensor::from_vec(v, shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// Checks d(sum(f(x) * r))/dx from backward against central differences for every input.
fn grad_check(inputs: &[Tensor], f: &dyn Fn(&[Tensor]) -> Tensor) {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let out = f(&ts);
    let r = rand(out.dims(), 99, DType::F64);
    let loss = |xs: &[Tensor]| -> f64 {
        (f(xs) * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let grads = (out * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let eps = 1e-6;
    for (k, v) in vars.iter().enumerate() {
        let g: Vec<f64> = grads
            .get(v)
            .expect("gradient missing")
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let base: Vec<f64> = inputs[k].flatten_all().unwrap().to_vec1().unwrap();
        for i in 0..base.len() {
            let eval = |delta: f64| {
                let mut p = base.clone();
                p[i] += delta;
                let mut xs = inputs.to_vec();
                xs[k] = Tensor::from_vec(p, inputs[k].shape(), &Device::Cpu).unwrap();
                loss(&xs)
            };
            let num = (eval(eps) - eval(-eps)) / (2.0 * eps);
            let err = (num - g[i]).abs() / (1.0 + num.abs());
            assert!(
                err < 1e-6,
                "input {k} element {i}: analytic {} numeric {num}",
                g[i]
            );
        }
    }
}

#[test]
fn gelu_gradient_matches_finite_differences() {
    grad_check(&[rand(&[3, 5], 1, DType::F64)], &|x| {
        kernels::gelu(&x[0]).unwrap()
    });
}

#[test]
fn layer_norm_gradients_match_finite_differences() {
    let (x, w, b) = (
        rand(&[2, 3, 6], 2, DType::F64),
        rand(&[6], 3, DType::F64),
        rand(&[6], 4, DType::F64),
    );
    grad_check(&[x, w, b], &|t| {
        kernels::layer_norm(&t[0], &t[1], &t[2], 1e-5).unwrap()
    });
}

#[test]
fn causal_attention_gradient_matches_finite_differences() {
    // batch 2, 5 positions, 2 heads of width 3.
    grad_check(&[rand(&[2, 5, 18], 5, DType::F64)], &|t| {
        kernels::causal_attention(&t[0], 2).unwrap()
    });
}

#[test]
fn blocked_causal_attention_gradient_matches_finite_differences() {
    // 37 positions: two full 32-row blocks would hide a wrong partial last block.
    grad_check(&[rand(&[1, 37, 12], 15, DType::F64)], &|t| {
        kernels::causal_attention(&t[0], 2).unwrap()
    });
}

#[test]
fn cross_entropy_gradient_matches_finite_differences() {
    let targets = Tensor::new(&[0u32, 4, 2, 1], &Device::Cpu).unwrap();
    grad_check(&[rand(&[4, 5], 6, DType::F64)], &|t| {
        kernels::cross_entropy_rows(&t[0], &targets).unwrap()
    });
}

#[test]
fn linear_gradients_match_finite_differences_in_both_layouts() {
    let x = rand(&[2, 3, 4], 7, DType::F64);
    let b = rand(&[5], 8, DType::F64);
    grad_check(
        &[x.clone(), rand(&[4, 5], 9, DType::F64), b.clone()],
        &|t| kernels::linear(&t[0], &t[1], Some(&t[2]), WeightLayout::InOut).unwrap(),
    );
    grad_check(&[x, rand(&[5, 4], 10, DType::F64)], &|t| {
        kernels::linear(&t[0], &t[1], None, WeightLayout::OutIn).unwrap()
    });
}

#[test]
fn linear_skips_the_gradient_of_a_frozen_weight() {
    let x = Var::from_tensor(&rand(&[3, 4], 11, DType::F32)).unwrap();
    let w = rand(&[4, 2], 12, DType::F32); // a constant, not a Var
    let y = kernels::linear(x.as_tensor(), &w, None, WeightLayout::InOut).unwrap();
    let g = y.sum_all().unwrap().backward().unwrap();
    assert!(g.get(x.as_tensor()).is_some());
    assert!(g.get(&w).is_none());
}

#[test]
fn cross_entropy_rejects_out_of_range_targets() {
    let logits = rand(&[2, 3], 13, DType::F32);
    let t = Tensor::new(&[0u32, 3], &Device::Cpu).unwrap();
    assert!(kernels::cross_entropy_rows(&logits, &t).is_err());
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Forward and input gradient of a fused op and of its basic-op reference, in f32.
fn compare_f32(
    x: Tensor,
    fused: &dyn Fn(&Tensor) -> Tensor,
    refr: &dyn Fn(&Tensor) -> Tensor,
    tol: f32,
) {
    let v = Var::from_tensor(&x).unwrap();
    let (a, b) = (fused(v.as_tensor()), refr(v.as_tensor()));
    assert!(
        max_diff(&a, &b) < tol,
        "forward differs by {}",
        max_diff(&a, &b)
    );
    let r = rand(a.dims(), 77, DType::F32);
    let ga = (a * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let gb = (b * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let (ga, gb) = (
        ga.get(v.as_tensor()).unwrap(),
        gb.get(v.as_tensor()).unwrap(),
    );
    assert!(
        max_diff(ga, gb) < tol,
        "gradient differs by {}",
        max_diff(ga, gb)
    );
}

#[test]
fn fused_ops_match_basic_op_references_in_f32() {
    compare_f32(
        rand(&[4, 33, 96], 20, DType::F32),
        &|x| kernels::causal_attention(x, 4).unwrap(),
        &|x| reference::causal_attention(x, 4).unwrap(),
        1e-4,
    );
    compare_f32(
        rand(&[2, 70, 48], 26, DType::F32),
        &|x| kernels::causal_attention(x, 2).unwrap(),
        &|x| reference::causal_attention(x, 2).unwrap(),
        1e-4,
    );
    compare_f32(
        rand(&[7, 64], 21, DType::F32),
        &|x| kernels::gelu(x).unwrap(),
        &|x| reference::gelu(x).unwrap(),
        1e-5,
    );
    let (w, b) = (rand(&[64], 22, DType::F32), rand(&[64], 23, DType::F32));
    compare_f32(
        rand(&[9, 64], 24, DType::F32),
        &|x| kernels::layer_norm(x, &w, &b, 1e-5).unwrap(),
        &|x| reference::layer_norm(x, &w, &b, 1e-5).unwrap(),
        1e-4,
    );
    let t = Tensor::new(&[1u32, 0, 64, 3, 9, 2], &Device::Cpu).unwrap();
    compare_f32(
        rand(&[6, 65], 25, DType::F32),
        &|x| kernels::cross_entropy_rows(x, &t).unwrap(),
        &|x| reference::cross_entropy_rows(x, &t).unwrap(),
        1e-5,
    );
}
