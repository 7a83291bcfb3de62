#!/usr/bin/env python3
"""Independent proof of an erasure: reads every Parquet file under a data root with pyarrow
(every text value, nested ones included) and looks for an identifier as a whole token; opens
every Delta table with the `deltalake` Python reader (the live snapshot must stay readable after
the files were deleted) and counts its rows.

    scan_for_token.py DATA_ROOT TOKEN  ->  JSON {"parquet_files", "hits", "tables": {rel: rows}}
"""
import json
import os
import re
import sys

import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import DeltaTable


def texts(arr):
    t = arr.type
    if pa.types.is_struct(t):
        for i in range(t.num_fields):
            yield from texts(arr.field(i))
    elif pa.types.is_list(t) or pa.types.is_large_list(t):
        yield from texts(arr.flatten())
    elif pa.types.is_map(t):
        yield from texts(arr.keys)
        yield from texts(arr.items)
    elif pa.types.is_dictionary(t):
        yield from texts(arr.dictionary)
    elif pa.types.is_string(t) or pa.types.is_large_string(t):
        for v in arr.to_pylist():
            if v is not None:
                yield v.encode()
    elif pa.types.is_binary(t) or pa.types.is_large_binary(t):
        for v in arr.to_pylist():
            if v is not None:
                yield v


def main():
    root, token = sys.argv[1], sys.argv[2]
    pat = re.compile(rb"(?<![A-Za-z0-9_.\-])" + re.escape(token.encode()) + rb"(?![A-Za-z0-9_.\-])")
    files, hits, tables = 0, [], {}
    for d, dirs, names in os.walk(root):
        if "_delta_log" in dirs:
            rel = os.path.relpath(d, root)
            tables[rel] = DeltaTable(d).to_pyarrow_table().num_rows
        for n in names:
            if not n.endswith(".parquet"):
                continue
            p = os.path.join(d, n)
            files += 1
            t = pq.read_table(p)
            if any(pat.search(v) for c in t.columns for v in texts(c.combine_chunks())):
                hits.append(os.path.relpath(p, root))
    print(json.dumps({"parquet_files": files, "hits": hits, "tables": tables}))


if __name__ == "__main__":
    main()
