//! Server configuration: one struct, documented defaults, validated once.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything a [`crate::Server`] needs to start. Build it with [`Config::default`] and change
/// fields; `Server::start` validates it (or give `Server::start_valid` a [`ValidConfig`]). The
/// binary's flags ([`crate::cli`]) set these fields and show these defaults.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address to listen on. Default `127.0.0.1:8080`; port 0 picks a free port.
    pub listen: SocketAddr,
    /// SQLite file holding the alarms. Default `syncast.db` in the working directory; created
    /// with its schema if missing.
    pub db: PathBuf,
    /// Interval between events of a tick-mode alarm stream. Default 500 ms.
    pub tick: Duration,
    /// Interval between refresher queries. Default 500 ms.
    pub refresh: Duration,
    /// Interval between `: keepalive` comments on change-mode and chat streams. Default 25 s:
    /// below the 30 s idle time-out some proxies are configured with (the common defaults,
    /// nginx `proxy_read_timeout` and AWS ALB, are 60 s); each keepalive costs a thread
    /// wake-up and a write, so with 10,000 idle streams 15 s meant 667 wake-ups a second.
    pub heartbeat: Duration,
    /// Streaming clients (alarm and chat streams together) served at once; one more gets 503 with
    /// `Retry-After`. Default 10,000.
    pub max_clients: usize,
    /// Short requests (bodies, store writes) served at once on their own threads; one more gets
    /// 503. Default 64.
    pub max_requests: usize,
    /// How long a store query may wait for a lock held by another writer. Default 250 ms.
    pub busy_timeout: Duration,
    /// How long one write of an event to a client may block before the stream is closed as
    /// `stalled`. Default 10 s.
    pub write_timeout: Duration,
    /// `TCP_USER_TIMEOUT` of each stream socket: how long data sent to a client may stay
    /// unacknowledged before the kernel drops the connection; the stream then closes as
    /// `client-gone`. This is what finds a peer that vanished without a FIN or RST (power cut,
    /// network gone): a stream writes a heartbeat at least every `heartbeat`, so its socket is
    /// never idle with nothing in flight, TCP keepalive never probes, and without this the
    /// kernel retransmits for about 15 minutes (`tcp_retries2` = 15) before giving up.
    /// Default 60 s.
    pub tcp_user_timeout: Duration,
    /// Kernel send buffer of each stream socket (`SO_SNDBUF`): bounds the memory a client that
    /// stops reading can pin, and how much is queued before the write time-out starts. Default
    /// 64 KiB (Linux doubles the value it is given).
    pub send_buffer: usize,
    /// Chat: events kept for resume by `Last-Event-ID`. Default 1024.
    pub history: usize,
    /// Chat: events queued per member before it is cut off as slow. Default 1024.
    pub queue: usize,
    /// Chat: how long a session without a stream lives. Default 30 s.
    pub grace: Duration,
    /// Chat: messages per second one session may post (sustained). Default 20.
    pub rate: f64,
    /// Chat: messages one session may post in a burst. Default 40.
    pub burst: f64,
    /// Chat: sessions at once (with or without a stream); one more join gets 503 with
    /// `Retry-After`. Default 10,000.
    pub max_members: usize,
    /// Stack size of each stream thread. Default 64 KiB.
    pub stream_stack: usize,
    /// A connection that has not sent a complete request line and headers this long after it
    /// was seen (or after its previous request, for keep-alive) is closed. Default 10 s.
    pub header_timeout: Duration,
    /// A request body read on a request thread (more than tiny_http's 1 KiB, chunked, or after
    /// `Expect: 100-continue`) that has not all arrived this long after its headers is cut:
    /// `408`, and the connection closed. Default 2 s.
    pub body_timeout: Duration,
    /// Connections waiting for their headers at once; the oldest beyond this are closed.
    /// Capped separately from streaming clients. Default 2048.
    pub max_pending: usize,
    /// `Access-Control-Allow-Origin` value for browsers on other origins; off by default.
    pub cors_origin: Option<String>,
    /// HS256 secret for tokens (`--jwt-secret-file`): the file's bytes, a trailing line break
    /// removed, at least 32 bytes. With this or [`Config::jwt_public_key_file`], auth is on.
    /// Default: none.
    pub jwt_secret_file: Option<PathBuf>,
    /// RS256 or ES256 public key in PEM for tokens (`--jwt-public-key-file`). Default: none.
    pub jwt_public_key_file: Option<PathBuf>,
    /// When set, a token's `aud` must include this (`--jwt-audience`). Default: not checked.
    pub jwt_audience: Option<String>,
    /// When set, a token's `iss` must be this (`--jwt-issuer`). Default: not checked.
    pub jwt_issuer: Option<String>,
    /// Clock skew allowed on `exp` and `nbf` (`--jwt-leeway`); a stream ends this long after its
    /// token's `exp`. Default 5 s.
    pub jwt_leeway: Duration,
    /// A second listener for `/metrics`, `/debug/threads` (and `/healthz`), which the public one
    /// then no longer serves (`--admin-listen`). Default: none.
    pub admin_listen: Option<SocketAddr>,
    /// Serve on a non-loopback address without any key (`--insecure`). Default false: such a
    /// start is refused.
    pub insecure: bool,
    /// The chat room's plain-TCP listener (`--chat-tcp`): clients dial it, `/name NAME` and
    /// send lines, as the Go original's clients did, and meet the SSE members in the same
    /// room (docs/protocol.md#chat-over-plain-tcp). Default: none (off).
    pub chat_tcp: Option<SocketAddr>,
    /// The Redis (or Valkey) server several nodes share, as `redis://[:PASSWORD@]HOST[:PORT][/DB]`.
    /// Default: none (one node, nothing needs Redis). `rediss://` (TLS) only in a build with
    /// the `redis-tls` feature (docs/operations.md#tls).
    pub redis: Option<String>,
    /// What every Redis key syncast reads or writes starts with. Default `syncast:`.
    pub redis_prefix: String,
    /// Where alarms are read and written. Default [`AlarmStoreKind::Sqlite`] (`db`);
    /// [`AlarmStoreKind::Redis`] needs `redis`.
    pub alarm_store: AlarmStoreKind,
    /// The connect, read and write time-out of every Redis connection: a Redis that is down,
    /// frozen or slow costs a request at most about this long. Default 2 s.
    pub redis_timeout: Duration,
    /// Test-only fault injection: an alarm stream, a refresh or a `GET /alarms/{id}` (on its
    /// request thread) that meets this alarm id panics, and so does the chat stream of a member
    /// of this name, so tests can show panics are caught, counted and survived. Never set by
    /// the binary.
    #[doc(hidden)]
    pub fault_panic_id: Option<String>,
    /// Test-only: the watcher's sweep reads `TCP_INFO` of each socket in turn, as where
    /// `sock_diag` (netlink) is unavailable, so tests can show that path works. Never set by
    /// the binary.
    #[doc(hidden)]
    pub force_tcp_info_watch: bool,
    /// Test-only: the watcher ignores epoll's state-change reports, so closed clients are found
    /// by its sweep alone (tests of the sweep). Never set by the binary.
    #[doc(hidden)]
    pub watch_sweep_only: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            db: PathBuf::from("syncast.db"),
            tick: Duration::from_millis(500),
            refresh: Duration::from_millis(500),
            heartbeat: Duration::from_secs(25),
            max_clients: 10_000,
            max_requests: 64,
            busy_timeout: Duration::from_millis(250),
            write_timeout: Duration::from_secs(10),
            tcp_user_timeout: Duration::from_secs(60),
            send_buffer: 64 * 1024,
            history: 1024,
            queue: 1024,
            grace: Duration::from_secs(30),
            rate: 20.0,
            burst: 40.0,
            max_members: 10_000,
            stream_stack: 64 * 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(2),
            max_pending: 2048,
            cors_origin: None,
            jwt_secret_file: None,
            jwt_public_key_file: None,
            jwt_audience: None,
            jwt_issuer: None,
            jwt_leeway: Duration::from_secs(5),
            admin_listen: None,
            insecure: false,
            chat_tcp: None,
            redis: None,
            redis_prefix: "syncast:".to_string(),
            alarm_store: AlarmStoreKind::Sqlite,
            redis_timeout: Duration::from_secs(2),
            fault_panic_id: None,
            force_tcp_info_watch: false,
            watch_sweep_only: false,
        }
    }
}

