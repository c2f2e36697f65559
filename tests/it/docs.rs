//! The documentation is checked like code, so that it stays complete and its links stay whole:
//! - every relative link in `README.md`, `CHANGELOG.md` and `docs/*.md` points at a file that
//!   exists, and a `#anchor` at a heading of that file (GitHub's heading ids);
//! - every flag of the flag table (`syncast::cli::FLAGS`, which `--help` is made from) is mentioned
//!   in `docs/operations.md`;
//! - every route of the router's table (`syncast::routes()`) is mentioned in `docs/protocol.md`;
//! - the README stays a short front page (new sections go into `docs/`).
//!
//! Each check names every offender at once, with its file and line.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// The README's length limit: a page a newcomer reads in five minutes.
const README_MAX_LINES: usize = 150;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The documentation's Markdown files: the README, the changelog and everything in `docs/`.
fn markdown_files() -> Vec<PathBuf> {
    let root = repo();
    let mut files = vec![root.join("README.md"), root.join("CHANGELOG.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("a docs/ folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

fn shown(path: &Path) -> String {
    path.strip_prefix(repo())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// `text` with fenced code blocks and inline code spans blanked out (line breaks kept, so line
/// numbers stay right): links and headings inside code are not links or headings.
fn without_code(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut fenced = false;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            fenced = !fenced;
            out.push('\n');
            continue;
        }
        if fenced {
            out.push('\n');
            continue;
        }
        out.push_str(&without_inline_code(line));
    }
    out
}

/// A line with its code spans (a run of N backticks up to the next run of exactly N) blanked.
fn without_inline_code(line: &str) -> String {
    let chars: Vec<char> = line.chars().collect();
    let run_at = |i: usize| chars[i..].iter().take_while(|c| **c == '`').count();
    let mut out = String::with_capacity(line.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '`' {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        let n = run_at(i);
        // Find the closing run of exactly n backticks.
        let mut j = i + n;
        let mut close = None;
        while j < chars.len() {
            if chars[j] == '`' {
                let m = run_at(j);
                if m == n {
                    close = Some(j);
                    break;
                }
                j += m;
            } else {
                j += 1;
            }
        }
        match close {
            Some(j) => {
                out.extend(std::iter::repeat_n(' ', j + n - i));
                i = j + n;
            }
            None => {
                // An unmatched run is literal text.
                out.extend(&chars[i..i + n]);
                i += n;
            }
        }
    }
    out
}

/// The targets of the links in `text` (code already blanked): `[text](target)`, `![alt](target)`
/// and reference definitions `[name]: target`, each with its line number.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    let line_of = |at: usize| text[..at].matches('\n').count() + 1;
    let mut from = 0;
    while let Some(at) = text[from..].find("](") {
        let start = from + at + 2;
        let mut depth = 0;
        let mut end = start;
        for (k, c) in text[start..].char_indices() {
            match c {
                '(' => depth += 1,
                ')' if depth == 0 => {
                    end = start + k;
                    break;
                }
                ')' => depth -= 1,
                '\n' => {
                    end = start + k;
                    break;
                }
                _ => {}
            }
            end = start + k + c.len_utf8();
        }
        let raw = text[start..end].trim();
        // An optional title after the target: `(path "title")`.
        let target = raw.split_whitespace().next().unwrap_or("");
        let target = target.trim_start_matches('<').trim_end_matches('>');
        found.push((line_of(start), target.to_string()));
        from = end.max(start);
    }
    for (n, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix('[') {
            if let Some((_, target)) = rest.split_once("]:") {
                if let Some(target) = target.split_whitespace().next() {
                    found.push((n + 1, target.to_string()));
                }
            }
        }
    }
    found
}

/// Whether a link target names a scheme (`https:`, `mailto:`): not a relative link.
fn has_scheme(target: &str) -> bool {
    match target.split_once(':') {
        Some((scheme, _)) => {
            !scheme.is_empty()
                && scheme
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '.' | '-'))
        }
        None => false,
    }
}

