//! `report.html` as people open it: real `cohort run`s (examples/attack-linear.toml, shrunk
//! with `--set`), one clean and one attacked with the clean one as `--reference`, rendered in
//! headless Chromium from `file://` with no network. The test fails on any JavaScript error or
//! console message, and checks that every chart was drawn by uPlot.
//!
//! Chromium is found as `$COHORT_CHROMIUM`, else `chromium`, `chromium-browser`,
//! `google-chrome` on the PATH. Without it the browser checks are skipped with a loud message,
//! unless `COHORT_REQUIRE_CHROMIUM` is set (CI sets it: `.ci/run` installs Chromium), in which
//! case the test fails. The checks of the page's text and CSV files run everywhere.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{p, text};

/// A short run of attack-linear.toml: 8 clients (2 attacking), 3 validators, 3 rounds; from
/// the workspace root, as the README runs it (the report shows the relative config path).
fn run(out: &Path, extra: &[&str]) {
    let mut args = vec![
        "run",
        "examples/attack-linear.toml",
        "--out",
        p(out),
        "--set",
        "clients=8",
        "--set",
        "coordinator.rounds=3",
        "--set",
        "coordinator.clients_per_round=8",
    ];
    args.extend_from_slice(extra);
    let o = Command::new(env!("CARGO_BIN_EXE_cohort"))
        .args(&args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
}

fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("COHORT_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ]
    .iter()
    .flat_map(|name| std::env::split_paths(&path).map(move |d| d.join(name)))
    .find(|p| p.is_file())
}

/// Chromium, or `None` after a loud message when it is absent and not required.
fn browser() -> Option<PathBuf> {
    let found = chromium();
    if found.is_none() {
        assert!(
            std::env::var_os("COHORT_REQUIRE_CHROMIUM").is_none(),
            "COHORT_REQUIRE_CHROMIUM is set but no Chromium was found (set COHORT_CHROMIUM or \
             install chromium)"
        );
        // Straight to the process's stderr: the test harness does not capture it, so the
        // message shows in a plain `cargo test` too.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "\n********************************************************************\n\
             SKIPPED: report.html was NOT rendered in a browser: no Chromium found.\n\
             Install chromium (apt-get install -y chromium) or set COHORT_CHROMIUM;\n\
             CI sets COHORT_REQUIRE_CHROMIUM so that it can never skip this.\n\
             ********************************************************************"
        );
    }
    found
}

/// What Chromium made of a page: the DOM after the scripts ran, and its log.
struct Rendered {
    dom: String,
    log: String,
}

