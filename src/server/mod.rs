//! The server: starts tiny_http on a listener, the refresher and the dispatcher, and shuts
//! everything down in order, joining every thread it spawned.
//!
//! - this file: [`Server`] (start, shutdown) and what wires the parts together;
//! - [`dispatch`]: the dispatcher thread's loop;
//! - [`router`]: the route table and the limits checked before it;
//! - [`ops`]: `/healthz`, `/metrics`, `/debug/threads`.

mod dispatch;
mod ops;
mod router;

/// Every route the router answers as (method, path pattern), and the CORS preflight.
pub(crate) fn routes() -> Vec<(&'static str, &'static str)> {
    router::ROUTES
        .iter()
        .map(|r| (r.method.as_str(), r.path))
        .chain([("OPTIONS", "/{path}")])
        .collect()
}

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Sender};
use parking_lot::{Mutex, RwLock};

use crate::admit::Admission;
use crate::alarm::http::AlarmService;
use crate::alarm::hub::AlarmHub;
use crate::alarm::refresher::{Health, Refresher};
use crate::alarm::store::{Backend, StoreError};
use crate::alarm::stream::AlarmStreams;
use crate::chat::http::ChatService;
use crate::chat::room::Room;
use crate::chat::stream::ChatStreams;
use crate::config::{Config, ConfigError, ValidConfig};
use crate::http::accept::{self, Supervisor};
use crate::http::body::Bodies;
use crate::http::sweep::ConnTable;
use crate::metrics::Metrics;
use crate::redis::Link;
use crate::stream::Streams;
use crate::threads::{Role, Threads, SERVICE_STACK};
use dispatch::{CurrentHttp, Dispatcher};
use ops::Ops;
use router::Router;

/// Why the server could not start.
#[derive(Debug)]
pub enum StartError {
    /// A configuration value is out of range.
    Config(ConfigError),
    /// The listening socket could not be bound.
    Bind(std::io::Error),
    /// The store could not be opened or created.
    Store(StoreError),
    /// A thread could not be spawned.
    Spawn(std::io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Config(e) => write!(f, "{e}"),
            StartError::Bind(e) => write!(f, "cannot listen: {e}"),
            StartError::Store(e) => write!(f, "cannot open store: {e}"),
            StartError::Spawn(e) => write!(f, "cannot spawn thread: {e}"),
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StartError::Config(e) => Some(e),
            StartError::Bind(e) | StartError::Spawn(e) => Some(e),
            StartError::Store(e) => Some(e),
        }
    }
}

/// A running syncast server.
pub struct Server {
    local: SocketAddr,
    threads: Threads,
    admit: Arc<Admission>,
    http: CurrentHttp,
    shutdown_tx: Option<Sender<()>>,
}

impl Server {
    /// Validates `config`, opens (or creates) the store, binds the listener and starts serving.
    pub fn start(config: Config) -> Result<Server, StartError> {
        Server::start_valid(config.validated().map_err(StartError::Config)?)
    }

    /// Like [`Server::start`], for a configuration validated already.
    pub fn start_valid(config: ValidConfig) -> Result<Server, StartError> {
        Server::launch(config, Threads::new())
    }

