//! Chat routes under `/chat/`: turn requests into room calls and [`ChatError`]s into status
//! codes with `{"error": "..."}` bodies.
//!
//! | Route | Answer |
//! |---|---|
//! | `GET /chat/stream?name=NAME` | joins and streams (SSE) |
//! | `GET /chat/stream?token=T` | attaches to the session and streams (SSE) |
//! | `POST /chat/join` (body: name) | `201 {"name","token"}` |
//! | `POST /chat/messages` (token; body: text or `{"text"}`) | `202 {"id"}` |
//! | `POST /chat/name` (token; body: new name or `{"name"}`) | `200 {"from","to"}` |
//! | `POST /chat/leave` (token) | `204` |
//! | `GET /chat/users` | `200 {"online":[..]}` |
//!
//! Room calls touch only memory, so a request whose body tiny_http has already buffered (at most
//! 1 KiB) is answered on the dispatcher; a larger body is read on a request thread (tiny_http
//! reads it lazily from the socket, which must not stall the dispatcher). The stream runs on its
//! own stream thread.

use std::sync::Arc;

use serde_json::json;
use tiny_http::{Method, Request};

use super::room::ChatError;
use super::session::Token;
use super::stream::{self, Member};
use crate::http::response::{self, Reply};
use crate::http::validate::{query_get, valid_name};
use crate::server::{bad_request, method_not_allowed, read_body, Shared};
use crate::threads::Role;

/// The status code a room refusal maps to.
pub fn status_of(e: &ChatError) -> u16 {
    match e {
        ChatError::InvalidName | ChatError::InvalidText(_) => 400,
        ChatError::Unauthorized => 401,
        ChatError::NameTaken => 409,
        ChatError::RateLimited(_) => 429,
        ChatError::RoomFull | ChatError::Random(_) => 503,
    }
}

/// The reply for a room refusal, counted under its `syncast_rejected_total` reason.
pub fn error_reply(shared: &Shared, e: &ChatError) -> Reply {
    let status = status_of(e);
    let message = e.to_string();
    match e {
        ChatError::InvalidName | ChatError::InvalidText(_) => bad_request(shared, &message),
        ChatError::Unauthorized => {
            shared.metrics.reject("unauthorized");
            response::add_header(
                response::error(status, &message),
                "WWW-Authenticate",
                "Bearer",
            )
        }
        ChatError::NameTaken => {
            shared.metrics.reject("name-taken");
            response::error(status, &message)
        }
        ChatError::RateLimited(wait) => {
            shared.metrics.reject("rate-limited");
            // Retry-After is whole seconds; round up so a client that obeys it succeeds.
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            response::retry_later(status, secs.max(1), &message)
        }
        ChatError::RoomFull => {
            shared.metrics.reject("room-full");
            response::retry_later(status, 1, &message)
        }
        ChatError::Random(_) => response::error(status, &message),
    }
}

/// Answers a request under `/chat/`.
pub fn route(
    shared: &Arc<Shared>,
    request: Request,
    segments: &[&str],
    query: &[(String, String)],
) {
    let method = request.method().clone();
    let reply = match (segments, &method) {
        (["chat", "stream"], Method::Get) => match stream_request(&request, query) {
            Ok((member, last)) => {
                let conn = shared.next_conn();
                shared.spawn_stream(
                    Role::ChatStream,
                    format!("chat-{conn}"),
                    request,
                    move |shared, rq, slot| stream::serve(shared, rq, member, last, conn, slot),
                );
                return;
            }
            Err(e) => refusal(shared, e),
        },
        (["chat", "users"], Method::Get) => {
            response::json(200, &json!({ "online": shared.chat.online() }))
        }
        (["chat", "join"], Method::Post) => {
            shared.run_request(request, join);
            return;
        }
        (["chat", action @ ("messages" | "name" | "leave")], Method::Post) => {
            let token = token_of(&request, query);
            let action = action.to_string();
            shared.run_request(request, move |shared, rq| {
                let token = match token {
                    Some(t) => t,
                    None => return error_reply(shared, &ChatError::Unauthorized),
                };
                match action.as_str() {
                    "messages" => post_message(shared, rq, &token),
                    "name" => rename(shared, rq, &token),
                    _ => leave(shared, &token),
                }
            });
            return;
        }
        (["chat", "stream" | "users"], _) => method_not_allowed("GET"),
        (["chat", "join" | "messages" | "name" | "leave"], _) => method_not_allowed("POST"),
        _ => response::error(404, "not found"),
    };
    shared.respond(request, reply);
}

