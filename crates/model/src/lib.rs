//! Transformer language models for cohort, on candle.
//!
//! Every federated feature trains and evaluates a language model, so this crate is the engine
//! a participant runs on a laptop CPU:
//!
//! - [`Gpt`]: a GPT-2-style decoder (learned positions, LayerNorm, tanh GELU, tied
//!   embeddings) trained from scratch, stored with Hugging Face's GPT-2 names and layout.
//! - [`Llama`]: the Llama family (RMSNorm, RoPE, SwiGLU, grouped-query attention, Qwen2's
//!   biases, tied embeddings) loaded from Hugging Face directories ([`load_any`]).
//! - [`hf`]: every field of the supported families' Hugging Face configs is implemented or
//!   refused, never ignored; checkpoints must match their config tensor for tensor.
//! - [`lora`]: LoRA adapters in PEFT's format; [`svd`]: truncated-SVD factorisation of linear
//!   layers; [`classify`]: a sequence-classification head.
//! - [`train`]: AdamW with warm-up and cosine decay, clipping, accumulation, evaluation and
//!   checkpoints that resume bit for bit; [`generate`]: greedy, temperature, top-k, top-p.
//! - [`params::Params`]: the flat, named view of the trainable parameters (get, set, add a
//!   delta, serialise) that federated updates are made of.
//!
//! Speed on CPU comes from [`kernels`] (fused ops with hand-written backward passes, checked
//! against finite differences) and [`fast`] (a hand-written backward pass for the GPT that
//! bypasses candle's autograd). Everything is deterministic from a seed (cohort-core's [`SplitMix64`](cohort_core::SplitMix64) stream).
pub mod cache;
pub mod checkpoint;
pub mod classify;
pub mod config;
pub mod data;
pub mod error;
pub mod fast;
pub mod generate;
pub mod gpt;
pub mod hf;
pub mod kernels;
pub mod llama;
pub mod lora;
pub mod mapped;
pub mod mem;
pub mod model;
pub mod optim;
pub mod params;
pub mod svd;
pub mod tokenizer;
pub mod train;

pub use cache::KvCache;
pub use config::GptConfig;
pub use error::{Error, Result};
pub use gpt::Gpt;
pub use llama::{Llama, LlamaConfig, load_any, load_mapped_any};
pub use lora::{Lora, LoraConfig};
pub use mapped::{MapStats, MappedWeights};
pub use model::{LanguageModel, LinearInfo, Weights};
pub use params::{ParamSpec, Params};
pub use tokenizer::Tokenizer;
