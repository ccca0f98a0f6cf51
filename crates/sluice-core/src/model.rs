use std::fmt;
use std::str::FromStr;

/// Which rows of which file a batch holds. Byte offsets let a worker read its slice without
/// parsing the rows before it (CSV, JSON Lines); Parquet slices use the row range only.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BatchSlice {
    /// Absolute path or object-store URL of the file.
    pub path: String,
    /// 0-based slice number within the file.
    pub index: u32,
    pub byte_start: u64,
    pub byte_end: u64,
    /// 0-based index of the slice's first data row within the file.
    pub row_start: u64,
    pub row_count: u64,
}

/// Where a task is in the queue.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    Pending,
    Leased,
    Done,
    Quarantined,
}

impl TaskState {
    pub const ALL: [TaskState; 4] = [
        TaskState::Pending,
        TaskState::Leased,
        TaskState::Done,
        TaskState::Quarantined,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Leased => "leased",
            TaskState::Done => "done",
            TaskState::Quarantined => "quarantined",
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskState::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| format!("unknown task state {s:?}"))
    }
}

/// How a run of a batch ended, as recorded in the measurements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchOutcome {
    /// Rows were committed to the sink by this run.
    Committed,
    /// The sink already held this batch (an earlier run committed it and died before reporting).
    AlreadyCommitted,
    /// The run failed; the batch will be retried or quarantined.
    Failed,
    /// The batch was held back: bad rows or a failed check. Nothing of it was published.
    Quarantined,
    /// The lease ran out before the run reported; another worker takes the batch over.
    Expired,
}

impl BatchOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            BatchOutcome::Committed => "committed",
            BatchOutcome::AlreadyCommitted => "already_committed",
            BatchOutcome::Failed => "failed",
            BatchOutcome::Quarantined => "quarantined",
            BatchOutcome::Expired => "expired",
        }
    }
}

impl FromStr for BatchOutcome {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            BatchOutcome::Committed,
            BatchOutcome::AlreadyCommitted,
            BatchOutcome::Failed,
            BatchOutcome::Quarantined,
            BatchOutcome::Expired,
        ]
        .into_iter()
        .find(|o| o.as_str() == s)
        .ok_or_else(|| format!("unknown batch outcome {s:?}"))
    }
}

impl fmt::Display for BatchOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Wall-clock milliseconds since the Unix epoch: the unit of every timestamp in the store.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// This machine's name (`HOSTNAME`, else `/etc/hostname`, else `localhost`): what worker ids
/// and leader holders are named after.
pub fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
