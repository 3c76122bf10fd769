//! What apiscope adds to a plan sent to the cluster, and how it crosses the wire. The
//! front-end, the scheduler (which decodes a plan and encodes its stages again) and the
//! executors all use [`Codec`], and know apiscope's functions ([`functions`]).
//!
//! - Functions travel by name, and each node finds them among its own: the route helpers,
//!   `to_json`, `pairs_map`, apiscope's `approx_percentile_cont` and the sketch functions,
//!   and the size-checked `repeat`, `lpad`, ... of [`crate::engine::bounds`].
//! - `route_template` carries the OpenAPI operations the front-end was given.
//! - A computed column checked against the value limits carries its limits.
//!
//! Ballista's own plan nodes (shuffles) are its codec's.

use std::sync::Arc;

use ballista_core::serde::BallistaPhysicalExtensionCodec;
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::{SessionState, SessionStateBuilder, TaskContext};
use datafusion::logical_expr::{AggregateUDF, ScalarUDF, WindowUDF};
use datafusion::physical_expr_common::physical_expr::proto_decode::PhysicalExprDecodeCtx;
use datafusion::physical_expr_common::physical_expr::proto_encode::PhysicalExprEncodeCtx;
use datafusion::physical_plan::{ExecutionPlan, PhysicalExpr};
use datafusion::prelude::SessionContext;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use schemas::routes::OpenApi;

use crate::engine::QueryLimits;
use crate::engine::bounds::{self, ValueLimits};
use crate::functions::RouteTemplate;

/// The first byte of what apiscope encodes, to tell it from Ballista's.
const CHECKED: u8 = 1;
const ROUTES: u8 = 2;

/// Encodes and decodes apiscope's plan parts and Ballista's.
#[derive(Debug, Default)]
pub struct Codec {
    ballista: BallistaPhysicalExtensionCodec,
}

impl PhysicalExtensionCodec for Codec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.ballista.try_decode(buf, inputs, ctx, proto_converter)
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        self.ballista.try_encode(node, buf, proto_converter)
    }

    fn try_encode_udf(&self, node: &ScalarUDF, buf: &mut Vec<u8>) -> Result<()> {
        match node.inner().downcast_ref::<RouteTemplate>() {
            Some(routes) => {
                buf.push(ROUTES);
                buf.extend_from_slice(routes.openapi.to_json().as_bytes());
                Ok(())
            }
            None => self.ballista.try_encode_udf(node, buf),
        }
    }

    fn try_decode_udf(&self, name: &str, buf: &[u8]) -> Result<Arc<ScalarUDF>> {
        match buf.split_first() {
            Some((&ROUTES, json)) => {
                let json = std::str::from_utf8(json)
                    .map_err(|error| DataFusionError::Internal(error.to_string()))?;
                let openapi = OpenApi::from_json(json).map_err(DataFusionError::Internal)?;
                Ok(Arc::new(crate::functions::route_template(Arc::new(
                    openapi,
                ))))
            }
            _ => self.ballista.try_decode_udf(name, buf),
        }
    }

    fn try_encode_expr(
        &self,
        node: &Arc<dyn PhysicalExpr>,
        buf: &mut Vec<u8>,
        ctx: &PhysicalExprEncodeCtx<'_>,
    ) -> Result<()> {
        match bounds::limits_of(node.as_ref()) {
            Some(limits) => {
                buf.push(CHECKED);
                buf.extend_from_slice(&(limits.value as u64).to_le_bytes());
                buf.extend_from_slice(&(limits.batch as u64).to_le_bytes());
                Ok(())
            }
            None => self.ballista.try_encode_expr(node, buf, ctx),
        }
    }

    fn try_decode_expr(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn PhysicalExpr>],
        ctx: &PhysicalExprDecodeCtx<'_>,
    ) -> Result<Arc<dyn PhysicalExpr>> {
        match (buf.split_first(), inputs) {
            (Some((&CHECKED, sizes)), [inner]) if sizes.len() == 16 => {
                let number = |at: usize| {
                    let mut bytes = [0; 8];
                    bytes.copy_from_slice(&sizes[at..at + 8]);
                    usize::try_from(u64::from_le_bytes(bytes)).unwrap_or(usize::MAX)
                };
                let limits = ValueLimits {
                    value: number(0),
                    batch: number(8),
                };
                Ok(bounds::checked(inner.clone(), limits))
            }
            _ => self.ballista.try_decode_expr(buf, inputs, ctx),
        }
    }

    fn try_decode_udaf(&self, name: &str, buf: &[u8]) -> Result<Arc<AggregateUDF>> {
        self.ballista.try_decode_udaf(name, buf)
    }

    fn try_encode_udaf(&self, node: &AggregateUDF, buf: &mut Vec<u8>) -> Result<()> {
        self.ballista.try_encode_udaf(node, buf)
    }

    fn try_decode_udwf(&self, name: &str, buf: &[u8]) -> Result<Arc<WindowUDF>> {
        self.ballista.try_decode_udwf(name, buf)
    }

    fn try_encode_udwf(&self, node: &WindowUDF, buf: &mut Vec<u8>) -> Result<()> {
        self.ballista.try_encode_udwf(node, buf)
    }
}

/// A session state with DataFusion's functions and apiscope's, as the scheduler and the
/// executors find functions by name in plans: `limits` are those of the size-checked
/// functions.
pub fn functions(limits: &QueryLimits) -> SessionState {
    let state = SessionStateBuilder::new().with_default_features().build();
    let ctx = SessionContext::new_with_state(state);
    crate::functions::register(&ctx, Arc::default());
    bounds::register(
        &ctx,
        ValueLimits {
            value: limits.max_value_bytes,
            batch: limits.memory_per_query,
        },
    );
    ctx.state()
}
