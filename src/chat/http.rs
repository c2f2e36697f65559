//! Chat routes under `/chat/`: turn requests into room calls, and the room's refusals into
//! replies (see [`super::reply`]).
//!
//! | Route | Answer |
//! |---|---|
//! | `GET /chat/stream?name=NAME` | joins and streams (SSE) |
//! | `GET /chat/stream?token=T` | attaches to the session and streams (SSE) |
//! | `POST /chat/join` (body: name) | `201 {"name","token"}` |
//! | `POST /chat/messages` (token; body: text or `{"text"}`) | `202 {"id"}` |
//! | `POST /chat/name` (token; body: new name or `{"name"}`) | `200 {"from","to"}` |
//! | `POST /chat/leave` (token) | `204` |
//! | `GET /chat/users[?after=NAME&limit=N]` | `200 {"online":[..],"count","next","last_id"}` |
//!
//! The local room's calls touch only memory, so a request whose body tiny_http has already
//! buffered (at most 1 KiB) is answered on the dispatcher; a larger body is read on a request
//! thread (tiny_http reads it lazily from the socket, which must not stall the dispatcher). With
//! the chat on Redis every call is a round trip to Redis: each runs on a request thread, and a
//! stream is joined or attached on one before its own thread starts. The stream runs on its own
//! stream thread.

use std::sync::Arc;

use serde_json::json;
use tiny_http::Request;

use super::reply::error_reply;
use super::room::{ChatError, Room};
use super::session::Token;
use super::stream::{self, ChatStreams, Member};
use crate::admit::{Admission, Unprepared};
use crate::auth::{self, Auth, Denied, Grant, Need};
use crate::http::request::{header, read_body, Params};
use crate::http::response::{self, bad_request, Reply};
use crate::http::validate::{query_get, valid_name};
use crate::metrics::Metrics;
use crate::threads::Role;

/// What the chat handlers need: the room, the streams' context, admission and the counters.
pub(crate) struct ChatService {
    /// The room (the same one the streams use).
    pub(crate) room: Arc<Room>,
    /// What each stream thread gets.
    pub(crate) streams: Arc<ChatStreams>,
    /// Who gets a thread.
    pub(crate) admit: Arc<Admission>,
    /// Counters for `/metrics`.
    pub(crate) metrics: Arc<Metrics>,
    /// With auth on, who may chat, and under which name.
    pub(crate) auth: Arc<Auth>,
}

/// The 403 of a name other than the token's.
const NOT_YOUR_NAME: &str = "the name must be the token's name claim (else its sub)";

impl ChatService {
    /// Runs `handler` where the room's calls may run: with the local room inline on the
    /// dispatcher when the body is buffered ([`Admission::run_request`]); with the chat on Redis
    /// always on a request thread (each call waits for Redis).
    fn run(
        self: &Arc<Self>,
        request: Request,
        handler: impl FnOnce(&mut Request) -> Reply + Send + 'static,
    ) {
        if self.room.shared().is_some() {
            self.admit.spawn_request(request, handler);
        } else {
            self.admit.run_request(request, handler);
        }
    }
}

/// With auth on, the grant of a request that wants to chat, and the name the token speaks as;
/// `Ok(None)` with auth off.
fn member_grant(
    chat: &ChatService,
    request: &Request,
    query: &[(String, String)],
) -> Result<Option<(Grant, String)>, Denied> {
    let Some(grant) = chat.auth.check(request, query, Need::Valid)? else {
        return Ok(None);
    };
    match grant
        .member_name()
        .filter(|n| valid_name(n))
        .map(str::to_string)
    {
        Some(name) => Ok(Some((grant, name))),
        None => Err(Denied::Forbidden {
            lacks: "the token has no name or sub that is a valid chat name (1-32 characters, \
                    no white space)",
            sub: grant.sub,
        }),
    }
}

