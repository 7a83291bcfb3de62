"""The baseline a user would write instead of Tributary's bronze: landing NDJSON → one Delta table
per source with polars (read lines, keep the raw payload, extract the envelope with
`json_path_match`, `write_delta`). Run by `scripts/bench.py` on the same files, same run.

usage: python scripts/baseline_polars.py LANDING_DIR OUT_DIR   (prints `rows=<n> seconds=<s>`)
"""
import gzip
import os
import sys
import time

import polars as pl

landing, out = sys.argv[1], sys.argv[2]
t0 = time.time()
rows = 0
for source in sorted(os.listdir(landing)):
    lines = []
    for name in sorted(os.listdir(os.path.join(landing, source))):
        path = os.path.join(landing, source, name)
        data = gzip.open(path).read() if name.endswith(".gz") else open(path, "rb").read()
        lines.extend(line for line in data.decode("utf-8").splitlines() if line.strip())
    df = pl.DataFrame({"payload": lines}).with_columns(
        [pl.col("payload").str.json_path_match(f"$.{f}").alias(f) for f in ("event_id", "event_time", "region", "workspace_id")]
    )
    df = df.with_columns(pl.col("event_time").str.slice(0, 10).alias("event_date"))
    df.write_delta(os.path.join(out, source), mode="append", delta_write_options={"partition_by": ["event_date"]})
    rows += df.height
print(f"rows={rows} seconds={time.time() - t0:.3f}")