fn render(chrome: &Path, page: &Path) -> Rendered {
    let profile = tempfile::tempdir().unwrap();
    let o = Command::new(chrome)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("chromium starts");
    assert!(o.status.success(), "chromium failed: {}", text(&o));
    Rendered {
        dom: String::from_utf8_lossy(&o.stdout).into_owned(),
        log: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// Fails on any JavaScript error or console message of the page, and unless every chart
/// container holds a drawn uPlot chart.
fn assert_clean_and_drawn(r: &Rendered, page: &Path) {
    // Every console message (errors and uncaught exceptions included) is logged as
    // `...:CONSOLE(line)] "message", source: URL`; the report logs nothing.
    let console: Vec<&str> = r.log.lines().filter(|l| l.contains(":CONSOLE")).collect();
    assert!(
        console.is_empty(),
        "{}: console output:\n{}",
        page.display(),
        console.join("\n")
    );
    let html = r
        .dom
        .split_once("<html")
        .and_then(|(_, rest)| rest.split_once('>'))
        .map(|(attrs, _)| attrs)
        .unwrap_or_else(|| panic!("no <html> in the DOM:\n{}", r.dom));
    assert!(
        html.contains(r#"data-js-errors="0""#),
        "{}: JavaScript errors (the page's own count: {html}):\n{}",
        page.display(),
        r.dom
            .split_once(r#"id="report-errors""#)
            .map_or("", |(_, rest)| &rest[..rest.len().min(2000)])
    );
    let containers = r.dom.matches(r#"<div class="chart""#).count();
    assert!(containers >= 5, "{containers} chart containers");
    assert!(
        html.contains(&format!(r#"data-charts="{containers}""#)),
        "{html}: not every chart was drawn"
    );
    // uPlot builds a `div.uplot` with a canvas inside for each chart, and a legend row per
    // line.
    assert_eq!(r.dom.matches(r#"class="uplot"#).count(), containers);
    assert!(r.dom.matches("<canvas").count() >= containers);
    assert!(r.dom.contains("u-legend"));
}

#[test]
fn reports_render_in_chromium_without_errors_and_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let (clean, attacked) = (tmp.path().join("clean"), tmp.path().join("attacked"));
    run(&clean, &["--set", "attack.fraction=0"]);
    let reference = clean.join("summary.json");
    run(&attacked, &["--reference", p(&reference)]);

    let page = std::fs::read_to_string(attacked.join("report.html")).unwrap();
    // Self-contained: nothing is fetched (no src= or href= to a network address).
    for needle in [
        "src=\"http",
        "href=\"http",
        "src='http",
        "@import",
        "url(http",
    ] {
        assert!(
            !page.contains(needle),
            "the page fetches something: {needle}"
        );
    }
    assert!(page.contains("uPlot 1.6.32") && page.contains("var uPlot="));
    // Named: config, command, version, time.
    assert!(page.contains("attack-linear.toml"));
    assert!(page.contains("cohort run "));
    assert!(page.contains(env!("CARGO_PKG_VERSION")));
    assert!(page.contains("<dt>started</dt><dd>20"));
    // The reference is drawn beside the run.
    assert!(page.contains(r#""label":"reference""#));
    // Attackers (clients 6 and 7 of 8 at fraction 0.3) are rejected and slashed, listed by
    // name in both columns.
    let rounds = std::fs::read_to_string(attacked.join("rounds.csv")).unwrap();
    let head: Vec<&str> = rounds.lines().next().unwrap().split(',').collect();
    let col = |name: &str| head.iter().position(|h| *h == name).unwrap();
    for line in rounds.lines().skip(1) {
        let cells: Vec<&str> = line.split(',').collect();
        assert_eq!(cells[col("rejected")], "client-6 client-7", "{line}");
        assert!(cells[col("slashed")].starts_with("client-6 ("), "{line}");
        assert!(
            cells[col("update_bytes")].parse::<u64>().unwrap() > 0,
            "{line}"
        );
    }
    assert!(
        !head.contains(&"accuracy"),
        "a linear task has no accuracy column: {head:?}"
    );
    // Per-client rows: samples, norm, score, verdict, reward, slash per round.
    let people = std::fs::read_to_string(attacked.join("participants.csv")).unwrap();
    assert!(people.starts_with(
        "round,participant,role,samples,update_norm,update_bytes,consensus_score,verdict,reward,slash,holdings_after\n"
    ));
    assert_eq!(people.lines().count(), 1 + 3 * (8 + 3));
    let row = people
        .lines()
        .find(|l| l.starts_with("1,client-6,"))
        .unwrap();
    assert!(
        row.contains(",client (attacker),64,") && row.contains("rejected by the validators"),
        "{row}"
    );
    let row = people
        .lines()
        .find(|l| l.starts_with("1,client-0,"))
        .unwrap();
    assert!(
        row.contains(",accepted,") && row.ends_with(|c: char| c.is_ascii_digit()),
        "{row}"
    );
    // The tables are offered as CSV in the page too.
    for f in [
        "rounds.csv",
        "participants.csv",
        "scores.csv",
        "holdings.csv",
    ] {
        assert!(
            page.contains(&format!(r#"download="{f}" href="data:text/csv"#)),
            "{f}"
        );
        assert!(attacked.join(f).is_file(), "{f}");
    }

    let Some(chrome) = browser() else {
        return;
    };
    for dir in [&clean, &attacked] {
        let page = dir.join("report.html");
        let r = render(&chrome, &page);
        assert_clean_and_drawn(&r, &page);
    }
    // The check can fail: a page whose script throws is caught by the page's own count and
    // by the console log.
    let broken = tmp.path().join("broken.html");
    std::fs::write(
        &broken,
        page.replace(
            "var data = JSON.parse(",
            "undefinedFunction(); var data = JSON.parse(",
        ),
    )
    .unwrap();
    let r = render(&chrome, &broken);
    assert!(r.dom.contains(r#"data-js-errors="1""#), "{}", r.log);
    assert!(r.log.contains("Uncaught ReferenceError"), "{}", r.log);
    // A screenshot for docs/ when asked: COHORT_REPORT_SCREENSHOT=docs/report.png (relative
    // to the workspace root).
    if let Some(shot) = std::env::var_os("COHORT_REPORT_SCREENSHOT") {
        let shot = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(shot);
        let profile = tempfile::tempdir().unwrap();
        let o = Command::new(&chrome)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("--window-size=1200,2000")
            .arg(format!("--screenshot={}", shot.display()))
            .arg(format!("file://{}", attacked.join("report.html").display()))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
    }
}

#[test]
fn a_malformed_reference_is_refused_before_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.json");
    std::fs::write(&bad, r#"{"summary": {"rounds": "not a list"}}"#).unwrap();
    let missing = tmp.path().join("missing.json");
    // A summary from before amounts were integers: refused, naming the field.
    let old = tmp.path().join("old.json");
    std::fs::write(
        &old,
        r#"{"summary": {"rounds": [{"round": 1, "rewards": {"client-0": "1.0000"}}]}}"#,
    )
    .unwrap();
    let old_holdings = tmp.path().join("old-holdings.json");
    std::fs::write(
        &old_holdings,
        r#"{"summary": {"rounds": [{"round": 1, "holdings": {"client-0": 10000.5}}]}}"#,
    )
    .unwrap();
    for (reference, needle) in [
        (&old, "field `rewards`"),
        (
            &old_holdings,
            "amount of \"client-0\" is the number 10000.5",
        ),
        (&bad, "not a cohort run summary.json"),
        (&missing, "reading"),
    ] {
        let out = tmp.path().join("run");
        let o = Command::new(env!("CARGO_BIN_EXE_cohort"))
            .args(["run", "examples/attack-linear.toml", "--out", p(&out)])
            .args(["--reference", p(reference)])
            .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(text(&o).contains(needle), "{}", text(&o));
        assert!(
            !out.exists(),
            "the run started before the reference was read"
        );
    }
}
