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

impl Inner {
    /// Reads the sockets of `tokens` (line readers reported ready, or resumed) until each has
    /// nothing more (`EAGAIN`), ended, or filled its channel (then paused). No lock is held
    /// while a socket is read.
    fn read_ready(&self, mut tokens: Vec<u64>) {
        // Every read fits the cap of what one client may have held: on the watcher's stack.
        let mut scratch = [0u8; lines::BUFFER_MAX];
        while let Some(t) = tokens.pop() {
            let taken = {
                let mut st = self.state.lock();
                st.entries
                    .get_mut(&t)
                    .and_then(Entry::reader)
                    .filter(|r| !r.paused)
                    .and_then(|r| {
                        // Nothing more to read once EOF was handed out.
                        if r.split.as_ref().is_some_and(|s| !s.done()) {
                            r.split.take().map(|s| (r.sock.clone(), r.lines.clone(), s))
                        } else {
                            None
                        }
                    })
            };
            let Some((sock, tx, mut split)) = taken else {
                continue;
            };
            let finished = self.read_into(&sock, &tx, &mut split, &mut scratch);
            let again = {
                let mut st = self.state.lock();
                match st.entries.get_mut(&t).and_then(Entry::reader) {
                    Some(r) => {
                        r.split = Some(split);
                        // Paused under the lock the resume takes: a line taken since the channel
                        // was found full is seen here, or the taker sees `paused` (module text).
                        let full = !finished && tx.is_full();
                        r.paused = full;
                        !finished && !full
                    }
                    None => false,
                }
            };
            if again {
                tokens.push(t);
            } else if !finished {
                self.metrics.chat_tcp_paused.inc();
            }
            // The last clone may be this one (the client's thread let go meanwhile): the
            // socket closes here, outside the lock.
            drop(sock);
        }
    }

