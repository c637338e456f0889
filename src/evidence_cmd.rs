//! `docket evidence` and `docket check-evidence`: an auditor's answer bundled with its
//! proofs, and its offline check (the rules are in `docket_query::evidence`).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use docket_query::evidence;
use docket_query::session::SessionOptions;
use docket_schemas::proof::{EvidenceBundle, WitnessPublicKey};

/// The bundle's file inside its directory.
pub const BUNDLE_FILE: &str = "evidence.json";

#[derive(Args)]
pub struct EvidenceArgs {
    #[command(flatten)]
    pub data: crate::DataArgs,
    /// The query; its answer must have a `seq` column (each row's entry).
    #[arg(long)]
    pub sql: String,
    /// Directory to write the bundle into (created; must not hold a bundle already).
    #[arg(long)]
    pub out: PathBuf,
    /// A witness whose cosignature the checkpoint carries, to list in the bundle: NAME=KEY.
    #[arg(long = "witness", value_name = "NAME=KEY")]
    pub witnesses: Vec<String>,
}

#[derive(Args)]
pub struct CheckEvidenceArgs {
    /// The bundle's directory (or its evidence.json).
    pub bundle: PathBuf,
    /// The ledger's public key (base64) from your own records; without it the bundle's own
    /// key is used, which proves the bundle is consistent but not whose it is.
    #[arg(long)]
    pub ledger_key: Option<String>,
    /// Demand this witness's cosignature on the bundle's checkpoint: NAME=PUBLIC_KEY.
    #[arg(long = "witness", value_name = "NAME=KEY")]
    pub witnesses: Vec<String>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn make(args: EvidenceArgs) -> Result<()> {
    let witnesses = crate::proof_cmd::witness_args(&args.witnesses)?
        .into_iter()
        .map(|(name, key)| WitnessPublicKey {
            name,
            public_key: docket_schemas::encode_base64(key.as_bytes()),
        })
        .collect();
    let file = args.out.join(BUNDLE_FILE);
    if file.exists() {
        bail!(
            "{} already holds a bundle; choose another --out",
            args.out.display()
        );
    }
    let bundle = evidence::make(
        &args.data.data,
        &args.sql,
        witnesses,
        SessionOptions::default(),
    )
    .await?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    std::fs::write(&file, serde_json::to_vec_pretty(&bundle)?)
        .with_context(|| format!("writing {}", file.display()))?;
    println!(
        "wrote {}: {} rows, {} entries with inclusion proofs, checkpoint of {} entries",
        file.display(),
        bundle.rows.len(),
        bundle.entries.len(),
        docket_schemas::Checkpoint::parse_unverified(&bundle.checkpoint)
            .map(|c| c.size)
            .unwrap_or(0)
    );
    Ok(())
}

pub async fn check(args: CheckEvidenceArgs) -> Result<std::process::ExitCode> {
    let file = if args.bundle.is_dir() {
        args.bundle.join(BUNDLE_FILE)
    } else {
        args.bundle.clone()
    };
    let text = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
    docket_schemas::strict_json::check(&text)
        .with_context(|| format!("{} is not plain JSON", file.display()))?;
    let bundle: EvidenceBundle = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not an evidence bundle", file.display()))?;
    let trusted = args
        .ledger_key
        .as_deref()
        .map(|k| crate::proof_cmd::parse_key(k, "--ledger-key"))
        .transpose()?;
    let demanded = crate::proof_cmd::witness_args(&args.witnesses)?;
    // The bundle's SQL is someone else's: the same hard limits as `docket sql`'s.
    let _watch = crate::query_guard::Watch::arm(
        evidence::RERUN_TIMEOUT,
        evidence::RERUN_MEMORY_BYTES as u64,
    );
    match evidence::check(&bundle, trusted.as_ref(), &demanded).await {
        Ok(c) => {
            if args.json {
                println!("{}", serde_json::to_string_pretty(&c)?);
            } else {
                println!(
                    "holds: {} rows follow from {} entries, each proven in the checkpoint of {} entries of {}{}{}",
                    c.rows,
                    c.entries,
                    c.checkpoint_size,
                    c.origin,
                    if c.witnesses.is_empty() {
                        String::new()
                    } else {
                        format!(", cosigned by {}", c.witnesses.join(", "))
                    },
                    if c.key_pinned {
                        ""
                    } else {
                        " (signed by the key the bundle names: pass --ledger-key to pin it)"
                    }
                );
            }
            Ok(std::process::ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("REFUSED: {e}");
            Ok(std::process::ExitCode::from(1))
        }
    }
}
