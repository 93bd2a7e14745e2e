#!/usr/bin/env bash
# Real programs nobody here wrote, dumped by coresnap (stop and cow mode,
# default options otherwise) and by gcore for reference, in one run: the
# table issue #14's closing note asks for (pauses, sizes, and whether gdb,
# lldb and eu-stack each find every thread of each core).
#
#   bench/real_programs.sh              build, run, write bench/results/real-programs.{md,tsv}
#   bench/real_programs.sh --help       options
#
# The programs, started as tests/real_programs.rs starts them:
#   python3   testdata/python/workers.py (one thread computing, three waiting)
#   node      testdata/node/server.js --v8-pool-size=4
#   redis     redis-server on a Unix socket, REDIS_KEYS keys loaded with redis-cli --pipe
#   go        testdata/go/server.go (go build), under HTTP load (GET /work?n=4000
#             one after another) during the dumps
#   jvm       testdata/java/Load.java (javac), its threads allocating and
#             catching NullPointerExceptions all along
#
# For every dump: wall time; the pause (coresnap: capture.pause_us of its
# manifest; gcore: its wall time, as the target is held from attach to
# detach); the file's logical size and its disk usage (du -B1); the
# target's thread count (/proc/PID/task) right before and after; whether
# the target runs untraced and still serves afterwards; and the thread count
# each client finds in the core:
#   gdb -nx -batch -ex 'info threads' EXE CORE
#   lldb --batch -c CORE EXE -o 'thread list'
#   eu-stack --core CORE -e EXE
# Each core is deleted once read.
#
# Needs root (ptrace), the release build of coresnap, gdb (gcore), lldb,
# eu-stack (elfutils), curl, python3, node (nodejs), redis-server and
# redis-cli, go (golang-go), javac/java (openjdk-17-jdk-headless). A program
# whose tools are missing gets a row saying so.
set -uo pipefail

BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH/.." && pwd)
TESTDATA=$REPO/testdata

usage() {
    cat <<EOF
usage: bench/real_programs.sh [options]
  --programs LIST   comma list from: python,node,redis,go,jvm (default: all)
  --out FILE        Markdown report (default bench/results/real-programs.md;
                    the rows go next to it as .tsv)
  --timeout SEC     give up on one dump or one client after SEC seconds (default 300)
  --no-build        use target/release/coresnap as it is
  --keep            keep the scratch dir (program logs) afterwards
Environment: REDIS_KEYS=200000, JVM_OPTS="-Xmx64m -Xms16m" (the tests' heap).
EOF
}

PROGRAMS=python,node,redis,go,jvm
OUT=$BENCH/results/real-programs.md
TIMEOUT=300
BUILD=1
KEEP=0
ARGS="$*"
while [ $# -gt 0 ]; do
    case "$1" in
        --programs) PROGRAMS=$2; shift ;;
        --out) OUT=$2; shift ;;
        --timeout) TIMEOUT=$2; shift ;;
        --no-build) BUILD=0 ;;
        --keep) KEEP=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
: "${REDIS_KEYS:=200000}" "${JVM_OPTS:=-Xmx64m -Xms16m}"
READY_TIMEOUT=60   # seconds for a program to start (the JVM on a busy machine)
SERVE_TIMEOUT=20   # seconds for a program to show it still works

