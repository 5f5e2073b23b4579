//! The `cohort model` commands and `cohort bench train` as a user runs them, on a small slice of
//! Tiny Shakespeare and the test-size model.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{cohort, p, text};
use std::process::Output;

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", text(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o)))
}

#[test]
fn pretrain_eval_generate_lora_and_svd() {
    let tmp = tempfile::tempdir().unwrap();
    let src = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/data/tinyshakespeare/input.txt"
    );
    let corpus = tmp.path().join("corpus.txt");
    let text_in: String = std::fs::read_to_string(src)
        .unwrap()
        .chars()
        .take(30_000)
        .collect();
    std::fs::write(&corpus, &text_in).unwrap();
    let model = tmp.path().join("model");

    let r = json(&cohort(&[
        "model",
        "pretrain",
        "--corpus",
        p(&corpus),
        "--preset",
        "test",
        "--out",
        p(&model),
        "--steps",
        "25",
        "--batch",
        "8",
        "--warmup",
        "5",
        "--lr",
        "3e-3",
        "--json",
    ]));
    assert_eq!(r["steps"], 25);
    assert!(r["val_loss"].as_f64().unwrap() < (65f64).ln(), "{r}");
    for f in [
        "config.json",
        "model.safetensors",
        "cohort_tokenizer.json",
        "optimizer.safetensors",
        "trainer_state.json",
    ] {
        assert!(model.join(f).exists(), "{f} missing");
    }

    // Resuming to 30 steps continues from step 25.
    let r2 = json(&cohort(&[
        "model",
        "pretrain",
        "--corpus",
        p(&corpus),
        "--out",
        p(&model),
        "--steps",
        "30",
        "--resume",
        "--json",
    ]));
    assert_eq!(r2["steps"], 30);

    let e = json(&cohort(&[
        "model",
        "eval",
        p(&model),
        "--data",
        p(&corpus),
        "--tail",
        "0.1",
        "--json",
    ]));
    assert!(e["perplexity"].as_f64().unwrap() > 1.0);
    assert!(e["tokens"].as_u64().unwrap() > 0);
    // By default a GPT's weights are read in place from the mapped file; copied, the same
    // figures.
    assert_eq!(e["base_mapped"], true);
    let copied = json(&cohort(&[
        "model",
        "eval",
        p(&model),
        "--data",
        p(&corpus),
        "--tail",
        "0.1",
        "--no-mmap",
        "--json",
    ]));
    assert_eq!(copied["base_mapped"], false);
    for key in ["loss", "perplexity", "accuracy", "tokens"] {
        assert_eq!(e[key], copied[key], "{key}");
    }

    let g = cohort(&[
        "model",
        "generate",
        p(&model),
        "--prompt",
        "ROMEO:",
        "--max-new",
        "20",
        "--temperature",
        "0.8",
        "--top-k",
        "5",
        "--seed",
        "1",
    ]);
    assert!(g.status.success(), "{}", text(&g));
    let out = String::from_utf8_lossy(&g.stdout);
    assert!(
        out.starts_with("ROMEO:") && out.trim_end().chars().count() == 26,
        "{out:?}"
    );
    let g2 = cohort(&[
        "model",
        "generate",
        p(&model),
        "--prompt",
        "ROMEO:",
        "--max-new",
        "20",
        "--temperature",
        "0.8",
        "--top-k",
        "5",
        "--seed",
        "1",
    ]);
    assert_eq!(g.stdout, g2.stdout, "same seed, same text");
    // A character the corpus never had is a clear error.
    let bad = cohort(&["model", "generate", p(&model), "--prompt", "ROMEO~"]);
    assert!(
        !bad.status.success() && text(&bad).contains("alphabet"),
        "{}",
        text(&bad)
    );

    let adapter = tmp.path().join("adapter");
    let l = json(&cohort(&[
        "model",
        "lora",
        p(&model),
        "--data",
        p(&corpus),
        "--out",
        p(&adapter),
        "--rank",
        "4",
        "--steps",
        "10",
        "--batch",
        "4",
        "--targets",
        "c_attn,c_fc",
        "--dropout",
        "0.1",
        "--json",
    ]));
    assert_eq!(l["trainable"], 2 * (4 * (32 + 96) + 4 * (32 + 128)));
    assert!(l["val_loss"].as_f64().unwrap().is_finite());
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["lora_dropout"], 0.1);
    if std::path::Path::new("/proc/self/status").exists() {
        // At least the weights and a step's activations were resident.
        assert!(l["peak_rss_bytes"].as_u64().unwrap() > 1 << 20, "{l}");
    }
    assert!(
        adapter.join("adapter_model.safetensors").exists()
            && adapter.join("adapter_config.json").exists()
    );
    // The base was read in place from the mapped checkpoint; copying it instead gives the same
    // adapter and losses, bit for bit.
    assert_eq!(l["base_mapped"], true, "{l}");
    assert_eq!(l["base_copied_bytes"], 0, "{l}");
    let copied_dir = tmp.path().join("adapter-copied");
    let c = json(&cohort(&[
        "model",
        "lora",
        p(&model),
        "--data",
        p(&corpus),
        "--out",
        p(&copied_dir),
        "--rank",
        "4",
        "--steps",
        "10",
        "--batch",
        "4",
        "--targets",
        "c_attn,c_fc",
        "--dropout",
        "0.1",
        "--no-mmap",
        "--json",
    ]));
    assert_eq!(c["base_mapped"], false, "{c}");
    assert_eq!(c["base_copied_bytes"], l["base_mapped_bytes"], "{c}");
    assert!(l["base_mapped_bytes"].as_u64().unwrap() > 0, "{l}");
    for k in ["base_val_loss", "val_loss"] {
        assert_eq!(
            l[k].as_f64().unwrap().to_bits(),
            c[k].as_f64().unwrap().to_bits(),
            "{k}"
        );
    }
    assert_eq!(
        std::fs::read(adapter.join("adapter_model.safetensors")).unwrap(),
        std::fs::read(copied_dir.join("adapter_model.safetensors")).unwrap()
    );
    if std::path::Path::new("/proc/self/status").exists() {
        for r in [&l, &c] {
            let anon = r["peak_rss_anon_bytes"].as_u64().unwrap();
            let file = r["peak_rss_file_bytes"].as_u64().unwrap();
            assert!(anon > 0 && file > 0, "{r}");
        }
    }
    let ea = json(&cohort(&[
        "model",
        "eval",
        p(&model),
        "--data",
        p(&corpus),
        "--adapter",
        p(&adapter),
        "--json",
    ]));
    assert!(ea["loss"].as_f64().unwrap().is_finite());

    let out = tmp.path().join("svd");
    let s = json(&cohort(&[
        "model",
        "svd",
        p(&model),
        "--rank",
        "4",
        "--out",
        p(&out),
        "--data",
        p(&corpus),
        "--json",
    ]));
    let rows = s.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows[1]["params"].as_u64().unwrap() < rows[0]["params"].as_u64().unwrap());
    assert!(rows[1]["perplexity"].as_f64().unwrap() > 0.0);
    // The factored checkpoint evaluates to the perplexity svd reported for it.
    let e2 = json(&cohort(&[
        "model",
        "eval",
        p(&out),
        "--data",
        p(&corpus),
        "--tail",
        "0.1",
        "--max-windows",
        "64",
        "--json",
    ]));
    let (a, b) = (
        e2["perplexity"].as_f64().unwrap(),
        rows[1]["perplexity"].as_f64().unwrap(),
    );
    assert!((a - b).abs() < 1e-9 * b, "{a} vs {b}");

    let missing = cohort(&[
        "model",
        "eval",
        p(&tmp.path().join("nope")),
        "--data",
        p(&corpus),
    ]);
    assert!(
        !missing.status.success() && text(&missing).contains("nope"),
        "{}",
        text(&missing)
    );
}

