//! The OS refusing a new thread must cost a 503, never a panic or a dead server, and the server
//! must recover once threads are available again.
//!
//! The real binary is started, then capped at the number of threads it has, so no new thread can
//! start (`clone` fails with `EAGAIN`). Two things are refused then:
//! - syncast's own stream thread: the dispatcher answers 503 itself (src/admit.rs, `spawn_with`);
//! - tiny_http's threads: its accept thread panics in `thread::spawn` when its pool needs one
//!   more thread (src/util/task_pool.rs), so nothing is accepted until syncast notices and
//!   starts tiny_http again — which itself needs a thread, so it must keep trying.
//!
//! The same scenario runs under two caps, each its own test:
//! - `pids_cgroup`: a pids cgroup this test creates, `pids.max` at the server's thread count (what
//!   systemd's `TasksMax=` sets). On a cgroup v2 hierarchy (a child group of a group whose
//!   `cgroup.subtree_control` has `pids`, enabled there if need be) or, if v2 has no pids
//!   controller, on the v1 pids hierarchy. Which one is found from `/proc/self/mountinfo` and
//!   `/proc/self/cgroup` ([`plan`], unit-tested below against other machines' layouts).
//! - `rlimit_nproc`: the server runs as a uid nothing else runs as, with `RLIMIT_NPROC` (tasks per
//!   real uid) lowered to its thread count by `prlimit`. No cgroup at all, so it runs on any
//!   Linux; root is exempt from that limit, hence the other uid.
//!
//! Both need root: `#[ignore]`d, so `cargo test` lists them as ignored; `make test` runs them as
//! root, and run then without what they need, they fail. What they create (the group, the
//! folder) is removed when they end, also when they fail.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{
    listen_addr, metric_in, raw_get, root, syncast_bin, wait_for, wait_for_within, KillOnDrop,
};

/// Where a pids cgroup for the test can be made.
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    /// A child of `parent` on the v2 hierarchy; `enable`: `+pids` must first be written to the
    /// parent's `cgroup.subtree_control` (and `-pids` when done).
    V2 { parent: PathBuf, enable: bool },
    /// A child of the v1 pids hierarchy's root, `parent`.
    V1 { parent: PathBuf },
}

/// One line of `/proc/self/mountinfo`, the fields [`plan`] needs.
#[derive(Debug)]
struct Mount {
    /// The mounted directory of the filesystem (for cgroups: the cgroup shown at `point`).
    root: String,
    point: PathBuf,
    fstype: String,
    super_options: String,
}