/// `GET /chat/stream?name=NAME|token=T`: joins or attaches, and streams on its own thread. With
/// auth on it also needs a token (any carrier) whose name is the member's; the stream then ends
/// when that token expires.
pub(crate) fn stream(chat: &Arc<ChatService>, request: Request, params: &Params<'_>) {
    let (member, last) = match stream_request(&request, params.query) {
        Ok(asked) => asked,
        Err(e) => {
            let reply = refusal(&chat.metrics, e);
            return chat.admit.respond(request, reply);
        }
    };
    let grant = match stream_grant(chat, &request, params.query, &member) {
        Ok(grant) => grant,
        Err(denied) => {
            let reply = auth::refusal(&chat.metrics, &request, &denied);
            return chat.admit.respond(request, reply);
        }
    };
    let (cx, expires) = (chat.streams.clone(), grant.expires);
    if chat.room.shared().is_none() {
        // The room's work runs here, on the dispatcher (see `spawn_stream_prepared`).
        return chat.admit.spawn_stream_prepared(
            Role::ChatStream,
            request,
            |_| {
                stream::prepare(&chat.streams, &member, last, None)
                    .map_err(|e| stream::refusal(&chat.metrics, &e))
            },
            move |rq, prepared, slot, conn| stream::serve(cx, rq, prepared, conn, slot, expires),
        );
    }
    // On Redis: on a request thread, then the stream's own (its thread stays as lean).
    let (streams, metrics) = (chat.streams.clone(), chat.metrics.clone());
    chat.admit.spawn_stream_prepared_off(
        Role::ChatStream,
        request,
        move |rq| {
            let expect = grant.expect.as_ref().map(|(name, _)| name.as_str());
            stream::prepare(&streams, &member, last, expect).map_err(|e| match (e, &grant.expect) {
                (ChatError::NotYourName, Some((_, sub))) => {
                    let denied = Denied::Forbidden {
                        lacks: NOT_YOUR_NAME,
                        sub: sub.clone(),
                    };
                    Unprepared::Reply(auth::refusal(&metrics, rq, &denied))
                }
                (e, _) => stream::refusal(&metrics, &e),
            })
        },
        move |rq, prepared, slot, conn| stream::serve(cx, rq, prepared, conn, slot, expires),
    );
}

/// What auth decided for a stream: when it must end, and (the chat on Redis, attaching by
/// token) the name the session must have, with the token's `sub` for the refusal.
struct StreamGrant {
    expires: Option<std::time::Instant>,
    expect: Option<(String, Option<String>)>,
}

/// With auth on: whether the token may stream as `member`, and when the stream must end.
fn stream_grant(
    chat: &ChatService,
    request: &Request,
    query: &[(String, String)],
    member: &Member,
) -> Result<StreamGrant, Denied> {
    let Some((grant, name)) = member_grant(chat, request, query)? else {
        return Ok(StreamGrant {
            expires: None,
            expect: None,
        });
    };
    let theirs = match member {
        Member::Join(asked) => Some(asked.clone()),
        // On Redis the attach checks it (no Redis call on the dispatcher).
        Member::Resume(_) if chat.room.shared().is_some() => {
            return Ok(StreamGrant {
                expires: Some(grant.expires),
                expect: Some((name, grant.sub)),
            });
        }
        // An unknown token is the stream thread's 401, as without auth.
        Member::Resume(token) => chat.room.name_of(token),
    };
    if theirs.is_some_and(|n| n != name) {
        return Err(Denied::Forbidden {
            lacks: NOT_YOUR_NAME,
            sub: grant.sub,
        });
    }
    Ok(StreamGrant {
        expires: Some(grant.expires),
        expect: None,
    })
}

/// Most names one `GET /chat/users` answers with, and its default `limit`.
pub(crate) const USERS_PAGE_MAX: usize = 1000;

/// `GET /chat/users[?after=NAME][&limit=N]`: the sessions' names, sorted, a page at a time
/// (with auth on, for holders of a valid token only).
pub(crate) fn users(chat: &Arc<ChatService>, request: Request, params: &Params<'_>) {
    if let Err(denied) = member_grant(chat, &request, params.query) {
        let reply = auth::refusal(&chat.metrics, &request, &denied);
        return chat.admit.respond(request, reply);
    }
    let limit = match query_get(params.query, "limit") {
        None => Some(USERS_PAGE_MAX),
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=USERS_PAGE_MAX).contains(n)),
    };
    let Some(limit) = limit else {
        let reply = bad_request(&chat.metrics, "invalid limit: use 1-1000");
        return chat.admit.respond(request, reply);
    };
    let after = query_get(params.query, "after").map(str::to_string);
    let page = move |chat: &ChatService| match chat.room.users(after.as_deref(), limit) {
        Ok(page) => response::json(
            200,
            &json!({
                "online": page.names,
                "count": page.count,
                "next": page.next,
                "last_id": page.last_id,
            }),
        ),
        Err(e) => error_reply(&chat.metrics, &e),
    };
    if chat.room.shared().is_some() {
        let service = chat.clone();
        chat.admit.spawn_request(request, move |_| page(&service));
    } else {
        // From memory, on the dispatcher (no body to read).
        let reply = page(chat);
        chat.admit.respond(request, reply);
    }
}

