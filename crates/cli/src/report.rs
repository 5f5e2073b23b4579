//! `report.html` for a run, and its tables as CSV files beside it.
//!
//! The page is one self-contained file: the charts are drawn by uPlot (vendored in
//! `crates/cli/assets/uplot-1.6.32/`, MIT) from a JSON block inlined into the page, so it
//! works offline and from `file://`, with values under the cursor, drag-to-zoom and a legend
//! entry per participant. Everything else (facts, tables, score matrices) is plain HTML that
//! reads without JavaScript. Every table links a CSV copy of itself (a `data:` URL, so the
//! link works in a copied page too), and [`write`] also writes the same CSV files into the
//! run's directory.
//!
//! A script at the top of the page records any JavaScript error (and `console.error`) in a
//! visible box and in `<html data-js-errors="N">`; after drawing, the page sets
//! `<html data-charts="N">`. The headless-Chromium test (crates/cli/tests/report_html.rs)
//! reads both.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use alloy_primitives::U256;
use anyhow::Context;
use cohort_fl::learner::Metrics;
use cohort_ledger::VerifyReport;
use cohort_node::runtime::{RoundSummary, RunConfig, RunSummary};
use serde::Serialize;

/// The vendored charting library, inlined into every report.
const UPLOT_JS: &str = include_str!("../assets/uplot-1.6.32/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("../assets/uplot-1.6.32/uPlot.min.css");
/// The library's version, named in the page.
pub const UPLOT_VERSION: &str = "1.6.32";

/// Where a run was recorded, for the report's last section.
pub enum Record<'a> {
    /// The embedded ledger, re-verified after the run.
    Embedded(&'a VerifyReport),
    /// An EVM chain: its receipts are the record.
    #[cfg(feature = "evm-rpc")]
    Chain(&'a ChainRecord),
}

/// What the report says of a run on an EVM chain.
#[cfg(feature = "evm-rpc")]
pub struct ChainRecord {
    /// The JSON-RPC URL.
    pub url: String,
    /// The chain's id.
    pub chain_id: u64,
    /// The protocol contract's address.
    pub contract: String,
    /// Transactions the run sent.
    pub transactions: usize,
    /// Gas they used in all.
    pub gas_used: u64,
    /// Blocks of the first and the last of them.
    pub blocks: Option<(u64, u64)>,
    /// Merkle root over the recorded transactions (hash, block, gas, logs).
    pub root: String,
}

/// What the report names about the run itself.
#[derive(Debug, Clone)]
pub struct RunInfo {
    /// The config file the run was started with.
    pub config: PathBuf,
    /// The command line, shell-quoted.
    pub command: String,
    /// cohort's version.
    pub version: &'static str,
    /// When the run started, UTC (RFC 3339).
    pub started: String,
    /// Wall seconds the run took.
    pub wall_seconds: f64,
    /// Sentences the report must say about the run (e.g. how its keys were made).
    pub notes: Vec<String>,
}

impl RunInfo {
    /// The facts of the process running now: its command line and cohort's version; the run
    /// started `wall_seconds` ago.
    pub fn of_this_process(config: &Path, wall_seconds: f64) -> Self {
        let started = SystemTime::now()
            .checked_sub(std::time::Duration::from_secs_f64(wall_seconds.max(0.0)))
            .unwrap_or(SystemTime::UNIX_EPOCH);
        Self {
            config: config.to_path_buf(),
            command: command_line(std::env::args_os()),
            version: env!("CARGO_PKG_VERSION"),
            started: utc(started),
            wall_seconds,
            notes: Vec::new(),
        }
    }

    /// Adds a sentence the report says about the run.
    pub fn with_note(mut self, note: impl Into<String>) -> Self {
        self.notes.push(note.into());
        self
    }
}

/// `args` as one shell-quoted line, the program as its file name.
fn command_line(args: impl IntoIterator<Item = std::ffi::OsString>) -> String {
    let mut out = Vec::new();
    for (i, a) in args.into_iter().enumerate() {
        let a = a.to_string_lossy().into_owned();
        let a = if i == 0 {
            Path::new(&a)
                .file_name()
                .map_or(a.clone(), |f| f.to_string_lossy().into_owned())
        } else {
            a
        };
        let plain = !a.is_empty()
            && a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c));
        out.push(if plain {
            a
        } else {
            format!("'{}'", a.replace('\'', r"'\''"))
        });
    }
    out.join(" ")
}

