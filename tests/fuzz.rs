//! Seeded fuzz: a few thousand malformed or hostile requests, each on its own connection, against
//! the real binary, while a normal client streams and makes requests. Afterwards the server is
//! alive, never answered 500, served the normal client throughout, and is back to its threads.
//!
//! `SYNCAST_FUZZ_SEED` picks the seed (printed at the start), `SYNCAST_FUZZ_CASES` the number of
//! cases (default 3000). Every case is a pure function of the seed and its number, so a failing
//! case can be regenerated (`SYNCAST_FUZZ_SHOW=N` prints case N and stops).
//!
//! Left out of the generator on purpose, with a test of their own: the versions `HTTP/2.0` and
//! `HTTP/3.0`. tiny_http 0.12.0 deadlocks a pool thread on any request line with either, for good
//! (tests/http2_deadlock.rs), which would leave threads behind by design — what this test checks
//! never happens. Declared lengths past the address space (up to `isize::MAX`) are in: their
//! drain gets a guarded window (syncast::alloc) and leaves nothing behind.

mod common;

use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::raw::{exchange, read_all, threads};
use common::{unique, wait_for_within, KillOnDrop, RunDir, Sse};

const DEFAULT_SEED: u64 = 0x5eed_0018;
const DEFAULT_CASES: u64 = 3000;
/// The fuzzing itself stops after this long, whatever the count (the machine may be loaded).
const BUDGET: Duration = Duration::from_secs(40);
const WORKERS: usize = 12;

/// splitmix64: small, fast, and the same everywhere.
struct Rng(u64);

