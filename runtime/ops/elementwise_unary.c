/*
 * runtime/ops/elementwise_unary.c - op family 'elementwise_unary': the
 * one-input elementwise ops - math functions (Abs, Sqrt, Exp, Log, rounding,
 * trigonometric and hyperbolic functions, Erf), activations (Relu, Sigmoid,
 * Tanh, Gelu, ...), Clip, Not, BitwiseNot, IsNaN, IsInf, and the
 * experimental ops ONNX removed in opset 10 (Affine, Scale, ScaledTanh,
 * ParametricSoftplus, ImageScaler; ThresholdedRelu-1) - with their shape
 * and gradient rules (see kernel.h for the kernel contract; the binary ops are
 * in elementwise.c, shared helpers in elementwise.h).
 *
 * Each op computes element by element: a float32 path with tight loops (the
 * fast path; Relu and Clip 8 lanes at a time, the costly functions and
 * activations in runtime/kernels/unary_f32.c) and a generic one in double,
 * int64 or uint64 through the kernel_util accessors (the reference path, and
 * the only path for the less common types). c->reference selects the generic
 * path for float32 too, so the two can be compared.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/core/adapt.h"
#include "runtime/core/cpu.h"
#include "runtime/core/grad.h"
#include "runtime/core/shape.h"
#include "runtime/kernels/unary_f32.h"
#include "runtime/ops/elementwise.h"

/* ------------------------------------------------------------------ unary ops */

enum {
  U_ABS, U_NEG, U_RECIP, U_SQRT, U_EXP, U_LOG, U_FLOOR, U_CEIL, U_ROUND, U_SIGN,
  U_SIN, U_COS, U_TAN, U_ASIN, U_ACOS, U_ATAN, U_SINH, U_COSH, U_ASINH, U_ACOSH, U_ATANH,
  U_ERF, U_RELU, U_LEAKY, U_SIGMOID, U_HSIGMOID, U_HSWISH, U_TANH, U_ELU, U_SELU, U_CELU,
  U_SOFTPLUS, U_SOFTSIGN, U_TRELU, U_MISH, U_SHRINK, U_GELU, U_GELU_TANH, U_CLIP,
  U_NOT, U_BITNOT, U_ISNAN, U_ISINF,
  U_AFFINE, U_SCALE, U_SCALED_TANH, U_PSOFTPLUS /* experimental ops ONNX removed in opset 10 */
};

typedef struct uparam {
  double a, b, g;     /* alpha, beta, gamma / lambd, bias / clip lo, hi */
  int64_t ilo, ihi;   /* clip bounds for signed ints */
  uint64_t ulo, uhi;  /* clip bounds for unsigned ints */
  int neg, pos;       /* IsInf */
} uparam;

static double softplus_d(double x) { return x > 0 ? x + log1p(exp(-x)) : log1p(exp(x)); }

static double un_f(int op, double x, const uparam *p) {
  switch (op) {
  case U_ABS: return fabs(x);
  case U_NEG: return -x;
  case U_RECIP: return 1.0 / x;
  case U_SQRT: return sqrt(x);
  case U_EXP: return exp(x);
  case U_LOG: return log(x);
  case U_FLOOR: return floor(x);
  case U_CEIL: return ceil(x);
  case U_ROUND: return nearbyint(x);
  case U_SIGN: return x > 0 ? 1.0 : x < 0 ? -1.0 : x;
  case U_SIN: return sin(x);
  case U_COS: return cos(x);
  case U_TAN: return tan(x);
  case U_ASIN: return asin(x);
  case U_ACOS: return acos(x);
  case U_ATAN: return atan(x);
  case U_SINH: return sinh(x);
  case U_COSH: return cosh(x);
  case U_ASINH: return asinh(x);
  case U_ACOSH: return acosh(x);
  case U_ATANH: return atanh(x);
  case U_ERF: return erf(x);
  case U_RELU: return x < 0 ? 0.0 : x;
  case U_LEAKY: return x < 0 ? p->a * x : x;
  case U_SIGMOID: {
    if (x >= 0) return 1.0 / (1.0 + exp(-x));
    double e = exp(x);
    return e / (1.0 + e);
  }
  case U_HSIGMOID: {
    double t = p->a * x + p->b;
    return t < 0 ? 0.0 : t > 1 ? 1.0 : t;
  }
  case U_HSWISH: {
    double t = x / 6.0 + 0.5;
    return x * (t < 0 ? 0.0 : t > 1 ? 1.0 : t);
  }
  case U_TANH: return tanh(x);
  case U_ELU: return x < 0 ? p->a * expm1(x) : x;
  case U_SELU: return x <= 0 ? p->g * (p->a * expm1(x)) : p->g * x;
  case U_CELU: return x >= 0 ? x : p->a * expm1(x / p->a);
  case U_SOFTPLUS: return softplus_d(x);
  case U_SOFTSIGN: return x / (1.0 + fabs(x));
  case U_TRELU: return (x > p->a || isnan(x)) ? x : 0.0;
  case U_MISH: return x * tanh(softplus_d(x));
  case U_SHRINK: return x < -p->a ? x + p->b : x > p->a ? x - p->b : isnan(x) ? x : 0.0;
  /* below 0 through erfc and e / (1 + e): 1 + erf and 1 + tanh cancel to
   * nothing there (erf(-6) is -1 in double, Gelu(-10) is 7.6e-23) */
  case U_GELU: return x < 0 ? 0.5 * x * erfc(-x * M_SQRT1_2) : 0.5 * x * (1.0 + erf(x * M_SQRT1_2));
  case U_GELU_TANH: {
    double u2 = 2.0 * sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x);
    if (u2 >= 0) return x / (1.0 + exp(-u2));
    double e = exp(u2);
    return x * e / (1.0 + e);
  }
  case U_CLIP: { /* numpy.clip: max first, then min (min > max gives max) */
    double t = x < p->a ? p->a : x;
    return t > p->b ? p->b : t;
  }
  case U_ISNAN: return isnan(x) ? 1 : 0;
  case U_ISINF: return isinf(x) && ((x > 0 && p->pos) || (x < 0 && p->neg)) ? 1 : 0;
  case U_AFFINE: return p->a * x + p->b;
  case U_SCALE: return p->a * x;
  case U_SCALED_TANH: return p->a * tanh(p->b * x);
  case U_PSOFTPLUS: return p->a * softplus_d(p->b * x);
  default: return 0;
  }
}

/* Integer forms; returns 0 in *handled when the op is computed via double. */
static int64_t un_s(int op, int64_t x, const uparam *p, int *handled) {
  uint64_t ux = (uint64_t)x;
  *handled = 1;
  switch (op) {
  case U_ABS: return x < 0 ? (int64_t)(0 - ux) : x;
  case U_NEG: return (int64_t)(0 - ux);
  case U_SIGN: return x > 0 ? 1 : x < 0 ? -1 : 0;
  case U_RELU: return x < 0 ? 0 : x;
  case U_CLIP: {
    int64_t t = x < p->ilo ? p->ilo : x;
    return t > p->ihi ? p->ihi : t;
  }
  case U_BITNOT: return ~x;
  default: *handled = 0; return 0;
  }
}

static uint64_t un_u(int op, uint64_t x, const uparam *p, int *handled) {
  *handled = 1;
  switch (op) {
  case U_ABS: case U_RELU: return x;
  case U_SIGN: return x > 0;
  case U_CLIP: {
    uint64_t t = x < p->ulo ? p->ulo : x;
    return t > p->uhi ? p->uhi : t;
  }
  case U_NOT: return !x;
  case U_BITNOT: return ~x;
  default: *handled = 0; return 0;
  }
}

