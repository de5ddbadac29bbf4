/* runtime/ops/quant_contrib.c - op family 'quant_contrib': the quantized
 * contrib ops of ONNX Runtime (domain com.microsoft, version 1) that the
 * int8 models of the ONNX Model Zoo hold next to the standard QLinearConv /
 * QLinearMatMul (runtime/ops/quant.c):
 *
 *   QLinearAdd, QLinearMul   A, A_scale, A_zero_point?, B, B_scale, B_zero_point?,
 *                            C_scale, C_zero_point? -> C; numpy broadcasting of A, B
 *   QLinearLeakyRelu (alpha, default 0.01), QLinearSigmoid
 *                            X, X_scale, X_zero_point?, Y_scale, Y_zero_point? -> Y
 *   QLinearAveragePool       the same inputs; AveragePool's attributes (auto_pad,
 *                            ceil_mode, count_include_pad, kernel_shape, pads,
 *                            strides) and channels_last (default 0)
 *   QLinearGlobalAveragePool X, x_scale, x_zero_point, y_scale, y_zero_point -> Y
 *                            [N, C, 1, ...] (channels_last: [N, 1, ..., C])
 *   QLinearConcat            Y_scale, Y_zero_point, then (X, X_scale, X_zero_point)
 *                            per input; axis (required, negative allowed)
 *   QGemm                    A, a_scale, a_zero_point?, B, b_scale, b_zero_point?, C?,
 *                            y_scale?, y_zero_point? -> Y [M, N]; alpha, transA,
 *                            transB. B's scale and zero point per tensor or per
 *                            output column ([N]); C int32 (Gemm's broadcasting), in
 *                            the scale a_scale * b_scale; without y_scale Y is float32
 *   QLinearSoftmax           X, X_scale, x_zero_point?, y_scale, y_zero_point? -> Y;
 *                            axis (default -1), opset (required: the original
 *                            Softmax's; < 13: X coerced to 2-D at axis)
 *
 * (? = optional, "" or absent: zero point 0.) The codes are int8 or uint8,
 * one type per node (the zero points' too); scales are float scalars
 * (rank 0, or one element of rank 1, as ONNX Runtime accepts them).
 *
 * The reference semantics, in float32 as QuantizeLinear / DequantizeLinear:
 * each input dequantized, x = (float)(q - zp) * scale; the op computed in
 * float (Add, Mul: one float32 operation; LeakyRelu: x >= 0 ? x : alpha * x;
 * Sigmoid: 1 / (1 + exp(-x)) in double, rounded to float; the average pools:
 * the sum of the window's dequantized values in double (exact) divided by the
 * element count AveragePool uses, rounded to float); the result quantized as
 * QuantizeLinear does: rintf(v / y_scale) (half to even) + zero point,
 * saturated (NaN gives 0). ONNX Runtime computes some of these in fixed point,
 * with lookup tables or vector approximations and adds the zero point before
 * rounding, so it can differ by one code where v / y_scale is near a tie.
 * The one-input ops and QLinearConcat go through a 256-entry table of those
 * results (the same numbers, one computation per code). QGemm accumulates
 * sum_k (A - a_zp)(B - b_zp[n]) + C exactly (int64) and scales it in float32
 * by alpha * a_scale * b_scale[n], as ONNX Runtime; QLinearSoftmax computes
 * exp(x - max) and the row sum in double (ONNX Runtime: a float table of exp
 * over code differences, and floor(1 / y_scale) as the output scale).
 *
 * The window geometry (pads, auto_pad, ceil_mode, strides) is
 * nbl_conv_geom_init's and the window loop AveragePool's own
 * (nbl_pool_plane_ref, runtime/ops/nn_pool.h); the shape rules are the float ops'
 * (nbl_shp_bcast, nbl_shp_window, nbl_shape_concat_inputs, nbl_shape_gemm). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/core/shape.h"
#include "runtime/kernels/gemm.h"
#include "runtime/ops/nn.h"
#include "runtime/ops/nn_pool.h"
#include "runtime/ops/shape.h"

#define MS_DOMAIN "com.microsoft"

/* ------------------------------------------------------------------ inputs and parameters */

static const nbl_rt_tensor *in_at(nbl_kctx *c, int i) { return i < c->n_in ? c->in[i] : NULL; }

/* The model's name of node input i ("" when omitted). */
static const char *in_name(const nbl_kctx *c, int i) {
  if (i >= c->node->n_inputs || c->node->inputs[i] == NBL_NONE) return "";
  const char *s = c->graph->values[c->node->inputs[i]].name;
  return s ? s : "";
}

