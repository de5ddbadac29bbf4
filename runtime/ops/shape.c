/*
 * runtime/ops/shape.c - op family 'shape': ops that rearrange a tensor's
 * elements by its shape.
 *
 * Reshape, Flatten, Squeeze, Unsqueeze, Transpose, Concat, Split, Slice,
 * Expand, Tile, DepthToSpace, SpaceToDepth; the indexing ops are in
 * shape_index.c, Pad / Resize / Upsample in shape_resize.c.
 *
 * These ops move elements without looking at them, so they work on element
 * size: contiguous runs are memcpy'd and strided runs copied with 1/2/4/8-byte
 * loads. Every dtype with a whole-byte element size works the same way.
 * STRING tensors hold char* per element: kernels copy the pointers, then
 * dup_strings() replaces each by its own copy so the output owns its strings.
 * 4-bit types (INT4/UINT4) are supported where the op is a pure reshape of
 * the packed bytes (Reshape, Flatten, Squeeze, Unsqueeze); elsewhere they are
 * a clear NBL_ERR_UNSUPPORTED.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/core/grad.h"
#include "runtime/core/adapt.h"
#include "runtime/core/shape.h"
#include "runtime/ops/movement.h"
#include "runtime/ops/shape.h"

#define XR (2 * NBL_MAX_RANK + 2) /* rank of internal copy views */

/* ---- strided copy engine: dst (contiguous, shape dims) <- src with element strides sstr */

typedef struct sc_job {
  int rank; /* >= 1 after simplification */
  int64_t dims[XR];
  int64_t sstr[XR];
  char *dst;
  const char *src;
  size_t es;
  int64_t inner; /* dims[rank-1] */
} sc_job;

static void sc_rows(void *arg, int64_t r0, int64_t r1) {
  const sc_job *j = arg;
  int R = j->rank;
  int64_t inner = j->inner, is = j->sstr[R - 1];
  size_t es = j->es;
  int64_t idx[XR];
  int64_t rem = r0, off = 0;
  for (int d = R - 2; d >= 0; d--) {
    idx[d] = rem % j->dims[d];
    rem /= j->dims[d];
    off += idx[d] * j->sstr[d];
  }
  for (int64_t r = r0; r < r1; r++) {
    char *dp = j->dst + (size_t)r * (size_t)inner * es;
    const char *sp = j->src + off * (int64_t)es;
    if (is == 1) {
      memcpy(dp, sp, (size_t)inner * es);
    } else {
      switch (es) {
      case 1:
        for (int64_t k = 0; k < inner; k++) dp[k] = sp[k * is];
        break;
      case 2:
        for (int64_t k = 0; k < inner; k++) memcpy(dp + 2 * k, sp + 2 * k * is, 2);
        break;
      case 4:
        for (int64_t k = 0; k < inner; k++) memcpy(dp + 4 * k, sp + 4 * k * is, 4);
        break;
      case 8:
        for (int64_t k = 0; k < inner; k++) memcpy(dp + 8 * k, sp + 8 * k * is, 8);
        break;
      default:
        for (int64_t k = 0; k < inner; k++) memcpy(dp + es * k, sp + (int64_t)es * k * is, es);
      }
    }
    /* advance the outer counter */
    for (int d = R - 2; d >= 0; d--) {
      idx[d]++;
      off += j->sstr[d];
      if (idx[d] < j->dims[d]) break;
      off -= idx[d] * j->sstr[d];
      idx[d] = 0;
    }
  }
}

/* Copy a strided view of src (element strides sstr, may be negative or 0)
 * into contiguous dst of shape dims. `src` points at the view's first element. */
static void strided_copy(nbl_kctx *c, char *dst, const char *src, int rank, const int64_t *dims,
                         const int64_t *sstr, size_t es) {
  sc_job j;
  j.rank = 0;
  for (int d = 0; d < rank; d++) {
    if (dims[d] == 0) return;
    if (dims[d] == 1) continue;
    if (j.rank > 0 && j.sstr[j.rank - 1] == sstr[d] * dims[d]) { /* merge with previous */
      j.dims[j.rank - 1] *= dims[d];
      j.sstr[j.rank - 1] = sstr[d];
      continue;
    }
    j.dims[j.rank] = dims[d];
    j.sstr[j.rank] = sstr[d];
    j.rank++;
  }
  if (j.rank == 0) {
    j.dims[0] = 1;
    j.sstr[0] = 1;
    j.rank = 1;
  }
  j.dst = dst;
  j.src = src;
  j.es = es;
  j.inner = j.dims[j.rank - 1];
  int64_t rows = 1;
  for (int d = 0; d < j.rank - 1; d++) rows *= j.dims[d];
  int64_t bytes_per_row = j.inner * (int64_t)es;
  int64_t grain = bytes_per_row >= 65536 ? 1 : 65536 / (bytes_per_row ? bytes_per_row : 1);
  if (rows * bytes_per_row < (1 << 18) || c->threads <= 1)
    sc_rows(&j, 0, rows);
  else
    nbl_parallel_for(c, rows, grain, sc_rows, &j);
}

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