typedef struct ujob {
  int op;
  const nbl_rt_tensor *x;
  nbl_rt_tensor *y;
  uparam p;
} ujob;

static void un_generic(void *arg, int64_t b, int64_t e) {
  const ujob *j = arg;
  const nbl_rt_tensor *X = j->x;
  nbl_rt_tensor *Y = j->y;
  int cls = dt_class(X->dtype);
  for (int64_t i = b; i < e; i++) {
    int h = 0;
    if (cls == CL_S) {
      int64_t r = un_s(j->op, nbl_rt_get_i64(X, i), &j->p, &h);
      if (h) { nbl_rt_set_i64(Y, i, r); continue; }
    } else if (cls == CL_U) {
      uint64_t r = un_u(j->op, (uint64_t)nbl_rt_get_i64(X, i), &j->p, &h);
      if (h) { nbl_rt_set_i64(Y, i, (int64_t)r); continue; }
    }
    nbl_rt_set_f64(Y, i, un_f(j->op, nbl_rt_get_f64(X, i), &j->p));
  }
}

#define F32_UN(EXPR)                              \
  do {                                            \
    for (int64_t i = b; i < e; i++) {             \
      float v = x[i];                             \
      y[i] = (EXPR);                              \
    }                                             \
  } while (0)

static inline float clampf_(float v, float lo, float hi) {
  float t = v < lo ? lo : v;
  return t > hi ? hi : t;
}

typedef float v8f_ __attribute__((vector_size(32)));
typedef int32_t v8i_ __attribute__((vector_size(32)));

/* Relu (lo = 0, hi = +inf) or Clip on x[b..e) into y, 8 lanes at a time; same
 * result as clampf_ per element (NaN stays NaN: comparisons with NaN are false). */
#define CLAMP_BODY                                                        \
  int64_t i = b;                                                          \
  v8f_ vlo = {lo, lo, lo, lo, lo, lo, lo, lo}, vhi = {hi, hi, hi, hi, hi, hi, hi, hi}; \
  for (; i + 8 <= e; i += 8) {                                            \
    v8f_ v;                                                               \
    memcpy(&v, x + i, sizeof v);                                          \
    v8i_ m = v < vlo;                                                     \
    v = (v8f_)(((v8i_)v & ~m) | ((v8i_)vlo & m));                         \
    m = v > vhi;                                                          \
    v = (v8f_)(((v8i_)v & ~m) | ((v8i_)vhi & m));                         \
    memcpy(y + i, &v, sizeof v);                                          \
  }                                                                       \
  for (; i < e; i++) y[i] = clampf_(x[i], lo, hi);

__attribute__((target("avx2"))) static void clamp_avx2(const float *x, float *y, int64_t b,
                                                       int64_t e, float lo, float hi) {
  CLAMP_BODY
}

static void clamp_generic(const float *x, float *y, int64_t b, int64_t e, float lo, float hi) {
  CLAMP_BODY
}

static void clamp_f32(const float *x, float *y, int64_t b, int64_t e, float lo, float hi) {
  if (nbl_cpu_has(NBL_CPU_AVX2))
    clamp_avx2(x, y, b, e, lo, hi);
  else
    clamp_generic(x, y, b, e, lo, hi);
}

void nbl_relu_f32(const float *x, float *y, int64_t n) { clamp_f32(x, y, 0, n, 0.0f, INFINITY); }

/* The ops of runtime/kernels/unary_f32.c; -1 for the others. */
static int un_vec(int op) {
  switch (op) {
  case U_EXP: return NBL_UF_EXP;
  case U_SIGMOID: return NBL_UF_SIGMOID;
  case U_TANH: return NBL_UF_TANH;
  case U_ERF: return NBL_UF_ERF;
  case U_GELU: return NBL_UF_GELU;
  case U_GELU_TANH: return NBL_UF_GELU_TANH;
  case U_SOFTPLUS: return NBL_UF_SOFTPLUS;
  case U_MISH: return NBL_UF_MISH;
  case U_HSIGMOID: return NBL_UF_HARDSIGMOID;
  case U_HSWISH: return NBL_UF_HARDSWISH;
  default: return -1;
  }
}

static void un_f32(void *arg, int64_t b, int64_t e) {
  const ujob *j = arg;
  const float *x = j->x->data;
  float *y = j->y->data;
  const float pa = (float)j->p.a, pb = (float)j->p.b, pg = (float)j->p.g;
  int vk = un_vec(j->op);
  /* the arguments are valid by construction: the status can only be OK */
  if (vk >= 0 && nbl_unary_f32((nbl_uf32)vk, x + b, y + b, e - b, j->p.a, j->p.b) == NBL_OK) return;
  if (j->op == U_RELU) {
    clamp_f32(x, y, b, e, 0.0f, INFINITY);
    return;
  }
  if (j->op == U_CLIP) {
    clamp_f32(x, y, b, e, pa, pb);
    return;
  }
  switch (j->op) {
  case U_ABS: F32_UN(fabsf(v)); break;
  case U_NEG: F32_UN(-v); break;
  case U_RECIP: F32_UN(1.0f / v); break;
  case U_SQRT: F32_UN(sqrtf(v)); break;
  case U_LOG: F32_UN(logf(v)); break;
  case U_FLOOR: F32_UN(floorf(v)); break;
  case U_CEIL: F32_UN(ceilf(v)); break;
  case U_ROUND: F32_UN(nearbyintf(v)); break;
  case U_SIGN: F32_UN(v > 0 ? 1.0f : v < 0 ? -1.0f : v); break;
  case U_RELU: F32_UN(v < 0 ? 0.0f : v); break;
  case U_LEAKY: F32_UN(v < 0 ? pa * v : v); break;
  case U_ELU: F32_UN(v < 0 ? pa * expm1f(v) : v); break;
  case U_SELU: F32_UN(v <= 0 ? pg * (pa * expm1f(v)) : pg * v); break;
  case U_SOFTSIGN: F32_UN(v / (1.0f + fabsf(v))); break;
  case U_CLIP: F32_UN(clampf_(v, pa, pb)); break;
  /* two float roundings, as ONNX Runtime's kernel and the Mul + Add it converts to */
  case U_AFFINE: F32_UN(pa * v + pb); break;
  case U_SCALE: F32_UN(pa * v); break;
  default: /* the rest: double precision per element */
    for (int64_t i = b; i < e; i++) y[i] = (float)un_f(j->op, x[i], &j->p);
    break;
  }
}

static int un_cheap(int op) {
  return op == U_ABS || op == U_NEG || op == U_RELU || op == U_LEAKY || op == U_CLIP ||
         op == U_FLOOR || op == U_CEIL || op == U_SIGN || op == U_HSIGMOID || op == U_HSWISH ||
         op == U_NOT || op == U_BITNOT || op == U_AFFINE || op == U_SCALE;
}