/* t's shape as "[2,3]" into buf. */
static const char *dims_str(char *buf, size_t n, const nbl_rt_tensor *t) {
  size_t k = (size_t)snprintf(buf, n, "[");
  for (int i = 0; i < t->rank && k < n; i++)
    k += (size_t)snprintf(buf + k, n - k, "%s%lld", i ? "," : "", (long long)t->dims[i]);
  if (k < n) snprintf(buf + k, n - k, "]");
  return buf;
}

static nbl_status need(nbl_kctx *c, int i, const char *what, const nbl_rt_tensor **t) {
  *t = in_at(c, i);
  if (!*t) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "required input %d (%s) is missing", i, what);
  return NBL_OK;
}

static int is_q8(nbl_dtype t) { return t == NBL_DT_UINT8 || t == NBL_DT_INT8; }

/* Input i (what) holds int8 or uint8 codes. */
static nbl_status need_codes(nbl_kctx *c, int i, const char *what, const nbl_rt_tensor **t) {
  nbl_status st = need(c, i, what, t);
  if (st) return st;
  if (!is_q8((*t)->dtype))
    return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "input %d '%s' (%s) has element type %s; supported: "
                    "uint8, int8", i, in_name(c, i), what, nbl_dtype_name((*t)->dtype));
  return NBL_OK;
}

/* Input i (what) has the element type dt of the node's codes (those of `of`). */
static nbl_status same_codes(nbl_kctx *c, int i, const char *what, const nbl_rt_tensor *t, nbl_dtype dt,
                             const char *of) {
  if (t->dtype != dt)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input %d '%s' (%s) has element type %s, expected %s (%s's type)",
                    i, in_name(c, i), what, nbl_dtype_name(t->dtype), nbl_dtype_name(dt), of);
  return NBL_OK;
}

/* A scale or zero point: rank 0, or rank 1 with one element. */
static nbl_status need_scalar(nbl_kctx *c, int i, const char *what, const nbl_rt_tensor *t) {
  char b[160];
  if (t->rank == 0 || (t->rank == 1 && t->numel == 1)) return NBL_OK;
  return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input %d '%s' (%s) must be a scalar, got shape %s "
                  "(per-tensor quantization only)", i, in_name(c, i), what, dims_str(b, sizeof b, t));
}

/* One code type's quantization: scale, zero point and the code range. */
typedef struct qparam {
  float scale;
  int32_t zp, lo, hi;
  int is_signed;
} qparam;

/* Scale at input is (float scalar, required) and zero point at input iz
 * (scalar of type dt, the type of input `of`; zp_required: must be present,
 * else absent = 0). */
static nbl_status read_qparam(nbl_kctx *c, int is, const char *sname, int iz, const char *zname,
                              int zp_required, nbl_dtype dt, const char *of, qparam *p) {
  const nbl_rt_tensor *s, *z = in_at(c, iz);
  nbl_status st = need(c, is, sname, &s);
  if (st || (st = need_scalar(c, is, sname, s))) return st;
  if (s->dtype != NBL_DT_FLOAT)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input %d '%s' (%s) has element type %s, expected float",
                    is, in_name(c, is), sname, nbl_dtype_name(s->dtype));
  if (!z && zp_required) return need(c, iz, zname, &z);
  if (z && ((st = same_codes(c, iz, zname, z, dt, of)) || (st = need_scalar(c, iz, zname, z))))
    return st;
  p->scale = *(const float *)s->data;
  p->is_signed = dt == NBL_DT_INT8;
  p->lo = p->is_signed ? -128 : 0;
  p->hi = p->is_signed ? 127 : 255;
  p->zp = !z ? 0 : p->is_signed ? *(const int8_t *)z->data : *(const uint8_t *)z->data;
  return NBL_OK;
}

/* The code of byte b (an element of an int8 or uint8 tensor). */
static inline int32_t code_of(const qparam *p, uint8_t b) { return p->is_signed ? (int8_t)b : b; }

static inline float dequant(const qparam *p, uint8_t b) { return (float)(code_of(p, b) - p->zp) * p->scale; }

/* QuantizeLinear: rintf(v / scale) + zero point, saturated; NaN gives 0 (as
 * nibble's QuantizeLinear). Returns the element's byte. */
static inline uint8_t quant(const qparam *p, float v) {
  float q = rintf(v / p->scale);
  if (isnan(q)) return 0;
  double d = (double)q + p->zp;
  int32_t k = d < p->lo ? p->lo : d > p->hi ? p->hi : (int32_t)d;
  return (uint8_t)k;
}

/* x's dequantized value for each byte. */
static void deq_table(const qparam *p, float *t) {
  for (int b = 0; b < 256; b++) t[b] = dequant(p, (uint8_t)b);
}

/* ------------------------------------------------------------------ QLinearAdd, QLinearMul */

