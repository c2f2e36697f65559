//! The watcher: one thread that sees every stream's client leave, so the stream's own thread
//! ends within a fraction of a second instead of at its next write.
//!
//! A stream's socket has its read half shut (`SHUT_RD`, [`crate::http::socket`]), so epoll
//! cannot report the peer's FIN as readability: `EPOLLIN | EPOLLRDHUP` are set for good once our
//! own `RCV_SHUTDOWN` is (tcp_poll). But the FIN still *wakes* the socket: `tcp_fin` calls
//! `sk_state_change`, whose wake-up carries no event mask (`sock_def_wakeup`), so epoll polls the
//! socket again and reports whatever asked-for event is set then. Each stream socket is
//! registered edge-triggered for `EPOLLOUT` (writable: nearly always set) and is therefore
//! reported once per wake-up of its own wait queue; the watcher then reads its `TCP_INFO` state.
//! Data from the client does not report it (that wake-up carries `EPOLLIN`, filtered out), nor
//! do our own writes; a send buffer that was full and drains does, once. So:
//!
//! | the client | the socket | seen by | `how` |
//! | --- | --- | --- | --- |
//! | closes (FIN: a browser tab, `curl` ended) | `CLOSE_WAIT` | an `EPOLLOUT` report, then `TCP_INFO` | `fin` |
//! | resets (RST), or the kernel gives up on it (`TCP_USER_TIMEOUT`, keepalive) | `CLOSE`, error set | `EPOLLHUP`/`EPOLLERR`, reported whatever the mask | `hangup` |
//! | anything epoll did not report (a FIN that came while our send buffer was full) | not `ESTABLISHED` | the sweep, every 5 s | `sweep` |
//!
//! While nobody leaves, idle streams cost the watcher nothing but its sweep. The sweep, every
//! [`SWEEP`], is the safety net: one `sock_diag` dump of the host's sockets in
//! `CLOSE_WAIT` on the server's port ([`crate::sys::diag`]: the kernel walks its whole table
//! of connections, every process's, about 70 ns each, so ~1.4 ms with 10,000 streams and their
//! 10,000 clients on one host; `TCP_INFO` of each of those streams would cost ~5 ms), matched
//! by inode; where `sock_diag` is unavailable (netlink refused by a sandbox,
//! such as the shipped systemd unit's `RestrictAddressFamilies`) it reads `TCP_INFO` of
//! `1/`[`TCP_INFO_ROUND`] of the sockets watched now, so each is checked every 10 s.
//!
//! A stream is told through its zero-capacity `gone` channel (`try_send`: the watcher never
//! blocks, and a poke reaches the stream only while it waits in `select!`). A poke the stream
//! missed (it was writing) is sent again every [`RETELL`] until the stream unregisters. The
//! stream then checks its own socket, verified by its addresses
//! ([`crate::http::socket::StreamSocket`]), before it ends: a descriptor number read after it
//! was reused can at worst wake a stream that carries on, and says so ([`Watched::still_open`]).
//!
//! The thread runs only while something is watched: the first registration starts it, and it
//! ends (joined by the dispatcher's reap) when the last one goes, so an idle server keeps its
//! thread count. At shutdown [`Watcher::shutdown`] wakes it through its eventfd and `join_all`
//! joins it.
//!
//! ## The read path: sockets the watcher reads (the chat's TCP clients, issue 17)
//!
//! A chat TCP client's socket (accepted by syncast itself: no tiny_http, no `SHUT_RD`) is
//! registered by [`Watcher::read_lines`] with [`Interest::Lines`] (`EPOLLIN | EPOLLRDHUP`,
//! edge-triggered), which do work on such a socket: data, the peer's FIN (EOF) and a reset are
//! each reported once. The watcher then reads it without blocking (`MSG_DONTWAIT`), at most
//! [`lines::BUFFER_MAX`] bytes held for the client ([`lines::Splitter`]), and hands each whole
//! line to the client's bounded channel with `try_send`, in order, then [`Input::Eof`]. A
//! channel that is full is *back-pressure*, not a fault: the watcher stops reading that socket
//! (the rest waits in the kernel's receive buffer, and TCP's window slows the sender), and the
//! client's thread, once it took a line, asks for more ([`Watched::resume`]: a poke through
//! the eventfd); both sides decide under the watcher's lock, so the pause cannot be missed.
//! So a paste of a thousand lines is read at the pace its thread answers, never cut off, and a
//! client costs at most its line cap plus its channel here. Such sockets are not in the sweep
//! (their EOF is reported as readability) and are not told through `gone`: EOF comes after the
//! lines the client sent before it, through the same channel, so none is lost.
//!
//! The socket is shared (`Arc<TcpStream>`): the entry's clone keeps the descriptor open while
//! the watcher reads it, even if the client's thread drops its own at that moment, so a read
//! never lands on a reused descriptor number.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use parking_lot::Mutex;

