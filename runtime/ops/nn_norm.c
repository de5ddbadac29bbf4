/* runtime/ops/nn_norm.c - op family 'nn_norm': normalization
 * (BatchNormalization in inference and training mode, InstanceNormalization,
 * LayerNormalization, LRN). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/core/grad.h"
#include "runtime/core/adapt.h"
#include "runtime/core/cpu.h"
#include "runtime/core/shape.h"
#include "runtime/kernels/gemm.h"
#include "runtime/ops/ref_common.h"

/* ------------------------------------------------------------------ BatchNormalization */

static nbl_status bn_check(nbl_kctx *c, int *training) {
  nbl_status st;
  const char *names[5] = {"X", "scale", "B", "mean", "var"};
  for (int i = 0; i < 5; i++)
    if ((st = need_input(c, i, names[i]))) return st;
  const nbl_rt_tensor *X = c->in[0];
  if ((st = need_float(c, X, "X"))) return st;
  if (X->rank < 2) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "X has rank %d, expected >= 2", X->rank);
  for (int i = 1; i < 5; i++) {
    if ((st = need_float(c, c->in[i], names[i]))) return st;
    if (c->in[i]->rank != 1 || c->in[i]->dims[0] != X->dims[1])
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input %s must have shape [%lld]", names[i],
                      (long long)X->dims[1]);
  }
  if (c->opset < 9 && nbl_attr_int(c->node, "spatial", 1) == 0)
    return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "spatial=0 is not supported");
  *training = c->opset >= 14 ? (int)nbl_attr_int(c->node, "training_mode", 0) : 0;
  if (c->opset < 14 && (want_out(c, 1) || want_out(c, 2) || want_out(c, 3) || want_out(c, 4)))
    return nbl_kerr(c, NBL_ERR_UNSUPPORTED,
                    "training-mode outputs before opset 14 are not supported");
  if (!*training && c->opset >= 14 && (want_out(c, 1) || want_out(c, 2)))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL,
                    "running_mean/var outputs are only allowed with training_mode=1");
  return nbl_kctx_alloc_out(c, 0, X->dtype, X->rank, X->dims);
}

static nbl_status k_bn_ref(nbl_kctx *c) {
  int training;
  nbl_status st = bn_check(c, &training);
  if (st) return st;
  const nbl_rt_tensor *X = c->in[0];
  int64_t N = X->dims[0], C = X->dims[1], sp = X->numel / (N * C != 0 ? N * C : 1);
  if (N * C == 0) sp = 0;
  double eps = nbl_attr_float(c->node, "epsilon", 1e-5f);
  double mom = nbl_attr_float(c->node, "momentum", 0.9f);
  const nbl_rt_tensor *ts[5] = {c->in[0], c->in[1], c->in[2], c->in[3], c->in[4]};
  double *v[5];
  nbl_rt_tensor *Y = nbl_kctx_out(c, 0);
  double *y = malloc((size_t)(Y->numel ? Y->numel : 1) * sizeof(double));
  double *bm = malloc((size_t)(C ? C : 1) * sizeof(double) * 2);
  if (!y || !bm || !conv_inputs(5, ts, v)) {
    free(y);
    free(bm);
    return oom(c);
  }
  double *bv = bm + C;
  for (int64_t ch = 0; ch < C; ch++) {
    double mean = v[3][ch], var = v[4][ch];
    if (training) {
      double s = 0, s2 = 0;
      for (int64_t n = 0; n < N; n++)
        for (int64_t i = 0; i < sp; i++) s += v[0][(n * C + ch) * sp + i];
      double cntd = (double)(N * sp);
      mean = s / cntd;
      for (int64_t n = 0; n < N; n++)
        for (int64_t i = 0; i < sp; i++) {
          double d = v[0][(n * C + ch) * sp + i] - mean;
          s2 += d * d;
        }
      var = s2 / cntd;
    }
    bm[ch] = mean;
    bv[ch] = var;
    double a = v[1][ch] / sqrt(var + eps);
    for (int64_t n = 0; n < N; n++)
      for (int64_t i = 0; i < sp; i++) {
        int64_t k = (n * C + ch) * sp + i;
        y[k] = (v[0][k] - mean) * a + v[2][ch];
      }
  }
  nbl_from_f64(Y, y);
  for (int o = 1; o <= 2 && training; o++) {
    if (!want_out(c, o)) continue;
    if ((st = nbl_kctx_alloc_out(c, o, c->in[2 + o]->dtype, 1, &C))) break;
    nbl_rt_tensor *R = nbl_kctx_out(c, o);
    double *src = o == 1 ? bm : bv, *run = v[2 + o];
    for (int64_t ch = 0; ch < C; ch++) nbl_rt_set_f64(R, ch, run[ch] * mom + src[ch] * (1 - mom));
  }
  free(y);
  free(bm);
  free_all(5, v);
  return st;
}

