//! Line framing for the sockets the watcher reads itself (the chat's plain-TCP transport,
//! `crate::chat::tcp`): bytes in, whole lines out, never more than [`BUFFER_MAX`] bytes held
//! for one client.
//!
//! A line ends in `\n` or `\r\n` (the terminator is not part of it). A line of more than
//! [`LINE_MAX`] bytes is discarded whole: [`Input::TooLong`] is handed out as soon as the
//! splitter knows (the cap is passed without a terminator, or a terminator comes too late), and
//! the rest of that line, up to its `\n`, is skipped as it arrives. Empty lines are dropped
//! here: the line protocol ignores them, so they cost the client's thread nothing. At the end of
//! input a last line without a terminator still counts (`printf 'hi' | nc`), then
//! [`Input::Eof`]. Whether a line is UTF-8 without NUL is for its reader to judge.
//!
//! The splitter is pure (no socket, no channel): the watcher reads at most [`Splitter::room`]
//! bytes, [`Splitter::push`]es them, and [`Splitter::drain`]s the inputs into the client's
//! channel until it is full; what could not be handed out stays here (still within the cap)
//! and goes first next time.

/// Longest line, in bytes without its terminator: the longest chat message
/// (`crate::chat::room::MAX_TEXT`).
pub(crate) const LINE_MAX: usize = 4096;

/// Most bytes held for one client: a line at the cap and its `\r\n`.
pub(crate) const BUFFER_MAX: usize = LINE_MAX + 2;

/// What the watcher hands a line reader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Input {
    /// One non-empty line without its terminator, at most [`LINE_MAX`] bytes (not checked for
    /// UTF-8 or NUL).
    Line(Box<[u8]>),
    /// A line over [`LINE_MAX`] bytes was discarded whole.
    TooLong,
    /// The client closed its side, or the connection broke: nothing more comes.
    Eof,
}

/// One client's bytes between reads: an incomplete line, or inputs not handed out yet.
#[derive(Debug, Default)]
pub(crate) struct Splitter {
    /// Bytes not handed out yet, from `start`; at most [`BUFFER_MAX`].
    buf: Vec<u8>,
    /// Where the bytes not handed out begin in `buf` (compacted after each drain).
    start: usize,
    /// Discarding the rest of a line found too long, up to its `\n`.
    skipping: bool,
    /// The input ended: after the buffered lines, a last unterminated one and [`Input::Eof`].
    closed: bool,
    /// [`Input::Eof`] was handed out: nothing more.
    done: bool,
}

impl Splitter {
    /// How many bytes may be read now without holding more than [`BUFFER_MAX`].
    pub(crate) fn room(&self) -> usize {
        BUFFER_MAX.saturating_sub(self.buf.len() - self.start)
    }

