//! `cohort coordinator`, `cohort client`, `cohort validator`: a federation of separate
//! processes over gRPC (cohort-net; docs/network.md).
//!
//! The coordinator is `cohort run` with its parties outside: it takes the same CONFIG, --out,
//! --set, --seed, --resume and writes the same DIR (ledger, summary.json, report.html,
//! provenance), but the clients and validators are the processes that dial in with the keys
//! its admission list names. Each party runs the N-th client or validator of the same config
//! (`--config CONFIG --index N`: the model, the task and its settings, and by default its
//! partition of the config's data), holds its own key file and signs its own registration,
//! stake, dataset commitment, updates, commitments and reveals. A party with data of its own
//! gives it instead of its partition: `cohort client --data FILE`, `cohort validator
//! --holdout FILE` (cohort_tasks::own).

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use cohort_net::admit::Admit;
use cohort_net::party::{Dial, host};
use cohort_net::run::Listen;
use cohort_node::attack::SybilRing;
use cohort_node::runtime::party_node;
use cohort_node::transport::Party;
use cohort_tasks::OwnData;

use crate::args::int_in;

/// The network side `cohort coordinator` hands to the run.
#[derive(Debug)]
pub struct Network {
    listener: TcpListener,
    admit: Admit,
    tls: Option<cohort_net::tls::ServerTlsConfig>,
    enrol: Duration,
    /// The blob store given with --blobs, shared with the parties that give it too.
    blobs: Option<std::sync::Arc<dyn cohort_blob::BlobStore>>,
}

impl Network {
    /// The address it listens on.
    pub fn addr(&self) -> anyhow::Result<SocketAddr> {
        self.listener.local_addr().context("the listening socket")
    }

    /// Whether it serves TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// What the run needs, for the run whose ledger origin is `origin`.
    pub fn into_listen(self, origin: &str) -> Listen {
        Listen {
            listener: self.listener,
            admit: self.admit,
            tls: self.tls,
            enrol: self.enrol,
            run: origin.to_owned(),
            blobs: self.blobs,
        }
    }
}

/// Host a federation: the rounds, the embedded ledger (or, with --chain-rpc, the relay of the
/// parties' own transactions to an EVM chain) and the blob store, for clients and validators
/// that run as processes of their own and dial in (`cohort client`, `cohort validator`).
/// Takes everything `cohort run` takes (CONFIG, --out, --set, --seed, --resume, --events,
/// --blobs, ...) and writes the same run directory.
#[derive(Debug, clap::Args)]
pub struct CoordinatorArgs {
    #[command(flatten)]
    run: super::run::Args,
    /// Where to listen, HOST:PORT (for example 0.0.0.0:7700; port 0 takes a free port and
    /// prints it).
    #[arg(long, value_name = "ADDR")]
    listen: String,
    /// The admission list: one `ROLE PUBLIC_KEY_HEX` line per party (ROLE is client or
    /// validator; the key as `cohort keys new` prints it); a party's index is its position
    /// among its role's lines. Its counts must be the config's.
    #[arg(long, value_name = "FILE")]
    admit: PathBuf,
    /// The server's certificate chain (PEM; `cohort keys tls` makes one).
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls_key",
        conflicts_with = "insecure"
    )]
    tls_cert: Option<PathBuf>,
    /// The server certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve plain text, without TLS (for loopback and tests only).
    #[arg(long)]
    insecure: bool,
    /// Seconds to wait for every admitted party to connect and enrol before the rounds start
    /// without the missing ones.
    #[arg(long, value_name = "SECONDS", default_value_t = 600, value_parser = int_in(1..=86_400u64))]
    enrol_timeout: u64,
}

