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
    EmbeddedLedger, LedgerBackend, LedgerConfig, LedgerReader, Protocol, SignedCall, SignedTx, Tx,
};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde::Serialize;

use crate::args::{check_output_file, int_in};
use crate::output::{Table, write_json};

/// Append signed protocol calls in batched commits by two paths (signed transactions submitted
/// by the ledger's holder, and party-signed calls carried as bytes and relayed), re-verify the
/// whole log from disk, and prove and check inclusion proofs.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Write the results here as JSON (checked before any work).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Entries to append, each a `commitDataset` call by one of 64 data owners: half by each
    /// path (the first 32 owners' calls submitted as signed transactions, the other 32 owners'
    /// as party-signed calls relayed), in alternating commits. All are signed in memory first,
    /// about 0.5 KB each.
    #[arg(
        long,
        default_value_t = 100_000,
        allow_negative_numbers = true,
        value_parser = int_in(2..=2_000_000u64),
    )]
    entries: u64,
    /// Entries per commit (one fsync and one checkpoint signature each); the two paths take
    /// turns, one commit each.
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
    /// Entries appended as signed transactions the ledger's holder submits (`submit_batch`).
    direct_entries: u64,
    /// Clients' signing of those, entries/s.
    sign_per_s: f64,
    /// Appending them, entries/s.
    append_per_s: f64,
    /// Entries appended as party-signed calls relayed (`LedgerBackend::relay_batch`).
    relay_entries: u64,
    /// Parties' signing of those (`SignedCall::sign` under the relay's context, and encoding
    /// for the transport), entries/s.
    relay_sign_per_s: f64,
    /// Appending them, from the carried bytes: decoding and relaying, entries/s.
    relay_per_s: f64,
    /// Of the relay path's time: decoding the carried bytes, s.
    relay_decode_s: f64,
    /// `relay_per_s / append_per_s`.
    relay_vs_direct: f64,
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

        // Parties sign their calls (on their own machines in a real run; here on all cores).
        // The first half of the owners' calls go the direct path: signed transactions that the
        // ledger's holder submits. The other half's are party-signed calls under the context
        // the relay hands out, carried as bytes and relayed.
        let n = self.entries;
        let half = owners.len() / 2;
        let (direct_owners, relay_owners) = owners.split_at(half);
        let n_direct = n.div_ceil(2);
        let n_relay = n / 2;
        let call_data = |i: u64| {
            Bytes::from(
                Cohort::commitDatasetCall {
                    merkleRoot: sha256(&i.to_be_bytes()).into(),
                    manifestHash: sha256(b"manifest").into(),
                    size: 1 + i,
                }
                .abi_encode(),
            )
        };
        let origin = ledger.origin().to_owned();
        let base: Vec<u64> = direct_owners
            .iter()
            .map(|o| ledger.nonce(o.address()))
            .collect();
        let now = ledger.head()?.time;
        let t = Instant::now();
        let direct: Vec<SignedTx> = (0..n_direct)
            .into_par_iter()
            .map(|i| {
                let k = (i % half as u64) as usize;
                let tx = Tx {
                    to: Some(contract),
                    value: U256::ZERO,
                    data: call_data(2 * i),
                    gas_limit: 1 << 24,
                    nonce: base[k] + i / half as u64,
                    time: now,
                };
                SignedTx::sign(&origin, &direct_owners[k], tx)
            })
            .collect();
        let sign_s = t.elapsed().as_secs_f64();

        let contexts = relay_owners
            .iter()
            .map(|o| ledger.context_for(o.address()))
            .collect::<Result<Vec<_>, _>>()?;
        let t = Instant::now();
        let carried: Vec<Vec<u8>> = (0..n_relay)
            .into_par_iter()
            .map(|i| {
                let k = (i % half as u64) as usize;
                let ctx = contexts[k].ahead(i / half as u64)?;
                let signed =
                    SignedCall::sign(&relay_owners[k], Some(contract), call_data(2 * i + 1), &ctx)?;
                Ok(signed.encode())
            })
            .collect::<Result<_, cohort_ledger::LedgerError>>()?;
        let relay_sign_s = t.elapsed().as_secs_f64();

        let bar = ProgressBar::new(n).with_style(
            ProgressStyle::with_template("append {bar:40} {pos}/{len} {per_sec} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let (mut append_s, mut relay_s, mut relay_decode_s) = (0.0, 0.0, 0.0);
        let mut direct = direct.into_iter();
        let mut carried = carried.into_iter();
        for turn in 0u64.. {
            // One commit of each path in turn, so that both see the log at the same sizes; which
            // goes first alternates, so that neither always follows the other's commit.
            let chunk: Vec<SignedTx> = direct.by_ref().take(self.batch).collect();
            let bytes: Vec<Vec<u8>> = carried.by_ref().take(self.batch).collect();
            if chunk.is_empty() && bytes.is_empty() {
                break;
            }
            let len = (chunk.len() + bytes.len()) as u64;
            let mut chunk = Some(chunk).filter(|c| !c.is_empty());
            let mut bytes = Some(bytes).filter(|b| !b.is_empty());
            for relay_now in [turn % 2 == 1, turn % 2 == 0] {
                if relay_now {
                    let Some(bytes) = bytes.take() else { continue };
                    let t = Instant::now();
                    let calls = bytes
                        .iter()
                        .map(|b| SignedCall::decode(b))
                        .collect::<Result<Vec<_>, _>>()?;
                    relay_decode_s += t.elapsed().as_secs_f64();
                    for r in ledger.relay_batch(calls)? {
                        r.context("a relayed benchmark call failed")?;
                    }
                    relay_s += t.elapsed().as_secs_f64();
                } else {
                    let Some(chunk) = chunk.take() else { continue };
                    let t = Instant::now();
                    for r in ledger.submit_batch(chunk)? {
                        r.context("a benchmark transaction failed")?;
                    }
                    append_s += t.elapsed().as_secs_f64();
                }
            }
            bar.inc(len);
        }
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

        let append_per_s = n_direct as f64 / append_s;
        let relay_per_s = n_relay as f64 / relay_s;
        let r = Results {
            entries: n,
            batch: self.batch,
            threads: rayon::current_num_threads(),
            direct_entries: n_direct,
            sign_per_s: n_direct as f64 / sign_s,
            append_per_s,
            relay_entries: n_relay,
            relay_sign_per_s: n_relay as f64 / relay_sign_s,
            relay_per_s,
            relay_decode_s,
            relay_vs_direct: relay_per_s / append_per_s,
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
            format!("signing {n_direct} signed transactions, entries/s"),
            format!("{:.0}", r.sign_per_s),
            String::new(),
        ]);
        t.row(vec![
            format!(
                "append signed transactions, entries/s (batches of {})",
                self.batch
            ),
            format!("{:.0}", r.append_per_s),
            ">= 20000".into(),
        ]);
        t.row(vec![
            format!("signing {n_relay} party-signed calls + encoding, entries/s"),
            format!("{:.0}", r.relay_sign_per_s),
            String::new(),
        ]);
        t.row(vec![
            format!(
                "append relayed party-signed calls, entries/s (batches of {})",
                self.batch
            ),
            format!("{:.0}", r.relay_per_s),
            String::new(),
        ]);
        t.row(vec![
            "  of which decoding the carried bytes, s".into(),
            format!("{:.3} of {relay_s:.3}", r.relay_decode_s),
            String::new(),
        ]);
        t.row(vec![
            "relayed / signed transactions".into(),
            format!("{:.3}", r.relay_vs_direct),
            String::new(),
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
