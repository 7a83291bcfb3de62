//! Shared pieces of every Tributary service: configuration, errors, telemetry, metrics,
//! fault injection, shutdown and the gRPC/admin server scaffolding.

pub mod config;
pub mod error;
pub mod event_log;
pub mod fault;
pub mod field_type;
pub mod metrics;
pub mod notices;
pub mod server;
pub mod shutdown;
pub mod stage;
pub mod status;
pub mod telemetry;

pub use config::{Config, ConfigError};
pub use error::{Error, ErrorKind, Result};
pub use shutdown::Shutdown;

/// Build version reported by status RPCs.
pub const BUILD_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Installs rustls' process-wide crypto provider (ring). Several providers are compiled into the
/// binary through dependencies, so rustls cannot pick one by itself; call once at start-up,
/// before any TLS server or client is built.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
