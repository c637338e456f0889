//! Users' upstream connections, served by `serve` on `docket.connections.<op>`: linking an account (the OAuth code exchange), keeping its access token fresh, handing it sealed to a gateway, unlinking; every change recorded as a `connection.*` event before it is answered.
//!
//! The decisions are the core's: who may have a user's token (`vault::upstream_holder`),
//! what a provider's answer means (`connection::read_token_answer`), how secrets are
//! sealed at rest (`connection::ConnectionKeys`). This file is the I/O around them: NATS,
//! HTTP to the provider, the encrypted files (`connection_store.rs`) and the clock.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use docket_ledger::config::{ConnectionsConfig, ProviderConfig};
use docket_ledger::connection::{
    self, CODE_BYTES_MAX, ProviderRefusal, STATE_BYTES_MAX, UpstreamSecrets,
};
use docket_ledger::connection_store::ConnectionStore;
use docket_ledger::desk::Introspector;
use docket_ledger::publisher::Sink;
use docket_ledger::state::{ConnectionStatus, connection_key};
use docket_ledger::vault::{self, Requester};
use docket_schemas::limits::PROVIDER_ANSWER_BYTES_MAX;
use docket_schemas::vault::{ConnectionReply, Op};
use docket_schemas::{
    ConnectionFailed, ConnectionLinked, ConnectionRefreshed, ConnectionUnlinked, EventBody,
    EventId, Timestamp,
};
use futures::StreamExt;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Connection requests answered at once, at most.
pub const CONNECTION_INFLIGHT_MAX: usize = 256;
/// Longest wait for one answer from a provider. Three attempts and their pauses stay under
/// the gateway's wait for an upstream token (`gateway_cmd::UPSTREAM_TOKEN_TIMEOUT`).
pub const PROVIDER_TIMEOUT: Duration = Duration::from_millis(2_500);
/// After a refresh failed for want of the provider, calls needing a new access token are
/// refused at once for this long instead of each trying again.
pub const FAILED_REFRESH_COOLDOWN: Duration = Duration::from_secs(5);
/// Connections whose lock entry is kept idle, at most; beyond, idle entries are dropped.
pub const IDLE_LOCKS_MAX: usize = 10_000;
/// Connections whose opened secrets are kept in memory, at most (beyond, the cache is
/// emptied and refilled from the files).
pub const OPENED_SECRETS_MAX: usize = 100_000;
/// Attempts at a refresh while the provider fails or cannot be reached.
pub const REFRESH_ATTEMPTS: u32 = 3;
/// The pause after the first failed attempt; doubled after each.
pub const REFRESH_BACKOFF: Duration = Duration::from_millis(200);
/// Longest wait for JetStream to hold a connection event, and for the ledger to apply it.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(10);
/// While a provider is down, one `connection.failed` per connection in this span at most:
/// an outage is on the record without flooding it.
pub const FAILURE_RECORD_SPACING: Duration = Duration::from_secs(60);
/// How often the refresher looks for access tokens about to expire.
pub const REFRESH_SWEEP: Duration = Duration::from_secs(10);
/// Link and unlink request ids remembered against replay, at most.
pub const REMEMBERED_REQUESTS_MAX: usize = 100_000;
/// Subject prefix of the connections' requests.
pub const SUBJECT_PREFIX: &str = "docket.connections.";

struct Provider {
    config: ProviderConfig,
    client_secret: String,
}

/// What `serve` needs to hold users' connections.
pub struct Connections {
    store: ConnectionStore,
    providers: BTreeMap<String, Provider>,
    margin_s: u32,
    key: ed25519_dalek::SigningKey,
    view: Introspector,
    sink: Sink,
    http: Client<HttpConnector, Full<Bytes>>,
    /// One refresh, link or unlink per connection at a time.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    failures: Mutex<HashMap<String, Instant>>,
    /// Until when a connection's refresh is not tried again (the provider just failed).
    cooldown: Mutex<HashMap<String, Instant>>,
    /// Secrets as last opened or written by this process, by connection key: a call does
    /// not open a file and take its lock each time. Only this process changes what a file
    /// holds (a key rotation re-wraps the same secrets), so the cache cannot go stale.
    opened: Mutex<HashMap<String, UpstreamSecrets>>,
    seen: Mutex<HashMap<EventId, Instant>>,
}

