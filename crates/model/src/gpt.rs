//! A GPT-2-style decoder: learned positions, pre-norm blocks with LayerNorm, fused causal
//! attention, a GELU MLP and an output projection tied to the token embedding. Parameter
//! names and layouts are Hugging Face's `GPT2LMHeadModel` (`transformer.h.0.attn.c_attn` with
//! `Conv1D` `[in, out]` weights), so the directories this crate writes load in `transformers`.

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::cache::KvCache;
use crate::checkpoint;
use crate::config::GptConfig;
use crate::kernels::{self, linear::WeightLayout};
use crate::model::{LanguageModel, LinearInfo, Weights};
use crate::params::Params;
use crate::{Error, Result};
use cohort_core::SplitMix64;

/// A GPT-2-style language model.
#[derive(Debug, Clone)]
pub struct Gpt {
    pub config: GptConfig,
    weights: Weights,
    device: Device,
}

fn block(i: usize) -> String {
    format!("transformer.h.{i}")
}

impl Gpt {
    /// A freshly initialised model, deterministic from `seed` (GPT-2's scheme: N(0, 0.02)
    /// weights, output projections scaled by 1/sqrt(2 L), zero biases, unit norms).
    pub fn new(config: GptConfig, seed: u64, device: &Device) -> Result<Self> {
        config.validate()?;
        let mut params = Params::new();
        let std = config.initializer_range;
        let proj_std = std / (2.0 * config.n_layer as f64).sqrt();
        for (name, shape) in Self::shapes(&config) {
            let n: usize = shape.iter().product();
            let data = if name.ends_with(".bias") {
                vec![0f32; n]
            } else if name.contains(".ln_") {
                vec![1f32; n]
            } else {
                let s = if name.ends_with("c_proj.weight") {
                    proj_std
                } else {
                    std
                };
                SplitMix64::derive(seed, &name).normal_vec(n, s)
            };
            params.insert(&name, Tensor::from_vec(data, shape, device)?, true)?;
        }
        Ok(Self {
            config,
            weights: Weights::new(params),
            device: device.clone(),
        })
    }

    /// The same model with every parameter converted to `dtype` (f64 for gradient checks); an
    /// attached LoRA adapter is dropped.
    pub fn with_dtype(mut self, dtype: DType) -> Result<Self> {
        self.weights.materialize_frozen()?;
        let mut params = Params::new();
        for p in self.weights.params.iter() {
            params.insert(&p.name, p.var.as_tensor().to_dtype(dtype)?, p.trainable)?;
        }
        let mut weights = Weights::new(params);
        weights.lowrank = self.weights.lowrank.clone();
        Ok(Self { weights, ..self })
    }

    /// Every parameter's name and shape, in definition order.
    pub fn shapes(c: &GptConfig) -> Vec<(String, Vec<usize>)> {
        let (d, f) = (c.n_embd, c.d_ff());
        let mut v = vec![
            ("transformer.wte.weight".to_string(), vec![c.vocab_size, d]),
            ("transformer.wpe.weight".to_string(), vec![c.n_positions, d]),
        ];
        for i in 0..c.n_layer {
            let p = block(i);
            for (n, s) in [
                ("ln_1.weight", vec![d]),
                ("ln_1.bias", vec![d]),
                ("attn.c_attn.weight", vec![d, 3 * d]),
                ("attn.c_attn.bias", vec![3 * d]),
                ("attn.c_proj.weight", vec![d, d]),
                ("attn.c_proj.bias", vec![d]),
                ("ln_2.weight", vec![d]),
                ("ln_2.bias", vec![d]),
                ("mlp.c_fc.weight", vec![d, f]),
                ("mlp.c_fc.bias", vec![f]),
                ("mlp.c_proj.weight", vec![f, d]),
                ("mlp.c_proj.bias", vec![d]),
            ] {
                v.push((format!("{p}.{n}"), s));
            }
        }
        v.push(("transformer.ln_f.weight".to_string(), vec![d]));
        v.push(("transformer.ln_f.bias".to_string(), vec![d]));
        v
    }

    /// Writes `config.json` and `model.safetensors` (base weights; an attached adapter is not
    /// included: save it with [`crate::lora::Lora::save`] or merge it first).
    pub fn save_dir(&self, dir: &Path) -> Result<()> {
        let mut config = self.config.clone();
        config.cohort_lowrank = self.weights.lowrank.clone();
        let shapes = checkpoint::with_lowrank(
            Self::shapes(&config),
            &config.cohort_lowrank,
            &Self::linears(&config),
        )?;
        let names: Vec<String> = shapes.into_iter().map(|(n, _)| n).collect();
        if self.weights.frozen.is_some() {
            // Mapped weights are written from candle copies (made for the save only).
            let mut w = self.weights.clone();
            w.materialize_frozen()?;
            return checkpoint::save_dir(dir, &config, &w.params, &names);
        }
        checkpoint::save_dir(dir, &config, &self.weights.params, &names)
    }

