//! The Llama family loaded from Hugging Face directories: RMSNorm, rotary position
//! embeddings (RoPE), SwiGLU MLP, grouped-query attention, Qwen2's q/k/v biases and tied
//! embeddings. Covers `model_type` `llama` (SmolLM2, TinyLlama, Llama 2/3 without RoPE
//! scaling), `qwen2` (Qwen2/Qwen2.5) and `mistral` (without sliding windows).
//!
//! Weights are held in f32 whatever the checkpoint's dtype. RMSNorm, RoPE and SwiGLU are built
//! from candle's basic ops (all differentiable); attention packs q, k, v into the fused causal
//! attention kernel after RoPE and head repetition.

use std::path::Path;

use candle_core::{D, DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::cache::KvCache;
use crate::checkpoint;
use crate::kernels::{self, linear::WeightLayout};
use crate::model::{LanguageModel, LinearInfo, Weights};
use crate::params::Params;
use crate::rng::Rng;
use crate::{Error, Result};

/// A Llama-family `config.json` (Hugging Face field names; unknown fields are kept so the
/// config round-trips).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention); defaults to `num_attention_heads`.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Defaults to `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    /// RoPE base (older configs; newer ones put it in `rope_parameters`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    /// transformers 5's `{"rope_theta": ..., "rope_type": "default"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<serde_json::Value>,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Llama's switch for q/k/v/o biases (Qwen2 always has q/k/v biases).
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default = "silu")]
    pub hidden_act: String,
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    /// Linear layers stored as SVD factors (path -> rank); see [`crate::svd`].
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub cohort_lowrank: std::collections::BTreeMap<String, usize>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn default_rms_eps() -> f64 {
    1e-6
}
fn default_max_pos() -> usize {
    2048
}
fn silu() -> String {
    "silu".into()
}

impl LlamaConfig {
    /// A small config for tests and from-scratch runs.
    pub fn small(
        model_type: &str,
        vocab_size: usize,
        hidden: usize,
        layers: usize,
        heads: usize,
        kv_heads: usize,
    ) -> Self {
        Self {
            model_type: model_type.into(),
            vocab_size,
            hidden_size: hidden,
            intermediate_size: hidden * 8 / 3,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: Some(kv_heads),
            head_dim: None,
            rms_norm_eps: 1e-6,
            rope_theta: Some(10_000.0),
            rope_parameters: None,
            max_position_embeddings: 256,
            tie_word_embeddings: false,
            attention_bias: false,
            hidden_act: silu(),
            rope_scaling: None,
            cohort_lowrank: Default::default(),
            extra: Default::default(),
        }
    }

    /// The RoPE base: `rope_theta`, else `rope_parameters.rope_theta`, else 10000.
    pub fn theta(&self) -> f64 {
        self.rope_theta
            .or_else(|| self.rope_parameters.as_ref()?.get("rope_theta")?.as_f64())
            .unwrap_or(10_000.0)
    }

    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Whether q/k/v projections have biases (Qwen2 always; Llama if `attention_bias`).
    pub fn qkv_bias(&self) -> bool {
        self.model_type == "qwen2" || self.attention_bias
    }

