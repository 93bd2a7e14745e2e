/*
 * threads.c: main + 4 threads, each parked in its own named call chain of
 * noinline functions, each blocked in a different kind of syscall:
 *
 *   main  : main_wait   -> read() on a pipe that is never written
 *   alpha : alpha_outer -> alpha_inner -> pause()
 *   beta  : beta_outer  -> beta_inner  -> pthread_cond_wait() (futex)
 *   gamma : gamma_outer -> gamma_inner -> nanosleep() (clock_nanosleep,
 *                                         restarted via restart_syscall)
 *   delta : delta_outer -> delta_inner -> poll() on the pipe
 *
 * After every thread has announced itself (it stores its tid just before its
 * blocking call) main prints ONE line:
 *   ready pid=<pid> main=<tid> alpha=<tid> beta=<tid> gamma=<tid> delta=<tid>
 * (decimal tids) and blocks forever. The test waits for every thread to be in
 * state S before dumping, since a thread may be between the store and the
 * syscall.
 *
 * Built as a PIE and also with -static (threads-static).
 */
#define _GNU_SOURCE
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))

static int never_fd[2];              /* never written */
static volatile int sink;            /* work after each blocking call */
static volatile pid_t tids[4];
static pthread_mutex_t start_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t start_cv = PTHREAD_COND_INITIALIZER;
static int started;
static pthread_mutex_t never_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t never_cv = PTHREAD_COND_INITIALIZER;

static pid_t my_tid(void) { return (pid_t)syscall(SYS_gettid); }

static void announce(int idx)
{
    pthread_mutex_lock(&start_mu);
    tids[idx] = my_tid();
    started++;
    pthread_cond_broadcast(&start_cv);
    pthread_mutex_unlock(&start_mu);
}

/* ---- alpha: pause() ---- */
NOINLINE void alpha_inner(void)
{
    announce(0);
    for (;;) {
        pause();
        sink++;
    }
}
NOINLINE void alpha_outer(void) { alpha_inner(); sink++; }

/* ---- beta: futex via pthread_cond_wait ---- */
NOINLINE void beta_inner(void)
{
    pthread_mutex_lock(&never_mu);
    announce(1);
    for (;;) {
        pthread_cond_wait(&never_cv, &never_mu);
        sink++;
    }
}
NOINLINE void beta_outer(void) { beta_inner(); sink++; }

/* ---- gamma: nanosleep ---- */
NOINLINE void gamma_inner(void)
{
    announce(2);
    for (;;) {
        struct timespec ts = { 1000000000, 0 };
        nanosleep(&ts, NULL);
        sink++;
    }
}
NOINLINE void gamma_outer(void) { gamma_inner(); sink++; }

/* ---- delta: poll ---- */
NOINLINE void delta_inner(void)
{
    struct pollfd p = { .fd = never_fd[0], .events = POLLIN };
    announce(3);
    for (;;) {
        poll(&p, 1, -1);
        sink++;
    }
}
NOINLINE void delta_outer(void) { delta_inner(); sink++; }

static void *alpha_start(void *a) { (void)a; alpha_outer(); return NULL; }
static void *beta_start(void *a)  { (void)a; beta_outer();  return NULL; }
static void *gamma_start(void *a) { (void)a; gamma_outer(); return NULL; }
static void *delta_start(void *a) { (void)a; delta_outer(); return NULL; }

/* ---- main: read() on the pipe ---- */
NOINLINE void main_wait(void)
{
    char c;
    for (;;) {
        if (read(never_fd[0], &c, 1) < 0)
            sink++;
        sink++;
    }
}

int main(void)
{
    pthread_t t[4];
    void *(*fns[4])(void *) = { alpha_start, beta_start, gamma_start, delta_start };

    if (pipe(never_fd) != 0) {
        perror("pipe");
        return 1;
    }
    /* Create the threads one after the other, so that tids ascend in the
     * order alpha, beta, gamma, delta. */
    for (int i = 0; i < 4; i++) {
        if (pthread_create(&t[i], NULL, fns[i], NULL) != 0) {
            perror("pthread_create");
            return 1;
        }
        pthread_mutex_lock(&start_mu);
        while (started <= i)
            pthread_cond_wait(&start_cv, &start_mu);
        pthread_mutex_unlock(&start_mu);
    }
    printf("ready pid=%d main=%d alpha=%d beta=%d gamma=%d delta=%d\n",
           (int)getpid(), (int)my_tid(), (int)tids[0], (int)tids[1],
           (int)tids[2], (int)tids[3]);
    fflush(stdout);
    main_wait();
    sink++;
    return 0;
}