/// Why an upstream token cannot be had; `transient` when trying later may work.
struct Unavailable {
    why: String,
    transient: bool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Connections {
    /// The connections of a vault with `config`; `None` when no key file is set.
    pub fn load(
        config: &ConnectionsConfig,
        data: &Path,
        key: ed25519_dalek::SigningKey,
        view: Introspector,
        sink: Sink,
    ) -> Result<Option<Arc<Connections>>> {
        let Some(key_file) = &config.key_file else {
            if !config.providers.is_empty() {
                bail!(
                    "[connections] names providers but no key_file: upstream tokens are kept \
                     only encrypted (`docket vault new-key --out FILE` makes a key file)"
                );
            }
            return Ok(None);
        };
        let store = ConnectionStore::open(data, key_file)?;
        let mut providers = BTreeMap::new();
        for (name, p) in &config.providers {
            docket_schemas::event::identifier(
                "provider",
                name,
                docket_schemas::limits::PROVIDER_BYTES_MAX,
            )
            .with_context(|| format!("[connections.providers.{name}]"))?;
            // The vault sends the client secret, codes, verifiers and refresh tokens to these:
            // with no TLS client built in yet, only over loopback (to a TLS-originating proxy).
            // The authorization URL is the user's browser's to open, so https is fine there.
            for url in [Some(&p.token_url), p.revocation_url.as_ref()]
                .into_iter()
                .flatten()
            {
                if !is_loopback_http(url) {
                    bail!(
                        "[connections.providers.{name}]: {url:?} must be http://127.0.0.1:PORT/..., \
                         http://[::1]:PORT/... or http://localhost:PORT/...: the vault has no TLS \
                         client yet, and secrets go there (put a TLS-originating proxy on loopback)"
                    );
                }
            }
            if !(p.authorize_url.starts_with("https://") || p.authorize_url.starts_with("http://"))
            {
                bail!("[connections.providers.{name}]: authorize_url must be an http(s) URL");
            }
            if p.audiences.is_empty() {
                bail!(
                    "[connections.providers.{name}]: audiences is empty, so no call could use it"
                );
            }
            let client_secret = match (&p.client_secret_env, &p.client_secret_file) {
                (Some(var), None) => std::env::var(var).with_context(|| {
                    format!("[connections.providers.{name}] client_secret_env: ${var} is not set")
                })?,
                (None, Some(file)) => std::fs::read_to_string(file)
                    .with_context(|| {
                        format!(
                            "[connections.providers.{name}] client_secret_file {}",
                            file.display()
                        )
                    })?
                    .trim()
                    .to_string(),
                _ => bail!(
                    "[connections.providers.{name}]: set exactly one of client_secret_env and \
                     client_secret_file"
                ),
            };
            providers.insert(
                name.clone(),
                Provider {
                    config: p.clone(),
                    client_secret,
                },
            );
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(PROVIDER_TIMEOUT));
        let http = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Some(Arc::new(Connections {
            store,
            providers,
            margin_s: config.refresh_margin_s,
            key,
            view,
            sink,
            http,
            locks: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            cooldown: Mutex::new(HashMap::new()),
            opened: Mutex::new(HashMap::new()),
            seen: Mutex::new(HashMap::new()),
        })))
    }

    /// The connection's secrets: from memory, else from its file.
    fn secrets(
        &self,
        user: &str,
        provider: &str,
    ) -> Result<Option<UpstreamSecrets>, docket_ledger::connection_store::ConnectionStoreError>
    {
        let key = connection_key(user, provider);
        if let Some(s) = lock(&self.opened).get(&key) {
            return Ok(Some(s.clone()));
        }
        let read = self.store.get(user, provider)?;
        if let Some(s) = &read {
            let mut opened = lock(&self.opened);
            if opened.len() >= OPENED_SECRETS_MAX {
                opened.clear();
            }
            // Never over what a write put there meanwhile: this read may predate it.
            opened.entry(key).or_insert_with(|| s.clone());
        }
        Ok(read)
    }

    /// Writes the connection's secrets to its file, then to memory.
    fn keep(
        &self,
        user: &str,
        provider: &str,
        secrets: &UpstreamSecrets,
    ) -> Result<(), docket_ledger::connection_store::ConnectionStoreError> {
        let key = connection_key(user, provider);
        // Forgotten first: if the write fails, the next read goes to the file.
        lock(&self.opened).remove(&key);
        self.store.put(user, provider, secrets)?;
        lock(&self.opened).insert(key, secrets.clone());
        Ok(())
    }

