//! What the end-to-end tests share: starting the daemon, the known fleet, requests written
//! by hand, the PostgreSQL and Python clients, and reading `/metrics`.

pub(crate) mod daemon;
pub(crate) mod fleet;
pub(crate) mod otlp;
pub(crate) mod pg;
pub(crate) mod prometheus;
pub(crate) mod proxy;
pub(crate) mod python;
pub(crate) mod s3;
