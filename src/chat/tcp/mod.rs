//! The chat room over plain TCP (`--chat-tcp`, issue 17): the Go original's own transport.
//! Clients dial the port, set a name with `/name NAME` and send lines; they meet the SSE
//! members in the same room (docs/protocol.md#chat-over-plain-tcp).
//!
//! - this file: [`ChatTcp`], the listener and its accept thread (`tcp-accept`), which admits
//!   each connection (a place under `--max-clients`, room under `--max-members`) and spawns its
//!   thread, or answers a `! ` line and closes it without spending one;
//! - [`member`]: one member's thread (`tcp-N`), a `select!` loop over its lines, its wake
//!   channel in the room, its shutdown channel, its naming deadline and its token's expiry.
//!
//! Reading a socket cannot be a `select!` arm: the watcher reads every member's socket
//! (`crate::http::watch`, the read path) and hands whole lines to the member's bounded channel.
//!
//! The accept thread blocks in `accept(2)` and costs nothing while nobody dials. Shutdown ends
//! it with `shutdown(SHUT_RD)` on the listening socket, which wakes a blocked `accept` with
//! `EINVAL` on Linux (and refuses new connections from then on): no self-connect, no second
//! thread, no poll.

mod member;

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};

use crate::admit::{Admission, Refusal};
use crate::threads::{Role, Threads};
pub(crate) use member::Members;

/// Stack of a member's thread: a chat stream's.
const ACCEPT_STACK: usize = 64 * 1024;

/// The listener and its accept thread.
pub(crate) struct ChatTcp {
    local: SocketAddr,
    listener: Arc<TcpListener>,
    stopping: Arc<AtomicBool>,
    /// Dropped at shutdown: wakes the accept thread from a back-off wait.
    stop: Option<Sender<()>>,
}

impl ChatTcp {
    /// Binds `addr` (before anything else starts, so a bad address fails the start).
    pub(crate) fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
        TcpListener::bind(addr)
    }

    /// Starts the accept thread on `listener`; members are served with `members`, admitted by
    /// `admit`, and spawned in `threads`.
    pub(crate) fn start(
        listener: TcpListener,
        members: Arc<Members>,
        admit: Arc<Admission>,
        threads: Threads,
    ) -> io::Result<ChatTcp> {
        let local = listener.local_addr()?;
        let listener = Arc::new(listener);
        let stopping = Arc::new(AtomicBool::new(false));
        let (stop, stopped) = bounded::<()>(0);
        let accept = Accept {
            listener: listener.clone(),
            stopping: stopping.clone(),
            stopped,
            members,
            admit,
            threads: threads.clone(),
        };
        threads.spawn(
            Role::TcpAccept,
            "tcp-accept".into(),
            ACCEPT_STACK,
            move || accept.run(),
        )?;
        log::info!("chat tcp listening addr={local}");
        Ok(ChatTcp {
            local,
            listener,
            stopping,
            stop: Some(stop),
        })
    }

    /// The address it listens on.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.local
    }

    /// Stops accepting: the accept thread ends (joined by `join_all`), and new connections are
    /// refused by the kernel. Members are closed through their own shutdown channels.
    pub(crate) fn shutdown(&mut self) {
        self.stopping.store(true, Ordering::Release);
        drop(self.stop.take());
        // SAFETY: shutdown(2) on our own listening socket, which stays open (the Arc).
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RD) };
    }
}

/// What the accept thread owns.
struct Accept {
    listener: Arc<TcpListener>,
    stopping: Arc<AtomicBool>,
    stopped: Receiver<()>,
    members: Arc<Members>,
    admit: Arc<Admission>,
    threads: Threads,
}

/// Back-off of the accept loop after an error that a retry at once would repeat (out of
/// descriptors or memory): doubling from this, up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

impl Accept {
    fn run(self) {
        let mut backoff = BACKOFF_MIN;
        loop {
            match self.listener.accept() {
                Ok((sock, peer)) => {
                    backoff = BACKOFF_MIN;
                    self.admit_one(sock, peer);
                }
                Err(_) if self.stopping.load(Ordering::Acquire) => return,
                Err(e) => match e.raw_os_error() {
                    // The connection went before it was taken, or a signal: next one.
                    Some(libc::ECONNABORTED | libc::EINTR | libc::EPROTO | libc::EPERM) => {}
                    _ => {
                        // EMFILE, ENFILE, ENOBUFS, ENOMEM: the connection waits in the backlog;
                        // try again after a pause that shutdown cuts short.
                        log::error!(
                            "chat tcp accept failed error={e}; retrying in {}ms",
                            backoff.as_millis()
                        );
                        match self.stopped.recv_timeout(backoff) {
                            Err(RecvTimeoutError::Timeout) => {}
                            _ => return,
                        }
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                },
            }
        }
    }

    /// Admits one connection: a place under `--max-clients`, room in the room, a thread. A
    /// refusal is a `! ` line and the connection closed, with no thread spent on it.
    fn admit_one(&self, sock: TcpStream, peer: SocketAddr) {
        let conn = self.admit.next_conn();
        let Some(slot) = self.admit.tcp_slot() else {
            let max = self.admit.max_clients();
            log::warn!("chat tcp refused reason=max-clients conn={conn} peer={peer} max={max}");
            return refuse(&sock, b"! too many clients: try again later\n");
        };
        if self.members.room.is_full() {
            self.members.metrics.reject("room-full");
            log::warn!("chat tcp refused reason=room-full conn={conn} peer={peer}");
            return refuse(&sock, b"! the room is full: try again later\n");
        }
        let sock = Arc::new(sock);
        let (members, theirs) = (self.members.clone(), sock.clone());
        let spawned = self.threads.spawn(
            Role::ChatTcp,
            format!("{}-{conn}", Role::ChatTcp.stream_prefix()),
            members.stack,
            move || member::serve(members, theirs, slot, conn, peer),
        );
        if let Err(e) = spawned {
            // The refused closure was dropped with its socket and slot; ours is still open.
            self.admit.count_refusal(Refusal::ThreadSpawn);
            log::error!("thread spawn failed role=chat-tcp error={e}");
            refuse(&sock, b"! cannot start a thread: try again later\n");
        }
    }
}

/// Says why in one line and closes: never blocking the accept thread (a fresh connection's
/// send buffer is empty, and the write does not wait in any case).
fn refuse(sock: &TcpStream, line: &[u8]) {
    let _ = crate::sys::fd::send_nonblocking(sock.as_raw_fd(), line);
    let _ = sock.shutdown(Shutdown::Both);
}
