#!/usr/bin/env python3
"""Turn the raw results of bench/compare.sh into the comparison table and one JSON file.

    bench/report.py RESULTS_DIR [--out FILE] [--catchup-keys N] [--rounds R] [--seed-n N]

RESULTS_DIR holds seed-*.txt (seed-bench.sh summary lines), http-SYSTEM-ROUND.json
(http_load --json), heal-ROUND.json and catchup.json (durability --json). Every figure
is the median over the runs found. Exits non-zero when a part has no result.
"""
import argparse
import glob
import json
import os
import re
import statistics
import sys


def median(xs):
    return statistics.median(xs) if xs else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--out", default="target/bench/compare.json")
    ap.add_argument("--catchup-keys", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=0)
    ap.add_argument("--seed-n", type=int, default=0)
    ap.add_argument("--smoke", action="store_true")
    a = ap.parse_args()
    missing = []

    # ---- seed benchmark
    seed_rates, seed_stab = [], []
    for f in sorted(glob.glob(os.path.join(a.dir, "seed-*.txt"))):
        line = open(f).read()
        m1 = re.search(r"median_puts_per_s=([0-9.]+)", line)
        m2 = re.search(r"median_stabilize_ms=([0-9.]+)", line)
        if m1 and m2:
            seed_rates.append(float(m1.group(1)))
            seed_stab.append(float(m2.group(1)))
    if not seed_rates:
        missing.append("seed benchmark")

    # ---- HTTP
    http = {}  # (system, op, conns) -> list of records
    for f in sorted(glob.glob(os.path.join(a.dir, "http-*.json"))):
        for rec in json.load(open(f)):
            http.setdefault((rec["system"], rec["op"], rec["connections"]), []).append(rec)
    if not any(k[0] == "meshkv" for k in http):
        missing.append("HTTP load on meshkv")
    systems = [s for s in ["meshkv", "meshkv-lin", "etcd", "redis", "redis-always"] if any(k[0] == s for k in http)]
    conns = sorted({k[2] for k in http})

    def hmed(system, op, c, field):
        return median([r[field] for r in http.get((system, op, c), [])])

    # ---- heal and catch-up
    heals = []
    for f in sorted(glob.glob(os.path.join(a.dir, "heal-*.json"))):
        h = json.load(open(f)).get("heal")
        if h:
            heals.append(h)
    if not heals:
        missing.append("heal")
    catch = None
    p = os.path.join(a.dir, "catchup.json")
    if os.path.exists(p):
        catch = json.load(open(p)).get("catchup")
    if not catch:
        missing.append("catch-up")

    summary = {
        "rounds": a.rounds,
        "seed": {
            "puts": a.seed_n,
            "runs": len(seed_rates),
            "puts_per_s_runs": seed_rates,
            "stabilize_ms_runs": seed_stab,
            "median_puts_per_s": median(seed_rates),
            "median_stabilize_ms": median(seed_stab),
        },
        "http": [
            {
                "system": s,
                "op": op,
                "connections": c,
                "runs": len(http.get((s, op, c), [])),
                "ops_per_s": hmed(s, op, c, "ops_per_s"),
                "p50_ms": hmed(s, op, c, "p50_ms"),
                "p99_ms": hmed(s, op, c, "p99_ms"),
                "ops_per_s_runs": [r["ops_per_s"] for r in http.get((s, op, c), [])],
            }
            for s in systems
            for op in ["put", "get"]
            for c in conns
            if (s, op, c) in http
        ],
        "heal": {
            "runs": len(heals),
            "writes_per_side": heals[0]["writes_per_side"] if heals else None,
            "servers": heals[0]["servers"] if heals else None,
            "heal_s_runs": [h["heal_s"] for h in heals],
            "median_heal_s": median([h["heal_s"] for h in heals]),
            "all_identical": all(h["identical"] for h in heals),
        },
        "catchup": catch,
    }

    # ---- targets
    def ratio(x, y):
        return x / y if x is not None and y else None

    lo, hi = (min(conns), max(conns)) if conns else (1, 64)
    etcd_put1 = hmed("etcd", "put", lo, "ops_per_s")
    targets = [
        ("seed puts/s >= 3x etcd 1-conn PUT", ratio(summary["seed"]["median_puts_per_s"], etcd_put1), 3.0, ">="),
        ("seed puts/s >= 2,000", summary["seed"]["median_puts_per_s"], 2000.0, ">="),
        (f"HTTP PUT {hi} conns >= 5x etcd", ratio(hmed("meshkv", "put", hi, "ops_per_s"), hmed("etcd", "put", hi, "ops_per_s")), 5.0, ">="),
        (f"HTTP GET {hi} conns >= 0.6x redis", ratio(hmed("meshkv", "get", hi, "ops_per_s"), hmed("redis", "get", hi, "ops_per_s")), 0.6, ">="),
        ("stabilize after the seed puts <= 50 ms", summary["seed"]["median_stabilize_ms"], 50.0, "<="),
        ("heal of the divergence <= 0.5 s", summary["heal"]["median_heal_s"], 0.5, "<="),
        ("catch-up bytes <= 2x changed payload", catch and catch["bytes_received_per_change_payload"], 2.0, "<="),
        (f"linearizable PUT {hi} conns >= 1.5x etcd", ratio(hmed("meshkv-lin", "put", hi, "ops_per_s"), hmed("etcd", "put", hi, "ops_per_s")), 1.5, ">="),
        (f"linearizable GET {hi} conns >= 2x etcd", ratio(hmed("meshkv-lin", "get", hi, "ops_per_s"), hmed("etcd", "get", hi, "ops_per_s")), 2.0, ">="),
    ]
    summary["targets"] = [
        {
            "target": t,
            "value": v,
            "limit": lim,
            "met": None if v is None else (v >= lim if op == ">=" else v <= lim),
        }
        for t, v, lim, op in targets
    ]

    # ---- table
    def f(x, fmt="{:,.0f}"):
        return "-" if x is None else fmt.format(x)

    W = 100
    print("=" * W)
    title = f"meshkv vs etcd 3.4 (3 members) vs redis — medians over {a.rounds} round(s)"
    if a.smoke:
        title += "  [SMOKE: tiny sizes, figures meaningless]"
    print(title)
    print("=" * W)
    s = summary["seed"]
    print(f"1. seed benchmark (./master, 5 servers, 5 clients, N={a.seed_n} rotating puts + stabilize), {s['runs']} runs")
    print(f"   puts/s (median)            {f(s['median_puts_per_s']):>10}   runs: {', '.join(f(x) for x in seed_rates)}")
    print(f"   stabilize alone (median)   {f(s['median_stabilize_ms'], '{:.2f}'):>10} ms")
    if etcd_put1:
        print(f"   vs etcd 1-conn HTTP PUT    {f(etcd_put1):>10}   ratio {f(ratio(s['median_puts_per_s'], etcd_put1), '{:.2f}')}x")
    print()
    print("2. HTTP load (3 servers / 3 members / 1 redis; 100-byte values, random keys of "
          f"{'10,000' if not a.smoke else 'a few'}; one request at a time per connection)")
    hdr = f"   {'op':<4}{'conns':>6}  " + "".join(f"{sy:>15}" for sy in systems)
    peers = [sy for sy in systems if sy not in ("meshkv", "meshkv-lin")]
    hdr += "".join(f"{'mk/' + sy:>16}" for sy in peers)
    print(hdr + "    (ops/s; ratio meshkv/peer)")
    for op in ["put", "get"]:
        for c in conns:
            row = f"   {op.upper():<4}{c:>6}  "
            for sy in systems:
                row += f"{f(hmed(sy, op, c, 'ops_per_s')):>15}"
            m = hmed("meshkv", op, c, "ops_per_s")
            for sy in peers:
                row += f"{f(ratio(m, hmed(sy, op, c, 'ops_per_s')), '{:.2f}x'):>16}"
            print(row)
    if "meshkv-lin" in systems and "etcd" in systems:
        print("   linearizable meshkv (meshkv-lin) / etcd (linearizable too):")
        for op in ["put", "get"]:
            for c in conns:
                r = ratio(hmed("meshkv-lin", op, c, "ops_per_s"), hmed("etcd", op, c, "ops_per_s"))
                print(f"   {op.upper():<4}{c:>6}  {f(r, '{:.2f}x'):>15}")
    print(f"   {'latency p50 / p99 (ms)':<24}" + "".join(f"{sy:>19}" for sy in systems))
    for op in ["put", "get"]:
        for c in conns:
            row = f"   {op.upper():<4}{c:>6}{'':>14}"
            for sy in systems:
                p50, p99 = hmed(sy, op, c, "p50_ms"), hmed(sy, op, c, "p99_ms")
                row += f"{(f(p50, '{:.2f}') + ' / ' + f(p99, '{:.2f}')):>19}"
            print(row)
    print()
    h = summary["heal"]
    print(f"3. heal: {h['servers']} servers split 2|3, {h['writes_per_side']} divergent writes per side "
          f"(half on shared keys), {h['runs']} runs")
    print(f"   links restored -> all agree   {f(h['median_heal_s'], '{:.3f}'):>8} s   runs: "
          + ", ".join(f(x, "{:.3f}") for x in h["heal_s_runs"]) + f"   identical: {h['all_identical']}")
    if catch:
        print(f"   catch-up: 3 servers, {catch['keys']:,}-key store, server 2 missed {catch['changes']:,} writes"
              f"{'' if catch['keys'] >= 1_000_000 else ' (--full for 1,000,000 keys)'}")
        print(f"   restart (open + links) {catch['restart_s']:.2f} s, then until digests agree {catch['catchup_s']:.2f} s")
        print(f"   bytes received {catch['bytes_received']:,} for {catch['change_payload_bytes']:,} B changed "
              f"= {catch['bytes_received_per_change_payload']:.2f}x   identical: {catch['identical']}")
    print()
    print("targets")
    for t in summary["targets"]:
        met = {True: "met", False: "NOT met", None: "n/a (peer not measured)"}[t["met"]]
        v = t["value"]
        print(f"   {t['target']:<42} {f(v, '{:.3f}'):>10}  (limit {t['limit']})  {met}")
    print("=" * W)

    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as fh:
        json.dump(summary, fh, indent=2)
    if missing:
        print("missing results: " + ", ".join(missing), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
