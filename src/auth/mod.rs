//! Authentication: who may stream, publish, chat and read the ops endpoints.
//!
//! Auth is on when a key is configured (`--jwt-secret-file` for HS256, `--jwt-public-key-file`
//! for RS256 or ES256). Then every guarded route asks [`Auth::check`] before anything else is
//! spent on the request (no stream slot, no thread): a missing or bad token is 401, a good one
//! that does not grant what the route needs is 403. Tokens are verified by `jsonwebtoken`, never
//! here: this module picks the key by the token's `alg` (only the configured algorithms have a
//! key, so `alg: none`, an HS256 token forged with the public key as its secret, or any other
//! algorithm are refused), and reads the claims ([`claims`]).
//!
//! - [`keys`]: reading and checking the key files (again on `SIGHUP`: [`Auth::reload`]);
//! - [`carrier`]: where a token comes from, and redacting it from logged targets;
//! - [`claims`]: what a verified token grants.

pub(crate) mod carrier;
pub(crate) mod claims;
pub(crate) mod keys;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use parking_lot::RwLock;
use tiny_http::Request;

use crate::config::Config;
use crate::http::response::{self, Reply};
use crate::metrics::Metrics;
pub(crate) use claims::Grant;
use keys::{Key, KeyError, KeyFile};

/// What a route needs from the token.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Need<'a> {
    /// Any valid token (the chat, whose names come from it).
    Valid,
    /// The right to stream this alarm id.
    Subscribe(&'a str),
    /// The right to read or write this alarm id in the store.
    Publish(&'a str),
    /// `syncast.admin: true`.
    Admin,
}

/// Why a token is not accepted (the text after `invalid token: `).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Invalid {
    /// Not three base64url parts with a JSON header naming a known algorithm.
    Malformed,
    /// Signed with an algorithm that has no key here (`none`, HS256 without a secret, ...).
    Algorithm,
    /// The signature does not verify with the key of its algorithm.
    Signature,
    /// `exp` is in the past (beyond the leeway).
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    NotYetValid,
    /// No `exp` claim.
    NoExpiry,
    /// `aud` is not `--jwt-audience` (or missing).
    Audience,
    /// `iss` is not `--jwt-issuer` (or missing).
    Issuer,
    /// A claim of the wrong type (`exp` not a number, `syncast.subscribe` not a list, ...).
    Claims,
}

impl Invalid {
    /// The stable word in log lines and error bodies.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Invalid::Malformed => "malformed",
            Invalid::Algorithm => "algorithm not accepted",
            Invalid::Signature => "bad signature",
            Invalid::Expired => "expired",
            Invalid::NotYetValid => "not yet valid",
            Invalid::NoExpiry => "no exp claim",
            Invalid::Audience => "wrong audience",
            Invalid::Issuer => "wrong issuer",
            Invalid::Claims => "bad claims",
        }
    }

    fn of(kind: &ErrorKind) -> Invalid {
        match kind {
            ErrorKind::InvalidSignature => Invalid::Signature,
            ErrorKind::ExpiredSignature => Invalid::Expired,
            ErrorKind::ImmatureSignature => Invalid::NotYetValid,
            ErrorKind::MissingRequiredClaim(c) if c == "exp" => Invalid::NoExpiry,
            ErrorKind::MissingRequiredClaim(c) if c == "aud" => Invalid::Audience,
            ErrorKind::MissingRequiredClaim(c) if c == "iss" => Invalid::Issuer,
            ErrorKind::InvalidAudience => Invalid::Audience,
            ErrorKind::InvalidIssuer => Invalid::Issuer,
            ErrorKind::InvalidAlgorithm
            | ErrorKind::InvalidAlgorithmName
            | ErrorKind::UnsupportedAlgorithm
            | ErrorKind::MissingAlgorithm
            | ErrorKind::InvalidKeyFormat => Invalid::Algorithm,
            // After the signature verified: the claims did not deserialize.
            ErrorKind::InvalidClaimFormat(_) | ErrorKind::Json(_) => Invalid::Claims,
            _ => Invalid::Malformed,
        }
    }
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Denied {
    /// No token in any carrier: 401.
    Missing,
    /// A token that is not accepted: 401 with `error="invalid_token"`.
    Invalid(Invalid),
    /// A valid token that does not grant this: 403. The text says what was missing.
    Forbidden {
        /// What the token lacks, for the error body.
        lacks: &'static str,
        /// The token's `sub`, for the log line.
        sub: Option<String>,
    },
}

