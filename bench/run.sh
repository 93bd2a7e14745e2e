#!/usr/bin/env bash
# coresnap benchmark: dump the same live targets with gcore, coresnap,
# elfcore (bench/elfcore-dump) and the kernel's own core dump, and compare
# wall time, file size, disk usage and the pause seen by the target.
#
# Run from anywhere (paths are taken from this script's location):
#   bench/run.sh                 full size, 2 rounds, targets a-d
#   bench/run.sh --python        also the ~1 GB Python heap target (slow to build)
#   bench/run.sh --pause-curve   also the pause against size (256 MiB .. 12 GiB)
#                                and a 64-thread target, stop, cow and gcore
#   bench/run.sh --smoke         tiny sizes, for checking the script itself
#   bench/run.sh --help          all options
#
# Needs: cc, cargo, gdb (gcore), python3, coreutils, util-linux (setsid);
# root (or CAP_SYS_ADMIN) for the kernel column, which rewrites
# /proc/sys/kernel/core_pattern for a moment and always restores it.
set -uo pipefail

BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH/.." && pwd)

usage() {
    cat <<EOF
usage: bench/run.sh [options]
  --smoke              tiny sizes (seconds, not minutes); for testing the script
  --rounds N           rounds per tool and target; the best is reported (default 2)
  --targets LIST       comma list from: sparse,dense,maps,small,reservation,python
                       (default: sparse,dense,maps,small,reservation)
  --python             add the python target to the list
  --pause-curve        add the pause-versus-size curve: the dense target at each
                       of CURVE_SIZES and a 64-thread target (small, 64 threads,
                       THREADS64_SIZE), dumped by gcore, coresnap and coresnap
                       --mode cow with default options; a size whose target would
                       leave less than 4 GiB of MemAvailable is skipped with a note
  --tools LIST         comma list from: gcore,coresnap,coresnap-nomanifest,coresnap-cow,
                       elfcore,kernel,stream,triage,
                       coresnap-zN (coresnap --compress=N, any zstd level N)
                       (default: all, with coresnap-z1 and coresnap-z3;
                       'coresnap' is exactly what a user types: coresnap -o PREFIX PID,
                       manifest and hashes on; 'coresnap-nomanifest' adds --no-manifest;
                       'stream' = coresnap -o - on the dense target;
                       'triage' = coresnap inspect --backtrace against eu-stack
                       on the small target's core, plain and .zst)
  --timeout SEC        give up on one dump after SEC seconds (default 300)
  --workdir DIR        parent of the scratch dir for cores (default: bench/.scratch,
                       i.e. the repository's filesystem)
  --out FILE           Markdown report (default bench/results/YYYYmmdd-HHMMSS.md;
                       the raw measurements go next to it as .tsv)
  --no-build           use the binaries already built
  --keep               keep the scratch dir (logs) afterwards
  --cold               do not warm memory before each dump (see "Warming" below)
Warming: many VMs (this one too, see the report's machine table) hand freed
memory back to the host (virtio-balloon free page reporting); the next use of
such a page costs a fault in the host, which made the same 2 GiB write vary
2-10x between rounds for every tool. So, as root, the script pauses free page
reporting for the run (page_reporting_order set above the largest order,
restored on exit), and right before each dump that writes a file it writes
and deletes a file as large as the target's touched memory: every tool then
writes into pages the host backs, as on a physical machine. --cold does
neither.
Sizes can be overridden with environment variables (full-size defaults):
  SPARSE_RESERVE=4G SPARSE_STRIDE=4M SPARSE_DENSE=64M DENSE_SIZE=2G
  MAPS_COUNT=30000 MAPS_PAGES=4 SMALL_THREADS=8 SMALL_SIZE=56M PY_SIZE=1G
  CURVE_SIZES=256M,512M,1G,2G,4G,8G,12G THREADS64_SIZE=2G (--pause-curve)
  RES_RESERVE=1T RES_STRIDE=1G (the reservation target: one page touched per
  stride; gcore and elfcore get one round with RES_TIMEOUT=60 s, the kernel
  RES_KERNEL_ROUNDS=1, since they write every byte of the reservation)
EOF
}

# ---------------------------------------------------------------- options
ROUNDS=2
TARGETS=sparse,dense,maps,small,reservation
WANT_PYTHON=0
PAUSE_CURVE=0
TOOLS=gcore,coresnap,coresnap-nomanifest,coresnap-cow,elfcore,kernel,stream,triage,coresnap-z1,coresnap-z3
ARGS="$*"
TIMEOUT=300
WORKPARENT=$BENCH/.scratch
OUT=
BUILD=1
KEEP=0
SMOKE=0
WARM=1
while [ $# -gt 0 ]; do
    case "$1" in
        --smoke) SMOKE=1 ;;
        --rounds) ROUNDS=$2; shift ;;
        --targets) TARGETS=$2; shift ;;
        --python) WANT_PYTHON=1 ;;
        --pause-curve) PAUSE_CURVE=1 ;;
        --tools) TOOLS=$2; shift ;;
        --timeout) TIMEOUT=$2; shift ;;
        --workdir) WORKPARENT=$2; shift ;;
        --out) OUT=$2; shift ;;
        --no-build) BUILD=0 ;;
        --keep) KEEP=1 ;;
        --cold) WARM=0 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
