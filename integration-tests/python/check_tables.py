"""Independent reader check: the `deltalake` Python package reads Tributary's bronze and gold
tables and must agree with the generator's ground truth.

usage: check_tables.py <data_root> <truth.json>
"""
import json
import os
import sys
from collections import defaultdict
from decimal import Decimal

from deltalake import DeltaTable


def main() -> int:
    data_root, truth_path = sys.argv[1], sys.argv[2]
    truth = json.load(open(truth_path))
    failures = []
    checked = 0
    for region, sources in truth["regions"].items():
        root = f"{data_root}/regions/{region}"
        for source, t in sources.items():
            bronze = DeltaTable(f"{root}/bronze/{source}").to_pyarrow_table(columns=["event_id", "source"])
            want = t["lines"] - t["malformed"]
            if bronze.num_rows != want:
                failures.append(f"{region}/bronze/{source}: {bronze.num_rows} rows, truth {want}")
            checked += 1
        q = DeltaTable(f"{root}/bronze/_quarantine").to_pyarrow_table(columns=["source", "reason"])
        per_source = defaultdict(int)
        for s in q.column("source").to_pylist():
            per_source[s] += 1
        for source, t in sources.items():
            if per_source[source] != t["malformed"]:
                failures.append(f"{region}/bronze/_quarantine[{source}]: {per_source[source]}, truth {t['malformed']}")
        counts = DeltaTable(f"{root}/gold/event_counts_minute").to_pyarrow_table(columns=["source", "event_count"])
        by_source = defaultdict(int)
        for s, n in zip(counts.column("source").to_pylist(), counts.column("event_count").to_pylist()):
            by_source[s] += n
        for source, t in sources.items():
            if by_source[source] != t["unique_valid"]:
                failures.append(f"{region}/gold/event_counts_minute[{source}]: {by_source[source]}, truth {t['unique_valid']}")
        billing = DeltaTable(f"{root}/gold/billing_usage_hourly").to_pyarrow_table(
            columns=["customer_id", "sku", "window_start", "dbu"])
        got = {}
        for c, k, w, d in zip(*(billing.column(n).to_pylist() for n in ["customer_id", "sku", "window_start", "dbu"])):
            key = f"{region}|{c}|{k}|{w.strftime('%Y-%m-%dT%H:%M:%S.000Z')}"
            got[key] = got.get(key, Decimal(0)) + Decimal(d)
        want = {k: Decimal(v) for k, v in truth["billing_hourly"].items() if k.startswith(region + "|")}
        if got != want:
            diff = sorted(set(got.items()) ^ set(want.items()))[:5]
            failures.append(f"{region}/gold/billing_usage_hourly differs from truth, e.g. {diff}")
        checked += 1
    if failures:
        print("python deltalake reader DISAGREES:")
        for f in failures:
            print("  " + f)
        return 1
    print(f"python deltalake reader agrees with ground truth ({checked} tables checked)")
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: deltalake's background threads occasionally abort the process
    # while it shuts down ("terminate called without an active exception"), after the check.
    os._exit(code)
