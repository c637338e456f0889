//! The `docket` command line: thin glue over the ledger library.

mod bench;
mod bench_detect;
mod bench_gateway;
mod bench_sql;
mod bench_transparency;
mod bench_watch;
mod connect_cmd;
mod connections;
mod demo;
mod detect_cmd;
mod evidence_cmd;
mod findings_cmd;
mod gateway_cmd;
mod measure;
mod policy_cmd;
mod proof_cmd;
mod query_guard;
mod read_service;
mod report_cmd;
mod sql_cmd;
mod state_cmd;
mod terminal_text;
mod vault_cmd;
mod vault_scene;
mod watch_cmd;
mod witness_cmd;

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use docket_ledger::config::Config;
use docket_ledger::ingest::Ledger;
use docket_ledger::publisher::{Publisher, Sink, prepare};
use docket_ledger::store::{LedgerIdentity, Store};
use docket_ledger::transport::{Bus, NatsSettings, NatsSource, Source};
use docket_ledger::{export, keyfile, verify, witnessing};
use docket_schemas::{EventId, encode_base64, key_id};

#[derive(Parser)]
#[command(
    name = "docket",
    version,
    about = "A tamper-evident ledger of what AI agents did with the access they were given"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Manage ed25519 keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Run the ledger: consume signed events from NATS JetStream into the chain.
    Serve(ServeArgs),
    /// Sign and publish events given as JSON lines (one unsigned event per line).
    Publish(PublishArgs),
    /// Verify a ledger offline: chain, signatures, authorizations, checkpoints.
    Verify(VerifyArgs),
    /// Print entries as JSON lines.
    Log(LogArgs),
    /// Print quarantined (rejected) envelopes as JSON lines, or with --counts the number
    /// refused per reason code.
    Quarantine(QuarantineArgs),
    /// Export the chain for an independent verifier (JSON lines), or every SQL table as Parquet.
    Export(ExportArgs),
    /// Ask the ledger questions in SQL (read-only): one query, or an interactive shell.
    Sql(sql_cmd::SqlArgs),
    /// The columnar copy of the chain that SQL reads: seal, check against the chain, rebuild.
    #[command(subcommand)]
    Columnar(sql_cmd::ColumnarCommand),
    /// Run the detection rules (built-in and --rules DIR) over the ledger and print what they see.
    Detect(detect_cmd::DetectArgs),
    /// Detection rule files: list them, check that they parse and plan.
    #[command(subcommand)]
    Rules(detect_cmd::RulesCommand),
    /// The vault's state derived from the log: grants, tokens, approvals, agents; rebuild checks.
    #[command(subcommand)]
    State(state_cmd::StateCommand),
    /// Vault: grant an agent scopes on an audience (signed by the user or the admin).
    Grant(vault_cmd::GrantArgs),
    /// Vault: ask for a short-lived token as an agent; may need a human's approval.
    Token(vault_cmd::TokenArgs),
    /// Vault: approve or deny a pending request as its user.
    Approve(vault_cmd::ApproveArgs),
    /// Vault: revoke a token or a grant, or suspend an agent.
    Revoke(vault_cmd::RevokeArgs),
    /// Vault: ask whether a token is active (RFC 7662), as a gateway.
    Introspect(vault_cmd::IntrospectArgs),
    /// Link your upstream account (OAuth 2.0 with PKCE): prints the address to open, waits
    /// for the provider's redirect on loopback, and has the vault keep the tokens encrypted.
    Connect(connect_cmd::ConnectArgs),
    /// Unlink an upstream account: the vault deletes its tokens and asks the provider to revoke them.
    Disconnect(connect_cmd::DisconnectArgs),
    /// The vault's key for users' upstream tokens: make one, rotate it.
    #[command(subcommand)]
    Vault(connect_cmd::VaultCommand),
    /// The recording gateway: a reverse proxy that checks each agent's token with the vault,
    /// forwards only the routes its config allows, and has each call's record acknowledged
    /// before the agent sees the answer.
    Gateway(gateway_cmd::GatewayArgs),
    /// One self-contained HTML page over a time range: calls per agent, findings by level and
    /// rule, approvals per user, and each open finding with its evidence.
    Report(report_cmd::ReportArgs),
    /// Findings: policy violations and recorded detections with their triage; `triage` and
    /// `suppress` record an analyst's decision.
    Findings(findings_cmd::FindingsArgs),
    /// The policy on the chain (the settings every decision and finding follows): show it, or record a change.
    #[command(subcommand)]
    Policy(policy_cmd::PolicyCommand),
    /// The security team's terminal: live events, findings, agents, approvals and SQL, with actions.
    Watch(watch_cmd::WatchArgs),
    /// Run the whole pipeline on a synthetic workload, then verify it.
    Demo(demo::DemoArgs),
    /// Measure performance and print figures.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Print a Merkle proof (JSON) from the data directory: an entry's inclusion, or the
    /// consistency of two sizes of the log.
    #[command(subcommand)]
    Prove(proof_cmd::ProveCommand),
    /// Check a proof or receipt offline against the ledger's public key.
    CheckProof(proof_cmd::CheckProofArgs),
    /// Ask a live ledger for an entry's receipt: its inclusion proof under a signed
    /// checkpoint, waiting for one to cover it.
    Receipt(proof_cmd::ReceiptArgs),
    /// Bundle a query's answer with every entry it rests on, their inclusion proofs, a
    /// checkpoint and the public keys, for someone who trusts neither you nor the ledger.
    Evidence(evidence_cmd::EvidenceArgs),
    /// Check an evidence bundle offline: the rows follow from the entries, the entries are in the log.
    CheckEvidence(evidence_cmd::CheckEvidenceArgs),
    /// Run a witness: cosign a ledger's checkpoints only when each extends the last one cosigned.
    Witness(witness_cmd::WitnessArgs),
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a keypair file; print its public key and key id.
    New {
        /// Where to write the key (must not exist).
        #[arg(long)]
        out: PathBuf,
    },
    /// Print a key file's public key and key id (never the secret).
    Show {
        /// The key file.
        file: PathBuf,
        /// Print only the public key (base64), for scripts.
        #[arg(long, conflicts_with = "key_id")]
        public_key: bool,
        /// Print only the key id (hex), for scripts.
        #[arg(long)]
        key_id: bool,
    },
    /// Print the unsigned `key.registered` event that lets this key emit KINDs; pipe it to
    /// `docket publish --key admin.key`.
    Registration {
        /// The producer's key file (only its public half is read into the event).
        file: PathBuf,
        /// Who holds the key: a service name, or `user:<name>` for a user's own key.
        #[arg(long)]
        name: String,
        /// An event kind the key may emit (repeat), e.g. api.called; none for a step-up key.
        #[arg(long = "kind")]
        kinds: Vec<String>,
    },
    /// Print the unsigned `agent.registered` event for an agent's key; pipe it to
    /// `docket publish` with a key allowed to emit agent.registered (the vault's).
    Agent {
        /// The agent's key file (only its public half is read into the event).
        file: PathBuf,
        /// The agent's id (its OAuth client_id).
        #[arg(long)]
        agent: String,
        /// The user who owns the agent.
        #[arg(long)]
        user: String,
        /// A human-readable name (defaults to the agent id).
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(Args)]
pub struct DataArgs {
    /// The ledger's data directory.
    #[arg(long, env = "DOCKET_DATA")]
    pub data: PathBuf,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    data: DataArgs,
    /// NATS server URL.
    #[arg(long, env = "DOCKET_NATS", default_value = "nats://127.0.0.1:4222")]
    nats: String,
    #[command(flatten)]
    nats_auth: NatsAuthArgs,
    /// TOML config file (see README).
    #[arg(long, env = "DOCKET_CONFIG")]
    config: Option<PathBuf>,
    /// The admin's public key (base64); overrides the config file.
    #[arg(long, env = "DOCKET_ADMIN_KEY")]
    admin_key: Option<String>,
    /// The chain's origin name; overrides the config file.
    #[arg(long, env = "DOCKET_ORIGIN")]
    origin: Option<String>,
    /// Serve the vault with this key file (overrides the config file).
    #[arg(long, env = "DOCKET_VAULT_KEY")]
    vault_key: Option<PathBuf>,
    /// The checkpoint key file (overrides the config file; default DIR/ledger.key). Keep
    /// it outside the data directory so that whoever can write the store cannot re-sign
    /// it (SECURITY.md).
    #[arg(long, env = "DOCKET_LEDGER_KEY_FILE")]
    ledger_key: Option<PathBuf>,
    /// A directory of detection rule files run beside the built-in ones (overrides the
    /// config's [detection] rules_dir; docs/DETECTION.md).
    #[arg(long, value_name = "DIR")]
    rules: Option<PathBuf>,
    /// Run no detection rules.
    #[arg(long)]
    no_detect: bool,
    /// How long a new agent is observed before rules below high may fire about it
    /// (`30m`, `24h`, `7d`; overrides the config; recorded on the chain with the rules).
    #[arg(long, value_name = "DURATION")]
    learning: Option<String>,
}

