//! Forward and backward time of each fused op at the reference model's shapes (batch 16,
//! context 128, d_model 256, 4 heads), against the same maths in candle's basic ops.
//!
//! cargo run --release -p cohort-model --example profile_ops

use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use cohort_core::SplitMix64;
use cohort_model::kernels::{self, linear::WeightLayout, reference};

fn rand(shape: &[usize], seed: u64) -> candle_core::Result<Tensor> {
    let n = shape.iter().product();
    Tensor::from_vec(
        SplitMix64::new(seed).normal_vec(n, 1.0),
        shape,
        &Device::Cpu,
    )
}

fn time(
    name: &str,
    x: &Var,
    f: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>,
) -> candle_core::Result<()> {
    let reps = 10;
    let (mut fwd, mut bwd) = (f64::MAX, f64::MAX);
    for _ in 0..reps {
        let s = Instant::now();
        let y = f(x.as_tensor())?;
        let m = Instant::now();
        let _ = y.sum_all()?.backward()?;
        let e = Instant::now();
        fwd = fwd.min((m - s).as_secs_f64());
        bwd = bwd.min((e - m).as_secs_f64());
    }
    println!(
        "{name:32} forward {:7.2} ms  backward {:7.2} ms",
        fwd * 1e3,
        bwd * 1e3
    );
    Ok(())
}

fn main() -> candle_core::Result<()> {
    let x256 = Var::from_tensor(&rand(&[2048, 256], 1)?)?;
    let x1024 = Var::from_tensor(&rand(&[2048, 1024], 2)?)?;
    let qkv = Var::from_tensor(&(rand(&[16, 128, 768], 3)? * 0.3)?)?;
    let logits = Var::from_tensor(&rand(&[2048, 65], 4)?)?;
    let w = Var::from_tensor(&(rand(&[256, 768], 5)? * 0.05)?)?;
    let b = Var::from_tensor(&rand(&[768], 6)?)?;
    let (g, bb) = (
        Var::from_tensor(&rand(&[256], 7)?)?,
        Var::from_tensor(&rand(&[256], 8)?)?,
    );
    let t = Tensor::from_vec(
        (0..2048u32).map(|i| i % 65).collect::<Vec<_>>(),
        2048,
        &Device::Cpu,
    )?;
    let frozen = w.as_tensor().detach();
    time("linear 2048x256x768", &x256, &|x| {
        kernels::linear(x, w.as_tensor(), Some(b.as_tensor()), WeightLayout::InOut)
    })?;
    time("linear frozen weight", &x256, &|x| {
        kernels::linear(x, &frozen, None, WeightLayout::InOut)
    })?;
    time("candle matmul + bias", &x256, &|x| {
        x.matmul(w.as_tensor())?.broadcast_add(b.as_tensor())
    })?;
    time("attention fused", &qkv, &|x| {
        kernels::causal_attention(x, 4)
    })?;
    time("attention basic ops", &qkv, &|x| {
        reference::causal_attention(x, 4)
    })?;
    time("layer norm fused", &x256, &|x| {
        kernels::layer_norm(x, g.as_tensor(), bb.as_tensor(), 1e-5)
    })?;
    time("layer norm basic ops", &x256, &|x| {
        reference::layer_norm(x, g.as_tensor(), bb.as_tensor(), 1e-5)
    })?;
    time("gelu fused 2048x1024", &x1024, &|x| kernels::gelu(x))?;
    time("gelu basic ops", &x1024, &|x| reference::gelu(x))?;
    time("cross-entropy fused", &logits, &|x| {
        kernels::cross_entropy_rows(x, &t)
    })?;
    time("cross-entropy basic ops", &logits, &|x| {
        reference::cross_entropy_rows(x, &t)
    })?;
    let gy = rand(&[2048, 768], 9)?;
    let bench =
        |name: &str, f: &dyn Fn() -> candle_core::Result<Tensor>| -> candle_core::Result<()> {
            let mut best = f64::MAX;
            for _ in 0..10 {
                let s = Instant::now();
                let _ = f()?;
                best = best.min(s.elapsed().as_secs_f64());
            }
            println!("{name:32} {:7.2} ms", best * 1e3);
            Ok(())
        };
    bench("dx = g w^T (candle)", &|| gy.matmul(&w.as_tensor().t()?))?;
    bench("dw = x^T g (candle)", &|| x256.as_tensor().t()?.matmul(&gy))?;
    bench("db = sum_0 g (candle)", &|| gy.sum(0))?;
    bench("zeros_like + add 2048x768", &|| gy.zeros_like()?.add(&gy))?;
    time("add 2048x1024", &x1024, &|x| x + x)?;
    time("affine 2048x1024", &x1024, &|x| x * 0.5)?;
    Ok(())
}
