//! The checker: pure functions from recorded event logs to counts and a verdict. No I/O, no
//! clocks: times are microseconds since the run started, taken by the recorders.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

/// One chat message a client posted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// The sender's own sequence number (1, 2, ...), also written in the text.
    pub seq: u32,
    /// The room id from `202 {"id":N}`; `None` when the outcome is unknown (time-out).
    pub id: Option<u64>,
    /// When the POST started.
    pub at_us: u64,
}

/// One chat message a client received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    /// Index of the sending client.
    pub from: u32,
    /// The sender's sequence number.
    pub seq: u32,
    /// The event's room id.
    pub id: u64,
    /// When it was read off the stream.
    pub at_us: u64,
}

/// The room ids a receiver must get: every message with `after < id <= until` (`after` is the
/// `last_id` of its first welcome, `until` the highest id acknowledged to another client before
/// it left).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Exclusive lower bound.
    pub after: u64,
    /// Inclusive upper bound.
    pub until: u64,
}

/// Everything the chat scenario recorded, indexed by client.
#[derive(Debug, Default, Clone)]
pub struct ChatLog {
    /// Messages each client posted, in order.
    pub sent: Vec<Vec<Sent>>,
    /// Messages each client received, in arrival order.
    pub received: Vec<Vec<Receipt>>,
    /// Each client's window; `None` if it never got a welcome (it expects nothing).
    pub windows: Vec<Option<Window>>,
    /// The `presence` events each client received, in arrival order (empty: not checked).
    pub presence: Vec<Vec<PresenceSeen>>,
    /// The highest room id each client saw before it left.
    pub last_seen: Vec<u64>,
}

/// One `presence` event as a client received it, with this run's members only.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PresenceSeen {
    /// Its room id.
    pub id: u64,
    /// Indexes of the members it says joined.
    pub joined: Vec<u32>,
    /// Indexes of the members it says left.
    pub left: Vec<u32>,
}

/// What the presence check found: every member's join and leave reaches every other member
/// streaming when it was announced, exactly once, in id order, at the same id for everyone.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct PresenceTally {
    /// (receiver, join or leave) pairs that must arrive.
    pub expected: u64,
    /// Expected pairs that never arrived.
    pub lost: u64,
    /// A join or leave a receiver got twice.
    pub duplicated: u64,
    /// Presence events that arrived after one with a higher id.
    pub out_of_order: u64,
    /// A join or leave announced at different ids to different receivers, or a leave before
    /// its join.
    pub inconsistent: u64,
}

/// Checks the presence events of `log` (see [`PresenceTally`]). Each member's join is
/// announced at the id of the `presence` event naming it (its own stream gets it too); every
/// receiver whose window (after its welcome, up to the last id it saw) holds that id must have
/// it. A leave's id is the one receivers agree on.
pub fn check_presence(log: &ChatLog) -> PresenceTally {
    let mut t = PresenceTally::default();
    // Where each change was announced: (member, joined?) -> id, from whoever saw it.
    let mut at: HashMap<(u32, bool), u64> = HashMap::new();
    for events in &log.presence {
        let mut last = 0;
        let mut seen: HashMap<(u32, bool), ()> = HashMap::new();
        for e in events {
            if e.id < last {
                t.out_of_order += 1;
            }
            last = last.max(e.id);
            let changes = e.joined.iter().map(|m| (*m, true));
            for key in changes.chain(e.left.iter().map(|m| (*m, false))) {
                if seen.insert(key, ()).is_some() {
                    t.duplicated += 1;
                }
                match at.get(&key) {
                    Some(id) if *id != e.id => t.inconsistent += 1,
                    Some(_) => {}
                    None => {
                        at.insert(key, e.id);
                    }
                }
            }
        }
    }
    for (&(m, joined), &id) in &at {
        if !joined && at.get(&(m, true)).is_some_and(|j| *j >= id) {
            t.inconsistent += 1;
        }
    }
    for (r, events) in log.presence.iter().enumerate() {
        let Some(w) = log.windows.get(r).copied().flatten() else {
            continue;
        };
        let last = log.last_seen.get(r).copied().unwrap_or(0);
        let got: std::collections::HashSet<(u32, bool, u64)> = events
            .iter()
            .flat_map(|e| {
                let j = e.joined.iter().map(move |m| (*m, true, e.id));
                j.chain(e.left.iter().map(move |m| (*m, false, e.id)))
            })
            .collect();
        for (&(m, joined), &id) in &at {
            if m as usize == r || id <= w.after || id > last {
                continue;
            }
            t.expected += 1;
            if !got.contains(&(m, joined, id)) {
                t.lost += 1;
            }
        }
    }
    t
}

