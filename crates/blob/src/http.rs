//! The S3 adapter's HTTP client: HTTP/1.1 over hyper, TLS by rustls on *ring*.
//!
//! `object_store` talks to S3 through a small port of its own, [`HttpConnector`] /
//! [`HttpService`]; its built-in adapter is reqwest with rustls on aws-lc-rs, whose C library
//! (aws-lc-sys) was the slowest unit of CI's cold build. This adapter is the same stack without
//! it: hyper's pooled client (the one reqwest wraps), rustls with the *ring* provider (which also
//! signs the requests, through `object_store`'s `ring` feature), and HTTP/1.1, which every S3
//! server speaks.
//!
//! Certificates are checked against the system's CA certificates (`rustls-native-certs`: the
//! OS store, or `SSL_CERT_FILE` / `SSL_CERT_DIR` where set), plus those of a PEM bundle named by
//! `AWS_CA_BUNDLE` (as the AWS command line reads it): for an S3-compatible server with a
//! private CA.
//!
//! Timeouts: connecting (TCP) may take [`Connector::connect_timeout`]; a whole request, from
//! sending it to the last byte of the response, [`Connector::timeout`]. Errors carry the kind
//! `object_store`'s retries go by: a failed connection or an interrupted exchange is retried, a
//! malformed response is not.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector as TcpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use object_store::ClientOptions;
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpRequestBody,
    HttpResponse, HttpResponseBody, HttpService,
};
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// How long an idle pooled connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(60);

/// The rustls client configuration: *ring*, TLS 1.2 and 1.3, the system's CA certificates and
/// those in the PEM file `ca_bundle`. With `need_roots` (the endpoint is `https://`), no
/// certificate to trust at all is an error; so is a bundle that cannot be read or holds none.
/// Errors are sentences that name the setting.
pub(crate) fn tls_config(
    ca_bundle: Option<&str>,
    need_roots: bool,
) -> Result<rustls::ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    if !native.errors.is_empty() {
        tracing::debug!(errors = ?native.errors, "some system CA certificates could not be read");
    }
    tracing::debug!(certificates = added, "system CA certificates");
    if let Some(path) = ca_bundle {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("AWS_CA_BUNDLE={path}: not a readable PEM file: {e}"))?;
        if certs.is_empty() {
            return Err(format!(
                "AWS_CA_BUNDLE={path}: no certificate in it (expected PEM `CERTIFICATE` blocks)"
            ));
        }
        let (ok, bad) = roots.add_parsable_certificates(certs);
        if ok == 0 {
            return Err(format!(
                "AWS_CA_BUNDLE={path}: none of its {bad} certificates could be used"
            ));
        }
        tracing::debug!(path, certificates = ok, "CA bundle");
    }
    if need_roots && roots.is_empty() {
        return Err(
            "no CA certificates to check the endpoint's TLS certificate against: the system has \
             none (install ca-certificates, or set SSL_CERT_FILE) and AWS_CA_BUNDLE is not set"
                .to_string(),
        );
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS configuration: {e}"))
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}

/// Hands `object_store` the client; see the module docs.
#[derive(Clone)]
pub(crate) struct Connector {
    client: Client<HttpsConnector<TcpConnector>, HttpRequestBody>,
    /// Longest a TCP connection may take to establish.
    pub(crate) connect_timeout: Duration,
    /// Longest a request may take, response body included.
    pub(crate) timeout: Duration,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector")
            .field("connect_timeout", &self.connect_timeout)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// A client that speaks `http://` and `https://` (checked with `tls`).
    pub(crate) fn new(
        tls: rustls::ClientConfig,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Self {
        let mut tcp = TcpConnector::new();
        tcp.enforce_http(false);
        tcp.set_connect_timeout(Some(connect_timeout));
        tcp.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE)
            .build(https);
        Self {
            client,
            connect_timeout,
            timeout,
        }
    }
}

