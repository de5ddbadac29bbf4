/* runtime/ops/resize.h - what Resize / Upsample (runtime/ops/shape_resize.c)
 * share with their backward op ResizeGrad (runtime/ops/grad_shape.c): the
 * attributes and inputs read into one plan, and the taps of each output
 * position, so that the gradient is the adjoint of exactly the map the
 * forward kernel applies. */
#ifndef NBL_OPS_RESIZE_H
#define NBL_OPS_RESIZE_H

#include <stdint.h>

#include "runtime/core/kernel.h"

enum { NBL_RS_NEAREST, NBL_RS_LINEAR, NBL_RS_CUBIC };

typedef struct nbl_rs_params {
  int mode, ctm, nearest, exclude_outside, antialias;
  double cubic_a, extrapolation;
} nbl_rs_params;

/* A Resize / Upsample of an input of rank r: its parameters, the output
 * dims, the scale of each axis and the roi (starts [0, r), ends [r, 2r)). */
typedef struct nbl_rs_plan {
  nbl_rs_params p;
  int64_t od[NBL_MAX_RANK];
  double scales[NBL_MAX_RANK], roi[2 * NBL_MAX_RANK];
} nbl_rs_plan;

/* The plan of the Resize (upsample 0) or Upsample node c->node at default
 * opset `opset` for input x, its other inputs at c->in[base + 1 ..] (the
 * forward's base is 0; ResizeGrad's inputs are shifted by one). Errors name
 * the node through c. */
nbl_status nbl_rs_plan_init(nbl_kctx *c, const nbl_rt_tensor *x, int base, int opset, int upsample,
                            nbl_rs_plan *pl);

/* The taps of output position x along one axis (input length in, output
 * length out, scale, roi bounds roi0/roi1): up to maxn weights to w, the
 * first tap's index to *first (the window may reach outside [0, in): clamp
 * on use). Returns the count; 0 when the position takes the extrapolation
 * value. */
int nbl_rs_make_taps(const nbl_rs_params *p, double x, double scale, int64_t in, int64_t out, double roi0,
                     double roi1, int maxn, int64_t *first, double *w);

#endif