static nbl_status k_bn_fast(nbl_kctx *c) {
  for (int i = 0; i < 5; i++)
    if (!in_at(c, i) || c->in[i]->dtype != NBL_DT_FLOAT) return k_bn_ref(c);
  if (c->opset >= 14 && nbl_attr_int(c->node, "training_mode", 0)) return k_bn_ref(c);
  int training;
  nbl_status st = bn_check(c, &training);
  if (st) return st;
  const nbl_rt_tensor *X = c->in[0];
  int64_t N = X->dims[0], C = X->dims[1], sp = N * C != 0 ? X->numel / (N * C) : 0;
  float eps = nbl_attr_float(c->node, "epsilon", 1e-5f);
  const float *x = X->data, *sc = c->in[1]->data, *b = c->in[2]->data, *mu = c->in[3]->data,
              *var = c->in[4]->data;
  float *y = nbl_kctx_out(c, 0)->data;
  for (int64_t ch = 0; ch < C; ch++) {
    double a = sc[ch] / sqrt((double)var[ch] + eps);
    float fa = (float)a, fb = (float)(b[ch] - mu[ch] * a);
    for (int64_t n = 0; n < N; n++) {
      const float *xp = x + (n * C + ch) * sp;
      float *yp = y + (n * C + ch) * sp;
      for (int64_t i = 0; i < sp; i++) yp[i] = xp[i] * fa + fb;
    }
  }
  return NBL_OK;
}

/* ------------------------------------------------------------------ InstanceNormalization */

static nbl_status k_instnorm(nbl_kctx *c) {
  nbl_status st;
  if ((st = need_input(c, 0, "input")) || (st = need_input(c, 1, "scale")) ||
      (st = need_input(c, 2, "B")))
    return st;
  const nbl_rt_tensor *X = c->in[0];
  if ((st = need_float(c, X, "input"))) return st;
  if (X->rank < 3) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input has rank %d, expected >= 3", X->rank);
  int64_t N = X->dims[0], C = X->dims[1], sp = N * C != 0 ? X->numel / (N * C) : 0;
  for (int i = 1; i < 3; i++)
    if (c->in[i]->rank != 1 || c->in[i]->dims[0] != C)
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input %d must have shape [%lld]", i, (long long)C);
  if ((st = nbl_kctx_alloc_out(c, 0, X->dtype, X->rank, X->dims))) return st;
  double eps = nbl_attr_float(c->node, "epsilon", 1e-5f);
  const nbl_rt_tensor *ts[3] = {X, c->in[1], c->in[2]};
  double *v[3];
  nbl_rt_tensor *Y = nbl_kctx_out(c, 0);
  double *y = malloc((size_t)(Y->numel ? Y->numel : 1) * sizeof(double));
  if (!y || !conv_inputs(3, ts, v)) {
    free(y);
    return oom(c);
  }
  for (int64_t pl = 0; pl < N * C; pl++) {
    int64_t ch = pl % C;
    const double *xp = v[0] + pl * sp;
    double s = 0, s2 = 0;
    for (int64_t i = 0; i < sp; i++) s += xp[i];
    double mean = s / (double)sp;
    for (int64_t i = 0; i < sp; i++) s2 += (xp[i] - mean) * (xp[i] - mean);
    double a = v[1][ch] / sqrt(s2 / (double)sp + eps);
    for (int64_t i = 0; i < sp; i++) y[pl * sp + i] = (xp[i] - mean) * a + v[2][ch];
  }
  nbl_from_f64(Y, y);
  free(y);
  free_all(3, v);
  return NBL_OK;
}

/* ------------------------------------------------------------------ LayerNormalization */

/* The checks of LayerNormalization and its outputs allocated: Y like X,
 * Mean and InvStdDev (when requested) of X's shape with 1 from axis on, in
 * the stash type (float for stash_type 1). rows = product of the dims
 * before axis, row length = product from axis on. */
