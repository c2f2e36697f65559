//! Reading `/proc`: a process's thread count, resident memory and CPU time, and the state of
//! this process's threads. Server, tools and tests all read these figures here.

use std::collections::HashSet;

/// Which process to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proc {
    /// The calling process (`/proc/self`).
    This,
    /// Another process, by pid.
    Pid(u32),
}

impl Proc {
    fn file(self, name: &str) -> String {
        match self {
            Proc::This => format!("/proc/self/{name}"),
            Proc::Pid(pid) => format!("/proc/{pid}/{name}"),
        }
    }
}

/// Threads and resident memory of a process, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Status {
    /// `Threads:`.
    pub threads: u64,
    /// `VmRSS:`, in bytes.
    pub rss_bytes: u64,
}

/// The [`Status`] of `proc`; zeros if it cannot be read.
pub fn status(proc: Proc) -> Status {
    let text = std::fs::read_to_string(proc.file("status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Status {
        threads: field("Threads:"),
        rss_bytes: field("VmRSS:") * 1024,
    }
}

/// CPU time of `proc` so far (user + system), in seconds, from `/proc/<pid>/stat`; zero if it
/// cannot be read.
pub fn cpu_seconds(proc: Proc) -> f64 {
    let stat = std::fs::read_to_string(proc.file("stat")).unwrap_or_default();
    // Fields after the command (which may contain spaces) start at state; utime and stime are
    // fields 14 and 15 of the whole line.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(11) + ticks(12)) as f64 / hz
}

/// What the standard `process_*` series of `/metrics` report, read from `/proc/self` (the
/// figures every Prometheus client library exports for its process).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Figures {
    /// User and system CPU time, seconds.
    pub(crate) cpu_seconds: f64,
    /// Resident memory, bytes.
    pub(crate) resident_bytes: u64,
    /// Virtual memory size, bytes.
    pub(crate) virtual_bytes: u64,
    /// Threads.
    pub(crate) threads: u64,
    /// Open file descriptors.
    pub(crate) open_fds: u64,
    /// The open-files limit (soft `RLIMIT_NOFILE`).
    pub(crate) max_fds: u64,
    /// When the process started, seconds since the Unix epoch.
    pub(crate) start_time_seconds: f64,
}

/// This process's [`Figures`] now; a figure that cannot be read is zero.
pub(crate) fn figures() -> Figures {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // After the command (which may hold spaces and parentheses): field 3 (state) onwards.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Field n of proc(5) is f[n - 3].
    let field = |n: usize| {
        f.get(n - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    let boot = std::fs::read_to_string("/proc/stat")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    // Every entry but the descriptor that lists them.
    let open_fds = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count().saturating_sub(1) as u64)
        .unwrap_or(0);
    // SAFETY: rlimit is plain data, filled in by getrlimit.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to an rlimit.
    let max_fds = match unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } {
        0 => limit.rlim_cur,
        _ => 0,
    };
    // CPU time from getrusage, in microseconds: /proc's clock ticks (10 ms) read 0 for a
    // process that has just started.
    // SAFETY: rusage is plain data, filled in by getrusage.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to an rusage.
    let cpu_seconds = match unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } {
        0 => {
            let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
            secs(usage.ru_utime) + secs(usage.ru_stime)
        }
        _ => (field(14) + field(15)) as f64 / hz,
    };
    Figures {
        cpu_seconds,
        start_time_seconds: boot as f64 + field(22) as f64 / hz,
        virtual_bytes: field(23),
        resident_bytes: field(24) * page,
        threads: field(20),
        open_fds,
        max_fds,
    }
}

/// The ids of this process's threads (`None` if `/proc` cannot be read).
pub(crate) fn thread_ids() -> Option<HashSet<u64>> {
    std::fs::read_dir("/proc/self/task").ok().map(|dir| {
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect()
    })
}

/// Whether none of the threads `tids` of this process is running or runnable (state R); a
/// thread that has ended counts as asleep.
pub(crate) fn all_asleep(tids: &[u64]) -> bool {
    !tids.iter().any(|t| {
        std::fs::read_to_string(format!("/proc/self/task/{t}/stat"))
            .ok()
            .and_then(|st| {
                st.rsplit_once(')')
                    .map(|(_, rest)| rest.trim_start().starts_with('R'))
            })
            .unwrap_or(false)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    #[test]
    fn a_spinning_thread_is_not_asleep_and_a_parked_one_is() {
        let (tid_tx, tid_rx) = crossbeam_channel::bounded(1);
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let spin = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let spinning = spin.clone();
        let spinner = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            let _ = tid_tx.send(unsafe { libc::gettid() } as u64);
            while spinning.load(Ordering::Relaxed) {
                std::hint::spin_loop();
            }
            let _ = stop_rx.recv();
        });
        let tid = tid_rx.recv().unwrap();
        assert!(!all_asleep(&[tid]), "spinning (running or runnable)");
        spin.store(false, Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !all_asleep(&[tid]) {
            assert!(Instant::now() < deadline, "never parked");
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(stop_tx);
        spinner.join().unwrap();
        // Joined threads can show in /proc (state R) for a moment while they finish exiting.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !all_asleep(&[tid]) {
            assert!(
                Instant::now() < deadline,
                "an ended thread counts as asleep"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(thread_ids().is_some_and(|t| !t.is_empty()));
    }

    #[test]
    fn the_process_figures_are_this_process() {
        // Other tests open and close files meanwhile: only what holds whatever they do.
        let f = std::fs::File::open("/proc/self/status").unwrap();
        let now = figures();
        assert!(now.open_fds >= 1, "this test's file at least");
        drop(f);
        assert!(now.threads >= 1 && now.resident_bytes > 0);
        assert!(now.virtual_bytes >= now.resident_bytes);
        assert!(now.max_fds >= now.open_fds);
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(now.start_time_seconds > 1e9 && now.start_time_seconds <= since_epoch + 1.0);
        assert_eq!(status(Proc::This).threads, now.threads);
    }
}
