//! Range-checked argument parsers and output-path checks shared by every subcommand.
//!
//! Every numeric flag states its valid range at parse time, so a bad value is refused by clap
//! with the flag's name (`invalid value 'nan' for '--lr <LR>': must be a finite number in (0,
//! 10]`) before any work starts:
//!
//! ```ignore
//! /// Learning rate.
//! #[arg(long, default_value_t = 3e-4, value_parser = float_in(0.0..=10.0).open_start())]
//! lr: f64,
//! /// Steps to run.
//! #[arg(long, default_value_t = 100, value_parser = int_in(1..=10_000_000u64))]
//! steps: u64,
//! ```
//!
//! Output files (`--json FILE`, `--plot FILE`, `--out FILE`) are probed with
//! [`check_output_file`] at the start of `execute`, so a long run never fails at the end on a
//! path it could have refused at the start.

use std::fmt::Display;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::str::FromStr;

use anyhow::{Context, bail};

/// A range of floats, closed unless [`FloatRange::open_start`] says otherwise. Parses finite
/// numbers only: `nan`, `inf` and `-inf` are always refused.
#[derive(Debug, Clone, Copy)]
pub struct FloatRange {
    lo: Bound<f64>,
    hi: Bound<f64>,
}

/// Floats in `range` (finite only); `..` accepts any finite number.
pub fn float_in(range: impl RangeBounds<f64>) -> FloatRange {
    FloatRange {
        lo: range.start_bound().cloned(),
        hi: range.end_bound().cloned(),
    }
}

impl FloatRange {
    /// Excludes the lower end (`(0, 1]` from `0.0..=1.0`).
    pub fn open_start(mut self) -> Self {
        if let Bound::Included(x) = self.lo {
            self.lo = Bound::Excluded(x);
        }
        self
    }

    /// Whether `x` is finite and inside the range.
    pub fn contains(&self, x: f64) -> bool {
        x.is_finite() && (self.lo, self.hi).contains(&x)
    }

    /// The range as people write it: `[0, 1]`, `(0, 10]`, `any finite number`.
    pub fn describe(&self) -> String {
        describe(self.lo, self.hi, "-inf", "inf")
    }

    /// Parses `s` and checks it, naming the range on failure.
    pub fn parse(&self, s: &str) -> Result<f64, String> {
        let x: f64 = s
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not a number"))?;
        if self.contains(x) {
            Ok(x)
        } else {
            Err(format!("must be a finite number in {}", self.describe()))
        }
    }
}

impl clap::builder::TypedValueParser for FloatRange {
    type Value = f64;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<f64, clap::Error> {
        let s = value.to_string_lossy();
        self.parse(&s)
            .map_err(|msg| invalid_value(cmd, arg, &s, &msg))
    }
}

/// Integers in `range`, refusing values outside it with the range in the message (clap's own
/// ranged parsers exist only for some integer types; this one serves `usize` and `u32` too).
pub fn int_in<T>(range: impl RangeBounds<T>) -> IntRange<T>
where
    T: Copy,
{
    IntRange {
        lo: range.start_bound().cloned(),
        hi: range.end_bound().cloned(),
    }
}

/// See [`int_in`].
#[derive(Debug, Clone, Copy)]
pub struct IntRange<T> {
    lo: Bound<T>,
    hi: Bound<T>,
}

impl<T> IntRange<T>
where
    T: FromStr + PartialOrd + Display + Copy,
{
    /// Parses `s` and checks it, naming the range on failure.
    pub fn parse(&self, s: &str) -> Result<T, String> {
        let x: T = s
            .trim()
            .parse()
            .map_err(|_| format!("must be a whole number in {}", self.describe()))?;
        if (self.lo, self.hi).contains(&x) {
            Ok(x)
        } else {
            Err(format!("must be a whole number in {}", self.describe()))
        }
    }

    /// The range as people write it.
    pub fn describe(&self) -> String {
        describe(self.lo, self.hi, "", "")
    }
}

impl<T> clap::builder::TypedValueParser for IntRange<T>
where
    T: FromStr + PartialOrd + Display + Copy + Send + Sync + 'static,
{
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<T, clap::Error> {
        let s = value.to_string_lossy();
        self.parse(&s)
            .map_err(|msg| invalid_value(cmd, arg, &s, &msg))
    }
}

fn describe<T: Display>(lo: Bound<T>, hi: Bound<T>, neg_inf: &str, inf: &str) -> String {
    let (open, a) = match lo {
        Bound::Included(x) => ("[", x.to_string()),
        Bound::Excluded(x) => ("(", x.to_string()),
        Bound::Unbounded if neg_inf.is_empty() => ("[", "min".into()),
        Bound::Unbounded => ("(", neg_inf.into()),
    };
    let (close, b) = match hi {
        Bound::Included(x) => ("]", x.to_string()),
        Bound::Excluded(x) => (")", x.to_string()),
        Bound::Unbounded if inf.is_empty() => ("]", "max".into()),
        Bound::Unbounded => (")", inf.into()),
    };
    format!("{open}{a}, {b}{close}")
}

