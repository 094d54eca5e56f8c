//! Accounts and access, shared by every product with users: Argon2id
//! passwords, Ed25519-signed JWT access tokens, `id.secret` tokens for
//! refresh and enrolment, CSRF tokens for forms, and reading credentials
//! from HTTP headers and cookies.
//!
//! Roles are the product's: each product parses [`Claims::role`] into its own
//! role enum and decides, in one policy function of its own, what a role may
//! do. This crate stores nothing (the product keeps users and token hashes in
//! its schema), serves no HTTP and reads no clock: every check takes `now`.

pub mod csrf;
pub mod http_creds;
pub mod password;
pub mod split_token;
pub mod tokens;

pub use password::{hash_password, verify_password};
pub use split_token::SplitToken;
pub use tokens::{AccessTokens, Claims};

/// Errors from the auth primitives.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error("stored password hash is not a valid PHC string")]
    BadHash,
    #[error("token is malformed")]
    MalformedToken,
    #[error("token signature or claims are invalid")]
    InvalidToken,
    #[error("token has expired")]
    Expired,
    #[error("signing key: {0}")]
    Key(String),
    #[error(transparent)]
    Secrets(#[from] secrets::SecretsError),
}