/// `/proc/self/mountinfo` (proc(5)): `id parent maj:min root point options [optional…] - fstype
/// source super-options`; octal escapes (`\040`) in paths undone.
fn parse_mountinfo(text: &str) -> Vec<Mount> {
    fn unescape(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            let octal =
                b.len() >= i + 4 && b[i] == b'\\' && b[i + 1..i + 4].iter().all(u8::is_ascii_digit);
            if octal {
                let v = std::str::from_utf8(&b[i + 1..i + 4]).ok();
                if let Some(v) = v.and_then(|v| u8::from_str_radix(v, 8).ok()) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
            out.push(b[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            Some(Mount {
                root: unescape(left.get(3)?),
                point: PathBuf::from(unescape(left.get(4)?)),
                fstype: right.first()?.to_string(),
                super_options: right.get(2).unwrap_or(&"").to_string(),
            })
        })
        .collect()
}

/// Whether the space-separated `list` (a `cgroup.controllers` or `cgroup.subtree_control`) has
/// `word`.
fn has_word(list: Option<String>, word: &str) -> bool {
    list.is_some_and(|l| l.split_whitespace().any(|w| w == word))
}

/// Where to make the group, from the mount table, this process's `/proc/self/cgroup` and `read`
/// (a cgroup file's contents, `None` if unreadable). cgroup v2 first: the topmost group from
/// the hierarchy's root down to this process's own whose `cgroup.subtree_control` has `pids`
/// (its children get the controller); failing that, the topmost whose `cgroup.controllers`
/// offers `pids`, to enable it there. Then cgroup v1: the root of the hierarchy mounted with
/// the `pids` option.
fn plan(
    mountinfo: &str,
    proc_cgroup: &str,
    read: &dyn Fn(&Path) -> Option<String>,
) -> Result<Plan, String> {
    let mounts = parse_mountinfo(mountinfo);
    let v2 = (|| {
        let mount = mounts
            .iter()
            .find(|m| m.fstype == "cgroup2")
            .ok_or("no cgroup2 filesystem mounted")?;
        let own = proc_cgroup
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .ok_or("no cgroup v2 line (0::) in /proc/self/cgroup")?;
        let root = mount.root.trim_end_matches('/');
        let rel = own
            .strip_prefix(root)
            .filter(|r| r.is_empty() || r.starts_with('/'))
            .ok_or_else(|| format!("own cgroup {own} is outside the cgroup2 mount ({root})"))?;
        let mut chain = vec![mount.point.clone()];
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            let next = chain.last().unwrap().join(part);
            chain.push(next);
        }
        if let Some(dir) = chain
            .iter()
            .find(|d| has_word(read(&d.join("cgroup.subtree_control")), "pids"))
        {
            return Ok(Plan::V2 {
                parent: dir.clone(),
                enable: false,
            });
        }
        if let Some(dir) = chain
            .iter()
            .find(|d| has_word(read(&d.join("cgroup.controllers")), "pids"))
        {
            return Ok(Plan::V2 {
                parent: dir.clone(),
                enable: true,
            });
        }
        Err(format!(
            "the cgroup2 hierarchy at {} offers no pids controller (cgroup.controllers: {:?})",
            mount.point.display(),
            read(&mount.point.join("cgroup.controllers"))
                .unwrap_or_default()
                .trim()
        ))
    })();
    let v2_why = match v2 {
        Ok(plan) => return Ok(plan),
        Err(why) => why,
    };
    mounts
        .iter()
        .find(|m| m.fstype == "cgroup" && m.super_options.split(',').any(|o| o == "pids"))
        .map(|m| Plan::V1 {
            parent: m.point.clone(),
        })
        .ok_or_else(|| format!("{v2_why}; and no cgroup v1 pids hierarchy is mounted"))
}

/// The file operations a [`PidsGroup`] makes: the kernel's cgroup files for real, a recording
/// fake in the unit tests.
trait CgroupFs {
    fn read(&self, path: &Path) -> std::io::Result<String>;
    fn write(&self, path: &Path, value: &str) -> std::io::Result<()>;
    fn mkdir(&self, path: &Path) -> std::io::Result<()>;
    fn rmdir(&self, path: &Path) -> std::io::Result<()>;
}

struct RealFs;

impl CgroupFs for RealFs {
    fn read(&self, path: &Path) -> std::io::Result<String> {
        std::fs::read_to_string(path)
    }
    fn write(&self, path: &Path, value: &str) -> std::io::Result<()> {
        std::fs::write(path, value)
    }
    fn mkdir(&self, path: &Path) -> std::io::Result<()> {
        std::fs::create_dir(path)
    }
    fn rmdir(&self, path: &Path) -> std::io::Result<()> {
        std::fs::remove_dir(path)
    }
}

/// A pids group, v1 or v2 (the same files: `cgroup.procs`, `pids.max`, `pids.current`). On drop
/// its processes are moved back to the parent, it is removed, and `+pids` is undone if this
/// group enabled it.
struct PidsGroup<F: CgroupFs> {
    fs: F,
    parent: PathBuf,
    dir: PathBuf,
    enabled: bool,
}

impl<F: CgroupFs> PidsGroup<F> {
    fn create(fs: F, plan: &Plan, name: &str) -> Result<PidsGroup<F>, String> {
        let (parent, enable) = match plan {
            Plan::V2 { parent, enable } => (parent.clone(), *enable),
            Plan::V1 { parent } => (parent.clone(), false),
        };
        let control = parent.join("cgroup.subtree_control");
        if enable {
            fs.write(&control, "+pids").map_err(|e| {
                format!(
                    "enabling pids in {}: {e} (a non-root group with processes in it cannot \
                     enable controllers for its children)",
                    control.display()
                )
            })?;
        }
        let dir = parent.join(name);
        if let Err(e) = fs.mkdir(&dir) {
            if enable {
                let _ = fs.write(&control, "-pids");
            }
            return Err(format!("mkdir {}: {e}", dir.display()));
        }
        let group = PidsGroup {
            fs,
            parent,
            dir,
            enabled: enable,
        };
        group.set_max("max")?;
        Ok(group)
    }

    fn write(&self, file: &str, value: &str) -> Result<(), String> {
        let path = self.dir.join(file);
        self.fs
            .write(&path, value)
            .map_err(|e| format!("{} <- {value}: {e}", path.display()))
    }

    /// Moves process `pid` (all its threads) into the group.
    fn admit(&self, pid: u32) -> Result<(), String> {
        self.write("cgroup.procs", &pid.to_string())
    }

    fn set_max(&self, value: &str) -> Result<(), String> {
        self.write("pids.max", value)
    }

    fn current(&self) -> Result<u64, String> {
        let path = self.dir.join("pids.current");
        let text = self
            .fs
            .read(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        text.trim()
            .parse()
            .map_err(|_| format!("{}: {text:?}", path.display()))
    }
}

impl<F: CgroupFs> Drop for PidsGroup<F> {
    fn drop(&mut self) {
        // The server is killed before this runs; move anything left so rmdir can succeed.
        if let Ok(procs) = self.fs.read(&self.dir.join("cgroup.procs")) {
            for pid in procs.split_whitespace() {
                let _ = self.fs.write(&self.parent.join("cgroup.procs"), pid);
            }
        }
        if let Err(e) = self.fs.rmdir(&self.dir) {
            eprintln!("cleanup: rmdir {}: {e}", self.dir.display());
        }
        if self.enabled {
            let control = self.parent.join("cgroup.subtree_control");
            if let Err(e) = self.fs.write(&control, "-pids") {
                eprintln!("cleanup: -pids in {}: {e}", control.display());
            }
        }
    }
}

/// How the scenario caps the server's threads.
trait Cap {
    /// The server, `pid`, has started: make it subject to the cap (still unlimited).
    fn attach(&mut self, pid: u32) -> Result<(), String>;
    /// No thread beyond those it has now.
    fn freeze(&self) -> Result<(), String>;
    /// Threads are free again.
    fn release(&self) -> Result<(), String>;
}

impl Cap for PidsGroup<RealFs> {
    fn attach(&mut self, pid: u32) -> Result<(), String> {
        self.admit(pid)
    }
    fn freeze(&self) -> Result<(), String> {
        self.set_max(&self.current()?.to_string())
    }
    fn release(&self) -> Result<(), String> {
        self.set_max("max")
    }
}

/// `RLIMIT_NPROC` of a server running as a uid of its own (tasks of that uid = its threads).
struct Nproc {
    uid: u32,
    pid: Option<u32>,
}

impl Nproc {
    /// Sets the server's soft limit (at most its hard one) from a helper process running as the
    /// same uid: `prlimit` on a process of one's own uid needs no capability, while root without
    /// `CAP_SYS_RESOURCE` (a container's root) may not touch another uid's limits.
    fn set_soft(&self, soft: libc::rlim_t) -> Result<(), String> {
        use std::os::unix::process::CommandExt;
        let pid = self.pid.ok_or("not attached")? as libc::pid_t;
        let uid = self.uid;
        let mut helper = Command::new("/bin/true");
        // SAFETY: only async-signal-safe system calls between fork and exec.
        unsafe {
            helper.pre_exec(move || {
                let fail = || Err(std::io::Error::last_os_error());
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(uid) != 0
                    || libc::setuid(uid) != 0
                {
                    return fail();
                }
                let mut old: libc::rlimit = std::mem::zeroed();
                if libc::prlimit(pid, libc::RLIMIT_NPROC, std::ptr::null(), &mut old) != 0 {
                    return fail();
                }
                let new = libc::rlimit {
                    rlim_cur: soft.min(old.rlim_max),
                    rlim_max: old.rlim_max,
                };
                if libc::prlimit(pid, libc::RLIMIT_NPROC, &new, std::ptr::null_mut()) != 0 {
                    return fail();
                }
                Ok(())
            });
        }
        match helper.status() {
            Ok(status) if status.success() => Ok(()),
            Ok(status) => Err(format!("prlimit helper: {status}")),
            Err(e) => Err(format!("prlimit as uid {uid} on {pid}: {e}")),
        }
    }
}

impl Cap for Nproc {
    fn attach(&mut self, pid: u32) -> Result<(), String> {
        self.pid = Some(pid);
        Ok(())
    }
    fn freeze(&self) -> Result<(), String> {
        let pid = self.pid.ok_or("not attached")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
        let threads: libc::rlim_t = status
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or("no Threads: line")?;
        self.set_soft(threads)
    }
    fn release(&self) -> Result<(), String> {
        self.set_soft(libc::RLIM_INFINITY)
    }
}

/// `GET path` (a stream) on a fresh connection: the status, then for a 200 the first event's
/// name and data (the stream kept open unless it was `refused`), else the body.
fn open_path(addr: SocketAddr, path: &str) -> (u16, String, Option<common::Sse>) {
    let mut sock = TcpStream::connect(addr).expect("connect");
    sock.set_read_timeout(Some(common::PATIENCE)).unwrap();
    let rq = format!("GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n");
    sock.write_all(rq.as_bytes()).unwrap();
    let mut sse = common::Sse::read_head(sock);
    match sse.status {
        200 => match sse.next_event() {
            Some((event, _, data)) if event == "refused" => (200, format!("refused {data}"), None),
            Some((event, _, data)) => (200, format!("{event} {data}"), Some(sse)),
            None => (200, "end of stream".into(), None),
        },
        status => (status, sse.body(), None),
    }
}

/// `GET /sse/call/{id}?mode=change`, as [`open_path`].
fn open_stream(addr: SocketAddr, id: &str) -> (u16, String, Option<common::Sse>) {
    open_path(addr, &format!("/sse/call/{id}?mode=change"))
}

/// A `PUT /alarms/{id}` whose body (over tiny_http's 1 KiB) needs a request thread: the status
/// and body of the answer.
fn put_on_a_request_thread(addr: SocketAddr, id: &str) -> (u16, String) {
    let mut sock = TcpStream::connect(addr).expect("connect");
    sock.set_read_timeout(Some(common::PATIENCE)).unwrap();
    let body = format!("{{\"alarm\":true,\"pad\":\"{}\"}}", "x".repeat(2000));
    let rq = format!(
        "PUT /alarms/{id} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    sock.write_all(rq.as_bytes()).unwrap();
    let mut text = String::new();
    let _ = sock.read_to_string(&mut text);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_string())
}

/// The scenario: `cmd` (the real binary, without `--listen`) is started, capped by `cap` once
/// its thread count is stable, refused threads, then freed.
fn refused_threads_then_recovery(mut cmd: Command, run: &common::RunDir, cap: &mut dyn Cap) {
    let log = || run.log_text();
    // A long header deadline: the idle connections of the second half must keep tiny_http's
    // pool threads busy, not be shut by the sweep.
    cmd.args(["--listen", "127.0.0.1:0", "--header-timeout", "120s"]);
    run.server_args(&mut cmd);
    let mut child = KillOnDrop(cmd.spawn().unwrap());
    let addr = listen_addr(&mut child.0);
    cap.attach(child.0.id()).unwrap();

    // Allow not one thread more. The count must be stable first: tiny_http's accept thread
    // spawns its pool (4 threads, never fewer) before it accepts anything, so once a request is
    // served the pool is complete. (Taken too early, on a loaded machine, the limit left the
    // pool unborn and nothing was ever served.)
    let served = raw_get(addr, "/healthz", common::PATIENCE).expect("healthz");
    assert!(served.starts_with("HTTP/1.1 200"), "{served}");
    cap.freeze().unwrap();

    // 1. syncast's own threads are refused, each answered by the dispatcher, counted, logged:
    // an alarm stream and a chat stream get a `refused` event (EventSource retries it), a
    // request that needs a request thread a 503.
    let (status, first, _) = open_stream(addr, "refused");
    assert_eq!(status, 200, "{first}");
    assert!(
        first.starts_with("refused ") && first.contains(r#""reason":"thread-spawn""#),
        "{first}"
    );
    let (status, first, _) = open_path(addr, "/chat/stream?name=refused");
    assert_eq!(status, 200, "{first}");
    assert!(first.contains(r#""reason":"thread-spawn""#), "{first}");
    let (status, body) = put_on_a_request_thread(addr, "refused");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body, r#"{"error":"cannot start a thread"}"#);
    for role in ["alarm-stream", "chat-stream", "request"] {
        let line = wait_for("the spawn failure logged", || {
            log()
                .lines()
                .find(|l| l.contains(&format!("thread spawn failed role={role}")))
                .map(str::to_string)
        });
        assert!(line.contains("error="), "{line}");
        eprintln!("refused: {line}");
    }
    let metrics = raw_get(addr, "/metrics", common::PATIENCE).expect("metrics");
    assert_eq!(
        metric_in(&metrics, r#"syncast_rejected_total{reason="thread-spawn"}"#),
        Some(3.0),
        "{metrics}"
    );

    // 2. tiny_http's own threads are refused: idle connections occupy its 4 pool threads, so
    // for the next client its pool must spawn a thread it cannot get; its accept thread then
    // panics and dies. (A burst of connections may all be queued for the waiting threads
    // without one being spawned, src/util/task_pool.rs `spawn`: so clients keep arriving.)
    // syncast must notice and keep trying to start tiny_http again, without panicking.
    let idle: Vec<TcpStream> = (0..8)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    wait_for_within(
        Duration::from_secs(60),
        "the dead accept loop noticed",
        || {
            let _ = raw_get(addr, "/healthz", Duration::from_millis(200));
            log().contains("accept loop failed").then_some(())
        },
    );

    // 3. Threads are free again: new streams are served.
    cap.release().unwrap();
    drop(idle);
    let sse = wait_for_within(
        Duration::from_secs(60),
        "a stream served again",
        || match open_stream(addr, "after") {
            (200, first, Some(sse)) => Some((first, sse)),
            _ => None,
        },
    );
    assert_eq!(sse.0, r#"message {"alarm":false}"#);
    drop(sse);
    let metrics = raw_get(addr, "/metrics", common::PATIENCE).expect("metrics");
    assert!(metric_in(&metrics, "syncast_accept_restarts_total").unwrap_or(0.0) >= 1.0);

    // SIGTERM still shuts down cleanly; nothing of syncast's own panicked.
    common::sigterm(&child.0);
    let exit = wait_for("exit", || child.0.try_wait().unwrap());
    assert_eq!(exit.code(), Some(0));
    let text = log();
    assert!(text.contains("accept loop restarted"), "{text}");
    assert!(!text.contains("thread panicked"), "{text}");
}

mod pids_cgroup {
    use super::*;

    /// The group for this machine (v2 preferred), or why there is none.
    fn create() -> Result<PidsGroup<RealFs>, String> {
        root::need_root()?;
        let read = |p: &str| std::fs::read_to_string(p).map_err(|e| format!("{p}: {e}"));
        let plan = plan(
            &read("/proc/self/mountinfo")?,
            &read("/proc/self/cgroup")?,
            &|p| std::fs::read_to_string(p).ok(),
        )?;
        eprintln!("pids cgroup: {plan:?}");
        PidsGroup::create(RealFs, &plan, &common::unique("syncast-threads-"))
    }

    #[test]
    #[ignore = "needs root: a pids cgroup (v2 or v1); `make test` runs it as root"]
    fn a_refused_stream_request_or_chat_thread_is_answered_and_the_server_recovers_when_threads_are_free_again(
    ) {
        let test = "pids_cgroup::a_refused_stream_request_or_chat_thread_is_answered_and_the_server_recovers_when_threads_are_free_again";
        let mut group = create().unwrap_or_else(|why| root::cannot_run(test, &why));
        let run = common::RunDir::new("syncast-threads-");
        refused_threads_then_recovery(syncast_bin(), &run, &mut group);
        drop(group);
        let _ = std::fs::remove_dir_all(&run.dir);
    }
}

mod rlimit_nproc {
    use super::*;
    use std::os::unix::process::CommandExt;

    #[test]
    #[ignore = "needs root: runs the server as an unused uid; `make test` runs it as root"]
    fn a_refused_stream_request_or_chat_thread_is_answered_and_the_server_recovers_when_threads_are_free_again(
    ) {
        let test = "rlimit_nproc::a_refused_stream_request_or_chat_thread_is_answered_and_the_server_recovers_when_threads_are_free_again";
        let uid = root::need_root()
            .and_then(|()| root::unused_uid(47_000 + std::process::id() % 1000))
            .unwrap_or_else(|why| root::cannot_run(test, &why));
        // The binary is copied into the run's folder, which the uid owns: the build's own
        // folders may not be reachable for another user (a clone under /root).
        let run = common::RunDir::new("syncast-nproc-");
        let bin = run.dir.join("syncast");
        std::fs::copy(syncast_bin().get_program(), &bin).unwrap();
        root::chown_tree(&run.dir, uid).unwrap_or_else(|why| root::cannot_run(test, &why));
        let mut cmd = Command::new(&bin);
        cmd.uid(uid).gid(uid);
        refused_threads_then_recovery(cmd, &run, &mut Nproc { uid, pid: None });
        let _ = std::fs::remove_dir_all(&run.dir);
    }
}

/// [`plan`] and [`PidsGroup`]'s writes against other machines' layouts (no root needed).
mod layouts {
    use super::*;
    use std::cell::RefCell;
    use std::collections::HashMap;

    /// This machine's kind: a tmpfs of v1 hierarchies, pids among them, and a cgroup2 mount
    /// beside them (systemd's "hybrid") that has no pids controller.
    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    /// Current Debian and Ubuntu, most CI runners: cgroup2 only.
    const UNIFIED: &str = "\
22 26 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
25 21 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    fn files(pairs: &[(&str, &str)]) -> impl Fn(&Path) -> Option<String> {
        let map: HashMap<PathBuf, String> = pairs
            .iter()
            .map(|(p, v)| (PathBuf::from(p), v.to_string()))
            .collect();
        move |p: &Path| map.get(p).cloned()
    }

    #[test]
    fn a_hybrid_host_without_pids_in_v2_uses_the_v1_pids_hierarchy() {
        let read = files(&[
            ("/sys/fs/cgroup/unified/cgroup.controllers", "hugetlb\n"),
            ("/sys/fs/cgroup/unified/cgroup.subtree_control", "\n"),
        ]);
        let own = "9:name=systemd:/\n8:pids:/\n4:memory:/x/y\n0::/\n";
        assert_eq!(
            plan(HYBRID, own, &read),
            Ok(Plan::V1 {
                parent: "/sys/fs/cgroup/pids".into()
            })
        );
    }

    #[test]
    fn a_systemd_v2_host_makes_the_group_at_the_root_which_delegates_pids() {
        let read = files(&[
            (
                "/sys/fs/cgroup/cgroup.controllers",
                "cpuset cpu io memory hugetlb pids rdma misc\n",
            ),
            (
                "/sys/fs/cgroup/cgroup.subtree_control",
                "cpuset cpu io memory pids\n",
            ),
            (
                "/sys/fs/cgroup/system.slice/cgroup.subtree_control",
                "cpu memory pids\n",
            ),
            (
                "/sys/fs/cgroup/system.slice/ci.service/cgroup.subtree_control",
                "\n",
            ),
        ]);
        assert_eq!(
            plan(UNIFIED, "0::/system.slice/ci.service\n", &read),
            Ok(Plan::V2 {
                parent: "/sys/fs/cgroup".into(),
                enable: false
            })
        );
    }

    #[test]
    fn a_v2_group_below_the_root_is_used_when_the_root_does_not_delegate_pids() {
        // Only /ci's subtree has pids (a delegated subtree, as a container manager gives one).
        let read = files(&[
            ("/sys/fs/cgroup/cgroup.subtree_control", "memory\n"),
            ("/sys/fs/cgroup/ci/cgroup.subtree_control", "memory pids\n"),
        ]);
        assert_eq!(
            plan(UNIFIED, "0::/ci/job\n", &read),
            Ok(Plan::V2 {
                parent: "/sys/fs/cgroup/ci".into(),
                enable: false
            })
        );
    }

    #[test]
    fn a_v2_root_offering_pids_without_delegating_it_gets_pids_enabled() {
        let read = files(&[
            ("/sys/fs/cgroup/cgroup.controllers", "cpu memory pids\n"),
            ("/sys/fs/cgroup/cgroup.subtree_control", "\n"),
        ]);
        assert_eq!(
            plan(UNIFIED, "0::/\n", &read),
            Ok(Plan::V2 {
                parent: "/sys/fs/cgroup".into(),
                enable: true
            })
        );
    }

    #[test]
    fn a_mount_of_a_subtree_maps_the_own_path_below_its_root() {
        // A container without a cgroup namespace: the mount shows /docker/abc at its point.
        let mounts = "1 0 0:30 /docker/abc /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let read = files(&[
            ("/sys/fs/cgroup/cgroup.controllers", "cpu memory pids\n"),
            ("/sys/fs/cgroup/cgroup.subtree_control", "\n"),
            ("/sys/fs/cgroup/job/cgroup.subtree_control", "\n"),
        ]);
        assert_eq!(
            plan(mounts, "0::/docker/abc/job\n", &read),
            Ok(Plan::V2 {
                parent: "/sys/fs/cgroup".into(),
                enable: true
            })
        );
        let outside = plan(mounts, "0::/docker/other\n", &read).unwrap_err();
        assert!(outside.contains("outside the cgroup2 mount"), "{outside}");
    }

    #[test]
    fn no_pids_controller_anywhere_says_why() {
        let read = files(&[("/sys/fs/cgroup/cgroup.controllers", "cpu memory\n")]);
        let why = plan(UNIFIED, "0::/\n", &read).unwrap_err();
        assert!(why.contains("offers no pids controller"), "{why}");
        assert!(why.contains("no cgroup v1 pids hierarchy"), "{why}");
        let why = plan("", "", &read).unwrap_err();
        assert!(why.contains("no cgroup2 filesystem"), "{why}");
    }

    #[test]
    fn mount_points_with_escaped_spaces_are_read() {
        let m = parse_mountinfo("1 0 0:1 / /a\\040b rw - cgroup cgroup rw,cpu,pids\n");
        assert_eq!(m[0].point, PathBuf::from("/a b"));
        assert_eq!(m[0].super_options, "rw,cpu,pids");
    }

    /// Records every operation; `pids.current` and `cgroup.procs` read what the kernel would.
    #[derive(Default)]
    struct Fake {
        ops: RefCell<Vec<String>>,
        files: RefCell<HashMap<PathBuf, String>>,
    }

    impl CgroupFs for &Fake {
        fn read(&self, path: &Path) -> std::io::Result<String> {
            self.files
                .borrow()
                .get(path)
                .cloned()
                .ok_or_else(|| std::io::ErrorKind::NotFound.into())
        }
        fn write(&self, path: &Path, value: &str) -> std::io::Result<()> {
            self.ops
                .borrow_mut()
                .push(format!("write {} {value}", path.display()));
            self.files
                .borrow_mut()
                .insert(path.to_path_buf(), value.to_string());
            Ok(())
        }
        fn mkdir(&self, path: &Path) -> std::io::Result<()> {
            self.ops
                .borrow_mut()
                .push(format!("mkdir {}", path.display()));
            Ok(())
        }
        fn rmdir(&self, path: &Path) -> std::io::Result<()> {
            self.ops
                .borrow_mut()
                .push(format!("rmdir {}", path.display()));
            Ok(())
        }
    }

    /// Creates, admits 4242, freezes at 7 threads, releases, drops: the operations made.
    fn sequence(plan: &Plan) -> Vec<String> {
        let fake = Fake::default();
        {
            let group = PidsGroup::create(&fake, plan, "g").unwrap();
            group.admit(4242).unwrap();
            let dir = group.dir.clone();
            fake.files
                .borrow_mut()
                .insert(dir.join("pids.current"), "7\n".into());
            group
                .set_max(&group.current().unwrap().to_string())
                .unwrap();
            group.set_max("max").unwrap();
        }
        fake.ops.take()
    }

    #[test]
    fn a_v2_group_enables_pids_in_its_parent_first_and_disables_it_last() {
        let ops = sequence(&Plan::V2 {
            parent: "/cg".into(),
            enable: true,
        });
        assert_eq!(
            ops,
            [
                "write /cg/cgroup.subtree_control +pids",
                "mkdir /cg/g",
                "write /cg/g/pids.max max",
                "write /cg/g/cgroup.procs 4242",
                "write /cg/g/pids.max 7",
                "write /cg/g/pids.max max",
                // Drop: the (fake) group still lists 4242, moved back before the rmdir.
                "write /cg/cgroup.procs 4242",
                "rmdir /cg/g",
                "write /cg/cgroup.subtree_control -pids",
            ]
        );
    }

    #[test]
    fn a_group_whose_parent_delegates_pids_touches_nothing_of_the_parent_but_its_procs() {
        let v2 = sequence(&Plan::V2 {
            parent: "/cg".into(),
            enable: false,
        });
        let v1 = sequence(&Plan::V1 {
            parent: "/cg".into(),
        });
        assert_eq!(v2, v1);
        assert!(
            v1.iter().all(|op| !op.contains("subtree_control")),
            "{v1:?}"
        );
        assert_eq!(v1.first().map(String::as_str), Some("mkdir /cg/g"));
        assert_eq!(v1.last().map(String::as_str), Some("rmdir /cg/g"));
    }
}