use crate::http::lines::{self, Input, Splitter};
use crate::metrics::{Gone as How, Metrics};
use crate::sys::diag::{self, SockDiag};
use crate::sys::epoll::{Epoll, EventFd, Interest, Ready};
use crate::sys::fd;
use crate::threads::{Role, Threads, SERVICE_STACK};

/// How often the sweep looks for clients that left without epoll reporting it (a safety net:
/// normally it finds nothing). A dump walks the kernel's whole table of connections, every
/// process's and `TIME_WAIT` ones too: ~1.4 ms with 10,000 streams and their clients on one
/// host, more on a host crowded with other sockets (docs/performance.md).
pub(crate) const SWEEP: Duration = Duration::from_secs(5);

/// Without `sock_diag`: sweeps per round of `TCP_INFO` reads, each socket once a round (every
/// 10 s).
pub(crate) const TCP_INFO_ROUND: usize = 2;

/// How often a stream found gone is told again until it unregisters (a poke is lost if the
/// stream was not waiting in `select!`).
pub(crate) const RETELL: Duration = Duration::from_millis(250);

/// The token of the watcher's own wake-up eventfd in the epoll set.
const WAKE: u64 = 0;

/// Which of its ways the watcher uses; all but tests use [`Paths::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Paths {
    /// Act on epoll's state-change reports (the FIN path). Off: only hang-ups and the sweep.
    pub(crate) epoll_state: bool,
    /// How the sweep looks.
    pub(crate) sweep: SweepBy,
}

/// How the sweep looks for clients that left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SweepBy {
    /// A `sock_diag` dump, or `TCP_INFO` reads where that is unavailable.
    Auto,
    /// `TCP_INFO` reads, as where `sock_diag` is unavailable.
    TcpInfo,
    /// No sweep (unit tests of the epoll paths alone).
    #[cfg(test)]
    Off,
}

impl Paths {
    /// Every way: what the server uses.
    pub(crate) const ALL: Paths = Paths {
        epoll_state: true,
        sweep: SweepBy::Auto,
    };

    /// What a configuration asks for: [`Paths::ALL`] unless a test-only switch says otherwise.
    pub(crate) fn of(config: &crate::config::Config) -> Paths {
        let mut paths = Paths::ALL;
        if config.watch_sweep_only {
            paths.epoll_state = false;
        }
        if config.force_tcp_info_watch {
            paths.sweep = SweepBy::TcpInfo;
        }
        paths
    }
}

/// The server's watcher (cheap to share: the streams register through it).
pub(crate) struct Watcher {
    inner: Arc<Inner>,
}

struct Inner {
    /// The listening address: a dumped socket is ours if its local address matches.
    local: SocketAddr,
    epoll: Epoll,
    wake: EventFd,
    state: Mutex<State>,
    threads: Threads,
    metrics: Arc<Metrics>,
    epoll_state: bool,
    sweep: SweepBy,
    /// `sock_diag` failed once: the sweep reads `TCP_INFO` from then on.
    no_diag: AtomicBool,
    /// The sweep's mode line was logged.
    announced: AtomicBool,
}

#[derive(Default)]
struct State {
    entries: BTreeMap<u64, Entry>,
    by_inode: HashMap<u64, u64>,
    /// Tokens found gone and not unregistered yet: told again every [`RETELL`].
    gone: HashSet<u64>,
    next: u64,
    /// A watcher thread runs (or is being spawned).
    running: bool,
    /// Shutdown began: no thread is started again.
    shut: bool,
    /// The `TCP_INFO` sweep's position: the last token it checked.
    cursor: u64,
    /// Line readers whose client's thread asked for more after a pause ([`Watched::resume`]).
    resumed: Vec<u64>,
}

