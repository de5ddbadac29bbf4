/* q4_train.h - QuantizeInt4 and its straight-through gradient as training
 * graphs run them: per step, on tensors that change every step (the fused
 * INT4 path of inference packs constant weights once; here both the
 * forward quantizer and QuantizeInt4Grad read fresh activations and
 * weights). Vectorized (AVX-512, AVX2) and split across the kernel's
 * threads; results identical to runtime/formats/int4.c's (nbl_q4_choose,
 * nbl_q4_fake_quant, nbl_q4_passes). */
#ifndef NBL_Q4_TRAIN_H
#define NBL_Q4_TRAIN_H

#include "runtime/core/kernel.h"
#include "runtime/formats/int4.h"

/* The quantizer's parameters for X (nbl_q4_choose's), with a parallel vector
 * scan for scale_source=max. Returns 0 when the fast kernels below apply:
 * half-even rounding, scale_source max, sawb, mse or fixed (not pact), every
 * element of X finite; -1 otherwise (the caller takes the reference path;
 * *p is then undefined). */
int nbl_q4t_params(nbl_kctx *c, const nbl_q4_config *cfg, const nbl_rt_tensor *X, nbl_q4_params *p);

/* y = nbl_q4_fake_quant(x) for parameters nbl_q4t_params accepted, and
 * (codes not NULL) QuantizeInt4's codes output, nbl_q4_codes8(x), in the
 * same sweep; y NULL (with codes): the codes alone. */
void nbl_q4t_fake_quant(nbl_kctx *c, const nbl_q4_config *cfg, const nbl_q4_params *p, const float *x,
                        float *y, int8_t *codes, int64_t n);

/* dx[i] = nbl_q4_passes(x[i]) ? g[i] : 0 for parameters nbl_q4t_params
 * accepted (the rounded x / scale + zero inside [qmin, qmax]). */
void nbl_q4t_ste(nbl_kctx *c, const nbl_q4_config *cfg, const nbl_q4_params *p, const float *x,
                 const float *g, float *dx, int64_t n);

/* The straight-through mask of nbl_q4t_ste as an interval: for every finite
 * float x, nearbyintf(x / p->scale) + p->zero lies in [p->qmin, p->qmax]
 * exactly when *lo <= x <= *hi (the division and rounding are monotone in
 * x, so the passing floats are an interval; its ends are found by bisection
 * over the floats with the same float operations). *lo = +Inf when no float
 * passes. Needs p->scale > 0 (nbl_q4t_params' parameters). */
void nbl_q4t_ste_bounds(const nbl_q4_params *p, float *lo, float *hi);

#endif /* NBL_Q4_TRAIN_H */
