/*
 * runtime/ops/shape.c - op family 'shape': shape and data-movement kernels.
 *
 * Reshape, Flatten, Squeeze, Unsqueeze, Transpose, Concat, Split, Slice,
 * Gather, GatherElements, GatherND, Scatter, ScatterElements, ScatterND,
 * Expand, Tile, Pad, Resize, Upsample, NonZero, OneHot, DepthToSpace,
 * SpaceToDepth, Compress, Trilu, Unique, ReverseSequence.
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

#include "runtime/core/kernel.h"

#define XR (2 * NBL_MAX_RANK + 2) /* rank of internal copy views */

/* ------------------------------------------------------------------ helpers */

/* Input i, or an error if it is missing. */
static nbl_status need_in(nbl_kctx *c, int i, const char *what, const nbl_rt_tensor **t) {
  static const nbl_rt_tensor none = {0};
  *t = &none; /* never NULL, so callers need no second check */
  if (i >= c->n_in || !c->in[i])
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "required input %d (%s) is missing", i, what);
  *t = c->in[i];
  return NBL_OK;
}

static const nbl_rt_tensor *opt_in(nbl_kctx *c, int i) { return i < c->n_in ? c->in[i] : NULL; }

/* Element size of t for byte-moving kernels; 0 (with message) if unsupported. */
static size_t esize(nbl_kctx *c, const nbl_rt_tensor *t, const char *what) {
  size_t es = nbl_rt_elem_size(t->dtype);
  if (es == 0)
    nbl_kerr(c, NBL_ERR_UNSUPPORTED, "%s: element type %s is not supported by this op", what,
             nbl_dtype_name(t->dtype));
  return es;
}

static int is_int_type(nbl_dtype dt) {
  switch (dt) {
  case NBL_DT_INT8: case NBL_DT_INT16: case NBL_DT_INT32: case NBL_DT_INT64:
  case NBL_DT_UINT8: case NBL_DT_UINT16: case NBL_DT_UINT32: case NBL_DT_UINT64: return 1;
  default: return 0;
  }
}

static int is_float_type(nbl_dtype dt) {
  return dt == NBL_DT_FLOAT || dt == NBL_DT_DOUBLE || dt == NBL_DT_FLOAT16 ||
         dt == NBL_DT_BFLOAT16;
}

/* Read an integer tensor (rank 0 or 1) into out[max]; *n = element count. */
static nbl_status read_ints(nbl_kctx *c, const nbl_rt_tensor *t, const char *what, int64_t *out,
                            int max, int *n) {
  if (!is_int_type(t->dtype))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input '%s' must be an integer tensor, got %s", what,
                    nbl_dtype_name(t->dtype));
  if (t->rank > 1)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input '%s' must be 1-D, got rank %d", what, t->rank);
  if (t->numel > max)
    return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "input '%s' has %lld elements, at most %d supported",
                    what, (long long)t->numel, max);
  for (int64_t i = 0; i < t->numel; i++) out[i] = nbl_rt_get_i64(t, i);
  *n = (int)t->numel;
  return NBL_OK;
}

/* Copy the int attribute list `name` into out; *n = count (-1 when absent). */
static nbl_status attr_ints(nbl_kctx *c, const char *name, int64_t *out, int max, int *n) {
  int cnt = 0;
  const int64_t *v = nbl_attr_ints(c->node, name, &cnt);
  if (!v && !nbl_node_attr(c->node, name)) {
    *n = -1;
    return NBL_OK;
  }
  if (cnt > max)
    return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "attribute '%s' has %d values, at most %d supported",
                    name, cnt, max);
  for (int i = 0; i < cnt; i++) out[i] = v[i];
  *n = cnt;
  return NBL_OK;
}

/* Replace each string pointer of o (copied from an input) by a private copy. */
static nbl_status dup_strings(nbl_kctx *c, nbl_rt_tensor *o) {
  if (o->dtype != NBL_DT_STRING) return NBL_OK;
  char **s = o->data;
  for (int64_t i = 0; i < o->numel; i++) {
    const char *src = s[i] ? s[i] : "";
    size_t n = strlen(src);
    char *d = malloc(n + 1);
    if (!d) {
      for (int64_t j = i; j < o->numel; j++) s[j] = NULL;
      return nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory copying strings");
    }
    memcpy(d, src, n + 1);
    s[i] = d;
  }
  return NBL_OK;
}

/* Output i as a copy of the bytes of `in` with a new shape (same numel). */
static nbl_status out_same_bytes(nbl_kctx *c, const nbl_rt_tensor *in, int rank, const int64_t *dims) {
  nbl_status st = nbl_kctx_alloc_out(c, 0, in->dtype, rank, dims);
  if (st) return st;
  nbl_rt_tensor *o = nbl_kctx_out(c, 0);
  if (o->nbytes && in->nbytes) memcpy(o->data, in->data, o->nbytes < in->nbytes ? o->nbytes : in->nbytes);
  return dup_strings(c, o);
}

/* On failure after string pointers were copied (not yet duplicated) into o:
 * forget them so freeing o does not free the input's strings. */
static nbl_status clear_strings(nbl_rt_tensor *o) {
  if (o->dtype == NBL_DT_STRING && o->data) memset(o->data, 0, o->nbytes);
  return NBL_ERR_RUNTIME;
}

static inline void ecpy(char *d, const char *s, size_t es) {
  switch (es) {
  case 1: *d = *s; break;
  case 2: memcpy(d, s, 2); break;
  case 4: memcpy(d, s, 4); break;
  case 8: memcpy(d, s, 8); break;
  default: memcpy(d, s, es);
  }
}

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

