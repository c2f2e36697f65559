//! The alarm stream on a real server: first event at once, PUT to stream, change mode, two
//! streams for one id, disconnect clean-up, a burst of 500 streams, bad input, a broken store,
//! shutdown and the client cap.

use std::net::TcpStream;
use std::time::Duration;

use crate::common::{start, unique, wait_for, wait_log, Item, Sse};

const T: &str = r#"{"alarm":true}"#;
const F: &str = r#"{"alarm":false}"#;

#[test]
fn the_first_event_arrives_at_once_with_sse_headers() {
    // A tick of a minute: anything that arrives did not wait for a tick.
    let s = start(|c| c.tick = Duration::from_secs(60));
    let id = unique("first");
    assert_eq!(
        s.request("PUT", &format!("/alarms/{id}"), Some("true"))
            .status,
        204
    );
    let mut sse = s.sse(&format!("/sse/call/{id}"));
    assert_eq!(sse.status, 200);
    assert_eq!(
        sse.header("Content-Type").as_deref(),
        Some("text/event-stream; charset=utf-8")
    );
    assert_eq!(sse.header("Cache-Control").as_deref(), Some("no-cache"));
    assert_eq!(sse.header("X-Accel-Buffering").as_deref(), Some("no"));
    assert_eq!(sse.next_item(), Some(Item::Retry(2000)));
    assert_eq!(
        sse.next_item(),
        Some(Item::Event {
            event: "message".into(),
            id: None,
            data: T.into()
        })
    );
}

#[test]
fn a_put_shows_up_on_the_stream_within_two_refresh_ticks() {
    let s = start(|c| c.refresh = Duration::from_millis(100));
    let id = unique("put");
    let mut sse = s.sse(&format!("/sse/call/{id}?mode=change"));
    assert_eq!(sse.next_data(), F);
    let before = s.refresher_ticks();
    let queries = s.metric("syncast_refresh_total");
    assert_eq!(
        s.request("PUT", &format!("/alarms/{id}"), Some("true"))
            .status,
        204
    );
    assert_eq!(sse.next_data(), T);
    let after = s.refresher_ticks();
    // The change was picked up by the first or second refresh after the write (the metrics read
    // itself may straddle one more).
    assert!(after - before <= 3.0, "took {} refreshes", after - before);
    // The commit was picked up by a query, not by a skipped tick. (The refresher counts the
    // query just after storing its result, so the count may trail the event a moment.)
    wait_for("the query that picked up the commit counted", || {
        (s.metric("syncast_refresh_total") > queries).then_some(())
    });
}