static nbl_status k_qlinear_binary(nbl_kctx *c, int mul) {
  const nbl_rt_tensor *A, *B;
  qparam pa, pb, pc;
  nbl_status st;
  if ((st = need_codes(c, 0, "A", &A)) || (st = need(c, 3, "B", &B)) ||
      (st = same_codes(c, 3, "B", B, A->dtype, "A")) ||
      (st = read_qparam(c, 1, "A_scale", 2, "A_zero_point", 0, A->dtype, "A", &pa)) ||
      (st = read_qparam(c, 4, "B_scale", 5, "B_zero_point", 0, A->dtype, "A", &pb)) ||
      (st = read_qparam(c, 6, "C_scale", 7, "C_zero_point", 0, A->dtype, "A", &pc)))
    return st;
  int r;
  int64_t od[NBL_MAX_RANK];
  if (nbl_broadcast_shape(A->rank, A->dims, B->rank, B->dims, &r, od)) {
    char x[160], y[160];
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "A '%s' %s and B '%s' %s do not broadcast", in_name(c, 0),
                    dims_str(x, sizeof x, A), in_name(c, 3), dims_str(y, sizeof y, B));
  }
  if ((st = nbl_kctx_alloc_out(c, 0, A->dtype, r, od))) return st;
  nbl_rt_tensor *C = nbl_kctx_out(c, 0);
  float fa[256], fb[256];
  deq_table(&pa, fa);
  deq_table(&pb, fb);
  const uint8_t *a = A->data, *b = B->data;
  uint8_t *y = C->data;
  /* an operand with the output's element count is read in place */
  int a_full = A->numel == C->numel, b_full = B->numel == C->numel;
  for (int64_t i = 0; i < C->numel; i++) {
    float va = fa[a[a_full ? i : nbl_broadcast_index(r, od, i, A->rank, A->dims)]];
    float vb = fb[b[b_full ? i : nbl_broadcast_index(r, od, i, B->rank, B->dims)]];
    y[i] = quant(&pc, mul ? va * vb : va + vb);
  }
  return NBL_OK;
}

static nbl_status k_qlinear_add(nbl_kctx *c) { return k_qlinear_binary(c, 0); }
static nbl_status k_qlinear_mul(nbl_kctx *c) { return k_qlinear_binary(c, 1); }

/* ------------------------------------------------------------------ QLinearLeakyRelu, QLinearSigmoid */

enum { UN_LEAKY, UN_SIGMOID };

/* X, X_scale, X_zero_point?, Y_scale, Y_zero_point?: X's codes and both parameters. */
static nbl_status unary_params(nbl_kctx *c, int zp_required, const nbl_rt_tensor **X, qparam *px, qparam *py) {
  nbl_status st;
  if ((st = need_codes(c, 0, "X", X)) ||
      (st = read_qparam(c, 1, "X_scale", 2, "X_zero_point", zp_required, (*X)->dtype, "X", px)) ||
      (st = read_qparam(c, 3, "Y_scale", 4, "Y_zero_point", zp_required, (*X)->dtype, "X", py)))
    return st;
  return NBL_OK;
}

static nbl_status k_qlinear_unary(nbl_kctx *c, int kind) {
  const nbl_rt_tensor *X;
  qparam px, py;
  nbl_status st = unary_params(c, 0, &X, &px, &py);
  if (st) return st;
  float alpha = nbl_attr_float(c->node, "alpha", 0.01f);
  uint8_t lut[256];
  for (int b = 0; b < 256; b++) {
    float x = dequant(&px, (uint8_t)b), v;
    if (kind == UN_LEAKY) v = x >= 0 ? x : alpha * x;
    else v = (float)(1.0 / (1.0 + exp(-(double)x)));
    lut[b] = quant(&py, v);
  }
  if ((st = nbl_kctx_alloc_out(c, 0, X->dtype, X->rank, X->dims))) return st;
  const uint8_t *x = X->data;
  uint8_t *y = nbl_kctx_out(c, 0)->data;
  for (int64_t i = 0; i < X->numel; i++) y[i] = lut[x[i]];
  return NBL_OK;
}

static nbl_status k_qlinear_leakyrelu(nbl_kctx *c) { return k_qlinear_unary(c, UN_LEAKY); }
static nbl_status k_qlinear_sigmoid(nbl_kctx *c) { return k_qlinear_unary(c, UN_SIGMOID); }

/* ------------------------------------------------------------------ QLinearGlobalAveragePool */

