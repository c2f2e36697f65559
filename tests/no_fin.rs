//! A client that vanishes without a FIN or RST (power cut, cable pulled, NAT state lost) must be
//! found within a bounded time, by the kernel's `TCP_USER_TIMEOUT` (`--tcp-user-timeout`).
//!
//! The real binary runs (through `ip netns exec`) in a network namespace this test creates, the
//! client in a second one, joined by a veth pair: the host's own network is never touched, and
//! the server listens on the veth address only inside that private namespace (every other test
//! listens on 127.0.0.1). Once the stream runs, a blackhole route in the client's namespace
//! drops everything the client sends to the server: the server's heartbeats leave and are never
//! acknowledged, exactly as if the client had vanished. Both namespaces (and with them the veth
//! pair) are deleted when the test ends, also when it fails.
//!
//! Needs root and iproute2 (`make test` installs it under CI): `#[ignore]`d, so `cargo test` lists
//! it as ignored, and `make test` runs it as root; run then without them, it fails
//! (`common::root`).

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use common::{
    listen_addr, metric_in, raw_get, root, run_cmd, syncast_bin, wait_for_within, KillOnDrop,
};

/// Inside the private namespaces only, so the same addresses in parallel runs never meet.
const SERVER_IP: &str = "10.77.0.2";
const CLIENT_IP: &str = "10.77.0.1";

/// A server and a client network namespace joined by a veth pair; deleted on drop.
struct Namespaces {
    server: String,
    client: String,
}

