/* runtime/ops/grad_elementwise.c - op family 'grad_elementwise': backward ops of
 * the element-wise activations, Dropout, broadcasting and QuantizeInt4 (the
 * kernel contract is in runtime/core/kernel.h).
 *
 * Names and signatures are ONNX Runtime's training ops (domain com.microsoft,
 * version 1) except QuantizeInt4Grad, which is nibble's own (ai.nibble, 1).
 * T is float32 or float64 (float16/bfloat16 go through the double path);
 * every input marked T has the element type of dY; dX has dY's shape and
 * type. The kernels compute in double, except where the result is a
 * selection or one product (ReluGrad, the dropout masks: float32 directly,
 * the same values). Shapes must match exactly (no broadcasting).
 *
 * ReluGrad (com.microsoft 1)
 *   inputs:  dY (T), X (T, the Relu input; Relu's output Y works too)
 *   outputs: dX (T) = dY * (X > 0)
 * SigmoidGrad (com.microsoft 1)
 *   inputs:  dY (T), Y (T, the Sigmoid OUTPUT)
 *   outputs: dX (T) = dY * Y * (1 - Y)
 * TanhGrad (com.microsoft 1)
 *   inputs:  dY (T), Y (T, the Tanh OUTPUT)
 *   outputs: dX (T) = dY * (1 - Y^2)
 * GeluGrad (com.microsoft 1)  -- for Gelu(approximate="none")
 *   inputs:  dY (T), X (T, the Gelu input)
 *   outputs: dX (T) = dY * (Phi(x) + x * phi(x)), Phi/phi the normal cdf/pdf
 * FastGeluGrad (com.microsoft 1)  -- for Gelu(approximate="tanh")
 *   inputs:  dY (T), X (T)
 *   outputs: dX (T) = dY * (0.5 (1 + t) + 0.5 x (1 - t^2) a (1 + 3 g x^2)),
 *            t = tanh(a (x + g x^3)), a = sqrt(2/pi), g = 0.044715
 * LeakyReluGrad (com.microsoft 1)
 *   inputs:  dY (T), Y (T, the LeakyRelu OUTPUT; X works too when alpha > 0)
 *   outputs: dX (T) = Y > 0 ? dY : alpha * dY
 *   attributes: alpha (float, default 0.01)
 * DropoutGrad (com.microsoft 1)
 *   inputs:  dy (T), mask (bool, dy's shape: the Dropout mask output),
 *            ratio (optional float/double scalar, default 0.5),
 *            training_mode (optional bool scalar; accepted and ignored, as ORT's CPU kernel)
 *   outputs: dx (T) = ratio == 0 ? dy : mask * dy / (1 - ratio); ratio in [0, 1)
 * BitmaskDropoutGrad (com.microsoft 1)
 *   inputs:  dy (T), mask (uint32, ceil(numel/32) words: element i kept when
 *            bit i % 32 of word i / 32 is set), ratio (optional, as above),
 *            training_mode (optional bool, ignored)
 *   outputs: dx (T), as DropoutGrad with the bit for mask
 * BroadcastGradientArgs (com.microsoft 1)
 *   inputs:  a_shape (int64 1-D), b_shape (int64 1-D): the shapes of the two
 *            operands of a broadcasting binary op (Add/Sub/Mul/Div/Pow, MatMul batch dims)
 *   outputs: a_axes (int64 1-D, optional), b_axes (int64 1-D, optional): the
 *            axes of the broadcast result (rank max(ra, rb)) to sum dY over to
 *            get dA / dB (then Reshape to a_shape / b_shape), listed from the
 *            last axis to the first; empty when no reduction is needed.
 *            Incompatible shapes are an error.
 * QuantizeInt4Grad (ai.nibble 1)  -- the straight-through gradient of QuantizeInt4
 *   inputs:  dY (float32), X (float32, the QuantizeInt4 input),
 *            alpha (optional float32 scalar; required for scale_source=pact),
 *            scale (optional float32 scalar > 0), zero_point (optional int8
 *            scalar): the forward's outputs 1 and 2, which QuantizeInt4's
 *            gradient rule wires for scale_source max and sawb
 *   outputs: dX (float32, X's shape), dAlpha (optional float32 scalar)
 *   attributes: those of QuantizeInt4 (bits, mode, scale_source, scale, narrow,
 *            rounding, seed), read the same way so the clip range is the forward's
 *   semantics: the quantization parameters are the forward's: with
 *            scale_source max or sawb and input scale present (and
 *            zero_point, required for mode=affine; 0 when absent for
 *            symmetric) they are those inputs, with no pass over X;
 *            otherwise they are chosen from X exactly as the forward does
 *            (runtime/formats/int4.h; the same values, so both give the
 *            same dX). dX = dY where the
 *            forward's code before its clamp, round(X/s) + z, lies in
 *            [qmin, qmax] (nbl_q4_passes: PyTorch's fake-quantize mask; PACT:
 *            0 <= X <= alpha) and 0 elsewhere; PACT: dAlpha = sum(dY * (X > alpha)),
 *            other modes: 0.
 */