    /// The linear layers of a model with config `c`, in definition order.
    pub fn linears(c: &GptConfig) -> Vec<LinearInfo> {
        let (d, f) = (c.n_embd, c.d_ff());
        let lin = |path: String, d_in, d_out| LinearInfo {
            path,
            d_in,
            d_out,
            layout: WeightLayout::InOut,
            bias: true,
        };
        (0..c.n_layer)
            .flat_map(|i| {
                let p = block(i);
                [
                    lin(format!("{p}.attn.c_attn"), d, 3 * d),
                    lin(format!("{p}.attn.c_proj"), d, d),
                    lin(format!("{p}.mlp.c_fc"), d, f),
                    lin(format!("{p}.mlp.c_proj"), f, d),
                ]
            })
            .collect()
    }

    /// Reads a directory written by [`Gpt::save`] or by `transformers` (`GPT2LMHeadModel`,
    /// with or without the `transformer.` prefix).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let config: GptConfig = checkpoint::read_config(dir)?;
        config.validate()?;
        let tensors = checkpoint::read_weights(dir, device)?;
        let mut params = Params::new();
        let file = dir.join(checkpoint::WEIGHTS_FILE);
        let shapes = checkpoint::with_lowrank(
            Self::shapes(&config),
            &config.cohort_lowrank,
            &Self::linears(&config),
        )?;
        let tied = Some("transformer.wte.weight");
        for (name, t) in checkpoint::take_exact(tensors, shapes, &file, tied)? {
            params.insert(&name, t.to_dtype(DType::F32)?, true)?;
        }
        let mut weights = Weights::new(params);
        weights.lowrank = config.cohort_lowrank.clone();
        Ok(Self {
            config,
            weights,
            device: device.clone(),
        })
    }

    /// Reads a directory like [`Gpt::load`], but with the base weights frozen and read in
    /// place from the memory-mapped `model.safetensors` (or its shards) instead of copied into
    /// candle tensors: the model for LoRA fine-tuning and evaluation of a frozen base, which
    /// the hand-written pass ([`crate::fast`]) runs on the mapping directly. `params` starts
    /// empty (nothing is trainable until an adapter is attached); candle's forward pass
    /// (generation, the autograd fallback) copies each weight out of the mapping on first use.
    /// CPU only. See [`crate::mapped`].
    pub fn load_mapped(dir: &Path, device: &Device) -> Result<Self> {
        let config: GptConfig = checkpoint::read_config(dir)?;
        config.validate()?;
        let shapes = checkpoint::with_lowrank(
            Self::shapes(&config),
            &config.cohort_lowrank,
            &Self::linears(&config),
        )?;
        let weights = crate::mapped::frozen_weights(
            dir,
            device,
            &shapes,
            &config.cohort_lowrank,
            "Gpt",
            Some("transformer.wte.weight"),
        )?;
        Ok(Self {
            config,
            weights,
            device: device.clone(),
        })
    }

    fn lin(&self, path: String, d_in: usize, d_out: usize) -> LinearInfo {
        LinearInfo {
            path,
            d_in,
            d_out,
            layout: WeightLayout::InOut,
            bias: true,
        }
    }
}

impl Gpt {
    /// [`LanguageModel::hidden_cached`]: positions continue from the cache.
    fn hidden_with_cache(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let past = cache.len();
        if past + t > self.config.n_positions {
            return Err(Error::config(
                "n_positions",
                format!(
                    "{past} cached + {t} new positions exceed the context of {}",
                    self.config.n_positions
                ),
            ));
        }
        let c = &self.config;
        let w = &self.weights;
        let (d, f, eps) = (c.n_embd, c.d_ff(), c.layer_norm_epsilon);
        let ids = ids.to_dtype(DType::U32)?.flatten_all()?;
        let tok = w
            .t("transformer.wte.weight")?
            .index_select(&ids, 0)?
            .reshape((b, t, d))?;
        let pos = w.t("transformer.wpe.weight")?.narrow(0, past, t)?;
        let mut x = tok.broadcast_add(&pos)?;
        for i in 0..c.n_layer {
            let p = block(i);
            let ln = |x: &Tensor, n: &str| -> Result<Tensor> {
                Ok(kernels::layer_norm(
                    x,
                    &w.t(&format!("{p}.{n}.weight"))?,
                    &w.t(&format!("{p}.{n}.bias"))?,
                    eps,
                )?)
            };
            let h = ln(&x, "ln_1")?;
            let qkv = w.linear(&self.lin(format!("{p}.attn.c_attn"), d, 3 * d), &h)?;
            let q = qkv.narrow(2, 0, d)?;
            let (k, v) = cache.append(i, &qkv.narrow(2, d, d)?, &qkv.narrow(2, 2 * d, d)?)?;
            let a = crate::cache::attend(&q, &k, &v, c.n_head, past)?;
            x = (x + w.linear(&self.lin(format!("{p}.attn.c_proj"), d, d), &a)?)?;
            let h = ln(&x, "ln_2")?;
            let h = kernels::gelu(&w.linear(&self.lin(format!("{p}.mlp.c_fc"), d, f), &h)?)?;
            x = (x + w.linear(&self.lin(format!("{p}.mlp.c_proj"), f, d), &h)?)?;
        }
        cache.advance(t);
        Ok(kernels::layer_norm(
            &x,
            &w.t("transformer.ln_f.weight")?,
            &w.t("transformer.ln_f.bias")?,
            eps,
        )?)
    }
}

