//! Authentication on a real server (issue 15): every 401 and 403, the three token carriers, id
//! patterns, streams that end when their token expires, key reload, RS256 and ES256 with keys
//! `openssl` makes here, the chat under auth, the ops endpoints, the `Server` header, and no
//! token text in any log line. The binary's own rules (SIGHUP, an exposed start refused, the
//! admin listener) are in `tests/binary.rs`.

use std::time::{Duration, Instant};

use serde_json::json;
use syncast::kit::jwt::{self, Minter};

use crate::common::auth::{self, admin, bearer, claims, hs256, member, with_rights};
use crate::common::{log_lines, start, start_secured, unique, wait_for, Item, Sse, TestServer};

/// Every token the tests here sent: none may appear in a log line (see the last test).
static SENT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Remembers `token` for the log check and returns it.
fn remember(token: String) -> String {
    SENT.lock().unwrap().push(token.clone());
    token
}

/// `GET /sse/call/{id}` with `headers`: the response head (and the stream, if it opened).
fn stream(s: &TestServer, path: &str, headers: &[(&str, &str)]) -> Sse {
    Sse::open(s.addr, path, headers)
}

/// The status and `WWW-Authenticate` of a stream request with `token` in the header.
fn stream_status(s: &TestServer, id: &str, token: Option<&str>) -> (u16, Option<String>) {
    let h = token.map(bearer);
    let headers: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let sse = stream(s, &format!("/sse/call/{id}?mode=change"), &headers);
    let challenge = sse.header("WWW-Authenticate");
    (sse.status, challenge)
}

#[test]
fn every_kind_of_bad_token_is_401_with_the_bearer_challenge_and_a_json_error() {
    let s = start_secured(|_| {});
    let id = unique("u");
    let now = jwt::now();
    let wrong_key = Minter::hs256(b"a different secret, also long enough!!")
        .unwrap()
        .mint(&claims(&id))
        .unwrap();
    // HS/RS confusion: an HS256 token whose secret is a public key's bytes. This server has
    // only the secret configured; the RS256 server below has only the public key.
    let confused = Minter::hs256(&std::fs::read(&auth::rsa().public_file).unwrap())
        .unwrap()
        .mint(&claims(&id))
        .unwrap();
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("none", None, "missing token"),
        (
            "garbage",
            Some("garbage".into()),
            "invalid token: malformed",
        ),
        (
            "expired",
            Some(hs256(&json!({"sub": id, "exp": now - 120}))),
            "invalid token: expired",
        ),
        (
            "not yet valid",
            Some(hs256(
                &json!({"sub": id, "exp": now + 3600, "nbf": now + 600}),
            )),
            "invalid token: not yet valid",
        ),
        ("wrong key", Some(wrong_key), "invalid token: bad signature"),
        (
            "alg none",
            Some(jwt::unsigned(&claims(&id))),
            "invalid token: malformed",
        ),
        (
            "HS/RS confusion",
            Some(confused),
            "invalid token: bad signature",
        ),
        (
            "no exp",
            Some(hs256(&json!({"sub": id}))),
            "invalid token: no exp claim",
        ),
    ];
    let before = s.metric("syncast_rejected_total{reason=\"unauthorized\"}");
    for (what, token, error) in &cases {
        let token = token.clone().map(remember);
        let h = token.as_deref().map(bearer);
        let headers: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
        for (method, path) in [
            ("GET", format!("/sse/call/{id}")),
            ("PUT", format!("/alarms/{id}")),
            ("GET", format!("/alarms/{id}")),
            ("DELETE", format!("/alarms/{id}")),
        ] {
            let r = s.request_with(method, &path, Some("true"), &headers);
            assert_eq!(r.status, 401, "{what}: {method} {path}: {}", r.body);
            assert!(
                r.error().starts_with(error),
                "{what}: {method} {path}: {}",
                r.body
            );
            let challenge = r.header("WWW-Authenticate").unwrap_or_default();
            assert!(challenge.starts_with("Bearer realm=\"syncast\""), "{what}");
            // RFC 6750, 3.1: no error code when the request had no token at all.
            assert_eq!(
                challenge.contains("error=\"invalid_token\""),
                token.is_some(),
                "{what}: {challenge}"
            );
            assert_eq!(r.header("Content-Type"), Some("application/json"));
        }
    }
    let after = s.metric("syncast_rejected_total{reason=\"unauthorized\"}");
    assert_eq!(after - before, (cases.len() * 4) as f64);
    // Nothing was written: the id reads false for someone allowed to read it.
    let publisher = remember(hs256(&with_rights("w", json!({"publish": [id]}))));
    let r = s.get_with_token(&format!("/alarms/{id}"), &publisher);
    assert_eq!(r.json()["alarm"], false);
}

