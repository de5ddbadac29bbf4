/*
 * runtime/ops/reduce.c - op family 'reduce': Reduce*, ArgMax/ArgMin, Softmax,
 * LogSoftmax, Hardmax, CumSum, TopK, LpNormalization and
 * MeanVarianceNormalization (version 9, and the experimental version 1 of
 * opsets 1-8) (see kernel.h for the kernel contract; the loss
 * ops that build on log-softmax are the family 'loss', runtime/ops/loss.c).
 *
 * Reductions accumulate in double for floating-point inputs and in int64 for
 * integer inputs (exact sums, products, min and max). The reference path walks
 * every output's reduced elements with an odometer over the reduced axes; the
 * float32 fast path handles the common layout [outer, R, inner] (the reduced
 * axes consecutive) with contiguous inner loops.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/core/grad.h"
#include "runtime/core/adapt.h"
#include "runtime/core/shape.h"
#include "runtime/kernels/unary_f32.h"
#include "runtime/ops/reduce_util.h"


/* ------------------------------------------------------------------ Reduce* */

enum { R_SUM, R_MEAN, R_PROD, R_MAX, R_MIN, R_L1, R_L2, R_SUMSQ, R_LOGSUM, R_LOGSUMEXP };

typedef struct rjob {
  int kind;
  const nbl_rt_tensor *x;
  nbl_rt_tensor *y;
  int nk, nr;
  int64_t kdims[NBL_MAX_RANK], kst[NBL_MAX_RANK]; /* kept axes: sizes, input strides */
  int64_t rdims[NBL_MAX_RANK], rst[NBL_MAX_RANK]; /* reduced axes */
  int64_t rcount;
  int64_t outer, inner; /* fast path layout */
  int exact;            /* integer accumulation */
} rjob;

static double racc(int kind, double acc, double v) {
  switch (kind) {
  case R_PROD: return acc * v;
  case R_MAX: return (isnan(acc) || acc >= v) ? acc : v;
  case R_MIN: return (isnan(acc) || acc <= v) ? acc : v;
  case R_L1: return acc + fabs(v);
  case R_L2: case R_SUMSQ: return acc + v * v;
  default: return acc + v;
  }
}

static double rinit(int kind) {
  switch (kind) {
  case R_PROD: return 1;
  case R_MAX: case R_LOGSUMEXP: return -INFINITY;
  case R_MIN: return INFINITY;
  default: return 0;
  }
}

static double rfin(int kind, double acc, int64_t n) {
  switch (kind) {
  case R_MEAN: return acc / (double)n;
  case R_L2: return sqrt(acc);
  case R_LOGSUM: return log(acc);
  default: return acc;
  }
}

static int64_t iacc(int kind, int64_t acc, int64_t v) {
  uint64_t ua = (uint64_t)acc, uv = (uint64_t)v;
  switch (kind) {
  case R_PROD: return (int64_t)(ua * uv);
  case R_MAX: return acc >= v ? acc : v;
  case R_MIN: return acc <= v ? acc : v;
  case R_L1: return (int64_t)(ua + (v < 0 ? 0 - uv : uv));
  case R_SUMSQ: return (int64_t)(ua + uv * uv);
  default: return (int64_t)(ua + uv);
  }
}

/* Reduce output o by walking its reduced elements (reference path). */
static void reduce_one(const rjob *j, int64_t o) {
  int64_t base = 0, r = o;
  for (int d = j->nk - 1; d >= 0; d--) {
    base += (r % j->kdims[d]) * j->kst[d];
    r /= j->kdims[d];
  }
  int64_t cnt[NBL_MAX_RANK] = {0};
  int passes = j->kind == R_LOGSUMEXP ? 2 : 1;
  double m = -INFINITY, acc = rinit(j->kind);
  int64_t iac = j->kind == R_PROD ? 1 : j->kind == R_MAX ? INT64_MIN : j->kind == R_MIN ? INT64_MAX : 0;
  for (int pass = 0; pass < passes; pass++) {
    int64_t off = base;
    memset(cnt, 0, sizeof cnt);
    if (pass == 1) {
      m = acc;
      acc = 0;
    }
    for (int64_t t = 0; t < j->rcount; t++) {
      if (j->exact) {
        iac = iacc(j->kind, iac, nbl_rt_get_i64(j->x, off));
      } else {
        double v = nbl_rt_get_f64(j->x, off);
        if (j->kind == R_LOGSUMEXP) acc = pass == 0 ? racc(R_MAX, acc, v) : acc + exp(v - m);
        else acc = racc(j->kind, acc, v);
      }
      for (int d = j->nr - 1; d >= 0; d--) {
        cnt[d]++;
        off += j->rst[d];
        if (cnt[d] < j->rdims[d]) break;
        off -= j->rst[d] * j->rdims[d];
        cnt[d] = 0;
      }
    }
  }
  if (j->exact) {
    if (j->kind == R_MEAN) iac = j->rcount ? iac / j->rcount : 0;
    nbl_rt_set_i64(j->y, o, iac);
    return;
  }
  double res;
  if (j->kind == R_LOGSUMEXP) res = isinf(m) || isnan(m) ? m : m + log(acc);
  else res = rfin(j->kind, acc, j->rcount);
  nbl_rt_set_f64(j->y, o, res);
}

static void reduce_range(void *arg, int64_t b, int64_t e) {
  for (int64_t o = b; o < e; o++) reduce_one(arg, o);
}

/* float32, reduced axes consecutive: outputs [b,e) of the [outer, inner] grid. */
#define RBLK 256
static void reduce_f32_range(void *arg, int64_t b, int64_t e) {
  const rjob *j = arg;
  const float *x = j->x->data;
  float *y = j->y->data;
  int64_t R = j->rcount, inner = j->inner;
  int kind = j->kind;
  while (b < e) {
    int64_t o = b / inner, i0 = b % inner;
    int64_t len = inner - i0;
    if (len > e - b) len = e - b;
    if (len > RBLK) len = RBLK;
    double acc[RBLK];
    const float *xp = x + o * R * inner + i0;
    if (inner == 1) {
      double a = rinit(kind);
      switch (kind) {
      case R_SUM: case R_MEAN: for (int64_t r = 0; r < R; r++) a += xp[r]; break;
      case R_SUMSQ: case R_L2: for (int64_t r = 0; r < R; r++) a += (double)xp[r] * xp[r]; break;
      default: for (int64_t r = 0; r < R; r++) a = racc(kind, a, xp[r]); break;
      }
      acc[0] = a;
    } else {
      for (int64_t i = 0; i < len; i++) acc[i] = rinit(kind);
      for (int64_t r = 0; r < R; r++) {
        const float *row = xp + r * inner;
        switch (kind) {
        case R_SUM: case R_MEAN: for (int64_t i = 0; i < len; i++) acc[i] += row[i]; break;
        case R_SUMSQ: case R_L2:
          for (int64_t i = 0; i < len; i++) acc[i] += (double)row[i] * row[i];
          break;
        default: for (int64_t i = 0; i < len; i++) acc[i] = racc(kind, acc[i], row[i]); break;
        }
      }
    }
    for (int64_t i = 0; i < len; i++) y[b + i] = (float)rfin(kind, acc[i], R);
    b += len;
  }
}

/* Read the axes list (attribute or input 1) into axes[]; *n = count. */
static nbl_status get_axes(nbl_kctx *c, int from_input, int64_t *axes, int *n) {
  *n = 0;
  if (from_input) {
    const nbl_rt_tensor *a = c->n_in > 1 ? c->in[1] : NULL;
    if (!a) return NBL_OK;
    if (a->dtype != NBL_DT_INT64 || a->rank > 1)
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "axes '%s' must be a 1-D int64 tensor", in_name(c, 1));
    if (a->numel > NBL_MAX_RANK)
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "axes '%s' has %lld entries", in_name(c, 1),
                      (long long)a->numel);
    for (int64_t i = 0; i < a->numel; i++) axes[i] = ((const int64_t *)a->data)[i];
    *n = (int)a->numel;
    return NBL_OK;
  }
  int cnt = 0;
  const int64_t *v = nbl_attr_ints(c->node, "axes", &cnt);
  if (cnt > NBL_MAX_RANK) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "attribute 'axes' has %d entries", cnt);
  for (int i = 0; i < cnt; i++) axes[i] = v[i];
  *n = cnt;
  return NBL_OK;
}