static nbl_status k_qlinear_gavgpool(nbl_kctx *c) {
  const nbl_rt_tensor *X;
  qparam px, py;
  nbl_status st = unary_params(c, 1, &X, &px, &py);
  if (st) return st;
  if (X->rank < 3)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input X '%s' has rank %d, expected at least 3", in_name(c, 0),
                    X->rank);
  int cl = nbl_attr_int(c->node, "channels_last", 0) != 0;
  int r = X->rank;
  int64_t N = X->dims[0], C = cl ? X->dims[r - 1] : X->dims[1], sp = 1, od[NBL_MAX_RANK];
  for (int i = 0; i < r; i++) od[i] = X->dims[i];
  for (int i = cl ? 1 : 2; i < (cl ? r - 1 : r); i++) {
    sp *= X->dims[i];
    od[i] = 1;
  }
  if ((st = nbl_kctx_alloc_out(c, 0, X->dtype, r, od))) return st;
  float fx[256];
  deq_table(&px, fx);
  const uint8_t *x = X->data;
  uint8_t *y = nbl_kctx_out(c, 0)->data;
  for (int64_t n = 0; n < N; n++)
    for (int64_t ch = 0; ch < C; ch++) {
      double s = 0;
      for (int64_t k = 0; k < sp; k++) s += fx[x[cl ? (n * sp + k) * C + ch : (n * C + ch) * sp + k]];
      y[n * C + ch] = quant(&py, (float)(s / (double)sp));
    }
  return NBL_OK;
}

/* ------------------------------------------------------------------ QLinearAveragePool */

static nbl_status k_qlinear_avgpool(nbl_kctx *c) {
  const nbl_rt_tensor *X;
  qparam px, py;
  nbl_status st = unary_params(c, 0, &X, &px, &py);
  if (st) return st;
  int cl = nbl_attr_int(c->node, "channels_last", 0) != 0;
  /* the geometry on X seen as [N, C, spatial...] */
  nbl_rt_tensor v = *X;
  if (cl && X->rank >= 3) {
    v.dims[1] = X->dims[X->rank - 1];
    for (int i = 2; i < X->rank; i++) v.dims[i] = X->dims[i - 1];
  }
  nbl_conv_geom g;
  if ((st = nbl_conv_geom_init(c, &g, &v, NULL, (int)nbl_attr_int(c->node, "ceil_mode", 0)))) return st;
  int include_pad = nbl_attr_int(c->node, "count_include_pad", 0) != 0;
  int ns = g.ns;
  int64_t od[NBL_MAX_RANK];
  od[0] = g.N;
  od[cl ? X->rank - 1 : 1] = g.C;
  for (int i = 0; i < ns; i++) od[(cl ? 1 : 2) + i] = g.out[i];
  if ((st = nbl_kctx_alloc_out(c, 0, X->dtype, X->rank, od))) return st;
  float fx[256];
  deq_table(&px, fx);
  const uint8_t *x = X->data;
  uint8_t *y = nbl_kctx_out(c, 0)->data;
  /* each plane's dequantized values through AveragePool's window loop */
  double *xb = malloc((size_t)(g.in_sz > 0 ? g.in_sz : 1) * sizeof *xb),
         *yb = malloc((size_t)(g.out_sz > 0 ? g.out_sz : 1) * sizeof *yb);
  if (!xb || !yb) {
    free(xb);
    free(yb);
    return nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory");
  }
  for (int64_t n = 0; n < g.N; n++)
    for (int64_t ch = 0; ch < g.C; ch++) {
      for (int64_t xi = 0; xi < g.in_sz; xi++)
        xb[xi] = fx[x[cl ? (n * g.in_sz + xi) * g.C + ch : (n * g.C + ch) * g.in_sz + xi]];
      nbl_pool_plane_ref(&g, NBL_POOL_AVG, include_pad, 0, xb, yb, NULL);
      for (int64_t oi = 0; oi < g.out_sz; oi++)
        y[cl ? (n * g.out_sz + oi) * g.C + ch : (n * g.C + ch) * g.out_sz + oi] = quant(&py, (float)yb[oi]);
    }
  free(xb);
  free(yb);
  return NBL_OK;
}

/* ------------------------------------------------------------------ QLinearConcat */

