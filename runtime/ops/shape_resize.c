/*
 * runtime/ops/shape_resize.c - op family 'shape_resize': ops that change the
 * extent of a tensor's dims by padding or resampling.
 *
 * Pad (constant, reflect, edge, wrap), Resize and Upsample (nearest, linear,
 * cubic, with every coordinate transformation mode).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "runtime/core/grad.h"
#include "runtime/core/adapt.h"
#include "runtime/core/cpu.h"
#include "runtime/core/shape.h"
#include "runtime/ops/movement.h"
#include "runtime/ops/resize.h"

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

enum { CT_HALF_PIXEL, CT_HALF_PIXEL_SYM, CT_PYTORCH_HALF_PIXEL, CT_ALIGN_CORNERS, CT_ASYMMETRIC,
       CT_TF_HALF_PIXEL_NN, CT_TF_CROP_AND_RESIZE };
enum { NM_ROUND_PREFER_FLOOR, NM_ROUND_PREFER_CEIL, NM_FLOOR, NM_CEIL, NM_SIMPLE };


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
static double rs_coord(const nbl_rs_params *p, double x, double scale, int64_t in, int64_t out,
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
int nbl_rs_make_taps(const nbl_rs_params *p, double x, double scale, int64_t in, int64_t out, double roi0,
                     double roi1, int maxn, int64_t *first, double *w) {
  double xo = rs_coord(p, x, scale, in, out, roi0, roi1);
  if (p->ctm == CT_TF_CROP_AND_RESIZE && (xo < 0 || xo > (double)(in - 1))) return 0;
  double fl = floor(xo);
  int64_t xi = (int64_t)fl;
  double ratio = xo - fl;
  if (ratio == 0) { /* prefer the left neighbour: ratio in (0, 1] */
    xi -= 1;
    ratio = 1;
  }
  if (p->mode == NBL_RS_NEAREST) {
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
  if (p->mode == NBL_RS_LINEAR) {
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
static nbl_status resize_run(nbl_kctx *c, const nbl_rt_tensor *x, const nbl_rs_params *p,
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
  if (p->mode == NBL_RS_NEAREST) {
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
        int n = nbl_rs_make_taps(p, (double)i, scales[d], x->dims[d], od[d], roi[d], roi[r + d], 1, &f, &w);
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
                    p->mode == NBL_RS_LINEAR ? "linear" : "cubic", nbl_dtype_name(x->dtype));
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
      /* one spare weight: nbl_rs_make_taps may write DT + 1 (the count that
       * sends the resize to the separable passes) at the last position */
      j.w[d] = malloc(((size_t)out * DT + 1) * sizeof(double));
      j.src[d] = malloc((size_t)out * DT * sizeof(int64_t));
      if (!j.first[d] || !j.cnt[d] || !j.w[d] || !j.src[d]) {
        dst = nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory");
        break;
      }
      int identity = in == out, maxn = 1;
      for (int64_t i = 0; i < out; i++) {
        int n = nbl_rs_make_taps(p, (double)i, scales[d], in, out, roi[d], roi[r + d], DT + 1, &j.first[d][i],
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
      cnt[i] = nbl_rs_make_taps(p, (double)i, scales[d], in, out, roi[d], roi[r + d], MAXT, &first[i], w + i * MAXT);
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

nbl_status nbl_rs_plan_init(nbl_kctx *c, const nbl_rt_tensor *x, int base, int opset, int upsample,
                            nbl_rs_plan *pl) {
  nbl_status st = NBL_OK;
  int r = x->rank;
  memset(pl, 0, sizeof *pl);
  nbl_rs_params p = {0};
  const char *m = nbl_attr_string(c->node, "mode", "nearest");
  if (!strcmp(m, "nearest")) p.mode = NBL_RS_NEAREST;
  else if (!strcmp(m, "linear") || !strcmp(m, "bilinear") || !strcmp(m, "trilinear")) p.mode = NBL_RS_LINEAR;
  else if (!strcmp(m, "cubic") && opset >= 11) p.mode = NBL_RS_CUBIC;
  else return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "mode '%s' is not supported", m);
  const nbl_rt_tensor *roi_t = NULL, *sc_t = NULL, *sz_t = NULL;
  double *scales = pl->scales, *roi = pl->roi;
  int64_t *od = pl->od;
  for (int d = 0; d < r; d++) {
    scales[d] = 1;
    roi[d] = 0;
    roi[r + d] = 1;
    od[d] = x->dims[d];
  }
  if (upsample || opset < 11) {
    p.ctm = CT_ASYMMETRIC;
    p.nearest = upsample ? NM_FLOOR : NM_SIMPLE;
    if (upsample && opset < 9) {
      int n = 0;
      const float *f = nbl_attr_floats(c->node, "scales", &n);
      if (!f || n != r) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "attribute 'scales' must have %d values", r);
      for (int d = 0; d < r; d++) scales[d] = f[d];
    } else {
      if ((st = need_in(c, base + 1, "scales", &sc_t))) return st;
    }
  } else {
    const char *ct = nbl_attr_string(c->node, "coordinate_transformation_mode", "half_pixel");
    if (!strcmp(ct, "half_pixel")) p.ctm = CT_HALF_PIXEL;
    else if (!strcmp(ct, "half_pixel_symmetric") && opset >= 19) p.ctm = CT_HALF_PIXEL_SYM;
    else if (!strcmp(ct, "pytorch_half_pixel")) p.ctm = CT_PYTORCH_HALF_PIXEL;
    else if (!strcmp(ct, "align_corners")) p.ctm = CT_ALIGN_CORNERS;
    else if (!strcmp(ct, "asymmetric")) p.ctm = CT_ASYMMETRIC;
    else if (!strcmp(ct, "tf_half_pixel_for_nn") && opset < 13) p.ctm = CT_TF_HALF_PIXEL_NN;
    else if (!strcmp(ct, "tf_crop_and_resize")) p.ctm = CT_TF_CROP_AND_RESIZE;
    else return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "coordinate_transformation_mode '%s' is not valid at opset %d", ct, opset);
    const char *nm = nbl_attr_string(c->node, "nearest_mode", "round_prefer_floor");
    if (!strcmp(nm, "round_prefer_floor")) p.nearest = NM_ROUND_PREFER_FLOOR;
    else if (!strcmp(nm, "round_prefer_ceil")) p.nearest = NM_ROUND_PREFER_CEIL;
    else if (!strcmp(nm, "floor")) p.nearest = NM_FLOOR;
    else if (!strcmp(nm, "ceil")) p.nearest = NM_CEIL;
    else return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "nearest_mode '%s' is not valid", nm);
    p.cubic_a = nbl_attr_float(c->node, "cubic_coeff_a", -0.75f);
    p.exclude_outside = (int)nbl_attr_int(c->node, "exclude_outside", 0);
    p.extrapolation = nbl_attr_float(c->node, "extrapolation_value", 0.0f);
    p.antialias = opset >= 18 ? (int)nbl_attr_int(c->node, "antialias", 0) : 0;
    roi_t = opt_in(c, base + 1);
    sc_t = opt_in(c, base + 2);
    sz_t = opt_in(c, base + 3);
    if (sc_t && sc_t->numel == 0) sc_t = NULL;
    if (roi_t && roi_t->numel == 0) roi_t = NULL;
    if (sz_t && sz_t->numel == 0) sz_t = NULL;
    if (!!sc_t == !!sz_t)
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "exactly one of 'scales' and 'sizes' must be given");
  }
  /* axes (opset 18) */
  int axes[NBL_MAX_RANK], na = r;
  for (int d = 0; d < r; d++) axes[d] = d;
  if (!upsample && opset >= 18) {
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
    const char *pol = opset >= 18 ? nbl_attr_string(c->node, "keep_aspect_ratio_policy", "stretch") : "stretch";
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
  pl->p = p;
  return NBL_OK;
}

static nbl_status k_resize(nbl_kctx *c) {
  const nbl_rt_tensor *x;
  nbl_status st = need_in(c, 0, "X", &x);
  if (st) return st;
  nbl_rs_plan pl;
  if ((st = nbl_rs_plan_init(c, x, 0, c->opset, !strcmp(c->node->op_type, "Upsample"), &pl))) return st;
  return resize_run(c, x, &pl.p, pl.od, pl.scales, pl.roi);
}

/* ------------------------------------------------------------------ Resize / Upsample fast path
 *
 * float32 tensors whose leading axes (all but the last two) are not resized:
 * nearest, linear and cubic over the two spatial axes. The taps of every
 * output row and column come from nbl_rs_make_taps, as in the reference,
 * once per call. Every case gives the reference's bits:
 *  - nearest copies the same source elements (as 32-bit words, so NaN
 *    payloads pass unchanged);
 *  - linear / cubic do the reference direct kernel's double operations in
 *    its order: for output (i, e), acc = 0, then acc += rw_k * v_k over the
 *    row taps with a non-zero weight, where v_k = 0 + sum over the column
 *    taps with a non-zero weight of w * (double)x[h_k][col], in tap order.
 *    v_k depends on the source row h_k and the column only, so it is made
 *    once per source row (a row cache) instead of once per output row. A
 *    skipped column tap is added here as +0: v starts at +0 and a sum of
 *    doubles that starts at +0 never is -0 (x + -x is +0 when rounding to
 *    nearest), so adding +0 leaves v's bits alone. The weight's product is
 *    not formed for a skipped tap (0 * inf would be NaN). Each product and
 *    sum is its own statement and the code base builds as ISO C (no
 *    contraction into FMA), so the vector clones round as the scalar one.
 * A column whose coordinate leaves a tf_crop_and_resize roi takes the
 * extrapolation value, as does a whole such row. Anything else (other
 * dtypes, resized leading axes, more taps than the reference's direct kernel
 * takes) runs the reference kernel. */

/* Leading-axis check: axis d of length n maps every output index i to
 * itself with weight 1 and extrapolates nowhere (the reference's
 * "identity" axis, or for nearest the identity index map). */
static int rsf_axis_identity(const nbl_rs_params *p, double scale, int64_t n, int64_t out, double roi0,
                             double roi1) {
  enum { DT = 16 };
  if (n != out) return 0;
  for (int64_t i = 0; i < n; i++) {
    int64_t f;
    double w[DT + 1];
    int cnt = nbl_rs_make_taps(p, (double)i, scale, n, out, roi0, roi1, p->mode == NBL_RS_NEAREST ? 1 : DT + 1, &f, w);
    if (cnt == 0 || cnt > DT) return 0;
    if (p->mode == NBL_RS_NEAREST) {
      if (clampi(f, 0, n - 1) != i) return 0;
      continue;
    }
    for (int k = 0; k < cnt; k++)
      if (w[k] != 0 && (clampi(f + k, 0, n - 1) != i || w[k] != 1)) return 0;
  }
  return 1;
}

/* The taps of one spatial axis, tap-major: src[k * out + i] (clamped source
 * index) and w[k * out + i] (0: skipped), cnt[i] 0 where the position
 * extrapolates, maxn the most taps of a position (at least 1), identity as
 * the reference decides it. rsf_taps_make sets *ok = 0 when a position has
 * more than 16 taps (the reference's separable passes, left to it). */
typedef struct rsf_taps {
  int n, maxn, identity;
  int32_t *src;
  double *w;
  int *cnt;
} rsf_taps;

static nbl_status rsf_taps_make(nbl_kctx *c, const nbl_rs_params *p, double scale, int64_t in, int64_t out,
                                double roi0, double roi1, rsf_taps *t, int *ok) {
  enum { DT = 16 };
  t->n = p->mode == NBL_RS_NEAREST ? 1 : DT;
  t->src = malloc((size_t)out * (size_t)t->n * sizeof *t->src);
  t->w = malloc((size_t)out * (size_t)t->n * sizeof *t->w);
  t->cnt = malloc((size_t)out * sizeof *t->cnt);
  if (!t->src || !t->w || !t->cnt) return nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory");
  t->maxn = 1;
  t->identity = in == out;
  for (int64_t i = 0; i < out; i++) {
    int64_t f;
    double w[DT + 1];
    int cnt = nbl_rs_make_taps(p, (double)i, scale, in, out, roi0, roi1, p->mode == NBL_RS_NEAREST ? 1 : DT + 1, &f, w);
    if (cnt > DT) {
      *ok = 0;
      return NBL_OK;
    }
    t->cnt[i] = cnt;
    if (cnt > t->maxn) t->maxn = cnt;
    if (cnt == 0) t->identity = 0;
    for (int k = 0; k < t->n; k++) {
      int64_t s = clampi(f + (k < cnt ? k : 0), 0, in - 1);
      double wk = k < cnt ? w[k] : 0;
      t->src[(int64_t)k * out + i] = (int32_t)s;
      t->w[(int64_t)k * out + i] = wk;
      if (k < cnt && wk != 0 && (s != i || wk != 1)) t->identity = 0;
    }
    if (p->mode == NBL_RS_NEAREST && cnt && t->src[i] != i) t->identity = 0;
  }
  return NBL_OK;
}

static void rsf_taps_free(rsf_taps *t) { free(t->src), free(t->w), free(t->cnt); }

typedef struct rsf_job {
  const float *x;
  float *y;
  int64_t ih, iw, oh, ow, chunks;
  rsf_taps th, tw;
  int nearest, dup2; /* dup2: every output column e reads input column e / 2 */
  int tw_ext;        /* some output column takes the extrapolation value */
  float extra;
  void (*hrow)(const float *xr, int nk, int64_t ow, const int32_t *src, const double *w, double *v);
  void (*vrow)(int nr, const double *const *rows, const double *rw, int64_t ow, float *y);
  _Atomic int oom;
} rsf_job;

/* v[e] = 0 + the column taps of e applied to the source row xr (see above). */
__attribute__((always_inline)) static inline void rsf_hrow_body(const float *restrict xr, int nk, int64_t ow,
                                                                 const int32_t *restrict src,
                                                                 const double *restrict w, double *restrict v) {
  for (int64_t e = 0; e < ow; e++) v[e] = 0;
  for (int k = 0; k < nk; k++) {
    const int32_t *sk = src + (int64_t)k * ow;
    const double *wk = w + (int64_t)k * ow;
    for (int64_t e = 0; e < ow; e++) {
      double t = wk[e] * (double)xr[sk[e]];
      t = wk[e] != 0 ? t : 0.0;
      v[e] = v[e] + t;
    }
  }
}

/* y[e] = (float)(0 + rw[0] * rows[0][e] + rw[1] * rows[1][e] + ...). */
__attribute__((always_inline)) static inline void rsf_vrow_body(int nr, const double *const *rows,
                                                                 const double *rw, int64_t ow, float *restrict y) {
  if (nr == 2) { /* linear's common case, one pass */
    const double *restrict a = rows[0], *restrict b = rows[1];
    double wa = rw[0], wb = rw[1];
    for (int64_t e = 0; e < ow; e++) {
      double ta = wa * a[e], tb = wb * b[e];
      double acc = 0.0 + ta;
      acc = acc + tb;
      y[e] = (float)acc;
    }
    return;
  }
  for (int64_t e0 = 0; e0 < ow; e0 += 256) { /* a block of sums on the stack */
    double acc[256];
    int64_t m = ow - e0 < 256 ? ow - e0 : 256;
    for (int64_t e = 0; e < m; e++) acc[e] = 0;
    for (int k = 0; k < nr; k++) {
      const double *restrict a = rows[k] + e0;
      double wk = rw[k];
      for (int64_t e = 0; e < m; e++) {
        double t = wk * a[e];
        acc[e] = acc[e] + t;
      }
    }
    for (int64_t e = 0; e < m; e++) y[e0 + e] = (float)acc[e];
  }
}

static void rsf_hrow_c(const float *xr, int nk, int64_t ow, const int32_t *src, const double *w, double *v) {
  rsf_hrow_body(xr, nk, ow, src, w, v);
}
static void rsf_vrow_c(int nr, const double *const *rows, const double *rw, int64_t ow, float *y) {
  rsf_vrow_body(nr, rows, rw, ow, y);
}
/* Columns [e, ow) of rsf_hrow_body, for the vector clones' tails. */
static void rsf_hrow_tail(const float *xr, int nk, int64_t ow, const int32_t *src, const double *w, double *v,
                          int64_t e) {
  for (; e < ow; e++) {
    double acc = 0;
    for (int k = 0; k < nk; k++) {
      double wk = w[(int64_t)k * ow + e];
      double t = wk * (double)xr[src[(int64_t)k * ow + e]];
      t = wk != 0 ? t : 0.0;
      acc = acc + t;
    }
    v[e] = acc;
  }
}

#if defined(__x86_64__)
/* The vector clones: the same products and sums per element as the bodies
 * above (a skipped tap's product masked to +0), 4 or 8 doubles at a time;
 * the conversion to float rounds to nearest as the C cast does. */
__attribute__((target("avx2"))) static void rsf_hrow_avx2(const float *xr, int nk, int64_t ow, const int32_t *src,
                                                          const double *w, double *v) {
  int64_t e = 0;
  const __m256d z = _mm256_setzero_pd();
  for (; e + 4 <= ow; e += 4) {
    __m256d acc = z;
    for (int k = 0; k < nk; k++) {
      __m256d wk = _mm256_loadu_pd(w + (int64_t)k * ow + e);
      __m128i ix = _mm_loadu_si128((const __m128i *)(src + (int64_t)k * ow + e));
      __m256d xv = _mm256_cvtps_pd(_mm_i32gather_ps(xr, ix, 4));
      __m256d t = _mm256_and_pd(_mm256_cmp_pd(wk, z, _CMP_NEQ_UQ), _mm256_mul_pd(wk, xv));
      acc = _mm256_add_pd(acc, t);
    }
    _mm256_storeu_pd(v + e, acc);
  }
  rsf_hrow_tail(xr, nk, ow, src, w, v, e);
}
__attribute__((target("avx2"))) static void rsf_vrow_avx2(int nr, const double *const *rows, const double *rw,
                                                          int64_t ow, float *y) {
  int64_t e = 0;
  for (; e + 4 <= ow; e += 4) {
    __m256d acc = _mm256_setzero_pd();
    for (int k = 0; k < nr; k++) acc = _mm256_add_pd(acc, _mm256_mul_pd(_mm256_set1_pd(rw[k]), _mm256_loadu_pd(rows[k] + e)));
    _mm_storeu_ps(y + e, _mm256_cvtpd_ps(acc));
  }
  for (; e < ow; e++) {
    double acc = 0;
    for (int k = 0; k < nr; k++) {
      double t = rw[k] * rows[k][e];
      acc = acc + t;
    }
    y[e] = (float)acc;
  }
}
__attribute__((target("avx2,avx512f"))) static void rsf_hrow_avx512(const float *xr, int nk, int64_t ow,
                                                                    const int32_t *src, const double *w, double *v) {
  int64_t e = 0;
  const __m512d z = _mm512_setzero_pd();
  for (; e + 8 <= ow; e += 8) {
    __m512d acc = z;
    for (int k = 0; k < nk; k++) {
      __m512d wk = _mm512_loadu_pd(w + (int64_t)k * ow + e);
      __m256i ix = _mm256_loadu_si256((const __m256i *)(src + (int64_t)k * ow + e));
      __m512d xv = _mm512_cvtps_pd(_mm256_i32gather_ps(xr, ix, 4));
      __m512d t = _mm512_maskz_mul_pd(_mm512_cmp_pd_mask(wk, z, _CMP_NEQ_UQ), wk, xv);
      acc = _mm512_add_pd(acc, t);
    }
    _mm512_storeu_pd(v + e, acc);
  }
  rsf_hrow_tail(xr, nk, ow, src, w, v, e);
}
__attribute__((target("avx2,avx512f"))) static void rsf_vrow_avx512(int nr, const double *const *rows,
                                                                    const double *rw, int64_t ow, float *y) {
  int64_t e = 0;
  if (nr == 2) {
    const __m512d wa = _mm512_set1_pd(rw[0]), wb = _mm512_set1_pd(rw[1]);
    const double *a = rows[0], *b = rows[1];
    for (; e + 8 <= ow; e += 8) {
      __m512d acc = _mm512_add_pd(_mm512_setzero_pd(), _mm512_mul_pd(wa, _mm512_loadu_pd(a + e)));
      acc = _mm512_add_pd(acc, _mm512_mul_pd(wb, _mm512_loadu_pd(b + e)));
      _mm256_storeu_ps(y + e, _mm512_cvtpd_ps(acc));
    }
  } else {
    for (; e + 8 <= ow; e += 8) {
      __m512d acc = _mm512_setzero_pd();
      for (int k = 0; k < nr; k++)
        acc = _mm512_add_pd(acc, _mm512_mul_pd(_mm512_set1_pd(rw[k]), _mm512_loadu_pd(rows[k] + e)));
      _mm256_storeu_ps(y + e, _mm512_cvtpd_ps(acc));
    }
  }
  const double *tail[16];
  for (int k = 0; k < nr; k++) tail[k] = rows[k] + e;
  if (e < ow) rsf_vrow_avx2(nr, tail, rw, ow - e, y + e);
}
#endif

/* Output rows [r0, r1) of plane q, linear / cubic. The cache holds maxn
 * source rows' v (tag: source row, -1 empty); an output row's source rows
 * are at most maxn distinct ones, so a slot that the row does not use is
 * always free to refill. */
static void rsf_linear_rows(rsf_job *j, int64_t q, int64_t r0, int64_t r1, double *cache, int64_t *tag) {
  const float *xp = j->x + q * j->ih * j->iw;
  float *yp = j->y + q * j->oh * j->ow;
  int ns = j->th.maxn;
  int64_t ow = j->ow, oh = j->oh;
  for (int s = 0; s < ns; s++) tag[s] = -1;
  for (int64_t i = r0; i < r1; i++) {
    float *yr = yp + i * ow;
    if (j->th.cnt[i] == 0) {
      for (int64_t e = 0; e < ow; e++) yr[e] = j->extra;
      continue;
    }
    const double *rows[16];
    double rw[16];
    int used[16] = {0}, nr = 0, nk = j->th.identity ? 1 : j->th.cnt[i];
    /* an identity row axis is one tap (i, 1), as the reference skips it */
    for (int k = 0; k < nk; k++) { /* keep the slots this row reads */
      int64_t h = j->th.identity ? i : j->th.src[(int64_t)k * oh + i];
      for (int s = 0; s < ns; s++) used[s] |= tag[s] == h;
    }
    for (int k = 0; k < nk; k++) {
      double wk = j->th.identity ? 1 : j->th.w[(int64_t)k * oh + i];
      if (wk == 0) continue;
      int64_t h = j->th.identity ? i : j->th.src[(int64_t)k * oh + i];
      int s = 0;
      while (s < ns && tag[s] != h) s++;
      if (s == ns) {
        for (s = 0; used[s]; s++) {}
        j->hrow(xp + h * j->iw, j->tw.maxn, ow, j->tw.src, j->tw.w, cache + s * ow);
        tag[s] = h;
      }
      used[s] = 1;
      rows[nr] = cache + s * ow;
      rw[nr++] = wk;
    }
    j->vrow(nr, rows, rw, ow, yr);
    for (int64_t e = 0; j->tw_ext && e < ow; e++)
      if (j->tw.cnt[e] == 0) yr[e] = j->extra;
  }
}

/* Output rows [r0, r1) of plane q, nearest: a row that reads the same source
 * row as the one before it is a copy of that output row. */
static void rsf_nearest_rows(rsf_job *j, int64_t q, int64_t r0, int64_t r1) {
  const uint32_t *xp = (const uint32_t *)j->x + q * j->ih * j->iw;
  uint32_t *yp = (uint32_t *)j->y + q * j->oh * j->ow, ext;
  memcpy(&ext, &j->extra, sizeof ext);
  int64_t ow = j->ow;
  const int32_t *sw = j->tw.src;
  for (int64_t i = r0; i < r1; i++) {
    uint32_t *yr = yp + i * ow;
    if (j->th.cnt[i] == 0) {
      for (int64_t e = 0; e < ow; e++) yr[e] = ext;
      continue;
    }
    if (i > r0 && j->th.cnt[i - 1] && j->th.src[i - 1] == j->th.src[i]) {
      memcpy(yr, yr - ow, (size_t)ow * sizeof *yr);
      continue;
    }
    const uint32_t *xr = xp + (int64_t)j->th.src[i] * j->iw;
    if (j->tw.identity) {
      memcpy(yr, xr, (size_t)ow * sizeof *yr);
    } else if (j->dup2) {
      for (int64_t e = 0; e < j->iw; e++) yr[2 * e] = yr[2 * e + 1] = xr[e];
    } else {
      for (int64_t e = 0; e < ow; e++) yr[e] = xr[sw[e]];
      for (int64_t e = 0; j->tw_ext && e < ow; e++)
        if (j->tw.cnt[e] == 0) yr[e] = ext;
    }
  }
}

/* Items [q0, q1): item q is rows chunk q % chunks of plane q / chunks. */
static void rsf_items(void *arg, int64_t q0, int64_t q1) {
  rsf_job *j = arg;
  double *cache = NULL;
  int64_t tag[16];
  if (!j->nearest) {
    cache = malloc((size_t)j->th.maxn * (size_t)j->ow * sizeof *cache);
    if (!cache) {
      atomic_store(&j->oom, 1);
      return;
    }
  }
  for (int64_t q = q0; q < q1; q++) {
    int64_t plane = q / j->chunks, ch = q % j->chunks;
    int64_t r0 = ch * j->oh / j->chunks, r1 = (ch + 1) * j->oh / j->chunks;
    if (j->nearest) rsf_nearest_rows(j, plane, r0, r1);
    else rsf_linear_rows(j, plane, r0, r1, cache, tag);
  }
  free(cache);
}

static nbl_status k_resize_fast(nbl_kctx *c) {
  const nbl_rt_tensor *x;
  nbl_status st = need_in(c, 0, "X", &x);
  if (st) return st;
  int r = x->rank;
  if (x->dtype != NBL_DT_FLOAT || r < 2) return k_resize(c);
  nbl_rs_plan pl;
  if ((st = nbl_rs_plan_init(c, x, 0, c->opset, !strcmp(c->node->op_type, "Upsample"), &pl))) return st;
  const nbl_rs_params *p = &pl.p;
  int H = r - 2, W = r - 1;
  int64_t planes = 1;
  for (int d = 0; d < r; d++)
    if (x->dims[d] <= 0 || pl.od[d] <= 0 || x->dims[d] > INT32_MAX) return k_resize(c);
  for (int d = 0; d < H; d++) {
    if (!rsf_axis_identity(p, pl.scales[d], x->dims[d], pl.od[d], pl.roi[d], pl.roi[r + d])) return k_resize(c);
    planes *= x->dims[d];
  }
  rsf_job j = {.x = x->data, .ih = x->dims[H], .iw = x->dims[W], .oh = pl.od[H], .ow = pl.od[W],
               .nearest = p->mode == NBL_RS_NEAREST, .extra = (float)p->extrapolation};
  int ok = 1;
  st = rsf_taps_make(c, p, pl.scales[H], j.ih, j.oh, pl.roi[H], pl.roi[r + H], &j.th, &ok);
  if (!st && ok) st = rsf_taps_make(c, p, pl.scales[W], j.iw, j.ow, pl.roi[W], pl.roi[r + W], &j.tw, &ok);
  /* an identity column axis is one tap (e, 1), as the reference reads x
   * there (v = x instead of 0 + 1 * x: they differ in the sign of a zero
   * only, which acc = 0 + rw * v + ... drops) */
  if (!st && ok && !j.nearest && j.tw.identity) {
    j.tw.maxn = 1;
    for (int64_t e = 0; e < j.ow; e++) j.tw.src[e] = (int32_t)e, j.tw.w[e] = 1;
  }
  /* the reference's direct kernel takes at most 64 tap combinations */
  if (!st && ok && !j.nearest && (j.th.identity ? 1 : j.th.maxn) * (j.tw.identity ? 1 : j.tw.maxn) > 64) ok = 0;
  if (st || !ok) {
    rsf_taps_free(&j.th), rsf_taps_free(&j.tw);
    return st ? st : k_resize(c);
  }
  if ((st = nbl_kctx_alloc_out(c, 0, x->dtype, r, pl.od))) goto done;
  nbl_rt_tensor *o = nbl_kctx_out(c, 0);
  j.y = o->data;
  if (j.nearest && j.ow == 2 * j.iw) {
    j.dup2 = 1;
    for (int64_t e = 0; e < j.ow && j.dup2; e++) j.dup2 = j.tw.cnt[e] && j.tw.src[e] == e / 2;
  }
  for (int64_t e = 0; e < j.ow; e++) j.tw_ext |= j.tw.cnt[e] == 0;
  j.hrow = rsf_hrow_c;
  j.vrow = rsf_vrow_c;
#if defined(__x86_64__)
  if (nbl_cpu_has(NBL_CPU_AVX512F | NBL_CPU_AVX2)) {
    j.hrow = rsf_hrow_avx512;
    j.vrow = rsf_vrow_avx512;
  } else if (nbl_cpu_has(NBL_CPU_AVX2)) {
    j.hrow = rsf_hrow_avx2;
    j.vrow = rsf_vrow_avx2;
  }
#endif
  /* planes split into row chunks so that small batches still fill the pool */
  int64_t work = o->numel * (j.nearest ? 1 : 4 * j.tw.maxn);
  j.chunks = 1;
  if (c->threads > 1 && work >= (1 << 16)) {
    int64_t want = 4 * (int64_t)c->threads;
    j.chunks = planes >= want ? 1 : (want + planes - 1) / planes;
    if (j.chunks > j.oh) j.chunks = j.oh;
    nbl_parallel_for(c, planes * j.chunks, 1, rsf_items, &j);
  } else {
    rsf_items(&j, 0, planes * j.chunks);
  }
  if (atomic_load(&j.oom)) st = nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory");
done:
  rsf_taps_free(&j.th), rsf_taps_free(&j.tw);
  return st;
}

/* ------------------------------------------------------------------ shape rules */

static nbl_status shape_pad(nbl_shape_ctx *c) {
  nbl_shp x, o;
  nbl_shp_in(c, 0, &x);
  int64_t pads[NBL_SHP_MAXK], axes[NBL_SHP_MAXK];
  int np = 0, na = 0;
  if (x.rank < 0) return nbl_shp_set_dt(c, 0, x.dt, -1);
  bool known = true;
  if (c->opset < 11) {
    const int64_t *p = nbl_attr_ints(c->node, "pads", &np);
    if (np > NBL_SHP_MAXK) known = false; else if (np) memcpy(pads, p, sizeof(int64_t) * (size_t)np);
  } else {
    if (!nbl_shp_in_ints(c, 1, pads, &np)) known = false;
    if (nbl_shp_has_in(c, 3) && !nbl_shp_in_ints(c, 3, axes, &na)) known = false;
  }
  if (!known) return nbl_shp_set_dt(c, 0, x.dt, x.rank);
  if (!na) {
    na = x.rank;
    for (int i = 0; i < na; i++) axes[i] = i;
  }
  if (np != 2 * na)
    return nbl_errorf(NBL_ERR_INVALID_MODEL, "node '%s' (Pad): %d pads for %d axes", c->node->name, np, na);
  o = x;
  for (int i = 0; i < na; i++) {
    int a = nbl_norm_axis(axes[i], x.rank);
    if (a < 0) return nbl_shp_set_dt(c, 0, x.dt, x.rank);
    int64_t add = pads[i] + pads[na + i];
    o.d[a] = nbl_dim_known(x.d[a]) ? nbl_dim_val(x.d[a].value + add) : add == 0 ? x.d[a] : nbl_dim_unk();
  }
  return nbl_shp_set(c, 0, &o);
}

static nbl_status shape_resize(nbl_shape_ctx *c) {
  nbl_shp x, o;
  nbl_shp_in(c, 0, &x);
  if (x.rank < 0) return nbl_shp_set_dt(c, 0, x.dt, -1);
  int64_t sizes[NBL_SHP_MAXK], axes[NBL_SHP_MAXK];
  double scales[NBL_SHP_MAXK];
  int nsz = 0, nsc = 0, na = 0;
  const int64_t *ax = nbl_attr_ints(c->node, "axes", &na);
  if (na > NBL_SHP_MAXK) return nbl_shp_set_dt(c, 0, x.dt, x.rank);
  for (int i = 0; i < na; i++) axes[i] = ax[i];
  if (!na) {
    na = x.rank;
    for (int i = 0; i < na; i++) axes[i] = i;
  }
  const char *policy = nbl_attr_string(c->node, "keep_aspect_ratio_policy", "stretch");
  int iscales = c->opset >= 11 ? 2 : 1, isizes = 3;
  o = x;
  if (c->opset >= 11 && nbl_shp_in_ints(c, isizes, sizes, &nsz) && nsz > 0) {
    if (nsz != na || strcmp(policy, "stretch") != 0) return nbl_shp_set_dt(c, 0, x.dt, x.rank);
    for (int i = 0; i < na; i++) {
      int a = nbl_norm_axis(axes[i], x.rank);
      if (a < 0) return nbl_shp_set_dt(c, 0, x.dt, x.rank);
      o.d[a] = nbl_dim_val(sizes[i]);
    }
    return nbl_shp_set(c, 0, &o);
  }
  if (nbl_shp_in_floats(c, iscales, scales, &nsc, NBL_SHP_MAXK) && nsc > 0) {
    if (nsc != na) return nbl_shp_set_dt(c, 0, x.dt, x.rank);
    for (int i = 0; i < na; i++) {
      int a = nbl_norm_axis(axes[i], x.rank);
      if (a < 0) return nbl_shp_set_dt(c, 0, x.dt, x.rank);
      if (nbl_dim_known(x.d[a]))
        o.d[a] = nbl_dim_val((int64_t)floor((double)x.d[a].value * scales[i] + 1e-9));
      else
        o.d[a] = scales[i] == 1.0 ? x.d[a] : nbl_dim_unk();
    }
    return nbl_shp_set(c, 0, &o);
  }
  return nbl_shp_set_dt(c, 0, x.dt, x.rank);
}

/* ------------------------------------------------------------------ gradient rules
 * (runtime/core/grad.h) */

/* Pad (constant mode, pads >= 0): dX is dY with the padding sliced off. */
static nbl_status g_pad(nbl_grad_ctx *gc) {
  nbl_grad_no_dx(gc, 2, "the pad value gets no gradient");
  if (!nbl_grad_wants(gc, 0)) return nbl_grad_status(gc);
  const nbl_node *n = nbl_grad_node(gc);
  const char *mode = nbl_attr_string(n, "mode", "constant");
  if (strcmp(mode, "constant"))
    return nbl_grad_fail(gc, NBL_ERR_UNSUPPORTED, "gradient of Pad mode '%s': no rule yet", mode);
  int r = nbl_grad_rank(gc, nbl_grad_x(gc, 0)), np = 0, na = 0;
  if (r < 1 || r > NBL_MAX_RANK)
    return nbl_grad_fail(gc, NBL_ERR_UNSUPPORTED, "the rank of the input must be known");
  int64_t pads[2 * NBL_MAX_RANK], axes[NBL_MAX_RANK];
  if (nbl_grad_opset(gc, "") < 11) {
    const int64_t *p = nbl_attr_ints(n, "pads", &np);
    if (p && np <= 2 * NBL_MAX_RANK) memcpy(pads, p, sizeof(int64_t) * (size_t)np);
  } else {
    np = nbl_grad_const_ints(gc, nbl_grad_x(gc, 1), pads, 2 * NBL_MAX_RANK);
    if (np < 0) return nbl_grad_fail(gc, NBL_ERR_UNSUPPORTED, "pads must be a constant");
  }
  na = nbl_grad_x(gc, 3) == NBL_NONE ? r : nbl_grad_const_ints(gc, nbl_grad_x(gc, 3), axes, NBL_MAX_RANK);
  if (na < 0) return nbl_grad_fail(gc, NBL_ERR_UNSUPPORTED, "axes must be a constant");
  if (nbl_grad_x(gc, 3) == NBL_NONE)
    for (int k = 0; k < r; k++) axes[k] = k;
  if (np != 2 * na) return nbl_grad_fail(gc, NBL_ERR_INVALID_MODEL, "pads has %d values for %d axes", np, na);
  int64_t st[NBL_MAX_RANK], en[NBL_MAX_RANK];
  for (int k = 0; k < na; k++) {
    if (pads[k] < 0 || pads[na + k] < 0)
      return nbl_grad_fail(gc, NBL_ERR_UNSUPPORTED, "gradient of negative pads: no rule yet");
    st[k] = pads[k];
    en[k] = pads[na + k] > 0 ? -pads[na + k] : INT64_MAX;
  }
  nbl_id dx;
  if (nbl_grad_opset(gc, "") < 10) {
    dx = nbl_grad_un(gc, "Slice", nbl_grad_dy(gc, 0));
    nbl_grad_attr_ints(gc, "starts", na, st);
    nbl_grad_attr_ints(gc, "ends", na, en);
    nbl_grad_attr_ints(gc, "axes", na, axes);
  } else {
    nbl_id in[4] = {nbl_grad_dy(gc, 0), nbl_grad_const_i64(gc, na, st),
                    nbl_grad_const_i64(gc, na, en), nbl_grad_const_i64(gc, na, axes)};
    dx = nbl_grad_op(gc, "Slice", "", 4, in);
  }
  nbl_grad_set_dx(gc, 0, dx);
  return nbl_grad_status(gc);
}

/* Resize / Upsample: ai.nibble ResizeGrad (runtime/ops/grad_shape.c) on dY,
 * the input's shape and the node's own roi / scales / sizes, with its
 * attributes and its default-domain opset (which decides how they read):
 * the adjoint of the same taps. */
static nbl_status g_resize(nbl_grad_ctx *gc) {
  int n = nbl_grad_n_in(gc);
  for (int i = 1; i < n; i++) nbl_grad_no_dx(gc, i, "roi, scales and sizes get no gradient");
  if (!nbl_grad_wants(gc, 0)) return nbl_grad_status(gc);
  nbl_id in[2 + 3] = {nbl_grad_dy(gc, 0), nbl_grad_shape(gc, nbl_grad_x(gc, 0)), NBL_NONE, NBL_NONE, NBL_NONE};
  if (n > 4) return nbl_grad_fail(gc, NBL_ERR_INVALID_MODEL, "%d inputs", n);
  for (int i = 1; i < n; i++) in[i + 1] = nbl_grad_x(gc, i);
  nbl_id dx = nbl_grad_op(gc, "ResizeGrad", "ai.nibble", n + 1, in);
  nbl_grad_attr_copy(gc, NULL);
  nbl_grad_attr_int(gc, "nibble.resize_opset", nbl_grad_opset(gc, ""));
  nbl_grad_attr_int(gc, "nibble.upsample", !strcmp(nbl_grad_node(gc)->op_type, "Upsample"));
  nbl_grad_set_dx(gc, 0, dx);
  return nbl_grad_status(gc);
}

/* Upsample (deprecated in opset 10): every dim scaled, floor(dim * scale);
 * the scales are an attribute before opset 9 and input 1 from opset 9. */
static nbl_status shape_upsample(nbl_shape_ctx *c) {
  nbl_shp x, o;
  nbl_shp_in(c, 0, &x);
  if (x.rank < 0) return nbl_shp_set_dt(c, 0, x.dt, -1);
  double scales[NBL_SHP_MAXK];
  int n = 0;
  if (c->opset < 9) {
    const float *f = nbl_attr_floats(c->node, "scales", &n);
    for (int i = 0; i < n && i < NBL_SHP_MAXK; i++) scales[i] = f[i];
  } else if (!nbl_shp_in_floats(c, 1, scales, &n, NBL_SHP_MAXK)) {
    n = 0;
  }
  if (n != x.rank) return nbl_shp_set_dt(c, 0, x.dt, x.rank);
  o = x;
  for (int i = 0; i < x.rank; i++) {
    double len = nbl_dim_known(x.d[i]) ? floor((double)x.d[i].value * scales[i]) : -1;
    o.d[i] = len >= 0 && len < 9.2e18 ? nbl_dim_val((int64_t)len)
             : scales[i] == 1.0      ? x.d[i]
                                     : nbl_dim_unk();
  }
  return nbl_shp_set(c, 0, &o);
}

/* ------------------------------------------------------------------ table */

/* ------------------------------------------------------------------ opset adapters */

/* Pad: pads and value are attributes from opset 2 to 10, inputs 1 and 2
 * (constant_value of the data's type) from 11. A value of 0 is the default
 * and needs no input (nor the data's type). */
static nbl_status pad_up(nbl_adapt_ctx *c) {
  static const nbl_op_adapter pads = {.attr = "pads", .input = 1, .attr_type = NBL_ATTR_INTS},
                              value = {.attr = "value", .input = 2, .attr_type = NBL_ATTR_FLOAT};
  const nbl_node *n = nbl_adapt_node(c);
  if (!nbl_node_attr(n, "pads")) return nbl_adapt_refuse(c, "attribute 'pads' is missing");
  if (nbl_attr_float(n, "value", 0.0f) == 0.0f) nbl_adapt_drop_attr(c, "value");
  else if (!nbl_adapt_elem(c, n->inputs[0]))
    return nbl_adapt_refuse(c, "the element type of input 0 is not known (value becomes an input "
                               "of that type)");
  const nbl_op_adapter *step = c->step;
  c->step = &pads;
  nbl_status st = nbl_adapt_attrs_to_inputs(c);
  c->step = &value;
  if (!st) st = nbl_adapt_attrs_to_inputs(c);
  c->step = step;
  return st;
}

static nbl_status pad_down(nbl_adapt_ctx *c) {
  static const nbl_op_adapter pads = {.attr = "pads", .input = 1, .attr_type = NBL_ATTR_INTS},
                              value = {.attr = "value", .input = 2, .attr_type = NBL_ATTR_FLOAT};
  const nbl_node *n = nbl_adapt_node(c);
  if (n->n_inputs > 3 && n->inputs[3] != NBL_NONE)
    return nbl_adapt_refuse(c, "input 'axes' (opset 18) has no form before opset 11");
  if (!strcmp(nbl_attr_string(n, "mode", "constant"), "wrap"))
    return nbl_adapt_refuse(c, "mode 'wrap' (opset 19) has no form before opset 11");
  if (!nbl_adapt_const_input(c, 1) || (n->n_inputs > 2 && n->inputs[2] != NBL_NONE &&
                                       !nbl_adapt_const_input(c, 2)))
    return nbl_adapt_refuse(c, "pads and constant_value must be constants");
  const nbl_op_adapter *step = c->step;
  c->step = &value;
  nbl_status st = nbl_adapt_inputs_to_attrs(c);
  c->step = &pads;
  if (!st) st = nbl_adapt_inputs_to_attrs(c);
  c->step = step;
  return st;
}

static const nbl_op_adapter pad_steps[] = {
    {.from = 2, .to = 11, .up = pad_up, .down = pad_down},
    {0},
};

/* Constant scales of Resize/Upsample node input i: 1 if all >= 1, -1 if all
 * <= 1, 0 if mixed or not constant. */
static int scales_direction(nbl_adapt_ctx *c, int i) {
  const nbl_tensor *t = nbl_adapt_const_input(c, i);
  if (!t) return 0;
  int up = 0, down = 0;
  for (int64_t k = 0; k < nbl_tensor_numel(t); k++) {
    double v = nbl_tensor_get_f64(t, k);
    up |= v > 1;
    down |= v < 1;
  }
  return up && down ? 0 : down ? -1 : 1;
}

/* Resize 10 -> 11: (X, scales) -> (X, roi, scales). Opset 10 maps output
 * coordinates asymmetrically (x / scale) and rounds nearest down when
 * upsampling, up when downsampling; 11 says asymmetric and one nearest_mode
 * for all axes, so constant scales must not mix the two directions. */
static nbl_status resize_up11(nbl_adapt_ctx *c) {
  const nbl_node *n = nbl_adapt_node(c);
  if (n->n_inputs != 2 || n->inputs[1] == NBL_NONE) return nbl_adapt_refuse(c, "needs X and scales");
  int nearest = !strcmp(nbl_attr_string(n, "mode", "nearest"), "nearest");
  int dir = nearest ? scales_direction(c, 1) : 1;
  if (!dir)
    return nbl_adapt_refuse(c, "nearest mode with scales that are not constant or that up- and "
                               "downsample at once has no form from opset 11 on");
  nbl_id scales = n->inputs[1];
  int64_t zero = 0;
  nbl_id roi = nbl_adapt_const(c, "roi", NBL_DT_FLOAT, 1, &zero, NULL);
  if (roi == NBL_NONE) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  nbl_adapt_set_input(c, 2, scales);
  nbl_adapt_set_input(c, 1, roi);
  nbl_node_set_attr_string(c->graph, c->node, "coordinate_transformation_mode", "asymmetric");
  if (nearest) nbl_node_set_attr_string(c->graph, c->node, "nearest_mode", dir > 0 ? "floor" : "ceil");
  return NBL_OK;
}

static nbl_status resize_down11(nbl_adapt_ctx *c) {
  const nbl_node *n = nbl_adapt_node(c);
  const char *mode = nbl_attr_string(n, "mode", "nearest");
  const char *nm = nbl_attr_string(n, "nearest_mode", "round_prefer_floor");
  int nearest = !strcmp(mode, "nearest");
  int dir = nearest ? scales_direction(c, 2) : 1;
  if (strcmp(nbl_attr_string(n, "coordinate_transformation_mode", "half_pixel"), "asymmetric") ||
      (n->n_inputs > 3 && n->inputs[3] != NBL_NONE) || n->n_inputs < 3 || !strcmp(mode, "cubic") ||
      (nearest && !((dir > 0 && !strcmp(nm, "floor")) || (dir < 0 && !strcmp(nm, "ceil")))))
    return nbl_adapt_refuse(c, "only asymmetric nearest/linear resizing by constant scales has a "
                               "form before opset 11");
  nbl_id scales = n->inputs[2];
  nbl_adapt_set_input(c, 1, scales);
  nbl_adapt_set_input(c, 2, NBL_NONE);
  const char *drop[] = {"coordinate_transformation_mode", "nearest_mode", "cubic_coeff_a",
                        "exclude_outside", "extrapolation_value"};
  for (size_t i = 0; i < sizeof drop / sizeof drop[0]; i++) nbl_adapt_drop_attr(c, drop[i]);
  return NBL_OK;
}

/* Resize 11/12 -> 13: roi and scales become optional (empty constant
 * tensors are dropped), and tf_half_pixel_for_nn goes: x_orig = (x + 0.5) /
 * scale is half_pixel + 0.5, so nearest_mode floor of it is round_prefer_ceil
 * of half_pixel and round_prefer_floor of it is ceil (the other two have no
 * form). */
static nbl_status resize_up13(nbl_adapt_ctx *c) {
  const nbl_node *n = nbl_adapt_node(c);
  const char *ct = nbl_attr_string(n, "coordinate_transformation_mode", "half_pixel");
  const char *nm = nbl_attr_string(n, "nearest_mode", "round_prefer_floor");
  const char *nm13 = NULL;
  if (!strcmp(ct, "tf_half_pixel_for_nn")) {
    if (strcmp(nbl_attr_string(n, "mode", "nearest"), "nearest"))
      return nbl_adapt_refuse(c, "tf_half_pixel_for_nn outside nearest mode has no form from "
                                 "opset 13 on");
    nm13 = !strcmp(nm, "floor") ? "round_prefer_ceil" : !strcmp(nm, "round_prefer_floor") ? "ceil" : NULL;
    if (!nm13)
      return nbl_adapt_refuse(c, "tf_half_pixel_for_nn with nearest_mode '%s' has no form from "
                                 "opset 13 on", nm);
  }
  if (nm13) {
    nbl_node_set_attr_string(c->graph, c->node, "coordinate_transformation_mode", "half_pixel");
    nbl_node_set_attr_string(c->graph, c->node, "nearest_mode", nm13);
  }
  for (int i = 1; i <= 2; i++) {
    const nbl_tensor *t = nbl_adapt_const_input(c, i);
    if (t && nbl_tensor_numel(t) == 0) nbl_adapt_set_input(c, i, NBL_NONE);
  }
  return NBL_OK;
}

static nbl_status resize_down13(nbl_adapt_ctx *c) {
  const nbl_node *n = nbl_adapt_node(c);
  if (nbl_attr_int(n, "antialias", 0) || nbl_node_attr(n, "axes") ||
      strcmp(nbl_attr_string(n, "keep_aspect_ratio_policy", "stretch"), "stretch") ||
      !strcmp(nbl_attr_string(n, "coordinate_transformation_mode", ""), "half_pixel_symmetric"))
    return nbl_adapt_refuse(c, "antialias, axes, keep_aspect_ratio_policy or half_pixel_symmetric "
                               "(opsets 18, 19) have no form before opset 13");
  int64_t zero = 0;
  for (int i = 1; i <= 2; i++) {
    n = nbl_adapt_node(c);
    if (i < n->n_inputs && n->inputs[i] != NBL_NONE) continue;
    nbl_id e = nbl_adapt_const(c, i == 1 ? "roi" : "scales", NBL_DT_FLOAT, 1, &zero, NULL);
    if (e == NBL_NONE) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
    nbl_node_set_input(c->graph, c->node, i, e);
  }
  return NBL_OK;
}

static const nbl_op_adapter resize_steps[] = {
    {.from = 10, .to = 11, .up = resize_up11, .down = resize_down11},
    {.from = 11, .to = 13, .up = resize_up13, .down = resize_down13},
    {0},
};

/* Upsample: scales is an attribute in opsets 7 and 8, input 1 from 9; it
 * ends at 10 (deprecated) and is Resize from 11: asymmetric coordinates,
 * nearest rounded down (X, empty roi, scales). */
static nbl_status upsample_up(nbl_adapt_ctx *c) {
  const nbl_node *n = nbl_adapt_node(c);
  if (n->n_inputs != 2 || n->inputs[1] == NBL_NONE) return nbl_adapt_refuse(c, "needs X and scales");
  const char *mode = nbl_attr_string(n, "mode", "nearest");
  if (strcmp(mode, "nearest") && strcmp(mode, "linear") && strcmp(mode, "bilinear"))
    return nbl_adapt_refuse(c, "mode '%s' is not nearest or linear", mode);
  int nearest = !strcmp(mode, "nearest");
  nbl_id scales = n->inputs[1];
  int64_t zero = 0;
  nbl_id roi = nbl_adapt_const(c, "roi", NBL_DT_FLOAT, 1, &zero, NULL);
  if (roi == NBL_NONE) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  nbl_adapt_set_input(c, 2, scales);
  nbl_adapt_set_input(c, 1, roi);
  nbl_node_set_attr_string(c->graph, c->node, "mode", nearest ? "nearest" : "linear");
  nbl_node_set_attr_string(c->graph, c->node, "coordinate_transformation_mode", "asymmetric");
  if (nearest) nbl_node_set_attr_string(c->graph, c->node, "nearest_mode", "floor");
  return nbl_adapt_rename(c, "Resize");
}

static const nbl_op_adapter upsample_steps[] = {
    {.from = 7, .to = 9, .up = nbl_adapt_attrs_to_inputs, .down = nbl_adapt_inputs_to_attrs,
     .attr = "scales", .input = 1, .attr_type = NBL_ATTR_FLOATS},
    {.from = 9, .to = 11, .up = upsample_up},
    {0},
};

const nbl_op_def nbl_ops_shape_resize[] = {
    NBL_OP("Pad", 1, .ref = k_pad, .shape = shape_pad, .stable_since = 11, .adapters = pad_steps, .grad = g_pad),
    NBL_OP("Resize", 10, .ref = k_resize, .fast = k_resize_fast, .shape = shape_resize, .stable_since = 13,
        .adapters = resize_steps, .grad = g_resize),
    NBL_OP("Upsample", 7, .ref = k_resize, .fast = k_resize_fast, .shape = shape_upsample, .adapters = upsample_steps, .grad = g_resize),
};
const size_t nbl_ops_shape_resize_count = sizeof nbl_ops_shape_resize / sizeof nbl_ops_shape_resize[0];
