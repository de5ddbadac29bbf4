/*
 * runtime/kernels/unary_f32.c - the vector float32 kernels of the costly
 * unary functions (unary_f32.h): one body (unary_f32_body.h) compiled for
 * AVX-512, AVX2 + FMA and the x86-64 baseline, and the dispatch between them.
 *
 * Why double inside: in float, exp's last rounding alone costs about an ulp,
 * Gelu's negative tail needs x^2 and the tanh form's argument to more
 * digits than float has, and denormal results need care at every step. The
 * widened lanes cost half the vector width, which leaves these kernels
 * bound by memory at the sizes that matter, and every result is one
 * rounding of a value good to 1e-10.
 *
 * Floating-point contraction is allowed here (a * b + c as one FMA where the
 * target has it): at double precision it changes no float result but the
 * rare tie, and it shortens every polynomial.
 */
#include "runtime/kernels/unary_f32.h"

#include <math.h>
#include <string.h>

#include "runtime/core/cpu.h"

#pragma GCC optimize("fp-contract=fast")

#define UF(name) uf_##name##_avx512
#define UF_VN 8
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512vl,avx512bw,avx2,fma")
#include "runtime/kernels/unary_f32_body.h"
#pragma GCC pop_options
#undef UF
#undef UF_VN

#define UF(name) uf_##name##_avx2
#define UF_VN 4
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#include "runtime/kernels/unary_f32_body.h"
#pragma GCC pop_options
#undef UF
#undef UF_VN

#define UF(name) uf_##name##_base
#define UF_VN 2
#include "runtime/kernels/unary_f32_body.h"
#undef UF
#undef UF_VN

#define UF_AVX512 (NBL_CPU_AVX512F | NBL_CPU_AVX512DQ | NBL_CPU_AVX512VL | NBL_CPU_AVX512BW)
#define UF_AVX2 (NBL_CPU_AVX2 | NBL_CPU_FMA)

/* fn's variant for this CPU (under the thread's cap) called with the
 * arguments: the one dispatch of every entry point */
#define UF_DISPATCH(fn, ...)                                                                                        \
  do {                                                                                                             \
    if (nbl_cpu_has(UF_AVX512)) fn##_avx512(__VA_ARGS__);                                                          \
    else if (nbl_cpu_has(UF_AVX2)) fn##_avx2(__VA_ARGS__);                                                         \
    else fn##_base(__VA_ARGS__);                                                                                   \
  } while (0)

nbl_status nbl_unary_f32(nbl_uf32 op, const float *x, float *y, int64_t n, double alpha, double beta) {
  if ((unsigned)op >= NBL_UF_COUNT || n < 0 || (n > 0 && (!x || !y))) return NBL_ERR_INVALID_ARGUMENT;
  if (n == 0) return NBL_OK;
  UF_DISPATCH(uf_run, op, x, y, n, alpha, beta);
  return NBL_OK;
}

nbl_status nbl_softmax_f32(const float *x, float *y, int64_t rows, int64_t n, int log_out) {
  if (rows < 0 || n < 0 || (rows > 0 && n > 0 && (!x || !y))) return NBL_ERR_INVALID_ARGUMENT;
  if (rows == 0 || n == 0) return NBL_OK;
  UF_DISPATCH(uf_softmax_rows, x, y, rows, n, log_out);
  return NBL_OK;
}

nbl_status nbl_unary_f32_mul(nbl_uf32 op, const float *x, float *y, int64_t n, double alpha, double beta,
                             int act_first) {
  if ((op != NBL_UF_SIGMOID && op != NBL_UF_HARDSIGMOID) || n < 0 || (n > 0 && (!x || !y)))
    return NBL_ERR_INVALID_ARGUMENT;
  if (n == 0) return NBL_OK;
  UF_DISPATCH(uf_run_mul, op, x, y, n, alpha, beta, act_first);
  return NBL_OK;
}

nbl_status nbl_unary_f32_gelu_erf(const float *x, float *y, int64_t n, float c1, float c2, float c3,
                                  int x_first) {
  if (n < 0 || (n > 0 && (!x || !y)) || c1 != c1 || c2 != c2 || c3 != c3) return NBL_ERR_INVALID_ARGUMENT;
  if (n == 0) return NBL_OK;
  UF_DISPATCH(uf_run_gelu_erf, x, y, n, c1, c2, c3, x_first);
  return NBL_OK;
}

const char *nbl_unary_f32_variant(void) {
  return nbl_cpu_has(UF_AVX512) ? "avx512" : nbl_cpu_has(UF_AVX2) ? "avx2" : "scalar";
}