#[test]
fn bench_train_writes_the_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("bench.json");
    let o = cohort(&[
        "bench",
        "train",
        "--preset",
        "test",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--batch",
        "2",
        "--threads",
        "1",
        "--json",
        p(&out),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    for k in [
        "full_tokens_per_s",
        "lora_tokens_per_s",
        "matmul_peak_gflops",
    ] {
        assert!(v[k].as_f64().unwrap() > 0.0, "{k}: {v}");
    }
    assert_eq!(v["threads"], 1);
    if std::path::Path::new("/proc/self/status").exists() {
        for k in ["full_peak_rss_bytes", "lora_peak_rss_bytes"] {
            assert!(v[k].as_u64().unwrap() > 1 << 20, "{k}: {v}");
        }
    }
}

#[test]
fn llama_family_base_is_mapped_for_eval_and_lora_with_the_same_results() {
    // The transformers-written Qwen2 fixture (grouped-query attention, q/k/v biases).
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/../model/tests/fixtures/qwen2");
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("corpus.txt");
    let src = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/data/tinyshakespeare/input.txt"
    );
    let text_in: String = std::fs::read_to_string(src)
        .unwrap()
        .chars()
        .take(6_000)
        .collect();
    std::fs::write(&corpus, &text_in).unwrap();
    let eval = |extra: &[&str]| {
        let mut args = vec!["model", "eval", fixture, "--data", p(&corpus)];
        args.extend(["--seq-len", "32", "--max-windows", "8", "--json"]);
        args.extend(extra);
        json(&cohort(&args))
    };
    let (mapped, copied) = (eval(&[]), eval(&["--no-mmap"]));
    assert_eq!(mapped["base_mapped"], true);
    assert_eq!(copied["base_mapped"], false);
    for key in ["loss", "perplexity", "accuracy", "tokens"] {
        assert_eq!(mapped[key], copied[key], "{key}");
    }
    let lora = |out: &str, extra: &[&str]| {
        let out = tmp.path().join(out);
        let mut args = vec!["model", "lora", fixture, "--data", p(&corpus), "--out"];
        args.push(p(&out));
        args.extend(["--rank", "2", "--steps", "4", "--batch", "2", "--json"]);
        args.extend(extra);
        json(&cohort(&args))
    };
    let (lm, lc) = (lora("a-mapped", &[]), lora("a-copied", &["--no-mmap"]));
    assert!(lm["base_mapped_bytes"].as_u64().unwrap() > 0);
    assert_eq!(lc["base_mapped_bytes"].as_u64().unwrap(), 0);
    assert!(lm["val_loss"].as_f64().unwrap().is_finite());
    assert_eq!(lm["val_loss"], lc["val_loss"]);
    assert_eq!(lm["base_val_loss"], lc["base_val_loss"]);
}