/* Mark axes in red[] (normalized, no duplicates). */
static nbl_status mark_axes(nbl_kctx *c, int rank, const int64_t *axes, int n, int *red) {
  for (int d = 0; d < rank; d++) red[d] = 0;
  for (int i = 0; i < n; i++) {
    int a = nbl_norm_axis(axes[i], rank);
    if (a < 0)
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "axis %lld is out of range for rank %d",
                      (long long)axes[i], rank);
    if (red[a]) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "axis %lld is repeated", (long long)axes[i]);
    red[a] = 1;
  }
  return NBL_OK;
}

/* Fill the kept/reduced axis description of j for input x and mask red. */
static void rjob_layout(rjob *j, const nbl_rt_tensor *x, const int *red) {
  int64_t st[NBL_MAX_RANK];
  nbl_strides(x->rank, x->dims, st);
  j->nk = j->nr = 0;
  j->rcount = 1;
  for (int d = 0; d < x->rank; d++) {
    if (red[d]) {
      j->rdims[j->nr] = x->dims[d];
      j->rst[j->nr++] = st[d];
      j->rcount *= x->dims[d];
    } else {
      j->kdims[j->nk] = x->dims[d];
      j->kst[j->nk++] = st[d];
    }
  }
}

static nbl_status reduce(nbl_kctx *c, int kind) {
  unsigned types = T_NUM;
  if (kind == R_MAX || kind == R_MIN) types |= T_B;
  nbl_status st = check_x(c, types);
  if (st) return st;
  const nbl_rt_tensor *x = c->in[0];
  int axes_input = (kind == R_SUM && c->opset >= 13) || c->opset >= 18;
  if (axes_input && nbl_node_attr(c->node, "axes"))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "opset %d takes axes as an input, not an attribute",
                    c->opset);
  int64_t axes[NBL_MAX_RANK];
  int na;
  if ((st = get_axes(c, axes_input, axes, &na))) return st;
  int keep = (int)nbl_attr_int(c->node, "keepdims", 1);
  int noop = axes_input ? (int)nbl_attr_int(c->node, "noop_with_empty_axes", 0) : 0;
  int red[NBL_MAX_RANK];
  if (na == 0 && !noop) {
    for (int d = 0; d < x->rank; d++) red[d] = 1;
  } else if ((st = mark_axes(c, x->rank, axes, na, red))) {
    return st;
  }
  int orank = 0;
  int64_t od[NBL_MAX_RANK];
  for (int d = 0; d < x->rank; d++) {
    if (!red[d]) od[orank++] = x->dims[d];
    else if (keep) od[orank++] = 1;
  }
  rjob j = {.kind = kind, .x = x};
  rjob_layout(&j, x, red);
  j.exact = !is_float(x->dtype) && (kind == R_SUM || kind == R_MEAN || kind == R_PROD ||
                                    kind == R_MAX || kind == R_MIN || kind == R_L1 ||
                                    kind == R_SUMSQ);
  if (j.rcount == 0 && j.exact && (kind == R_MAX || kind == R_MIN))
    return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "%s of an empty integer set is not supported",
                    c->node->op_type);
  if ((st = nbl_kctx_alloc_out(c, 0, x->dtype, orank, od))) return st;
  j.y = nbl_kctx_out(c, 0);
  int64_t nout = j.y->numel;
  if (nout == 0) return NBL_OK;
  /* fast path: float32, reduced axes consecutive */
  int first = -1, last = -1, consec = 1;
  for (int d = 0; d < x->rank; d++)
    if (red[d]) {
      if (first < 0) first = d;
      else if (last != d - 1) consec = 0;
      last = d;
    }
  if (!c->reference && x->dtype == NBL_DT_FLOAT && consec && first >= 0 && kind != R_PROD &&
      kind != R_LOGSUM && kind != R_LOGSUMEXP) {
    int64_t mid;
    split3(x, first, last, &j.outer, &mid, &j.inner);
    if (j.inner > 0) {
      nbl_parallel_for(c, nout, j.inner == 1 ? 1 + 65536 / (j.rcount + 1) : 256, reduce_f32_range, &j);
      return NBL_OK;
    }
  }
  nbl_parallel_for(c, nout, 1 + 16384 / (j.rcount + 1), reduce_range, &j);
  return NBL_OK;
}

static nbl_status k_reducesum(nbl_kctx *c) { return reduce(c, R_SUM); }
static nbl_status k_reducemean(nbl_kctx *c) { return reduce(c, R_MEAN); }
static nbl_status k_reduceprod(nbl_kctx *c) { return reduce(c, R_PROD); }
static nbl_status k_reducemax(nbl_kctx *c) { return reduce(c, R_MAX); }
static nbl_status k_reducemin(nbl_kctx *c) { return reduce(c, R_MIN); }
static nbl_status k_reducel1(nbl_kctx *c) { return reduce(c, R_L1); }
static nbl_status k_reducel2(nbl_kctx *c) { return reduce(c, R_L2); }
static nbl_status k_reducesumsquare(nbl_kctx *c) { return reduce(c, R_SUMSQ); }
static nbl_status k_reducelogsum(nbl_kctx *c) { return reduce(c, R_LOGSUM); }
static nbl_status k_reducelogsumexp(nbl_kctx *c) { return reduce(c, R_LOGSUMEXP); }

/* ------------------------------------------------------------------ ArgMax / ArgMin */

static nbl_status argext(nbl_kctx *c, int is_max) {
  nbl_status st = check_x(c, T_NUM);
  if (st) return st;
  const nbl_rt_tensor *x = c->in[0];
  int64_t axis_attr = nbl_attr_int(c->node, "axis", 0);
  int axis = nbl_norm_axis(axis_attr, x->rank);
  if (axis < 0)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "axis %lld is out of range for rank %d",
                    (long long)axis_attr, x->rank);
  int keep = (int)nbl_attr_int(c->node, "keepdims", 1);
  int last = (int)nbl_attr_int(c->node, "select_last_index", 0);
  int64_t outer, R, inner;
  split3(x, axis, axis, &outer, &R, &inner);
  int orank = 0;
  int64_t od[NBL_MAX_RANK];
  for (int d = 0; d < x->rank; d++) {
    if (d != axis) od[orank++] = x->dims[d];
    else if (keep) od[orank++] = 1;
  }
  if (R == 0 && outer * inner > 0)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "cannot take %s over an empty axis", c->node->op_type);
  if ((st = nbl_kctx_alloc_out(c, 0, NBL_DT_INT64, orank, od))) return st;
  int64_t *y = nbl_kctx_out(c, 0)->data;
  int fl = is_float(x->dtype);
  for (int64_t o = 0; o < outer; o++)
    for (int64_t i = 0; i < inner; i++) {
      int64_t best = 0, base = o * R * inner + i;
      if (fl) {
        double bv = nbl_rt_get_f64(x, base);
        for (int64_t r = 1; r < R && !isnan(bv); r++) {
          double v = nbl_rt_get_f64(x, base + r * inner);
          int better = isnan(v) || (is_max ? (last ? v >= bv : v > bv) : (last ? v <= bv : v < bv));
          if (better) { bv = v; best = r; }
        }
      } else {
        int uns = (TM(x->dtype) & T_U) != 0;
        int64_t bv = nbl_rt_get_i64(x, base);
        for (int64_t r = 1; r < R; r++) {
          int64_t v = nbl_rt_get_i64(x, base + r * inner);
          int gt = uns ? (uint64_t)v > (uint64_t)bv : v > bv;
          int lt = uns ? (uint64_t)v < (uint64_t)bv : v < bv;
          int better = is_max ? (gt || (last && v == bv)) : (lt || (last && v == bv));
          if (better) { bv = v; best = r; }
        }
      }
      y[o * inner + i] = best;
    }
  return NBL_OK;
}

static nbl_status k_argmax(nbl_kctx *c) { return argext(c, 1); }
static nbl_status k_argmin(nbl_kctx *c) { return argext(c, 0); }

/* ------------------------------------------------------------------ Softmax family */

enum { S_SOFTMAX, S_LOGSOFTMAX, S_HARDMAX };

typedef struct sjob {
  int kind;
  const nbl_rt_tensor *x;
  nbl_rt_tensor *y;
  int64_t R, inner;
  int f32;
} sjob;

