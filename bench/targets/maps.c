/*
 * Target (c) "maps": many small separate mappings.
 *
 * One region of COUNT * PAGES pages is mapped read-write, every third
 * mapping gets its first page written, and then every other mapping is made
 * read-only, so neighbouring mappings differ in protection and the kernel
 * cannot merge them: /proc/PID/maps shows COUNT entries for the region.
 *
 *   maps REPORT_FILE [COUNT=30000] [PAGES=4]
 */
#define _GNU_SOURCE
#include "heartbeat.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s REPORT_FILE [COUNT] [PAGES]\n", argv[0]);
        return 2;
    }
    size_t count = strtoul(argc > 2 ? argv[2] : "30000", NULL, 10);
    size_t pages = strtoul(argc > 3 ? argv[3] : "4", NULL, 10);
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t each = pages * page;

    hb_start(argv[1]);

    unsigned char *base = mmap(NULL, count * each, PROT_READ | PROT_WRITE,
                               MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) { perror("mmap"); return 1; }
    madvise(base, count * each, MADV_NOHUGEPAGE);

    size_t touched = 0;
    for (size_t i = 0; i < count; i += 3) {
        fill_pseudo_random(base + i * each, page, i + 1);
        touched += page;
    }
    for (size_t i = 1; i < count; i += 2) {
        if (mprotect(base + i * each, each, PROT_READ) != 0) {
            perror("mprotect (vm.max_map_count too low?)");
            return 1;
        }
    }

    char what[64];
    snprintf(what, sizeof what, "maps(%zu)", count);
    hb_ready(what, touched);
    hb_idle_forever();
}
