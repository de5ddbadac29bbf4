/* runtime/ops/control.c - op family 'control': constants, identity, Dropout
 * (inference), casts, shape queries and generators; the ops with subgraphs
 * (If, Loop, Scan) are in control_flow.c. See kernel.h for the kernel
 * contract. Opset ranges follow the ONNX operator changelog; versions 19 and
 * 21 of these ops only widened their type lists (float8, int4), which is why
 * the latest entries run to NBL_OPSET_MAX. */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/core/grad.h"
#include "runtime/core/exec.h"
#include "runtime/core/adapt.h"
#include "runtime/core/shape.h"

/* ------------------------------------------------------------------ helpers */

static nbl_status out_scalar_i64(nbl_kctx *ctx, int i, int rank, const int64_t *dims,
                                 const int64_t *vals) {
  nbl_status st = nbl_kctx_alloc_out(ctx, i, NBL_DT_INT64, rank, dims);
  if (st != NBL_OK) return st;
  nbl_rt_tensor *t = nbl_kctx_out(ctx, i);
  memcpy(t->data, vals, sizeof(int64_t) * (size_t)t->numel);
  return NBL_OK;
}

static int is_float_type(nbl_dtype dt) {
  return dt == NBL_DT_FLOAT || dt == NBL_DT_DOUBLE || dt == NBL_DT_FLOAT16 ||
         dt == NBL_DT_BFLOAT16;
}

static int is_numeric(nbl_dtype dt) {
  switch (dt) {
  case NBL_DT_FLOAT: case NBL_DT_DOUBLE: case NBL_DT_FLOAT16: case NBL_DT_BFLOAT16:
  case NBL_DT_UINT8: case NBL_DT_INT8: case NBL_DT_UINT16: case NBL_DT_INT16:
  case NBL_DT_INT32: case NBL_DT_INT64: case NBL_DT_UINT32: case NBL_DT_UINT64:
  case NBL_DT_BOOL: case NBL_DT_INT4: case NBL_DT_UINT4:
    return 1;
  default: return 0;
  }
}

/* ------------------------------------------------------------------ Constant */

static nbl_status k_constant(nbl_kctx *ctx) {
  const nbl_node *n = ctx->node;
  for (int a = 0; a < n->n_attrs; a++) {
    const nbl_attr *at = &n->attrs[a];
    const char *nm = at->name;
    if (strcmp(nm, "value") == 0 && at->type == NBL_ATTR_TENSOR && at->t) {
      nbl_rt_tensor v;
      nbl_status st = nbl_rt_from_ir(at->t, &v);
      if (st != NBL_OK) return nbl_kerr(ctx, st, "attribute 'value': %s", nbl_last_error());
      st = nbl_kctx_copy_out(ctx, 0, &v);
      nbl_rt_tensor_free(&v);
      return st;
    }
    if (strcmp(nm, "value_float") == 0 && at->type == NBL_ATTR_FLOAT) {
      nbl_status st = nbl_kctx_alloc_out(ctx, 0, NBL_DT_FLOAT, 0, NULL);
      if (st == NBL_OK) *(float *)nbl_kctx_out(ctx, 0)->data = at->f;
      return st;
    }
    if (strcmp(nm, "value_floats") == 0 && at->type == NBL_ATTR_FLOATS) {
      int64_t d = at->n;
      nbl_status st = nbl_kctx_alloc_out(ctx, 0, NBL_DT_FLOAT, 1, &d);
      if (st == NBL_OK && d) memcpy(nbl_kctx_out(ctx, 0)->data, at->floats, sizeof(float) * (size_t)d);
      return st;
    }
    if (strcmp(nm, "value_int") == 0 && at->type == NBL_ATTR_INT)
      return out_scalar_i64(ctx, 0, 0, NULL, &at->i);
    if (strcmp(nm, "value_ints") == 0 && at->type == NBL_ATTR_INTS) {
      int64_t d = at->n;
      return out_scalar_i64(ctx, 0, 1, &d, at->ints);
    }
    if ((strcmp(nm, "value_string") == 0 && at->type == NBL_ATTR_STRING) ||
        (strcmp(nm, "value_strings") == 0 && at->type == NBL_ATTR_STRINGS)) {
      int one = at->type == NBL_ATTR_STRING;
      int64_t d = one ? 1 : at->n;
      nbl_status st = nbl_kctx_alloc_out(ctx, 0, NBL_DT_STRING, one ? 0 : 1, &d);
      if (st != NBL_OK) return st;
      char **s = nbl_kctx_out(ctx, 0)->data;
      for (int64_t i = 0; i < d; i++) {
        const char *src = one ? at->s : at->strings[i];
        size_t len = one ? at->s_len : (at->string_lens ? at->string_lens[i] : strlen(src));
        s[i] = malloc(len + 1);
        if (!s[i]) return nbl_kerr(ctx, NBL_ERR_OUT_OF_MEMORY, "out of memory");
        memcpy(s[i], src, len);
        s[i][len] = 0;
      }
      return NBL_OK;
    }
    if (strcmp(nm, "sparse_value") == 0)
      return nbl_kerr(ctx, NBL_ERR_UNSUPPORTED, "attribute 'sparse_value' (sparse tensors) is not supported");
  }
  return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "no value attribute");
}

