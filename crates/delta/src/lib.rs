//! Delta Lake helpers shared by every stage: open-or-create, exactly-once commits carrying `txn`
//! actions, incremental reads by version, file reads with partition values restored, table
//! status from the log's file statistics, and order-independent fingerprints.

pub mod catalog;
pub mod event_log;
pub mod fingerprint;
pub mod quarantine;
pub mod schemas;
mod table;

pub use table::*;

pub use deltalake;
pub use deltalake::arrow;
pub use deltalake::kernel::{Action, Add, Remove, Transaction};

#[cfg(test)]
mod tests;
