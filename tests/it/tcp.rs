//! The chat room over plain TCP (`--chat-tcp`) on a real server, with real sockets: TCP and
//! SSE members talk both ways in one room and never hear themselves, names are unique across
//! both, `/who` and `/quit` do what they say, a socket the client closes ends its session at
//! once, every bad line gets its `! ` line and the connection stays, a client that never names
//! itself is closed at `--header-timeout`, a reader too slow for its queue is cut off without
//! hurting anyone, refusals cost no thread, shutdown says goodbye and joins every thread, auth
//! asks for a token first, and `/metrics` counts TCP members apart.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::{json, Value};

use super::chat::{join_only, say, Member, Poster};
use crate::common::{
    auth, log_lines, start, start_secured, unique, wait_for, wait_log, TestServer, PATIENCE,
};

/// A server with `--chat-tcp 127.0.0.1:0`, `tweak` after that.
fn server(tweak: impl FnOnce(&mut syncast::Config)) -> TestServer {
    start(|c| {
        c.chat_tcp = Some("127.0.0.1:0".parse().unwrap());
        tweak(c);
    })
}

fn tcp_addr(s: &TestServer) -> SocketAddr {
    s.server.as_ref().unwrap().chat_tcp_addr().unwrap()
}

/// A TCP chat client: lines out, lines in.
struct Tcp {
    reader: BufReader<TcpStream>,
}

impl Tcp {
    /// Connects and reads the greeting.
    fn connect(s: &TestServer) -> Tcp {
        let mut t = Tcp::raw(s);
        let greeting = t.line().expect("a greeting");
        assert!(greeting.starts_with("* welcome"), "{greeting}");
        assert!(greeting.contains("/name NAME") || greeting.contains("/auth"));
        t
    }

    /// Connects without reading anything.
    fn raw(s: &TestServer) -> Tcp {
        let sock = TcpStream::connect(tcp_addr(s)).unwrap();
        sock.set_read_timeout(Some(PATIENCE)).unwrap();
        Tcp {
            reader: BufReader::new(sock),
        }
    }

    /// Connects and joins as `name`.
    fn join(s: &TestServer, name: &str) -> Tcp {
        let mut t = Tcp::connect(s);
        t.send(&format!("/name {name}"));
        let answer = t.line().expect("an answer");
        assert!(answer.starts_with(&format!("* you are {name}")), "{answer}");
        t
    }

    fn sock(&self) -> &TcpStream {
        self.reader.get_ref()
    }

    /// Sends one line (`\r\n`, as telnet does).
    fn send(&mut self, line: &str) {
        self.send_bytes(format!("{line}\r\n").as_bytes());
    }

    fn send_bytes(&mut self, bytes: &[u8]) {
        self.sock().write_all(bytes).unwrap();
    }

    /// The next line without its `\n`; `None` at EOF.
    fn line(&mut self) -> Option<String> {
        let mut buf = Vec::new();
        let n = self
            .reader
            .read_until(b'\n', &mut buf)
            .unwrap_or_else(|e| panic!("tcp read: {e}"));
        if n == 0 {
            return None;
        }
        assert_eq!(buf.pop(), Some(b'\n'), "whole lines only");
        Some(String::from_utf8(buf).expect("UTF-8 from the server"))
    }

    /// Lines until (and including) the first that `done` accepts; panics at EOF.
    fn until(&mut self, done: impl Fn(&str) -> bool) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            let l = self
                .line()
                .unwrap_or_else(|| panic!("EOF before the line awaited; read {out:?}"));
            let stop = done(&l);
            out.push(l);
            if stop {
                return out;
            }
        }
    }

    /// The next line starting with `prefix`, skipping room events (`<…>` and `* … joined`).
    fn answer(&mut self, prefix: &str) -> String {
        self.until(|l| l.starts_with(prefix)).pop().unwrap()
    }

    /// Reads to EOF; the lines read.
    fn rest(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(l) = self.line() {
            out.push(l);
        }
        out
    }
}

