//! Tokenisers: raw bytes (the default, no files), the characters of a corpus (Tiny
//! Shakespeare's 65), and Hugging Face `tokenizer.json` files through the `tokenizers` crate.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The file a byte or character tokeniser is saved to inside a model directory.
pub const COHORT_TOKENIZER_FILE: &str = "cohort_tokenizer.json";
/// The Hugging Face tokenizer file.
pub const HF_TOKENIZER_FILE: &str = "tokenizer.json";

/// A tokeniser.
#[derive(Debug, Clone)]
pub enum Tokenizer {
    /// Each byte of the UTF-8 text is a token (vocabulary 256).
    Bytes,
    /// Each character is a token, from a fixed sorted alphabet.
    Chars(Chars),
    /// A Hugging Face tokenizer.
    Hf(Box<tokenizers::Tokenizer>),
}

/// A character alphabet.
#[derive(Debug, Clone)]
pub struct Chars {
    chars: Vec<char>,
    index: HashMap<char, u32>,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Saved {
    Bytes,
    Chars { chars: String },
}

impl Tokenizer {
    /// The sorted set of characters in `text`.
    pub fn chars_of(text: &str) -> Self {
        let mut chars: Vec<char> = text.chars().collect();
        chars.sort_unstable();
        chars.dedup();
        Self::from_alphabet(chars)
    }

    fn from_alphabet(chars: Vec<char>) -> Self {
        let index = chars
            .iter()
            .enumerate()
            .map(|(i, &c)| (c, i as u32))
            .collect();
        Self::Chars(Chars { chars, index })
    }