/* ------------------------------------------------------------------ Transpose */

static nbl_status k_transpose(nbl_kctx *c) {
  const nbl_rt_tensor *x;
  nbl_status st = need_in(c, 0, "data", &x);
  if (st) return st;
  size_t es = esize(c, x, "data");
  if (!es) return NBL_ERR_UNSUPPORTED;
  int64_t perm[NBL_MAX_RANK];
  int n;
  if ((st = attr_ints(c, "perm", perm, NBL_MAX_RANK, &n))) return st;
  if (n < 0) {
    n = x->rank;
    for (int i = 0; i < n; i++) perm[i] = n - 1 - i;
  }
  if (n != x->rank)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "perm has %d entries, input rank is %d", n, x->rank);
  int seen[NBL_MAX_RANK] = {0};
  int64_t str[NBL_MAX_RANK], od[NBL_MAX_RANK], ss[NBL_MAX_RANK];
  nbl_strides(x->rank, x->dims, str);
  for (int i = 0; i < n; i++) {
    if (perm[i] < 0 || perm[i] >= n || seen[perm[i]])
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "perm is not a permutation of 0..%d", n - 1);
    seen[perm[i]] = 1;
    od[i] = x->dims[perm[i]];
    ss[i] = str[perm[i]];
  }
  if ((st = nbl_kctx_alloc_out(c, 0, x->dtype, n, od))) return st;
  nbl_rt_tensor *o = nbl_kctx_out(c, 0);
  strided_copy(c, o->data, x->data, n, od, ss, es);
  return dup_strings(c, o);
}

/* ------------------------------------------------------------------ Concat */

static nbl_status k_concat(nbl_kctx *c) {
  if (c->n_in < 1 || !c->in[0]) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "needs at least one input");
  const nbl_rt_tensor *x0 = c->in[0];
  const nbl_attr *aa = nbl_node_attr(c->node, "axis");
  if (!aa && c->opset >= 4) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "attribute 'axis' is missing");
  int64_t axis_raw = aa ? aa->i : 1;
  int r = x0->rank;
  int axis = nbl_norm_axis(axis_raw, r);
  if (axis < 0) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "axis %lld out of range for rank %d", (long long)axis_raw, r);
  size_t es = esize(c, x0, "inputs");
  if (!es) return NBL_ERR_UNSUPPORTED;
  int64_t od[NBL_MAX_RANK];
  for (int i = 0; i < r; i++) od[i] = x0->dims[i];
  od[axis] = 0;
  for (int k = 0; k < c->n_in; k++) {
    const nbl_rt_tensor *x = c->in[k];
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
  for (int k = 0; k < c->n_in; k++) {
    const nbl_rt_tensor *x = c->in[k];
    size_t row = (size_t)(x->dims[axis] * inner) * es;
    if (row)
      for (int64_t q = 0; q < outer; q++)
        memcpy((char *)o->data + q * orow + off, (const char *)x->data + q * row, row);
    off += row;
  }
  return dup_strings(c, o);
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
  int64_t outer = 1, inner = 1;
  for (int i = 0; i < axis; i++) outer *= x->dims[i];
  for (int i = axis + 1; i < x->rank; i++) inner *= x->dims[i];
  size_t irow = (size_t)(dim * inner) * es, off = 0;
  for (int k = 0; k < nout; k++) {
    int64_t od[NBL_MAX_RANK];
    for (int i = 0; i < x->rank; i++) od[i] = x->dims[i];
    od[axis] = sp[k];
    if ((st = nbl_kctx_alloc_out(c, k, x->dtype, x->rank, od))) break;
    nbl_rt_tensor *o = nbl_kctx_out(c, k);
    size_t row = (size_t)(sp[k] * inner) * es;
    if (row)
      for (int64_t q = 0; q < outer; q++)
        memcpy((char *)o->data + q * row, (const char *)x->data + q * irow + off, row);
    off += row;
    if ((st = dup_strings(c, o))) break;
  }
  free(sp);
  return st;
}

/* ------------------------------------------------------------------ Slice */

