/*
 * runtime/kernels/unary_f32.h - the vector float32 kernels of the costly
 * elementwise functions and activations (Exp, Sigmoid, Tanh, Erf, Gelu and
 * its tanh form, Softplus, Mish, HardSigmoid, HardSwish), which the float32
 * fast path of runtime/ops/elementwise_unary.c calls (the ops' table lines
 * stay there).
 *
 * Each element is widened to double and computed there with polynomial
 * approximations (range-reduced exp, a series for tanh near 0, a fit of erf
 * near 0 and of erfc(z) exp(z^2) in its tail) accurate to about 1e-10, then
 * rounded once to float: the result is within about half an ulp of the
 * exact one over the whole float range, denormal results and the far tails
 * of Gelu included (where float formulas lose every digit), and NaN, +-Inf
 * and -0 come out as the double reference path (un_f) gives them. Variants:
 * AVX-512 (8 double lanes), AVX2 + FMA (4), and the x86-64 baseline (SSE2, 2),
 * chosen per call by nbl_cpu_has(), so NBL_ISA and session caps apply.
 */
#ifndef NBL_KERNELS_UNARY_F32_H
#define NBL_KERNELS_UNARY_F32_H

#include <stdint.h>

#include "nibble_types.h"

typedef enum nbl_uf32 {
  NBL_UF_EXP,
  NBL_UF_SIGMOID,
  NBL_UF_TANH,
  NBL_UF_ERF,
  NBL_UF_GELU,      /* 0.5 x (1 + erf(x / sqrt 2)) */
  NBL_UF_GELU_TANH, /* 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) */
  NBL_UF_SOFTPLUS,  /* log(1 + exp x) */
  NBL_UF_MISH,      /* x tanh(softplus x) */
  NBL_UF_HARDSIGMOID, /* clamp(alpha x + beta, 0, 1) */
  NBL_UF_HARDSWISH,   /* x clamp(x / 6 + 1/2, 0, 1) */
  NBL_UF_COUNT
} nbl_uf32;

/* y[i] = op(x[i]) for i < n (y may be x). alpha and beta: HardSigmoid's,
 * ignored by the others. NBL_ERR_INVALID_ARGUMENT for an unknown op, n < 0,
 * or NULL data with n > 0. */
nbl_status nbl_unary_f32(nbl_uf32 op, const float *x, float *y, int64_t n, double alpha, double beta);

/* Softmax (log_out 0) or LogSoftmax (log_out 1) of `rows` contiguous rows
 * of n floats (y may be x): per row m = max, d = x - m in double, s = sum of
 * exp(d), y = exp(d) / s or d - log(s), each rounded once to float (the
 * float32 fast path of runtime/ops/reduce.c; within an ulp of its double
 * reference path, NaN where it gives NaN). NBL_ERR_INVALID_ARGUMENT for
 * negative counts or NULL data. */
nbl_status nbl_softmax_f32(const float *x, float *y, int64_t rows, int64_t n, int log_out);

/* y[i] = x[i] * op(x[i]) for i < n as ONNX's Mul(x, op(x)) gives it on the
 * float results of nbl_unary_f32 (act_first: Mul(op(x), x)), bit for bit,
 * NaN included (a NaN first operand of Mul gives that operand, quieted), in
 * one pass: SiLU and HardSwish written out (runtime/fusions/fuse_silu.c). op
 * NBL_UF_SIGMOID or NBL_UF_HARDSIGMOID (alpha, beta: its); y may be x.
 * NBL_ERR_INVALID_ARGUMENT for another op, n < 0, or NULL data with n > 0. */
nbl_status nbl_unary_f32_mul(nbl_uf32 op, const float *x, float *y, int64_t n, double alpha, double beta,
                             int act_first);

/* y[i] = Mul(Mul(x, Add(Erf(Div(x, c1)), c2)), c3) for i < n as the five
 * ONNX ops give it on float32 (x / c1, the Erf of nbl_unary_f32 on that,
 * + c2, x * that (x_first; else that * x), * c3, each rounded to float),
 * bit for bit, NaN included, in one pass: GELU in its erf form written out
 * (runtime/fusions/fuse_gelu.c). y may be x. NBL_ERR_INVALID_ARGUMENT for a
 * NaN constant, n < 0, or NULL data with n > 0. */
nbl_status nbl_unary_f32_gelu_erf(const float *x, float *y, int64_t n, float c1, float c2, float c3,
                                  int x_first);

/* The variant nbl_unary_f32 runs on this thread now: "avx512", "avx2" or
 * "scalar" (the baseline), for tests and kernel info. */
const char *nbl_unary_f32_variant(void);

#endif /* NBL_KERNELS_UNARY_F32_H */
