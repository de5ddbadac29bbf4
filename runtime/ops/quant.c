/* runtime/ops/quant.c - op family 'quant': QuantizeLinear / DequantizeLinear
 * (per-tensor, per-axis, blocked; 8-, 16- and 4-bit codes), DynamicQuantizeLinear,
 * MatMulInteger, ConvInteger, QLinearMatMul, QLinearConv
 * (see kernel.h for the kernel contract). ONNX Runtime's com.microsoft
 * QLinearAdd, QLinearConcat, QLinearAveragePool, ... are quant_contrib.c.
 *
 * Scaling runs in float as ONNX Runtime does (x / scale in float32, round half
 * to even, saturate); integer products accumulate exactly (int64 / double
 * holding integers below 2^53). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/kernels/gemm.h"
#include "runtime/core/shape.h"

static const nbl_rt_tensor *in_at(nbl_kctx *c, int i) { return i < c->n_in ? c->in[i] : NULL; }

static nbl_status need_input(nbl_kctx *c, int i, const char *what) {
  if (!in_at(c, i))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "required input %d (%s) is missing", i, what);
  return NBL_OK;
}

/* Integer code range of a quantized type; 0 if not a supported code type. */
static int q_range(nbl_dtype dt, int64_t *lo, int64_t *hi) {
  switch (dt) {
  case NBL_DT_UINT8: *lo = 0; *hi = 255; return 1;
  case NBL_DT_INT8: *lo = -128; *hi = 127; return 1;
  case NBL_DT_UINT16: *lo = 0; *hi = 65535; return 1;
  case NBL_DT_INT16: *lo = -32768; *hi = 32767; return 1;
  case NBL_DT_UINT4: *lo = 0; *hi = 15; return 1;
  case NBL_DT_INT4: *lo = -8; *hi = 7; return 1;
  case NBL_DT_INT32: *lo = INT32_MIN; *hi = INT32_MAX; return 1;
  default: return 0;
  }
}

static int is_scale_type(nbl_dtype t) {
  return t == NBL_DT_FLOAT || t == NBL_DT_FLOAT16 || t == NBL_DT_BFLOAT16 || t == NBL_DT_DOUBLE;
}

/* How a scale / zero-point tensor maps onto x's elements. */
typedef struct qmap {
  int mode;              /* 0 per-tensor, 1 per-axis, 2 blocked */
  int64_t axis_n, inner; /* x dims[axis], product of dims after axis */
  int64_t block, sa;     /* block size and scale dims[axis] (blocked) */
} qmap;

static int64_t qmap_index(const qmap *m, int64_t i) {
  if (m->mode == 0) return 0;
  int64_t a = (i / m->inner) % m->axis_n;
  if (m->mode == 1) return a;
  int64_t outer = i / (m->inner * m->axis_n), in = i % m->inner;
  return (outer * m->sa + a / m->block) * m->inner + in;
}

/* Work out the scale layout: scalar, 1-D per-axis, or blocked (opset 21). */
static nbl_status qmap_init(nbl_kctx *c, const nbl_rt_tensor *x, const nbl_rt_tensor *scale,
                            const nbl_rt_tensor *zp, qmap *m) {
  memset(m, 0, sizeof *m);
  m->axis_n = m->inner = m->block = m->sa = 1;
  int64_t block = c->opset >= 21 ? nbl_attr_int(c->node, "block_size", 0) : 0;
  if (zp) {
    if (zp->rank != scale->rank || memcmp(zp->dims, scale->dims, sizeof(int64_t) * (size_t)scale->rank))
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "zero point and scale shapes differ");
  }
  if (block == 0 && (scale->rank == 0 || (scale->rank == 1 && scale->numel == 1 && c->opset < 13)))
    return NBL_OK;
  if (block == 0 && scale->rank == 1 && scale->numel == 1 && x->rank == 0) return NBL_OK;
  int axis = nbl_norm_axis(c->opset >= 13 ? nbl_attr_int(c->node, "axis", 1) : 1, x->rank);
  if (axis < 0)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "axis out of range for input rank %d", x->rank);
  m->axis_n = x->dims[axis];
  for (int i = axis + 1; i < x->rank; i++) m->inner *= x->dims[i];
  if (block == 0) {
    if (scale->rank != 1 || scale->dims[0] != m->axis_n) {
      if (scale->numel == 1) return NBL_OK; /* 1-element scale: per-tensor */
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL,
                      "per-axis scale must have shape [%lld] (axis %d), got %lld elements",
                      (long long)m->axis_n, axis, (long long)scale->numel);
    }
    m->mode = 1;
    return NBL_OK;
  }
  if (block < 0) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "block_size must be positive");
  if (scale->rank != x->rank)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "blocked scale must have the input's rank %d", x->rank);
  for (int i = 0; i < x->rank; i++) {
    int64_t want = i == axis ? (x->dims[i] + block - 1) / block : x->dims[i];
    if (scale->dims[i] != want)
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "blocked scale dim %d is %lld, expected %lld", i,
                      (long long)scale->dims[i], (long long)want);
  }
  m->mode = 2;
  m->block = block;
  m->sa = scale->dims[axis];
  return NBL_OK;
}

