//! The `tributary.v1.Admin` gRPC service and its audit table.
//!
//! Authorisation happens before a call reaches this service (`tributary_core::authz`: the
//! caller's role from its mTLS client certificate); this service acts and records every call —
//! and every refused one — in the append-only Delta table `<data_root>/_tributary/audit` (who,
//! role, what, when, arguments, outcome, message) before it answers: SOC 2 evidence that
//! survives the process.

use crate::{Commit, Table, Writer};
use deltalake::arrow::array::{ArrayRef, RecordBatch, StringBuilder, TimestampMicrosecondBuilder};
use deltalake::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use std::collections::HashMap;
use std::sync::Arc;
use tonic::{Request, Response, Status};
use tributary_core::authz::{Caller, Role};
use tributary_core::{Config, Result};
use tributary_proto::v1::admin_server::{Admin, AdminServer};
use tributary_proto::v1::{
    AdminReply, BackfillProgress, BackfillRequest, CompactRequest, DrRequest, FlowRef, ForgetRequest,
    ForgetStatusRequest, RetentionRequest, TableRef, VacuumRequest,
};

/// Where a backfill's progress goes (the last item is the outcome).
pub type ProgressSender = tokio::sync::mpsc::Sender<std::result::Result<BackfillProgress, Status>>;
/// Runs a backfill; registered by the binary where bronze-ingest runs (a service crate, which
/// this shared one does not depend on). Sends progress, returns the final state.
pub type BackfillRunner = Box<
    dyn Fn(
            Arc<Config>,
            BackfillRequest,
            ProgressSender,
        ) -> futures::future::BoxFuture<'static, Result<BackfillProgress>>
        + Send
        + Sync,
>;
static BACKFILL: std::sync::OnceLock<BackfillRunner> = std::sync::OnceLock::new();

/// Installs this process's backfill runner (first call wins).
pub fn register_backfill(runner: BackfillRunner) {
    let _ = BACKFILL.set(runner);
}

pub fn audit_location(cfg: &Config) -> String {
    format!("{}/_tributary/audit", cfg.data_root.trim_end_matches('/'))
}

pub fn audit_schema() -> SchemaRef {
    let s = |n: &str| Field::new(n, DataType::Utf8, false);
    Arc::new(Schema::new(vec![
        Field::new("timestamp", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), false),
        s("caller"),
        s("role"),
        s("method"),
        s("arguments"),
        s("outcome"),
        s("message"),
        s("service"),
        s("audit_date"),
    ]))
}

/// One audit record.
pub struct AuditRecord<'a> {
    pub caller: &'a str,
    pub role: Option<Role>,
    pub method: &'a str,
    pub arguments: serde_json::Value,
    /// ok | error | denied
    pub outcome: &'a str,
    pub message: &'a str,
}

