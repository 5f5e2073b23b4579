//! `cohort keys new|show`: key files in PKCS#8 PEM, mode 0600, never overwritten, refused when
//! group or others can read them; interoperable with OpenSSL.

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
