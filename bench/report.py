"""Checks that every engine wrote the same rows and prints the benchmark's table.

Usage: report.py RESULTS_DIR DATA_DIR [STORE_JSON]

RESULTS_DIR holds what run.sh left for one shape: timings.tsv (engine, wall seconds, peak
resident KiB, CPU user s, CPU system s, output kind, output path, [sluice state db]).
STORE_JSON holds the store bench's figures (may be missing). Exits 1 if the engines' outputs
differ."""

import json
import os
import sqlite3
import sys

import duckdb
from deltalake import DeltaTable

from columns import duckdb_view

results, data_dir = sys.argv[1], sys.argv[2]
store_path = sys.argv[3] if len(sys.argv) > 3 else os.path.join(results, "store.json")
con = duckdb.connect()
con.execute("SET threads = 2")


def fingerprint_of(rel):
    n, ids, amount, emails = rel.aggregate(
        "count(*), sum(order_id), sum(amount)::DECIMAL(38,2), sum(length(email))"
    ).fetchall()[0]
    return {"rows": int(n), "sum_order_id": int(ids or 0), "sum_amount": str(amount),
            "sum_email_len": int(emails or 0)}


def fingerprint(kind, path):
    if kind == "parquet":
        return fingerprint_of(con.read_parquet(path))
    dataset = DeltaTable(path).to_pyarrow_dataset()
    return fingerprint_of(con.from_arrow(dataset))


# What the transform must produce, straight from the CSV (cached beside the data).
expected_path = os.path.join(data_dir, ".expected.json")
if os.path.exists(expected_path):
    expected = json.load(open(expected_path))
else:
    sql = open(os.path.join(os.path.dirname(__file__), "transform.sql")).read().strip().rstrip(";")
    con.execute(duckdb_view(data_dir))
    expected = fingerprint_of(con.sql(sql))
    expected["rows_in"] = con.sql("SELECT count(*) FROM input").fetchall()[0][0]
    json.dump(expected, open(expected_path, "w"))
rows_in = expected["rows_in"]

runs = []
for line in open(os.path.join(results, "timings.tsv")):
    parts = line.rstrip("\n").split("\t")
    engine, seconds, peak_kib, user, sys_s, kind, path = parts[:7]
    runs.append({"engine": engine, "seconds": float(seconds), "peak_mib": int(peak_kib) / 1024,
                 "user": float(user), "sys": float(sys_s), "kind": kind, "path": path,
                 "db": (parts[7] or None) if len(parts) > 7 else None})

print(f"\ninput: {rows_in:,} CSV rows; expected output {expected['rows']:,} rows")
bad = False
for r in runs:
    got = fingerprint(r["kind"], r["path"])
    r["rows_out"] = got["rows"]
    same = all(got[k] == expected[k] for k in ("rows", "sum_order_id", "sum_amount", "sum_email_len"))
    print(f"  {r['engine']:<20} {got['rows']:>11,} rows  sum(order_id)={got['sum_order_id']}  "
          f"sum(amount)={got['sum_amount']}  {'ok' if same else 'DIFFERENT'}")
    bad |= not same
if bad:
    print(f"  expected {expected}")
    print("FAIL: the engines' outputs differ (see above)")

by = {r["engine"]: r for r in runs}
duck = next((r for r in runs if r["engine"].startswith("duckdb")), None)
polars = next((r for r in runs if r["engine"].startswith("polars")), None)
print()
print(f"{'engine':<20} {'wall s':>8} {'rows/s (in)':>12} {'vs DuckDB':>10} {'vs Polars':>10} "
      f"{'user s':>7} {'sys s':>6} {'peak MiB':>9} {'mem vs DuckDB':>14}")
for r in runs:
    vs_d = r["seconds"] / duck["seconds"] if duck else float("nan")
    vs_p = r["seconds"] / polars["seconds"] if polars else float("nan")
    mem_d = r["peak_mib"] / duck["peak_mib"] if duck else float("nan")
    print(f"{r['engine']:<20} {r['seconds']:>8.2f} {rows_in / r['seconds']:>12,.0f} {vs_d:>9.2f}x {vs_p:>9.2f}x "
          f"{r['user']:>7.2f} {r['sys']:>6.2f} {r['peak_mib']:>9.0f} {mem_d:>13.2f}x")
print("(ratio = this engine's figure / the other's: below 1 is less; targets: sluice with 2 workers "
      "<= 1.00x DuckDB's time and <= 1.00x its peak memory)")