static void softmax_range(void *arg, int64_t b, int64_t e) {
  const sjob *j = arg;
  int64_t R = j->R, inner = j->inner;
  for (int64_t l = b; l < e; l++) {
    int64_t o = l / inner, i = l % inner;
    int64_t base = o * R * inner + i;
    if (j->f32 && inner == 1) {
      const float *x = (const float *)j->x->data + base;
      float *y = (float *)j->y->data + base;
      float m = -INFINITY;
      for (int64_t r = 0; r < R; r++) m = x[r] > m ? x[r] : m;
      double s = 0;
      if (j->kind == S_SOFTMAX) {
        for (int64_t r = 0; r < R; r++) {
          y[r] = expf(x[r] - m);
          s += y[r];
        }
        float inv = (float)(1.0 / s);
        for (int64_t r = 0; r < R; r++) y[r] *= inv;
      } else if (j->kind == S_LOGSOFTMAX) {
        for (int64_t r = 0; r < R; r++) s += expf(x[r] - m);
        float ls = (float)log(s);
        for (int64_t r = 0; r < R; r++) y[r] = x[r] - m - ls;
      } else {
        int64_t arg_m = 0;
        for (int64_t r = 0; r < R; r++) {
          if (x[r] > x[arg_m]) arg_m = r;
          y[r] = 0;
        }
        if (R) y[arg_m] = 1;
      }
      continue;
    }
    double m = -INFINITY;
    int64_t arg_m = 0;
    for (int64_t r = 0; r < R; r++) {
      double v = nbl_rt_get_f64(j->x, base + r * inner);
      if (r == 0 || v > m) {
        m = v;
        arg_m = r;
      }
    }
    if (j->kind == S_HARDMAX) {
      for (int64_t r = 0; r < R; r++) nbl_rt_set_f64(j->y, base + r * inner, r == arg_m);
      continue;
    }
    double s = 0;
    for (int64_t r = 0; r < R; r++) s += exp(nbl_rt_get_f64(j->x, base + r * inner) - m);
    double ls = log(s);
    for (int64_t r = 0; r < R; r++) {
      double v = nbl_rt_get_f64(j->x, base + r * inner) - m;
      nbl_rt_set_f64(j->y, base + r * inner, j->kind == S_SOFTMAX ? exp(v) / s : v - ls);
    }
  }
}

/* the fast path's rows: nbl_softmax_f32 on rows [b, e) of j->R floats */
static void softmax_rows_f32(void *arg, int64_t b, int64_t e) {
  const sjob *j = arg;
  nbl_softmax_f32((const float *)j->x->data + b * j->R, (float *)j->y->data + b * j->R, e - b, j->R,
                  j->kind == S_LOGSOFTMAX);
}

/* fast: the float32 rows of a last axis by nbl_softmax_f32 (the table's
 * .fast kernels); the rest, and the reference, by softmax_range. */
static nbl_status softmax(nbl_kctx *c, int kind, int fast) {
  nbl_status st = check_x(c, T_F);
  if (st) return st;
  const nbl_rt_tensor *x = c->in[0];
  int legacy = c->opset < 13;
  int64_t axis_attr = nbl_attr_int(c->node, "axis", legacy ? 1 : -1);
  int rank = x->rank;
  int axis = nbl_norm_axis(axis_attr, rank);
  if (rank == 0 && (axis_attr == 0 || axis_attr == -1)) axis = 0;
  else if (axis < 0)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "axis %lld is out of range for rank %d",
                    (long long)axis_attr, rank);
  int64_t outer, R, inner;
  split3(x, axis, legacy ? rank - 1 : axis, &outer, &R, &inner);
  if ((st = nbl_kctx_alloc_out(c, 0, x->dtype, x->rank, x->dims))) return st;
  sjob j = {.kind = kind, .x = x, .y = nbl_kctx_out(c, 0), .R = R, .inner = inner,
            .f32 = !c->reference && x->dtype == NBL_DT_FLOAT};
  if (x->numel == 0) return NBL_OK;
  if (fast && j.f32 && inner == 1 && kind != S_HARDMAX) {
    nbl_parallel_for(c, outer, 1 + 8192 / R, softmax_rows_f32, &j);
    return NBL_OK;
  }
  nbl_parallel_for(c, outer * inner, 1 + 8192 / (R + 1), softmax_range, &j);
  return NBL_OK;
}

static nbl_status k_softmax(nbl_kctx *c) { return softmax(c, S_SOFTMAX, 0); }
static nbl_status k_logsoftmax(nbl_kctx *c) { return softmax(c, S_LOGSOFTMAX, 0); }
static nbl_status k_hardmax(nbl_kctx *c) { return softmax(c, S_HARDMAX, 0); }
static nbl_status k_softmax_fast(nbl_kctx *c) { return softmax(c, S_SOFTMAX, 1); }
static nbl_status k_logsoftmax_fast(nbl_kctx *c) { return softmax(c, S_LOGSOFTMAX, 1); }

/* ------------------------------------------------------------------ CumSum */

static nbl_status k_cumsum(nbl_kctx *c) {
  nbl_status st = check_x(c, T_NUM);
  if (st) return st;
  const nbl_rt_tensor *x = c->in[0], *ax = c->n_in > 1 ? c->in[1] : NULL;
  if (!ax) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "required input 'axis' is missing");
  if ((ax->dtype != NBL_DT_INT32 && ax->dtype != NBL_DT_INT64) || ax->numel != 1)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "axis '%s' must be an int32 or int64 scalar", in_name(c, 1));
  int64_t a = nbl_rt_get_i64(ax, 0);
  int axis = nbl_norm_axis(a, x->rank);
  if (axis < 0)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "axis %lld is out of range for rank %d", (long long)a,
                    x->rank);
  int excl = (int)nbl_attr_int(c->node, "exclusive", 0);
  int rev = (int)nbl_attr_int(c->node, "reverse", 0);
  int64_t outer, R, inner;
  split3(x, axis, axis, &outer, &R, &inner);
  if ((st = nbl_kctx_alloc_out(c, 0, x->dtype, x->rank, x->dims))) return st;
  nbl_rt_tensor *y = nbl_kctx_out(c, 0);
  int fl = is_float(x->dtype);
  for (int64_t o = 0; o < outer; o++)
    for (int64_t i = 0; i < inner; i++) {
      double s = 0;
      int64_t is = 0;
      for (int64_t t = 0; t < R; t++) {
        int64_t r = rev ? R - 1 - t : t;
        int64_t idx = (o * R + r) * inner + i;
        if (fl) {
          double v = nbl_rt_get_f64(x, idx);
          if (!excl) s += v;
          nbl_rt_set_f64(y, idx, s);
          if (excl) s += v;
        } else {
          int64_t v = nbl_rt_get_i64(x, idx);
          if (!excl) is = (int64_t)((uint64_t)is + (uint64_t)v);
          nbl_rt_set_i64(y, idx, is);
          if (excl) is = (int64_t)((uint64_t)is + (uint64_t)v);
        }
      }
    }
  return NBL_OK;
}

/* ------------------------------------------------------------------ TopK */

typedef struct tk_item {
  double d;
  int64_t i; /* integer key (unsigned mapped to signed order) */
  int64_t idx;
} tk_item;

/* Largest first; equal keys by lower index. NaN counts as the largest. */
static int tk_cmp_fl(const void *pa, const void *pb) {
  const tk_item *a = pa, *b = pb;
  int an = isnan(a->d), bn = isnan(b->d);
  if (an != bn) return an ? -1 : 1;
  if (!an && a->d != b->d) return a->d > b->d ? -1 : 1;
  return a->idx < b->idx ? -1 : a->idx > b->idx;
}
static int tk_cmp_fs(const void *pa, const void *pb) {
  const tk_item *a = pa, *b = pb;
  int an = isnan(a->d), bn = isnan(b->d);
  if (an != bn) return an ? 1 : -1;
  if (!an && a->d != b->d) return a->d < b->d ? -1 : 1;
  return a->idx < b->idx ? -1 : a->idx > b->idx;
}
static int tk_cmp_il(const void *pa, const void *pb) {
  const tk_item *a = pa, *b = pb;
  if (a->i != b->i) return a->i > b->i ? -1 : 1;
  return a->idx < b->idx ? -1 : a->idx > b->idx;
}
static int tk_cmp_is(const void *pa, const void *pb) {
  const tk_item *a = pa, *b = pb;
  if (a->i != b->i) return a->i < b->i ? -1 : 1;
  return a->idx < b->idx ? -1 : a->idx > b->idx;
}