/// What the chat check found.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct ChatTally {
    /// Messages acknowledged with an id.
    pub sent: u64,
    /// (receiver, message) pairs that must arrive.
    pub expected: u64,
    /// Expected pairs that arrived (first copy).
    pub delivered: u64,
    /// Expected pairs that never arrived.
    pub lost: u64,
    /// Extra copies of a message at one receiver.
    pub duplicated: u64,
    /// Copies that arrived after a later message of the same sender.
    pub out_of_order: u64,
    /// Receipts the server should never send: a client's own message, or an unknown sequence.
    pub unexpected: u64,
    /// Receipts of all kinds, expected or not (for deliveries per second).
    pub receipts: u64,
    /// Send-to-receipt latency of each expected delivery, in microseconds.
    #[serde(skip)]
    pub latencies_us: Vec<u64>,
}

/// Checks, per receiver and per sender, that each message sent inside the receiver's window
/// arrives exactly once and in the sender's order.
pub fn check_chat(log: &ChatLog) -> ChatTally {
    let mut t = ChatTally {
        sent: log
            .sent
            .iter()
            .map(|s| s.iter().filter(|m| m.id.is_some()).count() as u64)
            .sum(),
        ..ChatTally::default()
    };
    for (r, receipts) in log.received.iter().enumerate() {
        t.receipts += receipts.len() as u64;
        // Per sender, the sequence numbers in arrival order.
        let mut by_sender: BTreeMap<u32, Vec<(u32, u64)>> = BTreeMap::new();
        for rc in receipts {
            if rc.from as usize == r {
                t.unexpected += 1;
                continue;
            }
            by_sender
                .entry(rc.from)
                .or_default()
                .push((rc.seq, rc.at_us));
        }
        for (&s, got) in &by_sender {
            let Some(sent) = log.sent.get(s as usize) else {
                t.unexpected += got.len() as u64;
                continue;
            };
            let known: HashMap<u32, &Sent> = sent.iter().map(|m| (m.seq, m)).collect();
            let mut seen: HashMap<u32, ()> = HashMap::new();
            let mut highest = 0u32;
            for &(seq, _) in got {
                if !known.contains_key(&seq) {
                    t.unexpected += 1;
                    continue;
                }
                if seen.insert(seq, ()).is_some() {
                    t.duplicated += 1;
                } else if seq < highest {
                    t.out_of_order += 1;
                }
                highest = highest.max(seq);
            }
        }
        let Some(w) = log.windows.get(r).copied().flatten() else {
            continue;
        };
        for (s, sent) in log.sent.iter().enumerate() {
            if s == r {
                continue;
            }
            let got = by_sender.get(&(s as u32));
            for m in sent {
                let Some(id) = m.id else { continue };
                if id <= w.after || id > w.until {
                    continue;
                }
                t.expected += 1;
                match got.and_then(|g| g.iter().find(|(seq, _)| *seq == m.seq)) {
                    Some(&(_, at)) => {
                        t.delivered += 1;
                        t.latencies_us.push(at.saturating_sub(m.at_us));
                    }
                    None => t.lost += 1,
                }
            }
        }
    }
    t
}

/// How an alarm stream sends values (mirrors the server's `?mode=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AlarmMode {
    /// One event per tick.
    Tick,
    /// One event per change.
    Change,
}

/// One `PUT /alarms/{id}` of the writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flip {
    /// The value written.
    pub value: bool,
    /// When the PUT started.
    pub sent_us: u64,
    /// When its 204 arrived.
    pub acked_us: u64,
}

/// One `data: {"alarm":..}` event a stream received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// The value.
    pub value: bool,
    /// When it was read.
    pub at_us: u64,
}

/// What the alarm check found, summed over streams.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct AlarmTally {
    /// Flips the streams had to show (flips of their id while they were open).
    pub flips: u64,
    /// Flips seen within the deadline.
    pub on_time: u64,
    /// Flips seen, but after the deadline.
    pub late: u64,
    /// Flips never seen before the next flip of the id.
    pub missed: u64,
    /// Change mode: a value sent again without a change in between.
    pub duplicated: u64,
    /// An old value sent after the new one was shown, or a wrong first value.
    pub stale: u64,
    /// Events of all kinds.
    pub events: u64,
    /// Ack-to-event latency of each flip seen, in microseconds.
    #[serde(skip)]
    pub latencies_us: Vec<u64>,
}

