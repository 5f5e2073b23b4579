//! Party-side signing: a party signs its own ledger transaction, a relay carries it.
//!
//! A party (client, validator, coordinator) holds its own [`Identity`] and no ledger handle.
//! To act on the ledger it asks the relay (whoever holds the [`LedgerBackend`], normally the
//! coordinator) for a [`TxContext`] — the few facts only the ledger knows: which log or chain,
//! the party's next nonce, the time (embedded) or the fees (chain) — chooses the call itself
//! (target and calldata), and signs the whole with [`SignedCall::sign`]. The relay passes the
//! [`SignedCall`] to [`LedgerBackend::relay`]. Everything the party chose and everything the
//! context holds is under the party's signature, so the relay can deliver the call or drop it,
//! never change or invent one:
//!
//! - **embedded**: the party's ed25519 key signs `"cohort/tx/v1" || origin || author || tx`
//!   (see [`SignedTx`]), the transaction including its target, data, nonce and time. The ledger
//!   checks the origin, the signature, the author's nonce and the time before it executes
//!   anything, and records nothing for a refused call.
//! - **chain**: the party's secp256k1 chain key ([`crate::rpc::evm_signer`], derived from its
//!   ed25519 secret) signs an EIP-1559 transaction (chain id, nonce, gas limit, fees, target,
//!   data); the relay sends the raw bytes. The relay checks that the signature recovers to the
//!   claimed sender before sending; the node checks it again with the nonce and the balance.
//!
//! What the relay does choose, the party sees before signing and [`TxContext::check`]
//! bounds: the time may only be the ledger's clock (the ledger refuses a time before its
//! last entry or after its clock), and on a chain the party pays at most
//! [`TxContext::max_cost`].
//!
//! ```
//! use alloy_primitives::Address;
//! use cohort_core::Identity;
//! use cohort_ledger::{SignedCall, TxContext};
//!
//! let alice = Identity::from_seed(1, "alice");
//! // Handed out by the relay (`LedgerBackend::context_for(alice's address)`):
//! let ctx = TxContext::Embedded { origin: "cohort.local/demo".into(), nonce: 0, time: 60 };
//! let signed = SignedCall::sign(&alice, Some(Address::repeat_byte(7)), vec![1, 2, 3].into(), &ctx)
//!     .expect("a valid context");
//! // What a transport carries; any changed byte is refused by the ledger.
//! let bytes = signed.encode();
//! assert_eq!(SignedCall::decode(&bytes).expect("decodes"), signed);
//! ```

use alloy_primitives::{Address, Bytes, U256};
use alloy_sol_types::SolCall;
use cohort_core::Identity;
use serde::{Deserialize, Serialize};

use crate::LedgerError;
use crate::entry::{DecodeError, Reader, SignedTx, Tx, Writer, read_tx, write_tx};
use crate::evm::TX_GAS_CAP;

/// Tag byte of an embedded [`SignedCall`]'s encoding.
const TAG_EMBEDDED: u8 = 1;
/// Tag byte of a chain [`SignedCall`]'s encoding.
const TAG_CHAIN: u8 = 2;
/// The least gas any chain transaction needs.
pub(crate) const MIN_CHAIN_GAS: u64 = 21_000;

/// What a relay hands a party so that it can sign a transaction for this ledger: what only
/// the ledger knows. It holds no part of the call; the party chooses that.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "ledger", rename_all = "snake_case", deny_unknown_fields)]
pub enum TxContext {
    /// The embedded ledger.
    Embedded {
        /// The log's origin: the signature binds the call to this one log.
        origin: String,
        /// The party's next account nonce.
        nonce: u64,
        /// The time the entry will carry (`block.timestamp`): the ledger's clock.
        time: u64,
    },
    /// An EVM chain.
    Chain {
        /// The chain id (EIP-155): the signature binds the call to this one chain.
        chain_id: u64,
        /// The party's next account nonce on the chain.
        nonce: u64,
        /// Gas limit, at most the protocol's cap (2^24).
        gas_limit: u64,
        /// EIP-1559 fee cap per gas, wei (a decimal string in JSON: serde's tagged enums
        /// cannot carry a u128 as a number).
        #[serde(with = "u128_decimal")]
        max_fee_per_gas: u128,
        /// EIP-1559 tip cap per gas, wei (a decimal string in JSON).
        #[serde(with = "u128_decimal")]
        max_priority_fee_per_gas: u128,
    },
}

