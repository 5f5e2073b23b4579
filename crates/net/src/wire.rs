//! Requests and replies on the wire: the transport port's messages as JSON, with their blobs
//! taken out and named by SHA-256 (they travel apart, in chunks; see [`crate::pb`]).
//!
//! [`strip_request`]/[`strip_reply`] take every blob out of a message, in a fixed order (a
//! training request's global model; a scoring request's global model and then each update
//! that has one; an update reply's update), leave the field empty and return the blobs with
//! their hashes. [`fill_request`]/[`fill_reply`] put blobs back in the same order, each checked
//! against the hash the envelope gives, so a message and its blobs cannot be mixed up.

use cohort_core::{Hash32, sha256};
use cohort_node::transport::{Reply, Request};

use crate::{MAX_MESSAGE, NetError, hash_of, pb};

/// A blob taken out of a message: its hash and bytes.
pub type Blob = (Hash32, Vec<u8>);

fn blob_fields_of_request(r: &mut Request) -> Vec<&mut Vec<u8>> {
    match r {
        Request::Train(t) => vec![&mut t.global],
        Request::Score(s) => {
            let mut v = vec![&mut s.global];
            v.extend(s.updates.iter_mut().filter_map(|u| u.blob.as_mut()));
            v
        }
        Request::Enrol(_) | Request::Reveal(_) => Vec::new(),
    }
}

fn blob_fields_of_reply(r: &mut Reply) -> Vec<&mut Vec<u8>> {
    match r {
        Reply::Update(u) => vec![&mut u.blob],
        Reply::Enrol(_) | Reply::Refusal(_) | Reply::Commit(_) | Reply::Reveal(_) => Vec::new(),
    }
}

fn take(fields: Vec<&mut Vec<u8>>) -> Vec<Blob> {
    fields
        .into_iter()
        .map(|f| {
            let b = std::mem::take(f);
            (sha256(&b), b)
        })
        .collect()
}

/// The envelope of request `id` and the blobs taken out of it.
///
/// # Errors
/// Only if the message cannot be serialised (it always can).
pub fn strip_request(id: u64, mut request: Request) -> Result<(pb::Envelope, Vec<Blob>), NetError> {
    let blobs = take(blob_fields_of_request(&mut request));
    envelope(id, &request, &blobs)
}

/// The envelope of the reply to request `id` and the blobs taken out of it.
///
/// # Errors
/// As [`strip_request`].
pub fn strip_reply(id: u64, mut reply: Reply) -> Result<(pb::Envelope, Vec<Blob>), NetError> {
    let blobs = take(blob_fields_of_reply(&mut reply));
    envelope(id, &reply, &blobs)
}

fn envelope<T: serde::Serialize>(
    id: u64,
    message: &T,
    blobs: &[Blob],
) -> Result<(pb::Envelope, Vec<Blob>), NetError> {
    let message = serde_json::to_vec(message)
        .map_err(|e| NetError::Protocol(format!("cannot encode a message: {e}")))?;
    Ok((
        pb::Envelope {
            id,
            message,
            blobs: blobs.iter().map(|(h, _)| h.0.to_vec()).collect(),
        },
        blobs.to_vec(),
    ))
}

/// The hashes an envelope names, checked.
///
/// # Errors
/// A hash that is not 32 bytes.
pub fn blob_hashes(e: &pb::Envelope) -> Result<Vec<Hash32>, NetError> {
    e.blobs
        .iter()
        .map(|b| hash_of(b, "a blob's hash in the envelope"))
        .collect()
}

fn decode<T: serde::de::DeserializeOwned>(e: &pb::Envelope, what: &str) -> Result<T, NetError> {
    if e.message.len() > MAX_MESSAGE {
        return Err(NetError::Protocol(format!(
            "a {what} of {} bytes (at most {MAX_MESSAGE})",
            e.message.len()
        )));
    }
    serde_json::from_slice(&e.message)
        .map_err(|err| NetError::Protocol(format!("a malformed {what}: {err}")))
}

fn fill(
    fields: Vec<&mut Vec<u8>>,
    hashes: &[Hash32],
    mut blob: impl FnMut(&Hash32) -> Result<Vec<u8>, NetError>,
) -> Result<(), NetError> {
    if fields.len() != hashes.len() {
        return Err(NetError::Protocol(format!(
            "the message has {} blobs, the envelope names {}",
            fields.len(),
            hashes.len()
        )));
    }
    for (field, h) in fields.into_iter().zip(hashes) {
        if !field.is_empty() {
            return Err(NetError::Protocol(
                "a blob inside the message: blobs travel apart".into(),
            ));
        }
        let b = blob(h)?;
        if sha256(&b) != *h {
            return Err(NetError::Protocol(format!(
                "the blob given for {h} does not hash to it"
            )));
        }
        *field = b;
    }
    Ok(())
}

/// The request an envelope carries, its blobs put back by `blob` (called once per hash, in
/// order).
///
/// # Errors
/// A malformed or oversized message, a blob count or hash that does not match, or what
/// `blob` returns.
pub fn fill_request(
    e: &pb::Envelope,
    blob: impl FnMut(&Hash32) -> Result<Vec<u8>, NetError>,
) -> Result<Request, NetError> {
    let mut r: Request = decode(e, "request")?;
    fill(blob_fields_of_request(&mut r), &blob_hashes(e)?, blob)?;
    Ok(r)
}

/// The reply an envelope carries, its blobs put back by `blob`.
///
/// # Errors
/// As [`fill_request`].
pub fn fill_reply(
    e: &pb::Envelope,
    blob: impl FnMut(&Hash32) -> Result<Vec<u8>, NetError>,
) -> Result<Reply, NetError> {
    let mut r: Reply = decode(e, "reply")?;
    fill(blob_fields_of_reply(&mut r), &blob_hashes(e)?, blob)?;
    Ok(r)
}
