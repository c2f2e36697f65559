//! Scenario `chat`: N members join, each sends M numbered messages at random intervals, waits
//! until it has seen everything the others had sent before it leaves, then leaves.
//!
//! Each member is two threads: the member's script (join, send, leave) and a reader for its SSE
//! stream, which reconnects with its token and `Last-Event-ID` when the stream is cut.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use serde::Deserialize;
use serde_json::Value;

use syncast::kit::http::{self, Closer, Opened, Target};
use syncast::kit::sse::Item;

use crate::barriers::{Barriers, Finish};
use crate::check::{ChatLog, PresenceSeen, Receipt, Sent, Window};
use crate::shared::{spawn, Ctx, Retry, Rng, REQUEST_TIMEOUT, RETRIES};

/// What the chat scenario does.
#[derive(Debug, Clone)]
pub struct ChatPlan {
    /// Members.
    pub clients: usize,
    /// Messages per member.
    pub messages: u32,
    /// Random pause before each message, in `[lo, hi]`.
    pub interval: (Duration, Duration),
    /// Seed of the pauses.
    pub seed: u64,
    /// Prefix of the member names (unique per run).
    pub tag: String,
    /// How long a member waits to see the others' messages before leaving.
    pub drain: Duration,
    /// Longest silence on a stream before it counts as dead.
    pub idle: Duration,
}

impl ChatPlan {
    /// Generous: the slowest member's whole script (M pauses of at most B) and then some.
    pub(crate) fn longest_script(&self) -> Duration {
        self.interval.1 * self.messages + self.drain + self.idle
    }
}

/// What the members recorded.
pub struct ChatRun {
    /// The log the checker reads.
    pub log: ChatLog,
    /// Members that could not finish their script.
    pub failed: u64,
}

/// What a member's reader shares with its script.
#[derive(Default)]
struct Stream {
    state: Mutex<StreamState>,
    changed: Condvar,
    leaving: AtomicBool,
}

#[derive(Default)]
struct StreamState {
    /// `last_id` of the first welcome.
    welcome: Option<u64>,
    /// The highest room id seen.
    last_seen: u64,
    /// The reader has stopped.
    ended: bool,
    /// The `presence` events received (this run's members only).
    presence: Vec<PresenceSeen>,
    /// Messages of the other members received (the mixed room's drain counts them).
    from_others: u64,
    closer: Option<Closer>,
}

impl Stream {
    fn update(&self, f: impl FnOnce(&mut StreamState)) {
        f(&mut self.state.lock());
        self.changed.notify_all();
    }

    /// Waits until `done` holds or `deadline` passes; returns whether it holds.
    fn wait(&self, deadline: Instant, done: impl Fn(&StreamState) -> bool) -> bool {
        let mut s = self.state.lock();
        while !done(&s) {
            if self.changed.wait_until(&mut s, deadline).timed_out() {
                return done(&s);
            }
        }
        true
    }
}

