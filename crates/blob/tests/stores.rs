//! One suite for both adapters: the same scenarios run against a local directory and against a
//! real S3 server (`s3s-fs`, started by the test on a loopback port; see the crate docs), over
//! plain HTTP and, once, over TLS with a certificate from a private CA (tests/tls/).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cohort_blob::{BlobError, BlobStore, LocalDir, S3Store};
use cohort_core::{Hash32, sha256};

use cohort_testkit::s3::{BUCKET, S3Server};

/// The TLS fixtures' directory (made by tests/tls/make.sh).
fn tls_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tls")
}

/// The server over HTTPS with tests/tls/server.pem.
fn start_tls() -> S3Server {
    S3Server::start_tls(&tls_dir().join("server.pem"), &tls_dir().join("server.key"))
}

/// The store under `prefix` of the server's bucket.
fn open(server: &S3Server, prefix: &str) -> S3Store {
    S3Store::open_with_env(&format!("s3://{BUCKET}/{prefix}"), server.env())
        .expect("open the S3 store")
}

/// `len` pseudo-random bytes, different for each `seed`.
fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Stores a few MB and a small blob, reads them back, lists them; a second put is a no-op.
fn round_trip(store: &dyn BlobStore) {
    let big = bytes(3 * 1024 * 1024 + 17, 1);
    let small = bytes(10, 2);
    let h_big = store.put(&big).expect("put 3 MB");
    let h_small = store.put(&small).expect("put 10 bytes");
    assert_eq!(h_big, sha256(&big));
    assert!(store.has(&h_big).expect("has"));
    assert_eq!(store.get(&h_big).expect("get 3 MB"), big);
    assert_eq!(store.get(&h_small).expect("get 10 bytes"), small);
    assert_eq!(store.put(&big).expect("put again"), h_big);
    let mut want = vec![h_big, h_small];
    want.sort();
    assert_eq!(store.list().expect("list"), want);
    // Deleted once: gone from has, get and list; deleting again says it was not there.
    assert!(store.delete(&h_small).expect("delete"));
    assert!(!store.has(&h_small).expect("has"));
    assert!(matches!(
        store.get(&h_small),
        Err(cohort_blob::BlobError::NotFound { .. })
    ));
    assert_eq!(store.list().expect("list"), vec![h_big]);
    assert!(!store.delete(&h_small).expect("delete again"));
    assert_eq!(store.put(&small).expect("put back"), h_small);
}

/// A missing blob, an empty blob: refused with their names, no panic.
fn refusals(store: &dyn BlobStore) {
    let absent = sha256(b"never stored");
    assert!(!store.has(&absent).expect("has"));
    let e = store.get(&absent).expect_err("absent blob");
    assert!(matches!(e, BlobError::NotFound { .. }), "{e}");
    assert!(e.to_string().contains(&absent.to_hex()), "{e}");
    let e = store.put(&[]).expect_err("empty blob");
    assert!(matches!(e, BlobError::Empty { .. }), "{e}");
    assert!(store.get(&Hash32::ZERO).is_err());
}

/// Flips one byte of a stored blob's file behind the store's back: the read is refused.
fn tampered_read_is_refused(store: &dyn BlobStore, file_of: impl Fn(&Hash32) -> PathBuf) {
    let data = bytes(256 * 1024, 3);
    let h = store.put(&data).expect("put");
    let file = file_of(&h);
    let mut stored = std::fs::read(&file).expect("the stored file is where the layout says");
    assert_eq!(stored, data, "the backend stores the bytes as they are");
    stored[1000] ^= 0x55;
    std::fs::write(&file, &stored).expect("tamper");
    let e = store.get(&h).expect_err("tampered blob");
    match &e {
        BlobError::Corrupt { hash, actual, .. } => {
            assert_eq!(*hash, h);
            assert_eq!(*actual, sha256(&stored));
        }
        other => panic!("expected Corrupt, got {other}"),
    }
    let msg = e.to_string();
    assert!(
        msg.contains(&h.to_hex()) && msg.contains(&sha256(&stored).to_hex()),
        "{msg}"
    );
}

