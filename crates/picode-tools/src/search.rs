//! The `grep` tool, built on ripgrep's own crates so that matching, binary
//! detection and ignore rules behave like `rg`.

use std::path::PathBuf;

use grep_regex::RegexMatcherBuilder;
use grep_searcher::{sinks, BinaryDetection, SearcherBuilder};
use serde_json::Value;

use crate::args::{optional_bool, optional_str, required_str};
use crate::fs_tools::{walk_files, FileGlob};
use crate::paths::ProjectRoot;
use crate::{ToolError, ToolOutput};

/// Matches returned by one call; past this the model should narrow the search.
const MAX_MATCHES: usize = 200;
/// Matched lines are cut to this many characters.
const MAX_LINE_CHARS: usize = 300;

/// `grep`: `path:line:text` for every matching line, capped.
pub(crate) async fn grep(root: &ProjectRoot, args: &Value) -> Result<ToolOutput, ToolError> {
    const TOOL: &str = "grep";
    let pattern = required_str(TOOL, args, "pattern")?;
    let case_insensitive = optional_bool(TOOL, args, "case_insensitive")?;
    let matcher = RegexMatcherBuilder::new()
        .case_insensitive(case_insensitive)
        .line_terminator(Some(b'\n'))
        .build(pattern)
        .map_err(|e| ToolError::args(TOOL, format!("invalid regex: {e}")))?;
    let glob = optional_str(TOOL, args, "glob")?
        .filter(|g| !g.is_empty())
        .map(|g| FileGlob::new(TOOL, g))
        .transpose()?;
    let base = root.resolve(optional_str(TOOL, args, "path")?.unwrap_or("."))?;
    if !base.exists() {
        return Err(ToolError::Invalid(format!(
            "{} does not exist",
            root.display(&base)
        )));
    }

    let root = root.clone();
    let (lines, capped) = tokio::task::spawn_blocking(move || {
        let files: Vec<PathBuf> = if base.is_file() {
            vec![base]
        } else {
            walk_files(&root, &base, glob.as_ref())
        };
        search_files(&root, &files, &matcher)
    })
    .await
    .map_err(|e| ToolError::Invalid(format!("search failed: {e}")))?;

    if lines.is_empty() {
        return Ok(ToolOutput::ok("No matches found."));
    }
    let mut out = lines.join("\n");
    if capped {
        out.push_str(&format!(
            "\n[stopped after {MAX_MATCHES} matches; narrow the pattern, path or glob]"
        ));
    }
    Ok(ToolOutput::ok(out))
}

fn search_files(
    root: &ProjectRoot,
    files: &[PathBuf],
    matcher: &grep_regex::RegexMatcher,
) -> (Vec<String>, bool) {
    let mut searcher = SearcherBuilder::new()
        .binary_detection(BinaryDetection::quit(0))
        .line_number(true)
        .build();
    let mut lines = Vec::new();
    for file in files {
        let shown = root.display(file);
        // Files that vanish or cannot be read mid-search are skipped, as rg does.
        let _ = searcher.search_path(
            matcher,
            file,
            sinks::Lossy(|line_number, text| {
                lines.push(format_line(&shown, line_number, text));
                Ok(lines.len() < MAX_MATCHES)
            }),
        );
        if lines.len() >= MAX_MATCHES {
            return (lines, true);
        }
    }
    (lines, false)
}

fn format_line(shown: &str, line_number: u64, text: &str) -> String {
    let text = text.trim_end_matches(['\n', '\r']);
    let text = match text.char_indices().nth(MAX_LINE_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    };
    format!("{shown}:{line_number}:{text}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_trimmed_and_cut() {
        assert_eq!(format_line("a.rs", 3, "fn x()\r\n"), "a.rs:3:fn x()");
        let long = "x".repeat(MAX_LINE_CHARS + 10);
        assert!(format_line("a", 1, &long).ends_with('…'));
    }
}