#[test]
fn tcp_and_sse_members_talk_both_ways_and_nobody_hears_themselves() {
    let s = server(|_| {});
    let (a, b) = (unique("tcpa"), unique("sseb"));
    let mut alice = Tcp::join(&s, &a);
    let mut bob = Member::join(&s, &b);
    // Both see bob join (alice: as a line, bob: as a presence event).
    alice.until(|l| l == format!("* {b} joined"));
    bob.joined(&a);
    alice.send("hello from tcp");
    alice.send("and again");
    say(&s, &bob.token, "hello from sse");
    let got = bob.messages_until("and again");
    let texts: Vec<(String, String)> = got.into_iter().map(|m| (m.1, m.2)).collect();
    assert_eq!(
        texts,
        vec![
            (a.clone(), "hello from tcp".to_string()),
            (a.clone(), "and again".to_string())
        ],
        "the TCP member's lines reach the SSE member as messages, in order"
    );
    let lines = alice.until(|l| l.starts_with(&format!("<{b}>")));
    assert_eq!(lines.last().unwrap(), &format!("<{b}> hello from sse"));
    assert!(
        !lines.iter().any(|l| l.starts_with(&format!("<{a}>"))),
        "no own echo: {lines:?}"
    );
    // An SSE text of several lines reads as several lines, each with the sender's name.
    say(&s, &bob.token, "one\n* fake left\r\ntwo");
    let lines = alice.until(|l| l == format!("<{b}> two"));
    assert_eq!(
        lines,
        vec![
            format!("<{b}> one"),
            format!("<{b}> * fake left"),
            format!("<{b}> two")
        ]
    );
    // Two TCP members: each hears the other, not itself.
    let c = unique("tcpc");
    let mut carol = Tcp::join(&s, &c);
    alice.until(|l| l == format!("* {c} joined"));
    carol.send("hi all");
    assert_eq!(alice.answer("<"), format!("<{c}> hi all"));
    alice.send("hi carol");
    assert_eq!(carol.answer("<"), format!("<{a}> hi carol"));
    carol.send("/who");
    let who = carol.answer("* online:");
    for n in [&a, &b, &c] {
        assert!(who.contains(n.as_str()), "{who}");
    }
}

#[test]
fn names_are_unique_across_transports_case_insensitively_and_renames_reach_both() {
    let s = server(|_| {});
    let sse_name = unique("Carol");
    let _carol = Member::join(&s, &sse_name);
    let mut t = Tcp::connect(&s);
    t.send(&format!("/name {}", sse_name.to_lowercase()));
    assert_eq!(t.line().unwrap(), "! name taken");
    let d = unique("dave");
    t.send(&format!("/name {d}"));
    assert!(t.line().unwrap().starts_with(&format!("* you are {d}")));
    let r = s.request("POST", "/chat/join", Some(&d.to_uppercase()));
    assert_eq!(r.status, 409, "taken over HTTP too: {}", r.body);
    // A rename: the answer, then the room's event, which the SSE member gets too.
    let mut watcher = Member::join(&s, &unique("w"));
    let to = unique("davey");
    t.send(&format!("/name {to}"));
    assert_eq!(t.answer("* you are"), format!("* you are now {to}"));
    t.until(|l| l == format!("* {d} is now {to}"));
    let ev = watcher.next_of("rename");
    assert_eq!(ev.data, json!({"from": d, "to": to}));
    t.send(&format!("/name {}", sse_name.to_uppercase()));
    assert_eq!(t.answer("!"), "! name taken");
    t.send("/name two words");
    assert!(t.answer("!").starts_with("! invalid name"));
    // Names are kept as the HTTP chat keeps them (NFC): a decomposed name is shown composed,
    // and taken in either form.
    let base = unique("jose");
    let mut u = Tcp::connect(&s);
    u.send(&format!("/name {base}e\u{301}"));
    assert_eq!(
        u.answer("*"),
        format!("* you are {base}\u{e9}: 4 online (/who lists them)")
    );
    let r = s.request("POST", "/chat/join", Some(&format!("{base}\u{e9}")));
    assert_eq!(r.status, 409, "{}", r.body);
}

#[test]
fn quit_and_a_closed_socket_each_end_the_session_at_once_with_a_leave() {
    let s = server(|_| {});
    let watch = unique("watch");
    let mut watcher = Member::join(&s, &watch);
    // Its own join announced: a wake round ran, so the room's round thread runs (until the last
    // stream goes).
    watcher.joined(&watch);
    // Every thread the server spawned, with one SSE member (and so the watcher and the round
    // thread) running.
    let baseline = s.metric("syncast_threads_spawned_live");
    // A TCP member watches too: leaves reach it as `* NAME left` lines.
    let mut tcp_watcher = Tcp::join(&s, &unique("twatch"));
    let (q, c) = (unique("quitter"), unique("closer"));
    let mut quitter = Tcp::join(&s, &q);
    let closer = Tcp::join(&s, &c);
    watcher.joined(&q);
    watcher.joined(&c);
    quitter.send("/quit");
    assert_eq!(quitter.rest().last().map(String::as_str), Some("* bye"));
    assert_eq!(watcher.left(&q), json!({"name": q, "reason": "left"}));
    // Closing the socket: no token to come back with, so the leave comes at once, not after
    // --grace (30 s here).
    drop(closer);
    assert_eq!(watcher.left(&c), json!({"name": c, "reason": "left"}));
    tcp_watcher.until(|l| l == format!("* {q} left"));
    tcp_watcher.until(|l| l == format!("* {c} left"));
    wait_log(&["chat tcp closed", &format!("name={q} "), "reason=quit"]);
    wait_log(&[
        "chat tcp closed",
        &format!("name={c} "),
        "reason=client-gone",
    ]);
    let users = s.json("/chat/users")["online"].clone();
    assert!(!users
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n == &json!(q) || n == &json!(c)));
    drop(tcp_watcher);
    wait_for("the members' threads gone", || {
        (s.threads_of("chat-tcp") == 0).then_some(())
    });
    wait_for("the server's threads back to the baseline", || {
        (s.metric("syncast_threads_spawned_live") == baseline).then_some(())
    });
}

