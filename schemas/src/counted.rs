//! Every request to a store, counted: an `ObjectStore` in front of the real one, so that the
//! requests the tables' Delta logs make (through `deltalake`) are counted with apiscope's own.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

/// A store whose every request is counted in `apiscope_store_requests_total` (by operation
/// and outcome) and timed in `apiscope_store_request_duration_seconds`. A listing counts
/// once however many pages it takes.
#[derive(Debug)]
pub(crate) struct Counted(pub(crate) Arc<dyn ObjectStore>);

impl fmt::Display for Counted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Counted({})", self.0)
    }
}

/// Counts one request to the store, by operation and outcome, and how long it took.
pub(crate) fn record(operation: &'static str, outcome: &'static str, started: Instant) {
    metrics::counter!(
        "apiscope_store_requests_total",
        "operation" => operation,
        "outcome" => outcome
    )
    .increment(1);
    metrics::histogram!("apiscope_store_request_duration_seconds", "operation" => operation)
        .record(started.elapsed().as_secs_f64());
}

/// The outcome label of a request's result.
fn outcome<T>(result: &Result<T>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(object_store::Error::NotFound { .. }) => "not_found",
        Err(
            object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. },
        ) => "exists",
        Err(_) => "error",
    }
}

/// Runs `request`, counting it as `operation`.
async fn counted<T>(
    operation: &'static str,
    request: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let started = Instant::now();
    let result = request.await;
    record(operation, outcome(&result), started);
    result
}

/// A listing's stream, counted once when it ends or is dropped.
fn counted_stream<T: Send + 'static>(
    operation: &'static str,
    stream: BoxStream<'static, Result<T>>,
) -> BoxStream<'static, Result<T>> {
    struct Tally {
        operation: &'static str,
        started: Instant,
        failed: bool,
    }
    impl Drop for Tally {
        fn drop(&mut self) {
            let outcome = if self.failed { "error" } else { "ok" };
            record(self.operation, outcome, self.started);
        }
    }
    let mut tally = Tally {
        operation,
        started: Instant::now(),
        failed: false,
    };
    stream
        .map(move |item| {
            // The whole tally moves into the stream, to be dropped with it.
            let tally = &mut tally;
            tally.failed |= item.is_err();
            item
        })
        .boxed()
}

#[async_trait::async_trait]
impl ObjectStore for Counted {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        counted("put", self.0.put_opts(location, payload, opts)).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        counted("put", self.0.put_multipart_opts(location, opts)).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let operation = if options.head { "head" } else { "get" };
        counted(operation, self.0.get_opts(location, options)).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        counted("get", self.0.get_ranges(location, ranges)).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        counted_stream("delete", self.0.delete_stream(locations))
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        counted_stream("list", self.0.list(prefix))
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        counted_stream("list", self.0.list_with_offset(prefix, offset))
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        counted("list", self.0.list_with_delimiter(prefix)).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        counted("copy", self.0.copy_opts(from, to, options)).await
    }
}
