/*
 * runtime/ops/shape_index.c - op family 'shape_index': ops that pick or place
 * elements by index or by value.
 *
 * Gather, GatherElements, GatherND, Scatter, ScatterElements, ScatterND,
 * NonZero, OneHot, Compress, Trilu, Unique, ReverseSequence. Like the rest of
 * the shape family (shape.c) they move elements by element size; STRING
 * elements are duplicated so outputs own them.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/core/grad.h"
#include "runtime/core/adapt.h"
#include "runtime/core/shape.h"
#include "runtime/ops/movement.h"
#include "runtime/ops/shape.h"

/* ------------------------------------------------------------------ Gather family */

/* runtime/ops/shape.h */
int nbl_fetch_index(nbl_kctx *c, const nbl_rt_tensor *t, int64_t i, int64_t dim, int64_t *out) {
  int64_t v = nbl_rt_get_i64(t, i);
  if (v < -dim || v >= dim) {
    nbl_kerr(c, NBL_ERR_RUNTIME, "index %lld out of range [%lld, %lld)", (long long)v, (long long)-dim,
             (long long)dim);
    return -1;
  }
  *out = v < 0 ? v + dim : v;
  return 0;
}

static nbl_status check_index_type(nbl_kctx *c, const nbl_rt_tensor *t) {
  if (t->dtype != NBL_DT_INT32 && t->dtype != NBL_DT_INT64)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "indices must be int32 or int64, got %s", nbl_dtype_name(t->dtype));
  return NBL_OK;
}

static nbl_status k_gather(nbl_kctx *c) {
  const nbl_rt_tensor *x, *ind;
  nbl_status st;
  if ((st = need_in(c, 0, "data", &x)) || (st = need_in(c, 1, "indices", &ind))) return st;
  if ((st = check_index_type(c, ind))) return st;
  size_t es = esize(c, x, "data");
  if (!es) return NBL_ERR_UNSUPPORTED;
  int64_t axis_raw = nbl_attr_int(c->node, "axis", 0);
  int axis = nbl_norm_axis(axis_raw, x->rank);
  if (axis < 0) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "axis %lld out of range for rank %d", (long long)axis_raw, x->rank);
  int r = x->rank - 1 + ind->rank;
  if (r > NBL_MAX_RANK) return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "output rank %d exceeds %d", r, NBL_MAX_RANK);
  int64_t od[NBL_MAX_RANK];
  int k = 0;
  for (int i = 0; i < axis; i++) od[k++] = x->dims[i];
  for (int i = 0; i < ind->rank; i++) od[k++] = ind->dims[i];
  for (int i = axis + 1; i < x->rank; i++) od[k++] = x->dims[i];
  if ((st = nbl_kctx_alloc_out(c, 0, x->dtype, r, od))) return st;
  nbl_rt_tensor *o = nbl_kctx_out(c, 0);
  int64_t outer = 1, inner = 1, dim = x->dims[axis];
  for (int i = 0; i < axis; i++) outer *= x->dims[i];
  for (int i = axis + 1; i < x->rank; i++) inner *= x->dims[i];
  size_t blk = (size_t)inner * es;
  char *dp = o->data;
  for (int64_t q = 0; q < outer; q++)
    for (int64_t j = 0; j < ind->numel; j++) {
      int64_t v;
      if (nbl_fetch_index(c, ind, j, dim, &v)) return clear_strings(o);
      memcpy(dp, (const char *)x->data + (size_t)(q * dim + v) * blk, blk);
      dp += blk;
    }
  return dup_strings(c, o);
}

static nbl_status k_gather_elements(nbl_kctx *c) {
  const nbl_rt_tensor *x, *ind;
  nbl_status st;
  if ((st = need_in(c, 0, "data", &x)) || (st = need_in(c, 1, "indices", &ind))) return st;
  if ((st = check_index_type(c, ind))) return st;
  size_t es = esize(c, x, "data");
  if (!es) return NBL_ERR_UNSUPPORTED;
  int64_t axis_raw = nbl_attr_int(c->node, "axis", 0);
  int axis = nbl_norm_axis(axis_raw, x->rank);
  if (axis < 0) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "axis %lld out of range for rank %d", (long long)axis_raw, x->rank);
  if (ind->rank != x->rank)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "indices rank %d differs from data rank %d", ind->rank, x->rank);
  for (int d = 0; d < x->rank; d++)
    if (d != axis && ind->dims[d] > x->dims[d])
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "indices dim %d (%lld) exceeds data dim (%lld)", d,
                      (long long)ind->dims[d], (long long)x->dims[d]);
  if ((st = nbl_kctx_alloc_out(c, 0, x->dtype, ind->rank, ind->dims))) return st;
  nbl_rt_tensor *o = nbl_kctx_out(c, 0);
  int64_t str[NBL_MAX_RANK], idx[NBL_MAX_RANK] = {0};
  nbl_strides(x->rank, x->dims, str);
  for (int64_t i = 0; i < ind->numel; i++) {
    int64_t v;
    if (nbl_fetch_index(c, ind, i, x->dims[axis], &v)) return clear_strings(o);
    int64_t off = lin(x->rank, idx, str) + (v - idx[axis]) * str[axis];
    ecpy((char *)o->data + i * (int64_t)es, (const char *)x->data + off * (int64_t)es, es);
    next_idx(ind->rank, idx, ind->dims);
  }
  return dup_strings(c, o);
}

