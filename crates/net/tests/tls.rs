//! TLS between the coordinator and its parties, over real sockets on loopback: a party that
//! trusts the coordinator's CA gets a session; one that trusts another CA, dials a name the
//! certificate was not made for, or speaks plain text to a TLS coordinator (or TLS to a plain
//! one) stops at once with an error that says why, and the coordinator keeps serving the
//! others. The certificate maker refuses bad names, validities and existing files, and the
//! loaders refuse a key that is not the certificate's, a key others can read, and a CA file
//! that holds a private key.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use cohort_core::Identity;
use cohort_net::NetError;
use cohort_net::admit::Admit;
use cohort_net::party::{Dial, host};
use cohort_net::server::{Hub, HubConfig};
use cohort_net::tls::{self, FederationTls, ServerName, TlsFiles};
use cohort_node::party::{Client, PartyNode};
use cohort_node::transport::Party;
use cohort_tasks::{LinearTask, LinearTaskConfig};

const SEED: u64 = 5;

fn task() -> LinearTask {
    LinearTask::new(LinearTaskConfig::default(), 3, 1, SEED)
}

fn client<'a>(k: u32, t: &'a LinearTask) -> Box<dyn PartyNode + 'a> {
    Box::new(Client::new(
        k,
        Identity::from_seed(SEED, &format!("client-{k}")),
        t,
        SEED,
        100,
    ))
}

/// A coordinator admitting three clients, serving `tls` (plain text for `None`) on loopback.
fn coordinator(
    tls: Option<tonic::transport::ServerTlsConfig>,
) -> (tokio::runtime::Runtime, Arc<Hub>, std::net::SocketAddr) {
    let admit = Admit {
        clients: (0..3)
            .map(|k| Identity::from_seed(SEED, &format!("client-{k}")).public_key())
            .collect(),
        validators: vec![Identity::from_seed(SEED, "validator-0").public_key()],
        chain: Default::default(),
    };
    let hub = Hub::new(HubConfig::new("tls-test", admit));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = cohort_net::run::serve(&rt, &hub, listener, tls).unwrap();
    (rt, hub, addr)
}

fn made(names: &[&str]) -> FederationTls {
    let names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
    FederationTls::new(&names, 30, SystemTime::now()).unwrap()
}

fn dial(url: String, tls: Option<tonic::transport::ClientTlsConfig>) -> Dial {
    Dial {
        url,
        tls,
        give_up: Duration::from_secs(20),
        blobs: None,
        chain: None,
    }
}

/// Hosts client `k` against `dial` on a thread; once the hub sees it connected, finishes the
/// run. Returns what `host` returned.
fn session_of(hub: &Hub, k: u32, t: &LinearTask, dial: &Dial) -> Result<String, NetError> {
    let who = Party::Client(k);
    std::thread::scope(|s| {
        let h = s.spawn(|| host(vec![client(k, t)], dial));
        let start = Instant::now();
        while !hub.connected().contains(&who) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{who} never connected"
            );
            if h.is_finished() {
                return h.join().unwrap();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        hub.finish("the test is over");
        h.join().unwrap()
    })
}

/// Runs `party` against `dial`, expecting a quick refusal; returns its message.
fn refused(party: Box<dyn PartyNode + '_>, dial: &Dial) -> String {
    let start = Instant::now();
    let e = host(vec![party], dial).expect_err("the party must not get a session");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "a refusal, not a give-up after retries: {e}"
    );
    eprintln!("refused: {e}");
    e.to_string()
}

#[test]
fn a_party_trusting_the_coordinators_ca_gets_a_session_over_tls() {
    // Through the files, as `cohort keys tls` writes them and the commands load them.
    let dir = tempfile::tempdir().unwrap();
    let files = made(&["127.0.0.1", "localhost"])
        .write(&dir.path().join("tls"))
        .unwrap();
    let server = tls::server_config(&files.server_cert, &files.server_key).unwrap();
    let (_rt, hub, addr) = coordinator(Some(server));
    let t = task();
    for (host_name, k) in [("127.0.0.1", 0), ("localhost", 1)] {
        let party_tls = tls::client_config(&files.ca_cert, host_name).unwrap();
        let d = dial(
            format!("https://{host_name}:{}", addr.port()),
            Some(party_tls),
        );
        let why = session_of(&hub, k, &t, &d).unwrap();
        assert_eq!(why, "the test is over");
    }
}

