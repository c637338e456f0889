//! Docket's ledger node: the shell around `docket-core` (store, transport, ingest loop, projection, verification).
//!
//! The deterministic core (chain, registry, admission, policy, the fold, the
//! vault and its desk) is the `docket-core` crate, re-exported here under the
//! same module names; this crate adds RocksDB, NATS, tokio and the clock.

pub use docket_core::{
    admission, authorization, chain, connection, desk, fold, gateway, merkle, policy, proof,
    registry, state, step_up, vault, witness,
};

pub mod clock;
pub mod config;
pub mod connection_store;
pub mod export;
pub mod fate;
pub mod ingest;
pub mod keyfile;
pub mod projection;
pub mod proofs;
pub mod publisher;
pub mod store;
pub mod transport;
pub mod verify;
pub mod witnessing;