impl AlarmTally {
    /// Adds another stream's tally.
    pub fn add(&mut self, o: AlarmTally) {
        self.flips += o.flips;
        self.on_time += o.on_time;
        self.late += o.late;
        self.missed += o.missed;
        self.duplicated += o.duplicated;
        self.stale += o.stale;
        self.events += o.events;
        self.latencies_us.extend(o.latencies_us);
    }
}

/// Checks one stream. `initial` is the id's value before the first flip; `flips` were all made
/// after the stream's first event; `end_us` is when the stream was closed by us. Flip `k` owns the
/// time from its PUT until the next flip's PUT: in that span the new value must show up within
/// `deadline_us` of the ack (change mode: exactly once, and nothing else may be sent).
pub fn check_alarm(
    mode: AlarmMode,
    initial: bool,
    flips: &[Flip],
    seen: &[Seen],
    deadline_us: u64,
    end_us: u64,
) -> AlarmTally {
    let mut t = AlarmTally {
        events: seen.len() as u64,
        ..AlarmTally::default()
    };
    let first_flip = flips.first().map_or(end_us, |f| f.sent_us);
    // Before the first flip: the initial value, once in change mode.
    let before: Vec<&Seen> = seen.iter().filter(|s| s.at_us < first_flip).collect();
    if before.is_empty() {
        t.missed += 1; // the stream never showed its first value
    }
    for (i, s) in before.iter().enumerate() {
        if s.value != initial {
            t.stale += 1;
        } else if i > 0 && mode == AlarmMode::Change {
            t.duplicated += 1;
        }
    }
    for (k, f) in flips.iter().enumerate() {
        let next = flips.get(k + 1).map_or(end_us, |n| n.sent_us);
        let old = if k == 0 { initial } else { flips[k - 1].value };
        t.flips += 1;
        let span: Vec<&Seen> = seen
            .iter()
            .filter(|s| s.at_us >= f.sent_us && s.at_us < next)
            .collect();
        let first = span.iter().position(|s| s.value == f.value);
        match first {
            None => t.missed += 1,
            Some(i) => {
                let at = span[i].at_us;
                if at <= f.acked_us + deadline_us {
                    t.on_time += 1;
                } else {
                    t.late += 1;
                }
                t.latencies_us.push(at.saturating_sub(f.acked_us));
                // Before the new value shows, the old one may still tick (tick mode) but not be
                // repeated (change mode).
                for s in &span[..i] {
                    if s.value != old {
                        t.stale += 1;
                    } else if mode == AlarmMode::Change {
                        t.duplicated += 1;
                    }
                }
                for s in &span[i + 1..] {
                    if s.value != f.value {
                        t.stale += 1;
                    } else if mode == AlarmMode::Change {
                        t.duplicated += 1;
                    }
                }
            }
        }
    }
    t
}

/// Server threads and memory at one moment, from `/debug/threads` and `/metrics`.
#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Snapshot {
    /// `process_threads`: every thread of the server process (tiny_http's included).
    pub process_threads: u64,
    /// `spawned_live`: threads the server spawned itself and has not joined yet.
    pub spawned_live: u64,
    /// `process_rss_bytes`.
    pub rss_bytes: u64,
    /// `syncast_streaming_clients`.
    pub streaming_clients: u64,
    /// `syncast_chat_members`.
    pub chat_members: u64,
}

/// Baseline, peak and after-settle snapshots, and how long the settle took.
#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct Leak {
    /// Before the first client connected.
    pub baseline: Snapshot,
    /// Field-wise maximum seen while running.
    pub peak: Snapshot,
    /// The last snapshot of the settle wait.
    pub after: Snapshot,
    /// Seconds after the last client left until `spawned_live` was back (`None`: never).
    pub spawned_back_after_s: Option<f64>,
    /// Seconds until `process_threads` was back (`None`: never).
    pub process_back_after_s: Option<f64>,
    /// The longest wait allowed.
    pub settle_s: f64,
}

