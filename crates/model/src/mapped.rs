//! Frozen weights read in place from memory-mapped safetensors files.
//!
//! candle 0.11's CPU tensors own their memory (a `Vec`), so a model loaded through candle holds
//! a private, anonymous copy of every weight, even when the weights are frozen (the base under
//! LoRA). [`MappedWeights`] keeps the frozen weights where they are: in the page cache, mapped
//! read-only into the process. The hand-written GPT pass ([`crate::fast`]) reads them as plain
//! `&[f32]` slices of the mapping, so fine-tuning an adapter never copies the base into the
//! heap. The mapped pages count in the resident set as file-backed (`RssFile`), not anonymous:
//! they are clean, the kernel can drop and re-read them under memory pressure instead of
//! swapping, and every process mapping the same file shares one copy.
//!
//! Opening a file checks everything the slices rely on: the header parses, every wanted tensor
//! is present with the expected shape, its dtype is known, its byte range has the size its
//! shape and dtype imply and lies inside the file. A tensor is read in place when it is `F32`,
//! the machine is little-endian (safetensors is little-endian) and its data is 4-byte aligned
//! in the file; otherwise (another float dtype, a big-endian machine, or data at an offset that
//! is not a multiple of 4, which the format allows) it is converted into an owned `Vec<f32>`,
//! and [`MappedWeights::stats`] says how many bytes were copied.
//!
//! Code that needs candle tensors of these weights (candle's forward pass: generation, the
//! autograd fallback) gets them from [`MappedWeights::tensor`], which copies a tensor out of the
//! mapping on first use and keeps that copy: only those paths pay for the copy.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use crate::checkpoint::WEIGHTS_FILE;
use crate::{Error, Result};

/// A mapped safetensors file.
#[derive(Debug)]
struct MappedFile {
    path: PathBuf,
    /// `None` once nothing is read in place from it (every tensor converted): unmapped, so
    /// that its pages do not stay resident beside the converted copies.
    map: Option<memmap2::Mmap>,
}

/// Where a tensor's values are.
#[derive(Debug)]
enum Data {
    /// `len` f32 values at byte `start` of file `file`'s mapping (4-byte aligned).
    Mapped {
        file: usize,
        start: usize,
        len: usize,
    },
    /// Converted or realigned into memory of our own.
    Owned(Vec<f32>),
}

#[derive(Debug)]
struct Entry {
    shape: Vec<usize>,
    data: Data,
}

/// How the weights of a [`MappedWeights`] are held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MapStats {
    /// Tensors read in place from the mapping, and their bytes.
    pub tensors_mapped: usize,
    pub mapped_bytes: usize,
    /// Tensors that had to be copied (not f32, not 4-byte aligned, or a big-endian machine),
    /// and the bytes of their f32 copies.
    pub tensors_copied: usize,
    pub copied_bytes: usize,
    /// Files still mapped (those with a tensor read in place), of the files opened.
    pub files_mapped: usize,
    pub files: usize,
}

/// Frozen f32 weights read in place from memory-mapped safetensors files.
pub struct MappedWeights {
    files: Vec<MappedFile>,
    entries: BTreeMap<String, Entry>,
    /// candle copies made on demand by [`MappedWeights::tensor`].
    materialised: Mutex<HashMap<String, Tensor>>,
    /// Tensors of the files that were not wanted, sorted.
    unused: Vec<String>,
}

impl std::fmt::Debug for MappedWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedWeights")
            .field(
                "files",
                &self.files.iter().map(|f| &f.path).collect::<Vec<_>>(),
            )
            .field("tensors", &self.entries.len())
            .field("stats", &self.stats())
            .finish()
    }
}

/// One tensor of a safetensors header.
#[derive(Debug, Deserialize)]
struct HeaderEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [usize; 2],
}

