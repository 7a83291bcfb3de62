"""Load harness: events/s, latency percentiles and peak RSS of the pipeline on this machine.

usage: python scripts/bench.py [--events N] [--kafka] [--tansu PATH] [--bin PATH]

- files: generate N events per source (1 region); bronze alone to idle vs. the polars baseline
  (scripts/baseline_polars.py) on the same files, ratio printed; then silver, gold and the
  federator each alone on the backlog (events/s, CPU-s per million events, peak RSS per service);
  then all stages at once on a fresh copy (end to end) and the reconciliation verdict.
- kafka: start tansu on loopback, pre-load the topics with ~1 KB events, then time
  `bronze-ingest --from kafka --trigger available-now` alone: messages/s and peak RSS. Then a
  live run: a producer at a fixed rate while ingest runs; end-to-end latency percentiles are
  read back from bronze as `_ingested_at - _kafka_timestamp`.
Every loop is bounded; all traffic stays on 127.0.0.1.
"""
import argparse
import json
import re
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def run(cmd, env=None, timeout=1800):
    """Runs cmd; returns (seconds, peak RSS MiB of this child, stdout)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.time()
    out = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=timeout, text=True)
    secs = time.time() - t0
    if out.returncode != 0:
        sys.exit(f"failed ({out.returncode}): {' '.join(cmd)}\n{out.stdout[-2000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss of children is the max over all waited children: report it only when it grew.
    return secs, (peak if peak > before else None), out.stdout


def pct(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    k = min(len(values) - 1, int(round(p / 100.0 * (len(values) - 1))))
    return values[k]


IDLE = re.compile(r"pipeline idle after ([0-9.]+)s; process cpu ([0-9.]+)s \(user\+sys\), peak RSS ([0-9]+) MiB")


def standalone(args, data, stages, env):
    """Runs `tributary standalone` for `stages` to idle; returns (wall s to idle, cpu s, peak RSS MiB, stdout)."""
    _, _, out = run([args.bin, "standalone", "--data", data, "--regions", "r1", "--stages", stages,
                     "--exit-when-idle", "--timeout-secs", "1800"], env)
    m = IDLE.search(out)
    if not m:
        sys.exit(f"no idle line in the output of standalone --stages {stages}:\n{out[-2000:]}")
    return float(m.group(1)), float(m.group(2)), float(m.group(3)), out


def files_bench(args, work, env):
    """Files path, release binary: bronze alone against the polars baseline on the same files, then
    each later stage alone on the backlog the previous one left (CPU-s per million events, RSS per
    service), then every layer at once on a fresh copy of the same traffic (end to end)."""
    total = 4 * args.events
    gen = ["generate", "--regions", "r1", "--events-per-source", str(args.events), "--files-per-source", "32"]
    # Clean traffic for the comparison with the baseline (the script would stop at the first
    # invalid UTF-8 line); the end-to-end run below uses the default messy mix.
    clean = ["--dup-pct", "0", "--late-pct", "0", "--out-of-order-pct", "0", "--malformed-pct", "0",
             "--null-id-pct", "0", "--unknown-field-pct", "0", "--empty-id-pct", "0", "--bom-every", "0",
             "--decimal-edge-pct", "0"]
    data = f"{work}/files"
    run([args.bin, *gen, *clean, "--data", data], env)
    landing = f"{data}/regions/r1/landing"
    mb = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(landing) for f in fs) / 1e6
    print(f"files path: {total} events in {mb:.0f} MB of NDJSON (1 region, 4 sources, 32 files each, no messy knobs); binary {args.bin}")
    print(f"  {'stage (alone, on the backlog)':<32} {'events/s':>10} {'wall s':>8} {'cpu s':>7} {'cpu-s/M ev':>11} {'peak RSS MiB':>13}")
    per_stage = {}
    for stage in ["bronze", "silver", "gold", "federator"]:
        wall, cpu, rss, _ = standalone(args, data, stage, env)
        per_stage[stage] = (wall, cpu, rss)
        print(f"  {stage:<32} {total / wall:>10.0f} {wall:>8.2f} {cpu:>7.2f} {cpu / (total / 1e6):>11.1f} {rss:>13.0f}")
    py = args.python or sys.executable
    secs, _, out = run([py, os.path.join(os.path.dirname(__file__), "baseline_polars.py"), landing, f"{work}/polars"], env)
    m = re.search(r"rows=([0-9]+) seconds=([0-9.]+)", out)
    rows, psecs = int(m.group(1)), float(m.group(2))
    bronze_rate = total / per_stage["bronze"][0]
    print(f"  {'polars baseline (same files)':<32} {rows / psecs:>10.0f} {psecs:>8.2f}  (scripts/baseline_polars.py, {rows} rows)")
    print(f"  bronze / polars baseline: {bronze_rate / (rows / psecs):.2f}x")
    data2 = f"{work}/e2e"
    run([args.bin, *gen, "--data", data2], env)
    wall, cpu, rss, out = standalone(args, data2, "bronze,silver,gold,federator", env)
    print(f"  {'end to end (all stages at once)':<32} {total / wall:>10.0f} {wall:>8.2f} {cpu:>7.2f} {cpu / (total / 1e6):>11.1f} {rss:>13.0f}")
    rec = out[out.find("reconciliation"):]
    print("  reconciliation: " + ("exact (every layer = ground truth)" if "every layer matches the generator" in rec else "NOT EXACT\n" + rec))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=25000, help="events per source")
    ap.add_argument("--kafka", action="store_true")
    ap.add_argument("--tansu", default=os.path.expanduser("~/.cache/tributary/tansu-0.6.0/bin/tansu"))
    ap.add_argument("--bin", default="./target/release/tributary")
    ap.add_argument("--storage", default="sqlite://tansu.db", help="tansu storage engine (memory://tansu/ for its in-memory one)")
    ap.add_argument("--python", default=None, help="interpreter with polars for the baseline")
    ap.add_argument("--rate", type=int, default=2000, help="live-run producer rate (events/s)")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="tributary-bench-")
    env = dict(os.environ, RUST_LOG="warn")
    try:
        if not args.kafka:
            files_bench(args, work, env)
            return
        port = free_port()
        os.makedirs(f"{work}/broker")
        broker = subprocess.Popen([args.tansu, "broker", "--listener-url", f"tcp://127.0.0.1:{port}",
                                   "--advertised-listener-url", f"tcp://127.0.0.1:{port}", "--storage-engine", args.storage, "--silent"],
                                  cwd=f"{work}/broker", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(300):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    time.sleep(0.1)
            common = ["--regions", "r1", "--brokers", f"127.0.0.1:{port}"]
            data = f"{work}/k1"
            secs, _, _ = run([args.bin, "generate", "--data", data, *common, "--events-per-source", str(args.events),
                              "--files-per-source", "16", "--event-size-min", "900", "--event-size-max", "1150",
                              "--kafka", "--partitions", "4"], env)
            total = 4 * args.events
            print(f"pre-loaded ~{total} messages of ~1 KB in {secs:.1f}s (generate + produce)")
            # The broker's own ceiling on the same topics: a plain consumer that only counts.
            _, _, out = run([args.bin, "bench-kafka-ceiling", "--data", data, *common], env)
            print("  " + out.strip().splitlines()[-1])
            m = re.search(r"= ([0-9]+) msgs/s", out)
            ceiling = float(m.group(1)) if m else None
            kenv = dict(env, TRIBUTARY__KAFKA__GROUP_ID="bench-preloaded", TRIBUTARY__KAFKA__MAX_BATCH_RECORDS="20000",
                        RUST_LOG="warn,bronze_ingest=info", TRIBUTARY__TELEMETRY__LOG_FORMAT="json")
            before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            t0 = time.time()
            r = subprocess.run([args.bin, "bronze-ingest", "--data", data, *common, "--region", "r1", "--from", "kafka",
                                "--trigger", "available-now"], env=kenv, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, timeout=1800)
            secs = time.time() - t0
            if r.returncode != 0:
                sys.exit(f"bronze-ingest --from kafka failed ({r.returncode}):\n{r.stderr[-2000:]}")
            peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            rss = peak if peak > before else None
            drained = None
            for line in r.stderr.splitlines():
                if "kafka backlog drained" in line:
                    try:
                        f = json.loads(line).get("fields", {})
                        drained = (int(f["messages"]), float(f["secs"]))
                    except (ValueError, KeyError):
                        pass
            print(f"kafka→bronze (pre-loaded topic, storage {args.storage}): ~{total} msgs in {secs:.1f}s wall "
                  f"(process start, group join, drain, idle check) = {total / secs:.0f} msgs/s; peak RSS "
                  f"{rss / 1024 if rss else float('nan'):.0f} MiB")
            if drained:
                n, d = drained
                print(f"  drain alone (first message → every partition committed to its high watermark): {n} msgs in "
                      f"{d:.2f}s = {n / d:.0f} msgs/s, {n / d / ceiling:.2f}× the broker's ceiling" if ceiling else "")
            # Live: producer at a fixed rate while ingest runs; latency from the rows themselves.
            data2 = f"{work}/k2"
            live_events = min(args.events, args.rate * 20 // 4)
            lenv = dict(env, TRIBUTARY__KAFKA__GROUP_ID="bench-live", TRIBUTARY__KAFKA__TOPIC_PREFIX="live.",
                        TRIBUTARY__KAFKA__MAX_BATCH_WAIT_MS="250")
            # Create the live topics first, so the consumer's subscription sees them at once.
            run([args.bin, "generate", "--data", f"{work}/k2-topics", *common, "--events-per-source", "0",
                 "--kafka", "--partitions", "4"], lenv)
            ingest = subprocess.Popen([args.bin, "bronze-ingest", "--data", data2, *common, "--region", "r1", "--from", "kafka"],
                                      env=lenv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(8)  # join the group before traffic starts
            run([args.bin, "generate", "--data", data2, *common, "--events-per-source", str(live_events),
                 "--files-per-source", "40", "--event-size-min", "900", "--event-size-max", "1150",
                 "--kafka", "--partitions", "4", "--rate", str(args.rate)], lenv)
            time.sleep(10)
            ingest.terminate()
            ingest.wait(timeout=60)
            from deltalake import DeltaTable
            lat = []
            for s in ["audit", "job", "billing", "cluster_metrics"]:
                t = DeltaTable(f"{data2}/regions/r1/bronze/{s}").to_pyarrow_table(columns=["_ingested_at", "_kafka_timestamp"])
                for a, b in zip(t.column("_ingested_at").to_pylist(), t.column("_kafka_timestamp").to_pylist()):
                    if a and b:
                        lat.append((a - b).total_seconds() * 1000)
            print(f"live kafka→bronze at {args.rate} events/s: {len(lat)} rows; produce→committed latency ms "
                  f"p50 {pct(lat, 50):.0f}  p95 {pct(lat, 95):.0f}  p99 {pct(lat, 99):.0f}  max {max(lat) if lat else float('nan'):.0f}")
        finally:
            broker.terminate()
            broker.wait(timeout=30)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