static nbl_status k_gather_nd(nbl_kctx *c) {
  const nbl_rt_tensor *x, *ind;
  nbl_status st;
  if ((st = need_in(c, 0, "data", &x)) || (st = need_in(c, 1, "indices", &ind))) return st;
  if (ind->dtype != NBL_DT_INT64)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "indices must be int64, got %s", nbl_dtype_name(ind->dtype));
  size_t es = esize(c, x, "data");
  if (!es) return NBL_ERR_UNSUPPORTED;
  int64_t b = c->opset >= 12 ? nbl_attr_int(c->node, "batch_dims", 0) : 0;
  if (ind->rank < 1) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "indices must have rank >= 1");
  int64_t k = ind->dims[ind->rank - 1];
  if (b < 0 || b >= ind->rank || b >= x->rank || k < 1 || b + k > x->rank)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "bad batch_dims %lld / index depth %lld for data rank %d, indices rank %d",
                    (long long)b, (long long)k, x->rank, ind->rank);
  for (int d = 0; d < b; d++)
    if (x->dims[d] != ind->dims[d])
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "batch dim %d differs: data %lld, indices %lld", d,
                      (long long)x->dims[d], (long long)ind->dims[d]);
  int r = ind->rank - 1 + x->rank - (int)(b + k);
  if (r > NBL_MAX_RANK) return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "output rank %d exceeds %d", r, NBL_MAX_RANK);
  int64_t od[NBL_MAX_RANK];
  int q = 0;
  for (int d = 0; d < ind->rank - 1; d++) od[q++] = ind->dims[d];
  for (int d = (int)(b + k); d < x->rank; d++) od[q++] = x->dims[d];
  if ((st = nbl_kctx_alloc_out(c, 0, x->dtype, r, od))) return st;
  nbl_rt_tensor *o = nbl_kctx_out(c, 0);
  int64_t str[NBL_MAX_RANK];
  nbl_strides(x->rank, x->dims, str);
  int64_t batch = 1, per = 1, blk = 1;
  for (int d = 0; d < b; d++) batch *= x->dims[d];
  for (int d = (int)b; d < ind->rank - 1; d++) per *= ind->dims[d];
  for (int d = (int)(b + k); d < x->rank; d++) blk *= x->dims[d];
  int64_t bstride = b > 0 ? str[b - 1] : 0;
  size_t bb = (size_t)blk * es;
  char *dp = o->data;
  for (int64_t bi = 0; bi < batch; bi++)
    for (int64_t j = 0; j < per; j++) {
      int64_t off = bi * bstride, base = (bi * per + j) * k;
      for (int64_t t = 0; t < k; t++) {
        int64_t v;
        if (nbl_fetch_index(c, ind, base + t, x->dims[b + t], &v)) return clear_strings(o);
        off += v * str[b + t];
      }
      memcpy(dp, (const char *)x->data + off * (int64_t)es, bb);
      dp += bb;
    }
  return dup_strings(c, o);
}

/* ------------------------------------------------------------------ Scatter family */

enum { RED_NONE, RED_ADD, RED_MUL, RED_MIN, RED_MAX };

static int parse_reduction(nbl_kctx *c, int *red) {
  const char *s = c->opset >= 16 ? nbl_attr_string(c->node, "reduction", "none") : "none";
  if (!strcmp(s, "none")) *red = RED_NONE;
  else if (!strcmp(s, "add")) *red = RED_ADD;
  else if (!strcmp(s, "mul")) *red = RED_MUL;
  else if (!strcmp(s, "min") && c->opset >= 18) *red = RED_MIN;
  else if (!strcmp(s, "max") && c->opset >= 18) *red = RED_MAX;
  else {
    nbl_kerr(c, NBL_ERR_INVALID_MODEL, "reduction '%s' is not supported at opset %d", s, c->opset);
    return -1;
  }
  return 0;
}

#define RED_INT(T, UT)                                                  \
  {                                                                     \
    T a, b;                                                             \
    memcpy(&a, dst, sizeof a);                                          \
    memcpy(&b, src, sizeof b);                                          \
    T r = red == RED_ADD   ? (T)((UT)a + (UT)b)                         \
          : red == RED_MUL ? (T)((UT)a * (UT)b)                         \
          : red == RED_MIN ? (a < b ? a : b)                            \
                           : (a > b ? a : b);                           \
    memcpy(dst, &r, sizeof r);                                          \
    return;                                                             \
  }

static double red_f(int red, double a, double b) {
  switch (red) {
  case RED_ADD: return a + b;
  case RED_MUL: return a * b;
  case RED_MIN: return (isnan(a) || isnan(b)) ? NAN : a < b ? a : b;
  default: return (isnan(a) || isnan(b)) ? NAN : a > b ? a : b;
  }
}

/* dst = dst (red) src for one element of type dt. */
static void reduce_elem(nbl_dtype dt, int red, char *dst, const char *src) {
  switch (dt) {
  case NBL_DT_FLOAT: {
    float a, b;
    memcpy(&a, dst, 4);
    memcpy(&b, src, 4);
    float r = red == RED_ADD ? a + b : red == RED_MUL ? a * b : (float)red_f(red, a, b);
    memcpy(dst, &r, 4);
    return;
  }
  case NBL_DT_DOUBLE: {
    double a, b;
    memcpy(&a, dst, 8);
    memcpy(&b, src, 8);
    double r = red_f(red, a, b);
    memcpy(dst, &r, 8);
    return;
  }
  case NBL_DT_FLOAT16: case NBL_DT_BFLOAT16: {
    uint16_t a, b;
    memcpy(&a, dst, 2);
    memcpy(&b, src, 2);
    int h = dt == NBL_DT_FLOAT16;
    float fa = h ? nbl_half_to_float(a) : nbl_bf16_to_float(a);
    float fb = h ? nbl_half_to_float(b) : nbl_bf16_to_float(b);
    float fr = red == RED_ADD ? fa + fb : red == RED_MUL ? fa * fb : (float)red_f(red, fa, fb);
    uint16_t r = h ? nbl_float_to_half(fr) : nbl_float_to_bf16(fr);
    memcpy(dst, &r, 2);
    return;
  }
  case NBL_DT_INT8: RED_INT(int8_t, uint8_t)
  case NBL_DT_UINT8: RED_INT(uint8_t, uint8_t)
  case NBL_DT_INT16: RED_INT(int16_t, uint16_t)
  case NBL_DT_UINT16: RED_INT(uint16_t, uint16_t)
  case NBL_DT_INT32: RED_INT(int32_t, uint32_t)
  case NBL_DT_UINT32: RED_INT(uint32_t, uint32_t)
  case NBL_DT_INT64: RED_INT(int64_t, uint64_t)
  case NBL_DT_UINT64: RED_INT(uint64_t, uint64_t)
  case NBL_DT_BOOL: {
    uint8_t a = *dst != 0, b = *src != 0;
    *dst = (char)(red == RED_ADD || red == RED_MAX ? (a | b) : (a & b));
    return;
  }
  default: return;
  }
}

static int reducible(nbl_dtype dt) {
  return is_int_type(dt) || is_float_type(dt) || dt == NBL_DT_BOOL;
}

