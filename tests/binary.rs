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
