//! Labelled bag-of-words samples read from the IMDB TSV files (with `cohort_data::imdb`, the
//! reader the federated IMDB task uses too).
//!
//! A line is `LABEL<TAB>ID ID ID ...`: LABEL is 0 or 1, the IDs are Keras IMDB word indices
//! (1 = start of review, 2 = out of vocabulary, words from 4 by frequency rank). With
//! `num_words` every id of `num_words` or more becomes 2, as Keras' `load_data(num_words=..)`
//! does, and a sample's features are the sorted, distinct ids present: a binary presence
//! vector of length `num_words`, stored sparsely.

use std::path::Path;

use cohort_data::imdb;
pub use cohort_data::imdb::OOV;

use crate::SimError;

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

/// Reads one TSV file with cohort-data's IMDB reader (which refuses a malformed line by file
/// and line), mapping ids of `num_words` or more to [`OOV`]; a sample's features are the
/// review's distinct ids.
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
    Ok(imdb::read(path, num_words)?
        .iter()
        .map(|r| Sample {
            features: r.distinct_ids(),
            label: r.label,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_are_the_distinct_ids_with_rare_ones_out_of_vocabulary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.tsv");
        std::fs::write(&p, "1\t1 14 22 600 14 9\n\n0\t3\n").unwrap();
        let s = load_tsv(&p, 20).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].label, s[0].features.clone()), (1, vec![1, 2, 9, 14]));
        assert_eq!((s[1].label, s[1].features.clone()), (0, vec![3]));
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
        assert!(load_tsv(&p, MAX_NUM_WORDS + 1).is_err());
    }
}