/* ScatterElements (and the deprecated Scatter). */
static nbl_status k_scatter_elements(nbl_kctx *c) {
  const nbl_rt_tensor *x, *ind, *upd;
  nbl_status st;
  if ((st = need_in(c, 0, "data", &x)) || (st = need_in(c, 1, "indices", &ind)) ||
      (st = need_in(c, 2, "updates", &upd)))
    return st;
  if ((st = check_index_type(c, ind))) return st;
  size_t es = esize(c, x, "data");
  if (!es) return NBL_ERR_UNSUPPORTED;
  int red = RED_NONE;
  if (strcmp(c->node->op_type, "Scatter") != 0 && parse_reduction(c, &red)) return NBL_ERR_INVALID_MODEL;
  if (red != RED_NONE && !reducible(x->dtype))
    return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "reduction on element type %s", nbl_dtype_name(x->dtype));
  int64_t axis_raw = nbl_attr_int(c->node, "axis", 0);
  int axis = nbl_norm_axis(axis_raw, x->rank);
  if (axis < 0) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "axis %lld out of range for rank %d", (long long)axis_raw, x->rank);
  if (upd->dtype != x->dtype) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "updates type differs from data type");
  if (ind->rank != x->rank || upd->rank != x->rank)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "data, indices and updates must have the same rank");
  for (int d = 0; d < x->rank; d++) {
    if (ind->dims[d] != upd->dims[d])
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "indices and updates shapes differ at dim %d", d);
    if (d != axis && ind->dims[d] > x->dims[d])
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "indices dim %d (%lld) exceeds data dim (%lld)", d,
                      (long long)ind->dims[d], (long long)x->dims[d]);
  }
  if ((st = nbl_kctx_alloc_out(c, 0, x->dtype, x->rank, x->dims))) return st;
  nbl_rt_tensor *o = nbl_kctx_out(c, 0);
  if (x->nbytes) memcpy(o->data, x->data, x->nbytes);
  int64_t str[NBL_MAX_RANK], idx[NBL_MAX_RANK] = {0};
  nbl_strides(x->rank, x->dims, str);
  for (int64_t i = 0; i < ind->numel; i++) {
    int64_t v;
    if (nbl_fetch_index(c, ind, i, x->dims[axis], &v)) {
      return clear_strings(o);
    }
    int64_t off = lin(x->rank, idx, str) + (v - idx[axis]) * str[axis];
    char *dp = (char *)o->data + off * (int64_t)es;
    const char *sp = (const char *)upd->data + i * (int64_t)es;
    if (red == RED_NONE) ecpy(dp, sp, es);
    else reduce_elem(x->dtype, red, dp, sp);
    next_idx(ind->rank, idx, ind->dims);
  }
  return dup_strings(c, o);
}

static nbl_status k_scatter_nd(nbl_kctx *c) {
  const nbl_rt_tensor *x, *ind, *upd;
  nbl_status st;
  if ((st = need_in(c, 0, "data", &x)) || (st = need_in(c, 1, "indices", &ind)) ||
      (st = need_in(c, 2, "updates", &upd)))
    return st;
  if (ind->dtype != NBL_DT_INT64)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "indices must be int64, got %s", nbl_dtype_name(ind->dtype));
  size_t es = esize(c, x, "data");
  if (!es) return NBL_ERR_UNSUPPORTED;
  int red;
  if (parse_reduction(c, &red)) return NBL_ERR_INVALID_MODEL;
  if (red != RED_NONE && !reducible(x->dtype))
    return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "reduction on element type %s", nbl_dtype_name(x->dtype));
  if (upd->dtype != x->dtype) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "updates type differs from data type");
  if (ind->rank < 1) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "indices must have rank >= 1");
  int64_t k = ind->dims[ind->rank - 1];
  if (k > x->rank || k < 1)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "index depth %lld invalid for data rank %d", (long long)k, x->rank);
  /* updates shape = indices.shape[:-1] + data.shape[k:] */
  int ur = ind->rank - 1 + x->rank - (int)k;
  int ok = upd->rank == ur;
  for (int d = 0; ok && d < ind->rank - 1; d++) ok = upd->dims[d] == ind->dims[d];
  for (int d = 0; ok && d < x->rank - k; d++) ok = upd->dims[ind->rank - 1 + d] == x->dims[k + d];
  if (!ok) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "updates shape does not match indices and data shapes");
  if ((st = nbl_kctx_alloc_out(c, 0, x->dtype, x->rank, x->dims))) return st;
  nbl_rt_tensor *o = nbl_kctx_out(c, 0);
  if (x->nbytes) memcpy(o->data, x->data, x->nbytes);
  int64_t str[NBL_MAX_RANK];
  nbl_strides(x->rank, x->dims, str);
  int64_t n = 1, blk = 1;
  for (int d = 0; d < ind->rank - 1; d++) n *= ind->dims[d];
  for (int d = (int)k; d < x->rank; d++) blk *= x->dims[d];
  for (int64_t j = 0; j < n; j++) {
    int64_t off = 0;
    for (int64_t t = 0; t < k; t++) {
      int64_t v;
      if (nbl_fetch_index(c, ind, j * k + t, x->dims[t], &v)) {
        return clear_strings(o);
      }
      off += v * str[t];
    }
    char *dp = (char *)o->data + off * (int64_t)es;
    const char *sp = (const char *)upd->data + j * blk * (int64_t)es;
    if (red == RED_NONE) memcpy(dp, sp, (size_t)blk * es);
    else
      for (int64_t e = 0; e < blk; e++) reduce_elem(x->dtype, red, dp + e * (int64_t)es, sp + e * (int64_t)es);
  }
  return dup_strings(c, o);
}

/* ------------------------------------------------------------------ NonZero */

static int elem_nonzero(const nbl_rt_tensor *t, int64_t i, size_t es) {
  if (is_float_type(t->dtype)) return nbl_rt_get_f64(t, i) != 0; /* -0 is zero, NaN is not */
  if (t->dtype == NBL_DT_STRING) {
    const char *s = ((char *const *)t->data)[i];
    return s && s[0];
  }
  const unsigned char *p = (const unsigned char *)t->data + (size_t)i * es;
  for (size_t k = 0; k < es; k++)
    if (p[k]) return 1;
  return 0;
}

