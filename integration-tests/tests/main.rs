//! One integration-test binary (link time is our scarcest resource); each module a suite.

mod backfill;
mod bridge;
mod deploy;
mod dr;
mod e2e;
mod federation;
mod inputs;
mod kafka;
mod logs;
mod quality;
mod restart;
mod scaleout;
mod security;
mod semantics;
mod status_api;
mod storage;
mod traces;