#[test]
fn a_valid_token_that_does_not_grant_the_id_is_403() {
    let s = start_secured(|_| {});
    let alice = unique("alice");
    let bob = unique("bob");
    let token = remember(hs256(&claims(&alice)));
    let before = s.metric("syncast_rejected_total{reason=\"forbidden\"}");
    // Another user's stream.
    let (status, challenge) = stream_status(&s, &bob, Some(&token));
    assert_eq!(status, 403);
    assert_eq!(
        challenge.as_deref(),
        Some("Bearer realm=\"syncast\", error=\"insufficient_scope\"")
    );
    // A subscriber trying to publish, or to read the store: her own id is hers to stream only.
    for method in ["PUT", "DELETE", "GET"] {
        let r = s.request_with(
            method,
            &format!("/alarms/{alice}"),
            Some("true"),
            &[("Authorization", &format!("Bearer {token}"))],
        );
        assert_eq!(r.status, 403, "{method}");
        assert_eq!(
            r.error(),
            "forbidden: the token does not grant publish on this id"
        );
    }
    let body = stream(&s, &format!("/sse/call/{bob}"), &[bearer(&token).as_pair()]).body();
    assert!(
        body.contains("forbidden: the token does not grant subscribe on this id"),
        "{body}"
    );
    let after = s.metric("syncast_rejected_total{reason=\"forbidden\"}");
    assert_eq!(after - before, 5.0);
    // Her own stream is fine.
    let mut own = stream(
        &s,
        &format!("/sse/call/{alice}?mode=change"),
        &[bearer(&token).as_pair()],
    );
    assert_eq!(own.status, 200);
    assert_eq!(own.next_item(), Some(Item::Retry(2000)));
}

/// `(&'static str, String)` as the `(&str, &str)` the harness takes.
trait AsPair {
    fn as_pair(&self) -> (&str, &str);
}

impl AsPair for (&'static str, String) {
    fn as_pair(&self) -> (&str, &str) {
        (self.0, self.1.as_str())
    }
}

#[test]
fn a_token_works_in_the_header_the_query_and_the_cookie_and_the_header_wins() {
    let s = start_secured(|_| {});
    let id = unique("carrier");
    let token = remember(hs256(&claims(&id)));
    let other = remember(hs256(&claims(&unique("other"))));
    let path = format!("/sse/call/{id}?mode=change");
    let cookie = format!("a=1; syncast_token={token}; b=2");
    for (what, path, headers) in [
        (
            "header",
            path.clone(),
            vec![("Authorization".to_string(), format!("Bearer {token}"))],
        ),
        ("query", format!("{path}&access_token={token}"), vec![]),
        ("cookie", path.clone(), vec![("Cookie".to_string(), cookie)]),
        (
            "header over cookie",
            path.clone(),
            vec![
                ("Authorization".to_string(), format!("Bearer {token}")),
                ("Cookie".to_string(), format!("syncast_token={other}")),
            ],
        ),
        (
            "query over cookie",
            format!("{path}&access_token={token}"),
            vec![("Cookie".to_string(), format!("syncast_token={other}"))],
        ),
    ] {
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut sse = stream(&s, &path, &h);
        assert_eq!(sse.status, 200, "{what}");
        assert_eq!(sse.next_item(), Some(Item::Retry(2000)), "{what}");
    }
    // The other user's token in the header beats the right one in the cookie: 403.
    let (status, _) = {
        let sse = stream(
            &s,
            &path,
            &[
                ("Authorization", &format!("Bearer {other}")),
                ("Cookie", &format!("syncast_token={token}")),
            ],
        );
        (sse.status, ())
    };
    assert_eq!(status, 403);
    // The alarm API takes them all too.
    let publisher = remember(hs256(&with_rights("w", json!({"publish": [id]}))));
    let r = s.request(
        "PUT",
        &format!("/alarms/{id}?access_token={publisher}"),
        Some("true"),
    );
    assert_eq!(r.status, 204);
    let r = s.request_with(
        "GET",
        &format!("/alarms/{id}"),
        None,
        &[("Cookie", &format!("syncast_token={publisher}"))],
    );
    assert_eq!(r.json()["alarm"], true);
}

