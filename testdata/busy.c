/*
 * busy.c: a configurable target for the failure-mode tests
 * (tests/failure_modes.rs).
 *
 *   busy [spin=N] [sleep=N] [churn=N] [mem=MIB]
 *
 *   spin=N   N threads spinning on the CPU forever
 *   sleep=N  N threads blocked in pause()
 *   churn=N  N threads that create a thread and join it, in a tight loop,
 *            forever (so threads appear and vanish all the time)
 *   mem=MIB  MIB MiB of private anonymous memory, every page written (its
 *            first 8 bytes hold 0xB5B5000000000000 | page index), so none of
 *            it is a hole in the core
 *   exitmain=1  after the ready line the main thread calls pthread_exit():
 *            it stays a zombie while the other threads run on
 *   nodump=1 prctl(PR_SET_DUMPABLE, 0) first: only a tracer with
 *            CAP_SYS_PTRACE may attach (and the kernel writes no core)
 *
 * Once every thread is running (and each churner has completed at least one
 * create/join round) it prints ONE line:
 *   ready pid=P tids=T1,T2,... mem=0xADDR mem_len=BYTES
 * where tids lists the long-lived threads (main first, then spinners,
 * sleepers, churners; the churners' short-lived children are not listed).
 * Then main blocks in pause() (or exits alone, with exitmain=1).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MAX_THREADS 256

static volatile pid_t tids[MAX_THREADS];
static volatile unsigned long spins;
static volatile unsigned long churned[MAX_THREADS];
static volatile int sink;

static pid_t my_tid(void) { return (pid_t)syscall(SYS_gettid); }

static void *spinner(void *arg)
{
    tids[(intptr_t)arg] = my_tid();
    for (;;)
        spins++;
    return NULL;
}

static void *sleeper(void *arg)
{
    tids[(intptr_t)arg] = my_tid();
    for (;;)
        pause();
    return NULL;
}

static void *short_lived(void *arg)
{
    (void)arg;
    sink++;
    return NULL;
}

static void *churner(void *arg)
{
    intptr_t idx = (intptr_t)arg;
    tids[idx] = my_tid();
    for (;;) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setstacksize(&attr, 64 * 1024);
        if (pthread_create(&t, &attr, short_lived, NULL) == 0)
            pthread_join(t, NULL);
        pthread_attr_destroy(&attr);
        churned[idx]++;
    }
    return NULL;
}

int main(int argc, char **argv)
{
    int spin = 0, sleep_n = 0, churn = 0, exit_main = 0, no_dump = 0;
    long mem_mib = 0;
    for (int i = 1; i < argc; i++) {
        if (sscanf(argv[i], "spin=%d", &spin) == 1) continue;
        if (sscanf(argv[i], "sleep=%d", &sleep_n) == 1) continue;
        if (sscanf(argv[i], "churn=%d", &churn) == 1) continue;
        if (sscanf(argv[i], "mem=%ld", &mem_mib) == 1) continue;
        if (sscanf(argv[i], "exitmain=%d", &exit_main) == 1) continue;
        if (sscanf(argv[i], "nodump=%d", &no_dump) == 1) continue;
        fprintf(stderr, "busy: unknown argument %s\n", argv[i]);
        return 2;
    }
    int total = 1 + spin + sleep_n + churn;
    if (total > MAX_THREADS) {
        fprintf(stderr, "busy: too many threads\n");
        return 2;
    }

    if (no_dump && prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)) {
        perror("busy: prctl");
        return 1;
    }

    unsigned char *mem = NULL;
    size_t mem_len = (size_t)mem_mib << 20;
    if (mem_len) {
        mem = mmap(NULL, mem_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (mem == MAP_FAILED) {
            perror("busy: mmap");
            return 1;
        }
        for (size_t off = 0; off < mem_len; off += 4096)
            *(volatile uint64_t *)(mem + off) = 0xB5B5000000000000ull | (off / 4096);
    }

    tids[0] = my_tid();
    int idx = 1;
    pthread_t t;
    for (int i = 0; i < spin; i++, idx++)
        if (pthread_create(&t, NULL, spinner, (void *)(intptr_t)idx)) return 1;
    for (int i = 0; i < sleep_n; i++, idx++)
        if (pthread_create(&t, NULL, sleeper, (void *)(intptr_t)idx)) return 1;
    for (int i = 0; i < churn; i++, idx++)
        if (pthread_create(&t, NULL, churner, (void *)(intptr_t)idx)) return 1;

    /* Wait until every thread has stored its tid and every churner has gone
     * round once. */
    for (;;) {
        int ready = 1;
        for (int i = 0; i < total; i++)
            if (!tids[i]) ready = 0;
        for (int i = 1 + spin + sleep_n; i < total; i++)
            if (!churned[i]) ready = 0;
        if (ready) break;
        usleep(1000);
    }

    printf("ready pid=%d tids=", (int)getpid());
    for (int i = 0; i < total; i++)
        printf("%s%d", i ? "," : "", (int)tids[i]);
    printf(" mem=%p mem_len=%zu\n", (void *)mem, mem_len);
    fflush(stdout);
    if (exit_main)
        pthread_exit(NULL);
    for (;;)
        pause();
}
