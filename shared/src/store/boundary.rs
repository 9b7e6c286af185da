//! The store's boundary, checked on the source tree: outside the store
//! (`shared/src/store.rs` and `shared/src/store/`), no code of the services
//! (`services/*/src`) or of the shared crate (`shared/src`) speaks Redis —
//! no `redis::` path, command, pipeline, script or connection — nor builds
//! a Redis key ([`super::Keys`]); and no file of the store is longer than
//! [`MAX_LINES`], so each concern stays small enough to read whole.
//!
//! Test modules (`#[cfg(test)] mod …`, at the end of a file or in a file of
//! their own) may look at Redis directly and are not checked. Tests and
//! benchmarks outside these folders are not checked either.

use std::{
    fs,
    path::{Path, PathBuf},
};

/// Longest file of the store, in lines.
const MAX_LINES: usize = 500;

/// What only the store may write, and why each is refused elsewhere.
const FORBIDDEN: [(&str, &str); 9] = [
    ("redis::", "a path into the redis crate"),
    ("use redis", "an import of the redis crate"),
    ("Script::new", "a Redis script"),
    ("redis.call(", "a Lua script calling Redis"),
    ("EVALSHA", "a script call"),
    (".cmd(", "a Redis command"),
    ("AsyncCommands", "Redis commands"),
    ("ConnectionManager", "a Redis connection"),
    ("Keys", "a Redis key (store::Keys)"),
];

/// The workspace's root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the shared crate lies in the workspace")
        .to_owned()
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

