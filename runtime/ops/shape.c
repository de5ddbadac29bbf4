/*
 * runtime/ops/shape.c - op family 'shape': ops that change a tensor's shape
 * and keep its elements in order.
 *
 * Reshape, Flatten, Squeeze, Unsqueeze, Concat, Split; the strided copies
 * (Transpose, Slice, Expand, Tile, DepthToSpace, SpaceToDepth) are in
 * shape_strided.c, the indexing ops in shape_index.c, Pad / Resize /
 * Upsample in shape_resize.c.
 *
 * These ops move elements without looking at them, so they work on element
 * size: contiguous runs are memcpy'd. Every dtype with a whole-byte element
 * size works the same way. STRING tensors hold char* per element: kernels
 * copy the pointers, then dup_strings() replaces each by its own copy so the
 * output owns its strings. 4-bit types (INT4/UINT4) are supported where the
 * op is a pure reshape of the packed bytes (Reshape, Flatten, Squeeze,
 * Unsqueeze); elsewhere they are a clear NBL_ERR_UNSUPPORTED.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/core/grad.h"
#include "runtime/core/adapt.h"
#include "runtime/core/shape.h"
#include "runtime/ops/movement.h"
#include "runtime/ops/shape.h"

/* ------------------------------------------------------------------ Reshape */

static nbl_status k_reshape(nbl_kctx *c) {
  const nbl_rt_tensor *x;
  nbl_status st = need_in(c, 0, "data", &x);
  if (st) return st;
  int64_t shp[NBL_MAX_RANK + 1];
  int n = 0;
  if (c->opset < 5) {
    st = attr_ints(c, "shape", shp, NBL_MAX_RANK, &n);
    if (st) return st;
    if (n < 0) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "attribute 'shape' is missing");
  } else {
    const nbl_rt_tensor *s;
    if ((st = need_in(c, 1, "shape", &s))) return st;
    if ((st = read_ints(c, s, "shape", shp, NBL_MAX_RANK, &n))) return st;
  }
  int allowzero = c->opset >= 14 ? (int)nbl_attr_int(c->node, "allowzero", 0) : 0;
  int neg = -1;
  int64_t known = 1;
  for (int i = 0; i < n; i++) {
    if (shp[i] == -1) {
      if (neg >= 0) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "shape has more than one -1");
      neg = i;
      continue;
    }
    if (shp[i] < -1) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "shape[%d] = %lld is invalid", i, (long long)shp[i]);
    if (shp[i] == 0 && !allowzero) {
      if (i >= x->rank)
        return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "shape[%d] = 0 copies a dimension the input (rank %d) lacks", i, x->rank);
      shp[i] = x->dims[i];
    }
    if (shp[i] != 0 && known > INT64_MAX / shp[i])
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "shape has more elements than fit in 64 bits");
    known *= shp[i];
  }
  if (neg >= 0) {
    if (known == 0) {
      if (x->numel != 0)
        return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "cannot infer the -1 dimension: other dims have product 0");
      shp[neg] = 0;
    } else {
      if (x->numel % known)
        return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "cannot reshape %lld elements: not divisible by %lld",
                        (long long)x->numel, (long long)known);
      shp[neg] = x->numel / known;
    }
  } else if (known != x->numel) {
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "cannot reshape %lld elements into a shape of %lld",
                    (long long)x->numel, (long long)known);
  }
  return out_same_bytes(c, x, n, shp);
}

/* ------------------------------------------------------------------ Flatten */

static nbl_status k_flatten(nbl_kctx *c) {
  const nbl_rt_tensor *x;
  nbl_status st = need_in(c, 0, "input", &x);
  if (st) return st;
  int64_t axis = nbl_attr_int(c->node, "axis", 1);
  if (axis < 0) axis += x->rank;
  if (axis < 0 || axis > x->rank || (c->opset < 11 && nbl_attr_int(c->node, "axis", 1) < 0))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "axis %lld out of range for rank %d",
                    (long long)nbl_attr_int(c->node, "axis", 1), x->rank);
  int64_t d[2] = {1, 1};
  for (int i = 0; i < x->rank; i++) d[i < axis ? 0 : 1] *= x->dims[i];
  return out_same_bytes(c, x, 2, d);
}

/* ------------------------------------------------------------------ Squeeze / Unsqueeze */

static nbl_status get_axes_attr_or_input(nbl_kctx *c, int input_idx, int since_input,
                                         int64_t *axes, int max, int *n) {
  if (c->opset < since_input) return attr_ints(c, "axes", axes, max, n);
  const nbl_rt_tensor *a = opt_in(c, input_idx);
  if (!a) {
    *n = -1;
    return NBL_OK;
  }
  return read_ints(c, a, "axes", axes, max, n);
}

