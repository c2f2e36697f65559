//! The alarm routes: `GET /sse/call/{id}` (a stream on its own thread) and
//! `GET|PUT|DELETE /alarms/{id}` (the store, on a short request thread).

use std::sync::Arc;

use serde_json::json;
use tiny_http::{Method, Request};

use super::refresher::Health;
use super::store::{Backend, StoreError};
use super::stream::{self, AlarmStreams, Mode};
use crate::admit::{Admission, Refusal};
use crate::auth::{self, Auth, Need};
use crate::http::request::{read_body, Params};
use crate::http::response::{self, bad_request, Reply};
use crate::http::validate::{parse_alarm_body, percent_decode, query_get, valid_id};
use crate::metrics::Metrics;
use crate::threads::Role;

const BAD_ID: &str = "invalid id: use 1-64 characters of A-Z a-z 0-9 . _ -";

/// What the alarm handlers need: the streams' context, the store, admission and the counters.
pub(crate) struct AlarmService {
    /// What each stream thread gets.
    pub(crate) streams: Arc<AlarmStreams>,
    /// The store (a connection per request).
    pub(crate) store: Backend,
    /// The store's health: a write that fails for a fault of the store degrades it; a
    /// stream for an id nobody watches is refused while reads fail.
    pub(crate) health: Health,
    /// Who gets a thread.
    pub(crate) admit: Arc<Admission>,
    /// Counters for `/metrics`.
    pub(crate) metrics: Arc<Metrics>,
    /// Who may stream (subscribe) and read or write (publish) an id.
    pub(crate) auth: Arc<Auth>,
}

/// The `{id}` of a route, decoded and checked; `None` if it is not a valid alarm id.
fn alarm_id(params: &Params<'_>) -> Option<String> {
    let id = percent_decode(params.id).unwrap_or_default();
    valid_id(&id).then_some(id)
}

/// `GET /sse/call/{id}[?mode=tick|change]`: the stream, on its own thread.
pub(crate) fn stream(alarms: &Arc<AlarmService>, request: Request, params: &Params<'_>) {
    let Some(id) = alarm_id(params) else {
        let reply = bad_request(&alarms.metrics, BAD_ID);
        return alarms.admit.respond(request, reply);
    };
    let Some(mode) = Mode::parse(query_get(params.query, "mode")) else {
        let reply = bad_request(&alarms.metrics, "invalid mode: use tick or change");
        return alarms.admit.respond(request, reply);
    };
    // Decided before admission: a refused request spends no stream slot and no thread.
    let expires = match alarms
        .auth
        .check(&request, params.query, Need::Subscribe(&id))
    {
        Ok(grant) => grant.map(|g| g.expires),
        Err(denied) => {
            let reply = auth::refusal(&alarms.metrics, &request, &denied);
            return alarms.admit.respond(request, reply);
        }
    };
    // While the store fails, a stream for an id nobody watches would have nothing to show
    // (its first value comes from the store): it is refused, to come back later, instead of
    // opening silent. An id already watched streams its last known value.
    if alarms.health.read_failing() && alarms.streams.hub.get(&id).is_none() {
        log::warn!("stream refused reason=store-unavailable id={id}");
        return alarms
            .admit
            .refuse_stream(request, Refusal::StoreUnavailable);
    }
    let cx = alarms.streams.clone();
    alarms
        .admit
        .spawn_stream(Role::AlarmStream, request, move |rq, slot, conn| {
            stream::serve(cx, rq, id, mode, conn, slot, expires)
        });
}

/// `GET|PUT|DELETE /alarms/{id}`: the store, on a short request thread.
pub(crate) fn rest(alarms: &Arc<AlarmService>, request: Request, params: &Params<'_>) {
    let Some(id) = alarm_id(params) else {
        let reply = bad_request(&alarms.metrics, BAD_ID);
        return alarms.admit.respond(request, reply);
    };
    // Reading an id from the store is publishing's right too: a subscriber has the stream.
    if let Err(denied) = alarms
        .auth
        .check(&request, params.query, Need::Publish(&id))
    {
        let reply = auth::refusal(&alarms.metrics, &request, &denied);
        return alarms.admit.respond(request, reply);
    }
    let method = request.method().clone();
    let service = alarms.clone();
    alarms
        .admit
        .spawn_request(request, move |rq| store_reply(&service, rq, &id, &method));
}