/* Linear offset of coordinates idx under strides str. */
static inline int64_t lin(int rank, const int64_t *idx, const int64_t *str) {
  int64_t o = 0;
  for (int d = 0; d < rank; d++) o += idx[d] * str[d];
  return o;
}

/* Advance a row-major counter; returns 0 when it wrapped around. */
static inline int next_idx(int rank, int64_t *idx, const int64_t *dims) {
  for (int d = rank - 1; d >= 0; d--) {
    if (++idx[d] < dims[d]) return 1;
    idx[d] = 0;
  }
  return 0;
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
  int seen[NBL_MAX_RANK] = {0};
  for (int d = 0; d < r; d++) {
    st_[d] = 0;
    stp[d] = 1;
    od[d] = x->dims[d];
  }
  for (int i = 0; i < ns; i++) {
    int64_t a = na >= 0 ? axes[i] : i;
    int ax = nbl_norm_axis(a, r);
    if (ax < 0) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "axis %lld out of range for rank %d", (long long)a, r);
    if (seen[ax]) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "axis %d is sliced twice", ax);
    seen[ax] = 1;
    int64_t step = nst >= 0 ? steps[i] : 1;
    if (step == 0) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "step for axis %d is 0", ax);
    int64_t dim = x->dims[ax], s = starts[i], e = ends[i];
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
    st_[ax] = s;
    stp[ax] = step;
    od[ax] = len;
  }
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

/* ------------------------------------------------------------------ Gather family */

/* Index value i of t, normalized against dim; -1 (message set) when out of range. */
static int fetch_index(nbl_kctx *c, const nbl_rt_tensor *t, int64_t i, int64_t dim, int64_t *out) {
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
      if (fetch_index(c, ind, j, dim, &v)) return clear_strings(o);
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
    if (fetch_index(c, ind, i, x->dims[axis], &v)) return clear_strings(o);
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
        if (fetch_index(c, ind, base + t, x->dims[b + t], &v)) return clear_strings(o);
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
    if (fetch_index(c, ind, i, x->dims[axis], &v)) {
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
      if (fetch_index(c, ind, j * k + t, x->dims[t], &v)) {
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

/* ------------------------------------------------------------------ Pad */

enum { PAD_CONSTANT, PAD_REFLECT, PAD_EDGE, PAD_WRAP };

/* Source index for output position i of a padded axis (input length n, pad
 * before pb); -1 means "constant". */
static inline int64_t pad_src(int64_t i, int64_t pb, int64_t n, int mode) {
  int64_t s = i - pb;
  if (s >= 0 && s < n) return s;
  switch (mode) {
  case PAD_EDGE: return s < 0 ? 0 : n - 1;
  case PAD_WRAP: {
    int64_t m = s % n;
    return m < 0 ? m + n : m;
  }
  case PAD_REFLECT: {
    if (n == 1) return 0;
    int64_t p = 2 * (n - 1);
    int64_t m = s % p;
    if (m < 0) m += p;
    return m >= n ? p - m : m;
  }
  default: return -1;
  }
}

static nbl_status k_pad(nbl_kctx *c) {
  const nbl_rt_tensor *x;
  nbl_status st = need_in(c, 0, "data", &x);
  if (st) return st;
  size_t es = esize(c, x, "data");
  if (!es) return NBL_ERR_UNSUPPORTED;
  int r = x->rank;
  const char *ms = nbl_attr_string(c->node, "mode", "constant");
  int mode;
  if (!strcmp(ms, "constant")) mode = PAD_CONSTANT;
  else if (!strcmp(ms, "reflect")) mode = PAD_REFLECT;
  else if (!strcmp(ms, "edge")) mode = PAD_EDGE;
  else if (!strcmp(ms, "wrap")) mode = PAD_WRAP;
  else return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "pad mode '%s' is not supported", ms);
  int64_t pads[2 * NBL_MAX_RANK], axes[NBL_MAX_RANK];
  int np = 0, na = -1;
  /* the constant, as one element of x's type */
  char cval[16] = {0};
  const char *empty = "";
  if (x->dtype == NBL_DT_STRING) memcpy(cval, &empty, sizeof empty);
  if (c->opset < 11) {
    if ((st = attr_ints(c, c->opset < 2 ? "paddings" : "pads", pads, 2 * NBL_MAX_RANK, &np))) return st;
    if (np < 0) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "attribute 'pads' is missing");
    float v = nbl_attr_float(c->node, "value", 0.0f);
    if (x->dtype != NBL_DT_STRING) {
      nbl_rt_tensor tmp = {0};
      tmp.dtype = x->dtype;
      tmp.data = cval;
      nbl_rt_set_f64(&tmp, 0, v);
    }
  } else {
    const nbl_rt_tensor *p, *cv = opt_in(c, 2), *ax = c->opset >= 18 ? opt_in(c, 3) : NULL;
    if ((st = need_in(c, 1, "pads", &p)) || (st = read_ints(c, p, "pads", pads, 2 * NBL_MAX_RANK, &np)))
      return st;
    if (cv && cv->numel > 0) {
      if (cv->dtype != x->dtype)
        return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "constant_value type %s differs from data type %s",
                        nbl_dtype_name(cv->dtype), nbl_dtype_name(x->dtype));
      memcpy(cval, cv->data, es);
    }
    if (ax && (st = read_ints(c, ax, "axes", axes, NBL_MAX_RANK, &na))) return st;
  }
  int64_t pb[NBL_MAX_RANK] = {0}, pe[NBL_MAX_RANK] = {0};
  if (na >= 0) {
    if (np != 2 * na) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "pads has %d entries for %d axes", np, na);
    for (int i = 0; i < na; i++) {
      int a = nbl_norm_axis(axes[i], r);
      if (a < 0) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "axis %lld out of range for rank %d", (long long)axes[i], r);
      pb[a] = pads[i];
      pe[a] = pads[na + i];
    }
  } else {
    if (np != 2 * r) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "pads has %d entries, expected %d", np, 2 * r);
    for (int i = 0; i < r; i++) {
      pb[i] = pads[i];
      pe[i] = pads[r + i];
    }
  }
  int64_t od[NBL_MAX_RANK];
  for (int d = 0; d < r; d++) {
    od[d] = x->dims[d] + pb[d] + pe[d];
    if (od[d] < 0) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "pads make axis %d negative", d);
    if (mode != PAD_CONSTANT && x->dims[d] == 0 && od[d] > 0)
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "cannot %s-pad empty axis %d", ms, d);
  }
  if ((st = nbl_kctx_alloc_out(c, 0, x->dtype, r, od))) return st;
  nbl_rt_tensor *o = nbl_kctx_out(c, 0);
  if (o->numel == 0) return NBL_OK;
  if (r == 0) {
    memcpy(o->data, x->data, es);
    return dup_strings(c, o);
  }
  int64_t str[NBL_MAX_RANK], idx[NBL_MAX_RANK] = {0};
  nbl_strides(r, x->dims, str);
  int L = r - 1;
  int64_t orow = od[L], n = x->dims[L];
  int64_t rows = o->numel / orow;
  /* middle part of each row copied with memcpy */
  int64_t j0 = pb[L] > 0 ? pb[L] : 0, j1 = pb[L] + n < orow ? pb[L] + n : orow;
  char *dp = o->data;
  for (int64_t q = 0; q < rows; q++, dp += orow * (int64_t)es) {
    int64_t off = 0;
    int cst = 0;
    for (int d = 0; d < L; d++) {
      int64_t s = pad_src(idx[d], pb[d], x->dims[d], mode);
      if (s < 0) cst = 1;
      else off += s * str[d];
    }
    next_idx(L, idx, od);
    const char *sp = (const char *)x->data + off * (int64_t)es;
    if (cst) {
      for (int64_t j = 0; j < orow; j++) memcpy(dp + j * (int64_t)es, cval, es);
      continue;
    }
    for (int64_t j = 0; j < orow; j++) {
      if (j == j0 && j1 > j0) {
        memcpy(dp + j * (int64_t)es, sp + (j - pb[L]) * (int64_t)es, (size_t)(j1 - j0) * es);
        j = j1 - 1;
        continue;
      }
      int64_t s = pad_src(j, pb[L], n, mode);
      memcpy(dp + j * (int64_t)es, s < 0 ? cval : sp + s * (int64_t)es, es);
    }
  }
  return dup_strings(c, o);
}

