/*
 * regs.c: one thread ("spinner") loads known values into every register it
 * can and then spins forever on a single `jmp` instruction, so its rip and
 * every register stay fixed. The values (tests/dump_gdb.rs expects exactly
 * these):
 *
 *   general  rax = 0xaaaa000000000001  rbx = 0xbbbb000000000002
 *            rcx = 0xcccc000000000003  rdx = 0xdddd000000000004
 *            rsi = 0x5151000000000005  rdi = 0xd1d1000000000006
 *            rbp = 0xb9b9000000000007  r8  = 0x0808000000000008
 *            r9  = 0x0909000000000009  r10 = 0x101000000000000a
 *            r11 = 0x111100000000000b  r12 = 0x1122334455667788
 *            r13 = 0x99aabbccddeeff00  r14 = 0x0123456789abcdef
 *            r15 = 0xfedcba9876543210
 *            rsp and fs_base are printed (spinner_rsp, spinner_fs)
 *   x87      stI (I = 0..7), 80-bit raw: sign/exponent 0x4000 + I,
 *            significand 0xd00d000000000000 | I; control word 0x0e7f
 *            (round toward zero, double precision, all exceptions masked)
 *   SSE      MXCSR = 0x7fa5 (round toward zero, all masked, IE ZE PE set)
 *   vectors  register R, 64-bit lane j: 0xc0de000000000000 | R<<16 | j
 *            with AVX: ymm0-15 (lanes 0-3); without: xmm0-15 (lanes 0-1);
 *            with AVX-512F: zmm0-31, all 8 lanes
 *   opmask   with AVX-512F: kN = 0x6b6b000000000000 | N<<8 | N (N = 0..7),
 *            only the low 16 bits without AVX-512BW
 *   PKRU     with OS-enabled PKU: 0x5a5a5a50 (key 0 stays accessible)
 *   AMX      with AMX-TILE (and the kernel's permission): a tile
 *            configuration and tmm0 loaded, so that the XSAVE area carries
 *            AMX state; gdb 13 has no AMX registers, nothing is expected
 *
 * The asm stores 1 into `regs_loaded` after loading; main waits for that and
 * then prints ONE line:
 *   ready pid=<pid> main=<tid> spinner=<tid> avx=<0|1> avx512=<0|1>
 *         avx512bw=<0|1> pku=<0|1> amx=<0|1> spin_rip=0x<addr>
 *         spinner_rsp=0x<addr> spinner_fs=0x<addr> main_fs=0x<addr>
 * and blocks in pause().
 */
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <cpuid.h>
#include <pthread.h>
#include <sched.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef ARCH_REQ_XCOMP_PERM
#define ARCH_REQ_XCOMP_PERM 0x1023
#endif
#define XFEATURE_XTILEDATA 18

/* Everything the asm loads from memory, at offsets the asm names. */
struct known {
    uint64_t vec[32][8];          /* 0: vector register R, lane j */
    uint64_t k[8];                /* 2048 */
    struct {
        uint64_t significand;
        uint16_t sign_exponent;
        uint16_t pad[3];
    } st[8];                      /* 2112: fldt reads 10 bytes at each */
    uint32_t mxcsr;               /* 2240 */
    uint16_t fctrl;               /* 2244 */
    uint16_t pad;
    uint8_t tilecfg[64];          /* 2248 */
    uint8_t tile[16][64];         /* 2312 */
};
_Static_assert(offsetof(struct known, k) == 2048, "k offset");
_Static_assert(offsetof(struct known, st) == 2112, "st offset");
_Static_assert(offsetof(struct known, mxcsr) == 2240, "mxcsr offset");
_Static_assert(offsetof(struct known, fctrl) == 2244, "fctrl offset");
_Static_assert(offsetof(struct known, tilecfg) == 2248, "tilecfg offset");
_Static_assert(offsetof(struct known, tile) == 2312, "tile offset");

static struct known known __attribute__((aligned(64)));

volatile int regs_loaded;
volatile uint64_t spinner_rsp;
static volatile pid_t spinner_tid;
static volatile uint64_t spinner_fs;
static int have_avx, have_avx512, have_avx512bw, have_pku, have_amx;

/* Address of the spin instruction, exported from the asm. */
extern const char spin_here[];

