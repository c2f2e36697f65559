//! One chat member over plain TCP, on its own thread (`tcp-N`, role `chat-tcp`).
//!
//! Its `select!` loop waits on: the lines the watcher read from its socket (a bounded channel,
//! in order, then EOF), its wake channel in the room once it has a name (events waiting; closed
//! when the room cuts it off as slow), its own shutdown channel, the naming deadline
//! (`--header-timeout`, until it has a name) and, with auth on, its token's expiry. It writes
//! only its own socket, never under the room's lock, with the same write time-out and
//! `SO_SNDBUF` as an SSE stream; keepalive is the kernel's (`SO_KEEPALIVE`, probing after
//! `--heartbeat` of silence, and `TCP_USER_TIMEOUT` on the socket), so nothing but the room's
//! events and the answers to the member's own lines appear on the wire (an `nc` user would see
//! a keepalive line).
//!
//! A TCP member has no token to resume with: its session ends with its connection, with a
//! leave announced in the next `presence` event, whatever ended it (EOF, `/quit`, cut off as
//! slow, a failed write); only at shutdown is the session left as SSE sessions are.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{at, bounded, never, select, Receiver};

use crate::admit::StreamSlot;
use crate::auth::Auth;
use crate::chat::room::{Attached, ChatError, Kick, Room};
use crate::chat::session::Token;
use crate::chat::stream::{deliver, kicked, Sink};
use crate::http::lines::{Input, LINE_MAX};
use crate::http::sse::WriteLimits;
use crate::http::sweep::ConnTable;
use crate::http::validate::valid_name;
use crate::http::watch::{Watched, Watcher};
use crate::metrics::Metrics;
use crate::stream::CloseReason;
use crate::sys::fd;

/// Lines the watcher may queue for a member before it stops reading its socket (back-pressure:
/// the rest waits in the kernel). At most this many lines of [`LINE_MAX`] bytes per member.
pub(crate) const LINE_QUEUE: usize = 8;

/// Most names `/who` lists; the rest are counted (`and N more`).
const WHO_NAMES: usize = 200;

/// Most bytes of a `/who` line: the longest line a member may send.
const WHO_BYTES: usize = LINE_MAX;

/// What every member's thread needs.
pub(crate) struct Members {
    /// The room (the same one the SSE members are in).
    pub(crate) room: Arc<Room>,
    /// Reads the members' sockets.
    pub(crate) watcher: Arc<Watcher>,
    /// The members' descriptors are registered here, so the HTTP sweep and stream search skip
    /// them.
    pub(crate) conns: Arc<ConnTable>,
    /// With auth on, who may chat, under which name (`/auth TOKEN`).
    pub(crate) auth: Arc<Auth>,
    /// Counters.
    pub(crate) metrics: Arc<Metrics>,
    /// Write time-out, send buffer and `TCP_USER_TIMEOUT`, as for SSE streams.
    pub(crate) limits: WriteLimits,
    /// `--header-timeout`: the time to get a name.
    pub(crate) header_timeout: Duration,
    /// `--heartbeat`: how long the socket may be silent before the kernel's first keepalive
    /// probe (the member writes no keepalive line of its own).
    pub(crate) keepalive: Duration,
    /// Stack of a member's thread (`stream_stack`).
    pub(crate) stack: usize,
}

/// Quiet time after which a member gives back the stack pages its last work touched (as a
/// chat stream does: `crate::chat::stream`).
const SETTLE: Duration = Duration::from_secs(1);

/// Serves one connection until it ends; runs on its own thread. `slot` is its place under
/// `--max-clients`.
pub(crate) fn serve(
    cx: Arc<Members>,
    sock: Arc<TcpStream>,
    slot: StreamSlot,
    conn: u64,
    peer: SocketAddr,
) {
    let fd = sock.as_raw_fd();
    tune(fd, &cx.limits, cx.keepalive);
    let _ = sock.set_nodelay(true);
    let mut life = Life::new(&cx, sock.clone(), conn, peer);
    let (line_tx, lines) = bounded(LINE_QUEUE);
    let watched = match cx.watcher.read_lines(sock.clone(), line_tx) {
        Ok(w) => w,
        Err(e) => {
            log::debug!("chat tcp not read conn={conn} error={e}");
            return;
        }
    };
    let mut m = Member {
        cx: &cx,
        out: Out {
            sock,
            timeout: cx.limits.timeout,
            metrics: cx.metrics.clone(),
        },
        conn,
        joined: None,
        expiry: never(),
    };
    crate::sys::thread::batch_scheduling();
    let reason = match m.run(&lines, &slot, &watched) {
        Ok(reason) => reason,
        Err(e) => match m
            .joined
            .as_ref()
            .and_then(|j| cx.room.kick_of(j.att.serial))
        {
            // A write that failed after the room cut the member off: slow is the cause.
            Some(k) if k.reason == CloseReason::Slow => CloseReason::Slow,
            _ if slot.is_closed() => CloseReason::Shutdown,
            _ => CloseReason::from_write_error(&e),
        },
    };
    // Unregistered before the socket can close (the watcher's clone goes with the entry).
    drop(watched);
    life.end(m.joined.take(), reason);
}