impl TxContext {
    /// The nonce the party will sign.
    pub fn nonce(&self) -> u64 {
        match self {
            Self::Embedded { nonce, .. } | Self::Chain { nonce, .. } => *nonce,
        }
    }

    /// The same context `k` nonces further on: for a party that signs several calls before
    /// the relay records them (one batch).
    pub fn ahead(&self, k: u64) -> Result<Self, LedgerError> {
        let mut c = self.clone();
        match &mut c {
            Self::Embedded { nonce, .. } | Self::Chain { nonce, .. } => {
                *nonce = nonce.checked_add(k).ok_or_else(|| LedgerError::Invalid {
                    what: "transaction context",
                    reason: format!("nonce {nonce} + {k} overflows"),
                })?;
            }
        }
        Ok(c)
    }

    /// The address `id` acts from on this ledger (`msg.sender` of the calls it signs under
    /// this context): its ed25519 identity's address on the embedded ledger, its chain key's
    /// address on a chain (which needs the `evm-rpc` feature).
    pub fn address_of(&self, id: &Identity) -> Result<Address, LedgerError> {
        match self {
            Self::Embedded { .. } => Ok(id.address()),
            #[cfg(feature = "evm-rpc")]
            Self::Chain { .. } => Ok(crate::rpc::evm_signer(id).address()),
            #[cfg(not(feature = "evm-rpc"))]
            Self::Chain { .. } => Err(no_chain_support()),
        }
    }

    /// The most a chain transaction signed under this context can cost its sender, in wei
    /// (`gas_limit × max_fee_per_gas`); zero on the embedded ledger, which has no fees.
    pub fn max_cost(&self) -> U256 {
        match self {
            Self::Embedded { .. } => U256::ZERO,
            Self::Chain {
                gas_limit,
                max_fee_per_gas,
                ..
            } => U256::from(*gas_limit) * U256::from(*max_fee_per_gas),
        }
    }

    /// Checks what a party checks before signing under a context it did not make: a valid
    /// origin; on a chain a non-zero chain id, a gas limit within `21000..=2^24` and a tip no
    /// higher than the fee cap. The error names the field.
    pub fn check(&self) -> Result<(), LedgerError> {
        let bad = |reason: String| LedgerError::Invalid {
            what: "transaction context",
            reason,
        };
        match self {
            Self::Embedded { origin, .. } => crate::embedded::check_origin(origin),
            Self::Chain {
                chain_id,
                gas_limit,
                max_fee_per_gas,
                max_priority_fee_per_gas,
                ..
            } => {
                if *chain_id == 0 {
                    return Err(bad("chain_id 0 is not a chain".into()));
                }
                if !(MIN_CHAIN_GAS..=TX_GAS_CAP).contains(gas_limit) {
                    return Err(bad(format!(
                        "gas_limit {gas_limit} is outside {MIN_CHAIN_GAS}..={TX_GAS_CAP}"
                    )));
                }
                if max_priority_fee_per_gas > max_fee_per_gas {
                    return Err(bad(format!(
                        "max_priority_fee_per_gas {max_priority_fee_per_gas} is above \
                         max_fee_per_gas {max_fee_per_gas}"
                    )));
                }
                Ok(())
            }
        }
    }
}

/// A transaction signed by its author, ready for any relay to carry to the ledger.
///
/// Serialises to canonical bytes ([`Self::encode`]); through serde as a `0x` hex string in
/// human-readable formats (JSON) and as bytes otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignedCall {
    /// For the embedded ledger whose origin is `origin`.
    Embedded {
        /// The log it was signed for (also under the signature).
        origin: String,
        /// The ed25519-signed transaction.
        tx: SignedTx,
    },
    /// For an EVM chain.
    Chain {
        /// The sender the party claims: its chain key's address. The relay refuses the call
        /// if the signature does not recover to it.
        from: Address,
        /// The signed EIP-1559 transaction, EIP-2718 encoded (what `eth_sendRawTransaction`
        /// takes).
        raw: Bytes,
    },
}

