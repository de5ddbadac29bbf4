/* runtime/ops/grad_shape.c - op family 'grad_shape': backward ops of Gather and
 * Slice, GatherElements (and TopK), GatherND (forward ops in runtime/ops/shape_index.c,
 * shape_strided.c, reduce.c) and of Resize (runtime/ops/shape_resize.c); kernel
 * contract in runtime/core/kernel.h.
 *
 * ONNX Runtime's training ops, domain com.microsoft, version 1. GatherGrad
 * adds (T: float types, accumulated in double); SliceGrad only places
 * elements (T: any fixed-size type).
 *
 * GatherGrad (com.microsoft 1)
 *   inputs:  shape (int64 1-D: the shape of Gather's data input),
 *            indices (int32/int64, any rank q: Gather's indices; negative
 *            values count from the end; out of range is an error),
 *            dY (T, shape[:axis] + indices.shape + shape[axis+1:])
 *   outputs: dX (T, `shape`): zeros, then every dY slice added at its index
 *            (repeated indices accumulate)
 *   attributes: axis (int, default 0; negative counts from the back)
 * SliceGrad (com.microsoft 1)
 *   inputs:  dY (T, the Slice output's shape), shape (int64 1-D: the shape of
 *            Slice's data input), starts, ends (int32/int64 1-D), axes
 *            (optional int32/int64 1-D), steps (optional int32/int64 1-D):
 *            Slice's own inputs (opset >= 10 form)
 *   outputs: dX (T, `shape`): zeros, with dY written at the positions the
 *            slice read (starts/ends clamped exactly as Slice does)
 * GatherElementsGrad (com.microsoft 1)
 *   inputs:  dY (T float types, indices' shape), shape (int64 1-D: the shape
 *            of GatherElements' data input), indices (int32/int64, the same
 *            rank; negative values count from the end; out of range is an
 *            error, as in GatherElements)
 *   outputs: dX (T, `shape`): zeros, then each dY element added where its
 *            index points along `axis` (repeats accumulate, in double)
 *   attributes: axis (int, default 0)
 * GatherNDGrad (com.microsoft 1)
 *   inputs:  shape (int64 1-D: the shape of GatherND's data input), indices
 *            (int64, GatherND's), update (T float types: the gradient of
 *            GatherND's output)
 *   outputs: dX (T, `shape`): zeros, then each gathered slice's gradient
 *            added back at its index tuple (repeats accumulate, in double;
 *            negative indices count from the end, out of range is an error)
 *   attributes: batch_dims (int, default 0)
 * ResizeGrad (ai.nibble 1)
 *   inputs:  dY (T float types, the Resize output's shape), shape (int64 1-D:
 *            the shape of Resize's input X), then Resize's own inputs from
 *            roi on (roi, scales, sizes; Upsample's scales)
 *   outputs: dX (T, `shape`): the adjoint of the resampling: each output's
 *            dY added to the input positions its taps read, times the tap's
 *            weight (a tap past an edge adds to the edge element it was
 *            clamped to; an extrapolated output adds nothing); in double
 *   attributes: Resize's (or Upsample's), and nibble.resize_opset (the
 *            default-domain opset of the forward node) and nibble.upsample
 *            (1 for an Upsample); the taps are the forward kernel's own
 *            (runtime/ops/resize.h)
 */

#include <stdlib.h>
#include <string.h>

#include "runtime/core/shape.h"
#include "runtime/kernels/gemm.h"
#include "runtime/core/grad.h"
#include "runtime/ops/grad_util.h"
#include "runtime/ops/movement.h"
#include "runtime/ops/resize.h"
#include "runtime/ops/shape.h"

/* ------------------------------------------------------------------ GatherGrad */