/// `t` as `YYYY-MM-DDTHH:MM:SSZ` (days to civil date: Howard Hinnant's algorithm).
pub fn utc(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `n` bytes with a binary unit: `512 B`, `1.5 KiB`, `12.3 MiB`.
pub fn fmt_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Base units as an exact decimal number of tokens, without trailing zeros: `12.5`,
/// `0.000000000000000001`, `100`.
pub fn fmt_tokens_exact(v: U256) -> String {
    let unit = U256::from(cohort_core::TOKEN);
    let (whole, frac) = (v / unit, v % unit);
    if frac.is_zero() {
        return whole.to_string();
    }
    let frac = format!("{:0>18}", frac.to_string());
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

/// Base units as tokens rounded half up to 4 decimals, for tables (the exact amount is in the
/// cell's title and in the CSV).
pub fn fmt_tokens_short(v: U256) -> String {
    let step = U256::from(cohort_core::TOKEN / 10_000);
    let n = (v + step / U256::from(2)) / step;
    let (whole, frac) = (n / U256::from(10_000), n % U256::from(10_000));
    format!("{whole}.{:0>4}", frac.to_string())
}

/// A number for a table: `digits` decimals, or scientific where that would show nothing.
fn fmt_num(x: f64, digits: usize) -> String {
    if !x.is_finite() {
        return format!("{x}");
    }
    let a = x.abs();
    if a != 0.0 && (a < 10f64.powi(-(digits as i32)) || a >= 1e9) {
        format!("{x:.3e}")
    } else {
        format!("{x:.digits$}")
    }
}

/// One cell: what the page shows and what the CSV holds (full precision, no units).
#[derive(Debug, Clone)]
struct Cell {
    show: String,
    csv: String,
    title: Option<String>,
    /// Text, aligned left (numbers align right).
    left: bool,
}

impl Cell {
    fn text(s: impl Into<String>) -> Self {
        let s = s.into();
        Self {
            show: s.clone(),
            csv: s,
            title: None,
            left: true,
        }
    }

    fn int(n: u64) -> Self {
        Self::figure(n.to_string())
    }

    /// A number already formatted.
    fn figure(s: impl Into<String>) -> Self {
        Self {
            left: false,
            ..Self::text(s)
        }
    }

    fn empty() -> Self {
        Self::text("")
    }

    fn num(x: f64, digits: usize) -> Self {
        Self {
            show: fmt_num(x, digits),
            csv: if x.is_finite() {
                x.to_string()
            } else {
                String::new()
            },
            title: None,
            left: false,
        }
    }

    fn opt(x: Option<f64>, digits: usize) -> Self {
        x.map_or_else(Self::empty, |x| Self::num(x, digits))
    }

    fn bytes(n: u64) -> Self {
        Self {
            show: fmt_bytes(n),
            csv: n.to_string(),
            title: Some(format!("{n} bytes")),
            left: false,
        }
    }

    fn tokens(v: U256) -> Self {
        if v.is_zero() {
            return Self {
                show: String::new(),
                csv: "0".into(),
                title: None,
                left: false,
            };
        }
        let exact = fmt_tokens_exact(v);
        Self {
            show: fmt_tokens_short(v),
            csv: exact.clone(),
            title: Some(format!("{exact} tokens ({v} base units)")),
            left: false,
        }
    }
}

/// A table shown in the page and offered as `<name>.csv`.
struct Table {
    name: &'static str,
    head: Vec<&'static str>,
    rows: Vec<Vec<Cell>>,
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

impl Table {
    fn new(name: &'static str, head: &[&'static str]) -> Self {
        Self {
            name,
            head: head.to_vec(),
            rows: Vec::new(),
        }
    }

    fn csv(&self) -> String {
        let mut out = String::new();
        let line = |cells: Vec<String>| cells.join(",") + "\n";
        out.push_str(&line(
            self.head
                .iter()
                .map(|h| csv_field(&h.replace(' ', "_")))
                .collect(),
        ));
        for r in &self.rows {
            out.push_str(&line(r.iter().map(|c| csv_field(&c.csv)).collect()));
        }
        out
    }

    fn file(&self) -> String {
        format!("{}.csv", self.name)
    }

    /// Leaves out the columns that are empty in every row (metrics a task does not report).
    fn without_empty_columns(mut self) -> Self {
        let keep: Vec<bool> = (0..self.head.len())
            .map(|i| {
                self.rows
                    .iter()
                    .any(|r| r.get(i).is_some_and(|c| !c.csv.is_empty()))
            })
            .collect();
        fn pick<T>(v: &mut Vec<T>, keep: &[bool]) {
            let mut i = 0;
            v.retain(|_| {
                i += 1;
                keep.get(i - 1).copied().unwrap_or(true)
            });
        }
        pick(&mut self.head, &keep);
        for r in &mut self.rows {
            pick(r, &keep);
        }
        self
    }

    /// A link to the table as CSV (a `data:` URL).
    fn link(&self) -> String {
        format!(
            r#"<p class="csv"><a download="{}" href="{}">download {} (CSV, {} rows)</a></p>"#,
            self.file(),
            data_url("text/csv", &self.csv()),
            self.file(),
            self.rows.len()
        )
    }

    /// The table with a link to its CSV.
    fn html(&self) -> String {
        let mut h = format!(
            r#"{}<div class="scroll"><table id="table-{}"><thead><tr>"#,
            self.link(),
            self.name
        );
        for c in &self.head {
            let _ = write!(h, "<th>{}</th>", esc(c));
        }
        h.push_str("</tr></thead><tbody>");
        for r in &self.rows {
            h.push_str("<tr>");
            for c in r {
                h.push_str(if c.left { r#"<td class="t""# } else { "<td" });
                if let Some(t) = &c.title {
                    let _ = write!(h, r#" title="{}""#, esc(t));
                }
                let _ = write!(h, ">{}</td>", esc(&c.show));
            }
            h.push_str("</tr>");
        }
        h.push_str("</tbody></table></div>");
        h
    }
}

/// A `data:` URL of `text` (percent-encoded UTF-8), safe inside a double-quoted attribute.
fn data_url(mime: &str, text: &str) -> String {
    let mut out = format!("data:{mime};charset=utf-8,");
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~,:;".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A participant's role as the report names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Role {
    Honest,
    Attacker,
    Validator,
    Colluding,
}

impl Role {
    fn of(cfg: &RunConfig, name: &str) -> Self {
        if let Some(k) = name
            .strip_prefix("client-")
            .and_then(|k| k.parse::<u32>().ok())
        {
            return if cfg.is_attacker(k) {
                Self::Attacker
            } else {
                Self::Honest
            };
        }
        let colluding = cfg.attack.as_ref().map_or(0, |a| a.colluding_validators);
        match name
            .strip_prefix("validator-")
            .and_then(|v| v.parse::<usize>().ok())
        {
            Some(v) if v < colluding => Self::Colluding,
            _ => Self::Validator,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Honest => "client",
            Self::Attacker => "client (attacker)",
            Self::Validator => "validator",
            Self::Colluding => "validator (colluding)",
        }
    }
}

/// Participants in a stable, human order: clients by number, then validators by number.
fn participants(s: &RunSummary) -> Vec<String> {
    let mut names: BTreeSet<String> = s.final_holdings.keys().cloned().collect();
    names.extend(s.initial_holdings.keys().cloned());
    for r in &s.rounds {
        names.extend(r.holdings.keys().cloned());
    }
    let mut v: Vec<String> = names.into_iter().collect();
    v.sort_by_key(|n| {
        let (kind, num) = n.rsplit_once('-').unwrap_or((n.as_str(), ""));
        (
            kind.to_owned(),
            num.parse::<u64>().unwrap_or(u64::MAX),
            n.clone(),
        )
    });
    v
}

fn client_name(k: u32) -> String {
    format!("client-{k}")
}

/// Colours: honest clients get distinct hues (no reds), attackers reds and oranges,
/// validators greys and purples.
fn colour(role: Role, i: usize) -> &'static str {
    const HONEST: [&str; 12] = [
        "#1f77b4", "#2ca02c", "#17becf", "#9467bd", "#8c564b", "#bcbd22", "#4e79a7", "#59a14f",
        "#76b7b2", "#b07aa1", "#3a6e2f", "#0b4f8a",
    ];
    const ATTACKERS: [&str; 6] = [
        "#d62728", "#ff7f0e", "#e15759", "#b22222", "#f28e2b", "#8b0000",
    ];
    const VALIDATORS: [&str; 4] = ["#555555", "#7f7f7f", "#6a3d9a", "#999999"];
    match role {
        Role::Honest => HONEST[i % HONEST.len()],
        Role::Attacker => ATTACKERS[i % ATTACKERS.len()],
        Role::Validator | Role::Colluding => VALIDATORS[i % VALIDATORS.len()],
    }
}

/// One line of a chart, as the page's script reads it.
#[derive(Debug, Serialize)]
struct Line {
    label: String,
    color: &'static str,
    /// uPlot's dash pattern, if dashed.
    #[serde(skip_serializing_if = "Option::is_none")]
    dash: Option<[u8; 2]>,
    values: Vec<Option<f64>>,
}

/// One chart: `xs` shared by every line.
#[derive(Debug, Serialize)]
struct Chart {
    id: String,
    title: String,
    x_label: &'static str,
    y_label: String,
    /// A log10 y axis.
    log: bool,
    /// The y values are bytes (axis and cursor values with units).
    bytes: bool,
    xs: Vec<f64>,
    lines: Vec<Line>,
}

impl Chart {
    fn new(id: &str, title: &str, y_label: &str, xs: Vec<f64>) -> Self {
        Self {
            id: id.into(),
            title: title.into(),
            x_label: "round",
            y_label: y_label.into(),
            log: false,
            bytes: false,
            xs,
            lines: Vec::new(),
        }
    }

    /// Adds a line with a value per x (`f` gives `None` where it has none).
    fn line(
        &mut self,
        label: impl Into<String>,
        color: &'static str,
        dash: Option<[u8; 2]>,
        f: impl Fn(f64) -> Option<f64>,
    ) {
        let values = self
            .xs
            .iter()
            .map(|&x| f(x).filter(|v| v.is_finite()))
            .collect();
        self.lines.push(Line {
            label: label.into(),
            color,
            dash,
            values,
        });
    }

    /// A log y axis when the values are positive and span more than `ratio`.
    fn log_if_wide(mut self, ratio: f64) -> Self {
        let vals: Vec<f64> = self
            .lines
            .iter()
            .flat_map(|l| l.values.iter().flatten().copied())
            .collect();
        let lo = vals.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = vals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        self.log = lo > 0.0 && hi / lo > ratio;
        if self.log {
            self.y_label.push_str(" (log scale)");
        }
        self
    }

    fn has_data(&self) -> bool {
        self.lines
            .iter()
            .any(|l| l.values.iter().any(Option::is_some))
    }
}

/// The rounds of `s` and of the reference, with 0 for the initial model.
fn round_axis(s: &RunSummary, reference: Option<&RunSummary>) -> Vec<f64> {
    let mut xs: BTreeSet<u64> = BTreeSet::from([0]);
    xs.extend(s.rounds.iter().map(|r| r.round));
    if let Some(r) = reference {
        xs.extend(r.rounds.iter().map(|r| r.round));
    }
    xs.into_iter().map(|x| x as f64).collect()
}

/// A metric of `s` at round `x` (0: the initial model).
fn metric_at(s: &RunSummary, x: f64, pick: fn(&Metrics) -> Option<f64>) -> Option<f64> {
    if x == 0.0 {
        return pick(&s.initial);
    }
    s.rounds
        .iter()
        .find(|r| r.round as f64 == x)
        .and_then(|r| pick(&r.test))
}

fn round_at(s: &RunSummary, x: f64) -> Option<&RoundSummary> {
    s.rounds.iter().find(|r| r.round as f64 == x)
}

/// The charts of a run, in page order; charts without data are left out.
fn charts(cfg: &RunConfig, s: &RunSummary, reference: Option<&RunSummary>) -> Vec<Chart> {
    let xs = round_axis(s, reference);
    let mut out = Vec::new();
    type Pick = fn(&Metrics) -> Option<f64>;
    let quality: [(&str, &str, Pick); 4] = [
        ("loss", "test loss", |m| Some(m.loss)),
        ("perplexity", "test perplexity", |m| m.perplexity),
        ("accuracy", "test accuracy", |m| m.accuracy),
        ("backdoor", "backdoor success rate", |m| {
            m.backdoor_success_rate
        }),
    ];
    for (id, what, pick) in quality {
        let mut c = Chart::new(id, &format!("{what} per round"), what, xs.clone());
        c.line("this run", "#1f77b4", None, |x| metric_at(s, x, pick));
        if let Some(r) = reference {
            c.line("reference", "#555555", Some([6, 4]), |x| {
                metric_at(r, x, pick)
            });
        }
        if c.lines[0].values.iter().any(Option::is_some) {
            out.push(if id == "loss" || id == "perplexity" {
                c.log_if_wide(20.0)
            } else {
                c
            });
        }
    }
    let names = participants(s);
    let rounds: Vec<f64> = s.rounds.iter().map(|r| r.round as f64).collect();
    // Consensus score and update norm per client.
    let clients: Vec<u32> = {
        let mut k: BTreeSet<u32> = BTreeSet::new();
        for r in &s.rounds {
            k.extend(r.consensus.keys().copied());
            k.extend(r.updates.iter().map(|u| u.client));
        }
        k.into_iter().collect()
    };
    let mut score = Chart::new(
        "consensus",
        "consensus score per client (the validators' median)",
        "consensus score",
        rounds.clone(),
    );
    let mut norm = Chart::new(
        "norm",
        "update norm per client",
        "L2 norm of the update",
        rounds.clone(),
    );
    let mut by_role: BTreeMap<Role, usize> = BTreeMap::new();
    for &k in &clients {
        let role = Role::of(cfg, &client_name(k));
        let i = by_role.entry(role).or_default();
        let (color, dash) = (colour(role, *i), (role == Role::Attacker).then_some([6, 3]));
        *i += 1;
        let label = format!("{} ({})", client_name(k), role.name());
        score.line(label.clone(), color, dash, |x| {
            round_at(s, x).and_then(|r| r.consensus.get(&k).copied())
        });
        norm.line(label, color, dash, |x| {
            round_at(s, x)
                .and_then(|r| r.updates.iter().find(|u| u.client == k))
                .and_then(|u| u.update_norm)
        });
    }
    if score.has_data() {
        score.line("accept threshold", "#000000", Some([2, 4]), |_| {
            Some(cfg.incentives.accept_threshold)
        });
        out.push(score);
    }
    if norm.has_data() {
        out.push(norm.log_if_wide(50.0));
    }
    let mut holdings = Chart::new(
        "holdings",
        "holdings per participant (balance + stake)",
        "tokens",
        std::iter::once(0.0).chain(rounds.iter().copied()).collect(),
    );
    let mut by_role: BTreeMap<Role, usize> = BTreeMap::new();
    for name in &names {
        let role = Role::of(cfg, name);
        let i = by_role.entry(role).or_default();
        let color = colour(role, *i);
        *i += 1;
        let dash = match role {
            Role::Attacker => Some([6, 3]),
            Role::Validator | Role::Colluding => Some([2, 3]),
            Role::Honest => None,
        };
        holdings.line(format!("{name} ({})", role.name()), color, dash, |x| {
            let held = if x == 0.0 {
                s.initial_holdings.get(name)
            } else {
                round_at(s, x).and_then(|r| r.holdings.get(name))
            };
            held.map(|v| cohort_core::to_tokens_f64(*v))
        });
    }
    if holdings.has_data() {
        out.push(holdings);
    }
    let mut bytes = Chart::new("bytes", "update bytes received per round", "bytes", rounds);
    bytes.bytes = true;
    bytes.line("this run", "#1f77b4", None, |x| {
        round_at(s, x).map(|r| r.bytes as f64)
    });
    if bytes.has_data() {
        out.push(bytes);
    }
    out
}

fn payout(r: &RoundSummary, name: &str) -> (U256, U256) {
    r.payouts
        .get(name)
        .map_or((U256::ZERO, U256::ZERO), |p| (p.reward, p.slash))
}

/// A decimal token amount (`12.3456`) in base units; malformed text reads as zero.
#[cfg(test)]
fn parse_tokens(s: &str) -> U256 {
    let (whole, frac) = s.trim().split_once('.').unwrap_or((s.trim(), ""));
    if frac.len() > 18 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return U256::ZERO;
    }
    let Ok(whole) = U256::from_str_radix(whole, 10) else {
        return U256::ZERO;
    };
    let frac = U256::from_str_radix(&format!("{frac:0<18}"), 10).unwrap_or(U256::ZERO);
    whole * U256::from(cohort_core::TOKEN) + frac
}

/// The per-round table.
fn rounds_table(s: &RunSummary) -> Table {
    let mut t = Table::new(
        "rounds",
        &[
            "round",
            "test loss",
            "perplexity",
            "accuracy",
            "backdoor",
            "accepted",
            "rejected",
            "slashed",
            "update bytes",
            "train s",
            "score s",
            "aggregate s",
            "ledger s",
        ],
    );
    let names = |v: &[u32]| {
        Cell::text(
            v.iter()
                .map(|&k| client_name(k))
                .collect::<Vec<_>>()
                .join(" "),
        )
    };
    for r in &s.rounds {
        let slashed: Vec<String> = r
            .payouts
            .iter()
            .filter(|(_, p)| !p.slash.is_zero())
            .map(|(n, p)| format!("{n} ({})", fmt_tokens_short(p.slash)))
            .collect();
        t.rows.push(vec![
            Cell::int(r.round),
            Cell::num(r.test.loss, 4),
            Cell::opt(r.test.perplexity, 3),
            Cell::opt(r.test.accuracy, 4),
            Cell::opt(r.test.backdoor_success_rate, 4),
            names(&r.accepted),
            names(&r.rejected),
            Cell::text(slashed.join(" ")),
            Cell::bytes(r.bytes),
            Cell::num(r.seconds.train, 3),
            Cell::num(r.seconds.score, 3),
            Cell::num(r.seconds.aggregate, 3),
            Cell::num(r.seconds.ledger, 3),
        ]);
    }
    t.without_empty_columns()
}

/// What happened to `client`'s update in round `r`.
fn verdict(r: &RoundSummary, client: u32) -> String {
    if r.accepted.contains(&client) {
        return "accepted".into();
    }
    if let Some(reason) = r
        .updates
        .iter()
        .find(|u| u.client == client)
        .and_then(|u| u.refused.as_ref())
    {
        return format!("refused: {reason}");
    }
    if r.rejected.contains(&client) {
        return "rejected by the validators".into();
    }
    if r.submitted.contains(&client) {
        return "recorded".into();
    }
    "no update".into()
}

/// One row per participant per round.
fn participants_table(cfg: &RunConfig, s: &RunSummary) -> Table {
    let mut t = Table::new(
        "participants",
        &[
            "round",
            "participant",
            "role",
            "samples",
            "update norm",
            "update bytes",
            "consensus score",
            "verdict",
            "reward",
            "slash",
            "holdings after",
        ],
    );
    let names = participants(s);
    for r in &s.rounds {
        for name in &names {
            let role = Role::of(cfg, name);
            let (reward, slash) = payout(r, name);
            let mut row = vec![
                Cell::int(r.round),
                Cell::text(name.clone()),
                Cell::text(role.name()),
            ];
            match name
                .strip_prefix("client-")
                .and_then(|k| k.parse::<u32>().ok())
            {
                Some(k) => {
                    let u = r.updates.iter().find(|u| u.client == k);
                    row.extend([
                        u.map_or_else(Cell::empty, |u| Cell::int(u.samples)),
                        Cell::opt(u.and_then(|u| u.update_norm), 4),
                        u.map_or_else(Cell::empty, |u| Cell::bytes(u.bytes)),
                        Cell::opt(r.consensus.get(&k).copied(), 4),
                        Cell::text(verdict(r, k)),
                    ]);
                }
                None => {
                    let v = name
                        .strip_prefix("validator-")
                        .and_then(|v| v.parse::<usize>().ok());
                    let revealed = v
                        .and_then(|v| r.scores.get(v))
                        .is_some_and(|row| !row.is_empty());
                    row.extend([
                        Cell::empty(),
                        Cell::empty(),
                        Cell::empty(),
                        Cell::empty(),
                        Cell::text(if revealed {
                            "revealed its scores"
                        } else {
                            "did not reveal"
                        }),
                    ]);
                }
            }
            row.extend([
                Cell::tokens(reward),
                Cell::tokens(slash),
                r.holdings
                    .get(name)
                    .map_or_else(Cell::empty, |v| Cell::tokens(*v)),
            ]);
            t.rows.push(row);
        }
    }
    t
}

/// Every score every validator revealed, one row each.
fn scores_table(s: &RunSummary) -> Table {
    let mut t = Table::new("scores", &["round", "validator", "client", "score"]);
    for r in &s.rounds {
        for (v, row) in r.scores.iter().enumerate() {
            for (i, x) in row.iter().enumerate() {
                let client = r
                    .submitted
                    .get(i)
                    .map_or_else(|| format!("update #{i}"), |&k| client_name(k));
                t.rows.push(vec![
                    Cell::int(r.round),
                    Cell::text(format!("validator-{v}")),
                    Cell::text(client),
                    Cell::num(*x, 4),
                ]);
            }
        }
    }
    t
}

/// Final holdings against those after the set-up (both from the run's events).
fn holdings_table(cfg: &RunConfig, s: &RunSummary) -> Table {
    let mut t = Table::new(
        "holdings",
        &["participant", "role", "start", "final", "change"],
    );
    for name in participants(s) {
        let Some(&end) = s.final_holdings.get(&name) else {
            continue;
        };
        let start = s.initial_holdings.get(&name).copied();
        let change = match start {
            None => String::new(),
            Some(start) if end >= start => format!("+{}", fmt_tokens_short(end - start)),
            Some(start) => format!("-{}", fmt_tokens_short(start - end)),
        };
        t.rows.push(vec![
            Cell::text(name.clone()),
            Cell::text(Role::of(cfg, &name).name()),
            Cell::figure(start.map(fmt_tokens_exact).unwrap_or_default()),
            Cell::figure(fmt_tokens_exact(end)),
            Cell::figure(change),
        ]);
    }
    t
}

/// A score's cell style on a diverging scale: red below zero, green above, white at zero,
/// full colour at `±scale`. The strength grows with the square root of `|x| / scale`, so
/// that small scores beside a large one still show their sign.
fn score_style(x: f64, scale: f64) -> String {
    if !x.is_finite() {
        return "background:#cccccc".into();
    }
    let t = (x.abs() / scale.max(1e-12)).clamp(0.0, 1.0).sqrt();
    let (r, g, b) = if x < 0.0 {
        (215.0, 48.0, 39.0)
    } else {
        (26.0, 152.0, 80.0)
    };
    let mix = |c: f64| (255.0 + (c - 255.0) * t).round() as u8;
    let ink = if t > 0.55 { "#ffffff" } else { "#111111" };
    format!(
        "background:#{:02x}{:02x}{:02x};color:{ink}",
        mix(r),
        mix(g),
        mix(b)
    )
}

/// One round's score matrix: validators down, updates across, then the consensus and the
/// verdict.
fn score_matrix(cfg: &RunConfig, r: &RoundSummary, open: bool) -> String {
    let scale = r
        .scores
        .iter()
        .flatten()
        .chain(r.consensus.values())
        .filter(|x| x.is_finite())
        .fold(0.0f64, |m, x| m.max(x.abs()));
    let mut h = format!(
        r#"<details{}><summary>round {}: {} updates, {} accepted, {} rejected</summary><p class="note">Red hurts, green helps; full colour at ±{} (the round's largest score), the strength growing with the square root of the score's size.</p><div class="scroll"><table class="matrix"><thead><tr><th></th>"#,
        if open { " open" } else { "" },
        r.round,
        r.submitted.len(),
        r.accepted.len(),
        r.rejected.len(),
        fmt_num(scale, 4)
    );
    for &k in &r.submitted {
        let role = Role::of(cfg, &client_name(k));
        let _ = write!(
            h,
            r#"<th class="{}">{}</th>"#,
            if role == Role::Attacker {
                "attacker"
            } else {
                ""
            },
            esc(&client_name(k))
        );
    }
    h.push_str("</tr></thead><tbody>");
    for (v, row) in r.scores.iter().enumerate() {
        let _ = write!(h, "<tr><th>validator-{v}</th>");
        if row.is_empty() {
            let _ = write!(
                h,
                r#"<td colspan="{}">did not reveal</td>"#,
                r.submitted.len().max(1)
            );
        }
        for x in row {
            let _ = write!(
                h,
                r#"<td style="{}" title="{x}">{}</td>"#,
                score_style(*x, scale),
                fmt_num(*x, 4)
            );
        }
        h.push_str("</tr>");
    }
    h.push_str("<tr class=\"consensus\"><th>consensus</th>");
    for &k in &r.submitted {
        match r.consensus.get(&k) {
            Some(x) => {
                let _ = write!(
                    h,
                    r#"<td style="{}" title="{x}">{}</td>"#,
                    score_style(*x, scale),
                    fmt_num(*x, 4)
                );
            }
            None => h.push_str("<td></td>"),
        }
    }
    h.push_str("</tr><tr><th>verdict</th>");
    for &k in &r.submitted {
        let _ = write!(h, "<td>{}</td>", esc(&verdict(r, k)));
    }
    h.push_str("</tr></tbody></table></div></details>");
    h
}

/// The JSON the page's script draws from, safe inside a `<script>` element.
fn script_json(v: &impl Serialize) -> String {
    serde_json::to_string(v)
        .unwrap_or_else(|_| "{\"charts\":[]}".into())
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

const STYLE: &str = r#"
body{font-family:system-ui,sans-serif;max-width:1100px;margin:1.5em auto;padding:0 1em;color:#222}
h1{margin-bottom:.2em}h2{margin-top:1.6em;border-bottom:1px solid #ddd}
.scroll table{border-collapse:collapse;font-size:12px;font-variant-numeric:tabular-nums}
.scroll td,.scroll th{border:1px solid #ddd;padding:3px 6px;text-align:right;white-space:nowrap}
.scroll td.t{text-align:left}
.scroll thead th{background:#f3f3f3;position:sticky;top:0}
nav a{margin-right:1em}
th.attacker{color:#b22222}
tr.consensus td,tr.consensus th{border-top:2px solid #888}
.scroll{overflow:auto;max-height:32em}
pre{background:#f6f6f6;padding:8px;overflow:auto}
dl.facts{display:grid;grid-template-columns:max-content auto;gap:2px 16px}dl.facts dt{font-weight:600}dl.facts dd{margin:0}
.chart{margin:1em 0}.note{color:#555;font-size:13px}
#report-errors{background:#fde8e8;border:1px solid #d62728;color:#8b0000;padding:8px;white-space:pre-wrap}
p.csv{margin:.3em 0;font-size:13px}
details{margin:.4em 0}summary{cursor:pointer}
"#;

/// Installed before anything else runs: every error and `console.error` is counted in
/// `<html data-js-errors>` and shown in the page.
const ERROR_TRAP: &str = r#"
(function(){
  var root = document.documentElement;
  root.setAttribute('data-js-errors', '0');
  function note(msg){
    var n = Number(root.getAttribute('data-js-errors')) + 1;
    root.setAttribute('data-js-errors', String(n));
    var box = document.getElementById('report-errors');
    if (box) { box.hidden = false; box.textContent += msg + '\n'; }
    else { (window.__reportErrors = window.__reportErrors || []).push(msg); }
  }
  window.addEventListener('error', function(e){
    note('JavaScript error: ' + e.message + ' (' + e.filename + ':' + e.lineno + ')');
  });
  window.addEventListener('unhandledrejection', function(e){ note('unhandled rejection: ' + e.reason); });
  var original = console.error;
  console.error = function(){
    note('console.error: ' + Array.prototype.join.call(arguments, ' '));
    return original.apply(console, arguments);
  };
})();
"#;

/// Draws every chart of the inlined JSON with uPlot.
const CHARTS_JS: &str = r#"
(function(){
  var box = document.getElementById('report-errors');
  (window.__reportErrors || []).forEach(function(m){ box.hidden = false; box.textContent += m + '\n'; });
  var data = JSON.parse(document.getElementById('report-data').textContent);
  function num(v){
    if (v == null || !isFinite(v)) return '-';
    var a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e7)) return v.toExponential(3);
    return String(Number(v.toPrecision(6)));
  }
  function bytes(v){
    if (v == null || !isFinite(v)) return '-';
    var u = ['B','KiB','MiB','GiB','TiB'], i = 0;
    while (Math.abs(v) >= 1024 && i < u.length - 1) { v /= 1024; i++; }
    return (i === 0 ? String(Math.round(v)) : v.toFixed(1)) + ' ' + u[i];
  }
  var drawn = 0;
  data.charts.forEach(function(c){
    var el = document.getElementById('chart-' + c.id);
    var fmt = c.bytes ? bytes : num;
    var series = [{ label: c.x_label, value: function(u, v){ return v == null ? '-' : String(v); } }];
    c.lines.forEach(function(l){
      series.push({
        label: l.label, stroke: l.color, width: 1.6, dash: l.dash || undefined,
        spanGaps: true, points: { show: true, size: 5 },
        value: function(u, v){ return fmt(v); }
      });
    });
    var opts = {
      title: c.title,
      width: Math.max(480, Math.min(1060, el.clientWidth || 1000)),
      height: 320,
      scales: { x: { time: false }, y: c.log ? { distr: 3, log: 10 } : {} },
      axes: [
        { label: c.x_label, incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000],
          values: function(u, ts){ return ts.map(function(t){ return Number.isInteger(t) ? String(t) : ''; }); } },
        { label: c.y_label, size: 72,
          values: function(u, ts){
            // On a log axis, label 1, 2 and 5 times powers of ten only.
            return ts.map(function(t){
              if (!c.log) return fmt(t);
              var m = t / Math.pow(10, Math.floor(Math.log10(t) + 1e-9));
              return [1, 2, 5].some(function(k){ return Math.abs(m - k) < 1e-6; }) ? fmt(t) : '';
            });
          } }
      ],
      series: series,
      cursor: { drag: { x: true, y: false, setScale: true } },
      legend: { live: true }
    };
    new uPlot(opts, [c.xs].concat(c.lines.map(function(l){ return l.values; })), el);
    drawn++;
  });
  document.documentElement.setAttribute('data-charts', String(drawn));
})();
"#;

/// The whole report.
pub fn render(
    cfg: &RunConfig,
    s: &RunSummary,
    record: Record<'_>,
    reference: Option<&RunSummary>,
    info: &RunInfo,
) -> String {
    let charts = charts(cfg, s, reference);
    let attackers = (0..cfg.clients as u32)
        .filter(|&k| cfg.is_attacker(k))
        .count();
    let mut html = format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width"><title>cohort run report: {}</title><script>{ERROR_TRAP}</script><style>{UPLOT_CSS}</style><style>{STYLE}</style></head><body><pre id="report-errors" hidden></pre>"#,
        esc(&info.config.display().to_string())
    );
    let _ = write!(
        html,
        "<h1>cohort run report</h1><dl class=\"facts\"><dt>config</dt><dd><code>{}</code> (copied into the run's directory as config.toml; the effective config is in summary.json)</dd><dt>command</dt><dd><code>{}</code></dd><dt>cohort</dt><dd>{}</dd><dt>started</dt><dd>{} (took {:.1} s)</dd><dt>seed</dt><dd>{}</dd><dt>participants</dt><dd>{} clients ({} attacking), {} validators</dd><dt>rounds</dt><dd>{}</dd><dt>test loss</dt><dd>{} initially, {} after the last round</dd>",
        esc(&info.config.display().to_string()),
        esc(&info.command),
        esc(info.version),
        esc(&info.started),
        info.wall_seconds,
        cfg.seed,
        cfg.clients,
        attackers,
        cfg.validators,
        s.rounds.len(),
        fmt_num(s.initial.loss, 4),
        fmt_num(s.rounds.last().map_or(s.initial.loss, |r| r.test.loss), 4),
    );
    if let Some(r) = reference {
        let _ = write!(
            html,
            "<dt>reference</dt><dd>{} rounds, test loss {} initially, {} at the end (dashed grey in the charts)</dd>",
            r.rounds.len(),
            fmt_num(r.initial.loss, 4),
            fmt_num(r.rounds.last().map_or(r.initial.loss, |x| x.test.loss), 4)
        );
    }
    html.push_str("</dl>");
    html.push_str(r##"<nav><a href="#charts">charts</a><a href="#rounds">rounds</a><a href="#participants">participants per round</a><a href="#scores">score matrices</a><a href="#holdings">final holdings</a><a href="#record">record</a></nav>"##);
    for n in &info.notes {
        let _ = write!(html, "<p class=\"note\">{}</p>", esc(n));
    }
    let _ = write!(
        html,
        "<h2 id=\"charts\">Charts</h2><p class=\"note\">Hover for values; drag across a chart to zoom in, double-click to zoom out; click a legend entry to hide its line. Attackers are dashed in reds, validators dotted in greys. Drawn by uPlot {UPLOT_VERSION}, inlined: the page needs no network.</p><noscript><p>The charts need JavaScript; the tables below do not.</p></noscript>"
    );
    for c in &charts {
        let _ = write!(
            html,
            r#"<div class="chart" id="chart-{}"></div>"#,
            esc(&c.id)
        );
    }
    let rounds = rounds_table(s);
    let people = participants_table(cfg, s);
    let scores = scores_table(s);
    let holdings = holdings_table(cfg, s);
    html.push_str("<h2 id=\"rounds\">Rounds</h2>");
    html.push_str(&rounds.html());
    html.push_str("<h2 id=\"participants\">Participants per round</h2><p class=\"note\">Samples are what each client claimed (recorded on the ledger); the update norm is the L2 norm of the update it sent; rewards and slashes in tokens (hover for the exact amount).</p>");
    html.push_str(&people.html());
    html.push_str("<h2 id=\"scores\">Score matrices</h2><p class=\"note\">The loss reduction each validator measured for each update, then the stake-weighted median the contract took (consensus) and the verdict.</p>");
    html.push_str(&scores.link());
    let last = s.rounds.len().saturating_sub(1);
    for (i, r) in s.rounds.iter().enumerate() {
        html.push_str(&score_matrix(cfg, r, i == last));
    }
    html.push_str("<h2 id=\"holdings\">Final holdings</h2>");
    html.push_str(&holdings.html());
    match record {
        Record::Embedded(verified) => {
            let _ = write!(
                html,
                "<h2 id=\"record\">Ledger</h2><p>{} entries, every signature, link and receipt verified; root <code>{}</code>; state <code>{}</code>.</p><pre>{}</pre>",
                verified.entries,
                verified.root,
                verified.state_root,
                esc(&verified.checkpoint)
            );
        }
        #[cfg(feature = "evm-rpc")]
        Record::Chain(c) => {
            let blocks = c
                .blocks
                .map_or(String::new(), |(a, b)| format!(" in blocks {a} to {b}"));
            let _ = write!(
                html,
                "<h2 id=\"record\">Chain</h2><p>Recorded on the EVM chain with id <b>{}</b> at <code>{}</code>: protocol contract <code>{}</code>; {} transactions{blocks}, {} gas. The chain's receipts are the record (every transaction hash is in summary.json); there is no embedded ledger to verify. Merkle root over the recorded transactions <code>{}</code>.</p>",
                c.chain_id,
                esc(&c.url),
                esc(&c.contract),
                c.transactions,
                c.gas_used,
                esc(&c.root)
            );
        }
    }
    let _ = writeln!(
        html,
        r#"<script type="application/json" id="report-data">{}</script><script>{UPLOT_JS}</script><script>{CHARTS_JS}</script></body></html>"#,
        script_json(&serde_json::json!({ "charts": charts }))
    );
    html
}

/// The CSV files of the report's tables: `(file name, contents)`.
pub fn csv_files(cfg: &RunConfig, s: &RunSummary) -> Vec<(String, String)> {
    [
        rounds_table(s),
        participants_table(cfg, s),
        scores_table(s),
        holdings_table(cfg, s),
    ]
    .iter()
    .map(|t| (t.file(), t.csv()))
    .collect()
}

/// Writes `DIR/report.html` and the CSV copies of its tables (`DIR/rounds.csv`,
/// `participants.csv`, `scores.csv`, `holdings.csv`); returns the report's path.
pub fn write(
    dir: &Path,
    cfg: &RunConfig,
    s: &RunSummary,
    record: Record<'_>,
    reference: Option<&RunSummary>,
    info: &RunInfo,
) -> anyhow::Result<PathBuf> {
    for (name, text) in csv_files(cfg, s) {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    let path = dir.join("report.html");
    std::fs::write(&path, render(cfg, s, record, reference, info))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_have_units() {
        assert_eq!(fmt_bytes(0), "0 B");
        assert_eq!(fmt_bytes(1023), "1023 B");
        assert_eq!(fmt_bytes(1536), "1.5 KiB");
        assert_eq!(fmt_bytes(5 * 1024 * 1024), "5.0 MiB");
        assert_eq!(fmt_bytes(u64::MAX), "16777216.0 TiB");
    }

    #[test]
    fn token_amounts_are_exact_and_round_half_up() {
        let t = |s: &str| parse_tokens(s);
        assert_eq!(fmt_tokens_exact(cohort_core::tokens(100)), "100");
        assert_eq!(fmt_tokens_exact(U256::from(1u8)), "0.000000000000000001");
        assert_eq!(fmt_tokens_exact(t("12.5")), "12.5");
        assert_eq!(fmt_tokens_short(t("33.33335")), "33.3334");
        assert_eq!(fmt_tokens_short(t("33.33334999")), "33.3333");
        assert_eq!(fmt_tokens_short(U256::ZERO), "0.0000");
        assert_eq!(t("10000.0000"), cohort_core::tokens(10_000));
        for bad in ["", "x", "1.2.3", "-1", "1.0000000000000000001", "1.x"] {
            assert_eq!(t(bad), U256::ZERO, "{bad}");
        }
        // The largest amount formats without overflow.
        assert!(fmt_tokens_short(U256::MAX).len() > 4);
    }

    #[test]
    fn scores_are_red_below_zero_green_above_and_stronger_with_magnitude() {
        let rgb = |s: String| {
            let hex = &s["background:#".len().."background:#".len() + 6];
            let c = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).unwrap_or(0);
            (c(0), c(2), c(4))
        };
        let (r, g, b) = rgb(score_style(-0.2, 0.2));
        assert!(r > g && r > b, "negative is red: {r} {g} {b}");
        let (r, g, b) = rgb(score_style(0.2, 0.2));
        assert!(g > r && g > b, "positive is green: {r} {g} {b}");
        assert_eq!(rgb(score_style(0.0, 0.2)), (255, 255, 255));
        let weak = rgb(score_style(0.05, 0.2));
        let strong = rgb(score_style(0.15, 0.2));
        assert!(
            strong.0 < weak.0,
            "a larger score is darker: {weak:?} {strong:?}"
        );
        // Visible even when every score is tiny: the scale is the round's largest.
        let (r, _, _) = rgb(score_style(1e-4, 1e-4));
        assert!(r < 100, "{r}");
        assert!(score_style(f64::NAN, 1.0).contains("#cccccc"));
    }

    #[test]
    fn csv_quotes_what_needs_it_and_data_urls_stay_in_their_attribute() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"x\""), "\"say \"\"x\"\"\"");
        assert_eq!(csv_field("plain"), "plain");
        let u = data_url("text/csv", "a,\"b\"\n<&>'é");
        assert!(!u.contains(['"', '<', '>', '&', '\'', '\n', ' ']), "{u}");
        assert!(u.ends_with("a,%22b%22%0A%3C%26%3E%27%C3%A9"), "{u}");
    }

    #[test]
    fn the_inlined_json_cannot_close_its_script_element() {
        let j = script_json(&serde_json::json!({ "x": "</script><b>&" }));
        assert!(!j.contains("</") && !j.contains('<'), "{j}");
        let back: serde_json::Value = serde_json::from_str(&j).unwrap_or_default();
        assert_eq!(back["x"], "</script><b>&");
    }

    /// What the report shows of the holdings comes from the run's summary (folded from its
    /// events), not from the config: holdings after the set-up that are not the config's
    /// initial balance show as they are.
    #[test]
    fn holdings_come_from_the_summary_not_from_the_config() {
        let cfg: RunConfig = serde_json::from_value(serde_json::json!({
            "seed": 1, "clients": 1, "validators": 1
        }))
        .unwrap();
        assert_ne!(cfg.incentives.initial_balance, 5);
        let held = |n: u64| {
            BTreeMap::from([
                ("client-0".to_owned(), cohort_core::tokens(n)),
                ("validator-0".to_owned(), cohort_core::tokens(n + 1)),
            ])
        };
        let s = RunSummary {
            initial: Metrics::loss(1.0),
            update_bytes: None,
            initial_holdings: held(5),
            rounds: Vec::new(),
            final_holdings: held(7),
            ledger_root: cohort_core::Hash32::ZERO,
            ledger_entries: 0,
            absent: BTreeMap::new(),
            set_aside: BTreeMap::new(),
        };
        assert_eq!(
            holdings_table(&cfg, &s).csv(),
            "participant,role,start,final,change\n\
             client-0,client,5,7,+2.0000\n\
             validator-0,validator,6,8,+2.0000\n"
        );
        let charts = charts(&cfg, &s, None);
        let holdings = charts.iter().find(|c| c.id == "holdings").unwrap();
        assert_eq!(holdings.lines[0].values, [Some(5.0)]);
        // A summary from before cohort recorded them: no start and no change, nothing made up
        // from the config.
        let old = RunSummary {
            initial_holdings: BTreeMap::new(),
            ..s
        };
        assert_eq!(
            holdings_table(&cfg, &old).csv(),
            "participant,role,start,final,change\n\
             client-0,client,,7,\n\
             validator-0,validator,,8,\n"
        );
        assert!(
            !super::charts(&cfg, &old, None)
                .iter()
                .any(|c| c.id == "holdings")
        );
    }

    #[test]
    fn dates_are_utc_civil_dates() {
        let at = |s: u64| utc(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(1_767_225_600), "2026-01-01T00:00:00Z");
        assert_eq!(at(951_782_400 + 3661), "2000-02-29T01:01:01Z");
    }

    #[test]
    fn command_lines_are_shell_quoted() {
        let args = [
            "/x/target/debug/cohort",
            "run",
            "a b.toml",
            "--set",
            "k={kind=\"x\"}",
            "it's",
        ]
        .map(std::ffi::OsString::from);
        assert_eq!(
            command_line(args),
            r#"cohort run 'a b.toml' --set 'k={kind="x"}' 'it'\''s'"#
        );
    }
}