#[test]
fn a_party_trusting_another_ca_is_refused_by_the_handshake_and_the_others_are_served() {
    let ours = made(&["127.0.0.1"]);
    let theirs = made(&["127.0.0.1"]);
    let (_rt, hub, addr) = coordinator(Some(ours.server_config().unwrap()));
    let url = format!("https://{addr}");
    let t = task();

    let d = dial(
        url.clone(),
        Some(theirs.client_config("127.0.0.1").unwrap()),
    );
    let why = refused(client(0, &t), &d);
    assert!(
        why.contains("certificate") && why.contains("UnknownIssuer"),
        "{why}"
    );
    assert!(
        why.contains("not signed by the CA this party trusts"),
        "{why}"
    );
    assert!(hub.connected().is_empty());

    // A certificate made for another name than the one dialled.
    let elsewhere = made(&["coordinator.example.org"]);
    let (_rt2, _hub2, addr2) = coordinator(Some(elsewhere.server_config().unwrap()));
    let d = dial(
        format!("https://{addr2}"),
        Some(elsewhere.client_config("127.0.0.1").unwrap()),
    );
    let why = refused(client(0, &t), &d);
    assert!(
        why.contains("certificate") && why.contains("not made for the host"),
        "{why}"
    );

    // The coordinator still serves a party that trusts the right CA.
    let d = dial(url, Some(ours.client_config("127.0.0.1").unwrap()));
    let why = session_of(&hub, 1, &t, &d).unwrap();
    assert_eq!(why, "the test is over");
}

#[test]
fn plain_text_against_tls_and_tls_against_plain_text_fail_clearly() {
    let t = task();
    let ours = made(&["127.0.0.1"]);
    let (_rt, hub, addr) = coordinator(Some(ours.server_config().unwrap()));
    // http:// to a TLS coordinator: no session, and an error that says what to check.
    let d = dial(format!("http://{addr}"), None);
    let why = refused(client(0, &t), &d);
    assert!(
        why.contains("serves TLS") && why.contains(&format!("dial https://{addr}")),
        "{why}"
    );
    assert!(hub.connected().is_empty());

    // https:// to a plain-text coordinator.
    let (_rt2, _hub2, plain) = coordinator(None);
    let d = dial(
        format!("https://{plain}"),
        Some(ours.client_config("127.0.0.1").unwrap()),
    );
    let why = refused(client(0, &t), &d);
    assert!(why.contains("does not speak TLS"), "{why}");

    // A URL whose scheme contradicts the TLS setting is refused before any dialling.
    for (url, tls, needle) in [
        (format!("http://{addr}"), true, "dial https://"),
        (format!("https://{addr}"), false, "--ca"),
        (format!("{addr}"), false, "not an http:// or https:// URL"),
    ] {
        let d = dial(url, tls.then(|| ours.client_config("127.0.0.1").unwrap()));
        let why = refused(client(0, &t), &d);
        assert!(why.contains(needle), "{why}");
    }
}

#[test]
fn server_names_are_ip_addresses_or_dns_names_and_nothing_else() {
    assert_eq!(
        ServerName::parse("127.0.0.1").unwrap(),
        ServerName::Ip("127.0.0.1".parse().unwrap())
    );
    assert_eq!(
        ServerName::parse("[::1]").unwrap(),
        ServerName::Ip("::1".parse().unwrap())
    );
    assert_eq!(
        ServerName::parse("Coordinator.Example.ORG").unwrap(),
        ServerName::Dns("coordinator.example.org".into())
    );
    assert!(ServerName::parse("localhost").is_ok());
    for (bad, needle) in [
        ("", "empty"),
        ("   ", "empty"),
        ("https://coordinator.example.org", "a URL"),
        ("coordinator.example.org:50051", "port"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("*.example.org", "wildcard"),
        ("a..b", "not a valid DNS name"),
        ("-leading.example.org", "not a valid DNS name"),
        ("1.2.3", "neither an IPv4 address"),
        ("256.1.1.1", "neither an IPv4 address"),
        ("héllo", "not a valid DNS name"),
        ("nul\0byte", "not a valid DNS name"),
        (&"a".repeat(64), "not a valid DNS name"),
        (
            &format!("{}.org", ["abc"; 70].join(".")),
            "not a valid DNS name",
        ),
    ] {
        let e = ServerName::parse(bad).expect_err(bad).to_string();
        assert!(e.contains(needle), "{bad:?}: {e}");
    }
}

#[test]
fn the_maker_refuses_bad_names_and_validities_and_never_overwrites() {
    let now = SystemTime::now();
    let names = vec!["127.0.0.1".to_owned()];
    for days in [0, tls::MAX_DAYS + 1, u32::MAX] {
        let e = FederationTls::new(&names, days, now)
            .unwrap_err()
            .to_string();
        assert!(e.contains("days"), "{days}: {e}");
    }
    assert!(FederationTls::new(&[], 1, now).is_err());
    let many: Vec<String> = (0..=tls::MAX_NAMES)
        .map(|i| format!("h{i}.example.org"))
        .collect();
    assert!(FederationTls::new(&many, 1, now).is_err());
    let e = FederationTls::new(&["ok.example.org".into(), "bad name".into()], 1, now)
        .unwrap_err()
        .to_string();
    assert!(e.contains("\"bad name\""), "{e}");
    // Duplicates are made once.
    let m = FederationTls::new(&["a.example.org".into(), "A.example.org".into()], 1, now).unwrap();
    assert_eq!(m.names().len(), 1);
    assert!(m.not_after() > now && m.not_before() < now);
    assert!(!format!("{m:?}").contains("PRIVATE"), "{m:?}");

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tls");
    let files = made(&["127.0.0.1"]).write(&out).unwrap();
    assert_eq!(files, TlsFiles::in_dir(&out));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&files.server_key), 0o600);
    assert_eq!(mode(&files.ca_cert), 0o644);
    let before: Vec<Vec<u8>> = [&files.ca_cert, &files.server_cert, &files.server_key]
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    // A second pair into the same directory: refused, naming every file, nothing changed.
    let e = made(&["127.0.0.1"]).write(&out).unwrap_err().to_string();
    for f in ["ca.pem", "server.pem", "server.key"] {
        assert!(e.contains(f), "{e}");
    }
    let after: Vec<Vec<u8>> = [&files.ca_cert, &files.server_cert, &files.server_key]
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    assert_eq!(before, after);
    // One existing file is enough to refuse, and the others are not written.
    let partial = dir.path().join("partial");
    std::fs::create_dir(&partial).unwrap();
    std::fs::write(partial.join("server.key"), b"mine").unwrap();
    let e = made(&["127.0.0.1"])
        .write(&partial)
        .unwrap_err()
        .to_string();
    assert!(e.contains("server.key") && !e.contains("ca.pem"), "{e}");
    assert!(!partial.join("ca.pem").exists());
    assert_eq!(std::fs::read(partial.join("server.key")).unwrap(), b"mine");
    // A file where the directory should be.
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    assert!(made(&["127.0.0.1"]).write(&file).is_err());
}