    pub fn validate(&self) -> Result<()> {
        if !matches!(self.model_type.as_str(), "llama" | "qwen2" | "mistral") {
            return Err(Error::config(
                "model_type",
                format!("`{}` is not llama, qwen2 or mistral", self.model_type),
            ));
        }
        for (f, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.kv_heads()),
            ("head_dim", self.head_dim()),
        ] {
            if v == 0 {
                return Err(Error::config(f, "must be positive"));
            }
        }
        if !self.num_attention_heads.is_multiple_of(self.kv_heads()) {
            return Err(Error::config(
                "num_key_value_heads",
                "must divide num_attention_heads",
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(Error::config("head_dim", "must be even for RoPE"));
        }
        if self.hidden_act != "silu" {
            return Err(Error::config(
                "hidden_act",
                format!("only silu is implemented, found {}", self.hidden_act),
            ));
        }
        let rope_type = self
            .rope_parameters
            .as_ref()
            .and_then(|p| p.get("rope_type"))
            .and_then(|t| t.as_str());
        if matches!(rope_type, Some(t) if t != "default") {
            return Err(Error::config(
                "rope_parameters.rope_type",
                "only the default RoPE is implemented",
            ));
        }
        if matches!(&self.rope_scaling, Some(v) if !v.is_null()) {
            return Err(Error::config(
                "rope_scaling",
                "RoPE scaling is not implemented",
            ));
        }
        Ok(())
    }
}

/// A Llama-family causal language model.
#[derive(Debug, Clone)]
pub struct Llama {
    pub config: LlamaConfig,
    weights: Weights,
    device: Device,
}

fn layer(i: usize) -> String {
    format!("model.layers.{i}")
}

impl Llama {
    /// Every parameter's name and shape, in definition order.
    pub fn shapes(c: &LlamaConfig) -> Vec<(String, Vec<usize>)> {
        let (h, f, hd) = (c.hidden_size, c.intermediate_size, c.head_dim());
        let (q, kv) = (c.num_attention_heads * hd, c.kv_heads() * hd);
        let mut v = vec![(
            "model.embed_tokens.weight".to_string(),
            vec![c.vocab_size, h],
        )];
        for i in 0..c.num_hidden_layers {
            let p = layer(i);
            v.push((format!("{p}.input_layernorm.weight"), vec![h]));
            v.push((format!("{p}.self_attn.q_proj.weight"), vec![q, h]));
            if c.qkv_bias() {
                v.push((format!("{p}.self_attn.q_proj.bias"), vec![q]));
            }
            v.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, h]));
            if c.qkv_bias() {
                v.push((format!("{p}.self_attn.k_proj.bias"), vec![kv]));
            }
            v.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, h]));
            if c.qkv_bias() {
                v.push((format!("{p}.self_attn.v_proj.bias"), vec![kv]));
            }
            v.push((format!("{p}.self_attn.o_proj.weight"), vec![h, q]));
            if c.attention_bias {
                v.push((format!("{p}.self_attn.o_proj.bias"), vec![h]));
            }
            v.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
            v.push((format!("{p}.mlp.gate_proj.weight"), vec![f, h]));
            v.push((format!("{p}.mlp.up_proj.weight"), vec![f, h]));
            v.push((format!("{p}.mlp.down_proj.weight"), vec![h, f]));
        }
        v.push(("model.norm.weight".to_string(), vec![h]));
        if !c.tie_word_embeddings {
            v.push(("lm_head.weight".to_string(), vec![c.vocab_size, h]));
        }
        v
    }

    /// A randomly initialised model (N(0, 0.02) matrices, small random biases, unit norms).
    pub fn new(config: LlamaConfig, seed: u64, device: &Device) -> Result<Self> {
        config.validate()?;
        let mut params = Params::new();
        for (name, shape) in Self::shapes(&config) {
            let n: usize = shape.iter().product();
            let data = if name.ends_with("norm.weight") {
                vec![1f32; n]
            } else {
                Rng::derive(seed, &name).normal_vec(n, 0.02)
            };
            params.insert(&name, Tensor::from_vec(data, shape, device)?, true)?;
        }
        Ok(Self {
            config,
            weights: Weights::new(params),
            device: device.clone(),
        })
    }

    /// Loads `config.json` and `model.safetensors` (or shards) from a Hugging Face directory.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let config: LlamaConfig = checkpoint::read_config(dir)?;
        config.validate()?;
        let mut tensors = checkpoint::read_weights(dir, device)?;
        let file = dir.join(checkpoint::WEIGHTS_FILE);
        let mut params = Params::new();
        let shapes = checkpoint::with_lowrank(
            Self::shapes(&config),
            &config.cohort_lowrank,
            &Self::linears(&config),
        )?;
        for (name, shape) in shapes {
            let t = tensors.remove(&name).ok_or_else(|| Error::MissingTensor {
                path: file.clone(),
                name: name.clone(),
            })?;
            if t.dims() != shape.as_slice() {
                return Err(Error::TensorShape {
                    path: file.clone(),
                    name,
                    expected: shape,
                    found: t.dims().to_vec(),
                });
            }
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

    /// Reads a directory like [`Llama::load`], but with the base weights frozen and read in
    /// place from the memory-mapped `model.safetensors` (or its shards), as
    /// [`crate::Gpt::load_mapped`] does: the hand-written pass ([`crate::fast::llama`]) trains
    /// adapters and evaluates on the mapping directly; candle's forward pass (generation)
    /// copies each weight out of the mapping on first use. F32 tensors are read in place;
    /// other float dtypes (a bf16 download) are converted once when opened ([`crate::mapped`]).
    /// CPU only.
    pub fn load_mapped(dir: &Path, device: &Device) -> Result<Self> {
        let config: LlamaConfig = checkpoint::read_config(dir)?;
        config.validate()?;
        let shapes = checkpoint::with_lowrank(
            Self::shapes(&config),
            &config.cohort_lowrank,
            &Self::linears(&config),
        )?;
        let weights =
            crate::mapped::frozen_weights(dir, device, &shapes, &config.cohort_lowrank, "Llama")?;
        Ok(Self {
            config,
            weights,
            device: device.clone(),
        })
    }

    /// Writes `config.json` and `model.safetensors` (f32; factored layers as their factors).
    pub fn save_dir(&self, dir: &Path) -> Result<()> {
        let mut config = self.config.clone();
        config.cohort_lowrank = self.weights.lowrank.clone();
        let shapes = checkpoint::with_lowrank(
            Self::shapes(&config),
            &config.cohort_lowrank,
            &Self::linears(&config),
        )?;
        let names: Vec<String> = shapes.into_iter().map(|(n, _)| n).collect();
        checkpoint::save_dir(dir, &config, &self.weights.params, &names)
    }

    /// The linear layers of a model with config `c`, in definition order.
    pub fn linears(c: &LlamaConfig) -> Vec<LinearInfo> {
        let lin = |path: String, d_in, d_out, bias| LinearInfo {
            path,
            d_in,
            d_out,
            layout: WeightLayout::OutIn,
            bias,
        };
        let (h, f, hd) = (c.hidden_size, c.intermediate_size, c.head_dim());
        let (q, kv, qb) = (c.num_attention_heads * hd, c.kv_heads() * hd, c.qkv_bias());
        (0..c.num_hidden_layers)
            .flat_map(|i| {
                let a = format!("{}.self_attn", layer(i));
                let m = format!("{}.mlp", layer(i));
                [
                    lin(format!("{a}.q_proj"), h, q, qb),
                    lin(format!("{a}.k_proj"), h, kv, qb),
                    lin(format!("{a}.v_proj"), h, kv, qb),
                    lin(format!("{a}.o_proj"), q, h, c.attention_bias),
                    lin(format!("{m}.gate_proj"), h, f, false),
                    lin(format!("{m}.up_proj"), h, f, false),
                    lin(format!("{m}.down_proj"), f, h, false),
                ]
            })
            .collect()
    }

    fn rms_norm(&self, x: &Tensor, name: &str) -> Result<Tensor> {
        let w = self.weights.t(name)?;
        let ms = (x.sqr()?.mean_keepdim(D::Minus1)? + self.config.rms_norm_eps)?;
        Ok(x.broadcast_div(&ms.sqrt()?)?.broadcast_mul(&w)?)
    }

    /// cos and sin tables `[T, 1, hd]` (Hugging Face's layout: frequencies repeated twice).
    fn rope_tables(&self, t: usize) -> Result<(Tensor, Tensor)> {
        let hd = self.config.head_dim();
        let half = hd / 2;
        let mut cos = Vec::with_capacity(t * hd);
        let mut sin = Vec::with_capacity(t * hd);
        for pos in 0..t {
            let row: Vec<f64> = (0..half)
                .map(|i| pos as f64 / self.config.theta().powf(2.0 * i as f64 / hd as f64))
                .collect();
            for _ in 0..2 {
                cos.extend(row.iter().map(|a| a.cos() as f32));
                sin.extend(row.iter().map(|a| a.sin() as f32));
            }
        }
        Ok((
            Tensor::from_vec(cos, (t, 1, hd), &self.device)?,
            Tensor::from_vec(sin, (t, 1, hd), &self.device)?,
        ))
    }
}

