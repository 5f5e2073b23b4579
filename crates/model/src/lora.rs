//! LoRA adapters (Hu et al. 2021) in Hugging Face PEFT's format.
//!
//! For a linear layer `y = x W' + b` the adapter adds `scale * (x A^T) B^T`, with `A` `[r, in]`
//! (Kaiming-uniform, as PEFT) and `B` `[out, r]` zero at initialisation, so a fresh adapter
//! changes nothing; `scale = alpha / r`. The base weights are frozen (detached in the forward
//! pass, and the fused linear op skips their gradient). Tensors are named as PEFT saves them,
//! `base_model.model.{module}.lora_A.weight`, and `adapter_config.json` carries PEFT's fields,
//! so an adapter trained here loads in PEFT and the reverse.
//!
//! Dropout (PEFT's `lora_dropout`) acts on the adapter branch's input only, and only while a
//! training key is set ([`Lora::set_dropout_key`], done by the trainer for each micro-batch):
//! element `i` of module `m`'s input is dropped when the `i`-th draw of the SplitMix64 stream
//! derived from (key, m) is below `p`, and kept elements are scaled by `1 / (1 - p)`. The mask
//! depends only on the key, so the hand-written backward and candle's autograd see the same
//! one, on any number of threads; evaluation and generation (no key) use no dropout.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::kernels::{self, linear::WeightLayout};
use crate::model::LinearInfo;
use crate::params::{self, Params};
use crate::{Error, Result};
use cohort_core::SplitMix64;

/// The adapter weights file.
pub const ADAPTER_FILE: &str = "adapter_model.safetensors";
/// The adapter config file.
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";

/// LoRA hyper-parameters, serialised as PEFT's `adapter_config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// Rank.
    pub r: usize,
    /// Scale numerator: the update is multiplied by `lora_alpha / r`.
    pub lora_alpha: f64,
    /// Dropout probability on the adapter branch's input while training (0: none).
    #[serde(default)]
    pub lora_dropout: f64,
    /// Module names to adapt, matched as PEFT does against the end of each linear layer's
    /// path (`c_attn`, `c_proj`, `c_fc` for GPT-2; `q_proj` ... `down_proj` for Llama), or
    /// `["all-linear"]`.
    pub target_modules: Vec<String>,
    /// `"LORA"`.
    #[serde(default = "lora")]
    pub peft_type: String,
    /// `"CAUSAL_LM"` or `"SEQ_CLS"`.
    #[serde(default = "causal")]
    pub task_type: String,
    /// True for GPT-2's `Conv1D` (`[in, out]`) weights.
    #[serde(default)]
    pub fan_in_fan_out: bool,
    /// `"none"`: biases stay frozen.
    #[serde(default = "none")]
    pub bias: String,
    /// The base model the adapter was trained on.
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    #[serde(default)]
    pub inference_mode: bool,
}

fn lora() -> String {
    "LORA".into()
}
fn causal() -> String {
    "CAUSAL_LM".into()
}
fn none() -> String {
    "none".into()
}

impl LoraConfig {
    /// Rank `r`, `alpha`, and the target modules.
    pub fn new(r: usize, lora_alpha: f64, target_modules: &[&str]) -> Self {
        Self {
            r,
            lora_alpha,
            lora_dropout: 0.0,
            target_modules: target_modules.iter().map(|s| s.to_string()).collect(),
            peft_type: lora(),
            task_type: causal(),
            fan_in_fan_out: false,
            bias: none(),
            base_model_name_or_path: None,
            inference_mode: false,
        }
    }

    fn validate(&self) -> Result<()> {
        if self.r == 0 {
            return Err(Error::config("r", "LoRA rank must be positive"));
        }
        if !(self.lora_alpha.is_finite() && self.lora_alpha > 0.0) {
            return Err(Error::config(
                "lora_alpha",
                format!("{} is not a finite number > 0", self.lora_alpha),
            ));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(Error::config(
                "lora_dropout",
                format!("{} is not in [0, 1)", self.lora_dropout),
            ));
        }
        if self.peft_type != "LORA" {
            return Err(Error::config(
                "peft_type",
                format!("expected LORA, found {}", self.peft_type),
            ));
        }
        if self.target_modules.is_empty() {
            return Err(Error::config("target_modules", "empty"));
        }
        Ok(())
    }