static nbl_status k_nonzero(nbl_kctx *c) {
  const nbl_rt_tensor *x;
  nbl_status st = need_in(c, 0, "X", &x);
  if (st) return st;
  size_t es = esize(c, x, "X");
  if (!es) return NBL_ERR_UNSUPPORTED;
  int64_t nnz = 0;
  for (int64_t i = 0; i < x->numel; i++) nnz += elem_nonzero(x, i, es);
  int r = x->rank;
  int64_t od[2] = {r, nnz};
  if ((st = nbl_kctx_alloc_out(c, 0, NBL_DT_INT64, 2, od))) return st;
  int64_t *o = nbl_kctx_out(c, 0)->data;
  int64_t idx[NBL_MAX_RANK] = {0}, k = 0;
  for (int64_t i = 0; i < x->numel; i++) {
    if (elem_nonzero(x, i, es)) {
      for (int d = 0; d < r; d++) o[d * nnz + k] = idx[d];
      k++;
    }
    next_idx(r, idx, x->dims);
  }
  return NBL_OK;
}

/* ------------------------------------------------------------------ OneHot */

static nbl_status k_onehot(nbl_kctx *c) {
  const nbl_rt_tensor *ind, *dep, *val;
  nbl_status st;
  if ((st = need_in(c, 0, "indices", &ind)) || (st = need_in(c, 1, "depth", &dep)) ||
      (st = need_in(c, 2, "values", &val)))
    return st;
  if (!(is_int_type(ind->dtype) || is_float_type(ind->dtype)) || !(is_int_type(dep->dtype) || is_float_type(dep->dtype)))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "indices and depth must be numeric");
  if (dep->numel != 1) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "depth must hold one value");
  if (val->numel != 2 || val->rank != 1) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "values must be [off, on]");
  size_t es = esize(c, val, "values");
  if (!es) return NBL_ERR_UNSUPPORTED;
  double dd = nbl_rt_get_f64(dep, 0);
  if (!(dd >= 1) || dd > 1e12) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "depth %g is invalid", dd);
  int64_t depth = (int64_t)dd;
  int r = ind->rank + 1;
  if (r > NBL_MAX_RANK) return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "output rank %d exceeds %d", r, NBL_MAX_RANK);
  int64_t axis_raw = nbl_attr_int(c->node, "axis", -1);
  int axis = nbl_norm_axis(axis_raw, r);
  if (axis < 0) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "axis %lld out of range for rank %d", (long long)axis_raw, r);
  int64_t od[NBL_MAX_RANK];
  for (int d = 0, k = 0; d < r; d++) od[d] = d == axis ? depth : ind->dims[k++];
  if ((st = nbl_kctx_alloc_out(c, 0, val->dtype, r, od))) return st;
  nbl_rt_tensor *o = nbl_kctx_out(c, 0);
  const char *off = val->data, *on = (const char *)val->data + es;
  int64_t outer = 1, inner = 1;
  for (int d = 0; d < axis; d++) outer *= od[d];
  for (int d = axis + 1; d < r; d++) inner *= od[d];
  char *dp = o->data;
  for (int64_t i = 0; i < o->numel; i++) ecpy(dp + i * (int64_t)es, off, es);
  for (int64_t q = 0; q < outer; q++)
    for (int64_t e = 0; e < inner; e++) {
      double v = nbl_rt_get_f64(ind, q * inner + e);
      if (!isfinite(v)) continue;
      int64_t k = (int64_t)v;
      if (k < 0) k += depth;
      if (k < 0 || k >= depth) continue;
      ecpy(dp + ((q * depth + k) * inner + e) * (int64_t)es, on, es);
    }
  return dup_strings(c, o);
}

/* ------------------------------------------------------------------ Compress */

static nbl_status k_compress(nbl_kctx *c) {
  const nbl_rt_tensor *x, *cond;
  nbl_status st;
  if ((st = need_in(c, 0, "input", &x)) || (st = need_in(c, 1, "condition", &cond))) return st;
  size_t es = esize(c, x, "input");
  if (!es) return NBL_ERR_UNSUPPORTED;
  if (cond->dtype != NBL_DT_BOOL || cond->rank != 1)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "condition must be a 1-D bool tensor");
  const nbl_attr *aa = nbl_node_attr(c->node, "axis");
  int axis = -1;
  int64_t outer = 1, dim = x->numel, inner = 1;
  if (aa) {
    axis = nbl_norm_axis(aa->i, x->rank);
    if (axis < 0) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "axis %lld out of range for rank %d", (long long)aa->i, x->rank);
    dim = x->dims[axis];
    for (int d = 0; d < axis; d++) outer *= x->dims[d];
    for (int d = axis + 1; d < x->rank; d++) inner *= x->dims[d];
  }
  const uint8_t *cv = cond->data;
  int64_t n = cond->numel < dim ? cond->numel : dim, kept = 0;
  for (int64_t i = cond->numel - 1; i >= dim; i--)
    if (cv[i]) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "condition selects index %lld beyond axis size %lld", (long long)i, (long long)dim);
  for (int64_t i = 0; i < n; i++) kept += cv[i] != 0;
  int64_t od[NBL_MAX_RANK];
  int r = 1;
  if (aa) {
    r = x->rank;
    for (int d = 0; d < r; d++) od[d] = x->dims[d];
    od[axis] = kept;
  } else {
    od[0] = kept;
  }
  if ((st = nbl_kctx_alloc_out(c, 0, x->dtype, r, od))) return st;
  nbl_rt_tensor *o = nbl_kctx_out(c, 0);
  char *dp = o->data;
  size_t blk = (size_t)inner * es;
  for (int64_t q = 0; q < outer; q++)
    for (int64_t i = 0; i < n; i++)
      if (cv[i]) {
        memcpy(dp, (const char *)x->data + (size_t)(q * dim + i) * blk, blk);
        dp += blk;
      }
  return dup_strings(c, o);
}

/* ------------------------------------------------------------------ Trilu */

