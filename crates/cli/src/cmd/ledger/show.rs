use std::collections::BTreeMap;
use std::process::ExitCode;

use alloy_primitives::Address;
use cohort_ledger::demo::fmt_tokens;
use cohort_ledger::protocol::{Cohort::CohortEvents, decode_events};
use cohort_ledger::{LedgerReader, Protocol};
use serde::Serialize;

use crate::args::int_in;
use crate::output::{Table, print_json};

/// Show a ledger: its checkpoint, its last entries, and every participant's balance and stake.
/// Read-only; needs no key. The ledger is verified first (signatures, links, receipts, root
/// against the signed checkpoint), as `cohort ledger verify` does: a ledger that fails is not
/// shown, and the command exits 1 naming what is wrong (2 if it cannot be read).
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    source: super::Source,
    /// How many of the latest entries to list (0 for all).
    #[arg(long, default_value_t = 20, allow_negative_numbers = true, value_parser = int_in(0u64..))]
    entries: u64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct EntryRow {
    seq: u64,
    time: u64,
    author: Address,
    call: String,
    gas: u64,
    events: Vec<String>,
}

#[derive(Serialize)]
struct Account {
    address: Address,
    roles: u8,
    balance: String,
    stake: String,
}

impl Args {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        self.source.check()?;
        let ledger = match self.source.dir() {
            Some(dir) => {
                let state = LedgerReader::open(dir).and_then(|r| {
                    super::note_recovery(&r);
                    r.replay()
                });
                match state {
                    Ok(s) => s,
                    Err(e) => return super::report_failure(dir, &e, self.json),
                }
            }
            None => match self.source.remote_state(self.json)? {
                Ok(state) => state,
                Err(code) => return Ok(code),
            },
        };
        let size = ledger.len();
        let first = if self.entries == 0 {
            0
        } else {
            size.saturating_sub(self.entries)
        };
        // The protocol contract is the first one deployed.
        let mut contract = None;
        let mut registered: BTreeMap<Address, u8> = BTreeMap::new();
        let mut rows = Vec::new();
        for e in ledger.entries() {
            let seq = e.seq;
            if contract.is_none() {
                contract = e.receipt.created;
            }
            let events = contract
                .map(|c| decode_events(c, &e.receipt.logs))
                .unwrap_or_default();
            for ev in &events {
                if let CohortEvents::Registered(r) = ev {
                    registered.insert(r.who, r.roles);
                }
            }
            if seq >= first {
                rows.push(EntryRow {
                    seq,
                    time: e.time(),
                    author: e.tx.sender(),
                    call: super::call_name(e.tx.tx.to, &e.tx.tx.data),
                    gas: e.receipt.gas_used,
                    events: events.iter().map(super::event_name).collect(),
                });
            }
        }
        let origin = ledger.origin().to_owned();
        let note = ledger.checkpoint_note().to_owned();
        let verifier = ledger.verifier_key();
        let state_root = ledger.state_root();
        let mut accounts = Vec::new();
        let mut supply = None;
        if let Some(c) = contract {
            let mut p = Protocol::at(ledger, c);
            for (addr, roles) in &registered {
                let (active, _, _) = p.stake_of(*addr)?;
                accounts.push(Account {
                    address: *addr,
                    roles: *roles,
                    balance: fmt_tokens(p.balance_of(*addr)?),
                    stake: fmt_tokens(active),
                });
            }
            supply = Some(p.supply()?);
        }
        if self.json {
            print_json(&serde_json::json!({
                "origin": origin, "size": size, "contract": contract,
                "checkpoint": note, "verifier_key": verifier, "verified": true,
                "state_root": state_root,
                "entries": rows, "accounts": accounts, "supply": supply,
            }))?;
            return Ok(ExitCode::SUCCESS);
        }
        outln!("origin        {origin}");
        outln!("entries       {size}");
        outln!(
            "verified      signatures, links, receipts and root match the checkpoint signed by \
             the operator key"
        );
        if let Some(c) = contract {
            outln!("contract      {c}");
        }
        outln!("verifier key  {verifier}");
        outln!();
        let mut t = Table::new(&["seq", "time", "author", "call", "gas", "events"]);
        for r in &rows {
            t.row(vec![
                r.seq.to_string(),
                r.time.to_string(),
                r.author.to_string(),
                r.call.clone(),
                r.gas.to_string(),
                r.events.join(","),
            ]);
        }
        t.print();
        if !accounts.is_empty() {
            outln!();
            let mut t = Table::new(&["address", "roles", "balance", "stake"]);
            for a in &accounts {
                t.row(vec![
                    a.address.to_string(),
                    role_names(a.roles),
                    a.balance.clone(),
                    a.stake.clone(),
                ]);
            }
            t.print();
        }
        if let Some(s) = supply {
            outln!(
                "\nsupply: minted {} = balances {} + staked {} + escrowed {} + pools {} + treasury {} + burned {} ({})",
                fmt_tokens(s.minted),
                fmt_tokens(s.balances),
                fmt_tokens(s.staked),
                fmt_tokens(s.escrowed),
                fmt_tokens(s.pools),
                fmt_tokens(s.treasury),
                fmt_tokens(s.burned),
                if s.conserved() {
                    "conserved"
                } else {
                    "NOT CONSERVED"
                }
            );
        }
        outln!("\ncheckpoint:\n{note}");
        Ok(ExitCode::SUCCESS)
    }
}

fn role_names(r: u8) -> String {
    use cohort_ledger::protocol::roles::*;
    let names: Vec<&str> = [
        (COORDINATOR, "coordinator"),
        (CLIENT, "client"),
        (VALIDATOR, "validator"),
        (DATA_OWNER, "data-owner"),
    ]
    .iter()
    .filter(|(b, _)| r & b != 0)
    .map(|(_, n)| *n)
    .collect();
    names.join("+")
}
