/* info.c - nbl_kernel_info (nibble.h): the kernels the fast paths use on
 * this thread, as the CPU and the ISA cap in force allow them. */
#include <stdio.h>

#include "runtime/core/cpu.h"
#include "runtime/kernels/gemm.h"
#include "runtime/kernels/int4_backward.h"
#include "runtime/kernels/int4_gemm.h"

const char *nbl_kernel_info(void) {
  static _Thread_local char buf[384];
  size_t cap = sizeof buf, n = 0;
  int k = snprintf(buf, cap, "FP32 products: %s; FP32 convolutions: %s; INT4: %s", nbl_gemm_info(),
                   nbl_cpu_has(NBL_CPU_AVX512F) ? "avx512" : "as the products",
                   nbl_i4_isa_name(nbl_i4_best_isa()));
  n = k > 0 ? (size_t)k : 0;
  if (nbl_i4b_amx_on(nbl_i4b_best_isa()) && n < cap) { /* 4-bit training's integer products */
    k = snprintf(buf + n, cap - n, "; INT4 training products: AMX tiles");
    n += k > 0 ? (size_t)k : 0;
  }
  const char *var = NULL, *bad = NULL;
  nbl_isa env = nbl_cpu_env_cap(&var, &bad), level = nbl_cpu_level();
  if (level < nbl_cpu_best_level() && n < cap) {
    /* the cap that binds: the environment's unless the session's is lower */
    nbl_isa tl = nbl_cpu_thread_cap();
    int from_env = env != NBL_ISA_DEFAULT && (tl == NBL_ISA_DEFAULT || env <= tl);
    k = snprintf(buf + n, cap - n, "; ISA cap: %s (%s%s)", nbl_isa_name(level),
                 from_env ? var : "session option",
#ifdef NBL_HAVE_CBLAS
                 "; BLAS not capped"
#else
                 ""
#endif
    );
    n += k > 0 ? (size_t)k : 0;
  }
  if (bad && n < cap) snprintf(buf + n, cap - n, "; %s='%s' not understood: no cap", var, bad);
  return buf;
}