#[test]
fn every_bad_line_gets_its_answer_and_the_connection_stays() {
    let s = server(|c| {
        c.rate = 1.0;
        c.burst = 2.0;
    });
    let mut t = Tcp::connect(&s);
    t.send("hello");
    assert_eq!(t.line().unwrap(), "! set a name first: /name NAME");
    t.send("/who");
    assert!(
        t.line().unwrap().starts_with("* online:"),
        "/who before a name"
    );
    t.send("/name");
    assert_eq!(t.line().unwrap(), "! usage: /name NAME");
    let n = unique("bad");
    t.send(&format!("/name {n}"));
    t.answer("* you are");
    // Over the cap: discarded whole (a line of exactly 4096 bytes is not).
    t.send(&"x".repeat(5000));
    assert_eq!(t.answer("!"), "! line too long (max 4096 bytes): not sent");
    t.send_bytes(b"caf\xe9\n");
    assert_eq!(t.answer("!"), "! invalid UTF-8: lines must be UTF-8 text");
    t.send_bytes(b"a\0b\n");
    assert_eq!(t.answer("!"), "! NUL bytes are not allowed");
    t.send("/frobnicate now");
    assert!(t.answer("!").starts_with("! unknown command /frobnicate"));
    // The flood: a burst of 2 (a line that starts with `/` sent as `//…`, and a line of
    // exactly 4096 bytes), then `! slow down`.
    let mut watcher = Member::join(&s, &unique("wb"));
    let exact = "y".repeat(4096);
    t.send("//shrug");
    t.send(&exact);
    for i in 0..4 {
        t.send(&format!("flood {i}"));
    }
    assert_eq!(t.answer("!"), "! slow down");
    assert!(s.metric("syncast_rejected_total{reason=\"rate-limited\"}") >= 1.0);
    // The connection is still there, and the lines within the burst went out, in order.
    t.send("/who");
    assert!(t.answer("* online:").contains(&n));
    let got = watcher.next_of("message");
    assert_eq!(
        got.data["text"],
        json!("/shrug"),
        "`//` sends a line that starts with `/`"
    );
    let got = watcher.next_of("message");
    assert_eq!(
        got.data["text"],
        json!(exact),
        "a line of exactly 4096 bytes is sent"
    );
    for (why, n) in [("too-long", 1.0), ("not-utf8", 1.0), ("nul", 1.0)] {
        let name = format!("syncast_chat_tcp_bad_lines_total{{why=\"{why}\"}}");
        assert_eq!(s.metric(&name), n, "{why}");
    }
}

#[test]
fn a_client_that_does_not_name_itself_within_the_header_timeout_is_closed() {
    let s = server(|c| c.header_timeout = Duration::from_millis(300));
    // A member with a name, connected first: its deadline would pass before the idle one's.
    let n = unique("named");
    let mut named = Tcp::join(&s, &n);
    let mut idle = Tcp::connect(&s);
    // Talking does not help: the deadline runs from the connect.
    idle.send("hello?");
    let rest = idle.rest();
    assert_eq!(
        rest.last().map(String::as_str),
        Some("! timed out: no /name NAME within 300ms"),
        "{rest:?}"
    );
    wait_log(&["chat tcp closed", "name=- ", "reason=header-timeout"]);
    // The named member, connected before the idle one was timed out, is not.
    named.send("/who");
    assert!(named.answer("* online:").contains(&n));
}

