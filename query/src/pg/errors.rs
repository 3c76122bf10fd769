//! Every refusal and failure on the PostgreSQL protocol, as the wire carries it: the
//! SQLSTATE comes from [`Error::sqlstate`], the one mapping, never from a literal here.

use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;
use datafusion::sql::sqlparser::parser::ParserError;
use datafusion_postgres::pgwire;
use pgwire::error::{ErrorInfo, PgWireError};

use crate::error::Error;

/// `error` as a statement's error: the connection stays usable.
pub(crate) fn statement_error(error: &Error) -> PgWireError {
    with_severity("ERROR", error)
}

/// `error` as a login refusal: the connection ends.
pub(crate) fn fatal(error: &Error) -> PgWireError {
    with_severity("FATAL", error)
}

fn with_severity(severity: &str, error: &Error) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        severity.to_owned(),
        error.sqlstate().to_owned(),
        error.to_string(),
    )))
}

/// An error from the protocol library, with what it wraps (DataFusion's and Arrow's errors,
/// sent as XX000 by the library) mapped like any other query error.
pub(crate) fn from_library(error: PgWireError) -> PgWireError {
    match error {
        PgWireError::ApiError(inner) => statement_error(&of_library(inner)),
        other => other,
    }
}

fn of_library(inner: Box<dyn std::error::Error + Send + Sync>) -> Error {
    let inner = match inner.downcast::<DataFusionError>() {
        Ok(error) => return Error::from(*error),
        Err(inner) => inner,
    };
    let inner = match inner.downcast::<ParserError>() {
        Ok(error) => return Error::Syntax(error.to_string()),
        Err(inner) => inner,
    };
    match inner.downcast::<ArrowError>() {
        Ok(error) => Error::from(DataFusionError::ArrowError(error, None)),
        Err(inner) => Error::Internal(inner.to_string()),
    }
}

/// The `outcome` label of a statement's answer, for the query metrics.
pub(crate) fn outcome(answer: Result<(), &PgWireError>) -> &'static str {
    match answer {
        Ok(()) => "ok",
        Err(PgWireError::UserError(info)) => Error::outcome_of_sqlstate(&info.code),
        Err(_) => "failed",
    }
}

/// `error` as a FATAL `ErrorResponse` message, encoded, for a connection refused before
/// the protocol library takes it (over `pg_max_connections`).
pub fn fatal_message(error: &Error) -> Vec<u8> {
    use pgwire::messages::Message;
    use pgwire::messages::response::ErrorResponse;
    let PgWireError::UserError(info) = fatal(error) else {
        unreachable!("fatal() builds a user error");
    };
    let mut buffer = bytes::BytesMut::new();
    // Encoding fails only for a message longer than the protocol allows.
    let _ = ErrorResponse::from(*info).encode(&mut buffer);
    buffer.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(error: PgWireError) -> String {
        match error {
            PgWireError::UserError(info) => info.code,
            other => panic!("not a user error: {other:?}"),
        }
    }

    #[test]
    fn the_library_s_errors_get_the_codes_of_their_kind() {
        let wrapped = |error: Box<dyn std::error::Error + Send + Sync>| {
            code(from_library(PgWireError::ApiError(error)))
        };
        let plan = DataFusionError::Plan("table 'x' not found".into());
        assert_eq!(wrapped(Box::new(plan)), "42000");
        let cast = DataFusionError::Execution("cannot cast 'x'".into());
        assert_eq!(wrapped(Box::new(cast)), "22000");
        let memory = DataFusionError::ResourcesExhausted("out of memory".into());
        assert_eq!(wrapped(Box::new(memory)), "53200");
        let parser = ParserError::ParserError("Expected: an SQL statement".into());
        assert_eq!(wrapped(Box::new(parser)), "42601");
        let bug = DataFusionError::Internal("a bug".into());
        assert_eq!(wrapped(Box::new(bug)), "XX000");
        assert_eq!(wrapped("something else".into()), "XX000");
        // The outcome label agrees with the code.
        let refused = statement_error(&Error::ReadOnly("INSERT".into()));
        assert_eq!(outcome(Err(&refused)), "refused");
        let busy = statement_error(&Error::Busy("max_concurrent_queries".into()));
        assert_eq!(outcome(Err(&busy)), "busy");
        assert_eq!(outcome(Ok(())), "ok");
    }

    #[test]
    fn a_refused_connection_gets_a_fatal_error_response() {
        let message = fatal_message(&Error::TooManyConnections("100 in use".into()));
        assert_eq!(message[0], b'E');
        let text = String::from_utf8_lossy(&message);
        assert!(text.contains("SFATAL") && text.contains("C53300"), "{text}");
        assert!(text.contains("M100 in use"), "{text}");
    }
}
