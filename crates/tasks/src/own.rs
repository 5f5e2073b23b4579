//! A party's own data: a file that replaces its partition of the experiment's data
//! (`cohort client --data FILE`, `cohort validator --holdout FILE`).
//!
//! The experiment's config still gives the model, the task and its settings; only which data
//! the party trains or scores on changes. What the file holds depends on the task:
//!
//! - `lm`: UTF-8 text, tokenized with the task's tokenizer (the base checkpoint's, or the
//!   characters of `task.corpus` for a pretrained base). A client's dataset commitment is the
//!   Merkle root of its lines, as for a partition; it trains on windows of the whole file. It
//!   must hold at least one window (`task.seq_len + 2` tokens).
//! - `imdb`: reviews as `task.data`'s `train.tsv` holds them, `LABEL<TAB>ID ID ...` a line; the
//!   commitment is one leaf per review, as for a partition.
//! - `linear`: refused: its data is drawn from the seed, there is no file to give.
//!
//! Every file is checked before it is used, and refused naming the file and what is wrong: not
//! there, a directory, unreadable, empty or only white space, more than [`MAX_OWN_DATA_BYTES`],
//! not UTF-8, too short for the task.

use std::io::Read;
use std::path::{Path, PathBuf};

use cohort_core::Hash32;
use cohort_fl::FlError;

/// The largest own data file a party reads: 1 GiB (a language model's tokens then take up to
/// four times that in memory).
pub const MAX_OWN_DATA_BYTES: u64 = 1 << 30;

/// A party's own data file, replacing its partition of the config's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnData {
    /// Client `index` trains on the file at `path` (`cohort client --data`).
    Client {
        /// The client's index.
        index: u32,
        /// Its file.
        path: PathBuf,
    },
    /// Validator `index` scores updates on the file at `path` (`cohort validator --holdout`).
    Holdout {
        /// The validator's index.
        index: u32,
        /// Its file.
        path: PathBuf,
    },
}

impl OwnData {
    /// The command-line flag that gives it: `--data` or `--holdout`.
    pub fn flag(&self) -> &'static str {
        match self {
            Self::Client { .. } => "--data",
            Self::Holdout { .. } => "--holdout",
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        match self {
            Self::Client { path, .. } | Self::Holdout { path, .. } => path,
        }
    }

    /// The party's index among its role.
    pub fn index(&self) -> u32 {
        match self {
            Self::Client { index, .. } | Self::Holdout { index, .. } => *index,
        }
    }

    /// An error about the file: `invalid --data: FILE: reason`.
    pub(crate) fn err(&self, reason: impl std::fmt::Display) -> FlError {
        FlError::InvalidConfig {
            what: self.flag(),
            reason: format!("{}: {reason}", self.path().display()),
        }
    }

    /// The file's text, checked: a regular file, not empty, at most [`MAX_OWN_DATA_BYTES`],
    /// UTF-8, not only white space.
    pub(crate) fn read_text(&self) -> Result<String, FlError> {
        let path = self.path();
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(self.err("does not exist"));
            }
            Err(e) => return Err(self.err(format!("cannot be read: {e}"))),
        };
        if meta.is_dir() {
            return Err(self.err("is a directory, not a file"));
        }
        if !meta.is_file() {
            return Err(self.err("is not a regular file"));
        }
        let too_big = |n: u64| {
            self.err(format!(
                "is {n} bytes, more than the {MAX_OWN_DATA_BYTES} bytes (1 GiB) a party reads; \
                 give a part of it"
            ))
        };
        if meta.len() > MAX_OWN_DATA_BYTES {
            return Err(too_big(meta.len()));
        }
        if meta.len() == 0 {
            return Err(self.err("is empty"));
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_OWN_DATA_BYTES + 1).read_to_end(&mut bytes))
            .map_err(|e| self.err(format!("cannot be read: {e}")))?;
        if bytes.len() as u64 > MAX_OWN_DATA_BYTES {
            return Err(too_big(bytes.len() as u64));
        }
        let text = String::from_utf8(bytes).map_err(|e| {
            let at = e.utf8_error().valid_up_to();
            let line = 1 + e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count();
            self.err(format!(
                "is not UTF-8 text: the byte at offset {at} (line {line}) is not valid UTF-8"
            ))
        })?;
        if text.trim().is_empty() {
            return Err(self.err(format!(
                "holds only white space ({} bytes), no data",
                text.len()
            )));
        }
        Ok(text)
    }
}

/// What a party's own data file holds, once checked (what `--check` prints).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnDataSummary {
    /// The task's kind: `lm` or `imdb`.
    pub task: &'static str,
    /// The file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// Its samples: lines of text (`lm`), reviews (`imdb`).
    pub samples: u64,
    /// What a sample is: `lines`, `reviews`.
    pub unit: &'static str,
    /// Its tokens (`lm`).
    pub tokens: Option<u64>,
    /// A client's dataset commitment: the Merkle root it commits at enrolment and the size.
    pub commitment: Option<(Hash32, u64)>,
}

impl std::fmt::Display for OwnDataSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({} bytes, {} {}",
            self.path.display(),
            self.bytes,
            self.samples,
            self.unit
        )?;
        if let Some(t) = self.tokens {
            write!(f, ", {t} tokens")?;
        }
        write!(f, ")")?;
        if let Some((root, size)) = &self.commitment {
            write!(f, ", dataset root 0x{} of {size} samples", root.to_hex())?;
        }
        Ok(())
    }
}
