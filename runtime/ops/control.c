/* runtime/ops/control.c - op family 'control': constants, identity, casts, shape
 * queries, generators and control flow (If, Loop, Scan). See kernel.h for
 * the kernel contract. Opset ranges follow the ONNX operator changelog;
 * versions 19 and 21 of these ops only widened their type lists (float8,
 * int4), which is why the latest entries run to 21. */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/* Put an owned tensor into output i without another copy (falls back to a
 * copy for omitted outputs). Takes ownership of *t in every case. */
static nbl_status move_out(nbl_kctx *ctx, int i, nbl_rt_tensor *t) {
  if (ctx->out[i] && t->owns) {
    nbl_rt_tensor_free(ctx->out[i]);
    *ctx->out[i] = *t;
    memset(t, 0, sizeof *t);
    return NBL_OK;
  }
  nbl_status st = nbl_kctx_copy_out(ctx, i, t);
  nbl_rt_tensor_free(t);
  return st;
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

static nbl_status k_dropout(nbl_kctx *ctx) {
  if (!ctx->in[0]) return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "missing input");
  /* training_mode (opset 12+: input 2) must be false for inference semantics */
  if (ctx->opset >= 12 && ctx->n_in > 2 && ctx->in[2] && ctx->in[2]->numel > 0 &&
      nbl_rt_get_i64(ctx->in[2], 0) != 0) {
    /* ratio 0 in training mode is still the identity */
    double ratio = ctx->n_in > 1 && ctx->in[1] && ctx->in[1]->numel ? nbl_rt_get_f64(ctx->in[1], 0)
                                                                     : 0.5;
    if (ratio != 0)
      return nbl_kerr(ctx, NBL_ERR_UNSUPPORTED,
                      "training_mode=true with ratio %g (random dropout) is not supported", ratio);
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
  for (int64_t i = 0; i < m->numel; i++) nbl_rt_set_f64(m, i, 1.0);
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

/* ------------------------------------------------------------------ If */

static const nbl_graph *graph_attr(const nbl_node *n, const char *name) {
  const nbl_attr *a = nbl_node_attr(n, name);
  return a && a->type == NBL_ATTR_GRAPH ? a->g : NULL;
}

static nbl_status k_if(nbl_kctx *ctx) {
  const nbl_rt_tensor *c = ctx->in[0];
  if (!c || c->numel != 1) return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "cond must hold one element");
  int cond = nbl_rt_get_f64(c, 0) != 0;
  const nbl_graph *g = graph_attr(ctx->node, cond ? "then_branch" : "else_branch");
  if (!g) return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "missing branch graph");
  nbl_rt_tensor *res = calloc((size_t)(ctx->n_out ? ctx->n_out : 1), sizeof(nbl_rt_tensor));
  nbl_rt_tensor **ptr = calloc((size_t)(ctx->n_out ? ctx->n_out : 1), sizeof(nbl_rt_tensor *));
  if (!res || !ptr) {
    free(res);
    free(ptr);
    return nbl_kerr(ctx, NBL_ERR_OUT_OF_MEMORY, "out of memory");
  }
  for (int i = 0; i < ctx->n_out; i++) ptr[i] = &res[i];
  nbl_status st = nbl_kctx_run_subgraph(ctx, g, 0, NULL, ctx->n_out, ptr);
  for (int i = 0; i < ctx->n_out; i++) {
    if (st == NBL_OK) st = move_out(ctx, i, &res[i]);
    else nbl_rt_tensor_free(&res[i]);
  }
  free(res);
  free(ptr);
  return st;
}

/* ------------------------------------------------------------------ Loop */

typedef struct stack_buf {
  nbl_rt_tensor first; /* shape/type of the first slice (data unused) */
  unsigned char *data;
  size_t len, cap;
  int64_t count;
} stack_buf;

