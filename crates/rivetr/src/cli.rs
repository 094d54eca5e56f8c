//! The command line. Everything but `serve` is a client of the REST API
//! (`--api`, default `http://127.0.0.1:8000`; the token from `--token`,
//! `RIVETR_TOKEN` or the file `rivetr login` saved).

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use futures_util::StreamExt;
use serde_json::{json, Value};

#[derive(Parser, Debug)]
#[command(
    name = "rivetr",
    version,
    about = "Deploy apps from git to containers behind a built-in router"
)]
pub struct Cli {
    /// The API's address.
    #[arg(
        long,
        global = true,
        env = "RIVETR_API",
        default_value = "http://127.0.0.1:8000"
    )]
    pub api: String,
    /// API token (otherwise the one `rivetr login` saved).
    #[arg(long, global = true, env = "RIVETR_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the server: router, API and deploy queue.
    Serve(ServeArgs),
    /// Save an API token for the commands below (file mode 0600).
    Login { token: String },
    /// Create, list, inspect and delete apps.
    #[command(subcommand)]
    App(AppCommand),
    /// An app's state: what runs, where it answers, its recent deployments.
    Status { app: String },
    /// An app's environment variables.
    #[command(subcommand)]
    Env(EnvCommand),
    /// Build the app from its source and switch traffic to it.
    Deploy {
        app: String,
        /// Print the build log live until the deployment ends.
        #[arg(long, short)]
        follow: bool,
    },
    /// Switch back to an earlier good image without building.
    Rollback {
        app: String,
        /// The deployment to return to (default: the one before the current).
        #[arg(long)]
        to: Option<i64>,
        #[arg(long, short)]
        follow: bool,
    },
    /// The app's own output.
    Logs {
        app: String,
        #[arg(long, short)]
        follow: bool,
        #[arg(long, default_value_t = 100)]
        tail: usize,
    },
    /// A deployment's build log.
    BuildLog {
        deployment: i64,
        #[arg(long, short)]
        follow: bool,
    },
    /// Create an API token (admin only).
    Token {
        name: String,
        #[arg(long, default_value = "developer")]
        role: String,
    },
}

#[derive(Args, Debug, Default)]
pub struct ServeArgs {
    /// A TOML config file (keys as in the README).
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long)]
    pub database: Option<PathBuf>,
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// Router address (repeat for more than one).
    #[arg(long)]
    pub router_listen: Vec<std::net::SocketAddr>,
    #[arg(long)]
    pub api_listen: Option<std::net::SocketAddr>,
    #[arg(long)]
    pub base_domain: Option<String>,
    #[arg(long)]
    pub docker_host: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum AppCommand {
    Create {
        name: String,
        /// https://..., ssh://..., user@host:path, file:///... or a local path.
        #[arg(long)]
        git: String,
        #[arg(long, default_value = "main")]
        branch: String,
        /// Deploy this commit instead of the branch's head.
        #[arg(long)]
        commit: Option<String>,
        /// A custom domain (repeat for more).
        #[arg(long = "domain")]
        domains: Vec<String>,
        /// Private key for an ssh source; stored encrypted.
        #[arg(long)]
        ssh_key_file: Option<PathBuf>,
    },
    List,
    Status {
        app: String,
    },
    Delete {
        app: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum EnvCommand {
    /// `KEY=VALUE ...`; a bare `KEY` reads its value from standard input
    /// (keeps a secret out of the shell history and the process list).
    Set {
        app: String,
        #[arg(required = true)]
        pairs: Vec<String>,
        /// Store encrypted, never shown again.
        #[arg(long)]
        secret: bool,
    },
    List {
        app: String,
    },
    Unset {
        app: String,
        key: String,
    },
}

fn token_file() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("rivetr").join("token"))
}

