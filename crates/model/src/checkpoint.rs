//! Hugging Face-style model directories: `config.json` + `model.safetensors` (or sharded
//! `model-0000N-of-0000M.safetensors` with `model.safetensors.index.json`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::Serialize;
use serde::de::DeserializeOwned;

use std::collections::BTreeMap;

use crate::model::LinearInfo;
use crate::params::{self, Params};
use crate::{Error, Result};

/// The config file.
pub const CONFIG_FILE: &str = "config.json";
/// The single-file weights.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The index of sharded weights.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// Reads and parses `config.json`.
pub fn read_config<C: DeserializeOwned>(dir: &Path) -> Result<C> {
    let path = dir.join(CONFIG_FILE);
    let s = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&s).map_err(|e| Error::Json { path, error: e })
}

/// The `model_type` field of `config.json`.
pub fn model_type(dir: &Path) -> Result<String> {
    let v: serde_json::Value = read_config(dir)?;
    v.get("model_type")
        .and_then(|m| m.as_str())
        .map(str::to_string)
        .ok_or_else(|| {
            Error::config(
                "model_type",
                format!("missing in {}", dir.join(CONFIG_FILE).display()),
            )
        })
}

/// Reads all weights: `model.safetensors`, or every shard listed in the index.
pub fn read_weights(dir: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let single = dir.join(WEIGHTS_FILE);
    if single.exists() {
        return params::load_file(&single, device);
    }
    let mut out = HashMap::new();
    for f in shard_files(dir)? {
        out.extend(params::load_file(&f, device)?);
    }
    Ok(out)
}

/// The shard files that `model.safetensors.index.json` in `dir` lists, sorted and checked to be
/// plain file names inside `dir`.
pub fn shard_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join(WEIGHTS_FILE);
    let index = dir.join(INDEX_FILE);
    if !index.exists() {
        return Err(Error::io(
            &single,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no model.safetensors or model.safetensors.index.json",
            ),
        ));
    }
    let s = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
    let v: serde_json::Value = serde_json::from_str(&s).map_err(|e| Error::Json {
        path: index.clone(),
        error: e,
    })?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::config("weight_map", format!("missing in {}", index.display())))?;
    let mut files: Vec<&str> = map.values().filter_map(|f| f.as_str()).collect();
    files.sort_unstable();
    files.dedup();
    files
        .into_iter()
        .map(|f| {
            if f.contains('/') || f.contains("..") {
                return Err(Error::config(
                    "weight_map",
                    format!("shard name `{f}` must be a plain file name"),
                ));
            }
            Ok(dir.join(f))
        })
        .collect()
}

/// Whether `name` is a buffer that older transformers saved beside the weights and cohort
/// recomputes instead of reading: GPT-2's causal masks (`h.N.attn.bias`, `h.N.attn.masked_bias`)
/// and Llama's `rotary_emb.inv_freq` (transformers skips them on load too).
pub(crate) fn is_known_buffer(name: &str) -> bool {
    let gpt2_mask = name
        .strip_prefix("transformer.")
        .unwrap_or(name)
        .strip_prefix("h.")
        .and_then(|r| r.split_once('.'))
        .is_some_and(|(i, rest)| {
            i.parse::<usize>().is_ok() && matches!(rest, "attn.bias" | "attn.masked_bias")
        });
    gpt2_mask || name.ends_with(".rotary_emb.inv_freq")
}

