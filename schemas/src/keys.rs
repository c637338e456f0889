//! Key ids and the strictness check a producer key passes once, at registration.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use curve25519_dalek::edwards::CompressedEdwardsY;
use ed25519_dalek::VerifyingKey;
use sha2::{Digest, Sha256};

/// Why a public key is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("public key is not base64 of 32 bytes")]
    Encoding,
    #[error("public key is not a point on the curve")]
    NotAPoint,
    #[error("public key is not canonically encoded")]
    NonCanonical,
    #[error("public key has a small-order component (weak or mixed-order key)")]
    Weak,
}

/// The DSSE `keyid` of an ed25519 public key: lowercase hex of SHA-256 of its 32 bytes.
pub fn key_id(public_key: &[u8; 32]) -> String {
    hex(&Sha256::digest(public_key))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

/// Decodes base64 (standard or URL-safe, padded) of exactly 32 bytes.
pub fn decode_public_key(text: &str) -> Result<[u8; 32], KeyError> {
    let bytes = decode_base64(text).ok_or(KeyError::Encoding)?;
    bytes.try_into().map_err(|_| KeyError::Encoding)
}

/// Base64 as DSSE allows it when reading: standard or URL-safe alphabet.
pub fn decode_base64(text: &str) -> Option<Vec<u8>> {
    STANDARD
        .decode(text)
        .or_else(|_| URL_SAFE.decode(text))
        .ok()
}

pub fn encode_base64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Checks a producer key once so that batches of its signatures can be verified
/// at batch speed with strict semantics: the key must be a canonical encoding of
/// a point in the prime-order subgroup (no weak or mixed-order keys).
pub fn check_producer_key(public_key: &[u8; 32]) -> Result<VerifyingKey, KeyError> {
    let point = CompressedEdwardsY(*public_key)
        .decompress()
        .ok_or(KeyError::NotAPoint)?;
    if point.compress().to_bytes() != *public_key {
        return Err(KeyError::NonCanonical);
    }
    if point.is_small_order() || !point.is_torsion_free() {
        return Err(KeyError::Weak);
    }
    VerifyingKey::from_bytes(public_key).map_err(|_| KeyError::NotAPoint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_id_is_sha256_hex() {
        // SHA-256 of 32 zero bytes.
        assert_eq!(
            key_id(&[0; 32]),
            "66687aadf862bd776c8fc18b8e9f8e20089714856ee233b3902a591d0d5f2925"
        );
    }

    #[test]
    fn weak_keys_are_refused() {
        // The identity point and a small-order point.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(check_producer_key(&identity).unwrap_err(), KeyError::Weak);
        let good = ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key();
        assert!(check_producer_key(good.as_bytes()).is_ok());
    }
}