/* ------------------------------------------------------------------ Resize / Upsample */

enum { RS_NEAREST, RS_LINEAR, RS_CUBIC };
enum { CT_HALF_PIXEL, CT_HALF_PIXEL_SYM, CT_PYTORCH_HALF_PIXEL, CT_ALIGN_CORNERS, CT_ASYMMETRIC,
       CT_TF_HALF_PIXEL_NN, CT_TF_CROP_AND_RESIZE };
enum { NM_ROUND_PREFER_FLOOR, NM_ROUND_PREFER_CEIL, NM_FLOOR, NM_CEIL, NM_SIMPLE };

typedef struct rs_params {
  int mode, ctm, nearest, exclude_outside, antialias;
  double cubic_a, extrapolation;
} rs_params;

/* Taps of one output position along one axis. */
typedef struct rs_taps {
  int n;       /* 0: extrapolate */
  int64_t first; /* index of the first tap (window may extend outside; clamp on use) */
  double w[1];   /* n weights follow (flexible) */
} rs_taps;

static double cubic_w(double x, double A) {
  x = fabs(x);
  if (x <= 1) return ((A + 2) * x - (A + 3)) * x * x + 1;
  if (x < 2) return ((A * x - 5 * A) * x + 8 * A) * x - 4 * A;
  return 0;
}

/* Original coordinate of output position x along an axis. */
static double rs_coord(const rs_params *p, double x, double scale, int64_t in, int64_t out,
                       double roi0, double roi1) {
  double ow = scale * (double)in; /* the reference uses the unrounded output length */
  switch (p->ctm) {
  case CT_HALF_PIXEL: return (x + 0.5) / scale - 0.5;
  case CT_HALF_PIXEL_SYM: {
    double adj = (double)out / ow, center = (double)in / 2, off = center * (1 - adj);
    return off + (x + 0.5) / scale - 0.5;
  }
  case CT_PYTORCH_HALF_PIXEL: return ow > 1 ? (x + 0.5) / scale - 0.5 : -0.5;
  case CT_ALIGN_CORNERS: return ow == 1 ? 0 : x * (double)(in - 1) / (ow - 1);
  case CT_ASYMMETRIC: return x / scale;
  case CT_TF_HALF_PIXEL_NN: return (x + 0.5) / scale;
  default: /* tf_crop_and_resize */
    if (ow == 1) return (roi1 - roi0) * (double)(in - 1) / 2 + roi0 * (double)(in - 1);
    return x * (roi1 - roi0) * (double)(in - 1) / (ow - 1) + roi0 * (double)(in - 1);
  }
}

