//! Shared test harness: a real server on port 0 with its own SQLite file, real HTTP clients (ureq,
//! and the client kit's raw-socket pieces), an SSE reader over a raw socket (the kit's parser), a
//! capturing logger, and waiting with deadlines (never sleeping as synchronisation).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use syncast::kit::{http, sse};
use syncast::{Config, Server};

pub mod auth;
pub mod raw;
pub mod redis;
pub mod root;

// Every test binary that includes this harness (tests/it and the separate ones) runs the server
// with the allocator the real binary uses (src/main.rs): a hostile declared body is drained into
// a lazy mapping (syncast::alloc), not an allocation that aborts the process.
#[global_allocator]
static ALLOC: syncast::alloc::LazyHuge = syncast::alloc::LazyHuge;

/// A generous upper bound used only as a time-out, never as an expected duration.
pub const PATIENCE: Duration = Duration::from_secs(20);

static LOGS: OnceLock<Mutex<Vec<String>>> = OnceLock::new();

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.target().starts_with("syncast")
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            let line = format!("[{}] {}", r.level(), r.args());
            LOGS.get_or_init(Default::default)
                .lock()
                .unwrap()
                .push(line);
        }
    }
    fn flush(&self) {}
}

/// Installs the capturing logger (once per test process).
pub fn capture_logs() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let _ = log::set_boxed_logger(Box::new(Capture));
        log::set_max_level(log::LevelFilter::Debug);
    });
}

/// Captured log lines containing every one of `parts`.
pub fn log_lines(parts: &[&str]) -> Vec<String> {
    LOGS.get_or_init(Default::default)
        .lock()
        .unwrap()
        .iter()
        .filter(|l| parts.iter().all(|p| l.contains(p)))
        .cloned()
        .collect()
}

/// Waits until a captured line contains every one of `parts`; panics after [`PATIENCE`].
pub fn wait_log(parts: &[&str]) -> String {
    wait_for(&format!("log line with {parts:?}"), || {
        log_lines(parts).into_iter().next()
    })
}

/// Polls `probe` until it returns `Some`, panicking with `what` after [`PATIENCE`].
pub fn wait_for<T>(what: &str, probe: impl FnMut() -> Option<T>) -> T {
    wait_for_within(PATIENCE, what, probe)
}

/// Like [`wait_for`] with another upper bound.
pub fn wait_for_within<T>(
    patience: Duration,
    what: &str,
    mut probe: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + patience;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A unique string for ids and names, so parallel tests never share state or log lines.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A running server with its own store in a temporary folder.
pub struct TestServer {
    /// The server (None once shut down).
    pub server: Option<Server>,
    /// Its address.
    pub addr: SocketAddr,
    /// Its SQLite file.
    pub db: PathBuf,
    /// With auth on, the admin token the ops helpers ([`TestServer::metric`], ...) send.
    pub admin_token: Option<String>,
}

/// Starts a server on 127.0.0.1:0 with a fresh store; `tweak` adjusts the config.
pub fn start(tweak: impl FnOnce(&mut Config)) -> TestServer {
    capture_logs();
    let dir = std::env::temp_dir().join(unique("syncast-test-"));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("alarms.db");
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        db: db.clone(),
        tick: Duration::from_millis(100),
        refresh: Duration::from_millis(50),
        heartbeat: Duration::from_millis(500),
        ..Config::default()
    };
    tweak(&mut config);
    let server = Server::start(config).expect("server starts");
    let addr = server.addr();
    TestServer {
        server: Some(server),
        addr,
        db,
        admin_token: None,
    }
}

/// Starts a server like [`start`] with auth on: HS256 with [`auth::SECRET`] (its file in a
/// fresh folder), and `tweak` after that.
pub fn start_secured(tweak: impl FnOnce(&mut Config)) -> TestServer {
    let secret = auth::secret_file(&auth::key_dir());
    let mut s = start(move |c| {
        c.jwt_secret_file = Some(secret);
        tweak(c);
    });
    s.admin_token = Some(auth::admin());
    s
}

impl TestServer {
    /// `http://addr` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Performs a request with a real HTTP client; returns status, body, and headers.
    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> Reply {
        self.request_with(method, path, body, &[])
    }

