//! Key files: an ed25519 keypair as a small JSON document, written owner-readable only.

use std::path::{Path, PathBuf};

use docket_schemas::{decode_base64, encode_base64, key_id};
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};

/// The JSON a key file holds.
#[derive(Serialize, Deserialize)]
struct KeyFile {
    /// base64 of the 32-byte ed25519 seed.
    secret_key: String,
    /// base64 of the 32-byte public key, for reference.
    public_key: String,
    key_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a docket key file ({why})")]
    Format { path: PathBuf, why: String },
    #[error("{path} exists; refusing to overwrite a key")]
    Exists { path: PathBuf },
}

/// Reads a key file.
pub fn read(path: &Path) -> Result<SigningKey, KeyFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Io {
        path: path.into(),
        source,
    })?;
    let kf: KeyFile = serde_json::from_str(&text).map_err(|e| KeyFileError::Format {
        path: path.into(),
        why: e.to_string(),
    })?;
    let seed: [u8; 32] = decode_base64(&kf.secret_key)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| KeyFileError::Format {
            path: path.into(),
            why: "secret_key is not base64 of 32 bytes".into(),
        })?;
    let key = SigningKey::from_bytes(&seed);
    if key_id(key.verifying_key().as_bytes()) != kf.key_id {
        return Err(KeyFileError::Format {
            path: path.into(),
            why: "key_id does not match the secret key".into(),
        });
    }
    Ok(key)
}

/// Writes a key file that does not exist yet, readable by its owner only.
pub fn write(path: &Path, key: &SigningKey) -> Result<(), KeyFileError> {
    use std::io::Write;
    let pk = key.verifying_key();
    let kf = KeyFile {
        secret_key: encode_base64(key.as_bytes()),
        public_key: encode_base64(pk.as_bytes()),
        key_id: key_id(pk.as_bytes()),
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::AlreadyExists => KeyFileError::Exists { path: path.into() },
        _ => KeyFileError::Io {
            path: path.into(),
            source,
        },
    })?;
    let text = serde_json::to_string_pretty(&kf).map_err(|e| KeyFileError::Format {
        path: path.into(),
        why: e.to_string(),
    })?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.write_all(b"\n"))
        .and_then(|_| f.sync_all())
        .map_err(|source| KeyFileError::Io {
            path: path.into(),
            source,
        })
}
