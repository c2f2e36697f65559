//! `syncast`: parses the flags into a validated configuration (`syncast::cli`), sets up
//! logging, starts the server and waits for signals on the main thread: SIGHUP reopens the log
//! file and runs the server's reload hooks (the key files are re-read there), SIGINT/SIGTERM
//! shut down, joining every thread; a second SIGINT/SIGTERM during that shutdown exits at once.

use std::fs::{File, OpenOptions};
use std::io::LineWriter;
use std::os::fd::{AsRawFd, RawFd};
use std::process::ExitCode;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use simplelog::{CombinedLogger, ConfigBuilder, LevelFilter, SharedLogger, WriteLogger};
use syncast::cli::{self, Command};

// A hostile request's declared body must not be able to abort the process: see syncast::alloc.
#[global_allocator]
static ALLOC: syncast::alloc::LazyHuge = syncast::alloc::LazyHuge;

/// The `--log-file` the logger writes to, reopened in place on SIGHUP.
///
/// The logger owns the open file; this keeps its path and its descriptor number. Reopening
/// opens the path anew and `dup2`s the new file onto that number, so the logger, without a lock
/// or a pause, writes every line from then on to the new file and nothing more to the old one
/// (rename-then-HUP rotation). Each line reaches the file in one `write(2)` (the logger writes
/// through a [`LineWriter`]), so no line is split between the two files.
struct LogFile {
    path: String,
    fd: RawFd,
}

/// Opens `path` for appending, creating it (the `--log-file` rule).
fn open_log(path: &str) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl LogFile {
    /// Opens the path again and points the logger's descriptor at it. Logs the outcome (a
    /// failure to the old file, which the logger keeps writing to).
    fn reopen(&self) {
        let path = &self.path;
        let reopened = open_log(path).and_then(|new| {
            // SAFETY: dup2 on two descriptors this process owns: `self.fd` stays open (the
            // global logger owns it for the life of the process) and now refers to the new
            // file; `new` is closed when dropped right after.
            match unsafe { libc::dup2(new.as_raw_fd(), self.fd) } {
                -1 => Err(std::io::Error::last_os_error()),
                _ => Ok(()),
            }
        });
        match reopened {
            Ok(()) => log::info!("log file reopened path={path}"),
            Err(e) => log::error!("log file reopen failed path={path} error={e}"),
        }
    }
}

fn init_logging(level: LevelFilter, file: Option<&str>) -> Result<Option<LogFile>, String> {
    let cfg = ConfigBuilder::new()
        .add_filter_allow_str("syncast")
        .set_time_format_rfc3339()
        .build();
    let (logger, reopen): (Box<dyn SharedLogger>, _) = match file {
        Some(path) => {
            let f = open_log(path).map_err(|e| format!("--log-file: cannot open {path}: {e}"))?;
            let reopen = LogFile {
                path: path.to_string(),
                fd: f.as_raw_fd(),
            };
            // Big enough for any line: it is written out whole at its newline.
            let out = LineWriter::with_capacity(64 * 1024, f);
            (WriteLogger::new(level, cfg, out), Some(reopen))
        }
        None => (WriteLogger::new(level, cfg, std::io::stderr()), None),
    };
    CombinedLogger::init(vec![logger]).map_err(|e| e.to_string())?;
    Ok(reopen)
}

/// The exit status of a process ended by a second `signal` during shutdown: 128 + its number,
/// as a shell reports a process killed by it (130 for SIGINT, 143 for SIGTERM).
fn interrupted_status(signal: i32) -> u8 {
    (128 + signal).clamp(1, 255) as u8
}

fn main() -> ExitCode {
    let run = match cli::parse(std::env::args_os().skip(1)) {
        Ok(Command::Run(run)) => run,
        Ok(Command::Help) => {
            print!("{}", cli::help());
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            println!("{}", cli::version());
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("syncast: {e} (see --help)");
            return ExitCode::from(2);
        }
    };
    // Before the log file, the signal handlers or any thread exist: on success this does not
    // return, and the program starts again with the same arguments (see the function).
    let restart_failed = syncast::restart_with_malloc_tunables();
    let log_file = match init_logging(run.log_level, run.log_file.as_deref()) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("syncast: {e}");
            return ExitCode::from(2);
        }
    };
    match restart_failed {
        Some(e) => log::warn!("stack cache not bounded error={e}"),
        // What glibc read at this start (ours and the user's; /proc/PID/environ shows only up
        // to the first `:`, which glibc's parsing overwrote).
        None => {
            if let Some(t) = std::env::var_os("GLIBC_TUNABLES") {
                log::debug!("glibc tunables={}", t.to_string_lossy());
            }
        }
    }
    // Register for signals before starting, so none is lost between the two.
    let mut signals = match Signals::new([SIGINT, SIGTERM, SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("syncast: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let server = match syncast::Server::start_valid(run.config) {
        Ok(s) => s,
        // A key file that cannot be used is a bad flag value.
        Err(e @ syncast::StartError::Key(_)) => {
            eprintln!("syncast: {e}");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("syncast: {e}");
            return ExitCode::FAILURE;
        }
    };
    announce(&format!("syncast listening on http://{}", server.addr()));
    if let Some(admin) = server.admin_addr() {
        announce(&format!("syncast admin listening on http://{admin}"));
    }
    if let Some(tcp) = server.chat_tcp_addr() {
        announce(&format!("syncast chat listening on tcp://{tcp}"));
    }
    // The main thread waits here; no extra thread is spent on signals.
    for sig in signals.forever() {
        log::info!("signal received signal={sig}");
        if sig != SIGHUP {
            break;
        }
        // Rotation and reload: streams and requests go on untouched.
        if let Some(log_file) = &log_file {
            log_file.reopen();
        }
        server.reload();
    }
    // While shutdown waits for the threads, a second SIGINT/SIGTERM ends the process at once
    // (an operator who does not want to wait, or a service manager's stop time-out).
    let mut second = None;
    let stopped = server.shutdown_until(&mut || {
        second = signals.pending().find(|s| *s != SIGHUP);
        second.is_some()
    });
    match (stopped, second) {
        (Some(done), _) if done.still_running == 0 => ExitCode::SUCCESS,
        // `shutdown incomplete` was logged.
        (Some(_), _) => ExitCode::FAILURE,
        (None, sig) => {
            let sig = sig.unwrap_or(SIGTERM);
            log::error!("shutdown interrupted signal={sig}; exiting now");
            // At once: no destructor runs, no thread is waited for.
            std::process::exit(i32::from(interrupted_status(sig)));
        }
    }
}

/// Prints one line of the start-up announcement on stdout. A stdout nobody reads any more (a
/// supervisor that kept only the first line, `syncast | head -1`) must not end the server:
/// `println!` panics on a closed pipe, which on the main thread shut the server down.
fn announce(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_signal_exits_as_a_shell_reports_that_signal() {
        assert_eq!(interrupted_status(SIGINT), 130);
        assert_eq!(interrupted_status(SIGTERM), 143);
    }
}
