#!/usr/bin/env python3
"""Target (e) "python": a CPython process holding a large dict.

Builds a dict of strings, ints, floats and small lists until the process's
resident set reaches SIZE (default 1G), starts a 1 ms heartbeat thread and
prints the ready line. Same report protocol as heartbeat.c: SIGUSR1 resets
the longest gap and writes REPORT_FILE, SIGUSR2 writes REPORT_FILE
("<max_gap_us> <ticks> <reason>").

    pyheap.py REPORT_FILE [SIZE=1G]
"""
import os
import signal
import sys
import threading
import time


def parse_size(s):
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    s = s.strip()
    if s[-1:].upper() in mult:
        return int(s[:-1]) * mult[s[-1].upper()]
    return int(s)


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


report_path = sys.argv[1]
target = parse_size(sys.argv[2] if len(sys.argv) > 2 else "1G")
flags = {"reset": False, "report": False}


def write_report(max_gap_us, ticks, why):
    tmp = report_path + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{max_gap_us} {ticks} {why}\n")
    os.rename(tmp, report_path)


def heartbeat():
    prev = time.monotonic_ns()
    max_gap = 0
    ticks = 0
    while True:
        time.sleep(0.001)
        now = time.monotonic_ns()
        max_gap = max(max_gap, now - prev)
        prev = now
        ticks += 1
        if flags["reset"]:
            flags["reset"] = flags["report"] = False
            write_report(0, 0, "reset")
            max_gap = ticks = 0
            prev = time.monotonic_ns()
        elif flags["report"]:
            flags["report"] = False
            write_report(max_gap // 1000, ticks, "report")
            prev = time.monotonic_ns()


def on_usr1(_sig, _frame):
    flags["reset"] = True


def on_usr2(_sig, _frame):
    flags["report"] = True


signal.signal(signal.SIGUSR1, on_usr1)
signal.signal(signal.SIGUSR2, on_usr2)

# Build the heap first (the heartbeat would only measure GIL contention now).
words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf",
         "hotel", "india", "juliet", "kilo", "lima", "mike", "november"]
data = {}
i = 0
while True:
    for _ in range(50000):
        w = words[i % len(words)]
        data[f"user:{i:09d}:{w}"] = {
            "name": f"{w}-{i * 2654435761 % 1000003}",
            "count": i * 7,
            "score": i / 3.0,
            "tags": [w, words[(i * 5) % len(words)]],
        }
        i += 1
    if rss_bytes() >= target:
        break

threading.Thread(target=heartbeat, name="heartbeat", daemon=True).start()
print(f"READY pid={os.getpid()} target=python entries={len(data)} "
      f"rss_bytes={rss_bytes()}", flush=True)
while True:
    signal.pause()
