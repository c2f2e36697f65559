//! What the unit tests share.

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};

/// Property tests run 512 cases unless `PROPTEST_CASES` is set, which then wins (proptest's
/// default reads it), so they stay a few seconds long; `PROPTEST_CASES=100000` searches longer.
/// A failure is saved beside the test's source file (`<file>.proptest-regressions`) and
/// replayed first on the next run; proptest's default would put it in a new top-level folder.
pub(crate) fn proptest_config() -> Config {
    let mut config = Config {
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..Config::default()
    };
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = 512;
    }
    config
}

/// Text rich in what is hard for SSE: every kind of line break, NUL, colons, spaces, BOMs,
/// field-like prefixes and arbitrary Unicode.
pub(crate) fn tricky_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => prop::collection::vec(any::<char>(), 0..6).prop_map(String::from_iter),
        1 => Just("\n".to_string()),
        1 => Just("\r".to_string()),
        1 => Just("\r\n".to_string()),
        1 => Just("\n\n".to_string()),
        1 => Just("\r\r\n\n".to_string()),
        1 => Just("\0".to_string()),
        1 => Just(":".to_string()),
        1 => Just(" ".to_string()),
        1 => Just("\u{FEFF}".to_string()),
        1 => Just("data: x".to_string()),
        1 => Just("id: 9".to_string()),
        1 => Just("é日".to_string()),
    ];
    prop::collection::vec(piece, 0..16).prop_map(|pieces| pieces.concat())
}

/// Any text: plain `String`s and the tricky ones above.
pub(crate) fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), tricky_text()]
}