static nbl_status k_trilu(nbl_kctx *c) {
  const nbl_rt_tensor *x, *kt = NULL;
  nbl_status st = need_in(c, 0, "input", &x);
  if (st) return st;
  size_t es = esize(c, x, "input");
  if (!es) return NBL_ERR_UNSUPPORTED;
  if (x->dtype == NBL_DT_STRING) return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "string input");
  if (x->rank < 2) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input must have rank >= 2, got %d", x->rank);
  int64_t k = 0;
  if ((kt = opt_in(c, 1))) {
    if (kt->numel != 1 || !is_int_type(kt->dtype))
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "k must be one integer");
    k = nbl_rt_get_i64(kt, 0);
  }
  int upper = (int)nbl_attr_int(c->node, "upper", 1);
  if ((st = nbl_kctx_alloc_out(c, 0, x->dtype, x->rank, x->dims))) return st;
  nbl_rt_tensor *o = nbl_kctx_out(c, 0);
  int64_t N = x->dims[x->rank - 2], M = x->dims[x->rank - 1];
  int64_t mats = (N > 0 && M > 0) ? x->numel / (N * M) : 0;
  for (int64_t b = 0; b < mats; b++)
    for (int64_t i = 0; i < N; i++) {
      char *dp = (char *)o->data + ((b * N + i) * M) * (int64_t)es;
      const char *sp = (const char *)x->data + ((b * N + i) * M) * (int64_t)es;
      /* keep j - i >= k (upper) or j - i <= k (lower) */
      int64_t lo = upper ? i + k : 0, hi = upper ? M : i + k + 1; /* kept [lo, hi) */
      lo = clampi(lo, 0, M);
      hi = clampi(hi, 0, M);
      memset(dp, 0, (size_t)M * es);
      if (hi > lo) memcpy(dp + lo * (int64_t)es, sp + lo * (int64_t)es, (size_t)(hi - lo) * es);
    }
  return NBL_OK;
}

/* ------------------------------------------------------------------ ReverseSequence */

static nbl_status k_reverse_sequence(nbl_kctx *c) {
  const nbl_rt_tensor *x, *sl;
  nbl_status st;
  if ((st = need_in(c, 0, "input", &x)) || (st = need_in(c, 1, "sequence_lens", &sl))) return st;
  size_t es = esize(c, x, "input");
  if (!es) return NBL_ERR_UNSUPPORTED;
  if (x->rank < 2) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input must have rank >= 2");
  int64_t ta = nbl_attr_int(c->node, "time_axis", 0), ba = nbl_attr_int(c->node, "batch_axis", 1);
  if (!((ta == 0 && ba == 1) || (ta == 1 && ba == 0)))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "time_axis/batch_axis must be 0/1 or 1/0");
  if (!is_int_type(sl->dtype) || sl->rank != 1 || sl->numel != x->dims[ba])
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "sequence_lens must be 1-D with %lld integers", (long long)x->dims[ba]);
  if ((st = nbl_kctx_alloc_out(c, 0, x->dtype, x->rank, x->dims))) return st;
  nbl_rt_tensor *o = nbl_kctx_out(c, 0);
  int64_t T = x->dims[ta], B = x->dims[ba], inner = 1;
  for (int d = 2; d < x->rank; d++) inner *= x->dims[d];
  int64_t tstr = ta == 0 ? B * inner : inner, bstr = ba == 0 ? T * inner : inner;
  size_t blk = (size_t)inner * es;
  for (int64_t b = 0; b < B; b++) {
    int64_t len = nbl_rt_get_i64(sl, b);
    if (len < 0 || len > T) {
      clear_strings(o);
      return nbl_kerr(c, NBL_ERR_RUNTIME, "sequence_lens[%lld] = %lld out of range [0, %lld]", (long long)b,
                      (long long)len, (long long)T);
    }
    for (int64_t t = 0; t < T; t++) {
      int64_t src = t < len ? len - 1 - t : t;
      memcpy((char *)o->data + (b * bstr + t * tstr) * (int64_t)es,
             (const char *)x->data + (b * bstr + src * tstr) * (int64_t)es, blk);
    }
  }
  return dup_strings(c, o);
}

/* ------------------------------------------------------------------ Unique */

typedef struct uq_ctx {
  const nbl_rt_tensor *t;
  const int64_t *rows; /* element offsets of each slice's elements, laid out [S][len] */
  int64_t len;
} uq_ctx;

static int cmp_elem(const nbl_rt_tensor *t, int64_t a, int64_t b) {
  switch (t->dtype) {
  case NBL_DT_STRING: {
    const char *x = ((char *const *)t->data)[a], *y = ((char *const *)t->data)[b];
    int r = strcmp(x ? x : "", y ? y : "");
    return r < 0 ? -1 : r > 0;
  }
  case NBL_DT_UINT64: {
    uint64_t x = ((const uint64_t *)t->data)[a], y = ((const uint64_t *)t->data)[b];
    return x < y ? -1 : x > y;
  }
  case NBL_DT_FLOAT: case NBL_DT_DOUBLE: case NBL_DT_FLOAT16: case NBL_DT_BFLOAT16: {
    double x = nbl_rt_get_f64(t, a), y = nbl_rt_get_f64(t, b);
    int nx = isnan(x), ny = isnan(y); /* NaN sorts last and equals NaN, as numpy */
    if (nx || ny) return nx - ny;
    return x < y ? -1 : x > y;
  }
  default: {
    int64_t x = nbl_rt_get_i64(t, a), y = nbl_rt_get_i64(t, b);
    return x < y ? -1 : x > y;
  }
  }
}

static int cmp_rows(const uq_ctx *u, int64_t a, int64_t b) {
  for (int64_t k = 0; k < u->len; k++) {
    int r = cmp_elem(u->t, u->rows[a * u->len + k], u->rows[b * u->len + k]);
    if (r) return r;
  }
  return 0;
}

/* Stable merge sort of ids by row content. */
static void uq_sort(const uq_ctx *u, int64_t *ids, int64_t *tmp, int64_t n) {
  if (n < 2) return;
  int64_t h = n / 2;
  uq_sort(u, ids, tmp, h);
  uq_sort(u, ids + h, tmp, n - h);
  int64_t i = 0, j = h, k = 0;
  while (i < h && j < n) tmp[k++] = cmp_rows(u, ids[j], ids[i]) < 0 ? ids[j++] : ids[i++];
  while (i < h) tmp[k++] = ids[i++];
  while (j < n) tmp[k++] = ids[j++];
  memcpy(ids, tmp, (size_t)n * sizeof *ids);
}

