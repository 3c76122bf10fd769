//! Queries on an Apache DataFusion Ballista cluster (`--cluster df://host:port`).
//!
//! The front-end plans a statement as it does alone, over the committed files of the store
//! (never a collector's buffer), and sends the physical plan to the scheduler, which cuts it
//! into stages at its exchanges and runs them on the executors. The answer comes back from
//! the executors that hold the last stage's output. What crosses the wire is DataFusion's
//! own plan encoding; apiscope's functions and expressions travel by name or through
//! [`codec::Codec`], which the scheduler and the executors use too.
//!
//! A statement that reads no stored file (the catalog tables, `SELECT 1`) is answered by
//! the front-end alone.

pub mod codec;
mod job;

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use ballista_core::serde::protobuf::KeyValuePair;
use datafusion::catalog::Session;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties, displayable,
};
use datafusion::physical_planner::{DefaultPhysicalPlanner, PhysicalPlanner};
use datafusion_proto::physical_plan::AsExecutionPlan;
use datafusion_proto::protobuf::PhysicalPlanNode;
use prost::Message;

use crate::error::Error;

/// How apiscope's scheduler begins the error of a job under way when an executor was lost;
/// the front-end runs such a job again (see `job.rs`).
pub const EXECUTOR_LOST: &str = "an executor was lost while the query ran";

/// A Ballista scheduler that queries are sent to.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// `http://host:port` of its gRPC service.
    scheduler: String,
    /// The session the scheduler keeps this front-end's settings under.
    session_id: String,
    /// How many partitions a plan is cut into: the tasks of a stage.
    partitions: usize,
}

impl Cluster {
    /// The scheduler at `url` (`df://host:port`), with plans cut into `partitions` tasks
    /// per stage.
    pub fn new(url: &str, partitions: usize) -> crate::Result<Self> {
        let (host, port) = scheduler_address(url)?;
        Ok(Self {
            scheduler: format!("http://{host}:{port}"),
            session_id: format!("apiscope-{}-{}", std::process::id(), unique()),
            partitions: partitions.max(1),
        })
    }

    /// The partitions a plan is cut into.
    pub(crate) fn partitions(&self) -> usize {
        self.partitions
    }

    /// The planner of a session whose queries run on this cluster.
    pub(crate) fn planner(self) -> Arc<ClusterPlanner> {
        Arc::new(ClusterPlanner {
            cluster: Arc::new(self),
            codec: Arc::default(),
        })
    }
}

impl std::fmt::Display for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let address = self.scheduler.trim_start_matches("http://");
        write!(f, "df://{address} ({} partitions)", self.partitions)
    }
}

/// The host and port of a scheduler named `df://HOST:PORT`.
pub fn scheduler_address(url: &str) -> crate::Result<(String, u16)> {
    let wrong = || Error::BadRequest(format!("{url}: a scheduler is named df://HOST:PORT"));
    let address = url.strip_prefix("df://").ok_or_else(wrong)?;
    let (host, port) = address.rsplit_once(':').ok_or_else(wrong)?;
    let port = port.parse().map_err(|_| wrong())?;
    if host.is_empty() {
        return Err(wrong());
    }
    Ok((host.to_owned(), port))
}

/// Nanoseconds since the epoch, to tell sessions of one process apart.
fn unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos())
}

tokio::task_local! {
    /// Set while a statement is planned: a question's SQL, planned inside the statement's
    /// plan, is planned locally and travels with it.
    static PLANNING: ();
}

/// Plans statements as a session alone does, then sends those that read stored files to
/// the cluster.
#[derive(Debug)]
pub(crate) struct ClusterPlanner {
    cluster: Arc<Cluster>,
    codec: Arc<codec::Codec>,
}

#[async_trait]
impl QueryPlanner for ClusterPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session_state: &dyn Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let planner = DefaultPhysicalPlanner::default();
        if PLANNING.try_with(|_| ()).is_ok() {
            return planner
                .create_physical_plan(logical_plan, session_state)
                .await;
        }
        let plan = PLANNING
            .scope(
                (),
                planner.create_physical_plan(logical_plan, session_state),
            )
            .await?;
        if !reads_files(&plan)? {
            return Ok(plan);
        }
        let encoded = encode(&plan, self.codec.as_ref())?;
        Ok(Arc::new(ClusterExec::new(
            plan,
            encoded,
            self.cluster.clone(),
            session_state,
        )))
    }
}

/// Whether `plan` reads any stored file.
fn reads_files(plan: &Arc<dyn ExecutionPlan>) -> Result<bool> {
    let mut found = false;
    plan.apply(|node| {
        let is_file_scan = node.downcast_ref::<DataSourceExec>().is_some_and(|scan| {
            scan.data_source()
                .downcast_ref::<FileScanConfig>()
                .is_some()
        });
        if is_file_scan {
            found = true;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok(found)
}

/// `plan` as the scheduler reads it; a plan that cannot be is refused here, by name.
fn encode(plan: &Arc<dyn ExecutionPlan>, codec: &codec::Codec) -> Result<Vec<u8>> {
    let node = PhysicalPlanNode::try_from_physical_plan(plan.clone(), codec).map_err(|error| {
        DataFusionError::Plan(format!(
            "this query cannot run on the cluster: {}",
            error.strip_backtrace()
        ))
    })?;
    Ok(node.encode_to_vec())
}

/// The root of a statement sent to the cluster: runs it there and streams its answer.
#[derive(Debug)]
pub(crate) struct ClusterExec {
    /// The plan, as planned here.
    plan: Arc<dyn ExecutionPlan>,
    /// It encoded.
    encoded: Arc<Vec<u8>>,
    cluster: Arc<Cluster>,
    /// The session options the executors run it with.
    settings: Vec<KeyValuePair>,
    properties: Arc<PlanProperties>,
}

impl ClusterExec {
    fn new(
        plan: Arc<dyn ExecutionPlan>,
        encoded: Vec<u8>,
        cluster: Arc<Cluster>,
        state: &dyn Session,
    ) -> Self {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(plan.schema()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        let settings = state
            .config()
            .options()
            .entries()
            .into_iter()
            .filter_map(|entry| {
                entry.value.map(|value| KeyValuePair {
                    key: entry.key,
                    value: Some(value),
                })
            })
            .collect();
        Self {
            plan,
            encoded: Arc::new(encoded),
            cluster,
            settings,
            properties,
        }
    }
}

impl DisplayAs for ClusterExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match t {
            DisplayFormatType::Default | DisplayFormatType::Verbose => {
                writeln!(f, "ClusterExec: scheduler={}", self.cluster.scheduler)?;
                write!(f, "{}", displayable(self.plan.as_ref()).indent(false))
            }
            DisplayFormatType::TreeRender => write!(f, "scheduler={}", self.cluster.scheduler),
        }
    }
}

impl ExecutionPlan for ClusterExec {
    fn name(&self) -> &str {
        "ClusterExec"
    }

    fn schema(&self) -> SchemaRef {
        self.plan.schema()
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        // The plan is the cluster's to run; nothing here optimizes or runs it.
        vec![]
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
        if children.is_empty() {
            Ok(self)
        } else {
            Err(DataFusionError::Internal(
                "ClusterExec has no children".into(),
            ))
        }
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "ClusterExec has one partition, not {partition}"
            )));
        }
        let job = job::Job {
            scheduler: self.cluster.scheduler.clone(),
            session_id: self.cluster.session_id.clone(),
            plan: self.encoded.clone(),
            settings: self.settings.clone(),
        };
        let stream = futures::stream::once(job.run());
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema(),
            futures::TryStreamExt::try_flatten(stream),
        )))
    }
}