static nbl_status k_squeeze(nbl_kctx *c) {
  const nbl_rt_tensor *x;
  nbl_status st = need_in(c, 0, "data", &x);
  if (st) return st;
  int64_t axes[NBL_MAX_RANK];
  int n;
  if ((st = get_axes_attr_or_input(c, 1, 13, axes, NBL_MAX_RANK, &n))) return st;
  int drop[NBL_MAX_RANK] = {0};
  if (n < 0) {
    for (int i = 0; i < x->rank; i++) drop[i] = x->dims[i] == 1;
  } else {
    for (int i = 0; i < n; i++) {
      int a = nbl_norm_axis(axes[i], x->rank);
      if (a < 0) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "axis %lld out of range for rank %d", (long long)axes[i], x->rank);
      if (x->dims[a] != 1)
        return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "cannot squeeze axis %d of size %lld", a, (long long)x->dims[a]);
      drop[a] = 1;
    }
  }
  int64_t d[NBL_MAX_RANK];
  int r = 0;
  for (int i = 0; i < x->rank; i++)
    if (!drop[i]) d[r++] = x->dims[i];
  return out_same_bytes(c, x, r, d);
}

static nbl_status k_unsqueeze(nbl_kctx *c) {
  const nbl_rt_tensor *x;
  nbl_status st = need_in(c, 0, "data", &x);
  if (st) return st;
  int64_t axes[NBL_MAX_RANK];
  int n;
  if ((st = get_axes_attr_or_input(c, 1, 13, axes, NBL_MAX_RANK, &n))) return st;
  if (n < 0) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "axes are required");
  int r = x->rank + n;
  if (r > NBL_MAX_RANK) return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "output rank %d exceeds %d", r, NBL_MAX_RANK);
  int ins[NBL_MAX_RANK] = {0};
  for (int i = 0; i < n; i++) {
    int a = nbl_norm_axis(axes[i], r);
    if (a < 0) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "axis %lld out of range for output rank %d", (long long)axes[i], r);
    if (ins[a]) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "axis %d given twice", a);
    ins[a] = 1;
  }
  int64_t d[NBL_MAX_RANK];
  for (int i = 0, k = 0; i < r; i++) d[i] = ins[i] ? 1 : x->dims[k++];
  return out_same_bytes(c, x, r, d);
}

/* ------------------------------------------------------------------ Concat */

nbl_status nbl_concat_out(nbl_kctx *c, int n_in, const nbl_rt_tensor *const *in, int64_t axis_raw) {
  if (n_in < 1 || !in[0]) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "needs at least one input");
  const nbl_rt_tensor *x0 = in[0];
  int r = x0->rank;
  int axis = nbl_norm_axis(axis_raw, r);
  if (axis < 0) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "axis %lld out of range for rank %d", (long long)axis_raw, r);
  size_t es = esize(c, x0, "inputs");
  if (!es) return NBL_ERR_UNSUPPORTED;
  int64_t od[NBL_MAX_RANK];
  for (int i = 0; i < r; i++) od[i] = x0->dims[i];
  od[axis] = 0;
  for (int k = 0; k < n_in; k++) {
    const nbl_rt_tensor *x = in[k];
    if (!x) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input %d is missing", k);
    if (x->dtype != x0->dtype || x->rank != r)
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input %d has type %s rank %d, input 0 has %s rank %d", k,
                      nbl_dtype_name(x->dtype), x->rank, nbl_dtype_name(x0->dtype), r);
    for (int i = 0; i < r; i++)
      if (i != axis && x->dims[i] != x0->dims[i])
        return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input %d dim %d is %lld, input 0 has %lld", k, i,
                        (long long)x->dims[i], (long long)x0->dims[i]);
    od[axis] += x->dims[axis];
  }
  nbl_status st = nbl_kctx_alloc_out(c, 0, x0->dtype, r, od);
  if (st) return st;
  nbl_rt_tensor *o = nbl_kctx_out(c, 0);
  int64_t outer = 1, inner = 1;
  for (int i = 0; i < axis; i++) outer *= od[i];
  for (int i = axis + 1; i < r; i++) inner *= od[i];
  size_t orow = (size_t)(od[axis] * inner) * es;
  size_t off = 0;
  for (int k = 0; k < n_in; k++) {
    const nbl_rt_tensor *x = in[k];
    size_t row = (size_t)(x->dims[axis] * inner) * es;
    if (row)
      for (int64_t q = 0; q < outer; q++)
        memcpy((char *)o->data + q * orow + off, (const char *)x->data + q * row, row);
    off += row;
  }
  return dup_strings(c, o);
}

