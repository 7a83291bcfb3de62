//! Structured logs (pretty or JSON) and, when an OTLP endpoint is configured, OpenTelemetry
//! traces with the W3C trace-context propagator installed globally.

use crate::config::TelemetryConfig;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
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
                // Our spans go to OTLP at info whatever the log filter says (logs of a quiet
                // service still leave its commit spans traceable); dependencies' spans do not.
                let ours = [
                    "tributary",
                    "bronze_ingest",
                    "silver_transform",
                    "gold_aggregate",
                    "central_federator",
                    "kafka2prom",
                    "log_exporter",
                ]
                .into_iter()
                .fold(tracing_subscriber::filter::Targets::new(), |t, c| t.with_target(c, tracing::Level::INFO));
                Some(tracing_opentelemetry::layer().with_tracer(tracer).with_filter(ours))
            }
            Err(e) => {
                eprintln!("tributary: OTLP exporter to {endpoint} not started: {e}");
                None
            }
        }
    };
    let registry = tracing_subscriber::registry().with(otel_layer);
    let res = if cfg.log_format == "json" {
        registry
            .with(tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr).with_filter(filter))
            .try_init()
    } else {
        registry.with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_filter(filter)).try_init()
    };
    let _ = res;
    TelemetryGuard { provider }
}

// ---- W3C trace context across commits ------------------------------------------------------
//
// One trace follows data from bronze to central: every commit runs in a `tributary.commit`
// span whose `traceparent` is written into the commit's `commitInfo` (and its commit notice);
// a stage pass that reads those versions makes the first one it read since its previous commit
// the parent of its next commit's span and links the others. Without an OTLP endpoint the spans are not sampled into
// OpenTelemetry and nothing is written.

/// The input trace contexts a pass read since its last commit (`pending`) and the ones its last
/// commit continued (`last`, reused by the commits that follow it without new input: a batch's
/// quarantine and index commits).
#[derive(Default)]
struct PassTraces {
    pending: Vec<String>,
    last: Vec<String>,
}

tokio::task_local! {
    static PASS_TRACES: std::cell::RefCell<PassTraces>;
}

/// Most input trace contexts a pass keeps (the first is the parent, the rest links).
const MAX_INPUT_TRACES: usize = 32;

/// Runs one stage pass with its own set of input trace contexts.
pub async fn in_pass<F: std::future::Future>(f: F) -> F::Output {
    PASS_TRACES.scope(std::cell::RefCell::new(PassTraces::default()), f).await
}

/// Records the trace context of an input commit the current pass read.
pub fn note_input_trace(traceparent: &str) {
    let _ = PASS_TRACES.try_with(|v| {
        let v = &mut v.borrow_mut().pending;
        if v.len() < MAX_INPUT_TRACES && !v.iter().any(|t| t == traceparent) {
            v.push(traceparent.to_string());
        }
    });
}

/// The input trace contexts the next commit continues: those read since the previous commit of
/// the pass, else the previous commit's (empty outside a pass).
pub fn take_input_traces() -> Vec<String> {
    PASS_TRACES
        .try_with(|v| {
            let mut v = v.borrow_mut();
            if !v.pending.is_empty() {
                v.last = std::mem::take(&mut v.pending);
            }
            v.last.clone()
        })
        .unwrap_or_default()
}

struct Carrier(std::collections::HashMap<String, String>);
impl opentelemetry::propagation::Extractor for Carrier {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|s| s.as_str())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|s| s.as_str()).collect()
    }
}
impl opentelemetry::propagation::Injector for Carrier {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_string(), value);
    }
}

/// The OpenTelemetry context of a W3C `traceparent` value (invalid when malformed).
pub fn context_from(traceparent: &str) -> opentelemetry::Context {
    let c = Carrier(std::collections::HashMap::from([("traceparent".to_string(), traceparent.to_string())]));
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&c))
}

/// The W3C `traceparent` of `span`, when it is recorded by OpenTelemetry.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut c = Carrier(Default::default());
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut c));
    c.0.remove("traceparent")
}

/// A `tributary.commit` span for a commit of `table`: child of the pass's first input commit (or
/// of the current span), linked to its other inputs.
pub fn commit_span(table: &str, stage: &str, region: &str) -> tracing::Span {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let span = tracing::info_span!("tributary.commit", table = %table, stage = %stage, region = %region,
                                   version = tracing::field::Empty);
    let inputs = take_input_traces();
    if let Some((first, rest)) = inputs.split_first() {
        let _ = span.set_parent(context_from(first));
        for tp in rest {
            span.add_link(context_from(tp).span().span_context().clone());
        }
    }
    span
}
