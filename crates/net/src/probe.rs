//! Measurements of the transport itself, for `cohort bench net`: how fast a party uploads a
//! large blob to a coordinator over an authenticated session on loopback (plain text, as
//! `--insecure`), against the raw loopback TCP throughput of the same machine measured the
//! same way (one stream, 1 MiB writes), and against how fast one core computes SHA-256 (the
//! coordinator hashes every upload as it arrives, so that rate caps an upload's).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use cohort_core::{Identity, sha256};
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::admit::Admit;
use crate::pb::federation_client::FederationClient;
use crate::pb::{self, coordinator_frame, party_frame};
use crate::server::{Hub, HubConfig};
use crate::{CHUNK, NetError, PROTOCOL_VERSION, session_message};

/// Seconds to move `bytes` bytes over one loopback TCP connection, written 1 MiB at a time and
/// read by another thread.
///
/// # Errors
/// A socket error.
pub fn raw_tcp_seconds(bytes: usize) -> Result<f64, NetError> {
    let io = |e: std::io::Error| NetError::Io {
        path: "loopback TCP".into(),
        source: e,
    };
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io)?;
    let addr = listener.local_addr().map_err(io)?;
    let reader = std::thread::spawn(move || -> std::io::Result<usize> {
        let (mut s, _) = listener.accept()?;
        let mut buf = vec![0u8; CHUNK];
        let mut got = 0;
        loop {
            match s.read(&mut buf)? {
                0 => return Ok(got),
                n => got += n,
            }
        }
    });
    let chunk = vec![0x5au8; CHUNK];
    let t = Instant::now();
    let mut s = TcpStream::connect(addr).map_err(io)?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(CHUNK);
        s.write_all(&chunk[..n]).map_err(io)?;
        left -= n;
    }
    drop(s);
    let got = reader
        .join()
        .map_err(|_| NetError::Protocol("the reader panicked".into()))?
        .map_err(io)?;
    let secs = t.elapsed().as_secs_f64();
    if got != bytes {
        return Err(NetError::Protocol(format!(
            "loopback TCP carried {got} of {bytes} bytes"
        )));
    }
    Ok(secs)
}

/// Seconds to SHA-256 `bytes` bytes on one core, fed 1 MiB at a time as the coordinator hashes
/// an upload's chunks: the most an upload (every blob hashed and checked as it arrives) can
/// carry per second, whatever the transport.
pub fn sha256_seconds(bytes: usize) -> f64 {
    use sha2::{Digest, Sha256};
    let data: Vec<u8> = (0..bytes.min(CHUNK)).map(|i| (i * 31 + 7) as u8).collect();
    let t = Instant::now();
    let mut h = Sha256::new();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(CHUNK);
        h.update(&data[..n]);
        left -= n;
    }
    std::hint::black_box(h.finalize());
    t.elapsed().as_secs_f64()
}

/// Seconds for one party to upload a blob of `bytes` bytes to a coordinator's hub on loopback
/// (plain text), through [`crate::party`]'s chunked upload on an authenticated session, until
/// the coordinator holds it, hash checked. The blob's bytes are made and hashed before the
/// clock starts.
///
/// # Errors
/// What the session or the upload fails with.
pub fn upload_seconds(bytes: usize) -> Result<f64, NetError> {
    let id = Identity::from_seed(0, "probe-client");
    let admit = Admit {
        clients: vec![id.public_key()],
        validators: Vec::new(),
        chain: Default::default(),
    };
    let mut cfg = HubConfig::new("cohort-probe", admit);
    cfg.max_blob = cfg.max_blob.max(bytes as u64);
    let hub = Hub::new(cfg);
    let rt = crate::run::server_runtime(2)?;
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| NetError::Io {
        path: "127.0.0.1:0".into(),
        source: e,
    })?;
    let addr = crate::run::serve(&rt, &hub, listener, None)?;
    let data: Vec<u8> = (0..bytes).map(|i| (i * 31 + 7) as u8).collect();
    let h = sha256(&data);
    let blob = prost::bytes::Bytes::from(data);
    let url = format!("http://{addr}");
    let secs = rt.block_on(async {
        let channel = crate::party::endpoint(&url, None)
            .map_err(|e| NetError::Protocol(format!("{url}: {e}")))?
            .connect()
            .await
            .map_err(|e| NetError::Protocol(format!("connect to {url}: {e}")))?;
        let mut client = FederationClient::new(channel)
            .max_decoding_message_size(crate::MAX_MESSAGE + CHUNK)
            .max_encoding_message_size(crate::MAX_MESSAGE + CHUNK);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let frame = |k| pb::PartyFrame { kind: Some(k) };
        let _ = tx.send(frame(party_frame::Kind::Hello(pb::Hello {
            protocol_version: PROTOCOL_VERSION,
            role: "client".into(),
            index: 0,
            public_key: id.public_key().to_vec(),
            agent: "cohort probe".into(),
        })));
        let mut inbound = client
            .session(UnboundedReceiverStream::new(rx))
            .await
            .map_err(|s| NetError::Protocol(format!("open a session: {}", s.message())))?
            .into_inner();
        let mut next = async || -> Result<coordinator_frame::Kind, NetError> {
            inbound
                .message()
                .await
                .map_err(|s| NetError::Protocol(s.message().to_owned()))?
                .and_then(|f| f.kind)
                .ok_or_else(|| NetError::Protocol("the session ended".into()))
        };
        let coordinator_frame::Kind::Challenge(c) = next().await? else {
            return Err(NetError::Protocol("no challenge".into()));
        };
        let proof = id.sign(&session_message(&c.run, &c.nonce, &id.public_key()));
        let _ = tx.send(frame(party_frame::Kind::Proof(pb::Proof {
            signature: proof.to_vec(),
        })));
        let coordinator_frame::Kind::Welcome(w) = next().await? else {
            return Err(NetError::Protocol("no welcome".into()));
        };
        let token = w
            .session
            .parse()
            .map_err(|_| NetError::Protocol("a session token that is not ASCII".into()))?;
        let t = Instant::now();
        crate::party::upload(&mut client, &token, &h, blob).await?;
        Ok::<_, NetError>(t.elapsed().as_secs_f64())
    })?;
    if !hub.holds_upload(&h) {
        return Err(NetError::Protocol(
            "the coordinator does not hold the blob".into(),
        ));
    }
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(secs)
}
