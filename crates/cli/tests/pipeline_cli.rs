//! `cohort serve-layers` and `cohort model lora --pipeline`: three stage-server processes
//! hold a GPT's layers; a client trains a LoRA adapter through them over loopback gRPC and
//! gets, bit for bit, the adapter single-process training writes (with adapter dropout, so
//! that the dropout keys travel too), also when a server process dies mid-step and its
//! replacement replays the step. What does not fit is refused by name.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/stages.rs"]
mod stages;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{Server, cohort, p, serve, serve_with, text, tiny_llama, tiny_model};

/// Three `serve-layers` processes holding layers `0..1`, `1..3` and `3..4` of `model`, and
/// their URLs as `--pipeline` takes them.
fn three_stages(model: &Path) -> (Vec<Server>, String) {
    let servers: Vec<Server> = ["0..1", "1..3", "3..4"]
        .iter()
        .map(|l| serve(model, l))
        .collect();
    let list = servers
        .iter()
        .map(|s| s.url.as_str())
        .collect::<Vec<_>>()
        .join(",");
    (servers, list)
}

/// `cohort model lora` on `model` and `text_file`, 4 steps with adapter dropout, to `out`,
/// with `extra` arguments.
fn lora(model: &Path, text_file: &Path, out: &Path, extra: &[&str]) -> Output {
    cohort(&lora_args(model, text_file, out, extra))
}

/// The arguments of [`lora`].
fn lora_args<'a>(
    model: &'a Path,
    text_file: &'a Path,
    out: &'a Path,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut a = vec![
        "model",
        "lora",
        p(model),
        "--data",
        p(text_file),
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
    a
}

#[test]
fn three_stage_servers_train_the_adapter_single_process_training_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, text_file) = tiny_model(tmp.path());
    let (servers, _) = three_stages(&model);
    let urls: Vec<&str> = servers.iter().map(|s| s.url.as_str()).collect();
    let lora = |out: &Path, extra: &[&str]| lora(&model, &text_file, out, extra);
    let single = tmp.path().join("single");
    let single_out = lora(&single, &[]);
    assert!(single_out.status.success(), "{}", text(&single_out));
    let piped = tmp.path().join("piped");
    let list = urls.join(",");
    let o = lora(&piped, &["--pipeline", &list, "--insecure"]);
    assert!(o.status.success(), "{}", text(&o));
    // The evaluations before and after training ran through the servers (the client holds
    // no layer): the same losses as in one process, but for rounding (another pass computes
    // them there).
    let single_json: serde_json::Value = serde_json::from_slice(&single_out.stdout).unwrap();
    let piped_json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for key in ["base_val_loss", "val_loss"] {
        let (x, y) = (
            single_json[key].as_f64().unwrap(),
            piped_json[key].as_f64().unwrap(),
        );
        assert!((x - y).abs() <= 1e-5 * x.abs(), "{key}: {x} against {y}");
    }
    let a = std::fs::read(single.join("adapter_model.safetensors")).unwrap();
    let b = std::fs::read(piped.join("adapter_model.safetensors")).unwrap();
    assert!(
        a == b,
        "the pipelined adapter differs from the single-process one"
    );
    // Greedy generation through the servers, with the adapter and without: token for token
    // what one process generates.
    for adapter in [None, Some(&single)] {
        let mut args = vec![
            "model",
            "generate",
            p(&model),
            "--prompt",
            "ROMEO:",
            "--max-new",
            "24",
            "--json",
        ];
        if let Some(a) = adapter {
            args.extend(["--adapter", p(a)]);
        }
        let here = cohort(&args);
        assert!(here.status.success(), "{}", text(&here));
        args.extend(["--pipeline", &list, "--insecure"]);
        let there = cohort(&args);
        assert!(there.status.success(), "{}", text(&there));
        let ids = |o: &Output| -> serde_json::Value {
            serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["completion_ids"]
                .clone()
        };
        assert_eq!(ids(&here).as_array().map(Vec::len), Some(24));
        assert_eq!(ids(&here), ids(&there), "adapter {adapter:?}");
        // And evaluation: the same loss, but for rounding.
        let mut args = vec![
            "model",
            "eval",
            p(&model),
            "--data",
            p(&text_file),
            "--max-windows",
            "8",
            "--json",
        ];
        if let Some(a) = adapter {
            args.extend(["--adapter", p(a)]);
        }
        let here = cohort(&args);
        assert!(here.status.success(), "{}", text(&here));
        args.extend(["--pipeline", &list, "--insecure"]);
        let there = cohort(&args);
        assert!(there.status.success(), "{}", text(&there));
        let loss = |o: &Output| {
            serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["loss"]
                .as_f64()
                .unwrap()
        };
        let (x, y) = (loss(&here), loss(&there));
        assert!(
            (x - y).abs() <= 1e-5 * x,
            "eval, adapter {adapter:?}: {x} against {y}"
        );
    }

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
    // The evaluations before and after training go through the servers too, so there are
    // more calls than the 4 steps' 12; the verifier holds one stage of three and checks
    // every row of its calls.
    let (calls, rows) = (&v["verification"]["calls"], &v["verification"]["rows"]);
    let (calls, rows) = (calls.as_u64().unwrap(), rows.as_u64().unwrap());
    assert!(calls > 12 && calls % 3 == 0, "{v}");
    assert_eq!(v["verification"]["checked"], calls / 3, "{v}");
    assert_eq!(v["verification"]["rows_checked"], rows / 3, "{v}");
    // And every backward of that stage, whole: 4 of the 12.
    assert_eq!(v["verification"]["backwards"], 12, "{v}");
    assert_eq!(v["verification"]["backwards_checked"], 4, "{v}");
    assert_eq!(v["replays"], 0, "{v}");
    assert!(std::fs::read(checked.join("adapter_model.safetensors")).unwrap() == a);
    // A dishonest middle server is caught, and nothing is written but the evidence: one
    // perturbing its outputs by 1e-2, one replaying its first output, one of lower precision
    // (bfloat16 outputs), one running a smaller model (its layers but the last), one
    // perturbing the gradients its backward returns. The evidence of a forward holds its
    // signed commitment and the verifier's signed recomputation, under their keys.
    let (liar_key, liar_public) = key("liar");
    for how in [
        "noise=0.01",
        "stale",
        "bf16",
        "skip-layer",
        "grad-noise=0.01",
    ] {
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
        assert!(!out.exists(), "{how}: something was written");
        let e: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&evidence).unwrap()).unwrap();
        assert_eq!(e.as_array().map(Vec::len), Some(1), "{e}");
        let e = &e[0];
        assert_eq!(e["server"], liar.url.as_str(), "{e}");
        assert_eq!(e["server_key"], liar_public.as_str(), "{e}");
        assert_eq!(e["verifier_key"], verifier_public.as_str(), "{e}");
        for sig in ["server_signature", "verifier_signature"] {
            assert_eq!(e[sig].as_str().map(str::len), Some(128), "{sig}: {e}");
        }
        if how.starts_with("grad-noise") {
            // Caught in the first backward, recomputed whole.
            assert_eq!(e["phase"], "backward", "{e}");
            assert_eq!(e["differs"], "the gradient of its input", "{e}");
            assert_ne!(e["server_digest"], e["verifier_digest"], "{e}");
            assert!(
                text(&o).contains("answered the backward of step 1"),
                "{how}: {}",
                text(&o)
            );
        } else {
            assert_eq!(e["phase"], "forward", "{e}");
            assert_ne!(e["committed"], e["recomputed"], "{e}");
            assert!(
                text(&o).contains("differs from verifier"),
                "{how}: {}",
                text(&o)
            );
        }
        assert!(!out.exists(), "{how}: something was written");
    }
    // Routed around: a dishonest middle server listed with an honest spare is caught at its
    // first call, dropped, and the call replayed on the spare; the training ends with the
    // single-process adapter, and the evidence names the liar.
    let liar = serve_with(
        &model,
        "1..3",
        &["--misbehave", "noise=0.01", "--key", p(&liar_key)],
    );
    let spare = serve(&model, "1..3");
    let routed = format!("{},{}|{},{}", urls[0], liar.url, spare.url, urls[2]);
    let out = tmp.path().join("routed");
    let evidence = tmp.path().join("routed-evidence.json");
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
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("routing around it"), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["caught"], serde_json::json!([liar.url]), "{v}");
    assert!(std::fs::read(out.join("adapter_model.safetensors")).unwrap() == a);
    let e: serde_json::Value = serde_json::from_slice(&std::fs::read(&evidence).unwrap()).unwrap();
    assert_eq!(e[0]["server"], liar.url.as_str(), "{e}");
    assert_eq!(e[0]["step"], 1, "{e}");

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
    assert_eq!(
        kinds,
        [
            "noise=0.01",
            "stale",
            "bf16",
            "skip-layer",
            "grad-noise=0.01"
        ]
    );
    assert_eq!(v["honest"]["false_alarms"], 0, "{v}");
    assert!(v["honest"]["rows_checked"].as_u64().unwrap() > 40, "{v}");
    let share = v["cost"]["rows_share"].as_f64().unwrap();
    assert!((0.0..0.5).contains(&share), "{v}");
}

