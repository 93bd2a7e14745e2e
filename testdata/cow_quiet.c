/*
 * cow_quiet.c: a quiet target for the copy-on-write tests, with shared
 * memory of every kind that matters to when it is read.
 *
 * Usage: cow_quiet DIR   (DIR: where to create the two mapped files)
 *
 * Each region is filled with 64-bit words: word i = (TAG << 48) | i, where
 *   heap     0x4845  malloc'd, private
 *   shanon   0x5348  MAP_SHARED|MAP_ANONYMOUS, read-write
 *   rofile   0x524f  DIR/ro.bin opened O_RDONLY, mapped PROT_READ|MAP_SHARED:
 *                    the target can never write it (no VM_MAYWRITE)
 *   rwfile   0x5257  DIR/rw.bin opened O_RDWR, mapped PROT_READ|MAP_SHARED:
 *                    read-only now, but mprotect could make it writable
 *   wipe     0x5746  MAP_PRIVATE|MAP_ANONYMOUS + MADV_WIPEONFORK (a fork
 *                    sees zeros there)
 *
 * A second thread sleeps in a loop; the main thread blocks in read() on a
 * pipe. Neither writes memory once ready, so every smaps counter stays as
 * it is unless something else changes the process.
 *
 * Prints ONE line:
 *   ready pid=<pid> heap=0x.. shanon=0x.. rofile=0x.. rwfile=0x.. wipe=0x..
 *         len=<n>
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define LEN (4 * 4096)

static void fill(void *p, size_t len, uint64_t tag)
{
    uint64_t *w = p;
    for (size_t i = 0; i < len / 8; i++)
        w[i] = (tag << 48) | i;
}

/* Writes DIR/NAME filled with TAG, reopens it with FLAGS and maps it
 * read-only and shared. */
static void *map_file(const char *dir, const char *name, uint64_t tag, int flags)
{
    char path[4096];
    static uint64_t words[LEN / 8];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    fill(words, LEN, tag);
    /* Written back before it is mapped: pages the kernel writes back later
     * would turn from dirty to clean in the counters the test compares. */
    if (fd < 0 || write(fd, words, LEN) != LEN || fsync(fd) != 0 || close(fd) != 0) {
        perror(path);
        exit(1);
    }
    fd = open(path, flags);
    void *p = fd < 0 ? MAP_FAILED : mmap(NULL, LEN, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        perror(path);
        exit(1);
    }
    close(fd);
    return p;
}

static void *sleeper(void *arg)
{
    (void)arg;
    for (;;) {
        struct timespec second = {1, 0};
        nanosleep(&second, NULL);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    void *heap = malloc(LEN);
    void *shanon = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (!heap || shanon == MAP_FAILED) {
        perror("memory");
        return 1;
    }
    void *wipe = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (wipe == MAP_FAILED || madvise(wipe, LEN, MADV_WIPEONFORK) != 0) {
        perror("wipe");
        return 1;
    }
    fill(heap, LEN, 0x4845);
    fill(shanon, LEN, 0x5348);
    fill(wipe, LEN, 0x5746);
    void *rofile = map_file(argv[1], "ro.bin", 0x524f, O_RDONLY);
    void *rwfile = map_file(argv[1], "rw.bin", 0x5257, O_RDWR);
    /* Touch the file pages so that they are resident before the counters
     * are first read. */
    volatile uint64_t sum = ((uint64_t *)rofile)[LEN / 8 - 1] + ((uint64_t *)rwfile)[LEN / 8 - 1];
    (void)sum;

    pthread_t thread;
    if (pthread_create(&thread, NULL, sleeper, NULL) != 0) {
        perror("pthread_create");
        return 1;
    }
    int never[2];
    if (pipe(never) != 0) {
        perror("pipe");
        return 1;
    }
    printf("ready pid=%d heap=%p shanon=%p rofile=%p rwfile=%p wipe=%p len=%d\n", (int)getpid(),
           heap, shanon, rofile, rwfile, wipe, LEN);
    fflush(stdout);
    char c;
    for (;;)
        (void)read(never[0], &c, 1);
}