/// A client of the API.
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    pub fn new(api: &str, token: Option<String>) -> anyhow::Result<Client> {
        let token = token.or_else(|| {
            token_file()
                .and_then(|p| std::fs::read_to_string(p).ok())
                .map(|t| t.trim().to_owned())
        });
        Ok(Client {
            http: reqwest::Client::builder().build()?,
            base: api.trim_end_matches('/').to_owned(),
            token,
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        req
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut req = self.request(method, path);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach the Rivetr API at {}", self.base))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let value: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if !status.is_success() {
            let message = value
                .get("error")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| value.to_string());
            bail!("{message} (HTTP {})", status.as_u16());
        }
        Ok(value)
    }

    /// Prints a deployment's log; the deployment's final status.
    async fn follow_build(&self, deployment: i64, follow: bool) -> anyhow::Result<Option<String>> {
        let resp = self
            .request(
                reqwest::Method::GET,
                &format!("/api/deployments/{deployment}/logs?follow={follow}"),
            )
            .send()
            .await?;
        if !resp.status().is_success() {
            bail!(
                "reading the log of deployment {deployment}: HTTP {}",
                resp.status().as_u16()
            );
        }
        let mut events = eventsource_stream::EventStream::new(resp.bytes_stream());
        let mut out = std::io::stdout().lock();
        while let Some(event) = events.next().await {
            let event = event.context("reading the log stream")?;
            let value: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
            match value.get("type").and_then(Value::as_str) {
                Some("line") => {
                    writeln!(out, "{}", value["text"].as_str().unwrap_or(""))?;
                    out.flush()?;
                }
                Some("end") => {
                    let status = value["status"].as_str().unwrap_or("unknown").to_owned();
                    match value["reason"].as_str() {
                        Some(r) => writeln!(out, "==> {status}: {r}")?,
                        None => writeln!(out, "==> {status}")?,
                    }
                    return Ok(Some(status));
                }
                _ => {}
            }
        }
        Ok(None)
    }
}

fn print_status(v: &Value) {
    println!("app:      {}", v["name"].as_str().unwrap_or(""));
    println!(
        "source:   {} ({})",
        v["git"].as_str().unwrap_or(""),
        v["branch"].as_str().unwrap_or("")
    );
    if let Some(hosts) = v["hosts"].as_array() {
        let hosts: Vec<&str> = hosts.iter().filter_map(Value::as_str).collect();
        println!("hosts:    {}", hosts.join(", "));
    }
    match v["running"].as_object() {
        Some(r) => println!(
            "running:  deployment {} ({}, commit {})",
            r["id"],
            r["image"].as_str().unwrap_or("?"),
            r["commit_sha"]
                .as_str()
                .map(|c| &c[..c.len().min(12)])
                .unwrap_or("?")
        ),
        None => println!("running:  nothing"),
    }
    println!("deployments:");
    for d in v["deployments"].as_array().into_iter().flatten() {
        let reason = d["reason"]
            .as_str()
            .map(|r| format!("  {r}"))
            .unwrap_or_default();
        println!(
            "  {:>5}  {:<10} {:<8}{reason}",
            d["id"],
            d["status"].as_str().unwrap_or(""),
            d["kind"].as_str().unwrap_or("")
        );
    }
}