/* Run a unary op on input 0. odt: output type (UNDEFINED: same as input). */
static nbl_status unary_p(nbl_kctx *c, int op, unsigned types, nbl_dtype odt, const uparam *p) {
  nbl_status st = NBL_OK;
  const nbl_rt_tensor *X = need_in(c, 0, &st);
  if (!X) return st;
  if ((st = check_type(c, 0, types))) return st;
  if (odt == NBL_DT_UNDEFINED) odt = X->dtype;
  if ((st = nbl_kctx_alloc_out(c, 0, odt, X->rank, X->dims))) return st;
  ujob j = {.op = op, .x = X, .y = nbl_kctx_out(c, 0)};
  if (p) j.p = *p;
  if (X->numel == 0) return NBL_OK;
  int f32 = !c->reference && X->dtype == NBL_DT_FLOAT && odt == NBL_DT_FLOAT;
  nbl_parallel_for(c, X->numel, un_cheap(op) && f32 ? GRAIN_CHEAP : GRAIN_MATH,
                   f32 ? un_f32 : un_generic, &j);
  return NBL_OK;
}

static nbl_status unary(nbl_kctx *c, int op, unsigned types) {
  return unary_p(c, op, types, NBL_DT_UNDEFINED, NULL);
}

static nbl_status unary_a(nbl_kctx *c, int op, unsigned types, float da, float db) {
  uparam p = {.a = nbl_attr_float(c->node, "alpha", da), .b = nbl_attr_float(c->node, "beta", db)};
  return unary_p(c, op, types, NBL_DT_UNDEFINED, &p);
}

#define UNARY_K(fn, OP, TYPES) \
  static nbl_status fn(nbl_kctx *c) { return unary(c, OP, TYPES); }
UNARY_K(k_abs, U_ABS, T_NUM)
UNARY_K(k_neg, U_NEG, T_F | T_S)
UNARY_K(k_reciprocal, U_RECIP, T_F)
UNARY_K(k_sqrt, U_SQRT, T_F)
UNARY_K(k_exp, U_EXP, T_F)
UNARY_K(k_log, U_LOG, T_F)
UNARY_K(k_floor, U_FLOOR, T_F)
UNARY_K(k_ceil, U_CEIL, T_F)
UNARY_K(k_round, U_ROUND, T_F)
UNARY_K(k_sign, U_SIGN, T_NUM)
UNARY_K(k_sin, U_SIN, T_F)
UNARY_K(k_cos, U_COS, T_F)
UNARY_K(k_tan, U_TAN, T_F)
UNARY_K(k_asin, U_ASIN, T_F)
UNARY_K(k_acos, U_ACOS, T_F)
UNARY_K(k_atan, U_ATAN, T_F)
UNARY_K(k_sinh, U_SINH, T_F)
UNARY_K(k_cosh, U_COSH, T_F)
UNARY_K(k_asinh, U_ASINH, T_F)
UNARY_K(k_acosh, U_ACOSH, T_F)
UNARY_K(k_atanh, U_ATANH, T_F)
UNARY_K(k_erf, U_ERF, T_NUM)
UNARY_K(k_relu, U_RELU, T_F | T_S)
UNARY_K(k_sigmoid, U_SIGMOID, T_F)
UNARY_K(k_hardswish, U_HSWISH, T_F)
UNARY_K(k_tanh, U_TANH, T_F)
UNARY_K(k_softplus, U_SOFTPLUS, T_F)
UNARY_K(k_softsign, U_SOFTSIGN, T_F)
UNARY_K(k_mish, U_MISH, T_F)
UNARY_K(k_not, U_NOT, T_B)
UNARY_K(k_bitnot, U_BITNOT, T_S | T_U)

static nbl_status k_leakyrelu(nbl_kctx *c) { return unary_a(c, U_LEAKY, T_F, 0.01f, 0); }
static nbl_status k_hardsigmoid(nbl_kctx *c) { return unary_a(c, U_HSIGMOID, T_F, 0.2f, 0.5f); }
static nbl_status k_elu(nbl_kctx *c) { return unary_a(c, U_ELU, T_F, 1.0f, 0); }
static nbl_status k_thresholdedrelu(nbl_kctx *c) { return unary_a(c, U_TRELU, T_F, 1.0f, 0); }

static nbl_status k_celu(nbl_kctx *c) {
  float a = nbl_attr_float(c->node, "alpha", 1.0f);
  if (a == 0) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "attribute 'alpha' must not be 0");
  uparam p = {.a = a};
  /* ONNX types Celu float only; the other float types run the same formula
   * (the float64 finite-difference test of its gradient rule needs double) */
  return unary_p(c, U_CELU, T_F, NBL_DT_UNDEFINED, &p);
}

static nbl_status k_selu(nbl_kctx *c) {
  uparam p = {.a = nbl_attr_float(c->node, "alpha", 1.67326319217681884765625f),
              .g = nbl_attr_float(c->node, "gamma", 1.05070102214813232421875f)};
  return unary_p(c, U_SELU, T_F, NBL_DT_UNDEFINED, &p);
}

static nbl_status k_shrink(nbl_kctx *c) {
  uparam p = {.a = nbl_attr_float(c->node, "lambd", 0.5f), .b = nbl_attr_float(c->node, "bias", 0.0f)};
  return unary_p(c, U_SHRINK, T_NUM, NBL_DT_UNDEFINED, &p);
}

static nbl_status k_gelu(nbl_kctx *c) {
  const char *ap = nbl_attr_string(c->node, "approximate", "none");
  int op;
  if (strcmp(ap, "none") == 0) op = U_GELU;
  else if (strcmp(ap, "tanh") == 0) op = U_GELU_TANH;
  else return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "attribute 'approximate' must be \"none\" or \"tanh\", not \"%s\"", ap);
  return unary(c, op, T_F);
}

static nbl_status k_isnan(nbl_kctx *c) { return unary_p(c, U_ISNAN, T_F, NBL_DT_BOOL, NULL); }

static nbl_status k_isinf(nbl_kctx *c) {
  uparam p = {.neg = (int)nbl_attr_int(c->node, "detect_negative", 1),
              .pos = (int)nbl_attr_int(c->node, "detect_positive", 1)};
  return unary_p(c, U_ISINF, T_F, NBL_DT_BOOL, &p);
}

/* Clip: bounds from attributes (opset < 11) or optional scalar inputs (>= 11). */
static nbl_status k_clip(nbl_kctx *c) {
  nbl_status st = NBL_OK;
  const nbl_rt_tensor *X = need_in(c, 0, &st);
  if (!X) return st;
  uparam p = {.a = -INFINITY, .b = INFINITY, .ilo = INT64_MIN, .ihi = INT64_MAX, .ulo = 0,
              .uhi = UINT64_MAX};
  if (c->opset < 11) {
    p.a = nbl_attr_float(c->node, "min", -INFINITY);
    p.b = nbl_attr_float(c->node, "max", INFINITY);
    return unary_p(c, U_CLIP, T_F, NBL_DT_UNDEFINED, &p);
  }
  if ((st = check_type(c, 0, T_NUM))) return st;
  for (int k = 1; k <= 2 && k < c->n_in; k++) {
    const nbl_rt_tensor *t = c->in[k];
    if (!t) continue;
    if ((st = check_same_type(c, 0, k))) return st;
    if (t->numel != 1)
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "bound '%s' must be a scalar, it has %lld elements",
                      in_name(c, k), (long long)t->numel);
    double v = nbl_rt_get_f64(t, 0);
    int64_t iv = nbl_rt_get_i64(t, 0);
    if (k == 1) { p.a = v; p.ilo = iv; p.ulo = (uint64_t)iv; }
    else { p.b = v; p.ihi = iv; p.uhi = (uint64_t)iv; }
  }
  return unary_p(c, U_CLIP, T_NUM, NBL_DT_UNDEFINED, &p);
}

