/* runtime/ops/grad_norm.h - what the 'grad_pool_norm' family
 * (runtime/ops/grad_pool_norm.c) shares with the fused training paths
 * (runtime/fusions/fuse_bn_grad.c): BatchNormalizationGrad's float32 fast
 * kernel for one channel, so that a fused node gives the op's numbers bit
 * for bit. */
#ifndef NBL_OPS_GRAD_NORM_H
#define NBL_OPS_GRAD_NORM_H

#include <stdint.h>

/* BatchNormalizationGrad of channel ch of float32 tensors laid out
 * [N, C, sp]: dY g, input x, the forward's saved mean and inverse standard
 * deviation and the channel's scale. *sg_out = sum g, *sgx_out = sum g *
 * (x - mean) * inv (the scale and bias gradients), both accumulated in
 * double per plane of sp floats in the fast kernel's order; when dx is not
 * NULL, writes the channel's input gradient there (dx may be g: each element
 * is read before it is written). */
void nbl_bn_grad_f32_channel(const float *g, const float *x, float *dx, int64_t N, int64_t C, int64_t sp,
                             int64_t ch, double mean, double inv, double scale, double *sg_out,
                             double *sgx_out);

#endif