impl Namespaces {
    fn create() -> Result<Namespaces, String> {
        root::need_root()?;
        let tag = common::unique("").replace('x', "n");
        let ns = Namespaces {
            server: format!("syncast-nofin-{tag}-s"),
            client: format!("syncast-nofin-{tag}-c"),
        };
        // Interface names have at most 15 bytes.
        let (vs, vc) = (format!("sx{tag}s"), format!("sx{tag}c"));
        let (s, c) = (ns.server.as_str(), ns.client.as_str());
        run_cmd("ip", &["netns", "add", s])?;
        run_cmd("ip", &["netns", "add", c])?;
        #[rustfmt::skip]
        run_cmd("ip", &["link", "add", &vs, "netns", s, "type", "veth", "peer", "name", &vc, "netns", c])?;
        run_cmd(
            "ip",
            &[
                "-n",
                s,
                "addr",
                "add",
                &format!("{SERVER_IP}/30"),
                "dev",
                &vs,
            ],
        )?;
        run_cmd(
            "ip",
            &[
                "-n",
                c,
                "addr",
                "add",
                &format!("{CLIENT_IP}/30"),
                "dev",
                &vc,
            ],
        )?;
        run_cmd("ip", &["-n", s, "link", "set", &vs, "up"])?;
        // The server's namespace reaches its own address through `lo` (for /metrics).
        run_cmd("ip", &["-n", s, "link", "set", "lo", "up"])?;
        run_cmd("ip", &["-n", c, "link", "set", &vc, "up"])?;
        Ok(ns)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth end inside it, and with it the pair.
        for ns in [&self.server, &self.client] {
            if let Err(e) = run_cmd("ip", &["netns", "del", ns]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

/// Runs `f` on a new thread moved into network namespace `ns` (setns affects only the calling
/// thread); sockets it creates stay in that namespace and can be used from any thread.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: moves only this fresh thread into the namespace the open file refers to.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("thread in namespace")
}

/// Starts the real binary inside `ns`'s server namespace (through `ip netns exec`, which execs
/// it in place, so the child is the server itself) on the veth address with `args`; not a
/// loopback address, so without a key it needs `--insecure`: the namespace is private.
fn server_in(ns: &Namespaces, run: &common::RunDir, args: &[&str]) -> (KillOnDrop, SocketAddr) {
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["netns", "exec", &ns.server])
        .arg(syncast_bin().get_program())
        .args(["--listen", &format!("{SERVER_IP}:0"), "--insecure"])
        .args(args);
    run.server_args(&mut cmd);
    let mut child = KillOnDrop(cmd.spawn().expect("ip netns exec"));
    let addr: SocketAddr = listen_addr(&mut child.0);
    (child, addr)
}

/// From now on everything the client sends to the server is dropped: to the server, the client
/// has vanished without a FIN or RST.
fn black_hole(ns: &Namespaces) {
    let to = format!("{SERVER_IP}/32");
    run_cmd("ip", &["-n", &ns.client, "route", "add", "blackhole", &to]).expect("blackhole route");
}

#[test]
#[ignore = "needs root: network namespaces (iproute2); `make test` runs it as root"]
fn a_client_that_vanishes_without_fin_is_dropped_after_the_tcp_user_timeout() {
    let test = "a_client_that_vanishes_without_fin_is_dropped_after_the_tcp_user_timeout";
    let ns = match Namespaces::create() {
        Ok(ns) => ns,
        Err(why) => root::cannot_run(test, &why),
    };
    let run = common::RunDir::new("syncast-nofin-");
    // A heartbeat every 500 ms keeps data in flight, as a real stream's 15 s heartbeat does
    // (so keepalive, which probes only idle sockets, never fires): only the user time-out can
    // end the connection soon. Without it the kernel retransmits for about 15 minutes.
    let (child, addr) = server_in(
        &ns,
        &run,
        &["--heartbeat", "500ms", "--tcp-user-timeout", "2s"],
    );

    let sock = in_netns(&ns.client, move || {
        let mut sock = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).expect("connect");
        let rq = format!("GET /sse/call/nofin?mode=change HTTP/1.1\r\nHost: {addr}\r\n\r\n");
        sock.write_all(rq.as_bytes()).unwrap();
        sock
    });
    sock.set_read_timeout(Some(common::PATIENCE)).unwrap();
    let mut sse = common::Sse::read_head(sock);
    assert_eq!(sse.status, 200);
    assert_eq!(sse.next_data(), r#"{"alarm":false}"#);
    // One heartbeat arrived: the stream is set up (socket options included).
    assert!(matches!(sse.next_item(), Some(common::Item::Comment(_))));

    black_hole(&ns);
    let vanished = Instant::now();
    // Bounded well below what would end it otherwise: keepalive needs the socket idle (it never
    // is), and retransmission gives up after ~15 minutes.
    let line = wait_for_within(Duration::from_secs(30), "the stream closed", || {
        run.log_text()
            .lines()
            .find(|l| l.contains("sse stream closed id=nofin"))
            .map(str::to_string)
    });
    assert!(line.contains("reason=client-gone"), "{line}");
    eprintln!(
        "stream closed {:?} after the client vanished",
        vanished.elapsed()
    );

    let metrics = in_netns(&ns.server, move || {
        raw_get(addr, "/metrics", common::PATIENCE).expect("metrics")
    });
    assert_eq!(metric_in(&metrics, "syncast_streaming_clients"), Some(0.0));
    assert_eq!(
        metric_in(&metrics, "syncast_streams_stalled_total"),
        Some(0.0)
    );
    // The server goes on: a new client (from the server's own namespace) is served.
    let served = in_netns(&ns.server, move || {
        raw_get(addr, "/healthz", common::PATIENCE).expect("healthz")
    });
    assert!(served.starts_with("HTTP/1.1 200"), "{served}");
    drop(child);
    drop(ns);
    let _ = std::fs::remove_dir_all(&run.dir);
}

#[test]
#[ignore = "needs root: network namespaces (iproute2); `make test` runs it as root"]
fn a_tcp_chat_member_that_vanishes_from_an_idle_room_is_dropped_by_keepalive() {
    use std::io::{BufRead, BufReader};
    let test = "a_tcp_chat_member_that_vanishes_from_an_idle_room_is_dropped_by_keepalive";
    let ns = match Namespaces::create() {
        Ok(ns) => ns,
        Err(why) => root::cannot_run(test, &why),
    };
    let run = common::RunDir::new("syncast-nofin-tcp-");
    // Nothing is written to a TCP member of an idle room (no keepalive line: an `nc` user would
    // see it), so only the kernel's keepalive, probing after --heartbeat of silence, can find a
    // member that vanished; --tcp-user-timeout then bounds the wait for the probe's answer.
    let tcp_at = format!("{SERVER_IP}:0");
    let (child, addr) = server_in(
        &ns,
        &run,
        &[
            "--chat-tcp",
            &tcp_at,
            "--heartbeat",
            "1s",
            "--tcp-user-timeout",
            "2s",
        ],
    );
    let tcp: SocketAddr = wait_for_within(common::PATIENCE, "the chat tcp listener", || {
        run.log_text()
            .lines()
            .find_map(|l| l.split("chat tcp listening addr=").nth(1))
            .and_then(|a| a.trim().parse().ok())
    });

    let sock = in_netns(&ns.client, move || {
        TcpStream::connect_timeout(&tcp, Duration::from_secs(10)).expect("connect")
    });
    sock.set_read_timeout(Some(common::PATIENCE)).unwrap();
    let mut lines = BufReader::new(sock.try_clone().unwrap());
    let mut line = String::new();
    lines.read_line(&mut line).unwrap();
    assert!(line.starts_with("* "), "greeting: {line:?}");
    (&sock).write_all(b"/name ghost\n").unwrap();
    line.clear();
    lines.read_line(&mut line).unwrap();
    assert!(line.starts_with("* ") && line.contains("ghost"), "{line:?}");

    black_hole(&ns);
    let vanished = Instant::now();
    // Without keepalive the idle member would stay for good (nothing is ever in flight).
    let closed = wait_for_within(Duration::from_secs(30), "the member closed", || {
        run.log_text()
            .lines()
            .find(|l| l.contains("chat tcp closed") && l.contains("name=ghost"))
            .map(str::to_string)
    });
    assert!(closed.contains("reason=client-gone"), "{closed}");
    eprintln!(
        "member closed {:?} after the client vanished",
        vanished.elapsed()
    );
    let left = run.log_text();
    assert!(
        left.lines()
            .any(|l| l.contains("chat left") && l.contains("ghost")),
        "its session ended: {left}"
    );
    let metrics = in_netns(&ns.server, move || {
        raw_get(addr, "/metrics", common::PATIENCE).expect("metrics")
    });
    assert_eq!(metric_in(&metrics, "syncast_streaming_clients"), Some(0.0));
    drop(child);
    drop(ns);
    let _ = std::fs::remove_dir_all(&run.dir);
}