/// Runs the scenario and returns when every member has left (or given up).
pub fn run(ctx: &Arc<Ctx>, plan: &ChatPlan) -> ChatRun {
    let acked: Arc<Vec<AtomicU64>> =
        Arc::new((0..plan.clients).map(|_| AtomicU64::new(0)).collect());
    let mut handles = Vec::with_capacity(plan.clients);
    for i in 0..plan.clients {
        let (ctx2, plan2, acked2) = (ctx.clone(), plan.clone(), acked.clone());
        match spawn(format!("chat-{i}"), move || {
            member(&ctx2, &plan2, i, &acked2, None)
        }) {
            Ok(h) => handles.push(Some(h)),
            Err(_) => {
                ctx.error("client-spawn");
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
        run.log.presence.push(m.presence);
        run.log.last_seen.push(m.last_seen);
    }
    run
}

pub(crate) struct Member {
    pub(crate) sent: Vec<Sent>,
    pub(crate) received: Vec<Receipt>,
    pub(crate) window: Option<Window>,
    pub(crate) presence: Vec<PresenceSeen>,
    pub(crate) last_seen: u64,
    pub(crate) failed: bool,
}

impl Member {
    pub(crate) fn failed() -> Member {
        Member {
            sent: Vec::new(),
            received: Vec::new(),
            window: None,
            presence: Vec::new(),
            last_seen: 0,
            failed: true,
        }
    }
}

/// Posts with retries on 503, 429 and refused connections (see [`Retry`]); errors are counted
/// as `{label}-{status}` or `{label}-{kind}`. Returns the answer and when the attempt that got it
/// started; `Err` after a transport error or an exhausted budget.
fn post(
    ctx: &Ctx,
    target: &Target,
    label: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(http::Response, u64), ()> {
    let retry = Retry::new();
    loop {
        let at_us = ctx.now_us();
        match http::request(target, "POST", path, headers, body, REQUEST_TIMEOUT) {
            Ok(r) if r.status == 503 || r.status == 429 => {
                ctx.error(&format!("{label}-{}", r.status));
                if !retry.wait(r.retry_after().unwrap_or(Duration::from_secs(1))) {
                    ctx.error(&format!("{label}-gave-up"));
                    return Err(());
                }
            }
            Ok(r) => return Ok((r, at_us)),
            // Refused before anything was sent: safe to try again.
            Err(http::HttpError::Refused) => {
                ctx.error(&format!("{label}-refused"));
                if !retry.wait(Duration::from_millis(200)) {
                    ctx.error(&format!("{label}-gave-up"));
                    return Err(());
                }
            }
            Err(e) => {
                ctx.error(&format!("{label}-{}", e.kind()));
                return Err(());
            }
        }
    }
}

/// One member's script. With several nodes member `i` joins, posts and leaves on node `i` and
/// streams on node `i + 1`, so every session crosses nodes. In a mixed room (`mix`: TCP members too, whose lines carry no ids) it
/// keeps the TCP scenario's barriers instead of room-id windows: see `crate::tcp`.
pub(crate) fn member(
    ctx: &Arc<Ctx>,
    plan: &ChatPlan,
    i: usize,
    acked: &[AtomicU64],
    mix: Option<&Barriers>,
) -> Member {
    // Whatever happens below, nobody in a mixed room waits for this member past this point.
    let mut finish = mix.map(Finish::new);
    let mut me = Member {
        sent: Vec::new(),
        received: Vec::new(),
        window: None,
        presence: Vec::new(),
        last_seen: 0,
        failed: false,
    };
    ctx.ramp();
    let home = ctx.node(i);
    let name = format!("{}-{i}", plan.tag);
    let auth = ctx.member_auth(&name);
    let join_headers: Vec<(&str, &str)> =
        auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    let token = match post(
        ctx,
        home,
        "join",
        "/chat/join",
        &join_headers,
        name.as_bytes(),
    ) {
        Ok((r, _)) if r.status == 201 => {
            match serde_json::from_slice::<Value>(&r.body)
                .ok()
                .and_then(|v| v["token"].as_str().map(str::to_string))
            {
                Some(t) => t,
                None => {
                    ctx.error("bad-response");
                    me.failed = true;
                    return me;
                }
            }
        }
        Ok((r, _)) => {
            ctx.error(&format!("join-{}", r.status));
            me.failed = true;
            return me;
        }
        Err(_) => {
            me.failed = true;
            return me;
        }
    };
    let stream = Arc::new(Stream::default());
    let reader = {
        let (ctx, plan, stream, token) = (ctx.clone(), plan.clone(), stream.clone(), token.clone());
        let name = name.clone();
        spawn(format!("chat-{i}-sse"), move || {
            read(&ctx, ctx.node(i + 1), &plan, &name, &token, &stream)
        })
    };
    let reader = match reader {
        Ok(h) => h,
        Err(_) => {
            ctx.error("client-spawn");
            me.failed = true;
            let auth = format!("Bearer {token}");
            let _ = post(
                ctx,
                home,
                "leave",
                "/chat/leave",
                &[("Authorization", &auth)],
                b"",
            );
            return me;
        }
    };
    let auth = format!("Bearer {token}");
    let welcomed = stream.wait(Instant::now() + plan.idle, |s| {
        s.welcome.is_some() || s.ended
    });
    let after = stream.state.lock().welcome;
    if !welcomed || after.is_none() {
        ctx.error("no-welcome");
        me.failed = true;
    } else {
        ctx.progress.connected.fetch_add(1, Ordering::Relaxed);
        if let Some(b) = mix {
            b.bump(&b.joined);
            if !b.wait(&b.joined, plan.clients, Instant::now() + plan.idle) {
                ctx.error("join-barrier-timeout");
            }
        }
        let mut rng = Rng::new(plan.seed, i as u64);
        for seq in 1..=plan.messages {
            std::thread::sleep(rng.between(plan.interval.0, plan.interval.1));
            let mut at_us = ctx.now_us();
            let text = format!("seq={seq}");
            let sent = post(
                ctx,
                home,
                "send",
                "/chat/messages",
                &[("Authorization", &auth)],
                text.as_bytes(),
            );
            let id = match sent {
                Ok((r, accepted_at)) if r.status == 202 => {
                    // Latency counts from the attempt the server accepted, not from refusals.
                    at_us = accepted_at;
                    let id = serde_json::from_slice::<Value>(&r.body)
                        .ok()
                        .and_then(|v| v["id"].as_u64());
                    if id.is_none() {
                        ctx.error("bad-response");
                    }
                    id
                }
                Ok((r, _)) => {
                    ctx.error(&format!("send-{}", r.status));
                    None
                }
                Err(_) => None,
            };
            let id = match (id, mix) {
                // The mixed room's order of lines sent, as the TCP members count it.
                (Some(_), Some(b)) => Some(b.sent_one(i)),
                (id, _) => id,
            };
            match id {
                Some(id) => {
                    acked[i].fetch_max(id, Ordering::AcqRel);
                    ctx.progress.sent.fetch_add(1, Ordering::Relaxed);
                }
                None => me.failed = true,
            }
            me.sent.push(Sent { seq, id, at_us });
        }
        if let Some(b) = mix {
            if let Some(f) = finish.as_mut() {
                f.done();
            }
            let others = b.others_sent(i, plan.clients, plan.longest_script());
            me.window = Some(Window {
                after: 0,
                until: u64::MAX,
            });
            if !stream.wait(Instant::now() + plan.drain, |s| {
                s.from_others >= others || s.ended
            }) {
                ctx.error("drain-timeout");
            }
        }
        if mix.is_none() {
            // Everything the others had sent by now must reach us before we leave.
            let until = acked
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, a)| a.load(Ordering::Acquire))
                .max()
                .unwrap_or(0);
            let after = after.unwrap_or(0);
            me.window = Some(Window { after, until });
            if !stream.wait(Instant::now() + plan.drain, |s| {
                s.last_seen >= until || s.ended
            }) {
                ctx.error("drain-timeout");
            }
        }
        ctx.progress.connected.fetch_sub(1, Ordering::Relaxed);
    }
    stream.leaving.store(true, Ordering::Release);
    match post(
        ctx,
        home,
        "leave",
        "/chat/leave",
        &[("Authorization", &auth)],
        b"",
    ) {
        Ok((r, _)) if r.status == 204 => {}
        Ok((r, _)) => {
            ctx.error(&format!("leave-{}", r.status));
            me.failed = true;
        }
        Err(_) => me.failed = true,
    }
    // Leaving ends the stream on the server's side; if it does not, we end it.
    if !stream.wait(Instant::now() + Duration::from_secs(5), |s| s.ended) {
        ctx.error("stream-not-closed");
        me.failed = true;
        if let Some(c) = &stream.state.lock().closer {
            c.close();
        }
    }
    {
        let mut s = stream.state.lock();
        me.presence = std::mem::take(&mut s.presence);
        me.last_seen = s.last_seen;
    }
    match reader.join() {
        Ok(Ok(received)) => me.received = received,
        Ok(Err(received)) => {
            me.received = received;
            me.failed = true;
        }
        Err(_) => {
            ctx.error("client-panic");
            me.failed = true;
        }
    }
    me
}

/// The part of `event: welcome` we read.
#[derive(Deserialize)]
struct Welcome {
    last_id: u64,
}

/// The part of `event: message` we read (borrowed: no allocation per event unless escaped).
#[derive(Deserialize)]
struct Message<'a> {
    id: u64,
    #[serde(borrow)]
    from: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    text: std::borrow::Cow<'a, str>,
}