static nbl_status k_concat(nbl_kctx *c) {
  const nbl_attr *aa = nbl_node_attr(c->node, "axis");
  if (!aa && c->opset >= 4) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "attribute 'axis' is missing");
  return nbl_concat_out(c, c->n_in, c->in, aa ? aa->i : 1);
}

/* ------------------------------------------------------------------ Split */

static nbl_status k_split(nbl_kctx *c) {
  const nbl_rt_tensor *x;
  nbl_status st = need_in(c, 0, "input", &x);
  if (st) return st;
  size_t es = esize(c, x, "input");
  if (!es) return NBL_ERR_UNSUPPORTED;
  int64_t axis_raw = nbl_attr_int(c->node, "axis", 0);
  int axis = nbl_norm_axis(axis_raw, x->rank);
  if (axis < 0) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "axis %lld out of range for rank %d", (long long)axis_raw, x->rank);
  int nout = c->n_out;
  if (nout < 1) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "has no outputs");
  int64_t *sp = calloc((size_t)nout + 1, sizeof *sp);
  if (!sp) return nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory");
  int n = -1;
  const nbl_rt_tensor *sin = NULL;
  if (c->opset >= 13 || c->opset < 2) sin = opt_in(c, 1);
  if (sin) {
    st = read_ints(c, sin, "split", sp, nout, &n);
    if (st) {
      if (sin->numel > nout)
        st = nbl_kerr(c, NBL_ERR_INVALID_MODEL, "split has %lld entries for %d outputs",
                      (long long)sin->numel, nout);
      free(sp);
      return st;
    }
  } else if (c->opset < 13) {
    int cnt = 0;
    const int64_t *v = nbl_attr_ints(c->node, "split", &cnt);
    if (v) {
      if (cnt != nout) {
        free(sp);
        return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "split has %d entries for %d outputs", cnt, nout);
      }
      memcpy(sp, v, (size_t)cnt * sizeof *sp);
      n = cnt;
    }
  }
  int64_t dim = x->dims[axis];
  if (n >= 0) {
    if (n != nout) {
      free(sp);
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "split has %d entries for %d outputs", n, nout);
    }
    int64_t sum = 0;
    for (int i = 0; i < n; i++) {
      if (sp[i] < 0) {
        free(sp);
        return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "split[%d] is negative", i);
      }
      sum += sp[i];
    }
    if (sum != dim) {
      free(sp);
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "split sizes sum to %lld, axis %d has %lld", (long long)sum,
                      axis, (long long)dim);
    }
  } else {
    const nbl_attr *na = c->opset >= 18 ? nbl_node_attr(c->node, "num_outputs") : NULL;
    if (na) {
      if (na->i != nout) {
        free(sp);
        return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "num_outputs %lld but the node has %d outputs",
                        (long long)na->i, nout);
      }
      int64_t part = (dim + nout - 1) / nout;
      for (int i = 0; i < nout; i++) {
        int64_t left = dim - part * i;
        sp[i] = left < 0 ? 0 : left < part ? left : part;
      }
    } else {
      if (dim % nout) {
        free(sp);
        return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "axis %d of size %lld does not split evenly into %d outputs",
                        axis, (long long)dim, nout);
      }
      for (int i = 0; i < nout; i++) sp[i] = dim / nout;
    }
  }
  st = nbl_split_parts(c, x, axis, nout, sp, 1, NULL);
  free(sp);
  return st;
}

nbl_status nbl_split_parts(nbl_kctx *c, const nbl_rt_tensor *x, int axis, int n, const int64_t *sp, int keep_axis,
                           nbl_rt_tensor *parts) {
  size_t es = esize(c, x, "input");
  if (!es) return NBL_ERR_UNSUPPORTED;
  int64_t outer = 1, inner = 1, dim = x->dims[axis];
  for (int i = 0; i < axis; i++) outer *= x->dims[i];
  for (int i = axis + 1; i < x->rank; i++) inner *= x->dims[i];
  size_t irow = (size_t)(dim * inner) * es, off = 0;
  nbl_status st = NBL_OK;
  for (int k = 0; k < n; k++) {
    int64_t od[NBL_MAX_RANK];
    int r = 0;
    for (int i = 0; i < x->rank; i++)
      if (i != axis || keep_axis) od[r++] = i == axis ? sp[k] : x->dims[i];
    nbl_rt_tensor *o;
    if (parts) {
      if ((st = nbl_rt_tensor_alloc(&parts[k], x->dtype, r, od))) return nbl_kerr(c, st, "%s", nbl_last_error());
      o = &parts[k];
    } else {
      if ((st = nbl_kctx_alloc_out(c, k, x->dtype, r, od))) return st;
      o = nbl_kctx_out(c, k);
    }
    size_t row = (size_t)(sp[k] * inner) * es;
    if (row)
      for (int64_t q = 0; q < outer; q++)
        memcpy((char *)o->data + q * row, (const char *)x->data + q * irow + off, row);
    off += row;
    if ((st = dup_strings(c, o))) return st;
  }
  return NBL_OK;
}