#[test]
fn subscribe_and_publish_patterns_grant_exact_ids_everything_or_a_prefix() {
    let s = start_secured(|_| {});
    let team = unique("team-");
    let token = remember(hs256(&with_rights(
        "someone",
        json!({"subscribe": [format!("{team}-*"), "exact-1"], "publish": [format!("{team}-pub-*")]}),
    )));
    let every = remember(hs256(&with_rights(
        "ops",
        json!({"subscribe": ["*"], "publish": ["*"]}),
    )));
    for (id, want) in [
        (format!("{team}-a"), 200),
        (format!("{team}-"), 200),
        ("exact-1".to_string(), 200),
        ("exact-10".to_string(), 403),
        (format!("{team}x-a"), 403),
        ("someone-else".to_string(), 403),
    ] {
        assert_eq!(stream_status(&s, &id, Some(&token)).0, want, "{id}");
        assert_eq!(stream_status(&s, &id, Some(&every)).0, 200, "{id}");
    }
    for (id, want) in [(format!("{team}-pub-1"), 204), (format!("{team}-a"), 403)] {
        let r = s.request_with(
            "PUT",
            &format!("/alarms/{id}"),
            Some("true"),
            &[("Authorization", &format!("Bearer {token}"))],
        );
        assert_eq!(r.status, want, "{id}");
    }
    // sub alone is the one id its holder may stream.
    let own = remember(hs256(&claims("just-me")));
    assert_eq!(stream_status(&s, "just-me", Some(&own)).0, 200);
    assert_eq!(stream_status(&s, "just-me-2", Some(&own)).0, 403);
}