if [ "$WANT_PYTHON" = 1 ] && [[ ",$TARGETS," != *,python,* ]]; then
    TARGETS=$TARGETS,python
fi
if [ "$SMOKE" = 1 ]; then
    : "${SPARSE_RESERVE:=256M}" "${SPARSE_STRIDE:=4M}" "${SPARSE_DENSE:=8M}"
    : "${DENSE_SIZE:=64M}" "${MAPS_COUNT:=2000}" "${MAPS_PAGES:=4}"
    : "${SMALL_THREADS:=8}" "${SMALL_SIZE:=16M}" "${PY_SIZE:=64M}"
    : "${RES_RESERVE:=16G}" "${RES_STRIDE:=1G}" "${RES_TIMEOUT:=20}"
    : "${CURVE_SIZES:=16M,32M}" "${THREADS64_SIZE:=16M}"
fi
: "${CURVE_SIZES:=256M,512M,1G,2G,4G,8G,12G}" "${THREADS64_SIZE:=2G}"
if [ "$PAUSE_CURVE" = 1 ]; then
    IFS=, read -r -a _sizes <<< "$CURVE_SIZES"
    for size in "${_sizes[@]}"; do TARGETS+=",curve-$size"; done
    TARGETS+=",threads64"
fi
# The curve's targets are dumped by these tools only, with default options.
CURVE_TOOLS=(gcore coresnap coresnap-cow)
is_curve_target() { [[ $1 == curve-* || $1 == threads64 ]]; }
: "${SPARSE_RESERVE:=4G}" "${SPARSE_STRIDE:=4M}" "${SPARSE_DENSE:=64M}"
: "${DENSE_SIZE:=2G}" "${MAPS_COUNT:=30000}" "${MAPS_PAGES:=4}"
: "${SMALL_THREADS:=8}" "${SMALL_SIZE:=56M}" "${PY_SIZE:=1G}"
: "${RES_RESERVE:=1T}" "${RES_STRIDE:=1G}" "${RES_TIMEOUT:=60}" "${RES_KERNEL_ROUNDS:=1}"

has_tool() { [[ ",$TOOLS," == *,"$1",* ]]; }
log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# ------------------------------------------------------- scratch + cleanup
mkdir -p "$WORKPARENT" || exit 1
WORK=$(mktemp -d "$WORKPARENT/run.XXXXXX") || exit 1
STAMP=$(date +%Y%m%d-%H%M%S)
[ -n "$OUT" ] || OUT=$BENCH/results/$STAMP.md
mkdir -p "$(dirname "$OUT")"
OUT=$(cd "$(dirname "$OUT")" && pwd)/$(basename "$OUT")
RAW=${OUT%.md}.tsv
MACHINE=$WORK/machine.md

TARGET_PIDS=()   # every target we started; all killed on exit
CUR_JOB=         # process group of the dump tool currently running
CORE_PATTERN_FILE=/proc/sys/kernel/core_pattern
CORE_PATTERN_ORIG=$(cat "$CORE_PATTERN_FILE" 2>/dev/null || true)
CORE_PATTERN_CHANGED=0

restore_core_pattern() {
    if [ "$CORE_PATTERN_CHANGED" = 1 ]; then
        printf '%s\n' "$CORE_PATTERN_ORIG" > "$CORE_PATTERN_FILE" &&
            CORE_PATTERN_CHANGED=0
    fi
}

# Free page reporting (see "Warming" in --help) is paused for the run when
# it can be: pages of an order above the largest are never reported.
REPORTING_FILE=/sys/module/page_reporting/parameters/page_reporting_order
REPORTING_ORIG=
REPORTING_NOTE="not seen ($REPORTING_FILE)"
if [ -r "$REPORTING_FILE" ]; then
    REPORTING_ORIG=$(cat "$REPORTING_FILE")
    if [ "$WARM" = 1 ] && printf '11\n' > "$REPORTING_FILE" 2>/dev/null; then
        REPORTING_NOTE="active on this VM; paused for the run (page_reporting_order $REPORTING_ORIG -> 11, restored at the end)"
    else
        REPORTING_NOTE="active on this VM, left on (page_reporting_order $REPORTING_ORIG)"
        REPORTING_ORIG=
    fi
fi
restore_reporting() {
    if [ -n "$REPORTING_ORIG" ]; then
        printf '%s\n' "$REPORTING_ORIG" > "$REPORTING_FILE" && REPORTING_ORIG=
    fi
}