static nbl_status k_gather_grad(nbl_kctx *c) {
  nbl_status st = NBL_OK;
  const nbl_rt_tensor *S = grad_need(c, 0, "shape", &st), *I = S ? grad_need(c, 1, "indices", &st) : NULL;
  const nbl_rt_tensor *dY = I ? grad_need(c, 2, "dY", &st) : NULL;
  if (!dY) return st;
  int r;
  int64_t xd[NBL_MAX_RANK];
  if ((st = grad_shape_input(c, S, "shape", &r, xd)) || (st = grad_check_float(c, dY, "dY"))) return st;
  if (!grad_is_int(I->dtype)) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "indices must be int32 or int64");
  int64_t a = nbl_attr_int(c->node, "axis", 0);
  int ax = nbl_norm_axis(a, r);
  if (ax < 0) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "axis %lld is out of range for rank %d", (long long)a, r);
  /* dY must be shape[:axis] + indices.shape + shape[axis+1:] */
  int ok = dY->rank == r - 1 + I->rank;
  for (int d = 0; ok && d < dY->rank; d++) {
    int64_t want = d < ax ? xd[d] : d < ax + I->rank ? I->dims[d - ax] : xd[d - I->rank + 1];
    ok = dY->dims[d] == want;
  }
  if (!ok) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "dY must have shape shape[:axis] + indices.shape + shape[axis+1:]");
  int64_t outer = 1, inner = 1, A = xd[ax], nq = I->numel;
  for (int d = 0; d < ax; d++) outer *= xd[d];
  for (int d = ax + 1; d < r; d++) inner *= xd[d];
  if ((st = nbl_kctx_alloc_out(c, 0, dY->dtype, r, xd))) return st;
  nbl_rt_tensor *dX = nbl_kctx_out(c, 0);
  double *g = nbl_to_f64(dY), *x = calloc((size_t)(dX->numel ? dX->numel : 1), sizeof(double));
  if (!g || !x) {
    free(g);
    free(x);
    return grad_oom(c);
  }
  for (int64_t q = 0; q < nq && st == NBL_OK; q++) {
    int64_t idx = nbl_rt_get_i64(I, q);
    if (idx < -A || idx >= A) {
      st = nbl_kerr(c, NBL_ERR_RUNTIME, "index %lld at element %lld is outside [-%lld, %lld)", (long long)idx,
                    (long long)q, (long long)A, (long long)A);
      break;
    }
    if (idx < 0) idx += A;
    for (int64_t o = 0; o < outer; o++) {
      const double *src = g + (o * nq + q) * inner;
      double *dst = x + (o * A + idx) * inner;
      for (int64_t i = 0; i < inner; i++) dst[i] += src[i];
    }
  }
  if (st == NBL_OK) nbl_from_f64(dX, x);
  free(g);
  free(x);
  return st;
}

/* ------------------------------------------------------------------ SliceGrad */

/* A 1-D int32/int64 input into v (at most NBL_MAX_RANK values); *n = count. */
static nbl_status read_index_list(nbl_kctx *c, const nbl_rt_tensor *t, const char *what, int64_t *v, int *n) {
  if (!grad_is_int(t->dtype) || t->rank != 1 || t->numel > NBL_MAX_RANK)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "%s must be a 1-D int32/int64 tensor of at most %d values", what,
                    NBL_MAX_RANK);
  *n = (int)t->numel;
  for (int i = 0; i < *n; i++) v[i] = nbl_rt_get_i64(t, i);
  return NBL_OK;
}

