//! The `cohort ledger` commands as a user runs them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{cohort, p, text};
use redb::ReadableDatabase;

#[test]
fn demo_show_verify_prove_and_a_tampered_ledger() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ledger");

    let o = cohort(&["ledger", "demo", p(&dir), "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let demo: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(demo["report"]["rejected"], serde_json::json!([2]));
    let entries = demo["verify"]["entries"].as_u64().unwrap();

    // A second demo in the same place is refused, clearly.
    let o = cohort(&["ledger", "demo", p(&dir)]);
    assert!(!o.status.success());
    assert!(text(&o).contains("already holds a ledger"), "{}", text(&o));

    let o = cohort(&["ledger", "show", p(&dir), "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let show: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(show["size"].as_u64(), Some(entries));
    assert_eq!(show["accounts"].as_array().unwrap().len(), 6);

    let o = cohort(&["ledger", "verify", p(&dir)]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).starts_with("OK"));

    let proof = tmp.path().join("proof.json");
    let o = cohort(&[
        "ledger",
        "prove",
        p(&dir),
        "--entry",
        "5",
        "--out",
        p(&proof),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = cohort(&["ledger", "prove", p(&dir), "--check", p(&proof)]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("entry 5"), "{}", text(&o));

    // A forged proof fails with exit 1.
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&proof).unwrap()).unwrap();
    v["index"] = serde_json::json!(6);
    let forged = tmp.path().join("forged.json");
    std::fs::write(&forged, v.to_string()).unwrap();
    let o = cohort(&["ledger", "prove", p(&dir), "--check", p(&forged)]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let o = cohort(&[
        "ledger",
        "prove",
        p(&dir),
        "--check",
        p(&dir.join("ledger.redb")),
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("not an inclusion proof"), "{}", text(&o));

    // Alter entry 7 behind the ledger's back: verify exits 1 and names it.
    {
        let db = redb::Database::open(dir.join("ledger.redb")).unwrap();
        let t: redb::TableDefinition<'_, u64, &[u8]> = redb::TableDefinition::new("entries");
        let mut bytes = {
            let r = db.begin_read().unwrap();
            let tab = r.open_table(t).unwrap();
            tab.get(7).unwrap().unwrap().value().to_vec()
        };
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        let w = db.begin_write().unwrap();
        w.open_table(t)
            .unwrap()
            .insert(7, bytes.as_slice())
            .unwrap();
        w.commit().unwrap();
    }
    let o = cohort(&["ledger", "verify", p(&dir)]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("entry 7"), "{}", text(&o));
    let o = cohort(&["ledger", "verify", p(&dir), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["bad_entry"], serde_json::json!(7));
    // `show` verifies too: it does not print a tampered ledger as if it were fine.
    let o = cohort(&["ledger", "show", p(&dir)]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("entry 7"), "{}", text(&o));
    assert!(o.stdout.is_empty(), "{}", text(&o));

    // Not a ledger at all.
    let o = cohort(&["ledger", "show", p(tmp.path())]);
    assert!(!o.status.success());
    assert!(text(&o).contains("not a cohort ledger"), "{}", text(&o));
}

#[test]
fn bench_ledger_writes_json() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("bench.json");
    let o = cohort(&[
        "bench",
        "ledger",
        "--entries",
        "300",
        "--batch",
        "100",
        "--proofs",
        "50",
        "--json",
        p(&out),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    for k in [
        "append_per_s",
        "relay_per_s",
        "relay_sign_per_s",
        "relay_vs_direct",
        "verify_100k_s",
        "proof_bytes",
        "proof_us",
    ] {
        assert!(
            v[k].as_f64().is_some_and(|x| x > 0.0 && x.is_finite()),
            "{k}: {}",
            v[k]
        );
    }
    // Half the entries by each path, and all of them in the verified log.
    assert_eq!(v["direct_entries"], 150);
    assert_eq!(v["relay_entries"], 150);
    let ratio = v["relay_per_s"].as_f64().unwrap() / v["append_per_s"].as_f64().unwrap();
    assert!((ratio - v["relay_vs_direct"].as_f64().unwrap()).abs() < 1e-9);
    let table = text(&o);
    assert!(
        table.contains("append relayed party-signed calls"),
        "{table}"
    );
    assert!(table.contains("relayed / signed transactions"), "{table}");
    assert!(
        table.contains("verify 429 entries"),
        "300 and the set-up's 129: {table}"
    );
}

/// A fresh `cohort ledger demo` in `root/name`.
fn demo(root: &std::path::Path, name: &str) -> std::path::PathBuf {
    let dir = root.join(name);
    let o = cohort(&["ledger", "demo", p(&dir)]);
    assert!(o.status.success(), "{}", text(&o));
    dir
}

/// The SHA-256 of every file in `dir`, by name.
fn hashes(dir: &std::path::Path) -> Vec<(String, cohort_core::Hash32)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let h = if e.path().is_file() {
                cohort_core::sha256(&std::fs::read(e.path()).unwrap())
            } else {
                cohort_core::Hash32::ZERO
            };
            (e.file_name().to_string_lossy().into_owned(), h)
        })
        .collect();
    v.sort();
    v
}

/// Neither a panic (101) nor an abort (134) nor a signal: only 0, 1 or 2.
fn code(o: &std::process::Output) -> i32 {
    let t = text(o);
    assert!(
        !t.contains("panicked") && !t.contains("RUST_BACKTRACE"),
        "a panic: {t}"
    );
    let c = o.status.code().unwrap_or(-1);
    assert!([0, 1, 2].contains(&c), "exit {c}: {t}");
    c
}

/// Every command that reads a ledger, once each.
fn read_commands(dir: &std::path::Path, out: &std::path::Path) -> Vec<Vec<String>> {
    let d = p(dir).to_owned();
    let proof = p(&out.join("proof.json")).to_owned();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    vec![
        s(&["ledger", "show", &d]),
        s(&["ledger", "show", &d, "--json", "--entries", "0"]),
        s(&["ledger", "verify", &d]),
        s(&["ledger", "verify", &d, "--json"]),
        s(&["ledger", "prove", &d, "--entry", "0"]),
        s(&["ledger", "prove", &d, "--entry", "3", "--out", &proof]),
        s(&["ledger", "prove", &d, "--check", &proof]),
        s(&["ledger", "prove", &d, "--check", &proof, "--json"]),
    ]
}

#[test]
fn read_commands_leave_every_file_byte_identical_and_need_no_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = demo(tmp.path(), "ledger");
    let before = hashes(&dir);
    for args in read_commands(&dir, tmp.path()) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = cohort(&args);
        assert_eq!(code(&o), 0, "{args:?}: {}", text(&o));
        assert_eq!(
            hashes(&dir),
            before,
            "{args:?} changed the ledger directory"
        );
    }
    // An auditor holds the ledger files, not the operator's key: absent, or unreadable (a
    // directory in its place), the read commands work the same.
    let key = dir.join("operator.key");
    std::fs::rename(&key, tmp.path().join("kept.key")).unwrap();
    let before = hashes(&dir);
    for args in read_commands(&dir, tmp.path()) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = cohort(&args);
        assert_eq!(code(&o), 0, "without operator.key: {args:?}: {}", text(&o));
    }
    std::fs::create_dir(&key).unwrap();
    for args in read_commands(&dir, tmp.path()) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_eq!(code(&cohort(&args)), 0, "operator.key unreadable: {args:?}");
    }
    std::fs::remove_dir(&key).unwrap();
    assert_eq!(hashes(&dir), before);
}

