//! What every stream shares, alarm or chat: how it takes over its request's socket
//! ([`Streams::open`]), how it answers when it cannot start, and why it ended ([`CloseReason`]).

use std::io;
use std::sync::Arc;

use tiny_http::Request;

use crate::config::Config;
use crate::http::response::Cors;
use crate::http::sse::{SseWriter, WriteLimits};
use crate::http::sweep::ConnTable;
use crate::http::watch::Watcher;
use crate::metrics::Metrics;

/// What opening a stream needs: the connection table and the watcher (the stream's socket is
/// registered with both until it ends), the write limits of its socket, and the CORS headers of
/// its head.
pub(crate) struct Streams {
    conns: Arc<ConnTable>,
    watcher: Arc<Watcher>,
    limits: WriteLimits,
    cors: Cors,
    metrics: Arc<Metrics>,
}

impl Streams {
    /// Streams registered in `conns` and watched by `watcher`, under `config`'s write limits and
    /// CORS origin, their event writes timed in `metrics`.
    pub(crate) fn new(
        conns: Arc<ConnTable>,
        watcher: Arc<Watcher>,
        config: &Config,
        metrics: Arc<Metrics>,
    ) -> Streams {
        Streams {
            conns,
            watcher,
            limits: WriteLimits::of(config),
            cors: Cors::new(config.cors_origin.clone()),
            metrics,
        }
    }

    /// Takes over `request` as an SSE response (see [`SseWriter::start`]).
    pub(crate) fn open(&self, request: Request) -> io::Result<SseWriter> {
        SseWriter::start(
            request,
            &self.conns,
            &self.watcher,
            &self.cors.sse_headers(),
            self.limits,
            &self.metrics,
        )
    }
}

/// Why a stream ended: the `reason=` of its close log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// The client went away (FIN/RST seen, or a write failed).
    ClientGone,
    /// A write stayed blocked past the write time-out: the client stopped reading.
    Stalled,
    /// The server is shutting down.
    Shutdown,
    /// Chat: the member's queue was full.
    Slow,
    /// Chat: a newer stream attached to the same session.
    Replaced,
    /// Chat: the session left.
    Left,
    /// Chat: the session expired.
    Expired,
    /// The token the stream was opened with expired (`event: expired` was sent).
    TokenExpired,
    /// Chat over TCP: the member sent `/quit`.
    Quit,
    /// Chat over TCP: no name (or, with auth on, no token) within `--header-timeout`.
    HeaderTimeout,
}

impl CloseReason {
    /// The stable word used in logs and metrics.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CloseReason::ClientGone => "client-gone",
            CloseReason::Stalled => "stalled",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Slow => "slow",
            CloseReason::Replaced => "replaced",
            CloseReason::Left => "left",
            CloseReason::Expired => "expired",
            CloseReason::TokenExpired => "token-expired",
            CloseReason::Quit => "quit",
            CloseReason::HeaderTimeout => "header-timeout",
        }
    }

    /// The reason a failed write stands for.
    ///
    /// `ETIMEDOUT` from the kernel means it dropped the connection (`TCP_USER_TIMEOUT`,
    /// keepalive or the retransmission limit): the peer is gone, whereas a write that blocked
    /// past `SO_SNDTIMEO` (`WouldBlock`) or an event slower than the write time-out (our own
    /// `TimedOut`, no OS error) is a client that stopped reading.
    pub(crate) fn from_write_error(err: &io::Error) -> CloseReason {
        if err.raw_os_error() == Some(libc::ETIMEDOUT) {
            return CloseReason::ClientGone;
        }
        match err.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => CloseReason::Stalled,
            _ => CloseReason::ClientGone,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_time_out_is_a_gone_client_and_a_blocked_write_a_stalled_one() {
        let kernel = io::Error::from_raw_os_error(libc::ETIMEDOUT);
        assert_eq!(
            CloseReason::from_write_error(&kernel),
            CloseReason::ClientGone
        );
        let blocked = io::Error::from_raw_os_error(libc::EAGAIN);
        assert_eq!(
            CloseReason::from_write_error(&blocked),
            CloseReason::Stalled
        );
        let slow = io::Error::new(io::ErrorKind::TimedOut, "event took longer");
        assert_eq!(CloseReason::from_write_error(&slow), CloseReason::Stalled);
        let reset = io::Error::from_raw_os_error(libc::ECONNRESET);
        assert_eq!(
            CloseReason::from_write_error(&reset),
            CloseReason::ClientGone
        );
    }
}