/* a[i] sifted down the heap a[0..n) whose root comes last in cmp's order. */
static void tk_sift(tk_item *a, int64_t n, int64_t i, int (*cmp)(const void *, const void *)) {
  for (;;) {
    int64_t l = 2 * i + 1, w = i;
    if (l < n && cmp(&a[l], &a[w]) > 0) w = l;
    if (l + 1 < n && cmp(&a[l + 1], &a[w]) > 0) w = l + 1;
    if (w == i) return;
    tk_item t = a[i];
    a[i] = a[w];
    a[w] = t;
    i = w;
  }
}

/* a[0..k) = the k first of a[0..n) in cmp's order (a total order: keys,
 * then indices), sorted: the same items as sorting all n, in O(n log k):
 * a heap of the k best so far, its root the last of them, which each later
 * item that comes before it replaces. Sorts all when k is not small. */
static void tk_select(tk_item *a, int64_t n, int64_t k, int (*cmp)(const void *, const void *)) {
  if (k * 4 >= n) {
    qsort(a, (size_t)n, sizeof *a, cmp);
    return;
  }
  for (int64_t i = k / 2 - 1; i >= 0; i--) tk_sift(a, k, i, cmp);
  for (int64_t r = k; r < n; r++)
    if (cmp(&a[r], &a[0]) < 0) {
      a[0] = a[r];
      tk_sift(a, k, 0, cmp);
    }
  qsort(a, (size_t)k, sizeof *a, cmp);
}

static nbl_status k_topk(nbl_kctx *c) {
  nbl_status st = check_x(c, T_NUM);
  if (st) return st;
  const nbl_rt_tensor *x = c->in[0];
  int64_t k;
  if (c->opset < 10) {
    if (!nbl_node_attr(c->node, "k"))
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "attribute 'k' is missing");
    k = nbl_attr_int(c->node, "k", 0);
  } else {
    const nbl_rt_tensor *kt = c->n_in > 1 ? c->in[1] : NULL;
    if (!kt || kt->dtype != NBL_DT_INT64 || kt->numel != 1)
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input 'K' must be a one-element int64 tensor");
    k = ((const int64_t *)kt->data)[0];
  }
  int64_t axis_attr = nbl_attr_int(c->node, "axis", -1);
  int axis = nbl_norm_axis(axis_attr, x->rank);
  if (axis < 0)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "axis %lld is out of range for rank %d",
                    (long long)axis_attr, x->rank);
  int largest = c->opset >= 11 ? (int)nbl_attr_int(c->node, "largest", 1) : 1;
  int64_t outer, R, inner;
  split3(x, axis, axis, &outer, &R, &inner);
  if (k < 0 || k > R)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "k = %lld is outside [0, %lld] (the size of axis %d)",
                    (long long)k, (long long)R, axis);
  int64_t od[NBL_MAX_RANK];
  memcpy(od, x->dims, sizeof(int64_t) * (size_t)x->rank);
  od[axis] = k;
  if ((st = nbl_kctx_alloc_out(c, 0, x->dtype, x->rank, od))) return st;
  if ((st = nbl_kctx_alloc_out(c, 1, NBL_DT_INT64, x->rank, od))) return st;
  nbl_rt_tensor *vals = nbl_kctx_out(c, 0);
  int64_t *idxs = nbl_kctx_out(c, 1)->data;
  if (k == 0 || outer * inner == 0) return NBL_OK;
  tk_item *items = malloc(sizeof(tk_item) * (size_t)R);
  if (!items) return nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory");
  int fl = is_float(x->dtype), uns = (TM(x->dtype) & T_U) != 0;
  size_t es = nbl_rt_elem_size(x->dtype);
  int (*cmp)(const void *, const void *) =
      fl ? (largest ? tk_cmp_fl : tk_cmp_fs) : (largest ? tk_cmp_il : tk_cmp_is);
  for (int64_t o = 0; o < outer; o++)
    for (int64_t i = 0; i < inner; i++) {
      for (int64_t r = 0; r < R; r++) {
        int64_t src = (o * R + r) * inner + i;
        items[r].idx = r;
        if (fl) items[r].d = nbl_rt_get_f64(x, src);
        else {
          int64_t v = nbl_rt_get_i64(x, src);
          items[r].i = uns ? (int64_t)((uint64_t)v ^ 0x8000000000000000ull) : v;
        }
      }
      tk_select(items, R, k, cmp);
      for (int64_t t = 0; t < k; t++) {
        int64_t dst = (o * k + t) * inner + i;
        int64_t src = (o * R + items[t].idx) * inner + i;
        memcpy((char *)vals->data + dst * (int64_t)es, (const char *)x->data + src * (int64_t)es, es);
        idxs[dst] = items[t].idx;
      }
    }
  free(items);
  return NBL_OK;
}

/* ------------------------------------------------------------------ LpNormalization */

static nbl_status k_lpnorm(nbl_kctx *c) {
  nbl_status st = check_x(c, T_F);
  if (st) return st;
  const nbl_rt_tensor *x = c->in[0];
  int64_t axis_attr = nbl_attr_int(c->node, "axis", -1);
  int axis = nbl_norm_axis(axis_attr, x->rank);
  if (axis < 0)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "axis %lld is out of range for rank %d",
                    (long long)axis_attr, x->rank);
  int64_t p = nbl_attr_int(c->node, "p", 2);
  if (p != 1 && p != 2)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "attribute 'p' must be 1 or 2, not %lld", (long long)p);
  int64_t outer, R, inner;
  split3(x, axis, axis, &outer, &R, &inner);
  if ((st = nbl_kctx_alloc_out(c, 0, x->dtype, x->rank, x->dims))) return st;
  nbl_rt_tensor *y = nbl_kctx_out(c, 0);
  for (int64_t o = 0; o < outer; o++)
    for (int64_t i = 0; i < inner; i++) {
      double s = 0;
      for (int64_t r = 0; r < R; r++) {
        double v = nbl_rt_get_f64(x, (o * R + r) * inner + i);
        s += p == 1 ? fabs(v) : v * v;
      }
      double nrm = p == 1 ? s : sqrt(s);
      for (int64_t r = 0; r < R; r++) {
        int64_t idx = (o * R + r) * inner + i;
        nbl_rt_set_f64(y, idx, nbl_rt_get_f64(x, idx) / nrm);
      }
    }
  return NBL_OK;
}

/* ------------------------------------------------------------------ MeanVarianceNormalization */

/* y = (x - E[x]) / (sqrt(E[x^2] - E[x]^2) + 1e-9), expectations over `axes`
 * (the ONNX function body's formula). */
static nbl_status k_mvn(nbl_kctx *c) {
  nbl_status st = check_x(c, T_F);
  if (st) return st;
  const nbl_rt_tensor *x = c->in[0];
  int64_t axes[NBL_MAX_RANK] = {0, 2, 3};
  int na = 3;
  if (nbl_node_attr(c->node, "axes") && (st = get_axes(c, 0, axes, &na))) return st;
  int red[NBL_MAX_RANK];
  if ((st = mark_axes(c, x->rank, axes, na, red))) return st;
  int64_t kd[NBL_MAX_RANK];
  for (int d = 0; d < x->rank; d++) kd[d] = red[d] ? 1 : x->dims[d];
  int64_t nout = nbl_shape_numel(x->rank, kd);
  if ((st = nbl_kctx_alloc_out(c, 0, x->dtype, x->rank, x->dims))) return st;
  nbl_rt_tensor *y = nbl_kctx_out(c, 0);
  if (x->numel == 0) return NBL_OK;
  double *sum = calloc((size_t)nout * 2, sizeof(double));
  if (!sum) return nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory");
  double *sq = sum + nout;
  for (int64_t i = 0; i < x->numel; i++) {
    int64_t o = nbl_broadcast_index(x->rank, x->dims, i, x->rank, kd);
    double v = nbl_rt_get_f64(x, i);
    sum[o] += v;
    sq[o] += v * v;
  }
  double n = (double)(x->numel / nout);
  for (int64_t o = 0; o < nout; o++) {
    double m = sum[o] / n;
    sum[o] = m;
    double var = sq[o] / n - m * m;
    sq[o] = sqrt(var < 0 ? 0 : var) + 1e-9;
  }
  for (int64_t i = 0; i < x->numel; i++) {
    int64_t o = nbl_broadcast_index(x->rank, x->dims, i, x->rank, kd);
    nbl_rt_set_f64(y, i, (nbl_rt_get_f64(x, i) - sum[o]) / sq[o]);
  }
  free(sum);
  return NBL_OK;
}

