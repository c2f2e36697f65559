//! The process's own thread count (tiny_http's unjoinable threads included) falls back to its
//! baseline after clients leave and after shutdown. Alone in its test binary, so no other test's
//! threads disturb the count.

mod common;

use std::time::Duration;

use common::{start, unique, wait_for_within, Sse};

/// tiny_http's idle pool threads exit after 5 s; on a loaded machine that takes longer.
const SLOW: Duration = Duration::from_secs(60);

fn wait_for<T>(what: &str, probe: impl FnMut() -> Option<T>) -> T {
    wait_for_within(SLOW, what, probe)
}

fn process_threads() -> u64 {
    use syncast::kit::proc::{status, Proc};
    status(Proc::This).threads
}

/// Both count the whole process's threads, so they run one after the other in one test (two
/// tests, even taking turns, saw the first one's finished test thread in the second's baseline).
#[test]
fn thread_count_falls_back_after_clients_leave_and_after_shutdown_also_with_an_admin_listener() {
    thread_count_falls_back_after_clients_leave_and_after_shutdown();
    an_admin_listener_costs_tiny_https_five_threads_and_they_end_at_shutdown();
}

fn thread_count_falls_back_after_clients_leave_and_after_shutdown() {
    let baseline = process_threads();
    let mut s = start(|_| {});
    // The server's own idle threads: tiny_http's accept thread and its 4 pool threads, the
    // dispatcher and the refresher. (Sampled as a bound, not a reading: tiny_http starts its
    // pool threads asynchronously, so an early reading can be too low.)
    let idle = baseline + 7;
    wait_for("server idle", || (process_threads() <= idle).then_some(()));
    let mut streams: Vec<Sse> = (0..100)
        .map(|_| s.sse(&format!("/sse/call/{}", unique("thr"))))
        .collect();
    for sse in streams.iter_mut() {
        sse.next_data();
    }
    let peak = process_threads();
    assert!(
        peak >= idle + 100,
        "one thread per stream: idle {idle}, peak {peak}"
    );
    assert!(
        peak <= idle + 100 + 8,
        "no second thread parked per stream: idle {idle}, peak {peak}"
    );
    drop(streams);
    // tiny_http's pool threads above its minimum of 4 exit after 5 s idle (src/util/task_pool.rs).
    wait_for("threads back to idle after clients left", || {
        (process_threads() <= idle).then_some(())
    });
    s.shutdown();
    wait_for("threads back to baseline after shutdown", || {
        (process_threads() <= baseline).then_some(())
    });
}

fn an_admin_listener_costs_tiny_https_five_threads_and_they_end_at_shutdown() {
    let baseline = process_threads();
    let mut s = start(|c| c.admin_listen = Some("127.0.0.1:0".parse().unwrap()));
    // The 7 of a server without it, plus the admin server's accept thread and 4 pool threads;
    // syncast spends none of its own on it (the dispatcher serves it).
    let idle = baseline + 7 + 5;
    wait_for("server idle", || (process_threads() <= idle).then_some(()));
    let admin = s.server.as_ref().unwrap().admin_addr().unwrap();
    for _ in 0..20 {
        let text = common::raw_get(admin, "/debug/threads", SLOW).unwrap();
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        // No thread of syncast's serves it: the dispatcher and the refresher only.
        assert!(text.contains("\"spawned_live\":2"), "{text}");
    }
    wait_for("threads back to idle", || {
        (process_threads() <= idle).then_some(())
    });
    s.shutdown();
    wait_for("threads back to baseline after shutdown", || {
        (process_threads() <= baseline).then_some(())
    });
}
