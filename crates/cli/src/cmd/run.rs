//! `cohort run CONFIG.toml --out DIR`: a whole federated experiment on the embedded ledger
//! (or, built with `--features evm-rpc`, on an EVM chain with `--chain-rpc URL`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use cohort_core::Identity;
use cohort_fl::runtime::{RunConfig, RunSummary, run};
use cohort_ledger::{EmbeddedLedger, LedgerBackend, LedgerConfig, Protocol};
use indicatif::{ProgressBar, ProgressStyle};

use crate::output::{Table, print_json, write_json};

/// Run a federated experiment: identities and stakes, dataset commitments, R rounds of local
/// training, validator scoring with commit-reveal, robust aggregation, rewards and slashes,
/// all recorded on an embedded ledger in DIR/ledger. Writes DIR/summary.json and update blobs
/// in DIR/blobs.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The run's configuration (TOML; see examples/).
    config: PathBuf,
    /// Output directory (must not hold a previous run).
    #[arg(long)]
    out: PathBuf,
    /// Override the config's seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Override one config value, after the file: a dotted key and a TOML value, e.g.
    /// `attack.fraction=0` (a clean run), `aggregation.strategy={kind="fed-avg"}`,
    /// `attack.attack={kind="sign-flip",scale=3.0}`, `task.preset=test` (a bare word is a
    /// string). Repeatable; applied in order. The effective config is in DIR/summary.json.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Print the summary as JSON instead of tables.
    #[arg(long)]
    json: bool,
    /// A reference run's summary.json (a clean run, say) to draw beside this one in the
    /// report.
    #[arg(long, value_name = "SUMMARY")]
    reference: Option<PathBuf>,
    /// Run on an EVM chain at this JSON-RPC URL (http://) instead of the embedded ledger: the
    /// protocol is deployed there and every registration, stake, update, score and payout is
    /// a transaction on that chain. The chain must let the run set block time
    /// (`evm_setNextBlockTimestamp`: anvil, hardhat). DIR/summary.json then also holds the
    /// chain id, the contract address and every transaction hash, block and gas, and
    /// DIR/report.html names the chain in place of the ledger check; there is no DIR/ledger.
    #[cfg(feature = "evm-rpc")]
    #[arg(long, value_name = "URL")]
    chain_rpc: Option<String>,
    /// Hex private key of an account that pays the participants' gas on that chain (for
    /// anvil, its first default account).
    #[cfg(feature = "evm-rpc")]
    #[arg(
        long,
        env = "COHORT_FUNDER_KEY",
        requires = "chain_rpc",
        hide_env_values = true
    )]
    funder_key: Option<String>,
}

/// Reads a run configuration, applies the `KEY=VALUE` overrides in order (see `--set`) and
/// validates the result.
pub fn load_config(path: &Path, overrides: &[String]) -> anyhow::Result<RunConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut table: toml::Table = toml::from_str(&text)
        .with_context(|| format!("{} is not a valid run config", path.display()))?;
    for o in overrides {
        apply_override(&mut table, o).with_context(|| format!("--set {o}"))?;
    }
    let what = if overrides.is_empty() {
        path.display().to_string()
    } else {
        format!(
            "{} with --set {}",
            path.display(),
            overrides.join(" --set ")
        )
    };
    let cfg: RunConfig = toml::Value::Table(table)
        .try_into()
        .with_context(|| format!("{what} is not a valid run config"))?;
    cfg.validate().with_context(|| what.clone())?;
    Ok(cfg)
}

/// Sets the dotted `KEY` of `table` to `VALUE` (a TOML value; anything that does not parse as
/// one is taken as a string), creating the tables on the way.
fn apply_override(table: &mut toml::Table, o: &str) -> anyhow::Result<()> {
    let Some((key, value)) = o.split_once('=') else {
        bail!("expected KEY=VALUE");
    };
    let value = match toml::from_str::<toml::Table>(&format!("v = {value}")) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(value.to_owned())),
        Err(_) => toml::Value::String(value.trim().to_owned()),
    };
    let parts: Vec<&str> = key.trim().split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        bail!("the key {key:?} has an empty part");
    }
    let (last, path) = parts.split_last().context("empty key")?;
    let mut t = table;
    for (i, p) in path.iter().enumerate() {
        let entry = t
            .entry((*p).to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        t = match entry {
            toml::Value::Table(inner) => inner,
            other => bail!(
                "{} is a {}, not a table",
                parts[..=i].join("."),
                other.type_str()
            ),
        };
    }
    t.insert((*last).to_owned(), value);
    Ok(())
}

