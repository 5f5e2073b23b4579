//! `cohort keys new|show`: key files in PKCS#8 PEM, mode 0600, never overwritten, refused when
//! group or others can read them; interoperable with OpenSSL. `cohort keys tls`: a private CA
//! and a server certificate that OpenSSL and cohort's TLS loaders accept; bad names, validities
//! and paths refused with nothing written.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{cohort, p, text};
use serde_json::Value;

fn json(o: &std::process::Output) -> Value {
    assert!(o.status.success(), "{}", text(o));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn new_writes_a_private_key_file_and_show_reads_it_back() {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("alice.pem");
    let made = json(&cohort(&["keys", "new", "--out", p(&key), "--json"]));
    let public = made["public_key"].as_str().unwrap();
    assert_eq!(public.len(), 64, "{made}");
    let address = made["address"].as_str().unwrap();
    assert!(address.starts_with("0x") && address.len() == 42, "{made}");
    // The embedded ledger's address is the last 20 bytes of keccak256(public key).
    let pk = hex::decode(public).unwrap();
    let want = cohort_core::address_of(&pk.try_into().unwrap());
    assert_eq!(address.to_lowercase(), want.to_string().to_lowercase());

    let meta = std::fs::metadata(&key).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let pem = std::fs::read_to_string(&key).unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{pem}");
    assert!(
        !pem.contains(public),
        "the file holds the secret, not the public key"
    );

    let shown = json(&cohort(&["keys", "show", p(&key), "--json"]));
    assert_eq!(shown["public_key"], made["public_key"]);
    assert_eq!(shown["address"], made["address"]);
    let human = cohort(&["keys", "show", p(&key)]);
    assert!(text(&human).contains(public), "{}", text(&human));

    // Two keys differ.
    let other = tmp.path().join("bob.pem");
    let bob = json(&cohort(&["keys", "new", "--out", p(&other), "--json"]));
    assert_ne!(bob["public_key"], made["public_key"]);
}

#[test]
fn an_existing_file_is_never_overwritten_and_bad_paths_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("k.pem");
    let first = json(&cohort(&["keys", "new", "--out", p(&key), "--json"]));
    let before = std::fs::read(&key).unwrap();
    let o = cohort(&["keys", "new", "--out", p(&key)]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("already exists"), "{}", text(&o));
    assert_eq!(std::fs::read(&key).unwrap(), before);
    let again = json(&cohort(&["keys", "show", p(&key), "--json"]));
    assert_eq!(again["public_key"], first["public_key"]);

    for (out, needle) in [
        (tmp.path().join("no/such/dir/k.pem"), "does not exist"),
        (tmp.path().to_path_buf(), "already exists"),
    ] {
        let o = cohort(&["keys", "new", "--out", p(&out)]);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(text(&o).contains(needle), "{}", text(&o));
    }
    let o = cohort(&["keys", "new", "--out", ""]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--out"), "{}", text(&o));
}

#[test]
fn a_key_readable_by_others_or_malformed_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("k.pem");
    json(&cohort(&["keys", "new", "--out", p(&key), "--json"]));
    for mode in [0o644, 0o640, 0o604, 0o660, 0o700 | 0o004] {
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
        let o = cohort(&["keys", "show", p(&key)]);
        assert_eq!(o.status.code(), Some(2), "mode {mode:o}: {}", text(&o));
        assert!(
            text(&o).contains("chmod 600") && text(&o).contains(p(&key)),
            "{}",
            text(&o)
        );
    }
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400)).unwrap();
    json(&cohort(&["keys", "show", p(&key), "--json"]));

    let bad = tmp.path().join("bad.pem");
    for (content, needle) in [
        ("", "empty"),
        ("0123abcd", "BEGIN PRIVATE KEY"),
        (
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            "PKCS#8",
        ),
    ] {
        std::fs::write(&bad, content).unwrap();
        std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o600)).unwrap();
        let o = cohort(&["keys", "show", p(&bad)]);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(text(&o).contains(needle), "{content:?}: {}", text(&o));
        assert!(!text(&o).contains("panicked"), "{}", text(&o));
    }
    let o = cohort(&["keys", "show", p(&tmp.path().join("missing.pem"))]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("missing.pem"), "{}", text(&o));
}

