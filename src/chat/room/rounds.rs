//! Where the room's wake rounds run: on a thread of their own (`chat-waker`), so that whoever
//! broadcast (the dispatcher with a post, the chat on Redis's reader, a TCP member) goes on at
//! once, and broadcasts made while a round runs share the next round.
//!
//! Why (issue 13, item 5, measured in docs/performance.md): a round is one `try_send` per
//! attached stream, and to a parked stream that is a futex wake-up, ~4 µs each, so ~4 ms for
//! 1,000 members. Run by the broadcaster, it held up the next request for that long: in a burst
//! of posts, each sent when the previous one's `202` came back, every post waited for the round
//! before it (POST round trip 10–20 ms under the burst), and every member was woken once per
//! post and wrote once per post. Here the poster's `202` goes out after the append alone, the
//! posts of a burst arrive while a round runs, and the next round (and each woken member's one
//! take) carries all of them.
//!
//! At rest nothing waits: a broadcast pokes the thread's one-slot channel and the round starts
//! at once, as the broadcaster's own round did. The thread runs only while there is work: the
//! first round starts it, and it ends when a round finds no stream attached (the last stream's
//! detach asks for such a round), so an idle server keeps its thread count; at shutdown it ends
//! with the shutdown channel and is joined by `join_all`. Where no thread can run (none was set
//! up, as in unit tests; shutdown began; the OS refused the thread) the broadcaster runs the
//! round itself, as before.

use crossbeam_channel::{bounded, select, Receiver, Sender, TrySendError};
use parking_lot::Mutex;

use crate::threads::{Role, Threads, SERVICE_STACK};

/// The round thread's state, kept by the room.
#[derive(Default)]
pub(crate) struct Rounds {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Set once the server wires the room up ([`Rounds::run_on`]); `None`: rounds run inline.
    spawn: Option<Spawn>,
    /// The running thread's one-slot channel: a message asks for a round. `None`: no thread.
    wanted: Option<Sender<()>>,
}

struct Spawn {
    threads: Threads,
    shutdown: Receiver<()>,
}

/// What a caller does after asking for a round.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Asked {
    /// The thread runs it.
    Queued,
    /// No thread runs rounds: the caller runs it itself.
    Inline,
}

impl Rounds {
    /// From now on rounds run on a `chat-waker` thread registered in `threads`, which ends when
    /// `shutdown` disconnects.
    pub(crate) fn run_on(&self, threads: Threads, shutdown: Receiver<()>) {
        self.state.lock().spawn = Some(Spawn { threads, shutdown });
    }

    /// Asks for a round: pokes the running thread, or starts one running `body` (which gets
    /// the thread's two channels and runs [`run`]). [`Asked::Inline`]: no thread runs rounds,
    /// the caller runs this one itself.
    pub(crate) fn ask<F>(&self, body: F) -> Asked
    where
        F: FnOnce(Receiver<()>, Receiver<()>) + Send + 'static,
    {
        let mut st = self.state.lock();
        if let Some(wanted) = &st.wanted {
            match wanted.try_send(()) {
                // Full: a round is asked for already, and it takes what this one would have.
                Ok(()) | Err(TrySendError::Full(())) => return Asked::Queued,
                // The thread ended (shutdown): from now on the caller runs its rounds.
                Err(TrySendError::Disconnected(())) => st.wanted = None,
            }
        }
        let Some(spawn) = &st.spawn else {
            return Asked::Inline;
        };
        if matches!(
            spawn.shutdown.try_recv(),
            Err(crossbeam_channel::TryRecvError::Disconnected)
        ) {
            st.spawn = None;
            return Asked::Inline;
        }
        let (tx, rx) = bounded::<()>(1);
        let _ = tx.try_send(());
        let (threads, shutdown) = (spawn.threads.clone(), spawn.shutdown.clone());
        // The thread's channel is in place before the lock is let go: a broadcast asking
        // meanwhile finds it full, and the thread's first round covers that broadcast too. The
        // OS creates the thread without this lock held (as the registry's own lock is not), so
        // no other broadcaster waits for it.
        st.wanted = Some(tx.clone());
        drop(st);
        let spawned = threads.spawn(
            Role::ChatWaker,
            "chat-waker".into(),
            SERVICE_STACK,
            move || body(rx, shutdown),
        );
        match spawned {
            Ok(_) => Asked::Queued,
            Err(e) => {
                log::error!("thread spawn failed role=chat-waker error={e}");
                let mut st = self.state.lock();
                if st.wanted.as_ref().is_some_and(|w| w.same_channel(&tx)) {
                    st.wanted = None;
                }
                // The caller's round, run inline, comes after every broadcast that found
                // this channel full (each asked before this), so it covers them.
                Asked::Inline
            }
        }
    }

    /// Whether a round thread runs now (the last stream's detach then asks it for a round, so
    /// that it sees nothing attached and ends).
    pub(crate) fn running(&self) -> bool {
        self.state.lock().wanted.is_some()
    }

    /// The round thread found nothing attached: it ends, unless a round was asked for since or
    /// a stream attached (`idle` asks, under the room's lock). Under the state lock, so an
    /// [`Rounds::ask`] either pokes this thread before it looks (and it runs on) or finds no
    /// thread and starts one.
    fn may_end(&self, wanted: &Receiver<()>, idle: impl FnOnce() -> bool) -> bool {
        let mut st = self.state.lock();
        if wanted.is_empty() && idle() {
            st.wanted = None;
            return true;
        }
        false
    }
}

/// The round thread's loop: a round per poke (`round`), until shutdown, or until a round
/// leaves nothing attached (`idle`) and nothing more is asked.
pub(crate) fn run(
    rounds: &Rounds,
    wanted: Receiver<()>,
    shutdown: Receiver<()>,
    round: impl Fn(),
    idle: impl Fn() -> bool,
) {
    loop {
        select! {
            recv(wanted) -> asked => {
                if asked.is_err() {
                    return;
                }
                round();
                if idle() && rounds.may_end(&wanted, &idle) {
                    return;
                }
            }
            recv(shutdown) -> _ => return,
        }
    }
}
