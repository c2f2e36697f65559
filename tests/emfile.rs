//! Running out of file descriptors must not stop the server accepting for good. Alone in its
//! own test binary: it starves a child server of descriptors on purpose, and it is timing-
//! sensitive enough that the 1,000-client tests in tests/binary.rs must not run beside it.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::wait_for;

fn syncast() -> Command {
    Command::new(env!("CARGO_BIN_EXE_syncast"))
}

/// Kills the child if the test fails half-way, so no server outlives its test.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn running_out_of_file_descriptors_does_not_stop_accepting_for_good() {
    use std::os::unix::process::CommandExt;
    let dir = std::env::temp_dir().join(common::unique("syncast-emfile-"));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("server.log");
    let mut cmd = syncast();
    cmd.args(["--listen", "127.0.0.1:0", "--header-timeout", "60s"])
        .arg("--db")
        .arg(dir.join("a.db"))
        .arg("--log-file")
        .arg(&log)
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
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
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let addr: std::net::SocketAddr = first
        .trim()
        .rsplit("http://")
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // Each connection costs the server two descriptors (tiny_http dups it): 64 run out fast.
    let hogs: Vec<std::net::TcpStream> = (0..80)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    // Hold the fault for a while (this is the fault's duration, not a wait for an event):
    // tiny_http's accept thread meets EMFILE and dies during it.
    std::thread::sleep(std::time::Duration::from_secs(2));
    drop(hogs);
    // Once descriptors are free again, the server accepts and answers.
    // Connections may still be reset while the server recovers: try until one is served.
    let answer = common::wait_for_within(Duration::from_secs(60), "a served request", || {
        use std::io::{Read, Write};
        let mut sock = std::net::TcpStream::connect(addr).ok()?;
        sock.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .ok()?;
        sock.write_all(
            b"GET /alarms/after-emfile HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .ok()?;
        let mut text = String::new();
        sock.read_to_string(&mut text).ok()?;
        text.starts_with("HTTP/1.1 200").then_some(text)
    });
    assert!(
        answer.ends_with(r#"{"alarm":false,"id":"after-emfile"}"#),
        "{answer}"
    );
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let exit = wait_for("exit", || child.try_wait().unwrap());
    assert_eq!(exit.code(), Some(0));
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("accept loop failed"), "{log}");
    assert!(!log.contains("thread panicked"), "{log}");
}