log() { printf '[real %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# ------------------------------------------------------- scratch + cleanup
WORKPARENT=$BENCH/.scratch
mkdir -p "$WORKPARENT" "$(dirname "$OUT")" || exit 1
WORK=$(mktemp -d "$WORKPARENT/real.XXXXXX") || exit 1
OUT=$(cd "$(dirname "$OUT")" && pwd)/$(basename "$OUT")
RAW=${OUT%.md}.tsv

STARTED_PIDS=()  # every program and helper started; all killed on exit
CUR_JOB=         # process group of the dump or client running now

cleanup() {
    local p
    if [ -n "$CUR_JOB" ]; then kill -KILL -- "-$CUR_JOB" 2>/dev/null; fi
    for p in "${STARTED_PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done
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

stop_started() { # PID...: kill, reap, forget
    local p q keep
    for p in "$@"; do
        kill -KILL "$p" 2>/dev/null
        wait "$p" 2>/dev/null
        keep=()
        for q in "${STARTED_PIDS[@]}"; do [ "$q" = "$p" ] || keep+=("$q"); done
        STARTED_PIDS=("${keep[@]}")
    done
}

# ---------------------------------------------------------------- build
CORESNAP=${CARGO_TARGET_DIR:-$REPO/target}/release/coresnap
if [ "$BUILD" = 1 ]; then
    log "building coresnap (cargo build --release)"
    (cd "$REPO" && cargo build --release) > "$WORK/build.log" 2>&1 || {
        echo "cargo build --release failed:" >&2; tail -20 "$WORK/build.log" >&2; exit 1; }
fi
[ -x "$CORESNAP" ] || { echo "no coresnap at $CORESNAP (run without --no-build)" >&2; exit 1; }
for tool in gdb gcore lldb eu-stack curl; do
    command -v "$tool" > /dev/null || { echo "$tool not found in PATH" >&2; exit 1; }
done
PYTHON=$(command -v python3 || true)
# pyenv-style shims are scripts: start the interpreter itself.
[ -n "$PYTHON" ] && PYTHON=$("$PYTHON" -c 'import sys; print(sys.executable)')

# ---------------------------------------------------------------- rows
# program threads tool mode status wall_s pause_ms logical_bytes disk_bytes
# gdb lldb eu_stack serves note   (clients: "ok N" or "FAIL N/EXPECTED")
printf 'program\tthreads\ttool\tmode\tstatus\twall_s\tpause_ms\tlogical_bytes\tdisk_bytes\tgdb\tlldb\teu_stack\tserves_after\tnote\n' > "$RAW"
row() { local IFS=$'\t'; printf '%s\n' "$*" >> "$RAW"; }

# Runs a shell command in its own process group with the timeout; sets RC
# and WALL (seconds); its output goes to $WORK/last.log.
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
    msg=$(grep -v '^\s*$' "$WORK/last.log" | grep -v -i 'embedded_interpreter\|^Traceback\|^  File' |
        tail -n 2 | tr '\n\t' '  ' | cut -c1-160)
    [ "$RC" = 124 ] && msg="timed out after ${TIMEOUT}s; $msg"
    printf 'exit %s: %s' "$RC" "$msg"
}

task_ids() { ls "/proc/$1/task" 2>/dev/null | sort -n | tr '\n' ' '; }
count_words() { wc -w <<< "$1" | tr -d ' '; }

# After a dump the program must run again with no tracer attached.
state_note() { # PID
    local st tr
    st=$(awk '/^State:/ { print $2 }' "/proc/$1/status" 2>/dev/null)
    tr=$(awk '/^TracerPid:/ { print $2 }' "/proc/$1/status" 2>/dev/null)
    if [ -z "$st" ]; then printf 'program gone after the dump; '; return; fi
    [ "$st" = T ] || [ "$st" = t ] && printf 'program left stopped (%s); ' "$st"
    [ "${tr:-0}" != 0 ] && printf 'tracer %s still attached; ' "$tr"
}

# Settled: the same threads over one second (runtimes start threads of
# their own for a while after they start), up to 30 s.
settle() { # PID
    local n before
    for ((n = 0; n < 30; n++)); do
        before=$(task_ids "$1")
        sleep 1
        [ "$(task_ids "$1")" = "$before" ] && return 0
    done
    return 1
}

# ---------------------------------------------------------------- programs
P_PID=    # pid of the program just started (from its ready line)
P_LINE=   # its ready line
P_HELPERS=()   # load generators and the like, stopped with it

start_program() { # NAME COMMAND...: waits for "ready pid=N" on its stdout
    local name=$1 n; shift
    local plog=$WORK/$name.log
    "$@" > "$plog" 2>&1 < /dev/null &
    STARTED_PIDS+=("$!")
    P_HELPERS=("$!")
    for ((n = 0; n < READY_TIMEOUT * 10; n++)); do
        if grep -q '^ready pid=' "$plog"; then
            P_LINE=$(grep -m1 '^ready pid=' "$plog")
            P_PID=$(sed 's/^ready pid=\([0-9]*\).*/\1/' <<< "$P_LINE")
            STARTED_PIDS+=("$P_PID")
            return 0
        fi
        kill -0 "${P_HELPERS[0]}" 2>/dev/null || break
        sleep 0.1
    done
    P_FAIL="$name did not print its ready line within ${READY_TIMEOUT}s: $(tail -n 3 "$plog" | tr '\n' ' ' | cut -c1-160)"
    return 1
}
ready_field() { sed -n "s/.* $1=\([0-9]*\).*/\1/p" <<< "$P_LINE"; }

# Each program: prepare_NAME (build, start, load; sets P_PID or P_FAIL)
# and serves_NAME (0 when it still does its work; prints what failed).

prepare_python() {
    [ -n "$PYTHON" ] || { P_FAIL="python3 not found"; return 1; }
    PROGRESS=$WORK/python.progress
    start_program python "$PYTHON" "$TESTDATA/python/workers.py" "$PROGRESS" || return 1
    local n
    for ((n = 0; n < SERVE_TIMEOUT * 10; n++)); do [ -s "$PROGRESS" ] && return 0; sleep 0.1; done
    P_FAIL="the worker thread wrote no progress"; return 1
}
serves_python() {
    local before n
    before=$(cat "$PROGRESS" 2>/dev/null) || { echo "no progress file"; return 1; }
    for ((n = 0; n < SERVE_TIMEOUT * 10; n++)); do
        [ "$(cat "$PROGRESS" 2>/dev/null || echo 0)" -gt "$before" ] && return 0
        sleep 0.1
    done
    echo "the worker stayed at $before rounds"; return 1
}

prepare_node() {
    command -v node > /dev/null || { P_FAIL="node not found (nodejs)"; return 1; }
    start_program node node --v8-pool-size=4 "$TESTDATA/node/server.js" || return 1
    NODE_PORT=$(ready_field port)
}
serves_node() {
    local body
    body=$(curl -sf --max-time "$SERVE_TIMEOUT" "http://127.0.0.1:$NODE_PORT/") ||
        { echo "GET / failed (curl exit $?)"; return 1; }
    [[ $body == served* ]] || { echo "GET / answered '$body'"; return 1; }
}

prepare_redis() {
    command -v redis-server > /dev/null && command -v redis-cli > /dev/null ||
        { P_FAIL="redis-server or redis-cli not found (redis-server, redis-tools)"; return 1; }
    REDIS_SOCK=$WORK/redis.sock
    # redis prints no line of its own to wait for: the shell prints its pid
    # and becomes redis-server.
    start_program redis sh -c 'echo "ready pid=$$"; exec redis-server "$@"' sh \
        --port 0 --unixsocket "$REDIS_SOCK" --dir "$WORK" --logfile "$WORK/redis-server.log" \
        --save '' --appendonly no || return 1
    local n
    for ((n = 0; n < READY_TIMEOUT * 10; n++)); do
        [ "$(redis-cli -s "$REDIS_SOCK" PING 2>/dev/null)" = PONG ] && break
        sleep 0.1
    done
    # Mass insertion as redis documents it: the protocol piped to redis-cli.
    awk -v n="$REDIS_KEYS" 'BEGIN {
        for (i = 1; i <= n; i++) {
            k = "key:" i; v = sprintf("value-%d-%064d", i, i)
            printf "*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n", length(k), k, length(v), v
        }
    }' | redis-cli -s "$REDIS_SOCK" --pipe > "$WORK/redis-load.log" 2>&1 ||
        { P_FAIL="redis-cli --pipe failed: $(tail -n 2 "$WORK/redis-load.log" | tr '\n' ' ')"; return 1; }
    local keys
    keys=$(redis-cli -s "$REDIS_SOCK" DBSIZE)
    [ "$keys" = "$REDIS_KEYS" ] || { P_FAIL="redis holds $keys keys after loading $REDIS_KEYS"; return 1; }
}
serves_redis() {
    local pong value want
    want=$(printf 'value-%d-%064d' "$REDIS_KEYS" "$REDIS_KEYS")
    pong=$(timeout "$SERVE_TIMEOUT" redis-cli -s "$REDIS_SOCK" PING 2>&1)
    value=$(timeout "$SERVE_TIMEOUT" redis-cli -s "$REDIS_SOCK" GET "key:$REDIS_KEYS" 2>&1)
    [ "$pong" = PONG ] && [ "$value" = "$want" ] ||
        { echo "PING answered '$pong', GET key:$REDIS_KEYS '${value:0:40}'"; return 1; }
}

