//! The admission list: which keys may join a federation, in which role and at which index.
//!
//! One party a line, `ROLE PUBLIC_KEY_HEX`, where ROLE is `client` or `validator` and the key
//! is the 32-byte ed25519 public key `cohort keys new` prints (64 hex digits, an optional
//! `0x`). Blank lines and text after `#` are ignored. A party's index is its position among
//! the lines of its role (the first `client` line is client 0). A key may appear once.
//!
//! A run on an EVM chain (`cohort coordinator --chain-rpc`) also needs each party's chain
//! address, a third word on its line (`cohort keys new` prints it as `chain address`): a
//! party's chain key derives from its secret, so the coordinator cannot compute the address
//! from the public key, and the party proves it holds that key by signing its enrolment with
//! it. The embedded ledger ignores the column.
//!
//! ```text
//! # three clients and two validators
//! client    3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29
//! client    0x8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c
//! # with its chain address, for a run on a chain
//! validator 5c2d7e41a0f4b8cbb34fa70d2a9ad9ba2b8ec6cf5f1b40a7aa6b0d3e0b2b3f11 0x2F0a4A1E6cC1B3B8d4B0f8a4d7F1a5cC2e3b9D10
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use cohort_core::{Address, PublicKey, address_of};
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
    /// The chain address given on a key's line, if any (the optional third word).
    pub chain: BTreeMap<PublicKey, Address>,
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
            let (Some(role), Some(key), chain, None) =
                (words.next(), words.next(), words.next(), words.next())
            else {
                return Err(bad(format!(
                    "expected `ROLE PUBLIC_KEY_HEX [CHAIN_ADDRESS]` (ROLE is client or \
                     validator), found {line:?}"
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
            if let Some(a) = chain {
                let address = parse_address(a).map_err(bad)?;
                if out.chain.values().any(|x| *x == address) {
                    return Err(bad(format!("the chain address {a} is admitted twice")));
                }
                out.chain.insert(pk, address);
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
                match self.chain.get(k) {
                    Some(a) => s.push_str(&format!("{role} {} {a}\n", hex::encode(k))),
                    None => s.push_str(&format!("{role} {}\n", hex::encode(k))),
                }
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
    /// The roster on an EVM chain: each party at the chain address its line gives. Every line
    /// must give one; the error names those that do not.
    ///
    /// # Errors
    /// A party without a chain address, named (`client-0`), with what to do.
    pub fn chain_roster(&self) -> Result<Roster, String> {
        let missing: Vec<String> = self
            .parties()
            .into_iter()
            .filter(|p| self.key_of(*p).is_some_and(|k| !self.chain.contains_key(k)))
            .map(|p| p.to_string())
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "a run on a chain needs every party's chain address as a third word on its line \
                 (`cohort keys new` and `cohort keys show` print it as `chain address`); \
                 missing for {}",
                missing.join(", ")
            ));
        }
        let mut roster = self.roster();
        for (k, m) in self.clients.iter().zip(&mut roster.clients) {
            m.address = self.chain[k];
        }
        for (v, m) in self.validators.iter().zip(&mut roster.validators) {
            m.address = self.chain[v];
        }
        Ok(roster)
    }

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

/// A chain address: `0x` and 40 hex digits (any case; a mixed-case one must carry a valid
/// EIP-55 checksum, so that a mistyped digit is caught).
fn parse_address(a: &str) -> Result<Address, String> {
    let digits = a
        .strip_prefix("0x")
        .ok_or_else(|| format!("the chain address {a:?} does not start with 0x"))?;
    if digits.len() != 40 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "the chain address {a:?} is not 40 hex digits after 0x"
        ));
    }
    let mixed = digits.bytes().any(|b| b.is_ascii_lowercase())
        && digits.bytes().any(|b| b.is_ascii_uppercase());
    if mixed {
        Address::parse_checksummed(a, None).map_err(|_| {
            format!("the chain address {a} has a wrong EIP-55 checksum (a mistyped digit?)")
        })
    } else {
        a.parse()
            .map_err(|e| format!("the chain address {a:?}: {e}"))
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
    fn a_chain_address_is_a_third_word_and_a_chain_roster_needs_every_one() {
        let a1 = "0x2f0a4a1e6cc1b3b8d4b0f8a4d7f1a5cc2e3b9d10";
        let a2 = "0xF39FD6E51AAD88F6F4CE6AB8827279CFFFB92266";
        let checksummed = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266";
        let text = format!(
            "client {} {a1}\nvalidator {} {checksummed}\n",
            key(1),
            key(2)
        );
        let a = Admit::parse(&text, "admit.txt").unwrap();
        let r = a.chain_roster().unwrap();
        assert_eq!(r.clients[0].address, a1.parse::<Address>().unwrap());
        assert_eq!(r.validators[0].address, a2.parse::<Address>().unwrap());
        // The embedded roster is the keys' own addresses, whatever the column says.
        assert_eq!(a.roster().clients[0].address, address_of(&a.clients[0]));
        assert_eq!(Admit::parse(&a.to_text(), "x").unwrap(), a);

        let partial = format!(
            "client {} {a1}\nclient {}\nvalidator {}\n",
            key(1),
            key(2),
            key(3)
        );
        let err = Admit::parse(&partial, "x")
            .unwrap()
            .chain_roster()
            .unwrap_err();
        assert!(err.contains("missing for client-1, validator-0"), "{err}");

        for (line, want) in [
            (
                format!("client {} 2f0a4a1e6cc1b3b8d4b0f8a4d7f1a5cc2e3b9d10", key(1)),
                "does not start with 0x",
            ),
            (format!("client {} 0x2f0a", key(1)), "not 40 hex digits"),
            (
                format!(
                    "client {} 0xzz0a4a1e6cc1b3b8d4b0f8a4d7f1a5cc2e3b9d10",
                    key(1)
                ),
                "not 40 hex digits",
            ),
            (
                format!(
                    "client {} 0xF39fd6e51aad88F6F4ce6aB8827279cffFb92266",
                    key(1)
                ),
                "EIP-55 checksum",
            ),
            (
                format!("client {} {a1} extra", key(1)),
                "expected `ROLE PUBLIC_KEY_HEX [CHAIN_ADDRESS]`",
            ),
            (
                format!("client {} {a1}\nclient {} {a1}", key(1), key(2)),
                "line 2: the chain address",
            ),
        ] {
            let err = Admit::parse(&line, "admit.txt").unwrap_err().to_string();
            assert!(err.contains(want), "{line}: {err}");
        }
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
            (
                format!("client {} extra", key(1)),
                "the chain address \"extra\" does not start with 0x",
            ),
            ("validator".to_owned(), "expected `ROLE"),
        ] {
            let e = Admit::parse(&text, "admit.txt").unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(e.starts_with("admit.txt: line"), "{e}");
        }
    }
}