/* MeanVarianceNormalization-1, the experimental form of opsets 1-8 that
 * version 9 (axes) replaced; ONNX Runtime runs it there, and nibble computes
 * what ONNX Runtime's kernel does (checked against its version 1.31): x is
 * 4-D [N, C, H, W]; the mean is taken per channel over N, H and W, or over
 * everything with across_channels = 1 (default 0); with normalize_variance
 * (default 1) y = (x - mean) / sqrt(E[(x - mean)^2]) over the same elements,
 * with no epsilon (a constant channel gives NaN), else y = x - mean. */
static nbl_status k_mvn1(nbl_kctx *c) {
  nbl_status st = check_x(c, T_F);
  if (st) return st;
  const nbl_rt_tensor *x = c->in[0];
  if (x->rank != 4)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input '%s' must be 4-D (N, C, H, W), it has rank %d",
                    in_name(c, 0), x->rank);
  int across = nbl_attr_int(c->node, "across_channels", 0) != 0;
  int nv = nbl_attr_int(c->node, "normalize_variance", 1) != 0;
  if ((st = nbl_kctx_alloc_out(c, 0, x->dtype, x->rank, x->dims))) return st;
  nbl_rt_tensor *y = nbl_kctx_out(c, 0);
  if (x->numel == 0) return NBL_OK;
  int64_t N = x->dims[0], C = x->dims[1], S = x->dims[2] * x->dims[3];
  double *mean = calloc((size_t)C * 2, sizeof(double));
  if (!mean) return nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory");
  double *var = mean + C, cnt = (double)(N * S), m = 0, v = 0;
  for (int64_t i = 0; i < x->numel; i++) mean[(i / S) % C] += nbl_rt_get_f64(x, i);
  for (int64_t ch = 0; ch < C; ch++) { /* across channels: the mean of the channels' means */
    mean[ch] /= cnt;
    m += mean[ch] / (double)C;
  }
  for (int64_t ch = 0; across && ch < C; ch++) mean[ch] = m;
  for (int64_t i = 0; i < x->numel; i++) {
    double r = nbl_rt_get_f64(x, i) - mean[(i / S) % C];
    var[(i / S) % C] += r * r;
  }
  for (int64_t ch = 0; ch < C; ch++) {
    var[ch] /= cnt;
    v += var[ch] / (double)C;
  }
  for (int64_t ch = 0; across && ch < C; ch++) var[ch] = v;
  for (int64_t i = 0; i < x->numel; i++) {
    int64_t ch = (i / S) % C;
    double r = nbl_rt_get_f64(x, i) - mean[ch];
    nbl_rt_set_f64(y, i, nv ? r / sqrt(var[ch]) : r);
  }
  free(mean);
  return NBL_OK;
}

/* ------------------------------------------------------------------ shape rules */

/* MeanVarianceNormalization-1: X's type and shape, X 4-D. */
static nbl_status shape_mvn1(nbl_shape_ctx *c) {
  nbl_shp x;
  nbl_shp_in(c, 0, &x);
  if (x.rank >= 0 && x.rank != 4)
    return nbl_shp_err(c, "input must be 4-D (N, C, H, W), it has rank %d", x.rank);
  return nbl_shape_same(c);
}

/* Reduce*: axes from the attribute, or from input 1 when axes_input. */
static nbl_status shape_reduce_axes(nbl_shape_ctx *c, bool axes_input) {
  nbl_shp x, o;
  nbl_shp_in(c, 0, &x);
  const nbl_node *n = c->node;
  int64_t keep = nbl_attr_int(n, "keepdims", 1), noop = nbl_attr_int(n, "noop_with_empty_axes", 0);
  int64_t axes[NBL_SHP_MAXK];
  int na = 0;
  bool known = true;
  if (axes_input) {
    if (nbl_shp_has_in(c, 1)) {
      if (!nbl_shp_in_ints(c, 1, axes, &na)) known = false;
    }
  } else {
    const int64_t *a = nbl_attr_ints(n, "axes", &na);
    if (na > NBL_SHP_MAXK) return nbl_shp_set_dt(c, 0, x.dt, -1);
    if (na) memcpy(axes, a, sizeof(int64_t) * (size_t)na);
  }
  if (x.rank < 0) return nbl_shp_set_dt(c, 0, x.dt, -1);
  if (!known) return nbl_shp_set_dt(c, 0, x.dt, keep ? x.rank : -1);
  if (na == 0 && noop) return nbl_shp_set(c, 0, &x);
  bool red[NBL_SHP_MAXR] = {false};
  for (int i = 0; i < na; i++) {
    int a = nbl_norm_axis(axes[i], x.rank);
    if (a < 0)
      return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: node '%s' (%s): axis %lld out of range for rank %d",
                        nbl_model_label(c->model), n->name, n->op_type, (long long)axes[i], x.rank);
    red[a] = true;
  }
  o.dt = x.dt;
  o.rank = 0;
  for (int i = 0; i < x.rank; i++) {
    bool r = na == 0 || red[i];
    if (!r)
      o.d[o.rank++] = x.d[i];
    else if (keep)
      o.d[o.rank++] = nbl_dim_val(1);
  }
  return nbl_shp_set(c, 0, &o);
}

/* Reduce* take axes as an input from opset 18, ReduceSum from opset 13. */
static nbl_status shape_reduce(nbl_shape_ctx *c) { return shape_reduce_axes(c, c->opset >= 18); }
static nbl_status shape_reducesum(nbl_shape_ctx *c) { return shape_reduce_axes(c, c->opset >= 13); }

static nbl_status shape_argmax(nbl_shape_ctx *c) {
  nbl_shp x, o;
  nbl_shp_in(c, 0, &x);
  int64_t keep = nbl_attr_int(c->node, "keepdims", 1);
  if (x.rank < 0) return nbl_shp_set_dt(c, 0, NBL_DT_INT64, -1);
  int a = nbl_norm_axis(nbl_attr_int(c->node, "axis", 0), x.rank);
  if (a < 0) return nbl_shp_set_dt(c, 0, NBL_DT_INT64, keep ? x.rank : x.rank - 1);
  o = x;
  o.dt = NBL_DT_INT64;
  if (keep)
    o.d[a] = nbl_dim_val(1);
  else {
    for (int i = a; i + 1 < x.rank; i++) o.d[i] = x.d[i + 1];
    o.rank--;
  }
  return nbl_shp_set(c, 0, &o);
}

static nbl_status shape_topk(nbl_shape_ctx *c) {
  nbl_shp x, o;
  nbl_shp_in(c, 0, &x);
  int64_t k = -1;
  if (c->opset < 10)
    k = nbl_attr_int(c->node, "k", -1);
  else if (!nbl_shp_in_scalar_i64(c, 1, &k))
    k = -1;
  o = x;
  if (x.rank >= 0) {
    int a = nbl_norm_axis(nbl_attr_int(c->node, "axis", -1), x.rank);
    if (a >= 0) o.d[a] = k >= 0 ? nbl_dim_val(k) : nbl_dim_unk();
  }
  nbl_status st = nbl_shp_set(c, 0, &o);
  if (st) return st;
  o.dt = NBL_DT_INT64;
  return nbl_shp_set(c, 1, &o);
}

/* ------------------------------------------------------------------ gradient rules
 * (runtime/core/grad.h; softmax and loss backward ops are com.microsoft
 * training ops, runtime/ops/grad_reduce.c) */

/* The reduced axes of a Reduce* node, sorted and normalized; *all = 1 when
 * every axis is reduced, *noop = 1 when the node is an identity. */
