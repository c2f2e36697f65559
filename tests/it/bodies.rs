//! Hostile request bodies (issue 18) in this process: a length over `isize::MAX`, past the
//! address space, absurd chunk sizes, bodies cut off or stalled, an unread body on a kept-alive
//! connection, a request pipelined behind a stream. tiny_http 0.12.0 drains an unread body on
//! whatever thread drops the request, into a buffer of the declared size
//! (src/util/equal_reader.rs:70); the harness runs the server with the binary's allocator
//! (tests/common/mod.rs). The cases that measure the process are in tests/hostile_bodies.rs.

use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use crate::common::raw::{declare, exchange, read_all};
use crate::common::{start, unique, wait_for, Sse, PATIENCE};

const T: &str = r#"{"alarm":true}"#;
const F: &str = r#"{"alarm":false}"#;

#[test]
fn a_length_over_isize_max_panics_in_the_drain_and_the_panic_is_contained() {
    let s = start(|_| {});
    let mut sock = declare(
        s.addr,
        "POST /chat/join HTTP/1.1",
        "18446744073709551615",
        b"x",
    );
    let got = read_all(&mut sock, PATIENCE);
    assert_eq!(got.statuses(), vec![413], "{}", got.text);
    assert!(got.closed);
    // The dispatcher, which gave that answer and dropped the request, is alive and serving.
    assert_eq!(s.request("GET", "/healthz", None).status, 200);
    assert_eq!(s.metric("syncast_request_drop_panics_total"), 1.0);
    assert_eq!(s.threads_of("dispatcher"), 1);
}

#[test]
fn a_length_no_address_space_holds_is_drained_into_a_window_and_its_connection_freed() {
    let s = start(|c| c.header_timeout = Duration::from_millis(400));
    let windows_before = s.metric("syncast_alloc_windows_total");
    // 10^15 and 2^62 bytes: over the 128 TiB a process can map, under isize::MAX. tiny_http's
    // drain asks for all of it at once: a refusal would abort the process, so the allocator
    // hands out a guarded 16 MiB window (syncast::alloc) and the request is dropped like any
    // other. (It used to be kept for good, with its tiny_http thread and two descriptors.)
    for (line, length) in [
        ("PUT /alarms/q HTTP/1.1", "1000000000000000"),
        ("POST /chat/join HTTP/1.1", "4611686018427387904"),
    ] {
        let mut sock = declare(s.addr, line, length, b"x");
        let client = sock.local_addr().unwrap();
        let got = read_all(&mut sock, PATIENCE);
        assert_eq!(got.statuses(), vec![413], "{length}: {}", got.text);
        assert!(got.closed);
        drop(sock);
        // The server's side of the connection is closed: tiny_http's thread let go of it.
        wait_for("the connection's descriptors closed", || {
            syncast::kit::socket_fds(s.addr, client)
                .is_empty()
                .then_some(())
        });
    }
    assert_eq!(s.request("GET", "/healthz", None).status, 200);
    assert!(s.metric("syncast_alloc_windows_total") >= windows_before + 2.0);
}

#[test]
fn chunk_sizes_past_any_body_are_refused_and_nothing_is_acted_on() {
    let s = start(|_| {});
    for (size, error) in [
        // usize::MAX: the decoder takes it and reads on until the socket ends.
        ("ffffffffffffffff", "ended early"),
        // 17 hex digits: not a usize.
        ("10000000000000000", "cannot read body"),
    ] {
        let name = unique("chunk");
        let request = format!(
            "POST /chat/join HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{size}\r\n{name}"
        );
        // Everything sent, then the client's side shut: the answer can still be read.
        let got = exchange(s.addr, request.as_bytes(), true, PATIENCE);
        assert_eq!(got.statuses(), vec![400], "{size}: {}", got.text);
        assert!(got.body().contains(error), "{size}: {}", got.text);
        assert!(got.closed);
        assert!(!s.json("/chat/users")["online"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == name.as_str()));
    }
}

#[test]
fn a_body_cut_off_by_its_client_is_not_acted_on() {
    let s = start(|_| {});
    let id = unique("cut");
    // A valid body once complete: "true" and white space, 5000 bytes; only 100 are sent.
    let body = format!("true{}", " ".repeat(96));
    let chunked = format!("1388\r\n{body}"); // 0x1388 = 5000
    for (framing, sent) in [
        ("Content-Length: 5000", body.as_str()),
        ("Transfer-Encoding: chunked", chunked.as_str()),
    ] {
        let request = format!("PUT /alarms/{id} HTTP/1.1\r\nHost: x\r\n{framing}\r\n\r\n{sent}");
        let got = exchange(s.addr, request.as_bytes(), true, PATIENCE);
        assert_eq!(got.statuses(), vec![400], "{framing}: {}", got.text);
        assert!(got.body().contains("ended early"), "{}", got.text);
        // And a client that closes outright (no answer to read) changes nothing either.
        let mut sock = TcpStream::connect(s.addr).unwrap();
        sock.write_all(request.as_bytes()).unwrap();
        drop(sock);
    }
    let r = s.request("GET", &format!("/alarms/{id}"), None);
    assert_eq!(r.json()["alarm"], false, "a cut-off PUT was applied");
    wait_for("the request threads done", || {
        (s.threads_of("request") == 0).then_some(())
    });
}

