//! `syncast`: parses the flags into a validated configuration (`syncast::cli`), sets up
//! logging, starts the server and waits for SIGINT/SIGTERM, then shuts down, joining every
//! thread.

use std::fs::OpenOptions;
use std::process::ExitCode;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use simplelog::{CombinedLogger, ConfigBuilder, LevelFilter, SharedLogger, WriteLogger};
use syncast::cli::{self, Command};

// A hostile request's declared body must not be able to abort the process: see syncast::alloc.
#[global_allocator]
static ALLOC: syncast::alloc::LazyHuge = syncast::alloc::LazyHuge;

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
    let mut signals = match Signals::new([SIGINT, SIGTERM]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("syncast: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let server = match syncast::Server::start_valid(run.config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("syncast: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("syncast listening on http://{}", server.addr());
    // The main thread waits here; no extra thread is spent on signals.
    if let Some(sig) = signals.forever().next() {
        log::info!("signal received signal={sig}");
    }
    server.shutdown();
    ExitCode::SUCCESS
}
