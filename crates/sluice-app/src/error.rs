//! [`AppError`]: the one error type of the application layer.

use sluice_core::ErrorKind;
use sluice_store::StoreError;

/// Why an operation failed. [`AppError::kind`] says who has to act (the CLI exits 2 for
/// [`ErrorKind::User`], 1 otherwise; a server picks a status code); the message says what to do.
/// Causes stay in [`std::error::Error::source`]; [`AppError::message`] is the whole chain on one
/// line.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The caller's input (a spec, a name, an argument) is wrong: fixing it is theirs.
    #[error("{0}")]
    User(String),
    /// What the caller named (a pipeline, a batch, a dataset or a version of one) is not in
    /// the store: a user error, which a server answers with 404.
    #[error("{0}")]
    NotFound(String),
    /// The request does not apply to the state of what it names (a second deployment while
    /// one is in progress, a resume of a deployment that is not paused): a user error, which
    /// a server answers with 409.
    #[error("{0}")]
    Conflict(String),
    /// A state store call failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A state store call failed while doing `what`.
    #[error("{what}")]
    StoreWhile {
        what: String,
        #[source]
        source: StoreError,
    },
    /// Something outside sluice failed (a table's storage, the network): trying again may help.
    #[error("{0}")]
    External(String),
    /// The state store holds something this version of sluice cannot read, or a bug.
    #[error("{0}")]
    Internal(String),
}

impl AppError {
    /// Who has to act on the error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            AppError::User(_) | AppError::NotFound(_) | AppError::Conflict(_) => ErrorKind::User,
            AppError::Store(e) | AppError::StoreWhile { source: e, .. } => e.kind(),
            AppError::External(_) => ErrorKind::External,
            AppError::Internal(_) => ErrorKind::Internal,
        }
    }

    /// Whether the error is about something the caller named that does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            AppError::NotFound(_)
                | AppError::Store(StoreError::NotFound(_))
                | AppError::StoreWhile {
                    source: StoreError::NotFound(_),
                    ..
                }
        )
    }

    /// Whether the request does not apply to the state of what it names.
    pub fn is_conflict(&self) -> bool {
        matches!(self, AppError::Conflict(_))
    }

    /// The error and its causes on one line, each said once (a message that already quotes
    /// its cause is not followed by it again).
    pub fn message(&self) -> String {
        chain(self)
    }
}

/// An error and its causes on one line, each said once (a message that already quotes its
/// cause is not followed by it again).
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut out = String::new();
    let mut cause: Option<&dyn std::error::Error> = Some(e);
    while let Some(e) = cause {
        let text = e.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
        cause = e.source();
    }
    out
}

/// `store_call().await.during("reading X")`: a store error with what was being done.
pub trait During<T> {
    fn during(self, what: impl Into<String>) -> Result<T, AppError>;
}

impl<T> During<T> for Result<T, StoreError> {
    fn during(self, what: impl Into<String>) -> Result<T, AppError> {
        self.map_err(|source| AppError::StoreWhile {
            what: what.into(),
            source,
        })
    }
}

pub type Result<T, E = AppError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_follow_the_cause_and_messages_say_each_cause_once() {
        assert_eq!(AppError::User("x".into()).kind(), ErrorKind::User);
        assert_eq!(AppError::External("x".into()).kind(), ErrorKind::External);
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let away = sluice_store::testing::io_error(io.kind());
        let outage = away.kind();
        let e = Err::<(), _>(away).during("leasing").unwrap_err();
        assert_eq!(e.kind(), outage);
        let text = e.message();
        assert!(
            text.starts_with("leasing: state store unreachable"),
            "{text}"
        );
        assert_eq!(text.matches(&io.to_string()).count(), 1, "{text}");
    }
}
