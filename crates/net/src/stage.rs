//! Stage servers (docs/pipeline.md): the gRPC protocol of `proto/cohort/stage/v1/stage.proto`
//! between a client that holds a model's embeddings, head and adapter and the servers that
//! each hold a contiguous range of its transformer layers.
//!
//! This module is the network side only. What a server computes is behind [`StageCompute`]
//! (implemented with cohort-model's stage passes by the `cohort serve-layers` command), so
//! that this crate does not depend on the model library; [`StageClient`] is the client's
//! blocking handle on one server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};

use cohort_core::{Identity, PublicKey};
use sha2::{Digest as _, Sha256};

use crate::NetError;
use crate::stage_pb as pb;
use crate::stage_pb::stage_client::StageClient as GrpcClient;
use crate::stage_pb::stage_server::{Stage, StageServer};

/// The stage protocol's version.
pub const STAGE_PROTOCOL_VERSION: u32 = 2;

/// The largest message either side takes: a stream of 64 MiB (for example 16 sequences of
/// 1,024 tokens of width 1,024 in f32).
pub const MAX_STAGE_MESSAGE: usize = 64 << 20;

/// What a server holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageInfo {
    /// SHA-256 of the model's files as the server read them.
    pub model_sha256: [u8; 32],
    /// Its layers, `first..end`.
    pub layers: std::ops::Range<usize>,
    /// The stream's width.
    pub width: usize,
    /// The model's number of layers.
    pub total_layers: usize,
    /// The server's ed25519 public key, which signs its answers (`None`: it has no key).
    pub public_key: Option<PublicKey>,
    /// The rank of the SVD factors its layers' weights are replaced by (0: none).
    pub svd_rank: usize,
}

/// A tensor by name, its values.
pub type Named = Vec<(String, Vec<f32>)>;

/// One forward call.
#[derive(Debug, Clone)]
pub struct ForwardCall {
    /// The client's session.
    pub session: u64,
    /// The step within it.
    pub step: u64,
    /// Sequences.
    pub batch: usize,
    /// Tokens per sequence.
    pub tokens: usize,
    /// The stream entering the first layer.
    pub stream: Vec<f32>,
    /// The adapter weights of the server's layers.
    pub adapter: Named,
    /// The adapter's dropout key, when training with dropout.
    pub dropout_key: Option<u64>,
    /// The adapter's configuration (PEFT's adapter_config.json, as JSON).
    pub adapter_config: Option<String>,
    /// Empty for a call to serve. Otherwise a verifier's recomputation of these rows
    /// (sequences) of a call of `batch` rows, whose inputs `stream` then holds: nothing is
    /// kept for a backward, and only the rows' commitments are answered.
    pub rows: Vec<usize>,
    /// Inference (evaluation, generation): nothing is kept for a backward; without an adapter
    /// configuration and weights the layers run without an adapter.
    pub inference: bool,
    /// How its streams and its backward's travel ([`COMPRESSION_NONE`],
    /// [`COMPRESSION_INT8`]); with int8, `stream` should already be rounded
    /// ([`int8_round`]), as the server will see it.
    pub compression: u32,
}

/// A SHA-256 digest.
pub type Digest = [u8; 32];

/// Streams as little-endian f32 ([`ForwardCall::compression`]).
pub const COMPRESSION_NONE: u32 = 0;
/// Streams as int8 rows ([`int8_encode`]): about a quarter of the bytes.
pub const COMPRESSION_INT8: u32 = 1;

/// The exponent of the power-of-two scale of a row whose largest magnitude is `max`: the
/// smallest `e` with `max / 2^e <= 127`, within what an `i8` holds (and at least -126, so that
/// `2^e` is a normal f32).
fn int8_exponent(max: f32) -> i8 {
    if max <= 0.0 || !max.is_finite() {
        return 0;
    }
    let e = (f64::from(max) / 127.0).log2().ceil();
    e.clamp(-126.0, 127.0) as i8
}

