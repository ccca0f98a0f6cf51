"""Makes the schema benchmark's table: 10 million order rows written under orders_bench@1 as a
Delta table (delta-rs), from DuckDB-generated data. Usage: migrate_gen.py TABLE_DIR ROWS"""

import sys

import duckdb
from deltalake import write_deltalake

table, rows = sys.argv[1], int(sys.argv[2])
con = duckdb.connect()
con.execute("SET threads = 2")
per = 1_000_000
first = True
for start in range(0, rows, per):
    batch = con.sql(
        f"""
        SELECT i AS order_id,
               (hash(i) % 1000000)::INTEGER AS customer_id,
               'user' || (hash(i) % 1000000)::BIGINT || '@example.com' AS email,
               (((hash(i * 7 + 1) % 5000000)::DOUBLE) / 100.0)::FLOAT AS amount,
               ['paid', 'shipped', 'cancelled', 'refunded'][1 + (hash(i * 13 + 5) % 4)::INT] AS status,
               TIMESTAMPTZ '2024-01-01 00:00:00+00' + to_seconds((hash(i * 31 + 3) % 31536000)::BIGINT) AS created_at
        FROM range({start}, {min(start + per, rows)}) t(i)
        """
    ).to_arrow_table()
    write_deltalake(table, batch, mode="overwrite" if first else "append")
    first = False
print(f"wrote {rows} rows to {table}", file=sys.stderr)