/* ------------------------------------------------------------------ ops ONNX removed
 *
 * Affine, Scale, ScaledTanh, ParametricSoftplus and ImageScaler were experimental
 * ops of the default domain (opset 1 on) that ONNX removed in opset 10;
 * ThresholdedRelu was experimental too before its version 10, with the same
 * meaning. Old models use them (the model zoo's opset 7-8 files, tiny-YOLOv2's
 * first node is an ImageScaler; WinML-era conversions), and ONNX Runtime
 * still runs them at opsets 1-9 and refuses them from 10 on, as nibble does.
 * The semantics are ONNX Runtime's (checked against its version 1.31):
 *   Affine              y = alpha x + beta (defaults 1 and 0)
 *   Scale               y = scale x (default 1)
 *   ScaledTanh          y = alpha tanh(beta x)
 *   ParametricSoftplus  y = alpha ln(exp(beta x) + 1)
 *                       (alpha and beta have no default: a node without
 *                       them is an error, as in ONNX Runtime)
 *   ImageScaler         y[n, c, h, w] = scale x[n, c, h, w] + bias[c]: x is
 *                       4-D, scale defaults to 1, bias has one value per
 *                       channel (without bias nothing is added, as the ONNX
 *                       spec says; ONNX Runtime refuses such a node)
 * convert-opset rewrites each into standard ops (adapters below). */

static nbl_status k_affine(nbl_kctx *c) { return unary_a(c, U_AFFINE, T_F, 1.0f, 0.0f); }

static nbl_status k_scale(nbl_kctx *c) {
  uparam p = {.a = nbl_attr_float(c->node, "scale", 1.0f)};
  return unary_p(c, U_SCALE, T_F, NBL_DT_UNDEFINED, &p);
}

/* ScaledTanh, ParametricSoftplus: alpha and beta are required. */
static nbl_status unary_ab(nbl_kctx *c, int op) {
  static const char *const names[] = {"alpha", "beta"};
  for (int k = 0; k < 2; k++)
    if (!nbl_node_attr(c->node, names[k]))
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "attribute '%s' is required (%s has no default)",
                      names[k], c->node->op_type);
  return unary_a(c, op, T_F, 0.0f, 0.0f);
}
static nbl_status k_scaledtanh(nbl_kctx *c) { return unary_ab(c, U_SCALED_TANH); }
static nbl_status k_psoftplus(nbl_kctx *c) { return unary_ab(c, U_PSOFTPLUS); }

typedef struct isjob {
  const nbl_rt_tensor *x;
  nbl_rt_tensor *y;
  int64_t C, plane;
  float scale;
  const float *bias; /* NULL: none */
  int f32;
} isjob;

/* Planes [b, e) of ImageScaler: float32 in float (scale x, then + bias: two
 * roundings, as ONNX Runtime and the Mul + Add it converts to), the other
 * types and the reference path in double. */
static void imagescaler_planes(void *arg, int64_t b, int64_t e) {
  const isjob *j = arg;
  for (int64_t p = b; p < e; p++) {
    int64_t o = p * j->plane;
    float bias = j->bias ? j->bias[p % j->C] : 0.0f;
    if (j->f32) {
      const float *x = (const float *)j->x->data + o;
      float *y = (float *)j->y->data + o, s = j->scale;
      if (j->bias)
        for (int64_t i = 0; i < j->plane; i++) y[i] = s * x[i] + bias;
      else
        for (int64_t i = 0; i < j->plane; i++) y[i] = s * x[i];
    } else {
      for (int64_t i = o; i < o + j->plane; i++) {
        double v = (double)j->scale * nbl_rt_get_f64(j->x, i);
        nbl_rt_set_f64(j->y, i, j->bias ? v + bias : v);
      }
    }
  }
}

static nbl_status k_imagescaler(nbl_kctx *c) {
  nbl_status st = NBL_OK;
  const nbl_rt_tensor *X = need_in(c, 0, &st);
  if (!X) return st;
  if ((st = check_type(c, 0, T_F))) return st;
  if (X->rank != 4)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input '%s' must be 4-D (N, C, H, W), it has rank %d",
                    in_name(c, 0), X->rank);
  const nbl_attr *ba = nbl_node_attr(c->node, "bias");
  if (ba && ba->type != NBL_ATTR_FLOATS)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "attribute 'bias' must be a list of floats, it is %s",
                    nbl_attr_type_name(ba->type));
  if (ba && ba->n != X->dims[1])
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "attribute 'bias' has %d values, input '%s' has %lld "
                    "channels", ba->n, in_name(c, 0), (long long)X->dims[1]);
  if ((st = nbl_kctx_alloc_out(c, 0, X->dtype, X->rank, X->dims))) return st;
  isjob j = {.x = X, .y = nbl_kctx_out(c, 0), .C = X->dims[1], .plane = X->dims[2] * X->dims[3],
             .scale = nbl_attr_float(c->node, "scale", 1.0f), .bias = ba ? ba->floats : NULL,
             .f32 = !c->reference && X->dtype == NBL_DT_FLOAT};
  if (X->numel == 0) return NBL_OK;
  nbl_parallel_for(c, X->dims[0] * X->dims[1], j.plane >= GRAIN_CHEAP ? 1 : GRAIN_CHEAP / j.plane,
                   imagescaler_planes, &j);
  return NBL_OK;
}

/* ------------------------------------------------------------------ shape rules */

/* Neg: the input's type; known small integer data negated. */
static nbl_status shape_neg(nbl_shape_ctx *c) {
  nbl_status st = nbl_shape_same(c);
  nbl_kdata k;
  if (!st && nbl_shp_in_kd(c, 0, &k)) {
    for (int i = 0; i < k.n; i++)
      if (k.e[i].kind == NBL_KD_VAL) k.e[i].v = -k.e[i].v;
      else k.e[i].kind = NBL_KD_UNK;
    st = nbl_shp_set_kd(c, 0, &k);
  }
  return st;
}

/* IsNaN, IsInf: the input's shape, bool. */
static nbl_status shape_bool_same(nbl_shape_ctx *c) {
  nbl_shp s;
  nbl_shp_in(c, 0, &s);
  s.dt = NBL_DT_BOOL;
  return nbl_shp_set(c, 0, &s);
}

/* ImageScaler: X's type and shape; X is 4-D with one bias per channel. */
static nbl_status shape_imagescaler(nbl_shape_ctx *c) {
  nbl_shp x;
  nbl_shp_in(c, 0, &x);
  if (x.rank >= 0 && x.rank != 4)
    return nbl_shp_err(c, "input must be 4-D (N, C, H, W), it has rank %d", x.rank);
  int nb = 0;
  if (nbl_attr_floats(c->node, "bias", &nb) && x.rank == 4 && nbl_dim_known(x.d[1]) &&
      nb != x.d[1].value)
    return nbl_shp_err(c, "attribute 'bias' has %d values, the input has %lld channels", nb,
                       (long long)x.d[1].value);
  return nbl_shape_same(c);
}

/* ------------------------------------------------------------------ gradient rules
 * (runtime/core/grad.h); helpers in elementwise.h. */

