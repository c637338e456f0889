//! The producer-key registry, derived from the log: which keys exist and which kinds each may emit.
//!
//! Pure. The admin key (from the ledger's config) is the root of trust: it alone
//! may emit `key.registered` and `key.revoked`, and may emit nothing else.

use std::collections::{BTreeMap, BTreeSet};

use docket_schemas::{EventBody, Kind, check_producer_key, decode_public_key, key_id};
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

/// Producer-key name prefix that marks a user's own key.
pub const USER_KEY_PREFIX: &str = "user:";

/// Producer keys the registry holds at most; a registration past this is refused.
pub const PRODUCER_KEYS_MAX: usize = 4096;

/// One producer key as the log describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerKey {
    pub key_id: String,
    /// base64 of the 32-byte public key.
    pub public_key: String,
    pub name: String,
    pub kinds: BTreeSet<Kind>,
    pub registered_seq: u64,
    /// Seq of the `key.revoked` entry, once revoked.
    pub revoked_seq: Option<u64>,
}

/// The registry at one point of the chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registry {
    pub admin_key_id: String,
    pub admin_public_key: String,
    pub keys: BTreeMap<String, ProducerKey>,
    #[serde(skip)]
    verifying: BTreeMap<String, VerifyingKey>,
}

/// Why a signer may not emit an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("key {0} is not registered")]
    UnknownKey(String),
    #[error("key {key_id} was revoked at seq {seq}")]
    RevokedKey { key_id: String, seq: u64 },
    #[error("key {key_id} ({name}) may not emit {kind}")]
    Unauthorized {
        key_id: String,
        name: String,
        kind: Kind,
    },
    #[error("only the admin key may emit {0}")]
    NotAdmin(Kind),
    #[error("key {key_id} belongs to user {user} and may not speak for {claimed}")]
    NotTheUser {
        key_id: String,
        user: String,
        claimed: String,
    },
}

/// Why a well-signed admin event cannot change the registry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("registered key is unusable: {0}")]
    BadKey(#[from] docket_schemas::KeyError),
    #[error("key {0} was revoked; register a new key instead")]
    Revoked(String),
    #[error("key {0} is the admin key and cannot be a producer key")]
    AdminKey(String),
    #[error("key {0} is not registered")]
    Unknown(String),
    #[error("registry is full ({PRODUCER_KEYS_MAX} active keys)")]
    Full,
}

impl Registry {
    pub fn new(admin: &VerifyingKey) -> Registry {
        Registry {
            admin_key_id: key_id(admin.as_bytes()),
            admin_public_key: docket_schemas::encode_base64(admin.as_bytes()),
            keys: BTreeMap::new(),
            verifying: BTreeMap::new(),
        }
    }

    /// Rebuilds the verifying keys after deserialising a stored registry.
    pub fn restore(mut self) -> Result<Registry, RegistryError> {
        self.verifying.clear();
        for k in self.keys.values().filter(|k| k.revoked_seq.is_none()) {
            let bytes = decode_public_key(&k.public_key)?;
            self.verifying
                .insert(k.key_id.clone(), check_producer_key(&bytes)?);
        }
        Ok(self)
    }

    pub fn admin_key(&self) -> Option<VerifyingKey> {
        decode_public_key(&self.admin_public_key)
            .ok()
            .and_then(|b| VerifyingKey::from_bytes(&b).ok())
    }

    /// An active producer key, whatever it may emit (vault requests are signed by such keys).
    pub fn active_key(&self, key_id: &str) -> Option<(&ProducerKey, VerifyingKey)> {
        let k = self.keys.get(key_id).filter(|k| k.revoked_seq.is_none())?;
        Some((k, *self.verifying.get(key_id)?))
    }

    /// Like `authorize`, and a user's own key (named `user:<name>`) may only speak for that user.
    pub fn authorize_event(
        &self,
        signer: &str,
        body: &EventBody,
    ) -> Result<VerifyingKey, AuthError> {
        let key = self.authorize(signer, body.kind())?;
        if let (Some(user), EventBody::ApprovalDecided(e)) = (
            self.keys
                .get(signer)
                .and_then(|k| k.name.strip_prefix(USER_KEY_PREFIX)),
            body,
        ) && e.user != user
        {
            return Err(AuthError::NotTheUser {
                key_id: signer.into(),
                user: user.into(),
                claimed: e.user.clone(),
            });
        }
        Ok(key)
    }

