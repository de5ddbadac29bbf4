/*
 * runtime/ops/nn_common.h - helpers shared by the nn family files (nn.c,
 * nn_pool.c, nn_norm.c): optional inputs and outputs, element-type checks,
 * conversion of inputs to double. Header-only (static inline): internal to
 * those files.
 */
#ifndef NBL_OPS_NN_COMMON_H
#define NBL_OPS_NN_COMMON_H

#include <stdlib.h>

#include "runtime/core/kernel.h"

static inline const nbl_rt_tensor *in_at(nbl_kctx *c, int i) {
  return i < c->n_in ? c->in[i] : NULL;
}
static inline int want_out(nbl_kctx *c, int i) { return i < c->n_out && c->out[i] != NULL; }

static inline int is_float(nbl_dtype t) {
  return t == NBL_DT_FLOAT || t == NBL_DT_DOUBLE || t == NBL_DT_FLOAT16 || t == NBL_DT_BFLOAT16;
}
static inline int is_int(nbl_dtype t) {
  return t == NBL_DT_INT8 || t == NBL_DT_UINT8 || t == NBL_DT_INT16 || t == NBL_DT_UINT16 ||
         t == NBL_DT_INT32 || t == NBL_DT_UINT32 || t == NBL_DT_INT64 || t == NBL_DT_UINT64;
}

static inline nbl_status need_input(nbl_kctx *c, int i, const char *what) {
  if (!in_at(c, i)) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "required input %d (%s) is missing", i, what);
  return NBL_OK;
}

static inline nbl_status need_float(nbl_kctx *c, const nbl_rt_tensor *t, const char *what) {
  if (!is_float(t->dtype))
    return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "input %s has element type %s; supported: float, double, "
                    "float16, bfloat16", what, nbl_dtype_name(t->dtype));
  return NBL_OK;
}

static inline nbl_status same_type(nbl_kctx *c, const nbl_rt_tensor *a, const nbl_rt_tensor *b,
                            const char *what) {
  if (a->dtype != b->dtype)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input %s has element type %s, expected %s", what,
                    nbl_dtype_name(b->dtype), nbl_dtype_name(a->dtype));
  return NBL_OK;
}

static inline nbl_status oom(nbl_kctx *c) {
  return nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory");
}

/* Convert inputs to double arrays; all-or-nothing. */
static inline int conv_inputs(int n, const nbl_rt_tensor **ts, double **out) {
  int ok = 1;
  for (int i = 0; i < n; i++) {
    out[i] = NULL;
    if (ts[i] && !(out[i] = nbl_to_f64(ts[i]))) ok = 0;
  }
  if (!ok)
    for (int i = 0; i < n; i++) {
      free(out[i]);
      out[i] = NULL;
    }
  return ok;
}
static inline void free_all(int n, double **p) {
  for (int i = 0; i < n; i++) free(p[i]);
}

#endif /* NBL_OPS_NN_COMMON_H */
