//! What cohort does with each field of a Hugging Face `config.json`.
//!
//! transformers defines, for each model family, the fields its configuration class takes
//! (`configuration_gpt2.py`, `configuration_llama.py`, `configuration_qwen2.py`,
//! `configuration_mistral.py`, and the common ones of `PreTrainedConfig`). A field that changes
//! what the model computes is either implemented here (parsed into [`crate::GptConfig`] or
//! [`crate::LlamaConfig`] and used by the forward passes) or refused when its value is not the
//! one under which cohort's computation is the same as transformers'. Fields that do not change
//! the logits of a causal language model in evaluation (dropout probabilities, initialisation,
//! token ids, generation defaults, output switches, metadata) are accepted; they are listed
//! below with the reason. A field that transformers does not define for the family is ignored
//! by transformers too (it only becomes an attribute of the config object); cohort does the
//! same and names it in a `tracing` warning, so that a field of a newer transformers is noticed.
//!
//! Dropout: transformers applies `resid_pdrop`, `embd_pdrop`, `attn_pdrop` and
//! `attention_dropout` in training mode only. cohort's training (pretraining, full fine-tuning,
//! LoRA) runs the base model without dropout, whatever these say; LoRA has its own
//! `lora_dropout`. Evaluation and generation are the same as transformers' (`model.eval()`).

use serde_json::{Map, Value};

use crate::{Error, Result};

/// Fields of `PreTrainedConfig` (and of transformers 4's `PretrainedConfig`) that do not change
/// a causal language model's logits.
const COMMON_INERT: &[(&str, &str)] = &[
    ("transformers_version", "metadata"),
    (
        "architectures",
        "metadata (the head is checked through the tensors)",
    ),
    ("_name_or_path", "metadata"),
    ("name_or_path", "metadata"),
    ("_commit_hash", "metadata"),
    ("dtype", "storage dtype; cohort computes in f32"),
    ("torch_dtype", "storage dtype; cohort computes in f32"),
    ("use_bfloat16", "storage dtype; cohort computes in f32"),
    ("output_hidden_states", "output switch"),
    ("output_attentions", "output switch"),
    ("return_dict", "output switch"),
    ("torchscript", "export switch"),
    (
        "use_cache",
        "cohort always caches keys and values when generating",
    ),
    (
        "chunk_size_feed_forward",
        "chunking does not change the result",
    ),
    ("is_decoder", "a causal LM is a decoder"),
    ("id2label", "classification labels"),
    ("label2id", "classification labels"),
    ("num_labels", "classification labels"),
    ("problem_type", "classification loss"),
    ("finetuning_task", "metadata"),
    ("task_specific_params", "generation defaults"),
    ("tokenizer_class", "tokenizer metadata"),
    ("prefix", "tokenizer metadata"),
    (
        "bos_token_id",
        "token ids (the tokenizer adds special tokens)",
    ),
    ("eos_token_id", "token ids"),
    ("pad_token_id", "token ids"),
    ("sep_token_id", "token ids"),
    ("decoder_start_token_id", "token ids"),
    ("tf_legacy_loss", "TensorFlow loss"),
    ("initializer_range", "initialisation of new weights"),
    // Generation defaults (popped by transformers 5, kept on the config by 4).
    ("max_length", "generation default"),
    ("min_length", "generation default"),
    ("do_sample", "generation default"),
    ("early_stopping", "generation default"),
    ("num_beams", "generation default"),
    ("num_beam_groups", "generation default"),
    ("diversity_penalty", "generation default"),
    ("temperature", "generation default"),
    ("top_k", "generation default"),
    ("top_p", "generation default"),
    ("typical_p", "generation default"),
    ("repetition_penalty", "generation default"),
    ("length_penalty", "generation default"),
    ("no_repeat_ngram_size", "generation default"),
    ("encoder_no_repeat_ngram_size", "generation default"),
    ("bad_words_ids", "generation default"),
    ("num_return_sequences", "generation default"),
    ("output_scores", "generation default"),
    ("return_dict_in_generate", "generation default"),
    ("forced_bos_token_id", "generation default"),
    ("forced_eos_token_id", "generation default"),
    ("remove_invalid_values", "generation default"),
    ("exponential_decay_length_penalty", "generation default"),
    ("suppress_tokens", "generation default"),
    ("begin_suppress_tokens", "generation default"),
    ("epsilon_cutoff", "generation default"),
    ("eta_cutoff", "generation default"),
    ("encoder_repetition_penalty", "generation default"),
];

/// Common fields refused unless they have this value (or are null): each changes the
/// architecture or the weights' meaning.
const COMMON_REFUSED: &[(&str, &str)] = &[
    ("is_encoder_decoder", "false"),
    ("add_cross_attention", "false"),
    ("tie_encoder_decoder", "false"),
    ("cross_attention_hidden_size", "null"),
    ("pruned_heads", "{}"),
    ("quantization_config", "null"),
];

