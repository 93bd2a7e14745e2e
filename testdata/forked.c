/*
 * forked.c: a process whose memory is shared copy-on-write with its parent,
 * like a pre-forked server worker (tests/failure_modes.rs).
 *
 *   forked MIB
 *
 * The parent fills MIB MiB of private anonymous memory (each page's first 8
 * bytes hold 0xF0F0000000000000 | page index), then forks; the child touches
 * nothing and sleeps, so every one of those pages stays shared between the
 * two. The child dies with the parent (PR_SET_PDEATHSIG). Once the child is
 * asleep the parent prints ONE line:
 *   ready pid=PARENT child=CHILD mem=0xADDR mem_len=BYTES
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    size_t len = (size_t)(argc > 1 ? atol(argv[1]) : 64) << 20;
    unsigned char *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
        perror("forked: mmap");
        return 1;
    }
    for (size_t off = 0; off < len; off += 4096)
        *(volatile uint64_t *)(mem + off) = 0xF0F0000000000000ull | (off / 4096);
    int ready[2];
    if (pipe(ready)) {
        perror("forked: pipe");
        return 1;
    }
    pid_t parent = getpid();
    pid_t child = fork();
    if (child < 0) {
        perror("forked: fork");
        return 1;
    }
    if (child == 0) {
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) || getppid() != parent)
            _exit(1);
        if (write(ready[1], "x", 1) != 1)
            _exit(1);
        for (;;)
            pause();
    }
    char byte;
    if (read(ready[0], &byte, 1) != 1)
        return 1;
    printf("ready pid=%d child=%d mem=%p mem_len=%zu\n", (int)parent, (int)child, (void *)mem, len);
    fflush(stdout);
    for (;;)
        pause();
}
