/* runtime/ops/nn_pool.h - what the 'nn_pool' family (runtime/ops/nn_pool.c)
 * shares with the fused training path runtime/fusions/fuse_relu_pool.c
 * (Relu -> MaxPool as one kernel, the same numbers as the two ops) and with
 * QLinearAveragePool (its window loop). */
#ifndef NBL_OPS_NN_POOL_H
#define NBL_OPS_NN_POOL_H

#include "runtime/core/kernel.h"
#include "runtime/kernels/gemm.h"

/* The fused Relu -> MaxPool on float32 X (input 0): output 0 Relu(X) (Relu's
 * float kernel), output 1 MaxPool's Y and output 2 its Indices (when
 * requested), MaxPool's attributes on the node. The fast 2-D paths make each
 * (n, c) plane of Relu(X) and pool it while it is in cache. Errors as
 * MaxPool's, and NBL_ERR_UNSUPPORTED for another element type. */
nbl_status nbl_relu_maxpool(nbl_kctx *c);

/* The reference pooling of one plane (every pool kind's reference kernel, and
 * QLinearAveragePool's on its dequantized codes, runtime/ops/quant_contrib.c):
 * xp holds g's g->in_sz input values, y gets g->out_sz outputs. MAX: the
 * largest (NaN if any is NaN; best_at, when not NULL, its index in the plane,
 * 0 for an empty window); AVG: the sum in window order over the positions
 * inside the input, divided by their count, or with include_pad by the
 * positions inside the padded input (NaN for none); LP: (sum |v|^p)^(1/p). */
enum { NBL_POOL_MAX, NBL_POOL_AVG, NBL_POOL_LP };
void nbl_pool_plane_ref(const nbl_conv_geom *g, int kind, int include_pad, double p, const double *xp, double *y,
                        int64_t *best_at);

#endif