/* ------------------------------------------------------------------ shape rules */

/* Reshape: shape from known data, 0 copies (unless allowzero), -1 inferred. */
static nbl_status shape_reshape(nbl_shape_ctx *c) {
  nbl_shp x, sh, o;
  nbl_shp_in(c, 0, &x);
  nbl_shp_in(c, 1, &sh);
  nbl_kdata k;
  if (!nbl_shp_in_kd(c, 1, &k)) {
    if (sh.rank == 1 && nbl_dim_known(sh.d[0]) && sh.d[0].value <= NBL_SHP_MAXR)
      return nbl_shp_set_dt(c, 0, x.dt, (int)sh.d[0].value);
    return nbl_shp_set_dt(c, 0, x.dt, -1);
  }
  if (k.n > NBL_SHP_MAXR) return nbl_shp_set_dt(c, 0, x.dt, -1);
  bool allowzero = c->opset >= 14 && nbl_attr_int(c->node, "allowzero", 0) != 0;
  o.dt = x.dt;
  o.rank = k.n;
  int neg = -1;
  for (int i = 0; i < k.n; i++) {
    nbl_kel e = k.e[i];
    if (e.kind == NBL_KD_VAL && e.v == -1) {
      if (neg >= 0) return nbl_errorf(NBL_ERR_INVALID_MODEL, "node '%s' (Reshape): more than one -1 in the shape", c->node->name);
      neg = i;
      o.d[i] = nbl_dim_unk();
    } else if (e.kind == NBL_KD_VAL && e.v == 0 && !allowzero) {
      o.d[i] = (x.rank > i) ? x.d[i] : nbl_dim_unk();
    } else if (e.kind == NBL_KD_VAL && e.v >= 0)
      o.d[i] = nbl_dim_val(e.v);
    else if (e.kind == NBL_KD_SYM) {
      o.d[i] = nbl_dim_unk();
      o.d[i].param = e.p;
    } else
      o.d[i] = nbl_dim_unk();
  }
  if (neg >= 0 && x.rank >= 0) {
    /* -1 = numel(x) / product(others), cancelling equal symbols */
    int64_t pin = 1, pout = 1;
    const char *sin[NBL_SHP_MAXR], *sout[NBL_SHP_MAXR];
    int nin = 0, nout = 0;
    bool ok = true;
    for (int i = 0; i < x.rank && ok; i++) {
      if (nbl_dim_known(x.d[i])) ok = !__builtin_mul_overflow(pin, x.d[i].value, &pin);
      else if (x.d[i].param) sin[nin++] = x.d[i].param;
      else ok = false;
    }
    for (int i = 0; i < o.rank && ok; i++) {
      if (i == neg) continue;
      if (nbl_dim_known(o.d[i])) ok = !__builtin_mul_overflow(pout, o.d[i].value, &pout);
      else if (o.d[i].param) sout[nout++] = o.d[i].param;
      else ok = false;
    }
    for (int i = 0; i < nout && ok; i++) {
      int j;
      for (j = 0; j < nin; j++)
        if (sin[j] && !strcmp(sin[j], sout[i])) break;
      if (j == nin) ok = false;
      else sin[j] = NULL;
    }
    for (int j = 0; j < nin && ok; j++)
      if (sin[j]) ok = false;
    if (ok && pout > 0 && pin % pout == 0) o.d[neg] = nbl_dim_val(pin / pout);
  }
  /* one symbol left over: x=[N,C] with known C, shape [-1, C] -> N */
  if (neg >= 0 && !nbl_dim_known(o.d[neg]) && x.rank >= 0) {
    int64_t pin = 1, pout = 1;
    int nsym = 0;
    nbl_dim sym = nbl_dim_unk();
    bool ok = true;
    for (int i = 0; i < x.rank && ok; i++) {
      if (nbl_dim_known(x.d[i])) ok = !__builtin_mul_overflow(pin, x.d[i].value, &pin);
      else if (x.d[i].param && nsym == 0) { sym = x.d[i]; nsym++; }
      else ok = false;
    }
    for (int i = 0; i < o.rank && ok; i++)
      if (i != neg) {
        if (nbl_dim_known(o.d[i])) ok = !__builtin_mul_overflow(pout, o.d[i].value, &pout);
        else ok = false;
      }
    if (ok && nsym == 1 && pin == pout) o.d[neg] = sym;
  }
  return nbl_shp_set(c, 0, &o);
}

