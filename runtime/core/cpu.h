/*
 * cpu.h - the one CPU dispatch configuration that every fast path asks.
 *
 * CPUID (and XGETBV, whether the OS saves the vector registers) is read
 * once per process. A fast path may use a feature when the CPU has it and
 * the cap in force allows it. The cap is the lowest of
 *   - the process cap: the environment variable NBL_ISA=scalar|avx2|avx512|amx,
 *     read once (NBL_INT4_ISA=scalar|avx2|vnni, its older name, when NBL_ISA
 *     is not set; other values: no cap, noted in nbl_kernel_info);
 *   - the thread's cap: that of the session running on it
 *     (nbl_session_options.isa), which the executor sets around planning
 *     and runs and the thread pool carries into its workers for each job.
 * Levels:
 *   scalar  the x86-64 baseline only (SSE2, which the compiler may use in
 *           any C code): every AVX, AVX2, FMA and AVX-512 path is off, as
 *           on a CPU without AVX;
 *   avx2    AVX, AVX2 and FMA (and F16C), no AVX-512 code at all;
 *   avx512  AVX-512 F/BW/VL/DQ and VNNI, no AMX tiles;
 *   amx     everything the CPU has, the AMX tiles too (AMX-TILE and
 *           AMX-INT8, usable only when Linux granted the process the tile
 *           state, asked for once by the detection).
 * OpenBLAS, when nibble is built with it, is not capped: it picks its own
 * kernels from the CPU (or from OPENBLAS_CORETYPE, which caps it).
 */
#ifndef NBL_CPU_H
#define NBL_CPU_H

#include <stdatomic.h>

#include "nibble.h"
#include <stdatomic.h>

/* CPU features, as a bit mask. */
enum {
  NBL_CPU_AVX = 1u << 0,
  NBL_CPU_AVX2 = 1u << 1,
  NBL_CPU_FMA = 1u << 2,
  NBL_CPU_F16C = 1u << 3,
  NBL_CPU_AVX512F = 1u << 4,
  NBL_CPU_AVX512BW = 1u << 5,
  NBL_CPU_AVX512VL = 1u << 6,
  NBL_CPU_AVX512DQ = 1u << 7,
  NBL_CPU_AVX512VNNI = 1u << 8,
  NBL_CPU_AMX = 1u << 9, /* AMX-TILE + AMX-INT8, the OS saving and granting the tile state */
};

/* internal: the state the inline queries below read (cpu.c) */
extern unsigned nbl_cpu_allowed_[5]; /* per cap (nbl_isa): the features it leaves usable */
extern nbl_isa nbl_cpu_env_cap_;
extern _Thread_local nbl_isa nbl_cpu_tl_cap_ __attribute__((tls_model("initial-exec")));
extern _Atomic int nbl_cpu_ready_;
void nbl_cpu_init_(void);

/* The features usable on this thread now: the CPU's, lowered by the cap in
 * force. A few instructions, no call once initialized: ask where the path is
 * chosen (the cap depends on the session that runs), not once per process. */
static inline unsigned nbl_cpu_allowed(void) {
  if (!atomic_load_explicit(&nbl_cpu_ready_, memory_order_acquire)) nbl_cpu_init_();
  nbl_isa cap = nbl_cpu_env_cap_, tl = nbl_cpu_tl_cap_;
  if (tl != NBL_ISA_DEFAULT && (cap == NBL_ISA_DEFAULT || tl < cap)) cap = tl;
  return nbl_cpu_allowed_[cap];
}

/* 1 when every feature of `mask` may be used on this thread now: the CPU
 * (and OS) support it and the cap in force allows it. */
static inline int nbl_cpu_has(unsigned mask) { return (nbl_cpu_allowed() & mask) == mask; }

/* The features the CPU and OS support, ignoring every cap. */
unsigned nbl_cpu_features(void);

/* The level in force on this thread (the CPU's best, lowered by the caps). */
nbl_isa nbl_cpu_level(void);
/* The CPU's best level, no cap. */
nbl_isa nbl_cpu_best_level(void);

/* This thread's cap (NBL_ISA_DEFAULT: none); set returns the previous one,
 * to be restored by the caller when its scope ends. */
nbl_isa nbl_cpu_thread_cap(void);
nbl_isa nbl_cpu_set_thread_cap(nbl_isa cap);

/* The process cap from the environment (NBL_ISA_DEFAULT: none), and the
 * variable it came from ("NBL_ISA", "NBL_INT4_ISA", or NULL). *bad (may be
 * NULL) receives the value of a variable that is set but not understood
 * (NULL if none). */
nbl_isa nbl_cpu_env_cap(const char **var, const char **bad);

/* "scalar", "avx2", "avx512", "amx" ("default" for NBL_ISA_DEFAULT). */
const char *nbl_isa_name(nbl_isa isa);

#endif /* NBL_CPU_H */