/// Whether `server`'s process has exited with status 3, as a `--misbehave crash-*` server
/// does; it is waited for up to 10 s (it exits as the client's call reaches it).
fn crashed(server: &mut Server) -> bool {
    for _ in 0..200 {
        if let Some(status) = server.child.try_wait().unwrap() {
            return status.code() == Some(3);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    false
}

#[test]
fn a_stage_server_that_dies_mid_step_is_replaced_and_the_step_replayed_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, text_file) = tiny_model(tmp.path());
    let lora = |out: &Path, extra: &[&str]| lora(&model, &text_file, out, extra);
    let single = tmp.path().join("single");
    let single_out = lora(&single, &[]);
    assert!(single_out.status.success(), "{}", text(&single_out));
    let want = std::fs::read(single.join("adapter_model.safetensors")).unwrap();
    let first = serve(&model, "0..1");
    let last = serve(&model, "3..4");

    // The middle server's process exits on its third forward (backward) call, in step 3; its
    // replacement takes the step over, and the adapter is single-process training's.
    for (how, phase) in [
        ("crash-forward=3", "forward"),
        ("crash-backward=3", "backward"),
    ] {
        let mut dying = serve_with(&model, "1..3", &["--misbehave", how]);
        let spare = serve(&model, "1..3");
        let list = format!("{},{}|{},{}", first.url, dying.url, spare.url, last.url);
        let out = tmp.path().join(format!("replayed-{phase}"));
        let o = lora(&out, &["--pipeline", &list, "--insecure"]);
        assert!(o.status.success(), "{how}: {}", text(&o));
        assert!(crashed(&mut dying), "{how}: the server did not crash");
        let said = String::from_utf8_lossy(&o.stderr);
        let line = said
            .lines()
            .find(|l| l.starts_with("pipeline: "))
            .unwrap_or_else(|| panic!("{how}: no failover line: {said}"));
        for part in [
            dying.url.as_str(),
            &format!("the {phase} of step 3"),
            "layers 1..3",
            &format!("replaying it on the replacement {}", spare.url),
        ] {
            assert!(line.contains(part), "{how}: {part:?} not in {line:?}");
        }
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["replays"], 1, "{how}: {v}");
        let got = std::fs::read(out.join("adapter_model.safetensors")).unwrap();
        assert!(
            got == want,
            "{how}: the adapter differs from the single-process one"
        );
    }

    // A replacement that replays a forward for a backward must give the output the failed
    // server gave: a noisy one is caught, and nothing is written.
    let mut dying = serve_with(&model, "1..3", &["--misbehave", "crash-backward=3"]);
    let liar = serve_with(&model, "1..3", &["--misbehave", "noise=0.01"]);
    let list = format!("{},{}|{},{}", first.url, dying.url, liar.url, last.url);
    let out = tmp.path().join("replayed-by-a-liar");
    let o = lora(&out, &["--pipeline", &list, "--insecure"]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(crashed(&mut dying), "the server did not crash");
    let why = format!(
        "stage server {} (layers 1..3), replaying the forward of step 3 for its backward, gave \
         an output that differs from the one {} gave",
        liar.url, dying.url
    );
    assert!(text(&o).contains(&why), "{}", text(&o));
    assert!(!out.exists(), "something was written");

    // Without a replacement, the crash stops the training, naming the server, and nothing is
    // written.
    let mut dying = serve_with(&model, "1..3", &["--misbehave", "crash-forward=3"]);
    let list = format!("{},{},{}", first.url, dying.url, last.url);
    let out = tmp.path().join("unreplaced");
    let o = lora(&out, &["--pipeline", &list, "--insecure"]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(crashed(&mut dying), "the server did not crash");
    for part in [
        format!("stage server {}", dying.url),
        "the forward of step 3".to_owned(),
        "no replacement is left".to_owned(),
        "nothing was written".to_owned(),
        "`|`".to_owned(),
    ] {
        assert!(text(&o).contains(&part), "{part:?} not in {}", text(&o));
    }
    assert!(!out.exists(), "something was written");

    // A replacement holding other layers is refused by name before any step: the stage's
    // server, which would crash on its first forward call, is still running after.
    let mut primed = serve_with(&model, "1..3", &["--misbehave", "crash-forward=1"]);
    let wrong = serve(&model, "0..1");
    let list = format!("{},{}|{},{}", first.url, primed.url, wrong.url, last.url);
    let out = tmp.path().join("wrong-replacement");
    let o = lora(&out, &["--pipeline", &list, "--insecure"]);
    assert!(!o.status.success(), "{}", text(&o));
    let why = format!(
        "--pipeline {}: a replacement for {} (layers 1..3), it holds layers 0..1",
        wrong.url, primed.url
    );
    assert!(text(&o).contains(&why), "{}", text(&o));
    assert!(!out.exists(), "something was written");
    assert!(
        primed.child.try_wait().unwrap().is_none(),
        "a step was sent before the refusal"
    );
    // A server listed twice is refused by name too.
    let list = format!("{},{}|{},{}", first.url, primed.url, primed.url, last.url);
    let o = lora(&out, &["--pipeline", &list, "--insecure"]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("--pipeline {}: listed twice", primed.url)),
        "{}",
        text(&o)
    );
    assert!(primed.child.try_wait().unwrap().is_none());
}

