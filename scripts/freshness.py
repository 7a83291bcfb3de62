"""Freshness soak: real-time traffic at a sustained rate through every layer, and how stale each
layer is while it flows.

usage: python scripts/freshness.py [--bin PATH] [--rate EVENTS_PER_S] [--secs N] [--warmup N]

`tributary generate --live-secs N --rate R` writes one file per source every second with events
stamped at the moment they are written; `tributary standalone` runs bronze, silver, gold and the
federator on that landing zone (one process, every service). Every 0.5 s the harness reads
`tributary_max_event_time_unix_seconds` from the process's /metrics and records, per layer,
now - the newest event time visible in that layer's stalest table: the freshness the dashboard and
the alerts use ("how old is the newest data a reader of this layer sees"). It includes up to the
1 s file interval and the gauge's 1 s resolution. Samples of the first --warmup seconds (tables
created, first batches) are left out. Printed: p50/p95/p99/max per layer against the brief's
goals, the rate achieved, CPU cores the pipeline used and its peak RSS.
Bounded: the generator stops after --secs, the pipeline is stopped 15 s later. Loopback only.
"""
import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

from bench import free_port, pct  # same folder

GOALS = {"bronze": 5, "silver": 30, "gold": 60, "central": 90}
LINE = re.compile(r'^tributary_max_event_time_unix_seconds\{([^}]*)\}\s+([0-9.eE+-]+)')
LABEL = re.compile(r'(\w+)="([^"]*)"')


def layer_of(labels):
    stage, table = labels.get("stage", ""), labels.get("table", "")
    if stage == "bronze" and table.startswith("bronze/") and "_quarantine" not in table:
        return "bronze"
    if stage == "silver" and table.startswith("silver/") and "_quarantine" not in table:
        return "silver"
    if stage == "gold":
        return "gold"
    if stage == "federator":
        return "central"
    return None


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
        text = r.read().decode()
    newest = {}
    for line in text.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        labels = dict(LABEL.findall(m.group(1)))
        layer = layer_of(labels)
        if layer:
            newest[(layer, labels.get("table", ""))] = float(m.group(2))
    return newest


def cpu_secs(pid):
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="./target/release/tributary")
    ap.add_argument("--rate", type=float, default=10000, help="events/s, all sources together")
    ap.add_argument("--secs", type=int, default=120, help="how long traffic flows")
    ap.add_argument("--warmup", type=int, default=20, help="seconds of samples left out at the start")
    ap.add_argument("--event-size-min", type=int, default=1024)
    ap.add_argument("--event-size-max", type=int, default=4096)
    args = ap.parse_args()
    if args.secs > 3600 or args.rate > 500000:
        sys.exit("bounded harness: --secs <= 3600 and --rate <= 500000")
    work = tempfile.mkdtemp(prefix="tributary-freshness-")
    port = free_port()
    env = dict(os.environ, RUST_LOG="warn", TRIBUTARY__SERVER__ADMIN_ADDR=f"127.0.0.1:{port}",
               TRIBUTARY__SERVER__GRPC_ADDR=f"127.0.0.1:{free_port()}")
    data = f"{work}/data"
    pipe = subprocess.Popen([args.bin, "standalone", "--data", data, "--regions", "r1", "--events-per-source", "0",
                             "--stages", "bronze,silver,gold,federator", "--timeout-secs", str(args.secs + 300)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    gen = None
    try:
        for _ in range(300):
            try:
                scrape(port)
                break
            except OSError:
                time.sleep(0.1)
        else:
            sys.exit("the pipeline's /metrics did not come up")
        gen = subprocess.Popen([args.bin, "generate", "--data", data, "--regions", "r1", "--rate", str(args.rate),
                                "--live-secs", str(args.secs), "--event-size-min", str(args.event_size_min),
                                "--event-size-max", str(args.event_size_max)],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        t0 = time.time()
        samples = {k: [] for k in GOALS}
        cpu0 = None
        while gen.poll() is None and time.time() - t0 < args.secs + 60:
            time.sleep(0.5)
            now = time.time()
            try:
                newest = scrape(port)
            except OSError:
                continue
            if now - t0 < args.warmup:
                continue
            if cpu0 is None:
                cpu0, w0 = cpu_secs(pipe.pid), now
            for layer in GOALS:
                times = [v for (l, _), v in newest.items() if l == layer]
                if times:
                    samples[layer].append(now - min(times))
        cpu1, w1 = cpu_secs(pipe.pid), time.time()
        gen_out = gen.communicate(timeout=60)[0].strip()
        rss = peak_rss_mib(pipe.pid)
        print(f"freshness soak: {args.rate:.0f} events/s for {args.secs}s ({args.event_size_min}-{args.event_size_max} B "
              f"events, 1 region, 4 sources, every layer in one process); first {args.warmup}s left out")
        print(f"  generator: {gen_out.splitlines()[-1] if gen_out else '?'}")
        if cpu0 is not None:
            print(f"  pipeline: {(cpu1 - cpu0) / max(w1 - w0, 1e-9):.2f} cores busy on average, peak RSS {rss:.0f} MiB")
        print(f"  {'layer':<8} {'samples':>7} {'p50 s':>7} {'p95 s':>7} {'p99 s':>7} {'max s':>7} {'goal p99':>9}")
        ok = True
        for layer, goal in GOALS.items():
            v = samples[layer]
            p99 = pct(v, 99)
            met = bool(v) and p99 <= goal
            ok &= met
            print(f"  {layer:<8} {len(v):>7} {pct(v, 50):>7.1f} {pct(v, 95):>7.1f} {p99:>7.1f} "
                  f"{max(v) if v else float('nan'):>7.1f} {goal:>8}s {'met' if met else 'NOT MET'}")
        print("  every goal met" if ok else "  not every goal met")
    finally:
        if gen and gen.poll() is None:
            gen.kill()
        pipe.send_signal(signal.SIGTERM)
        try:
            pipe.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pipe.kill()
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