/// Eight threads put the same blob (and one each of their own) at once.
fn concurrent_puts(store: Arc<dyn BlobStore>) {
    let shared = bytes(512 * 1024, 4);
    let want = sha256(&shared);
    let handles: Vec<_> = (0..8u64)
        .map(|i| {
            let store = Arc::clone(&store);
            let shared = shared.clone();
            std::thread::spawn(move || {
                let own = bytes(1000, 100 + i);
                (
                    store.put(&shared).expect("shared put"),
                    store.put(&own).expect("own put"),
                )
            })
        })
        .collect();
    let mut own = Vec::new();
    for h in handles {
        let (s, o) = h.join().expect("thread");
        assert_eq!(s, want);
        own.push(o);
    }
    assert_eq!(store.get(&want).expect("get after concurrent puts"), shared);
    let listed = store.list().expect("list");
    assert_eq!(listed.iter().filter(|h| **h == want).count(), 1);
    for o in own {
        assert!(listed.contains(&o));
    }
}

#[test]
fn local_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    round_trip(&LocalDir::open(dir.path().join("blobs")).expect("open"));
}

#[test]
fn s3_round_trip() {
    let server = S3Server::start();
    round_trip(&open(&server, "runs/one"));
    // The layout: the object is where docs/blobs.md says.
    let h = sha256(&bytes(10, 2));
    let hex = h.to_hex();
    assert!(
        server
            .object_file(&format!("runs/one/sha256/{}/{hex}", &hex[..2]))
            .is_file()
    );
}

#[test]
fn local_refusals() {
    let dir = tempfile::tempdir().expect("tempdir");
    refusals(&LocalDir::open(dir.path()).expect("open"));
}

#[test]
fn s3_refusals() {
    let server = S3Server::start();
    refusals(&open(&server, ""));
}

#[test]
fn local_tampered_blob_is_refused_on_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = LocalDir::open(dir.path()).expect("open");
    tampered_read_is_refused(&store, |h| store.blob_path(h));
}

#[test]
fn s3_tampered_blob_is_refused_on_read() {
    let server = S3Server::start();
    let store = open(&server, "p");
    tampered_read_is_refused(&store, |h| server.object_file(&store.key_of(h)));
}

#[test]
fn local_concurrent_puts_of_one_blob() {
    let dir = tempfile::tempdir().expect("tempdir");
    concurrent_puts(Arc::new(LocalDir::open(dir.path()).expect("open")));
}

#[test]
fn s3_concurrent_puts_of_one_blob() {
    let server = S3Server::start();
    concurrent_puts(Arc::new(open(&server, "c")));
}

#[test]
fn local_damaged_copy_is_replaced_by_a_new_put() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = LocalDir::open(dir.path()).expect("open");
    let data = bytes(4096, 5);
    let h = store.put(&data).expect("put");
    std::fs::write(store.blob_path(&h), b"truncat").expect("damage");
    assert!(store.get(&h).is_err());
    assert_eq!(store.put(&data).expect("put again"), h);
    assert_eq!(store.get(&h).expect("healed"), data);
}

#[test]
fn local_path_that_is_a_file_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").expect("file");
    let e = LocalDir::open(&file).expect_err("a file");
    assert!(matches!(e, BlobError::NotADirectory { .. }), "{e}");
    assert!(e.to_string().contains("a-file"), "{e}");
    // Under a file: cannot be created, named.
    let e = cohort_blob::open(file.join("sub").to_str().expect("utf-8")).expect_err("under a file");
    assert!(e.to_string().contains("a-file"), "{e}");
    // A reader never creates the directory.
    let missing = dir.path().join("missing");
    let e = cohort_blob::open_existing(missing.to_str().expect("utf-8")).expect_err("missing");
    assert!(e.to_string().contains("missing"), "{e}");
    assert!(!missing.exists());
}

#[test]
fn local_huge_path_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let huge: PathBuf = dir.path().join("d".repeat(300)).join("e".repeat(5000));
    let e = LocalDir::open(&huge).expect_err("name too long");
    assert!(matches!(e, BlobError::Io { .. }), "{e}");
}

#[test]
fn local_list_skips_foreign_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = LocalDir::open(dir.path()).expect("open");
    let h = store.put(b"one").expect("put");
    let fan = dir.path().join("sha256").join("zz");
    std::fs::create_dir_all(&fan).expect("dir");
    std::fs::write(fan.join("not-a-blob"), b"x").expect("file");
    std::fs::write(dir.path().join("sha256").join("stray"), b"x").expect("file");
    assert_eq!(store.list().expect("list"), vec![h]);
}

#[test]
fn s3_missing_bucket_is_named_at_open() {
    let server = S3Server::start();
    let e =
        S3Store::open_with_env("s3://no-such-bucket/x", server.env()).expect_err("missing bucket");
    assert!(matches!(e, BlobError::BucketMissing { .. }), "{e}");
    assert!(e.to_string().contains("no-such-bucket"), "{e}");
}