#[cfg(unix)]
#[test]
fn a_stage_server_that_hangs_is_replaced_after_the_stage_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, text_file) = tiny_model(tmp.path());
    let single = tmp.path().join("single");
    let o = lora(&model, &text_file, &single, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let want = std::fs::read(single.join("adapter_model.safetensors")).unwrap();
    let servers: Vec<Server> = ["0..1", "1..3", "1..3", "3..4"]
        .iter()
        .map(|l| serve(&model, l))
        .collect();
    let list = format!(
        "{},{}|{},{}",
        servers[0].url, servers[1].url, servers[2].url, servers[3].url
    );
    let out = tmp.path().join("replayed");
    let args = lora_args(
        &model,
        &text_file,
        &out,
        &[
            "--pipeline",
            &list,
            "--insecure",
            "--stage-timeout",
            "1",
            "--log-every",
            "1",
        ],
    );
    let mut client = Command::new(env!("CARGO_BIN_EXE_cohort"))
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = client.stdout.take().unwrap();
    let json = std::thread::spawn(move || {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut b).unwrap();
        b
    });
    // Once step 1 is done, the middle server is stopped (SIGSTOP): its connection stays open
    // and it answers nothing, as a hung server; steps 2 to 4 remain.
    let mut said = String::new();
    let mut stopped = false;
    for line in BufReader::new(client.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        if !stopped && line.starts_with("step 1/") {
            let s = Command::new("kill")
                .args(["-STOP", &servers[1].child.id().to_string()])
                .status()
                .unwrap();
            assert!(s.success());
            stopped = true;
        }
        said.push_str(&line);
        said.push('\n');
    }
    let status = client.wait().unwrap();
    let json = json.join().unwrap();
    assert!(stopped, "no progress line for step 1: {said}");
    assert!(status.success(), "{said}");
    let line = said
        .lines()
        .find(|l| l.starts_with("pipeline: "))
        .unwrap_or_else(|| panic!("no failover line: {said}"));
    let why = format!("stage server {}: no answer within 1 s", servers[1].url);
    assert!(line.contains(&why), "{line}");
    assert!(line.contains(&servers[2].url), "{line}");
    let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(v["replays"], 1, "{v}");
    let got = std::fs::read(out.join("adapter_model.safetensors")).unwrap();
    assert!(
        got == want,
        "the adapter differs from the single-process one"
    );
}

/// A stage served as truncated SVD factors (`serve-layers --svd-rank`): the client is told,
/// training and evaluation run through it (an approximation: not one process's results), a
/// verifier at the same rank finds every row equal, and a verifier or a replacement at
/// another rank is refused before any step.
#[test]
fn an_svd_stage_serves_factored_layers_and_its_verifiers_must_match_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, text_file) = tiny_model(tmp.path());
    let first = serve(&model, "0..1");
    let factored = serve_with(&model, "1..3", &["--svd-rank", "48"]);
    let last = serve(&model, "3..4");
    let list = format!("{},{},{}", first.url, factored.url, last.url);
    let run = |out: &Path, extra: &[&str]| {
        let mut a = lora_args(&model, &text_file, out, &[]);
        a.extend(extra);
        cohort(&a)
    };
    let single = run(&tmp.path().join("single"), &[]);
    assert!(single.status.success(), "{}", text(&single));
    let verifier = serve_with(&model, "1..3", &["--svd-rank", "48"]);
    let o = run(
        &tmp.path().join("svd"),
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
    assert!(text(&o).contains("rank-48 SVD factors"), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let s: serde_json::Value = serde_json::from_slice(&single.stdout).unwrap();
    let (a, b) = (
        v["base_val_loss"].as_f64().unwrap(),
        s["base_val_loss"].as_f64().unwrap(),
    );
    assert!(a.is_finite() && a != b, "{a} against {b}");
    assert!(
        v["verification"]["rows_checked"].as_u64().unwrap() > 0,
        "{v}"
    );
    assert_eq!(v["caught"], serde_json::json!([]), "{v}");
    // Another rank, as a verifier or as a replacement: refused by name before any step.
    let dense = serve(&model, "1..3");
    let bad = tmp.path().join("bad");
    let o = run(
        &bad,
        &["--pipeline", &list, "--insecure", "--verifiers", &dense.url],
    );
    assert!(!o.status.success());
    assert!(
        text(&o).contains("a verifier must compute what the stage computes"),
        "{}",
        text(&o)
    );
    let spare = format!("{},{}|{},{}", first.url, factored.url, dense.url, last.url);
    let o = run(&bad, &["--pipeline", &spare, "--insecure"]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("a replacement must compute what its stage computes"),
        "{}",
        text(&o)
    );
    assert!(!bad.exists());
}

/// Streams and gradients as int8 (`--compress int8`): about a quarter of the bytes of f32,
/// the training goes on (an approximation: not one process's losses), and a verifier at rate 1
/// recomputing every row and backward through the same encoding finds them all equal.
#[test]
fn int8_streams_cut_the_bytes_by_three_quarters_and_verify_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, text_file) = tiny_model(tmp.path());
    let (_servers, list) = three_stages(&model);
    let verifier = serve(&model, "1..3");
    let run = |name: &str, extra: &[&str]| {
        let out = tmp.path().join(name);
        let mut a = lora_args(
            &model,
            &text_file,
            &out,
            &["--pipeline", &list, "--insecure"],
        );
        a.extend(extra);
        let o = cohort(&a);
        assert!(o.status.success(), "{}", text(&o));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    let f32s = run("f32", &[]);
    let int8 = run(
        "int8",
        &[
            "--compress",
            "int8",
            "--verifiers",
            &verifier.url,
            "--verify-rate",
            "1",
        ],
    );
    let (a, b) = (
        f32s["stream_bytes"].as_u64().unwrap(),
        int8["stream_bytes"].as_u64().unwrap(),
    );
    // 129 bytes a row of 128 values instead of 512.
    assert_eq!(b * 512, a * 129, "{a} against {b}");
    assert_eq!(int8["caught"], serde_json::json!([]), "{int8}");
    assert!(int8["verification"]["backwards_checked"].as_u64().unwrap() > 0);
    let (x, y) = (
        f32s["val_loss"].as_f64().unwrap(),
        int8["val_loss"].as_f64().unwrap(),
    );
    assert!(y.is_finite() && (x - y).abs() < 0.05 * x, "{x} against {y}");
    // The entropy-coded encodings, int5-3's and q15/9sc's gradients rounded stochastically
    // from a seed the server and its verifier derive alike (q15/9sc's with one scale for the
    // call): an eighth of the bytes or less, and a verifier recomputing every row and backward
    // still finds them all equal.
    for codec in ["int4", "int5-3", "q15/9sc"] {
        let v = run(
            &codec.replace('/', "_"),
            &[
                "--compress",
                codec,
                "--verifiers",
                &verifier.url,
                "--verify-rate",
                "1",
            ],
        );
        let b = v["stream_bytes"].as_u64().unwrap();
        assert!(b * 8 < a, "{codec}: {b} bytes against {a}");
        assert_eq!(v["caught"], serde_json::json!([]), "{codec}: {v}");
        assert!(v["verification"]["backwards_checked"].as_u64().unwrap() > 0);
        let y = v["val_loss"].as_f64().unwrap();
        assert!(
            y.is_finite() && (x - y).abs() < 0.05 * x,
            "{codec}: {x} against {y}"
        );
    }
}