static nbl_status grad_reduce_axes(nbl_grad_ctx *gc, int r, int64_t *axes, int *na, int *all,
                                   int *noop) {
  const nbl_node *n = nbl_grad_node(gc);
  int sum = !strcmp(n->op_type, "ReduceSum"), op = nbl_grad_opset(gc, "");
  int axes_input = (sum && op >= 13) || op >= 18;
  *noop = 0;
  *all = 0;
  if (axes_input) {
    nbl_id a = nbl_grad_x(gc, 1);
    *na = a == NBL_NONE ? 0 : nbl_grad_const_ints(gc, a, axes, NBL_MAX_RANK);
    if (*na < 0) return nbl_grad_fail(gc, NBL_ERR_UNSUPPORTED, "axes must be a constant");
  } else {
    const int64_t *v = nbl_attr_ints(n, "axes", na);
    if (*na > NBL_MAX_RANK) return nbl_grad_fail(gc, NBL_ERR_INVALID_MODEL, "too many axes");
    if (v) memcpy(axes, v, sizeof(int64_t) * (size_t)*na);
  }
  if (*na == 0) {
    if (axes_input && nbl_attr_int(n, "noop_with_empty_axes", 0)) {
      *noop = 1;
      return NBL_OK;
    }
    *all = 1;
    if (r < 0) return NBL_OK;
    for (int k = 0; k < r; k++) axes[k] = k;
    *na = r;
    return NBL_OK;
  }
  if (r < 0) return nbl_grad_fail(gc, NBL_ERR_UNSUPPORTED, "the rank of the input must be known");
  for (int i = 0; i < *na; i++) {
    if (axes[i] < 0) axes[i] += r;
    for (int j = i; j > 0 && axes[j] < axes[j - 1]; j--) {
      int64_t t = axes[j];
      axes[j] = axes[j - 1];
      axes[j - 1] = t;
    }
  }
  *all = *na == r;
  return NBL_OK;
}

/* g (shaped like the Reduce* output) broadcast back to the input's shape. */
static nbl_id grad_unreduce(nbl_grad_ctx *gc, nbl_id g, const int64_t *axes, int na, int all) {
  const nbl_node *n = nbl_grad_node(gc);
  if (!nbl_attr_int(n, "keepdims", 1) && !all) g = nbl_grad_unsqueeze(gc, g, na, axes);
  return nbl_grad_bin(gc, "Expand", g, nbl_grad_shape(gc, nbl_grad_x(gc, 0)));
}

/* ReduceSum, ReduceMean, ReduceSumSquare, ReduceL1, ReduceL2, ReduceLogSum,
 * ReduceLogSumExp, ReduceMax, ReduceMin: dY broadcast back, times the
 * derivative of the reduced function with respect to each element (for the
 * extremes: 1 / ties at the elements equal to it, 0 elsewhere). */
static nbl_status g_reduce(nbl_grad_ctx *gc) {
  if (!nbl_grad_wants(gc, 0)) return NBL_OK;
  nbl_id X = nbl_grad_x(gc, 0), Y = nbl_grad_y(gc, 0), dY = nbl_grad_dy(gc, 0);
  int64_t axes[NBL_MAX_RANK];
  int na = 0, all = 0, noop = 0;
  if (grad_reduce_axes(gc, nbl_grad_rank(gc, X), axes, &na, &all, &noop)) return nbl_grad_status(gc);
  const char *op = nbl_grad_node(gc)->op_type;
  nbl_dtype dt = nbl_grad_dtype(gc, X);
  int ext = !strcmp(op, "ReduceMax") || !strcmp(op, "ReduceMin");
  if (noop) { /* the identity, or its elementwise function */
    if (!strcmp(op, "ReduceSum") || !strcmp(op, "ReduceMean") || ext) {
      nbl_grad_set_dx(gc, 0, dY);
      return nbl_grad_status(gc);
    }
  }
  nbl_id back = NBL_NONE, yb = NBL_NONE;
  if (!strcmp(op, "ReduceMean"))
    dY = nbl_grad_bin(gc, "Div", dY, nbl_grad_count_ratio(gc, X, Y));
  if (!noop) back = grad_unreduce(gc, dY, axes, na, all);
  else back = dY;
  if (!strcmp(op, "ReduceSum") || !strcmp(op, "ReduceMean")) {
    nbl_grad_set_dx(gc, 0, back);
    return nbl_grad_status(gc);
  }
  /* functions of x and y: y broadcast back too */
  yb = noop ? Y : grad_unreduce(gc, Y, axes, na, all);
  nbl_id f;
  if (ext) { /* dY to the elements equal to the extreme, split evenly among ties (as PyTorch's amax) */
    f = nbl_grad_tie_share(gc, X, yb, na, axes);
  } else if (!strcmp(op, "ReduceSumSquare"))
    f = nbl_grad_bin(gc, "Mul", X, nbl_grad_const(gc, dt, 2.0));
  else if (!strcmp(op, "ReduceL1"))
    f = nbl_grad_un(gc, "Sign", X);
  else if (!strcmp(op, "ReduceL2"))
    f = nbl_grad_bin(gc, "Div", X, yb);
  else if (!strcmp(op, "ReduceLogSum"))
    f = nbl_grad_un(gc, "Reciprocal", nbl_grad_un(gc, "Exp", yb));
  else /* ReduceLogSumExp */
    f = nbl_grad_un(gc, "Exp", nbl_grad_bin(gc, "Sub", X, yb));
  nbl_grad_set_dx(gc, 0, nbl_grad_bin(gc, "Mul", back, f));
  return nbl_grad_status(gc);
}

/* op(v) over axes (all when na is 0) with keepdims = 1, axes in the form of
 * the model's opset (an input from 13 for ReduceSum, from 18 for the others). */
static nbl_id grad_reduce_keep(nbl_grad_ctx *gc, const char *op, nbl_id v, int na, const int64_t *axes) {
  nbl_id out;
  if (na && nbl_grad_opset(gc, "") >= (!strcmp(op, "ReduceSum") ? 13 : 18)) {
    nbl_id in[2] = {v, nbl_grad_const_i64(gc, na, axes)};
    out = nbl_grad_op(gc, op, "", 2, in);
  } else {
    out = nbl_grad_op(gc, op, "", 1, &v);
    if (na) nbl_grad_attr_ints(gc, "axes", na, axes);
  }
  nbl_grad_attr_int(gc, "keepdims", 1);
  return out;
}

/* ReduceProd: dY times the product of the other elements of the slice, as
 * PyTorch's prod backward: P / x with P the product of the slice's nonzero
 * elements, where the slice has no zero; at the zero of a slice with one
 * zero, P; 0 at every other element of a slice with zeros. As nodes: zc
 * counts the zeros of the slice, z = (x == 0), and the factor is P / (z ? 1 :
 * x) where zc == z, else 0. */
static nbl_status g_reduceprod(nbl_grad_ctx *gc) {
  if (!nbl_grad_wants(gc, 0)) return NBL_OK;
  nbl_id X = nbl_grad_x(gc, 0), dY = nbl_grad_dy(gc, 0);
  int64_t axes[NBL_MAX_RANK];
  int na = 0, all = 0, noop = 0;
  if (grad_reduce_axes(gc, nbl_grad_rank(gc, X), axes, &na, &all, &noop)) return nbl_grad_status(gc);
  if (noop) {
    nbl_grad_set_dx(gc, 0, dY);
    return nbl_grad_status(gc);
  }
  nbl_dtype dt = nbl_grad_dtype(gc, X);
  nbl_id zero = nbl_grad_const(gc, dt, 0.0);
  nbl_id z = nbl_grad_bin(gc, "Equal", X, zero);
  nbl_id zf = nbl_grad_un(gc, "Cast", z);
  nbl_grad_attr_int(gc, "to", dt);
  nbl_id w[3] = {z, nbl_grad_const(gc, dt, 1.0), X};
  nbl_id xs = nbl_grad_op(gc, "Where", "", 3, w);
  nbl_id P = grad_reduce_keep(gc, "ReduceProd", xs, all ? 0 : na, axes);
  nbl_id zc = grad_reduce_keep(gc, "ReduceSum", zf, all ? 0 : na, axes);
  nbl_id f[3] = {nbl_grad_bin(gc, "Equal", zc, zf), NBL_NONE, zero};
  f[1] = nbl_grad_bin(gc, "Div", P, xs);
  nbl_id fac = nbl_grad_op(gc, "Where", "", 3, f);
  if (!nbl_attr_int(nbl_grad_node(gc), "keepdims", 1) && !all) dY = nbl_grad_unsqueeze(gc, dY, na, axes);
  nbl_grad_set_dx(gc, 0, nbl_grad_bin(gc, "Mul", dY, fac));
  return nbl_grad_status(gc);
}

/* LpNormalization (y = x / n, n the p-norm along the axis): dX = (dY - s *
 * sum_axis(dY * y)) / n with s = y (p = 2) or sign(x) (p = 1). */