impl CoordinatorArgs {
    pub fn execute(mut self) -> anyhow::Result<ExitCode> {
        init_logging();
        if self.run.transport != super::run::TransportKind::InProcess {
            bail!(
                "--transport: a coordinator's parties are the processes that dial in; leave it out"
            );
        }
        // Everything is checked before anything is created.
        let tls = match (&self.tls_cert, &self.tls_key, self.insecure) {
            (Some(cert), Some(key), false) => {
                Some(cohort_net::tls::server_config(cert, key).context("--tls-cert/--tls-key")?)
            }
            (None, None, true) => None,
            _ => bail!(
                "give the server's certificate and key (--tls-cert FILE --tls-key FILE; `cohort \
                 keys tls` makes them), or --insecure for plain text"
            ),
        };
        let admit = Admit::load(&self.admit).context("--admit")?;
        if self.run.on_a_chain() {
            admit
                .chain_roster()
                .map_err(|why| anyhow::anyhow!("--admit {}: {why}", self.admit.display()))?;
        }
        let cfg = super::run::load_config(&self.run.config, &self.run.set, self.run.seed)?;
        if (admit.clients.len(), admit.validators.len()) != (cfg.clients, cfg.validators) {
            bail!(
                "--admit {}: {} clients and {} validators are admitted, the config has {} and {}",
                self.admit.display(),
                admit.clients.len(),
                admit.validators.len(),
                cfg.clients,
                cfg.validators
            );
        }
        if self.run.check {
            return self.run.execute();
        }
        // A blob store given explicitly is shared: parties given the same --blobs read and write
        // blobs there, and the coordinator reads their replies' blobs from it.
        let blobs = match &self.run.blobs {
            Some(spec) => Some(std::sync::Arc::from(
                cohort_blob::open(spec).context("--blobs")?,
            )),
            None => None,
        };
        let listener = TcpListener::bind(&self.listen)
            .with_context(|| format!("--listen {}: cannot listen there", self.listen))?;
        // The coordinator's and the governance's keys come from a fresh secret kept in
        // DIR/keys/run.key: the published seed must not let anyone sign as them.
        if !self.run.resume {
            self.run.random_keys = true;
        }
        *self
            .run
            .network
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Network {
            listener,
            admit,
            tls,
            enrol: Duration::from_secs(self.enrol_timeout),
            blobs,
        });
        self.run.execute()
    }
}

/// The options a client and a validator share.
#[derive(Debug, clap::Args)]
pub struct PartyArgs {
    /// The coordinator's URL: https://HOST:PORT, or http://HOST:PORT with --insecure.
    #[arg(long, value_name = "URL")]
    coordinator: String,
    /// This party's key file (`cohort keys new`; mode 0600). Its public key must be the one
    /// the coordinator admitted at --index.
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// The experiment's config: this party is its --index-th client or validator, with its
    /// model, task and settings and, without --data/--holdout, that party's partition of the
    /// data (the coordinator's config, --set and --seed).
    #[arg(long, value_name = "CONFIG")]
    config: PathBuf,
    /// This party's index among its role.
    #[arg(long, value_parser = int_in(0..=1_000_000u32))]
    index: u32,
    /// Override a config value, as `cohort run --set` (give the coordinator's).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Override the config's seed (give the coordinator's).
    #[arg(long, value_parser = int_in(0..=u64::MAX))]
    seed: Option<u64>,
    /// The CA certificate to trust (PEM; `cohort keys tls` makes one).
    #[arg(long, value_name = "FILE", conflicts_with = "insecure")]
    ca: Option<PathBuf>,
    /// The name the coordinator's certificate was made for (default: the URL's host).
    #[arg(long, value_name = "NAME", requires = "ca")]
    server_name: Option<String>,
    /// Dial in plain text, without TLS (for loopback and tests only).
    #[arg(long)]
    insecure: bool,
    /// Where the task may cache what it builds (a pretrained base model); default: a new
    /// temporary directory.
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,
    /// Seconds to keep dialling without a session before giving up.
    #[arg(long, value_name = "SECONDS", default_value_t = 600, value_parser = int_in(1..=86_400u64))]
    give_up: u64,
    /// The blob store the coordinator shares (its --blobs: s3://BUCKET/PREFIX, credentials from
    /// the AWS_* environment, or a directory both can reach): this party reads the models it is
    /// sent and writes its updates there, and only their hashes travel through the
    /// coordinator. A blob it cannot find or write there goes through the coordinator.
    #[arg(long, value_name = "DIR|s3://BUCKET/PREFIX")]
    blobs: Option<String>,
    /// A node of the EVM chain the coordinator records the run on (http://HOST:PORT): this
    /// party broadcasts each transaction it signs itself, through that node, before it sends
    /// its reply to the coordinator, so that a coordinator cannot keep it off the chain; the
    /// coordinator finds it there. The node's chain id must be the one the coordinator names
    /// (the party stops otherwise, and when the coordinator records on its embedded ledger).
    /// Needs a build with `--features evm-rpc`.
    #[arg(long, value_name = "URL")]
    chain_rpc: Option<String>,
    /// Check the URL, the CA, the key file, the config, --index and the files the task reads
    /// (--data/--holdout included) as a start would, print what this party would do and exit
    /// without dialling.
    #[arg(long)]
    check: bool,
}

