//! Named parameters, and the flat view of the trainable ones that the federated runtime uses
//! to hash, compress, aggregate and apply updates without knowing the architecture.
//!
//! Order is the order of insertion (the model's definition order), so the flat vector of a
//! model is the same on every machine. Frozen parameters (the base under LoRA) are handed to
//! the forward pass detached, so candle's backward never touches them.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};

use crate::{Error, Result};

/// One named parameter.
#[derive(Debug, Clone)]
pub struct Param {
    pub name: String,
    pub var: Var,
    pub trainable: bool,
}

/// Name and shape of a trainable parameter, in flat-view order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
}

/// An ordered set of named parameters.
#[derive(Debug, Clone, Default)]
pub struct Params {
    entries: Vec<Param>,
    index: HashMap<String, usize>,
}

impl Params {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a parameter (an error if the name exists).
    pub fn insert(&mut self, name: &str, t: Tensor, trainable: bool) -> Result<Var> {
        if self.index.contains_key(name) {
            return Err(Error::Params(format!("duplicate parameter `{name}`")));
        }
        let var = Var::from_tensor(&t)?;
        self.index.insert(name.to_string(), self.entries.len());
        self.entries.push(Param {
            name: name.to_string(),
            var: var.clone(),
            trainable,
        });
        Ok(var)
    }

    /// Removes a parameter, if present.
    pub fn remove(&mut self, name: &str) -> Option<Param> {
        let i = self.index.remove(name)?;
        let p = self.entries.remove(i);
        for (k, e) in self.entries.iter().enumerate().skip(i) {
            self.index.insert(e.name.clone(), k);
        }
        Some(p)
    }

    /// Replaces the parameter `name` by `items` (name, tensor, trainable) at the same
    /// position, so the flat view keeps definition order.
    pub fn replace(&mut self, name: &str, items: Vec<(String, Tensor, bool)>) -> Result<()> {
        let i = *self
            .index
            .get(name)
            .ok_or_else(|| Error::Params(format!("no parameter `{name}`")))?;
        let mut new = Vec::with_capacity(items.len());
        for (n, t, trainable) in items {
            if n != name && self.index.contains_key(&n) {
                return Err(Error::Params(format!("duplicate parameter `{n}`")));
            }
            new.push(Param {
                name: n,
                var: Var::from_tensor(&t)?,
                trainable,
            });
        }
        self.entries.splice(i..=i, new);
        self.index = self
            .entries
            .iter()
            .enumerate()
            .map(|(k, e)| (e.name.clone(), k))
            .collect();
        Ok(())
    }

    /// The parameter called `name`.
    pub fn get(&self, name: &str) -> Option<&Param> {
        self.index.get(name).map(|&i| &self.entries[i])
    }

    /// The tensor the forward pass uses: the variable itself if trainable, detached if frozen.
    pub fn tensor(&self, name: &str) -> Result<Tensor> {
        let p = self
            .get(name)
            .ok_or_else(|| Error::Params(format!("no parameter `{name}`")))?;
        Ok(if p.trainable {
            p.var.as_tensor().clone()
        } else {
            p.var.as_tensor().detach()
        })
    }

    /// Marks parameters trainable or frozen.
    pub fn set_trainable(&mut self, pred: impl Fn(&str) -> bool) {
        for e in &mut self.entries {
            e.trainable = pred(&e.name);
        }
    }

    /// All parameters in order.
    pub fn iter(&self) -> impl Iterator<Item = &Param> {
        self.entries.iter()
    }

    /// The trainable parameters in order.
    pub fn trainable(&self) -> impl Iterator<Item = &Param> {
        self.entries.iter().filter(|p| p.trainable)
    }

    /// Names and shapes of the trainable parameters: the layout of the flat view.
    pub fn spec(&self) -> Vec<ParamSpec> {
        self.trainable()
            .map(|p| ParamSpec {
                name: p.name.clone(),
                shape: p.var.dims().to_vec(),
            })
            .collect()
    }

    /// Number of trainable scalars.
    pub fn trainable_len(&self) -> usize {
        self.trainable().map(|p| p.var.elem_count()).sum()
    }

    /// Number of scalars in all parameters.
    pub fn total_len(&self) -> usize {
        self.entries.iter().map(|p| p.var.elem_count()).sum()
    }