/// A reader that stops reading falls behind by more than `--queue` events while its socket's
/// buffers fill: the room cuts it off (at a broadcast), the others get everything. Once it
/// reads again it finds what reached it, then `! too slow, disconnected`, then EOF, and its
/// session is gone with a leave.
#[test]
fn a_slow_tcp_reader_is_cut_off_without_affecting_the_others() {
    let s = server(|c| {
        c.queue = 32;
        c.history = 100_000;
        // Long: the slow member's blocked write must still be waiting when it reads again.
        c.write_timeout = Duration::from_secs(120);
        c.rate = 100_000.0;
        c.burst = 100_000.0;
    });
    let slow_name = unique("slow");
    let slow = Tcp::join(&s, &slow_name);
    let fast_name = unique("fast");
    let mut fast = Tcp::join(&s, &fast_name);
    let mut sse = Member::join(&s, &unique("sse"));
    let poster_name = unique("poster");
    let poster = Poster::new(&s, &join_only(&s, &poster_name));
    let fast_reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        loop {
            let l = fast.line().expect("the fast member's stream goes on");
            if let Some(text) = l.strip_prefix(&format!("<{poster_name}> ")) {
                if text == "end" {
                    return got;
                }
                got.push(text.split(':').next().unwrap().to_string());
            }
        }
    });
    // The SSE member reads all the time too, else it would be cut off as slow as well.
    let sse_reader = std::thread::spawn(move || {
        let got = sse.messages_until("end");
        (sse, got)
    });
    let big = "x".repeat(4000);
    let mut posted = 0u64;
    wait_for("the slow member cut off", || {
        for _ in 0..20 {
            poster.say(&format!("{posted}:{big}"));
            posted += 1;
        }
        (s.metric("syncast_chat_slow_cutoffs_total") >= 1.0).then_some(())
    });
    poster.say("end");
    let fast_got = fast_reader.join().unwrap();
    let want: Vec<String> = (0..posted).map(|i| i.to_string()).collect();
    assert_eq!(
        fast_got, want,
        "the fast TCP member got everything, in order"
    );
    let (mut sse, sse_got) = sse_reader.join().unwrap();
    assert_eq!(sse_got.len() as u64, posted + 1, "so did the SSE member");
    // The slow one reads again: whole lines of what reached it, then the farewell, then EOF.
    let mut slow = slow;
    let rest = slow.rest();
    assert_eq!(
        rest.last().map(String::as_str),
        Some("! too slow, disconnected"),
        "{:?}",
        &rest[rest.len().saturating_sub(3)..]
    );
    wait_log(&[
        "chat tcp closed",
        &format!("name={slow_name} "),
        "reason=slow",
    ]);
    assert_eq!(sse.left(&slow_name)["reason"], json!("left"));
}

#[test]
fn refused_connections_get_a_line_and_are_closed_without_a_thread() {
    let s = server(|c| c.max_clients = 1);
    let mut first = Tcp::connect(&s);
    let mut second = Tcp::raw(&s);
    assert_eq!(
        second.rest(),
        vec!["! too many clients: try again later".to_string()]
    );
    assert_eq!(s.threads_of("chat-tcp"), 1, "only the first has a thread");
    assert!(s.metric("syncast_rejected_total{reason=\"max-clients\"}") >= 1.0);
    first.send("/quit");
    first.rest();
    drop(s);
    // A full room: refused at the door too (the room is checked before a thread is spent).
    let s = server(|c| c.max_members = 1);
    let _only = Member::join(&s, &unique("only"));
    let mut late = Tcp::raw(&s);
    assert_eq!(
        late.rest(),
        vec!["! the room is full: try again later".to_string()]
    );
    assert_eq!(s.threads_of("chat-tcp"), 0);
    wait_log(&["chat tcp refused", "reason=room-full"]);
}

#[test]
fn shutdown_tells_every_tcp_client_and_joins_every_thread() {
    let mut s = server(|_| {});
    let mut named = Tcp::join(&s, &unique("bye"));
    let mut unnamed = Tcp::connect(&s);
    wait_for("two member threads", || {
        (s.threads_of("chat-tcp") == 2).then_some(())
    });
    let joined = s.shutdown();
    // The dispatcher, the refresher, the accept thread, two members and the watcher.
    assert!(joined >= 6, "joined {joined}");
    for t in [&mut named, &mut unnamed] {
        assert_eq!(
            t.rest().last().map(String::as_str),
            Some("* server shutting down")
        );
    }
    assert!(!log_lines(&["chat tcp closed", "reason=shutdown"]).is_empty());
}

