//! The file tools: `read_file`, `write_file`, `edit_file` and `list_files`.
//!
//! Writes are split into *prepare* (validate, compute the new content and
//! its diff) and *apply* (touch the disk), so the user can approve the exact
//! diff and a refusal leaves the file as it was.

use std::path::{Path, PathBuf};

use globset::{GlobBuilder, GlobMatcher};
use serde_json::Value;

use crate::args::{optional_str, optional_u64, required_str};
use crate::paths::ProjectRoot;
use crate::{ToolError, ToolOutput};

/// Lines returned by one `read_file` call when the model gives no limit.
const DEFAULT_READ_LINES: usize = 2000;
/// Very long lines (minified code, data) are cut so one line cannot fill the context.
const MAX_LINE_CHARS: usize = 2000;
/// Files listed by one `list_files` call.
const MAX_LISTED_FILES: usize = 1000;

/// `read_file`: line-numbered text, optionally a range of lines.
pub(crate) fn read_file(root: &ProjectRoot, args: &Value) -> Result<ToolOutput, ToolError> {
    const TOOL: &str = "read_file";
    let input = required_str(TOOL, args, "path")?;
    let path = root.resolve(input)?;
    let shown = root.display(&path);
    let offset = optional_u64(TOOL, args, "offset")?.unwrap_or(1).max(1) as usize;
    let limit = optional_u64(TOOL, args, "limit")?
        .map(|l| l as usize)
        .unwrap_or(DEFAULT_READ_LINES)
        .max(1);

    if path.is_dir() {
        return Err(ToolError::Invalid(format!(
            "{shown} is a directory; use list_files to see its contents"
        )));
    }
    let bytes = std::fs::read(&path).map_err(|e| ToolError::io(&shown, e))?;
    if looks_binary(&bytes) {
        return Err(ToolError::Invalid(format!(
            "{shown} looks like a binary file ({} bytes); it cannot be shown as text",
            bytes.len()
        )));
    }
    let text = String::from_utf8_lossy(&bytes);
    if text.is_empty() {
        return Ok(ToolOutput::ok(format!("({shown} is empty)")));
    }
    let total = text.lines().count();
    if offset > total {
        return Err(ToolError::Invalid(format!(
            "offset {offset} is past the end of {shown}, which has {total} lines"
        )));
    }
    let mut out = String::new();
    let mut last = offset;
    for (index, line) in text.lines().enumerate().skip(offset - 1).take(limit) {
        last = index + 1;
        let line = match line.char_indices().nth(MAX_LINE_CHARS) {
            Some((cut, _)) => format!("{} [line truncated]", &line[..cut]),
            None => line.to_owned(),
        };
        out.push_str(&format!("{:>6}\t{line}\n", index + 1));
    }
    if offset > 1 || last < total {
        out.push_str(&format!(
            "\n(showing lines {offset}-{last} of {total}; use offset and limit to read more)\n"
        ));
    }
    Ok(ToolOutput::ok(out))
}

/// A validated change to one file, not yet written.
#[derive(Debug)]
pub(crate) struct PreparedEdit {
    path: PathBuf,
    /// The path as shown to the model and the user.
    pub(crate) display: String,
    created: bool,
    new_content: String,
    pub(crate) diff: String,
    /// Whether the model should see the diff (edits) or just a summary (writes).
    echo_diff: bool,
}

impl PreparedEdit {
    /// The word for the approval prompt.
    pub(crate) fn verb(&self) -> &'static str {
        if self.created {
            "create"
        } else {
            "edit"
        }
    }

    /// Writes the new content, creating parent directories as needed.
    pub(crate) fn apply(self) -> Result<ToolOutput, ToolError> {
        if let Some(parent) = self.path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| ToolError::io(&self.display, e))?;
        }
        std::fs::write(&self.path, &self.new_content)
            .map_err(|e| ToolError::io(&self.display, e))?;
        let lines = self.new_content.lines().count();
        let mut content = if self.created {
            format!("Created {} ({lines} lines).", self.display)
        } else {
            format!("Updated {} ({lines} lines).", self.display)
        };
        if self.echo_diff {
            content.push_str("\n\n");
            content.push_str(&self.diff);
        }
        Ok(ToolOutput {
            content,
            is_error: false,
            diff: Some(self.diff),
        })
    }
}

