//! The producer-key registry, derived from the log: which keys exist and which kinds each may emit.
//!
//! Pure. The admin key (from the ledger's config) is the root of trust: it alone
//! may emit `key.registered`, `key.revoked` and `policy.set`, and nothing else.
//! The ledger's own key may emit the documented default policy, as the first policy on
//! the chain, and what `serve`'s detector records: `rules.set` and `finding.raised`, which
//! no other key may emit (`authorize_event`).

use std::collections::{BTreeMap, BTreeSet};

use crate::state::PolicyInForce;
use docket_schemas::limits::SIGNATURE_CHECKS_PER_ENVELOPE_MAX;
use docket_schemas::{
    EventBody, Kind, check_producer_key, decode_public_key, key_id, securesystemslib_key_id,
};
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

/// Producer-key name prefix that marks a user's own key.
pub const USER_KEY_PREFIX: &str = "user:";
/// Producer-key name prefix that marks a user's step-up key: it signs step-up assertions
/// for that user and may emit no event.
pub const STEP_UP_KEY_PREFIX: &str = "stepup:";

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
    /// The key that signs the ledger's checkpoints and its genesis policy.
    #[serde(default)]
    pub ledger_key_id: String,
    #[serde(default)]
    pub ledger_public_key: String,
    /// Whether a `policy.set` is on the chain (after it, the ledger's key may emit nothing).
    #[serde(default)]
    pub policy_recorded: bool,
    /// The policy in force, for the settings admission applies (how far ahead of its
    /// receipt an event may be dated); the same succession rule as the state's.
    #[serde(default)]
    pub policy: PolicyInForce,
    pub keys: BTreeMap<String, ProducerKey>,
    #[serde(skip)]
    verifying: BTreeMap<String, VerifyingKey>,
    /// Other key ids standard DSSE libraries give the same keys (securesystemslib's
    /// default keyid), to the Docket key id; the admin's included. Derived, not stored.
    #[serde(skip)]
    aliases: BTreeMap<String, String>,
}

/// A key an envelope's signature is checked against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signer {
    /// The Docket key id (section 3 of docs/FORMAT.md), whatever the envelope's `keyid` said.
    pub key_id: String,
    pub key: VerifyingKey,
}

/// Why a signer may not emit an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "key {0} is not registered (it is no registered key's Docket or securesystemslib key id, and the event names no author whose keys could be tried)"
    )]
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
    #[error("only the ledger's key may emit {0}")]
    LedgerOnly(Kind),
    #[error(
        "the ledger's key may emit only the documented default policy (as the first policy.set), \
         rules.set and finding.raised"
    )]
    NotGenesisPolicy,
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
    #[error("key {0} is the admin's or the ledger's key and cannot be a producer key")]
    AdminKey(String),
    #[error("key {0} is not registered")]
    Unknown(String),
    #[error("registry is full ({PRODUCER_KEYS_MAX} active keys)")]
    Full,
}

/// The keys a signature is tried against when its keyid names none: newest registration
/// first, then by key id (a fixed order whatever the map's), at most
/// [`SIGNATURE_CHECKS_PER_ENVELOPE_MAX`]. Envelopes and step-up assertions both use it.
pub fn newest_first<T>(mut keys: Vec<&T>, order: impl Fn(&T) -> (u64, &String)) -> Vec<&T> {
    keys.sort_by(|a, b| {
        let ((seq_a, id_a), (seq_b, id_b)) = (order(a), order(b));
        seq_b.cmp(&seq_a).then_with(|| id_a.cmp(id_b))
    });
    keys.truncate(SIGNATURE_CHECKS_PER_ENVELOPE_MAX);
    keys
}

