//! Several syncast nodes on one Redis (issue 16): alarms in the hash `<prefix>alarms`, written
//! through one node or by another program, read by every node's refresher; a frozen Redis; a
//! restarted one. Each test starts its own `redis-server` (`common::redis`) and its nodes on it,
//! in this process or as real binaries.
//!
//! Needs `redis-server` (Debian's package; `make test-deps` installs it under `CI=true`): every
//! test is `#[ignore]`d, so `cargo test` lists them as ignored; `make unit` runs them where
//! redis-server is installed or under `CI=true`, and run without it they fail.

mod common;

use std::time::{Duration, Instant};

use common::redis::{hget, hset, need_redis, node, node_bin, outside, RedisServer, TIMEOUT};
use common::{log_lines, raw_get, unique, wait_for, wait_log, Item, Sse, PATIENCE};

const T: &str = r#"{"alarm":true}"#;
const F: &str = r#"{"alarm":false}"#;

#[test]
#[ignore = "needs redis-server: make unit runs it where installed (docs/testing.md)"]
fn an_alarm_put_through_node_a_reaches_a_change_stream_on_node_b_within_two_ticks() {
    let redis = need_redis("an_alarm_put_through_node_a_reaches_node_b");
    let a = node(&redis, |_| {});
    let b = node(&redis, |c| c.refresh = Duration::from_millis(100));
    let id = unique("ab");
    let mut sse = b.sse(&format!("/sse/call/{id}?mode=change"));
    assert_eq!(sse.status, 200);
    assert_eq!(sse.next_data(), F, "no field yet: false");
    let before = b.refresher_ticks();
    assert_eq!(
        a.request("PUT", &format!("/alarms/{id}"), Some("true"))
            .status,
        204
    );
    assert_eq!(sse.next_data(), T, "node B's stream shows node A's write");
    let after = b.refresher_ticks();
    // Counted in B's refresher ticks, not in time: the first or second after the write (the
    // metrics read itself may straddle one more).
    assert!(after - before <= 3.0, "took {} ticks", after - before);
    assert_eq!(
        hget(&redis, "syncast:alarms", &id).as_deref(),
        Some("1"),
        "the field X of syncast:alarms"
    );
    // GET on either node reads the hash.
    assert_eq!(
        b.request("GET", &format!("/alarms/{id}"), None).json()["alarm"],
        true
    );
    // DELETE removes the field; the stream goes back to false.
    assert_eq!(
        b.request("DELETE", &format!("/alarms/{id}"), None).status,
        204
    );
    assert_eq!(hget(&redis, "syncast:alarms", &id), None);
    assert_eq!(sse.next_data(), F);
    assert_eq!(
        a.request("GET", &format!("/alarms/{id}"), None).json()["alarm"],
        false
    );
}

#[test]
#[ignore = "needs redis-server: make unit runs it where installed (docs/testing.md)"]
fn an_alarm_set_by_another_program_with_hset_reaches_streams_and_odd_values_read_false() {
    let redis = need_redis("an_alarm_set_by_another_program_with_hset");
    let s = node(&redis, |c| {
        c.refresh = Duration::from_millis(100);
        c.redis_prefix = "other:".into();
    });
    let id = unique("hset");
    let mut sse = s.sse(&format!("/sse/call/{id}?mode=change"));
    assert_eq!(sse.next_data(), F);
    let before = s.refresher_ticks();
    hset(&redis, "other:alarms", &id, "1");
    assert_eq!(sse.next_data(), T);
    let after = s.refresher_ticks();
    assert!(after - before <= 3.0, "took {} ticks", after - before);
    hset(&redis, "other:alarms", &id, "false");
    assert_eq!(sse.next_data(), F);
    hset(&redis, "other:alarms", &id, "true");
    assert_eq!(sse.next_data(), T);
    // Anything else reads as false, logged once however many ticks read it.
    hset(&redis, "other:alarms", &id, "yes please");
    assert_eq!(sse.next_data(), F);
    let ticks = s.refresher_ticks();
    wait_for("three more ticks", || {
        (s.refresher_ticks() >= ticks + 3.0).then_some(())
    });
    let warned = log_lines(&["redis alarm unreadable", &format!("id={id} ")]);
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(warned[0].contains("key=other:alarms"), "{warned:?}");
    assert!(warned[0].contains("value=\"yes please\""), "{warned:?}");
    // The prefix is syncast's for every key: nothing was written under the default one.
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query(&mut outside(&redis))
        .unwrap();
    // (The chat on Redis has its keys too, `other:chat:…`, under the same prefix.)
    assert!(keys.contains(&"other:alarms".to_string()), "{keys:?}");
    assert!(keys.iter().all(|k| k.starts_with("other:")), "{keys:?}");
}

