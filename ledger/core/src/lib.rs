//! Docket's deterministic core: what the ledger admits, what the log means, and what the vault decides.
//!
//! No I/O, no clock, no randomness, no async: time, ids, token secrets and keys
//! are passed in. The crate's dependencies (no tokio, RocksDB or async-nats) keep
//! it that way; the shell around it is `docket-ledger`.

pub mod admission;
pub mod authorization;
pub mod chain;
pub mod connection;
pub mod desk;
pub mod fold;
pub mod gateway;
pub mod merkle;
pub mod policy;
pub mod proof;
pub mod registry;
pub mod state;
pub mod step_up;
pub mod vault;
pub mod witness;