/* ------------------------------------------------------------------ Identity, Dropout */

static nbl_status k_identity(nbl_kctx *ctx) {
  if (!ctx->in[0]) return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "missing input");
  return nbl_kctx_copy_out(ctx, 0, ctx->in[0]);
}

/* Dropout in training mode (opset >= 12, training_mode true, ratio in (0, 1)):
 * element i is kept when u_i >= ratio, u_i uniform in [0, 1) from splitmix64
 * of (seed attribute, a 64-bit hash of the input's bytes, i); kept elements are
 * scaled by 1 / (1 - ratio), mask (output 1, bool) says which. So the mask is
 * a function of the seed and the data: a fresh mask whenever the input
 * changes, the same one for the same input (nothing to checkpoint). */
static nbl_status dropout_train(nbl_kctx *ctx, double ratio) {
  const nbl_rt_tensor *x = ctx->in[0];
  if (!(ratio >= 0 && ratio < 1))
    return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "ratio %g is outside [0, 1)", ratio);
  if (x->dtype != NBL_DT_FLOAT && x->dtype != NBL_DT_DOUBLE)
    return nbl_kerr(ctx, NBL_ERR_UNSUPPORTED, "training mode on %s data is not supported",
                    nbl_dtype_name(x->dtype));
  uint64_t h = (uint64_t)nbl_attr_int(ctx->node, "seed", 0) * 0x9e3779b97f4a7c15ull;
  const unsigned char *b = x->data;
  for (size_t k = 0; k + 8 <= x->nbytes; k += 8) {
    uint64_t w;
    memcpy(&w, b + k, 8);
    h = nbl_splitmix64(h ^ w);
  }
  for (size_t k = x->nbytes & ~(size_t)7; k < x->nbytes; k++) h = nbl_splitmix64(h ^ b[k]);
  nbl_status st = nbl_kctx_alloc_out(ctx, 0, x->dtype, x->rank, x->dims);
  if (st != NBL_OK) return st;
  nbl_rt_tensor *y = nbl_kctx_out(ctx, 0), *m = NULL;
  if (ctx->n_out > 1 && ctx->out[1]) {
    if ((st = nbl_kctx_alloc_out(ctx, 1, NBL_DT_BOOL, x->rank, x->dims)) != NBL_OK) return st;
    m = nbl_kctx_out(ctx, 1);
  }
  double scale = 1.0 / (1.0 - ratio);
  for (int64_t i = 0; i < x->numel; i++) {
    double u = (double)(nbl_splitmix64(h + (uint64_t)i) >> 11) * 0x1.0p-53;
    int keep = u >= ratio;
    if (x->dtype == NBL_DT_FLOAT)
      ((float *)y->data)[i] = keep ? (float)(((const float *)x->data)[i] * scale) : 0.0f;
    else
      ((double *)y->data)[i] = keep ? ((const double *)x->data)[i] * scale : 0.0;
    if (m) ((uint8_t *)m->data)[i] = (uint8_t)keep;
  }
  return NBL_OK;
}

static nbl_status k_dropout(nbl_kctx *ctx) {
  if (!ctx->in[0]) return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "missing input");
  /* training_mode (opset 12+: input 2) true: random dropout (ratio 0: the identity) */
  if (ctx->opset >= 12 && ctx->n_in > 2 && ctx->in[2] && ctx->in[2]->numel > 0 &&
      nbl_rt_get_i64(ctx->in[2], 0) != 0) {
    double ratio = ctx->n_in > 1 && ctx->in[1] && ctx->in[1]->numel ? nbl_rt_get_f64(ctx->in[1], 0)
                                                                     : 0.5;
    if (ratio != 0) return dropout_train(ctx, ratio);
  }
  if (ctx->opset < 7 && nbl_attr_int(ctx->node, "is_test", 0) == 0 &&
      nbl_attr_float(ctx->node, "ratio", 0.5f) != 0)
    return nbl_kerr(ctx, NBL_ERR_UNSUPPORTED, "is_test=0 (random dropout) is not supported");
  nbl_status st = nbl_kctx_copy_out(ctx, 0, ctx->in[0]);
  if (st != NBL_OK || ctx->n_out < 2 || !ctx->out[1]) return st;
  nbl_dtype mdt = ctx->opset >= 10 ? NBL_DT_BOOL : ctx->in[0]->dtype;
  st = nbl_kctx_alloc_out(ctx, 1, mdt, ctx->in[0]->rank, ctx->in[0]->dims);
  if (st != NBL_OK) return st;
  nbl_rt_tensor *m = nbl_kctx_out(ctx, 1);
  if (mdt == NBL_DT_BOOL) {
    if (m->nbytes) memset(m->data, 1, m->nbytes);
  } else {
    for (int64_t i = 0; i < m->numel; i++) nbl_rt_set_f64(m, i, 1.0);
  }
  return NBL_OK;
}

/* ------------------------------------------------------------------ Cast */