/// `cohort model calibrate` writes the model's stream bases; servers and a client holding
/// them send activations as coefficients in them (`k`): a verifier recomputing every row and
/// backward finds them all equal, the bytes are fewer than the same steps channel by channel,
/// and the model trains as through f32 streams. A client without the bases, a server with
/// other bases, and bases that do not read are refused by name, before any step.
#[test]
fn activations_in_stream_bases_verify_exactly_and_need_the_same_bases() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, text_file) = tiny_model(tmp.path());
    // The same model without bases, and with other bases.
    let copy = |name: &str| {
        let d = tmp.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        for e in std::fs::read_dir(&model).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() {
                std::fs::copy(e.path(), d.join(e.file_name())).unwrap();
            }
        }
        d
    };
    let bare = copy("bare");
    let calibrate = |dir: &Path, extra: &[&str]| {
        let mut a = vec![
            "model",
            "calibrate",
            p(dir),
            "--data",
            p(&text_file),
            "--json",
        ];
        a.extend(extra);
        cohort(&a)
    };
    let o = calibrate(&model, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        report["boundaries"].as_array().unwrap().len(),
        5,
        "{report}"
    );
    let file = model.join("stream_bases.safetensors");
    let written = std::fs::read(&file).unwrap();
    // Measured again only with --force; refused, the file is unchanged.
    let o = calibrate(&model, &[]);
    assert!(
        !o.status.success() && text(&o).contains("--force"),
        "{}",
        text(&o)
    );
    assert_eq!(std::fs::read(&file).unwrap(), written);
    for bad in [
        &["--batches", "0"][..],
        &["--seq-len", "1"],
        &["--batch", "x"],
    ] {
        let o = calibrate(&bare, bad);
        assert!(!o.status.success(), "{bad:?}: {}", text(&o));
    }
    assert!(!bare.join("stream_bases.safetensors").exists());
    let other = copy("other");
    std::fs::remove_file(other.join("stream_bases.safetensors")).unwrap();
    let o = calibrate(&other, &["--batches", "1", "--batch", "2"]);
    assert!(o.status.success(), "{}", text(&o));

    let (_servers, list) = three_stages(&model);
    let verifier = serve(&model, "1..3");
    let run = |dir: &Path, name: &str, list: &str, extra: &[&str]| {
        let out = tmp.path().join(name);
        let mut a = lora_args(dir, &text_file, &out, &["--pipeline", list, "--insecure"]);
        a.extend(extra);
        (cohort(&a), out)
    };
    let (o, _) = run(&model, "f32", &list, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let f32s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let codec = "q63/9sckr";
    let (o, _) = run(
        &model,
        "k",
        &list,
        &[
            "--compress",
            codec,
            "--verifiers",
            &verifier.url,
            "--verify-rate",
            "1",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let k: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(k["caught"], serde_json::json!([]), "{k}");
    assert!(k["verification"]["backwards_checked"].as_u64().unwrap() > 0);
    let (a, b) = (
        f32s["stream_bytes"].as_u64().unwrap(),
        k["stream_bytes"].as_u64().unwrap(),
    );
    assert!(b * 8 < a, "{b} bytes against {a}");
    let (x, y) = (
        f32s["val_loss"].as_f64().unwrap(),
        k["val_loss"].as_f64().unwrap(),
    );
    assert!(y.is_finite() && (x - y).abs() < 0.02 * x, "{x} against {y}");
    // The same steps channel by channel cost more bytes.
    let (o, _) = run(&model, "channels", &list, &["--compress", "q63/9scr"]);
    assert!(o.status.success(), "{}", text(&o));
    let channels: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        b < channels["stream_bytes"].as_u64().unwrap(),
        "{b} bytes in the bases against {channels}"
    );

    // A client without the bases; servers holding other bases.
    let (o, out) = run(&bare, "out-bare", &list, &["--compress", codec]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("cohort model calibrate"), "{}", text(&o));
    assert!(!out.exists());
    let others = serve(&other, "0..1");
    let rest = list.split_once(',').unwrap().1;
    let others_list = format!("{},{rest}", others.url);
    let (o, out) = run(&model, "out-others", &others_list, &["--compress", codec]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("stream bases"), "{}", text(&o));
    assert!(!out.exists());
    // Bases that do not read: the server does not start, naming the file.
    std::fs::write(other.join("stream_bases.safetensors"), b"garbage").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_cohort"))
        .args(["serve-layers", p(&other), "--layers", "0..1"])
        .args(["--listen", "127.0.0.1:0", "--insecure"])
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("stream_bases.safetensors"),
        "{}",
        text(&o)
    );
    // A benchmark preset's random model has no bases: refused before it is written.
    let o = cohort(&[
        "bench",
        "pipeline",
        "--preset",
        "tiny",
        "--steps",
        "1",
        "--compress",
        codec,
    ]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("--model DIR"), "{}", text(&o));
}

