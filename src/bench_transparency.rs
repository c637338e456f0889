//! `docket bench transparency`: what the Merkle tree costs at ingest, how fast proofs are
//! made and checked, and full and incremental verify against the batch-verify ceiling,
//! all measured in one run on the same entries.

use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use docket_ledger::admission::{BATCH_EVENTS_MAX, ChainTip, Incoming, admit, verify_all};
use docket_ledger::clock::now_us;
use docket_ledger::config::Config;
use docket_ledger::merkle::{CompactRange, leaf_hash, verify_consistency, verify_inclusion};
use docket_ledger::proof::check_inclusion;
use docket_ledger::registry::Registry;
use docket_ledger::store::{Store, decode_record};
use docket_ledger::{proofs, verify};
use docket_schemas::{Envelope, Event, encode_base64};

use crate::measure::{incoming, peak_rss_mib};

#[derive(Args)]
pub struct TransparencyBenchArgs {
    /// Events to ingest (each run gets the same ones).
    #[arg(long, default_value_t = 200_000)]
    events: usize,
    /// Proofs to make and check of each kind.
    #[arg(long, default_value_t = 20_000)]
    proofs: usize,
}

/// A small deterministic generator, so runs pick the same entries.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

pub async fn run(args: TransparencyBenchArgs) -> Result<()> {
    let items: Vec<Incoming> = incoming(crate::bench::workload(args.events, 1)?, &mut 0);
    let admin = docket_testkit::workload::Roles::from_seed(1)
        .admin
        .verifying_key();
    let admin_b64 = encode_base64(admin.as_bytes());
    println!(
        "{} events; admission + dedup lookup + one synced RocksDB write per batch of {BATCH_EVENTS_MAX}",
        items.len()
    );

    // 1. The same commit path with and without the tree, alternated, best of two each.
    let mut without = 0f64;
    let mut with = 0f64;
    for round in 0..2 {
        for tree in [false, true] {
            let temp = tempfile::tempdir()?;
            let ledger = crate::open_ledger(temp.path(), &Config::default(), &admin_b64)?;
            let store = ledger.store();
            let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key();
            let mut tip = ChainTip {
                seq: 0,
                head: [0; 32],
                registry: Registry::new(&admin, &key),
                source_seq: 0,
            };
            let mut range = CompactRange::default();
            let t = Instant::now();
            for batch in items.chunks(BATCH_EVENTS_MAX) {
                let mut plan = admit(&mut tip, batch, now_us()?, |ids| store.stored_payloads(ids))?;
                if tree {
                    plan.grow_tree(&mut range);
                }
                store.commit(&plan, &tip, None)?;
            }
            let rate = items.len() as f64 / t.elapsed().as_secs_f64();
            let best = if tree { &mut with } else { &mut without };
            *best = best.max(rate);
            println!(
                "  round {}: {} the Merkle tree: {rate:.0} events/s",
                round + 1,
                if tree { "with   " } else { "without" }
            );
        }
    }
    println!(
        "ingest with the tree: {with:.0} events/s = {:.1}% of {without:.0} without (best of two each); \
         {:.2} us per entry",
        100.0 * with / without,
        1e6 / with - 1e6 / without
    );
    let mut range = CompactRange::default();
    let hashes: Vec<[u8; 32]> = (0..1_000_000u64)
        .map(|i| *blake3::hash(&i.to_be_bytes()).as_bytes())
        .collect();
    let t = Instant::now();
    let mut nodes = 0usize;
    for h in &hashes {
        range.push(leaf_hash(h), |_, _| nodes += 1);
    }
    let per = t.elapsed().as_secs_f64() * 1e9 / hashes.len() as f64;
    println!(
        "the tree alone, in memory: {per:.0} ns per leaf ({:.2} nodes written per leaf)",
        nodes as f64 / hashes.len() as f64
    );

    // 2. A real ledger (the ingest loop's commit: projection and tree), checkpointed every tenth.
    let temp = tempfile::tempdir()?;
    let mut ledger = crate::open_ledger(temp.path(), &Config::default(), &admin_b64)?;
    let (bus_tx, _bus_rx) = tokio::sync::broadcast::channel(16);
    let bus = docket_ledger::transport::Bus::Memory(bus_tx);
    let tenth = items.len().div_ceil(10).max(1);
    for part in items.chunks(tenth) {
        for batch in part.chunks(BATCH_EVENTS_MAX) {
            ledger.commit(batch.to_vec()).await?;
        }
        ledger.checkpoint_if_due(&bus, true).await?;
    }
    let store = ledger.store();
    let (size, _) = store.head()?;
    let identity = store.identity()?;
    let ledger_key = store.ledger_key()?;
    let checkpoints = store.checkpoints()?;
    let (last, _) = *checkpoints.last().context("no checkpoint was signed")?;

    // 3. Proofs.
    let mut rng = Lcg(42);
    let seqs: Vec<u64> = (0..args.proofs).map(|_| 1 + rng.below(last)).collect();
    let t = Instant::now();
    let mut made = Vec::with_capacity(seqs.len());
    for seq in &seqs {
        made.push(proofs::inclusion(store, *seq, Some(last), false)?);
    }
    let make_rate = seqs.len() as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut ok = 0usize;
    for p in &made {
        ok += usize::from(check_inclusion(p, &identity.origin, &ledger_key).is_ok());
    }
    let check_rate = made.len() as f64 / t.elapsed().as_secs_f64();
    let paths: Vec<(u64, [u8; 32], Vec<[u8; 32]>)> = made
        .iter()
        .map(|p| {
            let entry = docket_ledger::chain::parse_hash(&p.entry_hash).unwrap_or_default();
            let path = p
                .hashes
                .iter()
                .filter_map(|h| docket_ledger::chain::parse_hash(h))
                .collect();
            (p.seq, leaf_hash(&entry), path)
        })
        .collect();
    let root = store.tree_root(last)?;
    let t = Instant::now();
    let mut path_ok = 0usize;
    for (seq, leaf, path) in &paths {
        path_ok += usize::from(verify_inclusion(seq - 1, last, leaf, path, &root));
    }
    let path_rate = paths.len() as f64 / t.elapsed().as_secs_f64();
    println!(
        "inclusion proofs against the checkpoint of {last}: made {make_rate:.0}/s (from stored nodes, with the \
         checkpoint note); checked {check_rate:.0}/s with the checkpoint's signature, {path_rate:.0}/s the \
         path alone ({ok} and {path_ok} of {} verified)",
        made.len()
    );
    let pairs: Vec<(u64, u64)> = (0..args.proofs)
        .map(|_| {
            let a = 1 + rng.below(size);
            let b = 1 + rng.below(size);
            (a.min(b), a.max(b))
        })
        .collect();
    let t = Instant::now();
    let mut cons = Vec::with_capacity(pairs.len());
    for (a, b) in &pairs {
        cons.push((
            *a,
            *b,
            store.tree_root(*a)?,
            store.tree_root(*b)?,
            store.consistency_path(*a, *b)?,
        ));
    }
    let cmake = pairs.len() as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut cok = 0usize;
    for (a, b, ra, rb, p) in &cons {
        cok += usize::from(verify_consistency(*a, *b, ra, rb, p));
    }
    let ccheck = cons.len() as f64 / t.elapsed().as_secs_f64();
    println!(
        "consistency proofs between random sizes: made {cmake:.0}/s (with both roots), checked {ccheck:.0}/s \
         ({cok} of {} verified)",
        cons.len()
    );

    // 4. Verify, against the batch-verify ceiling on the same entries.
    let ceiling = batch_verify_rate(store)?;
    let t = Instant::now();
    let full = verify::verify(store, &verify::Trust::default(), &mut |_, _| {})?;
    let full_s = t.elapsed().as_secs_f64();
    let (nine, note) = checkpoints
        .iter()
        .rev()
        .nth(1)
        .cloned()
        .context("fewer than two checkpoints")?;
    let t = Instant::now();
    let since = verify::verify_since(store, &verify::Trust::default(), &note, &mut |_, _| {})?;
    let since_s = t.elapsed().as_secs_f64();
    let full_rate = size as f64 / full_s;
    println!(
        "batch signature verification alone (the ceiling): {ceiling:.0} entries/s on {} threads",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "full verify: {full_rate:.0} entries/s = {:.0}% of the ceiling ({size} entries in {full_s:.2} s, {})",
        100.0 * full_rate / ceiling,
        if full.intact() {
            "intact"
        } else {
            "NOT INTACT"
        }
    );
    println!(
        "verify --since-checkpoint {nine}: {since_s:.2} s for {} new entries = {:.0} new entries/s = {:.0}% of \
         the ceiling; {:.1}x faster than the full verify ({})",
        size - nine,
        (size - nine) as f64 / since_s,
        100.0 * (size - nine) as f64 / since_s / ceiling,
        full_s / since_s,
        if since.intact() {
            "intact"
        } else {
            "NOT INTACT"
        }
    );
    println!("peak RSS: {:.0} MiB", peak_rss_mib());
    Ok(())
}