static uint64_t fs_base(void)
{
    unsigned long base = 0;
    syscall(SYS_arch_prctl, ARCH_GET_FS, &base);
    return base;
}

static void fill_known(void)
{
    for (uint64_t r = 0; r < 32; r++)
        for (uint64_t j = 0; j < 8; j++)
            known.vec[r][j] = 0xc0de000000000000ull | r << 16 | j;
    for (uint64_t n = 0; n < 8; n++)
        known.k[n] = 0x6b6b000000000000ull | n << 8 | n;
    for (int i = 0; i < 8; i++) {
        known.st[i].significand = 0xd00d000000000000ull | (uint64_t)i;
        known.st[i].sign_exponent = (uint16_t)(0x4000 + i);
    }
    known.mxcsr = 0x7fa5;
    known.fctrl = 0x0e7f;
    /* Palette 1, tmm0: 16 rows of 64 bytes. */
    known.tilecfg[0] = 1;
    known.tilecfg[16] = 64;
    known.tilecfg[48] = 16;
    for (int row = 0; row < 16; row++)
        for (int col = 0; col < 64; col++)
            known.tile[row][col] = (uint8_t)(0xa0 + row + col);
}

/* Loads every register that is not a general one. Nothing the compiler
 * emits after this touches x87, MXCSR, PKRU or AMX state, and the vector
 * registers are loaded last, in the same asm as the general ones. */
static void load_state(void)
{
    __asm__ volatile(
        "fninit\n\t"
        "fldcw 2244(%[k])\n\t"
        /* Pushed from st7's value down to st0's, so stI ends up holding
         * known.st[I]. */
        "fldt 2224(%[k])\n\t"
        "fldt 2208(%[k])\n\t"
        "fldt 2192(%[k])\n\t"
        "fldt 2176(%[k])\n\t"
        "fldt 2160(%[k])\n\t"
        "fldt 2144(%[k])\n\t"
        "fldt 2128(%[k])\n\t"
        "fldt 2112(%[k])\n\t"
        "ldmxcsr 2240(%[k])\n\t"
        :
        : [k] "r"(&known)
        : "memory", "st", "st(1)", "st(2)", "st(3)", "st(4)", "st(5)", "st(6)", "st(7)");
    if (have_pku)
        __asm__ volatile("wrpkru" : : "a"(0x5a5a5a50u), "c"(0), "d"(0) : "memory");
    if (have_amx)
        __asm__ volatile("ldtilecfg 2248(%[k])\n\t"
                         "tileloadd 2312(%[k],%[stride],1), %%tmm0\n\t"
                         :
                         : [k] "r"(&known), [stride] "r"(64ull)
                         : "memory");
}