/// GitHub's id for a heading: lower case, everything but letters, digits, `-`, `_` and spaces
/// dropped, spaces made `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The ids of every heading of a Markdown text, repeated ones numbered as GitHub does
/// (`x`, `x-1`, `x-2`).
fn heading_ids(text: &str) -> HashSet<String> {
    let mut ids = HashSet::new();
    let mut fenced = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let title = line[hashes..].trim().trim_end_matches('#').trim();
        let base = slug(title);
        let mut id = base.clone();
        let mut n = 0;
        while ids.contains(&id) {
            n += 1;
            id = format!("{base}-{n}");
        }
        ids.insert(id);
    }
    ids
}

/// What is wrong with the relative links of one Markdown file.
fn broken_links(file: &Path) -> Vec<String> {
    let text = read(file);
    let dir = file.parent().expect("a file in a folder");
    let mut broken = Vec::new();
    for (line, target) in links(&without_code(&text)) {
        if target.is_empty() || has_scheme(&target) {
            continue;
        }
        let (path, anchor) = match target.split_once('#') {
            Some((p, a)) => (p, Some(a)),
            None => (target.as_str(), None),
        };
        let at = format!("{}:{line}: ({target})", shown(file));
        let resolved = if path.is_empty() {
            file.to_path_buf()
        } else {
            dir.join(path)
        };
        if !resolved.exists() {
            broken.push(format!("{at}: no such file {}", shown(&resolved)));
            continue;
        }
        if let Some(anchor) = anchor.filter(|a| !a.is_empty()) {
            if resolved.extension().is_some_and(|x| x == "md")
                && !heading_ids(&read(&resolved)).contains(anchor)
            {
                broken.push(format!(
                    "{at}: no heading with the id #{anchor} in {}",
                    shown(&resolved)
                ));
            }
        }
    }
    broken
}

/// Whether `text` mentions `word` as the start of a code span or a longer one (`` `word ``,
/// `` `word=…` ``, …): the next character must not continue the word.
fn mentions(text: &str, word: &str) -> bool {
    let needle = format!("`{word}");
    text.match_indices(&needle).any(|(at, _)| {
        text[at + needle.len()..]
            .chars()
            .next()
            .is_none_or(|c| !(c.is_alphanumeric() || matches!(c, '-' | '_' | '/')))
    })
}

/// The long flags: every entry of the flag table, plus `--help` and `--version`.
fn flags() -> Vec<String> {
    syncast::cli::FLAGS
        .iter()
        .map(|f| format!("--{}", f.name))
        .chain(["--help".to_string(), "--version".to_string()])
        .collect()
}

#[test]
fn relative_links_in_the_docs_point_at_files_and_headings_that_exist() {
    let files = markdown_files();
    let checked: usize = files
        .iter()
        .map(|f| links(&without_code(&read(f))).len())
        .sum();
    // The docs link into each other; finding none means the parser is broken, not the docs.
    assert!(
        checked >= 20,
        "only {checked} links found: the parser is broken"
    );
    let broken: Vec<String> = files.iter().flat_map(|f| broken_links(f)).collect();
    assert!(
        broken.is_empty(),
        "{} broken relative link(s):\n{}",
        broken.len(),
        broken.join("\n")
    );
}

#[test]
fn every_flag_is_documented_in_operations_md() {
    let flags = flags();
    assert!(
        flags.len() >= 20 && flags.contains(&"--listen".to_string()),
        "the flag table holds {flags:?}: too few"
    );
    let ops = read(&repo().join("docs/operations.md"));
    let missing: Vec<&String> = flags.iter().filter(|f| !mentions(&ops, f)).collect();
    assert!(
        missing.is_empty(),
        "flags of the flag table but not mentioned (as `--flag`) in docs/operations.md: {missing:?}"
    );
}