/* ------------------------------------------------------------------ QuantizeLinear */

static nbl_status k_quantize(nbl_kctx *c) {
  nbl_status st;
  if ((st = need_input(c, 0, "x")) || (st = need_input(c, 1, "y_scale"))) return st;
  const nbl_rt_tensor *x = c->in[0], *sc = c->in[1], *zp = in_at(c, 2);
  if (!is_scale_type(x->dtype) && x->dtype != NBL_DT_INT32)
    return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "QuantizeLinear input of type %s", nbl_dtype_name(x->dtype));
  if (!is_scale_type(sc->dtype))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "y_scale has type %s", nbl_dtype_name(sc->dtype));
  nbl_dtype odt = NBL_DT_UINT8;
  int64_t odt_attr = c->opset >= 21 ? nbl_attr_int(c->node, "output_dtype", 0) : 0;
  if (zp) odt = zp->dtype;
  else if (odt_attr) odt = (nbl_dtype)odt_attr;
  if (zp && odt_attr && odt_attr != (int64_t)zp->dtype)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "output_dtype differs from the zero point's type");
  int64_t lo, hi;
  if (!q_range(odt, &lo, &hi) || odt == NBL_DT_INT32)
    return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "quantizing to %s is not supported", nbl_dtype_name(odt));
  qmap m;
  if ((st = qmap_init(c, x, sc, zp, &m))) return st;
  if ((st = nbl_kctx_alloc_out(c, 0, odt, x->rank, x->dims))) return st;
  nbl_rt_tensor *y = nbl_kctx_out(c, 0);
  int dbl = x->dtype == NBL_DT_DOUBLE;
  for (int64_t i = 0; i < x->numel; i++) {
    int64_t si = qmap_index(&m, i);
    double s = nbl_rt_get_f64(sc, si);
    double q;
    if (dbl) q = rint(nbl_rt_get_f64(x, i) / s);
    else q = rintf((float)nbl_rt_get_f64(x, i) / (float)s);
    if (zp) q += (double)nbl_rt_get_i64(zp, si);
    int64_t v;
    if (isnan(q)) v = 0;
    else if (q < (double)lo) v = lo;
    else if (q > (double)hi) v = hi;
    else v = (int64_t)q;
    nbl_rt_set_i64(y, i, v);
  }
  return NBL_OK;
}

/* ------------------------------------------------------------------ DequantizeLinear */

static nbl_status k_dequantize(nbl_kctx *c) {
  nbl_status st;
  if ((st = need_input(c, 0, "x")) || (st = need_input(c, 1, "x_scale"))) return st;
  const nbl_rt_tensor *x = c->in[0], *sc = c->in[1], *zp = in_at(c, 2);
  int64_t lo, hi;
  if (!q_range(x->dtype, &lo, &hi))
    return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "DequantizeLinear input of type %s",
                    nbl_dtype_name(x->dtype));
  if (!is_scale_type(sc->dtype))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "x_scale has type %s", nbl_dtype_name(sc->dtype));
  if (zp && zp->dtype != x->dtype)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "x_zero_point has type %s, x has %s",
                    nbl_dtype_name(zp->dtype), nbl_dtype_name(x->dtype));
  qmap m;
  if ((st = qmap_init(c, x, sc, zp, &m))) return st;
  if ((st = nbl_kctx_alloc_out(c, 0, sc->dtype, x->rank, x->dims))) return st;
  nbl_rt_tensor *y = nbl_kctx_out(c, 0);
  for (int64_t i = 0; i < x->numel; i++) {
    int64_t si = qmap_index(&m, i);
    int64_t q = nbl_rt_get_i64(x, i) - (zp ? nbl_rt_get_i64(zp, si) : 0);
    if (sc->dtype == NBL_DT_DOUBLE) nbl_rt_set_f64(y, i, (double)q * nbl_rt_get_f64(sc, si));
    else nbl_rt_set_f64(y, i, (double)((float)q * (float)nbl_rt_get_f64(sc, si)));
  }
  return NBL_OK;
}