static nbl_status stack_push(nbl_kctx *ctx, stack_buf *b, const nbl_rt_tensor *t, const char *what) {
  if (t->dtype == NBL_DT_STRING || nbl_dtype_bits(t->dtype) < 8)
    return nbl_kerr(ctx, NBL_ERR_UNSUPPORTED, "%s: element type %s cannot be stacked", what,
                    nbl_dtype_name(t->dtype));
  if (b->count == 0) {
    b->first = *t;
    b->first.data = NULL;
    b->first.owns = 0;
    if (t->rank + 1 > NBL_MAX_RANK)
      return nbl_kerr(ctx, NBL_ERR_UNSUPPORTED, "%s: rank too large", what);
  } else {
    int same = b->first.dtype == t->dtype && b->first.rank == t->rank;
    for (int d = 0; same && d < t->rank; d++) same = b->first.dims[d] == t->dims[d];
    if (!same)
      return nbl_kerr(ctx, NBL_ERR_RUNTIME, "%s: shape changes between iterations", what);
  }
  if (b->len + t->nbytes > b->cap) {
    size_t nc = b->cap ? b->cap * 2 : 256;
    while (nc < b->len + t->nbytes) nc *= 2;
    unsigned char *p = realloc(b->data, nc);
    if (!p) return nbl_kerr(ctx, NBL_ERR_OUT_OF_MEMORY, "out of memory");
    b->data = p;
    b->cap = nc;
  }
  if (t->nbytes) memcpy(b->data + b->len, t->data, t->nbytes);
  b->len += t->nbytes;
  b->count++;
  return NBL_OK;
}

/* Output `i`: the stacked slices, with a new leading axis (or `axis`). */
static nbl_status alloc_dst(nbl_kctx *ctx, int i, nbl_rt_tensor *dst, nbl_dtype dt, int rank,
                           const int64_t *dims) {
  if (!dst) return nbl_kctx_alloc_out(ctx, i, dt, rank, dims);
  nbl_status st = nbl_rt_tensor_alloc(dst, dt, rank, dims);
  return st == NBL_OK ? st : nbl_kerr(ctx, st, "%s", nbl_last_error());
}

/* dst NULL: into output i; otherwise into the owned tensor *dst. */
static nbl_status stack_out(nbl_kctx *ctx, int i, nbl_rt_tensor *dst, stack_buf *b,
                            const nbl_value *decl, int axis, int reverse) {
  int64_t dims[NBL_MAX_RANK];
  int rank;
  nbl_dtype dt;
  if (b->count == 0) {
    /* no iteration: shape (0, declared dims...) where known */
    dt = decl && decl->type.kind == NBL_TYPE_TENSOR && decl->type.elem ? decl->type.elem : NBL_DT_FLOAT;
    rank = 1;
    dims[0] = 0;
    if (decl && decl->type.kind == NBL_TYPE_TENSOR && decl->type.rank > 0 &&
        decl->type.rank < NBL_MAX_RANK) {
      for (int d = 0; d < decl->type.rank; d++)
        dims[1 + d] = decl->type.dims[d].value > 0 ? decl->type.dims[d].value : 0;
      rank = 1 + decl->type.rank;
    }
    return alloc_dst(ctx, i, dst, dt, rank, dims);
  }
  dt = b->first.dtype;
  rank = b->first.rank + 1;
  if (axis < 0) axis += rank;
  if (axis < 0 || axis >= rank) return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "scan output axis out of range");
  for (int d = 0, s = 0; d < rank; d++) dims[d] = d == axis ? b->count : b->first.dims[s++];
  nbl_status st = alloc_dst(ctx, i, dst, dt, rank, dims);
  if (st != NBL_OK) return st;
  nbl_rt_tensor *y = dst ? dst : nbl_kctx_out(ctx, i);
  size_t es = nbl_rt_elem_size(dt);
  /* slices are [count][outer][inner]; output is [outer][count][inner] */
  int64_t outer = 1, inner = 1;
  for (int d = 0; d < axis; d++) outer *= b->first.dims[d];
  for (int d = axis; d < b->first.rank; d++) inner *= b->first.dims[d];
  size_t slice = (size_t)(outer * inner) * es;
  for (int64_t k = 0; k < b->count; k++) {
    int64_t dst_k = reverse ? b->count - 1 - k : k;
    for (int64_t o = 0; o < outer; o++)
      memcpy((char *)y->data + ((size_t)(o * b->count + dst_k) * (size_t)inner) * es,
             b->data + (size_t)k * slice + (size_t)(o * inner) * es, (size_t)inner * es);
  }
  return NBL_OK;
}

