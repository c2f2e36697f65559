//! The real `syncast` binary: flags, and SIGTERM with 1,000 streams open.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{syncast_bin, wait_for, KillOnDrop, Sse, PATIENCE};

#[test]
fn a_bad_flag_or_value_is_a_one_line_error_with_exit_2() {
    for args in [
        &["--nope"][..],
        &["--tick", "fast"],
        &["--max-clients", "0"],
        &["--listen", "nowhere"],
        &["--log-level", "loud"],
    ] {
        let out = syncast_bin().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("syncast: "), "{err}");
    }
}

#[test]
fn help_and_version() {
    let out = syncast_bin().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--listen",
        "--db",
        "--tick",
        "--refresh",
        "--heartbeat",
        "--max-clients",
        "--log-level",
        "--log-file",
    ] {
        assert!(help.contains(flag), "help lacks {flag}");
    }
    let out = syncast_bin().arg("--version").output().unwrap();
    assert!(String::from_utf8(out.stdout)
        .unwrap()
        .starts_with("syncast 0."));
}

struct Running {
    child: Child,
    addr: std::net::SocketAddr,
    log: std::path::PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        // Only a failed test gets here with the server still running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run_server() -> Running {
    let run = common::RunDir::new("syncast-bin-");
    let mut cmd = syncast_bin();
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--tick",
        "30s",
        "--heartbeat",
        "30s",
    ]);
    let mut child = run.server_args(&mut cmd).spawn().unwrap();
    let addr = common::listen_addr(&mut child);
    Running {
        child,
        addr,
        log: run.log,
    }
}

#[test]
fn sigterm_with_1000_streams_open_exits_0_after_joining_every_thread() {
    let mut server = run_server();
    let mut streams: Vec<Sse> = (0..1000)
        .map(|i| {
            Sse::open(
                server.addr,
                &format!("/sse/call/term{}?mode=change", i % 100),
                &[],
            )
        })
        .collect();
    for sse in streams.iter_mut() {
        assert_eq!(sse.status, 200);
        sse.next_data();
    }
    common::sigterm(&server.child);
    let started = Instant::now();
    let status = wait_for("the server to exit", || server.child.try_wait().unwrap());
    assert_eq!(status.code(), Some(0));
    assert!(started.elapsed() < PATIENCE);
    for sse in streams.iter_mut() {
        assert_eq!(sse.next_event().unwrap().0, "shutdown");
    }
    let log = std::fs::read_to_string(&server.log).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("shutdown complete: joined"))
        .unwrap_or_else(|| panic!("no shutdown line in {log}"));
    let n: usize = line
        .rsplit("joined ")
        .next()
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(n >= 1002, "joined only {n}: {line}");
    assert!(!log.contains("panicked"), "{log}");
    assert_eq!(log.matches("reason=shutdown").count(), 1000);
}

#[test]
fn sigint_shuts_down_like_sigterm() {
    let mut server = run_server();
    let mut streams: Vec<Sse> = (0..10)
        .map(|i| Sse::open(server.addr, &format!("/sse/call/int{i}?mode=change"), &[]))
        .collect();
    for sse in streams.iter_mut() {
        sse.next_data();
    }
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(server.child.id() as i32, libc::SIGINT) };
    let status = wait_for("the server to exit", || server.child.try_wait().unwrap());
    assert_eq!(
        status.code(),
        Some(0),
        "SIGINT is an orderly stop, not a kill"
    );
    for sse in streams.iter_mut() {
        assert_eq!(sse.next_event().unwrap().0, "shutdown");
    }
    let log = std::fs::read_to_string(&server.log).unwrap();
    assert!(log.contains("signal received signal=2"), "{log}");
    assert!(log.contains("shutdown complete: joined"), "{log}");
    assert_eq!(log.matches("reason=shutdown").count(), 10);
}