static nbl_status ln_prepare(nbl_kctx *c, int *axis_out, int64_t *rows, int64_t *row_len) {
  nbl_status st;
  if ((st = need_input(c, 0, "X")) || (st = need_input(c, 1, "Scale"))) return st;
  const nbl_rt_tensor *X = c->in[0], *S = c->in[1], *B = in_at(c, 2);
  if ((st = need_float(c, X, "X")) || (st = need_float(c, S, "Scale"))) return st;
  if (B && (st = need_float(c, B, "B"))) return st;
  int axis = nbl_norm_axis(nbl_attr_int(c->node, "axis", -1), X->rank);
  if (axis < 0) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "axis out of range for rank %d", X->rank);
  int nr = X->rank - axis;
  const int64_t *nd = X->dims + axis;
  int64_t outer = 1, inner = 1;
  for (int i = 0; i < axis; i++) outer *= X->dims[i];
  for (int i = axis; i < X->rank; i++) inner *= X->dims[i];
  int64_t tmp[NBL_MAX_RANK];
  int r;
  if (S->rank > nr || nbl_broadcast_shape(nr, nd, S->rank, S->dims, &r, tmp) || r != nr ||
      memcmp(tmp, nd, (size_t)nr * sizeof(int64_t)) ||
      (B && (B->rank > nr || nbl_broadcast_shape(nr, nd, B->rank, B->dims, &r, tmp) || r != nr ||
             memcmp(tmp, nd, (size_t)nr * sizeof(int64_t)))))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "Scale/B do not broadcast to the normalized shape");
  if ((st = nbl_kctx_alloc_out(c, 0, X->dtype, X->rank, X->dims))) return st;
  int64_t sd[NBL_MAX_RANK];
  for (int i = 0; i < X->rank; i++) sd[i] = i < axis ? X->dims[i] : 1;
  nbl_dtype stash = nbl_attr_int(c->node, "stash_type", 1) == 1 ? NBL_DT_FLOAT : X->dtype;
  if (want_out(c, 1) && (st = nbl_kctx_alloc_out(c, 1, stash, X->rank, sd))) return st;
  if (want_out(c, 2) && (st = nbl_kctx_alloc_out(c, 2, stash, X->rank, sd))) return st;
  *axis_out = axis;
  *rows = outer;
  *row_len = inner;
  return NBL_OK;
}

static nbl_status k_layernorm(nbl_kctx *c) {
  int axis;
  int64_t outer, inner;
  nbl_status st = ln_prepare(c, &axis, &outer, &inner);
  if (st) return st;
  const nbl_rt_tensor *X = c->in[0], *S = c->in[1], *B = in_at(c, 2);
  int nr = X->rank - axis;
  const int64_t *nd = X->dims + axis;
  double eps = nbl_attr_float(c->node, "epsilon", 1e-5f);
  const nbl_rt_tensor *ts[3] = {X, S, B};
  double *v[3];
  nbl_rt_tensor *Y = nbl_kctx_out(c, 0);
  double *y = malloc((size_t)(Y->numel ? Y->numel : 1) * sizeof(double));
  if (!y || !conv_inputs(3, ts, v)) {
    free(y);
    return oom(c);
  }
  for (int64_t o = 0; o < outer; o++) {
    const double *xp = v[0] + o * inner;
    double s = 0, s2 = 0;
    for (int64_t i = 0; i < inner; i++) s += xp[i];
    double mean = s / (double)inner;
    for (int64_t i = 0; i < inner; i++) s2 += (xp[i] - mean) * (xp[i] - mean);
    double inv = 1.0 / sqrt(s2 / (double)inner + eps);
    for (int64_t i = 0; i < inner; i++) {
      double sc = v[1][nbl_broadcast_index(nr, nd, i, S->rank, S->dims)];
      double bb = B ? v[2][nbl_broadcast_index(nr, nd, i, B->rank, B->dims)] : 0.0;
      y[o * inner + i] = (xp[i] - mean) * inv * sc + bb;
    }
    if (want_out(c, 1)) nbl_rt_set_f64(nbl_kctx_out(c, 1), o, mean);
    if (want_out(c, 2)) nbl_rt_set_f64(nbl_kctx_out(c, 2), o, inv);
  }
  nbl_from_f64(Y, y);
  free(y);
  free_all(3, v);
  return NBL_OK;
}

