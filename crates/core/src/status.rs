//! The `tributary.v1.PipelineStatus` service, shared by every binary.

use std::sync::Arc;
use tributary_proto::v1::{
    GetStatusRequest, GetStatusResponse, StageStatus,
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
}

#[tonic::async_trait]
impl PipelineStatus for StatusService {
    async fn get_status(
        &self,
        request: tonic::Request<GetStatusRequest>,
    ) -> Result<tonic::Response<GetStatusResponse>, tonic::Status> {
        let req = request.into_inner();
        let stages = self.provider.stages(req.include_table_stats).await;
        Ok(tonic::Response::new(GetStatusResponse {
            service: self.service.clone(),
            pipeline: self.pipeline.clone(),
            build_version: crate::BUILD_VERSION.into(),
            started_unix_ms: self.started_unix_ms,
            stages,
        }))
    }
}

impl StatusService {
    pub fn into_server(self) -> PipelineStatusServer<Self> {
        PipelineStatusServer::new(self)
    }
}
