//! Charts of simulator runs, drawn with [plotters](https://docs.rs/plotters): a grid of line
//! panels under a title, each with its axes, round tick labels and a legend beside it.
//!
//! A [`Chart`] is data (panels of [`Series`]); [`Chart::write`] draws it as SVG or PNG by the
//! file's extension ([`PlotFormat`]). SVG keeps its text as text (font family `sans-serif`);
//! PNG draws text with the DejaVu Sans subset committed in `crates/sim/assets/fonts/` through
//! plotters' pure-Rust `ab_glyph` path, so neither needs system fonts.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::backend::RGBPixel;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::SimError;
use crate::agent::AgentKind;
use crate::report::RunReport;

/// One line.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// Stroke colour, `#rrggbb`.
    pub color: String,
    /// Dash and gap lengths in pixels, if dashed.
    pub dash: Option<(u32, u32)>,
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

/// Panels in a grid of `cols` columns under a title.
#[derive(Debug, Clone, Default)]
pub struct Chart {
    /// The title over all panels.
    pub title: String,
    /// The panels, row by row.
    pub panels: Vec<Panel>,
    /// Panels per row.
    pub cols: usize,
}

/// The file formats a chart is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlotFormat {
    /// Scalable vector graphics, text as text.
    Svg,
    /// A PNG bitmap.
    Png,
}

impl PlotFormat {
    /// The format a path's extension names (`.svg` or `.png`, any case).
    pub fn from_path(path: &Path) -> Result<Self, SimError> {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("svg") => Ok(Self::Svg),
            Some("png") => Ok(Self::Png),
            _ => Err(SimError::Plot {
                path: path.to_path_buf(),
                reason: "the file name must end in .svg or .png".into(),
            }),
        }
    }
}

const PANEL_W: u32 = 640;
const PANEL_H: u32 = 340;
const LEGEND_W: u32 = 180;
const TITLE_H: u32 = 34;
const FONT: &str = "sans-serif";
/// The largest PNG drawn (the bitmap is held in memory): 100 megapixels.
const MAX_PNG_PIXELS: u64 = 100_000_000;

/// Colours for successive series.
pub const PALETTE: [&str; 8] = [
    "#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666",
];

/// The DejaVu Sans subset that PNG text is drawn with.
static FONT_BYTES: &[u8] = include_bytes!("../assets/fonts/DejaVuSans-subset.ttf");

/// Registers the committed font as `sans-serif` for plotters, once.
fn register_font() -> Result<(), String> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err("the committed font (assets/fonts/DejaVuSans-subset.ttf) does not parse".into())
    }
}

/// A step of 1, 2 or 5 times a power of ten that cuts `span` into about `ticks` parts.
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

/// A tick label with as many decimals as the step needs.
fn fmt_tick(v: f64, step: f64) -> String {
    let v = if v.abs() < step * 1e-9 { 0.0 } else { v };
    if step >= 1.0 {
        format!("{v:.0}")
    } else {
        let d = ((-step.log10().floor()) as usize).min(12);
        format!("{v:.d$}")
    }
}

/// The panel's x and y ranges: fixed ones, else the finite points' extent (never empty).
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
    if let Some(r) = panel.y_range.filter(|r| r.0.is_finite() && r.1.is_finite()) {
        (y0, y1) = (r.0.min(r.1), r.0.max(r.1));
    }
    if let Some(r) = panel.x_range.filter(|r| r.0.is_finite() && r.1.is_finite()) {
        (x0, x1) = (r.0.min(r.1), r.0.max(r.1));
    }
    if x1 - x0 < 1e-12 {
        (x0, x1) = (x0 - 0.5, x1 + 0.5);
    }
    if y1 - y0 < 1e-12 {
        (y0, y1) = (y0 - 1.0, y1 + 1.0);
    } else if panel.y_range.is_none() {
        let pad = (y1 - y0) * 0.05;
        (y0, y1) = (y0 - pad, y1 + pad);
    }
    ((x0, x1), (y0, y1))
}

fn rgb(hex: &str) -> RGBColor {
    let h = hex.trim_start_matches('#');
    let c = |i: usize| {
        h.get(i..i + 2)
            .and_then(|s| u8::from_str_radix(s, 16).ok())
            .unwrap_or(0)
    };
    if h.len() == 6 {
        RGBColor(c(0), c(2), c(4))
    } else {
        BLACK
    }
}

type DrawResult<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

