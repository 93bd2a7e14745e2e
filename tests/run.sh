#!/usr/bin/env bash
# The test command: installs what the tests use, runs every test and every
# fuzz target, and says what did not run.
#
#   tests/run.sh [CARGO TEST ARGS...]     (as root, or with CAP_SYS_PTRACE and
#                                          CORESNAP_ALLOW_SKIP=1, see below)
#
# Arguments go to `cargo test` (e.g. `tests/run.sh --test dump_gdb`).
# Each check a test could not run is one line (test, kind, reason) in the
# skip file, printed at the end:
#   environment     the machine lacks something it could have (a capability,
#                   a tool, a writable sysctl, cgroup2): the test FAILED,
#                   unless CORESNAP_ALLOW_SKIP=1 made it a skip;
#   not-applicable  the CPU or kernel lacks a feature (no AVX-512, ...).
# Exits non-zero if a test failed, if any environment skip happened (even
# allowed ones: a green run means everything that could run did), or if
# fuzzing did not run. CORESNAP_FUZZ_SECONDS (default 30) is the time per
# fuzz target.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ]; then
    # Tool -> Debian package; only missing ones are installed.
    declare -A package=(
        [gdb]=gdb [gcore]=gdb [cc]=gcc [eu-stack]=elfutils [lldb]=lldb
        [zstd]=zstd [strace]=strace [setpriv]=util-linux [unshare]=util-linux
        [mount]=mount [python3]=python3 [ssh-keygen]=openssh-client
        # Real programs as targets (tests/real_programs.rs).
        [go]=golang-go [javac]=openjdk-17-jdk-headless [java]=openjdk-17-jdk-headless
        [node]=nodejs [redis-server]=redis-server
    )
    missing=()
    for tool in "${!package[@]}"; do
        command -v "$tool" >/dev/null || missing+=("${package[$tool]}")
    done
    [ -f /usr/lib/x86_64-linux-gnu/libc.a ] || missing+=(libc6-dev)
    if [ ${#missing[@]} -gt 0 ]; then
        # shellcheck disable=SC2207
        missing=($(printf '%s\n' "${missing[@]}" | sort -u))
        echo "tests/run.sh: installing ${missing[*]}"
        apt-get update -qq || exit 1
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null || exit 1
    fi
else
    echo "tests/run.sh: not root, so nothing is installed; missing tools fail their tests"
fi

# Hook for the kernel matrix (tests/vm/): prepares the VMs it boots (as
# root; without it the matrix's tests say what is missing).
if [ -f tests/vm/setup.sh ] && [ "$(id -u)" = 0 ]; then
    bash tests/vm/setup.sh || { echo "tests/run.sh: tests/vm/setup.sh failed" >&2; exit 1; }
fi

target_dir=${CARGO_TARGET_DIR:-target}
export CORESNAP_SKIP_FILE=${CORESNAP_SKIP_FILE:-$PWD/$target_dir/test-skips.txt}
mkdir -p "$(dirname "$CORESNAP_SKIP_FILE")"
: > "$CORESNAP_SKIP_FILE"

# --no-fail-fast: one failing test binary must not hide what the others do.
cargo_log=$(mktemp)
trap 'rm -f "$cargo_log"' EXIT
cargo test --no-fail-fast "$@" 2>&1 | tee "$cargo_log"
tests_status=${PIPESTATUS[0]}

# The core and note parsers (and every other target in fuzz/fuzz_targets)
# are fuzzed on every run; fuzz/run.sh installs nightly and cargo-fuzz when
# they are missing and fails when it cannot.
fuzz_seconds=${CORESNAP_FUZZ_SECONDS:-30}
fuzz_targets=$(find fuzz/fuzz_targets -name '*.rs' | wc -l)
timeout $((fuzz_targets * (fuzz_seconds + 300) + 900)) bash fuzz/run.sh "$fuzz_seconds"
fuzz_status=$?

echo
echo "===== checks that did not run ($CORESNAP_SKIP_FILE) ====="
environment=$(awk -F'\t' '$2 == "environment"' "$CORESNAP_SKIP_FILE" | wc -l)
not_applicable=$(awk -F'\t' '$2 == "not-applicable"' "$CORESNAP_SKIP_FILE" | wc -l)
echo "environment (missing on this machine): $environment"
echo "not applicable (CPU or kernel lacks the feature): $not_applicable"
sort "$CORESNAP_SKIP_FILE" | sed 's/^/  /'

status=0
if [ "$tests_status" -ne 0 ]; then
    echo "FAILED: cargo test exited with $tests_status"
    status=1
fi
if [ "$environment" -gt 0 ]; then
    echo "FAILED: $environment check(s) did not run because the environment lacks something (listed above)"
    status=1
fi
if [ "$fuzz_status" -ne 0 ]; then
    echo "FAILED: fuzzing did not run to the end (fuzz/run.sh exited with $fuzz_status)"
    status=1
fi
[ "$status" -eq 0 ] && echo "OK: every test passed, fuzzing ran, nothing was skipped for want of the environment"
# One closing line with the totals of every 'test result:' line cargo printed.
awk '/^test result:/ {
        for (i = 1; i <= NF; i++) {
            if ($(i + 1) ~ /^passed/) p += $i
            if ($(i + 1) ~ /^failed/) f += $i
        }
     }
     END { printf "summary: %d passed, %d failed, %d skipped\n", p, f, s }' \
    s="$((environment + not_applicable))" "$cargo_log"
exit "$status"
