//! AdamW (decoupled weight decay) with linear warm-up and cosine decay, and global-norm
//! gradient clipping. The state is plain f32 vectors in parameter order so that it can be
//! saved and a run resumed bit for bit.

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, Layout, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::params::Params;
use crate::{Error, Result};

/// Optimiser and schedule settings (defaults: nanoGPT's for small character models).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    /// Peak learning rate (default 1e-3).
    pub lr: f64,
    /// Learning rate at the end of the cosine decay (default lr / 10).
    pub min_lr: f64,
    /// Linear warm-up steps (default 100).
    pub warmup_steps: usize,
    /// Steps of the whole run; the cosine reaches `min_lr` here (default 5000).
    pub total_steps: usize,
    /// Decoupled weight decay on matrices (rank >= 2); none on biases and norms (default 0.1).
    pub weight_decay: f64,
    pub beta1: f64,
    /// Default 0.99 (small models, small batches).
    pub beta2: f64,
    pub eps: f64,
    /// Clip the global gradient norm to this (default 1.0; 0 disables).
    pub grad_clip: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            min_lr: 1e-4,
            warmup_steps: 100,
            total_steps: 5000,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            grad_clip: 1.0,
        }
    }
}

impl AdamWConfig {
    /// Checks every setting: `lr` finite and positive, `min_lr` finite and >= 0, betas in
    /// [0, 1), `eps` finite and positive, `weight_decay` and `grad_clip` finite and not negative.
    pub fn validate(&self) -> Result<()> {
        let check = |field: &str, v: f64, ok: bool, range: &str| {
            if v.is_finite() && ok {
                Ok(())
            } else {
                Err(Error::config(field, format!("{v} is not {range}")))
            }
        };
        check("lr", self.lr, self.lr > 0.0, "a finite number > 0")?;
        check(
            "min_lr",
            self.min_lr,
            self.min_lr >= 0.0,
            "a finite number >= 0",
        )?;
        check(
            "weight_decay",
            self.weight_decay,
            self.weight_decay >= 0.0,
            "a finite number >= 0",
        )?;
        check(
            "beta1",
            self.beta1,
            (0.0..1.0).contains(&self.beta1),
            "in [0, 1)",
        )?;
        check(
            "beta2",
            self.beta2,
            (0.0..1.0).contains(&self.beta2),
            "in [0, 1)",
        )?;
        check("eps", self.eps, self.eps > 0.0, "a finite number > 0")?;
        check(
            "grad_clip",
            self.grad_clip,
            self.grad_clip >= 0.0,
            "a finite number >= 0 (0: no clipping)",
        )
    }

    /// The learning rate at `step` (0-based).
    pub fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let p = ((step - self.warmup_steps) as f64 / span as f64).min(1.0);
        self.min_lr + 0.5 * (1.0 + (std::f64::consts::PI * p).cos()) * (self.lr - self.min_lr)
    }
}

/// AdamW state for the trainable parameters of one [`Params`].
#[derive(Debug, Clone)]
pub struct AdamW {
    pub config: AdamWConfig,
    /// Steps taken.
    pub step: usize,
    names: Vec<String>,
    m: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

/// What one optimiser step saw.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct StepInfo {
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
}

/// One AdamW step's constants for one parameter.
#[derive(Debug, Clone, Copy)]
struct Rule {
    b1: f32,
    b2: f32,
    step_size: f32,
    bc2_sqrt: f32,
    eps: f32,
    clip: f32,
    decay: f32,
}

impl Rule {
    /// Updates weights `w` and moments `m`, `v` from gradient `g`, in fixed chunks on
    /// rayon's threads (element-wise, so the result does not depend on the thread count).
    fn apply(&self, w: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]) {
        let r = *self;
        w.par_chunks_mut(4096)
            .zip(m.par_chunks_mut(4096))
            .zip(v.par_chunks_mut(4096).zip(g.par_chunks(4096)))
            .for_each(|((w, m), (v, g))| {
                for j in 0..w.len() {
                    let g = g[j] * r.clip;
                    m[j] = r.b1 * m[j] + (1.0 - r.b1) * g;
                    v[j] = r.b2 * v[j] + (1.0 - r.b2) * g * g;
                    w[j] -= r.decay * w[j];
                    w[j] -= r.step_size * m[j] / (v[j].sqrt() / r.bc2_sqrt + r.eps);
                }
            });
    }
}