/// Takes the parameters `shapes` lists out of a checkpoint's `tensors` (a GPT-2 tensor may be
/// stored without the `transformer.` prefix), checking each one's shape, and refuses what is
/// left over, naming it: a config whose `n_layer` is smaller than the checkpoint's, say, would
/// otherwise evaluate a truncated model. `tied` names the embedding of a model whose output
/// projection is tied to it: a stored `lm_head.weight` must then equal it.
pub(crate) fn take_exact(
    mut tensors: HashMap<String, Tensor>,
    shapes: Vec<(String, Vec<usize>)>,
    file: &Path,
    tied: Option<&str>,
) -> Result<Vec<(String, Tensor)>> {
    let mut out = Vec::with_capacity(shapes.len());
    for (name, shape) in shapes {
        let short = name.strip_prefix("transformer.");
        let t = tensors
            .remove(&name)
            .or_else(|| short.and_then(|s| tensors.remove(s)))
            .ok_or_else(|| Error::MissingTensor {
                path: file.into(),
                name: name.clone(),
            })?;
        if t.dims() != shape.as_slice() {
            return Err(Error::TensorShape {
                path: file.into(),
                name,
                expected: shape,
                found: t.dims().to_vec(),
            });
        }
        out.push((name, t));
    }
    if let (Some(emb), Some(head)) = (tied, tensors.remove("lm_head.weight")) {
        let e = out
            .iter()
            .find(|(n, _)| n == emb)
            .map(|(_, t)| t)
            .ok_or_else(|| Error::Params(format!("no parameter `{emb}`")))?;
        let same = head.dims() == e.dims()
            && head
                .to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?
                == e.to_dtype(candle_core::DType::F32)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
        if !same {
            return Err(Error::config(
                "tie_word_embeddings",
                format!(
                    "{}: `lm_head.weight` differs from the tied embedding `{emb}` (set \
                     tie_word_embeddings to false to use it)",
                    file.display()
                ),
            ));
        }
    }
    refuse_leftovers(file, tensors.into_keys())?;
    Ok(out)
}

/// Refuses the tensors `names` that a model did not use (known buffers aside), naming them.
pub(crate) fn refuse_leftovers(file: &Path, names: impl Iterator<Item = String>) -> Result<()> {
    let mut left: Vec<String> = names.filter(|n| !is_known_buffer(n)).collect();
    if left.is_empty() {
        return Ok(());
    }
    left.sort_unstable();
    Err(Error::UnusedTensors {
        path: file.into(),
        count: left.len(),
        names: left.into_iter().take(8).collect(),
    })
}

/// Writes `config.json` and `model.safetensors` holding the parameters `names`.
pub fn save_dir<C: Serialize>(
    dir: &Path,
    config: &C,
    params: &Params,
    names: &[String],
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let path = dir.join(CONFIG_FILE);
    let s = serde_json::to_string_pretty(config).map_err(|e| Error::Json {
        path: path.clone(),
        error: e,
    })?;
    std::fs::write(&path, s + "\n").map_err(|e| Error::io(&path, e))?;
    let ts = names
        .iter()
        .map(|n| {
            let p = params
                .get(n)
                .ok_or_else(|| Error::Params(format!("no parameter `{n}`")))?;
            Ok((n.clone(), p.var.as_tensor().clone()))
        })
        .collect::<Result<Vec<_>>>()?;
    params::save_file(&ts, &dir.join(WEIGHTS_FILE))
}

/// Parameter names and shapes with every factored layer's `{path}.weight` replaced by its SVD
/// factors `A` `[k, in]` and `B` `[out, k]`.
pub(crate) fn with_lowrank(
    shapes: Vec<(String, Vec<usize>)>,
    lowrank: &BTreeMap<String, usize>,
    linears: &[LinearInfo],
) -> Result<Vec<(String, Vec<usize>)>> {
    for path in lowrank.keys() {
        if !linears.iter().any(|l| &l.path == path) {
            return Err(Error::config(
                "cohort_lowrank",
                format!("`{path}` is not a linear layer of this model"),
            ));
        }
    }
    let mut out = Vec::with_capacity(shapes.len());
    for (name, shape) in shapes {
        let hit = name
            .strip_suffix(".weight")
            .and_then(|p| lowrank.get(p).map(|k| (p, *k)));
        match hit.and_then(|(p, k)| linears.iter().find(|l| l.path == p).map(|l| (l, k))) {
            Some((l, k)) => {
                out.push((crate::svd::a_name(&l.path), vec![k, l.d_in]));
                out.push((crate::svd::b_name(&l.path), vec![l.d_out, k]));
            }
            None => out.push((name, shape)),
        }
    }
    Ok(out)
}