/// `write_file`: replace (or create) a whole file.
pub(crate) fn prepare_write(root: &ProjectRoot, args: &Value) -> Result<PreparedEdit, ToolError> {
    const TOOL: &str = "write_file";
    let input = required_str(TOOL, args, "path")?;
    let new_content = required_str(TOOL, args, "content")?.to_owned();
    let path = root.resolve(input)?;
    let display = root.display(&path);
    if path.is_dir() {
        return Err(ToolError::Invalid(format!("{display} is a directory")));
    }
    let old = read_existing(&path, &display)?;
    let diff = unified_diff(&display, old.as_deref().unwrap_or(""), &new_content);
    Ok(PreparedEdit {
        created: old.is_none(),
        path,
        display,
        new_content,
        diff,
        echo_diff: false,
    })
}

/// `edit_file`: replace exactly one occurrence of `old_string`.
pub(crate) fn prepare_edit(root: &ProjectRoot, args: &Value) -> Result<PreparedEdit, ToolError> {
    const TOOL: &str = "edit_file";
    let input = required_str(TOOL, args, "path")?;
    let old_string = required_str(TOOL, args, "old_string")?;
    let new_string = required_str(TOOL, args, "new_string")?;
    if old_string.is_empty() {
        return Err(ToolError::args(
            TOOL,
            "old_string must not be empty; use write_file to create a file",
        ));
    }
    if old_string == new_string {
        return Err(ToolError::args(
            TOOL,
            "old_string and new_string are identical",
        ));
    }
    let path = root.resolve(input)?;
    let display = root.display(&path);
    let Some(old) = read_existing(&path, &display)? else {
        return Err(ToolError::Invalid(format!(
            "{display} does not exist; use write_file to create it"
        )));
    };

    // Models write "\n" even when the file uses "\r\n"; match in the file's
    // own line endings rather than failing on an invisible difference.
    let crlf = |s: &str| s.replace("\r\n", "\n").replace('\n', "\r\n");
    let (search, replace) = if count_matches(&old, old_string) == 0 && old.contains("\r\n") {
        (crlf(old_string), crlf(new_string))
    } else {
        (old_string.to_owned(), new_string.to_owned())
    };
    match count_matches(&old, &search) {
        0 => return Err(ToolError::NoMatch { path: display }),
        1 => {}
        count => {
            return Err(ToolError::AmbiguousMatch {
                path: display,
                count,
            })
        }
    }
    let new_content = old.replacen(&search, &replace, 1);
    let diff = unified_diff(&display, &old, &new_content);
    Ok(PreparedEdit {
        path,
        display,
        created: false,
        new_content,
        diff,
        echo_diff: true,
    })
}

/// Counts occurrences including overlapping ones: "aa" occurs twice in
/// "aaa", and a replacement there would be ambiguous.
fn count_matches(haystack: &str, needle: &str) -> usize {
    let mut count = 0;
    let mut from = 0;
    while let Some(at) = haystack[from..].find(needle) {
        count += 1;
        let start = from + at;
        // Step past the first char of this match to find overlapping ones.
        from = start + haystack[start..].chars().next().map_or(1, char::len_utf8);
    }
    count
}