impl Denied {
    /// The HTTP status.
    pub(crate) fn status(&self) -> u16 {
        match self {
            Denied::Forbidden { .. } => 403,
            _ => 401,
        }
    }

    /// The `error` of the JSON body.
    pub(crate) fn message(&self) -> String {
        match self {
            Denied::Missing => "missing token: send Authorization: Bearer TOKEN, the \
                                syncast_token cookie or ?access_token=TOKEN"
                .to_string(),
            Denied::Invalid(why) => format!("invalid token: {}", why.as_str()),
            Denied::Forbidden { lacks, .. } => format!("forbidden: {lacks}"),
        }
    }

    /// The `WWW-Authenticate` challenge (RFC 6750, 3): no error code when no token was sent,
    /// `invalid_token` for a bad one, `insufficient_scope` for one that lacks the right.
    fn challenge(&self) -> String {
        match self {
            Denied::Missing => "Bearer realm=\"syncast\"".to_string(),
            Denied::Invalid(why) => format!(
                "Bearer realm=\"syncast\", error=\"invalid_token\", error_description=\"{}\"",
                why.as_str()
            ),
            Denied::Forbidden { .. } => {
                "Bearer realm=\"syncast\", error=\"insufficient_scope\"".to_string()
            }
        }
    }

    /// The `reason=` of the log line.
    fn reason(&self) -> &'static str {
        match self {
            Denied::Missing => "missing",
            Denied::Invalid(why) => why.as_str(),
            Denied::Forbidden { .. } => "forbidden",
        }
    }
}

/// The reply to a refused request: 401 or 403 with `WWW-Authenticate` and `{"error": ...}`,
/// counted in `syncast_rejected_total` (`unauthorized` or `forbidden`) and logged (never with
/// the token: the path is logged without its query).
pub(crate) fn refusal(metrics: &Metrics, request: &Request, denied: &Denied) -> Reply {
    metrics.reject(if denied.status() == 403 {
        "forbidden"
    } else {
        "unauthorized"
    });
    let path = request.url().split('?').next().unwrap_or("");
    match denied {
        Denied::Forbidden { sub, .. } => log::info!(
            "auth refused status=403 reason=forbidden method={} path={path} sub={}",
            request.method(),
            sub.as_deref().unwrap_or("-")
        ),
        _ => log::info!(
            "auth refused status=401 reason=\"{}\" method={} path={path}",
            denied.reason(),
            request.method()
        ),
    }
    response::add_header(
        response::error(denied.status(), &denied.message()),
        "WWW-Authenticate",
        &denied.challenge(),
    )
}

/// The keys in use; replaced whole on reload.
#[derive(Debug, Default)]
struct Keys {
    secret: Option<Key>,
    public: Option<Key>,
}

impl Keys {
    /// The key for a token signed with `alg`, if that algorithm is configured.
    fn for_alg(&self, alg: Algorithm) -> Option<&Key> {
        [self.secret.as_ref(), self.public.as_ref()]
            .into_iter()
            .flatten()
            .find(|k| k.alg == alg)
    }
}

/// What a reload of the key files did, file by file (see [`Auth::reload`]).
#[derive(Debug, Default)]
pub struct KeyReload {
    /// Key files read and now in use.
    pub reloaded: Vec<String>,
    /// Key files that could not be used, with why; their old key stays in use.
    pub failed: Vec<String>,
}

/// The verifier: the key files, the rules every token must meet, and the keys in use.
pub(crate) struct Auth {
    secret_file: Option<PathBuf>,
    public_key_file: Option<PathBuf>,
    audience: Option<String>,
    issuer: Option<String>,
    leeway: Duration,
    keys: RwLock<Arc<Keys>>,
}

impl Auth {
    /// The verifier of `config`, its keys read now; off (every check passes) without a key file.
    pub(crate) fn new(config: &Config) -> Result<Auth, KeyError> {
        let auth = Auth {
            secret_file: config.jwt_secret_file.clone(),
            public_key_file: config.jwt_public_key_file.clone(),
            audience: config.jwt_audience.clone(),
            issuer: config.jwt_issuer.clone(),
            leeway: config.jwt_leeway,
            keys: RwLock::new(Arc::new(Keys::default())),
        };
        let keys = Keys {
            secret: auth.secret_file.as_deref().map(keys::secret).transpose()?,
            public: auth
                .public_key_file
                .as_deref()
                .map(keys::public_key)
                .transpose()?,
        };
        *auth.keys.write() = Arc::new(keys);
        Ok(auth)
    }

