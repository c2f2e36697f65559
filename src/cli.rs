//! The command line of `syncast`: one table of flags, [`FLAGS`], each written once — its name,
//! its value, its help line, and how it sets [`Options`]. `--help` is made from the table, and
//! the defaults it shows are read from [`Options::default`] (that is, [`Config::default`]), so
//! a default is written in one place. Adding a flag is adding a row.
//!
//! ```
//! let cmd = syncast::cli::parse(["--tick", "1s"].map(Into::into)).unwrap();
//! let syncast::cli::Command::Run(run) = cmd else { panic!() };
//! assert_eq!(run.config.tick, std::time::Duration::from_secs(1));
//! ```

use std::ffi::OsString;
use std::fmt::Write as _;
use std::str::FromStr;
use std::time::Duration;

use log::LevelFilter;

use crate::config::{format_duration, parse_duration, Config, ValidConfig};

/// Everything the flags set: the server's [`Config`] and the binary's logging.
#[derive(Debug, Clone)]
pub struct Options {
    /// The server's configuration.
    pub config: Config,
    /// `--log-level`. Default `info`.
    pub log_level: LevelFilter,
    /// `--log-file`: append log lines to this file. Default: none (stderr).
    pub log_file: Option<String>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            config: Config::default(),
            log_level: LevelFilter::Info,
            log_file: None,
        }
    }
}

/// One flag: one that takes a value, or a switch (`value` empty).
pub struct Flag {
    /// The name, without the leading `--`.
    pub name: &'static str,
    /// What the value is, as `--help` shows it (`DUR`, `N`, `PATH`, ...); empty for a switch,
    /// which takes none (its setter gets an empty value).
    pub value: &'static str,
    /// The help line.
    pub help: &'static str,
    /// The default as `--help` shows it, read from the given options (`None`: none shown).
    default: fn(&Options) -> Option<String>,
    /// Sets the value; the `&str` is the flag as typed (`--tick`), for the error message.
    set: fn(&mut Options, &str, OsString) -> Result<(), String>,
}

impl Flag {
    /// The default `--help` shows for this flag, if any.
    pub fn default_text(&self) -> Option<String> {
        (self.default)(&Options::default())
    }
}

/// The value as UTF-8, or the flag's error.
fn text(flag: &str, value: OsString) -> Result<String, String> {
    value
        .into_string()
        .map_err(|_| format!("{flag}: not UTF-8"))
}

fn duration(flag: &str, value: OsString) -> Result<Duration, String> {
    parse_duration(&text(flag, value)?).map_err(|e| format!("{flag}: {e}"))
}

fn number<T: FromStr>(flag: &str, value: OsString) -> Result<T, String> {
    let v = text(flag, value)?;
    v.parse()
        .map_err(|_| format!("{flag}: invalid number {v:?}"))
}