impl PartyArgs {
    fn dial(&self) -> anyhow::Result<Dial> {
        let mut dial = dial_to(
            "--coordinator",
            &self.coordinator,
            self.ca.as_deref(),
            self.server_name.as_deref(),
            self.insecure,
            Duration::from_secs(self.give_up),
        )?;
        if let Some(spec) = &self.blobs {
            dial.blobs = Some(std::sync::Arc::from(
                cohort_blob::open(spec).context("--blobs")?,
            ));
        }
        if let Some(url) = &self.chain_rpc {
            dial.chain = Some(own_chain(url)?);
        }
        Ok(dial)
    }

    /// Runs the party of `role`; `own` is its own data file (--data for a client, --holdout
    /// for a validator), replacing its partition of the config's data.
    fn execute(self, role: &str, own: Option<PathBuf>) -> anyhow::Result<ExitCode> {
        init_logging();
        let dial = self.dial()?;
        let id = cohort_core::keyfile::load(&self.key).context("--key")?;
        let cfg = super::run::load_config(&self.config, &self.set, self.seed)?;
        let party = match role {
            "client" if (self.index as usize) < cfg.clients => Party::Client(self.index),
            "validator" if (self.index as usize) < cfg.validators => Party::Validator(self.index),
            _ => bail!(
                "--index {}: the config has {} {role}s (indices 0 to {})",
                self.index,
                if role == "client" {
                    cfg.clients
                } else {
                    cfg.validators
                },
                if role == "client" {
                    cfg.clients
                } else {
                    cfg.validators
                }
                .saturating_sub(1)
            ),
        };
        let config_dir = super::run::check_task_inputs(&cfg, &self.config)?;
        let own = own.map(|path| match party {
            Party::Client(index) => OwnData::Client { index, path },
            Party::Validator(index) => OwnData::Holdout { index, path },
        });
        let data = match &own {
            Some(own) => {
                let summary = cohort_tasks::check_own_data(&cfg, &config_dir, own)?;
                format!("its own data {summary}")
            }
            None => format!("its partition of {}", self.config.display()),
        };
        let task_name = cohort_tasks::task_name(&cfg.task);
        if self.check {
            println!(
                "{party}: key {} ({}), task {task_name}, data: {data}, would dial {} ({}){}; \
                 nothing was started",
                hex::encode(id.public_key()),
                self.key.display(),
                dial.url,
                if dial.tls.is_some() {
                    "TLS"
                } else {
                    "plain text"
                },
                dial.chain.as_ref().map_or(String::new(), |c| format!(
                    " and submit its own transactions through {} (chain id {})",
                    c.url(),
                    c.chain_id()
                ))
            );
            return Ok(ExitCode::SUCCESS);
        }
        let tmp;
        let cache = match &self.cache {
            Some(d) => d.clone(),
            None => {
                tmp = tempfile::tempdir().context("a temporary directory for the task")?;
                tmp.path().to_path_buf()
            }
        };
        eprintln!(
            "{party}: key {}, task {task_name}, data: {data}, dialling {}",
            hex::encode(id.public_key()),
            dial.url
        );
        // A client trains through the stage servers of `[pipeline]`, when the config has one.
        let trains = matches!(party, cohort_node::transport::Party::Client(_));
        let task = crate::cmd::model::build_task(&cfg, &config_dir, &cache, own.as_ref(), trains)
            .context("setting up the task")?;
        // Salts from the OS: the config's seed is public in a federation.
        let node = party_node(&cfg, party, id, &*task, &SybilRing::new(), true);
        let reason = host(vec![node], &dial).with_context(|| format!("{party}"))?;
        eprintln!("{party}: {reason}");
        Ok(ExitCode::SUCCESS)
    }
}

