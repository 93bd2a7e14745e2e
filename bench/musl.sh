#!/usr/bin/env bash
# The static (musl) coresnap against the glibc build: both dump the same
# dense target (bench/targets/dense.c, 2 GiB of incompressible data, the
# benchmark's target (b)) with default options, alternating, ROUNDS times
# each, and the wall times are written with the commit and the machine to
# bench/results/musl-vs-glibc.{md,tsv}.
#
#   bench/musl.sh [ROUNDS=5]     (root: pauses free page reporting as
#                                 bench/run.sh does, restored on exit)
# Environment: DENSE_SIZE (default 2G), OUT (default bench/results/musl-vs-glibc),
# COMMIT (default: git rev-parse HEAD; for a copy made with git archive)
set -euo pipefail

BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH/.." && pwd)
ROUNDS=${1:-5}
DENSE_SIZE=${DENSE_SIZE:-2G}
OUT=${OUT:-$BENCH/results/musl-vs-glibc}
MUSL_TARGET=x86_64-unknown-linux-musl
GLIBC_BIN=$REPO/target/release/coresnap
MUSL_BIN=$REPO/target/$MUSL_TARGET/release/coresnap
COMMIT=${COMMIT:-$(git -C "$REPO" rev-parse HEAD)$(git -C "$REPO" diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo ' with uncommitted changes to src/')}
WORK=$(mktemp -d "$BENCH/.musl-bench.XXXXXX")
TARGET_PID=
REPORTING_FILE=/sys/module/page_reporting/parameters/page_reporting_order
REPORTING_ORIG=

