/*
 * gemm.h - FP32 matrix products and convolution geometry shared by the nn and
 * quant op families.
 *
 * nbl_sgemm is the fast product: OpenBLAS cblas_sgemm when built with
 * NBL_HAVE_CBLAS, otherwise (or via nbl_sgemm_portable) nibble's own packed,
 * blocked kernel. nbl_dgemm_ref is the plain triple loop (double accumulation)
 * that reference kernels use and that tests compare the fast paths against.
 * All matrices are row-major; lda/ldb/ldc are row strides in elements.
 */
#ifndef NBL_GEMM_H
#define NBL_GEMM_H
#include <stdint.h>

#include "runtime/core/kernel.h"

/* OpenBLAS always runs single-threaded (nibble's pool splits large
 * products); this sets that once per process and stops OpenBLAS's idle
 * worker threads, which would spin on the cores the pool uses. Called when
 * an executor starts and before the first product; a no-op without
 * OpenBLAS. */
void nbl_blas_single_thread(void);

/* C[M,N] = alpha * op(A) * op(B) + beta * C, op(X) = X^T when trans_x.
 * A is M x K (K x M when trans_a), B is K x N (N x K when trans_b).
 * beta == 0 means C is written without being read (NaN in C does not leak).
 * ctx gives the thread count (NULL: single thread). */
void nbl_sgemm(nbl_kctx *ctx, int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
               float alpha, const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
               float *C, int64_t ldc);

/* An activation applied to results while they are still in cache: Clip's
 * float semantics y = min(max(y, lo), hi) with NaN passing through (Relu is
 * lo = 0, hi = +inf). kind 0: none. With res, a residual is added first
 * (Conv -> Add [-> Relu] fused): res has the layout of the output that
 * starts at y0, so output element y0[i] becomes y0[i] + res[i] (one float
 * add, as the Add op does), then the clamp. */
typedef struct nbl_act {
  int kind;
  float lo, hi;
  const float *res, *y0; /* NULL: no residual */
} nbl_act;

/* 1 when act does anything (a clamp or a residual). */
static inline int nbl_act_on(const nbl_act *act) { return act && (act->kind || act->res); }

/* The residual of output element y (act->res non-NULL). */
static inline const float *nbl_act_res(const nbl_act *act, const float *y) {
  return act->res + (y - act->y0);
}

/* Apply act (NULL or nothing to do: nothing) to rows x cols floats at y, row stride ld. */
void nbl_act_apply_2d(const nbl_act *act, float *y, int64_t rows, int64_t cols, int64_t ld);

/* nbl_sgemm followed by act on C, block by block as the product finishes them. */
void nbl_sgemm_act(nbl_kctx *ctx, int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
                   float alpha, const float *A, int64_t lda, const float *B, int64_t ldb,
                   float beta, float *C, int64_t ldc, const nbl_act *act);

/* Same contract as nbl_sgemm but always nibble's own blocked kernel (no BLAS). */
void nbl_sgemm_portable(nbl_kctx *ctx, int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
                        float alpha, const float *A, int64_t lda, const float *B, int64_t ldb,
                        float beta, float *C, int64_t ldc);

/* Reference product in double: plain triple loop, same contract as nbl_sgemm. */
void nbl_dgemm_ref(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, double alpha,
                   const double *A, int64_t lda, const double *B, int64_t ldb, double beta,
                   double *C, int64_t ldc);

/* What nbl_sgemm runs on, for nbl_kernel_info: "OpenBLAS 0.3.21 (SkylakeX
 * kernels)", "a cblas library" or "nibble's own blocked kernel (no BLAS)". */
const char *nbl_gemm_info(void);

/* Layers whose outputs have at least this many pixels per channel split
 * their work across threads by bands of pixels (rows): 2T bands at T threads,
 * thread t taking bands 2t and 2t + 1 of every channel first (the pool's
 * home chunks), so that consecutive layers find their inputs in the cache of
 * the core that wrote them; a thread done early takes the other's last band. */
#define NBL_BAND_MIN_PIXELS 784

/* The pixel bands for P output pixels per channel at `threads` threads: twice
 * the thread count (or the thread count when bands would fall below 64
 * pixels) when the layer is large enough to split that way, else 0. */
static inline int nbl_pixel_bands(int threads, int64_t P) {
  if (threads < 2 || P < NBL_BAND_MIN_PIXELS || P / threads < 64) return 0;
  int b = P / (2 * threads) >= 64 ? 2 * threads : threads;
  return b > 256 ? 256 : b;
}

/* Band t of `bands` over [0, n): [*lo, *hi), the inner boundaries rounded
 * down to a multiple of `align` (the last band ends at n). */
