//! `picode provider add|list|remove|test`: edits the user's `picode.toml` and
//! the secret store.
//!
//! Keys are never taken as a command-line argument (it would land in shell
//! history and `ps`): either name an environment variable with
//! `--api-key-env`, or pipe the key in with `--api-key-stdin`, which stores
//! it in the keyring (or the encrypted file; see [`crate::secrets`]).

use std::io::Read;
use std::process::ExitCode;

use clap::Subcommand;

use super::{fail, Exit};
use crate::config::{
    read_user_document, write_user_document, Config, Paths, ProviderEntry, ProviderKind,
};
use crate::providers::{build_chain, key_source, probe};
use crate::secrets::{provider_key_name, SecretStore};
use crate::trust::ProjectTrust;

#[derive(Debug, Subcommand)]
pub enum ProviderAction {
    /// Add or replace a provider.
    Add {
        name: String,
        /// openai (any OpenAI-compatible server) or anthropic.
        #[arg(long, default_value = "openai")]
        kind: String,
        #[arg(long)]
        model: String,
        /// Base URL including the version, e.g. http://localhost:11434/v1.
        #[arg(long)]
        base_url: Option<String>,
        /// Environment variable that holds the API key.
        #[arg(long, conflicts_with = "api_key_stdin")]
        api_key_env: Option<String>,
        /// Read the API key from stdin and keep it in the secret store.
        #[arg(long)]
        api_key_stdin: bool,
        #[arg(long)]
        context_window: Option<u32>,
        /// Make it the default provider.
        #[arg(long)]
        default: bool,
    },
    /// List configured providers and where their keys come from.
    List,
    /// Remove a provider and its stored key.
    Remove { name: String },
    /// Send a one-turn request and list the models.
    Test {
        /// Provider name (default: the default provider).
        name: Option<String>,
    },
}

pub async fn run(action: ProviderAction, paths: Paths, trust: ProjectTrust) -> ExitCode {
    match action {
        ProviderAction::Add {
            name,
            kind,
            model,
            base_url,
            api_key_env,
            api_key_stdin,
            context_window,
            default,
        } => {
            let kind = match kind.as_str() {
                "openai" => ProviderKind::Openai,
                "anthropic" => ProviderKind::Anthropic,
                other => {
                    return fail(
                        Exit::Usage,
                        format!("--kind `{other}` is not one of openai, anthropic"),
                    )
                }
            };
            let entry = ProviderEntry {
                kind,
                base_url,
                model,
                api_key_env,
                context_window,
                ..ProviderEntry::default()
            };
            add(&paths, &name, entry, api_key_stdin, default).await
        }
        ProviderAction::List => list(&paths, &trust),
        ProviderAction::Remove { name } => remove(&paths, &name).await,
        ProviderAction::Test { name } => test(&paths, &trust, name.as_deref()).await,
    }
}

fn secret_store(paths: &Paths) -> SecretStore {
    // The backend choice may itself come from a config that fails to load;
    // the environment still decides then.
    // The secret store is the user's choice alone: the project file is not read.
    let backend = Config::load(paths, &ProjectTrust::Untrusted)
        .map(|c| c.secret_store)
        .unwrap_or_default();
    SecretStore::open(backend, &paths.config_dir)
}

async fn add(
    paths: &Paths,
    name: &str,
    entry: ProviderEntry,
    key_from_stdin: bool,
    make_default: bool,
) -> ExitCode {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return fail(
            Exit::Usage,
            "provider names use letters, digits, '-' and '_' only",
        );
    }
    let file = paths.user_config_file();
    let mut doc = match read_user_document(&file) {
        Ok(d) => d,
        Err(e) => return fail(Exit::Usage, e),
    };
    if key_from_stdin {
        let mut key = String::new();
        if let Err(e) = std::io::stdin().read_to_string(&mut key) {
            return fail(Exit::Error, format!("reading the key from stdin: {e}"));
        }
        let key = key.trim().to_owned();
        if key.is_empty() {
            return fail(Exit::Usage, "no key on stdin");
        }
        let store = secret_store(paths);
        let key_name = provider_key_name(name);
        let stored = tokio::task::spawn_blocking({
            let store = store.clone();
            move || store.set(&key_name, &key)
        })
        .await;
        match stored {
            Ok(Ok(())) => println!("stored the key in {}", store.describe()),
            Ok(Err(e)) => return fail(Exit::Error, e),
            Err(e) => return fail(Exit::Error, e),
        }
    }
    // The entry as TOML, then as an editable table.
    let entry_table = match toml::to_string(&entry)
        .map_err(|e| e.to_string())
        .and_then(|t| {
            t.parse::<toml_edit::DocumentMut>()
                .map_err(|e| e.to_string())
        }) {
        Ok(d) => d.as_table().clone(),
        Err(e) => return fail(Exit::Error, e),
    };
    let providers = doc.entry("providers").or_insert_with(|| {
        // `[providers.NAME]` headers only, no empty `[providers]` above them.
        let mut t = toml_edit::Table::new();
        t.set_implicit(true);
        toml_edit::Item::Table(t)
    });
    let Some(providers) = providers.as_table_mut() else {
        return fail(
            Exit::Usage,
            format!("`providers` in {} is not a table", file.display()),
        );
    };
    providers.insert(name, toml_edit::Item::Table(entry_table));
    if make_default || !doc.contains_key("default_provider") {
        doc["default_provider"] = toml_edit::value(name);
    }
    if let Err(e) = write_user_document(&file, &doc) {
        return fail(Exit::Error, e);
    }
    println!("added provider `{name}` to {}", file.display());
    Exit::Ok.into()
}

