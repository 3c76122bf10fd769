//! `apiscope scheduler`: Ballista's scheduler, put together here from its parts rather than
//! started whole, for two things Ballista's own server does not do.
//!
//! - **A job that outlived an executor is failed, not answered.** When an executor is lost
//!   (its heartbeats stop, it says it stops, a task cannot be launched on it, or a task
//!   cannot read its output), Ballista 55 runs the lost tasks again; a stage it rolls back
//!   can hand the next stage the rows of both of its runs, and the job then ends
//!   "successful" with groups counted twice (measured: a join and an aggregation, one of two
//!   executors killed 0.7 s in, came back with some groups exactly doubled). Its rollback
//!   also never gives back the task slots of the rolled-back tasks on the executors left, so
//!   the next query can wait forever for a slot. So every job under way when an executor is
//!   lost is cancelled before Ballista hears of the loss (a cancel gives the slots back) and
//!   reported failed, with [`EXECUTOR_LOST`] at the head of its error; a front-end runs it
//!   again from the start.
//! - **`/metrics` on the scheduler's port**: jobs, tasks, stages, shuffle bytes, executors.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::routing::get;
use ballista_core::JobId;
use ballista_core::serde::BallistaCodec;
use ballista_core::serde::protobuf::failed_task::FailedReason;
use ballista_core::serde::protobuf::scheduler_grpc_server::{SchedulerGrpc, SchedulerGrpcServer};
use ballista_core::serde::protobuf::{
    CancelJobParams, CancelJobResult, CleanJobDataParams, CleanJobDataResult,
    CreateUpdateSessionParams, CreateUpdateSessionResult, ExecuteQueryParams, ExecuteQueryResult,
    ExecutorHeartbeat, ExecutorStoppedParams, ExecutorStoppedResult, FailedJob,
    GetJobMetricsParams, GetJobMetricsResult, GetJobStatusParams, GetJobStatusResult,
    HeartBeatParams, HeartBeatResult, PollWorkParams, PollWorkResult, RegisterExecutorParams,
    RegisterExecutorResult, RemoveSessionParams, RemoveSessionResult, UpdateTaskStatusParams,
    UpdateTaskStatusResult, execute_query_result, job_status, task_status,
};
use ballista_core::serde::scheduler::{ExecutorData, ExecutorMetadata};
use ballista_scheduler::cluster::{
    BallistaCluster, BoundTask, ClusterState, ClusterStateEventStream, ExecutorSlot,
};
use ballista_scheduler::config::{SchedulerConfig, TaskDistributionPolicy};
use ballista_scheduler::metrics::SchedulerMetricsCollector;
use ballista_scheduler::scheduler_server::SchedulerServer;

use ballista_scheduler::state::task_manager::JobInfoCache;
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use futures::{Stream, StreamExt};
use metrics_exporter_prometheus::PrometheusHandle;
use query::cluster::EXECUTOR_LOST;
use tonic::{Request, Response, Status};

use crate::{Error, Result};

type Scheduler = SchedulerServer<LogicalPlanNode, PhysicalPlanNode>;

/// How long a lost executor is remembered: longer than any query runs.
const REMEMBERED_MS: u64 = 24 * 3600 * 1000;