/* ------------------------------------------------------------------ DynamicQuantizeLinear */

static nbl_status k_dynquant(nbl_kctx *c) {
  nbl_status st;
  if ((st = need_input(c, 0, "x"))) return st;
  const nbl_rt_tensor *x = c->in[0];
  if (x->dtype != NBL_DT_FLOAT)
    return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "DynamicQuantizeLinear input of type %s",
                    nbl_dtype_name(x->dtype));
  const float *xv = x->data;
  float mn = 0.0f, mx = 0.0f;
  int nan = 0;
  for (int64_t i = 0; i < x->numel; i++) {
    if (isnan(xv[i])) nan = 1;
    if (xv[i] < mn) mn = xv[i];
    if (xv[i] > mx) mx = xv[i];
  }
  float scale = nan ? NAN : (mx - mn) / 255.0f;
  float zpf = 0.0f;
  if (scale != 0.0f && !isnan(scale)) {
    zpf = 0.0f - mn / scale;
    zpf = zpf < 0 ? 0 : zpf > 255 ? 255 : zpf;
    zpf = rintf(zpf);
  }
  uint8_t zp = (uint8_t)zpf;
  if ((st = nbl_kctx_alloc_out(c, 0, NBL_DT_UINT8, x->rank, x->dims)) ||
      (st = nbl_kctx_alloc_out(c, 1, NBL_DT_FLOAT, 0, NULL)) ||
      (st = nbl_kctx_alloc_out(c, 2, NBL_DT_UINT8, 0, NULL)))
    return st;
  uint8_t *y = nbl_kctx_out(c, 0)->data;
  for (int64_t i = 0; i < x->numel; i++) {
    float q = scale != 0.0f ? rintf(xv[i] / scale) + (float)zp : (float)zp;
    y[i] = isnan(q) ? 0 : q < 0 ? 0 : q > 255 ? 255 : (uint8_t)q;
  }
  *(float *)nbl_kctx_out(c, 1)->data = scale;
  *(uint8_t *)nbl_kctx_out(c, 2)->data = zp;
  return NBL_OK;
}

/* ------------------------------------------------------------------ integer matrix products */

static int is_q8(nbl_dtype t) { return t == NBL_DT_UINT8 || t == NBL_DT_INT8; }

/* Zero point of a quantized input: scalar or 1-D of length n (per row/column/channel). */
static nbl_status zp_vec(nbl_kctx *c, const nbl_rt_tensor *zp, const nbl_rt_tensor *x, int64_t n,
                         const char *what, int64_t **out) {
  *out = calloc((size_t)(n > 0 ? n : 1), sizeof(int64_t));
  if (!*out) return nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory");
  if (!zp) return NBL_OK;
  if (zp->dtype != x->dtype) {
    free(*out);
    *out = NULL;
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "%s has type %s, its input has %s", what,
                    nbl_dtype_name(zp->dtype), nbl_dtype_name(x->dtype));
  }
  if (zp->numel == 1) {
    int64_t v = nbl_rt_get_i64(zp, 0);
    for (int64_t i = 0; i < n; i++) (*out)[i] = v;
  } else if (zp->rank == 1 && zp->numel == n) {
    for (int64_t i = 0; i < n; i++) (*out)[i] = nbl_rt_get_i64(zp, i);
  } else {
    free(*out);
    *out = NULL;
    return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "%s must be a scalar or have %lld elements", what,
                    (long long)n);
  }
  return NBL_OK;
}