cleanup() {
    [ -z "$TARGET_PID" ] || { kill -KILL "$TARGET_PID" 2>/dev/null; wait "$TARGET_PID" 2>/dev/null; } || true
    [ -z "$REPORTING_ORIG" ] || printf '%s\n' "$REPORTING_ORIG" >"$REPORTING_FILE"
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

command -v musl-gcc >/dev/null || {
    echo "musl-gcc is missing (the C parts of zstd and blake3 need it): apt-get install musl-tools" >&2
    exit 1
}
rustup target list --installed | grep -qx $MUSL_TARGET || rustup target add $MUSL_TARGET
echo "building both coresnap binaries"
(cd "$REPO" && cargo build --quiet --release && cargo build --quiet --release --target $MUSL_TARGET)
cc -O2 -Wall -pthread -o "$WORK/dense" "$BENCH/targets/dense.c" "$BENCH/targets/heartbeat.c"

# As in bench/run.sh: free page reporting (this VM hands freed pages back to
# its host) made the same write vary 2-10x; pause it, and warm the page
# cache's future pages before each dump.
if [ -w "$REPORTING_FILE" ]; then
    REPORTING_ORIG=$(cat "$REPORTING_FILE")
    printf '11\n' >"$REPORTING_FILE"
fi

"$WORK/dense" "$WORK/heartbeat" "$DENSE_SIZE" >"$WORK/dense.log" 2>&1 </dev/null &
TARGET_PID=$!
for _ in $(seq 600); do
    grep -q '^READY' "$WORK/dense.log" && break
    kill -0 $TARGET_PID || { cat "$WORK/dense.log" >&2; exit 1; }
    sleep 0.1
done
grep -q '^READY' "$WORK/dense.log" || { echo "the dense target never became ready" >&2; exit 1; }
touched=$(sed -n 's/.*touched_bytes=\([0-9]*\).*/\1/p' "$WORK/dense.log")

# One dump: prints "wall user sys" in seconds (user and sys are coresnap's
# CPU time, which other load on the machine disturbs less than wall time).
dump_times() { # BINARY
    dd if=/dev/zero of="$WORK/warm" bs=1M count=$(((touched >> 20) + 64)) status=none
    rm -f "$WORK/warm" "$WORK"/core.*
    local TIMEFORMAT='%R %U %S'
    { time timeout 600 "$1" -o "$WORK/core" "$TARGET_PID" >/dev/null 2>"$WORK/dump.err"; } 2>"$WORK/time" ||
        { cat "$WORK/dump.err" >&2; exit 1; }
    rm -f "$WORK"/core.*
    cat "$WORK/time"
}

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
printf 'round\tbuild\twall_s\tuser_s\tsys_s\n' >"$OUT.tsv.tmp"
for round in $(seq "$ROUNDS"); do
    # Alternate which build goes first, so that drift hits both alike.
    if [ $((round % 2)) = 1 ]; then order="glibc musl"; else order="musl glibc"; fi
    for build in $order; do
        if [ $build = glibc ]; then bin=$GLIBC_BIN; else bin=$MUSL_BIN; fi
        read -r wall user sys <<<"$(dump_times "$bin")"
        printf '%s\t%s\t%s\t%s\t%s\n' "$round" "$build" "$wall" "$user" "$sys" | tee -a "$OUT.tsv.tmp"
    done
done
mv "$OUT.tsv.tmp" "$OUT.tsv"

stats() { # BUILD COLUMN -> "median best" of that column (3 wall, 6 user+sys)
    awk -F'\t' -v b="$1" -v c="$2" '$2 == b {print (c == 6) ? $4 + $5 : $c}' "$OUT.tsv" | sort -n |
        awk '{v[NR] = $1} END {m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.3f %.3f", m, v[1]}'
}
ratio() { echo "scale=3; $1 / $2" | bc; }
read -r glibc_wall glibc_wall_best <<<"$(stats glibc 3)"
read -r musl_wall musl_wall_best <<<"$(stats musl 3)"
read -r glibc_cpu glibc_cpu_best <<<"$(stats glibc 6)"
read -r musl_cpu musl_cpu_best <<<"$(stats musl 6)"
{
    echo "# Static (musl) coresnap against the glibc build"
    echo
    echo "| | |"
    echo "|---|---|"
    echo "| Commit | $COMMIT |"
    echo "| Date | $(date -u '+%Y-%m-%d %H:%M UTC') |"
    echo "| CPU | $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1) (family $(sed -n 's/^cpu family[[:space:]]*: //p' /proc/cpuinfo | head -1), model $(sed -n 's/^model[[:space:]]*: //p' /proc/cpuinfo | head -1)), $(nproc) CPUs |"
    echo "| Kernel | $(uname -r) |"
    echo "| Load average | at the start $LOAD_START, at the end $(cut -d' ' -f1-3 /proc/loadavg) |"
    echo "| Target | bench/targets/dense.c, $DENSE_SIZE of incompressible data, idle |"
    echo "| Command | \`coresnap -o DIR/core PID\` (default options: manifest with chunked BLAKE3 and SHA-256), core in $BENCH (same file system for both) |"
    echo "| Binaries | glibc: target/release/coresnap; musl: target/$MUSL_TARGET/release/coresnap ($(file -b "$MUSL_BIN" | grep -o 'static[-a-z]* linked')), both with Rust's default (system) allocator |"
    echo "| Rounds | $ROUNDS per build, alternating; memory warmed before each dump, free page reporting paused |"
    echo
    echo "| build | wall, median s | wall, best s | CPU (user+sys), median s | CPU, best s | wall of every round (s) |"
    echo "|---|---|---|---|---|---|"
    for b in glibc musl; do
        all=$(awk -F'\t' -v b="$b" '$2 == b {printf "%.2f ", $3}' "$OUT.tsv")
        read -r wm wb <<<"$(stats $b 3)"
        read -r cm cb <<<"$(stats $b 6)"
        echo "| $b | $wm | $wb | $cm | $cb | $all|"
    done
    echo
    echo "musl / glibc: wall median $(ratio "$musl_wall" "$glibc_wall"), wall best $(ratio "$musl_wall_best" "$glibc_wall_best"), CPU median $(ratio "$musl_cpu" "$glibc_cpu"), CPU best $(ratio "$musl_cpu_best" "$glibc_cpu_best")"
} >"$OUT.md"
cat "$OUT.md"