/// `IP:PORT`, or a bare `PORT` meaning `127.0.0.1:PORT`.
fn address(flag: &str, value: OsString, port_alone: bool) -> Result<std::net::SocketAddr, String> {
    let v = value.to_string_lossy().to_string();
    if port_alone {
        if let Ok(port) = v.parse::<u16>() {
            return Ok(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
        }
    }
    v.parse().map_err(|_| {
        let hint = if port_alone {
            "IP:PORT or PORT"
        } else {
            "IP:PORT"
        };
        format!("{flag}: invalid address {v:?} (use {hint})")
    })
}

/// A value that must not be empty.
fn non_empty(flag: &str, value: OsString) -> Result<String, String> {
    let v = text(flag, value)?;
    if v.is_empty() {
        return Err(format!("{flag}: empty"));
    }
    Ok(v)
}

/// Every flag, in `--help` order.
pub const FLAGS: &[Flag] = &[
    Flag {
        name: "listen",
        value: "ADDR",
        help: "address to listen on (port 0: any free port)",
        default: |o| Some(o.config.listen.to_string()),
        set: |o, flag, v| {
            o.config.listen = address(flag, v, false)?;
            Ok(())
        },
    },
    Flag {
        name: "db",
        value: "PATH",
        help: "SQLite alarm store (created if missing)",
        default: |o| Some(o.config.db.display().to_string()),
        set: |o, _, v| {
            o.config.db = v.into();
            Ok(())
        },
    },
    Flag {
        name: "tick",
        value: "DUR",
        help: "tick-mode event interval",
        default: |o| Some(format_duration(o.config.tick)),
        set: |o, flag, v| {
            o.config.tick = duration(flag, v)?;
            Ok(())
        },
    },
    Flag {
        name: "refresh",
        value: "DUR",
        help: "refresher query interval",
        default: |o| Some(format_duration(o.config.refresh)),
        set: |o, flag, v| {
            o.config.refresh = duration(flag, v)?;
            Ok(())
        },
    },
    Flag {
        name: "heartbeat",
        value: "DUR",
        help: "keepalive interval (change mode, chat)",
        default: |o| Some(format_duration(o.config.heartbeat)),
        set: |o, flag, v| {
            o.config.heartbeat = duration(flag, v)?;
            Ok(())
        },
    },
    Flag {
        name: "max-clients",
        value: "N",
        help: "streaming clients at once",
        default: |o| Some(o.config.max_clients.to_string()),
        set: |o, flag, v| {
            o.config.max_clients = number(flag, v)?;
            Ok(())
        },
    },
    Flag {
        name: "max-requests",
        value: "N",
        help: "short requests at once",
        default: |o| Some(o.config.max_requests.to_string()),
        set: |o, flag, v| {
            o.config.max_requests = number(flag, v)?;
            Ok(())
        },
    },
    Flag {
        name: "write-timeout",
        value: "DUR",
        help: "close a stream blocked this long",
        default: |o| Some(format_duration(o.config.write_timeout)),
        set: |o, flag, v| {
            o.config.write_timeout = duration(flag, v)?;
            Ok(())
        },
    },
    Flag {
        name: "tcp-user-timeout",
        value: "DUR",
        help: "drop a stream whose data stays unacked this long (no FIN)",
        default: |o| Some(format_duration(o.config.tcp_user_timeout)),
        set: |o, flag, v| {
            o.config.tcp_user_timeout = duration(flag, v)?;
            Ok(())
        },
    },
    Flag {
        name: "history",
        value: "N",
        help: "chat events kept for resume",
        default: |o| Some(o.config.history.to_string()),
        set: |o, flag, v| {
            o.config.history = number(flag, v)?;
            Ok(())
        },
    },
    Flag {
        name: "queue",
        value: "N",
        help: "chat events queued per member",
        default: |o| Some(o.config.queue.to_string()),
        set: |o, flag, v| {
            o.config.queue = number(flag, v)?;
            Ok(())
        },
    },
    Flag {
        name: "grace",
        value: "DUR",
        help: "chat session life without a stream",
        default: |o| Some(format_duration(o.config.grace)),
        set: |o, flag, v| {
            o.config.grace = duration(flag, v)?;
            Ok(())
        },
    },
    Flag {
        name: "rate",
        value: "N",
        help: "chat messages per second per session",
        default: |o| Some(o.config.rate.to_string()),
        set: |o, flag, v| {
            o.config.rate = number(flag, v)?;
            Ok(())
        },
    },
    Flag {
        name: "burst",
        value: "N",
        help: "chat messages in a burst",
        default: |o| Some(o.config.burst.to_string()),
        set: |o, flag, v| {
            o.config.burst = number(flag, v)?;
            Ok(())
        },
    },
    Flag {
        name: "max-members",
        value: "N",
        help: "chat sessions at once",
        default: |o| Some(o.config.max_members.to_string()),
        set: |o, flag, v| {
            o.config.max_members = number(flag, v)?;
            Ok(())
        },
    },
    Flag {
        name: "header-timeout",
        value: "DUR",
        help: "close connections without a complete request this long",
        default: |o| Some(format_duration(o.config.header_timeout)),
        set: |o, flag, v| {
            o.config.header_timeout = duration(flag, v)?;
            Ok(())
        },
    },
    Flag {
        name: "body-timeout",
        value: "DUR",
        help: "cut a request body not all sent this long after its headers (408)",
        default: |o| Some(format_duration(o.config.body_timeout)),
        set: |o, flag, v| {
            o.config.body_timeout = duration(flag, v)?;
            Ok(())
        },
    },
    Flag {
        name: "max-pending",
        value: "N",
        help: "connections waiting for their headers at once",
        default: |o| Some(o.config.max_pending.to_string()),
        set: |o, flag, v| {
            o.config.max_pending = number(flag, v)?;
            Ok(())
        },
    },
    Flag {
        name: "cors-origin",
        value: "ORIGIN",
        help: "allow browsers on ORIGIN (or *)",
        default: |o| Some(o.config.cors_origin.clone().unwrap_or_else(|| "off".into())),
        set: |o, _, v| {
            o.config.cors_origin = Some(v.to_string_lossy().to_string());
            Ok(())
        },
    },
    Flag {
        name: "redis",
        value: "URL",
        help: "the Redis several nodes share: redis://HOST[:PORT][/DB]",
        default: |o| Some(o.config.redis.clone().unwrap_or_else(|| "off".into())),
        set: |o, flag, v| {
            o.config.redis = Some(text(flag, v)?);
            Ok(())
        },
    },
    Flag {
        name: "redis-prefix",
        value: "TEXT",
        help: "prefix of every Redis key",
        default: |o| Some(o.config.redis_prefix.clone()),
        set: |o, flag, v| {
            o.config.redis_prefix = text(flag, v)?;
            Ok(())
        },
    },
    Flag {
        name: "redis-timeout",
        value: "DUR",
        help: "connect, read and write time-out of Redis connections",
        default: |o| Some(format_duration(o.config.redis_timeout)),
        set: |o, flag, v| {
            o.config.redis_timeout = duration(flag, v)?;
            Ok(())
        },
    },
    Flag {
        name: "alarm-store",
        value: "KIND",
        help: "where alarms live: sqlite (--db) or redis (--redis)",
        default: |o| Some(o.config.alarm_store.as_str().to_string()),
        set: |o, flag, v| {
            let v = text(flag, v)?;
            o.config.alarm_store = v
                .parse()
                .map_err(|()| format!("{flag}: invalid store {v:?} (use sqlite or redis)"))?;
            Ok(())
        },
    },
    Flag {
        name: "jwt-secret-file",
        value: "PATH",
        help: "HS256 secret (>= 32 bytes) for tokens: auth on",
        default: |_| None,
        set: |o, _, v| {
            o.config.jwt_secret_file = Some(v.into());
            Ok(())
        },
    },
    Flag {
        name: "jwt-public-key-file",
        value: "PATH",
        help: "RS256/ES256 public key (PEM) for tokens: auth on",
        default: |_| None,
        set: |o, _, v| {
            o.config.jwt_public_key_file = Some(v.into());
            Ok(())
        },
    },
    Flag {
        name: "jwt-audience",
        value: "AUD",
        help: "tokens must have this aud",
        default: |_| None,
        set: |o, flag, v| {
            o.config.jwt_audience = Some(non_empty(flag, v)?);
            Ok(())
        },
    },
    Flag {
        name: "jwt-issuer",
        value: "ISS",
        help: "tokens must have this iss",
        default: |_| None,
        set: |o, flag, v| {
            o.config.jwt_issuer = Some(non_empty(flag, v)?);
            Ok(())
        },
    },
    Flag {
        name: "jwt-leeway",
        value: "DUR",
        help: "clock skew allowed on exp and nbf",
        default: |o| Some(format_duration(o.config.jwt_leeway)),
        set: |o, flag, v| {
            o.config.jwt_leeway = duration(flag, v)?;
            Ok(())
        },
    },
    Flag {
        name: "admin-listen",
        value: "ADDR",
        help: "serve /metrics and /debug/threads here only (PORT: loopback)",
        default: |_| Some("off".into()),
        set: |o, flag, v| {
            o.config.admin_listen = Some(address(flag, v, true)?);
            Ok(())
        },
    },
    Flag {
        name: "chat-tcp",
        value: "ADDR",
        help: "also serve the chat room as text lines over plain TCP here (PORT: loopback)",
        default: |_| Some("off".into()),
        set: |o, flag, v| {
            o.config.chat_tcp = Some(address(flag, v, true)?);
            Ok(())
        },
    },
    Flag {
        name: "insecure",
        value: "",
        help: "allow a non-loopback --listen (or --chat-tcp) without any key",
        default: |_| None,
        set: |o, _, _| {
            o.config.insecure = true;
            Ok(())
        },
    },
    Flag {
        name: "log-level",
        value: "LEVEL",
        help: "error, warn, info, debug, trace or off",
        default: |o| Some(o.log_level.as_str().to_ascii_lowercase()),
        set: |o, flag, v| {
            let v = v.to_string_lossy().to_string();
            o.log_level = v
                .parse()
                .map_err(|_| format!("{flag}: invalid level {v:?}"))?;
            Ok(())
        },
    },
    Flag {
        name: "log-file",
        value: "PATH",
        help: "append log lines to PATH (else stderr)",
        default: |_| None,
        set: |o, _, v| {
            o.log_file = Some(v.to_string_lossy().to_string());
            Ok(())
        },
    },
];

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    /// Start the server.
    Run(Box<Run>),
    /// `-h`, `--help`: print [`help`].
    Help,
    /// `-V`, `--version`: print [`version`].
    Version,
}

