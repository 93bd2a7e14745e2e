#!/usr/bin/env bash
# Runs every fuzz target in fuzz/fuzz_targets/ for a bounded time each
# (default 60 s), seeded with the real cores in testdata/cores (the notes
# target with their PT_NOTE contents) and with the files in seeds/TARGET.
# Needs a nightly toolchain and cargo-fuzz: both are installed here if
# missing, and this fails (non-zero) if they cannot be, or if any target
# fails; it never skips.
# Usage: fuzz/run.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-60}"

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: installing the nightly toolchain (cargo-fuzz needs it)"
    rustup toolchain install nightly --profile minimal
fi
if ! command -v cargo-fuzz >/dev/null; then
    echo "fuzz/run.sh: installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi

shopt -s nullglob
targets=()
for source in fuzz_targets/*.rs; do
    targets+=("$(basename "$source" .rs)")
done
if [ ${#targets[@]} -eq 0 ]; then
    echo "fuzz/run.sh: no fuzz targets in fuzz/fuzz_targets" >&2
    exit 1
fi
cores=(../testdata/cores/*.core)
if [ ${#cores[@]} -eq 0 ]; then
    echo "fuzz/run.sh: no seed cores in testdata/cores" >&2
    exit 1
fi

mkdir -p artifacts corpus/notes
# The notes target starts from the PT_NOTE contents of the cores.
python3 - "${cores[@]}" <<'PY'
import os, struct, sys
for path in sys.argv[1:]:
    b = open(path, "rb").read()
    phoff, = struct.unpack_from("<Q", b, 32)
    phnum, = struct.unpack_from("<H", b, 56)
    for i in range(phnum):
        t, = struct.unpack_from("<I", b, phoff + 56 * i)
        if t == 4:
            off, = struct.unpack_from("<Q", b, phoff + 56 * i + 8)
            size, = struct.unpack_from("<Q", b, phoff + 56 * i + 32)
            name = os.path.basename(path).replace(".core", ".notes")
            open(os.path.join("corpus/notes", name), "wb").write(b[off:off + size])
PY

for target in "${targets[@]}"; do
    # Every other target reads whole cores.
    if [ "$target" != notes ]; then
        mkdir -p "corpus/$target"
        cp "${cores[@]}" "corpus/$target/"
    fi
    # Targets that read other files (a manifest, a .zst) start from real
    # ones too.
    if [ -d "seeds/$target" ]; then
        cp "seeds/$target"/* "corpus/$target/"
    fi
    echo "fuzz/run.sh: fuzzing $target for ${secs} s"
    cargo +nightly fuzz run "$target" "corpus/$target" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -max_len=1048576 -print_final_stats=1
done
echo "fuzz/run.sh: fuzzed ${targets[*]} for ${secs} s each, no failures"
