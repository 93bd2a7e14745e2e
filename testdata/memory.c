/*
 * memory.c: known 64-bit patterns in many kinds of memory.
 *
 * Usage: memory DIR   (DIR: where to create the file that is mapped and then
 *                      unlinked)
 *
 * Each region is filled with 64-bit words: word i = (TAG << 48) | i, where
 *   heap     0x4845  malloc(HEAP_LEN), more than one page
 *   stack    0x5354  array in main_wait's frame
 *   global   0x474c  global array
 *   shanon   0x5348  MAP_SHARED|MAP_ANONYMOUS
 *   memfd    0x4d46  memfd_create + MAP_SHARED
 *   delfile  0x444c  file in DIR, MAP_SHARED, then unlink()ed
 *   dontdump 0x444e  MAP_PRIVATE|MAP_ANONYMOUS + madvise(MADV_DONTDUMP)
 *
 * Prints ONE line:
 *   ready pid=<pid> heap=0x.. heap_len=<n> stack=0x.. stack_len=<n> ...
 * (address in hex, length in bytes, decimal) and blocks in read() on a pipe.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))
#define PAGE 4096

#define HEAP_LEN (3 * PAGE + 512)
#define STACK_LEN 512
#define GLOBAL_LEN (2 * PAGE)
#define SHANON_LEN (2 * PAGE)
#define MEMFD_LEN (2 * PAGE)
#define DELFILE_LEN (2 * PAGE)
#define DONTDUMP_LEN (2 * PAGE)

static uint64_t global_arr[GLOBAL_LEN / 8];
static volatile int sink;

static void fill(void *p, size_t len, uint64_t tag)
{
    uint64_t *w = p;
    for (size_t i = 0; i < len / 8; i++)
        w[i] = (tag << 48) | i;
}

static void *map_or_die(size_t len, int prot, int flags, int fd, const char *what)
{
    void *p = mmap(NULL, len, prot, flags, fd, 0);
    if (p == MAP_FAILED) {
        perror(what);
        exit(1);
    }
    return p;
}

NOINLINE void main_wait(char *line)
{
    uint64_t stack_arr[STACK_LEN / 8];
    int never[2];
    char c;

    fill(stack_arr, sizeof stack_arr, 0x5354);
    if (pipe(never) != 0) {
        perror("pipe");
        exit(1);
    }
    printf("%s stack=%p stack_len=%d\n", line, (void *)stack_arr, STACK_LEN);
    fflush(stdout);
    for (;;) {
        if (read(never[0], &c, 1) < 0)
            sink++;
        sink += (int)stack_arr[sink & 7];
    }
}

int main(int argc, char **argv)
{
    static char line[1024];
    if (argc < 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }

    void *heap = malloc(HEAP_LEN);
    if (!heap) {
        perror("malloc");
        return 1;
    }
    fill(heap, HEAP_LEN, 0x4845);

    fill(global_arr, GLOBAL_LEN, 0x474c);

    void *shanon = map_or_die(SHANON_LEN, PROT_READ | PROT_WRITE,
                              MAP_SHARED | MAP_ANONYMOUS, -1, "mmap shared anon");
    fill(shanon, SHANON_LEN, 0x5348);

    int mfd = memfd_create("coresnap-test", 0);
    if (mfd < 0 || ftruncate(mfd, MEMFD_LEN) != 0) {
        perror("memfd");
        return 1;
    }
    void *memfd = map_or_die(MEMFD_LEN, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, "mmap memfd");
    fill(memfd, MEMFD_LEN, 0x4d46);

    char path[4096];
    snprintf(path, sizeof path, "%s/deleted-mapping.bin", argv[1]);
    int dfd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (dfd < 0 || ftruncate(dfd, DELFILE_LEN) != 0) {
        perror(path);
        return 1;
    }
    void *delfile = map_or_die(DELFILE_LEN, PROT_READ | PROT_WRITE, MAP_SHARED, dfd, "mmap file");
    fill(delfile, DELFILE_LEN, 0x444c);
    if (unlink(path) != 0) {
        perror("unlink");
        return 1;
    }
    close(dfd);

    void *dontdump = map_or_die(DONTDUMP_LEN, PROT_READ | PROT_WRITE,
                                MAP_PRIVATE | MAP_ANONYMOUS, -1, "mmap dontdump");
    fill(dontdump, DONTDUMP_LEN, 0x444e);
    if (madvise(dontdump, DONTDUMP_LEN, MADV_DONTDUMP) != 0) {
        perror("madvise");
        return 1;
    }

    snprintf(line, sizeof line,
             "ready pid=%d heap=%p heap_len=%d global=%p global_len=%d "
             "shanon=%p shanon_len=%d memfd=%p memfd_len=%d "
             "delfile=%p delfile_len=%d dontdump=%p dontdump_len=%d",
             (int)getpid(), heap, HEAP_LEN, (void *)global_arr, GLOBAL_LEN,
             shanon, SHANON_LEN, memfd, MEMFD_LEN, delfile, DELFILE_LEN,
             dontdump, DONTDUMP_LEN);
    main_wait(line);
    sink++;
    return 0;
}