/// `values`, rows of `width`, as int8: for each row, the exponent `e` of its scale `2^e` (one
/// signed byte) and each value divided by the scale, rounded, within [-127, 127] (`width`
/// signed bytes). A power-of-two scale makes the encoding exact on what it decodes to, so
/// that a stream rounded once ([`int8_round`]) travels again unchanged (a replayed or
/// recomputed call gives the same bits).
pub fn int8_encode(values: &[f32], width: usize) -> Vec<u8> {
    let width = width.max(1);
    let mut out = Vec::with_capacity(values.len() + values.len() / width + 1);
    for row in values.chunks(width) {
        let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
        let e = int8_exponent(max);
        let scale = 2f32.powi(i32::from(e));
        out.push(e as u8);
        out.extend(
            row.iter()
                .map(|v| ((v / scale).round().clamp(-127.0, 127.0) as i8) as u8),
        );
    }
    out
}

/// The values [`int8_encode`] encoded, rows of `width`.
///
/// # Errors
/// The bytes are not a whole number of rows of `width + 1`.
pub fn int8_decode(bytes: &[u8], width: usize) -> Result<Vec<f32>, String> {
    if width == 0 || !bytes.len().is_multiple_of(width + 1) {
        return Err(format!(
            "{} bytes is not a whole number of int8 rows of {width} values",
            bytes.len()
        ));
    }
    let mut out = Vec::with_capacity(bytes.len() / (width + 1) * width);
    for row in bytes.chunks(width + 1) {
        let e = row[0] as i8;
        if !(-126..=127).contains(&e) {
            return Err(format!("a row's scale exponent {e} is out of range"));
        }
        let scale = 2f32.powi(i32::from(e));
        out.extend(row[1..].iter().map(|&q| f32::from(q as i8) * scale));
    }
    Ok(out)
}

/// `values` as they arrive once sent int8: decoded from their encoding.
pub fn int8_round(values: &mut [f32], width: usize) {
    let width = width.max(1);
    for row in values.chunks_mut(width) {
        let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = 2f32.powi(i32::from(int8_exponent(max)));
        for v in row.iter_mut() {
            // Through the byte, as decoding gives it (-0.0 becomes 0.0).
            let q = (*v / scale).round().clamp(-127.0, 127.0) as i8;
            *v = f32::from(q) * scale;
        }
    }
}

/// A stream's bytes on the wire under `compression` (rows of `width`).
pub fn encode_stream(values: &[f32], width: usize, compression: u32) -> Vec<u8> {
    match compression {
        COMPRESSION_INT8 => int8_encode(values, width),
        _ => bytes(values),
    }
}

/// A stream from the wire under `compression`.
fn decode_stream(b: &[u8], width: usize, compression: u32, what: &str) -> Result<Vec<f32>, Status> {
    match compression {
        COMPRESSION_NONE => floats(b, what),
        COMPRESSION_INT8 => {
            int8_decode(b, width).map_err(|e| Status::invalid_argument(format!("{what}: {e}")))
        }
        c => Err(Status::invalid_argument(format!(
            "compression {c}: this server knows 0 (f32) and 1 (int8)"
        ))),
    }
}

/// A server's answer to a forward call: the stream (empty from a verifier) and its commitment,
/// the SHA-256 of each row of the output, signed when the server has a key.
#[derive(Debug, Clone)]
pub struct Forwarded {
    /// The stream leaving the server's last layer.
    pub stream: Vec<f32>,
    /// SHA-256 of each row (sequence) of it.
    pub row_sha256: Vec<Digest>,
    /// The digest of the call answered ([`call_digest`]).
    pub call: Digest,
    /// The server's signature over [`commitment_message`], checked against its key.
    pub signature: Option<[u8; 64]>,
}