/// A validated configuration and the logging settings: everything `syncast` needs to run.
#[derive(Debug)]
pub struct Run {
    /// The server's configuration, validated.
    pub config: ValidConfig,
    /// `--log-level`.
    pub log_level: LevelFilter,
    /// `--log-file`.
    pub log_file: Option<String>,
}

/// Parses the arguments (without the program name). The error is one line for the user.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command, String> {
    use lexopt::prelude::*;
    let mut options = Options::default();
    let mut parser = lexopt::Parser::from_args(args);
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            Short('h') | Long("help") => return Ok(Command::Help),
            Short('V') | Long("version") => return Ok(Command::Version),
            Long(name) => match FLAGS.iter().find(|f| f.name == name) {
                Some(flag) => {
                    let typed = format!("--{}", flag.name);
                    let value = if flag.value.is_empty() {
                        if parser.optional_value().is_some() {
                            return Err(format!("{typed} takes no value"));
                        }
                        OsString::new()
                    } else {
                        parser.value().map_err(|e| e.to_string())?
                    };
                    (flag.set)(&mut options, &typed, value)?;
                }
                None => return Err(arg.unexpected().to_string()),
            },
            _ => return Err(arg.unexpected().to_string()),
        }
    }
    let config = options.config.validated().map_err(|e| e.to_string())?;
    Ok(Command::Run(Box::new(Run {
        config,
        log_level: options.log_level,
        log_file: options.log_file,
    })))
}

/// `syncast VERSION`, as `--version` prints it.
pub fn version() -> String {
    format!("syncast {}", env!("CARGO_PKG_VERSION"))
}

/// The `--help` text, from [`FLAGS`].
pub fn help() -> String {
    let column = |f: &Flag| format!("--{} {}", f.name, f.value).trim_end().to_string();
    let width = FLAGS.iter().map(|f| column(f).len()).max().unwrap_or(0) + 2;
    let mut out = String::from(
        "syncast: thread-per-client SSE server (alarm stream + chat room), no async runtime\n\n\
         USAGE: syncast [OPTIONS]\n\nOPTIONS:\n",
    );
    for flag in FLAGS {
        let _ = write!(out, "  {:<width$}{}", column(flag), flag.help);
        if let Some(default) = flag.default_text() {
            let _ = write!(out, " [default: {default}]");
        }
        out.push('\n');
    }
    let _ = writeln!(out, "  {:<width$}print this help", "-h, --help");
    let _ = writeln!(out, "  {:<width$}print the version", "-V, --version");
    out.push_str("DUR: 500ms, 2s, 1m or a number of seconds.\n");
    out
}

#[cfg(test)]
mod tests;
