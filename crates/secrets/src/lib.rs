//! Secrets at rest: AES-256-GCM sealing with a key kept outside the database.
//!
//! A product keeps its master key in a file only its own user can read
//! ([`KeyFile`], mode 0600, refused when looser) and stores only what
//! [`SecretBox::seal`] returns in its database. Each sealed value is bound to
//! a context string (for example `destination:dst_1:stream_key`) given as
//! additional authenticated data, so a ciphertext copied into another row or
//! column does not open. [`Redacted`] keeps a secret out of `Debug` output
//! and logs.
//!
//! The cipher is ring's AES-256-GCM, the same ring rustls already builds in
//! this workspace. This crate does not decide what is secret, never logs, and
//! holds no key in a global.

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

/// Errors from keys and sealed values.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("reading key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing key file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key file {path} is readable by others (mode {mode:o}); run: chmod 600 {path}")]
    LoosePermissions { path: PathBuf, mode: u32 },
    #[error("key file {path} does not hold a {expected}-byte key")]
    BadKey { path: PathBuf, expected: usize },
    #[error("sealed value is not in the expected format")]
    Format,
    #[error("sealed value does not open with this key and context")]
    Open,
    #[error("the system random number generator failed")]
    Random,
}

/// Fills a buffer from the operating system's random number generator.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], SecretsError> {
    let mut out = [0u8; N];
    SystemRandom::new()
        .fill(&mut out)
        .map_err(|_| SecretsError::Random)?;
    Ok(out)
}

/// A file holding key material, readable and writable by its owner only.
pub struct KeyFile;

impl KeyFile {
    /// Reads the key at `path`, or creates it with `generate` when the file
    /// does not exist. The file is created with mode 0600 (never briefly
    /// wider); an existing file readable by group or others is refused.
    pub fn load_or_create(
        path: &Path,
        generate: impl FnOnce() -> Result<Vec<u8>, SecretsError>,
    ) -> Result<Vec<u8>, SecretsError> {
        match fs::metadata(path) {
            Ok(meta) => {
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(SecretsError::LoosePermissions {
                        path: path.to_owned(),
                        mode,
                    });
                }
                fs::read(path).map_err(|source| SecretsError::Read {
                    path: path.to_owned(),
                    source,
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let bytes = generate()?;
                let write_err = |source| SecretsError::Write {
                    path: path.to_owned(),
                    source,
                };
                if let Some(parent) = path.parent() {
                    if !parent.as_os_str().is_empty() {
                        fs::create_dir_all(parent).map_err(write_err)?;
                    }
                }
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(write_err)?;
                file.write_all(&bytes).map_err(write_err)?;
                file.sync_all().map_err(write_err)?;
                Ok(bytes)
            }
            Err(source) => Err(SecretsError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }
}

/// The length of a [`SecretBox`] key.
pub const KEY_LEN: usize = 32;

/// Seals and opens values with one AES-256-GCM key.
pub struct SecretBox {
    key: LessSafeKey,
}

impl fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretBox(..)")
    }
}

/// Prefix of sealed values: names the format so it can change later.
const SEALED_PREFIX: &str = "v1.";

impl SecretBox {
    /// A box around a raw 32-byte key.
    pub fn from_key(key: &[u8; KEY_LEN]) -> SecretBox {
        // A 32-byte key is exactly what AES-256-GCM takes.
        let unbound = UnboundKey::new(&AES_256_GCM, key).expect("32-byte AES-256 key");
        SecretBox {
            key: LessSafeKey::new(unbound),
        }
    }

    /// Loads the master key from `path` (hex), creating a random one there
    /// with mode 0600 on first use.
    pub fn load_or_create(path: &Path) -> Result<SecretBox, SecretsError> {
        let text = KeyFile::load_or_create(path, || {
            Ok(hex::encode(random_bytes::<KEY_LEN>()?).into_bytes())
        })?;
        let bad = || SecretsError::BadKey {
            path: path.to_owned(),
            expected: KEY_LEN,
        };
        let text = std::str::from_utf8(&text).map_err(|_| bad())?;
        let bytes = hex::decode(text.trim()).map_err(|_| bad())?;
        let key: [u8; KEY_LEN] = bytes.try_into().map_err(|_| bad())?;
        Ok(SecretBox::from_key(&key))
    }

    /// Encrypts `plaintext` bound to `context`. The result is printable text
    /// (`v1.` then base64 of a fresh 96-bit nonce, the ciphertext and tag).
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> Result<String, SecretsError> {
        let nonce_bytes = random_bytes::<NONCE_LEN>()?;
        let mut buf = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(context.as_bytes()),
                &mut buf,
            )
            .map_err(|_| SecretsError::Random)?;
        let mut out = Vec::with_capacity(NONCE_LEN + buf.len());
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(&buf);
        Ok(format!(
            "{SEALED_PREFIX}{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(out)
        ))
    }

