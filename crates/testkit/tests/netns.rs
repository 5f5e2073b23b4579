//! The namespace lab itself: a link carries traffic between its two namespaces only, the
//! relay delays each direction by what it is told, and a 100% loss rule stops everything.
//! Needs root, `ip` and `nft` (skips elsewhere unless `COHORT_REQUIRE_NETNS` is set).

#![allow(clippy::unwrap_used, clippy::expect_used)]
#![cfg(target_os = "linux")]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use cohort_testkit::netns::Lab;

/// One ping through `to` and its echo, from a thread in `ns`; `None` if it fails in 2 s.
fn round_trip(lab: &Lab, ns: &str, to: SocketAddr) -> Option<Duration> {
    lab.thread(ns, move || {
        let t = Instant::now();
        let mut c = TcpStream::connect_timeout(&to, Duration::from_secs(2)).ok()?;
        c.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        c.write_all(b"ping").ok()?;
        let mut got = [0u8; 4];
        c.read_exact(&mut got).ok()?;
        (&got == b"ping").then(|| t.elapsed())
    })
    .join()
    .unwrap()
}

#[test]
fn links_relays_and_loss_do_what_they_say() {
    let Some(mut lab) = Lab::start("links_relays_and_loss_do_what_they_say") else {
        return;
    };
    let a = lab.namespace("ta");
    let b = lab.namespace("tb");
    let (ia, _) = lab.link(&a, "10.78.0.1/24", &b, "10.78.0.2/24");
    // An echo server in b.
    let (tx, rx) = std::sync::mpsc::channel();
    let _echo = lab.thread(&b, move || {
        let l = TcpListener::bind("10.78.0.2:0").unwrap();
        tx.send(l.local_addr().unwrap()).unwrap();
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 || c.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let echo = rx.recv().unwrap();
    // Not reachable from this namespace; reachable from a, directly in well under 40 ms.
    assert!(TcpStream::connect_timeout(&echo, Duration::from_millis(300)).is_err());
    let direct = round_trip(&lab, &a, echo).expect("a reaches b over the link");
    assert!(direct < Duration::from_millis(40), "{direct:?}");
    // Through a relay in a that delays each direction by 40 ms.
    let relay = lab.relay(
        &a,
        "127.0.0.1:0".parse().unwrap(),
        echo,
        Duration::from_millis(40),
    );
    let slow = round_trip(&lab, &a, relay).expect("the echo answers through the relay");
    assert!(
        slow >= Duration::from_millis(80) && slow < Duration::from_secs(1),
        "a round trip of {slow:?} through a 40 ms relay"
    );
    // Every packet a sends on the link dropped: nothing gets through, and the rule counts.
    lab.loss(&a, &ia, 100);
    assert_eq!(round_trip(&lab, &a, echo), None);
    assert!(lab.dropped(&a, &ia) > 0);
}