/// How to authenticate to NATS and protect the connection (docs/NATS.md).
#[derive(Args, Clone, Debug, Default)]
pub struct NatsAuthArgs {
    /// NATS credentials file (.creds: a user JWT and its nkey seed).
    #[arg(long, env = "DOCKET_NATS_CREDS", value_name = "FILE")]
    nats_creds: Option<PathBuf>,
    /// File holding this identity's NATS nkey seed.
    #[arg(long, env = "DOCKET_NATS_NKEY", value_name = "FILE")]
    nats_nkey: Option<PathBuf>,
    /// NATS user name (with --nats-password).
    #[arg(long, env = "DOCKET_NATS_USER")]
    nats_user: Option<String>,
    /// NATS password (better given in the environment than on the command line).
    #[arg(long, env = "DOCKET_NATS_PASSWORD", hide_env_values = true)]
    nats_password: Option<String>,
    /// CA certificate (PEM) to check the NATS server's TLS certificate with; TLS is required.
    #[arg(long, env = "DOCKET_NATS_CA", value_name = "FILE")]
    nats_ca: Option<PathBuf>,
    /// Client certificate (PEM) for servers that verify clients (with --nats-client-key).
    #[arg(long, env = "DOCKET_NATS_CLIENT_CERT", value_name = "FILE")]
    nats_client_cert: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long, env = "DOCKET_NATS_CLIENT_KEY", value_name = "FILE")]
    nats_client_key: Option<PathBuf>,
    /// Prefix of this identity's reply subjects (default _INBOX); with per-identity
    /// permissions each identity may read only its own.
    #[arg(long, env = "DOCKET_NATS_INBOX_PREFIX")]
    nats_inbox_prefix: Option<String>,
}