/// Maps `path` read-only.
///
/// The mapping is only sound while nobody truncates or rewrites the file: the slices handed out
/// would change under the reader, and a truncated mapping raises SIGBUS on access. That is the
/// same contract as candle's and safetensors' own mapped loaders; model directories are not
/// written while a model is open (`save` writes new files under the same names only when the
/// caller asks, and then into another directory in every command here).
#[allow(unsafe_code)]
fn map_file(path: &Path) -> Result<memmap2::Mmap> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the map is read-only and private to this process; see the contract above about
    // concurrent modification of the file, which is the only way it could be invalidated.
    unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))
}

fn dtype_of(name: &str) -> Option<(DType, usize)> {
    Some(match name {
        "F32" => (DType::F32, 4),
        "F16" => (DType::F16, 2),
        "BF16" => (DType::BF16, 2),
        "F64" => (DType::F64, 8),
        _ => return None,
    })
}

/// The header of a safetensors file: data offset and tensors, every range checked against the
/// file's length.
fn parse_header(path: &Path, bytes: &[u8]) -> Result<(usize, HashMap<String, HeaderEntry>)> {
    let bad = |reason: String| Error::Safetensors {
        path: path.into(),
        reason,
    };
    let len8: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            bad(format!(
                "{} bytes: too short for a safetensors header",
                bytes.len()
            ))
        })?;
    let n = usize::try_from(u64::from_le_bytes(len8)).unwrap_or(usize::MAX);
    let end = n
        .checked_add(8)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| {
            bad(format!(
                "header of {n} bytes runs past the end of the file ({} bytes): truncated?",
                bytes.len()
            ))
        })?;
    let mut raw: HashMap<String, serde_json::Value> = serde_json::from_slice(&bytes[8..end])
        .map_err(|e| bad(format!("header is not valid JSON: {e}")))?;
    raw.remove("__metadata__");
    let data_len = bytes.len() - end;
    let mut out = HashMap::with_capacity(raw.len());
    for (name, v) in raw {
        let h: HeaderEntry = serde_json::from_value(v)
            .map_err(|e| bad(format!("tensor `{name}`: malformed header entry: {e}")))?;
        let [s, e] = h.data_offsets;
        if s > e || e > data_len {
            return Err(bad(format!(
                "tensor `{name}`: data [{s}, {e}) runs past the end of the data ({data_len} \
                 bytes): truncated?"
            )));
        }
        out.insert(name, h);
    }
    Ok((end, out))
}

impl MappedWeights {
    /// Maps the weights of the model directory `dir` (`model.safetensors`, or the shards that
    /// `model.safetensors.index.json` lists) and selects the tensors `wanted` (name, shape),
    /// each stored under its name or, for GPT-2 checkpoints saved without the prefix, without
    /// a leading `transformer.`. Errors name the file and the tensor.
    pub fn open_dir(dir: &Path, wanted: &[(String, Vec<usize>)]) -> Result<Self> {
        let single = dir.join(WEIGHTS_FILE);
        let files = if single.exists() {
            vec![single]
        } else {
            crate::checkpoint::shard_files(dir)?
        };
        Self::open(&files, wanted)
    }

