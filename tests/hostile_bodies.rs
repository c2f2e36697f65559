//! Hostile request bodies (issue 18) against the real binary, whose memory and threads are its
//! own process's: the issue's `curl` (a declared body never sent: 413, and the process lives) and
//! 64 clients holding gigabyte declarations open (RSS and the dispatcher unaffected). tiny_http
//! 0.12.0 drains an unread body on whatever thread drops the request, into a buffer of the
//! declared size (src/util/equal_reader.rs:70): on its bare behaviour the first test aborts the
//! process and the second freezes the dispatcher. The in-process cases are in tests/it/bodies.rs.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::raw::{declare, exchange, fds, read_all, rss_kib, threads};
use common::{unique, wait_for, KillOnDrop, RunDir, Sse, PATIENCE};

const T: &str = r#"{"alarm":true}"#;
const F: &str = r#"{"alarm":false}"#;

/// The real binary, started with `args`.
struct Binary {
    child: KillOnDrop,
    addr: SocketAddr,
    _run: RunDir,
}

impl Binary {
    fn start(args: &[&str]) -> Binary {
        let run = RunDir::new("syncast-bodies-");
        let mut cmd = common::syncast_bin();
        cmd.args(["--listen", "127.0.0.1:0"]).args(args);
        let mut child = run.server_args(&mut cmd).spawn().unwrap();
        let addr = common::listen_addr(&mut child);
        Binary {
            child: KillOnDrop(child),
            addr,
            _run: run,
        }
    }

    fn pid(&self) -> u32 {
        self.child.0.id()
    }

    fn alive(&mut self) -> bool {
        self.child.0.try_wait().unwrap().is_none()
    }

    /// A whole request on its own connection; the status of the answer (0: none).
    fn status(&self, request: &str) -> u16 {
        let got = exchange(self.addr, request.as_bytes(), false, PATIENCE);
        got.statuses().first().copied().unwrap_or(0)
    }

    fn put(&self, id: &str, value: bool) -> u16 {
        let v = if value { "true" } else { "false" };
        self.status(&format!(
            "PUT /alarms/{id} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{v}",
            v.len()
        ))
    }

    fn healthz(&self) -> u16 {
        self.status("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    }

    /// Waits until the process is down to at most `threads` threads (tiny_http's idle pool
    /// threads exit 5 s after their last connection).
    fn settle_threads(&self, at_most: u64) {
        let pid = self.pid();
        wait_for("the process back to its threads", || {
            (threads(pid) <= at_most).then_some(())
        });
    }
}

#[test]
fn the_issue_request_gets_413_and_a_stream_is_served_through_it() {
    let mut bin = Binary::start(&["--tick", "30s"]);
    let id = unique("through");
    let mut sse = Sse::open(bin.addr, &format!("/sse/call/{id}?mode=change"), &[]);
    assert_eq!(sse.next_data(), F);
    let url = format!("http://{}/chat/join", bin.addr);
    // The issue's own command, when curl is installed; a raw socket doing the same otherwise.
    let curl = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "20"])
        .args(["-X", "POST", "-H", "Content-Length: 99999999999"])
        .args(["--data-binary", "x", &url])
        .output();
    let status = match curl {
        Ok(out) => String::from_utf8_lossy(&out.stdout).trim().to_string(),
        Err(_) => {
            let mut sock = declare(bin.addr, "POST /chat/join HTTP/1.1", "99999999999", b"x");
            let got = read_all(&mut sock, PATIENCE);
            assert!(got.closed);
            got.statuses()
                .first()
                .map(u16::to_string)
                .unwrap_or_default()
        }
    };
    assert_eq!(status, "413");
    assert!(bin.alive(), "the process died");
    // The stream opened before is still served, and so is everything else.
    assert_eq!(bin.put(&id, true), 204);
    assert_eq!(sse.next_data(), T);
    assert_eq!(bin.healthz(), 200);
    assert!(bin.alive());
}