#[test]
fn refusals_are_decided_before_admission_and_spend_no_stream_slot_or_thread() {
    // One stream slot, taken: a refused token still gets its 401/403, not the cap's refusal.
    let s = start_secured(|c| c.max_clients = 1);
    let id = unique("cap");
    let token = remember(hs256(&claims(&id)));
    let mut held = stream(
        &s,
        &format!("/sse/call/{id}?mode=change"),
        &[bearer(&token).as_pair()],
    );
    assert_eq!(held.status, 200);
    assert_eq!(held.next_item(), Some(Item::Retry(2000)));
    let spawned = s.json("/debug/threads")["spawned_live"].as_u64().unwrap();
    for _ in 0..20 {
        assert_eq!(stream_status(&s, &id, None).0, 401);
        assert_eq!(stream_status(&s, &unique("x"), Some(&token)).0, 403);
    }
    // The cap itself: a stream EventSource retries (`event: refused`), not a 4xx.
    let mut capped = stream(
        &s,
        &format!("/sse/call/{id}?mode=change"),
        &[bearer(&token).as_pair()],
    );
    assert_eq!(capped.status, 200, "the cap itself");
    let (event, _, data) = capped.next_event().expect("the refused event");
    assert_eq!(event, "refused");
    assert!(data.contains(r#""reason":"max-clients""#), "{data}");
    assert_eq!(s.metric("syncast_streaming_clients"), 1.0);
    assert_eq!(
        s.json("/debug/threads")["spawned_live"].as_u64().unwrap(),
        spawned,
        "no thread was spawned for a refusal"
    );
    assert_eq!(
        s.metric("syncast_rejected_total{reason=\"max-clients\"}"),
        1.0
    );
}

#[test]
fn an_alarm_stream_ends_with_event_expired_when_its_token_does() {
    let s = start_secured(|c| c.jwt_leeway = Duration::ZERO);
    let id = unique("exp");
    let token = remember(hs256(&json!({"sub": id, "exp": jwt::now() + 3})));
    let opened = Instant::now();
    let mut sse = stream(
        &s,
        &format!("/sse/call/{id}?mode=change"),
        &[bearer(&token).as_pair()],
    );
    assert_eq!(sse.status, 200);
    let mut events = Vec::new();
    while let Some((event, _, data)) = sse.next_event() {
        events.push((event, data));
    }
    assert_eq!(
        events.last(),
        Some(&("expired".to_string(), "{}".to_string())),
        "{events:?}"
    );
    // It ended because of the token, not before (exp is a whole second: 2 s at least).
    assert!(
        opened.elapsed() >= Duration::from_secs(2),
        "{:?}",
        opened.elapsed()
    );
    crate::common::wait_log(&[
        "sse stream closed",
        &format!("id={id} "),
        "reason=token-expired",
    ]);
    // EventSource reconnects to the same URL: with the expired token that is a 401, and stops.
    let (status, challenge) = stream_status(&s, &id, Some(&token));
    assert_eq!(status, 401);
    assert!(challenge.unwrap().contains("error_description=\"expired\""));
    wait_for("the stream thread gone", || {
        (s.threads_of("alarm-stream") == 0).then_some(())
    });
}

#[test]
fn rs256_and_es256_tokens_verify_with_the_public_key_and_only_their_algorithm() {
    for (name, pair, mint) in [
        (
            "RS256",
            auth::rsa(),
            Minter::rs256 as fn(&[u8]) -> Result<Minter, String>,
        ),
        ("ES256", auth::ec(), Minter::es256),
    ] {
        let public = pair.public_file.clone();
        let s = start(move |c| c.jwt_public_key_file = Some(public));
        let id = unique("pk");
        let minter = mint(&pair.private_pem).unwrap();
        let good = remember(minter.mint(&claims(&id)).unwrap());
        assert_eq!(stream_status(&s, &id, Some(&good)).0, 200, "{name}");
        // HS256 is not configured on this server: an HS256 token made with the public key's
        // bytes as the secret (the classic confusion) finds no key.
        let pem = std::fs::read(&pair.public_file).unwrap();
        let confused = remember(Minter::hs256(&pem).unwrap().mint(&claims(&id)).unwrap());
        let r = s.get_with_token(&format!("/sse/call/{id}"), &confused);
        assert_eq!(r.status, 401, "{name}");
        assert_eq!(r.error(), "invalid token: algorithm not accepted", "{name}");
        // The other asymmetric algorithm is not configured either.
        let other = if name == "RS256" {
            Minter::es256(&auth::ec().private_pem)
        } else {
            Minter::rs256(&auth::rsa().private_pem)
        };
        let other = remember(other.unwrap().mint(&claims(&id)).unwrap());
        assert_eq!(
            s.get_with_token(&format!("/sse/call/{id}"), &other).error(),
            "invalid token: algorithm not accepted"
        );
        // A token signed by another key of the same kind.
        let stranger = auth::another(name);
        let forged = remember(
            mint(&stranger.private_pem)
                .unwrap()
                .mint(&claims(&id))
                .unwrap(),
        );
        assert_eq!(
            s.get_with_token(&format!("/sse/call/{id}"), &forged)
                .error(),
            "invalid token: bad signature",
            "{name}"
        );
    }
}

#[test]
fn both_keys_at_once_each_verify_their_own_algorithm() {
    let secret = auth::secret_file(&auth::key_dir());
    let public = auth::ec().public_file.clone();
    let s = start(move |c| {
        c.jwt_secret_file = Some(secret);
        c.jwt_public_key_file = Some(public);
    });
    let id = unique("both");
    let hs = remember(hs256(&claims(&id)));
    let es = remember(
        Minter::es256(&auth::ec().private_pem)
            .unwrap()
            .mint(&claims(&id))
            .unwrap(),
    );
    assert_eq!(stream_status(&s, &id, Some(&hs)).0, 200);
    assert_eq!(stream_status(&s, &id, Some(&es)).0, 200);
    // With a secret configured, HS256 is verified with the secret, never the public key.
    let pem = std::fs::read(&auth::ec().public_file).unwrap();
    let confused = remember(Minter::hs256(&pem).unwrap().mint(&claims(&id)).unwrap());
    assert_eq!(
        s.get_with_token(&format!("/sse/call/{id}"), &confused)
            .error(),
        "invalid token: bad signature"
    );
}

#[test]
fn a_bad_key_file_stops_the_start_with_its_reason() {
    let dir = auth::key_dir();
    let short = dir.join("short");
    std::fs::write(&short, b"only 20 bytes here!\n").unwrap();
    let p384 = auth::ec384().public_file;
    let private = dir.join("private.pem");
    std::fs::write(&private, &auth::ec().private_pem).unwrap();
    for (what, config, want) in [
        ("short secret", (Some(short), None), "at least 32"),
        ("missing", (Some(dir.join("nope")), None), "cannot read"),
        ("P-384", (None, Some(p384)), "P-256"),
        ("private key", (None, Some(private)), "private key"),
    ] {
        let mut c = syncast::Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            db: dir.join(format!("{}.db", what.replace(' ', "-"))),
            ..syncast::Config::default()
        };
        (c.jwt_secret_file, c.jwt_public_key_file) = config;
        match syncast::Server::start(c) {
            Err(e @ syncast::StartError::Key(_)) => {
                assert!(e.to_string().contains(want), "{what}: {e}")
            }
            Err(e) => panic!("{what}: {e}"),
            Ok(_) => panic!("{what}: started"),
        }
    }
}

#[test]
fn a_reload_takes_a_new_secret_and_keeps_the_old_one_when_the_new_file_is_bad() {
    let dir = auth::key_dir();
    let secret = auth::secret_file(&dir);
    let file = secret.clone();
    let s = start(move |c| c.jwt_secret_file = Some(file));
    let server = s.server.as_ref().unwrap();
    let id = unique("rot");
    let old = remember(hs256(&claims(&id)));
    assert_eq!(stream_status(&s, &id, Some(&old)).0, 200);
    let new_secret = b"the next secret, rotated in without a restart";
    std::fs::write(&secret, new_secret).unwrap();
    let r = server.reload_keys();
    assert_eq!((r.reloaded.len(), r.failed.len()), (1, 0), "{r:?}");
    let new = remember(
        Minter::hs256(new_secret)
            .unwrap()
            .mint(&claims(&id))
            .unwrap(),
    );
    assert_eq!(stream_status(&s, &id, Some(&new)).0, 200);
    assert_eq!(stream_status(&s, &id, Some(&old)).0, 401);
    std::fs::write(&secret, b"too short\n").unwrap();
    let r = server.reload_keys();
    assert_eq!(r.failed.len(), 1, "{r:?}");
    crate::common::wait_log(&["key reload failed", "at least 32", "keeping the old key"]);
    assert_eq!(
        stream_status(&s, &id, Some(&new)).0,
        200,
        "the old key stays"
    );
}

#[test]
fn audience_and_issuer_when_configured() {
    let s = start_secured(|c| {
        c.jwt_audience = Some("syncast-test".into());
        c.jwt_issuer = Some("https://issuer.test".into());
    });
    let id = unique("aud");
    let mut c = claims(&id);
    c["aud"] = json!("syncast-test");
    c["iss"] = json!("https://issuer.test");
    assert_eq!(stream_status(&s, &id, Some(&remember(hs256(&c)))).0, 200);
    c["aud"] = json!("someone-else");
    let r = s.get_with_token(&format!("/sse/call/{id}"), &remember(hs256(&c)));
    assert_eq!(
        (r.status, r.error().as_str()),
        (401, "invalid token: wrong audience")
    );
    c["aud"] = json!("syncast-test");
    c["iss"] = json!("https://evil.test");
    let r = s.get_with_token(&format!("/sse/call/{id}"), &remember(hs256(&c)));
    assert_eq!(
        (r.status, r.error().as_str()),
        (401, "invalid token: wrong issuer")
    );
}

#[test]
fn the_chat_under_auth_takes_the_name_from_the_token_and_nobody_speaks_as_another() {
    let s = start_secured(|_| {});
    let alice = unique("alice");
    let mallory = unique("mallory");
    let a_token = remember(member(&alice));
    let m_token = remember(member(&mallory));
    let (k, v) = bearer(&a_token);
    // Without a token: 401, with the challenge.
    let r = s.request("POST", "/chat/join", Some(&alice));
    assert_eq!(r.status, 401);
    assert!(r.header("WWW-Authenticate").is_some());
    assert_eq!(s.request("GET", "/chat/users", None).status, 401);
    // Another's name in the body: 403. An empty body or her own name: joined as the token says.
    let r = s.request_with(
        "POST",
        "/chat/join",
        Some(&alice),
        &[bearer(&m_token).as_pair()],
    );
    assert_eq!(r.status, 403, "{}", r.body);
    let r = s.request_with("POST", "/chat/join", Some(""), &[(k, &v)]);
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["name"], alice.as_str());
    let session = r.json()["token"].as_str().unwrap().to_string();
    // Session tokens keep working as without auth (messages with the session token alone).
    let r = s.request_with(
        "POST",
        "/chat/messages",
        Some("hello"),
        &[("Authorization", &format!("Bearer {session}"))],
    );
    assert_eq!(r.status, 202, "{}", r.body);
    // Renaming would let her speak as anyone: refused under auth.
    let r = s.request_with(
        "POST",
        "/chat/name",
        Some(&mallory),
        &[("Authorization", &format!("Bearer {session}"))],
    );
    assert_eq!(r.status, 403);
    // A stream by name must be the token's name.
    let sse = stream(
        &s,
        &format!("/chat/stream?name={alice}"),
        &[bearer(&m_token).as_pair()],
    );
    assert_eq!(sse.status, 403);
    // Attaching to her session needs a token too, and hers: mallory holding alice's session
    // token gets 403; alice with her token (in the header, the session token in the query) is
    // in.
    let sse = stream(&s, &format!("/chat/stream?token={session}"), &[]);
    assert_eq!(sse.status, 401);
    let sse = stream(
        &s,
        &format!("/chat/stream?token={session}"),
        &[bearer(&m_token).as_pair()],
    );
    assert_eq!(sse.status, 403);
    let mut own = stream(&s, &format!("/chat/stream?token={session}"), &[(k, &v)]);
    assert_eq!(own.status, 200);
    let (event, _, data) = own.next_event().unwrap();
    assert_eq!(event, "welcome");
    assert!(data.contains(&format!("\"name\":\"{alice}\"")), "{data}");
    // Mallory joins by stream as herself.
    let mut m = stream(
        &s,
        &format!("/chat/stream?name={mallory}"),
        &[bearer(&m_token).as_pair()],
    );
    assert_eq!(m.status, 200);
    assert_eq!(m.next_event().unwrap().0, "welcome");
    let users = s.get_with_token("/chat/users", &m_token).json();
    assert!(users["online"].as_array().unwrap().len() >= 2, "{users}");
    // A token without a usable name: 403.
    let nameless = remember(hs256(&json!({"exp": jwt::now() + 60})));
    let r = s.request_with(
        "POST",
        "/chat/join",
        Some(""),
        &[bearer(&nameless).as_pair()],
    );
    assert_eq!(r.status, 403);
}