    /// [`MappedWeights::open_dir`] on the given safetensors files.
    pub fn open(paths: &[PathBuf], wanted: &[(String, Vec<usize>)]) -> Result<Self> {
        let mut files = Vec::with_capacity(paths.len());
        let mut headers = Vec::with_capacity(paths.len());
        for path in paths {
            let map = map_file(path)?;
            headers.push(parse_header(path, &map)?);
            files.push(MappedFile {
                path: path.clone(),
                map: Some(map),
            });
        }
        let mut entries = BTreeMap::new();
        let mut used = std::collections::HashSet::new();
        for (name, shape) in wanted {
            let short = name.strip_prefix("transformer.");
            let found = headers.iter().enumerate().find_map(|(i, (_, h))| {
                h.get_key_value(name.as_str())
                    .or_else(|| short.and_then(|s| h.get_key_value(s)))
                    .map(|(k, e)| (i, k, e))
            });
            if let Some((i, k, _)) = found {
                used.insert((i, k.clone()));
            }
            let found = found.map(|(i, _, e)| (i, e));
            let Some((i, h)) = found else {
                return Err(Error::MissingTensor {
                    path: paths
                        .first()
                        .cloned()
                        .unwrap_or_else(|| PathBuf::from(WEIGHTS_FILE)),
                    name: name.clone(),
                });
            };
            let file = &files[i];
            let bad = |reason: String| Error::Safetensors {
                path: file.path.clone(),
                reason: format!("tensor `{name}`: {reason}"),
            };
            if &h.shape != shape {
                return Err(Error::TensorShape {
                    path: file.path.clone(),
                    name: name.clone(),
                    expected: shape.clone(),
                    found: h.shape.clone(),
                });
            }
            let (dtype, size) = dtype_of(&h.dtype).ok_or_else(|| {
                bad(format!(
                    "dtype {} is not a float type (F32, F16, BF16, F64)",
                    h.dtype
                ))
            })?;
            let len: usize = shape.iter().product();
            let [s, e] = h.data_offsets;
            if len.checked_mul(size) != Some(e - s) {
                return Err(bad(format!(
                    "{} bytes of data for shape {shape:?} of {} ({} expected)",
                    e - s,
                    h.dtype,
                    len * size
                )));
            }
            let start = headers[i].0 + s;
            let Some(map) = &file.map else {
                return Err(bad("file was unmapped while opening".into()));
            };
            let bytes = &map[start..start + (e - s)];
            let in_place = dtype == DType::F32
                && cfg!(target_endian = "little")
                && bytemuck::try_cast_slice::<u8, f32>(bytes).is_ok();
            let data = if in_place {
                Data::Mapped {
                    file: i,
                    start,
                    len,
                }
            } else {
                Data::Owned(to_f32(bytes, dtype, shape).map_err(|e| bad(e.to_string()))?)
            };
            entries.insert(
                name.clone(),
                Entry {
                    shape: shape.clone(),
                    data,
                },
            );
        }
        // A file none of whose tensors is read in place (a bf16 checkpoint, say) is unmapped:
        // its values live in the converted copies.
        for (i, f) in files.iter_mut().enumerate() {
            let used = entries
                .values()
                .any(|e| matches!(e.data, Data::Mapped { file, .. } if file == i));
            if !used {
                f.map = None;
            }
        }
        let mut unused: Vec<String> = headers
            .iter()
            .enumerate()
            .flat_map(|(i, (_, h))| h.keys().map(move |k| (i, k)))
            .filter(|(i, k)| !used.contains(&(*i, (*k).clone())))
            .map(|(_, k)| k.clone())
            .collect();
        unused.sort_unstable();
        Ok(Self {
            files,
            entries,
            materialised: Mutex::new(HashMap::new()),
            unused,
        })
    }

    /// The tensors of the files that were not asked for, sorted.
    pub fn unused(&self) -> &[String] {
        &self.unused
    }

    /// The values of tensor `name` (row-major), read in place where possible.
    pub fn slice(&self, name: &str) -> Option<&[f32]> {
        let e = self.entries.get(name)?;
        Some(match &e.data {
            Data::Owned(v) => v,
            Data::Mapped { file, start, len } => {
                let bytes = &self.files[*file].map.as_ref()?[*start..*start + 4 * len];
                // Alignment and length were checked when the file was opened.
                bytemuck::try_cast_slice(bytes).ok()?
            }
        })
    }

