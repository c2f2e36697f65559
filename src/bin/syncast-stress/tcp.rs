//! Scenario `chat` over plain TCP (`--transport tcp`, the server's `--chat-tcp`): the Go
//! original's own stress test. N members dial the port and set a name; once all are in (or
//! `--idle` has passed; with auth on, `/auth TOKEN` with a token minted for the name), each
//! sends M numbered lines (`seq=K`) at random intervals; once every
//! member has sent all of its lines, each waits until it has read every line the others sent,
//! then sends `/quit` and reads to EOF.
//!
//! TCP lines carry no room ids, so the checker's window is "everything the others sent": the
//! join barrier makes that exact (nobody sends before everybody has joined, and nobody leaves
//! before everybody has sent). The verdict is the SSE scenario's: every line exactly once, in
//! order per sender, no own echo, threads back to baseline.
//!
//! Each member is two threads, as over SSE: its script and a reader of its socket.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::barriers::{Barriers, Finish};
use crate::chat::{ChatPlan, ChatRun};
use crate::check::{ChatLog, Receipt, Sent, Window};
use crate::shared::{spawn, Ctx, Rng};

/// What a member's reader shares with its script.
#[derive(Default)]
struct Seen {
    state: Mutex<SeenState>,
    changed: Condvar,
    leaving: AtomicBool,
}

#[derive(Default)]
struct SeenState {
    /// The answer to `/name`: `Some(true)` joined, `Some(false)` refused.
    named: Option<bool>,
    /// Lines of the others received.
    from_others: u64,
    /// `* bye` read.
    bye: bool,
    /// EOF or an error.
    ended: bool,
}

impl Seen {
    fn update(&self, f: impl FnOnce(&mut SeenState)) {
        f(&mut self.state.lock());
        self.changed.notify_all();
    }

    fn wait(&self, deadline: Instant, done: impl Fn(&SeenState) -> bool) -> bool {
        let mut s = self.state.lock();
        while !done(&s) {
            if self.changed.wait_until(&mut s, deadline).timed_out() {
                return done(&s);
            }
        }
        true
    }
}

/// Runs the scenario over TCP at `addr`; returns when every member has left (or given up).
pub fn run(ctx: &Arc<Ctx>, plan: &ChatPlan, addr: SocketAddr) -> ChatRun {
    let room = Arc::new(Barriers::new(plan.clients));
    let mut handles = Vec::with_capacity(plan.clients);
    for i in 0..plan.clients {
        let (ctx2, plan2, room2) = (ctx.clone(), plan.clone(), room.clone());
        match spawn(format!("tcp-{i}"), move || {
            member(&ctx2, &plan2, &room2, addr, i)
        }) {
            Ok(h) => handles.push(Some(h)),
            Err(_) => {
                ctx.error("client-spawn");
                // It will never join nor finish: count it as finished so nobody waits for it.
                room.bump(&room.finished);
                handles.push(None);
            }
        }
    }
    let mut run = ChatRun {
        log: ChatLog::default(),
        failed: 0,
    };
    for h in handles {
        let m = h.and_then(|h| h.join().ok()).unwrap_or_else(|| {
            ctx.error("client-panic");
            Member::failed()
        });
        run.failed += u64::from(m.failed);
        run.log.sent.push(m.sent);
        run.log.received.push(m.received);
        run.log.windows.push(m.window);
        // No presence ids over TCP: not checked.
        run.log.presence.push(Vec::new());
        run.log.last_seen.push(0);
    }
    run
}