#[test]
fn sigterm_while_syncast_stress_runs_1000_clients_exits_0_with_every_thread_joined() {
    let mut server = run_server();
    let url = format!("http://{}", server.addr);
    // 500 chat members + 500 alarm streams, arriving quickly, talking for longer than we wait.
    let mut stress = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_syncast-stress"))
            .args(["--url", &url, "--scenario", "mixed", "--clients", "500"])
            .args([
                "--messages",
                "50",
                "--interval",
                "200ms..400ms",
                "--duration",
                "60s",
            ])
            .args(["--ramp", "2000", "--seed", "7", "-q", "--json"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let metric = |name: &str| -> f64 {
        let text = common::raw_get(server.addr, "/metrics", PATIENCE).unwrap_or_default();
        common::metric_in(&text, name).unwrap_or(0.0)
    };
    common::wait_for_within(Duration::from_secs(120), "1,000 streaming clients", || {
        (metric("syncast_streaming_clients") >= 1000.0).then_some(())
    });
    common::sigterm(&server.child);
    let started = Instant::now();
    let status = wait_for("the server to exit", || server.child.try_wait().unwrap());
    let took = started.elapsed();
    assert_eq!(status.code(), Some(0));
    let log = std::fs::read_to_string(&server.log).unwrap();
    assert!(!log.contains("panicked"), "{log}");
    assert!(!log.contains("shutdown incomplete"), "{log}");
    let line = log
        .lines()
        .find(|l| l.contains("shutdown complete: joined"))
        .expect("shutdown line");
    // Reported, not asserted: wall-clock bounds are for the benchmark, not tests.
    eprintln!("SIGTERM under load: exit after {took:?}; {line}");
    let _ = stress.0.kill();
}

const F: &str = r#"{"alarm":false}"#;
const T: &str = r#"{"alarm":true}"#;

/// Sends `sig` to `child`.
fn signal(child: &Child, sig: i32) {
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, sig) };
}

/// `method path` with `body` on its own connection; the status and the body.
fn call(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let target = syncast::kit::http::Target::of(addr);
    let r = syncast::kit::http::request(&target, method, path, &[], body.as_bytes(), PATIENCE)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    (r.status, String::from_utf8_lossy(&r.body).to_string())
}

/// Waits until `log` (a file) has a line with every one of `parts`; returns the whole text.
fn wait_file_line(log: &std::path::Path, parts: &[&str]) -> String {
    wait_for(
        &format!("a line with {parts:?} in {}", log.display()),
        || {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            text.lines()
                .any(|l| parts.iter().all(|p| l.contains(p)))
                .then_some(text)
        },
    )
}

#[test]
fn sighup_reopens_the_log_file_for_rotation_and_the_server_keeps_serving_its_streams() {
    let run = common::RunDir::new("syncast-hup-");
    let mut cmd = syncast_bin();
    cmd.args(["--listen", "127.0.0.1:0", "--heartbeat", "30s"]);
    let mut child = KillOnDrop(run.server_args(&mut cmd).spawn().unwrap());
    let addr = common::listen_addr(&mut child.0);
    let id = common::unique("hup");
    let mut before = Sse::open(addr, &format!("/sse/call/{id}?mode=change"), &[]);
    assert_eq!(before.next_data(), F);
    wait_file_line(&run.log, &["sse stream opened", &format!("id={id} ")]);

    // logrotate's default: rename the file, then SIGHUP (its postrotate).
    let rotated = run.dir.join("server.log.1");
    std::fs::rename(&run.log, &rotated).unwrap();
    signal(&child.0, libc::SIGHUP);
    wait_file_line(&run.log, &["log file reopened", "path="]);

    // Everything after the reopen lands in the new file; the stream opened before goes on.
    let later = common::unique("hup-later");
    let mut after = Sse::open(addr, &format!("/sse/call/{later}?mode=change"), &[]);
    assert_eq!(after.next_data(), F);
    assert_eq!(call(addr, "PUT", &format!("/alarms/{id}"), "true").0, 204);
    assert_eq!(
        before.next_data(),
        T,
        "the stream from before the HUP still streams"
    );
    assert_eq!(call(addr, "GET", "/healthz", "").0, 200);
    wait_file_line(&run.log, &["sse stream opened", &format!("id={later} ")]);
    common::sigterm(&child.0);
    let status = wait_for("the server to exit", || child.0.try_wait().unwrap());
    assert_eq!(status.code(), Some(0));
    assert_eq!(before.next_event().unwrap().0, "shutdown");

    let old = std::fs::read_to_string(&rotated).unwrap();
    let new = std::fs::read_to_string(&run.log).unwrap();
    assert!(old.contains("server listening"), "{old}");
    assert!(
        old.contains(&format!("sse stream opened id={id} ")),
        "{old}"
    );
    for (what, text) in [("old", &old), ("new", &new)] {
        assert!(!text.contains("panicked"), "{what}: {text}");
    }
    // Nothing after the reopen in the old file, nothing before it in the new one.
    for line in ["log file reopened", &later, "shutdown"] {
        assert!(!old.contains(line), "{line:?} in the rotated file:\n{old}");
    }
    assert!(!new.contains("server listening"), "{new}");
    assert!(
        !new.contains(&format!("sse stream opened id={id} ")),
        "{new}"
    );
    assert!(
        new.contains(&format!("sse stream closed id={id} ")),
        "{new}"
    );
    assert!(new.contains("shutdown complete: joined"), "{new}");
    assert!(new.contains("reload started hooks=1"), "{new}");
    assert!(new.contains("reloaded what=keys"), "{new}");
}