#[test]
fn a_chat_stream_ends_with_event_expired_and_the_session_survives_for_a_fresh_token() {
    let s = start_secured(|c| c.jwt_leeway = Duration::ZERO);
    let name = unique("carol");
    let mut short = claims(&name);
    short["name"] = json!(name);
    short["exp"] = json!(jwt::now() + 3);
    let short = remember(hs256(&short));
    let mut sse = stream(
        &s,
        &format!("/chat/stream?name={name}"),
        &[bearer(&short).as_pair()],
    );
    assert_eq!(sse.status, 200);
    let (event, _, data) = sse.next_event().unwrap();
    assert_eq!(event, "welcome");
    let session: serde_json::Value = serde_json::from_str(&data).unwrap();
    let session = session["token"].as_str().unwrap().to_string();
    let mut last = None;
    while let Some((event, _, _)) = sse.next_event() {
        last = Some(event);
    }
    assert_eq!(last.as_deref(), Some("expired"));
    crate::common::wait_log(&[
        "chat stream closed",
        &format!("name={name} "),
        "reason=token-expired",
    ]);
    // The session is in its grace period: a fresh token attaches again.
    let fresh = remember(member(&name));
    let mut again = stream(
        &s,
        &format!("/chat/stream?token={session}"),
        &[bearer(&fresh).as_pair()],
    );
    assert_eq!(again.status, 200);
    assert_eq!(again.next_event().unwrap().0, "welcome");
}

