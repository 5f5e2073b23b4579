use std::path::PathBuf;
use std::process::ExitCode;

use alloy_primitives::{Address, B256};
use cohort_ledger::LedgerReader;
use cohort_ledger::demo::fmt_tokens;
use cohort_ledger::protocol::Cohort::CohortEvents;
use cohort_ledger::protocol::decode_events;
use serde::Serialize;

use super::{amount, party, protocol_on};
use crate::args::int_in;
use crate::output::{Table, print_json};

/// Stage servers, their escrows and the stage parameters. Read-only: the ledger is verified
/// and replayed as `cohort ledger show` does, never written, and no key is needed.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The embedded ledger's directory.
    #[arg(long, value_name = "DIR")]
    ledger: PathBuf,
    /// Only this server: its address (0x...) or its ed25519 public key (64 hex digits).
    #[arg(long, value_name = "ADDR|KEY", value_parser = party)]
    server: Option<Address>,
    /// With --server: its escrow for this period.
    #[arg(long, value_name = "N", requires = "server", value_parser = int_in(0..=u64::MAX))]
    period: Option<u64>,
    /// With --period: what this payer holds in that escrow.
    #[arg(long, value_name = "ADDR|KEY", requires = "period", value_parser = party)]
    payer: Option<Address>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Params {
    min_stage_stake: String,
    challenge_window: u64,
    quorum: u16,
    slash_bps: u16,
    attester_bps: u16,
}

#[derive(Serialize)]
struct Server {
    address: Address,
    model: B256,
    first_layer: u32,
    end_layer: u32,
    registered_at: u64,
    active: bool,
    /// Active and unbonding stake (base units).
    stake: String,
    unbonding: String,
    slashed_at: Option<u64>,
    slash_claim: Option<B256>,
}

#[derive(Serialize)]
struct Escrow {
    server: Address,
    period: u64,
    /// Held (or, once released, paid out), base units.
    amount: String,
    tokens: u64,
    release_at: u64,
    released: bool,
    /// The payer asked about and what it holds in it.
    payer: Option<Address>,
    paid: Option<String>,
}

impl Args {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let dir = &self.ledger;
        let state = LedgerReader::open(dir).and_then(|r| {
            crate::cmd::ledger::note_recovery(&r);
            r.replay()
        });
        let state = match state {
            Ok(s) => s,
            Err(e) => return crate::cmd::ledger::report_failure(dir, &e, self.json),
        };
        let mut p = protocol_on(state, dir)?;
        let sp = p.stage_params()?;
        let params = Params {
            min_stage_stake: amount(sp.minStageStake),
            challenge_window: sp.stageChallengeWindow,
            quorum: sp.stageQuorum,
            slash_bps: sp.stageSlashBps,
            attester_bps: sp.stageAttesterBps,
        };
        let addresses: Vec<Address> = match self.server {
            Some(a) => vec![a],
            None => {
                let (logs, _) = cohort_ledger::LedgerBackend::logs_since(p.backend(), 0)?;
                let logs: Vec<_> = logs.into_iter().map(|(_, l)| l).collect();
                decode_events(p.address(), &logs)
                    .into_iter()
                    .filter_map(|e| match e {
                        CohortEvents::StageRegistered(r) => Some(r.server),
                        _ => None,
                    })
                    .collect()
            }
        };
        let mut servers = Vec::new();
        for a in addresses {
            let r = p.stage_server(a)?;
            if r.modelHash == B256::ZERO {
                anyhow::bail!("--server {a}: no stage server on this ledger");
            }
            let (active, unbonding, _) = p.stake_of(a)?;
            let slashed = r.slashClaim != B256::ZERO;
            servers.push(Server {
                address: a,
                model: r.modelHash,
                first_layer: r.firstLayer,
                end_layer: r.endLayer,
                registered_at: r.registeredAt,
                active: !slashed,
                stake: amount(active),
                unbonding: amount(unbonding),
                slashed_at: slashed.then_some(r.slashedAt),
                slash_claim: slashed.then_some(r.slashClaim),
            });
        }
        let escrow = match (self.server, self.period) {
            (Some(server), Some(period)) => {
                let e = p.stage_escrow(server, period)?;
                let paid = match self.payer {
                    Some(payer) => Some(amount(p.stage_paid(server, period, payer)?)),
                    None => None,
                };
                Some(Escrow {
                    server,
                    period,
                    amount: amount(e.amount),
                    tokens: e.tokens,
                    release_at: e.releaseAt,
                    released: e.released,
                    payer: self.payer,
                    paid,
                })
            }
            _ => None,
        };
        let now = cohort_ledger::LedgerBackend::head(p.backend())?.time;
        if self.json {
            print_json(&serde_json::json!({
                "contract": p.address(), "time": now, "params": params,
                "servers": servers, "escrow": escrow,
            }))?;
            return Ok(ExitCode::SUCCESS);
        }
        outln!("contract      {}", p.address());
        outln!(
            "stage params  min stake {} tokens, challenge window {} s, quorum {}, slash {} bps \
             ({} bps of it to the attesters)",
            fmt_tokens(sp.minStageStake),
            params.challenge_window,
            params.quorum,
            params.slash_bps,
            params.attester_bps
        );
        outln!();
        let mut t = Table::new(&["server", "model", "layers", "stake", "status"]);
        for s in &servers {
            t.row(vec![
                s.address.to_string(),
                s.model.to_string(),
                format!("{}..{}", s.first_layer, s.end_layer),
                fmt_tokens(p.stake_of(s.address)?.0),
                match s.slashed_at {
                    None => "active".to_owned(),
                    Some(at) => format!("slashed at {at}"),
                },
            ]);
        }
        t.print();
        if let Some(e) = &escrow {
            let held = e.amount.parse().unwrap_or_default();
            outln!(
                "\nperiod {} of {}: {} tokens for {} model tokens, {}",
                e.period,
                e.server,
                fmt_tokens(held),
                e.tokens,
                if e.released {
                    "released".to_owned()
                } else {
                    format!("releasable from {} (it is {now})", e.release_at)
                }
            );
            if let (Some(payer), Some(paid)) = (e.payer, &e.paid) {
                outln!(
                    "  {payer} holds {} tokens of it",
                    fmt_tokens(paid.parse().unwrap_or_default())
                );
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}