#[test]
fn the_loaders_refuse_mismatched_exposed_and_misplaced_keys() {
    let dir = tempfile::tempdir().unwrap();
    let a = made(&["127.0.0.1"]).write(&dir.path().join("a")).unwrap();
    let b = made(&["127.0.0.1"]).write(&dir.path().join("b")).unwrap();
    tls::server_config(&a.server_cert, &a.server_key).unwrap();
    // Another pair's key.
    let e = tls::server_config(&a.server_cert, &b.server_key)
        .unwrap_err()
        .to_string();
    assert!(e.contains(b.server_key.to_str().unwrap()), "{e}");
    // A key group or others can read.
    std::fs::set_permissions(&a.server_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = tls::server_config(&a.server_cert, &a.server_key)
        .unwrap_err()
        .to_string();
    assert!(e.contains("chmod 600"), "{e}");
    std::fs::set_permissions(&a.server_key, std::fs::Permissions::from_mode(0o600)).unwrap();
    // The key and the certificate swapped.
    assert!(tls::server_config(&a.server_key, &a.server_cert).is_err());
    // A party handed the key instead of the CA certificate.
    let e = tls::client_config(&a.server_key, "127.0.0.1")
        .unwrap_err()
        .to_string();
    assert!(e.contains("private key"), "{e}");
    // Garbage, an empty file, PEM with a broken body, a missing file.
    let bad = dir.path().join("bad.pem");
    for body in [
        &b""[..],
        b"garbage",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
    ] {
        std::fs::write(&bad, body).unwrap();
        let e = tls::client_config(&bad, "127.0.0.1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad.pem"), "{body:?}: {e}");
        let e = tls::server_config(&bad, &a.server_key)
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad.pem"), "{body:?}: {e}");
    }
    let e = tls::client_config(&dir.path().join("missing.pem"), "127.0.0.1")
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.pem"), "{e}");
    // A server name that cannot be dialled.
    assert!(tls::client_config(&a.ca_cert, "").is_err());
}

#[test]
fn a_silent_connection_is_dropped_at_the_handshake_deadline_while_others_are_served() {
    use std::io::Read;
    let ours = made(&["127.0.0.1"]);
    let (_rt, hub, addr) = coordinator(Some(ours.server_config().unwrap()));
    // A peer that opens a socket and never says hello.
    let mut silent = std::net::TcpStream::connect(addr).unwrap();
    silent
        .set_read_timeout(Some(tls::HANDSHAKE_TIMEOUT * 3))
        .unwrap();
    let opened = Instant::now();
    // Meanwhile a party gets its session.
    let t = task();
    let d = dial(
        format!("https://{addr}"),
        Some(ours.client_config("127.0.0.1").unwrap()),
    );
    assert_eq!(session_of(&hub, 2, &t, &d).unwrap(), "the test is over");
    // The coordinator closes the silent connection at the deadline, not later.
    let mut buf = [0u8; 16];
    let n = silent
        .read(&mut buf)
        .expect("closed, not timed out on our side");
    assert_eq!(n, 0, "the server sent {:?}", &buf[..n]);
    let waited = opened.elapsed();
    assert!(
        waited >= tls::HANDSHAKE_TIMEOUT - Duration::from_secs(1)
            && waited < tls::HANDSHAKE_TIMEOUT * 3,
        "closed after {waited:?}"
    );
}