/// `POST /chat/join`: body is the name (surrounding white space ignored). With auth on it needs
/// a token, and the name is the token's: the body may be empty or must say the same.
pub(crate) fn join(chat: &Arc<ChatService>, request: Request, params: &Params<'_>) {
    let named = match member_grant(chat, &request, params.query) {
        Ok(named) => named.map(|(grant, name)| (name, grant.sub)),
        Err(denied) => {
            let reply = auth::refusal(&chat.metrics, &request, &denied);
            return chat.admit.respond(request, reply);
        }
    };
    let service = chat.clone();
    chat.run(request, move |rq| join_reply(&service, rq, named));
}

/// `POST /chat/messages`: body is the text, exactly as sent.
pub(crate) fn message(chat: &Arc<ChatService>, request: Request, params: &Params<'_>) {
    act(chat, request, params, Action::Message);
}

/// `POST /chat/name`: body is the new name (surrounding white space ignored).
pub(crate) fn name(chat: &Arc<ChatService>, request: Request, params: &Params<'_>) {
    act(chat, request, params, Action::Rename);
}

/// `POST /chat/leave`.
pub(crate) fn leave(chat: &Arc<ChatService>, request: Request, params: &Params<'_>) {
    act(chat, request, params, Action::Leave);
}

/// What a session asks for with its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Message,
    Rename,
    Leave,
}

/// Runs `action` for the session whose token the request carries (401 without one).
fn act(chat: &Arc<ChatService>, request: Request, params: &Params<'_>, action: Action) {
    if action == Action::Rename && chat.auth.on() {
        // Names come from the tokens: a rename would let a member speak as someone else.
        let denied = Denied::Forbidden {
            lacks: "names come from the token while authentication is on; renaming is off",
            sub: None,
        };
        let reply = auth::refusal(&chat.metrics, &request, &denied);
        return chat.admit.respond(request, reply);
    }
    let token = token_of(&request, params.query);
    let service = chat.clone();
    chat.run(request, move |rq| {
        let token = match token {
            Some(t) => t,
            None => return error_reply(&service.metrics, &ChatError::Unauthorized),
        };
        match action {
            Action::Message => post_message(&service, rq, &token),
            Action::Rename => rename(&service, rq, &token),
            Action::Leave => leave_reply(&service, &token),
        }
    });
}

/// Why a stream request was refused before any thread was spent on it.
enum StreamRefusal {
    Bad(&'static str),
    Chat(ChatError),
}

fn refusal(metrics: &Metrics, e: StreamRefusal) -> Reply {
    match e {
        StreamRefusal::Bad(message) => bad_request(metrics, message),
        StreamRefusal::Chat(e) => error_reply(metrics, &e),
    }
}

/// Checks `?name=` / `?token=` and `Last-Event-ID` (header or `?last_event_id=`).
fn stream_request(
    request: &Request,
    query: &[(String, String)],
) -> Result<(Member, Option<u64>), StreamRefusal> {
    let last = header(request, "Last-Event-ID")
        .or_else(|| query_get(query, "last_event_id").map(str::to_string))
        .map(|hint| resume_point(&hint));
    let member = match (query_get(query, "name"), query_get(query, "token")) {
        (Some(_), Some(_)) => {
            return Err(StreamRefusal::Bad("give either name or token, not both"))
        }
        (Some(name), None) => {
            if !valid_name(name) {
                return Err(StreamRefusal::Chat(ChatError::InvalidName));
            }
            Member::Join(name.to_string())
        }
        (None, Some(_)) => match token_of(request, query) {
            Some(t) => Member::Resume(t),
            None => return Err(StreamRefusal::Chat(ChatError::Unauthorized)),
        },
        (None, None) => match token_of(request, query) {
            // An Authorization header alone also picks the session.
            Some(t) => Member::Resume(t),
            None => {
                return Err(StreamRefusal::Bad(
                    "give ?name=NAME to join or ?token=T to attach",
                ))
            }
        },
    };
    Ok((member, last))
}

/// Where a stream resumes from a `Last-Event-ID` hint: the id it names, or, for a hint that
/// names no event (empty, not a decimal number, too large), [`u64::MAX`]: beyond every id, so
/// the room answers it as it does an id from another run, with `reset` and everything it kept.
/// Never an error: `Last-Event-ID` is whatever the client last saw (an old format, another
/// node's id, a proxy's garbage), and an `EventSource` given a 4xx never reconnects.
pub(crate) fn resume_point(hint: &str) -> u64 {
    let hint = hint.trim();
    if hint.is_empty() || !hint.bytes().all(|b| b.is_ascii_digit()) {
        return u64::MAX;
    }
    hint.parse().unwrap_or(u64::MAX)
}

/// The session token from `Authorization: Bearer T` or `?token=T`; `None` if absent or
/// malformed. A header that holds something else (a JWT, with auth on) leaves `?token=` to say.
fn token_of(request: &Request, query: &[(String, String)]) -> Option<Token> {
    let from_header = header(request, "Authorization")
        .and_then(|v| auth::carrier::bearer(&v))
        .and_then(|t| Token::parse(&t));
    from_header.or_else(|| Token::parse(query_get(query, "token")?))
}

fn is_json(request: &Request) -> bool {
    header(request, "Content-Type").is_some_and(|v| {
        v.split(';')
            .next()
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
    })
}

/// Reads the body as UTF-8, and from JSON `{field: "..."}` when sent as `application/json`.
fn body_text(chat: &ChatService, request: &mut Request, field: &str) -> Result<String, Reply> {
    let metrics = &*chat.metrics;
    let json = is_json(request);
    let body = read_body(chat.admit.bodies(), request)?;
    let text = String::from_utf8(body).map_err(|_| bad_request(metrics, "body is not UTF-8"))?;
    if !json {
        return Ok(text);
    }
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|_| bad_request(metrics, &format!("body must be {{\"{field}\": \"...\"}}")))?;
    value
        .get(field)
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .ok_or_else(|| bad_request(metrics, &format!("body must be {{\"{field}\": \"...\"}}")))
}

