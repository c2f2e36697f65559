//! The OS refusing a new thread must cost a 503, never a panic or a dead server, and the server
//! must recover once threads are available again.
//!
//! Root is exempt from `RLIMIT_NPROC`, so the limit comes from a cgroup v1 pids controller
//! group this test creates: the real binary is moved into it and `pids.max` is set to the
//! number of threads it has, so no new thread can start. Two things are refused then:
//! - syncast's own stream thread: the dispatcher answers 503 itself (src/admit.rs, `spawn_with`);
//! - tiny_http's threads: its accept thread panics in `thread::spawn` when its pool needs one
//!   more thread (src/util/task_pool.rs), so nothing is accepted until syncast notices and
//!   starts tiny_http again — which itself needs a thread, so it must keep trying.
//!
//! The group is removed when the test ends, also when it fails. Needs root and a writable
//! `/sys/fs/cgroup/pids`; without them the test is skipped loudly, and fails under `CI=true`.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{
    listen_addr, metric_in, raw_get, syncast_bin, unavailable, wait_for, wait_for_within,
    KillOnDrop,
};

const PIDS_ROOT: &str = "/sys/fs/cgroup/pids";

/// A cgroup v1 pids group; emptied (into the root group) and removed on drop.
struct PidsGroup(PathBuf);

impl PidsGroup {
    fn create() -> Result<PidsGroup, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not running as root".into());
        }
        if !Path::new(PIDS_ROOT).join("cgroup.procs").exists() {
            return Err(format!("no cgroup v1 pids controller at {PIDS_ROOT}"));
        }
        let dir = Path::new(PIDS_ROOT).join(common::unique("syncast-threads-"));
        std::fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        Ok(PidsGroup(dir))
    }

    fn write(&self, file: &str, value: &str) {
        let path = self.0.join(file);
        std::fs::write(&path, value).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }

    fn current(&self) -> u64 {
        let text = std::fs::read_to_string(self.0.join("pids.current")).unwrap();
        text.trim().parse().unwrap()
    }
}

impl Drop for PidsGroup {
    fn drop(&mut self) {
        // The server is killed before this runs; move anything left so rmdir can succeed.
        if let Ok(procs) = std::fs::read_to_string(self.0.join("cgroup.procs")) {
            for pid in procs.split_whitespace() {
                let _ = std::fs::write(Path::new(PIDS_ROOT).join("cgroup.procs"), pid);
            }
        }
        if let Err(e) = std::fs::remove_dir(&self.0) {
            eprintln!("cleanup: rmdir {}: {e}", self.0.display());
        }
    }
}

/// `GET /sse/call/{id}` on a fresh connection; the status and, for a 503, its body.
fn open_stream(addr: SocketAddr, id: &str) -> (u16, String, Option<common::Sse>) {
    let mut sock = TcpStream::connect(addr).expect("connect");
    sock.set_read_timeout(Some(common::PATIENCE)).unwrap();
    let rq = format!("GET /sse/call/{id}?mode=change HTTP/1.1\r\nHost: x\r\n\r\n");
    sock.write_all(rq.as_bytes()).unwrap();
    let sse = common::Sse::read_head(sock);
    match sse.status {
        200 => (200, String::new(), Some(sse)),
        status => (status, sse.body(), None),
    }
}

#[test]
fn a_refused_thread_is_a_503_and_the_server_recovers_when_threads_are_free_again() {
    let test = "a_refused_thread_is_a_503_and_the_server_recovers_when_threads_are_free_again";
    let group = match PidsGroup::create() {
        Ok(g) => g,
        Err(why) => return unavailable(test, &why),
    };
    let run = common::RunDir::new("syncast-threads-");
    let log = || run.log_text();
    let mut cmd = syncast_bin();
    // A long header deadline: the idle connections of the second half must keep tiny_http's
    // pool threads busy, not be shut by the sweep.
    cmd.args(["--listen", "127.0.0.1:0", "--header-timeout", "120s"]);
    run.server_args(&mut cmd);
    let mut child = KillOnDrop(cmd.spawn().unwrap());
    let addr = listen_addr(&mut child.0);
    let pid = child.0.id();

    // Move the server (all its threads) into the group, then allow not one thread more. The
    // count must be stable first: tiny_http's accept thread spawns its pool (4 threads, never
    // fewer) before it accepts anything, so once a request is served the pool is complete.
    // (Taken too early, on a loaded machine, the limit left the pool unborn and nothing was
    // ever served.)
    let served = raw_get(addr, "/healthz", common::PATIENCE).expect("healthz");
    assert!(served.starts_with("HTTP/1.1 200"), "{served}");
    group.write("pids.max", "max");
    group.write("cgroup.procs", &pid.to_string());
    let threads = group.current();
    group.write("pids.max", &threads.to_string());

    // 1. syncast's own stream thread is refused: a 503 from the dispatcher, counted, logged.
    let (status, body, _) = open_stream(addr, "refused");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body, r#"{"error":"cannot start a thread"}"#);
    let line = wait_for("the spawn failure logged", || {
        log()
            .lines()
            .find(|l| l.contains("thread spawn failed role=alarm-stream"))
            .map(str::to_string)
    });
    assert!(line.contains("error="), "{line}");
    let metrics = raw_get(addr, "/metrics", common::PATIENCE).expect("metrics");
    assert_eq!(
        metric_in(&metrics, r#"syncast_rejected_total{reason="thread-spawn"}"#),
        Some(1.0),
        "{metrics}"
    );

    // 2. tiny_http's own threads are refused: idle connections occupy its 4 pool threads, so
    // for the next client its pool must spawn a thread it cannot get; its accept thread then
    // panics and dies. (A burst of connections may all be queued for the waiting threads
    // without one being spawned, src/util/task_pool.rs `spawn`: so clients keep arriving.)
    // syncast must notice and keep trying to start tiny_http again, without panicking.
    let idle: Vec<TcpStream> = (0..8)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    wait_for_within(
        Duration::from_secs(60),
        "the dead accept loop noticed",
        || {
            let _ = raw_get(addr, "/healthz", Duration::from_millis(200));
            log().contains("accept loop failed").then_some(())
        },
    );

    // 3. Threads are free again: new streams are served.
    group.write("pids.max", "max");
    drop(idle);
    let mut sse =
        wait_for_within(
            Duration::from_secs(60),
            "a stream served again",
            || match open_stream(addr, "after") {
                (200, _, sse) => sse,
                _ => None,
            },
        );
    assert_eq!(sse.next_data(), r#"{"alarm":false}"#);
    drop(sse);
    let metrics = raw_get(addr, "/metrics", common::PATIENCE).expect("metrics");
    assert!(metric_in(&metrics, "syncast_accept_restarts_total").unwrap_or(0.0) >= 1.0);

    // SIGTERM still shuts down cleanly; nothing of syncast's own panicked.
    common::sigterm(&child.0);
    let exit = wait_for("exit", || child.0.try_wait().unwrap());
    assert_eq!(exit.code(), Some(0));
    let text = log();
    assert!(text.contains("accept loop restarted"), "{text}");
    assert!(!text.contains("thread panicked"), "{text}");
    drop(child);
    drop(group);
    let _ = std::fs::remove_dir_all(&run.dir);
}
