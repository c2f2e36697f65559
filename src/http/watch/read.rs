//! The watcher's read path: the sockets it reads for their clients (the chat's TCP members),
//! whole lines into each client's bounded channel, paused while it is full (see the module
//! documentation of [`super`], "The read path").

use super::*;

impl Inner {
    /// Reads the sockets of `tokens` (line readers reported ready, or resumed) until each has
    /// nothing more (`EAGAIN`), ended, or filled its channel (then paused). No lock is held
    /// while a socket is read.
    pub(super) fn read_ready(&self, mut tokens: Vec<u64>) {
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
