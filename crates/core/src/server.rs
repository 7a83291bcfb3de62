//! Every gRPC server the same way: status + health + reflection, a tower layer for metrics,
//! a tracing span per request parented on the caller's W3C trace context, optional (m)TLS and
//! graceful shutdown. Plus the admin HTTP server (/metrics, /healthz).

use crate::config::ServerConfig;
use crate::metrics::{GrpcLabels, Metrics};
use crate::status::StatusService;
use crate::{Error, Result, Shutdown};
use futures::future::BoxFuture;
use std::net::SocketAddr;
use std::task::{Context, Poll};
use tokio::task::JoinHandle;
use tower::{Layer, Service};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Counts gRPC requests by method and status code.
#[derive(Clone, Default)]
pub struct GrpcMetricsLayer;

impl<S> Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics { inner }
    }
}

#[derive(Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
}

impl<S, B, RB> Service<http::Request<B>> for GrpcMetrics<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let raw = req.uri().path();
        // Bounded label values: only our own and the standard services' paths.
        let path =
            if raw.starts_with("/tributary.") || raw.starts_with("/grpc.") { raw.to_string() } else { "other".into() };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await;
            let code = match &res {
                Ok(r) => r.headers().get("grpc-status").and_then(|v| v.to_str().ok()).unwrap_or("0").to_string(),
                Err(_) => "transport_error".into(),
            };
            Metrics::global().grpc_requests.get_or_create(&GrpcLabels { path, code }).inc();
            res
        })
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl opentelemetry::propagation::Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

fn request_span(req: &http::Request<()>) -> tracing::Span {
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(req.headers())));
    let span = tracing::info_span!("grpc.request", path = %req.uri().path());
    let _ = span.set_parent(parent);
    span
}

/// Builds the `tributary.v1.Admin` service of this process (registered by the binary, which
/// links the crates that implement it).
pub type AdminRoutes = Box<dyn Fn(tonic::service::Routes) -> tonic::service::Routes + Send + Sync>;
/// Records an admin call the authorisation layer refused: (method, caller, role, status).
pub type RefusalAudit = Box<dyn Fn(&str, &str, Option<crate::authz::Role>, &tonic::Status) + Send + Sync>;

static ADMIN: std::sync::OnceLock<AdminRoutes> = std::sync::OnceLock::new();
static REFUSALS: std::sync::OnceLock<RefusalAudit> = std::sync::OnceLock::new();

/// Registers the Admin service and the audit of refused calls (once per process).
pub fn register_admin(routes: AdminRoutes, refusals: RefusalAudit) {
    let _ = ADMIN.set(routes);
    let _ = REFUSALS.set(refusals);
}

pub(crate) fn audit_refusal(path: &str, who: &str, role: Option<crate::authz::Role>, status: &tonic::Status) {
    if let Some(f) = REFUSALS.get() {
        f(path, who, role, status);
    }
}

/// Starts the gRPC server. Returns the bound address (port 0 picks a free one) and its task.
pub async fn serve_grpc(
    cfg: &ServerConfig,
    status: StatusService,
    shutdown: Shutdown,
) -> Result<(SocketAddr, JoinHandle<()>)> {
    let addr: SocketAddr =
        cfg.grpc_addr.parse().map_err(|_| Error::user(format!("invalid grpc_addr {:?}", cfg.grpc_addr)))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::user(format!("cannot bind gRPC address {addr}")).with_source(e))?;
    let local = listener.local_addr()?;

    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<tributary_proto::v1::pipeline_status_server::PipelineStatusServer<StatusService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tributary_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| Error::internal("building gRPC reflection").with_source(e))?;

    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &cfg.tls {
        let cert = std::fs::read(&tls.cert_path)
            .map_err(|e| Error::user(format!("cannot read TLS cert {}", tls.cert_path.display())).with_source(e))?;
        let key = std::fs::read(&tls.key_path)
            .map_err(|e| Error::user(format!("cannot read TLS key {}", tls.key_path.display())).with_source(e))?;
        let mut tls_cfg =
            tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(cert, key));
        if let Some(ca) = &tls.client_ca_path {
            let ca = std::fs::read(ca)
                .map_err(|e| Error::user(format!("cannot read client CA {}", ca.display())).with_source(e))?;
            tls_cfg = tls_cfg.client_ca_root(tonic::transport::Certificate::from_pem(ca));
        }
        builder = builder.tls_config(tls_cfg).map_err(|e| Error::user("invalid TLS configuration").with_source(e))?;
    }
    let roles = crate::authz::role_table(&cfg.roles)?;
    if !roles.is_empty() && cfg.tls.as_ref().is_none_or(|t| t.client_ca_path.is_none()) {
        return Err(Error::user("server.roles needs mTLS: set server.tls.client_ca_path"));
    }
    let mut routes = tonic::service::Routes::new(health).add_service(reflection).add_service(status.into_server());
    if let Some(admin) = ADMIN.get() {
        routes = admin(routes);
    }
    let router = builder
        .trace_fn(request_span)
        .layer(GrpcMetricsLayer)
        .layer(crate::authz::AuthzLayer::new(roles))
        .add_routes(routes);
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let handle = tokio::spawn(async move {
        if let Err(e) = router.serve_with_incoming_shutdown(incoming, async move { shutdown.wait().await }).await {
            tracing::error!(error = %e, "gRPC server failed");
        }
    });
    tracing::info!(addr = %local, "gRPC server listening (PipelineStatus, health, reflection)");
    Ok((local, handle))
}

/// Starts the admin HTTP server: `/metrics` (Prometheus text) and `/healthz`.
pub async fn serve_admin(addr: &str, shutdown: Shutdown) -> Result<(SocketAddr, JoinHandle<()>)> {
    use axum::routing::get;
    let addr: SocketAddr = addr.parse().map_err(|_| Error::user(format!("invalid admin_addr {addr:?}")))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::user(format!("cannot bind admin address {addr}")).with_source(e))?;
    let local = listener.local_addr()?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(|| async {
                (
                    [(http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
                    Metrics::global().encode(),
                )
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }));
    let handle = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.wait().await }).await {
            tracing::error!(error = %e, "admin HTTP server failed");
        }
    });
    tracing::info!(addr = %local, "admin HTTP listening (/metrics, /healthz)");
    Ok((local, handle))
}