/// The current text of a file, `None` if it does not exist.
fn read_existing(path: &Path, display: &str) -> Result<Option<String>, ToolError> {
    match std::fs::read(path) {
        Ok(bytes) if looks_binary(&bytes) => Err(ToolError::Invalid(format!(
            "{display} looks like a binary file; it cannot be edited as text"
        ))),
        Ok(bytes) => String::from_utf8(bytes).map(Some).map_err(|_| {
            ToolError::Invalid(format!(
                "{display} is not valid UTF-8; it cannot be edited as text"
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ToolError::io(display, e)),
    }
}

/// A unified diff with `a/` and `b/` headers, like `git diff`.
pub(crate) fn unified_diff(display: &str, old: &str, new: &str) -> String {
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(&format!("a/{display}"), &format!("b/{display}"))
        .to_string()
}

/// Git's heuristic: a NUL byte near the start means binary.
fn looks_binary(bytes: &[u8]) -> bool {
    bytes.iter().take(8000).any(|&b| b == 0)
}

/// A glob as the tools understand it: without `/` it matches file names
/// anywhere, with `/` it matches paths relative to the project root.
#[derive(Debug, Clone)]
pub(crate) struct FileGlob {
    matcher: GlobMatcher,
    on_name: bool,
}

impl FileGlob {
    pub(crate) fn new(tool: &str, pattern: &str) -> Result<FileGlob, ToolError> {
        let pattern = pattern.trim_start_matches("./");
        let matcher = GlobBuilder::new(pattern)
            .literal_separator(true)
            .build()
            .map_err(|e| ToolError::args(tool, format!("invalid glob `{pattern}`: {e}")))?
            .compile_matcher();
        Ok(FileGlob {
            matcher,
            on_name: !pattern.contains('/'),
        })
    }

    pub(crate) fn is_match(&self, relative: &Path) -> bool {
        if self.on_name {
            relative
                .file_name()
                .is_some_and(|name| self.matcher.is_match(name))
        } else {
            self.matcher.is_match(relative)
        }
    }
}

/// Files under `base` (a file or a directory), honouring `.gitignore`,
/// `.ignore` and git's global excludes even outside a git repository, and
/// never entering `.git`. Paths are absolute and sorted.
pub(crate) fn walk_files(root: &ProjectRoot, base: &Path, glob: Option<&FileGlob>) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = ignore::WalkBuilder::new(base)
        .hidden(false)
        .require_git(false)
        .filter_entry(|entry| entry.file_name() != ".git")
        .build()
        .filter_map(Result::ok)
        .filter(|entry| {
            entry
                .file_type()
                .is_some_and(|t| t.is_file() || (t.is_symlink() && entry.path().is_file()))
        })
        .map(ignore::DirEntry::into_path)
        // Symlinks inside the tree may point outside; the walker does not
        // follow directory links, and file links are checked here.
        .filter(|path| {
            path.canonicalize()
                .is_ok_and(|real| real.starts_with(root.path()))
        })
        .filter(|path| {
            glob.is_none_or(|g| g.is_match(path.strip_prefix(root.path()).unwrap_or(path)))
        })
        .collect();
    files.sort();
    files
}

/// `list_files`: paths relative to the project root, one per line.
pub(crate) async fn list_files(root: &ProjectRoot, args: &Value) -> Result<ToolOutput, ToolError> {
    const TOOL: &str = "list_files";
    let glob = optional_str(TOOL, args, "pattern")?
        .filter(|p| !p.is_empty())
        .map(|p| FileGlob::new(TOOL, p))
        .transpose()?;
    let base = root.resolve(optional_str(TOOL, args, "path")?.unwrap_or("."))?;
    if !base.is_dir() {
        return Err(ToolError::Invalid(format!(
            "{} is not a directory",
            root.display(&base)
        )));
    }
    let root = root.clone();
    let files = tokio::task::spawn_blocking(move || {
        walk_files(&root, &base, glob.as_ref())
            .iter()
            .map(|p| root.display(p))
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| ToolError::Invalid(format!("listing files failed: {e}")))?;

    if files.is_empty() {
        return Ok(ToolOutput::ok("No files matched."));
    }
    let total = files.len();
    let mut out = files
        .into_iter()
        .take(MAX_LISTED_FILES)
        .collect::<Vec<_>>()
        .join("\n");
    if total > MAX_LISTED_FILES {
        out.push_str(&format!(
            "\n[{total} files matched; showing the first {MAX_LISTED_FILES}. Use a narrower pattern.]"
        ));
    }
    Ok(ToolOutput::ok(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_overlapping_matches() {
        assert_eq!(count_matches("aaa", "aa"), 2);
        assert_eq!(count_matches("abcabc", "abc"), 2);
        assert_eq!(count_matches("héllo", "l"), 2);
        assert_eq!(count_matches("abc", "x"), 0);
    }

    #[test]
    fn globs_match_names_or_relative_paths() {
        let by_name = FileGlob::new("t", "*.rs").unwrap();
        assert!(by_name.is_match(Path::new("src/deep/main.rs")));
        let by_path = FileGlob::new("t", "src/*.rs").unwrap();
        assert!(by_path.is_match(Path::new("src/main.rs")));
        assert!(!by_path.is_match(Path::new("src/deep/main.rs")));
        assert!(FileGlob::new("t", "src/[").is_err());
    }

    #[test]
    fn edit_matches_crlf_files_with_lf_strings() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("w.txt"), "one\r\ntwo\r\n").unwrap();
        let root = ProjectRoot::new(dir.path()).unwrap();
        let args =
            serde_json::json!({"path": "w.txt", "old_string": "one\ntwo", "new_string": "1\n2"});
        prepare_edit(&root, &args).unwrap().apply().unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("w.txt")).unwrap(),
            "1\r\n2\r\n"
        );
    }
}
