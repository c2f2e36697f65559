//! The router: discarding what tiny_http parses from a closing or streaming connection, the
//! framing check (400 for what request smuggling needs), the limits tiny_http lacks (414, 431,
//! 413), CORS preflight, and the table of routes — (method, path pattern) → handler — which also
//! decides 404 and 405 (with `Allow`), and which listener serves a route ([`Access`]): the ops
//! endpoints move to `--admin-listen` when it is given, and need an admin token on the public
//! listener when auth is on.

use std::sync::Arc;

use tiny_http::{Method, Request};

use super::ops::{self, Ops};
use crate::admit::Admission;
use crate::alarm::http::{self as alarm, AlarmService};
use crate::auth::{self, Auth, Need};
use crate::chat::http::{self as chat, ChatService};
use crate::http::framing;
use crate::http::request::{Params, MAX_BODY, MAX_HEADERS, MAX_HEADER_BYTES, MAX_URL};
use crate::http::response::{self, method_not_allowed};
use crate::http::sweep::{Admit, ConnTable};
use crate::http::validate::split_url;
use crate::metrics::Metrics;
use crate::web;

/// What the routes serve: the features, and what routing itself needs.
pub(crate) struct Router {
    /// The alarm routes' context.
    pub(crate) alarms: Arc<AlarmService>,
    /// The chat routes' context.
    pub(crate) chat: Arc<ChatService>,
    /// What the ops endpoints read.
    pub(crate) ops: Ops,
    /// Replies (with CORS) and threads.
    pub(crate) admit: Arc<Admission>,
    /// Connections: each request restarts its connection's idle clock, or is discarded when its
    /// connection is closing or carries a stream.
    pub(crate) conns: Arc<ConnTable>,
    /// Counters.
    pub(crate) metrics: Arc<Metrics>,
    /// Whether `OPTIONS` preflights are answered (`--cors-origin` set).
    pub(crate) cors: bool,
    /// Tokens: the ops endpoints' admin check (the features check their own routes).
    pub(crate) auth: Arc<Auth>,
    /// Where the ops endpoints are served: `Some(loopback)` with `--admin-listen` (whether
    /// that listener is on a loopback address), `None` on the public listener.
    pub(crate) admin_listener: Option<bool>,
}

/// Which listener a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Listener {
    /// `--listen`.
    Public,
    /// `--admin-listen`.
    Admin,
}

/// Who may use a route, and on which listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Everyone, on every listener (`/healthz`: load balancers need it).
    Open,
    /// The ops endpoints: on `--admin-listen` when given (and only there), else on the public
    /// listener, with an admin token when auth is on.
    Ops,
    /// The features: on the public listener; their handlers check the token themselves, since
    /// what it must grant depends on the id or name asked for.
    Feature,
}

