//! Checkpoints: the ledger's signed statement of (origin, size, Merkle root) as a C2SP
//! `tlog-checkpoint` signed note, and witnesses' C2SP `cosignature/v1` lines on it.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::keys::{decode_base64, encode_base64};

/// Longest origin line accepted, in bytes.
pub const ORIGIN_BYTES_MAX: usize = 256;
/// Longest signed note accepted, in bytes (a body and a few dozen signature lines).
pub const NOTE_BYTES_MAX: usize = 16 * 1024;
/// First line of the message a cosignature/v1 signs.
pub const COSIGNATURE_HEADER: &str = "cosignature/v1";
/// C2SP signed-note signature type of a log's Ed25519 key.
const ALG_ED25519: u8 = 0x01;
/// C2SP signed-note signature type of an Ed25519 cosignature/v1 key.
const ALG_COSIGNATURE_V1: u8 = 0x04;

/// What a checkpoint says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    /// Number of entries in the log (the last entry's seq, since seq starts at 1).
    pub size: u64,
    /// RFC 6962 root hash of the Merkle tree over the first `size` entries.
    pub root: [u8; 32],
}

/// Why a note is not a verified checkpoint or cosignature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("signed note is malformed: {0}")]
    Malformed(&'static str),
    #[error("no signature by {0:?} verifies")]
    NoValidSignature(String),
    #[error("no cosignature by witness {0:?} verifies")]
    NoValidCosignature(String),
}

/// A note split into its body (ending in a newline) and its signature lines.
pub fn split_note(note: &str) -> Result<(&str, Vec<&str>), CheckpointError> {
    if note.len() > NOTE_BYTES_MAX {
        return Err(CheckpointError::Malformed("note is too long"));
    }
    let split = note.find("\n\n").ok_or(CheckpointError::Malformed(
        "no blank line before signatures",
    ))?;
    let (body, sigs) = (&note[..=split], &note[split + 2..]);
    if !sigs.ends_with('\n') {
        return Err(CheckpointError::Malformed(
            "signature lines do not end in a newline",
        ));
    }
    Ok((body, sigs.lines().collect()))
}

impl Checkpoint {
    /// The checkpoint body: origin, size and base64 root, each ending in a newline.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            encode_base64(&self.root)
        )
    }

    /// The body signed as a C2SP note by `name`.
    pub fn sign(&self, name: &str, key: &SigningKey) -> String {
        let body = self.body();
        let sig = key.sign(body.as_bytes());
        let mut blob = note_key_id(name, key.verifying_key().as_bytes()).to_vec();
        blob.extend_from_slice(&sig.to_bytes());
        format!("{body}\n\u{2014} {name} {}\n", encode_base64(&blob))
    }

    /// Parses a signed note and checks that `name`'s key signed it; other signatures are ignored.
    pub fn verify(
        note: &str,
        name: &str,
        key: &VerifyingKey,
    ) -> Result<Checkpoint, CheckpointError> {
        let (body, sigs) = split_note(note)?;
        let want_id = note_key_id(name, key.as_bytes());
        let verified = signature_blobs(&sigs, name).any(|blob| {
            blob.len() == 68
                && blob[..4] == want_id
                && Signature::from_slice(&blob[4..])
                    .is_ok_and(|s| key.verify_strict(body.as_bytes(), &s).is_ok())
        });
        if !verified {
            return Err(CheckpointError::NoValidSignature(name.to_string()));
        }
        Checkpoint::parse_body(body)
    }

    /// The checkpoint a note states, with no signature checked: only to pick the key to check it with.
    pub fn parse_unverified(note: &str) -> Result<Checkpoint, CheckpointError> {
        Checkpoint::parse_body(split_note(note)?.0)
    }

    fn parse_body(body: &str) -> Result<Checkpoint, CheckpointError> {
        let mut lines = body.lines();
        let origin = lines
            .next()
            .filter(|o| !o.is_empty() && o.len() <= ORIGIN_BYTES_MAX);
        let origin = origin.ok_or(CheckpointError::Malformed("bad origin line"))?;
        let size = lines
            .next()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .filter(|s| *s == "0" || !s.starts_with('0'))
            .and_then(|s| s.parse::<u64>().ok());
        let size = size.ok_or(CheckpointError::Malformed("bad size line"))?;
        let root = lines
            .next()
            .and_then(decode_base64)
            .and_then(|h| <[u8; 32]>::try_from(h).ok());
        let root = root.ok_or(CheckpointError::Malformed("bad root hash line"))?;
        Ok(Checkpoint {
            origin: origin.to_string(),
            size,
            root,
        })
    }

    /// A witness's cosignature/v1 line on this checkpoint, made at `timestamp` (POSIX seconds).
    pub fn cosign(&self, name: &str, key: &SigningKey, timestamp: u64) -> String {
        cosign_body(&self.body(), name, key, timestamp)
    }

    /// A cosignature line on a received note: over its body exactly as signed (with any
    /// extension lines), which is what a verifier of that note checks.
    pub fn cosign_note(
        note: &str,
        name: &str,
        key: &SigningKey,
        timestamp: u64,
    ) -> Result<String, CheckpointError> {
        Ok(cosign_body(split_note(note)?.0, name, key, timestamp))
    }

    /// Checks that witness `name` with `key` cosigned `note`; returns the cosignature's timestamp.
    pub fn verify_cosignature(
        note: &str,
        name: &str,
        key: &VerifyingKey,
    ) -> Result<u64, CheckpointError> {
        let (body, sigs) = split_note(note)?;
        let want_id = cosignature_key_id(name, key.as_bytes());
        signature_blobs(&sigs, name)
            .find_map(|blob| {
                if blob.len() != 4 + 8 + 64 || blob[..4] != want_id {
                    return None;
                }
                let timestamp = u64::from_be_bytes(blob[4..12].try_into().ok()?);
                let sig = Signature::from_slice(&blob[12..]).ok()?;
                let message = cosigned_message(body, timestamp);
                key.verify_strict(message.as_bytes(), &sig)
                    .is_ok()
                    .then_some(timestamp)
            })
            .ok_or_else(|| CheckpointError::NoValidCosignature(name.to_string()))
    }
}