#[test]
fn sixty_four_declared_gigabytes_cost_no_memory_and_never_hold_the_dispatcher() {
    let mut bin = Binary::start(&["--tick", "30s"]);
    let pid = bin.pid();
    // Warm up the paths the test takes (their code pages count in RSS), then let tiny_http's pool
    // threads expire.
    for _ in 0..3 {
        drop(declare(
            bin.addr,
            "POST /chat/join HTTP/1.1",
            "1000000000",
            b"abc",
        ));
        assert_eq!(bin.healthz(), 200);
    }
    let baseline_threads = 8;
    bin.settle_threads(baseline_threads);
    let rss_before = rss_kib(pid);
    let id = unique("busy");
    let mut sse = Sse::open(bin.addr, &format!("/sse/call/{id}?mode=change"), &[]);
    assert_eq!(sse.next_data(), F);
    // 64 clients declare bodies and send a few bytes: 48 declare 1 GB (413), 16 declare 60 KB
    // on routes answered inline without reading a body (200, 404, 405). None sends more, none
    // closes.
    let mut held: Vec<(TcpStream, u16)> = Vec::new();
    for i in 0..64 {
        let (line, length, status) = match i % 4 {
            0 => ("GET /healthz HTTP/1.1", "60000", 200),
            1 if i % 8 == 1 => ("POST /nowhere HTTP/1.1", "60000", 404),
            1 => ("POST /chat/users HTTP/1.1", "60000", 405),
            _ => ("POST /chat/join HTTP/1.1", "1000000000", 413),
        };
        held.push((declare(bin.addr, line, length, b"abc"), status));
    }
    // Meanwhile the dispatcher serves: the stream gets its flips, requests their answers, fast.
    for round in 0..5 {
        let started = Instant::now();
        assert_eq!(bin.put(&id, round % 2 == 0), 204);
        assert_eq!(sse.next_data(), if round % 2 == 0 { T } else { F });
        assert_eq!(bin.healthz(), 200);
        let took = started.elapsed();
        assert!(took < Duration::from_secs(5), "round {round} took {took:?}");
    }
    // Each holder got its answer and the server closed the connection (its body unread).
    for (sock, status) in held.iter_mut() {
        let got = read_all(sock, PATIENCE);
        assert!(got.closed, "not closed: {}", got.text);
        assert_eq!(got.statuses(), vec![*status], "{}", got.text);
    }
    drop(held);
    assert!(bin.alive());
    drop(sse);
    bin.settle_threads(baseline_threads);
    let rss_after = rss_kib(pid);
    eprintln!("RSS before {rss_before} KiB, after {rss_after} KiB");
    assert!(
        rss_after < rss_before + 4 * 1024,
        "RSS {rss_before} -> {rss_after} KiB"
    );
}

#[test]
fn lengths_past_the_address_space_leave_no_thread_or_descriptor_behind() {
    let mut bin = Binary::start(&["--tick", "30s"]);
    let pid = bin.pid();
    // 2^62, 10^15 and isize::MAX bytes: more than any address space maps, so tiny_http's drain
    // (`vec![0; n]`) gets a guarded window from the allocator (syncast::alloc) rather than a
    // refusal that aborts the process; the request is dropped like any other. (Before the
    // window such requests were kept for good: each a thread and two descriptors.)
    const LENGTHS: [&str; 3] = [
        "4611686018427387904",
        "1000000000000000",
        "9223372036854775807",
    ];
    let send = |length: &str| {
        let mut sock = declare(bin.addr, "POST /chat/join HTTP/1.1", length, b"x");
        let got = read_all(&mut sock, PATIENCE);
        assert_eq!(got.statuses(), vec![413], "{length}: {}", got.text);
        assert!(got.closed, "{length}: not closed");
    };
    // Warm up the paths (their code pages count in RSS), then let tiny_http's pool settle.
    for length in LENGTHS {
        send(length);
    }
    assert_eq!(bin.healthz(), 200);
    bin.settle_threads(8);
    let (threads_before, fds_before, rss_before) = (threads(pid), fds(pid), rss_kib(pid));
    for i in 0..30 {
        send(LENGTHS[i % LENGTHS.len()]);
    }
    assert!(bin.alive(), "the process died");
    assert_eq!(bin.healthz(), 200);
    wait_for("threads and descriptors back to their baseline", || {
        (threads(pid) <= threads_before && fds(pid) <= fds_before).then_some(())
    });
    let rss_after = rss_kib(pid);
    eprintln!(
        "threads {threads_before} -> {}, descriptors {fds_before} -> {}, RSS {rss_before} -> \
         {rss_after} KiB after 30 declared lengths past the address space",
        threads(pid),
        fds(pid)
    );
    assert!(
        rss_after < rss_before + 4 * 1024,
        "RSS {rss_before} -> {rss_after} KiB"
    );
    let metrics = exchange(
        bin.addr,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        false,
        PATIENCE,
    );
    let windows = common::metric_in(metrics.body(), "syncast_alloc_windows_total");
    assert!(windows >= Some(33.0), "windows made: {windows:?}");
}
