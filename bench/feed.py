#!/usr/bin/env python3
"""Listing, watch and expiry benchmark for a 3-server meshkv cluster.

What it measures (standard library only, plus clients/python/meshkv.py):

(a) listing: loads KEYS keys ``bench/k/00000...`` with VALUE_SIZE-byte values through
    server 0 at the session level (THREADS threads), then times from server 0, best of
    ROUNDS, a full ``GET /kv?prefix=bench/k/`` listing in pages of 1,000 with values,
    one page of 10,000 with values, and one page of 10,000 keys only (the time of the
    HTTP requests, body reads and JSON decoding). Every listing must return exactly
    the loaded keys, in order (and the values written).
(b) watch latency: a watch on server 2 (prefix bench/w/), then WATCH_PUTS sequential
    session puts through server 0; latency = the event's arrival at the watcher minus
    the time the put was sent. Every event must arrive, in put order, with the put's
    version.
(c) expiry lag: watches on servers 1 and 2 (prefix bench/t/), then TTL_PUTS puts with
    ``ttl=1`` through server 0; for each ``expire`` event, lag = its arrival (wall
    clock) minus the expiry time (the put's ``X-Meshkv-Version`` ts + 1,000,000 µs).
    No event may arrive before its expiry time (5 ms tolerance), each carries the
    expired put's version, and afterwards every key must be 404 on all three servers.

Prints each part, then a summary block to paste into a report (with the command
line; with --started-by, the command that started the run as well). Exits 1 when a
check fails, 2 on a usage error. Needs a running cluster with no other writers under
``bench/``; bench/feed.sh starts a fresh one:

    bash bench/feed.sh                                   # start 3 servers, run this
    python3 bench/feed.py --endpoints http://127.0.0.1:8000,http://127.0.0.1:8001,http://127.0.0.1:8002

Percentiles are nearest-rank (with 50 samples, p99 is the maximum). The arrival times
are taken in watcher threads of this process; the interpreter's thread switch
interval is lowered to 0.5 ms so that they are not delayed by the threads sending.
"""

import argparse
import http.client
import json
import math
import os
import platform
import queue
import shlex
import sys
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

sys.dont_write_bytecode = True  # leave no __pycache__ in clients/python
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "clients", "python"))

import meshkv  # noqa: E402

SESSION = {"X-Meshkv-Consistency": "session"}
# A bound on waiting for events that should come (never a pause).
EVENT_TIMEOUT = 30.0
EARLY_TOLERANCE_US = 5_000


def pct(xs, q):
    """Nearest-rank percentile of a non-empty list."""
    s = sorted(xs)
    return s[max(0, math.ceil(q * len(s)) - 1)]


def ms(us):
    return f"{us / 1000:.1f} ms"


def dist(xs_us):
    """``p50 … p99 … max …`` of microsecond samples."""
    return f"p50 {ms(pct(xs_us, 0.5))}  p99 {ms(pct(xs_us, 0.99))}  max {ms(max(xs_us))}"


class Failures:
    def __init__(self):
        self.items = []

    def check(self, ok, what):
        if not ok:
            self.items.append(what)
            print(f"  CHECK FAILED: {what}", flush=True)
        return ok


def value_of(i, size):
    v = (b"%05d:" % i) * (size // 6 + 1)
    return v[:size]


# -- (a) listing -------------------------------------------------------------------------


def load(ep0, keys, size, threads):
    """Write ``keys`` through server 0 at the session level; returns seconds taken."""
    kv = meshkv.Client([ep0], consistency="session", timeout=30.0)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda ik: kv.put(ik[1], value_of(ik[0], size)), enumerate(keys)))
    took = time.perf_counter() - t0
    kv.close()
    return took


