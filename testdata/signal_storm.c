/* A target that counts every signal it receives, and a sender that sends
 * numbered signals at a steady rate: together they show whether a dump lost,
 * duplicated or altered a signal.
 *
 *   signal_storm target STATE   counts into the file STATE (shared memory)
 *   signal_storm send PID STATE sends to PID until SIGTERM, then prints
 *                               "sent rt=N rt_thread=N usr1=N urg=N"
 *
 * The target prints "ready pid=N main=TID" once its threads run. Signals:
 * - SIGRTMIN, queued to the process at a steady rate, sequence number in
 *   si_value: real-time signals queue, so every one must arrive once.
 * - SIGRTMIN+1, queued to the main thread only (rt_tgsigqueueinfo): the
 *   thread coresnap borrows for its injected clone in --mode cow.
 * - SIGUSR1 and SIGURG, numbered the same way; standard signals merge while
 *   one is pending, so the sender sends the next only when the target has
 *   counted the last (or after ACK_TIMEOUT, counted as unacknowledged).
 *   SIGUSR1 is blocked everywhere except while the main thread waits in
 *   ppoll() with an empty mask, as an event loop does; the target checks
 *   that its mask outside ppoll() stays what it set.
 * - SIGCHLD from short-lived children the main thread forks; the handler
 *   reaps them all, so a lost SIGCHLD would leave a zombie.
 * - SIGUSR2 from the test (the target's parent), the --on-signal trigger.
 * - SIGTERM from the test: the main thread calls exit(0) at its next turn,
 *   so the target exits of its own accord, e.g. while it is being dumped.
 * Each handler checks the siginfo (si_code, sender pid) and counts the
 * ones that differ in bad_info.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_SEQ (1 << 20)
#define WORKERS 3
#define ACK_TIMEOUT_NS 5000000000LL

enum kind { RT, RT_THREAD, USR1, URG, KINDS };

struct state {
    uint32_t sender_pid;
    uint32_t received[KINDS];
    uint32_t bad_info;
    uint32_t usr1_outside_ppoll;
    uint32_t mask_changed;
    uint32_t forked;
    uint32_t reaped;
    uint32_t out_of_range;
    uint32_t triggers;
    uint8_t seen[KINDS][MAX_SEQ];
};

static struct state *st;
static volatile sig_atomic_t in_ppoll;
static volatile sig_atomic_t exit_requested;
static pid_t main_tid;

static struct state *map_state(const char *path, int create)
{
    int fd = open(path, O_RDWR | (create ? O_CREAT | O_TRUNC : 0), 0600);
    if (fd < 0) {
        perror(path);
        exit(2);
    }
    if (create && ftruncate(fd, sizeof(struct state)) != 0) {
        perror("ftruncate");
        exit(2);
    }
    void *p = mmap(NULL, sizeof(struct state), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        exit(2);
    }
    close(fd);
    return p;
}

static void count(enum kind kind, siginfo_t *info)
{
    uint32_t seq = (uint32_t)info->si_value.sival_int;
    if (info->si_code != SI_QUEUE || (uint32_t)info->si_pid != st->sender_pid)
        __atomic_fetch_add(&st->bad_info, 1, __ATOMIC_SEQ_CST);
    if (seq == 0 || seq >= MAX_SEQ) {
        __atomic_fetch_add(&st->out_of_range, 1, __ATOMIC_SEQ_CST);
        return;
    }
    __atomic_fetch_add(&st->seen[kind][seq], 1, __ATOMIC_SEQ_CST);
    __atomic_fetch_add(&st->received[kind], 1, __ATOMIC_SEQ_CST);
}

static void on_rt(int sig, siginfo_t *info, void *ctx)
{
    (void)ctx;
    if (sig == SIGRTMIN + 1 && syscall(SYS_gettid) != main_tid)
        __atomic_fetch_add(&st->bad_info, 1, __ATOMIC_SEQ_CST);
    count(sig == SIGRTMIN ? RT : RT_THREAD, info);
}

static void on_usr1(int sig, siginfo_t *info, void *ctx)
{
    (void)sig;
    (void)ctx;
    if (!in_ppoll || syscall(SYS_gettid) != main_tid)
        __atomic_fetch_add(&st->usr1_outside_ppoll, 1, __ATOMIC_SEQ_CST);
    count(USR1, info);
}

static void on_urg(int sig, siginfo_t *info, void *ctx)
{
    (void)sig;
    (void)ctx;
    count(URG, info);
}

/* The test's trigger for --on-signal, sent by the test (the parent) with
 * kill(): it must arrive after the dump, once, as sent. */
static void on_usr2(int sig, siginfo_t *info, void *ctx)
{
    (void)sig;
    (void)ctx;
    if (info->si_code != SI_USER || info->si_pid != getppid())
        __atomic_fetch_add(&st->bad_info, 1, __ATOMIC_SEQ_CST);
    __atomic_fetch_add(&st->triggers, 1, __ATOMIC_SEQ_CST);
}

static void on_exit_request(int sig, siginfo_t *info, void *ctx)
{
    (void)sig;
    (void)info;
    (void)ctx;
    exit_requested = 1;
}

static void on_chld(int sig, siginfo_t *info, void *ctx)
{
    (void)sig;
    (void)info;
    (void)ctx;
    int saved = errno;
    while (waitpid(-1, NULL, WNOHANG) > 0)
        __atomic_fetch_add(&st->reaped, 1, __ATOMIC_SEQ_CST);
    errno = saved;
}

static void handle(int sig, void (*fn)(int, siginfo_t *, void *))
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = fn;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    if (sigaction(sig, &sa, NULL) != 0) {
        perror("sigaction");
        exit(2);
    }
}

