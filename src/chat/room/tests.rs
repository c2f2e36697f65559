//! The room's behaviour, driven through its calls as the streams and handlers use them.

use super::types::{check_text, MAX_TEXT, TAKE_EVENTS};
use super::*;
use crate::kit::sse::{Item, Parser};
use serde_json::json;

fn room(tweak: impl FnOnce(&mut Config)) -> Arc<Room> {
    let mut c = Config::default();
    tweak(&mut c);
    Room::new(&c, Arc::new(Metrics::default()))
}

/// Parses one encoded event into (event, id, data).
fn parse(bytes: &[u8]) -> (String, Option<u64>, serde_json::Value) {
    let mut all = events(bytes.to_vec());
    assert_eq!(all.len(), 1, "one event");
    all.remove(0)
}

/// Takes every live event waiting for `att`, as its stream does when woken.
fn drain(r: &Room, att: &Attached) -> Vec<(String, Option<u64>, serde_json::Value)> {
    let mut out = Vec::new();
    while att.wake.try_recv().is_ok() {}
    while let (Take::More(_), _) = take_bytes(r, att, &mut out) {}
    events(out)
}

/// One take for `att`, as its stream makes it: the events it hands out, appended to `out` as
/// they would be written.
fn take_bytes(r: &Room, att: &Attached, out: &mut Vec<u8>) -> (Take, usize) {
    let mut events: [Option<Encoded>; TAKE_EVENTS] = [const { None }; TAKE_EVENTS];
    let mut accepted = [0u64; TAKE_EVENTS];
    let took = r.take(att.key, att.serial, &mut events, &mut accepted);
    let n = match took {
        Take::Done(n) | Take::More(n) => n,
        Take::Closed => 0,
    };
    assert!(
        events[n..].iter().all(Option::is_none),
        "handed out from the start"
    );
    for e in events[..n].iter().flatten() {
        out.extend_from_slice(e);
    }
    (took, n)
}

/// The events in `bytes`, each parsed (with the kit's parser, as a client would).
fn events(bytes: Vec<u8>) -> Vec<(String, Option<u64>, serde_json::Value)> {
    Parser::new()
        .feed(&bytes)
        .into_iter()
        .filter_map(|item| match item {
            Item::Event { event, id, data } => Some((
                event,
                id.map(|id| id.parse().unwrap()),
                serde_json::from_str(&data).unwrap(),
            )),
            _ => None,
        })
        .collect()
}

/// Announces the joins and leaves waiting (as the dispatcher's housekeeping does) and lets each
/// stream take what is waiting for it.
fn settle(r: &Room, atts: &[&Attached]) {
    r.flush_presence();
    for att in atts {
        let _ = drain(r, att);
    }
}

fn token(j: &Joined) -> Token {
    Token::parse(&j.token).unwrap()
}

#[test]
fn welcome_comes_first_and_a_message_reaches_others_only() {
    let r = room(|_| {});
    let a = r.join_and_attach("alice", None).unwrap();
    let (ev, id, data) = parse(&a.backlog[0]);
    assert_eq!((ev.as_str(), id), ("welcome", None));
    assert_eq!(data["name"], "alice");
    // Alice's own join is not announced yet: the welcome is the room as of last_id.
    assert_eq!(data["last_id"], 0);
    assert_eq!(data["online"], json!([]));
    assert_eq!(data["online_count"], 0);
    let bob = r.join("bob").unwrap();
    let b = r.attach(&token(&bob), None).unwrap();
    let (_, _, data) = parse(&b.backlog[0]);
    assert_eq!(
        (data["online"].clone(), data["last_id"].clone()),
        (json!([]), json!(0))
    );
    let id = r.post(&token(&bob), "hi").unwrap();
    let got = drain(&r, &a);
    // The joins waiting went out first, in one event with its own id.
    assert_eq!(got[0].0, "presence");
    assert_eq!(got[0].1, Some(id - 1));
    assert_eq!(got[0].2, json!({ "joined": ["alice", "bob"], "left": [] }));
    assert_eq!(got[1].0, "message");
    assert_eq!(got[1].1, Some(id));
    assert_eq!(got[1].2["from"], "bob");
    assert_eq!(got[1].2["text"], "hi");
    assert_eq!(got[1].2["id"], id);
    assert_eq!(
        drain(&r, &b).into_iter().map(|e| e.0).collect::<Vec<_>>(),
        vec!["presence"],
        "no echo of one's own message"
    );
}