#[test]
fn a_log_file_that_cannot_be_reopened_is_logged_and_the_server_goes_on() {
    let run = common::RunDir::new("syncast-hup-fail-");
    let folder = run.dir.join("logs");
    std::fs::create_dir_all(&folder).unwrap();
    let log = folder.join("server.log");
    let mut child = KillOnDrop(
        syncast_bin()
            .args(["--listen", "127.0.0.1:0", "--db"])
            .arg(run.dir.join("a.db"))
            .arg("--log-file")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let addr = common::listen_addr(&mut child.0);
    // The folder of the log file is gone: the path cannot be opened again.
    let kept = run.dir.join("kept.log");
    std::fs::rename(&log, &kept).unwrap();
    std::fs::remove_dir(&folder).unwrap();
    signal(&child.0, libc::SIGHUP);
    let text = wait_file_line(&kept, &["log file reopen failed", "path=", "error="]);
    assert!(text.contains("No such file or directory"), "{text}");
    assert_eq!(call(addr, "GET", "/healthz", "").0, 200, "still serving");
    common::sigterm(&child.0);
    let status = wait_for("the server to exit", || child.0.try_wait().unwrap());
    assert_eq!(status.code(), Some(0));
    wait_file_line(&kept, &["shutdown complete: joined"]);
}

/// A server whose chat streams can be made to block in a write: `--write-timeout` of a minute,
/// posts as fast as a test sends them.
fn server_for_stalls(run: &common::RunDir) -> (KillOnDrop, std::net::SocketAddr) {
    let mut cmd = syncast_bin();
    cmd.args(["--listen", "127.0.0.1:0", "--heartbeat", "30s"])
        .args([
            "--write-timeout",
            "60s",
            "--rate",
            "10000",
            "--burst",
            "10000",
        ]);
    let mut child = KillOnDrop(run.server_args(&mut cmd).spawn().unwrap());
    let addr = common::listen_addr(&mut child.0);
    (child, addr)
}

/// Chat members that joined with a small receive buffer and never read, and a member posting
/// 4 KB messages until the server thread of every stalled member is blocked in its write (seen
/// in `/proc`: the thread sleeps inside `write`, `writev` or `sendto`; a stream thread waiting
/// for work sleeps in a futex). The sockets are returned, to be kept open.
fn stall_chat_streams(pid: u32, addr: std::net::SocketAddr, n: usize) -> Vec<std::net::TcpStream> {
    use std::io::Write as _;
    let stalled: Vec<std::net::TcpStream> = (0..n)
        .map(|i| {
            let sock = common::connect_with_receive_buffer(addr, 2048);
            let name = common::unique(&format!("stall{i}"));
            (&sock)
                .write_all(
                    format!("GET /chat/stream?name={name} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
                )
                .unwrap();
            sock
        })
        .collect();
    let (status, joined) = call(addr, "POST", "/chat/join", &common::unique("poster"));
    assert_eq!(status, 201, "{joined}");
    let token = serde_json::from_str::<serde_json::Value>(&joined).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let target = syncast::kit::http::Target::of(addr);
    let auth = format!("Bearer {token}");
    let text = "x".repeat(4000);
    let blocked = || {
        let dir = format!("/proc/{pid}/task");
        let tasks = std::fs::read_dir(&dir).map(|d| d.flatten().collect::<Vec<_>>());
        tasks
            .unwrap_or_default()
            .iter()
            .filter(|t| {
                let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
                let call = std::fs::read_to_string(t.path().join("syscall")).unwrap_or_default();
                let number = call.split(' ').next().unwrap_or_default();
                comm.starts_with("chat-") && ["1", "20", "44"].contains(&number)
            })
            .count()
    };
    wait_for("every stalled stream blocked in a write", || {
        let r = syncast::kit::http::request(
            &target,
            "POST",
            "/chat/messages",
            &[("Authorization", &auth)],
            text.as_bytes(),
            PATIENCE,
        )
        .unwrap();
        assert_eq!(r.status, 202, "{:?}", String::from_utf8_lossy(&r.body));
        (blocked() == n).then_some(())
    });
    stalled
}

#[test]
fn sigterm_with_readers_that_stopped_reading_joins_every_thread_within_the_deadline_and_exits_0() {
    let run = common::RunDir::new("syncast-stalled-");
    let (mut child, addr) = server_for_stalls(&run);
    let mut healthy = Sse::open(addr, "/sse/call/fine?mode=change", &[]);
    assert_eq!(healthy.next_data(), F);
    let _stalled = stall_chat_streams(child.0.id(), addr, 3);
    common::sigterm(&child.0);
    let started = Instant::now();
    let status = wait_for("the server to exit", || child.0.try_wait().unwrap());
    let took = started.elapsed();
    let log = std::fs::read_to_string(&run.log).unwrap();
    assert!(!log.contains("shutdown incomplete"), "{log}");
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("shutdown cut connections="), "{log}");
    assert!(log.contains("shutdown complete: joined"), "{log}");
    assert_eq!(
        log.matches("chat stream closed").count(),
        3,
        "every stalled stream closed: {log}"
    );
    assert_eq!(log.matches("reason=shutdown").count(), 4, "{log}");
    assert_eq!(healthy.next_event().unwrap().0, "shutdown");
    // Reported, not asserted: a wall-clock bound is the benchmark's business.
    eprintln!("SIGTERM with 3 stalled readers and --write-timeout 60s: exit after {took:?}");
}

#[test]
fn a_second_sigterm_during_shutdown_exits_at_once_with_a_log_line_and_status_143() {
    let run = common::RunDir::new("syncast-twice-");
    let (mut child, addr) = server_for_stalls(&run);
    // A reader that stopped reading holds the shutdown in its farewell window: long enough to
    // send the second signal while it waits.
    let _stalled = stall_chat_streams(child.0.id(), addr, 1);
    common::sigterm(&child.0);
    wait_file_line(&run.log, &["shutdown started"]);
    common::sigterm(&child.0);
    let status = wait_for("the server to exit", || child.0.try_wait().unwrap());
    let log = std::fs::read_to_string(&run.log).unwrap();
    assert_eq!(status.code(), Some(143), "{log}");
    assert!(
        log.contains("shutdown interrupted signal=15; exiting now"),
        "{log}"
    );
    assert!(!log.contains("shutdown complete"), "{log}");
}

#[test]
fn a_listener_other_hosts_can_reach_without_a_key_is_refused_in_one_line_with_exit_2() {
    // Refused while validating the flags: nothing is bound (tests listen on loopback only).
    for args in [
        &["--listen", "0.0.0.0:0"][..],
        &["--listen", "[::]:0"],
        &["--listen", "127.0.0.1:0", "--admin-listen", "0.0.0.0:0"],
    ] {
        let out = syncast_bin().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("syncast: "), "{err}");
        for hint in ["--jwt-secret-file", "--jwt-public-key-file", "--insecure"] {
            assert!(err.contains(hint), "{args:?}: {err}");
        }
        assert!(out.stdout.is_empty(), "{args:?}: it never listened");
    }
}

