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
