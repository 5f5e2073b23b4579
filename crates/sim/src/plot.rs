//! Hand-written SVG charts: line panels with axes, ticks and a legend.

use std::fmt::Write;

use crate::agent::AgentKind;
use crate::report::RunReport;

/// One line.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// Stroke colour.
    pub color: String,
    /// `stroke-dasharray`, if dashed.
    pub dash: Option<String>,
    /// Points, in x order.
    pub points: Vec<(f64, f64)>,
    /// Draw a marker at every point.
    pub markers: bool,
}

/// One chart: axes and lines.
#[derive(Debug, Clone, Default)]
pub struct Panel {
    /// Title above the panel.
    pub title: String,
    /// x axis label.
    pub x_label: String,
    /// y axis label.
    pub y_label: String,
    /// Lines.
    pub series: Vec<Series>,
    /// Fixed y range; fitted to the data if `None`.
    pub y_range: Option<(f64, f64)>,
    /// Fixed x range; fitted to the data if `None`.
    pub x_range: Option<(f64, f64)>,
}

const PANEL_W: f64 = 560.0;
const PANEL_H: f64 = 300.0;
const MARGIN_L: f64 = 64.0;
const MARGIN_R: f64 = 170.0;
const MARGIN_T: f64 = 34.0;
const MARGIN_B: f64 = 48.0;

/// Colours for successive series.
pub const PALETTE: [&str; 8] = [
    "#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666",
];

fn nice_step(span: f64, ticks: f64) -> f64 {
    let raw = (span / ticks).max(1e-12);
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let n = if norm < 1.5 {
        1.0
    } else if norm < 3.0 {
        2.0
    } else if norm < 7.0 {
        5.0
    } else {
        10.0
    };
    n * mag
}

fn fmt_tick(v: f64, step: f64) -> String {
    if step >= 1.0 {
        format!("{v:.0}")
    } else {
        let d = (-step.log10().floor()) as usize;
        format!("{v:.d$}")
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn range(panel: &Panel) -> ((f64, f64), (f64, f64)) {
    let pts = panel
        .series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter(|p| p.0.is_finite() && p.1.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if !x0.is_finite() {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if let Some(r) = panel.y_range {
        (y0, y1) = r;
    }
    if let Some(r) = panel.x_range {
        (x0, x1) = r;
    }
    if x1 - x0 < 1e-12 {
        x1 = x0 + 1.0;
    }
    if y1 - y0 < 1e-12 {
        (y0, y1) = (y0 - 1.0, y1 + 1.0);
    }
    ((x0, x1), (y0, y1))
}

fn draw_panel(out: &mut String, panel: &Panel, ox: f64, oy: f64) {
    let ((x0, x1), (y0, y1)) = range(panel);
    let (pw, ph) = (PANEL_W - MARGIN_L - MARGIN_R, PANEL_H - MARGIN_T - MARGIN_B);
    let sx = |x: f64| ox + MARGIN_L + (x - x0) / (x1 - x0) * pw;
    let sy = |y: f64| oy + MARGIN_T + ph - (y - y0) / (y1 - y0) * ph;
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" font-size="14" font-weight="bold">{}</text>"#,
        ox + MARGIN_L,
        oy + 20.0,
        esc(&panel.title)
    );
    let _ = writeln!(
        out,
        r##"<rect x="{:.1}" y="{:.1}" width="{pw:.1}" height="{ph:.1}" fill="none" stroke="#444"/>"##,
        ox + MARGIN_L,
        oy + MARGIN_T
    );
    let xs = nice_step(x1 - x0, 6.0);
    let mut t = (x0 / xs).ceil() * xs;
    while t <= x1 + xs * 1e-9 {
        let x = sx(t);
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"##,
            oy + MARGIN_T,
            oy + MARGIN_T + ph,
            oy + MARGIN_T + ph + 15.0,
            fmt_tick(t, xs)
        );
        t += xs;
    }
    let ys = nice_step(y1 - y0, 5.0);
    let mut t = (y0 / ys).ceil() * ys;
    while t <= y1 + ys * 1e-9 {
        let y = sy(t);
        let _ = writeln!(
            out,
            r##"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
            ox + MARGIN_L,
            ox + MARGIN_L + pw,
            ox + MARGIN_L - 5.0,
            y + 4.0,
            fmt_tick(t, ys)
        );
        t += ys;
    }
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle">{}</text>"#,
        ox + MARGIN_L + pw / 2.0,
        oy + PANEL_H - 10.0,
        esc(&panel.x_label)
    );
    let (lx, ly) = (ox + 16.0, oy + MARGIN_T + ph / 2.0);
    let _ = writeln!(
        out,
        r#"<text x="{lx:.1}" y="{ly:.1}" font-size="12" text-anchor="middle" transform="rotate(-90 {lx:.1} {ly:.1})">{}</text>"#,
        esc(&panel.y_label)
    );
    let _ = writeln!(out, "<g>");
    for s in &panel.series {
        let pts: Vec<String> = s
            .points
            .iter()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y.clamp(y0, y1))))
            .collect();
        if pts.is_empty() {
            continue;
        }
        let dash = s
            .dash
            .as_ref()
            .map(|d| format!(r#" stroke-dasharray="{d}""#))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{}" stroke-width="2"{dash} points="{}"/>"#,
            s.color,
            pts.join(" ")
        );
        if s.markers {
            for p in &pts {
                let (x, y) = p.split_once(',').unwrap_or(("0", "0"));
                let _ = writeln!(
                    out,
                    r#"<circle cx="{x}" cy="{y}" r="3" fill="{}"/>"#,
                    s.color
                );
            }
        }
    }
    let _ = writeln!(out, "</g>");
    for (i, s) in panel.series.iter().enumerate() {
        let y = oy + MARGIN_T + 10.0 + 18.0 * i as f64;
        let x = ox + MARGIN_L + pw + 12.0;
        let dash = s
            .dash
            .as_ref()
            .map(|d| format!(r#" stroke-dasharray="{d}""#))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            r#"<line x1="{x:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{}" stroke-width="2"{dash}/><text x="{:.1}" y="{:.1}" font-size="11">{}</text>"#,
            x + 24.0,
            s.color,
            x + 30.0,
            y + 4.0,
            esc(&s.name)
        );
    }
}