/* Fill taps for one output position; returns the tap count (0: extrapolate). */
static int rs_make_taps(const rs_params *p, double x, double scale, int64_t in, int64_t out,
                        double roi0, double roi1, int maxn, int64_t *first, double *w) {
  double xo = rs_coord(p, x, scale, in, out, roi0, roi1);
  if (p->ctm == CT_TF_CROP_AND_RESIZE && (xo < 0 || xo > (double)(in - 1))) return 0;
  double fl = floor(xo);
  int64_t xi = (int64_t)fl;
  double ratio = xo - fl;
  if (ratio == 0) { /* prefer the left neighbour: ratio in (0, 1] */
    xi -= 1;
    ratio = 1;
  }
  if (p->mode == RS_NEAREST) {
    int right;
    if (ratio == 1) right = 1;
    else switch (p->nearest) {
      case NM_ROUND_PREFER_FLOOR: right = ratio > 0.5; break;
      case NM_ROUND_PREFER_CEIL: right = ratio >= 0.5; break;
      case NM_FLOOR: right = 0; break;
      case NM_CEIL: right = 1; break;
      default: right = scale < 1; break; /* simple: ceil when downsampling, else floor */
      }
    *first = xi + right;
    w[0] = 1;
    return 1;
  }
  double s = p->antialias && scale < 1 ? scale : 1;
  int n;
  if (p->mode == RS_LINEAR) {
    int64_t start = (int64_t)floor(-1 / s) + 1;
    n = (int)(2 - 2 * start);
    if (n > maxn) n = maxn;
    for (int i = 0; i < n; i++) {
      double a = fabs(((double)(start + i) - ratio) * s);
      w[i] = a < 1 ? 1 - a : 0;
    }
    *first = xi + start;
  } else {
    int64_t start = (int64_t)floor(-2 / s) + 1;
    n = (int)(2 - 2 * start);
    if (n > maxn) n = maxn;
    for (int i = 0; i < n; i++) w[i] = cubic_w(((double)(start + i) - ratio) * s, p->cubic_a);
    *first = xi + start;
  }
  if (p->exclude_outside)
    for (int i = 0; i < n; i++)
      if (*first + i < 0 || *first + i >= in) w[i] = 0;
  if (p->exclude_outside || s < 1) {
    double sum = 0;
    for (int i = 0; i < n; i++) sum += w[i];
    if (sum != 0)
      for (int i = 0; i < n; i++) w[i] /= sum;
  }
  return n;
}

static inline int64_t clampi(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : v > hi ? hi : v; }

/* One separable pass along an axis: a [outer][in][inner] -> b [outer][out][inner]. */
typedef struct rs_pass {
  const double *a;
  double *b;
  const int64_t *first;
  const int *cnt;
  const double *w;
  int maxt;
  int64_t in, out, inner;
  double extrapolation;
} rs_pass;

static void rs_pass_rows(void *arg, int64_t q0, int64_t q1) {
  const rs_pass *ps = arg;
  int64_t in = ps->in, out = ps->out, inner = ps->inner;
  for (int64_t q = q0; q < q1; q++)
    for (int64_t i = 0; i < out; i++) {
      double *bp = ps->b + (q * out + i) * inner;
      const double *wi = ps->w + i * ps->maxt;
      int n = ps->cnt[i];
      if (n == 0) {
        for (int64_t e = 0; e < inner; e++) bp[e] = ps->extrapolation;
        continue;
      }
      if (inner == 1) { /* innermost axis: a dot product per output */
        const double *ap = ps->a + q * in;
        double acc = 0;
        for (int k = 0; k < n; k++)
          if (wi[k] != 0) acc += wi[k] * ap[clampi(ps->first[i] + k, 0, in - 1)];
        bp[0] = acc;
        continue;
      }
      int started = 0;
      for (int k = 0; k < n; k++) {
        double wk = wi[k];
        if (wk == 0) continue;
        const double *ap = ps->a + (q * in + clampi(ps->first[i] + k, 0, in - 1)) * inner;
        if (!started) {
          for (int64_t e = 0; e < inner; e++) bp[e] = wk * ap[e];
          started = 1;
        } else {
          for (int64_t e = 0; e < inner; e++) bp[e] += wk * ap[e];
        }
      }
      if (!started)
        for (int64_t e = 0; e < inner; e++) bp[e] = 0;
    }
}

/* Direct (non-separable) linear/cubic: each output is the tensor-product sum
 * over the taps of the resized axes. No intermediate buffers; used when the
 * taps per output are few (the common 2-4 taps per axis). */
typedef struct rs_direct {
  const nbl_rt_tensor *x;
  nbl_rt_tensor *o;
  int r, k;             /* rank, number of resized axes */
  int ax[NBL_MAX_RANK]; /* the resized axes */
  int64_t istr[NBL_MAX_RANK];
  const int64_t *od;
  int64_t *first[NBL_MAX_RANK];
  int *cnt[NBL_MAX_RANK];
  double *w[NBL_MAX_RANK];
  int64_t *src[NBL_MAX_RANK]; /* clamped tap index times the input stride */
  int maxt;
  int resized[NBL_MAX_RANK];
  double extrapolation;
  int int_out;
} rs_direct;

