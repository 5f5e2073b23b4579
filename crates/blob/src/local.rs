//! The local-directory adapter.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use cohort_core::{Hash32, sha256};

use crate::{BlobError, BlobStore, HASH_DIR, blob_rel_path, hash_from_parts, verify};

/// Directory (under the store's root) that holds temporary files while they are written.
const TMP_DIR: &str = "tmp";

/// A blob store in a local directory.
///
/// Layout: `DIR/sha256/ab/abcdef…` holds the blob whose SHA-256 in hex is `abcdef…` (`ab` its
/// first two digits); `DIR/tmp/` holds files being written. A put writes a temporary file in
/// `DIR/tmp/`, flushes it to disk and renames it into place, so a blob's file is either absent
/// or complete, whatever happens to the writer; concurrent puts of the same blob each rename a
/// complete copy of the same bytes. A blob already present is not written again, unless its
/// file no longer matches its name (then the good copy replaces it).
#[derive(Debug)]
pub struct LocalDir {
    root: PathBuf,
    counter: AtomicU64,
}

impl LocalDir {
    /// Opens the store at `root`, creating the directory if it does not exist.
    pub fn open(root: impl AsRef<Path>) -> Result<Self, BlobError> {
        let root = root.as_ref();
        if !root.exists() {
            fs::create_dir_all(root).map_err(|source| BlobError::Io {
                op: "create directory",
                path: root.to_path_buf(),
                source,
            })?;
        }
        Self::open_existing(root)
    }

    /// Opens the store at `root`, which must be an existing directory; creates nothing.
    pub fn open_existing(root: impl AsRef<Path>) -> Result<Self, BlobError> {
        let root = root.as_ref();
        let meta = fs::metadata(root).map_err(|source| BlobError::Io {
            op: "open",
            path: root.to_path_buf(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(BlobError::NotADirectory {
                path: root.to_path_buf(),
            });
        }
        Ok(Self {
            root: root.to_path_buf(),
            counter: AtomicU64::new(0),
        })
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file that holds (or would hold) the blob `hash`.
    pub fn blob_path(&self, hash: &Hash32) -> PathBuf {
        self.root.join(blob_rel_path(hash))
    }

    fn io(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> BlobError {
        let path = path.to_path_buf();
        move |source| BlobError::Io { op, path, source }
    }

    /// The stored file of `hash` if it exists and hashes to it.
    fn is_intact(&self, hash: &Hash32, path: &Path) -> Result<bool, BlobError> {
        match fs::read(path) {
            Ok(bytes) => Ok(sha256(&bytes) == *hash),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(BlobError::Io {
                op: "read",
                path: path.to_path_buf(),
                source,
            }),
        }
    }
}

impl BlobStore for LocalDir {
    fn delete(&self, hash: &Hash32) -> Result<bool, BlobError> {
        let path = self.blob_path(hash);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Self::io("delete", &path)(e)),
        }
    }

    fn put(&self, bytes: &[u8]) -> Result<Hash32, BlobError> {
        if bytes.is_empty() {
            return Err(BlobError::Empty {
                location: self.location(),
            });
        }
        let hash = sha256(bytes);
        let path = self.blob_path(&hash);
        if path.exists() {
            if self.is_intact(&hash, &path)? {
                tracing::debug!(blob = %hash, "blob already stored");
                return Ok(hash);
            }
            tracing::warn!(blob = %hash, path = %path.display(), "stored copy is damaged; replacing it");
        }
        let dir = path.parent().unwrap_or(&self.root);
        fs::create_dir_all(dir).map_err(Self::io("create directory", dir))?;
        let tmp_dir = self.root.join(TMP_DIR);
        fs::create_dir_all(&tmp_dir).map_err(Self::io("create directory", &tmp_dir))?;
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let tmp = tmp_dir.join(format!(
            "{}.{}.{:?}.{n}.tmp",
            hash.to_hex(),
            std::process::id(),
            std::thread::current().id()
        ));
        let written = (|| {
            let mut f = fs::File::create(&tmp).map_err(Self::io("create", &tmp))?;
            f.write_all(bytes).map_err(Self::io("write", &tmp))?;
            f.sync_all().map_err(Self::io("sync", &tmp))?;
            fs::rename(&tmp, &path).map_err(Self::io("rename into place", &path))
        })();
        if written.is_err() {
            // Best effort: a leftover temporary file is harmless (it is never read as a blob).
            let _ = fs::remove_file(&tmp);
        }
        written?;
        tracing::debug!(blob = %hash, bytes = bytes.len(), "blob stored");
        Ok(hash)
    }

    fn get(&self, hash: &Hash32) -> Result<Vec<u8>, BlobError> {
        let path = self.blob_path(hash);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(BlobError::NotFound {
                    hash: *hash,
                    location: self.location(),
                });
            }
            Err(source) => {
                return Err(BlobError::Io {
                    op: "read",
                    path,
                    source,
                });
            }
        };
        verify(hash, &bytes, &self.location())?;
        Ok(bytes)
    }

    fn has(&self, hash: &Hash32) -> Result<bool, BlobError> {
        let path = self.blob_path(hash);
        match fs::metadata(&path) {
            Ok(m) => Ok(m.is_file()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(BlobError::Io {
                op: "stat",
                path,
                source,
            }),
        }
    }

    fn list(&self) -> Result<Vec<Hash32>, BlobError> {
        let base = self.root.join(HASH_DIR);
        let mut out = Vec::new();
        let fans = match fs::read_dir(&base) {
            Ok(it) => it,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(source) => {
                return Err(BlobError::Io {
                    op: "list",
                    path: base,
                    source,
                });
            }
        };
        for fan in fans {
            let fan = fan.map_err(Self::io("list", &base))?;
            let fan_path = fan.path();
            if !fan_path.is_dir() {
                continue;
            }
            let fan_name = fan.file_name().to_string_lossy().into_owned();
            for entry in fs::read_dir(&fan_path).map_err(Self::io("list", &fan_path))? {
                let entry = entry.map_err(Self::io("list", &fan_path))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                match hash_from_parts(&fan_name, &name) {
                    Some(h) if entry.path().is_file() => out.push(h),
                    _ => tracing::debug!(path = %entry.path().display(), "not a blob; skipped"),
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn location(&self) -> String {
        self.root.display().to_string()
    }
}
