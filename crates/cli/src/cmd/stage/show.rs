use std::process::ExitCode;

use alloy_primitives::{Address, B256};
use cohort_ledger::demo::fmt_tokens;
use cohort_ledger::protocol::Cohort::CohortEvents;
use cohort_ledger::protocol::decode_events;
use cohort_ledger::{LedgerBackend, LedgerError};
use serde::Serialize;

use super::{Party, Place, amount, party, resolve};
use crate::args::int_in;
use crate::output::{Table, print_json};

/// Stage servers, their escrows and the stage parameters. Read-only: the ledger is verified
/// and replayed as `cohort ledger show` does, never written, and no key is needed.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    place: Place,
    /// Only this server: its address (0x...) or its ed25519 public key (64 hex digits).
    #[arg(long, value_name = "ADDR|KEY", value_parser = party)]
    server: Option<Party>,
    /// With --server: its escrow for this period.
    #[arg(long, value_name = "N", requires = "server", value_parser = int_in(0..=u64::MAX))]
    period: Option<u64>,
    /// With --period: what this payer holds in that escrow.
    #[arg(long, value_name = "ADDR|KEY", requires = "period", value_parser = party)]
    payer: Option<Party>,
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
        // A ledger that does not verify is reported as `cohort ledger show` reports it.
        let mut p = match self.place.open_read() {
            Ok(p) => p,
            Err(e) => match (&self.place.ledger, e.downcast_ref::<LedgerError>()) {
                (Some(dir), Some(le)) if e.chain().count() == 1 => {
                    return crate::cmd::ledger::report_failure(dir, le, self.json);
                }
                _ => return Err(e),
            },
        };
        let server = self.server.map(|s| resolve(&p, &s)).transpose()?;
        let payer = self.payer.map(|s| resolve(&p, &s)).transpose()?;
        let sp = p.stage_params()?;
        let params = Params {
            min_stage_stake: amount(sp.minStageStake),
            challenge_window: sp.stageChallengeWindow,
            quorum: sp.stageQuorum,
            slash_bps: sp.stageSlashBps,
            attester_bps: sp.stageAttesterBps,
        };
        let addresses: Vec<Address> = match server {
            Some(a) => vec![a],
            None => {
                let logs = p.backend().contract_logs(p.address())?;
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
                anyhow::bail!("--server {a}: no stage server on {}", self.place.name());
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
        let escrow = match (server, self.period) {
            (Some(server), Some(period)) => {
                let e = p.stage_escrow(server, period)?;
                let paid = match payer {
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
                    payer,
                    paid,
                })
            }
            _ => None,
        };
        let now = p.backend().head()?.time;
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
