/*
 * runtime/ops/movement.h - helpers shared by the data-movement op files
 * (shape.c, shape_strided.c, shape_index.c, shape_resize.c): required and optional inputs,
 * element sizes, small integer inputs and attributes, STRING ownership, and
 * row-major index arithmetic. Header-only (static inline): internal to those
 * files.
 */
#ifndef NBL_OPS_MOVEMENT_H
#define NBL_OPS_MOVEMENT_H

#include <stdlib.h>
#include <string.h>

#include "runtime/core/kernel.h"

/* Input i, or an error if it is missing. */
static inline nbl_status need_in(nbl_kctx *c, int i, const char *what, const nbl_rt_tensor **t) {
  static const nbl_rt_tensor none = {0};
  *t = &none; /* never NULL, so callers need no second check */
  if (i >= c->n_in || !c->in[i])
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "required input %d (%s) is missing", i, what);
  *t = c->in[i];
  return NBL_OK;
}

static inline const nbl_rt_tensor *opt_in(nbl_kctx *c, int i) {
  return i < c->n_in ? c->in[i] : NULL;
}

/* Element size of t for byte-moving kernels; 0 (with message) if unsupported. */
static inline size_t esize(nbl_kctx *c, const nbl_rt_tensor *t, const char *what) {
  size_t es = nbl_rt_elem_size(t->dtype);
  if (es == 0)
    nbl_kerr(c, NBL_ERR_UNSUPPORTED, "%s: element type %s is not supported by this op", what,
             nbl_dtype_name(t->dtype));
  return es;
}

static inline int is_int_type(nbl_dtype dt) {
  switch (dt) {
  case NBL_DT_INT8: case NBL_DT_INT16: case NBL_DT_INT32: case NBL_DT_INT64:
  case NBL_DT_UINT8: case NBL_DT_UINT16: case NBL_DT_UINT32: case NBL_DT_UINT64: return 1;
  default: return 0;
  }
}

static inline int is_float_type(nbl_dtype dt) {
  return dt == NBL_DT_FLOAT || dt == NBL_DT_DOUBLE || dt == NBL_DT_FLOAT16 ||
         dt == NBL_DT_BFLOAT16;
}

/* Read an integer tensor (rank 0 or 1) into out[max]; *n = element count. */
static inline nbl_status read_ints(nbl_kctx *c, const nbl_rt_tensor *t, const char *what,
                                   int64_t *out, int max, int *n) {
  *n = 0;
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
static inline nbl_status attr_ints(nbl_kctx *c, const char *name, int64_t *out, int max, int *n) {
  *n = 0;
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
static inline nbl_status dup_strings(nbl_kctx *c, nbl_rt_tensor *o) {
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
static inline nbl_status out_same_bytes(nbl_kctx *c, const nbl_rt_tensor *in, int rank,
                                        const int64_t *dims) {
  nbl_status st = nbl_kctx_alloc_out(c, 0, in->dtype, rank, dims);
  if (st) return st;
  nbl_rt_tensor *o = nbl_kctx_out(c, 0);
  if (o->nbytes && in->nbytes) memcpy(o->data, in->data, o->nbytes < in->nbytes ? o->nbytes : in->nbytes);
  return dup_strings(c, o);
}

/* On failure after string pointers were copied (not yet duplicated) into o:
 * forget them so freeing o does not free the input's strings. */
static inline nbl_status clear_strings(nbl_rt_tensor *o) {
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

static inline int64_t clampi(int64_t v, int64_t lo, int64_t hi) {
  return v < lo ? lo : v > hi ? hi : v;
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

#endif /* NBL_OPS_MOVEMENT_H */
