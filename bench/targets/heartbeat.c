/*
 * Heartbeat thread for the coresnap benchmark targets.
 *
 * The thread sleeps 1 ms at a time (clock_nanosleep, CLOCK_MONOTONIC,
 * relative) and keeps the longest interval it has seen between two wake-ups.
 * While a dump tool holds the process stopped, the thread cannot run, so that
 * longest interval is the pause the dump caused (plus the 1 ms tick itself).
 *
 * Protocol with bench/run.sh (signals only set flags; the heartbeat thread
 * does the work after its next wake-up):
 *   SIGUSR1  reset the maximum, then write the report file
 *   SIGUSR2  write the report file
 * Report file (written to PATH.tmp, then renamed to PATH, so a reader never
 * sees half a line):  "<max_gap_us> <ticks_since_reset> <reason>\n"
 * The script deletes PATH, sends the signal and waits for PATH to reappear.
 */
#define _GNU_SOURCE
#include "heartbeat.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t want_reset;
static volatile sig_atomic_t want_report;
static const char *report_path;

static void on_usr1(int sig) { (void)sig; want_reset = 1; }
static void on_usr2(int sig) { (void)sig; want_report = 1; }

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void write_report(uint64_t max_gap_ns, uint64_t ticks, const char *why)
{
    char tmp[4096], line[128];
    snprintf(tmp, sizeof tmp, "%s.tmp", report_path);
    int n = snprintf(line, sizeof line, "%llu %llu %s\n",
                     (unsigned long long)(max_gap_ns / 1000),
                     (unsigned long long)ticks, why);
    FILE *f = fopen(tmp, "w");
    if (!f) return;
    fwrite(line, 1, (size_t)n, f);
    fclose(f);
    rename(tmp, report_path);
}

static void *heartbeat(void *arg)
{
    (void)arg;
    const struct timespec tick = { 0, 1000000 }; /* 1 ms */
    uint64_t prev = now_ns(), max_gap = 0, ticks = 0;
    for (;;) {
        /* EINTR (a signal arrived) just ends this tick early. */
        clock_nanosleep(CLOCK_MONOTONIC, 0, &tick, NULL);
        uint64_t t = now_ns();
        uint64_t gap = t - prev;
        if (gap > max_gap) max_gap = gap;
        prev = t;
        ticks++;
        if (want_reset) {
            want_reset = 0;
            want_report = 0;
            write_report(0, 0, "reset");
            max_gap = 0;
            ticks = 0;
            prev = now_ns(); /* the file write is not part of any pause */
        } else if (want_report) {
            want_report = 0;
            write_report(max_gap, ticks, "report");
            prev = now_ns();
        }
    }
    return NULL;
}

void hb_start(const char *path)
{
    report_path = path;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    sa.sa_handler = on_usr2;
    sigaction(SIGUSR2, &sa, NULL);

    pthread_t th;
    int rc = pthread_create(&th, NULL, heartbeat, NULL);
    if (rc != 0) {
        fprintf(stderr, "pthread_create: %s\n", strerror(rc));
        exit(1);
    }
    pthread_setname_np(th, "heartbeat");
}

void hb_idle_forever(void)
{
    for (;;) pause();
}

void hb_ready(const char *what, size_t bytes_touched)
{
    printf("READY pid=%d target=%s touched_bytes=%zu\n", (int)getpid(), what,
           bytes_touched);
    fflush(stdout);
}

void fill_pseudo_random(void *p, size_t len, unsigned long long seed)
{
    /* xorshift64*: cheap, never produces a zero state, and the output has no
     * long runs of zero bytes, so no page of it reads as all zeros. */
    uint64_t x = seed ? seed : 0x9E3779B97F4A7C15ull;
    uint64_t *w = p;
    size_t n = len / 8;
    for (size_t i = 0; i < n; i++) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        w[i] = (x * 0x2545F4914F6CDD1Dull) | 1; /* never an all-zero word */
    }
    unsigned char *b = (unsigned char *)p + n * 8;
    for (size_t i = 0; i < len % 8; i++) b[i] = 0xA5;
}

void fill_pattern(void *p, size_t len)
{
    uint64_t *w = p;
    for (size_t i = 0; i < len / 8; i++)
        w[i] = 0x0101010100000000ull | (uint64_t)(i & 0xffffffffu) | 0x80;
}

size_t parse_size(const char *s)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s) {
        fprintf(stderr, "bad size: %s\n", s);
        exit(2);
    }
    switch (*end) {
    case 'T': case 't': v <<= 40; break;
    case 'G': case 'g': v <<= 30; break;
    case 'M': case 'm': v <<= 20; break;
    case 'K': case 'k': v <<= 10; break;
    case '\0': break;
    default:
        fprintf(stderr, "bad size suffix: %s\n", s);
        exit(2);
    }
    return (size_t)v;
}