/// Serves `scheduler` (built from `config` over `cluster`) on `bind` until it fails.
pub(super) async fn serve(
    bind: SocketAddr,
    config: SchedulerConfig,
    cluster: BallistaCluster,
    metrics: PrometheusHandle,
) -> Result<()> {
    let losses = Arc::new(Losses::default());
    let state = cluster.cluster_state();
    let cluster = BallistaCluster::new(
        Arc::new(Watched {
            inner: state.clone(),
            losses: losses.clone(),
        }),
        cluster.job_state(),
    );
    let codec = BallistaCodec::new(
        Arc::new(ballista_core::serde::BallistaLogicalExtensionCodec::default()),
        config
            .override_physical_codec
            .clone()
            .ok_or_else(|| Error::Server("the scheduler has no plan codec".into()))?,
    );
    let config = Arc::new(config);
    let (max_in, max_out) = (
        config.grpc_server_max_decoding_message_size as usize,
        config.grpc_server_max_encoding_message_size as usize,
    );
    let mut scheduler: Scheduler = SchedulerServer::new(
        config.scheduler_endpoint(),
        cluster,
        codec,
        config,
        Arc::new(Counted),
    );
    scheduler
        .init()
        .await
        .map_err(|error| Error::Server(format!("cannot start the scheduler: {error}")))?;
    let _ = losses.scheduler.set(scheduler.clone());
    let grpc = SchedulerGrpcServer::new(Guarded {
        inner: scheduler,
        losses,
        stages: Mutex::default(),
    })
    .max_decoding_message_size(max_in)
    .max_encoding_message_size(max_out);
    let mut routes = tonic::service::RoutesBuilder::default();
    routes.add_service(grpc);
    let app = routes.routes().into_axum_router().route(
        "/metrics",
        get(move || {
            let executors = state.executor_heartbeats().len();
            metrics::gauge!("apiscope_cluster_executors").set(executors as f64);
            std::future::ready(crate::metrics::rendered(&metrics))
        }),
    );
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .map_err(|error| Error::Server(format!("cannot listen on {bind}: {error}")))?;
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
    .map_err(|error| Error::Server(format!("the scheduler stopped: {error}")))
}

/// Milliseconds since the epoch, the clock of Ballista's job times.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// Executors lost, jobs whose tasks could not read an executor's output, and the jobs under
/// way, to cancel when an executor is lost.
#[derive(Default)]
struct Losses {
    inner: Mutex<Lost>,
    /// Jobs submitted and not yet seen to end, with when they were submitted.
    open: Mutex<HashMap<String, u64>>,
    /// The scheduler, once started.
    scheduler: OnceLock<Scheduler>,
}

#[derive(Default)]
struct Lost {
    /// When each executor was removed, oldest first.
    executors: VecDeque<(u64, String)>,
    /// Jobs a task of which could not fetch from an executor: when, and which executor.
    fetches: HashMap<String, (u64, String)>,
}

impl Losses {
    /// Notes `executor` lost, and cancels the jobs under way.
    async fn executor(&self, executor: &str) {
        let now = now_ms();
        {
            let mut lost = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            lost.executors.push_back((now, executor.to_owned()));
            while lost
                .executors
                .front()
                .is_some_and(|(at, _)| at + REMEMBERED_MS < now)
            {
                lost.executors.pop_front();
            }
        }
        metrics::counter!("apiscope_cluster_executors_lost_total").increment(1);
        let open: Vec<String> = {
            let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
            open.retain(|_, at| *at + REMEMBERED_MS >= now);
            open.keys().cloned().collect()
        };
        for job_id in open {
            self.cancel(&job_id).await;
        }
    }

    /// Notes that a task of `job_id` could not read `executor`'s output, and cancels the job.
    async fn fetch_failed(&self, job_id: &str, executor: &str) {
        let now = now_ms();
        {
            let mut lost = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            lost.fetches.retain(|_, (at, _)| *at + REMEMBERED_MS >= now);
            lost.fetches
                .insert(job_id.to_owned(), (now, executor.to_owned()));
        }
        self.cancel(job_id).await;
    }

    /// Cancels `job_id` if it is still under way.
    async fn cancel(&self, job_id: &str) {
        let Some(scheduler) = self.scheduler.get() else {
            return;
        };
        let asked = Request::new(GetJobStatusParams {
            job_id: job_id.to_owned(),
        });
        let under_way = match SchedulerGrpc::get_job_status(scheduler, asked).await {
            Ok(answer) => matches!(
                answer.into_inner().status.and_then(|status| status.status),
                Some(job_status::Status::Queued(_) | job_status::Status::Running(_))
            ),
            Err(_) => false,
        };
        if !under_way {
            self.ended(job_id);
            return;
        }
        metrics::counter!("apiscope_cluster_jobs_total", "outcome" => "executor_lost").increment(1);
        let cancel = Request::new(CancelJobParams {
            job_id: job_id.to_owned(),
        });
        if let Err(error) = SchedulerGrpc::cancel_job(scheduler, cancel).await {
            tracing::warn!(job_id, %error, "cannot cancel a job");
        }
    }

