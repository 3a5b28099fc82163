//! Splits a multi-document YAML text into its documents, keeping each document's 1-based
//! index and its first line so that errors can point into the original file.
//!
//! A line starting with `---` (followed by nothing or whitespace) starts a document; a line
//! starting with `...` ends one. This is the YAML rule: both markers are only markers at
//! column 0, whatever surrounds them. Text before the first `---` is a document only when it
//! holds something other than blank lines, comments and directives.

/// One document of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Chunk {
    /// 1-based index, as the user counts documents.
    pub index: usize,
    /// 0-based line of the file on which the chunk's text starts.
    pub first_line: usize,
    pub text: String,
}

impl Chunk {
    /// True when the chunk holds only blank lines, comments and directives.
    pub fn is_blank(&self) -> bool {
        self.text.lines().all(|l| {
            let t = l.trim_start();
            t.is_empty() || t.starts_with('#') || l.starts_with('%')
        })
    }
}

fn is_marker(line: &str, marker: &str) -> bool {
    line.strip_prefix(marker)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r']))
}

/// Splits `text` into documents. Blank documents are returned too (callers skip them) so that
/// indices match what the user sees.
pub(crate) fn split(text: &str) -> Vec<Chunk> {
    let mut out = Vec::new();
    let mut explicit = false;
    let mut first_line = 0;
    let mut buf = String::new();
    let mut count = 0;
    let mut flush = |explicit: bool, first_line: usize, buf: &mut String, out: &mut Vec<Chunk>| {
        let chunk = Chunk {
            index: 0,
            first_line,
            text: std::mem::take(buf),
        };
        if explicit || !chunk.is_blank() {
            count += 1;
            out.push(Chunk {
                index: count,
                ..chunk
            });
        }
    };
    for (n, line) in text.split('\n').enumerate() {
        if is_marker(line, "---") {
            flush(explicit, first_line, &mut buf, &mut out);
            explicit = true;
            first_line = n;
            // Keep content after the marker (`--- {a: 1}`), blanking the marker itself so that
            // columns stay right.
            buf.push_str("   ");
            buf.push_str(&line[3..]);
            buf.push('\n');
        } else if is_marker(line, "...") {
            flush(explicit, first_line, &mut buf, &mut out);
            explicit = false;
            first_line = n + 1;
        } else if line.starts_with('%') {
            // A directive: only meaningful before `---`, and it would confuse a lone parse.
            buf.push('\n');
        } else {
            buf.push_str(line);
            buf.push('\n');
        }
    }
    flush(explicit, first_line, &mut buf, &mut out);
    out
}