/* The float32 fast path: X, Scale and B float32, Scale and B (B optional)
 * holding one value per element of a row (the row's shape, maybe with
 * leading 1s); anything else goes to k_layernorm. The arithmetic is the
 * reference's, in double: sum, mean = sum / n, sum of (x - mean)^2, inv =
 * 1 / sqrt(that / n + eps), y = (x - mean) * inv * scale + b rounded once
 * to float (no contraction: -std=c11). The sums run in vector lanes, so
 * mean and inv may differ from the reference's sequential sums in the last
 * bits of a double, and y (after its one rounding to float) by at most an
 * ulp, rarely (test_ops_transformer_fast bounds it). Rows in parallel. */
typedef struct lnjob {
  const float *x, *s, *b;
  float *y, *mean, *inv;
  int64_t len;
  double eps;
} lnjob;

/* One row of the fast path, in vectors of VN doubles (GCC vector types),
 * the tail in scalars; the same text under each ISA's target attribute. */
#define LN_ROW_BODY(VN)                                                              \
  typedef double vd __attribute__((vector_size((VN) * 8)));                           \
  typedef float vf __attribute__((vector_size((VN) * 4)));                            \
  const lnjob *j = arg;                                                               \
  int64_t n = j->len, nv = n - n % (VN);                                              \
  for (int64_t o = b; o < e; o++) {                                                   \
    const float *xp = j->x + o * n;                                                   \
    float *yp = j->y + o * n;                                                         \
    vd acc = {0};                                                                     \
    vf t;                                                                             \
    for (int64_t i = 0; i < nv; i += (VN)) {                                          \
      memcpy(&t, xp + i, sizeof t);                                                   \
      acc += __builtin_convertvector(t, vd);                                          \
    }                                                                                 \
    double s = 0;                                                                     \
    for (int l = 0; l < (VN); l++) s += acc[l];                                       \
    for (int64_t i = nv; i < n; i++) s += (double)xp[i];                              \
    double mean = s / (double)n;                                                      \
    vd vm = (vd){0} + mean, acc2 = {0};                                               \
    for (int64_t i = 0; i < nv; i += (VN)) {                                          \
      memcpy(&t, xp + i, sizeof t);                                                   \
      vd d = __builtin_convertvector(t, vd) - vm;                                     \
      acc2 += d * d;                                                                  \
    }                                                                                 \
    double s2 = 0;                                                                    \
    for (int l = 0; l < (VN); l++) s2 += acc2[l];                                     \
    for (int64_t i = nv; i < n; i++) s2 += ((double)xp[i] - mean) * ((double)xp[i] - mean); \
    double inv = 1.0 / sqrt(s2 / (double)n + j->eps);                                 \
    vd vi = (vd){0} + inv;                                                            \
    vf ts, tb = {0};                                                                  \
    for (int64_t i = 0; i < nv; i += (VN)) {                                          \
      memcpy(&t, xp + i, sizeof t);                                                   \
      memcpy(&ts, j->s + i, sizeof ts);                                               \
      if (j->b) memcpy(&tb, j->b + i, sizeof tb);                                     \
      vd r = (__builtin_convertvector(t, vd) - vm) * vi * __builtin_convertvector(ts, vd) + \
             __builtin_convertvector(tb, vd);                                         \
      t = __builtin_convertvector(r, vf);                                             \
      memcpy(yp + i, &t, sizeof t);                                                   \
    }                                                                                 \
    for (int64_t i = nv; i < n; i++)                                                  \
      yp[i] = (float)(((double)xp[i] - mean) * inv * (double)j->s[i] +                \
                      (j->b ? (double)j->b[i] : 0.0));                                \
    if (j->mean) j->mean[o] = (float)mean;                                            \
    if (j->inv) j->inv[o] = (float)inv;                                               \
  }

__attribute__((target("avx512f"))) static void ln_rows_avx512(void *arg, int64_t b, int64_t e) {
  LN_ROW_BODY(8)
}
__attribute__((target("avx2"))) static void ln_rows_avx2(void *arg, int64_t b, int64_t e) {
  LN_ROW_BODY(4)
}
static void ln_rows_base(void *arg, int64_t b, int64_t e) { LN_ROW_BODY(2) }
#undef LN_ROW_BODY

