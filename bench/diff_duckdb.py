"""DuckDB leg of the diff benchmark: a full outer join of the two tables' Parquet files on id,
counting rows only in A, only in B and changed per column (NULL equals NULL), as `sluice diff`
reports them. Usage: diff_duckdb.py A_DIR B_DIR. Prints the counts as JSON on stdout."""

import json
import sys
import time

import duckdb

a, b = sys.argv[1], sys.argv[2]
cols = ["name", "amount", "qty", "day"]
start = time.perf_counter()
con = duckdb.connect()
con.execute("SET threads = 2")
ne = {c: f"(a.id IS NOT NULL AND b.id IS NOT NULL AND a.{c} IS DISTINCT FROM b.{c})" for c in cols}
row = con.execute(
    f"""
    SELECT count(*) FILTER (WHERE b.id IS NULL) AS only_in_a,
           count(*) FILTER (WHERE a.id IS NULL) AS only_in_b,
           count(*) FILTER (WHERE {' OR '.join(ne.values())}) AS changed,
           {', '.join(f'count(*) FILTER (WHERE {e}) AS "{c}"' for c, e in ne.items())}
    FROM read_parquet('{a}/*.parquet') a
    FULL OUTER JOIN read_parquet('{b}/*.parquet') b ON a.id = b.id
    """
).fetchone()
out = {
    "only_in_a": row[0],
    "only_in_b": row[1],
    "changed": row[2],
    "columns": {c: row[3 + i] for i, c in enumerate(cols) if row[3 + i]},
}
print(json.dumps(out))
print(f"duckdb: {time.perf_counter() - start:.2f}s inside the process", file=sys.stderr)
