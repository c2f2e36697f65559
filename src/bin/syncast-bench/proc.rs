//! The server under test as a child process: start, read its figures from `/proc/<pid>`, stop;
//! and a tiny blocking HTTP client for the few plain requests the bench makes.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use syncast::kit::http::{self, Target};
use syncast::kit::proc::{self, Proc};
use syncast::kit::prom;

/// Time-out of the bench's plain requests (connect, write, read).
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

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
        let mut cmd = Command::new(bin);
        cmd.args(["--listen", "127.0.0.1:0", "--log-level", "warn", "--db"])
            .arg(&db)
            .args(extra)
            // For experiments only (e.g. `--heartbeat 60s`); `make bench` sets nothing here.
            .args(
                std::env::var("SYNCAST_BENCH_SERVER_ARGS")
                    .unwrap_or_default()
                    .split_whitespace(),
            );
        ServerProc::spawn(cmd, dir, &bin.display().to_string())
    }

    /// Starts this bench's own naive thread-per-connection server (`--naive-server MODE`, see
    /// naive.rs) on a free port; waits until it answers. Driven and measured like syncast.
    pub fn start_naive(mode: &str) -> Result<ServerProc, String> {
        let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
        let mut cmd = Command::new(&exe);
        cmd.args(["--naive-server", mode, "--listen", "127.0.0.1:0"]);
        let (dir, _) = temp_db();
        ServerProc::spawn(
            cmd,
            dir,
            &format!("{} --naive-server {mode}", exe.display()),
        )
    }

    fn spawn(mut cmd: Command, dir: PathBuf, what: &str) -> Result<ServerProc, String> {
        let t0 = Instant::now();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {what}: {e}"))?;
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
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{what} did not answer within 10 s"));
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

    /// A sample from `/metrics` (`name` with its labels, if any).
    pub fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = http(self.addr, "GET", "/metrics", None, None).ok()?;
        prom::sample(&body, name)
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
    let status = proc::status(Proc::Pid(pid));
    Sample {
        rss: status.rss_bytes,
        threads: status.threads,
        cpu: proc::cpu_seconds(Proc::Pid(pid)),
    }
}

/// The server's default stack for a stream thread (`Config::stream_stack`): the size of the
/// stack mappings [`stack_resident`] looks for.
pub const STREAM_STACK: u64 = 64 * 1024;

/// Stream thread stacks of `pid` and their mean resident KiB: private writable anonymous
/// mappings of exactly `size` bytes right above a guard page (`---p`), which is how glibc lays
/// out a thread's stack. Shows where a member's memory is: a parked stream should keep two
/// stack pages (8 KiB: the thread's descriptor and its loop), not three.
pub fn stack_resident(pid: u32, size: u64) -> Option<(usize, f64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let (mut count, mut kib) = (0usize, 0u64);
    let (mut guard_below, mut in_stack) = (false, false);
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let (Some(range), Some(perms)) = (parts.next(), parts.next()) else {
            continue;
        };
        if let Some((a, b)) = range.split_once('-') {
            if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                // A mapping's first line: "start-end perms offset dev inode [path]".
                let anon = parts.nth(2).is_some() && parts.next().is_none();
                in_stack = guard_below && anon && perms == "rw-p" && b - a == size;
                guard_below = perms == "---p";
                count += usize::from(in_stack);
                continue;
            }
        }
        if in_stack && range == "Rss:" {
            kib += perms.parse::<u64>().unwrap_or(0);
        }
    }
    (count > 0).then(|| (count, kib as f64 / count as f64))
}

/// One HTTP/1.1 request with `Connection: close`; returns status and body.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    bearer: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let auth = bearer.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    let body = body.unwrap_or("").as_bytes();
    let r = http::request(
        &Target::of(addr),
        method,
        path,
        &headers,
        body,
        HTTP_TIMEOUT,
    )
    .map_err(std::io::Error::other)?;
    Ok((r.status, String::from_utf8_lossy(&r.body).into_owned()))
}
