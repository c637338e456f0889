//! Upstream connections, the pure part: sealing a user's OAuth tokens at rest, fingerprints, PKCE, the authorization URL, and reading a provider's token answer.
//!
//! A connection's secrets never enter the chain: they are kept encrypted with
//! XChaCha20-Poly1305 under a versioned key (`ConnectionKeys`), the associated data
//! binding user, provider and key version, so a file moved to another user, another
//! provider or another key version does not open. Nonces and keys are passed in; the
//! files, the clock and HTTP are the shell's (`src/connections.rs`).

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use docket_schemas::limits::{SCOPES_PER_EVENT_MAX, UPSTREAM_SECRET_BYTES_MAX};
use docket_schemas::{Timestamp, decode_base64, encode_base64};
use serde::{Deserialize, Serialize};
use sha2::Digest;

/// The only wrapped-secret format this build reads.
pub const WRAPPED_VERSION: u32 = 1;
/// Bytes of an XChaCha20-Poly1305 nonce.
pub const NONCE_BYTES: usize = 24;
/// Shortest and longest PKCE code verifier (RFC 7636 section 4.1).
pub const VERIFIER_CHARS: std::ops::RangeInclusive<usize> = 43..=128;
/// Bytes of the `state` a client may send (it is echoed in a URL).
pub const STATE_BYTES_MAX: usize = 256;
/// Bytes of an authorization code the vault will exchange.
pub const CODE_BYTES_MAX: usize = 2048;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionError {
    #[error(
        "connection secrets are wrapped with key version {0}, which the key file does not hold"
    )]
    UnknownKeyVersion(u32),
    #[error(
        "connection secrets do not open: wrong key, or the file was altered or moved from another user or provider"
    )]
    Open,
    #[error("connection secrets are malformed: {0}")]
    Malformed(String),
    #[error("the connection key file holds no key")]
    NoKey,
}

/// The versioned keys connection secrets are wrapped with; new wraps use `current`.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectionKeys {
    pub current: u32,
    pub keys: BTreeMap<u32, [u8; 32]>,
}

impl std::fmt::Debug for ConnectionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key bytes, in a log or a panic message.
        f.debug_struct("ConnectionKeys")
            .field("current", &self.current)
            .field("versions", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// What the vault keeps of one connection (the plaintext inside [`Wrapped`]).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSecrets {
    #[serde(default)]
    pub refresh_token: Option<String>,
    pub access_token: String,
    #[serde(default)]
    pub access_expires_at: Option<Timestamp>,
    #[serde(default)]
    pub scopes: Vec<String>,
}

impl std::fmt::Debug for UpstreamSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamSecrets")
            .field("access_expires_at", &self.access_expires_at)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

/// One connection's secrets as stored: the file format (docs/FORMAT.md section 15).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wrapped {
    pub v: u32,
    pub user: String,
    pub provider: String,
    pub key_version: u32,
    /// base64 of the 24-byte nonce.
    pub nonce: String,
    /// base64 of the ciphertext and its 16-byte tag.
    pub ciphertext: String,
}

/// The associated data of a wrap: what the ciphertext is bound to.
pub fn associated_data(user: &str, provider: &str, key_version: u32) -> Vec<u8> {
    format!("docket.connection.v1\n{user}\n{provider}\n{key_version}").into_bytes()
}

impl ConnectionKeys {
    /// Wraps `secrets` for `user` and `provider` under the current key.
    pub fn wrap(
        &self,
        user: &str,
        provider: &str,
        secrets: &UpstreamSecrets,
        nonce: [u8; NONCE_BYTES],
    ) -> Result<Wrapped, ConnectionError> {
        let key = self.keys.get(&self.current).ok_or(ConnectionError::NoKey)?;
        let plain =
            serde_json::to_vec(secrets).map_err(|e| ConnectionError::Malformed(e.to_string()))?;
        let aad = associated_data(user, provider, self.current);
        let sealed = XChaCha20Poly1305::new(key.into())
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: &aad,
                },
            )
            .map_err(|_| ConnectionError::Open)?;
        Ok(Wrapped {
            v: WRAPPED_VERSION,
            user: user.to_string(),
            provider: provider.to_string(),
            key_version: self.current,
            nonce: encode_base64(&nonce),
            ciphertext: encode_base64(&sealed),
        })
    }

    /// Opens a wrap, which must be `user`'s for `provider` (the file name said so).
    pub fn unwrap(
        &self,
        wrapped: &Wrapped,
        user: &str,
        provider: &str,
    ) -> Result<UpstreamSecrets, ConnectionError> {
        if wrapped.v != WRAPPED_VERSION {
            return Err(ConnectionError::Malformed(format!(
                "format version {} (this build reads {WRAPPED_VERSION})",
                wrapped.v
            )));
        }
        let key = self
            .keys
            .get(&wrapped.key_version)
            .ok_or(ConnectionError::UnknownKeyVersion(wrapped.key_version))?;
        let nonce = decode_base64(&wrapped.nonce)
            .filter(|n| n.len() == NONCE_BYTES)
            .ok_or_else(|| ConnectionError::Malformed("nonce is not 24 bytes of base64".into()))?;
        let sealed = decode_base64(&wrapped.ciphertext)
            .ok_or_else(|| ConnectionError::Malformed("ciphertext is not base64".into()))?;
        // The user and provider the caller expects, not the file's own claim, go into the
        // associated data: a file renamed to another user's does not open.
        let aad = associated_data(user, provider, wrapped.key_version);
        let plain = XChaCha20Poly1305::new(key.into())
            .decrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &sealed,
                    aad: &aad,
                },
            )
            .map_err(|_| ConnectionError::Open)?;
        serde_json::from_slice(&plain).map_err(|_| ConnectionError::Open)
    }
}