static nbl_status k_layernorm_fast(nbl_kctx *c) {
  const nbl_rt_tensor *X = in_at(c, 0), *S = in_at(c, 1), *B = in_at(c, 2);
  if (!X || !S || X->dtype != NBL_DT_FLOAT || S->dtype != NBL_DT_FLOAT ||
      (B && B->dtype != NBL_DT_FLOAT))
    return k_layernorm(c);
  int axis = nbl_norm_axis(nbl_attr_int(c->node, "axis", -1), X->rank);
  int64_t outer = 1, inner = 1;
  for (int i = 0; i < X->rank; i++) *(axis >= 0 && i >= axis ? &inner : &outer) *= X->dims[i];
  /* Scale and B broadcast to the row's shape (ln_prepare checks it): the same
   * count means the row's shape with leading 1s, one value per element */
  if (axis < 0 || inner == 0 || S->numel != inner || (B && B->numel != inner)) return k_layernorm(c);
  nbl_status st = ln_prepare(c, &axis, &outer, &inner);
  if (st || outer == 0) return st;
  lnjob j = {.x = X->data, .s = S->data, .b = B ? B->data : NULL,
             .y = nbl_kctx_out(c, 0)->data,
             .mean = want_out(c, 1) ? nbl_kctx_out(c, 1)->data : NULL,
             .inv = want_out(c, 2) ? nbl_kctx_out(c, 2)->data : NULL,
             .len = inner, .eps = nbl_attr_float(c->node, "epsilon", 1e-5f)};
  void (*fn)(void *, int64_t, int64_t) = nbl_cpu_has(NBL_CPU_AVX512F) ? ln_rows_avx512
                                         : nbl_cpu_has(NBL_CPU_AVX2)  ? ln_rows_avx2
                                                                      : ln_rows_base;
  nbl_parallel_for(c, outer, 1 + 16384 / inner, fn, &j);
  return NBL_OK;
}

/* ------------------------------------------------------------------ LRN */

static nbl_status k_lrn(nbl_kctx *c) {
  nbl_status st;
  if ((st = need_input(c, 0, "X"))) return st;
  const nbl_rt_tensor *X = c->in[0];
  if ((st = need_float(c, X, "X"))) return st;
  if (X->rank < 2) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "X has rank %d, expected >= 2", X->rank);
  int64_t size = nbl_attr_int(c->node, "size", 0);
  if (size <= 0) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "attribute 'size' must be positive");
  double alpha = nbl_attr_float(c->node, "alpha", 1e-4f), beta = nbl_attr_float(c->node, "beta", 0.75f),
         bias = nbl_attr_float(c->node, "bias", 1.0f);
  if ((st = nbl_kctx_alloc_out(c, 0, X->dtype, X->rank, X->dims))) return st;
  int64_t N = X->dims[0], C = X->dims[1], sp = N * C != 0 ? X->numel / (N * C) : 0;
  nbl_rt_tensor *Y = nbl_kctx_out(c, 0);
  double *x = nbl_to_f64(X), *y = malloc((size_t)(Y->numel ? Y->numel : 1) * sizeof(double));
  if (!x || !y) {
    free(x);
    free(y);
    return oom(c);
  }
  int64_t lo = (size - 1) / 2, hi = size - 1 - lo;
  for (int64_t n = 0; n < N; n++)
    for (int64_t ch = 0; ch < C; ch++)
      for (int64_t i = 0; i < sp; i++) {
        double ss = 0;
        for (int64_t cc = ch - lo; cc <= ch + hi; cc++)
          if (cc >= 0 && cc < C) {
            double v = x[(n * C + cc) * sp + i];
            ss += v * v;
          }
        int64_t k = (n * C + ch) * sp + i;
        y[k] = x[k] / pow(bias + alpha / (double)size * ss, beta);
      }
  nbl_from_f64(Y, y);
  free(x);
  free(y);
  return NBL_OK;
}

/* ------------------------------------------------------------------ shape rules */

static nbl_status shape_batchnorm(nbl_shape_ctx *c) {
  nbl_status st = nbl_shape_same(c);
  if (st) return st;
  nbl_shp s;
  if (c->opset >= 14) {
    nbl_shp_in(c, 3, &s);
    st = nbl_shp_set(c, 1, &s);
    if (!st) {
      nbl_shp_in(c, 4, &s);
      st = nbl_shp_set(c, 2, &s);
    }
    return st;
  }
  for (int k = 1; k < 5 && !st; k++) {
    nbl_shp_in(c, k < 3 ? k + 2 : 1, &s);
    st = nbl_shp_set(c, k, &s);
  }
  return st;
}

