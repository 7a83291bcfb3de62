"""kafka2prom benchmark (issue #11): samples/s per core and dump→scrapeable latency at 1M series,
with Debian's prometheus-pushgateway as the baseline in the same run.

usage: python scripts/bench_bridge.py [--bin PATH] [--tansu PATH] [--instances 100] [--series 10000] [--rounds 5]

- kafka2prom: tansu on loopback, one release `tributary kafka2prom` member; each round every
  instance's dump (`--series` gauges) is produced once (`tributary bench-bridge-produce`, acks=1);
  the round is exposed when the member's own counter of applied samples reaches the round's
  total (the store is swapped under one lock, so that is when a scrape sees it). Latency per
  round: from the broker's acknowledgement of the round's last dump to all of it exposed.
  CPU-seconds of the member process (utime+stime from /proc) over the rounds give samples/s per
  core. Then one full scrape of /metrics is timed (the page Prometheus would read).
- pushgateway: the same bodies PUT to /metrics/job/bench/instance/<i> (4 concurrent clients),
  latency from the round's last PUT returning to a scrape showing the round, CPU-seconds of the
  pushgateway process while the pushes run (its scrapes are not counted), one full scrape timed.
Every loop is bounded; all traffic stays on 127.0.0.1.
"""
import argparse
import concurrent.futures
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from bench import free_port, pct  # same folder: scripts/

TICK = os.sysconf("SC_CLK_TCK")


def wait_port(port, secs=30):
    deadline = time.time() + secs
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"nothing listens on {port}")