    /// Deletes the connection's secrets from memory and its file; whether there was a file.
    fn forget(
        &self,
        user: &str,
        provider: &str,
    ) -> Result<bool, docket_ledger::connection_store::ConnectionStoreError> {
        lock(&self.opened).remove(&connection_key(user, provider));
        self.store.delete(user, provider)
    }

    fn provider(&self, name: &str) -> Result<&Provider, String> {
        self.providers.get(name).ok_or_else(|| {
            format!(
                "no provider {name:?}: the vault's config lists {}",
                self.providers
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
    }

    fn connection_lock(&self, user: &str, provider: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = lock(&self.locks);
        if locks.len() >= IDLE_LOCKS_MAX {
            locks.retain(|_, l| Arc::strong_count(l) > 1);
        }
        Arc::clone(locks.entry(connection_key(user, provider)).or_default())
    }

    /// The seq of the connection's last event in the live state (0 when none).
    fn last_seq(&self, user: &str, provider: &str) -> u64 {
        self.view(|_, state, _| {
            state
                .connections
                .get(&connection_key(user, provider))
                .map_or(0, |c| c.last_seq)
        })
    }

    fn view<T>(
        &self,
        f: impl FnOnce(
            &docket_ledger::registry::Registry,
            &docket_ledger::state::VaultState,
            &[u8; 32],
        ) -> T,
    ) -> T {
        self.view.view(f)
    }

    /// Publishes a connection event signed by the vault's key; its id once JetStream holds it.
    async fn record(&self, body: EventBody) -> Result<EventId, String> {
        let kind = body.kind();
        let allowed = self.view(|registry, _, _| {
            registry
                .authorize(
                    &docket_schemas::key_id(self.key.verifying_key().as_bytes()),
                    kind,
                )
                .is_ok()
        });
        if !allowed {
            return Err(format!(
                "the vault's key may not emit {kind}: the admin registers it for the \
                 connection.* kinds (README, \"Connections\")"
            ));
        }
        let now = docket_ledger::clock::now().map_err(|e| e.to_string())?;
        docket_ledger::publisher::publish_one(&self.sink, &self.key, body, now, EVENT_TIMEOUT).await
    }

    /// Waits until the live state has applied an event of the connection after `since`.
    async fn applied(&self, user: &str, provider: &str, since: u64) -> Result<(), String> {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        while self.last_seq(user, provider) <= since {
            if Instant::now() > deadline {
                return Err(format!(
                    "the ledger did not apply the connection's event within {} s (see `docket quarantine`)",
                    EVENT_TIMEOUT.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// Records a failure, at most once per [`FAILURE_RECORD_SPACING`] per connection unless it broke it.
    async fn record_failure(&self, user: &str, provider: &str, broken: bool, reason: &str) {
        let key = connection_key(user, provider);
        if !broken {
            let mut failures = lock(&self.failures);
            if failures
                .get(&key)
                .is_some_and(|at| at.elapsed() < FAILURE_RECORD_SPACING)
            {
                return;
            }
            failures.insert(key, Instant::now());
        }
        let body = EventBody::ConnectionFailed(ConnectionFailed {
            user: user.to_string(),
            provider: provider.to_string(),
            broken,
            reason: reason.chars().take(400).collect(),
        });
        if let Err(e) = self.record(body).await {
            tracing::error!(%user, %provider, error = %e, "a connection failure was not recorded");
        }
    }

    /// POSTs a form to a provider's endpoint with this vault's client credentials (HTTP Basic,
    /// RFC 6749 section 2.3.1); the status and body.
    async fn post(&self, p: &Provider, url: &str, form: &str) -> Result<(u16, Bytes), String> {
        let basic = docket_schemas::encode_base64(
            format!(
                "{}:{}",
                connection::form_encode(&p.config.client_id),
                connection::form_encode(&p.client_secret)
            )
            .as_bytes(),
        );
        let request = Request::post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .header("authorization", format!("Basic {basic}"))
            .body(Full::new(Bytes::from(form.to_string())))
            .map_err(|e| format!("the request to {url}: {e}"))?;
        let answered = tokio::time::timeout(PROVIDER_TIMEOUT, async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| format!("{url} could not be reached: {e}"))?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, PROVIDER_ANSWER_BYTES_MAX)
                .collect()
                .await
                .map_err(|e| format!("{url}'s answer could not be read: {e}"))?
                .to_bytes();
            Ok::<_, String>((parts.status.as_u16(), body))
        })
        .await;
        answered.unwrap_or_else(|_| {
            Err(format!(
                "{url} did not answer within {} s",
                PROVIDER_TIMEOUT.as_secs()
            ))
        })
    }

    /// The user's access token, refreshed first when it is about to expire.
    async fn fresh_secrets(
        &self,
        user: &str,
        provider: &str,
    ) -> Result<UpstreamSecrets, Unavailable> {
        let stored = |r: Result<Option<UpstreamSecrets>, _>| match r {
            Ok(Some(s)) => Ok(s),
            Ok(None) => Err(Unavailable {
                why: format!("the vault holds no tokens of {user} for {provider}: link again"),
                transient: false,
            }),
            Err(e) => Err(Unavailable {
                why: format!("the vault cannot read {user}'s tokens for {provider}: {e}"),
                transient: false,
            }),
        };
        let now = || {
            docket_ledger::clock::now().map_err(|e| Unavailable {
                why: e.to_string(),
                transient: true,
            })
        };
        let secrets = stored(self.secrets(user, provider))?;
        let at = now()?;
        if !connection::needs_refresh(&secrets, at, self.margin_s) {
            return Ok(secrets);
        }
        let still_valid = secrets.access_expires_at.is_some_and(|e| e > at);
        let key = connection_key(user, provider);
        if let Some(until) = lock(&self.cooldown).get(&key).copied()
            && Instant::now() < until
        {
            return match still_valid {
                true => Ok(secrets),
                false => Err(Unavailable {
                    why: format!(
                        "{provider} could not refresh {user}'s token a moment ago; try again shortly"
                    ),
                    transient: true,
                }),
            };
        }
        let guard = self.connection_lock(user, provider);
        // A token still valid is handed out at once while another call refreshes it.
        let _held = match (still_valid, guard.try_lock()) {
            (_, Ok(held)) => held,
            (true, Err(_)) => return Ok(secrets),
            (false, Err(_)) => guard.lock().await,
        };
        // Another call may have refreshed it while this one waited.
        let secrets = stored(self.secrets(user, provider))?;
        if !connection::needs_refresh(&secrets, now()?, self.margin_s) {
            return Ok(secrets);
        }
        let refreshed = self.refresh(user, provider, &secrets).await;
        if refreshed.as_ref().is_err_and(|e| e.transient) {
            lock(&self.cooldown).insert(
                connection_key(user, provider),
                Instant::now() + FAILED_REFRESH_COOLDOWN,
            );
        } else {
            lock(&self.cooldown).remove(&connection_key(user, provider));
        }
        match refreshed {
            Ok(s) => Ok(s),
            // Still valid for a while: the refresh is tried again on the next call.
            Err(e)
                if e.transient
                    && secrets
                        .access_expires_at
                        .is_some_and(|at| now().is_ok_and(|n| at > n)) =>
            {
                tracing::warn!(%user, %provider, why = %e.why, "refresh failed; the current access token is still valid");
                Ok(secrets)
            }
            Err(e) => Err(e),
        }
    }

    /// Refreshes with the refresh token (the caller holds the connection's lock).
    async fn refresh(
        &self,
        user: &str,
        provider: &str,
        held: &UpstreamSecrets,
    ) -> Result<UpstreamSecrets, Unavailable> {
        let fatal = |why: String| Unavailable {
            why,
            transient: false,
        };
        let p = self.provider(provider).map_err(fatal)?;
        let Some(refresh_token) = &held.refresh_token else {
            return Err(fatal(format!(
                "{provider} gave no refresh token and the access token expires: {user} must link again"
            )));
        };
        let form = connection::form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ]);
        let mut pause = REFRESH_BACKOFF;
        let mut last = String::new();
        for attempt in 1..=REFRESH_ATTEMPTS {
            let now = docket_ledger::clock::now().map_err(|e| fatal(e.to_string()))?;
            let answer = match self.post(p, &p.config.token_url, &form).await {
                Ok((status, body)) => connection::read_token_answer(status, &body, now, Some(held)),
                Err(e) => Err(ProviderRefusal::Unavailable(e)),
            };
            match answer {
                Ok((fresh, rotated)) => {
                    self.keep(user, provider, &fresh).map_err(|e| Unavailable {
                        why: format!("the refreshed tokens could not be stored: {e}"),
                        transient: true,
                    })?;
                    let fingerprint = self.fingerprint(&fresh);
                    let body = EventBody::ConnectionRefreshed(ConnectionRefreshed {
                        user: user.to_string(),
                        provider: provider.to_string(),
                        fingerprint,
                        rotated,
                        access_expires_at: fresh.access_expires_at,
                    });
                    self.record(body).await.map_err(|e| Unavailable {
                        why: format!("the refresh could not be recorded: {e}"),
                        transient: true,
                    })?;
                    lock(&self.failures).remove(&connection_key(user, provider));
                    return Ok(fresh);
                }
                Err(r @ ProviderRefusal::InvalidGrant(_)) => {
                    let why = r.to_string();
                    let since = self.last_seq(user, provider);
                    // The grant is dead: nothing worth keeping, and the record says it broke.
                    if let Err(e) = self.forget(user, provider) {
                        tracing::error!(%user, %provider, error = %e, "a dead grant's tokens could not be deleted");
                    }
                    self.record_failure(user, provider, true, &why).await;
                    if let Err(e) = self.applied(user, provider, since).await {
                        tracing::warn!(%user, %provider, error = %e, "a broken connection is not applied yet");
                    }
                    return Err(fatal(format!("{why}: {user} must link {provider} again")));
                }
                Err(r @ ProviderRefusal::Refused(_)) => {
                    let why = r.to_string();
                    self.record_failure(user, provider, false, &why).await;
                    return Err(fatal(why));
                }
                Err(ProviderRefusal::Unavailable(why)) => {
                    last = why;
                    if attempt < REFRESH_ATTEMPTS {
                        tokio::time::sleep(pause).await;
                        pause *= 2;
                    }
                }
            }
        }
        let why = format!("{provider} failed {REFRESH_ATTEMPTS} refresh attempts: {last}");
        self.record_failure(user, provider, false, &why).await;
        Err(Unavailable {
            why,
            transient: true,
        })
    }

    fn fingerprint(&self, s: &UpstreamSecrets) -> String {
        let hash_key = self.view(|_, _, k| *k);
        // A provider that gives no refresh token is told apart by its access token.
        connection::fingerprint(
            &hash_key,
            s.refresh_token.as_deref().unwrap_or(&s.access_token),
        )
    }

    /// Whether a link or unlink request id is new (and remembers it).
    fn first_sighting(&self, id: EventId, window: Duration) -> bool {
        let mut seen = lock(&self.seen);
        seen.retain(|_, at| at.elapsed() < window);
        if seen.len() >= REMEMBERED_REQUESTS_MAX || seen.contains_key(&id) {
            return false;
        }
        seen.insert(id, Instant::now());
        true
    }

    /// Answers one request on `docket.connections.<op>`.
    async fn answer(&self, subject: &str, payload: &[u8]) -> ConnectionReply {
        let now = match docket_ledger::clock::now() {
            Ok(t) => t,
            Err(e) => return ConnectionReply::refused(e.to_string()),
        };
        let authenticated = self.view(|registry, state, _| {
            vault::authenticate(payload, registry, state)
                .map(|a| (a, state.policy.policy.request_skew_max_s))
        });
        let (auth, skew_s) = match authenticated {
            Ok(a) => a,
            Err(e) => return ConnectionReply::refused(e.2.to_string()),
        };
        let op_name = auth.request.op.name();
        if subject.strip_prefix(SUBJECT_PREFIX) != Some(op_name) {
            return ConnectionReply::refused(format!(
                "a {op_name} request is sent on {SUBJECT_PREFIX}{op_name}"
            ));
        }
        let skew = (now.as_micros() - auth.request.ts.as_micros()).abs();
        if skew > i64::from(skew_s) * 1_000_000 {
            return ConnectionReply::refused(format!(
                "request time {} is more than {skew_s} s from the vault's clock",
                auth.request.ts
            ));
        }
        let window = Duration::from_secs(2 * u64::from(skew_s));
        match (&auth.request.op, &auth.requester) {
            (Op::Connect { user, .. } | Op::Link { user, .. }, Requester::User(u)) if user != u => {
                ConnectionReply::refused(format!(
                    "{op_name}: this key is user {u}'s, not {user}'s: a user links only their own accounts"
                ))
            }
            (
                Op::Connect {
                    provider,
                    redirect_uri,
                    code_challenge,
                    state,
                    ..
                },
                Requester::User(_),
            ) => self.connect(provider, redirect_uri, code_challenge, state),
            (
                Op::Link {
                    provider,
                    code,
                    code_verifier,
                    redirect_uri,
                    ..
                },
                Requester::User(user),
            ) => {
                if !self.first_sighting(auth.request.id, window) {
                    return ConnectionReply::refused(
                        "this request id was seen before: send a new request",
                    );
                }
                self.link(user, provider, code, code_verifier, redirect_uri, now)
                    .await
            }
            (
                Op::Unlink {
                    provider,
                    user,
                    reason,
                },
                requester,
            ) => {
                let who = match (requester, user) {
                    (Requester::User(u), None) => u.clone(),
                    (Requester::User(u), Some(named)) if named == u => u.clone(),
                    (Requester::Admin, Some(named)) => named.clone(),
                    _ => {
                        return ConnectionReply::refused(
                            "unlink: a user unlinks their own connections; the admin names the user",
                        );
                    }
                };
                if !self.first_sighting(auth.request.id, window) {
                    return ConnectionReply::refused(
                        "this request id was seen before: send a new request",
                    );
                }
                self.unlink(&who, provider, &requester.name(), reason).await
            }
            (
                Op::Upstream {
                    token,
                    provider,
                    reply_key,
                },
                Requester::Gateway(_),
            ) => self.upstream(token, provider, reply_key, now).await,
            (Op::Connect { .. } | Op::Link { .. }, r) => ConnectionReply::refused(format!(
                "{op_name}: only a user links their own accounts ({} key signed this)",
                r.owner()
            )),
            (Op::Upstream { .. }, r) => ConnectionReply::refused(format!(
                "upstream: only a gateway (a key the admin allowed api.called) may ask ({} key signed this)",
                r.owner()
            )),
            _ => ConnectionReply::refused(format!(
                "{op_name} is not a connections operation: send it on docket.vault.{op_name}"
            )),
        }
    }

    fn connect(
        &self,
        provider: &str,
        redirect_uri: &str,
        code_challenge: &str,
        state: &str,
    ) -> ConnectionReply {
        let p = match self.provider(provider) {
            Ok(p) => p,
            Err(e) => return ConnectionReply::refused(e),
        };
        if !connection::is_loopback_redirect(redirect_uri) {
            return ConnectionReply::refused(
                "redirect_uri must be a loopback address, http://127.0.0.1:PORT/... or http://[::1]:PORT/... (RFC 8252)",
            );
        }
        if code_challenge.len() != 43
            || !code_challenge
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        {
            return ConnectionReply::refused(
                "code_challenge must be an S256 challenge: 43 base64url characters",
            );
        }
        if state.is_empty()
            || state.len() > STATE_BYTES_MAX
            || !state.bytes().all(|c| c.is_ascii_graphic())
        {
            return ConnectionReply::refused(format!(
                "state must be 1 to {STATE_BYTES_MAX} visible ASCII characters"
            ));
        }
        ConnectionReply {
            ok: true,
            authorize_url: Some(connection::authorize_url(
                &p.config.authorize_url,
                &p.config.client_id,
                &p.config.scopes,
                redirect_uri,
                code_challenge,
                state,
            )),
            ..ConnectionReply::default()
        }
    }

    async fn link(
        &self,
        user: &str,
        provider: &str,
        code: &str,
        code_verifier: &str,
        redirect_uri: &str,
        now: Timestamp,
    ) -> ConnectionReply {
        let p = match self.provider(provider) {
            Ok(p) => p,
            Err(e) => return ConnectionReply::refused(e),
        };
        if !connection::verifier_is_sound(code_verifier) {
            return ConnectionReply::refused(
                "code_verifier must be 43 to 128 unreserved characters (RFC 7636)",
            );
        }
        if !connection::is_loopback_redirect(redirect_uri) {
            return ConnectionReply::refused("redirect_uri must be a loopback address");
        }
        if code.is_empty()
            || code.len() > CODE_BYTES_MAX
            || !code.bytes().all(|c| c.is_ascii_graphic())
        {
            return ConnectionReply::refused(
                "the authorization code is empty, too long or not visible ASCII",
            );
        }
        let guard = self.connection_lock(user, provider);
        let _held = guard.lock().await;
        let form = connection::form(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", code_verifier),
        ]);
        let answer = match self.post(p, &p.config.token_url, &form).await {
            Ok((status, body)) => connection::read_token_answer(status, &body, now, None),
            Err(e) => Err(ProviderRefusal::Unavailable(e)),
        };
        let secrets = match answer {
            Ok((s, _)) => s,
            Err(e) => return ConnectionReply::refused(format!("{provider} did not link: {e}")),
        };
        let since = self.last_seq(user, provider);
        if let Err(e) = self.keep(user, provider, &secrets) {
            self.revoke_upstream(p, &secrets).await;
            return ConnectionReply::refused(format!("the tokens could not be stored: {e}"));
        }
        let fingerprint = self.fingerprint(&secrets);
        let body = EventBody::ConnectionLinked(ConnectionLinked {
            user: user.to_string(),
            provider: provider.to_string(),
            scopes: secrets.scopes.clone(),
            fingerprint: fingerprint.clone(),
            access_expires_at: secrets.access_expires_at,
        });
        let id = match self.record(body).await {
            Ok(id) => id,
            Err(e) => {
                // No record, no connection: nothing is kept that the log does not show.
                if let Err(d) = self.forget(user, provider) {
                    tracing::error!(%user, %provider, error = %d, "unrecorded tokens could not be deleted");
                }
                self.revoke_upstream(p, &secrets).await;
                return ConnectionReply::refused(format!("the link could not be recorded: {e}"));
            }
        };
        if let Err(e) = self.applied(user, provider, since).await {
            return ConnectionReply::refused(e);
        }
        ConnectionReply {
            ok: true,
            scopes: Some(secrets.scopes),
            fingerprint: Some(fingerprint),
            expires_at: secrets.access_expires_at,
            event_id: Some(id),
            ..ConnectionReply::default()
        }
    }

    /// Asks the provider to revoke the grant (RFC 7009); best effort, bounded, logged.
    async fn revoke_upstream(&self, p: &Provider, secrets: &UpstreamSecrets) {
        let Some(url) = &p.config.revocation_url else {
            return;
        };
        let (token, hint) = match &secrets.refresh_token {
            Some(r) => (r.as_str(), "refresh_token"),
            None => (secrets.access_token.as_str(), "access_token"),
        };
        let form = connection::form(&[("token", token), ("token_type_hint", hint)]);
        match self.post(p, url, &form).await {
            Ok((200, _)) => {}
            Ok((status, _)) => {
                tracing::warn!(%status, "the provider did not confirm the revocation")
            }
            Err(e) => tracing::warn!(error = %e, "the provider's revocation endpoint failed"),
        }
    }

    async fn unlink(&self, user: &str, provider: &str, by: &str, reason: &str) -> ConnectionReply {
        // The record is checked before anything is deleted: secrets gone with nothing on
        // the chain would be an unlink nobody can see.
        let body = EventBody::ConnectionUnlinked(ConnectionUnlinked {
            user: user.to_string(),
            provider: provider.to_string(),
            by: by.to_string(),
            reason: reason.to_string(),
        });
        if let Err(e) = body.validate() {
            return ConnectionReply::refused(format!("unlink: {e}"));
        }
        let known = self.view(|_, state, _| {
            state
                .connections
                .get(&connection_key(user, provider))
                .is_some_and(|c| c.status != ConnectionStatus::Unlinked)
        });
        if !known && !self.providers.contains_key(provider) {
            return ConnectionReply::refused(format!("{user} has no connection to {provider}"));
        }
        let guard = self.connection_lock(user, provider);
        let _held = guard.lock().await;
        // Readable or not, the secrets go: unlinking must work with a lost key too.
        let secrets = self.secrets(user, provider).ok().flatten();
        let deleted = match self.forget(user, provider) {
            Ok(d) => d,
            Err(e) => {
                return ConnectionReply::refused(format!("the tokens could not be deleted: {e}"));
            }
        };
        if !known && !deleted {
            return ConnectionReply::refused(format!("{user} has no connection to {provider}"));
        }
        if let (Some(s), Ok(p)) = (&secrets, self.provider(provider)) {
            self.revoke_upstream(p, s).await;
        }
        let since = self.last_seq(user, provider);
        let id = match self.record(body).await {
            Ok(id) => id,
            Err(e) => {
                return ConnectionReply::refused(format!(
                    "the tokens are deleted but the unlink could not be recorded: {e}"
                ));
            }
        };
        if let Err(e) = self.applied(user, provider, since).await {
            return ConnectionReply::refused(e);
        }
        ConnectionReply {
            ok: true,
            event_id: Some(id),
            ..ConnectionReply::default()
        }
    }

    async fn upstream(
        &self,
        token: &str,
        provider: &str,
        reply_key: &str,
        now: Timestamp,
    ) -> ConnectionReply {
        let p = match self.provider(provider) {
            Ok(p) => p,
            Err(e) => return ConnectionReply::refused(e),
        };
        if let Err(e) = docket_schemas::seal::check_reply_key(reply_key) {
            return ConnectionReply::refused(format!("reply_key: {e}"));
        }
        let holder = self.view(|_, state, hash_key| {
            vault::upstream_holder(state, hash_key, token, provider, &p.config.audiences, now)
        });
        let user = match holder {
            Ok(u) => u,
            Err(why) => return ConnectionReply::refused(why),
        };
        let secrets = match self.fresh_secrets(&user, provider).await {
            Ok(s) => s,
            Err(e) => {
                return ConnectionReply {
                    transient: e.transient,
                    ..ConnectionReply::refused(e.why)
                };
            }
        };
        let mut ephemeral = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut ephemeral);
        match docket_schemas::seal::seal_secret(
            secrets.access_token.as_bytes(),
            reply_key,
            ephemeral,
        ) {
            Ok(sealed) => ConnectionReply {
                ok: true,
                sealed_token: Some(sealed),
                expires_at: secrets.access_expires_at,
                ..ConnectionReply::default()
            },
            Err(e) => ConnectionReply::refused(format!("reply_key: {e}")),
        }
    }

    /// Refreshes every linked connection whose access token is about to expire.
    async fn sweep(&self) {
        let linked: Vec<(String, String)> = self.view(|_, state, _| {
            state
                .connections
                .values()
                .filter(|c| c.status == ConnectionStatus::Linked)
                .filter(|c| self.providers.contains_key(&c.provider))
                .map(|c| (c.user.clone(), c.provider.clone()))
                .collect()
        });
        for (user, provider) in linked {
            if let Err(e) = self.fresh_secrets(&user, &provider).await {
                tracing::warn!(%user, %provider, why = %e.why, "a connection could not be kept fresh");
            }
        }
    }
}

/// Answers `docket.connections.>` and keeps access tokens fresh, until the client closes.
pub async fn serve(conns: Arc<Connections>, client: async_nats::Client) -> Result<()> {
    let mut sub = client
        .queue_subscribe(
            docket_schemas::vault::SUBJECT_CONNECTIONS,
            "docket-connections".into(),
        )
        .await
        .context("subscribing to docket.connections.>")?;
    let sweeper = {
        let conns = Arc::clone(&conns);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REFRESH_SWEEP);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                conns.sweep().await;
            }
        })
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(CONNECTION_INFLIGHT_MAX));
    while let Some(msg) = sub.next().await {
        let Some(reply_to) = msg.reply.clone() else {
            continue;
        };
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            break;
        };
        let (conns, client) = (Arc::clone(&conns), client.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let answer = conns.answer(msg.subject.as_str(), &msg.payload).await;
            match serde_json::to_vec(&answer) {
                Ok(bytes) => {
                    if let Err(e) = client.publish(reply_to, bytes.into()).await {
                        tracing::warn!(error = %e, "connection reply not sent");
                    }
                }
                Err(e) => tracing::error!(error = %e, "connection reply did not serialise"),
            }
        });
    }
    sweeper.abort();
    Ok(())
}

