//! The S3 adapter, over `object_store`.

use std::time::Duration;

use cohort_core::{Hash32, sha256};
use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as ObjPath;
use object_store::{
    BackoffConfig, ClientConfigKey, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
};

use crate::http::Connector;
use crate::{BlobError, BlobStore, HASH_DIR, blob_rel_path, hash_from_parts, shorten, verify};

/// Longest a TCP connection to the endpoint may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest one request may take, response included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// Longest prefix accepted: S3 keys are at most 1024 bytes, and a blob's name under the prefix
/// (`/sha256/ab/` and 64 hex digits) takes 75.
pub const MAX_PREFIX_BYTES: usize = 1024 - 75;

/// A blob store in an S3 bucket (AWS S3 or any S3-compatible server: MinIO, Garage, Ceph, R2,
/// s3s), through the `object_store` crate.
///
/// Opened from `s3://bucket[/prefix]`; blobs are stored as `prefix/sha256/ab/abcdef…`. The
/// settings come from `AWS_*` environment variables (docs/blobs.md lists them): credentials
/// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`), the endpoint
/// `AWS_ENDPOINT_URL` (or `AWS_ENDPOINT`, `AWS_ENDPOINT_URL_S3`) for a server other than AWS,
/// `AWS_REGION` (default `us-east-1`), `AWS_ALLOW_HTTP=true` for a plain-HTTP endpoint,
/// `AWS_CA_BUNDLE` for a PEM file of CA certificates to trust beside the system's (an
/// S3-compatible server with a private CA). The HTTP client is hyper with rustls on *ring*
/// (src/http.rs).
///
/// A put first asks whether the object exists (with the blob's size) and uploads only if not;
/// an S3 PUT replaces an object atomically, so concurrent puts of the same blob are harmless.
/// Blobs travel in one request each (S3 takes up to 5 GiB so).
#[derive(Debug)]
pub struct S3Store {
    store: AmazonS3,
    prefix: ObjPath,
    url: String,
    runtime: Option<tokio::runtime::Runtime>,
}

impl S3Store {
    /// Opens `url` (`s3://bucket[/prefix]`) with the settings of the process environment.
    pub fn open(url: &str) -> Result<Self, BlobError> {
        Self::open_with_env(url, std::env::vars())
    }