    /// Whether the linear layer at `path` is targeted.
    pub fn targets(&self, path: &str) -> bool {
        self.target_modules
            .iter()
            .any(|t| t == "all-linear" || path == t || path.ends_with(&format!(".{t}")))
    }

    /// `lora_alpha / r`.
    pub fn scale(&self) -> f64 {
        self.lora_alpha / self.r as f64
    }

    /// The same config with dropout probability `p` on the adapter's input.
    pub fn with_dropout(mut self, p: f64) -> Self {
        self.lora_dropout = p;
        self
    }
}

/// The dropout multipliers for `len` input elements of module `path` under training key `key`:
/// 0 where dropped (probability `p`), `1 / (1 - p)` where kept. Element `i` is draw `i` of the
/// stream `SplitMix64::derive(key, path)`, computed independently of the others
/// ([`SplitMix64::uniform_at`]: the stream is counter-based), so the mask does not depend on how
/// the work is split across threads.
pub fn dropout_mask(key: u64, path: &str, p: f64, len: usize) -> Vec<f32> {
    use rayon::prelude::*;
    let stream = SplitMix64::derive(key, path);
    let keep = (1.0 / (1.0 - p)) as f32;
    let mut m = vec![0f32; len];
    m.par_chunks_mut(16_384).enumerate().for_each(|(c, chunk)| {
        let start = (c * 16_384) as u64;
        for (j, v) in chunk.iter_mut().enumerate() {
            *v = if stream.uniform_at(start + j as u64) < p {
                0.0
            } else {
                keep
            };
        }
    });
    m
}

/// [`dropout_mask`] restricted to some rows of the batch: rows `rows` (indices into the whole
/// batch) of `row_len` elements each, concatenated. Equal, element for element, to those rows
/// of the whole batch's mask, so a verifier recomputing some sequences of a call draws the
/// masks the server drew for them.
pub fn dropout_mask_rows(key: u64, path: &str, p: f64, row_len: usize, rows: &[usize]) -> Vec<f32> {
    let stream = SplitMix64::derive(key, path);
    let keep = (1.0 / (1.0 - p)) as f32;
    let mut m = Vec::with_capacity(row_len * rows.len());
    for &r in rows {
        let start = (r * row_len) as u64;
        m.extend((0..row_len as u64).map(|j| {
            if stream.uniform_at(start + j) < p {
                0.0
            } else {
                keep
            }
        }));
    }
    m
}

/// The PEFT name of the A matrix of module `path`.
pub fn a_name(path: &str) -> String {
    format!("base_model.model.{path}.lora_A.weight")
}

/// The PEFT name of the B matrix of module `path`.
pub fn b_name(path: &str) -> String {
    format!("base_model.model.{path}.lora_B.weight")
}

/// An attached adapter.
#[derive(Debug)]
pub struct Lora {
    pub config: LoraConfig,
    modules: BTreeMap<String, LinearInfo>,
    merged: bool,
    /// The training key of the current micro-batch (None: evaluation, no dropout).
    dropout_key: Mutex<Option<u64>>,
}

impl Clone for Lora {
    fn clone(&self) -> Self {
        Self {
            config: self.config.clone(),
            modules: self.modules.clone(),
            merged: self.merged,
            dropout_key: Mutex::new(self.current_key()),
        }
    }
}

