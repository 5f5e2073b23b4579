#![cfg(feature = "anvil")]
//! The anvil helper against a real anvil: it answers when `start` returns, and is gone after
//! drop. `cargo test -p cohort-testkit --features anvil`; needs anvil (see `find_anvil`), and
//! `COHORT_SKIP_ANVIL=1` turns the test into a printed skip when there is none.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use cohort_testkit::Anvil;
use serde_json::json;

#[test]
fn anvil_answers_when_started_and_is_gone_after_drop() {
    let Some(anvil) = Anvil::start_with("anvil_answers", &["--chain-id", "4242"]) else {
        return;
    };
    assert_eq!(anvil.url(), format!("http://127.0.0.1:{}", anvil.port()));
    // The extra arguments reach anvil.
    assert_eq!(
        anvil.result("eth_chainId", json!([])),
        Some(json!(format!("0x{:x}", 4242)))
    );
    // An error answer is an object with `error`, and no `result`.
    let e = anvil.rpc("no_such_method", json!([])).expect("an answer");
    assert!(e.get("error").is_some(), "{e}");
    assert_eq!(anvil.result("no_such_method", json!([])), None);

    // Two at once get different ports.
    let other = Anvil::start("anvil_answers (second)").expect("found once, found twice");
    assert_ne!(other.port(), anvil.port());
    drop(other);

    let port = anvil.port();
    drop(anvil);
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "anvil still listens on {port} after drop"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