#[test]
fn names_are_unique_case_insensitively_and_renames_free_the_old_one() {
    let r = room(|_| {});
    let a = r.join("Alice").unwrap();
    assert_eq!(r.join("alice").unwrap_err(), ChatError::NameTaken);
    assert_eq!(r.join("ALICE").unwrap_err(), ChatError::NameTaken);
    assert_eq!(r.join("a b").unwrap_err(), ChatError::InvalidName);
    let b = r.join("bob").unwrap();
    assert_eq!(
        r.rename(&token(&b), "aLiCe").unwrap_err(),
        ChatError::NameTaken
    );
    // A session may change the case of its own name.
    r.rename(&token(&a), "ALICE").unwrap();
    r.rename(&token(&a), "carol").unwrap();
    r.join("alice").unwrap();
    assert_eq!(r.online(), vec!["alice", "bob", "carol"]);
}

#[test]
fn resume_after_k_replays_exactly_the_later_events_then_live_ones() {
    let r = room(|_| {});
    let watcher = r.join("w").unwrap();
    let poster = r.join("p").unwrap();
    let w = r.attach(&token(&watcher), None).unwrap();
    let ids: Vec<u64> = (0..5)
        .map(|i| r.post(&token(&poster), &format!("m{i}")).unwrap())
        .collect();
    drop(w);
    let w2 = r.attach(&token(&watcher), Some(ids[1])).unwrap();
    let replayed: Vec<u64> = w2.backlog[1..]
        .iter()
        .map(|b| parse(b).1.unwrap())
        .collect();
    assert_eq!(replayed, ids[2..]);
    let live = r.post(&token(&poster), "live").unwrap();
    assert_eq!(drain(&r, &w2)[0].1, Some(live));
}

#[test]
fn a_resume_older_than_the_history_gets_reset_first() {
    let r = room(|c| c.history = 3);
    let w = r.join("w").unwrap();
    let p = r.join("p").unwrap();
    for i in 0..10 {
        r.post(&token(&p), &format!("m{i}")).unwrap();
    }
    let a = r.attach(&token(&w), Some(1)).unwrap();
    let (ev, _, data) = parse(&a.backlog[1]);
    assert_eq!(ev, "reset");
    // Ids 1 (the presence of w and p) to 11; the last three kept.
    assert_eq!(data["oldest"], 9);
    assert_eq!(a.backlog.len(), 2 + 3);
}

#[test]
fn own_messages_are_not_replayed() {
    let r = room(|_| {});
    let a = r.join("a").unwrap();
    let b = r.join("b").unwrap();
    r.post(&token(&a), "mine").unwrap();
    let theirs = r.post(&token(&b), "theirs").unwrap();
    let att = r.attach(&token(&a), Some(0)).unwrap();
    let messages: Vec<_> = att.backlog[1..]
        .iter()
        .map(|b| parse(b))
        .filter(|e| e.0 == "message")
        .collect();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].1, Some(theirs));
}

#[test]
fn a_first_attach_after_post_join_gets_what_came_since_joining() {
    let r = room(|_| {});
    let a = r.join("a").unwrap();
    let b = r.join("b").unwrap();
    let m = r.post(&token(&b), "before your stream").unwrap();
    let att = r.attach(&token(&a), None).unwrap();
    let ids: Vec<_> = att.backlog[1..].iter().map(|b| parse(b).1).collect();
    // b's join (after a's) and the message.
    assert_eq!(ids, vec![Some(m - 1), Some(m)]);
    // A later attach without Last-Event-ID is live only.
    let again = r.attach(&token(&a), None).unwrap();
    assert_eq!(again.backlog.len(), 1);
    assert_eq!(r.kick_of(att.serial).unwrap().reason, CloseReason::Replaced);
}

