//! Confinement of model-supplied paths to the project root.
//!
//! A path is accepted only if what it *really* points at is inside the root:
//! `..` is resolved, absolute paths are checked like any other, and symlinks
//! are followed through the nearest existing ancestor. The resolved path is
//! what the tools then use, so the check and the use agree.

use std::path::{Component, Path, PathBuf};

use crate::ToolError;

/// The canonical project root and the resolution of paths against it.
#[derive(Debug, Clone)]
pub(crate) struct ProjectRoot {
    root: PathBuf,
}

impl ProjectRoot {
    /// Canonicalises `root`; it must be an existing directory.
    pub(crate) fn new(root: &Path) -> Result<ProjectRoot, ToolError> {
        let canonical = root
            .canonicalize()
            .map_err(|source| ToolError::ProjectRoot {
                path: root.to_owned(),
                source,
            })?;
        if !canonical.is_dir() {
            return Err(ToolError::ProjectRoot {
                path: root.to_owned(),
                source: std::io::Error::other("not a directory"),
            });
        }
        Ok(ProjectRoot { root: canonical })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.root
    }

    /// Resolves a model-supplied path (relative to the root, or absolute) to
    /// a real path inside the root, or refuses it.
    pub(crate) fn resolve(&self, input: &str) -> Result<PathBuf, ToolError> {
        let refuse = || ToolError::OutsideProject {
            path: input.to_owned(),
        };
        if input.is_empty() {
            return Err(ToolError::Invalid("path must not be empty".into()));
        }
        let raw = Path::new(input);
        let joined = if raw.is_absolute() {
            raw.to_owned()
        } else {
            self.root.join(raw)
        };
        let normal = normalize(&joined).ok_or_else(refuse)?;

        // Find the nearest ancestor that exists (as anything, including a
        // dangling symlink) and let the OS resolve its symlinks. The missing
        // tail cannot contain `..` or links, since it was normalised and
        // does not exist yet.
        let mut existing = normal.as_path();
        let mut tail = Vec::new();
        while existing.symlink_metadata().is_err() {
            let (Some(parent), Some(name)) = (existing.parent(), existing.file_name()) else {
                return Err(refuse());
            };
            tail.push(name.to_owned());
            existing = parent;
        }
        // Canonicalising fails on a dangling symlink; refusing it is right,
        // because writing through it could land anywhere.
        let mut real = existing.canonicalize().map_err(|_| refuse())?;
        for name in tail.iter().rev() {
            real.push(name);
        }
        if real.starts_with(&self.root) {
            Ok(real)
        } else {
            Err(refuse())
        }
    }

    /// The path relative to the root, for messages and tool output.
    pub(crate) fn display(&self, path: &Path) -> String {
        match path.strip_prefix(&self.root) {
            Ok(rel) if rel.as_os_str().is_empty() => ".".to_owned(),
            Ok(rel) => rel.display().to_string(),
            Err(_) => path.display().to_string(),
        }
    }
}

/// Removes `.` and resolves `..` lexically. Returns `None` if `..` would
/// climb above the filesystem root.
fn normalize(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Prefix(_) | Component::RootDir => out.push(component.as_os_str()),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::Normal(name) => out.push(name),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_inside_and_refuses_outside() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("src")).unwrap();
        let root = ProjectRoot::new(dir.path()).unwrap();

        let inside = root.resolve("src/../src/./new/file.rs").unwrap();
        assert_eq!(inside, root.path().join("src/new/file.rs"));
        assert_eq!(root.display(&inside), "src/new/file.rs");
        assert_eq!(root.resolve(".").unwrap(), root.path());

        assert!(matches!(
            root.resolve("../x"),
            Err(ToolError::OutsideProject { .. })
        ));
        assert!(matches!(
            root.resolve("/etc/passwd"),
            Err(ToolError::OutsideProject { .. })
        ));
        let abs_inside = root.path().join("src").display().to_string();
        assert!(root.resolve(&abs_inside).is_ok());
    }

    #[test]
    fn refuses_symlinks_that_escape_even_when_dangling() {
        let outside = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let root = ProjectRoot::new(dir.path()).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("out")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("missing"), dir.path().join("dangling"))
            .unwrap();
        assert!(root.resolve("out/secret").is_err());
        assert!(root.resolve("dangling").is_err());
    }

    #[test]
    fn normalize_cannot_climb_above_root() {
        assert_eq!(normalize(Path::new("/a/../..")), None);
        assert_eq!(
            normalize(Path::new("/a/./b/../c")),
            Some(PathBuf::from("/a/c"))
        );
    }
}