impl NatsAuthArgs {
    pub fn auth(&self) -> docket_ledger::transport::NatsAuth {
        docket_ledger::transport::NatsAuth {
            creds: self.nats_creds.clone(),
            nkey: self.nats_nkey.clone(),
            user: self.nats_user.clone(),
            password: self.nats_password.clone(),
            ca: self.nats_ca.clone(),
            cert: self.nats_client_cert.clone(),
            key: self.nats_client_key.clone(),
            inbox_prefix: self.nats_inbox_prefix.clone(),
        }
    }
}

#[derive(Args)]
struct PublishArgs {
    /// NATS server URL.
    #[arg(long, env = "DOCKET_NATS", default_value = "nats://127.0.0.1:4222")]
    nats: String,
    #[command(flatten)]
    nats_auth: NatsAuthArgs,
    /// After JetStream stores the events, wait up to this many seconds for the ledger's verdict
    /// on each (appended at seq N, duplicate, or quarantined with the reason); exit 1 unless all
    /// were appended.
    #[arg(long, value_name = "SECONDS")]
    wait: Option<u64>,
    /// The producer's key file.
    #[arg(long, env = "DOCKET_KEY")]
    key: PathBuf,
    /// JSON-lines file of unsigned events, or - for standard input.
    #[arg(default_value = "-")]
    input: String,
}

#[derive(Args)]
struct VerifyArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Trust this admin public key (base64) instead of the one recorded in the ledger.
    #[arg(long)]
    admin_key: Option<String>,
    /// Trust this checkpoint key (base64) instead of the one recorded in the ledger.
    #[arg(long)]
    ledger_key: Option<String>,
    /// Demand a checkpoint of this chain cosigned by this witness: NAME=PUBLIC_KEY (base64).
    #[arg(long = "witness", value_name = "NAME=KEY")]
    witnesses: Vec<String>,
    /// Verify only what came after this trusted checkpoint (a file holding its note, e.g.
    /// one a witness cosigned): entries up to it are hashed against its root, not re-checked.
    #[arg(long, value_name = "FILE")]
    since_checkpoint: Option<PathBuf>,
}

#[derive(Args)]
struct QuarantineArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Print the count of refusals per reason code instead of the records (records stop
    /// at 100,000; counts go on).
    #[arg(long)]
    counts: bool,
}

#[derive(Args)]
struct LogArgs {
    #[command(flatten)]
    data: DataArgs,
    /// First seq to print.
    #[arg(long, default_value_t = 1)]
    from: u64,
    /// Most entries to print (all when absent).
    #[arg(long)]
    limit: Option<u64>,
}

#[derive(Args)]
struct ExportArgs {
    #[command(flatten)]
    data: DataArgs,
    /// `jsonl`: the chain, entry by entry, for verifiers (a file). `parquet`: every SQL table (a directory).
    #[arg(long, default_value = "jsonl")]
    format: String,
    /// Output file (jsonl) or directory (parquet).
    #[arg(long)]
    out: PathBuf,
}

/// Stack of each async worker. SQL is parsed, planned and optimised by recursion over the
/// expression tree: a long expression someone types (`1+1+...+1`, thousands of terms) would
/// overflow tokio's default 2 MiB and abort the process, terminal UI and all.
pub(crate) const WORKER_STACK_BYTES: usize = 64 * 1024 * 1024;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The demo and benchmarks print their own summary; per-envelope warnings would drown it.
    // Client commands print their answer; only trouble belongs on stderr. `serve` logs its life,
    // but not the NATS client's chatter about each connection.
    let default_filter = match cli.command {
        Command::Demo(_) | Command::Bench(_) => "error",
        Command::Serve(_) | Command::Witness(_) => "info,async_nats=warn",
        // The UI owns the terminal: a log line would tear its screen.
        Command::Watch(_) => "off",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        // Colour codes are for a person at a terminal, not for a log file.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .thread_stack_size(WORKER_STACK_BYTES)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            std::process::ExitCode::from(2)
        }
    }
}

/// An error and its causes on one line, each said once: library errors often embed their
/// source's text in their own message, and repeating it reads like a stutter.
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if text.is_empty() || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