/// A clap error in clap's own shape: `invalid value 'V' for '--flag <F>': MESSAGE`.
fn invalid_value(
    cmd: &clap::Command,
    arg: Option<&clap::Arg>,
    value: &str,
    msg: &str,
) -> clap::Error {
    let name = arg.map_or_else(|| "the value".to_owned(), |a| a.to_string());
    clap::Error::raw(
        clap::error::ErrorKind::ValueValidation,
        format!("invalid value '{value}' for '{name}': {msg}\n"),
    )
    .with_cmd(cmd)
}

/// Base units per whole token.
const TOKEN_DECIMALS: usize = 18;

/// An amount of the protocol's token written in whole tokens with up to 18 decimals (`100`,
/// `0.5`, `1e3` is refused), as base units: more than zero and at most the protocol's supply
/// cap (2^128 - 1 base units).
pub fn token_amount(s: &str) -> Result<alloy_primitives::U256, String> {
    use alloy_primitives::U256;
    let bad = || {
        format!(
            "must be an amount of tokens: digits with at most {TOKEN_DECIMALS} decimals (100, \
             0.5), more than 0 and at most 2^128 - 1 base units"
        )
    };
    let t = s.trim();
    let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
    let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && frac.is_empty())
        || !digits(whole)
        || !digits(frac)
        || frac.len() > TOKEN_DECIMALS
        || whole.len() > 60
    {
        return Err(bad());
    }
    let base = format!("{whole}{frac:0<TOKEN_DECIMALS$}");
    let digits = base.trim_start_matches('0');
    if digits.is_empty() {
        return Err(bad());
    }
    let v = U256::from_str_radix(digits, 10).map_err(|_| bad())?;
    if v > U256::from(u128::MAX) {
        return Err(bad());
    }
    Ok(v)
}

/// Checks, before any work, that `path` can be written as an output file for `flag`: its
/// directory exists, it is not a directory, and a file can be created or appended there. A
/// file this check creates is removed again; an existing file is left unchanged.
pub fn check_output_file(path: &Path, flag: &str) -> anyhow::Result<()> {
    if path.as_os_str().is_empty() {
        bail!("{flag}: the path is empty");
    }
    if path.is_dir() {
        bail!("{flag} {}: is a directory, not a file", path.display());
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        bail!(
            "{flag} {}: the directory {} does not exist",
            path.display(),
            parent.display()
        );
    }
    let existed = path.exists();
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .with_context(|| format!("{flag} {}: cannot be written", path.display()))?;
    if !existed {
        std::fs::remove_file(path)
            .with_context(|| format!("{flag} {}: removing the probe file", path.display()))?;
    }
    Ok(())
}