#[test]
fn tick_mode_sends_the_current_value_every_tick() {
    let s = start(|c| c.tick = Duration::from_millis(50));
    let id = unique("tick");
    let mut sse = s.sse(&format!("/sse/call/{id}?mode=tick"));
    for _ in 0..5 {
        assert_eq!(sse.next_data(), F);
    }
    s.request("PUT", &format!("/alarms/{id}"), Some(r#"{"alarm":true}"#));
    wait_for("true on the tick stream", || {
        (sse.next_data() == T).then_some(())
    });
    // Once true, every tick repeats it.
    for _ in 0..3 {
        assert_eq!(sse.next_data(), T);
    }
}

#[test]
fn change_mode_sends_only_changes_and_keepalives() {
    let s = start(|c| {
        c.heartbeat = Duration::from_millis(200);
        c.tick = Duration::from_millis(20);
    });
    let id = unique("change");
    let mut sse = s.sse(&format!("/sse/call/{id}?mode=change"));
    assert_eq!(sse.next_item(), Some(Item::Retry(2000)));
    assert_eq!(sse.next_data(), F);
    // Nothing changes: only keepalives come (several heartbeats, no data).
    for _ in 0..3 {
        assert_eq!(sse.next_item(), Some(Item::Comment(" keepalive".into())));
    }
    s.request("PUT", &format!("/alarms/{id}"), Some("true"));
    assert_eq!(sse.next_data(), T);
    // Writing the same value again is not a change.
    s.request("PUT", &format!("/alarms/{id}"), Some("true"));
    s.request("PUT", &format!("/alarms/{id}"), Some("false"));
    assert_eq!(sse.next_data(), F, "no second true between the two changes");
    s.request("DELETE", &format!("/alarms/{id}"), None);
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(sse.next_item().unwrap());
    }
    assert!(
        seen.iter().all(|i| matches!(i, Item::Comment(_))),
        "deleting a false alarm changes nothing: {seen:?}"
    );
}

#[test]
fn two_streams_for_one_id_survive_one_leaving() {
    let s = start(|_| {});
    let id = unique("two");
    let mut a = s.sse(&format!("/sse/call/{id}?mode=change"));
    let mut b = s.sse(&format!("/sse/call/{id}?mode=change"));
    assert_eq!(a.next_data(), F);
    assert_eq!(b.next_data(), F);
    drop(a);
    // The closed one is seen by the watcher (or at its next heartbeat, 500 ms here).
    wait_log(&[
        "sse stream closed",
        &format!("id={id} "),
        "reason=client-gone",
    ]);
    assert_eq!(s.metric("syncast_alarm_ids_registered"), 1.0);
    s.request("PUT", &format!("/alarms/{id}"), Some("true"));
    assert_eq!(b.next_data(), T, "the remaining stream still gets changes");
    let mut c = s.sse(&format!("/sse/call/{id}?mode=change"));
    assert_eq!(c.next_data(), T, "a new stream gets the kept value at once");
}

#[test]
fn a_disconnected_client_is_gone_and_its_id_unregistered() {
    let s = start(|c| c.tick = Duration::from_millis(100));
    let id = unique("gone");
    let mut sse = s.sse(&format!("/sse/call/{id}"));
    assert_eq!(sse.next_data(), F);
    assert_eq!(s.threads_of("alarm-stream"), 1);
    assert_eq!(s.metric("syncast_alarm_ids_registered"), 1.0);
    drop(sse);
    wait_for("stream thread gone", || {
        (s.threads_of("alarm-stream") == 0).then_some(())
    });
    assert_eq!(s.metric("syncast_alarm_ids_registered"), 0.0);
    assert_eq!(s.metric("syncast_alarm_streams_open"), 0.0);
    let line = wait_log(&["sse stream closed", &format!("id={id} ")]);
    assert!(line.contains("reason=client-gone"), "{line}");
    assert_eq!(
        crate::common::log_lines(&["sse stream opened", &format!("id={id} ")]).len(),
        1
    );
}

#[test]
fn five_hundred_streams_opened_in_one_burst_each_get_their_first_event() {
    let s = start(|c| c.tick = Duration::from_secs(30));
    let id = unique("burst");
    let mut socks = Vec::new();
    // Connect and send every request first: one burst, before any response is read.
    for i in 0..500 {
        let mut sock = TcpStream::connect(s.addr).unwrap();
        let rq = format!("GET /sse/call/{id}-{} HTTP/1.1\r\nHost: x\r\n\r\n", i % 50);
        std::io::Write::write_all(&mut sock, rq.as_bytes()).unwrap();
        socks.push(sock);
    }
    for sock in socks.iter() {
        sock.set_read_timeout(Some(crate::common::PATIENCE))
            .unwrap();
    }
    let mut streams: Vec<Sse> = socks.into_iter().map(Sse::read_head).collect();
    for sse in streams.iter_mut() {
        assert_eq!(sse.status, 200);
        assert_eq!(sse.next_data(), F);
    }
    assert_eq!(s.threads_of("alarm-stream"), 500);
    assert_eq!(s.metric("syncast_alarm_ids_registered"), 50.0);
}

#[test]
fn bad_ids_bodies_methods_and_paths_get_json_errors() {
    let s = start(|_| {});
    let cases: &[(&str, &str, Option<&str>, u16)] = &[
        ("GET", "/sse/call/a%20b", None, 400),
        ("GET", "/sse/call/a$b", None, 400),
        ("GET", &format!("/sse/call/{}", "x".repeat(65)), None, 400),
        ("GET", "/sse/call/ok?mode=sometimes", None, 400),
        ("PUT", "/alarms/ok", Some("maybe"), 400),
        ("PUT", "/alarms/ok", Some(r#"{"alarm":"yes"}"#), 400),
        ("PUT", "/alarms/b%2Fad", Some("true"), 400),
        ("GET", "/nope", None, 404),
        ("GET", "/sse/call", None, 404),
        ("POST", "/sse/call/ok", Some(""), 405),
        ("POST", "/alarms/ok", Some("true"), 405),
        ("PUT", "/metrics", Some(""), 405),
    ];
    for (method, path, body, want) in cases {
        let r = s.request(method, path, *body);
        assert_eq!(r.status, *want, "{method} {path}: {}", r.body);
        assert!(!r.error().is_empty(), "{method} {path}");
        assert_eq!(r.header("Content-Type"), Some("application/json"));
    }
    let r = s.request("POST", "/alarms/ok", Some("true"));
    assert_eq!(r.header("Allow"), Some("GET, PUT, DELETE"));
    let big = "t".repeat(70 * 1024);
    assert_eq!(s.request("PUT", "/alarms/ok", Some(&big)).status, 413);
}

#[test]
fn alarms_can_be_put_read_and_deleted() {
    let s = start(|_| {});
    let id = unique("crud");
    let path = format!("/alarms/{id}");
    assert_eq!(s.json(&path), serde_json::json!({"id": id, "alarm": false}));
    assert_eq!(s.request("PUT", &path, Some("true")).status, 204);
    assert_eq!(s.json(&path)["alarm"], true);
    assert_eq!(
        s.request("PUT", &path, Some(r#"{"alarm":false}"#)).status,
        204
    );
    assert_eq!(s.json(&path)["alarm"], false);
    assert_eq!(s.request("PUT", &path, Some("true")).status, 204);
    assert_eq!(s.request("DELETE", &path, None).status, 204);
    assert_eq!(s.json(&path)["alarm"], false);
}

#[test]
fn a_broken_store_degrades_healthz_while_streams_go_on_and_recovery_clears_it() {
    let s = start(|c| c.tick = Duration::from_millis(50));
    let id = unique("broken");
    s.request("PUT", &format!("/alarms/{id}"), Some("true"));
    let mut sse = s.sse(&format!("/sse/call/{id}"));
    assert_eq!(sse.next_data(), T);
    assert_eq!(s.json("/healthz")["status"], "ok");
    // Another program breaks the schema under the running server.
    let outside = rusqlite::Connection::open(&s.db).unwrap();
    outside
        .execute_batch("ALTER TABLE alarms RENAME TO alarms_moved")
        .unwrap();
    let health = wait_for("degraded health", || {
        let r = s.request("GET", "/healthz", None);
        (r.status == 503).then_some(r)
    });
    assert_eq!(health.json()["status"], "degraded");
    assert!(!health.json()["reason"].as_str().unwrap().is_empty());
    assert!(s.metric("syncast_refresh_errors_total") >= 1.0);
    wait_log(&["refresh failed"]);
    // The stream keeps streaming the last known value.
    for _ in 0..5 {
        assert_eq!(sse.next_data(), T);
    }
    outside
        .execute_batch("ALTER TABLE alarms_moved RENAME TO alarms")
        .unwrap();
    wait_for("recovered health", || {
        (s.request("GET", "/healthz", None).status == 200).then_some(())
    });
    assert_eq!(sse.next_data(), T);
}

#[test]
fn shutdown_with_streams_open_ends_each_stream_and_joins_every_thread() {
    let mut s = start(|c| c.tick = Duration::from_secs(30));
    let mut streams: Vec<Sse> = (0..20)
        .map(|i| {
            s.sse(&format!(
                "/sse/call/{}?mode=change",
                unique(&format!("down{i}-"))
            ))
        })
        .collect();
    for sse in streams.iter_mut() {
        assert_eq!(sse.next_data(), F);
    }
    let joined = s.shutdown();
    // 20 streams + dispatcher + refresher (request threads may add a few more).
    assert!(joined >= 22, "joined {joined}");
    for sse in streams.iter_mut() {
        let (event, _, _) = sse.next_event().expect("shutdown event");
        assert_eq!(event, "shutdown");
        assert_eq!(sse.next_item(), None, "then the stream ends");
    }
    wait_log(&[&format!("shutdown complete: joined {joined} threads")]);
}

#[test]
fn one_stream_over_max_clients_is_refused_with_an_event_eventsource_retries() {
    let s = start(|c| c.max_clients = 3);
    let mut open: Vec<Sse> = (0..3)
        .map(|_| s.sse(&format!("/sse/call/{}", unique("cap"))))
        .collect();
    for sse in open.iter_mut() {
        assert_eq!(sse.status, 200);
        sse.next_data();
    }
    // A 503 would end a browser's EventSource for good: the refusal is a 200 event stream with
    // a retry delay and one `refused` event, then the end of the response.
    let mut extra = s.sse("/sse/call/one-more");
    assert_eq!(extra.status, 200);
    assert_eq!(
        extra.header("Content-Type").as_deref(),
        Some("text/event-stream; charset=utf-8")
    );
    assert_eq!(extra.header("Retry-After"), None);
    let Some(Item::Retry(retry)) = extra.next_item() else {
        panic!("a retry: line first");
    };
    // 2 s jittered by ±50 %.
    assert!((1000..=3000).contains(&retry), "retry {retry}");
    let (event, id, data) = extra.next_event().expect("the refused event");
    assert_eq!((event.as_str(), id), ("refused", None));
    let data: serde_json::Value = serde_json::from_str(&data).unwrap();
    assert_eq!(data["reason"], "max-clients");
    assert_eq!(data["retry_ms"].as_u64().map(u128::from), Some(retry));
    assert_eq!(
        extra.next_item(),
        None,
        "then the server closes the connection"
    );
    assert_eq!(
        s.metric("syncast_rejected_total{reason=\"max-clients\"}"),
        1.0
    );
    wait_log(&["stream refused reason=max-clients max=3"]);
    assert_eq!(s.threads_of("alarm-stream"), 3, "no thread for the refusal");
    // A slot frees when a stream leaves.
    drop(open.pop());
    wait_for("a free slot", || {
        let mut sse = s.sse(&format!("/sse/call/{}", unique("cap")));
        match sse.next_event() {
            Some((event, _, data)) if event == "message" => Some(data),
            _ => None,
        }
    });
}

#[test]
fn refused_retry_delays_spread_over_half_to_one_and_a_half_times_the_base() {
    let s = start(|c| c.max_clients = 1);
    let _held = s.sse(&format!("/sse/call/{}", unique("spread")));
    let delays: Vec<u128> = (0..40)
        .map(|_| {
            let mut sse = s.sse("/sse/call/spread");
            match sse.next_item() {
                Some(Item::Retry(ms)) => ms,
                other => panic!("{other:?}"),
            }
        })
        .collect();
    assert!(
        delays.iter().all(|d| (1000..=3000).contains(d)),
        "{delays:?}"
    );
    // Spread out, not one value: a crowd refused together comes back apart.
    let lo = delays.iter().filter(|&&d| d < 2000).count();
    let hi = delays.iter().filter(|&&d| d > 2000).count();
    assert!(lo >= 5 && hi >= 5, "{delays:?}");
}

#[test]
fn a_new_alarm_stream_while_the_store_fails_is_refused_to_retry_and_a_watched_one_streams_on() {
    let s = start(|_| {});
    let watched = unique("watched");
    s.request("PUT", &format!("/alarms/{watched}"), Some("true"));
    let mut on = s.sse(&format!("/sse/call/{watched}?mode=change"));
    assert_eq!(on.next_data(), r#"{"alarm":true}"#);
    let outside = rusqlite::Connection::open(&s.db).unwrap();
    outside
        .execute_batch("ALTER TABLE alarms RENAME TO alarms_moved")
        .unwrap();
    wait_for("degraded health", || {
        (s.request("GET", "/healthz", None).status == 503).then_some(())
    });
    let mut fresh = s.sse(&format!("/sse/call/{}", unique("fresh")));
    assert_eq!(fresh.status, 200);
    let (event, _, data) = fresh.next_event().expect("an event");
    assert_eq!(event, "refused", "{data}");
    let data: serde_json::Value = serde_json::from_str(&data).unwrap();
    assert_eq!(data["reason"], "store-unavailable");
    let ms = data["retry_ms"].as_u64().unwrap();
    assert!((2500..=7500).contains(&ms), "5 s ± 50 %: {ms}");
    assert_eq!(
        s.metric("syncast_rejected_total{reason=\"store-unavailable\"}"),
        1.0
    );
    // The id someone watches has a value to show: a second stream of it opens.
    let mut again = s.sse(&format!("/sse/call/{watched}"));
    assert_eq!(again.next_data(), r#"{"alarm":true}"#);
    drop(on);
    // Once the store is back, the refused id streams.
    outside
        .execute_batch("ALTER TABLE alarms_moved RENAME TO alarms")
        .unwrap();
    wait_for("the refused id served", || {
        let mut sse = s.sse(&format!("/sse/call/{}", unique("fresh")));
        let (event, _, data) = sse.next_event()?;
        (event == "message").then_some(data)
    });
}

#[test]
fn non_stream_requests_over_max_requests_keep_503_with_retry_after() {
    let s = start(|c| c.max_requests = 1);
    // One request thread held: a PUT whose body is still on its way (more than tiny_http's
    // 1 KiB it reads itself, so the request thread reads it).
    let body = format!("{{\"alarm\":true,\"pad\":\"{}\"}}", "x".repeat(2000));
    let mut slow = std::net::TcpStream::connect(s.addr).unwrap();
    let head = format!(
        "PUT /alarms/held HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    std::io::Write::write_all(&mut slow, head.as_bytes()).unwrap();
    std::io::Write::write_all(&mut slow, &body.as_bytes()[..10]).unwrap();
    wait_for("the request thread busy", || {
        (s.threads_of("request") == 1).then_some(())
    });
    let r = s.request("PUT", &format!("/alarms/{}", unique("busy")), Some("true"));
    assert_eq!((r.status, r.header("Retry-After")), (503, Some("1")));
    assert_eq!(r.error(), "server busy");
    let r = s.request("GET", "/alarms/x", None);
    assert_eq!((r.status, r.error().as_str()), (503, "server busy"));
    assert_eq!(
        s.metric("syncast_rejected_total{reason=\"max-requests\"}"),
        2.0
    );
    // The slot comes back when the request ends.
    std::io::Write::write_all(&mut slow, &body.as_bytes()[10..]).unwrap();
    wait_for("a request slot free again", || {
        (s.request("GET", "/alarms/x", None).status == 200).then_some(())
    });
}

#[test]
fn a_stream_opened_after_an_acknowledged_put_shows_that_put() {
    // A refresh interval longer than the test: only the write itself can bring the new value
    // into the hub (a new id is still loaded at once when its first stream registers).
    let s = start(|c| {
        c.refresh = Duration::from_secs(60);
        c.heartbeat = Duration::from_secs(30);
    });
    let id = unique("ryow");
    let mut open = s.sse(&format!("/sse/call/{id}?mode=change"));
    assert_eq!(open.next_data(), F);
    for (body, want) in [("true", T), ("false", F), ("true", T)] {
        assert_eq!(
            s.request("PUT", &format!("/alarms/{id}"), Some(body))
                .status,
            204
        );
        // A stream opened after the 204 starts with the value written, never an older one.
        let mut fresh = s.sse(&format!("/sse/call/{id}?mode=change"));
        assert_eq!(fresh.next_data(), want, "new stream after PUT {body}");
        // And the change-mode stream already open is woken with it.
        assert_eq!(open.next_data(), want, "open stream after PUT {body}");
    }
    assert_eq!(
        s.request("DELETE", &format!("/alarms/{id}"), None).status,
        204
    );
    let mut fresh = s.sse(&format!("/sse/call/{id}?mode=change"));
    assert_eq!(fresh.next_data(), F, "new stream after DELETE");
    assert_eq!(open.next_data(), F, "open stream after DELETE");
}

#[test]
fn a_redis_for_the_chat_alone_degrades_healthz_while_the_alarms_stay_in_sqlite() {
    // Nothing listens there. With --redis the chat room is on Redis (the node depends on it,
    // so /healthz says so); alarms stay in SQLite and keep working.
    let port = syncast::kit::redis_server::free_port().unwrap();
    let s = start(|c| {
        c.redis = Some(format!("redis://127.0.0.1:{port}/0"));
        c.redis_timeout = Duration::from_millis(200);
    });
    wait_log(&[
        "redis unavailable error=",
        &format!("addr=127.0.0.1:{port}/0"),
    ]);
    let health = s.request("GET", "/healthz", None);
    assert_eq!(health.status, 503);
    assert_eq!(health.json()["status"], "degraded");
    assert!(
        health.json()["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("redis: ")),
        "{}",
        health.body
    );
    assert_eq!(s.metric("syncast_redis_up"), 0.0);
    let id = unique("sqlite");
    assert_eq!(
        s.request("PUT", &format!("/alarms/{id}"), Some("true"))
            .status,
        204,
        "the SQLite store is used"
    );
    // The chat answers that it is unavailable, to be retried, never 202 or a crash.
    let join = s.request("POST", "/chat/join", Some("nobody"));
    assert_eq!(join.status, 503, "{}", join.body);
    assert!(
        join.body.contains("chat unavailable: redis: "),
        "{}",
        join.body
    );
}
