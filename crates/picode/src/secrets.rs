//! Where API keys are kept: the OS keyring, or an encrypted file when no
//! keyring service answers (servers, containers, CI).
//!
//! The encrypted file is `secrets.json` in the user's config dir. Each entry
//! is sealed by the workspace's `secrets` crate (AES-256-GCM under a fresh
//! random nonce) with the entry's name as context, so ciphertexts cannot be
//! swapped between entries. The 32-byte key comes from one of two places,
//! recorded in the file so it is never guessed:
//!
//! - `keyfile`: a random key in `secrets-v2.key` beside the file, made and
//!   checked by `secrets::SecretBox::load_or_create` (mode 0600, refused when
//!   others can read it). This protects against the secrets file leaking on
//!   its own (backups, dotfile repos), not against someone who can read the
//!   user's whole home directory; the passphrase mode is for that.
//! - `argon2id`: derived with Argon2id (default parameters, a random 16-byte
//!   salt stored in the file) from `PICODE_KEY_PASSPHRASE`. Chosen when that
//!   variable is set when the file is created; it must then be set whenever
//!   the file is read.
//!
//! Files of version 1 (before the `secrets` crate: XChaCha20-Poly1305, and
//! in key-file mode 32 raw bytes in `secrets.key`) are still read. The first
//! read rewrites them as version 2 under the new key, then deletes the old
//! key file; a crash in between leaves a version 1 file that the next read
//! migrates again.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use secrets::SecretBox;
use serde::{Deserialize, Serialize};

use crate::config::SecretBackend;

const KEYRING_SERVICE: &str = "picode";
const SECRETS_FILE: &str = "secrets.json";
const KEY_FILE: &str = "secrets-v2.key";
/// Version 1's key file: 32 raw bytes.
const V1_KEY_FILE: &str = "secrets.key";
const VERSION: u32 = 2;
const PASSPHRASE_ENV: &str = "PICODE_KEY_PASSPHRASE";

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("keyring: {0}")]
    Keyring(String),
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("cannot decrypt {path}: wrong key or passphrase ({PASSPHRASE_ENV}), or the file was altered")]
    Decrypt { path: PathBuf },
    #[error("{path} is encrypted with a passphrase; set {PASSPHRASE_ENV}")]
    NeedPassphrase { path: PathBuf },
}

/// A place to keep secrets, chosen once per process.
#[derive(Debug, Clone)]
pub enum SecretStore {
    Keyring,
    File(EncryptedFile),
}

impl SecretStore {
    /// Picks the backend the config asks for; `auto` probes the keyring.
    ///
    /// The keyring calls block (D-Bus round trips), so callers inside the
    /// async runtime go through `spawn_blocking`.
    pub fn open(backend: SecretBackend, config_dir: &Path) -> SecretStore {
        let passphrase = std::env::var(PASSPHRASE_ENV).ok().filter(|p| !p.is_empty());
        let file = || SecretStore::File(EncryptedFile::new(config_dir, passphrase.clone()));
        match backend {
            SecretBackend::File => file(),
            SecretBackend::Keyring => SecretStore::Keyring,
            SecretBackend::Auto => {
                if keyring_available() {
                    SecretStore::Keyring
                } else {
                    file()
                }
            }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            SecretStore::Keyring => "the OS keyring".to_owned(),
            SecretStore::File(f) => format!("encrypted file {}", f.path.display()),
        }
    }

    pub fn get(&self, name: &str) -> Result<Option<String>, SecretError> {
        match self {
            SecretStore::Keyring => off_runtime(|| match entry(name)?.get_password() {
                Ok(v) => Ok(Some(v)),
                Err(keyring::Error::NoEntry) => Ok(None),
                Err(e) => Err(SecretError::Keyring(e.to_string())),
            }),
            SecretStore::File(f) => f.get(name),
        }
    }

    pub fn set(&self, name: &str, value: &str) -> Result<(), SecretError> {
        match self {
            SecretStore::Keyring => off_runtime(|| {
                entry(name)?
                    .set_password(value)
                    .map_err(|e| SecretError::Keyring(e.to_string()))
            }),
            SecretStore::File(f) => f.set(name, value),
        }
    }