/// Panels laid out in a grid of `cols` columns, under a title.
pub fn svg(title: &str, panels: &[Panel], cols: usize) -> String {
    let cols = cols.max(1);
    let rows = panels.len().div_ceil(cols).max(1);
    let (w, h) = (PANEL_W * cols as f64, PANEL_H * rows as f64 + 30.0);
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w:.0}" height="{h:.0}" viewBox="0 0 {w:.0} {h:.0}" font-family="sans-serif">"#
    );
    let _ = writeln!(
        out,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{:.1}" y="20" font-size="14" text-anchor="middle">{}</text>"#,
        w / 2.0,
        esc(title)
    );
    for (i, p) in panels.iter().enumerate() {
        draw_panel(
            &mut out,
            p,
            PANEL_W * (i % cols) as f64,
            30.0 + PANEL_H * (i / cols) as f64,
        );
    }
    out.push_str("</svg>\n");
    out
}

fn kind_style(kind: AgentKind) -> (&'static str, Option<String>) {
    match kind {
        AgentKind::Good => ("#1b9e77", Some("6 3".into())),
        AgentKind::Bad => ("#d62728", Some("2 3".into())),
        AgentKind::Careless => ("#7570b3", Some("8 3 2 3".into())),
        AgentKind::Spammer => ("#e6ab02", None),
    }
}

/// A run's chart: each participant's balance (% of its start) and the test accuracy (%)
/// against simulated days.
pub fn run_chart(r: &RunReport) -> String {
    let mut balances = Panel {
        title: "Balance, % of start".into(),
        x_label: "simulated days".into(),
        y_label: "% of starting balance".into(),
        ..Default::default()
    };
    for (i, a) in r.agents.iter().enumerate() {
        let (color, dash) = kind_style(a.kind);
        let color = if r.agents.iter().filter(|b| b.kind == a.kind).count() > 1 {
            PALETTE[i % PALETTE.len()]
        } else {
            color
        };
        balances.series.push(Series {
            name: {
                let kind = format!("{:?}", a.kind).to_lowercase();
                if a.name.starts_with(&kind) {
                    a.name.clone()
                } else {
                    format!("{} ({kind})", a.name)
                }
            },
            color: color.into(),
            dash,
            points: r
                .balance_series
                .iter()
                .map(|p| (p.day, p.pct.get(i).copied().unwrap_or(f64::NAN)))
                .collect(),
            markers: false,
        });
    }
    let accuracy = Panel {
        title: "Test accuracy, %".into(),
        x_label: "simulated days".into(),
        y_label: "accuracy %".into(),
        series: vec![Series {
            name: "accuracy".into(),
            color: "#000000".into(),
            dash: None,
            points: r
                .accuracy_series
                .iter()
                .map(|p| (p.day, 100.0 * p.accuracy))
                .collect(),
            markers: true,
        }],
        ..Default::default()
    };
    let title = format!(
        "DRT on IMDB: num_words {}, {} reviews, cost weight {}, seed {}",
        r.num_words, r.train_size, r.cost_weight, r.seed
    );
    svg(&title, &[balances, accuracy], 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round() {
        assert_eq!(nice_step(100.0, 5.0), 20.0);
        assert_eq!(nice_step(0.3, 6.0), 0.05);
        assert_eq!(fmt_tick(0.05, 0.05), "0.05");
    }

    #[test]
    fn svg_has_one_polyline_per_series_and_escapes_text() {
        let p = Panel {
            title: "a < b".into(),
            series: vec![
                Series {
                    name: "x".into(),
                    color: "#000".into(),
                    dash: None,
                    points: vec![(0.0, 1.0), (1.0, 2.0)],
                    markers: false,
                },
                Series {
                    name: "y".into(),
                    color: "#f00".into(),
                    dash: None,
                    points: vec![(0.0, 3.0)],
                    markers: true,
                },
            ],
            ..Default::default()
        };
        let s = svg("t", &[p], 1);
        assert_eq!(s.matches("<polyline").count(), 2);
        assert!(s.contains("a &lt; b"));
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
    }
}
