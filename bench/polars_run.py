"""Polars + deltalake leg: scan_csv -> the transform SQL (Polars SQL) -> write_deltalake into a
new table. Usage: polars_run.py DATA_DIR SQL_FILE TABLE_DIR"""

import sys
import time

import polars as pl
from deltalake import write_deltalake

from columns import polars_schema

data_dir, sql_file, table = sys.argv[1], sys.argv[2], sys.argv[3]
sql = open(sql_file).read().strip().rstrip(";")
start = time.perf_counter()
lf = pl.scan_csv(
    f"{data_dir}/*.csv",
    has_header=True,
    schema=polars_schema(data_dir),
)
out = pl.SQLContext(input=lf).execute(sql).collect(engine="streaming")
write_deltalake(table, out.to_arrow(), mode="error")
print(f"polars: {time.perf_counter() - start:.2f}s inside the process ({out.height} rows)", file=sys.stderr)