static nbl_status shape_flatten(nbl_shape_ctx *c) {
  nbl_shp x, o;
  nbl_shp_in(c, 0, &x);
  if (x.rank < 0) return nbl_shp_set_dt(c, 0, x.dt, 2);
  int64_t a = nbl_attr_int(c->node, "axis", 1);
  if (a < 0) a += x.rank;
  if (a < 0 || a > x.rank) return nbl_shp_set_dt(c, 0, x.dt, 2);
  o.dt = x.dt;
  o.rank = 2;
  o.d[0] = nbl_dim_prod(x.d, (int)a);
  o.d[1] = nbl_dim_prod(x.d + a, x.rank - (int)a);
  return nbl_shp_set(c, 0, &o);
}

static bool axes_of(nbl_shape_ctx *c, int input, int64_t *axes, int *na, bool *present) {
  *present = false;
  *na = 0;
  if (c->opset >= 13) {
    if (!nbl_shp_has_in(c, input)) return true;
    *present = true;
    return nbl_shp_in_ints(c, input, axes, na);
  }
  int n = 0;
  const int64_t *a = nbl_attr_ints(c->node, "axes", &n);
  if (n > NBL_SHP_MAXK) return false;
  if (n) {
    memcpy(axes, a, sizeof(int64_t) * (size_t)n);
    *present = true;
  }
  *na = n;
  return true;
}

static nbl_status shape_squeeze(nbl_shape_ctx *c) {
  nbl_shp x, o;
  nbl_shp_in(c, 0, &x);
  int64_t axes[NBL_SHP_MAXK];
  int na;
  bool present;
  if (!axes_of(c, 1, axes, &na, &present) || x.rank < 0) return nbl_shp_set_dt(c, 0, x.dt, -1);
  bool sq[NBL_SHP_MAXR] = {false};
  if (!present) {
    for (int i = 0; i < x.rank; i++) {
      if (!nbl_dim_known(x.d[i])) return nbl_shp_set_dt(c, 0, x.dt, -1);
      sq[i] = x.d[i].value == 1;
    }
  }
  for (int i = 0; i < na; i++) {
    int a = nbl_norm_axis(axes[i], x.rank);
    if (a < 0) return nbl_shp_set_dt(c, 0, x.dt, -1);
    sq[a] = true;
  }
  o.dt = x.dt;
  o.rank = 0;
  for (int i = 0; i < x.rank; i++)
    if (!sq[i]) o.d[o.rank++] = x.d[i];
  nbl_status st = nbl_shp_set(c, 0, &o);
  nbl_kdata k;
  if (!st && o.rank == 0 && x.rank == 1 && nbl_shp_in_kd(c, 0, &k) && k.n == 1) {
    k.rank = 0;
    st = nbl_shp_set_kd(c, 0, &k);
  }
  return st;
}

static nbl_status shape_unsqueeze(nbl_shape_ctx *c) {
  nbl_shp x, o;
  nbl_shp_in(c, 0, &x);
  int64_t axes[NBL_SHP_MAXK];
  int na;
  bool present;
  if (!axes_of(c, 1, axes, &na, &present) || x.rank < 0) {
    if (x.rank >= 0 && c->opset >= 13) {
      nbl_shp ax;
      nbl_shp_in(c, 1, &ax);
      if (ax.rank == 1 && nbl_dim_known(ax.d[0])) return nbl_shp_set_dt(c, 0, x.dt, x.rank + (int)ax.d[0].value);
    }
    return nbl_shp_set_dt(c, 0, x.dt, -1);
  }
  int r = x.rank + na;
  if (r > NBL_SHP_MAXR) return nbl_shp_set_dt(c, 0, x.dt, -1);
  bool ins[NBL_SHP_MAXR] = {false};
  for (int i = 0; i < na; i++) {
    int a = nbl_norm_axis(axes[i], r);
    if (a < 0 || ins[a])
      return nbl_errorf(NBL_ERR_INVALID_MODEL, "node '%s' (Unsqueeze): bad axis %lld for output rank %d",
                        c->node->name, (long long)axes[i], r);
    ins[a] = true;
  }
  o.dt = x.dt;
  o.rank = r;
  for (int i = 0, j = 0; i < r; i++) o.d[i] = ins[i] ? nbl_dim_val(1) : x.d[j++];
  nbl_status st = nbl_shp_set(c, 0, &o);
  nbl_kdata k;
  if (!st && x.rank == 0 && r == 1 && nbl_shp_in_kd(c, 0, &k) && k.n == 1) {
    k.rank = 1;
    st = nbl_shp_set_kd(c, 0, &k);
  }
  return st;
}

