"""Generates the benchmark's order rows as CSV files (deterministic: same files every time).

Usage: gen_data.py SHAPE DIR ROWS FILES

SHAPE is one of
  files   ROWS rows in FILES files of 6 columns (DuckDB writes them);
  big     ROWS rows in one file of 10 columns, with a quoted free-text `note` column (commas,
          quotes, newline-free) and mixed-case emails (DuckDB writes it);
  small   FILES files of ROWS / FILES rows each (a landing zone fed by a stream writer; Python
          writes them, one small write per file, as such a writer does).

Writes DIR/*.csv, DIR/.columns.json (column -> sluice type, read by every leg so they all
declare the same schema) and DIR/.complete last; a DIR with .complete is reused by run.sh."""

import csv
import json
import os
import sys
import time

import duckdb

shape, out_dir, rows, files = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
os.makedirs(out_dir, exist_ok=True)
per_file = rows // files
assert per_file * files == rows, "ROWS must be a multiple of FILES"

COLUMNS = {
    "order_id": "int64",
    "customer_id": "int64",
    "email": "string",
    "amount": "float64",
    "status": "string",
    "created_at": "timestamp",
}
# The six columns, from an order id `i`: hashes of it, so the data is the same every run.
# Emails are mixed-case so lower() has work to do; created_at is ISO-8601 with a 'T'.
SELECT = """
    i AS order_id,
    (hash(i) % 1000000)::BIGINT AS customer_id,
    'User' || (hash(i) % 1000000)::BIGINT || '@Example.COM' AS email,
    round(((hash(i * 7 + 1) % 5000000)::DOUBLE) / 100.0, 2) AS amount,
    ['paid', 'shipped', 'cancelled', 'refunded'][1 + (hash(i * 13 + 5) % 4)::INT] AS status,
    strftime(TIMESTAMP '2024-01-01 00:00:00' + to_seconds((hash(i * 31 + 3) % 31536000)::BIGINT),
             '%Y-%m-%dT%H:%M:%S') AS created_at"""
# Four more for the one-big-file shape; `note` is free text a person typed: commas and quotes
# inside, so the CSV quotes it and a reader cannot cut rows on commas alone.
BIG_COLUMNS = {"quantity": "int64", "country": "string", "discount": "float64", "note": "string"}
BIG_SELECT = """,
    1 + (hash(i * 3 + 7) % 9)::BIGINT AS quantity,
    ['DE', 'FR', 'US', 'GB', 'JP', 'BR'][1 + (hash(i * 5 + 2) % 6)::INT] AS country,
    round(((hash(i * 11 + 4) % 3000)::DOUBLE) / 10000.0, 4) AS discount,
    ['leave at the door, please', 'call "before" delivery', 'gift wrap, no invoice',
     'fragile: glass, handle with care', 'ring twice, then wait', ''][1 + (hash(i * 17 + 9) % 6)::INT]
      || ' #' || (hash(i) % 997)::BIGINT AS note"""

con = duckdb.connect()
con.execute("SET threads = 2")
start = time.perf_counter()
columns = dict(COLUMNS)
if shape == "files":
    for k in range(files):
        path = os.path.join(out_dir, f"orders-{k:03d}.csv")
        tmp = path + ".tmp"
        con.execute(
            f"COPY (SELECT {SELECT} FROM range({k * per_file}, {(k + 1) * per_file}) t(i)) "
            f"TO '{tmp}' (FORMAT csv, HEADER)"
        )
        os.replace(tmp, path)
elif shape == "big":
    assert files == 1, "the big shape is one file"
    columns.update(BIG_COLUMNS)
    path = os.path.join(out_dir, "orders.csv")
    con.execute(
        f"COPY (SELECT {SELECT}{BIG_SELECT} FROM range(0, {rows}) t(i)) "
        f"TO '{path}.tmp' (FORMAT csv, HEADER, QUOTE '\"', FORCE_QUOTE (note))"
    )
    os.replace(path + ".tmp", path)
elif shape == "small":
    # One query for all rows, then one small file each, in the order a stream writer would
    # land them (names sort in landing order).
    cur = con.execute(f"SELECT {SELECT} FROM range(0, {rows}) t(i) ORDER BY i")
    header = list(COLUMNS)
    for k in range(files):
        chunk = cur.fetchmany(per_file)
        with open(os.path.join(out_dir, f"part-{k:06d}.csv"), "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(header)
            w.writerows(chunk)
else:
    sys.exit(f"unknown shape {shape!r}: files, big or small")
with open(os.path.join(out_dir, ".columns.json"), "w") as f:
    json.dump(columns, f)
with open(os.path.join(out_dir, ".complete"), "w") as f:
    f.write(f"{shape}: {rows} rows in {files} files\n")
print(f"generated {shape}: {rows} rows in {files} files under {out_dir} in {time.perf_counter() - start:.1f}s")
