//! Results as Markdown: printed to the terminal, and written into
//! `BENCHMARKS.md`, where each mode owns one section between two markers
//! (`<!-- lifeline-bench:push -->` … `<!-- /lifeline-bench:push -->`). A run
//! replaces its mode's section and leaves the rest of the file — the
//! hand-written explanations, the other modes' latest results — alone.

use std::{fmt::Write as _, path::Path};

/// A table with a header row.
#[derive(Clone, Debug, Default)]
pub(crate) struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub(crate) fn new(headers: &[&str]) -> Self {
        Self {
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (missing cells are left empty).
    pub(crate) fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    /// Markdown, with columns padded so it also reads well as plain text.
    pub(crate) fn markdown(&self) -> String {
        let n = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(n) {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let mut s = String::from("|");
            for (i, w) in widths.iter().enumerate() {
                let c = cells.get(i).map_or("", String::as_str);
                let pad = w - c.chars().count();
                let _ = write!(s, " {c}{} |", " ".repeat(pad));
            }
            s.push('\n');
            s
        };
        let mut out = line(&self.headers);
        out.push('|');
        for w in &widths {
            let _ = write!(out, " {} |", "-".repeat((*w).max(3)));
        }
        out.push('\n');
        for r in &self.rows {
            out.push_str(&line(r));
        }
        out
    }
}

/// One mode's results.
#[derive(Clone, Debug)]
pub(crate) struct Section {
    /// The mode (and its replicas, when not one each): names the
    /// section's markers.
    pub(crate) key: String,
    /// Its heading.
    pub(crate) title: String,
    /// Markdown: the tables and notes.
    pub(crate) body: String,
}

fn markers(key: &str) -> (String, String) {
    (
        format!("<!-- lifeline-bench:{key} -->"),
        format!("<!-- /lifeline-bench:{key} -->"),
    )
}

impl Section {
    /// The section with its markers, as it goes into the file.
    pub(crate) fn markdown(&self) -> String {
        let (start, end) = markers(&self.key);
        format!(
            "{start}\n## {}\n\n{}\n{end}\n",
            self.title,
            self.body.trim_end()
        )
    }
}

/// `doc` with the section `key` replaced by `content` (which carries its own
/// markers), or `content` appended when the section is not there yet.
pub(crate) fn replace_section(doc: &str, key: &str, content: &str) -> String {
    let (start, end) = markers(key);
    if let Some(s) = doc.find(&start)
        && let Some(e) = doc[s..].find(&end)
    {
        let mut after = s + e + end.len();
        if doc[after..].starts_with('\n') {
            after += 1;
        }
        return format!("{}{content}{}", &doc[..s], &doc[after..]);
    }
    let mut out = doc.to_owned();
    if !out.is_empty() && !out.ends_with("\n\n") {
        out.push_str(if out.ends_with('\n') { "\n" } else { "\n\n" });
    }
    out.push_str(content);
    out
}

/// What a new `BENCHMARKS.md` starts with.
const NEW_FILE: &str = "# Benchmarks\n\nWritten by `scripts/bench` (`lifeline-bench`).\n";

/// Writes `section` into the file at `path` (created if missing).
pub(crate) fn write_section(path: &Path, section: &Section) -> std::io::Result<()> {
    let doc = match std::fs::read_to_string(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => NEW_FILE.to_owned(),
        Err(e) => return Err(e),
    };
    let updated = replace_section(&doc, &section.key, &section.markdown());
    let tmp = path.with_extension("md.tmp");
    std::fs::write(&tmp, updated)?;
    std::fs::rename(&tmp, path)
}

/// `1234567` as `1,234,567`.
pub(crate) fn fmt_int(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A rate, rounded to a whole number with thousands separators.
pub(crate) fn fmt_rate(r: f64) -> String {
    fmt_int(r.max(0.0).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(key: &'static str, body: &str) -> Section {
        Section {
            key: key.into(),
            title: key.to_uppercase(),
            body: body.into(),
        }
    }

    #[test]
    fn sections_are_appended_then_replaced_in_place() {
        let doc = "# Benchmarks\n\nintro\n";
        let a1 = section("push", "first").markdown();
        let doc = replace_section(doc, "push", &a1);
        assert!(doc.starts_with(
            "# Benchmarks\n\nintro\n\n<!-- lifeline-bench:push -->\n## PUSH\n\nfirst\n"
        ));
        let b = section("burst", "b").markdown();
        let doc = replace_section(&doc, "burst", &b);
        let a2 = section("push", "second").markdown();
        let doc2 = replace_section(&doc, "push", &a2);
        assert!(!doc2.contains("first"));
        assert!(doc2.contains("second"));
        // Order kept, the other section untouched, nothing doubled.
        assert!(doc2.find("second").unwrap() < doc2.find("## BURST").unwrap());
        assert_eq!(doc2.matches("<!-- lifeline-bench:push -->").count(), 1);
        assert_eq!(doc2.len(), doc.len() + "second".len() - "first".len());
        assert!(doc2.ends_with("<!-- /lifeline-bench:burst -->\n"));
    }

    #[test]
    fn tables_are_padded_markdown() {
        let mut t = Table::new(&["what", "n"]);
        t.row(["pushes", "1,234"]);
        t.row(vec!["x".to_owned()]);
        assert_eq!(
            t.markdown(),
            "| what   | n     |\n| ------ | ----- |\n| pushes | 1,234 |\n| x      |       |\n"
        );
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(fmt_int(0), "0");
        assert_eq!(fmt_int(999), "999");
        assert_eq!(fmt_int(1000), "1,000");
        assert_eq!(fmt_int(1_234_567), "1,234,567");
        assert_eq!(fmt_rate(30_000.4), "30,000");
    }
}
