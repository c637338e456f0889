//! Sealing a token secret to the requester: X25519 with a one-time key, BLAKE3 key derivation, ChaCha20-Poly1305.
//!
//! A token request carries `reply_key`, the public half of an X25519 key the
//! requester made for this request alone. The vault makes its own one-time key,
//! derives a symmetric key from the shared secret and both public keys, and
//! encrypts the token secret with ChaCha20-Poly1305 (a zero
//! nonce: the key is never used twice). Whoever reads the reply on the bus sees
//! only ciphertext; the requester's signature over the request covers
//! `reply_key`, so nobody can substitute theirs. docs/FORMAT.md section 10
//! specifies the bytes for clients in other languages.
//!
//! Pure: the vault's one-time secret is passed in.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use x25519_dalek::{PublicKey, StaticSecret};

use crate::keys::{decode_base64, encode_base64};

/// The one algorithm name a sealed secret carries.
pub const SEAL_ALG: &str = "X25519-BLAKE3-ChaCha20Poly1305";
/// The BLAKE3 key-derivation context of the symmetric key.
pub const SEAL_KDF_CONTEXT: &str = "docket vault token seal v1";

/// A secret sealed to one requester's `reply_key`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SealedSecret {
    /// Always [`SEAL_ALG`].
    pub alg: String,
    /// Base64 of the vault's one-time X25519 public key (32 bytes).
    pub epk: String,
    /// Base64 of the ChaCha20-Poly1305 ciphertext and its 16-byte tag.
    pub ct: String,
}

/// Why a sealed secret cannot be opened, or a reply key is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("reply_key is not base64 of a 32-byte X25519 public key")]
    ReplyKey,
    #[error(
        "reply_key is a point of small order: the secret sealed to it could be opened by anyone"
    )]
    WeakReplyKey,
    #[error("alg {0:?} is not {SEAL_ALG:?}")]
    Alg(String),
    #[error("epk is not base64 of a 32-byte X25519 public key")]
    Epk,
    #[error("the sealed secret does not open with this key (wrong key, wrong request, or altered)")]
    Open,
}

fn public_key(b64: &str) -> Option<PublicKey> {
    let bytes: [u8; 32] = decode_base64(b64)?.try_into().ok()?;
    Some(PublicKey::from(bytes))
}

/// The symmetric key: BLAKE3 `derive_key(SEAL_KDF_CONTEXT, shared || epk || reply_key)`.
fn cipher(shared: &[u8; 32], epk: &PublicKey, reply: &PublicKey) -> ChaCha20Poly1305 {
    let mut material = [0u8; 96];
    material[..32].copy_from_slice(shared);
    material[32..64].copy_from_slice(epk.as_bytes());
    material[64..].copy_from_slice(reply.as_bytes());
    let key = blake3::derive_key(SEAL_KDF_CONTEXT, &material);
    ChaCha20Poly1305::new(Key::from_slice(&key))
}

/// Checks a request's `reply_key` before anything is decided with it: 32 bytes, and not
/// a point of small order (with one, the shared secret is all zeros whatever the vault's
/// key, and anyone who reads the reply could open it; RFC 7748 section 6.1).
pub fn check_reply_key(reply_key: &str) -> Result<(), SealError> {
    let key = public_key(reply_key).ok_or(SealError::ReplyKey)?;
    // A clamped scalar is a multiple of the cofactor, so it sends every small-order point
    // to the identity: any fixed secret tells them apart.
    let probe = StaticSecret::from([1; 32]).diffie_hellman(&key);
    if probe.was_contributory() {
        Ok(())
    } else {
        Err(SealError::WeakReplyKey)
    }
}

/// Seals `secret` to `reply_key` with the vault's one-time X25519 secret `ephemeral`
/// (32 random bytes from the caller).
pub fn seal_secret(
    secret: &[u8],
    reply_key: &str,
    ephemeral: [u8; 32],
) -> Result<SealedSecret, SealError> {
    let reply = public_key(reply_key).ok_or(SealError::ReplyKey)?;
    let esk = StaticSecret::from(ephemeral);
    let epk = PublicKey::from(&esk);
    let shared = esk.diffie_hellman(&reply);
    if !shared.was_contributory() {
        return Err(SealError::WeakReplyKey);
    }
    let ct = cipher(shared.as_bytes(), &epk, &reply)
        .encrypt(
            Nonce::from_slice(&[0; 12]),
            Payload {
                msg: secret,
                aad: SEAL_ALG.as_bytes(),
            },
        )
        .map_err(|_| SealError::Open)?;
    Ok(SealedSecret {
        alg: SEAL_ALG.into(),
        epk: encode_base64(epk.as_bytes()),
        ct: encode_base64(&ct),
    })
}