static nbl_status k_slice_grad(nbl_kctx *c) {
  nbl_status st = NBL_OK;
  const nbl_rt_tensor *dY = grad_need(c, 0, "dY", &st), *S = dY ? grad_need(c, 1, "shape", &st) : NULL;
  const nbl_rt_tensor *ST = S ? grad_need(c, 2, "starts", &st) : NULL, *EN = ST ? grad_need(c, 3, "ends", &st) : NULL;
  if (!EN) return st;
  const nbl_rt_tensor *AX = grad_in(c, 4), *SP = grad_in(c, 5);
  int r, ns, ne, na = -1, nst = -1;
  int64_t xd[NBL_MAX_RANK], starts[NBL_MAX_RANK], ends[NBL_MAX_RANK], axes[NBL_MAX_RANK], steps[NBL_MAX_RANK];
  if ((st = grad_shape_input(c, S, "shape", &r, xd)) || (st = read_index_list(c, ST, "starts", starts, &ns)) ||
      (st = read_index_list(c, EN, "ends", ends, &ne)) ||
      (AX && (st = read_index_list(c, AX, "axes", axes, &na))) ||
      (SP && (st = read_index_list(c, SP, "steps", steps, &nst))))
    return st;
  if (ns != ne || (na >= 0 && na != ns) || (nst >= 0 && nst != ns))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "starts, ends, axes and steps differ in length");
  size_t es = nbl_rt_elem_size(dY->dtype);
  if (!es || dY->dtype == NBL_DT_STRING)
    return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "dY of element type %s", nbl_dtype_name(dY->dtype));
  int64_t s0[NBL_MAX_RANK], stp[NBL_MAX_RANK], len[NBL_MAX_RANK];
  if ((st = nbl_slice_geometry(c, r, xd, ns, starts, ends, na >= 0 ? axes : NULL, nst >= 0 ? steps : NULL, s0,
                               stp, len)))
    return st;
  if (dY->rank != r || memcmp(dY->dims, len, sizeof(int64_t) * (size_t)r))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "dY does not have the shape this slice of `shape` gives");
  if ((st = nbl_kctx_alloc_out(c, 0, dY->dtype, r, xd))) return st;
  nbl_rt_tensor *dX = nbl_kctx_out(c, 0);
  if (dX->nbytes) memset(dX->data, 0, dX->nbytes);
  if (dY->numel == 0) return NBL_OK;
  int64_t str[NBL_MAX_RANK], idx[NBL_MAX_RANK] = {0};
  nbl_strides(r, xd, str);
  const char *src = dY->data;
  char *dst = dX->data;
  for (int64_t i = 0; i < dY->numel; i++) {
    int64_t off = 0;
    for (int d = 0; d < r; d++) off += (s0[d] + idx[d] * stp[d]) * str[d];
    memcpy(dst + off * (int64_t)es, src + i * (int64_t)es, es);
    for (int d = r - 1; d >= 0; d--) {
      if (++idx[d] < len[d]) break;
      idx[d] = 0;
    }
  }
  return NBL_OK;
}

/* ------------------------------------------------------------------ GatherElementsGrad */

/* The sums kept in double written to dX (of dX's type), and freed. */
static nbl_status acc_out(nbl_rt_tensor *dX, double *acc) {
  for (int64_t i = 0; i < dX->numel; i++) nbl_rt_set_f64(dX, i, acc[i]);
  free(acc);
  return NBL_OK;
}

static nbl_status k_gather_elements_grad(nbl_kctx *c) {
  nbl_status st = NBL_OK;
  const nbl_rt_tensor *dY = grad_need(c, 0, "dY", &st), *S = dY ? grad_need(c, 1, "shape", &st) : NULL;
  const nbl_rt_tensor *I = S ? grad_need(c, 2, "indices", &st) : NULL;
  if (!I) return st;
  int r;
  int64_t xd[NBL_MAX_RANK];
  if ((st = grad_shape_input(c, S, "shape", &r, xd)) || (st = grad_check_float(c, dY, "dY"))) return st;
  if (!grad_is_int(I->dtype))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "indices must be int32 or int64, got %s", nbl_dtype_name(I->dtype));
  if (I->rank != r || dY->rank != r || memcmp(I->dims, dY->dims, sizeof(int64_t) * (size_t)r))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "dY and indices must have one shape of the rank of `shape` (%d)", r);
  int axis = nbl_norm_axis(nbl_attr_int(c->node, "axis", 0), r);
  if (axis < 0) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "axis out of range for rank %d", r);
  for (int d = 0; d < r; d++)
    if (d != axis && I->dims[d] > xd[d])
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "indices dim %d (%lld) exceeds the data's (%lld)", d,
                      (long long)I->dims[d], (long long)xd[d]);
  if ((st = nbl_kctx_alloc_out(c, 0, dY->dtype, r, xd))) return st;
  nbl_rt_tensor *dX = nbl_kctx_out(c, 0);
  double *acc = calloc((size_t)(dX->numel ? dX->numel : 1), sizeof(double));
  if (!acc) return grad_oom(c);
  int64_t str[NBL_MAX_RANK], idx[NBL_MAX_RANK] = {0};
  nbl_strides(r, xd, str);
  for (int64_t i = 0; i < I->numel; i++) {
    int64_t k;
    if (nbl_fetch_index(c, I, i, xd[axis], &k)) {
      free(acc);
      return NBL_ERR_RUNTIME;
    }
    int64_t off = 0;
    for (int d = 0; d < r; d++) off += (d == axis ? k : idx[d]) * str[d];
    acc[off] += nbl_rt_get_f64(dY, i);
    for (int d = r - 1; d >= 0; d--) {
      if (++idx[d] < I->dims[d]) break;
      idx[d] = 0;
    }
  }
  return acc_out(dX, acc);
}