    /// Whether tokens are required (a key file is configured).
    pub(crate) fn on(&self) -> bool {
        self.secret_file.is_some() || self.public_key_file.is_some()
    }

    /// Reads the key files again. Each file is checked on its own: one that cannot be read or
    /// used keeps its old key (logged with why); one that can replaces it. Tokens being verified
    /// meanwhile use the old keys or the new ones, never a mix of a half-read file.
    pub(crate) fn reload(&self) -> KeyReload {
        let mut report = KeyReload::default();
        let old = self.keys.read().clone();
        let mut reload = |file: KeyFile, path: &Option<PathBuf>, old: &Option<Key>| {
            let path = path.as_deref()?;
            let shown = format!("{} {}", file.flag(), path.display());
            let loaded = match file {
                KeyFile::Secret => keys::secret(path),
                KeyFile::PublicKey => keys::public_key(path),
            };
            match loaded {
                Ok(key) => {
                    log::info!("key reloaded file={} alg={:?}", path.display(), key.alg);
                    report.reloaded.push(shown);
                    Some(key)
                }
                Err(e) => {
                    log::error!("key reload failed error=\"{e}\"; keeping the old key");
                    report.failed.push(format!("{e}"));
                    old.clone()
                }
            }
        };
        let keys = Keys {
            secret: reload(KeyFile::Secret, &self.secret_file, &old.secret),
            public: reload(KeyFile::PublicKey, &self.public_key_file, &old.public),
        };
        *self.keys.write() = Arc::new(keys);
        report
    }

    /// Verifies `token` and returns what it grants.
    pub(crate) fn verify(&self, token: &str) -> Result<Grant, Invalid> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Invalid::Malformed)?;
        let keys = self.keys.read().clone();
        let key = keys.for_alg(header.alg).ok_or(Invalid::Algorithm)?;
        let claims = jsonwebtoken::decode::<claims::Claims>(token, &key.key, &self.rules(key.alg))
            .map_err(|e| Invalid::of(e.kind()))?
            .claims;
        Ok(Grant::of(claims, self.leeway))
    }

    /// The rules for a token of `alg`: `exp` required, `nbf` checked when present, both with
    /// the leeway; `aud` and `iss` required and checked when configured.
    fn rules(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = self.leeway.as_secs();
        // RFC 7519, 4.1.4: valid only *before* exp. jsonwebtoken alone also accepts the second of
        // exp itself (`exp < now - leeway` is its test); with this it refuses `exp <= now -
        // leeway`, so a token is refused from the instant its stream is ended.
        v.reject_tokens_expiring_in_less_than = 1;
        v.validate_exp = true;
        v.validate_nbf = true;
        let mut required = vec!["exp"];
        match &self.audience {
            Some(aud) => {
                v.set_audience(&[aud]);
                required.push("aud");
            }
            // Without --jwt-audience an `aud` claim is not ours to judge.
            None => v.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
            required.push("iss");
        }
        v.set_required_spec_claims(&required);
        v
    }

    /// Decides a request that needs `need`: `Ok(None)` when auth is off, `Ok(Some(grant))` when
    /// the token allows it, else why not.
    pub(crate) fn check(
        &self,
        request: &Request,
        query: &[(String, String)],
        need: Need<'_>,
    ) -> Result<Option<Grant>, Denied> {
        if !self.on() {
            return Ok(None);
        }
        let token = carrier::token_of(request, query).ok_or(Denied::Missing)?;
        let grant = self.verify(&token).map_err(Denied::Invalid)?;
        let (allowed, lacks) = match need {
            Need::Valid => (true, ""),
            Need::Subscribe(id) => (
                grant.may_subscribe(id),
                "the token does not grant subscribe on this id",
            ),
            Need::Publish(id) => (
                grant.may_publish(id),
                "the token does not grant publish on this id",
            ),
            Need::Admin => (grant.is_admin(), "the token is not an admin token"),
        };
        if allowed {
            Ok(Some(grant))
        } else {
            Err(Denied::Forbidden {
                lacks,
                sub: grant.sub,
            })
        }
    }
}

#[cfg(test)]
mod tests;