impl SignedCall {
    /// Signs the call `to` (`None`: deploy `data`) with `data` as `id`, under `ctx` (checked
    /// first with [`TxContext::check`]). On a chain this needs the `evm-rpc` feature.
    pub fn sign(
        id: &Identity,
        to: Option<Address>,
        data: Bytes,
        ctx: &TxContext,
    ) -> Result<Self, LedgerError> {
        ctx.check()?;
        match ctx {
            TxContext::Embedded {
                origin,
                nonce,
                time,
            } => {
                let tx = Tx {
                    to,
                    value: U256::ZERO,
                    data,
                    gas_limit: TX_GAS_CAP,
                    nonce: *nonce,
                    time: *time,
                };
                Ok(Self::Embedded {
                    origin: origin.clone(),
                    tx: SignedTx::sign(origin, id, tx),
                })
            }
            TxContext::Chain { .. } => sign_chain(id, to, data, ctx),
        }
    }

    /// Signs a call of the contract at `contract` as `id` (see [`Self::sign`]).
    pub fn sign_sol<C: SolCall>(
        id: &Identity,
        contract: Address,
        call: &C,
        ctx: &TxContext,
    ) -> Result<Self, LedgerError> {
        Self::sign(id, Some(contract), Bytes::from(call.abi_encode()), ctx)
    }

    /// The claimed author's address (`msg.sender` if the call is accepted).
    pub fn author(&self) -> Address {
        match self {
            Self::Embedded { tx, .. } => tx.sender(),
            Self::Chain { from, .. } => *from,
        }
    }

    /// The target (`None`: a deployment) and calldata the author signed. For a chain call this
    /// decodes the raw transaction (feature `evm-rpc`).
    pub fn target_and_input(&self) -> Result<(Option<Address>, Bytes), LedgerError> {
        match self {
            Self::Embedded { tx, .. } => Ok((tx.tx.to, tx.tx.data.clone())),
            Self::Chain { raw, .. } => chain_target_and_input(raw),
        }
    }

    /// Canonical bytes: `tag(1) || fields`, big-endian integers, byte strings prefixed by a
    /// `u32` length. Embedded (tag 1): `origin || author(32) || signature(64) || tx` in the
    /// entry encoding of [`crate::entry`]; chain (tag 2): `from(20) || raw`.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Embedded { origin, tx } => {
                let mut w = Writer(Vec::with_capacity(160 + origin.len() + tx.tx.data.len()));
                w.u8(TAG_EMBEDDED);
                w.bytes(origin.as_bytes());
                w.raw(&tx.author);
                w.raw(&tx.signature);
                write_tx(&mut w, &tx.tx);
                w.0
            }
            Self::Chain { from, raw } => {
                let mut w = Writer(Vec::with_capacity(25 + raw.len()));
                w.u8(TAG_CHAIN);
                w.raw(from.as_slice());
                w.bytes(raw);
                w.0
            }
        }
    }

    /// Parses [`Self::encode`]'s bytes; the error names the field that is wrong. Parsing
    /// checks the form only: signatures, nonces and times are the ledger's checks.
    pub fn decode(buf: &[u8]) -> Result<Self, LedgerError> {
        Self::decode_inner(buf).map_err(|e| LedgerError::Invalid {
            what: "signed call",
            reason: e.to_string(),
        })
    }

    fn decode_inner(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader { buf, pos: 0 };
        let call = match r.u8("tag")? {
            TAG_EMBEDDED => {
                let at = r.pos;
                let origin = String::from_utf8(r.bytes("origin")?.to_vec())
                    .map_err(|_| DecodeError::new("origin", at, "not UTF-8".into()))?;
                let author = r.array("author")?;
                let signature = r.array("signature")?;
                let tx = read_tx(&mut r)?;
                Self::Embedded {
                    origin,
                    tx: SignedTx {
                        author,
                        tx,
                        signature,
                    },
                }
            }
            TAG_CHAIN => {
                let from = Address::from(r.array::<20>("from")?);
                let raw = Bytes::from(r.bytes("raw")?.to_vec());
                Self::Chain { from, raw }
            }
            t => {
                return Err(DecodeError::new(
                    "tag",
                    0,
                    format!("unknown {t} (1: embedded, 2: chain)"),
                ));
            }
        };
        if r.pos != buf.len() {
            return Err(DecodeError::new(
                "end",
                r.pos,
                format!("{} trailing bytes", buf.len() - r.pos),
            ));
        }
        Ok(call)
    }
}