/// Write time-out, send buffer and `TCP_USER_TIMEOUT` as an SSE stream's socket gets; the
/// kernel's keepalive probes after `keepalive` of silence (an SSE stream writes a heartbeat
/// instead, which an `nc` user would see as noise), so a peer that vanished from an idle room
/// is found within `keepalive` + `--tcp-user-timeout` (tests/no_fin.rs).
fn tune(fd: RawFd, limits: &WriteLimits, keepalive: Duration) {
    let _ = fd::set_send_timeout(fd, limits.timeout);
    let buffer = limits.send_buffer.min(i32::MAX as usize) as libc::c_int;
    fd::set_int_option(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, buffer);
    crate::http::socket::set_keepalive_probes(fd, keepalive, limits.user_timeout);
}

/// The member's session once it has a name.
struct Joined {
    token: Token,
    att: Attached,
    name: String,
}

/// Logs the open line when made and the close line when ended (or dropped by a panic), keeps
/// the gauges, registers the descriptor with the connection table, and ends the session.
struct Life<'a> {
    cx: &'a Members,
    sock: Arc<TcpStream>,
    conn: u64,
    /// Set by [`Life::end`]; a panic leaves it `None` (logged as a fault).
    ended: bool,
}

impl<'a> Life<'a> {
    fn new(cx: &'a Members, sock: Arc<TcpStream>, conn: u64, peer: SocketAddr) -> Life<'a> {
        cx.metrics.chat_tcp_connections.inc();
        cx.conns.stream_fds_opened(&[sock.as_raw_fd()]);
        log::info!("chat tcp opened conn={conn} peer={peer}");
        Life {
            cx,
            sock,
            conn,
            ended: false,
        }
    }

    /// Ends the session (a leave, unless the server is shutting down), logs the close line.
    fn end(&mut self, joined: Option<Joined>, reason: CloseReason) {
        self.ended = true;
        let name = match joined {
            Some(j) => {
                self.cx.metrics.chat_tcp_members.dec();
                if reason == CloseReason::Shutdown {
                    // As an SSE stream does at shutdown: the room goes with the server.
                    self.cx.room.detach(j.att.key, j.att.serial);
                } else {
                    // No token to come back with: the session ends with the connection.
                    let _ = self.cx.room.leave(&j.token);
                }
                j.name
            }
            None => "-".to_string(),
        };
        if reason == CloseReason::Stalled {
            self.cx.metrics.stalled.inc();
        }
        log::info!(
            "chat tcp closed conn={} name={name} reason={}",
            self.conn,
            reason.as_str()
        );
    }
}

impl Drop for Life<'_> {
    fn drop(&mut self) {
        if !self.ended {
            log::info!(
                "chat tcp closed conn={} name=- reason={}",
                self.conn,
                CloseReason::ClientGone.as_str()
            );
        }
        let fd = self.sock.as_raw_fd();
        self.cx.conns.stream_fds_closed(&[fd]);
        self.cx.metrics.chat_tcp_connections.dec();
        // The FIN goes now, whoever holds the last clone of the socket.
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
    }
}

/// The writing end: whole writes under the write time-out, like `SseWriter`.
struct Out {
    sock: Arc<TcpStream>,
    timeout: Duration,
    metrics: Arc<Metrics>,
}

impl Out {
    /// Writes `bytes` whole. `SO_SNDTIMEO` bounds each `write(2)`; a reader that drains a few
    /// bytes at a time would restart that clock each time, so the whole write has one deadline.
    fn send(&mut self, bytes: &[u8]) -> io::Result<u64> {
        let started = crate::metrics::now_ns();
        (&*self.sock).write_all(bytes)?;
        let ended = crate::metrics::now_ns();
        if Duration::from_nanos(ended.saturating_sub(started)) > self.timeout {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "write took longer than the write time-out",
            ));
        }
        Ok(ended)
    }
}

