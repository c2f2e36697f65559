//! Hostile clients and faults: slowloris, the pending-connection cap, stalled readers, floods,
//! oversized requests, store faults, panics, CORS. Each test fails on tiny_http's bare behaviour.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::common::{start, unique, wait_for, wait_log, Sse, PATIENCE};

const T: &str = r#"{"alarm":true}"#;
const F: &str = r#"{"alarm":false}"#;

/// Reads until EOF or error; true if the server closed the connection.
fn closed_by_server(sock: &mut TcpStream) -> bool {
    sock.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match sock.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn a_thousand_slowloris_connections_are_cut_at_the_header_deadline_while_others_are_served() {
    let s = start(|c| c.header_timeout = Duration::from_millis(1500));
    let mut slow: Vec<TcpStream> = (0..1000)
        .map(|_| {
            let mut sock = TcpStream::connect(s.addr).unwrap();
            // A request line that never ends.
            sock.write_all(b"GET /sse/call/slow HTTP/1.1\r\nHost: x\r\nX-Slow: a")
                .unwrap();
            sock
        })
        .collect();
    // Meanwhile a normal client connects, streams and writes.
    let id = unique("normal");
    let mut sse = s.sse(&format!("/sse/call/{id}?mode=change"));
    assert_eq!(sse.next_data(), F);
    assert_eq!(
        s.request("PUT", &format!("/alarms/{id}"), Some("true"))
            .status,
        204
    );
    assert_eq!(sse.next_data(), T);
    // Each slow connection is closed by the server after the deadline.
    for sock in slow.iter_mut().take(20) {
        assert!(closed_by_server(sock));
    }
    wait_for("every slowloris connection swept", || {
        (s.metric("syncast_header_timeouts_total") >= 1000.0).then_some(())
    });
    wait_log(&["connection closed", "reason=header-timeout"]);
    // The stream was never swept.
    s.request("PUT", &format!("/alarms/{id}"), Some("false"));
    assert_eq!(sse.next_data(), F);
}

#[test]
fn connections_waiting_for_headers_are_capped_apart_from_streams() {
    let s = start(|c| {
        c.max_pending = 50;
        c.header_timeout = Duration::from_secs(60);
    });
    let mut sse = s.sse(&format!("/sse/call/{}?mode=change", unique("capped")));
    assert_eq!(sse.next_data(), F);
    let _idle: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(s.addr).unwrap())
        .collect();
    wait_for("the oldest beyond the cap closed", || {
        (s.metric("syncast_pending_over_cap_total") >= 150.0).then_some(())
    });
    assert!(s.metric("syncast_pending_connections") <= 50.0);
    // The stream is not counted as pending and still works.
    assert_eq!(s.threads_of("alarm-stream"), 1);
    wait_log(&["connection closed", "reason=over-cap"]);
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_the_deadline() {
    let s = start(|c| c.header_timeout = Duration::from_millis(500));
    let mut sock = TcpStream::connect(s.addr).unwrap();
    sock.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    // Read the response, then stay idle on the keep-alive connection.
    assert!(closed_by_server(&mut sock));
    assert!(s.metric("syncast_idle_closed_total") >= 1.0);
}

#[test]
fn a_client_that_never_reads_is_closed_as_stalled_and_its_thread_ends() {
    let s = start(|c| {
        c.tick = Duration::from_millis(10);
        c.write_timeout = Duration::from_millis(300);
        c.send_buffer = 4096;
    });
    let id = unique("stall");
    let sock = crate::common::connect_with_receive_buffer(s.addr, 2048);
    (&sock)
        .write_all(format!("GET /sse/call/{id} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .unwrap();
    // Never read. The server fills both buffers, its write blocks, the time-out ends it. At
    // ~2.4 KB/s of small events the kernel's buffers (which collapse small segments) take
    // 15-20 s to fill on an idle machine, so this wait gets more than the usual patience.
    let closed = format!("id={id} ");
    let line =
        crate::common::wait_for_within(3 * PATIENCE, "the stalled stream's close line", || {
            crate::common::log_lines(&["sse stream closed", &closed])
                .into_iter()
                .next()
        });
    assert!(line.contains("reason=stalled"), "{line}");
    assert!(s.metric("syncast_streams_stalled_total") >= 1.0);
    wait_for("the stalled thread gone", || {
        (s.threads_of("alarm-stream") == 0).then_some(())
    });
    drop(sock);
}

#[test]
fn a_flood_beyond_the_client_cap_gets_fast_refusals_without_threads() {
    let s = start(|c| c.max_clients = 5);
    let mut kept = Vec::new();
    let mut refused = 0;
    for i in 0..60 {
        let mut sse = s.sse(&format!("/sse/call/flood{i}"));
        assert_eq!(sse.status, 200);
        match sse.next_event() {
            Some((event, _, _)) if event == "message" => kept.push(sse),
            Some((event, _, data)) if event == "refused" => {
                assert!(data.contains(r#""reason":"max-clients""#), "{data}");
                assert_eq!(sse.next_item(), None, "closed after the refusal");
                refused += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(s.threads_of("alarm-stream") <= 5);
    }
    assert_eq!((kept.len(), refused), (5, 55));
    assert_eq!(
        s.metric("syncast_rejected_total{reason=\"max-clients\"}"),
        55.0
    );
}

#[test]
fn oversized_request_lines_headers_and_bodies_are_refused() {
    let s = start(|_| {});
    let long = format!("/alarms/{}", "a".repeat(9000));
    assert_eq!(s.request("GET", &long, None).status, 414);
    let big = "v".repeat(20_000);
    let r = s.request_with("GET", "/healthz", None, &[("X-Big", &big)]);
    assert_eq!(r.status, 431);
    assert!(r.error().contains("headers"));
    // A declared body over 64 KiB is refused before any of it is sent.
    let mut sock = TcpStream::connect(s.addr).unwrap();
    sock.write_all(b"PUT /alarms/x HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        .unwrap();
    let mut sse = Sse::read_head(sock);
    assert_eq!(sse.status, 413);
    assert!(std::mem::take(&mut sse.head)
        .iter()
        .any(|h| h.contains("application/json")));
}

fn stream_true(s: &crate::common::TestServer) -> (String, Sse) {
    let id = unique("fault");
    s.request("PUT", &format!("/alarms/{id}"), Some("true"));
    let mut sse = s.sse(&format!("/sse/call/{id}"));
    assert_eq!(sse.next_data(), T);
    (id, sse)
}

fn wait_degraded(s: &crate::common::TestServer) -> String {
    wait_for("degraded health", || {
        let r = s.request("GET", "/healthz", None);
        (r.status == 503).then(|| r.json()["reason"].as_str().unwrap().to_string())
    })
}

fn wait_healthy(s: &crate::common::TestServer) {
    wait_for("healthy again", || {
        (s.request("GET", "/healthz", None).status == 200).then_some(())
    });
}

/// Another program writes a store at `path` with the documented schema and `id` = false.
fn outside_store(path: &std::path::Path, id: &str) {
    let c = rusqlite::Connection::open(path).unwrap();
    c.execute_batch(
        "CREATE TABLE alarms (id TEXT PRIMARY KEY NOT NULL, alarm INTEGER NOT NULL,
         updated_at INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;",
    )
    .unwrap();
    c.execute("INSERT INTO alarms (id, alarm) VALUES (?1, 0)", [id])
        .unwrap();
}

fn remove_store(db: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
}

#[test]
fn a_deleted_store_degrades_keeps_last_values_and_recovers_when_it_returns() {
    let s = start(|c| c.tick = Duration::from_millis(20));
    let (id, mut sse) = stream_true(&s);
    remove_store(&s.db);
    let reason = wait_degraded(&s);
    assert!(reason.contains("cannot open"), "{reason}");
    for _ in 0..10 {
        assert_eq!(sse.next_data(), T, "last known value kept");
    }
    assert!(!s.db.exists(), "a deleted store is reported, not recreated");
    // Another program puts a store back.
    outside_store(&s.db, &id);
    wait_healthy(&s);
    wait_for("the new store's value", || {
        (sse.next_data() == F).then_some(())
    });
}

#[test]
fn a_replaced_store_is_reopened() {
    let s = start(|c| c.tick = Duration::from_millis(20));
    let (id, mut sse) = stream_true(&s);
    let fresh = s.db.with_extension("new");
    outside_store(&fresh, &id);
    remove_store(&s.db);
    std::fs::rename(&fresh, &s.db).unwrap();
    wait_for("the replacement's value", || {
        (sse.next_data() == F).then_some(())
    });
    wait_log(&["store file changed"]);
    wait_healthy(&s);
}

#[test]
fn a_corrupted_store_degrades_and_streams_go_on() {
    let s = start(|c| c.tick = Duration::from_millis(20));
    let (_id, mut sse) = stream_true(&s);
    // Overwrite the file in place with garbage (same inode), WAL and index included.
    for suffix in ["", "-wal", "-shm"] {
        let path = format!("{}{suffix}", s.db.display());
        if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(&path) {
            f.write_all(&b"not a database "[..].repeat(512)).unwrap();
        }
    }
    let reason = wait_degraded(&s);
    assert!(!reason.is_empty());
    for _ in 0..10 {
        assert_eq!(sse.next_data(), T);
    }
    assert!(s.metric("syncast_refresh_errors_total") >= 1.0);
}

#[test]
fn a_writer_holding_the_lock_blocks_writes_not_streams() {
    let s = start(|c| c.tick = Duration::from_millis(20));
    let (id, mut sse) = stream_true(&s);
    let writer = rusqlite::Connection::open(&s.db).unwrap();
    writer.busy_timeout(PATIENCE).unwrap();
    writer
        .execute_batch("BEGIN IMMEDIATE; UPDATE alarms SET alarm = alarm;")
        .unwrap();
    // WAL: the refresher keeps reading while another writer holds the write lock. Its ticks go
    // on (they skip the query while nothing is committed: the open transaction is not)...
    let before = s.refresher_ticks();
    wait_for("refresher ticks go on", || {
        (s.refresher_ticks() >= before + 3.0).then_some(())
    });
    // ...and a query runs under the lock: a new id's first value is read at once.
    let mut newcomer = s.sse(&format!("/sse/call/{}", unique("newcomer")));
    assert_eq!(newcomer.next_data(), F);
    assert_eq!(s.request("GET", "/healthz", None).status, 200);
    assert_eq!(sse.next_data(), T);
    // Our own write waits the busy time-out, then says so.
    let r = s.request("PUT", &format!("/alarms/{id}"), Some("false"));
    assert_eq!(r.status, 503);
    assert!(r.error().contains("locked"), "{}", r.body);
    writer.execute_batch("COMMIT").unwrap();
    assert_eq!(
        s.request("PUT", &format!("/alarms/{id}"), Some("false"))
            .status,
        204
    );
    wait_for("the write arrives", || (sse.next_data() == F).then_some(()));
}

#[test]
fn panics_in_a_stream_and_in_the_refresher_are_caught_counted_and_survived() {
    let bad = unique("boom");
    let s = start(|c| c.fault_panic_id = Some(bad.clone()));
    let mut doomed = s.sse(&format!("/sse/call/{bad}"));
    assert_eq!(doomed.status, 200);
    // The stream thread panics at its first tick; the connection ends.
    while doomed.next_item().is_some() {}
    wait_log(&["thread panicked", "cause=\"injected fault in stream"]);
    wait_log(&["refresher panicked", "restarting"]);
    wait_log(&["sse stream closed", &format!("id={bad} ")]);
    assert!(s.metric("syncast_thread_panics_total") >= 1.0);
    assert!(s.metric("syncast_refresher_restarts_total") >= 1.0);
    // The server and its refresher keep working.
    let id = unique("after");
    let mut sse = s.sse(&format!("/sse/call/{id}?mode=change"));
    assert_eq!(sse.next_data(), F);
    s.request("PUT", &format!("/alarms/{id}"), Some("true"));
    assert_eq!(sse.next_data(), T);
    assert_eq!(s.threads_of("refresher"), 1);
    assert_eq!(s.metric("syncast_alarm_ids_registered"), 1.0);
}

#[test]
fn panics_in_a_request_thread_and_in_a_chat_stream_are_caught_counted_and_survived() {
    let bad = unique("boom");
    let s = start(|c| c.fault_panic_id = Some(bad.clone()));
    // A request thread: the client gets tiny_http's 500 (the request dropped while unwinding).
    let r = s.request("GET", &format!("/alarms/{bad}"), None);
    assert_eq!(r.status, 500);
    wait_log(&[
        "thread panicked name=req-",
        "cause=\"injected fault in request",
    ]);
    // A chat stream: the welcome arrives, then the thread panics and the stream ends; the
    // session is detached (its grace period starts), as after any end of a stream.
    let mut chat = s.sse(&format!("/chat/stream?name={bad}"));
    assert_eq!(chat.status, 200);
    assert_eq!(chat.next_event().expect("welcome").0, "welcome");
    while chat.next_item().is_some() {}
    wait_log(&[
        "thread panicked name=chat-",
        "cause=\"injected fault in chat stream",
    ]);
    wait_log(&["chat stream closed", &format!("name={bad} ")]);
    assert!(s.metric("syncast_thread_panics_total") >= 2.0);
    assert_eq!(s.metric("syncast_chat_streams_attached"), 0.0);
    // Both kinds of thread go on serving others.
    let id = unique("fine");
    assert_eq!(
        s.request("PUT", &format!("/alarms/{id}"), Some("true"))
            .status,
        204
    );
    assert_eq!(s.json(&format!("/alarms/{id}"))["alarm"], true);
    let mut other = s.sse(&format!("/chat/stream?name={}", unique("other")));
    assert_eq!(other.next_event().expect("welcome").0, "welcome");
    wait_for("the panicked threads joined", || {
        (s.threads_of("request") == 0).then_some(())
    });
}

#[test]
fn alarm_and_chat_streams_share_max_clients() {
    let s = start(|c| c.max_clients = 2);
    let mut alarm = s.sse(&format!("/sse/call/{}", unique("share")));
    assert_eq!(alarm.next_data(), F);
    let mut chat = s.sse(&format!("/chat/stream?name={}", unique("share")));
    assert_eq!(chat.next_event().unwrap().0, "welcome");
    assert_eq!(s.metric("syncast_streaming_clients"), 2.0);
    // The third stream is refused, whichever kind it is.
    for path in [
        format!("/sse/call/{}", unique("third")),
        format!("/chat/stream?name={}", unique("third")),
    ] {
        let mut third = s.sse(&path);
        let (event, _, data) = third.next_event().unwrap();
        assert_eq!(event, "refused", "{path}");
        assert!(data.contains(r#""reason":"max-clients""#), "{data}");
    }
    // An alarm stream leaving makes room for a chat stream.
    drop(alarm);
    wait_for("a chat stream in the alarm's place", || {
        let mut next = s.sse(&format!("/chat/stream?name={}", unique("fourth")));
        (next.next_event()?.0 == "welcome").then_some(())
    });
    drop(chat);
}

#[test]
fn a_chunked_body_is_refused_at_64_kib_plus_1_and_taken_at_64_kib() {
    let s = start(|_| {});
    let chunked = |len: usize| {
        // A valid alarm body padded with white space (trimmed by the parser) to `len` bytes.
        let body = format!("{}true", " ".repeat(len - 4));
        let mut sock = TcpStream::connect(s.addr).unwrap();
        sock.set_read_timeout(Some(crate::common::PATIENCE))
            .unwrap();
        let mut rq = "PUT /alarms/chunky HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
                      Transfer-Encoding: chunked\r\n\r\n"
            .to_string();
        for part in body.as_bytes().chunks(10_000) {
            rq.push_str(&format!(
                "{:x}\r\n{}\r\n",
                part.len(),
                String::from_utf8_lossy(part)
            ));
        }
        rq.push_str("0\r\n\r\n");
        std::io::Write::write_all(&mut sock, rq.as_bytes()).unwrap();
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut sock, &mut text);
        text
    };
    let at_cap = chunked(65_536);
    assert!(at_cap.starts_with("HTTP/1.1 204 "), "{at_cap}");
    let over = chunked(65_537);
    assert!(over.starts_with("HTTP/1.1 413 "), "{over}");
    assert!(
        over.contains("request body too large (max 65536 bytes)"),
        "{over}"
    );
    assert!(s.metric("syncast_rejected_total{reason=\"too-large\"}") >= 1.0);
}

#[test]
fn more_than_100_header_lines_get_431_and_100_are_fine() {
    let s = start(|_| {});
    let with_headers = |n: usize| {
        let mut sock = TcpStream::connect(s.addr).unwrap();
        sock.set_read_timeout(Some(crate::common::PATIENCE))
            .unwrap();
        // Host and Connection are two of the `n` lines.
        let mut rq = "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".to_string();
        for i in 0..n - 2 {
            rq.push_str(&format!("X-H{i}: v\r\n"));
        }
        rq.push_str("\r\n");
        std::io::Write::write_all(&mut sock, rq.as_bytes()).unwrap();
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut sock, &mut text);
        text
    };
    let ok = with_headers(100);
    assert!(ok.starts_with("HTTP/1.1 200 "), "{ok}");
    let over = with_headers(101);
    assert!(over.starts_with("HTTP/1.1 431 "), "{over}");
    assert!(over.contains("100 lines"), "{over}");
}

#[test]
fn a_stream_socket_has_a_64_kib_send_buffer() {
    let s = start(|_| {});
    let mut sse = s.sse(&format!("/sse/call/{}", unique("sndbuf")));
    assert_eq!(sse.next_data(), F);
    // The server's side of this connection, in this process: its SO_SNDBUF as the kernel
    // reports it (twice what was set, for its bookkeeping: socket(7)).
    let fds = syncast::kit::socket_fds(s.addr, sse.local_addr());
    assert_eq!(fds.len(), 1, "{fds:?}");
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt(2) into a c_int of the size given.
    let rc = unsafe {
        libc::getsockopt(
            fds[0],
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            &mut value as *mut libc::c_int as *mut libc::c_void,
            &mut len,
        )
    };
    assert_eq!(rc, 0);
    assert_eq!(value, 2 * 64 * 1024);
}

#[test]
fn cors_is_off_by_default_and_on_with_preflight_when_configured() {
    let off = start(|_| {});
    assert_eq!(
        off.request("GET", "/healthz", None)
            .header("Access-Control-Allow-Origin"),
        None
    );
    let on = start(|c| c.cors_origin = Some("https://app.example".into()));
    let r = on.request("GET", "/healthz", None);
    assert_eq!(
        r.header("Access-Control-Allow-Origin"),
        Some("https://app.example")
    );
    let sse = on.sse(&format!("/sse/call/{}", unique("cors")));
    assert_eq!(
        sse.header("Access-Control-Allow-Origin").as_deref(),
        Some("https://app.example")
    );
    // Preflight over a raw socket (the harness's client has no OPTIONS).
    let mut sock = TcpStream::connect(on.addr).unwrap();
    sock.write_all(
        b"OPTIONS /alarms/x HTTP/1.1\r\nHost: x\r\nOrigin: https://app.example\r\n\
          Access-Control-Request-Method: PUT\r\n\r\n",
    )
    .unwrap();
    let pre = Sse::read_head(sock);
    assert_eq!(pre.status, 204);
    assert!(pre
        .header("Access-Control-Allow-Methods")
        .unwrap()
        .contains("PUT"));
    assert!(pre
        .header("Access-Control-Allow-Headers")
        .unwrap()
        .contains("Authorization"));
}

fn sockopt(fd: i32, level: libc::c_int, name: libc::c_int) -> libc::c_int {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: reads one c_int socket option of a descriptor of this process.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            &mut value as *mut libc::c_int as *mut libc::c_void,
            &mut len,
        )
    };
    assert_eq!(rc, 0, "getsockopt");
    value
}

#[test]
fn a_stream_socket_has_a_user_timeout_and_keepalive_so_a_peer_gone_without_fin_is_found() {
    // A peer that vanishes without FIN or RST is found by the kernel: TCP_USER_TIMEOUT while
    // data is in flight (a heartbeat), keepalive probes while idle. The server runs in this
    // process, so look at its side of the connection directly. (tests/no_fin.rs drops a real
    // peer's packets and watches the stream close.)
    let s = start(|c| c.tcp_user_timeout = Duration::from_millis(7_500));
    let mut sse = s.sse(&format!("/sse/call/{}?mode=change", unique("ka")));
    assert_eq!(sse.next_data(), F);
    let peer = sse.local_addr();
    let server_side = syncast::kit::socket_fds(s.addr, peer);
    let fd = *server_side.first().expect("a descriptor");
    assert_eq!(sockopt(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE), 1);
    assert_eq!(sockopt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE), 30);
    assert_eq!(sockopt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL), 10);
    assert_eq!(sockopt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT), 3);
    assert_eq!(
        sockopt(fd, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT),
        7_500
    );
}