    /// Names of the tensors held, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Whether tensor `name` is held.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// The shape of tensor `name`.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.entries.get(name).map(|e| e.shape.as_slice())
    }

    /// Scalars held.
    pub fn len(&self) -> usize {
        self.entries
            .values()
            .map(|e| e.shape.iter().product::<usize>())
            .sum()
    }

    /// Whether no tensor is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The files mapped.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(|f| f.path.as_path())
    }

    /// How many tensors and bytes are read in place and how many were copied.
    pub fn stats(&self) -> MapStats {
        let mut s = MapStats {
            files: self.files.len(),
            files_mapped: self.files.iter().filter(|f| f.map.is_some()).count(),
            ..MapStats::default()
        };
        for e in self.entries.values() {
            match &e.data {
                Data::Mapped { len, .. } => {
                    s.tensors_mapped += 1;
                    s.mapped_bytes += 4 * len;
                }
                Data::Owned(v) => {
                    s.tensors_copied += 1;
                    s.copied_bytes += 4 * v.len();
                }
            }
        }
        s
    }

    /// A candle tensor of `name` on `device`: copied out of the mapping on first use and kept
    /// (candle's tensors own their memory), for the paths that run candle ops on frozen
    /// weights. [`MappedWeights::materialised_bytes`] says how much that has copied.
    pub fn tensor(&self, name: &str, device: &Device) -> Result<Tensor> {
        let mut cache = self.materialised.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = cache.get(name).filter(|t| t.device().same_device(device)) {
            return Ok(t.clone());
        }
        let (data, shape) = self
            .slice(name)
            .zip(self.shape(name))
            .ok_or_else(|| Error::Params(format!("no frozen tensor `{name}`")))?;
        let t = Tensor::from_slice(data, shape, device)?;
        cache.insert(name.to_string(), t.clone());
        Ok(t)
    }

    /// Bytes of candle copies made by [`MappedWeights::tensor`] so far.
    pub fn materialised_bytes(&self) -> usize {
        self.materialised
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|t| 4 * t.elem_count())
            .sum()
    }
}

/// Little-endian `bytes` of `dtype` as f32 values.
fn to_f32(bytes: &[u8], dtype: DType, shape: &[usize]) -> Result<Vec<f32>> {
    Ok(match dtype {
        DType::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        DType::F64 => bytes
            .chunks_exact(8)
            .map(|c| {
                let mut a = [0u8; 8];
                a.copy_from_slice(c);
                f64::from_le_bytes(a) as f32
            })
            .collect(),
        DType::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        DType::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => {
            return Err(Error::Data(format!(
                "cannot read dtype {other:?} of shape {shape:?} as f32"
            )));
        }
    })
}

/// The [`Weights`](crate::model::Weights) of a `load_mapped`: empty `params` and the base
/// tensors `shapes` (already adjusted for the SVD-factored layers in `lowrank`) mapped from the
/// model directory `dir`, which must hold no other tensor (known buffers aside; a stored
/// `lm_head.weight` of a model tied to the embedding `tied` must equal it). `kind` names the
/// loader to use instead on a non-CPU device.
pub(crate) fn frozen_weights(
    dir: &Path,
    device: &Device,
    shapes: &[(String, Vec<usize>)],
    lowrank: &std::collections::BTreeMap<String, usize>,
    kind: &str,
    tied: Option<&str>,
) -> Result<crate::model::Weights> {
    if !device.is_cpu() {
        return Err(Error::config(
            "device",
            format!("memory-mapped weights are read on the CPU only; use {kind}::load"),
        ));
    }
    let mut mapped = MappedWeights::open_dir(dir, shapes)?;
    let head = "lm_head.weight";
    if let Some(emb) = tied.filter(|_| mapped.unused.iter().any(|n| n == head)) {
        let shape = mapped
            .shape(emb)
            .ok_or_else(|| Error::Params(format!("no frozen tensor `{emb}`")))?
            .to_vec();
        let mut with_head = shapes.to_vec();
        with_head.push((head.to_string(), shape));
        let both = MappedWeights::open_dir(dir, &with_head)?;
        if both.slice(head) != both.slice(emb) {
            return Err(Error::config(
                "tie_word_embeddings",
                format!(
                    "{}: `lm_head.weight` differs from the tied embedding `{emb}` (set \
                     tie_word_embeddings to false to use it)",
                    dir.display()
                ),
            ));
        }
        mapped.unused.retain(|n| n != head);
    }
    let file = mapped
        .files()
        .next()
        .map_or_else(|| dir.join(WEIGHTS_FILE), Path::to_path_buf);
    crate::checkpoint::refuse_leftovers(&file, mapped.unused.iter().cloned())?;
    let mut weights = crate::model::Weights::new(crate::params::Params::new());
    weights.lowrank = lowrank.clone();
    weights.frozen = Some(std::sync::Arc::new(mapped));
    Ok(weights)
}
