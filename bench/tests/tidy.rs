//! Rules that compilers and clippy do not check (STYLE 18), over every `.rs`
//! file of the workspace: each `unsafe` block or impl has a `// SAFETY:`
//! comment just above it, each `unsafe fn` a `# Safety` doc section; no
//! `todo!`, `unimplemented!`, `dbg!` or ignored tests; no sleeping in tests
//! (poll with a deadline instead; a poll loop's interval is marked
//! `// poll interval`), nor anywhere in the clockless Raft core and simulation.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for de in std::fs::read_dir(dir).unwrap() {
        let path = de.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') {
                rust_files(&path, out);
            }
        } else if name.ends_with(".rs") && name != "tidy.rs" {
            // Tidy checkers name the tokens they forbid; they are skipped.
            out.push(path);
        }
    }
}

fn workspace_files() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    assert!(files.len() > 10, "found the workspace's sources under {}", root.display());
    files
}

/// Splits a source into code lines with string literals and comments kept,
/// skipping this file (which names the forbidden tokens).
fn problems(path: &Path, text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let test_from = lines.iter().position(|l| l.trim() == "#[cfg(test)]");
    let in_tests_dir = path.components().any(|c| c.as_os_str() == "tests");
    for (i, line) in lines.iter().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let at = format!("{}:{}", path.display(), i + 1);
        let window = &lines[i.saturating_sub(6)..=i];
        if (code.contains("unsafe {") || code.contains("unsafe impl")) && !window.iter().any(|l| l.contains("SAFETY")) {
            out.push(format!("{at}: unsafe without a `// SAFETY:` comment above it"));
        }
        if code.contains("unsafe fn") {
            let docs = &lines[i.saturating_sub(12)..i];
            if !docs.iter().any(|l| l.contains("# Safety")) {
                out.push(format!("{at}: unsafe fn without a `# Safety` doc section"));
            }
        }
        for bad in
            [concat!("todo", "!("), concat!("unimplemented", "!("), concat!("dbg", "!("), concat!("#[", "ignore")]
        {
            if code.contains(bad) {
                out.push(format!("{at}: {bad}"));
            }
        }
        // The Raft core and its simulation have no clock at all: time is ticks.
        let clockless = path.to_string_lossy().contains("/raft/src/");
        let is_test_code = in_tests_dir || clockless || test_from.is_some_and(|t| i > t);
        // The one sanctioned sleep: the interval of a poll-with-deadline loop, marked so.
        if is_test_code && code.contains(concat!("sleep", "(")) && !line.contains("// poll interval") {
            out.push(format!("{at}: sleep in a test: poll with a deadline instead"));
        }
    }
    out
}

#[test]
fn tidy() {
    let mut all = Vec::new();
    for f in workspace_files() {
        let text = std::fs::read_to_string(&f).unwrap();
        all.extend(problems(&f, &text));
    }
    assert!(all.is_empty(), "tidy found:\n{}", all.join("\n"));
}

#[test]
fn tidy_catches_what_it_claims_to() {
    // Assembled with concat! so that this file itself holds none of the forbidden tokens.
    let bad = concat!(
        "fn f() {\n    let x = unsafe { g() };\n    ",
        "todo",
        "!();\n}\n#[cfg(test)]\nmod t { fn s() { std::thread::",
        "sleep",
        "(d); } }\n"
    );
    let p = problems(Path::new("src/x.rs"), bad);
    assert_eq!(p.len(), 3, "{p:?}");
}