#[test]
fn the_ops_endpoints_need_an_admin_token_and_healthz_stays_open() {
    let s = start_secured(|_| {});
    let user = remember(hs256(&claims("u")));
    for path in ["/metrics", "/debug/threads"] {
        assert_eq!(s.request("GET", path, None).status, 401, "{path}");
        let r = s.get_with_token(path, &user);
        assert_eq!(r.status, 403, "{path}");
        assert_eq!(r.error(), "forbidden: the token is not an admin token");
        assert_eq!(
            s.get_with_token(path, &remember(admin())).status,
            200,
            "{path}"
        );
    }
    assert_eq!(s.request("GET", "/healthz", None).status, 200);
    // The page itself is public: it asks for the token.
    assert_eq!(s.request("GET", "/", None).status, 200);
}

#[test]
fn with_an_admin_listener_the_ops_endpoints_move_there_and_healthz_is_on_both() {
    let s = start_secured(|c| c.admin_listen = Some("127.0.0.1:0".parse().unwrap()));
    let admin_addr = s.server.as_ref().unwrap().admin_addr().unwrap();
    let get = |path: &str| {
        let text = crate::common::raw_get(admin_addr, path, crate::common::PATIENCE).unwrap();
        text.split(' ').nth(1).unwrap_or("").to_string()
    };
    // Loopback: no token needed there.
    assert_eq!(get("/metrics"), "200");
    assert_eq!(get("/debug/threads"), "200");
    assert_eq!(get("/healthz"), "200");
    assert_eq!(get("/sse/call/42"), "404", "streams are not served there");
    assert_eq!(get("/"), "404");
    // Gone from the public listener, even with an admin token.
    let a = remember(admin());
    assert_eq!(s.get_with_token("/metrics", &a).status, 404);
    assert_eq!(s.get_with_token("/debug/threads", &a).status, 404);
    assert_eq!(s.request("GET", "/healthz", None).status, 200);
    let metrics = crate::common::raw_get(admin_addr, "/metrics", crate::common::PATIENCE).unwrap();
    assert!(metrics.contains("syncast_rejected_total{reason=\"forbidden\"}"));
    assert!(metrics.contains("Server: syncast/"), "{}", &metrics[..200]);
}

