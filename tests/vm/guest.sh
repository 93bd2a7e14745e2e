#!/bin/sh
# The kernel matrix's guest side (busybox sh, run by /init): dumps the
# static test targets with the static coresnap in every way whose result
# depends on the kernel, and leaves, for each check, a directory under OUT
# (the host's 9p share) holding the core, its manifest, the target's ready
# line and a `status` file of key=value facts seen in the guest. The host
# (tests/kernel_matrix.rs) loads the cores in gdb and judges them.
#
#   guest.sh OUT
OUT=$1
DUMP_TIMEOUT=120

# Facts about this kernel.
{
    echo "kernel=$(uname -r)"
    pagemap-scan-probe
    if [ -e /sys/fs/cgroup/cgroup.subtree_control ] && mkdir /sys/fs/cgroup/probe 2>/dev/null; then
        [ -e /sys/fs/cgroup/probe/cgroup.freeze ] && echo cgroup_freezer=yes || echo cgroup_freezer=no
        rmdir /sys/fs/cgroup/probe
    else
        echo cgroup_freezer=no
    fi
    echo "coresnap_sha256=$(sha256sum /bin/coresnap | cut -d' ' -f1)"
    echo "yama_ptrace_scope=$(cat /proc/sys/kernel/yama/ptrace_scope 2>/dev/null || echo absent)"
} >"$OUT/facts"
cat "$OUT/facts"

# wait_for SECONDS COMMAND...: polls COMMAND every 50 ms until it succeeds.
wait_for() {
    limit=$(($1 * 20))
    shift
    while [ "$limit" -gt 0 ]; do
        "$@" && return 0
        sleep 0.05
        limit=$((limit - 1))
    done
    return 1
}

field() { # FILE KEY: the value of "KEY:\tvalue" in a /proc status file
    sed -n "s/^$2:[[:space:]]*//p" "$1" 2>/dev/null
}

# all_sleeping PID [EXCEPT_TID]: every thread but EXCEPT_TID in state S.
all_sleeping() {
    for task in /proc/"$1"/task/*; do
        [ "${task##*/}" = "${2:-}" ] && continue
        case $(field "$task/status" State) in S*) ;; *) return 1 ;; esac
    done
}