    /// Like [`TestServer::request`] with extra headers.
    pub fn request_with(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(PATIENCE))
            .build()
            .into();
        let url = self.url(path);
        let resp = match (method, body) {
            ("GET", _) => {
                let mut rq = agent.get(&url);
                for (k, v) in headers {
                    rq = rq.header(*k, *v);
                }
                rq.call()
            }
            ("DELETE", _) => {
                let mut rq = agent.delete(&url);
                for (k, v) in headers {
                    rq = rq.header(*k, *v);
                }
                rq.call()
            }
            (m, b) => {
                let mut rq = match m {
                    "PUT" => agent.put(&url),
                    "POST" => agent.post(&url),
                    "PATCH" => agent.patch(&url),
                    other => panic!("method {other} not supported by the harness"),
                };
                for (k, v) in headers {
                    rq = rq.header(*k, *v);
                }
                rq.send(b.unwrap_or(""))
            }
        }
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status().as_u16();
        let headers: Vec<(String, String)> = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        let body = resp.into_body().read_to_string().unwrap_or_default();
        Reply {
            status,
            body,
            headers,
        }
    }

    /// `GET path` with `Authorization: Bearer token`.
    pub fn get_with_token(&self, path: &str, token: &str) -> Reply {
        let (k, v) = auth::bearer(token);
        self.request_with("GET", path, None, &[(k, &v)])
    }

    /// `GET path` of an ops endpoint: with the admin token when auth is on.
    pub fn ops(&self, path: &str) -> Reply {
        match &self.admin_token {
            Some(t) => self.get_with_token(path, t),
            None => self.request("GET", path, None),
        }
    }

    /// GET a JSON document (an ops endpoint's, with the admin token when auth is on).
    pub fn json(&self, path: &str) -> serde_json::Value {
        let r = self.ops(path);
        serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{path}: {e}: {}", r.body))
    }

    /// One metric's value from `/metrics` (the line `name value`, labels included in `name`).
    pub fn metric(&self, name: &str) -> f64 {
        let text = self.ops("/metrics").body;
        metric_in(&text, name).unwrap_or_else(|| panic!("metric {name} missing"))
    }

    /// Refresher ticks so far, whether they ran the query or skipped it (nothing committed),
    /// from one `/metrics` read.
    pub fn refresher_ticks(&self) -> f64 {
        let text = self.ops("/metrics").body;
        ["syncast_refresh_total", "syncast_refresh_skipped_total"]
            .iter()
            .map(|name| metric_in(&text, name).unwrap_or_else(|| panic!("metric {name} missing")))
            .sum()
    }

    /// Live threads of `role` this server spawned, from `/debug/threads`.
    pub fn threads_of(&self, role: &str) -> u64 {
        self.json("/debug/threads")["by_role"][role]
            .as_u64()
            .unwrap()
    }

    /// Opens an SSE stream on a raw socket.
    pub fn sse(&self, path: &str) -> Sse {
        Sse::open(self.addr, path, &[])
    }

    /// Shuts the server down; returns how many threads it joined.
    pub fn shutdown(&mut self) -> usize {
        self.server.take().map(|s| s.shutdown()).unwrap_or(0)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown();
        if let Some(dir) = self.db.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A finished HTTP exchange.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Body text.
    pub body: String,
    /// Headers (lower-case names).
    pub headers: Vec<(String, String)>,
}

impl Reply {
    /// A header value by (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// The `error` field of a JSON error body.
    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error field: {}", self.body))
            .to_string()
    }
}

/// One item read from an SSE stream (the kit's WHATWG parser): `Event { event, id, data }`
/// (`id` is the last event ID, which persists across events), `Comment(text after the colon)`,
/// `Retry(ms)`.
pub use syncast::kit::sse::Item;

/// An SSE client on a raw socket, parsing per the WHATWG rules.
pub struct Sse {
    /// HTTP status of the response.
    pub status: u16,
    /// Response head lines (the status line first).
    pub head: Vec<String>,
    reader: sse::Reader<BufReader<TcpStream>>,
}

impl Sse {
    /// Sends `GET path` with `headers` and reads the response head.
    pub fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Sse {
        let mut sock = http::connect(addr, PATIENCE).expect("connect");
        let mut h = vec![("Accept", "text/event-stream")];
        h.extend_from_slice(headers);
        let rq = http::request_bytes(&addr.to_string(), "GET", path, &h, b"");
        sock.write_all(&rq).unwrap();
        Sse::read_head(sock)
    }

    /// Reads the response head from a socket on which a request was written.
    pub fn read_head(sock: TcpStream) -> Sse {
        let mut reader = BufReader::new(sock);
        let head = http::read_head(&mut reader).expect("read head");
        Sse {
            status: head.status,
            head: head.lines,
            reader: sse::Reader::new(reader),
        }
    }

    /// A response header value.
    pub fn header(&self, name: &str) -> Option<String> {
        self.head().header(name).map(str::to_string)
    }

    fn head(&self) -> http::Head {
        http::Head {
            status: self.status,
            lines: self.head.clone(),
        }
    }

    /// The rest of the body (for error responses).
    pub fn body(mut self) -> String {
        let head = self.head();
        let body = http::read_body(self.reader.get_mut(), &head).unwrap();
        String::from_utf8_lossy(&body).to_string()
    }

    /// The next item, or `None` at end of stream.
    pub fn next_item(&mut self) -> Option<Item> {
        self.reader
            .next_item()
            .unwrap_or_else(|e| panic!("sse read: {e}"))
    }

    /// The next event (skipping comments and retry fields), or `None` at end of stream.
    pub fn next_event(&mut self) -> Option<(String, Option<String>, String)> {
        loop {
            match self.next_item()? {
                Item::Event { event, id, data } => return Some((event, id, data)),
                _ => continue,
            }
        }
    }

    /// The next event's data; panics at end of stream.
    pub fn next_data(&mut self) -> String {
        self.next_event().expect("an event before end of stream").2
    }