static nbl_status k_unique(nbl_kctx *c) {
  const nbl_rt_tensor *x;
  nbl_status st = need_in(c, 0, "X", &x);
  if (st) return st;
  size_t es = esize(c, x, "X");
  if (!es) return NBL_ERR_UNSUPPORTED;
  int sorted = (int)nbl_attr_int(c->node, "sorted", 1);
  const nbl_attr *aa = nbl_node_attr(c->node, "axis");
  int axis = -1;
  int64_t S = x->numel, outer = 1, inner = 1;
  if (aa) {
    axis = nbl_norm_axis(aa->i, x->rank);
    if (axis < 0) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "axis %lld out of range for rank %d", (long long)aa->i, x->rank);
    S = x->dims[axis];
    for (int d = 0; d < axis; d++) outer *= x->dims[d];
    for (int d = axis + 1; d < x->rank; d++) inner *= x->dims[d];
  }
  int64_t len = outer * inner;
  int64_t *rows = malloc((size_t)(S * len + 1) * sizeof *rows);
  int64_t *ids = malloc((size_t)(S + 1) * sizeof *ids), *tmp = malloc((size_t)(S + 1) * sizeof *tmp);
  int64_t *grp = malloc((size_t)(S + 1) * sizeof *grp), *first = malloc((size_t)(S + 1) * sizeof *first);
  int64_t *cnt = malloc((size_t)(S + 1) * sizeof *cnt), *order = malloc((size_t)(S + 1) * sizeof *order);
  if (!rows || !ids || !tmp || !grp || !first || !cnt || !order) {
    st = nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory");
    goto done;
  }
  for (int64_t s = 0; s < S; s++) {
    ids[s] = s;
    for (int64_t q = 0; q < outer; q++)
      for (int64_t e = 0; e < inner; e++) rows[s * len + q * inner + e] = (q * S + s) * inner + e;
  }
  uq_ctx u = {x, rows, len};
  uq_sort(&u, ids, tmp, S);
  /* groups in sorted order: first occurrence (smallest id, stable sort) and count */
  int64_t G = 0;
  for (int64_t i = 0; i < S; i++) {
    if (i == 0 || cmp_rows(&u, ids[i - 1], ids[i]) != 0) {
      first[G] = ids[i];
      cnt[G] = 0;
      G++;
    }
    grp[ids[i]] = G - 1;
    cnt[G - 1]++;
  }
  /* output order of groups: sorted, or by first occurrence */
  for (int64_t g = 0; g < G; g++) order[g] = g;
  if (!sorted) { /* sort groups by first occurrence (insertion into position by index) */
    for (int64_t g = 0; g < G; g++) tmp[g] = first[g];
    /* simple counting: positions of first occurrences are distinct ids in [0,S) */
    int64_t *pos = ids; /* reuse */
    for (int64_t s = 0; s < S; s++) pos[s] = -1;
    for (int64_t g = 0; g < G; g++) pos[first[g]] = g;
    int64_t k = 0;
    for (int64_t s = 0; s < S; s++)
      if (pos[s] >= 0) order[k++] = pos[s];
  }
  /* rank of each group in the output */
  int64_t *rank_of = tmp;
  for (int64_t k = 0; k < G; k++) rank_of[order[k]] = k;
  int64_t od[NBL_MAX_RANK];
  int r = 1;
  if (aa) {
    r = x->rank;
    for (int d = 0; d < r; d++) od[d] = x->dims[d];
    od[axis] = G;
  } else {
    od[0] = G;
  }
  if ((st = nbl_kctx_alloc_out(c, 0, x->dtype, r, od))) goto done;
  nbl_rt_tensor *y = nbl_kctx_out(c, 0);
  for (int64_t k = 0; k < G; k++) {
    int64_t s = first[order[k]];
    for (int64_t q = 0; q < outer; q++)
      memcpy((char *)y->data + ((q * G + k) * inner) * (int64_t)es,
             (const char *)x->data + ((q * S + s) * inner) * (int64_t)es, (size_t)inner * es);
  }
  if ((st = dup_strings(c, y))) goto done;
  if (c->n_out > 1) {
    if ((st = nbl_kctx_alloc_out(c, 1, NBL_DT_INT64, 1, &G))) goto done;
    int64_t *p = nbl_kctx_out(c, 1)->data;
    for (int64_t k = 0; k < G; k++) p[k] = first[order[k]];
  }
  if (c->n_out > 2) {
    if ((st = nbl_kctx_alloc_out(c, 2, NBL_DT_INT64, 1, &S))) goto done;
    int64_t *p = nbl_kctx_out(c, 2)->data;
    for (int64_t s = 0; s < S; s++) p[s] = rank_of[grp[s]];
  }
  if (c->n_out > 3) {
    if ((st = nbl_kctx_alloc_out(c, 3, NBL_DT_INT64, 1, &G))) goto done;
    int64_t *p = nbl_kctx_out(c, 3)->data;
    for (int64_t k = 0; k < G; k++) p[k] = cnt[order[k]];
  }
done:
  free(rows), free(ids), free(tmp), free(grp), free(first), free(cnt), free(order);
  return st;
}

/* ------------------------------------------------------------------ shape rules */

static nbl_status shape_gather(nbl_shape_ctx *c) {
  nbl_shp x, idx, o;
  nbl_shp_in(c, 0, &x);
  nbl_shp_in(c, 1, &idx);
  if (x.rank < 0 || idx.rank < 0) return nbl_shp_set_dt(c, 0, x.dt, -1);
  int a = nbl_norm_axis(nbl_attr_int(c->node, "axis", 0), x.rank);
  if (a < 0 || x.rank - 1 + idx.rank > NBL_SHP_MAXR) return nbl_shp_set_dt(c, 0, x.dt, -1);
  o.dt = x.dt;
  o.rank = 0;
  for (int i = 0; i < a; i++) o.d[o.rank++] = x.d[i];
  for (int i = 0; i < idx.rank; i++) o.d[o.rank++] = idx.d[i];
  for (int i = a + 1; i < x.rank; i++) o.d[o.rank++] = x.d[i];
  nbl_status st = nbl_shp_set(c, 0, &o);
  nbl_kdata k, ki, r;
  if (st || x.rank != 1 || idx.rank > 1 || !nbl_shp_in_kd(c, 0, &k) || !nbl_shp_in_kd(c, 1, &ki)) return st;
  r.rank = idx.rank;
  r.n = ki.n;
  for (int i = 0; i < ki.n; i++) {
    if (ki.e[i].kind != NBL_KD_VAL) return NBL_OK;
    int64_t j = ki.e[i].v < 0 ? ki.e[i].v + k.n : ki.e[i].v;
    if (j < 0 || j >= k.n) return NBL_OK;
    r.e[i] = k.e[j];
  }
  return nbl_shp_set_kd(c, 0, &r);
}