    /// Starts the server; every thread it spawns is registered in `threads`.
    fn launch(config: ValidConfig, threads: Threads) -> Result<Server, StartError> {
        let config = config.into_inner();
        accept::install_panic_watch();
        let link = match &config.redis {
            Some(url) => {
                let link = Link::new(url, &config.redis_prefix, config.redis_timeout)
                    .map_err(|e| StartError::Store(e.into()))?;
                Some(Arc::new(link))
            }
            None => None,
        };
        let store = Backend::of(&config, link.as_ref());
        store.create().map_err(StartError::Store)?;
        if let Some(link) = &link {
            // Says at once whether Redis answers (`redis connected` or `redis unavailable`);
            // unavailable is no start error: the node runs degraded until it answers.
            let _ = link.ping();
        }
        let listener = TcpListener::bind(config.listen).map_err(StartError::Bind)?;
        let local = listener.local_addr().map_err(StartError::Bind)?;
        // Read before tiny_http starts: a panic of its accept thread in the moment before the
        // dispatcher first runs (a burst of connections at start-up, out of descriptors) must
        // still be noticed. (Reading it in the dispatcher instead missed exactly that, and the
        // EMFILE test then saw no recovery at all on a loaded machine.)
        let panics_at_start = accept::tiny_http_panics();
        let http: CurrentHttp = Arc::new(Mutex::new(Some(
            accept::start(&listener, true).map_err(StartError::Bind)?,
        )));
        let (shutdown_tx, shutdown_rx) = bounded::<()>(0);
        let (hub, load_now) = AlarmHub::new();
        let metrics = Arc::new(Metrics::default());
        let health: Health = Arc::new(RwLock::new(None));
        let room = Room::new(&config, metrics.clone());
        let conns = Arc::new(ConnTable::new(local));
        let bodies = Arc::new(Bodies::new(conns.clone(), metrics.clone()));
        let admit = Admission::new(&config, metrics.clone(), threads.clone(), bodies.clone());
        let alarms = Arc::new(AlarmService {
            streams: Arc::new(AlarmStreams {
                hub: hub.clone(),
                streams: Streams::new(conns.clone(), bodies.clone(), &config),
                metrics: metrics.clone(),
                tick: config.tick,
                heartbeat: config.heartbeat,
                fault_panic_id: config.fault_panic_id.clone(),
            }),
            store: store.clone(),
            admit: admit.clone(),
            metrics: metrics.clone(),
        });
        let chat = Arc::new(ChatService {
            room: room.clone(),
            streams: Arc::new(ChatStreams {
                room: room.clone(),
                streams: Streams::new(conns.clone(), bodies.clone(), &config),
                metrics: metrics.clone(),
                heartbeat: config.heartbeat,
            }),
            admit: admit.clone(),
            metrics: metrics.clone(),
        });
        let router = Router {
            alarms,
            chat,
            ops: Ops {
                metrics: metrics.clone(),
                threads: threads.clone(),
                health: health.clone(),
                hub: hub.clone(),
                admit: admit.clone(),
                redis: link.clone(),
                redis_in_health: store.shared(),
            },
            admit: admit.clone(),
            conns: conns.clone(),
            metrics: metrics.clone(),
            cors: config.cors_origin.is_some(),
        };
        let refresher = Refresher {
            store,
            every: config.refresh,
            hub,
            load_now,
            metrics: metrics.clone(),
            health,
            shutdown: shutdown_rx.clone(),
            fault_panic_id: config.fault_panic_id.clone(),
        };
        let dispatcher = Dispatcher {
            router,
            room,
            threads: threads.clone(),
            admit: admit.clone(),
            conns,
            metrics,
            http: http.clone(),
            listener,
            shutdown: shutdown_rx,
            header_timeout: config.header_timeout,
            max_pending: config.max_pending,
        };
        threads
            .spawn(
                Role::Refresher,
                "refresher".into(),
                SERVICE_STACK,
                move || refresher.run_restarting(),
            )
            .map_err(StartError::Spawn)?;
        let spawned = threads.spawn(
            Role::Dispatcher,
            "dispatcher".into(),
            SERVICE_STACK,
            move || dispatcher.run(Supervisor::new(local, panics_at_start)),
        );
        if let Err(e) = spawned {
            // The refresher runs already: stop it and join it, so a failed start leaves no
            // thread behind.
            drop(shutdown_tx);
            threads.join_all(Instant::now() + Duration::from_secs(5));
            return Err(StartError::Spawn(e));
        }
        log::info!("server listening addr={local}");
        Ok(Server {
            local,
            threads,
            admit,
            http,
            shutdown_tx: Some(shutdown_tx),
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.local
    }

    /// Stops accepting, sends every stream `event: shutdown` and closes it, stops the
    /// refresher, joins every thread this server spawned and returns how many it joined.
    /// Connections tiny_http still holds are shut so its own (unjoinable) threads end too.
    pub fn shutdown(mut self) -> usize {
        self.stop()
    }

    fn stop(&mut self) -> usize {
        let Some(tx) = self.shutdown_tx.take() else {
            return 0;
        };
        log::info!("shutdown started streams={}", self.admit.stream_count());
        // Count every join from here on, including the dispatcher's last reaps.
        let joined_before = self.threads.joined_total();
        drop(tx);
        self.admit.close_streams();
        if let Some(http) = self.http.lock().as_ref() {
            http.unblock();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let (_, left) = self.threads.join_all(deadline);
        let joined = (self.threads.joined_total() - joined_before) as usize;
        // tiny_http's pool threads park reading keep-alive connections: shut those sockets so
        // they see EOF and exit; its accept thread exits when the Server is dropped.
        // The dispatcher has ended: dropping the last tiny_http Server stops its accept thread.
        self.http.lock().take();
        let shut = crate::sys::fd::shutdown_accepted(self.local);
        if left > 0 {
            log::error!("shutdown incomplete: joined {joined} threads, {left} still running");
        }
        log::info!("shutdown complete: joined {joined} threads");
        log::debug!("shutdown closed {shut} idle connections");
        joined
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::threads::testing;

    #[test]
    fn a_dispatcher_that_cannot_start_leaves_no_refresher_behind() {
        let dir =
            std::env::temp_dir().join(format!("syncast-server-{}-refused", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            db: dir.join("a.db"),
            ..Config::default()
        };
        let threads = Threads::new();
        testing::refuse(Some(Role::Dispatcher));
        let started = Server::launch(config.validated().unwrap(), threads.clone());
        testing::refuse(None);
        assert!(
            matches!(started, Err(StartError::Spawn(_))),
            "{:?}",
            started.err()
        );
        assert_eq!(threads.live(), 0, "nothing of it still running");
        assert_eq!(threads.joined_total(), 1, "the refresher, joined");
    }
}