    /// Hands out what `split` holds and reads `sock` on; `true` once it read everything there
    /// is (`EAGAIN`) or handed out [`Input::Eof`], `false` when `tx` was full.
    fn read_into(
        &self,
        sock: &TcpStream,
        tx: &Sender<Input>,
        split: &mut Splitter,
        scratch: &mut [u8],
    ) -> bool {
        loop {
            let offered = split.drain(|input| {
                let line = matches!(input, Input::Line(_));
                match tx.try_send(input) {
                    Ok(()) => {
                        if line {
                            self.metrics.chat_tcp_lines.inc();
                        }
                        true
                    }
                    Err(crossbeam_channel::TrySendError::Full(_)) => false,
                    // The client's thread has ended: nobody wants it.
                    Err(crossbeam_channel::TrySendError::Disconnected(_)) => true,
                }
            });
            if !offered {
                return false;
            }
            if split.done() {
                return true;
            }
            let room = split.room().min(scratch.len());
            match fd::recv_nonblocking(sock.as_raw_fd(), &mut scratch[..room]) {
                Ok(0) => split.close(),
                Ok(n) => split.push(&scratch[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Reset, timed out by the kernel: the end, like EOF.
                Err(_) => split.close(),
            }
        }
    }
}

fn tell_all(tell: Vec<Sender<()>>) {
    for tx in tell {
        // Zero capacity: reaches the stream only while it waits; told again after RETELL.
        let _ = tx.try_send(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::{bounded, Receiver};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};

    /// Epoll alone, no sweep.
    const EPOLL: Paths = Paths {
        epoll_state: true,
        sweep: SweepBy::Off,
    };
    /// The sweep alone, by `sock_diag`.
    const DIAG: Paths = Paths {
        epoll_state: false,
        sweep: SweepBy::Auto,
    };
    /// The sweep alone, by `TCP_INFO`.
    const TCP_INFO: Paths = Paths {
        epoll_state: false,
        sweep: SweepBy::TcpInfo,
    };

    /// Long enough for any one way to have seen a socket: a whole `TCP_INFO` round and a bit.
    fn a_while(paths: Paths) -> Duration {
        if paths.epoll_state {
            RETELL * 2
        } else {
            SWEEP * (TCP_INFO_ROUND as u32 + 1)
        }
    }

    struct Rig {
        listener: TcpListener,
        watcher: Arc<Watcher>,
        threads: Threads,
        metrics: Arc<Metrics>,
    }

    fn rig(paths: Paths) -> Rig {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let threads = Threads::new();
        let metrics = Arc::new(Metrics::default());
        let watcher = Watcher::new(
            listener.local_addr().unwrap(),
            threads.clone(),
            metrics.clone(),
            paths,
        )
        .unwrap();
        Rig {
            listener,
            watcher,
            threads,
            metrics,
        }
    }

    /// A connection whose accepted side is watched with its read half shut, like a stream's.
    /// (`watched` first: fields drop in order, and a socket is unregistered before it closes.)
    struct Conn {
        watched: Option<Watched>,
        client: TcpStream,
        side: TcpStream,
        gone: Receiver<()>,
    }

    impl Rig {
        fn conn(&self) -> Conn {
            let client = TcpStream::connect(self.listener.local_addr().unwrap()).unwrap();
            let (side, _) = self.listener.accept().unwrap();
            fd::shut_read(side.as_raw_fd());
            let (tx, gone) = bounded(0);
            let watched = Some(self.watcher.watch(side.as_raw_fd(), tx).unwrap());
            Conn {
                watched,
                client,
                side,
                gone,
            }
        }

        fn counts(&self) -> Vec<u64> {
            How::ALL.iter().map(|&h| self.metrics.gone(h)).collect()
        }
    }

    /// Told within a generous bound: the `TCP_INFO` sweep reaches a socket within 10 s.
    fn told(gone: &Receiver<()>) -> bool {
        gone.recv_timeout(Duration::from_secs(60)).is_ok()
    }

    fn rst(s: &TcpStream) {
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: linger is a valid struct of the size passed.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                &linger as *const libc::linger as *const libc::c_void,
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
    }

    fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn epoll_alone_tells_a_fin_and_a_reset_and_the_thread_lives_only_while_needed() {
        let r = rig(EPOLL);
        assert!(
            !r.watcher.running(),
            "no thread before the first registration"
        );
        let fin = r.conn();
        let reset = r.conn();
        let open = r.conn();
        assert!(r.watcher.running());
        drop(fin.client);
        assert!(told(&fin.gone), "a FIN is told");
        rst(&reset.client);
        drop(reset.client);
        assert!(told(&reset.gone), "a reset is told");
        // A poke missed is sent again: the FIN'd stream is told again until it unregisters.
        assert!(told(&fin.gone), "told again");
        assert!(
            open.gone.recv_timeout(a_while(EPOLL)).is_err(),
            "an open one is never told"
        );
        assert_eq!(r.counts(), vec![1, 1, 0], "each once: fin, hangup");
        drop((fin.watched, reset.watched, fin.side, reset.side));
        assert_eq!(r.watcher.watched(), 1);
        // The last one leaves: the thread ends by itself and is joined.
        drop(open);
        wait_until("the watcher thread to end", || r.threads.live() == 0);
        assert!(!r.watcher.running());
        assert_eq!(r.threads.reap(), 1);
        // And starts again with the next registration.
        let again = r.conn();
        assert!(r.watcher.running());
        drop(again.client);
        assert!(told(&again.gone));
        assert_eq!(r.counts(), vec![2, 1, 0]);
    }

    fn the_sweep_alone_tells_a_fin(paths: Paths, sock_diag: u64) {
        let r = rig(paths);
        let fin = r.conn();
        let open = r.conn();
        drop(fin.client);
        assert!(told(&fin.gone), "the sweep tells a FIN");
        assert!(open.gone.recv_timeout(a_while(paths)).is_err());
        assert_eq!(r.counts(), vec![0, 0, 1], "found by the sweep");
        assert_eq!(r.metrics.watcher_sock_diag.get(), sock_diag);
        drop((fin.watched, open));
    }

    #[test]
    fn the_sweep_alone_tells_a_fin_with_sock_diag() {
        the_sweep_alone_tells_a_fin(DIAG, 1);
    }

    #[test]
    fn the_sweep_alone_tells_a_fin_by_reading_tcp_info() {
        the_sweep_alone_tells_a_fin(TCP_INFO, 0);
    }

    /// A stream leaves (unregistered first, as `SseWriter` does) while its socket stays open
    /// elsewhere and its client then closes; a new stream's socket takes over its descriptor
    /// number. The watcher tells neither: not the old token (gone), not the new stream (its
    /// socket is another, with another inode, and established).
    fn a_reused_descriptor_number_is_not_confused(paths: Paths) {
        let r = rig(paths);
        let old = r.conn();
        let Conn {
            client: old_client,
            side: old_side,
            watched,
            gone: old_gone,
        } = old;
        drop(watched);
        let number = old_side.into_raw_fd();
        // SAFETY: `number` is ours; dup keeps the old socket open under another number.
        let old_keep = unsafe { TcpStream::from_raw_fd(libc::dup(number)) };
        let new_client = TcpStream::connect(r.listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = r.listener.accept().unwrap();
        // SAFETY: dup2 onto our own number replaces the old socket there with the new one in
        // one step (no other thread can take the number meanwhile); `number` is then owned
        // by `new_side` alone.
        assert_eq!(unsafe { libc::dup2(accepted.as_raw_fd(), number) }, number);
        drop(accepted);
        let new_side = unsafe { TcpStream::from_raw_fd(number) };
        fd::shut_read(number);
        let (tx, new_gone) = bounded(0);
        let new_watched = r.watcher.watch(number, tx).unwrap();
        drop(old_client);
        wait_until("the old socket in CLOSE_WAIT", || {
            fd::established(old_keep.as_raw_fd()) == Some(false)
        });
        assert!(
            new_gone.recv_timeout(a_while(paths)).is_err(),
            "the old connection's FIN is not the new stream's"
        );
        assert!(old_gone.try_recv().is_err());
        assert_eq!(r.counts(), vec![0, 0, 0]);
        drop(new_client);
        assert!(told(&new_gone));
        drop((new_watched, new_side, old_keep));
    }

    #[test]
    fn a_reused_descriptor_number_is_not_confused_by_epoll() {
        a_reused_descriptor_number_is_not_confused(EPOLL);
    }

    #[test]
    fn a_reused_descriptor_number_is_not_confused_by_sock_diag() {
        a_reused_descriptor_number_is_not_confused(DIAG);
    }

    #[test]
    fn a_reused_descriptor_number_is_not_confused_by_tcp_info() {
        a_reused_descriptor_number_is_not_confused(TCP_INFO);
    }

    #[test]
    fn shutdown_wakes_the_thread_and_it_is_joined() {
        let r = rig(Paths::ALL);
        let c = r.conn();
        assert!(r.watcher.running());
        r.watcher.shutdown();
        let (joined, left) = r.threads.join_all(Instant::now() + Duration::from_secs(20));
        assert_eq!((joined, left), (1, 0));
        assert!(!r.watcher.running());
        // No thread starts after shutdown; unregistering still works.
        let late = r.conn();
        assert!(!r.watcher.running());
        drop((c, late));
        assert_eq!(r.watcher.watched(), 0);
    }

    /// A client and the accepted side, read by the watcher into a channel of `capacity`.
    fn lines_conn(r: &Rig, capacity: usize) -> (TcpStream, Watched, Receiver<Input>) {
        let client = TcpStream::connect(r.listener.local_addr().unwrap()).unwrap();
        let (side, _) = r.listener.accept().unwrap();
        let (tx, rx) = bounded(capacity);
        let watched = r.watcher.read_lines(Arc::new(side), tx).unwrap();
        (client, watched, rx)
    }

    fn next_input(rx: &Receiver<Input>) -> Input {
        rx.recv_timeout(Duration::from_secs(20))
            .expect("an input in time")
    }

    #[test]
    fn lines_come_in_order_then_eof_and_the_thread_ends_with_the_last_reader() {
        use std::io::Write;
        let r = rig(EPOLL);
        let (mut client, watched, rx) = lines_conn(&r, 16);
        client.write_all(b"/name bob\r\nhel").unwrap();
        assert_eq!(next_input(&rx), Input::Line(b"/name bob"[..].into()));
        client.write_all(b"lo\n").unwrap();
        assert_eq!(next_input(&rx), Input::Line(b"hello"[..].into()));
        // The last line and the FIN in one go: the line first, then EOF.
        client.write_all(b"bye").unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(next_input(&rx), Input::Line(b"bye"[..].into()));
        assert_eq!(next_input(&rx), Input::Eof);
        assert!(rx.recv_timeout(RETELL * 2).is_err(), "nothing after EOF");
        assert_eq!(r.metrics.chat_tcp_lines.get(), 3);
        assert_eq!(r.counts(), vec![0, 0, 0], "not counted as a stream gone");
        drop(watched);
        wait_until("the watcher thread to end", || r.threads.live() == 0);
    }

    #[test]
    fn a_full_channel_pauses_reading_and_a_resume_reads_on_with_nothing_lost() {
        use std::io::Write;
        let r = rig(EPOLL);
        let (mut client, watched, rx) = lines_conn(&r, 2);
        let writer = std::thread::spawn(move || {
            for i in 0..2000 {
                client.write_all(format!("line {i}\n").as_bytes()).unwrap();
            }
            client
        });
        let mut got = 0;
        while got < 2000 {
            match next_input(&rx) {
                Input::Line(l) => assert_eq!(&*l, format!("line {got}").as_bytes()),
                other => panic!("{other:?}"),
            }
            got += 1;
            watched.resume();
        }
        assert!(r.metrics.chat_tcp_paused.get() > 0, "it did pause");
        // A reset after the lines: EOF.
        let client = writer.join().unwrap();
        rst(&client);
        drop(client);
        assert_eq!(next_input(&rx), Input::Eof);
    }

    #[test]
    fn a_false_alarm_stops_being_told() {
        let r = rig(EPOLL);
        let c = r.conn();
        // As if a read of a reused number had marked it.
        let t = c.watched.as_ref().unwrap().token;
        assert_eq!(r.watcher.inner.mark(&[t], How::Sweep).len(), 1);
        assert!(told(&c.gone), "told again while marked");
        c.watched.as_ref().unwrap().still_open();
        assert!(c.gone.recv_timeout(RETELL * 3).is_err());
    }
}