/// `POST /chat/join`, on whichever thread reads the body; `named`: with auth on, the token's
/// name and `sub`.
fn join_reply(
    chat: &ChatService,
    request: &mut Request,
    named: Option<(String, Option<String>)>,
) -> Reply {
    let asked = match body_text(chat, request, "name") {
        Ok(name) => name.trim().to_string(),
        Err(reply) => return reply,
    };
    let name = match named {
        None => asked,
        Some((name, _)) if asked.is_empty() || asked == name => name,
        Some((_, sub)) => {
            let denied = Denied::Forbidden {
                lacks: NOT_YOUR_NAME,
                sub,
            };
            return auth::refusal(&chat.metrics, request, &denied);
        }
    };
    match chat.room.join(&name) {
        Ok(j) => response::json(201, &json!({ "name": j.name, "token": j.token })),
        Err(e) => error_reply(&chat.metrics, &e),
    }
}

/// `POST /chat/messages`, on a session found.
fn post_message(chat: &ChatService, request: &mut Request, token: &Token) -> Reply {
    let text = match body_text(chat, request, "text") {
        Ok(text) => text,
        Err(reply) => return reply,
    };
    match chat.room.post(token, &text) {
        Ok(id) => response::json(202, &json!({ "id": id })),
        Err(e) => error_reply(&chat.metrics, &e),
    }
}

/// `POST /chat/name`, on a session found.
fn rename(chat: &ChatService, request: &mut Request, token: &Token) -> Reply {
    let name = match body_text(chat, request, "name") {
        Ok(name) => name.trim().to_string(),
        Err(reply) => return reply,
    };
    match chat.room.rename(token, &name) {
        Ok((from, to)) => response::json(200, &json!({ "from": from, "to": to })),
        Err(e) => error_reply(&chat.metrics, &e),
    }
}

/// `POST /chat/leave`, on a session found.
fn leave_reply(chat: &ChatService, token: &Token) -> Reply {
    match chat.room.leave(token) {
        Ok(_) => response::no_content(),
        Err(e) => error_reply(&chat.metrics, &e),
    }
}

#[cfg(test)]
mod tests {
    use super::resume_point;

    #[test]
    fn a_resume_hint_is_the_id_it_names_or_beyond_every_id() {
        assert_eq!(resume_point("42"), 42);
        assert_eq!(resume_point(" 7 "), 7);
        assert_eq!(resume_point("0"), 0);
        for unusable in [
            "",
            " ",
            "abc",
            "-1",
            "+1",
            "1.5",
            "0x10",
            "99999999999999999999",
        ] {
            assert_eq!(resume_point(unusable), u64::MAX, "{unusable:?}");
        }
    }
}
