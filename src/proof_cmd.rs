//! `docket prove`, `docket check-proof` and `docket receipt`: proofs from the data
//! directory or a live ledger, and their offline check (docs/FORMAT.md §11).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use docket_ledger::proof::{check_consistency, check_inclusion};
use docket_ledger::proofs;
use docket_ledger::store::Store;
use docket_schemas::checkpoint::Checkpoint;
use docket_schemas::proof::{
    CONSISTENCY_FORMAT, ConsistencyProof, INCLUSION_FORMAT, InclusionProof, ProofReply,
    ProofRequest, RECEIPT_WAIT_MS_MAX, SUBJECT_PROOF_INCLUSION,
};
use ed25519_dalek::VerifyingKey;

#[derive(Subcommand)]
pub enum ProveCommand {
    /// Prove that entry SEQ is in the log: the entry, its audit path, and the checkpoint.
    Inclusion {
        #[command(flatten)]
        data: crate::DataArgs,
        /// The entry to prove.
        #[arg(long)]
        seq: u64,
        /// The checkpoint size to prove against (default: the smallest that covers SEQ).
        #[arg(long)]
        size: Option<u64>,
        /// Leave the entry out: prove only its hash (for a reader who may not see it).
        #[arg(long)]
        hash_only: bool,
    },
    /// Prove that the log of OLD entries is a prefix of the log of NEW entries.
    Consistency {
        #[command(flatten)]
        data: crate::DataArgs,
        /// The older size (any size; compare its root with a checkpoint you trust).
        #[arg(long)]
        from: u64,
        /// The newer size: that of a checkpoint the ledger signed.
        #[arg(long)]
        to: u64,
    },
}

#[derive(Args)]
pub struct CheckProofArgs {
    /// The proof (JSON from `docket prove`, `docket receipt` or `docket.proofs.*`).
    pub file: PathBuf,
    /// The ledger's public key (base64), from your own records: the one trust anchor.
    #[arg(long)]
    pub ledger_key: String,
    /// The log's origin (default: the proof's own, which the key's signature must then match).
    #[arg(long)]
    pub origin: Option<String>,
    /// A checkpoint you already trust (a file holding the note): the proof must agree with it.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Demand this witness's cosignature on the proof's checkpoint: NAME=PUBLIC_KEY (base64).
    #[arg(long = "witness", value_name = "NAME=KEY")]
    pub witnesses: Vec<String>,
}

#[derive(Args)]
pub struct ReceiptArgs {
    /// The entry's seq (a vault answer's `receipt.seq`).
    #[arg(long, required_unless_present = "event", conflicts_with = "event")]
    pub seq: Option<u64>,
    /// The entry's event id (a gateway answer's `docket-record` header).
    #[arg(long)]
    pub event: Option<String>,
    /// Wait up to this long for a checkpoint that covers it, in milliseconds (at most 30000).
    #[arg(long, default_value_t = 15_000)]
    pub wait_ms: u64,
    #[arg(long, env = "DOCKET_NATS", default_value = "nats://127.0.0.1:4222")]
    pub nats: String,
    #[command(flatten)]
    pub nats_auth: crate::NatsAuthArgs,
}

pub fn prove(cmd: ProveCommand) -> Result<()> {
    let out = match cmd {
        ProveCommand::Inclusion {
            data,
            seq,
            size,
            hash_only,
        } => {
            let store = Store::open_reader(&crate::db_dir(&data.data))?;
            serde_json::to_string_pretty(&proofs::inclusion(&store, seq, size, !hash_only)?)?
        }
        ProveCommand::Consistency { data, from, to } => {
            let store = Store::open_reader(&crate::db_dir(&data.data))?;
            serde_json::to_string_pretty(&proofs::consistency(&store, from, to)?)?
        }
    };
    println!("{out}");
    Ok(())
}

/// Parses `NAME=KEY` witness arguments.
pub fn witness_args(specs: &[String]) -> Result<Vec<(String, VerifyingKey)>> {
    specs
        .iter()
        .map(|spec| {
            let (name, b64) = spec
                .split_once('=')
                .with_context(|| format!("--witness {spec:?} is not NAME=PUBLIC_KEY"))?;
            let bytes = docket_schemas::decode_public_key(b64)
                .with_context(|| format!("--witness {name}: not a base64 ed25519 key"))?;
            Ok((name.to_string(), VerifyingKey::from_bytes(&bytes)?))
        })
        .collect()
}

pub fn parse_key(b64: &str, what: &str) -> Result<VerifyingKey> {
    let bytes = docket_schemas::decode_public_key(b64)
        .with_context(|| format!("{what} is not a base64 ed25519 public key"))?;
    Ok(VerifyingKey::from_bytes(&bytes)?)
}

