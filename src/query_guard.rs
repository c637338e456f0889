//! Hard limits on one SQL query that the engine cannot promise by itself: a watchdog ends the process.
//!
//! DataFusion's memory pool counts only what its operators reserve (a scalar
//! function such as `repeat('x', 1e9)` allocates outside it), and a timeout
//! drops the query's future while CPU-bound work can run on. So the CLI arms a
//! watchdog thread for each query: past the time limit (plus a grace period) or
//! past the memory limit (resident memory grown since the query began, plus a
//! margin for the allocator), it prints why and exits. Losing the process is the
//! price of a limit that holds; nothing is written to the ledger by a query.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a query may overrun its time limit before the process is stopped (the
/// engine's own timeout normally ends it first, with a clean error).
pub const TIMEOUT_GRACE: Duration = Duration::from_secs(2);
/// Resident memory a query may grow beyond its limit before the process is stopped:
/// the allocator's slack and the result being printed.
pub const MEMORY_MARGIN_BYTES: u64 = 64 << 20;
/// How often the watchdog looks.
const WATCH_EVERY: Duration = Duration::from_millis(20);

struct Armed {
    deadline: Instant,
    timeout: Duration,
    rss_max: u64,
    limit_bytes: u64,
}

type Slot = Arc<Mutex<Option<Armed>>>;

fn slot() -> &'static Slot {
    static SLOT: OnceLock<Slot> = OnceLock::new();
    SLOT.get_or_init(|| {
        let slot: Slot = Arc::new(Mutex::new(None));
        let watched = Arc::clone(&slot);
        std::thread::spawn(move || watch(&watched));
        slot
    })
}

fn watch(slot: &Slot) {
    loop {
        std::thread::sleep(WATCH_EVERY);
        let verdict = {
            let armed = match slot.lock() {
                Ok(a) => a,
                Err(p) => p.into_inner(),
            };
            armed.as_ref().and_then(|a| {
                if Instant::now() > a.deadline + TIMEOUT_GRACE {
                    return Some(format!(
                        "query stopped: it ran past its {}-second limit (--timeout-s)",
                        a.timeout.as_secs()
                    ));
                }
                let rss = rss_bytes()?;
                (rss > a.rss_max).then(|| {
                    format!(
                        "query stopped: it used more than its {} MiB memory limit (--memory-limit-mib); \
                         resident memory reached {} MiB",
                        a.limit_bytes >> 20,
                        rss >> 20
                    )
                })
            })
        };
        if let Some(why) = verdict {
            eprintln!("error: {why}");
            std::process::exit(1);
        }
    }
}

/// Resident memory of this process now, in bytes (Linux's /proc; `None` elsewhere).
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The watchdog, armed for one query until dropped.
pub struct Watch(());

impl Watch {
    /// Arms the watchdog: `timeout` from now, `limit_bytes` of growth from now's resident memory.
    pub fn arm(timeout: Duration, limit_bytes: u64) -> Watch {
        let base = rss_bytes().unwrap_or(0);
        let armed = Armed {
            deadline: Instant::now() + timeout,
            timeout,
            rss_max: base + limit_bytes + MEMORY_MARGIN_BYTES,
            limit_bytes,
        };
        *lock(slot()) = Some(armed);
        Watch(())
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        *lock(slot()) = None;
    }
}

fn lock(slot: &Slot) -> std::sync::MutexGuard<'_, Option<Armed>> {
    match slot.lock() {
        Ok(a) => a,
        Err(p) => p.into_inner(),
    }
}
