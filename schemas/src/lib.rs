//! Docket's wire contract: event kinds, the DSSE envelope, signing, checkpoints and limits.
//!
//! Pure: no I/O, no clock, no randomness. Everything a producer or verifier in
//! another language needs is specified in `docs/FORMAT.md` and mirrored here.

pub mod checkpoint;
pub mod envelope;
pub mod event;
pub mod fate;
pub mod json_schema;
pub mod keys;
pub mod limits;
pub mod notice;
pub mod policy;
pub mod proof;
pub mod seal;
pub mod step_up;
pub mod strict_json;
pub mod time;
pub mod vault;

pub use checkpoint::{Checkpoint, CheckpointError};
pub use envelope::{
    Envelope, EnvelopeError, EnvelopeWire, PAYLOAD_TYPE, pae, seal, seal_as, seal_event,
};
pub use event::*;
pub use keys::{
    KeyError, check_producer_key, decode_base64, decode_public_key, encode_base64, key_id,
    securesystemslib_key_id,
};
pub use step_up::{STEP_UP_PAYLOAD_TYPE, StepUpAssertion, StepUpClaim, StepUpError};
pub use time::{HUMAN_TIME_FORMS, HumanTimeError, Timestamp, TimestampError};
