//! The HTTP layer under clients that use more of HTTP/1.1 (and 1.0) than a browser does: HTTP/1.0,
//! pipelining, `Expect: 100-continue`, and request bodies that trickle in. Raw sockets, since
//! no client library pipelines or dawdles on purpose.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::common::{start, unique, wait_for, wait_log, PATIENCE};

/// A raw connection to the server.
fn connect(addr: SocketAddr) -> TcpStream {
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(PATIENCE)).unwrap();
    sock
}

/// Reads until the server closes the connection.
fn read_all(sock: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = sock.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads until `want` responses (status lines) have arrived, or the connection ends.
fn read_responses(sock: &mut TcpStream, want: usize) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        let text = String::from_utf8_lossy(&out).into_owned();
        if text.matches("HTTP/1.").count() >= want && complete(&text) {
            return text;
        }
        match sock.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether the last response in `text` has its whole `Content-Length` body.
fn complete(text: &str) -> bool {
    let Some(at) = text.rfind("HTTP/1.") else {
        return false;
    };
    let last = &text[at..];
    let Some((head, body)) = last.split_once("\r\n\r\n") else {
        return false;
    };
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    body.len() >= len
}

/// The status codes of the responses in `text`, in order.
fn statuses(text: &str) -> Vec<u16> {
    text.match_indices("HTTP/1.")
        .filter_map(|(i, _)| text[i..].split(' ').nth(1)?.parse().ok())
        .collect()
}

#[test]
fn an_http_1_0_client_gets_a_close_delimited_stream_and_closed_buffered_replies() {
    let s = start(|_| {});
    // A stream: the head is HTTP/1.1 (RFC 9110 §6.2: a server sends the highest version it
    // conforms to whose major version is the request's), no chunked coding, and the body is
    // whatever comes until the server closes.
    let mut sock = connect(s.addr);
    sock.write_all(b"GET /sse/call/old-client?mode=change HTTP/1.0\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains("data: {\"alarm\":false}") {
        let n = sock.read(&mut buf).unwrap();
        assert!(n > 0, "ended early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    let (head, _) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("\r\nConnection: close"), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("transfer-encoding"),
        "{head}"
    );
    assert!(
        !head.to_ascii_lowercase().contains("content-length"),
        "{head}"
    );
    drop(sock);
    // A buffered reply: tiny_http answers in the request's version with a Content-Length and
    // closes (no keep-alive asked for).
    let mut sock = connect(s.addr);
    sock.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").unwrap();
    let text = read_all(&mut sock);
    assert!(text.starts_with("HTTP/1.0 200 OK\r\n"), "{text}");
    assert!(text.contains("\r\nContent-Length: 15\r\n"), "{text}");
    assert!(text.ends_with("{\"status\":\"ok\"}"), "{text}");
    // A chat stream too.
    let token = {
        let r = s.request("POST", "/chat/join", Some(&unique("old")));
        r.json()["token"].as_str().unwrap().to_string()
    };
    let mut sock = connect(s.addr);
    write!(sock, "GET /chat/stream?token={token} HTTP/1.0\r\n\r\n").unwrap();
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("event: welcome") {
        let n = sock.read(&mut buf).unwrap();
        assert!(n > 0, "ended early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(!String::from_utf8_lossy(&got).contains("chunked"));
}

#[test]
fn pipelined_requests_are_answered_in_order_and_a_get_after_a_put_reads_the_new_value() {
    let s = start(|_| {});
    let id = unique("pipe");
    // Another program holds the store's write lock: the PUT waits for it (up to the 250 ms busy
    // time-out, so the lock is released well before), while a GET run beside it would read the
    // old value at once (WAL readers do not wait for writers).
    let outside = rusqlite::Connection::open(&s.db).unwrap();
    outside.execute_batch("BEGIN IMMEDIATE").unwrap();
    let mut sock = connect(s.addr);
    write!(
        sock,
        "PUT /alarms/{id} HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\ntrue\
         GET /alarms/{id} HTTP/1.1\r\nHost: x\r\n\r\n\
         GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n\
         DELETE /alarms/{id} HTTP/1.1\r\nHost: x\r\n\r\n\
         GET /alarms/{id} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    // The PUT is on its request thread, waiting for the lock; what came behind it was read by
    // tiny_http meanwhile (it reads on while a request with a small body is served). Then the
    // lock goes.
    wait_for("the PUT waiting for the store", || {
        (s.threads_of("request") >= 1).then_some(())
    });
    outside.execute_batch("COMMIT").unwrap();
    let text = read_all(&mut sock);
    assert_eq!(statuses(&text), vec![204, 200, 200, 204, 200], "{text}");
    let bodies: Vec<&str> = text
        .split("HTTP/1.1 ")
        .filter_map(|r| r.split_once("\r\n\r\n").map(|(_, b)| b))
        .collect();
    assert_eq!(
        bodies,
        vec![
            "",
            format!(r#"{{"alarm":true,"id":"{id}"}}"#).as_str(),
            r#"{"status":"ok"}"#,
            "",
            format!(r#"{{"alarm":false,"id":"{id}"}}"#).as_str(),
        ],
        "each answer in order, each GET after the write before it"
    );
}

#[test]
fn a_request_pipelined_behind_a_stream_is_never_answered_and_the_server_goes_on() {
    let s = start(|_| {});
    let mut sock = connect(s.addr);
    sock.write_all(
        b"GET /sse/call/behind?mode=change HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains("data: {\"alarm\":false}") {
        let n = sock.read(&mut buf).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    // The stream's head said Connection: close; the request behind it gets no answer, and
    // above all it does not hold up anyone else (it used to freeze the dispatcher until the
    // stream ended).
    for _ in 0..3 {
        assert_eq!(s.request("GET", "/healthz", None).status, 200);
    }
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut more = Vec::new();
    let _ = sock.read_to_end(&mut more);
    assert!(
        !String::from_utf8_lossy(&more).contains("HTTP/1.1"),
        "answered behind a stream: {}",
        String::from_utf8_lossy(&more)
    );
    drop(sock);
    wait_for("the stream thread gone", || {
        (s.threads_of("alarm-stream") == 0).then_some(())
    });
    assert_eq!(s.request("GET", "/healthz", None).status, 200);
}

#[test]
fn a_connection_pipelining_too_deep_is_closed() {
    let s = start(|_| {});
    let outside = rusqlite::Connection::open(&s.db).unwrap();
    outside.execute_batch("BEGIN IMMEDIATE").unwrap();
    let mut sock = connect(s.addr);
    let mut burst =
        String::from("PUT /alarms/deep HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\ntrue");
    for _ in 0..40 {
        burst.push_str("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    }
    sock.write_all(burst.as_bytes()).unwrap();
    wait_log(&["reason=pipelined-too-deep"]);
    outside.execute_batch("COMMIT").unwrap();
    let text = read_all(&mut sock);
    assert!(statuses(&text).len() < 41, "{}", statuses(&text).len());
    assert_eq!(s.request("GET", "/healthz", None).status, 200);
}

#[test]
fn expect_100_continue_gets_100_then_the_answer_and_a_refused_body_gets_no_100() {
    let s = start(|_| {});
    let mut sock = connect(s.addr);
    sock.write_all(
        b"PUT /alarms/expects HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    let text = read_responses(&mut sock, 1);
    assert!(text.starts_with("HTTP/1.1 100 Continue\r\n"), "{text}");
    sock.write_all(b"true").unwrap();
    let text = read_responses(&mut sock, 1);
    assert!(text.starts_with("HTTP/1.1 204 "), "{text}");
    assert_eq!(s.json("/alarms/expects")["alarm"], true);
    // Refusals decided before the body is read get their answer, not 100.
    let refused: [(&str, u16); 3] = [
        (
            "PUT /alarms/expects HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\nExpect: 100-continue\r\n\r\n",
            413,
        ),
        (
            "POST /chat/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n",
            401,
        ),
        (
            "PUT /alarms/a%20b HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n",
            400,
        ),
    ];
    for (rq, status) in refused {
        let mut sock = connect(s.addr);
        sock.write_all(rq.as_bytes()).unwrap();
        let text = read_responses(&mut sock, 1);
        assert_eq!(statuses(&text).first(), Some(&status), "{text}");
        assert!(!text.contains("100 Continue"), "{text}");
    }
}

#[test]
fn sixty_four_trickling_uploads_are_cut_at_the_body_deadline_and_free_their_threads() {
    // The header deadline is long: only the body deadline can free the request threads.
    let s = start(|c| {
        c.max_requests = 64;
        c.header_timeout = Duration::from_secs(3600);
        c.body_timeout = Duration::from_millis(300);
    });
    let mut uploads: Vec<TcpStream> = (0..64)
        .map(|i| {
            let mut sock = connect(s.addr);
            write!(
                sock,
                "PUT /alarms/slow{i} HTTP/1.1\r\nHost: x\r\nContent-Length: 10000\r\n\r\n{{\"alarm\":"
            )
            .unwrap();
            sock
        })
        .collect();
    // All 64 routed (each took a request slot) before anything else asks for one: each
    // `/metrics` read counts itself too.
    let mut reads = 0.0;
    wait_for("the 64 uploads routed", || {
        reads += 1.0;
        (s.metric("syncast_requests_total") >= 64.0 + reads).then_some(())
    });
    // The uploads go on trickling, a byte each round, far slower than the deadline allows; a
    // normal PUT gets through once the server has cut them.
    let id = unique("after");
    let served = wait_for("a PUT served while the uploads trickle", || {
        for sock in uploads.iter_mut() {
            let _ = sock.write_all(b" ");
        }
        let r = s.request("PUT", &format!("/alarms/{id}"), Some("true"));
        (r.status == 204).then_some(r)
    });
    assert_eq!(served.status, 204);
    wait_for("every upload cut", || {
        (s.metric("syncast_body_timeouts_total") >= 64.0).then_some(())
    });
    wait_log(&["reason=body-timeout"]);
    // Each upload got a 408 and its connection closed.
    for sock in uploads.iter_mut() {
        let text = read_all(sock);
        assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
        assert!(text.contains("--body-timeout"), "{text}");
    }
    wait_for("the request threads gone", || {
        (s.threads_of("request") == 0).then_some(())
    });
}

#[test]
fn a_body_that_arrives_within_the_deadline_is_read_whole() {
    let s = start(|c| c.body_timeout = Duration::from_secs(5));
    let body = format!("{{\"alarm\":true,\"pad\":\"{}\"}}", "x".repeat(3000));
    let mut sock = connect(s.addr);
    write!(
        sock,
        "PUT /alarms/whole HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    for chunk in body.as_bytes().chunks(1000) {
        sock.write_all(chunk).unwrap();
    }
    let text = read_all(&mut sock);
    assert!(text.starts_with("HTTP/1.1 204 "), "{text}");
    assert_eq!(s.metric("syncast_body_timeouts_total"), 0.0);
}

#[test]
fn a_client_that_pipelines_and_never_reads_cannot_stop_the_server() {
    let s = start(|_| {});
    // Thousands of requests answered by the dispatcher itself, none of the answers read: the
    // socket buffers fill, and a write of the dispatcher used to block there for good.
    let sock = socket2_small_receive_buffer(s.addr);
    let burst = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(2000);
    sock.set_nonblocking(true).unwrap();
    let mut sent = 0;
    let deadline = Instant::now() + PATIENCE;
    let mut sock = sock;
    while sent < burst.len() && Instant::now() < deadline {
        match sock.write(&burst.as_bytes()[sent..]) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(_) => break,
        }
    }
    wait_log(&["reason=write-timeout"]);
    // Everyone else is served.
    for _ in 0..3 {
        assert_eq!(s.request("GET", "/healthz", None).status, 200);
    }
    assert!(s.metric("syncast_write_timeouts_total") >= 1.0);
}

/// A connection whose receive buffer is small (set before connecting, so the window stays
/// small): the server's answers pile up in its send buffer sooner.
fn socket2_small_receive_buffer(addr: SocketAddr) -> TcpStream {
    use std::os::fd::FromRawFd;
    // SAFETY: a new socket, owned by the TcpStream made from it below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0);
    let size: libc::c_int = 4096;
    // SAFETY: setsockopt(2) with a c_int of the size given.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &size as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    let SocketAddr::V4(v4) = addr else {
        panic!("IPv4 test server")
    };
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*v4.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: connect(2) with a sockaddr_in of the size given.
    let rc = unsafe {
        libc::connect(
            fd,
            &sin as *const libc::sockaddr_in as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    // SAFETY: fd is ours alone.
    unsafe { TcpStream::from_raw_fd(fd) }
}

#[test]
fn accepted_sockets_inherit_the_reply_write_deadline() {
    let s = start(|_| {});
    let mut sock = connect(s.addr);
    sock.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(statuses(&read_responses(&mut sock, 1)), vec![200]);
    // The server's side of this keep-alive connection, in this process.
    let fds = syncast::kit::socket_fds(s.addr, sock.local_addr().unwrap());
    assert!(!fds.is_empty());
    let mut tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    let mut len = std::mem::size_of::<libc::timeval>() as libc::socklen_t;
    // SAFETY: getsockopt(2) into a timeval of the size given.
    let rc = unsafe {
        libc::getsockopt(
            fds[0],
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            &mut tv as *mut libc::timeval as *mut libc::c_void,
            &mut len,
        )
    };
    assert_eq!(rc, 0);
    let ms = tv.tv_sec * 1000 + tv.tv_usec / 1000;
    // 500 ms, as the kernel rounds it to its clock ticks.
    assert!((480..=520).contains(&ms), "SO_SNDTIMEO {ms} ms");
}