impl Llama {
    /// [`LanguageModel::hidden_cached`]: RoPE positions continue from the cache.
    fn hidden_with_cache(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let past = cache.len();
        let c = &self.config;
        if past + t > c.max_position_embeddings {
            return Err(Error::config(
                "max_position_embeddings",
                format!(
                    "{past} cached + {t} new positions exceed the context of {}",
                    c.max_position_embeddings
                ),
            ));
        }
        let (nh, nkv, hd) = (c.num_attention_heads, c.kv_heads(), c.head_dim());
        let rep = nh / nkv;
        let (cos, sin) = self.rope_tables(past + t)?;
        let (cos, sin) = (cos.narrow(0, past, t)?, sin.narrow(0, past, t)?);
        let ids = ids.to_dtype(DType::U32)?.flatten_all()?;
        let mut x = self
            .weights
            .t("model.embed_tokens.weight")?
            .index_select(&ids, 0)?
            .reshape((b, t, c.hidden_size))?;
        let lins = self.linear_modules();
        for i in 0..c.num_hidden_layers {
            let l = &lins[7 * i..7 * i + 7];
            let p = layer(i);
            let h = self.rms_norm(&x, &format!("{p}.input_layernorm.weight"))?;
            let q = self.weights.linear(&l[0], &h)?.reshape((b, t, nh, hd))?;
            let k = self.weights.linear(&l[1], &h)?.reshape((b, t, nkv, hd))?;
            let v = self.weights.linear(&l[2], &h)?.reshape((b, t, nkv, hd))?;
            let q = rope(&q, &cos, &sin)?.reshape((b, t, nh * hd))?;
            let k = rope(&k, &cos, &sin)?;
            let repeat = |z: Tensor| -> Result<Tensor> {
                if rep == 1 {
                    return Ok(z.reshape((b, t, nh * hd))?);
                }
                Ok(z.unsqueeze(3)?
                    .broadcast_as((b, t, nkv, rep, hd))?
                    .reshape((b, t, nh * hd))?)
            };
            let (k, v) = cache.append(i, &repeat(k)?, &repeat(v)?)?;
            let a = crate::cache::attend(&q, &k, &v, nh, past)?;
            x = (x + self.weights.linear(&l[3], &a)?)?;
            let h = self.rms_norm(&x, &format!("{p}.post_attention_layernorm.weight"))?;
            let g = self.weights.linear(&l[4], &h)?;
            let u = self.weights.linear(&l[5], &h)?;
            x = (x + self.weights.linear(&l[6], &(g.silu()? * u)?)?)?;
        }
        cache.advance(t);
        self.rms_norm(&x, "model.norm.weight")
    }
}