static void rs_direct_rows(void *arg, int64_t q0, int64_t q1) {
  const rs_direct *j = arg;
  int r = j->r, L = r - 1, M = j->maxt;
  int64_t olast = j->od[L], idx[NBL_MAX_RANK] = {0};
  int64_t rem = q0;
  for (int d = L - 1; d >= 0; d--) {
    idx[d] = rem % j->od[d];
    rem /= j->od[d];
  }
  const float *xf = j->x->dtype == NBL_DT_FLOAT ? j->x->data : NULL;
  float *of = j->o->dtype == NBL_DT_FLOAT ? j->o->data : NULL;
  int64_t roff[64];
  double rw[64];
  int kr = j->k - (j->resized[L] ? 1 : 0); /* resized axes before the last one */
  for (int64_t q = q0; q < q1; q++) {
    /* the row's combinations over the resized outer axes */
    int64_t base = 0;
    int ext = 0, nrc = 0;
    for (int d = 0; d < L; d++)
      if (!j->resized[d]) base += idx[d] * j->istr[d];
      else if (j->cnt[d][idx[d]] == 0) ext = 1;
    if (!ext) {
      int t[NBL_MAX_RANK] = {0};
      for (;;) {
        double wt = 1;
        int64_t off = base;
        for (int a = 0; a < kr; a++) {
          int d = j->ax[a];
          wt *= j->w[d][idx[d] * M + t[a]];
          off += j->src[d][idx[d] * M + t[a]];
        }
        if (wt != 0 && nrc < 64) {
          roff[nrc] = off;
          rw[nrc++] = wt;
        }
        int a = kr - 1;
        while (a >= 0 && ++t[a] >= j->cnt[j->ax[a]][idx[j->ax[a]]]) t[a--] = 0;
        if (a < 0) break;
      }
    }
    for (int64_t e = 0; e < olast; e++) {
      double acc = j->extrapolation;
      if (!ext && (!j->resized[L] || j->cnt[L][e] > 0)) {
        acc = 0;
        for (int rc = 0; rc < nrc; rc++) {
          int64_t o0 = roff[rc];
          double v;
          if (!j->resized[L]) {
            int64_t off = o0 + e * j->istr[L];
            v = xf ? (double)xf[off] : nbl_rt_get_f64(j->x, off);
          } else {
            v = 0;
            const double *we = j->w[L] + e * M;
            const int64_t *se = j->src[L] + e * M;
            for (int t = 0; t < j->cnt[L][e]; t++)
              if (we[t] != 0) v += we[t] * (xf ? (double)xf[o0 + se[t]] : nbl_rt_get_f64(j->x, o0 + se[t]));
          }
          acc += rw[rc] * v;
        }
      }
      int64_t oi = q * olast + e;
      if (of) {
        of[oi] = (float)acc;
      } else {
        if (j->int_out) {
          acc = nearbyint(acc);
          nbl_dtype dt = j->o->dtype;
          double lo = dt == NBL_DT_UINT8 ? 0 : dt == NBL_DT_INT8 ? -128 : -INFINITY;
          double hi = dt == NBL_DT_UINT8 ? 255 : dt == NBL_DT_INT8 ? 127 : INFINITY;
          acc = acc < lo ? lo : acc > hi ? hi : acc;
        }
        nbl_rt_set_f64(j->o, oi, acc);
      }
    }
    next_idx(L, idx, j->od);
  }
}

