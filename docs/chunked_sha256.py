#!/usr/bin/env python3
"""Recompute the chunked SHA-256 root of a plain (uncompressed) core, as
coresnap's manifest records it in core.sha256_chunked (docs/MANIFEST.md,
"Hashes"). Python's standard library only.

    python3 chunked_sha256.py CORE [CHUNK_SIZE]

prints "ROOT  CORE". CHUNK_SIZE is the manifest's core.chunk_size (default
262144). For a .zst, decompress it first (coresnap unpack, or zstd -d).

Only the file's data extents are read (SEEK_DATA): a chunk that lies in a
hole gets the hash of a chunk of zeros without being read. A chunk that is
stored but all zeros is read and gives that same hash, so the result does
not depend on how the file system stores the file.
"""
import errno
import hashlib
import os
import sys

TAG = b"coresnap-chunked-v1"


def chunked_sha256(path, chunk_size=256 << 10):
    zero_chunk = hashlib.sha256(bytes(chunk_size)).digest()
    root = hashlib.sha256(TAG + chunk_size.to_bytes(8, "little"))
    with open(path, "rb") as f:
        fd = f.fileno()
        length = os.fstat(fd).st_size
        whole_chunks = length // chunk_size
        index = 0
        while index * chunk_size < length:
            start = index * chunk_size
            try:
                data = os.lseek(fd, start, os.SEEK_DATA)
            except OSError as e:
                if e.errno != errno.ENXIO:
                    raise
                data = length  # nothing but a hole up to the end
            # Whole chunks before the next data are zeros. A short last
            # chunk is always read: its hash is that of its own length.
            holes = min(data // chunk_size, whole_chunks) - index
            while holes > 0:
                batch = min(holes, 4096)
                root.update(zero_chunk * batch)
                holes -= batch
                index += batch
            if index * chunk_size >= length:
                break
            chunk = os.pread(fd, chunk_size, index * chunk_size)
            root.update(hashlib.sha256(chunk).digest())
            index += 1
    root.update(length.to_bytes(8, "little"))
    return root.hexdigest()


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: chunked_sha256.py CORE [CHUNK_SIZE]")
    size = int(sys.argv[2]) if len(sys.argv) == 3 else 256 << 10
    print(f"{chunked_sha256(sys.argv[1], size)}  {sys.argv[1]}")
