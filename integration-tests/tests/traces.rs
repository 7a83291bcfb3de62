//! End-to-end traces: an OTLP receiver on loopback collects the spans of a pipeline run, and one
//! trace follows the data from a bronze commit through silver and gold to central.

use integration_tests::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

fn attr(s: &Span, key: &str) -> String {
    s.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref())
        .and_then(|v| match &v.value {
            Some(Value::StringValue(s)) => Some(s.clone()),
            Some(Value::IntValue(i)) => Some(i.to_string()),
            _ => None,
        })
        .unwrap_or_default()
}

fn layer(table: &str) -> &'static str {
    if table.starts_with("central") || table.contains("central/") {
        "central"
    } else if table.contains("gold") || table.contains("billing_usage") || table.contains("event_counts") {
        "gold"
    } else if table.contains("silver") {
        "silver"
    } else if table.contains("bronze") {
        "bronze"
    } else {
        "other"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_follows_the_data_from_bronze_to_central() {
    let rx = Receiver::default();
    let port = free_port();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(rx.clone()))
            .serve(format!("127.0.0.1:{port}").parse().unwrap()),
    );
    let p = Pipeline::new(&["r1"]).with_env("OTEL_EXPORTER_OTLP_ENDPOINT", &format!("http://127.0.0.1:{port}"));
    p.generate(&GenSpec { events_per_source: 200, files_per_source: 2, seed: 5 }).unwrap();
    tokio::task::spawn_blocking(move || {
        p.run_to_completion(&[]).unwrap();
        // The Delta log carries each commit's trace context for its readers.
        let log = p.data.join("regions/r1/silver/billing/_delta_log/00000000000000000001.json");
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("\"tributary.traceparent\":\"00-"), "no trace context in {}: {text:.400}", log.display());
    })
    .await
    .unwrap();
    // The exporter flushes when the process exits.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let spans = loop {
        let spans = rx.0.lock().unwrap().clone();
        if spans.iter().any(|s| s.name == "tributary.commit" && layer(&attr(s, "table")) == "central")
            || std::time::Instant::now() > deadline
        {
            break spans;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    server.abort();
    let commits: Vec<&Span> = spans.iter().filter(|s| s.name == "tributary.commit").collect();
    assert!(!commits.is_empty(), "no commit spans among {} spans", spans.len());
    let by_id: HashMap<&[u8], &Span> = commits.iter().map(|s| (s.span_id.as_slice(), *s)).collect();
    // Walk from every central commit to its root: central <- gold|silver <- silver <- bronze.
    let mut chains = Vec::new();
    for c in commits.iter().filter(|s| layer(&attr(s, "table")) == "central") {
        let mut chain = vec![layer(&attr(c, "table"))];
        let mut cur = *c;
        while let Some(parent) = by_id.get(cur.parent_span_id.as_slice()) {
            assert_eq!(parent.trace_id, cur.trace_id, "a parent in another trace");
            chain.push(layer(&attr(parent, "table")));
            cur = parent;
        }
        chains.push(chain);
    }
    let mut per_layer: std::collections::BTreeMap<String, usize> = Default::default();
    for c in &commits {
        *per_layer.entry(attr(c, "table")).or_default() += 1;
    }
    let orphans: Vec<String> = commits
        .iter()
        .filter(|c| !c.parent_span_id.is_empty() && !by_id.contains_key(c.parent_span_id.as_slice()))
        .map(|c| attr(c, "table"))
        .collect();
    eprintln!("commit spans per table: {per_layer:?}; with a parent not received: {orphans:?}");
    eprintln!(
        "{} spans, {} commit spans; chains from central: {:?}",
        spans.len(),
        commits.len(),
        chains.iter().take(6).collect::<Vec<_>>()
    );
    assert!(
        chains.iter().any(|c| *c == ["central", "gold", "silver", "bronze"]),
        "no trace follows bronze → silver → gold → central: {chains:?}"
    );
    assert!(
        chains.iter().any(|c| *c == ["central", "silver", "bronze"]),
        "no trace follows bronze → silver → central events: {chains:?}"
    );
    // Every silver commit continues a bronze trace.
    for s in commits.iter().filter(|s| attr(s, "table").starts_with("silver/billing")) {
        let parent = by_id.get(s.parent_span_id.as_slice()).map(|p| attr(p, "table"));
        assert!(
            parent.as_deref().is_some_and(|t| t.starts_with("bronze/")),
            "silver commit without a bronze parent: {parent:?}"
        );
    }
}
