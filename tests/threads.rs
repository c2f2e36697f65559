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

#[test]
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