static nbl_status k_qlinear_concat(nbl_kctx *c) {
  int n_in = c->node->n_inputs;
  if (n_in < 5 || (n_in - 2) % 3)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "has %d inputs: expected Y_scale, Y_zero_point, then "
                    "one (X, X_scale, X_zero_point) triple per input", n_in);
  const nbl_attr *aa = nbl_node_attr(c->node, "axis");
  if (!aa || aa->type != NBL_ATTR_INT)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "attribute 'axis' (int) is missing");
  const nbl_rt_tensor *yzp;
  nbl_status st = need_codes(c, 1, "Y_zero_point", &yzp);
  if (st) return st;
  qparam py;
  if ((st = read_qparam(c, 0, "Y_scale", 1, "Y_zero_point", 1, yzp->dtype, "Y_zero_point", &py))) return st;
  int n = (n_in - 2) / 3;
  const nbl_rt_tensor **xs = calloc((size_t)n, sizeof *xs);
  nbl_rt_tensor *tmp = calloc((size_t)n, sizeof *tmp);
  if (!xs || !tmp) {
    free(xs);
    free(tmp);
    return nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory");
  }
  /* each input's codes requantized to Y's parameters (its own tensor
   * unless the parameters are Y's), then Concat's kernel joins them */
  for (int k = 0; k < n && !st; k++) {
    int i = 2 + 3 * k;
    const nbl_rt_tensor *X;
    qparam px;
    if ((st = need(c, i, "X", &X)) || (st = same_codes(c, i, "X", X, yzp->dtype, "Y_zero_point")) ||
        (st = read_qparam(c, i + 1, "X_scale", i + 2, "X_zero_point", 1, X->dtype, "X", &px)))
      break;
    const nbl_rt_tensor *x0 = xs[0];
    if (k && X->rank != x0->rank) {
      st = nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input %d '%s' has rank %d, input 2 '%s' has rank %d", i,
                    in_name(c, i), X->rank, in_name(c, 2), x0->rank);
      break;
    }
    int axis = nbl_norm_axis(aa->i, X->rank);
    if (axis < 0) {
      st = nbl_kerr(c, NBL_ERR_INVALID_MODEL, "axis %lld out of range for rank %d", (long long)aa->i,
                    X->rank);
      break;
    }
    for (int d = 0; k && d < X->rank && !st; d++)
      if (d != axis && X->dims[d] != x0->dims[d])
        st = nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input %d '%s' has dim %d = %lld, input 2 '%s' has %lld",
                      i, in_name(c, i), d, (long long)X->dims[d], in_name(c, 2), (long long)x0->dims[d]);
    if (st) break;
    xs[k] = X;
    if (px.scale == py.scale && px.zp == py.zp) continue;
    uint8_t lut[256];
    for (int b = 0; b < 256; b++) lut[b] = quant(&py, dequant(&px, (uint8_t)b));
    if ((st = nbl_rt_tensor_alloc(&tmp[k], X->dtype, X->rank, X->dims))) {
      st = nbl_kerr(c, st, "no memory for input %d requantized", i);
      break;
    }
    const uint8_t *x = X->data;
    uint8_t *t = tmp[k].data;
    for (int64_t e = 0; e < X->numel; e++) t[e] = lut[x[e]];
    xs[k] = &tmp[k];
  }
  if (!st) st = nbl_concat_out(c, n, xs, aa->i);
  for (int k = 0; k < n; k++) nbl_rt_tensor_free(&tmp[k]);
  free(tmp);
  free(xs);
  return st;
}

/* ------------------------------------------------------------------ QGemm */

/* QGemm's b_scale (is) or b_zero_point (iz): a scalar or a 1-D tensor of
 * length 1 or N (one per output column). Returns its element count (1 or N). */
static nbl_status per_column(nbl_kctx *c, int i, const char *what, const nbl_rt_tensor *t, int64_t N,
                             int64_t *n) {
  char b[160];
  if (t->rank == 0 || (t->rank == 1 && (t->dims[0] == 1 || t->dims[0] == N))) {
    *n = t->numel;
    return NBL_OK;
  }
  return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input %d '%s' (%s) has shape %s; expected a scalar or 1-D of "
                  "length 1 or N = %lld (per output column)", i, in_name(c, i), what, dims_str(b, sizeof b, t),
                  (long long)N);
}

/* A, a_scale, a_zero_point?, B, b_scale, b_zero_point?, C?, y_scale?,
 * y_zero_point? -> Y [M, N]: acc = sum_k (A - a_zp)(B - b_zp[n]) + C in
 * int64 (exact), v = (alpha * a_scale * b_scale[n]) * (float)acc in float32;
 * Y = v (float32) without y_scale, else QuantizeLinear(v, y_scale,
 * y_zero_point) of y_zero_point's type (A's when absent). */
