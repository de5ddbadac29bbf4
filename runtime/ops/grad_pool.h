/* runtime/ops/grad_pool.h - what the 'grad_pool_norm' family's pooling
 * gradients (runtime/ops/grad_pool_norm.c) share with the fused training
 * path runtime/fusions/fuse_pool_grad.c: MaxPoolGrad with ReluGrad's mask,
 * so that the fused node gives the two ops' numbers bit for bit. */
#ifndef NBL_OPS_GRAD_POOL_H
#define NBL_OPS_GRAD_POOL_H

#include "runtime/core/kernel.h"

/* ReluGrad(MaxPoolGrad(dY, Indices, X_shape), V) on float32 as the two fast
 * kernels compute it: the node's inputs 0..2 are MaxPoolGrad's (its
 * attributes on the node), V the Relu output (X_shape's shape); output 0
 * is written (allocated here): MaxPoolGrad's float sums where V > 0, else
 * +0. Errors as MaxPoolGrad's (indices out of range, shapes), and
 * NBL_ERR_UNSUPPORTED for another element type. */
nbl_status nbl_maxpool_relu_grad_f32(nbl_kctx *c, const nbl_rt_tensor *V);

#endif