struct Entry {
    fd: RawFd,
    inode: u64,
    kind: Kind,
}

/// What the watcher does with a socket.
enum Kind {
    /// A stream's: tell `tell` when its client left.
    Stream { tell: Sender<()> },
    /// A socket it reads: its lines go to the reader's channel.
    Lines(Box<Reader>),
}

/// The read side of one socket the watcher reads.
struct Reader {
    sock: Arc<TcpStream>,
    lines: Sender<Input>,
    /// `None` while the watcher reads the socket (outside its lock).
    split: Option<Splitter>,
    /// The channel was full: not read again until the client's thread resumes it.
    paused: bool,
}

impl Entry {
    fn tell(&self) -> Option<&Sender<()>> {
        match &self.kind {
            Kind::Stream { tell } => Some(tell),
            Kind::Lines(_) => None,
        }
    }

    fn reader(&mut self) -> Option<&mut Reader> {
        match &mut self.kind {
            Kind::Lines(r) => Some(r),
            Kind::Stream { .. } => None,
        }
    }
}

/// One watched socket; dropping it unregisters the socket, and must happen before the
/// descriptor is closed.
pub(crate) struct Watched {
    inner: Arc<Inner>,
    token: u64,
}

impl Watcher {
    /// A watcher for the streams of the server listening on `local`, using `paths`. The thread
    /// starts with the first registration.
    pub(crate) fn new(
        local: SocketAddr,
        threads: Threads,
        metrics: Arc<Metrics>,
        paths: Paths,
    ) -> io::Result<Arc<Watcher>> {
        let epoll = Epoll::new()?;
        let wake = EventFd::new()?;
        epoll.add(wake.raw(), WAKE, Interest::Readable)?;
        Ok(Arc::new(Watcher {
            inner: Arc::new(Inner {
                local,
                epoll,
                wake,
                state: Mutex::new(State {
                    // Token 0 is the eventfd's.
                    next: WAKE,
                    ..State::default()
                }),
                threads,
                metrics,
                epoll_state: paths.epoll_state,
                sweep: paths.sweep,
                no_diag: AtomicBool::new(false),
                announced: AtomicBool::new(false),
            }),
        }))
    }

    /// Watches the stream socket `fd` (which the caller owns and verified): `tell` gets a
    /// `try_send` when its client is found gone, and again every [`RETELL`] until the returned
    /// guard is dropped. Starts the watcher thread if none runs. Fails only if `fd` is not open.
    pub(crate) fn watch(&self, fd: RawFd, tell: Sender<()>) -> io::Result<Watched> {
        self.register(fd, Kind::Stream { tell }, Interest::StateChanges)
    }

    /// Reads `sock` (a chat TCP client's, which its thread writes) from now on: each whole
    /// line goes to `lines` in order, then [`Input::Eof`] when the client closes or the
    /// connection breaks. When `lines` is full the watcher stops reading until the thread
    /// calls [`Watched::resume`] (after each line it takes). Starts the watcher thread if none
    /// runs. Fails only if the socket is not open.
    pub(crate) fn read_lines(
        &self,
        sock: Arc<TcpStream>,
        lines: Sender<Input>,
    ) -> io::Result<Watched> {
        let fd = sock.as_raw_fd();
        let reader = Reader {
            sock,
            lines,
            split: Some(Splitter::default()),
            paused: false,
        };
        self.register(fd, Kind::Lines(Box::new(reader)), Interest::Lines)
    }