static nbl_status g_neg(nbl_grad_ctx *gc) {
  nbl_grad_set_dx(gc, 0, nbl_grad_un(gc, "Neg", gdy(gc)));
  return nbl_grad_status(gc);
}
static nbl_status g_abs(nbl_grad_ctx *gc) { return dx_times(gc, nbl_grad_un(gc, "Sign", gx(gc, 0))); }
/* Y = 1/X: dX = -dY Y^2 */
static nbl_status g_reciprocal(nbl_grad_ctx *gc) {
  nbl_id y = gy0(gc);
  return dx_times(gc, nbl_grad_un(gc, "Neg", gbin(gc, "Mul", y, y)));
}
/* Y = sqrt(X): dX = dY 0.5 / Y */
static nbl_status g_sqrt(nbl_grad_ctx *gc) {
  nbl_grad_set_dx(gc, 0, gbin(gc, "Div", gbin(gc, "Mul", gdy(gc), gconst(gc, gy0(gc), 0.5)), gy0(gc)));
  return nbl_grad_status(gc);
}
static nbl_status g_exp(nbl_grad_ctx *gc) { return dx_times(gc, gy0(gc)); }
static nbl_status g_log(nbl_grad_ctx *gc) {
  nbl_grad_set_dx(gc, 0, gbin(gc, "Div", gdy(gc), gx(gc, 0)));
  return nbl_grad_status(gc);
}
static nbl_status g_sin(nbl_grad_ctx *gc) { return dx_times(gc, nbl_grad_un(gc, "Cos", gx(gc, 0))); }
static nbl_status g_cos(nbl_grad_ctx *gc) {
  return dx_times(gc, nbl_grad_un(gc, "Neg", nbl_grad_un(gc, "Sin", gx(gc, 0))));
}
/* erf'(x) = 2/sqrt(pi) exp(-x^2) */
static nbl_status g_erf(nbl_grad_ctx *gc) {
  nbl_id x = gx(gc, 0);
  nbl_id e = nbl_grad_un(gc, "Exp", nbl_grad_un(gc, "Neg", gbin(gc, "Mul", x, x)));
  return dx_times(gc, gbin(gc, "Mul", e, gconst(gc, x, 1.1283791670955126)));
}
/* softplus'(x) = sigmoid(x); softsign'(x) = 1 / (1 + |x|)^2 */
static nbl_status g_softplus(nbl_grad_ctx *gc) {
  return dx_times(gc, nbl_grad_un(gc, "Sigmoid", gx(gc, 0)));
}
static nbl_status g_softsign(nbl_grad_ctx *gc) {
  nbl_id x = gx(gc, 0);
  nbl_id d = gbin(gc, "Add", gconst(gc, x, 1.0), nbl_grad_un(gc, "Abs", x));
  nbl_grad_set_dx(gc, 0, gbin(gc, "Div", gdy(gc), gbin(gc, "Mul", d, d)));
  return nbl_grad_status(gc);
}

/* The trigonometric and hyperbolic functions and their inverses. */
static nbl_status g_tan(nbl_grad_ctx *gc) { /* 1 + tan^2 */
  nbl_id y = gy0(gc);
  return dx_times(gc, gbin(gc, "Add", gconst(gc, y, 1.0), gbin(gc, "Mul", y, y)));
}
static nbl_status g_sinh(nbl_grad_ctx *gc) { return dx_times(gc, nbl_grad_un(gc, "Cosh", gx(gc, 0))); }
static nbl_status g_cosh(nbl_grad_ctx *gc) { return dx_times(gc, nbl_grad_un(gc, "Sinh", gx(gc, 0))); }
/* dY / sqrt(s (1 - x^2)) (asin: s = 1; acos: the negative; asinh: sqrt(x^2 + 1);
 * acosh: sqrt(x^2 - 1)), dY / (1 +- x^2) (atan, atanh) */
static nbl_status dx_over(nbl_grad_ctx *gc, double c0, double cx, int root, int neg) {
  nbl_id x = gx(gc, 0);
  nbl_id d = gbin(gc, "Add", gconst(gc, x, c0), gbin(gc, "Mul", gconst(gc, x, cx), gbin(gc, "Mul", x, x)));
  if (root) d = nbl_grad_un(gc, "Sqrt", d);
  nbl_id g = gbin(gc, "Div", gdy(gc), d);
  nbl_grad_set_dx(gc, 0, neg ? nbl_grad_un(gc, "Neg", g) : g);
  return nbl_grad_status(gc);
}
static nbl_status g_asin(nbl_grad_ctx *gc) { return dx_over(gc, 1, -1, 1, 0); }
static nbl_status g_acos(nbl_grad_ctx *gc) { return dx_over(gc, 1, -1, 1, 1); }
static nbl_status g_atan(nbl_grad_ctx *gc) { return dx_over(gc, 1, 1, 0, 0); }
static nbl_status g_asinh(nbl_grad_ctx *gc) { return dx_over(gc, 1, 1, 1, 0); }
static nbl_status g_acosh(nbl_grad_ctx *gc) { return dx_over(gc, -1, 1, 1, 0); }
static nbl_status g_atanh(nbl_grad_ctx *gc) { return dx_over(gc, 1, -1, 0, 0); }

/* dX = dY Where(cond, t, f) */
static nbl_status dx_where(nbl_grad_ctx *gc, nbl_id cond, nbl_id t, nbl_id f) {
  nbl_id in[3] = {cond, t, f};
  return dx_times(gc, nbl_grad_op(gc, "Where", "", 3, in));
}
/* The piecewise activations, on the branch the forward takes at the
 * boundary: Elu (x < 0: alpha e^x = y + alpha), Selu (x <= 0: gamma alpha e^x
 * = y + gamma alpha), Celu (x < 0: e^(x/alpha) = y / alpha + 1),
 * ThresholdedRelu (1 where x > alpha), Shrink (1 outside [-lambd, lambd]). */
static nbl_status g_elu(nbl_grad_ctx *gc) {
  nbl_id x = gx(gc, 0), y = gy0(gc);
  double a = nbl_attr_float(nbl_grad_node(gc), "alpha", 1.0f);
  return dx_where(gc, gbin(gc, "Less", x, gconst(gc, x, 0.0)), gbin(gc, "Add", y, gconst(gc, y, a)), gconst(gc, x, 1.0));
}
static nbl_status g_selu(nbl_grad_ctx *gc) {
  nbl_id x = gx(gc, 0), y = gy0(gc);
  const nbl_node *n = nbl_grad_node(gc);
  double a = nbl_attr_float(n, "alpha", 1.67326319217681884765625f), g = nbl_attr_float(n, "gamma", 1.05070102214813232421875f);
  return dx_where(gc, gbin(gc, "LessOrEqual", x, gconst(gc, x, 0.0)), gbin(gc, "Add", y, gconst(gc, y, g * a)),
                  gconst(gc, x, g));
}
static nbl_status g_celu(nbl_grad_ctx *gc) {
  nbl_id x = gx(gc, 0), y = gy0(gc);
  double a = nbl_attr_float(nbl_grad_node(gc), "alpha", 1.0f);
  nbl_id t = gbin(gc, "Add", gbin(gc, "Div", y, gconst(gc, y, a)), gconst(gc, y, 1.0));
  return dx_where(gc, gbin(gc, "Less", x, gconst(gc, x, 0.0)), t, gconst(gc, x, 1.0));
}
static nbl_status g_thresholdedrelu(nbl_grad_ctx *gc) {
  nbl_id x = gx(gc, 0);
  double a = nbl_attr_float(nbl_grad_node(gc), "alpha", 1.0f);
  return dx_where(gc, gbin(gc, "Greater", x, gconst(gc, x, a)), gconst(gc, x, 1.0), gconst(gc, x, 0.0));
}
static nbl_status g_shrink(nbl_grad_ctx *gc) {
  nbl_id x = gx(gc, 0);
  double l = nbl_attr_float(nbl_grad_node(gc), "lambd", 0.5f);
  nbl_id out = gbin(gc, "Or", gbin(gc, "Less", x, gconst(gc, x, -l)), gbin(gc, "Greater", x, gconst(gc, x, l)));
  return dx_where(gc, out, gconst(gc, x, 1.0), gconst(gc, x, 0.0));
}
/* Mish, y = x tanh(softplus(x)): y' = tanh(sp) + x (1 - tanh(sp)^2) sigmoid(x). */
static nbl_status g_mish(nbl_grad_ctx *gc) {
  nbl_id x = gx(gc, 0);
  nbl_id t = nbl_grad_un(gc, "Tanh", nbl_grad_un(gc, "Softplus", x));
  nbl_id sech2 = gbin(gc, "Sub", gconst(gc, x, 1.0), gbin(gc, "Mul", t, t));
  nbl_id d = gbin(gc, "Add", t, gbin(gc, "Mul", gbin(gc, "Mul", x, sech2), nbl_grad_un(gc, "Sigmoid", x)));
  return dx_times(gc, d);
}

