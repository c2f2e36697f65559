//! The chat room on a real server: members exchange messages exactly once and in order, names
//! are unique, a dropped client resumes with nothing lost, a reader that never reads is cut off
//! as slow without hurting anyone else, bad requests get their 4xx, sessions expire, and every
//! stream thread is gone once its client is.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::{log_lines, start, unique, wait_for, wait_log, Item, Reply, Sse, TestServer};
use serde_json::{json, Value};

/// One room event as a member saw it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Ev {
    pub(crate) event: String,
    pub(crate) id: Option<u64>,
    pub(crate) data: Value,
}

/// A member with an open stream.
pub(crate) struct Member {
    pub(crate) name: String,
    pub(crate) token: String,
    sse: Sse,
    /// Id of the last room event this member saw.
    last: u64,
    /// Names its `presence` events said joined, and their `left` entries, in order.
    joins: Vec<String>,
    leaves: Vec<Value>,
}

impl Member {
    /// Joins as `name` through `GET /chat/stream?name=` and reads the welcome.
    pub(crate) fn join(s: &TestServer, name: &str) -> Member {
        let mut sse = s.sse(&format!("/chat/stream?name={name}"));
        assert_eq!(sse.status, 200, "join {name}");
        let welcome = next(&mut sse).expect("welcome");
        assert_eq!(welcome.event, "welcome");
        assert_eq!(welcome.data["name"], name);
        Member {
            name: name.to_string(),
            token: welcome.data["token"].as_str().unwrap().to_string(),
            last: welcome.data["last_id"].as_u64().unwrap(),
            sse,
            joins: Vec::new(),
            leaves: Vec::new(),
        }
    }

    /// The next room event (welcome/reset included), skipping comments.
    pub(crate) fn next(&mut self) -> Option<Ev> {
        let ev = next(&mut self.sse)?;
        if let Some(id) = ev.id {
            self.last = id;
        }
        if ev.event == "presence" {
            for n in ev.data["joined"].as_array().expect("joined") {
                self.joins.push(n.as_str().expect("a name").to_string());
            }
            self.leaves
                .extend(ev.data["left"].as_array().expect("left").iter().cloned());
        }
        Some(ev)
    }

    /// Messages received until (and including) the one with `text`, as (id, from, text).
    pub(crate) fn messages_until(&mut self, text: &str) -> Vec<(u64, String, String)> {
        let mut out = Vec::new();
        loop {
            let ev = self
                .next()
                .unwrap_or_else(|| panic!("{}: stream ended before {text:?}", self.name));
            if ev.event == "message" {
                let m = message(&ev);
                let done = m.2 == text;
                out.push(m);
                if done {
                    return out;
                }
            }
        }
    }

    /// Reads events until a `presence` event has said `name` joined (maybe one read before).
    pub(crate) fn joined(&mut self, name: &str) {
        while !self.joins.iter().any(|n| n == name) {
            self.next().expect("event before end of stream");
        }
    }

    /// Reads events until a `presence` event has said `name` left (maybe one read before);
    /// returns its entry of `left` (`{"name","reason"}`).
    pub(crate) fn left(&mut self, name: &str) -> Value {
        loop {
            if let Some(e) = self.leaves.iter().find(|e| e["name"] == name) {
                return e.clone();
            }
            self.next().expect("event before end of stream");
        }
    }

    /// The next event of type `kind`, skipping others.
    pub(crate) fn next_of(&mut self, kind: &str) -> Ev {
        loop {
            let ev = self.next().expect("event before end of stream");
            if ev.event == kind {
                return ev;
            }
        }
    }
}

fn next(sse: &mut Sse) -> Option<Ev> {
    let (event, id, data) = sse.next_event()?;
    Some(Ev {
        event,
        id: id.map(|i| i.parse().expect("numeric id")),
        data: serde_json::from_str(&data).expect("one JSON line"),
    })
}

pub(crate) fn message(ev: &Ev) -> (u64, String, String) {
    assert_eq!(ev.data["id"].as_u64(), ev.id, "data id is the SSE id");
    (
        ev.id.unwrap(),
        ev.data["from"].as_str().unwrap().to_string(),
        ev.data["text"].as_str().unwrap().to_string(),
    )
}

pub(crate) fn post(s: &TestServer, token: &str, text: &str) -> Reply {
    s.request_with(
        "POST",
        "/chat/messages",
        Some(text),
        &[("Authorization", &format!("Bearer {token}"))],
    )
}

/// Posts and expects 202; returns the id.
pub(crate) fn say(s: &TestServer, token: &str, text: &str) -> u64 {
    let r = post(s, token, text);
    assert_eq!(r.status, 202, "{}", r.body);
    r.json()["id"].as_u64().unwrap()
}

/// Posts over one keep-alive connection, for tests that post a lot.
pub(crate) struct Poster {
    agent: ureq::Agent,
    url: String,
    auth: String,
}

impl Poster {
    pub(crate) fn new(s: &TestServer, token: &str) -> Poster {
        Poster {
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(crate::common::PATIENCE))
                .build()
                .into(),
            url: s.url("/chat/messages"),
            auth: format!("Bearer {token}"),
        }
    }

    /// Posts and expects 202; returns the id.
    pub(crate) fn say(&self, text: &str) -> u64 {
        let mut r = self
            .agent
            .post(&self.url)
            .header("Authorization", &self.auth)
            .send(text)
            .unwrap();
        let body = r.body_mut().read_to_string().unwrap();
        assert_eq!(r.status().as_u16(), 202, "{body}");
        serde_json::from_str::<Value>(&body).unwrap()["id"]
            .as_u64()
            .unwrap()
    }
}

