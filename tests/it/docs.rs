//! The documentation against the code: every flag of the flag table is documented.

use std::path::Path;

/// README.md and every Markdown file under docs/ (if that folder exists).
fn documentation() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut text = std::fs::read_to_string(root.join("README.md")).unwrap_or_default();
    let mut dirs = vec![root.join("docs")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                text.push_str(&std::fs::read_to_string(&path).unwrap_or_default());
            }
        }
    }
    text
}

#[test]
fn every_flag_is_documented() {
    let docs = documentation();
    let missing: Vec<String> = syncast::cli::FLAGS
        .iter()
        .map(|f| format!("--{}", f.name))
        .chain(["--help".to_string(), "--version".to_string()])
        .filter(|flag| !docs.contains(&format!("`{flag}")))
        .collect();
    assert!(
        missing.is_empty(),
        "flags missing from the docs: {missing:?}"
    );
}
