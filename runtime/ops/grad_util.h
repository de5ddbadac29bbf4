/* runtime/ops/grad_util.h - small helpers shared by the backward-op families
 * (runtime/ops/grad_*.c). Header-only, static inline. */
#ifndef NBL_GRAD_UTIL_H
#define NBL_GRAD_UTIL_H

#include "runtime/core/kernel.h"

#define NBL_MS_DOMAIN "com.microsoft"

/* Input i, NULL when omitted or beyond the node's inputs. */
static inline const nbl_rt_tensor *grad_in(nbl_kctx *c, int i) { return i < c->n_in ? c->in[i] : NULL; }
/* 1 when output i is requested. */
static inline int grad_want(nbl_kctx *c, int i) { return i < c->n_out && c->out[i] != NULL; }

/* A kernel listed in a family table before its code lands: a clear error. */
static inline nbl_status grad_pending(nbl_kctx *c) {
  return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "this backward op has no kernel yet");
}

#endif