__attribute__((noinline)) void spin_forever(void)
{
    spinner_tid = (pid_t)syscall(SYS_gettid);
    spinner_fs = fs_base();
    load_state();
    /* One asm from the vector loads to the spin: the general registers are
     * overwritten last (rdi, the base, at the very end), and it never
     * returns, so neither the clobbered registers nor rbp need saving. The
     * zmm16-31 and k registers cannot be named as clobbers without
     * -mavx512f, and code built without it never uses them. */
    __asm__ volatile(
        "mov %%rsp, spinner_rsp(%%rip)\n\t"
        "cmpl $0, have_avx512(%%rip)\n\t"
        "jne 3f\n\t"
        "cmpl $0, have_avx(%%rip)\n\t"
        "jne 2f\n\t"
        "movdqu 0(%%rdi), %%xmm0\n\t"
        "movdqu 64(%%rdi), %%xmm1\n\t"
        "movdqu 128(%%rdi), %%xmm2\n\t"
        "movdqu 192(%%rdi), %%xmm3\n\t"
        "movdqu 256(%%rdi), %%xmm4\n\t"
        "movdqu 320(%%rdi), %%xmm5\n\t"
        "movdqu 384(%%rdi), %%xmm6\n\t"
        "movdqu 448(%%rdi), %%xmm7\n\t"
        "movdqu 512(%%rdi), %%xmm8\n\t"
        "movdqu 576(%%rdi), %%xmm9\n\t"
        "movdqu 640(%%rdi), %%xmm10\n\t"
        "movdqu 704(%%rdi), %%xmm11\n\t"
        "movdqu 768(%%rdi), %%xmm12\n\t"
        "movdqu 832(%%rdi), %%xmm13\n\t"
        "movdqu 896(%%rdi), %%xmm14\n\t"
        "movdqu 960(%%rdi), %%xmm15\n\t"
        "jmp 9f\n"
        "2:\n\t"
        "vmovdqu 0(%%rdi), %%ymm0\n\t"
        "vmovdqu 64(%%rdi), %%ymm1\n\t"
        "vmovdqu 128(%%rdi), %%ymm2\n\t"
        "vmovdqu 192(%%rdi), %%ymm3\n\t"
        "vmovdqu 256(%%rdi), %%ymm4\n\t"
        "vmovdqu 320(%%rdi), %%ymm5\n\t"
        "vmovdqu 384(%%rdi), %%ymm6\n\t"
        "vmovdqu 448(%%rdi), %%ymm7\n\t"
        "vmovdqu 512(%%rdi), %%ymm8\n\t"
        "vmovdqu 576(%%rdi), %%ymm9\n\t"
        "vmovdqu 640(%%rdi), %%ymm10\n\t"
        "vmovdqu 704(%%rdi), %%ymm11\n\t"
        "vmovdqu 768(%%rdi), %%ymm12\n\t"
        "vmovdqu 832(%%rdi), %%ymm13\n\t"
        "vmovdqu 896(%%rdi), %%ymm14\n\t"
        "vmovdqu 960(%%rdi), %%ymm15\n\t"
        "jmp 9f\n"
        "3:\n\t"
        "vmovdqu64 0(%%rdi), %%zmm0\n\t"
        "vmovdqu64 64(%%rdi), %%zmm1\n\t"
        "vmovdqu64 128(%%rdi), %%zmm2\n\t"
        "vmovdqu64 192(%%rdi), %%zmm3\n\t"
        "vmovdqu64 256(%%rdi), %%zmm4\n\t"
        "vmovdqu64 320(%%rdi), %%zmm5\n\t"
        "vmovdqu64 384(%%rdi), %%zmm6\n\t"
        "vmovdqu64 448(%%rdi), %%zmm7\n\t"
        "vmovdqu64 512(%%rdi), %%zmm8\n\t"
        "vmovdqu64 576(%%rdi), %%zmm9\n\t"
        "vmovdqu64 640(%%rdi), %%zmm10\n\t"
        "vmovdqu64 704(%%rdi), %%zmm11\n\t"
        "vmovdqu64 768(%%rdi), %%zmm12\n\t"
        "vmovdqu64 832(%%rdi), %%zmm13\n\t"
        "vmovdqu64 896(%%rdi), %%zmm14\n\t"
        "vmovdqu64 960(%%rdi), %%zmm15\n\t"
        "vmovdqu64 1024(%%rdi), %%zmm16\n\t"
        "vmovdqu64 1088(%%rdi), %%zmm17\n\t"
        "vmovdqu64 1152(%%rdi), %%zmm18\n\t"
        "vmovdqu64 1216(%%rdi), %%zmm19\n\t"
        "vmovdqu64 1280(%%rdi), %%zmm20\n\t"
        "vmovdqu64 1344(%%rdi), %%zmm21\n\t"
        "vmovdqu64 1408(%%rdi), %%zmm22\n\t"
        "vmovdqu64 1472(%%rdi), %%zmm23\n\t"
        "vmovdqu64 1536(%%rdi), %%zmm24\n\t"
        "vmovdqu64 1600(%%rdi), %%zmm25\n\t"
        "vmovdqu64 1664(%%rdi), %%zmm26\n\t"
        "vmovdqu64 1728(%%rdi), %%zmm27\n\t"
        "vmovdqu64 1792(%%rdi), %%zmm28\n\t"
        "vmovdqu64 1856(%%rdi), %%zmm29\n\t"
        "vmovdqu64 1920(%%rdi), %%zmm30\n\t"
        "vmovdqu64 1984(%%rdi), %%zmm31\n\t"
        "cmpl $0, have_avx512bw(%%rip)\n\t"
        "jne 4f\n\t"
        "kmovw 2048(%%rdi), %%k0\n\t"
        "kmovw 2056(%%rdi), %%k1\n\t"
        "kmovw 2064(%%rdi), %%k2\n\t"
        "kmovw 2072(%%rdi), %%k3\n\t"
        "kmovw 2080(%%rdi), %%k4\n\t"
        "kmovw 2088(%%rdi), %%k5\n\t"
        "kmovw 2096(%%rdi), %%k6\n\t"
        "kmovw 2104(%%rdi), %%k7\n\t"
        "jmp 9f\n"
        "4:\n\t"
        "kmovq 2048(%%rdi), %%k0\n\t"
        "kmovq 2056(%%rdi), %%k1\n\t"
        "kmovq 2064(%%rdi), %%k2\n\t"
        "kmovq 2072(%%rdi), %%k3\n\t"
        "kmovq 2080(%%rdi), %%k4\n\t"
        "kmovq 2088(%%rdi), %%k5\n\t"
        "kmovq 2096(%%rdi), %%k6\n\t"
        "kmovq 2104(%%rdi), %%k7\n"
        "9:\n\t"
        "movabs $0xaaaa000000000001, %%rax\n\t"
        "movabs $0xbbbb000000000002, %%rbx\n\t"
        "movabs $0xcccc000000000003, %%rcx\n\t"
        "movabs $0xdddd000000000004, %%rdx\n\t"
        "movabs $0x5151000000000005, %%rsi\n\t"
        "movabs $0xb9b9000000000007, %%rbp\n\t"
        "movabs $0x0808000000000008, %%r8\n\t"
        "movabs $0x0909000000000009, %%r9\n\t"
        "movabs $0x101000000000000a, %%r10\n\t"
        "movabs $0x111100000000000b, %%r11\n\t"
        "movabs $0x1122334455667788, %%r12\n\t"
        "movabs $0x99aabbccddeeff00, %%r13\n\t"
        "movabs $0x0123456789abcdef, %%r14\n\t"
        "movabs $0xfedcba9876543210, %%r15\n\t"
        "movabs $0xd1d1000000000006, %%rdi\n\t"
        "movl $1, regs_loaded(%%rip)\n\t"
        ".globl spin_here\n"
        "spin_here:\n\t"
        "jmp spin_here\n\t"
        :
        : "D"(&known)
        : "rax", "rbx", "rcx", "rdx", "rsi", "r8", "r9", "r10", "r11", "r12", "r13", "r14",
          "r15", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8",
          "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "memory", "cc");
    __builtin_unreachable();
}

static void *spinner(void *a)
{
    (void)a;
    spin_forever();
    return NULL;
}

/* PKU usable: the CPU has it and the OS enabled it (CPUID.7.0:ECX.OSPKE). */
static int detect_pku(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d))
        return 0;
    return (c >> 4) & 1;
}

