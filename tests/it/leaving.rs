//! Clients leaving: the watcher (src/http/watch.rs) sees a FIN or a reset on every stream
//! socket and ends the stream, however many leave at once; its sweep alone does too, with or
//! without `sock_diag`.
//!
//! The servers here write nothing after a stream's first event (an hour's heartbeat, a minute's
//! tick), so no keepalive or tick write can be what ends a stream: only the watcher can, and
//! `syncast_streams_gone_total{how=…}` says which of its ways did.

use std::time::Duration;

use crate::common::{log_lines, start, unique, wait_for_within, Sse, TestServer};

/// Streams of each kind in the mass close (three kinds: ~3 × this many threads at once).
const EACH: usize = 150;

/// Which of the watcher's ways a server uses.
#[derive(Clone, Copy, PartialEq)]
enum Way {
    /// All of them, as always outside tests.
    All,
    /// The sweep alone, by `sock_diag`.
    SweepDiag,
    /// The sweep alone, by `TCP_INFO`, as where `sock_diag` is unavailable.
    SweepTcpInfo,
}

fn quiet(way: Way) -> TestServer {
    start(|c| {
        c.heartbeat = Duration::from_secs(3600);
        c.tick = Duration::from_secs(60);
        c.watch_sweep_only = way != Way::All;
        c.force_tcp_info_watch = way == Way::SweepTcpInfo;
    })
}

fn gone(s: &TestServer, how: &str) -> f64 {
    s.metric(&format!("syncast_streams_gone_total{{how=\"{how}\"}}"))
}

/// Opens `EACH` change-mode and `EACH` tick-mode alarm streams and `EACH` chat members joining
/// by `?name=`, each read up to its first event: the ramp.
fn ramp(s: &TestServer, tag: &str) -> Vec<Sse> {
    let mut streams = Vec::with_capacity(EACH * 3);
    // A stream that ended before its first event says why in its close line.
    let first = |sse: &mut Sse, id: &str| {
        assert_eq!(sse.status, 200);
        if sse.next_event().is_none() {
            panic!("{id} ended: {:?}", log_lines(&[&format!("id={id} ")]));
        }
    };
    for i in 0..EACH {
        let id = format!("{tag}c{i}");
        let mut change = s.sse(&format!("/sse/call/{id}?mode=change"));
        first(&mut change, &id);
        let id = format!("{tag}t{i}");
        let mut tick = s.sse(&format!("/sse/call/{id}"));
        first(&mut tick, &id);
        let mut chat = s.sse(&format!("/chat/stream?name={tag}m{i}"));
        assert_eq!(chat.status, 200);
        assert_eq!(chat.next_event().expect("welcome").0, "welcome");
        streams.extend([change, tick, chat]);
    }
    streams
}

/// Every stream thread ended, the watcher's and the chat's round thread's too: this server's
/// threads are its baseline.
fn back_to_baseline(s: &TestServer) {
    // The `TCP_INFO` sweep reaches each socket within 10 s: a generous bound above that.
    wait_for_within(
        Duration::from_secs(60),
        "every stream ended, the watcher and the round thread stopped",
        || {
            let t = s.json("/debug/threads");
            let by = &t["by_role"];
            let left: u64 = ["alarm-stream", "chat-stream", "watcher", "chat-waker"]
                .iter()
                .map(|r| by[*r].as_u64().unwrap_or(u64::MAX))
                .sum();
            (left == 0).then_some(())
        },
    );
    assert_eq!(s.metric("syncast_streaming_clients"), 0.0);
    assert_eq!(s.metric("syncast_streams_watched"), 0.0);
    assert_eq!(
        s.metric("syncast_threads_spawned_live"),
        2.0,
        "the dispatcher and the refresher"
    );
}

fn mass_close(way: Way) {
    let s = quiet(way);
    let tag = unique("mc");
    let streams = ramp(&s, &tag);
    let n = (EACH * 3) as f64;
    assert_eq!(s.metric("syncast_streaming_clients"), n);
    assert_eq!(s.threads_of("watcher"), 1);
    // Right after the ramp, every client sends its FIN at once.
    for sse in &streams {
        sse.fin();
    }
    back_to_baseline(&s);
    let (fin, hangup, sweep) = (gone(&s, "fin"), gone(&s, "hangup"), gone(&s, "sweep"));
    assert_eq!(hangup, 0.0, "FINs only");
    assert_eq!(
        fin + sweep,
        n,
        "every stream was found by the watcher, none by a write"
    );
    if way == Way::All {
        // A FIN that lands while a sweep runs can be the sweep's; epoll sees the others.
        assert!(fin > 0.0, "epoll saw them: fin {fin}, sweep {sweep}");
    } else {
        assert_eq!(sweep, n, "the sweep alone");
    }
    assert_eq!(
        s.metric("syncast_watcher_sock_diag"),
        if way == Way::SweepTcpInfo { 0.0 } else { 1.0 }
    );
    let closed = log_lines(&["stream closed", &tag, "reason=client-gone"]).len();
    assert_eq!(closed, EACH * 3, "each closed once, as client-gone");
    drop(streams);
}

#[test]
fn streams_of_every_kind_whose_clients_all_close_at_once_after_a_ramp_all_end() {
    mass_close(Way::All);
}

#[test]
fn the_sweep_alone_ends_a_mass_close_with_sock_diag() {
    mass_close(Way::SweepDiag);
}

#[test]
fn without_sock_diag_the_sweep_ends_a_mass_close_by_reading_tcp_info() {
    mass_close(Way::SweepTcpInfo);
}

#[test]
fn a_reset_ends_the_stream_through_epoll() {
    let s = quiet(Way::All);
    let id = unique("rst");
    let mut a = s.sse(&format!("/sse/call/{id}?mode=change"));
    a.next_data();
    let name = unique("rstm");
    let mut b = s.sse(&format!("/chat/stream?name={name}"));
    assert_eq!(b.next_event().map(|e| e.0).as_deref(), Some("welcome"));
    // Its own join's presence event too: written after a reset, it would end the stream by a
    // failed write (seen under load), before the watcher's hangup.
    assert_eq!(b.next_event().map(|e| e.0).as_deref(), Some("presence"));
    a.reset();
    b.reset();
    back_to_baseline(&s);
    assert_eq!(gone(&s, "hangup"), 2.0);
    assert_eq!(gone(&s, "fin"), 0.0);
    let line = crate::common::wait_log(&["sse stream closed", &format!("id={id} ")]);
    assert!(line.contains("reason=client-gone"), "{line}");
}

#[test]
fn the_watcher_runs_only_while_streams_do_and_is_joined_at_shutdown() {
    let mut s = quiet(Way::All);
    assert_eq!(s.threads_of("watcher"), 0, "an idle server has no watcher");
    let streams: Vec<Sse> = (0..3)
        .map(|_| {
            let mut sse = s.sse(&format!("/sse/call/{}?mode=change", unique("w")));
            sse.next_data();
            sse
        })
        .collect();
    assert_eq!(s.threads_of("watcher"), 1, "one, however many streams");
    assert_eq!(s.metric("syncast_streams_watched"), 3.0);
    // Three streams, the dispatcher, the refresher and the watcher.
    assert_eq!(s.shutdown(), 6);
    drop(streams);
}