/// Serves one request of a route: answers it, or hands it to a thread that will.
type Handler = fn(&Router, Request, &Params<'_>);

/// One route: a method and a path pattern, whose segments are literal except `{id}` (any one
/// segment, passed to the handler as [`Params::id`]).
pub(crate) struct Route {
    /// The method served.
    pub(crate) method: Method,
    /// The path pattern, e.g. `/sse/call/{id}`.
    pub(crate) path: &'static str,
    /// Who may use it, and where.
    pub(crate) access: Access,
    handler: Handler,
}

/// Every route, in the order `Allow` lists a path's methods.
pub(crate) const ROUTES: &[Route] = &[
    Route {
        method: Method::Get,
        path: "/healthz",
        access: Access::Open,
        handler: |r, rq, _| r.admit.respond(rq, ops::healthz(&r.ops)),
    },
    Route {
        method: Method::Get,
        path: "/metrics",
        access: Access::Ops,
        handler: |r, rq, _| {
            let accept = rq
                .headers()
                .iter()
                .find(|h| h.field.equiv("Accept"))
                .map(|h| h.value.as_str().to_string());
            r.admit.respond(rq, ops::metrics(&r.ops, accept.as_deref()))
        },
    },
    Route {
        method: Method::Get,
        path: "/debug/threads",
        access: Access::Ops,
        handler: |r, rq, _| r.admit.respond(rq, ops::debug_threads(&r.ops)),
    },
    Route {
        method: Method::Get,
        path: "/sse/call/{id}",
        access: Access::Feature,
        handler: |r, rq, p| alarm::stream(&r.alarms, rq, p),
    },
    Route {
        method: Method::Get,
        path: "/alarms/{id}",
        access: Access::Feature,
        handler: |r, rq, p| alarm::rest(&r.alarms, rq, p),
    },
    Route {
        method: Method::Put,
        path: "/alarms/{id}",
        access: Access::Feature,
        handler: |r, rq, p| alarm::rest(&r.alarms, rq, p),
    },
    Route {
        method: Method::Delete,
        path: "/alarms/{id}",
        access: Access::Feature,
        handler: |r, rq, p| alarm::rest(&r.alarms, rq, p),
    },
    Route {
        method: Method::Get,
        path: "/chat/stream",
        access: Access::Feature,
        handler: |r, rq, p| chat::stream(&r.chat, rq, p),
    },
    Route {
        method: Method::Get,
        path: "/chat/users",
        access: Access::Feature,
        handler: |r, rq, p| chat::users(&r.chat, rq, p),
    },
    Route {
        method: Method::Post,
        path: "/chat/join",
        access: Access::Feature,
        handler: |r, rq, p| chat::join(&r.chat, rq, p),
    },
    Route {
        method: Method::Post,
        path: "/chat/messages",
        access: Access::Feature,
        handler: |r, rq, p| chat::message(&r.chat, rq, p),
    },
    Route {
        method: Method::Post,
        path: "/chat/name",
        access: Access::Feature,
        handler: |r, rq, p| chat::name(&r.chat, rq, p),
    },
    Route {
        method: Method::Post,
        path: "/chat/leave",
        access: Access::Feature,
        handler: |r, rq, p| chat::leave(&r.chat, rq, p),
    },
    Route {
        method: Method::Get,
        path: "/",
        access: Access::Feature,
        handler: |r, rq, _| r.admit.respond(rq, web::index()),
    },
];

/// What the table says for a request.
#[derive(Debug)]
pub(crate) enum Decision<'a> {
    /// Serve it with this route; `id` is what its `{id}` matched (empty without one).
    Serve(&'a Route, &'a str),
    /// The path exists, the method does not: 405 with this `Allow`.
    NotAllowed(String),
    /// No route has this path: 404.
    NotFound,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, self.path)
    }
}

/// The segments of a path as the table compares them: leading slashes dropped, split on `/`
/// (`/` is one empty segment).
fn segments(path: &str) -> impl Iterator<Item = &str> {
    path.trim_start_matches('/').split('/')
}

/// What `pattern` captures for `{id}` if it matches `path` (`Some("")` when it matches and has
/// no `{id}`).
fn matches<'p>(pattern: &str, path: &'p str) -> Option<&'p str> {
    let mut id = "";
    let mut want = segments(pattern);
    let mut got = segments(path);
    loop {
        match (want.next(), got.next()) {
            (None, None) => return Some(id),
            (Some("{id}"), Some(seg)) => id = seg,
            (Some(w), Some(seg)) if w == seg => {}
            _ => return None,
        }
    }
}

/// The table's decision for `method` on `path`.
pub(crate) fn decide<'a>(method: &Method, path: &'a str) -> Decision<'a> {
    let mut allow: Vec<&str> = Vec::new();
    for route in ROUTES {
        if let Some(id) = matches(route.path, path) {
            if route.method == *method {
                return Decision::Serve(route, id);
            }
            allow.push(route.method.as_str());
        }
    }
    if allow.is_empty() {
        Decision::NotFound
    } else {
        Decision::NotAllowed(allow.join(", "))
    }
}