fn cosign_body(body: &str, name: &str, key: &SigningKey, timestamp: u64) -> String {
    let sig = key.sign(cosigned_message(body, timestamp).as_bytes());
    let mut blob = cosignature_key_id(name, key.verifying_key().as_bytes()).to_vec();
    blob.extend_from_slice(&timestamp.to_be_bytes());
    blob.extend_from_slice(&sig.to_bytes());
    format!("\u{2014} {name} {}\n", encode_base64(&blob))
}

fn cosigned_message(body: &str, timestamp: u64) -> String {
    format!("{COSIGNATURE_HEADER}\ntime {timestamp}\n{body}")
}

fn signature_blobs<'a>(sigs: &'a [&'a str], name: &'a str) -> impl Iterator<Item = Vec<u8>> + 'a {
    let prefix = format!("\u{2014} {name} ");
    sigs.iter()
        .filter_map(move |l| l.strip_prefix(prefix.as_str()))
        .filter_map(decode_base64)
}

/// C2SP signed-note key id for a log's ed25519 key: SHA-256(name || 0x0A || 0x01 || key)[..4].
pub fn note_key_id(name: &str, public_key: &[u8; 32]) -> [u8; 4] {
    key_id(name, ALG_ED25519, public_key)
}

/// C2SP key id of an Ed25519 cosignature/v1 key: SHA-256(name || 0x0A || 0x04 || key)[..4].
pub fn cosignature_key_id(name: &str, public_key: &[u8; 32]) -> [u8; 4] {
    key_id(name, ALG_COSIGNATURE_V1, public_key)
}

fn key_id(name: &str, alg: u8, public_key: &[u8; 32]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([0x0a, alg]);
    h.update(public_key);
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint() -> Checkpoint {
        Checkpoint {
            origin: "docket.example/ledger".into(),
            size: 42,
            root: [7; 32],
        }
    }

    #[test]
    fn sign_then_verify() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let cp = checkpoint();
        let note = cp.sign("docket.example/ledger", &key);
        assert!(note.starts_with("docket.example/ledger\n42\nBwcH"));
        assert_eq!(
            Checkpoint::verify(&note, "docket.example/ledger", &key.verifying_key()).unwrap(),
            cp
        );
        let tampered = note.replace("\n42\n", "\n43\n");
        assert!(
            Checkpoint::verify(&tampered, "docket.example/ledger", &key.verifying_key()).is_err()
        );
        let leading_zero = note.replace("\n42\n", "\n042\n");
        assert!(Checkpoint::parse_unverified(&leading_zero).is_err());
        let other = SigningKey::from_bytes(&[8; 32]);
        assert!(
            Checkpoint::verify(&note, "docket.example/ledger", &other.verifying_key()).is_err()
        );
    }

    #[test]
    fn a_cosignature_verifies_only_for_its_witness_and_its_checkpoint() {
        let log = SigningKey::from_bytes(&[9; 32]);
        let witness = SigningKey::from_bytes(&[5; 32]);
        let cp = checkpoint();
        let note = cp.sign(&cp.origin, &log);
        let cosigned = format!("{note}{}", cp.cosign("w1.example", &witness, 1_700_000_000));
        let w = witness.verifying_key();
        assert_eq!(
            Checkpoint::verify_cosignature(&cosigned, "w1.example", &w),
            Ok(1_700_000_000)
        );
        // The log's own signature still verifies beside it.
        assert_eq!(
            Checkpoint::verify(&cosigned, &cp.origin, &log.verifying_key()),
            Ok(cp.clone())
        );
        assert!(Checkpoint::verify_cosignature(&cosigned, "w2.example", &w).is_err());
        assert!(Checkpoint::verify_cosignature(&note, "w1.example", &w).is_err());
        // A cosignature moved onto another checkpoint does not verify there.
        let other = Checkpoint { size: 43, ..cp };
        let line = cosigned.lines().last().unwrap();
        let moved = format!("{}{line}\n", other.sign(&other.origin, &log));
        assert!(Checkpoint::verify_cosignature(&moved, "w1.example", &w).is_err());
    }
}