static nbl_status k_loop(nbl_kctx *ctx) {
  const nbl_graph *body = graph_attr(ctx->node, "body");
  if (!body) return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "missing body graph");
  int N = ctx->n_in - 2;
  if (N < 0) return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "Loop needs at least 2 inputs");
  int K = body->n_outputs - 1 - N;
  if (K < 0 || body->n_inputs != N + 2 || ctx->n_out != N + K)
    return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL,
                    "body has %d inputs and %d outputs for %d loop-carried values and %d outputs",
                    body->n_inputs, body->n_outputs, N, ctx->n_out);
  int64_t trip = INT64_MAX;
  if (ctx->in[0] && ctx->in[0]->numel > 0) trip = nbl_rt_get_i64(ctx->in[0], 0);
  int cond = 1;
  if (ctx->in[1] && ctx->in[1]->numel > 0) cond = nbl_rt_get_i64(ctx->in[1], 0) != 0;
  for (int i = 0; i < N; i++)
    if (!ctx->in[2 + i])
      return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "loop-carried input %d is missing", i);
  nbl_rt_tensor *carried = calloc((size_t)N + 1, sizeof(nbl_rt_tensor));
  nbl_rt_tensor *res = calloc((size_t)(N + K + 1), sizeof(nbl_rt_tensor));
  nbl_rt_tensor **resp = calloc((size_t)(N + K + 1), sizeof(nbl_rt_tensor *));
  const nbl_rt_tensor **ins = calloc((size_t)(N + 2), sizeof(nbl_rt_tensor *));
  stack_buf *stk = calloc((size_t)K + 1, sizeof(stack_buf));
  nbl_status st = NBL_OK;
  if (!carried || !res || !resp || !ins || !stk) {
    st = nbl_kerr(ctx, NBL_ERR_OUT_OF_MEMORY, "out of memory");
    goto done;
  }
  for (int i = 0; i < N; i++) carried[i] = *ctx->in[2 + i], carried[i].owns = 0;
  for (int i = 0; i < N + K + 1; i++) resp[i] = &res[i];
  int64_t it = 0;
  uint8_t cond_b = (uint8_t)cond;
  nbl_rt_tensor it_t = {.dtype = NBL_DT_INT64, .rank = 0, .numel = 1, .data = &it, .nbytes = 8};
  nbl_rt_tensor cond_t = {.dtype = NBL_DT_BOOL, .rank = 0, .numel = 1, .data = &cond_b, .nbytes = 1};
  for (; it < trip && cond; it++) {
    cond_b = (uint8_t)cond;
    ins[0] = &it_t;
    ins[1] = &cond_t;
    for (int i = 0; i < N; i++) ins[2 + i] = &carried[i];
    st = nbl_kctx_run_subgraph(ctx, body, N + 2, ins, N + K + 1, resp);
    if (st != NBL_OK) goto done;
    if (res[0].numel < 1) {
      st = nbl_kerr(ctx, NBL_ERR_RUNTIME, "body condition output is empty");
    } else {
      cond = nbl_rt_get_f64(&res[0], 0) != 0;
    }
    nbl_rt_tensor_free(&res[0]);
    for (int i = 0; i < N; i++) {
      nbl_rt_tensor_free(&carried[i]);
      carried[i] = res[1 + i];
      memset(&res[1 + i], 0, sizeof res[1 + i]);
    }
    for (int k = 0; k < K && st == NBL_OK; k++)
      st = stack_push(ctx, &stk[k], &res[1 + N + k], "scan output");
    for (int k = 0; k < K; k++) nbl_rt_tensor_free(&res[1 + N + k]);
    if (st != NBL_OK) goto done;
  }
  for (int i = 0; i < N && st == NBL_OK; i++) {
    if (carried[i].owns) st = move_out(ctx, i, &carried[i]);
    else st = nbl_kctx_copy_out(ctx, i, &carried[i]);
  }
  for (int k = 0; k < K && st == NBL_OK; k++)
    st = stack_out(ctx, N + k, NULL, &stk[k], &body->values[body->outputs[1 + N + k]], 0, 0);