#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "runtime/core/cpu.h"
#include "runtime/core/shape.h"
#include "runtime/kernels/gemm.h"
#include "runtime/core/grad.h"
#include "runtime/ops/grad_util.h"
#include "runtime/kernels/q4_train.h"
#include "runtime/ops/nibble.h"

/* ------------------------------------------------------------------ activations */

enum { A_RELU, A_SIGMOID, A_TANH, A_GELU, A_FASTGELU, A_LEAKY };

/* The derivative factor of activation `kind` at v (the op's second input:
 * X for Relu/Gelu, Y for Sigmoid/Tanh/LeakyRelu), so that dX = dY * factor. */
static double act_factor(int kind, double v, double alpha) {
  switch (kind) {
  case A_RELU: return v > 0 ? 1.0 : 0.0;
  case A_SIGMOID: return v * (1.0 - v);
  case A_TANH: return 1.0 - v * v;
  case A_GELU: /* Phi(x) + x phi(x) */
    return 0.5 * (1.0 + erf(v * M_SQRT1_2)) + v * exp(-0.5 * v * v) * (0.5 * M_2_SQRTPI * M_SQRT1_2);
  case A_FASTGELU: {
    const double a = sqrt(2.0 / M_PI), g = 0.044715;
    double t = tanh(a * (v + g * v * v * v));
    return 0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * a * (1.0 + 3.0 * g * v * v);
  }
  default: return v > 0 ? 1.0 : alpha; /* A_LEAKY */
  }
}

/* ReluGrad in float32: o = x > 0 ? g : 0 (a selection: the reference's
 * values exactly), 8 lanes at a time where the CPU has AVX, in parallel. */
typedef struct relu_task {
  const float *g, *x;
  float *o;
} relu_task;

#if defined(__x86_64__)
__attribute__((target("avx"))) static void relu_grad_avx(const float *g, const float *x, float *o, int64_t n) {
  int64_t i = 0;
  __m256 z = _mm256_setzero_ps();
  for (; i + 8 <= n; i += 8) {
    __m256 m = _mm256_cmp_ps(_mm256_loadu_ps(x + i), z, _CMP_GT_OQ);
    _mm256_storeu_ps(o + i, _mm256_and_ps(m, _mm256_loadu_ps(g + i)));
  }
  for (; i < n; i++) o[i] = x[i] > 0 ? g[i] : 0.0f;
}
#endif

static void relu_grad_run(void *arg, int64_t b, int64_t e) {
  const relu_task *t = arg;
#if defined(__x86_64__)
  if (nbl_cpu_has(NBL_CPU_AVX)) {
    relu_grad_avx(t->g + b, t->x + b, t->o + b, e - b);
    return;
  }
#endif
  for (int64_t i = b; i < e; i++) t->o[i] = t->x[i] > 0 ? t->g[i] : 0.0f;
}

