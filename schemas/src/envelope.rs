//! The DSSE envelope: how an event is signed and carried, byte for byte.
//!
//! The signature covers DSSE's pre-authentication encoding (PAE) of the payload
//! type and the exact payload bytes, so nothing is re-serialised or
//! canonicalised before hashing or verifying.

use std::borrow::Cow;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::event::{Event, EventError};
use crate::keys::{decode_base64, encode_base64, key_id};
use crate::limits::*;

/// The DSSE `payloadType` of a Docket event.
pub const PAYLOAD_TYPE: &str = "application/vnd.docket.event+json";

/// DSSE's pre-authentication encoding: `DSSEv1 SP LEN(type) SP type SP LEN(body) SP body`.
pub fn pae(payload_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + payload_type.len() + body.len());
    out.extend_from_slice(b"DSSEv1 ");
    out.extend_from_slice(payload_type.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload_type.as_bytes());
    out.push(b' ');
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(body);
    out
}

/// One signature of an envelope, as on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EnvelopeSignature {
    /// Hint naming the signing key (DSSE: unauthenticated): Docket's key id (lowercase hex
    /// SHA-256 of the public key), securesystemslib's, or, for a user's own decision, any
    /// (docs/FORMAT.md, section 3).
    pub keyid: String,
    /// base64 of the 64-byte ed25519 signature over PAE(payloadType, payload).
    pub sig: String,
}

/// The envelope as on the wire (DSSE's JSON form).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EnvelopeWire<'a> {
    /// base64 of the exact event JSON bytes.
    #[serde(borrow)]
    pub payload: Cow<'a, str>,
    /// Always `application/vnd.docket.event+json`.
    #[serde(rename = "payloadType", borrow)]
    pub payload_type: Cow<'a, str>,
    pub signatures: Vec<EnvelopeSignature>,
}

/// A decoded envelope: payload bytes and the one signature, not yet verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub payload: Vec<u8>,
    pub key_id: String,
    pub signature: Signature,
}

/// Why bytes are not an acceptable envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("envelope is {len} bytes, over the {ENVELOPE_BYTES_MAX}-byte limit")]
    Oversize { len: usize },
    #[error("envelope is not DSSE JSON: {0}")]
    Malformed(String),
    #[error("payloadType is {0:?}, expected {PAYLOAD_TYPE:?}")]
    PayloadType(String),
    #[error("payload is not base64")]
    PayloadEncoding,
    #[error("payload is {len} bytes, over the {PAYLOAD_BYTES_MAX}-byte limit")]
    PayloadOversize { len: usize },
    #[error("envelope has {0} signatures, expected exactly {SIGNATURES_PER_ENVELOPE_MAX}")]
    SignatureCount(usize),
    #[error("keyid is over {KEY_ID_BYTES_MAX} bytes")]
    KeyIdOversize,
    #[error("signature is not base64 of 64 bytes")]
    SignatureEncoding,
    #[error("signature is not canonical (non-canonical or small-order R)")]
    SignatureNotCanonical,
}

impl Envelope {
    /// Decodes an envelope from the exact bytes received; checks form and limits, not the signature.
    pub fn decode(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        if bytes.len() > ENVELOPE_BYTES_MAX {
            return Err(EnvelopeError::Oversize { len: bytes.len() });
        }
        // Unknown fields are allowed, but only as plain JSON any verifier can parse.
        crate::strict_json::check(bytes).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
        let wire: EnvelopeWire<'_> =
            serde_json::from_slice(bytes).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
        if wire.payload_type != PAYLOAD_TYPE {
            return Err(EnvelopeError::PayloadType(
                wire.payload_type.chars().take(80).collect(),
            ));
        }
        if wire.signatures.len() != SIGNATURES_PER_ENVELOPE_MAX {
            return Err(EnvelopeError::SignatureCount(wire.signatures.len()));
        }
        let payload = decode_base64(&wire.payload).ok_or(EnvelopeError::PayloadEncoding)?;
        if payload.len() > PAYLOAD_BYTES_MAX {
            return Err(EnvelopeError::PayloadOversize { len: payload.len() });
        }
        let sig = &wire.signatures[0];
        if sig.keyid.len() > KEY_ID_BYTES_MAX {
            return Err(EnvelopeError::KeyIdOversize);
        }
        let sig_bytes: [u8; 64] = decode_base64(&sig.sig)
            .and_then(|b| b.try_into().ok())
            .ok_or(EnvelopeError::SignatureEncoding)?;
        if !r_is_canonical(&sig_bytes) {
            return Err(EnvelopeError::SignatureNotCanonical);
        }
        Ok(Envelope {
            payload,
            key_id: sig.keyid.clone(),
            signature: Signature::from_bytes(&sig_bytes),
        })
    }

    /// The bytes the signature covers.
    pub fn signed_bytes(&self) -> Vec<u8> {
        pae(PAYLOAD_TYPE, &self.payload)
    }

    /// Strict single verification (RFC 8032 with canonical `s` and `R`, no small-order `R`).
    pub fn verify(&self, key: &VerifyingKey) -> bool {
        key.verify_strict(&self.signed_bytes(), &self.signature)
            .is_ok()
    }

