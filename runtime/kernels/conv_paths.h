/*
 * conv_paths.h - the FP32 convolution paths that nbl_conv_f32_act
 * (conv_im2col.c) chooses from, and what they share; internal to
 * runtime/kernels/ (op kernels call nbl_conv_f32_act of gemm.h).
 */
#ifndef NBL_CONV_PATHS_H
#define NBL_CONV_PATHS_H

#include "runtime/kernels/gemm.h"

/* nbl_sgemm_act; with row_bias (non-NULL), C starts as row_bias[i] in row i
 * and beta is 1 (the fill happens per block, in the thread that computes
 * the block). gemm.c. */
void nbl_sgemm_bias_act(nbl_kctx *ctx, int trans_a, int trans_b, int64_t M, int64_t N,
                        int64_t K, float alpha, const float *A, int64_t lda, const float *B,
                        int64_t ldb, float beta, float *C, int64_t ldc, const float *row_bias,
                        const nbl_act *act);

/* 1 when the node's input 1 (the weights) is a constant initializer that no
 * graph input overrides, so a transform of it may be kept in the node's
 * cache across runs. conv_im2col.c. */
int nbl_conv_weights_const(nbl_kctx *ctx);

/* Depthwise layers (group == C, any multiplier), 2-D: 16 channels at a time
 * on small planes where AVX-512 runs, else the plane kernel. Always NBL_OK
 * (an out-of-memory plane buffer falls back to a direct loop).
 * depthwise_f32.c. */
nbl_status nbl_conv_dw_f32(nbl_kctx *ctx, const nbl_conv_geom *g, const float *x, const float *w,
                           const float *bias, float *y, const nbl_act *act);

/* 1 when Winograd F(2x2, 3x3) applies to geometry g (3x3, stride 1,
 * dilation 1, one group, at least 16 channels in and out). winograd.c. */
int nbl_wino_ok(const nbl_conv_geom *g);
/* The layer as Winograd F(2x2, 3x3), transformed weights in the node's
 * cache; 0 when it did not run (weights not constant, out of memory): the
 * caller takes another path. winograd.c. */
int nbl_wino_conv(nbl_kctx *ctx, const nbl_conv_geom *g, const float *x, const float *w,
                  const float *bias, float *y, const nbl_act *act);

/* Convolutions (1-D or 2-D, one group) whose windows lie mostly in the
 * padding, and dilated ones: whether geometry g takes the per-tap products
 * of conv_taps.c (less than half of the (tap, output) pairs inside the
 * input, or a dilation with at least 16 input channels), and those
 * products (bias, act applied; tap-major weights in the node's cache when
 * constant); 1 when it ran, 0 when g does not qualify or memory ran out
 * (nothing written). */
int nbl_conv_taps_wanted(const nbl_conv_geom *g);
int nbl_conv_taps_f32(nbl_kctx *ctx, const nbl_conv_geom *g, const float *x, const float *w,
                      const float *bias, float *y, const nbl_act *act);

#if defined(__x86_64__)
/* y[M][P] = act(bias + w[M][K] x[K][P]) for one image with the AVX-512
 * tile kernel; 1 when it ran (AVX-512 here, memory for the packed weights).
 * Constant weights are packed once into the node's cache, others into
 * *scratch (NULL at first), which the caller frees after its last image.
 * conv_avx512.c. */
int nbl_conv_gemm_avx512(nbl_kctx *ctx, int64_t M, int64_t K, int64_t P, const float *x,
                         const float *w, const float *bias, float *y, const nbl_act *act,
                         void **scratch);
/* w[M][K] packed for that kernel as nbl_conv_gemm_avx512 keeps it (constant
 * weights in the node's cache, others in *scratch, which the caller frees);
 * NULL when out of memory. conv_avx512.c. */
const float *nbl_c11_weights(nbl_kctx *ctx, const float *w, int64_t M, int64_t K, void **scratch);
/* The same for G groups of M / G rows, each packed on its own: group g's
 * weights at g ((M / G + 7) / 8) 8 K floats (a grouped layer's). */
const float *nbl_c11_weights_groups(nbl_kctx *ctx, const float *w, int64_t M, int64_t K, int64_t G,
                                    void **scratch);
/* The layer (2-D, one group, AVX-512) by the shifted-rows kernel of
 * conv_shift.c, with the same sums in the same order as the im2col product
 * of nbl_conv_gemm_avx512 (bitwise the same outputs); 1 when it ran, 0 when
 * the layer does not qualify or memory ran out (nothing written). */
int nbl_conv_shift_f32(nbl_kctx *ctx, const nbl_conv_geom *g, const float *x, const float *w,
                       const float *bias, float *y, const nbl_act *act);
/* The same with the weights already packed (wp, as nbl_c11_weights packs
 * them) and no limit on their size: one group of a grouped layer. */
int nbl_conv_shift_f32_wp(nbl_kctx *ctx, const nbl_conv_geom *g, const float *x, const float *wp,
                          const float *bias, float *y, const nbl_act *act);
/* wp = w[M][K] packed for that kernel: [M/8 rounded up][K][8], wp zeroed by
 * the caller. */
void nbl_c11_pack(const float *w, int64_t M, int64_t K, float *wp);
/* y[M][P] = wp x[K][P] (wp from nbl_c11_pack) on the calling thread, no
 * bias or activation (the Winograd products). */
void nbl_c11_serial(const float *wp, const float *x, int64_t M, int64_t K, int64_t P, float *y);
#endif

#endif /* NBL_CONV_PATHS_H */
