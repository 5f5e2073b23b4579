//! `cohort run --blobs s3://...` and `cohort provenance --blobs s3://...` against a real S3
//! server (s3s-fs, started by the test on a loopback port): the run's update and model blobs
//! go to the bucket, the provenance check reads them back from there, and a tampered object
//! is named.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};

const ACCESS_KEY: &str = "cohort-test-access";
const SECRET_KEY: &str = "cohort-test-secret";
const BUCKET: &str = "cohort-blobs";

/// A real S3 server over a temporary directory, serving on 127.0.0.1 until dropped.
struct S3Server {
    runtime: Option<tokio::runtime::Runtime>,
    addr: SocketAddr,
    root: tempfile::TempDir,
}

impl S3Server {
    fn start() -> Self {
        use hyper_util::rt::{TokioExecutor, TokioIo};
        use hyper_util::server::conn::auto::Builder as ConnBuilder;
        use s3s::auth::SimpleAuth;
        use s3s::service::S3ServiceBuilder;

        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join(BUCKET)).unwrap();
        let fs = s3s_fs::FileSystem::new(root.path()).unwrap();
        let mut b = S3ServiceBuilder::new(fs);
        b.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = b.build();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let http = ConnBuilder::new(TokioExecutor::new());
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                let conn = http
                    .serve_connection(TokioIo::new(socket), service.clone())
                    .into_owned();
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
        });
        Self {
            runtime: Some(runtime),
            addr,
            root,
        }
    }

    /// `cohort ARGS` with this server's credentials and endpoint in the environment.
    fn cohort(&self, args: &[&str], secret: &str) -> Output {
        Command::new(env!("CARGO_BIN_EXE_cohort"))
            .args(args)
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .env("AWS_ENDPOINT_URL", format!("http://{}", self.addr))
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_REGION", "us-east-1")
            .output()
            .unwrap()
    }

    /// Every object file under the bucket.
    fn objects(&self) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![self.root.path().join(BUCKET)];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
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

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

#[test]
fn a_run_keeps_its_blobs_in_s3_and_provenance_reads_them_back() {
    let s3 = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/attack-linear.toml");
    let url = format!("s3://{BUCKET}/runs/one");
    let run_args = [
        "run",
        config.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--set",
        "clients=6",
        "--set",
        "coordinator.rounds=2",
        "--blobs",
        url.as_str(),
    ];

    // Refused credentials are named before anything is written.
    let o = s3.cohort(&run_args, "wrong-secret");
    assert_eq!(o.status.code(), Some(2), "{}", common::text(&o));
    assert!(common::text(&o).contains("--blobs"), "{}", common::text(&o));
    assert!(!out.exists(), "nothing written after a refused --blobs");

    let o = s3.cohort(&run_args, SECRET_KEY);
    assert!(o.status.success(), "{}", common::text(&o));
    assert!(!out.join("blobs").exists(), "no local blob directory");
    let objects = s3.objects();
    // 2 rounds × 6 updates and the 3 global models, at least (identical updates share one).
    assert!(objects.len() >= 8, "{objects:?}");

    let check = |secret: &str| {
        let o = s3.cohort(
            &["provenance", out.to_str().unwrap(), "--blobs", &url],
            secret,
        );
        (o.status.code(), common::text(&o))
    };
    let (code, msg) = check(SECRET_KEY);
    assert_eq!(code, Some(0), "{msg}");
    assert!(msg.contains("OK: 12 provenance records"), "{msg}");

    // An object altered in the bucket is named.
    let victim = &objects[0];
    let mut bytes = std::fs::read(victim).unwrap();
    bytes[0] ^= 1;
    std::fs::write(victim, &bytes).unwrap();
    let (code, msg) = check(SECRET_KEY);
    assert_eq!(code, Some(1), "{msg}");
    let name = victim.file_name().unwrap().to_string_lossy().to_string();
    assert!(msg.contains(&name), "{name} not named in: {msg}");
}
