//! The room's behaviour, driven through its calls as the streams and handlers use them.

use super::types::{check_text, MAX_TEXT, TAKE_BYTES};
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
    while let Take::More(_) = r.take(att.key, att.serial, &mut out, &mut Vec::new()) {}
    events(out)
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
    assert_eq!(data["last_id"], 1);
    assert_eq!(data["online"], json!(["alice"]));
    let bob = r.join("bob").unwrap();
    let b = r.attach(&token(&bob), None).unwrap();
    let id = r.post(&token(&bob), "hi").unwrap();
    let got = drain(&r, &a);
    assert_eq!(got[0].0, "join");
    assert_eq!(got[1].0, "message");
    assert_eq!(got[1].1, Some(id));
    assert_eq!(got[1].2["from"], "bob");
    assert_eq!(got[1].2["text"], "hi");
    assert_eq!(got[1].2["id"], id);
    assert!(drain(&r, &b).is_empty(), "no echo of one's own message");
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
    assert_eq!(data["oldest"], 10);
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
    assert_eq!(att.kick.try_recv().unwrap().reason, CloseReason::Replaced);
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
    let _ = drain(&r, &s);
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(r.post(&token(&p), &format!("m{i}")).unwrap());
        assert_eq!(drain(&r, &f).len(), 1);
    }
    // Cut off at the third event, the first more than `queue` behind.
    assert_eq!(s.kick.try_recv().unwrap().reason, CloseReason::Slow);
    assert_eq!(metrics.chat_slow.get(), 1);
    assert_eq!(
        r.take(s.key, s.serial, &mut Vec::new(), &mut Vec::new()),
        Take::Closed
    );
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
    for i in 0..3 {
        r.post(&token(&p), &format!("m{i}")).unwrap();
    }
    assert!(
        att.kick.try_recv().is_err(),
        "three behind still fit the history"
    );
    r.post(&token(&p), "m3").unwrap();
    assert_eq!(att.kick.try_recv().unwrap().reason, CloseReason::Slow);
}

#[test]
fn many_events_wait_behind_one_wake_and_go_out_in_one_take() {
    let r = room(|_| {});
    let w = r.join("w").unwrap();
    let p = r.join("p").unwrap();
    let att = r.attach(&token(&w), None).unwrap();
    let ids: Vec<u64> = (0..10)
        .map(|i| r.post(&token(&p), &format!("m{i}")).unwrap())
        .collect();
    assert!(att.wake.try_recv().is_ok());
    assert!(att.wake.try_recv().is_err(), "one wake for ten events");
    let mut out = Vec::new();
    assert_eq!(
        r.take(att.key, att.serial, &mut out, &mut Vec::new()),
        Take::Done(10)
    );
    let got: Vec<u64> = events(out).into_iter().map(|e| e.1.unwrap()).collect();
    assert_eq!(got, ids);
    assert_eq!(
        r.take(att.key, att.serial, &mut Vec::new(), &mut Vec::new()),
        Take::Done(0)
    );
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
    for i in 0..10 {
        r.post(&token(&a), &format!("m{i}")).unwrap();
    }
    assert!(att.kick.try_recv().is_err());
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
    let held = r.hold_wakes();
    r.post(&token(&p), "one").unwrap();
    r.post(&token(&p), "two").unwrap();
    assert!(att.wake.try_recv().is_err(), "no wake while held");
    drop(held);
    assert!(att.wake.try_recv().is_ok());
    assert_eq!(drain(&r, &att).len(), 2);
}

#[test]
fn a_take_stops_at_the_byte_cap_and_the_next_goes_on_from_there() {
    let r = room(|c| {
        c.rate = 1000.0;
        c.burst = 1000.0;
    });
    let w = r.join("w").unwrap();
    let p = r.join("p").unwrap();
    let att = r.attach(&token(&w), None).unwrap();
    let big = "x".repeat(MAX_TEXT);
    let n = 2 * TAKE_BYTES / MAX_TEXT;
    for _ in 0..n {
        r.post(&token(&p), &big).unwrap();
    }
    let mut taken = 0;
    let mut takes = 0;
    loop {
        let mut out = Vec::new();
        takes += 1;
        match r.take(att.key, att.serial, &mut out, &mut Vec::new()) {
            Take::More(k) => taken += k,
            Take::Done(k) => {
                taken += k;
                break;
            }
            Take::Closed => panic!("closed"),
        }
        assert!(out.len() < TAKE_BYTES + MAX_TEXT + 100);
    }
    assert_eq!(taken, n);
    assert!(takes >= 2);
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
    let leave = drain(&r, &watcher)
        .into_iter()
        .find(|e| e.0 == "leave")
        .unwrap();
    assert_eq!(leave.2, json!({ "name": "gone", "reason": "timeout" }));
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
    assert_eq!(s.kick.try_recv().unwrap().reason, CloseReason::Left);
    let leave = drain(&r, &w).pop().unwrap();
    assert_eq!(leave.2, json!({ "name": "a", "reason": "left" }));
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
