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

nbl_status nbl_unary_f32(nbl_uf32 op, const float *x, float *y, int64_t n, double alpha, double beta) {
  if ((unsigned)op >= NBL_UF_COUNT || n < 0 || (n > 0 && (!x || !y))) return NBL_ERR_INVALID_ARGUMENT;
  if (n == 0) return NBL_OK;
  if (nbl_cpu_has(UF_AVX512))
    uf_run_avx512(op, x, y, n, alpha, beta);
  else if (nbl_cpu_has(UF_AVX2))
    uf_run_avx2(op, x, y, n, alpha, beta);
  else
    uf_run_base(op, x, y, n, alpha, beta);
  return NBL_OK;
}

nbl_status nbl_softmax_f32(const float *x, float *y, int64_t rows, int64_t n, int log_out) {
  if (rows < 0 || n < 0 || (rows > 0 && n > 0 && (!x || !y))) return NBL_ERR_INVALID_ARGUMENT;
  if (rows == 0 || n == 0) return NBL_OK;
  if (nbl_cpu_has(UF_AVX512))
    uf_softmax_rows_avx512(x, y, rows, n, log_out);
  else if (nbl_cpu_has(UF_AVX2))
    uf_softmax_rows_avx2(x, y, rows, n, log_out);
  else
    uf_softmax_rows_base(x, y, rows, n, log_out);
  return NBL_OK;
}

nbl_status nbl_unary_f32_mul(nbl_uf32 op, const float *x, float *y, int64_t n, double alpha, double beta,
                             int act_first) {
  if ((op != NBL_UF_SIGMOID && op != NBL_UF_HARDSIGMOID) || n < 0 || (n > 0 && (!x || !y)))
    return NBL_ERR_INVALID_ARGUMENT;
  if (n == 0) return NBL_OK;
  if (nbl_cpu_has(UF_AVX512))
    uf_run_mul_avx512(op, x, y, n, alpha, beta, act_first);
  else if (nbl_cpu_has(UF_AVX2))
    uf_run_mul_avx2(op, x, y, n, alpha, beta, act_first);
  else
    uf_run_mul_base(op, x, y, n, alpha, beta, act_first);
  return NBL_OK;
}

nbl_status nbl_unary_f32_gelu_erf(const float *x, float *y, int64_t n, float c1, float c2, float c3,
                                  int x_first) {
  if (n < 0 || (n > 0 && (!x || !y)) || c1 != c1 || c2 != c2 || c3 != c3) return NBL_ERR_INVALID_ARGUMENT;
  if (n == 0) return NBL_OK;
  if (nbl_cpu_has(UF_AVX512))
    uf_run_gelu_erf_avx512(x, y, n, c1, c2, c3, x_first);
  else if (nbl_cpu_has(UF_AVX2))
    uf_run_gelu_erf_avx2(x, y, n, c1, c2, c3, x_first);
  else
    uf_run_gelu_erf_base(x, y, n, c1, c2, c3, x_first);
  return NBL_OK;
}

const char *nbl_unary_f32_variant(void) {
  return nbl_cpu_has(UF_AVX512) ? "avx512" : nbl_cpu_has(UF_AVX2) ? "avx2" : "scalar";
}
