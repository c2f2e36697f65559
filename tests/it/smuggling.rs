//! Request smuggling (RFC 9112 section 6) over raw sockets: every framing shape two readers could
//! disagree on gets 400 and a closed connection, and the request hidden in its body is never
//! served. On tiny_http's bare behaviour each hidden request below is served (it decodes any
//! Transfer-Encoding as chunked, frames by the first Content-Length, reads no body for one it
//! cannot parse, and parses an unread chunked body as the next request).

use std::time::Duration;

use crate::common::raw::{exchange, Exchange};
use crate::common::{start, unique, TestServer};

/// Long enough for any answer; a kept-alive connection stays open much longer (10 s idle).
const CLOSE_WITHIN: Duration = Duration::from_secs(5);

/// A whole `POST /chat/join` for `name`: what each hostile body hides.
fn hidden_join(name: &str) -> String {
    format!(
        "POST /chat/join HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{name}",
        name.len()
    )
}

fn online(s: &TestServer) -> Vec<String> {
    s.json("/chat/users")["online"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// Sends `head` + `body` (the body hides a join of a fresh name); asserts one answer of
/// `status` with a JSON error, `Connection: close`, the connection closed by the server, and the
/// hidden join never served.
fn refused(s: &TestServer, status: u16, head: &str, body: &str) -> Exchange {
    let name = unique("smug");
    let hidden = hidden_join(&name);
    let body = body.replace("{HIDDEN}", &hidden);
    let request = format!("{head}\r\n\r\n{body}");
    let got = exchange(s.addr, request.as_bytes(), false, CLOSE_WITHIN);
    assert!(
        got.closed,
        "not closed by the server: {head:?}\n{}",
        got.text
    );
    assert_eq!(got.statuses(), vec![status], "{head:?}\n{}", got.text);
    assert_eq!(got.header("Connection"), Some("close"), "{head:?}");
    let error: serde_json::Value = serde_json::from_str(got.body()).unwrap();
    assert!(error["error"].is_string(), "{}", got.body());
    assert!(
        !online(s).contains(&name),
        "the hidden request was served: {head:?}"
    );
    got
}

#[test]
fn transfer_encodings_other_than_chunked_are_refused_and_closed() {
    let s = start(|_| {});
    let before = s.metric("syncast_rejected_total{reason=\"bad-framing\"}");
    let base = "POST /chat/join HTTP/1.1\r\nHost: x";
    for te in [
        "gzip",
        "chunked, gzip",
        "gzip, chunked",
        "identity",
        "deflate",
    ] {
        let got = refused(
            &s,
            400,
            &format!("{base}\r\nTransfer-Encoding: {te}"),
            "{HIDDEN}",
        );
        assert!(
            got.body().contains("Transfer-Encoding"),
            "{te}: {}",
            got.text
        );
    }
    // Two lines, even of chunked.
    refused(
        &s,
        400,
        &format!("{base}\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked"),
        "0\r\n\r\n{HIDDEN}",
    );
    refused(
        &s,
        400,
        &format!("{base}\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip"),
        "{HIDDEN}",
    );
    // In HTTP/1.0 (RFC 9112 6.1).
    refused(
        &s,
        400,
        "POST /chat/join HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked",
        "{HIDDEN}",
    );
    let after = s.metric("syncast_rejected_total{reason=\"bad-framing\"}");
    assert_eq!(after - before, 8.0);
}

#[test]
fn transfer_encoding_with_content_length_is_refused() {
    let s = start(|_| {});
    for cl in ["5", "0", "abc"] {
        refused(
            &s,
            400,
            &format!(
                "GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: {cl}\r\nTransfer-Encoding: chunked"
            ),
            "0\r\n\r\n{HIDDEN}",
        );
        refused(
            &s,
            400,
            &format!(
                "GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: {cl}"
            ),
            "{HIDDEN}",
        );
    }
}

#[test]
fn content_lengths_that_differ_or_are_not_digits_are_refused() {
    let s = start(|_| {});
    let h = "GET /healthz HTTP/1.1\r\nHost: x";
    // tiny_http frames by the first (5 bytes: "hello"); a reader taking the second (3) would see
    // "lo" + the hidden request.
    refused(
        &s,
        400,
        &format!("{h}\r\nContent-Length: 5\r\nContent-Length: 3"),
        "hello{HIDDEN}",
    );
    // tiny_http reads no body for these and would parse the hidden request right after the
    // headers; "+5" it takes as 5.
    for cl in ["abc", "-1", "+5", "", "5 5", "5, 5", "0x5"] {
        let got = refused(
            &s,
            400,
            &format!("{h}\r\nContent-Length: {cl}"),
            "hello{HIDDEN}",
        );
        assert!(
            got.body().contains("Content-Length"),
            "{cl:?}: {}",
            got.text
        );
    }
    // Beyond 64 bits: tiny_http would read no body at all.
    refused(
        &s,
        413,
        &format!("{h}\r\nContent-Length: 99999999999999999999"),
        "{HIDDEN}",
    );
}

#[test]
fn a_body_with_connection_upgrade_and_control_bytes_in_values_are_refused() {
    let s = start(|_| {});
    refused(
        &s,
        400,
        "POST /chat/join HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: x\r\nContent-Length: 5",
        "hello{HIDDEN}",
    );
    // A bare CR or a NUL inside a value (tiny_http passes both through).
    refused(
        &s,
        400,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\rb",
        "{HIDDEN}",
    );
    refused(
        &s,
        400,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\0b",
        "{HIDDEN}",
    );
}

/// The shape the audit found: a chunked body the route never reads is parsed by tiny_http as the
/// next request, so a body shaped like a request is served as one. Here the connection closes
/// after the answer and the hidden request is discarded unanswered, both for a route answered on
/// the dispatcher and for one answered on a request thread.
#[test]
fn an_unread_chunked_body_shaped_like_a_request_is_never_served() {
    let s = start(|_| {});
    let before = s.metric("syncast_requests_discarded_total");
    for (head, status) in [
        // Answered inline on the dispatcher; never reads a body.
        ("GET /healthz HTTP/1.1\r\nHost: x", 200),
        // Answered on a request thread (no token: 401 before any body is read).
        ("POST /chat/leave HTTP/1.1\r\nHost: x", 401),
        // 404, inline.
        ("POST /nowhere HTTP/1.1\r\nHost: x", 404),
    ] {
        let name = unique("smug");
        let request = format!(
            "{head}\r\nTransfer-Encoding: chunked\r\n\r\n{}",
            hidden_join(&name)
        );
        let got = exchange(s.addr, request.as_bytes(), false, CLOSE_WITHIN);
        assert!(got.closed, "{head}: {}", got.text);
        assert_eq!(got.statuses(), vec![status], "{head}: {}", got.text);
        assert_eq!(got.header("Connection"), Some("close"));
        assert!(
            !online(&s).contains(&name),
            "{head}: the hidden request was served"
        );
    }
    crate::common::wait_for("the hidden requests counted as discarded", || {
        (s.metric("syncast_requests_discarded_total") >= before + 3.0).then_some(())
    });
}

#[test]
fn identical_content_lengths_and_chunked_in_any_case_are_served_and_kept_alive() {
    let s = start(|_| {});
    let a = unique("dup");
    let b = unique("caps");
    // Two identical lengths: one body, then a second request on the same connection.
    let chunked = format!("{:x}\r\n{b}\r\n0\r\n\r\n", b.len());
    let request = format!(
        "POST /chat/join HTTP/1.1\r\nHost: x\r\nContent-Length: {n}\r\nContent-Length: {n}\r\n\r\n{a}\
         POST /chat/join HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n{chunked}\
         GET /chat/users HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        n = a.len()
    );
    let got = exchange(s.addr, request.as_bytes(), false, CLOSE_WITHIN);
    assert_eq!(got.statuses(), vec![201, 201, 200], "{}", got.text);
    let users = online(&s);
    assert!(users.contains(&a) && users.contains(&b), "{users:?}");
}

#[test]
fn connect_is_answered_then_the_connection_closes() {
    let s = start(|_| {});
    let name = unique("tunnel");
    let request = format!(
        "CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n{}",
        hidden_join(&name)
    );
    let got = exchange(s.addr, request.as_bytes(), false, CLOSE_WITHIN);
    assert!(got.closed, "{}", got.text);
    assert_eq!(got.statuses(), vec![404], "{}", got.text);
    assert!(!online(&s).contains(&name));
}
