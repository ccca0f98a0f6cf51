use std::fmt;

/// Who has to act on an error. Decides exit codes, retries and quarantine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Bad input or spec: retrying the same thing gives the same error. Quarantine, tell the user.
    User,
    /// The outside world failed (I/O, network, a busy store): retrying may succeed.
    External,
    /// A bug in sluice.
    Internal,
}

impl ErrorKind {
    /// Whether running the same work again can give a different result.
    pub fn retryable(self) -> bool {
        matches!(self, ErrorKind::External)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::User => "user error",
            ErrorKind::External => "external error",
            ErrorKind::Internal => "internal error",
        })
    }
}

/// A place in a text file, for error messages that point at the spot (`file:line:column`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Located {
    pub file: String,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}