/* Slice's index arithmetic (runtime/ops/shape.h). */
nbl_status nbl_slice_geometry(nbl_kctx *c, int r, const int64_t *dims, int ns, const int64_t *starts,
                              const int64_t *ends, const int64_t *axes, const int64_t *steps,
                              int64_t *start, int64_t *step_out, int64_t *len_out) {
  int seen[NBL_MAX_RANK] = {0};
  for (int d = 0; d < r; d++) {
    start[d] = 0;
    step_out[d] = 1;
    len_out[d] = dims[d];
  }
  for (int i = 0; i < ns; i++) {
    int64_t a = axes ? axes[i] : i;
    int ax = nbl_norm_axis(a, r);
    if (ax < 0) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "axis %lld out of range for rank %d", (long long)a, r);
    if (seen[ax]) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "axis %d is sliced twice", ax);
    seen[ax] = 1;
    int64_t step = steps ? steps[i] : 1;
    if (step == 0) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "step for axis %d is 0", ax);
    int64_t dim = dims[ax], s = starts[i], e = ends[i];
    if (s < 0) s += dim;
    if (e < 0) e += dim;
    int64_t len;
    if (step > 0) {
      s = s < 0 ? 0 : s > dim ? dim : s;
      e = e < 0 ? 0 : e > dim ? dim : e;
      len = e > s ? (e - s + step - 1) / step : 0;
    } else {
      s = s < 0 ? 0 : s > dim - 1 ? dim - 1 : s;
      e = e < -1 ? -1 : e > dim - 1 ? dim - 1 : e;
      len = s > e ? (s - e + (-step) - 1) / (-step) : 0;
    }
    start[ax] = s;
    step_out[ax] = step;
    len_out[ax] = len;
  }
  return NBL_OK;
}

static nbl_status k_slice(nbl_kctx *c) {
  const nbl_rt_tensor *x;
  nbl_status st = need_in(c, 0, "data", &x);
  if (st) return st;
  size_t es = esize(c, x, "data");
  if (!es) return NBL_ERR_UNSUPPORTED;
  int r = x->rank;
  int64_t starts[NBL_MAX_RANK], ends[NBL_MAX_RANK], axes[NBL_MAX_RANK], steps[NBL_MAX_RANK];
  int ns, ne, na = -1, nst = -1;
  if (c->opset < 10) {
    if ((st = attr_ints(c, "starts", starts, NBL_MAX_RANK, &ns))) return st;
    if ((st = attr_ints(c, "ends", ends, NBL_MAX_RANK, &ne))) return st;
    if ((st = attr_ints(c, "axes", axes, NBL_MAX_RANK, &na))) return st;
    if (ns < 0 || ne < 0) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "attributes 'starts' and 'ends' are required");
  } else {
    const nbl_rt_tensor *t;
    if ((st = need_in(c, 1, "starts", &t)) || (st = read_ints(c, t, "starts", starts, NBL_MAX_RANK, &ns)))
      return st;
    if ((st = need_in(c, 2, "ends", &t)) || (st = read_ints(c, t, "ends", ends, NBL_MAX_RANK, &ne)))
      return st;
    if ((t = opt_in(c, 3)) && (st = read_ints(c, t, "axes", axes, NBL_MAX_RANK, &na))) return st;
    if ((t = opt_in(c, 4)) && (st = read_ints(c, t, "steps", steps, NBL_MAX_RANK, &nst))) return st;
  }
  if (ns != ne || (na >= 0 && na != ns) || (nst >= 0 && nst != ns))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "starts, ends, axes and steps differ in length");
  int64_t st_[NBL_MAX_RANK], stp[NBL_MAX_RANK], od[NBL_MAX_RANK];
  if ((st = nbl_slice_geometry(c, r, x->dims, ns, starts, ends, na >= 0 ? axes : NULL,
                               nst >= 0 ? steps : NULL, st_, stp, od)))
    return st;
  if ((st = nbl_kctx_alloc_out(c, 0, x->dtype, r, od))) return st;
  nbl_rt_tensor *o = nbl_kctx_out(c, 0);
  if (o->numel == 0) return NBL_OK;
  int64_t str[NBL_MAX_RANK], ss[NBL_MAX_RANK];
  nbl_strides(r, x->dims, str);
  int64_t off = 0;
  for (int d = 0; d < r; d++) {
    off += st_[d] * str[d];
    ss[d] = str[d] * stp[d];
  }
  strided_copy(c, o->data, (const char *)x->data + off * (int64_t)es, r, od, ss, es);
  return dup_strings(c, o);
}

/* ------------------------------------------------------------------ Expand / Tile */

