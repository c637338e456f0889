//! The `docket` command line: thin glue over the ledger library.

mod bench;
mod bench_sql;
mod demo;
mod sql_cmd;
mod state_cmd;
mod vault_cmd;
mod vault_scene;

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
use docket_ledger::{export, keyfile, verify};
use docket_schemas::{EventId, Timestamp, encode_base64, key_id};

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
    /// Print quarantined (rejected) envelopes as JSON lines.
    Quarantine(DataArgs),
    /// Export the chain for an independent verifier (JSON lines), or every SQL table as Parquet.
    Export(ExportArgs),
    /// Ask the ledger questions in SQL (read-only): one query, or an interactive shell.
    Sql(sql_cmd::SqlArgs),
    /// The columnar copy of the chain that SQL reads: seal, check against the chain, rebuild.
    #[command(subcommand)]
    Columnar(sql_cmd::ColumnarCommand),
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
    /// Policy violations found while deriving the state.
    Findings(state_cmd::FindingsArgs),
    /// Run the whole pipeline on a synthetic workload, then verify it.
    Demo(demo::DemoArgs),
    /// Measure performance and print figures.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a keypair file; print its public key and key id.
    New {
        /// Where to write the key (must not exist).
        #[arg(long)]
        out: PathBuf,
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
}

#[derive(Args)]
struct PublishArgs {
    #[arg(long, env = "DOCKET_NATS", default_value = "nats://127.0.0.1:4222")]
    nats: String,
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
}

