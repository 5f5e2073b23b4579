//! The admission list: which keys may join a federation, in which role and at which index.
//!
//! One party a line, `ROLE PUBLIC_KEY_HEX`, where ROLE is `client` or `validator` and the key
//! is the 32-byte ed25519 public key `cohort keys new` prints (64 hex digits, an optional
//! `0x`). Blank lines and text after `#` are ignored. A party's index is its position among
//! the lines of its role (the first `client` line is client 0). A key may appear once.
//!
//! ```text
//! # three clients and two validators
//! client    3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29
//! client    0x8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c
//! ```

use std::path::Path;

use cohort_core::{PublicKey, address_of};
use cohort_node::coordinator::{Member, Roster};
use cohort_node::transport::Party;

use crate::NetError;

/// The parties admitted to a federation, by role, in index order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Admit {
    /// Client `k`'s public key at `clients[k]`.
    pub clients: Vec<PublicKey>,
    /// Validator `v`'s at `validators[v]`.
    pub validators: Vec<PublicKey>,
}

impl Admit {
    /// Reads an admission list file.
    ///
    /// # Errors
    /// The file cannot be read, or a line is malformed (named with its number), or a key
    /// appears twice.
    pub fn load(path: &Path) -> Result<Self, NetError> {
        let text = std::fs::read_to_string(path).map_err(|source| NetError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses the text of an admission list; `origin` names it in errors.
    ///
    /// # Errors
    /// As [`Self::load`].
    pub fn parse(text: &str, origin: &str) -> Result<Self, NetError> {
        let mut out = Self::default();
        for (i, raw) in text.lines().enumerate() {
            let bad = |reason: String| NetError::Admit {
                path: origin.to_owned(),
                line: i + 1,
                reason,
            };
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut words = line.split_whitespace();
            let (Some(role), Some(key), None) = (words.next(), words.next(), words.next()) else {
                return Err(bad(format!(
                    "expected `ROLE PUBLIC_KEY_HEX` (ROLE is client or validator), found {line:?}"
                )));
            };
            let hex_key = key.strip_prefix("0x").unwrap_or(key);
            let bytes = hex::decode(hex_key)
                .map_err(|e| bad(format!("the public key {key:?} is not hex: {e}")))?;
            let pk: PublicKey = bytes.as_slice().try_into().map_err(|_| {
                bad(format!(
                    "the public key is {} bytes, an ed25519 public key is 32",
                    bytes.len()
                ))
            })?;
            if ed25519_dalek::VerifyingKey::from_bytes(&pk).is_err() {
                return Err(bad(format!("{key} is not a valid ed25519 public key")));
            }
            if out.clients.contains(&pk) || out.validators.contains(&pk) {
                return Err(bad(format!("the key {key} is admitted twice")));
            }
            match role {
                "client" => out.clients.push(pk),
                "validator" => out.validators.push(pk),
                other => {
                    return Err(bad(format!(
                        "unknown role {other:?}: a party is a client or a validator"
                    )));
                }
            }
        }
        Ok(out)
    }

    /// The text of this list, one line per party (what [`Self::parse`] reads back).
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        for (role, keys) in [("client", &self.clients), ("validator", &self.validators)] {
            for k in keys {
                s.push_str(&format!("{role} {}\n", hex::encode(k)));
            }
        }
        s
    }

    /// Every admitted party: the clients, then the validators, by index.
    pub fn parties(&self) -> Vec<Party> {
        (0..self.clients.len() as u32)
            .map(Party::Client)
            .chain((0..self.validators.len() as u32).map(Party::Validator))
            .collect()
    }

    /// The public key admitted for `party`, if any.
    pub fn key_of(&self, party: Party) -> Option<&PublicKey> {
        match party {
            Party::Client(k) => self.clients.get(k as usize),
            Party::Validator(v) => self.validators.get(v as usize),
        }
    }

    /// The roster these keys make on the embedded ledger (each address derived from its
    /// public key): what the coordinator knows of its parties.
    pub fn roster(&self) -> Roster {
        let member = |name: String, pk: &PublicKey| Member {
            name,
            address: address_of(pk),
        };
        Roster {
            clients: self
                .clients
                .iter()
                .enumerate()
                .map(|(k, pk)| member(format!("client-{k}"), pk))
                .collect(),
            validators: self
                .validators
                .iter()
                .enumerate()
                .map(|(v, pk)| member(format!("validator-{v}"), pk))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u64) -> String {
        hex::encode(cohort_core::Identity::from_seed(seed, "k").public_key())
    }

    #[test]
    fn parses_roles_in_order_with_comments() {
        let text = format!(
            "# federation\nclient {}\n\nvalidator 0x{}  # v0\nclient {}\n",
            key(1),
            key(2),
            key(3)
        );
        let a = Admit::parse(&text, "admit.txt").unwrap();
        assert_eq!(a.clients.len(), 2);
        assert_eq!(a.validators.len(), 1);
        assert_eq!(hex::encode(a.clients[1]), key(3));
        assert_eq!(Admit::parse(&a.to_text(), "x").unwrap(), a);
        assert_eq!(a.roster().clients[1].name, "client-1");
    }

    #[test]
    fn malformed_lines_are_named() {
        for (text, want) in [
            (
                format!("server {}", key(1)),
                "line 1: unknown role \"server\"",
            ),
            ("client zz".to_owned(), "not hex"),
            ("client abcd".to_owned(), "2 bytes"),
            (format!("client {}\nclient {}", key(1), key(1)), "line 2"),
            (format!("client {} extra", key(1)), "expected `ROLE"),
            ("validator".to_owned(), "expected `ROLE"),
        ] {
            let e = Admit::parse(&text, "admit.txt").unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(e.starts_with("admit.txt: line"), "{e}");
        }
    }
}
