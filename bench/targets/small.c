/*
 * Target (d) "small": an ordinary small multi-threaded process.
 * THREADS threads in total (main + heartbeat + workers), about SIZE of
 * touched heap spread over the workers, each worker waking every 10 ms to
 * update its data.
 *
 *   small REPORT_FILE [THREADS=8] [SIZE=60M]
 */
#define _GNU_SOURCE
#include "heartbeat.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct worker {
    unsigned char *data;
    size_t len;
};

static void *work(void *arg)
{
    struct worker *w = arg;
    const struct timespec ten_ms = { 0, 10 * 1000 * 1000 };
    size_t i = 0;
    for (;;) {
        nanosleep(&ten_ms, NULL);
        w->data[i] ^= 1; /* keep the data alive, touch it a little */
        i = (i + 4096) % w->len;
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s REPORT_FILE [THREADS] [SIZE]\n", argv[0]);
        return 2;
    }
    int threads = atoi(argc > 2 ? argv[2] : "8");
    size_t size = parse_size(argc > 3 ? argv[3] : "60M");
    int workers = threads > 2 ? threads - 2 : 1;

    hb_start(argv[1]);

    struct worker *ws = calloc((size_t)workers, sizeof *ws);
    size_t touched = 0;
    for (int k = 0; k < workers; k++) {
        ws[k].len = size / (size_t)workers;
        ws[k].data = malloc(ws[k].len);
        if (!ws[k].data) { perror("malloc"); return 1; }
        /* Half random, half pattern: a realistic mix for compression. */
        fill_pseudo_random(ws[k].data, ws[k].len / 2, (unsigned long long)k + 7);
        fill_pattern(ws[k].data + ws[k].len / 2, ws[k].len - ws[k].len / 2);
        touched += ws[k].len;
        pthread_t th;
        if (pthread_create(&th, NULL, work, &ws[k]) != 0) { perror("pthread_create"); return 1; }
    }

    hb_ready("small", touched);
    hb_idle_forever();
}