#[test]
fn openssl_reads_cohort_keys_and_cohort_reads_openssl_keys() {
    // OpenSSL is a peer here, not a dependency of cohort: the test needs its command line
    // (Debian's openssl package; every CI image this project uses has it).
    let tmp = tempfile::tempdir().unwrap();
    let ours = tmp.path().join("ours.pem");
    let made = json(&cohort(&["keys", "new", "--out", p(&ours), "--json"]));
    let der = std::process::Command::new("openssl")
        .args(["pkey", "-in", p(&ours), "-pubout", "-outform", "DER"])
        .output()
        .expect("openssl runs");
    assert!(der.status.success(), "{}", text(&der));
    let public = hex::encode(&der.stdout[der.stdout.len() - 32..]);
    assert_eq!(made["public_key"].as_str().unwrap(), public);

    let theirs = tmp.path().join("theirs.pem");
    let o = std::process::Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out", p(&theirs)])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o600)).unwrap();
    let der = std::process::Command::new("openssl")
        .args(["pkey", "-in", p(&theirs), "-pubout", "-outform", "DER"])
        .output()
        .unwrap();
    let shown = json(&cohort(&["keys", "show", p(&theirs), "--json"]));
    assert_eq!(
        shown["public_key"].as_str().unwrap(),
        hex::encode(&der.stdout[der.stdout.len() - 32..])
    );
}

