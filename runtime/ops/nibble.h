/* runtime/ops/nibble.h - what the ai.nibble family (runtime/ops/nibble.c) shares
 * with other families: the QuantizeInt4 attribute decoder and its choice of
 * quantization parameters, so that QuantizeInt4Grad
 * (runtime/ops/grad_elementwise.c) reads the attributes and finds the scale
 * exactly as the forward op does, or takes the forward's. */
#ifndef NBL_OPS_NIBBLE_H
#define NBL_OPS_NIBBLE_H

#include "runtime/core/kernel.h"
#include "runtime/formats/int4.h"

/* Decode the QuantizeInt4 attributes of ctx's node (bits, mode,
 * scale_source, scale, narrow, rounding, seed) into cfg. Returns NBL_OK or an
 * error naming the bad attribute (message set via nbl_kerr). */
nbl_status nbl_q4_attrs(nbl_kctx *c, nbl_q4_config *cfg);

/* QuantizeInt4's parameters (scale, zero point) for float32 data x under
 * cfg: nbl_q4_choose, with PACT's clip read from `alpha` (input alpha of
 * the node, NULL when absent; needed for scale_source=pact, a float32
 * scalar). Errors name the node (nbl_kerr). */
nbl_status nbl_q4_kernel_params(nbl_kctx *c, const nbl_q4_config *cfg, const nbl_rt_tensor *x,
                                const nbl_rt_tensor *alpha, nbl_q4_params *p);

/* QuantizeInt4Grad's parameters from the forward's scale and zero_point
 * outputs (runtime/ops/grad_elementwise.c; either tensor NULL when not
 * wired): *have = 1 and *p filled as nbl_q4_choose would fill it for the
 * forward's X when cfg is scale_source max or sawb and scale is present
 * (zero_point too for mode=affine); *have = 0 otherwise (the caller
 * chooses from X). A scale that is not a finite float32 scalar > 0, or a
 * zero_point that is not an int8 scalar, is an error naming the input. */
nbl_status nbl_q4_grad_given(nbl_kctx *c, const nbl_q4_config *cfg, const nbl_rt_tensor *scale,
                             const nbl_rt_tensor *zero, nbl_q4_params *p, int *have);

/* QuantizeInt4 of float32 x (cfg not scale_source=pact) into outputs 0
 * (Y), 1 (scale) and 2 (zero_point, when requested) of c and, codes_out >=
 * 0, its codes output into c's output codes_out when that is wired, with the
 * values of the op's kernels: the fast path where it applies, else the
 * reference. range: NULL, or x's minimum and maximum when every element of
 * x is finite (for scale_source=max the scan over x is then skipped). */
nbl_status nbl_q4_forward(nbl_kctx *c, const nbl_q4_config *cfg, const nbl_rt_tensor *x, const float *range,
                          int codes_out);

#endif