/// The net count of `{` over `}` in a line of Rust, leaving out those in
/// comments, strings and character literals.
fn braces(line: &str, raw_hashes: &mut Option<usize>) -> i64 {
    let b = line.as_bytes();
    let (mut depth, mut i) = (0, 0);
    while i < b.len() {
        // Inside a raw string left open on an earlier line.
        if let Some(hashes) = *raw_hashes {
            let close = format!("\"{}", "#".repeat(hashes));
            match line[i..].find(&close) {
                Some(at) => {
                    i += at + close.len();
                    *raw_hashes = None;
                    continue;
                }
                None => return depth,
            }
        }
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => return depth,
            b'r' if matches!(b.get(i + 1), Some(b'"' | b'#'))
                && (i == 0 || !b[i - 1].is_ascii_alphanumeric()) =>
            {
                let hashes = b[i + 1..].iter().take_while(|&&c| c == b'#').count();
                if b.get(i + 1 + hashes) == Some(&b'"') {
                    *raw_hashes = Some(hashes);
                    i += 2 + hashes;
                    continue;
                }
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
            }
            // A character literal ('{', '\'', '\n'), not a lifetime ('a).
            b'\'' if b.get(i + 2) == Some(&b'\'') => i += 2,
            b'\'' if b.get(i + 1) == Some(&b'\\') => {
                i += 2;
                while i < b.len() && b[i] != b'\'' {
                    i += 1;
                }
            }
            b'{' => depth += 1,
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    depth
}

/// The lines of `source` outside its test modules (numbered from 1), and
/// the files of the test modules it declares (`#[cfg(test)] mod x;`).
fn code_lines(source: &str) -> (Vec<(usize, &str)>, Vec<String>) {
    let lines: Vec<&str> = source.lines().collect();
    let (mut code, mut test_files) = (Vec::new(), Vec::new());
    let mut i = 0;
    while i < lines.len() {
        let test_mod = lines[i].trim() == "#[cfg(test)]"
            && lines
                .get(i + 1)
                .is_some_and(|l| l.trim_start().starts_with("mod "));
        if !test_mod {
            code.push((i + 1, lines[i]));
            i += 1;
            continue;
        }
        let decl = lines[i + 1].trim();
        if let Some(name) = decl.strip_prefix("mod ").and_then(|d| d.strip_suffix(';')) {
            test_files.push(name.trim().to_owned());
            i += 2;
            continue;
        }
        // Skip the module's block.
        let (mut depth, mut raw) = (0, None);
        i += 1;
        loop {
            depth += braces(lines[i], &mut raw);
            i += 1;
            if depth <= 0 || i == lines.len() {
                break;
            }
        }
    }
    (code, test_files)
}

/// The key builders of the store (`pub fn` of its `impl Keys` blocks).
fn key_builders(store_files: &[PathBuf]) -> Vec<String> {
    let mut names = Vec::new();
    for path in store_files {
        let source = fs::read_to_string(path).expect("source file");
        let mut in_keys = false;
        for line in source.lines() {
            if line == "impl Keys {" {
                in_keys = true;
            } else if line == "}" {
                in_keys = false;
            } else if let Some(rest) = line.trim().strip_prefix("pub fn ")
                && in_keys
            {
                let name = rest.split('(').next().unwrap_or_default();
                names.push(name.to_owned());
            }
        }
    }
    names
}

/// Where `source` does what only the store may do; `builders` are the
/// store's key builders.
fn violations(source: &str, builders: &[String]) -> Vec<String> {
    let (code, _) = code_lines(source);
    let mut found = Vec::new();
    for (n, line) in code {
        let text = line.trim();
        if text.starts_with("//") {
            continue;
        }
        let mut hits: Vec<(String, &str)> = FORBIDDEN
            .iter()
            .filter(|(pattern, _)| match *pattern {
                // The type, not a word that contains it.
                "Keys" => text
                    .split(|c: char| !c.is_alphanumeric() && c != '_')
                    .any(|w| w == "Keys"),
                _ => text.contains(pattern),
            })
            .map(|&(pattern, what)| (pattern.to_owned(), what))
            .collect();
        hits.extend(
            builders
                .iter()
                .map(|b| format!(".keys().{b}("))
                .filter(|call| text.contains(call.as_str()))
                .map(|call| (call, "a Redis key (store::Keys)")),
        );
        for (pattern, what) in hits {
            found.push(format!("line {n}: {what} (`{pattern}`): {text}"));
        }
    }
    found
}

/// The store's files: `shared/src/store.rs` and all under `shared/src/store/`.
fn store_files(root: &Path) -> Vec<PathBuf> {
    let mut files = vec![root.join("shared/src/store.rs")];
    rust_files(&root.join("shared/src/store"), &mut files);
    files
}

#[test]
fn nothing_outside_the_store_speaks_redis() {
    let root = root();
    let mut files = Vec::new();
    for entry in fs::read_dir(root.join("services")).expect("services/") {
        let src = entry.expect("services entry").path().join("src");
        if src.is_dir() {
            rust_files(&src, &mut files);
        }
    }
    let store_dir = root.join("shared/src/store");
    let mut shared = Vec::new();
    rust_files(&root.join("shared/src"), &mut shared);
    files.extend(
        shared
            .into_iter()
            .filter(|p| !p.starts_with(&store_dir) && !p.ends_with("shared/src/store.rs")),
    );
    assert!(files.len() > 20, "too few files found: {files:?}");

    let builders = key_builders(&store_files(&root));
    assert!(
        builders.len() > 15,
        "too few key builders found: {builders:?}"
    );
    let mut test_files: Vec<PathBuf> = Vec::new();
    let mut report = Vec::new();
    for path in &files {
        let source = fs::read_to_string(path).expect("source file");
        let (_, tests) = code_lines(&source);
        // `mod x;` in `a.rs` or `a/mod.rs` lives in `a/x.rs`.
        let dir = match path.file_stem().and_then(|s| s.to_str()) {
            Some("mod" | "lib" | "main") => path.parent().expect("parent").to_owned(),
            _ => path.with_extension(""),
        };
        test_files.extend(tests.iter().map(|t| dir.join(format!("{t}.rs"))));
        if test_files.contains(path) {
            continue;
        }
        for v in violations(&source, &builders) {
            report.push(format!(
                "{}: {v}",
                path.strip_prefix(&root).unwrap_or(path).display()
            ));
        }
    }
    assert!(
        report.is_empty(),
        "Redis spoken outside the store (shared/src/store*); move it into the store \
         module that owns those keys:\n{}",
        report.join("\n")
    );
}

#[test]
fn no_file_of_the_store_is_long() {
    let files = store_files(&root());
    assert!(files.len() > 10, "too few files found: {files:?}");
    let long: Vec<String> = files
        .iter()
        .filter_map(|path| {
            let n = fs::read_to_string(path)
                .expect("source file")
                .lines()
                .count();
            (n > MAX_LINES).then(|| format!("{}: {n} lines", path.display()))
        })
        .collect();
    assert!(
        long.is_empty(),
        "store files over {MAX_LINES} lines; split them by concern:\n{}",
        long.join("\n")
    );
}

#[test]
fn the_check_finds_redis_in_code_and_not_in_tests() {
    let source = r#"
use lifeline_shared::store::Store;

async fn f(store: &Store) {
    let _ = redis::cmd("GET");
    let key = store.keys().token("x");
    pipe.cmd("HLEN");
    let ids = map.keys().next();
}

#[cfg(test)]
mod tests {
    use redis::AsyncCommands;

    fn g() {
        let c = '}';
        let s = r"}}";
        let t = "}\"}";
        redis::cmd("DEL");
    }
}
"#;
    let found = violations(source, &["token".to_owned()]);
    assert_eq!(found.len(), 3, "{found:#?}");
    assert!(found[0].starts_with("line 5: a path into the redis crate"));
    assert!(found[1].starts_with("line 6: a Redis key"));
    assert!(found[2].starts_with("line 7: a Redis command"));
}

#[test]
fn the_key_builders_are_found() {
    let builders = key_builders(&store_files(&root()));
    for b in [
        "monitor",
        "deadlines",
        "outbox",
        "token",
        "push_rate",
        "watermark",
    ] {
        assert!(builders.iter().any(|n| n == b), "{b} not in {builders:?}");
    }
}