#[test]
fn a_bad_key_file_is_a_one_line_error_with_exit_2() {
    let dir = common::auth::key_dir();
    let short = dir.join("short");
    std::fs::write(&short, "too short\n").unwrap();
    for (args, want) in [
        (
            vec!["--jwt-secret-file".to_string(), short.display().to_string()],
            "at least 32",
        ),
        (
            vec![
                "--jwt-public-key-file".to_string(),
                dir.join("missing.pem").display().to_string(),
            ],
            "cannot read",
        ),
    ] {
        let run = common::RunDir::new("syncast-badkey-");
        let out = syncast_bin()
            .args(&args)
            .args(["--listen", "127.0.0.1:0", "--db"])
            .arg(run.dir.join("a.db"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(want), "{err}");
    }
}

#[test]
fn insecure_starts_and_says_so_in_a_warning() {
    let run = common::RunDir::new("syncast-insecure-");
    let mut cmd = syncast_bin();
    cmd.args(["--listen", "127.0.0.1:0", "--insecure"]);
    let mut child = KillOnDrop(run.server_args(&mut cmd).spawn().unwrap());
    let addr = common::listen_addr(&mut child.0);
    let reply = common::raw_get(addr, "/sse/call/1?mode=x", PATIENCE).unwrap();
    assert!(
        reply.starts_with("HTTP/1.1 400"),
        "open, no token asked: {reply}"
    );
    common::sigterm(&child.0);
    let exit = wait_for("exit", || child.0.try_wait().unwrap());
    assert_eq!(exit.code(), Some(0));
    let log = run.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("[WARN]") && l.contains("auth off: --insecure")),
        "{log}"
    );
}

