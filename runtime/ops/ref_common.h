/*
 * runtime/ops/ref_common.h - helpers shared by the op files whose reference
 * kernels compute in double (nn*.c, rnn.c, signal.c, misc.c): optional inputs
 * and outputs, element-type and rank checks, scalar inputs, conversion of
 * inputs to double. Header-only (static inline): internal to runtime/ops.
 */
#ifndef NBL_OPS_REF_COMMON_H
#define NBL_OPS_REF_COMMON_H

#include <stdlib.h>

#include "runtime/core/kernel.h"
#include "runtime/kernels/gemm.h" /* nbl_to_f64 */

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

static inline nbl_status need_rank(nbl_kctx *c, const nbl_rt_tensor *t, int rank,
                                   const char *what) {
  if (t->rank != rank)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input %s has rank %d, expected %d", what, t->rank, rank);
  return NBL_OK;
}

/* A scalar (or one-element) integer input as int64. */
static inline nbl_status scalar_i64(nbl_kctx *c, const nbl_rt_tensor *t, const char *what,
                                    int64_t *v) {
  *v = 0;
  if (t->numel != 1 || !(is_int(t->dtype)))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input %s must be one integer value (got %s, %lld elements)",
                    what, nbl_dtype_name(t->dtype), (long long)t->numel);
  *v = nbl_rt_get_i64(t, 0);
  return NBL_OK;
}
/* A scalar (or one-element) numeric input as double. */
static inline nbl_status scalar_f64(nbl_kctx *c, const nbl_rt_tensor *t, const char *what,
                                    double *v) {
  *v = 0;
  if (t->numel != 1 || !(is_int(t->dtype) || is_float(t->dtype)))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input %s must be one numeric value (got %s, %lld elements)",
                    what, nbl_dtype_name(t->dtype), (long long)t->numel);
  *v = nbl_rt_get_f64(t, 0);
  return NBL_OK;
}

/* Output element type from the 'output_datatype' attribute (float types only). */
static inline nbl_status out_dtype_attr(nbl_kctx *c, nbl_dtype *dt) {
  *dt = NBL_DT_FLOAT;
  int64_t v = nbl_attr_int(c->node, "output_datatype", NBL_DT_FLOAT);
  nbl_dtype d = (nbl_dtype)v;
  if (!(is_float(d) || is_int(d)))
    return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "output_datatype %lld is not supported", (long long)v);
  *dt = d;
  return NBL_OK;
}

#endif /* NBL_OPS_REF_COMMON_H */