/// The mixed room (`--transport mixed`): members with an even index over TCP, the others over
/// SSE (`crate::chat::member` with the same barriers), all in one room, each checked against
/// every other whatever the transports.
pub fn run_mixed(ctx: &Arc<Ctx>, plan: &ChatPlan, addr: SocketAddr) -> ChatRun {
    let room = Arc::new(Barriers::new(plan.clients));
    let acked: Arc<Vec<AtomicU64>> =
        Arc::new((0..plan.clients).map(|_| AtomicU64::new(0)).collect());
    let mut handles = Vec::with_capacity(plan.clients);
    for i in 0..plan.clients {
        let (ctx2, plan2, room2, acked2) = (ctx.clone(), plan.clone(), room.clone(), acked.clone());
        let spawned = spawn(format!("mix-{i}"), move || {
            if i % 2 == 0 {
                let m = member(&ctx2, &plan2, &room2, addr, i);
                crate::chat::Member {
                    sent: m.sent,
                    received: m.received,
                    window: m.window,
                    presence: Vec::new(),
                    last_seen: 0,
                    failed: m.failed,
                }
            } else {
                let mut m = crate::chat::member(&ctx2, &plan2, i, &acked2, Some(&room2));
                // Presence ids are not checked in a mixed room (TCP members see none).
                m.presence.clear();
                m
            }
        });
        match spawned {
            Ok(h) => handles.push(Some(h)),
            Err(_) => {
                ctx.error("client-spawn");
                room.bump(&room.finished);
                handles.push(None);
            }
        }
    }
    let mut run = ChatRun {
        log: ChatLog::default(),
        failed: 0,
    };
    for h in handles {
        let m = h.and_then(|h| h.join().ok()).unwrap_or_else(|| {
            ctx.error("client-panic");
            crate::chat::Member::failed()
        });
        run.failed += u64::from(m.failed);
        run.log.sent.push(m.sent);
        run.log.received.push(m.received);
        run.log.windows.push(m.window);
        run.log.presence.push(m.presence);
        run.log.last_seen.push(0);
    }
    run
}

struct Member {
    sent: Vec<Sent>,
    received: Vec<Receipt>,
    window: Option<Window>,
    failed: bool,
}

impl Member {
    fn failed() -> Member {
        Member {
            sent: Vec::new(),
            received: Vec::new(),
            window: None,
            failed: true,
        }
    }
}

/// The sender index and sequence number of a line `<TAG-J> seq=K`.
fn parse_message(tag: &str, line: &str) -> Option<(u32, u32)> {
    let rest = line.strip_prefix('<')?;
    let (name, text) = rest.split_once("> ")?;
    let from = name.strip_prefix(tag)?.strip_prefix('-')?.parse().ok()?;
    let seq = text.strip_prefix("seq=")?.parse().ok()?;
    Some((from, seq))
}

