//! read_file, write_file, edit_file, list_files, grep and the git read tools.

use picode_tools::PermissionMode;
use serde_json::json;

use crate::support::{git, Project};

fn numbered_lines(n: usize) -> String {
    (1..=n).map(|i| format!("line{i}\n")).collect()
}

#[tokio::test]
async fn read_file_numbers_lines_and_honours_ranges() {
    let p = Project::new(PermissionMode::Ask).await;
    p.write("notes.txt", &numbered_lines(10));

    let all = p.call("read_file", json!({"path": "notes.txt"})).await;
    assert!(!all.is_error, "{}", all.content);
    assert!(all.content.starts_with("     1\tline1\n"));
    assert!(all.content.contains("    10\tline10\n"));
    assert!(!all.content.contains("showing lines"));

    let part = p
        .call(
            "read_file",
            json!({"path": "notes.txt", "offset": 3, "limit": 2}),
        )
        .await;
    assert!(!part.is_error, "{}", part.content);
    assert!(part.content.contains("     3\tline3\n     4\tline4\n"));
    assert!(!part.content.contains("line2\n"));
    assert!(!part.content.contains("line5"));
    assert!(part.content.contains("showing lines 3-4 of 10"));

    let past = p
        .call("read_file", json!({"path": "notes.txt", "offset": 11}))
        .await;
    assert!(past.is_error);
    assert!(past.content.contains("10 lines"), "{}", past.content);

    let missing = p.call("read_file", json!({"path": "nope.txt"})).await;
    assert!(missing.is_error);
    let no_args = p.call("read_file", json!({})).await;
    assert!(no_args.is_error);
    assert!(no_args.content.contains("missing required argument `path`"));
}

#[tokio::test]
async fn write_file_creates_directories_and_reports_a_diff() {
    let p = Project::new(PermissionMode::FullAuto).await;
    let out = p
        .call(
            "write_file",
            json!({"path": "src/deep/new.rs", "content": "fn hello() {}\n"}),
        )
        .await;
    assert!(!out.is_error, "{}", out.content);
    assert!(out.content.contains("Created src/deep/new.rs"));
    assert_eq!(p.read("src/deep/new.rs"), "fn hello() {}\n");
    assert!(out.diff.unwrap().contains("+fn hello() {}"));

    let again = p
        .call(
            "write_file",
            json!({"path": "src/deep/new.rs", "content": "fn bye() {}\n"}),
        )
        .await;
    assert!(again.content.contains("Updated"));
    let diff = again.diff.unwrap();
    assert!(
        diff.contains("-fn hello() {}") && diff.contains("+fn bye() {}"),
        "{diff}"
    );
}

#[tokio::test]
async fn edit_file_replaces_a_unique_match_and_shows_the_diff() {
    let p = Project::new(PermissionMode::FullAuto).await;
    p.write("src/lib.rs", "fn a() {\n    1\n}\n\nfn b() {\n    2\n}\n");
    let out = p
        .call(
            "edit_file",
            json!({"path": "src/lib.rs", "old_string": "    2\n", "new_string": "    20\n"}),
        )
        .await;
    assert!(!out.is_error, "{}", out.content);
    assert_eq!(
        p.read("src/lib.rs"),
        "fn a() {\n    1\n}\n\nfn b() {\n    20\n}\n"
    );
    // The model sees the diff, and so does the UI.
    assert!(out.content.contains("--- a/src/lib.rs"), "{}", out.content);
    assert!(out.content.contains("-    2\n+    20\n"), "{}", out.content);
    assert!(out.diff.unwrap().contains("+    20"));
}

#[tokio::test]
async fn edit_file_refuses_zero_or_several_matches_and_leaves_the_file() {
    let p = Project::new(PermissionMode::FullAuto).await;
    let original = "x = 1\nx = 1\nx = 1\ny = 2\n";
    p.write("conf.txt", original);

    let none = p
        .call(
            "edit_file",
            json!({"path": "conf.txt", "old_string": "z = 3", "new_string": "z = 4"}),
        )
        .await;
    assert!(none.is_error);
    assert!(none.content.contains("not found"), "{}", none.content);

    let many = p
        .call(
            "edit_file",
            json!({"path": "conf.txt", "old_string": "x = 1", "new_string": "x = 9"}),
        )
        .await;
    assert!(many.is_error);
    assert!(many.content.contains("matched 3 times"), "{}", many.content);
    assert_eq!(p.read("conf.txt"), original);

    let missing_file = p
        .call(
            "edit_file",
            json!({"path": "nope.txt", "old_string": "a", "new_string": "b"}),
        )
        .await;
    assert!(missing_file.is_error);
    assert!(missing_file.content.contains("does not exist"));
}