/// `x * cos + rotate_half(x) * sin` for `x` `[B, T, H, hd]`.
fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let hd = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, hd / 2)?;
    let x2 = x.narrow(D::Minus1, hd / 2, hd / 2)?;
    let rot = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    Ok((x.broadcast_mul(cos)? + rot.broadcast_mul(sin)?)?)
}

impl LanguageModel for Llama {
    fn weights(&self) -> &Weights {
        &self.weights
    }

    fn weights_mut(&mut self) -> &mut Weights {
        &mut self.weights
    }

    fn linear_modules(&self) -> Vec<LinearInfo> {
        Self::linears(&self.config)
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    fn max_context(&self) -> usize {
        self.config.max_position_embeddings
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn fast_loss_and_grads(
        &self,
        ids: &Tensor,
        targets: &Tensor,
    ) -> Option<Result<(f64, Vec<Vec<f32>>)>> {
        crate::fast::tensor_loss_and_grads(self, ids, targets, crate::fast::llama::loss_and_grads)
    }

    fn forward_eval(&self, ids: &Tensor) -> Result<Tensor> {
        crate::fast::tensor_logits(self, ids, crate::fast::llama::logits)
    }

    fn hidden_cached(&self, ids: &Tensor, cache: &mut KvCache) -> Option<Result<Tensor>> {
        Some(self.hidden_with_cache(ids, cache))
    }

    fn hidden(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let c = &self.config;
        let (nh, nkv, hd) = (c.num_attention_heads, c.kv_heads(), c.head_dim());
        let rep = nh / nkv;
        let (cos, sin) = self.rope_tables(t)?;
        let ids = ids.to_dtype(DType::U32)?.flatten_all()?;
        let mut x = self
            .weights
            .t("model.embed_tokens.weight")?
            .index_select(&ids, 0)?
            .reshape((b, t, c.hidden_size))?;
        let lins = self.linear_modules();
        for i in 0..c.num_hidden_layers {
            let l = &lins[7 * i..7 * i + 7];
            let p = layer(i);
            let h = self.rms_norm(&x, &format!("{p}.input_layernorm.weight"))?;
            let q = self.weights.linear(&l[0], &h)?.reshape((b, t, nh, hd))?;
            let k = self.weights.linear(&l[1], &h)?.reshape((b, t, nkv, hd))?;
            let v = self.weights.linear(&l[2], &h)?.reshape((b, t, nkv, hd))?;
            let q = rope(&q, &cos, &sin)?;
            let k = rope(&k, &cos, &sin)?;
            let repeat = |z: Tensor| -> Result<Tensor> {
                if rep == 1 {
                    return Ok(z.reshape((b, t, nh * hd))?);
                }
                Ok(z.unsqueeze(3)?
                    .broadcast_as((b, t, nkv, rep, hd))?
                    .reshape((b, t, nh * hd))?)
            };
            let qkv = Tensor::cat(&[&q.reshape((b, t, nh * hd))?, &repeat(k)?, &repeat(v)?], 2)?;
            let a = kernels::causal_attention(&qkv, nh)?;
            x = (x + self.weights.linear(&l[3], &a)?)?;
            let h = self.rms_norm(&x, &format!("{p}.post_attention_layernorm.weight"))?;
            let g = self.weights.linear(&l[4], &h)?;
            let u = self.weights.linear(&l[5], &h)?;
            x = (x + self.weights.linear(&l[6], &(g.silu()? * u)?)?)?;
        }
        self.rms_norm(&x, "model.norm.weight")
    }

    fn save(&self, dir: &Path) -> Result<()> {
        self.save_dir(dir)
    }

    fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let name = if self.config.tie_word_embeddings {
            "model.embed_tokens.weight"
        } else {
            "lm_head.weight"
        };
        Ok(kernels::linear(
            hidden,
            &self.weights.t(name)?,
            None,
            WeightLayout::OutIn,
        )?)
    }
}

/// Loads any supported model directory by its `model_type`.
pub fn load_any(dir: &Path, device: &Device) -> Result<Box<dyn LanguageModel>> {
    match checkpoint::model_type(dir)?.as_str() {
        "gpt2" => Ok(Box::new(crate::Gpt::load(dir, device)?)),
        "llama" | "qwen2" | "mistral" => Ok(Box::new(Llama::load(dir, device)?)),
        other => Err(Error::config(
            "model_type",
            format!(
                "{}: `{other}` is not supported (gpt2, llama, qwen2, mistral)",
                dir.display()
            ),
        )),
    }
}
