//! The shadow checkpoint store behind `/undo`.
//!
//! Each project gets its own bare git directory under the checkpoint dir,
//! named by a hash of the project path, and every command runs as
//! `git --git-dir=<store> --work-tree=<project>`. The store has its own index
//! and its own history, so the user's `.git` (HEAD, index, refs, stash) is
//! never read or written. Git reads the project's `.gitignore` files through
//! the work tree, so ignored build output is not snapshotted, and it never
//! descends into `.git`.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

use crate::private_fs;
use crate::{git, ToolError};

/// A snapshot in the shadow store (a commit id there, meaningless in the user's repo).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CheckpointId(String);

impl CheckpointId {
    /// Accepts a full hexadecimal commit id, e.g. one persisted in a session.
    pub fn parse(s: &str) -> Result<CheckpointId, ToolError> {
        let valid = matches!(s.len(), 40 | 64) && s.bytes().all(|b| b.is_ascii_hexdigit());
        if valid {
            Ok(CheckpointId(s.to_ascii_lowercase()))
        } else {
            Err(ToolError::Invalid(format!("`{s}` is not a checkpoint id")))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CheckpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The shadow git store of one project.
#[derive(Debug)]
pub struct Checkpoints {
    git_dir: PathBuf,
    work_tree: PathBuf,
    /// Serialises git commands (they share one index) and remembers whether
    /// the store has been created, which happens on first use.
    state: Mutex<bool>,
}

impl Checkpoints {
    /// The store for `project_root` under `store_root`. Nothing is created
    /// until the first operation.
    pub fn new(project_root: &Path, store_root: &Path) -> Checkpoints {
        let work_tree = project_root
            .canonicalize()
            .unwrap_or_else(|_| project_root.to_owned());
        let digest = Sha256::digest(work_tree.as_os_str().as_encoded_bytes());
        let name = hex::encode(&digest[..8]);
        Checkpoints {
            git_dir: store_root.join(name),
            work_tree,
            state: Mutex::new(false),
        }
    }

    /// The shadow git directory (for diagnostics; do not point other tools at it).
    pub fn git_dir(&self) -> &Path {
        &self.git_dir
    }

    /// Records the current state of the project, even if nothing changed
    /// since the previous checkpoint, so every label shows up in [`Self::list`].
    pub async fn snapshot(&self, label: &str) -> Result<CheckpointId, ToolError> {
        let mut initialised = self.state.lock().await;
        self.ensure_init(&mut initialised).await?;
        self.git(&["add", "-A"]).await?;
        self.commit(label).await
    }

    /// Like [`Self::snapshot`], but reuses the latest checkpoint when the
    /// project has not changed since, so a checkpoint before every edit
    /// costs one `git add` when nothing new needs saving.
    pub(crate) async fn snapshot_if_changed(&self, label: &str) -> Result<CheckpointId, ToolError> {
        let mut initialised = self.state.lock().await;
        self.ensure_init(&mut initialised).await?;
        self.git(&["add", "-A"]).await?;
        if let Some(head) = self.head().await? {
            let unchanged = git::run(
                &self.work_tree,
                &self.args(&["diff", "--cached", "--quiet", head.as_str()]),
            )
            .await?
            .status
            .success();
            if unchanged {
                return Ok(head);
            }
        }
        self.commit(label).await
    }

    /// Puts the project back exactly as it was at `id`: modified files are
    /// reverted, files created since are deleted and deleted ones come back.
    /// Ignored files are left alone. The state before the restore is saved
    /// first, so a restore can itself be undone.
    pub async fn restore(&self, id: &CheckpointId) -> Result<(), ToolError> {
        let mut initialised = self.state.lock().await;
        self.ensure_init(&mut initialised).await?;
        self.verify(id).await?;
        // Staging everything first is what makes files created since the
        // checkpoint known to git, so that `read-tree -u` deletes them.
        self.git(&["add", "-A"]).await?;
        if self.head().await?.as_ref() != Some(id) {
            self.commit(&format!("before restore to {}", short(id)))
                .await?;
        }
        self.git(&["read-tree", "--reset", "-u", id.as_str()])
            .await?;
        Ok(())
    }

    /// A unified diff from the checkpoint to the project as it is now.
    pub async fn diff_since(&self, id: &CheckpointId) -> Result<String, ToolError> {
        let mut initialised = self.state.lock().await;
        self.ensure_init(&mut initialised).await?;
        self.verify(id).await?;
        self.git(&["add", "-A"]).await?;
        self.git(&[
            "diff",
            "--cached",
            "--no-color",
            "--no-ext-diff",
            id.as_str(),
        ])
        .await
    }

    /// All checkpoints, newest first, with their labels.
    pub async fn list(&self) -> Result<Vec<(CheckpointId, String)>, ToolError> {
        let mut initialised = self.state.lock().await;
        self.ensure_init(&mut initialised).await?;
        if self.head().await?.is_none() {
            return Ok(Vec::new());
        }
        let log = self.git(&["log", "--format=%H%x1f%s"]).await?;
        Ok(log
            .lines()
            .filter_map(|line| {
                let (id, label) = line.split_once('\u{1f}')?;
                Some((CheckpointId(id.to_owned()), label.to_owned()))
            })
            .collect())
    }

    async fn ensure_init(&self, initialised: &mut bool) -> Result<(), ToolError> {
        if *initialised {
            return Ok(());
        }
        // Snapshots hold every file of the project: only the owner may read
        // them, also when the store was made by an older version.
        let io = |e| ToolError::io(self.git_dir.display().to_string(), e);
        if let Some(store_root) = self.git_dir.parent() {
            private_fs::create_private_dir(store_root).map_err(io)?;
        }
        private_fs::create_private_dir(&self.git_dir).map_err(io)?;
        if !self.git_dir.join("HEAD").exists() {
            git::run_ok(
                &self.work_tree,
                &[
                    "init".as_ref(),
                    "--quiet".as_ref(),
                    "--bare".as_ref(),
                    self.git_dir.as_os_str(),
                ],
            )
            .await?;
            for (key, value) in [
                ("core.autocrlf", "false"),
                ("core.quotepath", "false"),
                ("core.fsmonitor", "false"),
                ("commit.gpgsign", "false"),
            ] {
                self.git(&["config", key, value]).await?;
            }
            let description = format!("PiCode checkpoints for {}\n", self.work_tree.display());
            std::fs::write(self.git_dir.join("description"), description)
                .map_err(|e| ToolError::io(self.git_dir.display().to_string(), e))?;
        }
        // If the store sits inside the project (a configured checkpoint dir),
        // it must not snapshot itself.
        if let Ok(inside) = self.git_dir.strip_prefix(&self.work_tree) {
            let info = self.git_dir.join("info");
            std::fs::create_dir_all(&info)
                .map_err(|e| ToolError::io(info.display().to_string(), e))?;
            let pattern = format!("/{}/\n", inside.display());
            std::fs::write(info.join("exclude"), pattern)
                .map_err(|e| ToolError::io(info.display().to_string(), e))?;
        }
        *initialised = true;
        Ok(())
    }

    async fn commit(&self, label: &str) -> Result<CheckpointId, ToolError> {
        // Labels may be whole shell scripts; the first line is enough to recognise one.
        let first_line: String = label
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .chars()
            .take(200)
            .collect();
        let message = if first_line.is_empty() {
            "checkpoint"
        } else {
            first_line.as_str()
        };
        self.git(&[
            "-c",
            "user.name=PiCode",
            "-c",
            "user.email=picode@localhost",
            // Hooks belong to the user's repository, not to this store.
            "-c",
            "core.hooksPath=/dev/null",
            "commit",
            "--quiet",
            "--allow-empty",
            "--no-verify",
            "-m",
            message,
        ])
        .await?;
        self.head()
            .await?
            .ok_or_else(|| ToolError::Invalid("checkpoint commit left no HEAD".into()))
    }

    async fn head(&self) -> Result<Option<CheckpointId>, ToolError> {
        let out = git::run(
            &self.work_tree,
            &self.args(&["rev-parse", "--verify", "--quiet", "HEAD"]),
        )
        .await?;
        if !out.status.success() {
            return Ok(None);
        }
        let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        Ok(Some(CheckpointId(id)))
    }

    async fn verify(&self, id: &CheckpointId) -> Result<(), ToolError> {
        let object = format!("{}^{{commit}}", id.as_str());
        let out = git::run(&self.work_tree, &self.args(&["cat-file", "-e", &object])).await?;
        if out.status.success() {
            Ok(())
        } else {
            Err(ToolError::Invalid(format!("no checkpoint {id}")))
        }
    }

    async fn git(&self, args: &[&str]) -> Result<String, ToolError> {
        git::run_ok(&self.work_tree, &self.args(args)).await
    }

    fn args(&self, args: &[&str]) -> Vec<String> {
        let mut all = vec![
            format!("--git-dir={}", self.git_dir.display()),
            format!("--work-tree={}", self.work_tree.display()),
        ];
        all.extend(args.iter().map(|a| (*a).to_owned()));
        all
    }
}

fn short(id: &CheckpointId) -> &str {
    &id.as_str()[..id.as_str().len().min(10)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_ids_are_validated() {
        assert!(CheckpointId::parse(&"a".repeat(40)).is_ok());
        assert!(CheckpointId::parse("HEAD").is_err());
        assert!(CheckpointId::parse(&"g".repeat(40)).is_err());
    }

    #[tokio::test]
    async fn store_lives_outside_the_project_and_lists_labels() {
        let project = tempfile::tempdir().unwrap();
        let store = tempfile::tempdir().unwrap();
        std::fs::write(project.path().join("a.txt"), "one").unwrap();
        let cps = Checkpoints::new(project.path(), store.path());
        assert!(cps.list().await.unwrap().is_empty());
        let first = cps.snapshot("first").await.unwrap();
        let same = cps.snapshot_if_changed("unchanged").await.unwrap();
        assert_eq!(first, same);
        let labels: Vec<String> = cps.list().await.unwrap().into_iter().map(|c| c.1).collect();
        assert_eq!(labels, ["first"]);
        assert!(cps.git_dir().starts_with(store.path()));
        assert!(!project.path().join(".git").exists());
    }
}
