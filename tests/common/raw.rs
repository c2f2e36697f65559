//! Raw-socket exchanges for the hostile-request tests: send bytes exactly as given, read every
//! byte the server sends back, and tell whether the server closed the connection.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use syncast::kit::proc::{status, Proc};

/// What came back on one connection.
#[derive(Debug)]
pub struct Exchange {
    /// Every byte received, lossily as text.
    pub text: String,
    /// The server closed the connection (EOF or reset) within the patience given.
    pub closed: bool,
}

impl Exchange {
    /// Status codes of the responses received, in order (a status line is `HTTP/1.x NNN`).
    pub fn statuses(&self) -> Vec<u16> {
        self.text
            .match_indices("HTTP/1.")
            .filter_map(|(i, _)| self.text.get(i + 9..i + 12)?.parse().ok())
            .collect()
    }

    /// The head (status line and headers) of the first response.
    pub fn head(&self) -> &str {
        self.text.split("\r\n\r\n").next().unwrap_or("")
    }

    /// The first response's header value by (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head().lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// The first response's body (the rest after its head; assumes one response).
    pub fn body(&self) -> &str {
        self.text.split_once("\r\n\r\n").map_or("", |(_, b)| b)
    }
}

/// Connects, writes `bytes`, then (if `half_close`) shuts the write side, and reads until the
/// server closes or `patience` passes.
pub fn exchange(addr: SocketAddr, bytes: &[u8], half_close: bool, patience: Duration) -> Exchange {
    let mut sock = TcpStream::connect(addr).expect("connect");
    // A write may fail if the server already refused and closed: what it sent is still read.
    let _ = sock.write_all(bytes);
    if half_close {
        let _ = sock.shutdown(Shutdown::Write);
    }
    read_all(&mut sock, patience)
}

/// Reads from `sock` until EOF, a reset, or `patience`.
pub fn read_all(sock: &mut TcpStream, patience: Duration) -> Exchange {
    let deadline = Instant::now() + patience;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break false;
        }
        sock.set_read_timeout(Some(left)).unwrap();
        match sock.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    Exchange {
        text: String::from_utf8_lossy(&got).into_owned(),
        closed,
    }
}

/// Reads one response head (up to the blank line), without waiting for the connection to end.
pub fn read_head(sock: &mut TcpStream, patience: Duration) -> String {
    let deadline = Instant::now() + patience;
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") && Instant::now() < deadline {
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        match sock.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => got.push(byte[0]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Resident set size of process `pid`, in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> u64 {
    status(Proc::Pid(pid)).rss_bytes / 1024
}

/// Threads of process `pid`.
pub fn threads(pid: u32) -> u64 {
    status(Proc::Pid(pid)).threads
}

/// Open descriptors of process `pid` (entries of `/proc/<pid>/fd`).
pub fn fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

/// Sends a request head declaring `length` bytes and `sent` of them, and keeps the connection.
/// One write: the server may answer and close as soon as it has the head, and a second write
/// would then fail.
pub fn declare(addr: SocketAddr, line: &str, length: &str, sent: &[u8]) -> TcpStream {
    let mut sock = TcpStream::connect(addr).unwrap();
    let mut bytes = format!("{line}\r\nHost: x\r\nContent-Length: {length}\r\n\r\n").into_bytes();
    bytes.extend_from_slice(sent);
    sock.write_all(&bytes).unwrap();
    sock
}