/// Idle tiny_http pool threads the process may keep above its baseline without a leak.
/// tiny_http keeps up to 4 idle pool threads forever (`MIN_THREADS` in its
/// src/util/task_pool.rs: a thread that starts waiting while at most 4 are active never times
/// out); the baseline probe itself needed at least one, so at most 3 more can remain.
pub const POOL_ALLOWANCE: u64 = 3;

impl Leak {
    /// Whether `s` is back at the baseline: (spawned threads exactly, process threads within
    /// [`POOL_ALLOWANCE`]).
    pub fn threads_back(baseline: &Snapshot, s: &Snapshot) -> (bool, bool) {
        (
            s.spawned_live <= baseline.spawned_live,
            s.process_threads <= baseline.process_threads + POOL_ALLOWANCE,
        )
    }
}

/// Every count the verdict looks at.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    /// Chat results, if the chat scenario ran.
    pub chat: Option<ChatTally>,
    /// The presence check (chat runs that recorded presence events).
    pub presence: Option<PresenceTally>,
    /// Alarm results, if the alarm scenario ran.
    pub alarm: Option<AlarmTally>,
    /// Clients that could not finish their script.
    pub clients_failed: u64,
    /// Thread figures of each node (`--url`), in order; `None` where a node's figures could not
    /// be read.
    pub leaks: Vec<Option<Leak>>,
}

