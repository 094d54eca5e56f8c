//! CSRF tokens for server-rendered forms: an HMAC-SHA256 of the session id
//! under a server key, so a page can embed a token that a cross-site form
//! cannot know, and the server needs no table to check it.

use base64::Engine as _;
use ring::hmac;

/// Makes and checks CSRF tokens under one key.
pub struct Csrf {
    key: hmac::Key,
}

impl Csrf {
    pub fn new(key: &[u8; 32]) -> Csrf {
        Csrf {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
        }
    }

    /// The token to embed in forms of the session `session_id`.
    pub fn token(&self, session_id: &str) -> String {
        let tag = hmac::sign(&self.key, session_id.as_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref())
    }

    /// Whether `token` was made for `session_id` (constant time).
    pub fn check(&self, session_id: &str, token: &str) -> bool {
        let Ok(tag) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token) else {
            return false;
        };
        hmac::verify(&self.key, session_id.as_bytes(), &tag).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_checks_for_its_session_only() {
        let c = Csrf::new(&[1; 32]);
        let t = c.token("session-a");
        assert!(c.check("session-a", &t));
        assert!(!c.check("session-b", &t));
        assert!(!c.check("session-a", "forged"));
        assert!(!Csrf::new(&[2; 32]).check("session-a", &t));
    }
}