#[test]
#[ignore = "needs redis-server: make unit runs it where installed (docs/testing.md)"]
fn a_frozen_redis_gives_503_within_the_timeout_healthz_503_streams_stay_and_recovery_logs_once() {
    let redis = need_redis("a_frozen_redis_gives_503");
    let s = node(&redis, |c| {
        c.refresh = Duration::from_millis(100);
        c.heartbeat = Duration::from_millis(300);
    });
    let id = unique("frozen");
    let mut sse = s.sse(&format!("/sse/call/{id}?mode=change"));
    assert_eq!(sse.next_data(), F);
    assert_eq!(
        s.request("PUT", &format!("/alarms/{id}"), Some("true"))
            .status,
        204
    );
    assert_eq!(sse.next_data(), T);
    let shown = format!("addr={}/0", redis.addr());
    assert_eq!(log_lines(&["redis unavailable", &shown]).len(), 0);

    redis.freeze();
    // A PUT answers, and does not hang: 503 within about the time-out (500 ms here; the bound
    // is generous, only against a hang).
    let t0 = Instant::now();
    let put = s.request("PUT", &format!("/alarms/{id}"), Some("false"));
    let took = t0.elapsed();
    assert_eq!(put.status, 503, "{}", put.body);
    assert!(
        put.error().starts_with("store unavailable: redis: "),
        "{}",
        put.body
    );
    assert!(took < PATIENCE / 2, "a PUT to a frozen Redis took {took:?}");
    // /healthz is 503 with the reason, answered at once (from memory, on the dispatcher).
    let health = wait_for("/healthz 503", || {
        let r = s.request("GET", "/healthz", None);
        (r.status == 503).then_some(r)
    });
    assert_eq!(health.json()["status"], "degraded");
    let reason = health.json()["reason"].as_str().unwrap().to_string();
    assert!(reason.starts_with("redis: "), "{reason}");
    assert_eq!(s.metric("syncast_redis_up"), 0.0);
    // The stream stays open with keepalives and the last value.
    let mut keepalives = 0;
    while keepalives < 3 {
        match sse.next_item() {
            Some(Item::Comment(c)) if c.contains("keepalive") => keepalives += 1,
            Some(Item::Event { data, .. }) => panic!("an event while Redis is frozen: {data}"),
            Some(_) => {}
            None => panic!("the stream ended while Redis was frozen"),
        }
    }
    let unavailable = wait_log(&["redis unavailable error=", &shown]);
    assert!(unavailable.starts_with("[ERROR]"), "{unavailable}");

    redis.thaw();
    wait_for("/healthz 200", || {
        (s.request("GET", "/healthz", None).status == 200).then_some(())
    });
    wait_log(&["redis recovered", &shown]);
    assert_eq!(
        s.request("PUT", &format!("/alarms/{id}"), Some("false"))
            .status,
        204
    );
    assert_eq!(sse.next_data(), F, "the stream goes on after the recovery");
    // Each state change logged once, whatever number of calls failed meanwhile.
    let changes = log_lines(&["redis ", &shown]);
    assert_eq!(
        log_lines(&["redis unavailable", &shown]).len(),
        1,
        "{changes:#?}"
    );
    assert_eq!(log_lines(&["redis recovered", &shown]).len(), 1);
    assert_eq!(log_lines(&["redis connected", &shown]).len(), 1);
    assert_eq!(s.metric("syncast_redis_up"), 1.0);
    assert!(s.metric("syncast_redis_errors_total") >= 1.0);
    assert!(s.metric("syncast_redis_reconnects_total") >= 1.0);
}