# The Go server's load: GET /work?n=4000 one after another, as the test
# sends it, counting answers; the counts go to a file at least every 0.2 s.
write_go_loader() {
    cat > "$WORK/load.py" <<'EOF'
import http.client, os, signal, sys, time
port, out = int(sys.argv[1]), sys.argv[2]
served = failed = 0
last_error = ""
running = True
def stop(*_):
    global running
    running = False
signal.signal(signal.SIGTERM, stop)
def publish():
    with open(out + ".tmp", "w") as f:
        f.write("%d %d %s\n" % (served, failed, last_error))
    os.replace(out + ".tmp", out)
written = time.monotonic()
while running:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        conn.request("GET", "/work?n=4000")
        response = conn.getresponse()
        response.read()
        conn.close()
        if response.status == 200:
            served += 1
        else:
            failed += 1
            last_error = "status %d" % response.status
    except OSError as e:
        failed += 1
        last_error = str(e).replace("\n", " ")
    if time.monotonic() - written > 0.2:
        publish()
        written = time.monotonic()
publish()
EOF
}
prepare_go() {
    command -v go > /dev/null || { P_FAIL="go not found (golang-go)"; return 1; }
    [ -n "$PYTHON" ] || { P_FAIL="python3 not found (the load generator)"; return 1; }
    local cache=$BENCH/.build/go
    mkdir -p "$cache"
    GOCACHE=$cache/go-build GOPATH=$cache/gopath GO111MODULE=off GOFLAGS= \
        go build -o "$WORK/go-server" "$TESTDATA/go/server.go" > "$WORK/go-build.log" 2>&1 ||
        { P_FAIL="go build failed: $(head -n 2 "$WORK/go-build.log" | tr '\n' ' ')"; return 1; }
    start_program go "$WORK/go-server" || return 1
    GO_PORT=$(ready_field port)
    GO_LOAD=$WORK/go-load
    write_go_loader
    "$PYTHON" "$WORK/load.py" "$GO_PORT" "$GO_LOAD" > "$WORK/go-load.log" 2>&1 < /dev/null &
    STARTED_PIDS+=("$!")
    P_HELPERS+=("$!")
    GO_LOADER=$!
    local n
    for ((n = 0; n < SERVE_TIMEOUT * 10; n++)); do
        [ "$(cut -d' ' -f1 "$GO_LOAD" 2>/dev/null || echo 0)" -gt 0 ] && return 0
        sleep 0.1
    done
    P_FAIL="the load generator got no answer: $(cat "$GO_LOAD" "$WORK/go-load.log" 2>/dev/null | tr '\n' ' ')"
    return 1
}
serves_go() {
    local served failed error n body
    read -r served failed error < "$GO_LOAD"
    [ "$failed" = 0 ] || { echo "$failed requests of the load failed (last: $error)"; return 1; }
    for ((n = 0; n < SERVE_TIMEOUT * 10; n++)); do
        [ "$(cut -d' ' -f1 "$GO_LOAD")" -gt "$served" ] && break
        sleep 0.1
    done
    [ "$n" -lt $((SERVE_TIMEOUT * 10)) ] || { echo "the load got no answer for ${SERVE_TIMEOUT}s"; return 1; }
    body=$(curl -sf --max-time "$SERVE_TIMEOUT" "http://127.0.0.1:$GO_PORT/work?n=100") ||
        { echo "GET /work?n=100 failed (curl exit $?)"; return 1; }
    [ -n "$body" ] || { echo "GET /work?n=100 answered nothing"; return 1; }
}
finish_go() { # the load's totals, for the notes
    kill -TERM "$GO_LOADER" 2>/dev/null
    wait "$GO_LOADER" 2>/dev/null
    local served failed error
    read -r served failed error < "$GO_LOAD"
    printf 'load: %s requests served, %s failed%s' "$served" "$failed" "${error:+ (last: $error)}"
}

