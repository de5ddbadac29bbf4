/* runtime/ops/reduce_util.h - what the families 'reduce' (runtime/ops/reduce.c)
 * and 'loss' (runtime/ops/loss.c) share beyond elementwise.h's type masks:
 * the first input's check and the split of a shape around an axis range. Header-only
 * (static inline), internal to runtime/ops. */
#ifndef NBL_OPS_REDUCE_UTIL_H
#define NBL_OPS_REDUCE_UTIL_H

#include "runtime/core/kernel.h"
#include "runtime/ops/elementwise.h" /* the element-type masks, in_name */

static inline nbl_status check_x(nbl_kctx *c, unsigned mask) {
  if (c->n_in < 1 || !c->in[0])
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "required input 0 is missing");
  nbl_dtype dt = c->in[0]->dtype;
  if ((unsigned)dt < 32 && (TM(dt) & mask)) return NBL_OK;
  return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "input '%s' has element type %s, which %s does not support",
                  in_name(c, 0), nbl_dtype_name(dt), c->node->op_type);
}

static inline int is_float(nbl_dtype dt) { return (TM(dt) & T_F) != 0; }

/* Split a shape around axis range [a0, a1]: outer, the product of the axis
 * range, inner. */
static inline void split3(const nbl_rt_tensor *x, int a0, int a1, int64_t *outer, int64_t *mid,
                   int64_t *inner) {
  *outer = *mid = *inner = 1;
  for (int d = 0; d < x->rank; d++) {
    if (d < a0) *outer *= x->dims[d];
    else if (d <= a1) *mid *= x->dims[d];
    else *inner *= x->dims[d];
  }
}

#endif
