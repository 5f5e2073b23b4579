use std::fmt;

use alloy_primitives::U256;
use serde::{Deserialize, Serialize};

/// Base units per token (18 decimals, as on EVM chains).
pub const TOKEN: u128 = 1_000_000_000_000_000_000;

/// `n` whole tokens in base units.
pub fn tokens(n: u64) -> U256 {
    U256::from(n) * U256::from(TOKEN)
}

/// Base units as whole tokens, for reports and charts (not for accounting).
pub fn to_tokens_f64(v: U256) -> f64 {
    let unit = U256::from(TOKEN);
    let whole: u128 = (v / unit).try_into().unwrap_or(u128::MAX);
    let frac: u128 = (v % unit).try_into().unwrap_or(0);
    whole as f64 + frac as f64 / TOKEN as f64
}

/// A fixed-point score as the protocol stores it: `value / Score::SCALE`.
///
/// Validators score an update by the loss reduction it brings; the contract compares these
/// integers, so the conversion from `f64` happens once, here, with round-half-away-from-zero.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Score(pub i64);

impl Score {
    /// Fixed-point scale (1e6), equal to the contract's `SCORE_SCALE`.
    pub const SCALE: i64 = 1_000_000;

    /// Converts a real number, saturating at the ends of `i64` and mapping NaN to zero.
    pub fn from_f64(x: f64) -> Self {
        if x.is_nan() {
            return Self(0);
        }
        Self((x * Self::SCALE as f64).round() as i64)
    }

    /// The real value.
    pub fn to_f64(self) -> f64 {
        self.0 as f64 / Self::SCALE as f64
    }
}

impl fmt::Debug for Score {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Score({})", self.to_f64())
    }
}

impl fmt::Display for Score {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.6}", self.to_f64())
    }
}

/// Base-unit amounts as decimal strings in JSON (`#[serde(with = "cohort_core::amount::decimal")]`):
/// exact at any size, and readable by any JSON tool.
pub mod decimal {
    use alloy_primitives::U256;

    /// Writes `v` as a decimal string.
    pub fn serialize<S: serde::Serializer>(v: &U256, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    /// Reads a decimal string; anything else is an error naming it.
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<U256, D::Error> {
        let s: String = serde::Deserialize::deserialize(d)?;
        U256::from_str_radix(&s, 10)
            .map_err(|e| serde::de::Error::custom(format!("amount {s:?}: {e}")))
    }
}

/// Maps of base-unit amounts (by participant name, say) with decimal-string values in JSON
/// (`#[serde(with = "cohort_core::amount::decimal_map")]`). A value that is not a decimal
/// string (a number of whole tokens, as summaries before integer amounts held) is an error
/// that says so.
pub mod decimal_map {
    use std::collections::BTreeMap;

    use alloy_primitives::U256;
    use serde::Deserialize;

    /// Writes every value as a decimal string.
    pub fn serialize<S: serde::Serializer>(
        m: &BTreeMap<String, U256>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_map(m.iter().map(|(k, v)| (k, v.to_string())))
    }

    /// A value as written: a decimal string, or something else (refused).
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Number(f64),
        Other(serde::de::IgnoredAny),
    }

    /// Reads decimal strings; anything else is an error naming the key.
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, U256>, D::Error> {
        let raw: BTreeMap<String, Raw> = BTreeMap::deserialize(d)?;
        raw.into_iter()
            .map(|(k, v)| {
                let found = match v {
                    Raw::Text(s) => match U256::from_str_radix(&s, 10) {
                        Ok(a) => return Ok((k, a)),
                        Err(_) => format!("{s:?}"),
                    },
                    Raw::Number(n) => format!("the number {n}"),
                    Raw::Other(_) => "not a string".to_owned(),
                };
                Err(serde::de::Error::custom(format!(
                    "amount of {k:?} is {found}, not base units (10^18 per token) as a decimal \
                     string (summaries written before cohort kept amounts as integers held \
                     whole tokens)"
                )))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_round_trip() {
        assert_eq!(Score::from_f64(0.25).0, 250_000);
        assert_eq!(Score::from_f64(-1.5).to_f64(), -1.5);
        assert_eq!(Score::from_f64(f64::NAN).0, 0);
        assert_eq!(Score::from_f64(f64::INFINITY).0, i64::MAX);
    }

    #[test]
    fn token_units() {
        assert_eq!(tokens(2), U256::from(2_000_000_000_000_000_000u128));
        assert_eq!(to_tokens_f64(tokens(3) + U256::from(TOKEN / 4)), 3.25);
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Held(#[serde(with = "decimal_map")] std::collections::BTreeMap<String, U256>);

    #[test]
    fn decimal_maps_round_trip_and_refuse_token_numbers() {
        let m = Held([("a".to_owned(), tokens(10_000) + U256::from(1u8))].into());
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(json, r#"{"a":"10000000000000000000001"}"#);
        assert_eq!(serde_json::from_str::<Held>(&json).unwrap(), m);
        let err = serde_json::from_str::<Held>(r#"{"a":10000.5}"#).unwrap_err();
        assert!(
            err.to_string()
                .contains("amount of \"a\" is the number 10000.5"),
            "{err}"
        );
        assert!(serde_json::from_str::<Held>(r#"{"a":"1.5"}"#).is_err());
    }
}
