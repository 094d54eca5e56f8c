//! Test fixtures: an isolated PiCode environment and a way to run the binary.

use std::path::PathBuf;
use std::process::Output;

use fake_llm::FakeLlm;
use tempfile::TempDir;

pub const BIN: &str = env!("CARGO_BIN_EXE_picode");

/// A project, a user config dir and a data dir, all temporary.
pub struct TestEnv {
    _root: TempDir,
    pub project: PathBuf,
    pub config_dir: PathBuf,
    pub data_dir: PathBuf,
    pub home: PathBuf,
}

impl TestEnv {
    pub fn new() -> TestEnv {
        // Outside the system temp dir: PiCode's config and data dirs are
        // hidden from sandboxed commands, and inside /tmp that would leave
        // /tmp's top level read-only for the compilers the tests run.
        let root = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
        let project = root.path().join("project");
        let config_dir = root.path().join("config");
        let data_dir = root.path().join("data");
        let home = root.path().join("home");
        for dir in [&project, &config_dir, &data_dir, &home] {
            std::fs::create_dir_all(dir).unwrap();
        }
        TestEnv {
            _root: root,
            project,
            config_dir,
            data_dir,
            home,
        }
    }

    /// Writes the user config with one provider named `fake` of `kind`.
    pub fn with_provider(self, kind: &str, fake: &FakeLlm) -> TestEnv {
        self.write_user_config(&provider_toml("fake", kind, &fake.base_url()));
        self
    }

    pub fn write_user_config(&self, text: &str) {
        std::fs::write(self.config_dir.join("picode.toml"), text).unwrap();
    }

    pub fn write(&self, rel: &str, text: &str) {
        let path = self.project.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.project.join(rel)).unwrap()
    }

    /// The binary with an environment that points only at the temp dirs.
    pub fn command(&self) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(BIN);
        self.isolate(&mut cmd);
        cmd.current_dir(&self.project);
        cmd.kill_on_drop(true);
        cmd
    }

    pub fn isolate(&self, cmd: &mut tokio::process::Command) {
        for (key, _) in std::env::vars() {
            if key.starts_with("PICODE_") || key.starts_with("XDG_") {
                cmd.env_remove(key);
            }
        }
        cmd.env("PICODE_CONFIG_DIR", &self.config_dir)
            .env("PICODE_DATA_DIR", &self.data_dir)
            .env("HOME", &self.home)
            .env("PICODE_SECRET_STORE", "file")
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG");
    }

    /// Runs `picode ARGS` to completion.
    pub async fn run(&self, args: &[&str]) -> Run {
        let output = self
            .command()
            .args(args)
            .output()
            .await
            .expect("run picode");
        Run::from(output)
    }
}

/// A `[providers.NAME]` table with fast retries.
pub fn provider_toml(name: &str, kind: &str, base_url: &str) -> String {
    format!(
        "default_provider = \"{name}\"\n\
         [providers.{name}]\n\
         kind = \"{kind}\"\n\
         base_url = \"{base_url}\"\n\
         model = \"fake-model\"\n\
         api_key = \"test-key\"\n\
         max_retries = 1\n\
         retry_base_ms = 10\n\
         [providers.{name}.pricing]\n\
         input_per_mtok = 3.0\n\
         output_per_mtok = 15.0\n"
    )
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        let last = self.stdout.lines().last().unwrap_or("");
        serde_json::from_str(last).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }

    pub fn assert_code(&self, code: i32) -> &Run {
        assert_eq!(
            self.code, code,
            "exit code\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

/// The tool results a recorded request carried back to the model, as
/// `(call id, content)`, whatever the wire format.
pub fn tool_results(body: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for m in body["messages"].as_array().into_iter().flatten() {
        // OpenAI: {"role": "tool", "tool_call_id", "content"}
        if m["role"] == "tool" {
            out.push((
                m["tool_call_id"].as_str().unwrap_or("").to_owned(),
                m["content"].as_str().unwrap_or("").to_owned(),
            ));
        }
        // Anthropic: {"role": "user", "content": [{"type": "tool_result", ...}]}
        for part in m["content"].as_array().into_iter().flatten() {
            if part["type"] == "tool_result" {
                let content = match &part["content"] {
                    serde_json::Value::String(s) => s.clone(),
                    other => other
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|p| p["text"].as_str())
                        .collect(),
                };
                out.push((
                    part["tool_use_id"].as_str().unwrap_or("").to_owned(),
                    content,
                ));
            }
        }
    }
    out
}

/// Ids of the tool calls the assistant messages of a request carry.
pub fn tool_call_ids(body: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    for m in body["messages"].as_array().into_iter().flatten() {
        for call in m["tool_calls"].as_array().into_iter().flatten() {
            out.push(call["id"].as_str().unwrap_or("").to_owned());
        }
        for part in m["content"].as_array().into_iter().flatten() {
            if part["type"] == "tool_use" {
                out.push(part["id"].as_str().unwrap_or("").to_owned());
            }
        }
    }
    out
}

impl TestEnv {
    /// Runs `picode trust` with `answer` on stdin.
    pub async fn trust_answering(&self, answer: &str) -> Run {
        use tokio::io::AsyncWriteExt as _;
        let mut child = self
            .command()
            .arg("trust")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run picode trust");
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(answer.as_bytes()).await.unwrap();
        drop(stdin);
        Run::from(child.wait_with_output().await.unwrap())
    }
}
