//! `docket policy`: the policy on the chain, shown, and changed by an admin-signed `policy.set`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use docket_ledger::config::{Config, PolicyConfig};
use docket_ledger::projection::{Until, state_at};
use docket_ledger::state::PolicyInForce;
use docket_ledger::store::Store;
use docket_ledger::{admission, keyfile};
use docket_schemas::{Event, EventBody, EventId, PolicySet, SCHEMA_VERSION, encode_base64};

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Print the policy in force (now, or as of a seq or time) and the entry that set it, as JSON.
    Show {
        #[command(flatten)]
        data: crate::DataArgs,
        /// The policy as it stood after this seq, or at this time.
        #[arg(long)]
        as_of: Option<String>,
    },
    /// Record a new policy on a stopped ledger, signed by the admin key (what `serve` asks for
    /// when its config's [policy] differs from the chain's). With --print, only print the
    /// unsigned event, to pipe into `docket publish --key admin.key` for a running ledger.
    Set(SetArgs),
}

#[derive(Args)]
pub struct SetArgs {
    #[command(flatten)]
    data: crate::DataArgs,
    /// The admin's key file (the ledger's root of trust signs every policy change).
    #[arg(long, required_unless_present = "print")]
    key: Option<PathBuf>,
    /// Take the wanted settings from this config file's [policy] (flags override it).
    #[arg(long, env = "DOCKET_CONFIG")]
    config: Option<PathBuf>,
    /// Print the unsigned `policy.set` event instead of recording it.
    #[arg(long)]
    print: bool,
    /// Oldest step-up accepted for a critical approval, seconds before the decision (1-2592000).
    #[arg(long, value_name = "SECONDS")]
    step_up_max_age_s: Option<u32>,
    /// How long an approval request waits for a human (1-2592000).
    #[arg(long, value_name = "SECONDS")]
    approval_ttl_s: Option<u32>,
    /// Longest token lifetime, and the lifetime given when none is asked (1-2592000).
    #[arg(long, value_name = "SECONDS")]
    token_ttl_max_s: Option<u32>,
    /// How far a vault request's time may be from the vault's clock (1-2592000).
    #[arg(long, value_name = "SECONDS")]
    request_skew_max_s: Option<u32>,
    /// Refusals of unknown or invalid signers recorded per second (1-100000).
    #[arg(long, value_name = "PER_SECOND")]
    unauthenticated_recorded_per_s: Option<u32>,
    /// How far an event's time may be ahead of the ledger's receipt (1-2592000).
    #[arg(long, value_name = "SECONDS")]
    event_ts_ahead_max_s: Option<u32>,
    /// Vault requests answered per signing key per second (1-100000).
    #[arg(long, value_name = "PER_SECOND")]
    vault_requests_per_key_per_s: Option<u32>,
}

pub async fn run(cmd: PolicyCommand) -> Result<std::process::ExitCode> {
    match cmd {
        PolicyCommand::Show { data, as_of } => {
            let store = Store::open_reader(&crate::db_dir(&data.data))?;
            let until = match as_of.as_deref() {
                Some(text) => Until::parse(text)?,
                None => Until::End,
            };
            let point = state_at(&store, until)?;
            println!("{}", serde_json::to_string_pretty(&point.state.policy)?);
            Ok(std::process::ExitCode::SUCCESS)
        }
        PolicyCommand::Set(args) => set(args).await,
    }
}