#[test]
fn every_route_of_the_router_is_documented_in_protocol_md() {
    let protocol = read(&repo().join("docs/protocol.md"));
    let routes = syncast::routes();
    assert!(
        routes.len() >= 10,
        "the router's table holds {routes:?}: too few"
    );
    let missing: Vec<String> = routes
        .iter()
        .map(|(method, path)| format!("{method} {path}"))
        .filter(|route| !mentions(&protocol, route))
        .collect();
    assert!(
        missing.is_empty(),
        "routes the router answers but docs/protocol.md does not mention (as `METHOD /path`): {missing:?}"
    );
}

/// The paths of this repository that `text` names in inline code (`` `src/...` ``,
/// `` `tests/...` ``, `` `scripts/...` ``, `` `contrib/...` ``, `` `docs/...` ``), with their line
/// numbers. A `src/` path on a line that names tiny_http (or glibc) may be that project's file,
/// and is left out; so are patterns (`{`, `*`) and a trailing `:line`.
fn code_paths(text: &str) -> Vec<(usize, String)> {
    const PREFIXES: [&str; 5] = ["src/", "tests/", "scripts/", "contrib/", "docs/"];
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let foreign = line.contains("tiny_http") || line.contains("glibc");
        for (i, span) in line.split('`').enumerate() {
            if i % 2 == 0 || !PREFIXES.iter().any(|p| span.starts_with(p)) {
                continue;
            }
            let path = span.split(':').next().unwrap_or(span);
            let plain = path
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c));
            if !plain || (foreign && path.starts_with("src/")) {
                continue;
            }
            found.push((n + 1, path.trim_end_matches('/').to_string()));
        }
    }
    found
}