impl Router {
    /// Routes one request that came in on `from`: cheap in-memory answers inline, streams and
    /// store work on threads.
    pub(crate) fn route(&self, request: Request, from: Listener) {
        self.metrics.requests.inc();
        if let Some(peer) = request.remote_addr().copied() {
            let bodies = self.admit.bodies();
            // Only the public listener's connections have an idle clock (the sweep's).
            match self.conns.admit(peer, from == Listener::Public) {
                Admit::Route => {}
                Admit::Discard => return bodies.discard(request, false),
                Admit::DiscardBehindStream => return bodies.discard(request, true),
            }
        }
        // One request of a connection at a time, in order (src/http/pipeline.rs): a request
        // pipelined behind one in flight waits for its turn, behind a stream for ever. (The
        // admin listener's few requests are answered as they come.)
        let request = if from == Listener::Public {
            let Some(request) = self.admit.turn(request) else {
                return;
            };
            request
        } else {
            request
        };
        // Before anything else reads the request: framing smuggling needs is refused, and the
        // connection closed (RFC 9112 section 6; see http::framing).
        if let Err(refusal) = framing::of_request(&request) {
            self.metrics.reject("bad-framing");
            let reply = response::error(refusal.status, refusal.message);
            return self.admit.respond(request, reply);
        }
        // tiny_http reads request lines and headers without a limit; refuse oversized ones here.
        if request.url().len() > MAX_URL {
            self.metrics.reject("too-large");
            let reply = response::error(414, "request line too long (max 8192 bytes)");
            return self.admit.respond(request, reply);
        }
        let header_bytes: usize = request
            .headers()
            .iter()
            .map(|h| h.field.as_str().as_str().len() + h.value.as_str().len() + 4)
            .sum();
        if header_bytes > MAX_HEADER_BYTES || request.headers().len() > MAX_HEADERS {
            self.metrics.reject("too-large");
            let reply = response::error(
                431,
                "request headers too large (max 16384 bytes, 100 lines)",
            );
            return self.admit.respond(request, reply);
        }
        // After the size checks: an oversized target is not logged whole.
        if log::log_enabled!(log::Level::Debug) {
            // Never the token: credentials in the query are redacted.
            log::debug!(
                "request method={} target={} peer={}",
                request.method(),
                auth::carrier::redact_target(request.url()),
                request
                    .remote_addr()
                    .map_or_else(|| "-".to_string(), |p| p.to_string())
            );
        }
        if *request.method() == Method::Options {
            let reply = if self.cors {
                let r = response::no_content();
                let r = response::add_header(
                    r,
                    "Access-Control-Allow-Methods",
                    "GET, PUT, POST, DELETE, OPTIONS",
                );
                let r = response::add_header(
                    r,
                    "Access-Control-Allow-Headers",
                    "Authorization, Content-Type, Last-Event-ID",
                );
                response::add_header(r, "Access-Control-Max-Age", "600")
            } else {
                method_not_allowed("GET, PUT, POST, DELETE")
            };
            return self.admit.respond(request, reply);
        }
        if request.body_length().is_some_and(|len| len > MAX_BODY) {
            self.metrics.reject("too-large");
            let reply = response::error(413, "request body too large (max 65536 bytes)");
            return self.admit.respond(request, reply);
        }
        let url = request.url().to_string();
        let (path, query) = split_url(&url);
        match decide(request.method(), path) {
            Decision::Serve(route, _) if !self.serves(route.access, from) => self
                .admit
                .respond(request, response::error(404, "not found")),
            Decision::Serve(route, id) => {
                if route.access == Access::Ops && self.ops_need_a_token(from) {
                    if let Err(denied) = self.auth.check(&request, &query, Need::Admin) {
                        let reply = auth::refusal(&self.metrics, &request, &denied);
                        return self.admit.respond(request, reply);
                    }
                }
                (route.handler)(self, request, &Params { id, query: &query })
            }
            Decision::NotAllowed(allow) => self.admit.respond(request, method_not_allowed(&allow)),
            Decision::NotFound => self
                .admit
                .respond(request, response::error(404, "not found")),
        }
    }
}