cleanup() {
    local p
    restore_core_pattern
    restore_reporting
    if [ -n "$CUR_JOB" ]; then kill -KILL -- "-$CUR_JOB" 2>/dev/null; fi
    for p in "${TARGET_PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done
    wait 2>/dev/null
    if [ "$KEEP" = 1 ]; then
        log "scratch kept: $WORK"
    else
        rm -rf "$WORK"
        rmdir "$WORKPARENT" 2>/dev/null
    fi
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM HUP

# ---------------------------------------------------------------- build
BIN=$BENCH/.build
mkdir -p "$BIN"
CORESNAP=${CARGO_TARGET_DIR:-$REPO/target}/release/coresnap
ELFCORE=$BIN/elfcore-target/release/elfcore-dump
STREAM_OK=0
CORESNAP_SKIP=   # reason coresnap cannot be used at all, if any
ELFCORE_SKIP=

if [ "$BUILD" = 1 ]; then
    log "building C targets"
    for t in sparse dense maps small; do
        cc -O2 -Wall -Wextra -pthread -o "$BIN/$t" \
            "$BENCH/targets/$t.c" "$BENCH/targets/heartbeat.c" || {
            echo "cannot build target $t" >&2; exit 1; }
    done
    if has_tool coresnap || has_tool coresnap-cow || has_tool stream || [[ ",$TOOLS," == *,coresnap-z* ]]; then
        log "building coresnap (cargo build --release)"
        if ! (cd "$REPO" && cargo build --release) > "$WORK/build-coresnap.log" 2>&1; then
            CORESNAP_SKIP="cargo build --release failed: $(grep -m1 '^error' "$WORK/build-coresnap.log")"
        fi
    fi
    if has_tool elfcore; then
        log "building bench/elfcore-dump"
        if ! cargo build --release --manifest-path "$BENCH/elfcore-dump/Cargo.toml" \
            --target-dir "$BIN/elfcore-target" > "$WORK/build-elfcore.log" 2>&1; then
            ELFCORE_SKIP="elfcore-dump build failed: $(grep -m1 '^error' "$WORK/build-elfcore.log")"
        fi
    fi
fi
for t in sparse dense maps small; do
    [ -x "$BIN/$t" ] || { echo "missing $BIN/$t (run without --no-build)" >&2; exit 1; }
done
PYTHON=$(command -v python3 || true)
if [ -n "$PYTHON" ]; then
    # pyenv-style shims are scripts; run the real interpreter so the pid we
    # start is the Python process.
    PYTHON=$("$PYTHON" -c 'import sys; print(sys.executable)')
fi

# ------------------------------------------------------- tool availability
declare -A SKIP   # tool -> reason it is skipped for the whole run
ZTOOLS=()         # coresnap-zN: coresnap --compress=N
IFS=, read -r -a _tools <<< "$TOOLS"
for tool in "${_tools[@]}"; do
    [[ $tool =~ ^coresnap-z-?[0-9]+$ ]] && ZTOOLS+=("$tool")
done
for tool in gcore coresnap coresnap-nomanifest coresnap-cow elfcore kernel stream triage; do
    has_tool "$tool" || SKIP[$tool]="not selected (--tools)"
done
if [ -z "${SKIP[triage]:-}" ] && ! command -v eu-stack > /dev/null; then
    SKIP[triage]="eu-stack not found in PATH (elfutils)"
fi
if [ -z "${SKIP[gcore]:-}" ] && ! command -v gcore > /dev/null; then
    SKIP[gcore]="gcore not found in PATH"
fi
for tool in coresnap coresnap-nomanifest coresnap-cow stream triage "${ZTOOLS[@]}"; do
    [ -n "${SKIP[$tool]:-}" ] && continue
    if [ -n "$CORESNAP_SKIP" ]; then SKIP[$tool]=$CORESNAP_SKIP
    elif [ ! -x "$CORESNAP" ]; then SKIP[$tool]="no binary at $CORESNAP"
    fi
done
if [ -n "$CORESNAP_SKIP" ] || [ ! -x "$CORESNAP" ]; then
    :
elif ! msg=$("$CORESNAP" --help 2>&1); then
    CORESNAP_SKIP="'coresnap --help' failed: $(printf '%s' "$msg" | grep -m1 .)"
elif ! printf '%s' "$msg" | grep -q -- '-o'; then
    CORESNAP_SKIP="'coresnap --help' does not document -o (said: $(printf '%s' "$msg" | grep -m1 . | cut -c1-60))"
fi
if [ -n "$CORESNAP_SKIP" ]; then
    for tool in coresnap coresnap-nomanifest coresnap-cow stream triage "${ZTOOLS[@]}"; do
        [ -n "${SKIP[$tool]:-}" ] || SKIP[$tool]=$CORESNAP_SKIP
    done
fi
for tool in "${ZTOOLS[@]}"; do
    [ -n "${SKIP[$tool]:-}" ] && continue
    if ! msg=$("$CORESNAP" "--compress=${tool#coresnap-z}" --help 2>&1); then
        SKIP[$tool]="coresnap rejects '--compress=${tool#coresnap-z}': $(printf '%s' "$msg" | grep -m1 .)"
    fi
done
if [ -z "${SKIP[coresnap-cow]:-}" ]; then
    # clap-style parsers reject an unknown option or value before --help.
    if ! msg=$("$CORESNAP" --mode cow --help 2>&1); then
        SKIP[coresnap-cow]="coresnap rejects '--mode cow': $(printf '%s' "$msg" | grep -m1 .)"
    elif ! printf '%s' "$msg" | grep -q -- '--mode'; then
        SKIP[coresnap-cow]="'coresnap --help' does not document --mode"
    fi
fi
if [ -z "${SKIP[elfcore]:-}" ]; then
    if [ -n "$ELFCORE_SKIP" ]; then SKIP[elfcore]=$ELFCORE_SKIP
    elif [ ! -x "$ELFCORE" ]; then SKIP[elfcore]="no binary at $ELFCORE"
    fi
fi
if [ -z "${SKIP[kernel]:-}" ]; then
    if [ ! -w "$CORE_PATTERN_FILE" ]; then
        SKIP[kernel]="$CORE_PATTERN_FILE is not writable (need root)"
    elif ! (ulimit -c unlimited) 2>/dev/null; then
        SKIP[kernel]="cannot raise ulimit -c"
    fi
fi
for tool in gcore coresnap coresnap-nomanifest coresnap-cow elfcore kernel stream triage "${ZTOOLS[@]}"; do
    if [ -n "${SKIP[$tool]:-}" ] && has_tool "$tool"; then
        log "SKIP $tool: ${SKIP[$tool]}"
    fi
done
if [[ ",$TARGETS," == *,python,* ]] && [ -z "$PYTHON" ]; then
    log "SKIP target python: python3 not found"
    TARGETS=$(printf '%s' ",$TARGETS," | sed 's/,python,/,/; s/^,//; s/,$//')
fi

# ---------------------------------------------------------------- targets
T_PID=      # pid of the target just started
T_REP=      # its heartbeat report file
T_DESC=     # its READY line

target_cmd() { # NAME REPORTFILE -> prints nothing, sets CMD array
    case "$1" in
        sparse) CMD=("$BIN/sparse" "$2" "$SPARSE_RESERVE" "$SPARSE_STRIDE" "$SPARSE_DENSE") ;;
        dense) CMD=("$BIN/dense" "$2" "$DENSE_SIZE") ;;
        maps) CMD=("$BIN/maps" "$2" "$MAPS_COUNT" "$MAPS_PAGES") ;;
        small) CMD=("$BIN/small" "$2" "$SMALL_THREADS" "$SMALL_SIZE") ;;
        reservation) CMD=("$BIN/sparse" "$2" "$RES_RESERVE" "$RES_STRIDE" 0) ;;
        python) CMD=("$PYTHON" "$BENCH/targets/pyheap.py" "$2" "$PY_SIZE") ;;
        curve-*) CMD=("$BIN/dense" "$2" "${1#curve-}") ;;
        threads64) CMD=("$BIN/small" "$2" 64 "$THREADS64_SIZE") ;;
        *) echo "unknown target $1" >&2; exit 2 ;;
    esac
}

