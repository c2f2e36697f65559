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
use parking_lot::Mutex;

use crate::admit::Admission;
use crate::alarm::http::AlarmService;
use crate::alarm::hub::AlarmHub;
use crate::alarm::refresher::{Health, Refresher};
use crate::alarm::store::{Backend, StoreError};
use crate::alarm::stream::AlarmStreams;
use crate::auth::keys::KeyError;
use crate::auth::{Auth, KeyReload};
use crate::chat::http::ChatService;
use crate::chat::room::Room;
use crate::chat::shared::keeper::Keeper;
use crate::chat::shared::reader::Reader;
use crate::chat::shared::SharedChat;
use crate::chat::stream::ChatStreams;
use crate::chat::tcp::{ChatTcp, Members};
use crate::config::{Config, ConfigError, ValidConfig};
use crate::http::accept::{self, Supervisor};
use crate::http::body::Bodies;
use crate::http::sse::WriteLimits;
use crate::http::sweep::ConnTable;
use crate::http::watch::{Paths, Watcher};
use crate::metrics::Metrics;
use crate::redis::Link;
use crate::reload::{ReloadHook, Reloaded, Reloads};
use crate::stream::Streams;
use crate::threads::{Role, Threads, SERVICE_STACK};
use dispatch::{AdminHttp, CurrentHttp, Dispatcher};
use ops::Ops;
use router::Router;

/// Why the server could not start.
#[derive(Debug)]
pub enum StartError {
    /// A configuration value is out of range.
    Config(ConfigError),
    /// The listening socket could not be bound.
    Bind(std::io::Error),
    /// The `--admin-listen` socket could not be bound.
    AdminBind(std::io::Error),
    /// The `--chat-tcp` socket could not be bound.
    ChatTcpBind(std::io::Error),
    /// A key file (`--jwt-secret-file`, `--jwt-public-key-file`) cannot be used.
    Key(KeyError),
    /// The store could not be opened or created.
    Store(StoreError),
    /// A thread could not be spawned.
    Spawn(std::io::Error),
    /// The watcher's epoll set or eventfd could not be made (out of descriptors).
    Watch(std::io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Config(e) => write!(f, "{e}"),
            StartError::Bind(e) => write!(f, "cannot listen: {e}"),
            StartError::AdminBind(e) => write!(f, "cannot listen on --admin-listen: {e}"),
            StartError::ChatTcpBind(e) => write!(f, "cannot listen on --chat-tcp: {e}"),
            StartError::Key(e) => write!(f, "{e}"),
            StartError::Store(e) => write!(f, "cannot open store: {e}"),
            StartError::Spawn(e) => write!(f, "cannot spawn thread: {e}"),
            StartError::Watch(e) => write!(f, "cannot watch stream sockets: {e}"),
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StartError::Config(e) => Some(e),
            StartError::Bind(e)
            | StartError::AdminBind(e)
            | StartError::ChatTcpBind(e)
            | StartError::Spawn(e)
            | StartError::Watch(e) => Some(e),
            StartError::Key(e) => Some(e),
            StartError::Store(e) => Some(e),
        }
    }
}

/// Shutdown joins every thread it spawned within this long of its start, whatever
/// `--write-timeout` is: streams get [`FAREWELL`] to write `event: shutdown` and end, then the
/// connections still open are shut, which ends any write or read blocked on them at once.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(3);

/// How long shutdown waits for the streams to write their farewell and end by themselves.
/// A stream still running then is blocked writing to a client that does not read (or a request
/// thread reading a body that does not come): its socket is shut.
const FAREWELL: Duration = Duration::from_secs(1);

/// What a shutdown did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Shutdown {
    /// Threads joined.
    pub joined: usize,
    /// Threads still running at [`SHUTDOWN_DEADLINE`] (logged as `shutdown incomplete`; the
    /// binary then exits non-zero).
    pub still_running: usize,
    /// Connections shut because threads were still running after [`FAREWELL`].
    pub cut: usize,
}

