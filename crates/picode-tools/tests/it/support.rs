//! Shared helpers: a temp project with its own checkpoint store, and approvers.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use picode_tools::{
    AlwaysApprove, ApprovalRequest, Approver, PermissionMode, ToolOutput, Toolbox, ToolboxConfig,
};
use serde_json::Value;
use tempfile::TempDir;

/// A project directory, a checkpoint store outside it, and a toolbox on them.
pub struct Project {
    /// Holds the project and, beside it, a sibling `outside` directory.
    pub base: TempDir,
    pub store: TempDir,
    pub toolbox: Toolbox,
}

impl Project {
    pub async fn new(mode: PermissionMode) -> Project {
        Project::with(mode, |_| {}).await
    }

    /// Lets a test adjust the config (timeouts, caps, MCP servers) first.
    pub async fn with(mode: PermissionMode, adjust: impl FnOnce(&mut ToolboxConfig)) -> Project {
        let base = tempfile::tempdir().unwrap();
        std::fs::create_dir(base.path().join("project")).unwrap();
        std::fs::create_dir(base.path().join("outside")).unwrap();
        let store = tempfile::tempdir().unwrap();
        let mut cfg = ToolboxConfig::new(base.path().join("project"));
        cfg.mode = mode;
        cfg.checkpoint_dir = Some(store.path().to_owned());
        adjust(&mut cfg);
        let toolbox = Toolbox::new(cfg).await.unwrap();
        Project {
            base,
            store,
            toolbox,
        }
    }

    pub fn root(&self) -> PathBuf {
        self.base.path().join("project")
    }

    /// A directory next to the project, which the tools must never touch.
    pub fn outside(&self) -> PathBuf {
        self.base.path().join("outside")
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root().join(rel)
    }

    pub fn write(&self, rel: &str, content: &str) {
        let path = self.path(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap()
    }

    /// Calls a tool with an approver that says yes.
    pub async fn call(&self, name: &str, args: Value) -> ToolOutput {
        self.toolbox.call(name, args, &AlwaysApprove).await
    }

    /// Makes the project a git repository with one commit of its current files.
    pub fn git_init(&self) {
        git(&self.root(), &["init", "-q", "-b", "main"]);
        git(&self.root(), &["add", "-A"]);
        git(&self.root(), &["commit", "-q", "-m", "initial"]);
    }
}

/// Runs git in `dir` with a fixed identity and returns stdout; panics on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .args(["-c", "user.name=Test", "-c", "user.email=test@example.com"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git must be installed to run these tests (apt-get install git)");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Answers every request the same way and remembers what was asked.
pub struct Recorder {
    answer: bool,
    pub requests: Mutex<Vec<ApprovalRequest>>,
}

impl Recorder {
    pub fn new(answer: bool) -> Recorder {
        Recorder {
            answer,
            requests: Mutex::new(Vec::new()),
        }
    }

    pub fn asked(&self) -> Vec<ApprovalRequest> {
        self.requests.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl Approver for Recorder {
    async fn approve(&self, req: &ApprovalRequest) -> bool {
        self.requests.lock().unwrap().push(req.clone());
        self.answer
    }
}
