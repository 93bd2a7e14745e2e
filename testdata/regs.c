/*
 * regs.c: one thread ("spinner") loads known values into registers and then
 * spins forever on a single `jmp` instruction, so its rip and every register
 * stay fixed:
 *
 *   r12 = 0x1122334455667788   r13 = 0x99aabbccddeeff00
 *   r14 = 0x0123456789abcdef   r15 = 0xfedcba9876543210
 *   ymmN (N = 0..3), 64-bit lane j (j = 0..3) = 0xc0de0000_00000000 | N<<16 | j
 *   (so xmmN = lanes 0 and 1 of ymmN)
 *   if the CPU has AVX-512F: zmm(16+K) (K = 0..3), lane j (j = 0..7)
 *                             = 0x2eaa0000_00000000 | K<<16 | j
 *
 * The asm stores 1 into `loaded` after loading the registers; main waits for
 * that and then prints ONE line:
 *   ready pid=<pid> main=<tid> spinner=<tid> avx512=<0|1> spin_rip=0x<addr>
 * and blocks in pause().
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>

#define YMM(n) { 0xc0de000000000000ull | ((uint64_t)(n) << 16) | 0, \
                 0xc0de000000000000ull | ((uint64_t)(n) << 16) | 1, \
                 0xc0de000000000000ull | ((uint64_t)(n) << 16) | 2, \
                 0xc0de000000000000ull | ((uint64_t)(n) << 16) | 3 }
#define ZL(k, j) (0x2eaa000000000000ull | ((uint64_t)(k) << 16) | (j))
#define ZMM(k) { ZL(k,0), ZL(k,1), ZL(k,2), ZL(k,3), ZL(k,4), ZL(k,5), ZL(k,6), ZL(k,7) }

static const uint64_t ymm_pat[4][4] __attribute__((aligned(64))) = { YMM(0), YMM(1), YMM(2), YMM(3) };
static const uint64_t zmm_pat[4][8] __attribute__((aligned(64))) = { ZMM(0), ZMM(1), ZMM(2), ZMM(3) };

static volatile int loaded;
static volatile pid_t spinner_tid;
static int have_avx512;

/* Address of the spin instruction, exported from the asm. */
extern const char spin_here[];

__attribute__((noinline)) void spin_forever(void)
{
    spinner_tid = (pid_t)syscall(SYS_gettid);
    if (have_avx512) {
        __asm__ volatile(
            "vmovdqu64 0(%[z]), %%zmm16\n\t"
            "vmovdqu64 64(%[z]), %%zmm17\n\t"
            "vmovdqu64 128(%[z]), %%zmm18\n\t"
            "vmovdqu64 192(%[z]), %%zmm19\n\t"
            :
            : [z] "r"(zmm_pat)
            /* zmm16..19 cannot be named as clobbers without -mavx512f, and
             * code built without it never uses them. */
            : "memory");
    }
    __asm__ volatile(
        "vmovdqu 0(%[y]), %%ymm0\n\t"
        "vmovdqu 32(%[y]), %%ymm1\n\t"
        "vmovdqu 64(%[y]), %%ymm2\n\t"
        "vmovdqu 96(%[y]), %%ymm3\n\t"
        "movabs $0x1122334455667788, %%r12\n\t"
        "movabs $0x99aabbccddeeff00, %%r13\n\t"
        "movabs $0x0123456789abcdef, %%r14\n\t"
        "movabs $0xfedcba9876543210, %%r15\n\t"
        "movl $1, %[flag]\n\t"
        ".globl spin_here\n"
        "spin_here:\n\t"
        "jmp spin_here\n\t"
        : [flag] "=m"(loaded)
        : [y] "r"(ymm_pat)
        : "r12", "r13", "r14", "r15", "xmm0", "xmm1", "xmm2", "xmm3", "memory");
    __builtin_unreachable();
}

static void *spinner(void *a)
{
    (void)a;
    spin_forever();
    return NULL;
}

int main(void)
{
    pthread_t t;
    __builtin_cpu_init();
    have_avx512 = !!__builtin_cpu_supports("avx512f");
    if (pthread_create(&t, NULL, spinner, NULL) != 0) {
        perror("pthread_create");
        return 1;
    }
    while (!loaded)
        sched_yield();
    printf("ready pid=%d main=%d spinner=%d avx512=%d spin_rip=%p\n", (int)getpid(),
           (int)syscall(SYS_gettid), (int)spinner_tid, have_avx512, (void *)spin_here);
    fflush(stdout);
    for (;;)
        pause();
}