def cpu_secs(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICK


def peak_rss_mib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def get(url, timeout=120):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def counter(admin_port, outcome):
    body = get(f"http://127.0.0.1:{admin_port}/metrics", 10).decode()
    needle = f'tributary_kafka2prom_samples_total{{outcome="{outcome}"}} '
    for line in body.splitlines():
        if line.startswith(needle):
            return float(line[len(needle):])
    return 0.0


def body(series, rnd):
    lines = ["# HELP bench_bridge_value A benchmark gauge.", "# TYPE bench_bridge_value gauge"]
    lines += [f'bench_bridge_value{{shard="{k % 16}",series="s{k}"}} {rnd}' for k in range(series)]
    return ("\n".join(lines) + "\n").encode()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="./target/release/tributary")
    ap.add_argument("--tansu", default=os.path.expanduser("~/.cache/tributary/tansu-0.6.0/bin/tansu"))
    ap.add_argument("--pushgateway", default=shutil.which("prometheus-pushgateway") or "/usr/bin/prometheus-pushgateway")
    ap.add_argument("--instances", type=int, default=100)
    ap.add_argument("--series", type=int, default=10000, help="series per instance")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--pushgateway-budget", type=float, default=120, help="seconds of PUTs per pushgateway round at most")
    args = ap.parse_args()
    total = args.instances * args.series
    work = tempfile.mkdtemp(prefix="tributary-bench-bridge-")
    procs = []
    try:
        port = free_port()
        os.makedirs(f"{work}/broker")
        procs.append(subprocess.Popen([args.tansu, "broker", "--listener-url", f"tcp://127.0.0.1:{port}",
                                       "--advertised-listener-url", f"tcp://127.0.0.1:{port}",
                                       "--storage-engine", "sqlite://tansu.db", "--silent"],
                                      cwd=f"{work}/broker", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(port)
        brokers = f"127.0.0.1:{port}"
        produce = [args.bin, "bench-bridge-produce", "--brokers", brokers, "--instances", str(args.instances),
                   "--series", str(args.series)]
        # Round 0 creates the topic and warms the broker; the member joins after it.
        subprocess.run([*produce, "--round", "0"], check=True, stdout=subprocess.DEVNULL)
        listen, admin = free_port(), free_port()
        env = dict(os.environ, RUST_LOG="warn", TRIBUTARY__KAFKA__BROKERS=brokers,
                   TRIBUTARY__KAFKA2PROM__QUEUE_CAPACITY="64", TRIBUTARY__KAFKA2PROM__EMERGENCY_AGE_SECS="3600")
        k2p = subprocess.Popen([args.bin, "kafka2prom", "--listen", f"127.0.0.1:{listen}", "--admin-addr",
                                f"127.0.0.1:{admin}"], env=env, stdout=subprocess.DEVNULL, stderr=open(f"{work}/k2p.log", "w"))
        procs.append(k2p)
        wait_port(admin)
        deadline = time.time() + 120
        while counter(admin, "updated") < total:  # round 0, read from the start by the new group
            if time.time() > deadline:
                sys.exit("kafka2prom did not expose round 0 within 120 s")
            time.sleep(0.05)
        cpu0 = cpu_secs(k2p.pid)
        lat = []
        for r in range(1, args.rounds + 1):
            out = subprocess.run([*produce, "--round", str(r)], check=True, stdout=subprocess.PIPE, text=True).stdout
            acked = time.time()
            deadline = acked + 300
            while counter(admin, "updated") < total * (r + 1):
                if time.time() > deadline:
                    sys.exit(f"round {r} not exposed within 300 s")
                time.sleep(0.02)
            lat.append(time.time() - acked)
            print(f"  kafka2prom {out.strip()}; exposed {lat[-1]:.2f}s after the last acknowledgement", flush=True)
        cpu = cpu_secs(k2p.pid) - cpu0
        t0 = time.time()
        page = get(f"http://127.0.0.1:{listen}/metrics", 600)
        scrape = time.time() - t0
        print(f"kafka2prom: {args.rounds} rounds × {total} series ({args.instances} instances × {args.series}): "
              f"{total * args.rounds / cpu:,.0f} samples/s per core ({cpu:.1f} CPU-s); "
              f"round produced→exposed p50 {pct(lat, 50):.2f}s max {max(lat):.2f}s; "
              f"one scrape of {len(page) / 1e6:.0f} MB in {scrape:.2f}s; peak RSS {peak_rss_mib(k2p.pid):.0f} MiB")

        # Baseline: Debian's pushgateway, same bodies.
        pg_port = free_port()
        pg = subprocess.Popen([args.pushgateway, f"--web.listen-address=127.0.0.1:{pg_port}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(pg)
        wait_port(pg_port)

        def push(i, data):
            req = urllib.request.Request(f"http://127.0.0.1:{pg_port}/metrics/job/bench/instance/bench-{i}",
                                         data=data, method="PUT", headers={"Content-Type": "text/plain; version=0.0.4"})
            urllib.request.urlopen(req, timeout=120).read()

        def push_round(r, budget):
            """PUTs every instance's body; stops starting new PUTs after `budget` seconds.
            Returns how many PUTs were done."""
            data = body(args.series, r)
            t0 = time.time()

            def one(i):
                if time.time() - t0 > budget:
                    return 0
                push(i, data)
                return 1

            with concurrent.futures.ThreadPoolExecutor(4) as ex:
                return sum(ex.map(one, range(args.instances)))

        budget = args.pushgateway_budget
        done0 = push_round(0, budget)
        if done0 < args.instances:
            print(f"pushgateway: the first {done0} of {args.instances} PUTs filled the {budget}s budget; "
                  f"its stored series are {done0 * args.series}", flush=True)
        pcpu = 0.0
        pushed_samples = 0
        plat = []
        probe = f'bench_bridge_value{{instance="bench-{max(done0, 1) - 1}",job="bench",series="s{args.series - 1}",shard="{(args.series - 1) % 16}"}} '
        for r in range(1, args.rounds + 1):
            t0 = time.time()
            c0 = cpu_secs(pg.pid)
            done = push_round(r, budget)
            pushed = time.time()
            pcpu += cpu_secs(pg.pid) - c0
            pushed_samples += done * args.series
            if done < args.instances:
                print(f"  pushgateway round {r}: only {done} of {args.instances} PUTs within the {budget}s budget "
                      f"({pushed - t0:.1f}s); stopping the baseline here", flush=True)
                break
            deadline = pushed + 300
            while True:
                text = get(f"http://127.0.0.1:{pg_port}/metrics", 600).decode()
                line = next((l for l in text.splitlines() if l.startswith(probe)), "")
                if line.endswith(f" {r}"):
                    break
                if time.time() > deadline:
                    sys.exit(f"pushgateway round {r} not visible within 300 s")
            plat.append(time.time() - pushed)
            print(f"  pushgateway round {r}: {args.instances} PUTs in {pushed - t0:.2f}s; visible {plat[-1]:.2f}s after the last PUT returned "
                  f"(includes one full scrape)", flush=True)
        t0 = time.time()
        page = get(f"http://127.0.0.1:{pg_port}/metrics", 600)
        pscrape = time.time() - t0
        print(f"pushgateway: {pushed_samples / pcpu:,.0f} samples/s per core ({pcpu:.1f} CPU-s during the pushes); "
              + (f"round pushed→visible p50 {pct(plat, 50):.2f}s max {max(plat):.2f}s; " if plat else "no round finished within the budget; ")
              + f"one scrape of {len(page) / 1e6:.0f} MB in "
              f"{pscrape:.2f}s; peak RSS {peak_rss_mib(pg.pid):.0f} MiB")
        print(f"ratio kafka2prom / pushgateway samples per core-second: {(total * args.rounds / cpu) / (pushed_samples / pcpu):.2f}")
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
