use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use alloy_primitives::{Bytes, U256};
use alloy_sol_types::SolCall;
use anyhow::Context;
use cohort_core::{Identity, sha256, tokens};
use cohort_ledger::merkle::verify_inclusion;
use cohort_ledger::protocol::{Cohort, roles};
use cohort_ledger::{
    EmbeddedLedger, LedgerBackend, LedgerConfig, LedgerReader, Protocol, SignedTx, Tx,
};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde::Serialize;

use crate::args::{check_output_file, int_in};
use crate::output::{Table, write_json};

/// Append signed protocol calls in batched commits, re-verify the whole log from disk, and
/// prove and check inclusion proofs.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Write the results here as JSON (checked before any work).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Entries to append (each a `commitDataset` call by one of 64 data owners; all are signed
    /// in memory first, about 0.5 KB each).
    #[arg(
        long,
        default_value_t = 100_000,
        allow_negative_numbers = true,
        value_parser = int_in(1..=2_000_000u64),
    )]
    entries: u64,
    /// Entries per commit (one fsync and one checkpoint signature each).
    #[arg(
        long,
        default_value_t = 1_000,
        allow_negative_numbers = true,
        value_parser = int_in(1..=100_000usize),
    )]
    batch: usize,
    /// Inclusion proofs to time.
    #[arg(
        long,
        default_value_t = 1_000,
        allow_negative_numbers = true,
        value_parser = int_in(1..=10_000_000u64),
    )]
    proofs: u64,
    /// Directory for the ledger (a temporary one by default); it must not hold a ledger.
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Results {
    entries: u64,
    batch: usize,
    threads: usize,
    sign_per_s: f64,
    append_per_s: f64,
    verify_s: f64,
    /// Of `verify_s`: opening read-only, every page of the database checked against its
    /// checksum (in a private copy).
    verify_open_s: f64,
    verify_100k_s: f64,
    open_replay_s: f64,
    verify_timings: cohort_ledger::embedded::VerifyTimings,
    proof_bytes: usize,
    proof_us: f64,
    bytes_per_entry: f64,
}

impl Args {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        if let Some(p) = &self.json {
            check_output_file(p, "--json")?;
        }
        let tmp;
        let dir = match &self.dir {
            Some(d) => d.clone(),
            None => {
                tmp = tempfile::tempdir()?;
                tmp.path().join("ledger")
            }
        };
        let gov = Identity::from_seed(0, "bench-governance");
        let ledger =
            EmbeddedLedger::create(&dir, LedgerConfig::new("cohort.local/bench", gov.clone()))?;
        let mut p = Protocol::deploy(ledger, &gov)?;
        let owners: Vec<Identity> = (0..64)
            .map(|i| Identity::from_seed(0, &format!("owner-{i}")))
            .collect();
        for o in &owners {
            p.mint(&gov, o.address(), tokens(1))?;
            p.register(o, roles::DATA_OWNER)?;
        }
        let contract = p.address();
        let mut ledger = p.into_backend();
        let setup = ledger.len();

        // Clients sign their calls (on their own machines in a real run; here on all cores).
        let origin = ledger.origin().to_owned();
        let base: Vec<u64> = owners.iter().map(|o| ledger.nonce(o.address())).collect();
        let n = self.entries;
        let now = ledger.head()?.time;
        let t = Instant::now();
        let txs: Vec<SignedTx> = (0..n)
            .into_par_iter()
            .map(|i| {
                let k = (i % owners.len() as u64) as usize;
                let call = Cohort::commitDatasetCall {
                    merkleRoot: sha256(&i.to_be_bytes()).into(),
                    manifestHash: sha256(b"manifest").into(),
                    size: 1 + i,
                };
                let tx = Tx {
                    to: Some(contract),
                    value: U256::ZERO,
                    data: Bytes::from(call.abi_encode()),
                    gas_limit: 1 << 24,
                    nonce: base[k] + i / owners.len() as u64,
                    time: now,
                };
                SignedTx::sign(&origin, &owners[k], tx)
            })
            .collect();
        let sign_s = t.elapsed().as_secs_f64();

