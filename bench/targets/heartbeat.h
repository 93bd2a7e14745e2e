/* Heartbeat shared by the benchmark targets: see heartbeat.c. */
#ifndef BENCH_HEARTBEAT_H
#define BENCH_HEARTBEAT_H

#include <stddef.h>

/* Start the 1 ms heartbeat thread; it reports to `report_path` (see
 * heartbeat.c for the protocol). Exits the process on failure. */
void hb_start(const char *report_path);

/* Block the calling thread forever (signals are still handled). */
void hb_idle_forever(void);

/* Print the ready line on stdout and flush it. */
void hb_ready(const char *what, size_t bytes_touched);

/* Fill `len` bytes at `p` with non-zero pseudo-random data. */
void fill_pseudo_random(void *p, size_t len, unsigned long long seed);

/* Fill `len` bytes with a compressible, non-zero counting pattern. */
void fill_pattern(void *p, size_t len);

/* Parse a size like "4G", "64M", "512K" or "4096". */
size_t parse_size(const char *s);

#endif
