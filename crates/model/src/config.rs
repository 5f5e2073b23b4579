//! Model configurations, stored as Hugging Face `config.json` files.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A GPT-2-style decoder: learned positions, pre-norm LayerNorm blocks, GELU MLP, tied
/// embeddings. Serialised with Hugging Face's GPT-2 field names (`n_embd`, `n_layer`, ...) so
/// that `transformers.GPT2LMHeadModel.from_pretrained(dir)` reads the directories it writes.
/// Every other field of transformers' `GPT2Config` is inert or refused by
/// [`GptConfig::validate`] (see [`crate::hf`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GptConfig {
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
    /// Maximum context length (learned positions; alias `max_position_embeddings`).
    #[serde(alias = "max_position_embeddings")]
    pub n_positions: usize,
    /// Model width (transformers also reads it as `hidden_size`).
    #[serde(alias = "hidden_size")]
    pub n_embd: usize,
    /// Transformer blocks (alias `num_hidden_layers`).
    #[serde(alias = "num_hidden_layers")]
    pub n_layer: usize,
    /// Attention heads (must divide `n_embd`; alias `num_attention_heads`).
    #[serde(alias = "num_attention_heads")]
    pub n_head: usize,
    /// MLP hidden width; `None` means `4 * n_embd` (GPT-2's default).
    #[serde(default)]
    pub n_inner: Option<usize>,
    /// Layer norm epsilon (finite, > 0).
    #[serde(default = "default_ln_eps")]
    pub layer_norm_epsilon: f64,
    /// Standard deviation of the initial weights (finite, >= 0).
    #[serde(default = "default_init")]
    pub initializer_range: f64,
    /// The tanh approximation of GELU under any of transformers' names for it: `gelu_new`
    /// (the default), `gelu_pytorch_tanh`, `gelu_fast`. Other activations are refused.
    #[serde(default = "default_act")]
    pub activation_function: String,
    /// Always `gpt2`.
    #[serde(default = "default_model_type")]
    pub model_type: String,
    /// `["GPT2LMHeadModel"]`.
    #[serde(default = "default_arch")]
    pub architectures: Vec<String>,
    /// Always true: the output projection is the token embedding (false is refused).
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
    /// Linear layers stored as SVD factors (path -> rank); see [`crate::svd`].
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub cohort_lowrank: std::collections::BTreeMap<String, usize>,
    /// The config's other fields, kept so that it round-trips; each is checked by
    /// [`GptConfig::validate`] ([`crate::hf`]).
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn default_ln_eps() -> f64 {
    1e-5
}
fn default_init() -> f64 {
    0.02
}
fn default_act() -> String {
    "gelu_new".into()
}
fn default_model_type() -> String {
    "gpt2".into()
}
fn default_arch() -> Vec<String> {
    vec!["GPT2LMHeadModel".into()]
}
fn yes() -> bool {
    true
}

impl GptConfig {
    /// A config with GPT-2's defaults for everything but the sizes.
    pub fn new(
        vocab_size: usize,
        n_positions: usize,
        n_embd: usize,
        n_layer: usize,
        n_head: usize,
    ) -> Self {
        Self {
            vocab_size,
            n_positions,
            n_embd,
            n_layer,
            n_head,
            n_inner: None,
            layer_norm_epsilon: default_ln_eps(),
            initializer_range: default_init(),
            activation_function: default_act(),
            model_type: default_model_type(),
            architectures: default_arch(),
            tie_word_embeddings: true,
            cohort_lowrank: Default::default(),
            extra: Default::default(),
        }
    }

