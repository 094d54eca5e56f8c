//! Permission modes and approvals, enforced in the tool layer.

use picode_tools::{AlwaysApprove, PermissionMode, ToolKind};
use serde_json::json;

use crate::support::{Project, Recorder};

#[tokio::test]
async fn plan_mode_refuses_every_change_whatever_the_approver_says() {
    let p = Project::new(PermissionMode::Plan).await;
    p.write("a.txt", "original\n");
    let yes = Recorder::new(true);

    for (tool, args) in [
        (
            "write_file",
            json!({"path": "a.txt", "content": "changed\n"}),
        ),
        ("write_file", json!({"path": "new.txt", "content": "new\n"})),
        (
            "edit_file",
            json!({"path": "a.txt", "old_string": "original", "new_string": "changed"}),
        ),
        (
            "shell",
            json!({"command": "echo changed > a.txt; touch made.txt"}),
        ),
        // Even malformed calls get the plan-mode answer, not an argument error.
        ("shell", json!({})),
    ] {
        let out = p.toolbox.call(tool, args, &yes).await;
        assert!(out.is_error, "{tool} ran in plan mode");
        assert!(
            out.content.contains("not allowed in plan mode"),
            "{}",
            out.content
        );
    }
    assert!(yes.asked().is_empty(), "plan mode must not even ask");
    assert_eq!(p.read("a.txt"), "original\n");
    assert!(!p.path("new.txt").exists());
    assert!(!p.path("made.txt").exists());
    assert!(p.toolbox.executed_commands().is_empty());

    // Looking is still allowed.
    let read = p
        .toolbox
        .call("read_file", json!({"path": "a.txt"}), &yes)
        .await;
    assert!(!read.is_error);
    let grep = p
        .toolbox
        .call("grep", json!({"pattern": "orig"}), &yes)
        .await;
    assert!(grep.content.contains("a.txt:1:original"));
    let list = p.toolbox.call("list_files", json!({}), &yes).await;
    assert!(!list.is_error);
}

#[tokio::test]
async fn ask_mode_asks_for_edits_and_commands_but_not_reads() {
    let p = Project::new(PermissionMode::Ask).await;
    p.write("a.txt", "one\n");
    let yes = Recorder::new(true);

    p.toolbox
        .call("read_file", json!({"path": "a.txt"}), &yes)
        .await;
    p.toolbox.call("list_files", json!({}), &yes).await;
    assert!(yes.asked().is_empty());

    let edit = p
        .toolbox
        .call(
            "edit_file",
            json!({"path": "a.txt", "old_string": "one", "new_string": "two"}),
            &yes,
        )
        .await;
    assert!(!edit.is_error, "{}", edit.content);
    let shell = p
        .toolbox
        .call("shell", json!({"command": "echo hi"}), &yes)
        .await;
    assert!(!shell.is_error);

    let asked = yes.asked();
    assert_eq!(asked.len(), 2);
    assert_eq!(asked[0].tool, "edit_file");
    assert_eq!(asked[0].kind, ToolKind::Edit);
    assert_eq!(asked[0].summary, "edit a.txt");
    assert!(asked[0].diff.as_deref().unwrap().contains("-one\n+two"));
    assert_eq!(asked[1].kind, ToolKind::Execute);
    assert_eq!(asked[1].summary, "echo hi");
    assert_eq!(p.read("a.txt"), "two\n");
}

#[tokio::test]
async fn a_declined_approval_changes_nothing_and_tells_the_model() {
    let p = Project::new(PermissionMode::Ask).await;
    p.write("a.txt", "one\n");
    let no = Recorder::new(false);

    let edit = p
        .toolbox
        .call(
            "edit_file",
            json!({"path": "a.txt", "old_string": "one", "new_string": "two"}),
            &no,
        )
        .await;
    assert!(edit.is_error);
    assert!(edit.content.contains("declined"), "{}", edit.content);
    assert_eq!(p.read("a.txt"), "one\n");

    let write = p
        .toolbox
        .call("write_file", json!({"path": "b.txt", "content": "b"}), &no)
        .await;
    assert!(write.content.contains("declined"));
    assert!(!p.path("b.txt").exists());
    assert_eq!(no.asked()[1].summary, "create b.txt");

    let shell = p
        .toolbox
        .call("shell", json!({"command": "touch c.txt"}), &no)
        .await;
    assert!(shell.content.contains("declined"));
    assert!(!p.path("c.txt").exists());
    assert!(p.toolbox.executed_commands().is_empty());
    assert_eq!(no.asked().len(), 3);
}

#[tokio::test]
async fn auto_edit_approves_edits_but_asks_for_commands() {
    let p = Project::new(PermissionMode::AutoEdit).await;
    let no = Recorder::new(false);
    let write = p
        .toolbox
        .call("write_file", json!({"path": "a.txt", "content": "a"}), &no)
        .await;
    assert!(!write.is_error, "{}", write.content);
    assert_eq!(p.read("a.txt"), "a");

    let shell = p
        .toolbox
        .call("shell", json!({"command": "touch b.txt"}), &no)
        .await;
    assert!(shell.content.contains("declined"));
    assert!(!p.path("b.txt").exists());
    let asked = no.asked();
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].tool, "shell");
}

#[tokio::test]
async fn full_auto_never_asks() {
    let p = Project::new(PermissionMode::FullAuto).await;
    let no = Recorder::new(false);
    let write = p
        .toolbox
        .call("write_file", json!({"path": "a.txt", "content": "a"}), &no)
        .await;
    assert!(!write.is_error);
    let shell = p
        .toolbox
        .call("shell", json!({"command": "touch b.txt"}), &no)
        .await;
    assert!(!shell.is_error, "{}", shell.content);
    assert!(p.path("b.txt").exists());
    assert!(no.asked().is_empty());
}

#[tokio::test]
async fn the_mode_can_change_between_calls() {
    let p = Project::new(PermissionMode::FullAuto).await;
    assert_eq!(p.toolbox.mode(), PermissionMode::FullAuto);
    p.toolbox.set_mode(PermissionMode::Plan);
    assert_eq!(p.toolbox.mode(), PermissionMode::Plan);
    let refused = p
        .toolbox
        .call(
            "write_file",
            json!({"path": "a.txt", "content": "a"}),
            &AlwaysApprove,
        )
        .await;
    assert!(refused.is_error);
    p.toolbox.set_mode(PermissionMode::FullAuto);
    let allowed = p
        .toolbox
        .call(
            "write_file",
            json!({"path": "a.txt", "content": "a"}),
            &AlwaysApprove,
        )
        .await;
    assert!(!allowed.is_error);
}