#[test]
fn a_full_queue_cuts_the_member_off_as_slow_and_others_go_on() {
    let metrics = Arc::new(Metrics::default());
    let c = Config {
        queue: 2,
        ..Config::default()
    };
    let r = Room::new(&c, metrics.clone());
    let slow = r.join("slow").unwrap();
    let fast = r.join("fast").unwrap();
    let p = r.join("p").unwrap();
    let s = r.attach(&token(&slow), None).unwrap();
    let f = r.attach(&token(&fast), None).unwrap();
    settle(&r, &[&s, &f]);
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(r.post(&token(&p), &format!("m{i}")).unwrap());
        assert_eq!(drain(&r, &f).len(), 1);
    }
    // Cut off at the third event, the first more than `queue` behind.
    assert_eq!(r.kick_of(s.serial).unwrap().reason, CloseReason::Slow);
    assert_eq!(metrics.chat_slow.get(), 1);
    assert_eq!(take_bytes(&r, &s, &mut Vec::new()).0, Take::Closed);
    assert!(s.wake.try_recv().is_ok(), "the pending wake is still there");
    assert!(s.wake.try_recv().is_err(), "and then the channel is closed");
    // Reattaching after the last event it got gives it the rest.
    let s2 = r.attach(&token(&slow), Some(ids[1])).unwrap();
    let rest: Vec<_> = s2.backlog[1..].iter().map(|b| parse(b).1).collect();
    assert_eq!(rest, ids[2..].iter().map(|i| Some(*i)).collect::<Vec<_>>());
}

#[test]
fn a_stream_whose_next_event_leaves_the_history_is_cut_off() {
    let r = room(|c| {
        c.history = 3;
        c.queue = 100;
    });
    let w = r.join("w").unwrap();
    let p = r.join("p").unwrap();
    let att = r.attach(&token(&w), None).unwrap();
    settle(&r, &[&att]);
    for i in 0..3 {
        r.post(&token(&p), &format!("m{i}")).unwrap();
    }
    assert!(
        r.kick_of(att.serial).is_none(),
        "three behind still fit the history"
    );
    r.post(&token(&p), "m3").unwrap();
    assert_eq!(r.kick_of(att.serial).unwrap().reason, CloseReason::Slow);
}

#[test]
fn many_events_wait_behind_one_wake_and_go_out_in_one_take() {
    let r = room(|_| {});
    let w = r.join("w").unwrap();
    let p = r.join("p").unwrap();
    let att = r.attach(&token(&w), None).unwrap();
    settle(&r, &[&att]);
    let ids: Vec<u64> = (0..10)
        .map(|i| r.post(&token(&p), &format!("m{i}")).unwrap())
        .collect();
    assert!(att.wake.try_recv().is_ok());
    assert!(att.wake.try_recv().is_err(), "one wake for ten events");
    let mut out = Vec::new();
    assert_eq!(take_bytes(&r, &att, &mut out).0, Take::Done(10));
    let got: Vec<u64> = events(out).into_iter().map(|e| e.1.unwrap()).collect();
    assert_eq!(got, ids);
    assert_eq!(take_bytes(&r, &att, &mut Vec::new()).0, Take::Done(0));
}

#[test]
fn a_member_that_only_posts_is_not_cut_off() {
    let r = room(|c| {
        c.queue = 3;
        c.rate = 1000.0;
        c.burst = 1000.0;
    });
    let a = r.join("a").unwrap();
    let att = r.attach(&token(&a), None).unwrap();
    settle(&r, &[&att]);
    for i in 0..10 {
        r.post(&token(&a), &format!("m{i}")).unwrap();
    }
    assert!(r.kick_of(att.serial).is_none());
    assert!(
        att.wake.try_recv().is_err(),
        "not woken for its own messages"
    );
    assert!(drain(&r, &att).is_empty());
}

#[test]
fn held_wakes_go_out_once_when_the_guard_drops() {
    let r = room(|_| {});
    let w = r.join("w").unwrap();
    let p = r.join("p").unwrap();
    let att = r.attach(&token(&w), None).unwrap();
    settle(&r, &[&att]);
    let held = r.hold_wakes();
    r.post(&token(&p), "one").unwrap();
    r.post(&token(&p), "two").unwrap();
    assert!(att.wake.try_recv().is_err(), "no wake while held");
    drop(held);
    assert!(att.wake.try_recv().is_ok());
    assert_eq!(drain(&r, &att).len(), 2);
}

