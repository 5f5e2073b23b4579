//! `report.html` for a run: self-contained HTML with inline SVG charts.

use std::fmt::Write;

use cohort_fl::runtime::{RunConfig, RunSummary};
use cohort_ledger::VerifyReport;

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

/// One line of a chart.
pub struct Series {
    pub name: String,
    pub color: &'static str,
    pub dashed: bool,
    pub points: Vec<(f64, f64)>,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A line chart as an SVG element (`log_y` plots log10 of positive values).
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    log_y: bool,
) -> String {
    let (w, h, l, r, t, b) = (640.0, 320.0, 64.0, 150.0, 30.0, 40.0);
    let ty = |y: f64| if log_y { y.max(1e-12).log10() } else { y };
    let pts: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|&(x, y)| (x, ty(y))))
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11"><text x="{}" y="18" text-anchor="middle" font-size="13">{}</text>"#,
        w / 2.0,
        esc(title)
    );
    if pts.is_empty() {
        svg.push_str("</svg>");
        return svg;
    }
    let (mut x0, mut x1) = (f64::INFINITY, f64::NEG_INFINITY);
    let (mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY);
    for (x, y) in &pts {
        x0 = x0.min(*x);
        x1 = x1.max(*x);
        y0 = y0.min(*y);
        y1 = y1.max(*y);
    }
    if x1 == x0 {
        x1 = x0 + 1.0;
    }
    if y1 == y0 {
        y1 = y0 + 1.0;
    }
    let pad = (y1 - y0) * 0.05;
    let (y0, y1) = (y0 - pad, y1 + pad);
    let sx = |x: f64| l + (x - x0) / (x1 - x0) * (w - l - r);
    let sy = |y: f64| t + (1.0 - (y - y0) / (y1 - y0)) * (h - t - b);
    let _ = write!(
        svg,
        r##"<rect x="{l}" y="{t}" width="{}" height="{}" fill="none" stroke="#999"/>"##,
        w - l - r,
        h - t - b
    );
    for i in 0..=4 {
        let y = y0 + (y1 - y0) * f64::from(i) / 4.0;
        let label = if log_y {
            format!("{:.3}", 10f64.powf(y))
        } else {
            format!("{y:.3}")
        };
        let _ = write!(
            svg,
            r##"<text x="{}" y="{}" text-anchor="end">{label}</text><line x1="{l}" x2="{}" y1="{2}" y2="{2}" stroke="#eee"/>"##,
            l - 4.0,
            sy(y) + 4.0,
            w - r
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text><text x="12" y="{}" transform="rotate(-90 12 {})" text-anchor="middle">{}</text>"#,
        l + (w - l - r) / 2.0,
        h - 8.0,
        esc(x_label),
        t + (h - t - b) / 2.0,
        t + (h - t - b) / 2.0,
        esc(y_label)
    );
    let _ = write!(
        svg,
        r#"<text x="{l}" y="{}">{x0}</text><text x="{}" y="{}" text-anchor="end">{x1}</text>"#,
        h - b + 14.0,
        w - r,
        h - b + 14.0
    );
    for (i, s) in series.iter().enumerate() {
        let path: Vec<String> = s
            .points
            .iter()
            .map(|&(x, y)| (x, ty(y)))
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        let dash = if s.dashed {
            r#" stroke-dasharray="5,4""#
        } else {
            ""
        };
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{}" stroke-width="1.5"{dash} points="{}"/>"#,
            s.color,
            path.join(" ")
        );
        if !s.name.is_empty() && i < 16 {
            let ly = t + 12.0 * i as f64 + 8.0;
            let _ = write!(
                svg,
                r#"<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="{}"{dash}/><text x="{}" y="{}">{}</text>"#,
                w - r + 8.0,
                w - r + 24.0,
                s.color,
                w - r + 28.0,
                ly + 4.0,
                esc(&s.name)
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

fn score_color(s: f64) -> String {
    let v = (s.clamp(-1.0, 1.0) * 255.0).abs() as u8;
    if s >= 0.0 {
        format!("rgb({},{},{})", 255 - v / 2, 255, 255 - v / 2)
    } else {
        format!("rgb(255,{},{})", 255 - v / 2, 255 - v / 2)
    }
}

/// The whole report.
pub fn render(
    cfg: &RunConfig,
    s: &RunSummary,
    record: Record<'_>,
    reference: Option<&RunSummary>,
) -> String {
    let curve = |s: &RunSummary| -> Vec<(f64, f64)> {
        std::iter::once((0.0, s.initial.loss))
            .chain(s.rounds.iter().map(|r| (r.round as f64, r.test.loss)))
            .collect()
    };
    let mut quality = vec![Series {
        name: "this run".into(),
        color: "#1f77b4",
        dashed: false,
        points: curve(s),
    }];
    if let Some(r) = reference {
        quality.push(Series {
            name: "reference".into(),
            color: "#555",
            dashed: true,
            points: curve(r),
        });
    }
    let mut holdings = Vec::new();
    let mut named = std::collections::BTreeSet::new();
    if let Some(last) = s.rounds.last() {
        for name in last.holdings.keys() {
            let attacker = name
                .strip_prefix("client-")
                .and_then(|k| k.parse::<u32>().ok())
                .is_some_and(|k| cfg.is_attacker(k));
            let (color, group) = if attacker {
                ("#d62728", "attackers")
            } else if name.starts_with("validator") {
                ("#7f7f7f", "validators")
            } else {
                ("#2ca02c", "honest clients")
            };
            // One legend entry per group.
            let label = if named.insert(group) {
                group.to_owned()
            } else {
                String::new()
            };
            let start = cfg.incentives.initial_balance as f64;
            let points = std::iter::once((0.0, start))
                .chain(
                    s.rounds
                        .iter()
                        .filter_map(|r| r.holdings.get(name).map(|h| (r.round as f64, *h))),
                )
                .collect();
            holdings.push(Series {
                name: label,
                color,
                dashed: false,
                points,
            });
        }
    }
    let mut html = String::from(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>cohort run report</title>
<style>body{font-family:sans-serif;max-width:960px;margin:2em auto;color:#222}table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ddd;padding:3px 6px;text-align:right}pre{background:#f6f6f6;padding:8px;overflow:auto}</style></head><body>"#,
    );
    let _ = write!(
        html,
        "<h1>cohort run report</h1><p>seed {}, {} clients ({} attacking), {} validators, {} rounds; initial test loss {:.4}, final {:.4}.</p>",
        cfg.seed,
        cfg.clients,
        (0..cfg.clients as u32)
            .filter(|&k| cfg.is_attacker(k))
            .count(),
        cfg.validators,
        s.rounds.len(),
        s.initial.loss,
        s.rounds.last().map_or(s.initial.loss, |r| r.test.loss)
    );
    html.push_str("<h2>Quality</h2>");
    html.push_str(&line_chart(
        "test loss per round",
        "round",
        "test loss (log)",
        &quality,
        true,
    ));
    // Accuracy and backdoor success, for the tasks that report them.
    type Pick = fn(&cohort_fl::learner::Metrics) -> Option<f64>;
    let extra: [(&str, Pick); 3] = [
        ("test perplexity", |m| m.perplexity),
        ("test accuracy", |m| m.accuracy),
        ("backdoor success rate", |m| m.backdoor_success_rate),
    ];
    for (what, pick) in extra {
        let points = |s: &RunSummary| -> Vec<(f64, f64)> {
            std::iter::once((0.0, pick(&s.initial)))
                .chain(s.rounds.iter().map(|r| (r.round as f64, pick(&r.test))))
                .filter_map(|(x, y)| y.map(|y| (x, y)))
                .collect()
        };
        if points(s).is_empty() {
            continue;
        }
        let mut series = vec![Series {
            name: "this run".into(),
            color: "#1f77b4",
            dashed: false,
            points: points(s),
        }];
        if let Some(r) = reference.filter(|r| !points(r).is_empty()) {
            series.push(Series {
                name: "reference".into(),
                color: "#555",
                dashed: true,
                points: points(r),
            });
        }
        html.push_str(&line_chart(
            &format!("{what} per round"),
            "round",
            what,
            &series,
            false,
        ));
    }
    html.push_str("<h2>Holdings</h2><p>Balance plus stake per participant (green: honest clients, red: attackers, grey: validators).</p>");
    html.push_str(&line_chart(
        "holdings per round",
        "round",
        "tokens",
        &holdings,
        false,
    ));
    html.push_str("<h2>Rounds</h2><table><tr><th>round</th><th>test loss</th><th>accepted</th><th>rejected</th><th>slashed</th><th>bytes</th><th>train s</th><th>score s</th><th>ledger s</th></tr>");
    for r in &s.rounds {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{:.4}</td><td>{}</td><td>{:?}</td><td>{}</td><td>{}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td></tr>",
            r.round,
            r.test.loss,
            r.accepted.len(),
            r.rejected,
            esc(&r.slashes.keys().cloned().collect::<Vec<_>>().join(", ")),
            r.bytes,
            r.seconds.train,
            r.seconds.score,
            r.seconds.ledger
        );
    }
    html.push_str("</table>");
    if let Some(r) = s.rounds.last() {
        let _ = write!(
            html,
            "<h2>Score matrix, round {}</h2><p>Loss reduction each validator measured for each update (green helps, red hurts).</p><table><tr><th></th>",
            r.round
        );
        for k in &r.submitted {
            let _ = write!(html, "<th>client-{k}</th>");
        }
        html.push_str("</tr>");
        for (v, row) in r.scores.iter().enumerate() {
            let _ = write!(html, "<tr><th>validator-{v}</th>");
            if row.is_empty() {
                let _ = write!(
                    html,
                    "<td colspan=\"{}\">did not reveal</td>",
                    r.submitted.len().max(1)
                );
            }
            for x in row {
                let _ = write!(
                    html,
                    r#"<td style="background:{}">{x:.3}</td>"#,
                    score_color(*x)
                );
            }
            html.push_str("</tr>");
        }
        html.push_str("</table>");
    }
    match record {
        Record::Embedded(verified) => {
            let _ = write!(
                html,
                "<h2>Ledger</h2><p>{} entries, every signature, link and receipt verified; root <code>{}</code>; state <code>{}</code>.</p><pre>{}</pre>",
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
                "<h2>Chain</h2><p>Recorded on the EVM chain with id <b>{}</b> at <code>{}</code>: protocol contract <code>{}</code>; {} transactions{blocks}, {} gas. The chain's receipts are the record (every transaction hash is in summary.json); there is no embedded ledger to verify. Merkle root over the recorded transactions <code>{}</code>.</p>",
                c.chain_id,
                esc(&c.url),
                esc(&c.contract),
                c.transactions,
                c.gas_used,
                esc(&c.root)
            );
        }
    }
    html.push_str("</body></html>\n");
    html
}