/* Scale as a vector of n floats (scalar broadcast, or exactly n elements). */
static nbl_status scale_vec(nbl_kctx *c, const nbl_rt_tensor *s, int64_t n, const char *what,
                            float **out) {
  *out = NULL;
  if (s->dtype != NBL_DT_FLOAT)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "%s must be float, got %s", what, nbl_dtype_name(s->dtype));
  if (s->numel != 1 && !(s->rank == 1 && s->numel == n))
    return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "%s must be a scalar or have %lld elements", what,
                    (long long)n);
  *out = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
  if (!*out) return nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory");
  const float *v = s->data;
  for (int64_t i = 0; i < n; i++) (*out)[i] = s->numel == 1 ? v[0] : v[i];
  return NBL_OK;
}

/* acc[b, M, N] (int64) = sum_k (A - azp[row]) (B - bzp[col]) with MatMul broadcasting.
 * Allocates output 0 with type out_dt and the MatMul shape. */
static nbl_status int_matmul(nbl_kctx *c, const nbl_rt_tensor *A, const nbl_rt_tensor *B,
                             const nbl_rt_tensor *azp_t, const nbl_rt_tensor *bzp_t,
                             nbl_dtype out_dt, int64_t **acc_out, int64_t *M_out, int64_t *N_out) {
  if (!is_q8(A->dtype) || !is_q8(B->dtype))
    return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "inputs of type %s x %s (supported: int8/uint8)",
                    nbl_dtype_name(A->dtype), nbl_dtype_name(B->dtype));
  if (A->rank < 1 || B->rank < 1) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "inputs must have rank >= 1");
  int64_t M = A->rank == 1 ? 1 : A->dims[A->rank - 2], K = A->dims[A->rank - 1];
  int64_t Kb = B->rank == 1 ? B->dims[0] : B->dims[B->rank - 2], N = B->rank == 1 ? 1 : B->dims[B->rank - 1];
  if (K != Kb)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "inner dimensions differ (%lld vs %lld)", (long long)K,
                    (long long)Kb);
  int ar = A->rank > 2 ? A->rank - 2 : 0, brr = B->rank > 2 ? B->rank - 2 : 0, br;
  int64_t bd[NBL_MAX_RANK], od[NBL_MAX_RANK];
  if (nbl_broadcast_shape(ar, A->dims, brr, B->dims, &br, bd))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "batch dimensions do not broadcast");
  int r = 0;
  int64_t batch = 1;
  for (int i = 0; i < br; i++) {
    od[r++] = bd[i];
    batch *= bd[i];
  }
  if (A->rank > 1) od[r++] = M;
  if (B->rank > 1) od[r++] = N;
  if (r > NBL_MAX_RANK) return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "output rank too large");
  nbl_status st = nbl_kctx_alloc_out(c, 0, out_dt, r, od);
  if (st) return st;
  int64_t *azp = NULL, *bzp = NULL;
  if ((st = zp_vec(c, azp_t, A, M, "a_zero_point", &azp))) return st;
  if ((st = zp_vec(c, bzp_t, B, N, "b_zero_point", &bzp))) {
    free(azp);
    return st;
  }
  int64_t MN = M * N;
  int64_t *acc = malloc((size_t)(batch * MN > 0 ? batch * MN : 1) * sizeof(int64_t));
  int32_t *brow = malloc((size_t)(K * N > 0 ? K * N : 1) * sizeof(int32_t));
  if (!acc || !brow) {
    free(acc);
    free(brow);
    free(azp);
    free(bzp);
    return nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory");
  }
  for (int64_t b = 0; b < batch; b++) {
    int64_t ao = nbl_broadcast_index(br, bd, b, ar, A->dims) * M * K;
    int64_t bo = nbl_broadcast_index(br, bd, b, brr, B->dims) * K * N;
    for (int64_t p = 0; p < K; p++)
      for (int64_t j = 0; j < N; j++)
        brow[p * N + j] = (int32_t)(nbl_rt_get_i64(B, bo + p * N + j) - bzp[j]);
    for (int64_t i = 0; i < M; i++) {
      int64_t *row = acc + b * MN + i * N;
      for (int64_t j = 0; j < N; j++) row[j] = 0;
      for (int64_t p = 0; p < K; p++) {
        int64_t a = nbl_rt_get_i64(A, ao + i * K + p) - azp[i];
        if (!a) continue;
        const int32_t *bp = brow + p * N;
        for (int64_t j = 0; j < N; j++) row[j] += a * bp[j];
      }
    }
  }
  free(brow);
  free(azp);
  free(bzp);
  *acc_out = acc;
  *M_out = M;
  *N_out = N;
  return NBL_OK;
}