    fn register(&self, fd: RawFd, kind: Kind, interest: Interest) -> io::Result<Watched> {
        let inode = fd::inode(fd).ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))?;
        let (token, start) = {
            let mut st = self.inner.state.lock();
            st.next += 1;
            let token = st.next;
            if let Kind::Stream { .. } = kind {
                // Only streams are looked up by the sweep's dump.
                st.by_inode.insert(inode, token);
            }
            st.entries.insert(token, Entry { fd, inode, kind });
            self.inner
                .metrics
                .streams_watched
                .set(st.entries.len() as u64);
            let start = !st.running && !st.shut;
            st.running |= start;
            (token, start)
        };
        // In the map before epoll has it: a report that comes at once finds its entry (the
        // first comes at once: the socket is writable when added).
        if let Err(e) = self.inner.epoll.add(fd, token, interest) {
            // Then only the sweep and a failed write see this client leave.
            log::warn!("watcher cannot add socket error={e}");
        }
        if start {
            self.inner.start();
        }
        Ok(Watched {
            inner: self.inner.clone(),
            token,
        })
    }

    /// Shutdown: wakes the thread, which ends (then joined by `join_all`); none starts again.
    pub(crate) fn shutdown(&self) {
        self.inner.state.lock().shut = true;
        self.inner.wake.notify();
    }

    /// Lets go of the inode table after a peak of streams (see [`crate::sys::mem::shrink_map`]).
    pub(crate) fn shrink(&self) {
        let mut st = self.inner.state.lock();
        crate::sys::mem::shrink_map(&mut st.by_inode);
        crate::sys::mem::shrink_set(&mut st.gone);
    }

    /// Sockets watched now.
    #[cfg(test)]
    pub(crate) fn watched(&self) -> usize {
        self.inner.state.lock().entries.len()
    }

    /// Whether a watcher thread runs now.
    #[cfg(test)]
    pub(crate) fn running(&self) -> bool {
        self.inner.state.lock().running
    }
}

impl Watched {
    /// From now on the client's leaving is told to `tx` (and the sender given to
    /// [`Watcher::watch`] is dropped).
    pub(crate) fn tell_through(&self, tx: Sender<()>) {
        if let Some(e) = self.inner.state.lock().entries.get_mut(&self.token) {
            if let Kind::Stream { tell } = &mut e.kind {
                *tell = tx;
            }
        }
    }

    /// A line reader's thread took a line: if the watcher had stopped reading because the
    /// channel was full, it reads on now (woken through its eventfd). Cheap when not paused.
    pub(crate) fn resume(&self) {
        let mut st = self.inner.state.lock();
        let token = self.token;
        let paused = st
            .entries
            .get_mut(&token)
            .and_then(Entry::reader)
            .is_some_and(|r| std::mem::take(&mut r.paused));
        if paused {
            st.resumed.push(token);
            drop(st);
            self.inner.wake.notify();
        }
    }

    /// The stream checked its socket after a poke and found it still open (a false alarm: a
    /// descriptor number read after it was reused): stop telling it.
    pub(crate) fn still_open(&self) {
        self.inner.state.lock().gone.remove(&self.token);
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        let (entry, last) = {
            let mut st = self.inner.state.lock();
            st.gone.remove(&self.token);
            let entry = st.entries.remove(&self.token);
            if let Some(e) = &entry {
                if st.by_inode.get(&e.inode) == Some(&self.token) {
                    st.by_inode.remove(&e.inode);
                }
            }
            self.inner
                .metrics
                .streams_watched
                .set(st.entries.len() as u64);
            (entry, st.entries.is_empty() && st.running)
        };
        // Epoll keys a registration by file and number: remove it only through a number that
        // is still this socket (the caller still holds it open). A number closed already (a
        // duplicate tiny_http closed) leaves a registration that goes with the socket.
        if let Some(e) = entry {
            if fd::inode(e.fd) == Some(e.inode) {
                let _ = self.inner.epoll.delete(e.fd);
            }
        }
        if last {
            // Nothing left to watch: the thread ends now rather than at its next sweep.
            self.inner.wake.notify();
        }
    }
}

impl Inner {
    fn start(self: &Arc<Self>) {
        let me = self.clone();
        let spawned =
            self.threads
                .spawn(Role::Watcher, "watcher".into(), SERVICE_STACK, move || {
                    me.run()
                });
        if let Err(e) = spawned {
            // Streams still end on a failed write; the next registration tries again.
            self.state.lock().running = false;
            log::error!("thread spawn failed role=watcher error={e}");
        }
    }