/// A running syncast server.
pub struct Server {
    local: SocketAddr,
    admin_local: Option<SocketAddr>,
    /// The chat's plain-TCP listener (`--chat-tcp`).
    chat_tcp: Option<ChatTcp>,
    auth: Arc<Auth>,
    threads: Threads,
    admit: Arc<Admission>,
    watcher: Arc<Watcher>,
    http: CurrentHttp,
    reloads: Reloads,
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
        crate::sys::mem::tune_malloc();
        let slots = crate::sys::thread::futex_slots_for(config.max_clients);
        match crate::sys::thread::size_futex_hash(slots) {
            Ok(Some(n)) => log::debug!("futex hash slots={n}"),
            Ok(None) => log::debug!("futex hash slots=system"),
            Err(e) => log::warn!("futex hash not sized slots={slots} error={e}"),
        }
        let auth = Arc::new(Auth::new(&config).map_err(StartError::Key)?);
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
        // Every accepted socket inherits it: no buffered answer waits long on a client that
        // does not read (see `REPLY_WRITE_TIMEOUT`).
        crate::sys::fd::set_send_timeout(
            std::os::fd::AsRawFd::as_raw_fd(&listener),
            crate::admit::REPLY_WRITE_TIMEOUT,
        )
        .map_err(StartError::Bind)?;
        let admin = match config.admin_listen {
            Some(addr) => Some(AdminHttp::start(addr).map_err(StartError::AdminBind)?),
            None => None,
        };
        let admin_local = admin.as_ref().map(|a| a.local);
        let chat_listener = match config.chat_tcp {
            Some(addr) => Some(ChatTcp::bind(addr).map_err(StartError::ChatTcpBind)?),
            None => None,
        };
        // Read before tiny_http starts: a panic of its accept thread in the moment before the
        // dispatcher first runs (a burst of connections at start-up, out of descriptors) must
        // still be noticed. (Reading it in the dispatcher instead missed exactly that, and the
        // EMFILE test then saw no recovery at all on a loaded machine.)
        let panics_at_start = accept::tiny_http_panics();
        let http: CurrentHttp = Arc::new(Mutex::new(Some(
            accept::start(&listener, true).map_err(StartError::Bind)?,
        )));
        let (shutdown_tx, shutdown_rx) = bounded::<()>(0);
        // What a SIGHUP re-reads: each part that depends on files registers its hook here.
        let reloads = Reloads::default();
        let keys = auth.clone();
        reloads.register(
            "keys",
            Arc::new(move || {
                let r = reload_keys(&keys);
                match r.failed.len() {
                    0 => Ok(()),
                    n => Err(format!("{n} key file(s) kept their old key")),
                }
            }),
        );
        let (hub, load_now) = AlarmHub::new();
        let metrics = Arc::new(Metrics::default());
        let health: Health = Arc::default();
        // With --redis the chat room is the one all nodes on that Redis share.
        let shared_chat = match &link {
            Some(link) => Some(Arc::new(
                SharedChat::new(&config, link.clone()).map_err(StartError::Spawn)?,
            )),
            None => None,
        };
        let room = match &shared_chat {
            Some(sh) => Room::on_redis(&config, metrics.clone(), sh.clone()),
            None => Room::new(&config, metrics.clone()),
        };
        room.run_rounds_on(threads.clone(), shutdown_rx.clone());
        let conns = Arc::new(ConnTable::new(local));
        let bodies = Arc::new(Bodies::new(conns.clone(), admin_local, metrics.clone()));
        let watcher = Watcher::new(local, threads.clone(), metrics.clone(), Paths::of(&config))
            .map_err(StartError::Watch)?;
        let admit = Admission::new(
            &config,
            metrics.clone(),
            threads.clone(),
            conns.clone(),
            bodies.clone(),
        );
        let alarms = Arc::new(AlarmService {
            streams: Arc::new(AlarmStreams {
                hub: hub.clone(),
                streams: Streams::new(conns.clone(), watcher.clone(), &config, metrics.clone()),
                metrics: metrics.clone(),
                tick: config.tick,
                heartbeat: config.heartbeat,
                fault_panic_id: config.fault_panic_id.clone(),
            }),
            store: store.clone(),
            health: health.clone(),
            admit: admit.clone(),
            metrics: metrics.clone(),
            auth: auth.clone(),
        });
        let members = Arc::new(Members {
            room: room.clone(),
            watcher: watcher.clone(),
            conns: conns.clone(),
            auth: auth.clone(),
            metrics: metrics.clone(),
            limits: WriteLimits::of(&config),
            header_timeout: config.header_timeout,
            keepalive: config.heartbeat,
            // On Redis a member's own thread runs the room's scripts (join, post, rename,
            // leave): a Redis round trip needs a service thread's stack, not a stream's (a
            // TCP member's thread overflowed 64 KiB in a debug build). Only touched pages cost.
            stack: if config.redis.is_some() {
                config.stream_stack.max(SERVICE_STACK)
            } else {
                config.stream_stack
            },
        });
        let chat = Arc::new(ChatService {
            room: room.clone(),
            streams: Arc::new(ChatStreams {
                room: room.clone(),
                streams: Streams::new(conns.clone(), watcher.clone(), &config, metrics.clone()),
                metrics: metrics.clone(),
                heartbeat: config.heartbeat,
                fault_panic_id: config.fault_panic_id.clone(),
            }),
            admit: admit.clone(),
            metrics: metrics.clone(),
            auth: auth.clone(),
        });
        let router = Arc::new(Router {
            alarms,
            chat,
            ops: Ops {
                metrics: metrics.clone(),
                threads: threads.clone(),
                health: health.clone(),
                hub: hub.clone(),
                admit: admit.clone(),
                redis: link.clone(),
                // The chat is on Redis whenever --redis is given: the node needs it.
                redis_in_health: store.shared() || shared_chat.is_some(),
                chat: shared_chat.clone(),
            },
            admit: admit.clone(),
            conns: conns.clone(),
            metrics: metrics.clone(),
            cors: config.cors_origin.is_some(),
            auth: auth.clone(),
            admin_listener: admin_local.map(|a| a.ip().is_loopback()),
        });
        let route: Arc<dyn crate::admit::Route> = router.clone();
        admit.set_router(Arc::downgrade(&route));
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
        let chat_threads = shared_chat.map(|sh| {
            (
                Reader {
                    room: room.clone(),
                    shared: sh.clone(),
                    shutdown: shutdown_rx.clone(),
                },
                Keeper {
                    room: room.clone(),
                    shared: sh,
                    metrics: metrics.clone(),
                    shutdown: shutdown_rx.clone(),
                },
            )
        });
        let dispatcher = Dispatcher {
            router,
            room,
            threads: threads.clone(),
            admit: admit.clone(),
            conns,
            watcher: watcher.clone(),
            metrics,
            http: http.clone(),
            listener,
            admin,
            shutdown: shutdown_rx,
            header_timeout: config.header_timeout,
            body_timeout: config.body_timeout,
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
        let mut spawned = Ok(0);
        if let Some((reader, keeper)) = chat_threads {
            spawned = threads
                .spawn(
                    Role::ChatReader,
                    "chat-reader".into(),
                    SERVICE_STACK,
                    move || reader.run(),
                )
                .and_then(|_| {
                    threads.spawn(
                        Role::ChatKeeper,
                        "chat-keeper".into(),
                        SERVICE_STACK,
                        move || keeper.run(),
                    )
                });
        }
        let spawned = spawned.and_then(|_| {
            threads.spawn(
                Role::Dispatcher,
                "dispatcher".into(),
                SERVICE_STACK,
                move || dispatcher.run(Supervisor::new(local, panics_at_start)),
            )
        });
        let chat_tcp = match (spawned, chat_listener) {
            (Err(e), _) => Err(e),
            (Ok(_), None) => Ok(None),
            (Ok(_), Some(listener)) => {
                ChatTcp::start(listener, members, admit.clone(), threads.clone()).map(Some)
            }
        };
        let chat_tcp = match chat_tcp {
            Ok(t) => t,
            Err(e) => {
                // The refresher (the chat's reader and keeper, the dispatcher) run already: stop
                // them and join them, so a failed start leaves no thread behind.
                drop(shutdown_tx);
                if let Some(http) = http.lock().as_ref() {
                    http.unblock();
                }
                threads.join_all(Instant::now() + Duration::from_secs(5));
                return Err(StartError::Spawn(e));
            }
        };
        log::info!("server listening addr={local}");
        if let Some(admin) = admin_local {
            log::info!("admin listening addr={admin}");
        }
        if auth.on() {
            log::info!(
                "auth on hs256={} public_key={}",
                config.jwt_secret_file.is_some(),
                config.jwt_public_key_file.is_some()
            );
        } else if config.insecure {
            log::warn!(
                "auth off: --insecure serves every stream, alarm and chat without a token \
                 addr={local}"
            );
        }
        // What starting up touched all over the binary need not stay resident (see the function).
        match crate::sys::mem::release_clean_file_pages() {
            Ok(bytes) => log::debug!("start-up pages released mapped_kib={}", bytes / 1024),
            Err(e) => log::debug!("start-up pages not released error={e}"),
        }
        Ok(Server {
            local,
            admin_local,
            chat_tcp,
            auth,
            threads,
            admit,
            watcher,
            http,
            reloads,
            shutdown_tx: Some(shutdown_tx),
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.local
    }

    /// The `--admin-listen` address, if there is one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_local
    }

    /// The `--chat-tcp` address, if there is one.
    pub fn chat_tcp_addr(&self) -> Option<SocketAddr> {
        self.chat_tcp.as_ref().map(ChatTcp::addr)
    }

    /// Reads the key files again (what `SIGHUP` does, through the `keys` reload hook): each one
    /// that reads and checks replaces its key, each one that does not keeps the old key; both
    /// are logged. Tokens verified from now on use the new keys; streams already open keep
    /// running until their token's `exp`.
    pub fn reload_keys(&self) -> KeyReload {
        reload_keys(&self.auth)
    }

    /// Registers `hook` to run on every [`Server::reload`], after those registered before it;
    /// `what` names it in the log lines (`reloaded what=…`). A hook re-reads files it depends on
    /// (keys, say) and, when it fails, keeps what it had: see the `reload` module.
    pub fn on_reload(&self, what: &'static str, hook: ReloadHook) {
        self.reloads.register(what, hook);
    }

    /// Runs every reload hook on this thread (the binary calls it on `SIGHUP`) and says how
    /// each did; streams and requests are not touched.
    pub fn reload(&self) -> Vec<Reloaded> {
        self.reloads.run()
    }

    /// Stops accepting, sends every stream `event: shutdown` and closes it, stops the
    /// refresher, joins every thread this server spawned and returns how many it joined, all
    /// within [`SHUTDOWN_DEADLINE`]. Connections tiny_http still holds are shut so its own
    /// (unjoinable) threads end too.
    pub fn shutdown(mut self) -> usize {
        self.stop(&mut || false).map_or(0, |s| s.joined)
    }

    /// Like [`Server::shutdown`], but asks `interrupted` every few milliseconds while it waits
    /// for threads, and gives up at once when it says yes (`None`): the caller then exits the
    /// process (a second SIGTERM). Otherwise says what the shutdown did.
    pub fn shutdown_until(mut self, interrupted: &mut dyn FnMut() -> bool) -> Option<Shutdown> {
        self.stop(interrupted)
    }

    fn stop(&mut self, interrupted: &mut dyn FnMut() -> bool) -> Option<Shutdown> {
        let Some(tx) = self.shutdown_tx.take() else {
            return Some(Shutdown {
                joined: 0,
                still_running: 0,
                cut: 0,
            });
        };
        log::info!("shutdown started streams={}", self.admit.stream_count());
        let started = Instant::now();
        // Count every join from here on, including the dispatcher's last reaps.
        let joined_before = self.threads.joined_total();
        drop(tx);
        self.admit.close_streams();
        self.watcher.shutdown();
        if let Some(tcp) = self.chat_tcp.as_mut() {
            tcp.shutdown();
        }
        let chat_local = self.chat_tcp.as_ref().map(ChatTcp::addr);
        if let Some(http) = self.http.lock().as_ref() {
            http.unblock();
        }
        let (_, mut left) = self.threads.join_until(started + FAREWELL, interrupted)?;
        let mut cut = 0;
        if left > 0 {
            // Still running after the farewell: blocked in a write to a client that does not
            // read (the farewell itself, or an event before it, may each block for up to
            // --write-timeout) or in a read of a body that does not come. Shutting every
            // accepted connection ends those calls at once (EPIPE, EOF).
            cut = crate::sys::fd::shutdown_accepted(self.local);
            if let Some(admin) = self.admin_local {
                cut += crate::sys::fd::shutdown_accepted(admin);
            }
            if let Some(tcp) = chat_local {
                cut += crate::sys::fd::shutdown_accepted(tcp);
            }
            log::warn!(
                "shutdown cut connections={cut} still_running={left} after_ms={}",
                started.elapsed().as_millis()
            );
            left = self
                .threads
                .join_until(started + SHUTDOWN_DEADLINE, interrupted)?
                .1;
        }
        let joined = (self.threads.joined_total() - joined_before) as usize;
        // tiny_http's pool threads park reading keep-alive connections: shut those sockets so
        // they see EOF and exit; its accept thread exits when the Server is dropped.
        // The dispatcher has ended: dropping the last tiny_http Server stops its accept thread.
        self.http.lock().take();
        let mut shut = crate::sys::fd::shutdown_accepted(self.local);
        if let Some(admin) = self.admin_local {
            // The admin tiny_http went with the dispatcher; its pool threads end the same way.
            shut += crate::sys::fd::shutdown_accepted(admin);
        }
        if left > 0 {
            log::error!("shutdown incomplete: joined {joined} threads, {left} still running");
        }
        log::info!("shutdown complete: joined {joined} threads");
        log::debug!("shutdown closed {shut} idle connections");
        Some(Shutdown {
            joined,
            still_running: left,
            cut,
        })
    }
}

/// Reads the key files again and logs the outcome (`keys reloaded=N failed=M`; each file's own
/// line is the reload's): the `keys` reload hook, and [`Server::reload_keys`].
fn reload_keys(auth: &Auth) -> KeyReload {
    if !auth.on() {
        log::info!("key reload: no key files configured");
    }
    let r = auth.reload();
    log::info!(
        "keys reloaded={} failed={}",
        r.reloaded.len(),
        r.failed.len()
    );
    r
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop(&mut || false);
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

    /// A server and, in its registry, a thread that watches no close channel and touches no
    /// socket: nothing shutdown does can end it (until the returned sender is dropped).
    fn server_with_a_stuck_thread(tag: &str) -> (Server, Threads, crossbeam_channel::Sender<()>) {
        let dir = std::env::temp_dir().join(format!("syncast-server-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            db: dir.join("a.db"),
            ..Config::default()
        };
        let threads = Threads::new();
        let server = Server::launch(config.validated().unwrap(), threads.clone()).unwrap();
        let (release, stuck) = bounded::<()>(0);
        threads
            .spawn(Role::Request, "req-stuck".into(), 64 * 1024, move || {
                let _ = stuck.recv();
            })
            .unwrap();
        (server, threads, release)
    }

    #[test]
    fn a_thread_that_outlives_the_deadline_makes_the_shutdown_incomplete() {
        let (server, threads, release) = server_with_a_stuck_thread("stuck");
        let started = Instant::now();
        let done = server
            .shutdown_until(&mut || false)
            .expect("not interrupted");
        assert!(
            started.elapsed() >= SHUTDOWN_DEADLINE,
            "waited to the deadline"
        );
        assert_eq!(done.still_running, 1, "{done:?}");
        assert!(done.joined >= 2, "dispatcher and refresher: {done:?}");
        drop(release);
        assert_eq!(
            threads.join_all(Instant::now() + Duration::from_secs(5)),
            (1, 0)
        );
    }

    #[test]
    fn an_interrupted_shutdown_returns_at_once() {
        let (server, threads, release) = server_with_a_stuck_thread("interrupted");
        let mut asked = 0;
        let done = server.shutdown_until(&mut || {
            asked += 1;
            asked > 3
        });
        assert!(done.is_none(), "interrupted");
        assert_eq!(asked, 4, "gave up at the first yes");
        assert!(
            threads.list().iter().any(|t| t.name == "req-stuck"),
            "the stuck thread was left as it was"
        );
        drop(release);
        threads.join_all(Instant::now() + Duration::from_secs(5));
    }
}
