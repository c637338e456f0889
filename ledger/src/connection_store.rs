//! Where the vault keeps users' upstream OAuth tokens: one encrypted file per connection, outside the chain, and the versioned key file they are wrapped with.
//!
//! Layout (docs/FORMAT.md section 15): `DIR/connections/<blake3 of user and provider>.json`,
//! each a [`Wrapped`] document, and `DIR/connections/LOCK`. Writers (a link, a refresh, an
//! unlink, a key rotation) hold the lock exclusively, readers share it, so a rotation never
//! races a refresh into a file wrapped with a key it is about to drop. Writes are atomic
//! (temporary file, fsync, rename, fsync of the directory).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use docket_core::connection::{
    ConnectionError, ConnectionKeys, NONCE_BYTES, UpstreamSecrets, Wrapped,
};
use docket_schemas::{decode_base64, encode_base64};
use rand::RngCore;
use serde::{Deserialize, Serialize};

/// Bytes of a wrapped-secret file the store reads.
pub const WRAPPED_FILE_BYTES_MAX: usize = 64 * 1024;
/// Key versions a key file may hold (a rotation holds two for a moment).
pub const KEY_VERSIONS_MAX: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum ConnectionStoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {why}")]
    KeyFile { path: PathBuf, why: String },
    #[error("{path}: {source}")]
    Secrets {
        path: PathBuf,
        source: ConnectionError,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ConnectionStoreError + '_ {
    move |source| ConnectionStoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFileWire {
    current: u32,
    /// Version (decimal) → base64 of 32 bytes.
    keys: BTreeMap<String, String>,
}

/// Reads a connection key file (JSON: `{"current": N, "keys": {"N": "<base64 of 32 bytes>"}}`).
pub fn read_keys(path: &Path) -> Result<ConnectionKeys, ConnectionStoreError> {
    let bad = |why: String| ConnectionStoreError::KeyFile {
        path: path.to_path_buf(),
        why,
    };
    let bytes = fs::read(path).map_err(io(path))?;
    let wire: KeyFileWire = serde_json::from_slice(&bytes)
        .map_err(|e| bad(format!("not a connection key file: {e}")))?;
    if wire.keys.len() > KEY_VERSIONS_MAX {
        return Err(bad(format!("more than {KEY_VERSIONS_MAX} key versions")));
    }
    let mut keys = BTreeMap::new();
    for (v, k) in &wire.keys {
        let version: u32 = v
            .parse()
            .map_err(|_| bad(format!("key version {v:?} is not a number")))?;
        let key: [u8; 32] = decode_base64(k)
            .and_then(|k| k.try_into().ok())
            .ok_or_else(|| bad(format!("key version {version} is not 32 bytes of base64")))?;
        keys.insert(version, key);
    }
    if !keys.contains_key(&wire.current) {
        return Err(bad(format!(
            "the current version {} has no key",
            wire.current
        )));
    }
    Ok(ConnectionKeys {
        current: wire.current,
        keys,
    })
}

/// Writes a key file atomically, readable by its owner only.
fn write_keys(path: &Path, keys: &ConnectionKeys) -> Result<(), ConnectionStoreError> {
    let wire = KeyFileWire {
        current: keys.current,
        keys: keys
            .keys
            .iter()
            .map(|(v, k)| (v.to_string(), encode_base64(k)))
            .collect(),
    };
    let bytes = serde_json::to_vec_pretty(&wire).map_err(|e| ConnectionStoreError::KeyFile {
        path: path.to_path_buf(),
        why: e.to_string(),
    })?;
    write_atomically(path, &bytes)
}

/// Creates a new key file with one random key (version 1); refuses to overwrite one, even
/// one that appears while it runs.
pub fn create_keys(path: &Path) -> Result<(), ConnectionStoreError> {
    let mut key = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut key);
    let wire = KeyFileWire {
        current: 1,
        keys: [("1".to_string(), encode_base64(&key))]
            .into_iter()
            .collect(),
    };
    let bytes = serde_json::to_vec_pretty(&wire).map_err(|e| ConnectionStoreError::KeyFile {
        path: path.to_path_buf(),
        why: e.to_string(),
    })?;
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => ConnectionStoreError::KeyFile {
            path: path.to_path_buf(),
            why: "exists already; a new key would make every stored connection unreadable".into(),
        },
        _ => io(path)(e),
    })?;
    f.write_all(&bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ConnectionStoreError> {
    // A fresh name, created new: never an existing file (or a link) someone else made.
    let mut suffix = [0u8; 8];
    rand::rngs::OsRng.fill_bytes(&mut suffix);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(
        ".{name}.{}.tmp",
        suffix
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    ));
    {
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut f = options.open(&tmp).map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(io(path)(e));
    }
    // A bare file name's parent is "": the current directory.
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// What a key rotation did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rotated {
    pub from_version: u32,
    pub to_version: u32,
    pub rewrapped: usize,
}

