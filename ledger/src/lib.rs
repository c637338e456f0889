//! Docket's ledger: the hash chain, admission, the RocksDB store, NATS ingest and offline verification.
//!
//! The core (`chain`, `registry`, `admission`, `workload`) does no I/O and reads
//! no clock; `store`, `transport` and `ingest` are the shell around it.

pub mod admission;
pub mod chain;
pub mod config;
pub mod export;
pub mod fate;
pub mod ingest;
pub mod keyfile;
pub mod nats_server;
pub mod projection;
pub mod publisher;
pub mod registry;
pub mod state;
pub mod step_up;
pub mod store;
pub mod transport;
pub mod vault;
pub mod verify;
pub mod workload;
