//! A party that misbehaves on an open, authenticated session: garbage, replies to requests
//! that are not pending (replayed from an earlier request, or late: after their deadline),
//! replies in another party's
//! name, the same reply twice, an oversized frame, a handshake frame inside a session, and a
//! session that never says hello. Each is dropped or refused; the coordinator counts the one
//! good reply once and keeps serving the other party, over real sockets.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use cohort_core::Identity;
use cohort_ledger::TxContext;
use cohort_net::admit::Admit;
use cohort_net::party::{Dial, host};
use cohort_net::pb::federation_client::FederationClient;
use cohort_net::pb::{self, coordinator_frame, party_frame};
use cohort_net::server::{Deadlines, GrpcTransport, Hub, HubConfig};
use cohort_net::wire::{fill_request, strip_reply};
use cohort_node::party::{Client, PartyNode};
use cohort_node::transport::{EnrolRequest, Party, Request, SignWith, Transport};
use cohort_tasks::{LinearTask, LinearTaskConfig};
use tokio::sync::mpsc::UnboundedSender;

const SEED: u64 = 5;

fn key(name: &str) -> Identity {
    Identity::from_seed(SEED, name)
}

type Inbound = tonic::Streaming<pb::CoordinatorFrame>;

/// Serves a fresh embedded ledger's published log from `hub`, as a coordinator serves its own:
/// a party checks it before it acts on a request.
fn publish_ledger(hub: &Hub) {
    let dir = tempfile::tempdir().unwrap();
    let led = cohort_ledger::EmbeddedLedger::create(
        dir.path().join("ledger"),
        cohort_ledger::LedgerConfig::new("abuse-test", key("operator")),
    )
    .unwrap();
    hub.publish(led.published());
}

fn frame(k: party_frame::Kind) -> pb::PartyFrame {
    pb::PartyFrame { kind: Some(k) }
}