start_target() { # NAME CORELIMIT
    local name=$1 corelimit=$2 n
    T_REP=$WORK/hb.$name.$RANDOM
    local tlog=$T_REP.log
    target_cmd "$name" "$T_REP"
    ( ulimit -c "$corelimit"; exec "${CMD[@]}" ) > "$tlog" 2>&1 < /dev/null &
    T_PID=$!
    TARGET_PIDS+=("$T_PID")
    for ((n = 0; n < 12000; n++)); do   # up to 20 minutes (python at 1 GB)
        if grep -q '^READY' "$tlog"; then
            T_DESC=$(grep -m1 '^READY' "$tlog")
            return 0
        fi
        if ! kill -0 "$T_PID" 2>/dev/null; then
            echo "target $name died during setup:" >&2
            cat "$tlog" >&2
            exit 1
        fi
        sleep 0.1
    done
    echo "target $name never became ready" >&2
    exit 1
}

# Forget a reaped target, so the exit trap never signals a recycled pid.
untrack_pid() { # PID
    local p keep=()
    for p in "${TARGET_PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
    TARGET_PIDS=("${keep[@]}")
}

stop_target() { # PID
    kill -KILL "$1" 2>/dev/null
    wait "$1" 2>/dev/null
    untrack_pid "$1"
}

# Heartbeat protocol (see targets/heartbeat.c): delete the report file,
# signal, wait for the file to come back.
hb_request() { # PID REPORTFILE SIGNAL -> prints max gap in us, or "n/a"
    local pid=$1 rep=$2 sig=$3 n
    rm -f "$rep"
    kill "-$sig" "$pid" 2>/dev/null || { echo n/a; return 1; }
    for ((n = 0; n < 500; n++)); do
        if [ -s "$rep" ]; then
            cut -d' ' -f1 "$rep"
            return 0
        fi
        sleep 0.01
    done
    echo n/a
    return 1
}

# ---------------------------------------------------------------- warming
WARM_BYTES=0   # set per target from its READY line
warm_memory() {
    [ "$WARM" = 1 ] && [ "$WARM_BYTES" -gt 0 ] || return 0
    dd if=/dev/zero of="$WORK/warm" bs=1M count=$(( (WARM_BYTES >> 20) + 64 )) status=none
    # Deleted before writeback: its pages go straight back to the free lists,
    # where the dump's page cache finds them.
    rm -f "$WORK/warm"
}

