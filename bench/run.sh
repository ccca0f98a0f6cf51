#!/usr/bin/env bash
# sluice's end-to-end benchmark (see bench/README.md): 10 million order rows as CSV through
# the same SQL (projection + filter + cast) by sluice with 1 and 2 workers (-> Delta), DuckDB
# (-> Parquet) and Polars + deltalake (-> Delta); then the store's lease + complete rate on
# SQLite and PostgreSQL, and the queue overhead per batch. Figures are printed, not asserted;
# the script fails only if something breaks or the engines' outputs differ.
#
# Run from anywhere: bash bench/run.sh. Everything heavy lives outside the clone:
#   SLUICE_BENCH_VENV   Python venv           (default ~/.cache/sluice-bench-venv)
#   SLUICE_BENCH_DATA   generated CSV, runs   (default ~/.cache/sluice-bench-data)
#   CARGO_TARGET_DIR    Rust build output     (default ~/.cache/sluice-target)
#   SLUICE_BENCH_ROWS   rows  (default 10000000)      SLUICE_BENCH_FILES  files (default 20)
#   SLUICE_BENCH_ENGINES which legs to run (default "sluice-w1 sluice-checks-w1 sluice-w2
#                        sluice-checks-w2 duckdb polars")
#   SLUICE_BENCH_STORE  0 skips the store bench   SLUICE_TEST_POSTGRES  its PostgreSQL server
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=bench/common.sh
source "$here/common.sh"
sluice="$SLUICE_BIN"
rows="${SLUICE_BENCH_ROWS:-10000000}"
files="${SLUICE_BENCH_FILES:-20}"
engines="${SLUICE_BENCH_ENGINES:-sluice-w1 sluice-checks-w1 sluice-w2 sluice-checks-w2 duckdb polars}"
batch_rows=${SLUICE_BENCH_BATCH_ROWS:-500000} # sluice's default batch.max_rows

# ---- the data: generated once, reused ----
data="$data_root/orders-${rows}x${files}"
if [[ ! -f "$data/.complete" ]]; then
  say "generating $rows rows in $files CSV files under $data"
  rm -rf "$data"
  "$py" "$here/gen_data.py" "$data" "$rows" "$files"
else
  say "reusing the CSV files in $data"
fi