    /// Opens `url` with the settings in `env` (name, value pairs as in the environment; names
    /// that do not start with `AWS_` are ignored) instead of the process environment.
    ///
    /// Checks, before any blob moves: the URL's form, the bucket's name, the prefix, the
    /// credentials and the endpoint's form; then lists the prefix once, so that a missing
    /// bucket, refused credentials or an unreachable endpoint are reported here.
    pub fn open_with_env(
        url: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, BlobError> {
        let (bucket, prefix) = parse_s3_url(url)?;
        let url = shorten(url);
        let env: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("AWS_"))
            .collect();
        let var = |name: &str| {
            env.iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
                .filter(|v| !v.is_empty())
        };
        check_credentials(&url, &var)?;
        let endpoint = check_endpoint(&url, &var)?;

        let tls = crate::http::tls_config(var("AWS_CA_BUNDLE"), endpoint.starts_with("https://"))
            .map_err(|reason| BlobError::BadConfig {
            url: url.clone(),
            reason,
        })?;
        // Short connection timeouts and few retries: a dead endpoint is reported in seconds.
        let connector = Connector::new(tls, CONNECT_TIMEOUT, REQUEST_TIMEOUT);
        let retry = RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: 3,
            retry_timeout: Duration::from_secs(60),
        };
        let mut builder = AmazonS3Builder::new()
            .with_http_connector(connector)
            .with_retry(retry);
        for (k, v) in &env {
            // Names object_store does not know are not settings of ours either.
            if let Ok(key) = k.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
                builder = builder.with_config(key, v);
            }
        }
        check_client_settings(&url, &env)?;
        let store =
            builder
                .with_bucket_name(&bucket)
                .build()
                .map_err(|e| BlobError::BadConfig {
                    url: url.clone(),
                    reason: e.to_string(),
                })?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("cohort-blob-s3")
            .enable_all()
            .build()
            .map_err(BlobError::Runtime)?;
        let this = Self {
            store,
            prefix,
            url,
            runtime: Some(runtime),
        };
        this.probe(&bucket, &endpoint)?;
        tracing::debug!(url = %this.url, endpoint = %endpoint, "S3 blob store opened");
        Ok(this)
    }

    /// Lists the prefix once; classifies a failure.
    fn probe(&self, bucket: &str, endpoint: &str) -> Result<(), BlobError> {
        let prefix = (!self.prefix.as_ref().is_empty()).then_some(&self.prefix);
        let result = self.block_on(self.store.list_with_delimiter(prefix))?;
        let Err(e) = result else { return Ok(()) };
        let detail = e.to_string();
        let url = self.url.clone();
        let endpoint = endpoint.to_string();
        Err(match e {
            _ if detail.contains("NoSuchBucket") => BlobError::BucketMissing {
                url,
                bucket: bucket.to_string(),
                endpoint,
                detail,
            },
            object_store::Error::NotFound { .. } => BlobError::BucketMissing {
                url,
                bucket: bucket.to_string(),
                endpoint,
                detail,
            },
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => BlobError::AccessDenied {
                url,
                endpoint,
                detail,
            },
            _ if says_denied(&detail) => BlobError::AccessDenied {
                url,
                endpoint,
                detail,
            },
            _ => BlobError::Unreachable {
                url,
                endpoint,
                detail,
            },
        })
    }

    /// Runs `fut` on the adapter's runtime; refuses to when called from inside a runtime.
    fn block_on<F: Future>(&self, fut: F) -> Result<F::Output, BlobError> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(BlobError::InsideAsyncRuntime {
                location: self.url.clone(),
            });
        }
        match &self.runtime {
            Some(rt) => Ok(rt.block_on(fut)),
            None => Err(BlobError::Runtime(std::io::Error::other(
                "the runtime was shut down",
            ))),
        }
    }

    /// The object key of a blob.
    pub fn key_of(&self, hash: &Hash32) -> String {
        self.path_of(hash).to_string()
    }

    fn path_of(&self, hash: &Hash32) -> ObjPath {
        let rel = blob_rel_path(hash);
        let prefix = self.prefix.as_ref();
        if prefix.is_empty() {
            ObjPath::from(rel)
        } else {
            ObjPath::from(format!("{prefix}/{rel}"))
        }
    }

    fn backend(&self, op: &'static str, path: &ObjPath, source: object_store::Error) -> BlobError {
        BlobError::Backend {
            op,
            key: path.to_string(),
            location: self.url.clone(),
            source: Box::new(source),
        }
    }
}

impl Drop for S3Store {
    fn drop(&mut self) {
        // Never blocks, so dropping the store inside an async context cannot panic.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl BlobStore for S3Store {
    fn delete(&self, hash: &Hash32) -> Result<bool, BlobError> {
        if !self.has(hash)? {
            return Ok(false);
        }
        let path = self.path_of(hash);
        match self.block_on(self.store.delete(&path))? {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(true),
            Err(e) => Err(self.backend("delete", &path, e)),
        }
    }

    fn put(&self, bytes: &[u8]) -> Result<Hash32, BlobError> {
        if bytes.is_empty() {
            return Err(BlobError::Empty {
                location: self.location(),
            });
        }
        let hash = sha256(bytes);
        let path = self.path_of(&hash);
        match self.block_on(self.store.head(&path))? {
            Ok(meta) if meta.size == bytes.len() as u64 => {
                tracing::debug!(blob = %hash, "blob already stored");
                return Ok(hash);
            }
            Ok(_) => {
                tracing::warn!(blob = %hash, key = %path, "stored copy has the wrong size; replacing it")
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(self.backend("head", &path, e)),
        }
        let payload = PutPayload::from(bytes::Bytes::copy_from_slice(bytes));
        self.block_on(self.store.put(&path, payload))?
            .map_err(|e| self.backend("put", &path, e))?;
        tracing::debug!(blob = %hash, bytes = bytes.len(), "blob stored");
        Ok(hash)
    }

    fn get(&self, hash: &Hash32) -> Result<Vec<u8>, BlobError> {
        let path = self.path_of(hash);
        let bytes = self.block_on(async {
            match self.store.get(&path).await {
                Ok(r) => r.bytes().await,
                Err(e) => Err(e),
            }
        })?;
        let bytes = match bytes {
            Ok(b) => b,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(BlobError::NotFound {
                    hash: *hash,
                    location: self.location(),
                });
            }
            Err(e) => return Err(self.backend("get", &path, e)),
        };
        verify(hash, &bytes, &self.location())?;
        Ok(bytes.to_vec())
    }

    fn has(&self, hash: &Hash32) -> Result<bool, BlobError> {
        let path = self.path_of(hash);
        match self.block_on(self.store.head(&path))? {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.backend("head", &path, e)),
        }
    }