/// A verifier must be of the compute kind (build, architecture, instruction sets) of the
/// servers it checks: recomputation is bit for bit only within one kind, and a verifier of
/// another would accuse honest servers. A server announcing another kind is refused as the
/// verifier's pair before any step, and nothing is written.
#[test]
fn verifiers_must_be_of_their_servers_compute_kind() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, text_file) = tiny_model(tmp.path());
    let odd = serve_with(&model, "0..2", &["--misbehave", "other-kind"]);
    let last = serve(&model, "2..4");
    let verifier = serve(&model, "0..2");
    let list = format!("{},{}", odd.url, last.url);
    let out = tmp.path().join("out");
    let mut a = lora_args(
        &model,
        &text_file,
        &out,
        &["--pipeline", &list, "--insecure"],
    );
    a.extend(["--verifiers", verifier.url.as_str()]);
    let o = cohort(&a);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("a verifier must be of its servers' kind"),
        "{}",
        text(&o)
    );
    assert!(!out.exists());
    // Without verifiers it serves (it computes honestly).
    let o = cohort(&lora_args(
        &model,
        &text_file,
        &out,
        &["--pipeline", &list, "--insecure"],
    ));
    assert!(o.status.success(), "{}", text(&o));
}

/// From a dishonest server's answer to its slashing, with real processes: a middle server
/// that adds noise, caught by the first of two verifiers of its layers; both recompute the
/// same rows, the client writes their two signed claims of the same call (`--evidence`), each
/// verifier attests its own with `cohort stage attest`, and the quorum of two slashes the
/// server on the ledger.
#[test]
fn a_cheating_stage_server_is_caught_and_slashed_by_a_quorum_of_verifiers() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, text_file) = tiny_model(tmp.path());
    let w = stages::world(tmp.path());
    // stage-2 cheats; stage-1 and stage-3 verify its layers; stage-4 and the client's key
    // serve the first and the last layer.
    let (cheat, v1, v2) = (&w.servers[1], &w.servers[0], &w.servers[2]);
    let (head, tail) = (&w.servers[3], &w.client);
    let first = serve_with(&model, "0..1", &["--key", p(&head.key)]);
    let liar = serve_with(
        &model,
        "1..3",
        &["--misbehave", "noise=0.01", "--key", p(&cheat.key)],
    );
    let last = serve_with(&model, "3..4", &["--key", p(&tail.key)]);
    let verifiers: Vec<Server> = [v1, v2]
        .iter()
        .map(|v| serve_with(&model, "1..3", &["--key", p(&v.key)]))
        .collect();
    let stage = |args: &[&str]| {
        let mut a = vec!["stage"];
        a.extend_from_slice(args);
        a.push("--json");
        let o = cohort(&a);
        assert!(o.status.success(), "cohort {}: {}", a.join(" "), text(&o));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    let at = |t: u64| (stages::START + t).to_string();
    let ledger = p(&w.ledger).to_owned();
    let l = ledger.as_str();
    // Before any declaration, --ledger refuses the pipeline: its servers are nobody there.
    let list = format!("{},{},{}", first.url, liar.url, last.url);
    let o = lora(
        &model,
        &text_file,
        &tmp.path().join("early"),
        &["--pipeline", &list, "--insecure", "--ledger", l],
    );
    assert!(!o.status.success());
    assert!(
        text(&o).contains("is not declared on it as a stage server"),
        "{}",
        text(&o)
    );
    register_stages(
        l,
        &model,
        &[
            (cheat, "1..3"),
            (v1, "1..3"),
            (v2, "1..3"),
            (head, "0..1"),
            (tail, "3..4"),
        ],
    );
    let evidence = tmp.path().join("claims.json");
    let list = format!("{},{},{}", first.url, liar.url, last.url);
    let vlist = format!("{},{}", verifiers[0].url, verifiers[1].url);
    let o = lora(
        &model,
        &text_file,
        &tmp.path().join("out"),
        &[
            "--pipeline",
            &list,
            "--insecure",
            "--verifiers",
            &vlist,
            "--verify-rate",
            "1",
            "--evidence",
            p(&evidence),
            "--ledger",
            l,
        ],
    );
    assert!(!o.status.success(), "not caught");
    let claims: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&evidence).unwrap()).unwrap();
    assert_eq!(claims.as_array().map(Vec::len), Some(2), "{claims}");
    assert_eq!(claims[0]["server_call"], claims[1]["server_call"]);
    for (i, v) in [v1, v2].iter().enumerate() {
        stage(&[
            "attest",
            "--ledger",
            l,
            "--key",
            p(&v.key),
            "--evidence",
            p(&evidence),
            "--claim",
            &i.to_string(),
            "--at",
            &at(2 + i as u64),
        ]);
    }
    let shown = stage(&["show", "--ledger", l, "--server", &cheat.addr()]);
    let server = &shown["servers"][0];
    assert_eq!(server["address"], cheat.json(), "{shown}");
    assert_eq!(server["active"], false, "{shown}");
    assert!(server["slash_claim"].is_string(), "{shown}");
    // A slashed server is refused before any step.
    let o = lora(
        &model,
        &text_file,
        &tmp.path().join("late"),
        &["--pipeline", &list, "--insecure", "--ledger", l],
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("was slashed for fraud"), "{}", text(&o));
}

