//! An app's source through libgit2 (git2), in process: a bare cache per app
//! that later deploys fetch into instead of cloning again, and an export of
//! one commit's tree into a build directory.
//!
//! A cloned repository is someone else's input. The export writes regular
//! files and symlinks only (submodules are skipped), refuses entry names
//! that could step outside the directory (`..`, `.git`, anything with a
//! separator), and never follows a symlink: files the engine reads itself
//! (`rivetr.toml`, the Dockerfile's presence) are read from the git tree,
//! not from the disk. SSH host keys are pinned on first use per app.
//!
//! All of this blocks; the engine calls it on a blocking thread.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{symlink, OpenOptionsExt};
use std::path::{Path, PathBuf};

use git2::{
    FetchOptions, ObjectType, Oid, RemoteCallbacks, Repository, TreeWalkMode, TreeWalkResult,
};

use crate::domain::GitUrl;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot reach the repository {url}: {message}")]
    Fetch { url: String, message: String },
    #[error("branch {branch:?} does not exist in {url}")]
    NoBranch { url: String, branch: String },
    #[error("commit {0} is not in the repository")]
    NoCommit(String),
    #[error("the repository holds an unsafe entry {0:?}; refusing to check it out")]
    UnsafeEntry(String),
    #[error("the host key of {host} changed since the first deploy (was {was}, now {now}); refusing to connect")]
    HostKeyChanged {
        host: String,
        was: String,
        now: String,
    },
    #[error("repository cache {path}: {message}")]
    Cache { path: String, message: String },
}

/// What to fetch.
pub struct SourceSpec<'a> {
    pub url: &'a GitUrl,
    pub branch: &'a str,
    pub commit: Option<&'a str>,
    /// PEM private key for ssh, already opened.
    pub ssh_key: Option<&'a str>,
}