/// Client 0's raw session: hello, proof, welcome (its token).
async fn open_with_token(url: &str) -> (UnboundedSender<pb::PartyFrame>, Inbound, String) {
    let id = key("client-0");
    let mut client = FederationClient::connect(url.to_owned())
        .await
        .unwrap()
        .max_encoding_message_size(64 << 20);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tx.send(frame(party_frame::Kind::Hello(pb::Hello {
        protocol_version: cohort_net::PROTOCOL_VERSION,
        role: "client".into(),
        index: 0,
        public_key: id.public_key().to_vec(),
        agent: "abuse".into(),
    })))
    .unwrap();
    let mut inbound = client
        .session(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let Some(coordinator_frame::Kind::Challenge(c)) =
        inbound.message().await.unwrap().unwrap().kind
    else {
        panic!("no challenge")
    };
    let msg = cohort_net::session_message(&c.run, &c.nonce, &id.public_key());
    tx.send(frame(party_frame::Kind::Proof(pb::Proof {
        signature: id.sign(&msg).to_vec(),
    })))
    .unwrap();
    let k = inbound.message().await.unwrap().unwrap().kind.unwrap();
    let coordinator_frame::Kind::Welcome(w) = k else {
        panic!("{k:?}")
    };
    (tx, inbound, w.session)
}

/// Client 0's raw session.
async fn open(url: &str) -> (UnboundedSender<pb::PartyFrame>, Inbound) {
    let (tx, inbound, _) = open_with_token(url).await;
    (tx, inbound)
}

/// The next request on a session (heartbeats skipped).
async fn next_request(inbound: &mut Inbound) -> pb::Envelope {
    loop {
        match inbound.message().await.unwrap().unwrap().kind.unwrap() {
            coordinator_frame::Kind::Request(e) => return e,
            coordinator_frame::Kind::Heartbeat(_) => {}
            k => panic!("expected a request, got {k:?}"),
        }
    }
}

fn reply(tx: &UnboundedSender<pb::PartyFrame>, e: pb::Envelope) {
    tx.send(frame(party_frame::Kind::Reply(e))).unwrap();
}

/// Waits until `cond` holds, at most `secs`.
fn until(secs: u64, what: &str, cond: impl Fn() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < Duration::from_secs(secs), "{what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn enrol(party: Party) -> Request {
    Request::Enrol(EnrolRequest {
        party,
        run: Default::default(),
        sign: SignWith {
            contract: Default::default(),
            ctx: TxContext::Embedded {
                origin: "cohort.local/abuse".into(),
                nonce: 0,
                time: 60,
            },
        },
    })
}

#[test]
fn garbage_replays_duplicates_and_oversized_frames_are_dropped_and_the_others_served() {
    let t = LinearTask::new(LinearTaskConfig::default(), 2, 1, SEED);
    let admit = Admit {
        clients: vec![key("client-0").public_key(), key("client-1").public_key()],
        validators: vec![key("validator-0").public_key()],
        chain: Default::default(),
    };
    let hub = Hub::new(HubConfig::new("abuse-test", admit));
    publish_ledger(&hub);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = cohort_net::run::serve(&rt, &hub, listener, None).unwrap();
    let url = format!("http://{addr}");
    let mut transport = GrpcTransport::new(
        Arc::clone(&hub),
        Deadlines {
            enrol: Duration::from_secs(3),
            train: Duration::from_secs(3),
            score: Duration::from_secs(3),
            reveal: Duration::from_secs(3),
        },
    );
    std::thread::scope(|s| {
        // Client 1: an honest party with its own link.
        let honest = s.spawn(|| {
            let c = Client::new(1, key("client-1"), &t, SEED, 100);
            host(vec![Box::new(c)], &Dial::insecure(url.clone()))
        });
        let (tx, mut inbound) = rt.block_on(open(&url));
        until(20, "client 1 connects", || {
            hub.connected() == [Party::Client(0), Party::Client(1)]
        });

        transport.send(enrol(Party::Client(0))).unwrap();
        transport.send(enrol(Party::Client(1))).unwrap();
        let e = rt.block_on(next_request(&mut inbound));
        let request = fill_request(&e, |h| panic!("an enrolment has no blob ({h})")).unwrap();
        let mine = Client::new(0, key("client-0"), &t, SEED, 100)
            .handle(&request)
            .unwrap();
        let (good, blobs) = strip_reply(e.id, mine.clone()).unwrap();
        assert!(blobs.is_empty());
        // Client 1's own answer to its own enrolment, signed by client 1: a reply in another
        // party's name.
        let theirs = Client::new(1, key("client-1"), &t, SEED, 100)
            .handle(&enrol(Party::Client(1)))
            .unwrap();
        let (theirs, _) = strip_reply(e.id, theirs).unwrap();

        // Garbage, a reply to a request that is not pending, one in client 1's name, an
        // envelope whose blob list is not the message's, then the good reply, twice.
        reply(
            &tx,
            pb::Envelope {
                id: e.id,
                message: b"{\"Enrol\": not json".to_vec(),
                blobs: Vec::new(),
            },
        );
        reply(
            &tx,
            pb::Envelope {
                id: e.id.wrapping_add(1_000_000),
                ..good.clone()
            },
        );
        reply(&tx, theirs);
        reply(
            &tx,
            pb::Envelope {
                blobs: vec![vec![7; 32]],
                ..good.clone()
            },
        );
        reply(&tx, good.clone());
        reply(&tx, good.clone());

        // Both replies, each once; client 0's is the good one.
        let got = transport.poll(0).unwrap();
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0], mine);
        assert_eq!(got[1].from(), Party::Client(1));

        // An oversized frame ends client 0's session (after the frames before it were read);
        // client 1's goes on.
        reply(
            &tx,
            pb::Envelope {
                id: e.id,
                message: vec![b' '; cohort_net::MAX_MESSAGE + cohort_net::CHUNK + 1],
                blobs: Vec::new(),
            },
        );
        until(10, "the oversized frame closes client 0's session", || {
            hub.connected() == [Party::Client(1)]
        });
        // The duplicate was dropped, not kept for a later poll.
        assert!(transport.poll(0).unwrap().is_empty());

        // Client 0 dials again and is served; the answer to a request it already answered,
        // replayed, is dropped; garbage to a new request leaves it unanswered until its
        // deadline, when the coordinator goes on without it.
        let (tx, mut inbound, token) = rt.block_on(open_with_token(&url));
        transport.send(enrol(Party::Client(0))).unwrap();
        let e2 = rt.block_on(next_request(&mut inbound));
        // A blob it uploads for this request is held until the request's deadline.
        let stray = vec![9u8; 4096];
        let stray_hash = cohort_core::sha256(&stray);
        rt.block_on(async {
            let mut client = FederationClient::connect(url.clone()).await.unwrap();
            let mut r = tonic::Request::new(tokio_stream::iter(vec![pb::BlobChunk {
                hash: stray_hash.0.to_vec(),
                offset: 0,
                total: stray.len() as u64,
                data: stray.clone().into(),
            }]));
            r.metadata_mut()
                .insert(cohort_net::SESSION_HEADER, token.parse().unwrap());
            assert!(client.put_blob(r).await.unwrap().into_inner().complete);
        });
        assert!(hub.holds_upload(&stray_hash));
        assert_ne!(e2.id, e.id);
        reply(&tx, good.clone());
        reply(
            &tx,
            pb::Envelope {
                id: e2.id,
                message: vec![0xff; 64],
                blobs: Vec::new(),
            },
        );
        let t0 = Instant::now();
        assert!(transport.poll(0).unwrap().is_empty());
        let waited = t0.elapsed();
        assert!(
            waited >= Duration::from_secs(2) && waited < Duration::from_secs(10),
            "the deadline: {waited:?}"
        );
        // Past the deadline, what it uploaded for the request is not kept.
        assert!(!hub.holds_upload(&stray_hash));
        // The right answer, late (after its deadline): dropped, never counted.
        let late = Client::new(0, key("client-0"), &t, SEED, 100)
            .handle(&fill_request(&e2, |h| panic!("no blob ({h})")).unwrap())
            .unwrap();
        reply(&tx, strip_reply(e2.id, late).unwrap().0);
        // A handshake frame inside an open session ends it.
        tx.send(frame(party_frame::Kind::Hello(pb::Hello::default())))
            .unwrap();
        until(10, "a hello inside a session closes it", || {
            hub.connected() == [Party::Client(1)]
        });
        assert!(
            transport.poll(0).unwrap().is_empty(),
            "a late reply counted"
        );

        // A session that never says hello is dropped at the handshake deadline, and client 1
        // is still served meanwhile.
        let silent = rt.block_on(async {
            let mut client = FederationClient::connect(url.clone()).await.unwrap();
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<pb::PartyFrame>();
            let inbound = client
                .session(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
                .await;
            (tx, inbound)
        });
        let opened = Instant::now();
        let (_keep, inbound) = silent;
        let mut inbound = inbound.unwrap().into_inner();
        let end = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(30), inbound.message()).await
        });
        let waited = opened.elapsed();
        let end = end.expect("the silent session is closed by the coordinator");
        match end {
            Ok(Some(pb::CoordinatorFrame {
                kind: Some(coordinator_frame::Kind::Refused(r)),
            })) => assert!(r.reason.contains("no handshake frame within 10 s"), "{r:?}"),
            other => panic!("a silent session: {other:?}"),
        }
        assert!(
            waited >= Duration::from_secs(9) && waited < Duration::from_secs(20),
            "closed after {waited:?}"
        );
        assert_eq!(hub.connected(), [Party::Client(1)]);

        hub.finish("the test is over");
        assert_eq!(honest.join().unwrap().unwrap(), "the test is over");
    });
}

