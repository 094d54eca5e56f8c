//! The ACME account: created once per directory, its credentials kept as
//! JSON (mode 0600) in the state directory and reused on every later start.

use std::path::{Path, PathBuf};

use instant_acme::{Account, AccountCredentials, NewAccount};
use serde::{Deserialize, Serialize};

use crate::config::AcmeConfig;
use crate::error::Error;
use crate::http::Client;
use crate::store;

#[derive(Serialize, Deserialize)]
struct Stored {
    directory: String,
    credentials: AccountCredentials,
}

/// One file per directory URL, so switching from staging to production
/// never presents the staging key to production.
pub(crate) fn path(state_dir: &Path, directory_url: &str) -> PathBuf {
    let slug: String = directory_url
        .trim_start_matches("https://")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    state_dir.join("accounts").join(format!("{slug}.json"))
}

/// The stored account for the configured directory, or a new one (stored
/// before it is returned).
pub(crate) async fn load_or_create(config: &AcmeConfig) -> Result<Account, Error> {
    let url = config.directory.url().to_owned();
    let file = path(&config.state_dir, &url);
    if let Some(bytes) = store::read_optional(&file)? {
        let stored: Stored = serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
            path: file.display().to_string(),
            reason: e.to_string(),
        })?;
        if stored.directory == url {
            let http = Box::new(Client::new(&config.trust)?);
            return Ok(Account::builder_with_http(http)
                .from_credentials(stored.credentials)
                .await?);
        }
    }
    let contact: Vec<&str> = config.contact.iter().map(String::as_str).collect();
    let eab = config
        .external_account
        .as_ref()
        .map(|e| e.key())
        .transpose()?;
    let http = Box::new(Client::new(&config.trust)?);
    let (account, credentials) = Account::builder_with_http(http)
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            url.clone(),
            eab.as_ref(),
        )
        .await?;
    let json = serde_json::to_vec_pretty(&Stored {
        directory: url,
        credentials,
    })
    .map_err(|e| Error::Corrupt {
        path: file.display().to_string(),
        reason: e.to_string(),
    })?;
    store::write_private(&file, &json)?;
    tracing::info!(account = account.id(), "ACME account registered");
    Ok(account)
}