impl LanguageModel for Gpt {
    fn weights(&self) -> &Weights {
        &self.weights
    }

    fn as_gpt(&self) -> Option<&Gpt> {
        Some(self)
    }

    fn weights_mut(&mut self) -> &mut Weights {
        &mut self.weights
    }

    fn num_layers(&self) -> usize {
        self.config.n_layer
    }

    fn layer_of(&self, name: &str) -> Option<usize> {
        crate::model::block_index(name, "transformer.h.")
    }

    fn linear_modules(&self) -> Vec<LinearInfo> {
        Self::linears(&self.config)
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn hidden_size(&self) -> usize {
        self.config.n_embd
    }

    fn max_context(&self) -> usize {
        self.config.n_positions
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn hidden(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        if t > self.config.n_positions {
            return Err(Error::config(
                "n_positions",
                format!(
                    "sequence of {t} exceeds the context of {}",
                    self.config.n_positions
                ),
            ));
        }
        let c = &self.config;
        let w = &self.weights;
        let (d, f, eps) = (c.n_embd, c.d_ff(), c.layer_norm_epsilon);
        let ids = ids.to_dtype(DType::U32)?.flatten_all()?;
        let tok = w
            .t("transformer.wte.weight")?
            .index_select(&ids, 0)?
            .reshape((b, t, d))?;
        let pos = w.t("transformer.wpe.weight")?.narrow(0, 0, t)?;
        let mut x = tok.broadcast_add(&pos)?;
        for i in 0..c.n_layer {
            let p = block(i);
            let ln = |x: &Tensor, n: &str| -> Result<Tensor> {
                Ok(kernels::layer_norm(
                    x,
                    &w.t(&format!("{p}.{n}.weight"))?,
                    &w.t(&format!("{p}.{n}.bias"))?,
                    eps,
                )?)
            };
            let h = ln(&x, "ln_1")?;
            let qkv = w.linear(&self.lin(format!("{p}.attn.c_attn"), d, 3 * d), &h)?;
            let a = kernels::causal_attention(&qkv, c.n_head)?;
            x = (x + w.linear(&self.lin(format!("{p}.attn.c_proj"), d, d), &a)?)?;
            let h = ln(&x, "ln_2")?;
            let h = kernels::gelu(&w.linear(&self.lin(format!("{p}.mlp.c_fc"), d, f), &h)?)?;
            x = (x + w.linear(&self.lin(format!("{p}.mlp.c_proj"), f, d), &h)?)?;
        }
        Ok(kernels::layer_norm(
            &x,
            &w.t("transformer.ln_f.weight")?,
            &w.t("transformer.ln_f.bias")?,
            eps,
        )?)
    }

    fn hidden_cached(&self, ids: &Tensor, cache: &mut KvCache) -> Option<Result<Tensor>> {
        Some(self.hidden_with_cache(ids, cache))
    }

    fn fast_loss_and_grads(
        &self,
        ids: &Tensor,
        targets: &Tensor,
    ) -> Option<Result<(f64, Vec<Vec<f32>>)>> {
        crate::fast::tensor_loss_and_grads(self, ids, targets, crate::fast::loss_and_grads)
    }

    fn save(&self, dir: &Path) -> Result<()> {
        self.save_dir(dir)
    }

    fn forward_eval(&self, ids: &Tensor) -> Result<Tensor> {
        crate::fast::tensor_logits(self, ids, crate::fast::logits)
    }

    fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let wte = self.weights.t("transformer.wte.weight")?;
        Ok(kernels::linear(hidden, &wte, None, WeightLayout::OutIn)?)
    }
}
