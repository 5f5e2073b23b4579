//! Several hosts on one machine: Linux network namespaces joined by veth pairs, packet loss
//! from the kernel's packet filter (nftables `numgen random`) and delay from a userspace relay
//! (this kernel has no netem). Needs root, `ip` (iproute2) and `nft` (nftables); `.ci/run`
//! installs them and sets `COHORT_REQUIRE_NETNS=1`, so that CI fails rather than skips.
//!
//! Every namespace and link is the lab's own (named `coh<pid>x<lab>…`) and is deleted when the
//! [`Lab`] is dropped: traffic stays on addresses the lab made, in namespaces the lab made.
//!
//! ```no_run
//! let Some(mut lab) = cohort_testkit::netns::Lab::start("my_test") else {
//!     return; // not root, or no ip/nft, and COHORT_REQUIRE_NETNS unset: a printed skip
//! };
//! let a = lab.namespace("a");
//! let b = lab.namespace("b");
//! let (_, ifb) = lab.link(&a, "10.77.0.1/24", &b, "10.77.0.2/24");
//! lab.loss(&b, &ifb, 1); // 1% of b's packets on that link are dropped
//! let out = lab.exec(&a, "ip").args(["addr"]).output().unwrap();
//! # let _ = out;
//! ```

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Why namespaces cannot be made here, or `None` when they can.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    #[allow(unsafe_code)]
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    for tool in ["ip", "nft"] {
        let found = Command::new(tool)
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Some(format!("`{tool}` is not installed"));
        }
    }
    None
}

/// A set of namespaces and links, deleted on drop.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    /// The start of its interfaces' names (at most 15 bytes each).
    tag: String,
    namespaces: Vec<String>,
    links: usize,
    relays: Vec<Relay>,
}

impl Lab {
    /// A lab for `test`; `None` (with a line on stderr) where namespaces cannot be made and
    /// `COHORT_REQUIRE_NETNS` is unset.
    ///
    /// # Panics
    /// Where namespaces cannot be made and `COHORT_REQUIRE_NETNS` is set.
    pub fn start(test: &str) -> Option<Self> {
        if let Some(why) = unavailable() {
            assert!(
                std::env::var_os("COHORT_REQUIRE_NETNS").is_none(),
                "{test}: network namespaces are required (COHORT_REQUIRE_NETNS) but {why}"
            );
            eprintln!("skipping {test}: network namespaces need root, ip and nft ({why})");
            return None;
        }
        // Labs in one process (tests run in parallel) get names of their own.
        static LABS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = LABS.fetch_add(1, Ordering::Relaxed);
        Some(Self {
            prefix: format!("coh{}x{n}", std::process::id()),
            tag: format!("v{}x{n}", std::process::id() % 10_000),
            namespaces: Vec::new(),
            links: 0,
            relays: Vec::new(),
        })
    }

    /// A new namespace (its loopback up); returns its full name.
    ///
    /// # Panics
    /// When `ip` fails.
    pub fn namespace(&mut self, name: &str) -> String {
        let ns = format!("{}{name}", self.prefix);
        run("ip", &["netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        run("ip", &["-n", &ns, "link", "set", "lo", "up"]);
        ns
    }

    /// A veth pair between namespaces `a` and `b` with the addresses (CIDR) given, both up;
    /// returns the interface names in `a` and in `b`.
    ///
    /// # Panics
    /// When `ip` fails.
    pub fn link(&mut self, a: &str, a_addr: &str, b: &str, b_addr: &str) -> (String, String) {
        self.links += 1;
        let (ia, ib) = (
            format!("{}a{}", self.tag, self.links),
            format!("{}b{}", self.tag, self.links),
        );
        run(
            "ip",
            &[
                "link", "add", &ia, "netns", a, "type", "veth", "peer", "name", &ib, "netns", b,
            ],
        );
        for (ns, i, addr) in [(a, &ia, a_addr), (b, &ib, b_addr)] {
            run("ip", &["-n", ns, "addr", "add", addr, "dev", i]);
            run("ip", &["-n", ns, "link", "set", i, "up"]);
        }
        (ia, ib)
    }

    /// Drops `percent`% of the packets namespace `ns` sends out of `interface`, at random
    /// (nftables `numgen random`).
    ///
    /// # Panics
    /// When `nft` fails, or `percent` is 0 or over 100.
    pub fn loss(&self, ns: &str, interface: &str, percent: u32) {
        assert!((1..=100).contains(&percent), "a loss of {percent}%");
        let table = format!("loss_{interface}");
        run(
            "ip",
            &["netns", "exec", ns, "nft", "add", "table", "inet", &table],
        );
        run(
            "ip",
            &[
                "netns",
                "exec",
                ns,
                "nft",
                "add chain inet",
                &table,
                "out { type filter hook output priority 0 ; }",
            ],
        );
        run(
            "ip",
            &[
                "netns",
                "exec",
                ns,
                "nft",
                "add rule inet",
                &table,
                "out",
                &if percent >= 100 {
                    format!("oifname \"{interface}\" counter drop")
                } else {
                    format!(
                        "oifname \"{interface}\" numgen random mod 100 < {percent} counter drop"
                    )
                },
            ],
        );
    }

    /// Packets the [`loss`](Self::loss) rule of `ns` and `interface` has dropped so far.
    ///
    /// # Panics
    /// When `nft` fails or there is no such rule.
    pub fn dropped(&self, ns: &str, interface: &str) -> u64 {
        let o = self
            .exec(ns, "nft")
            .args(["list", "table", "inet", &format!("loss_{interface}")])
            .output()
            .unwrap_or_else(|e| panic!("nft: {e}"));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let text = String::from_utf8_lossy(&o.stdout);
        text.split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no counter in {text}"))
    }

    /// A command run inside namespace `ns`.
    pub fn exec(&self, ns: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, program]);
        c
    }