impl crate::admit::Route for Router {
    /// A request a request thread takes from its connection's queue: only the public
    /// listener's requests are ever queued (see `Router::route`).
    fn route(&self, request: Request) {
        Router::route(self, request, Listener::Public);
    }
}

impl Router {
    /// Whether a route of `access` is served on `from`.
    fn serves(&self, access: Access, from: Listener) -> bool {
        match (access, from) {
            (Access::Open, _) => true,
            (Access::Ops, Listener::Admin) => true,
            // The ops endpoints leave the public listener when the admin one exists.
            (Access::Ops, Listener::Public) => self.admin_listener.is_none(),
            (Access::Feature, Listener::Public) => true,
            (Access::Feature, Listener::Admin) => false,
        }
    }

    /// Whether the ops endpoints ask for an admin token on `from`: on the public listener
    /// whenever auth is on; on the admin listener only if it is reachable from other hosts
    /// (a loopback admin listener is guarded by where it listens).
    fn ops_need_a_token(&self, from: Listener) -> bool {
        self.auth.on()
            && match from {
                Listener::Public => true,
                Listener::Admin => self.admin_listener == Some(false),
            }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(method: Method, path: &str) -> Option<(&'static str, &str)> {
        match decide(&method, path) {
            Decision::Serve(route, id) => Some((route.path, id)),
            _ => None,
        }
    }

    #[test]
    fn the_table_picks_the_route_and_its_id_without_a_server() {
        assert_eq!(
            served(Method::Get, "/sse/call/42"),
            Some(("/sse/call/{id}", "42"))
        );
        assert_eq!(
            served(Method::Delete, "/alarms/a%20b"),
            Some(("/alarms/{id}", "a%20b"))
        );
        // An empty segment is an id too (the handler then answers 400).
        assert_eq!(
            served(Method::Get, "/sse/call/"),
            Some(("/sse/call/{id}", ""))
        );
        assert_eq!(served(Method::Get, "/"), Some(("/", "")));
        assert_eq!(
            served(Method::Post, "/chat/leave"),
            Some(("/chat/leave", ""))
        );
        // Leading slashes are dropped, as tiny_http's targets arrive.
        assert_eq!(served(Method::Get, "//healthz"), Some(("/healthz", "")));
    }

    #[test]
    fn healthz_is_open_the_ops_endpoints_are_ops_and_everything_else_is_a_feature() {
        for route in ROUTES {
            let want = match route.path {
                "/healthz" => Access::Open,
                "/metrics" | "/debug/threads" => Access::Ops,
                _ => Access::Feature,
            };
            assert_eq!(route.access, want, "{route:?}");
        }
    }

    #[test]
    fn a_known_path_with_another_method_is_405_with_allow_and_an_unknown_one_404() {
        let allow = |m: Method, p: &str| match decide(&m, p) {
            Decision::NotAllowed(allow) => Some(allow),
            _ => None,
        };
        assert_eq!(
            allow(Method::Post, "/alarms/x").as_deref(),
            Some("GET, PUT, DELETE")
        );
        assert_eq!(allow(Method::Put, "/sse/call/x").as_deref(), Some("GET"));
        assert_eq!(allow(Method::Get, "/chat/join").as_deref(), Some("POST"));
        assert_eq!(allow(Method::Post, "/chat/stream").as_deref(), Some("GET"));
        assert_eq!(allow(Method::Head, "/").as_deref(), Some("GET"));
        assert_eq!(allow(Method::Delete, "/metrics").as_deref(), Some("GET"));
        for path in [
            "/nope",
            "/chat",
            "/chat/nope",
            "/healthz/",
            "/sse/call/x/y",
            "/alarms",
        ] {
            assert!(
                matches!(decide(&Method::Get, path), Decision::NotFound),
                "{path}"
            );
        }
    }
}