/* Core of Resize/Upsample once output sizes and per-axis scales are known. */
static nbl_status resize_run(nbl_kctx *c, const nbl_rt_tensor *x, const rs_params *p,
                             const int64_t *od, const double *scales, const double *roi) {
  int r = x->rank;
  nbl_status st = nbl_kctx_alloc_out(c, 0, x->dtype, r, od);
  if (st) return st;
  nbl_rt_tensor *o = nbl_kctx_out(c, 0);
  if (o->numel == 0) return NBL_OK;
  if (r == 0) {
    memcpy(o->data, x->data, o->nbytes);
    return dup_strings(c, o);
  }
  for (int d = 0; d < r; d++)
    if (x->dims[d] == 0) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "cannot resize empty axis %d to %lld", d, (long long)od[d]);
  if (p->mode == RS_NEAREST) {
    size_t es = esize(c, x, "X");
    if (!es) return NBL_ERR_UNSUPPORTED;
    /* per-axis source index maps (-1: extrapolate) */
    int64_t tot = 0;
    for (int d = 0; d < r; d++) tot += od[d];
    int64_t *map = malloc((size_t)(tot ? tot : 1) * sizeof *map), *mp[NBL_MAX_RANK];
    if (!map) return nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory");
    int64_t str[NBL_MAX_RANK], off = 0;
    nbl_strides(r, x->dims, str);
    for (int d = 0; d < r; d++) {
      mp[d] = map + off;
      off += od[d];
      for (int64_t i = 0; i < od[d]; i++) {
        int64_t f;
        double w;
        int n = rs_make_taps(p, (double)i, scales[d], x->dims[d], od[d], roi[d], roi[r + d], 1, &f, &w);
        mp[d][i] = n ? clampi(f, 0, x->dims[d] - 1) * str[d] : -1;
      }
    }
    char ext[16] = {0};
    if (x->dtype == NBL_DT_STRING) {
      const char *e = "";
      memcpy(ext, &e, sizeof e);
    } else {
      nbl_rt_tensor tmp = {0};
      tmp.dtype = x->dtype;
      tmp.data = ext;
      nbl_rt_set_f64(&tmp, 0, p->extrapolation);
    }
    int64_t idx[NBL_MAX_RANK] = {0};
    int L = r - 1;
    char *dp = o->data;
    if (r == 0) {
      memcpy(dp, x->data, es);
    } else {
      int64_t rows = o->numel / od[L];
      for (int64_t q = 0; q < rows; q++) {
        int64_t base = 0;
        int e = 0;
        for (int d = 0; d < L; d++) {
          if (mp[d][idx[d]] < 0) e = 1;
          else base += mp[d][idx[d]];
        }
        next_idx(L, idx, od);
        for (int64_t j = 0; j < od[L]; j++, dp += es) {
          int64_t m = mp[L][j];
          ecpy(dp, (e || m < 0) ? ext : (const char *)x->data + (base + m) * (int64_t)es, es);
        }
      }
    }
    free(map);
    return dup_strings(c, o);
  }
  /* linear / cubic: separable passes in double precision */
  if (!(is_float_type(x->dtype) || is_int_type(x->dtype)))
    return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "%s interpolation of element type %s",
                    p->mode == RS_LINEAR ? "linear" : "cubic", nbl_dtype_name(x->dtype));
  {
    enum { DT = 16 };
    rs_direct j = {0};
    j.x = x;
    j.o = o;
    j.r = r;
    j.od = od;
    j.maxt = DT;
    j.extrapolation = p->extrapolation;
    j.int_out = is_int_type(o->dtype);
    nbl_strides(r, x->dims, j.istr);
    int64_t combos = 1;
    nbl_status dst = NBL_OK;
    for (int d = 0; d < r && combos <= 64; d++) {
      int64_t in = x->dims[d], out = od[d];
      j.first[d] = malloc((size_t)out * sizeof(int64_t));
      j.cnt[d] = malloc((size_t)out * sizeof(int));
      j.w[d] = malloc((size_t)out * DT * sizeof(double));
      j.src[d] = malloc((size_t)out * DT * sizeof(int64_t));
      if (!j.first[d] || !j.cnt[d] || !j.w[d] || !j.src[d]) {
        dst = nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory");
        break;
      }
      int identity = in == out, maxn = 1;
      for (int64_t i = 0; i < out; i++) {
        int n = rs_make_taps(p, (double)i, scales[d], in, out, roi[d], roi[r + d], DT + 1, &j.first[d][i],
                             j.w[d] + i * DT);
        if (n > DT) { /* too many taps: use the separable passes */
          combos = 65;
          break;
        }
        j.cnt[d][i] = n;
        for (int k = 0; k < n; k++) j.src[d][i * DT + k] = clampi(j.first[d][i] + k, 0, in - 1) * j.istr[d];
        if (n > maxn) maxn = n;
        if (n == 0) identity = 0;
        for (int k = 0; k < n && identity; k++) {
          double wk = j.w[d][i * DT + k];
          if (wk != 0 && (clampi(j.first[d][i] + k, 0, in - 1) != i || wk != 1)) identity = 0;
        }
      }
      if (!identity) {
        j.resized[d] = 1;
        j.ax[j.k++] = d;
        combos *= maxn;
      }
    }
    if (!dst && combos <= 64) {
      int64_t rows = o->numel / od[r - 1];
      if (o->numel < (1 << 14) || c->threads <= 1) rs_direct_rows(&j, 0, rows);
      else nbl_parallel_for(c, rows, 1, rs_direct_rows, &j);
    }
    for (int d = 0; d < r; d++) free(j.first[d]), free(j.cnt[d]), free(j.w[d]), free(j.src[d]);
    if (dst || combos <= 64) return dst;
  }
  int64_t cur[NBL_MAX_RANK];
  int64_t n0 = x->numel;
  double *a = malloc((size_t)n0 * sizeof *a);
  if (!a) return nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory");
  if (x->dtype == NBL_DT_FLOAT)
    for (int64_t i = 0; i < n0; i++) a[i] = ((const float *)x->data)[i];
  else
    for (int64_t i = 0; i < n0; i++) a[i] = nbl_rt_get_f64(x, i);
  for (int d = 0; d < r; d++) cur[d] = x->dims[d];
  enum { MAXT = 64 };
  for (int d = 0; d < r; d++) {
    int64_t in = x->dims[d], out = od[d];
    /* taps for this axis */
    int64_t *first = malloc((size_t)out * sizeof *first);
    int *cnt = malloc((size_t)out * sizeof *cnt);
    double *w = malloc((size_t)out * MAXT * sizeof *w);
    if (!first || !cnt || !w) {
      free(first), free(cnt), free(w), free(a);
      return nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory");
    }
    int identity = in == out;
    for (int64_t i = 0; i < out; i++) {
      cnt[i] = rs_make_taps(p, (double)i, scales[d], in, out, roi[d], roi[r + d], MAXT, &first[i], w + i * MAXT);
      if (identity) { /* one weight of 1 on index i, all others 0 */
        for (int k = 0; k < cnt[i] && identity; k++) {
          int64_t src = clampi(first[i] + k, 0, in - 1);
          double wk = w[i * MAXT + k];
          if (wk != 0 && (src != i || wk != 1)) identity = 0;
        }
        if (cnt[i] == 0) identity = 0;
      }
    }
    if (identity) {
      free(first), free(cnt), free(w);
      continue;
    }
    int64_t outer = 1, inner = 1;
    for (int k = 0; k < d; k++) outer *= cur[k];
    for (int k = d + 1; k < r; k++) inner *= cur[k];
    int64_t nb = outer * out * inner;
    double *b = malloc((size_t)(nb > 0 ? nb : 1) * sizeof *b);
    if (!b) {
      free(first), free(cnt), free(w), free(a);
      return nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory");
    }
    rs_pass ps = {a, b, first, cnt, w, MAXT, in, out, inner, p->extrapolation};
    if (outer * out * inner < (1 << 16) || c->threads <= 1) rs_pass_rows(&ps, 0, outer);
    else nbl_parallel_for(c, outer, 1, rs_pass_rows, &ps);
    free(first), free(cnt), free(w), free(a);
    a = b;
    cur[d] = out;
  }
  if (o->dtype == NBL_DT_FLOAT) {
    float *op = o->data;
    for (int64_t i = 0; i < o->numel; i++) op[i] = (float)a[i];
    free(a);
    return NBL_OK;
  }
  for (int64_t i = 0; i < o->numel; i++) {
    double v = a[i];
    if (is_int_type(o->dtype)) { /* round to nearest and saturate like the reference runtimes */
      v = nearbyint(v);
      double lo = o->dtype == NBL_DT_UINT8 ? 0 : o->dtype == NBL_DT_INT8 ? -128 : -INFINITY;
      double hi = o->dtype == NBL_DT_UINT8 ? 255 : o->dtype == NBL_DT_INT8 ? 127 : INFINITY;
      v = v < lo ? lo : v > hi ? hi : v;
    }
    nbl_rt_set_f64(o, i, v);
  }
  free(a);
  return NBL_OK;
}

