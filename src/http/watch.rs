//! The watcher: one thread that sees every stream's client leave, so the stream's own thread
//! ends within a fraction of a second instead of at its next keepalive.
//!
//! A stream's socket has its read half shut (`SHUT_RD`, [`crate::http::socket`]), so epoll
//! cannot report the peer's FIN on it: `EPOLLIN | EPOLLRDHUP` are set for good once our own
//! `RCV_SHUTDOWN` is (tcp_poll). What each way of leaving looks like, and what sees it:
//!
//! | the client | the socket | seen by |
//! | --- | --- | --- |
//! | closes (FIN: a browser tab, `curl` ended) | `CLOSE_WAIT` | the periodic `sock_diag` dump of `CLOSE_WAIT` sockets ([`crate::sys::diag`]), matched by inode |
//! | resets (RST), or the kernel gives up on it (`TCP_USER_TIMEOUT`, keepalive) | `CLOSE`, error set | epoll: `EPOLLHUP`/`EPOLLERR`, reported whatever the interest mask |
//!
//! Every [`PASS`] the thread dumps the sockets in `CLOSE_WAIT` on the server's port (one netlink
//! request, well under a millisecond for the whole host) and tells the streams it finds; in
//! between it blocks in `epoll_wait` on every stream socket (registered one-shot, for hang-ups
//! only) and its own wake-up eventfd. Where `sock_diag` is unavailable (netlink refused by a
//! sandbox) it reads `TCP_INFO` of `1/`[`FALLBACK_ROUND`] of the sockets per pass instead, so
//! each is checked every two seconds, sized by the sockets watched now.
//!
//! A stream is told through its zero-capacity `gone` channel (`try_send`: the watcher never
//! blocks, and a poke reaches the stream only while it waits in `select!`). A poke the stream
//! missed (it was writing) is sent again every pass until the stream unregisters. The stream
//! then checks its own socket, verified by its addresses ([`crate::http::socket::StreamSocket`]),
//! before it ends: a reused descriptor number or inode can at worst wake a stream that carries
//! on, and says so ([`Watched::still_open`]).
//!
//! The thread runs only while something is watched: the first registration starts it, and it
//! ends (joined by the dispatcher's reap) after a pass that found nothing registered, so an idle
//! server keeps its thread count. At shutdown [`Watcher::shutdown`] wakes it through the eventfd
//! and `join_all` joins it.
//!
//! ## The hook for transports that own their sockets (issue 17)
//!
//! A plain-TCP transport (sockets syncast accepts itself: no tiny_http, no `SHUT_RD`) would
//! register with an interest that asks for readability as well: `EPOLLIN | EPOLLRDHUP`, which
//! do work on such a socket, so a FIN is seen at once without the dump. The watcher would then
//! read the socket (non-blocking, into a buffer bounded by the line cap) and hand each complete
//! line to the registration's bounded channel with `try_send` (full: the client is cut off as
//! slow, as a chat stream is), and tell `gone` on EOF. That is a new [`crate::sys::epoll::Interest`]
//! (level-triggered readable) plus a per-entry line buffer; the registration, the token map,
//! the hang-up path, the re-tell and the shutdown stay as they are. Not built yet: nothing
//! registers such a socket today.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use parking_lot::Mutex;

use crate::metrics::{Gone as How, Metrics};
use crate::sys::diag::{self, SockDiag};
use crate::sys::epoll::{Epoll, EventFd, Interest, Ready};
use crate::sys::fd;
use crate::threads::{Role, Threads, SERVICE_STACK};

/// How often the watcher looks for sockets in `CLOSE_WAIT` (and re-tells streams it found gone).
/// At 10,000 streams a pass costs ~0.3 ms (docs/performance.md): 4 a second stay far inside the
/// idle-CPU target, and a closed client is seen within a quarter of a second.
pub(crate) const PASS: Duration = Duration::from_millis(250);

/// Without `sock_diag`: passes per round of `TCP_INFO` reads, each socket once a round (every
/// 2 s at [`PASS`]).
pub(crate) const FALLBACK_ROUND: usize = 8;

/// The token of the watcher's own wake-up eventfd in the epoll set.
const WAKE: u64 = 0;

/// The server's watcher (cheap to share: the streams register through it).
pub(crate) struct Watcher {
    inner: Arc<Inner>,
}

