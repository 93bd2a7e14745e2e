/*
 * mapnames.c: maps files whose names are awkward (spaces, newlines, bytes
 * that are not UTF-8...), for tests/failure_modes.rs.
 *
 *   mapnames FILE...
 *
 * Maps each FILE whole, read-only and private (file offset 0), in argument
 * order, then prints ONE line:
 *   ready pid=P map0=0xADDR len0=BYTES map1=... len1=...
 * and blocks in pause(). The names themselves are not printed (they may hold
 * newlines); the test knows them.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    void *addr[64];
    size_t len[64];
    int n = argc - 1;
    if (n > 64) n = 64;
    for (int i = 0; i < n; i++) {
        int fd = open(argv[i + 1], O_RDONLY);
        struct stat st;
        if (fd < 0 || fstat(fd, &st) < 0 || st.st_size == 0) {
            perror("mapnames: open");
            return 1;
        }
        len[i] = (size_t)st.st_size;
        addr[i] = mmap(NULL, len[i], PROT_READ, MAP_PRIVATE, fd, 0);
        if (addr[i] == MAP_FAILED) {
            perror("mapnames: mmap");
            return 1;
        }
        close(fd);
    }
    printf("ready pid=%d", (int)getpid());
    for (int i = 0; i < n; i++)
        printf(" map%d=%p len%d=%zu", i, addr[i], i, len[i]);
    printf("\n");
    fflush(stdout);
    for (;;)
        pause();
}
