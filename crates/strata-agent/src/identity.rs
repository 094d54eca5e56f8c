//! The agent's identity on disk: its Ed25519 key (PKCS#8, mode 0600, made on
//! first use) and, after enrolment, the sender id and control plane URL.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};

use crate::AgentError;

/// The agent's signing key.
pub struct Identity {
    pair: Ed25519KeyPair,
}

impl Identity {
    /// Loads the key from `state_dir`, creating it on first run.
    pub fn load_or_create(state_dir: &Path) -> Result<Identity, AgentError> {
        let path = state_dir.join("agent-ed25519.key");
        let pkcs8 = secrets::KeyFile::load_or_create(&path, || {
            let rng = ring::rand::SystemRandom::new();
            Ed25519KeyPair::generate_pkcs8(&rng)
                .map(|d| d.as_ref().to_vec())
                .map_err(|_| secrets::SecretsError::Random)
        })?;
        let pair = Ed25519KeyPair::from_pkcs8(&pkcs8)
            .map_err(|e| AgentError::Identity(format!("{}: {e}", path.display())))?;
        Ok(Identity { pair })
    }

    /// The public key, base64, as the control plane expects it.
    pub fn public_key(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.pair.public_key().as_ref())
    }

    /// Signs the login challenge; returns the signature in base64.
    pub fn sign_challenge(&self, sender_id: &str, nonce: &str) -> String {
        let message = strata_protocol::challenge_message(sender_id, nonce);
        base64::engine::general_purpose::STANDARD.encode(self.pair.sign(&message).as_ref())
    }
}

/// What enrolment gave the agent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Enrolment {
    pub sender_id: String,
    pub control_url: String,
}

fn enrolment_path(state_dir: &Path) -> PathBuf {
    state_dir.join("sender.json")
}

impl Enrolment {
    pub fn load(state_dir: &Path) -> Result<Enrolment, AgentError> {
        let path = enrolment_path(state_dir);
        let err = |message: String| AgentError::State {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| err(format!("{e} (run `strata-agent enrol` first)")))?;
        serde_json::from_str(&text).map_err(|e| err(e.to_string()))
    }

    pub fn save(&self, state_dir: &Path) -> Result<(), AgentError> {
        let path = enrolment_path(state_dir);
        let text = serde_json::to_string_pretty(self).unwrap_or_default();
        std::fs::write(&path, text).map_err(|e| AgentError::State {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }
}

/// Enrols with the control plane: sends the public key with the one-time
/// token and stores the sender id it answers with.
pub async fn enrol(
    state_dir: &Path,
    control_url: &str,
    token: &str,
    hostname: &str,
) -> Result<Enrolment, AgentError> {
    std::fs::create_dir_all(state_dir).map_err(|e| AgentError::State {
        path: state_dir.display().to_string(),
        message: e.to_string(),
    })?;
    let identity = Identity::load_or_create(state_dir)?;
    let url = format!("{}/api/enrol", control_url.trim_end_matches('/'));
    let response = reqwest::Client::new()
        .post(url)
        .json(&serde_json::json!({
            "token": token,
            "public_key": identity.public_key(),
            "hostname": hostname,
        }))
        .send()
        .await?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    if !status.is_success() {
        return Err(AgentError::Enrol {
            status: status.as_u16(),
            message: body["error"]
                .as_str()
                .unwrap_or("no reason given")
                .to_owned(),
        });
    }
    let sender_id = body["sender_id"]
        .as_str()
        .ok_or_else(|| AgentError::Protocol("enrolment answer without sender_id".into()))?;
    let enrolment = Enrolment {
        sender_id: sender_id.to_owned(),
        control_url: control_url.trim_end_matches('/').to_owned(),
    };
    enrolment.save(state_dir)?;
    Ok(enrolment)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn key_is_made_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::load_or_create(dir.path()).unwrap();
        let b = Identity::load_or_create(dir.path()).unwrap();
        assert_eq!(a.public_key(), b.public_key());
        let mode = std::fs::metadata(dir.path().join("agent-ed25519.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn signatures_verify_with_the_public_key() {
        let dir = tempfile::tempdir().unwrap();
        let id = Identity::load_or_create(dir.path()).unwrap();
        let sig = base64::engine::general_purpose::STANDARD
            .decode(id.sign_challenge("snd_1", "nonce"))
            .unwrap();
        let pk = base64::engine::general_purpose::STANDARD
            .decode(id.public_key())
            .unwrap();
        let key = ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, pk);
        assert!(key
            .verify(&strata_protocol::challenge_message("snd_1", "nonce"), &sig)
            .is_ok());
        assert!(key
            .verify(&strata_protocol::challenge_message("snd_2", "nonce"), &sig)
            .is_err());
    }
}
