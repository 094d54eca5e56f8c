//! AGENTS.md loading.

use picode_tools::load_agents_md;

#[test]
fn user_and_project_instructions_are_joined_user_first() {
    let user = tempfile::tempdir().unwrap();
    let project = tempfile::tempdir().unwrap();
    assert!(load_agents_md(project.path(), Some(user.path()), true).is_none());

    std::fs::write(user.path().join("AGENTS.md"), "Prefer small diffs.\n").unwrap();
    std::fs::write(
        project.path().join("AGENTS.md"),
        "Run `cargo test` before finishing.\n",
    )
    .unwrap();
    let text = load_agents_md(project.path(), Some(user.path()), true).unwrap();
    let user_at = text.find("Prefer small diffs.").unwrap();
    let project_at = text.find("Run `cargo test`").unwrap();
    assert!(user_at < project_at);
    assert!(text.contains("# User instructions"));
    assert!(text.contains("# Project instructions"));

    let project_only = load_agents_md(project.path(), None, true).unwrap();
    assert!(!project_only.contains("Prefer small diffs."));
}