    fn submitted(&self, job_id: &str) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.insert(job_id.to_owned(), now_ms());
    }

    fn ended(&self, job_id: &str) {
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(job_id);
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .fetches
            .remove(job_id);
    }

    /// The executor lost while the job queued at `queued_at` and ended at `ended_at` (not
    /// yet when `None`) was under way, if one was.
    fn during(&self, job_id: &str, queued_at: u64, ended_at: Option<u64>) -> Option<String> {
        let lost = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, executor)) = lost.fetches.get(job_id) {
            return Some(executor.clone());
        }
        lost.executors
            .iter()
            .find(|(at, _)| *at >= queued_at && ended_at.is_none_or(|end| end >= *at))
            .map(|(_, executor)| executor.clone())
    }

    /// `status` as the front-end is told it: failed if an executor was lost while the job
    /// ran. Returns whether the job is still running inside the scheduler (to be cancelled:
    /// a job submitted as the executor was lost may have escaped the cancel).
    fn judge(&self, status: &mut ballista_core::serde::protobuf::JobStatus) -> bool {
        let (queued_at, started_at, ended_at) = match &status.status {
            Some(job_status::Status::Running(job)) => (job.queued_at, job.started_at, None),
            Some(job_status::Status::Successful(job)) => {
                (job.queued_at, job.started_at, Some(job.ended_at))
            }
            Some(job_status::Status::Failed(job)) => {
                (job.queued_at, job.started_at, Some(job.ended_at))
            }
            _ => return false,
        };
        let lost = self.during(&status.job_id, queued_at, ended_at);
        if ended_at.is_some() {
            self.ended(&status.job_id);
        }
        let Some(executor) = lost else {
            return false;
        };
        status.status = Some(job_status::Status::Failed(FailedJob {
            error: format!(
                "{EXECUTOR_LOST} (executor {executor}); the scheduler's recovery from a lost \
                 executor can count rows twice, so the job was stopped"
            ),
            queued_at,
            started_at,
            ended_at: ended_at.unwrap_or_else(now_ms),
        }));
        ended_at.is_none()
    }
}

/// The cluster's state as Ballista keeps it, noting each executor removed (for whatever
/// reason) before Ballista reschedules its tasks.
struct Watched {
    inner: Arc<dyn ClusterState>,
    losses: Arc<Losses>,
}

#[async_trait::async_trait]
impl ClusterState for Watched {
    async fn init(&self) -> ballista_core::error::Result<()> {
        self.inner.init().await
    }

    async fn bind_schedulable_tasks(
        &self,
        distribution: TaskDistributionPolicy,
        active_jobs: Arc<HashMap<JobId, JobInfoCache>>,
        executors: Option<HashSet<String>>,
    ) -> ballista_core::error::Result<Vec<BoundTask>> {
        self.inner
            .bind_schedulable_tasks(distribution, active_jobs, executors)
            .await
    }

    async fn unbind_tasks(&self, slots: Vec<ExecutorSlot>) -> ballista_core::error::Result<()> {
        self.inner.unbind_tasks(slots).await
    }

    async fn register_executor(
        &self,
        metadata: ExecutorMetadata,
        spec: ExecutorData,
    ) -> ballista_core::error::Result<()> {
        self.inner.register_executor(metadata, spec).await
    }

    async fn save_executor_metadata(
        &self,
        metadata: ExecutorMetadata,
    ) -> ballista_core::error::Result<()> {
        self.inner.save_executor_metadata(metadata).await
    }

    async fn get_executor_metadata(
        &self,
        executor_id: &str,
    ) -> ballista_core::error::Result<ExecutorMetadata> {
        self.inner.get_executor_metadata(executor_id).await
    }

    async fn registered_executor_metadata(&self) -> Vec<ExecutorMetadata> {
        self.inner.registered_executor_metadata().await
    }

    async fn save_executor_heartbeat(
        &self,
        heartbeat: ExecutorHeartbeat,
    ) -> ballista_core::error::Result<()> {
        self.inner.save_executor_heartbeat(heartbeat).await
    }