/// Stage servers hold a Llama-family model's layers as they hold a GPT's: three
/// `serve-layers` processes train the adapter one process writes, bit for bit (adapter dropout
/// on, so that the dropout keys travel), generate its tokens, and a verifier catches a server
/// that perturbs its outputs.
#[test]
fn stage_servers_hold_a_llama_family_model_with_the_same_results() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, text_file) = {
        let text_file = tmp.path().join("text.txt");
        let all = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/data/tinyshakespeare/input.txt"
        ))
        .unwrap();
        std::fs::write(&text_file, &all[..20_000]).unwrap();
        ((), text_file)
    };
    let model = tiny_llama(tmp.path(), "qwen");
    let (servers, list) = three_stages(&model);
    let run = |out: &Path, extra: &[&str]| lora(&model, &text_file, out, extra);
    let single = tmp.path().join("single");
    let o = run(&single, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let single_json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let piped = tmp.path().join("piped");
    let o = run(&piped, &["--pipeline", &list, "--insecure"]);
    assert!(o.status.success(), "{}", text(&o));
    let piped_json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for key in ["base_val_loss", "val_loss"] {
        let (x, y) = (
            single_json[key].as_f64().unwrap(),
            piped_json[key].as_f64().unwrap(),
        );
        assert!((x - y).abs() <= 1e-5 * x.abs(), "{key}: {x} against {y}");
    }
    let a = std::fs::read(single.join("adapter_model.safetensors")).unwrap();
    let b = std::fs::read(piped.join("adapter_model.safetensors")).unwrap();
    assert!(
        a == b,
        "the pipelined adapter differs from the one-process one"
    );
    // Greedy generation with the adapter, token for token.
    let mut args = vec![
        "model",
        "generate",
        p(&model),
        "--prompt",
        "ROMEO:",
        "--max-new",
        "16",
        "--adapter",
        p(&single),
        "--json",
    ];
    let here = cohort(&args);
    assert!(here.status.success(), "{}", text(&here));
    args.extend(["--pipeline", &list, "--insecure"]);
    let there = cohort(&args);
    assert!(there.status.success(), "{}", text(&there));
    let ids = |o: &Output| {
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["completion_ids"].clone()
    };
    assert_eq!(ids(&here).as_array().map(Vec::len), Some(16));
    assert_eq!(ids(&here), ids(&there));
    // A verifier of layers 1..3 at rate 1 finds the honest server's calls equal, and catches
    // one that perturbs its outputs by 1e-2; nothing is written then.
    let verifier = serve(&model, "1..3");
    let o = run(
        &tmp.path().join("checked"),
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
    assert!(v["verification"]["checked"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["verification"]["backwards_checked"], 4, "{v}");
    let liar = serve_with(&model, "1..3", &["--misbehave", "noise=0.01"]);
    let routed = format!("{},{},{}", servers[0].url, liar.url, servers[2].url);
    let lied = tmp.path().join("lied");
    let o = run(
        &lied,
        &[
            "--pipeline",
            &routed,
            "--insecure",
            "--verifiers",
            &verifier.url,
            "--verify-rate",
            "1",
        ],
    );
    assert!(!o.status.success(), "not caught: {}", text(&o));
    assert!(text(&o).contains("differs from verifier"), "{}", text(&o));
    assert!(!lied.exists());
}

/// A verifier that dies mid-run is replaced by the next listed after it (`--verifiers V|V2`),
/// and the training writes the adapter it writes unchecked; with no replacement left the
/// training stops and writes nothing; a replacement must hold its verifier's layers.
#[test]
fn a_verifier_that_dies_is_replaced_by_the_next_listed() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, text_file) = tiny_model(tmp.path());
    let (_servers, list) = three_stages(&model);
    let single = tmp.path().join("single");
    let o = lora(&model, &text_file, &single, &[]);
    assert!(o.status.success(), "{}", text(&o));
    // Dies on its third recomputation, before answering.
    let mut dying = serve_with(&model, "1..3", &["--misbehave", "crash-check=3"]);
    let spare = serve(&model, "1..3");
    let out = tmp.path().join("replaced");
    let verifiers = format!("{}|{}", dying.url, spare.url);
    let o = lora(
        &model,
        &text_file,
        &out,
        &[
            "--pipeline",
            &list,
            "--insecure",
            "--verifiers",
            &verifiers,
            "--verify-rate",
            "1",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(crashed(&mut dying), "the verifier did not crash");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["verification"]["verifiers_replaced"], 1, "{v}");
    assert!(text(&o).contains("replaced by"), "{}", text(&o));
    let a = std::fs::read(single.join("adapter_model.safetensors")).unwrap();
    let b = std::fs::read(out.join("adapter_model.safetensors")).unwrap();
    assert!(a == b, "the adapter differs");
    // No replacement left: the training stops, nothing written.
    let mut alone = serve_with(&model, "1..3", &["--misbehave", "crash-check=2"]);
    let stopped = tmp.path().join("stopped");
    let o = lora(
        &model,
        &text_file,
        &stopped,
        &[
            "--pipeline",
            &list,
            "--insecure",
            "--verifiers",
            &alone.url,
            "--verify-rate",
            "1",
        ],
    );
    assert!(!o.status.success());
    assert!(crashed(&mut alone));
    assert!(text(&o).contains("no replacement is left"), "{}", text(&o));
    assert!(!stopped.exists());
    // A replacement of other layers is refused before any step.
    let other = serve(&model, "0..1");
    let o = lora(
        &model,
        &text_file,
        &tmp.path().join("refused"),
        &[
            "--pipeline",
            &list,
            "--insecure",
            "--verifiers",
            &format!("{}|{}", spare.url, other.url),
        ],
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("must hold its layers"), "{}", text(&o));
}

/// Verifiers started with `--attest-ledger` attest, as they catch, the claims their own
/// recomputations support: the client sends each claim to its verifier, and a quorum of
/// them slashes the cheat with no `cohort stage attest` run by anyone. A verifier without a
/// ledger declines, and the claims stay in the evidence.
#[test]
fn verifiers_attest_what_they_catch_and_a_quorum_slashes_the_cheat() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, text_file) = tiny_model(tmp.path());
    let w = stages::world(tmp.path());
    let (cheat, v1, v2) = (&w.servers[1], &w.servers[0], &w.servers[2]);
    let (head, tail) = (&w.servers[3], &w.client);
    let ledger = p(&w.ledger).to_owned();
    let l = ledger.as_str();
    register_stages(
        l,
        &model,
        &[
            (cheat, "1..3"),
            (v1, "1..3"),
            (v2, "1..3"),
            (head, "0..1"),
            (tail, "3..4"),
        ],
    );
    // Bad --attest-ledger: not a ledger; without --key.
    let bad = Command::new(env!("CARGO_BIN_EXE_cohort"))
        .args([
            "serve-layers",
            p(&model),
            "--layers",
            "1..3",
            "--listen",
            "127.0.0.1:0",
        ])
        .args([
            "--insecure",
            "--key",
            p(&v1.key),
            "--attest-ledger",
            p(tmp.path()),
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(text(&bad).contains("--attest-ledger"), "{}", text(&bad));
    let bad = Command::new(env!("CARGO_BIN_EXE_cohort"))
        .args([
            "serve-layers",
            p(&model),
            "--layers",
            "1..3",
            "--listen",
            "127.0.0.1:0",
        ])
        .args(["--insecure", "--attest-ledger", l])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(text(&bad).contains("--key"), "{}", text(&bad));

    let first = serve_with(&model, "0..1", &["--key", p(&head.key)]);
    let last = serve_with(&model, "3..4", &["--key", p(&tail.key)]);
    let list = |liar: &Server| format!("{},{},{}", first.url, liar.url, last.url);
    let run = |out: &str, liar: &Server, verifiers: &[&Server]| {
        let evidence = tmp.path().join(format!("{out}.json"));
        let vlist: Vec<&str> = verifiers.iter().map(|v| v.url.as_str()).collect();
        let o = lora(
            &model,
            &text_file,
            &tmp.path().join(out),
            &[
                "--pipeline",
                &list(liar),
                "--insecure",
                "--verifiers",
                &vlist.join(","),
                "--verify-rate",
                "1",
                "--evidence",
                p(&evidence),
            ],
        );
        assert!(!o.status.success(), "not caught");
        (text(&o), evidence)
    };
    let show = || {
        let o = cohort(&[
            "stage",
            "show",
            "--ledger",
            l,
            "--server",
            &cheat.addr(),
            "--json",
        ]);
        assert!(o.status.success(), "{}", text(&o));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["servers"][0].clone()
    };
    // Verifiers without a ledger decline; nothing is attested, the evidence holds the claims.
    {
        let liar = serve_with(
            &model,
            "1..3",
            &["--misbehave", "noise=0.01", "--key", p(&cheat.key)],
        );
        let plain: Vec<Server> = [v1, v2]
            .iter()
            .map(|v| serve_with(&model, "1..3", &["--key", p(&v.key)]))
            .collect();
        let (said, evidence) = run("declined", &liar, &[&plain[0], &plain[1]]);
        assert!(said.contains("did not attest"), "{said}");
        assert!(said.contains("attests nothing"), "{said}");
        assert!(std::fs::read(&evidence).is_ok());
        assert_eq!(show()["active"], true);
    }
    // Verifiers that attest: the first claim's attestation is 1 of 2, the second slashes.
    let liar = serve_with(
        &model,
        "1..3",
        &["--misbehave", "noise=0.01", "--key", p(&cheat.key)],
    );
    let verifiers: Vec<Server> = [v1, v2]
        .iter()
        .map(|v| serve_with(&model, "1..3", &["--key", p(&v.key), "--attest-ledger", l]))
        .collect();
    let (said, _) = run("attested", &liar, &[&verifiers[0], &verifiers[1]]);
    assert!(said.contains("(attestation 1 of 2)"), "{said}");
    assert!(said.contains("(attestation 2 of 2): slashed"), "{said}");
    let server = show();
    assert_eq!(server["active"], false, "{server}");
    assert!(server["slash_claim"].is_string(), "{server}");
}

/// Registers each of `parties` on the ledger `l` as a stage server of `model` holding its
/// layers, through the CLI, with stake 1500.
fn register_stages(l: &str, model: &Path, parties: &[(&stages::Party, &str)]) {
    for (s, layers) in parties {
        let at = (stages::START + 1).to_string();
        let o = cohort(&[
            "stage",
            "register",
            "--ledger",
            l,
            "--key",
            p(&s.key),
            "--model",
            p(model),
            "--layers",
            layers,
            "--stake",
            "1500",
            "--at",
            &at,
            "--json",
        ]);
        assert!(o.status.success(), "{}", text(&o));
    }
}

/// A server that answers forwards honestly and adds noise to its backward's gradients is
/// caught by the backward check; the evidence holds one backward claim a verifier (each
/// recomputed the whole call), which `cohort stage attest` checks (tampered claims refused
/// by name, nothing written) and attests; verifiers started with `--attest-ledger` attest the
/// same claims by themselves, and the quorum slashes the cheat.
#[test]
fn backward_claims_are_attested_on_the_ledger_and_a_quorum_slashes_the_cheat() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, text_file) = tiny_model(tmp.path());
    let w = stages::world(tmp.path());
    let (cheat, v1, v2) = (&w.servers[1], &w.servers[0], &w.servers[2]);
    let (head, tail) = (&w.servers[3], &w.client);
    let ledger = p(&w.ledger).to_owned();
    let l = ledger.as_str();
    register_stages(
        l,
        &model,
        &[
            (cheat, "1..3"),
            (v1, "1..3"),
            (v2, "1..3"),
            (head, "0..1"),
            (tail, "3..4"),
        ],
    );
    let first = serve_with(&model, "0..1", &["--key", p(&head.key)]);
    let last = serve_with(&model, "3..4", &["--key", p(&tail.key)]);
    let liar = serve_with(
        &model,
        "1..3",
        &["--misbehave", "grad-noise=0.01", "--key", p(&cheat.key)],
    );
    let run = |out: &str, verifiers: &[&Server]| {
        let evidence = tmp.path().join(format!("{out}.json"));
        let vlist: Vec<&str> = verifiers.iter().map(|v| v.url.as_str()).collect();
        let o = lora(
            &model,
            &text_file,
            &tmp.path().join(out),
            &[
                "--pipeline",
                &format!("{},{},{}", first.url, liar.url, last.url),
                "--insecure",
                "--verifiers",
                &vlist.join(","),
                "--verify-rate",
                "1",
                "--evidence",
                p(&evidence),
            ],
        );
        assert!(!o.status.success(), "not caught");
        assert!(!tmp.path().join(out).exists(), "an adapter was written");
        (text(&o), evidence)
    };
    let show = || {
        let o = cohort(&[
            "stage",
            "show",
            "--ledger",
            l,
            "--server",
            &cheat.addr(),
            "--json",
        ]);
        assert!(o.status.success(), "{}", text(&o));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["servers"][0].clone()
    };
    let entries = || {
        cohort_ledger::LedgerReader::open(&w.ledger)
            .unwrap()
            .replay()
            .unwrap()
            .len()
    };
    let attest = |key: &Path, evidence: &Path, claim: &str| {
        cohort(&[
            "stage",
            "attest",
            "--ledger",
            l,
            "--key",
            p(key),
            "--evidence",
            p(evidence),
            "--claim",
            claim,
            "--json",
        ])
    };

    // Plain verifiers: both recompute the backward that differs, and decline to attest.
    let plain: Vec<Server> = [v1, v2]
        .iter()
        .map(|v| serve_with(&model, "1..3", &["--key", p(&v.key)]))
        .collect();
    let (said, evidence) = run("declined", &[&plain[0], &plain[1]]);
    assert!(said.contains("answered the backward of step"), "{said}");
    assert!(said.contains("attests nothing"), "{said}");
    let claims: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(&evidence).unwrap()).unwrap();
    assert_eq!(claims.len(), 2, "{claims:?}");
    for (c, v) in claims.iter().zip([&plain[0], &plain[1]]) {
        assert_eq!(c["phase"], "backward");
        assert_eq!(c["verifier"], v.url.as_str());
        assert_ne!(c["server_outcome"], c["verifier_outcome"]);
    }
    // The two verifiers recomputed the same answer.
    assert_eq!(claims[0]["verifier_outcome"], claims[1]["verifier_outcome"]);

    // Tampered claims are refused by name, with nothing written.
    let before = entries();
    let tampered = tmp.path().join("tampered.json");
    let tamper = |f: &dyn Fn(&mut serde_json::Value), why: &str| {
        let mut c = claims[0].clone();
        f(&mut c);
        std::fs::write(&tampered, serde_json::to_vec(&c).unwrap()).unwrap();
        let o = attest(&v1.key, &tampered, "0");
        assert!(!o.status.success(), "{why}: {}", text(&o));
        assert!(text(&o).contains(why), "{why}: {}", text(&o));
    };
    let other = claims[0]["verifier_outcome"]["dx"].clone();
    tamper(
        &|c| c["server_outcome"]["dx"] = other.clone(),
        "server_outcome and verifier_outcome are equal",
    );
    tamper(
        &|c| c["grad_sha256"] = "11".repeat(32).into(),
        "server_digest",
    );
    tamper(&|c| c["step"] = 99.into(), "is not the backward digest");
    tamper(
        &|c| {
            let s = c["verifier_signature"].as_str().unwrap().to_owned();
            c["verifier_signature"] =
                format!("{}{}", &s[..127], if s.ends_with('0') { "1" } else { "0" }).into();
        },
        "verifier_signature does not verify",
    );
    tamper(&|c| c["phase"] = "sideways".into(), "phase \"sideways\"");
    tamper(
        &|c| c["server_outcome"]["dx"] = "zz".into(),
        "not 32 bytes of hex",
    );
    tamper(&|c| c["session"] = (-1).into(), "session");
    // Another verifier's claim, under v1's key.
    let o = attest(&v1.key, &evidence, "1");
    assert!(!o.status.success());
    assert!(
        text(&o).contains("is not the evidence's verifier key"),
        "{}",
        text(&o)
    );
    assert_eq!(entries(), before, "a refused attestation wrote");

    // v1 attests its own claim from the file: one of two.
    let o = attest(&v1.key, &evidence, "0");
    assert!(o.status.success(), "{}", text(&o));
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(out["attestations"], "1", "{out}");
    assert_eq!(out["evidence"]["phase"], "backward", "{out}");
    assert!(out["evidence"]["row"].is_null(), "{out}");
    assert_eq!(out["slashed"], false);
    assert_eq!(show()["active"], true);

    // Verifiers that attest by themselves complete the quorum.
    drop(plain);
    let verifiers: Vec<Server> = [v1, v2]
        .iter()
        .map(|v| serve_with(&model, "1..3", &["--key", p(&v.key), "--attest-ledger", l]))
        .collect();
    let (said, _) = run("attested", &[&verifiers[0], &verifiers[1]]);
    assert!(said.contains("(attestation 2 of 2): slashed"), "{said}");
    let server = show();
    assert_eq!(server["active"], false, "{server}");
    assert!(server["slash_claim"].is_string(), "{server}");
}