/* ------------------------------------------------------------------ GatherNDGrad */

static nbl_status k_gather_nd_grad(nbl_kctx *c) {
  nbl_status st = NBL_OK;
  const nbl_rt_tensor *S = grad_need(c, 0, "shape", &st), *I = S ? grad_need(c, 1, "indices", &st) : NULL;
  const nbl_rt_tensor *U = I ? grad_need(c, 2, "update", &st) : NULL;
  if (!U) return st;
  int r;
  int64_t xd[NBL_MAX_RANK];
  if ((st = grad_shape_input(c, S, "shape", &r, xd)) || (st = grad_check_float(c, U, "update"))) return st;
  if (I->dtype != NBL_DT_INT64 || I->rank < 1)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "indices must be an int64 tensor of rank >= 1");
  const int64_t b = nbl_attr_int(c->node, "batch_dims", 0), k = I->dims[I->rank - 1];
  if (b < 0 || b >= I->rank || b >= r || k < 1 || b + k > r)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "bad batch_dims %lld / index depth %lld for data rank %d", (long long)b,
                    (long long)k, r);
  int64_t batch = 1, per = 1, blk = 1, str[NBL_MAX_RANK];
  for (int d = 0; d < b; d++) batch *= xd[d];
  for (int d = (int)b; d < I->rank - 1; d++) per *= I->dims[d];
  for (int d = (int)(b + k); d < r; d++) blk *= xd[d];
  if (U->numel != batch * per * blk)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "update has %lld values; the indices gather %lld", (long long)U->numel,
                    (long long)(batch * per * blk));
  if ((st = nbl_kctx_alloc_out(c, 0, U->dtype, r, xd))) return st;
  nbl_rt_tensor *dX = nbl_kctx_out(c, 0);
  double *acc = calloc((size_t)(dX->numel ? dX->numel : 1), sizeof(double));
  if (!acc) return grad_oom(c);
  nbl_strides(r, xd, str);
  const int64_t bstride = b > 0 ? str[b - 1] : 0;
  for (int64_t bi = 0; bi < batch; bi++)
    for (int64_t j = 0; j < per; j++) {
      int64_t off = bi * bstride, base = (bi * per + j) * k;
      for (int64_t t = 0; t < k; t++) {
        int64_t v;
        if (nbl_fetch_index(c, I, base + t, xd[b + t], &v)) {
          free(acc);
          return NBL_ERR_RUNTIME;
        }
        off += v * str[b + t];
      }
      for (int64_t e = 0; e < blk; e++) acc[off + e] += nbl_rt_get_f64(U, (bi * per + j) * blk + e);
    }
  return acc_out(dX, acc);
}

/* ------------------------------------------------------------------ ResizeGrad */