static nbl_status k_matmulinteger(nbl_kctx *c) {
  nbl_status st;
  if ((st = need_input(c, 0, "A")) || (st = need_input(c, 1, "B"))) return st;
  int64_t *acc, M, N;
  if ((st = int_matmul(c, c->in[0], c->in[1], in_at(c, 2), in_at(c, 3), NBL_DT_INT32, &acc, &M, &N)))
    return st;
  nbl_rt_tensor *y = nbl_kctx_out(c, 0);
  int32_t *yv = y->data;
  for (int64_t i = 0; i < y->numel; i++) yv[i] = (int32_t)(uint32_t)acc[i];
  free(acc);
  return NBL_OK;
}

/* Requantize: round(acc * mult) + zp, saturated to the output type's range. */
static int64_t requant(int64_t acc, float mult, int64_t zp, int64_t lo, int64_t hi) {
  float v = rintf((float)acc * mult) + (float)zp;
  if (isnan(v)) return 0;
  if (v < (float)lo) return lo;
  if (v > (float)hi) return hi;
  return (int64_t)v;
}

static nbl_status k_qlinearmatmul(nbl_kctx *c) {
  nbl_status st;
  const char *names[8] = {"a", "a_scale", "a_zero_point", "b", "b_scale", "b_zero_point", "y_scale",
                          "y_zero_point"};
  for (int i = 0; i < 8; i++)
    if (i != 7 && (st = need_input(c, i, names[i]))) return st;
  const nbl_rt_tensor *yzp = in_at(c, 7);
  nbl_dtype odt = yzp ? yzp->dtype : NBL_DT_UINT8;
  int64_t lo, hi;
  if (!is_q8(odt) || !q_range(odt, &lo, &hi))
    return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "output type %s", nbl_dtype_name(odt));
  if (yzp && yzp->numel != 1)
    return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "y_zero_point must be a scalar");
  int64_t *acc, M, N;
  if ((st = int_matmul(c, c->in[0], c->in[3], c->in[2], c->in[5], odt, &acc, &M, &N))) return st;
  float *as = NULL, *bs = NULL, *ys = NULL;
  if ((st = scale_vec(c, c->in[1], M, "a_scale", &as)) || (st = scale_vec(c, c->in[4], N, "b_scale", &bs)) ||
      (st = scale_vec(c, c->in[6], 1, "y_scale", &ys))) {
    free(as);
    free(bs);
    free(acc);
    return st;
  }
  nbl_rt_tensor *y = nbl_kctx_out(c, 0);
  int64_t zp = yzp ? nbl_rt_get_i64(yzp, 0) : 0;
  for (int64_t i = 0; i < y->numel; i++) {
    int64_t row = (i / N) % M, col = i % N;
    float mult = as[row] * bs[col] / ys[0];
    nbl_rt_set_i64(y, i, requant(acc[i], mult, zp, lo, hi));
  }
  free(as);
  free(bs);
  free(ys);
  free(acc);
  return NBL_OK;
}

/* ------------------------------------------------------------------ integer convolution */

/* acc[N, M, out...] (double holding exact integers) = conv(x - xzp, w - wzp[m]).
 * Allocates output 0 with out_dt. */