impl Serialize for SignedCall {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let bytes = self.encode();
        if s.is_human_readable() {
            s.serialize_str(&format!("0x{}", hex::encode(bytes)))
        } else {
            s.serialize_bytes(&bytes)
        }
    }
}

impl<'de> Deserialize<'de> for SignedCall {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = SignedCall;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a signed call: 0x-prefixed hex or bytes")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SignedCall, E> {
                let h = v
                    .strip_prefix("0x")
                    .ok_or_else(|| E::custom("signed call: hex must start with 0x"))?;
                let b = hex::decode(h).map_err(|e| E::custom(format!("signed call: {e}")))?;
                self.visit_bytes(&b)
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<SignedCall, E> {
                SignedCall::decode(v).map_err(E::custom)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<SignedCall, A::Error> {
                let mut b = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
                while let Some(x) = seq.next_element::<u8>()? {
                    b.push(x);
                }
                self.visit_bytes(&b)
            }
        }
        if d.is_human_readable() {
            d.deserialize_str(V)
        } else {
            d.deserialize_bytes(V)
        }
    }
}

#[cfg(feature = "evm-rpc")]
fn sign_chain(
    id: &Identity,
    to: Option<Address>,
    data: Bytes,
    ctx: &TxContext,
) -> Result<SignedCall, LedgerError> {
    use alloy::consensus::{SignableTransaction, TxEip1559, TxEnvelope};
    use alloy::eips::eip2718::Encodable2718;
    use alloy::network::TxSignerSync;
    use alloy::primitives::TxKind;

    let TxContext::Chain {
        chain_id,
        nonce,
        gas_limit,
        max_fee_per_gas,
        max_priority_fee_per_gas,
    } = *ctx
    else {
        return Err(LedgerError::Invalid {
            what: "transaction context",
            reason: "not a chain context".into(),
        });
    };
    let signer = crate::rpc::evm_signer(id);
    let mut tx = TxEip1559 {
        chain_id,
        nonce,
        gas_limit,
        max_fee_per_gas,
        max_priority_fee_per_gas,
        to: to.map_or(TxKind::Create, TxKind::Call),
        value: U256::ZERO,
        access_list: Default::default(),
        input: data,
    };
    let sig = signer
        .sign_transaction_sync(&mut tx)
        .map_err(|e| LedgerError::Rpc(format!("signing as {}: {e}", signer.address())))?;
    let raw = TxEnvelope::from(tx.into_signed(sig)).encoded_2718();
    Ok(SignedCall::Chain {
        from: signer.address(),
        raw: raw.into(),
    })
}

#[cfg(not(feature = "evm-rpc"))]
fn sign_chain(
    _id: &Identity,
    _to: Option<Address>,
    _data: Bytes,
    _ctx: &TxContext,
) -> Result<SignedCall, LedgerError> {
    Err(no_chain_support())
}

#[cfg(not(feature = "evm-rpc"))]
fn no_chain_support() -> LedgerError {
    LedgerError::Invalid {
        what: "signed call",
        reason: "chain transactions need cohort-ledger's `evm-rpc` feature".into(),
    }
}

#[cfg(not(feature = "evm-rpc"))]
fn chain_target_and_input(_raw: &[u8]) -> Result<(Option<Address>, Bytes), LedgerError> {
    Err(no_chain_support())
}

#[cfg(feature = "evm-rpc")]
fn chain_target_and_input(raw: &[u8]) -> Result<(Option<Address>, Bytes), LedgerError> {
    use alloy::consensus::Transaction;
    let env = decode_chain(raw)?;
    Ok((env.kind().to().copied(), env.input().clone()))
}