async fn run(cli: Cli) -> Result<std::process::ExitCode> {
    let ok = std::process::ExitCode::SUCCESS;
    match cli.command {
        Command::Keys(cmd) => keys(cmd).map(|_| ok),
        Command::Serve(args) => serve(args).await.map(|_| ok),
        Command::Publish(args) => publish(args).await,
        Command::Verify(args) => verify_cmd(args),
        Command::Log(args) => {
            let store = Store::open_reader(&db_dir(&args.data.data))?;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            export::write_log(&store, args.from, args.limit.unwrap_or(u64::MAX), &mut out)?;
            out.flush()?;
            Ok(ok)
        }
        Command::Quarantine(args) if args.counts => {
            let store = Store::open_reader(&db_dir(&args.data.data))?;
            let mut out = std::io::stdout().lock();
            for (code, n) in store.quarantine_counts()? {
                writeln!(out, "{}", serde_json::json!({"code": code, "count": n}))?;
            }
            Ok(ok)
        }
        Command::Quarantine(args) => {
            use std::io::IsTerminal;
            let store = Store::open_reader(&db_dir(&args.data.data))?;
            // What producers sent is shown escaped on a terminal, exact in a pipe or a file.
            let mut out: Box<dyn Write> = if std::io::stdout().is_terminal() {
                Box::new(terminal_text::Shown::new(std::io::stdout().lock()))
            } else {
                Box::new(std::io::stdout().lock())
            };
            for q in store.quarantine()? {
                // A closed pipe (`| head`) ends the listing quietly.
                if writeln!(out, "{}", serde_json::to_string(&q)?).is_err() {
                    break;
                }
            }
            Ok(ok)
        }
        Command::Export(args) if args.format == "parquet" => {
            sql_cmd::export_parquet(&args.data.data, &args.out).await?;
            Ok(ok)
        }
        Command::Export(args) if args.format != "jsonl" => {
            bail!("--format {:?}: expected jsonl or parquet", args.format)
        }
        Command::Sql(args) => sql_cmd::sql(args).await,
        Command::Columnar(cmd) => sql_cmd::columnar(cmd),
        Command::Detect(args) => detect_cmd::detect(args).await,
        Command::Rules(cmd) => detect_cmd::rules(cmd).await,
        Command::Export(args) => {
            let store = Store::open_reader(&db_dir(&args.data.data))?;
            let file = std::fs::File::create(&args.out)
                .with_context(|| format!("creating {}", args.out.display()))?;
            let mut out = std::io::BufWriter::new(file);
            let n = export::write_export(&store, &mut out)?;
            eprintln!("exported {n} entries to {}", args.out.display());
            Ok(ok)
        }
        Command::State(cmd) => state_cmd::run(cmd),
        Command::Findings(args) => findings_cmd::run(args).await,
        Command::Report(args) => report_cmd::run(args).await.map(|()| ok),
        Command::Policy(cmd) => policy_cmd::run(cmd).await,
        Command::Grant(a) => vault_cmd::grant(a).await,
        Command::Token(a) => vault_cmd::token(a).await,
        Command::Approve(a) => vault_cmd::approve(a).await,
        Command::Revoke(a) => vault_cmd::revoke(a).await,
        Command::Introspect(a) => vault_cmd::introspect(a).await,
        Command::Connect(a) => connect_cmd::connect(a).await,
        Command::Disconnect(a) => connect_cmd::disconnect(a).await,
        Command::Vault(cmd) => connect_cmd::vault(cmd),
        Command::Gateway(a) => gateway_cmd::run(a).await,
        Command::Demo(args) => demo::run(args).await.map(|_| ok),
        Command::Watch(args) => watch_cmd::run(args).await,
        Command::Bench(cmd) => bench::run(cmd).await.map(|_| ok),
        Command::Prove(cmd) => proof_cmd::prove(cmd).map(|_| ok),
        Command::CheckProof(args) => proof_cmd::check_proof(args),
        Command::Receipt(args) => proof_cmd::receipt(args).await.map(|_| ok),
        Command::Witness(args) => witness_cmd::run(args).await,
        Command::Evidence(args) => evidence_cmd::make(args).await.map(|_| ok),
        Command::CheckEvidence(args) => evidence_cmd::check(args).await,
    }
}

fn keys(cmd: KeysCommand) -> Result<()> {
    let mut out = std::io::stdout().lock();
    // A closed pipe downstream (`| docket publish` that failed) is an error, not a panic.
    let mut say = |text: String| writeln!(out, "{text}").context("writing to standard output");
    let public = |file: &Path| -> Result<(String, String)> {
        let pk = keyfile::read(file)?.verifying_key();
        Ok((encode_base64(pk.as_bytes()), key_id(pk.as_bytes())))
    };
    match cmd {
        KeysCommand::New { out } => {
            let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
            keyfile::write(&out, &key)?;
            let (pk, id) = public(&out)?;
            say(format!("public_key {pk}"))?;
            say(format!("key_id {id}"))?;
        }
        KeysCommand::Show {
            file,
            public_key,
            key_id,
        } => {
            let (pk, id) = public(&file)?;
            match (public_key, key_id) {
                (true, _) => say(pk)?,
                (_, true) => say(id)?,
                _ => {
                    say(format!("public_key {pk}"))?;
                    say(format!("key_id {id}"))?;
                }
            }
        }
        KeysCommand::Registration { file, name, kinds } => {
            let (pk, id) = public(&file)?;
            let kinds = kinds
                .iter()
                .map(|k| parse_kind(k))
                .collect::<Result<Vec<_>>>()?;
            let event = serde_json::json!({"kind": "key.registered", "key_id": id,
                "public_key": pk, "name": name, "kinds": kinds});
            say(format!("{event}"))?;
        }
        KeysCommand::Agent {
            file,
            agent,
            user,
            name,
        } => {
            let (pk, _) = public(&file)?;
            let name = name.unwrap_or_else(|| agent.clone());
            let event = serde_json::json!({"kind": "agent.registered", "agent": agent,
                "user": user, "name": name, "public_key": pk});
            say(format!("{event}"))?;
        }
    }
    Ok(())
}

/// An event kind by its wire name, or an error listing the kinds there are.
fn parse_kind(text: &str) -> Result<docket_schemas::Kind> {
    docket_schemas::Kind::parse(text).with_context(|| {
        let all: Vec<&str> = docket_schemas::Kind::ALL
            .iter()
            .map(|k| k.as_str())
            .collect();
        format!(
            "unknown event kind {text:?}; the kinds are {}",
            all.join(", ")
        )
    })
}

/// Where RocksDB lives inside a data directory.
pub fn db_dir(data: &Path) -> PathBuf {
    data.join("db")
}

/// Where the checkpoint key file is: the config's (or `--ledger-key`), else beside the database.
pub(crate) fn ledger_key_path(data: &Path, config: &Config) -> PathBuf {
    config
        .ledger_key
        .clone()
        .unwrap_or_else(|| data.join(sql_cmd::LEDGER_KEY_FILE))
}