    fn list(&self) -> Result<Vec<Hash32>, BlobError> {
        let base = if self.prefix.as_ref().is_empty() {
            ObjPath::from(HASH_DIR)
        } else {
            self.prefix.clone().join(HASH_DIR)
        };
        let metas: Vec<_> = self
            .block_on(self.store.list(Some(&base)).try_collect::<Vec<_>>())?
            .map_err(|e| self.backend("list", &base, e))?;
        let mut out: Vec<Hash32> = metas
            .iter()
            .filter_map(|m| {
                let parts: Vec<String> =
                    m.location.parts().map(|p| p.as_ref().to_string()).collect();
                let n = parts.len();
                let h = (n >= 2)
                    .then(|| hash_from_parts(&parts[n - 2], &parts[n - 1]))
                    .flatten();
                if h.is_none() {
                    tracing::debug!(key = %m.location, "not a blob; skipped");
                }
                h
            })
            .collect();
        out.sort();
        Ok(out)
    }

    fn location(&self) -> String {
        self.url.clone()
    }
}

/// Splits `s3://bucket[/prefix]` into the bucket and the prefix, checking both.
fn parse_s3_url(url: &str) -> Result<(String, ObjPath), BlobError> {
    let bad = |reason: String| BlobError::BadLocation {
        spec: shorten(url),
        reason,
    };
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| bad("an S3 location is s3://bucket[/prefix]".to_string()))?;
    if let Some(c) = rest
        .chars()
        .find(|c| matches!(c, '?' | '#' | '\\') || c.is_control())
    {
        return Err(bad(format!(
            "character {c:?} is not allowed in an s3:// URL"
        )));
    }
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(bad(
            "no bucket: an S3 location is s3://bucket[/prefix]".to_string()
        ));
    }
    check_bucket_name(bucket).map_err(|r| bad(format!("bucket `{}`: {r}", shorten(bucket))))?;
    let prefix = prefix.trim_end_matches('/');
    if prefix.len() > MAX_PREFIX_BYTES {
        return Err(bad(format!(
            "prefix of {} bytes: at most {MAX_PREFIX_BYTES} (S3 keys are at most 1024 bytes)",
            prefix.len()
        )));
    }
    let prefix = if prefix.is_empty() {
        ObjPath::default()
    } else {
        ObjPath::parse(prefix).map_err(|e| bad(format!("prefix: {e}")))?
    };
    if prefix.parts().any(|p| matches!(p.as_ref(), "." | "..")) {
        return Err(bad("prefix: `.` and `..` are not allowed".to_string()));
    }
    Ok((bucket.to_string(), prefix))
}

/// S3's bucket naming rules: 3 to 63 characters, lower-case letters, digits, dots and hyphens,
/// beginning and ending with a letter or digit.
fn check_bucket_name(b: &str) -> Result<(), String> {
    if !(3..=63).contains(&b.len()) {
        return Err(format!(
            "{} characters; a bucket name has 3 to 63",
            b.chars().count()
        ));
    }
    if let Some(c) = b
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-')))
    {
        return Err(format!(
            "character {c:?}; a bucket name has lower-case letters, digits, dots and hyphens"
        ));
    }
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !edge_ok(b.chars().next()) || !edge_ok(b.chars().last()) {
        return Err("a bucket name begins and ends with a letter or digit".to_string());
    }
    Ok(())
}

