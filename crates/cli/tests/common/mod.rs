//! Helpers shared by the CLI tests: run the real binary and read what it printed.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

/// Runs `cohort` with `args`.
pub fn cohort(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cohort"))
        .args(args)
        .output()
        .expect("cohort runs")
}

/// Standard output and standard error together.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A path as a `&str` argument.
pub fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// What must be the same whoever carries a federation's messages, from a run's summary: per
/// round the verdicts, consensus, test metrics, holdings and the global model after it.
pub fn outcome(summary: &serde_json::Value) -> Vec<serde_json::Value> {
    summary["rounds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            serde_json::json!({
                "accepted": r["accepted"],
                "rejected": r["rejected"],
                "consensus": r["consensus"],
                "test": r["test"],
                "holdings": r["holdings"],
                "models": r["provenance"].as_array().unwrap().iter()
                    .map(|p| p["global_after"].clone()).collect::<Vec<_>>(),
            })
        })
        .collect()
}

/// Waits for `child` at most `secs`, killing it after that (the panic shows `log`).
pub fn wait(
    mut child: std::process::Child,
    secs: u64,
    what: &str,
    log: &Path,
) -> std::process::Output {
    // Its output is drained while it runs: a child that writes more than a pipe holds (a
    // long run's JSON) would otherwise block on the write and never finish.
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut b = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut b);
            }
            b
        })
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let until = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > until {
            let _ = child.kill();
            panic!(
                "{what} still running after {secs} s: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::process::Output {
        status: child.wait().unwrap(),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// A stage server process (`cohort serve-layers DIR --layers L EXTRA` on loopback, plain
/// text), killed when dropped.
pub struct Server {
    pub child: std::process::Child,
    pub url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a stage server for `layers` of the model in `dir` with `extra` arguments, once it
/// listens.
pub fn serve_with(dir: &Path, layers: &str, extra: &[&str]) -> Server {
    use std::io::BufRead as _;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cohort"))
        .args(["serve-layers", p(dir), "--layers", layers])
        .args(["--listen", "127.0.0.1:0", "--insecure"])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    // "serving layers A..B of DIR (N layers) on HOST:PORT"
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("serving layers"), "{line}");
    let addr = line.trim().rsplit(' ').next().unwrap().to_owned();
    Server {
        child,
        url: format!("http://{addr}"),
    }
}

/// [`serve_with`] without extra arguments.
pub fn serve(dir: &Path, layers: &str) -> Server {
    serve_with(dir, layers, &[])
}

/// A Llama-family model (Qwen2's shape: grouped-query attention, q/k/v biases, a tied head)
/// of 4 layers, written by the test with the Qwen2 fixture's tokeniser, in `dir/name`.
pub fn tiny_llama(dir: &Path, name: &str) -> std::path::PathBuf {
    use cohort_model::{Llama, LlamaConfig};
    let mut c = LlamaConfig::small("qwen2", 300, 32, 4, 4, 2);
    c.intermediate_size = 64;
    c.tie_word_embeddings = true;
    c.max_position_embeddings = Some(64);
    let out = dir.join(name);
    Llama::new(c, 11, &candle_core::Device::Cpu)
        .unwrap()
        .save_dir(&out)
        .unwrap();
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/../model/tests/fixtures/qwen2");
    std::fs::copy(
        Path::new(fixture).join("tokenizer.json"),
        out.join("tokenizer.json"),
    )
    .unwrap();
    out
}

/// The LM task, small: a test-preset GPT pretrained for 20 steps, 2 rounds of 3 clients
/// (`--set` values over examples/lm-shakespeare.toml).
pub const SMALL_LM: [&str; 10] = [
    "clients=3",
    "validators=2",
    "coordinator.rounds=2",
    "coordinator.clients_per_round=3",
    "task.preset=\"test\"",
    "task.seq_len=32",
    "task.pretrain_steps=20",
    "task.local_steps=4",
    "task.eval_windows=8",
    "task.batch=8",
];

/// `cohort run examples/lm-shakespeare.toml` with [`SMALL_LM`] and `extra` settings into
/// `out`: its `--json` output, or what it printed when it failed.
pub fn run_small_lm(out: &Path, extra: &[&str]) -> Result<serde_json::Value, String> {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/lm-shakespeare.toml");
    let mut args = vec!["run".to_owned(), p(&config).to_owned()];
    for s in SMALL_LM.iter().chain(extra) {
        args.extend(["--set".to_owned(), (*s).to_owned()]);
    }
    args.extend(["--out".to_owned(), p(out).to_owned(), "--json".to_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = cohort(&args);
    if !o.status.success() {
        return Err(text(&o));
    }
    Ok(serde_json::from_slice(&o.stdout).unwrap())
}

/// A `tiny` GPT (4 layers) pretrained 3 steps in `dir`, and its text: the model directory and
/// the text file.
pub fn tiny_model(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let corpus = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/data/tinyshakespeare/input.txt"
    );
    let text_file = dir.join("text.txt");
    let all = std::fs::read_to_string(corpus).unwrap();
    std::fs::write(&text_file, &all[..60_000]).unwrap();
    let model = dir.join("model");
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
    (model, text_file)
}
