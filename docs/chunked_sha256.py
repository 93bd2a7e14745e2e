#!/usr/bin/env python3
"""Recompute the chunked SHA-256 root of a plain (uncompressed) core, as
coresnap's manifest records it in core.sha256_chunked (docs/MANIFEST.md,
"Hashes"). Python's standard library only.

    python3 chunked_sha256.py CORE [CHUNK_SIZE [LEAF_SIZE]]

prints "ROOT  CORE". CHUNK_SIZE and LEAF_SIZE are the manifest's
core.chunk_size and core.leaf_size (defaults 262144 and 16384). For a .zst,
decompress it first (coresnap unpack, or zstd -d).

Chunks that lie in a hole of the file (SEEK_DATA) get the hash of a chunk
of zeros without being read. A chunk that holds data is read; each of its
leaves that is all zeros gets the known hash of a leaf of zeros. Stored
zeros and holes give the same result, so it does not depend on how the
file system stores the file.
"""
import errno
import hashlib
import os
import sys

TAG = b"coresnap-chunked-v2"


def sha256(data):
    return hashlib.sha256(data).digest()


def chunked_sha256(path, chunk_size=256 << 10, leaf_size=16 << 10):
    zero_bytes = bytes(leaf_size)
    zero_leaf = sha256(zero_bytes)
    zero_chunk = sha256(zero_leaf * (chunk_size // leaf_size))
    le64 = lambda n: n.to_bytes(8, "little")
    root = hashlib.sha256(TAG + le64(leaf_size) + le64(chunk_size))
    with open(path, "rb") as f:
        fd = f.fileno()
        length = os.fstat(fd).st_size
        start = 0
        while start < length:
            try:
                data = os.lseek(fd, start, os.SEEK_DATA)
            except OSError as e:
                if e.errno != errno.ENXIO:
                    raise
                data = length  # nothing but a hole up to the end
            # Whole chunks before the next data are zeros. A short last
            # chunk is always read: its hash depends on its own length.
            holes = (min(data, length) - start) // chunk_size
            if start + holes * chunk_size == length:
                holes -= 1  # keep the last chunk, whole or not, to read
            while holes > 0:
                batch = min(holes, 4096)
                root.update(zero_chunk * batch)
                holes -= batch
                start += batch * chunk_size
            chunk = os.pread(fd, min(chunk_size, length - start), start)
            leaves = b"".join(
                zero_leaf if leaf == zero_bytes else sha256(leaf)
                for leaf in (chunk[i:i + leaf_size] for i in range(0, len(chunk), leaf_size))
            )
            root.update(sha256(leaves))
            start += len(chunk)
    root.update(le64(length))
    return root.hexdigest()


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3, 4):
        sys.exit("usage: chunked_sha256.py CORE [CHUNK_SIZE [LEAF_SIZE]]")
    sizes = [int(a) for a in sys.argv[2:]]
    print(f"{chunked_sha256(sys.argv[1], *sizes)}  {sys.argv[1]}")
