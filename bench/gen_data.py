"""Generates the benchmark's order rows as CSV files with DuckDB (deterministic: same files every
time). Usage: gen_data.py DIR ROWS FILES. Writes DIR/orders-NNN.csv and DIR/.complete last; a
DIR with .complete is reused as is by run.sh."""

import os
import sys
import time

import duckdb

out_dir, rows, files = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
os.makedirs(out_dir, exist_ok=True)
per_file = rows // files
assert per_file * files == rows, "ROWS must be a multiple of FILES"

con = duckdb.connect()
con.execute("SET threads = 2")
start = time.perf_counter()
for k in range(files):
    path = os.path.join(out_dir, f"orders-{k:03d}.csv")
    tmp = path + ".tmp"
    # order_id unique; the other columns are hashes of it, so the data is the same every run.
    # Emails are mixed-case so lower() has work to do; created_at is ISO-8601 with a 'T'.
    con.execute(
        f"""
        COPY (
          SELECT
            i AS order_id,
            (hash(i) % 1000000)::BIGINT AS customer_id,
            'User' || (hash(i) % 1000000)::BIGINT || '@Example.COM' AS email,
            round(((hash(i * 7 + 1) % 5000000)::DOUBLE) / 100.0, 2) AS amount,
            ['paid', 'shipped', 'cancelled', 'refunded'][1 + (hash(i * 13 + 5) % 4)::INT] AS status,
            strftime(TIMESTAMP '2024-01-01 00:00:00' + to_seconds((hash(i * 31 + 3) % 31536000)::BIGINT),
                     '%Y-%m-%dT%H:%M:%S') AS created_at
          FROM range({k * per_file}, {(k + 1) * per_file}) t(i)
        ) TO '{tmp}' (FORMAT csv, HEADER)
        """
    )
    os.replace(tmp, path)
with open(os.path.join(out_dir, ".complete"), "w") as f:
    f.write(f"{rows} rows in {files} files\n")
print(f"generated {rows} rows in {files} files under {out_dir} in {time.perf_counter() - start:.1f}s")
