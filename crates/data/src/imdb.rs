//! The IMDB movie reviews as Keras encodes them, one review a line.
//!
//! A line is `LABEL<TAB>ID ID ID ...`: LABEL is `0` (negative) or `1` (positive); the IDs are
//! Keras IMDB word indices (1 = start of review, 2 = out of vocabulary, words from 4 by
//! frequency rank), separated by spaces. Blank lines are skipped. With `num_words`, every id of
//! `num_words` or more becomes [`OOV`], as Keras' `load_data(num_words=..)` does. A line
//! without a tab, a label other than 0 or 1, an id that is not a non-negative 32-bit integer or
//! a review without ids is refused, naming the file and the line; nothing is returned from a
//! file with a malformed line.

use std::path::Path;

use crate::DataError;

/// Keras' out-of-vocabulary index.
pub const OOV: u32 = 2;

/// One labelled review.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Review {
    /// 0 (negative) or 1 (positive).
    pub label: u8,
    /// The word ids in order, each below `num_words` (rarer words are [`OOV`]); never empty.
    pub ids: Vec<u32>,
}

impl Review {
    /// The sorted, distinct ids: the review as a binary presence vector over `num_words`
    /// features, stored sparsely.
    pub fn distinct_ids(&self) -> Vec<u32> {
        let mut v = self.ids.clone();
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// Reads the reviews of `path`, in file order, mapping ids of `num_words` or more to [`OOV`].
/// `num_words` must leave room for a word: 3 or more.
pub fn read(path: &Path, num_words: u32) -> Result<Vec<Review>, DataError> {
    if num_words <= OOV {
        return Err(DataError::Parameter {
            what: "num_words",
            reason: format!(
                "{num_words} leaves no room for a word beside the out-of-vocabulary index {OOV}: \
                 use 3 or more"
            ),
        });
    }
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_text(&text, num_words, path)
}

/// The reviews of `text`, already read from `path` (named in errors), as [`read`] gives them.
pub fn parse_text(text: &str, num_words: u32, path: &Path) -> Result<Vec<Review>, DataError> {
    if num_words <= OOV {
        return Err(DataError::Parameter {
            what: "num_words",
            reason: format!(
                "{num_words} leaves no room for a word beside the out-of-vocabulary index {OOV}: \
                 use 3 or more"
            ),
        });
    }
    parse(text, num_words).map_err(|(line, reason)| DataError::Malformed {
        path: path.to_path_buf(),
        line,
        reason,
    })
}

/// The reviews of `text`; on a malformed line, its number (from 1) and what is wrong.
fn parse(text: &str, num_words: u32) -> Result<Vec<Review>, (usize, String)> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| parse_line(l, num_words).map_err(|reason| (i + 1, reason)))
        .collect()
}

fn parse_line(line: &str, num_words: u32) -> Result<Review, String> {
    let (label, ids) = line
        .split_once('\t')
        .ok_or_else(|| "expected LABEL<TAB>IDS".to_string())?;
    let label = match label.trim() {
        "0" => 0,
        "1" => 1,
        other => return Err(format!("label {other:?} is not 0 or 1")),
    };
    let ids = ids
        .split_ascii_whitespace()
        .map(|tok| {
            tok.parse::<u32>()
                .map(|id| if id >= num_words { OOV } else { id })
                .map_err(|_| format!("word id {tok:?} is not a non-negative 32-bit integer"))
        })
        .collect::<Result<Vec<u32>, String>>()?;
    if ids.is_empty() {
        return Err("a review without word ids".into());
    }
    Ok(Review { label, ids })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn maps_rare_ids_to_oov_and_keeps_the_order() {
        let r = parse_line("1\t1 14 20 600 14 19", 20).unwrap();
        assert_eq!(r.label, 1);
        assert_eq!(r.ids, [1, 14, 2, 2, 14, 19]);
        assert_eq!(r.distinct_ids(), [1, 2, 14, 19]);
        let r = parse_line(" 0 \t5   6\t7 ", 100).unwrap();
        assert_eq!((r.label, r.ids), (0, vec![5, 6, 7]));
    }

    #[test]
    fn the_shared_data_reads_as_its_readme_says() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/data/imdb/test.tsv"
        ));
        let reviews = read(path, 100).unwrap();
        assert_eq!(reviews.len(), 1000);
        assert_eq!(reviews.iter().filter(|r| r.label == 1).count(), 474);
        assert!(reviews.iter().all(|r| r.ids.iter().all(|&i| i < 100)));
        assert!(
            reviews.iter().all(|r| r.ids[0] == 1),
            "reviews start with 1"
        );
    }

    /// Every malformed line is refused with the file, the line and the reason; blank lines
    /// are skipped (and still counted).
    #[test]
    fn malformed_lines_are_refused_by_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.tsv");
        let cases = [
            ("1\t1 2 3\n2\t1 4\n", "t.tsv:2: label \"2\" is not 0 or 1"),
            (
                "1\t1 2 3\n\n-1\t1 4\n",
                "t.tsv:3: label \"-1\" is not 0 or 1",
            ),
            ("0\t1 x\n", "t.tsv:1: word id \"x\" is not"),
            ("0\t1 -4\n", "t.tsv:1: word id \"-4\" is not"),
            (
                "0\t1 4294967296\n",
                "t.tsv:1: word id \"4294967296\" is not",
            ),
            ("0\t1 NaN\n", "t.tsv:1: word id \"NaN\" is not"),
            ("0 1 2\n", "t.tsv:1: expected LABEL<TAB>IDS"),
            ("1\t1 2\n0\t  \n", "t.tsv:2: a review without word ids"),
            ("\t1 2\n", "t.tsv:1: label \"\" is not 0 or 1"),
        ];
        for (text, want) in cases {
            std::fs::write(&p, text).unwrap();
            let e = read(&p, 100).unwrap_err().to_string();
            assert!(e.ends_with(want) || e.contains(want), "{text:?}: {e}");
            assert!(e.contains(&p.display().to_string()), "{e}");
        }
        std::fs::write(&p, "\n1\t1 2\n\n").unwrap();
        assert_eq!(read(&p, 100).unwrap().len(), 1);
        std::fs::write(&p, [0xff, b'\t', b'1', b'\n']).unwrap();
        let e = read(&p, 100).unwrap_err().to_string();
        assert!(e.starts_with("cannot read") && e.contains("t.tsv"), "{e}");
    }

    #[test]
    fn missing_files_and_bad_num_words_are_refused() {
        let e = read(Path::new("/nonexistent/train.tsv"), 100)
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/train.tsv"), "{e}");
        for n in [0, 1, 2] {
            let e = read(Path::new("/nonexistent"), n).unwrap_err();
            assert!(
                matches!(
                    e,
                    DataError::Parameter {
                        what: "num_words",
                        ..
                    }
                ),
                "{e}"
            );
        }
        assert!(read(Path::new("/nonexistent"), 3).is_err());
    }
}
