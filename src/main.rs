//! `syncast`: parses flags into a `Config`, sets up logging, starts the server and waits for
//! SIGINT/SIGTERM, then shuts down, joining every thread.

use std::fs::OpenOptions;
use std::process::ExitCode;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use simplelog::{CombinedLogger, ConfigBuilder, LevelFilter, SharedLogger, WriteLogger};
use syncast::kit::parse_duration;
use syncast::Config;

const HELP: &str = "\
syncast: thread-per-client SSE server (alarm stream + chat room), no async runtime

USAGE: syncast [OPTIONS]

OPTIONS:
  --listen ADDR        address to listen on              [default: 127.0.0.1:8080]
  --db PATH            SQLite alarm store (created)      [default: syncast.db]
  --tick DUR           tick-mode event interval          [default: 500ms]
  --refresh DUR        refresher query interval          [default: 500ms]
  --heartbeat DUR      keepalive interval                [default: 25s]
  --max-clients N      streaming clients at once         [default: 10000]
  --max-requests N     short requests at once            [default: 64]
  --write-timeout DUR  close a stream blocked this long  [default: 10s]
  --tcp-user-timeout DUR  drop a stream whose sent data is unacknowledged this long
                       (peer vanished without FIN)       [default: 60s]
  --history N          chat events kept for resume       [default: 1024]
  --queue N            chat events queued per member     [default: 1024]
  --grace DUR          chat session life without stream [default: 30s]
  --rate N             chat messages/s per session       [default: 20]
  --burst N            chat messages in a burst          [default: 40]
  --max-members N      chat sessions at once             [default: 10000]
  --header-timeout DUR close connections without a request this long [default: 10s]
  --max-pending N      connections waiting for headers   [default: 2048]
  --cors-origin ORIGIN allow browsers on ORIGIN (or *)    [default: off]
  --log-level LEVEL    error|warn|info|debug|trace|off   [default: info]
  --log-file PATH      append logs to PATH (else stderr)
  -h, --help           print this help
  -V, --version        print the version
DUR: 500ms, 2s, 1m or a number of seconds.
";

struct Cli {
    config: Config,
    log_level: LevelFilter,
    log_file: Option<String>,
}

fn parse_args() -> Result<Option<Cli>, String> {
    use lexopt::prelude::*;
    let mut config = Config::default();
    let mut log_level = LevelFilter::Info;
    let mut log_file = None;
    let mut parser = lexopt::Parser::from_env();
    let dur = |v: std::ffi::OsString, flag: &str| -> Result<std::time::Duration, String> {
        let v = v.into_string().map_err(|_| format!("{flag}: not UTF-8"))?;
        parse_duration(&v).map_err(|e| format!("{flag}: {e}"))
    };
    let num = |v: std::ffi::OsString, flag: &str| -> Result<usize, String> {
        let v = v.into_string().map_err(|_| format!("{flag}: not UTF-8"))?;
        v.parse()
            .map_err(|_| format!("{flag}: invalid number {v:?}"))
    };
    let float = |v: std::ffi::OsString, flag: &str| -> Result<f64, String> {
        let v = v.into_string().map_err(|_| format!("{flag}: not UTF-8"))?;
        v.parse()
            .map_err(|_| format!("{flag}: invalid number {v:?}"))
    };
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            Long("listen") => {
                let v = parser.value().map_err(|e| e.to_string())?;
                let v = v.to_string_lossy().to_string();
                config.listen = v
                    .parse()
                    .map_err(|_| format!("--listen: invalid address {v:?} (use IP:PORT)"))?;
            }
            Long("db") => config.db = parser.value().map_err(|e| e.to_string())?.into(),
            Long("tick") => {
                config.tick = dur(parser.value().map_err(|e| e.to_string())?, "--tick")?
            }
            Long("refresh") => {
                config.refresh = dur(parser.value().map_err(|e| e.to_string())?, "--refresh")?
            }
            Long("heartbeat") => {
                config.heartbeat = dur(parser.value().map_err(|e| e.to_string())?, "--heartbeat")?
            }
            Long("write-timeout") => {
                config.write_timeout = dur(
                    parser.value().map_err(|e| e.to_string())?,
                    "--write-timeout",
                )?
            }
            Long("tcp-user-timeout") => {
                config.tcp_user_timeout = dur(
                    parser.value().map_err(|e| e.to_string())?,
                    "--tcp-user-timeout",
                )?
            }
            Long("grace") => {
                config.grace = dur(parser.value().map_err(|e| e.to_string())?, "--grace")?
            }
            Long("max-clients") => {
                config.max_clients =
                    num(parser.value().map_err(|e| e.to_string())?, "--max-clients")?
            }
            Long("max-requests") => {
                config.max_requests =
                    num(parser.value().map_err(|e| e.to_string())?, "--max-requests")?
            }
            Long("history") => {
                config.history = num(parser.value().map_err(|e| e.to_string())?, "--history")?
            }
            Long("queue") => {
                config.queue = num(parser.value().map_err(|e| e.to_string())?, "--queue")?
            }
            Long("rate") => {
                config.rate = float(parser.value().map_err(|e| e.to_string())?, "--rate")?
            }
            Long("burst") => {
                config.burst = float(parser.value().map_err(|e| e.to_string())?, "--burst")?
            }
            Long("max-members") => {
                config.max_members =
                    num(parser.value().map_err(|e| e.to_string())?, "--max-members")?
            }
            Long("header-timeout") => {
                config.header_timeout = dur(
                    parser.value().map_err(|e| e.to_string())?,
                    "--header-timeout",
                )?
            }
            Long("max-pending") => {
                config.max_pending =
                    num(parser.value().map_err(|e| e.to_string())?, "--max-pending")?
            }
            Long("cors-origin") => {
                let v = parser.value().map_err(|e| e.to_string())?;
                config.cors_origin = Some(v.to_string_lossy().to_string())
            }
            Long("log-level") => {
                let v = parser.value().map_err(|e| e.to_string())?;
                let v = v.to_string_lossy().to_string();
                log_level = v
                    .parse()
                    .map_err(|_| format!("--log-level: invalid level {v:?}"))?;
            }
            Long("log-file") => {
                log_file = Some(
                    parser
                        .value()
                        .map_err(|e| e.to_string())?
                        .to_string_lossy()
                        .to_string(),
                )
            }
            Short('h') | Long("help") => {
                print!("{HELP}");
                return Ok(None);
            }
            Short('V') | Long("version") => {
                println!("syncast {}", env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            _ => return Err(arg.unexpected().to_string()),
        }
    }
    config.validate().map_err(|e| e.to_string())?;
    Ok(Some(Cli {
        config,
        log_level,
        log_file,
    }))
}

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
    let cli = match parse_args() {
        Ok(Some(cli)) => cli,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("syncast: {e} (see --help)");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = init_logging(cli.log_level, cli.log_file.as_deref()) {
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
    let server = match syncast::Server::start(cli.config) {
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