/// Where the alarms live (`--alarm-store`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlarmStoreKind {
    /// The SQLite file of [`Config::db`].
    Sqlite,
    /// The hash `<prefix>alarms` on [`Config::redis`].
    Redis,
}

impl AlarmStoreKind {
    /// The flag's word for it: `sqlite` or `redis`.
    pub fn as_str(self) -> &'static str {
        match self {
            AlarmStoreKind::Sqlite => "sqlite",
            AlarmStoreKind::Redis => "redis",
        }
    }
}

impl std::str::FromStr for AlarmStoreKind {
    type Err = ();

    fn from_str(s: &str) -> Result<AlarmStoreKind, ()> {
        match s {
            "sqlite" => Ok(AlarmStoreKind::Sqlite),
            "redis" => Ok(AlarmStoreKind::Redis),
            _ => Err(()),
        }
    }
}

/// Why a `--redis` URL is refused, or `None` if syncast can use it: `redis://` (and `rediss://`
/// in a build with the `redis-tls` feature), and a URL the client library parses (host, port,
/// database number, password).
pub(crate) fn redis_url_problem(url: &str) -> Option<&'static str> {
    if url.starts_with("rediss://") && !cfg!(feature = "redis-tls") {
        // The redis crate's TLS (rustls) needs no async runtime, but it is a build feature:
        // it would grow every binary past the idle-memory target (docs/operations.md#tls).
        return Some(
            "redis://HOST[:PORT][/DB]: rediss:// (TLS) needs a build with `--features \
             redis-tls` (docs/operations.md#tls)",
        );
    }
    if !url.starts_with("redis://") && !url.starts_with("rediss://") {
        return Some("redis://HOST[:PORT][/DB] (e.g. redis://127.0.0.1:6379/0)");
    }
    match ::redis::Client::open(url) {
        Ok(_) => None,
        Err(_) => Some("a valid redis://HOST[:PORT][/DB] URL (e.g. redis://127.0.0.1:6379/0)"),
    }
}