impl Sink for Out {
    fn send_event(&mut self, bytes: &[u8]) -> io::Result<u64> {
        let started = crate::metrics::now_ns();
        let ended = self.send(bytes)?;
        self.metrics
            .event_write
            .observe_ns(ended.saturating_sub(started));
        Ok(ended)
    }
}

struct Member<'a> {
    cx: &'a Members,
    out: Out,
    conn: u64,
    joined: Option<Joined>,
    /// With auth on, the token's expiry once authenticated; never otherwise.
    expiry: Receiver<Instant>,
}

/// What a line asked for, when it ends the connection.
type Ends = io::Result<Option<CloseReason>>;

impl Member<'_> {
    /// The loop, from the greeting to the close.
    fn run(
        &mut self,
        lines: &Receiver<Input>,
        slot: &StreamSlot,
        watched: &Watched,
    ) -> io::Result<CloseReason> {
        let greeting: &[u8] = if self.cx.auth.on() {
            b"* welcome to syncast chat: authenticate with /auth TOKEN (/help lists the commands)\n"
        } else {
            b"* welcome to syncast chat: set your name with /name NAME (/help lists the commands)\n"
        };
        self.out.send(greeting)?;
        crate::sys::thread::release_unused_stack();
        let deadline = at(Instant::now() + self.cx.header_timeout);
        let mut settle = Duration::MAX;
        loop {
            // Clones (a reference count each): the arms below need `self` whole.
            let wake = self
                .joined
                .as_ref()
                .map_or_else(never, |j| j.att.wake.clone());
            let naming = if self.joined.is_some() {
                never()
            } else {
                deadline.clone()
            };
            let expiry = self.expiry.clone();
            select! {
                recv(lines) -> input => {
                    // The watcher reads on if it had stopped for want of room.
                    watched.resume();
                    let ends = match input {
                        Ok(Input::Line(bytes)) => self.line(&bytes)?,
                        Ok(Input::TooLong) => {
                            self.cx.metrics.chat_tcp_bad_lines[0].inc();
                            self.out.send(b"! line too long (max 4096 bytes): not sent\n")?;
                            None
                        }
                        Ok(Input::Eof) | Err(_) => Some(CloseReason::ClientGone),
                    };
                    if let Some(reason) = ends {
                        return Ok(reason);
                    }
                    settle = SETTLE;
                }
                recv(wake) -> woke => {
                    let kick = match &self.joined {
                        Some(j) if woke.is_err() => Some(self.cx.room.kick_of(j.att.serial)),
                        Some(j) => deliver(&self.cx.metrics, &self.cx.room, &j.att, &mut self.out)?,
                        None => None,
                    };
                    if let Some(kick) = kick {
                        return self.kicked(kick);
                    }
                    settle = SETTLE;
                }
                recv(slot.closed()) -> _ => {
                    let _ = self.out.send(b"* server shutting down\n");
                    return Ok(CloseReason::Shutdown);
                }
                recv(naming) -> _ => {
                    self.cx.metrics.header_timeouts.inc();
                    let what = if self.cx.auth.on() { "/auth TOKEN" } else { "/name NAME" };
                    let line = format!(
                        "! timed out: no {what} within {}\n",
                        crate::config::format_duration(self.cx.header_timeout)
                    );
                    let _ = self.out.send(line.as_bytes());
                    return Ok(CloseReason::HeaderTimeout);
                }
                recv(expiry) -> _ => {
                    let _ = self.out.send(b"! token expired: connect again with a new one\n");
                    return Ok(CloseReason::TokenExpired);
                }
                default(settle) => {
                    crate::sys::thread::release_unused_stack();
                    settle = Duration::MAX;
                }
            }
        }
    }

    /// The room closed the member's attachment (cut off as slow): says so, and ends.
    fn kicked(&mut self, kick: Option<Kick>) -> io::Result<CloseReason> {
        let mut name = self
            .joined
            .as_ref()
            .map(|j| j.name.clone())
            .unwrap_or_default();
        let reason = kicked(&mut name, kick);
        if reason == CloseReason::Slow {
            let _ = self.out.send(b"! too slow, disconnected\n");
        }
        Ok(reason)
    }

    /// One line from the client: a command, or a message.
    fn line(&mut self, bytes: &[u8]) -> Ends {
        let Ok(text) = std::str::from_utf8(bytes) else {
            self.cx.metrics.chat_tcp_bad_lines[1].inc();
            self.out
                .send(b"! invalid UTF-8: lines must be UTF-8 text\n")?;
            return Ok(None);
        };
        if text.contains('\0') {
            self.cx.metrics.chat_tcp_bad_lines[2].inc();
            self.out.send(b"! NUL bytes are not allowed\n")?;
            return Ok(None);
        }
        if text.starts_with("//") {
            // `//text` sends `/text`.
            return self.message(&text[1..]);
        }
        let Some(command) = text.strip_prefix('/') else {
            return self.message(text);
        };
        let (word, arg) = match command.split_once([' ', '\t']) {
            Some((w, a)) => (w, a.trim()),
            None => (command, ""),
        };
        match word.to_ascii_lowercase().as_str() {
            "name" | "nick" => self.name(arg),
            "who" => self.who(),
            "quit" => {
                let _ = self.out.send(b"* bye\n");
                Ok(Some(CloseReason::Quit))
            }
            "auth" => self.auth(arg),
            "help" => {
                self.out.send(HELP.as_bytes())?;
                if self.cx.auth.on() {
                    self.out.send(HELP_AUTH.as_bytes())?;
                }
                Ok(None)
            }
            _ => {
                let line = format!(
                    "! unknown command /{word}: use /name NAME, /who, /quit, /help (//text sends /text)\n"
                );
                self.out.send(line.as_bytes())?;
                Ok(None)
            }
        }
    }

    /// The `! ` line that says what to do first, if the member cannot act yet.
    fn first(&self) -> Option<&'static [u8]> {
        match (&self.joined, self.cx.auth.on()) {
            (Some(_), _) => None,
            (None, true) => Some(b"! authenticate first: /auth TOKEN\n"),
            (None, false) => Some(b"! set a name first: /name NAME\n"),
        }
    }

    fn message(&mut self, text: &str) -> Ends {
        if let Some(say) = self.first() {
            self.out.send(say)?;
            return Ok(None);
        }
        let Some(j) = &self.joined else {
            return Ok(None);
        };
        match self.cx.room.post(&j.token, text) {
            Ok(_) => {}
            Err(ChatError::RateLimited(_)) => {
                self.cx.metrics.reject("rate-limited");
                self.out.send(b"! slow down\n")?;
            }
            // The session is gone (it cannot be, while attached): the connection ends.
            Err(ChatError::Unauthorized) => return Ok(Some(CloseReason::Left)),
            Err(e) => self.refused(&e)?,
        }
        Ok(None)
    }

    /// `! ` and the room's refusal in its HTTP words (`name taken`, `invalid name: …`).
    fn refused(&mut self, e: &ChatError) -> io::Result<()> {
        match e {
            ChatError::NameTaken => self.cx.metrics.reject("name-taken"),
            ChatError::RoomFull => self.cx.metrics.reject("room-full"),
            ChatError::RateLimited(_) => self.cx.metrics.reject("rate-limited"),
            ChatError::InvalidName | ChatError::InvalidText(_) => {
                self.cx.metrics.reject("bad-request")
            }
            _ => {}
        }
        let line = match e {
            ChatError::RateLimited(_) => "! slow down\n".to_string(),
            e => format!("! {e}\n"),
        };
        self.out.send(line.as_bytes()).map(|_| ())
    }

    /// `/name NAME`: joins, or renames once joined (auth off).
    fn name(&mut self, name: &str) -> Ends {
        if self.cx.auth.on() {
            let say: &[u8] = match self.joined {
                None => b"! authenticate first: /auth TOKEN (the name comes from the token)\n",
                Some(_) => b"! forbidden: names come from the token while authentication is on; renaming is off\n",
            };
            self.out.send(say)?;
            return Ok(None);
        }
        if name.is_empty() {
            self.out.send(b"! usage: /name NAME\n")?;
            return Ok(None);
        }
        if let Some(j) = &mut self.joined {
            match self.cx.room.rename(&j.token, name) {
                Ok((_, to)) => {
                    // As the room keeps it (NFC).
                    let line = format!("* you are now {to}\n");
                    j.name = to;
                    self.out.send(line.as_bytes())?;
                }
                Err(ChatError::Unauthorized) => return Ok(Some(CloseReason::Left)),
                Err(e) => self.refused(&e)?,
            }
            return Ok(None);
        }
        self.join(name, None)
    }

    /// Joins the room as `name`; with auth on, until `expires`.
    fn join(&mut self, name: &str, expires: Option<Instant>) -> Ends {
        match self.cx.room.join_lines(name) {
            Ok((token, att)) => {
                self.cx.metrics.chat_tcp_members.inc();
                if let Some(t) = expires {
                    self.expiry = at(t);
                }
                // As the room keeps it (NFC), not as typed.
                let name = att.name.clone();
                let line = format!(
                    "* you are {name}: {} online (/who lists them)\n",
                    att.online_count
                );
                self.joined = Some(Joined { token, att, name });
                self.out.send(line.as_bytes())?;
            }
            Err(e) => self.refused(&e)?,
        }
        Ok(None)
    }

    /// `/who`: `* online: a, b, c`, sorted, at most [`WHO_NAMES`] names in at most
    /// [`WHO_BYTES`] bytes, then `and N more`.
    fn who(&mut self) -> Ends {
        if self.cx.auth.on() && self.joined.is_none() {
            self.out.send(b"! authenticate first: /auth TOKEN\n")?;
            return Ok(None);
        }
        let page = self.cx.room.users(None, WHO_NAMES);
        let line = who_line(&page.names, page.count);
        self.out.send(line.as_bytes())?;
        Ok(None)
    }

    /// `/auth TOKEN` (auth on): joins as the token's name, or, once joined, renews the token
    /// (same name) so the connection outlives the first one's expiry.
    fn auth(&mut self, token: &str) -> Ends {
        if !self.cx.auth.on() {
            self.out
                .send(b"! authentication is off: set a name with /name NAME\n")?;
            return Ok(None);
        }
        let grant = match self.cx.auth.verify(token) {
            Ok(g) => g,
            Err(why) => {
                self.cx.metrics.reject("unauthorized");
                log::info!(
                    "chat tcp auth refused conn={} reason=\"{}\"",
                    self.conn,
                    why.as_str()
                );
                let line = format!("! invalid token: {}\n", why.as_str());
                self.out.send(line.as_bytes())?;
                return Ok(None);
            }
        };
        let name = grant
            .member_name()
            .filter(|n| valid_name(n))
            .map(str::to_string);
        let Some(name) = name else {
            return self.forbidden(
                "the token has no name or sub that is a valid chat name (1-32 characters, no \
                 white space)",
            );
        };
        match &self.joined {
            None => self.join(&name, Some(grant.expires)),
            Some(j) if j.name == name => {
                self.expiry = at(grant.expires);
                self.out.send(b"* token renewed\n")?;
                Ok(None)
            }
            Some(_) => self.forbidden("the name must be the token's name claim (else its sub)"),
        }
    }

    fn forbidden(&mut self, lacks: &str) -> Ends {
        self.cx.metrics.reject("forbidden");
        log::info!("chat tcp auth refused conn={} reason=forbidden", self.conn);
        let line = format!("! forbidden: {lacks}\n");
        self.out.send(line.as_bytes())?;
        Ok(None)
    }
}