fn list(paths: &Paths, trust: &ProjectTrust) -> ExitCode {
    let config = match Config::load(paths, trust) {
        Ok(c) => c,
        Err(e) => return fail(Exit::Usage, e),
    };
    if config.providers.is_empty() {
        println!("no providers configured; add one with `picode provider add`");
        return Exit::Ok.into();
    }
    let default = config.chain(None).into_iter().next();
    let store = SecretStore::open(config.secret_store, &paths.config_dir);
    for (name, entry) in &config.providers {
        // Only providers without an env variable or inline key look in the store.
        let stored = (entry.api_key_env.is_none() && entry.api_key.is_none())
            .then(|| matches!(store.get(&provider_key_name(name)), Ok(Some(k)) if !k.is_empty()));
        let mark = if Some(name) == default.as_ref() {
            "*"
        } else {
            " "
        };
        let fallback = config
            .fallback
            .iter()
            .position(|f| f == name)
            .map(|i| format!("  fallback #{}", i + 1))
            .unwrap_or_default();
        println!(
            "{mark} {name}  {}  {}  {}  key: {}{fallback}",
            entry.kind.as_str(),
            entry.model,
            entry.base_url.as_deref().unwrap_or("(default endpoint)"),
            key_source(entry, stored),
        );
    }
    Exit::Ok.into()
}

async fn remove(paths: &Paths, name: &str) -> ExitCode {
    let file = paths.user_config_file();
    let mut doc = match read_user_document(&file) {
        Ok(d) => d,
        Err(e) => return fail(Exit::Usage, e),
    };
    let removed = doc
        .get_mut("providers")
        .and_then(toml_edit::Item::as_table_like_mut)
        .and_then(|p| p.remove(name))
        .is_some();
    if !removed {
        return fail(
            Exit::Usage,
            format!("no provider `{name}` in {}", file.display()),
        );
    }
    if doc
        .get("default_provider")
        .and_then(toml_edit::Item::as_str)
        == Some(name)
    {
        doc.remove("default_provider");
    }
    if let Some(fallback) = doc
        .get_mut("fallback")
        .and_then(toml_edit::Item::as_array_mut)
    {
        fallback.retain(|v| v.as_str() != Some(name));
    }
    if let Err(e) = write_user_document(&file, &doc) {
        return fail(Exit::Error, e);
    }
    let store = secret_store(paths);
    let key_name = provider_key_name(name);
    let _ = tokio::task::spawn_blocking(move || store.remove(&key_name)).await;
    println!("removed provider `{name}`");
    Exit::Ok.into()
}

async fn test(paths: &Paths, trust: &ProjectTrust, name: Option<&str>) -> ExitCode {
    let config = match Config::load(paths, trust) {
        Ok(c) => c,
        Err(e) => return fail(Exit::Usage, e),
    };
    let only = match name {
        Some(n) => n.to_owned(),
        None => match config.chain(None).into_iter().next() {
            Some(n) => n,
            None => return fail(Exit::Usage, "no provider is configured"),
        },
    };
    // Test the provider alone: a fallback would hide the failure.
    let mut single = config.clone();
    single.fallback.clear();
    let secrets = || SecretStore::open(config.secret_store, &paths.config_dir);
    let resolved = match build_chain(&single, Some(&only), None, &secrets) {
        Ok(r) => r,
        Err(e) => return fail(Exit::Usage, e),
    };
    let report = probe(&*resolved.provider).await;
    if report.ok {
        println!(
            "{}: ok ({}), first event after {} ms, {} ms in all; reply: {}",
            report.provider,
            report.model,
            report.first_event_ms.unwrap_or(0),
            report.total_ms,
            report.reply.trim()
        );
    } else {
        println!(
            "{}: FAILED after {} ms: {}",
            report.provider,
            report.total_ms,
            report.error.as_deref().unwrap_or("unknown error")
        );
    }
    match &report.models {
        Ok(models) if models.is_empty() => println!("models: (none listed)"),
        Ok(models) => {
            println!("models: {}", models.join(", "));
            if !models.contains(&report.model) {
                println!(
                    "warning: the configured model `{}` is not in the server's model list; \
                     requests may fail or be served by another model",
                    report.model
                );
            }
        }
        Err(e) => println!("models: unavailable ({e})"),
    }
    if report.ok {
        Exit::Ok.into()
    } else {
        Exit::Provider.into()
    }
}
