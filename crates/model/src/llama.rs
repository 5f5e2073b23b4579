//! The Llama family loaded from Hugging Face directories: RMSNorm, rotary position
//! embeddings (RoPE), SwiGLU MLP, grouped-query attention, Qwen2's q/k/v biases and tied
//! embeddings. Covers `model_type` `llama` (SmolLM2, TinyLlama, Llama 2/3/3.1 with their RoPE
//! scaling; `attention_bias`, `mlp_bias`, `head_dim`), `qwen2` (Qwen2/Qwen2.5) and `mistral`
//! (sliding windows up to the window's length). Every field of transformers' config classes
//! for these families is implemented or refused ([`crate::hf`]).
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
use crate::{Error, Result};
use cohort_core::SplitMix64;

/// A Llama-family `config.json` (Hugging Face field names). Defaults are transformers' for the
/// family (`model_type`); fields not parsed here are kept in `extra` so the config
/// round-trips, and checked by [`LlamaConfig::validate`] ([`crate::hf`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention); absent: `num_attention_heads` for Llama,
    /// 32 for Qwen2 and 8 for Mistral (transformers' defaults).
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Defaults to `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// RMSNorm epsilon (finite, > 0).
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    /// RoPE base (older configs; newer ones put it in `rope_parameters`; default 10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    /// transformers 5's `{"rope_theta": ..., "rope_type": "default"}`; see [`Rope`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<serde_json::Value>,
    /// The context; absent: 2048 for Llama, 32768 for Qwen2, 131072 for Mistral.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_position_embeddings: Option<usize>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Llama's switch for q/k/v/o biases (Qwen2 always has q/k/v biases and no o bias;
    /// Mistral none: transformers ignores the field for them).
    #[serde(default)]
    pub attention_bias: bool,
    /// Llama's switch for gate/up/down biases (ignored for Qwen2 and Mistral, as transformers
    /// does).
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default = "silu")]
    pub hidden_act: String,
    /// The older name of `rope_parameters` (it takes precedence when both are set, as in
    /// transformers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<serde_json::Value>,
    /// Sliding-window attention span: Mistral uses it in every layer unless it is null
    /// (absent: 4096); Qwen2 only with `use_sliding_window` (absent: 4096), in the layers from
    /// `max_window_layers` on, or where `layer_types` says `sliding_attention`. cohort
    /// implements it by limiting the context to the window, where it equals full causal
    /// attention (see [`LlamaConfig::max_context`]).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub sliding_window: Option<Option<usize>>,
    /// Qwen2's switch for `sliding_window`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_sliding_window: Option<bool>,
    /// Qwen2: layers below this index use full attention (absent: 28).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_window_layers: Option<usize>,
    /// Qwen2 (transformers 5): `full_attention` or `sliding_attention` per layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_types: Option<Vec<String>>,
    /// Linear layers stored as SVD factors (path -> rank); see [`crate::svd`].
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub cohort_lowrank: std::collections::BTreeMap<String, usize>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// Present in the file, even as `null` (`Some(None)`), against absent (`None`).
fn present<'de, D, T>(d: D) -> std::result::Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

fn default_rms_eps() -> f64 {
    1e-6
}
fn silu() -> String {
    "silu".into()
}

/// Rotary position embeddings as a config asks for them: the inverse frequencies (one per
/// pair of a head's dimensions) and the factor on cos and sin. transformers' `rope_type`s
/// `default`, `linear` (positions divided by `factor`), `dynamic` (NTK scaling, which is the
/// default RoPE up to `max_position_embeddings`, the longest sequence cohort runs), `llama3`
/// (Llama 3.1's frequency bands) and `yarn` are implemented as `modeling_rope_utils.py`
/// computes them (in f64 here, f32 there); others (`longrope`, ...) and a
/// `partial_rotary_factor` other than 1 are refused.
#[derive(Debug, Clone, PartialEq)]
pub struct Rope {
    pub inv_freq: Vec<f64>,
    pub attention_factor: f64,
}

impl Rope {
    /// cos and sin tables `[t, hd]`, positions `0..t` (Hugging Face's layout: each frequency
    /// twice), times the attention factor.
    pub fn tables(&self, t: usize) -> (Vec<f32>, Vec<f32>) {
        let hd = 2 * self.inv_freq.len();
        let (mut cos, mut sin) = (Vec::with_capacity(t * hd), Vec::with_capacity(t * hd));
        for pos in 0..t {
            let row: Vec<f64> = self.inv_freq.iter().map(|f| pos as f64 * f).collect();
            for _ in 0..2 {
                cos.extend(row.iter().map(|a| (a.cos() * self.attention_factor) as f32));
                sin.extend(row.iter().map(|a| (a.sin() * self.attention_factor) as f32));
            }
        }
        (cos, sin)
    }
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
            max_position_embeddings: Some(256),
            tie_word_embeddings: false,
            attention_bias: false,
            mlp_bias: false,
            hidden_act: silu(),
            rope_scaling: None,
            sliding_window: Some(None),
            use_sliding_window: None,
            max_window_layers: None,
            layer_types: None,
            cohort_lowrank: Default::default(),
            extra: Default::default(),
        }
    }

    fn family(&self) -> Option<crate::hf::Family> {
        crate::hf::Family::of(&self.model_type).filter(|f| *f != crate::hf::Family::Gpt2)
    }

    /// The RoPE parameters: `rope_scaling` if set, else `rope_parameters` (an object or
    /// nothing).
    fn rope_dict(&self) -> Result<serde_json::Map<String, serde_json::Value>> {
        let v = match &self.rope_scaling {
            Some(v) if !v.is_null() && v.as_object().is_none_or(|m| !m.is_empty()) => v,
            _ => match &self.rope_parameters {
                Some(v) if !v.is_null() => v,
                _ => return Ok(Default::default()),
            },
        };
        let field = if self.rope_scaling.as_ref().is_some_and(|r| r == v) {
            "rope_scaling"
        } else {
            "rope_parameters"
        };
        let m = v
            .as_object()
            .ok_or_else(|| Error::config(field, format!("{v} is not an object")))?;
        if m.values().any(|x| x.is_object()) {
            return Err(Error::config(
                field,
                "RoPE parameters per layer type are not implemented",
            ));
        }
        Ok(m.clone())
    }

    /// The RoPE base: `rope_parameters.rope_theta` (or `rope_scaling`'s), else `rope_theta`,
    /// else 10000.
    pub fn theta(&self) -> f64 {
        self.rope_dict()
            .ok()
            .and_then(|d| d.get("rope_theta").and_then(|t| t.as_f64()))
            .or(self.rope_theta)
            .unwrap_or(10_000.0)
    }

    /// The RoPE this config asks for ([`Rope`]); errors name the field.
    pub fn rope(&self) -> Result<Rope> {
        let d = self.rope_dict()?;
        let f = |k: &str| d.get(k).and_then(|v| v.as_f64());
        let bad = |k: &str, why: String| Error::config(format!("rope_parameters.{k}"), why);
        let theta = self.theta();
        if !(theta.is_finite() && theta > 1.0) {
            return Err(Error::config(
                "rope_theta",
                format!("{theta} is not a finite number > 1"),
            ));
        }
        let partial = f("partial_rotary_factor")
            .or_else(|| self.extra.get("partial_rotary_factor")?.as_f64())
            .unwrap_or(1.0);
        if partial != 1.0 {
            return Err(Error::config(
                "partial_rotary_factor",
                format!("{partial}: only 1 (RoPE on the whole head) is implemented"),
            ));
        }
        let rope_type = d
            .get("rope_type")
            .or_else(|| d.get("type"))
            .and_then(|t| t.as_str())
            .unwrap_or("default");
        let dim = self.head_dim();
        let base: Vec<f64> = (0..dim / 2)
            .map(|i| 1.0 / theta.powf(2.0 * i as f64 / dim as f64))
            .collect();
        let factor = |k: &str| -> Result<f64> {
            match f(k) {
                Some(x) if x.is_finite() && x > 0.0 => Ok(x),
                Some(x) => Err(bad(k, format!("{x} is not a finite number > 0"))),
                None => Err(bad(k, format!("missing for rope_type {rope_type}"))),
            }
        };
        let original = || -> Result<f64> {
            match f("original_max_position_embeddings")
                .or_else(|| self.extra.get("original_max_position_embeddings")?.as_f64())
            {
                Some(x) if x.is_finite() && x >= 1.0 => Ok(x),
                Some(x) => Err(bad(
                    "original_max_position_embeddings",
                    format!("{x} is not a positive number"),
                )),
                None => Ok(self.max_positions() as f64),
            }
        };
        let (inv_freq, attention_factor) = match rope_type {
            "default" => (base, 1.0),
            // Up to max_position_embeddings (cohort's longest sequence) NTK scaling leaves the
            // base unchanged.
            "dynamic" => {
                factor("factor")?;
                (base, 1.0)
            }
            "linear" => {
                let k = factor("factor")?;
                (base.iter().map(|b| b / k).collect(), 1.0)
            }
            "llama3" => {
                let (k, lo, hi) = (
                    factor("factor")?,
                    factor("low_freq_factor")?,
                    factor("high_freq_factor")?,
                );
                if hi <= lo {
                    return Err(bad(
                        "high_freq_factor",
                        format!("{hi} must exceed low_freq_factor {lo}"),
                    ));
                }
                let old = original()?;
                let (low_wavelen, high_wavelen) = (old / lo, old / hi);
                let inv = base
                    .iter()
                    .map(|&b| {
                        let wavelen = 2.0 * std::f64::consts::PI / b;
                        let scaled = if wavelen > low_wavelen { b / k } else { b };
                        if wavelen < high_wavelen || wavelen > low_wavelen {
                            scaled
                        } else {
                            let s = (old / wavelen - lo) / (hi - lo);
                            (1.0 - s) * scaled / k + s * scaled
                        }
                    })
                    .collect();
                (inv, 1.0)
            }
            "yarn" => {
                let old = original()?;
                let k = match f("factor") {
                    Some(_) => factor("factor")?,
                    None => self.max_positions() as f64 / old,
                };
                let mscale = |scale: f64, m: f64| {
                    if scale <= 1.0 {
                        1.0
                    } else {
                        0.1 * m * scale.ln() + 1.0
                    }
                };
                let attention = match (f("attention_factor"), f("mscale"), f("mscale_all_dim")) {
                    (Some(a), ..) => a,
                    (None, Some(m), Some(ma)) if m != 0.0 && ma != 0.0 => {
                        mscale(k, m) / mscale(k, ma)
                    }
                    _ => mscale(k, 1.0),
                };
                let beta_fast = f("beta_fast").filter(|&b| b != 0.0).unwrap_or(32.0);
                let beta_slow = f("beta_slow").filter(|&b| b != 0.0).unwrap_or(1.0);
                let truncate = d.get("truncate").and_then(|t| t.as_bool()).unwrap_or(true);
                let n = dim as f64;
                let corr = |rot: f64| {
                    (n * (old / (rot * 2.0 * std::f64::consts::PI)).ln()) / (2.0 * theta.ln())
                };
                let (mut low, mut high) = (corr(beta_fast), corr(beta_slow));
                if truncate {
                    low = low.floor();
                    high = high.ceil();
                }
                let (low, mut high) = (low.max(0.0), high.min(n - 1.0));
                if low == high {
                    high += 0.001;
                }
                let inv = base
                    .iter()
                    .enumerate()
                    .map(|(i, &b)| {
                        let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                        let extrapolation = 1.0 - ramp;
                        b / k * (1.0 - extrapolation) + b * extrapolation
                    })
                    .collect();
                (inv, attention)
            }
            other => {
                return Err(Error::config(
                    "rope_parameters.rope_type",
                    format!(
                        "`{other}` is not implemented (default, linear, dynamic, llama3, yarn)"
                    ),
                ));
            }
        };
        if !attention_factor.is_finite() || inv_freq.iter().any(|x| !x.is_finite()) {
            return Err(bad("factor", "the RoPE frequencies are not finite".into()));
        }
        Ok(Rope {
            inv_freq,
            attention_factor,
        })
    }

    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads
            .unwrap_or(match self.model_type.as_str() {
                "qwen2" => 32,
                "mistral" => 8,
                _ => self.num_attention_heads,
            })
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// `max_position_embeddings`, or the family's default.
    pub fn max_positions(&self) -> usize {
        self.max_position_embeddings
            .unwrap_or(match self.model_type.as_str() {
                "qwen2" => 32_768,
                "mistral" => 131_072,
                _ => 2048,
            })
    }

    /// The sliding-window span if any layer attends through one (see `sliding_window`).
    pub fn attention_window(&self) -> Option<usize> {
        let window = |default: usize| match self.sliding_window {
            None => Some(default),
            Some(w) => w,
        };
        match self.model_type.as_str() {
            "mistral" => window(4096),
            "qwen2" => {
                let w = if self.use_sliding_window == Some(true) {
                    window(4096)
                } else {
                    None
                };
                match &self.layer_types {
                    Some(types) => w.filter(|_| types.iter().any(|t| t == "sliding_attention")),
                    None => {
                        w.filter(|_| self.max_window_layers.unwrap_or(28) < self.num_hidden_layers)
                    }
                }
            }
            _ => None,
        }
    }

    /// The longest sequence the model runs: `max_position_embeddings`, or the sliding window
    /// if that is shorter (up to the window, sliding-window attention is full causal
    /// attention, so cohort's result is transformers').
    pub fn max_context(&self) -> usize {
        let p = self.max_positions();
        self.attention_window().map_or(p, |w| w.min(p))
    }

    /// Whether q/k/v projections have biases (Qwen2 always; Llama if `attention_bias`).
    pub fn qkv_bias(&self) -> bool {
        match self.model_type.as_str() {
            "qwen2" => true,
            "llama" => self.attention_bias,
            _ => false,
        }
    }

    /// Whether the output projection has a bias (Llama's `attention_bias`).
    pub fn o_bias(&self) -> bool {
        self.model_type == "llama" && self.attention_bias
    }

    /// Whether the MLP's projections have biases (Llama's `mlp_bias`).
    pub fn mlp_biases(&self) -> bool {
        self.model_type == "llama" && self.mlp_bias
    }

    /// Checks every size and value and every other field ([`crate::hf`]); returns nothing,
    /// refuses what cohort does not implement with the field named.
    pub fn validate(&self) -> Result<()> {
        let Some(family) = self.family() else {
            return Err(Error::config(
                "model_type",
                format!("`{}` is not llama, qwen2 or mistral", self.model_type),
            ));
        };
        for (f, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.kv_heads()),
            ("head_dim", self.head_dim()),
            ("max_position_embeddings", self.max_positions()),
        ] {
            if v == 0 {
                return Err(Error::config(f, "must be positive"));
            }
        }
        if let Some(Some(0)) = self.sliding_window {
            return Err(Error::config("sliding_window", "must be positive"));
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
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(Error::config(
                "num_attention_heads",
                format!(
                    "{} does not divide hidden_size {} (and no head_dim is given)",
                    self.num_attention_heads, self.hidden_size
                ),
            ));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return Err(Error::config(
                "rms_norm_eps",
                format!("{} is not a finite number > 0", self.rms_norm_eps),
            ));
        }
        if self.hidden_act != "silu" {
            return Err(Error::config(
                "hidden_act",
                format!("only silu is implemented, found {}", self.hidden_act),
            ));
        }
        if let Some(types) = &self.layer_types {
            if types.len() != self.num_hidden_layers {
                return Err(Error::config(
                    "layer_types",
                    format!(
                        "{} entries for {} layers",
                        types.len(),
                        self.num_hidden_layers
                    ),
                ));
            }
            if let Some(t) = types
                .iter()
                .find(|t| !matches!(t.as_str(), "full_attention" | "sliding_attention"))
            {
                return Err(Error::config(
                    "layer_types",
                    format!("`{t}` is not full_attention or sliding_attention"),
                ));
            }
        }
        self.rope()?;
        crate::hf::check_extra(family, &self.extra)?;
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
            if c.o_bias() {
                v.push((format!("{p}.self_attn.o_proj.bias"), vec![h]));
            }
            v.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
            for (name, shape) in [
                ("gate_proj", [f, h]),
                ("up_proj", [f, h]),
                ("down_proj", [h, f]),
            ] {
                v.push((format!("{p}.mlp.{name}.weight"), shape.to_vec()));
                if c.mlp_biases() {
                    v.push((format!("{p}.mlp.{name}.bias"), vec![shape[0]]));
                }
            }
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
                SplitMix64::derive(seed, &name).normal_vec(n, 0.02)
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
        let tensors = checkpoint::read_weights(dir, device)?;
        let file = dir.join(checkpoint::WEIGHTS_FILE);
        let mut params = Params::new();
        let shapes = checkpoint::with_lowrank(
            Self::shapes(&config),
            &config.cohort_lowrank,
            &Self::linears(&config),
        )?;
        let tied = config
            .tie_word_embeddings
            .then_some("model.embed_tokens.weight");
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
        let tied = config
            .tie_word_embeddings
            .then_some("model.embed_tokens.weight");
        let weights = crate::mapped::frozen_weights(
            dir,
            device,
            &shapes,
            &config.cohort_lowrank,
            "Llama",
            tied,
        )?;
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
                    lin(format!("{a}.o_proj"), q, h, c.o_bias()),
                    lin(format!("{m}.gate_proj"), h, f, c.mlp_biases()),
                    lin(format!("{m}.up_proj"), h, f, c.mlp_biases()),
                    lin(format!("{m}.down_proj"), f, h, c.mlp_biases()),
                ]
            })
            .collect()
    }

    fn rms_norm(&self, x: &Tensor, name: &str) -> Result<Tensor> {
        let w = self.weights.t(name)?;
        let ms = (x.sqr()?.mean_keepdim(D::Minus1)? + self.config.rms_norm_eps)?;
        Ok(x.broadcast_div(&ms.sqrt()?)?.broadcast_mul(&w)?)
    }

    /// cos and sin tables `[T, 1, hd]` ([`Rope::tables`]).
    fn rope_tables(&self, t: usize) -> Result<(Tensor, Tensor)> {
        let hd = self.config.head_dim();
        let (cos, sin) = self.config.rope()?.tables(t);
        Ok((
            Tensor::from_vec(cos, (t, 1, hd), &self.device)?,
            Tensor::from_vec(sin, (t, 1, hd), &self.device)?,
        ))
    }

    /// Refuses `t` positions beyond the context ([`LlamaConfig::max_context`]).
    pub(crate) fn check_len(&self, t: usize) -> Result<()> {
        let ctx = self.config.max_context();
        if t > ctx {
            let field = if ctx < self.config.max_positions() {
                "sliding_window"
            } else {
                "max_position_embeddings"
            };
            return Err(Error::config(
                field,
                format!("{t} positions exceed the context of {ctx}"),
            ));
        }
        Ok(())
    }
}

impl Llama {
    /// [`LanguageModel::hidden_cached`]: RoPE positions continue from the cache.
    fn hidden_with_cache(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let past = cache.len();
        let c = &self.config;
        self.check_len(past + t)?;
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

    fn num_layers(&self) -> usize {
        self.config.num_hidden_layers
    }

    fn layer_of(&self, name: &str) -> Option<usize> {
        crate::model::block_index(name, "model.layers.")
    }

    fn as_llama(&self) -> Option<&Llama> {
        Some(self)
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
        self.config.max_context()
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn fast_loss_and_grads(
        &self,
        ids: &Tensor,
        targets: &Tensor,
    ) -> Option<Result<(f64, Vec<Vec<f32>>)>> {
        if let Err(e) = ids
            .dim(D::Minus1)
            .map_err(Error::from)
            .and_then(|t| self.check_len(t))
        {
            return Some(Err(e));
        }
        crate::fast::tensor_loss_and_grads(self, ids, targets, crate::fast::llama::loss_and_grads)
    }

    fn forward_eval(&self, ids: &Tensor) -> Result<Tensor> {
        self.check_len(ids.dim(D::Minus1)?)?;
        crate::fast::tensor_logits(self, ids, crate::fast::llama::logits)
    }

    fn hidden_cached(&self, ids: &Tensor, cache: &mut KvCache) -> Option<Result<Tensor>> {
        Some(self.hidden_with_cache(ids, cache))
    }

    fn hidden(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        self.check_len(t)?;
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
        other => Err(unsupported(dir, other)),
    }
}

fn unsupported(dir: &Path, kind: &str) -> Error {
    Error::config(
        "model_type",
        format!(
            "{}: `{kind}` is not supported (gpt2, llama, qwen2, mistral)",
            dir.display()
        ),
    )
}

/// [`load_any`] with the base weights frozen and read in place from the memory-mapped
/// checkpoint ([`crate::Gpt::load_mapped`], [`Llama::load_mapped`]): what a stage server or a
/// client that trains an adapter needs, reading only the pages it uses. CPU only.
pub fn load_mapped_any(dir: &Path, device: &Device) -> Result<Box<dyn LanguageModel>> {
    match checkpoint::model_type(dir)?.as_str() {
        "gpt2" => Ok(Box::new(crate::Gpt::load_mapped(dir, device)?)),
        "llama" | "qwen2" | "mistral" => Ok(Box::new(Llama::load_mapped(dir, device)?)),
        other => Err(unsupported(dir, other)),
    }
}
