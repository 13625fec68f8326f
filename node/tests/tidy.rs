//! Rules lints cannot see (STYLE.md item 18):
//! * no placeholder macros, debug prints or ignored tests anywhere;
//! * every `unsafe` has a `SAFETY:` comment on its line or the three before;
//! * no sleeping in tests, nor anywhere in the Raft core and its simulation
//!   (they have no clock: time is `Event::Tick` and simulated milliseconds).

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

/// Files where sleeping is forbidden: tests, the core, the simulation.
fn must_not_sleep(root: &Path, file: &Path) -> bool {
    let relative = file.strip_prefix(root).unwrap_or(file);
    let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
    relative.starts_with("tests")
        || relative.starts_with("src/raft")
        || relative.starts_with("src/sim")
        || name == "tests.rs"
        || name.ends_with("_tests.rs")
}

#[test]
fn no_forbidden_constructs() {
    // Built by concatenation so this file does not trip over itself.
    let forbidden_everywhere =
        [concat!("to", "do!("), concat!("unimpl", "emented!("), concat!("db", "g!("), concat!("#[", "ignore")];
    let sleeps = [concat!("thread::", "sleep"), concat!("time::", "sleep")];
    let unsafe_uses = [concat!("unsafe", " {"), concat!("unsafe", " fn"), concat!("unsafe", " impl")];
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
        let lines: Vec<&str> = text.lines().collect();
        let no_sleep = must_not_sleep(root, file);
        for (k, line) in lines.iter().enumerate() {
            let at = format!("{}:{}", file.display(), k + 1);
            for pattern in forbidden_everywhere {
                if line.contains(pattern) {
                    problems.push(format!("{at}: {pattern}"));
                }
            }
            if no_sleep {
                for pattern in sleeps {
                    if line.contains(pattern) {
                        problems.push(format!("{at}: {pattern} (tests, core and simulation have no clock)"));
                    }
                }
            }
            if unsafe_uses.iter().any(|p| line.contains(p)) {
                let justified = lines[k.saturating_sub(3)..=k].iter().any(|l| l.contains("SAFETY:"));
                if !justified {
                    problems.push(format!("{at}: unsafe without a SAFETY: comment"));
                }
            }
        }
    }
    assert!(problems.is_empty(), "forbidden constructs:\n{}", problems.join("\n"));
}
