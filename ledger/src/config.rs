//! The ledger's configuration file (TOML): origin, the admin key, checkpoint schedule, NATS settings, the expected policy.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// `docket serve`'s configuration. Every field has a default except the admin key.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The chain's name in checkpoints, e.g. `docket.example.com/ledger`.
    #[serde(default = "default_origin")]
    pub origin: String,
    /// Whether the file named `origin` itself; if not, an existing ledger's recorded origin
    /// stands instead of the default, so a restart needs no reminder.
    #[serde(skip)]
    pub origin_named: bool,
    /// base64 of the admin's ed25519 public key: the root of trust for producer keys.
    pub admin_public_key: Option<String>,
    /// File holding the key that signs checkpoints; created in the data directory when absent.
    pub ledger_key: Option<PathBuf>,
    #[serde(default = "default_every_entries")]
    pub checkpoint_every_entries: u64,
    #[serde(default = "default_every_s")]
    pub checkpoint_every_s: u64,
    /// Subject filter this instance consumes, within `docket.events.>`.
    #[serde(default = "default_filter")]
    pub subject_filter: String,
    /// Durable consumer name.
    #[serde(default = "default_consumer")]
    pub consumer: String,
    /// Key file of the vault; when set, `serve` answers vault requests on `docket.vault.>`.
    /// The admin must register this key for the kinds the vault emits.
    #[serde(default)]
    pub vault_key: Option<PathBuf>,
    /// The policy this deployment expects. It is not applied from here: the chain's
    /// `policy.set` is the policy, and `serve` refuses to start when the two differ,
    /// printing the command that records this one.
    #[serde(default)]
    pub policy: PolicyConfig,
    /// `[detection]`: which rules `serve` runs live (docs/DETECTION.md).
    #[serde(default)]
    pub detection: DetectionConfig,
    /// `[connections]`: users' upstream OAuth accounts the vault holds (with `vault_key`).
    #[serde(default)]
    pub connections: ConnectionsConfig,
    /// `[[witnesses]]`: witnesses each checkpoint is submitted to; `serve` refuses to start
    /// when one holds a checkpoint this store does not extend (docs/FORMAT.md §11).
    #[serde(default)]
    pub witnesses: Vec<WitnessConfig>,
}

/// `[[witnesses]]`: a witness's name in its cosignatures and its public key (base64).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WitnessConfig {
    pub name: String,
    pub public_key: String,
}

/// `[connections]`: where the vault keeps users' upstream tokens and which providers it
/// links to. Operational settings only: nothing here changes what the log derives.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ConnectionsConfig {
    /// The key file the secrets are wrapped with (`docket vault new-key` makes one). Keep it
    /// outside the data directory. Without it, `serve` links no accounts.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Refresh an access token when less than this many seconds of it are left.
    #[serde(default = "default_refresh_margin_s")]
    pub refresh_margin_s: u32,
    #[serde(default)]
    pub providers: std::collections::BTreeMap<String, ProviderConfig>,
}

fn default_refresh_margin_s() -> u32 {
    60
}

/// `[connections.providers.NAME]`: an OAuth 2.0 authorization server and this vault's client there.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub authorize_url: String,
    pub token_url: String,
    /// RFC 7009 revocation endpoint, asked when a connection is unlinked.
    #[serde(default)]
    pub revocation_url: Option<String>,
    pub client_id: String,
    /// The environment variable holding the client secret (never the secret itself here).
    #[serde(default)]
    pub client_secret_env: Option<String>,
    /// Or a file holding it.
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// The scopes asked for when a user links.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The Docket audiences whose calls this provider's tokens serve: a gateway gets a
    /// user's token only for a Docket token issued for one of them.
    pub audiences: Vec<String>,
}

/// `[detection]`: the rules `serve` runs. What it runs is recorded on the chain (`rules.set`)
/// when it starts; this file only says what to put there.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DetectionConfig {
    /// Run detection inside `serve`.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// A directory of the deployment's own rule files (`*.yml`), run beside the built-in ones.
    #[serde(default)]
    pub rules_dir: Option<PathBuf>,
    /// Run the built-in rules.
    #[serde(default = "default_true")]
    pub built_in: bool,
    /// How long a new agent is observed before rules below `high` may fire about it (`30m`, `24h`, `7d`).
    #[serde(default = "default_learning")]
    pub learning: String,
}

