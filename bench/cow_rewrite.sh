#!/usr/bin/env bash
# --mode cow against a target that rewrites all of its memory as fast as it
# can (testdata/cow_hostile.c, "rewrite"): what coresnap decides, the pause,
# and what the copy was expected to cost and did cost (docs/COW.md).
#
#   bench/cow_rewrite.sh [SIZE_MIB=2048] [OUT=bench/results/cow-rewrite.md]
#
# Uses the release build (cargo build --release first). Each case is one
# dump of the same live target; the summary lines and the manifest's
# capture section go into the report.
set -uo pipefail
BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH/.." && pwd)
SIZE=${1:-2048}
OUT=${2:-$BENCH/results/cow-rewrite.md}
CORESNAP=${CARGO_TARGET_DIR:-$REPO/target}/release/coresnap
WORK=$(mktemp -d)
TARGET_PID=
cleanup() {
    [ -n "$TARGET_PID" ] && kill -KILL "$TARGET_PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

avail_mib=$(awk '/^MemAvailable:/ { print int($2 / 1024) }' /proc/meminfo)
if [ "$avail_mib" -lt $((2 * SIZE + 4096)) ]; then
    echo "a $SIZE MiB target and its copy would leave less than 4 GiB (MemAvailable $avail_mib MiB)" >&2
    exit 1
fi
cc -O0 -pthread -o "$WORK/cow_hostile" "$REPO/testdata/cow_hostile.c" || exit 1
"$WORK/cow_hostile" "$SIZE" rewrite "$WORK/filled" > "$WORK/target.out" &
TARGET_PID=$!
for ((n = 0; n < 3000; n++)); do [ -e "$WORK/filled" ] && break; sleep 0.1; done
[ -e "$WORK/filled" ] || { echo "the target did not fill its memory" >&2; exit 1; }

{
    echo "# --mode cow against a target rewriting all of its memory"
    echo
    echo "| | |"
    echo "|---|---|"
    echo "| CPU | $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo) ($(nproc) online CPUs) |"
    echo "| Memory | $(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo), MemAvailable $avail_mib MiB at start |"
    echo "| Kernel | $(uname -sr) |"
    echo "| THP | $(cat /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null) |"
    echo "| Commit | $(cd "$REPO" && git rev-parse HEAD) |"
    echo "| Command | \`bench/cow_rewrite.sh $*\` |"
    echo "| Target | testdata/cow_hostile.c (cc -O0), $SIZE MiB of 4 KiB pages, one thread rewriting every word in a loop |"
    echo "| Load average at start | $(cut -d' ' -f1-3 /proc/loadavg) |"
    echo "| OOM kills before | $(awk '/^oom_kill / { print $2 }' /proc/vmstat) |"
    echo
} > "$OUT"

case_no=0
run_case() { # OPTIONS...
    case_no=$((case_no + 1))
    local prefix=$WORK/core$case_no t0 t1 rc
    t0=$EPOCHREALTIME
    "$CORESNAP" --mode cow "$@" -o "$prefix" "$TARGET_PID" > "$WORK/log" 2>&1
    rc=$?
    t1=$EPOCHREALTIME
    {
        echo "## coresnap --mode cow $*"
        echo
        echo "exit status $rc, wall $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }') s"
        echo
        echo '```'
        cat "$WORK/log"
        if [ -f "$prefix.$TARGET_PID.json" ]; then
            python3 -c 'import json, sys; c = json.load(open(sys.argv[1]))["capture"]
print("manifest capture:", json.dumps({k: c.get(k) for k in ("mode", "pause_us", "cow", "cow_fallback")}))' \
                "$prefix.$TARGET_PID.json"
        fi
        echo '```'
        echo
    } >> "$OUT"
    rm -f "$prefix".*
}
run_case
run_case
run_case --cow-max-copy 256M
kill -0 "$TARGET_PID" 2>/dev/null && alive=yes || alive=no
echo "Target alive at the end: $alive; OOM kills after: $(awk '/^oom_kill / { print $2 }' /proc/vmstat)" >> "$OUT"
cat "$OUT"