#[test]
fn a_take_stops_when_its_array_is_full_and_the_next_goes_on_from_there() {
    let r = room(|c| {
        c.rate = 1000.0;
        c.burst = 1000.0;
    });
    let w = r.join("w").unwrap();
    let p = r.join("p").unwrap();
    let att = r.attach(&token(&w), None).unwrap();
    settle(&r, &[&att]);
    let big = "x".repeat(MAX_TEXT);
    let n = 2 * TAKE_EVENTS + 3;
    let ids: Vec<u64> = (0..n).map(|_| r.post(&token(&p), &big).unwrap()).collect();
    let mut out = Vec::new();
    let mut takes = Vec::new();
    loop {
        let (took, k) = take_bytes(&r, &att, &mut out);
        takes.push(k);
        match took {
            Take::More(_) => assert_eq!(k, TAKE_EVENTS),
            Take::Done(_) => break,
            Take::Closed => panic!("closed"),
        }
    }
    assert_eq!(takes, vec![TAKE_EVENTS, TAKE_EVENTS, 3]);
    let got: Vec<u64> = events(out).into_iter().map(|e| e.1.unwrap()).collect();
    assert_eq!(got, ids, "every event once, in order");
}

#[test]
fn sessions_expire_after_the_grace_period_without_a_stream() {
    let metrics = Arc::new(Metrics::default());
    let c = Config {
        grace: Duration::from_secs(30),
        ..Config::default()
    };
    let r = Room::new(&c, metrics.clone());
    let watcher = r.join_and_attach("w", None).unwrap();
    let gone = r.join("gone").unwrap();
    let stays = r.join_and_attach("stays", None).unwrap();
    assert_eq!(metrics.chat_members.get(), 3);
    let now = Instant::now();
    assert_eq!(r.expire(now), 0);
    // Only the session without a stream expires.
    assert_eq!(r.expire(now + Duration::from_secs(31)), 1);
    assert_eq!(r.online(), vec!["stays", "w"]);
    assert_eq!(metrics.chat_members.get(), 2);
    // When the stream of "stays" ends, its grace period starts.
    r.detach(stays.key, stays.serial);
    let detached = Instant::now();
    assert_eq!(r.expire(detached + Duration::from_secs(29)), 0);
    assert_eq!(r.expire(detached + Duration::from_secs(31)), 1);
    assert_eq!(r.online(), vec!["w"]);
    r.flush_presence();
    let presence: Vec<_> = drain(&r, &watcher)
        .into_iter()
        .filter(|e| e.0 == "presence")
        .map(|e| e.2)
        .collect();
    assert_eq!(
        presence,
        vec![
            json!({ "joined": ["w", "gone", "stays"], "left": [] }),
            // Both expiries since the last announcement, in one event.
            json!({ "joined": [], "left": [
                { "name": "gone", "reason": "timeout" },
                { "name": "stays", "reason": "timeout" },
            ] }),
        ]
    );
    assert_eq!(
        r.post(&token(&gone), "x").unwrap_err(),
        ChatError::Unauthorized
    );
    r.join("gone").unwrap();
}

#[test]
fn a_stale_detach_does_not_detach_the_newer_stream() {
    let r = room(|_| {});
    let j = r.join("a").unwrap();
    let first = r.attach(&token(&j), None).unwrap();
    let _second = r.attach(&token(&j), None).unwrap();
    r.detach(first.key, first.serial);
    assert_eq!(r.expire(Instant::now() + Duration::from_secs(3600)), 0);
}

#[test]
fn one_session_cannot_act_as_another() {
    let r = room(|_| {});
    let a = r.join("a").unwrap();
    let b = r.join("b").unwrap();
    // Same selector as a, wrong secret.
    let forged = format!("{}{}", &a.token[..16], &b.token[16..]);
    let forged = Token::parse(&forged).unwrap();
    assert_eq!(r.post(&forged, "x").unwrap_err(), ChatError::Unauthorized);
    assert_eq!(r.rename(&forged, "z").unwrap_err(), ChatError::Unauthorized);
    assert_eq!(r.leave(&forged).unwrap_err(), ChatError::Unauthorized);
    assert!(r.attach(&forged, None).is_err());
    assert_eq!(r.online(), vec!["a", "b"]);
}

