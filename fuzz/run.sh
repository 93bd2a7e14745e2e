#!/usr/bin/env bash
# Runs both fuzz targets for a bounded time each (default 60 s), seeded
# with the real cores in testdata/cores. Needs a nightly toolchain and
# cargo-fuzz (installed here if missing). Usage: fuzz/run.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-60}"
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
mkdir -p corpus/core corpus/notes artifacts
cp ../testdata/cores/*.core corpus/core/
# The notes target starts from the PT_NOTE contents of the same cores.
python3 - <<'PY'
import glob, os, struct
for path in glob.glob("../testdata/cores/*.core"):
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
for target in core notes; do
    cargo +nightly fuzz run "$target" "corpus/$target" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -max_len=1048576 -print_final_stats=1
done
