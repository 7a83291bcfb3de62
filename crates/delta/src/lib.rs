//! Delta Lake helpers shared by every stage: open-or-create, exactly-once commits carrying `txn`
//! actions, incremental reads by version, file reads with partition values restored, table
//! status from the log's file statistics, and order-independent fingerprints.

pub mod admin;
pub mod catalog;
pub mod clone;
mod datafile;
pub mod dr;
pub mod event_log;
pub mod fingerprint;
pub mod forget;
pub mod fork;
pub mod quarantine;
pub mod retention;
pub mod schemas;
pub mod store;
mod table;

pub use table::*;

pub use deltalake;
pub use deltalake::arrow;
pub use deltalake::kernel::{Action, Add, Remove, Transaction};

#[cfg(test)]
mod tests;

/// The newest `event_time` (ms since the epoch) among `batches`; 0 when none has the column or
/// a value. For the freshness gauge and commit notices.
pub fn max_event_ms(batches: &[arrow::record_batch::RecordBatch]) -> i64 {
    use arrow::array::TimestampMicrosecondArray;
    batches
        .iter()
        .filter_map(|b| b.column_by_name("event_time")?.as_any().downcast_ref::<TimestampMicrosecondArray>().cloned())
        .filter_map(|a| arrow::compute::max(&a))
        .max()
        .map(|us| us.div_euclid(1000))
        .unwrap_or(0)
}
