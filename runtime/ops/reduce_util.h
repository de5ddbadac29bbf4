/* runtime/ops/reduce_util.h - what the families 'reduce' (runtime/ops/reduce.c)
 * and 'loss' (runtime/ops/loss.c) share: element-type masks, the first
 * input's check and the split of a shape around an axis range. Header-only
 * (static inline), internal to runtime/ops. */
#ifndef NBL_OPS_REDUCE_UTIL_H
#define NBL_OPS_REDUCE_UTIL_H

#include "runtime/core/kernel.h"

#define TM(dt) (1u << (dt))
#define T_F (TM(NBL_DT_FLOAT) | TM(NBL_DT_DOUBLE) | TM(NBL_DT_FLOAT16) | TM(NBL_DT_BFLOAT16))
#define T_S (TM(NBL_DT_INT8) | TM(NBL_DT_INT16) | TM(NBL_DT_INT32) | TM(NBL_DT_INT64))
#define T_U (TM(NBL_DT_UINT8) | TM(NBL_DT_UINT16) | TM(NBL_DT_UINT32) | TM(NBL_DT_UINT64))
#define T_B TM(NBL_DT_BOOL)
#define T_NUM (T_F | T_S | T_U)

static inline const char *in_name(const nbl_kctx *c, int i) {
  if (i >= c->node->n_inputs || c->node->inputs[i] == NBL_NONE) return "?";
  return c->graph->values[c->node->inputs[i]].name;
}

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
