//! One statement on the cluster: submitted to the scheduler as a job, followed until it
//! ends, its answer read from the executors; cancelled if the front-end stops waiting for it
//! (a time limit, a client gone), so that the executors stop working on it too.

use std::sync::Arc;
use std::time::Duration;

use super::EXECUTOR_LOST;
use arrow::array::RecordBatch;
use ballista_core::client::BallistaClient;
use ballista_core::serde::protobuf::execute_query_params::Query;
use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
use ballista_core::serde::protobuf::{
    CancelJobParams, ExecuteQueryParams, GetJobStatusParams, KeyValuePair, PartitionLocation,
    execute_query_result, job_status,
};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::SendableRecordBatchStream;
use futures::{Stream, StreamExt, TryStreamExt};
use tonic::transport::Channel;

/// The largest message exchanged with the scheduler and the executors: a plan, or one
/// batch of an answer.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// How often a job's state is asked for at first, and at most. Most statements are short:
/// the first answers come quickly, and a long one is asked about ten times a second.
const FIRST_POLL: Duration = Duration::from_millis(5);
const LAST_POLL: Duration = Duration::from_millis(100);

/// How many times a job is run when an executor is lost while it runs (the scheduler fails
/// such a job rather than answer it with rows possibly counted twice).
const ATTEMPTS: usize = 3;

/// A statement for the cluster.
pub(super) struct Job {
    pub(super) scheduler: String,
    pub(super) session_id: String,
    pub(super) plan: Arc<Vec<u8>>,
    /// The session options the executors run it with.
    pub(super) settings: Vec<KeyValuePair>,
}

impl Job {
    /// Submits the job, waits for it to end, and streams its answer.
    pub(super) async fn run(self) -> Result<impl Stream<Item = Result<RecordBatch>> + Send> {
        let channel = Channel::from_shared(self.scheduler.clone())
            .map_err(|error| self.unreachable(&error))?
            .connect_timeout(Duration::from_secs(10))
            .connect()
            .await
            .map_err(|error| self.unreachable(&error))?;
        let client = SchedulerGrpcClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        let mut attempt = 1;
        loop {
            match self.attempt(client.clone()).await? {
                Ok(answer) => return Ok(answer),
                Err(lost) if lost.starts_with(EXECUTOR_LOST) && attempt < ATTEMPTS => {
                    tracing::warn!(attempt, error = %lost, "running a cluster query again");
                    attempt += 1;
                }
                Err(failed) => {
                    let again = if failed.starts_with(EXECUTOR_LOST) {
                        format!(" (it was run {ATTEMPTS} times; run it again)")
                    } else {
                        String::new()
                    };
                    return Err(DataFusionError::Execution(format!(
                        "the query failed on the cluster: {failed}{again}"
                    )));
                }
            }
        }
    }

    /// The error of a scheduler that cannot be reached.
    fn unreachable(&self, error: &dyn std::fmt::Display) -> DataFusionError {
        DataFusionError::Execution(format!(
            "cannot reach the cluster's scheduler at {}: {error}",
            self.scheduler
        ))
    }

    /// Submits the job once and waits for it to end: its answer, or the error it failed with.
    async fn attempt(
        &self,
        mut client: SchedulerGrpcClient<Channel>,
    ) -> Result<std::result::Result<impl Stream<Item = Result<RecordBatch>> + Send + use<>, String>>
    {
        let mut request = tonic::Request::new(ExecuteQueryParams {
            query: Some(Query::PhysicalPlan(self.plan.to_vec())),
            settings: self.settings.clone(),
            session_id: self.session_id.clone(),
            operation_id: format!("{}-{}", self.session_id, super::unique()),
        });
        ballista_core::version::insert_version_header(request.metadata_mut());
        let submitted = client
            .execute_query(request)
            .await
            .map_err(|status| self.unreachable(&status.message()))?
            .into_inner();
        let job_id = match submitted.result {
            Some(execute_query_result::Result::Success(success)) => success.job_id,
            Some(execute_query_result::Result::Failure(failure)) => {
                return Err(DataFusionError::Execution(format!(
                    "the cluster refused the query: {failure:?}"
                )));
            }
            None => {
                return Err(DataFusionError::Execution(
                    "the cluster's scheduler gave no answer to the query".into(),
                ));
            }
        };
        let mut running = Running {
            client: client.clone(),
            job_id: job_id.clone(),
            ended: false,
        };
        let mut poll = FIRST_POLL;
        loop {
            let status = client
                .get_job_status(GetJobStatusParams {
                    job_id: job_id.clone(),
                })
                .await
                .map_err(|status| self.unreachable(&status.message()))?
                .into_inner();
            match status.status.and_then(|status| status.status) {
                None | Some(job_status::Status::Queued(_) | job_status::Status::Running(_)) => {
                    tokio::time::sleep(poll).await;
                    poll = (poll * 3 / 2).min(LAST_POLL);
                }
                Some(job_status::Status::Failed(failed)) => {
                    running.ended = true;
                    return Ok(Err(failed.error));
                }
                Some(job_status::Status::Successful(done)) => {
                    running.ended = true;
                    let answer = futures::stream::iter(done.partition_location)
                        .then(fetch)
                        .try_flatten();
                    return Ok(Ok(answer));
                }
            }
        }
    }
}

/// One partition of a job's answer, from the executor that holds it.
async fn fetch(location: PartitionLocation) -> Result<SendableRecordBatchStream> {
    let layout = location.layout();
    let (Some(executor), Some(partition)) = (location.executor_meta, location.partition_id) else {
        return Err(DataFusionError::Execution(
            "the scheduler named an answer without its executor".into(),
        ));
    };
    let port = u16::try_from(executor.port)
        .map_err(|_| DataFusionError::Execution(format!("executor {} has no port", executor.id)))?;
    let mut client =
        BallistaClient::try_new(&executor.host, port, MAX_MESSAGE, false, None, 3, 100, 0, 0)
            .await
            .map_err(|error| {
                DataFusionError::Execution(format!(
                    "cannot reach executor {} at {}:{port} for the answer: {error}",
                    executor.id, executor.host
                ))
            })?;
    client
        .fetch_partition_proxied(
            &executor.id,
            &partition.into(),
            location.file_id,
            layout,
            &executor.host,
            port,
            true,
        )
        .await
        .map_err(|error| error.into_datafusion())
}

/// A job not yet ended; cancelled when dropped so.
struct Running {
    client: SchedulerGrpcClient<Channel>,
    job_id: String,
    ended: bool,
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut client = self.client.clone();
        let job_id = std::mem::take(&mut self.job_id);
        runtime.spawn(async move {
            if let Err(status) = client
                .cancel_job(CancelJobParams {
                    job_id: job_id.clone(),
                })
                .await
            {
                tracing::warn!(job_id, error = %status.message(), "cannot cancel a cluster job");
            }
        });
    }
}
