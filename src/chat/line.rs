//! The chat's text-line encoding: how a room event reads on a plain-TCP member's socket
//! (issue 17), beside its SSE encoding (`crate::http::sse`). The room's append path
//! (`room::state`, where an event gets its id) makes both, once per event.
//!
//! | event | lines |
//! | --- | --- |
//! | `message` `{"from":"alice","text":"hi"}` | `<alice> hi` (a text of several lines: `<alice> ` before each) |
//! | `presence` `{"joined":["bob"],"left":[{"name":"carol","reason":"left"}]}` | `* bob joined`, `* carol left` (`* carol left (timeout)` for an expired session) |
//! | `rename` `{"from":"bob","to":"bobby"}` | `* bob is now bobby` |
//!
//! Nothing a member posts can pass for a line of the server's: a line break in a text starts a
//! new line with the sender's `<name> ` again, and control characters (which a terminal would
//! obey: ESC sequences clear screens and move cursors) are shown instead: C0 controls and DEL in
//! caret notation (`^[`, `^?`, as `cat -v` does), C1 controls as U+FFFD. Tabs stay. Names
//! cannot hold either (`valid_name`).

use serde_json::Value;

/// The lines of one room event, each ending in `\n`; empty for a kind members are not shown.
pub(crate) fn render(kind: &str, data: &Value) -> Vec<u8> {
    let mut out = String::new();
    let text = |v: &Value, key: &str| v[key].as_str().unwrap_or("").to_string();
    match kind {
        "message" => {
            let from = text(data, "from");
            for line in split_lines(data["text"].as_str().unwrap_or("")) {
                out.push('<');
                out.push_str(&from);
                out.push_str("> ");
                shown(line, &mut out);
                out.push('\n');
            }
        }
        "presence" => {
            for name in data["joined"].as_array().into_iter().flatten() {
                out.push_str("* ");
                out.push_str(name.as_str().unwrap_or(""));
                out.push_str(" joined\n");
            }
            for left in data["left"].as_array().into_iter().flatten() {
                out.push_str("* ");
                out.push_str(&text(left, "name"));
                out.push_str(match left["reason"].as_str() {
                    Some("timeout") => " left (timeout)\n",
                    _ => " left\n",
                });
            }
        }
        "rename" => {
            out.push_str("* ");
            out.push_str(&text(data, "from"));
            out.push_str(" is now ");
            out.push_str(&text(data, "to"));
            out.push('\n');
        }
        _ => {}
    }
    out.into_bytes()
}

/// Appends `line` (no line breaks) to `out`, its control characters shown instead of obeyed.
pub(crate) fn shown(line: &str, out: &mut String) {
    for c in line.chars() {
        match c {
            '\t' => out.push(c),
            '\0'..='\x1f' => {
                out.push('^');
                out.push(char::from(c as u8 ^ 0x40));
            }
            '\x7f' => out.push_str("^?"),
            '\u{80}'..='\u{9f}' => out.push('\u{fffd}'),
            _ => out.push(c),
        }
    }
}

/// Splits on `\r\n`, `\n` or `\r`; an empty text is one empty line.
fn split_lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let t = rest?;
        match t.find(['\r', '\n']) {
            Some(i) => {
                let skip = if t[i..].starts_with("\r\n") { 2 } else { 1 };
                rest = Some(&t[i + skip..]);
                Some(&t[..i])
            }
            None => {
                rest = None;
                Some(t)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn text(kind: &str, data: Value) -> String {
        String::from_utf8(render(kind, &data)).unwrap()
    }

    #[test]
    fn each_event_kind_reads_as_the_protocol_says() {
        assert_eq!(
            text(
                "message",
                json!({"id": 3, "from": "alice", "text": "hi there", "ts": 1})
            ),
            "<alice> hi there\n"
        );
        assert_eq!(
            text(
                "presence",
                json!({"joined": ["bob", "dave"], "left": [{"name": "carol", "reason": "left"},
                    {"name": "eve", "reason": "timeout"}]})
            ),
            "* bob joined\n* dave joined\n* carol left\n* eve left (timeout)\n"
        );
        assert_eq!(
            text("rename", json!({"from": "bob", "to": "bobby"})),
            "* bob is now bobby\n"
        );
        assert_eq!(text("kick", json!({})), "", "not shown");
    }

    #[test]
    fn a_text_cannot_pass_for_a_line_of_the_servers_or_drive_the_terminal() {
        assert_eq!(
            text(
                "message",
                json!({"from": "m", "text": "a\n* bob left\r\nb\rc"})
            ),
            "<m> a\n<m> * bob left\n<m> b\n<m> c\n"
        );
        assert_eq!(
            text(
                "message",
                json!({"from": "m", "text": "\u{1b}[2J\u{7}\tx\u{7f}\u{9b}y"})
            ),
            "<m> ^[[2J^G\tx^?\u{fffd}y\n"
        );
        assert_eq!(text("message", json!({"from": "m", "text": ""})), "<m> \n");
    }
}