fn draw_panel<DB: DrawingBackend>(cell: &DrawingArea<DB, Shift>, panel: &Panel) -> DrawResult<DB> {
    let ((x0, x1), (y0, y1)) = range(panel);
    let (plot, legend) = cell.split_horizontally(PANEL_W - LEGEND_W);
    let (xs, ys) = (nice_step(x1 - x0, 6.0), nice_step(y1 - y0, 5.0));
    let x_fmt = move |x: &f64| fmt_tick(*x, xs);
    let y_fmt = move |y: &f64| fmt_tick(*y, ys);
    let mut chart = ChartBuilder::on(&plot)
        .caption(&panel.title, (FONT, 15))
        .margin(8)
        .x_label_area_size(42)
        .y_label_area_size(62)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    chart
        .configure_mesh()
        .x_desc(panel.x_label.as_str())
        .y_desc(panel.y_label.as_str())
        .label_style((FONT, 12))
        .axis_desc_style((FONT, 12))
        .x_labels(8)
        .y_labels(7)
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .bold_line_style(RGBColor(220, 220, 220))
        .max_light_lines(0)
        .draw()?;
    for s in &panel.series {
        let color = rgb(&s.color);
        let style = ShapeStyle::from(color).stroke_width(2);
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .map(|&(x, y)| (x, y.clamp(y0, y1)))
            .collect();
        match s.dash.filter(|&(dash, gap)| dash > 0 && gap > 0) {
            Some((dash, gap)) => {
                chart.draw_series(DashedLineSeries::new(pts.clone(), dash, gap, style))?;
            }
            None => {
                chart.draw_series(LineSeries::new(pts.clone(), style))?;
            }
        }
        if s.markers {
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
        }
    }
    // The legend beside the plot, one row per series with its stroke.
    for (i, s) in panel.series.iter().enumerate() {
        let y = 44 + 18 * i as i32;
        if y + 10 > PANEL_H as i32 {
            legend.draw(&Text::new(
                format!("(+{} more)", panel.series.len() - i),
                (8, y - 7),
                (FONT, 11),
            ))?;
            break;
        }
        let style = ShapeStyle::from(rgb(&s.color)).stroke_width(2);
        let (dash, gap) = s.dash.map_or((26, 0), |(d, g)| (d as i32, g as i32));
        let mut x = 4;
        while x < 30 {
            legend.draw(&PathElement::new(
                vec![(x, y), ((x + dash).min(30), y)],
                style,
            ))?;
            x += dash + gap.max(1);
        }
        legend.draw(&Text::new(s.name.clone(), (36, y - 7), (FONT, 12)))?;
    }
    Ok(())
}

fn draw_chart<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, chart: &Chart) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    let (head, body) = root.split_vertically(TITLE_H);
    head.draw(&Text::new(
        chart.title.clone(),
        (8, 8),
        (FONT, 16).into_font().color(&BLACK),
    ))?;
    let cols = chart.cols.max(1);
    let rows = chart.panels.len().div_ceil(cols).max(1);
    for (cell, panel) in body.split_evenly((rows, cols)).iter().zip(&chart.panels) {
        draw_panel(cell, panel)?;
    }
    root.present()?;
    Ok(())
}

impl Chart {
    /// Pixel size: a cell per panel under the title.
    pub fn size(&self) -> (u32, u32) {
        let cols = self.cols.max(1);
        let rows = self.panels.len().div_ceil(cols).max(1);
        (PANEL_W * cols as u32, TITLE_H + PANEL_H * rows as u32)
    }

    /// The chart as an SVG document.
    pub fn svg(&self) -> Result<String, SimError> {
        let fail = |reason: String| SimError::Plot {
            path: PathBuf::from("<svg>"),
            reason,
        };
        register_font().map_err(fail)?;
        let mut out = String::new();
        {
            let root = SVGBackend::with_string(&mut out, self.size()).into_drawing_area();
            draw_chart(&root, self).map_err(|e| fail(e.to_string()))?;
        }
        Ok(out)
    }

    /// The chart as PNG bytes (8-bit RGB).
    pub fn png(&self) -> Result<Vec<u8>, SimError> {
        let fail = |reason: String| SimError::Plot {
            path: PathBuf::from("<png>"),
            reason,
        };
        register_font().map_err(fail)?;
        let (w, h) = self.size();
        let pixels = u64::from(w) * u64::from(h);
        if pixels > MAX_PNG_PIXELS {
            return Err(fail(format!(
                "{w} x {h} pixels is too large for a PNG (at most {MAX_PNG_PIXELS}); write an .svg"
            )));
        }
        let mut rgb = vec![0u8; 3 * pixels as usize];
        {
            let backend = BitMapBackend::<RGBPixel>::with_buffer_and_format(&mut rgb, (w, h))
                .map_err(|e| fail(e.to_string()))?;
            draw_chart(&backend.into_drawing_area(), self).map_err(|e| fail(e.to_string()))?;
        }
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, w, h);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        encoder
            .write_header()
            .and_then(|mut writer| {
                writer.write_image_data(&rgb)?;
                writer.finish()
            })
            .map_err(|e| fail(format!("encoding the PNG: {e}")))?;
        Ok(out)
    }

    /// Draws the chart into `path`, as SVG or PNG by its extension.
    pub fn write(&self, path: &Path) -> Result<(), SimError> {
        let fail = |reason: String| SimError::Plot {
            path: path.to_path_buf(),
            reason,
        };
        match PlotFormat::from_path(path)? {
            PlotFormat::Svg => {
                let svg = self.svg()?;
                std::fs::write(path, svg).map_err(|error| SimError::Io {
                    path: path.to_path_buf(),
                    error,
                })
            }
            PlotFormat::Png => {
                let png = self.png().map_err(|e| match e {
                    SimError::Plot { reason, .. } => fail(reason),
                    other => other,
                })?;
                std::fs::write(path, png).map_err(|error| SimError::Io {
                    path: path.to_path_buf(),
                    error,
                })
            }
        }
    }
}

