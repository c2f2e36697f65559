//! The real `syncast-stress` binary against a real server started in this process: reduced runs
//! of the scenarios must PASS, so `cargo test` alone already catches loss and thread leaks.

mod common;

use std::process::Command;
use std::sync::Mutex;

use common::TestServer;

/// The leak verdict reads this process's thread count (the server runs in-process), so the runs
/// take turns: a run's threads must not be counted in another's baseline.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs the tool against `server` with `args` and `--json`; returns its summary and exit code.
fn stress(server: &TestServer, args: &[&str]) -> (serde_json::Value, Option<i32>) {
    let out = Command::new(env!("CARGO_BIN_EXE_syncast-stress"))
        .arg("--url")
        .arg(format!("http://{}", server.addr))
        .args(["--json", "--quiet", "--seed", "42", "--settle", "20s"])
        .args(args)
        .output()
        .expect("syncast-stress runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON summary ({e}); stdout: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (summary, out.status.code())
}

#[test]
fn a_hundred_alarm_streams_see_every_flip_and_leave_no_thread_behind() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let server = common::start(|_| {});
    // The server ticks every 100 ms and refreshes every 50 ms (see common::start); the slack
    // allows for a loaded CI machine without hiding a lost flip (a lost one never shows).
    let (s, code) = stress(
        &server,
        &[
            "--scenario",
            "alarm",
            "--clients",
            "100",
            "--duration",
            "3s",
            "--refresh",
            "50ms",
            "--tick",
            "100ms",
            "--slack",
            "500ms",
            "--ramp",
            "500",
        ],
    );
    assert_eq!(s["verdict"], "PASS", "{s:#}");
    assert_eq!(code, Some(0));
    let alarm = &s["alarm"];
    assert_eq!(alarm["clients"], 100);
    assert!(alarm["flips"].as_u64().unwrap() >= 100, "{s:#}");
    assert_eq!(alarm["flips"], alarm["on_time"]);
    assert!(s["server"]["peak"]["spawned_live"].as_u64().unwrap() >= 100);
    assert_eq!(s["clients_failed"], 0);
}

#[test]
fn a_hundred_and_fifty_chat_members_get_every_message_once_and_in_order() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let server = common::start(|_| {});
    let (s, code) = stress(
        &server,
        &[
            "--scenario",
            "chat",
            "--clients",
            "150",
            "--messages",
            "5",
            "--interval",
            "20ms..100ms",
            "--ramp",
            "500",
        ],
    );
    assert_eq!(s["verdict"], "PASS", "{s:#}");
    assert_eq!(code, Some(0));
    let chat = &s["chat"];
    assert_eq!(chat["sent"], 750);
    let expected = chat["expected"].as_u64().unwrap();
    assert!(expected > 0, "{s:#}");
    assert_eq!(chat["delivered"], expected);
    assert_eq!(s["server"]["after"]["chat_members"], 0);
}

/// Issue 17: the Go original's scenario over its own transport, plain TCP lines.
#[test]
fn a_hundred_tcp_members_get_every_line_once_and_in_order_and_their_threads_end() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let server = common::start(|c| c.chat_tcp = Some("127.0.0.1:0".parse().unwrap()));
    let tcp = server.server.as_ref().unwrap().chat_tcp_addr().unwrap();
    let tcp = tcp.to_string();
    let (s, code) = stress(
        &server,
        &[
            "--scenario",
            "chat",
            "--transport",
            "tcp",
            "--chat-tcp",
            &tcp,
            "--clients",
            "100",
            "--messages",
            "5",
            "--interval",
            "20ms..100ms",
            "--ramp",
            "500",
        ],
    );
    assert_eq!(s["verdict"], "PASS", "{s:#}");
    assert_eq!(code, Some(0));
    let chat = &s["chat"];
    assert_eq!(chat["sent"], 500);
    // Every member gets every line of the 99 others: the join barrier makes it exact.
    assert_eq!(chat["expected"], 100 * 99 * 5);
    assert_eq!(chat["delivered"], 100 * 99 * 5);
    assert_eq!(s["server"]["after"]["chat_members"], 0);
    assert_eq!(server.metric("syncast_chat_tcp_connections"), 0.0);
}

/// Issue 17's mixed room: half the members on the TCP port, half over SSE, in one room; each
/// must get every message of every other member, whichever transport either uses.
#[test]
fn a_mixed_room_of_tcp_and_sse_members_gets_every_message_once_and_in_order() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let server = common::start(|c| c.chat_tcp = Some("127.0.0.1:0".parse().unwrap()));
    let tcp = server
        .server
        .as_ref()
        .unwrap()
        .chat_tcp_addr()
        .unwrap()
        .to_string();
    let (s, code) = stress(
        &server,
        &[
            "--scenario",
            "chat",
            "--transport",
            "mixed",
            "--chat-tcp",
            &tcp,
            "--clients",
            "100",
            "--messages",
            "5",
            "--interval",
            "20ms..100ms",
            "--ramp",
            "500",
        ],
    );
    assert_eq!(s["verdict"], "PASS", "{s:#}");
    assert_eq!(code, Some(0));
    assert_eq!(s["clients_failed"], 0, "{s:#}");
    assert_eq!(s["chat"]["sent"], 500);
    assert_eq!(s["chat"]["delivered"], 100 * 99 * 5);
    assert_eq!(s["server"]["after"]["chat_members"], 0);
    assert_eq!(server.metric("syncast_chat_tcp_connections"), 0.0);
    assert_eq!(server.metric("syncast_chat_streams_attached"), 0.0);
}

