//! How a request's body is delimited (RFC 9112 §6), checked before routing: refuse every shape
//! request smuggling needs, whatever tiny_http would make of it.
//!
//! tiny_http 0.12.0 frames a body by the first `Transfer-Encoding` header of any value (it
//! decodes *every* value as chunked), else by the first `Content-Length` that parses as a
//! `usize` (`+5` does; `abc`, `-1`, `5, 5` do not, and then it reads no body at all, so the bytes
//! that follow are parsed as the next request), and it ignores later duplicates
//! (src/request.rs, `new_request`). A proxy in front that frames the same bytes differently
//! would then see a different request boundary than syncast. So [`check`] accepts only framing
//! that every reader agrees on, and everything else gets a 400 (413 for a length that does not
//! fit 64 bits) and a closed connection:
//!
//! | request | answer |
//! | --- | --- |
//! | `Transfer-Encoding` other than exactly `chunked` (case-insensitive): `gzip`, `chunked, gzip`, `gzip, chunked`, `identity`, empty | 400 |
//! | two or more `Transfer-Encoding` lines | 400 |
//! | `Transfer-Encoding` in an HTTP/1.0 request (RFC 9112 §6.1) | 400 |
//! | both `Transfer-Encoding` and `Content-Length` | 400 |
//! | a `Content-Length` that is not 1*DIGIT: `abc`, `-1`, `+5`, empty, `5 5`, `5, 5` | 400 |
//! | several `Content-Length` lines with different values | 400 |
//! | several `Content-Length` lines with the same value | accepted as one (RFC 9110 §8.6 allows it; tiny_http frames by the first, which equals the rest, so nobody can disagree) |
//! | a `Content-Length` of more than 20 digits' worth (over `u64::MAX`) | 413 |
//! | a body with `Connection: upgrade` (tiny_http then hands the raw connection over as the body, ignoring the length) | 400 |
//! | CR, LF or NUL inside any header value (RFC 9110 §5.5: reject or replace) | 400 |
//! | `CONNECT` | answered by the router, then the connection is closed (whatever follows is tunnel data, not a request) |
//!
//! A folded header line (obs-fold) cannot be refused here: tiny_http trims the leading white
//! space off every line before syncast sees it, so a fold reads as a header of its own.

/// The framing of an acceptable request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Framing {
    /// How the body is delimited.
    pub(crate) body: Body,
    /// The connection must be closed after the answer.
    pub(crate) close: bool,
}

/// How a body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Body {
    /// No `Content-Length`, no `Transfer-Encoding`: no body.
    None,
    /// `Content-Length: n`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// Why a request's framing is refused: the status and the `{"error": ...}` text. The connection
/// is always closed after the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// 400, or 413 for a length over `u64::MAX`.
    pub(crate) status: u16,
    /// The error text.
    pub(crate) message: &'static str,
}

const fn bad(message: &'static str) -> Refusal {
    Refusal {
        status: 400,
        message,
    }
}

/// Checks a request's framing from its method, version and header lines (names and values as
/// tiny_http passes them: values already trimmed of surrounding white space). Pure.
pub(crate) fn check<'a>(
    method: &str,
    http_1_0: bool,
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<Framing, Refusal> {
    let mut te_lines = 0usize;
    let mut te_chunked = false;
    let mut length: Option<u64> = None;
    let mut upgrade = false;
    let mut connection_seen = false;
    for (name, value) in headers {
        if value.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
            return Err(bad("a header value contains CR, LF or NUL"));
        }
        if name.eq_ignore_ascii_case("Transfer-Encoding") {
            te_lines += 1;
            te_chunked = value.eq_ignore_ascii_case("chunked");
        } else if name.eq_ignore_ascii_case("Content-Length") {
            let n = parse_length(value)?;
            if length.is_some_and(|m| m != n) {
                return Err(bad("conflicting Content-Length values"));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("Connection") && !connection_seen {
            // tiny_http looks at the first Connection line only (src/request.rs).
            connection_seen = true;
            upgrade = value.to_ascii_lowercase().contains("upgrade");
        }
    }
    let body = match (te_lines, length) {
        (0, None) => Body::None,
        (0, Some(n)) => Body::Length(n),
        (_, Some(_)) => return Err(bad("both Transfer-Encoding and Content-Length")),
        (1, None) if te_chunked && !http_1_0 => Body::Chunked,
        (1, None) if te_chunked => return Err(bad("Transfer-Encoding in an HTTP/1.0 request")),
        (1, None) => return Err(bad("unsupported Transfer-Encoding: only chunked")),
        (_, None) => return Err(bad("more than one Transfer-Encoding line")),
    };
    if upgrade && body != Body::None && body != Body::Length(0) {
        return Err(bad("a request body with Connection: upgrade"));
    }
    Ok(Framing {
        body,
        close: method == "CONNECT",
    })
}

/// `1*DIGIT` (RFC 9110 §8.6) as a number; a refusal for anything else, 413 past `u64::MAX`.
fn parse_length(value: &str) -> Result<u64, Refusal> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("invalid Content-Length: use digits only"));
    }
    value.bytes().try_fold(0u64, |n, d| {
        n.checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(d - b'0')))
            .ok_or(Refusal {
                status: 413,
                message: "request body too large (max 65536 bytes)",
            })
    })
}