/* A com.microsoft backward op (dY, v) -> dX with the forward's attributes. */
static nbl_status dx_msop(nbl_grad_ctx *gc, const char *op, nbl_id v) {
  nbl_id in[2] = {gdy(gc), v};
  nbl_id dx = nbl_grad_op(gc, op, "com.microsoft", 2, in);
  nbl_grad_attr_copy(gc, NULL);
  nbl_grad_set_dx(gc, 0, dx);
  return nbl_grad_status(gc);
}
/* ReluGrad takes the output: Y > 0 exactly where X > 0, and Y is kept anyway
 * as the next layer's input. */
static nbl_status g_relu(nbl_grad_ctx *gc) { return dx_msop(gc, "ReluGrad", gy0(gc)); }
static nbl_status g_leakyrelu(nbl_grad_ctx *gc) { return dx_msop(gc, "LeakyReluGrad", gy0(gc)); }
static nbl_status g_sigmoid(nbl_grad_ctx *gc) { return dx_msop(gc, "SigmoidGrad", gy0(gc)); }
static nbl_status g_tanh(nbl_grad_ctx *gc) { return dx_msop(gc, "TanhGrad", gy0(gc)); }
static nbl_status g_gelu(nbl_grad_ctx *gc) {
  const char *a = nbl_attr_string(nbl_grad_node(gc), "approximate", "none");
  nbl_id in[2] = {gdy(gc), gx(gc, 0)};
  nbl_id dx = nbl_grad_op(gc, !strcmp(a, "tanh") ? "FastGeluGrad" : "GeluGrad", "com.microsoft", 2, in);
  nbl_grad_set_dx(gc, 0, dx);
  return nbl_grad_status(gc);
}

/* HardSigmoid: dX = dY alpha where 0 < alpha x + beta < 1, strictly (PyTorch's
 * hardsigmoid_backward: -3 < x < 3 for its alpha 1/6, beta 1/2), else 0; read
 * from Y, which is that expression inside and 0 or 1 outside, and is kept
 * for the backward anyway. */
static nbl_status g_hardsigmoid(nbl_grad_ctx *gc) {
  const nbl_node *n = nbl_grad_node(gc);
  double alpha = nbl_attr_float(n, "alpha", 0.2f);
  nbl_id y = gy0(gc);
  nbl_id inside = gbin(gc, "And", gbin(gc, "Greater", y, gconst(gc, y, 0.0)), gbin(gc, "Less", y, gconst(gc, y, 1.0)));
  nbl_id in[3] = {inside, gbin(gc, "Mul", gdy(gc), gconst(gc, y, alpha)), gconst(gc, y, 0.0)};
  nbl_grad_set_dx(gc, 0, nbl_grad_op(gc, "Where", "", 3, in));
  return nbl_grad_status(gc);
}

/* HardSwish, y = x clamp(x/6 + 1/2, 0, 1): dX = dY times 0 below -3, x/3 + 1/2
 * from -3 to 3 inclusive, 1 above (PyTorch's hardswish_backward, the same
 * choices at the two kinks). */
static nbl_status g_hardswish(nbl_grad_ctx *gc) {
  nbl_id x = gx(gc, 0);
  nbl_id mid = gbin(gc, "Add", gbin(gc, "Div", x, gconst(gc, x, 3.0)), gconst(gc, x, 0.5));
  nbl_id hi[3] = {gbin(gc, "Greater", x, gconst(gc, x, 3.0)), gconst(gc, x, 1.0), mid};
  nbl_id d = nbl_grad_op(gc, "Where", "", 3, hi);
  nbl_id lo[3] = {gbin(gc, "Less", x, gconst(gc, x, -3.0)), gconst(gc, x, 0.0), d};
  return dx_times(gc, nbl_grad_op(gc, "Where", "", 3, lo));
}

/* Clip: dY passes where the input was not clipped (Y == X, bounds included,
 * as PyTorch's clamp); min and max get none. */
static nbl_status g_clip(nbl_grad_ctx *gc) {
  nbl_grad_no_dx(gc, 1, "the bounds of Clip get no gradient");
  nbl_grad_no_dx(gc, 2, "the bounds of Clip get no gradient");
  if (!nbl_grad_wants(gc, 0)) return nbl_grad_status(gc);
  nbl_id x = gx(gc, 0);
  nbl_id in[3] = {gbin(gc, "Equal", gy0(gc), x), gdy(gc), gconst(gc, x, 0.0)};
  nbl_grad_set_dx(gc, 0, nbl_grad_op(gc, "Where", "", 3, in));
  return nbl_grad_status(gc);
}

/* ------------------------------------------------------------------ opset adapters */

/* Clip: min and max are float attributes before opset 11, inputs of X's type from 11. */
static const nbl_op_adapter clip_steps[] = {
    {.from = 1, .to = 11, .up = nbl_adapt_attrs_to_inputs, .down = nbl_adapt_inputs_to_attrs,
     .attr = "min,max", .input = 1, .attr_type = NBL_ATTR_FLOAT},
    {0}};

/* ThresholdedRelu 1 -> 10: the same op; alpha is written out, so the node
 * says its threshold whatever default a reader assumes. */
static nbl_status trelu_up(nbl_adapt_ctx *c) {
  float a = nbl_attr_float(nbl_adapt_node(c), "alpha", 1.0f);
  nbl_node_set_attr_float(c->graph, c->node, "alpha", a);
  return NBL_OK;
}

static const nbl_op_adapter trelu_steps[] = {
    {.from = 1, .to = 10, .up = trelu_up, .down = nbl_adapt_keep}, {0}};

/* The removed ops become standard ops at opset 10, where they end: the node
 * itself becomes the last op of the chain, so its output keeps its name. The
 * constants take X's float type, which must be known. */
static nbl_status removed_x(nbl_adapt_ctx *c, nbl_id *x, nbl_dtype *dt) {
  const nbl_node *n = nbl_adapt_node(c);
  if (n->n_inputs < 1 || n->inputs[0] == NBL_NONE) return nbl_adapt_refuse(c, "needs its input");
  *x = n->inputs[0];
  *dt = nbl_adapt_float_elem(c, *x);
  if (!*dt)
    return nbl_adapt_refuse(c, "the element type of input '%s' is not known to be a float type "
                               "(the constants of the standard ops take it)",
                            c->graph->values[*x].name);
  return NBL_OK;
}