static inline void nbl_band(int64_t n, int64_t t, int64_t bands, int64_t align, int64_t *lo,
                            int64_t *hi) {
  *lo = n * t / bands / align * align;
  *hi = t == bands - 1 ? n : n * (t + 1) / bands / align * align;
}

/* M rows in blocks of `unit`, split into at most `want` chunks of whole
 * blocks: *chunk rows each (a multiple of unit), *n chunks. */
static inline void nbl_split_rows(int64_t M, int64_t unit, int64_t want, int64_t *n,
                                  int64_t *chunk) {
  int64_t blocks = (M + unit - 1) / unit;
  if (want > blocks) want = blocks;
  if (want < 1) want = 1;
  *chunk = (blocks + want - 1) / want * unit;
  *n = (M + *chunk - 1) / *chunk;
}

/* ------------------------------------------------------------------ convolution geometry */

#define NBL_CONV_MAX_SP (NBL_MAX_RANK - 2)

/* Geometry of a convolution or pooling window over ns spatial dims. */
typedef struct nbl_conv_geom {
  int ns;                         /* spatial rank (>= 1) */
  int64_t N, C, M, group;         /* batch, input channels, output channels (conv), groups */
  int64_t in[NBL_CONV_MAX_SP];    /* input spatial dims */
  int64_t k[NBL_CONV_MAX_SP];     /* kernel dims */
  int64_t s[NBL_CONV_MAX_SP];     /* strides */
  int64_t d[NBL_CONV_MAX_SP];     /* dilations */
  int64_t pb[NBL_CONV_MAX_SP];    /* pads at the beginning */
  int64_t pe[NBL_CONV_MAX_SP];    /* pads at the end */
  int64_t out[NBL_CONV_MAX_SP];   /* output spatial dims */
  int64_t in_sz, k_sz, out_sz;    /* products of in, k, out */
} nbl_conv_geom;

/* Fill g from the node's kernel_shape/strides/dilations/pads/auto_pad
 * attributes for input x (rank ns+2) and kernel dims `kdims` (NULL: from the
 * kernel_shape attribute). ceil_mode: pooling's output rounding. On error the
 * message names the node. */
nbl_status nbl_conv_geom_init(nbl_kctx *ctx, nbl_conv_geom *g, const nbl_rt_tensor *x,
                              const int64_t *kdims, int ceil_mode);

/* 1 when every kernel dim is 1 with stride 1 and no padding: the output is a
 * product of the weights with the input planes as they are. */
static inline int nbl_conv_pointwise(const nbl_conv_geom *g) {
  for (int i = 0; i < g->ns; i++)
    if (g->k[i] != 1 || g->s[i] != 1 || g->pb[i] != 0 || g->pe[i] != 0) return 0;
  return 1;
}

/* Copy n floats (an im2col row: often a few dozen) without a library call
 * for short rows: the call's overhead dominates a copy of 7 to 56 floats. */
static inline void nbl_copy_row(float *d, const float *s, int64_t n) {
  if (n >= 64) {
    __builtin_memcpy(d, s, sizeof(float) * (size_t)n);
    return;
  }
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) __builtin_memcpy(d + i, s + i, 32);
  if (i + 4 <= n) __builtin_memcpy(d + i, s + i, 16), i += 4;
  switch (n - i) { /* 0 to 3 left; a loop here would become a memcpy call again */
  case 3: d[i + 2] = s[i + 2]; /* fall through */
  case 2: d[i + 1] = s[i + 1]; /* fall through */
  case 1: d[i] = s[i]; /* fall through */
  default: break;
  }
}

/* Direct reference convolution in double: x [N,C,in...], w [M,C/group,k...],
 * bias [M] or NULL, y [N,M,out...]. */
void nbl_conv_ref_f64(const nbl_conv_geom *g, const double *x, const double *w, const double *bias,
                      double *y);

/* im2col for one image and one group: x points at the group's first channel
 * of the image ([Cg, in...]); col becomes [Cg * k_sz, out_sz]. */
void nbl_im2col_f32(const nbl_conv_geom *g, int64_t Cg, const float *x, float *col);

/* Fast FP32 convolution (im2col + nbl_sgemm, direct 1x1, depthwise loop);
 * same layout as nbl_conv_ref_f64. Returns NBL_ERR_OUT_OF_MEMORY on failure. */
nbl_status nbl_conv_f32(nbl_kctx *ctx, const nbl_conv_geom *g, const float *x, const float *w,
                        const float *bias, float *y);
/* nbl_conv_f32 with an activation on the output (NULL: none), applied per
 * block while it is in cache. */
nbl_status nbl_conv_f32_act(nbl_kctx *ctx, const nbl_conv_geom *g, const float *x, const float *w,
                            const float *bias, float *y, const nbl_act *act);