/// [`check`] over a tiny_http request.
pub(crate) fn of_request(request: &tiny_http::Request) -> Result<Framing, Refusal> {
    check(
        request.method().as_str(),
        *request.http_version() == tiny_http::HTTPVersion(1, 0),
        request
            .headers()
            .iter()
            .map(|h| (h.field.as_str().as_str(), h.value.as_str())),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(headers: &[(&str, &str)]) -> Result<Framing, Refusal> {
        check("POST", false, headers.iter().copied())
    }

    fn body(headers: &[(&str, &str)]) -> Body {
        run(headers).expect("accepted").body
    }

    fn refused(headers: &[(&str, &str)]) -> u16 {
        run(headers).expect_err("refused").status
    }

    #[test]
    fn plain_framings_are_accepted() {
        assert_eq!(body(&[]), Body::None);
        assert_eq!(body(&[("Host", "x")]), Body::None);
        assert_eq!(body(&[("Content-Length", "0")]), Body::Length(0));
        assert_eq!(body(&[("content-length", "42")]), Body::Length(42));
        assert_eq!(body(&[("Content-Length", "007")]), Body::Length(7));
        assert_eq!(
            body(&[("Content-Length", "18446744073709551615")]),
            Body::Length(u64::MAX)
        );
        for te in ["chunked", "Chunked", "CHUNKED"] {
            assert_eq!(body(&[("Transfer-Encoding", te)]), Body::Chunked, "{te}");
        }
        assert_eq!(body(&[("transfer-encoding", "chunked")]), Body::Chunked);
        assert!(!run(&[("Content-Length", "3")]).unwrap().close);
    }

    #[test]
    fn every_transfer_encoding_but_chunked_is_refused() {
        for te in [
            "gzip",
            "chunked, gzip",
            "gzip, chunked",
            "chunked,chunked",
            "identity",
            "",
            "chunkedx",
            "x-chunked",
            "chunked;q=1",
            "deflate",
            "compress",
        ] {
            assert_eq!(refused(&[("Transfer-Encoding", te)]), 400, "{te:?}");
        }
        assert_eq!(
            refused(&[
                ("Transfer-Encoding", "chunked"),
                ("Transfer-Encoding", "chunked")
            ]),
            400
        );
        assert_eq!(
            refused(&[
                ("Transfer-Encoding", "gzip"),
                ("Transfer-Encoding", "chunked")
            ]),
            400
        );
        assert_eq!(
            refused(&[
                ("Transfer-Encoding", "chunked"),
                ("transfer-encoding", "gzip")
            ]),
            400
        );
    }

    #[test]
    fn transfer_encoding_in_http_1_0_is_refused() {
        let r = check("POST", true, [("Transfer-Encoding", "chunked")]);
        assert_eq!(r.unwrap_err().status, 400);
        assert_eq!(
            check("POST", true, [("Content-Length", "5")]).unwrap().body,
            Body::Length(5)
        );
    }

    #[test]
    fn transfer_encoding_with_content_length_is_refused_whatever_the_length() {
        for cl in ["5", "0", "abc", "", "-1"] {
            let both = [("Transfer-Encoding", "chunked"), ("Content-Length", cl)];
            assert_eq!(refused(&both), 400, "{cl:?}");
            let reversed = [("Content-Length", cl), ("Transfer-Encoding", "chunked")];
            assert_eq!(refused(&reversed), 400, "{cl:?}");
        }
    }

    #[test]
    fn a_content_length_that_is_not_all_digits_is_refused() {
        for cl in [
            "abc", "-1", "+5", "", " ", "5 5", "5, 5", "5,5", "0x10", "1e3", "5.0", "٣", "5\t",
            "\t5", "½", "-0",
        ] {
            assert_eq!(refused(&[("Content-Length", cl)]), 400, "{cl:?}");
        }
    }

    #[test]
    fn a_length_over_u64_is_too_large() {
        for cl in [
            "18446744073709551616",
            "99999999999999999999",
            "100000000000000000000000000000",
        ] {
            assert_eq!(refused(&[("Content-Length", cl)]), 413, "{cl}");
        }
    }

    #[test]
    fn repeated_content_lengths_must_agree() {
        assert_eq!(
            body(&[("Content-Length", "5"), ("Content-Length", "5")]),
            Body::Length(5)
        );
        assert_eq!(
            body(&[("Content-Length", "5"), ("content-length", "05")]),
            Body::Length(5)
        );
        assert_eq!(
            refused(&[("Content-Length", "5"), ("Content-Length", "3")]),
            400
        );
        assert_eq!(
            refused(&[
                ("Content-Length", "5"),
                ("Content-Length", "5"),
                ("Content-Length", "6")
            ]),
            400
        );
        // An invalid repeat is refused even when the first is fine.
        assert_eq!(
            refused(&[("Content-Length", "5"), ("Content-Length", "x")]),
            400
        );
    }

    #[test]
    fn cr_lf_and_nul_in_any_value_are_refused() {
        for v in ["a\rb", "a\nb", "a\0b", "\r", "x\r\nInjected: yes"] {
            assert_eq!(refused(&[("X-Anything", v)]), 400, "{v:?}");
            assert_eq!(refused(&[("Origin", v)]), 400, "{v:?}");
        }
        // Other controls and obs-text are left to the routes (RFC 9110 only requires these).
        assert_eq!(body(&[("X-Tab", "a\tb")]), Body::None);
    }

    #[test]
    fn a_body_with_connection_upgrade_is_refused() {
        let ws = [
            ("Connection", "keep-alive, Upgrade"),
            ("Upgrade", "websocket"),
        ];
        assert_eq!(body(&ws), Body::None);
        let with_length = [("Connection", "Upgrade"), ("Content-Length", "5")];
        assert_eq!(refused(&with_length), 400);
        let zero = [("Connection", "Upgrade"), ("Content-Length", "0")];
        assert_eq!(body(&zero), Body::Length(0));
        let chunked = [("Connection", "upgrade"), ("Transfer-Encoding", "chunked")];
        assert_eq!(refused(&chunked), 400);
        // Only the first Connection line counts, as in tiny_http.
        let second = [
            ("Connection", "keep-alive"),
            ("Connection", "upgrade"),
            ("Content-Length", "5"),
        ];
        assert_eq!(body(&second), Body::Length(5));
    }

    #[test]
    fn connect_closes_the_connection_after_the_answer() {
        let f = check("CONNECT", false, [("Host", "x:443")]).unwrap();
        assert!(f.close);
        assert!(!check("GET", false, [("Host", "x")]).unwrap().close);
        assert!(!check("PRI", false, []).unwrap().close);
    }

    /// Every combination of up to three lines drawn from a set of hostile and benign values:
    /// the verdict agrees with an independent statement of the rules.
    #[test]
    fn exhaustive_over_small_header_sets() {
        let lines: [(&str, &str); 14] = [
            ("Content-Length", "5"),
            ("Content-Length", "3"),
            ("Content-Length", "05"),
            ("Content-Length", "abc"),
            ("Content-Length", "+5"),
            ("Content-Length", ""),
            ("Transfer-Encoding", "chunked"),
            ("Transfer-Encoding", "CHUNKED"),
            ("Transfer-Encoding", "gzip"),
            ("Transfer-Encoding", "gzip, chunked"),
            ("Connection", "upgrade"),
            ("Connection", "close"),
            ("X-Bad", "a\rb"),
            ("Host", "x"),
        ];
        let n = lines.len();
        let mut cases = 0;
        for a in 0..=n {
            for b in 0..=n {
                for c in 0..=n {
                    let set: Vec<(&str, &str)> = [a, b, c]
                        .iter()
                        .filter(|&&i| i < n)
                        .map(|&i| lines[i])
                        .collect();
                    for http_1_0 in [false, true] {
                        let got = check("POST", http_1_0, set.iter().copied());
                        assert_eq!(
                            got.map_err(|e| e.status),
                            model(&set, http_1_0),
                            "{set:?} 1.0={http_1_0}"
                        );
                        cases += 1;
                    }
                }
            }
        }
        assert_eq!(cases, 2 * (n + 1).pow(3));
    }

    /// The rules restated independently of [`check`], for the exhaustive test.
    fn model(set: &[(&str, &str)], http_1_0: bool) -> Result<Framing, u16> {
        let get = |name: &str| -> Vec<&str> {
            set.iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| *v)
                .collect()
        };
        let r = Err;
        if set.iter().any(|(_, v)| v.contains(['\r', '\n', '\0'])) {
            return r(400);
        }
        let cls = get("Content-Length");
        let tes = get("Transfer-Encoding");
        if cls
            .iter()
            .any(|v| v.is_empty() || !v.chars().all(|c| c.is_ascii_digit()))
        {
            return r(400);
        }
        let values: Vec<u64> = cls.iter().map(|v| v.parse().unwrap()).collect();
        if values.windows(2).any(|w| w[0] != w[1]) {
            return r(400);
        }
        if !tes.is_empty() && !cls.is_empty() {
            return r(400);
        }
        if tes.len() > 1 || (tes.len() == 1 && !tes[0].eq_ignore_ascii_case("chunked")) {
            return r(400);
        }
        if tes.len() == 1 && http_1_0 {
            return r(400);
        }
        let body = match (tes.len(), values.first()) {
            (1, _) => Body::Chunked,
            (_, Some(&n)) => Body::Length(n),
            _ => Body::None,
        };
        let upgrade = get("Connection")
            .first()
            .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade"));
        if upgrade && !matches!(body, Body::None | Body::Length(0)) {
            return r(400);
        }
        Ok(Framing { body, close: false })
    }
}