impl Args {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let mut cfg = load_config(&self.config, &self.set)?;
        if let Some(s) = self.seed {
            cfg.seed = s;
        }
        // Read before the run, so that a malformed reference fails before any work.
        let reference = self.reference()?;
        #[cfg(feature = "evm-rpc")]
        if let Some(url) = &self.chain_rpc {
            return self.on_chain(&cfg, url, reference.as_ref());
        }
        if self.out.join("ledger").exists() {
            bail!(
                "{} already holds a run; choose another --out",
                self.out.display()
            );
        }
        let blobs = self.prepare_out()?;
        let operator = Identity::from_seed(cfg.seed, "ledger-operator");
        let mut ledger = EmbeddedLedger::create(
            self.out.join("ledger"),
            LedgerConfig::new("cohort.local/run", operator).with_start_time(1_767_225_600),
        )?;
        // One disk sync per round (the runtime flushes after settling) instead of one per
        // commit; a crash loses at most the round in progress.
        ledger.set_sync(cohort_ledger::SyncPolicy::OnFlush)?;
        let started = std::time::Instant::now();
        let (p, summary) = self.experiment(&cfg, ledger, &blobs)?;
        let ledger = p.into_backend();
        let verified = ledger.verify().context("verifying the run's ledger")?;
        let wall = started.elapsed().as_secs_f64();
        write_json(
            &self.out.join("summary.json"),
            &serde_json::json!({ "config": cfg, "summary": summary, "verify": verified, "wall_seconds": wall }),
        )?;
        let report = crate::report::write(
            &self.out,
            &cfg,
            &summary,
            crate::report::Record::Embedded(&verified),
            reference.as_ref(),
            &self.report_info(wall),
        )?;
        if self.json {
            print_json(
                &serde_json::json!({ "summary": summary, "verify": verified, "wall_seconds": wall }),
            )?;
        } else {
            print_human(&summary, &cfg);
            outln!(
                "\nledger {}: {} entries verified, root {}",
                self.out.join("ledger").display(),
                verified.entries,
                verified.root
            );
            outln!(
                "summary {} ({wall:.1} s)",
                self.out.join("summary.json").display()
            );
            outln!("report  {}", report.display());
        }
        Ok(ExitCode::SUCCESS)
    }

    /// Creates DIR/blobs and copies the config into DIR; returns the blob directory.
    fn prepare_out(&self) -> anyhow::Result<PathBuf> {
        let blobs = self.out.join("blobs");
        std::fs::create_dir_all(&blobs).with_context(|| format!("creating {}", blobs.display()))?;
        std::fs::copy(&self.config, self.out.join("config.toml"))
            .with_context(|| format!("copying the config into {}", self.out.display()))?;
        Ok(blobs)
    }

    /// Builds the task and runs the experiment on `backend` with a progress bar.
    fn experiment<B: LedgerBackend>(
        &self,
        cfg: &RunConfig,
        backend: B,
        blobs: &Path,
    ) -> anyhow::Result<(Protocol<B>, RunSummary)> {
        let bar = ProgressBar::new(cfg.coordinator.rounds).with_style(
            ProgressStyle::with_template("round {pos}/{len} {bar:30} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        if self.json {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        // Data files are relative to the config file; a pretrained base model is cached in
        // DIR/base-<hash> (pass it as `base` to reuse it).
        let config_dir = self
            .config
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        bar.set_message("preparing the task");
        bar.enable_steady_tick(std::time::Duration::from_millis(500));
        let task = cohort_fl::learner::build(cfg, &config_dir, &self.out)
            .context("setting up the task")?;
        let (p, summary) = run(cfg, backend, &*task, Some(blobs), |r| {
            bar.set_message(format!(
                "test loss {:.4}{}, accepted {}, rejected {}",
                r.test.loss,
                r.test
                    .accuracy
                    .map(|a| format!(", accuracy {a:.3}"))
                    .unwrap_or_default(),
                r.accepted.len(),
                r.rejected.len()
            ));
            bar.inc(1);
        })
        .context("the run failed")?;
        bar.finish_and_clear();
        Ok((p, summary))
    }

    /// What the report names about this run: config, command line, version, start time.
    fn report_info(&self, wall_seconds: f64) -> crate::report::RunInfo {
        crate::report::RunInfo::of_this_process(&self.config, wall_seconds).with_note(
            "Every key of this run (operator, coordinator, clients, validators) is derived from \
             the seed that summary.json publishes: the run is a reproducible experiment, not a \
             secured one (anyone holding the summary can re-sign its ledger).",
        )
    }

    /// The `--reference` run's summary, if one was given.
    fn reference(&self) -> anyhow::Result<Option<RunSummary>> {
        let Some(path) = &self.reference else {
            return Ok(None);
        };
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        let s: RunSummary = serde_json::from_value(v["summary"].clone())
            .with_context(|| format!("{} is not a cohort run summary.json", path.display()))?;
        Ok(Some(s))
    }
}

#[cfg(feature = "evm-rpc")]
impl Args {
    /// The run on the EVM chain at `url`: the same experiment through
    /// [`cohort_ledger::EvmRpcLedger`], recorded in DIR/summary.json with the chain's id, the
    /// contract address and every transaction.
    fn on_chain(
        &self,
        cfg: &RunConfig,
        url: &str,
        reference: Option<&RunSummary>,
    ) -> anyhow::Result<ExitCode> {
        use cohort_ledger::rpc::PrivateKeySigner;
        if self.out.join("summary.json").exists() || self.out.join("ledger").exists() {
            bail!(
                "{} already holds a run; choose another --out",
                self.out.display()
            );
        }
        let funder = match &self.funder_key {
            Some(k) => Some(k.trim().parse::<PrivateKeySigner>().map_err(|e| {
                anyhow::anyhow!("--funder-key is not a secp256k1 private key: {e}")
            })?),
            None => None,
        };
        let chain = cohort_ledger::EvmRpcLedger::connect(url, funder)?;
        let chain_id = chain.chain_id();
        let blobs = self.prepare_out()?;
        let started = std::time::Instant::now();
        let (p, summary) = self
            .experiment(cfg, chain, &blobs)
            .with_context(|| format!("on the chain at {url}"))?;
        let contract = p.address();
        let chain = p.into_backend();
        let head = chain.head()?;
        let gas: u64 = chain.recorded().iter().map(|t| t.gas_used).sum();
        let txs: Vec<serde_json::Value> = chain
            .recorded()
            .iter()
            .map(|t| serde_json::json!({ "tx_hash": t.tx_hash, "block": t.block, "gas_used": t.gas_used }))
            .collect();
        let wall = started.elapsed().as_secs_f64();
        let record = serde_json::json!({
            "chain_rpc": url,
            "chain_id": chain_id,
            "contract": contract,
            "head": head,
            "gas_used": gas,
            "transactions": txs,
        });
        write_json(
            &self.out.join("summary.json"),
            &serde_json::json!({ "config": cfg, "summary": summary, "chain": record, "wall_seconds": wall }),
        )?;
        let recorded = chain.recorded();
        let blocks = recorded
            .first()
            .zip(recorded.last())
            .map(|(a, b)| (a.block, b.block));
        let report = crate::report::write(
            &self.out,
            cfg,
            &summary,
            crate::report::Record::Chain(&crate::report::ChainRecord {
                url: url.to_owned(),
                chain_id,
                contract: contract.to_string(),
                transactions: txs.len(),
                gas_used: gas,
                blocks,
                root: head.root.to_string(),
            }),
            reference,
            &self.report_info(wall),
        )?;
        if self.json {
            print_json(&serde_json::json!({
                "summary": summary,
                "chain": { "chain_rpc": url, "chain_id": chain_id, "contract": contract,
                    "transactions": txs.len(), "gas_used": gas },
                "wall_seconds": wall,
            }))?;
        } else {
            print_human(&summary, cfg);
            outln!(
                "\nchain {url} (id {chain_id}): protocol at {contract}; {} transactions, {gas} gas, \
                 their receipts on chain (hashes in summary.json)",
                txs.len()
            );
            outln!(
                "summary {} ({wall:.1} s)",
                self.out.join("summary.json").display()
            );
            outln!("report  {}", report.display());
        }
        Ok(ExitCode::SUCCESS)
    }
}

fn print_human(s: &RunSummary, cfg: &RunConfig) {
    outln!("initial test loss {:.4}", s.initial.loss);
    // Columns for the metrics this task reports.
    let acc = s.initial.accuracy.is_some();
    let ppl = s.initial.perplexity.is_some();
    let backdoor = s
        .rounds
        .iter()
        .any(|r| r.test.backdoor_success_rate.is_some());
    let mut head = vec!["round", "test loss"];
    head.extend(ppl.then_some("perplexity"));
    head.extend(acc.then_some("accuracy"));
    head.extend(backdoor.then_some("backdoor"));
    head.extend(["accepted", "rejected", "slashed", "ledger s", "train s"]);
    let mut t = Table::new(&head);
    let opt = |x: Option<f64>, prec: usize| x.map_or("-".into(), |v| format!("{v:.prec$}"));
    for r in &s.rounds {
        let mut row = vec![r.round.to_string(), format!("{:.4}", r.test.loss)];
        if ppl {
            row.push(opt(r.test.perplexity, 3));
        }
        if acc {
            row.push(opt(r.test.accuracy, 3));
        }
        if backdoor {
            row.push(opt(r.test.backdoor_success_rate, 3));
        }
        row.extend([
            r.accepted.len().to_string(),
            format!("{:?}", r.rejected),
            r.slashes.keys().cloned().collect::<Vec<_>>().join(","),
            format!("{:.2}", r.seconds.ledger),
            format!("{:.2}", r.seconds.train),
        ]);
        t.row(row);
    }
    t.print();
    outln!();
    let mut t = Table::new(&["participant", "role", "holdings (balance + stake)"]);
    let mut rows: Vec<(&String, &String)> = s.final_holdings.iter().collect();
    rows.sort_by_key(|(n, _)| {
        let (kind, num) = n.rsplit_once('-').unwrap_or((n.as_str(), ""));
        (kind.to_owned(), num.parse::<u64>().unwrap_or(0))
    });
    for (name, h) in rows {
        let role = match name
            .strip_prefix("client-")
            .and_then(|k| k.parse::<u32>().ok())
        {
            Some(k) if cfg.is_attacker(k) => "client (attacker)",
            Some(_) => "client",
            None => "validator",
        };
        t.row(vec![name.clone(), role.into(), h.clone()]);
    }
    t.print();
}