    pub fn remove(&self, name: &str) -> Result<(), SecretError> {
        match self {
            SecretStore::Keyring => off_runtime(|| match entry(name)?.delete_credential() {
                Ok(()) | Err(keyring::Error::NoEntry) => Ok(()),
                Err(e) => Err(SecretError::Keyring(e.to_string())),
            }),
            SecretStore::File(f) => f.remove(name),
        }
    }
}

/// The entry name under which a provider's API key is stored.
pub fn provider_key_name(provider: &str) -> String {
    format!("provider:{provider}")
}

fn entry(name: &str) -> Result<keyring::Entry, SecretError> {
    keyring::Entry::new(KEYRING_SERVICE, name).map_err(|e| SecretError::Keyring(e.to_string()))
}

/// Runs a keyring call on a thread of its own.
///
/// The secret-service backend drives D-Bus with a private Tokio runtime and
/// `block_on`, which panics on a thread that already runs a runtime. A plain
/// scoped thread is cheap next to the D-Bus round trip and works from sync
/// and async callers alike; a panic there is turned into an error.
fn off_runtime<T: Send>(
    f: impl FnOnce() -> Result<T, SecretError> + Send,
) -> Result<T, SecretError> {
    std::thread::scope(|s| {
        s.spawn(f)
            .join()
            .unwrap_or_else(|_| Err(SecretError::Keyring("the keyring backend panicked".into())))
    })
}

