/*
 * A process that serves a FUSE file system itself (raw /dev/fuse protocol,
 * no libfuse) and maps a file from it: while the process is frozen, nobody
 * answers the kernel's read requests, so reading a page of that mapping
 * that is not cached waits until the process runs again.
 *
 *   fuse_self
 *
 * The process first moves into a mount namespace of its own (root only),
 * with a /tmp of its own, so that its mounts and their mount point
 * disappear with it. The file `data` holds PAGES pages;
 * every byte at offset i is (i * 13) & 0xff. It is mapped MAP_SHARED and
 * never touched, so none of its pages is in memory.
 * Ready line: ready pid= mapping= len= mount=
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#define PAGES 4
#define ROOT_ID 1
#define FILE_ID 2

static int fuse_fd;
static size_t file_len;

static void reply(uint64_t unique, int error, const void *payload, size_t len)
{
    char buf[sizeof(struct fuse_out_header) + 65536];
    struct fuse_out_header out = {
        .len = (uint32_t)(sizeof out + len),
        .error = error,
        .unique = unique,
    };
    memcpy(buf, &out, sizeof out);
    if (len) {
        memcpy(buf + sizeof out, payload, len);
    }
    if (write(fuse_fd, buf, out.len) < 0 && errno != ENOENT) {
        perror("write /dev/fuse");
    }
}

static void fill_attr(struct fuse_attr *attr, uint64_t id)
{
    memset(attr, 0, sizeof *attr);
    attr->ino = id;
    attr->nlink = 1;
    attr->blksize = 4096;
    if (id == ROOT_ID) {
        attr->mode = S_IFDIR | 0755;
    } else {
        attr->mode = S_IFREG | 0644;
        attr->size = file_len;
        attr->blocks = file_len / 512;
    }
}

static void *serve(void *arg)
{
    (void)arg;
    static char buf[FUSE_MIN_READ_BUFFER + 65536];
    for (;;) {
        ssize_t n = read(fuse_fd, buf, sizeof buf);
        if (n < 0) {
            if (errno == EINTR || errno == ENOENT) {
                continue;
            }
            return NULL;
        }
        struct fuse_in_header *in = (struct fuse_in_header *)buf;
        void *body = buf + sizeof *in;
        switch (in->opcode) {
        case FUSE_INIT: {
            struct fuse_init_in *init = body;
            struct fuse_init_out out = {
                .major = FUSE_KERNEL_VERSION,
                .minor = init->minor < FUSE_KERNEL_MINOR_VERSION ? init->minor
                                                                 : FUSE_KERNEL_MINOR_VERSION,
                .max_readahead = 0,
                .max_write = 4096,
                .max_background = 1,
                .congestion_threshold = 1,
            };
            reply(in->unique, 0, &out, sizeof out);
            break;
        }
        case FUSE_LOOKUP: {
            if (in->nodeid != ROOT_ID || strcmp(body, "data") != 0) {
                reply(in->unique, -ENOENT, NULL, 0);
                break;
            }
            struct fuse_entry_out out = {
                .nodeid = FILE_ID,
                .generation = 1,
                .entry_valid = 3600,
                .attr_valid = 3600,
            };
            fill_attr(&out.attr, FILE_ID);
            reply(in->unique, 0, &out, sizeof out);
            break;
        }
        case FUSE_GETATTR: {
            struct fuse_attr_out out = {.attr_valid = 3600};
            fill_attr(&out.attr, in->nodeid);
            reply(in->unique, 0, &out, sizeof out);
            break;
        }
        case FUSE_OPEN:
        case FUSE_OPENDIR: {
            struct fuse_open_out out = {.fh = 1};
            reply(in->unique, 0, &out, sizeof out);
            break;
        }
        case FUSE_READ: {
            struct fuse_read_in *read_in = body;
            static uint8_t data[65536];
            size_t len = read_in->size > sizeof data ? sizeof data : read_in->size;
            if (read_in->offset >= file_len) {
                len = 0;
            } else if (read_in->offset + len > file_len) {
                len = file_len - read_in->offset;
            }
            for (size_t i = 0; i < len; i++) {
                data[i] = (uint8_t)((read_in->offset + i) * 13);
            }
            reply(in->unique, 0, data, len);
            break;
        }
        case FUSE_FORGET:
        case FUSE_BATCH_FORGET:
            break;
        case FUSE_FLUSH:
        case FUSE_RELEASE:
        case FUSE_RELEASEDIR:
            reply(in->unique, 0, NULL, 0);
            break;
        default:
            reply(in->unique, -ENOSYS, NULL, 0);
            break;
        }
    }
}

int main(void)
{
    file_len = PAGES * (size_t)sysconf(_SC_PAGESIZE);
    if (unshare(CLONE_NEWNS) != 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) {
        perror("a mount namespace of its own (needs root)");
        return 1;
    }
    /* A /tmp of its own too: the mount point leaves nothing behind. */
    if (mount("coresnap-test", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "size=1m") != 0) {
        perror("mount tmpfs on /tmp");
        return 1;
    }
    char dir[] = "/tmp/coresnap-fuse-XXXXXX";
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    fuse_fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
    if (fuse_fd < 0) {
        perror("open /dev/fuse");
        return 1;
    }
    char options[128];
    snprintf(options, sizeof options, "fd=%d,rootmode=40000,user_id=0,group_id=0", fuse_fd);
    if (mount("coresnap-test", dir, "fuse.coresnap-test", MS_NOSUID | MS_NODEV, options) != 0) {
        perror("mount fuse");
        return 1;
    }
    /* The directory lives only in this namespace's view from now on. */
    pthread_t server;
    if (pthread_create(&server, NULL, serve, NULL) != 0) {
        return 1;
    }
    char path[sizeof dir + 8];
    snprintf(path, sizeof path, "%s/data", dir);
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        perror("open data");
        return 1;
    }
    uint8_t *mapping = mmap(NULL, file_len, PROT_READ, MAP_SHARED, fd, 0);
    if (mapping == MAP_FAILED) {
        perror("mmap data");
        return 1;
    }
    printf("ready pid=%d mapping=%p len=%zu mount=%s\n", getpid(), (void *)mapping, file_len, dir);
    fflush(stdout);
    for (;;) {
        pause();
    }
}