static nbl_status k_qgemm(nbl_kctx *c) {
  const nbl_rt_tensor *A, *B, *bs, *bz = in_at(c, 5), *C = in_at(c, 6), *ys = in_at(c, 7), *yz = in_at(c, 8);
  qparam pa, py;
  nbl_status st;
  if ((st = need_codes(c, 0, "A", &A)) || (st = need_codes(c, 3, "B", &B)) ||
      (st = read_qparam(c, 1, "a_scale", 2, "a_zero_point", 0, A->dtype, "A", &pa)))
    return st;
  if (A->rank != 2 || B->rank != 2) {
    char x[160], y[160];
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "A '%s' %s and B '%s' %s must be 2-D", in_name(c, 0),
                    dims_str(x, sizeof x, A), in_name(c, 3), dims_str(y, sizeof y, B));
  }
  int ta = nbl_attr_int(c->node, "transA", 0) != 0, tb = nbl_attr_int(c->node, "transB", 0) != 0;
  float alpha = nbl_attr_float(c->node, "alpha", 1.0f);
  int64_t M = ta ? A->dims[1] : A->dims[0], K = ta ? A->dims[0] : A->dims[1];
  int64_t kb = tb ? B->dims[1] : B->dims[0], N = tb ? B->dims[0] : B->dims[1];
  if (kb != K)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "inner dimensions differ: A '%s' gives K=%lld, B '%s' gives %lld",
                    in_name(c, 0), (long long)K, in_name(c, 3), (long long)kb);
  /* B's parameters: per tensor or per output column */
  int64_t ns = 1, nz = 1;
  if ((st = need(c, 4, "b_scale", &bs)) || (st = per_column(c, 4, "b_scale", bs, N, &ns))) return st;
  if (bs->dtype != NBL_DT_FLOAT)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input 4 '%s' (b_scale) has element type %s, expected float",
                    in_name(c, 4), nbl_dtype_name(bs->dtype));
  if (bz && ((st = same_codes(c, 5, "b_zero_point", bz, B->dtype, "B")) ||
             (st = per_column(c, 5, "b_zero_point", bz, N, &nz))))
    return st;
  if (C) {
    int64_t od[2] = {M, N}, bd[NBL_MAX_RANK];
    int r;
    char x[160];
    if (C->dtype != NBL_DT_INT32)
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input 6 '%s' (C) has element type %s, expected int32 (the bias "
                      "in the scale a_scale * b_scale)", in_name(c, 6), nbl_dtype_name(C->dtype));
    if (C->rank > 2 || nbl_broadcast_shape(2, od, C->rank, C->dims, &r, bd) != 0 || bd[0] != M || bd[1] != N)
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input 6 '%s' (C) %s cannot be broadcast to [%lld, %lld]",
                      in_name(c, 6), dims_str(x, sizeof x, C), (long long)M, (long long)N);
  }
  nbl_dtype ydt = NBL_DT_FLOAT;
  if (yz && !ys)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input 8 '%s' (y_zero_point) is given without y_scale",
                    in_name(c, 8));
  if (ys) {
    if (yz && (st = need_codes(c, 8, "y_zero_point", &yz))) return st;
    ydt = yz ? yz->dtype : A->dtype;
    if ((st = read_qparam(c, 7, "y_scale", 8, "y_zero_point", 0, ydt, yz ? "y_zero_point" : "A", &py)))
      return st;
  }
  int64_t od[2] = {M, N};
  if ((st = nbl_kctx_alloc_out(c, 0, ydt, 2, od))) return st;
  nbl_rt_tensor *Y = nbl_kctx_out(c, 0);
  if (Y->numel == 0) return NBL_OK;
  int32_t *bzp = malloc((size_t)N * sizeof *bzp);
  float *osc = malloc((size_t)N * sizeof *osc);
  if (!bzp || !osc) {
    free(bzp);
    free(osc);
    return nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory");
  }
  const float *bsv = bs->data;
  const uint8_t *bzv = bz ? bz->data : NULL;
  int bsig = B->dtype == NBL_DT_INT8;
  for (int64_t n = 0; n < N; n++) {
    uint8_t z = bzv ? bzv[nz > 1 ? n : 0] : 0;
    bzp[n] = bsig ? (int8_t)z : z;
    osc[n] = alpha * pa.scale * bsv[ns > 1 ? n : 0];
  }
  int asig = A->dtype == NBL_DT_INT8;
  const uint8_t *a = A->data, *b = B->data;
  const int32_t *cv = C ? C->data : NULL;
  for (int64_t m = 0; m < M; m++)
    for (int64_t n = 0; n < N; n++) {
      int64_t acc = 0;
      for (int64_t k = 0; k < K; k++) {
        uint8_t ab = a[ta ? k * M + m : m * K + k], bb = b[tb ? n * K + k : k * N + n];
        acc += (int64_t)((asig ? (int8_t)ab : ab) - pa.zp) * ((bsig ? (int8_t)bb : bb) - bzp[n]);
      }
      if (cv) acc += cv[nbl_broadcast_index(2, od, m * N + n, C->rank, C->dims)];
      float v = osc[n] * (float)acc;
      if (ys) ((uint8_t *)Y->data)[m * N + n] = quant(&py, v);
      else ((float *)Y->data)[m * N + n] = v;
    }
  free(bzp);
  free(osc);
  return NBL_OK;
}

/* ------------------------------------------------------------------ QLinearSoftmax */