prepare_jvm() {
    command -v javac > /dev/null && command -v java > /dev/null ||
        { P_FAIL="javac or java not found (openjdk-17-jdk-headless)"; return 1; }
    javac -d "$WORK/classes" "$TESTDATA/java/Load.java" > "$WORK/javac.log" 2>&1 ||
        { P_FAIL="javac failed: $(head -n 2 "$WORK/javac.log" | tr '\n' ' ')"; return 1; }
    JVM_COUNTS=$WORK/jvm.counts
    # shellcheck disable=SC2086 # JVM_OPTS is a list of options
    start_program jvm java $JVM_OPTS -cp "$WORK/classes" Load "$JVM_COUNTS"
}
jvm_npe() { sed -n 's/.*npe=\([0-9]*\).*/\1/p' "$JVM_COUNTS" 2>/dev/null | grep . || echo 0; }
serves_jvm() {
    local before n
    before=$(jvm_npe)
    for ((n = 0; n < SERVE_TIMEOUT * 10; n++)); do
        [ "$(jvm_npe)" -gt "$before" ] && return 0
        sleep 0.1
    done
    echo "its workers stopped catching NullPointerExceptions (stayed at $before)"; return 1
}

# ---------------------------------------------------------------- clients
# Sets CLIENT_RESULT to "ok N" when the client lists as many threads as
# expected, else "FAIL N/EXPECTED" with what went wrong. (Not run in $(...):
# the trap must see the job it runs.)
client_check() { # CLIENT CORE EXE EXPECTED...(one or two acceptable counts)
    local client=$1 core=$2 exe=$3; shift 3
    local cmd pattern n want
    case "$client" in
        gdb) cmd=$(printf 'exec gdb -nx -batch -ex %q %q %q' 'info threads' "$exe" "$core")
             pattern='^[* ] *[0-9]+ +(Thread 0x[0-9a-f]+ \(LWP [0-9]+\)|LWP [0-9]+|process [0-9]+)' ;;
        lldb) cmd=$(printf 'exec lldb --batch -c %q %q -o %q' "$core" "$exe" 'thread list')
              pattern='thread #[0-9]+: tid = [0-9]+' ;;
        eu-stack) cmd=$(printf 'exec eu-stack --core %q -e %q' "$core" "$exe")
                  pattern='^TID [0-9]+:' ;;
    esac
    timed "$cmd"
    n=$(grep -c -E "$pattern" "$WORK/last.log")
    for want in "$@"; do
        if [ "$n" = "$want" ]; then
            # eu-stack exits 1 when a frame cannot be unwound (JIT code);
            # the threads are still listed, so that is no failure here.
            CLIENT_RESULT="ok $n"
            [ "$RC" = 0 ] || [ "$client" = eu-stack ] || CLIENT_RESULT+=" ($(last_error))"
            return 0
        fi
    done
    CLIENT_RESULT="FAIL $n/$1"
    [ "$RC" = 0 ] || CLIENT_RESULT+=" ($(last_error))"
}