/// A configuration value syncast cannot use.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// A setting outside what it may be: the setting (its flag, or its name when it has none)
    /// and the rule, e.g. `--tick` and `10ms..60s`.
    Invalid {
        /// The flag or field.
        setting: &'static str,
        /// What it must be.
        must_be: &'static str,
    },
    /// A listener reachable from other hosts with no key configured and no `--insecure`.
    Exposed {
        /// The flag of that listener (`--listen` or `--admin-listen`).
        flag: &'static str,
        /// Its address.
        addr: SocketAddr,
    },
    /// A duration that does not parse; `source` is the number's parse error when that is what
    /// failed (not a unit or a range).
    Duration {
        /// The text as given.
        text: String,
        /// Why the number did not parse.
        source: Option<std::num::ParseFloatError>,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Invalid { setting, must_be } => write!(f, "{setting} must be {must_be}"),
            ConfigError::Exposed { flag, addr } => write!(
                f,
                "{flag} {addr} is reachable from other hosts but no key is configured: give \
                 --jwt-secret-file FILE (HS256) or --jwt-public-key-file PEM (RS256/ES256), \
                 or --insecure to serve everyone without authentication"
            ),
            ConfigError::Duration { text, .. } => {
                write!(f, "invalid duration {text:?} (use e.g. 500ms, 2s, 1m)")
            }
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Duration {
                source: Some(e), ..
            } => Some(e),
            _ => None,
        }
    }
}