#[test]
fn a_body_left_unread_on_a_kept_alive_connection_closes_it_and_what_follows_is_not_served() {
    let s = start(|_| {});
    let name = unique("after");
    // A 60 KB body declared on a route that never reads it, 10 bytes of it sent, then (inside
    // the "body") a join. tiny_http would drain the 60 KB waiting for the client, on the
    // dispatcher; then the join would not be a request at all. Here: 200, closed, no join.
    let mut sock = declare(s.addr, "GET /healthz HTTP/1.1", "60000", b"0123456789");
    // May fail: by now the server may have answered and closed the connection (what it sent is
    // still read below).
    let _ = sock.write_all(
        format!(
            "POST /chat/join HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{name}",
            name.len()
        )
        .as_bytes(),
    );
    let got = read_all(&mut sock, PATIENCE);
    assert_eq!(got.statuses(), vec![200], "{}", got.text);
    assert!(got.closed);
    let _ = sock.shutdown(Shutdown::Both);
    // A body of at most 1 KiB (read by tiny_http before the route saw it) keeps the connection.
    let request = "GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
                   GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let got = exchange(s.addr, request.as_bytes(), false, PATIENCE);
    assert_eq!(got.statuses(), vec![200, 200], "{}", got.text);
    assert!(!s.json("/chat/users")["online"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n == name.as_str()));
}

#[test]
fn a_request_pipelined_behind_a_stream_is_discarded_and_the_dispatcher_goes_on() {
    let s = start(|c| c.tick = Duration::from_secs(30));
    let id = unique("pipe");
    let name = unique("behind");
    let mut sock = TcpStream::connect(s.addr).unwrap();
    // In one write: a stream request, then a join, then a request declaring a body it never sends.
    sock.write_all(
        format!(
            "GET /sse/call/{id}?mode=change HTTP/1.1\r\nHost: x\r\n\r\n\
             POST /chat/join HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{name}\
             POST /chat/join HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n",
            name.len()
        )
        .as_bytes(),
    )
    .unwrap();
    let mut sse = Sse::read_head(sock);
    assert_eq!(sse.status, 200);
    // tiny_http would hold the answers behind the stream until the stream ends, and the
    // dispatcher with them: here other clients are served at once.
    for _ in 0..3 {
        assert_eq!(s.request("GET", "/healthz", None).status, 200);
    }
    wait_for("both pipelined requests discarded", || {
        (s.metric("syncast_requests_discarded_total") >= 2.0).then_some(())
    });
    assert!(!s.json("/chat/users")["online"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n == name.as_str()));
    // The stream itself goes on.
    assert_eq!(sse.next_data(), F);
    s.request("PUT", &format!("/alarms/{id}"), Some("true"));
    assert_eq!(sse.next_data(), T);
}

/// A client socket bound to `port` on 127.0.0.1 (0: any; `SO_REUSEADDR`, so a port an earlier
/// such socket used can be bound again), connected to `addr`.
fn connect_from(port: u16, addr: SocketAddr) -> TcpStream {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket calls on a new descriptor that the TcpStream then owns (closed on
    // every path: an error below drops it).
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket");
        let sock = TcpStream::from_raw_fd(fd);
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        let sin = |a: SocketAddr| {
            let SocketAddr::V4(a) = a else {
                panic!("IPv4 only")
            };
            libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            }
        };
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let me = sin(SocketAddr::from(([127, 0, 0, 1], port)));
        assert_eq!(
            libc::bind(fd, &me as *const _ as *const libc::sockaddr, len),
            0
        );
        let to = sin(addr);
        let rc = libc::connect(fd, &to as *const _ as *const libc::sockaddr, len);
        assert_eq!(rc, 0, "connect: {}", std::io::Error::last_os_error());
        sock
    }
}

#[test]
fn a_new_connection_from_the_address_of_a_closed_one_is_served() {
    let s = start(|_| {});
    // A connection closed by the server for a body left unread: its peer is marked closing,
    // so that what tiny_http parses from it afterwards is discarded.
    let mut old = connect_from(0, s.addr);
    let port = old.local_addr().unwrap().port();
    old.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 60000\r\n\r\n0123456789")
        .unwrap();
    let got = read_all(&mut old, PATIENCE);
    assert_eq!(got.statuses(), vec![200], "{}", got.text);
    assert!(got.closed);
    drop(old);
    // A new connection from the very same address and port (loopback reuses it at once): a
    // different connection, whose requests are its own.
    let mut new = connect_from(port, s.addr);
    new.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let got = read_all(&mut new, PATIENCE);
    assert_eq!(
        got.statuses(),
        vec![200],
        "the new connection was not served: {}",
        got.text
    );
}

#[test]
fn a_body_that_stalls_is_cut_at_the_body_deadline_and_not_acted_on() {
    // The body deadline shuts only the read half (so the 408 can still be written): tiny_http's
    // chunked decoder then sees the end of the socket as the end of the body, and the half body
    // was applied (the alarm set to true, then a 408).
    let s = start(|c| c.body_timeout = Duration::from_millis(500));
    for framing in ["Content-Length: 5000", "Transfer-Encoding: chunked"] {
        let id = unique("cut");
        let body = format!("true{}", " ".repeat(96));
        let sent = if framing.starts_with("Transfer") {
            format!("1388\r\n{body}")
        } else {
            body
        };
        let mut sock = TcpStream::connect(s.addr).unwrap();
        sock.write_all(
            format!("PUT /alarms/{id} HTTP/1.1\r\nHost: x\r\n{framing}\r\n\r\n{sent}").as_bytes(),
        )
        .unwrap();
        let got = read_all(&mut sock, PATIENCE);
        assert_eq!(got.statuses(), vec![408], "{framing}: {}", got.text);
        let r = s.request("GET", &format!("/alarms/{id}"), None);
        assert_eq!(
            r.json()["alarm"],
            false,
            "{framing}: the half body was applied"
        );
    }
    wait_for("the request threads freed", || {
        (s.threads_of("request") == 0).then_some(())
    });
    assert_eq!(s.metric("syncast_body_timeouts_total"), 2.0);
}
