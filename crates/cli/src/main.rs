//! `cohort`: federated fine-tuning with a verifiable ledger.

/// `println!` that ends the process quietly when stdout is a closed pipe (`cohort ... | head`).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

/// `print!` with the same pipe handling.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = write!(std::io::stdout().lock(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

mod args;
mod cmd;
mod output;
mod report;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cmd::Cli::parse();
    match cli.execute() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", error_message(&e));
            std::process::ExitCode::from(2)
        }
    }
}

/// The error and its causes on one line, each thing said once: a library error that already
/// shows its source in its own message (`"{path}: {source}"`) would otherwise repeat it when
/// the chain is printed ("Not a directory (os error 20): Not a directory (os error 20)").
fn error_message(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let s = cause.to_string();
        let s = s.trim();
        if s.is_empty() || out.contains(s) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(s);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::error_message;

    #[test]
    fn causes_already_shown_are_not_repeated() {
        let io = std::io::Error::from_raw_os_error(20);
        let text = io.to_string();
        let e = anyhow::Error::new(io)
            .context(format!("/x/config.json: {text}"))
            .context("loading model /x");
        assert_eq!(
            error_message(&e),
            format!("loading model /x: /x/config.json: {text}")
        );
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(error_message(&plain), "outer: inner");
    }
}