/// The supported families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    Gpt2,
    Llama,
    Qwen2,
    Mistral,
}

impl Family {
    /// Family fields with no effect on the logits cohort computes (beyond [`COMMON_INERT`]).
    fn inert(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Self::Gpt2 => &[
                (
                    "resid_pdrop",
                    "dropout (training only; see the module docs)",
                ),
                ("embd_pdrop", "dropout (training only)"),
                ("attn_pdrop", "dropout (training only)"),
                ("summary_type", "GPT2DoubleHeadsModel's head"),
                ("summary_use_proj", "GPT2DoubleHeadsModel's head"),
                ("summary_activation", "GPT2DoubleHeadsModel's head"),
                ("summary_proj_to_labels", "GPT2DoubleHeadsModel's head"),
                ("summary_first_dropout", "GPT2DoubleHeadsModel's head"),
                (
                    "reorder_and_upcast_attn",
                    "scales before the product and computes in f32: cohort computes attention in \
                     f32 (checked against transformers)",
                ),
                ("n_ctx", "transformers 3's name of n_positions"),
            ],
            Self::Llama => &[
                ("attention_dropout", "dropout (training only)"),
                (
                    "pretraining_tp",
                    "tensor-parallel slicing of the same products",
                ),
            ],
            Self::Qwen2 | Self::Mistral => &[("attention_dropout", "dropout (training only)")],
        }
    }

    /// Family fields refused unless they have this value.
    fn refused(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Self::Gpt2 => &[
                ("scale_attn_weights", "true"),
                ("scale_attn_by_inverse_layer_idx", "false"),
            ],
            Self::Llama | Self::Qwen2 | Self::Mistral => &[],
        }
    }

    pub(crate) fn of(model_type: &str) -> Option<Self> {
        Some(match model_type {
            "gpt2" => Self::Gpt2,
            "llama" => Self::Llama,
            "qwen2" => Self::Qwen2,
            "mistral" => Self::Mistral,
            _ => return None,
        })
    }
}

/// Checks the fields the config struct did not parse (`extra`): inert ones pass, refused ones
/// must have their neutral value, and the names of the rest (unknown to transformers for this
/// family, ignored by it and so by cohort) are returned.
pub(crate) fn check_extra(family: Family, extra: &Map<String, Value>) -> Result<Vec<String>> {
    let mut ignored = Vec::new();
    for (key, value) in extra {
        let inert = COMMON_INERT
            .iter()
            .chain(family.inert())
            .any(|(k, _)| k == key);
        if inert {
            continue;
        }
        if let Some((_, neutral)) = COMMON_REFUSED
            .iter()
            .chain(family.refused())
            .find(|(k, _)| k == key)
        {
            let is_neutral = match *neutral {
                "true" => value == &Value::Bool(true),
                "false" => matches!(value, Value::Bool(false) | Value::Null),
                "{}" => value.is_null() || value.as_object().is_some_and(Map::is_empty),
                _ => value.is_null(),
            };
            if !is_neutral {
                return Err(Error::config(
                    key.clone(),
                    format!("{value} is not implemented by cohort (only {neutral})"),
                ));
            }
            continue;
        }
        ignored.push(key.clone());
    }
    if !ignored.is_empty() {
        tracing::warn!(
            fields = ?ignored,
            "config fields transformers does not define for this model family are ignored, as \
             transformers ignores them"
        );
    }
    Ok(ignored)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extra(json: &str) -> Map<String, Value> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn inert_fields_pass_refused_ones_must_be_neutral_and_unknown_ones_are_named() {
        let ok = extra(
            r#"{"resid_pdrop": 0.1, "bos_token_id": 5, "pruned_heads": {},
            "scale_attn_weights": true, "quantization_config": null, "my_field": 1}"#,
        );
        assert_eq!(check_extra(Family::Gpt2, &ok).unwrap(), ["my_field"]);
        for bad in [
            r#"{"scale_attn_weights": false}"#,
            r#"{"scale_attn_by_inverse_layer_idx": true}"#,
            r#"{"add_cross_attention": true}"#,
            r#"{"pruned_heads": {"0": [1]}}"#,
            r#"{"quantization_config": {"bits": 4}}"#,
            r#"{"is_encoder_decoder": true}"#,
        ] {
            let e = check_extra(Family::Gpt2, &extra(bad)).unwrap_err();
            let field = bad.split('"').nth(1).unwrap();
            assert!(e.to_string().contains(field), "{bad}: {e}");
        }
        // GPT-2's fields mean nothing to a Llama config: transformers ignores them.
        let l = check_extra(Family::Llama, &extra(r#"{"scale_attn_weights": false}"#)).unwrap();
        assert_eq!(l, ["scale_attn_weights"]);
    }
}