    /// Named presets: `test` (d 32, 2 layers, ctx 32), `tiny` (d 128, 4 layers, ctx 128),
    /// `reference` (the benchmark model: d 256, 4 layers, 4 heads, ctx 128), `small` (d 384,
    /// 6 layers, 6 heads, ctx 256), `medium` (GPT-2 small's shape: d 768, 12 layers, 12 heads,
    /// ctx 256; 85M parameters in the blocks, for memory measurements).
    pub fn preset(name: &str, vocab_size: usize) -> Result<Self> {
        Ok(match name {
            "test" => Self::new(vocab_size, 32, 32, 2, 2),
            "tiny" => Self::new(vocab_size, 128, 128, 4, 4),
            "reference" => Self::new(vocab_size, 128, 256, 4, 4),
            "small" => Self::new(vocab_size, 256, 384, 6, 6),
            "medium" => Self::new(vocab_size, 256, 768, 12, 12),
            other => {
                return Err(Error::config(
                    "preset",
                    format!("unknown preset `{other}` (test, tiny, reference, small, medium)"),
                ));
            }
        })
    }

    /// Sets the MLP width.
    pub fn with_n_inner(mut self, n: usize) -> Self {
        self.n_inner = Some(n);
        self
    }

    /// The MLP hidden width.
    pub fn d_ff(&self) -> usize {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }

    /// Checks every size and value and every other field of the config ([`crate::hf`]);
    /// called by every constructor and loader.
    pub fn validate(&self) -> Result<()> {
        let pos = |field: &str, v: usize| {
            if v == 0 {
                Err(Error::config(field, "must be positive"))
            } else {
                Ok(())
            }
        };
        pos("vocab_size", self.vocab_size)?;
        pos("n_positions", self.n_positions)?;
        pos("n_embd", self.n_embd)?;
        pos("n_layer", self.n_layer)?;
        pos("n_head", self.n_head)?;
        pos("n_inner", self.d_ff())?;
        if !self.n_embd.is_multiple_of(self.n_head) {
            return Err(Error::config(
                "n_head",
                format!("{} does not divide n_embd {}", self.n_head, self.n_embd),
            ));
        }
        if self.model_type != "gpt2" {
            return Err(Error::config(
                "model_type",
                format!("expected gpt2, found {}", self.model_type),
            ));
        }
        if !matches!(
            self.activation_function.as_str(),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast"
        ) {
            return Err(Error::config(
                "activation_function",
                format!(
                    "only the tanh GELU (gelu_new, gelu_pytorch_tanh, gelu_fast) is implemented, \
                     found {}",
                    self.activation_function
                ),
            ));
        }
        if !(self.layer_norm_epsilon.is_finite() && self.layer_norm_epsilon > 0.0) {
            return Err(Error::config(
                "layer_norm_epsilon",
                format!("{} is not a finite number > 0", self.layer_norm_epsilon),
            ));
        }
        if !(self.initializer_range.is_finite() && self.initializer_range >= 0.0) {
            return Err(Error::config(
                "initializer_range",
                format!("{} is not a finite number >= 0", self.initializer_range),
            ));
        }
        if let Some(n) = self.n_inner.filter(|&n| n == 0) {
            return Err(Error::config("n_inner", format!("{n}: must be positive")));
        }
        crate::hf::check_extra(crate::hf::Family::Gpt2, &self.extra)?;
        if !self.tie_word_embeddings {
            return Err(Error::config(
                "tie_word_embeddings",
                "only tied embeddings are implemented for gpt2",
            ));
        }
        Ok(())
    }

    /// Trainable parameters.
    pub fn n_params(&self) -> usize {
        let (d, f) = (self.n_embd, self.d_ff());
        let block = 2 * 2 * d + d * 3 * d + 3 * d + d * d + d + d * f + f + f * d + d;
        self.vocab_size * d + self.n_positions * d + self.n_layer * block + 2 * d
    }

    /// Matmul FLOPs per token of one training step (forward + backward), as in the PaLM
    /// appendix: `6 N_matmul + 12 L T d` (attention).
    pub fn train_flops_per_token(&self, t: usize) -> f64 {
        let (d, f, l) = (self.n_embd as f64, self.d_ff() as f64, self.n_layer as f64);
        let n_matmul = l * (4.0 * d * d + 2.0 * d * f) + self.vocab_size as f64 * d;
        6.0 * n_matmul + 12.0 * l * t as f64 * d
    }
}