/// `--funder-key HEX`: the secp256k1 key of an account that pays the parties' gas on a dev
/// chain, parsed (`None` when not given); refused by name when it is not one.
#[cfg(feature = "evm-rpc")]
pub fn funder_key(
    key: Option<&str>,
) -> anyhow::Result<Option<cohort_ledger::rpc::PrivateKeySigner>> {
    key.map(|k| {
        k.trim()
            .parse::<cohort_ledger::rpc::PrivateKeySigner>()
            .map_err(|e| anyhow::anyhow!("--funder-key is not a secp256k1 private key: {e}"))
    })
    .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_refuse_non_finite_and_out_of_range() {
        let r = float_in(0.0..=1.0);
        assert_eq!(r.parse("0.5"), Ok(0.5));
        assert_eq!(r.parse("0"), Ok(0.0));
        assert_eq!(r.parse("1"), Ok(1.0));
        for bad in [
            "nan",
            "NaN",
            "inf",
            "-inf",
            "1.0000001",
            "-0.1",
            "x",
            "",
            "1e400",
        ] {
            assert!(r.parse(bad).is_err(), "{bad} accepted");
        }
        let open = float_in(0.0..=10.0).open_start();
        assert!(open.parse("0").is_err());
        assert_eq!(open.describe(), "(0, 10]");
        assert_eq!(float_in(..).describe(), "(-inf, inf)");
        assert!(float_in(..).parse("nan").is_err());
        assert_eq!(float_in(..).parse("-3.5"), Ok(-3.5));
    }

    #[test]
    fn integers_name_their_range() {
        let r = int_in(1..=1000usize);
        assert_eq!(r.parse("1"), Ok(1));
        assert_eq!(r.parse("1000"), Ok(1000));
        for bad in ["0", "1001", "-1", "18446744073709551616", "1.5", "x", ""] {
            let e = r.parse(bad).unwrap_err();
            assert!(e.contains("[1, 1000]"), "{bad}: {e}");
        }
        assert_eq!(int_in(1u64..).describe(), "[1, max]");
    }

    #[test]
    fn token_amounts_are_whole_tokens_with_up_to_18_decimals() {
        use alloy_primitives::U256;
        let unit = U256::from(10u64).pow(U256::from(18));
        assert_eq!(token_amount("100"), Ok(U256::from(100) * unit));
        assert_eq!(token_amount("0.5"), Ok(unit / U256::from(2)));
        assert_eq!(token_amount(".25"), Ok(unit / U256::from(4)));
        assert_eq!(token_amount("0.000000000000000001"), Ok(U256::from(1)));
        assert_eq!(
            token_amount("340282366920938463463.374607431768211455"),
            Ok(U256::from(u128::MAX))
        );
        for bad in [
            "0",
            "0.0",
            "-1",
            "1e3",
            "nan",
            "inf",
            "",
            ".",
            "1.2.3",
            "0.0000000000000000001",
            "340282366920938463463.374607431768211456",
            "18446744073709551616000000000000000000000000000000000000000000000000",
            "x",
            " 1 2",
        ] {
            assert!(token_amount(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn output_files_are_probed_without_leaving_anything() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("out.json");
        check_output_file(&f, "--json").unwrap();
        assert!(!f.exists(), "the probe left a file");
        std::fs::write(&f, b"kept").unwrap();
        check_output_file(&f, "--json").unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"kept");
        let e = check_output_file(&dir.path().join("no/such/x.svg"), "--plot").unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        let e = check_output_file(dir.path(), "--json").unwrap_err();
        assert!(e.to_string().contains("is a directory"), "{e}");
    }
}

/// A share written as a percentage (`50`, `50%`, `12.5%`, at most two decimals), as basis
/// points (10,000 = 100%), from 0 to 100%.
pub fn percent_bps(s: &str) -> Result<u16, String> {
    let bad =
        || "must be a percentage from 0 to 100 with at most two decimals (50, 12.5%)".to_owned();
    let t = s.trim();
    let t = t.strip_suffix('%').unwrap_or(t).trim();
    let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
    let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || !digits(frac) || frac.len() > 2 || whole.len() > 3 {
        return Err(bad());
    }
    let whole: u32 = whole.parse().map_err(|_| bad())?;
    let frac: u32 = format!("{frac:0<2}").parse().map_err(|_| bad())?;
    let bps = whole * 100 + frac;
    u16::try_from(bps)
        .ok()
        .filter(|b| *b <= 10_000)
        .ok_or_else(bad)
}

/// The longest duration [`duration_secs`] takes: a year.
pub const MAX_DURATION: u64 = 365 * 86_400;

/// A duration: whole seconds, or a whole number with a unit (`90s`, `15m`, `2h`, `7d`), up to a
/// year.
pub fn duration_secs(s: &str) -> Result<u64, String> {
    let bad = || {
        "must be a duration up to a year: seconds, or a number with s, m, h or d (90, 15m, 2h, 7d)"
            .to_owned()
    };
    let t = s.trim();
    let (num, unit) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&t[..i], c),
        _ => (t, 's'),
    };
    let mult = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3_600,
        'd' => 86_400,
        _ => return Err(bad()),
    };
    if num.is_empty() || num.len() > 12 || !num.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = num.parse().map_err(|_| bad())?;
    n.checked_mul(mult)
        .filter(|d| *d <= MAX_DURATION)
        .ok_or_else(bad)
}

#[cfg(test)]
mod share_and_duration_tests {
    use super::{duration_secs, percent_bps};

    #[test]
    fn percentages_become_basis_points_and_garbage_is_refused() {
        for (s, bps) in [
            ("50", 5_000),
            ("50%", 5_000),
            ("12.5%", 1_250),
            ("0", 0),
            ("100", 10_000),
            ("0.01", 1),
        ] {
            assert_eq!(percent_bps(s), Ok(bps), "{s}");
        }
        for s in [
            "",
            "%",
            "-1",
            "100.01",
            "101",
            "nan",
            "inf",
            "1e2",
            "0.001",
            "5 0",
            "9999999999",
        ] {
            assert!(percent_bps(s).is_err(), "{s:?} was taken");
        }
    }

    #[test]
    fn durations_take_units_up_to_a_year() {
        for (s, secs) in [
            ("90", 90),
            ("90s", 90),
            ("15m", 900),
            ("2h", 7_200),
            ("7d", 604_800),
            ("0", 0),
            ("365d", 31_536_000),
        ] {
            assert_eq!(duration_secs(s), Ok(secs), "{s}");
        }
        for s in [
            "",
            "d",
            "-1",
            "366d",
            "1.5h",
            "1w",
            "nan",
            "99999999999999999999",
            "1e3",
        ] {
            assert!(duration_secs(s).is_err(), "{s:?} was taken");
        }
    }
}