    /// Adds bytes read (at most [`Splitter::room`]; more are ignored, which the caller's read
    /// size prevents).
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        let take = bytes.len().min(self.room());
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(&bytes[..take]);
    }

    /// The input ended (EOF or an error): [`Splitter::drain`] hands out what is left, then
    /// [`Input::Eof`].
    pub(crate) fn close(&mut self) {
        self.closed = true;
    }

    /// Whether [`Input::Eof`] was handed out.
    pub(crate) fn done(&self) -> bool {
        self.done
    }

    /// Hands out every complete input, in order, to `emit`, which returns `false` when it
    /// cannot take one (its channel is full): the splitter then keeps that input's bytes and
    /// returns `false`. Returns `true` once everything complete was handed out.
    pub(crate) fn drain(&mut self, mut emit: impl FnMut(Input) -> bool) -> bool {
        let finished = self.hand_out(&mut emit);
        // Compact, and give the memory back between lines: an idle client holds nothing.
        if self.start == self.buf.len() {
            self.buf = Vec::new();
            self.start = 0;
        }
        finished
    }

    fn hand_out(&mut self, emit: &mut impl FnMut(Input) -> bool) -> bool {
        loop {
            if self.done {
                return true;
            }
            let rest = &self.buf[self.start..];
            let newline = rest.iter().position(|&b| b == b'\n');
            if self.skipping {
                match newline {
                    Some(i) => {
                        self.start += i + 1;
                        self.skipping = false;
                        continue;
                    }
                    None => {
                        self.start = self.buf.len();
                        if self.closed {
                            self.skipping = false;
                            continue;
                        }
                        return true;
                    }
                }
            }
            let (line, used) = match newline {
                Some(i) => {
                    let line = &rest[..i];
                    (line.strip_suffix(b"\r").unwrap_or(line), i + 1)
                }
                None if self.closed => (rest.strip_suffix(b"\r").unwrap_or(rest), rest.len()),
                None => {
                    // No terminator yet: too long already unless it may still be a line at the
                    // cap whose `\r` came and whose `\n` has not.
                    let at_cap_cr = rest.len() == LINE_MAX + 1 && rest.last() == Some(&b'\r');
                    if rest.len() > LINE_MAX && !at_cap_cr {
                        if !emit(Input::TooLong) {
                            return false;
                        }
                        self.start = self.buf.len();
                        self.skipping = true;
                        continue;
                    }
                    return true;
                }
            };
            let input = if line.len() > LINE_MAX {
                Some(Input::TooLong)
            } else if line.is_empty() {
                None
            } else {
                Some(Input::Line(line.into()))
            };
            if used == 0 {
                // Closed and nothing left: the end.
                if !emit(Input::Eof) {
                    return false;
                }
                self.done = true;
                return true;
            }
            if let Some(input) = input {
                if !emit(input) {
                    return false;
                }
            }
            self.start += used;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Everything `bytes` gives, pushed in pieces of `piece` bytes, drained after each.
    fn split(bytes: &[u8], piece: usize, close: bool) -> Vec<Input> {
        let mut s = Splitter::default();
        let mut out = Vec::new();
        for chunk in bytes.chunks(piece) {
            let mut chunk = chunk;
            while !chunk.is_empty() {
                let n = chunk.len().min(s.room());
                assert!(n > 0, "room to read");
                s.push(&chunk[..n]);
                chunk = &chunk[n..];
                assert!(s.drain(|i| {
                    out.push(i);
                    true
                }));
                assert!(s.buf.len() - s.start <= BUFFER_MAX);
            }
        }
        if close {
            s.close();
            assert!(s.drain(|i| {
                out.push(i);
                true
            }));
            assert!(s.done());
        }
        out
    }

    fn line(text: &str) -> Input {
        Input::Line(text.as_bytes().into())
    }

    #[test]
    fn lines_end_in_lf_or_crlf_and_empty_ones_are_dropped() {
        for piece in [1, 2, 3, 7, 4096] {
            assert_eq!(
                split(b"/name bob\r\nhello\n\n\r\nbye\n", piece, false),
                vec![line("/name bob"), line("hello"), line("bye")],
                "pieces of {piece}"
            );
        }
        // A lone \r inside a line is content; a \r before the end is not a terminator.
        assert_eq!(split(b"a\rb\n", 1, false), vec![line("a\rb")]);
    }

    #[test]
    fn the_last_line_without_a_terminator_counts_at_eof_then_eof() {
        assert_eq!(
            split(b"one\ntwo", 3, true),
            vec![line("one"), line("two"), Input::Eof]
        );
        assert_eq!(split(b"", 1, true), vec![Input::Eof]);
        assert_eq!(split(b"x\n", 1, true), vec![line("x"), Input::Eof]);
    }

    #[test]
    fn a_line_at_the_cap_passes_and_one_byte_more_is_discarded_whole() {
        let at_cap = "a".repeat(LINE_MAX);
        for end in ["\n", "\r\n"] {
            let text = format!("{at_cap}{end}next\n");
            for piece in [1, 1000, 5000] {
                assert_eq!(
                    split(text.as_bytes(), piece, false),
                    vec![line(&at_cap), line("next")],
                    "{end:?} in pieces of {piece}"
                );
            }
        }
        let over = format!("{}\r\nnext\n", "b".repeat(LINE_MAX + 1));
        for piece in [1, 1000, 5000] {
            assert_eq!(
                split(over.as_bytes(), piece, false),
                vec![Input::TooLong, line("next")],
                "pieces of {piece}"
            );
        }
        // Far over the cap: told once, the whole line skipped, the next one read.
        let huge = format!("{}\nafter\n", "c".repeat(100_000));
        assert_eq!(
            split(huge.as_bytes(), 777, true),
            vec![Input::TooLong, line("after"), Input::Eof]
        );
        // A line cut off by EOF while being skipped is gone with it.
        let cut = "d".repeat(LINE_MAX * 3);
        assert_eq!(
            split(cut.as_bytes(), 100, true),
            vec![Input::TooLong, Input::Eof]
        );
    }

    #[test]
    fn what_a_full_channel_refused_stays_and_goes_first_next_time() {
        let mut s = Splitter::default();
        s.push(b"1\n2\n3\n4");
        let mut out = Vec::new();
        let mut budget = 2;
        let take = |out: &mut Vec<Input>, budget: &mut usize, i: Input| {
            if *budget == 0 {
                return false;
            }
            *budget -= 1;
            out.push(i);
            true
        };
        assert!(!s.drain(|i| take(&mut out, &mut budget, i)), "full");
        assert_eq!(out, vec![line("1"), line("2")]);
        // The refused bytes still count against the cap.
        assert_eq!(s.room(), BUFFER_MAX - "3\n4".len());
        s.push(b"\n");
        s.close();
        budget = 10;
        assert!(s.drain(|i| take(&mut out, &mut budget, i)));
        assert_eq!(
            out,
            vec![line("1"), line("2"), line("3"), line("4"), Input::Eof]
        );
        // Eof refused is offered again.
        let mut s = Splitter::default();
        s.close();
        assert!(!s.drain(|_| false));
        assert!(!s.done());
        assert!(s.drain(|i| i == Input::Eof));
        assert!(s.done());
    }

    #[test]
    fn an_idle_client_holds_no_memory() {
        let mut s = Splitter::default();
        s.push(b"hello\n");
        assert!(s.drain(|_| true));
        assert_eq!(s.buf.capacity(), 0);
        s.push(b"part");
        assert!(s.drain(|_| true));
        assert_eq!(s.buf.len() - s.start, 4, "an incomplete line is kept");
    }
}