/// The store's answer to `method` on `id` (on the request's own thread).
fn store_reply(alarms: &AlarmService, request: &mut Request, id: &str, method: &Method) -> Reply {
    if *method == Method::Get && alarms.streams.fault_panic_id.as_deref() == Some(id) {
        injected_fault(id);
    }
    let body = match method {
        Method::Put => match read_body(alarms.admit.bodies(), request) {
            Ok(body) => match parse_alarm_body(&body) {
                Some(v) => Some(v),
                None => {
                    return bad_request(
                        &alarms.metrics,
                        "body must be true, false or {\"alarm\":bool}",
                    );
                }
            },
            Err(reply) => return reply,
        },
        _ => None,
    };
    let writes = matches!(method, Method::Put | Method::Delete);
    // A write that fails for a fault of the store (disk full, read-only) says so first, and
    // degrades /healthz until a write succeeds again.
    let unavailable = |e: StoreError| {
        let why = if writes {
            if super::health::write_fault(&e).is_some() {
                alarms.metrics.store_write_errors.inc();
            }
            alarms.health.write_failed(&e)
        } else {
            e.to_string()
        };
        response::error(503, &format!("store unavailable: {why}"))
    };
    let store = match alarms.store.open() {
        Ok(s) => s,
        Err(e) => return unavailable(e),
    };
    // A write is applied to the hub before it is acknowledged, so every stream shows it from
    // the 204 on (read your own writes: see hub.rs for how it is ordered against the refresher).
    let hub = &alarms.streams.hub;
    let write = |alarm: Option<bool>| {
        store.write(id, alarm, &|| hub.next_order()).map(|order| {
            hub.write_through(id, alarm.unwrap_or(false), order);
            alarms.health.write_ok();
            response::no_content()
        })
    };
    let result = match (method, body) {
        (Method::Put, Some(v)) => write(Some(v)),
        (Method::Delete, _) => write(None),
        _ => store
            .get(id)
            .map(|v| response::json(200, &json!({ "id": id, "alarm": v }))),
    };
    result.unwrap_or_else(unavailable)
}

#[cold]
#[inline(never)]
fn injected_fault(id: &str) -> ! {
    panic!("injected fault in request id={id}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::http::body::Bodies;
    use crate::http::sweep::ConnTable;
    use crate::http::watch::{Paths, Watcher};
    use crate::stream::Streams;
    use crate::threads::Threads;
    use tiny_http::TestRequest;

    /// The alarm routes' context over a fresh store, with nothing running: no listener, no
    /// dispatcher, no thread.
    fn service(name: &str) -> AlarmService {
        let dir =
            std::env::temp_dir().join(format!("syncast-alarm-http-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = Config {
            db: dir.join("a.db"),
            ..Config::default()
        };
        let store = Backend::of(&config, None);
        store.create().unwrap();
        let metrics = Arc::new(Metrics::default());
        let (hub, _load_now) = crate::alarm::hub::AlarmHub::new();
        let conns = Arc::new(ConnTable::new(config.listen));
        let bodies = Arc::new(Bodies::new(conns.clone(), None, metrics.clone()));
        let watcher =
            Watcher::new(config.listen, Threads::new(), metrics.clone(), Paths::ALL).unwrap();
        AlarmService {
            streams: Arc::new(AlarmStreams {
                hub,
                streams: Streams::new(conns.clone(), watcher, &config, metrics.clone()),
                metrics: metrics.clone(),
                tick: config.tick,
                heartbeat: config.heartbeat,
                fault_panic_id: None,
            }),
            store,
            health: Default::default(),
            admit: Admission::new(
                &config,
                metrics.clone(),
                Threads::new(),
                conns.clone(),
                bodies,
            ),
            metrics,
            auth: Arc::new(Auth::new(&config).unwrap()),
        }
    }

    fn answer(alarms: &AlarmService, method: Method, body: &'static str) -> (u16, String) {
        let mut request: Request = TestRequest::new()
            .with_method(method.clone())
            .with_path("/alarms/42")
            .with_body(body)
            .into();
        let reply = store_reply(alarms, &mut request, "42", &method);
        let status = reply.status_code().0;
        let body = String::from_utf8(reply.into_reader().into_inner()).unwrap();
        (status, body)
    }

    #[test]
    fn the_alarm_handler_puts_reads_and_deletes_without_a_server() {
        let alarms = service("crud");
        assert_eq!(answer(&alarms, Method::Put, "true"), (204, String::new()));
        assert_eq!(
            answer(&alarms, Method::Get, ""),
            (200, r#"{"alarm":true,"id":"42"}"#.to_string())
        );
        let (status, body) = answer(&alarms, Method::Put, "maybe");
        assert_eq!(status, 400, "{body}");
        assert!(
            alarms
                .metrics
                .render(Default::default(), crate::metrics::Format::Prometheus)
                .contains("syncast_rejected_total{reason=\"bad-request\"} 1\n"),
            "counted as a bad request"
        );
        assert_eq!(answer(&alarms, Method::Delete, ""), (204, String::new()));
        assert_eq!(
            answer(&alarms, Method::Get, ""),
            (200, r#"{"alarm":false,"id":"42"}"#.to_string())
        );
    }
}