/// The digest of what a forward call asks of a server holding `info`'s layers: the model,
/// the layers, the session and step, the batch shape, the stream in, the adapter (names and
/// values in the order sent), its configuration, the dropout key and the rows (for a
/// verifier's call).
pub fn call_digest(info: &StageInfo, call: &ForwardCall) -> Digest {
    let mut h = Sha256::new();
    h.update(b"cohort-stage-call-v1");
    h.update(info.model_sha256);
    for n in [
        info.layers.start,
        info.layers.end,
        info.svd_rank,
        call.batch,
        call.tokens,
        call.adapter.len(),
        call.rows.len(),
    ] {
        h.update((n as u64).to_be_bytes());
    }
    h.update(call.session.to_be_bytes());
    h.update(call.step.to_be_bytes());
    let mut stream = Sha256::new();
    for x in &call.stream {
        stream.update(x.to_le_bytes());
    }
    h.update(stream.finalize());
    for (name, values) in &call.adapter {
        h.update((name.len() as u64).to_be_bytes());
        h.update(name.as_bytes());
        h.update((values.len() as u64).to_be_bytes());
        for x in values {
            h.update(x.to_le_bytes());
        }
    }
    match call.dropout_key {
        None => h.update([0u8]),
        Some(k) => {
            h.update([1u8]);
            h.update(k.to_be_bytes());
        }
    }
    let config = call.adapter_config.as_deref().unwrap_or_default();
    h.update((config.len() as u64).to_be_bytes());
    h.update(config.as_bytes());
    for &r in &call.rows {
        h.update((r as u64).to_be_bytes());
    }
    h.update([u8::from(call.inference)]);
    h.update(call.compression.to_be_bytes());
    h.finalize().into()
}

/// A server's answer to a backward call, signed when the server has a key.
#[derive(Debug, Clone)]
pub struct Backwarded {
    /// The gradient of the stream the forward was given.
    pub dx: Vec<f32>,
    /// The adapter weights' gradients.
    pub grads: Named,
    /// What the server signs ([`backward_digest`]).
    pub digest: Digest,
    /// Its signature over `digest`, checked against its key.
    pub signature: Option<[u8; 64]>,
}

/// What a server signs when it answers a backward: the session and step (which its signed
/// forward commitment binds to the call's inputs), the digests of the gradient in, of the
/// gradient out and of the adapter gradients (names and values, in order).
pub fn backward_digest(session: u64, step: u64, grad: &[f32], dx: &[f32], grads: &Named) -> Digest {
    let floats = |v: &[f32]| {
        let mut h = Sha256::new();
        for x in v {
            h.update(x.to_le_bytes());
        }
        h.finalize()
    };
    let mut h = Sha256::new();
    h.update(b"cohort-stage-backward-v1");
    h.update(session.to_be_bytes());
    h.update(step.to_be_bytes());
    h.update(floats(grad));
    h.update(floats(dx));
    h.update((grads.len() as u64).to_be_bytes());
    for (name, values) in grads {
        h.update((name.len() as u64).to_be_bytes());
        h.update(name.as_bytes());
        h.update(floats(values));
    }
    h.finalize().into()
}

/// What a server signs when it answers: the call's digest and its commitment to the output
/// (the rows' digests). A verifier signs the same for the rows it recomputed, so that a
/// server's signed commitment and verifiers' signed recomputations of the same call can be
/// set side by side (a fraud claim).
pub fn commitment_message(call: &Digest, row_sha256: &[Digest]) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(b"cohort-stage-commitment-v1");
    h.update(call);
    h.update((row_sha256.len() as u64).to_be_bytes());
    for r in row_sha256 {
        h.update(r);
    }
    h.finalize().to_vec()
}

/// The commitment to `stream` cut into `rows` rows of equal length: the SHA-256 of each row's
/// little-endian f32 values.
pub fn row_hashes(stream: &[f32], rows: usize) -> Vec<Digest> {
    use sha2::{Digest as _, Sha256};
    if rows == 0 {
        return Vec::new();
    }
    stream
        .chunks(stream.len().div_ceil(rows).max(1))
        .map(|r| {
            let mut h = Sha256::new();
            for x in r {
                h.update(x.to_le_bytes());
            }
            h.finalize().into()
        })
        .collect()
}