static const struct {
  const char *name;
  nbl_dtype dt;
} cast1_names[] = {
    {"FLOAT", NBL_DT_FLOAT},   {"UINT8", NBL_DT_UINT8},   {"INT8", NBL_DT_INT8},
    {"UINT16", NBL_DT_UINT16}, {"INT16", NBL_DT_INT16},   {"INT32", NBL_DT_INT32},
    {"INT64", NBL_DT_INT64},   {"STRING", NBL_DT_STRING}, {"BOOL", NBL_DT_BOOL},
    {"FLOAT16", NBL_DT_FLOAT16}, {"DOUBLE", NBL_DT_DOUBLE}, {"UINT32", NBL_DT_UINT32},
    {"UINT64", NBL_DT_UINT64}, {"BFLOAT16", NBL_DT_BFLOAT16},
};

/* Shortest decimal that reads back as the same float, spelled like NumPy's str(). */
static void float_to_string(double v, int is_double, char *buf, size_t cap) {
  if (isnan(v)) {
    snprintf(buf, cap, "NaN");
    return;
  }
  if (isinf(v)) {
    snprintf(buf, cap, v > 0 ? "INF" : "-INF");
    return;
  }
  int maxp = is_double ? 17 : 9;
  for (int p = 1; p <= maxp; p++) {
    snprintf(buf, cap, "%.*g", p, v);
    double back = strtod(buf, NULL);
    if (is_double ? back == v : (float)back == (float)v) break;
  }
  if (!strchr(buf, '.') && !strchr(buf, 'e') && !strchr(buf, 'n') && !strchr(buf, 'i')) {
    size_t l = strlen(buf);
    if (l + 2 < cap) memcpy(buf + l, ".0", 3);
  }
}

static nbl_status parse_string_number(nbl_kctx *ctx, const char *s, nbl_dtype to, double *d,
                                      int64_t *i, int *is_int) {
  while (isspace((unsigned char)*s)) s++;
  char *end;
  *is_int = 0;
  if (!is_float_type(to) && to != NBL_DT_BOOL) {
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (end != s && *end == 0) {
      *i = v;
      *is_int = 1;
      return NBL_OK;
    }
  }
  char low[64];
  size_t l = strlen(s);
  if (l < sizeof low) {
    for (size_t k = 0; k <= l; k++) low[k] = (char)tolower((unsigned char)s[k]);
    const char *p = low;
    int neg = 0;
    if (*p == '+' || *p == '-') neg = *p++ == '-';
    if (strcmp(p, "inf") == 0 || strcmp(p, "infinity") == 0) {
      *d = neg ? -INFINITY : INFINITY;
      return NBL_OK;
    }
    if (strcmp(p, "nan") == 0) {
      *d = NAN;
      return NBL_OK;
    }
  }
  *d = strtod(s, &end);
  if (end == s || *end != 0)
    return nbl_kerr(ctx, NBL_ERR_RUNTIME, "cannot convert string '%s' to %s", s, nbl_dtype_name(to));
  return NBL_OK;
}

static nbl_status do_cast(nbl_kctx *ctx, const nbl_rt_tensor *x, nbl_dtype to) {
  nbl_dtype from = x->dtype;
  if (to != NBL_DT_STRING && !is_numeric(to))
    return nbl_kerr(ctx, NBL_ERR_UNSUPPORTED, "cast to %s is not supported", nbl_dtype_name(to));
  if (from != NBL_DT_STRING && !is_numeric(from))
    return nbl_kerr(ctx, NBL_ERR_UNSUPPORTED, "cast from %s is not supported",
                    nbl_dtype_name(from));
  if (from == to) return nbl_kctx_copy_out(ctx, 0, x);
  nbl_status st = nbl_kctx_alloc_out(ctx, 0, to, x->rank, x->dims);
  if (st != NBL_OK) return st;
  nbl_rt_tensor *y = nbl_kctx_out(ctx, 0);
  int64_t n = x->numel;
  if (to == NBL_DT_STRING) {
    char **s = y->data;
    for (int64_t i = 0; i < n; i++) {
      char buf[64];
      if (is_float_type(from))
        float_to_string(nbl_rt_get_f64(x, i), from == NBL_DT_DOUBLE, buf, sizeof buf);
      else if (from == NBL_DT_UINT64)
        snprintf(buf, sizeof buf, "%llu", (unsigned long long)((const uint64_t *)x->data)[i]);
      else if (from == NBL_DT_BOOL)
        snprintf(buf, sizeof buf, "%s", nbl_rt_get_i64(x, i) ? "True" : "False");
      else
        snprintf(buf, sizeof buf, "%lld", (long long)nbl_rt_get_i64(x, i));
      s[i] = strdup(buf);
      if (!s[i]) return nbl_kerr(ctx, NBL_ERR_OUT_OF_MEMORY, "out of memory");
    }
    return NBL_OK;
  }
  if (from == NBL_DT_STRING) {
    char *const *s = x->data;
    for (int64_t i = 0; i < n; i++) {
      double d = 0;
      int64_t iv = 0;
      int is_int = 0;
      st = parse_string_number(ctx, s[i] ? s[i] : "", to, &d, &iv, &is_int);
      if (st != NBL_OK) return st;
      if (is_int) nbl_rt_set_i64(y, i, iv);
      else nbl_rt_set_f64(y, i, d);
    }
    return NBL_OK;
  }
  /* fast common paths */
  if (from == NBL_DT_FLOAT && to == NBL_DT_FLOAT16) {
    const float *a = x->data;
    uint16_t *b = y->data;
    for (int64_t i = 0; i < n; i++) b[i] = nbl_float_to_half(a[i]);
    return NBL_OK;
  }
  if (from == NBL_DT_DOUBLE && to == NBL_DT_FLOAT) {
    const double *a = x->data;
    float *b = y->data;
    for (int64_t i = 0; i < n; i++) b[i] = (float)a[i];
    return NBL_OK;
  }
  if (from == NBL_DT_DOUBLE && (to == NBL_DT_FLOAT16 || to == NBL_DT_BFLOAT16)) {
    /* round once from double: go through float only when exact enough */
    for (int64_t i = 0; i < n; i++) nbl_rt_set_f64(y, i, ((const double *)x->data)[i]);
    return NBL_OK;
  }
  int from_int = !is_float_type(from);
  int to_int = !is_float_type(to);
  if (from_int && to_int) {
    if (from == NBL_DT_UINT64) {
      const uint64_t *a = x->data;
      for (int64_t i = 0; i < n; i++) nbl_rt_set_i64(y, i, (int64_t)a[i]);
    } else {
      for (int64_t i = 0; i < n; i++) nbl_rt_set_i64(y, i, nbl_rt_get_i64(x, i));
    }
    return NBL_OK;
  }
  if (!from_int && to_int) {
    for (int64_t i = 0; i < n; i++) {
      double v = nbl_rt_get_f64(x, i);
      if (to == NBL_DT_BOOL) {
        ((uint8_t *)y->data)[i] = v != 0;
      } else if (to == NBL_DT_UINT64) {
        ((uint64_t *)y->data)[i] = isnan(v) || v <= 0 ? 0 : v >= 1.8446744073709552e19 ? UINT64_MAX : (uint64_t)v;
      } else {
        nbl_rt_set_f64(y, i, trunc(v));
      }
    }
    return NBL_OK;
  }
  for (int64_t i = 0; i < n; i++) nbl_rt_set_f64(y, i, nbl_rt_get_f64(x, i));
  return NBL_OK;
}

