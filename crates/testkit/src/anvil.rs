//! An anvil child process on a free loopback port, ready when returned, killed on drop.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The private key of anvil's first default account (funded with 10,000 ether on every fresh
/// anvil): the funder of the accounts the tests derive.
pub const FUNDER_KEY: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

/// How long anvil may take to answer its first request.
const READY_WITHIN: Duration = Duration::from_secs(20);
/// How often a start is retried when anvil exits during startup (another process took the
/// free port between our probe and anvil's bind).
const START_ATTEMPTS: usize = 3;

/// Where anvil is looked for, in order, and whether it is there: `$COHORT_ANVIL` (if set, only
/// there), the version `contracts/package-lock.json` pins (`npm ci` in `contracts/`, what CI
/// uses), `anvil` on `PATH`, and Foundry's default install, `~/.foundry/bin/anvil`.
///
/// `Ok(path)`, or `Err` with the places looked at, for the message.
pub fn find_anvil() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("COHORT_ANVIL") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("COHORT_ANVIL={} is not a file", p.display()))
        };
    }
    let pinned = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../contracts/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil");
    let foundry = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".foundry/bin/anvil"));
    let on_path: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("anvil")).collect())
        .unwrap_or_default();
    std::iter::once(pinned.clone())
        .chain(on_path)
        .chain(foundry.clone())
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!(
                "looked at {} (after `npm ci` in contracts/), `anvil` on PATH and {}",
                pinned.display(),
                foundry.map_or("~/.foundry/bin/anvil (HOME unset)".into(), |f| f
                    .display()
                    .to_string())
            )
        })
}

/// A port nobody listens on (the OS picked it free; the listener is gone).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// An anvil child process on 127.0.0.1, with the embedded EVM's rules (`--hardfork osaka`),
/// answering JSON-RPC when [`Anvil::start`] returns, killed (and reaped) on drop.
#[derive(Debug)]
pub struct Anvil {
    child: Child,
    port: u16,
    url: String,
    bin: PathBuf,
}

impl Anvil {
    /// Starts anvil for the test named `test`. When no anvil is found: `None` (after printing
    /// that `test` is skipped and why) if `COHORT_SKIP_ANVIL=1`, else a panic that says where
    /// it looked and what to do.
    pub fn start(test: &str) -> Option<Self> {
        Self::start_with(test, &[])
    }

    /// [`Anvil::start`] with more command-line arguments (`--auto-impersonate`, say).
    pub fn start_with(test: &str, args: &[&str]) -> Option<Self> {
        let bin = match find_anvil() {
            Ok(bin) => bin,
            Err(looked) if std::env::var("COHORT_SKIP_ANVIL").as_deref() == Ok("1") => {
                eprintln!("skipping {test}: no anvil ({looked}) (COHORT_SKIP_ANVIL=1)");
                return None;
            }
            Err(looked) => panic!(
                "{test} needs anvil and none was found ({looked}): run `npm ci` in contracts/ \
                 (or set COHORT_ANVIL=/path/to/anvil, or COHORT_SKIP_ANVIL=1 to skip the anvil \
                 tests)"
            ),
        };
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            match Self::spawn(&bin, args) {
                Ok(anvil) => return Some(anvil),
                Err(why) => last = why,
            }
        }
        panic!(
            "{test}: anvil ({}) did not start in {START_ATTEMPTS} attempts: {last}",
            bin.display()
        );
    }

    /// One start on a fresh free port; `Err` if anvil exited during startup (the port was
    /// taken, say). A live anvil that does not answer within [`READY_WITHIN`] is a panic.
    fn spawn(bin: &Path, args: &[&str]) -> Result<Self, String> {
        let port = free_port();
        let child = Command::new(bin)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--silent",
            ])
            .args(["--hardfork", "osaka"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut anvil = Self {
            child,
            port,
            url: format!("http://127.0.0.1:{port}"),
            bin: bin.to_path_buf(),
        };
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Ok(Some(status)) = anvil.child.try_wait() {
                return Err(format!("it exited during startup: {status}"));
            }
            if anvil.result("eth_blockNumber", json!([])).is_some() {
                return Ok(anvil);
            }
            assert!(
                Instant::now() < deadline,
                "anvil ({}) at {} did not answer eth_blockNumber within {READY_WITHIN:?}",
                anvil.bin.display(),
                anvil.url
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The JSON-RPC endpoint, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The anvil binary that runs.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// One JSON-RPC request over plain HTTP/1.0 (std only, so a test can check the chain
    /// without the client under test): the whole response object (`result` or `error`), or
    /// `None` if nothing answered within 30 s or the answer was not JSON.
    pub fn rpc(&self, method: &str, params: Value) -> Option<Value> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
        let body =
            json!({ "jsonrpc": "2.0", "id": 1, "method": method, "params": params }).to_string();
        write!(
            s,
            "POST / HTTP/1.0\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            self.port,
            body.len()
        )
        .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let (_, body) = out.split_once("\r\n\r\n")?;
        serde_json::from_str(body).ok()
    }

    /// The `result` of one JSON-RPC request; `None` if nothing answered or the answer was an
    /// error.
    pub fn result(&self, method: &str, params: Value) -> Option<Value> {
        self.rpc(method, params)?.get("result").cloned()
    }
}

impl Drop for Anvil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
