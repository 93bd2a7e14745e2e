#!/usr/bin/env python3
"""Turn the raw rows written by bench/run.sh into a Markdown report.

Raw TSV columns: target tool round status wall_s disk_bytes logical_bytes
pause_us note. For every (target, tool) the best (lowest) wall time over the
successful rounds is reported, with the size and pause of that same round and
the worst pause over all rounds.
"""
import argparse
import csv
import datetime
import sys

TARGET_ORDER = ["sparse", "dense", "maps", "small", "reservation", "python"]
TARGET_TITLE = {
    "sparse": "(a) sparse",
    "dense": "(b) dense",
    "maps": "(c) many mappings",
    "small": "(d) small, 8 threads",
    "python": "(e) python dict",
    "reservation": "(f) 1 TiB reservation",
}
TOOL_ORDER = [
    "(no dump, 1 s idle)",
    "(write floor: dd of the touched bytes)",
    "gcore",
    "elfcore",
    "kernel",
    "coresnap",
    "coresnap-nomanifest",
    "coresnap-cow",
    "coresnap -o - (to a pipe)",
    "coresnap -o - (to /dev/null)",
]
COMPARED = ["gcore", "elfcore", "kernel"]
CURVE_TOOLS = ["coresnap", "coresnap-cow", "gcore"]
OURS = ["coresnap", "coresnap-nomanifest", "coresnap-cow"]
MIB = 1024 * 1024


def num(s):
    try:
        return float(s)
    except (TypeError, ValueError):
        return None


def fmt_mib(b):
    return "" if b is None else f"{b / MIB:,.1f}"


def fmt_s(s):
    if s is None:
        return ""
    return f"{s:.3f}" if s < 10 else f"{s:.2f}"


def fmt_ms(us):
    return "" if us is None else f"{us / 1000:,.1f}"


def fmt_ratio(a, b):
    if a is None or b is None or b == 0:
        return "–"
    r = a / b
    if r == 0:
        return "0"
    return f"{r:.3f}" if r < 0.1 else f"{r:.2f}"



