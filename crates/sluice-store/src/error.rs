use sluice_core::ErrorKind;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store unreachable or failing ({backend}): {source}")]
    Database {
        backend: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("applying state store migrations ({backend}): {source}")]
    Migrate {
        backend: &'static str,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    #[error("creating the directory of the state store {path}: {source}")]
    CreateDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("setting up the state store: {0}")]
    Setup(String),
    #[error("{0}")]
    NotFound(String),
    #[error("state store holds a value sluice cannot read: {0}")]
    Corrupt(String),
    /// The caller asked to store something the store cannot represent.
    #[error("{0}")]
    Invalid(String),
}

impl StoreError {
    pub(crate) fn sqlite(source: sqlx::Error) -> StoreError {
        StoreError::Database {
            backend: "sqlite",
            source,
        }
    }

    pub(crate) fn postgres(source: sqlx::Error) -> StoreError {
        StoreError::Database {
            backend: "postgres",
            source,
        }
    }

    /// Whether the store is away or busy rather than refusing the request: the connection was
    /// refused or reset, the server is shutting down or starting, no connection came free in
    /// time, a SQLite file stayed locked past the busy timeout or could not be read or written
    /// just now. The answer to an outage is to wait and try again; the answer to any other
    /// error is to report it.
    pub fn is_outage(&self) -> bool {
        match self {
            StoreError::Database { backend, source } => sqlx_outage(backend, source),
            StoreError::Migrate {
                backend,
                source: sqlx::migrate::MigrateError::Execute(source),
            } => sqlx_outage(backend, source),
            _ => false,
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::Database { .. }
            | StoreError::Migrate { .. }
            | StoreError::CreateDir { .. }
            | StoreError::Setup(_) => ErrorKind::External,
            StoreError::NotFound(_) => ErrorKind::User,
            // a slice too large for the store is a bug in whoever cut it
            StoreError::Invalid(_) => ErrorKind::Internal,
            StoreError::Corrupt(_) => ErrorKind::Internal,
        }
    }
}

fn sqlx_outage(backend: &str, e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            if backend == "sqlite" {
                // primary result codes: BUSY, LOCKED, IOERR, FULL, CANTOPEN, PROTOCOL
                code.parse::<i32>()
                    .is_ok_and(|c| matches!(c & 0xff, 5 | 6 | 10 | 13 | 14 | 15))
            } else {
                postgres_outage(&code)
            }
        }
        _ => false,
    }
}

/// SQLSTATEs of a server that is away or overloaded, not of a refused statement: class 08
/// (connection exception), 53 (insufficient resources: disk full, too many connections),
/// 57P01-57P03 (shutting down, crashed, starting up) and 58 (system error: I/O); and the two
/// transient conflicts a retry resolves (serialization failure, deadlock).
fn postgres_outage(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("53")
        || code.starts_with("58")
        || matches!(code, "57P01" | "57P02" | "57P03" | "40001" | "40P01")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_failures_are_outages_and_bad_requests_are_not() {
        let reset = StoreError::postgres(sqlx::Error::Io(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert!(reset.is_outage());
        assert!(StoreError::sqlite(sqlx::Error::PoolTimedOut).is_outage());
        assert!(!StoreError::postgres(sqlx::Error::RowNotFound).is_outage());
        assert!(!StoreError::Corrupt("x".into()).is_outage());
        assert!(postgres_outage("57P01") && postgres_outage("08006") && postgres_outage("53100"));
        assert!(!postgres_outage("23505") && !postgres_outage("42P01"));
    }
}