impl Config {
    /// Checks every value once, at the edge; the rest of the code trusts them.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let ms = |d: Duration| d.as_millis();
        let check = |ok: bool, setting: &'static str, must_be: &'static str| {
            if ok {
                Ok(())
            } else {
                Err(ConfigError::Invalid { setting, must_be })
            }
        };
        check(
            (10..=60_000).contains(&ms(self.tick)),
            "--tick",
            "10ms..60s",
        )?;
        check(
            (10..=60_000).contains(&ms(self.refresh)),
            "--refresh",
            "10ms..60s",
        )?;
        check(
            (100..=3_600_000).contains(&ms(self.heartbeat)),
            "--heartbeat",
            "0.1s..3600s",
        )?;
        check(
            (1..=100_000).contains(&self.max_clients),
            "--max-clients",
            "1..100000",
        )?;
        check(
            (1..=4096).contains(&self.max_requests),
            "--max-requests",
            "1..4096",
        )?;
        check(
            (1024..=16 * 1024 * 1024).contains(&self.send_buffer),
            "send buffer",
            "1 KiB..16 MiB",
        )?;
        check(
            (500..=3_600_000).contains(&ms(self.tcp_user_timeout)),
            "--tcp-user-timeout",
            "500ms..1h",
        )?;
        check(
            (1..=1_000_000).contains(&self.history),
            "--history",
            "1..1000000",
        )?;
        check(
            (1..=1_000_000).contains(&self.queue),
            "--queue",
            "1..1000000",
        )?;
        check(
            (1..=86_400_000).contains(&ms(self.grace)),
            "--grace",
            "1ms..1 day",
        )?;
        check(
            self.rate > 0.0 && self.rate.is_finite(),
            "--rate",
            "a positive number",
        )?;
        check(
            self.burst >= 1.0 && self.burst.is_finite(),
            "--burst",
            ">= 1",
        )?;
        check(
            (1..=1_000_000).contains(&self.max_members),
            "--max-members",
            "1..1000000",
        )?;
        check(
            (50..=3_600_000).contains(&ms(self.header_timeout)),
            "--header-timeout",
            "50ms..1h",
        )?;
        check(
            (10..=3_600_000).contains(&ms(self.body_timeout)),
            "--body-timeout",
            "10ms..1h",
        )?;
        check(
            (1..=100_000).contains(&self.max_pending),
            "--max-pending",
            "1..100000",
        )?;
        check(
            self.cors_origin
                .as_deref()
                .is_none_or(|o| !o.is_empty() && o.bytes().all(|b| b.is_ascii_graphic())),
            "--cors-origin",
            "an origin like https://example.com or *",
        )?;
        if let Some(problem) = self.redis.as_deref().and_then(redis_url_problem) {
            return Err(ConfigError::Invalid {
                setting: "--redis",
                must_be: problem,
            });
        }
        check(
            self.redis_prefix.len() <= 64
                && self.redis_prefix.bytes().all(|b| b.is_ascii_graphic()),
            "--redis-prefix",
            "at most 64 printable ASCII characters, no spaces",
        )?;
        check(
            self.alarm_store != AlarmStoreKind::Redis || self.redis.is_some(),
            "--alarm-store redis",
            "given with --redis URL",
        )?;
        check(
            (10..=60_000).contains(&ms(self.redis_timeout)),
            "--redis-timeout",
            "10ms..60s",
        )?;
        check(
            self.stream_stack >= 16 * 1024,
            "stream stack",
            "at least 16 KiB",
        )?;
        check(
            self.jwt_leeway <= Duration::from_secs(300),
            "--jwt-leeway",
            "0s..5m",
        )?;
        let text_ok = |t: &Option<String>| t.as_deref().is_none_or(|t| !t.is_empty());
        check(text_ok(&self.jwt_audience), "--jwt-audience", "not empty")?;
        check(text_ok(&self.jwt_issuer), "--jwt-issuer", "not empty")?;
        check(
            self.admin_listen
                .is_none_or(|a| a != self.listen || a.port() == 0),
            "--admin-listen",
            "another address than --listen",
        )?;
        check(
            self.chat_tcp.is_none_or(|a| {
                a.port() == 0 || (Some(a) != self.admin_listen && a != self.listen)
            }),
            "--chat-tcp",
            "another address than --listen and --admin-listen",
        )?;
        if !self.auth_on() && !self.insecure {
            let exposed = [
                ("--listen", Some(self.listen)),
                ("--admin-listen", self.admin_listen),
                ("--chat-tcp", self.chat_tcp),
            ]
            .into_iter()
            .find_map(|(flag, a)| a.filter(|a| !a.ip().is_loopback()).map(|a| (flag, a)));
            if let Some((flag, addr)) = exposed {
                return Err(ConfigError::Exposed { flag, addr });
            }
        }
        Ok(())
    }
}

