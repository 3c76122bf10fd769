//! A task the scheduler cancels stops working. Ballista aborts a cancelled task's future, but
//! its shuffle writer drives the plan from tasks of its own, which go on until the plan is
//! done, and an operator that computes without yielding (a join of large inputs) keeps the
//! task threads from even seeing the abort: a query cancelled at its time limit kept both
//! cores of an executor busy. Here every operator of a task's plan stops giving rows once its
//! task is stopped, so that the plan ends at its next batch; a task is stopped when its run
//! is dropped, or when a watcher on a thread of its own finds its job ended on the scheduler.

use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use ballista_core::JobId;
use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
use ballista_core::serde::protobuf::{
    GetJobStatusParams, RuntimeStatsReport, ShuffleWritePartition, TaskColumnStats,
    WindowStateReport, job_status,
};
use ballista_executor::execution_engine::{
    DefaultExecutionEngine, ExecutionEngine, QueryStageExecutor,
};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::metrics::MetricsSet;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties,
    ReplaceChildrenOptions,
};
use datafusion::prelude::SessionConfig;
use futures::Stream;

/// Ballista's execution of tasks, whose plans stop when their task is cancelled.
pub(super) struct Stopping {
    engine: DefaultExecutionEngine,
    running: Running,
}

/// The stop flags of the tasks running, by job.
#[derive(Default, Clone)]
struct Running(Arc<Mutex<HashMap<String, Vec<Weak<AtomicBool>>>>>);

/// How often the watcher asks the scheduler about the jobs of running tasks.
const WATCH_EVERY: Duration = Duration::from_secs(1);

impl Stopping {
    /// Tasks that stop when their job ends on `scheduler` (`http://host:port`).
    pub(super) fn new(scheduler: String) -> Self {
        let running = Running::default();
        let watched = running.clone();
        let watcher = std::thread::Builder::new()
            .name("apiscope-task-watch".into())
            .spawn(move || watch(scheduler, watched));
        if let Err(error) = watcher {
            tracing::warn!(%error, "cannot start the task watcher: cancelled jobs stop later");
        }
        Self {
            engine: DefaultExecutionEngine::new(),
            running,
        }
    }
}

/// Stops the tasks whose job is no longer running on the scheduler. On a thread and runtime
/// of its own: the task threads may be too busy to hear anything.
fn watch(scheduler: String, running: Running) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::warn!(%error, "cannot start the task watcher: cancelled jobs stop later");
            return;
        }
    };
    runtime.block_on(async {
        let mut client = None;
        loop {
            tokio::time::sleep(WATCH_EVERY).await;
            let jobs: Vec<String> = {
                let mut running = running.0.lock().unwrap_or_else(|e| e.into_inner());
                running.retain(|_, flags| {
                    flags.retain(|flag| flag.strong_count() > 0);
                    !flags.is_empty()
                });
                running.keys().cloned().collect()
            };
            if jobs.is_empty() {
                continue;
            }
            if client.is_none() {
                client = SchedulerGrpcClient::connect(scheduler.clone()).await.ok();
            }
            let Some(scheduler) = client.as_mut() else {
                continue;
            };
            for job_id in jobs {
                let asked = scheduler
                    .get_job_status(GetJobStatusParams {
                        job_id: job_id.clone(),
                    })
                    .await;
                let ended = match asked {
                    Ok(answer) => !matches!(
                        answer.into_inner().status.and_then(|status| status.status),
                        Some(job_status::Status::Queued(_) | job_status::Status::Running(_))
                    ),
                    Err(_) => false,
                };
                if ended {
                    let running = running.0.lock().unwrap_or_else(|e| e.into_inner());
                    for flag in running.get(&job_id).into_iter().flatten() {
                        if let Some(flag) = flag.upgrade() {
                            flag.store(true, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
    });
}

impl ExecutionEngine for Stopping {
    fn create_query_stage_exec(
        &self,
        job_id: JobId,
        stage_id: usize,
        task_id: usize,
        global_output_partition_ids: Vec<usize>,
        plan: Arc<dyn ExecutionPlan>,
        work_dir: &str,
        config: &SessionConfig,
    ) -> Result<Arc<dyn QueryStageExecutor>> {
        let stopped = Arc::new(AtomicBool::new(false));
        self.running
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(job_id.to_string())
            .or_default()
            .push(Arc::downgrade(&stopped));
        let plan = stop_below(plan, &stopped)?;
        let stage = self.engine.create_query_stage_exec(
            job_id,
            stage_id,
            task_id,
            global_output_partition_ids,
            plan,
            work_dir,
            config,
        )?;
        Ok(Arc::new(StoppingStage { stage, stopped }))
    }
}

/// `plan` with every operator below its root giving no more rows once `stopped` is set: an
/// operator that works a long time on rows it holds (a join's buffered side) ends at its next
/// batch.
fn stop_below(
    plan: Arc<dyn ExecutionPlan>,
    stopped: &Arc<AtomicBool>,
) -> Result<Arc<dyn ExecutionPlan>> {
    let children = plan
        .children()
        .into_iter()
        .map(|child| {
            let input = stop_below(child.clone(), stopped)?;
            let stoppable = Stoppable {
                input,
                stopped: stopped.clone(),
            };
            Ok(Arc::new(stoppable) as Arc<dyn ExecutionPlan>)
        })
        .collect::<Result<Vec<_>>>()?;
    if children.is_empty() {
        return Ok(plan);
    }
    // The operators keep their properties: each one's input is the same plan as before.
    plan.replace_children(
        children,
        ReplaceChildrenOptions::new(ChildrenPropertiesMode::Keep),
    )
}

/// A task's stage, whose operators stop once its run is dropped (cancelled or ended).
struct StoppingStage {
    stage: Arc<dyn QueryStageExecutor>,
    stopped: Arc<AtomicBool>,
}

impl fmt::Debug for StoppingStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.stage, f)
    }
}

impl fmt::Display for StoppingStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.stage, f)
    }
}