/// The requester's one-time key for one request.
pub struct ReplyKey {
    secret: StaticSecret,
}

impl ReplyKey {
    /// From 32 random bytes (the caller's generator).
    pub fn from_bytes(bytes: [u8; 32]) -> ReplyKey {
        ReplyKey {
            secret: StaticSecret::from(bytes),
        }
    }

    /// The public half, base64, for the request's `reply_key`.
    pub fn public(&self) -> String {
        encode_base64(PublicKey::from(&self.secret).as_bytes())
    }

    /// Opens a secret sealed to this key.
    pub fn open(&self, sealed: &SealedSecret) -> Result<Vec<u8>, SealError> {
        if sealed.alg != SEAL_ALG {
            return Err(SealError::Alg(sealed.alg.chars().take(64).collect()));
        }
        let epk = public_key(&sealed.epk).ok_or(SealError::Epk)?;
        let ct = decode_base64(&sealed.ct).ok_or(SealError::Open)?;
        let reply = PublicKey::from(&self.secret);
        let shared = self.secret.diffie_hellman(&epk);
        cipher(shared.as_bytes(), &epk, &reply)
            .decrypt(
                Nonce::from_slice(&[0; 12]),
                Payload {
                    msg: &ct,
                    aad: SEAL_ALG.as_bytes(),
                },
            )
            .map_err(|_| SealError::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_requesters_key_opens_it() {
        let mine = ReplyKey::from_bytes([1; 32]);
        let sealed = seal_secret(b"dkt_secret", &mine.public(), [2; 32]).unwrap();
        assert_eq!(mine.open(&sealed).unwrap(), b"dkt_secret");
        let other = ReplyKey::from_bytes([3; 32]);
        assert_eq!(other.open(&sealed), Err(SealError::Open));
        let mut altered = sealed.clone();
        altered.ct = encode_base64(&[0; 26]);
        assert_eq!(mine.open(&altered), Err(SealError::Open));
        assert!(!sealed.ct.contains("dkt"), "ciphertext, not the secret");
        assert_eq!(
            seal_secret(b"x", "not a key", [2; 32]),
            Err(SealError::ReplyKey)
        );
    }

    #[test]
    fn a_small_order_reply_key_is_refused() {
        // Zero, one, p-1 and an order-8 point: each makes the shared secret all zeros.
        let mut p_minus_1 = [0xff; 32];
        p_minus_1[0] = 0xec;
        p_minus_1[31] = 0x7f;
        let order_8: [u8; 32] = [
            0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f,
            0xc4, 0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16,
            0x5f, 0x49, 0xb8, 0x00,
        ];
        let mut one = [0; 32];
        one[0] = 1;
        for weak in [[0; 32], one, p_minus_1, order_8] {
            let b64 = encode_base64(&weak);
            assert_eq!(check_reply_key(&b64), Err(SealError::WeakReplyKey));
            assert_eq!(
                seal_secret(b"x", &b64, [2; 32]),
                Err(SealError::WeakReplyKey)
            );
        }
        check_reply_key(&ReplyKey::from_bytes([1; 32]).public()).unwrap();
    }

    #[test]
    fn a_known_answer_for_other_languages() {
        // Fixed inputs, so a client in another language can check its implementation
        // (docs/FORMAT.md section 9 lists the same values).
        let reply = ReplyKey::from_bytes([7; 32]);
        let sealed = seal_secret(b"dkt_00", &reply.public(), [9; 32]).unwrap();
        assert_eq!(
            (
                reply.public().as_str(),
                sealed.epk.as_str(),
                sealed.ct.as_str()
            ),
            (KAT_REPLY_KEY, KAT_EPK, KAT_CT)
        );
    }

    const KAT_REPLY_KEY: &str = "E75P6uryBMf9M1j8nAByGIHRdCeBKCJ+xnTzf3/pe20=";
    const KAT_EPK: &str = "V9tLNZ8jrl4Ubk4lEgVnBHIlBjSMFQwUdT0Mkz0E1CE=";
    const KAT_CT: &str = "kv1dbBfzjB1qBXTMjmE0AzW0vzhnyA==";
}