    async fn remove_executor(&self, executor_id: &str) -> ballista_core::error::Result<()> {
        // First: Ballista rolls back the jobs that used the executor once this returns.
        tracing::warn!(
            executor_id,
            "an executor was lost: the queries under way are cancelled, and their front-ends \
             run them again"
        );
        self.losses.executor(executor_id).await;
        self.inner.remove_executor(executor_id).await
    }

    fn executor_heartbeats(&self) -> HashMap<String, ExecutorHeartbeat> {
        self.inner.executor_heartbeats()
    }

    fn get_executor_heartbeat(&self, executor_id: &str) -> Option<ExecutorHeartbeat> {
        self.inner.get_executor_heartbeat(executor_id)
    }

    async fn cluster_state_events(&self) -> ballista_core::error::Result<ClusterStateEventStream> {
        self.inner.cluster_state_events().await
    }
}

/// Ballista's scheduler service, with each job's status judged by [`Losses`] and its tasks
/// counted.
struct Guarded {
    inner: Scheduler,
    losses: Arc<Losses>,
    /// The stages (job, stage, attempt) a task has finished in, to count each stage once;
    /// forgotten when the job's end is reported.
    stages: Mutex<HashSet<(String, u32, u32)>>,
}

impl Guarded {
    /// Counts the tasks of an update, and cancels the jobs a task of which could not read
    /// an executor's output, before Ballista acts on them.
    async fn note(&self, update: &UpdateTaskStatusParams) {
        let mut unread = Vec::new();
        {
            let mut stages = self.stages.lock().unwrap_or_else(|e| e.into_inner());
            for task in &update.task_status {
                match &task.status {
                    Some(task_status::Status::Successful(done)) => {
                        metrics::counter!("apiscope_cluster_tasks_total", "outcome" => "succeeded")
                            .increment(1);
                        let bytes: u64 = done.partitions.iter().map(|p| p.num_bytes).sum();
                        metrics::counter!("apiscope_cluster_shuffle_bytes_total").increment(bytes);
                        let stage = (task.job_id.clone(), task.stage_id, task.stage_attempt_num);
                        if stages.insert(stage) {
                            metrics::counter!("apiscope_cluster_stages_total").increment(1);
                        }
                    }
                    Some(task_status::Status::Failed(failed)) => {
                        metrics::counter!("apiscope_cluster_tasks_total", "outcome" => "failed")
                            .increment(1);
                        if let Some(FailedReason::FetchPartitionError(fetch)) =
                            &failed.failed_reason
                        {
                            unread.push((task.job_id.clone(), fetch.executor_id.clone()));
                        }
                    }
                    _ => {}
                }
            }
        }
        for (job_id, executor) in unread {
            self.losses.fetch_failed(&job_id, &executor).await;
        }
    }

    /// Judges a status for the front-end; cancels the job if it is failed here but still
    /// under way.
    async fn judge(&self, result: &mut GetJobStatusResult) {
        let Some(status) = result.status.as_mut() else {
            return;
        };
        let still_running = self.losses.judge(status);
        if !matches!(
            status.status,
            Some(job_status::Status::Queued(_) | job_status::Status::Running(_))
        ) {
            let mut stages = self.stages.lock().unwrap_or_else(|e| e.into_inner());
            stages.retain(|(job, _, _)| *job != status.job_id);
        }
        if still_running {
            self.losses.cancel(&status.job_id).await;
        }
    }
}

type Answer<T> = std::result::Result<Response<T>, Status>;
type StatusStream =
    Pin<Box<dyn Stream<Item = std::result::Result<GetJobStatusResult, Status>> + Send>>;

#[tonic::async_trait]
impl SchedulerGrpc for Guarded {
    async fn poll_work(&self, request: Request<PollWorkParams>) -> Answer<PollWorkResult> {
        self.inner.poll_work(request).await
    }

    async fn register_executor(
        &self,
        request: Request<RegisterExecutorParams>,
    ) -> Answer<RegisterExecutorResult> {
        self.inner.register_executor(request).await
    }