    /// The trainable parameters concatenated in order, as f32.
    pub fn flat(&self) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(self.trainable_len());
        for p in self.trainable() {
            out.extend(
                p.var
                    .flatten_all()?
                    .to_dtype(DType::F32)?
                    .to_vec1::<f32>()?,
            );
        }
        Ok(out)
    }

    fn check_len(&self, n: usize) -> Result<()> {
        let want = self.trainable_len();
        if n != want {
            return Err(Error::Params(format!(
                "flat vector has {n} values, the model has {want} trainable"
            )));
        }
        Ok(())
    }

    /// Replaces the trainable parameters by `values` (the layout of [`Params::flat`]).
    pub fn set_flat(&self, values: &[f32]) -> Result<()> {
        self.check_len(values.len())?;
        let mut off = 0;
        for p in self.trainable() {
            let n = p.var.elem_count();
            let t = Tensor::from_slice(&values[off..off + n], p.var.shape(), p.var.device())?
                .to_dtype(p.var.dtype())?;
            p.var.set(&t)?;
            off += n;
        }
        Ok(())
    }

    /// Adds `scale * delta` to the trainable parameters.
    pub fn add_flat(&self, delta: &[f32], scale: f32) -> Result<()> {
        self.check_len(delta.len())?;
        let mut off = 0;
        for p in self.trainable() {
            let n = p.var.elem_count();
            let d = Tensor::from_slice(&delta[off..off + n], p.var.shape(), p.var.device())?
                .to_dtype(p.var.dtype())?;
            p.var.set(&(p.var.as_tensor() + (d * f64::from(scale))?)?)?;
            off += n;
        }
        Ok(())
    }

    /// The trainable parameters as safetensors bytes (name -> tensor), canonical: the same
    /// values give the same bytes, so the result can be hashed.
    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        let ts: Vec<(String, Tensor)> = self
            .trainable()
            .map(|p| (p.name.clone(), p.var.as_tensor().clone()))
            .collect();
        serialize(&ts, Path::new("<memory>"))
    }

    /// Sets trainable parameters from safetensors bytes; every trainable parameter must be
    /// present with its shape.
    pub fn load_safetensors(&self, bytes: &[u8]) -> Result<()> {
        let path = Path::new("<memory>");
        let map = candle_core::safetensors::load_buffer(bytes, &Device::Cpu).map_err(|e| {
            Error::Safetensors {
                path: path.into(),
                reason: e.to_string(),
            }
        })?;
        for p in self.trainable() {
            let t = map.get(&p.name).ok_or_else(|| Error::MissingTensor {
                path: path.into(),
                name: p.name.clone(),
            })?;
            if t.dims() != p.var.dims() {
                return Err(Error::TensorShape {
                    path: path.into(),
                    name: p.name.clone(),
                    expected: p.var.dims().to_vec(),
                    found: t.dims().to_vec(),
                });
            }
            p.var
                .set(&t.to_dtype(p.var.dtype())?.to_device(p.var.device())?)?;
        }
        Ok(())
    }
}

/// Serialises named tensors to safetensors bytes (sorted by name, `{"format": "pt"}`).
pub(crate) fn serialize(tensors: &[(String, Tensor)], path: &Path) -> Result<Vec<u8>> {
    let mut sorted: Vec<&(String, Tensor)> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut data = Vec::with_capacity(sorted.len());
    for (name, t) in sorted {
        let t = t.to_device(&Device::Cpu)?.contiguous()?;
        let (dtype, bytes) = match t.dtype() {
            DType::F32 => (
                safetensors::Dtype::F32,
                t.flatten_all()?
                    .to_vec1::<f32>()?
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect::<Vec<u8>>(),
            ),
            DType::F64 => (
                safetensors::Dtype::F64,
                t.flatten_all()?
                    .to_vec1::<f64>()?
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            ),
            DType::BF16 => (
                safetensors::Dtype::BF16,
                t.flatten_all()?
                    .to_vec1::<half::bf16>()?
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            ),
            DType::F16 => (
                safetensors::Dtype::F16,
                t.flatten_all()?
                    .to_vec1::<half::f16>()?
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            ),
            other => {
                return Err(Error::Safetensors {
                    path: path.into(),
                    reason: format!("cannot save dtype {other:?} ({name})"),
                });
            }
        };
        data.push((name.clone(), dtype, t.dims().to_vec(), bytes));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = data
        .iter()
        .map(|(n, d, s, b)| {
            safetensors::tensor::TensorView::new(*d, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::Safetensors {
                    path: path.into(),
                    reason: e.to_string(),
                })
        })
        .collect::<Result<_>>()?;
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(views, Some(meta)).map_err(|e| Error::Safetensors {
        path: path.into(),
        reason: e.to_string(),
    })
}

/// Writes named tensors to a safetensors file.
pub(crate) fn save_file(tensors: &[(String, Tensor)], path: &Path) -> Result<()> {
    let bytes = serialize(tensors, path)?;
    std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
}

/// Reads every tensor of a safetensors file.
pub(crate) fn load_file(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    candle_core::safetensors::load_buffer(&bytes, device).map_err(|e| Error::Safetensors {
        path: path.into(),
        reason: e.to_string(),
    })
}