for prefix in ("sluice-w", "sluice-checks-w"):
    one, two = by.get(prefix + "1"), by.get(prefix + "2")
    if one and two:
        print(f"{prefix}2 speed-up over {prefix}1: {one['seconds'] / two['seconds']:.2f}x (target >= 1.8x)")

# The store bench's figures.
store = json.load(open(store_path)) if os.path.exists(store_path) else []
if store:
    print()
    print(f"{'store':<9} {'leasers':>7} {'lease+complete/s':>17} {'lease ms':>9} {'complete ms':>12} {'cycle ms':>9}")
    for f in store:
        print(f"{f['backend']:<9} {f['leasers']:>7} {f['ops_per_s']:>17,.0f} {f['lease_mean_ms']:>9.3f} "
              f"{f['complete_mean_ms']:>12.3f} {f['cycle_mean_ms']:>9.3f}")
else:
    print("\n(no store figures: the store bench did not run)")

# Queue overhead, per sluice run: the store's lease + complete cost per batch over the mean batch
# duration (batch_runs.duration_ms covers read + transform + Delta commit, not the queue calls).
print()
for r in runs:
    if not r["db"]:
        continue
    db = sqlite3.connect(r["db"])
    n, mean_ms, min_ms, max_ms, first, last, total = db.execute(
        "SELECT count(*), avg(duration_ms), min(duration_ms), max(duration_ms), min(started_at), "
        "max(finished_at), sum(duration_ms) FROM batch_runs WHERE outcome = 'committed'"
    ).fetchall()[0]
    workers = int(r["engine"].split("w")[-1]) if r["engine"].split("w")[-1].isdigit() else 1
    window_s = (last - first) / 1000
    # Worker time not spent inside a batch: leasing, completing, polling, waiting for discovery.
    gap_ms = (workers * (last - first) - total) / n
    line = (f"{r['engine']}: {n} batches, batch duration mean {mean_ms:.0f} ms (min {min_ms}, max {max_ms}); "
            f"first start -> last finish {window_s:.1f}s of {r['seconds']:.1f}s wall; "
            f"worker time outside batches {gap_ms:.1f} ms/batch")
    print(line)
    # Flat batch time: the median of the first tenth of the commits against the last tenth.
    durations = [d for (d,) in db.execute(
        "SELECT duration_ms FROM batch_runs WHERE outcome = 'committed' ORDER BY finished_at, id")]
    if len(durations) >= 20:
        tenth = len(durations) // 10
        first_ms = sorted(durations[:tenth])[tenth // 2]
        last_ms = sorted(durations[-tenth:])[tenth // 2]
        print(f"  batch time, median of the first {tenth} commits {first_ms} ms, of the last {tenth} "
              f"{last_ms} ms: {last_ms / max(first_ms, 1):.2f}x (target within 1.2x)")
    sq = {f["leasers"]: f for f in store if f["backend"] == "sqlite"}
    if sq:
        f = sq.get(workers) or sq[min(sq, key=lambda k: abs(k - workers))]
        print(f"  queue overhead (sqlite lease+complete at {f['leasers']} leaser(s), {f['cycle_mean_ms']:.2f} ms) "
              f"/ mean batch {mean_ms:.0f} ms = {100 * f['cycle_mean_ms'] / mean_ms:.3f}% (target < 5%)")

# Check overhead: the same run with the default check set (run.sh's default_checks) against
# the run without checks, per batch.
def mean_batch_ms(db_path):
    db = sqlite3.connect(db_path)
    return db.execute("SELECT avg(duration_ms) FROM batch_runs WHERE outcome = 'committed'").fetchall()[0][0]


for r in runs:
    if not r["engine"].startswith("sluice-checks-w") or not r["db"]:
        continue
    plain = by.get(r["engine"].replace("sluice-checks-", "sluice-"))
    if not plain or not plain["db"]:
        continue
    with_ms, without_ms = mean_batch_ms(r["db"]), mean_batch_ms(plain["db"])
    share = 100 * (with_ms - without_ms) / with_ms
    print(f"check overhead ({r['engine']} vs {plain['engine']}): mean batch {with_ms:.0f} ms with checks, "
          f"{without_ms:.0f} ms without = {share:.1f}% of batch time (target < 10%); "
          f"end to end {r['seconds']:.2f}s vs {plain['seconds']:.2f}s")
sys.exit(1 if bad else 0)