#[test]
fn every_answer_says_server_syncast_version_buffered_and_streamed() {
    let s = start(|_| {});
    let want = format!("syncast/{}", env!("CARGO_PKG_VERSION"));
    for (method, path) in [
        ("GET", "/healthz"),
        ("GET", "/nope"),
        ("GET", "/metrics"),
        ("PUT", "/sse/call/1"),
        ("GET", "/"),
    ] {
        let r = s.request(method, path, None);
        assert_eq!(r.header("Server"), Some(want.as_str()), "{method} {path}");
        let servers = r
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("server"));
        assert_eq!(servers.count(), 1, "{method} {path}: one Server header");
    }
    let sse = s.sse(&format!("/sse/call/{}", unique("srv")));
    assert_eq!(sse.header("Server"), Some(want.clone()));
}

#[test]
fn the_documented_python_one_liner_mints_a_token_syncast_accepts() {
    let ops = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md"))
        .unwrap();
    // The block after the marker line is the command, run as documented with SECRET_FILE,
    // SUB and the claims in the environment it names.
    let block = ops
        .split("<!-- mint-hs256 -->")
        .nth(1)
        .and_then(|rest| rest.split("```sh\n").nth(1))
        .and_then(|rest| rest.split("\n```").next())
        .expect("docs/operations.md has the mint-hs256 block");
    let dir = auth::key_dir();
    let secret = auth::secret_file(&dir);
    let id = unique("doc");
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(block)
        .env("SECRET_FILE", &secret)
        .env("SUB", &id)
        .env("TTL", "300")
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "{block}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = remember(String::from_utf8(out.stdout).unwrap().trim().to_string());
    let s = start(move |c| c.jwt_secret_file = Some(secret));
    assert_eq!(stream_status(&s, &id, Some(&token)).0, 200, "{token}");
    assert_eq!(stream_status(&s, &unique("not-it"), Some(&token)).0, 403);
}