/// A slice of Tiny Shakespeare in `dir`.
fn corpus(dir: &std::path::Path, chars: usize) -> std::path::PathBuf {
    let src = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/data/tinyshakespeare/input.txt"
    );
    let text: String = std::fs::read_to_string(src)
        .unwrap()
        .chars()
        .take(chars)
        .collect();
    let path = dir.join("corpus.txt");
    std::fs::write(&path, text).unwrap();
    path
}

/// A test-size GPT pretrained for two steps into `dir/name`.
fn tiny_model(dir: &std::path::Path, corpus: &std::path::Path, name: &str) -> std::path::PathBuf {
    let out = dir.join(name);
    let o = cohort(&[
        "model",
        "pretrain",
        "--corpus",
        p(corpus),
        "--preset",
        "test",
        "--steps",
        "2",
        "--batch",
        "2",
        "--seq-len",
        "16",
        "--warmup",
        "1",
        "--out",
        p(&out),
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    out
}

/// Regression (issue 11): `model eval --seq-len 0` divided by zero, `bench train --steps 0
/// --warmup 0` indexed out of bounds, `model generate --max-new 18446744073709551615` ran
/// forever, and `--lr nan`, `--alpha nan`, `--temperature=-1|nan|inf`, `--top-p 2|-1|nan` were
/// accepted. Every numeric flag of every `cohort model` subcommand and of `cohort bench train`
/// gets 0, -1, nan, inf, 1e308 and 2^64: the command either runs (the value is valid) or is
/// refused with the flag named; never a panic (101) or an abort (134).
#[test]
fn every_numeric_flag_refuses_nonsense_by_name_and_never_panics() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = corpus(tmp.path(), 3000);
    let model = tiny_model(tmp.path(), &corpus, "model");
    let (c, m) = (p(&corpus).to_string(), p(&model).to_string());
    let out = |i: usize| p(&tmp.path().join(format!("out{i}"))).to_string();
    type Case = (Vec<String>, &'static [&'static str]);
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let cases: Vec<(&str, Case)> = vec![
        (
            "pretrain",
            (
                s(&[
                    "model",
                    "pretrain",
                    "--corpus",
                    &c,
                    "--preset",
                    "test",
                    "--steps",
                    "2",
                    "--batch",
                    "2",
                    "--seq-len",
                    "16",
                    "--warmup",
                    "1",
                    "--json",
                ]),
                &[
                    "--steps",
                    "--batch",
                    "--seq-len",
                    "--grad-accum",
                    "--lr",
                    "--warmup",
                    "--seed",
                    "--val-fraction",
                    "--eval-every",
                    "--log-every",
                ],
            ),
        ),
        (
            "eval",
            (
                s(&["model", "eval", &m, "--data", &c, "--json"]),
                &["--tail", "--seq-len", "--batch", "--max-windows"],
            ),
        ),
        (
            "generate",
            (
                s(&[
                    "model",
                    "generate",
                    &m,
                    "--prompt",
                    "ROMEO:",
                    "--max-new",
                    "3",
                ]),
                &["--max-new", "--temperature", "--top-k", "--top-p", "--seed"],
            ),
        ),
        (
            "lora",
            (
                s(&[
                    "model", "lora", &m, "--data", &c, "--rank", "2", "--steps", "2", "--batch",
                    "2", "--json",
                ]),
                &[
                    "--rank",
                    "--alpha",
                    "--dropout",
                    "--steps",
                    "--batch",
                    "--lr",
                    "--seed",
                    "--val-fraction",
                    "--log-every",
                ],
            ),
        ),
        (
            "svd",
            (
                s(&["model", "svd", &m, "--rank", "2", "--data", &c, "--json"]),
                &["--rank", "--tail", "--max-windows"],
            ),
        ),
        (
            "bench train",
            (
                s(&[
                    "bench",
                    "train",
                    "--preset",
                    "test",
                    "--steps",
                    "1",
                    "--warmup",
                    "0",
                    "--batch",
                    "1",
                    "--rank",
                    "2",
                    "--threads",
                    "1",
                ]),
                &["--steps", "--warmup", "--batch", "--rank", "--threads"],
            ),
        ),
    ];
    let values = ["0", "-1", "nan", "inf", "1e308", "18446744073709551616"];
    let (mut runs, mut ran, mut refused) = (0, 0, 0);
    for (name, (base, flags)) in &cases {
        for flag in *flags {
            for v in values {
                // The base arguments without this flag, then the flag with the value.
                let mut args: Vec<String> = Vec::new();
                let mut it = base.iter();
                while let Some(a) = it.next() {
                    if a == flag {
                        it.next();
                    } else {
                        args.push(a.clone());
                    }
                }
                if args[1] == "pretrain" || args[1] == "lora" {
                    args.extend(["--out".to_string(), out(runs)]);
                }
                args.push(format!("{flag}={v}"));
                let refs: Vec<&str> = args.iter().map(String::as_str).collect();
                let o = cohort(&refs);
                runs += 1;
                let code = o.status.code();
                assert!(
                    code.is_some() && code != Some(101) && code != Some(134),
                    "{name} {flag}={v}: exit {:?}\n{}",
                    o.status,
                    text(&o)
                );
                if o.status.success() {
                    ran += 1;
                } else {
                    refused += 1;
                    let err = String::from_utf8_lossy(&o.stderr);
                    assert!(
                        err.contains(flag),
                        "{name} {flag}={v}: the refusal does not name the flag:\n{err}"
                    );
                    assert!(!err.contains("panicked"), "{name} {flag}={v}: {err}");
                }
            }
        }
    }
    eprintln!("{runs} runs: {ran} ran, {refused} refused by name");
    assert_eq!(runs, 36 * values.len());
    assert!(ran > 0 && refused > 150, "{ran} ran, {refused} refused");
}

