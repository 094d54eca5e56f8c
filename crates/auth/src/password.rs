//! Argon2id password hashes in PHC string form.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

use crate::AuthError;

/// Hashes a password with Argon2id (the crate's default parameters: 19 MiB,
/// two passes) and a random salt.
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    let salt_bytes = secrets::random_bytes::<16>()?;
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| AuthError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
}

/// Checks a password against a stored hash.
pub fn verify_password(password: &str, phc: &str) -> Result<bool, AuthError> {
    let parsed = PasswordHash::new(phc).map_err(|_| AuthError::BadHash)?;
    Ok(Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok())
}

/// Spends the time of one verification without a stored hash, so a login
/// for an unknown account takes as long as one with a wrong password.
pub fn dummy_verify(password: &str) {
    static DUMMY: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if let Some(hash) = DUMMY.get_or_init(|| hash_password("dummy password").ok()) {
        let _ = verify_password(password, hash);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn right_password_verifies_wrong_does_not() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(verify_password("correct horse", &hash).unwrap());
        assert!(!verify_password("correct horsf", &hash).unwrap());
    }

    #[test]
    fn salts_differ() {
        assert_ne!(hash_password("x").unwrap(), hash_password("x").unwrap());
    }

    #[test]
    fn garbage_hash_is_an_error() {
        assert!(matches!(
            verify_password("x", "not-a-hash"),
            Err(AuthError::BadHash)
        ));
    }
}