/// Parses a raw EIP-2718 transaction; the error says what is wrong.
#[cfg(feature = "evm-rpc")]
pub(crate) fn decode_chain(raw: &[u8]) -> Result<alloy::consensus::TxEnvelope, LedgerError> {
    use alloy::eips::eip2718::Decodable2718;
    let mut buf = raw;
    let env =
        alloy::consensus::TxEnvelope::decode_2718(&mut buf).map_err(|e| LedgerError::Invalid {
            what: "signed chain transaction",
            reason: e.to_string(),
        })?;
    if !buf.is_empty() {
        return Err(LedgerError::Invalid {
            what: "signed chain transaction",
            reason: format!("{} trailing bytes", buf.len()),
        });
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> TxContext {
        TxContext::Embedded {
            origin: "cohort.local/test".into(),
            nonce: 3,
            time: 100,
        }
    }

    /// A chain's context goes over the network as JSON (inside a party's request): its fees,
    /// up to u128::MAX, survive the trip, and a fee that is not a number is refused by name.
    #[test]
    fn a_chain_context_round_trips_through_json() {
        for fee in [0, 1_000_000_007, u128::MAX] {
            let c = TxContext::Chain {
                chain_id: 31337,
                nonce: 7,
                gas_limit: 1 << 24,
                max_fee_per_gas: fee,
                max_priority_fee_per_gas: fee / 3,
            };
            let json = serde_json::to_string(&c).expect("serializes");
            let back: TxContext = serde_json::from_str(&json).expect("deserializes");
            assert_eq!(back, c, "{json}");
        }
        let bad = r#"{"ledger":"chain","chain_id":1,"nonce":0,"gas_limit":1,"max_fee_per_gas":"-1","max_priority_fee_per_gas":"0"}"#;
        let err = serde_json::from_str::<TxContext>(bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"-1\" is not a whole number of wei"), "{err}");
    }

    #[test]
    fn round_trips_through_bytes_and_json() {
        let id = Identity::from_seed(1, "alice");
        let s = SignedCall::sign(
            &id,
            Some(Address::repeat_byte(1)),
            vec![9; 40].into(),
            &ctx(),
        )
        .expect("signs");
        assert_eq!(SignedCall::decode(&s.encode()).expect("decodes"), s);
        let json = serde_json::to_string(&s).expect("serialises");
        assert!(json.starts_with("\"0x01"), "{json}");
        assert_eq!(
            serde_json::from_str::<SignedCall>(&json).expect("parses"),
            s
        );
        assert_eq!(s.author(), id.address());
    }

    #[test]
    fn malformed_bytes_name_the_field() {
        let err = SignedCall::decode(&[7]).unwrap_err().to_string();
        assert!(err.contains("`tag`"), "{err}");
        let id = Identity::from_seed(1, "alice");
        let mut b = SignedCall::sign(&id, None, vec![1].into(), &ctx())
            .expect("signs")
            .encode();
        b.push(0);
        let err = SignedCall::decode(&b).unwrap_err().to_string();
        assert!(err.contains("trailing"), "{err}");
        assert!(SignedCall::decode(&[]).is_err());
    }

    #[test]
    fn context_checks_name_the_field() {
        let chain = |gas_limit, fee, tip| TxContext::Chain {
            chain_id: 1,
            nonce: 0,
            gas_limit,
            max_fee_per_gas: fee,
            max_priority_fee_per_gas: tip,
        };
        assert!(chain(100_000, 10, 1).check().is_ok());
        for (c, field) in [
            (chain(0, 10, 1), "gas_limit"),
            (chain(TX_GAS_CAP + 1, 10, 1), "gas_limit"),
            (chain(100_000, 1, 10), "max_priority_fee_per_gas"),
        ] {
            let e = c.check().unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        }
        let bad_origin = TxContext::Embedded {
            origin: "has space".into(),
            nonce: 0,
            time: 0,
        };
        assert!(bad_origin.check().is_err());
        assert_eq!(chain(100_000, 10, 1).max_cost(), U256::from(1_000_000u64));
        assert!(ctx().ahead(u64::MAX).is_err());
        assert_eq!(ctx().ahead(2).expect("fits").nonce(), 5);
    }
}

/// A `u128` as a decimal string: serde buffers an internally tagged enum's fields in a form that
/// has no 128-bit integers, so [`TxContext::Chain`]'s fees would not survive a round trip as
/// numbers.
mod u128_decimal {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(x: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(x)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(|_| {
            serde::de::Error::custom(format!("{s:?} is not a whole number of wei below 2^128"))
        })
    }
}