static nbl_status shape_layernorm(nbl_shape_ctx *c) {
  nbl_status st = nbl_shape_same(c);
  if (st) return st;
  nbl_shp x;
  nbl_shp_in(c, 0, &x);
  nbl_dtype sdt = (nbl_dtype)nbl_attr_int(c->node, "stash_type", NBL_DT_FLOAT);
  if (x.rank < 0) {
    st = nbl_shp_set_dt(c, 1, sdt, -1);
    return st ? st : nbl_shp_set_dt(c, 2, sdt, -1);
  }
  int a = nbl_norm_axis(nbl_attr_int(c->node, "axis", -1), x.rank);
  nbl_shp o = x;
  o.dt = sdt;
  if (a >= 0)
    for (int i = a; i < x.rank; i++) o.d[i] = nbl_dim_val(1);
  else
    nbl_shp_rank(&o, sdt, x.rank);
  st = nbl_shp_set(c, 1, &o);
  return st ? st : nbl_shp_set(c, 2, &o);
}

/* ------------------------------------------------------------------ gradient rules
 * (runtime/core/grad.h) */

/* BatchNormalization in inference mode (running statistics as constants):
 * dX = dY scale inv_std, dscale = sum dY (x - mean) inv_std, dB = sum dY, the
 * sums over every axis but 1. Training mode is com.microsoft BatchNormInternal
 * (its rule is on its own table line, runtime/ops/grad_norm.c). */
static nbl_status g_batchnorm(nbl_grad_ctx *gc) {
  const nbl_node *n = nbl_grad_node(gc);
  if (nbl_attr_int(n, "training_mode", 0) != 0)
    return nbl_grad_fail(gc, NBL_ERR_UNSUPPORTED,
                         "gradient of BatchNormalization with training_mode=1 is not supported: "
                         "the build-training pass makes it com.microsoft BatchNormInternal");
  nbl_grad_no_dx(gc, 3, "the running mean is a statistic, not a parameter");
  nbl_grad_no_dx(gc, 4, "the running variance is a statistic, not a parameter");
  nbl_id X = nbl_grad_x(gc, 0);
  int r = nbl_grad_rank(gc, X);
  if (r < 2 || r > NBL_MAX_RANK)
    return nbl_grad_fail(gc, NBL_ERR_UNSUPPORTED, "the rank of X must be known and >= 2");
  nbl_dtype dt = nbl_grad_dtype(gc, X);
  float eps = nbl_attr_float(n, "epsilon", 1e-5f);
  int64_t sp[NBL_MAX_RANK], red[NBL_MAX_RANK];
  int nsp = 0, nred = 0;
  for (int k = 0; k < r; k++) {
    if (k >= 2) sp[nsp++] = k - 1;
    if (k != 1) red[nred++] = k;
  }
  nbl_id dY = nbl_grad_dy(gc, 0);
  nbl_id eps_c = nbl_grad_const(gc, dt, (double)eps);
  nbl_id inv = nbl_grad_un(gc, "Reciprocal",
                           nbl_grad_un(gc, "Sqrt", nbl_grad_bin(gc, "Add", nbl_grad_x(gc, 4), eps_c)));
  if (nbl_grad_wants(gc, 0)) {
    nbl_id f = nbl_grad_unsqueeze(gc, nbl_grad_bin(gc, "Mul", nbl_grad_x(gc, 1), inv), nsp, sp);
    nbl_grad_set_dx(gc, 0, nbl_grad_bin(gc, "Mul", dY, f));
  }
  if (nbl_grad_wants(gc, 1)) {
    nbl_id xc = nbl_grad_bin(gc, "Sub", X, nbl_grad_unsqueeze(gc, nbl_grad_x(gc, 3), nsp, sp));
    nbl_id xh = nbl_grad_bin(gc, "Mul", xc, nbl_grad_unsqueeze(gc, inv, nsp, sp));
    nbl_grad_set_dx(gc, 1, nbl_grad_reduce_sum(gc, nbl_grad_bin(gc, "Mul", dY, xh), nred, red, 0));
  }
  if (nbl_grad_wants(gc, 2)) nbl_grad_set_dx(gc, 2, nbl_grad_reduce_sum(gc, dY, nred, red, 0));
  return nbl_grad_status(gc);
}

/* LayerNormalization: com.microsoft LayerNormalizationGrad (dY, X, scale, mean,
 * inv_std_dev -> dX, dscale, dbias); the forward node is made to produce its
 * Mean and InvStdDev outputs. */