#[test]
fn outputs_are_never_overwritten_silently_nor_left_half_written() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = corpus(tmp.path(), 3000);
    let model = tiny_model(tmp.path(), &corpus, "model");
    let weights = std::fs::read(model.join("model.safetensors")).unwrap();
    let pretrain = |extra: &[&str]| {
        let mut args = vec![
            "model",
            "pretrain",
            "--corpus",
            p(&corpus),
            "--preset",
            "test",
        ];
        args.extend([
            "--steps",
            "3",
            "--batch",
            "2",
            "--seq-len",
            "16",
            "--out",
            p(&model),
        ]);
        args.extend(extra);
        cohort(&args)
    };
    // Regression (issue 11): pretrain --out EXISTING silently replaced a trained model.
    let o = pretrain(&[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("--out") && text(&o).contains("--resume") && text(&o).contains("--force"),
        "{}",
        text(&o)
    );
    assert_eq!(
        std::fs::read(model.join("model.safetensors")).unwrap(),
        weights
    );
    // --resume continues it (step 2 -> 3), --force replaces it.
    let o = pretrain(&["--resume", "--json"]);
    assert_eq!(json(&o)["steps"], 3);
    // Regression (issue 11): --resume silently ignored --preset, --batch, --lr...; a flag that
    // differs from the saved run is now refused by name, and nothing is written.
    let resumed = std::fs::read(model.join("model.safetensors")).unwrap();
    for (flag, value) in [("--lr", "0.5"), ("--seed", "7"), ("--tokenizer", "bytes")] {
        let o = pretrain(&["--resume", flag, value]);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(
            text(&o).contains(&format!("{flag} {value}")),
            "{}",
            text(&o)
        );
    }
    let o = cohort(&[
        "model",
        "pretrain",
        "--corpus",
        p(&corpus),
        "--preset",
        "tiny",
        "--out",
        p(&model),
        "--resume",
        "--steps",
        "4",
    ]);
    assert!(text(&o).contains("--preset tiny"), "{}", text(&o));
    assert_eq!(
        std::fs::read(model.join("model.safetensors")).unwrap(),
        resumed
    );
    let o = pretrain(&["--force", "--json"]);
    assert_eq!(json(&o)["steps"], 3);
    let o = pretrain(&["--force", "--resume"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    // --resume of nothing is refused before any work.
    let none = tmp.path().join("none");
    let o = cohort(&[
        "model",
        "pretrain",
        "--corpus",
        p(&corpus),
        "--out",
        p(&none),
        "--resume",
    ]);
    assert!(
        !o.status.success() && text(&o).contains("no run"),
        "{}",
        text(&o)
    );
    assert!(!none.exists());
    // A parent that does not exist, or a file, is refused before training.
    for bad in [tmp.path().join("no/such/dir"), corpus.clone()] {
        let o = cohort(&[
            "model",
            "pretrain",
            "--corpus",
            p(&corpus),
            "--preset",
            "test",
            "--out",
            p(&bad),
        ]);
        assert!(
            !o.status.success() && text(&o).contains("--out"),
            "{}",
            text(&o)
        );
    }
    // A run that fails half-way (the corpus is too short for its held-out window) leaves
    // nothing behind: no --out, no staging directory.
    let short = tmp.path().join("short.txt");
    std::fs::write(
        &short,
        "First Citizen: Before we proceed any further, hear me speak.",
    )
    .unwrap();
    let fresh = tmp.path().join("fresh");
    let o = cohort(&[
        "model",
        "pretrain",
        "--corpus",
        p(&short),
        "--preset",
        "test",
        "--out",
        p(&fresh),
    ]);
    assert!(
        !o.status.success() && text(&o).contains("too few"),
        "{}",
        text(&o)
    );
    assert!(!fresh.exists());
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("staging"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // lora --out and svd --out: the same care.
    let adapter = tmp.path().join("adapter");
    let lora = |extra: &[&str]| {
        let mut args = vec!["model", "lora", p(&model), "--data", p(&corpus), "--out"];
        args.extend([p(&adapter), "--rank", "2", "--steps", "2", "--batch", "2"]);
        args.extend(extra);
        cohort(&args)
    };
    assert!(lora(&[]).status.success());
    let bytes = std::fs::read(adapter.join("adapter_model.safetensors")).unwrap();
    let o = lora(&["--seed", "7"]);
    assert!(
        !o.status.success() && text(&o).contains("--force"),
        "{}",
        text(&o)
    );
    assert_eq!(
        std::fs::read(adapter.join("adapter_model.safetensors")).unwrap(),
        bytes
    );
    assert!(lora(&["--seed", "7", "--force"]).status.success());
    assert_ne!(
        std::fs::read(adapter.join("adapter_model.safetensors")).unwrap(),
        bytes
    );
    let factored = tmp.path().join("factored");
    let svd = |extra: &[&str]| {
        let mut args = vec![
            "model",
            "svd",
            p(&model),
            "--rank",
            "4",
            "--out",
            p(&factored),
        ];
        args.extend(extra);
        cohort(&args)
    };
    assert!(svd(&[]).status.success());
    let o = svd(&[]);
    assert!(
        !o.status.success() && text(&o).contains("--force"),
        "{}",
        text(&o)
    );
    assert!(svd(&["--force"]).status.success());
}

#[test]
fn training_prints_progress_lines_without_a_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = corpus(tmp.path(), 3000);
    let out = tmp.path().join("m");
    let o = cohort(&[
        "model",
        "pretrain",
        "--corpus",
        p(&corpus),
        "--preset",
        "test",
        "--steps",
        "10",
        "--batch",
        "2",
        "--seq-len",
        "16",
        "--log-every",
        "4",
        "--out",
        p(&out),
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("step ")).collect();
    // Steps 4 and 8, and the last one.
    assert_eq!(lines.len(), 3, "{err}");
    assert!(
        lines[0].starts_with("step 4/10") && lines[2].starts_with("step 10/10"),
        "{err}"
    );
    for l in &lines {
        assert!(l.contains("loss ") && l.contains("tok/s"), "{l}");
    }
    // stdout stays one JSON document.
    json(&o);
    let o = cohort(&[
        "model",
        "lora",
        p(&out),
        "--data",
        p(&corpus),
        "--out",
        p(&tmp.path().join("a")),
        "--rank",
        "2",
        "--steps",
        "3",
        "--batch",
        "2",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        err.lines().filter(|l| l.starts_with("step ")).count(),
        3,
        "{err}"
    );
}

#[test]
fn generate_streams_text_and_reports_json() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = corpus(tmp.path(), 3000);
    let model = tiny_model(tmp.path(), &corpus, "model");
    let args = |max_new: &str, extra: &[&str]| {
        let mut a = vec![
            "model",
            "generate",
            p(&model),
            "--prompt",
            "ROMEO:",
            "--max-new",
        ];
        a.extend([max_new, "--temperature", "0.8", "--seed", "3"]);
        a.extend(extra);
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let streamed = cohort(
        &args("12", &[])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(streamed.status.success(), "{}", text(&streamed));
    let j = json(&cohort(
        &args("12", &["--json"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    ));
    assert_eq!(j["prompt"], "ROMEO:");
    assert_eq!(j["prompt_ids"].as_array().unwrap().len(), 6);
    assert_eq!(j["completion_ids"].as_array().unwrap().len(), 12);
    assert!(j["tokens_per_s"].as_f64().unwrap() > 0.0);
    // The streamed text is the prompt and the same completion.
    let text_out = String::from_utf8_lossy(&streamed.stdout);
    assert_eq!(
        text_out.trim_end_matches('\n'),
        format!("ROMEO:{}", j["completion"].as_str().unwrap())
    );
    // Tokens appear as they are made: the first bytes arrive before the process ends.
    use std::io::Read as _;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cohort"))
        .args(args("1000000", &[]))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 16];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut first)
        .unwrap();
    assert!(
        child.try_wait().unwrap().is_none(),
        "it finished before streaming"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(String::from_utf8_lossy(&first).starts_with("ROMEO:"));
}

#[test]
fn a_missing_tokenizer_is_named_and_bos_is_added_as_transformers_does() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = corpus(tmp.path(), 3000);
    let model = tiny_model(tmp.path(), &corpus, "model");
    std::fs::remove_file(model.join("cohort_tokenizer.json")).unwrap();
    let o = cohort(&["model", "eval", p(&model), "--data", p(&corpus)]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("tokenizer is missing") && text(&o).contains("tokenizer.json"),
        "{}",
        text(&o)
    );
    // A Llama-2-style tokenizer.json adds BOS, in eval and generate, as transformers does.
    let bos = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../model/tests/fixtures/parity/llama_bos"
    );
    let e = json(&cohort(&[
        "model",
        "eval",
        bos,
        "--data",
        p(&corpus),
        "--seq-len",
        "32",
        "--max-windows",
        "2",
        "--json",
    ]));
    assert_eq!(e["special_tokens_added"], serde_json::json!([300]));
    let g = json(&cohort(&[
        "model",
        "generate",
        bos,
        "--prompt",
        "First Citizen",
        "--max-new",
        "2",
        "--json",
    ]));
    assert_eq!(g["prompt_ids"][0], 300, "{g}");
}
