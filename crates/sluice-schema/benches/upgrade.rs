//! Record upgrade throughput: a 10-column batch written under v1 upgraded to v3 (a rename, an
//! added field with a default, a widening int32 -> int64 and float32 -> float64) with
//! `convert_batch`, against the floor: a plain Arrow cast of the same columns to the same
//! types (what the conversion must do at least). Prints rows/s and the ratio.
//!
//! `cargo bench -p sluice-schema --bench upgrade` (SLUICE_BENCH_UPGRADE_ROWS, default 1,000,000;
//! SLUICE_BENCH_REPEAT, default 10).

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::{
    ArrayRef, Float32Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow_cast::cast;
use arrow_schema::DataType;
use sluice_schema::Schema;
use sluice_schema::convert::convert_batch;
use sluice_schema::schema::assign_ids;

const V1: &str = "dataset: orders
fields:
  - {name: id, type: int64, nullable: false}
  - {name: cust, type: string}
  - {name: qty, type: int32}
  - {name: price, type: float32}
  - {name: status, type: string}
  - {name: email, type: string}
  - {name: created, type: timestamptz}
  - {name: region, type: string}
  - {name: score, type: int32}
  - {name: note, type: string}
";
const V2: &str = "dataset: orders
fields:
  - {name: id, type: int64, nullable: false}
  - {name: cust, type: string}
  - {name: qty, type: int32}
  - {name: price, type: float32}
  - {name: status, type: string}
  - {name: email, type: string}
  - {name: created, type: timestamptz}
  - {name: region, type: string}
  - {name: score, type: int32}
  - {name: note, type: string}
  - {name: channel, type: string, default: web}
";
const V3: &str = "dataset: orders
fields:
  - {name: id, type: int64, nullable: false}
  - {name: customer, type: string, aliases: [cust]}
  - {name: qty, type: int64}
  - {name: price, type: float64}
  - {name: status, type: string}
  - {name: email, type: string}
  - {name: created, type: timestamptz}
  - {name: region, type: string}
  - {name: score, type: int32}
  - {name: note, type: string}
  - {name: channel, type: string, default: web}
";

fn batch(rows: usize, v1: &Schema) -> RecordBatch {
    let n = rows as i64;
    let text = |p: &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(
            (0..n).map(|i| format!("{p}{}", i % 9973)),
        ))
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(0..n)),
        text("customer-"),
        Arc::new(Int32Array::from_iter_values(
            (0..n).map(|i| (i % 50) as i32),
        )),
        Arc::new(Float32Array::from_iter_values(
            (0..n).map(|i| (i % 1000) as f32 / 7.0),
        )),
        text("st"),
        text("user@example.com/"),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values((0..n).map(|i| 1_700_000_000_000_000 + i))
                .with_timezone("UTC"),
        ),
        text("region-"),
        Arc::new(Int32Array::from_iter_values(
            (0..n).map(|i| (i % 100) as i32),
        )),
        text("n"),
    ];
    RecordBatch::try_new(Arc::new(v1.to_arrow()), columns).expect("v1 batch")
}

fn best(repeat: usize, mut f: impl FnMut()) -> Duration {
    (0..repeat)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .min()
        .unwrap_or_default()
}

fn main() {
    let rows: usize = std::env::var("SLUICE_BENCH_UPGRADE_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let repeat: usize = std::env::var("SLUICE_BENCH_REPEAT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let mut last = 0;
    let mut v1 = Schema::from_yaml("v1", V1).unwrap();
    assign_ids(None, &mut v1, &mut last);
    let mut v2 = Schema::from_yaml("v2", V2).unwrap();
    assign_ids(Some(&v1), &mut v2, &mut last);
    let mut v3 = Schema::from_yaml("v3", V3).unwrap();
    assign_ids(Some(&v2), &mut v3, &mut last);
    let input = batch(rows, &v1);

    // The floor: cast the same ten columns to v3's types (the rename and the new column are
    // free for a cast: it neither looks fields up nor fills defaults).
    let targets: Vec<DataType> = v3
        .to_arrow()
        .fields()
        .iter()
        .take(10)
        .map(|f| f.data_type().clone())
        .collect();
    let cast_time = best(repeat, || {
        let out: Vec<ArrayRef> = input
            .columns()
            .iter()
            .zip(&targets)
            .map(|(c, t)| cast(c, t).expect("cast"))
            .collect();
        std::hint::black_box(out);
    });
    let upgrade_time = best(repeat, || {
        std::hint::black_box(convert_batch(&input, &v1, &v3).expect("upgrade"));
    });
    let upgraded = convert_batch(&input, &v1, &v3).unwrap();
    assert_eq!(upgraded.num_rows(), rows);
    let back_time = best(repeat, || {
        std::hint::black_box(convert_batch(&upgraded, &v3, &v1).expect("downgrade"));
    });
    let per_s = |d: Duration| rows as f64 / d.as_secs_f64();
    println!("record upgrade, {rows} rows x 10 columns (best of {repeat})");
    println!(
        "  arrow cast (floor)      {:>8.2} ms  {:>14.0} rows/s",
        cast_time.as_secs_f64() * 1e3,
        per_s(cast_time)
    );
    println!(
        "  upgrade v1 -> v3        {:>8.2} ms  {:>14.0} rows/s  {:.2}x the cast's time",
        upgrade_time.as_secs_f64() * 1e3,
        per_s(upgrade_time),
        upgrade_time.as_secs_f64() / cast_time.as_secs_f64()
    );
    println!(
        "  downgrade v3 -> v1      {:>8.2} ms  {:>14.0} rows/s  {:.2}x the cast's time",
        back_time.as_secs_f64() * 1e3,
        per_s(back_time),
        back_time.as_secs_f64() / cast_time.as_secs_f64()
    );
}