nbl_status nbl_shape_concat_inputs(nbl_shape_ctx *c, int from, int step, int64_t axis) {
  const nbl_node *n = c->node;
  nbl_shp s, o;
  int rank = -1;
  nbl_dtype dt = NBL_DT_UNDEFINED;
  for (int i = from; i < n->n_inputs; i += step) {
    nbl_shp_in(c, i, &s);
    if (!dt) dt = s.dt;
    if (s.rank >= 0) rank = s.rank;
  }
  if (rank < 0) return nbl_shp_set_dt(c, 0, dt, -1);
  int a = nbl_norm_axis(axis, rank);
  if (a < 0) return nbl_shp_set_dt(c, 0, dt, rank);
  nbl_shp_rank(&o, dt, rank);
  int64_t sum = 0;
  bool sum_known = true;
  bool first = true;
  for (int i = from; i < n->n_inputs; i += step) {
    if (!nbl_shp_in(c, i, &s)) continue;
    if (s.rank < 0) {
      sum_known = false;
      continue;
    }
    if (s.rank != rank)
      return nbl_errorf(NBL_ERR_INVALID_MODEL, "node '%s' (%s): inputs have ranks %d and %d",
                        n->name, n->op_type, rank, s.rank);
    for (int d = 0; d < rank; d++) {
      if (d == a) {
        if (nbl_dim_known(s.d[d])) sum += s.d[d].value;
        else sum_known = false;
      } else if (first)
        o.d[d] = s.d[d];
      else {
        if (nbl_dim_known(o.d[d]) && nbl_dim_known(s.d[d]) && o.d[d].value != s.d[d].value)
          return nbl_shp_bcast_err(c, &o, &s);
        o.d[d] = nbl_dim_merge(o.d[d], s.d[d]);
      }
    }
    first = false;
  }
  o.d[a] = sum_known ? nbl_dim_val(sum) : nbl_dim_unk();
  return nbl_shp_set(c, 0, &o);
}

static nbl_status shape_concat(nbl_shape_ctx *c) {
  const nbl_node *n = c->node;
  nbl_status st = nbl_shape_concat_inputs(c, 0, 1, nbl_attr_int(n, "axis", 0));
  int rank = -1;
  nbl_shp s;
  for (int i = 0; i < n->n_inputs; i++)
    if (nbl_shp_in(c, i, &s) && s.rank >= 0) rank = s.rank;
  if (st || rank != 1) return st;
  nbl_kdata r, k;
  r.rank = 1;
  r.n = 0;
  for (int i = 0; i < n->n_inputs; i++) {
    if (!nbl_shp_has_in(c, i)) continue;
    if (!nbl_shp_in_kd(c, i, &k) || r.n + k.n > NBL_SHP_MAXK) return NBL_OK;
    for (int j = 0; j < k.n; j++) r.e[r.n++] = k.e[j];
  }
  return nbl_shp_set_kd(c, 0, &r);
}

static nbl_status shape_split(nbl_shape_ctx *c) {
  const nbl_node *n = c->node;
  nbl_shp x;
  nbl_shp_in(c, 0, &x);
  int nout = n->n_outputs;
  if (x.rank < 0) {
    for (int k = 0; k < nout; k++) {
      nbl_status st = nbl_shp_set_dt(c, k, x.dt, -1);
      if (st) return st;
    }
    return NBL_OK;
  }
  int a = nbl_norm_axis(nbl_attr_int(n, "axis", 0), x.rank);
  int64_t sizes[NBL_SHP_MAXK];
  int ns = 0;
  bool known = true;
  if (c->opset >= 13) {
    if (nbl_shp_has_in(c, 1) && !nbl_shp_in_ints(c, 1, sizes, &ns)) known = false;
  } else {
    const int64_t *sp = nbl_attr_ints(n, "split", &ns);
    if (ns > NBL_SHP_MAXK) known = false;
    else if (ns) memcpy(sizes, sp, sizeof(int64_t) * (size_t)ns);
  }
  for (int k = 0; k < nout; k++) {
    nbl_shp o = x;
    if (a < 0) {
      nbl_shp_rank(&o, x.dt, x.rank);
    } else if (!known) {
      o.d[a] = nbl_dim_unk();
    } else if (ns) {
      o.d[a] = k < ns ? nbl_dim_val(sizes[k]) : nbl_dim_unk();
    } else if (nbl_dim_known(x.d[a]) && nout > 0) {
      int64_t d = x.d[a].value;
      if (c->opset >= 18) {
        int64_t chunk = (d + nout - 1) / nout;
        int64_t v = k < nout - 1 ? chunk : d - chunk * (nout - 1);
        o.d[a] = nbl_dim_val(v < 0 ? 0 : v);
      } else
        o.d[a] = d % nout == 0 ? nbl_dim_val(d / nout) : nbl_dim_unk();
    } else
      o.d[a] = nout == 1 ? x.d[a] : nbl_dim_unk();
    nbl_status st = nbl_shp_set(c, k, &o);
    if (st) return st;
  }
  return NBL_OK;
}