        let bar = ProgressBar::new(n).with_style(
            ProgressStyle::with_template("append {bar:40} {pos}/{len} {per_sec} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let t = Instant::now();
        let mut it = txs.into_iter();
        loop {
            let chunk: Vec<SignedTx> = it.by_ref().take(self.batch).collect();
            if chunk.is_empty() {
                break;
            }
            let len = chunk.len() as u64;
            for r in ledger.submit_batch(chunk)? {
                r.context("a benchmark transaction failed")?;
            }
            bar.inc(len);
        }
        let append_s = t.elapsed().as_secs_f64();
        bar.finish_and_clear();
        let size = ledger.len();
        let root = ledger.head()?.root;

        // Proofs against the current root.
        let t = Instant::now();
        let mut proof_bytes = 0;
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..self.proofs {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = x % size;
            let path = ledger.inclusion_proof(i, size)?;
            let leaf = ledger_leaf(&ledger, i)?;
            verify_inclusion(&leaf, i, size, &path, &root)?;
            proof_bytes = proof_bytes.max(path.len() * 32);
        }
        let proof_us = t.elapsed().as_secs_f64() * 1e6 / self.proofs as f64;
        drop(ledger);

        let t = Instant::now();
        let reader = LedgerReader::open(&dir)?;
        let verify_open_s = t.elapsed().as_secs_f64();
        let report = reader.verify()?;
        let verify_s = t.elapsed().as_secs_f64();
        drop(reader);
        anyhow::ensure!(
            report.entries == size,
            "verify saw {} entries, expected {size}",
            report.entries
        );

        let t = Instant::now();
        let reopened = EmbeddedLedger::open(&dir)?;
        let open_s = t.elapsed().as_secs_f64();
        anyhow::ensure!(
            reopened.state_root() == report.state_root,
            "replay gave another state"
        );
        let disk = std::fs::metadata(dir.join("ledger.redb"))?.len() as f64;

        let r = Results {
            entries: n,
            batch: self.batch,
            threads: rayon::current_num_threads(),
            sign_per_s: n as f64 / sign_s,
            append_per_s: n as f64 / append_s,
            verify_s,
            verify_open_s,
            verify_100k_s: verify_s * 100_000.0 / size as f64,
            open_replay_s: open_s,
            verify_timings: report.timings.clone(),
            proof_bytes,
            proof_us,
            bytes_per_entry: disk / size as f64,
        };
        let mut t = Table::new(&["measure", "value", "target"]);
        t.row(vec![
            "entries appended (+ setup)".into(),
            format!("{n} (+{setup})"),
            String::new(),
        ]);
        t.row(vec![
            "signing, entries/s".into(),
            format!("{:.0}", r.sign_per_s),
            String::new(),
        ]);
        t.row(vec![
            format!("append, entries/s (batches of {})", self.batch),
            format!("{:.0}", r.append_per_s),
            ">= 20000".into(),
        ]);
        t.row(vec![
            format!("verify {size} entries, s"),
            format!("{:.3}", r.verify_s),
            String::new(),
        ]);
        let vt = &r.verify_timings;
        t.row(vec![
            "  open: every page checksummed, read-only, s".into(),
            format!("{:.2}", r.verify_open_s),
            String::new(),
        ]);
        t.row(vec![
            "  read / decode / signatures | replay / tree, s".into(),
            format!(
                "{:.2} / {:.2} / {:.2} | {:.2} / {:.2}",
                vt.read_s, vt.decode_s, vt.signatures_s, vt.replay_s, vt.tree_s
            ),
            String::new(),
        ]);
        t.row(vec![
            "verify per 100k entries, s".into(),
            format!("{:.3}", r.verify_100k_s),
            "<= 2".into(),
        ]);
        t.row(vec![
            "open for appending (check + replay), s".into(),
            format!("{:.3}", r.open_replay_s),
            String::new(),
        ]);
        t.row(vec![
            "inclusion proof, bytes".into(),
            r.proof_bytes.to_string(),
            "< 1024".into(),
        ]);
        t.row(vec![
            "prove + verify, us".into(),
            format!("{:.1}", r.proof_us),
            "< 100".into(),
        ]);
        t.row(vec![
            "disk, bytes/entry".into(),
            format!("{:.0}", r.bytes_per_entry),
            String::new(),
        ]);
        t.print();
        if let Some(path) = &self.json {
            write_json(path, &r)?;
            eprintln!("wrote {}", path.display());
        }
        Ok(ExitCode::SUCCESS)
    }
}

fn ledger_leaf(l: &EmbeddedLedger, i: u64) -> anyhow::Result<cohort_core::Hash32> {
    l.leaf_hash(i).context("leaf out of range")
}
