//! Structured logs (pretty or JSON) and, when an OTLP endpoint is configured, OpenTelemetry
//! traces with the W3C trace-context propagator installed globally.

use crate::config::TelemetryConfig;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Keeps the tracer provider alive; flushes spans on drop.
pub struct TelemetryGuard {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

/// Installs the global subscriber. Safe to call once per process; later calls are no-ops.
pub fn init(service: &str, cfg: &TelemetryConfig) -> TelemetryGuard {
    opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.log_filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").unwrap_or_else(|_| cfg.otlp_endpoint.clone());
    let mut provider = None;
    let otel_layer = if endpoint.is_empty() {
        None
    } else {
        use opentelemetry::trace::TracerProvider as _;
        use opentelemetry_otlp::WithExportConfig;
        match opentelemetry_otlp::SpanExporter::builder().with_tonic().with_endpoint(endpoint.clone()).build() {
            Ok(exporter) => {
                let p = opentelemetry_sdk::trace::SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(
                        opentelemetry_sdk::Resource::builder().with_service_name(service.to_string()).build(),
                    )
                    .build();
                let tracer = p.tracer(service.to_string());
                provider = Some(p);
                Some(tracing_opentelemetry::layer().with_tracer(tracer))
            }
            Err(e) => {
                eprintln!("tributary: OTLP exporter to {endpoint} not started: {e}");
                None
            }
        }
    };
    let registry = tracing_subscriber::registry().with(filter).with(otel_layer);
    let res = if cfg.log_format == "json" {
        registry.with(tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr)).try_init()
    } else {
        registry.with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr)).try_init()
    };
    let _ = res;
    TelemetryGuard { provider }
}
