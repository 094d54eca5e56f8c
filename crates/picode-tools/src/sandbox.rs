//! What a shell command may touch: a scrubbed environment and, on Linux, a
//! Landlock sandbox.
//!
//! The environment a command (or an MCP server) starts with is the agent's
//! own minus anything that looks like a secret: provider keys, `PICODE_*`
//! variables, and names containing `KEY`, `TOKEN`, `SECRET`, `PASSWORD`,
//! `CREDENTIAL` and the like. The user's config can add names back
//! (`shell_env_allow`), never the project's.
//!
//! The sandbox uses Landlock through the `landlock` crate. It is applied on a
//! short-lived thread made only to spawn the command: Landlock restricts the
//! calling thread and what it starts, so the agent itself stays free and no
//! `pre_exec` (unsafe) is needed. Inside the sandbox:
//!
//! - everything is readable and executable except the hidden directories
//!   (PiCode's config dir with its key files, and its data dir with sessions
//!   and checkpoints); their ancestors keep only directory listing;
//! - writes go only to the project, the temp directories and `/dev`; where a
//!   hidden directory lies inside one of those (a config dir under `/tmp`),
//!   that root's top level becomes read-only and only its other entries stay
//!   writable, because Landlock can grant but not carve out;
//! - TCP `connect` and `bind` are refused unless the user allows the network
//!   (Landlock ABI 4, Linux 6.7); UDP is not covered by that ABI;
//! - abstract UNIX sockets and signals outside the sandbox are refused
//!   (ABI 6, Linux 6.12), when the kernel has it;
//! - PiCode's own environment (where provider keys are) is out of reach
//!   through `/proc/PID/environ`: Landlock refuses it to a sandboxed command
//!   of an ordinary user, and the `picode` binary makes itself non-dumpable,
//!   which refuses it to unsandboxed commands too. A command run as root
//!   read it on the Linux 6.18 this was tested on, sandbox or not.
//!
//! What it does not cover: connecting to pathname UNIX sockets such as a
//! D-Bus session bus (the kernel can mediate that only from ABI 9), and
//! anything the user's own account can do without the file system.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use landlock::{
    Access, AccessFs, AccessNet, CompatLevel, Compatible, LandlockStatus, PathBeneath, PathFd,
    Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};
use serde::{Deserialize, Serialize};

/// Whether shell commands are confined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SandboxMode {
    /// Never confine.
    Off,
    /// Confine where the kernel can; say once when it cannot and go on.
    #[default]
    Auto,
    /// Refuse to run commands that cannot be confined.
    Required,
}

/// The sandbox and environment policy for commands and MCP servers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SandboxConfig {
    pub mode: SandboxMode,
    /// Let confined commands open TCP connections and listen.
    pub allow_network: bool,
    /// Directories a confined command may write besides the project and the
    /// temp dirs.
    pub writable: Vec<PathBuf>,
    /// Directories a confined command may not read (PiCode's config and data dirs).
    pub hidden: Vec<PathBuf>,
    /// Variables kept although their names look secret.
    pub env_allow: Vec<String>,
    /// Variables always removed (the providers' `api_key_env` names).
    pub env_deny: Vec<String>,
}

/// Parts of variable names that mark a secret.
const SECRET_WORDS: &[&str] = &[
    "KEY",
    "TOKEN",
    "SECRET",
    "PASSWORD",
    "PASSWD",
    "PASSPHRASE",
    "CREDENTIAL",
    "AUTH",
    "COOKIE",
    "PRIVATE",
];

/// Whole names that carry secrets without saying so.
const SECRET_NAMES: &[&str] = &[
    "DATABASE_URL",
    "DBUS_SESSION_BUS_ADDRESS",
    "SSH_AUTH_SOCK",
    "GPG_AGENT_INFO",
    "KRB5CCNAME",
    "NETRC",
];