fn cache_err(path: &Path, e: impl std::fmt::Display) -> SourceError {
    SourceError::Cache {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Fetches `spec` into the bare cache at `cache` (created on first use) and
/// returns the commit to build. `progress` hears human-readable lines.
pub fn fetch(
    cache: &Path,
    spec: &SourceSpec<'_>,
    progress: &mut dyn FnMut(String),
) -> Result<String, SourceError> {
    let repo = match Repository::open_bare(cache) {
        Ok(repo) => {
            progress(format!("fetching {} (cached)", spec.url.as_str()));
            repo
        }
        Err(_) => {
            if cache.exists() {
                fs::remove_dir_all(cache).map_err(|e| cache_err(cache, e))?;
            }
            progress(format!("cloning {}", spec.url.as_str()));
            Repository::init_bare(cache).map_err(|e| cache_err(cache, e))?
        }
    };
    let url = match spec.url {
        GitUrl::Local(path) => path.clone(),
        other => other.as_str().to_owned(),
    };
    let fetch_err = |e: git2::Error| SourceError::Fetch {
        url: spec.url.as_str().to_owned(),
        message: e.message().to_owned(),
    };
    // An anonymous remote: the URL in the database is the truth, and a
    // changed URL takes effect at the next fetch.
    let mut remote = repo.remote_anonymous(&url).map_err(fetch_err)?;
    let hostkey_file = cache.with_extension("hostkey");
    let host_key_problem: std::cell::RefCell<Option<SourceError>> = std::cell::RefCell::new(None);
    {
        let mut callbacks = RemoteCallbacks::new();
        let mut last_percent = -1i64;
        let report = std::cell::RefCell::new(&mut *progress);
        callbacks.transfer_progress(|stats| {
            let total = stats.total_objects().max(1);
            let percent = (stats.received_objects() * 100 / total) as i64;
            if percent / 25 != last_percent / 25 || stats.received_objects() == total {
                last_percent = percent;
                (report.borrow_mut())(format!(
                    "received {}/{} objects ({} KiB)",
                    stats.received_objects(),
                    stats.total_objects(),
                    stats.received_bytes() / 1024
                ));
            }
            true
        });
        if let Some(key) = spec.ssh_key {
            callbacks.credentials(move |_url, username, _allowed| {
                git2::Cred::ssh_key_from_memory(username.unwrap_or("git"), None, key, None)
            });
        }
        let problem = &host_key_problem;
        callbacks.certificate_check(move |cert, host| {
            let Some(hostkey) = cert.as_hostkey() else {
                // X.509: let libgit2 apply the system's trust store.
                return Ok(git2::CertificateCheckStatus::CertificatePassthrough);
            };
            let Some(hash) = hostkey.hash_sha256() else {
                return Err(git2::Error::from_str("host key without a SHA-256 hash"));
            };
            let now = hex::encode(hash);
            match fs::read_to_string(&hostkey_file) {
                Ok(was) if was.trim() == now => Ok(git2::CertificateCheckStatus::CertificateOk),
                Ok(was) => {
                    *problem.borrow_mut() = Some(SourceError::HostKeyChanged {
                        host: host.to_owned(),
                        was: was.trim().to_owned(),
                        now,
                    });
                    Err(git2::Error::from_str("host key changed"))
                }
                Err(_) => {
                    let _ = fs::write(&hostkey_file, &now);
                    Ok(git2::CertificateCheckStatus::CertificateOk)
                }
            }
        });
        let mut options = FetchOptions::new();
        options.remote_callbacks(callbacks);
        options.download_tags(git2::AutotagOption::None);
        let refspec = format!("+refs/heads/{0}:refs/heads/{0}", spec.branch);
        let fetched = remote.fetch(&[refspec.as_str()], Some(&mut options), None);
        if let Err(e) = fetched {
            if let Some(problem) = host_key_problem.borrow_mut().take() {
                return Err(problem);
            }
            // libgit2 says "couldn't find remote ref" for a missing branch.
            if e.message().contains("find remote ref") {
                return Err(SourceError::NoBranch {
                    url: spec.url.as_str().to_owned(),
                    branch: spec.branch.to_owned(),
                });
            }
            return Err(fetch_err(e));
        }
    }
    let head = repo
        .find_reference(&format!("refs/heads/{}", spec.branch))
        .and_then(|r| r.peel_to_commit())
        .map_err(|_| SourceError::NoBranch {
            url: spec.url.as_str().to_owned(),
            branch: spec.branch.to_owned(),
        })?;
    let commit = match spec.commit {
        None => head.id(),
        Some(pin) => {
            let object = repo
                .revparse_single(pin)
                .map_err(|_| SourceError::NoCommit(pin.to_owned()))?;
            object
                .peel_to_commit()
                .map_err(|_| SourceError::NoCommit(pin.to_owned()))?
                .id()
        }
    };
    let summary = repo
        .find_commit(commit)
        .ok()
        .and_then(|c| c.summary().map(str::to_owned))
        .unwrap_or_default();
    progress(format!("commit {} {summary}", &commit.to_string()[..12]));
    Ok(commit.to_string())
}

/// Reads one file of a commit straight from git (never from a checkout):
/// `None` when absent or not a regular file.
pub fn read_file(cache: &Path, commit: &str, path: &str) -> Result<Option<Vec<u8>>, SourceError> {
    let repo = Repository::open_bare(cache).map_err(|e| cache_err(cache, e))?;
    let oid = Oid::from_str(commit).map_err(|_| SourceError::NoCommit(commit.to_owned()))?;
    let tree = repo
        .find_commit(oid)
        .and_then(|c| c.tree())
        .map_err(|_| SourceError::NoCommit(commit.to_owned()))?;
    let Ok(entry) = tree.get_path(Path::new(path)) else {
        return Ok(None);
    };
    // 0o100644 and 0o100755 are files; a symlink (0o120000) is not followed.
    if entry.kind() != Some(ObjectType::Blob) || entry.filemode() & 0o170000 != 0o100000 {
        return Ok(None);
    }
    let blob = repo
        .find_blob(entry.id())
        .map_err(|e| cache_err(cache, e))?;
    Ok(Some(blob.content().to_vec()))
}

/// Writes the tree of `commit` into `dest` (which must exist and be empty).
pub fn export(cache: &Path, commit: &str, dest: &Path) -> Result<(), SourceError> {
    let repo = Repository::open_bare(cache).map_err(|e| cache_err(cache, e))?;
    let oid = Oid::from_str(commit).map_err(|_| SourceError::NoCommit(commit.to_owned()))?;
    let tree = repo
        .find_commit(oid)
        .and_then(|c| c.tree())
        .map_err(|_| SourceError::NoCommit(commit.to_owned()))?;
    let mut failure: Option<SourceError> = None;
    let walked = tree.walk(TreeWalkMode::PreOrder, |dir, entry| {
        let name = String::from_utf8_lossy(entry.name_bytes()).into_owned();
        if !safe_name(&name) || !dir.split('/').filter(|p| !p.is_empty()).all(safe_name) {
            failure = Some(SourceError::UnsafeEntry(format!("{dir}{name}")));
            return TreeWalkResult::Abort;
        }
        let target: PathBuf = dest.join(dir).join(&name);
        let written = match entry.kind() {
            Some(ObjectType::Tree) => fs::create_dir(&target).map_err(|e| e.to_string()),
            Some(ObjectType::Blob) => {
                let mode = entry.filemode();
                match repo.find_blob(entry.id()) {
                    Err(e) => Err(e.to_string()),
                    Ok(blob) if mode & 0o170000 == 0o120000 => {
                        let link = String::from_utf8_lossy(blob.content()).into_owned();
                        symlink(link, &target).map_err(|e| e.to_string())
                    }
                    Ok(blob) => {
                        let perm = if mode & 0o111 != 0 { 0o755 } else { 0o644 };
                        fs::OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .mode(perm)
                            .open(&target)
                            .and_then(|mut f| f.write_all(blob.content()))
                            .map_err(|e| e.to_string())
                    }
                }
            }
            // Submodules (commits inside a tree) are not fetched.
            _ => Ok(()),
        };
        match written {
            Ok(()) => TreeWalkResult::Ok,
            Err(message) => {
                failure = Some(cache_err(&target, message));
                TreeWalkResult::Abort
            }
        }
    });
    if let Some(failure) = failure {
        return Err(failure);
    }
    walked.map_err(|e| cache_err(dest, e))?;
    Ok(())
}

/// A tree entry name that stays where it is written.
fn safe_name(name: &str) -> bool {
    !(name.is_empty()
        || name == "."
        || name == ".."
        || name.eq_ignore_ascii_case(".git")
        || name.contains('/')
        || name.contains('\\')
        || name.contains('\0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_with(files: &[(&str, &str)]) -> (tempfile::TempDir, Repository) {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(dir.path()).unwrap();
        for (path, text) in files {
            let p = dir.path().join(path);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, text).unwrap();
        }
        commit_all(&repo, "first");
        (dir, repo)
    }

    fn commit_all(repo: &Repository, message: &str) -> Oid {
        let mut index = repo.index().unwrap();
        index
            .add_all(["*"].iter(), git2::IndexAddOption::DEFAULT, None)
            .unwrap();
        index.write().unwrap();
        let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
        let sig = git2::Signature::now("t", "t@example.test").unwrap();
        let parents: Vec<git2::Commit> = repo
            .find_reference("refs/heads/main")
            .ok()
            .and_then(|h| h.peel_to_commit().ok())
            .into_iter()
            .collect();
        let parents: Vec<&git2::Commit> = parents.iter().collect();
        repo.commit(
            Some("refs/heads/main"),
            &sig,
            &sig,
            message,
            &tree,
            &parents,
        )
        .unwrap()
    }

    #[test]
    fn fetch_then_fetch_again_uses_the_cache_and_sees_new_commits() {
        let (dir, repo) = repo_with(&[("Dockerfile", "FROM scratch\n"), ("src/a.txt", "v1")]);
        let url = GitUrl::parse(dir.path().to_str().unwrap()).unwrap();
        let cache_dir = tempfile::tempdir().unwrap();
        let cache = cache_dir.path().join("app.git");
        let spec = SourceSpec {
            url: &url,
            branch: "main",
            commit: None,
            ssh_key: None,
        };
        let mut lines = Vec::new();
        let first = fetch(&cache, &spec, &mut |l| lines.push(l)).unwrap();
        assert!(lines[0].starts_with("cloning"), "{lines:?}");
        fs::write(dir.path().join("src/a.txt"), "v2").unwrap();
        let second_oid = commit_all(&repo, "second");
        let mut lines = Vec::new();
        let second = fetch(&cache, &spec, &mut |l| lines.push(l)).unwrap();
        assert!(lines[0].contains("cached"), "{lines:?}");
        assert_ne!(first, second);
        assert_eq!(second, second_oid.to_string());
        let out = tempfile::tempdir().unwrap();
        export(&cache, &second, out.path()).unwrap();
        assert_eq!(
            fs::read_to_string(out.path().join("src/a.txt")).unwrap(),
            "v2"
        );
        // A pinned commit wins over the branch head.
        let pinned = SourceSpec {
            commit: Some(&first[..10]),
            ..spec
        };
        assert_eq!(fetch(&cache, &pinned, &mut |_| {}).unwrap(), first);
        assert_eq!(
            read_file(&cache, &first, "src/a.txt").unwrap().as_deref(),
            Some(&b"v1"[..])
        );
        assert_eq!(read_file(&cache, &first, "missing").unwrap(), None);
    }

    #[test]
    fn missing_branch_commit_and_repository_are_named() {
        let (dir, _repo) = repo_with(&[("a", "x")]);
        let url = GitUrl::parse(dir.path().to_str().unwrap()).unwrap();
        let cache_dir = tempfile::tempdir().unwrap();
        let cache = cache_dir.path().join("app.git");
        let spec = SourceSpec {
            url: &url,
            branch: "nope",
            commit: None,
            ssh_key: None,
        };
        let err = fetch(&cache, &spec, &mut |_| {}).unwrap_err();
        assert!(matches!(err, SourceError::NoBranch { .. }), "{err}");
        let spec = SourceSpec {
            branch: "main",
            commit: Some("deadbeef"),
            ..spec
        };
        let err = fetch(&cache, &spec, &mut |_| {}).unwrap_err();
        assert!(matches!(err, SourceError::NoCommit(_)), "{err}");
        let gone = GitUrl::parse("/nonexistent/repo").unwrap();
        let spec = SourceSpec {
            url: &gone,
            branch: "main",
            commit: None,
            ssh_key: None,
        };
        let err = fetch(&cache_dir.path().join("b.git"), &spec, &mut |_| {}).unwrap_err();
        assert!(matches!(err, SourceError::Fetch { .. }), "{err}");
    }

    #[test]
    fn symlinks_are_exported_as_links_and_never_read_through() {
        let (dir, repo) = repo_with(&[("a", "x")]);
        symlink("/etc/passwd", dir.path().join("rivetr.toml")).unwrap();
        let oid = commit_all(&repo, "link");
        let url = GitUrl::parse(dir.path().to_str().unwrap()).unwrap();
        let cache_dir = tempfile::tempdir().unwrap();
        let cache = cache_dir.path().join("app.git");
        let spec = SourceSpec {
            url: &url,
            branch: "main",
            commit: None,
            ssh_key: None,
        };
        assert_eq!(fetch(&cache, &spec, &mut |_| {}).unwrap(), oid.to_string());
        assert_eq!(
            read_file(&cache, &oid.to_string(), "rivetr.toml").unwrap(),
            None
        );
        let out = tempfile::tempdir().unwrap();
        export(&cache, &oid.to_string(), out.path()).unwrap();
        let meta = fs::symlink_metadata(out.path().join("rivetr.toml")).unwrap();
        assert!(meta.file_type().is_symlink());
    }

    #[test]
    fn unsafe_names_are_refused() {
        for bad in ["..", ".git", ".GIT", "a/b", "", "."] {
            assert!(!safe_name(bad), "{bad}");
        }
        assert!(safe_name(".github"));
    }

    #[test]
    fn a_tree_entry_named_dot_git_is_refused_at_export() {
        // Built with the object database directly: git itself would not
        // let such a tree be committed from a work tree.
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path()).unwrap();
        let hook = repo.blob(b"#!/bin/sh\necho pwned\n").unwrap();
        let mut inner = repo.treebuilder(None).unwrap();
        inner.insert("config", hook, 0o100644).unwrap();
        let inner = inner.write().unwrap();
        // libgit2's tree builder refuses the name, so the tree object is
        // written raw, as a hostile server would send it.
        let mut raw = b"40000 .git\0".to_vec();
        raw.extend_from_slice(inner.as_bytes());
        let root = repo.odb().unwrap().write(ObjectType::Tree, &raw).unwrap();
        let tree = repo.find_tree(root).unwrap();
        let sig = git2::Signature::now("t", "t@example.test").unwrap();
        let oid = repo
            .commit(Some("refs/heads/main"), &sig, &sig, "evil", &tree, &[])
            .unwrap();
        let url = GitUrl::parse(dir.path().to_str().unwrap()).unwrap();
        let cache_dir = tempfile::tempdir().unwrap();
        let cache = cache_dir.path().join("app.git");
        let spec = SourceSpec {
            url: &url,
            branch: "main",
            commit: None,
            ssh_key: None,
        };
        fetch(&cache, &spec, &mut |_| {}).unwrap();
        let out = tempfile::tempdir().unwrap();
        let err = export(&cache, &oid.to_string(), out.path()).unwrap_err();
        assert!(matches!(err, SourceError::UnsafeEntry(_)), "{err}");
        assert!(!out.path().join(".git").exists());
    }
}
