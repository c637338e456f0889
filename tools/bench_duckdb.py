#!/usr/bin/env python3
"""Times Docket's benchmark queries in DuckDB over an exported events.parquet (called by `docket bench sql`).

Input: one JSON argument {"events": path, "views": [{name, sql}], "queries": [{name, sql}], "runs": n}.
Output: JSON {query name: {"median_ms": float, "rows": int, "times_ms": [...]}} on stdout.
"""
import json
import subprocess
import sys
import time

try:
    import duckdb
    import pytz  # noqa: F401  (DuckDB needs it to hand back TIMESTAMPTZ values)
except ImportError:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "duckdb", "pytz"], check=True)
    import duckdb

spec = json.loads(sys.argv[1])
con = duckdb.connect()
con.execute("SET TimeZone = 'UTC'")
con.execute(f"CREATE VIEW events AS SELECT * FROM read_parquet('{spec['events']}')")
for view in spec["views"]:
    con.execute(f"CREATE VIEW {view['name']} AS {view['sql']}")
out = {}
for q in spec["queries"]:
    times = []
    rows = 0
    for _ in range(max(1, spec["runs"])):
        t = time.perf_counter()
        rows = len(con.execute(q["sql"]).fetchall())
        times.append((time.perf_counter() - t) * 1e3)
    ordered = sorted(times)
    out[q["name"]] = {"median_ms": ordered[len(ordered) // 2], "rows": rows, "times_ms": times}
print(json.dumps(out))