pub fn check_proof(args: CheckProofArgs) -> Result<std::process::ExitCode> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let key = parse_key(&args.ledger_key, "--ledger-key")?;
    let witnesses = witness_args(&args.witnesses)?;
    // The same plain-JSON gate as every signed document: one meaning for every reader.
    docket_schemas::strict_json::check(text.as_bytes())
        .with_context(|| format!("{} is not plain JSON", args.file.display()))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not JSON", args.file.display()))?;
    let format = value.get("format").and_then(|f| f.as_str()).unwrap_or("");
    let trusted = match &args.checkpoint {
        Some(p) => {
            Some(std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)
        }
        None => None,
    };
    let result = match format {
        INCLUSION_FORMAT => {
            let p: InclusionProof = serde_json::from_value(value)?;
            let origin = args.origin.clone().unwrap_or_else(|| p.origin.clone());
            check_inclusion(&p, &origin, &key)
                .map_err(anyhow::Error::from)
                .and_then(|cp| {
                    demand_witnesses(&p.checkpoint, &witnesses)?;
                    if let Some(t) = &trusted {
                        agree_with_trusted(t, &origin, &key, cp.size, cp.root)?;
                    }
                    Ok(format!(
                        "included: entry {} is leaf {} of the tree of {} entries signed by the ledger's key{}",
                        p.seq,
                        p.seq - 1,
                        cp.size,
                        if p.entry.is_some() {
                            ", and its contents hash to the proven entry hash"
                        } else {
                            " (the entry's hash only: no contents given)"
                        }
                    ))
                })
        }
        CONSISTENCY_FORMAT => {
            let p: ConsistencyProof = serde_json::from_value(value)?;
            let origin = args.origin.clone().unwrap_or_else(|| p.origin.clone());
            check_consistency(&p, &origin, &key)
                .map_err(anyhow::Error::from)
                .and_then(|()| {
                    if let Some(new) = &p.new_checkpoint {
                        demand_witnesses(new, &witnesses)?;
                    } else if !witnesses.is_empty() {
                        bail!("the proof carries no checkpoint of the new size to find cosignatures on");
                    }
                    if let Some(t) = &trusted {
                        let old = docket_ledger::chain::parse_hash(&p.old_root)
                            .context("old_root is not a hash")?;
                        agree_with_trusted(t, &origin, &key, p.old_size, old)?;
                    }
                    let signed = match (&p.old_checkpoint, &p.new_checkpoint) {
                        (Some(_), Some(_)) => "both roots signed by the ledger's key",
                        (None, Some(_)) => "the new root signed by the ledger's key; the old root as stated",
                        (Some(_), None) => "the old root signed by the ledger's key; the new root as stated",
                        (None, None) => "neither root carries a checkpoint: compare them with ones you trust",
                    };
                    Ok(format!(
                        "consistent: the log of {} entries is a prefix of the log of {} ({signed})",
                        p.old_size, p.new_size
                    ))
                })
        }
        other => Err(anyhow::anyhow!(
            "{} is not a Docket proof (format {other:?}; expected {INCLUSION_FORMAT} or {CONSISTENCY_FORMAT})",
            args.file.display()
        )),
    };
    match result {
        Ok(msg) => {
            println!("{msg}");
            Ok(std::process::ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("REFUSED: {e:#}");
            Ok(std::process::ExitCode::from(1))
        }
    }
}

fn demand_witnesses(note: &str, witnesses: &[(String, VerifyingKey)]) -> Result<()> {
    for (name, key) in witnesses {
        Checkpoint::verify_cosignature(note, name, key)?;
    }
    Ok(())
}

/// A proof about size `size` with root `root` against a checkpoint the checker trusts: the
/// same size must have the same root; any other size needs a consistency proof instead.
fn agree_with_trusted(
    note: &str,
    origin: &str,
    key: &VerifyingKey,
    size: u64,
    root: [u8; 32],
) -> Result<()> {
    let t = Checkpoint::verify(note, origin, key).context("the trusted checkpoint")?;
    if t.size != size {
        bail!(
            "the trusted checkpoint is of size {}, the proof's of {size}: check a consistency proof between them",
            t.size
        );
    }
    if t.root != root {
        bail!("the trusted checkpoint of size {size} names another root: the log forked");
    }
    Ok(())
}

pub async fn receipt(args: ReceiptArgs) -> Result<()> {
    if args.wait_ms > RECEIPT_WAIT_MS_MAX {
        bail!("--wait-ms is at most {RECEIPT_WAIT_MS_MAX}");
    }
    let client = docket_ledger::transport::connect(&args.nats, &args.nats_auth.auth()).await?;
    let req = ProofRequest {
        seq: args.seq,
        event_id: args.event.clone(),
        wait_ms: args.wait_ms,
        old_size: None,
        new_size: None,
    };
    let answer = tokio::time::timeout(
        Duration::from_millis(args.wait_ms) + Duration::from_secs(5),
        client.request(SUBJECT_PROOF_INCLUSION, serde_json::to_vec(&req)?.into()),
    )
    .await
    .context("the ledger did not answer in time")?
    .context("no ledger answers docket.proofs.inclusion (is `docket serve` running?)")?;
    let reply: ProofReply = serde_json::from_slice(&answer.payload)?;
    match (reply.inclusion, reply.error) {
        (Some(p), _) => println!("{}", serde_json::to_string_pretty(&p)?),
        (None, Some(e)) => bail!("the ledger refused: {e}"),
        (None, None) => bail!("the ledger's answer holds no proof"),
    }
    Ok(())
}
