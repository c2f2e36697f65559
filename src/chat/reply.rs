//! What a client sees when the room refuses: each [`ChatError`] as a status code and a
//! `{"error": "..."}` reply, counted under its `syncast_rejected_total` reason.

use super::room::ChatError;
use crate::http::response::{self, bad_request, Reply};
use crate::metrics::Metrics;

/// The status code a room refusal maps to.
pub(crate) fn status_of(e: &ChatError) -> u16 {
    match e {
        ChatError::InvalidName | ChatError::InvalidText(_) => 400,
        ChatError::Unauthorized => 401,
        ChatError::NameTaken => 409,
        ChatError::RateLimited(_) => 429,
        ChatError::NotYourName => 403,
        ChatError::RoomFull | ChatError::Random(_) | ChatError::Unavailable(_) => 503,
    }
}

/// The reply for a room refusal, counted under its `syncast_rejected_total` reason.
pub(crate) fn error_reply(metrics: &Metrics, e: &ChatError) -> Reply {
    let status = status_of(e);
    let message = e.to_string();
    match e {
        ChatError::InvalidName | ChatError::InvalidText(_) => bad_request(metrics, &message),
        ChatError::Unauthorized => {
            metrics.reject("unauthorized");
            response::add_header(
                response::error(status, &message),
                "WWW-Authenticate",
                "Bearer",
            )
        }
        ChatError::NameTaken => {
            metrics.reject("name-taken");
            response::error(status, &message)
        }
        ChatError::RateLimited(wait) => {
            metrics.reject("rate-limited");
            // Retry-After is whole seconds; round up so a client that obeys it succeeds.
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            response::retry_later(status, secs.max(1), &message)
        }
        ChatError::RoomFull => {
            metrics.reject("room-full");
            response::retry_later(status, 1, &message)
        }
        ChatError::Random(_) => response::error(status, &message),
        ChatError::Unavailable(_) => {
            metrics.reject("chat-unavailable");
            response::retry_later(status, 1, &message)
        }
        ChatError::NotYourName => {
            metrics.reject("forbidden");
            response::error(status, &message)
        }
    }
}
