//! For the tests that need Redis: each starts its **own** `redis-server` (the kit's
//! [`RedisServer`]: a free loopback port, a temporary folder, no persistence, killed by its pid
//! when the guard drops, also on a panic) and syncast nodes on it, in this process
//! ([`node`]) or as real binaries ([`node_bin`]). Several nodes on one redis-server are several
//! calls with the same guard.
//!
//! Like the root-only tests, they are `#[ignore = "needs redis-server: …"]`: a plain `cargo
//! test` lists them as ignored, never as passed; `make unit` runs them (`-- --ignored`) when
//! `redis-server` is installed or under `CI=true` (where `make test-deps` installs it), and a
//! test that then finds no `redis-server` fails through [`need_redis`].

use std::net::SocketAddr;
use std::time::Duration;

pub use syncast::kit::redis_server::RedisServer;
use syncast::{AlarmStoreKind, Config};

use super::{listen_addr, syncast_bin, KillOnDrop, RunDir, TestServer};

/// A fresh redis-server for `test`, or the test fails saying why.
pub fn need_redis(test: &str) -> RedisServer {
    RedisServer::start().unwrap_or_else(|why| {
        panic!(
            "{test}: cannot run: {why}\n(a Redis test, run by `make test` where redis-server \
             is installed or under CI=true: see docs/testing.md#what-needs-redis)"
        )
    })
}

/// The time-out the nodes here use: short, so a frozen Redis answers quickly, and still far
/// above a loopback round trip.
pub const TIMEOUT: Duration = Duration::from_millis(500);

/// An in-process node on `redis` with its alarms there (`--alarm-store redis`, `--redis-timeout`
/// [`TIMEOUT`], the default prefix); `tweak` adjusts the rest.
pub fn node(redis: &RedisServer, tweak: impl FnOnce(&mut Config)) -> TestServer {
    let url = redis.url();
    super::start(move |c| {
        c.redis = Some(url);
        c.alarm_store = AlarmStoreKind::Redis;
        c.redis_timeout = TIMEOUT;
        tweak(c);
    })
}

/// A real `syncast` binary on `redis` (alarms there), with `extra` flags; the child (killed on
/// drop), its address and its folder (log file).
pub fn node_bin(redis: &RedisServer, extra: &[&str]) -> (KillOnDrop, SocketAddr, RunDir) {
    let run = RunDir::new("syncast-redis-node-");
    let mut cmd = syncast_bin();
    run.server_args(&mut cmd)
        .args(["--listen", "127.0.0.1:0", "--refresh", "50ms"])
        .args(["--redis", &redis.url(), "--alarm-store", "redis"])
        .args(["--redis-timeout", "500ms"])
        .args(extra);
    let mut child = cmd.spawn().expect("syncast starts");
    let addr = listen_addr(&mut child);
    (KillOnDrop(child), addr, run)
}

/// A client of `redis` that is not syncast: the redis crate (what `redis-cli` does, without
/// depending on redis-tools being installed).
pub fn outside(redis: &RedisServer) -> redis::Connection {
    let c = redis::Client::open(redis.url()).expect("url");
    let con = c
        .get_connection_with_timeout(Duration::from_secs(5))
        .expect("connect");
    con.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    con
}

/// `HSET key field value` from outside syncast: with `redis-cli` when it is installed (what
/// docs/operations.md tells users to run), else with the redis crate.
pub fn hset(redis: &RedisServer, key: &str, field: &str, value: &str) {
    let port = redis.addr().port().to_string();
    match std::process::Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port, "HSET", key, field, value])
        .stdin(std::process::Stdio::null())
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "redis-cli HSET failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(_) => {
            let _: i64 = redis::cmd("HSET")
                .arg(key)
                .arg(field)
                .arg(value)
                .query(&mut outside(redis))
                .expect("HSET");
        }
    }
}

/// `HGET key field` from outside syncast.
pub fn hget(redis: &RedisServer, key: &str, field: &str) -> Option<String> {
    redis::cmd("HGET")
        .arg(key)
        .arg(field)
        .query(&mut outside(redis))
        .expect("HGET")
}