/* The weight gradient of a 2-D convolution with one group, FP32, by the
 * AVX-512 shifted-rows kernel (conv_shift.c): dw [M, C, KH, KW] = the sum
 * over the batch of dy [N, M, out] correlated with x [N, C, in] (overwritten).
 * 1 when it ran; 0 when the layer does not qualify (other ranks, groups, no
 * AVX-512) or memory ran out, dw then untouched. */
int nbl_conv_shift_dw(nbl_kctx *ctx, const nbl_conv_geom *g, const float *x, const float *dy,
                      float *dw);

/* The input gradient of a 2-D convolution with one group and dilation 1,
 * FP32, by the same kernel (conv_shift.c): dx [N, C, in] (overwritten) from
 * dy [N, M, out] and w [M, C, KH, KW], as one stride-1 convolution of dy
 * per stride phase of dx (its taps kh = a + sh t, kw = b + sw t': no col2im
 * scatter). 1 when it ran; 0 when the layer does not qualify or memory ran
 * out, dx then untouched or partly written. */
int nbl_conv_shift_dx(nbl_kctx *ctx, const nbl_conv_geom *g, const float *dy, const float *w, float *dx);

/* Most taps (KH x KW) of a depthwise kernel the fast kernels take. */
#define NBL_DW_MAX_TAPS 64

/* Depthwise layers (multiplier 1) 16 channels at a time, FP32 here and
 * INT4/ternary codes in code_depthwise.c: whether geometry g takes that path under `mode`
 * (0 never; 1 always, for tests; -1 where it measured faster: at most 14
 * output columns and 32 channels; the switches of kdebug.h), the ISA check
 * left to the caller. */
int nbl_dw_blocked_wanted(const nbl_conv_geom *g, int mode);
/* The zero-padded input tile of such a layer: Hp rows of Wp pixels cover
 * the pads and every tap of every output. */
void nbl_dw_tile_dims(const nbl_conv_geom *g, int64_t *Hp, int64_t *Wp);

/* The zero-padded input plane as dw_run lays it out for strides (R, S):
 * padded row r (input row r - pad top), column q (input column q - pad
 * left) is ph[((r % R) * S + q % S) * plane + (r / R) * Wp + q / S]; every
 * row has at least out[1] + ((k[1] - 1) * d[1]) / S columns. */
typedef struct nbl_dw_phases {
  const float *ph;
  int64_t plane, Wp, R, S;
} nbl_dw_phases;

/* Depthwise 2-D convolution (group == C == M, at most 64 taps) whose input
 * rows come from the caller and whose finished output planes go back to it:
 * load_row writes row ih of channel c of image n (in[1] floats); finish gets
 * each output plane (n, m) as plain sums (no bias, no activation), count =
 * out_sz floats, while it is still in cache. The INT4 path feeds activation
 * codes here: small integers as floats, whose sums stay exact below 2^24.
 * Returns NBL_ERR_UNSUPPORTED for other shapes (nothing run),
 * NBL_ERR_OUT_OF_MEMORY, or NBL_OK. No error message is set. */
typedef struct nbl_dw_hooks {
  void (*load_row)(void *arg, int64_t n, int64_t c, int64_t ih, float *row);
  /* optional, instead of load_row: with strides 1, rows ih0..ih1-1 to
   * dst + (ih - ih0) * ld; with column stride 2, the count rows ih0 + i *
   * step, each one's even columns to ev + i * ld and odd ones to od + i * ld */
  void (*load_rows)(void *arg, int64_t n, int64_t c, int64_t ih0, int64_t ih1, float *dst,
                    int64_t ld);
  void (*load_rows2)(void *arg, int64_t n, int64_t c, int64_t ih0, int64_t count, int64_t step,
                     float *ev, float *od, int64_t ld);
  void (*finish)(void *arg, int64_t n, int64_t m, float *y, int64_t count);
  /* optional: output rows oh0..oh1-1 of plane (n, m), finished (what finish
   * would make of them), to y (row oh0) straight from the loaded phase
   * planes p; returns 0 to leave them to the plane kernel and finish */
  int (*rows)(void *arg, const nbl_dw_phases *p, int64_t n, int64_t m, int64_t oh0,
              int64_t oh1, float *y);
  void *arg;
  int no_avx512; /* the caller's CPU cap: plane kernels of at most AVX2 */
} nbl_dw_hooks;
nbl_status nbl_conv_dw_hooked(nbl_kctx *ctx, const nbl_conv_geom *g, const float *w, float *y,
                              const nbl_dw_hooks *h);

/* ------------------------------------------------------------------ dtype conversion */

/* Tensor data converted to a malloc'd double array (NULL on OOM or numel 0 -> a 1-element buffer). */
double *nbl_to_f64(const nbl_rt_tensor *t);
/* Store n doubles into t (converted to its dtype). */
void nbl_from_f64(nbl_rt_tensor *t, const double *v);

#endif