static nbl_status k_resize_grad(nbl_kctx *c) {
  nbl_status st = NBL_OK;
  const nbl_rt_tensor *dY = grad_need(c, 0, "dY", &st), *S = dY ? grad_need(c, 1, "shape", &st) : NULL;
  if (!S) return st;
  nbl_rt_tensor xs = {0}; /* X as the plan sees it: its shape */
  if ((st = grad_shape_input(c, S, "shape", &xs.rank, xs.dims)) || (st = grad_check_float(c, dY, "dY"))) return st;
  const int r = xs.rank;
  xs.dtype = dY->dtype;
  xs.numel = nbl_shape_numel(r, xs.dims);
  nbl_rs_plan pl;
  int opset = (int)nbl_attr_int(c->node, "nibble.resize_opset", 13);
  if ((st = nbl_rs_plan_init(c, &xs, 1, opset, nbl_attr_int(c->node, "nibble.upsample", 0) != 0, &pl))) return st;
  if (dY->rank != r || memcmp(dY->dims, pl.od, sizeof(int64_t) * (size_t)r))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "dY does not have the shape the resize of `shape` gives");
  if ((st = nbl_kctx_alloc_out(c, 0, dY->dtype, r, xs.dims))) return st;
  nbl_rt_tensor *dX = nbl_kctx_out(c, 0);
  if (dX->numel == 0) return NBL_OK;
  for (int d = 0; d < r; d++)
    if (dY->numel && xs.dims[d] == 0) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "cannot resize empty axis %d", d);
  /* transposed passes, the last axis first: before axis d's, the axes below d
   * are at their output lengths and those above at their input lengths, as
   * when the forward's separable pass of axis d ran */
  enum { MAXT = 64 };
  int64_t cur[NBL_MAX_RANK];
  for (int d = 0; d < r; d++) cur[d] = pl.od[d];
  double *a = malloc(sizeof(double) * (size_t)(dY->numel ? dY->numel : 1));
  if (!a) return grad_oom(c);
  for (int64_t i = 0; i < dY->numel; i++) a[i] = nbl_rt_get_f64(dY, i);
  const int maxn = pl.p.mode == NBL_RS_NEAREST ? 1 : MAXT;
  for (int d = r - 1; d >= 0 && !st; d--) {
    const int64_t in = xs.dims[d], out = pl.od[d];
    int64_t outer = 1, inner = 1, first;
    for (int k = 0; k < d; k++) outer *= cur[k];
    for (int k = d + 1; k < r; k++) inner *= cur[k];
    double *b = calloc((size_t)(outer * in * inner > 0 ? outer * in * inner : 1), sizeof(double));
    double w[MAXT];
    if (!b) {
      st = grad_oom(c);
      break;
    }
    for (int64_t i = 0; i < out; i++) {
      int n = nbl_rs_make_taps(&pl.p, (double)i, pl.scales[d], in, out, pl.roi[d], pl.roi[r + d], maxn, &first, w);
      for (int k = 0; k < n; k++) {
        if (w[k] == 0) continue;
        const int64_t src = clampi(first + k, 0, in - 1);
        for (int64_t q = 0; q < outer; q++) {
          const double *ap = a + (q * out + i) * inner;
          double *bp = b + (q * in + src) * inner;
          for (int64_t e = 0; e < inner; e++) bp[e] += w[k] * ap[e];
        }
      }
    }
    free(a);
    a = b;
    cur[d] = in;
  }
  if (st) {
    free(a);
    return st;
  }
  return acc_out(dX, a);
}

/* ------------------------------------------------------------------ table */

/* ------------------------------------------------------------------ shape rules */

/* dX: shape from the values of input 0 (`shape`), type of dY (input 2). */
static nbl_status shape_gather_grad(nbl_shape_ctx *c) { return nbl_shp_from_data(c, 0, 0, 2); }

/* dX: shape from the values of input 1 (`shape`), type of dY (input 0). */
static nbl_status shape_slice_grad(nbl_shape_ctx *c) { return nbl_shp_from_data(c, 0, 1, 0); }

/* dX: shape from the values of input 1 (`shape`), type of dY (input 0). */
static nbl_status shape_resize_grad(nbl_shape_ctx *c) { return nbl_shp_from_data(c, 0, 1, 0); }
static nbl_status shape_gather_elements_grad(nbl_shape_ctx *c) { return nbl_shp_from_data(c, 0, 1, 0); }
/* dX: shape from the values of input 0 (`shape`), type of update (input 2). */
static nbl_status shape_gather_nd_grad(nbl_shape_ctx *c) { return nbl_shp_from_data(c, 0, 0, 2); }

const nbl_op_def nbl_ops_grad_shape[] = {
    NBL_OP_DEF(NBL_MS_DOMAIN, "GatherGrad", 1, 1, .ref = k_gather_grad, .shape = shape_gather_grad, .no_grad = NBL_NO_GRAD_BACKWARD),
    NBL_OP_DEF(NBL_MS_DOMAIN, "SliceGrad", 1, 1, .ref = k_slice_grad, .shape = shape_slice_grad, .no_grad = NBL_NO_GRAD_BACKWARD),
    NBL_OP_DEF(NBL_MS_DOMAIN, "GatherElementsGrad", 1, 1, .ref = k_gather_elements_grad, .shape = shape_gather_elements_grad, .no_grad = NBL_NO_GRAD_BACKWARD),
    NBL_OP_DEF(NBL_MS_DOMAIN, "GatherNDGrad", 1, 1, .ref = k_gather_nd_grad, .shape = shape_gather_nd_grad, .no_grad = NBL_NO_GRAD_BACKWARD),
    NBL_OP_DEF("ai.nibble", "ResizeGrad", 1, 1, .ref = k_resize_grad, .shape = shape_resize_grad, .no_grad = NBL_NO_GRAD_BACKWARD),
};
const size_t nbl_ops_grad_shape_count = sizeof nbl_ops_grad_shape / sizeof nbl_ops_grad_shape[0];
