//! A `redis-server` of one's own, for tests and the bench: started on a free loopback port, in a
//! fresh folder, with no persistence (`--save "" --appendonly no`), never a system instance;
//! stopped by its pid when the guard is dropped (also when a test panics), after a `SIGCONT` so
//! a frozen one dies too.
//!
//! ```no_run
//! let redis = syncast::kit::redis_server::RedisServer::start().unwrap();
//! println!("{}", redis.url()); // redis://127.0.0.1:PORT/0
//! redis.freeze();              // SIGSTOP: connections open, nothing answered
//! redis.thaw();                // SIGCONT
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a fresh server may take to answer `PING` (generous: a loaded machine).
const READY_WITHIN: Duration = Duration::from_secs(20);

/// The `redis-server` program: `$REDIS_SERVER` if set, else `redis-server` on `PATH`;
/// `None` if there is none.
pub fn program() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("REDIS_SERVER") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("redis-server"))
        .find(|p| p.is_file())
}

/// A running `redis-server` this process started; stopped (SIGCONT, then SIGKILL by its pid,
/// then reaped) and its folder removed when dropped.
pub struct RedisServer {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
    program: PathBuf,
    /// Reaped: its pid may belong to another process now, so no signal is sent any more.
    reaped: bool,
}

impl RedisServer {
    /// Starts one on a free port of 127.0.0.1 and waits until it answers `PING`. `Err` says
    /// why (no `redis-server`, it would not start).
    pub fn start() -> Result<RedisServer, String> {
        let program = program().ok_or_else(|| {
            "redis-server not found (Debian package redis-server; or set REDIS_SERVER)".to_string()
        })?;
        let mut last = String::new();
        // The free port is found by binding port 0 and letting go: another process may take it
        // in between, so a start that fails is tried again on another port.
        for _ in 0..5 {
            let port = free_port().map_err(|e| format!("no free port: {e}"))?;
            match RedisServer::start_on(&program, port) {
                Ok(s) => return Ok(s),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Starts one that speaks only TLS, on a free port of 127.0.0.1, with a certificate for
    /// `127.0.0.1` signed by a CA made for it (`openssl`, which must be installed): clients
    /// trust [`RedisServer::ca_file`] (`SSL_CERT_FILE` for syncast). Its URL is
    /// [`RedisServer::tls_url`].
    pub fn start_tls() -> Result<RedisServer, String> {
        let program = program().ok_or("redis-server not found")?;
        let port = free_port().map_err(|e| format!("no free port: {e}"))?;
        RedisServer::launch(&program, port, true)
    }

    /// Starts one on `port` of 127.0.0.1 (for a test that restarts Redis at the same address).
    pub fn start_on(program: &Path, port: u16) -> Result<RedisServer, String> {
        RedisServer::launch(program, port, false)
    }

    fn launch(program: &Path, port: u16, tls: bool) -> Result<RedisServer, String> {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "syncast-redis-{}-{}-{port}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut cmd = Command::new(program);
        // SAFETY: prctl(2) only, between fork and exec. The server dies with the thread that
        // started it even if this process is killed before the guard's drop runs, so no
        // redis-server outlives a test run (start it on the thread that holds the guard).
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        if tls {
            make_certificates(&dir)?;
            let file = |name: &str| dir.join(name).display().to_string();
            cmd.args(["--port", "0", "--tls-port", &port.to_string()])
                .args(["--tls-cert-file", &file("server.crt")])
                .args(["--tls-key-file", &file("server.key")])
                .args(["--tls-ca-cert-file", &file("ca.crt")])
                .args(["--tls-auth-clients", "no"]);
        } else {
            cmd.args(["--port", &port.to_string()]);
        }
        let child = cmd
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--protected-mode", "yes"])
            .arg("--dir")
            .arg(&dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
        let mut server = RedisServer {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir,
            program: program.to_path_buf(),
            reaped: false,
        };
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            // A TLS server cannot be pinged in plain text: it is ready once it listens.
            let ready = if tls {
                TcpStream::connect_timeout(&server.addr, Duration::from_secs(1)).is_ok()
            } else {
                server.ping()
            };
            if ready {
                return Ok(server);
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                server.reaped = true;
                return Err(format!(
                    "redis-server on port {port} exited ({status}): {}",
                    server.log().lines().last().unwrap_or("")
                ));
            }
            if Instant::now() > deadline {
                return Err(format!("redis-server on port {port} did not answer PING"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }

    /// `rediss://127.0.0.1:PORT/0`, for one started with [`RedisServer::start_tls`].
    pub fn tls_url(&self) -> String {
        format!("rediss://{}/0", self.addr)
    }

    /// The CA certificate that signed a TLS server's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The program it runs (to start another on the same port).
    pub fn program(&self) -> PathBuf {
        self.program.clone()
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its log file's text so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }

    /// Whether it answers `PING` with `+PONG` now (within a second).
    pub fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    /// `SIGSTOP`: the process stays, its sockets accept (the kernel's backlog), nothing is
    /// answered: a frozen Redis.
    pub fn freeze(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// `SIGCONT`: it answers again.
    pub fn thaw(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, sig: i32) {
        if !self.reaped {
            // SAFETY: kill(2) on our own child, not reaped yet, so the pid is still its own.
            unsafe { libc::kill(self.child.id() as i32, sig) };
        }
    }

    /// Kills it now (SIGKILL by its pid) and reaps it.
    pub fn kill(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if !self.reaped {
            self.thaw();
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.reaped = true;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port of 127.0.0.1 that was free a moment ago.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A CA and a server certificate for 127.0.0.1 signed by it, in `dir` (`ca.crt`, `server.crt`,
/// `server.key`), made with `openssl`; P-256 keys, valid two days.
fn make_certificates(dir: &Path) -> Result<(), String> {
    let openssl = |args: &[&str]| -> Result<(), String> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run openssl: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "openssl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    };
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n")
        .map_err(|e| e.to_string())?;
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.crt", "-days", "2"]);
    ca.extend(["-subj", "/CN=syncast test CA"]);
    openssl(&ca)?;
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend(["-keyout", "server.key", "-out", "server.csr"]);
    csr.extend(["-subj", "/CN=127.0.0.1"]);
    openssl(&csr)?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ])
}