def list_once(ep, prefix, limit, keys_only):
    """One full listing through plain http.client: ``(seconds, pages, items)``.

    Timed: requests, body reads and ``json.loads``; the connection is opened first."""
    u = urllib.parse.urlsplit(ep)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    conn.connect()
    base = f"/kv?prefix={meshkv.encode_key(prefix)}&limit={limit}" + ("&keys_only=true" if keys_only else "")
    items, pages, start = [], 0, None
    try:
        t0 = time.perf_counter()
        while True:
            path = base + (f"&start={start}" if start is not None else "")
            conn.request("GET", path, headers={"Accept": "application/json"})
            r = conn.getresponse()
            body = r.read()
            if r.status != 200:
                raise RuntimeError(f"GET {path}: {r.status} {body[:200]!r}")
            doc = json.loads(body)
            items.extend(doc["items"])
            pages += 1
            if not doc.get("more"):
                break
            start = meshkv.encode_key(meshkv.decode_key(doc["next"]))
        took = time.perf_counter() - t0
    finally:
        conn.close()
    return took, pages, items


def bench_listing(args, eps, fail):
    print(f"(a) listing: {args.keys} keys bench/k/..., {args.value_size}-byte values", flush=True)
    keys = [b"bench/k/%05d" % i for i in range(args.keys)]
    took = load(eps[0], keys, args.value_size, args.threads)
    print(f"  loaded through server 0 in {took:.2f} s ({args.keys / took:,.0f} puts/s, "
          f"{args.threads} threads, session level)", flush=True)
    want_values = {k: value_of(i, args.value_size) for i, k in enumerate(keys)}
    modes = [
        ("pages of 1000, values", 1000, False),
        ("one page of 10000, values", 10000, False),
        ("one page of 10000, keys_only", 10000, True),
    ]
    results = []
    for name, limit, keys_only in modes:
        times = []
        for _ in range(args.rounds):
            t, pages, items = list_once(eps[0], b"bench/k/", limit, keys_only)
            times.append(t)
            got = [meshkv.decode_key(it["key"]) for it in items]
            if not fail.check(got == keys, f"listing '{name}': {len(got)} keys, not the {len(keys)} "
                                           f"loaded in order"):
                continue
            fail.check(pages == math.ceil(len(keys) / limit), f"listing '{name}': {pages} pages")
            if keys_only:
                fail.check(all("value" not in it or it["value"] is None for it in items),
                           f"listing '{name}': values in a keys_only listing")
            else:
                bad = sum(1 for k, it in zip(got, items) if meshkv.decode_key(it.get("value") or "") != want_values[k])
                fail.check(bad == 0, f"listing '{name}': {bad} wrong values")
        best = min(times)
        results.append((name, best, len(keys) / best))
        print(f"  {name:<30} best {best * 1000:7.1f} ms  ({len(keys) / best:>9,.0f} keys/s)  "
              f"runs: {', '.join(f'{t * 1000:.1f}' for t in times)} ms", flush=True)
    return {"load_s": took, "modes": results}


# -- watching ----------------------------------------------------------------------------


class Watcher:
    """A meshkv watch consumed by a thread: ``(arrival perf_counter ns, wall ns, Event)``
    tuples on ``events`` (an exception ends the stream)."""

    def __init__(self, ep, prefix):
        self.endpoint = ep
        self.client = meshkv.Client([ep])
        self.watch = self.client.watch(prefix=prefix)
        self.events = queue.Queue()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        if not self.watch.wait_connected(EVENT_TIMEOUT):
            raise RuntimeError(f"the watch on {ep} did not connect")

    def _run(self):
        try:
            for ev in self.watch:
                self.events.put((time.perf_counter_ns(), time.time_ns(), ev))
        except Exception as e:
            self.events.put(e)

    def next(self):
        """The next event, or None when none came within EVENT_TIMEOUT."""
        try:
            item = self.events.get(timeout=EVENT_TIMEOUT)
        except queue.Empty:
            return None
        if isinstance(item, Exception):
            raise item
        return item

    def close(self):
        self.watch.close()
        self.thread.join(EVENT_TIMEOUT)
        self.client.close()


# -- (b) watch latency -------------------------------------------------------------------


