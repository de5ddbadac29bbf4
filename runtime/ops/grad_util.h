/* runtime/ops/grad_util.h - small checks shared by the backward-op families
 * (runtime/ops/grad_*.c). Header-only, static inline; every failing check
 * sets the node-naming message through nbl_kerr. */
#ifndef NBL_GRAD_UTIL_H
#define NBL_GRAD_UTIL_H

#include <string.h>

#include "runtime/core/kernel.h"

#define NBL_MS_DOMAIN "com.microsoft"

/* Input i, NULL when omitted or beyond the node's inputs. */
static inline const nbl_rt_tensor *grad_in(nbl_kctx *c, int i) { return i < c->n_in ? c->in[i] : NULL; }
/* 1 when output i is requested. */
static inline int grad_want(nbl_kctx *c, int i) { return i < c->n_out && c->out[i] != NULL; }

static inline int grad_is_float(nbl_dtype t) {
  return t == NBL_DT_FLOAT || t == NBL_DT_DOUBLE || t == NBL_DT_FLOAT16 || t == NBL_DT_BFLOAT16;
}
static inline int grad_is_int(nbl_dtype t) { return t == NBL_DT_INT32 || t == NBL_DT_INT64; }

/* Required input i (`what` names it in the message); NULL with *st set when missing. */
static inline const nbl_rt_tensor *grad_need(nbl_kctx *c, int i, const char *what, nbl_status *st) {
  const nbl_rt_tensor *t = grad_in(c, i);
  if (!t) *st = nbl_kerr(c, NBL_ERR_INVALID_MODEL, "required input %d (%s) is missing", i, what);
  return t;
}

/* t must have a float element type. */
static inline nbl_status grad_check_float(nbl_kctx *c, const nbl_rt_tensor *t, const char *what) {
  if (!grad_is_float(t->dtype))
    return nbl_kerr(c, NBL_ERR_UNSUPPORTED,
                    "input %s has element type %s; supported: float, double, float16, bfloat16", what,
                    nbl_dtype_name(t->dtype));
  return NBL_OK;
}

/* t must have element type dt (the type of `ref_what`). */
static inline nbl_status grad_check_type(nbl_kctx *c, const nbl_rt_tensor *t, nbl_dtype dt,
                                         const char *what, const char *ref_what) {
  if (t->dtype != dt)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input %s has element type %s, %s has %s", what,
                    nbl_dtype_name(t->dtype), ref_what, nbl_dtype_name(dt));
  return NBL_OK;
}

static inline int grad_same_dims(const nbl_rt_tensor *a, const nbl_rt_tensor *b) {
  return a->rank == b->rank && memcmp(a->dims, b->dims, sizeof(int64_t) * (size_t)a->rank) == 0;
}

/* b must have a's shape. */
static inline nbl_status grad_check_same_shape(nbl_kctx *c, const nbl_rt_tensor *a,
                                               const nbl_rt_tensor *b, const char *an,
                                               const char *bn) {
  if (!grad_same_dims(a, b))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "%s and %s must have the same shape", an, bn);
  return NBL_OK;
}

/* A 1-D int64 tensor holding a shape (rank <= NBL_MAX_RANK, dims >= 0) into
 * *rank / dims. */
static inline nbl_status grad_shape_input(nbl_kctx *c, const nbl_rt_tensor *t, const char *what,
                                          int *rank, int64_t *dims) {
  *rank = 0;
  if (t->dtype != NBL_DT_INT64 || t->rank != 1 || t->numel > NBL_MAX_RANK)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "%s must be a 1-D int64 tensor of at most %d dims",
                    what, NBL_MAX_RANK);
  *rank = (int)t->numel;
  for (int i = 0; i < *rank; i++) {
    dims[i] = ((const int64_t *)t->data)[i];
    if (dims[i] < 0)
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "%s has a negative dim %lld", what, (long long)dims[i]);
  }
  return NBL_OK;
}

static inline nbl_status grad_oom(nbl_kctx *c) {
  return nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory");
}

#endif