static nbl_status int_conv(nbl_kctx *c, const nbl_rt_tensor *x, const nbl_rt_tensor *w,
                           const nbl_rt_tensor *xzp_t, const nbl_rt_tensor *wzp_t, nbl_dtype out_dt,
                           nbl_conv_geom *g, double **acc_out) {
  if (!is_q8(x->dtype) || !is_q8(w->dtype))
    return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "inputs of type %s x %s (supported: int8/uint8)",
                    nbl_dtype_name(x->dtype), nbl_dtype_name(w->dtype));
  if (w->rank != x->rank)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "w has rank %d, x has rank %d", w->rank, x->rank);
  nbl_status st = nbl_conv_geom_init(c, g, x, w->dims + 2, 0);
  if (st) return st;
  g->group = nbl_attr_int(c->node, "group", 1);
  g->M = w->dims[0];
  if (g->group <= 0 || g->C % g->group || g->M % g->group || w->dims[1] * g->group != g->C)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "channels do not match: x has %lld, w is [%lld, %lld, ...]",
                    (long long)g->C, (long long)g->M, (long long)w->dims[1]);
  int64_t od[NBL_MAX_RANK] = {g->N, g->M};
  for (int i = 0; i < g->ns; i++) od[2 + i] = g->out[i];
  if ((st = nbl_kctx_alloc_out(c, 0, out_dt, x->rank, od))) return st;
  int64_t *xzp = NULL, *wzp = NULL;
  if ((st = zp_vec(c, xzp_t, x, 1, "x_zero_point", &xzp))) return st;
  if ((st = zp_vec(c, wzp_t, w, g->M, "w_zero_point", &wzp))) {
    free(xzp);
    return st;
  }
  int64_t ynum = nbl_kctx_out(c, 0)->numel;
  double *xv = nbl_to_f64(x), *wv = nbl_to_f64(w);
  double *acc = malloc((size_t)(ynum > 0 ? ynum : 1) * sizeof(double));
  if (!xv || !wv || !acc) {
    free(xv);
    free(wv);
    free(acc);
    free(xzp);
    free(wzp);
    return nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory");
  }
  for (int64_t i = 0; i < x->numel; i++) xv[i] -= (double)xzp[0];
  int64_t per_m = w->numel / (g->M ? g->M : 1);
  for (int64_t i = 0; i < w->numel; i++) wv[i] -= (double)wzp[i / per_m];
  nbl_conv_ref_f64(g, xv, wv, NULL, acc);
  free(xv);
  free(wv);
  free(xzp);
  free(wzp);
  *acc_out = acc;
  return NBL_OK;
}

static nbl_status k_convinteger(nbl_kctx *c) {
  nbl_status st;
  if ((st = need_input(c, 0, "x")) || (st = need_input(c, 1, "w"))) return st;
  nbl_conv_geom g;
  double *acc;
  if ((st = int_conv(c, c->in[0], c->in[1], in_at(c, 2), in_at(c, 3), NBL_DT_INT32, &g, &acc)))
    return st;
  nbl_rt_tensor *y = nbl_kctx_out(c, 0);
  int32_t *yv = y->data;
  for (int64_t i = 0; i < y->numel; i++) yv[i] = (int32_t)(int64_t)acc[i];
  free(acc);
  return NBL_OK;
}

static nbl_status k_qlinearconv(nbl_kctx *c) {
  nbl_status st;
  const char *names[8] = {"x", "x_scale", "x_zero_point", "w", "w_scale", "w_zero_point", "y_scale",
                          "y_zero_point"};
  for (int i = 0; i < 8; i++)
    if (i != 7 && i != 2 && i != 5 && (st = need_input(c, i, names[i]))) return st;
  const nbl_rt_tensor *yzp = in_at(c, 7), *B = in_at(c, 8);
  nbl_dtype odt = yzp ? yzp->dtype : NBL_DT_UINT8;
  int64_t lo, hi;
  if (!is_q8(odt) || !q_range(odt, &lo, &hi))
    return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "output type %s", nbl_dtype_name(odt));
  if (yzp && yzp->numel != 1) return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "y_zero_point must be a scalar");
  nbl_conv_geom g;
  double *acc;
  if ((st = int_conv(c, c->in[0], c->in[3], in_at(c, 2), in_at(c, 5), odt, &g, &acc))) return st;
  float *xs = NULL, *ws = NULL, *ys = NULL;
  if ((st = scale_vec(c, c->in[1], 1, "x_scale", &xs)) ||
      (st = scale_vec(c, c->in[4], g.M, "w_scale", &ws)) ||
      (st = scale_vec(c, c->in[6], 1, "y_scale", &ys)))
    goto done;
  if (B && (B->dtype != NBL_DT_INT32 || B->numel != g.M)) {
    st = nbl_kerr(c, NBL_ERR_INVALID_MODEL, "B must be int32 with %lld elements", (long long)g.M);
    goto done;
  }
  nbl_rt_tensor *y = nbl_kctx_out(c, 0);
  int64_t zp = yzp ? nbl_rt_get_i64(yzp, 0) : 0;
  const int32_t *bv = B ? B->data : NULL;
  for (int64_t i = 0; i < y->numel; i++) {
    int64_t m = (i / (g.out_sz ? g.out_sz : 1)) % g.M;
    int64_t a = (int64_t)acc[i] + (bv ? bv[m] : 0);
    nbl_rt_set_i64(y, i, requant(a, xs[0] * ws[m] / ys[0], zp, lo, hi));
  }
