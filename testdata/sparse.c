/*
 * A sparse process: one large private anonymous reservation of which only
 * one page per STRIDE is touched, plus a densely filled block, and a worker
 * thread parked in a named function.
 *
 *   sparse [RESERVE_MIB=1024] [STRIDE_KIB=4096] [DENSE_MIB=16]
 *
 * Each touched page holds, in its first 8 bytes, 0x5A5A000000000000 | its
 * page index within the reservation; every byte of the dense block is
 * (offset * 7) & 0xff, never a whole page of zeros.
 * Ready line: ready pid= reserve= reserve_len= stride= touched= dense= dense_len= worker=
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

static volatile pid_t worker_tid;

__attribute__((noinline)) static void sparse_worker_wait(void)
{
    worker_tid = (pid_t)syscall(SYS_gettid);
    pause();
    worker_tid = 0;
}

static void *sparse_worker(void *arg)
{
    (void)arg;
    sparse_worker_wait();
    return NULL;
}

int main(int argc, char **argv)
{
    size_t reserve = (size_t)(argc > 1 ? atol(argv[1]) : 1024) << 20;
    size_t stride = (size_t)(argc > 2 ? atol(argv[2]) : 4096) << 10;
    size_t dense_len = (size_t)(argc > 3 ? atol(argv[3]) : 16) << 20;

    uint8_t *base = mmap(NULL, reserve, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED) {
        perror("mmap reserve");
        return 1;
    }
    /* No transparent huge pages: one touch must populate one page. */
    madvise(base, reserve, MADV_NOHUGEPAGE);
    size_t touched = 0;
    for (size_t off = 0; off < reserve; off += stride) {
        *(uint64_t *)(base + off) = 0x5A5A000000000000ull | (off / 4096);
        touched++;
    }
    uint8_t *dense = mmap(NULL, dense_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (dense == MAP_FAILED) {
        perror("mmap dense");
        return 1;
    }
    for (size_t i = 0; i < dense_len; i++)
        dense[i] = (uint8_t)((i * 7) & 0xff);

    pthread_t th;
    pthread_create(&th, NULL, sparse_worker, NULL);
    while (!worker_tid)
        usleep(1000);
    printf("ready pid=%d reserve=%p reserve_len=%zu stride=%zu touched=%zu dense=%p dense_len=%zu worker=%d\n",
           getpid(), (void *)base, reserve, stride, touched, (void *)dense, dense_len, (int)worker_tid);
    fflush(stdout);
    for (;;)
        pause();
}