/* GatherElements: the indices' shape, the data's type. */
static nbl_status shape_gather_elements(nbl_shape_ctx *c) {
  nbl_shp s;
  nbl_shp_in(c, 1, &s);
  s.dt = nbl_shp_in_dtype(c, 0);
  return nbl_shp_set(c, 0, &s);
}

static nbl_status shape_gathernd(nbl_shape_ctx *c) {
  nbl_shp x, idx, o;
  nbl_shp_in(c, 0, &x);
  nbl_shp_in(c, 1, &idx);
  int64_t b = nbl_attr_int(c->node, "batch_dims", 0);
  if (x.rank < 0 || idx.rank < 1 || !nbl_dim_known(idx.d[idx.rank - 1])) return nbl_shp_set_dt(c, 0, x.dt, -1);
  int64_t last = idx.d[idx.rank - 1].value;
  int r = idx.rank - 1 + x.rank - (int)b - (int)last;
  if (r < 0 || r > NBL_SHP_MAXR || b < 0) return nbl_shp_set_dt(c, 0, x.dt, -1);
  o.dt = x.dt;
  o.rank = 0;
  for (int i = 0; i < idx.rank - 1; i++) o.d[o.rank++] = idx.d[i];
  for (int i = (int)(b + last); i < x.rank; i++) o.d[o.rank++] = x.d[i];
  return nbl_shp_set(c, 0, &o);
}

static nbl_status shape_nonzero(nbl_shape_ctx *c) {
  nbl_shp x, o;
  nbl_shp_in(c, 0, &x);
  nbl_shp_rank(&o, NBL_DT_INT64, 2);
  if (x.rank >= 0) o.d[0] = nbl_dim_val(x.rank);
  return nbl_shp_set(c, 0, &o);
}

static nbl_status shape_onehot(nbl_shape_ctx *c) {
  nbl_shp idx, o;
  nbl_shp_in(c, 0, &idx);
  nbl_dtype dt = nbl_shp_in_dtype(c, 2);
  if (idx.rank < 0 || idx.rank + 1 > NBL_SHP_MAXR) return nbl_shp_set_dt(c, 0, dt, -1);
  int r = idx.rank + 1;
  int a = nbl_norm_axis(nbl_attr_int(c->node, "axis", -1), r);
  double dep[1];
  int nd;
  nbl_dim depth = nbl_dim_unk();
  if (nbl_shp_in_floats(c, 1, dep, &nd, 1) && nd == 1) depth = nbl_dim_val((int64_t)dep[0]);
  if (a < 0) return nbl_shp_set_dt(c, 0, dt, r);
  o.dt = dt;
  o.rank = r;
  for (int i = 0, j = 0; i < r; i++) o.d[i] = i == a ? depth : idx.d[j++];
  return nbl_shp_set(c, 0, &o);
}

/* ------------------------------------------------------------------ gradient rules
 * (runtime/core/grad.h) */

/* Gather: com.microsoft GatherGrad (shape of X, indices, dY), the axis. */
static nbl_status g_gather(nbl_grad_ctx *gc) {
  if (!nbl_grad_wants(gc, 0)) return NBL_OK;
  nbl_id in[3] = {nbl_grad_shape(gc, nbl_grad_x(gc, 0)), nbl_grad_x(gc, 1), nbl_grad_dy(gc, 0)};
  nbl_id dx = nbl_grad_op(gc, "GatherGrad", "com.microsoft", 3, in);
  nbl_grad_attr_int(gc, "axis", nbl_attr_int(nbl_grad_node(gc), "axis", 0));
  nbl_grad_set_dx(gc, 0, dx);
  return nbl_grad_status(gc);
}

/* GatherElements and GatherND: com.microsoft GatherElementsGrad (dY, shape
 * of data, indices; axis) and GatherNDGrad (shape of data, indices, dY;
 * batch_dims, 0 before opset 12): dY added back where the indices point. */
static nbl_status g_gather_like(nbl_grad_ctx *gc) {
  const int nd = !strcmp(nbl_grad_node(gc)->op_type, "GatherND");
  nbl_grad_no_dx(gc, 1, "indices are integers");
  if (!nbl_grad_wants(gc, 0)) return nbl_grad_status(gc);
  nbl_id dy = nbl_grad_dy(gc, 0), shape = nbl_grad_shape(gc, nbl_grad_x(gc, 0)), idx = nbl_grad_x(gc, 1);
  nbl_id in[3] = {nd ? shape : dy, nd ? idx : shape, nd ? dy : idx};
  nbl_id dx = nbl_grad_op(gc, nd ? "GatherNDGrad" : "GatherElementsGrad", "com.microsoft", 3, in);
  if (nd) nbl_grad_attr_int(gc, "batch_dims", nbl_grad_opset(gc, "") >= 12 ? nbl_attr_int(nbl_grad_node(gc), "batch_dims", 0) : 0);
  else nbl_grad_attr_int(gc, "axis", nbl_attr_int(nbl_grad_node(gc), "axis", 0));
  nbl_grad_set_dx(gc, 0, dx);
  return nbl_grad_status(gc);
}

/* ScatterElements / ScatterND (reduction none or add) and Scatter
 * (ScatterElements without reduction; at opsets 9-10 build-training's
 * conversion to 13 renames it first): the updates' gradient
 * is dY gathered at their indices; the data's is dY, with the positions the
 * updates overwrote set to 0 (reduction none: ScatterElements / ScatterND of
 * zeros into dY), or dY itself (add). Other reductions are refused. */
static nbl_status g_scatter(nbl_grad_ctx *gc) {
  const nbl_node *n = nbl_grad_node(gc);
  const int nd = !strcmp(n->op_type, "ScatterND");
  const int old = !strcmp(n->op_type, "Scatter");
  const char *red = nbl_grad_opset(gc, "") >= 16 && !old ? nbl_attr_string(n, "reduction", "none") : "none";
  nbl_grad_no_dx(gc, 1, "indices are integers");
  if (strcmp(red, "none") && strcmp(red, "add"))
    return nbl_grad_fail(gc, NBL_ERR_UNSUPPORTED, "gradient of reduction '%s': no rule yet", red);
  nbl_id idx = nbl_grad_x(gc, 1), U = nbl_grad_x(gc, 2), dy = nbl_grad_dy(gc, 0);
  const int64_t axis = nbl_attr_int(n, "axis", 0);
  if (nbl_grad_wants(gc, 2)) {
    nbl_id g = nbl_grad_bin(gc, nd ? "GatherND" : "GatherElements", dy, idx);
    if (!nd) nbl_grad_attr_int(gc, "axis", axis);
    nbl_grad_set_dx(gc, 2, g);
  }
  if (nbl_grad_wants(gc, 0)) {
    if (!strcmp(red, "add")) {
      nbl_grad_set_dx(gc, 0, dy);
    } else {
      nbl_id in[3] = {dy, idx, nbl_grad_zeros_like(gc, U)};
      const char *op = old && nbl_grad_opset(gc, "") >= 11 ? "ScatterElements" : n->op_type;
      nbl_id g = nbl_grad_op(gc, op, "", 3, in);
      if (!nd) nbl_grad_attr_int(gc, "axis", axis);
      nbl_grad_set_dx(gc, 0, g);
    }
  }
  return nbl_grad_status(gc);
}