/// Whether a variable is removed from a command's environment.
pub fn is_secret_name(name: &str, policy: &SandboxConfig) -> bool {
    if policy.env_allow.iter().any(|a| a == name) {
        return false;
    }
    if policy.env_deny.iter().any(|d| d == name) {
        return true;
    }
    let upper = name.to_ascii_uppercase();
    if upper.starts_with("PICODE_") || SECRET_NAMES.contains(&upper.as_str()) {
        return true;
    }
    // Split on the usual separators so `MONKEY` or `KEYBOARD_LAYOUT` stay.
    upper
        .split(|c: char| !c.is_ascii_alphanumeric())
        .any(|word| {
            SECRET_WORDS
                .iter()
                .any(|s| word == *s || word.strip_suffix('S') == Some(*s) || is_compound(word, s))
        })
}

/// `APIKEY`, `GHTOKEN`: a secret word glued to a short prefix.
fn is_compound(word: &str, secret: &str) -> bool {
    word.strip_suffix(secret).is_some_and(|prefix| {
        matches!(prefix, "API" | "GH" | "NPM" | "ACCESS" | "AUTH" | "PRIVATE")
    })
}

/// The environment a command starts with: the agent's own, scrubbed.
pub fn scrubbed_env(policy: &SandboxConfig) -> Vec<(OsString, OsString)> {
    std::env::vars_os()
        .filter(|(k, _)| match k.to_str() {
            Some(name) => !is_secret_name(name, policy),
            // A name that is not UTF-8 cannot be checked; leave it out.
            None => false,
        })
        .collect()
}

/// What Landlock could enforce for a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confinement {
    /// The policy was not applied (mode off, or a permission mode without sandbox).
    NotRequested,
    /// Everything asked for is enforced.
    Full,
    /// Enforced in part; the text says what is missing.
    Partial(String),
    /// The kernel enforces nothing; the text says why.
    Unavailable(String),
}

/// A policy resolved for one command: which paths get which rights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Policy {
    read: Vec<PathBuf>,
    list_only: Vec<PathBuf>,
    write: Vec<PathBuf>,
    allow_network: bool,
}

/// The directories a command may write: the project and the temp dirs.
fn writable_roots(project: &Path, extra: &[PathBuf]) -> Vec<PathBuf> {
    let mut roots = extra.to_vec();
    roots.extend([
        project.to_owned(),
        std::env::temp_dir(),
        PathBuf::from("/tmp"),
        PathBuf::from("/var/tmp"),
        PathBuf::from("/dev/shm"),
        PathBuf::from("/dev"),
    ]);
    roots.retain(|p| p.exists());
    roots
}

impl Policy {
    pub(crate) fn for_project(project: &Path, cfg: &SandboxConfig) -> Policy {
        let hidden: Vec<PathBuf> = cfg
            .hidden
            .iter()
            .filter_map(|h| h.canonicalize().ok())
            .collect();
        let mut read = Vec::new();
        let mut list_only = BTreeSet::new();
        carve(Path::new("/"), &hidden, &mut read, &mut list_only);
        let mut write = Vec::new();
        for root in writable_roots(project, &cfg.writable) {
            let root = root.canonicalize().unwrap_or(root);
            carve(&root, &hidden, &mut write, &mut BTreeSet::new());
        }
        Policy {
            read,
            list_only: list_only.into_iter().collect(),
            write,
            allow_network: cfg.allow_network,
        }
    }

