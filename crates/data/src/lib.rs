//! Readers of the data sets cohort learns from, one per format, shared by every crate that
//! reads it: the federated IMDB task (`cohort-tasks`) and the economics simulator
//! (`cohort-sim`) read the reviews through [`imdb::read`], so they agree on what a valid file
//! is and refuse a malformed one with the same error, naming the file and the line.
//!
//! This crate only parses: what a task or a simulation makes of the rows (token sequences,
//! bag-of-words features) stays with it. No ML dependency.

pub mod imdb;

use std::path::PathBuf;

/// Why a data file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A line of the file is malformed.
    #[error("{}:{line}: {reason}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The line, from 1.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A reading parameter is out of range (before the file is opened).
    #[error("invalid {what}: {reason}")]
    Parameter {
        /// The parameter.
        what: &'static str,
        /// Why.
        reason: String,
    },
}