impl Default for DetectionConfig {
    fn default() -> Self {
        DetectionConfig {
            enabled: true,
            rules_dir: None,
            built_in: true,
            learning: default_learning(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_learning() -> String {
    "1d".into()
}

/// `[policy]`: settings the operator expects; unset ones take the chain's.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    pub step_up_max_age_s: Option<u32>,
    pub approval_ttl_s: Option<u32>,
    pub token_ttl_max_s: Option<u32>,
    pub request_skew_max_s: Option<u32>,
    pub unauthenticated_recorded_per_s: Option<u32>,
    pub event_ts_ahead_max_s: Option<u32>,
    pub vault_requests_per_key_per_s: Option<u32>,
}

impl PolicyConfig {
    /// These settings where given, `base`'s elsewhere (command-line flags over a config file).
    pub fn over(self, base: PolicyConfig) -> PolicyConfig {
        PolicyConfig {
            step_up_max_age_s: self.step_up_max_age_s.or(base.step_up_max_age_s),
            approval_ttl_s: self.approval_ttl_s.or(base.approval_ttl_s),
            token_ttl_max_s: self.token_ttl_max_s.or(base.token_ttl_max_s),
            request_skew_max_s: self.request_skew_max_s.or(base.request_skew_max_s),
            unauthenticated_recorded_per_s: self
                .unauthenticated_recorded_per_s
                .or(base.unauthenticated_recorded_per_s),
            event_ts_ahead_max_s: self.event_ts_ahead_max_s.or(base.event_ts_ahead_max_s),
            vault_requests_per_key_per_s: self
                .vault_requests_per_key_per_s
                .or(base.vault_requests_per_key_per_s),
        }
    }

    /// The policy to record when this config asks for settings the chain's policy lacks:
    /// the chain's, with this config's settings, at the next revision. `None` when they agree.
    pub fn wanted(&self, chain: &docket_schemas::PolicySet) -> Option<docket_schemas::PolicySet> {
        let mut p = chain.clone();
        let set = |field: &mut u32, wanted: Option<u32>| {
            if let Some(v) = wanted {
                *field = v;
            }
        };
        set(&mut p.step_up_max_age_s, self.step_up_max_age_s);
        set(&mut p.approval_ttl_s, self.approval_ttl_s);
        set(&mut p.token_ttl_max_s, self.token_ttl_max_s);
        set(&mut p.request_skew_max_s, self.request_skew_max_s);
        set(
            &mut p.unauthenticated_recorded_per_s,
            self.unauthenticated_recorded_per_s,
        );
        set(&mut p.event_ts_ahead_max_s, self.event_ts_ahead_max_s);
        set(
            &mut p.vault_requests_per_key_per_s,
            self.vault_requests_per_key_per_s,
        );
        if p.same_settings(chain) {
            return None;
        }
        p.revision = chain.revision.saturating_add(1);
        Some(p)
    }
}

fn default_origin() -> String {
    "docket.local/ledger".into()
}
fn default_every_entries() -> u64 {
    10_000
}
fn default_every_s() -> u64 {
    10
}
fn default_filter() -> String {
    crate::transport::STREAM_SUBJECTS.into()
}
fn default_consumer() -> String {
    "docket-ledger".into()
}

impl Default for Config {
    fn default() -> Self {
        Config {
            origin: default_origin(),
            origin_named: false,
            admin_public_key: None,
            ledger_key: None,
            checkpoint_every_entries: default_every_entries(),
            checkpoint_every_s: default_every_s(),
            subject_filter: default_filter(),
            consumer: default_consumer(),
            vault_key: None,
            policy: PolicyConfig::default(),
            detection: DetectionConfig::default(),
            connections: ConnectionsConfig::default(),
            witnesses: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {why}")]
    Parse { path: PathBuf, why: String },
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.into(),
            source,
        })?;
        let parse = |e: toml::de::Error| ConfigError::Parse {
            path: path.into(),
            why: e.to_string(),
        };
        let mut config: Config = toml::from_str(&text).map_err(parse)?;
        config.origin_named = toml::from_str::<toml::Table>(&text)
            .map_err(parse)?
            .contains_key("origin");
        Ok(config)
    }

    pub fn checkpoint_policy(&self) -> crate::ingest::CheckpointPolicy {
        crate::ingest::CheckpointPolicy {
            every_entries: self.checkpoint_every_entries.max(1),
            every: Duration::from_secs(self.checkpoint_every_s.max(1)),
        }
    }
}