/// A [`Config`] that [`Config::validated`] accepted: what [`crate::Server::start_valid`] takes,
/// so a configuration checked at the edge is not checked again.
#[derive(Debug, Clone)]
pub struct ValidConfig(Config);

impl ValidConfig {
    /// The configuration.
    pub fn into_inner(self) -> Config {
        self.0
    }
}

impl std::ops::Deref for ValidConfig {
    type Target = Config;

    fn deref(&self) -> &Config {
        &self.0
    }
}

impl Config {
    /// Whether tokens are required: a key file is configured.
    pub fn auth_on(&self) -> bool {
        self.jwt_secret_file.is_some() || self.jwt_public_key_file.is_some()
    }

    /// Checks every value (see [`Config::validate`]) and returns the configuration as valid.
    pub fn validated(self) -> Result<ValidConfig, ConfigError> {
        self.validate()?;
        Ok(ValidConfig(self))
    }
}

/// Writes a duration the way [`parse_duration`] reads it: `500ms`, `25s`, or `1.5s` when it is
/// not a whole number of milliseconds.
pub(crate) fn format_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

/// Parses a duration written as `500ms`, `2s`, `1.5s`, `3m`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, ConfigError> {
    let bad = |source| ConfigError::Duration {
        text: text.to_string(),
        source,
    };
    let t = text.trim();
    let (num, unit) = match t.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&t[..i], &t[i..]),
        None => (t, "s"),
    };
    let value: f64 = num.parse().map_err(|e| bad(Some(e)))?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(bad(None)),
    };
    if !secs.is_finite() || !(0.0..=1e7).contains(&secs) {
        return Err(bad(None));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_every_unit() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("15").unwrap(), Duration::from_secs(15));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert!(parse_duration("abc").is_err());
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn defaults_are_valid_and_bounds_are_checked() {
        assert!(Config::default().validate().is_ok());
        let c = Config {
            max_clients: 0,
            ..Config::default()
        };
        assert!(c.validate().is_err());
        let c = Config {
            tcp_user_timeout: Duration::from_millis(100),
            ..Config::default()
        };
        assert!(c.validate().is_err());
    }

    #[test]
    fn a_listener_other_hosts_can_reach_needs_a_key_or_insecure() {
        let open: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let c = Config {
            listen: open,
            ..Config::default()
        };
        let e = c.validate().unwrap_err();
        assert_eq!(
            e,
            ConfigError::Exposed {
                flag: "--listen",
                addr: open
            }
        );
        assert!(e.to_string().contains("--jwt-secret-file"), "{e}");
        assert!(e.to_string().contains("--insecure"), "{e}");
        let insecure = Config {
            insecure: true,
            ..c.clone()
        };
        assert!(insecure.validate().is_ok());
        let keyed = Config {
            jwt_secret_file: Some("s".into()),
            ..c
        };
        assert!(keyed.validate().is_ok());
        let admin = Config {
            admin_listen: Some("[::]:9090".parse().unwrap()),
            ..Config::default()
        };
        assert!(matches!(
            admin.validate(),
            Err(ConfigError::Exposed {
                flag: "--admin-listen",
                ..
            })
        ));
        for loopback in ["127.0.0.1:8080", "[::1]:8080", "127.1.2.3:0"] {
            let c = Config {
                listen: loopback.parse().unwrap(),
                ..Config::default()
            };
            assert!(c.validate().is_ok(), "{loopback}");
        }
    }

    #[test]
    fn errors_say_which_setting_and_keep_their_cause() {
        let c = Config {
            max_clients: 0,
            ..Config::default()
        };
        let e = c.validate().unwrap_err();
        assert_eq!(e.to_string(), "--max-clients must be 1..100000");
        let e = parse_duration("abc").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid duration \"abc\" (use e.g. 500ms, 2s, 1m)"
        );
        assert!(std::error::Error::source(&e).is_some(), "the float error");
        let e = parse_duration("5h").unwrap_err();
        assert!(
            std::error::Error::source(&e).is_none(),
            "a unit, not a number"
        );
    }
}