/// Runs a client command; the process exit code.
pub async fn run_client(cli: Cli) -> anyhow::Result<i32> {
    let client = Client::new(&cli.api, cli.token)?;
    use reqwest::Method as M;
    match cli.command {
        Command::Serve(_) => unreachable!("serve is handled by main"),
        Command::Login { token } => {
            auth::SplitToken::parse(&token)
                .map_err(|_| anyhow::anyhow!("that is not a Rivetr token (id.secret)"))?;
            let path = token_file().context("no HOME or XDG_CONFIG_HOME to keep the token in")?;
            std::fs::create_dir_all(path.parent().expect("has a parent"))?;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)?;
            writeln!(f, "{token}")?;
            println!("token saved to {}", path.display());
        }
        Command::App(AppCommand::Create {
            name,
            git,
            branch,
            commit,
            domains,
            ssh_key_file,
        }) => {
            let ssh_key = ssh_key_file
                .map(|p| {
                    std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
                })
                .transpose()?;
            let v = client
                .call(
                    M::POST,
                    "/api/apps",
                    Some(json!({ "name": name, "git": git, "branch": branch, "commit": commit, "domains": domains, "ssh_key": ssh_key })),
                )
                .await?;
            let hosts: Vec<&str> = v["hosts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            println!("created app {name}; it will answer on {}", hosts.join(", "));
        }
        Command::App(AppCommand::List) => {
            let v = client.call(M::GET, "/api/apps", None).await?;
            println!("{:<20} {:<10} {:<12} HOSTS", "NAME", "RUNNING", "LATEST");
            for a in v["apps"].as_array().into_iter().flatten() {
                let hosts: Vec<&str> = a["hosts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                println!(
                    "{:<20} {:<10} {:<12} {}",
                    a["name"].as_str().unwrap_or(""),
                    a["running_deployment"]
                        .as_i64()
                        .map(|d| d.to_string())
                        .unwrap_or_else(|| "-".into()),
                    a["latest"]["status"].as_str().unwrap_or("-"),
                    hosts.join(", ")
                );
            }
        }
        Command::App(AppCommand::Status { app }) | Command::Status { app } => {
            let v = client
                .call(M::GET, &format!("/api/apps/{app}"), None)
                .await?;
            print_status(&v);
        }
        Command::App(AppCommand::Delete { app }) => {
            client
                .call(M::DELETE, &format!("/api/apps/{app}"), None)
                .await?;
            println!("deleted app {app}");
        }
        Command::Env(EnvCommand::Set { app, pairs, secret }) => {
            let mut vars = Vec::new();
            for pair in pairs {
                let (key, value) = match pair.split_once('=') {
                    Some((k, v)) => (k.to_owned(), v.to_owned()),
                    None => {
                        let mut value = String::new();
                        std::io::stdin().read_to_string(&mut value)?;
                        (pair, value.trim_end_matches(['\n', '\r']).to_owned())
                    }
                };
                vars.push(json!({ "key": key, "value": value, "secret": secret }));
            }
            let v = client
                .call(
                    M::PUT,
                    &format!("/api/apps/{app}/env"),
                    Some(json!({ "vars": vars })),
                )
                .await?;
            let keys: Vec<&str> = v["set"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            println!(
                "set {} on {app} (takes effect at the next deploy)",
                keys.join(", ")
            );
        }
        Command::Env(EnvCommand::List { app }) => {
            let v = client
                .call(M::GET, &format!("/api/apps/{app}/env"), None)
                .await?;
            for e in v["env"].as_array().into_iter().flatten() {
                let value = if e["secret"].as_bool() == Some(true) {
                    "******** (secret)".to_owned()
                } else {
                    e["value"].as_str().unwrap_or("").to_owned()
                };
                println!("{}={value}", e["key"].as_str().unwrap_or(""));
            }
        }
        Command::Env(EnvCommand::Unset { app, key }) => {
            client
                .call(M::DELETE, &format!("/api/apps/{app}/env/{key}"), None)
                .await?;
            println!("removed {key} from {app}");
        }
        Command::Deploy { app, follow } => {
            let v = client
                .call(M::POST, &format!("/api/apps/{app}/deploy"), None)
                .await?;
            let id = v["deployment"].as_i64().unwrap_or_default();
            println!("deployment {id} queued");
            if follow {
                return Ok(exit_for(client.follow_build(id, true).await?));
            }
        }
        Command::Rollback { app, to, follow } => {
            let v = client
                .call(
                    M::POST,
                    &format!("/api/apps/{app}/rollback"),
                    Some(json!({ "to": to })),
                )
                .await?;
            let id = v["deployment"].as_i64().unwrap_or_default();
            println!(
                "deployment {id} queued (rollback to deployment {})",
                v["rollback_of"]
            );
            if follow {
                return Ok(exit_for(client.follow_build(id, true).await?));
            }
        }
        Command::BuildLog { deployment, follow } => {
            return Ok(exit_for(client.follow_build(deployment, follow).await?));
        }
        Command::Logs { app, follow, tail } => {
            let resp = client
                .request(
                    M::GET,
                    &format!("/api/apps/{app}/logs?follow={follow}&tail={tail}"),
                )
                .send()
                .await
                .with_context(|| format!("cannot reach the Rivetr API at {}", client.base))?;
            if !resp.status().is_success() {
                let status = resp.status().as_u16();
                let v: Value = resp.json().await.unwrap_or(Value::Null);
                bail!("{} (HTTP {status})", v["error"].as_str().unwrap_or("error"));
            }
            let mut events = eventsource_stream::EventStream::new(resp.bytes_stream());
            let mut out = std::io::stdout().lock();
            while let Some(event) = events.next().await {
                let event = event.context("reading the log stream")?;
                let v: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
                if let Some(text) = v["text"].as_str() {
                    writeln!(out, "{text}")?;
                    out.flush()?;
                } else if let Some(e) = v["error"].as_str() {
                    eprintln!("error: {e}");
                }
            }
        }
        Command::Token { name, role } => {
            let v = client
                .call(
                    M::POST,
                    "/api/tokens",
                    Some(json!({ "name": name, "role": role })),
                )
                .await?;
            println!("{}", v["token"].as_str().unwrap_or(""));
        }
    }
    Ok(0)
}

fn exit_for(status: Option<String>) -> i32 {
    match status.as_deref() {
        Some("running") => 0,
        _ => 1,
    }
}