#[derive(Args)]
struct LogArgs {
    #[command(flatten)]
    data: DataArgs,
    /// First seq to print.
    #[arg(long, default_value_t = 1)]
    from: u64,
    /// Most entries to print.
    #[arg(long, default_value_t = u64::MAX)]
    limit: u64,
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

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The demo and benchmarks print their own summary; per-envelope warnings would drown it.
    let default_filter = match cli.command {
        Command::Demo(_) | Command::Bench(_) => "error",
        _ => "info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
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
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> Result<std::process::ExitCode> {
    let ok = std::process::ExitCode::SUCCESS;
    match cli.command {
        Command::Keys(KeysCommand::New { out }) => {
            let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
            keyfile::write(&out, &key)?;
            let pk = key.verifying_key();
            println!("public_key {}", encode_base64(pk.as_bytes()));
            println!("key_id {}", key_id(pk.as_bytes()));
            Ok(ok)
        }
        Command::Serve(args) => serve(args).await.map(|_| ok),
        Command::Publish(args) => publish(args).await.map(|_| ok),
        Command::Verify(args) => verify_cmd(args),
        Command::Log(args) => {
            let store = Store::open_reader(&db_dir(&args.data.data))?;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            export::write_log(&store, args.from, args.limit, &mut out)?;
            out.flush()?;
            Ok(ok)
        }
        Command::Quarantine(args) => {
            let store = Store::open_reader(&db_dir(&args.data))?;
            let mut out = std::io::stdout().lock();
            for q in store.quarantine()? {
                // A closed pipe (`| head`) ends the listing quietly.
                if writeln!(out, "{q}").is_err() {
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
        Command::Findings(args) => state_cmd::findings(args),
        Command::Grant(a) => vault_cmd::grant(a).await,
        Command::Token(a) => vault_cmd::token(a).await,
        Command::Approve(a) => vault_cmd::approve(a).await,
        Command::Revoke(a) => vault_cmd::revoke(a).await,
        Command::Introspect(a) => vault_cmd::introspect(a).await,
        Command::Demo(args) => demo::run(args).await.map(|_| ok),
        Command::Bench(cmd) => bench::run(cmd).await.map(|_| ok),
    }
}

/// Where RocksDB lives inside a data directory.
pub fn db_dir(data: &Path) -> PathBuf {
    data.join("db")
}

/// Opens (creating) a ledger in `data`, with its checkpoint key beside the database.
pub fn open_ledger(data: &Path, config: &Config, admin_b64: &str) -> Result<Ledger> {
    std::fs::create_dir_all(data).with_context(|| format!("creating {}", data.display()))?;
    let admin = docket_schemas::decode_public_key(admin_b64).context("admin public key")?;
    docket_schemas::check_producer_key(&admin).context("admin public key")?;
    let key_path = config
        .ledger_key
        .clone()
        .unwrap_or_else(|| data.join("ledger.key"));
    let key = if key_path.exists() {
        keyfile::read(&key_path)?
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
    Ok(Ledger::new(store, key, config.checkpoint_policy())?.with_rules(config.rules()))
}

async fn serve(args: ServeArgs) -> Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(o) = args.origin {
        config.origin = o;
    }
    let admin = args
        .admin_key
        .or(config.admin_public_key.clone())
        .context("no admin public key: pass --admin-key, set DOCKET_ADMIN_KEY, or admin_public_key in the config")?;
    if let Some(k) = args.vault_key {
        config.vault_key = Some(k);
    }
    let mut ledger = open_ledger(&args.data.data, &config, &admin)?;
    let settings = NatsSettings {
        url: args.nats.clone(),
        consumer: config.consumer.clone(),
        filter: config.subject_filter.clone(),
        deliver_new: false,
    };
    let mut source = NatsSource::connect(&settings)
        .await
        .with_context(|| format!("connecting to {}", args.nats))?;
    let floor = source.ack_floor().await?;
    let applied = ledger.store().last_source_seq()?;
    if floor > applied {
        bail!(
            "the ledger has lost acknowledged data: JetStream's ack floor is stream seq {floor} but the ledger \
             only holds up to stream seq {applied}. Restore {} from backup before serving.",
            args.data.data.display()
        );
    }
    tracing::info!(origin = %config.origin, seq = ledger.tip().seq, nats = %args.nats, "ledger serving");
    let bus = Bus::Nats(source.client.clone());
    if let Some(path) = &config.vault_key {
        let key = keyfile::read(path)?;
        let (tx, rx) = tokio::sync::mpsc::channel(docket_ledger::transport::VAULT_INFLIGHT_MAX);
        ledger = ledger.with_vault(docket_ledger::ingest::VaultDesk::new(key, rx));
        let client = source.client.clone();
        let introspector = ledger.introspector();
        tokio::spawn(async move {
            if let Err(e) =
                docket_ledger::transport::serve_vault_requests(client, tx, introspector).await
            {
                tracing::error!(error = %e, "vault requests stopped");
            }
        });
        tracing::info!(vault_key = %path.display(), "vault serving on docket.vault.>");
    }
    let stop_sealing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sealer = sql_cmd::spawn_sealer(args.data.data.clone(), stop_sealing.clone());
    let result = ledger
        .run(Source::Nats(Box::new(source)), bus, shutdown_signal())
        .await;
    stop_sealing.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = sealer.join();
    result?;
    tracing::info!(seq = ledger.tip().seq, stats = ?ledger.stats, "ledger stopped cleanly");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn publish(args: PublishArgs) -> Result<()> {
    let key = keyfile::read(&args.key)?;
    let reader: Box<dyn BufRead> = if args.input == "-" {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        let f =
            std::fs::File::open(&args.input).with_context(|| format!("opening {}", args.input))?;
        Box::new(std::io::BufReader::new(f))
    };
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(&args.nats)
        .await
        .with_context(|| format!("connecting to {}", args.nats))?;
    let js = async_nats::jetstream::new(client);
    docket_ledger::transport::ensure_stream(&js).await?;
    let mut publisher = Publisher::new(Sink::Nats(js));
    let mut invalid = 0u64;
    let mut report = |_: u64, r: Result<u64, String>| {
        if let Err(e) = r {
            eprintln!("publish failed: {e}");
        }
    };
    for (n, line) in reader.lines().enumerate() {
        let line = line.context("reading input")?;
        if line.trim().is_empty() {
            continue;
        }
        let now = Timestamp::from_micros(docket_ledger::ingest::now_us())
            .unwrap_or(Timestamp::UNIX_EPOCH);
        let id = EventId(*uuid::Uuid::now_v7().as_bytes());
        match prepare(&line, &key, now, id) {
            Ok((subject, envelope, id)) => {
                publisher
                    .send(subject, envelope, Some(id), &mut report)
                    .await?;
            }
            Err(e) => {
                invalid += 1;
                eprintln!("line {}: {e}", n + 1);
            }
        }
    }
    publisher.flush(&mut report).await;
    let s = &publisher.stats;
    println!(
        "published {} acked {} duplicates {} failed {} invalid {invalid}",
        s.published, s.acked, s.duplicates, s.failed
    );
    if s.failed > 0 || invalid > 0 {
        bail!("{} events were not published", s.failed + invalid);
    }
    Ok(())
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
    let report = verify::verify(&store, &trust, &mut progress)?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if report.intact() {
        println!(
            "intact: {} entries, head {}, {}/{} checkpoints verified, {:.0} events/s",
            report.entries,
            report.head,
            report.checkpoints_verified,
            report.checkpoints,
            report.events_per_s
        );
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