done:
  if (carried)
    for (int i = 0; i < N; i++) nbl_rt_tensor_free(&carried[i]);
  if (stk)
    for (int k = 0; k < K; k++) free(stk[k].data);
  free(carried);
  free(res);
  free(resp);
  free(ins);
  free(stk);
  return st;
}

/* ------------------------------------------------------------------ Scan (opset 9+) */

/* Copy slice `k` along `axis` of x into a new tensor. */
static nbl_status take_slice(const nbl_rt_tensor *x, int axis, int64_t k, nbl_rt_tensor *out) {
  int64_t dims[NBL_MAX_RANK];
  for (int d = 0, s = 0; d < x->rank; d++)
    if (d != axis) dims[s++] = x->dims[d];
  nbl_status st = nbl_rt_tensor_alloc(out, x->dtype, x->rank - 1, dims);
  if (st != NBL_OK) return st;
  size_t es = nbl_rt_elem_size(x->dtype);
  int64_t outer = 1, inner = 1;
  for (int d = 0; d < axis; d++) outer *= x->dims[d];
  for (int d = axis + 1; d < x->rank; d++) inner *= x->dims[d];
  for (int64_t o = 0; o < outer; o++)
    memcpy((char *)out->data + (size_t)(o * inner) * es,
           (const char *)x->data + (size_t)((o * x->dims[axis] + k) * inner) * es,
           (size_t)inner * es);
  return NBL_OK;
}

/* The Scan loop over T steps. states[N] and xs[M] are the inputs; results
 * (N final states, then K stacked outputs) go to ctx outputs, or into the
 * owned tensors res_out[N+K] when res_out is non-NULL. */
static nbl_status scan_core(nbl_kctx *ctx, const nbl_graph *body, int N, int M, int K,
                            const nbl_rt_tensor *const *states_in,
                            const nbl_rt_tensor *const *xs, const int *axes,
                            const int64_t *in_dirs, const int64_t *out_axes,
                            const int64_t *out_dirs, nbl_rt_tensor *res_out) {
  int64_t T = -1;
  for (int j = 0; j < M; j++) {
    const nbl_rt_tensor *x = xs[j];
    if (x->dtype == NBL_DT_STRING || nbl_dtype_bits(x->dtype) < 8)
      return nbl_kerr(ctx, NBL_ERR_UNSUPPORTED, "scan input type %s", nbl_dtype_name(x->dtype));
    if (T >= 0 && x->dims[axes[j]] != T)
      return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "scan inputs disagree on the sequence length");
    T = x->dims[axes[j]];
  }
  nbl_rt_tensor *state = calloc((size_t)N + 1, sizeof(nbl_rt_tensor));
  nbl_rt_tensor *slices = calloc((size_t)M + 1, sizeof(nbl_rt_tensor));
  nbl_rt_tensor *res = calloc((size_t)(N + K + 1), sizeof(nbl_rt_tensor));
  nbl_rt_tensor **resp = calloc((size_t)(N + K + 1), sizeof(nbl_rt_tensor *));
  const nbl_rt_tensor **ins = calloc((size_t)(N + M + 1), sizeof(nbl_rt_tensor *));
  stack_buf *stk = calloc((size_t)K + 1, sizeof(stack_buf));
  nbl_status st = NBL_OK;
  if (!state || !slices || !res || !resp || !ins || !stk) {
    st = nbl_kerr(ctx, NBL_ERR_OUT_OF_MEMORY, "out of memory");
    goto done;
  }
  for (int i = 0; i < N; i++) {
    state[i] = *states_in[i];
    state[i].owns = 0;
  }
  for (int i = 0; i < N + K; i++) resp[i] = &res[i];
  for (int64_t t = 0; t < T; t++) {
    for (int j = 0; j < M; j++) {
      int64_t k = in_dirs && in_dirs[j] ? T - 1 - t : t;
      nbl_rt_tensor_free(&slices[j]);
      st = take_slice(xs[j], axes[j], k, &slices[j]);
      if (st != NBL_OK) {
        nbl_kerr(ctx, st, "%s", nbl_last_error());
        goto done;
      }
    }
    for (int i = 0; i < N; i++) ins[i] = &state[i];
    for (int j = 0; j < M; j++) ins[N + j] = &slices[j];
    st = nbl_kctx_run_subgraph(ctx, body, N + M, ins, N + K, resp);
    if (st != NBL_OK) goto done;
    for (int i = 0; i < N; i++) {
      nbl_rt_tensor_free(&state[i]);
      state[i] = res[i];
      memset(&res[i], 0, sizeof res[i]);
    }
    for (int k = 0; k < K && st == NBL_OK; k++) st = stack_push(ctx, &stk[k], &res[N + k], "scan output");
    for (int k = 0; k < K; k++) nbl_rt_tensor_free(&res[N + k]);
    if (st != NBL_OK) goto done;
  }
  for (int i = 0; i < N && st == NBL_OK; i++) {
    if (res_out) {
      if (state[i].owns) {
        res_out[i] = state[i];
        memset(&state[i], 0, sizeof state[i]);
      } else {
        st = nbl_rt_copy(&res_out[i], &state[i]);
      }
    } else if (state[i].owns) {
      st = move_out(ctx, i, &state[i]);
    } else {
      st = nbl_kctx_copy_out(ctx, i, &state[i]);
    }
  }
  for (int k = 0; k < K && st == NBL_OK; k++)
    st = stack_out(ctx, N + k, res_out ? &res_out[N + k] : NULL, &stk[k],
                   &body->values[body->outputs[N + k]], out_axes ? (int)out_axes[k] : 0,
                   out_dirs ? (int)out_dirs[k] : 0);
