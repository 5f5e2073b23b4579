//! What every language model here offers: a forward pass, its named parameters, and the
//! linear layers LoRA and SVD can act on.

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::Result;
use crate::cache::KvCache;
use crate::kernels::{self, linear::WeightLayout};
use crate::lora::Lora;
use crate::mapped::MappedWeights;
use crate::params::Params;

/// A linear layer of a model: its module path (`transformer.h.0.attn.c_attn`), sizes and how
/// its weight is stored. The weight is `{path}.weight`, the bias (if any) `{path}.bias`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinearInfo {
    pub path: String,
    pub d_in: usize,
    pub d_out: usize,
    pub layout: WeightLayout,
    pub bias: bool,
}

/// The parameters of a model plus its optional LoRA adapter; the models' forward passes call
/// [`Weights::linear`] for every linear layer, which adds the adapter's low-rank path.
#[derive(Debug, Clone)]
pub struct Weights {
    pub params: Params,
    pub lora: Option<Lora>,
    /// Linear layers replaced by SVD factors (path -> rank): see [`crate::svd`].
    pub lowrank: BTreeMap<String, usize>,
    /// Frozen weights read in place from memory-mapped files instead of held in `params`
    /// ([`crate::Gpt::load_mapped`]): a name is in `params` or here, never both. The
    /// hand-written GPT pass reads them as slices of the mapping; candle's forward pass gets
    /// copies made on first use ([`MappedWeights::tensor`]). [`Weights::materialize_frozen`]
    /// moves them into `params` for code that needs them there (merging an adapter, SVD).
    pub frozen: Option<Arc<MappedWeights>>,
}

impl Weights {
    /// Wraps parameters with no adapter.
    pub fn new(params: Params) -> Self {
        Self {
            params,
            lora: None,
            lowrank: BTreeMap::new(),
            frozen: None,
        }
    }

    /// The tensor the forward pass uses (detached when frozen); a mapped frozen weight is
    /// copied into a candle tensor on first use (and that copy kept).
    pub fn t(&self, name: &str) -> Result<Tensor> {
        match &self.frozen {
            Some(f) if self.params.get(name).is_none() && f.contains(name) => {
                let device = self
                    .params
                    .iter()
                    .next()
                    .map(|p| p.var.device().clone())
                    .unwrap_or(Device::Cpu);
                f.tensor(name, &device)
            }
            _ => self.params.tensor(name),
        }
    }

    /// The values of a mapped frozen weight, read in place (None if `name` is not mapped).
    pub fn frozen_slice(&self, name: &str) -> Option<&[f32]> {
        self.frozen.as_ref()?.slice(name)
    }

    /// Scalars in all weights: the parameters and the mapped frozen weights.
    pub fn total_len(&self) -> usize {
        self.params.total_len() + self.frozen.as_ref().map_or(0, |f| f.len())
    }

    /// Copies every mapped frozen weight into `params` (frozen, f32, on the device of the
    /// other parameters, CPU if there are none) and drops the mapping: the model is then an
    /// ordinary one again. Needed before merging an adapter into the base or factoring layers.
    pub fn materialize_frozen(&mut self) -> Result<()> {
        let Some(f) = self.frozen.take() else {
            return Ok(());
        };
        let device = self
            .params
            .iter()
            .next()
            .map(|p| p.var.device().clone())
            .unwrap_or(Device::Cpu);
        for name in f.names() {
            let t = f.tensor(name, &device)?;
            self.params.insert(name, t, false)?;
        }
        Ok(())
    }

    /// `x @ W' + b` for the linear layer `info`, plus the adapter's path if one is attached.
    pub fn linear(&self, info: &LinearInfo, x: &Tensor) -> Result<Tensor> {
        let b = if info.bias {
            Some(self.t(&format!("{}.bias", info.path))?)
        } else {
            None
        };
        let y = if self.lowrank.contains_key(&info.path) {
            let a = self.t(&crate::svd::a_name(&info.path))?;
            let f = self.t(&crate::svd::b_name(&info.path))?;
            let h = kernels::linear(x, &a, None, WeightLayout::OutIn)?;
            kernels::linear(&h, &f, b.as_ref(), WeightLayout::OutIn)?
        } else {
            let w = self.t(&format!("{}.weight", info.path))?;
            kernels::linear(x, &w, b.as_ref(), info.layout)?
        };
        match &self.lora {
            Some(l) => l.apply(&self.params, &info.path, x, y),
            None => Ok(y),
        }
    }
}

