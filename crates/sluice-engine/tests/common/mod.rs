//! Helpers shared by the sink tests: a batch of ids, and the ids a table holds.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use sluice_engine::sink::DeltaSink;

/// One `id` column (Int64, not null) holding `ids`.
pub fn batch(ids: std::ops::Range<i64>) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
    RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from_iter_values(ids))]).unwrap()
}

/// How many times each `id` is in the table (read as Int64 whatever its stored type).
pub async fn ids(sink: &DeltaSink) -> BTreeMap<i64, usize> {
    let mut out = BTreeMap::new();
    for b in sink.read_all().await.unwrap() {
        let col = b.column_by_name("id").unwrap();
        let col = arrow::compute::cast(col, &DataType::Int64).unwrap();
        for v in col
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .iter()
            .flatten()
        {
            *out.entry(v).or_default() += 1;
        }
    }
    out
}
