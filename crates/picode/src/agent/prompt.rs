//! The system prompt: who the agent is, how it should work, where it is,
//! and the user's and project's `AGENTS.md` instructions.

use std::path::Path;

use picode_tools::PermissionMode;

const BASE: &str = "You are PiCode, an AI coding assistant working in the user's project \
through tools. Work like a careful senior engineer:
- Read the relevant files before changing them; never guess at code you have not seen.
- Prefer small, targeted edits (edit_file) over rewriting whole files.
- After changing code, run the project's tests or build with the shell tool when that is cheap, \
and fix what you broke.
- If a tool returns an error, read it and adjust; if the user declined an action, do not retry \
it, ask how to proceed instead.
- Keep answers short. When you are done, say what you changed and how you verified it.";

/// Builds the system prompt for a project.
pub fn system_prompt(project: &Path, mode: PermissionMode, agents_md: Option<&str>) -> String {
    let mut prompt = String::from(BASE);
    prompt.push_str(&format!(
        "\n\nEnvironment:\n- Project root (all paths are relative to it): {}\n- Platform: {} {}\n",
        project.display(),
        std::env::consts::OS,
        std::env::consts::ARCH,
    ));
    prompt.push_str(&format!("- Permission mode: {mode}\n"));
    if mode == PermissionMode::Plan {
        prompt.push_str(
            "\nYou are in plan mode: you may read and search, but every change and every \
             command will be refused. Investigate, then describe the plan step by step.\n",
        );
    }
    if let Some(md) = agents_md {
        prompt.push_str("\nFollow these instructions from AGENTS.md files:\n\n");
        prompt.push_str(md);
    }
    prompt
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn includes_mode_and_agents_md() {
        let p = system_prompt(Path::new("proj"), PermissionMode::Plan, Some("Use tabs."));
        assert!(p.contains("plan mode"));
        assert!(p.contains("Use tabs."));
        assert!(p.contains("proj"));
    }
}