/// Refuses a configuration without any source of credentials, naming the variables.
fn check_credentials<'a>(
    url: &str,
    var: &impl Fn(&str) -> Option<&'a str>,
) -> Result<(), BlobError> {
    let missing = |reason: &str| BlobError::MissingCredentials {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
        (Some(_), Some(_)) => return Ok(()),
        (Some(_), None) => {
            return Err(missing(
                "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not",
            ));
        }
        (None, Some(_)) => {
            return Err(missing(
                "AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not",
            ));
        }
        (None, None) => {}
    }
    let other_source = (var("AWS_WEB_IDENTITY_TOKEN_FILE").is_some()
        && var("AWS_ROLE_ARN").is_some())
        || var("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI").is_some()
        || var("AWS_CONTAINER_CREDENTIALS_FULL_URI").is_some()
        || var("AWS_SKIP_SIGNATURE").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if other_source {
        Ok(())
    } else {
        Err(missing(
            "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_WEB_IDENTITY_TOKEN_FILE with AWS_ROLE_ARN, container credentials, or AWS_SKIP_SIGNATURE=true for a public bucket)",
        ))
    }
}

/// Refuses the `AWS_*` variables that `object_store` reads as settings of its own HTTP client
/// (`AWS_TIMEOUT`, `AWS_PROXY_URL`, `AWS_ALLOW_INVALID_CERTIFICATES`, ...): this adapter brings
/// its own client (src/http.rs), which does not implement them, and a setting is implemented or
/// refused, never ignored. `AWS_ALLOW_HTTP` is [`check_endpoint`]'s.
fn check_client_settings(url: &str, env: &[(String, String)]) -> Result<(), BlobError> {
    for (k, _) in env {
        if let Ok(AmazonS3ConfigKey::Client(c)) = k.to_ascii_lowercase().parse()
            && c != ClientConfigKey::AllowHttp
        {
            return Err(BlobError::BadConfig {
                url: url.to_string(),
                reason: format!(
                    "{k} is an HTTP client setting that cohort's S3 client does not implement \
                     (it has fixed timeouts, {}s to connect and {}s per request, no proxy, and \
                     always checks certificates; AWS_CA_BUNDLE adds a CA): unset it",
                    CONNECT_TIMEOUT.as_secs(),
                    REQUEST_TIMEOUT.as_secs()
                ),
            });
        }
    }
    Ok(())
}