    /// Decrypts a value sealed with the same key and context.
    pub fn open(&self, context: &str, sealed: &str) -> Result<Vec<u8>, SecretsError> {
        let body = sealed
            .strip_prefix(SEALED_PREFIX)
            .ok_or(SecretsError::Format)?;
        let raw = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(body)
            .map_err(|_| SecretsError::Format)?;
        if raw.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(SecretsError::Format);
        }
        let (nonce, ciphertext) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SecretsError::Format)?;
        let mut buf = ciphertext.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut buf)
            .map_err(|_| SecretsError::Open)?;
        Ok(plain.to_vec())
    }

    /// [`SecretBox::open`] for values that were UTF-8 text.
    pub fn open_string(&self, context: &str, sealed: &str) -> Result<String, SecretsError> {
        String::from_utf8(self.open(context, sealed)?).map_err(|_| SecretsError::Format)
    }
}

/// A value that must not appear in logs: `Debug` and `Display` print `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Redacted<T>(T);

impl<T> Redacted<T> {
    pub fn new(value: T) -> Redacted<T> {
        Redacted(value)
    }
    /// The secret itself; call sites that need it are easy to find.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Redacted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<T> fmt::Display for Redacted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A masked hint of a secret for display: its last four characters, or
/// nothing of a secret shorter than twelve (which four would give away).
pub fn mask_hint(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    if chars.len() < 12 {
        return "****".to_owned();
    }
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("****{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boxed() -> SecretBox {
        SecretBox::from_key(&[7u8; KEY_LEN])
    }

    #[test]
    fn seal_then_open_gives_the_plaintext_back() {
        let b = boxed();
        let sealed = b.seal("dst:1:key", b"live_abcd-efgh").unwrap();
        assert!(!sealed.contains("live_abcd"));
        assert_eq!(b.open("dst:1:key", &sealed).unwrap(), b"live_abcd-efgh");
    }

    #[test]
    fn each_seal_uses_a_fresh_nonce() {
        let b = boxed();
        assert_ne!(b.seal("c", b"x").unwrap(), b.seal("c", b"x").unwrap());
    }

    #[test]
    fn another_context_does_not_open() {
        let b = boxed();
        let sealed = b.seal("dst:1:key", b"secret").unwrap();
        assert!(matches!(
            b.open("dst:2:key", &sealed),
            Err(SecretsError::Open)
        ));
    }

    #[test]
    fn another_key_does_not_open() {
        let sealed = boxed().seal("c", b"secret").unwrap();
        let other = SecretBox::from_key(&[8u8; KEY_LEN]);
        assert!(matches!(other.open("c", &sealed), Err(SecretsError::Open)));
    }

    #[test]
    fn tampered_or_garbled_values_are_refused() {
        let b = boxed();
        let sealed = b.seal("c", b"secret").unwrap();
        let mut bytes = sealed.clone().into_bytes();
        let last = bytes.len() - 2;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert!(matches!(b.open("c", &tampered), Err(SecretsError::Open)));
        assert!(matches!(b.open("c", "v1.!!"), Err(SecretsError::Format)));
        assert!(matches!(b.open("c", "plain"), Err(SecretsError::Format)));
        assert!(matches!(b.open("c", "v1.AAAA"), Err(SecretsError::Format)));
    }

    #[test]
    fn key_file_is_created_0600_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/master.key");
        let first = SecretBox::load_or_create(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let sealed = first.seal("c", b"v").unwrap();
        let second = SecretBox::load_or_create(&path).unwrap();
        assert_eq!(second.open("c", &sealed).unwrap(), b"v");
    }

    #[test]
    fn loose_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        SecretBox::load_or_create(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = SecretBox::load_or_create(&path).unwrap_err();
        assert!(
            matches!(err, SecretsError::LoosePermissions { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 600"));
    }

    #[test]
    fn short_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        fs::write(&path, "abcd").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            SecretBox::load_or_create(&path),
            Err(SecretsError::BadKey { .. })
        ));
    }

    #[test]
    fn redacted_hides_its_value() {
        let r = Redacted::new("hunter2".to_string());
        assert_eq!(format!("{r:?} {r}"), "*** ***");
        assert_eq!(r.expose(), "hunter2");
    }

    #[test]
    fn mask_hint_shows_at_most_the_tail() {
        assert_eq!(mask_hint("abcd-efgh-ijkl-mnop"), "****mnop");
        assert_eq!(mask_hint("short"), "****");
    }
}
