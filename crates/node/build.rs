//! Records the git commit cohort is built from (`COHORT_COMMIT`, "unknown" outside a git
//! checkout), for the training recipe a data market listing allows (`cohort_node::market`).

use std::path::Path;
use std::process::Command;

fn main() {
    let commit = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=COHORT_COMMIT={commit}");
    // Rebuilt when the checkout moves to another commit (only paths that exist are watched:
    // a path that does not would make every build run this again).
    let git = Command::new("git")
        .args(["rev-parse", "--git-dir"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok());
    if let Some(dir) = git {
        let dir = Path::new(dir.trim());
        for f in ["HEAD", "packed-refs"] {
            let p = dir.join(f);
            if p.exists() {
                println!("cargo:rerun-if-changed={}", p.display());
            }
        }
        if let Ok(head) = std::fs::read_to_string(dir.join("HEAD"))
            && let Some(r) = head.trim().strip_prefix("ref: ")
        {
            let p = dir.join(r);
            if p.exists() {
                println!("cargo:rerun-if-changed={}", p.display());
            }
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