/* AMX usable: the CPU has AMX-TILE (CPUID.7.0:EDX bit 24) and the kernel
 * grants this process tile data (Linux 5.16+). */
static int detect_amx(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !((d >> 24) & 1))
        return 0;
    return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
}

int main(void)
{
    pthread_t t;
    __builtin_cpu_init();
    /* libgcc's checks include the OS having enabled the state in XCR0. */
    have_avx = !!__builtin_cpu_supports("avx");
    have_avx512 = !!__builtin_cpu_supports("avx512f");
    have_avx512bw = have_avx512 && __builtin_cpu_supports("avx512bw");
    have_pku = detect_pku();
    have_amx = detect_amx();
    fill_known();
    if (pthread_create(&t, NULL, spinner, NULL) != 0) {
        perror("pthread_create");
        return 1;
    }
    while (!regs_loaded)
        sched_yield();
    printf("ready pid=%d main=%d spinner=%d avx=%d avx512=%d avx512bw=%d pku=%d amx=%d "
           "spin_rip=%p spinner_rsp=0x%llx spinner_fs=0x%llx main_fs=0x%llx\n",
           (int)getpid(), (int)syscall(SYS_gettid), (int)spinner_tid, have_avx, have_avx512,
           have_avx512bw, have_pku, have_amx, (void *)spin_here,
           (unsigned long long)spinner_rsp, (unsigned long long)spinner_fs,
           (unsigned long long)fs_base());
    fflush(stdout);
    for (;;)
        pause();
}