/// The update applied to a CPU parameter's storage in place.
struct InPlace<'a> {
    rule: Rule,
    state: std::cell::RefCell<(&'a mut Vec<f32>, &'a mut Vec<f32>)>,
    grad: &'a [f32],
}

impl candle_core::InplaceOp1 for InPlace<'_> {
    fn name(&self) -> &'static str {
        "adamw"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let (CpuStorage::F32(data), Some((a, b))) = (storage, layout.contiguous_offsets()) else {
            candle_core::bail!("adamw: parameter is not a contiguous f32 tensor");
        };
        let w = &mut data[a..b];
        let mut state = self.state.borrow_mut();
        let (m, v) = &mut *state;
        if w.len() != self.grad.len() || m.len() != w.len() || v.len() != w.len() {
            candle_core::bail!("adamw: state does not match the parameter's size");
        }
        self.rule.apply(w, m, v, self.grad);
        Ok(())
    }
}

/// Gradients of the trainable parameters, as f32 vectors in parameter order.
pub fn collect_grads(params: &Params, grads: &GradStore) -> Result<Vec<Vec<f32>>> {
    params
        .trainable()
        .map(|p| match grads.get(p.var.as_tensor()) {
            Some(g) => Ok(g
                .flatten_all()?
                .to_dtype(candle_core::DType::F32)?
                .to_vec1::<f32>()?),
            None => Ok(vec![0f32; p.var.elem_count()]),
        })
        .collect()
}

impl AdamW {
    /// Fresh state for `params`' trainable parameters.
    pub fn new(params: &Params, config: AdamWConfig) -> Self {
        let names = params.trainable().map(|p| p.name.clone()).collect();
        let zeros = || {
            params
                .trainable()
                .map(|p| vec![0f32; p.var.elem_count()])
                .collect()
        };
        Self {
            config,
            step: 0,
            names,
            m: zeros(),
            v: zeros(),
        }
    }

    /// Applies one update from `grads` (in parameter order, e.g. from [`collect_grads`]).
    pub fn step(&mut self, params: &Params, grads: &[Vec<f32>]) -> Result<StepInfo> {
        let trainable: Vec<_> = params.trainable().collect();
        if trainable.len() != self.names.len() || grads.len() != self.names.len() {
            return Err(Error::Params(
                "optimiser state does not match the trainable parameters".into(),
            ));
        }
        let c = &self.config;
        // Each gradient's sum of squares in order, on its own thread, then summed in
        // parameter order: the same additions in the same order as a serial loop.
        let sq: f64 = grads
            .par_iter()
            .map(|g| g.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>())
            .collect::<Vec<f64>>()
            .into_iter()
            .sum();
        let norm = sq.sqrt();
        let clip = if c.grad_clip > 0.0 && norm > c.grad_clip {
            c.grad_clip / (norm + 1e-6)
        } else {
            1.0
        };
        let lr = c.lr_at(self.step);
        self.step += 1;
        let t = self.step as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2 = 1.0 - c.beta2.powi(t);
        let rule = Rule {
            b1: c.beta1 as f32,
            b2: c.beta2 as f32,
            step_size: (lr / bc1) as f32,
            bc2_sqrt: bc2.sqrt() as f32,
            eps: c.eps as f32,
            clip: clip as f32,
            decay: 0.0,
        };
        for (i, p) in trainable.iter().enumerate() {
            let rule = Rule {
                decay: if p.var.rank() >= 2 {
                    (lr * c.weight_decay) as f32
                } else {
                    0.0
                },
                ..rule
            };
            let (m, v, g) = (&mut self.m[i], &mut self.v[i], &grads[i]);
            if g.len() != p.var.elem_count() {
                return Err(Error::Params(format!(
                    "gradient of {} has {} values for {} weights",
                    p.name,
                    g.len(),
                    p.var.elem_count()
                )));
            }
            if p.var.device().is_cpu() && p.var.dtype() == DType::F32 {
                // In place in the parameter's storage: no copy out and back per step.
                let op = InPlace {
                    rule,
                    state: std::cell::RefCell::new((m, v)),
                    grad: g,
                };
                p.var.as_tensor().inplace_op1(&op)?;
            } else {
                let mut w = p.var.flatten_all()?.to_vec1::<f32>()?;
                rule.apply(&mut w, m, v, g);
                p.var
                    .set(&Tensor::from_vec(w, p.var.shape(), p.var.device())?)?;
            }
        }
        Ok(StepInfo {
            lr,
            grad_norm: norm,
        })
    }