#[test]
fn metrics_count_tcp_members_apart() {
    let s = server(|_| {});
    let base_members = s.metric("syncast_chat_members");
    let _sse = Member::join(&s, &unique("m-sse"));
    let mut t = Tcp::join(&s, &unique("m-tcp"));
    let _unnamed = Tcp::connect(&s);
    t.send("/who");
    t.answer("* online:");
    assert_eq!(s.metric("syncast_chat_tcp_members"), 1.0);
    assert_eq!(s.metric("syncast_chat_tcp_connections"), 2.0);
    assert_eq!(s.metric("syncast_chat_members"), base_members + 2.0);
    assert_eq!(s.metric("syncast_chat_streams_attached"), 1.0);
    assert!(s.metric("syncast_chat_tcp_lines_total") >= 2.0);
    assert_eq!(s.metric("syncast_threads_live{role=\"tcp-accept\"}"), 1.0);
    drop(t);
    wait_for("the TCP member gone from the gauge", || {
        (s.metric("syncast_chat_tcp_members") == 0.0).then_some(())
    });
}

#[test]
fn with_auth_on_a_tcp_client_needs_a_token_first_and_its_name_comes_from_it() {
    let s = start_secured(|c| {
        c.chat_tcp = Some("127.0.0.1:0".parse().unwrap());
        c.jwt_leeway = Duration::ZERO;
    });
    let mut t = Tcp::connect(&s);
    for line in ["hello", "/who"] {
        t.send(line);
        assert_eq!(t.line().unwrap(), "! authenticate first: /auth TOKEN");
    }
    t.send("/name mallory");
    assert!(t.line().unwrap().starts_with("! authenticate first"));
    t.send("/auth not.a.token");
    assert_eq!(t.line().unwrap(), "! invalid token: malformed");
    let expired = auth::hs256(&json!({"sub": "x", "name": "x", "exp": 1}));
    t.send(&format!("/auth {expired}"));
    assert_eq!(t.line().unwrap(), "! invalid token: expired");
    let n = unique("authed");
    t.send(&format!("/auth {}", auth::member(&n)));
    assert!(t.line().unwrap().starts_with(&format!("* you are {n}")));
    t.send("/name other");
    assert!(t
        .answer("!")
        .starts_with("! forbidden: names come from the token"));
    t.send(&format!("/auth {}", auth::member(&unique("someone"))));
    assert!(t.answer("!").starts_with("! forbidden: the name must be"));
    // Its messages reach an SSE member (with its own token), under the token's name.
    let sse_name = unique("sse-authed");
    let mut sse = crate::common::Sse::open(
        s.addr,
        &format!("/chat/stream?name={sse_name}"),
        &[(
            "Authorization",
            &format!("Bearer {}", auth::member(&sse_name)),
        )],
    );
    assert_eq!(sse.status, 200);
    t.until(|l| l == format!("* {sse_name} joined"));
    t.send("signed in");
    let message = loop {
        let (event, _, data) = sse.next_event().unwrap();
        if event == "message" {
            break serde_json::from_str::<Value>(&data).unwrap();
        }
    };
    assert_eq!(
        (message["from"].clone(), message["text"].clone()),
        (json!(n), json!("signed in"))
    );
    // A token that runs out ends the connection (renewing it first would have kept it).
    let short = unique("short");
    let mut c = auth::claims(&short);
    c["name"] = json!(short);
    c["exp"] = json!(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 2
    );
    let mut brief = Tcp::connect(&s);
    brief.send(&format!("/auth {}", auth::hs256(&c)));
    assert!(brief
        .line()
        .unwrap()
        .starts_with(&format!("* you are {short}")));
    brief.send(&format!("/auth {}", auth::member(&short)));
    assert_eq!(brief.answer("* token"), "* token renewed");
    let mut c2 = c.clone();
    c2["exp"] = c["exp"].clone();
    let mut briefer = Tcp::connect(&s);
    let s2 = unique("s2");
    c2["name"] = json!(s2);
    briefer.send(&format!("/auth {}", auth::hs256(&c2)));
    assert!(briefer
        .line()
        .unwrap()
        .starts_with(&format!("* you are {s2}")));
    assert_eq!(
        briefer.rest().last().map(String::as_str),
        Some("! token expired: connect again with a new one")
    );
    wait_log(&[
        "chat tcp closed",
        &format!("name={s2} "),
        "reason=token-expired",
    ]);
    // The renewed one is still there.
    brief.send("/who");
    assert!(brief.answer("* online:").contains(&short));
    let mut sock = TcpStream::connect(tcp_addr(&s)).unwrap();
    let mut buf = [0u8; 64];
    let n = sock.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("/auth TOKEN"));
    sock.write_all(b"/quit\n").unwrap();
}
