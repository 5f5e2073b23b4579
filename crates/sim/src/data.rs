//! Labelled bag-of-words samples read from the IMDB TSV files.
//!
//! A line is `LABEL<TAB>ID ID ID ...`: LABEL is 0 or 1, the IDs are Keras IMDB word indices
//! (1 = start of review, 2 = out of vocabulary, words from 4 by frequency rank). With
//! `num_words` every id of `num_words` or more becomes 2, as Keras' `load_data(num_words=..)`
//! does, and a sample's features are the sorted, distinct ids present: a binary presence
//! vector of length `num_words`, stored sparsely.

use std::path::{Path, PathBuf};

use crate::SimError;

/// Keras' out-of-vocabulary index.
pub const OOV: u32 = 2;
/// The largest `num_words` (feature indices travel to the contracts as uint16).
pub const MAX_NUM_WORDS: u32 = 65_536;

/// One labelled review.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Indices of the present features, strictly increasing, each below `num_words`.
    pub features: Vec<u32>,
    /// 0 (negative) or 1 (positive).
    pub label: u8,
}

/// Training and test samples at one `num_words`.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Training samples, in file order.
    pub train: Vec<Sample>,
    /// Test samples, in file order.
    pub test: Vec<Sample>,
    /// Length of the presence vector.
    pub num_words: u32,
    /// Training reviews the file holds (before `train_size` cut it).
    pub available_train: usize,
}

impl Dataset {
    /// Reads `dir/train.tsv` and `dir/test.tsv`, keeping the first `train_size` training
    /// reviews (all of them if `None`).
    pub fn load(dir: &Path, num_words: u32, train_size: Option<usize>) -> Result<Self, SimError> {
        let mut train = load_tsv(&dir.join("train.tsv"), num_words)?;
        let available_train = train.len();
        let test = load_tsv(&dir.join("test.tsv"), num_words)?;
        if let Some(n) = train_size {
            if n == 0 || n > train.len() {
                return Err(SimError::Config(format!(
                    "train size {n} is not between 1 and the {} reviews of {}",
                    train.len(),
                    dir.join("train.tsv").display()
                )));
            }
            train.truncate(n);
        }
        if test.is_empty() {
            return Err(SimError::Config(format!(
                "{} holds no reviews",
                dir.join("test.tsv").display()
            )));
        }
        Ok(Self {
            train,
            test,
            num_words,
            available_train,
        })
    }
}

/// Reads one TSV file, mapping ids of `num_words` or more to [`OOV`].
pub fn load_tsv(path: &Path, num_words: u32) -> Result<Vec<Sample>, SimError> {
    if num_words > MAX_NUM_WORDS {
        return Err(SimError::Config(format!(
            "num_words {num_words} is above {MAX_NUM_WORDS}, the most the contracts' 2-byte feature indices address"
        )));
    }
    if num_words <= OOV {
        return Err(SimError::Config(format!(
            "num_words {num_words} leaves no room for the out-of-vocabulary index {OOV}: use 3 or more"
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|error| SimError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| parse_line(l, num_words).map_err(|reason| bad(path, i + 1, reason)))
        .collect()
}

fn bad(path: &Path, line: usize, reason: String) -> SimError {
    SimError::BadData {
        path: PathBuf::from(path),
        line,
        reason,
    }
}

fn parse_line(line: &str, num_words: u32) -> Result<Sample, String> {
    let (label, ids) = line
        .split_once('\t')
        .ok_or_else(|| "expected LABEL<TAB>IDS".to_string())?;
    let label = match label.trim() {
        "0" => 0,
        "1" => 1,
        other => return Err(format!("label {other:?} is not 0 or 1")),
    };
    let mut present = Vec::new();
    for tok in ids.split_ascii_whitespace() {
        let id: u32 = tok
            .parse()
            .map_err(|_| format!("word id {tok:?} is not a non-negative integer"))?;
        present.push(if id >= num_words { OOV } else { id });
    }
    present.sort_unstable();
    present.dedup();
    Ok(Sample {
        features: present,
        label,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_rare_ids_to_oov_and_dedups() {
        let s = parse_line("1\t1 14 22 600 14 9", 20).unwrap();
        assert_eq!(s.label, 1);
        assert_eq!(s.features, vec![1, 2, 9, 14]);
    }

    #[test]
    fn bad_lines_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.tsv");
        std::fs::write(&p, "1\t1 2 3\n2\t1 4\n").unwrap();
        let e = load_tsv(&p, 100).unwrap_err().to_string();
        assert!(e.contains("t.tsv:2"), "{e}");
        assert!(e.contains("label \"2\""), "{e}");
        std::fs::write(&p, "0\t1 x\n").unwrap();
        let e = load_tsv(&p, 100).unwrap_err().to_string();
        assert!(e.contains("t.tsv:1") && e.contains("\"x\""), "{e}");
        std::fs::write(&p, "0 1 2\n").unwrap();
        assert!(
            load_tsv(&p, 100)
                .unwrap_err()
                .to_string()
                .contains("LABEL<TAB>IDS")
        );
        assert!(load_tsv(&p, 2).is_err());
    }
}