stamp="$(date +%Y%m%d-%H%M%S)"
work="$data_root/runs/$stamp"
mkdir -p "$work"
timings="$work/timings.tsv"
: >"$timings"
sql="$here/transform.sql"
# Warm the page cache once, so no leg pays for the first read of the files.
cat "$data"/*.csv >/dev/null

# ---- sluice ----
# The default check set, for the check-overhead leg: a key that must be present and new to the
# batch and the table, an email and amount that must be sane. All warn, so the leg publishes
# the same rows as the others; the checks do the same work either way.
default_checks() {
  cat <<'YAML'
checks:
  - not_null: { columns: [order_id, email], severity: warn }
  - unique: { columns: [order_id], severity: warn }
  - range: { column: amount, min: 0, severity: warn }
  - regex: { column: email, pattern: '^[^@]+@[^@]+$', severity: warn }
  - row_count: { min: 1, severity: warn }
YAML
}

run_sluice() {
  local workers="$1" checks="${2:-}" name="sluice-w$1"
  [[ -n "$checks" ]] && name="sluice-checks-w$1"
  local dir="$work/$name"
  mkdir -p "$dir"
  {
    echo "pipeline: orders_bench"
    echo "source:"
    echo "  files: $data/*.csv"
    echo "  format: csv"
    echo "  columns:"
    echo "    order_id: int64"
    echo "    customer_id: int64"
    echo "    email: string"
    echo "    amount: float64"
    echo "    status: string"
    echo "    created_at: timestamp"
    echo "  required: [order_id]"
    echo "  settle: 0s"
    echo "batch:"
    echo "  max_rows: $batch_rows"
    echo "transform: |"
    sed 's/^/  /' "$sql"
    echo "sink:"
    echo "  delta: table"
    [[ -n "$checks" ]] && default_checks
    true
  } >"$dir/pipeline.yaml"
  "$sluice" validate "$dir/pipeline.yaml" >"$dir/validate.log"
  say "$name, $workers worker(s): sluice run $dir/pipeline.yaml --store $dir/state.db --workers $workers --until-drained"
  local t0 t1
  t0="$(now)"
  "$sluice" run "$dir/pipeline.yaml" --store "$dir/state.db" --workers "$workers" \
    --until-drained --json >"$dir/run.json" 2>"$dir/run.log"
  t1="$(now)"
  local secs
  secs="$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')"
  printf '%s\t%s\tdelta\t%s\t%s\n' "$name" "$secs" "$dir/table" "$dir/state.db" >>"$timings"
  "$sluice" status --store "$dir/state.db" --json >"$dir/status.json"
  printf '   %.2fs\n' "$secs" >&2
}

run_duckdb() {
  local dir="$work/duckdb" t0 t1 secs
  mkdir -p "$dir"
  say "DuckDB (threads = 2): CSV -> Parquet"
  t0="$(now)"
  "$py" "$here/duckdb_run.py" "$data" "$sql" "$dir/out.parquet" 2>"$dir/run.log"
  t1="$(now)"
  secs="$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')"
  printf 'duckdb\t%s\tparquet\t%s\n' "$secs" "$dir/out.parquet" >>"$timings"
  printf '   %.2fs\n' "$secs" >&2
}

run_polars() {
  local dir="$work/polars" t0 t1 secs
  mkdir -p "$dir"
  say "Polars + deltalake: scan_csv -> SQL -> write_deltalake"
  t0="$(now)"
  "$py" "$here/polars_run.py" "$data" "$sql" "$dir/table" 2>"$dir/run.log"
  t1="$(now)"
  secs="$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')"
  printf 'polars+deltalake\t%s\tdelta\t%s\n' "$secs" "$dir/table" >>"$timings"
  printf '   %.2fs\n' "$secs" >&2
}

for e in $engines; do
  case "$e" in
    sluice-checks-w*) run_sluice "${e#sluice-checks-w}" checks ;;
    sluice-w*) run_sluice "${e#sluice-w}" ;;
    duckdb) run_duckdb ;;
    polars) run_polars ;;
    *) echo "unknown engine $e in SLUICE_BENCH_ENGINES" >&2; exit 2 ;;
  esac
done

# ---- the store: lease + complete per second, SQLite and PostgreSQL ----
if [[ "${SLUICE_BENCH_STORE:-1}" != 0 ]]; then
  say "store bench: cargo bench -p sluice-store --bench lease"
  (cd "$root" && SLUICE_BENCH_JSON="$work/store.json" SLUICE_BENCH_LEASERS="${SLUICE_BENCH_LEASERS:-1,2,4}" \
    nice -n 0 cargo bench --quiet -p sluice-store --bench lease) | tee "$work/store.txt"
fi

# ---- checks and the table ----
say "results ($work)"
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"
  echo "cpu: $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
  echo "sluice: $("$sluice" --version) ($(cd "$root" && git rev-parse --short HEAD 2>/dev/null || echo 'no git'))"
  echo "rustc: $(rustc --version)"
  echo "python: $("$py" -c 'import sys, duckdb, polars, deltalake, pyarrow; print(sys.version.split()[0], "duckdb", duckdb.__version__, "polars", polars.__version__, "deltalake", deltalake.__version__, "pyarrow", pyarrow.__version__)')"
  echo "postgres: $(psql -XAtq -h 127.0.0.1 -U postgres -c 'SHOW server_version' 2>/dev/null || echo 'not reachable')"
  echo "data: $rows rows in $files CSV files ($(du -sh "$data" | cut -f1)), sluice batch.max_rows $batch_rows"
} | tee "$work/env.txt"
"$py" "$here/report.py" "$work" "$data" | tee "$work/report.txt"