static nbl_status k_cast(nbl_kctx *ctx) {
  if (!ctx->in[0]) return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "missing input");
  const nbl_attr *a = nbl_node_attr(ctx->node, "to");
  if (!a) return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "attribute 'to' is required");
  nbl_dtype to = NBL_DT_UNDEFINED;
  if (a->type == NBL_ATTR_STRING) {
    for (size_t i = 0; i < sizeof cast1_names / sizeof cast1_names[0]; i++)
      if (strcasecmp(a->s, cast1_names[i].name) == 0) to = cast1_names[i].dt;
  } else if (a->type == NBL_ATTR_INT && nbl_dtype_valid((int)a->i)) {
    to = (nbl_dtype)a->i;
  }
  if (to == NBL_DT_UNDEFINED) return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "bad attribute 'to'");
  if (ctx->opset >= 19 && nbl_attr_int(ctx->node, "saturate", 1) != 1)
    return nbl_kerr(ctx, NBL_ERR_UNSUPPORTED, "saturate=0 (float8) is not supported");
  return do_cast(ctx, ctx->in[0], to);
}

static nbl_status k_castlike(nbl_kctx *ctx) {
  if (!ctx->in[0] || ctx->n_in < 2 || !ctx->in[1])
    return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "CastLike needs two inputs");
  return do_cast(ctx, ctx->in[0], ctx->in[1]->dtype);
}

/* ------------------------------------------------------------------ Shape, Size */

static nbl_status k_shape(nbl_kctx *ctx) {
  const nbl_rt_tensor *x = ctx->in[0];
  if (!x) return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "missing input");
  int64_t r = x->rank, start = 0, end = r;
  if (ctx->opset >= 15) {
    start = nbl_attr_int(ctx->node, "start", 0);
    end = nbl_attr_int(ctx->node, "end", r);
    if (start < 0) start += r;
    if (end < 0) end += r;
    start = start < 0 ? 0 : start > r ? r : start;
    end = end < 0 ? 0 : end > r ? r : end;
  }
  int64_t len = end > start ? end - start : 0;
  return out_scalar_i64(ctx, 0, 1, &len, x->dims + start);
}

static nbl_status k_size(nbl_kctx *ctx) {
  if (!ctx->in[0]) return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "missing input");
  int64_t n = ctx->in[0]->numel;
  return out_scalar_i64(ctx, 0, 0, NULL, &n);
}

/* ------------------------------------------------------------------ generators */

