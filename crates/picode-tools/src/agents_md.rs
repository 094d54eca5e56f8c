//! Project and user instructions from `AGENTS.md` files.

use std::path::Path;

/// Reads `AGENTS.md` from the user's config dir and then from the project
/// root, and joins the non-empty ones under headings that say where each
/// came from. The project file comes last so that, when the two disagree,
/// the more specific instructions are the ones the model read most recently.
///
/// Without `project_trusted` the project's file is left out: a cloned
/// repository's instructions are not the user's.
pub fn load_agents_md(
    project_root: &Path,
    user_config_dir: Option<&Path>,
    project_trusted: bool,
) -> Option<String> {
    let sources = [
        user_config_dir.map(|dir| ("User instructions", dir.join("AGENTS.md"))),
        project_trusted.then(|| ("Project instructions", project_root.join("AGENTS.md"))),
    ];
    let sections: Vec<String> = sources
        .into_iter()
        .flatten()
        .filter_map(|(heading, path)| {
            let text = std::fs::read_to_string(&path).ok()?;
            let text = text.trim();
            if text.is_empty() {
                return None;
            }
            Some(format!("# {heading} ({})\n\n{text}\n", path.display()))
        })
        .collect();
    if sections.is_empty() {
        None
    } else {
        Some(sections.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_then_project_with_headings() {
        let user = tempfile::tempdir().unwrap();
        let project = tempfile::tempdir().unwrap();
        assert_eq!(
            load_agents_md(project.path(), Some(user.path()), true),
            None
        );

        std::fs::write(project.path().join("AGENTS.md"), "Run cargo test.\n").unwrap();
        let only_project = load_agents_md(project.path(), None, true).unwrap();
        assert!(only_project.starts_with("# Project instructions"));
        assert!(only_project.contains("Run cargo test."));

        std::fs::write(user.path().join("AGENTS.md"), "Be brief.").unwrap();
        std::fs::write(project.path().join("AGENTS.md"), "Run cargo test.").unwrap();
        let both = load_agents_md(project.path(), Some(user.path()), true).unwrap();
        let user_at = both.find("Be brief.").unwrap();
        let project_at = both.find("Run cargo test.").unwrap();
        assert!(user_at < project_at);
        assert!(both.contains("# User instructions"));
    }
}
