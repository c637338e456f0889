//! Step-up assertions: a user's separate step-up key vouches that the user authenticated strongly, for one approval.
//!
//! An assertion is a DSSE envelope (as a JSON object) whose payload is a
//! [`StepUpClaim`]. The user's own key can claim a step-up time; only a step-up
//! key the admin registered for the user (named `stepup:<user>`) can sign one,
//! so a stolen user key alone cannot approve a critical action. Which key may
//! sign, and when a claim is fresh, is judged in the ledger (it needs the log).

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::envelope::{EnvelopeSignature, pae};
use crate::keys::{decode_base64, encode_base64, key_id};
use crate::limits::*;
use crate::time::Timestamp;

/// The DSSE `payloadType` of a step-up assertion.
pub const STEP_UP_PAYLOAD_TYPE: &str = "application/vnd.docket.step-up+json";

/// What a step-up key signs: this user authenticated strongly at `auth_time`, to decide this approval.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepUpClaim {
    /// Always 1.
    pub v: u32,
    pub user: String,
    pub approval_id: String,
    /// When the user authenticated strongly (passkey, MFA).
    pub auth_time: Timestamp,
}

/// A step-up assertion as carried in an `approve` request and an `approval.decided` event:
/// a DSSE envelope over a [`StepUpClaim`], signed by the user's step-up key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepUpAssertion {
    /// base64 of the exact claim JSON bytes.
    pub payload: String,
    /// Always `application/vnd.docket.step-up+json`.
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    /// Exactly one signature, by the user's step-up key.
    pub signatures: Vec<EnvelopeSignature>,
}

/// An assertion decoded, its signature not yet checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedStepUp {
    pub claim: StepUpClaim,
    /// The signature's `keyid`: a hint, like an event envelope's.
    pub key_id: String,
    pub signature: Signature,
    payload: Vec<u8>,
}

/// Why an assertion is not even well formed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepUpError {
    #[error("payloadType is {0:?}, expected {STEP_UP_PAYLOAD_TYPE:?}")]
    PayloadType(String),
    #[error("payload is not base64 of at most {STEP_UP_PAYLOAD_BYTES_MAX} bytes")]
    Payload,
    #[error("it has {0} signatures, expected exactly one")]
    SignatureCount(usize),
    #[error("keyid is over {KEY_ID_BYTES_MAX} bytes")]
    KeyIdOversize,
    #[error("signature is not base64 of 64 bytes")]
    SignatureEncoding,
    #[error("claim is not {{v, user, approval_id, auth_time}} JSON: {0}")]
    Claim(String),
    #[error("claim version {0} is not 1")]
    Version(u32),
}

impl StepUpAssertion {
    /// Checks the form and limits and decodes the claim; not the signature.
    pub fn decode(&self) -> Result<DecodedStepUp, StepUpError> {
        if self.payload_type != STEP_UP_PAYLOAD_TYPE {
            return Err(StepUpError::PayloadType(
                self.payload_type.chars().take(80).collect(),
            ));
        }
        // Bound the work before decoding: base64 is 4 characters per 3 bytes.
        if self.payload.len() > STEP_UP_PAYLOAD_BYTES_MAX.div_ceil(3) * 4 {
            return Err(StepUpError::Payload);
        }
        let payload = decode_base64(&self.payload)
            .filter(|p| p.len() <= STEP_UP_PAYLOAD_BYTES_MAX)
            .ok_or(StepUpError::Payload)?;
        let [sig] = self.signatures.as_slice() else {
            return Err(StepUpError::SignatureCount(self.signatures.len()));
        };
        if sig.keyid.len() > KEY_ID_BYTES_MAX {
            return Err(StepUpError::KeyIdOversize);
        }
        let bytes: [u8; 64] = decode_base64(&sig.sig)
            .and_then(|b| b.try_into().ok())
            .ok_or(StepUpError::SignatureEncoding)?;
        crate::strict_json::check(&payload).map_err(|e| StepUpError::Claim(e.to_string()))?;
        let claim: StepUpClaim =
            serde_json::from_slice(&payload).map_err(|e| StepUpError::Claim(e.to_string()))?;
        if claim.v != 1 {
            return Err(StepUpError::Version(claim.v));
        }
        Ok(DecodedStepUp {
            claim,
            key_id: sig.keyid.clone(),
            signature: Signature::from_bytes(&bytes),
            payload,
        })
    }

    /// Signs a claim with a step-up key (the client side: `docket approve --step-up-key`).
    pub fn seal(claim: &StepUpClaim, key: &SigningKey) -> StepUpAssertion {
        // Serialising a struct of strings and a timestamp to a Vec cannot fail.
        let payload = serde_json::to_vec(claim).unwrap_or_default();
        let signature = key.sign(&pae(STEP_UP_PAYLOAD_TYPE, &payload));
        StepUpAssertion {
            payload: encode_base64(&payload),
            payload_type: STEP_UP_PAYLOAD_TYPE.into(),
            signatures: vec![EnvelopeSignature {
                keyid: key_id(key.verifying_key().as_bytes()),
                sig: encode_base64(&signature.to_bytes()),
            }],
        }
    }
}

impl DecodedStepUp {
    /// Strict verification over PAE(step-up payload type, the exact claim bytes).
    pub fn verify(&self, key: &VerifyingKey) -> bool {
        key.verify_strict(&pae(STEP_UP_PAYLOAD_TYPE, &self.payload), &self.signature)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim() -> StepUpClaim {
        StepUpClaim {
            v: 1,
            user: "alice".into(),
            approval_id: "appr-1".into(),
            auth_time: Timestamp::parse("2026-01-02T03:04:05.000006Z").unwrap(),
        }
    }

    #[test]
    fn sealed_assertions_decode_and_verify_with_their_key_only() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let a = StepUpAssertion::seal(&claim(), &key);
        let d = a.decode().unwrap();
        assert_eq!(d.claim, claim());
        assert_eq!(d.key_id, key_id(key.verifying_key().as_bytes()));
        assert!(d.verify(&key.verifying_key()));
        assert!(!d.verify(&SigningKey::from_bytes(&[8; 32]).verifying_key()));
        // The signature covers the claim: another approval id does not verify.
        let mut other = claim();
        other.approval_id = "appr-2".into();
        let forged = StepUpAssertion {
            payload: encode_base64(&serde_json::to_vec(&other).unwrap()),
            ..a.clone()
        };
        assert!(!forged.decode().unwrap().verify(&key.verifying_key()));
    }

    #[test]
    fn malformed_assertions_have_reasons() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let a = StepUpAssertion::seal(&claim(), &key);
        let wrong_type = StepUpAssertion {
            payload_type: "application/vnd.docket.event+json".into(),
            ..a.clone()
        };
        assert!(matches!(
            wrong_type.decode(),
            Err(StepUpError::PayloadType(_))
        ));
        let unsigned = StepUpAssertion {
            signatures: vec![],
            ..a.clone()
        };
        assert_eq!(unsigned.decode(), Err(StepUpError::SignatureCount(0)));
        let huge = StepUpAssertion {
            payload: "A".repeat(4 * STEP_UP_PAYLOAD_BYTES_MAX),
            ..a.clone()
        };
        assert_eq!(huge.decode(), Err(StepUpError::Payload));
        let extra = StepUpAssertion {
            payload: encode_base64(
                br#"{"v":1,"user":"a","approval_id":"p","auth_time":"2026-01-02T03:04:05.000006Z","x":1}"#,
            ),
            ..a
        };
        assert!(matches!(extra.decode(), Err(StepUpError::Claim(_))));
    }
}