/// Appends audit records (several processes append concurrently; races are retried).
pub async fn append_audit(location: &str, service: &str, records: &[AuditRecord<'_>]) -> Result<()> {
    let mut t = Table::open_or_create("_tributary/audit", location, audit_schema(), &["audit_date"]).await?;
    let now = tributary_core::now_ms() * 1000;
    let mut ts = TimestampMicrosecondBuilder::new().with_timezone("UTC");
    let mut cols: Vec<StringBuilder> = (0..8).map(|_| StringBuilder::new()).collect();
    for r in records {
        ts.append_value(now);
        let vals = [
            r.caller,
            r.role.map(Role::as_str).unwrap_or("none"),
            r.method,
            &r.arguments.to_string(),
            r.outcome,
            r.message,
            service,
            &tributary_events::date_of_micros(now),
        ];
        for (b, v) in cols.iter_mut().zip(vals) {
            b.append_value(v);
        }
    }
    let mut arrays: Vec<ArrayRef> = vec![Arc::new(ts.finish())];
    arrays.extend(cols.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
    let batch = RecordBatch::try_new(audit_schema(), arrays)
        .map_err(|e| tributary_core::Error::internal("audit batch").with_source(e))?;
    let writer = Writer { stage: "audit".into(), region: String::new(), threads: 1, attempts: 50 };
    t.commit_batch(Commit::new(&[batch], vec![], HashMap::new(), -1), &writer).await?;
    Ok(())
}

/// Appends the audit record of one call (an audit that cannot be written fails the call).
async fn record(
    cfg: &Config,
    service: &str,
    caller: Option<&Caller>,
    method: &str,
    arguments: serde_json::Value,
    outcome: &str,
    message: &str,
) -> std::result::Result<(), Status> {
    let rec = AuditRecord {
        caller: caller.map(|c| c.cn.as_str()).unwrap_or(""),
        role: caller.and_then(|c| c.role),
        method,
        arguments,
        outcome,
        message,
    };
    if let Err(e) = append_audit(&audit_location(cfg), service, &[rec]).await {
        tracing::error!(error = %e, method, "writing the audit record failed");
        return Err(Status::unavailable(format!("the audit table cannot be written ({e}); nothing is reported done")));
    }
    tracing::info!(method, caller = caller.map(|c| c.cn.as_str()).unwrap_or(""), outcome, %message, "admin call");
    Ok(())
}

pub struct AdminService {
    cfg: Arc<Config>,
    service: String,
}

const STAGES: &[&str] = &["bronze", "silver", "gold", "federator"];

impl AdminService {
    async fn dr_switch(
        &self,
        req: Request<DrRequest>,
        to: &str,
        method: &str,
    ) -> std::result::Result<Response<AdminReply>, Status> {
        let caller = req.extensions().get::<Caller>().cloned();
        let d = req.into_inner();
        let by = caller.as_ref().map(|c| c.cn.clone()).filter(|c| !c.is_empty()).unwrap_or_else(|| "grpc".into());
        let r = crate::dr::switch(&self.cfg, &d.region, to, &by)
            .await
            .map_err(|e| match e.kind {
                tributary_core::ErrorKind::User => Status::invalid_argument(e.to_string()),
                _ => Status::internal(e.to_string()),
            })
            .map(|s| AdminReply { message: s.to_string(), version: s.epoch, ..Default::default() });
        self.audited(caller.as_ref(), method, &serde_json::json!({"region": d.region, "to": to}), r).await
    }

    /// A table path under `data_root`; anything that could leave it is refused.
    fn table_location(&self, table: &str) -> std::result::Result<String, Status> {
        let ok = !table.is_empty()
            && !table.starts_with('/')
            && !table.contains("://")
            && table.split('/').all(|c| !c.is_empty() && c != "." && c != "..");
        if !ok {
            return Err(Status::invalid_argument(format!(
                "table {table:?}: give its path under data_root, e.g. regions/us-east-1/silver/billing"
            )));
        }
        Ok(format!("{}/{table}", self.cfg.data_root.trim_end_matches('/')))
    }

    /// Records the call, then answers with `result` (an audit that cannot be written fails the
    /// call: no unaudited admin action is reported as done).
    async fn audited<T: serde::Serialize>(
        &self,
        caller: Option<&Caller>,
        method: &str,
        args: &T,
        result: std::result::Result<AdminReply, Status>,
    ) -> std::result::Result<Response<AdminReply>, Status> {
        let (outcome, message) = match &result {
            Ok(r) => ("ok", r.message.clone()),
            Err(s) => ("error", s.message().to_string()),
        };
        record(
            &self.cfg,
            &self.service,
            caller,
            method,
            serde_json::to_value(args).unwrap_or_default(),
            outcome,
            &message,
        )
        .await?;
        result.map(Response::new)
    }

    /// PauseFlow / ResumeFlow.
    async fn set_paused(
        &self,
        req: Request<FlowRef>,
        paused: bool,
    ) -> std::result::Result<Response<AdminReply>, Status> {
        let caller = req.extensions().get::<Caller>().cloned();
        let f = req.into_inner();
        let r = self.flow(&f).map(|()| {
            let changed = tributary_core::stage::set_paused(&f.stage, &f.region, paused);
            let what = match (paused, changed) {
                (true, true) => "paused",
                (true, false) => "already paused",
                (false, true) => "resumed",
                (false, false) => "was not paused:",
            };
            AdminReply { message: format!("{what} {}/{}", f.stage, f.region), ..Default::default() }
        });
        let method = if paused { "PauseFlow" } else { "ResumeFlow" };
        self.audited(caller.as_ref(), method, &FlowArgs { stage: &f.stage, region: &f.region }, r).await
    }

    fn flow(&self, f: &FlowRef) -> std::result::Result<(), Status> {
        if !STAGES.contains(&f.stage.as_str()) {
            return Err(Status::invalid_argument(format!("stage {:?}: one of {}", f.stage, STAGES.join(", "))));
        }
        if !self.cfg.regions.contains(&f.region) {
            return Err(Status::not_found(format!(
                "region {:?} is not one of this service's {:?}",
                f.region, self.cfg.regions
            )));
        }
        Ok(())
    }
}

#[derive(serde::Serialize)]
struct FlowArgs<'a> {
    stage: &'a str,
    region: &'a str,
}

#[derive(serde::Serialize)]
struct VacuumArgs<'a> {
    table: &'a str,
    retention_hours: u32,
    dry_run: bool,
}

type ProgressStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = std::result::Result<BackfillProgress, Status>> + Send>>;

#[tonic::async_trait]
impl Admin for AdminService {
    type BackfillStream = ProgressStream;

    async fn backfill(&self, req: Request<BackfillRequest>) -> std::result::Result<Response<ProgressStream>, Status> {
        let caller = req.extensions().get::<Caller>().cloned();
        let mut b = req.into_inner();
        let args = serde_json::json!({"region": b.region, "source": b.source, "from_ms": b.from_ms, "to_ms": b.to_ms,
                                      "landing": b.landing, "id": b.id, "kafka": b.kafka});
        let checked = async {
            if !b.landing.is_empty() {
                // Only zones under data_root: an admin must not read the server's other files.
                b.landing = self.table_location(&b.landing)?;
            }
            BACKFILL.get().ok_or_else(|| {
                Status::unimplemented("backfills run in the services that run bronze (bronze-ingest, standalone)")
            })
        }
        .await;
        let runner = match checked {
            Ok(r) => r,
            Err(s) => {
                record(&self.cfg, &self.service, caller.as_ref(), "Backfill", args, "error", s.message()).await?;
                return Err(s);
            }
        };
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let job = runner(self.cfg.clone(), b, tx.clone());
        let (cfg, service) = (self.cfg.clone(), self.service.clone());
        tokio::spawn(async move {
            let r = job.await;
            let (outcome, message) = match &r {
                Ok(p) => (
                    "ok",
                    format!("{}/{} files, {} rows, {} quarantined", p.files_done, p.files_total, p.rows, p.quarantined),
                ),
                Err(e) => ("error", e.to_string()),
            };
            let audited = record(&cfg, &service, caller.as_ref(), "Backfill", args, outcome, &message).await;
            let last = match (r, audited) {
                (_, Err(s)) => Err(s),
                (Ok(p), Ok(())) => Ok(BackfillProgress { done: true, ..p }),
                (Err(e), Ok(())) => Err(match e.kind {
                    tributary_core::ErrorKind::User => Status::failed_precondition(e.to_string()),
                    _ => Status::internal(e.to_string()),
                }),
            };
            let _ = tx.send(last).await;
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn pause_flow(&self, req: Request<FlowRef>) -> std::result::Result<Response<AdminReply>, Status> {
        self.set_paused(req, true).await
    }

    async fn resume_flow(&self, req: Request<FlowRef>) -> std::result::Result<Response<AdminReply>, Status> {
        self.set_paused(req, false).await
    }

    async fn trigger_run(&self, req: Request<FlowRef>) -> std::result::Result<Response<AdminReply>, Status> {
        let caller = req.extensions().get::<Caller>().cloned();
        let f = req.into_inner();
        let r = self.flow(&f).and_then(|()| {
            let n = tributary_core::stage::trigger(&f.stage, &f.region);
            if n == 0 {
                return Err(Status::not_found(format!("{}/{} does not run in this process", f.stage, f.region)));
            }
            let paused = tributary_core::stage::is_paused(&f.stage, &f.region);
            Ok(AdminReply {
                json: String::new(),
                message: format!(
                    "triggered {}/{}{}",
                    f.stage,
                    f.region,
                    if paused { " (it is paused: the pass starts when resumed)" } else { "" }
                ),
                ..Default::default()
            })
        });
        self.audited(caller.as_ref(), "TriggerRun", &FlowArgs { stage: &f.stage, region: &f.region }, r).await
    }

    async fn failover(&self, req: Request<DrRequest>) -> std::result::Result<Response<AdminReply>, Status> {
        self.dr_switch(req, "secondary", "Failover").await
    }

    async fn failback(&self, req: Request<DrRequest>) -> std::result::Result<Response<AdminReply>, Status> {
        self.dr_switch(req, "primary", "Failback").await
    }

    async fn checkpoint(&self, req: Request<TableRef>) -> std::result::Result<Response<AdminReply>, Status> {
        let caller = req.extensions().get::<Caller>().cloned();
        let t = req.into_inner();
        let r = async {
            let loc = self.table_location(&t.table)?;
            let table = Table::open_existing(&t.table, &loc)
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .ok_or_else(|| Status::not_found(format!("no Delta table at {}", t.table)))?;
            let version = table.table.version().map(|v| v as i64).unwrap_or(-1);
            deltalake::checkpoints::create_checkpoint(&table.table, None)
                .await
                .map_err(|e| Status::internal(format!("checkpoint of {}: {e}", t.table)))?;
            Ok(AdminReply {
                json: String::new(),
                message: format!("checkpoint of {} at version {version}", t.table),
                version,
                files: vec![],
            })
        }
        .await;
        self.audited(caller.as_ref(), "Checkpoint", &serde_json::json!({"table": t.table}), r).await
    }

    async fn compact(&self, req: Request<CompactRequest>) -> std::result::Result<Response<AdminReply>, Status> {
        let caller = req.extensions().get::<Caller>().cloned();
        let c = req.into_inner();
        let r = async {
            let loc = self.table_location(&c.table)?;
            let mut table = Table::open_existing(&c.table, &loc)
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .ok_or_else(|| Status::not_found(format!("no Delta table at {}", c.table)))?;
            let w = Writer { stage: "admin".into(), region: String::new(), threads: 1, attempts: 20 };
            let rep = table
                .compact(c.min_files.max(2) as usize, &w)
                .await
                .map_err(|e| Status::internal(format!("compaction of {}: {e}", c.table)))?;
            Ok(AdminReply {
                json: String::new(),
                message: format!(
                    "compacted {}: {} partitions, {} files into their rewrite ({} rows, unchanged); {} partitions skipped (rewritten meanwhile); {} live files now",
                    c.table, rep.partitions, rep.files_removed, rep.rows, rep.skipped, rep.files_after
                ),
                version: rep.version,
                files: vec![],
            })
        }
        .await;
        self.audited(caller.as_ref(), "Compact", &serde_json::json!({"table": c.table, "min_files": c.min_files}), r)
            .await
    }

    async fn enforce_retention(
        &self,
        req: Request<RetentionRequest>,
    ) -> std::result::Result<Response<AdminReply>, Status> {
        let caller = req.extensions().get::<Caller>().cloned();
        let months = match req.into_inner().months {
            0 => self.cfg.retention.months,
            m => m,
        };
        let r = async {
            if months == 0 {
                return Err(Status::invalid_argument("retention of 0 months: nothing would be kept"));
            }
            let today = chrono::Utc::now().date_naive();
            let report = crate::retention::enforce(&self.cfg, months, today)
                .await
                .map_err(|e| Status::internal(format!("retention: {e}")))?;
            let files: usize = report.iter().map(|(_, n)| n).sum();
            Ok(AdminReply {
                json: String::new(),
                message: format!(
                    "retention {months} months (before {}): {files} files removed from {} tables",
                    crate::retention::cutoff(today, months),
                    report.len()
                ),
                files: report.iter().map(|(t, n)| format!("{t}: {n} files")).collect(),
                version: 0,
            })
        }
        .await;
        self.audited(caller.as_ref(), "EnforceRetention", &serde_json::json!({"months": months}), r).await
    }

    async fn vacuum(&self, req: Request<VacuumRequest>) -> std::result::Result<Response<AdminReply>, Status> {
        let caller = req.extensions().get::<Caller>().cloned();
        let v = req.into_inner();
        let r = async {
            if v.retention_hours < 168 {
                return Err(Status::invalid_argument(format!(
                    "retention_hours {} < 168: readers and time travel of the last 7 days must keep their files",
                    v.retention_hours
                )));
            }
            let loc = self.table_location(&v.table)?;
            let table = Table::open_existing(&v.table, &loc)
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .ok_or_else(|| Status::not_found(format!("no Delta table at {}", v.table)))?;
            let (t, metrics) = table
                .table
                .clone()
                .vacuum()
                .with_retention_period(chrono::Duration::hours(v.retention_hours as i64))
                .with_dry_run(v.dry_run)
                .await
                .map_err(|e| Status::internal(format!("vacuum of {}: {e}", v.table)))?;
            Ok(AdminReply {
                json: String::new(),
                message: format!(
                    "vacuum of {}{}: {} files",
                    v.table,
                    if v.dry_run { " (dry run)" } else { "" },
                    metrics.files_deleted.len()
                ),
                version: t.version().map(|v| v as i64).unwrap_or(-1),
                files: metrics.files_deleted,
            })
        }
        .await;
        let args = VacuumArgs { table: &v.table, retention_hours: v.retention_hours, dry_run: v.dry_run };
        self.audited(caller.as_ref(), "Vacuum", &args, r).await
    }

    async fn forget(&self, req: Request<ForgetRequest>) -> std::result::Result<Response<AdminReply>, Status> {
        let caller = req.extensions().get::<Caller>().cloned();
        let f = req.into_inner();
        let wait = std::time::Duration::from_secs(if f.wait_secs == 0 { 300 } else { f.wait_secs as u64 });
        let r = crate::forget::forget(&self.cfg, &f.customer_id, Some(&f.request_id), wait)
            .await
            .map_err(|e| match e.kind {
                tributary_core::ErrorKind::User => Status::failed_precondition(e.to_string()),
                _ => Status::internal(e.to_string()),
            })
            .and_then(|o| {
                let files = o
                    .tables
                    .iter()
                    .map(|t| {
                        format!(
                            "{}: {} rows deleted, {} rows redacted, {} files rewritten (version {})",
                            t.table, t.rows_deleted, t.rows_redacted, t.files_rewritten, t.version
                        )
                    })
                    .collect();
                let message = format!(
                    "request {}: {} rows deleted and {} redacted to {:?} in {} tables, {} files deleted; proof: {} \
                     Parquet and {} log files scanned, {} still holding the customer; deadline {}",
                    o.request_id,
                    o.rows_deleted(),
                    o.rows_redacted(),
                    o.tag,
                    o.tables.len(),
                    o.files_deleted,
                    o.proof.parquet_files,
                    o.proof.log_files,
                    o.proof.hits.len(),
                    o.deadline
                );
                let json = serde_json::to_string(&o).unwrap_or_default();
                if o.proof.hits.is_empty() {
                    Ok(AdminReply { message, files, version: 0, json })
                } else {
                    Err(Status::data_loss(format!("{message}: {:?}", o.proof.hits)))
                }
            });
        // The audit names the customer by hash only.
        let args = serde_json::json!({"customer_sha256": crate::forget::customer_hash(&f.customer_id),
                                      "request_id": f.request_id, "wait_secs": f.wait_secs});
        self.audited(caller.as_ref(), "Forget", &args, r).await
    }

    async fn forget_status(
        &self,
        req: Request<ForgetStatusRequest>,
    ) -> std::result::Result<Response<AdminReply>, Status> {
        let caller = req.extensions().get::<Caller>().cloned();
        let r =
            crate::forget::requests::list(&self.cfg).await.map_err(|e| Status::internal(e.to_string())).map(|list| {
                let rfc = crate::forget::requests::rfc3339;
                let files = list
                    .iter()
                    .map(|s| {
                        format!(
                            "{} customer {}… {} requested {} deadline {}{}{}",
                            s.request_id,
                            &s.customer_sha256[..12.min(s.customer_sha256.len())],
                            s.status,
                            rfc(s.requested_at_us),
                            rfc(s.deadline_us),
                            s.completed_at_us.map(|c| format!(" completed {}", rfc(c))).unwrap_or_default(),
                            if s.overdue { " OVERDUE" } else { "" }
                        )
                    })
                    .collect();
                let open = list.iter().filter(|s| s.completed_at_us.is_none()).count();
                let overdue = list.iter().filter(|s| s.overdue).count();
                AdminReply {
                    message: format!("{} erasure requests: {open} open, {overdue} overdue", list.len()),
                    files,
                    version: 0,
                    json: serde_json::to_string(&list).unwrap_or_default(),
                }
            });
        self.audited(caller.as_ref(), "ForgetStatus", &serde_json::json!({}), r).await
    }
}

/// Registers the Admin service and the audit of refused calls for this process's gRPC server.
pub fn register(cfg: &Config, service: &str) {
    let cfg = Arc::new(cfg.clone());
    let service = service.to_string();
    let (c2, s2) = (cfg.clone(), service.clone());
    tributary_core::server::register_admin(
        Box::new(move |routes| {
            routes.add_service(AdminServer::new(AdminService { cfg: cfg.clone(), service: service.clone() }))
        }),
        Box::new(move |path, who, role, status| {
            let (loc, service) = (audit_location(&c2), s2.clone());
            let (method, who, message) =
                (path.rsplit('/').next().unwrap_or(path).to_string(), who.to_string(), status.message().to_string());
            tokio::spawn(async move {
                let rec = AuditRecord {
                    caller: &who,
                    role,
                    method: &method,
                    arguments: serde_json::Value::Null,
                    outcome: "denied",
                    message: &message,
                };
                if let Err(e) = append_audit(&loc, &service, &[rec]).await {
                    tracing::error!(error = %e, "writing the audit record of a refused call failed");
                }
            });
        }),
    );
}
