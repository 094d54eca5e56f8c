//! Ed25519-signed JWT access tokens (`alg: EdDSA`).
//!
//! The signing key lives in a 0600 file beside the product's data, so tokens
//! stay valid across restarts and nothing about them is in the database.
//! Expiry is checked against the `now` passed in, not the system clock, so
//! tests reproduce.

use std::path::Path;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};

use crate::AuthError;

/// What an access token says about its holder.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// The product's role name, parsed by the product.
    pub role: String,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Expires at, Unix seconds.
    pub exp: i64,
}

/// Issues and checks access tokens with one Ed25519 key.
pub struct AccessTokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    ttl_secs: i64,
}

impl std::fmt::Debug for AccessTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AccessTokens(ttl {}s)", self.ttl_secs)
    }
}

/// Generates an Ed25519 key pair as PKCS#8 DER.
pub fn generate_ed25519_pkcs8() -> Result<Vec<u8>, AuthError> {
    let rng = ring::rand::SystemRandom::new();
    Ed25519KeyPair::generate_pkcs8(&rng)
        .map(|doc| doc.as_ref().to_vec())
        .map_err(|_| AuthError::Key("generating an Ed25519 key failed".into()))
}

impl AccessTokens {
    /// Tokens signed with a PKCS#8 Ed25519 key, valid for `ttl_secs`.
    pub fn from_pkcs8(pkcs8: &[u8], ttl_secs: i64) -> Result<AccessTokens, AuthError> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8)
            .map_err(|e| AuthError::Key(format!("not an Ed25519 PKCS#8 key: {e}")))?;
        Ok(AccessTokens {
            encoding: EncodingKey::from_ed_der(pkcs8),
            decoding: DecodingKey::from_ed_der(pair.public_key().as_ref()),
            ttl_secs,
        })
    }

    /// Loads the signing key from `path`, creating it (mode 0600) first.
    pub fn load_or_create(path: &Path, ttl_secs: i64) -> Result<AccessTokens, AuthError> {
        let pkcs8 = secrets::KeyFile::load_or_create(path, || {
            generate_ed25519_pkcs8().map_err(|_| secrets::SecretsError::Random)
        })?;
        AccessTokens::from_pkcs8(&pkcs8, ttl_secs)
    }

    /// How long a token lives.
    pub fn ttl_secs(&self) -> i64 {
        self.ttl_secs
    }

    /// Signs a token for `user_id` with `role`, issued at `now` (Unix seconds).
    pub fn issue(&self, user_id: &str, role: &str, now: i64) -> Result<String, AuthError> {
        let claims = Claims {
            sub: user_id.to_owned(),
            role: role.to_owned(),
            iat: now,
            exp: now + self.ttl_secs,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &self.encoding)
            .map_err(|e| AuthError::Key(e.to_string()))
    }

    /// Checks the signature and expiry of a token at `now` (Unix seconds).
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, AuthError> {
        let mut validation = Validation::new(Algorithm::EdDSA);
        // Expiry is checked below against the caller's clock.
        validation.validate_exp = false;
        validation.required_spec_claims = ["exp", "sub"].iter().map(|s| s.to_string()).collect();
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map_err(|_| AuthError::InvalidToken)?;
        if data.claims.exp <= now {
            return Err(AuthError::Expired);
        }
        Ok(data.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn tokens() -> AccessTokens {
        AccessTokens::from_pkcs8(&generate_ed25519_pkcs8().unwrap(), 3600).unwrap()
    }

    #[test]
    fn issued_token_verifies_until_it_expires() {
        let t = tokens();
        let jwt = t.issue("usr_1", "admin", 1_000).unwrap();
        let claims = t.verify(&jwt, 1_000).unwrap();
        assert_eq!(claims.sub, "usr_1");
        assert_eq!(claims.role, "admin");
        assert_eq!(claims.exp, 4_600);
        assert!(t.verify(&jwt, 4_599).is_ok());
        assert!(matches!(t.verify(&jwt, 4_600), Err(AuthError::Expired)));
    }

    #[test]
    fn header_names_eddsa() {
        let jwt = tokens().issue("u", "viewer", 0).unwrap();
        let header = jwt.split('.').next().unwrap();
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .unwrap();
        assert!(String::from_utf8(json).unwrap().contains("\"EdDSA\""));
    }

    #[test]
    fn token_from_another_key_is_refused() {
        let jwt = tokens().issue("u", "admin", 0).unwrap();
        assert!(matches!(
            tokens().verify(&jwt, 1),
            Err(AuthError::InvalidToken)
        ));
    }

    #[test]
    fn edited_claims_are_refused() {
        let t = tokens();
        let jwt = t.issue("u", "viewer", 0).unwrap();
        let mut parts: Vec<&str> = jwt.split('.').collect();
        let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"sub":"u","role":"admin","iat":0,"exp":99999999999}"#);
        parts[1] = &forged;
        assert!(matches!(
            t.verify(&parts.join("."), 1),
            Err(AuthError::InvalidToken)
        ));
    }

    #[test]
    fn unsigned_alg_none_is_refused() {
        let t = tokens();
        let enc = |s: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let token = format!(
            "{}.{}.",
            enc(br#"{"alg":"none","typ":"JWT"}"#),
            enc(br#"{"sub":"u","role":"admin","iat":0,"exp":99999999999}"#)
        );
        assert!(t.verify(&token, 1).is_err());
        assert!(t.verify("garbage", 1).is_err());
    }

    #[test]
    fn key_file_persists_the_signing_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwt.key");
        let a = AccessTokens::load_or_create(&path, 60).unwrap();
        let jwt = a.issue("u", "admin", 0).unwrap();
        let b = AccessTokens::load_or_create(&path, 60).unwrap();
        assert!(b.verify(&jwt, 1).is_ok());
    }
}