impl Registry {
    /// The registry of an empty chain: the admin key and the ledger's own key.
    pub fn new(admin: &VerifyingKey, ledger: &VerifyingKey) -> Registry {
        let admin_key_id = key_id(admin.as_bytes());
        let ledger_key_id = key_id(ledger.as_bytes());
        Registry {
            aliases: BTreeMap::from([
                (
                    securesystemslib_key_id(admin.as_bytes()),
                    admin_key_id.clone(),
                ),
                (
                    securesystemslib_key_id(ledger.as_bytes()),
                    ledger_key_id.clone(),
                ),
            ]),
            admin_key_id,
            admin_public_key: docket_schemas::encode_base64(admin.as_bytes()),
            ledger_key_id,
            ledger_public_key: docket_schemas::encode_base64(ledger.as_bytes()),
            policy_recorded: false,
            policy: PolicyInForce::default(),
            keys: BTreeMap::new(),
            verifying: BTreeMap::new(),
        }
    }

    /// Whether `key_id` is the ledger's own key (registries stored before it was recorded
    /// have none, and match nothing).
    fn is_ledger_key(&self, key_id: &str) -> bool {
        !self.ledger_key_id.is_empty() && key_id == self.ledger_key_id
    }

    pub fn ledger_key(&self) -> Option<VerifyingKey> {
        decode_public_key(&self.ledger_public_key)
            .ok()
            .and_then(|b| VerifyingKey::from_bytes(&b).ok())
    }

    /// Rebuilds the verifying keys and aliases after deserialising a stored registry.
    pub fn restore(mut self) -> Result<Registry, RegistryError> {
        self.verifying.clear();
        self.aliases.clear();
        let admin = decode_public_key(&self.admin_public_key)?;
        self.aliases
            .insert(securesystemslib_key_id(&admin), self.admin_key_id.clone());
        if let Ok(ledger) = decode_public_key(&self.ledger_public_key) {
            self.aliases
                .insert(securesystemslib_key_id(&ledger), self.ledger_key_id.clone());
        }
        for k in self.keys.values() {
            let bytes = decode_public_key(&k.public_key)?;
            self.aliases
                .insert(securesystemslib_key_id(&bytes), k.key_id.clone());
            if k.revoked_seq.is_none() {
                self.verifying
                    .insert(k.key_id.clone(), check_producer_key(&bytes)?);
            }
        }
        Ok(self)
    }

    /// The Docket key id of the registered key (revoked or not, the admin's included)
    /// that a DSSE `keyid` names, by its Docket key id or its securesystemslib key id.
    pub fn named_key(&self, hint: &str) -> Option<&str> {
        if hint == self.admin_key_id {
            return Some(&self.admin_key_id);
        }
        if self.is_ledger_key(hint) {
            return Some(&self.ledger_key_id);
        }
        if let Some((id, _)) = self.keys.get_key_value(hint) {
            return Some(id);
        }
        self.aliases.get(hint).map(String::as_str)
    }