static nbl_status g_lpnorm(nbl_grad_ctx *gc) {
  if (!nbl_grad_wants(gc, 0)) return NBL_OK;
  const nbl_node *n = nbl_grad_node(gc);
  nbl_id X = nbl_grad_x(gc, 0), Y = nbl_grad_y(gc, 0), dY = nbl_grad_dy(gc, 0);
  int64_t axis = nbl_attr_int(n, "axis", -1), p = nbl_attr_int(n, "p", 2);
  if (p != 1 && p != 2) return nbl_grad_fail(gc, NBL_ERR_INVALID_MODEL, "attribute 'p' must be 1 or 2");
  nbl_id nrm = grad_reduce_keep(gc, p == 2 ? "ReduceL2" : "ReduceL1", X, 1, &axis);
  nbl_id t = grad_reduce_keep(gc, "ReduceSum", nbl_grad_bin(gc, "Mul", dY, Y), 1, &axis);
  nbl_id s = p == 2 ? Y : nbl_grad_un(gc, "Sign", X);
  nbl_id d = nbl_grad_bin(gc, "Sub", dY, nbl_grad_bin(gc, "Mul", s, t));
  nbl_grad_set_dx(gc, 0, nbl_grad_bin(gc, "Div", d, nrm));
  return nbl_grad_status(gc);
}

/* TopK: the values' gradient goes back where the indices (output 1) point,
 * com.microsoft GatherElementsGrad along the axis (PyTorch's topk backward). */
static nbl_status g_topk(nbl_grad_ctx *gc) {
  nbl_grad_no_dx(gc, 1, "k is an integer");
  if (!nbl_grad_wants(gc, 0)) return nbl_grad_status(gc);
  nbl_id in[3] = {nbl_grad_dy(gc, 0), nbl_grad_shape(gc, nbl_grad_x(gc, 0)), nbl_grad_y_need(gc, 1)};
  nbl_id dx = nbl_grad_op(gc, "GatherElementsGrad", "com.microsoft", 3, in);
  nbl_grad_attr_int(gc, "axis", nbl_attr_int(nbl_grad_node(gc), "axis", -1));
  nbl_grad_set_dx(gc, 0, dx);
  return nbl_grad_status(gc);
}

/* Softmax / LogSoftmax: com.microsoft SoftmaxGrad_13 / LogSoftmaxGrad_13
 * (opset >= 13, one axis) or SoftmaxGrad / LogSoftmaxGrad (2-D coercion),
 * on the output. */
static nbl_status softmax_grad(nbl_grad_ctx *gc, const char *op) {
  if (!nbl_grad_wants(gc, 0)) return NBL_OK;
  int v13 = nbl_grad_opset(gc, "") >= 13;
  char name[40];
  snprintf(name, sizeof name, "%s%s", op, v13 ? "_13" : "");
  nbl_id in[2] = {nbl_grad_dy(gc, 0), nbl_grad_y(gc, 0)};
  nbl_id dx = nbl_grad_op(gc, name, "com.microsoft", 2, in);
  nbl_grad_attr_int(gc, "axis", nbl_attr_int(nbl_grad_node(gc), "axis", v13 ? -1 : 1));
  nbl_grad_set_dx(gc, 0, dx);
  return nbl_grad_status(gc);
}
static nbl_status g_softmax(nbl_grad_ctx *gc) { return softmax_grad(gc, "SoftmaxGrad"); }
static nbl_status g_logsoftmax(nbl_grad_ctx *gc) { return softmax_grad(gc, "LogSoftmaxGrad"); }

/* CumSum: the gradient is the cumulative sum in the other direction. */
static nbl_status g_cumsum(nbl_grad_ctx *gc) {
  if (!nbl_grad_wants(gc, 0)) return NBL_OK;
  nbl_id in[2] = {nbl_grad_dy(gc, 0), nbl_grad_x(gc, 1)};
  nbl_id dx = nbl_grad_op(gc, "CumSum", "", 2, in);
  const nbl_node *n = nbl_grad_node(gc);
  nbl_grad_attr_int(gc, "exclusive", nbl_attr_int(n, "exclusive", 0));
  nbl_grad_attr_int(gc, "reverse", !nbl_attr_int(n, "reverse", 0));
  nbl_grad_set_dx(gc, 0, dx);
  return nbl_grad_status(gc);
}

/* ------------------------------------------------------------------ table */

/* ------------------------------------------------------------------ opset adapters */

/* Reduce*: axes back to an attribute; an empty constant axes means all axes,
 * which the old form says by leaving the attribute out. noop_with_empty_axes
 * has no old form. */
static nbl_status reduce_axes_down(nbl_adapt_ctx *c) {
  if (nbl_attr_int(nbl_adapt_node(c), "noop_with_empty_axes", 0))
    return nbl_adapt_refuse(c, "noop_with_empty_axes=1 has no form before opset %d", c->step->to);
  const nbl_tensor *t = nbl_adapt_const_input(c, 1);
  nbl_adapt_drop_attr(c, "noop_with_empty_axes");
  if (t && nbl_tensor_numel(t) == 0) return nbl_adapt_set_input(c, 1, NBL_NONE);
  return nbl_adapt_inputs_to_attrs(c);
}

#define REDUCE_AXES(to_)                                                                    \
  {{.from = 1, .to = (to_), .up = nbl_adapt_attrs_to_inputs, .down = reduce_axes_down,       \
    .attr = "axes", .input = 1, .attr_type = NBL_ATTR_INTS},                                 \
   {0}}
/* ReduceSum takes its axes as an input from opset 13, the other reductions from 18 */
static const nbl_op_adapter reduce_axes13[] = REDUCE_AXES(13), reduce_axes18[] = REDUCE_AXES(18);

/* Softmax, LogSoftmax, Hardmax before opset 13 coerce the input to 2-D at
 * `axis` (default 1): [d0*..*d(axis-1), d(axis)*..*d(n-1)], and normalize
 * each row; from 13 they normalize along the one axis (default -1). The same
 * when axis is the last one; otherwise Flatten(axis) -> op(axis 1) ->
 * Reshape to Shape(x) (allowzero when the target has it, for zero dims). */
static nbl_status softmax_up(nbl_adapt_ctx *c) {
  const nbl_node *n = nbl_adapt_node(c);
  if (n->n_inputs < 1 || n->inputs[0] == NBL_NONE || n->n_outputs < 1 || n->outputs[0] == NBL_NONE)
    return nbl_adapt_refuse(c, "needs its input and output");
  nbl_id x = n->inputs[0], y = n->outputs[0];
  int64_t axis = nbl_attr_int(n, "axis", 1);
  int rank = nbl_adapt_rank(c, x);
  if (rank >= 0 && (axis < -rank || axis >= (rank ? rank : 1)))
    return nbl_adapt_refuse(c, "axis %lld is out of range for rank %d", (long long)axis, rank);
  if (axis == -1 || (rank >= 0 && (axis < 0 ? axis + rank : axis) >= rank - 1)) {
    nbl_node_set_attr_int(c->graph, c->node, "axis", axis); /* explicit: the default changed */
    return NBL_OK;
  }
  nbl_id shape = nbl_adapt_add_node(c, "Shape", "shape", 1, &x, NBL_NONE);
  nbl_id flat = nbl_adapt_add_node(c, "Flatten", "2d_in", 1, &x, NBL_NONE);
  nbl_id y2 = shape == NBL_NONE || flat == NBL_NONE ? NBL_NONE : nbl_adapt_detach_output(c, 0, "2d");
  nbl_id rin[2] = {y2, shape};
  if (y2 == NBL_NONE || nbl_adapt_add_node(c, "Reshape", "nd", 2, rin, y) == NBL_NONE)
    return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  nbl_node_set_attr_int(c->graph, c->graph->values[flat].producer, "axis", axis);
  if (c->target >= 14) nbl_node_set_attr_int(c->graph, c->graph->values[y].producer, "allowzero", 1);
  nbl_node_set_input(c->graph, c->node, 0, flat);
  nbl_node_set_attr_int(c->graph, c->node, "axis", 1);
  return NBL_OK;
}

/* Back: exact only when the axis is the last one (both forms agree there). */
static nbl_status softmax_down(nbl_adapt_ctx *c) {
  const nbl_node *n = nbl_adapt_node(c);
  int64_t axis = nbl_attr_int(n, "axis", -1);
  int rank = n->n_inputs ? nbl_adapt_rank(c, n->inputs[0]) : -1;
  if (axis != -1 && !(rank >= 0 && (axis < 0 ? axis + rank : axis) == rank - 1))
    return nbl_adapt_refuse(c, "axis %lld is not known to be the last one", (long long)axis);
  if (axis < 0 && c->target < 11) { /* negative axes came in opset 11 */
    if (rank < 0) return nbl_adapt_refuse(c, "axis -1 needs the rank before opset 11");
    axis += rank;
  }
  nbl_node_set_attr_int(c->graph, c->node, "axis", axis);
  return NBL_OK;
}

