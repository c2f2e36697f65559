//! The server under test as a child process: start, read its figures from `/proc/<pid>`, stop;
//! and a tiny blocking HTTP client for the few plain requests the bench makes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running release server with its own temporary store.
pub struct ServerProc {
    child: Child,
    /// Its address.
    pub addr: SocketAddr,
    dir: PathBuf,
    /// Time from spawn to the first answered request.
    pub ready_after: Duration,
}

/// RSS bytes, threads and CPU seconds (user+system) of a process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// Resident set size, bytes.
    pub rss: u64,
    /// Threads.
    pub threads: u64,
    /// utime + stime, seconds.
    pub cpu: f64,
}

static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A fresh temporary folder with a store path in it.
pub fn temp_db() -> (PathBuf, PathBuf) {
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("syncast-bench-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let db = dir.join("alarms.db");
    (dir, db)
}

impl ServerProc {
    /// Starts `bin` on a free port with `db` (in `dir`) and `extra` flags; waits until it answers.
    pub fn start(
        bin: &std::path::Path,
        dir: PathBuf,
        db: PathBuf,
        extra: &[&str],
    ) -> Result<ServerProc, String> {
        let t0 = Instant::now();
        let mut child = Command::new(bin)
            .args(["--listen", "127.0.0.1:0", "--log-level", "warn", "--db"])
            .arg(&db)
            .args(extra)
            // For experiments only (e.g. `--heartbeat 60s`); `make bench` sets nothing here.
            .args(
                std::env::var("SYNCAST_BENCH_SERVER_ARGS")
                    .unwrap_or_default()
                    .split_whitespace(),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        let addr: SocketAddr = line
            .trim()
            .rsplit("http://")
            .next()
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| format!("unexpected first line {line:?}"))?;
        let ready_after = loop {
            if let Ok((200, _)) = http(addr, "GET", "/healthz", None, None) {
                break t0.elapsed();
            }
            if t0.elapsed() > Duration::from_secs(10) {
                return Err("server did not answer within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        Ok(ServerProc {
            child,
            addr,
            dir,
            ready_after,
        })
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// RSS, threads and CPU now.
    pub fn sample(&self) -> Sample {
        sample(self.pid())
    }

    /// A gauge from `/metrics` (first sample whose line starts with `name`).
    pub fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = http(self.addr, "GET", "/metrics", None, None).ok()?;
        body.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    /// SIGTERM, wait (at most 10 s, then SIGKILL), remove the store.
    pub fn stop(mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// RSS, threads and CPU of `pid`.
pub fn sample(pid: u32) -> Sample {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may contain spaces) start at state; utime and stime are
    // fields 14 and 15 of the whole line.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Sample {
        rss: field("VmRSS:") * 1024,
        threads: field("Threads:"),
        cpu: (ticks(11) + ticks(12)) as f64 / hz,
    }
}

/// One HTTP/1.1 request with `Connection: close`; returns status and body.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    bearer: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_nodelay(true)?;
    let body = body.unwrap_or("");
    let mut rq = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = bearer {
        rq.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    rq.push_str("\r\n");
    rq.push_str(body);
    s.write_all(rq.as_bytes())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let text = String::from_utf8_lossy(&out);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    // tiny_http answers with chunked encoding when it does not know the length up front; the
    // bodies the bench reads are JSON objects, so take the object out of any chunk framing.
    let body = match (body.find('{'), body.rfind('}')) {
        (Some(a), Some(b)) if b > a && !path.starts_with("/metrics") => body[a..=b].to_string(),
        _ => body,
    };
    Ok((status, body))
}
