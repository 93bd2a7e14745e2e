/*
 * A thread that never stops writing: it increments r12 and stores it to the
 * global `counter` in a tight loop, so at any instant the value in memory is
 * r12 or r12 - 1. A core whose memory was copied after the target ran on
 * shows a counter far ahead of the thread's r12. It also holds an flock()
 * lock and a socket pair, whose state must survive a dump.
 *
 * With a second argument `seccomp` it installs a seccomp filter that allows
 * everything, which is enough for coresnap to refuse to inject a clone.
 *
 * A MADV_DONTFORK page holds 0xD0F0D0F0D0F0D0F0 in its first 8 bytes (a
 * fork does not copy it, so a copy-on-write dump must read it before).
 *
 * Ready line: ready pid= counter= spinner= lockfile= dontfork=
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

volatile uint64_t counter;
static volatile pid_t spinner_tid;

__attribute__((noinline)) static void count_forever(void)
{
    spinner_tid = (pid_t)syscall(SYS_gettid);
    __asm__ volatile("xor %%r12, %%r12\n"
                     "1: incq %%r12\n"
                     "movq %%r12, %0\n"
                     "jmp 1b\n"
                     : "=m"(counter)
                     :
                     : "r12", "memory");
}

static void *spinner(void *arg)
{
    (void)arg;
    count_forever();
    return NULL;
}

int main(int argc, char **argv)
{
    const char *lockfile = argc > 1 ? argv[1] : "/tmp/coresnap-counter.lock";
    int fd = open(lockfile, O_RDWR | O_CREAT, 0600);
    if (fd < 0 || flock(fd, LOCK_EX) != 0) {
        perror("lock");
        return 1;
    }
    if (argc > 2 && strcmp(argv[2], "seccomp") == 0) {
        struct sock_filter allow = BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
        struct sock_fprog prog = { .len = 1, .filter = &allow };
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0) {
            perror("seccomp");
            return 1;
        }
    }
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, pair) != 0) {
        perror("socketpair");
        return 1;
    }
    uint64_t *dontfork = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (dontfork == MAP_FAILED || madvise(dontfork, 4096, MADV_DONTFORK) != 0) {
        perror("dontfork");
        return 1;
    }
    *dontfork = 0xD0F0D0F0D0F0D0F0ull;
    pthread_t th;
    pthread_create(&th, NULL, spinner, NULL);
    while (!spinner_tid || counter < 1000)
        usleep(1000);
    printf("ready pid=%d counter=%p spinner=%d lockfile=%s dontfork=%p\n", getpid(), (void *)&counter, (int)spinner_tid,
           lockfile, (void *)dontfork);
    fflush(stdout);
    for (;;)
        pause();
}
