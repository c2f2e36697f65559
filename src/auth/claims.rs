//! What a verified token grants: its claims as syncast reads them, and the id patterns of
//! `syncast.subscribe` / `syncast.publish`.
//!
//! ```json
//! {"sub": "42", "name": "alice", "exp": 1767225600,
//!  "syncast": {"subscribe": ["team-7-*"], "publish": ["42"], "admin": false}}
//! ```

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

/// The claims syncast reads; every other claim is ignored. `exp` is required (and checked by
/// `jsonwebtoken` before this is read).
#[derive(Debug, Deserialize)]
pub(crate) struct Claims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    name: Option<String>,
    /// Seconds since the epoch; a number (JSON may write it with a fraction). Optional here only
    /// so that a token without it is refused as such: `jsonwebtoken` requires it, after this
    /// struct is read.
    #[serde(default)]
    exp: Option<f64>,
    #[serde(default)]
    syncast: Rights,
}

/// The `syncast` claim.
#[derive(Debug, Default, Deserialize)]
struct Rights {
    #[serde(default)]
    subscribe: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    admin: bool,
}

/// A verified token: who it is for, what it allows, and until when.
#[derive(Debug, Clone)]
pub(crate) struct Grant {
    /// `sub`.
    pub(crate) sub: Option<String>,
    /// `name`.
    name: Option<String>,
    subscribe: Vec<String>,
    publish: Vec<String>,
    admin: bool,
    /// When the token stops being accepted: `exp` plus the leeway. A stream opened with it ends
    /// then.
    pub(crate) expires: Instant,
}

impl Grant {
    /// The grant of verified `claims`, accepted for `leeway` past their `exp`.
    pub(crate) fn of(claims: Claims, leeway: Duration) -> Grant {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let exp = claims.exp.unwrap_or(now);
        let left = (exp + leeway.as_secs_f64() - now).max(0.0);
        // Capped so that the addition cannot overflow (a token valid for centuries is one
        // valid for a year here: the stream is then simply never cut by it).
        let left = Duration::from_secs_f64(left.min(365.0 * 86_400.0));
        Grant {
            sub: claims.sub,
            name: claims.name,
            subscribe: claims.syncast.subscribe,
            publish: claims.syncast.publish,
            admin: claims.syncast.admin,
            expires: Instant::now() + left,
        }
    }

    /// Whether `GET /sse/call/{id}` is allowed: `sub` is the id, or a subscribe pattern matches.
    pub(crate) fn may_subscribe(&self, id: &str) -> bool {
        self.sub.as_deref() == Some(id) || any_matches(&self.subscribe, id)
    }

    /// Whether `PUT`/`DELETE`/`GET /alarms/{id}` is allowed: a publish pattern matches.
    pub(crate) fn may_publish(&self, id: &str) -> bool {
        any_matches(&self.publish, id)
    }

    /// Whether the ops endpoints are allowed (`syncast.admin: true`).
    pub(crate) fn is_admin(&self) -> bool {
        self.admin
    }

    /// The chat name this token speaks as: `name`, else `sub`.
    pub(crate) fn member_name(&self) -> Option<&str> {
        self.name.as_deref().or(self.sub.as_deref())
    }
}

/// Whether one of `patterns` matches `id`.
fn any_matches(patterns: &[String], id: &str) -> bool {
    patterns.iter().any(|p| pattern_matches(p, id))
}

/// A pattern is an id (matched exactly), `*` (every id), or a prefix followed by `*`
/// (`team-7-*`: every id that starts with `team-7-`). A `*` anywhere else is an ordinary
/// character, which no valid id contains.
pub(crate) fn pattern_matches(pattern: &str, id: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => id.starts_with(prefix),
        None => pattern == id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(json: &str) -> Grant {
        Grant::of(serde_json::from_str(json).unwrap(), Duration::ZERO)
    }

    #[test]
    fn patterns_are_exact_ids_a_star_or_a_prefix_and_star() {
        assert!(pattern_matches("42", "42"));
        assert!(!pattern_matches("42", "421"));
        assert!(!pattern_matches("42", "4"));
        assert!(pattern_matches("*", "anything"));
        assert!(pattern_matches("team-7-*", "team-7-"));
        assert!(pattern_matches("team-7-*", "team-7-alice"));
        assert!(!pattern_matches("team-7-*", "team-70"));
        assert!(!pattern_matches("team-7-*", "team-8-alice"));
        // A star inside is literal: no valid id has one.
        assert!(!pattern_matches("a*b", "axb"));
        assert!(!pattern_matches("", "x"));
    }

    #[test]
    fn subscribe_is_sub_or_a_pattern_publish_only_a_pattern() {
        let g = grant(
            r#"{"sub":"42","exp":4e9,"syncast":{"subscribe":["team-7-*"],"publish":["43"]}}"#,
        );
        assert!(g.may_subscribe("42"));
        assert!(g.may_subscribe("team-7-x"));
        assert!(!g.may_subscribe("43"));
        assert!(g.may_publish("43"));
        assert!(!g.may_publish("42"), "sub alone does not allow publishing");
        assert!(!g.is_admin());
        assert_eq!(g.member_name(), Some("42"));
        let g = grant(r#"{"name":"alice","sub":"u1","exp":4e9,"syncast":{"admin":true}}"#);
        assert!(g.is_admin());
        assert_eq!(g.member_name(), Some("alice"));
        assert!(!g.may_subscribe("u2") && !g.may_publish("u1"));
        let none = grant(r#"{"exp":4e9}"#);
        assert_eq!(none.member_name(), None);
        assert!(!none.may_subscribe("x"));
    }

    #[test]
    fn the_grant_expires_at_exp_plus_the_leeway() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims: Claims = serde_json::from_str(&format!(r#"{{"exp":{}}}"#, now + 100)).unwrap();
        let g = Grant::of(claims, Duration::from_secs(5));
        let left = g.expires.saturating_duration_since(Instant::now());
        assert!(
            left > Duration::from_secs(95) && left <= Duration::from_secs(106),
            "{left:?}"
        );
        let past: Claims = serde_json::from_str(&format!(r#"{{"exp":{}}}"#, now - 3)).unwrap();
        let g = Grant::of(past, Duration::from_secs(5));
        let left = g.expires.saturating_duration_since(Instant::now());
        assert!(
            left <= Duration::from_secs(3),
            "5 s of leeway less the 3 s gone: {left:?}"
        );
    }
}