/// A task on `/metrics`: running while it lives, then counted by its outcome (stopped
/// when its run was dropped before it ended).
struct Counted {
    started: std::time::Instant,
    outcome: Option<&'static str>,
}

impl Counted {
    fn start() -> Self {
        metrics::gauge!("apiscope_executor_running_tasks").increment(1.0);
        Self {
            started: std::time::Instant::now(),
            outcome: None,
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        metrics::gauge!("apiscope_executor_running_tasks").decrement(1.0);
        metrics::histogram!("apiscope_executor_task_seconds")
            .record(self.started.elapsed().as_secs_f64());
        let outcome = self.outcome.unwrap_or("stopped");
        metrics::counter!("apiscope_executor_tasks_total", "outcome" => outcome).increment(1);
    }
}

/// Stops the plan when dropped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[async_trait::async_trait]
impl QueryStageExecutor for StoppingStage {
    async fn execute_query_stage(
        &self,
        task_id: usize,
        context: Arc<TaskContext>,
    ) -> Result<Vec<ShuffleWritePartition>> {
        let _stop = StopOnDrop(self.stopped.clone());
        let mut counted = Counted::start();
        let outcome = self.stage.execute_query_stage(task_id, context).await;
        counted.outcome = Some(match &outcome {
            Ok(partitions) => {
                let sum = |of: fn(&ShuffleWritePartition) -> u64| partitions.iter().map(of).sum();
                metrics::counter!("apiscope_executor_shuffle_bytes_written_total")
                    .increment(sum(|p| p.num_bytes));
                metrics::counter!("apiscope_executor_shuffle_rows_written_total")
                    .increment(sum(|p| p.num_rows));
                "succeeded"
            }
            Err(_) if self.stopped.load(Ordering::Relaxed) => "stopped",
            Err(_) => "failed",
        });
        outcome
    }

    fn collect_plan_metrics(&self) -> Vec<MetricsSet> {
        self.stage.collect_plan_metrics()
    }

    fn collect_runtime_stats_reports(&self) -> Vec<RuntimeStatsReport> {
        self.stage.collect_runtime_stats_reports()
    }

    fn collect_window_state_reports(&self) -> Result<Vec<WindowStateReport>> {
        self.stage.collect_window_state_reports()
    }

    fn collect_column_stats(&self) -> Vec<TaskColumnStats> {
        self.stage.collect_column_stats()
    }
}

/// Above an operator of a task's plan: no more rows once the task is stopped.
#[derive(Debug)]
struct Stoppable {
    input: Arc<dyn ExecutionPlan>,
    stopped: Arc<AtomicBool>,
}

impl DisplayAs for Stoppable {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        self.input.fmt_as(t, f)
    }
}

impl ExecutionPlan for Stoppable {
    fn name(&self) -> &str {
        self.input.name()
    }

    fn schema(&self) -> SchemaRef {
        self.input.schema()
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        // Ballista's engine finds the shuffle reads below, to tell them where its files are.
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let input = children.into_iter().next().ok_or_else(|| {
            DataFusionError::Internal("a stoppable operator needs its input".into())
        })?;
        Ok(Arc::new(Stoppable {
            input,
            stopped: self.stopped.clone(),
        }))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        Ok(Box::pin(StopStream {
            input: self.input.execute(partition, context)?,
            stopped: self.stopped.clone(),
        }))
    }

    /// None: the operator it wraps, its child, reports its own. (Ballista lines up a
    /// stage's metrics with its plan's operators, and logs an error when they differ.)
    fn metrics(&self) -> Option<MetricsSet> {
        None
    }
}

/// The rows of an operator until its task is stopped.
struct StopStream {
    input: SendableRecordBatchStream,
    stopped: Arc<AtomicBool>,
}

impl Stream for StopStream {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.stopped.load(Ordering::Relaxed) {
            return Poll::Ready(Some(Err(DataFusionError::Execution(
                "the task was cancelled".into(),
            ))));
        }
        self.input.as_mut().poll_next(cx)
    }
}

impl RecordBatchStream for StopStream {
    fn schema(&self) -> SchemaRef {
        self.input.schema()
    }
}
