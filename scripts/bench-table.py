#!/usr/bin/env python3
"""Prints skiff-loadtest JSON lines (one measurement each) as a Markdown table.

Usage: scripts/bench-list-watch.sh > runs.jsonl; scripts/bench-table.py runs.jsonl
"""
import json
import sys


def target(r):
    if r.get("server"):
        # scripts/bench-delivery.sh labels rows: raw1, embedded/new, on3/base…
        return r["server"]
    t = r.get("target", "")
    if t.startswith("etcd://"):
        return "raw etcd"
    if t.startswith("etcd-txn://"):
        return "raw etcd (create txn)"
    return "skiff/" + r.get("storage", "?")


def ms(r, key):
    v = r.get(key) or {}
    return f"{v.get('p99_ms', 0):.1f}" if v.get("count") else "-"


reads = []
idle = []
print("| scenario | target | watchers | writes/s | events/s | write→event p99 ms | write p99 ms | server cores | server RSS MB |")
print("|---|---|---|---|---|---|---|---|---|")
for line in open(sys.argv[1]):
    line = line.strip()
    if not line.startswith("{"):
        continue
    r = json.loads(line)
    cores = r.get("server_cpu_cores")
    rss = r.get("server_peak_rss_bytes")
    if r["scenario"] == "list":
        reads.append(r)
        continue
    if r["scenario"] == "watch-idle":
        idle.append(r)
        continue
    if r["scenario"] == "write":
        rate = r.get("creates_per_sec", r.get("ops_per_sec", 0))
        lat = (r.get("create_latency") or {}).get("p99_ms", 0)
        print(f"| write (creates, {r.get('writers')} writers) | {target(r)} | 0 | {rate:,.0f} | - | - | {lat:.1f} | "
              f"{'-' if cores is None else f'{cores:.2f}'} | {'-' if rss is None else rss // 1_000_000} |")
        continue
    print(f"| watch | {target(r)} | {r['watchers']:,} | {r['writes_per_sec']:,.0f} | {r['events_per_sec']:,.0f} | "
          f"{ms(r, 'latency')} | {ms(r, 'write_latency')} | "
          f"{'-' if cores is None else f'{cores:.2f}'} | {'-' if rss is None else rss // 1_000_000} |")

if reads:
    print()
    print("| reads of 10 pods, idle server | target | rv \"0\" p50 / p99 ms | consistent p50 / p99 ms |")
    print("|---|---|---|---|")
    for r in reads:
        a, c = r.get("list_rv0_latency") or {}, r.get("list_consistent_latency") or {}
        print(f"| list | {target(r)} | {a.get('p50_ms', 0):.2f} / {a.get('p99_ms', 0):.2f} | "
              f"{c.get('p50_ms', 0):.2f} / {c.get('p99_ms', 0):.2f} |")

if idle:
    print()
    print("| idle watches | target | RSS before MB | RSS after MB | bytes per watch |")
    print("|---|---|---|---|---|")
    for r in idle:
        b, a = r.get("rss_before", 0), r.get("rss_after", 0)
        print(f"| {r['watchers']:,} on {r['connections']} connections | {target(r)} | {b / 1e6:.1f} | "
              f"{a / 1e6:.1f} | {r.get('bytes_per_watch', 0):,.0f} |")