static nbl_status k_resize(nbl_kctx *c) {
  const nbl_rt_tensor *x;
  nbl_status st = need_in(c, 0, "X", &x);
  if (st) return st;
  int r = x->rank;
  rs_params p = {0};
  const char *m = nbl_attr_string(c->node, "mode", "nearest");
  if (!strcmp(m, "nearest")) p.mode = RS_NEAREST;
  else if (!strcmp(m, "linear") || !strcmp(m, "bilinear") || !strcmp(m, "trilinear")) p.mode = RS_LINEAR;
  else if (!strcmp(m, "cubic") && c->opset >= 11) p.mode = RS_CUBIC;
  else return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "mode '%s' is not supported", m);
  int upsample = strcmp(c->node->op_type, "Upsample") == 0;
  const nbl_rt_tensor *roi_t = NULL, *sc_t = NULL, *sz_t = NULL;
  double scales[NBL_MAX_RANK], roi[2 * NBL_MAX_RANK];
  int64_t od[NBL_MAX_RANK];
  for (int d = 0; d < r; d++) {
    scales[d] = 1;
    roi[d] = 0;
    roi[r + d] = 1;
    od[d] = x->dims[d];
  }
  if (upsample || c->opset < 11) {
    p.ctm = CT_ASYMMETRIC;
    p.nearest = upsample ? NM_FLOOR : NM_SIMPLE;
    if (upsample && c->opset < 9) {
      int n = 0;
      const float *f = nbl_attr_floats(c->node, "scales", &n);
      if (!f || n != r) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "attribute 'scales' must have %d values", r);
      for (int d = 0; d < r; d++) scales[d] = f[d];
    } else {
      if ((st = need_in(c, 1, "scales", &sc_t))) return st;
    }
  } else {
    const char *ct = nbl_attr_string(c->node, "coordinate_transformation_mode", "half_pixel");
    if (!strcmp(ct, "half_pixel")) p.ctm = CT_HALF_PIXEL;
    else if (!strcmp(ct, "half_pixel_symmetric") && c->opset >= 19) p.ctm = CT_HALF_PIXEL_SYM;
    else if (!strcmp(ct, "pytorch_half_pixel")) p.ctm = CT_PYTORCH_HALF_PIXEL;
    else if (!strcmp(ct, "align_corners")) p.ctm = CT_ALIGN_CORNERS;
    else if (!strcmp(ct, "asymmetric")) p.ctm = CT_ASYMMETRIC;
    else if (!strcmp(ct, "tf_half_pixel_for_nn") && c->opset < 13) p.ctm = CT_TF_HALF_PIXEL_NN;
    else if (!strcmp(ct, "tf_crop_and_resize")) p.ctm = CT_TF_CROP_AND_RESIZE;
    else return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "coordinate_transformation_mode '%s' is not valid at opset %d", ct, c->opset);
    const char *nm = nbl_attr_string(c->node, "nearest_mode", "round_prefer_floor");
    if (!strcmp(nm, "round_prefer_floor")) p.nearest = NM_ROUND_PREFER_FLOOR;
    else if (!strcmp(nm, "round_prefer_ceil")) p.nearest = NM_ROUND_PREFER_CEIL;
    else if (!strcmp(nm, "floor")) p.nearest = NM_FLOOR;
    else if (!strcmp(nm, "ceil")) p.nearest = NM_CEIL;
    else return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "nearest_mode '%s' is not valid", nm);
    p.cubic_a = nbl_attr_float(c->node, "cubic_coeff_a", -0.75f);
    p.exclude_outside = (int)nbl_attr_int(c->node, "exclude_outside", 0);
    p.extrapolation = nbl_attr_float(c->node, "extrapolation_value", 0.0f);
    p.antialias = c->opset >= 18 ? (int)nbl_attr_int(c->node, "antialias", 0) : 0;
    roi_t = opt_in(c, 1);
    sc_t = opt_in(c, 2);
    sz_t = opt_in(c, 3);
    if (sc_t && sc_t->numel == 0) sc_t = NULL;
    if (roi_t && roi_t->numel == 0) roi_t = NULL;
    if (sz_t && sz_t->numel == 0) sz_t = NULL;
    if (!!sc_t == !!sz_t)
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "exactly one of 'scales' and 'sizes' must be given");
  }
  /* axes (opset 18) */
  int axes[NBL_MAX_RANK], na = r;
  for (int d = 0; d < r; d++) axes[d] = d;
  if (!upsample && c->opset >= 18) {
    int64_t av[NBL_MAX_RANK];
    int n;
    if ((st = attr_ints(c, "axes", av, NBL_MAX_RANK, &n))) return st;
    if (n >= 0) {
      na = n;
      int seen[NBL_MAX_RANK] = {0};
      for (int i = 0; i < n; i++) {
        axes[i] = nbl_norm_axis(av[i], r);
        if (axes[i] < 0 || seen[axes[i]])
          return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "axes[%d] = %lld is invalid for rank %d", i, (long long)av[i], r);
        seen[axes[i]] = 1;
      }
    }
  }
  if (roi_t && p.ctm == CT_TF_CROP_AND_RESIZE) {
    if (roi_t->numel != 2 * na || !is_float_type(roi_t->dtype))
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "roi must hold %d floats", 2 * na);
    for (int i = 0; i < na; i++) {
      roi[axes[i]] = nbl_rt_get_f64(roi_t, i);
      roi[r + axes[i]] = nbl_rt_get_f64(roi_t, na + i);
    }
  }
  if (sc_t) {
    if (sc_t->dtype != NBL_DT_FLOAT && sc_t->dtype != NBL_DT_DOUBLE && sc_t->dtype != NBL_DT_FLOAT16)
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "scales must be float, got %s", nbl_dtype_name(sc_t->dtype));
    if (sc_t->numel != na)
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "scales has %lld values, expected %d", (long long)sc_t->numel, na);
    for (int i = 0; i < na; i++) scales[axes[i]] = nbl_rt_get_f64(sc_t, i);
  }
  if (!sz_t) {
    for (int d = 0; d < r; d++) {
      if (!(scales[d] > 0)) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "scale %g for axis %d is not positive", scales[d], d);
      double len = (double)x->dims[d] * scales[d];
      /* the spec text multiplies by the roi extent; the ONNX reference and
       * ONNX Runtime do not, and they decide the test data */
      od[d] = (int64_t)floor(len);
    }
  } else {
    int64_t sz[NBL_MAX_RANK];
    int n;
    if ((st = read_ints(c, sz_t, "sizes", sz, NBL_MAX_RANK, &n))) return st;
    if (n != na) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "sizes has %d values, expected %d", n, na);
    const char *pol = c->opset >= 18 ? nbl_attr_string(c->node, "keep_aspect_ratio_policy", "stretch") : "stretch";
    int stretch = !strcmp(pol, "stretch"), nl = !strcmp(pol, "not_larger"), ns = !strcmp(pol, "not_smaller");
    if (!stretch && !nl && !ns)
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "keep_aspect_ratio_policy '%s' is not valid", pol);
    for (int i = 0; i < na; i++)
      if (sz[i] < 0) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "sizes[%d] is negative", i);
    if (stretch) {
      for (int i = 0; i < na; i++) {
        int d = axes[i];
        od[d] = sz[i];
        if (x->dims[d] > 0) scales[d] = (double)sz[i] / (double)x->dims[d];
      }
    } else {
      double s = nl ? INFINITY : 0;
      for (int i = 0; i < na; i++) {
        double v = x->dims[axes[i]] > 0 ? (double)sz[i] / (double)x->dims[axes[i]] : 1;
        s = nl ? (v < s ? v : s) : (v > s ? v : s);
      }
      for (int i = 0; i < na; i++) {
        int d = axes[i];
        scales[d] = s;
        od[d] = (int64_t)floor(s * (double)x->dims[d] + 0.5);
      }
    }
  }
  return resize_run(c, x, &p, od, scales, roi);
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