/// The part of `event: presence` we read.
#[derive(Deserialize)]
struct Presence<'a> {
    #[serde(borrow)]
    joined: Vec<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    left: Vec<Left<'a>>,
}

#[derive(Deserialize)]
struct Left<'a> {
    #[serde(borrow)]
    name: std::borrow::Cow<'a, str>,
}

/// What one event of a member's stream means to the checker.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Note {
    /// `welcome` with its `last_id`.
    Welcome(u64),
    /// A message of this run's member `from`, its sequence number and room id.
    Message { from: u32, seq: u32, id: u64 },
    /// `presence`: this run's members that joined and left.
    Presence { joined: Vec<u32>, left: Vec<u32> },
    /// `reset`: the history did not reach back to our `Last-Event-ID`.
    Reset,
    /// `shutdown`: the server is stopping.
    Shutdown,
    /// An event that does not parse.
    Bad,
    /// Anything else (presence, rename, a message from someone outside this run).
    Other,
}

/// Reads one event (pure, so recorded transcripts can be checked without a server).
fn note(tag: &str, event: &str, data: &str) -> Note {
    match event {
        "welcome" => {
            serde_json::from_str::<Welcome>(data).map_or(Note::Bad, |w| Note::Welcome(w.last_id))
        }
        "message" => match serde_json::from_str::<Message>(data) {
            Ok(m) => {
                let from = sender_index(tag, &m.from);
                let seq = m.text.strip_prefix("seq=").and_then(|t| t.parse().ok());
                match (from, seq) {
                    (Some(from), Some(seq)) => Note::Message {
                        from,
                        seq,
                        id: m.id,
                    },
                    _ => Note::Other,
                }
            }
            Err(_) => Note::Bad,
        },
        "presence" => match serde_json::from_str::<Presence>(data) {
            Ok(p) => Note::Presence {
                joined: p
                    .joined
                    .iter()
                    .filter_map(|n| sender_index(tag, n))
                    .collect(),
                left: p
                    .left
                    .iter()
                    .filter_map(|l| sender_index(tag, &l.name))
                    .collect(),
            },
            Err(_) => Note::Bad,
        },
        "reset" => Note::Reset,
        "shutdown" => Note::Shutdown,
        _ => Note::Other,
    }
}

