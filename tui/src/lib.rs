//! `docket watch`'s core: the model, the pure `update`, the side-effect-free `view`, and the
//! terminal runner; everything the UI does without I/O is here, so every key and screen is tested
//! without a terminal.
//!
//! The shell (NATS, SQL, signing) lives in the `docket` binary: it feeds `Msg`s in and carries
//! out the `Command`s that `update` returns. `terminal::run` is the only code here that touches
//! the terminal.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod model;
pub mod terminal;
pub mod update;
pub mod view;

pub use model::Model;
/// The ratatui this crate draws with, for a caller that renders a model off-screen (the benchmark).
pub use ratatui;
pub use terminal::{FrameStats, TuiError, run};
pub use update::{Command, Key, Msg, update};
pub use view::view;
