//! Tokens shaped `id.secret`: the id finds the row, the secret is checked
//! against the hash stored there. Only the hash is ever stored.
//!
//! A lookup by id followed by one hash check costs one verification per
//! attempt however many tokens exist, and a database leak gives away no
//! usable token.

use base64::Engine as _;
use ring::digest;

use crate::AuthError;

/// A parsed or freshly generated `id.secret` token.
#[derive(Clone, PartialEq, Eq)]
pub struct SplitToken {
    pub id: String,
    secret: String,
}

impl std::fmt::Debug for SplitToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SplitToken({}.***)", self.id)
    }
}

const MAX_PART: usize = 128;

fn valid_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_PART
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl SplitToken {
    /// A new token whose id starts with `prefix` (for example `enr`) and
    /// whose secret carries 256 random bits.
    pub fn generate(prefix: &str) -> Result<SplitToken, AuthError> {
        let id = format!("{prefix}_{}", hex::encode(secrets::random_bytes::<8>()?));
        let secret =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secrets::random_bytes::<32>()?);
        Ok(SplitToken { id, secret })
    }

    /// Parses `id.secret`; both parts are URL-safe characters.
    pub fn parse(text: &str) -> Result<SplitToken, AuthError> {
        let (id, secret) = text.split_once('.').ok_or(AuthError::MalformedToken)?;
        if !valid_part(id) || !valid_part(secret) {
            return Err(AuthError::MalformedToken);
        }
        Ok(SplitToken {
            id: id.to_owned(),
            secret: secret.to_owned(),
        })
    }

    /// The secret part, to hash or verify.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// The whole token, to hand to its holder once.
    pub fn reveal(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }

    /// SHA-256 of the secret, hex: enough for 256-bit random secrets, which
    /// no dictionary covers (use Argon2 through [`crate::hash_password`]
    /// when the policy wants a slow hash anyway).
    pub fn sha256_hex(&self) -> String {
        hex::encode(digest::digest(&digest::SHA256, self.secret.as_bytes()))
    }

    /// Whether this token's secret matches a stored [`SplitToken::sha256_hex`].
    pub fn matches_sha256(&self, stored_hex: &str) -> bool {
        let ours = self.sha256_hex();
        // Both sides are hashes of high-entropy secrets; comparing them in
        // constant time anyway costs nothing.
        ours.len() == stored_hex.len()
            && ours
                .bytes()
                .zip(stored_hex.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_parse_back() {
        let t = SplitToken::generate("enr").unwrap();
        assert!(t.id.starts_with("enr_"));
        let parsed = SplitToken::parse(&t.reveal()).unwrap();
        assert_eq!(parsed, t);
        assert!(parsed.matches_sha256(&t.sha256_hex()));
    }

    #[test]
    fn debug_hides_the_secret() {
        let t = SplitToken::generate("rt").unwrap();
        assert!(!format!("{t:?}").contains(t.secret()));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        for bad in [
            "",
            "nodot",
            ".secret",
            "id.",
            "id.sec ret",
            "i d.secret",
            "a.b.c",
        ] {
            assert!(SplitToken::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn wrong_secret_does_not_match() {
        let t = SplitToken::generate("rt").unwrap();
        let other = SplitToken::parse(&format!("{}.{}", t.id, "x".repeat(43))).unwrap();
        assert!(!other.matches_sha256(&t.sha256_hex()));
    }
}