done:
  if (state)
    for (int i = 0; i < N; i++) nbl_rt_tensor_free(&state[i]);
  if (slices)
    for (int j = 0; j < M; j++) nbl_rt_tensor_free(&slices[j]);
  if (stk)
    for (int k = 0; k < K; k++) free(stk[k].data);
  free(state);
  free(slices);
  free(res);
  free(resp);
  free(ins);
  free(stk);
  return st;
}

static nbl_status k_scan(nbl_kctx *ctx) {
  const nbl_graph *body = graph_attr(ctx->node, "body");
  if (!body) return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "missing body graph");
  int M = (int)nbl_attr_int(ctx->node, "num_scan_inputs", -1);
  int first = ctx->opset < 9 ? 1 : 0; /* Scan-8: sequence_lens comes first */
  int N = ctx->n_in - first - M;
  if (M < 1 || N < 0) return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "bad num_scan_inputs");
  if (M > 64) return nbl_kerr(ctx, NBL_ERR_UNSUPPORTED, "more than 64 scan inputs");
  int K = ctx->n_out - N;
  if (K < 0 || body->n_inputs != N + M || body->n_outputs != N + K)
    return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "body signature does not match the node");
  for (int i = first; i < ctx->n_in; i++)
    if (!ctx->in[i]) return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "input %d is missing", i);
  int cnt;
  int axes[64];
  if (ctx->opset < 9) {
    const int64_t *dirs = nbl_attr_ints(ctx->node, "directions", &cnt);
    if (dirs && cnt != M) return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "directions has %d entries", cnt);
    const nbl_rt_tensor *x0 = ctx->in[first + N];
    int64_t B = x0->rank > 0 ? x0->dims[0] : 0;
    for (int i = first; i < ctx->n_in; i++)
      if (ctx->in[i]->rank < 1 || ctx->in[i]->dims[0] != B || (i >= first + N && ctx->in[i]->rank < 2))
        return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "input %d lacks the batch axis of size %lld", i,
                        (long long)B);
    const nbl_rt_tensor *sl = ctx->in[0];
    if (sl)
      for (int64_t b = 0; b < sl->numel && b < B; b++)
        if (nbl_rt_get_i64(sl, b) != ctx->in[first + N]->dims[1])
          return nbl_kerr(ctx, NBL_ERR_UNSUPPORTED, "sequence_lens shorter than the input is not supported");
    for (int j = 0; j < M; j++) axes[j] = 0;
    nbl_rt_tensor *parts = calloc((size_t)(B * (N + K) + 1), sizeof(nbl_rt_tensor));
    nbl_rt_tensor *bin = calloc((size_t)(N + M + 1), sizeof(nbl_rt_tensor));
    const nbl_rt_tensor **bp = calloc((size_t)(N + M + 1), sizeof(nbl_rt_tensor *));
    nbl_status st = parts && bin && bp ? NBL_OK : nbl_kerr(ctx, NBL_ERR_OUT_OF_MEMORY, "out of memory");
    for (int64_t b = 0; b < B && st == NBL_OK; b++) {
      for (int i = 0; i < N + M && st == NBL_OK; i++) {
        nbl_rt_tensor_free(&bin[i]);
        st = take_slice(ctx->in[first + i], 0, b, &bin[i]);
        bp[i] = &bin[i];
      }
      if (st == NBL_OK)
        st = scan_core(ctx, body, N, M, K, bp, bp + N, axes, dirs, NULL, NULL, parts + b * (N + K));
    }
    /* stack the per-batch results along a new axis 0 */
    for (int o = 0; o < N + K && st == NBL_OK; o++) {
      stack_buf sb = {0};
      for (int64_t b = 0; b < B && st == NBL_OK; b++) st = stack_push(ctx, &sb, &parts[b * (N + K) + o], "output");
      if (st == NBL_OK) st = stack_out(ctx, o, NULL, &sb, NULL, 0, 0);
      free(sb.data);
    }
    if (parts)
      for (int64_t i = 0; i < B * (N + K); i++) nbl_rt_tensor_free(&parts[i]);
    if (bin)
      for (int i = 0; i < N + M; i++) nbl_rt_tensor_free(&bin[i]);
    free(parts);
    free(bin);
    free(bp);
    return st;
  }
  const int64_t *in_axes = nbl_attr_ints(ctx->node, "scan_input_axes", &cnt);
  if (in_axes && cnt != M) return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "scan_input_axes has %d entries", cnt);
  const int64_t *in_dirs = nbl_attr_ints(ctx->node, "scan_input_directions", &cnt);
  if (in_dirs && cnt != M) return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "scan_input_directions has %d entries", cnt);
  const int64_t *out_axes = nbl_attr_ints(ctx->node, "scan_output_axes", &cnt);
  if (out_axes && cnt != K) return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "scan_output_axes has %d entries", cnt);
  const int64_t *out_dirs = nbl_attr_ints(ctx->node, "scan_output_directions", &cnt);
  if (out_dirs && cnt != K) return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "scan_output_directions has %d entries", cnt);
  for (int j = 0; j < M; j++) {
    const nbl_rt_tensor *x = ctx->in[N + j];
    int ax = nbl_norm_axis(in_axes ? in_axes[j] : 0, x->rank);
    if (ax < 0) return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "scan input axis out of range");
    axes[j] = ax;
  }
  return scan_core(ctx, body, N, M, K, ctx->in, ctx->in + N, axes, in_dirs, out_axes, out_dirs, NULL);
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

