//! The one error type of `cohort-model`.

use std::path::PathBuf;

/// Everything that can go wrong in this crate. Variants carry the file, field or tensor that
/// was wrong so a caller can report it without guessing. Each message is whole (it includes
/// the underlying error's), so no variant also returns that error from `source()`: a report of
/// the chain (`{:#}`) says each thing once.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed (shapes, dtypes, devices).
    #[error("tensor: {0}")]
    Candle(candle_core::Error),
    /// Reading or writing a file failed.
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// A JSON file (config, tokenizer, adapter config) could not be parsed.
    #[error("{path}: {error}")]
    Json {
        path: PathBuf,
        error: serde_json::Error,
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

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Self::Candle(e)
    }
}

/// This crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            error,
        }
    }

    pub(crate) fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Config {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (issue 11): `{:#}` of a missing file printed the reason twice ("...: no
    /// model.safetensors or ...: no model.safetensors or ..."), once from the message and once
    /// from `source()`.
    #[test]
    fn messages_are_whole_and_say_each_thing_once() {
        let e = Error::io(
            "dir/model.safetensors",
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        );
        assert_eq!(e.to_string(), "dir/model.safetensors: no such file");
        assert!(std::error::Error::source(&e).is_none());
        let j = serde_json::from_str::<u32>("x").unwrap_err();
        let e = Error::Json {
            path: "c.json".into(),
            error: j,
        };
        assert!(e.to_string().starts_with("c.json: expected value"), "{e}");
        assert!(std::error::Error::source(&e).is_none());
    }
}
