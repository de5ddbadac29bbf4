/* runtime/ops/nn.h - what the 'nn' family (runtime/ops/nn.c) shares with other
 * families: the Conv / ConvTranspose attribute decoding and checks, and the
 * col2im scatter, so that ConvGrad / ConvTransposeGrad (runtime/ops/grad_conv.c)
 * see exactly the geometry of the forward ops. */
#ifndef NBL_OPS_NN_H
#define NBL_OPS_NN_H

#include "runtime/core/kernel.h"
#include "runtime/kernels/gemm.h"

/* Conv's geometry for input X, weights W and optional bias B (NULL) from the
 * node's attributes (auto_pad, dilations, group, kernel_shape, pads,
 * strides), with Conv's checks (float X, W and B of X's type, channel and
 * group counts, B of shape [M]). g->M is W's output channel count. Returns
 * NBL_OK or an error naming the node; allocates nothing. */
nbl_status nbl_conv_node_geom(nbl_kctx *c, const nbl_rt_tensor *X, const nbl_rt_tensor *W,
                              const nbl_rt_tensor *B, nbl_conv_geom *g);

/* The same for ConvTranspose (attributes also output_padding, output_shape):
 * g->in are X's spatial dims, g->out the output's, g->M = W.dims[1] * group. */
nbl_status nbl_convt_node_geom(nbl_kctx *c, const nbl_rt_tensor *X, const nbl_rt_tensor *W,
                               const nbl_rt_tensor *B, nbl_conv_geom *g);

/* Scatter-add columns [Mg * k_sz, in_sz] (for each of Mg channels and each
 * kernel tap, a value per g->in position) into y [Mg, out...] at position
 * in * s - pb + k * d along every spatial dim (taps falling outside g->out
 * are dropped). This is ConvTranspose's col2im; with g->in and g->out (and
 * in_sz / out_sz) swapped it is the adjoint of Conv's im2col. */
void nbl_col2im_f64(const nbl_conv_geom *g, int64_t Mg, const double *col, double *y);
void nbl_col2im_f32(const nbl_conv_geom *g, int64_t Mg, const float *col, float *y);

/* Gemm's shape rule on the node's inputs ia (A) and ib (B): output 0 is
 * [M, N] (transA, transB) of element type dt, or A's when dt is
 * NBL_DT_UNDEFINED (Gemm: 0, 1; com.microsoft QGemm: 0, 3). */
nbl_status nbl_shape_gemm(nbl_shape_ctx *c, int ia, int ib, nbl_dtype dt);

#endif
