//! The table's batch markers (Delta application transactions: app id -> version), kept in
//! memory so a lookup costs a hash probe instead of a log replay.
//!
//! delta-rs answers `transaction_version` by replaying the checkpoint and every commit after
//! it until the app id turns up. A new batch's app id never does, so every batch paid for a
//! replay of the table's whole state (one marker per batch for the retention period, one add
//! per file). Here the markers are read once when the table is opened (the last checkpoint's
//! `txn` column and the commits after it), then moved forward with the table: each new commit
//! is read once for its `txn` actions (or, for the sink's own commit, recorded directly).

use std::collections::HashMap;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

#[derive(Debug, Clone, Copy)]
struct Marker {
    version: i64,
    /// Milliseconds since the epoch, when the writer recorded it.
    last_updated: Option<i64>,
}

/// Every marker of the table as of version `through`.
#[derive(Debug, Default)]
pub(super) struct Markers {
    through: Option<i64>,
    markers: HashMap<String, Marker>,
    /// The newest version read whose commit may change the table's metadata or protocol
    /// (a `metaData` or `protocol` action): a snapshot older than it has a stale schema.
    changed_at: Option<i64>,
}

fn commit_path(version: i64) -> Path {
    Path::from(format!("_delta_log/{version:020}.json"))
}

async fn read(store: &dyn ObjectStore, path: &Path) -> Result<Bytes, String> {
    let got = store.get(path).await.map_err(|e| format!("{path}: {e}"))?;
    got.bytes().await.map_err(|e| format!("{path}: {e}"))
}

#[derive(serde::Deserialize)]
struct Line {
    txn: Option<Txn>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Txn {
    app_id: String,
    version: i64,
    last_updated: Option<i64>,
}

impl Markers {
    /// The table version the markers are complete through (`None`: no table yet).
    pub(super) fn through(&self) -> Option<i64> {
        self.through
    }

    /// The recorded version of `app_id`, if any.
    /// See [`Markers::changed_at`]'s field.
    pub(super) fn changed_at(&self) -> Option<i64> {
        self.changed_at
    }

    /// Records that the commit at `version` changed the table's metadata or protocol.
    pub(super) fn changed(&mut self, version: i64) {
        self.changed_at = self.changed_at.max(Some(version));
    }

    pub(super) fn get(&self, app_id: &str) -> Option<i64> {
        self.markers.get(app_id).map(|m| m.version)
    }

    fn put(&mut self, app_id: String, marker: Marker) {
        // Delta keeps the highest version per app id.
        match self.markers.get(&app_id) {
            Some(m) if m.version >= marker.version => {}
            _ => {
                self.markers.insert(app_id, marker);
            }
        }
    }

    /// The markers of a table at `version`: its last checkpoint's, then its commits' after it.
    /// An error when the log is not in a shape read here (the caller asks delta-rs instead).
    pub(super) async fn load(store: &dyn ObjectStore, version: i64) -> Result<Markers, String> {
        let mut markers = Markers::default();
        let hint = match store.get(&Path::from("_delta_log/_last_checkpoint")).await {
            Ok(got) => {
                let bytes = got.bytes().await.map_err(|e| e.to_string())?;
                Some(
                    serde_json::from_slice::<serde_json::Value>(&bytes)
                        .map_err(|e| format!("_last_checkpoint: {e}"))?,
                )
            }
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => return Err(e.to_string()),
        };
        let mut next = 0;
        if let Some(hint) = hint {
            let checkpoint = hint
                .get("version")
                .and_then(|v| v.as_i64())
                .ok_or("_last_checkpoint names no version")?;
            if hint.get("parts").and_then(|p| p.as_u64()).unwrap_or(1) > 1
                || hint.get("v2Checkpoint").is_some()
            {
                return Err(format!(
                    "checkpoint {checkpoint} is multi-part or V2, not read here"
                ));
            }
            let path = Path::from(format!("_delta_log/{checkpoint:020}.checkpoint.parquet"));
            markers.read_checkpoint(read(store, &path).await?)?;
            markers.through = Some(checkpoint);
            next = checkpoint + 1;
        }
        markers.advance(store, version.max(next - 1)).await?;
        Ok(markers)
    }

    /// Reads the markers of the commits after `through` up to `version`.
    pub(super) async fn advance(
        &mut self,
        store: &dyn ObjectStore,
        version: i64,
    ) -> Result<(), String> {
        let mut next = self.through.map_or(0, |t| t + 1);
        while next <= version {
            let bytes = read(store, &commit_path(next)).await?;
            if self
                .read_commit(&bytes)
                .map_err(|e| format!("{}: {e}", commit_path(next)))?
            {
                self.changed(next);
            }
            self.through = Some(next);
            next += 1;
        }
        Ok(())
    }

