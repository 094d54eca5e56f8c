//! Paths that escape the project are refused by every tool.

use picode_tools::PermissionMode;
use serde_json::json;

use crate::support::Project;

#[tokio::test]
async fn dot_dot_paths_are_refused() {
    let p = Project::new(PermissionMode::FullAuto).await;
    std::fs::write(p.outside().join("secret.txt"), "secret").unwrap();

    let read = p
        .call("read_file", json!({"path": "../outside/secret.txt"}))
        .await;
    assert!(read.is_error);
    assert!(
        read.content.contains("outside the project"),
        "{}",
        read.content
    );
    assert!(!read.content.contains("secret\n"));

    let write = p
        .call(
            "write_file",
            json!({"path": "src/../../outside/new.txt", "content": "x"}),
        )
        .await;
    assert!(write.is_error);
    assert!(!p.outside().join("new.txt").exists());

    let edit = p
        .call(
            "edit_file",
            json!({"path": "../outside/secret.txt", "old_string": "secret", "new_string": "pwned"}),
        )
        .await;
    assert!(edit.is_error);
    assert_eq!(
        std::fs::read_to_string(p.outside().join("secret.txt")).unwrap(),
        "secret"
    );

    for (tool, args) in [
        ("list_files", json!({"path": ".."})),
        ("grep", json!({"pattern": "secret", "path": "../outside"})),
        ("git_diff", json!({"path": "../outside"})),
    ] {
        let out = p.call(tool, args).await;
        assert!(out.is_error, "{tool} accepted a path outside");
        assert!(out.content.contains("outside the project"));
    }
}

#[tokio::test]
async fn absolute_paths_outside_are_refused_and_inside_accepted() {
    let p = Project::new(PermissionMode::FullAuto).await;
    let target = p.outside().join("abs.txt");
    let out = p
        .call(
            "write_file",
            json!({"path": target.display().to_string(), "content": "x"}),
        )
        .await;
    assert!(out.is_error);
    assert!(!target.exists());

    let passwd = p.call("read_file", json!({"path": "/etc/passwd"})).await;
    assert!(passwd.is_error);
    assert!(passwd.content.contains("outside the project"));

    let inside = p.toolbox.project_root().join("ok.txt");
    let ok = p
        .call(
            "write_file",
            json!({"path": inside.display().to_string(), "content": "fine"}),
        )
        .await;
    assert!(!ok.is_error, "{}", ok.content);
    assert_eq!(p.read("ok.txt"), "fine");
}

#[tokio::test]
async fn symlinks_escaping_the_root_are_refused() {
    let p = Project::new(PermissionMode::FullAuto).await;
    std::fs::write(p.outside().join("secret.txt"), "secret").unwrap();
    std::os::unix::fs::symlink(p.outside(), p.path("link_dir")).unwrap();
    std::os::unix::fs::symlink(p.outside().join("secret.txt"), p.path("link_file")).unwrap();
    std::os::unix::fs::symlink(p.outside().join("ghost.txt"), p.path("dangling")).unwrap();

    let read = p
        .call("read_file", json!({"path": "link_dir/secret.txt"}))
        .await;
    assert!(read.is_error);
    let read_file_link = p.call("read_file", json!({"path": "link_file"})).await;
    assert!(read_file_link.is_error);

    let write_through_dir = p
        .call(
            "write_file",
            json!({"path": "link_dir/new.txt", "content": "x"}),
        )
        .await;
    assert!(write_through_dir.is_error);
    assert!(!p.outside().join("new.txt").exists());

    let write_dangling = p
        .call("write_file", json!({"path": "dangling", "content": "x"}))
        .await;
    assert!(write_dangling.is_error);
    assert!(!p.outside().join("ghost.txt").exists());

    let edit = p
        .call(
            "edit_file",
            json!({"path": "link_file", "old_string": "secret", "new_string": "pwned"}),
        )
        .await;
    assert!(edit.is_error);
    assert_eq!(
        std::fs::read_to_string(p.outside().join("secret.txt")).unwrap(),
        "secret"
    );

    let shell = p
        .call("shell", json!({"command": "touch x", "cwd": "link_dir"}))
        .await;
    assert!(shell.is_error);
    assert!(!p.outside().join("x").exists());

    // Walking the tree does not follow the links out either.
    let grep = p.call("grep", json!({"pattern": "secret"})).await;
    assert_eq!(grep.content, "No matches found.");

    // A link that stays inside the project is fine.
    p.write("real/inner.txt", "inner\n");
    std::os::unix::fs::symlink(p.path("real"), p.path("alias")).unwrap();
    let inner = p
        .call("read_file", json!({"path": "alias/inner.txt"}))
        .await;
    assert!(!inner.is_error, "{}", inner.content);
}