/* Compress: with an axis, the input's shape with that dim the number of true
 * conditions among its first dim (known when the condition is constant);
 * without an axis, 1-D over the flattened input. */
static nbl_status shape_compress(nbl_shape_ctx *c) {
  nbl_shp x, o;
  nbl_shp_in(c, 0, &x);
  const nbl_attr *aa = nbl_node_attr(c->node, "axis");
  int axis = aa && x.rank >= 0 ? nbl_norm_axis(aa->i, x.rank) : -1;
  if (aa && axis < 0) return nbl_shp_set_dt(c, 0, x.dt, x.rank);
  nbl_dim len = aa ? x.d[axis] : x.rank >= 0 ? nbl_dim_prod(x.d, x.rank) : nbl_dim_unk();
  nbl_dim kept = nbl_dim_unk();
  const nbl_tensor *cond = nbl_shp_in_const(c, 1);
  if (cond && cond->dtype == NBL_DT_BOOL && cond->rank == 1 && nbl_dim_known(len) &&
      nbl_shp_payload_ok(cond, cond->dims[0])) {
    int64_t n = cond->dims[0] < len.value ? cond->dims[0] : len.value, k = 0;
    for (int64_t i = 0; i < n; i++) k += nbl_tensor_get_i64(cond, i) != 0;
    kept = nbl_dim_val(k);
  }
  if (aa) {
    o = x;
    o.d[axis] = kept;
  } else {
    o.dt = x.dt;
    o.rank = 1;
    o.d[0] = kept;
  }
  return nbl_shp_set(c, 0, &o);
}

/* Unique: Y is 1-D (no axis) or the input's shape with the axis dim unknown;
 * indices and counts 1-D int64 of Y's length along the axis; inverse_indices
 * 1-D int64 with one entry per input element (or slice along the axis). */
static nbl_status shape_unique(nbl_shape_ctx *c) {
  nbl_shp x, o, inv;
  nbl_shp_in(c, 0, &x);
  const nbl_attr *aa = nbl_node_attr(c->node, "axis");
  int axis = aa && x.rank >= 0 ? nbl_norm_axis(aa->i, x.rank) : -1;
  nbl_shp_rank(&inv, NBL_DT_INT64, 1);
  nbl_status st;
  if (!aa) {
    st = nbl_shp_set_dt(c, 0, x.dt, 1);
    if (x.rank >= 0) inv.d[0] = nbl_dim_prod(x.d, x.rank);
  } else if (axis < 0) {
    st = nbl_shp_set_dt(c, 0, x.dt, x.rank);
  } else {
    o = x;
    o.d[axis] = nbl_dim_unk();
    st = nbl_shp_set(c, 0, &o);
    inv.d[0] = x.d[axis];
  }
  if (!st) st = nbl_shp_set_dt(c, 1, NBL_DT_INT64, 1);
  if (!st) st = nbl_shp_set(c, 2, &inv);
  if (!st) st = nbl_shp_set_dt(c, 3, NBL_DT_INT64, 1);
  return st;
}

/* ------------------------------------------------------------------ table */

/* Scatter (opset 9 and 10; deprecated in 11) is ScatterElements, its new name. */
static nbl_status scatter_up(nbl_adapt_ctx *c) { return nbl_adapt_rename(c, "ScatterElements"); }

static const nbl_op_adapter scatter_steps[] = {{.from = 9, .to = 11, .up = scatter_up}, {0}};

const nbl_op_def nbl_ops_shape_index[] = {
    NBL_OP("Gather", 1, .ref = k_gather, .shape = shape_gather, .stable_since = 1, .grad = g_gather),
    NBL_OP("GatherElements", 11, .ref = k_gather_elements, .shape = shape_gather_elements,
        .stable_since = 11, .grad = g_gather_like),
    NBL_OP("GatherND", 11, .ref = k_gather_nd, .shape = shape_gathernd, .stable_since = 11, .grad = g_gather_like),
    NBL_OP("Scatter", 9, .ref = k_scatter_elements, .shape = nbl_shape_same,
        .adapters = scatter_steps, .grad = g_scatter),
    NBL_OP("ScatterElements", 11, .ref = k_scatter_elements, .shape = nbl_shape_same,
        .stable_since = 11, .grad = g_scatter),
    NBL_OP("ScatterND", 11, .ref = k_scatter_nd, .shape = nbl_shape_same, .stable_since = 11, .grad = g_scatter),
    NBL_OP("NonZero", 9, .ref = k_nonzero, .shape = shape_nonzero, .stable_since = 9,
        .no_grad = NBL_NO_GRAD_INT),
    NBL_OP("OneHot", 9, .ref = k_onehot, .shape = shape_onehot, .stable_since = 9, .no_grad = "no rule yet"),
    NBL_OP("Compress", 9, .ref = k_compress, .shape = shape_compress, .stable_since = 9, .no_grad = "no rule yet"),
    NBL_OP("Trilu", 14, .ref = k_trilu, .shape = nbl_shape_same, .stable_since = 14, .no_grad = "no rule yet"),
    NBL_OP("Unique", 11, .ref = k_unique, .shape = shape_unique, .stable_since = 11, .no_grad = "no rule yet"),
    NBL_OP("ReverseSequence", 10, .ref = k_reverse_sequence, .shape = nbl_shape_same,
        .stable_since = 10, .no_grad = "no rule yet"),
};
const size_t nbl_ops_shape_index_count = sizeof nbl_ops_shape_index / sizeof nbl_ops_shape_index[0];
