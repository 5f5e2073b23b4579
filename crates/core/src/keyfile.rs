//! Key files: a party's ed25519 signing key on disk.
//!
//! The format is the standard one for ed25519 private keys: PKCS#8 (RFC 5208 / RFC 8410,
//! `OneAsymmetricKey` version 1, the secret only) in PEM, as `openssl genpkey -algorithm
//! ed25519` writes it:
//!
//! ```text
//! -----BEGIN PRIVATE KEY-----
//! MC4CAQAwBQYDK2VwBCIEI...
//! -----END PRIVATE KEY-----
//! ```
//!
//! so a key made by OpenSSL (or any PKCS#8 tool) is a cohort key, and `openssl pkey -in FILE
//! -pubout` prints the public key of one cohort made. A file that also carries the public key
//! (version 2) is read too, and refused if that public key does not belong to the secret.
//!
//! A key file must be readable by its owner only: [`load`] refuses a file whose mode grants
//! group or others any access (`chmod 600 FILE` fixes it), as ssh does with private keys.
//! [`write_new`] creates the file with mode 0600 and never replaces an existing one.

use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, KeypairBytes, spki::der::pem};

use crate::Identity;

/// A key file larger than this is not a key file (a PEM ed25519 key is about 120 bytes).
const MAX_LEN: u64 = 64 * 1024;

/// Why a key file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file could not be opened, read or written.
    #[error("{path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file's permissions let others read it.
    #[error(
        "{path}: the key file is accessible by group or others (mode {mode:04o}); a private key \
         must be readable by its owner only: chmod 600 {path}"
    )]
    Permissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file is not a PEM PKCS#8 ed25519 private key.
    #[error(
        "{path}: not an ed25519 private key in PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`): {reason}"
    )]
    Malformed {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// `write_new` on a path that exists.
    #[error("{0}: already exists; a key file is never overwritten (choose another path)")]
    Exists(PathBuf),
}

impl KeyFileError {
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    fn malformed(path: &Path, reason: impl Into<String>) -> Self {
        Self::Malformed {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}

/// The PEM text of `id`'s secret key (PKCS#8 version 1, LF line endings).
pub fn to_pem(id: &Identity) -> String {
    let bytes = KeypairBytes {
        secret_key: id.secret_bytes(),
        public_key: None,
    };
    // Encoding 32 bytes into a fixed structure cannot fail; if it ever did, the caller would
    // get an empty string and `load` of it a clear error, never a panic here.
    bytes
        .to_pkcs8_pem(pem::LineEnding::LF)
        .map(|s| s.to_string())
        .unwrap_or_default()
}

/// Parses the PEM text of a key file; `path` names it in errors. The identity is named `name`.
pub fn from_pem(path: &Path, name: &str, text: &str) -> Result<Identity, KeyFileError> {
    let text = text.trim();
    if !text.starts_with("-----BEGIN PRIVATE KEY-----") {
        let what = if text.starts_with("-----BEGIN") {
            text.lines().next().unwrap_or_default().to_owned()
        } else if text.is_empty() {
            "the file is empty".to_owned()
        } else {
            "no `-----BEGIN PRIVATE KEY-----` line".to_owned()
        };
        return Err(KeyFileError::malformed(path, what));
    }
    let key = SigningKey::from_pkcs8_pem(text)
        .map_err(|e| KeyFileError::malformed(path, e.to_string()))?;
    Ok(Identity::from_secret(name, key.to_bytes()))
}

/// Loads the key file at `path`, refusing one that group or others can access. The identity
/// is named after the file's stem.
pub fn load(path: &Path) -> Result<Identity, KeyFileError> {
    let meta = std::fs::metadata(path).map_err(KeyFileError::io(path))?;
    if !meta.is_file() {
        return Err(KeyFileError::malformed(path, "not a regular file"));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(KeyFileError::Permissions {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    if meta.len() > MAX_LEN {
        return Err(KeyFileError::malformed(
            path,
            format!("{} bytes, far more than a key", meta.len()),
        ));
    }
    let bytes = std::fs::read(path).map_err(KeyFileError::io(path))?;
    let text = String::from_utf8(bytes).map_err(|_| KeyFileError::malformed(path, "not text"))?;
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "key".to_owned());
    from_pem(path, &name, &text)
}

/// Writes `id`'s key to a new file at `path` with mode 0600 (created exclusively: an existing
/// file is refused, never replaced) and syncs it.
pub fn write_new(path: &Path, id: &Identity) -> Result<(), KeyFileError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            KeyFileError::Exists(path.to_path_buf())
        } else {
            KeyFileError::Io {
                path: path.to_path_buf(),
                source: e,
            }
        }
    })?;
    let written = f
        .write_all(to_pem(id).as_bytes())
        .and_then(|()| f.sync_all());
    if let Err(e) = written {
        drop(f);
        let _ = std::fs::remove_file(path);
        return Err(KeyFileError::Io {
            path: path.to_path_buf(),
            source: e,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Made by `openssl genpkey -algorithm ed25519`; its public key from `openssl pkey -pubout
    /// -outform DER | tail -c 32 | xxd -p -c 32`.
    const OPENSSL_KEY: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIJEM6LkBONwANvA4Zga6YNoiw/tS7X/LYronaG4BHK2W
-----END PRIVATE KEY-----
";
    const OPENSSL_PUBLIC: &str = "e682fcb32507e5b6a24528532c657c3005e8b6cf1d4d4fe8ef0dd4ff0bd8bf81";

    #[test]
    fn a_key_made_by_openssl_is_read_with_its_public_key() {
        let id = from_pem(Path::new("k.pem"), "k", OPENSSL_KEY).unwrap();
        assert_eq!(hex::encode(id.public_key()), OPENSSL_PUBLIC);
        // And written back byte for byte as OpenSSL wrote it.
        assert_eq!(to_pem(&id), OPENSSL_KEY);
    }

    #[test]
    fn round_trip_and_malformed_keys_are_named() {
        let id = Identity::from_seed(1, "a");
        let back = from_pem(Path::new("a.pem"), "a", &to_pem(&id)).unwrap();
        assert_eq!(back.public_key(), id.public_key());
        for (text, needle) in [
            ("", "empty"),
            ("deadbeef", "BEGIN PRIVATE KEY"),
            (
                "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----",
                "PUBLIC KEY",
            ),
            (
                "-----BEGIN PRIVATE KEY-----\n!!!\n-----END PRIVATE KEY-----",
                "PKCS#8",
            ),
        ] {
            let e = from_pem(Path::new("x.pem"), "x", text)
                .unwrap_err()
                .to_string();
            assert!(e.contains("x.pem") && e.contains(needle), "{e}");
        }
    }
}