/// Runs `openssl` with `args`, which must succeed; returns its standard output.
fn openssl(args: &[&str]) -> String {
    let o = std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(o.status.success(), "openssl {args:?}: {}", text(&o));
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn keys_tls_makes_a_ca_and_a_server_certificate_that_openssl_and_the_loaders_accept() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tls");
    let made = json(&cohort(&[
        "keys",
        "tls",
        "--out",
        p(&dir),
        "--name",
        "127.0.0.1",
        "--name",
        "Coordinator.Example.org",
        "--days",
        "30",
        "--json",
    ]));
    let (ca, cert, key) = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    assert_eq!(made["ca_cert"], p(&ca));
    assert_eq!(made["server_cert"], p(&cert));
    assert_eq!(made["server_key"], p(&key));
    assert_eq!(
        made["names"],
        serde_json::json!(["127.0.0.1", "coordinator.example.org"])
    );
    let mode = |f: &std::path::Path| std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&key), 0o600);
    assert_eq!(mode(&ca), 0o644);
    assert_eq!(mode(&cert), 0o644);
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        3,
        "no CA key is written"
    );

    // OpenSSL reads them: the SANs, a CA that signed the server certificate, the fingerprint.
    let server = openssl(&["x509", "-in", p(&cert), "-noout", "-text"]);
    assert!(
        server.contains("IP Address:127.0.0.1") && server.contains("DNS:coordinator.example.org"),
        "{server}"
    );
    assert!(server.contains("CA:FALSE") && server.contains("TLS Web Server Authentication"));
    let ca_text = openssl(&["x509", "-in", p(&ca), "-noout", "-text"]);
    assert!(ca_text.contains("CA:TRUE"), "{ca_text}");
    let verified = openssl(&["verify", "-CAfile", p(&ca), p(&cert)]);
    assert!(verified.trim_end().ends_with("OK"), "{verified}");
    let fp = openssl(&["x509", "-in", p(&ca), "-noout", "-fingerprint", "-sha256"]);
    assert_eq!(
        fp.trim().rsplit('=').next().unwrap(),
        made["ca_sha256"].as_str().unwrap()
    );
    // The validity asked for: 30 days.
    let end = openssl(&["x509", "-in", p(&cert), "-noout", "-checkend", "2505600"]);
    assert!(end.contains("will not expire"), "{end}");
    let o = std::process::Command::new("openssl")
        .args(["x509", "-in", p(&cert), "-noout", "-checkend", "2678400"])
        .output()
        .unwrap();
    assert!(!o.status.success(), "valid for more than 31 days");
    // The key is the certificate's, in PKCS#8.
    let from_key = openssl(&["pkey", "-in", p(&key), "-pubout"]);
    let from_cert = openssl(&["x509", "-in", p(&cert), "-noout", "-pubkey"]);
    assert_eq!(from_key, from_cert);
    // The coordinator's and the parties' loaders take them.
    cohort_net::tls::server_config(&cert, &key).unwrap();
    cohort_net::tls::client_config(&ca, "coordinator.example.org").unwrap();

    // The text output names the files and how to use them, and never a private key.
    let dir2 = tmp.path().join("tls2");
    let o = cohort(&["keys", "tls", "--out", p(&dir2), "--name", "::1"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    for needle in [
        "ca.pem",
        "--tls-cert",
        "--tls-key",
        "--ca",
        "https://[::1]:PORT",
        "CA SHA-256",
    ] {
        assert!(out.contains(needle), "{needle}: {out}");
    }
    let key2 = std::fs::read_to_string(dir2.join("server.key")).unwrap();
    let body: String = key2.lines().filter(|l| !l.starts_with("-----")).collect();
    for printed in [out, serde_json::to_string(&made).unwrap()] {
        assert!(
            !printed.contains("PRIVATE") && !printed.contains(&body[..40]),
            "{printed}"
        );
    }
}

#[test]
fn keys_tls_refuses_bad_names_days_and_paths_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tls");
    let ok = ["keys", "tls", "--out", p(&dir), "--name", "127.0.0.1"];
    for (extra, needle) in [
        (&["--days=0"][..], "--days"),
        (&["--days=-1"], "--days"),
        (&["--days=3651"], "--days"),
        (&["--days=18446744073709551616"], "--days"),
        (&["--days=nan"], "--days"),
        (&["--days="], "--days"),
        (&["--name="], "--name"),
        (&["--name=https://coordinator.example.org"], "a URL"),
        (&["--name=coordinator.example.org:50051"], "port"),
        (&["--name=0.0.0.0"], "unspecified"),
        (&["--name=*.example.org"], "wildcard"),
        (&["--name=not a host"], "--name"),
        (&["--name=1.2.3"], "--name"),
    ] {
        let mut args = ok.to_vec();
        args.extend_from_slice(extra);
        let o = cohort(&args);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {}", text(&o));
        assert!(text(&o).contains(needle), "{extra:?}: {}", text(&o));
        assert!(!text(&o).contains("panicked"), "{}", text(&o));
        assert!(!dir.exists(), "{extra:?} wrote {}", dir.display());
    }
    // No name at all.
    let o = cohort(&["keys", "tls", "--out", p(&dir)]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--name"), "{}", text(&o));
    // A missing parent directory, an empty path, a file in the way.
    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    for (out, needle) in [
        (tmp.path().join("no/such/tls"), "does not exist"),
        (std::path::PathBuf::new(), "--out"),
        (file.clone(), "not a directory"),
    ] {
        let o = cohort(&["keys", "tls", "--out", p(&out), "--name", "127.0.0.1"]);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(text(&o).contains(needle), "{}", text(&o));
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"x");

    // Existing files are named, never overwritten, and nothing else is written.
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("server.pem"), b"mine").unwrap();
    let o = cohort(&ok);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("server.pem") && text(&o).contains("never overwritten"),
        "{}",
        text(&o)
    );
    assert!(!text(&o).contains("ca.pem"), "{}", text(&o));
    assert_eq!(std::fs::read(dir.join("server.pem")).unwrap(), b"mine");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
}