/// Opens (creating) a ledger in `data`, with its checkpoint key beside the database.
pub fn open_ledger(data: &Path, config: &Config, admin_b64: &str) -> Result<Ledger> {
    std::fs::create_dir_all(data).with_context(|| format!("creating {}", data.display()))?;
    let admin = docket_schemas::decode_public_key(admin_b64).context("admin public key")?;
    docket_schemas::check_producer_key(&admin).context("admin public key")?;
    let key_path = ledger_key_path(data, config);
    let key = if key_path.exists() {
        keyfile::read(&key_path)?
    } else if db_dir(data).join("CURRENT").exists() {
        bail!(
            "{}: the ledger's checkpoint key file is missing; a ledger keeps the key it was \
             created with (give its path with --ledger-key)",
            key_path.display()
        );
    } else {
        let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        keyfile::write(&key_path, &key)?;
        key
    };
    let identity = LedgerIdentity {
        origin: config.origin.clone(),
        admin_public_key: encode_base64(&admin),
        ledger_public_key: encode_base64(key.verifying_key().as_bytes()),
    };
    let store = Store::open(&db_dir(data), &identity)?;
    Ok(Ledger::new(store, key, config.checkpoint_policy())?)
}

async fn serve(args: ServeArgs) -> Result<()> {
    let shutdown = shutdown_signal();
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(o) = args.origin {
        config.origin = o;
        config.origin_named = true;
    }
    if let Some(k) = args.ledger_key {
        config.ledger_key = Some(k);
    }
    if let Some(k) = args.vault_key {
        config.vault_key = Some(k);
    }
    if let Some(d) = args.rules {
        config.detection.rules_dir = Some(d);
    }
    if args.no_detect {
        config.detection.enabled = false;
    }
    if let Some(l) = args.learning {
        config.detection.learning = l;
    }
    let learning_us = docket_query::detect::parse_duration_us(&config.detection.learning)
        .with_context(|| {
            format!(
                "[detection] learning {:?} is not a duration such as 30m, 24h or 7d",
                config.detection.learning
            )
        })?;
    let data = &args.data.data;
    // A ledger records its origin and admin key when it is created; a restart needs no reminder.
    let recorded = if db_dir(data).join("CURRENT").exists() {
        Some(Store::open_reader(&db_dir(data))?.identity()?)
    } else {
        None
    };
    if let (false, Some(r)) = (config.origin_named, &recorded) {
        config.origin = r.origin.clone();
    }
    let admin = match (args.admin_key.or(config.admin_public_key.clone()), recorded) {
        (Some(admin), _) => admin,
        (None, Some(r)) => r.admin_public_key,
        (None, None) => bail!(
            "{} holds no ledger yet, so it needs the admin's public key: pass --admin-key \
             (`docket keys show admin.key --public-key` prints it), set DOCKET_ADMIN_KEY, \
             or set admin_public_key in the config",
            data.display()
        ),
    };
    // Reach NATS before creating anything on disk, so a wrong URL leaves no half-made ledger.
    let settings = NatsSettings {
        url: args.nats.clone(),
        consumer: config.consumer.clone(),
        filter: config.subject_filter.clone(),
        auth: args.nats_auth.auth(),
    };
    let client = docket_ledger::transport::connect_within(
        &args.nats,
        &settings.auth,
        SERVE_CONNECT_PATIENCE,
    )
    .await?;
    let mut source = NatsSource::on(client, &settings).await?;
    let mut ledger = open_ledger(data, &config, &admin)?;
    let chain = ledger.policy();
    if let Some(wanted) = config.policy.wanted(&chain.policy) {
        if let Err((field, why)) = wanted.check() {
            bail!("the config's [policy] {field}: {why} (docs/FORMAT.md, section 12)");
        }
        bail!(
            "{}",
            policy_cmd::mismatch(&chain, &wanted, data, args.config.as_deref())
        );
    }
    let floor = source.ack_floor().await?;
    let applied = ledger.store().last_source_seq()?;
    if floor > applied {
        bail!(
            "the ledger has lost acknowledged data: JetStream's ack floor is stream seq {floor} but the ledger \
             only holds up to stream seq {applied}. Restore {} from backup before serving.",
            data.display()
        );
    }
    let bus = Bus::Nats(source.client.clone());
    let witnesses = witness_keys(&config)?;
    let (alarm_tx, alarm_rx) = tokio::sync::oneshot::channel();
    if !witnesses.is_empty() {
        // The newest checkpoint already signed goes first: a store a witness has seen
        // further, or another history, must not get one more signature.
        let store = ledger.shared_store();
        if let Some(alarm) = witnessing::check_all(&source.client, &store, &witnesses).await? {
            bail!("{alarm}");
        }
        // Then one at the tip, so the witnesses judge all this store holds.
        ledger.checkpoint_if_due(&bus, true).await?;
        if let Some(alarm) = witnessing::check_all(&source.client, &store, &witnesses).await? {
            bail!("{alarm}");
        }
        let client = source.client.clone();
        tokio::spawn(async move {
            if let Err(e) = witnessing::follow(client, store, witnesses, alarm_tx).await {
                tracing::error!(error = %e, "witnessing stopped");
            }
        });
    }
    {
        let (client, store, wanted) = (
            source.client.clone(),
            ledger.shared_store(),
            ledger.checkpoint_wanted(),
        );
        tokio::spawn(async move {
            if let Err(e) = docket_ledger::proofs::serve_proof_requests(client, store, wanted).await
            {
                tracing::error!(error = %e, "proof requests stopped");
            }
        });
    }
    tracing::info!(origin = %config.origin, seq = ledger.tip().seq, nats = %args.nats, "ledger serving");
    if config.vault_key.is_none() && config.connections.key_file.is_some() {
        bail!("[connections] needs the vault: set vault_key or pass --vault-key");
    }
    if let Some(path) = &config.vault_key {
        let key = keyfile::read(path)?;
        let (tx, rx) = tokio::sync::mpsc::channel(docket_ledger::transport::VAULT_INFLIGHT_MAX);
        let now = docket_ledger::clock::now()?;
        // Request ids the vault accepted within the policy's replay window (twice the
        // skew): a restart must not let a captured request through again.
        let window_us = 2 * i64::from(ledger.policy().policy.request_skew_max_s) * 1_000_000;
        let seen = ledger
            .store()
            .remembered_requests(now.as_micros() - window_us)?;
        let desk = docket_ledger::desk::Desk::new(key.clone(), now, seen);
        ledger = ledger.with_vault(desk, rx);
        let client = source.client.clone();
        let introspector = ledger.introspector();
        if let Some(view) = introspector.clone() {
            let sink = docket_ledger::publisher::Sink::Nats(async_nats::jetstream::new(
                source.client.clone(),
            ));
            if let Some(conns) =
                connections::Connections::load(&config.connections, data, key.clone(), view, sink)?
            {
                let client = source.client.clone();
                tokio::spawn(async move {
                    if let Err(e) = connections::serve(conns, client).await {
                        tracing::error!(error = %e, "connection requests stopped");
                    }
                });
                tracing::info!(
                    providers = config.connections.providers.len(),
                    "connections served on {}",
                    docket_schemas::vault::SUBJECT_CONNECTIONS
                );
            }
        }
        let receipts = docket_ledger::transport::Receipts {
            store: ledger.shared_store(),
            wanted: ledger.checkpoint_wanted(),
        };
        tokio::spawn(async move {
            if let Err(e) = docket_ledger::transport::serve_vault_requests(
                client,
                tx,
                introspector,
                Some(receipts),
            )
            .await
            {
                tracing::error!(error = %e, "vault requests stopped");
            }
        });
        tracing::info!(vault_key = %path.display(), "vault serving on docket.vault.>");
    }
    {
        let (client, store, origin) = (
            source.client.clone(),
            ledger.shared_store(),
            config.origin.clone(),
        );
        tokio::spawn(async move {
            if let Err(e) = docket_ledger::fate::serve_fate_requests(client, store, origin).await {
                tracing::error!(error = %e, "fate requests stopped");
            }
        });
    }
    read_service::spawn(source.client.clone(), data.clone())?;
    tracing::info!("reads answered on {}", docket_schemas::vault::SUBJECT_READ);
    let stop_sealing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The checkpoint key also seals the columnar copy, so that SQL can tell edited segments.
    let sealing_key = keyfile::read(&ledger_key_path(data, &config))?;
    let sealer = sql_cmd::spawn_sealer(data.clone(), sealing_key.clone(), stop_sealing.clone());
    let detector = if config.detection.enabled {
        Some(
            detect_cmd::spawn_live(
                data,
                &config.detection,
                learning_us,
                sealing_key,
                &source.client,
                stop_sealing.clone(),
            )
            .0,
        )
    } else {
        None
    };
    // A witness's alarm stops the ledger as a signal would, and is the error `serve` ends with.
    let alarm = std::sync::Arc::new(std::sync::Mutex::new(None));
    let raised = std::sync::Arc::clone(&alarm);
    let halted = ledger.checkpoints_halted();
    let stop = async move {
        tokio::select! {
            _ = shutdown => {}
            Ok(outcome) = alarm_rx => {
                // Not even the clean stop's last checkpoint: this history is in question.
                halted.store(true, std::sync::atomic::Ordering::Relaxed);
                if let Ok(mut a) = raised.lock() {
                    *a = Some(outcome);
                }
            }
        }
    };
    let result = ledger.run(Source::Nats(Box::new(source)), bus, stop).await;
    stop_sealing.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = sealer.join();
    if let Some(d) = detector {
        let _ = d.await;
    }
    result?;
    if let Some(outcome) = alarm.lock().ok().and_then(|mut a| a.take()) {
        bail!("{outcome}");
    }
    tracing::info!(seq = ledger.tip().seq, stats = ?ledger.stats, "ledger stopped cleanly");
    Ok(())
}

