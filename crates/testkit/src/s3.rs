//! A real S3 server for tests: `s3s-fs` (the s3s project's file-system backend) serving one
//! bucket over a temporary directory on a free loopback port, plain HTTP or TLS, until dropped.
//! Not a mock: the clients under test speak the S3 protocol to it over a socket, signed with
//! AWS SigV4, and it keeps the objects as files (so a test can tamper with one).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The access key id the server accepts.
pub const ACCESS_KEY: &str = "cohort-test-access";
/// The secret key the server accepts.
pub const SECRET_KEY: &str = "cohort-test-secret";
/// The one bucket the server has.
pub const BUCKET: &str = "cohort-blobs";

/// A real S3 server over a temporary directory, serving on 127.0.0.1 until dropped.
pub struct S3Server {
    runtime: Option<tokio::runtime::Runtime>,
    addr: SocketAddr,
    root: tempfile::TempDir,
    tls: bool,
}

impl S3Server {
    /// Starts the server with one bucket, [`BUCKET`], and credentials
    /// [`ACCESS_KEY`]/[`SECRET_KEY`], over plain HTTP.
    ///
    /// # Panics
    /// If the temporary directory, the runtime or the listener cannot be made (a broken test
    /// machine, not a test failure to handle).
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// [`Self::start`], serving HTTPS with the PEM certificate chain `cert` and its key `key`
    /// (on rustls with the *ring* provider).
    ///
    /// # Panics
    /// As [`Self::start`], and if the certificate or key cannot be read.
    pub fn start_tls(cert: &Path, key: &Path) -> Self {
        Self::start_with(Some(tls_acceptor(cert, key)))
    }

    fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        use hyper_util::rt::{TokioExecutor, TokioIo};
        use hyper_util::server::conn::auto::Builder as ConnBuilder;
        use s3s::auth::SimpleAuth;
        use s3s::service::S3ServiceBuilder;

        let root = tempfile::tempdir().expect("temporary directory");
        std::fs::create_dir(root.path().join(BUCKET)).expect("bucket directory");
        let fs = s3s_fs::FileSystem::new(root.path()).expect("s3s-fs over the directory");
        let mut b = S3ServiceBuilder::new(fs);
        b.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = b.build();

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("server runtime");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = listener.local_addr().expect("local address");
        let serves_tls = tls.is_some();
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            let http = ConnBuilder::new(TokioExecutor::new());
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                let (http, service, tls) = (http.clone(), service.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        None => {
                            let _ = http.serve_connection(TokioIo::new(socket), service).await;
                        }
                        Some(tls) => {
                            // A client that refuses the certificate ends the handshake.
                            let Ok(stream) = tls.accept(socket).await else {
                                return;
                            };
                            let _ = http.serve_connection(TokioIo::new(stream), service).await;
                        }
                    }
                });
            }
        });
        Self {
            runtime: Some(runtime),
            addr,
            root,
            tls: serves_tls,
        }
    }

    /// `http://127.0.0.1:PORT` (or `https://`).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The environment a client needs to reach this server: credentials, endpoint, region and,
    /// over plain HTTP, `AWS_ALLOW_HTTP=true`.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_REGION", "us-east-1".to_string()),
        ]
        .into_iter()
        .chain((!self.tls).then(|| ("AWS_ALLOW_HTTP", "true".to_string())))
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// [`Self::env`] with `name` set to `value` (replacing it if present).
    pub fn env_with(&self, name: &str, value: &str) -> Vec<(String, String)> {
        let mut env: Vec<_> = self.env().into_iter().filter(|(k, _)| k != name).collect();
        env.push((name.to_string(), value.to_string()));
        env
    }

    /// The server's file for an object key: where a tamperer would write.
    pub fn object_file(&self, key: &str) -> PathBuf {
        self.root.path().join(BUCKET).join(key)
    }

    /// Every object file under the bucket (not the server's own bookkeeping files).
    ///
    /// # Panics
    /// If the bucket's directory cannot be read.
    pub fn objects(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![self.root.path().join(BUCKET)];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).expect("read the bucket directory") {
                let p = e.expect("directory entry").path();
                if p.is_dir() {
                    stack.push(p);
                } else if !p.to_string_lossy().contains(".s3s") {
                    out.push(p);
                }
            }
        }
        out
    }
}

impl std::fmt::Debug for S3Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Server")
            .field("endpoint", &self.endpoint())
            .field("root", &self.root.path())
            .finish()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// The server side of TLS: a PEM certificate chain and its key, on the *ring* provider.
fn tls_acceptor(cert: &Path, key: &Path) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .expect("certificate file")
        .collect::<Result<Vec<_>, _>>()
        .expect("server certificate");
    let key = PrivateKeyDer::from_pem_file(key).expect("server key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server TLS configuration");
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}
