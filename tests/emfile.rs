//! Running out of file descriptors must not stop the server accepting for good. Alone in its
//! own test binary: it starves a child server of descriptors on purpose, and it is timing-
//! sensitive enough that the 1,000-client tests in tests/binary.rs must not run beside it.
//!
//! It used to fail on a loaded machine (about 2 full suites in 6): the 80 connections arrive
//! the moment the server prints its address, and tiny_http's accept thread could die (a failed
//! `dup`, src/util/refined_tcp_stream.rs) before the dispatcher thread had first run and read
//! the panic count it compares against, so the death was never noticed. A restart that failed
//! (no descriptor to clone the listener) was also never retried. src/http/accept.rs fixes both.

mod common;

use std::time::Duration;

use common::{listen_addr, raw_get, syncast_bin, wait_for, KillOnDrop};

#[test]
fn running_out_of_file_descriptors_does_not_stop_accepting_for_good() {
    use std::os::unix::process::CommandExt;
    let run = common::RunDir::new("syncast-emfile-");
    let mut cmd = syncast_bin();
    cmd.args(["--listen", "127.0.0.1:0", "--header-timeout", "60s"]);
    run.server_args(&mut cmd);
    // SAFETY: setrlimit is async-signal-safe; it only lowers this child's own limit.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 64,
                rlim_max: 64,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = KillOnDrop(cmd.spawn().unwrap());
    let child = &mut child.0;
    let addr = listen_addr(child);
    // Each connection costs the server two descriptors (tiny_http dups it): 64 run out fast.
    let hogs: Vec<std::net::TcpStream> = (0..80)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    // Wait until the server has actually run out: its descriptors near the limit of 64.
    let fd_dir = format!("/proc/{}/fd", child.id());
    wait_for("the server out of descriptors", || {
        (std::fs::read_dir(&fd_dir).ok()?.count() >= 56).then_some(())
    });
    drop(hogs);
    // Once descriptors are free again, the server accepts and answers.
    // Connections may still be reset while the server recovers: try until one is served.
    let answer = common::wait_for_within(Duration::from_secs(60), "a served request", || {
        raw_get(addr, "/alarms/after-emfile", Duration::from_secs(2))
            .filter(|t| t.starts_with("HTTP/1.1 200"))
    });
    assert!(
        answer.ends_with(r#"{"alarm":false,"id":"after-emfile"}"#),
        "{answer}"
    );
    common::sigterm(child);
    let exit = wait_for("exit", || child.try_wait().unwrap());
    assert_eq!(exit.code(), Some(0));
    let log = std::fs::read_to_string(&run.log).unwrap();
    assert!(log.contains("accept loop failed"), "{log}");
    assert!(!log.contains("thread panicked"), "{log}");
}