/// Whether `url` is plain HTTP to this machine: `http://127.0.0.1`, `http://[::1]` or
/// `http://localhost`, with or without a port.
fn is_loopback_http(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return false;
    }
    let host = match authority.strip_prefix("[::1]") {
        Some(port) => return port.is_empty() || port.strip_prefix(':').is_some_and(is_port),
        None => authority
            .split_once(':')
            .map_or(authority, |(h, p)| if is_port(p) { h } else { "" }),
    };
    host == "127.0.0.1" || host.eq_ignore_ascii_case("localhost")
}

fn is_port(p: &str) -> bool {
    !p.is_empty() && p.len() <= 5 && p.bytes().all(|c| c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_go_only_to_loopback_over_plain_http() {
        for ok in [
            "http://127.0.0.1:9000/token",
            "http://127.0.0.1/token",
            "http://[::1]:9/t",
            "http://localhost:8080/oauth/token",
        ] {
            assert!(is_loopback_http(ok), "{ok}");
        }
        for bad in [
            "http://auth.example.com/token",
            "http://127.0.0.1.example.com/token",
            "http://127.0.0.1@evil.example/token",
            "http://evil.example#@127.0.0.1/",
            "http://127.0.0.1:x/token",
            "https://127.0.0.1/token",
            "http://[::1]evil/",
        ] {
            assert!(!is_loopback_http(bad), "{bad}");
        }
    }
}
