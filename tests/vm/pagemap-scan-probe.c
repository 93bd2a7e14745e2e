/*
 * Prints "pagemap_scan=yes" if this kernel answers the PAGEMAP_SCAN ioctl on
 * /proc/self/pagemap (Linux 6.7+), "pagemap_scan=no" if it does not (ENOTTY
 * or EINVAL: coresnap then reads the /proc/PID/pagemap table instead).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

struct page_region { uint64_t start, end, categories; };

struct pm_scan_arg {
    uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages;
    uint64_t category_inverted, category_mask, category_anyof_mask, return_mask;
};

#define PAGEMAP_SCAN _IOWR('f', 16, struct pm_scan_arg)
#define PAGE_IS_PRESENT (1 << 3)

static char page[4096] __attribute__((aligned(4096)));

int main(void)
{
    struct page_region regions[4];
    struct pm_scan_arg arg;
    int fd = open("/proc/self/pagemap", O_RDONLY);
    if (fd < 0) {
        perror("/proc/self/pagemap");
        return 1;
    }
    page[0] = 1;
    memset(&arg, 0, sizeof arg);
    arg.size = sizeof arg;
    arg.start = (uint64_t)(uintptr_t)page;
    arg.end = arg.start + sizeof page;
    arg.vec = (uint64_t)(uintptr_t)regions;
    arg.vec_len = 4;
    arg.category_anyof_mask = PAGE_IS_PRESENT;
    arg.return_mask = PAGE_IS_PRESENT;
    long n = ioctl(fd, PAGEMAP_SCAN, &arg);
    if (n >= 0) {
        printf("pagemap_scan=yes\n");
        return 0;
    }
    if (errno == ENOTTY || errno == EINVAL) {
        printf("pagemap_scan=no\n");
        return 0;
    }
    printf("pagemap_scan=error:%s\n", strerror(errno));
    return 1;
}