#[test]
fn exit_codes_tell_tampered_from_unreadable() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = demo(tmp.path(), "ledger");
    // A wrong path is 2, named once.
    let missing = tmp.path().join("no-such-ledger");
    for cmd in ["show", "verify"] {
        let o = cohort(&["ledger", cmd, p(&missing)]);
        assert_eq!(code(&o), 2, "{}", text(&o));
        assert_eq!(text(&o).matches(p(&missing)).count(), 1, "{}", text(&o));
        assert!(text(&o).contains("not a cohort ledger"), "{}", text(&o));
    }
    let o = cohort(&["ledger", "prove", p(&missing), "--entry", "0"]);
    assert_eq!(code(&o), 2, "{}", text(&o));
    // A damaged database is 1, named; these two bytes of a fresh demo made `verify`/`show`
    // panic (exit 101) and `show` abort (exit 134) before.
    let clean = std::fs::read(dir.join("ledger.redb")).unwrap();
    let o = cohort(&["ledger", "show", p(&dir), "--json"]);
    assert_eq!(code(&o), 0);
    let shown = o.stdout;
    let o = cohort(&["ledger", "verify", p(&dir), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let root = v["report"]["root"].as_str().unwrap().to_owned();
    for at in [16_511, 8_194] {
        let mut b = clean.clone();
        b[at] ^= 0x08;
        std::fs::write(dir.join("ledger.redb"), &b).unwrap();
        let o = cohort(&["ledger", "show", p(&dir), "--json"]);
        match code(&o) {
            0 => assert!(o.stdout == shown, "byte {at}: show read another ledger"),
            1 => assert!(text(&o).contains("is damaged"), "{}", text(&o)),
            c => panic!("byte {at}: show exit {c}: {}", text(&o)),
        }
        let o = cohort(&["ledger", "verify", p(&dir)]);
        match code(&o) {
            0 => assert!(
                text(&o).contains(&root),
                "byte {at}: verify read another ledger"
            ),
            1 => assert!(text(&o).contains("is damaged"), "{}", text(&o)),
            c => panic!("byte {at}: verify exit {c}: {}", text(&o)),
        }
        assert_eq!(std::fs::read(dir.join("ledger.redb")).unwrap(), b);
    }
    std::fs::write(dir.join("ledger.redb"), &clean).unwrap();
    // A ledger open for writing in another process is busy (2), not tampered.
    {
        let _writer = redb::Database::open(dir.join("ledger.redb")).unwrap();
        for cmd in ["show", "verify"] {
            let o = cohort(&["ledger", cmd, p(&dir)]);
            assert_eq!(code(&o), 2, "{}", text(&o));
            assert!(text(&o).contains("another process"), "{}", text(&o));
        }
    }
    // A file left by a writer that did not close it: read as of its last commit, recovered
    // in memory, the file left as it is.
    let crashed = tmp.path().join("crashed");
    std::fs::create_dir(&crashed).unwrap();
    {
        let _writer = redb::Database::open(dir.join("ledger.redb")).unwrap();
        std::fs::copy(dir.join("ledger.redb"), crashed.join("ledger.redb")).unwrap();
    }
    let before = hashes(&crashed);
    let o = cohort(&["ledger", "verify", p(&crashed), "--json"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["recovered"], serde_json::json!(true));
    assert!(
        text(&o).contains("not closed by its writer"),
        "{}",
        text(&o)
    );
    let o = cohort(&["ledger", "show", p(&crashed), "--json"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert_eq!(o.stdout, shown);
    assert_eq!(
        hashes(&crashed),
        before,
        "a reader repaired the file in place"
    );
}

/// A short sample of the library's fuzz sweep (crates/ledger/tests/fuzz.rs), through the real
/// binary: byte flips, a truncation and a page swap.
#[test]
fn damaged_databases_through_the_binary() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = demo(tmp.path(), "ledger");
    let clean = std::fs::read(dir.join("ledger.redb")).unwrap();
    let shown = cohort(&["ledger", "show", p(&dir), "--json"]).stdout;
    let proof = cohort(&["ledger", "prove", p(&dir), "--entry", "3"]).stdout;
    let live: Vec<usize> = (1..clean.len() / 4096)
        .filter(|p| clean[p * 4096..(p + 1) * 4096].iter().any(|&x| x != 0))
        .collect();
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut next = |n: usize| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % n as u64) as usize
    };
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    for _ in 0..8 {
        let at = live[next(live.len())] * 4096 + next(4096);
        let mut b = clean.clone();
        b[at] ^= 1 + next(255) as u8;
        cases.push((format!("flip {at}"), b));
    }
    let mut b = clean.clone();
    b.truncate(clean.len() / 2);
    cases.push(("truncate".into(), b));
    let (a, c) = (live[0], live[live.len() - 1]);
    let mut b = clean.clone();
    let (lo, hi) = b.split_at_mut(c * 4096);
    lo[a * 4096..(a + 1) * 4096].swap_with_slice(&mut hi[..4096]);
    cases.push((format!("swap pages {a} and {c}"), b));
    let (mut inert, mut detected) = (0, 0);
    for (what, bytes) in cases {
        std::fs::write(dir.join("ledger.redb"), &bytes).unwrap();
        for (args, want) in [
            (vec!["ledger", "show", p(&dir), "--json"], &shown),
            (vec!["ledger", "prove", p(&dir), "--entry", "3"], &proof),
            (vec!["ledger", "verify", p(&dir)], &Vec::new()),
        ] {
            let o = cohort(&args);
            match code(&o) {
                0 => {
                    if !want.is_empty() {
                        assert_eq!(&o.stdout, want, "{what}: {args:?} read another ledger");
                    }
                    inert += 1;
                }
                _ => {
                    assert!(
                        text(&o).contains("is damaged") || text(&o).contains("entry"),
                        "{what}: {args:?} failed without saying why: {}",
                        text(&o)
                    );
                    detected += 1;
                }
            }
        }
        assert_eq!(
            std::fs::read(dir.join("ledger.redb")).unwrap(),
            bytes,
            "{what}: a reader changed the file"
        );
    }
    assert!(detected > 0, "no damage detected ({inert} inert)");
}

#[test]
fn arguments_are_checked_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = demo(tmp.path(), "ledger");
    let before = hashes(&dir);
    let d = p(&dir);
    let nowhere = p(&tmp.path().join("no/such/dir/x.json")).to_owned();
    let inside = p(&dir.join("proof.json")).to_owned();
    let new = p(&tmp.path().join("new")).to_owned();
    // The first entry past the end: the demo's size.
    let size = cohort_ledger::LedgerReader::open(&dir)
        .unwrap()
        .verify()
        .unwrap()
        .entries;
    let past = size.to_string();
    let refused: Vec<(Vec<&str>, &str)> = vec![
        (vec!["ledger", "prove", d, "--entry", &past], "past the end"),
        (
            vec!["ledger", "prove", d, "--entry", "18446744073709551615"],
            "past the end",
        ),
        (vec!["ledger", "prove", d, "--entry", "-1"], "[0, max]"),
        (vec!["ledger", "prove", d, "--entry", "nan"], "[0, max]"),
        (
            vec!["ledger", "prove", d, "--entry", "18446744073709551616"],
            "[0, max]",
        ),
        (
            vec!["ledger", "prove", d, "--entry", "1", "--out", &nowhere],
            "does not exist",
        ),
        (
            vec!["ledger", "prove", d, "--entry", "1", "--out", &inside],
            "inside the ledger directory",
        ),
        (
            vec!["ledger", "prove", d, "--entry", "1", "--out", d],
            "is a directory",
        ),
        (vec!["ledger", "show", d, "--entries", "-5"], "[0, max]"),
        (vec!["ledger", "show", d, "--entries", "inf"], "[0, max]"),
        (
            vec![
                "ledger",
                "demo",
                &new,
                "--start-time",
                "18446744073709551615",
            ],
            "[0, 4102444800]",
        ),
        (
            vec!["ledger", "demo", &new, "--start-time", "-1"],
            "[0, 4102444800]",
        ),
        (vec!["ledger", "demo", &new, "--seed", "-1"], "[0, max]"),
        (
            vec!["ledger", "demo", &new, "--origin", "has space"],
            "without spaces",
        ),
        (
            vec!["ledger", "demo", &new, "--origin", ""],
            "without spaces",
        ),
        (
            vec!["ledger", "demo", &new, "--origin", "a+b"],
            "without spaces",
        ),
        (vec!["bench", "ledger", "--entries", "0"], "[2, 2000000]"),
        (vec!["bench", "ledger", "--entries", "1"], "[2, 2000000]"),
        (
            vec!["bench", "ledger", "--entries", "1000000000000000000"],
            "[2, 2000000]",
        ),
        (vec!["bench", "ledger", "--batch", "0"], "[1, 100000]"),
        (vec!["bench", "ledger", "--proofs", "0"], "[1, 10000000]"),
        (vec!["bench", "ledger", "--proofs", "nan"], "[1, 10000000]"),
        (
            vec!["bench", "ledger", "--json", &nowhere],
            "does not exist",
        ),
        (
            vec!["bench", "ledger", "--dir", d],
            "already holds a ledger",
        ),
    ];
    for (args, want) in refused {
        let o = cohort(&args);
        assert_eq!(code(&o), 2, "{args:?}: {}", text(&o));
        assert!(text(&o).contains(want), "{args:?}: {}", text(&o));
    }
    assert!(
        !tmp.path().join("new").exists(),
        "a refused demo made its directory"
    );
    assert_eq!(hashes(&dir), before, "a refused command changed the ledger");

    // `ledger demo` on an existing ledger, or on a file: refused, saying each thing once, and
    // nothing changed.
    let o = cohort(&["ledger", "demo", d]);
    assert_eq!(code(&o), 2);
    assert_eq!(text(&o).matches(d).count(), 1, "{}", text(&o));
    assert!(text(&o).contains("nothing was changed"), "{}", text(&o));
    assert_eq!(hashes(&dir), before);
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "keep").unwrap();
    let o = cohort(&["ledger", "demo", p(&file)]);
    assert_eq!(code(&o), 2);
    assert!(text(&o).contains("is not a directory"), "{}", text(&o));
    assert!(
        !text(&o).contains("os error 17): File exists"),
        "{}",
        text(&o)
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"keep");
    // A directory holding only a stray operator.key is not taken over either.
    let stray = tmp.path().join("stray");
    std::fs::create_dir(&stray).unwrap();
    std::fs::write(stray.join("operator.key"), "x").unwrap();
    let o = cohort(&["ledger", "demo", p(&stray)]);
    assert_eq!(code(&o), 2, "{}", text(&o));
    assert_eq!(std::fs::read(stray.join("operator.key")).unwrap(), b"x");
    assert!(!stray.join("ledger.redb").exists());
}