#[tokio::test]
async fn list_files_respects_gitignore_and_skips_dot_git() {
    let p = Project::new(PermissionMode::Ask).await;
    p.write(".gitignore", "target/\n*.log\n");
    p.write("src/main.rs", "fn main() {}\n");
    p.write("src/util/mod.rs", "\n");
    p.write("target/debug/build.rs", "\n");
    p.write("debug.log", "noise\n");
    p.write("README.md", "# hi\n");
    p.git_init();

    let all = p.call("list_files", json!({})).await;
    assert!(!all.is_error, "{}", all.content);
    let listed: Vec<&str> = all.content.lines().collect();
    assert_eq!(
        listed,
        [".gitignore", "README.md", "src/main.rs", "src/util/mod.rs"]
    );

    let rust = p.call("list_files", json!({"pattern": "*.rs"})).await;
    assert_eq!(rust.content, "src/main.rs\nsrc/util/mod.rs");

    let top = p.call("list_files", json!({"pattern": "src/*.rs"})).await;
    assert_eq!(top.content, "src/main.rs");

    let sub = p
        .call(
            "list_files",
            json!({"pattern": "**/*.rs", "path": "src/util"}),
        )
        .await;
    assert_eq!(sub.content, "src/util/mod.rs");

    let none = p.call("list_files", json!({"pattern": "*.py"})).await;
    assert_eq!(none.content, "No files matched.");
}

#[tokio::test]
async fn grep_finds_matches_with_file_and_line() {
    let p = Project::new(PermissionMode::Ask).await;
    p.write(".gitignore", "target/\n");
    p.write(
        "src/main.rs",
        "use std::io;\n\nfn main() {\n    run();\n}\n",
    );
    p.write("src/other.txt", "fn main is mentioned here too\n");
    p.write("target/gen.rs", "fn main() {}\n");

    let out = p.call("grep", json!({"pattern": r"fn\s+main"})).await;
    assert!(!out.is_error, "{}", out.content);
    let lines: Vec<&str> = out.content.lines().collect();
    assert_eq!(
        lines,
        [
            "src/main.rs:3:fn main() {",
            "src/other.txt:1:fn main is mentioned here too"
        ]
    );

    let with_glob = p
        .call(
            "grep",
            json!({"pattern": "MAIN", "case_insensitive": true, "glob": "*.txt"}),
        )
        .await;
    assert_eq!(
        with_glob.content,
        "src/other.txt:1:fn main is mentioned here too"
    );

    let one_file = p
        .call("grep", json!({"pattern": "run", "path": "src/main.rs"}))
        .await;
    assert_eq!(one_file.content, "src/main.rs:4:    run();");

    let nothing = p.call("grep", json!({"pattern": "zzz"})).await;
    assert_eq!(nothing.content, "No matches found.");

    let bad = p.call("grep", json!({"pattern": "("})).await;
    assert!(bad.is_error);
    assert!(bad.content.contains("invalid regex"));
}

#[tokio::test]
async fn grep_caps_the_number_of_results() {
    let p = Project::new(PermissionMode::Ask).await;
    p.write("many.txt", &"hit\n".repeat(500));
    let out = p.call("grep", json!({"pattern": "hit"})).await;
    assert_eq!(
        out.content
            .lines()
            .filter(|l| l.starts_with("many.txt:"))
            .count(),
        200
    );
    assert!(out.content.contains("stopped after 200 matches"));
}

#[tokio::test]
async fn git_status_and_diff_read_the_users_repo_without_changing_it() {
    let p = Project::new(PermissionMode::Plan).await;
    p.write("a.txt", "one\n");
    p.git_init();
    p.write("a.txt", "two\n");
    p.write("new.txt", "new\n");
    let index_before = std::fs::read(p.path(".git/index")).unwrap();

    let status = p.call("git_status", json!({})).await;
    assert!(!status.is_error, "{}", status.content);
    assert!(status.content.contains("## main"), "{}", status.content);
    assert!(status.content.contains(" M a.txt"));
    assert!(status.content.contains("?? new.txt"));

    let diff = p.call("git_diff", json!({})).await;
    assert!(diff.content.contains("-one\n+two"), "{}", diff.content);
    let staged = p.call("git_diff", json!({"staged": true})).await;
    assert_eq!(staged.content, "(no changes)");

    assert_eq!(std::fs::read(p.path(".git/index")).unwrap(), index_before);
    assert_eq!(
        git(&p.root(), &["status", "--porcelain"]),
        " M a.txt\n?? new.txt\n"
    );
}

#[tokio::test]
async fn unknown_tools_and_bad_arguments_are_errors_not_panics() {
    let p = Project::new(PermissionMode::FullAuto).await;
    let unknown = p.call("rm_rf", json!({})).await;
    assert!(unknown.is_error);
    assert!(unknown.content.contains("unknown tool"));
    let wrong_type = p.call("read_file", json!({"path": 42})).await;
    assert!(wrong_type.is_error);
    assert!(wrong_type.content.contains("must be a string"));
    let not_object = p.call("write_file", json!("hello")).await;
    assert!(not_object.is_error);
}
