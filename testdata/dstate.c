/*
 * dstate.c: a target with a thread in uninterruptible sleep (state D) that
 * PTRACE_INTERRUPT cannot stop, for tests/failure_modes.rs.
 *
 * Thread `vforker` calls vfork(). Until the child execs or exits, the parent
 * thread waits in wait_for_vfork_done() in TASK_KILLABLE, which /proc shows
 * as D: only a fatal signal wakes it, so a ptrace stop request stays pending
 * until the child lets it go. The child (it shares the parent's memory, so it
 * only stores its pid and blocks in pause()) never does, until the test kills
 * it; then vforker returns from vfork() and blocks in pause() (state S).
 *
 * Ready line, once the child exists:
 *   ready pid=P main=TID vforker=TID child=PID
 * Then main blocks in pause().
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>

static volatile pid_t vforker_tid;
static volatile pid_t child_pid;
static volatile int returned;

static void *vforker(void *arg)
{
    (void)arg;
    vforker_tid = (pid_t)syscall(SYS_gettid);
    pid_t c = vfork();
    if (c == 0) {
        /* The child: only async-signal-safe calls, no return. */
        child_pid = (pid_t)syscall(SYS_getpid);
        for (;;)
            syscall(SYS_pause);
    }
    returned = 1;
    for (;;)
        pause();
    return NULL;
}

int main(void)
{
    pthread_t t;
    if (pthread_create(&t, NULL, vforker, NULL))
        return 1;
    while (!child_pid)
        usleep(1000);
    printf("ready pid=%d main=%d vforker=%d child=%d\n", (int)getpid(),
           (int)syscall(SYS_gettid), (int)vforker_tid, (int)child_pid);
    fflush(stdout);
    for (;;)
        pause();
}
