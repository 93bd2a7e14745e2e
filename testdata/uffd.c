/*
 * A process that registers memory with userfaultfd and never serves the
 * faults: any read of a page it has not filled waits forever.
 *
 *   uffd
 *
 * - `private`: 4 private anonymous pages, the first written (so a dump
 *   would want it), all registered for missing faults;
 * - `shared`: 4 pages of shared anonymous memory (shmem), none written,
 *   registered for missing faults: reading any of them blocks;
 * - `marker`: a page of ordinary heap memory holding the text
 *   "coresnap-uffd-marker", which a dump must still contain.
 *
 * The userfaultfd is kept open and never read. The main thread sleeps in
 * pause().
 * Ready line: ready pid= private= shared= marker= len=
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define PAGES 4

static void register_missing(int uffd, void *addr, size_t len)
{
    struct uffdio_register reg = {
        .range = {.start = (uintptr_t)addr, .len = len},
        .mode = UFFDIO_REGISTER_MODE_MISSING,
    };
    if (ioctl(uffd, UFFDIO_REGISTER, &reg) != 0) {
        perror("UFFDIO_REGISTER");
        exit(1);
    }
}

int main(void)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t len = PAGES * page;
    int uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC);
    if (uffd < 0) {
        perror("userfaultfd (needs root or vm.unprivileged_userfaultfd=1)");
        return 1;
    }
    struct uffdio_api api = {.api = UFFD_API};
    if (ioctl(uffd, UFFDIO_API, &api) != 0) {
        perror("UFFDIO_API");
        return 1;
    }
    uint8_t *private = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    uint8_t *shared = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (private == MAP_FAILED || shared == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    memset(private, 0x5a, page);
    register_missing(uffd, private, len);
    register_missing(uffd, shared, len);

    char *marker = malloc(page);
    if (!marker) {
        return 1;
    }
    memset(marker, 0, page);
    strcpy(marker, "coresnap-uffd-marker");

    printf("ready pid=%d private=%p shared=%p marker=%p len=%zu\n", getpid(), (void *)private,
           (void *)shared, (void *)marker, len);
    fflush(stdout);
    for (;;) {
        pause();
    }
}
