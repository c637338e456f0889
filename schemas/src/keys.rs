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

/// The key id securesystemslib (and so python-tuf, in-toto) gives an ed25519 key by
/// default: lowercase hex SHA-256 of the canonical JSON of its key dict,
/// `{"keytype":"ed25519","keyval":{"public":"<hex of the key>"},"scheme":"ed25519"}`.
/// DSSE envelopes signed with that library carry it as their `keyid`, so the registry
/// knows every key by this alias too (docs/FORMAT.md, section 3).
pub fn securesystemslib_key_id(public_key: &[u8; 32]) -> String {
    let canonical = format!(
        r#"{{"keytype":"ed25519","keyval":{{"public":"{}"}},"scheme":"ed25519"}}"#,
        hex(public_key)
    );
    hex(&Sha256::digest(canonical.as_bytes()))
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
    fn securesystemslib_key_id_matches_the_library() {
        // securesystemslib 1.6: CryptoSigner over the ed25519 key with public bytes
        // ed6f62e6...29ed has keyid 2d8db254...97f2 (compute_default_keyid).
        let pk: [u8; 32] = (0..32)
            .map(|i| {
                u8::from_str_radix(
                    &"ed6f62e68614e62288519c64cdb1cb1b2b6c8f12ba5ba4e83b2acf2b57aa29ed"
                        [2 * i..2 * i + 2],
                    16,
                )
                .unwrap()
            })
            .collect::<Vec<u8>>()
            .try_into()
            .unwrap();
        assert_eq!(
            securesystemslib_key_id(&pk),
            "2d8db25409bf9765607ff31beebe79aff06dca40474c4d052299990e94e697f2"
        );
        assert_ne!(securesystemslib_key_id(&pk), key_id(&pk));
        // The known-answer vector of docs/FORMAT.md.
        assert_eq!(
            securesystemslib_key_id(&[0; 32]),
            "7f7373360bc914a5d4a7bd87711615178beb6cf52494fcc49082ec65ba62908c"
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