# running_untraced PID: no thread stopped, traced or dead, no tracer.
running_untraced() {
    [ -d /proc/"$1"/task ] || return 1
    for task in /proc/"$1"/task/*; do
        case $(field "$task/status" State) in T* | t* | Z* | X*) return 1 ;; esac
        [ "$(field "$task/status" TracerPid)" = 0 ] || return 1
    done
}

all_traced() {
    for task in /proc/"$1"/task/*; do
        [ "$(field "$task/status" TracerPid)" != 0 ] || return 1
    done
}

has_ready() { grep -q '^ready ' "$1" 2>/dev/null; }

# begin NAME PROGRAM: a fresh directory for one check.
begin() {
    CHECK=$1
    DIR=$OUT/$1
    mkdir -p "$DIR"
    echo "exe=$2" >"$DIR/status"
    echo "guest: --- $1 (uptime $(cut -d' ' -f1 /proc/uptime) s)"
}

note() { echo "$1" >>"$DIR/status"; }

# start PROGRAM ARGS...: starts a target in the background; PID and the
# ready line (in $DIR/ready) once it printed one.
start() {
    "$@" >"$DIR/stdout" 2>"$DIR/stderr" &
    PID=$!
    if wait_for 20 has_ready "$DIR/stdout"; then
        grep -m1 '^ready ' "$DIR/stdout" >"$DIR/ready"
        note "pid=$PID"
        return 0
    fi
    note "error=no ready line from $1 within 20 s"
    return 1
}

record_tids() { # PID
    note "tids=$(ls /proc/"$1"/task | sort -n | tr '\n' ' ')"
}

# dump PID ARGS...: coresnap ARGS -o DIR/core PID, its exit status and
# output recorded, then whether the target was left running and untraced.
dump() {
    pid=$1
    shift
    record_tids "$pid"
    timeout $DUMP_TIMEOUT coresnap "$@" -o "$DIR/core" "$pid" >"$DIR/coresnap.out" 2>&1
    note "coresnap_rc=$?"
    note "core=core.$pid"
    if wait_for 10 running_untraced "$pid"; then note "after=running"; else note "after=not-running"; fi
}

finish() { # kills what the check started
    for p in "$@"; do kill -9 "$p" 2>/dev/null; done
    for p in "$@"; do wait "$p" 2>/dev/null; done
}

# ---------------------------------------------------------------- threads
begin threads threads
if start threads; then
    wait_for 10 all_sleeping $PID
    dump $PID
fi
finish $PID

# ---------------------------------------------------------------- registers
begin regs regs
if start regs; then
    spinner=$(sed -n 's/.* spinner=\([0-9]*\).*/\1/p' "$DIR/ready")
    wait_for 10 all_sleeping $PID "$spinner"
    dump $PID
fi
finish $PID

# ---------------------------------------------------------------- memory, plain and copy-on-write
mkdir -p /tmp/memory-files
begin memory memory
if start memory /tmp/memory-files; then
    echo 0x33 >/proc/$PID/coredump_filter
    wait_for 10 all_sleeping $PID
    dump $PID
    MEMORY_PID=$PID
    MEMORY_DIR=$DIR
    begin cow memory
    cp "$MEMORY_DIR/ready" "$DIR/ready"
    note "pid=$MEMORY_PID"
    wait_for 10 all_sleeping $MEMORY_PID
    dump $MEMORY_PID --mode cow --no-fallback
fi
finish $PID

# ---------------------------------------------------------------- sparse
# Default options: the manifest's hashes read back only the ranges the dump
# wrote, so 9p, which has no SEEK_HOLE, costs nothing for the 1 GiB of holes.
begin sparse sparse
if start sparse; then
    wait_for 10 all_sleeping $PID
    dump $PID
    note "rss_kib=$(field /proc/$PID/status VmRSS | cut -d' ' -f1)"
    note "guest_du_kib=$(du -k "$DIR/core.$PID" | cut -f1)"
fi
finish $PID

# ---------------------------------------------------------------- --on-signal
begin on-signal crasher
rm -f /tmp/crasher-commands
mkfifo /tmp/crasher-commands
# Core dumps off, as in many containers: the core comes from coresnap alone.
(ulimit -c 0 && exec crasher) </tmp/crasher-commands >"$DIR/stdout" 2>"$DIR/stderr" &
PID=$!
exec 3>/tmp/crasher-commands
if wait_for 20 has_ready "$DIR/stdout"; then
    grep -m1 '^ready ' "$DIR/stdout" >"$DIR/ready"
    note "pid=$PID"
    record_tids $PID
    timeout $DUMP_TIMEOUT coresnap --on-signal -o "$DIR/core" $PID >"$DIR/coresnap.out" 2>&1 &
    watcher=$!
    if wait_for 20 all_traced $PID; then
        echo segv >&3
        (sleep 60 && kill -9 $PID) 2>/dev/null &
        watchdog=$!
        wait $PID
        note "target_status=$?"
        kill $watchdog 2>/dev/null
        wait $watcher
        note "coresnap_rc=$?"
        note "core=core.$PID"
    else
        note "error=coresnap --on-signal did not attach within 20 s"
        finish $watcher
    fi
else
    note "error=no ready line from crasher within 20 s"
fi
exec 3>&-
finish $PID

# ---------------------------------------------------------------- --no-ptrace, SIGSTOP
begin no-ptrace-sigstop busy
if start busy sleep=2 mem=8; then
    wait_for 10 all_sleeping $PID
    dump $PID --no-ptrace
fi
finish $PID

# ---------------------------------------------------------------- --no-ptrace, cgroup v2 freezer
begin no-ptrace-cgroup busy
CGROUP=/sys/fs/cgroup/coresnap-matrix
if start busy sleep=2 mem=8; then
    if mkdir $CGROUP && echo $PID >$CGROUP/cgroup.procs; then
        wait_for 10 all_sleeping $PID
        dump $PID --no-ptrace
        note "cgroup_events=$(tr '\n' ' ' <$CGROUP/cgroup.events)"
    else
        note "error=cannot put the target alone in $CGROUP"
    fi
fi
finish $PID
rmdir $CGROUP 2>/dev/null

# ---------------------------------------------------------------- container
begin container threads
PID=
# busybox spells --fork as -f.
unshare --pid --mount -f --mount-proc threads >"$DIR/stdout" 2>"$DIR/stderr" &
UNSHARE=$!
if wait_for 20 has_ready "$DIR/stdout"; then
    grep -m1 '^ready ' "$DIR/stdout" >"$DIR/ready"
    PID=$(cat /proc/$UNSHARE/task/$UNSHARE/children | cut -d' ' -f1)
    note "pid=$PID"
    note "nspid=$(field /proc/$PID/status NSpid)"
    wait_for 10 all_sleeping $PID
    dump $PID
else
    note "error=no ready line from the container within 20 s"
fi
# Killing the namespace's first process (the target) ends the namespace.
finish $PID $UNSHARE

# ---------------------------------------------------------------- the kernel's own core
# Not coresnap's: which notes this kernel writes (NT_X86_XSAVE_LAYOUT?).
begin kernel-core crasher
echo "$DIR/core.%p" >/proc/sys/kernel/core_pattern
rm -f /tmp/crasher-commands
mkfifo /tmp/crasher-commands
(ulimit -c unlimited && exec crasher) </tmp/crasher-commands >"$DIR/stdout" 2>"$DIR/stderr" &
PID=$!
exec 3>/tmp/crasher-commands
if wait_for 20 has_ready "$DIR/stdout"; then
    grep -m1 '^ready ' "$DIR/stdout" >"$DIR/ready"
    note "pid=$PID"
    echo segv >&3
    (sleep 60 && kill -9 $PID) 2>/dev/null &
    watchdog=$!
    wait $PID
    note "target_status=$?"
    kill $watchdog 2>/dev/null
    note "core=core.$PID"
fi
exec 3>&-
finish $PID

sync
echo "guest: done"