#[test]
fn sighup_rereads_the_key_file_and_a_bad_one_keeps_the_old_key() {
    use common::auth::{with_rights, SECRET};
    use syncast::kit::jwt::Minter;
    let run = common::RunDir::new("syncast-hup-");
    let secret = common::auth::secret_file(&run.dir);
    let mut cmd = syncast_bin();
    cmd.args(["--listen", "127.0.0.1:0", "--jwt-secret-file"])
        .arg(&secret);
    let mut child = KillOnDrop(run.server_args(&mut cmd).spawn().unwrap());
    let addr = common::listen_addr(&mut child.0);
    let status_with = |token: &str| -> String {
        let mut sock = syncast::kit::http::connect(addr, PATIENCE).unwrap();
        let auth = format!("Bearer {token}");
        let rq = syncast::kit::http::request_bytes(
            "x",
            "GET",
            "/alarms/hup",
            &[("Authorization", &auth), ("Connection", "close")],
            b"",
        );
        std::io::Write::write_all(&mut sock, &rq).unwrap();
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut sock, &mut text);
        text.split(' ').nth(1).unwrap_or("").to_string()
    };
    let rights = with_rights("hup", serde_json::json!({"publish": ["hup"]}));
    let old = Minter::hs256(SECRET).unwrap().mint(&rights).unwrap();
    assert_eq!(status_with(&old), "200");
    let next = b"the secret after the rotation, long enough";
    std::fs::write(&secret, next).unwrap();
    let hup = |child: &std::process::Child| {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    };
    hup(&child.0);
    wait_for("the reload logged", || {
        run.log_text().contains("key reloaded file=").then_some(())
    });
    let new = Minter::hs256(next).unwrap().mint(&rights).unwrap();
    assert_eq!(status_with(&new), "200", "the new key is in use");
    assert_eq!(status_with(&old), "401", "the old key is not");
    std::fs::write(&secret, "short\n").unwrap();
    hup(&child.0);
    wait_for("the failed reload logged", || {
        run.log_text().contains("key reload failed").then_some(())
    });
    assert_eq!(status_with(&new), "200", "a bad file keeps the key in use");
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "SIGHUP does not stop it"
    );
    common::sigterm(&child.0);
    let exit = wait_for("exit", || child.0.try_wait().unwrap());
    assert_eq!(exit.code(), Some(0));
    let log = run.log_text();
    assert!(log.contains("signal received signal=1"), "{log}");
    assert!(log.contains("keys reloaded=0 failed=1"), "{log}");
}

#[test]
fn the_admin_listener_is_announced_on_a_second_line_and_serves_the_ops_endpoints() {
    let run = common::RunDir::new("syncast-admin-");
    let mut cmd = syncast_bin();
    // A bare port is a loopback address; 0 picks a free one.
    cmd.args(["--listen", "127.0.0.1:0", "--admin-listen", "0"]);
    let mut child = KillOnDrop(run.server_args(&mut cmd).spawn().unwrap());
    let [addr, admin] = common::listen_addrs(&mut child.0, 2)[..] else {
        unreachable!()
    };
    assert!(admin.ip().is_loopback() && admin != addr, "{admin}");
    let get = |at, path| common::raw_get(at, path, PATIENCE).unwrap_or_default();
    assert!(get(admin, "/metrics").starts_with("HTTP/1.1 200"));
    assert!(get(addr, "/metrics").starts_with("HTTP/1.1 404"));
    assert!(get(addr, "/healthz").starts_with("HTTP/1.1 200"));
    common::sigterm(&child.0);
    let exit = wait_for("exit", || child.0.try_wait().unwrap());
    assert_eq!(exit.code(), Some(0));
}