# ---------------------------------------------------------------- measuring
# One raw row per measurement:
# target tool round status wall_s disk_bytes logical_bytes pause_us note
printf 'target\ttool\tround\tstatus\twall_s\tdisk_bytes\tlogical_bytes\tpause_us\tnote\n' > "$RAW"
row() { local IFS=$'\t'; printf '%s\n' "$*" >> "$RAW"; }

# Run a shell command in its own process group, with a timeout; sets RC and
# WALL (seconds). Output goes to $WORK/last.log.
timed() { # COMMAND-STRING
    local t0 t1
    t0=$EPOCHREALTIME
    setsid timeout -k 5 "$TIMEOUT" bash -o pipefail -c "$1" > "$WORK/last.log" 2>&1 < /dev/null &
    CUR_JOB=$!
    wait "$CUR_JOB"
    RC=$?
    t1=$EPOCHREALTIME
    CUR_JOB=
    WALL=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
}

last_error() {
    local msg
    msg=$(grep -v '^\s*$' "$WORK/last.log" | tail -n 2 | tr '\n\t' '  ' | cut -c1-160)
    [ "$RC" = 124 ] && msg="timed out after ${TIMEOUT}s; $msg"
    printf 'exit %s: %s' "$RC" "$msg"
}

is_zstd() { # FILE: zstd frame magic
    [ "$(od -An -tx1 -N4 "$1" 2>/dev/null | tr -d ' \n')" = 28b52ffd ]
}

core_len_from_manifest() { # JSON -> core.length
    "${PYTHON:-python3}" -c 'import json, sys; print(json.load(open(sys.argv[1]))["core"]["length"])' "$1" 2>/dev/null
}

is_elf_core() { # FILE: ELF magic and e_type == ET_CORE (4, little endian)
    local hdr
    hdr=$(od -An -tx1 -N18 "$1" 2>/dev/null | tr -d ' \n')
    [ "${hdr:0:8}" = 7f454c46 ] && [ "${hdr:32:4}" = 0400 ]
}

# After a dump the target must run again with no tracer attached.
target_state_note() { # PID
    local st tr
    st=$(awk '/^State:/ { print $2 }' "/proc/$1/status" 2>/dev/null)
    tr=$(awk '/^TracerPid:/ { print $2 }' "/proc/$1/status" 2>/dev/null)
    if [ -z "$st" ]; then printf 'target gone after dump; '; return; fi
    [ "$st" = T ] || [ "$st" = t ] && printf 'target left stopped (%s); ' "$st"
    [ "${tr:-0}" != 0 ] && printf 'tracer %s still attached; ' "$tr"
}

dump_cmd() { # TOOL PID PREFIX -> command string
    case "$1" in
        gcore) printf 'exec gcore -o %q %q' "$3" "$2" ;;
        # What a user types: the core, its manifest and hashes. The core
        # alone, like gcore, elfcore and the kernel, is coresnap-nomanifest.
        coresnap) printf 'exec %q -o %q %q' "$CORESNAP" "$3" "$2" ;;
        coresnap-nomanifest) printf 'exec %q --no-manifest -o %q %q' "$CORESNAP" "$3" "$2" ;;
        coresnap-cow) printf 'exec %q --mode cow -o %q %q' "$CORESNAP" "$3" "$2" ;;
        coresnap-z*) printf 'exec %q --compress=%s -o %q %q' "$CORESNAP" "${1#coresnap-z}" "$3" "$2" ;;
        elfcore) printf 'exec %q %q %q' "$ELFCORE" "$2" "$3.$2" ;;
    esac
}

