/*
 * A huge, mostly untouched reservation, as JVM heaps, Go arenas and
 * sanitizer shadow memory have: one private anonymous mapping of GIB GiB
 * (MAP_NORESERVE, so the kernel commits nothing), of which one page per GiB
 * is written.
 *
 *   reservation [GIB=1024]
 *
 * The first 8 bytes of the page at GiB i hold 0x5245530000000000 | i
 * ("RES" in the top bytes); every other byte of the reservation is zero
 * and, except in the touched pages, was never populated.
 * Ready line: ready pid= base= len= step= touched= marker=
 * (marker: the value at GiB 0, the others add their index).
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#define MARKER 0x5245530000000000ull

int main(int argc, char **argv)
{
    const size_t gib = (size_t)1 << 30;
    size_t count = argc > 1 ? strtoul(argv[1], NULL, 10) : 1024;
    size_t len = count * gib;

    uint8_t *base = mmap(NULL, len, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED) {
        perror("mmap reservation");
        return 1;
    }
    /* No transparent huge pages: one write must populate one 4 KiB page,
     * not 2 MiB (which would make the process 2 GiB resident). */
    if (madvise(base, len, MADV_NOHUGEPAGE) != 0) {
        perror("madvise MADV_NOHUGEPAGE");
        return 1;
    }
    for (size_t i = 0; i < count; i++)
        *(volatile uint64_t *)(base + i * gib) = MARKER | i;

    printf("ready pid=%d base=%p len=%zu step=%zu touched=%zu marker=0x%llx\n",
           (int)getpid(), (void *)base, len, gib, count, MARKER);
    fflush(stdout);
    for (;;)
        pause();
}