#[test]
fn leaving_closes_the_stream_and_frees_the_name() {
    let r = room(|_| {});
    let w = r.join_and_attach("w", None).unwrap();
    let a = r.join("a").unwrap();
    let s = r.attach(&token(&a), None).unwrap();
    assert_eq!(r.leave(&token(&a)).unwrap(), "a");
    assert_eq!(r.kick_of(s.serial).unwrap().reason, CloseReason::Left);
    r.flush_presence();
    let presence = drain(&r, &w).pop().unwrap();
    // a joined and left before anything was announced: both are in one event each, in order.
    assert_eq!(presence.0, "presence");
    assert_eq!(
        presence.2,
        json!({ "joined": [], "left": [{ "name": "a", "reason": "left" }] })
    );
    assert_eq!(r.leave(&token(&a)).unwrap_err(), ChatError::Unauthorized);
    r.join("A").unwrap();
}

#[test]
fn the_rate_limit_answers_with_a_wait() {
    let r = room(|c| {
        c.rate = 1.0;
        c.burst = 2.0;
    });
    let a = r.join("a").unwrap();
    r.post(&token(&a), "1").unwrap();
    r.post(&token(&a), "2").unwrap();
    match r.post(&token(&a), "3") {
        Err(ChatError::RateLimited(d)) => assert!(d <= Duration::from_secs(1)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_full_room_refuses_joins_until_someone_leaves() {
    let r = room(|c| c.max_members = 2);
    let a = r.join("a").unwrap();
    r.join("b").unwrap();
    assert_eq!(r.join("c").unwrap_err(), ChatError::RoomFull);
    r.leave(&token(&a)).unwrap();
    r.join("c").unwrap();
}

#[test]
fn texts_are_checked() {
    assert!(check_text("hi\nthere").is_ok());
    assert!(check_text(&"x".repeat(4096)).is_ok());
    assert!(check_text("").is_err());
    assert!(check_text(&"x".repeat(4097)).is_err());
    assert!(check_text("a\0b").is_err());
}

#[test]
fn joins_and_leaves_go_out_together_in_one_presence_event_per_flush() {
    let r = room(|_| {});
    let w = r.join_and_attach("w", None).unwrap();
    settle(&r, &[&w]);
    let joined: Vec<Joined> = (0..5).map(|i| r.join(&format!("n{i}")).unwrap()).collect();
    assert!(
        w.wake.try_recv().is_err(),
        "nothing is broadcast before the flush"
    );
    r.leave(&token(&joined[0])).unwrap();
    assert!(r.flush_presence());
    assert!(!r.flush_presence(), "nothing left to announce");
    let got = drain(&r, &w);
    assert_eq!(got.len(), 2, "{got:?}");
    // n0 joined and left before the flush: two events, so each names it once, in order.
    assert_eq!(
        got[0].2,
        json!({ "joined": ["n0", "n1", "n2", "n3", "n4"], "left": [] })
    );
    assert_eq!(
        got[1].2,
        json!({ "joined": [], "left": [{ "name": "n0", "reason": "left" }] })
    );
    assert_eq!(got[1].1, Some(got[0].1.unwrap() + 1));
    // A name that leaves and comes back in one interval: the leave, then the join.
    r.leave(&token(&joined[1])).unwrap();
    r.join("n1").unwrap();
    r.flush_presence();
    let got: Vec<_> = drain(&r, &w).into_iter().map(|e| e.2).collect();
    assert_eq!(
        got,
        vec![
            json!({ "joined": [], "left": [{ "name": "n1", "reason": "left" }] }),
            json!({ "joined": ["n1"], "left": [] }),
        ]
    );
}

#[test]
fn a_full_presence_batch_goes_out_at_once_and_other_events_wait_behind_it() {
    let r = room(|c| c.max_members = 2 * PRESENCE_MAX);
    let w = r.join_and_attach("w", None).unwrap();
    settle(&r, &[&w]);
    for i in 0..PRESENCE_MAX {
        r.join(&format!("m{i}")).unwrap();
    }
    let got = drain(&r, &w);
    assert_eq!(got.len(), 1, "the full batch was broadcast without a flush");
    assert_eq!(got[0].2["joined"].as_array().unwrap().len(), PRESENCE_MAX);
    // A join waiting when someone renames is announced before the rename.
    let late = r.join("late").unwrap();
    r.rename(&token(&late), "later").unwrap();
    let got: Vec<_> = drain(&r, &w).into_iter().map(|e| (e.0, e.2)).collect();
    assert_eq!(
        got,
        vec![
            ("presence".into(), json!({ "joined": ["late"], "left": [] })),
            ("rename".into(), json!({ "from": "late", "to": "later" })),
        ]
    );
}

#[test]
fn the_welcome_lists_the_first_names_and_the_count_and_users_pages_through_all() {
    let r = room(|_| {});
    let n = WELCOME_NAMES + 50;
    for i in 0..n {
        r.join(&format!("u{i:04}")).unwrap();
    }
    r.flush_presence();
    let a = r.join_and_attach("zz-last", None).unwrap();
    let (_, _, welcome) = parse(&a.backlog[0]);
    assert_eq!(welcome["online_count"], n);
    let first = welcome["online"].as_array().unwrap();
    assert_eq!(first.len(), WELCOME_NAMES);
    assert_eq!(first[0], "u0000");
    assert_eq!(
        first[WELCOME_NAMES - 1],
        format!("u{:04}", WELCOME_NAMES - 1)
    );
    // GET /chat/users is exact now: zz-last's join is not announced yet but it is online.
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = r.users(after.as_deref(), 64).unwrap();
        assert_eq!(page.count, n + 1);
        assert!(page.names.len() <= 64);
        all.extend(page.names.iter().cloned());
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(all, r.online());
    assert_eq!(all.len(), n + 1);
    assert_eq!(all.last().unwrap(), "zz-last");
    assert!(r.users(Some("zz-last"), 10).unwrap().names.is_empty());
}

#[test]
fn presence_events_are_replayed_on_resume_like_any_other() {
    let r = room(|_| {});
    let w = r.join("w").unwrap();
    let att = r.attach(&token(&w), None).unwrap();
    r.flush_presence();
    let seen = drain(&r, &att);
    let last = seen.last().unwrap().1.unwrap();
    drop(att);
    r.join("x").unwrap();
    r.flush_presence();
    let again = r.attach(&token(&w), Some(last)).unwrap();
    let replayed: Vec<_> = again.backlog[1..].iter().map(|b| parse(b)).collect();
    assert_eq!(replayed.len(), 1);
    assert_eq!(replayed[0].0, "presence");
    assert_eq!(replayed[0].1, Some(last + 1));
    assert_eq!(replayed[0].2, json!({ "joined": ["x"], "left": [] }));
}

#[test]
fn a_welcome_is_the_room_as_of_its_last_id_with_waiting_joins_and_leaves_undone() {
    let r = room(|_| {});
    r.join("a").unwrap();
    r.join("b").unwrap();
    let c = r.join("c").unwrap();
    r.flush_presence();
    r.leave(&token(&c)).unwrap();
    r.join("aa").unwrap();
    // Waiting: aa joined, c left. A new member's welcome shows the room before both.
    let d = r.join_and_attach("d", None).unwrap();
    let (_, _, welcome) = parse(&d.backlog[0]);
    assert_eq!(welcome["online"], json!(["a", "b", "c"]));
    assert_eq!(welcome["online_count"], 3);
    assert_eq!(
        r.users(None, 10).unwrap().names,
        vec!["a", "aa", "b", "d"],
        "users is now"
    );
    r.flush_presence();
    let got = drain(&r, &d);
    let last = got.last().unwrap();
    assert_eq!(
        last.2,
        json!({ "joined": ["aa", "d"], "left": [{ "name": "c", "reason": "left" }] })
    );
    assert_eq!(Some(welcome["last_id"].as_u64().unwrap() + 1), last.1);
}

/// A room whose rounds run on a `chat-waker` thread, as the server's: the registry, and the
/// shutdown channel's sender (drop it to shut down).
fn room_with_rounds() -> (
    Arc<Room>,
    crate::threads::Threads,
    crossbeam_channel::Sender<()>,
) {
    let r = room(|_| {});
    let threads = crate::threads::Threads::new();
    let (shutdown_tx, shutdown_rx) = crossbeam_channel::bounded::<()>(0);
    r.run_rounds_on(threads.clone(), shutdown_rx);
    (r, threads, shutdown_tx)
}

#[test]
fn rounds_run_on_their_thread_until_the_last_stream_detaches_and_inline_after_shutdown() {
    let (r, threads, shutdown) = room_with_rounds();
    let w = r.join("w").unwrap();
    let p = r.join("p").unwrap();
    let att = r.attach(&token(&w), None).unwrap();
    r.flush_presence();
    let forever = std::time::Duration::from_secs(30);
    assert!(
        att.wake.recv_timeout(forever).is_ok(),
        "woken by the thread"
    );
    assert_eq!(drain(&r, &att).len(), 1, "the presence event");
    assert_eq!(threads.live(), 1, "the round thread");
    r.post(&token(&p), "one").unwrap();
    assert!(att.wake.recv_timeout(forever).is_ok());
    assert_eq!(drain(&r, &att).len(), 1);
    // The last stream goes: the thread ends by itself.
    r.detach(att.key, att.serial);
    assert_eq!(threads.join_all(Instant::now() + forever), (1, 0));
    // The next round starts it again; shutdown ends it, and then rounds run inline.
    let att = r.attach(&token(&w), None).unwrap();
    r.post(&token(&p), "two").unwrap();
    assert!(att.wake.recv_timeout(forever).is_ok());
    drop(shutdown);
    assert_eq!(threads.join_all(Instant::now() + forever), (1, 0));
    r.post(&token(&p), "three").unwrap();
    assert!(att.wake.try_recv().is_ok(), "woken by the poster itself");
    assert_eq!(threads.live(), 0);
}

#[test]
fn when_the_os_refuses_the_round_thread_the_broadcaster_wakes_the_streams_itself() {
    let (r, threads, _shutdown) = room_with_rounds();
    let w = r.join("w").unwrap();
    let p = r.join("p").unwrap();
    let att = r.attach(&token(&w), None).unwrap();
    crate::threads::testing::refuse(Some(crate::threads::Role::ChatWaker));
    r.post(&token(&p), "one").unwrap();
    crate::threads::testing::refuse(None);
    assert!(att.wake.try_recv().is_ok(), "woken inline");
    assert_eq!(threads.live(), 0);
    assert_eq!(
        drain(&r, &att).len(),
        2,
        "the presence event and the message"
    );
}

#[test]
fn a_round_skips_a_stream_that_took_everything_it_covers_already() {
    let r = room(|_| {});
    let (w, v, p) = (
        r.join("w").unwrap(),
        r.join("v").unwrap(),
        r.join("p").unwrap(),
    );
    let (att, behind) = (
        r.attach(&token(&w), None).unwrap(),
        r.attach(&token(&v), None).unwrap(),
    );
    settle(&r, &[&att, &behind]);
    let held = r.hold_wakes();
    r.post(&token(&p), "one").unwrap();
    // `w` takes it before the round goes out (woken by an earlier round, in a burst).
    assert_eq!(drain(&r, &att).len(), 1);
    drop(held);
    assert!(att.wake.try_recv().is_err(), "nothing left for it to take");
    assert!(behind.wake.try_recv().is_ok(), "the other is behind: woken");
    assert_eq!(drain(&r, &behind).len(), 1);
    // Behind again: woken again.
    r.post(&token(&p), "two").unwrap();
    assert!(att.wake.try_recv().is_ok());
}

#[test]
fn members_cut_off_as_slow_together_each_lose_their_wake_channel_and_no_one_else_does() {
    let r = room(|c| {
        c.queue = 2;
        c.rate = 1000.0;
        c.burst = 1000.0;
    });
    let p = r.join("p").unwrap();
    let keeps_up = r.attach(&token(&r.join("live").unwrap()), None).unwrap();
    let slow: Vec<Attached> = (0..20)
        .map(|i| {
            let j = r.join(&format!("slow{i}")).unwrap();
            r.attach(&token(&j), None).unwrap()
        })
        .collect();
    let last = r.attach(&token(&r.join("last").unwrap()), None).unwrap();
    r.flush_presence();
    let _ = drain(&r, &keeps_up);
    let _ = drain(&r, &last);
    // The slow ones take nothing: the third post puts all twenty more than 2 behind at once.
    for text in ["one", "two", "three", "four"] {
        r.post(&token(&p), text).unwrap();
        let _ = drain(&r, &keeps_up);
        let _ = drain(&r, &last);
    }
    for s in &slow {
        while s.wake.try_recv().is_ok() {}
        assert_eq!(
            s.wake.try_recv(),
            Err(crossbeam_channel::TryRecvError::Disconnected),
            "a slow member's wake channel is closed"
        );
        assert!(matches!(r.kick_of(s.serial), Some(k) if k.reason == CloseReason::Slow));
    }
    assert_eq!(r.inner.lock().wakers_len(), 2, "only the two streams left");
    r.post(&token(&p), "five").unwrap();
    for live in [&keeps_up, &last] {
        assert!(live.wake.try_recv().is_ok(), "still woken");
        assert_eq!(drain(&r, live).len(), 1);
    }
}

#[test]
fn the_room_s_tables_shrink_once_the_sessions_of_a_peak_are_gone() {
    let r = room(|c| c.max_members = 2000);
    let joined: Vec<Joined> = (0..2000)
        .map(|i| r.join(&format!("m{i}")).unwrap())
        .collect();
    let peak = r.inner.lock().capacities();
    assert!(peak.iter().all(|&c| c >= 2000), "{peak:?}");
    // Shrinking while they are all there keeps the room it needs.
    r.shrink();
    assert_eq!(r.inner.lock().capacities(), peak);
    for j in &joined[10..] {
        r.leave(&token(j)).unwrap();
    }
    r.shrink();
    let after = r.inner.lock().capacities();
    assert!(
        after.iter().all(|&c| c <= 64),
        "10 sessions left of 2,000: {after:?} (peak {peak:?})"
    );
    // What is left is whole and still sorted, and the room takes new members as before.
    let page = r.users(None, 100).unwrap();
    assert_eq!(page.count, 10);
    let mut names: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
    names.sort();
    assert_eq!(page.names, names);
    assert_eq!(r.join("m1").unwrap_err(), ChatError::NameTaken);
    assert_eq!(r.join("M5").unwrap_err(), ChatError::NameTaken, "folded");
    r.join("m10").unwrap();
    assert_eq!(r.users(Some("m1"), 1).unwrap().names, ["m10"]);
}

#[test]
fn users_pages_are_sorted_and_exact_through_joins_renames_and_leaves() {
    let r = room(|_| {});
    let long = "a-name-over-twenty-two-bytes";
    let mut tokens = Vec::new();
    for n in ["cat", "Bob", long, "ann", "dan", "émile"] {
        tokens.push(token(&r.join(n).unwrap()));
    }
    r.rename(&tokens[0], "zed").unwrap();
    r.leave(&tokens[4]).unwrap();
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = r.users(after.as_deref(), 2).unwrap();
        assert_eq!(page.count, 5);
        all.extend(page.names);
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(all, ["Bob", long, "ann", "zed", "émile"]);
    assert_eq!(r.online(), all);
    assert_eq!(
        r.rename(&tokens[1], &long.to_uppercase()).unwrap_err(),
        ChatError::NameTaken
    );
    assert!(
        r.users(Some("émile"), 10).unwrap().names.is_empty(),
        "after the last"
    );
}

#[test]
fn a_session_is_small_and_has_no_heap_block_of_its_own() {
    // What 10,000 sessions in their grace period hold is the sessions table, ~size_of
    // (key, Session) a bucket: their names and tokens are in place (no block of their own).
    // 168 bytes with the token's text and the rate in every session, plus a 64-byte block
    // for the token and three 32-byte ones for the names.
    let size = std::mem::size_of::<(u64, state::Session)>();
    assert!(size <= 136, "{size} bytes a bucket");
}