    /// The thread: reports as they come, the sweep every [`SWEEP`], re-tells every [`RETELL`]
    /// while a stream found gone has not left, until shutdown or nothing is watched.
    fn run(self: Arc<Self>) {
        let mut diag = self.open_diag();
        let mut ready: Vec<Ready> = Vec::with_capacity(256);
        let mut next_sweep = Instant::now() + SWEEP;
        let mut next_retell: Option<Instant> = None;
        loop {
            let due = next_retell.map_or(next_sweep, |r| r.min(next_sweep));
            ready.clear();
            if let Err(e) = self
                .epoll
                .wait(&mut ready, due.saturating_duration_since(Instant::now()))
            {
                // Not expected (EBADF, EINVAL): leave, and let the next registration restart.
                log::error!("watcher stopped error={e}");
                self.state.lock().running = false;
                return;
            }
            let mut hung = Vec::new();
            let mut changed = Vec::new();
            let mut readable = Vec::new();
            {
                let st = &mut *self.state.lock();
                for r in &ready {
                    if r.token == WAKE {
                        self.wake.drain();
                        readable.append(&mut st.resumed);
                        continue;
                    }
                    match st.entries.get(&r.token).map(|e| &e.kind) {
                        // A hang-up of a socket we read is read too: EOF, after its lines.
                        Some(Kind::Lines(_)) => readable.push(r.token),
                        Some(Kind::Stream { .. }) if r.hangup => hung.push(r.token),
                        Some(Kind::Stream { .. }) => changed.push(r.token),
                        None => {}
                    }
                }
            }
            if !readable.is_empty() {
                self.read_ready(readable);
            }
            if !hung.is_empty() {
                tell_all(self.mark(&hung, How::Hangup));
            }
            if !changed.is_empty() && self.epoll_state {
                let left = self.not_established(&changed);
                tell_all(self.mark(&left, How::Fin));
            }
            let now = Instant::now();
            if now >= next_sweep {
                let started = Instant::now();
                self.sweep(&mut diag);
                self.metrics
                    .watcher_sweep_us
                    .set(started.elapsed().as_micros() as u64);
                next_sweep = Instant::now() + SWEEP;
            }
            if next_retell.is_some_and(|r| now >= r) {
                self.retell();
                next_retell = None;
            }
            // Under the lock registrations take, so none can slip between the check and the
            // exit: a later one sees `running` false and starts a new thread.
            let mut st = self.state.lock();
            if st.shut || st.entries.is_empty() {
                st.running = false;
                return;
            }
            if !st.gone.is_empty() && next_retell.is_none() {
                next_retell = Some(now + RETELL);
            }
        }
    }

    /// A `sock_diag` socket that answered one dump, or `None` (the sweep reads `TCP_INFO`).
    fn open_diag(&self) -> Option<SockDiag> {
        match self.sweep {
            SweepBy::TcpInfo => {
                self.announce("tcp-info", "forced");
                return None;
            }
            #[cfg(test)]
            SweepBy::Off => return None,
            SweepBy::Auto if self.no_diag.load(Ordering::Relaxed) => return None,
            SweepBy::Auto => {}
        }
        let tried = SockDiag::open().and_then(|mut d| {
            d.dump(
                self.local.is_ipv6(),
                diag::CLOSE_WAIT,
                self.local.port(),
                |_| {},
            )?;
            Ok(d)
        });
        match tried {
            Ok(d) => {
                self.metrics.watcher_sock_diag.set(1);
                self.announce("sock-diag", "");
                Some(d)
            }
            Err(e) => {
                self.no_diag.store(true, Ordering::Relaxed);
                self.metrics.watcher_sock_diag.set(0);
                self.announce("tcp-info", &e.to_string());
                None
            }
        }
    }

    fn announce(&self, sweep: &str, reason: &str) {
        if !self.announced.swap(true, Ordering::Relaxed) {
            if reason.is_empty() {
                log::info!("watcher sweep={sweep}");
            } else {
                log::info!("watcher sweep={sweep} reason={reason:?}");
            }
        }
    }