    /// Restricts the calling thread (and what it starts from now on).
    pub(crate) fn restrict_current_thread(&self) -> Result<Confinement, String> {
        let fs_abi = ABI::V6;
        let mut ruleset = Ruleset::default()
            .set_compatibility(CompatLevel::BestEffort)
            .handle_access(AccessFs::from_all(fs_abi))
            .map_err(|e| e.to_string())?;
        if !self.allow_network {
            ruleset = ruleset
                .handle_access(AccessNet::from_all(ABI::V4))
                .map_err(|e| e.to_string())?;
        }
        ruleset = ruleset
            .scope(Scope::from_all(ABI::V6))
            .map_err(|e| e.to_string())?;
        let mut created = ruleset.create().map_err(|e| e.to_string())?;
        let rules = [
            (&self.read, AccessFs::from_read(fs_abi)),
            (&self.list_only, AccessFs::ReadDir.into()),
            (&self.write, AccessFs::from_all(fs_abi)),
        ];
        for (paths, access) in rules {
            for path in paths {
                // A path that vanished since the policy was made is skipped.
                let Ok(fd) = PathFd::new(path) else { continue };
                let access = if path.is_dir() {
                    access
                } else {
                    access & AccessFs::from_file(fs_abi)
                };
                created = created
                    .add_rule(PathBeneath::new(fd, access))
                    .map_err(|e| e.to_string())?;
            }
        }
        let status = created.restrict_self().map_err(|e| e.to_string())?;
        let abi = match status.landlock {
            LandlockStatus::Available { effective_abi, .. } => Some(effective_abi),
            LandlockStatus::NotEnabled => return Ok(Confinement::Unavailable(
                "Landlock is built into this kernel but not enabled (boot with lsm=...,landlock)"
                    .to_owned(),
            )),
            LandlockStatus::NotImplemented => {
                return Ok(Confinement::Unavailable(
                    "this kernel has no Landlock (Linux 5.13 or later is needed)".to_owned(),
                ))
            }
        };
        Ok(match status.ruleset {
            RulesetStatus::FullyEnforced => Confinement::Full,
            RulesetStatus::NotEnforced => {
                Confinement::Unavailable("Landlock enforced nothing on this kernel".to_owned())
            }
            RulesetStatus::PartiallyEnforced => {
                let abi = abi.unwrap_or(ABI::Unsupported);
                let mut missing = Vec::new();
                if !self.allow_network && abi < ABI::V4 {
                    missing.push("network (needs Linux 6.7)");
                }
                if abi < ABI::V6 {
                    missing.push("abstract sockets and signals (need Linux 6.12)");
                }
                if abi < ABI::V3 {
                    missing.push("truncation (needs Linux 6.2)");
                }
                Confinement::Partial(format!("not confined: {}", missing.join(", ")))
            }
        })
    }

    /// Whether what was enforced is enough for `sandbox = "required"`:
    /// the file system always, and the network unless it is allowed.
    pub(crate) fn meets_requirement(&self, c: &Confinement) -> bool {
        match c {
            Confinement::Full => true,
            Confinement::Partial(missing) => self.allow_network || !missing.contains("network"),
            Confinement::NotRequested | Confinement::Unavailable(_) => false,
        }
    }
}

/// Splits the tree under `root` around the hidden paths: whole subtrees
/// without a hidden path go to `grant`, directories on the way to one go to
/// `list_only`, hidden paths go nowhere.
fn carve(
    root: &Path,
    hidden: &[PathBuf],
    grant: &mut Vec<PathBuf>,
    list_only: &mut BTreeSet<PathBuf>,
) {
    if hidden.iter().any(|h| root.starts_with(h)) {
        return;
    }
    if !hidden.iter().any(|h| h.starts_with(root)) {
        grant.push(root.to_owned());
        return;
    }
    list_only.insert(root.to_owned());
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        carve(&entry.path(), hidden, grant, list_only);
    }
}