static nbl_status k_expand(nbl_kctx *c) {
  const nbl_rt_tensor *x, *s;
  nbl_status st;
  if ((st = need_in(c, 0, "input", &x)) || (st = need_in(c, 1, "shape", &s))) return st;
  size_t es = esize(c, x, "input");
  if (!es) return NBL_ERR_UNSUPPORTED;
  int64_t shp[NBL_MAX_RANK], od[NBL_MAX_RANK];
  int n, r;
  if ((st = read_ints(c, s, "shape", shp, NBL_MAX_RANK, &n))) return st;
  for (int i = 0; i < n; i++)
    if (shp[i] < 0) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "shape[%d] = %lld is negative", i, (long long)shp[i]);
  if (nbl_broadcast_shape(x->rank, x->dims, n, shp, &r, od))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input shape cannot be broadcast to the given shape");
  if ((st = nbl_kctx_alloc_out(c, 0, x->dtype, r, od))) return st;
  nbl_rt_tensor *o = nbl_kctx_out(c, 0);
  int64_t str[NBL_MAX_RANK], ss[NBL_MAX_RANK];
  nbl_strides(x->rank, x->dims, str);
  for (int d = 0; d < r; d++) {
    int xd = d - (r - x->rank);
    ss[d] = (xd < 0 || x->dims[xd] == 1) ? 0 : str[xd];
  }
  strided_copy(c, o->data, x->data, r, od, ss, es);
  return dup_strings(c, o);
}

static nbl_status k_tile(nbl_kctx *c) {
  const nbl_rt_tensor *x, *rp;
  nbl_status st;
  if ((st = need_in(c, 0, "input", &x)) || (st = need_in(c, 1, "repeats", &rp))) return st;
  size_t es = esize(c, x, "input");
  if (!es) return NBL_ERR_UNSUPPORTED;
  int64_t rep[NBL_MAX_RANK], od[NBL_MAX_RANK];
  int n;
  if ((st = read_ints(c, rp, "repeats", rep, NBL_MAX_RANK, &n))) return st;
  if (n != x->rank)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "repeats has %d entries, input rank is %d", n, x->rank);
  int64_t str[NBL_MAX_RANK], vd[XR], vs[XR];
  nbl_strides(x->rank, x->dims, str);
  for (int d = 0; d < n; d++) {
    if (rep[d] < 0) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "repeats[%d] is negative", d);
    if (x->dims[d] && rep[d] > INT64_MAX / x->dims[d])
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "repeats[%d] = %lld: output too large", d,
                      (long long)rep[d]);
    od[d] = x->dims[d] * rep[d];
    vd[2 * d] = rep[d];
    vs[2 * d] = 0;
    vd[2 * d + 1] = x->dims[d];
    vs[2 * d + 1] = str[d];
  }
  if ((st = nbl_kctx_alloc_out(c, 0, x->dtype, n, od))) return st;
  nbl_rt_tensor *o = nbl_kctx_out(c, 0);
  strided_copy(c, o->data, x->data, 2 * n, vd, vs, es);
  return dup_strings(c, o);
}

/* ------------------------------------------------------------------ DepthToSpace / SpaceToDepth */

static nbl_status k_depth_to_space(nbl_kctx *c) {
  const nbl_rt_tensor *x;
  nbl_status st = need_in(c, 0, "input", &x);
  if (st) return st;
  size_t es = esize(c, x, "input");
  if (!es) return NBL_ERR_UNSUPPORTED;
  if (x->rank != 4) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input must be 4-D, got rank %d", x->rank);
  int64_t b = nbl_attr_int(c->node, "blocksize", 0);
  const char *mode = c->opset >= 11 ? nbl_attr_string(c->node, "mode", "DCR") : "DCR";
  int crd = strcmp(mode, "CRD") == 0;
  if (!crd && strcmp(mode, "DCR") != 0)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "mode '%s' is not DCR or CRD", mode);
  int64_t N = x->dims[0], C = x->dims[1], H = x->dims[2], W = x->dims[3];
  if (b <= 0 || C % (b * b))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "channels %lld not divisible by blocksize^2 (blocksize %lld)",
                    (long long)C, (long long)b);
  int64_t C2 = C / (b * b);
  int64_t od[4] = {N, C2, H * b, W * b};
  if ((st = nbl_kctx_alloc_out(c, 0, x->dtype, 4, od))) return st;
  nbl_rt_tensor *o = nbl_kctx_out(c, 0);
  /* output view [N, C2, H, b1, W, b2]; input element (n, c, h, w) offsets */
  int64_t sC = H * W, sN = C * sC;
  int64_t vd[6] = {N, C2, H, b, W, b};
  int64_t vs[6];
  vs[0] = sN;
  vs[2] = W;
  vs[4] = 1;
  if (crd) { /* channel = c2*b*b + b1*b + b2 */
    vs[1] = b * b * sC;
    vs[3] = b * sC;
    vs[5] = sC;
  } else { /* DCR: channel = b1*b*C2 + b2*C2 + c2 */
    vs[1] = sC;
    vs[3] = b * C2 * sC;
    vs[5] = C2 * sC;
  }
  strided_copy(c, o->data, x->data, 6, vd, vs, es);
  return dup_strings(c, o);
}