static nbl_status k_constant_of_shape(nbl_kctx *ctx) {
  const nbl_rt_tensor *s = ctx->in[0];
  if (!s) return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "missing input");
  if (s->dtype != NBL_DT_INT64 || s->rank != 1)
    return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "input must be a 1-D int64 tensor");
  if (s->numel > NBL_MAX_RANK)
    return nbl_kerr(ctx, NBL_ERR_UNSUPPORTED, "rank %lld exceeds the supported maximum %d",
                    (long long)s->numel, NBL_MAX_RANK);
  int64_t dims[NBL_MAX_RANK];
  for (int64_t i = 0; i < s->numel; i++) {
    dims[i] = ((const int64_t *)s->data)[i];
    if (dims[i] < 0) return nbl_kerr(ctx, NBL_ERR_RUNTIME, "negative dimension %lld", (long long)dims[i]);
  }
  const nbl_attr *a = nbl_node_attr(ctx->node, "value");
  nbl_rt_tensor v = {0};
  nbl_dtype dt = NBL_DT_FLOAT;
  if (a && a->type == NBL_ATTR_TENSOR && a->t) {
    nbl_status st = nbl_rt_from_ir(a->t, &v);
    if (st != NBL_OK) return nbl_kerr(ctx, st, "attribute 'value': %s", nbl_last_error());
    if (v.numel != 1) {
      nbl_rt_tensor_free(&v);
      return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "attribute 'value' must hold one element");
    }
    dt = v.dtype;
  }
  if (dt == NBL_DT_STRING || !is_numeric(dt)) {
    nbl_rt_tensor_free(&v);
    return nbl_kerr(ctx, NBL_ERR_UNSUPPORTED, "value type %s is not supported", nbl_dtype_name(dt));
  }
  nbl_status st = nbl_kctx_alloc_out(ctx, 0, dt, (int)s->numel, dims);
  if (st == NBL_OK && v.data) {
    nbl_rt_tensor *y = nbl_kctx_out(ctx, 0);
    size_t es = nbl_rt_elem_size(dt);
    if (es) {
      for (int64_t i = 0; i < y->numel; i++) memcpy((char *)y->data + (size_t)i * es, v.data, es);
    } else {
      int64_t c = nbl_rt_get_i64(&v, 0);
      for (int64_t i = 0; i < y->numel; i++) nbl_rt_set_i64(y, i, c);
    }
  } else if (st == NBL_OK) {
    memset(nbl_kctx_out(ctx, 0)->data, 0, nbl_kctx_out(ctx, 0)->nbytes);
  }
  nbl_rt_tensor_free(&v);
  return st;
}

static nbl_status k_range(nbl_kctx *ctx) {
  for (int i = 0; i < 3; i++)
    if (i >= ctx->n_in || !ctx->in[i] || ctx->in[i]->numel != 1)
      return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "start, limit and delta must be scalars");
  nbl_dtype dt = ctx->in[0]->dtype;
  if (ctx->in[1]->dtype != dt || ctx->in[2]->dtype != dt)
    return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "start, limit and delta must have one type");
  int64_t n;
  if (is_float_type(dt)) {
    double s = nbl_rt_get_f64(ctx->in[0], 0), l = nbl_rt_get_f64(ctx->in[1], 0),
           d = nbl_rt_get_f64(ctx->in[2], 0);
    if (d == 0 || isnan(s) || isnan(l) || isnan(d))
      return nbl_kerr(ctx, NBL_ERR_RUNTIME, "delta is zero or a value is NaN");
    double c = ceil((l - s) / d);
    if (c > 1e12) return nbl_kerr(ctx, NBL_ERR_RUNTIME, "range of %g elements is too large", c);
    n = c > 0 ? (int64_t)c : 0;
    nbl_status st = nbl_kctx_alloc_out(ctx, 0, dt, 1, &n);
    if (st != NBL_OK) return st;
    nbl_rt_tensor *y = nbl_kctx_out(ctx, 0);
    if (dt == NBL_DT_FLOAT) { /* accumulate in the element type, as the spec's loop does */
      float v = (float)s, fd = (float)d;
      for (int64_t i = 0; i < n; i++, v += fd) ((float *)y->data)[i] = v;
    } else {
      for (int64_t i = 0; i < n; i++) nbl_rt_set_f64(y, i, s + (double)i * d);
    }
    return NBL_OK;
  }
  int64_t s = nbl_rt_get_i64(ctx->in[0], 0), l = nbl_rt_get_i64(ctx->in[1], 0),
          d = nbl_rt_get_i64(ctx->in[2], 0);
  if (d == 0) return nbl_kerr(ctx, NBL_ERR_RUNTIME, "delta is zero");
  double c = ceil(((double)l - (double)s) / (double)d);
  if (c > 1e12) return nbl_kerr(ctx, NBL_ERR_RUNTIME, "range of %g elements is too large", c);
  n = c > 0 ? (int64_t)c : 0;
  nbl_status st = nbl_kctx_alloc_out(ctx, 0, dt, 1, &n);
  if (st != NBL_OK) return st;
  nbl_rt_tensor *y = nbl_kctx_out(ctx, 0);
  for (int64_t i = 0; i < n; i++) nbl_rt_set_i64(y, i, s + i * d);
  return NBL_OK;
}

static nbl_status k_eyelike(nbl_kctx *ctx) {
  const nbl_rt_tensor *x = ctx->in[0];
  if (!x || x->rank != 2) return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "input must be 2-D");
  const nbl_attr *a = nbl_node_attr(ctx->node, "dtype");
  nbl_dtype dt = a ? (nbl_dtype)a->i : x->dtype;
  if (!is_numeric(dt)) return nbl_kerr(ctx, NBL_ERR_UNSUPPORTED, "dtype %d is not supported", (int)dt);
  int64_t k = nbl_attr_int(ctx->node, "k", 0);
  nbl_status st = nbl_kctx_alloc_out(ctx, 0, dt, 2, x->dims);
  if (st != NBL_OK) return st;
  nbl_rt_tensor *y = nbl_kctx_out(ctx, 0);
  memset(y->data, 0, y->nbytes);
  for (int64_t r = 0; r < x->dims[0]; r++) {
    int64_t c = r + k;
    if (c >= 0 && c < x->dims[1]) nbl_rt_set_i64(y, r * x->dims[1] + c, 1);
  }
  return NBL_OK;
}