/// True when a keyring service answers a lookup (a missing entry counts).
fn keyring_available() -> bool {
    off_runtime(|| match entry("probe")?.get_password() {
        Ok(_) | Err(keyring::Error::NoEntry) => Ok(()),
        Err(e) => Err(SecretError::Keyring(e.to_string())),
    })
    .is_ok()
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct SecretsFile {
    version: u32,
    /// `argon2id` or `keyfile`; see the module docs.
    kdf: String,
    /// Hex salt for `argon2id`.
    #[serde(default)]
    salt: String,
    entries: BTreeMap<String, Sealed>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum Sealed {
    /// Version 2: what `SecretBox::seal` returns.
    Box(String),
    /// Version 1: XChaCha20-Poly1305, hex.
    XChaCha { nonce: String, ciphertext: String },
}

/// The encrypted-file fallback store.
#[derive(Debug, Clone)]
pub struct EncryptedFile {
    path: PathBuf,
    key_path: PathBuf,
    v1_key_path: PathBuf,
    passphrase: Option<String>,
}

impl EncryptedFile {
    /// `passphrase` selects Argon2id for a new file; see the module docs.
    pub fn new(config_dir: &Path, passphrase: Option<String>) -> EncryptedFile {
        EncryptedFile {
            path: config_dir.join(SECRETS_FILE),
            key_path: config_dir.join(KEY_FILE),
            v1_key_path: config_dir.join(V1_KEY_FILE),
            passphrase,
        }
    }

    fn err(&self, message: impl std::fmt::Display) -> SecretError {
        SecretError::File {
            path: self.path.clone(),
            message: message.to_string(),
        }
    }

    fn decrypt_err(&self) -> SecretError {
        SecretError::Decrypt {
            path: self.path.clone(),
        }
    }

    /// The file as stored, migrated to version 2 first when it is older.
    fn load(&self) -> Result<Option<SecretsFile>, SecretError> {
        let file: SecretsFile = match std::fs::read_to_string(&self.path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| self.err(e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.err(e)),
        };
        match file.version {
            1 => self.migrate(file).map(Some),
            VERSION => Ok(Some(file)),
            other => Err(self.err(format!(
                "version {other} is newer than this PiCode reads ({VERSION})"
            ))),
        }
    }

    /// Rewrites a version 1 file as version 2: every entry opened with the
    /// old cipher and sealed again, the file replaced in one rename, and only
    /// then the old key file removed.
    fn migrate(&self, old: SecretsFile) -> Result<SecretsFile, SecretError> {
        let v1 = self.v1_cipher(&old)?;
        let mut file = SecretsFile {
            version: VERSION,
            kdf: old.kdf,
            salt: old.salt,
            entries: BTreeMap::new(),
        };
        let sealer = self.sealer(&file)?;
        for (name, sealed) in &old.entries {
            let plain = match sealed {
                Sealed::XChaCha { nonce, ciphertext } => {
                    self.open_v1(&v1, name, nonce, ciphertext)?
                }
                Sealed::Box(_) => return Err(self.err("a version 2 entry in a version 1 file")),
            };
            let value = sealer
                .seal(name, plain.as_bytes())
                .map_err(|e| self.err(e))?;
            file.entries.insert(name.clone(), Sealed::Box(value));
        }
        self.save(&file)?;
        if file.kdf == "keyfile" {
            match std::fs::remove_file(&self.v1_key_path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(SecretError::File {
                        path: self.v1_key_path.clone(),
                        message: e.to_string(),
                    })
                }
            }
        }
        Ok(file)
    }

    fn create(&self) -> Result<SecretsFile, SecretError> {
        let (kdf, salt) = match &self.passphrase {
            Some(_) => ("argon2id", hex::encode(random_bytes::<16>()?)),
            None => ("keyfile", String::new()),
        };
        Ok(SecretsFile {
            version: VERSION,
            kdf: kdf.to_owned(),
            salt,
            entries: BTreeMap::new(),
        })
    }

    fn save(&self, file: &SecretsFile) -> Result<(), SecretError> {
        let text = serde_json::to_string_pretty(file).map_err(|e| self.err(e))?;
        write_private(&self.path, text.as_bytes()).map_err(|e| self.err(e))
    }

    /// The key derived from the passphrase, for `argon2id` files.
    fn passphrase_key(&self, file: &SecretsFile) -> Result<[u8; 32], SecretError> {
        let Some(passphrase) = &self.passphrase else {
            return Err(SecretError::NeedPassphrase {
                path: self.path.clone(),
            });
        };
        let salt = hex::decode(&file.salt).map_err(|e| self.err(e))?;
        let mut key = [0u8; 32];
        argon2::Argon2::default()
            .hash_password_into(passphrase.as_bytes(), &salt, &mut key)
            .map_err(|e| self.err(e))?;
        Ok(key)
    }

    /// The version 2 cipher of a file.
    fn sealer(&self, file: &SecretsFile) -> Result<SecretBox, SecretError> {
        match file.kdf.as_str() {
            "argon2id" => Ok(SecretBox::from_key(&self.passphrase_key(file)?)),
            "keyfile" => SecretBox::load_or_create(&self.key_path).map_err(|e| SecretError::File {
                path: self.key_path.clone(),
                message: e.to_string(),
            }),
            other => Err(self.err(format!("unknown kdf `{other}`"))),
        }
    }

    /// The version 1 cipher of a file, to migrate it.
    fn v1_cipher(&self, file: &SecretsFile) -> Result<XChaCha20Poly1305, SecretError> {
        let key = match file.kdf.as_str() {
            "argon2id" => self.passphrase_key(file)?,
            "keyfile" => {
                let key_err = |message: String| SecretError::File {
                    path: self.v1_key_path.clone(),
                    message,
                };
                std::fs::read(&self.v1_key_path)
                    .map_err(|e| key_err(e.to_string()))?
                    .try_into()
                    .map_err(|_| key_err("expected exactly 32 bytes".to_owned()))?
            }
            other => return Err(self.err(format!("unknown kdf `{other}`"))),
        };
        Ok(XChaCha20Poly1305::new(&key.into()))
    }

    fn open_v1(
        &self,
        cipher: &XChaCha20Poly1305,
        name: &str,
        nonce: &str,
        ciphertext: &str,
    ) -> Result<String, SecretError> {
        let nonce = hex::decode(nonce).map_err(|e| self.err(e))?;
        let ciphertext = hex::decode(ciphertext).map_err(|e| self.err(e))?;
        if nonce.len() != 24 {
            return Err(self.err("bad nonce length"));
        }
        let plain = cipher
            .decrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &ciphertext,
                    aad: name.as_bytes(),
                },
            )
            .map_err(|_| self.decrypt_err())?;
        String::from_utf8(plain).map_err(|e| self.err(e))
    }

    pub fn get(&self, name: &str) -> Result<Option<String>, SecretError> {
        let Some(file) = self.load()? else {
            return Ok(None);
        };
        let Some(sealed) = file.entries.get(name) else {
            return Ok(None);
        };
        let Sealed::Box(sealed) = sealed else {
            return Err(self.err("a version 1 entry in a version 2 file"));
        };
        self.sealer(&file)?
            .open_string(name, sealed)
            .map(Some)
            .map_err(|_| self.decrypt_err())
    }

    pub fn set(&self, name: &str, value: &str) -> Result<(), SecretError> {
        let mut file = match self.load()? {
            Some(f) => f,
            None => self.create()?,
        };
        let sealed = self
            .sealer(&file)?
            .seal(name, value.as_bytes())
            .map_err(|e| self.err(e))?;
        file.entries.insert(name.to_owned(), Sealed::Box(sealed));
        self.save(&file)
    }

    pub fn remove(&self, name: &str) -> Result<(), SecretError> {
        let Some(mut file) = self.load()? else {
            return Ok(());
        };
        if file.entries.remove(name).is_some() {
            self.save(&file)?;
        }
        Ok(())
    }
}