    /// Records the sink's own commit of `txns` (app id, txn version) at table version
    /// `version`, when the markers were complete up to the version before it (else the log is
    /// read from where they stop).
    pub(super) async fn committed(
        &mut self,
        store: &dyn ObjectStore,
        txns: &[(String, i64)],
        version: i64,
    ) -> Result<(), String> {
        if self.through.is_some_and(|t| t >= version) {
            return Ok(());
        }
        self.advance(store, version - 1).await?;
        let now = sluice_core::now_millis();
        for (app_id, txn_version) in txns {
            self.put(
                app_id.clone(),
                Marker {
                    version: *txn_version,
                    last_updated: Some(now),
                },
            );
        }
        self.through = Some(version);
        Ok(())
    }

    /// Forgets markers last updated before `cutoff_ms` (Delta treats them as absent too).
    pub(super) fn expire(&mut self, cutoff_ms: i64) {
        self.markers
            .retain(|_, m| m.last_updated.is_none_or(|t| t >= cutoff_ms));
    }

    /// Takes in a commit's markers; `true` when it may change the metadata or protocol.
    fn read_commit(&mut self, bytes: &[u8]) -> Result<bool, String> {
        let mut changes = false;
        for line in bytes.split(|b| *b == b'\n') {
            // Only the txn lines matter; skip the others without decoding them. A line naming
            // a metaData or protocol action (or only mentioning one) counts as a change: a
            // false alarm costs one snapshot refresh.
            if line.is_empty() || memchr::memmem::find(line, b"\"txn\"").is_none() {
                changes |= memchr::memmem::find(line, b"\"metaData\"").is_some()
                    || memchr::memmem::find(line, b"\"protocol\"").is_some();
                continue;
            }
            let line: Line = serde_json::from_slice(line).map_err(|e| e.to_string())?;
            if let Some(t) = line.txn {
                self.put(
                    t.app_id,
                    Marker {
                        version: t.version,
                        last_updated: t.last_updated,
                    },
                );
            }
        }
        Ok(changes)
    }

    fn read_checkpoint(&mut self, bytes: Bytes) -> Result<(), String> {
        use arrow::array::{Array, AsArray, StructArray};
        use arrow::datatypes::{DataType, Int64Type};
        use parquet::arrow::ProjectionMask;
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        let err = |e: &dyn std::fmt::Display| format!("checkpoint: {e}");
        let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|e| err(&e))?;
        let Some(txn) = builder
            .parquet_schema()
            .root_schema()
            .get_fields()
            .iter()
            .position(|f| f.name() == "txn")
        else {
            // A checkpoint without a txn column holds no markers.
            return Ok(());
        };
        let mask = ProjectionMask::roots(builder.parquet_schema(), [txn]);
        let reader = builder.with_projection(mask).build().map_err(|e| err(&e))?;
        for batch in reader {
            let batch = batch.map_err(|e| err(&e))?;
            let Some(txn) = batch
                .column_by_name("txn")
                .and_then(|c| c.as_any().downcast_ref::<StructArray>())
            else {
                return Err(err(&"the txn column is not a struct"));
            };
            // Read as the types the protocol names, whatever Arrow types the reader chose.
            let field = |name: &str, to: &DataType| {
                txn.column_by_name(name)
                    .and_then(|c| arrow::compute::cast(c, to).ok())
            };
            let (Some(app_ids), Some(versions)) = (
                field("appId", &DataType::Utf8),
                field("version", &DataType::Int64),
            ) else {
                return Err(err(&"the txn column lacks appId or version"));
            };
            let app_ids = app_ids.as_string::<i32>();
            let versions = versions.as_primitive::<Int64Type>();
            let updated = field("lastUpdated", &DataType::Int64);
            let updated = updated.as_ref().map(|u| u.as_primitive::<Int64Type>());
            for i in 0..txn.len() {
                if txn.is_null(i) || app_ids.is_null(i) || versions.is_null(i) {
                    continue;
                }
                self.put(
                    app_ids.value(i).to_string(),
                    Marker {
                        version: versions.value(i),
                        last_updated: updated.filter(|u| !u.is_null(i)).map(|u| u.value(i)),
                    },
                );
            }
        }
        Ok(())
    }
}
