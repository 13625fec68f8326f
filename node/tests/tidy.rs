//! Rules lints cannot see (STYLE.md item 18): no placeholder macros, debug
//! prints, ignored tests, sleeps or `unsafe` anywhere in this crate.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_forbidden_constructs() {
    // Built by concatenation so this file does not trip over itself.
    let forbidden = [
        concat!("to", "do!("),
        concat!("unimpl", "emented!("),
        concat!("db", "g!("),
        concat!("#[", "ignore"),
        concat!("thread::", "sleep"),
        concat!("unsafe", " {"),
        concat!("unsafe", " fn"),
    ];
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["src", "examples", "tests"] {
        if root.join(dir).is_dir() {
            rust_files(&root.join(dir), &mut files);
        }
    }
    assert!(!files.is_empty());
    let mut problems = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("readable source");
        for (line_number, line) in text.lines().enumerate() {
            for pattern in forbidden {
                if line.contains(pattern) {
                    problems.push(format!("{}:{}: {pattern}", file.display(), line_number + 1));
                }
            }
        }
    }
    assert!(problems.is_empty(), "forbidden constructs:\n{}", problems.join("\n"));
}