static nbl_status g_layernorm(nbl_grad_ctx *gc) {
  int want[3] = {nbl_grad_wants(gc, 0), nbl_grad_wants(gc, 1), nbl_grad_wants(gc, 2)};
  if (!want[0] && !want[1] && !want[2]) return NBL_OK;
  nbl_id in[5] = {nbl_grad_dy(gc, 0), nbl_grad_x(gc, 0), nbl_grad_x(gc, 1),
                  nbl_grad_y_need(gc, 1), nbl_grad_y_need(gc, 2)};
  nbl_id out[3];
  nbl_grad_opn(gc, "LayerNormalizationGrad", "com.microsoft", NULL, 5, in, 3, want, out);
  nbl_grad_attr_int(gc, "axis", nbl_attr_int(nbl_grad_node(gc), "axis", -1));
  for (int i = 0; i < 3; i++) nbl_grad_set_dx(gc, i, out[i]);
  return nbl_grad_status(gc);
}

/* LRN: ai.nibble LRNGrad (runtime/ops/grad_norm.c) on dY, X and Y. */
static nbl_status g_lrn(nbl_grad_ctx *gc) {
  if (!nbl_grad_wants(gc, 0)) return NBL_OK;
  const nbl_node *n = nbl_grad_node(gc);
  nbl_id in[3] = {nbl_grad_dy(gc, 0), nbl_grad_x(gc, 0), nbl_grad_y(gc, 0)};
  nbl_id dx = nbl_grad_op(gc, "LRNGrad", "ai.nibble", 3, in);
  nbl_grad_attr_float(gc, "alpha", nbl_attr_float(n, "alpha", 1e-4f));
  nbl_grad_attr_float(gc, "beta", nbl_attr_float(n, "beta", 0.75f));
  nbl_grad_attr_float(gc, "bias", nbl_attr_float(n, "bias", 1.0f));
  nbl_grad_attr_int(gc, "size", nbl_attr_int(n, "size", 0));
  nbl_grad_set_dx(gc, 0, dx);
  return nbl_grad_status(gc);
}

/* InstanceNormalization: each (n, c) plane normalized over its spatial axes
 * A, xhat = (x - mean) / sqrt(var + eps), y = scale_c xhat + B_c, so
 *   dX = scale_c / sqrt(var + eps) (dY - mean_A(dY) - xhat mean_A(dY xhat)),
 *   dscale = sum over n and A of dY xhat, dB = sum over n and A of dY,
 * written with ReduceMean / ReduceSum (the rank must be known). */
static nbl_status g_instnorm(nbl_grad_ctx *gc) {
  int want[3] = {nbl_grad_wants(gc, 0), nbl_grad_wants(gc, 1), nbl_grad_wants(gc, 2)};
  if (!want[0] && !want[1] && !want[2]) return NBL_OK;
  nbl_id X = nbl_grad_x(gc, 0), dy = nbl_grad_dy(gc, 0);
  int r = nbl_grad_rank(gc, X);
  if (r < 3 || r > NBL_MAX_RANK) return nbl_grad_fail(gc, NBL_ERR_UNSUPPORTED, "the rank of the input must be known");
  int64_t A[NBL_MAX_RANK], nA[NBL_MAX_RANK], shp[NBL_MAX_RANK];
  for (int k = 2; k < r; k++) A[k - 2] = k;
  nA[0] = 0;
  for (int k = 2; k < r; k++) nA[k - 1] = k; /* n and the spatial axes */
  for (int k = 1; k < r; k++) shp[k] = 1;    /* [C] as [C, 1, ...] (X's dims after N) */
  shp[0] = -1;
  nbl_dtype dt = nbl_grad_dtype(gc, X);
  nbl_id mean = nbl_grad_reduce_sum(gc, X, r - 2, A, 1);
  nbl_id cnt = nbl_grad_count_ratio(gc, X, mean);
  mean = nbl_grad_bin(gc, "Div", mean, cnt);
  nbl_id xc = nbl_grad_bin(gc, "Sub", X, mean);
  nbl_id var = nbl_grad_bin(gc, "Div", nbl_grad_reduce_sum(gc, nbl_grad_bin(gc, "Mul", xc, xc), r - 2, A, 1), cnt);
  nbl_id eps = nbl_grad_const(gc, dt, nbl_attr_float(nbl_grad_node(gc), "epsilon", 1e-5f));
  nbl_id inv = nbl_grad_un(gc, "Reciprocal", nbl_grad_un(gc, "Sqrt", nbl_grad_bin(gc, "Add", var, eps)));
  nbl_id xhat = nbl_grad_bin(gc, "Mul", xc, inv), gx = nbl_grad_bin(gc, "Mul", dy, xhat);
  if (want[0]) {
    nbl_id sc = nbl_grad_bin(gc, "Reshape", nbl_grad_x(gc, 1), nbl_grad_const_i64(gc, r - 1, shp));
    nbl_id mdy = nbl_grad_bin(gc, "Div", nbl_grad_reduce_sum(gc, dy, r - 2, A, 1), cnt);
    nbl_id mgx = nbl_grad_bin(gc, "Div", nbl_grad_reduce_sum(gc, gx, r - 2, A, 1), cnt);
    nbl_id t = nbl_grad_bin(gc, "Sub", nbl_grad_bin(gc, "Sub", dy, mdy), nbl_grad_bin(gc, "Mul", xhat, mgx));
    nbl_grad_set_dx(gc, 0, nbl_grad_bin(gc, "Mul", nbl_grad_bin(gc, "Mul", sc, inv), t));
  }
  if (want[1]) nbl_grad_set_dx(gc, 1, nbl_grad_reduce_sum(gc, gx, r - 1, nA, 0));
  if (want[2]) nbl_grad_set_dx(gc, 2, nbl_grad_reduce_sum(gc, dy, r - 1, nA, 0));
  return nbl_grad_status(gc);
}