/// The fingerprint of an upstream refresh token: keyed BLAKE3 (the vault's token-hash key),
/// lowercase hex. It tells two grants apart in the record without revealing either.
pub fn fingerprint(hash_key: &[u8; 32], refresh_token: &str) -> String {
    let mut h = blake3::Hasher::new_keyed(hash_key);
    h.update(b"docket.connection.refresh\n");
    h.update(refresh_token.as_bytes());
    h.finalize().to_hex().to_string()
}

/// The S256 PKCE challenge of a verifier (RFC 7636 section 4.2).
pub fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()))
}

/// Whether a PKCE verifier is well formed: 43 to 128 unreserved characters.
pub fn verifier_is_sound(verifier: &str) -> bool {
    VERIFIER_CHARS.contains(&verifier.len())
        && verifier
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~'))
}

/// Whether `uri` is a loopback redirect (RFC 8252 section 7.3): `http://127.0.0.1:PORT/...`
/// or `http://[::1]:PORT/...`. Anything else would send the user's code elsewhere.
pub fn is_loopback_redirect(uri: &str) -> bool {
    let Some(rest) = uri.strip_prefix("http://") else {
        return false;
    };
    let host_port = rest.split('/').next().unwrap_or("");
    let host = match host_port.rsplit_once(':') {
        Some((h, port)) if !port.is_empty() && port.bytes().all(|c| c.is_ascii_digit()) => h,
        _ => return false,
    };
    (host == "127.0.0.1" || host == "[::1]")
        && uri.len() <= 512
        && uri.bytes().all(|c| c.is_ascii_graphic())
}

/// `application/x-www-form-urlencoded` / query-component encoding of one value.
pub fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A form body or query from name-value pairs.
pub fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The authorization request's URL (RFC 6749 section 4.1.1 with RFC 7636's S256 challenge).
pub fn authorize_url(
    authorize_endpoint: &str,
    client_id: &str,
    scopes: &[String],
    redirect_uri: &str,
    code_challenge: &str,
    state: &str,
) -> String {
    let scope = scopes.join(" ");
    let query = form(&[
        ("response_type", "code"),
        ("client_id", client_id),
        ("redirect_uri", redirect_uri),
        ("scope", &scope),
        ("state", state),
        ("code_challenge", code_challenge),
        ("code_challenge_method", "S256"),
    ]);
    let sep = if authorize_endpoint.contains('?') {
        '&'
    } else {
        '?'
    };
    format!("{authorize_endpoint}{sep}{query}")
}

/// Why a provider's token answer gave no tokens.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderRefusal {
    /// The grant itself is refused (RFC 6749 `invalid_grant`): revoked, expired or used.
    #[error("the provider refused the grant (invalid_grant{})", describe(.0))]
    InvalidGrant(Option<String>),
    /// Another OAuth error (`invalid_client`, `unauthorized_client`, ...).
    #[error("the provider refused: {0}")]
    Refused(String),
    /// The provider failed or answered something that is not a token answer: worth a retry.
    #[error("the provider answered badly: {0}")]
    Unavailable(String),
}

fn describe(d: &Option<String>) -> String {
    d.as_ref().map(|d| format!(": {d}")).unwrap_or_default()
}

