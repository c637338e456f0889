//! What the benchmarks and `docket sql --timing` share: workload envelopes as ledger input, and the process's peak memory.

use docket_testkit::workload::Published;

/// Published envelopes as the ledger's input, numbered from `seq + 1` as a transport would.
pub fn incoming(
    published: impl IntoIterator<Item = Published>,
    seq: &mut u64,
) -> Vec<docket_ledger::admission::Incoming> {
    published
        .into_iter()
        .map(|p| {
            *seq += 1;
            docket_ledger::admission::Incoming {
                subject: p.subject,
                payload: p.envelope.into(),
                source_seq: *seq,
            }
        })
        .collect()
}

/// Peak resident memory of this process (VmHWM), in MiB; NaN where /proc is not there.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l.to_string())
        })
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}