/// The party's own connection to the chain at `url` (`--chain-rpc`), its chain id read.
fn own_chain(url: &str) -> anyhow::Result<std::sync::Arc<dyn cohort_ledger::ChainSubmit>> {
    #[cfg(feature = "evm-rpc")]
    {
        Ok(std::sync::Arc::new(
            cohort_ledger::ChainSubmitter::connect(url).context("--chain-rpc")?,
        ))
    }
    #[cfg(not(feature = "evm-rpc"))]
    bail!(
        "--chain-rpc {url}: this build of cohort cannot send chain transactions; build it with \
         `--features evm-rpc`"
    )
}

/// Run one client of a federation: dial the coordinator, register and stake with this
/// party's own key, train on its own data each round it is sampled, and submit the signed
/// update; reconnects by itself if the connection drops.
#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    #[command(flatten)]
    party: PartyArgs,
    /// Train on this file instead of the client's partition of the config's data, and commit
    /// to it: UTF-8 text for the lm task (at least one window of task.seq_len + 2 tokens),
    /// `LABEL<TAB>ID ID ...` reviews for the imdb task (as task.data's train.tsv); at most 1
    /// GiB. The linear task has no data file.
    #[arg(long, value_name = "PATH")]
    data: Option<PathBuf>,
}

impl ClientArgs {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        self.party.execute("client", self.data)
    }
}

/// Run one validator of a federation: dial the coordinator, register and stake with its own
/// key, score each round's updates on its own held-out data, commit and reveal the scores.
#[derive(Debug, clap::Args)]
pub struct ValidatorArgs {
    #[command(flatten)]
    party: PartyArgs,
    /// Score updates on this held-out file instead of the validator's share of the config's
    /// data: UTF-8 text for the lm task (at least one window of task.seq_len + 2 tokens),
    /// `LABEL<TAB>ID ID ...` reviews for the imdb task; at most 1 GiB. The linear task has no
    /// data file.
    #[arg(long, value_name = "PATH")]
    holdout: Option<PathBuf>,
}

impl ValidatorArgs {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        self.party.execute("validator", self.holdout)
    }
}

/// Log lines of the network side to stderr: `COHORT_LOG` = error, warn, info (default),
/// debug or trace.
pub fn init_logging() {
    let level = match std::env::var("COHORT_LOG").as_deref() {
        Ok("error") => tracing::Level::ERROR,
        Ok("warn") => tracing::Level::WARN,
        Ok("debug") => tracing::Level::DEBUG,
        Ok("trace") => tracing::Level::TRACE,
        _ => tracing::Level::INFO,
    };
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// How to dial a coordinator at `url` (given as `flag`): `https://HOST:PORT` with the CA `ca`
/// (and the certificate's `server_name`, default the host), or `http://HOST:PORT` with
/// `insecure`; anything else is refused naming what is wrong.
pub(crate) fn dial_to(
    flag: &str,
    url: &str,
    ca: Option<&std::path::Path>,
    server_name: Option<&str>,
    insecure: bool,
    give_up: Duration,
) -> anyhow::Result<Dial> {
    let url = url.trim();
    let (scheme, rest) = url.split_once("://").with_context(|| {
        format!("{flag} {url:?}: expected https://HOST:PORT (or http:// with --insecure)")
    })?;
    let host = rest
        .split('/')
        .next()
        .filter(|h| !h.is_empty())
        .with_context(|| format!("{flag} {url:?}: no host"))?;
    let host_only = match host.rsplit_once(':') {
        Some((h, port)) if port.parse::<u16>().is_ok() => h,
        _ => bail!("{flag} {url:?}: expected a port (HOST:PORT)"),
    };
    let tls = match (scheme, ca, insecure) {
        ("https", Some(ca), false) => {
            let name = server_name
                .map(str::to_owned)
                .unwrap_or_else(|| host_only.trim_matches(['[', ']']).to_owned());
            Some(cohort_net::tls::client_config(ca, &name).context("--ca")?)
        }
        ("http", None, true) => None,
        ("https", None, _) => bail!("{flag} {url}: give the CA to trust with --ca FILE"),
        ("http", _, false) => {
            bail!("{flag} {url}: plain http needs --insecure (or use https:// and --ca)")
        }
        (s, _, _) => bail!("{flag} {url}: the scheme {s:?} is not https or http"),
    };
    Ok(Dial {
        url: url.to_owned(),
        tls,
        give_up,
        blobs: None,
        chain: None,
    })
}
