//! The one error type of `cohort-model`.

use std::path::PathBuf;

/// Everything that can go wrong in this crate. Variants carry the file, field or tensor that
/// was wrong so a caller can report it without guessing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed (shapes, dtypes, devices).
    #[error("tensor: {0}")]
    Candle(#[from] candle_core::Error),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A JSON file (config, tokenizer, adapter config) could not be parsed.
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A configuration value is missing or out of range.
    #[error("config field `{field}`: {reason}")]
    Config { field: String, reason: String },
    /// A checkpoint lacks a tensor the model needs.
    #[error("{path}: missing tensor `{name}`")]
    MissingTensor { path: PathBuf, name: String },
    /// A checkpoint tensor has the wrong shape.
    #[error("{path}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    TensorShape {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// A checkpoint holds tensors the model does not use (`names`: the first eight, sorted):
    /// its config does not describe it (fewer layers, no bias, another family...).
    #[error(
        "{path}: {count} tensor(s) that the model described by config.json does not use: \
         {names:?}{more} (does config.json match the weights?)",
        more = ellipsis(.count, .names)
    )]
    UnusedTensors {
        path: PathBuf,
        names: Vec<String>,
        count: usize,
    },
    /// A safetensors file is malformed.
    #[error("{path}: {reason}")]
    Safetensors { path: PathBuf, reason: String },
    /// Text could not be tokenised or a token id is out of range.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The flat parameter view was given a vector of the wrong length or an unknown name.
    #[error("parameters: {0}")]
    Params(String),
    /// The data set is too small or malformed for the requested operation.
    #[error("data: {0}")]
    Data(String),
}

/// `", ..."` when fewer names are shown than there are.
fn ellipsis(count: &usize, shown: &[String]) -> &'static str {
    if *count > shown.len() { ", ..." } else { "" }
}

/// This crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Config {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