/// The block index in `name` after `prefix` (`transformer.h.` for `transformer.h.3.mlp...`),
/// also under PEFT's `base_model.model.` prefix.
pub(crate) fn block_index(name: &str, prefix: &str) -> Option<usize> {
    let name = name.strip_prefix("base_model.model.").unwrap_or(name);
    let (i, _) = name.strip_prefix(prefix)?.split_once('.')?;
    if i.is_empty() || !i.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    i.parse().ok()
}

/// A causal language model.
pub trait LanguageModel: Send + Sync {
    /// The parameters and adapter.
    fn weights(&self) -> &Weights;
    /// Mutable access, for attaching adapters and loading updates.
    fn weights_mut(&mut self) -> &mut Weights;
    /// Every linear layer LoRA or SVD may target, in definition order.
    fn linear_modules(&self) -> Vec<LinearInfo>;
    /// Tokens in the vocabulary.
    fn vocab_size(&self) -> usize;
    /// Width of the hidden states.
    fn hidden_size(&self) -> usize;
    /// The longest context the model accepts.
    fn max_context(&self) -> usize;
    /// Transformer blocks (layers).
    fn num_layers(&self) -> usize;
    /// The block a parameter belongs to (a base weight, or an adapter weight, also under
    /// PEFT's `base_model.model.` prefix); `None` for the embeddings, the final norm and the
    /// head.
    fn layer_of(&self, name: &str) -> Option<usize>;
    /// The device the weights live on.
    fn device(&self) -> &Device;
    /// The model as a [`crate::Gpt`], if it is one (for the hand-written passes,
    /// [`crate::fast`], which are written per architecture).
    fn as_gpt(&self) -> Option<&crate::Gpt> {
        None
    }
    /// The model as a [`crate::Llama`] (the Llama family), if it is one.
    fn as_llama(&self) -> Option<&crate::Llama> {
        None
    }
    /// Final hidden states `[B, T, d]` (after the last norm) for token ids `[B, T]` (u32).
    fn hidden(&self, ids: &Tensor) -> Result<Tensor>;
    /// Logits `[B, T, V]` from hidden states.
    fn logits(&self, hidden: &Tensor) -> Result<Tensor>;
    /// Writes the model as a Hugging Face-style directory (config.json, model.safetensors);
    /// an attached LoRA adapter is not included (save it separately or merge it first).
    fn save(&self, dir: &std::path::Path) -> Result<()>;

    /// Mean next-token loss and the trainable parameters' gradients (in
    /// [`Params::trainable`] order) from a hand-written backward pass, if the model has one for
    /// its current state; `None` means use candle's autograd.
    fn fast_loss_and_grads(
        &self,
        _ids: &Tensor,
        _targets: &Tensor,
    ) -> Option<Result<(f64, Vec<Vec<f32>>)>> {
        None
    }

    /// Final hidden states `[B, T, d]` of `ids` `[B, T]` continuing the sequence whose keys and
    /// values `cache` holds (positions `cache.len()..`), extending the cache; `None` if the
    /// model has no cached path. Equal to the matching rows of [`LanguageModel::hidden`] on
    /// the whole sequence (up to rounding), as long as it fits the context.
    fn hidden_cached(&self, _ids: &Tensor, _cache: &mut KvCache) -> Option<Result<Tensor>> {
        None
    }

    /// The parameters.
    fn params(&self) -> &Params {
        &self.weights().params
    }

    /// Logits `[B, T, V]` for token ids `[B, T]`.
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        self.logits(&self.hidden(ids)?)
    }

    /// Logits `[B, T, V]` for token ids `[B, T]` without a gradient graph (evaluation): the
    /// model's hand-written forward pass where it has one (the GPT on CPU in f32, which reads
    /// mapped frozen weights in place), else [`LanguageModel::forward`] detached.
    fn forward_eval(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(self.forward(ids)?.detach())
    }

    /// Mean next-token cross-entropy of `ids` `[B, T]` against `targets` `[B, T]`.
    fn loss(&self, ids: &Tensor, targets: &Tensor) -> Result<Tensor> {
        let logits = self.forward(ids)?;
        let (b, t, v) = logits.dims3()?;
        let rows = kernels::cross_entropy_rows(
            &logits.reshape((b * t, v))?,
            &targets.reshape(b * t)?.to_dtype(DType::U32)?,
        )?;
        Ok(rows.mean_all()?)
    }
}
