//! For the root-only tests. Each is marked `#[ignore = "needs root: …"]`, so a plain `cargo test`
//! lists it as ignored (never as passed); `make test` runs them explicitly (`-- --ignored`) when
//! it is root or under `CI=true` (docs/testing.md#what-needs-root). Once running, such a test that
//! cannot get what it needs fails through [`cannot_run`]: it never passes without having run.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Fails the running root-only test `test`, which cannot run because of `why`.
pub fn cannot_run(test: &str, why: &str) -> ! {
    panic!(
        "{test}: cannot run: {why}\n(a root-only test, run by `make test` as root: see \
         docs/testing.md#what-needs-root)"
    )
}

/// `Err` unless this process is root.
pub fn need_root() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    match unsafe { libc::geteuid() } {
        0 => Ok(()),
        uid => Err(format!("not running as root (uid {uid})")),
    }
}

/// A uid (also used as the gid) that no process on the machine runs as and that `/etc/passwd`
/// does not name, at or above `from`: for a server run as an unprivileged user of its own, the
/// way systemd's `DynamicUser=` does.
pub fn unused_uid(from: u32) -> Result<u32, String> {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let named: Vec<u32> = passwd
        .lines()
        .filter_map(|l| l.split(':').nth(2)?.parse().ok())
        .collect();
    let mut running = Vec::new();
    for entry in std::fs::read_dir("/proc").map_err(|e| format!("/proc: {e}"))? {
        let path = entry.map_err(|e| format!("/proc: {e}"))?.path();
        let Ok(status) = std::fs::read_to_string(path.join("status")) else {
            continue;
        };
        // `Uid:` real, effective, saved, filesystem.
        if let Some(ids) = status.lines().find_map(|l| l.strip_prefix("Uid:")) {
            running.extend(ids.split_whitespace().filter_map(|v| v.parse::<u32>().ok()));
        }
    }
    (from..from.saturating_add(1000))
        .find(|uid| !named.contains(uid) && !running.contains(uid))
        .ok_or_else(|| format!("no unused uid in {from}..{}", from.saturating_add(1000)))
}

/// `chown -R uid:uid dir` (one level deep is all the callers need: the folder and its files).
pub fn chown_tree(dir: &Path, uid: u32) -> Result<(), String> {
    let chown = |p: &Path| {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        match unsafe { libc::chown(c.as_ptr(), uid, uid) } {
            0 => Ok(()),
            _ => Err(format!(
                "chown {}: {}",
                p.display(),
                std::io::Error::last_os_error()
            )),
        }
    };
    chown(dir)?;
    for entry in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        chown(&entry.map_err(|e| e.to_string())?.path())?;
    }
    Ok(())
}

/// What a bounded command printed and how it ended.
#[derive(Debug)]
pub struct Output {
    /// Exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// Standard output and standard error, in that order.
    pub text: String,
}

/// Runs `program args` with no standard input, killed after `limit`; `Err` if it cannot start
/// or overruns.
pub fn run_bounded(program: &str, args: &[&str], limit: Duration) -> Result<Output, String> {
    let shown = format!("`{program} {}`", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    // Read both pipes on threads, so a full pipe never blocks the child.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{shown} took more than {limit:?}: killed"));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = out.join().unwrap() + &err.join().unwrap();
    Ok(Output {
        code: status.code(),
        text,
    })
}