    /// Tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        match self {
            Self::Bytes => 256,
            Self::Chars(c) => c.chars.len(),
            Self::Hf(t) => t.get_vocab_size(true),
        }
    }

    /// Token ids of `text` as transformers' tokenizer gives them by default
    /// (`tokenizer(text).input_ids`, `add_special_tokens=True`): a Hugging Face tokenizer's
    /// post-processor adds its special tokens (Llama 2/3 and Mistral put BOS first); byte and
    /// character tokenisers have none. See [`Tokenizer::encode_plain`].
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match self {
            Self::Hf(t) => t
                .encode(text, true)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| Error::Tokenizer(e.to_string())),
            _ => self.encode_plain(text),
        }
    }

    /// The special tokens [`Tokenizer::encode`] adds to a text (the ids of an empty text's
    /// encoding): `[BOS]` for Llama-style tokenizers, none for most others.
    pub fn special_tokens_added(&self) -> Result<Vec<u32>> {
        self.encode("")
    }

    /// The largest token id this tokeniser can produce, if it has any token.
    pub fn max_id(&self) -> Option<u32> {
        match self {
            Self::Bytes => Some(255),
            Self::Chars(c) => u32::try_from(c.chars.len()).ok()?.checked_sub(1),
            Self::Hf(t) => t.get_vocab(true).into_values().max(),
        }
    }

    /// Token ids of `text` without special tokens (`add_special_tokens=False`).
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        match self {
            Self::Bytes => Ok(text.bytes().map(u32::from).collect()),
            Self::Chars(c) => text
                .chars()
                .map(|ch| {
                    c.index.get(&ch).copied().ok_or_else(|| {
                        Error::Tokenizer(format!("character {ch:?} is not in the alphabet"))
                    })
                })
                .collect(),
            Self::Hf(t) => t
                .encode(text, false)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| Error::Tokenizer(e.to_string())),
        }
    }

    /// The text of `ids` (invalid UTF-8 from the byte tokeniser is replaced).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        match self {
            Self::Bytes => {
                let bytes = ids
                    .iter()
                    .map(|&i| {
                        u8::try_from(i).map_err(|_| Error::Tokenizer(format!("byte id {i} > 255")))
                    })
                    .collect::<Result<Vec<u8>>>()?;
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            }
            Self::Chars(c) => ids
                .iter()
                .map(|&i| {
                    c.chars.get(i as usize).copied().ok_or_else(|| {
                        Error::Tokenizer(format!(
                            "id {i} out of range for {} characters",
                            c.chars.len()
                        ))
                    })
                })
                .collect(),
            Self::Hf(t) => t
                .decode(ids, false)
                .map_err(|e| Error::Tokenizer(e.to_string())),
        }
    }

    /// Writes this tokeniser into a model directory.
    pub fn save(&self, dir: &Path) -> Result<()> {
        match self {
            Self::Hf(t) => {
                let path = dir.join(HF_TOKENIZER_FILE);
                t.save(&path, true)
                    .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))
            }
            Self::Bytes | Self::Chars(_) => {
                let saved = match self {
                    Self::Chars(c) => Saved::Chars {
                        chars: c.chars.iter().collect(),
                    },
                    _ => Saved::Bytes,
                };
                let path = dir.join(COHORT_TOKENIZER_FILE);
                let s = serde_json::to_string_pretty(&saved).map_err(|e| Error::Json {
                    path: path.clone(),
                    error: e,
                })?;
                std::fs::write(&path, s + "\n").map_err(|e| Error::io(&path, e))
            }
        }
    }

    /// Reads the tokeniser of the model directory `dir` for a model of `vocab` tokens: its
    /// `tokenizer.json` or `cohort_tokenizer.json`, which must exist (an error names both
    /// files if neither does) and produce no id outside the model's vocabulary (checked here,
    /// not halfway through a generation).
    pub fn load_for_model(dir: &Path, vocab: usize) -> Result<Self> {
        let files = [HF_TOKENIZER_FILE, COHORT_TOKENIZER_FILE];
        if !files.iter().any(|f| dir.join(f).exists()) {
            return Err(Error::Tokenizer(format!(
                "{}: the tokenizer is missing (neither {} nor {} is there)",
                dir.display(),
                files[0],
                files[1]
            )));
        }
        let t = Self::load(dir)?;
        if let Some(max) = t.max_id().filter(|&m| m as usize >= vocab) {
            return Err(Error::Tokenizer(format!(
                "{}: the tokenizer has ids up to {max} ({} tokens) but the model's vocabulary \
                 has {vocab}",
                dir.display(),
                t.vocab_size()
            )));
        }
        Ok(t)
    }

    /// Reads the tokeniser of a model directory: `tokenizer.json` if present, else
    /// `cohort_tokenizer.json`, else raw bytes. [`Tokenizer::load_for_model`] also checks it
    /// against the model.
    pub fn load(dir: &Path) -> Result<Self> {
        let hf = dir.join(HF_TOKENIZER_FILE);
        if hf.exists() {
            let t = tokenizers::Tokenizer::from_file(&hf)
                .map_err(|e| Error::Tokenizer(format!("{}: {e}", hf.display())))?;
            return Ok(Self::Hf(Box::new(t)));
        }
        let path = dir.join(COHORT_TOKENIZER_FILE);
        if !path.exists() {
            return Ok(Self::Bytes);
        }
        let s = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        match serde_json::from_str(&s).map_err(|e| Error::Json {
            path: path.clone(),
            error: e,
        })? {
            Saved::Bytes => Ok(Self::Bytes),
            Saved::Chars { chars } => Ok(Self::from_alphabet(chars.chars().collect())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chars_round_trip_and_reject_unknown() {
        let t = Tokenizer::chars_of("hello world");
        assert_eq!(t.vocab_size(), 8);
        let ids = t.encode("world hello").unwrap();
        assert_eq!(t.decode(&ids).unwrap(), "world hello");
        assert!(t.encode("xyz").is_err());
        assert!(t.decode(&[99]).is_err());
        assert_eq!(t.max_id(), Some(7));
        assert!(t.special_tokens_added().unwrap().is_empty());
    }

    #[test]
    fn a_missing_or_too_large_tokenizer_is_refused_when_loading() {
        let dir = tempfile::tempdir().unwrap();
        let e = Tokenizer::load_for_model(dir.path(), 65).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
        Tokenizer::chars_of("abcdef").save(dir.path()).unwrap();
        assert!(Tokenizer::load_for_model(dir.path(), 6).is_ok());
        let e = Tokenizer::load_for_model(dir.path(), 5).unwrap_err();
        assert!(e.to_string().contains("ids up to 5"), "{e}");
    }

    #[test]
    fn bytes_round_trip_utf8_and_save_load() {
        let t = Tokenizer::Bytes;
        let ids = t.encode("héllo").unwrap();
        assert_eq!(ids.len(), 6);
        assert_eq!(t.decode(&ids).unwrap(), "héllo");
        let dir = tempfile::tempdir().unwrap();
        let c = Tokenizer::chars_of("abc\n");
        c.save(dir.path()).unwrap();
        let back = Tokenizer::load(dir.path()).unwrap();
        assert_eq!(back.encode("cab\n").unwrap(), c.encode("cab\n").unwrap());
    }
}
