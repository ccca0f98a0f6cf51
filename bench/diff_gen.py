"""Two Delta tables for the diff benchmark, and the differences planted between them.

Usage: diff_gen.py OUT_DIR ROWS

A: ROWS rows (id, name, amount, qty, day), ids 0..ROWS-1 in order. B: the same rows in reverse
order (another file layout) with 100 planted differences: 30 rows missing, 30 extra rows,
40 rows changed in exactly one column (name, amount, qty value->NULL and NULL->value, day).
Writes OUT_DIR/a, OUT_DIR/b (Delta) and OUT_DIR/planted.json (the expected counts).
"""

import json
import random
import sys

import duckdb
from deltalake import write_deltalake

out, rows = sys.argv[1], int(sys.argv[2])
rnd = random.Random(7)

# 70 distinct existing ids: 30 go missing, 32 change a value, 8 with a NULL qty get one.
picked = rnd.sample(range(rows), 400)
with_null = [i for i in picked if i % 7 == 0][:8]
others = [i for i in picked if i % 7 != 0]
missing, others = others[:30], others[30:]
renamed, repriced, qty_nulled, redated = others[:8], others[8:16], others[16:24], others[24:32]
extra = list(range(rows + 1000, rows + 1000 + 30 * 3, 3))
assert len(with_null) == 8 and len(redated) == 8


def ids(xs):
    return "(" + ",".join(str(x) for x in xs) + ")"


con = duckdb.connect()
con.execute("SET threads = 2")
row = """SELECT i AS id, 'n' || i AS name, i * 0.5::DOUBLE AS amount,
           CASE WHEN i % 7 = 0 THEN NULL ELSE (i % 1000)::INTEGER END AS qty,
           DATE '1970-01-01' + (i % 3650)::INTEGER AS day"""
con.execute(f"CREATE TABLE a AS {row} FROM range({rows}) t(i) ORDER BY i")
con.execute(
    f"""CREATE TABLE b AS
    SELECT id,
           CASE WHEN id IN {ids(renamed)} THEN 'renamed ' || name ELSE name END AS name,
           CASE WHEN id IN {ids(repriced)} THEN amount + 0.25 ELSE amount END AS amount,
           CASE WHEN id IN {ids(qty_nulled)} THEN NULL
                WHEN id IN {ids(with_null)} THEN -1 ELSE qty END AS qty,
           CASE WHEN id IN {ids(redated)} THEN day + 1 ELSE day END AS day
    FROM (SELECT * FROM a WHERE id NOT IN {ids(missing)}
          UNION ALL {row} FROM (SELECT unnest({extra}::BIGINT[]) AS i))
    ORDER BY id DESC"""
)
for name in ["a", "b"]:
    table = con.sql(f"SELECT * FROM {name}").to_arrow_table()
    write_deltalake(f"{out}/{name}", table, mode="overwrite")
planted = {
    "rows_a": rows,
    "rows_b": rows - len(missing) + len(extra),
    "only_in_a": len(missing),
    "only_in_b": len(extra),
    "changed": 40,
    "columns": {"name": 8, "amount": 8, "qty": 16, "day": 8},
}
json.dump(planted, open(f"{out}/planted.json", "w"), indent=1)
print(json.dumps(planted), file=sys.stderr)