/* ------------------------------------------------------------------ table */

/* ------------------------------------------------------------------ opset adapters */

/* BatchNormalization is in training mode before opset 14 when it has more
 * outputs than Y (mean, var, saved_mean, saved_var); from 14 by its
 * training_mode attribute, with other outputs. Only inference converts. */
static nbl_status bn_no_training(nbl_adapt_ctx *c) {
  for (int k = 1; k < 5; k++)
    if (nbl_adapt_output_used(c, k))
      return nbl_adapt_refuse(c, "output %d is used (training mode) before opset 14", k);
  for (int k = 1; k < 5; k++) nbl_adapt_drop_output(c, k);
  return NBL_OK;
}

/* Opset 6 -> 7: is_test and consumed_inputs go (shared), in inference only. */
static nbl_status bn_up7(nbl_adapt_ctx *c) {
  nbl_status st = bn_no_training(c);
  return st ? st : nbl_adapt_is_test(c);
}

/* Opset 7 -> 9: spatial goes (the per-channel form, spatial=1, stays). */
static nbl_status bn_up9(nbl_adapt_ctx *c) {
  if (nbl_attr_int(nbl_adapt_node(c), "spatial", 1) == 0)
    return nbl_adapt_refuse(c, "spatial=0 has no form from opset 9 on");
  nbl_adapt_drop_attr(c, "spatial");
  return NBL_OK;
}

/* Opset 14 -> 9..13: training_mode must be off and the outputs unused. */
static nbl_status bn_down14(nbl_adapt_ctx *c) {
  if (nbl_attr_int(nbl_adapt_node(c), "training_mode", 0))
    return nbl_adapt_refuse(c, "training_mode=1 has no form before opset 14");
  nbl_adapt_drop_attr(c, "training_mode");
  return bn_no_training(c);
}

static const nbl_op_adapter bn_steps[] = {
    {.from = 1, .to = 7, .up = bn_up7, .down = nbl_adapt_is_test_down},
    {.from = 7, .to = 9, .up = bn_up9, .down = nbl_adapt_keep},
    {.from = 9, .to = 14, .up = bn_no_training, .down = bn_down14},
    {0},
};

const nbl_op_def nbl_ops_nn_norm[] = {
    NBL_OP("BatchNormalization", 1, .ref = k_bn_ref, .fast = k_bn_fast, .shape = shape_batchnorm,
        .stable_since = 14, .adapters = bn_steps, .grad = g_batchnorm),
    NBL_OP("InstanceNormalization", 1, .ref = k_instnorm, .shape = nbl_shape_same,
        NBL_SINCE6_CONSUMED, .grad = g_instnorm),
    NBL_OP("LayerNormalization", 17, .ref = k_layernorm, .fast = k_layernorm_fast, .shape = shape_layernorm,
        .stable_since = 17, .grad = g_layernorm),
    NBL_OP("LRN", 1, .ref = k_lrn, .shape = nbl_shape_same, .stable_since = 1, .grad = g_lrn),
};
const size_t nbl_ops_nn_norm_count = sizeof nbl_ops_nn_norm / sizeof nbl_ops_nn_norm[0];
