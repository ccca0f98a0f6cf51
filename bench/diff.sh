#!/usr/bin/env bash
# Table diff benchmark: `sluice diff` on two 10-million-row Delta tables with 100 planted
# differences (diff_gen.py) against DuckDB doing a full outer join on the same Parquet files
# (diff_duckdb.py, threads = 2). Both must find exactly the planted differences; the script fails
# otherwise. Prints each engine's best of SLUICE_BENCH_REPEAT wall times and the ratio.
#
#   SLUICE_BENCH_VENV   Python venv (default ~/.cache/sluice-bench-venv, bench/requirements.txt)
#   SLUICE_BENCH_DATA   generated tables (default ~/.cache/sluice-bench-data)
#   SLUICE_BENCH_ROWS   rows per table (default 10000000)
#   SLUICE_BENCH_REPEAT runs per engine (default 3)
#   SLUICE_BIN          the sluice binary (default: cargo build --release, $CARGO_TARGET_DIR)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=bench/common.sh
source "$here/common.sh"
rows="${SLUICE_BENCH_ROWS:-10000000}"
repeat="${SLUICE_BENCH_REPEAT:-3}"

data="$data_root/diff-${rows}"
if [[ ! -f "$data/.complete" ]]; then
  say "generating two $rows-row Delta tables with 100 planted differences under $data"
  rm -rf "$data" && mkdir -p "$data"
  "$py" "$here/diff_gen.py" "$data" "$rows"
  touch "$data/.complete"
fi

best() { sort -g | head -1; }
check() { # check ENGINE JSON: the counts must be exactly the planted ones
  "$py" - "$1" "$2" "$data/planted.json" <<'PY'
import json, sys
engine, got, want = sys.argv[1], json.loads(sys.argv[2]), json.load(open(sys.argv[3]))
cols = {c["column"]: c["count"] for c in got["changed"]["columns"]} if engine == "sluice" else got["columns"]
counts = lambda r: (r["only_in_a"]["count"], r["only_in_b"]["count"], r["changed"]["count"]) if engine == "sluice" else (r["only_in_a"], r["only_in_b"], r["changed"])
if counts(got) != (want["only_in_a"], want["only_in_b"], want["changed"]) or cols != want["columns"]:
    sys.exit(f"{engine} found {counts(got)} {cols}, planted {want}")
PY
}

sluice_times=()
for i in $(seq "$repeat"); do
  say "sluice diff, run $i"
  start=$(now)
  set +e
  out=$("$SLUICE_BIN" diff "$data/a" "$data/b" --key id --json)
  code=$?
  set -e
  end=$(now)
  [[ $code == 1 ]] || { echo "sluice diff exited $code, expected 1 (differences)" >&2; exit 1; }
  check sluice "$out"
  sluice_times+=("$(echo "$end - $start" | bc -l)")
done
drilled=$(echo "$out" | "$py" -c 'import json,sys; b=json.load(sys.stdin)["buckets"]; print("%s of %s buckets, %s rows" % (b["drilled"], b["total"], b["rows_drilled"]))')

duck_times=()
for i in $(seq "$repeat"); do
  say "duckdb full outer join, run $i"
  start=$(now)
  out=$("$py" "$here/diff_duckdb.py" "$data/a" "$data/b")
  end=$(now)
  check duckdb "$out"
  duck_times+=("$(echo "$end - $start" | bc -l)")
done

s=$(printf '%s\n' "${sluice_times[@]}" | best)
d=$(printf '%s\n' "${duck_times[@]}" | best)
printf '\n%-28s %8s  %s\n' "diff of 2 x $rows rows" "best s" "all runs"
printf '%-28s %8.2f  %s\n' "sluice diff" "$s" "${sluice_times[*]}"
printf '%-28s %8.2f  %s\n' "duckdb full outer join" "$d" "${duck_times[*]}"
printf 'sluice / duckdb = %.2f   (sluice drilled into %s)\n' "$(echo "$s / $d" | bc -l)" "$drilled"