/// `POST /chat/join`; returns the token.
pub(crate) fn join_only(s: &TestServer, name: &str) -> String {
    let r = s.request("POST", "/chat/join", Some(name));
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["name"], name);
    r.json()["token"].as_str().unwrap().to_string()
}

/// A raw request with a byte body (for bodies that are not UTF-8); returns status and body.
fn raw(s: &TestServer, head: &str, body: &[u8]) -> (u16, String) {
    let mut sock = TcpStream::connect(s.addr).unwrap();
    sock.set_read_timeout(Some(crate::common::PATIENCE))
        .unwrap();
    let rq = format!(
        "{head}\r\nHost: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        s.addr,
        body.len()
    );
    sock.write_all(rq.as_bytes()).unwrap();
    sock.write_all(body).unwrap();
    let mut out = String::new();
    let _ = sock.read_to_string(&mut out);
    let status = out.split(' ').nth(1).unwrap().parse().unwrap();
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

pub(crate) fn chat_threads_gone(s: &TestServer) {
    wait_for("no chat stream thread left", || {
        (s.threads_of("chat-stream") == 0 && s.metric("syncast_chat_streams_attached") == 0.0)
            .then_some(())
    });
}

#[test]
fn wake_rounds_run_on_one_thread_only_while_streams_are_attached() {
    let s = start(|_| {});
    assert_eq!(s.threads_of("chat-waker"), 0, "an idle server has none");
    for round in 0..2 {
        let (a_name, b_name) = (unique("ann"), unique("ben"));
        let mut a = Member::join(&s, &a_name);
        let b = Member::join(&s, &b_name);
        a.joined(&b_name);
        say(&s, &b.token, "hello");
        a.messages_until("hello");
        assert_eq!(s.threads_of("chat-waker"), 1, "one, however many streams");
        drop((a, b));
        chat_threads_gone(&s);
        wait_for(
            &format!("the round thread ends with the last stream ({round})"),
            || (s.threads_of("chat-waker") == 0).then_some(()),
        );
    }
}

#[test]
fn the_wake_round_thread_is_joined_at_shutdown() {
    let mut s = start(|_| {});
    let mut a = Member::join(&s, &unique("ann"));
    let b = Member::join(&s, &unique("ben"));
    say(&s, &b.token, "hello");
    a.messages_until("hello");
    assert_eq!(s.threads_of("chat-waker"), 1);
    // Two streams, the dispatcher, the refresher, the watcher and the round thread.
    assert_eq!(s.shutdown(), 6);
    drop((a, b));
}

#[test]
fn two_members_exchange_messages_in_order_and_never_hear_themselves() {
    let s = start(|_| {});
    let (a_name, b_name) = (unique("ann"), unique("ben"));
    let mut a = Member::join(&s, &a_name);
    let mut b = Member::join(&s, &b_name);
    a.joined(&b_name);
    let mut from_a = Vec::new();
    let mut from_b = Vec::new();
    for i in 0..10 {
        from_a.push((say(&s, &a.token, &format!("a{i}")), a_name.clone()));
        from_b.push((
            say(&s, &b.token, &format!("b{i}\nline two")),
            b_name.clone(),
        ));
    }
    from_a.push((say(&s, &a.token, "a-done"), a_name.clone()));
    from_b.push((say(&s, &b.token, "b-done"), b_name.clone()));
    let got_a: Vec<(u64, String)> = a
        .messages_until("b-done")
        .into_iter()
        .map(|(id, from, _)| (id, from))
        .collect();
    let got_b: Vec<(u64, String)> = b
        .messages_until("a-done")
        .into_iter()
        .map(|(id, from, _)| (id, from))
        .collect();
    assert_eq!(
        got_a, from_b,
        "a gets all of b's messages, in order, none of its own"
    );
    assert_eq!(
        got_b, from_a,
        "b gets all of a's messages, in order, none of its own"
    );
    assert_eq!(
        s.json("/chat/users")["online"],
        json!([a_name.clone(), b_name.clone()])
    );
    assert!(s.metric("syncast_chat_messages_total") >= 22.0);
}

#[test]
fn fifty_members_posting_at_once_each_receive_every_other_members_messages_once_in_order() {
    const N: usize = 50;
    const EACH: usize = 4;
    let s = start(|_| {});
    let mut members: Vec<Member> = (0..N).map(|_| Member::join(&s, &unique("m"))).collect();
    let s = Arc::new(s);
    let posters: Vec<_> = members
        .iter()
        .map(|m| {
            let (s, token, name) = (s.clone(), m.token.clone(), m.name.clone());
            std::thread::spawn(move || {
                (0..EACH)
                    .map(|k| say(&s, &token, &format!("{name}:{k}")))
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    let mut ids_by_sender: HashMap<String, Vec<u64>> = HashMap::new();
    for (m, p) in members.iter().zip(posters) {
        ids_by_sender.insert(m.name.clone(), p.join().unwrap());
    }
    // Someone without a stream says "end" after everyone else is done.
    let closer = join_only(&s, &unique("closer"));
    let end = say(&s, &closer, "end");
    for m in members.iter_mut() {
        let got = m.messages_until("end");
        assert_eq!(got.last().unwrap().0, end);
        let got = &got[..got.len() - 1];
        assert!(
            got.windows(2).all(|w| w[0].0 < w[1].0),
            "{}: ids in order",
            m.name
        );
        assert!(got.iter().all(|(_, from, _)| *from != m.name), "no echo");
        let mut expected: Vec<u64> = ids_by_sender
            .iter()
            .filter(|(from, _)| **from != m.name)
            .flat_map(|(_, ids)| ids.clone())
            .collect();
        expected.sort();
        let ids: Vec<u64> = got.iter().map(|g| g.0).collect();
        assert_eq!(
            ids, expected,
            "{}: every other message exactly once",
            m.name
        );
        // Each sender's own order survives.
        for (id, from, text) in got {
            let k = ids_by_sender[from].iter().position(|i| i == id).unwrap();
            assert_eq!(*text, format!("{from}:{k}"));
        }
    }
    drop(members);
    chat_threads_gone(&s);
}

#[test]
fn names_are_unique_case_insensitively_and_renames_are_broadcast() {
    let s = start(|_| {});
    let alice = unique("Alice");
    let mut a = Member::join(&s, &alice);
    let upper = alice.to_uppercase();
    let r = s.request("POST", "/chat/join", Some(&upper));
    assert_eq!((r.status, r.error()), (409, "name taken".to_string()));
    let taken = s.sse(&format!("/chat/stream?name={}", alice.to_lowercase()));
    assert_eq!(taken.status, 409);
    let bob = unique("bob");
    let b = join_only(&s, &bob);
    let rename = |token: &str, to: &str| {
        s.request_with(
            "POST",
            "/chat/name",
            Some(to),
            &[("Authorization", &format!("Bearer {token}"))],
        )
    };
    assert_eq!(rename(&b, &alice.to_lowercase()).status, 409);
    assert_eq!(rename(&b, "no spaces").status, 400);
    let carol = unique("carol");
    let r = rename(&b, &carol);
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({ "from": bob, "to": carol }));
    a.joined(&bob);
    assert_eq!(
        a.next_of("rename").data,
        json!({ "from": bob.clone(), "to": carol.clone() })
    );
    wait_log(&[
        "chat renamed",
        &format!("from={bob}"),
        &format!("to={carol}"),
    ]);
    // The old name is free again; messages now come from the new one.
    join_only(&s, &bob);
    say(&s, &b, "hello");
    assert_eq!(a.messages_until("hello")[0].1, carol);
    let mut online = vec![alice, bob, carol];
    online.sort();
    assert_eq!(s.json("/chat/users")["online"], json!(online));
}

#[test]
fn a_client_that_drops_and_reattaches_with_token_and_last_event_id_gets_exactly_what_it_missed() {
    let s = Arc::new(start(|c| c.rate = 10_000.0));
    let mut a = Member::join(&s, &unique("drop"));
    let poster = join_only(&s, &unique("poster"));
    let before: Vec<u64> = (0..5)
        .map(|i| say(&s, &poster, &format!("before{i}")))
        .collect();
    let seen = a.messages_until("before4");
    assert_eq!(seen.iter().map(|m| m.0).collect::<Vec<_>>(), before);
    let last = a.last;
    let token = a.token.clone();
    drop(a);
    let mut expected: Vec<String> = (0..5).map(|i| format!("gone{i}")).collect();
    for t in &expected {
        say(&s, &poster, t);
    }
    // Keep posting while the client reconnects, so some messages race the handoff.
    let during = {
        let (s, poster) = (s.clone(), poster.clone());
        std::thread::spawn(move || {
            for i in 0..40 {
                say(&s, &poster, &format!("during{i}"));
            }
            say(&s, &poster, "end");
        })
    };
    let sse = Sse::open(
        s.addr,
        &format!("/chat/stream?token={token}"),
        &[("Last-Event-ID", &last.to_string())],
    );
    assert_eq!(sse.status, 200);
    let mut a = Member {
        name: "drop".into(),
        token,
        sse,
        last,
        joins: Vec::new(),
        leaves: Vec::new(),
    };
    let welcome = a.next().unwrap();
    assert_eq!(welcome.event, "welcome");
    during.join().unwrap();
    expected.extend((0..40).map(|i| format!("during{i}")));
    expected.push("end".into());
    let got = a.messages_until("end");
    assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "in id order");
    assert_eq!(
        got.into_iter().map(|m| m.2).collect::<Vec<_>>(),
        expected,
        "exactly the missed messages, no gap, no duplicate"
    );
}

#[test]
fn a_resume_older_than_the_history_starts_with_reset() {
    let s = start(|c| c.history = 4);
    let poster = join_only(&s, &unique("p"));
    let token = join_only(&s, &unique("late"));
    let ids: Vec<u64> = (0..10)
        .map(|i| say(&s, &poster, &format!("m{i}")))
        .collect();
    let mut sse = Sse::open(
        s.addr,
        &format!("/chat/stream?token={token}&last_event_id=1"),
        &[],
    );
    assert_eq!(next(&mut sse).unwrap().event, "welcome");
    let reset = next(&mut sse).unwrap();
    assert_eq!(reset.event, "reset");
    assert_eq!(reset.data, json!({ "oldest": ids[6] }));
    let replayed: Vec<Option<u64>> = (0..4).map(|_| next(&mut sse).unwrap().id).collect();
    assert_eq!(
        replayed,
        ids[6..].iter().map(|i| Some(*i)).collect::<Vec<_>>()
    );
}

#[test]
fn an_unusable_or_future_last_event_id_starts_with_reset_and_everything_kept() {
    let s = start(|c| c.history = 4);
    let poster = join_only(&s, &unique("p"));
    let ids: Vec<u64> = (0..6).map(|i| say(&s, &poster, &format!("m{i}"))).collect();
    let far = (ids[5] + 1000).to_string();
    let hints: [(&str, Option<&str>, &str); 7] = [
        ("an empty header", Some(""), ""),
        ("a word", Some("abc"), ""),
        ("a negative number", Some("-3"), ""),
        (
            "a number too large for 64 bits",
            Some("99999999999999999999999"),
            "",
        ),
        (
            "an id beyond the newest (another run)",
            Some(far.as_str()),
            "",
        ),
        ("a word in the query", None, "&last_event_id=abc"),
        ("an empty query", None, "&last_event_id="),
    ];
    for (what, header, query) in hints {
        let token = join_only(&s, &unique("hint"));
        let headers: Vec<(&str, &str)> = header.map(|h| ("Last-Event-ID", h)).into_iter().collect();
        let mut sse = Sse::open(
            s.addr,
            &format!("/chat/stream?token={token}{query}"),
            &headers,
        );
        assert_eq!(sse.status, 200, "{what}");
        assert_eq!(next(&mut sse).unwrap().event, "welcome", "{what}");
        let reset = next(&mut sse).unwrap();
        assert_eq!(reset.event, "reset", "{what}");
        // Every join is a room event too: the history's oldest moves with each member joined.
        let oldest = reset.data["oldest"].as_u64().expect("oldest");
        let replayed: Vec<Option<u64>> = (0..4).map(|_| next(&mut sse).unwrap().id).collect();
        let kept: Vec<Option<u64>> = (oldest..oldest + 4).map(Some).collect();
        assert_eq!(replayed, kept, "{what}: everything kept follows the reset");
    }
    assert_eq!(
        s.metric("syncast_rejected_total{reason=\"bad-request\"}"),
        0.0
    );
}

#[test]
fn names_people_cannot_spoof_are_one_name_whatever_their_case_or_encoding() {
    let s = start(|_| {});
    let tag = unique("");
    let join = |name: &str| s.request("POST", "/chat/join", Some(name));
    let r = join(&format!("Stra\u{df}e{tag}"));
    assert_eq!(r.status, 201, "{}", r.body);
    // Full case folding: ß is ss.
    assert_eq!(join(&format!("STRASSE{tag}")).status, 409);
    assert_eq!(join(&format!("strasse{tag}")).status, 409);
    // The Kelvin sign is a K.
    assert_eq!(join(&format!("kelvin{tag}")).status, 201);
    assert_eq!(join(&format!("\u{212A}ELVIN{tag}")).status, 409);
    // Kept in NFC: e + COMBINING DIAERESIS comes back as ë, and the composed form is taken.
    let r = join(&format!("Zoe\u{308}{tag}"));
    assert_eq!(r.json()["name"], format!("Zo\u{eb}{tag}"));
    assert_eq!(join(&format!("ZO\u{cb}{tag}")).status, 409);
    // Invisible and reordering characters are refused.
    for c in [
        '\u{200B}', '\u{202E}', '\u{2066}', '\u{FEFF}', '\u{AD}', '\u{200D}',
    ] {
        let r = join(&format!("ann{c}{tag}"));
        assert_eq!(r.status, 400, "U+{:04X}", c as u32);
        assert!(r.error().starts_with("invalid name"), "{}", r.body);
    }
    // The length is what a person sees: 32 flags (64 code points) are 32 characters.
    let flags = "\u{1F1EB}\u{1F1F7}".repeat(32);
    assert_eq!(join(&flags).status, 201);
    assert_eq!(join(&format!("{flags}\u{1F1EB}\u{1F1F7}")).status, 400);
    // A rename follows the same rules.
    let token = join_only(&s, &unique("mover"));
    let rename = |to: &str| {
        s.request_with(
            "POST",
            "/chat/name",
            Some(to),
            &[("Authorization", &format!("Bearer {token}"))],
        )
    };
    assert_eq!(rename(&format!("KELVIN{tag}")).status, 409);
    assert_eq!(rename("a\u{202E}b").status, 400);
    let r = rename(&format!("Ame\u{301}lie{tag}"));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["to"], format!("Am\u{e9}lie{tag}"));
}

#[test]
fn renames_count_against_the_rate_limit() {
    // A burst of 3 and almost no refill: whatever takes a token shows in the fourth action.
    let s = start(|c| {
        c.rate = 0.01;
        c.burst = 3.0;
    });
    let token = join_only(&s, &unique("renamer"));
    let auth = format!("Bearer {token}");
    let rename =
        |to: &str| s.request_with("POST", "/chat/name", Some(to), &[("Authorization", &auth)]);
    let post = |text: &str| {
        s.request_with(
            "POST",
            "/chat/messages",
            Some(text),
            &[("Authorization", &auth)],
        )
    };
    assert_eq!(rename(&unique("r1")).status, 200);
    assert_eq!(rename(&unique("r2")).status, 200);
    assert_eq!(post("one message").status, 202);
    // Three tokens spent, two of them by renames: both a message and a rename are refused now.
    let r = post("one too many");
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r.header("Retry-After").is_some());
    assert_eq!(rename(&unique("r3")).status, 429);
    assert_eq!(
        s.metric("syncast_rejected_total{reason=\"rate-limited\"}"),
        2.0
    );
}

/// Asks for `path` and never reads. The kernel buffers on both ends absorb a few MB first
/// (loopback send buffers autotune), so callers post until the cut-off rather than a fixed count.
/// (A tiny SO_RCVBUF does not help: reading back afterwards then crawls on zero-window probes.)
fn deaf_reader(s: &TestServer, path: &str) -> TcpStream {
    let sock = TcpStream::connect(s.addr).unwrap();
    sock.set_read_timeout(Some(crate::common::PATIENCE))
        .unwrap();
    let mut w = &sock;
    write!(w, "GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", s.addr).unwrap();
    sock
}

#[test]
fn a_reader_that_never_reads_is_cut_off_as_slow_others_are_unaffected_and_it_loses_nothing() {
    let s = Arc::new(start(|c| {
        // Small, but with room for a busy CI machine's scheduling of the fast member's thread.
        c.queue = 32;
        // Kept long enough to resume from whatever the deaf socket held.
        c.history = 1_000_000;
        c.grace = Duration::from_secs(600);
        c.write_timeout = Duration::from_millis(500);
        c.rate = 100_000.0;
        c.burst = 100_000.0;
    }));
    let slow_name = unique("slow");
    let slow_token = join_only(&s, &slow_name);
    let sock = deaf_reader(&s, &format!("/chat/stream?token={slow_token}"));
    wait_log(&["chat stream opened", &format!("name={slow_name} ")]);
    let fast = Member::join(&s, &unique("fast"));
    let poster = Poster::new(&s, &join_only(&s, &unique("poster")));
    // The fast member reads on its own thread all along.
    let fast_reader = std::thread::spawn(move || {
        let mut fast = fast;
        fast.messages_until("end")
    });
    let cut = AtomicBool::new(false);
    let mut posted = Vec::new();
    let big = "x".repeat(4000);
    wait_for("the deaf reader cut off as slow", || {
        for _ in 0..20 {
            posted.push(poster.say(&format!("{}:{big}", posted.len())));
        }
        if !log_lines(&[
            "chat stream closed",
            &format!("name={slow_name} "),
            "reason=slow",
        ])
        .is_empty()
        {
            cut.store(true, Ordering::Relaxed);
        }
        cut.load(Ordering::Relaxed).then_some(())
    });
    assert!(s.metric("syncast_chat_slow_cutoffs_total") >= 1.0);
    posted.push(poster.say("end"));
    let fast_got: Vec<u64> = fast_reader.join().unwrap().iter().map(|m| m.0).collect();
    assert_eq!(fast_got, posted, "the fast member got everything, in order");
    // The slow member's session outlives its stream: read what reached it, then resume.
    assert!(s.json("/chat/users")["online"]
        .as_array()
        .unwrap()
        .contains(&json!(slow_name)));
    let mut old = Sse::read_head(sock);
    let mut got = Vec::new();
    let mut last = 0;
    while let Some(item) = old.next_item() {
        if let Item::Event { event, id, .. } = item {
            if event == "message" {
                let id: u64 = id.unwrap().parse().unwrap();
                got.push(id);
                last = id;
            }
        }
    }
    let sse = Sse::open(
        s.addr,
        &format!("/chat/stream?token={slow_token}"),
        &[("Last-Event-ID", &last.to_string())],
    );
    let mut again = Member {
        name: slow_name,
        token: slow_token,
        sse,
        last,
        joins: Vec::new(),
        leaves: Vec::new(),
    };
    got.extend(again.messages_until("end").iter().map(|m| m.0));
    assert_eq!(got, posted, "nothing lost across the cut-off");
}

#[test]
fn bad_names_bodies_tokens_and_floods_get_400_401_409_429() {
    let s = start(|c| {
        c.rate = 0.5;
        c.burst = 3.0;
    });
    let name = unique("bad");
    let token = join_only(&s, &name);
    let auth = format!("Bearer {token}");
    let with_auth = |body: &str, ct: Option<&str>| {
        let mut h = vec![("Authorization", auth.as_str())];
        if let Some(ct) = ct {
            h.push(("Content-Type", ct));
        }
        s.request_with("POST", "/chat/messages", Some(body), &h)
    };
    // Names.
    for bad in ["", "a%20b", "%07bell", &"n".repeat(33)] {
        let sse = s.sse(&format!("/chat/stream?name={bad}"));
        assert_eq!(sse.status, 400, "name {bad:?}");
        assert!(sse.body().contains("error"));
    }
    assert_eq!(
        s.request("POST", "/chat/join", Some("two words")).status,
        400
    );
    assert_eq!(s.request("POST", "/chat/join", Some("")).status, 400);
    assert_eq!(s.request("POST", "/chat/join", Some(&name)).status, 409);
    // Bodies.
    assert_eq!(with_auth("", None).status, 400);
    assert_eq!(with_auth(&"x".repeat(4097), None).status, 400);
    assert_eq!(with_auth("a\0b", None).status, 400);
    assert_eq!(
        with_auth("{\"text\":1}", Some("application/json")).status,
        400
    );
    assert_eq!(with_auth("not json", Some("application/json")).status, 400);
    let (status, body) = raw(
        &s,
        &format!("POST /chat/messages?token={token} HTTP/1.1"),
        b"\xff\xfe",
    );
    assert_eq!(status, 400, "{body}");
    // Tokens.
    let r = s.request("POST", "/chat/messages", Some("hi"));
    assert_eq!(
        (r.status, r.header("WWW-Authenticate")),
        (401, Some("Bearer"))
    );
    let forged = format!("{}{}", &token[..16], "0".repeat(32));
    assert_eq!(
        s.request(
            "POST",
            &format!("/chat/messages?token={forged}"),
            Some("hi")
        )
        .status,
        401
    );
    assert_eq!(
        s.request("POST", "/chat/leave?token=nope", None).status,
        401
    );
    assert_eq!(s.sse(&format!("/chat/stream?token={forged}")).status, 401);
    // A resume hint that names no event is not the client's fault: a stream, never a 400
    // (`an_unusable_or_future_last_event_id_starts_with_reset_and_everything_kept`).
    assert_eq!(
        s.sse(&format!("/chat/stream?token={token}&last_event_id=x"))
            .status,
        200
    );
    assert_eq!(
        s.sse(&format!("/chat/stream?token={token}&name=x")).status,
        400
    );
    assert_eq!(s.sse("/chat/stream").status, 400);
    // Methods and paths.
    assert_eq!(s.request("GET", "/chat/messages", None).status, 405);
    assert_eq!(s.request("POST", "/chat/users", Some("")).status, 405);
    let r = s.request("GET", "/chat/nowhere", None);
    assert_eq!((r.status, r.error()), (404, "not found".to_string()));
    // Floods: a burst of 3, then 429 with Retry-After.
    let mut statuses = Vec::new();
    for i in 0..6 {
        let r = with_auth(&format!("flood {i}"), Some("text/plain"));
        if r.status == 429 {
            assert!(r.header("Retry-After").unwrap().parse::<u64>().unwrap() >= 1);
        }
        statuses.push(r.status);
    }
    assert_eq!(&statuses[..3], &[202, 202, 202]);
    assert!(statuses[3..].contains(&429), "{statuses:?}");
    assert!(s.metric("syncast_rejected_total{reason=\"rate-limited\"}") >= 1.0);
    assert!(s.metric("syncast_rejected_total{reason=\"unauthorized\"}") >= 4.0);
    assert!(s.metric("syncast_rejected_total{reason=\"name-taken\"}") >= 1.0);
    assert!(s.metric("syncast_rejected_total{reason=\"bad-request\"}") >= 10.0);
    // JSON bodies work too.
    let s2 = start(|_| {});
    let t2 = join_only(&s2, &unique("json"));
    let r = s2.request_with(
        "POST",
        "/chat/messages",
        Some(r#"{"text":"from json"}"#),
        &[
            ("Authorization", &format!("Bearer {t2}")),
            ("Content-Type", "application/json; charset=utf-8"),
        ],
    );
    assert_eq!(r.status, 202, "{}", r.body);
}

#[test]
fn one_session_cannot_post_rename_or_leave_as_another() {
    let s = start(|_| {});
    let mut a = Member::join(&s, &unique("victim"));
    let b = join_only(&s, &unique("mallory"));
    let forged = format!("{}{}", &a.token[..16], &b[16..]);
    let bearer = format!("Bearer {forged}");
    let h = [("Authorization", bearer.as_str())];
    assert_eq!(
        s.request_with("POST", "/chat/messages", Some("x"), &h)
            .status,
        401
    );
    assert_eq!(
        s.request_with("POST", "/chat/name", Some("z"), &h).status,
        401
    );
    assert_eq!(s.request_with("POST", "/chat/leave", None, &h).status, 401);
    // b's own token acts as b only.
    say(&s, &b, "from b");
    let m = a.messages_until("from b");
    assert_ne!(m[0].1, a.name);
    assert!(s.json("/chat/users")["online"]
        .as_array()
        .unwrap()
        .contains(&json!(a.name)));
}

#[test]
fn attaching_again_replaces_the_older_stream() {
    let s = start(|_| {});
    let name = unique("twice");
    let token = join_only(&s, &name);
    let mut first = s.sse(&format!("/chat/stream?token={token}"));
    assert_eq!(next(&mut first).unwrap().event, "welcome");
    let mut second = Member {
        name: name.clone(),
        token: token.clone(),
        sse: s.sse(&format!("/chat/stream?token={token}")),
        last: 0,
        joins: Vec::new(),
        leaves: Vec::new(),
    };
    assert_eq!(second.next().unwrap().event, "welcome");
    while next(&mut first).is_some() {}
    wait_log(&[
        "chat stream closed",
        &format!("name={name} "),
        "reason=replaced",
    ]);
    let p = join_only(&s, &unique("p"));
    say(&s, &p, "still here");
    assert_eq!(second.messages_until("still here").len(), 1);
}

#[test]
fn leaving_ends_the_session_and_its_stream_and_every_thread_goes() {
    let s = start(|_| {});
    assert_eq!(s.threads_of("chat-stream"), 0);
    let spawned = |s: &TestServer| s.json("/debug/threads")["spawned_live"].as_u64().unwrap();
    // Request threads of the harness's own calls end quickly; wait for the quiet count.
    let baseline = wait_for("a quiet server", || {
        let n = spawned(&s);
        (s.threads_of("request") == 0).then_some(n)
    });
    let names: Vec<String> = (0..6).map(|_| unique("bye")).collect();
    let mut members: Vec<Member> = names.iter().map(|n| Member::join(&s, n)).collect();
    wait_for("six chat threads", || {
        (s.threads_of("chat-stream") == 6).then_some(())
    });
    assert_eq!(s.metric("syncast_chat_streams_attached"), 6.0);
    // Half leave through the API, half just hang up.
    let watcher_idx = 5;
    for m in members.iter().take(3) {
        let r = s.request_with(
            "POST",
            "/chat/leave",
            None,
            &[("Authorization", &format!("Bearer {}", m.token))],
        );
        assert_eq!(r.status, 204);
    }
    for m in members.iter_mut().take(3) {
        while m.next().is_some() {}
    }
    for name in names.iter().take(3) {
        let left = members[watcher_idx].left(name);
        assert_eq!(left, json!({ "name": name, "reason": "left" }));
        wait_log(&["chat left", &format!("name={name}")]);
        wait_log(&[
            "chat stream closed",
            &format!("name={name} "),
            "reason=left",
        ]);
    }
    let tokens: Vec<String> = members.iter().map(|m| m.token.clone()).collect();
    drop(members);
    chat_threads_gone(&s);
    for name in names.iter().skip(3) {
        let opened = log_lines(&["chat stream opened", &format!("name={name} ")]);
        let closed = log_lines(&["chat stream closed", &format!("name={name} ")]);
        assert_eq!((opened.len(), closed.len()), (1, 1), "{name}");
    }
    for t in tokens.iter().skip(3) {
        s.request_with(
            "POST",
            "/chat/leave",
            None,
            &[("Authorization", &format!("Bearer {t}"))],
        );
    }
    assert_eq!(s.metric("syncast_chat_members"), 0.0);
    assert_eq!(s.json("/chat/users")["online"], json!([]));
    wait_for("/debug/threads back to its baseline", || {
        (s.threads_of("request") == 0 && spawned(&s) == baseline).then_some(())
    });
}

#[test]
fn a_session_without_a_stream_expires_with_leave_timeout() {
    let s = start(|c| c.grace = Duration::from_millis(300));
    let mut watcher = Member::join(&s, &unique("watch"));
    let ghost = unique("ghost");
    join_only(&s, &ghost);
    watcher.joined(&ghost);
    let leave = watcher.left(&ghost);
    assert_eq!(leave, json!({ "name": ghost, "reason": "timeout" }));
    wait_log(&["chat expired", &format!("name={ghost}")]);
    assert_eq!(s.metric("syncast_chat_members"), 1.0);
    // The name is free again, and the watcher (attached all along) is still there.
    join_only(&s, &ghost);
    assert!(s.json("/chat/users")["online"]
        .as_array()
        .unwrap()
        .contains(&json!(watcher.name)));
}

#[test]
fn shutdown_sends_chat_streams_a_shutdown_event() {
    let mut s = start(|_| {});
    let name = unique("last");
    let mut m = Member::join(&s, &name);
    s.shutdown();
    assert_eq!(m.next_of("shutdown").event, "shutdown");
    assert!(m.next().is_none());
    wait_log(&[
        "chat stream closed",
        &format!("name={name} "),
        "reason=shutdown",
    ]);
}

#[test]
fn the_close_line_names_the_session_as_it_was_called_last() {
    let s = start(|_| {});
    let mut m = Member::join(&s, &unique("old"));
    let new = unique("new");
    let auth = format!("Bearer {}", m.token);
    let h = [("Authorization", auth.as_str())];
    assert_eq!(
        s.request_with("POST", "/chat/name", Some(&new), &h).status,
        200
    );
    assert_eq!(m.next_of("rename").data["to"], new);
    assert_eq!(s.request_with("POST", "/chat/leave", None, &h).status, 204);
    assert!(
        m.next().is_none(),
        "the stream ends when its session leaves"
    );
    wait_log(&["chat stream closed", &format!("name={new} "), "reason=left"]);
    wait_log(&["chat left", &format!("name={new}")]);
}

#[test]
fn joining_by_name_with_last_event_id_replays_what_came_after_it() {
    let s = start(|_| {});
    let p = join_only(&s, &unique("p"));
    let first = say(&s, &p, "one");
    say(&s, &p, "two");
    let name = unique("back");
    let sse = Sse::open(
        s.addr,
        &format!("/chat/stream?name={name}"),
        &[("Last-Event-ID", &first.to_string())],
    );
    let mut m = Member {
        name,
        token: String::new(),
        sse,
        last: 0,
        joins: Vec::new(),
        leaves: Vec::new(),
    };
    assert_eq!(m.next().unwrap().event, "welcome");
    let got: Vec<String> = m.messages_until("two").into_iter().map(|g| g.2).collect();
    assert_eq!(got, vec!["two"]);
}

#[test]
fn a_full_room_answers_503_to_a_join_and_refused_to_a_stream_until_someone_leaves() {
    let s = start(|c| c.max_members = 2);
    let a = join_only(&s, &unique("one"));
    join_only(&s, &unique("two"));
    let r = s.request("POST", "/chat/join", Some(&unique("three")));
    assert_eq!((r.status, r.header("Retry-After")), (503, Some("1")));
    // A join by stream is an EventSource: it must come back by itself, so not a 503.
    let mut es = s.sse(&format!("/chat/stream?name={}", unique("four")));
    assert_eq!(es.status, 200);
    let (event, _, data) = es.next_event().expect("an event");
    assert_eq!(event, "refused");
    assert!(data.contains(r#""reason":"room-full""#), "{data}");
    assert_eq!(es.next_item(), None);
    let r = s.request_with(
        "POST",
        "/chat/leave",
        None,
        &[("Authorization", &format!("Bearer {a}"))],
    );
    assert_eq!(r.status, 204);
    join_only(&s, &unique("three"));
    assert!(s.metric("syncast_rejected_total{reason=\"room-full\"}") >= 2.0);
}

#[test]
fn joins_and_leaves_arrive_as_presence_events_once_each_in_order_and_resume_replays_them() {
    let s = start(|_| {});
    let mut w = Member::join(&s, &unique("pw"));
    let names: Vec<String> = (0..40).map(|_| unique("pj")).collect();
    let tokens: Vec<String> = names.iter().map(|n| join_only(&s, n)).collect();
    for t in tokens.iter().take(10) {
        let r = s.request_with(
            "POST",
            "/chat/leave",
            None,
            &[("Authorization", &format!("Bearer {t}"))],
        );
        assert_eq!(r.status, 204);
    }
    // Everything the watcher hears until the last leave: joins and leaves come in presence
    // events (fewer than one each), each name once per change, joins before their leaves.
    let mut joined: Vec<String> = Vec::new();
    let mut left: Vec<String> = Vec::new();
    let mut presence_ids = Vec::new();
    while left.len() < 10 {
        let ev = w.next_of("presence");
        presence_ids.push(ev.id.expect("presence events have ids"));
        for n in ev.data["joined"].as_array().unwrap() {
            joined.push(n.as_str().unwrap().to_string());
        }
        for e in ev.data["left"].as_array().unwrap() {
            assert_eq!(e["reason"], "left");
            let n = e["name"].as_str().unwrap().to_string();
            assert!(joined.contains(&n), "{n} left before it joined");
            left.push(n);
        }
    }
    let ours: Vec<&String> = joined.iter().filter(|n| names.contains(n)).collect();
    assert_eq!(
        ours,
        names.iter().collect::<Vec<_>>(),
        "every join once, in order"
    );
    assert_eq!(left, names[..10].to_vec(), "every leave once, in order");
    assert!(
        presence_ids.len() < 50,
        "50 changes were coalesced: {} events",
        presence_ids.len()
    );
    // The users list is exact: the watcher and the 30 who stayed.
    let users = s.json("/chat/users");
    assert_eq!(users["count"], 31);
    let mut expected: Vec<String> = names[10..].to_vec();
    expected.push(w.name.clone());
    expected.sort();
    assert_eq!(users["online"], json!(expected));
    assert_eq!(users["next"], Value::Null);
    // Reattaching after the first presence event replays the later ones exactly.
    let first = presence_ids[0];
    drop(w.sse);
    let mut again = Sse::open(
        s.addr,
        &format!("/chat/stream?token={}", w.token),
        &[("Last-Event-ID", &first.to_string())],
    );
    assert_eq!(next(&mut again).unwrap().event, "welcome");
    let replayed: Vec<u64> = std::iter::from_fn(|| next(&mut again))
        .filter(|e| e.event == "presence")
        .map(|e| e.id.unwrap())
        .take(presence_ids.len() - 1)
        .collect();
    assert_eq!(replayed, presence_ids[1..]);
}

#[test]
fn the_welcome_lists_the_first_hundred_names_and_users_pages_through_all_of_them() {
    let s = start(|_| {});
    let mut w = Member::join(&s, &unique("aaw"));
    let names: Vec<String> = (0..150)
        .map(|i| format!("{}-{i:03}", unique("pg")))
        .collect();
    for n in &names {
        join_only(&s, n);
    }
    w.joined(names.last().unwrap());
    // A new stream now: the welcome is the room as of its last_id, bounded.
    let late = unique("zzl");
    let mut m = Member::join(&s, &late);
    let welcome_count;
    {
        let mut again = s.sse(&format!("/chat/stream?token={}", m.token));
        let welcome = next(&mut again).unwrap();
        assert_eq!(welcome.event, "welcome");
        welcome_count = welcome.data["online_count"].as_u64().unwrap();
        let online = welcome.data["online"].as_array().unwrap().clone();
        assert_eq!(online.len(), 100);
        let mut sorted = online.clone();
        sorted.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
        assert_eq!(online, sorted, "the first names in sorted order");
        m.sse = again;
    }
    assert!((151..=152).contains(&welcome_count), "{welcome_count}");
    // Paging: every name once, sorted, 40 at a time.
    let mut all: Vec<String> = Vec::new();
    let mut path = "/chat/users?limit=40".to_string();
    loop {
        let page = s.json(&path);
        assert_eq!(page["count"], 152);
        let got = page["online"].as_array().unwrap();
        assert!(got.len() <= 40);
        all.extend(got.iter().map(|n| n.as_str().unwrap().to_string()));
        match page["next"].as_str() {
            Some(next) => path = format!("/chat/users?limit=40&after={next}"),
            None => break,
        }
    }
    let mut expected: Vec<String> = names.clone();
    expected.push(w.name.clone());
    expected.push(late);
    expected.sort();
    assert_eq!(all, expected);
    for bad in ["0", "1001", "x"] {
        let r = s.request("GET", &format!("/chat/users?limit={bad}"), None);
        assert_eq!(r.status, 400);
        assert_eq!(r.error(), "invalid limit: use 1-1000");
    }
}