class Results:
    """The raw rows of one run, grouped by (target, tool)."""

    def __init__(self, raw_path):
        with open(raw_path, newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        self.groups = {}
        for r in rows:
            self.groups.setdefault((r["target"], r["tool"]), []).append(r)
        present = [t for t in TARGET_ORDER if any(k[0] == t for k in self.groups)]
        present += sorted({k[0] for k in self.groups} - set(present))
        self.targets = present
        # Streaming rows carry no size for /dev/null: borrow the pipe's count.
        for t in present:
            pipe = self.best(t, "coresnap -o - (to a pipe)")
            if pipe and pipe.get("logical"):
                for r in self.groups.get((t, "coresnap -o - (to /dev/null)")) or []:
                    if not r["logical_bytes"]:
                        r["logical_bytes"] = str(int(pipe["logical"]))

    def best(self, target, tool):
        """Summary of one (target, tool): dict or None if nothing ran. The
        best (lowest) wall time over the successful rounds, with the size and
        pause of that same round, and the worst pause over all rounds."""
        rs = self.groups.get((target, tool))
        if not rs:
            return None
        ok = [r for r in rs if r["status"] == "ok"]
        pauses = [num(r["pause_us"]) for r in rs if num(r["pause_us"]) is not None]
        out = {
            "n": len(rs),
            "ok": len(ok),
            "walls": [num(r["wall_s"]) for r in rs],
            "worst_pause": max(pauses) if pauses else None,
            "notes": sorted({r["note"] for r in rs if r["note"]}),
            "status": [r["status"] for r in rs],
        }
        pick = None
        timed = [r for r in ok if num(r["wall_s"]) is not None]
        if timed:
            pick = min(timed, key=lambda r: num(r["wall_s"]))
        elif ok:
            pick = ok[0]
        if pick is not None:
            out.update(
                wall=num(pick["wall_s"]),
                disk=num(pick["disk_bytes"]),
                logical=num(pick["logical_bytes"]),
                pause=num(pick["pause_us"]),
            )
        else:
            out.update(wall=None, disk=None, logical=None, pause=None)
        return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--raw", required=True)
    ap.add_argument("--machine")
    ap.add_argument("--skipped")
    ap.add_argument("--targets")
    a = ap.parse_args()

    res = Results(a.raw)
    groups, best, targets_present = res.groups, res.best, res.targets

    out = []
    w = out.append
    w(f"# coresnap benchmark, {datetime.datetime.now():%Y-%m-%d %H:%M}")
    w("")
    w("Produced by `bench/run.sh`. Every tool dumps the same live target "
      "(the kernel, which kills its target, gets a fresh instance per round); "
      "the best wall time over the rounds is shown, with the sizes and the "
      "pause of that same round. *Pause* is the longest interval between two "
      "ticks of the target's 1 ms heartbeat thread during the dump (it "
      "includes the 1 ms tick; the idle row is the noise floor). *Wall* is "
      "from starting the tool to its exit (kernel: from `kill -SEGV` to the "
      "target being reaped). Sizes in MiB: *logical* is the file size, "
      "*on disk* is `du -B1` (holes not counted). The *write floor* row is "
      "`dd` writing the target's touched bytes from /dev/zero to the same "
      "file system: no tool that writes a file can beat it. Unless the "
      "machine table says warming was off, memory was warmed before each "
      "dump (see `bench/run.sh --help`).")
    w("")
    if a.machine:
        w("## Machine")
        w("")
        with open(a.machine) as f:
            w(f.read().rstrip())
        w("")
    if a.targets:
        w("## Targets")
        w("")
        desc = {}
        with open(a.targets) as f:
            for line in f:
                if "\t" in line:
                    k, v = line.rstrip("\n").split("\t", 1)
                    desc[k] = v
        for t in targets_present:
            w(f"- {TARGET_TITLE.get(t, t)}: `{desc.get(t, '')}`")
        w("")

    w("## Results")
    w("")
    w("| Target | Tool | Wall s (best) | All rounds, s | Throughput MiB/s | "
      "Logical MiB | On disk MiB | Pause ms | Worst pause ms | Status |")
    w("|---|---|--:|--:|--:|--:|--:|--:|--:|---|")
    notes = []
    for t in targets_present:
        tools = [x for x in TOOL_ORDER if (t, x) in groups]
        tools += sorted({k[1] for k in groups if k[0] == t} - set(tools))
        for tool in tools:
            b = best(t, tool)
            idle = tool.startswith("(no dump")
            thr = ""
            if b["wall"] and b["logical"]:
                thr = f"{b['logical'] / MIB / b['wall']:,.0f}"
            rounds = ", ".join(fmt_s(x) if x is not None else "–" for x in b["walls"])
            status = "ok" if b["ok"] == b["n"] else f"{b['ok']}/{b['n']} ok"
            if b["notes"]:
                notes.append((t, tool, b["notes"]))
                status += f" (note {len(notes)})"
            w(f"| {TARGET_TITLE.get(t, t)} | {tool} | "
              f"{'' if idle else fmt_s(b['wall'])} | {'' if idle else rounds} | {thr} | "
              f"{fmt_mib(b['logical'])} | {fmt_mib(b['disk'])} | "
              f"{fmt_ms(b['pause']) if b['pause'] is not None else ('' if tool != 'kernel' else 'n/a (killed)')} | "
              f"{fmt_ms(b['worst_pause'])} | {status} |")
    w("")

    ztools = sorted({k[1] for k in groups if k[1].startswith("coresnap-z")},
                    key=lambda x: int(x[len("coresnap-z"):]) if x[len("coresnap-z"):].lstrip("-").isdigit() else 0)
    if ztools:
        w("## Compression (`-z`)")
        w("")
        w("`coresnap --compress=N` writes the zstd seekable file directly; its "
          "rows above show the core's length as *logical* and the `.zst` as "
          "*on disk*, so *throughput* is core bytes per second (the manifest, "
          "hashed after the target is released, included in the wall time).")
        w("")
        w("| Target | Level | Core MiB | .zst MiB | Ratio | Core MiB/s | Pause ms |")
        w("|---|--:|--:|--:|--:|--:|--:|")
        for t in targets_present:
            for z in ztools:
                b = best(t, z)
                if not b or b["wall"] is None or not b["logical"]:
                    continue
                ratio = "" if b["disk"] is None else f"{b['disk'] / b['logical']:.3f}"
                w(f"| {TARGET_TITLE.get(t, t)} | {z[len('coresnap-z'):]} | {fmt_mib(b['logical'])} | "
                  f"{fmt_mib(b['disk'])} | {ratio} | {b['logical'] / MIB / b['wall']:,.0f} | "
                  f"{fmt_ms(b['pause'])} |")
        w("")

    have_ours = [o for o in OURS
                 if any((best(t, o) or {}).get("wall") is not None for t in targets_present)]
    if have_ours:
        w("## Ratios")
        w("")
        w("coresnap's best divided by the other tool's best on the same target: "
          "below 1 means coresnap is faster, smaller on disk or pauses the "
          "target less.")
        w("")
        w("| Target | coresnap mode | Metric | ÷ gcore | ÷ elfcore | ÷ kernel |")
        w("|---|---|---|--:|--:|--:|")
        for t in targets_present:
            for o in have_ours:
                mine = best(t, o)
                if not mine or mine["wall"] is None:
                    continue
                others = {c: best(t, c) for c in COMPARED}
                for metric, key in (("wall time", "wall"), ("on disk", "disk"),
                                    ("logical size", "logical"), ("pause", "pause")):
                    cells = []
                    for c in COMPARED:
                        ob = others[c]
                        if c == "kernel" and key == "pause":
                            cells.append("n/a")
                        else:
                            cells.append(fmt_ratio(mine[key], ob[key] if ob else None))
                    w(f"| {TARGET_TITLE.get(t, t)} | {o} | {metric} | " + " | ".join(cells) + " |")
        w("")
    else:
        w("(No coresnap measurement succeeded, so there are no ratios.)")
        w("")

    curve = [t for t in targets_present if t.startswith("curve-") or t == "threads64"]
    if curve:
        w("## Pause against size (`--pause-curve`)")
        w("")
        w("The dense target at each size, and the small target with 64 threads, "
          "dumped with default options. Each cell is the shortest pause over "
          "the rounds (the longest in brackets), in ms; a size whose target "
          "would have left less than 4 GiB of MemAvailable was skipped.")
        w("")
        w("| Target | " + " | ".join(CURVE_TOOLS) + " |")
        w("|---|" + "--:|" * len(CURVE_TOOLS))
        for t in curve:
            skip = groups.get((t, "(skipped)"))
            if skip:
                w(f"| {t} | {skip[0]['note']} |" + " |" * (len(CURVE_TOOLS) - 1))
                continue
            cells = []
            for tool in CURVE_TOOLS:
                pauses = [num(r["pause_us"]) for r in groups.get((t, tool), [])
                          if r["status"] == "ok" and num(r["pause_us"]) is not None]
                cells.append(f"{fmt_ms(min(pauses))} ({fmt_ms(max(pauses))})" if pauses else "–")
            w(f"| {t} | " + " | ".join(cells) + " |")
        w("")

    skipped = []
    if a.skipped:
        with open(a.skipped) as f:
            skipped = [l.rstrip("\n").split("\t", 1) for l in f if "\t" in l]
    if skipped:
        w("## Skipped")
        w("")
        for tool, why in skipped:
            w(f"- **{tool}**: {why}")
        w("")
    if notes:
        w("## Notes")
        w("")
        for i, (t, tool, ns) in enumerate(notes, 1):
            for n in ns:
                w(f"{i}. {TARGET_TITLE.get(t, t)} / {tool}: {n}")
        w("")
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