/* ------------------------------------------------------------------ gradient rules
 * (runtime/core/grad.h): data movement moves the gradient back. */

/* Reshape, Flatten, Squeeze, Unsqueeze: dY reshaped to the input's shape. */
static nbl_status g_reshape(nbl_grad_ctx *gc) {
  if (nbl_grad_wants(gc, 0))
    nbl_grad_set_dx(gc, 0, nbl_grad_reshape_like(gc, nbl_grad_dy(gc, 0), nbl_grad_x(gc, 0)));
  return nbl_grad_status(gc);
}

/* Slice of v along one axis [s, e) as 1-D int64 values (Slice opset >= 10) or
 * numbers (attributes, before 10; then s_n/e_n are used). */
static nbl_id slice_axis(nbl_grad_ctx *gc, nbl_id v, int64_t axis, nbl_id s, nbl_id e, int64_t s_n,
                         int64_t e_n) {
  if (nbl_grad_opset(gc, "") < 10) {
    nbl_id out = nbl_grad_un(gc, "Slice", v);
    nbl_grad_attr_ints(gc, "starts", 1, &s_n);
    nbl_grad_attr_ints(gc, "ends", 1, &e_n);
    nbl_grad_attr_ints(gc, "axes", 1, &axis);
    return out;
  }
  nbl_id in[4] = {v, s, e, nbl_grad_const_i64(gc, 1, &axis)};
  return nbl_grad_op(gc, "Slice", "", 4, in);
}

/* Concat: each input gets its slice of dY along the axis (offsets from the
 * static sizes, or from Shape at run time). */
static nbl_status g_concat(nbl_grad_ctx *gc) {
  int n = nbl_grad_n_in(gc), r = nbl_grad_rank(gc, nbl_grad_y(gc, 0));
  int64_t axis = nbl_attr_int(nbl_grad_node(gc), "axis", 0);
  if (r < 1) return nbl_grad_fail(gc, NBL_ERR_UNSUPPORTED, "the rank of the output must be known");
  if (axis < 0) axis += r;
  int stat = 1;
  for (int i = 0; i < n; i++) stat &= nbl_grad_dim(gc, nbl_grad_x(gc, i), (int)axis) >= 0;
  if (!stat && nbl_grad_opset(gc, "") < 10)
    return nbl_grad_fail(gc, NBL_ERR_UNSUPPORTED, "input sizes along the axis must be known before opset 10");
  int64_t off = 0;
  nbl_id start = stat ? NBL_NONE : nbl_grad_const_i64(gc, 1, &off);
  for (int i = 0; i < n; i++) {
    nbl_id x = nbl_grad_x(gc, i);
    if (stat) {
      int64_t len = nbl_grad_dim(gc, x, (int)axis), end = off + len;
      if (nbl_grad_wants(gc, i)) {
        nbl_id s = NBL_NONE, e = NBL_NONE;
        if (nbl_grad_opset(gc, "") >= 10) {
          s = nbl_grad_const_i64(gc, 1, &off);
          e = nbl_grad_const_i64(gc, 1, &end);
        }
        nbl_grad_set_dx(gc, i, slice_axis(gc, nbl_grad_dy(gc, 0), axis, s, e, off, end));
      }
      off = end;
      continue;
    }
    nbl_id ax = nbl_grad_const_i64(gc, 1, &axis);
    nbl_id len = nbl_grad_bin(gc, "Gather", nbl_grad_shape(gc, x), ax);
    nbl_id end = nbl_grad_bin(gc, "Add", start, len);
    if (nbl_grad_wants(gc, i))
      nbl_grad_set_dx(gc, i, slice_axis(gc, nbl_grad_dy(gc, 0), axis, start, end, 0, 0));
    start = end;
  }
  return nbl_grad_status(gc);
}