/// TCP chat members (each with `/auth` and a token of its own) beside SSE alarm streams.
#[test]
fn with_auth_on_tcp_members_authenticate_and_the_mixed_run_with_alarm_streams_passes() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = common::auth::key_dir();
    let secret = common::auth::secret_file(&dir);
    let server = common::start_secured(|c| c.chat_tcp = Some("127.0.0.1:0".parse().unwrap()));
    let tcp = server
        .server
        .as_ref()
        .unwrap()
        .chat_tcp_addr()
        .unwrap()
        .to_string();
    let (s, code) = stress(
        &server,
        &[
            "--scenario",
            "mixed",
            "--transport",
            "tcp",
            "--chat-tcp",
            &tcp,
            "--clients",
            "40",
            "--messages",
            "3",
            "--interval",
            "20ms..100ms",
            "--duration",
            "2s",
            "--refresh",
            "50ms",
            "--tick",
            "100ms",
            "--slack",
            "500ms",
            "--ramp",
            "500",
            "--jwt-secret-file",
            secret.to_str().unwrap(),
        ],
    );
    assert_eq!(s["verdict"], "PASS", "{s:#}");
    assert_eq!(code, Some(0));
    assert_eq!(s["clients_failed"], 0, "{s:#}");
    assert_eq!(s["chat"]["delivered"], 40 * 39 * 3);
    for reason in ["unauthorized", "forbidden"] {
        let refused = server.metric(&format!("syncast_rejected_total{{reason=\"{reason}\"}}"));
        assert_eq!(refused, 0.0, "{reason}");
    }
}

#[test]
fn an_unreachable_server_is_exit_2_with_one_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_syncast-stress"))
        .args(["--url", "http://127.0.0.1:1", "--clients", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("syncast-stress: cannot read the server's figures"),
        "{err}"
    );
}

#[test]
fn members_cut_off_as_slow_resume_with_their_token_and_lose_nothing() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // A queue of 2 events per member: bursts from 60 members cut streams off as slow, and each
    // reader reattaches with its token and Last-Event-ID.
    let server = common::start(|c| c.queue = 2);
    let (s, code) = stress(
        &server,
        &[
            "--scenario",
            "chat",
            "--clients",
            "60",
            "--messages",
            "10",
            "--interval",
            "0ms..5ms",
            "--ramp",
            "500",
        ],
    );
    assert_eq!(s["verdict"], "PASS", "{s:#}");
    assert_eq!(code, Some(0));
    assert!(s["errors"]["stream-cut"].as_u64().unwrap_or(0) > 0, "{s:#}");
    assert_eq!(s["chat"]["lost"], 0);
}

#[test]
fn change_mode_streams_see_each_flip_exactly_once() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let server = common::start(|_| {});
    let (s, code) = stress(
        &server,
        &[
            "--scenario",
            "alarm",
            "--mode",
            "change",
            "--clients",
            "50",
            "--duration",
            "2s",
            "--refresh",
            "50ms",
            "--tick",
            "100ms",
            "--slack",
            "500ms",
            "--ramp",
            "500",
        ],
    );
    assert_eq!(s["verdict"], "PASS", "{s:#}");
    assert_eq!(code, Some(0));
    let alarm = &s["alarm"];
    // One first value per stream plus exactly one event per flip.
    assert_eq!(
        alarm["events"].as_u64().unwrap(),
        50 + alarm["flips"].as_u64().unwrap(),
        "{s:#}"
    );
}

#[test]
fn with_auth_on_every_simulated_client_mints_its_own_tokens_and_the_mixed_run_passes() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = common::auth::key_dir();
    let secret = common::auth::secret_file(&dir);
    let server = common::start_secured(|_| {});
    // start_secured writes the same secret into its own folder; the tool reads this copy.
    let file = secret.to_str().unwrap();
    let (s, code) = stress(
        &server,
        &[
            "--scenario",
            "mixed",
            "--clients",
            "50",
            "--messages",
            "3",
            "--interval",
            "20ms..100ms",
            "--duration",
            "2s",
            "--refresh",
            "50ms",
            "--tick",
            "100ms",
            "--slack",
            "500ms",
            "--ramp",
            "500",
            "--jwt-secret-file",
            file,
        ],
    );
    assert_eq!(s["verdict"], "PASS", "{s:#}");
    assert_eq!(code, Some(0));
    assert_eq!(s["clients_failed"], 0, "{s:#}");
    assert_eq!(s["chat"]["lost"], 0);
    // Every request carried a token the server took: nothing refused.
    for reason in ["unauthorized", "forbidden"] {
        let refused = server.metric(&format!("syncast_rejected_total{{reason=\"{reason}\"}}"));
        assert_eq!(refused, 0.0, "{reason}");
    }
    // Without the secret the tool cannot even read the server's figures: one line, exit 2.
    let out = Command::new(env!("CARGO_BIN_EXE_syncast-stress"))
        .arg("--url")
        .arg(format!("http://{}", server.addr))
        .args(["--clients", "1", "-q"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("status 401"), "{err}");
}
