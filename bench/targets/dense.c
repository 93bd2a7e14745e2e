/*
 * Target (b) "dense": one private anonymous block filled with non-zero
 * pseudo-random data (no zero pages, incompressible).
 *
 *   dense REPORT_FILE [SIZE=2G]
 */
#define _GNU_SOURCE
#include "heartbeat.h"

#include <stdio.h>
#include <sys/mman.h>

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s REPORT_FILE [SIZE]\n", argv[0]);
        return 2;
    }
    size_t size = parse_size(argc > 2 ? argv[2] : "2G");

    hb_start(argv[1]);

    void *d = mmap(NULL, size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (d == MAP_FAILED) { perror("mmap"); return 1; }
    fill_pseudo_random(d, size, 0x1234567887654321ull);

    hb_ready("dense", size);
    hb_idle_forever();
}