/// The `/who` answer for the first `names` of `count` sessions (sorted).
fn who_line(names: &[String], count: usize) -> String {
    if count == 0 {
        return "* online: nobody\n".to_string();
    }
    let mut line = String::from("* online: ");
    let mut shown = 0;
    for name in names {
        let sep = if shown == 0 { "" } else { ", " };
        // Room for the separator, the name, and the longest tail (" and 1000000 more\n").
        if line.len() + sep.len() + name.len() + 20 > WHO_BYTES {
            break;
        }
        line.push_str(sep);
        line.push_str(name);
        shown += 1;
    }
    if count > shown {
        line.push_str(&format!(" and {} more", count - shown));
    }
    line.push('\n');
    line
}

const HELP: &str = "* /name NAME: join as NAME, or rename | /who: who is online | /quit: leave | \
                    //text: send a line that starts with / | any other line: a message to the room\n";

const HELP_AUTH: &str = "* /auth TOKEN: join as the token's name (authentication is on), or \
                         renew the token\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_who_line_is_bounded_and_counts_the_rest() {
        assert_eq!(who_line(&[], 0), "* online: nobody\n");
        let names: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        assert_eq!(who_line(&names, 3), "* online: a, b, c\n");
        assert_eq!(who_line(&names, 10), "* online: a, b, c and 7 more\n");
        // 200 names of 32 bytes do not fit: the line stops short of the cap.
        let long: Vec<String> = (0..200).map(|i| format!("{i:0>32}")).collect();
        let line = who_line(&long, 10_000);
        assert!(line.len() <= WHO_BYTES, "{}", line.len());
        let shown = line.matches(", ").count() + 1;
        assert!(
            line.ends_with(&format!(" and {} more\n", 10_000 - shown)),
            "{line}"
        );
    }
}