# ---------------------------------------------------------------- dumps
json_field() { # FILE EXPRESSION-on-m
    "${PYTHON:-python3}" -c 'import json, sys; m = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2" 2>/dev/null
}

dump_one() { # PROGRAM PID EXE TOOL
    local program=$1 pid=$2 exe=$3 tool=$4
    local prefix=$WORK/core-$program-$tool cmd file mode pause status note= before after nb na
    local gdb=- lldb=- eus=- serves=- logical= disk= summary
    file=$prefix.$pid
    rm -f "$file" "$file.json"
    case "$tool" in
        gcore) cmd=$(printf 'exec gcore -o %q %q' "$prefix" "$pid"); mode=stop ;;
        coresnap) cmd=$(printf 'exec %q -o %q %q' "$CORESNAP" "$prefix" "$pid"); mode=stop ;;
        coresnap-cow) cmd=$(printf 'exec %q --mode cow -o %q %q' "$CORESNAP" "$prefix" "$pid"); mode=cow ;;
    esac
    before=$(task_ids "$pid")
    timed "$cmd"
    after=$(task_ids "$pid")
    local wall=$WALL rc=$RC
    summary=$(grep -m1 'target paused' "$WORK/last.log")
    note=$(state_note "$pid")
    nb=$(count_words "$before"); na=$(count_words "$after")
    [ "$before" = "$after" ] || note+="threads changed during the dump ($nb before, $na after); "
    if [ "$rc" != 0 ] || [ ! -f "$file" ]; then
        status=FAIL; note+=$(last_error)
    else
        status=ok
        logical=$(stat -c %s "$file")
        disk=$(du -B1 "$file" | cut -f1)
        if [ "$tool" = gcore ]; then
            pause=$(awk -v w="$wall" 'BEGIN { printf "%.1f", w * 1000 }')
        else
            pause=$(json_field "$file.json" 'm["capture"]["pause_us"] / 1000')
            [ -n "$pause" ] && pause=$(printf '%.1f' "$pause")
            [ -n "$pause" ] || pause=$(sed -n 's/.*target paused \([0-9.]*\) ms.*/\1/p' <<< "$summary")
            mode=$(json_field "$file.json" 'm["capture"]["mode"]' || echo "$mode")
            local fallback
            fallback=$(json_field "$file.json" 'm["capture"].get("cow_fallback") or ""')
            [ -n "$fallback" ] && note+="cow fell back to stop: $fallback; "
        fi
        if serves_out=$("serves_$program" 2>&1); then serves=yes; else serves=NO; note+="$serves_out; "; fi
        client_check gdb "$file" "$exe" "$nb" "$na"; gdb=$CLIENT_RESULT
        client_check lldb "$file" "$exe" "$nb" "$na"; lldb=$CLIENT_RESULT
        client_check eu-stack "$file" "$exe" "$nb" "$na"; eus=$CLIENT_RESULT
    fi
    rm -f "$file" "$file.json"
    row "$program" "$nb" "$tool" "$mode" "$status" "$wall" "${pause:-}" "$logical" "$disk" \
        "$gdb" "$lldb" "$eus" "$serves" "${note%; }"
    log "$program/$tool: $status wall ${wall}s pause ${pause:-?} ms size ${logical:-?} disk ${disk:-?} threads $nb; gdb $gdb; lldb $lldb; eu-stack $eus; serves $serves ${note%; }"
}

