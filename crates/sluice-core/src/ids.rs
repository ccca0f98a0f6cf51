use std::fmt;

use sha2::{Digest, Sha256};

use crate::BatchSlice;

/// The stable name of a batch: derived from the pipeline, the file's identity and the slice,
/// so discovering the same file again (after a restart, on another machine) yields the same id
/// and the store's uniqueness on it makes the file's rows enter the queue once.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct BatchId(pub String);

impl BatchId {
    /// `file_identity` is what makes the file itself unique (see the source's identity rule).
    pub fn derive(pipeline: &str, file_identity: &str, slice: &BatchSlice) -> BatchId {
        let mut h = Sha256::new();
        for part in [
            pipeline,
            file_identity,
            &slice.path,
            &slice.row_start.to_string(),
            &slice.row_count.to_string(),
        ] {
            h.update(part.as_bytes());
            h.update([0u8]);
        }
        // 20 hex chars = 80 bits: collisions are out of reach for any realistic number of batches.
        BatchId(format!("b-{}", &hex::encode(h.finalize())[..20]))
    }

    /// The stable name of a batch that groups several files: derived from the pipeline and
    /// each file's identity and slice, in the batch's order, so the same files grouped the
    /// same way on any machine, after any restart, name the same batch.
    pub fn derive_group<'a>(
        pipeline: &str,
        files: impl IntoIterator<Item = (&'a str, &'a BatchSlice)>,
    ) -> BatchId {
        let mut h = Sha256::new();
        h.update(b"group\0");
        h.update(pipeline.as_bytes());
        h.update([0u8]);
        for (identity, slice) in files {
            for part in [
                identity,
                &slice.path,
                &slice.byte_start.to_string(),
                &slice.byte_end.to_string(),
                &slice.row_start.to_string(),
                &slice.row_count.to_string(),
            ] {
                h.update(part.as_bytes());
                h.update([0u8]);
            }
        }
        BatchId(format!("b-{}", &hex::encode(h.finalize())[..20]))
    }
}

impl fmt::Display for BatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Names a worker in the store: `host/pid/n`, readable in `sluice status`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct WorkerId(pub String);

impl WorkerId {
    pub fn new(host: &str, pid: u32, slot: usize) -> WorkerId {
        WorkerId(format!("{host}/{pid}/{slot}"))
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Fences a lease: heartbeat, complete and fail only act if the task still carries this token,
/// so a worker whose lease expired and was taken over cannot overwrite the new holder's result.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct LeaseToken(pub String);

impl LeaseToken {
    pub fn random() -> LeaseToken {
        LeaseToken(uuid::Uuid::new_v4().simple().to_string())
    }
}

impl fmt::Display for LeaseToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The longest name [`is_name`] accepts: far past any real pipeline, dataset or batch id, short
/// enough that a name never bloats a log line, a label or a query.
pub const MAX_NAME_LEN: usize = 128;

/// Whether `text` is a valid name of a pipeline, a dataset or a batch: 1 to [`MAX_NAME_LEN`]
/// ASCII letters, digits, `_` and `-`. No dot, slash or quote, so a name is safe in a path, a
/// URL and a log line, and it cannot be read as SQL. The spec's `pipeline:` follows this rule;
/// the HTTP API checks every name in a request against it.
pub fn is_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_NAME_LEN
        && text
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_letters_digits_underscores_and_dashes() {
        for good in ["orders", "orders_clean-2", "b-0123456789abcdef0123", "A"] {
            assert!(is_name(good), "{good}");
        }
        let long = "x".repeat(MAX_NAME_LEN + 1);
        for bad in [
            "",
            "../etc",
            "a/b",
            "a.b",
            "a b",
            "o'; DROP TABLE tasks; --",
            "é",
            "a%2e",
            &long,
        ] {
            assert!(!is_name(bad), "{bad}");
        }
        assert!(is_name(&"x".repeat(MAX_NAME_LEN)));
    }
}