/* Merge two graph output types (If branches): unknown where they differ. */
static void merge_branch(nbl_shp *a, const nbl_shp *b) {
  if (!a->dt) a->dt = b->dt;
  if (a->rank < 0 || b->rank < 0 || a->rank != b->rank) {
    a->rank = -1;
    return;
  }
  for (int i = 0; i < a->rank; i++)
    if (!nbl_dim_same(a->d[i], b->d[i])) a->d[i] = nbl_dim_unk();
}

static nbl_status shape_if(nbl_shape_ctx *c) {
  nbl_status st0 = nbl_shp_subgraphs(c);
  if (st0) return st0;
  const nbl_node *n = c->node;
  const nbl_graph *t = graph_attr(n, "then_branch"), *e = graph_attr(n, "else_branch");
  if (!t) return NBL_OK;
  for (int k = 0; k < n->n_outputs && k < t->n_outputs; k++) {
    nbl_shp a, b;
    nbl_shp_from_type(&t->values[t->outputs[k]].type, &a);
    if (e && k < e->n_outputs) {
      nbl_shp_from_type(&e->values[e->outputs[k]].type, &b);
      merge_branch(&a, &b);
    }
    nbl_status st = nbl_shp_set(c, k, &a);
    if (st) return st;
  }
  return NBL_OK;
}