    /// The keys an event's signature is checked against, in order: the one rule that
    /// admission and `verify` share (docs/FORMAT.md, section 3).
    ///
    /// DSSE's `keyid` is an unauthenticated hint. When it names a registered key (by
    /// Docket key id or alias), that key alone is tried, and must be allowed to emit the
    /// event. Otherwise the event's author, when the event names one, is tried: for
    /// `approval.decided`, the active keys named `user:<user>` allowed to emit it, newest
    /// registration first, at most [`SIGNATURE_CHECKS_PER_ENVELOPE_MAX`].
    pub fn signers(&self, hint: &str, body: &EventBody) -> Result<Vec<Signer>, AuthError> {
        if let Some(id) = self.named_key(hint) {
            let key = self.authorize_event(id, body)?;
            return Ok(vec![Signer {
                key_id: id.to_string(),
                key,
            }]);
        }
        let EventBody::ApprovalDecided(e) = body else {
            return Err(AuthError::UnknownKey(hint.into()));
        };
        let name = format!("{USER_KEY_PREFIX}{}", e.user);
        let mut authors: Vec<&ProducerKey> = self
            .keys
            .values()
            .filter(|k| {
                k.name == name
                    && k.revoked_seq.is_none()
                    && k.kinds.contains(&Kind::ApprovalDecided)
            })
            .collect();
        authors.retain(|k| self.verifying.contains_key(&k.key_id));
        let signers: Vec<Signer> = newest_first(authors, |k| (k.registered_seq, &k.key_id))
            .into_iter()
            .filter_map(|k| {
                Some(Signer {
                    key_id: k.key_id.clone(),
                    key: *self.verifying.get(&k.key_id)?,
                })
            })
            .collect();
        if signers.is_empty() {
            return Err(AuthError::UnknownKey(hint.into()));
        }
        Ok(signers)
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
        if self.is_ledger_key(signer) {
            return match (body, self.ledger_key()) {
                (EventBody::PolicySet(p), Some(k))
                    if *p == docket_schemas::PolicySet::DEFAULTS && !self.policy_recorded =>
                {
                    Ok(k)
                }
                // The detector inside `serve` holds the ledger's key.
                (EventBody::RulesSet(_) | EventBody::FindingRaised(_), Some(k)) => Ok(k),
                _ => Err(AuthError::NotGenesisPolicy),
            };
        }
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
        let admin_kind = matches!(
            kind,
            Kind::KeyRegistered | Kind::KeyRevoked | Kind::PolicySet
        );
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
        // What `serve`'s detector records speaks for the ledger: no producer key may, whatever
        // its registration lists (a registered key could otherwise forge findings or empty the
        // rule set).
        if matches!(kind, Kind::RulesSet | Kind::FindingRaised) {
            return Err(AuthError::LedgerOnly(kind));
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
        if !key.kinds.contains(&kind) || key.name.starts_with(STEP_UP_KEY_PREFIX) {
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
                if e.key_id == self.admin_key_id || e.key_id == self.ledger_key_id {
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
                self.aliases
                    .insert(securesystemslib_key_id(&bytes), e.key_id.clone());
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
            EventBody::PolicySet(p) => {
                self.policy_recorded = true;
                // One not applied is still on the chain (and flagged by the fold).
                if self.policy.admits(p) {
                    self.policy = PolicyInForce {
                        policy: p.clone(),
                        set_seq: seq,
                    };
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use docket_schemas::{KeyRegistered, KeyRevoked};
    use ed25519_dalek::SigningKey;

    fn ledger_key() -> SigningKey {
        SigningKey::from_bytes(&[9; 32])
    }

    fn registered(key: &SigningKey, kinds: &[Kind]) -> EventBody {
        let pk = key.verifying_key();
        EventBody::KeyRegistered(KeyRegistered {
            key_id: key_id(pk.as_bytes()),
            public_key: docket_schemas::encode_base64(pk.as_bytes()),
            name: "gateway".into(),
            kinds: kinds.to_vec(),
        })
    }

    fn named(key: &SigningKey, name: &str, kinds: &[Kind]) -> EventBody {
        let EventBody::KeyRegistered(mut e) = registered(key, kinds) else {
            unreachable!()
        };
        e.name = name.into();
        EventBody::KeyRegistered(e)
    }

    fn decided(user: &str) -> EventBody {
        EventBody::ApprovalDecided(docket_schemas::ApprovalDecided {
            approval_id: "p1".into(),
            user: user.into(),
            decision: docket_schemas::Decision::Approved,
            method: docket_schemas::ApprovalMethod::Push,
            auth_time: None,
            reason: None,
            step_up: None,
        })
    }

    #[test]
    fn only_the_ledgers_key_records_rule_sets_and_detections_whatever_a_registration_lists() {
        let admin = SigningKey::from_bytes(&[1; 32]);
        let detector = SigningKey::from_bytes(&[2; 32]);
        let mut reg = Registry::new(&admin.verifying_key(), &ledger_key().verifying_key());
        reg.apply(
            1,
            &registered(&detector, &[Kind::RulesSet, Kind::FindingRaised]),
        )
        .unwrap();
        let set = EventBody::RulesSet(docket_schemas::RulesSet {
            rules: vec![],
            learning_s: 0,
        });
        let id = docket_schemas::key_id(detector.verifying_key().as_bytes());
        assert!(matches!(
            reg.authorize_event(&id, &set),
            Err(AuthError::LedgerOnly(Kind::RulesSet))
        ));
        assert!(matches!(
            reg.authorize(&id, Kind::FindingRaised),
            Err(AuthError::LedgerOnly(Kind::FindingRaised))
        ));
        let ledger = docket_schemas::key_id(ledger_key().verifying_key().as_bytes());
        assert!(reg.authorize_event(&ledger, &set).is_ok());
    }

    #[test]
    fn keyids_resolve_by_docket_id_alias_or_the_events_author_within_the_limit() {
        let admin = SigningKey::from_bytes(&[1; 32]);
        let gw = SigningKey::from_bytes(&[2; 32]);
        let alice = [3u8, 4, 5].map(|n| SigningKey::from_bytes(&[n; 32]));
        let mut reg = Registry::new(&admin.verifying_key(), &ledger_key().verifying_key());
        reg.apply(1, &registered(&gw, &[Kind::ApiCalled])).unwrap();
        for (i, k) in alice.iter().enumerate() {
            reg.apply(
                2 + i as u64,
                &named(k, "user:alice", &[Kind::ApprovalDecided]),
            )
            .unwrap();
        }
        let call = EventBody::ApiCalled(docket_schemas::ApiCalled {
            token_id: "t".into(),
            token_hash: None,
            agent: "a".into(),
            audience: "x".into(),
            method: "GET".into(),
            operation: "/".into(),
            scope: None,
            status: 200,
            source: "s".into(),
            ..Default::default()
        });
        let gw_pk = gw.verifying_key();
        let gw_id = key_id(gw_pk.as_bytes());
        // The Docket key id and securesystemslib's key id name the same key, and only it.
        for hint in [gw_id.clone(), securesystemslib_key_id(gw_pk.as_bytes())] {
            let s = reg.signers(&hint, &call).unwrap();
            assert_eq!(s.len(), 1);
            assert_eq!(s[0].key_id, gw_id);
        }
        let admin_alias = securesystemslib_key_id(admin.verifying_key().as_bytes());
        assert_eq!(
            reg.named_key(&admin_alias),
            Some(key_id(admin.verifying_key().as_bytes()).as_str())
        );
        // An unknown hint on an event that names no author: unknown, no key tried.
        assert_eq!(
            reg.signers("nobody", &call),
            Err(AuthError::UnknownKey("nobody".into()))
        );
        // An unknown hint on alice's decision: her newest keys, at most the limit.
        let s = reg.signers("nobody", &decided("alice")).unwrap();
        assert_eq!(s.len(), SIGNATURE_CHECKS_PER_ENVELOPE_MAX);
        assert_eq!(s[0].key_id, key_id(alice[2].verifying_key().as_bytes()));
        assert_eq!(s[1].key_id, key_id(alice[1].verifying_key().as_bytes()));
        assert!(reg.signers("nobody", &decided("bob")).is_err());
        // A hint that names alice's key cannot speak for bob.
        let a0 = key_id(alice[0].verifying_key().as_bytes());
        assert!(matches!(
            reg.signers(&a0, &decided("bob")),
            Err(AuthError::NotTheUser { .. })
        ));
        // Aliases survive a store round trip.
        let restored = serde_json::from_str::<Registry>(&serde_json::to_string(&reg).unwrap())
            .unwrap()
            .restore()
            .unwrap();
        assert_eq!(restored, reg);
    }

    #[test]
    fn step_up_keys_emit_nothing() {
        let admin = SigningKey::from_bytes(&[1; 32]);
        let k = SigningKey::from_bytes(&[6; 32]);
        let mut reg = Registry::new(&admin.verifying_key(), &ledger_key().verifying_key());
        reg.apply(1, &named(&k, "stepup:alice", &[Kind::ApprovalDecided]))
            .unwrap();
        let id = key_id(k.verifying_key().as_bytes());
        assert!(matches!(
            reg.signers(&id, &decided("alice")),
            Err(AuthError::Unauthorized { .. })
        ));
    }

    #[test]
    fn authorization_follows_the_log() {
        let admin = SigningKey::from_bytes(&[1; 32]);
        let gw = SigningKey::from_bytes(&[2; 32]);
        let gw_id = key_id(gw.verifying_key().as_bytes());
        let mut reg = Registry::new(&admin.verifying_key(), &ledger_key().verifying_key());
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
