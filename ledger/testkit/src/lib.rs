//! Support for the demo, the tests and the benchmarks: never linked into the ledger itself.
//!
//! `workload` generates a deterministic synthetic deployment's events;
//! `nats_server` spawns a real `nats-server` with JetStream on a free port.

pub mod nats_server;
pub mod workload;