/* Workers: one spins, the others sleep in short nanosleeps, so a freeze
 * finds threads both in user code and inside system calls. */
static void *worker(void *arg)
{
    long n = (long)arg;
    volatile uint64_t spin = 0;
    for (;;) {
        if (n == 0) {
            for (int i = 0; i < 100000; i++)
                spin++;
        } else {
            struct timespec ts = {0, 300000 * n};
            nanosleep(&ts, NULL);
        }
    }
    return NULL;
}

static int run_target(const char *path)
{
    st = map_state(path, 1);
    main_tid = (pid_t)syscall(SYS_gettid);
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &usr1, NULL);
    handle(SIGRTMIN, on_rt);
    handle(SIGRTMIN + 1, on_rt);
    handle(SIGUSR1, on_usr1);
    handle(SIGURG, on_urg);
    handle(SIGCHLD, on_chld);
    handle(SIGUSR2, on_usr2);
    handle(SIGTERM, on_exit_request);
    pthread_t threads[WORKERS];
    for (long i = 0; i < WORKERS; i++)
        pthread_create(&threads[i], NULL, worker, (void *)i);
    sigset_t expected;
    pthread_sigmask(SIG_BLOCK, NULL, &expected);
    sigset_t during_poll;
    sigemptyset(&during_poll);
    printf("ready pid=%d main=%d\n", getpid(), main_tid);
    fflush(stdout);
    for (uint64_t round = 0;; round++) {
        if (exit_requested)
            exit(0);
        if (round % 4 == 0) {
            pid_t child = fork();
            if (child == 0)
                _exit(0);
            if (child > 0)
                __atomic_fetch_add(&st->forked, 1, __ATOMIC_SEQ_CST);
        }
        struct timespec wait = {0, 2000000};
        in_ppoll = 1;
        ppoll(NULL, 0, &wait, &during_poll);
        in_ppoll = 0;
        sigset_t now;
        pthread_sigmask(SIG_BLOCK, NULL, &now);
        for (int sig = 1; sig < NSIG; sig++) {
            if (sigismember(&now, sig) != sigismember(&expected, sig)) {
                __atomic_fetch_add(&st->mask_changed, 1, __ATOMIC_SEQ_CST);
                pthread_sigmask(SIG_SETMASK, &expected, NULL);
                break;
            }
        }
    }
}

static volatile sig_atomic_t stop_sending;

static void on_term(int sig)
{
    (void)sig;
    stop_sending = 1;
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int queue_to_thread(pid_t pid, pid_t tid, int sig, int value)
{
    siginfo_t info;
    memset(&info, 0, sizeof info);
    info.si_signo = sig;
    info.si_code = SI_QUEUE;
    info.si_pid = getpid();
    info.si_uid = getuid();
    info.si_value.sival_int = value;
    return (int)syscall(SYS_rt_tgsigqueueinfo, pid, tid, sig, &info);
}

/* One numbered stream of a standard signal, sent one at a time. */
struct paced {
    int sig;
    enum kind kind;
    uint32_t sent;
    uint32_t unacked;
    int64_t sent_at;
};

static void pace(struct paced *p, pid_t pid)
{
    uint32_t received = __atomic_load_n(&st->received[p->kind], __ATOMIC_SEQ_CST);
    int64_t now = now_ns();
    if (p->sent > 0 && received + p->unacked < p->sent) {
        if (now - p->sent_at < ACK_TIMEOUT_NS)
            return;
        p->unacked++;
    }
    if (p->sent + 1 >= MAX_SEQ)
        return;
    union sigval value = {.sival_int = (int)(p->sent + 1)};
    if (sigqueue(pid, p->sig, value) == 0) {
        p->sent++;
        p->sent_at = now;
    }
}

static int run_sender(pid_t pid, const char *path)
{
    st = map_state(path, 0);
    __atomic_store_n(&st->sender_pid, (uint32_t)getpid(), __ATOMIC_SEQ_CST);
    signal(SIGTERM, on_term);
    uint32_t rt_sent = 0, rt_thread_sent = 0;
    struct paced usr1 = {SIGUSR1, USR1, 0, 0, 0};
    struct paced urg = {SIGURG, URG, 0, 0, 0};
    /* 2000 real-time signals a second: steady, and far below the queue
     * limit even while the target is held for a while. */
    const int64_t period = 500000;
    int64_t next = now_ns();
    while (!stop_sending) {
        if (rt_sent + 1 < MAX_SEQ) {
            union sigval value = {.sival_int = (int)(rt_sent + 1)};
            if (sigqueue(pid, SIGRTMIN, value) == 0)
                rt_sent++;
            else if (errno == ESRCH)
                break;
        }
        if (rt_sent % 4 == 0 && rt_thread_sent + 1 < MAX_SEQ &&
            queue_to_thread(pid, pid, SIGRTMIN + 1, (int)(rt_thread_sent + 1)) == 0)
            rt_thread_sent++;
        pace(&usr1, pid);
        pace(&urg, pid);
        next += period;
        int64_t wait = next - now_ns();
        if (wait > 0) {
            struct timespec ts = {wait / 1000000000LL, wait % 1000000000LL};
            nanosleep(&ts, NULL);
        }
    }
    printf("sent rt=%u rt_thread=%u usr1=%u urg=%u usr1_unacked=%u urg_unacked=%u\n", rt_sent,
           rt_thread_sent, usr1.sent, urg.sent, usr1.unacked, urg.unacked);
    fflush(stdout);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "target") == 0)
        return run_target(argv[2]);
    if (argc == 4 && strcmp(argv[1], "send") == 0)
        return run_sender((pid_t)atoi(argv[2]), argv[3]);
    fprintf(stderr, "usage: %s target STATE | %s send PID STATE\n", argv[0], argv[0]);
    return 2;
}
