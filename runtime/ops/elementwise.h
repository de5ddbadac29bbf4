/*
 * runtime/ops/elementwise.h - what the elementwise families share
 * (elementwise.c: broadcast engine, binary ops, Where, variadic ops;
 * elementwise_unary.c: math functions and activations): element-type masks
 * and checks, the compute class of a type, and the small helpers of their
 * gradient rules. Header-only (static inline): internal to runtime/ops.
 */
#ifndef NBL_OPS_ELEMENTWISE_H
#define NBL_OPS_ELEMENTWISE_H

#include "runtime/core/grad.h"
#include "runtime/core/kernel.h"

/* ------------------------------------------------------------------ types */

#define TM(dt) (1u << (dt))
#define T_F (TM(NBL_DT_FLOAT) | TM(NBL_DT_DOUBLE) | TM(NBL_DT_FLOAT16) | TM(NBL_DT_BFLOAT16))
#define T_S (TM(NBL_DT_INT8) | TM(NBL_DT_INT16) | TM(NBL_DT_INT32) | TM(NBL_DT_INT64))
#define T_U (TM(NBL_DT_UINT8) | TM(NBL_DT_UINT16) | TM(NBL_DT_UINT32) | TM(NBL_DT_UINT64))
#define T_B TM(NBL_DT_BOOL)
#define T_NUM (T_F | T_S | T_U)

enum { CL_F, CL_S, CL_U }; /* compute class: double, int64, uint64 */

/* Relu's float32 kernel (elementwise_unary.c): y[i] = x[i] < 0 ? 0 : x[i]
 * for i < n (NaN and -0 kept), vectorized; the fused Relu -> MaxPool
 * (nn_pool.c) applies it plane by plane. */
void nbl_relu_f32(const float *x, float *y, int64_t n);

static inline int dt_class(nbl_dtype dt) {
  if (TM(dt) & T_F) return CL_F;
  if (TM(dt) & (T_U | T_B)) return CL_U;
  return CL_S;
}

static inline const char *in_name(const nbl_kctx *c, int i) {
  if (i >= c->node->n_inputs || c->node->inputs[i] == NBL_NONE) return "?";
  return c->graph->values[c->node->inputs[i]].name;
}

/* Input i must be present; returns it or NULL with the error set in *st. */
static inline const nbl_rt_tensor *need_in(nbl_kctx *c, int i, nbl_status *st) {
  if (i >= c->n_in || !c->in[i]) {
    *st = nbl_kerr(c, NBL_ERR_INVALID_MODEL, "required input %d is missing", i);
    return NULL;
  }
  return c->in[i];
}

static inline nbl_status check_type(nbl_kctx *c, int i, unsigned mask) {
  nbl_dtype dt = c->in[i]->dtype;
  if ((unsigned)dt < 32 && (TM(dt) & mask)) return NBL_OK;
  return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "input '%s' has element type %s, which %s does not support",
                  in_name(c, i), nbl_dtype_name(dt), c->node->op_type);
}

static inline nbl_status check_same_type(nbl_kctx *c, int i, int j) {
  if (c->in[i]->dtype == c->in[j]->dtype) return NBL_OK;
  return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "inputs '%s' (%s) and '%s' (%s) must have the same element type",
                  in_name(c, i), nbl_dtype_name(c->in[i]->dtype), in_name(c, j),
                  nbl_dtype_name(c->in[j]->dtype));
}

/* Grain (elements per task) for parallel loops: cheap ops get big chunks. */
#define GRAIN_CHEAP 32768
#define GRAIN_MATH 4096

/* ------------------------------------------------------------------ gradient rules
 * (runtime/core/grad.h). Broadcast operands get the output gradient summed
 * down to their shape (nbl_grad_unbroadcast). */

static inline nbl_id gx(nbl_grad_ctx *gc, int i) { return nbl_grad_x(gc, i); }
static inline nbl_id gy0(nbl_grad_ctx *gc) { return nbl_grad_y(gc, 0); }
static inline nbl_id gdy(nbl_grad_ctx *gc) { return nbl_grad_dy(gc, 0); }
static inline nbl_id gbin(nbl_grad_ctx *gc, const char *op, nbl_id a, nbl_id b) {
  return nbl_grad_bin(gc, op, a, b);
}
static inline nbl_id gconst(nbl_grad_ctx *gc, nbl_id like, double v) {
  return nbl_grad_const(gc, nbl_grad_dtype(gc, like), v);
}
/* Hand g (shaped like the output) to input i, summed to its shape. */
static inline void dx_bcast(nbl_grad_ctx *gc, int i, nbl_id g) {
  nbl_grad_set_dx(gc, i, nbl_grad_unbroadcast(gc, g, gx(gc, i), gy0(gc)));
}
/* dX = dY * f for a one-input op. */
static inline nbl_status dx_times(nbl_grad_ctx *gc, nbl_id f) {
  nbl_grad_set_dx(gc, 0, gbin(gc, "Mul", gdy(gc), f));
  return nbl_grad_status(gc);
}

#endif
