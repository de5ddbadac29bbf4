/* runtime/ops/grad_norm.h - what the 'grad_pool_norm' family
 * (runtime/ops/grad_pool_norm.c) shares with the fused training paths
 * (runtime/fusions/fuse_bn_grad.c, fuse_bn_act.c): the float32 fast kernels
 * of BatchNormInternal and BatchNormalizationGrad for one channel, so that
 * a fused node gives the ops' numbers bit for bit. */
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

/* BatchNormInternal's training statistics of channel ch of float32 x laid
 * out [N, C, sp]: the mean and the biased variance, each a pass summing in
 * double (the fast kernel's order). */
void nbl_bn_stats_f32_channel(const float *x, int64_t N, int64_t C, int64_t sp, int64_t ch, double *mean,
                              double *var);

/* The channel's normalization as the fast kernel applies it: Y = x * fa + fb
 * in float (a product, then a sum) with fa = scale / sqrt(var + eps) and
 * fb = bias - mean * fa rounded from double. Returns 1 / sqrt(var + eps)
 * (the saved inverse standard deviation). */
double nbl_bn_affine_f32(double mean, double var, double eps, double scale, double bias, float *fa, float *fb);

/* y[i] = x[i] * fa + fb for i < n, exactly as BatchNormInternal's fast
 * kernel (vector and scalar paths give the same floats); y may be x. */
void nbl_bn_apply_f32(float *y, const float *x, float fa, float fb, int64_t n);

#endif
