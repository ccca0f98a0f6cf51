"""The columns a data folder declares (DIR/.columns.json, written by gen_data.py), in each
engine's own types, so every leg reads the same schema. A folder generated before
.columns.json existed has the six order columns."""

import json
import os

ORDERS = {"order_id": "int64", "customer_id": "int64", "email": "string", "amount": "float64",
          "status": "string", "created_at": "timestamp"}


def declared(data_dir):
    path = os.path.join(data_dir, ".columns.json")
    return json.load(open(path)) if os.path.exists(path) else dict(ORDERS)


DUCKDB = {"int64": "BIGINT", "float64": "DOUBLE", "string": "VARCHAR", "timestamp": "TIMESTAMP"}


def duckdb_view(data_dir):
    """DuckDB's CREATE VIEW input over every CSV file of the folder."""
    cols = ", ".join(f"'{name}': '{DUCKDB[t]}'" for name, t in declared(data_dir).items())
    return (f"CREATE VIEW input AS SELECT * FROM read_csv('{data_dir}/*.csv', header = true, "
            f"columns = {{{cols}}}, timestampformat = '%Y-%m-%dT%H:%M:%S')")


def polars_schema(data_dir):
    import polars as pl

    types = {"int64": pl.Int64, "float64": pl.Float64, "string": pl.String,
             "timestamp": pl.Datetime("us")}
    return {name: types[t] for name, t in declared(data_dir).items()}
