//! Content-addressed blob storage for cohort: updates, global models and checkpoints are stored
//! under the SHA-256 of their bytes, and only that hash goes on the ledger.
//!
//! [`BlobStore`] is the port every party uses. Two adapters implement it:
//!
//! - [`LocalDir`], the default: a directory on this machine, laid out as
//!   `DIR/sha256/ab/abcdef…` (the first two hex digits fan the blobs out), written atomically
//!   through a temporary file and a rename;
//! - [`S3Store`], S3-compatible object storage through the `object_store` crate, for parties on
//!   many machines: `s3://bucket/prefix` with the blobs under `prefix/sha256/ab/abcdef…`, and the
//!   credentials, endpoint and region from the usual `AWS_*` environment variables.
//!
//! [`open`] picks the adapter from a location string. It refuses a malformed URL, a missing
//! bucket, an unreachable endpoint or missing or wrong credentials, naming the problem, before
//! any blob is moved: the S3 adapter lists its prefix once when it opens.
//!
//! Every read checks the hash: [`BlobStore::get`] returns the bytes only if they hash to the name
//! asked for, and a mismatch is [`BlobError::Corrupt`], naming the blob, the hash of what was
//! read and the store. Puts are idempotent (the same bytes always land under the same name) and
//! safe to run concurrently from several threads or processes.
//!
//! The API is synchronous, as the node code is. The S3 adapter drives `object_store`'s async
//! client on a small tokio runtime of its own (one worker thread), so it must not be called
//! from inside another tokio runtime; it says so ([`BlobError::InsideAsyncRuntime`]) instead of
//! panicking.
//!
//! # The S3 server in the tests
//!
//! The S3 tests start a real S3 server, `s3s-fs` (an S3 protocol server over a directory), in
//! the test process on a loopback port, and talk to it through the real `object_store` client
//! over a real socket; the tests tamper with objects behind the store's back in the server's
//! directory. `s3s-fs` is a dev-dependency rather than a binary that `.ci/run` installs because
//! it shares tokio, hyper and most of its other dependencies with `object_store`'s client, so it
//! adds far less to CI's cold build than building and installing a separate server binary
//! (`cargo install s3s-fs --features binary` compiles its own copy of the whole stack; Garage is
//! not packaged in Debian and would need a prebuilt download). docs/blobs.md gives the figures
//! and how they were measured.

mod error;
mod http;
mod local;
mod s3;

use std::fmt;
use std::path::Path;

use cohort_core::{Hash32, sha256};

pub use error::BlobError;
pub use local::LocalDir;
pub use s3::S3Store;

/// The directory (local) or key segment (S3) under which blobs are stored, named after the hash.
pub const HASH_DIR: &str = "sha256";

/// A content-addressed store of byte strings, named by their SHA-256.
///
/// Contract for every adapter:
/// - [`put`](Self::put) stores the bytes and returns their SHA-256; storing the same bytes again
///   (also concurrently) is harmless and returns the same hash; an empty blob is refused;
/// - [`get`](Self::get) returns the bytes only if they hash to `hash`, else
///   [`BlobError::Corrupt`]; an absent blob is [`BlobError::NotFound`];
/// - the calls block; none panics on any input or stored content.
pub trait BlobStore: Send + Sync + fmt::Debug {
    /// Stores `bytes` and returns their SHA-256.
    fn put(&self, bytes: &[u8]) -> Result<Hash32, BlobError>;

    /// The bytes of the blob named `hash`, checked against it.
    fn get(&self, hash: &Hash32) -> Result<Vec<u8>, BlobError>;

    /// Whether a blob named `hash` is stored (its content is not checked: [`get`](Self::get)
    /// does that).
    fn has(&self, hash: &Hash32) -> Result<bool, BlobError>;

    /// The names of every stored blob, sorted. Objects in the store's space whose names are not
    /// blob names (temporary files, foreign objects) are skipped.
    fn list(&self) -> Result<Vec<Hash32>, BlobError>;

    /// Where the store is, for messages: a directory or an `s3://` URL.
    fn location(&self) -> String;

    /// Removes the blob named `hash`; whether it was there. What unlearning uses to delete a
    /// forgotten client's updates (the ledger records that it was done).
    fn delete(&self, hash: &Hash32) -> Result<bool, BlobError>;
}

/// Opens the store at `spec`: an `s3://bucket[/prefix]` URL ([`S3Store`], configured from the
/// process environment) or a directory path, optionally as `file://PATH` ([`LocalDir`], created
/// if missing). Every problem that can be found before moving a blob is reported here.
pub fn open(spec: &str) -> Result<Box<dyn BlobStore>, BlobError> {
    match scheme_of(spec)? {
        Scheme::S3 => Ok(Box::new(S3Store::open(spec)?)),
        Scheme::File(path) => Ok(Box::new(LocalDir::open(path)?)),
    }
}

