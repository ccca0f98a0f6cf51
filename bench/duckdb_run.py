"""DuckDB leg: CSV -> the transform SQL -> one Parquet file. Usage: duckdb_run.py DATA_DIR SQL_FILE OUT.parquet"""

import sys
import time

import duckdb

from columns import duckdb_view

data_dir, sql_file, out = sys.argv[1], sys.argv[2], sys.argv[3]
sql = open(sql_file).read().strip().rstrip(";")
start = time.perf_counter()
con = duckdb.connect()
con.execute("SET threads = 2")
# The same declared columns as the sluice spec; `input` is what the SQL reads.
con.execute(duckdb_view(data_dir))
con.execute(f"COPY ({sql}) TO '{out}' (FORMAT parquet)")
print(f"duckdb: {time.perf_counter() - start:.2f}s inside the process", file=sys.stderr)