#[test]
fn s3_wrong_credentials_are_named_at_open() {
    let server = S3Server::start();
    for (name, value) in [
        ("AWS_SECRET_ACCESS_KEY", "wrong-secret"),
        ("AWS_ACCESS_KEY_ID", "nobody"),
    ] {
        let e = S3Store::open_with_env(&format!("s3://{BUCKET}"), server.env_with(name, value))
            .expect_err(name);
        assert!(matches!(e, BlobError::AccessDenied { .. }), "{name}: {e}");
        assert!(e.to_string().contains("AWS_SECRET_ACCESS_KEY"), "{e}");
    }
}

#[test]
fn s3_unreachable_endpoint_is_named_at_open() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let server = S3Server::start();
    let endpoint = format!("http://127.0.0.1:{port}");
    let e = S3Store::open_with_env(
        &format!("s3://{BUCKET}"),
        server.env_with("AWS_ENDPOINT_URL", &endpoint),
    )
    .expect_err("unreachable");
    assert!(matches!(e, BlobError::Unreachable { .. }), "{e}");
    eprintln!("{e}");
    assert!(e.to_string().contains(&endpoint), "{e}");
    assert!(e.to_string().contains("Connection refused"), "{e}");
}

#[test]
fn s3_store_refuses_to_block_inside_an_async_runtime() {
    let server = S3Server::start();
    let store = open(&server, "a");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let e = rt
        .block_on(async { store.get(&sha256(b"x")) })
        .expect_err("inside a runtime");
    assert!(matches!(e, BlobError::InsideAsyncRuntime { .. }), "{e}");
    // Dropping the store inside a runtime does not panic either.
    rt.block_on(async move { drop(store) });
}

#[test]
fn s3_objects_that_are_not_blobs_are_not_listed() {
    let server = S3Server::start();
    let store = open(&server, "l");
    let h = store.put(b"one").expect("put");
    let stray = server.object_file("l/sha256/zz/stray");
    std::fs::create_dir_all(stray.parent().unwrap_or(Path::new("."))).expect("dir");
    std::fs::write(&stray, b"x").expect("stray object");
    assert_eq!(store.list().expect("list"), vec![h]);
}

/// Over TLS: the server's certificate comes from a private CA. Trusting that CA through
/// `AWS_CA_BUNDLE`, the store works end to end; without it the certificate is refused when the
/// store opens, and the error names the endpoint and the certificate problem.
#[test]
fn s3_over_tls_with_a_private_ca() {
    let server = start_tls();
    let ca = tls_dir().join("ca.pem");
    let ca = ca.to_str().expect("utf-8 path");
    let store = S3Store::open_with_env(
        &format!("s3://{BUCKET}/tls"),
        server.env_with("AWS_CA_BUNDLE", ca),
    )
    .expect("open over TLS, trusting the test CA");
    round_trip(&store);

    let e = S3Store::open_with_env(&format!("s3://{BUCKET}/tls"), server.env())
        .expect_err("an untrusted certificate");
    assert!(matches!(e, BlobError::Unreachable { .. }), "{e}");
    let msg = e.to_string();
    eprintln!("{msg}");
    assert!(msg.contains(&server.endpoint()), "{msg}");
    assert!(
        msg.contains("invalid peer certificate: UnknownIssuer"),
        "{msg}"
    );

    // Plain HTTP to a TLS port, and TLS to a plain-HTTP port: errors, not hangs or panics.
    let plain = S3Server::start();
    let e = S3Store::open_with_env(
        &format!("s3://{BUCKET}"),
        plain.env_with(
            "AWS_ENDPOINT_URL",
            &plain.endpoint().replace("http://", "https://"),
        ),
    )
    .expect_err("TLS to a plain-HTTP server");
    assert!(matches!(e, BlobError::Unreachable { .. }), "{e}");
    let mut env = server.env_with(
        "AWS_ENDPOINT_URL",
        &server.endpoint().replace("https://", "http://"),
    );
    env.push(("AWS_ALLOW_HTTP".into(), "true".into()));
    assert!(S3Store::open_with_env(&format!("s3://{BUCKET}"), env).is_err());

    // A CA bundle that is not one: refused by name before any request.
    let e = S3Store::open_with_env(
        &format!("s3://{BUCKET}"),
        server.env_with(
            "AWS_CA_BUNDLE",
            tls_dir().join("make.sh").to_str().expect("utf-8"),
        ),
    )
    .expect_err("not a PEM bundle");
    assert!(matches!(e, BlobError::BadConfig { .. }), "{e}");
    assert!(e.to_string().contains("AWS_CA_BUNDLE"), "{e}");
}