    async fn heart_beat_from_executor(
        &self,
        request: Request<HeartBeatParams>,
    ) -> Answer<HeartBeatResult> {
        self.inner.heart_beat_from_executor(request).await
    }

    async fn update_task_status(
        &self,
        request: Request<UpdateTaskStatusParams>,
    ) -> Answer<UpdateTaskStatusResult> {
        self.note(request.get_ref()).await;
        self.inner.update_task_status(request).await
    }

    async fn create_update_session(
        &self,
        request: Request<CreateUpdateSessionParams>,
    ) -> Answer<CreateUpdateSessionResult> {
        self.inner.create_update_session(request).await
    }

    async fn remove_session(
        &self,
        request: Request<RemoveSessionParams>,
    ) -> Answer<RemoveSessionResult> {
        self.inner.remove_session(request).await
    }

    type ExecuteQueryPushStream = StatusStream;

    async fn execute_query_push(
        &self,
        request: Request<ExecuteQueryParams>,
    ) -> Answer<Self::ExecuteQueryPushStream> {
        let losses = self.losses.clone();
        let statuses = self.inner.execute_query_push(request).await?.into_inner();
        let judged = statuses.map(move |result| {
            result.map(|mut result| {
                if let Some(status) = result.status.as_mut() {
                    losses.judge(status);
                }
                result
            })
        });
        Ok(Response::new(Box::pin(judged)))
    }

    async fn execute_query(
        &self,
        request: Request<ExecuteQueryParams>,
    ) -> Answer<ExecuteQueryResult> {
        let answer = self.inner.execute_query(request).await?;
        if let Some(execute_query_result::Result::Success(submitted)) = &answer.get_ref().result {
            self.losses.submitted(&submitted.job_id);
        }
        Ok(answer)
    }

    async fn get_job_status(
        &self,
        request: Request<GetJobStatusParams>,
    ) -> Answer<GetJobStatusResult> {
        let mut response = self.inner.get_job_status(request).await?;
        self.judge(response.get_mut()).await;
        Ok(response)
    }

    async fn get_job_metrics(
        &self,
        request: Request<GetJobMetricsParams>,
    ) -> Answer<GetJobMetricsResult> {
        self.inner.get_job_metrics(request).await
    }

    async fn executor_stopped(
        &self,
        request: Request<ExecutorStoppedParams>,
    ) -> Answer<ExecutorStoppedResult> {
        self.inner.executor_stopped(request).await
    }

    async fn cancel_job(&self, request: Request<CancelJobParams>) -> Answer<CancelJobResult> {
        SchedulerGrpc::cancel_job(&self.inner, request).await
    }

    async fn clean_job_data(
        &self,
        request: Request<CleanJobDataParams>,
    ) -> Answer<CleanJobDataResult> {
        self.inner.clean_job_data(request).await
    }
}

/// Counts jobs as Ballista's scheduler reports them.
struct Counted;

impl SchedulerMetricsCollector for Counted {
    fn record_submitted(&self, _job_id: &JobId, _queued_at: u64, _submitted_at: u64) {
        metrics::counter!("apiscope_cluster_jobs_total", "outcome" => "submitted").increment(1);
    }

    fn record_completed(&self, _job_id: &JobId, queued_at: u64, completed_at: u64) {
        metrics::counter!("apiscope_cluster_jobs_total", "outcome" => "completed").increment(1);
        metrics::histogram!("apiscope_cluster_job_seconds")
            .record(completed_at.saturating_sub(queued_at) as f64 / 1000.0);
    }

    fn record_failed(&self, _job_id: &JobId, _queued_at: u64, _failed_at: u64) {
        metrics::counter!("apiscope_cluster_jobs_total", "outcome" => "failed").increment(1);
    }

    fn record_cancelled(&self, _job_id: &JobId) {
        metrics::counter!("apiscope_cluster_jobs_total", "outcome" => "cancelled").increment(1);
    }

    fn set_pending_tasks_queue_size(&self, value: u64) {
        metrics::gauge!("apiscope_cluster_pending_tasks").set(value as f64);
    }

    fn gather_metrics(&self) -> ballista_core::error::Result<Option<(Vec<u8>, String)>> {
        Ok(None)
    }
}