#[test]
#[ignore = "needs redis-server: make unit runs it where installed (docs/testing.md)"]
fn a_node_started_while_redis_is_down_runs_degraded_and_recovers_when_it_comes() {
    // The port is free now; Redis is started on it only later.
    let program = need_redis("a_node_started_while_redis_is_down").program();
    let port = syncast::kit::redis_server::free_port().unwrap();
    let s = common::start(|c| {
        c.redis = Some(format!("redis://127.0.0.1:{port}/0"));
        c.alarm_store = syncast::AlarmStoreKind::Redis;
        c.redis_timeout = TIMEOUT;
        c.refresh = Duration::from_millis(50);
    });
    let health = s.request("GET", "/healthz", None);
    assert_eq!(health.status, 503, "{}", health.body);
    let id = unique("late");
    let put = s.request("PUT", &format!("/alarms/{id}"), Some("true"));
    assert_eq!(put.status, 503, "{}", put.body);
    // A stream opens all the same (its value is false until the store answers).
    let mut sse = s.sse(&format!("/sse/call/{id}?mode=change"));
    assert_eq!(sse.status, 200);
    let redis = RedisServer::start_on(&program, port).expect("redis-server on the port");
    hset(&redis, "syncast:alarms", &id, "1");
    wait_for("/healthz 200", || {
        (s.request("GET", "/healthz", None).status == 200).then_some(())
    });
    loop {
        if sse.next_data() == T {
            break;
        }
    }
    wait_log(&["redis recovered", &format!("addr=127.0.0.1:{port}/0")]);
}

#[test]
#[ignore = "needs redis-server: make unit runs it where installed (docs/testing.md)"]
fn a_restarted_redis_is_used_again_at_once_by_pooled_connections() {
    let redis = need_redis("a_restarted_redis_is_used_again");
    // A refresher tick a minute away: nothing but this test's requests touches Redis, so the
    // PUT after the restart meets the pooled connections Redis closed. (A tick during the
    // restart would find Redis down and start the back-off, within which a call fails at once:
    // the other behaviour, covered by the frozen-Redis test.)
    let s = node(&redis, |c| c.refresh = Duration::from_secs(60));
    let id = unique("restart");
    assert_eq!(
        s.request("PUT", &format!("/alarms/{id}"), Some("true"))
            .status,
        204
    );
    let program = redis.program();
    let port = redis.addr().port();
    redis.kill();
    let redis = RedisServer::start_on(&program, port).expect("restarted on the same port");
    // The pooled connections are dead; a PUT must not fail for that: it is sent again on a
    // fresh connection (every alarm write can run twice without harm).
    let put = s.request("PUT", &format!("/alarms/{id}"), Some("true"));
    assert_eq!(put.status, 204, "{}", put.body);
    assert_eq!(hget(&redis, "syncast:alarms", &id).as_deref(), Some("1"));
}