/// Like [`open`], but a local directory must exist already: for readers, which never create
/// anything.
pub fn open_existing(spec: &str) -> Result<Box<dyn BlobStore>, BlobError> {
    match scheme_of(spec)? {
        Scheme::S3 => Ok(Box::new(S3Store::open(spec)?)),
        Scheme::File(path) => Ok(Box::new(LocalDir::open_existing(path)?)),
    }
}

enum Scheme<'a> {
    S3,
    File(&'a Path),
}

fn scheme_of(spec: &str) -> Result<Scheme<'_>, BlobError> {
    let bad = |reason: &str| BlobError::BadLocation {
        spec: shorten(spec),
        reason: reason.to_string(),
    };
    if spec.trim().is_empty() {
        return Err(bad(
            "empty location: give a directory or an s3://bucket/prefix URL",
        ));
    }
    if spec.starts_with("s3://") {
        return Ok(Scheme::S3);
    }
    if let Some(path) = spec.strip_prefix("file://") {
        if path.is_empty() {
            return Err(bad("file:// URL without a path"));
        }
        return Ok(Scheme::File(Path::new(path)));
    }
    if let Some((scheme, _)) = spec.split_once("://") {
        return Err(bad(&format!(
            "unsupported scheme `{}`: use s3://bucket/prefix, file://PATH or a plain path",
            shorten(scheme)
        )));
    }
    Ok(Scheme::File(Path::new(spec)))
}

/// Parses a blob name (64 hex digits, an optional `0x` prefix) into its hash.
pub fn parse_blob_hash(input: &str) -> Result<Hash32, BlobError> {
    let s = input.strip_prefix("0x").unwrap_or(input);
    if s.len() != 64 {
        return Err(BlobError::BadHash {
            input: shorten(input),
            reason: format!(
                "expected 64 hex digits, got {} characters",
                s.chars().count()
            ),
        });
    }
    s.parse()
        .map_err(|e: cohort_core::CoreError| BlobError::BadHash {
            input: shorten(input),
            reason: e.to_string(),
        })
}

/// Checks that `bytes` hash to `hash`.
pub(crate) fn verify(hash: &Hash32, bytes: &[u8], location: &str) -> Result<(), BlobError> {
    let actual = sha256(bytes);
    if actual == *hash {
        Ok(())
    } else {
        Err(BlobError::Corrupt {
            hash: *hash,
            actual,
            len: bytes.len() as u64,
            location: location.to_string(),
        })
    }
}

/// The relative name of a blob: `sha256/ab/abcdef…`.
pub(crate) fn blob_rel_path(hash: &Hash32) -> String {
    let hex = hash.to_hex();
    format!("{HASH_DIR}/{}/{hex}", &hex[..2])
}

/// The blob named by the last two components of a stored name (`ab/abcdef…`), if they are one.
pub(crate) fn hash_from_parts(fan: &str, name: &str) -> Option<Hash32> {
    if name.len() != 64 || !name.starts_with(fan) || fan.len() != 2 {
        return None;
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    name.parse().ok()
}

/// At most 200 characters of `s`, for messages about untrusted input.
pub(crate) fn shorten(s: &str) -> String {
    const MAX: usize = 200;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        let head: String = s.chars().take(MAX).collect();
        format!("{head}… ({} characters)", s.chars().count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_names_fan_out_by_the_first_byte() {
        let h = sha256(b"abc");
        assert_eq!(
            blob_rel_path(&h),
            "sha256/ba/ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let hex = h.to_hex();
        assert_eq!(hash_from_parts(&hex[..2], &hex), Some(h));
        assert_eq!(hash_from_parts("00", &hex), None);
        assert_eq!(hash_from_parts(&hex[..2], &hex.to_uppercase()), None);
        assert_eq!(hash_from_parts(&hex[..2], &hex[..63]), None);
    }

    #[test]
    fn garbage_hashes_are_named() {
        for bad in [
            "",
            "xyz",
            &"g".repeat(64),
            &"a".repeat(63),
            &"a".repeat(100_000),
            "0x",
        ] {
            let e = parse_blob_hash(bad).expect_err(bad);
            assert!(matches!(e, BlobError::BadHash { .. }), "{e}");
            assert!(
                e.to_string().len() < 400,
                "message not shortened: {}",
                e.to_string().len()
            );
        }
        let h = sha256(b"x");
        assert_eq!(parse_blob_hash(&h.to_hex()).ok(), Some(h));
        assert_eq!(parse_blob_hash(&format!("0x{}", h.to_hex())).ok(), Some(h));
    }

    #[test]
    fn unknown_schemes_and_empty_locations_are_refused() {
        for bad in ["", "  ", "gs://bucket/x", "http://host/bucket", "file://"] {
            let e = open(bad).expect_err(bad);
            assert!(matches!(e, BlobError::BadLocation { .. }), "{bad}: {e}");
        }
    }
}