/* Loop body inputs without a type get (iter int64[], cond bool[], carried from the loop). */
static void loop_seed_body(nbl_shape_ctx *c, nbl_graph *body) {
  const nbl_node *n = c->node;
  nbl_arena *a = body->model->arena;
  for (int i = 0; i < body->n_inputs; i++) {
    nbl_value *v = &body->values[body->inputs[i]];
    if (v->type.kind != NBL_TYPE_NONE) continue;
    if (i == 0) nbl_type_set_tensor(a, &v->type, NBL_DT_INT64, 0, NULL);
    else if (i == 1) nbl_type_set_tensor(a, &v->type, NBL_DT_BOOL, 0, NULL);
    else if (i < n->n_inputs && n->inputs[i] != NBL_NONE) {
      const nbl_value *src = &c->graph->values[n->inputs[i]];
      if (src->type.kind == NBL_TYPE_TENSOR) {
        nbl_type_copy(a, &v->type, &src->type);
        v->type.rank = -1; /* the carried shape may change from one iteration to the next */
        v->type.dims = NULL;
      }
    }
  }
}

static nbl_status shape_loop(nbl_shape_ctx *c) {
  const nbl_node *n = c->node;
  const nbl_graph *body = graph_attr(n, "body");
  if (body) loop_seed_body(c, (nbl_graph *)body);
  nbl_status st0 = nbl_shp_subgraphs(c);
  if (st0 || !body) return st0;
  int ncarried = n->n_inputs - 2;
  for (int k = 0; k < n->n_outputs; k++) {
    int bo = k + 1;
    if (bo >= body->n_outputs) break;
    nbl_shp s;
    nbl_shp_from_type(&body->values[body->outputs[bo]].type, &s);
    if (k < ncarried) {
      nbl_shp init;
      nbl_shp_in(c, k + 2, &init);
      if (!s.dt) s.dt = init.dt;
      merge_branch(&s, &init);
    } else if (s.rank >= 0 && s.rank < NBL_SHP_MAXR) {
      memmove(s.d + 1, s.d, sizeof(nbl_dim) * (size_t)s.rank);
      s.d[0] = nbl_dim_unk();
      s.rank++;
    } else
      s.rank = -1;
    nbl_status st = nbl_shp_set(c, k, &s);
    if (st) return st;
  }
  return NBL_OK;
}

/* EyeLike: the input's shape; the 'dtype' attribute, else the input's type. */
static nbl_status shape_eyelike(nbl_shape_ctx *c) {
  nbl_shp x;
  nbl_shp_in(c, 0, &x);
  const nbl_attr *a = nbl_node_attr(c->node, "dtype");
  if (a) x.dt = nbl_dtype_valid((int)a->i) ? (nbl_dtype)a->i : NBL_DT_UNDEFINED;
  return nbl_shp_set(c, 0, &x);
}

/* x without dims [from, from + n). */
static void drop_dims(nbl_shp *x, int from, int n) {
  if (x->rank < from + n) {
    x->rank = -1;
    return;
  }
  for (int i = from; i + n < x->rank; i++) x->d[i] = x->d[i + n];
  x->rank -= n;
}

/* x with dim d inserted at axis a (a in [0, rank]). */
static void insert_dim(nbl_shp *x, int a, nbl_dim d) {
  if (x->rank < 0 || x->rank >= NBL_SHP_MAXR || a < 0 || a > x->rank) {
    x->rank = -1;
    return;
  }
  for (int i = x->rank; i > a; i--) x->d[i] = x->d[i - 1];
  x->d[a] = d;
  x->rank++;
}

/* Scan: the body's inputs are seeded (state variables as the initial states,
 * scan elements without the scan axis), the body inferred; the outputs are the
 * final states (the initial states' types) and the scan outputs, the body's
 * scan output elements stacked along scan_output_axes with the sequence
 * length. Opset 8 is the batched form: sequence_lens first, every state and
 * input with a batch axis 0, the sequence axis 1; scan outputs
 * [batch, sequence, ...]. */