impl Rng {
    fn new(seed: u64, case: u64) -> Rng {
        Rng(seed ^ case.wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    fn token(&mut self, n: usize) -> String {
        const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.~";
        (0..n).map(|_| *self.pick(CHARS) as char).collect()
    }
}

const METHODS: &[&str] = &[
    "GET", "GET", "GET", "POST", "POST", "PUT", "DELETE", "OPTIONS", "HEAD", "PATCH", "TRACE",
    "CONNECT", "PRI", "get", "G ET", "", "FOO", "\u{e9}T", "GET\tX",
];
// Never "HTTP/2.0" or "HTTP/3.0": see the module documentation.
const VERSIONS: &[&str] = &[
    "HTTP/1.1",
    "HTTP/1.1",
    "HTTP/1.1",
    "HTTP/1.0",
    "HTTP/0.9",
    "HTTP/1.2",
    "HTTP/11",
    "http/1.1",
    "",
    "HTTP/1.1 ",
    "HTTP/",
    "HTTP/1.1 extra",
];
const PATHS: &[&str] = &[
    "/",
    "/healthz",
    "/metrics",
    "/debug/threads",
    "/sse/call/",
    "/alarms/",
    "/chat/stream",
    "/chat/join",
    "/chat/messages",
    "/chat/name",
    "/chat/leave",
    "/chat/users",
    "/nowhere/",
    "*",
    "http://x/healthz",
    "",
];
const ESCAPES: &[&str] = &[
    "%zz",
    "%4",
    "%",
    "%c3%28",
    "%ff",
    "%00",
    "%0d%0a",
    "%2F",
    "%25",
    "+",
    "%e2%82",
    "%F0%9F%98%80",
];
const HEADER_NAMES: &[&str] = &[
    "Host",
    "Content-Type",
    "Authorization",
    "Last-Event-ID",
    "Origin",
    "Expect",
    "Connection",
    "Accept",
    "Cookie",
    "X-Syncast-Probe",
    "Access-Control-Request-Method",
    "TE",
    "Upgrade",
];
const LENGTHS: &[&str] = &[
    "0",
    "5",
    "1024",
    "1025",
    "65536",
    "65537",
    "1000000000",
    "99999999999",
    // Past what any address space maps, up to isize::MAX: a guarded window.
    "1000000000000000",
    "4611686018427387904",
    "9223372036854775807",
    "18446744073709551615",
    "18446744073709551616",
    "-1",
    "+5",
    "abc",
    "",
    " 5",
    "5 5",
    "5, 5",
    "0x10",
];
const TRANSFER_ENCODINGS: &[&str] = &[
    "chunked",
    "Chunked",
    "gzip",
    "chunked, gzip",
    "gzip, chunked",
    "identity",
    "",
];
const EVENT_IDS: &[&str] = &[
    "-1",
    "0",
    "99999999999999999999999",
    "18446744073709551615",
    "18446744073709551616",
    "abc",
    "1e10",
    " ",
    "١٢٣",
    "0x10",
    "+1",
];
const CHUNKS: &[&str] = &[
    "5\r\nhello\r\n0\r\n\r\n",
    "ffffffffffffffff\r\nabc",
    "10000000000000000\r\nabc\r\n",
    "zz\r\nabc\r\n0\r\n\r\n",
    "5\r\nhel",
    "5\r\nhelloXX0\r\n\r\n",
    "-1\r\n\r\n",
    "5;ext=\"\r\nhello\r\n0\r\n\r\n",
    "0\r\n",
    "3\r\nabc\r\n0\r\nTrailer: x\r\n\r\n",
];

/// One case: the bytes to send, in how many pieces, and whether to half-close after them.
struct Case {
    bytes: Vec<u8>,
    pieces: usize,
    half_close: bool,
}

fn case(seed: u64, n: u64) -> Case {
    let mut rng = Rng::new(seed, n);
    let bytes = loop {
        let b = request(&mut rng);
        // A random byte string can spell the excluded tokens only by a fluke; skip it then.
        let lower = String::from_utf8_lossy(&b).to_ascii_lowercase();
        if !lower.contains("http/2.0") && !lower.contains("http/3.0") {
            break b;
        }
    };
    Case {
        bytes,
        pieces: 1 + rng.below(3),
        half_close: rng.chance(75),
    }
}

fn request(rng: &mut Rng) -> Vec<u8> {
    if rng.chance(10) {
        // Random bytes, sometimes after a plausible start.
        let mut b = if rng.chance(50) {
            b"GET / HTTP/1.1\r\n".to_vec()
        } else {
            Vec::new()
        };
        let n = rng.below(2000);
        b.extend(rng.bytes(n));
        // No Content-Length by accident (see LENGTHS).
        if String::from_utf8_lossy(&b)
            .to_ascii_lowercase()
            .contains("content-length")
        {
            return b"\r\n\r\n".to_vec();
        }
        return b;
    }
    let mut out: Vec<u8> = Vec::new();
    // Mostly well-formed request lines, so most cases reach syncast's own checks and routes.
    let method = if rng.chance(70) {
        *rng.pick(&METHODS[..11])
    } else {
        *rng.pick(METHODS)
    };
    out.extend(method.as_bytes());
    out.push(b' ');
    out.extend(target(rng));
    out.push(b' ');
    out.extend(
        if rng.chance(80) {
            "HTTP/1.1"
        } else {
            *rng.pick(VERSIONS)
        }
        .as_bytes(),
    );
    out.extend(b"\r\n");
    let mut body: Vec<u8> = Vec::new();
    if rng.chance(90) {
        out.extend(b"Host: x\r\n");
    }
    let headers = match rng.below(10) {
        0 => 100 + rng.below(300),
        1 => 20 + rng.below(80),
        _ => rng.below(6),
    };
    for _ in 0..headers {
        header(rng, &mut out);
    }
    match rng.below(6) {
        0 => {
            let cl = *rng.pick(LENGTHS);
            out.extend(format!("Content-Length: {cl}\r\n").as_bytes());
            if rng.chance(20) {
                let again = *rng.pick(LENGTHS);
                out.extend(format!("Content-Length: {again}\r\n").as_bytes());
            }
            let n = cl.trim().parse::<usize>().unwrap_or(5).min(70_000);
            let send = if rng.chance(70) { n } else { rng.below(n + 10) };
            body.extend(plausible_body(rng, send));
        }
        1 => {
            out.extend(
                format!("Transfer-Encoding: {}\r\n", rng.pick(TRANSFER_ENCODINGS)).as_bytes(),
            );
            if rng.chance(15) {
                out.extend(b"Transfer-Encoding: chunked\r\n");
            }
            if rng.chance(15) {
                out.extend(format!("Content-Length: {}\r\n", rng.pick(LENGTHS)).as_bytes());
            }
            body.extend(rng.pick(CHUNKS).as_bytes());
        }
        2 => {
            let n = 1 + rng.below(40);
            let text = plausible_body(rng, n);
            out.extend(format!("Content-Length: {}\r\n", text.len()).as_bytes());
            body.extend(text);
        }
        _ => {}
    }
    if rng.chance(10) {
        out.extend(format!("Last-Event-ID: {}\r\n", rng.pick(EVENT_IDS)).as_bytes());
    }
    if rng.chance(8) {
        let n = rng_len(rng);
        out.extend(format!("Authorization: Bearer {}\r\n", rng.token(n)).as_bytes());
    }
    if rng.chance(5) {
        out.extend(b"Expect: 100-continue\r\n");
    }
    if rng.chance(95) {
        out.extend(b"\r\n");
    }
    out.extend(body);
    if rng.chance(10) {
        // Something after: a pipelined request or garbage.
        if rng.chance(50) {
            out.extend(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        } else {
            let n = rng.below(300);
            out.extend(rng.bytes(n));
        }
    }
    out
}

fn rng_len(rng: &mut Rng) -> usize {
    match rng.below(4) {
        0 => 0,
        1 => 1 + rng.below(10),
        2 => 64,
        _ => 1 + rng.below(300),
    }
}

fn target(rng: &mut Rng) -> Vec<u8> {
    let mut t: Vec<u8> = rng.pick(PATHS).as_bytes().to_vec();
    if t.ends_with(b"/") && t.len() > 1 {
        t.extend(segment(rng));
    }
    match rng.below(8) {
        0 => {
            // Invalid UTF-8 straight in the path.
            t.extend([0xff, 0xc3, 0x28]);
        }
        1 => {
            // A huge query string.
            t.extend(b"?q=");
            let n = 1000 + rng.below(100_000);
            t.extend(std::iter::repeat_n(b'a', n));
        }
        2 | 3 => {
            t.push(b'?');
            for i in 0..1 + rng.below(4) {
                if i > 0 {
                    t.push(b'&');
                }
                let key = *rng.pick(&["mode", "name", "token", "last_event_id", "x"]);
                t.extend(key.as_bytes());
                t.push(b'=');
                t.extend(segment(rng));
            }
        }
        _ => {}
    }
    t
}

/// A path segment or query value: a token, escapes, or both.
fn segment(rng: &mut Rng) -> Vec<u8> {
    let mut s = Vec::new();
    for _ in 0..1 + rng.below(4) {
        if rng.chance(40) {
            s.extend(rng.pick(ESCAPES).as_bytes());
        } else if rng.chance(10) {
            s.extend(rng.pick(EVENT_IDS).as_bytes());
        } else {
            let n = rng_len(rng).min(80);
            s.extend(rng.token(n).as_bytes());
        }
    }
    s
}

fn header(rng: &mut Rng, out: &mut Vec<u8>) {
    let name: Vec<u8> = match rng.below(20) {
        0 | 10 => {
            let n = 1 + rng.below(20);
            rng.token(n).into_bytes()
        }
        1 => b"Bad Name".to_vec(),
        2 => vec![0xc3, 0xa9, b'x'],
        3 => Vec::new(),
        _ => rng.pick(HEADER_NAMES).as_bytes().to_vec(),
    };
    let value: Vec<u8> = match rng.below(16) {
        0 => {
            let n = rng.below(40);
            rng.bytes(n)
        }
        1 => b"a\rb".to_vec(),
        2 => b"a\0b".to_vec(),
        3 => std::iter::repeat_n(b'v', 1000 + rng.below(20_000)).collect(),
        4 => b"upgrade".to_vec(),
        5 => b"close".to_vec(),
        _ => {
            let n = rng_len(rng);
            rng.token(n).into_bytes()
        }
    };
    out.extend(name);
    out.extend(b": ");
    out.extend(value);
    out.extend(b"\r\n");
}

fn plausible_body(rng: &mut Rng, n: usize) -> Vec<u8> {
    match rng.below(4) {
        0 => b"true".iter().copied().cycle().take(n).collect(),
        1 => rng.bytes(n),
        _ => rng.token(n).into_bytes(),
    }
}

/// Sends one case; the status codes of whatever came back.
fn run_case(addr: SocketAddr, c: &Case) -> Vec<u16> {
    let Ok(mut sock) = TcpStream::connect(addr) else {
        return Vec::new();
    };
    let piece = c.bytes.len().div_ceil(c.pieces).max(1);
    for chunk in c.bytes.chunks(piece) {
        if sock.write_all(chunk).is_err() {
            break;
        }
    }
    if c.half_close {
        let _ = sock.shutdown(Shutdown::Write);
        // A stream answers and goes on: its head is enough.
        read_all(&mut sock, Duration::from_secs(2)).statuses()
    } else {
        // Close at once, reading nothing (sometimes after a moment).
        if c.bytes.len().is_multiple_of(2) {
            std::thread::sleep(Duration::from_millis(20));
        }
        Vec::new()
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

#[test]
fn thousands_of_hostile_requests_leave_the_server_alive_correct_and_lean() {
    let seed = env_u64("SYNCAST_FUZZ_SEED").unwrap_or(DEFAULT_SEED);
    let cases = env_u64("SYNCAST_FUZZ_CASES").unwrap_or(DEFAULT_CASES);
    // Straight to the stderr descriptor, so the seed shows even when the test passes.
    let _ = writeln!(
        std::io::stderr(),
        "fuzz: seed {seed:#x}, {cases} cases (SYNCAST_FUZZ_SEED / SYNCAST_FUZZ_CASES to change)"
    );
    if let Some(n) = env_u64("SYNCAST_FUZZ_SHOW") {
        let c = case(seed, n);
        let _ = writeln!(
            std::io::stderr(),
            "case {n}: {:?}",
            String::from_utf8_lossy(&c.bytes)
        );
        return;
    }
    let run = RunDir::new("syncast-fuzz-");
    let mut cmd = common::syncast_bin();
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--tick",
        "30s",
        "--header-timeout",
        "2s",
    ]);
    let mut child = run.server_args(&mut cmd).spawn().unwrap();
    let addr = common::listen_addr(&mut child);
    let mut child = KillOnDrop(child);
    let pid = child.0.id();

    // The normal client: a stream that must see every flip, and requests, throughout.
    let id = unique("normal");
    let mut sse = Sse::open(addr, &format!("/sse/call/{id}?mode=change"), &[]);
    assert_eq!(sse.next_data(), r#"{"alarm":false}"#);
    // Its threads, once tiny_http's pool has settled: what the server must come back to.
    let settle = Duration::from_secs(20);
    let baseline = {
        std::thread::sleep(Duration::from_secs(6));
        threads(pid)
    };
    let done = Arc::new(AtomicBool::new(false));
    let worst = Arc::new(Mutex::new((Duration::ZERO, 0u64)));
    let normal = {
        let (done, worst, id) = (done.clone(), worst.clone(), id.clone());
        std::thread::spawn(move || {
            let mut flips = 0u64;
            while !done.load(Ordering::Relaxed) {
                let started = Instant::now();
                let value = flips.is_multiple_of(2);
                let body = if value { "true" } else { "false" };
                let put = format!(
                    "PUT /alarms/{id} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let got = exchange(addr, put.as_bytes(), false, Duration::from_secs(20));
                assert_eq!(got.statuses(), vec![204], "normal PUT: {}", got.text);
                let data = sse.next_data();
                assert_eq!(data, format!("{{\"alarm\":{body}}}"), "normal stream");
                let h = exchange(
                    addr,
                    b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                    false,
                    Duration::from_secs(20),
                );
                assert_eq!(h.statuses(), vec![200], "normal GET: {}", h.text);
                flips += 1;
                let took = started.elapsed();
                let mut w = worst.lock().unwrap();
                if took > w.0 {
                    w.0 = took;
                }
                w.1 = flips;
                drop(w);
                std::thread::sleep(Duration::from_millis(200));
            }
            sse
        })
    };

    let next = Arc::new(AtomicU64::new(0));
    let statuses = Arc::new(Mutex::new(std::collections::BTreeMap::<u16, u64>::new()));
    let five_hundreds = Arc::new(Mutex::new(Vec::<u64>::new()));
    let started = Instant::now();
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (next, statuses, five_hundreds) =
                (next.clone(), statuses.clone(), five_hundreds.clone());
            std::thread::spawn(move || loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= cases || started.elapsed() > BUDGET {
                    return;
                }
                let got = run_case(addr, &case(seed, n));
                let mut st = statuses.lock().unwrap();
                for code in &got {
                    *st.entry(*code).or_default() += 1;
                }
                if got.contains(&500) {
                    five_hundreds.lock().unwrap().push(n);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let ran = next.load(Ordering::Relaxed).min(cases);
    let fuzz_time = started.elapsed();
    done.store(true, Ordering::Relaxed);
    let mut sse = normal
        .join()
        .expect("the normal client was served throughout");
    let (worst, flips) = *worst.lock().unwrap();
    let _ = writeln!(
        std::io::stderr(),
        "fuzz: {ran} cases in {fuzz_time:.1?}; statuses {:?}; normal client: {flips} rounds, \
         slowest {worst:.2?}",
        statuses.lock().unwrap()
    );
    assert!(ran >= cases.min(1000), "only {ran} cases ran in {BUDGET:?}");
    assert!(child.0.try_wait().unwrap().is_none(), "the server died");
    assert!(
        five_hundreds.lock().unwrap().is_empty(),
        "500 answered to cases {:?} (seed {seed:#x})",
        five_hundreds.lock().unwrap()
    );
    assert!(flips >= 3, "the normal client made only {flips} rounds");
    assert!(
        worst < Duration::from_secs(10),
        "a normal round took {worst:?}"
    );
    // The stream still works after it all.
    let value = flips.is_multiple_of(2);
    let body = if value { "true" } else { "false" };
    let put = format!(
        "PUT /alarms/{id} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let got = exchange(addr, put.as_bytes(), false, Duration::from_secs(20));
    assert_eq!(got.statuses(), vec![204], "{}", got.text);
    assert_eq!(sse.next_data(), format!("{{\"alarm\":{body}}}"));
    // Back to its threads: tiny_http's idle pool threads exit after 5 s; streams the fuzz opened
    // end when the sweep sees their clients gone.
    wait_for_within(settle, "the server back to its baseline threads", || {
        (threads(pid) <= baseline).then_some(())
    });
    let metrics = exchange(
        addr,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        false,
        Duration::from_secs(20),
    );
    let stuck = common::metric_in(metrics.body(), "syncast_connections_stuck");
    assert_eq!(stuck, Some(0.0), "connections left stuck");
    let windows = common::metric_in(metrics.body(), "syncast_alloc_windows_total");
    let _ = writeln!(
        std::io::stderr(),
        "fuzz: threads {} (baseline {baseline}); drains into a guarded window: {windows:?}",
        threads(pid)
    );
}