    /// The key that must have signed an event of `kind` carrying `key_id`, if it may.
    pub fn authorize(&self, signer: &str, kind: Kind) -> Result<VerifyingKey, AuthError> {
        let admin_kind = matches!(kind, Kind::KeyRegistered | Kind::KeyRevoked);
        if signer == self.admin_key_id {
            return match (admin_kind, self.admin_key()) {
                (true, Some(k)) => Ok(k),
                _ => Err(AuthError::Unauthorized {
                    key_id: signer.into(),
                    name: "admin".into(),
                    kind,
                }),
            };
        }
        if admin_kind {
            return Err(AuthError::NotAdmin(kind));
        }
        let key = self
            .keys
            .get(signer)
            .ok_or_else(|| AuthError::UnknownKey(signer.into()))?;
        if let Some(seq) = key.revoked_seq {
            return Err(AuthError::RevokedKey {
                key_id: signer.into(),
                seq,
            });
        }
        if !key.kinds.contains(&kind) {
            return Err(AuthError::Unauthorized {
                key_id: signer.into(),
                name: key.name.clone(),
                kind,
            });
        }
        self.verifying
            .get(signer)
            .copied()
            .ok_or_else(|| AuthError::UnknownKey(signer.into()))
    }

    /// Applies an admin event appended at `seq`. Other kinds leave the registry alone.
    pub fn apply(&mut self, seq: u64, body: &EventBody) -> Result<(), RegistryError> {
        match body {
            EventBody::KeyRegistered(e) => {
                if e.key_id == self.admin_key_id {
                    return Err(RegistryError::AdminKey(e.key_id.clone()));
                }
                let bytes = decode_public_key(&e.public_key)?;
                let vk = check_producer_key(&bytes)?;
                if let Some(old) = self.keys.get(&e.key_id)
                    && old.revoked_seq.is_some()
                {
                    return Err(RegistryError::Revoked(e.key_id.clone()));
                }
                let active = self
                    .keys
                    .values()
                    .filter(|k| k.revoked_seq.is_none())
                    .count();
                if !self.keys.contains_key(&e.key_id) && active >= PRODUCER_KEYS_MAX {
                    return Err(RegistryError::Full);
                }
                // Re-registering an active key replaces its name and kinds.
                self.keys.insert(
                    e.key_id.clone(),
                    ProducerKey {
                        key_id: e.key_id.clone(),
                        public_key: e.public_key.clone(),
                        name: e.name.clone(),
                        kinds: e.kinds.iter().copied().collect(),
                        registered_seq: seq,
                        revoked_seq: None,
                    },
                );
                self.verifying.insert(e.key_id.clone(), vk);
                Ok(())
            }
            EventBody::KeyRevoked(e) => match self.keys.get_mut(&e.key_id) {
                Some(k) if k.revoked_seq.is_none() => {
                    k.revoked_seq = Some(seq);
                    self.verifying.remove(&e.key_id);
                    Ok(())
                }
                Some(_) => Err(RegistryError::Revoked(e.key_id.clone())),
                None => Err(RegistryError::Unknown(e.key_id.clone())),
            },
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use docket_schemas::{KeyRegistered, KeyRevoked};
    use ed25519_dalek::SigningKey;

    fn registered(key: &SigningKey, kinds: &[Kind]) -> EventBody {
        let pk = key.verifying_key();
        EventBody::KeyRegistered(KeyRegistered {
            key_id: key_id(pk.as_bytes()),
            public_key: docket_schemas::encode_base64(pk.as_bytes()),
            name: "gateway".into(),
            kinds: kinds.to_vec(),
        })
    }

    #[test]
    fn authorization_follows_the_log() {
        let admin = SigningKey::from_bytes(&[1; 32]);
        let gw = SigningKey::from_bytes(&[2; 32]);
        let gw_id = key_id(gw.verifying_key().as_bytes());
        let mut reg = Registry::new(&admin.verifying_key());
        assert_eq!(
            reg.authorize(&gw_id, Kind::ApiCalled),
            Err(AuthError::UnknownKey(gw_id.clone()))
        );
        reg.apply(1, &registered(&gw, &[Kind::ApiCalled])).unwrap();
        assert!(reg.authorize(&gw_id, Kind::ApiCalled).is_ok());
        assert!(matches!(
            reg.authorize(&gw_id, Kind::TokenIssued),
            Err(AuthError::Unauthorized { .. })
        ));
        assert_eq!(
            reg.authorize(&gw_id, Kind::KeyRegistered),
            Err(AuthError::NotAdmin(Kind::KeyRegistered))
        );
        let admin_id = key_id(admin.verifying_key().as_bytes());
        assert!(reg.authorize(&admin_id, Kind::KeyRegistered).is_ok());
        assert!(reg.authorize(&admin_id, Kind::ApiCalled).is_err());
        reg.apply(
            2,
            &EventBody::KeyRevoked(KeyRevoked {
                key_id: gw_id.clone(),
                reason: "leaked".into(),
            }),
        )
        .unwrap();
        assert_eq!(
            reg.authorize(&gw_id, Kind::ApiCalled),
            Err(AuthError::RevokedKey {
                key_id: gw_id.clone(),
                seq: 2
            })
        );
        assert_eq!(
            reg.apply(3, &registered(&gw, &[Kind::ApiCalled])),
            Err(RegistryError::Revoked(gw_id))
        );
        let restored: Registry =
            serde_json::from_str::<Registry>(&serde_json::to_string(&reg).unwrap())
                .unwrap()
                .restore()
                .unwrap();
        assert_eq!(restored, reg);
    }
}
