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