measure_attach_tool() { # TARGET TOOL ROUND PID REPORTFILE
    local target=$1 tool=$2 round=$3 pid=$4 rep=$5
    local prefix=$WORK/core-$tool file pause note status disk logical zst=0
    file=$prefix.$pid
    [[ $tool == coresnap-z* ]] && { zst=1; file+=.zst; }
    rm -f "$file" "$file.json"
    warm_memory
    hb_request "$pid" "$rep" USR1 > /dev/null
    timed "$(dump_cmd "$tool" "$pid" "$prefix")"
    pause=$(hb_request "$pid" "$rep" USR2) || kill -CONT "$pid" 2>/dev/null
    note=$(target_state_note "$pid")
    disk=; logical=
    if [ "$RC" != 0 ]; then
        status=FAIL; note+=$(last_error)
    elif [ ! -f "$file" ]; then
        status=FAIL; note+="exit 0 but no file at PREFIX.PID"
    elif [ "$zst" = 1 ] && ! is_zstd "$file"; then
        status=FAIL; note+="output is not a zstd file"
    elif [ "$zst" = 0 ] && ! is_elf_core "$file"; then
        status=FAIL; note+="output is not an ELF core file"
    else
        status=ok
    fi
    if [ -f "$file" ]; then
        disk=$(du -B1 "$file" | cut -f1)
        logical=$(stat -c %s "$file")
        # -z: logical = the core's length (from the manifest), on disk = the
        # compressed file, so throughput is core bytes per second.
        [ "$zst" = 1 ] && logical=$(core_len_from_manifest "$file.json")
    fi
    local dump_wall=$WALL verify_row=
    if [ "$status" = ok ] && [[ $tool == coresnap || $tool == coresnap-z1 ]]; then
        # What checking that core against its manifest costs a user.
        timed "$(printf 'exec %q verify %q' "$CORESNAP" "$file")"
        verify_row=$([ "$RC" = 0 ] && echo ok || echo "FAIL	$(last_error)")
        verify_wall=$WALL
    fi
    rm -f "$file" "$file.json"
    sync
    row "$target" "$tool" "$round" "$status" "$dump_wall" "$disk" "$logical" "$pause" "$note"
    log "$target/$tool round $round: $status ${dump_wall}s disk=${disk:-?} size=${logical:-?} pause_us=$pause $note"
    if [ -n "$verify_row" ]; then
        row "$target" "verify: coresnap verify ($tool core)" "$round" "${verify_row%%	*}" "$verify_wall" "" "" "" \
            "$([[ $verify_row == *$'\t'* ]] && echo "${verify_row#*	}")"
        log "$target/verify of $tool round $round: ${verify_row%%	*} ${verify_wall}s"
    fi
}

measure_stream() { # TARGET ROUND PID REPORTFILE KIND(pipe|devnull)
    # pipe: the core goes through a pipe; its header is checked and its bytes
    # counted. devnull: stdout is /dev/null (seekable, so holes may be skipped);
    # nothing can be checked there, so it counts only if the pipe run passed.
    local target=$1 round=$2 pid=$3 rep=$4 kind=$5 cmd pause note status logical= tool hdr
    if [ "$kind" = devnull ]; then
        tool="coresnap -o - (to /dev/null)"
        cmd=$(printf 'exec %q -o - %q > /dev/null' "$CORESNAP" "$pid")
    else
        tool="coresnap -o - (to a pipe)"
        cmd=$(printf '%q -o - %q | { dd bs=18 count=1 iflag=fullblock status=none of=%q; wc -c; } > %q' \
            "$CORESNAP" "$pid" "$WORK/stream.hdr" "$WORK/stream.count")
        STREAM_OK=0
    fi
    rm -f "$WORK/stream.count" "$WORK/stream.hdr"
    hb_request "$pid" "$rep" USR1 > /dev/null
    timed "$cmd"
    pause=$(hb_request "$pid" "$rep" USR2) || kill -CONT "$pid" 2>/dev/null
    note=$(target_state_note "$pid")
    if [ "$RC" != 0 ]; then
        status=FAIL; note+=$(last_error)
    elif [ "$kind" = pipe ]; then
        logical=$(( $(tr -d ' ' < "$WORK/stream.count" 2>/dev/null || echo 0) + $(stat -c %s "$WORK/stream.hdr" 2>/dev/null || echo 0) ))
        if is_elf_core "$WORK/stream.hdr"; then
            status=ok; STREAM_OK=1
        else
            status=FAIL; note+="no ELF core header on stdout ($logical bytes)"
        fi
    elif [ "$STREAM_OK" = 1 ]; then
        status=ok
    else
        status=FAIL; note+="not counted: the pipe run of this round wrote no core"
    fi
    row "$target" "$tool" "$round" "$status" "$WALL" "" "$logical" "$pause" "$note"
    log "$target/$tool round $round: $status ${WALL}s size=${logical:-?} pause_us=$pause $note"
}

# The floor under every tool's wall time: dd writing as many bytes as the
# target has touched (what any core must hold) from /dev/zero to the same
# file system, after the same warming.
measure_floor() { # TARGET ROUND
    local target=$1 round=$2 file=$WORK/floor.out
    [ "$WARM_BYTES" -gt 0 ] || return 0
    rm -f "$file"
    warm_memory
    timed "$(printf 'exec dd if=/dev/zero of=%q bs=1M count=%d status=none' "$file" $((WARM_BYTES >> 20)))"
    local disk=
    [ -f "$file" ] && disk=$(du -B1 "$file" | cut -f1)
    rm -f "$file"
    sync
    row "$target" "$FLOOR_TOOL" "$round" "$([ "$RC" = 0 ] && echo ok || echo FAIL)" "$WALL" "$disk" "$disk" "" ""
    log "$target/floor round $round: ${WALL}s disk=${disk:-?}"
}
FLOOR_TOOL="(write floor: dd of the touched bytes)"

# Triage: how long a first look at a core takes, coresnap's own reader
# against eu-stack on the same core, plain and compressed.
TRIAGE_DIR=
triage_prepare() { # PID
    TRIAGE_DIR=$WORK/triage
    mkdir -p "$TRIAGE_DIR"
    timed "$(printf '%q -o %q %q && exec %q -z -o %q %q' "$CORESNAP" "$TRIAGE_DIR/core" "$1" \
        "$CORESNAP" "$TRIAGE_DIR/core" "$1")"
    TRIAGE_CORE=$TRIAGE_DIR/core.$1
    [ "$RC" = 0 ] && [ -f "$TRIAGE_CORE" ] && [ -f "$TRIAGE_CORE.zst" ]
}
measure_triage() { # TARGET ROUND
    local target=$1 round=$2 tool cmd status note
    for tool in "triage: eu-stack --core" "triage: coresnap inspect --backtrace" \
        "triage: coresnap inspect --backtrace (.zst)"; do
        case "$tool" in
            *eu-stack*) cmd=$(printf 'exec eu-stack --core=%q > /dev/null' "$TRIAGE_CORE") ;;
            *.zst*) cmd=$(printf 'exec %q inspect --backtrace %q > /dev/null' "$CORESNAP" "$TRIAGE_CORE.zst") ;;
            *) cmd=$(printf 'exec %q inspect --backtrace %q > /dev/null' "$CORESNAP" "$TRIAGE_CORE") ;;
        esac
        timed "$cmd"
        note=
        if [ "$RC" = 0 ]; then status=ok; else status=FAIL; note=$(last_error); fi
        row "$target" "$tool" "$round" "$status" "$WALL" "" "" "" "$note"
        log "$target/$tool round $round: $status ${WALL}s $note"
    done
}