static const nbl_op_adapter softmax_steps[] = {
    {.from = 1, .to = 13, .up = softmax_up, .down = softmax_down},
    {0},
};

/* TopK: k is an attribute before opset 10, input 1 from 10; largest and
 * sorted (opset 11, default 1) have no older form. */
static nbl_status topk_down(nbl_adapt_ctx *c) {
  const nbl_node *n = nbl_adapt_node(c);
  if (!nbl_attr_int(n, "largest", 1) || !nbl_attr_int(n, "sorted", 1) || nbl_attr_int(n, "axis", -1) < -1)
    return nbl_adapt_refuse(c, "largest=0, sorted=0 or a negative axis have no form before opset 11");
  nbl_adapt_drop_attr(c, "largest");
  nbl_adapt_drop_attr(c, "sorted");
  return nbl_adapt_inputs_to_attrs(c);
}

static const nbl_op_adapter topk_steps[] = {
    {.from = 1, .to = 10, .up = nbl_adapt_attrs_to_inputs, .down = topk_down, .attr = "k",
     .input = 1, .attr_type = NBL_ATTR_INT},
    {0},
};

/* MeanVarianceNormalization 1 -> 9: across_channels and normalize_variance
 * gave way to axes (default [0, 2, 3]), and version 9 (ONNX's function,
 * nibble's kernel) adds 1e-9 to the standard deviation where version 1 adds
 * nothing, so the node becomes version 1's formula in standard ops, with
 * axes [0, 2, 3] ([0, 1, 2, 3] across channels):
 *   m = ReduceMean(x, axes), d = Sub(x, m),
 *   y = Div(d, Sqrt(ReduceMean(Mul(d, d), axes)))   (normalize_variance = 1)
 *   y = d                                           (normalize_variance = 0)
 * No way back: version 9 has no form without the epsilon. */
static nbl_status mvn_up9(nbl_adapt_ctx *c) {
  const nbl_node *n = nbl_adapt_node(c);
  if (n->n_inputs < 1 || n->inputs[0] == NBL_NONE) return nbl_adapt_refuse(c, "needs its input");
  nbl_id x = n->inputs[0];
  int rank = nbl_adapt_rank(c, x);
  if (rank >= 0 && rank != 4) return nbl_adapt_refuse(c, "input is %d-D, not 4-D", rank);
  int across = nbl_attr_int(n, "across_channels", 0) != 0;
  int nv = nbl_attr_int(n, "normalize_variance", 1) != 0;
  const int64_t axes[2][4] = {{0, 2, 3}, {0, 1, 2, 3}};
  nbl_id m = nbl_adapt_add_node(c, "ReduceMean", "mean", 1, &x, NBL_NONE);
  if (m == NBL_NONE) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  nbl_node_set_attr_ints(c->graph, c->graph->values[m].producer, "axes", 3 + across, axes[across]);
  nbl_id sub[2] = {x, m};
  if (!nv) return nbl_adapt_replace(c, "Sub", 2, sub);
  nbl_id d = nbl_adapt_add_node(c, "Sub", "centered", 2, sub, NBL_NONE);
  nbl_id sq[2] = {d, d};
  nbl_id d2 = d == NBL_NONE ? NBL_NONE : nbl_adapt_add_node(c, "Mul", "squared", 2, sq, NBL_NONE);
  nbl_id var = d2 == NBL_NONE ? NBL_NONE
                              : nbl_adapt_add_node(c, "ReduceMean", "var", 1, &d2, NBL_NONE);
  if (var == NBL_NONE) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  nbl_node_set_attr_ints(c->graph, c->graph->values[var].producer, "axes", 3 + across, axes[across]);
  nbl_id sd = nbl_adapt_add_node(c, "Sqrt", "std", 1, &var, NBL_NONE);
  if (sd == NBL_NONE) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  nbl_id div[2] = {d, sd};
  return nbl_adapt_replace(c, "Div", 2, div);
}

static const nbl_op_adapter mvn_steps[] = {{.from = 1, .to = 9, .up = mvn_up9}, {0}};

const nbl_op_def nbl_ops_reduce[] = {
    NBL_OP("ReduceSum", 1, .ref = k_reducesum, .shape = shape_reducesum, .stable_since = 13,
        .adapters = reduce_axes13, .grad = g_reduce),
    NBL_OP("ReduceMean", 1, .ref = k_reducemean, .shape = shape_reduce, .stable_since = 18,
        .adapters = reduce_axes18, .grad = g_reduce),
    NBL_OP("ReduceProd", 1, .ref = k_reduceprod, .shape = shape_reduce, .stable_since = 18,
        .adapters = reduce_axes18, .grad = g_reduceprod),
    NBL_OP("ReduceMax", 1, .ref = k_reducemax, .shape = shape_reduce, .stable_since = 18,
        .adapters = reduce_axes18, .grad = g_reduce),
    NBL_OP("ReduceMin", 1, .ref = k_reducemin, .shape = shape_reduce, .stable_since = 18,
        .adapters = reduce_axes18, .grad = g_reduce),
    NBL_OP("ReduceL1", 1, .ref = k_reducel1, .shape = shape_reduce, .stable_since = 18,
        .adapters = reduce_axes18, .grad = g_reduce),
    NBL_OP("ReduceL2", 1, .ref = k_reducel2, .shape = shape_reduce, .stable_since = 18,
        .adapters = reduce_axes18, .grad = g_reduce),
    NBL_OP("ReduceSumSquare", 1, .ref = k_reducesumsquare, .shape = shape_reduce,
        .stable_since = 18, .adapters = reduce_axes18, .grad = g_reduce),
    NBL_OP("ReduceLogSum", 1, .ref = k_reducelogsum, .shape = shape_reduce, .stable_since = 18,
        .adapters = reduce_axes18, .grad = g_reduce),
    NBL_OP("ReduceLogSumExp", 1, .ref = k_reducelogsumexp, .shape = shape_reduce,
        .stable_since = 18, .adapters = reduce_axes18, .grad = g_reduce),
    NBL_OP("ArgMax", 1, .ref = k_argmax, .shape = shape_argmax, .stable_since = 1,
        .no_grad = NBL_NO_GRAD_INT),
    NBL_OP("ArgMin", 1, .ref = k_argmin, .shape = shape_argmax, .stable_since = 1,
        .no_grad = NBL_NO_GRAD_INT),
    NBL_OP("Softmax", 1, .ref = k_softmax, .fast = k_softmax_fast, .shape = nbl_shape_same, .stable_since = 13,
        .adapters = softmax_steps, .grad = g_softmax),
    NBL_OP("LogSoftmax", 1, .ref = k_logsoftmax, .fast = k_logsoftmax_fast, .shape = nbl_shape_same, .stable_since = 13,
        .adapters = softmax_steps, .grad = g_logsoftmax),
    NBL_OP("Hardmax", 1, .ref = k_hardmax, .shape = nbl_shape_same, .stable_since = 13,
        .adapters = softmax_steps, .grad = nbl_grad_zero),
    NBL_OP("CumSum", 11, .ref = k_cumsum, .shape = nbl_shape_same, .stable_since = 11, .grad = g_cumsum),
    NBL_OP("TopK", 1, .ref = k_topk, .shape = shape_topk, .stable_since = 10,
        .adapters = topk_steps, .grad = g_topk),
    NBL_OP("LpNormalization", 1, .ref = k_lpnorm, .shape = nbl_shape_same, .stable_since = 1, .grad = g_lpnorm),
    /* experimental at opsets 1-8 (ONNX Runtime runs it there): across_channels,
     * normalize_variance, no epsilon */
    NBL_OP_DEF("", "MeanVarianceNormalization", 1, 8, .ref = k_mvn1, .shape = shape_mvn1,
        .no_grad = NBL_NO_GRAD_REMOVED),
    NBL_OP("MeanVarianceNormalization", 9, .ref = k_mvn, .shape = nbl_shape_same,
        .stable_since = 9, .adapters = mvn_steps, .no_grad = "no rule yet"),
};
const size_t nbl_ops_reduce_count = sizeof nbl_ops_reduce / sizeof nbl_ops_reduce[0];