def bench_watch(args, eps, fail):
    n = args.watch_puts
    print(f"(b) watch latency: {n} sequential session puts via server 0, watcher on server 2", flush=True)
    w = Watcher(eps[2], b"bench/w/")
    kv = meshkv.Client([eps[0]], consistency="session")
    sent, versions, rtt = {}, [], []
    value = b"x" * args.value_size
    for i in range(n):
        k = b"bench/w/%05d" % i
        t = time.perf_counter_ns()
        _, version = kv.put_versioned(k, value)
        rtt.append((time.perf_counter_ns() - t) / 1000)
        sent.setdefault(k, t)
        versions.append(version)
    got = []
    while len(got) < n:
        item = w.next()
        if item is None:
            break
        got.append(item)
    w.close()
    kv.close()
    fail.check(len(got) == n, f"watch: {len(got)} of {n} events arrived within {EVENT_TIMEOUT:.0f} s")
    want = [("put", b"bench/w/%05d" % i, versions[i]) for i in range(n)]
    in_order = [(ev.kind, ev.key, ev.version) for _, _, ev in got] == want
    fail.check(in_order, "watch: the events are not the puts in order (or carry other versions)")
    lat = [(arr - sent[ev.key]) / 1000 for arr, _, ev in got if ev.key in sent]
    if lat:
        print(f"  event latency     {dist(lat)}", flush=True)
    print(f"  put round trip    {dist(rtt)}  (server 0, for reference)", flush=True)
    print(f"  {len(got)}/{n} events arrived, in order: {'yes' if in_order else 'NO'}", flush=True)
    return {"n": n, "got": len(got), "in_order": in_order, "lat": lat, "rtt": rtt}


# -- (c) expiry lag ----------------------------------------------------------------------


def bench_expiry(args, eps, fail):
    n = args.ttl_puts
    print(f"(c) expiry lag: {n} puts with ttl=1 via server 0, watchers on servers 1 and 2", flush=True)
    watchers = {i: Watcher(eps[i], b"bench/t/") for i in (1, 2)}
    kv = meshkv.Client([eps[0]], consistency="session")
    expiry_us, version_of = {}, {}
    for i in range(n):
        k = b"bench/t/%05d" % i
        _, version = kv.put_versioned(k, b"t" * args.value_size, ttl=1)
        expiry_us[k] = meshkv.parse_version(version)[0] + 1_000_000
        version_of[k] = version
    put_done_us = time.time_ns() // 1000
    out = {}
    for i, w in watchers.items():
        lags, early, dupes, wrong = {}, 0, 0, 0
        while len(lags) < n:
            item = w.next()
            if item is None:
                break
            _, wall_ns, ev = item
            if ev.kind == "put":
                continue
            if ev.kind != "expire" or ev.key not in expiry_us:
                fail.check(False, f"expiry: server {i} sent an unexpected {ev.kind} event for {ev.key!r}")
                continue
            if ev.key in lags:
                dupes += 1
                continue
            if ev.version != version_of[ev.key]:
                wrong += 1
            lag = wall_ns / 1000 - expiry_us[ev.key]
            early += lag < -EARLY_TOLERANCE_US
            lags[ev.key] = lag
        w.close()
        fail.check(len(lags) == n, f"expiry: server {i}: {len(lags)} of {n} expire events arrived")
        fail.check(early == 0, f"expiry: server {i}: {early} expire events more than 5 ms before the expiry time")
        fail.check(dupes == 0, f"expiry: server {i}: {dupes} duplicate expire events")
        fail.check(wrong == 0, f"expiry: server {i}: {wrong} expire events with another version than the put's")
        vals = list(lags.values())
        if vals:
            print(f"  server {i}: lag {dist(vals)}  (min {ms(min(vals))}), "
                  f"{len(vals)}/{n} arrived, early: {early}", flush=True)
        out[i] = {"lags": vals, "early": early, "got": len(vals)}
    first = min(expiry_us.values())
    print(f"  the {n} puts took {(put_done_us - (first - 1_000_000)) / 1000:.0f} ms "
          f"(all before the first expiry: {'yes' if put_done_us < first else 'no'})", flush=True)
    # Every key is gone everywhere (session reads carrying the put's version as token:
    # the server must hold the write and answer 404).
    gone = 0
    for i, ep in enumerate(eps):
        c = kv.with_endpoints([ep])
        present = [k for k in expiry_us if c.get(k) is not None]
        c.close()
        fail.check(not present, f"expiry: server {i} still has {len(present)} keys, e.g. {present[:3]}")
        gone += not present
    kv.close()
    print(f"  all {n} keys 404 on {gone}/{len(eps)} servers", flush=True)
    out["gone_servers"] = gone
    return out