/* dX = dY * factor(V): inputs dY (0) and V (1) of equal type and shape. */
static nbl_status act_grad(nbl_kctx *c, int kind, const char *vname) {
  nbl_status st = NBL_OK;
  const nbl_rt_tensor *dY = grad_need(c, 0, "dY", &st), *V = dY ? grad_need(c, 1, vname, &st) : NULL;
  if (!V) return st;
  if ((st = grad_check_float(c, dY, "dY")) || (st = grad_check_type(c, V, dY->dtype, vname, "dY")) ||
      (st = grad_check_same_shape(c, dY, V, "dY", vname)))
    return st;
  double alpha = kind == A_LEAKY ? nbl_attr_float(c->node, "alpha", 0.01f) : 0.0;
  if ((st = nbl_kctx_alloc_out(c, 0, dY->dtype, dY->rank, dY->dims))) return st;
  nbl_rt_tensor *dX = nbl_kctx_out(c, 0);
  int64_t n = dY->numel;
  if (kind == A_RELU && dY->dtype == NBL_DT_FLOAT && !c->reference) {
    relu_task t = {dY->data, V->data, dX->data};
    nbl_parallel_for(c, n, 1 << 14, relu_grad_run, &t);
    return NBL_OK;
  }
  double *g = nbl_to_f64(dY), *v = nbl_to_f64(V);
  if (!g || !v) {
    free(g);
    free(v);
    return grad_oom(c);
  }
  for (int64_t i = 0; i < n; i++) g[i] *= act_factor(kind, v[i], alpha);
  nbl_from_f64(dX, g);
  free(g);
  free(v);
  return NBL_OK;
}

static nbl_status k_relu_grad(nbl_kctx *c) { return act_grad(c, A_RELU, "X"); }
static nbl_status k_sigmoid_grad(nbl_kctx *c) { return act_grad(c, A_SIGMOID, "Y"); }
static nbl_status k_tanh_grad(nbl_kctx *c) { return act_grad(c, A_TANH, "Y"); }
static nbl_status k_gelu_grad(nbl_kctx *c) { return act_grad(c, A_GELU, "X"); }
static nbl_status k_fastgelu_grad(nbl_kctx *c) { return act_grad(c, A_FASTGELU, "X"); }
static nbl_status k_leakyrelu_grad(nbl_kctx *c) { return act_grad(c, A_LEAKY, "Y"); }

/* ------------------------------------------------------------------ dropout */

/* DropoutGrad (bitmask = 0: mask is bool, dy's shape) and BitmaskDropoutGrad
 * (bitmask = 1: mask is uint32 words, bit i % 32 of word i / 32). */
static nbl_status dropout_grad(nbl_kctx *c, int bitmask) {
  nbl_status st = NBL_OK;
  const nbl_rt_tensor *dY = grad_need(c, 0, "dy", &st), *M = dY ? grad_need(c, 1, "mask", &st) : NULL;
  if (!M) return st;
  const nbl_rt_tensor *R = grad_in(c, 2), *TM = grad_in(c, 3);
  if ((st = grad_check_float(c, dY, "dy"))) return st;
  int64_t n = dY->numel;
  if (bitmask) {
    if (M->dtype != NBL_DT_UINT32 || M->numel != (n + 31) / 32)
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "mask must be uint32 with %lld elements (one bit per element of dy)",
                      (long long)((n + 31) / 32));
  } else {
    if (M->dtype != NBL_DT_BOOL) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "mask must be bool");
    if ((st = grad_check_same_shape(c, dY, M, "dy", "mask"))) return st;
  }
  double ratio = 0.5;
  if (R) {
    if (!grad_is_float(R->dtype) || R->numel != 1)
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "ratio must be a float scalar");
    ratio = nbl_rt_get_f64(R, 0);
  }
  if (!(ratio >= 0.0 && ratio < 1.0))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "ratio %g is outside [0, 1)", ratio);
  if (TM && (TM->dtype != NBL_DT_BOOL || TM->numel != 1))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "training_mode must be a bool scalar");
  if ((st = nbl_kctx_alloc_out(c, 0, dY->dtype, dY->rank, dY->dims))) return st;
  nbl_rt_tensor *dX = nbl_kctx_out(c, 0);
  if (ratio == 0.0) return nbl_kctx_copy_out(c, 0, dY);
  const uint8_t *mb = M->data;
  const uint32_t *mw = M->data;