/* ------------------------------------------------------------------ shape rules */

static nbl_status shape_constant(nbl_shape_ctx *c) {
  const nbl_node *n = c->node;
  nbl_shp o;
  for (int i = 0; i < n->n_attrs; i++) {
    const nbl_attr *a = &n->attrs[i];
    if (!strcmp(a->name, "value") && a->type == NBL_ATTR_TENSOR && a->t) {
      if (a->t->rank > NBL_SHP_MAXR) return nbl_shp_set_dt(c, 0, a->t->dtype, -1);
      o.dt = a->t->dtype;
      o.rank = a->t->rank;
      for (int d = 0; d < o.rank; d++) o.d[d] = nbl_dim_val(a->t->dims[d]);
      return nbl_shp_set(c, 0, &o);
    }
    nbl_kdata k = {.rank = 0, .n = 0};
    if (!strcmp(a->name, "value_float")) return nbl_shp_set_dt(c, 0, NBL_DT_FLOAT, 0);
    if (!strcmp(a->name, "value_string")) return nbl_shp_set_dt(c, 0, NBL_DT_STRING, 0);
    if (!strcmp(a->name, "value_int")) {
      nbl_status st = nbl_shp_set_dt(c, 0, NBL_DT_INT64, 0);
      k.n = 1;
      k.e[0].kind = NBL_KD_VAL;
      k.e[0].v = a->i;
      return st ? st : nbl_shp_set_kd(c, 0, &k);
    }
    int len = a->n;
    nbl_dtype dt = !strcmp(a->name, "value_floats") ? NBL_DT_FLOAT
                   : !strcmp(a->name, "value_ints") ? NBL_DT_INT64
                   : !strcmp(a->name, "value_strings") ? NBL_DT_STRING
                   : NBL_DT_UNDEFINED;
    if (!dt) continue;
    o.dt = dt;
    o.rank = 1;
    o.d[0] = nbl_dim_val(len);
    nbl_status st = nbl_shp_set(c, 0, &o);
    if (st || dt != NBL_DT_INT64 || len > NBL_SHP_MAXK) return st;
    k.rank = 1;
    k.n = len;
    for (int j = 0; j < len; j++) {
      k.e[j].kind = NBL_KD_VAL;
      k.e[j].v = a->ints[j];
    }
    return nbl_shp_set_kd(c, 0, &k);
  }
  return NBL_OK; /* sparse_value: left unknown */
}

static nbl_status shape_identity(nbl_shape_ctx *c) {
  const nbl_type *t = nbl_shp_in_type(c, 0);
  if (t && t->kind != NBL_TYPE_TENSOR) return nbl_shp_set_type(c, 0, t); /* a sequence or optional */
  nbl_status st = nbl_shape_same(c);
  nbl_kdata k;
  if (!st && nbl_shp_in_kd(c, 0, &k)) st = nbl_shp_set_kd(c, 0, &k);
  return st;
}

/* Dropout: the input's type; the mask bool (before opset 10 the input's type). */
static nbl_status shape_dropout(nbl_shape_ctx *c) {
  nbl_status st = nbl_shape_same(c);
  if (st) return st;
  nbl_shp s;
  nbl_shp_in(c, 0, &s);
  if (c->opset >= 10) s.dt = NBL_DT_BOOL;
  return nbl_shp_set(c, 1, &s);
}

/* Cast to `to`; known small integer data stays known. */
static nbl_status shape_cast_to(nbl_shape_ctx *c, nbl_dtype to) {
  nbl_shp x;
  nbl_shp_in(c, 0, &x);
  x.dt = to;
  nbl_status st = nbl_shp_set(c, 0, &x);
  nbl_kdata k;
  if (!st && nbl_shp_is_int(to) && nbl_shp_in_kd(c, 0, &k)) st = nbl_shp_set_kd(c, 0, &k);
  return st;
}

static nbl_status shape_cast(nbl_shape_ctx *c) {
  const nbl_node *n = c->node;
  int64_t to = nbl_attr_int(n, "to", 0);
  if (!nbl_dtype_valid((int)to))
    return nbl_errorf(NBL_ERR_INVALID_MODEL, "node '%s' (Cast): bad 'to' %lld", n->name, (long long)to);
  return shape_cast_to(c, (nbl_dtype)to);
}

static nbl_status shape_castlike(nbl_shape_ctx *c) { return shape_cast_to(c, nbl_shp_in_dtype(c, 1)); }