    /// Runs `f` on a new thread inside namespace `ns`: the sockets it makes are that
    /// namespace's.
    ///
    /// # Panics
    /// In the thread, when the namespace cannot be entered.
    pub fn thread<T: Send + 'static>(
        &self,
        ns: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<T> {
        let ns = ns.to_owned();
        std::thread::spawn(move || {
            enter(&ns).unwrap_or_else(|e| panic!("entering {ns}: {e}"));
            f()
        })
    }

    /// A TCP relay inside namespace `ns`, listening on `listen` and forwarding every
    /// connection to `to`, each byte `delay` later in each direction; it lives as long as the
    /// lab. Returns the address it listens on.
    ///
    /// # Panics
    /// When the namespace cannot be entered or the address cannot be bound.
    pub fn relay(
        &mut self,
        ns: &str,
        listen: SocketAddr,
        to: SocketAddr,
        delay: Duration,
    ) -> SocketAddr {
        let relay = Relay::start(ns, listen, to, delay);
        let addr = relay.addr;
        self.relays.push(relay);
        addr
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for r in self.relays.drain(..) {
            drop(r);
        }
        for ns in self.namespaces.drain(..) {
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        }
    }
}

fn run(program: &str, args: &[&str]) {
    // nft takes its command as words; split the ones given together.
    let words: Vec<&str> = if program == "ip" && args.contains(&"nft") {
        args.iter().flat_map(|a| a.split(' ')).collect()
    } else {
        args.to_vec()
    };
    let o = Command::new(program)
        .args(&words)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        o.status.success(),
        "{program} {}: {}",
        words.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Moves the calling thread into network namespace `ns`: the sockets it creates from now on
/// are that namespace's.
fn enter(ns: &str) -> std::io::Result<()> {
    let f = std::fs::File::open(format!("/var/run/netns/{ns}"))?;
    // SAFETY: a valid namespace file descriptor, held open for the call; setns changes only
    // the calling thread's network namespace.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[derive(Debug)]
struct Relay {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Relay {
    fn start(ns: &str, listen: SocketAddr, to: SocketAddr, delay: Duration) -> Self {
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let ns = ns.to_owned();
        let halt = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let bound = enter(&ns).and_then(|()| TcpListener::bind(listen));
            let listener = match bound {
                Ok(l) => l,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let _ = listener.set_nonblocking(true);
            let _ = tx.send(listener.local_addr());
            while !halt.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((inbound, _)) => {
                        let _ = inbound.set_nonblocking(false);
                        // This thread is in the namespace: the outbound socket is too.
                        if let Ok(outbound) = TcpStream::connect(to) {
                            pipe(&ns, &inbound, &outbound, delay);
                            pipe(&ns, &outbound, &inbound, delay);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        let addr = rx
            .recv()
            .expect("the relay thread starts")
            .unwrap_or_else(|e| panic!("relay in {listen}: {e}"));
        Self {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Copies `from` to `to`, each chunk `delay` after it was read (order kept); on EOF or an
/// error, shuts down `to`'s writing side.
fn pipe(ns: &str, from: &TcpStream, to: &TcpStream, delay: Duration) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let ns_w = ns.to_owned();
    std::thread::spawn(move || {
        let _ = enter(&ns_w);
        for (due, chunk) in rx {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    });
}