/// Why a stream request was refused before any thread was spent on it.
enum StreamRefusal {
    Bad(&'static str),
    Chat(ChatError),
}

fn refusal(shared: &Shared, e: StreamRefusal) -> Reply {
    match e {
        StreamRefusal::Bad(message) => bad_request(shared, message),
        StreamRefusal::Chat(e) => error_reply(shared, &e),
    }
}

/// Checks `?name=` / `?token=` and `Last-Event-ID` (header or `?last_event_id=`).
fn stream_request(
    request: &Request,
    query: &[(String, String)],
) -> Result<(Member, Option<u64>), StreamRefusal> {
    let last = header(request, "Last-Event-ID")
        .or_else(|| query_get(query, "last_event_id").map(str::to_string))
        .filter(|v| !v.is_empty());
    let last = match last {
        None => None,
        Some(v) => Some(v.trim().parse::<u64>().map_err(|_| {
            StreamRefusal::Bad("invalid Last-Event-ID: use the id of an event received")
        })?),
    };
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

/// A header's value by (case-insensitive) name.
fn header(request: &Request, name: &'static str) -> Option<String> {
    request
        .headers()
        .iter()
        .find(|h| h.field.equiv(name))
        .map(|h| h.value.as_str().to_string())
}

/// The token from `Authorization: Bearer T` or `?token=T`; `None` if absent or malformed.
fn token_of(request: &Request, query: &[(String, String)]) -> Option<Token> {
    let from_header = header(request, "Authorization").and_then(|v| {
        let (scheme, rest) = v.trim().split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| rest.trim().to_string())
    });
    let text = from_header.or_else(|| query_get(query, "token").map(str::to_string))?;
    Token::parse(&text)
}

fn is_json(request: &Request) -> bool {
    header(request, "Content-Type").is_some_and(|v| {
        v.split(';')
            .next()
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
    })
}

/// Reads the body as UTF-8, and from JSON `{field: "..."}` when sent as `application/json`.
fn body_text(shared: &Shared, request: &mut Request, field: &str) -> Result<String, Reply> {
    let json = is_json(request);
    let body = read_body(shared, request)?;
    let text = String::from_utf8(body).map_err(|_| bad_request(shared, "body is not UTF-8"))?;
    if !json {
        return Ok(text);
    }
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|_| bad_request(shared, &format!("body must be {{\"{field}\": \"...\"}}")))?;
    value
        .get(field)
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .ok_or_else(|| bad_request(shared, &format!("body must be {{\"{field}\": \"...\"}}")))
}

/// `POST /chat/join`: body is the name (surrounding white space ignored).
fn join(shared: &Shared, request: &mut Request) -> Reply {
    let name = match body_text(shared, request, "name") {
        Ok(name) => name.trim().to_string(),
        Err(reply) => return reply,
    };
    match shared.chat.join(&name) {
        Ok(j) => response::json(201, &json!({ "name": j.name, "token": j.token })),
        Err(e) => error_reply(shared, &e),
    }
}

/// `POST /chat/messages`: body is the text, exactly as sent.
fn post_message(shared: &Shared, request: &mut Request, token: &Token) -> Reply {
    let text = match body_text(shared, request, "text") {
        Ok(text) => text,
        Err(reply) => return reply,
    };
    match shared.chat.post(token, &text) {
        Ok(id) => response::json(202, &json!({ "id": id })),
        Err(e) => error_reply(shared, &e),
    }
}

/// `POST /chat/name`: body is the new name (surrounding white space ignored).
fn rename(shared: &Shared, request: &mut Request, token: &Token) -> Reply {
    let name = match body_text(shared, request, "name") {
        Ok(name) => name.trim().to_string(),
        Err(reply) => return reply,
    };
    match shared.chat.rename(token, &name) {
        Ok((from, to)) => response::json(200, &json!({ "from": from, "to": to })),
        Err(e) => error_reply(shared, &e),
    }
}

/// `POST /chat/leave`.
fn leave(shared: &Shared, token: &Token) -> Reply {
    match shared.chat.leave(token) {
        Ok(_) => response::no_content(),
        Err(e) => error_reply(shared, &e),
    }
}