async fn set(a: SetArgs) -> Result<std::process::ExitCode> {
    let mut config = match &a.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    let flags = PolicyConfig {
        step_up_max_age_s: a.step_up_max_age_s,
        approval_ttl_s: a.approval_ttl_s,
        token_ttl_max_s: a.token_ttl_max_s,
        request_skew_max_s: a.request_skew_max_s,
        unauthenticated_recorded_per_s: a.unauthenticated_recorded_per_s,
        event_ts_ahead_max_s: a.event_ts_ahead_max_s,
        vault_requests_per_key_per_s: a.vault_requests_per_key_per_s,
    };
    config.policy = flags.over(std::mem::take(&mut config.policy));
    let db = crate::db_dir(&a.data.data);
    if !db.join("CURRENT").exists() {
        bail!(
            "{}: no ledger here yet; start `docket serve` once without [policy] settings (a new \
             ledger records the documented defaults), or run this command after it stopped",
            a.data.data.display()
        );
    }
    let current = Store::open_reader(&db)?.load_state()?.policy;
    let Some(wanted) = config.policy.wanted(&current.policy) else {
        eprintln!(
            "the chain's policy (revision {}) already has these settings; nothing to record",
            current.policy.revision
        );
        return Ok(std::process::ExitCode::SUCCESS);
    };
    // The value may come from a flag or from the config's [policy]: name the setting.
    wanted
        .check()
        .map_err(|(field, why)| anyhow::anyhow!("{field}: {why} (docs/FORMAT.md, section 12)"))?;
    let mut event = serde_json::to_value(EventBody::PolicySet(wanted.clone()))?;
    if a.print {
        println!("{event}");
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let key_path = a
        .key
        .context("--key ADMIN.key is needed to record the policy")?;
    let key = keyfile::read(&key_path)?;
    let identity = Store::open_reader(&db)?.identity()?;
    if encode_base64(key.verifying_key().as_bytes()) != identity.admin_public_key {
        bail!(
            "{} is not this ledger's admin key: only the admin may set the policy",
            key_path.display()
        );
    }
    config.origin = identity.origin.clone();
    let mut ledger = crate::open_ledger(&a.data.data, &config, &identity.admin_public_key)?;
    ledger.record_genesis_policy().await?;
    let event_id = EventId(*uuid::Uuid::now_v7().as_bytes());
    let now = docket_ledger::clock::now()?;
    let set = Event {
        v: SCHEMA_VERSION,
        id: event_id,
        ts: now,
        body: EventBody::PolicySet(wanted.clone()),
    };
    let local = admission::LOCAL_SEQ_BIT | (now.as_micros().unsigned_abs() << 12);
    let plan = ledger
        .commit(vec![admission::Incoming::sealed(&set, &key, local)])
        .await?;
    match (plan.appends.first(), plan.quarantined.first()) {
        (Some(e), _) => {
            if let Some(obj) = event.as_object_mut() {
                obj.insert("seq".into(), e.seq.into());
            }
            println!("{event}");
            eprintln!(
                "recorded policy revision {} at seq {}; it applies from seq {}",
                wanted.revision,
                e.seq,
                e.seq + 1
            );
            Ok(std::process::ExitCode::SUCCESS)
        }
        (None, Some(q)) => bail!("the ledger refused the policy: {}", q.reason),
        (None, None) => bail!("the policy was not appended (a duplicate?)"),
    }
}

/// What `serve` says when its config's [policy] differs from the chain's: the difference,
/// and the command that records the wanted policy, signed by the admin key.
pub fn mismatch(
    chain: &PolicyInForce,
    wanted: &PolicySet,
    data: &Path,
    config: Option<&Path>,
) -> String {
    let set_by = if chain.set_seq == 0 {
        "the documented defaults".to_string()
    } else {
        format!("set at seq {}", chain.set_seq)
    };
    let changes: Vec<String> = chain
        .policy
        .settings()
        .iter()
        .zip(wanted.settings())
        .filter(|(a, b)| a.1 != b.1)
        .map(|((name, was, _), (_, now, _))| format!("{name} {was} -> {now}"))
        .collect();
    let config_arg = config
        .map(|c| format!(" --config {}", c.display()))
        .unwrap_or_default();
    format!(
        "the config's [policy] differs from the policy on the chain (revision {}, {set_by}): {}. \
         The chain is the policy, so the ledger does not start with another. Record the change, \
         signed by the admin key, then start again:\n  docket policy set --data {}{config_arg} --key ADMIN.key\n\
         (or remove those settings from the config to keep the chain's policy)",
        chain.policy.revision,
        changes.join(", "),
        data.display()
    )
}