#[test]
#[ignore = "needs redis-server: make unit runs it where installed (docs/testing.md)"]
fn a_hash_of_the_wrong_type_degrades_healthz_and_is_reported() {
    let redis = need_redis("a_hash_of_the_wrong_type");
    let _: () = redis::cmd("SET")
        .arg("syncast:alarms")
        .arg("not a hash")
        .query(&mut outside(&redis))
        .unwrap();
    let s = node(&redis, |c| c.refresh = Duration::from_millis(50));
    let health = wait_for("/healthz 503", || {
        let r = s.request("GET", "/healthz", None);
        (r.status == 503).then_some(r)
    });
    let reason = health.json()["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("WRONGTYPE"), "{reason}");
    let put = s.request("PUT", "/alarms/1", Some("true"));
    assert_eq!(put.status, 503, "{}", put.body);
    // Redis itself answers: the link is up, the data is wrong.
    assert_eq!(s.metric("syncast_redis_up"), 1.0);
    let _: i64 = redis::cmd("DEL")
        .arg("syncast:alarms")
        .query(&mut outside(&redis))
        .unwrap();
    wait_for("/healthz 200", || {
        (s.request("GET", "/healthz", None).status == 200).then_some(())
    });
    wait_log(&["store recovered"]);
}

#[test]
#[ignore = "needs redis-server: make unit runs it where installed (docs/testing.md)"]
fn two_real_nodes_share_alarms_through_one_redis_server() {
    let redis = need_redis("two_real_nodes_share_alarms");
    let (_a, a, a_run) = node_bin(&redis, &[]);
    let (_b, b, b_run) = node_bin(&redis, &["--redis-prefix", "syncast:"]);
    let id = unique("bin");
    let mut sse = Sse::open(b, &format!("/sse/call/{id}?mode=change"), &[]);
    assert_eq!(sse.status, 200);
    assert_eq!(sse.next_data(), F);
    let target = syncast::kit::http::Target::of(a);
    let path = format!("/alarms/{id}");
    let put = syncast::kit::http::request(&target, "PUT", &path, &[], b"true", PATIENCE)
        .expect("PUT on node A");
    assert_eq!(put.status, 204);
    assert_eq!(sse.next_data(), T);
    for (addr, run) in [(a, &a_run), (b, &b_run)] {
        let metrics = raw_get(addr, "/metrics", PATIENCE).expect("metrics");
        assert!(metrics.contains("syncast_redis_up 1\n"), "{metrics}");
        assert!(
            run.log_text()
                .contains(&format!("redis connected addr={}/0", redis.addr())),
            "{}",
            run.log_text()
        );
    }
}

#[test]
#[cfg(feature = "redis-tls")]
#[ignore = "needs redis-server: make unit runs it where installed (docs/testing.md)"]
fn a_node_built_with_redis_tls_reaches_a_tls_only_redis_by_rediss() {
    let redis = RedisServer::start_tls()
        .unwrap_or_else(|e| panic!("a_node_built_with_redis_tls: cannot run: {e}"));
    let run = common::RunDir::new("syncast-redis-tls-");
    let mut cmd = common::syncast_bin();
    run.server_args(&mut cmd)
        .args(["--listen", "127.0.0.1:0", "--refresh", "50ms"])
        .args(["--redis", &redis.tls_url(), "--alarm-store", "redis"])
        // The test's own CA, for rustls's native roots (rustls-native-certs reads it).
        .env("SSL_CERT_FILE", redis.ca_file());
    let mut child = cmd.spawn().expect("syncast starts");
    let addr = common::listen_addr(&mut child);
    let _child = common::KillOnDrop(child);
    let id = unique("tls");
    let mut sse = Sse::open(addr, &format!("/sse/call/{id}?mode=change"), &[]);
    assert_eq!(sse.next_data(), F);
    let target = syncast::kit::http::Target::of(addr);
    let path = format!("/alarms/{id}");
    let put = wait_for("a PUT through TLS", || {
        let r = syncast::kit::http::request(&target, "PUT", &path, &[], b"true", PATIENCE).ok()?;
        (r.status == 204).then_some(r)
    });
    assert_eq!(put.status, 204);
    assert_eq!(sse.next_data(), T);
    assert!(
        run.log_text()
            .contains(&format!("redis connected addr={}/0", redis.addr())),
        "{}",
        run.log_text()
    );
}