struct Inner {
    /// The listening address: a dump's socket is ours if its local address matches.
    local: SocketAddr,
    epoll: Epoll,
    wake: EventFd,
    state: Mutex<State>,
    threads: Threads,
    metrics: Arc<Metrics>,
    /// `sock_diag` is not to be used (asked for, or it failed once).
    no_diag: AtomicBool,
    /// The mode line was logged.
    announced: AtomicBool,
}

#[derive(Default)]
struct State {
    entries: BTreeMap<u64, Entry>,
    by_inode: HashMap<u64, u64>,
    /// Tokens found gone and not unregistered yet: told again every pass.
    gone: HashSet<u64>,
    next: u64,
    /// A watcher thread runs (or is being spawned).
    running: bool,
    /// Shutdown began: no thread is started again.
    shut: bool,
    /// The fallback's position: the last token it checked.
    cursor: u64,
}

struct Entry {
    fd: RawFd,
    inode: u64,
    tell: Sender<()>,
}

/// One watched socket; dropping it unregisters the socket, and must happen before the
/// descriptor is closed.
pub(crate) struct Watched {
    inner: Arc<Inner>,
    token: u64,
}

impl Watcher {
    /// A watcher for the streams of the server listening on `local`; `tcp_info_only` skips
    /// `sock_diag` (a test hook, `Config::force_tcp_info_watch`). The thread starts with the
    /// first registration.
    pub(crate) fn new(
        local: SocketAddr,
        threads: Threads,
        metrics: Arc<Metrics>,
        tcp_info_only: bool,
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
                no_diag: AtomicBool::new(tcp_info_only),
                announced: AtomicBool::new(false),
            }),
        }))
    }

    /// Watches the stream socket `fd` (which the caller owns and verified): `tell` gets a
    /// `try_send` when its client is found gone, again every pass until the returned guard is
    /// dropped. Starts the watcher thread if none runs. Fails only if `fd` is not open.
    pub(crate) fn watch(&self, fd: RawFd, tell: Sender<()>) -> io::Result<Watched> {
        let inode = fd::inode(fd).ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))?;
        let (token, start) = {
            let mut st = self.inner.state.lock();
            st.next += 1;
            let token = st.next;
            st.entries.insert(token, Entry { fd, inode, tell });
            st.by_inode.insert(inode, token);
            let start = !st.running && !st.shut;
            st.running |= start;
            (token, start)
        };
        self.inner
            .metrics
            .streams_watched
            .set(self.inner.state.lock().entries.len() as u64);
        // In the map before epoll has it: a hang-up reported at once finds its entry.
        if let Err(e) = self.inner.epoll.add(fd, token, Interest::HangupOnce) {
            // Only resets then go unseen until the next write; the dump still sees a FIN.
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
    /// The stream checked its socket after a poke and found it still open (a false alarm: the
    /// fallback read a descriptor number that had been reused): stop telling it.
    pub(crate) fn still_open(&self) {
        self.inner.state.lock().gone.remove(&self.token);
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        let entry = {
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
            entry
        };
        // Epoll keys a registration by file and number: remove it only through a number that
        // is still this socket (the caller still holds it open). A number closed already (a
        // duplicate tiny_http closed) leaves a registration that goes with the socket.
        if let Some(e) = entry {
            if fd::inode(e.fd) == Some(e.inode) {
                let _ = self.inner.epoll.delete(e.fd);
            }
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

    /// The thread: hang-ups as they come, a pass every [`PASS`], until shutdown or nothing is
    /// watched.
    fn run(self: Arc<Self>) {
        let mut diag = self.open_diag();
        let mut ready: Vec<Ready> = Vec::with_capacity(256);
        let mut next_pass = Instant::now();
        loop {
            ready.clear();
            let wait = next_pass.saturating_duration_since(Instant::now());
            if let Err(e) = self.epoll.wait(&mut ready, wait) {
                // Not expected (EBADF, EINVAL): leave, and let the next registration restart.
                log::error!("watcher stopped error={e}");
                self.state.lock().running = false;
                return;
            }
            if ready.iter().any(|r| r.token == WAKE) {
                self.wake.drain();
            }
            let hung: Vec<u64> = ready
                .iter()
                .filter(|r| r.token != WAKE && r.hangup)
                .map(|r| r.token)
                .collect();
            if !hung.is_empty() {
                // Told at once, not at the next pass.
                let tell = self.mark(&hung, How::Hangup);
                tell_all(tell);
            }
            let passed = Instant::now() >= next_pass;
            if passed {
                let started = Instant::now();
                self.pass(&mut diag);
                self.metrics
                    .watcher_pass_us
                    .set(started.elapsed().as_micros() as u64);
                next_pass = Instant::now() + PASS;
            }
            // Under the lock registrations take, so none can slip between the check and the
            // exit: a later one sees `running` false and starts a new thread. Empty is checked
            // only after a pass, so streams coming and going start at most 4 threads a second.
            let mut st = self.state.lock();
            if st.shut || (passed && st.entries.is_empty()) {
                st.running = false;
                return;
            }
        }
    }

    /// A `sock_diag` socket that answered one dump, or `None` (the fallback).
    fn open_diag(&self) -> Option<SockDiag> {
        if self.no_diag.load(Ordering::Relaxed) {
            self.announce("tcp-info", "forced");
            return None;
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

    fn announce(&self, mode: &str, reason: &str) {
        if !self.announced.swap(true, Ordering::Relaxed) {
            if reason.is_empty() {
                log::info!("watcher mode={mode}");
            } else {
                log::info!("watcher mode={mode} reason={reason:?}");
            }
        }
    }

    /// Marks `tokens` gone (those still registered and not marked yet, counted by `how`);
    /// returns the channels to tell.
    fn mark(&self, tokens: &[u64], how: How) -> Vec<Sender<()>> {
        let mut st = self.state.lock();
        let mut tell = Vec::new();
        let mut newly = 0;
        for &t in tokens {
            let Some(e) = st.entries.get(&t) else {
                continue;
            };
            let tx = e.tell.clone();
            if st.gone.insert(t) {
                newly += 1;
                tell.push(tx);
            }
        }
        drop(st);
        self.metrics.stream_gone(how, newly);
        tell
    }

    /// One pass: find closed clients (dump, or the fallback's batch), then tell every stream
    /// found gone so far that has not unregistered.
    fn pass(&self, diag: &mut Option<SockDiag>) {
        if let Some(d) = diag.as_mut() {
            let local = self.local;
            let mut closing: Vec<u64> = Vec::new();
            match d.dump(local.is_ipv6(), diag::CLOSE_WAIT, local.port(), |s| {
                if fd::listens_on(local, Some(s.local)) {
                    closing.push(u64::from(s.inode));
                }
            }) {
                Ok(_) => {
                    let tokens: Vec<u64> = {
                        let st = self.state.lock();
                        closing
                            .iter()
                            .filter_map(|ino| st.by_inode.get(ino).copied())
                            .collect()
                    };
                    self.mark(&tokens, How::Fin);
                }
                Err(e) => {
                    log::warn!("watcher mode=tcp-info reason={:?}", e.to_string());
                    self.no_diag.store(true, Ordering::Relaxed);
                    self.metrics.watcher_sock_diag.set(0);
                    *diag = None;
                }
            }
        }
        if diag.is_none() {
            self.check_batch();
        }
        let tell: Vec<Sender<()>> = {
            let st = self.state.lock();
            st.gone
                .iter()
                .filter_map(|t| st.entries.get(t).map(|e| e.tell.clone()))
                .collect()
        };
        tell_all(tell);
    }

    /// The fallback: `TCP_INFO` of the next `1/FALLBACK_ROUND` of the sockets watched now (in
    /// token order, so a socket watched through a whole round is checked exactly once in it).
    fn check_batch(&self) {
        let batch: Vec<(u64, RawFd)> = {
            let mut st = self.state.lock();
            let per = st.entries.len().div_ceil(FALLBACK_ROUND);
            let from = st.cursor.saturating_add(1);
            let batch: Vec<(u64, RawFd)> = st
                .entries
                .range(from..)
                .take(per)
                .map(|(&t, e)| (t, e.fd))
                .collect();
            st.cursor = match batch.last() {
                Some(&(t, _)) if batch.len() == per => t,
                // The end: the next pass starts a new round.
                _ => 0,
            };
            batch
        };
        let left: Vec<u64> = batch
            .into_iter()
            .filter(|&(_, fd)| fd::established(fd) == Some(false))
            .map(|(t, _)| t)
            .collect();
        if !left.is_empty() {
            self.mark(&left, How::TcpInfo);
        }
    }
}

fn tell_all(tell: Vec<Sender<()>>) {
    for tx in tell {
        // Zero capacity: reaches the stream only while it waits; sent again next pass.
        let _ = tx.try_send(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::{bounded, Receiver};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};

    struct Rig {
        listener: TcpListener,
        watcher: Arc<Watcher>,
        threads: Threads,
        metrics: Arc<Metrics>,
    }

    fn rig(tcp_info_only: bool) -> Rig {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let threads = Threads::new();
        let metrics = Arc::new(Metrics::default());
        let watcher = Watcher::new(
            listener.local_addr().unwrap(),
            threads.clone(),
            metrics.clone(),
            tcp_info_only,
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
    }

    fn told(gone: &Receiver<()>) -> bool {
        gone.recv_timeout(Duration::from_secs(20)).is_ok()
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

    fn fin_and_reset_are_told(tcp_info_only: bool) {
        let r = rig(tcp_info_only);
        let fin = r.conn();
        let reset = r.conn();
        let open = r.conn();
        assert!(r.watcher.running());
        drop(fin.client);
        assert!(told(&fin.gone), "a FIN is told");
        rst(&reset.client);
        drop(reset.client);
        assert!(told(&reset.gone), "a reset is told");
        // A poke missed is sent again: the FIN'd stream is told on later passes too.
        assert!(told(&fin.gone), "told again until it unregisters");
        assert!(
            open.gone.recv_timeout(PASS * 3).is_err(),
            "an open one is never told"
        );
        let counts: Vec<u64> = How::ALL.iter().map(|&h| r.metrics.gone(h)).collect();
        if tcp_info_only {
            // The FIN only the TCP_INFO round sees; the reset epoll reports at once (unless a
            // round read it first).
            assert!(counts[2] >= 1 && counts[0] == 0, "{counts:?}");
        } else {
            assert_eq!(counts, vec![1, 1, 0], "each counted once: fin, hangup");
        }
        assert_eq!(counts.iter().sum::<u64>(), 2, "each counted once");
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
    }

    #[test]
    fn a_fin_and_a_reset_are_told_through_sock_diag_and_epoll() {
        fin_and_reset_are_told(false);
    }

    #[test]
    fn without_sock_diag_the_tcp_info_round_tells_them_too() {
        fin_and_reset_are_told(true);
    }

    /// A stream leaves (unregistered first, as `SseWriter` does) while its socket stays open
    /// elsewhere and its client then closes; a new stream's socket takes over its descriptor
    /// number. The watcher tells neither: not the old token (gone), not the new stream (its
    /// socket is another, with another inode, and established).
    fn a_reused_descriptor_number_is_not_confused(tcp_info_only: bool) {
        let r = rig(tcp_info_only);
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
            new_gone
                .recv_timeout(PASS * (FALLBACK_ROUND as u32 + 2))
                .is_err(),
            "the old connection's FIN is not the new stream's"
        );
        assert!(old_gone.try_recv().is_err());
        assert_eq!(r.metrics.gone(How::Fin) + r.metrics.gone(How::TcpInfo), 0);
        drop(new_client);
        assert!(new_gone.recv_timeout(Duration::from_secs(20)).is_ok());
        drop((new_watched, new_side, old_keep));
    }

    #[test]
    fn a_reused_descriptor_number_is_not_confused_with_sock_diag() {
        a_reused_descriptor_number_is_not_confused(false);
    }

    #[test]
    fn a_reused_descriptor_number_is_not_confused_with_tcp_info() {
        a_reused_descriptor_number_is_not_confused(true);
    }

    #[test]
    fn shutdown_wakes_the_thread_and_it_is_joined() {
        let r = rig(false);
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

    #[test]
    fn a_false_alarm_stops_being_told() {
        let r = rig(true);
        let c = r.conn();
        // Pretend the fallback misread it.
        let t = c.watched.as_ref().unwrap().token;
        let tell = r.watcher.inner.mark(&[t], How::TcpInfo);
        assert_eq!(tell.len(), 1);
        c.watched.as_ref().unwrap().still_open();
        assert!(c.gone.recv_timeout(PASS * 3).is_err());
    }
}