# ---------------------------------------------------------------- machine
versions() {
    echo "| python3 | $("${PYTHON:-python3}" --version 2>&1) ($PYTHON) |"
    echo "| node | $(node --version 2>&1) |"
    echo "| redis-server | $(redis-server --version 2>&1 | cut -d' ' -f1-3) |"
    echo "| go | $(go version 2>&1) |"
    echo "| java | $(java -version 2>&1 | head -1) |"
    echo "| gdb | $(gdb --version 2>/dev/null | head -1) |"
    echo "| lldb | $(lldb --version 2>/dev/null | head -1) |"
    echo "| eu-stack | $(eu-stack --version 2>/dev/null | head -1) |"
}
MACHINE=$WORK/machine.md
{
    echo "| | |"
    echo "|---|---|"
    echo "| CPU | $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo) ($(nproc) online CPUs$(grep -q hypervisor /proc/cpuinfo && echo ', virtual machine')) |"
    echo "| Memory | $(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo) |"
    echo "| Kernel | $(uname -sr) |"
    echo "| Output filesystem | $(findmnt -n -T "$WORK" -o SOURCE,FSTYPE 2>/dev/null | tr -s ' ') (scratch dir under $WORKPARENT) |"
    echo "| coresnap | $("$CORESNAP" --version 2>/dev/null | head -1) at $CORESNAP |"
    echo "| Commit | $(cd "$REPO" && git rev-parse HEAD 2>/dev/null || echo 'no commit')$(cd "$REPO" && [ -n "$(git status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null)" ] && echo ' with uncommitted changes in src/ or Cargo.*') |"
    echo "| Command | \`bench/real_programs.sh $ARGS\` |"
    echo "| Started | $(date -u '+%Y-%m-%d %H:%M UTC'), load average $(cut -d' ' -f1-3 /proc/loadavg) |"
    versions
    echo "| Options | redis: $REDIS_KEYS keys; JVM: $JVM_OPTS; node: --v8-pool-size=4; per-dump and per-client timeout ${TIMEOUT}s |"
} > "$MACHINE"

