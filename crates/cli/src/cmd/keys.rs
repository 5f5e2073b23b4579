//! `cohort keys ...`: a party's signing key as a file.
//!
//! The file is an ed25519 private key in PKCS#8 PEM (what `openssl genpkey -algorithm ed25519`
//! writes; see [`cohort_core::keyfile`]), mode 0600. `new` makes one from the operating
//! system's random source and never overwrites a file; `show` reads one (and refuses it if
//! group or others can access it) and prints what a party is known by: its public key, the
//! address the protocol gives it on the embedded ledger and, on an EVM chain, the address of
//! the secp256k1 key derived from the same secret (docs/keys.md).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args as ClapArgs, Subcommand};
use cohort_core::{Identity, keyfile};
use rand::RngCore;
use serde::Serialize;

use crate::output::print_json;

#[derive(Debug, Subcommand)]
pub enum KeysCmd {
    /// Create a new ed25519 key file (mode 0600) and print its public key and addresses.
    New(NewArgs),
    /// Print the public key and addresses of a key file.
    Show(ShowArgs),
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
