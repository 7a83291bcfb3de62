//! kafka2prom (issue #11): the metric dumps the log-exporter ships through Kafka, exposed again
//! on `/metrics` for Prometheus (seed 003's Kafka2Prom).
//!
//! - `store`: the pure core: which sample of a series is exposed, what a revoke evicts, what the
//!   TTL expires.
//! - `service`: the consumer-group member: a bounded queue and a worker per partition (a full
//!   queue pauses only its partition; emergency mode drops oldest-first), revoke eviction inside
//!   the rebalance callback, offsets committed only once exposed, the `/metrics` endpoint.

pub mod service;
pub mod store;

pub use service::run;