fn random_bytes<const N: usize>() -> Result<[u8; N], SecretError> {
    let mut buf = [0u8; N];
    getrandom::getrandom(&mut buf).map_err(|e| SecretError::File {
        path: PathBuf::from("<random>"),
        message: e.to_string(),
    })?;
    Ok(buf)
}

/// Writes a file readable only by its owner, creating parent directories.
///
/// The mode is set at creation (not chmod afterwards) so there is no window
/// in which another user could open the file.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyfile_store_round_trips_and_keeps_the_key_private() {
        let dir = tempfile::tempdir().unwrap();
        let store = EncryptedFile::new(dir.path(), None);
        assert_eq!(store.get("provider:a").unwrap(), None);
        store.set("provider:a", "sk-secret").unwrap();
        store.set("provider:b", "other").unwrap();
        assert_eq!(
            store.get("provider:a").unwrap().as_deref(),
            Some("sk-secret")
        );
        let text = std::fs::read_to_string(dir.path().join(SECRETS_FILE)).unwrap();
        assert!(!text.contains("sk-secret"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        store.remove("provider:a").unwrap();
        assert_eq!(store.get("provider:a").unwrap(), None);
        assert_eq!(store.get("provider:b").unwrap().as_deref(), Some("other"));
    }

    #[test]
    fn swapped_ciphertexts_do_not_decrypt() {
        let dir = tempfile::tempdir().unwrap();
        let store = EncryptedFile::new(dir.path(), None);
        store.set("a", "one").unwrap();
        store.set("b", "two").unwrap();
        let mut file = store.load().unwrap().unwrap();
        let a = file.entries.remove("a").unwrap();
        file.entries.insert("b".into(), a);
        store.save(&file).unwrap();
        assert!(matches!(store.get("b"), Err(SecretError::Decrypt { .. })));
    }

    /// A version 1 file as PiCode wrote it before the `secrets` crate.
    fn write_v1(dir: &Path, passphrase: Option<&str>, entries: &[(&str, &str)]) {
        let (kdf, salt, key) = match passphrase {
            Some(p) => {
                let salt = [7u8; 16];
                let mut key = [0u8; 32];
                argon2::Argon2::default()
                    .hash_password_into(p.as_bytes(), &salt, &mut key)
                    .unwrap();
                ("argon2id", hex::encode(salt), key)
            }
            None => {
                let key = [9u8; 32];
                write_private(&dir.join(V1_KEY_FILE), &key).unwrap();
                ("keyfile", String::new(), key)
            }
        };
        let cipher = XChaCha20Poly1305::new(&key.into());
        let mut sealed = BTreeMap::new();
        for (i, (name, value)) in entries.iter().enumerate() {
            let nonce = [i as u8; 24];
            let ciphertext = cipher
                .encrypt(
                    XNonce::from_slice(&nonce),
                    Payload {
                        msg: value.as_bytes(),
                        aad: name.as_bytes(),
                    },
                )
                .unwrap();
            sealed.insert(
                (*name).to_owned(),
                Sealed::XChaCha {
                    nonce: hex::encode(nonce),
                    ciphertext: hex::encode(ciphertext),
                },
            );
        }
        let file = SecretsFile {
            version: 1,
            kdf: kdf.to_owned(),
            salt,
            entries: sealed,
        };
        std::fs::write(
            dir.join(SECRETS_FILE),
            serde_json::to_string(&file).unwrap(),
        )
        .unwrap();
    }

    #[test]
    fn a_version_1_key_file_store_is_migrated_on_first_read() {
        let dir = tempfile::tempdir().unwrap();
        write_v1(
            dir.path(),
            None,
            &[("provider:a", "sk-one"), ("provider:b", "two")],
        );
        let store = EncryptedFile::new(dir.path(), None);
        assert_eq!(store.get("provider:a").unwrap().as_deref(), Some("sk-one"));
        // Rewritten under the new key; the old key is gone.
        let text = std::fs::read_to_string(dir.path().join(SECRETS_FILE)).unwrap();
        let file: SecretsFile = serde_json::from_str(&text).unwrap();
        assert_eq!(file.version, VERSION);
        assert!(file.entries.values().all(|e| matches!(e, Sealed::Box(_))));
        assert!(!text.contains("sk-one"));
        assert!(!dir.path().join(V1_KEY_FILE).exists());
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(store.get("provider:b").unwrap().as_deref(), Some("two"));
        store.set("provider:c", "three").unwrap();
        assert_eq!(store.get("provider:c").unwrap().as_deref(), Some("three"));
    }

    #[test]
    fn a_version_1_passphrase_store_is_migrated_only_with_its_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        write_v1(dir.path(), Some("correct horse"), &[("a", "one")]);
        let none = EncryptedFile::new(dir.path(), None);
        assert!(matches!(
            none.get("a"),
            Err(SecretError::NeedPassphrase { .. })
        ));
        let wrong = EncryptedFile::new(dir.path(), Some("battery staple".into()));
        assert!(matches!(wrong.get("a"), Err(SecretError::Decrypt { .. })));
        // Neither failure touched the file.
        let text = std::fs::read_to_string(dir.path().join(SECRETS_FILE)).unwrap();
        assert!(text.contains("\"version\":1"), "{text}");
        let right = EncryptedFile::new(dir.path(), Some("correct horse".into()));
        assert_eq!(right.get("a").unwrap().as_deref(), Some("one"));
        assert_eq!(right.load().unwrap().unwrap().version, VERSION);
        assert!(!dir.path().join(KEY_FILE).exists());
        assert_eq!(right.get("a").unwrap().as_deref(), Some("one"));
    }

    #[test]
    fn a_key_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = EncryptedFile::new(dir.path(), None);
        store.set("a", "one").unwrap();
        let key = dir.path().join(KEY_FILE);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = store.get("a").unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[test]
    fn passphrase_store_needs_the_same_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let store = EncryptedFile::new(dir.path(), Some("correct horse".into()));
        store.set("a", "one").unwrap();
        assert!(!dir.path().join(KEY_FILE).exists());
        assert_eq!(store.get("a").unwrap().as_deref(), Some("one"));
        let wrong = EncryptedFile::new(dir.path(), Some("battery staple".into()));
        assert!(matches!(wrong.get("a"), Err(SecretError::Decrypt { .. })));
        let none = EncryptedFile::new(dir.path(), None);
        assert!(matches!(
            none.get("a"),
            Err(SecretError::NeedPassphrase { .. })
        ));
    }
}
