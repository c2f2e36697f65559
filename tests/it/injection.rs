//! No byte a client sent ever appears in a response header. A marker, alone and with CR/LF
//! (percent-encoded where the transport allows nothing else; raw, where it does), goes into every
//! place a client controls: path segments, query values, header values (Origin, Authorization,
//! Last-Event-ID, Content-Type, preflight headers, Host), methods and bodies, on every route, with
//! CORS off and on. Every response head is read and checked.

use std::io::Write;
use std::net::TcpStream;

use crate::common::raw::read_head;
use crate::common::{start, TestServer, PATIENCE};

const MARK: &str = "zq7inj";

/// Values carrying the marker: plain, after an encoded CRLF, after a raw CR.
fn encoded_values() -> Vec<String> {
    vec![
        MARK.to_string(),
        format!("a%0d%0aInjected:%20{MARK}"),
        format!("%0D%0ASet-Cookie:%20{MARK}=1"),
        format!("{MARK}%00x"),
        format!("%E2%80%A8{MARK}"),
    ]
}

/// Header values (raw, after tiny_http's trimming; CR inside a value is refused with 400 before
/// routing, which is checked too).
fn header_values() -> Vec<String> {
    vec![
        MARK.to_string(),
        format!("https://{MARK}.example"),
        format!("Bearer {MARK}"),
        format!("x\r{MARK}: 1"),
        format!("{MARK}\t{MARK}"),
    ]
}

/// Sends `request` on a fresh connection and returns the first response head.
fn head_of(s: &TestServer, request: &str) -> String {
    let mut sock = TcpStream::connect(s.addr).unwrap();
    sock.write_all(request.as_bytes()).unwrap();
    read_head(&mut sock, PATIENCE)
}

/// The requests: every route and method, with the marker in each client-controlled place.
fn requests() -> Vec<String> {
    let mut out = Vec::new();
    let get = |path: &str, extra: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n")
    };
    for v in encoded_values() {
        for path in [
            format!("/sse/call/{v}"),
            format!("/sse/call/ok?mode={v}"),
            format!("/alarms/{v}"),
            format!("/chat/stream?name={v}"),
            format!("/chat/stream?token={v}"),
            format!("/chat/stream?name=n{}&last_event_id={v}", unique_suffix()),
            format!("/chat/{v}"),
            format!("/{v}"),
            format!("/healthz?{v}={v}"),
        ] {
            out.push(get(&path, ""));
            for method in ["POST", "PUT", "DELETE", "OPTIONS", "PATCH", MARK] {
                out.push(format!(
                    "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
                ));
            }
        }
    }
    for v in header_values() {
        for name in [
            "Origin",
            "Authorization",
            "Last-Event-ID",
            "Content-Type",
            "Access-Control-Request-Method",
            "Access-Control-Request-Headers",
            "Accept",
            "User-Agent",
            MARK,
        ] {
            let h = format!("{name}: {v}\r\n");
            out.push(get("/healthz", &h));
            out.push(get(&format!("/chat/stream?name=h{}", unique_suffix()), &h));
            out.push(get("/chat/stream", &h));
            out.push(get("/sse/call/hdr", &h));
            out.push(format!(
                "OPTIONS /alarms/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{h}\r\n"
            ));
            out.push(format!(
                "POST /chat/messages HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{h}Content-Length: 2\r\n\r\nhi"
            ));
        }
        out.push(format!(
            "GET /healthz HTTP/1.1\r\nHost: {v}\r\nConnection: close\r\n\r\n"
        ));
    }
    // Bodies.
    for body in [
        format!("{MARK}\r\nInjected: {MARK}"),
        format!("{{\"name\":\"{MARK}\\r\\nX: 1\"}}"),
        MARK.to_string(),
    ] {
        for (path, ctype) in [
            ("/chat/join", "text/plain"),
            ("/chat/join", "application/json"),
            ("/chat/messages?token=zz", "text/plain"),
            ("/chat/name?token=zz", "application/json"),
            ("/alarms/b", "text/plain"),
        ] {
            out.push(format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ));
        }
    }
    out
}

fn unique_suffix() -> String {
    crate::common::unique("")
}

fn check_heads(s: &TestServer) -> usize {
    let mut checked = 0;
    for request in requests() {
        let head = head_of(s, &request);
        assert!(
            head.starts_with("HTTP/1."),
            "no answer to {request:?}: {head:?}"
        );
        let lower = head.to_ascii_lowercase();
        assert!(
            !lower.contains(MARK),
            "client bytes in a response head:\n{request:?}\n{head}"
        );
        for line in head.lines().skip(1) {
            let name = line.split(':').next().unwrap_or("");
            assert!(
                !name.eq_ignore_ascii_case("injected") && !name.eq_ignore_ascii_case("set-cookie"),
                "{request:?}\n{head}"
            );
        }
        checked += 1;
    }
    checked
}

#[test]
fn no_client_byte_reaches_a_response_head_with_cors_off() {
    let s = start(|_| {});
    let n = check_heads(&s);
    assert!(n > 400, "{n} requests");
}

#[test]
fn no_client_byte_reaches_a_response_head_with_cors_on() {
    let s = start(|c| c.cors_origin = Some("https://app.example".into()));
    let n = check_heads(&s);
    assert!(n > 400, "{n} requests");
    // The configured origin is what the CORS headers carry, never the request's Origin.
    let head = head_of(
        &s,
        &format!("GET /healthz HTTP/1.1\r\nHost: x\r\nOrigin: https://{MARK}.example\r\nConnection: close\r\n\r\n"),
    );
    assert!(
        head.contains("Access-Control-Allow-Origin: https://app.example\r\n"),
        "{head}"
    );
}