static nbl_status adapt_oom(void) { return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory"); }

/* Affine -> Add(Mul(x, alpha), beta). */
static nbl_status affine_up(nbl_adapt_ctx *c) {
  nbl_id x;
  nbl_dtype dt;
  nbl_status st = removed_x(c, &x, &dt);
  if (st) return st;
  float a = nbl_attr_float(nbl_adapt_node(c), "alpha", 1.0f);
  float b = nbl_attr_float(nbl_adapt_node(c), "beta", 0.0f);
  nbl_id ka = nbl_adapt_const_floats(c, "alpha", dt, 0, NULL, &a);
  nbl_id kb = nbl_adapt_const_floats(c, "beta", dt, 0, NULL, &b);
  if (ka == NBL_NONE || kb == NBL_NONE) return adapt_oom();
  nbl_id mul[2] = {x, ka};
  nbl_id m = nbl_adapt_add_node(c, "Mul", "scaled", 2, mul, NBL_NONE);
  if (m == NBL_NONE) return adapt_oom();
  nbl_id add[2] = {m, kb};
  return nbl_adapt_replace(c, "Add", 2, add);
}

/* Scale -> Mul(x, scale). */
static nbl_status scale_up(nbl_adapt_ctx *c) {
  nbl_id x;
  nbl_dtype dt;
  nbl_status st = removed_x(c, &x, &dt);
  if (st) return st;
  float s = nbl_attr_float(nbl_adapt_node(c), "scale", 1.0f);
  nbl_id mul[2] = {x, nbl_adapt_const_floats(c, "scale", dt, 0, NULL, &s)};
  if (mul[1] == NBL_NONE) return adapt_oom();
  return nbl_adapt_replace(c, "Mul", 2, mul);
}

/* ScaledTanh -> Mul(Tanh(Mul(x, beta)), alpha); ParametricSoftplus the same
 * with Softplus. */
static nbl_status scaled_act_up(nbl_adapt_ctx *c, const char *act) {
  nbl_id x;
  nbl_dtype dt;
  nbl_status st = removed_x(c, &x, &dt);
  if (st) return st;
  const nbl_node *n = nbl_adapt_node(c);
  if (!nbl_node_attr(n, "alpha") || !nbl_node_attr(n, "beta"))
    return nbl_adapt_refuse(c, "attribute '%s' is missing (no default)",
                            nbl_node_attr(n, "alpha") ? "beta" : "alpha");
  float a = nbl_attr_float(n, "alpha", 1.0f), b = nbl_attr_float(n, "beta", 1.0f);
  nbl_id ka = nbl_adapt_const_floats(c, "alpha", dt, 0, NULL, &a);
  nbl_id kb = nbl_adapt_const_floats(c, "beta", dt, 0, NULL, &b);
  if (ka == NBL_NONE || kb == NBL_NONE) return adapt_oom();
  nbl_id mul[2] = {x, kb};
  nbl_id m = nbl_adapt_add_node(c, "Mul", "scaled", 2, mul, NBL_NONE);
  nbl_id t = m == NBL_NONE ? NBL_NONE : nbl_adapt_add_node(c, act, "act", 1, &m, NBL_NONE);
  if (t == NBL_NONE) return adapt_oom();
  nbl_id out[2] = {t, ka};
  return nbl_adapt_replace(c, "Mul", 2, out);
}
static nbl_status scaledtanh_up(nbl_adapt_ctx *c) { return scaled_act_up(c, "Tanh"); }
static nbl_status psoftplus_up(nbl_adapt_ctx *c) { return scaled_act_up(c, "Softplus"); }

/* ImageScaler -> Add(Mul(x, scale), bias as [1, C, 1, 1]); Mul alone without bias. */
static nbl_status imagescaler_up(nbl_adapt_ctx *c) {
  nbl_id x;
  nbl_dtype dt;
  nbl_status st = removed_x(c, &x, &dt);
  if (st) return st;
  const nbl_node *n = nbl_adapt_node(c);
  int rank = nbl_adapt_rank(c, x), nb = 0;
  int64_t C = nbl_adapt_dim(c, x, 1);
  const float *bias = nbl_attr_floats(n, "bias", &nb);
  if (nbl_node_attr(n, "bias") && !bias)
    return nbl_adapt_refuse(c, "attribute 'bias' is not a list of floats");
  if (rank >= 0 && rank != 4) return nbl_adapt_refuse(c, "input is %d-D, not 4-D", rank);
  if (bias && C >= 0 && nb != C)
    return nbl_adapt_refuse(c, "attribute 'bias' has %d values for %lld channels", nb, (long long)C);
  float s = nbl_attr_float(n, "scale", 1.0f);
  int64_t bd[4] = {1, nb, 1, 1};
  nbl_id ks = nbl_adapt_const_floats(c, "scale", dt, 0, NULL, &s);
  nbl_id kb = bias ? nbl_adapt_const_floats(c, "bias", dt, 4, bd, bias) : NBL_NONE;
  if (ks == NBL_NONE || (bias && kb == NBL_NONE)) return adapt_oom();
  nbl_id mul[2] = {x, ks};
  if (!bias) return nbl_adapt_replace(c, "Mul", 2, mul);
  nbl_id m = nbl_adapt_add_node(c, "Mul", "scaled", 2, mul, NBL_NONE);
  if (m == NBL_NONE) return adapt_oom();
  nbl_id add[2] = {m, kb};
  return nbl_adapt_replace(c, "Add", 2, add);
}

static const nbl_op_adapter affine_steps[] = {{.from = 1, .to = 10, .up = affine_up}, {0}};
static const nbl_op_adapter scale_steps[] = {{.from = 1, .to = 10, .up = scale_up}, {0}};
static const nbl_op_adapter scaledtanh_steps[] = {{.from = 1, .to = 10, .up = scaledtanh_up}, {0}};
static const nbl_op_adapter psoftplus_steps[] = {{.from = 1, .to = 10, .up = psoftplus_up}, {0}};
static const nbl_op_adapter imagescaler_steps[] = {{.from = 1, .to = 10, .up = imagescaler_up}, {0}};

/* ------------------------------------------------------------------ table */

const nbl_op_def nbl_ops_elementwise_unary[] = {
    NBL_OP("Abs", 1, .ref = k_abs, .shape = nbl_shape_same, NBL_SINCE6_CONSUMED, .grad = g_abs),
    NBL_OP("Neg", 1, .ref = k_neg, .shape = shape_neg, NBL_SINCE6_CONSUMED, .grad = g_neg),
    NBL_OP("Reciprocal", 1, .ref = k_reciprocal, .shape = nbl_shape_same, NBL_SINCE6_CONSUMED, .grad = g_reciprocal),
    NBL_OP("Sqrt", 1, .ref = k_sqrt, .shape = nbl_shape_same, NBL_SINCE6_CONSUMED, .grad = g_sqrt),
    NBL_OP("Exp", 1, .ref = k_exp, .shape = nbl_shape_same, NBL_SINCE6_CONSUMED, .grad = g_exp),
    NBL_OP("Log", 1, .ref = k_log, .shape = nbl_shape_same, NBL_SINCE6_CONSUMED, .grad = g_log),
    NBL_OP("Floor", 1, .ref = k_floor, .shape = nbl_shape_same, NBL_SINCE6_CONSUMED, .grad = nbl_grad_zero),
    NBL_OP("Ceil", 1, .ref = k_ceil, .shape = nbl_shape_same, NBL_SINCE6_CONSUMED, .grad = nbl_grad_zero),
    NBL_OP("Round", 11, .ref = k_round, .shape = nbl_shape_same, .stable_since = 11, .grad = nbl_grad_zero),
    NBL_OP("Sign", 9, .ref = k_sign, .shape = nbl_shape_same, .stable_since = 9, .grad = nbl_grad_zero),
    NBL_OP("Sin", 7, .ref = k_sin, .shape = nbl_shape_same, .stable_since = 7, .grad = g_sin),
    NBL_OP("Cos", 7, .ref = k_cos, .shape = nbl_shape_same, .stable_since = 7, .grad = g_cos),
    NBL_OP("Tan", 7, .ref = k_tan, .shape = nbl_shape_same, .stable_since = 7, .grad = g_tan),
    NBL_OP("Asin", 7, .ref = k_asin, .shape = nbl_shape_same, .stable_since = 7, .grad = g_asin),
    NBL_OP("Acos", 7, .ref = k_acos, .shape = nbl_shape_same, .stable_since = 7, .grad = g_acos),
    NBL_OP("Atan", 7, .ref = k_atan, .shape = nbl_shape_same, .stable_since = 7, .grad = g_atan),
    NBL_OP("Sinh", 9, .ref = k_sinh, .shape = nbl_shape_same, .stable_since = 9, .grad = g_sinh),
    NBL_OP("Cosh", 9, .ref = k_cosh, .shape = nbl_shape_same, .stable_since = 9, .grad = g_cosh),
    NBL_OP("Asinh", 9, .ref = k_asinh, .shape = nbl_shape_same, .stable_since = 9, .grad = g_asinh),
    NBL_OP("Acosh", 9, .ref = k_acosh, .shape = nbl_shape_same, .stable_since = 9, .grad = g_acosh),
    NBL_OP("Atanh", 9, .ref = k_atanh, .shape = nbl_shape_same, .stable_since = 9, .grad = g_atanh),
    NBL_OP("Erf", 9, .ref = k_erf, .shape = nbl_shape_same, .stable_since = 9, .grad = g_erf),
    NBL_OP("Not", 1, .ref = k_not, .shape = nbl_shape_same, .stable_since = 1,
        .no_grad = NBL_NO_GRAD_BOOL),
    NBL_OP("BitwiseNot", 18, .ref = k_bitnot, .shape = nbl_shape_same, .stable_since = 18,
        .no_grad = NBL_NO_GRAD_INT),
    NBL_OP("IsNaN", 9, .ref = k_isnan, .shape = shape_bool_same, .stable_since = 9,
        .no_grad = NBL_NO_GRAD_BOOL),
    NBL_OP("IsInf", 10, .ref = k_isinf, .shape = shape_bool_same, .stable_since = 10,
        .no_grad = NBL_NO_GRAD_BOOL),
    NBL_OP("Clip", 1, .ref = k_clip, .shape = nbl_shape_same, .stable_since = 11,
        .adapters = clip_steps, .grad = g_clip),
    NBL_OP("Relu", 1, .ref = k_relu, .shape = nbl_shape_same, NBL_SINCE6_CONSUMED, .grad = g_relu),
    NBL_OP("LeakyRelu", 1, .ref = k_leakyrelu, .shape = nbl_shape_same, NBL_SINCE6_CONSUMED, .grad = g_leakyrelu),
    /* the slope broadcasts to X */
    NBL_OP("Sigmoid", 1, .ref = k_sigmoid, .shape = nbl_shape_same, NBL_SINCE6_CONSUMED, .grad = g_sigmoid),
    NBL_OP("HardSigmoid", 1, .ref = k_hardsigmoid, .shape = nbl_shape_same, NBL_SINCE6_CONSUMED, .grad = g_hardsigmoid),
    NBL_OP("HardSwish", 14, .ref = k_hardswish, .shape = nbl_shape_same, .stable_since = 14, .grad = g_hardswish),
    NBL_OP("Tanh", 1, .ref = k_tanh, .shape = nbl_shape_same, NBL_SINCE6_CONSUMED, .grad = g_tanh),
    NBL_OP("Elu", 1, .ref = k_elu, .shape = nbl_shape_same, NBL_SINCE6_CONSUMED, .grad = g_elu),
    NBL_OP("Selu", 1, .ref = k_selu, .shape = nbl_shape_same, NBL_SINCE6_CONSUMED, .grad = g_selu),
    NBL_OP("Celu", 12, .ref = k_celu, .shape = nbl_shape_same, .stable_since = 12, .grad = g_celu),
    NBL_OP("Softplus", 1, .ref = k_softplus, .shape = nbl_shape_same, .stable_since = 1, .grad = g_softplus),
    NBL_OP("Softsign", 1, .ref = k_softsign, .shape = nbl_shape_same, .stable_since = 1, .grad = g_softsign),
    /* experimental at opsets 1-9 (ONNX Runtime runs it there), the same meaning */
    NBL_OP_DEF("", "ThresholdedRelu", 1, 9, .ref = k_thresholdedrelu, .shape = nbl_shape_same,
        .grad = g_thresholdedrelu),
    NBL_OP("ThresholdedRelu", 10, .ref = k_thresholdedrelu, .shape = nbl_shape_same,
        .stable_since = 10, .adapters = trelu_steps, .grad = g_thresholdedrelu),
    NBL_OP("Mish", 18, .ref = k_mish, .shape = nbl_shape_same, .stable_since = 18, .grad = g_mish),
    NBL_OP("Shrink", 9, .ref = k_shrink, .shape = nbl_shape_same, .stable_since = 9, .grad = g_shrink),
    NBL_OP("Gelu", 20, .ref = k_gelu, .shape = nbl_shape_same, .stable_since = 20, .grad = g_gelu),
    /* removed from ONNX in opset 10 (see "ops ONNX removed" above) */
    NBL_OP_DEF("", "Affine", 1, 9, .ref = k_affine, .shape = nbl_shape_same,
        .adapters = affine_steps, .no_grad = NBL_NO_GRAD_REMOVED),
    NBL_OP_DEF("", "Scale", 1, 9, .ref = k_scale, .shape = nbl_shape_same,
        .adapters = scale_steps, .no_grad = NBL_NO_GRAD_REMOVED),
    NBL_OP_DEF("", "ScaledTanh", 1, 9, .ref = k_scaledtanh, .shape = nbl_shape_same,
        .adapters = scaledtanh_steps, .no_grad = NBL_NO_GRAD_REMOVED),
    NBL_OP_DEF("", "ParametricSoftplus", 1, 9, .ref = k_psoftplus, .shape = nbl_shape_same,
        .adapters = psoftplus_steps, .no_grad = NBL_NO_GRAD_REMOVED),
    NBL_OP_DEF("", "ImageScaler", 1, 9, .ref = k_imagescaler, .shape = shape_imagescaler,
        .adapters = imagescaler_steps, .no_grad = NBL_NO_GRAD_REMOVED),
};
const size_t nbl_ops_elementwise_unary_count = sizeof nbl_ops_elementwise_unary / sizeof nbl_ops_elementwise_unary[0];
