//! The page at `/` on a real server: served from memory as HTML, carries both panels with
//! labelled inputs, and needs nothing from any other host. Its behaviour in a real browser is
//! tested by `tests/e2e/` (`make e2e`).

use crate::common::start;

#[test]
fn the_page_is_served_as_html_with_both_panels() {
    let s = start(|_| {});
    let r = s.request("GET", "/", None);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Type"), Some("text/html; charset=utf-8"));
    for part in [
        "<!doctype html>",
        "name=\"viewport\"",
        "id=\"alarm-panel\"",
        "id=\"chat-panel\"",
        "/sse/call/",
        "?mode=change",
        "/chat/join",
        "/chat/stream?token=",
        "<label for=\"alarm-id\"",
        "<label for=\"chat-name\"",
        "<label for=\"chat-text\"",
        // The token field, for a server with auth on (shown on a 401), kept in the cookie.
        "id=\"token-panel\" aria-labelledby=\"token-title\" hidden",
        "<label for=\"token\"",
        "syncast_token=",
        "SameSite=Strict",
    ] {
        assert!(r.body.contains(part), "page lacks {part:?}");
    }
}

#[test]
fn the_page_loads_nothing_from_other_hosts() {
    let s = start(|_| {});
    let body = s.request("GET", "/", None).body.to_ascii_lowercase();
    for attr in ["src=", "href=", "url(", "@import"] {
        for quote in ["", "\"", "'"] {
            for scheme in ["http://", "https://", "//"] {
                let bad = format!("{attr}{quote}{scheme}");
                assert!(!body.contains(&bad), "page refers elsewhere: {bad:?}");
            }
        }
    }
    assert!(!body.contains("http://"), "page names an http:// URL");
    assert!(!body.contains("https://"), "page names an https:// URL");
}

#[test]
fn messages_are_put_on_the_page_as_text_never_as_html() {
    let s = start(|_| {});
    let body = s.request("GET", "/", None).body;
    assert!(body.contains(".textContent"));
    for sink in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
    ] {
        assert!(!body.contains(sink), "page uses {sink}");
    }
}

#[test]
fn only_get_is_allowed_on_the_page() {
    let s = start(|_| {});
    let r = s.request("POST", "/", Some(""));
    assert_eq!(r.status, 405);
    assert_eq!(r.header("Allow"), Some("GET"));
}