    /// The client side's own address (the server's peer address for this connection).
    pub fn local_addr(&self) -> SocketAddr {
        self.reader.get_ref().get_ref().local_addr().unwrap()
    }

    /// Sends FIN (`shutdown(SHUT_WR)`), as a closing browser tab or `curl` does, whatever is
    /// still unread: closing a socket with unread data sends RST instead.
    pub fn fin(&self) {
        let _ = self
            .reader
            .get_ref()
            .get_ref()
            .shutdown(std::net::Shutdown::Write);
    }

    /// Closes the connection with RST (`SO_LINGER` 0, then close), as a crashed client's
    /// kernel or a middlebox does.
    pub fn reset(self) {
        use std::os::fd::AsRawFd;
        let sock = self.reader.get_ref().get_ref();
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        let rc = set_socket_option(sock.as_raw_fd(), libc::SO_LINGER, &linger);
        assert_eq!(rc, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
        drop(self);
    }

    /// Sets how long a read may block.
    pub fn set_timeout(&self, d: Duration) {
        self.reader
            .get_ref()
            .get_ref()
            .set_read_timeout(Some(d))
            .unwrap();
    }
}

/// The real `syncast` binary, ready for arguments.
pub fn syncast_bin() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_syncast"))
}

/// A fresh folder for one run of the real binary: its store and its log file live there (left
/// in place afterwards, for reading after a failure).
pub struct RunDir {
    /// The folder.
    pub dir: PathBuf,
    /// The server's log file in it.
    pub log: PathBuf,
}

impl RunDir {
    /// A new folder under the temporary directory, named from `prefix`.
    pub fn new(prefix: &str) -> RunDir {
        let dir = std::env::temp_dir().join(unique(prefix));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("server.log");
        RunDir { dir, log }
    }

    /// Adds `--db DIR/a.db --log-file LOG` to `cmd`, stdin from nowhere and stdout piped (for
    /// [`listen_addr`]).
    pub fn server_args<'c>(
        &self,
        cmd: &'c mut std::process::Command,
    ) -> &'c mut std::process::Command {
        cmd.arg("--db")
            .arg(self.dir.join("a.db"))
            .arg("--log-file")
            .arg(&self.log)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
    }

    /// The log so far (empty if there is none yet).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Sends SIGTERM to `child`.
pub fn sigterm(child: &std::process::Child) {
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
}

/// Kills the child if the test fails half-way, so no server outlives its test.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads the `syncast listening on http://ADDR` line a freshly spawned binary prints first.
pub fn listen_addr(child: &mut std::process::Child) -> SocketAddr {
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("stdout piped"))
        .read_line(&mut first)
        .unwrap();
    first
        .trim()
        .rsplit("http://")
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {first:?}"))
}

/// The addresses in the first `n` lines a freshly spawned binary prints (`syncast listening on
/// http://ADDR`, then `syncast admin listening on http://ADDR` with `--admin-listen`).
pub fn listen_addrs(child: &mut std::process::Child, n: usize) -> Vec<SocketAddr> {
    let mut out = BufReader::new(child.stdout.take().expect("stdout piped"));
    (0..n)
        .map(|_| {
            let mut line = String::new();
            out.read_line(&mut line).unwrap();
            line.trim()
                .rsplit("http://")
                .next()
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("no address in {line:?}"))
        })
        .collect()
}

/// `GET path` on a fresh connection (`Connection: close`), the whole response as text, reading
/// for at most `patience`; `None` if anything fails (for servers that may be down or recovering).
pub fn raw_get(addr: SocketAddr, path: &str, patience: Duration) -> Option<String> {
    let mut sock = http::connect(addr, patience).ok()?;
    let rq = http::request_bytes("x", "GET", path, &[("Connection", "close")], b"");
    sock.write_all(&rq).ok()?;
    let mut text = String::new();
    sock.read_to_string(&mut text).ok()?;
    Some(text)
}

/// Runs `cmd` (a privileged helper such as `ip`), returning its stderr as the error.
pub fn run_cmd(program: &str, args: &[&str]) -> Result<(), String> {
    match std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!("cannot run {program}: {e}")),
    }
}

/// One metric's value in a `/metrics` text (the line `name value`, labels included in `name`).
pub use syncast::kit::prom::sample as metric_in;

/// A connection to `addr` whose receive buffer is then set to `bytes` (`SO_RCVBUF`; the kernel
/// doubles it): a client that stops reading fills the server's side sooner.
pub fn connect_with_receive_buffer(addr: SocketAddr, bytes: libc::c_int) -> std::net::TcpStream {
    use std::os::fd::AsRawFd;
    let sock = std::net::TcpStream::connect(addr).unwrap();
    set_socket_option(sock.as_raw_fd(), libc::SO_RCVBUF, &bytes);
    sock
}

/// `setsockopt(2)` at `SOL_SOCKET` level with `value` (a plain C struct or integer) on a socket
/// of ours; its return code.
pub fn set_socket_option<T>(fd: std::os::fd::RawFd, name: libc::c_int, value: &T) -> libc::c_int {
    // SAFETY: `value` is a valid `T` of the size passed; the socket is the caller's own.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            value as *const T as *const libc::c_void,
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    }
}
