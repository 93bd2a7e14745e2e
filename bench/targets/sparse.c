/*
 * Target (a) "sparse": one big private anonymous reservation of which only
 * one page per stride is populated, plus a block of dense (non-zero) data.
 *
 *   sparse REPORT_FILE [RESERVE=4G] [STRIDE=4M] [DENSE=64M]
 *
 * With RESERVE=1T STRIDE=1G DENSE=0 it is the "reservation" target: address
 * space reserved up front and barely used, as JVM heaps, Go arenas and
 * sanitizer shadow memory are.
 */
#define _GNU_SOURCE
#include "heartbeat.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s REPORT_FILE [RESERVE] [STRIDE] [DENSE]\n", argv[0]);
        return 2;
    }
    size_t reserve = parse_size(argc > 2 ? argv[2] : "4G");
    size_t stride = parse_size(argc > 3 ? argv[3] : "4M");
    size_t dense = parse_size(argc > 4 ? argv[4] : "64M");
    size_t page = (size_t)sysconf(_SC_PAGESIZE);

    hb_start(argv[1]);

    unsigned char *r = mmap(NULL, reserve, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (r == MAP_FAILED) { perror("mmap reserve"); return 1; }
    /* Keep this region out of transparent huge pages, so touching one byte
     * populates exactly one 4 KiB page. */
    madvise(r, reserve, MADV_NOHUGEPAGE);
    size_t touched = 0;
    for (size_t off = 0; off < reserve; off += stride) {
        unsigned char *pg = r + off;
        for (size_t i = 0; i < page; i += 64) pg[i] = (unsigned char)(0x5A ^ (off >> 22) ^ i);
        touched += page;
    }

    if (dense > 0) {
        unsigned char *d = mmap(NULL, dense, PROT_READ | PROT_WRITE,
                                MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (d == MAP_FAILED) { perror("mmap dense"); return 1; }
        fill_pattern(d, dense);
        touched += dense;
    }

    hb_ready("sparse", touched);
    hb_idle_forever();
}
