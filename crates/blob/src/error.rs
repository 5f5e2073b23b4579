use std::path::PathBuf;

use cohort_core::Hash32;

/// Everything that can go wrong opening a blob store or moving a blob through it. Each variant
/// names the blob, the store location or the setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The store location (a path or an `s3://` URL) is malformed.
    #[error("blob store `{spec}`: {reason}")]
    BadLocation {
        /// The location as given.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An S3 store was asked for without credentials in the environment.
    #[error("blob store `{url}`: no credentials: {reason}")]
    MissingCredentials {
        /// The store URL.
        url: String,
        /// Which variables are missing.
        reason: String,
    },
    /// The S3 settings (environment variables) are inconsistent or invalid.
    #[error("blob store `{url}`: {reason}")]
    BadConfig {
        /// The store URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The endpoint answered that the bucket does not exist.
    #[error("blob store `{url}`: bucket `{bucket}` does not exist at {endpoint}: {detail}")]
    BucketMissing {
        /// The store URL.
        url: String,
        /// The bucket.
        bucket: String,
        /// The endpoint asked.
        endpoint: String,
        /// The endpoint's answer.
        detail: String,
    },
    /// The endpoint refused the credentials or their permissions.
    #[error(
        "blob store `{url}`: access denied at {endpoint} (check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY): {detail}"
    )]
    AccessDenied {
        /// The store URL.
        url: String,
        /// The endpoint asked.
        endpoint: String,
        /// The endpoint's answer.
        detail: String,
    },
    /// The endpoint could not be reached or did not answer as an S3 server.
    #[error("blob store `{url}`: endpoint {endpoint} unreachable: {detail}")]
    Unreachable {
        /// The store URL.
        url: String,
        /// The endpoint tried.
        endpoint: String,
        /// The transport's error.
        detail: String,
    },
    /// A local store path exists and is not a directory.
    #[error("blob store `{}`: not a directory", path.display())]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// A file system operation of the local store failed.
    #[error("blob store: {op} `{}`: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A zero-length blob was offered: no update, model or checkpoint is empty, and an empty
    /// object is the usual sign of a truncated write, so the store refuses it.
    #[error("blob store `{location}`: refusing to store an empty (zero-length) blob")]
    Empty {
        /// The store.
        location: String,
    },
    /// No blob with this hash is in the store.
    #[error("blob {hash} not found in `{location}`")]
    NotFound {
        /// The blob asked for.
        hash: Hash32,
        /// The store.
        location: String,
    },
    /// The bytes read back do not hash to the blob's name: the object was altered or damaged.
    #[error("blob {hash} in `{location}` is corrupt: its {len} bytes hash to {actual}")]
    Corrupt {
        /// The blob asked for (the hash its bytes must have).
        hash: Hash32,
        /// The hash of the bytes actually read.
        actual: Hash32,
        /// Bytes read.
        len: u64,
        /// The store.
        location: String,
    },
    /// A blob name is not a SHA-256 hash in hex.
    #[error("`{input}` is not a blob hash: {reason}")]
    BadHash {
        /// The text given (shortened when long).
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The S3 backend failed an operation on a blob.
    #[error("blob store `{location}`: {op} {key}: {source}")]
    Backend {
        /// What was being done.
        op: &'static str,
        /// The object key.
        key: String,
        /// The store.
        location: String,
        /// object_store's error (boxed: it is large).
        #[source]
        source: Box<object_store::Error>,
    },
    /// The synchronous S3 adapter was called from inside an async (tokio) runtime, where it
    /// cannot block; call it from a plain thread or `spawn_blocking`.
    #[error(
        "blob store `{location}`: called from inside an async runtime; call it from a plain thread or spawn_blocking"
    )]
    InsideAsyncRuntime {
        /// The store.
        location: String,
    },
    /// The S3 adapter's internal runtime could not be started.
    #[error("blob store: cannot start the S3 client's runtime: {0}")]
    Runtime(#[source] std::io::Error),
}