done:
  free(xs);
  free(ws);
  free(ys);
  free(acc);
  return st;
}

/* ------------------------------------------------------------------ shape rules */

static nbl_status shape_quantize(nbl_shape_ctx *c) {
  nbl_shp x;
  nbl_shp_in(c, 0, &x);
  nbl_dtype dt = NBL_DT_UINT8;
  int64_t od = c->opset >= 21 ? nbl_attr_int(c->node, "output_dtype", 0) : 0;
  if (od) dt = (nbl_dtype)od;
  else if (nbl_shp_has_in(c, 2)) dt = nbl_shp_in_dtype(c, 2);
  x.dt = dt;
  return nbl_shp_set(c, 0, &x);
}

static nbl_status shape_dequantize(nbl_shape_ctx *c) {
  nbl_shp x;
  nbl_shp_in(c, 0, &x);
  nbl_dtype dt = nbl_shp_in_dtype(c, 1);
  x.dt = dt ? dt : NBL_DT_FLOAT;
  return nbl_shp_set(c, 0, &x);
}

static nbl_status shape_dynquant(nbl_shape_ctx *c) {
  nbl_shp x;
  nbl_shp_in(c, 0, &x);
  x.dt = NBL_DT_UINT8;
  nbl_status st = nbl_shp_set(c, 0, &x);
  if (!st) st = nbl_shp_set_dt(c, 1, NBL_DT_FLOAT, 0);
  if (!st) st = nbl_shp_set_dt(c, 2, NBL_DT_UINT8, 0);
  return st;
}

static nbl_status shape_matmulinteger(nbl_shape_ctx *c) {
  return nbl_shape_matmul(c, 0, 1, NBL_DT_INT32);
}

/* QLinearMatMul / QLinearConv: the output zero point's type, else A's / X's. */
static nbl_status shape_qlinearmatmul(nbl_shape_ctx *c) {
  nbl_dtype dt = nbl_shp_in_dtype(c, 7);
  return nbl_shape_matmul(c, 0, 3, dt ? dt : nbl_shp_in_dtype(c, 0));
}

static nbl_status shape_convinteger(nbl_shape_ctx *c) {
  return nbl_shape_conv(c, 0, 1, NBL_DT_INT32, false);
}

static nbl_status shape_qlinearconv(nbl_shape_ctx *c) {
  nbl_dtype dt = nbl_shp_in_dtype(c, 7);
  return nbl_shape_conv(c, 0, 3, dt ? dt : nbl_shp_in_dtype(c, 0), false);
}

/* ------------------------------------------------------------------ table */

const nbl_op_def nbl_ops_quant[] = {
    NBL_OP("QuantizeLinear", 10, .ref = k_quantize, .shape = shape_quantize, .stable_since = 10,
        .no_grad = NBL_NO_GRAD_INT),
    NBL_OP("DequantizeLinear", 10, .ref = k_dequantize, .shape = shape_dequantize,
        .stable_since = 10, .no_grad = "not differentiable: integer input (the scale: no rule yet)"),
    NBL_OP("DynamicQuantizeLinear", 11, .ref = k_dynquant, .shape = shape_dynquant,
        .stable_since = 11, .no_grad = NBL_NO_GRAD_INT),
    NBL_OP("MatMulInteger", 10, .ref = k_matmulinteger, .shape = shape_matmulinteger,
        .stable_since = 10, .no_grad = NBL_NO_GRAD_INT),
    NBL_OP("QLinearMatMul", 10, .ref = k_qlinearmatmul, .shape = shape_qlinearmatmul,
        .stable_since = 10, .no_grad = NBL_NO_GRAD_INT),
    NBL_OP("ConvInteger", 10, .ref = k_convinteger, .shape = shape_convinteger, .stable_since = 10,
        .no_grad = NBL_NO_GRAD_INT),
    NBL_OP("QLinearConv", 10, .ref = k_qlinearconv, .shape = shape_qlinearconv, .stable_since = 10,
        .no_grad = NBL_NO_GRAD_INT),
};
const size_t nbl_ops_quant_count = sizeof nbl_ops_quant / sizeof nbl_ops_quant[0];
