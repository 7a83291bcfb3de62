//! The `tributary.v1.PipelineStatus` service, shared by every binary.

use std::sync::Arc;
use std::time::{Duration, Instant};
use tributary_proto::v1::{
    GetStatusRequest, GetStatusResponse, RegionAnswer, StageStatus,
    pipeline_status_client::PipelineStatusClient,
    pipeline_status_server::{PipelineStatus, PipelineStatusServer},
};

/// Anything that can describe its stages: each service implements this once.
#[tonic::async_trait]
pub trait StatusProvider: Send + Sync + 'static {
    async fn stages(&self, include_table_stats: bool) -> Vec<StageStatus>;
}

pub struct StatusService {
    pub service: String,
    pub pipeline: String,
    pub started_unix_ms: i64,
    pub provider: Arc<dyn StatusProvider>,
    /// The regions' endpoints for `all_regions` requests (empty: answers for itself only).
    pub fan_out: Arc<FanOut>,
}

/// Asks every region's services for their status, all at once, each within a deadline.
#[derive(Default)]
pub struct FanOut {
    pub endpoints: std::collections::BTreeMap<String, Vec<String>>,
    pub deadline: Duration,
    pub tls: Option<tonic::transport::ClientTlsConfig>,
}

impl FanOut {
    pub fn from_config(cfg: &crate::config::FederatorConfig) -> crate::Result<Self> {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| crate::Error::user(format!("cannot read {}", p.display())).with_source(e))
        };
        let tls = match &cfg.status_ca_path {
            None => None,
            Some(ca) => {
                let mut t = tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?));
                if let (Some(c), Some(k)) = (&cfg.status_client_cert_path, &cfg.status_client_key_path) {
                    t = t.identity(tonic::transport::Identity::from_pem(read(c)?, read(k)?));
                }
                Some(t)
            }
        };
        Ok(Self {
            endpoints: cfg.status_endpoints.clone(),
            deadline: Duration::from_millis(cfg.status_deadline_ms.max(1)),
            tls,
        })
    }

    /// One answer per endpoint, in region order; never waits longer than the deadline.
    pub async fn ask(&self, include_table_stats: bool) -> Vec<RegionAnswer> {
        let calls = self.endpoints.iter().flat_map(|(region, eps)| {
            eps.iter().map(move |ep| async move {
                let started = Instant::now();
                let r = tokio::time::timeout(self.deadline, self.ask_one(ep, include_table_stats)).await;
                let mut a = RegionAnswer {
                    region: region.clone(),
                    endpoint: ep.clone(),
                    elapsed_ms: started.elapsed().as_millis() as i64,
                    ..Default::default()
                };
                match r {
                    Ok(Ok(resp)) => {
                        a.ok = true;
                        a.service = resp.service;
                        a.stages = resp.stages;
                    }
                    Ok(Err(e)) => a.error = e,
                    Err(_) => a.error = format!("no answer within the deadline of {} ms", self.deadline.as_millis()),
                }
                a
            })
        });
        futures::future::join_all(calls).await
    }

    async fn ask_one(&self, ep: &str, include_table_stats: bool) -> Result<GetStatusResponse, String> {
        let mut endpoint =
            tonic::transport::Endpoint::from_shared(ep.to_string()).map_err(|e| format!("invalid endpoint: {e}"))?;
        if let Some(t) = &self.tls {
            endpoint = endpoint.tls_config(t.clone()).map_err(|e| format!("TLS settings: {e}"))?;
        }
        let channel = endpoint.connect().await.map_err(|e| format!("unreachable: {e}"))?;
        PipelineStatusClient::new(channel)
            .get_status(GetStatusRequest { include_table_stats, all_regions: false })
            .await
            .map(|r| r.into_inner())
            .map_err(|e| format!("GetStatus failed: {} ({:?})", e.message(), e.code()))
    }
}

#[tonic::async_trait]
impl PipelineStatus for StatusService {
    async fn get_status(
        &self,
        request: tonic::Request<GetStatusRequest>,
    ) -> Result<tonic::Response<GetStatusResponse>, tonic::Status> {
        let req = request.into_inner();
        let (stages, regions) = if req.all_regions {
            tokio::join!(self.provider.stages(req.include_table_stats), self.fan_out.ask(req.include_table_stats))
        } else {
            (self.provider.stages(req.include_table_stats).await, Vec::new())
        };
        Ok(tonic::Response::new(GetStatusResponse {
            service: self.service.clone(),
            pipeline: self.pipeline.clone(),
            build_version: crate::BUILD_VERSION.into(),
            started_unix_ms: self.started_unix_ms,
            stages,
            partial: regions.iter().any(|r| !r.ok),
            regions,
        }))
    }
}

impl StatusService {
    pub fn into_server(self) -> PipelineStatusServer<Self> {
        PipelineStatusServer::new(self)
    }
}
