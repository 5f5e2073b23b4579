//! `cohort serve-layers` and `cohort model lora --pipeline`: three stage-server processes
//! hold a GPT's layers; a client trains a LoRA adapter through them over loopback gRPC and
//! gets, bit for bit, the adapter single-process training writes (with adapter dropout, so
//! that the dropout keys travel too). What does not fit is refused by name.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::{cohort, p, text};

/// A stage server for `layers` of the model in `dir`; killed when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(dir: &Path, layers: &str) -> Server {
    serve_with(dir, layers, &[])
}

fn serve_with(dir: &Path, layers: &str, extra: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cohort"))
        .args([
            "serve-layers",
            p(dir),
            "--layers",
            layers,
            "--listen",
            "127.0.0.1:0",
            "--insecure",
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // "serving layers A..B of DIR (N layers) on HOST:PORT"
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line.trim().rsplit(' ').next().unwrap().to_owned();
    assert!(line.starts_with("serving layers"), "{line}");
    Server {
        child,
        url: format!("http://{addr}"),
    }
}

#[test]
fn three_stage_servers_train_the_adapter_single_process_training_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/data/tinyshakespeare/input.txt"
    );
    let text_file = tmp.path().join("text.txt");
    let all = std::fs::read_to_string(corpus).unwrap();
    std::fs::write(&text_file, &all[..60_000]).unwrap();
    let model = tmp.path().join("model");
    let o = cohort(&[
        "model",
        "pretrain",
        "--corpus",
        p(&text_file),
        "--preset",
        "tiny",
        "--out",
        p(&model),
        "--steps",
        "3",
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));

    let servers: Vec<Server> = ["0..1", "1..3", "3..4"]
        .iter()
        .map(|l| serve(&model, l))
        .collect();
    let urls: Vec<&str> = servers.iter().map(|s| s.url.as_str()).collect();
    let lora = |out: &Path, extra: &[&str]| {
        let mut a = vec![
            "model",
            "lora",
            p(&model),
            "--data",
            p(&text_file),
            "--out",
            p(out),
            "--steps",
            "4",
            "--batch",
            "4",
            "--dropout",
            "0.1",
            "--json",
        ];
        a.extend(extra);
        cohort(&a)
    };
    let single = tmp.path().join("single");
    let o = lora(&single, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let piped = tmp.path().join("piped");
    let list = urls.join(",");
    let o = lora(&piped, &["--pipeline", &list, "--insecure"]);
    assert!(o.status.success(), "{}", text(&o));
    let a = std::fs::read(single.join("adapter_model.safetensors")).unwrap();
    let b = std::fs::read(piped.join("adapter_model.safetensors")).unwrap();
    assert!(
        a == b,
        "the pipelined adapter differs from the single-process one"
    );

    // Verification: a verifier holding layers 1..3 recomputes every forward call of that
    // stage (rate 1) and finds them equal; the adapter is the same.
    let key = |name: &str| {
        let f = tmp.path().join(format!("{name}.key"));
        let o = cohort(&["keys", "new", "--out", p(&f), "--json"]);
        assert!(o.status.success(), "{}", text(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        (f, v["public_key"].as_str().unwrap().to_owned())
    };
    let (verifier_key, verifier_public) = key("verifier");
    let verifier = serve_with(&model, "1..3", &["--key", p(&verifier_key)]);
    let checked = tmp.path().join("checked");
    let o = lora(
        &checked,
        &[
            "--pipeline",
            &list,
            "--insecure",
            "--verifiers",
            &verifier.url,
            "--verify-rate",
            "1",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["verification"]["checked"], 4, "{v}");
    assert_eq!(v["verification"]["calls"], 12, "{v}");
    // Every row of those 4 calls of 4 sequences, of the 48 rows of all calls.
    assert_eq!(v["verification"]["rows_checked"], 16, "{v}");
    assert_eq!(v["verification"]["rows"], 48, "{v}");
    assert!(std::fs::read(checked.join("adapter_model.safetensors")).unwrap() == a);
    // A dishonest middle server is caught, and nothing is written but the evidence: one
    // perturbing its outputs by 1e-2, one replaying its first output, one of lower precision
    // (bfloat16 outputs), one running a smaller model (its layers but the last). The evidence
    // holds its signed commitment and the verifier's signed recomputation, under their keys.
    let (liar_key, liar_public) = key("liar");
    for how in ["noise=0.01", "stale", "bf16", "skip-layer"] {
        let liar = serve_with(&model, "1..3", &["--misbehave", how, "--key", p(&liar_key)]);
        let evidence = tmp
            .path()
            .join(format!("evidence-{}.json", how.replace('=', "-")));
        let routed = format!("{},{},{}", urls[0], liar.url, urls[2]);
        let out = tmp.path().join(format!("lied-{}", how.replace('=', "-")));
        let o = lora(
            &out,
            &[
                "--pipeline",
                &routed,
                "--insecure",
                "--verifiers",
                &verifier.url,
                "--verify-rate",
                "1",
                "--evidence",
                p(&evidence),
            ],
        );
        assert!(!o.status.success(), "{how}: not caught");
        let e: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&evidence).unwrap()).unwrap();
        assert_eq!(e["server_key"], liar_public.as_str(), "{e}");
        assert_eq!(e["verifier_key"], verifier_public.as_str(), "{e}");
        assert_ne!(e["committed"], e["recomputed"], "{e}");
        for sig in ["server_signature", "verifier_signature"] {
            assert_eq!(e[sig].as_str().map(str::len), Some(128), "{sig}: {e}");
        }
        assert!(
            text(&o).contains("differs from verifier"),
            "{how}: {}",
            text(&o)
        );
        assert!(!out.exists(), "{how}: something was written");
    }

    // Refused by name before any step: the servers out of order, a gap, plain http without
    // --insecure, a server that is not there.
    let bad = tmp.path().join("bad");
    for (list, extra, why) in [
        (
            format!("{},{},{}", urls[1], urls[0], urls[2]),
            vec!["--insecure"],
            "the next stage must start at layer 0",
        ),
        (
            format!("{},{}", urls[0], urls[1]),
            vec!["--insecure"],
            "the servers hold layers 0..3; the model has 4",
        ),
        (list.clone(), vec![], "plain http needs --insecure"),
        (
            "http://127.0.0.1:1".to_owned(),
            vec!["--insecure"],
            "stage server http://127.0.0.1:1",
        ),
    ] {
        let mut extra = extra;
        extra.extend(["--pipeline", list.as_str()]);
        let o = lora(&bad, &extra);
        assert!(!o.status.success(), "{list}");
        assert!(text(&o).contains(why), "{list}: {}", text(&o));
        assert!(!bad.exists(), "{list}: something was written");
    }
    // A layer range the model does not have.
    let o = cohort(&[
        "serve-layers",
        p(&model),
        "--layers",
        "2..9",
        "--listen",
        "127.0.0.1:0",
        "--insecure",
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("--layers \"2..9\""), "{}", text(&o));
}

/// `cohort bench verify` on real server processes: at a recompute rate of 0.1 of the rows,
/// each dishonest server (noise 1e-2, stale replay, bfloat16 outputs, a layer skipped) is
/// caught in every seeded trial within 50 calls, and an honest server on one thread is never
/// accused by a verifier on two.
#[test]
fn bench_verify_catches_every_dishonest_server_and_accuses_no_honest_one() {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("verify.json");
    let o = cohort(&[
        "bench",
        "verify",
        "--preset",
        "test",
        "--trials",
        "3",
        "--calls",
        "50",
        "--rate",
        "0.1",
        "--honest-calls",
        "40",
        "--cost-calls",
        "5",
        "--batch",
        "8",
        "--tokens",
        "16",
        "--json",
        p(&json),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let kinds: Vec<&str> = v["detection"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            assert_eq!(d["caught"], 3, "{d}");
            d["misbehave"].as_str().unwrap()
        })
        .collect();
    assert_eq!(kinds, ["noise=0.01", "stale", "bf16", "skip-layer"]);
    assert_eq!(v["honest"]["false_alarms"], 0, "{v}");
    assert!(v["honest"]["rows_checked"].as_u64().unwrap() > 40, "{v}");
    let share = v["cost"]["rows_share"].as_f64().unwrap();
    assert!((0.0..0.5).contains(&share), "{v}");
}