#[test]
fn a_party_cannot_make_the_coordinator_hold_more_than_one_largest_blob() {
    let admit = Admit {
        clients: vec![key("client-0").public_key()],
        validators: Vec::new(),
        chain: Default::default(),
    };
    let mut cfg = HubConfig::new("abuse-test", admit);
    cfg.max_blob = 1 << 20;
    let hub = Hub::new(cfg);
    publish_ledger(&hub);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = cohort_net::run::serve(&rt, &hub, listener, None).unwrap();
    let url = format!("http://{addr}");
    rt.block_on(async {
        let (_tx, _inbound, token) = open_with_token(&url).await;
        let mut client = FederationClient::connect(url.clone()).await.unwrap();
        let put = |data: Vec<u8>| {
            let h = cohort_core::sha256(&data);
            let chunk = pb::BlobChunk {
                hash: h.0.to_vec(),
                offset: 0,
                total: data.len() as u64,
                data: data.into(),
            };
            let mut r = tonic::Request::new(tokio_stream::iter(vec![chunk]));
            r.metadata_mut()
                .insert(cohort_net::SESSION_HEADER, token.parse().unwrap());
            (h, r)
        };
        // 700 KiB: held.
        let (a, r) = put(vec![1; 700 << 10]);
        let s = client.put_blob(r).await.unwrap().into_inner();
        assert!(s.complete);
        assert!(hub.holds_upload(&a));
        // Another 700 KiB while the first is held: over the party's 1 MiB, refused by name.
        let (b, r) = put(vec![2; 700 << 10]);
        let e = client.put_blob(r).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
        assert!(e.message().contains("client-0"), "{}", e.message());
        assert!(!hub.holds_upload(&b));
        // The first again: already held, nothing more taken.
        let (_, r) = put(vec![1; 700 << 10]);
        assert!(client.put_blob(r).await.unwrap().into_inner().complete);
        // An announcement over the largest blob: refused before any byte is kept.
        let (_, r) = put(vec![3; (1 << 20) + 1]);
        let e = client.put_blob(r).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    });
}