/// Parses `{tag}-{index}` back into the index.
fn sender_index(tag: &str, name: &str) -> Option<u32> {
    name.strip_prefix(tag)?.strip_prefix('-')?.parse().ok()
}

/// The reader: streams, records, reconnects. `Err` carries what was received when it gave up.
/// With auth on, each (re)connect carries a fresh token for `name` besides the session's.
fn read(
    ctx: &Ctx,
    target: &Target,
    plan: &ChatPlan,
    name: &str,
    token: &str,
    stream: &Stream,
) -> Result<Vec<Receipt>, Vec<Receipt>> {
    let mut received = Vec::new();
    let me = sender_index(&plan.tag, name);
    let mut reconnects = 0;
    let mut retry = Retry::new();
    let path = format!("/chat/stream?token={token}");
    let result = loop {
        let last = stream.state.lock().last_seen;
        let last_text = last.to_string();
        let mut resume: Vec<(&str, &str)> = if stream.state.lock().welcome.is_some() {
            vec![("Last-Event-ID", last_text.as_str())]
        } else {
            vec![]
        };
        let auth = ctx.member_auth(name);
        if let Some(a) = &auth {
            resume.push(("Authorization", a.as_str()));
        }
        let opened = http::open_stream(target, &path, &resume, REQUEST_TIMEOUT, plan.idle);
        let mut es = match opened {
            Ok(Opened::Stream(es)) => es,
            // The member left while we reconnected: its session is gone, and that is fine.
            _ if stream.leaving.load(Ordering::Acquire) => break Ok(()),
            // The server's answer at a cap: come back when it says (`retry_ms`, jittered).
            Ok(Opened::Retry(r)) if retry.wait(r.after()) => {
                ctx.refused(&r.reason);
                continue;
            }
            Ok(Opened::Retry(r)) => {
                ctx.error(&format!("stream-refused-{}", r.reason));
                break Err(());
            }
            Ok(Opened::Refused(r)) => {
                ctx.error(&format!("stream-{}", r.status));
                break Err(());
            }
            Err(e) => {
                ctx.error(&format!("stream-{}", e.kind()));
                if reconnects < RETRIES {
                    reconnects += 1;
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
                break Err(());
            }
        };
        if let Ok(c) = es.closer() {
            stream.update(|s| s.closer = Some(c));
        }
        let mut shutdown = false;
        let end = loop {
            match es.next_item() {
                Ok(Some(Item::Event { event, id, data })) => {
                    let id = id.as_deref().and_then(|t| t.parse::<u64>().ok());
                    match note(&plan.tag, &event, &data) {
                        Note::Welcome(last_id) => stream.update(|s| {
                            if s.welcome.is_none() {
                                s.welcome = Some(last_id);
                                s.last_seen = s.last_seen.max(last_id);
                            }
                        }),
                        Note::Message { from, seq, id } => {
                            if Some(from) != me {
                                stream.update(|s| s.from_others += 1);
                            }
                            received.push(Receipt {
                                from,
                                seq,
                                id,
                                at_us: ctx.now_us(),
                            });
                            ctx.progress.received.fetch_add(1, Ordering::Relaxed);
                        }
                        Note::Presence { joined, left } => {
                            if let Some(id) = id {
                                stream
                                    .update(|s| s.presence.push(PresenceSeen { id, joined, left }));
                            }
                        }
                        Note::Reset => ctx.error("history-reset"),
                        Note::Shutdown => shutdown = true,
                        Note::Bad => ctx.error("bad-event"),
                        Note::Other => {}
                    }
                    if let Some(id) = id {
                        stream.update(|s| s.last_seen = s.last_seen.max(id));
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        if stream.leaving.load(Ordering::Acquire) {
            break Ok(());
        }
        if shutdown {
            ctx.error("server-shutdown");
            break Err(());
        }
        match end {
            Ok(()) => ctx.error("stream-cut"),
            Err(e) => ctx.error(&format!("stream-{}", e.kind())),
        }
        // A stream that is cut again and again but moves on each time (a member cut off as slow
        // under load) is fine; give up only after RETRIES cuts in a row without a new event.
        let now_seen = stream.state.lock().last_seen;
        if now_seen > last {
            reconnects = 0;
        }
        if reconnects >= RETRIES {
            ctx.error("stream-gave-up");
            break Err(());
        }
        reconnects += 1;
        retry = Retry::new();
    };
    stream.update(|s| {
        s.ended = true;
        s.closer = None;
    });
    match result {
        Ok(()) => Ok(received),
        Err(()) => Err(received),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{check_chat, verdict, ChatLog, Leak, Outcome, Window};
    use syncast::kit::sse::Parser;

    #[test]
    fn sender_names_map_back_to_indexes() {
        assert_eq!(sender_index("st1a2b", "st1a2b-17"), Some(17));
        assert_eq!(sender_index("st1a2b", "alice"), None);
        assert_eq!(sender_index("st1a2b", "st1a2b-x"), None);
    }

    /// The room's events as the server writes them on the wire (`src/chat/stream.rs`): member
    /// `me` sees a welcome, the others' joins and messages, keepalives; `skip` leaves out the
    /// event with that id, `twice` repeats one (as a bad resume would).
    fn transcript(
        me: u32,
        room: &[(u64, u32, u32)],
        skip: Option<u64>,
        twice: Option<u64>,
    ) -> Vec<u8> {
        let mut w = String::from("retry: 2000\n\n");
        w += "event: welcome\ndata: {\"name\":\"t-0\",\"token\":\"x\",\"online\":[],\"online_count\":0,\"last_id\":0}\n\n";
        w += "event: presence\nid: 1\ndata: {\"joined\":[\"t-9\"],\"left\":[]}\n\n: keepalive\n\n";
        for &(id, from, seq) in room {
            if from == me || Some(id) == skip {
                continue;
            }
            let ev = format!(
                "event: message\nid: {id}\ndata: {{\"id\":{id},\"from\":\"t-{from}\",\"text\":\"seq={seq}\",\"ts\":1}}\n\n"
            );
            w += &ev;
            if Some(id) == twice {
                w += &ev;
            }
        }
        w.into_bytes()
    }

    /// Replays transcripts through the parser and the reader's [`note`], like the real reader.
    fn replay(
        room: &[(u64, u32, u32)],
        skip: Option<(u32, u64)>,
        twice: Option<(u32, u64)>,
    ) -> Vec<String> {
        let members = 3;
        let mut log = ChatLog::default();
        for m in 0..members {
            log.sent.push(
                room.iter()
                    .filter(|r| r.1 == m)
                    .map(|&(id, _, seq)| Sent {
                        seq,
                        id: Some(id),
                        at_us: id,
                    })
                    .collect(),
            );
            let bytes = transcript(
                m,
                room,
                skip.filter(|s| s.0 == m).map(|s| s.1),
                twice.filter(|s| s.0 == m).map(|s| s.1),
            );
            let mut parser = Parser::new();
            let mut received = Vec::new();
            let mut after = None;
            // Fed in 7-byte pieces, as a socket may deliver them.
            for (i, chunk) in bytes.chunks(7).enumerate() {
                for item in parser.feed(chunk) {
                    if let Item::Event { event, data, .. } = item {
                        match note("t", &event, &data) {
                            Note::Welcome(l) => after = Some(l),
                            Note::Message { from, seq, id } => received.push(Receipt {
                                from,
                                seq,
                                id,
                                at_us: 100 + i as u64,
                            }),
                            Note::Bad => panic!("bad event {event} {data}"),
                            _ => {}
                        }
                    }
                }
            }
            log.received.push(received);
            log.windows
                .push(after.map(|after| Window { after, until: 100 }));
        }
        let outcome = Outcome {
            chat: Some(check_chat(&log)),
            leaks: vec![Some(Leak::default())],
            ..Outcome::default()
        };
        verdict(&outcome)
    }

    const ROOM: &[(u64, u32, u32)] = &[
        (2, 0, 1),
        (3, 1, 1),
        (4, 2, 1),
        (5, 0, 2),
        (6, 1, 2),
        (7, 2, 2),
    ];

    #[test]
    fn wire_transcripts_of_a_correct_room_pass() {
        assert!(replay(ROOM, None, None).is_empty());
    }

    #[test]
    fn wire_transcripts_of_a_server_that_drops_or_repeats_a_message_fail() {
        assert_eq!(
            replay(ROOM, Some((2, 5)), None),
            vec!["1 chat messages lost".to_string()]
        );
        assert_eq!(
            replay(ROOM, None, Some((0, 6))),
            vec!["1 chat messages duplicated".to_string()]
        );
    }
}