/// The endpoint in use, for messages; refuses a malformed one or plain HTTP without
/// `AWS_ALLOW_HTTP=true`.
fn check_endpoint<'a>(
    url: &str,
    var: &impl Fn(&str) -> Option<&'a str>,
) -> Result<String, BlobError> {
    let named = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"]
        .into_iter()
        .find_map(|n| var(n).map(|v| (n, v)));
    let Some((name, endpoint)) = named else {
        let region = var("AWS_REGION")
            .or_else(|| var("AWS_DEFAULT_REGION"))
            .unwrap_or("us-east-1");
        return Ok(format!("https://s3.{region}.amazonaws.com"));
    };
    let bad = |reason: String| BlobError::BadConfig {
        url: url.to_string(),
        reason,
    };
    let rest = if let Some(r) = endpoint.strip_prefix("https://") {
        r
    } else if let Some(r) = endpoint.strip_prefix("http://") {
        if !var("AWS_ALLOW_HTTP").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Err(bad(format!(
                "{name}={} is plain HTTP: set AWS_ALLOW_HTTP=true to allow it (only for a trusted network)",
                shorten(endpoint)
            )));
        }
        r
    } else {
        return Err(bad(format!(
            "{name}={} is not an http:// or https:// URL",
            shorten(endpoint)
        )));
    };
    if rest.is_empty()
        || rest.starts_with('/')
        || rest.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(bad(format!(
            "{name}={} has no valid host",
            shorten(endpoint)
        )));
    }
    Ok(endpoint.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_bucket_and_prefix() {
        let (b, p) = parse_s3_url("s3://my-bucket/runs/a/").expect("valid");
        assert_eq!((b.as_str(), p.as_ref()), ("my-bucket", "runs/a"));
        let (b, p) = parse_s3_url("s3://my.bucket-2").expect("valid");
        assert_eq!((b.as_str(), p.as_ref()), ("my.bucket-2", ""));
    }

    #[test]
    fn malformed_urls_are_named() {
        let long = format!("s3://bucket/{}", "p".repeat(MAX_PREFIX_BYTES + 1));
        let cases: &[(&str, &str)] = &[
            ("s3://", "no bucket"),
            ("s3:///prefix", "no bucket"),
            ("s3://ab", "3 to 63"),
            ("s3://My_Bucket", "character"),
            ("s3://-bucket", "begins and ends"),
            ("s3://bucket/a//b", "prefix"),
            ("s3://bucket/a/../b", "prefix"),
            ("s3://bucket/a?x=1", "not allowed"),
            ("s3://bucket/a\nb", "not allowed"),
            (&long, "at most"),
        ];
        for (url, want) in cases {
            let e = parse_s3_url(url).expect_err(url);
            let msg = e.to_string();
            assert!(matches!(e, BlobError::BadLocation { .. }), "{url}: {msg}");
            assert!(msg.contains(want), "{url}: {msg} lacks {want}");
        }
    }

    #[test]
    fn credentials_and_endpoint_are_checked_before_any_request() {
        let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let e = S3Store::open_with_env("s3://bucket", env(&[])).expect_err("no credentials");
        assert!(matches!(e, BlobError::MissingCredentials { .. }), "{e}");
        assert!(e.to_string().contains("AWS_ACCESS_KEY_ID"), "{e}");
        let e = S3Store::open_with_env("s3://bucket", env(&[("AWS_ACCESS_KEY_ID", "k")]))
            .expect_err("half the credentials");
        assert!(
            e.to_string().contains("AWS_SECRET_ACCESS_KEY is not"),
            "{e}"
        );
        let creds = [("AWS_ACCESS_KEY_ID", "k"), ("AWS_SECRET_ACCESS_KEY", "s")];
        for (endpoint, want) in [
            ("http://127.0.0.1:9", "AWS_ALLOW_HTTP"),
            ("ftp://host", "not an http"),
            ("https://", "no valid host"),
        ] {
            let mut vars = env(&creds);
            vars.push(("AWS_ENDPOINT_URL".into(), endpoint.into()));
            let e = S3Store::open_with_env("s3://bucket", vars).expect_err(endpoint);
            assert!(matches!(e, BlobError::BadConfig { .. }), "{endpoint}: {e}");
            assert!(e.to_string().contains(want), "{endpoint}: {e}");
        }
        // object_store's HTTP client settings: refused by name, not ignored.
        for name in [
            "AWS_TIMEOUT",
            "AWS_PROXY_URL",
            "AWS_ALLOW_INVALID_CERTIFICATES",
            "AWS_CONNECT_TIMEOUT",
        ] {
            let mut vars = env(&creds);
            vars.push(("AWS_ENDPOINT_URL".into(), "https://127.0.0.1:9".into()));
            vars.push((name.into(), "1".into()));
            let e = S3Store::open_with_env("s3://bucket", vars).expect_err(name);
            assert!(matches!(e, BlobError::BadConfig { .. }), "{name}: {e}");
            assert!(e.to_string().contains(name), "{name}: {e}");
        }
    }
}

/// Whether an S3 error's text says the credentials were refused: one of S3's error codes for
/// it, or the status 403 as a word of its own (not the digits of a duration such as
/// "462.644036ms", which once made a refused connection read as refused credentials).
fn says_denied(detail: &str) -> bool {
    [
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
    ]
    .iter()
    .any(|s| detail.contains(s))
        || detail
            .split(|c: char| !c.is_ascii_alphanumeric())
            .any(|word| word == "403")
}

#[cfg(test)]
mod denied_tests {
    use super::says_denied;

    #[test]
    fn a_403_is_a_word_not_digits_of_a_duration() {
        assert!(says_denied("HTTP status client error (403 Forbidden)"));
        assert!(says_denied("<Code>SignatureDoesNotMatch</Code>"));
        assert!(!says_denied(
            "Error performing GET http://127.0.0.1:37827/b in 462.644036ms, after 3 retries - \
             HTTP error: client error (Connect): tcp connect error: Connection refused"
        ));
    }
}
