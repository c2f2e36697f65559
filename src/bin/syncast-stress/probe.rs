//! Reads the server's own figures: `/debug/threads` (threads, RSS) and `/metrics` (open streams,
//! chat members).

use serde_json::Value;

use syncast::kit::http::{self, Target};
use syncast::kit::prom;

use crate::check::Snapshot;
use crate::shared::{Ctx, REQUEST_TIMEOUT};

/// Takes one snapshot of node `target` (two requests); `Err` says what could not be read.
pub fn snapshot(ctx: &Ctx, target: &Target) -> Result<Snapshot, String> {
    let mut s = threads(ctx, target, Snapshot::default())?;
    let metrics = String::from_utf8_lossy(&get(ctx, target, "/metrics")?).into_owned();
    s.streaming_clients = gauge(&metrics, "syncast_streaming_clients").unwrap_or(0);
    s.chat_members = gauge(&metrics, "syncast_chat_members").unwrap_or(0);
    Ok(s)
}

/// Reads only `/debug/threads` (one request); the `/metrics` figures are taken from `prev`.
pub fn threads(ctx: &Ctx, target: &Target, prev: Snapshot) -> Result<Snapshot, String> {
    let threads = get(ctx, target, "/debug/threads")?;
    let v: Value =
        serde_json::from_slice(&threads).map_err(|e| format!("/debug/threads: not JSON: {e}"))?;
    let num = |key: &str| {
        v[key]
            .as_u64()
            .ok_or_else(|| format!("/debug/threads: no number {key:?}"))
    };
    Ok(Snapshot {
        process_threads: num("process_threads")?,
        spawned_live: num("spawned_live")?,
        rss_bytes: num("process_rss_bytes")?,
        ..prev
    })
}

/// `GET path` of an ops endpoint (with an admin token when auth is on).
fn get(ctx: &Ctx, target: &Target, path: &str) -> Result<Vec<u8>, String> {
    let auth = ctx.admin_auth();
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    get_from(target, path, &headers)
}

fn get_from(target: &Target, path: &str, headers: &[(&str, &str)]) -> Result<Vec<u8>, String> {
    match http::request(target, "GET", path, headers, b"", REQUEST_TIMEOUT) {
        Ok(r) if r.status == 200 => Ok(r.body),
        Ok(r) => Err(format!("{path}: status {}", r.status)),
        Err(e) => Err(format!("{path}: {e}")),
    }
}

/// The value of an unlabelled sample `name` in Prometheus text.
pub fn gauge(text: &str, name: &str) -> Option<u64> {
    prom::sample(text, name).map(|v| v as u64)
}

/// Field-wise maximum.
pub fn max(a: Snapshot, b: Snapshot) -> Snapshot {
    Snapshot {
        process_threads: a.process_threads.max(b.process_threads),
        spawned_live: a.spawned_live.max(b.spawned_live),
        rss_bytes: a.rss_bytes.max(b.rss_bytes),
        streaming_clients: a.streaming_clients.max(b.streaming_clients),
        chat_members: a.chat_members.max(b.chat_members),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_unlabelled_gauges_only() {
        let text = "# HELP syncast_chat_members x\nsyncast_chat_members 3\n\
                    syncast_chat_members_total 9\nsyncast_streaming_clients 12\n";
        assert_eq!(gauge(text, "syncast_chat_members"), Some(3));
        assert_eq!(gauge(text, "syncast_streaming_clients"), Some(12));
        assert_eq!(gauge(text, "syncast_nope"), None);
    }
}
