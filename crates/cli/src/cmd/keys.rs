//! `cohort keys ...`: a party's signing key as a file.
//!
//! The file is an ed25519 private key in PKCS#8 PEM (what `openssl genpkey -algorithm ed25519`
//! writes; see [`cohort_core::keyfile`]), mode 0600. `new` makes one from the operating
//! system's random source and never overwrites a file; `show` reads one (and refuses it if
//! group or others can access it) and prints what a party is known by: its public key, the
//! address the protocol gives it on the embedded ledger and, on an EVM chain, the address of
//! the secp256k1 key derived from the same secret (docs/keys.md).
//!
//! `tls` makes what a federation without a PKI needs for TLS: a private CA certificate for the
//! parties to trust, and a server certificate and key for the coordinator
//! ([`cohort_net::tls::FederationTls`]; docs/network.md).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args as ClapArgs, Subcommand};
use cohort_core::{Identity, keyfile};
use rand::RngCore;
use serde::Serialize;

use crate::args::int_in;
use crate::output::print_json;

#[derive(Debug, Subcommand)]
pub enum KeysCmd {
    /// Create a new ed25519 key file (mode 0600) and print its public key and addresses.
    New(NewArgs),
    /// Print the public key and addresses of a key file.
    Show(ShowArgs),
    /// Write the key file of a party of a finished run (`cohort run --out DIR`): its keys
    /// derive from the run's seed, or from DIR/keys/run.key with --random-keys; for signing
    /// that party's `cohort gov` and `cohort market` calls on the run's ledger.
    Export(ExportArgs),
    /// Make a private CA and a TLS server certificate for a coordinator (a federation without
    /// a PKI): DIR/ca.pem for the parties, DIR/server.pem and DIR/server.key for the coordinator.
    Tls(TlsArgs),
}

#[derive(Debug, ClapArgs)]
pub struct TlsArgs {
    /// The directory to write ca.pem, server.pem and server.key into (created if absent;
    /// refused if it already holds any of them).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// A name the parties dial the coordinator by: a DNS name (coordinator.example.org) or an
    /// IP address (192.0.2.10, 127.0.0.1). Repeat for several.
    #[arg(long = "name", value_name = "HOST", required = true, value_parser = server_name)]
    names: Vec<String>,
    /// How many days the certificates stay valid.
    #[arg(long, default_value_t = 365, value_parser = int_in(1..=cohort_net::tls::MAX_DAYS))]
    days: u32,
    /// Print a JSON object (the files, the names, the validity and the CA's SHA-256
    /// fingerprint) instead of text.
    #[arg(long)]
    json: bool,
}

/// `--name`: a host a server certificate can be made for.
fn server_name(s: &str) -> Result<String, String> {
    cohort_net::tls::ServerName::parse(s)
        .map(|n| n.to_string())
        .map_err(|e| e.to_string())
}

#[derive(Debug, Serialize)]
struct TlsInfo {
    /// The CA certificate every party trusts (`--ca`).
    ca_cert: PathBuf,
    /// The coordinator's certificate (`--tls-cert`).
    server_cert: PathBuf,
    /// Its private key, mode 0600 (`--tls-key`).
    server_key: PathBuf,
    /// The names the server certificate is made for.
    names: Vec<String>,
    not_before: String,
    not_after: String,
    /// SHA-256 of the CA certificate as OpenSSL prints it (`openssl x509 -in ca.pem -noout
    /// -fingerprint -sha256`).
    ca_sha256: String,
}

impl TlsArgs {
    fn execute(self) -> anyhow::Result<()> {
        use cohort_net::tls::{FederationTls, TlsFiles, utc};
        let files = TlsFiles::in_dir(&self.out);
        files
            .check_new(&self.out)
            .map_err(|e| anyhow::anyhow!("--out {}: {e}", self.out.display()))?;
        if let Some(parent) = self.out.parent().filter(|p| !p.as_os_str().is_empty())
            && !parent.is_dir()
        {
            anyhow::bail!(
                "--out {}: the directory {} does not exist",
                self.out.display(),
                parent.display()
            );
        }
        let made = FederationTls::new(&self.names, self.days, std::time::SystemTime::now())?;
        let files = made
            .write(&self.out)
            .map_err(|e| anyhow::anyhow!("--out {}: {e}", self.out.display()))?;
        let info = TlsInfo {
            names: made.names().iter().map(ToString::to_string).collect(),
            not_before: utc(made.not_before()),
            not_after: utc(made.not_after()),
            ca_sha256: made.ca_fingerprint(),
            ca_cert: files.ca_cert,
            server_cert: files.server_cert,
            server_key: files.server_key,
        };
        if self.json {
            return print_json(&info);
        }
        let (ca, cert, key) = (
            info.ca_cert.display(),
            info.server_cert.display(),
            info.server_key.display(),
        );
        outln!("wrote {}", self.out.display());
        outln!(
            "  ca.pem      the federation's CA certificate: give it to every party (not secret)"
        );
        outln!(
            "  server.pem  the coordinator's certificate, for {}",
            info.names.join(", ")
        );
        outln!("  server.key  its private key (mode 0600): keep it on the coordinator only");
        outln!(
            "valid         {} to {} ({} days)",
            info.not_before,
            info.not_after,
            self.days
        );
        outln!("CA SHA-256    {}", info.ca_sha256);
        outln!(
            "The CA's private key signed server.pem and was discarded: no other certificate can be \
             made under this CA. To renew or add a name, run this again and hand out the new ca.pem."
        );
        outln!();
        outln!(
            "coordinator:  cohort coordinator CONFIG.toml --listen ADDR --tls-cert {cert} --tls-key {key} ..."
        );
        outln!(
            "parties:      cohort client --coordinator https://{}:PORT --ca {ca} ...",
            url_host(&info.names[0])
        );
        outln!(
            "              (each party checks its copy: openssl x509 -in ca.pem -noout -fingerprint -sha256)"
        );
        Ok(())
    }
}