/* X, X_scale, x_zero_point?, y_scale, y_zero_point? -> Y; axis and opset
 * (required: the original Softmax's). opset < 13: X seen as 2-D [prod
 * dims[:axis], prod dims[axis:]] (Softmax-1/11), else the softmax runs along
 * dims[axis] alone. axis absent: -1 (the schema's default, which ONNX
 * Runtime fills in whatever the opset). Each row: x dequantized, e = exp(x - max) in double, summed
 * in double, y = (float)(e / sum) quantized as QuantizeLinear. */
static nbl_status k_qlinear_softmax(nbl_kctx *c) {
  const nbl_rt_tensor *X;
  qparam px, py;
  nbl_status st = unary_params(c, 0, &X, &px, &py);
  if (st) return st;
  const nbl_attr *oa = nbl_node_attr(c->node, "opset");
  if (!oa || oa->type != NBL_ATTR_INT)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "attribute 'opset' (int, the original Softmax's opset) is missing");
  int legacy = oa->i < 13;
  int64_t axis_attr = nbl_attr_int(c->node, "axis", -1);
  int axis = nbl_norm_axis(axis_attr, X->rank);
  if (X->rank == 0 || axis < 0)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "axis %lld is out of range for input X '%s' of rank %d",
                    (long long)axis_attr, in_name(c, 0), X->rank);
  int64_t outer = 1, R = 1, inner = 1;
  for (int i = 0; i < X->rank; i++) {
    if (i < axis) outer *= X->dims[i];
    else if (i == axis || legacy) R *= X->dims[i];
    else inner *= X->dims[i];
  }
  if ((st = nbl_kctx_alloc_out(c, 0, X->dtype, X->rank, X->dims))) return st;
  if (X->numel == 0) return NBL_OK;
  float fx[256];
  deq_table(&px, fx);
  double *e = malloc((size_t)R * sizeof *e); /* a row's exponentials, computed once */
  if (!e) return nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory");
  const uint8_t *x = X->data;
  uint8_t *y = nbl_kctx_out(c, 0)->data;
  for (int64_t o = 0; o < outer; o++)
    for (int64_t i = 0; i < inner; i++) {
      const uint8_t *xr = x + o * R * inner + i;
      uint8_t *yr = y + o * R * inner + i;
      float m = fx[xr[0]];
      for (int64_t r = 1; r < R; r++) m = fx[xr[r * inner]] > m ? fx[xr[r * inner]] : m;
      double s = 0;
      for (int64_t r = 0; r < R; r++) s += e[r] = exp((double)(fx[xr[r * inner]] - m));
      for (int64_t r = 0; r < R; r++) yr[r * inner] = quant(&py, (float)(e[r] / s));
    }
  free(e);
  return NBL_OK;
}

/* ------------------------------------------------------------------ shape rules */

/* QLinearAdd, QLinearMul: A (0) and B (3) broadcast; A's type. */
static nbl_status shape_qlinear_binary(nbl_shape_ctx *c) {
  nbl_shp a, b, o;
  nbl_shp_in(c, 0, &a);
  nbl_shp_in(c, 3, &b);
  if (!nbl_shp_bcast(&o, &a, &b)) return nbl_shp_bcast_err(c, &a, &b);
  o.dt = a.dt;
  return nbl_shp_set(c, 0, &o);
}

/* QLinearGlobalAveragePool: the spatial dims become 1. */
static nbl_status shape_qlinear_gavgpool(nbl_shape_ctx *c) {
  nbl_shp x;
  nbl_shp_in(c, 0, &x);
  if (x.rank < 3) return nbl_shp_set_dt(c, 0, x.dt, x.rank);
  int cl = nbl_attr_int(c->node, "channels_last", 0) != 0;
  for (int i = cl ? 1 : 2; i < (cl ? x.rank - 1 : x.rank); i++) x.d[i] = nbl_dim_val(1);
  return nbl_shp_set(c, 0, &x);
}

/* QLinearAveragePool: AveragePool's windows (nbl_shp_window) on X seen as
 * [N, C, spatial...]; with channels_last the channels stay last. */
static nbl_status shape_qlinear_avgpool(nbl_shape_ctx *c) {
  nbl_shp x, v, o;
  nbl_shp_in(c, 0, &x);
  if (x.rank < 3) return nbl_shp_set_dt(c, 0, x.dt, x.rank);
  int cl = nbl_attr_int(c->node, "channels_last", 0) != 0;
  int nsp = x.rank - 2, nk = 0;
  v = x;
  if (cl) {
    v.d[1] = x.d[x.rank - 1];
    for (int i = 0; i < nsp; i++) v.d[2 + i] = x.d[1 + i];
  }
  const int64_t *ks = nbl_attr_ints(c->node, "kernel_shape", &nk);
  nbl_dim out[NBL_SHP_MAXR];
  nbl_shp_window(c, &v, nsp, nk == nsp ? ks : NULL, false, nbl_attr_int(c->node, "ceil_mode", 0) != 0, out);
  o = x;
  for (int i = 0; i < nsp; i++) o.d[(cl ? 1 : 2) + i] = out[i];
  return nbl_shp_set(c, 0, &o);
}