/// Spawns `cmd` from a thread made for it, confined by `policy` when given.
/// With `required`, a command that cannot be confined is not started.
pub(crate) async fn spawn(
    mut cmd: tokio::process::Command,
    policy: Option<Policy>,
    required: bool,
) -> Result<(tokio::process::Child, Confinement), String> {
    let Some(policy) = policy else {
        return cmd
            .spawn()
            .map(|child| (child, Confinement::NotRequested))
            .map_err(|e| e.to_string());
    };
    let runtime = tokio::runtime::Handle::current();
    let (tx, rx) = tokio::sync::oneshot::channel();
    // A fresh thread, never a pooled one: the restriction stays with the
    // thread for good, so it must end with the spawn.
    let spawner = std::thread::Builder::new()
        .name("picode-sandbox".to_owned())
        .spawn(move || {
            let _entered = runtime.enter();
            let result = policy.restrict_current_thread().and_then(|confinement| {
                if required && !policy.meets_requirement(&confinement) {
                    return Err(refusal(&confinement));
                }
                let child = cmd.spawn().map_err(|e| e.to_string())?;
                Ok((child, confinement))
            });
            let _ = tx.send(result);
        });
    if let Err(e) = spawner {
        return Err(format!("starting the sandbox thread: {e}"));
    }
    rx.await
        .unwrap_or_else(|_| Err("the sandbox thread ended without an answer".to_owned()))
}

fn refusal(c: &Confinement) -> String {
    let why = match c {
        Confinement::Unavailable(why) | Confinement::Partial(why) => why.as_str(),
        Confinement::Full | Confinement::NotRequested => "no confinement",
    };
    format!(
        "sandbox = \"required\" but the command cannot be confined ({why}); it was not run. \
         Set sandbox = \"auto\" in your picode.toml to run commands unconfined."
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_looking_names_are_removed_unless_allowed() {
        let mut policy = SandboxConfig {
            env_deny: vec!["MY_LLM".into()],
            ..SandboxConfig::default()
        };
        for name in [
            "ANTHROPIC_API_KEY",
            "OPENAI_API_KEY",
            "GITHUB_TOKEN",
            "AWS_SECRET_ACCESS_KEY",
            "PICODE_SERVE_TOKEN",
            "PICODE_KEY_PASSPHRASE",
            "DB_PASSWORD",
            "NPM_TOKEN",
            "APIKEY",
            "MY_LLM",
            "DATABASE_URL",
        ] {
            assert!(is_secret_name(name, &policy), "{name} kept");
        }
        for name in [
            "PATH",
            "HOME",
            "LANG",
            "KEYBOARD_LAYOUT",
            "MONKEY",
            "CARGO_HOME",
        ] {
            assert!(!is_secret_name(name, &policy), "{name} removed");
        }
        policy.env_allow.push("NPM_TOKEN".into());
        assert!(!is_secret_name("NPM_TOKEN", &policy));
    }

    #[test]
    fn required_accepts_only_a_confinement_that_covers_what_was_asked() {
        let closed = Policy::for_project(Path::new("/tmp"), &SandboxConfig::default());
        let open = Policy {
            allow_network: true,
            ..closed.clone()
        };
        let no_net = Confinement::Partial("not confined: network (needs Linux 6.7)".into());
        let no_scope = Confinement::Partial(
            "not confined: abstract sockets and signals (need Linux 6.12)".into(),
        );
        let none = Confinement::Unavailable("this kernel has no Landlock".into());
        assert!(closed.meets_requirement(&Confinement::Full));
        assert!(!closed.meets_requirement(&no_net));
        assert!(open.meets_requirement(&no_net));
        assert!(closed.meets_requirement(&no_scope));
        assert!(!closed.meets_requirement(&none));
        assert!(!open.meets_requirement(&Confinement::NotRequested));
        let refused = refusal(&none);
        assert!(refused.contains("sandbox = \"required\""), "{refused}");
        assert!(refused.contains("this kernel has no Landlock"), "{refused}");
        assert!(refused.contains("it was not run"), "{refused}");
    }

    #[test]
    fn carving_leaves_the_hidden_dir_out_and_lists_its_ancestors() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        for sub in ["a/secret", "a/open", "b"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        let mut grant = Vec::new();
        let mut list = BTreeSet::new();
        carve(&root, &[root.join("a/secret")], &mut grant, &mut list);
        grant.sort();
        assert_eq!(grant, vec![root.join("a/open"), root.join("b")]);
        assert_eq!(
            list.into_iter().collect::<Vec<_>>(),
            vec![root.clone(), root.join("a")]
        );
    }
}