/// How long `serve` keeps trying to reach NATS at start (a server started a moment earlier
/// may not listen yet); past it, `serve` fails and says what to check.
const SERVE_CONNECT_PATIENCE: Duration = Duration::from_secs(10);

/// Registers for SIGINT and SIGTERM at once and returns what resolves on either: a signal
/// that arrives while `serve` is still starting is kept for the loop (a clean stop), not
/// left to the default action that would kill the process mid-start.
/// The witnesses the config names, with their keys checked.
fn witness_keys(config: &Config) -> Result<Vec<witnessing::WitnessKey>> {
    config
        .witnesses
        .iter()
        .map(|w| {
            let bytes = docket_schemas::decode_public_key(&w.public_key).with_context(|| {
                format!(
                    "[[witnesses]] {:?}: public_key is not a base64 ed25519 key",
                    w.name
                )
            })?;
            Ok(witnessing::WitnessKey {
                name: w.name.clone(),
                key: ed25519_dalek::VerifyingKey::from_bytes(&bytes)?,
            })
        })
        .collect()
}

pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let registered = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::interrupt()).ok(),
            signal(SignalKind::terminate()).ok(),
        )
    };
    async move {
        #[cfg(unix)]
        if let (Some(mut int), Some(mut term)) = registered {
            tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// One event `publish` sent, and what JetStream said of it.
struct Sent {
    line: usize,
    id: EventId,
    kind: String,
    ack: Option<Result<docket_ledger::publisher::Acked, String>>,
}

async fn publish(args: PublishArgs) -> Result<std::process::ExitCode> {
    let key = keyfile::read(&args.key)?;
    let reader: Box<dyn BufRead> = if args.input == "-" {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        let f =
            std::fs::File::open(&args.input).with_context(|| format!("opening {}", args.input))?;
        Box::new(std::io::BufReader::new(f))
    };
    publish_lines(&args.nats, &args.nats_auth, args.wait, &key, reader.lines()).await
}

/// Signs and publishes unsigned events, one JSON object per line; with `wait`, reports the
/// ledger's verdict on each (`docket publish`, `docket findings triage`).
pub async fn publish_lines(
    nats: &str,
    nats_auth: &NatsAuthArgs,
    wait: Option<u64>,
    key: &ed25519_dalek::SigningKey,
    lines: impl Iterator<Item = std::io::Result<String>>,
) -> Result<std::process::ExitCode> {
    // With --wait the caller has said how long it will wait: a server still starting within
    // that time is no failure. Without it, a wrong URL fails at once.
    let patience = Duration::from_secs(wait.unwrap_or(0));
    let client =
        docket_ledger::transport::connect_within(nats, &nats_auth.auth(), patience).await?;
    let js = async_nats::jetstream::new(client.clone());
    // A producer with per-identity permissions may not manage streams: the ledger made it.
    if let Err(e) = docket_ledger::transport::ensure_stream(&js).await {
        tracing::warn!("could not check the events stream ({e}); publishing anyway");
    }
    let mut publisher = Publisher::new(Sink::Nats(js));
    let mut invalid = 0u64;
    let mut sent: Vec<Sent> = Vec::new();
    let mut acks = Vec::new();
    let mut report = |index: u64, r: Result<docket_ledger::publisher::Acked, String>| {
        if let Err(e) = &r {
            eprintln!("publish failed: {e}");
        }
        acks.push((index, r));
    };
    for (n, line) in lines.enumerate() {
        let line = line.context("reading input")?;
        if line.trim().is_empty() {
            continue;
        }
        let now = docket_ledger::clock::now()?;
        let id = EventId(*uuid::Uuid::now_v7().as_bytes());
        match prepare(&line, key, now, id) {
            Ok((subject, envelope, id)) => {
                let kind = subject
                    .strip_prefix(docket_ledger::transport::EVENT_SUBJECT_PREFIX)
                    .unwrap_or(&subject)
                    .to_string();
                publisher
                    .send(subject, envelope, Some(id), &mut report)
                    .await?;
                sent.push(Sent {
                    line: n + 1,
                    id,
                    kind,
                    ack: None,
                });
            }
            Err(e) => {
                invalid += 1;
                eprintln!("line {}: {e}", n + 1);
            }
        }
    }
    publisher.flush(&mut report).await;
    for (index, r) in acks {
        if let Some(s) = sent.get_mut(index as usize) {
            s.ack = Some(r);
        }
    }
    let st = &publisher.stats;
    let not_published = st.failed + invalid;
    if wait.is_none() {
        // JetStream's ack is not the ledger's verdict: say so, every time.
        println!(
            "published {}: JetStream stored {} ({} already within its duplicate window), failed {}, invalid {invalid}",
            st.published, st.acked, st.duplicates, st.failed
        );
        println!(
            "stored means queued for the ledger, not accepted by it: the ledger may still quarantine an event \
             (`docket publish --wait SECONDS` reports each event's fate)"
        );
        if not_published > 0 {
            bail!("{not_published} events were not published");
        }
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let wait = Duration::from_secs(wait.unwrap_or(0));
    let fates = wait_for_fates(&client, &sent, wait).await?;
    let (mut appended, mut duplicates, mut quarantined, mut pending) = (0u64, 0u64, 0u64, 0u64);
    let mut out = std::io::stdout().lock();
    for (s, fate) in sent.iter().zip(&fates) {
        use docket_schemas::fate::Fate;
        let dup = matches!(&s.ack, Some(Ok(a)) if a.duplicate);
        let text = match fate {
            None => continue,
            Some(Fate::Appended { seq, .. }) if dup => {
                duplicates += 1;
                format!("duplicate: already in the chain at seq {seq}")
            }
            Some(Fate::Appended { seq, hash }) => {
                appended += 1;
                format!("appended at seq {seq} (entry hash {hash})")
            }
            // JetStream dropped this message for a stored one with its id (`Nats-Msg-Id`);
            // the verdict shown is that other message's, so say whose it is.
            Some(Fate::Quarantined { code, reason }) if dup => {
                quarantined += 1;
                let seq = match &s.ack {
                    Some(Ok(a)) => a.stream_seq,
                    _ => 0,
                };
                format!(
                    "NOT STORED: JetStream took it for a duplicate of stream seq {seq}, a message with the \
                     same id that the ledger quarantined ({code}: {reason}); publish it with a new id"
                )
            }
            Some(Fate::Quarantined { code, reason }) => {
                quarantined += 1;
                format!("QUARANTINED {code}: {reason}")
            }
            Some(Fate::Pending) => {
                pending += 1;
                format!(
                    "pending: the ledger has not processed it after {} s",
                    wait.as_secs()
                )
            }
        };
        let _ = writeln!(out, "line {} {} {}: {text}", s.line, s.kind, s.id);
    }
    let _ = writeln!(
        out,
        "appended {appended}, duplicates {duplicates}, quarantined {quarantined}, pending {pending}, \
         failed {}, invalid {invalid}",
        st.failed
    );
    // A verdict, like `verify`'s "not intact": exit 1, as documented; 2 stays for errors.
    if not_published + quarantined + pending > 0 {
        eprintln!(
            "error: {} of {} events did not reach the chain",
            not_published + quarantined + pending,
            sent.len() as u64 + invalid
        );
        return Ok(std::process::ExitCode::from(1));
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// Asks the ledger what became of each acknowledged event until none is pending or `wait` ends.
/// `None` for an event JetStream never acknowledged.
async fn wait_for_fates(
    client: &async_nats::Client,
    sent: &[Sent],
    wait: Duration,
) -> Result<Vec<Option<docket_schemas::fate::Fate>>> {
    use docket_schemas::fate::{
        FATE_QUERIES_MAX, FATE_VERSION, Fate, FateQuery, FateReply, FateRequest, SUBJECT_FATE,
    };
    let deadline = tokio::time::Instant::now() + wait;
    let mut fates: Vec<Option<Fate>> = sent
        .iter()
        .map(|s| match &s.ack {
            Some(Ok(_)) => Some(Fate::Pending),
            _ => None,
        })
        .collect();
    let mut answered_once = false;
    loop {
        let open: Vec<usize> = (0..sent.len())
            .filter(|&i| fates[i] == Some(Fate::Pending))
            .collect();
        if open.is_empty() {
            break;
        }
        for chunk in open.chunks(FATE_QUERIES_MAX) {
            let events = chunk
                .iter()
                .filter_map(|&i| match &sent[i].ack {
                    Some(Ok(a)) => Some(FateQuery {
                        id: sent[i].id,
                        stream_seq: a.stream_seq,
                    }),
                    _ => None,
                })
                .collect();
            let body = serde_json::to_vec(&FateRequest {
                v: FATE_VERSION,
                events,
            })?;
            let reply = tokio::time::timeout(
                docket_ledger::transport::CONNECT_TIMEOUT,
                client.request(SUBJECT_FATE, body.into()),
            )
            .await;
            // No ledger answering yet (not started, or restarting) is the same as "pending".
            let Ok(Ok(reply)) = reply else { continue };
            let reply: FateReply = serde_json::from_slice(&reply.payload)
                .context("the ledger's fate reply does not parse")?;
            if let Some(e) = reply.error {
                bail!("the ledger refused the fate request: {e}");
            }
            if reply.fates.len() != chunk.len() {
                bail!(
                    "the ledger answered {} fates for {} events",
                    reply.fates.len(),
                    chunk.len()
                );
            }
            answered_once = true;
            for (&i, fate) in chunk.iter().zip(reply.fates) {
                fates[i] = Some(fate);
            }
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if !answered_once && fates.iter().any(|f| f.is_some()) {
        eprintln!(
            "no ledger answered on {SUBJECT_FATE} within {} s: is `docket serve` running against this NATS server?",
            wait.as_secs()
        );
    }
    Ok(fates)
}

fn verify_cmd(args: VerifyArgs) -> Result<std::process::ExitCode> {
    let store = Store::open_reader(&db_dir(&args.data.data))?;
    let parse_key = |b64: &Option<String>| -> Result<Option<ed25519_dalek::VerifyingKey>> {
        b64.as_deref()
            .map(|k| {
                let bytes = docket_schemas::decode_public_key(k)?;
                Ok(ed25519_dalek::VerifyingKey::from_bytes(&bytes)?)
            })
            .transpose()
    };
    let trust = verify::Trust {
        admin: parse_key(&args.admin_key)?,
        ledger: parse_key(&args.ledger_key)?,
        witnesses: proof_cmd::witness_args(&args.witnesses)?,
    };
    let bar = if std::io::stderr().is_terminal() && !args.json {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} entries ({per_sec}, {eta})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(bar)
    } else {
        None
    };
    let mut progress = |done: u64, total: u64| {
        if let Some(b) = &bar {
            b.set_length(total.max(done));
            b.set_position(done);
        }
    };
    let report = match &args.since_checkpoint {
        None => verify::verify(&store, &trust, &mut progress)?,
        Some(path) => {
            let note = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            verify::verify_since(&store, &trust, &note, &mut progress)?
        }
    };
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if report.intact() {
        println!(
            "intact: {} entries, head {}, root {}, {}/{} checkpoints verified, {:.0} events/s",
            report.entries,
            report.head,
            report.tree_root,
            report.checkpoints_verified,
            report.checkpoints,
            report.events_per_s
        );
        if let Some(size) = report.since_checkpoint {
            println!(
                "  from the trusted checkpoint of {size} entries: those hashed to its root, the {} after it fully checked",
                report.entries - size
            );
        }
        for w in &report.witnessed {
            println!(
                "  witness {} cosigned the checkpoint of {} entries",
                w.witness, w.size
            );
        }
    } else {
        println!(
            "NOT INTACT: {} problem(s); first bad seq {}",
            report.problems_total,
            report
                .first_bad_seq
                .map(|s| s.to_string())
                .unwrap_or_else(|| "(none: ledger-wide)".into())
        );
        for p in &report.problems {
            match p.seq {
                Some(seq) => println!("  seq {seq}: {}", p.what),
                None => println!("  {}", p.what),
            }
        }
    }
    Ok(if report.intact() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(1)
    })
}