fn kind_style(kind: AgentKind) -> (&'static str, Option<(u32, u32)>) {
    match kind {
        AgentKind::Good => ("#1b9e77", Some((6, 3))),
        AgentKind::Bad => ("#d62728", Some((2, 3))),
        AgentKind::Careless => ("#7570b3", Some((10, 4))),
        AgentKind::Spammer => ("#e6ab02", None),
    }
}

/// A run's chart: each participant's balance (% of its start) and the test accuracy (%)
/// against simulated days.
pub fn run_chart(r: &RunReport) -> Chart {
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
    Chart {
        title: format!(
            "{} on IMDB ({}): num_words {}, {} reviews, cost weight {}, seed {}",
            r.mechanism, r.model, r.num_words, r.train_size, r.cost_weight, r.seed
        ),
        panels: vec![balances, accuracy],
        cols: 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round() {
        assert_eq!(nice_step(100.0, 5.0), 20.0);
        assert_eq!(nice_step(0.3, 6.0), 0.05);
        assert_eq!(fmt_tick(0.05, 0.05), "0.05");
        assert_eq!(fmt_tick(10232.443, 2000.0), "10232");
        assert_eq!(fmt_tick(-1e-17, 0.1), "0.0");
    }

    fn two_lines() -> Chart {
        Chart {
            title: "t & u".into(),
            panels: vec![Panel {
                title: "a < b".into(),
                x_label: "day".into(),
                y_label: "%".into(),
                series: vec![
                    Series {
                        name: "solid".into(),
                        color: "#1b9e77".into(),
                        dash: None,
                        points: vec![(0.0, 1.0), (1.0, 2.0), (2.0, f64::NAN), (3.0, 10232.443)],
                        markers: false,
                    },
                    Series {
                        name: "dashed".into(),
                        color: "#d62728".into(),
                        dash: Some((6, 3)),
                        points: vec![(0.0, 3.0), (3.0, 4.0)],
                        markers: true,
                    },
                ],
                ..Default::default()
            }],
            cols: 1,
        }
    }

    #[test]
    fn svg_draws_every_series_with_its_colour_legend_and_round_ticks() {
        let s = two_lines().svg().unwrap();
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        // Text is escaped, the legend names each series, the colours are used.
        assert!(s.contains("a &lt; b") && s.contains("t &amp; u"), "{s}");
        assert!(s.contains("\nsolid\n") && s.contains("\ndashed\n"), "{s}");
        assert!(s.contains("#1B9E77") || s.contains("#1b9e77"), "{s}");
        assert!(s.contains("#D62728") || s.contains("#d62728"));
        // The markers of the dashed series: one circle per point.
        assert_eq!(s.matches("<circle").count(), 2);
        // No unrounded tick label.
        assert!(!s.contains("10232.443"), "{s}");
    }

    #[test]
    fn png_is_a_png_of_the_chart_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.PNG");
        let chart = two_lines();
        chart.write(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        let (w, h) = chart.size();
        let be =
            |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        assert_eq!((be(16), be(20)), (w, h));
    }

    #[test]
    fn formats_are_chosen_by_extension_and_others_refused() {
        assert_eq!(
            PlotFormat::from_path(Path::new("a.svg")).unwrap(),
            PlotFormat::Svg
        );
        assert_eq!(
            PlotFormat::from_path(Path::new("a.Png")).unwrap(),
            PlotFormat::Png
        );
        for bad in ["a.jpg", "a", "svg", "a.svg.txt"] {
            let e = PlotFormat::from_path(Path::new(bad))
                .unwrap_err()
                .to_string();
            assert!(e.contains(".svg or .png"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_png_too_large_to_hold_is_refused_before_drawing() {
        let c = Chart {
            panels: vec![Panel::default(); 500],
            cols: 500,
            ..Default::default()
        };
        let e = c.png().unwrap_err().to_string();
        assert!(e.contains("too large for a PNG"), "{e}");
    }

    #[test]
    fn empty_and_degenerate_panels_still_draw() {
        let mut c = two_lines();
        c.panels.push(Panel::default());
        c.panels.push(Panel {
            series: vec![Series {
                name: "flat".into(),
                color: "not a colour".into(),
                dash: Some((0, 0)),
                points: vec![(5.0, 5.0), (5.0, 5.0)],
                markers: true,
            }],
            y_range: Some((f64::NAN, 1.0)),
            ..Default::default()
        });
        c.cols = 2;
        assert!(c.svg().unwrap().contains("flat"));
    }
}