#[test]
fn no_token_text_appears_in_any_log_line() {
    // This server logs at debug: every request's target, query included (redacted).
    let s = start_secured(|_| {});
    let id = unique("quiet");
    let good = remember(hs256(&claims(&id)));
    let expired = remember(hs256(&json!({"sub": id, "exp": jwt::now() - 300})));
    for token in [&good, &expired] {
        let _ = stream_status(&s, &id, Some(token));
        let _ = s.request(
            "GET",
            &format!("/sse/call/{id}?access_token={token}&mode=x"),
            None,
        );
        let _ = s.request(
            "PUT",
            &format!("/alarms/{id}?access_token={token}"),
            Some("true"),
        );
        let _ = s.request_with(
            "GET",
            "/metrics",
            None,
            &[("Cookie", &format!("syncast_token={token}"))],
        );
    }
    let mut sse = stream(
        &s,
        &format!("/sse/call/{id}?mode=change&access_token={good}"),
        &[],
    );
    assert_eq!(sse.status, 200);
    assert_eq!(sse.next_item(), Some(Item::Retry(2000)));
    drop(sse);
    crate::common::wait_log(&["request method=GET", "access_token=<redacted>"]);
    crate::common::wait_log(&["auth refused status=401", "reason=\"expired\""]);
    // Every token any test of this file sent so far, against every line logged so far.
    let tokens = SENT.lock().unwrap().clone();
    assert!(tokens.contains(&good) && tokens.contains(&expired));
    let lines = log_lines(&[]);
    assert!(!lines.is_empty());
    for line in &lines {
        for token in &tokens {
            // The signature is the part a leak would show in any case (the header part is the
            // same for every HS256 token).
            let sig = token.rsplit('.').next().unwrap_or(token);
            assert!(
                sig.len() < 8 || !line.contains(sig),
                "a token in a log line: {line}"
            );
        }
    }
}