/* Split: dX = Concat of the outputs' gradients (zeros for an output none
 * reaches). */
static nbl_status g_split(nbl_grad_ctx *gc) {
  if (!nbl_grad_wants(gc, 0)) return NBL_OK;
  int n = nbl_grad_n_out(gc);
  nbl_id parts[64];
  if (n > 64) return nbl_grad_fail(gc, NBL_ERR_UNSUPPORTED, "more than 64 outputs");
  for (int i = 0; i < n; i++) {
    parts[i] = nbl_grad_dy(gc, i);
    if (parts[i] == NBL_NONE) parts[i] = nbl_grad_zeros_like(gc, nbl_grad_y_need(gc, i));
  }
  nbl_id dx = nbl_grad_op(gc, "Concat", "", n, parts);
  nbl_grad_attr_int(gc, "axis", nbl_attr_int(nbl_grad_node(gc), "axis", 0));
  nbl_grad_set_dx(gc, 0, dx);
  return nbl_grad_status(gc);
}

/* ------------------------------------------------------------------ opset adapters */

/* An attribute that became input 1 (Reshape's shape at 5, Squeeze's and
 * Unsqueeze's axes at 13). */
#define ATTR_TO_INPUT1(from_, to_, name)                                                 \
  {{.from = (from_), .to = (to_), .up = nbl_adapt_attrs_to_inputs,                        \
    .down = nbl_adapt_inputs_to_attrs, .attr = (name), .input = 1, .attr_type = NBL_ATTR_INTS}, \
   {0}}
static const nbl_op_adapter reshape_steps[] = ATTR_TO_INPUT1(1, 5, "shape"),
                            axes13_steps[] = ATTR_TO_INPUT1(1, 13, "axes");

/* Split: `split` is an attribute from opset 2 to 12, input 1 from 13; from
 * 18 a split without it names its part count (num_outputs), the last part
 * taking what is left where 13 needed equal parts. */
static nbl_status split_up18(nbl_adapt_ctx *c) {
  const nbl_node *n = nbl_adapt_node(c);
  if ((n->n_inputs < 2 || n->inputs[1] == NBL_NONE) && !nbl_node_attr(n, "num_outputs"))
    nbl_node_set_attr_int(c->graph, c->node, "num_outputs", n->n_outputs);
  return NBL_OK;
}

static nbl_status split_down18(nbl_adapt_ctx *c) {
  const nbl_node *n = nbl_adapt_node(c);
  const nbl_attr *no = nbl_node_attr(n, "num_outputs");
  if (no) {
    int64_t d = n->n_inputs ? nbl_adapt_dim(c, n->inputs[0], nbl_attr_int(n, "axis", 0)) : -1;
    if (d < 0 || no->i <= 0 || d % no->i)
      return nbl_adapt_refuse(c, "num_outputs=%lld needs a dim known to divide evenly before "
                                 "opset 18", (long long)no->i);
    nbl_adapt_drop_attr(c, "num_outputs");
  }
  return NBL_OK;
}

static const nbl_op_adapter split_steps[] = {
    {.from = 2, .to = 13, .up = nbl_adapt_attrs_to_inputs, .down = nbl_adapt_inputs_to_attrs,
     .attr = "split", .input = 1, .attr_type = NBL_ATTR_INTS},
    {.from = 13, .to = 18, .up = split_up18, .down = split_down18},
    {0},
};

/* ------------------------------------------------------------------ table */

const nbl_op_def nbl_ops_shape[] = {
    NBL_OP("Reshape", 1, .ref = k_reshape, .shape = shape_reshape, .stable_since = 5,
        .adapters = reshape_steps, .grad = g_reshape),
    NBL_OP("Flatten", 1, .ref = k_flatten, .shape = shape_flatten, .stable_since = 1, .grad = g_reshape),
    NBL_OP("Squeeze", 1, .ref = k_squeeze, .shape = shape_squeeze, .stable_since = 13,
        .adapters = axes13_steps, .grad = g_reshape),
    NBL_OP("Unsqueeze", 1, .ref = k_unsqueeze, .shape = shape_unsqueeze, .stable_since = 13,
        .adapters = axes13_steps, .grad = g_reshape),
    NBL_OP("Concat", 1, .ref = k_concat, .shape = shape_concat, .stable_since = 4, .grad = g_concat),
    NBL_OP("Split", 1, .ref = k_split, .shape = shape_split, .stable_since = 18,
        .adapters = split_steps, .grad = g_split),
};
const size_t nbl_ops_shape_count = sizeof nbl_ops_shape / sizeof nbl_ops_shape[0];
