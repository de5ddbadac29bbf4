/* runtime/ops/grad_pool.h - what the 'grad_pool' family's pooling
 * gradients (runtime/ops/grad_pool.c) share with the fused training
 * path runtime/fusions/fuse_pool_grad.c: MaxPoolGrad with ReluGrad's mask,
 * so that the fused node gives the two ops' numbers bit for bit. */
#ifndef NBL_OPS_GRAD_POOL_H
#define NBL_OPS_GRAD_POOL_H

#include "runtime/core/kernel.h"

/* ReluGrad(MaxPoolGrad(dY, Indices, X_shape), V) as the two kernels compute
 * it: the node's inputs 0..2 are MaxPoolGrad's (its attributes on the
 * node), V the Relu output (X_shape's shape); output 0 is written
 * (allocated here): MaxPoolGrad's sums where V > 0, else +0 (float32 on the
 * fast path: one pass, MaxPoolGrad's float sums; other types or the
 * reference: MaxPoolGrad's kernel, then the mask). Errors as MaxPoolGrad's
 * and ReluGrad's (indices out of range, types, shapes). */
nbl_status nbl_maxpool_relu_grad(nbl_kctx *c, const nbl_rt_tensor *V);

#endif
