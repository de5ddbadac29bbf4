/* cpu.c - the CPU dispatch configuration; see cpu.h. */
#include "runtime/core/cpu.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define NBL_CPU_X86 1
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#else
#define NBL_CPU_X86 0
#endif

/* Features each level allows. */
#define LEVEL_AVX2_MASK (NBL_CPU_AVX | NBL_CPU_AVX2 | NBL_CPU_FMA | NBL_CPU_F16C)
static const unsigned k_level_mask[5] = {
    [NBL_ISA_DEFAULT] = ~0u,
    [NBL_ISA_SCALAR] = 0,
    [NBL_ISA_AVX2] = LEVEL_AVX2_MASK,
    [NBL_ISA_AVX512] = ~(unsigned)NBL_CPU_AMX,
    [NBL_ISA_AMX] = ~0u,
};

static unsigned g_features;
static nbl_isa g_best;
static const char *g_env_var, *g_env_bad;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
/* read by the inline queries of cpu.h; the thread's cap with initial-exec
 * TLS: a load from the thread pointer, not a call (fast paths ask for every
 * block) */
unsigned nbl_cpu_allowed_[5];
nbl_isa nbl_cpu_env_cap_;
_Thread_local nbl_isa nbl_cpu_tl_cap_ __attribute__((tls_model("initial-exec")));
_Atomic int nbl_cpu_ready_;

#if NBL_CPU_X86
static unsigned long long xgetbv0(void) {
  unsigned eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return ((unsigned long long)edx << 32) | eax;
}
#endif

static unsigned detect(void) {
  unsigned f = 0;
#if NBL_CPU_X86
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return 0; /* no OSXSAVE */
  unsigned long long xcr = xgetbv0();
  int ymm = (xcr & 0x6) == 0x6, zmm = (xcr & 0xe6) == 0xe6;
  if (!ymm) return 0;
  if (c & (1u << 28)) f |= NBL_CPU_AVX;
  if (c & (1u << 12)) f |= NBL_CPU_FMA;
  if (c & (1u << 29)) f |= NBL_CPU_F16C;
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
    if (b & (1u << 5)) f |= NBL_CPU_AVX2;
    if (zmm) {
      if (b & (1u << 16)) f |= NBL_CPU_AVX512F;
      if (b & (1u << 17)) f |= NBL_CPU_AVX512DQ;
      if (b & (1u << 30)) f |= NBL_CPU_AVX512BW;
      if (b & (1u << 31)) f |= NBL_CPU_AVX512VL;
      if (c & (1u << 11)) f |= NBL_CPU_AVX512VNNI;
    }
#if defined(__linux__) && defined(__x86_64__)
    /* AMX-TILE (EDX 24) and AMX-INT8 (EDX 25), the tile state in XCR0 (bits
     * 17, 18) and Linux's leave to use it (ARCH_REQ_XCOMP_PERM 0x1023 for
     * XFEATURE_XTILEDATA 18; it fails on kernels before 5.16: no AMX) */
    if ((d & (3u << 24)) == (3u << 24) && (xcr & 0x60000) == 0x60000 && (f & NBL_CPU_AVX512F) &&
        syscall(SYS_arch_prctl, 0x1023, 18) == 0)
      f |= NBL_CPU_AMX;
#endif
  }
  if (!(f & NBL_CPU_AVX512F)) f &= ~(unsigned)(NBL_CPU_AVX512DQ | NBL_CPU_AVX512BW |
                                               NBL_CPU_AVX512VL | NBL_CPU_AVX512VNNI);
#endif
  return f;
}

static int parse_level(const char *s, int alias, nbl_isa *out) {
  if (!strcmp(s, "scalar")) *out = NBL_ISA_SCALAR;
  else if (!strcmp(s, "avx2")) *out = NBL_ISA_AVX2;
  else if (!strcmp(s, "avx512") || (alias && !strcmp(s, "vnni"))) *out = NBL_ISA_AVX512;
  else if (!strcmp(s, "amx")) *out = NBL_ISA_AMX;
  else return -1;
  return 0;
}

static void init(void) {
  g_features = detect();
  g_best = (g_features & NBL_CPU_AVX512F)                    ? NBL_ISA_AVX512
           : (g_features & (NBL_CPU_AVX2 | NBL_CPU_FMA)) ==
                     (NBL_CPU_AVX2 | NBL_CPU_FMA)            ? NBL_ISA_AVX2
                                                             : NBL_ISA_SCALAR;
  const char *v = getenv("NBL_ISA");
  const char *name = "NBL_ISA";
  if (!v || !*v) {
    v = getenv("NBL_INT4_ISA");
    name = "NBL_INT4_ISA";
  }
  if (v && *v) {
    if (parse_level(v, !strcmp(name, "NBL_INT4_ISA"), &nbl_cpu_env_cap_) == 0) {
      g_env_var = name;
    } else {
      nbl_cpu_env_cap_ = NBL_ISA_DEFAULT;
      g_env_bad = strdup(v);
      g_env_var = name;
    }
  }
  for (int c = 0; c < 5; c++) nbl_cpu_allowed_[c] = g_features & k_level_mask[c];
  atomic_store_explicit(&nbl_cpu_ready_, 1, memory_order_release);
}

void nbl_cpu_init_(void) { pthread_once(&g_once, init); }

static inline void ready(void) {
  if (!atomic_load_explicit(&nbl_cpu_ready_, memory_order_acquire)) nbl_cpu_init_();
}

/* The cap in force on this thread (NBL_ISA_DEFAULT: none). */
static nbl_isa cap_now(void) {
  nbl_isa cap = nbl_cpu_env_cap_, tl = nbl_cpu_tl_cap_;
  if (tl != NBL_ISA_DEFAULT && (cap == NBL_ISA_DEFAULT || tl < cap)) cap = tl;
  return cap;
}

unsigned nbl_cpu_features(void) {
  ready();
  return g_features;
}

nbl_isa nbl_cpu_level(void) {
  ready();
  nbl_isa cap = cap_now();
  return cap != NBL_ISA_DEFAULT && cap < g_best ? cap : g_best;
}

nbl_isa nbl_cpu_best_level(void) {
  ready();
  return g_best;
}

nbl_isa nbl_cpu_thread_cap(void) { return nbl_cpu_tl_cap_; }

nbl_isa nbl_cpu_set_thread_cap(nbl_isa cap) {
  nbl_isa prev = nbl_cpu_tl_cap_;
  nbl_cpu_tl_cap_ = cap >= NBL_ISA_SCALAR && cap <= NBL_ISA_AMX ? cap : NBL_ISA_DEFAULT;
  return prev;
}

nbl_isa nbl_cpu_env_cap(const char **var, const char **bad) {
  ready();
  if (var) *var = g_env_var;
  if (bad) *bad = g_env_bad;
  return nbl_cpu_env_cap_;
}

const char *nbl_isa_name(nbl_isa isa) {
  switch (isa) {
  case NBL_ISA_SCALAR: return "scalar";
  case NBL_ISA_AVX2: return "avx2";
  case NBL_ISA_AVX512: return "avx512";
  case NBL_ISA_AMX: return "amx";
  default: return "default";
  }
}