    /// Decodes the payload as an event.
    pub fn event(&self) -> Result<Event, EventError> {
        Event::from_payload(&self.payload)
    }
}

/// Batch verification computes with the decoded `R`, so the encoding checks that
/// strict verification makes on `R` are made here, on the bytes: `y` below the field
/// prime, and not one of the small-order points (in either sign). No decompression:
/// that would cost more than a third of a batched verification.
fn r_is_canonical(sig: &[u8; 64]) -> bool {
    let r: &[u8; 32] = sig[..32].try_into().unwrap_or(&[0; 32]);
    y_is_canonical(r) && !small_order_encodings().contains(r)
}

/// `y` (the low 255 bits, little-endian) is below 2^255 - 19.
fn y_is_canonical(enc: &[u8; 32]) -> bool {
    let top = enc[31] & 0x7f;
    !(top == 0x7f && enc[1..31].iter().all(|b| *b == 0xff) && enc[0] >= 0xed)
}

/// The encodings of the eight small-order points, with the sign bit set and clear.
fn small_order_encodings() -> &'static [[u8; 32]; 16] {
    static SET: std::sync::OnceLock<[[u8; 32]; 16]> = std::sync::OnceLock::new();
    SET.get_or_init(|| {
        let mut out = [[0u8; 32]; 16];
        for (i, p) in curve25519_dalek::constants::EIGHT_TORSION
            .iter()
            .enumerate()
        {
            let e = p.compress().to_bytes();
            out[2 * i] = e;
            out[2 * i + 1] = e;
            out[2 * i + 1][31] ^= 0x80;
        }
        out
    })
}

/// Signs exact payload bytes into envelope JSON.
pub fn seal(payload: &[u8], key: &SigningKey) -> Vec<u8> {
    seal_as(PAYLOAD_TYPE, payload, key)
}

/// Signs a payload of another DSSE `payloadType` (a vault request, a step-up assertion).
pub fn seal_as(payload_type: &'static str, payload: &[u8], key: &SigningKey) -> Vec<u8> {
    let signature = key.sign(&pae(payload_type, payload));
    let wire = EnvelopeWire {
        payload: Cow::Owned(encode_base64(payload)),
        payload_type: Cow::Borrowed(payload_type),
        signatures: vec![EnvelopeSignature {
            keyid: key_id(key.verifying_key().as_bytes()),
            sig: encode_base64(&signature.to_bytes()),
        }],
    };
    // Serialising strings to a Vec cannot fail.
    serde_json::to_vec(&wire).unwrap_or_default()
}

/// Signs an event: its compact JSON becomes the payload.
pub fn seal_event(event: &Event, key: &SigningKey) -> Vec<u8> {
    seal(&event.to_payload(), key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_matches_the_dsse_spec_vector() {
        // The example from DSSE's protocol.md.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }

    #[test]
    fn seal_then_decode_verifies() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let bytes = seal(b"{\"x\":1}", &key);
        let env = Envelope::decode(&bytes).unwrap();
        assert_eq!(env.payload, b"{\"x\":1}");
        assert_eq!(env.key_id, key_id(key.verifying_key().as_bytes()));
        assert!(env.verify(&key.verifying_key()));
        let other = SigningKey::from_bytes(&[4; 32]);
        assert!(!env.verify(&other.verifying_key()));
    }

    #[test]
    fn small_order_and_non_canonical_r_are_refused() {
        let mut sig = [0u8; 64];
        sig[0] = 1; // R = identity
        assert!(!r_is_canonical(&sig));
        sig[..32].copy_from_slice(&[0xff; 32]);
        sig[31] = 0x7f; // y = 2^255 - 1, not reduced
        assert!(!r_is_canonical(&sig));
        let key = SigningKey::from_bytes(&[3; 32]);
        let good = key.sign(b"x").to_bytes();
        assert!(r_is_canonical(&good));
        // Eight points; only the two with x = 0 gain a new (non-canonical) encoding from the sign bit.
        assert_eq!(
            small_order_encodings()
                .iter()
                .collect::<std::collections::HashSet<_>>()
                .len(),
            10
        );
    }

    #[test]
    fn bad_envelopes_have_reasons() {
        assert!(matches!(
            Envelope::decode(b"nope"),
            Err(EnvelopeError::Malformed(_))
        ));
        let big = vec![b' '; ENVELOPE_BYTES_MAX + 1];
        assert!(matches!(
            Envelope::decode(&big),
            Err(EnvelopeError::Oversize { .. })
        ));
        let wrong_type = br#"{"payload":"e30=","payloadType":"text/plain","signatures":[]}"#;
        assert!(matches!(
            Envelope::decode(wrong_type),
            Err(EnvelopeError::PayloadType(_))
        ));
        let unsigned = br#"{"payload":"e30=","payloadType":"application/vnd.docket.event+json","signatures":[]}"#;
        assert_eq!(
            Envelope::decode(unsigned),
            Err(EnvelopeError::SignatureCount(0))
        );
    }
}