/// `--pay-per-token` with `--ledger` and `--key`: once the adapter is written, the client
/// escrows to every declared stage server the price of the model tokens its layers processed,
/// for the pipeline's session; a payer whose balance cannot cover the run is refused before
/// any step, with nothing written.
#[test]
fn the_client_escrows_pay_to_every_stage_server_for_the_tokens_it_processed() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, text_file) = tiny_model(tmp.path());
    let w = stages::world(tmp.path());
    let (a, b) = (&w.servers[0], &w.servers[1]);
    let l = p(&w.ledger).to_owned();
    register_stages(&l, &model, &[(a, "0..2"), (b, "2..4")]);
    let first = serve_with(&model, "0..2", &["--key", p(&a.key)]);
    let second = serve_with(&model, "2..4", &["--key", p(&b.key)]);
    let list = format!("{},{}", first.url, second.url);
    let pay = |out: &str, price: &str| {
        lora(
            &model,
            &text_file,
            &tmp.path().join(out),
            &[
                "--pipeline",
                &list,
                "--insecure",
                "--ledger",
                &l,
                "--key",
                p(&w.client.key),
                "--pay-per-token",
                price,
            ],
        )
    };
    // 5,000 tokens held; 2 stages x 4 steps x 4 sequences x up to 256 tokens at 1 each is more.
    let o = pay("poor", "1");
    assert!(!o.status.success());
    assert!(text(&o).contains("--pay-per-token"), "{}", text(&o));
    assert!(!tmp.path().join("poor").exists());
    let o = pay("out", "0.01");
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let paid = v["paid"].as_array().unwrap();
    assert_eq!(paid.len(), 2, "{v}");
    for (entry, server) in paid.iter().zip([a, b]) {
        // 4 steps of 4 sequences of the model's 128 positions.
        assert_eq!(entry["tokens"], 4 * 4 * 128, "{entry}");
        assert_eq!(
            entry["address"],
            serde_json::json!(server.address()),
            "{entry}"
        );
        let period = entry["period"].as_u64().unwrap().to_string();
        let o = cohort(&[
            "stage",
            "show",
            "--ledger",
            &l,
            "--server",
            &format!("{}", server.address()),
            "--period",
            &period,
            "--json",
        ]);
        assert!(o.status.success(), "{}", text(&o));
        let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert!(
            s.to_string()
                .contains(&format!("\"tokens\":{}", 4 * 4 * 128)),
            "{s}"
        );
    }
}