static nbl_status k_space_to_depth(nbl_kctx *c) {
  const nbl_rt_tensor *x;
  nbl_status st = need_in(c, 0, "input", &x);
  if (st) return st;
  size_t es = esize(c, x, "input");
  if (!es) return NBL_ERR_UNSUPPORTED;
  if (x->rank != 4) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input must be 4-D, got rank %d", x->rank);
  int64_t b = nbl_attr_int(c->node, "blocksize", 0);
  int64_t N = x->dims[0], C = x->dims[1], H = x->dims[2], W = x->dims[3];
  if (b <= 0 || H % b || W % b)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "spatial dims %lldx%lld not divisible by blocksize %lld",
                    (long long)H, (long long)W, (long long)b);
  int64_t od[4] = {N, C * b * b, H / b, W / b};
  if ((st = nbl_kctx_alloc_out(c, 0, x->dtype, 4, od))) return st;
  nbl_rt_tensor *o = nbl_kctx_out(c, 0);
  /* output view [N, b1, b2, C, H/b, W/b]; input (n, c, h2*b+b1, w2*b+b2) */
  int64_t vd[6] = {N, b, b, C, H / b, W / b};
  int64_t vs[6] = {C * H * W, W, 1, H * W, b * W, b};
  strided_copy(c, o->data, x->data, 6, vd, vs, es);
  return dup_strings(c, o);
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