impl Lora {
    /// Adds A and B for every targeted module to `params` (A seeded from `seed`, B zero) and
    /// freezes everything else.
    pub fn attach(
        params: &mut Params,
        linears: &[LinearInfo],
        mut config: LoraConfig,
        seed: u64,
    ) -> Result<Self> {
        config.validate()?;
        let targeted: Vec<&LinearInfo> =
            linears.iter().filter(|l| config.targets(&l.path)).collect();
        if targeted.is_empty() {
            return Err(Error::config(
                "target_modules",
                format!(
                    "{:?} match no linear layer of this model",
                    config.target_modules
                ),
            ));
        }
        if let Some(l) = targeted.iter().find(|l| config.r > l.d_in.min(l.d_out)) {
            return Err(Error::config(
                "r",
                format!(
                    "rank {} exceeds the smaller side of `{}` ({} x {}): the adapter would add \
                     parameters without adding expressiveness",
                    config.r, l.path, l.d_out, l.d_in
                ),
            ));
        }
        config.fan_in_fan_out = targeted.iter().all(|l| l.layout == WeightLayout::InOut);
        // Everything but a classification head is frozen (PEFT's `modules_to_save`).
        params.set_trainable(|n| n == crate::classify::SCORE);
        let mut modules = BTreeMap::new();
        let device = params
            .iter()
            .next()
            .map(|p| p.var.device().clone())
            .unwrap_or(candle_core::Device::Cpu);
        for l in targeted {
            let mut rng = SplitMix64::derive(seed, &l.path);
            let bound = 1.0 / (l.d_in as f64).sqrt();
            let a: Vec<f32> = (0..config.r * l.d_in)
                .map(|_| ((rng.uniform() * 2.0 - 1.0) * bound) as f32)
                .collect();
            params.insert(
                &a_name(&l.path),
                Tensor::from_vec(a, (config.r, l.d_in), &device)?,
                true,
            )?;
            params.insert(
                &b_name(&l.path),
                Tensor::zeros((l.d_out, config.r), DType::F32, &device)?,
                true,
            )?;
            modules.insert(l.path.clone(), l.clone());
        }
        Ok(Self {
            config,
            modules,
            merged: false,
            dropout_key: Mutex::new(None),
        })
    }