impl HttpConnector for Connector {
    fn connect(&self, _options: &ClientOptions) -> object_store::Result<HttpClient> {
        Ok(HttpClient::new(self.clone()))
    }
}

#[async_trait::async_trait]
impl HttpService for Connector {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let res = tokio::time::timeout_at(deadline, self.client.request(req))
            .await
            .map_err(|_| HttpError::new(HttpErrorKind::Timeout, TimedOut(self.timeout)))?
            .map_err(request_error)?;
        let (parts, body) = res.into_parts();
        let body = WithDeadline {
            body,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            timeout: self.timeout,
        };
        Ok(HttpResponse::from_parts(parts, HttpResponseBody::new(body)))
    }
}

/// A request that outlived its time.
#[derive(Debug)]
struct TimedOut(Duration);

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no complete response within {:?}", self.0)
    }
}

impl std::error::Error for TimedOut {}

/// A response body that fails with [`HttpErrorKind::Timeout`] once the request's deadline has
/// passed.
struct WithDeadline {
    body: Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
}

impl Body for WithDeadline {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        if self.deadline.as_mut().poll(cx).is_ready() {
            let t = self.timeout;
            return Poll::Ready(Some(Err(HttpError::new(
                HttpErrorKind::Timeout,
                TimedOut(t),
            ))));
        }
        Pin::new(&mut self.body)
            .poll_frame(cx)
            .map_err(|e| HttpError::new(body_error_kind(&e), e))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The kind of a failed request, as `object_store` retries by it (a refused or failed
/// connection, TLS included, is `Connect`).
fn request_error(e: hyper_util::client::legacy::Error) -> HttpError {
    let kind = if e.is_connect() {
        HttpErrorKind::Connect
    } else {
        source_kind(&e).unwrap_or(HttpErrorKind::Request)
    };
    HttpError::new(kind, Described(error_chain(&e)))
}

/// An error's message with its sources', `: `-separated: hyper's own message is only "client
/// error (Connect)", and what went wrong ("Connection refused", "invalid peer certificate:
/// UnknownIssuer") is in a source, which `object_store`'s messages do not show.
#[derive(Debug)]
struct Described(String);

impl fmt::Display for Described {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Described {}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// The kind of an error while reading a response body.
fn body_error_kind(e: &hyper::Error) -> HttpErrorKind {
    if e.is_parse() || e.is_user() {
        HttpErrorKind::Decode
    } else {
        source_kind(e).unwrap_or(HttpErrorKind::Interrupted)
    }
}

/// What the first telling error in `e`'s source chain says: a timeout, an interrupted
/// connection, or a request hyper could not complete.
fn source_kind(e: &(dyn std::error::Error + 'static)) -> Option<HttpErrorKind> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            match io.kind() {
                K::TimedOut => return Some(HttpErrorKind::Timeout),
                K::ConnectionAborted | K::ConnectionReset | K::BrokenPipe | K::UnexpectedEof => {
                    return Some(HttpErrorKind::Interrupted);
                }
                _ => {}
            }
        }
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_timeout() {
                return Some(HttpErrorKind::Timeout);
            }
            if h.is_closed() || h.is_incomplete_message() || h.is_body_write_aborted() {
                return Some(HttpErrorKind::Request);
            }
        }
        cur = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_ca_bundle_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.pem");
        let e = tls_config(missing.to_str(), true).expect_err("missing file");
        assert!(
            e.contains("AWS_CA_BUNDLE") && e.contains("missing.pem"),
            "{e}"
        );
        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, b"hello").expect("write");
        let e = tls_config(not_pem.to_str(), true).expect_err("no certificate");
        assert!(e.contains("no certificate"), "{e}");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(
            &garbage,
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let e = tls_config(garbage.to_str(), true).expect_err("not a certificate");
        assert!(e.contains("AWS_CA_BUNDLE"), "{e}");
    }
}
