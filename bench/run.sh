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

# ---- the shapes: each generated once, reused ----
# files: the 20-file shape above; big: one large file with a quoted free-text column; small: a
# landing zone of many 10-row files. Each shape's folder declares its columns (.columns.json).
shapes="${SLUICE_BENCH_SHAPES:-files big small}"
big_rows="${SLUICE_BENCH_BIG_ROWS:-10000000}"
small_files="${SLUICE_BENCH_SMALL_FILES:-100000}"
shape_data() {
  case "$1" in
    files) echo "$data_root/orders-${rows}x${files}|$rows|$files" ;;
    big) echo "$data_root/big-${big_rows}|$big_rows|1" ;;
    small) echo "$data_root/small-${small_files}x10|$((small_files * 10))|$small_files" ;;
    *) echo "unknown shape $1 in SLUICE_BENCH_SHAPES (files, big, small)" >&2; exit 2 ;;
  esac
}

stamp="$(date +%Y%m%d-%H%M%S)"
sql="$here/transform.sql"

# Runs a leg under GNU time: wall seconds, peak resident memory and CPU user / system seconds
# go to the shape's timings.tsv (engine, seconds, peak KiB, user s, sys s, kind, path, [db]).
exec 3>&2 # the legs' own stderr goes to their logs; timed's summary line to the terminal
timed() {
  local name="$1" kind="$2" out="$3" db="$4" log="$5"
  shift 5
  local t0 t1 secs
  t0="$(now)"
  /usr/bin/time -f '%M %U %S' -o "$log.time" "$@"
  t1="$(now)"
  secs="$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')"
  read -r peak user sys <"$log.time"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$secs" "$peak" "$user" "$sys" "$kind" "$out" "$db" >>"$timings"
  printf '   %.2fs wall, %.2fs user, %.2fs system, peak %d MiB\n' "$secs" "$user" "$sys" "$((peak / 1024))" >&3
}

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
    "$py" -c 'import json, sys; [print(f"    {k}: {v}") for k, v in json.load(open(sys.argv[1])).items()]' "$data/.columns.json"
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
  timed "$name" delta "$dir/table" "$dir/state.db" "$dir/run" \
    "$sluice" run "$dir/pipeline.yaml" --store "$dir/state.db" --workers "$workers" \
    --until-drained --json >"$dir/run.json" 2>"$dir/run.log"
  "$sluice" status --store "$dir/state.db" --json >"$dir/status.json"
}

run_duckdb() {
  local dir="$work/duckdb"
  mkdir -p "$dir"
  say "DuckDB (threads = 2): CSV -> Parquet"
  timed duckdb parquet "$dir/out.parquet" "" "$dir/run" \
    "$py" "$here/duckdb_run.py" "$data" "$sql" "$dir/out.parquet" 2>"$dir/run.log"
}

run_polars() {
  local dir="$work/polars"
  mkdir -p "$dir"
  say "Polars + deltalake: scan_csv -> SQL -> write_deltalake"
  timed polars+deltalake delta "$dir/table" "" "$dir/run" \
    "$py" "$here/polars_run.py" "$data" "$sql" "$dir/table" 2>"$dir/run.log"
}


for shape in $shapes; do
  IFS='|' read -r data shape_rows shape_files <<<"$(shape_data "$shape")"
  if [[ ! -f "$data/.complete" ]]; then
    say "generating the $shape shape: $shape_rows rows in $shape_files CSV files under $data"
    rm -rf "$data"
    "$py" "$here/gen_data.py" "$shape" "$data" "$shape_rows" "$shape_files"
  else
    say "the $shape shape: reusing the CSV files in $data"
  fi
  work="$data_root/runs/$stamp/$shape"
  mkdir -p "$work"
  timings="$work/timings.tsv"
  : >"$timings"
  # Warm the page cache once, so no leg pays for the first read of the files.
  find "$data" -name '*.csv' -exec cat {} + >/dev/null
  for e in $engines; do
    case "$e" in
      sluice-checks-w*) run_sluice "${e#sluice-checks-w}" checks ;;
      sluice-w*) run_sluice "${e#sluice-w}" ;;
      duckdb) run_duckdb ;;
      polars) run_polars ;;
      *) echo "unknown engine $e in SLUICE_BENCH_ENGINES" >&2; exit 2 ;;
    esac
  done
done
work="$data_root/runs/$stamp"

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
  for shape in $shapes; do
    IFS='|' read -r data shape_rows shape_files <<<"$(shape_data "$shape")"
    echo "data ($shape): $shape_rows rows in $shape_files CSV files ($(du -sh "$data" | cut -f1)), sluice batch.max_rows $batch_rows"
  done
} | tee "$work/env.txt"
status=0
for shape in $shapes; do
  IFS='|' read -r data shape_rows shape_files <<<"$(shape_data "$shape")"
  say "the $shape shape"
  "$py" "$here/report.py" "$work/$shape" "$data" "$work/store.json" | tee "$work/$shape/report.txt" || status=1
done
exit "$status"
