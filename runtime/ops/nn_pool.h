/* runtime/ops/nn_pool.h - what the 'nn_pool' family (runtime/ops/nn_pool.c)
 * shares with the fused training path runtime/fusions/fuse_relu_pool.c:
 * Relu -> MaxPool as one kernel, the same numbers as the two ops. */
#ifndef NBL_OPS_NN_POOL_H
#define NBL_OPS_NN_POOL_H

#include "runtime/core/kernel.h"

/* The fused Relu -> MaxPool on float32 X (input 0): output 0 Relu(X) (Relu's
 * float kernel), output 1 MaxPool's Y and output 2 its Indices (when
 * requested), MaxPool's attributes on the node. The fast 2-D paths make each
 * (n, c) plane of Relu(X) and pool it while it is in cache. Errors as
 * MaxPool's, and NBL_ERR_UNSUPPORTED for another element type. */
nbl_status nbl_relu_maxpool(nbl_kctx *c);

#endif