/* ------------------------------------------------------------------ table */

#define MAXV 1000 /* no upper bound known yet */

const nbl_op_def nbl_ops_shape[] = {
    {"", "Reshape", 1, MAXV, k_reshape, NULL},
    {"", "Flatten", 1, MAXV, k_flatten, NULL},
    {"", "Squeeze", 1, MAXV, k_squeeze, NULL},
    {"", "Unsqueeze", 1, MAXV, k_unsqueeze, NULL},
    {"", "Transpose", 1, MAXV, k_transpose, NULL},
    {"", "Concat", 1, MAXV, k_concat, NULL},
    {"", "Split", 1, MAXV, k_split, NULL},
    {"", "Slice", 1, MAXV, k_slice, NULL},
    {"", "Gather", 1, MAXV, k_gather, NULL},
    {"", "GatherElements", 11, MAXV, k_gather_elements, NULL},
    {"", "GatherND", 11, MAXV, k_gather_nd, NULL},
    {"", "Scatter", 9, MAXV, k_scatter_elements, NULL},
    {"", "ScatterElements", 11, MAXV, k_scatter_elements, NULL},
    {"", "ScatterND", 11, MAXV, k_scatter_nd, NULL},
    {"", "Expand", 8, MAXV, k_expand, NULL},
    {"", "Tile", 6, MAXV, k_tile, NULL},
    {"", "Pad", 1, MAXV, k_pad, NULL},
    {"", "Resize", 10, MAXV, k_resize, NULL},
    {"", "Upsample", 7, MAXV, k_resize, NULL},
    {"", "NonZero", 9, MAXV, k_nonzero, NULL},
    {"", "OneHot", 9, MAXV, k_onehot, NULL},
    {"", "DepthToSpace", 1, MAXV, k_depth_to_space, NULL},
    {"", "SpaceToDepth", 1, MAXV, k_space_to_depth, NULL},
    {"", "Compress", 9, MAXV, k_compress, NULL},
    {"", "Trilu", 14, MAXV, k_trilu, NULL},
    {"", "Unique", 11, MAXV, k_unique, NULL},
    {"", "ReverseSequence", 10, MAXV, k_reverse_sequence, NULL},
};
const size_t nbl_ops_shape_count = sizeof nbl_ops_shape / sizeof nbl_ops_shape[0];