#define KEPT(i) (bitmask ? (mw[(i) >> 5] >> ((i)&31)) & 1u : mb[i] != 0)
  if (dY->dtype == NBL_DT_FLOAT) {
    const float *g = dY->data;
    float *o = dX->data, sc = (float)(1.0 / (1.0 - ratio));
    for (int64_t i = 0; i < n; i++) o[i] = KEPT(i) ? g[i] * sc : 0.0f;
    return NBL_OK;
  }
  double *g = nbl_to_f64(dY), sc = 1.0 / (1.0 - ratio);
  if (!g) return grad_oom(c);
  for (int64_t i = 0; i < n; i++) g[i] = KEPT(i) ? g[i] * sc : 0.0;
#undef KEPT
  nbl_from_f64(dX, g);
  free(g);
  return NBL_OK;
}

static nbl_status k_dropout_grad(nbl_kctx *c) { return dropout_grad(c, 0); }
static nbl_status k_bitmask_dropout_grad(nbl_kctx *c) { return dropout_grad(c, 1); }

/* ------------------------------------------------------------------ BroadcastGradientArgs */

static nbl_status k_broadcast_grad_args(nbl_kctx *c) {
  nbl_status st = NBL_OK;
  const nbl_rt_tensor *A = grad_need(c, 0, "a_shape", &st), *B = A ? grad_need(c, 1, "b_shape", &st) : NULL;
  if (!B) return st;
  int ra = 0, rb = 0;
  int64_t ad[NBL_MAX_RANK], bd[NBL_MAX_RANK];
  if ((st = grad_shape_input(c, A, "a_shape", &ra, ad)) || (st = grad_shape_input(c, B, "b_shape", &rb, bd)))
    return st;
  int64_t aax[NBL_MAX_RANK], bax[NBL_MAX_RANK];
  int na = 0, nb = 0, i = ra - 1, j = rb - 1, k = (ra > rb ? ra : rb) - 1;
  for (; i >= 0 && j >= 0; i--, j--, k--) {
    if (ad[i] == bd[j]) continue;
    if (ad[i] == 1) aax[na++] = k;
    else if (bd[j] == 1) bax[nb++] = k;
    else
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "shapes do not broadcast: dim %d is %lld in a, %lld in b",
                      k, (long long)ad[i], (long long)bd[j]);
  }
  for (; k >= 0; k--) { /* the leading dims only the longer shape has */
    if (i < 0 && j >= 0) aax[na++] = k;
    else if (j < 0 && i >= 0) bax[nb++] = k;
  }
  int64_t d;
  if (grad_want(c, 0)) {
    d = na;
    if ((st = nbl_kctx_alloc_out(c, 0, NBL_DT_INT64, 1, &d))) return st;
    if (na) memcpy(nbl_kctx_out(c, 0)->data, aax, sizeof(int64_t) * (size_t)na);
  }
  if (grad_want(c, 1)) {
    d = nb;
    if ((st = nbl_kctx_alloc_out(c, 1, NBL_DT_INT64, 1, &d))) return st;
    if (nb) memcpy(nbl_kctx_out(c, 1)->data, bax, sizeof(int64_t) * (size_t)nb);
  }
  return NBL_OK;
}

/* ------------------------------------------------------------------ QuantizeInt4Grad */

nbl_status nbl_q4_grad_given(nbl_kctx *c, const nbl_q4_config *cfg, const nbl_rt_tensor *scale,
                             const nbl_rt_tensor *zero, nbl_q4_params *p, int *have) {
  *have = 0;
  if (scale && (scale->dtype != NBL_DT_FLOAT || scale->numel != 1 || !isfinite(((const float *)scale->data)[0]) ||
                !(((const float *)scale->data)[0] > 0.0f)))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input scale must be a float32 scalar, finite and > 0");
  if (zero && (zero->dtype != NBL_DT_INT8 || zero->numel != 1))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input zero_point must be an int8 scalar");
  if (!scale || !nbl_q4_scale_from_data(cfg) ||
      (cfg->mode == NBL_Q4_AFFINE && !zero) || cfg->bits < 2 || cfg->bits > 8)
    return NBL_OK;
  memset(p, 0, sizeof *p);
  nbl_q4_range(cfg, &p->qmin, &p->qmax);
  p->scale = ((const float *)scale->data)[0];
  p->zero = zero ? ((const int8_t *)zero->data)[0] : 0;
  *have = 1;
  return NBL_OK;
}