#[test]
fn every_file_the_docs_name_exists() {
    let root = repo();
    let mut missing = Vec::new();
    // The changelog is left out: it names files as they were when each change was made.
    let files = markdown_files()
        .into_iter()
        .filter(|f| !f.ends_with("CHANGELOG.md"));
    for file in files {
        for (line, path) in code_paths(&read(&file)) {
            if !root.join(&path).exists() {
                missing.push(format!("{}:{line}: `{path}`", shown(&file)));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "the docs name files that do not exist (moved or renamed?):\n{}",
        missing.join("\n")
    );
}

#[test]
fn code_paths_are_read_from_inline_code_and_foreign_ones_left_out() {
    let text = "see `src/http/body.rs:70` and `tests/it/`\n\
                tiny_http's `src/client.rs`, but `tests/x.rs` there\n\
                `src/{a,b}.rs`, `cargo test`, src/not_code.rs";
    assert_eq!(
        code_paths(text),
        vec![
            (1, "src/http/body.rs".to_string()),
            (1, "tests/it".to_string()),
            (2, "tests/x.rs".to_string()),
        ]
    );
}

#[test]
fn the_readme_stays_short() {
    let lines = read(&repo().join("README.md")).lines().count();
    assert!(
        lines <= README_MAX_LINES,
        "README.md has {lines} lines (at most {README_MAX_LINES}): put the new section into the \
         matching file under docs/ and link to it"
    );
}

/// Issue 17: `make run` opens the chat's TCP port, and the README shows how to dial it.
#[test]
fn make_run_serves_chat_over_tcp_and_the_readme_shows_nc() {
    let makefile = read(&repo().join("Makefile"));
    let run: Vec<&str> = makefile
        .lines()
        .skip_while(|l| !l.starts_with("run:"))
        .skip(1)
        .take_while(|l| l.starts_with('\t'))
        .collect();
    assert!(
        run.iter().any(|l| l.contains("--chat-tcp $(CHAT_TCP)")),
        "make run passes --chat-tcp: {run:?}"
    );
    assert!(
        makefile.contains("CHAT_TCP ?= 127.0.0.1:7070"),
        "make run's --chat-tcp is 127.0.0.1:7070 unless CHAT_TCP= says otherwise"
    );
    let readme = read(&repo().join("README.md"));
    assert!(
        readme.contains("nc 127.0.0.1 7070"),
        "the README dials the chat with nc"
    );
    assert!(
        readme.contains("/chat/stream?name="),
        "and has the SSE side of the same conversation"
    );
}

#[test]
fn the_checker_reads_links_headings_and_mentions_as_github_does() {
    assert_eq!(slug("The web page at `/`"), "the-web-page-at-");
    assert_eq!(
        slug("tiny_http work-arounds, and why"),
        "tiny_http-work-arounds-and-why"
    );
    assert_eq!(
        slug("`make stress` on this 2-core machine"),
        "make-stress-on-this-2-core-machine"
    );
    let ids = heading_ids("# A\n\n## A\n```\n# not a heading\n```\n### B: c\n");
    assert_eq!(ids, HashSet::from(["a".into(), "a-1".into(), "b-c".into()]));
    let text = without_code(
        "[one](a.md) and `[not](b.md)` and\n```\n[not](c.md)\n```\n![pic](d.svg \"t\")\n[r]: e.md\n",
    );
    let targets: Vec<String> = links(&text).into_iter().map(|(_, t)| t).collect();
    assert_eq!(targets, ["a.md", "d.svg", "e.md"]);
    assert!(has_scheme("https://example.com") && !has_scheme("docs/a.md#x"));
    assert!(mentions("see `--tick DUR`", "--tick"));
    assert!(!mentions("see `--tick-rate`", "--tick"));
    assert!(mentions("| `GET /` | page |", "GET /"));
    assert!(!mentions("| `GET /healthz` |", "GET /"));
}

/// The test names of `docs/operations.md`'s "Which test covers each row" table, by file: each
/// backticked `path` (`tests/…`, `src/…`), then the backticked snake_case names and the quoted
/// titles (node tests) after it in the same cell.
fn coverage_table() -> Vec<(String, String)> {
    let ops = read(&repo().join("docs/operations.md"));
    let section = ops
        .split("### Which test covers each row")
        .nth(1)
        .expect("the coverage section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let mut named = Vec::new();
    for row in section
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| row"))
    {
        let Some(cell) = row.split(" | ").nth(1) else {
            continue;
        };
        let mut file: Option<String> = None;
        let mut rest = cell;
        while let Some(start) = rest.find(['`', '"']) {
            let quote = &rest[start..start + 1];
            let after = &rest[start + 1..];
            let Some(end) = after.find(quote) else { break };
            let token = &after[..end];
            rest = &after[end + 1..];
            if token.starts_with("tests/") || token.starts_with("src/") {
                file = Some(token.to_string());
            } else if let Some(f) = &file {
                let is_name = quote == "\""
                    || (token.matches('_').count() >= 2
                        && token.chars().all(|c| {
                            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == ':'
                        }));
                if is_name {
                    named.push((f.clone(), token.to_string()));
                }
            }
        }
    }
    named
}

/// Whether any Rust file under `src/` contains `text`.
fn in_src(text: &str) -> bool {
    fn walk(dir: &Path, text: &str) -> bool {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, text)
                } else {
                    p.extension().is_some_and(|x| x == "rs")
                        && std::fs::read_to_string(&p).is_ok_and(|t| t.contains(text))
                }
            })
    }
    walk(&repo().join("src"), text)
}

#[test]
fn every_test_named_in_the_coverage_table_exists() {
    let named = coverage_table();
    assert!(named.len() >= 40, "too few names read: {named:?}");
    let missing: Vec<String> = named
        .iter()
        .filter(|(file, name)| {
            let text = std::fs::read_to_string(repo().join(file)).unwrap_or_default();
            if file.ends_with(".mjs") {
                return !text.contains(&format!("test(\"{name}\""));
            }
            let last = name.rsplit("::").next().unwrap_or(name);
            let wanted = format!("fn {last}(");
            // A unit test named by its module path (`config::tests::…`) may sit in src/.
            let found = text.contains(&wanted) || (name.contains("::tests::") && in_src(&wanted));
            !found
        })
        .map(|(file, name)| format!("{file}: {name}"))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/operations.md names tests that do not exist: {missing:#?}"
    );
}
