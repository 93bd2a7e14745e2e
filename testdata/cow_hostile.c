/*
 * cow_hostile MIB MODE [FILLED_FILE]: a target for --mode cow's safety
 * checks.
 *
 * MIB MiB of private anonymous memory, word i = 0x4357 << 48 | i, filled by
 * two threads. With FILLED_FILE the ready line comes first and the file is
 * created once the memory is filled (gigabytes can take longer than the
 * harness waits for a ready line). Then, by MODE:
 *   idle          every thread blocks
 *   rewrite       a thread writes every word again, with the value it
 *                 already holds, in a loop as fast as it can: each page is
 *                 written again and again, and the pattern stays exact
 *   killchildren  a thread SIGKILLs every child of the process that it finds
 *                 in /proc/self/task/TID/children, once a millisecond
 *
 * Ready line: ready pid=P buf=0x.. buf_len=N tag=0x4357000000000000
 *             mode=MODE
 * then main blocks in pause().
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define TAG 0x4357000000000000ull

static uint64_t *buf;
static size_t words;

struct span { size_t from, to; };

/* Optimised even in the tests' -O0 build: gigabytes must be ready within
 * the harness's ready-line timeout. */
__attribute__((optimize("O2"))) static void *fill(void *arg)
{
    struct span *s = arg;
    for (size_t i = s->from; i < s->to; i++)
        buf[i] = TAG | i;
    return NULL;
}

static void *rewrite(void *arg)
{
    (void)arg;
    volatile uint64_t *w = buf;
    for (;;)
        for (size_t i = 0; i < words; i += 1)
            w[i] = TAG | i;
    return NULL;
}

static void kill_children_of(const char *task)
{
    char path[128];
    snprintf(path, sizeof path, "/proc/self/task/%s/children", task);
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    int child;
    while (fscanf(f, "%d", &child) == 1)
        kill(child, SIGKILL);
    fclose(f);
}

static void *kill_children(void *arg)
{
    (void)arg;
    const struct timespec tick = { 0, 1000000 };
    for (;;) {
        DIR *tasks = opendir("/proc/self/task");
        if (tasks) {
            struct dirent *e;
            while ((e = readdir(tasks)) != NULL)
                if (e->d_name[0] != '.')
                    kill_children_of(e->d_name);
            closedir(tasks);
        }
        nanosleep(&tick, NULL);
    }
    return NULL;
}

static void ready(size_t len, const char *mode)
{
    printf("ready pid=%d buf=%p buf_len=%zu tag=0x%llx mode=%s\n", (int)getpid(),
           (void *)buf, len, TAG, mode);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    if (argc != 3 && argc != 4) {
        fprintf(stderr, "usage: %s MIB idle|rewrite|killchildren [FILLED_FILE]\n", argv[0]);
        return 2;
    }
    size_t len = strtoull(argv[1], NULL, 10) << 20;
    const char *mode = argv[2];
    void *(*worker)(void *) = NULL;
    if (strcmp(mode, "rewrite") == 0)
        worker = rewrite;
    else if (strcmp(mode, "killchildren") == 0)
        worker = kill_children;
    else if (strcmp(mode, "idle") != 0) {
        fprintf(stderr, "unknown mode %s\n", mode);
        return 2;
    }
    buf = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buf == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    words = len / 8;
    const char *filled = argc == 4 ? argv[3] : NULL;
    if (filled)
        ready(len, mode);
    struct span halves[2] = { { 0, words / 2 }, { words / 2, words } };
    pthread_t fillers[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&fillers[i], NULL, fill, &halves[i]);
    for (int i = 0; i < 2; i++)
        pthread_join(fillers[i], NULL);
    if (worker) {
        pthread_t t;
        pthread_create(&t, NULL, worker, NULL);
    }
    if (filled) {
        FILE *f = fopen(filled, "w");
        if (!f) {
            perror(filled);
            return 1;
        }
        fclose(f);
    } else {
        ready(len, mode);
    }
    for (;;)
        pause();
}
