//! Rivetr: a self-hosted PaaS in one binary. An app is a git repository
//! with a Dockerfile; Rivetr fetches it (git2), builds an image through the
//! Docker Engine API (or Podman's compatible socket, or the `podman` CLI),
//! runs it on a private network, checks its health and routes its host
//! names to it through the `edge` engine, without a failed request.
//!
//! Layers: `domain` (types parsed at the edge, `rivetr.toml`), `store`
//! (SQLite, the source of truth), `source` (git), `runtime` (the container
//! engine behind a trait), `router` (edge phases over an atomically swapped
//! host table), `engine` (the queue, deploys, rollbacks, reconcile), `api`
//! (REST and SSE; the CLI in `cli` is its client) and `server` (binds and
//! runs it all). The domain and engine know nothing of HTTP handlers or
//! the command line.
//!
//! What it does not do yet: accounts, a dashboard, webhooks and ACME
//! certificates (they slot in beside `api` and in front of `router`).

pub mod api;
pub mod cli;
pub mod config;
pub mod domain;
pub mod engine;
pub mod router;
pub mod runtime;
pub mod server;
pub mod source;
pub mod store;

/// Makes an API token with `role`, stores its hash, and gives the token
/// back (the only time it exists in full).
pub async fn issue_token(
    store: &store::Store,
    name: &str,
    role: &str,
) -> Result<String, store::StoreError> {
    let token = auth::SplitToken::generate("rvt").map_err(|e| store::StoreError::File {
        path: "random source".into(),
        source: std::io::Error::other(e.to_string()),
    })?;
    store
        .add_token(
            &store::ApiToken {
                id: token.id.clone(),
                name: name.to_owned(),
                secret_sha256: token.sha256_hex(),
                role: role.to_owned(),
            },
            engine::now(),
        )
        .await?;
    Ok(token.reveal())
}