    /// Marks `tokens` gone (those still registered and not marked yet, counted by `how`);
    /// returns the channels to tell now.
    fn mark(&self, tokens: &[u64], how: How) -> Vec<Sender<()>> {
        let mut st = self.state.lock();
        let mut tell = Vec::new();
        for &t in tokens {
            let Some(tx) = st.entries.get(&t).and_then(|e| e.tell().cloned()) else {
                continue;
            };
            if st.gone.insert(t) {
                tell.push(tx);
            }
        }
        drop(st);
        self.metrics.stream_gone(how, tell.len() as u64);
        tell
    }

    /// Of `tokens`, those whose socket is no longer `ESTABLISHED` (`TCP_INFO`, read outside the
    /// lock: a number closed meanwhile reads as not a socket, or as another one, and its token
    /// is then gone from the map, so [`Inner::mark`] skips it).
    fn not_established(&self, tokens: &[u64]) -> Vec<u64> {
        let fds: Vec<(u64, RawFd)> = {
            let st = self.state.lock();
            tokens
                .iter()
                .filter_map(|t| {
                    let e = st.entries.get(t).filter(|e| e.tell().is_some())?;
                    Some((*t, e.fd))
                })
                .collect()
        };
        fds.into_iter()
            .filter(|&(_, fd)| fd::established(fd) == Some(false))
            .map(|(t, _)| t)
            .collect()
    }

    /// The safety net: closed clients epoll did not report (a dump, or the next `TCP_INFO`
    /// batch), marked and told.
    fn sweep(&self, diag: &mut Option<SockDiag>) {
        #[cfg(test)]
        if self.sweep == SweepBy::Off {
            return;
        }
        if let Some(d) = diag.as_mut() {
            let local = self.local;
            let mut closing: Vec<u64> = Vec::new();
            let dumped = d.dump(local.is_ipv6(), diag::CLOSE_WAIT, local.port(), |s| {
                if fd::listens_on(local, Some(s.local)) {
                    closing.push(u64::from(s.inode));
                }
            });
            match dumped {
                Ok(_) => {
                    let tokens: Vec<u64> = {
                        let st = self.state.lock();
                        closing
                            .iter()
                            .filter_map(|ino| st.by_inode.get(ino).copied())
                            .collect()
                    };
                    tell_all(self.mark(&tokens, How::Sweep));
                    return;
                }
                Err(e) => {
                    log::warn!("watcher sweep=tcp-info reason={:?}", e.to_string());
                    self.no_diag.store(true, Ordering::Relaxed);
                    self.metrics.watcher_sock_diag.set(0);
                    *diag = None;
                }
            }
        }
        let batch = self.next_batch();
        let left = self.not_established(&batch);
        tell_all(self.mark(&left, How::Sweep));
    }

    /// The next `1/TCP_INFO_ROUND` of the sockets watched now, in token order (so a socket
    /// watched through a whole round is checked exactly once in it, however many come and go).
    fn next_batch(&self) -> Vec<u64> {
        let mut st = self.state.lock();
        // Streams only: the sockets the watcher reads see their EOF as readability.
        let streams = st.entries.values().filter(|e| e.tell().is_some()).count();
        let per = streams.div_ceil(TCP_INFO_ROUND);
        let from = st.cursor.saturating_add(1);
        let batch: Vec<u64> = st
            .entries
            .range(from..)
            .filter(|(_, e)| e.tell().is_some())
            .take(per)
            .map(|(&t, _)| t)
            .collect();
        st.cursor = match batch.last() {
            Some(&t) if batch.len() == per => t,
            // The end: the next sweep starts a new round.
            _ => 0,
        };
        batch
    }

    /// Tells every stream found gone that has not unregistered yet.
    fn retell(&self) {
        let tell: Vec<Sender<()>> = {
            let st = self.state.lock();
            st.gone
                .iter()
                .filter_map(|t| st.entries.get(t).and_then(|e| e.tell().cloned()))
                .collect()
        };
        tell_all(tell);
    }
}

fn tell_all(tell: Vec<Sender<()>>) {
    for tx in tell {
        // Zero capacity: reaches the stream only while it waits; told again after RETELL.
        let _ = tx.try_send(());
    }
}

mod read;
#[cfg(test)]
mod tests;