    fn current_key(&self) -> Option<u64> {
        *self.dropout_key.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the training key that dropout masks are drawn from (`Some` for each training
    /// micro-batch, `None` for evaluation). Without dropout (`lora_dropout` 0) it has no effect.
    pub fn set_dropout_key(&self, key: Option<u64>) {
        *self.dropout_key.lock().unwrap_or_else(|e| e.into_inner()) = key;
    }

    /// The dropout multipliers of module `path`'s input (`len` elements) if dropout is active
    /// now (p > 0, a training key set, the module adapted and not merged).
    pub fn dropout(&self, path: &str, len: usize) -> Option<Vec<f32>> {
        let p = self.config.lora_dropout;
        let key = self.current_key()?;
        (p > 0.0 && self.is_active(path)).then(|| dropout_mask(key, path, p, len))
    }

    /// [`Lora::dropout`] for rows `rows` of the batch, each `row_len` elements of the input
    /// ([`dropout_mask_rows`]).
    pub fn dropout_rows(&self, path: &str, row_len: usize, rows: &[usize]) -> Option<Vec<f32>> {
        let p = self.config.lora_dropout;
        let key = self.current_key()?;
        (p > 0.0 && self.is_active(path)).then(|| dropout_mask_rows(key, path, p, row_len, rows))
    }

    /// The adapted module paths.
    pub fn modules(&self) -> impl Iterator<Item = &str> {
        self.modules.keys().map(String::as_str)
    }

    /// Whether module `path` currently runs the adapter's path (adapted and not merged).
    pub fn is_active(&self, path: &str) -> bool {
        !self.merged && self.modules.contains_key(path)
    }

    /// Whether the adapter is merged into the base weights.
    pub fn is_merged(&self) -> bool {
        self.merged
    }

    /// `y + scale * (x A^T) B^T` if `path` is adapted and not merged, else `y`.
    pub fn apply(&self, params: &Params, path: &str, x: &Tensor, y: Tensor) -> Result<Tensor> {
        if self.merged || !self.modules.contains_key(path) {
            return Ok(y);
        }
        let a = params.tensor(&a_name(path))?;
        let b = params.tensor(&b_name(path))?;
        let dropped;
        let x = match self.dropout(path, x.elem_count()) {
            Some(m) => {
                let m = Tensor::from_vec(m, x.shape(), x.device())?.to_dtype(x.dtype())?;
                dropped = (x * m)?;
                &dropped
            }
            None => x,
        };
        let h = kernels::linear(x, &a, None, WeightLayout::OutIn)?;
        let d = kernels::linear(&h, &b, None, WeightLayout::OutIn)?;
        Ok((y + (d * self.config.scale())?)?)
    }

    /// `scale * B A` laid out like the module's weight.
    fn delta(&self, params: &Params, info: &LinearInfo) -> Result<Tensor> {
        let a = params.tensor(&a_name(&info.path))?;
        let b = params.tensor(&b_name(&info.path))?;
        let ba = (b.matmul(&a)? * self.config.scale())?; // [out, in]
        Ok(match info.layout {
            WeightLayout::OutIn => ba,
            WeightLayout::InOut => ba.t()?.contiguous()?,
        })
    }

    fn shift(&mut self, params: &Params, sign: f64) -> Result<()> {
        for info in self.modules.values() {
            let name = format!("{}.weight", info.path);
            let p = params
                .get(&name)
                .ok_or_else(|| Error::Params(format!("no parameter `{name}`")))?;
            let d = self.delta(params, info)?.to_dtype(p.var.dtype())?;
            p.var.set(&(p.var.as_tensor() + (d * sign)?)?)?;
        }
        Ok(())
    }

    /// Adds the adapter into the base weights (the forward pass then skips it).
    pub fn merge(&mut self, params: &Params) -> Result<()> {
        if !self.merged {
            self.shift(params, 1.0)?;
            self.merged = true;
        }
        Ok(())
    }

    /// Subtracts a merged adapter from the base weights again.
    pub fn unmerge(&mut self, params: &Params) -> Result<()> {
        if self.merged {
            self.shift(params, -1.0)?;
            self.merged = false;
        }
        Ok(())
    }

    /// Writes `adapter_config.json` and `adapter_model.safetensors` (PEFT's names) into `dir`.
    pub fn save(&self, params: &Params, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(ADAPTER_CONFIG_FILE);
        let s = serde_json::to_string_pretty(&self.config).map_err(|e| Error::Json {
            path: path.clone(),
            error: e,
        })?;
        std::fs::write(&path, s + "\n").map_err(|e| Error::io(&path, e))?;
        let mut ts = Vec::new();
        for m in self.modules.keys() {
            for n in [a_name(m), b_name(m)] {
                ts.push((n.clone(), params.tensor(&n)?));
            }
        }
        params::save_file(&ts, &dir.join(ADAPTER_FILE))
    }

    /// Reads an adapter directory's config.
    pub fn load_config(dir: &Path) -> Result<LoraConfig> {
        let path = dir.join(ADAPTER_CONFIG_FILE);
        let s = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        serde_json::from_str(&s).map_err(|e| Error::Json { path, error: e })
    }

    /// Attaches the adapter saved in `dir` (its config and weights) to `params`.
    pub fn load(params: &mut Params, linears: &[LinearInfo], dir: &Path) -> Result<Self> {
        let config = Self::load_config(dir)?;
        let lora = Self::attach(params, linears, config, 0)?;
        let path = dir.join(ADAPTER_FILE);
        let device = params
            .iter()
            .next()
            .map(|p| p.var.device().clone())
            .unwrap_or(candle_core::Device::Cpu);
        let map = params::load_file(&path, &device)?;
        for m in lora.modules.keys() {
            for n in [a_name(m), b_name(m)] {
                let p = params
                    .get(&n)
                    .ok_or_else(|| Error::Params(format!("no parameter `{n}`")))?;
                let t = map.get(&n).ok_or_else(|| Error::MissingTensor {
                    path: path.clone(),
                    name: n.clone(),
                })?;
                if t.dims() != p.var.dims() {
                    return Err(Error::TensorShape {
                        path: path.clone(),
                        name: n.clone(),
                        expected: p.var.dims().to_vec(),
                        found: t.dims().to_vec(),
                    });
                }
                p.var.set(&t.to_dtype(p.var.dtype())?)?;
            }
        }
        Ok(lora)
    }
}