measure_kernel() { # TARGET ROUND
    local target=$1 round=$2 pid file status note= disk= logical=
    mkdir -p "$WORK/kcore"
    start_target "$target" unlimited
    pid=$T_PID
    file=$WORK/kcore/core.$pid
    CORE_PATTERN_CHANGED=1
    if ! printf '%s\n' "$WORK/kcore/core.%p" > "$CORE_PATTERN_FILE"; then
        CORE_PATTERN_CHANGED=0
        row "$target" kernel "$round" FAIL "" "" "" "" "cannot write core_pattern"
        stop_target "$pid"
        return
    fi
    local t0 t1
    warm_memory
    t0=$EPOCHREALTIME
    kill -SEGV "$pid"
    wait "$pid" 2>/dev/null
    RC=$?
    t1=$EPOCHREALTIME
    untrack_pid "$pid"
    restore_core_pattern
    WALL=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
    if [ -f "$file" ] && is_elf_core "$file"; then
        status=ok
    else
        status=FAIL; note="no core at $file (exit status $RC)"
    fi
    if [ -f "$file" ]; then
        disk=$(du -B1 "$file" | cut -f1)
        logical=$(stat -c %s "$file")
    fi
    rm -f "$file"
    sync
    row "$target" kernel "$round" "$status" "$WALL" "$disk" "$logical" "" "$note"
    log "$target/kernel round $round: $status ${WALL}s disk=${disk:-?} size=${logical:-?} $note"
}

# ---------------------------------------------------------------- machine
machine_info() {
    local fs cpu mem
    cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
    mem=$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
    fs=$(findmnt -n -T "$WORK" -o SOURCE,FSTYPE 2>/dev/null | tr -s ' ' || df -T "$WORK" | tail -1)
    {
        echo "| | |"
        echo "|---|---|"
        echo "| CPU | $cpu ($(nproc) online CPUs$(grep -q hypervisor /proc/cpuinfo && echo ', virtual machine')) |"
        echo "| Memory | $mem |"
        echo "| Kernel | $(uname -sr) |"
        echo "| Output filesystem | $fs (scratch dir under $WORKPARENT) |"
        echo "| THP | $(cat /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null) |"
        echo "| Free page reporting | $REPORTING_NOTE |"
        echo "| Warming | $([ "$WARM" = 1 ] && echo "on: a file of the target's touched size written and deleted before each dump" || echo "off (--cold)") |"
        echo "| gdb | $(gdb --version 2>/dev/null | head -1) |"
        echo "| coresnap | $("$CORESNAP" --version 2>/dev/null | head -1 || true) at $CORESNAP, repo $(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo 'no commit') |"
        echo "| elfcore crate | $(awk '/^name = "elfcore"$/ { getline; print $3 }' "$BENCH/elfcore-dump/Cargo.lock" 2>/dev/null | tr -d '"') |"
        echo "| rustc | $(rustc --version 2>/dev/null) |"
        echo "| Commit | $(cd "$REPO" && git rev-parse HEAD 2>/dev/null || echo 'no commit')$(cd "$REPO" && [ -n "$(git status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null)" ] && echo ' with uncommitted changes in src/ or Cargo.*') |"
        echo "| Command | \`bench/run.sh $ARGS\` |"
        echo "| Load average at start | $(cut -d' ' -f1-3 /proc/loadavg) |"
        echo "| Rounds | $ROUNDS (best reported), per-dump timeout ${TIMEOUT}s |"
        echo "| Sizes | sparse $SPARSE_RESERVE reserved, 1 page per $SPARSE_STRIDE + $SPARSE_DENSE dense; dense $DENSE_SIZE; maps $MAPS_COUNT x $MAPS_PAGES pages; small $SMALL_THREADS threads $SMALL_SIZE; python $PY_SIZE; reservation $RES_RESERVE reserved, 1 page per $RES_STRIDE$([ "$PAUSE_CURVE" = 1 ] && echo "; pause curve: dense at $CURVE_SIZES, 64 threads with $THREADS64_SIZE") |"
    } > "$MACHINE"
}
machine_info