static nbl_status shape_shape(nbl_shape_ctx *c) {
  nbl_shp x;
  nbl_shp_in(c, 0, &x);
  if (x.rank < 0) return nbl_shp_set_dt(c, 0, NBL_DT_INT64, 1);
  int64_t s = 0, e = x.rank;
  if (c->opset >= 15) {
    s = nbl_attr_int(c->node, "start", 0);
    e = nbl_attr_int(c->node, "end", x.rank);
    if (s < 0) s += x.rank;
    if (e < 0) e += x.rank;
    if (s < 0) s = 0;
    if (s > x.rank) s = x.rank;
    if (e < 0) e = 0;
    if (e > x.rank) e = x.rank;
  }
  int64_t len = e > s ? e - s : 0;
  nbl_shp o;
  o.dt = NBL_DT_INT64;
  o.rank = 1;
  o.d[0] = nbl_dim_val(len);
  nbl_status st = nbl_shp_set(c, 0, &o);
  if (st || len > NBL_SHP_MAXK) return st;
  nbl_kdata k;
  k.rank = 1;
  k.n = (int)len;
  for (int i = 0; i < len; i++) {
    nbl_dim d = x.d[s + i];
    k.e[i].kind = nbl_dim_known(d) ? NBL_KD_VAL : d.param ? NBL_KD_SYM : NBL_KD_UNK;
    k.e[i].v = d.value;
    k.e[i].p = d.param;
  }
  return nbl_shp_set_kd(c, 0, &k);
}

static nbl_status shape_size(nbl_shape_ctx *c) {
  nbl_shp x;
  nbl_shp_in(c, 0, &x);
  nbl_status st = nbl_shp_set_dt(c, 0, NBL_DT_INT64, 0);
  if (st || x.rank < 0) return st;
  nbl_dim p = nbl_dim_prod(x.d, x.rank);
  if (!nbl_dim_known(p)) return NBL_OK;
  nbl_kdata k = {.rank = 0, .n = 1};
  k.e[0].kind = NBL_KD_VAL;
  k.e[0].v = p.value;
  return nbl_shp_set_kd(c, 0, &k);
}

static nbl_status shape_constant_of_shape(nbl_shape_ctx *c) {
  const nbl_attr *a = nbl_node_attr(c->node, "value");
  nbl_dtype dt = (a && a->type == NBL_ATTR_TENSOR && a->t) ? a->t->dtype : NBL_DT_FLOAT;
  nbl_kdata k;
  nbl_shp o, sh;
  if (!nbl_shp_in_kd(c, 0, &k) || k.n > NBL_SHP_MAXR) {
    nbl_shp_in(c, 0, &sh);
    if (sh.rank == 1 && nbl_dim_known(sh.d[0]) && sh.d[0].value <= NBL_SHP_MAXR)
      return nbl_shp_set_dt(c, 0, dt, (int)sh.d[0].value);
    return nbl_shp_set_dt(c, 0, dt, -1);
  }
  o.dt = dt;
  o.rank = k.n;
  for (int i = 0; i < k.n; i++) {
    o.d[i] = nbl_dim_unk();
    if (k.e[i].kind == NBL_KD_VAL) o.d[i] = nbl_dim_val(k.e[i].v);
    else if (k.e[i].kind == NBL_KD_SYM) o.d[i].param = k.e[i].p;
  }
  nbl_status st = nbl_shp_set(c, 0, &o);
  /* a small integer result is known data too */
  if (!st && k.n == 1 && k.e[0].kind == NBL_KD_VAL && k.e[0].v <= NBL_SHP_MAXK && nbl_shp_is_int(dt) && a &&
      a->t && nbl_shp_payload_ok(a->t, 1)) {
    nbl_kdata r = {.rank = 1, .n = (int)k.e[0].v};
    for (int i = 0; i < r.n; i++) {
      r.e[i].kind = NBL_KD_VAL;
      r.e[i].v = nbl_tensor_get_i64(a->t, 0);
    }
    st = nbl_shp_set_kd(c, 0, &r);
  }
  return st;
}

static nbl_status shape_range(nbl_shape_ctx *c) {
  nbl_dtype dt = nbl_shp_in_dtype(c, 0);
  double s[1], l[1], d[1];
  int n1, n2, n3;
  if (nbl_shp_in_floats(c, 0, s, &n1, 1) && nbl_shp_in_floats(c, 1, l, &n2, 1) && nbl_shp_in_floats(c, 2, d, &n3, 1) &&
      n1 == 1 && n2 == 1 && n3 == 1 && d[0] != 0) {
    double cnt = ceil((l[0] - s[0]) / d[0]);
    if (cnt < 0) cnt = 0;
    nbl_shp o;
    o.dt = dt;
    o.rank = 1;
    o.d[0] = nbl_dim_val((int64_t)cnt);
    return nbl_shp_set(c, 0, &o);
  }
  return nbl_shp_set_dt(c, 0, dt, 1);
}

/* ------------------------------------------------------------------ gradient rules
 * (runtime/core/grad.h) */

/* Identity (and Dropout in inference mode): the gradient passes through. */
static nbl_status g_identity(nbl_grad_ctx *gc) {
  nbl_grad_set_dx(gc, 0, nbl_grad_dy(gc, 0));
  return nbl_grad_status(gc);
}

/* Dropout: in training mode (opset >= 12, training_mode a constant true)
 * com.microsoft DropoutGrad (dY, mask, ratio, training_mode) with the mask
 * output added to the forward node; otherwise the identity. */