/* The mask's parameters of QuantizeInt4Grad node c: the forward's (inputs 3
 * and 4, nbl_q4_grad_given) when wired, else chosen from X. */
static nbl_status q4_grad_params(nbl_kctx *c, const nbl_q4_config *cfg, const nbl_rt_tensor *X, nbl_q4_params *p) {
  int have;
  nbl_status st = nbl_q4_grad_given(c, cfg, grad_in(c, 3), grad_in(c, 4), p, &have);
  return st || have ? st : nbl_q4_kernel_params(c, cfg, X, grad_in(c, 2), p);
}

static nbl_status k_quantize_int4_grad(nbl_kctx *c) {
  nbl_status st = NBL_OK;
  const nbl_rt_tensor *dY = grad_need(c, 0, "dY", &st), *X = dY ? grad_need(c, 1, "X", &st) : NULL;
  if (!X) return st;
  if (dY->dtype != NBL_DT_FLOAT || X->dtype != NBL_DT_FLOAT)
    return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "dY and X must be float32 (got %s and %s)",
                    nbl_dtype_name(dY->dtype), nbl_dtype_name(X->dtype));
  if ((st = grad_check_same_shape(c, dY, X, "dY", "X"))) return st;
  nbl_q4_config cfg;
  if ((st = nbl_q4_attrs(c, &cfg))) return st;
  int pact = cfg.scale_source == NBL_Q4_SCALE_PACT;
  nbl_q4_params p;
  if ((st = q4_grad_params(c, &cfg, X, &p))) return st;
  if ((st = nbl_kctx_alloc_out(c, 0, NBL_DT_FLOAT, X->rank, X->dims))) return st;
  const float *g = dY->data, *x = X->data;
  float *dx = nbl_kctx_out(c, 0)->data;
  double da = 0.0;
  for (int64_t i = 0; i < X->numel; i++) {
    dx[i] = isfinite(x[i]) && nbl_q4_passes(&cfg, &p, x[i], (uint64_t)i) ? g[i] : 0.0f; /* NaN, Inf: 0 */
    if (pact && x[i] > p.clip_hi) da += g[i];
  }
  if (grad_want(c, 1)) {
    if ((st = nbl_kctx_alloc_out(c, 1, NBL_DT_FLOAT, 0, NULL))) return st;
    ((float *)nbl_kctx_out(c, 1)->data)[0] = (float)da;
  }
  return NBL_OK;
}

/* The fast kernel (training graphs run it every step): the vector mask
 * with the forward's parameters (inputs scale, zero_point) or those of a
 * parallel vector range scan, the same values as the reference
 * (runtime/kernels/q4_train.h); pact and stochastic rounding take the
 * reference, and so do non-finite elements when X must be scanned (with
 * given parameters the mask's interval excludes them as the reference). */
static nbl_status k_quantize_int4_grad_fast(nbl_kctx *c) {
  const nbl_rt_tensor *dY = grad_in(c, 0), *X = grad_in(c, 1);
  nbl_q4_config cfg;
  nbl_q4_params p;
  int have = 0;
  if (c->reference || !dY || !X || dY->dtype != NBL_DT_FLOAT || X->dtype != NBL_DT_FLOAT ||
      dY->numel != X->numel || grad_want(c, 1) || nbl_q4_attrs(c, &cfg) ||
      cfg.rounding != NBL_Q4_ROUND_HALF_EVEN || nbl_q4_grad_given(c, &cfg, grad_in(c, 3), grad_in(c, 4), &p, &have) ||
      (!have && nbl_q4t_params(c, &cfg, X, &p)))
    return k_quantize_int4_grad(c);
  nbl_status st = grad_check_same_shape(c, dY, X, "dY", "X");
  if (st || (st = nbl_kctx_alloc_out(c, 0, NBL_DT_FLOAT, X->rank, X->dims))) return st;
  nbl_q4t_ste(c, &cfg, &p, X->data, dY->data, nbl_kctx_out(c, 0)->data, X->numel);
  return NBL_OK;
}