# -- main --------------------------------------------------------------------------------


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--endpoints", required=True, help="three comma-separated server URLs")
    p.add_argument("--keys", type=int, default=10000, help="keys to list, at most 10000 (default 10000)")
    p.add_argument("--value-size", type=int, default=100, help="value bytes (default 100)")
    p.add_argument("--threads", type=int, default=16, help="threads loading the keys (default 16)")
    p.add_argument("--rounds", type=int, default=3, help="listing runs per mode, best taken (default 3)")
    p.add_argument("--watch-puts", type=int, default=300, help="puts watched (default 300)")
    p.add_argument("--ttl-puts", type=int, default=50, help="puts with ttl=1 (default 50)")
    p.add_argument("--started-by", metavar="CMD", help="the command that started this run (bench/feed.sh "
                   "passes its own), printed in the summary")
    args = p.parse_args()
    eps = [e.strip() for e in args.endpoints.split(",") if e.strip()]
    if len(eps) != 3:
        p.error(f"want 3 endpoints, got {len(eps)}")
    if not 1 <= args.keys <= 10000:
        p.error("--keys: 1 to 10000 (the largest page the servers answer)")
    sys.setswitchinterval(0.0005)
    command = " ".join(shlex.quote(a) for a in ["python3"] + sys.argv)
    fail = Failures()
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print(f"meshkv feed benchmark, {started}, endpoints {', '.join(eps)}\n", flush=True)

    a = bench_listing(args, eps, fail)
    print()
    b = bench_watch(args, eps, fail)
    print()
    c = bench_expiry(args, eps, fail)
    print()

    lines = [
        "==== meshkv feed benchmark ====",
        f"date       {started}; {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}",
        "cluster    3 servers, one machine, loopback (HTTP), fresh data dirs",
        f"load       {args.keys} keys x {args.value_size} B via server 0, session level, "
        f"{args.threads} threads: {a['load_s']:.2f} s ({args.keys / a['load_s']:,.0f} puts/s)",
        f"listing    from server 0, best of {args.rounds}, {args.keys} keys each:",
    ]
    for name, best, rate in a["modes"]:
        lines.append(f"             {name:<30} {best * 1000:7.1f} ms  {rate:>9,.0f} keys/s")
    if b["lat"]:
        lines.append(f"watch      {b['n']} puts via server 0 -> watch on server 2: {dist(b['lat'])}; "
                     f"{b['got']}/{b['n']} arrived, in order: {'yes' if b['in_order'] else 'NO'}")
    lines.append(f"             (put round trip on server 0: {dist(b['rtt'])})")
    lines.append(f"expiry     {args.ttl_puts} puts ttl=1 via server 0; lag = arrival - (ts + 1 s):")
    for i in (1, 2):
        r = c[i]
        if r["lags"]:
            lines.append(f"             server {i}: {dist(r['lags'])}; {r['got']}/{args.ttl_puts} arrived, "
                         f"early (>5 ms): {r['early']}")
        else:
            lines.append(f"             server {i}: no expire event arrived")
    lines.append(f"             all keys 404 afterwards on {c['gone_servers']}/3 servers")
    lines.append(f"result     {'OK' if not fail.items else 'FAILED: ' + '; '.join(fail.items)}")
    if args.started_by:
        lines.append(f"command    {args.started_by}")
        lines.append(f"           ({command})")
    else:
        lines.append(f"command    {command}")
    print("\n".join(lines), flush=True)
    return 1 if fail.items else 0


if __name__ == "__main__":
    sys.exit(main())