/// A name as the host part of a URL (IPv6 addresses in brackets).
fn url_host(name: &str) -> String {
    if name.contains(':') {
        format!("[{name}]")
    } else {
        name.to_owned()
    }
}

#[derive(Debug, ClapArgs)]
pub struct NewArgs {
    /// Where to write the key (refused if it exists; its directory must exist).
    #[arg(long)]
    out: PathBuf,
    /// Print a JSON object (`public_key`, `address`, `chain_address`, `file`) instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, ClapArgs)]
pub struct ExportArgs {
    /// The run's directory.
    run: PathBuf,
    /// The party: `coordinator`, `client-K` or `validator-V` (K, V its index in the run).
    #[arg(long, value_name = "NAME")]
    party: String,
    /// Where to write the key (refused if it exists; its directory must exist).
    #[arg(long)]
    out: PathBuf,
    /// Print a JSON object instead of text.
    #[arg(long)]
    json: bool,
}

impl ExportArgs {
    fn execute(self) -> anyhow::Result<()> {
        let run = crate::cmd::unlearn::RunDir::open(&self.run)?;
        let (clients, validators) = (run.cfg.clients, run.cfg.validators);
        let known = self.party == "coordinator"
            || [("client-", clients), ("validator-", validators)]
                .iter()
                .any(|(prefix, n)| {
                    self.party
                        .strip_prefix(prefix)
                        .and_then(|k| k.parse::<usize>().ok())
                        .is_some_and(|k| {
                            k < *n && k.to_string().len() == self.party.len() - prefix.len()
                        })
                });
        if !known {
            anyhow::bail!(
                "--party {:?}: not a party of {} (coordinator, client-0..client-{}, \
                 validator-0..validator-{})",
                self.party,
                self.run.display(),
                clients - 1,
                validators - 1
            );
        }
        check_new_key_path(&self.out)?;
        let id = run.identity(&self.party);
        keyfile::write_new(&self.out, &id).map_err(|e| anyhow::anyhow!("--out {e}"))?;
        KeyInfo::of(self.out, &id).print(self.json)
    }
}

#[derive(Debug, ClapArgs)]
pub struct ShowArgs {
    /// The key file.
    file: PathBuf,
    /// Print a JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct KeyInfo {
    file: PathBuf,
    /// The ed25519 public key, hex.
    public_key: String,
    /// `msg.sender` of this key on the embedded ledger: the last 20 bytes of
    /// keccak256(public_key).
    address: String,
    /// `msg.sender` of this key on an EVM chain (its derived secp256k1 key); present when cohort
    /// is built with the `evm-rpc` feature.
    #[serde(skip_serializing_if = "Option::is_none")]
    chain_address: Option<String>,
}

impl KeyInfo {
    fn of(file: PathBuf, id: &Identity) -> Self {
        #[cfg(feature = "evm-rpc")]
        let chain_address = Some(cohort_ledger::rpc::evm_signer(id).address().to_string());
        #[cfg(not(feature = "evm-rpc"))]
        let chain_address = None;
        Self {
            file,
            public_key: hex::encode(id.public_key()),
            address: id.address().to_string(),
            chain_address,
        }
    }

    fn print(&self, json: bool) -> anyhow::Result<()> {
        if json {
            return print_json(self);
        }
        outln!("key file       {}", self.file.display());
        outln!("public key     {}", self.public_key);
        outln!("address        {} (embedded ledger)", self.address);
        if let Some(a) = &self.chain_address {
            outln!("chain address  {a} (EVM chains: its derived secp256k1 key)");
        }
        Ok(())
    }
}

impl KeysCmd {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        match self {
            Self::New(a) => {
                check_new_key_path(&a.out)?;
                let mut secret = [0u8; 32];
                rand::rng().fill_bytes(&mut secret);
                let name = a
                    .out
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "key".into());
                let id = Identity::from_secret(&name, secret);
                keyfile::write_new(&a.out, &id).map_err(|e| anyhow::anyhow!("--out {e}"))?;
                KeyInfo::of(a.out, &id).print(a.json)?;
            }
            Self::Show(a) => {
                let id = keyfile::load(&a.file)?;
                KeyInfo::of(a.file, &id).print(a.json)?;
            }
            Self::Tls(a) => a.execute()?,
            Self::Export(a) => a.execute()?,
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Refuses, before any work, an `--out` that cannot become a new key file.
fn check_new_key_path(path: &std::path::Path) -> anyhow::Result<()> {
    if path.as_os_str().is_empty() {
        anyhow::bail!("--out: the path is empty");
    }
    if path.exists() || path.is_symlink() {
        anyhow::bail!(
            "--out {}: already exists; a key file is never overwritten (choose another path)",
            path.display()
        );
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    if !parent.is_dir() {
        anyhow::bail!(
            "--out {}: the directory {} does not exist",
            path.display(),
            parent.display()
        );
    }
    Ok(())
}