/* ------------------------------------------------------------------ table */

/* ------------------------------------------------------------------ shape rules */

/* dX: the shape and type of dY (input 0). */
static nbl_status shape_dy(nbl_shape_ctx *c) { return nbl_shp_copy_in(c, 0, 0); }

/* a_axes, b_axes: int64 vectors whose lengths depend on the shapes' values. */
static nbl_status shape_bcast_args(nbl_shape_ctx *c) {
  nbl_status st = nbl_shp_set_dt(c, 0, NBL_DT_INT64, 1);
  return st ? st : nbl_shp_set_dt(c, 1, NBL_DT_INT64, 1);
}

/* dX: the shape of X (input 1), float; dAlpha: a float scalar. */
static nbl_status shape_q4_grad(nbl_shape_ctx *c) {
  nbl_status st = nbl_shp_copy_in(c, 0, 1);
  return st ? st : nbl_shp_set_dt(c, 1, NBL_DT_FLOAT, 0);
}

const nbl_op_def nbl_ops_grad_elementwise[] = {
    NBL_OP_DEF(NBL_MS_DOMAIN, "ReluGrad", 1, 1, .ref = k_relu_grad, .shape = shape_dy, .no_grad = NBL_NO_GRAD_BACKWARD),
    NBL_OP_DEF(NBL_MS_DOMAIN, "SigmoidGrad", 1, 1, .ref = k_sigmoid_grad, .shape = shape_dy, .no_grad = NBL_NO_GRAD_BACKWARD),
    NBL_OP_DEF(NBL_MS_DOMAIN, "TanhGrad", 1, 1, .ref = k_tanh_grad, .shape = shape_dy, .no_grad = NBL_NO_GRAD_BACKWARD),
    NBL_OP_DEF(NBL_MS_DOMAIN, "GeluGrad", 1, 1, .ref = k_gelu_grad, .shape = shape_dy, .no_grad = NBL_NO_GRAD_BACKWARD),
    NBL_OP_DEF(NBL_MS_DOMAIN, "FastGeluGrad", 1, 1, .ref = k_fastgelu_grad, .shape = shape_dy, .no_grad = NBL_NO_GRAD_BACKWARD),
    NBL_OP_DEF(NBL_MS_DOMAIN, "LeakyReluGrad", 1, 1, .ref = k_leakyrelu_grad, .shape = shape_dy, .no_grad = NBL_NO_GRAD_BACKWARD),
    NBL_OP_DEF(NBL_MS_DOMAIN, "DropoutGrad", 1, 1, .ref = k_dropout_grad, .shape = shape_dy, .no_grad = NBL_NO_GRAD_BACKWARD),
    NBL_OP_DEF(NBL_MS_DOMAIN, "BitmaskDropoutGrad", 1, 1, .ref = k_bitmask_dropout_grad, .shape = shape_dy, .no_grad = NBL_NO_GRAD_BACKWARD),
    NBL_OP_DEF(NBL_MS_DOMAIN, "BroadcastGradientArgs", 1, 1, .ref = k_broadcast_grad_args, .shape = shape_bcast_args, .no_grad = "not differentiable: integer output"),
    NBL_OP_DEF("ai.nibble", "QuantizeInt4Grad", 1, 1, .ref = k_quantize_int4_grad, .fast = k_quantize_int4_grad_fast, .shape = shape_q4_grad, .no_grad = NBL_NO_GRAD_BACKWARD),
};
const size_t nbl_ops_grad_elementwise_count =
    sizeof nbl_ops_grad_elementwise / sizeof nbl_ops_grad_elementwise[0];
