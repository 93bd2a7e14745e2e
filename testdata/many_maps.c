/*
 * A process with many separate mappings: COUNT one-page private anonymous
 * mappings, alternately read-write and read-only so the kernel cannot merge
 * neighbours, each holding 0x4D4D000000000000 | its index in its first 8
 * bytes.
 *
 *   many_maps [COUNT=30000]
 *
 * Ready line: ready pid= count= first= last= (addresses of mapping 0 and COUNT-1)
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    long count = argc > 1 ? atol(argv[1]) : 30000;
    long page = sysconf(_SC_PAGESIZE);
    /* One reservation carved into pages, so the mappings are adjacent and
       only their alternating protections keep them apart. */
    uint8_t *base = mmap(NULL, (size_t)(count * page), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    for (long i = 0; i < count; i++)
        *(uint64_t *)(base + i * page) = 0x4D4D000000000000ull | (uint64_t)i;
    for (long i = 1; i < count; i += 2) {
        if (mprotect(base + i * page, (size_t)page, PROT_READ) != 0) {
            perror("mprotect");
            return 1;
        }
    }
    printf("ready pid=%d count=%ld first=%p last=%p\n", getpid(), count, (void *)base, (void *)(base + (count - 1) * page));
    fflush(stdout);
    for (;;)
        pause();
}
