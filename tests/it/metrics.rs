//! `/metrics` as Prometheus takes it: Prometheus' own linter (`promtool check metrics`) passes
//! it after real traffic, the standard `process_*` series are there and true, the histograms
//! fill, and a scraper that asks for OpenMetrics gets it.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{metric_in, start, unique, wait_for};

/// `promtool check metrics` on `text`: its exit status and what it said.
fn promtool(text: &str) -> (Option<i32>, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool: {e} (Debian: apt-get install prometheus; `make test-deps` \
                 installs it under CI=true)"
            )
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), said)
}

#[test]
fn metrics_after_traffic_pass_promtool_with_process_series_and_histograms() {
    let s = start(|c| c.tick = Duration::from_millis(20));
    // Traffic of every kind: an alarm stream and a PUT, a chat member streaming while another
    // posts, a refused request.
    let id = unique("prom");
    let mut alarm = s.sse(&format!("/sse/call/{id}"));
    alarm.next_data();
    assert_eq!(
        s.request("PUT", &format!("/alarms/{id}"), Some("true"))
            .status,
        204
    );
    let reader = unique("reader");
    let mut chat = s.sse(&format!("/chat/stream?name={reader}"));
    assert_eq!(chat.next_event().unwrap().0, "welcome");
    let poster = s.request("POST", "/chat/join", Some(&unique("poster")));
    let token = poster.json()["token"].as_str().unwrap().to_string();
    let auth = format!("Bearer {token}");
    for i in 0..5 {
        let r = s.request_with(
            "POST",
            "/chat/messages",
            Some(&format!("hello {i}")),
            &[("Authorization", &auth)],
        );
        assert_eq!(r.status, 202, "{}", r.body);
    }
    let mut messages = 0;
    while messages < 5 {
        let (event, _, _) = chat.next_event().expect("the chat stream goes on");
        if event == "message" {
            messages += 1;
        }
    }
    assert_eq!(s.request("GET", "/nope", None).status, 404);
    // The delivery is counted after its write: wait for the histogram rather than race it.
    let text = wait_for("the delivery recorded", || {
        let text = s.request("GET", "/metrics", None).body;
        (metric_in(&text, "syncast_chat_delivery_seconds_count")? >= 5.0).then_some(text)
    });

    let (code, said) = promtool(&text);
    assert_eq!(code, Some(0), "promtool check metrics:\n{said}\n{text}");
    assert!(
        said.trim().is_empty(),
        "promtool had something to say:\n{said}"
    );

    let r = s.request("GET", "/metrics", None);
    assert_eq!(
        r.header("Content-Type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let get = |name: &str| metric_in(&text, name).unwrap_or_else(|| panic!("{name} missing"));
    assert!(get("process_cpu_seconds_total") > 0.0);
    assert!(get("process_resident_memory_bytes") > 1e6);
    assert!(get("process_virtual_memory_bytes") >= get("process_resident_memory_bytes"));
    assert!(get("process_open_fds") >= 3.0);
    assert!(get("process_max_fds") >= get("process_open_fds"));
    assert!(
        get("process_threads") >= 8.0,
        "main, tiny_http's five, ours"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = get("process_start_time_seconds");
    assert!(
        started <= now + 1.0 && started > now - 24.0 * 3600.0,
        "{started}"
    );
    for histogram in [
        "syncast_refresh_duration_seconds",
        "syncast_chat_delivery_seconds",
        "syncast_event_write_seconds",
    ] {
        let count = get(&format!("{histogram}_count"));
        assert!(count >= 1.0, "{histogram}: {count}");
        assert_eq!(get(&format!("{histogram}_bucket{{le=\"+Inf\"}}")), count);
        assert!(get(&format!("{histogram}_sum")) > 0.0, "{histogram}");
    }
    // Names kept from before the library: their readers (the bench, the stress tool) go on.
    for kept in [
        "syncast_refresh_total",
        "syncast_refresh_duration_seconds_sum",
        "syncast_refresh_window_seconds{quantile=\"0.99\"}",
        "syncast_refresh_window_seconds_count",
        "syncast_streaming_clients",
        "syncast_chat_members",
        "syncast_thread_panics_total",
        "syncast_threads_live{role=\"dispatcher\"}",
        "syncast_rejected_total{reason=\"max-clients\"}",
    ] {
        get(kept);
    }

    // A scraper asking for OpenMetrics (as Prometheus does) gets it.
    let om = s.request_with(
        "GET",
        "/metrics",
        None,
        &[(
            "Accept",
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
        )],
    );
    assert_eq!(
        om.header("Content-Type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    assert!(om.body.ends_with("# EOF\n"), "{}", om.body);
    assert!(om.body.contains("# TYPE syncast_chat_messages counter\n"));
    assert!(
        om.body.contains("syncast_chat_messages_total 5\n"),
        "{}",
        om.body
    );
    drop(alarm);
}