/// Entries/s of ed25519 batch verification of every entry's signature (decoded beforehand,
/// signers resolved from the registry at the tip), the way verify checks them.
fn batch_verify_rate(store: &Store) -> Result<f64> {
    let registry = store.registry()?.context("no registry stored")?;
    let mut decoded: Vec<(Envelope, Event)> = Vec::new();
    for item in store.records(1)? {
        let (seq, record) = item?;
        let entry = decode_record(seq, &record)?;
        let envelope = Envelope::decode(entry.envelope)?;
        let event = envelope.event()?;
        decoded.push((envelope, event));
    }
    let signers: Vec<_> = decoded
        .iter()
        .map(|(e, ev)| registry.signers(&e.key_id, &ev.body).unwrap_or_default())
        .collect();
    let t = Instant::now();
    let mut verified = 0usize;
    for (chunk, s) in decoded.chunks(8192).zip(signers.chunks(8192)) {
        let ok = verify_all(
            chunk
                .iter()
                .map(|(e, _)| e)
                .zip(s.iter().map(Vec::as_slice)),
        );
        verified += ok.iter().filter(|o| o.is_some()).count();
    }
    let rate = decoded.len() as f64 / t.elapsed().as_secs_f64();
    anyhow::ensure!(
        verified + 16 >= decoded.len(),
        "only {verified} of {} signatures verified against the tip's registry",
        decoded.len()
    );
    Ok(rate)
}