#[derive(Deserialize)]
struct TokenWire {
    access_token: Option<String>,
    token_type: Option<String>,
    expires_in: Option<serde_json::Value>,
    refresh_token: Option<String>,
    scope: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// A token value the vault will keep and put in an `Authorization` header: visible ASCII,
/// no spaces, bounded.
fn token_is_sound(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= UPSTREAM_SECRET_BYTES_MAX
        && t.bytes().all(|c| (0x21..=0x7e).contains(&c))
}

/// Cut to what a record holds, visible ASCII only: an error text came from the provider.
fn cut(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(200)
        .collect()
}

/// Reads a token endpoint's answer (RFC 6749 sections 5.1 and 5.2). `previous` is what the
/// vault held before a refresh: a provider that sends no new refresh token keeps the old
/// one valid, and one that sends no scope keeps the old scopes. Returns the secrets to keep
/// and whether the refresh token was rotated.
pub fn read_token_answer(
    status: u16,
    body: &[u8],
    now: Timestamp,
    previous: Option<&UpstreamSecrets>,
) -> Result<(UpstreamSecrets, bool), ProviderRefusal> {
    let wire: Result<TokenWire, _> = serde_json::from_slice(body);
    let wire = match wire {
        Ok(w) => w,
        Err(_) if status >= 500 || status == 429 => {
            return Err(ProviderRefusal::Unavailable(format!("HTTP {status}")));
        }
        Err(e) => {
            return Err(ProviderRefusal::Unavailable(format!(
                "HTTP {status}, not a JSON token answer ({})",
                cut(&e.to_string())
            )));
        }
    };
    if let Some(error) = &wire.error {
        let description = wire.error_description.as_deref().map(cut);
        return Err(match error.as_str() {
            "invalid_grant" => ProviderRefusal::InvalidGrant(description),
            "temporarily_unavailable" | "server_error" => ProviderRefusal::Unavailable(cut(error)),
            other => ProviderRefusal::Refused(match description {
                Some(d) => format!("{}: {d}", cut(other)),
                None => cut(other),
            }),
        });
    }
    if !(200..300).contains(&status) {
        return Err(ProviderRefusal::Unavailable(format!("HTTP {status}")));
    }
    let bad = |why: &str| ProviderRefusal::Unavailable(format!("token answer {why}"));
    let access_token = wire
        .access_token
        .filter(|t| token_is_sound(t))
        .ok_or_else(|| bad("has no usable access_token"))?;
    if !wire
        .token_type
        .as_deref()
        .is_some_and(|t| t.eq_ignore_ascii_case("bearer"))
    {
        return Err(bad("is not of token_type Bearer"));
    }
    let expires_in = match wire.expires_in {
        None => None,
        // Some providers send it as a string of digits.
        Some(v) => Some(
            match &v {
                serde_json::Value::Number(n) => n.as_u64(),
                serde_json::Value::String(s) => s.parse::<u64>().ok(),
                _ => None,
            }
            .ok_or_else(|| bad("has a malformed expires_in"))?,
        ),
    };
    let access_expires_at = match expires_in {
        Some(s) => Some(
            i64::try_from(s)
                .ok()
                .and_then(|s| s.checked_mul(1_000_000))
                .and_then(|us| now.as_micros().checked_add(us))
                .and_then(Timestamp::from_micros)
                .ok_or_else(|| bad("has an expires_in out of range"))?,
        ),
        None => None,
    };
    let rotated = wire.refresh_token.is_some() && previous.is_some();
    let refresh_token = match wire.refresh_token {
        Some(t) if token_is_sound(&t) => Some(t),
        Some(_) => return Err(bad("has an unusable refresh_token")),
        None => previous.and_then(|p| p.refresh_token.clone()),
    };
    let scopes = match wire.scope {
        Some(s) => s
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        None => previous.map(|p| p.scopes.clone()).unwrap_or_default(),
    };
    let scopes: Vec<String> = scopes;
    if scopes.len() > SCOPES_PER_EVENT_MAX
        || scopes
            .iter()
            .any(|s| docket_schemas::event::scope(s).is_err())
    {
        return Err(bad("has scopes a record cannot hold"));
    }
    Ok((
        UpstreamSecrets {
            refresh_token,
            access_token,
            access_expires_at,
            scopes,
        },
        rotated,
    ))
}

/// Whether the access token should be refreshed before use at `now`: it has an expiry and
/// less than `margin_s` of it is left.
pub fn needs_refresh(secrets: &UpstreamSecrets, now: Timestamp, margin_s: u32) -> bool {
    secrets
        .access_expires_at
        .is_some_and(|at| at.as_micros() - now.as_micros() < i64::from(margin_s) * 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(current: u32) -> ConnectionKeys {
        ConnectionKeys {
            current,
            keys: [(1, [1u8; 32]), (2, [2u8; 32])].into_iter().collect(),
        }
    }

    fn secrets() -> UpstreamSecrets {
        UpstreamSecrets {
            refresh_token: Some("r-1".into()),
            access_token: "a-1".into(),
            access_expires_at: Timestamp::from_micros(1_000_000),
            scopes: vec!["repo".into()],
        }
    }

    #[test]
    fn a_wrap_opens_only_for_its_user_provider_and_key() {
        let w = keys(1).wrap("alice", "gh", &secrets(), [7; 24]).unwrap();
        assert_eq!(w.key_version, 1);
        assert_eq!(keys(2).unwrap(&w, "alice", "gh").unwrap(), secrets());
        assert_eq!(keys(1).unwrap(&w, "bob", "gh"), Err(ConnectionError::Open));
        assert_eq!(
            keys(1).unwrap(&w, "alice", "slack"),
            Err(ConnectionError::Open)
        );
        let mut moved = w.clone();
        moved.key_version = 2;
        assert_eq!(
            keys(2).unwrap(&moved, "alice", "gh"),
            Err(ConnectionError::Open)
        );
        let only_two = ConnectionKeys {
            current: 2,
            keys: [(2, [2u8; 32])].into_iter().collect(),
        };
        assert_eq!(
            only_two.unwrap(&w, "alice", "gh"),
            Err(ConnectionError::UnknownKeyVersion(1))
        );
        let mut flipped = w;
        flipped.ciphertext = encode_base64(&[0u8; 40]);
        assert_eq!(
            keys(1).unwrap(&flipped, "alice", "gh"),
            Err(ConnectionError::Open)
        );
    }

    #[test]
    fn debug_output_holds_no_secret() {
        let text = format!("{:?} {:?}", secrets(), keys(1));
        assert!(!text.contains("a-1") && !text.contains("r-1"), "{text}");
        assert!(!text.contains("[1, 1"), "{text}");
    }

    #[test]
    fn pkce_matches_rfc_7636_appendix_b() {
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        assert!(verifier_is_sound(
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
        ));
        assert!(!verifier_is_sound("short"));
        assert!(!verifier_is_sound(&"a b".repeat(20)));
    }

    #[test]
    fn only_loopback_redirects() {
        assert!(is_loopback_redirect("http://127.0.0.1:8123/callback"));
        assert!(is_loopback_redirect("http://[::1]:8123/"));
        for bad in [
            "https://127.0.0.1:8123/",
            "http://127.0.0.1/cb",
            "http://evil.example:80/",
            "http://127.0.0.1.evil.example:80/",
            "http://127.0.0.1:80@evil.example:81/",
            "http://localhost:80/",
        ] {
            assert!(!is_loopback_redirect(bad), "{bad}");
        }
    }

    #[test]
    fn the_authorize_url_encodes_every_value() {
        let u = authorize_url(
            "http://p/authorize",
            "docket cli",
            &["repo".into(), "read:user".into()],
            "http://127.0.0.1:9/cb",
            "ch",
            "s&t",
        );
        assert_eq!(
            u,
            "http://p/authorize?response_type=code&client_id=docket%20cli&redirect_uri=http%3A%2F%2F127.0.0.1%3A9%2Fcb&scope=repo%20read%3Auser&state=s%26t&code_challenge=ch&code_challenge_method=S256"
        );
    }

    #[test]
    fn token_answers_are_read_strictly() {
        let now = Timestamp::from_micros(10_000_000).unwrap();
        let ok = br#"{"access_token":"a-2","token_type":"Bearer","expires_in":60,"refresh_token":"r-2","scope":"repo user"}"#;
        let (s, rotated) = read_token_answer(200, ok, now, Some(&secrets())).unwrap();
        assert!(rotated);
        assert_eq!(s.refresh_token.as_deref(), Some("r-2"));
        assert_eq!(s.access_expires_at, Timestamp::from_micros(70_000_000));
        assert_eq!(s.scopes, vec!["repo", "user"]);
        let kept = br#"{"access_token":"a-3","token_type":"bearer"}"#;
        let (s, rotated) = read_token_answer(200, kept, now, Some(&secrets())).unwrap();
        assert!(!rotated);
        assert_eq!(s.refresh_token.as_deref(), Some("r-1"));
        assert_eq!(s.scopes, vec!["repo"]);
        assert_eq!(
            read_token_answer(400, br#"{"error":"invalid_grant"}"#, now, None),
            Err(ProviderRefusal::InvalidGrant(None))
        );
        assert!(matches!(
            read_token_answer(401, br#"{"error":"invalid_client"}"#, now, None),
            Err(ProviderRefusal::Refused(_))
        ));
        assert!(matches!(
            read_token_answer(503, b"<html>down</html>", now, None),
            Err(ProviderRefusal::Unavailable(_))
        ));
        for bad in [
            &br#"{"access_token":"a b","token_type":"Bearer"}"#[..],
            br#"{"access_token":"a\r\nX: y","token_type":"Bearer"}"#,
            br#"{"access_token":"a","token_type":"mac"}"#,
            br#"{"access_token":"a","token_type":"Bearer","expires_in":-1}"#,
            br#"{"access_token":"a","token_type":"Bearer","scope":"\u0001"}"#,
        ] {
            assert!(
                matches!(
                    read_token_answer(200, bad, now, None),
                    Err(ProviderRefusal::Unavailable(_))
                ),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