static nbl_status g_dropout(nbl_grad_ctx *gc) {
  nbl_grad_no_dx(gc, 1, "the ratio gets no gradient");
  if (!nbl_grad_wants(gc, 0)) return nbl_grad_status(gc);
  nbl_id tm = nbl_grad_opset(gc, "") >= 12 ? nbl_grad_x(gc, 2) : NBL_NONE;
  if (tm == NBL_NONE) return g_identity(gc);
  int64_t v = 0;
  if (nbl_grad_const_ints(gc, tm, &v, 1) != 1) {
    /* a bool constant is not an int64 one: read it from the Constant's tensor */
    nbl_graph *g = nbl_grad_graph(gc);
    const nbl_value *val = &g->values[tm];
    const nbl_tensor *t = val->init;
    if (!t && val->producer != NBL_NONE && !strcmp(g->nodes[val->producer].op_type, "Constant")) {
      const nbl_attr *a = nbl_node_attr(&g->nodes[val->producer], "value");
      t = a && a->type == NBL_ATTR_TENSOR ? a->t : NULL;
    }
    if (!t || nbl_tensor_numel(t) != 1)
      return nbl_grad_fail(gc, NBL_ERR_UNSUPPORTED, "training_mode must be a constant");
    v = nbl_tensor_get_i64(t, 0);
  }
  if (!v) return g_identity(gc);
  nbl_id in[4] = {nbl_grad_dy(gc, 0), nbl_grad_y_need(gc, 1), nbl_grad_x(gc, 1), tm};
  nbl_grad_set_dx(gc, 0, nbl_grad_op(gc, "DropoutGrad", "com.microsoft", 4, in));
  return nbl_grad_status(gc);
}

/* Cast / CastLike between float types: dY cast back to the input's type. */
static nbl_status g_cast(nbl_grad_ctx *gc) {
  if (!nbl_grad_wants(gc, 0)) return NBL_OK;
  nbl_dtype dt = nbl_grad_dtype(gc, nbl_grad_x(gc, 0));
  if (dt == NBL_DT_UNDEFINED)
    return nbl_grad_fail(gc, NBL_ERR_UNSUPPORTED, "the input's element type must be known");
  nbl_id dx = nbl_grad_un(gc, "Cast", nbl_grad_dy(gc, 0));
  nbl_grad_attr_int(gc, "to", dt);
  nbl_grad_set_dx(gc, 0, dx);
  return nbl_grad_status(gc);
}

/* EyeLike: the input's shape; the 'dtype' attribute, else the input's type. */
static nbl_status shape_eyelike(nbl_shape_ctx *c) {
  nbl_shp x;
  nbl_shp_in(c, 0, &x);
  const nbl_attr *a = nbl_node_attr(c->node, "dtype");
  if (a) x.dt = nbl_dtype_valid((int)a->i) ? (nbl_dtype)a->i : NBL_DT_UNDEFINED;
  return nbl_shp_set(c, 0, &x);
}

/* ------------------------------------------------------------------ table */

/* Dropout: is_test before 7; the mask has X's type before 10, bool from 10;
 * ratio is an attribute before 12, input 1 from 12 (with training_mode). */
static const nbl_op_adapter dropout_steps[] = {
    {.from = 1, .to = 7, .up = nbl_adapt_is_test, .down = nbl_adapt_is_test_down},
    {.from = 7, .to = 10, .up = nbl_adapt_mask_bool, .down = nbl_adapt_mask_bool_down},
    {.from = 10, .to = 12, .up = nbl_adapt_attrs_to_inputs, .down = nbl_adapt_inputs_to_attrs,
     .attr = "ratio", .input = 1, .attr_type = NBL_ATTR_FLOAT, .dtype = NBL_DT_FLOAT},
    {0},
};

const nbl_op_def nbl_ops_control[] = {
    NBL_OP("Constant", 1, .ref = k_constant, .shape = shape_constant, .stable_since = 1,
        .no_grad = NBL_NO_GRAD_CONST),
    NBL_OP("Identity", 1, .ref = k_identity, .shape = shape_identity, .stable_since = 1, .grad = g_identity,
        .flags = NBL_OPF_VALUES),
    NBL_OP("Dropout", 1, .ref = k_dropout, .shape = shape_dropout, .stable_since = 12,
        .adapters = dropout_steps, .grad = g_dropout),
    NBL_OP("Cast", 1, .ref = k_cast, .shape = shape_cast, .stable_since = 6, .grad = g_cast),
    NBL_OP("CastLike", 15, .ref = k_castlike, .shape = shape_castlike, .stable_since = 15, .grad = g_cast),
    NBL_OP("Shape", 1, .ref = k_shape, .shape = shape_shape, .stable_since = 1,
        .no_grad = NBL_NO_GRAD_INT),
    NBL_OP("Size", 1, .ref = k_size, .shape = shape_size, .stable_since = 1,
        .no_grad = NBL_NO_GRAD_INT),
    NBL_OP("ConstantOfShape", 9, .ref = k_constant_of_shape, .shape = shape_constant_of_shape,
        .stable_since = 9, .no_grad = NBL_NO_GRAD_CONST),
    NBL_OP("Range", 11, .ref = k_range, .shape = shape_range, .stable_since = 11, .no_grad = "no rule yet"),
    NBL_OP("EyeLike", 9, .ref = k_eyelike, .shape = shape_eyelike, .stable_since = 9,
        .grad = nbl_grad_zero),
};
const size_t nbl_ops_control_count = sizeof nbl_ops_control / sizeof nbl_ops_control[0];