/// What a stage server computes: its layers forward and backward. Errors are messages for
/// the client (a refusal of its input, or the server's failure).
pub trait StageCompute: Send + Sync + 'static {
    /// What it holds.
    fn info(&self) -> StageInfo;
    /// Its layers forward on `call.stream`: the stream leaving its last layer. Keeps what the
    /// backward of `(session, step)` needs, unless the call is a verifier's (`call.rows`
    /// not empty), which gets the output of those rows only.
    fn forward(&self, call: ForwardCall) -> Result<Vec<f32>, String>;
    /// Its layers backward for the forward of `(session, step)`: the gradient of the stream
    /// that forward was given, and the adapter weights' gradients.
    fn backward(
        &self,
        session: u64,
        step: u64,
        grad: Vec<f32>,
    ) -> Result<(Vec<f32>, Named), String>;
}

fn floats(bytes: &[u8], what: &str) -> Result<Vec<f32>, Status> {
    if !bytes.len().is_multiple_of(4) {
        return Err(Status::invalid_argument(format!(
            "{what}: {} bytes is not a whole number of f32 values",
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

fn bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn tensors(t: Vec<pb::Tensor>, what: &str) -> Result<Named, Status> {
    t.into_iter()
        .map(|t| {
            let v = floats(&t.data, &format!("{what} {}", t.name))?;
            Ok((t.name, v))
        })
        .collect()
}

fn pb_tensors(t: Named) -> Vec<pb::Tensor> {
    t.into_iter()
        .map(|(name, v)| pb::Tensor {
            name,
            data: bytes(&v),
        })
        .collect()
}

struct Service(Arc<dyn StageCompute>, Option<Identity>);

#[tonic::async_trait]
impl Stage for Service {
    async fn info(&self, _: Request<pb::InfoRequest>) -> Result<Response<pb::InfoReply>, Status> {
        let i = self.0.info();
        Ok(Response::new(pb::InfoReply {
            protocol_version: STAGE_PROTOCOL_VERSION,
            model_sha256: i.model_sha256.to_vec(),
            first_layer: i.layers.start as u32,
            end_layer: i.layers.end as u32,
            width: i.width as u32,
            layers: i.total_layers as u32,
            public_key: i.public_key.map(|k| k.to_vec()).unwrap_or_default(),
            svd_rank: i.svd_rank as u32,
        }))
    }

    async fn forward(
        &self,
        r: Request<pb::ForwardRequest>,
    ) -> Result<Response<pb::ForwardReply>, Status> {
        let r = r.into_inner();
        let width = self.0.info().width;
        let call = ForwardCall {
            session: r.session,
            step: r.step,
            batch: r.batch as usize,
            tokens: r.tokens as usize,
            stream: decode_stream(&r.stream, width, r.compression, "the stream")?,
            adapter: tensors(r.adapter, "adapter tensor")?,
            dropout_key: r.dropout_key,
            adapter_config: r.adapter_config,
            rows: r.rows.iter().map(|&r| r as usize).collect(),
            inference: r.inference,
            compression: r.compression,
        };
        let compression = r.compression;
        let checking = !call.rows.is_empty();
        let rows = if checking {
            call.rows.len()
        } else {
            call.batch
        };
        let digest = self.1.as_ref().map(|_| call_digest(&self.0.info(), &call));
        let compute = Arc::clone(&self.0);
        let out = tokio::task::spawn_blocking(move || compute.forward(call))
            .await
            .map_err(|e| Status::internal(format!("the forward pass failed: {e}")))?
            .map_err(Status::invalid_argument)?;
        let mut out = out;
        if compression == COMPRESSION_INT8 {
            int8_round(&mut out, width);
        }
        let hashes = row_hashes(&out, rows);
        let signature = match (&self.1, digest) {
            (Some(id), Some(d)) => id.sign(&commitment_message(&d, &hashes)).to_vec(),
            _ => Vec::new(),
        };
        Ok(Response::new(pb::ForwardReply {
            stream: if checking {
                Vec::new()
            } else {
                encode_stream(&out, width, compression)
            },
            row_sha256: hashes.into_iter().map(|h| h.to_vec()).collect(),
            signature,
        }))
    }

    async fn backward(
        &self,
        r: Request<pb::BackwardRequest>,
    ) -> Result<Response<pb::BackwardReply>, Status> {
        let r = r.into_inner();
        let width = self.0.info().width;
        let grad = decode_stream(&r.grad, width, r.compression, "the gradient")?;
        let compute = Arc::clone(&self.0);
        let signer = self.1.clone();
        let compression = r.compression;
        let (dx, grads, signature) = tokio::task::spawn_blocking(move || {
            let (mut dx, grads) = compute.backward(r.session, r.step, grad.clone())?;
            if compression == COMPRESSION_INT8 {
                int8_round(&mut dx, width);
            }
            let signature = signer.map(|id| {
                id.sign(&backward_digest(r.session, r.step, &grad, &dx, &grads))
                    .to_vec()
            });
            Ok::<_, String>((dx, grads, signature.unwrap_or_default()))
        })
        .await
        .map_err(|e| Status::internal(format!("the backward pass failed: {e}")))?
        .map_err(Status::failed_precondition)?;
        Ok(Response::new(pb::BackwardReply {
            grad: encode_stream(&dx, width, compression),
            grads: pb_tensors(grads),
            signature,
        }))
    }
}

/// Serves `compute` on `listener` (TLS with `tls`, else plain text) on `rt` until the runtime
/// stops, signing every forward answer with `signer` (whose public key `compute`'s info must
/// give); the address it listens on.
///
/// # Errors
/// The listener cannot be handed to tokio, or the TLS configuration is refused.
pub fn serve_stage(
    rt: &tokio::runtime::Runtime,
    compute: Arc<dyn StageCompute>,
    signer: Option<Identity>,
    listener: std::net::TcpListener,
    tls: Option<tonic::transport::ServerTlsConfig>,
) -> Result<SocketAddr, NetError> {
    let io = |e: std::io::Error| NetError::Io {
        path: "the listening socket".into(),
        source: e,
    };
    listener.set_nonblocking(true).map_err(io)?;
    let addr = listener.local_addr().map_err(io)?;
    let listener = {
        let _guard = rt.enter();
        tokio::net::TcpListener::from_std(listener).map_err(io)?
    };
    let mut builder = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .initial_stream_window_size(crate::STREAM_WINDOW)
        .initial_connection_window_size(crate::CONNECTION_WINDOW);
    if let Some(tls) = tls {
        builder = builder.tls_config(tls).map_err(|e| NetError::Connect {
            what: "TLS for the stage server".into(),
            source: Box::new(e),
        })?;
    }
    let service = StageServer::new(Service(compute, signer))
        .max_decoding_message_size(MAX_STAGE_MESSAGE)
        .max_encoding_message_size(MAX_STAGE_MESSAGE);
    let router = builder.add_service(service);
    rt.spawn(async move {
        // Each accepted socket with TCP_NODELAY, or a call waits ~40 ms for a delayed ACK.
        if let Err(e) = router
            .serve_with_incoming(crate::run::accepted(listener))
            .await
        {
            tracing::error!("the stage server stopped: {e}");
        }
    });
    Ok(addr)
}

/// A client's handle on one stage server: blocking calls, each with a deadline (a server past
/// it is an error, never a hang).
pub struct StageClient {
    rt: tokio::runtime::Runtime,
    client: GrpcClient<tonic::transport::Channel>,
    url: String,
    deadline: Duration,
    /// What the server said it holds ([`StageClient::info`]); its answers are checked against
    /// it (their signatures, when it has a key).
    info: Option<StageInfo>,
    /// How backward calls' gradients travel.
    compression: u32,
}

impl std::fmt::Debug for StageClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StageClient")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// Why a stage call failed.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The server could not be reached or the connection broke.
    #[error("stage server {url}: {reason}")]
    Unreachable {
        /// The server.
        url: String,
        /// Why.
        reason: String,
    },
    /// The server did not answer within the deadline.
    #[error("stage server {url}: no answer within {secs} s")]
    Deadline {
        /// The server.
        url: String,
        /// The deadline.
        secs: u64,
    },
    /// The server refused the call.
    #[error("stage server {url} refused the call: {reason}")]
    Refused {
        /// The server.
        url: String,
        /// Its reason.
        reason: String,
    },
}

impl StageClient {
    /// Dials `url` (`https://HOST:PORT` with `tls`, `http://HOST:PORT` without), waiting at
    /// most `deadline` for it and for every call after.
    ///
    /// # Errors
    /// The URL or TLS settings are refused, or the server cannot be reached.
    pub fn connect(
        url: &str,
        tls: Option<&tonic::transport::ClientTlsConfig>,
        deadline: Duration,
    ) -> Result<Self, StageError> {
        let unreachable = |reason: String| StageError::Unreachable {
            url: url.to_owned(),
            reason,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| unreachable(format!("no runtime: {e}")))?;
        let ep = crate::party::endpoint(url, tls).map_err(|e| unreachable(e.to_string()))?;
        let channel = rt
            .block_on(async { tokio::time::timeout(deadline, ep.connect()).await })
            .map_err(|_| unreachable(format!("no connection within {} s", deadline.as_secs())))?
            .map_err(|e| unreachable(format!("{e}")))?;
        let client = GrpcClient::new(channel)
            .max_decoding_message_size(MAX_STAGE_MESSAGE)
            .max_encoding_message_size(MAX_STAGE_MESSAGE);
        Ok(Self {
            rt,
            client,
            url: url.to_owned(),
            deadline,
            info: None,
            compression: COMPRESSION_NONE,
        })
    }

    /// The server's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn call<T>(
        &mut self,
        f: impl AsyncFnOnce(&mut GrpcClient<tonic::transport::Channel>) -> Result<T, Status>,
    ) -> Result<T, StageError> {
        let (url, secs) = (self.url.clone(), self.deadline.as_secs());
        let client = &mut self.client;
        let deadline = self.deadline;
        let t0 = std::time::Instant::now();
        let r = self
            .rt
            .block_on(async { tokio::time::timeout(deadline, f(client)).await });
        if std::env::var("COHORT_STAGE_TRACE").is_ok() {
            eprintln!(
                "stage call {url}: {:.2} ms",
                t0.elapsed().as_secs_f64() * 1e3
            );
        }
        match r {
            Err(_) => Err(StageError::Deadline { url, secs }),
            Ok(Ok(x)) => Ok(x),
            Ok(Err(s)) => match s.code() {
                tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition => {
                    Err(StageError::Refused {
                        url,
                        reason: s.message().to_owned(),
                    })
                }
                _ => Err(StageError::Unreachable {
                    url,
                    reason: format!("{}: {}", s.code(), s.message()),
                }),
            },
        }
    }

    /// What the server holds.
    ///
    /// # Errors
    /// See [`StageError`]; a server speaking another protocol version is refused.
    pub fn info(&mut self) -> Result<StageInfo, StageError> {
        let r = self
            .call(async |c| c.info(pb::InfoRequest {}).await)?
            .into_inner();
        let url = self.url.clone();
        if r.protocol_version != STAGE_PROTOCOL_VERSION {
            return Err(StageError::Refused {
                url,
                reason: format!(
                    "it speaks stage protocol {}, this client {STAGE_PROTOCOL_VERSION}",
                    r.protocol_version
                ),
            });
        }
        let model_sha256: [u8; 32] =
            r.model_sha256
                .as_slice()
                .try_into()
                .map_err(|_| StageError::Refused {
                    url: url.clone(),
                    reason: "its model hash is not 32 bytes".into(),
                })?;
        let public_key = match r.public_key.len() {
            0 => None,
            _ => Some(PublicKey::try_from(r.public_key.as_slice()).map_err(|_| {
                StageError::Refused {
                    url: url.clone(),
                    reason: "its public key is not 32 bytes".into(),
                }
            })?),
        };
        let info = StageInfo {
            model_sha256,
            layers: r.first_layer as usize..r.end_layer as usize,
            width: r.width as usize,
            total_layers: r.layers as usize,
            public_key,
            svd_rank: r.svd_rank as usize,
        };
        self.info = Some(info.clone());
        Ok(info)
    }

    /// The server's layers forward: the stream and the server's commitment to it, checked to
    /// agree (one digest per row, each the digest of its row). For a verifier's call
    /// (`call.rows` not empty) the stream is empty and the commitment covers those rows.
    ///
    /// # Errors
    /// See [`StageError`]; an answer whose commitment does not fit its stream is refused.
    pub fn forward(&mut self, call: &ForwardCall) -> Result<Forwarded, StageError> {
        let checking = !call.rows.is_empty();
        // The call as the server holds it (asked of it by `info` first).
        let held = match &self.info {
            Some(i) => i.clone(),
            None => self.info()?,
        };
        let width = held.width;
        let req = pb::ForwardRequest {
            session: call.session,
            step: call.step,
            batch: call.batch as u32,
            tokens: call.tokens as u32,
            stream: encode_stream(&call.stream, width, call.compression),
            adapter: pb_tensors(call.adapter.clone()),
            dropout_key: call.dropout_key,
            adapter_config: call.adapter_config.clone(),
            rows: call.rows.iter().map(|&r| r as u32).collect(),
            inference: call.inference,
            compression: call.compression,
        };
        let r = self.call(async |c| c.forward(req).await)?.into_inner();
        let bad = |reason: String| StageError::Refused {
            url: self.url.clone(),
            reason: format!("its answer: {reason}"),
        };
        let stream = decode_stream(&r.stream, width, call.compression, "the stream")
            .map_err(|s| bad(s.message().into()))?;
        let rows = if checking {
            call.rows.len()
        } else {
            call.batch
        };
        let row_sha256: Vec<Digest> = r
            .row_sha256
            .iter()
            .map(|h| h.as_slice().try_into())
            .collect::<Result<_, _>>()
            .map_err(|_| bad("a row digest is not 32 bytes".into()))?;
        if row_sha256.len() != rows {
            return Err(bad(format!(
                "{} row digests for {rows} rows",
                row_sha256.len()
            )));
        }
        if !checking {
            if stream.len() != call.stream.len() {
                return Err(bad(format!(
                    "a stream of {} values for one of {}",
                    stream.len(),
                    call.stream.len()
                )));
            }
            if let Some(i) = row_hashes(&stream, rows)
                .iter()
                .zip(&row_sha256)
                .position(|(a, b)| a != b)
            {
                return Err(bad(format!(
                    "row {i} of its stream is not the row it committed to"
                )));
            }
        }
        // Its signature, when it has a key, must verify.
        let call_d = call_digest(&held, call);
        let bad = |reason: String| StageError::Refused {
            url: self.url.clone(),
            reason: format!("its answer: {reason}"),
        };
        let signature = match (held.public_key, r.signature.len()) {
            (None, 0) => None,
            (None, _) => return Err(bad("a signature from a server without a key".into())),
            (Some(pk), _) => {
                let sig: [u8; 64] = r
                    .signature
                    .as_slice()
                    .try_into()
                    .map_err(|_| bad("no signature, or one that is not 64 bytes".into()))?;
                Identity::verify(&pk, &commitment_message(&call_d, &row_sha256), &sig)
                    .map_err(|_| bad("its signature does not verify against its key".into()))?;
                Some(sig)
            }
        };
        Ok(Forwarded {
            stream,
            row_sha256,
            call: call_d,
            signature,
        })
    }

    /// How backward calls' gradients travel ([`COMPRESSION_NONE`] by default,
    /// [`COMPRESSION_INT8`]); forward calls say it themselves
    /// ([`ForwardCall::compression`]). With int8, the gradients given should already be
    /// rounded ([`int8_round`]).
    pub fn set_compression(&mut self, compression: u32) {
        self.compression = compression;
    }

    /// What the server said it holds, once [`StageClient::info`] was asked.
    pub fn held(&self) -> Option<&StageInfo> {
        self.info.as_ref()
    }

    /// The server's layers backward for the forward of `(session, step)`.
    ///
    /// # Errors
    /// See [`StageError`].
    pub fn backward(
        &mut self,
        session: u64,
        step: u64,
        grad: &[f32],
    ) -> Result<(Vec<f32>, Named), StageError> {
        self.backward_signed(session, step, grad)
            .map(|b| (b.dx, b.grads))
    }

    /// [`StageClient::backward`] with the server's signed digest of its answer, checked
    /// against its key when it has one.
    ///
    /// # Errors
    /// See [`StageError`]; an answer whose signature does not verify is refused.
    pub fn backward_signed(
        &mut self,
        session: u64,
        step: u64,
        grad: &[f32],
    ) -> Result<Backwarded, StageError> {
        // The server's key and width, asked of it by `info` first.
        let held = match &self.info {
            Some(i) => i.clone(),
            None => self.info()?,
        };
        let (key, width) = (held.public_key, held.width);
        let req = pb::BackwardRequest {
            session,
            step,
            grad: encode_stream(grad, width, self.compression),
            compression: self.compression,
        };
        let r = self.call(async |c| c.backward(req).await)?.into_inner();
        let bad = |reason: String| StageError::Refused {
            url: self.url.clone(),
            reason: format!("its answer: {reason}"),
        };
        let dx = decode_stream(&r.grad, width, self.compression, "the gradient")
            .map_err(|s| bad(s.message().into()))?;
        let grads = tensors(r.grads, "gradient").map_err(|s| bad(s.message().into()))?;
        let digest = backward_digest(session, step, grad, &dx, &grads);
        let signature = match (key, r.signature.len()) {
            (None, 0) => None,
            (None, _) => return Err(bad("a signature from a server without a key".into())),
            (Some(pk), _) => {
                let sig: [u8; 64] = r
                    .signature
                    .as_slice()
                    .try_into()
                    .map_err(|_| bad("no signature, or one that is not 64 bytes".into()))?;
                Identity::verify(&pk, &digest, &sig)
                    .map_err(|_| bad("its signature does not verify against its key".into()))?;
                Some(sig)
            }
        };
        Ok(Backwarded {
            dx,
            grads,
            digest,
            signature,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The int8 encoding: a quarter of the bytes and a row's scale, exact on what it decodes to
    /// (so that a stream rounded once travels again unchanged), within half a step of each
    /// value; bad bytes refused.
    #[test]
    fn int8_streams_round_once_and_travel_unchanged() {
        let width = 16;
        let mut r = cohort_core::SplitMix64::new(3);
        let mut v: Vec<f32> = r.normal_vec(width * 5, 3.0);
        v[20..36].fill(0.0);
        v[40] = 1e-30;
        let bytes = int8_encode(&v, width);
        assert_eq!(bytes.len(), 5 * (width + 1));
        let back = int8_decode(&bytes, width).unwrap();
        for (row, got) in v.chunks(width).zip(back.chunks(width)) {
            let max = row.iter().fold(0f32, |m, x| m.max(x.abs()));
            for (a, b) in row.iter().zip(got) {
                assert!((a - b).abs() <= max / 127.0 + 1e-30, "{a} against {b}");
            }
        }
        let mut rounded = v.clone();
        rounded[3] = -1e-9;
        int8_round(&mut rounded, width);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let mut v2 = v.clone();
        v2[3] = -1e-9;
        assert_eq!(
            bits(&rounded),
            bits(&int8_decode(&int8_encode(&v2, width), width).unwrap())
        );
        assert_eq!(
            int8_encode(&back, width),
            bytes,
            "not exact on what it decodes to"
        );
        assert!(int8_decode(&bytes[1..], width).is_err());
        assert!(int8_decode(&bytes, 0).is_err());
        let mut bad = bytes.clone();
        bad[0] = (-127i8) as u8;
        assert!(int8_decode(&bad, width).is_err());
    }
}
