//! `syncast`: parses the flags into a validated configuration (`syncast::cli`), sets up
//! logging, starts the server and waits for signals: SIGHUP re-reads the key files, SIGINT or
//! SIGTERM shuts down, joining every thread.

use std::fs::OpenOptions;
use std::process::ExitCode;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use simplelog::{CombinedLogger, ConfigBuilder, LevelFilter, SharedLogger, WriteLogger};
use syncast::cli::{self, Command};

fn init_logging(level: LevelFilter, file: Option<&str>) -> Result<(), String> {
    let cfg = ConfigBuilder::new()
        .add_filter_allow_str("syncast")
        .set_time_format_rfc3339()
        .build();
    let logger: Box<dyn SharedLogger> = match file {
        Some(path) => {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("--log-file: cannot open {path}: {e}"))?;
            WriteLogger::new(level, cfg, f)
        }
        None => WriteLogger::new(level, cfg, std::io::stderr()),
    };
    CombinedLogger::init(vec![logger]).map_err(|e| e.to_string())
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
    if let Err(e) = init_logging(run.log_level, run.log_file.as_deref()) {
        eprintln!("syncast: {e}");
        return ExitCode::from(2);
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
    println!("syncast listening on http://{}", server.addr());
    if let Some(admin) = server.admin_addr() {
        println!("syncast admin listening on http://{admin}");
    }
    // The main thread waits here; no extra thread is spent on signals.
    for sig in signals.forever() {
        log::info!("signal received signal={sig}");
        if sig == SIGHUP {
            // Key rotation without a restart; each file's outcome is logged by the reload.
            let r = server.reload_keys();
            log::info!(
                "keys reloaded={} failed={}",
                r.reloaded.len(),
                r.failed.len()
            );
            continue;
        }
        break;
    }
    server.shutdown();
    ExitCode::SUCCESS
}
