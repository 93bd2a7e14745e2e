/*
 * A target for --on-signal. It prints its ready line, then reads commands
 * from stdin, one per line:
 *
 *   segv     call crash_here(), which writes through a null pointer
 *   selfsegv send itself SIGSEGV with kill(getpid(), SIGSEGV), from
 *            send_segv_to_self(): no fault, but no handler either
 *   recover  the same, with a SIGSEGV handler installed that siglongjmps
 *            back; prints "recovered" and goes on
 *   spin     burn CPU in spin_here() until killed
 *   report   print "counts usr1=N chld=N pipe=N" (signals handled so far)
 *
 * and SIGUSR1, SIGCHLD and SIGPIPE are counted by handlers all along.
 * Ready line: ready pid= worker=   (a second thread parked in worker_wait)
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static volatile sig_atomic_t usr1, chld, pipes;
static sigjmp_buf recover_point;
static volatile pid_t worker_tid;

static void count(int sig)
{
    if (sig == SIGUSR1)
        usr1++;
    else if (sig == SIGCHLD)
        chld++;
    else if (sig == SIGPIPE)
        pipes++;
}

static void on_segv(int sig)
{
    (void)sig;
    siglongjmp(recover_point, 1);
}

__attribute__((noinline)) void crash_here(volatile int *where)
{
    *where = 42;
}

__attribute__((noinline)) void send_segv_to_self(void)
{
    kill(getpid(), SIGSEGV);
}

__attribute__((noinline)) void spin_here(void)
{
    for (volatile unsigned long i = 0;; i++)
        ;
}

__attribute__((noinline)) static void worker_wait(void)
{
    worker_tid = (pid_t)syscall(SYS_gettid);
    for (;;)
        pause();
}

static void *worker(void *arg)
{
    (void)arg;
    worker_wait();
    return NULL;
}

int main(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = count;
    /* Restart the read of the next command after a counted signal. */
    sa.sa_flags = SA_RESTART;
    sigaction(SIGUSR1, &sa, NULL);
    sigaction(SIGCHLD, &sa, NULL);
    sigaction(SIGPIPE, &sa, NULL);
    pthread_t th;
    pthread_create(&th, NULL, worker, NULL);
    while (!worker_tid)
        usleep(1000);
    printf("ready pid=%d worker=%d\n", getpid(), (int)worker_tid);
    fflush(stdout);

    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "segv", 4) == 0) {
            crash_here(NULL);
        } else if (strncmp(line, "selfsegv", 8) == 0) {
            send_segv_to_self();
        } else if (strncmp(line, "recover", 7) == 0) {
            struct sigaction segv;
            memset(&segv, 0, sizeof segv);
            segv.sa_handler = on_segv;
            sigaction(SIGSEGV, &segv, NULL);
            if (sigsetjmp(recover_point, 1) == 0)
                crash_here(NULL);
            printf("recovered\n");
        } else if (strncmp(line, "spin", 4) == 0) {
            spin_here();
        } else if (strncmp(line, "report", 6) == 0) {
            printf("counts usr1=%d chld=%d pipe=%d\n", (int)usr1, (int)chld, (int)pipes);
        }
        fflush(stdout);
    }
    return 0;
}
