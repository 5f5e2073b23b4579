//! `cohort run --blobs s3://...` and `cohort provenance --blobs s3://...` against a real S3
//! server (s3s-fs, started by the test on a loopback port): the run's update and model blobs
//! go to the bucket, the provenance check reads them back from there, and a tampered object
//! is named.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use cohort_testkit::s3::{BUCKET, S3Server, SECRET_KEY};

/// `cohort ARGS` with `s3`'s endpoint and credentials in the environment, the secret replaced
/// by `secret`.
fn cohort(s3: &S3Server, args: &[&str], secret: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cohort"))
        .args(args)
        .envs(s3.env_with("AWS_SECRET_ACCESS_KEY", secret))
        .output()
        .unwrap()
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
    let o = cohort(&s3, &run_args, "wrong-secret");
    assert_eq!(o.status.code(), Some(2), "{}", common::text(&o));
    assert!(common::text(&o).contains("--blobs"), "{}", common::text(&o));
    assert!(!out.exists(), "nothing written after a refused --blobs");

    let o = cohort(&s3, &run_args, SECRET_KEY);
    assert!(o.status.success(), "{}", common::text(&o));
    assert!(!out.join("blobs").exists(), "no local blob directory");
    let objects = s3.objects();
    // 2 rounds × 6 updates and the 3 global models, at least (identical updates share one).
    assert!(objects.len() >= 8, "{objects:?}");

    let check = |secret: &str| {
        let o = cohort(
            &s3,
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
