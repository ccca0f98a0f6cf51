#!/usr/bin/env bash
# Schema benchmarks (issue: data and schema versioning):
#  1. record upgrade throughput: `cargo bench -p sluice-schema --bench upgrade` (a 10-column
#     batch v1 -> v3 with a rename, an added field and widenings, against a plain Arrow cast);
#  2. `sluice schema migrate` rewriting a 10-million-row Delta table from orders_bench@1 to @2
#     (rename customer_id -> customer, int32 -> int64, float32 -> float64, new field with a
#     default), against DuckDB rewriting the same Parquet files with the same conversion.
# Both results are checked (row count and sums); figures are printed, never asserted.
#
#   SLUICE_BENCH_VENV, SLUICE_BENCH_DATA, CARGO_TARGET_DIR as in run.sh
#   SLUICE_BENCH_ROWS   rows (default 10000000)    SLUICE_BIN  the sluice binary
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=bench/common.sh
source "$here/common.sh"
rows="${SLUICE_BENCH_ROWS:-10000000}"

say "record upgrade: cargo bench -p sluice-schema --bench upgrade"
(cd "$root" && cargo bench --quiet -p sluice-schema --bench upgrade)

source="$data_root/migrate-${rows}"
if [[ ! -f "$source/.complete" ]]; then
  say "generating a $rows-row Delta table under $source"
  rm -rf "$source" && mkdir -p "$source"
  "$py" "$here/migrate_gen.py" "$source/table" "$rows"
  touch "$source/.complete"
fi
work="$data_root/runs/migrate-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$work"
cp -r "$source/table" "$work/table"
cat >"$work/v1.yaml" <<'YAML'
dataset: orders_bench
fields:
  - {name: order_id, type: int64, nullable: false}
  - {name: customer_id, type: int32}
  - {name: email, type: string}
  - {name: amount, type: float32}
  - {name: status, type: string}
  - {name: created_at, type: timestamptz}
YAML
cat >"$work/v2.yaml" <<'YAML'
dataset: orders_bench
fields:
  - {name: order_id, type: int64, nullable: false}
  - {name: customer, type: int64, aliases: [customer_id]}
  - {name: email, type: string}
  - {name: amount, type: float64}
  - {name: status, type: string}
  - {name: created_at, type: timestamptz}
  - {name: channel, type: string, default: web}
YAML
store="$work/state.db"
"$SLUICE_BIN" schema register "$work/v1.yaml" --store "$store" >/dev/null
"$SLUICE_BIN" schema register "$work/v2.yaml" --store "$store" >/dev/null

cat "$work"/table/*.parquet >/dev/null # warm the page cache for both
say "sluice schema migrate orders_bench@1 orders_bench@2 ($rows rows)"
t0=$(now)
"$SLUICE_BIN" schema migrate orders_bench@1 orders_bench@2 --table "$work/table" --store "$store" --json >"$work/migrate.json"
t1=$(now)
sluice_s=$(echo "$t1 - $t0" | bc -l)

say "DuckDB (threads = 2): the same conversion, Parquet -> Parquet"
t0=$(now)
"$py" - "$source/table" "$work/duckdb.parquet" <<'PY'
import sys, duckdb
src, out = sys.argv[1], sys.argv[2]
con = duckdb.connect()
con.execute("SET threads = 2")
con.execute(f"""COPY (SELECT order_id, customer_id::BIGINT AS customer, email, amount::DOUBLE AS amount,
                      status, created_at, 'web' AS channel FROM read_parquet('{src}/*.parquet'))
               TO '{out}' (FORMAT parquet)""")
PY
t1=$(now)
duck_s=$(echo "$t1 - $t0" | bc -l)

"$py" - "$work/table" "$work/duckdb.parquet" "$rows" "$sluice_s" "$duck_s" "$work/migrate.json" <<'PY'
import json, sys, duckdb
from deltalake import DeltaTable
table, duck, rows, sluice_s, duck_s, report = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), sys.argv[6]
con = duckdb.connect()
dt = DeltaTable(table)
agg = "count(*), sum(order_id), sum(customer), sum(amount), count(*) FILTER (WHERE channel = 'web')"
a = con.from_arrow(dt.to_pyarrow_dataset()).aggregate(agg).fetchall()[0]
b = con.read_parquet(duck).aggregate(agg).fetchall()[0]
names = [f.name for f in dt.schema().fields]
print(f"\nsluice migrate: {json.load(open(report))}")
print(f"table columns after: {names}")
same = a[0] == b[0] == rows and a[1] == b[1] and a[2] == b[2] and abs(a[3] - b[3]) < 1e-6 * abs(b[3]) and a[4] == b[4] == rows
print(f"sluice  {a}\nduckdb  {b}\n{'same results' if same else 'RESULTS DIFFER'}")
print(f"\n{'engine':<24} {'seconds':>8} {'rows/s':>12}")
print(f"{'sluice schema migrate':<24} {sluice_s:>8.2f} {rows / sluice_s:>12,.0f}")
print(f"{'duckdb rewrite':<24} {duck_s:>8.2f} {rows / duck_s:>12,.0f}")
print(f"ratio sluice / duckdb: {sluice_s / duck_s:.2f}x (sluice also commits atomically, checkpoints per file and checks every value)")
sys.exit(0 if same else 1)
PY
