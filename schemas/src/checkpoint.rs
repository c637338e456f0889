//! Checkpoints: the ledger's signed statement of (origin, size, head hash), as a C2SP signed note.
//!
//! The text is a C2SP `tlog-checkpoint` body; where a Merkle root will later
//! stand, the third line carries the chain's head entry hash.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::keys::{decode_base64, encode_base64};

/// Longest origin line accepted, in bytes.
pub const ORIGIN_BYTES_MAX: usize = 256;

/// What a checkpoint says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    /// Number of entries in the chain (the last entry's seq, since seq starts at 1).
    pub size: u64,
    /// Entry hash of the last entry; all zeros when the chain is empty.
    pub head: [u8; 32],
}

/// Why a note is not a verified checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("signed note is malformed: {0}")]
    Malformed(&'static str),
    #[error("no signature by {0:?} verifies")]
    NoValidSignature(String),
}

impl Checkpoint {
    /// The checkpoint body: origin, size and base64 head, each ending in a newline.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            encode_base64(&self.head)
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
        let split = note.find("\n\n").ok_or(CheckpointError::Malformed(
            "no blank line before signatures",
        ))?;
        let (body, sigs) = (&note[..=split], &note[split + 2..]);
        let want_id = note_key_id(name, key.as_bytes());
        let prefix = format!("\u{2014} {name} ");
        let verified = sigs
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .any(|b64| {
                decode_base64(b64).is_some_and(|blob| {
                    blob.len() == 68
                        && blob[..4] == want_id
                        && Signature::from_slice(&blob[4..])
                            .is_ok_and(|s| key.verify_strict(body.as_bytes(), &s).is_ok())
                })
            });
        if !verified {
            return Err(CheckpointError::NoValidSignature(name.to_string()));
        }
        Checkpoint::parse_body(body)
    }

    fn parse_body(body: &str) -> Result<Checkpoint, CheckpointError> {
        let mut lines = body.lines();
        let origin = lines
            .next()
            .filter(|o| !o.is_empty() && o.len() <= ORIGIN_BYTES_MAX);
        let origin = origin.ok_or(CheckpointError::Malformed("bad origin line"))?;
        let size = lines.next().and_then(|s| s.parse::<u64>().ok());
        let size = size.ok_or(CheckpointError::Malformed("bad size line"))?;
        let head = lines
            .next()
            .and_then(decode_base64)
            .and_then(|h| <[u8; 32]>::try_from(h).ok());
        let head = head.ok_or(CheckpointError::Malformed("bad head hash line"))?;
        Ok(Checkpoint {
            origin: origin.to_string(),
            size,
            head,
        })
    }
}

/// C2SP signed-note key id for ed25519: SHA-256(name || 0x0A || 0x01 || public key)[..4].
pub fn note_key_id(name: &str, public_key: &[u8; 32]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([0x0a, 0x01]);
    h.update(public_key);
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_then_verify() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let cp = Checkpoint {
            origin: "docket.example/ledger".into(),
            size: 42,
            head: [7; 32],
        };
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
        let other = SigningKey::from_bytes(&[8; 32]);
        assert!(
            Checkpoint::verify(&note, "docket.example/ledger", &other.verifying_key()).is_err()
        );
    }
}