#[test]
fn an_upload_resumes_where_the_coordinators_copy_ends_and_misplaced_or_wrong_bytes_are_refused() {
    let admit = Admit {
        clients: vec![key("client-0").public_key()],
        validators: Vec::new(),
        chain: Default::default(),
    };
    let hub = Hub::new(HubConfig::new("abuse-test", admit));
    publish_ledger(&hub);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = cohort_net::run::serve(&rt, &hub, listener, None).unwrap();
    let url = format!("http://{addr}");
    rt.block_on(async {
        let (_tx, _inbound, token) = open_with_token(&url).await;
        let mut client = FederationClient::connect(url.clone()).await.unwrap();
        fn with_token<T>(m: T, token: &str) -> tonic::Request<T> {
            let mut r = tonic::Request::new(m);
            r.metadata_mut()
                .insert(cohort_net::SESSION_HEADER, token.parse().unwrap());
            r
        }
        let blob: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        let h = cohort_core::sha256(&blob);
        // The chunk of `blob` at `at..to`, announced as `hash`.
        let chunk = |hash: cohort_core::Hash32, at: usize, to: usize| pb::BlobChunk {
            hash: hash.0.to_vec(),
            offset: at as u64,
            total: blob.len() as u64,
            data: blob[at..to].to_vec().into(),
        };
        let put = |chunks: Vec<pb::BlobChunk>| with_token(tokio_stream::iter(chunks), &token);
        let held = |h: cohort_core::Hash32| with_token(pb::BlobRef { hash: h.0.to_vec() }, &token);

        // The first third, then the stream ends (a dropped connection): 1000 bytes held.
        let s = client.put_blob(put(vec![chunk(h, 0, 1000)])).await.unwrap();
        assert_eq!((s.get_ref().offset, s.get_ref().complete), (1000, false));
        let s = client.blob_offset(held(h)).await.unwrap().into_inner();
        assert_eq!((s.offset, s.complete), (1000, false));
        // Starting again from 0 is refused: the coordinator holds 1000 bytes.
        let e = client
            .put_blob(put(vec![chunk(h, 0, 1000)]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
        // A stream that resumes at 1000 and then skips bytes: the good chunk is kept, the
        // misplaced one refused.
        let e = client
            .put_blob(put(vec![chunk(h, 1000, 2000), chunk(h, 2500, 3000)]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
        let s = client.blob_offset(held(h)).await.unwrap().into_inner();
        assert_eq!((s.offset, s.complete), (2000, false));
        assert!(!hub.holds_upload(&h));
        // The rest: complete, its hash checked.
        let s = client
            .put_blob(put(vec![chunk(h, 2000, 3000)]))
            .await
            .unwrap();
        assert!(s.get_ref().complete);
        assert!(hub.holds_upload(&h));
        let s = client.blob_offset(held(h)).await.unwrap().into_inner();
        assert_eq!((s.offset, s.complete), (3000, true));

        // Bytes that do not hash to the hash they were announced as: refused once the last
        // byte is in, and nothing of them is kept.
        let other = cohort_core::sha256(b"another blob");
        let e = client
            .put_blob(put(vec![chunk(other, 0, 1500), chunk(other, 1500, 3000)]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::DataLoss, "{e:?}");
        assert!(!hub.holds_upload(&other));
        let s = client.blob_offset(held(other)).await.unwrap().into_inner();
        assert_eq!((s.offset, s.complete), (0, false));

        // More bytes than announced: refused, and the upload dropped.
        let mut over = chunk(other, 0, 3000);
        over.total = 2000;
        let e = client.put_blob(put(vec![over])).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        let s = client.blob_offset(held(other)).await.unwrap().into_inner();
        assert_eq!((s.offset, s.complete), (0, false));
    });
}