# ---------------------------------------------------------------- main loop
BASE_TOOLS=(gcore coresnap coresnap-nomanifest coresnap-cow elfcore "${ZTOOLS[@]}")
declare -A DESC
IFS=, read -r -a TARGET_LIST <<< "$TARGETS"
log "work dir $WORK; targets: ${TARGET_LIST[*]}; rounds: $ROUNDS"
for target in "${TARGET_LIST[@]}"; do
    log "=== target $target"
    if is_curve_target "$target"; then
        size=${target#curve-}
        [ "$target" = threads64 ] && size=$THREADS64_SIZE
        need_kib=$(( ($(numfmt --from=iec "$size") >> 10) + (4 << 20) ))
        avail_kib=$(awk '/^MemAvailable:/ { print $2 }' /proc/meminfo)
        if [ "$avail_kib" -lt "$need_kib" ]; then
            note="skipped: a $size target would leave less than 4 GiB of MemAvailable ($((avail_kib >> 10)) MiB)"
            row "$target" "(skipped)" 0 SKIP "" "" "" "" "$note"
            log "$note"
            continue
        fi
    fi
    start_target "$target" 0
    pid=$T_PID rep=$T_REP
    DESC[$target]=$T_DESC
    log "$T_DESC"
    WARM_BYTES=$(grep -o -E '(touched|rss)_bytes=[0-9]+' <<< "$T_DESC" | head -1 | cut -d= -f2)
    WARM_BYTES=${WARM_BYTES:-0}
    # Noise floor: the longest heartbeat gap over one second without a dump.
    hb_request "$pid" "$rep" USR1 > /dev/null
    sleep 1
    idle=$(hb_request "$pid" "$rep" USR2)
    row "$target" "(no dump, 1 s idle)" 0 ok "" "" "" "$idle" ""
    tools=("${BASE_TOOLS[@]}")
    is_curve_target "$target" && tools=("${CURVE_TOOLS[@]}")
    for ((round = 1; round <= ROUNDS; round++)); do
        order=("${tools[@]}")
        if ((round % 2 == 0)); then   # alternate the order between rounds
            order=(); for ((i = ${#tools[@]} - 1; i >= 0; i--)); do order+=("${tools[i]}"); done
        fi
        for tool in "${order[@]}"; do
            [ -n "${SKIP[$tool]:-}" ] && continue
            # gcore and elfcore on the reservation come after every round
            # of the others (below).
            if [ "$target" = reservation ] && { [ "$tool" = gcore ] || [ "$tool" = elfcore ]; }; then
                continue
            fi
            measure_attach_tool "$target" "$tool" "$round" "$pid" "$rep"
        done
        is_curve_target "$target" && continue
        measure_floor "$target" "$round"
        if [ "$target" = dense ] && [ -z "${SKIP[stream]:-}" ]; then
            measure_stream "$target" "$round" "$pid" "$rep" pipe
            measure_stream "$target" "$round" "$pid" "$rep" devnull
        fi
    done
    if [ "$target" = reservation ]; then
        # They read every byte of the reservation, and reading untouched
        # anonymous memory fills the target's page tables with the zero
        # page, which makes every later dump of the same instance slower:
        # so they come last, once each, with a shorter timeout, and the
        # table says how far they got.
        TIMEOUT_SAVED=$TIMEOUT; TIMEOUT=$RES_TIMEOUT
        for tool in gcore elfcore; do
            [ -n "${SKIP[$tool]:-}" ] || measure_attach_tool "$target" "$tool" 1 "$pid" "$rep"
        done
        TIMEOUT=$TIMEOUT_SAVED
    fi
    if [ "$target" = small ] && [ -z "${SKIP[triage]:-}" ]; then
        if triage_prepare "$pid"; then
            for ((round = 1; round <= ROUNDS; round++)); do measure_triage "$target" "$round"; done
        else
            row "$target" "triage: eu-stack --core" 1 FAIL "" "" "" "" "could not write the cores to triage: $(last_error)"
        fi
    fi
    stop_target "$pid"
    if [ -z "${SKIP[kernel]:-}" ] && ! is_curve_target "$target"; then
        kernel_rounds=$ROUNDS
        [ "$target" = reservation ] && kernel_rounds=$RES_KERNEL_ROUNDS
        for ((round = 1; round <= kernel_rounds; round++)); do
            measure_kernel "$target" "$round"
        done
    fi
done

# ---------------------------------------------------------------- report
echo "| Load average at end | $(cut -d' ' -f1-3 /proc/loadavg) |" >> "$MACHINE"
{
    for tool in gcore coresnap coresnap-nomanifest coresnap-cow elfcore kernel stream triage "${ZTOOLS[@]}"; do
        if [ -n "${SKIP[$tool]:-}" ] && has_tool "$tool"; then
            printf '%s\t%s\n' "$tool" "${SKIP[$tool]}"
        fi
    done
} > "$WORK/skipped.tsv"
{
    for t in "${!DESC[@]}"; do printf '%s\t%s\n' "$t" "${DESC[$t]}"; done
} > "$WORK/targets.tsv"
"${PYTHON:-python3}" "$BENCH/report.py" --raw "$RAW" --machine "$MACHINE" \
    --skipped "$WORK/skipped.tsv" --targets "$WORK/targets.tsv" > "$OUT" || exit 1
cat "$OUT"
log "report: $OUT (raw rows: $RAW)"