static nbl_status shape_scan(nbl_shape_ctx *c) {
  const nbl_node *n = c->node;
  nbl_graph *body = (nbl_graph *)graph_attr(n, "body");
  int M = (int)nbl_attr_int(n, "num_scan_inputs", -1), first = c->opset < 9 ? 1 : 0;
  int N = n->n_inputs - first - M, K = n->n_outputs - N;
  if (!body || M < 1 || N < 0 || K < 0 || body->n_inputs != N + M) return nbl_shp_subgraphs(c);
  int cnt = 0;
  const int64_t *in_axes = first ? NULL : nbl_attr_ints(n, "scan_input_axes", &cnt);
  if (in_axes && cnt != M) in_axes = NULL;
  const int64_t *out_axes = first ? NULL : nbl_attr_ints(n, "scan_output_axes", &cnt);
  if (out_axes && cnt != K) out_axes = NULL;
  nbl_dim T = nbl_dim_unk(), B = nbl_dim_unk();
  nbl_status st = NBL_OK;
  for (int i = 0; i < N + M && !st; i++) {
    nbl_shp s;
    nbl_shp_in(c, first + i, &s);
    if (first) {
      if (s.rank >= 1) B = nbl_dim_merge(B, s.d[0]);
      if (i >= N && s.rank >= 2) T = nbl_dim_merge(T, s.d[1]);
      drop_dims(&s, 0, i >= N ? 2 : 1);
    } else if (i >= N && s.rank >= 1) {
      int a = nbl_norm_axis(in_axes ? in_axes[i - N] : 0, s.rank);
      if (a >= 0) T = nbl_dim_merge(T, s.d[a]);
      if (a >= 0) drop_dims(&s, a, 1);
      else s.rank = -1;
    }
    st = nbl_shp_seed(c, body, body->inputs[i], &s);
  }
  if (!st) st = nbl_shp_subgraphs(c);
  for (int k = 0; k < N && !st; k++) {
    nbl_shp s;
    nbl_shp_in(c, first + k, &s);
    st = nbl_shp_set(c, k, &s);
  }
  for (int k = 0; k < K && N + k < body->n_outputs && !st; k++) {
    nbl_shp s;
    nbl_shp_from_type(&body->values[body->outputs[N + k]].type, &s);
    if (first) {
      insert_dim(&s, 0, T);
      insert_dim(&s, 0, B);
    } else {
      insert_dim(&s, s.rank >= 0 ? nbl_norm_axis(out_axes ? out_axes[k] : 0, s.rank + 1) : 0, T);
    }
    st = nbl_shp_set(c, N + k, &s);
  }
  return st;
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
    NBL_OP("Constant", 1, .ref = k_constant, .shape = shape_constant, .stable_since = 1),
    NBL_OP("Identity", 1, .ref = k_identity, .shape = shape_identity, .stable_since = 1),
    NBL_OP("Dropout", 1, .ref = k_dropout, .shape = shape_dropout, .stable_since = 12, .adapters = dropout_steps),
    NBL_OP("Cast", 1, .ref = k_cast, .shape = shape_cast, .stable_since = 6),
    NBL_OP("CastLike", 15, .ref = k_castlike, .shape = shape_castlike, .stable_since = 15),
    NBL_OP("Shape", 1, .ref = k_shape, .shape = shape_shape, .stable_since = 1),
    NBL_OP("Size", 1, .ref = k_size, .shape = shape_size, .stable_since = 1),
    NBL_OP("ConstantOfShape", 9, .ref = k_constant_of_shape, .shape = shape_constant_of_shape, .stable_since = 9),
    NBL_OP("Range", 11, .ref = k_range, .shape = shape_range, .stable_since = 11),
    NBL_OP("EyeLike", 9, .ref = k_eyelike, .shape = shape_eyelike, .stable_since = 9),
    NBL_OP("If", 1, .ref = k_if, .shape = shape_if, .stable_since = 1),
    NBL_OP("Loop", 1, .ref = k_loop, .shape = shape_loop, .stable_since = 1),
    NBL_OP_DEF("", "Scan", 8, 8, .ref = k_scan, .shape = shape_scan), /* batched form, sequence_lens first */
    NBL_OP("Scan", 9, .ref = k_scan, .shape = shape_scan, .stable_since = 9),
};
const size_t nbl_ops_control_count = sizeof nbl_ops_control / sizeof nbl_ops_control[0];