# ---------------------------------------------------------------- main
IFS=, read -r -a PROGRAM_LIST <<< "$PROGRAMS"
TOOLS=(coresnap coresnap-cow gcore)
declare -A PROGRAM_NOTE
for program in "${PROGRAM_LIST[@]}"; do
    log "=== $program"
    P_PID= P_LINE= P_FAIL= P_HELPERS=()
    if ! "prepare_$program" || ! settle "$P_PID"; then
        [ -n "$P_FAIL" ] || P_FAIL="its threads kept changing for 30 s"
        row "$program" "" "-" "-" SKIP "" "" "" "" "" "" "" "" "$P_FAIL"
        log "SKIP $program: $P_FAIL"
        stop_started "${P_HELPERS[@]}" ${P_PID:+"$P_PID"}
        continue
    fi
    pid=$P_PID
    exe=$(readlink "/proc/$pid/exe")
    log "$P_LINE ($exe, $(count_words "$(task_ids "$pid")") threads)"
    if ! why=$("serves_$program" 2>&1); then
        row "$program" "" "-" "-" SKIP "" "" "" "" "" "" "" "" "does not serve before any dump: $why"
        stop_started "${P_HELPERS[@]}" "$pid"
        continue
    fi
    for tool in "${TOOLS[@]}"; do
        dump_one "$program" "$pid" "$exe" "$tool"
    done
    [ "$program" = go ] && PROGRAM_NOTE[$program]=$(finish_go)
    stop_started "${P_HELPERS[@]}" "$pid"
done

# ---------------------------------------------------------------- report
echo "| Finished | $(date -u '+%Y-%m-%d %H:%M UTC'), load average $(cut -d' ' -f1-3 /proc/loadavg) |" >> "$MACHINE"
{
    echo "# Real programs: coresnap stop and cow mode against gcore, $(date -u '+%Y-%m-%d %H:%M')"
    echo
    echo "Produced by \`bench/real_programs.sh\` in one run (issue #14's closing note). Each program is"
    echo "started as \`tests/real_programs.rs\` starts it, dumped by coresnap with its default options"
    echo "(\`-o PREFIX PID\`: stop mode, manifest and hashes on), by \`coresnap --mode cow\`, and by"
    echo "\`gcore -o PREFIX PID\`, one after another in that order, and each core is loaded in gdb, lldb"
    echo "and eu-stack. *Threads*: \`/proc/PID/task\` right before the dump. *Pause*: coresnap's"
    echo "\`capture.pause_us\` from its manifest (how long the target was held); for gcore its wall"
    echo "time, since it holds the target from attach to detach. *Logical* is the file size,"
    echo "*on disk* \`du -B1\` (holes not counted), MiB. A client column reads \`ok N\` when that client"
    echo "lists as many threads as the program had at the dump (\`gdb -nx -batch -ex 'info threads'\`,"
    echo "\`lldb --batch -c CORE EXE -o 'thread list'\`, \`eu-stack --core CORE -e EXE\`). *Serves*: after"
    echo "the dump the program runs untraced and still does its work (python: the worker thread's"
    echo "progress counter moves; node: GET / answers; redis: PING, and GET of the last key loaded;"
    echo "go: the load's requests keep being answered, none failed, GET /work answers; JVM: its"
    echo "workers keep catching NullPointerExceptions). One run, no rounds: other work was running"
    echo "on the machine (see the load averages)."
    echo
    echo "## Machine"
    echo
    cat "$MACHINE"
    echo
    echo "## Dumps"
    echo
    echo "| program | threads | tool | mode | wall s | pause ms | logical MiB | on disk MiB | gdb threads | lldb threads | eu-stack threads | serves after | note |"
    echo "|---|---:|---|---|---:|---:|---:|---:|---|---|---|---|---|"
    tail -n +2 "$RAW" | while IFS=$'\t' read -r program threads tool mode status wall pause logical disk gdb lldb eus serves note; do
        mib() { [ -n "$1" ] && awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
        [ "$status" = ok ] || note="$status${note:+: $note}"
        printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' \
            "$program" "$threads" "$tool" "$mode" "$wall" "$pause" "$(mib "$logical")" "$(mib "$disk")" \
            "$gdb" "$lldb" "$eus" "$serves" "$(sed 's/|/\\|/g' <<< "$note")"
    done
    for program in "${!PROGRAM_NOTE[@]}"; do
        echo
        echo "$program, $(sed 's/|/\\|/g' <<< "${PROGRAM_NOTE[$program]}")."
    done
} > "$OUT"
cat "$OUT"
log "report: $OUT (rows: $RAW)"
