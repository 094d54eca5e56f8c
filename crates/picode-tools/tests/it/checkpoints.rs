//! The shadow checkpoint store: exact restores, and the user's `.git` untouched.

use std::collections::BTreeMap;
use std::path::Path;

use picode_tools::{Checkpoints, PermissionMode};
use serde_json::json;

use crate::support::{git, Project};

/// Every regular file under `dir` (skipping `.git`) with its content.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.file_name().unwrap() == ".git" {
                continue;
            }
            if path.is_dir() {
                walk(base, &path, out);
            } else {
                let rel = path.strip_prefix(base).unwrap().display().to_string();
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Everything observable about the user's repository.
fn repo_state(dir: &Path) -> Vec<String> {
    vec![
        git(dir, &["rev-parse", "HEAD"]),
        git(dir, &["status", "--porcelain", "--untracked-files=all"]),
        git(dir, &["for-each-ref"]),
        git(dir, &["stash", "list"]),
        git(dir, &["log", "--oneline"]),
        git(dir, &["diff", "--cached"]),
    ]
}

#[tokio::test]
async fn restore_puts_back_modified_created_and_deleted_files() {
    let p = Project::new(PermissionMode::FullAuto).await;
    p.write(".gitignore", "build/\n");
    p.write("a.txt", "alpha\n");
    p.write("b.txt", "beta\n");
    p.write("dir/c.txt", "gamma\n");
    p.write("build/out.bin", "ignored v1\n");
    p.git_init();
    p.write("uncommitted.txt", "user work in progress\n");
    let user_repo_before = repo_state(&p.root());
    let before = tree(&p.root());

    let turn = p.toolbox.begin_turn("turn 1: refactor").await.unwrap();
    assert_eq!(p.toolbox.turn_checkpoint(), Some(turn.clone()));

    // Changes through the tools and behind their back (as a shell command would).
    let edit = p
        .call(
            "edit_file",
            json!({"path": "a.txt", "old_string": "alpha", "new_string": "ALPHA"}),
        )
        .await;
    assert!(!edit.is_error, "{}", edit.content);
    p.call(
        "write_file",
        json!({"path": "new/created.txt", "content": "fresh\n"}),
    )
    .await;
    let rm = p
        .call("shell", json!({"command": "rm b.txt dir/c.txt"}))
        .await;
    assert!(!rm.is_error, "{}", rm.content);
    p.write("build/out.bin", "ignored v2\n");

    let diff = p.toolbox.checkpoints().diff_since(&turn).await.unwrap();
    assert!(diff.contains("-alpha\n+ALPHA"), "{diff}");
    assert!(diff.contains("+++ b/new/created.txt"));
    assert!(diff.contains("--- a/b.txt"));
    assert!(
        !diff.contains("build/out.bin"),
        "ignored files are not snapshotted"
    );

    p.toolbox.checkpoints().restore(&turn).await.unwrap();

    let mut expected = before.clone();
    // Ignored files are not the checkpoint's business: they stay as they are.
    expected.insert("build/out.bin".into(), b"ignored v2\n".to_vec());
    assert_eq!(tree(&p.root()), expected);
    assert!(
        !p.path("new").exists(),
        "directories emptied by the restore are removed"
    );
    assert_eq!(repo_state(&p.root()), user_repo_before);

    // The restore itself can be undone: the state before it was saved.
    let list = p.toolbox.checkpoints().list().await.unwrap();
    let (before_restore, label) = &list[0];
    assert!(label.starts_with("before restore to"), "{label}");
    p.toolbox
        .checkpoints()
        .restore(before_restore)
        .await
        .unwrap();
    assert_eq!(p.read("a.txt"), "ALPHA\n");
    assert!(!p.path("b.txt").exists());
    // The user's history and refs are still untouched (the status now shows the redone changes).
    let after = repo_state(&p.root());
    assert_eq!(after[0], user_repo_before[0]);
    assert_eq!(after[2..], user_repo_before[2..]);
}

#[tokio::test]
async fn edits_are_checkpointed_even_without_begin_turn() {
    let p = Project::new(PermissionMode::FullAuto).await;
    p.write("a.txt", "one\n");
    assert!(p.toolbox.checkpoints().list().await.unwrap().is_empty());

    p.call(
        "edit_file",
        json!({"path": "a.txt", "old_string": "one", "new_string": "two"}),
    )
    .await;
    p.call(
        "edit_file",
        json!({"path": "a.txt", "old_string": "two", "new_string": "three"}),
    )
    .await;
    let list = p.toolbox.checkpoints().list().await.unwrap();
    let labels: Vec<&str> = list.iter().map(|(_, l)| l.as_str()).collect();
    assert_eq!(labels, ["edit a.txt", "edit a.txt"]);

    // Newest first: the latest checkpoint is the state just before the second edit.
    p.toolbox.checkpoints().restore(&list[0].0).await.unwrap();
    assert_eq!(p.read("a.txt"), "two\n");
    p.toolbox.checkpoints().restore(&list[1].0).await.unwrap();
    assert_eq!(p.read("a.txt"), "one\n");
}

#[tokio::test]
async fn the_store_lives_outside_the_project_and_the_users_repo() {
    let p = Project::new(PermissionMode::FullAuto).await;
    p.write("a.txt", "one\n");
    p.git_init();
    let user_repo_before = repo_state(&p.root());
    let git_dir_files_before = tree(&p.root().join(".git"));

    let id = p.toolbox.begin_turn("turn").await.unwrap();
    p.write("a.txt", "two\n");
    p.toolbox.begin_turn("next turn").await.unwrap();
    p.toolbox.checkpoints().restore(&id).await.unwrap();

    let store = p.toolbox.checkpoints().git_dir();
    assert!(store.starts_with(p.store.path()), "{}", store.display());
    // Compared before running `git status` again, which may refresh the index itself.
    assert_eq!(tree(&p.root().join(".git")), git_dir_files_before);
    assert_eq!(repo_state(&p.root()), user_repo_before);
    // The snapshots are not reachable from the user's repository at all.
    let user_has = std::process::Command::new("git")
        .args(["cat-file", "-e", id.as_str()])
        .current_dir(p.root())
        .status()
        .unwrap();
    assert!(!user_has.success());

    let labels: Vec<String> = p
        .toolbox
        .checkpoints()
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|(_, label)| label)
        .collect();
    assert_eq!(labels[1..], ["next turn", "turn"]);
}

#[tokio::test]
async fn checkpoints_work_in_a_project_that_is_not_a_git_repo() {
    let project = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    std::fs::write(project.path().join("f.txt"), "v1").unwrap();
    let cps = Checkpoints::new(project.path(), store.path());
    let id = cps.snapshot("first").await.unwrap();
    std::fs::write(project.path().join("f.txt"), "v2").unwrap();
    cps.restore(&id).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(project.path().join("f.txt")).unwrap(),
        "v1"
    );
    assert!(!project.path().join(".git").exists());

    let bogus = picode_tools::CheckpointId::parse(&"0".repeat(40)).unwrap();
    assert!(cps.restore(&bogus).await.is_err());
}