static nbl_status shape_transpose(nbl_shape_ctx *c) {
  nbl_shp x, o;
  nbl_shp_in(c, 0, &x);
  if (x.rank < 0) return nbl_shp_set_dt(c, 0, x.dt, -1);
  int np = 0;
  const int64_t *perm = nbl_attr_ints(c->node, "perm", &np);
  o.dt = x.dt;
  o.rank = x.rank;
  if (np && np != x.rank)
    return nbl_errorf(NBL_ERR_INVALID_MODEL, "node '%s' (Transpose): perm has %d entries for rank %d",
                      c->node->name, np, x.rank);
  for (int i = 0; i < x.rank; i++) {
    int p = np ? nbl_norm_axis(perm[i], x.rank) : x.rank - 1 - i;
    o.d[i] = p >= 0 ? x.d[p] : nbl_dim_unk();
  }
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

static nbl_status shape_concat(nbl_shape_ctx *c) {
  const nbl_node *n = c->node;
  nbl_shp s, o;
  int rank = -1;
  nbl_dtype dt = NBL_DT_UNDEFINED;
  for (int i = 0; i < n->n_inputs; i++) {
    nbl_shp_in(c, i, &s);
    if (!dt) dt = s.dt;
    if (s.rank >= 0) rank = s.rank;
  }
  if (rank < 0) return nbl_shp_set_dt(c, 0, dt, -1);
  int a = nbl_norm_axis(nbl_attr_int(n, "axis", 0), rank);
  if (a < 0) return nbl_shp_set_dt(c, 0, dt, rank);
  nbl_shp_rank(&o, dt, rank);
  int64_t sum = 0;
  bool sum_known = true;
  bool first = true;
  for (int i = 0; i < n->n_inputs; i++) {
    if (!nbl_shp_in(c, i, &s)) continue;
    if (s.rank < 0) {
      sum_known = false;
      continue;
    }
    if (s.rank != rank)
      return nbl_errorf(NBL_ERR_INVALID_MODEL, "node '%s' (Concat): inputs have ranks %d and %d",
                        n->name, rank, s.rank);
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
  nbl_status st = nbl_shp_set(c, 0, &o);
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

/* Slice bounds for a dim of size d. Returns the element count and first index. */
static int64_t slice_len(int64_t d, int64_t s, int64_t e, int64_t st, int64_t *first) {
  if (st > 0) {
    if (s < 0) s += d;
    if (s < 0) s = 0;
    if (s > d) s = d;
    if (e < 0) e += d;
    if (e < 0) e = 0;
    if (e > d) e = d;
    *first = s;
    return e > s ? (e - s + st - 1) / st : 0;
  }
  if (s < 0) s += d;
  if (s < 0) s = -1;
  if (s > d - 1) s = d - 1;
  if (e < 0) e += d;
  if (e < -1) e = -1;
  if (e > d - 1) e = d - 1;
  *first = s;
  return s > e ? (s - e + (-st) - 1) / (-st) : 0;
}

static nbl_status shape_slice(nbl_shape_ctx *c) {
  const nbl_node *n = c->node;
  nbl_shp x, o;
  nbl_shp_in(c, 0, &x);
  int64_t starts[NBL_SHP_MAXK], ends[NBL_SHP_MAXK], axes[NBL_SHP_MAXK], steps[NBL_SHP_MAXK];
  int ns = 0, ne = 0, na = 0, nst = 0;
  bool known = true;
  if (c->opset < 10) {
    const int64_t *p;
    p = nbl_attr_ints(n, "starts", &ns);
    if (ns > NBL_SHP_MAXK) known = false; else if (ns) memcpy(starts, p, sizeof(int64_t) * (size_t)ns);
    p = nbl_attr_ints(n, "ends", &ne);
    if (ne > NBL_SHP_MAXK) known = false; else if (ne) memcpy(ends, p, sizeof(int64_t) * (size_t)ne);
    p = nbl_attr_ints(n, "axes", &na);
    if (na > NBL_SHP_MAXK) known = false; else if (na) memcpy(axes, p, sizeof(int64_t) * (size_t)na);
  } else {
    if (!nbl_shp_in_ints(c, 1, starts, &ns) || !nbl_shp_in_ints(c, 2, ends, &ne)) known = false;
    if (nbl_shp_has_in(c, 3) && !nbl_shp_in_ints(c, 3, axes, &na)) known = false;
    if (nbl_shp_has_in(c, 4) && !nbl_shp_in_ints(c, 4, steps, &nst)) known = false;
  }
  if (x.rank < 0) return nbl_shp_set_dt(c, 0, x.dt, -1);
  if (!known) {
    /* the sliced axes are unknown; without axes any dim may change */
    if (c->opset >= 10 && nbl_shp_has_in(c, 3) && nbl_shp_in_ints(c, 3, axes, &na)) {
      o = x;
      for (int i = 0; i < na; i++) {
        int a = nbl_norm_axis(axes[i], x.rank);
        if (a >= 0) o.d[a] = nbl_dim_unk();
      }
      return nbl_shp_set(c, 0, &o);
    }
    return nbl_shp_set_dt(c, 0, x.dt, x.rank);
  }
  if (ns != ne || (na && na != ns) || (nst && nst != ns))
    return nbl_errorf(NBL_ERR_INVALID_MODEL, "node '%s' (Slice): starts/ends/axes/steps lengths differ",
                      n->name);
  o = x;
  int64_t first[NBL_SHP_MAXR], step[NBL_SHP_MAXR];
  bool sliced[NBL_SHP_MAXR] = {false};
  for (int i = 0; i < ns; i++) {
    int a = nbl_norm_axis(na ? axes[i] : i, x.rank);
    if (a < 0) return nbl_shp_set_dt(c, 0, x.dt, x.rank);
    int64_t stp = nst ? steps[i] : 1;
    if (stp == 0)
      return nbl_errorf(NBL_ERR_INVALID_MODEL, "node '%s' (Slice): step 0", n->name);
    sliced[a] = true;
    step[a] = stp;
    if (nbl_dim_known(x.d[a]))
      o.d[a] = nbl_dim_val(slice_len(x.d[a].value, starts[i], ends[i], stp, &first[a]));
    else if (stp == 1 && starts[i] == 0 && ends[i] >= INT32_MAX)
      o.d[a] = x.d[a];
    else
      o.d[a] = nbl_dim_unk();
  }
  nbl_status st = nbl_shp_set(c, 0, &o);
  nbl_kdata k, r;
  if (st || x.rank != 1 || !nbl_shp_in_kd(c, 0, &k) || !nbl_dim_known(o.d[0]) || o.d[0].value > NBL_SHP_MAXK) return st;
  r.rank = 1;
  r.n = (int)o.d[0].value;
  int64_t f = sliced[0] ? first[0] : 0, sp = sliced[0] ? step[0] : 1;
  for (int i = 0; i < r.n; i++) {
    int64_t j = f + i * sp;
    if (j < 0 || j >= k.n) return NBL_OK;
    r.e[i] = k.e[j];
  }
  return nbl_shp_set_kd(c, 0, &r);
}

/* Expand / broadcast against a shape given as data. */
static nbl_status shape_expand(nbl_shape_ctx *c) {
  nbl_shp x, t, o, sh;
  nbl_shp_in(c, 0, &x);
  nbl_kdata k;
  if (!nbl_shp_in_kd(c, 1, &k) || k.n > NBL_SHP_MAXR) {
    nbl_shp_in(c, 1, &sh);
    if (x.rank >= 0 && sh.rank == 1 && nbl_dim_known(sh.d[0])) {
      int r = x.rank > sh.d[0].value ? x.rank : (int)sh.d[0].value;
      return nbl_shp_set_dt(c, 0, x.dt, r <= NBL_SHP_MAXR ? r : -1);
    }
    return nbl_shp_set_dt(c, 0, x.dt, -1);
  }
  t.dt = x.dt;
  t.rank = k.n;
  for (int i = 0; i < k.n; i++) {
    t.d[i] = nbl_dim_unk();
    if (k.e[i].kind == NBL_KD_VAL) t.d[i] = nbl_dim_val(k.e[i].v);
    else if (k.e[i].kind == NBL_KD_SYM) t.d[i].param = k.e[i].p;
  }
  if (!nbl_shp_bcast(&o, &x, &t)) return nbl_shp_bcast_err(c, &x, &t);
  o.dt = x.dt;
  return nbl_shp_set(c, 0, &o);
}

static nbl_status shape_tile(nbl_shape_ctx *c) {
  nbl_shp x, o;
  nbl_shp_in(c, 0, &x);
  int64_t rep[NBL_SHP_MAXK];
  int nr;
  if (x.rank < 0) return nbl_shp_set_dt(c, 0, x.dt, -1);
  if (!nbl_shp_in_ints(c, 1, rep, &nr) || nr != x.rank) return nbl_shp_set_dt(c, 0, x.dt, x.rank);
  o = x;
  for (int i = 0; i < x.rank; i++)
    o.d[i] = nbl_dim_known(x.d[i]) ? nbl_dim_val(x.d[i].value * rep[i]) : rep[i] == 1 ? x.d[i] : nbl_dim_unk();
  return nbl_shp_set(c, 0, &o);
}

static nbl_status shape_depth_space(nbl_shape_ctx *c, bool to_space) {
  nbl_shp x, o;
  nbl_shp_in(c, 0, &x);
  int64_t b = nbl_attr_int(c->node, "blocksize", 0);
  if (x.rank != 4 || b <= 0) return nbl_shp_set_dt(c, 0, x.dt, x.rank == 4 ? 4 : -1);
  o = x;
  if (to_space) {
    o.d[1] = nbl_dim_known(x.d[1]) ? nbl_dim_val(x.d[1].value / (b * b)) : nbl_dim_unk();
    for (int i = 2; i < 4; i++) o.d[i] = nbl_dim_known(x.d[i]) ? nbl_dim_val(x.d[i].value * b) : nbl_dim_unk();
  } else {
    o.d[1] = nbl_dim_known(x.d[1]) ? nbl_dim_val(x.d[1].value * b * b) : nbl_dim_unk();
    for (int i = 2; i < 4; i++) o.d[i] = nbl_dim_known(x.d[i]) ? nbl_dim_val(x.d[i].value / b) : nbl_dim_unk();
  }
  return nbl_shp_set(c, 0, &o);
}

static nbl_status shape_depth_to_space(nbl_shape_ctx *c) { return shape_depth_space(c, true); }
static nbl_status shape_space_to_depth(nbl_shape_ctx *c) { return shape_depth_space(c, false); }

/* ------------------------------------------------------------------ gradient rules
 * (runtime/core/grad.h): data movement moves the gradient back; Gather and
 * Slice use com.microsoft GatherGrad / SliceGrad (runtime/ops/grad_shape.c). */

/* Reshape, Flatten, Squeeze, Unsqueeze: dY reshaped to the input's shape. */
static nbl_status g_reshape(nbl_grad_ctx *gc) {
  if (nbl_grad_wants(gc, 0))
    nbl_grad_set_dx(gc, 0, nbl_grad_reshape_like(gc, nbl_grad_dy(gc, 0), nbl_grad_x(gc, 0)));
  return nbl_grad_status(gc);
}

/* Transpose: dY transposed by the inverse permutation. */
static nbl_status g_transpose(nbl_grad_ctx *gc) {
  if (!nbl_grad_wants(gc, 0)) return NBL_OK;
  int cnt = 0, r = nbl_grad_rank(gc, nbl_grad_x(gc, 0));
  const int64_t *perm = nbl_attr_ints(nbl_grad_node(gc), "perm", &cnt);
  if (!perm) cnt = r;
  if (cnt <= 0 || cnt > NBL_MAX_RANK)
    return nbl_grad_fail(gc, NBL_ERR_UNSUPPORTED, "the rank of the input must be known");
  int64_t inv[NBL_MAX_RANK];
  for (int i = 0; i < cnt; i++) {
    int64_t p = perm ? perm[i] : cnt - 1 - i;
    if (p < 0 || p >= cnt) return nbl_grad_fail(gc, NBL_ERR_INVALID_MODEL, "perm is not a permutation");
    inv[p] = i;
  }
  nbl_grad_set_dx(gc, 0, nbl_grad_transpose(gc, nbl_grad_dy(gc, 0), cnt, inv));
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

/* Slice: com.microsoft SliceGrad (dY, shape of X, starts, ends, axes, steps). */
static nbl_status g_slice(nbl_grad_ctx *gc) {
  if (!nbl_grad_wants(gc, 0)) return NBL_OK;
  nbl_id in[6] = {nbl_grad_dy(gc, 0), nbl_grad_shape(gc, nbl_grad_x(gc, 0)), NBL_NONE, NBL_NONE,
                  NBL_NONE, NBL_NONE};
  if (nbl_grad_opset(gc, "") >= 10) {
    for (int i = 1; i < 5; i++) in[i + 1] = nbl_grad_x(gc, i);
  } else {
    const char *names[3] = {"starts", "ends", "axes"};
    for (int k = 0; k < 3; k++) {
      int cnt = 0;
      const int64_t *v = nbl_attr_ints(nbl_grad_node(gc), names[k], &cnt);
      if (v) in[k + 2] = nbl_grad_const_i64(gc, cnt, v);
    }
  }
  int n_in = 6;
  while (n_in > 4 && in[n_in - 1] == NBL_NONE) n_in--;
  nbl_grad_set_dx(gc, 0, nbl_grad_op(gc, "SliceGrad", "com.microsoft", n_in, in));
  return nbl_grad_status(gc);
}

/* Expand: dY summed down to the input's shape. */
static nbl_status g_expand(nbl_grad_ctx *gc) {
  if (nbl_grad_wants(gc, 0))
    nbl_grad_set_dx(gc, 0, nbl_grad_unbroadcast(gc, nbl_grad_dy(gc, 0), nbl_grad_x(gc, 0),
                                                nbl_grad_y(gc, 0)));
  return nbl_grad_status(gc);
}

/* ------------------------------------------------------------------ table */

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

/* Slice: starts, ends, axes are attributes before opset 10, inputs 1..3
 * from 10 (with steps, input 4, which the old form cannot say). */
static nbl_status slice_down(nbl_adapt_ctx *c) {
  const nbl_node *n = nbl_adapt_node(c);
  if (n->n_inputs > 4 && n->inputs[4] != NBL_NONE) {
    const nbl_tensor *t = nbl_adapt_const_input(c, 4);
    for (int64_t i = 0; t && i < nbl_tensor_numel(t); i++)
      if (nbl_tensor_get_i64(t, i) != 1) t = NULL;
    if (!t) return nbl_adapt_refuse(c, "steps other than 1 have no form before opset 10");
    nbl_status st = nbl_adapt_set_input(c, 4, NBL_NONE);
    if (st) return st;
  }
  return nbl_adapt_inputs_to_attrs(c);
}

static const nbl_op_adapter slice_steps[] = {
    {.from = 1, .to = 10, .up = nbl_adapt_attrs_to_inputs, .down = slice_down,
     .attr = "starts,ends,axes", .input = 1, .attr_type = NBL_ATTR_INTS},
    {0},
};

const nbl_op_def nbl_ops_shape[] = {
    NBL_OP("Reshape", 1, .ref = k_reshape, .shape = shape_reshape, .stable_since = 5,
        .adapters = reshape_steps, .grad = g_reshape),
    NBL_OP("Flatten", 1, .ref = k_flatten, .shape = shape_flatten, .stable_since = 1, .grad = g_reshape),
    NBL_OP("Squeeze", 1, .ref = k_squeeze, .shape = shape_squeeze, .stable_since = 13,
        .adapters = axes13_steps, .grad = g_reshape),
    NBL_OP("Unsqueeze", 1, .ref = k_unsqueeze, .shape = shape_unsqueeze, .stable_since = 13,
        .adapters = axes13_steps, .grad = g_reshape),
    NBL_OP("Transpose", 1, .ref = k_transpose, .shape = shape_transpose, .stable_since = 1, .grad = g_transpose),
    NBL_OP("Concat", 1, .ref = k_concat, .shape = shape_concat, .stable_since = 4, .grad = g_concat),
    NBL_OP("Split", 1, .ref = k_split, .shape = shape_split, .stable_since = 18,
        .adapters = split_steps, .grad = g_split),
    NBL_OP("Slice", 1, .ref = k_slice, .shape = shape_slice, .stable_since = 10,
        .adapters = slice_steps, .grad = g_slice),
    NBL_OP("Expand", 8, .ref = k_expand, .shape = shape_expand, .stable_since = 8, .grad = g_expand),
    NBL_OP("Tile", 6, .ref = k_tile, .shape = shape_tile, .stable_since = 6, .no_grad = "no rule yet"),
    NBL_OP("DepthToSpace", 1, .ref = k_depth_to_space, .shape = shape_depth_to_space,
        .stable_since = 1, .no_grad = "no rule yet"),
    NBL_OP("SpaceToDepth", 1, .ref = k_space_to_depth, .shape = shape_space_to_depth,
        .stable_since = 1, .no_grad = "no rule yet"),
};
const size_t nbl_ops_shape_count = sizeof nbl_ops_shape / sizeof nbl_ops_shape[0];
