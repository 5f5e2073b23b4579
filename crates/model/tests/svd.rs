#![allow(clippy::unwrap_used, clippy::expect_used)]
//! SVD low-rank factorisation of a model's linear layers: parameters and multiply-adds
//! shrink, the factored forward equals the dense rank-k weights, checkpoints round-trip.

use candle_core::{Device, Tensor};
use cohort_model::svd::{densify, factorize};
use cohort_model::{Gpt, GptConfig, LanguageModel};

fn model() -> Gpt {
    Gpt::new(GptConfig::preset("test", 19).unwrap(), 3, &Device::Cpu).unwrap()
}

fn logits(m: &dyn LanguageModel) -> Vec<f32> {
    let x = Tensor::from_vec(
        (0..20u32).map(|i| i * 7 % 19).collect::<Vec<u32>>(),
        (2, 10),
        &Device::Cpu,
    )
    .unwrap();
    m.forward(&x)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn dist(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f32>()
        .sqrt()
}

#[test]
fn factorising_shrinks_the_model_and_error_falls_with_rank() {
    let base = logits(&model());
    let all = vec!["all-linear".to_string()];
    let mut errs = Vec::new();
    for k in [2, 6, 12] {
        let mut m = model();
        let r = factorize(&mut m, k, &all).unwrap();
        assert_eq!(r.layers.len(), 8, "rank {k}");
        assert!(r.params_after < r.params_before);
        assert!(r.macs_per_token_after < r.macs_per_token_before);
        // c_attn is 32 x 96: k (32 + 96) parameters instead of 3072.
        assert_eq!(r.layers[0].params_after, k * 128);
        assert_eq!(m.params().total_len(), r.params_after);
        let e = r.layers.iter().map(|l| l.energy).sum::<f64>();
        errs.push((e, dist(&logits(&m), &base)));
    }
    assert!(errs[0].0 < errs[1].0 && errs[1].0 < errs[2].0, "{errs:?}");
    // Only c_fc: 2 layers.
    let mut m = model();
    assert_eq!(
        factorize(&mut m, 4, &["c_fc".to_string()])
            .unwrap()
            .layers
            .len(),
        2
    );
}

#[test]
fn factored_forward_equals_the_dense_product_and_checkpoints_round_trip() {
    let mut m = model();
    factorize(&mut m, 5, &["all-linear".to_string()]).unwrap();
    let factored = logits(&m);
    let dir = tempfile::tempdir().unwrap();
    m.save(dir.path()).unwrap();
    let back = Gpt::load(dir.path(), &Device::Cpu).unwrap();
    assert_eq!(back.config.cohort_lowrank.len(), 8);
    assert_eq!(back.params().flat().unwrap(), m.params().flat().unwrap());
    assert_eq!(logits(&back), factored);
    densify(&mut m).unwrap();
    assert!(m.weights().lowrank.is_empty());
    let dense = logits(&m);
    assert!(
        dist(&dense, &factored) < 1e-3,
        "{}",
        dist(&dense, &factored)
    );
    let dir2 = tempfile::tempdir().unwrap();
    m.save(dir2.path()).unwrap();
    let cfg = std::fs::read_to_string(dir2.path().join("config.json")).unwrap();
    assert!(!cfg.contains("cohort_lowrank"));
    assert_eq!(m.params().spec()[2].name, "transformer.h.0.ln_1.weight");
}

#[test]
fn randomised_svd_finds_the_leading_singular_values_and_a_low_rank_matrix_exactly() {
    use cohort_model::svd::{svd, svd_randomized};
    let (m, n) = (60, 80);
    let mut r = cohort_core::SplitMix64::new(11);
    // A decaying spectrum: a sum of rank-one terms with weights 2^-i, plus noise.
    let mut a = vec![0f64; m * n];
    for i in 0..30 {
        let x = r.normal_vec(m, 1.0);
        let y = r.normal_vec(n, 1.0);
        let w = 0.5f64.powi(i);
        for p in 0..m {
            for q in 0..n {
                a[p * n + q] += w * f64::from(x[p]) * f64::from(y[q]);
            }
        }
    }
    let exact = svd(&a, m, n);
    let fast = svd_randomized(&a, m, n, 6, 10, 2);
    assert_eq!(fast.s.len(), 6);
    for (f, e) in fast.s.iter().zip(&exact.s) {
        assert!((f - e).abs() <= 1e-9 * e, "{f} vs {e}");
    }
    // Reconstruction from the factors: U S Vt against the exact rank-6 one.
    let rebuild = |d: &cohort_model::svd::Svd, k: usize| -> Vec<f64> {
        let r = d.s.len();
        (0..m * n)
            .map(|i| {
                let (p, q) = (i / n, i % n);
                (0..k)
                    .map(|j| d.u[p * r + j] * d.s[j] * d.vt[j * n + q])
                    .sum()
            })
            .collect()
    };
    let (x, y) = (rebuild(&fast, 6), rebuild(&exact, 6));
    let err = x
        .iter()
        .zip(&y)
        .map(|(a, b)| (a - b).powi(2))
        .sum::<f64>()
        .sqrt();
    let norm = y.iter().map(|v| v * v).sum::<f64>().sqrt();
    assert!(
        err <= 1e-8 * norm,
        "rank-6 approximations differ by {err} of {norm}"
    );
    // Deterministic.
    assert_eq!(fast.s, svd_randomized(&a, m, n, 6, 10, 2).s);
    // Without power iterations and oversampling the sketch is visibly worse: the test can fail.
    let crude = svd_randomized(&a, m, n, 6, 0, 0);
    assert!((crude.s[5] - exact.s[5]).abs() > 1e-6 * exact.s[5]);
}