/// The encrypted connection files and the key they are wrapped with.
pub struct ConnectionStore {
    dir: PathBuf,
    keys_path: PathBuf,
    /// The key file as last read; re-read when a file names a version it lacks (a rotation
    /// by another process) and before every write.
    keys: RwLock<ConnectionKeys>,
}

impl std::fmt::Debug for ConnectionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionStore")
            .field("dir", &self.dir)
            .field("keys_path", &self.keys_path)
            .finish_non_exhaustive()
    }
}

impl ConnectionStore {
    /// Opens (creating when absent) `data/connections`, with the key file at `keys_path`.
    pub fn open(data: &Path, keys_path: &Path) -> Result<ConnectionStore, ConnectionStoreError> {
        let dir = data.join("connections");
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(io(&dir))?;
        }
        let keys = read_keys(keys_path)?;
        Ok(ConnectionStore {
            dir,
            keys_path: keys_path.to_path_buf(),
            keys: RwLock::new(keys),
        })
    }

    fn path_of(&self, user: &str, provider: &str) -> PathBuf {
        let h = blake3::hash(format!("{user}\n{provider}").as_bytes());
        self.dir.join(format!("{}.json", &h.to_hex()[..32]))
    }

    fn lock(&self, exclusive: bool) -> Result<File, ConnectionStoreError> {
        let path = self.dir.join("LOCK");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        if exclusive { f.lock() } else { f.lock_shared() }.map_err(io(&path))?;
        Ok(f)
    }

    fn reload_keys(&self) -> Result<ConnectionKeys, ConnectionStoreError> {
        let keys = read_keys(&self.keys_path)?;
        *docket_core::desk::write(&self.keys) = keys.clone();
        Ok(keys)
    }

    /// The secrets of `user`'s connection to `provider`; `None` when there is none.
    pub fn get(
        &self,
        user: &str,
        provider: &str,
    ) -> Result<Option<UpstreamSecrets>, ConnectionStoreError> {
        let _lock = self.lock(false)?;
        let path = self.path_of(user, provider);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path)(e)),
        };
        let secrets = |source| ConnectionStoreError::Secrets {
            path: path.clone(),
            source,
        };
        if bytes.len() > WRAPPED_FILE_BYTES_MAX {
            return Err(secrets(ConnectionError::Malformed("file too large".into())));
        }
        let wrapped: Wrapped = serde_json::from_slice(&bytes)
            .map_err(|e| secrets(ConnectionError::Malformed(e.to_string())))?;
        let keys = docket_core::desk::read(&self.keys).clone();
        match keys.unwrap(&wrapped, user, provider) {
            Err(ConnectionError::UnknownKeyVersion(_)) => self
                .reload_keys()?
                .unwrap(&wrapped, user, provider)
                .map(Some)
                .map_err(secrets),
            other => other.map(Some).map_err(secrets),
        }
    }

    /// Keeps `secrets` as `user`'s connection to `provider`, under the key file's current key.
    pub fn put(
        &self,
        user: &str,
        provider: &str,
        secrets: &UpstreamSecrets,
    ) -> Result<(), ConnectionStoreError> {
        let _lock = self.lock(true)?;
        let keys = self.reload_keys()?;
        self.put_locked(&keys, user, provider, secrets)
    }

    fn put_locked(
        &self,
        keys: &ConnectionKeys,
        user: &str,
        provider: &str,
        secrets: &UpstreamSecrets,
    ) -> Result<(), ConnectionStoreError> {
        let path = self.path_of(user, provider);
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let wrapped = keys
            .wrap(user, provider, secrets, nonce)
            .map_err(|source| ConnectionStoreError::Secrets {
                path: path.clone(),
                source,
            })?;
        let bytes = serde_json::to_vec(&wrapped).map_err(|e| ConnectionStoreError::Secrets {
            path: path.clone(),
            source: ConnectionError::Malformed(e.to_string()),
        })?;
        write_atomically(&path, &bytes)
    }

    /// Deletes `user`'s connection to `provider`; whether there was one.
    pub fn delete(&self, user: &str, provider: &str) -> Result<bool, ConnectionStoreError> {
        let _lock = self.lock(true)?;
        let path = self.path_of(user, provider);
        match fs::remove_file(&path) {
            Ok(()) => {
                File::open(&self.dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io(&self.dir))?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Re-wraps every connection under a new key and then drops the old keys from the key
    /// file. A crash part-way leaves a key file holding both, so every file still opens.
    pub fn rotate(&self) -> Result<Rotated, ConnectionStoreError> {
        let _lock = self.lock(true)?;
        let old = self.reload_keys()?;
        let to_version = old
            .keys
            .keys()
            .max()
            .and_then(|v| v.checked_add(1))
            .ok_or_else(|| ConnectionStoreError::KeyFile {
                path: self.keys_path.clone(),
                why: "no key version left".into(),
            })?;
        let mut fresh = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut fresh);
        let mut both = old.clone();
        both.keys.insert(to_version, fresh);
        both.current = to_version;
        write_keys(&self.keys_path, &both)?;
        *docket_core::desk::write(&self.keys) = both.clone();
        let mut rewrapped = 0;
        for entry in fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let path = entry.map_err(io(&self.dir))?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let bytes = fs::read(&path).map_err(io(&path))?;
            let secrets_err = |source| ConnectionStoreError::Secrets {
                path: path.clone(),
                source,
            };
            let wrapped: Wrapped = serde_json::from_slice(&bytes)
                .map_err(|e| secrets_err(ConnectionError::Malformed(e.to_string())))?;
            // The file's own user and provider, checked by the associated data and by its name.
            if self.path_of(&wrapped.user, &wrapped.provider) != path {
                return Err(secrets_err(ConnectionError::Malformed(
                    "the file's name is not its user's and provider's".into(),
                )));
            }
            let secrets = both
                .unwrap(&wrapped, &wrapped.user, &wrapped.provider)
                .map_err(secrets_err)?;
            self.put_locked(&both, &wrapped.user, &wrapped.provider, &secrets)?;
            rewrapped += 1;
        }
        let new = ConnectionKeys {
            current: to_version,
            keys: [(to_version, fresh)].into_iter().collect(),
        };
        write_keys(&self.keys_path, &new)?;
        *docket_core::desk::write(&self.keys) = new;
        Ok(Rotated {
            from_version: old.current,
            to_version,
            rewrapped,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(tag: &str) -> UpstreamSecrets {
        UpstreamSecrets {
            refresh_token: Some(format!("refresh-{tag}")),
            access_token: format!("access-{tag}"),
            access_expires_at: None,
            scopes: vec!["repo".into()],
        }
    }

    #[test]
    fn put_get_rotate_delete() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("connection.key");
        create_keys(&keys).unwrap();
        assert!(create_keys(&keys).is_err(), "an existing key file is kept");
        let store = ConnectionStore::open(dir.path(), &keys).unwrap();
        store.put("alice", "gh", &secrets("a")).unwrap();
        store.put("bob", "gh", &secrets("b")).unwrap();
        assert_eq!(store.get("alice", "gh").unwrap(), Some(secrets("a")));
        assert_eq!(store.get("carol", "gh").unwrap(), None);
        let on_disk: String = fs::read_dir(dir.path().join("connections"))
            .unwrap()
            .map(|e| fs::read_to_string(e.unwrap().path()).unwrap())
            .collect();
        assert!(!on_disk.contains("access-a") && !on_disk.contains("refresh-a"));

        // Another process (the CLI) rotates; this store follows from the key file.
        let other = ConnectionStore::open(dir.path(), &keys).unwrap();
        let r = other.rotate().unwrap();
        assert_eq!((r.from_version, r.to_version, r.rewrapped), (1, 2, 2));
        assert_eq!(
            read_keys(&keys).unwrap().keys.len(),
            1,
            "the old key is gone"
        );
        assert_eq!(store.get("bob", "gh").unwrap(), Some(secrets("b")));

        // A file copied over another user's does not open as theirs.
        let a = store.path_of("alice", "gh");
        let b = store.path_of("bob", "gh");
        fs::copy(&a, &b).unwrap();
        assert!(matches!(
            store.get("bob", "gh"),
            Err(ConnectionStoreError::Secrets {
                source: ConnectionError::Open,
                ..
            })
        ));
        assert!(store.delete("alice", "gh").unwrap());
        assert!(!store.delete("alice", "gh").unwrap());
        assert_eq!(store.get("alice", "gh").unwrap(), None);
    }
}
