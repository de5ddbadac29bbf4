/*
 * runtime/ops/shape_strided.c - op family 'shape_strided': ops that copy a
 * strided view of their input (the rest of the shape family is in shape.c).
 *
 * Transpose, Slice, Expand, Tile, DepthToSpace, SpaceToDepth, and the
 * experimental DynamicSlice and Crop that ONNX removed in opset 10, all on one
 * strided copy engine: the output is contiguous, the input is read through
 * element strides (0 for a broadcast dim), adjacent dims are merged and the
 * innermost run is copied with 1/2/4/8-byte loads, rows in parallel. Every
 * dtype with a whole-byte element size works the same way; STRING elements
 * are copied as pointers and then duplicated (dup_strings) so the output
 * owns them; 4-bit types are a clear NBL_ERR_UNSUPPORTED.
 */
#include <math.h>
#include <stdio.h>
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

/* Slice with starts, ends, axes as attributes (Slice before opset 10) or
 * as inputs 1..3, with steps as input 4 (from opset 10, and DynamicSlice). */
static nbl_status slice_run(nbl_kctx *c, int from_inputs) {
  const nbl_rt_tensor *x;
  nbl_status st = need_in(c, 0, "data", &x);
  if (st) return st;
  size_t es = esize(c, x, "data");
  if (!es) return NBL_ERR_UNSUPPORTED;
  int r = x->rank;
  int64_t starts[NBL_MAX_RANK], ends[NBL_MAX_RANK], axes[NBL_MAX_RANK], steps[NBL_MAX_RANK];
  int ns, ne, na = -1, nst = -1;
  if (!from_inputs) {
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

static nbl_status k_slice(nbl_kctx *c) { return slice_run(c, c->opset >= 10); }

/* ------------------------------------------------------------------ ops ONNX removed
 *
 * DynamicSlice and Crop were experimental ops of the default domain (opset
 * 1 on) that ONNX removed in opset 10; ONNX Runtime still runs them at
 * opsets 1-9 (and refuses them from 10 on), as nibble does, with ONNX
 * Runtime's semantics (checked against its version 1.31). convert-opset
 * rewrites both into Slice-10 (adapters below). */

/* DynamicSlice(data, starts, ends, axes?): Slice-10 without steps. */
static nbl_status k_dynamic_slice(nbl_kctx *c) {
  if (opt_in(c, 4))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "DynamicSlice has 4 inputs at most (no steps)");
  return slice_run(c, 1);
}

/* Crop's window on [N, C, H, W] from its attributes: border (left, top,
 * right, bottom), 4 values >= 0, required; scale (height, width), optional.
 * Without scale the window is rows top..H-bottom and columns left..W-right;
 * with it, scale[0] rows from top and scale[1] columns from left (right and
 * bottom unused). H or W < 0: unknown, that side not checked (*h or *w -1).
 * Returns a message (NULL: fine) for msg's buffer. */
static const char *crop_window(const nbl_node *n, int64_t H, int64_t W, int64_t *top,
                               int64_t *left, int64_t *h, int64_t *w, char *msg, size_t len) {
  int nb = 0, ns = 0;
  const int64_t *b = nbl_attr_ints(n, "border", &nb), *sc = nbl_attr_ints(n, "scale", &ns);
  if (nb != 4) {
    snprintf(msg, len, "attribute 'border' needs 4 values (left, top, right, bottom), it has %d", nb);
    return msg;
  }
  if (nbl_node_attr(n, "scale") && ns != 2) {
    snprintf(msg, len, "attribute 'scale' needs 2 values (height, width), it has %d", ns);
    return msg;
  }
  for (int i = 0; i < 4; i++)
    if (b[i] < 0 || (i < ns && sc[i] < 0) || b[i] > INT32_MAX || (i < ns && sc[i] > INT32_MAX)) {
      snprintf(msg, len, "attributes 'border' and 'scale' must be in [0, 2^31)");
      return msg;
    }
  *left = b[0];
  *top = b[1];
  if (ns) {
    *h = sc[0];
    *w = sc[1];
    if (H >= 0 && b[1] + sc[0] > H) {
      snprintf(msg, len, "top border %lld + height %lld exceed the input's height %lld",
               (long long)b[1], (long long)sc[0], (long long)H);
      return msg;
    }
    if (W >= 0 && b[0] + sc[1] > W) {
      snprintf(msg, len, "left border %lld + width %lld exceed the input's width %lld",
               (long long)b[0], (long long)sc[1], (long long)W);
      return msg;
    }
    return NULL;
  }
  *h = H >= 0 ? H - b[1] - b[3] : -1;
  *w = W >= 0 ? W - b[0] - b[2] : -1;
  if (H >= 0 && *h < 0) {
    snprintf(msg, len, "top and bottom borders %lld + %lld exceed the input's height %lld",
             (long long)b[1], (long long)b[3], (long long)H);
    return msg;
  }
  if (W >= 0 && *w < 0) {
    snprintf(msg, len, "left and right borders %lld + %lld exceed the input's width %lld",
             (long long)b[0], (long long)b[2], (long long)W);
    return msg;
  }
  return NULL;
}

/* Crop(x) = x[:, :, top:top+h, left:left+w], x 4-D. */
static nbl_status k_crop(nbl_kctx *c) {
  const nbl_rt_tensor *x;
  nbl_status st = need_in(c, 0, "input", &x);
  if (st) return st;
  size_t es = esize(c, x, "input");
  if (!es) return NBL_ERR_UNSUPPORTED;
  if (x->rank != 4)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input must be 4-D (N, C, H, W), got rank %d", x->rank);
  int64_t top, left, h, w;
  char msg[200];
  if (crop_window(c->node, x->dims[2], x->dims[3], &top, &left, &h, &w, msg, sizeof msg))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "%s", msg);
  int64_t od[4] = {x->dims[0], x->dims[1], h, w}, str[4];
  if ((st = nbl_kctx_alloc_out(c, 0, x->dtype, 4, od))) return st;
  nbl_rt_tensor *o = nbl_kctx_out(c, 0);
  if (o->numel == 0) return NBL_OK;
  nbl_strides(4, x->dims, str);
  const char *first = (const char *)x->data + (top * str[2] + left) * (int64_t)es;
  strided_copy(c, o->data, first, 4, od, str, es);
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

/* Slice, its bounds as attributes (before opset 10) or inputs (from 10, and
 * DynamicSlice). */
static nbl_status slice_shape(nbl_shape_ctx *c, bool from_inputs) {
  const nbl_node *n = c->node;
  nbl_shp x, o;
  nbl_shp_in(c, 0, &x);
  int64_t starts[NBL_SHP_MAXK], ends[NBL_SHP_MAXK], axes[NBL_SHP_MAXK], steps[NBL_SHP_MAXK];
  int ns = 0, ne = 0, na = 0, nst = 0;
  bool known = true;
  if (!from_inputs) {
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
    if (from_inputs && nbl_shp_has_in(c, 3) && nbl_shp_in_ints(c, 3, axes, &na)) {
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
    return nbl_shp_err(c, "starts/ends/axes/steps lengths differ");
  o = x;
  int64_t first[NBL_SHP_MAXR], step[NBL_SHP_MAXR];
  bool sliced[NBL_SHP_MAXR] = {false};
  for (int i = 0; i < ns; i++) {
    int a = nbl_norm_axis(na ? axes[i] : i, x.rank);
    if (a < 0) return nbl_shp_set_dt(c, 0, x.dt, x.rank);
    int64_t stp = nst ? steps[i] : 1;
    if (stp == 0)
      return nbl_shp_err(c, "step 0");
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

static nbl_status shape_slice(nbl_shape_ctx *c) { return slice_shape(c, c->opset >= 10); }
static nbl_status shape_dynamic_slice(nbl_shape_ctx *c) { return slice_shape(c, true); }

/* Crop: [N, C, h, w] of the window crop_window computes. */
static nbl_status shape_crop(nbl_shape_ctx *c) {
  nbl_shp x, o;
  nbl_shp_in(c, 0, &x);
  if (x.rank >= 0 && x.rank != 4)
    return nbl_shp_err(c, "input must be 4-D (N, C, H, W), got rank %d", x.rank);
  nbl_shp_rank(&o, x.dt, 4);
  int64_t H = x.rank == 4 && nbl_dim_known(x.d[2]) ? x.d[2].value : -1;
  int64_t W = x.rank == 4 && nbl_dim_known(x.d[3]) ? x.d[3].value : -1;
  int64_t top, left, h, w;
  char msg[200];
  if (crop_window(c->node, H, W, &top, &left, &h, &w, msg, sizeof msg))
    return nbl_shp_err(c, "%s", msg);
  if (x.rank == 4) o.d[0] = x.d[0], o.d[1] = x.d[1];
  o.d[2] = h >= 0 ? nbl_dim_val(h) : nbl_dim_unk();
  o.d[3] = w >= 0 ? nbl_dim_val(w) : nbl_dim_unk();
  return nbl_shp_set(c, 0, &o);
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
 * (runtime/core/grad.h): data movement moves the gradient back; Slice uses
 * com.microsoft SliceGrad (runtime/ops/grad_shape.c). */

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

/* Tile (repeats r, input 1, a constant): dY viewed as [r0, d0, r1, d1, ...]
 * (d the input's dims, from its run-time shape) and summed over the repeat
 * axes. */
static nbl_status g_tile(nbl_grad_ctx *gc) {
  nbl_grad_no_dx(gc, 1, "repeats are integers");
  if (!nbl_grad_wants(gc, 0)) return nbl_grad_status(gc);
  int64_t rep[NBL_MAX_RANK];
  int n = nbl_grad_const_ints(gc, nbl_grad_x(gc, 1), rep, NBL_MAX_RANK);
  if (n <= 0 || 2 * n > NBL_MAX_RANK)
    return nbl_grad_fail(gc, NBL_ERR_UNSUPPORTED, "repeats must be a constant of at most %d values",
                         NBL_MAX_RANK / 2);
  int64_t one = 1, flat = -1, axes[NBL_MAX_RANK];
  nbl_id pair[2] = {nbl_grad_unsqueeze(gc, nbl_grad_const_i64(gc, n, rep), 1, &one),
                    nbl_grad_unsqueeze(gc, nbl_grad_shape(gc, nbl_grad_x(gc, 0)), 1, &one)};
  nbl_id cat = nbl_grad_op(gc, "Concat", "", 2, pair); /* [n, 2]: (r_k, d_k) rows */
  nbl_grad_attr_int(gc, "axis", 1);
  nbl_id view[2] = {nbl_grad_dy(gc, 0), nbl_grad_bin(gc, "Reshape", cat, nbl_grad_const_i64(gc, 1, &flat))};
  nbl_id v = nbl_grad_op(gc, "Reshape", "", 2, view);
  for (int k = 0; k < n; k++) axes[k] = 2 * k;
  nbl_grad_set_dx(gc, 0, nbl_grad_reduce_sum(gc, v, n, axes, 0));
  return nbl_grad_status(gc);
}

/* DepthToSpace and SpaceToDepth move every element once, so the gradient is
 * the inverse move: SpaceToDepth is DepthToSpace's inverse in DCR mode; in
 * CRD mode (PyTorch's pixel_shuffle) the channel c2 b^2 + k of the input is
 * SpaceToDepth's channel k C2 + c2, a Gather over the channels (their count
 * must be known). */
static nbl_status g_depth_to_space(nbl_grad_ctx *gc) {
  if (!nbl_grad_wants(gc, 0)) return NBL_OK;
  const nbl_node *n = nbl_grad_node(gc);
  int64_t b = nbl_attr_int(n, "blocksize", 0);
  const char *mode = nbl_grad_opset(gc, "") >= 11 ? nbl_attr_string(n, "mode", "DCR") : "DCR";
  if (b <= 0) return nbl_grad_fail(gc, NBL_ERR_INVALID_MODEL, "blocksize must be positive");
  nbl_id s = nbl_grad_un(gc, "SpaceToDepth", nbl_grad_dy(gc, 0));
  nbl_grad_attr_int(gc, "blocksize", b);
  if (!strcmp(mode, "CRD")) {
    int64_t C = nbl_grad_dim(gc, nbl_grad_x(gc, 0), 1), bb = b * b;
    if (C <= 0 || C % bb || C > (1 << 24))
      return nbl_grad_fail(gc, NBL_ERR_UNSUPPORTED, "gradient of mode CRD needs the input's channel count");
    int64_t C2 = C / bb, *idx = malloc(sizeof(int64_t) * (size_t)C);
    if (!idx) return nbl_grad_fail(gc, NBL_ERR_OUT_OF_MEMORY, "out of memory");
    for (int64_t c2 = 0; c2 < C2; c2++)
      for (int64_t k = 0; k < bb; k++) idx[c2 * bb + k] = k * C2 + c2;
    s = nbl_grad_bin(gc, "Gather", s, nbl_grad_const_i64(gc, (int)C, idx));
    nbl_grad_attr_int(gc, "axis", 1);
    free(idx);
  } else if (strcmp(mode, "DCR")) {
    return nbl_grad_fail(gc, NBL_ERR_INVALID_MODEL, "mode '%s' is not DCR or CRD", mode);
  }
  nbl_grad_set_dx(gc, 0, s);
  return nbl_grad_status(gc);
}

static nbl_status g_space_to_depth(nbl_grad_ctx *gc) {
  if (!nbl_grad_wants(gc, 0)) return NBL_OK;
  nbl_id d = nbl_grad_un(gc, "DepthToSpace", nbl_grad_dy(gc, 0));
  nbl_grad_attr_int(gc, "blocksize", nbl_attr_int(nbl_grad_node(gc), "blocksize", 0));
  if (nbl_grad_opset(gc, "") >= 11) nbl_grad_attr_string(gc, "mode", "DCR");
  nbl_grad_set_dx(gc, 0, d);
  return nbl_grad_status(gc);
}

/* ------------------------------------------------------------------ opset adapters */

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

/* DynamicSlice ends at opset 10, where it is Slice-10 (the same inputs). */
static nbl_status dynamic_slice_up(nbl_adapt_ctx *c) {
  const nbl_node *n = nbl_adapt_node(c);
  if (n->n_inputs > 4 && n->inputs[4] != NBL_NONE)
    return nbl_adapt_refuse(c, "DynamicSlice has 4 inputs at most (no steps)");
  return nbl_adapt_rename(c, "Slice");
}

/* Crop ends at opset 10: Slice-10 on axes 2 and 3, starts (top, left), ends
 * (top + height, left + width) with scale, else (-bottom, -right), where 0
 * is "to the end". A crop the input's known dims cannot hold is refused;
 * with unknown dims such a crop (an error in Crop) slices to less. */
static nbl_status crop_up(nbl_adapt_ctx *c) {
  const nbl_node *n = nbl_adapt_node(c);
  if (n->n_inputs < 1 || n->inputs[0] == NBL_NONE) return nbl_adapt_refuse(c, "needs its input");
  nbl_id x = n->inputs[0];
  int rank = nbl_adapt_rank(c, x);
  if (rank >= 0 && rank != 4) return nbl_adapt_refuse(c, "input is %d-D, not 4-D", rank);
  int64_t top, left, h, w;
  char msg[200];
  if (crop_window(n, nbl_adapt_dim(c, x, 2), nbl_adapt_dim(c, x, 3), &top, &left, &h, &w, msg,
                  sizeof msg))
    return nbl_adapt_refuse(c, "%s", msg);
  int nb = 0, ns = 0;
  const int64_t *b = nbl_attr_ints(n, "border", &nb), *sc = nbl_attr_ints(n, "scale", &ns);
  int64_t starts[2] = {top, left}, ends[2], axes[2] = {2, 3}, two = 2;
  if (ns) {
    ends[0] = top + sc[0];
    ends[1] = left + sc[1];
  } else {
    ends[0] = b[3] ? -b[3] : INT64_MAX;
    ends[1] = b[2] ? -b[2] : INT64_MAX;
  }
  nbl_id in[4] = {x, nbl_adapt_const(c, "starts", NBL_DT_INT64, 1, &two, starts),
                  nbl_adapt_const(c, "ends", NBL_DT_INT64, 1, &two, ends),
                  nbl_adapt_const(c, "axes", NBL_DT_INT64, 1, &two, axes)};
  if (in[1] == NBL_NONE || in[2] == NBL_NONE || in[3] == NBL_NONE)
    return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  return nbl_adapt_replace(c, "Slice", 4, in);
}

static const nbl_op_adapter dynamic_slice_steps[] = {{.from = 1, .to = 10, .up = dynamic_slice_up}, {0}};
static const nbl_op_adapter crop_steps[] = {{.from = 1, .to = 10, .up = crop_up}, {0}};

/* ------------------------------------------------------------------ table */

const nbl_op_def nbl_ops_shape_strided[] = {
    NBL_OP("Transpose", 1, .ref = k_transpose, .shape = shape_transpose, .stable_since = 1, .grad = g_transpose),
    NBL_OP("Slice", 1, .ref = k_slice, .shape = shape_slice, .stable_since = 10,
        .adapters = slice_steps, .grad = g_slice),
    NBL_OP("Expand", 8, .ref = k_expand, .shape = shape_expand, .stable_since = 8, .grad = g_expand),
    NBL_OP("Tile", 6, .ref = k_tile, .shape = shape_tile, .stable_since = 6, .grad = g_tile),
    NBL_OP("DepthToSpace", 1, .ref = k_depth_to_space, .shape = shape_depth_to_space,
        .stable_since = 1, .grad = g_depth_to_space),
    NBL_OP("SpaceToDepth", 1, .ref = k_space_to_depth, .shape = shape_space_to_depth,
        .stable_since = 1, .grad = g_space_to_depth),
    /* removed from ONNX in opset 10 (see "ops ONNX removed" above) */
    NBL_OP_DEF("", "DynamicSlice", 1, 9, .ref = k_dynamic_slice, .shape = shape_dynamic_slice,
        .adapters = dynamic_slice_steps, .no_grad = NBL_NO_GRAD_REMOVED),
    NBL_OP_DEF("", "Crop", 1, 9, .ref = k_crop, .shape = shape_crop, .adapters = crop_steps,
        .no_grad = NBL_NO_GRAD_REMOVED),
};
const size_t nbl_ops_shape_strided_count = sizeof nbl_ops_shape_strided / sizeof nbl_ops_shape_strided[0];