fn member(ctx: &Arc<Ctx>, plan: &ChatPlan, room: &Barriers, addr: SocketAddr, i: usize) -> Member {
    let mut me = Member {
        sent: Vec::new(),
        received: Vec::new(),
        window: None,
        failed: false,
    };
    // Whatever happens below, nobody waits for this member beyond this point.
    let mut finish = Finish::new(room);
    ctx.ramp();
    let sock = match TcpStream::connect_timeout(&addr, plan.idle) {
        Ok(s) => s,
        Err(e) => {
            ctx.error(&format!("tcp-connect-{:?}", e.kind()));
            me.failed = true;
            return me;
        }
    };
    let _ = sock.set_nodelay(true);
    let _ = sock.set_read_timeout(Some(plan.idle));
    let mut out = match sock.try_clone() {
        Ok(s) => s,
        Err(_) => {
            ctx.error("tcp-clone");
            me.failed = true;
            return me;
        }
    };
    let _ = out.set_write_timeout(Some(plan.idle));
    let seen = Arc::new(Seen::default());
    let reader = {
        let (ctx, tag, seen) = (ctx.clone(), plan.tag.clone(), seen.clone());
        spawn(format!("tcp-{i}-read"), move || {
            read(&ctx, &tag, i, sock, &seen)
        })
    };
    let Ok(reader) = reader else {
        ctx.error("client-spawn");
        me.failed = true;
        return me;
    };
    let name = format!("{}-{i}", plan.tag);
    let deadline = Instant::now() + plan.idle;
    // With auth on (`--jwt-secret-file`), the name comes from a token of its own.
    let hello = match ctx.member_auth(&name) {
        Some(bearer) => format!("/auth {}\n", bearer.trim_start_matches("Bearer ")),
        None => format!("/name {name}\n"),
    };
    let named = out.write_all(hello.as_bytes()).is_ok()
        && seen.wait(deadline, |s| s.named.is_some() || s.ended)
        && seen.state.lock().named == Some(true);
    if !named {
        ctx.error("tcp-no-name");
        me.failed = true;
    } else {
        room.bump(&room.joined);
        ctx.progress.connected.fetch_add(1, Ordering::Relaxed);
        // Nobody sends before everybody is in: then everybody must get every line.
        if !room.wait(&room.joined, plan.clients, Instant::now() + plan.idle) {
            ctx.error("tcp-join-barrier-timeout");
        }
        me.window = Some(Window {
            after: 0,
            until: u64::MAX,
        });
        let mut rng = Rng::new(plan.seed, i as u64);
        for seq in 1..=plan.messages {
            std::thread::sleep(rng.between(plan.interval.0, plan.interval.1));
            let at_us = ctx.now_us();
            if out.write_all(format!("seq={seq}\n").as_bytes()).is_err() {
                ctx.error("tcp-send");
                me.failed = true;
                me.sent.push(Sent {
                    seq,
                    id: None,
                    at_us,
                });
                break;
            }
            let id = room.sent_one(i);
            ctx.progress.sent.fetch_add(1, Ordering::Relaxed);
            me.sent.push(Sent {
                seq,
                id: Some(id),
                at_us,
            });
        }
    }
    finish.done();
    if named {
        // Everybody has sent (or given up): then every line of the others must reach us.
        let others = room.others_sent(i, plan.clients, plan.longest_script());
        if others == u64::MAX {
            ctx.error("tcp-finish-barrier-timeout");
        }
        if !seen.wait(Instant::now() + plan.drain, |s| {
            s.from_others >= others || s.ended
        }) {
            ctx.error("drain-timeout");
        }
        ctx.progress.connected.fetch_sub(1, Ordering::Relaxed);
    }
    seen.leaving.store(true, Ordering::Release);
    let _ = out.write_all(b"/quit\n");
    if !seen.wait(Instant::now() + Duration::from_secs(5), |s| s.ended) {
        ctx.error("tcp-not-closed");
        me.failed = true;
        let _ = out.shutdown(std::net::Shutdown::Both);
    }
    if named && !seen.state.lock().bye {
        ctx.error("tcp-no-bye");
        me.failed = true;
    }
    match reader.join() {
        Ok(received) => me.received = received,
        Err(_) => {
            ctx.error("client-panic");
            me.failed = true;
        }
    }
    me
}

/// Reads the member's socket to EOF: its answers and the room's lines.
fn read(ctx: &Ctx, tag: &str, me: usize, sock: TcpStream, seen: &Seen) -> Vec<Receipt> {
    let mut received = Vec::new();
    let mut reader = BufReader::new(sock);
    let mut line = String::new();
    let you_are = format!("* you are {tag}-{me}:");
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                if !seen.leaving.load(Ordering::Acquire) {
                    ctx.error(&format!("tcp-read-{:?}", e.kind()));
                }
                break;
            }
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if let Some((from, seq)) = parse_message(tag, l) {
            let at_us = ctx.now_us();
            received.push(Receipt {
                from,
                seq,
                id: 0,
                at_us,
            });
            ctx.progress.received.fetch_add(1, Ordering::Relaxed);
            if from as usize != me {
                seen.update(|s| s.from_others += 1);
            }
        } else if l.starts_with(&you_are) {
            seen.update(|s| s.named = Some(true));
        } else if l == "* bye" {
            seen.update(|s| s.bye = true);
        } else if let Some(err) = l.strip_prefix("! ") {
            // `! slow down` loses a line: the checker counts it lost.
            let kind: String = err.split([':', ' ']).take(2).collect::<Vec<_>>().join("-");
            ctx.error(&format!("tcp-{kind}"));
            seen.update(|s| {
                if s.named.is_none() {
                    s.named = Some(false);
                }
            });
        }
    }
    seen.update(|s| s.ended = true);
    received
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_lines_map_back_to_sender_and_sequence() {
        assert_eq!(parse_message("st1", "<st1-7> seq=3"), Some((7, 3)));
        assert_eq!(parse_message("st1", "<st2-7> seq=3"), None, "another run");
        assert_eq!(parse_message("st1", "<st1-7> hello"), None);
        assert_eq!(parse_message("st1", "* st1-7 joined"), None);
        assert_eq!(parse_message("st1", "<st1-x> seq=3"), None);
    }
}