/// PASS only with no loss, duplicate, reordering, unexpected or late event, no failed client and
/// no leak; otherwise every reason.
pub fn verdict(o: &Outcome) -> Vec<String> {
    let mut reasons = Vec::new();
    let mut bad = |n: u64, what: &str| {
        if n > 0 {
            reasons.push(format!("{n} {what}"));
        }
    };
    if let Some(c) = &o.chat {
        bad(c.lost, "chat messages lost");
        bad(c.duplicated, "chat messages duplicated");
        bad(c.out_of_order, "chat messages out of order");
        bad(c.unexpected, "unexpected chat messages (own or unknown)");
    }
    if let Some(p) = &o.presence {
        bad(p.lost, "joins or leaves lost");
        bad(p.duplicated, "joins or leaves duplicated");
        bad(p.out_of_order, "presence events out of order");
        bad(p.inconsistent, "joins or leaves announced inconsistently");
    }
    if let Some(a) = &o.alarm {
        bad(a.missed, "alarm flips missed");
        bad(a.late, "alarm flips late");
        bad(a.duplicated, "alarm events duplicated");
        bad(a.stale, "stale alarm events");
    }
    bad(o.clients_failed, "clients failed");
    if o.leaks.is_empty() {
        reasons.push("server threads could not be read".into());
    }
    let several = o.leaks.len() > 1;
    for (k, leak) in o.leaks.iter().enumerate() {
        // With several nodes each reason says whose: node 1 is the first --url.
        let node = if several {
            format!("node {}: ", k + 1)
        } else {
            String::new()
        };
        let Some(l) = leak else {
            reasons.push(format!("{node}server threads could not be read"));
            continue;
        };
        let b = &l.baseline;
        let a = &l.after;
        if a.spawned_live > b.spawned_live {
            reasons.push(format!(
                "{node}thread leak: spawned_live {} > baseline {} after {:.1}s",
                a.spawned_live, b.spawned_live, l.settle_s
            ));
        }
        if a.process_threads > b.process_threads + POOL_ALLOWANCE {
            reasons.push(format!(
                "{node}thread leak: process_threads {} > baseline {} + {POOL_ALLOWANCE} idle pool threads after {:.1}s",
                a.process_threads, b.process_threads, l.settle_s
            ));
        }
        if a.streaming_clients > b.streaming_clients {
            reasons.push(format!(
                "{node}stream leak: streaming_clients {} > baseline {}",
                a.streaming_clients, b.streaming_clients
            ));
        }
        if a.chat_members > b.chat_members {
            reasons.push(format!(
                "{node}session leak: chat_members {} > baseline {}",
                a.chat_members, b.chat_members
            ));
        }
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three clients each send `n` messages with ids from one room sequence; every receiver's
    /// window covers everything, and each receives every other's messages in order.
    /// Three members: 0 and 1 stream from id 0 to 20; 2 joins at id 5 (its welcome says 4) and
    /// leaves at id 15 (the last it saw is 14); 1 leaves at id 18, seen by 0 only.
    fn presence_room() -> ChatLog {
        let p = |id, joined: &[u32], left: &[u32]| PresenceSeen {
            id,
            joined: joined.to_vec(),
            left: left.to_vec(),
        };
        ChatLog {
            windows: vec![
                Some(Window {
                    after: 0,
                    until: 20,
                }),
                Some(Window {
                    after: 0,
                    until: 20,
                }),
                Some(Window {
                    after: 4,
                    until: 14,
                }),
            ],
            last_seen: vec![20, 17, 14],
            presence: vec![
                vec![
                    p(1, &[0, 1], &[]),
                    p(5, &[2], &[]),
                    p(15, &[], &[2]),
                    p(18, &[], &[1]),
                ],
                vec![p(1, &[0, 1], &[]), p(5, &[2], &[]), p(15, &[], &[2])],
                vec![p(5, &[2], &[])],
            ],
            ..ChatLog::default()
        }
    }

    #[test]
    fn presence_of_a_correct_room_passes_and_a_lost_or_repeated_change_fails() {
        let ok = check_presence(&presence_room());
        // 0 and 1: each other's join (id 1), 2's join and leave; 0 also 1's leave. 2 expects
        // nothing of the others: their joins came before its window.
        assert_eq!(ok.expected, 2 + 2 + 2 + 1);
        assert_eq!(
            (ok.lost, ok.duplicated, ok.out_of_order, ok.inconsistent),
            (0, 0, 0, 0)
        );
        let mut lost = presence_room();
        lost.presence[1].remove(1);
        assert_eq!(check_presence(&lost).lost, 1);
        let mut twice = presence_room();
        let again = twice.presence[0][1].clone();
        twice.presence[0].push(again);
        let t = check_presence(&twice);
        assert_eq!((t.duplicated, t.out_of_order), (1, 1));
        let mut moved = presence_room();
        moved.presence[1][2].id = 16;
        assert_eq!(check_presence(&moved).inconsistent, 1);
        let v = verdict(&Outcome {
            presence: Some(check_presence(&lost)),
            leaks: vec![Some(Leak::default())],
            ..Outcome::default()
        });
        assert_eq!(v, vec!["1 joins or leaves lost".to_string()]);
    }

    fn perfect_room(n: u32) -> ChatLog {
        let clients = 3;
        let mut log = ChatLog::default();
        let mut id = 0;
        let mut sent = vec![Vec::new(); clients];
        let mut order = Vec::new();
        for seq in 1..=n {
            for (c, s) in sent.iter_mut().enumerate() {
                id += 1;
                s.push(Sent {
                    seq,
                    id: Some(id),
                    at_us: id * 10,
                });
                order.push((c as u32, seq, id));
            }
        }
        log.sent = sent;
        for r in 0..clients as u32 {
            log.received.push(
                order
                    .iter()
                    .filter(|(c, _, _)| *c != r)
                    .map(|&(from, seq, id)| Receipt {
                        from,
                        seq,
                        id,
                        at_us: id * 10 + 5,
                    })
                    .collect(),
            );
            log.windows.push(Some(Window {
                after: 0,
                until: id,
            }));
        }
        log
    }

    fn passes(o: &Outcome) -> bool {
        verdict(o).is_empty()
    }

    fn outcome_with_chat(t: ChatTally) -> Outcome {
        Outcome {
            chat: Some(t),
            leaks: vec![Some(Leak::default())],
            ..Outcome::default()
        }
    }

    #[test]
    fn a_perfect_room_passes_with_every_delivery_counted() {
        let t = check_chat(&perfect_room(4));
        assert_eq!(t.sent, 12);
        assert_eq!(t.expected, 24);
        assert_eq!(t.delivered, 24);
        assert_eq!(
            (t.lost, t.duplicated, t.out_of_order, t.unexpected),
            (0, 0, 0, 0)
        );
        assert!(t.latencies_us.iter().all(|&l| l == 5));
        assert!(passes(&outcome_with_chat(t)));
    }

    #[test]
    fn a_dropped_message_is_lost_and_fails() {
        let mut log = perfect_room(4);
        log.received[1].remove(3);
        let t = check_chat(&log);
        assert_eq!(t.lost, 1);
        assert_eq!(t.delivered, 23);
        let reasons = verdict(&outcome_with_chat(t));
        assert_eq!(reasons, vec!["1 chat messages lost".to_string()]);
    }

    #[test]
    fn a_duplicate_is_counted_and_fails() {
        let mut log = perfect_room(4);
        let copy = log.received[2][1];
        log.received[2].insert(4, copy);
        let t = check_chat(&log);
        assert_eq!((t.lost, t.duplicated, t.out_of_order), (0, 1, 0));
        assert_eq!(
            verdict(&outcome_with_chat(t)),
            vec!["1 chat messages duplicated".to_string()]
        );
    }

    #[test]
    fn a_reordering_is_counted_and_fails() {
        let mut log = perfect_room(4);
        // Receiver 0 gets sender 1's messages 2 and 3 swapped.
        let r = &mut log.received[0];
        let a = r.iter().position(|x| x.from == 1 && x.seq == 2).unwrap();
        let b = r.iter().position(|x| x.from == 1 && x.seq == 3).unwrap();
        r.swap(a, b);
        let t = check_chat(&log);
        assert_eq!((t.lost, t.duplicated, t.out_of_order), (0, 0, 1));
        assert_eq!(
            verdict(&outcome_with_chat(t)),
            vec!["1 chat messages out of order".to_string()]
        );
    }

    #[test]
    fn an_echo_of_ones_own_message_is_unexpected() {
        let mut log = perfect_room(2);
        log.received[0].push(Receipt {
            from: 0,
            seq: 1,
            id: 1,
            at_us: 99,
        });
        let t = check_chat(&log);
        assert_eq!(t.unexpected, 1);
        assert!(!passes(&outcome_with_chat(t)));
    }

    #[test]
    fn messages_outside_a_window_are_not_expected_but_may_arrive() {
        let mut log = perfect_room(4);
        // Receiver 2 joined after id 3 and left at id 9: it expects only ids 4..=9 of others.
        log.windows[2] = Some(Window { after: 3, until: 9 });
        log.received[2].retain(|x| x.id > 3);
        let t = check_chat(&log);
        assert_eq!(t.lost, 0);
        // Others: 8 + 8; receiver 2: ids 4..=9 minus its own (6 and 9) = 4.
        assert_eq!(t.expected, 8 + 8 + 4);
        assert!(passes(&outcome_with_chat(t)));
    }

    #[test]
    fn a_message_with_unknown_outcome_is_not_expected() {
        let mut log = perfect_room(2);
        log.sent[1][0].id = None;
        for r in [0, 2] {
            log.received[r].retain(|x| !(x.from == 1 && x.seq == 1));
        }
        let t = check_chat(&log);
        assert_eq!(t.lost, 0);
        assert_eq!(t.sent, 5);
    }

    /// A recorded log, as the tool keeps it: a resume after a cut-off must neither lose nor
    /// repeat, and a resume that replays an event is caught.
    #[test]
    fn a_resume_that_replays_an_event_is_caught() {
        let mut log = perfect_room(3);
        let t = check_chat(&log);
        assert!(passes(&outcome_with_chat(t)));
        // Receiver 1 reconnected with a Last-Event-ID one too low: one event comes twice.
        let replay = log.received[1][2];
        log.received[1].insert(3, replay);
        let t = check_chat(&log);
        assert_eq!(t.duplicated, 1);
        assert!(!passes(&outcome_with_chat(t)));
    }

    const D: u64 = 1_000;

    fn flips(values: &[(bool, u64)]) -> Vec<Flip> {
        values
            .iter()
            .map(|&(value, at)| Flip {
                value,
                sent_us: at,
                acked_us: at + 10,
            })
            .collect()
    }

    fn seen(values: &[(bool, u64)]) -> Vec<Seen> {
        values
            .iter()
            .map(|&(value, at_us)| Seen { value, at_us })
            .collect()
    }

    #[test]
    fn change_mode_sees_each_flip_once() {
        let f = flips(&[(true, 1000), (false, 5000)]);
        let s = seen(&[(false, 5), (true, 1400), (false, 5600)]);
        let t = check_alarm(AlarmMode::Change, false, &f, &s, D, 9000);
        assert_eq!((t.flips, t.on_time, t.missed, t.late), (2, 2, 0, 0));
        assert_eq!((t.duplicated, t.stale), (0, 0));
        assert_eq!(t.latencies_us, vec![390, 590]);
    }

    #[test]
    fn change_mode_missing_late_and_repeated_flips_fail() {
        let f = flips(&[(true, 1000), (false, 5000)]);
        // First flip seen late, second never; the first value repeated.
        let s = seen(&[(false, 5), (false, 500), (true, 2500)]);
        let t = check_alarm(AlarmMode::Change, false, &f, &s, D, 9000);
        assert_eq!((t.on_time, t.late, t.missed, t.duplicated), (0, 1, 1, 1));
        let o = Outcome {
            alarm: Some(t),
            leaks: vec![Some(Leak::default())],
            ..Outcome::default()
        };
        let r = verdict(&o);
        assert!(r.contains(&"1 alarm flips missed".to_string()), "{r:?}");
        assert!(r.contains(&"1 alarm flips late".to_string()), "{r:?}");
        assert!(
            r.contains(&"1 alarm events duplicated".to_string()),
            "{r:?}"
        );
    }

    #[test]
    fn tick_mode_repeats_are_fine_but_a_flip_back_is_stale() {
        let f = flips(&[(true, 1000)]);
        let s = seen(&[
            (false, 5),
            (false, 505),
            (false, 1005),
            (true, 1505),
            (true, 2005),
        ]);
        let t = check_alarm(AlarmMode::Tick, false, &f, &s, D, 3000);
        assert_eq!((t.on_time, t.missed, t.duplicated, t.stale), (1, 0, 0, 0));
        let s = seen(&[(false, 5), (true, 1505), (false, 2005)]);
        let t = check_alarm(AlarmMode::Tick, false, &f, &s, D, 3000);
        assert_eq!(t.stale, 1);
    }

    #[test]
    fn a_stream_that_never_starts_misses_its_first_value() {
        let t = check_alarm(AlarmMode::Tick, false, &[], &[], D, 3000);
        assert_eq!(t.missed, 1);
    }

    fn snap(process: u64, spawned: u64) -> Snapshot {
        Snapshot {
            process_threads: process,
            spawned_live: spawned,
            ..Snapshot::default()
        }
    }

    #[test]
    fn threads_not_back_at_baseline_fail_as_a_leak() {
        let mut leak = Leak {
            baseline: snap(8, 2),
            peak: snap(1200, 1002),
            after: snap(8, 2),
            settle_s: 10.0,
            ..Leak::default()
        };
        let ok = Outcome {
            leaks: vec![Some(leak.clone())],
            ..Outcome::default()
        };
        assert!(passes(&ok));
        // tiny_http may keep up to 3 more idle pool threads than at baseline.
        leak.after = snap(11, 2);
        let ok = Outcome {
            leaks: vec![Some(leak.clone())],
            ..Outcome::default()
        };
        assert!(passes(&ok));
        // A server that never ends a few stream threads (each also pinning a pool thread).
        leak.after = snap(14, 5);
        let o = Outcome {
            leaks: vec![Some(leak)],
            ..Outcome::default()
        };
        let r = verdict(&o);
        assert_eq!(r.len(), 2, "{r:?}");
        assert!(r[0].starts_with("thread leak: spawned_live 5 > baseline 2"));
        assert!(r[1].starts_with("thread leak: process_threads 14 > baseline 8 + 3"));
    }

    #[test]
    fn with_two_nodes_a_leak_or_unreadable_figures_on_either_fails_and_names_it() {
        let back = Leak {
            baseline: snap(8, 2),
            after: snap(8, 2),
            ..Leak::default()
        };
        let mut leaked = back.clone();
        leaked.after = snap(8, 4);
        let both = Outcome {
            leaks: vec![Some(back.clone()), Some(back.clone())],
            ..Outcome::default()
        };
        assert!(passes(&both));
        let second = Outcome {
            leaks: vec![Some(back.clone()), Some(leaked)],
            ..Outcome::default()
        };
        let r = verdict(&second);
        assert_eq!(r.len(), 1, "{r:?}");
        assert!(r[0].starts_with("node 2: thread leak: spawned_live 4 > baseline 2"));
        let unread = Outcome {
            leaks: vec![None, Some(back)],
            ..Outcome::default()
        };
        assert_eq!(
            verdict(&unread),
            vec!["node 1: server threads could not be read".to_string()]
        );
    }

    #[test]
    fn unreadable_server_figures_and_failed_clients_fail() {
        let o = Outcome {
            clients_failed: 2,
            ..Outcome::default()
        };
        let r = verdict(&o);
        assert!(r.contains(&"2 clients failed".to_string()));
        assert!(r.contains(&"server threads could not be read".to_string()));
    }
}