    /// The moment vectors as named tensors (`m.{name}`, `v.{name}`), for checkpoints.
    pub fn state_tensors(&self, params: &Params) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for (i, p) in params.trainable().enumerate() {
            let dev = p.var.device();
            out.push((
                format!("m.{}", p.name),
                Tensor::from_slice(&self.m[i], p.var.shape(), dev)?,
            ));
            out.push((
                format!("v.{}", p.name),
                Tensor::from_slice(&self.v[i], p.var.shape(), dev)?,
            ));
        }
        Ok(out)
    }

    /// Restores the moments saved by [`AdamW::state_tensors`].
    pub fn load_state_tensors(
        &mut self,
        map: &std::collections::HashMap<String, Tensor>,
        file: &std::path::Path,
    ) -> Result<()> {
        for (i, name) in self.names.iter().enumerate() {
            for (prefix, dst) in [("m", &mut self.m[i]), ("v", &mut self.v[i])] {
                let key = format!("{prefix}.{name}");
                let t = map.get(&key).ok_or_else(|| Error::MissingTensor {
                    path: file.into(),
                    name: key.clone(),
                })?;
                let vals = t.flatten_all()?.to_vec1::<f32>()?;
                if vals.len() != dst.len() {
                    return Err(Error::TensorShape {
                        path: file.into(),
                        name: key,
                        expected: vec![dst.len()],
                        found: vec![vals.len()],
                    });
                }
                *dst = vals;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_min() {
        let c = AdamWConfig {
            lr: 1.0,
            min_lr: 0.1,
            warmup_steps: 10,
            total_steps: 110,
            ..Default::default()
        };
        assert!((c.lr_at(0) - 0.1).abs() < 1e-12);
        assert!((c.lr_at(9) - 1.0).abs() < 1e-12);
        assert!((c.lr_at(60) - 0.55).abs() < 1e-12);
        assert!((c.lr_at(110) - 0.1).abs() < 1e-12);
        assert!((c.lr_at(500) - 0.1).abs() < 1e-12);
        assert!((10..110).all(|s| c.lr_at(s + 1) <= c.lr_at(s)));
    }

    #[test]
    fn clipping_scales_the_gradient_before_adam() {
        // Adam's first step is lr * g / (|g| + eps) per element: with a large eps the step
        // depends on the gradient's size, so it shows whether the gradient was clipped.
        let mut params = Params::new();
        let dev = candle_core::Device::Cpu;
        params
            .insert("w", Tensor::new(&[1.0f32, 2.0], &dev).unwrap(), true)
            .unwrap();
        let (clip, eps) = (1e-3, 1e-3);
        let cfg = AdamWConfig {
            lr: 0.5,
            warmup_steps: 1,
            weight_decay: 0.0,
            grad_clip: clip,
            eps,
            ..Default::default()
        };
        let mut opt = AdamW::new(&params, cfg);
        let info = opt.step(&params, &[vec![3.0, -4.0]]).unwrap();
        assert!((info.grad_norm - 5.0).abs() < 1e-9);
        let w = params.get("w").unwrap().var.to_vec1::<f32>().unwrap();
        let c = clip / (5.0 + 1e-6);
        let want = [
            1.0 - 0.5 * 3.0 * c / (3.0 * c + eps),
            2.0 + 0.5 * 4.0 * c / (4.0 * c + eps),
        ];
        for (got, want) in w.iter().zip(want) {
            assert!((f64::from(*got) - want).abs() < 1e-5, "{w:?} vs {want:?}");
        }
    }
}