/* QLinearConcat: Concat's rule over the X of each triple (inputs 2, 5, ...). */
static nbl_status shape_qlinear_concat(nbl_shape_ctx *c) {
  int n_in = c->node->n_inputs;
  if (n_in < 5 || (n_in - 2) % 3)
    return nbl_shp_err(c, "has %d inputs: expected Y_scale, Y_zero_point, then one (X, X_scale, "
                          "X_zero_point) triple per input", n_in);
  const nbl_attr *aa = nbl_node_attr(c->node, "axis");
  if (!aa || aa->type != NBL_ATTR_INT) return nbl_shp_err(c, "attribute 'axis' (int) is missing");
  return nbl_shape_concat_inputs(c, 2, 3, aa->i);
}

/* QGemm: Gemm's rule on A (0) and B (3); float32 without y_scale, else
 * y_zero_point's type (A's when absent). */
static nbl_status shape_qgemm(nbl_shape_ctx *c) {
  nbl_dtype dt = NBL_DT_FLOAT;
  int n = c->node->n_inputs;
  if (n > 7 && c->node->inputs[7] != NBL_NONE) {
    dt = n > 8 && c->node->inputs[8] != NBL_NONE ? nbl_shp_in_dtype(c, 8) : nbl_shp_in_dtype(c, 0);
    if (dt == NBL_DT_UNDEFINED) dt = nbl_shp_in_dtype(c, 0);
  }
  return nbl_shape_gemm(c, 0, 3, dt);
}

/* QLinearSoftmax: X's shape and type; the opset attribute is required. */
static nbl_status shape_qlinear_softmax(nbl_shape_ctx *c) {
  const nbl_attr *oa = nbl_node_attr(c->node, "opset");
  if (!oa || oa->type != NBL_ATTR_INT)
    return nbl_shp_err(c, "attribute 'opset' (int, the original Softmax's opset) is missing");
  return nbl_shape_same(c);
}

/* ------------------------------------------------------------------ table */

const nbl_op_def nbl_ops_quant_contrib[] = {
    NBL_OP_DEF(MS_DOMAIN, "QLinearAdd", 1, 1, .ref = k_qlinear_add, .shape = shape_qlinear_binary,
               .no_grad = NBL_NO_GRAD_INT),
    NBL_OP_DEF(MS_DOMAIN, "QLinearMul", 1, 1, .ref = k_qlinear_mul, .shape = shape_qlinear_binary,
               .no_grad = NBL_NO_GRAD_INT),
    NBL_OP_DEF(MS_DOMAIN, "QLinearLeakyRelu", 1, 1, .ref = k_qlinear_leakyrelu, .shape = nbl_shape_same,
               .no_grad = NBL_NO_GRAD_INT),
    NBL_OP_DEF(MS_DOMAIN, "QLinearSigmoid", 1, 1, .ref = k_qlinear_sigmoid, .shape = nbl_shape_same,
               .no_grad = NBL_NO_GRAD_INT),
    NBL_OP_DEF(MS_DOMAIN, "QLinearGlobalAveragePool", 1, 1, .ref = k_qlinear_gavgpool,
               .shape = shape_qlinear_gavgpool, .no_grad = NBL_NO_GRAD_INT),
    NBL_OP_DEF(MS_DOMAIN, "QLinearAveragePool", 1, 1, .ref = k_qlinear_avgpool,
               .shape = shape_qlinear_avgpool, .no_grad = NBL_NO_GRAD_INT),
    NBL_OP_DEF(MS_DOMAIN, "QLinearConcat", 1, 1, .ref = k_qlinear_concat, .shape = shape_qlinear_concat,
               .no_grad = NBL_NO_GRAD_INT),
    NBL_OP_DEF(MS_DOMAIN, "QGemm", 1, 1, .ref = k_qgemm, .shape = shape_qgemm, .no_grad = NBL_NO_GRAD_INT),
    NBL_OP_DEF(MS_DOMAIN, "QLinearSoftmax", 1, 1, .ref = k_qlinear_softmax, .shape = shape_qlinear_softmax,
               .no_grad = NBL_NO_GRAD_INT),
};
const size_t nbl_ops_quant_contrib_count = sizeof nbl_ops_quant_contrib / sizeof nbl_ops_quant_contrib[0];