#[test]
fn a_stdout_nobody_reads_does_not_stop_the_server() {
    // A supervisor that keeps only the first line, or `syncast | head -1`: the announcement
    // lines meet a closed pipe. `println!` panicked there, on the main thread, which shut the
    // server down at once.
    let run = common::RunDir::new("syncast-stdout-");
    let mut cmd = syncast_bin();
    cmd.args(["--listen", "127.0.0.1:0", "--admin-listen", "0"])
        .args(["--chat-tcp", "127.0.0.1:0"]);
    run.server_args(&mut cmd);
    // Replaces the piped stdout: the read end is closed before the server writes a byte.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut child = KillOnDrop(cmd.stdout(writer).spawn().unwrap());
    let addr: std::net::SocketAddr = wait_for("the listening log line", || {
        run.log_text()
            .lines()
            .find_map(|l| l.split("server listening addr=").nth(1))
            .and_then(|a| a.trim().parse().ok())
    });
    let got = common::raw_get(addr, "/healthz", PATIENCE).unwrap_or_default();
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    // The main thread announces before it waits for signals, so whenever SIGTERM comes, a
    // failed announcement has happened by the time the signal is read: exit 101 (a panic),
    // where a clean shutdown exits 0.
    common::sigterm(&child.0);
    let exit = wait_for("exit", || child.0.try_wait().unwrap());
    assert_eq!(exit.code(), Some(0), "{}", run.log_text());
}

#[test]
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn the_server_restarts_itself_once_with_the_malloc_tunables_and_the_users_own_value_wins() {
    let ours = "glibc.pthread.stack_cache_size=1048576:glibc.malloc.tcache_max=24";
    for (users, expected) in [
        (None, ours.to_string()),
        (
            Some("glibc.malloc.tcache_max=1032"),
            "glibc.malloc.tcache_max=1032:glibc.pthread.stack_cache_size=1048576".to_string(),
        ),
        (Some(ours), ours.to_string()),
    ] {
        let run = common::RunDir::new("syncast-tunables-");
        let mut cmd = syncast_bin();
        cmd.args(["--listen", "127.0.0.1:0", "--log-level", "debug"]);
        match users {
            Some(t) => cmd.env("GLIBC_TUNABLES", t),
            None => cmd.env_remove("GLIBC_TUNABLES"),
        };
        let mut child = KillOnDrop(run.server_args(&mut cmd).spawn().unwrap());
        // It answers only once it has restarted (the restart comes before the listener).
        let addr = common::listen_addr(&mut child.0);
        assert_eq!(call(addr, "GET", "/healthz", "").0, 200);
        // What the restarted process read (its own `getenv`: /proc/PID/environ shows only up
        // to the first `:`, which glibc's parsing overwrote).
        let log = wait_file_line(&run.log, &["glibc tunables="]);
        assert!(
            log.lines()
                .any(|l| l.ends_with(&format!("glibc tunables={expected}"))),
            "user's GLIBC_TUNABLES {users:?}: {log}"
        );
        assert!(!log.contains("stack cache not bounded"), "{log}");
        assert_eq!(
            log.matches("glibc tunables=").count(),
            1,
            "one start logs, after one restart: {log}"
        );
    }
}

#[test]
#[cfg(target_os = "linux")]
fn the_server_sizes_its_futex_hash_for_its_stream_cap_where_the_kernel_has_one() {
    // Linux 6.16 gives each process a private futex hash, 16 buckets on 2 cores whatever the
    // thread count; older kernels answer EINVAL and keep the system's table.
    const PR_FUTEX_HASH: libc::c_int = 78;
    const PR_FUTEX_HASH_GET_SLOTS: libc::c_ulong = 2;
    // SAFETY: PR_FUTEX_HASH takes integer arguments and touches no memory of ours.
    let supported = unsafe { libc::prctl(PR_FUTEX_HASH, PR_FUTEX_HASH_GET_SLOTS, 0, 0, 0) } >= 0;
    let run = common::RunDir::new("syncast-futex-");
    let mut cmd = syncast_bin();
    let debug = ["--listen", "127.0.0.1:0", "--log-level", "debug"];
    cmd.args(debug).args(["--max-clients", "100000"]);
    let mut child = KillOnDrop(run.server_args(&mut cmd).spawn().unwrap());
    let addr = common::listen_addr(&mut child.0);
    assert_eq!(call(addr, "GET", "/healthz", "").0, 200);
    let log = wait_file_line(&run.log, &["futex hash slots="]);
    // One bucket per 4 streams, a power of two: 100,000 / 4 = 25,000 -> 32,768.
    let expected = if supported { "32768" } else { "system" };
    assert!(
        log.lines()
            .any(|l| l.ends_with(&format!("futex hash slots={expected}"))),
        "kernel has private futex hashes: {supported}; {log}"
    );
    assert!(!log.contains("futex hash not sized"), "{log}");
}
