//! The wall clock, read here at the edge and passed into the core as a `Timestamp`.

use docket_schemas::Timestamp;

/// The system clock could not be read as a time after the Unix epoch.
#[derive(Debug, thiserror::Error)]
#[error(
    "the system clock reads before the Unix epoch or out of range; refusing to record time zero"
)]
pub struct ClockError;

/// Wall-clock microseconds since the Unix epoch.
pub fn now_us() -> Result<i64, ClockError> {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| ClockError)?;
    i64::try_from(d.as_micros()).map_err(|_| ClockError)
}

/// The wall clock as a `Timestamp`.
pub fn now() -> Result<Timestamp, ClockError> {
    Timestamp::from_micros(now_us()?).ok_or(ClockError)
}
