/* runtime/ops/grad_conv.c - op family 'grad_conv': backward ops of Conv and
 * ConvTranspose (forward ops in runtime/ops/nn.c); kernel contract in
 * runtime/core/kernel.h.
 *
 * ONNX Runtime's training ops, domain com.microsoft, version 1. T is float32
 * or float64 (float16/bfloat16 through the double reference path). The
 * reference kernels compute in double (direct loops); ConvGrad's fast kernel
 * (float32) takes, for 2-D layers with one group where AVX-512 runs, the
 * shifted-rows kernels of runtime/kernels/conv_shift.c (dW, and dX of
 * strided layers by stride phases; dX of stride-1 layers is the forward
 * convolution of dY), else nbl_sgemm (BLAS or nibble's own) with im2col /
 * col2im, and agrees with the reference within 1e-5 of the largest gradient element
 * (tests/runtime/ops/test_ops_grad.c); ConvTransposeGrad has the reference kernel only.
 *
 * ConvGrad (com.microsoft 1)
 *   inputs:  dY (T, [N, M, out...]), X (T, [N, C, in...]), W (T, [M, C/group, k...])
 *   outputs: dX (T, X's shape, optional), dW (T, W's shape, optional),
 *            dB (T, [M], optional: sum of dY over N and out...)
 *   attributes: those of Conv: auto_pad, dilations, group, kernel_shape, pads,
 *            strides (same defaults, decoded by the same code as Conv)
 *   Any number of spatial dims (1-D, 2-D, 3-D, ...); dY must have the shape
 *   Conv would give for X and W.
 * ConvTransposeGrad (com.microsoft 1)
 *   inputs:  dY (T, [N, M, out...]: the ConvTranspose output's shape),
 *            X (T, [N, C, in...]), W (T, [C, M/group, k...])
 *   outputs: dX (T, X's shape, optional), dW (T, W's shape, optional),
 *            dB (T, [M], optional)
 *   attributes: those of ConvTranspose: auto_pad, dilations, group,
 *            kernel_shape, output_padding, output_shape, pads, strides
 */

#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "runtime/core/cpu.h"
#include "runtime/core/shape.h"
#include "runtime/kernels/gemm.h"
#include "runtime/kernels/simd16.h"
#include "runtime/core/grad.h"
#include "runtime/ops/grad_util.h"
#include "runtime/ops/nn.h"

/* The requested outputs dX (0), dW (1), dB (2), allocated with the shapes of
 * X, W and [M]; *dx etc. are NULL when not requested. */
static nbl_status alloc_grads(nbl_kctx *c, const nbl_rt_tensor *X, const nbl_rt_tensor *W, int64_t M,
                              nbl_rt_tensor **dx, nbl_rt_tensor **dw, nbl_rt_tensor **db) {
  nbl_status st;
  *dx = *dw = *db = NULL;
  if (grad_want(c, 0)) {
    if ((st = nbl_kctx_alloc_out(c, 0, X->dtype, X->rank, X->dims))) return st;
    *dx = nbl_kctx_out(c, 0);
  }
  if (grad_want(c, 1)) {
    if ((st = nbl_kctx_alloc_out(c, 1, X->dtype, W->rank, W->dims))) return st;
    *dw = nbl_kctx_out(c, 1);
  }
  if (grad_want(c, 2)) {
    if ((st = nbl_kctx_alloc_out(c, 2, X->dtype, 1, &M))) return st;
    *db = nbl_kctx_out(c, 2);
  }
  return NBL_OK;
}

/* Inputs dY, X, W; the geometry of the forward op (transposed: ConvTranspose)
 * and the check that dY has the forward output's shape. */
static nbl_status grad_setup(nbl_kctx *c, int transposed, nbl_conv_geom *g, const nbl_rt_tensor **dY,
                             const nbl_rt_tensor **X, const nbl_rt_tensor **W) {
  nbl_status st = NBL_OK;
  if (!(*dY = grad_need(c, 0, "dY", &st)) || !(*X = grad_need(c, 1, "X", &st)) ||
      !(*W = grad_need(c, 2, "W", &st)))
    return st;
  st = transposed ? nbl_convt_node_geom(c, *X, *W, NULL, g) : nbl_conv_node_geom(c, *X, *W, NULL, g);
  if (st) return st;
  if ((st = grad_check_type(c, *dY, (*X)->dtype, "dY", "X"))) return st;
  int ok = (*dY)->rank == (*X)->rank && (*dY)->dims[0] == g->N && (*dY)->dims[1] == g->M;
  for (int i = 0; ok && i < g->ns; i++) ok = (*dY)->dims[2 + i] == g->out[i];
  if (!ok) {
    char want[160];
    int k = snprintf(want, sizeof want, "[%lld, %lld", (long long)g->N, (long long)g->M);
    for (int i = 0; i < g->ns && k < (int)sizeof want - 24; i++)
      k += snprintf(want + k, sizeof want - (size_t)k, ", %lld", (long long)g->out[i]);
    snprintf(want + k, sizeof want - (size_t)k, "]");
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "dY must have the forward output's shape %s", want);
  }
  return NBL_OK;
}

/* For each (position a of `from` dims, tap ki) the linear index into `to`
 * dims of a * s - pb + k * d, or -1 outside: [from_sz * k_sz]. Conv:
 * from = out, to = in; ConvTranspose: from = in, to = out. */
static int64_t *tap_table(const nbl_conv_geom *g, const int64_t *from, int64_t from_sz, const int64_t *to) {
  int64_t *t = malloc(sizeof(int64_t) * (size_t)(from_sz * g->k_sz > 0 ? from_sz * g->k_sz : 1));
  if (!t) return NULL;
  int ns = g->ns;
  for (int64_t a = 0; a < from_sz; a++)
    for (int64_t ki = 0; ki < g->k_sz; ki++) {
      int64_t ra = a, rk = ki, ac[NBL_CONV_MAX_SP], kc[NBL_CONV_MAX_SP];
      for (int i = ns - 1; i >= 0; i--) {
        ac[i] = ra % from[i];
        ra /= from[i];
        kc[i] = rk % g->k[i];
        rk /= g->k[i];
      }
      int64_t idx = 0;
      for (int i = 0; i < ns && idx >= 0; i++) {
        int64_t p = ac[i] * g->s[i] - g->pb[i] + kc[i] * g->d[i];
        idx = p < 0 || p >= to[i] ? -1 : idx * to[i] + p;
      }
      t[a * g->k_sz + ki] = idx;
    }
  return t;
}

/* dB[m] = sum of dY over the batch and the spatial dims (double sums). */
static void bias_grad_f64(const nbl_conv_geom *g, const double *dy, double *db) {
  for (int64_t m = 0; m < g->M; m++) {
    double s = 0;
    for (int64_t n = 0; n < g->N; n++)
      for (int64_t o = 0; o < g->out_sz; o++) s += dy[(n * g->M + m) * g->out_sz + o];
    db[m] = s;
  }
}

/* ------------------------------------------------------------------ reference kernels */

/* The reference ConvGrad (transposed = 0) and ConvTransposeGrad (1): direct
 * loops over every (image, output channel, position, input channel, tap) in
 * double, the adjoint of the forward loops read literally. */
static nbl_status conv_grad_ref_any(nbl_kctx *c, int transposed) {
  nbl_conv_geom g;
  const nbl_rt_tensor *dY, *X, *W;
  nbl_status st = grad_setup(c, transposed, &g, &dY, &X, &W);
  if (st) return st;
  nbl_rt_tensor *DX, *DW, *DB;
  if ((st = alloc_grads(c, X, W, g.M, &DX, &DW, &DB))) return st;
  int64_t Cg = g.C / g.group, Mg = g.M / g.group;
  double *dy = nbl_to_f64(dY), *x = nbl_to_f64(X), *w = nbl_to_f64(W);
  double *dx = calloc((size_t)(X->numel ? X->numel : 1), sizeof(double));
  double *dw = calloc((size_t)(W->numel ? W->numel : 1), sizeof(double));
  double *db = calloc((size_t)(g.M ? g.M : 1), sizeof(double));
  /* Conv reads x at tap(out position, k); ConvTranspose writes y at tap(in position, k) */
  int64_t *tap = transposed ? tap_table(&g, g.in, g.in_sz, g.out) : tap_table(&g, g.out, g.out_sz, g.in);
  if (!dy || !x || !w || !dx || !dw || !db || !tap) {
    st = grad_oom(c);
    goto done;
  }
  for (int64_t n = 0; n < g.N; n++)
    for (int64_t gr = 0; gr < g.group; gr++)
      for (int64_t mm = 0; mm < Mg; mm++)
        for (int64_t cc = 0; cc < Cg; cc++) {
          int64_t m = gr * Mg + mm, ch = gr * Cg + cc;
          const double *yp = dy + (n * g.M + m) * g.out_sz;
          const double *xp = x + (n * g.C + ch) * g.in_sz;
          double *dxp = dx + (n * g.C + ch) * g.in_sz;
          /* Conv: W[m, cc, k]; ConvTranspose: W[ch, mm, k] */
          const double *wp = w + (transposed ? ch * Mg + mm : m * Cg + cc) * g.k_sz;
          double *dwp = dw + (transposed ? ch * Mg + mm : m * Cg + cc) * g.k_sz;
          int64_t from_sz = transposed ? g.in_sz : g.out_sz;
          for (int64_t a = 0; a < from_sz; a++)
            for (int64_t ki = 0; ki < g.k_sz; ki++) {
              int64_t b = tap[a * g.k_sz + ki];
              if (b < 0) continue;
              /* Conv: y[a] += x[b] w[ki]; ConvTranspose: y[b] += x[a] w[ki] */
              int64_t yi = transposed ? b : a, xi = transposed ? a : b;
              dxp[xi] += yp[yi] * wp[ki];
              dwp[ki] += yp[yi] * xp[xi];
            }
        }
  bias_grad_f64(&g, dy, db);
  if (DX) nbl_from_f64(DX, dx);
  if (DW) nbl_from_f64(DW, dw);
  if (DB) nbl_from_f64(DB, db);
done:
  free(dy);
  free(x);
  free(w);
  free(dx);
  free(dw);
  free(db);
  free(tap);
  return st;
}

static nbl_status k_conv_grad_ref(nbl_kctx *c) { return conv_grad_ref_any(c, 0); }
static nbl_status k_convt_grad_ref(nbl_kctx *c) { return conv_grad_ref_any(c, 1); }

/* ------------------------------------------------------------------ fast ConvGrad (float32) */

/* The fast kernel works on a chunk of nb images at a time and one group:
 *   col [K, L]  (K = Cg * k_sz, L = nb * out_sz): image b's im2col in columns b * out_sz..
 *   dyg [Mg, L]: the group's dY rows of the same images, side by side
 *   dW_g [Mg, K] += dyg x col^T                   (one product per chunk)
 *   col = W_g^T [K, Mg] x dyg                     (the columns of dX)
 *   dX_g of each image += col2im(its columns)
 * so that small layers (LeNet) make few large products instead of many tiny
 * ones; im2col and col2im run in parallel over the chunk's images. */
/* col's budget: 1 MB, so that the product reads the columns im2col just wrote
 * from the L2 cache (ResNet-8's 16- and 32-channel 3x3 layers at batch 64:
 * 2 images of 144 x 784 columns per chunk instead of 5; the training step
 * took about 7% less CPU time than with 16 MB) */
#define CG_COL_FLOATS (1 << 18)
#define CG_COLS 4096            /* columns (image pixels) per chunk */

typedef struct cg_task {
  const nbl_conv_geom *g;
  int64_t Cg, K, L, n0, gr;
  int point, even; /* even: AVX-512 for column stride 2 */
  const float *x;
  float *col, *dx;
} cg_task;

/* im2col of one image and group ([Cg, H, W]) into col rows of stride ld
 * (column stride 2 by AVX-512 where it runs: even). */
static void im2col2d_ld(const nbl_conv_geom *g, int64_t Cg, const float *x, float *col, int64_t ld, int even) {
  int64_t H = g->in[0], Wd = g->in[1], OH = g->out[0], OW = g->out[1];
  int64_t KH = g->k[0], KW = g->k[1], sh = g->s[0], sw = g->s[1], dh = g->d[0], dw = g->d[1];
  for (int64_t ch = 0; ch < Cg; ch++)
    for (int64_t kh = 0; kh < KH; kh++)
      for (int64_t kw = 0; kw < KW; kw++) {
        float *dst = col + ((ch * KH + kh) * KW + kw) * ld;
        const float *plane = x + ch * H * Wd;
        int64_t off = kw * dw - g->pb[1], ow0 = 0, ow1 = OW;
        while (ow0 < OW && ow0 * sw + off < 0) ow0++;
        while (ow1 > ow0 && (ow1 - 1) * sw + off >= Wd) ow1--;
        for (int64_t oh = 0; oh < OH; oh++) {
          float *d = dst + oh * OW;
          int64_t ih = oh * sh - g->pb[0] + kh * dh;
          if (ih < 0 || ih >= H) {
            memset(d, 0, sizeof(float) * (size_t)OW);
            continue;
          }
          const float *row = plane + ih * Wd;
          for (int64_t ow = 0; ow < ow0; ow++) d[ow] = 0.0f;
          if (sw == 1) nbl_copy_row(d + ow0, row + ow0 + off, ow1 - ow0);
#if defined(__x86_64__)
          else if (sw == 2 && even)
            nbl_even_gather_ps(row + 2 * ow0 + off, ow1 - ow0, d + ow0);
#endif
          else
            for (int64_t ow = ow0; ow < ow1; ow++) d[ow] = row[ow * sw + off];
          for (int64_t ow = ow1; ow < OW; ow++) d[ow] = 0.0f;
        }
      }
}

/* col2im: scatter-add col rows (stride ld) of one image into dx [Cg, H, W]
 * (column stride 2 by AVX-512 where it runs: even). */
static void col2im2d_ld(const nbl_conv_geom *g, int64_t Cg, const float *col, int64_t ld, float *dx, int even) {
  int64_t H = g->in[0], Wd = g->in[1], OH = g->out[0], OW = g->out[1];
  int64_t KH = g->k[0], KW = g->k[1], sh = g->s[0], sw = g->s[1], dh = g->d[0], dw = g->d[1];
  for (int64_t ch = 0; ch < Cg; ch++)
    for (int64_t kh = 0; kh < KH; kh++)
      for (int64_t kw = 0; kw < KW; kw++) {
        const float *src = col + ((ch * KH + kh) * KW + kw) * ld;
        float *plane = dx + ch * H * Wd;
        int64_t off = kw * dw - g->pb[1], ow0 = 0, ow1 = OW;
        while (ow0 < OW && ow0 * sw + off < 0) ow0++;
        while (ow1 > ow0 && (ow1 - 1) * sw + off >= Wd) ow1--;
        for (int64_t oh = 0; oh < OH; oh++) {
          int64_t ih = oh * sh - g->pb[0] + kh * dh;
          if (ih < 0 || ih >= H) continue;
          float *row = plane + ih * Wd;
          const float *s = src + oh * OW;
          if (sw == 1)
            for (int64_t ow = ow0; ow < ow1; ow++) row[ow + off] += s[ow];
#if defined(__x86_64__)
          else if (sw == 2 && even)
            nbl_even_scatter_add_ps(s + ow0, ow1 - ow0, row + 2 * ow0 + off);
#endif
          else
            for (int64_t ow = ow0; ow < ow1; ow++) row[ow * sw + off] += s[ow];
        }
      }
}

/* Conv's geometry with the input and output dims swapped: nbl_col2im_f32 of
 * it is the adjoint of nbl_im2col_f32 (any spatial rank). */
static nbl_conv_geom swapped(const nbl_conv_geom *g) {
  nbl_conv_geom t = *g;
  memcpy(t.in, g->out, sizeof t.in);
  memcpy(t.out, g->in, sizeof t.out);
  t.in_sz = g->out_sz;
  t.out_sz = g->in_sz;
  return t;
}

/* Images [begin, end) of the chunk: im2col into their columns (2-D or
 * pointwise geometry; other ranks go through cg_serial). */
static void cg_im2col(void *arg, int64_t begin, int64_t end) {
  const cg_task *t = arg;
  const nbl_conv_geom *g = t->g;
  for (int64_t b = begin; b < end; b++) {
    const float *xg = t->x + ((t->n0 + b) * g->C + t->gr * t->Cg) * g->in_sz;
    float *dst = t->col + b * g->out_sz;
    if (t->point)
      for (int64_t r = 0; r < t->Cg; r++) memcpy(dst + r * t->L, xg + r * g->in_sz, sizeof(float) * (size_t)g->out_sz);
    else
      im2col2d_ld(g, t->Cg, xg, dst, t->L, t->even);
  }
}

/* Images [begin, end) of the chunk: their dX columns into dX (2-D or pointwise). */
static void cg_col2im(void *arg, int64_t begin, int64_t end) {
  const cg_task *t = arg;
  const nbl_conv_geom *g = t->g;
  for (int64_t b = begin; b < end; b++) {
    float *dxg = t->dx + ((t->n0 + b) * g->C + t->gr * t->Cg) * g->in_sz;
    const float *src = t->col + b * g->out_sz;
    if (t->point) { /* one tap per input element: a copy */
      for (int64_t r = 0; r < t->Cg; r++) memcpy(dxg + r * g->in_sz, src + r * t->L, sizeof(float) * (size_t)g->in_sz);
      continue;
    }
    if (g->k_sz == 1) memset(dxg, 0, sizeof(float) * (size_t)(t->Cg * g->in_sz)); /* (not zeroed before) */
    col2im2d_ld(g, t->Cg, src, t->L, dxg, t->even);
  }
}

/* The same two steps for other spatial ranks, one image at a time through
 * the forward's nbl_im2col_f32 / nbl_col2im_f32 and tmp [K, out_sz]. */
static void cg_serial(const cg_task *t, int64_t nb, int to_col, float *tmp) {
  const nbl_conv_geom *g = t->g;
  nbl_conv_geom sw = swapped(g);
  for (int64_t b = 0; b < nb; b++) {
    size_t row = sizeof(float) * (size_t)g->out_sz;
    if (to_col) {
      nbl_im2col_f32(g, t->Cg, t->x + ((t->n0 + b) * g->C + t->gr * t->Cg) * g->in_sz, tmp);
      for (int64_t r = 0; r < t->K; r++) memcpy(t->col + r * t->L + b * g->out_sz, tmp + r * g->out_sz, row);
    } else {
      for (int64_t r = 0; r < t->K; r++) memcpy(tmp + r * g->out_sz, t->col + r * t->L + b * g->out_sz, row);
      nbl_col2im_f32(&sw, t->Cg, tmp, t->dx + ((t->n0 + b) * g->C + t->gr * t->Cg) * g->in_sz);
    }
  }
}

/* dX of a stride-1 convolution is itself a convolution: dY convolved with W
 * transposed (input and output channels swapped) and flipped in every
 * spatial dim, with the same dilation and pads d (k - 1) - p on each side
 * (the output then has X's spatial dims). It runs on the forward path's
 * kernels (AVX-512 product or im2col + BLAS, many taps per product) instead
 * of a product of inner dimension M and a col2im scatter. One group, any
 * spatial rank, pads at most d (k - 1). Returns 1 when it wrote dx (fully:
 * no zeroing needed), 0 when the layer does not qualify, -1 when out of
 * memory. */
static int dx_by_conv(nbl_kctx *c, const nbl_conv_geom *g, const float *dy, const float *w, float *dx) {
  if (g->group != 1 || nbl_conv_pointwise(g)) return 0;
  /* its im2col has M k_sz in_sz elements per image against the product's C
   * k_sz out_sz: not when it is much larger (LeNet's second 5x5 layer: 16
   * channels of 8x8 padded by 4 to 12x12 for 6 channels, 6 times the work) */
  if (g->M * g->in_sz > 2 * g->C * g->out_sz) return 0;
  nbl_conv_geom t = *g;
  for (int i = 0; i < g->ns; i++) {
    int64_t span = g->d[i] * (g->k[i] - 1);
    if (g->s[i] != 1 || g->pb[i] > span || g->pe[i] > span) return 0;
    t.in[i] = g->out[i];
    t.out[i] = g->in[i];
    t.pb[i] = span - g->pb[i];
    t.pe[i] = span - g->pe[i];
  }
  t.C = g->M;
  t.M = g->C;
  t.in_sz = g->out_sz;
  t.out_sz = g->in_sz;
  int64_t K = g->k_sz;
  float *wt = malloc(sizeof(float) * (size_t)(g->M * g->C * K + 1));
  if (!wt) return -1;
  for (int64_t m = 0; m < g->M; m++)
    for (int64_t ch = 0; ch < g->C; ch++)
      for (int64_t k = 0; k < K; k++) wt[(ch * g->M + m) * K + k] = w[(m * g->C + ch) * K + K - 1 - k];
  /* the forward kernels must not cache the packed weights by node: wt is new
   * every call (a context without the graph: its weights count as changing) */
  nbl_kctx cc = *c;
  cc.graph = NULL;
  nbl_status st = nbl_conv_f32(&cc, &t, dy, wt, NULL, dx);
  free(wt);
  return st == NBL_OK ? 1 : -1;
}

/* The sum of p[0..n) in double for the fast kernel's dB: with AVX, 16 lanes
 * in 4 chains (the loads' pace, not one add per add latency); the order of
 * additions differs from the reference's, the sums agree within double
 * rounding. */
#if defined(__x86_64__)
__attribute__((target("avx"))) static double plane_sum_avx(const float *p, int64_t n) {
  __m256d a0 = _mm256_setzero_pd(), a1 = a0, a2 = a0, a3 = a0;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m256 u = _mm256_loadu_ps(p + i), v = _mm256_loadu_ps(p + i + 8);
    a0 = _mm256_add_pd(a0, _mm256_cvtps_pd(_mm256_castps256_ps128(u)));
    a1 = _mm256_add_pd(a1, _mm256_cvtps_pd(_mm256_extractf128_ps(u, 1)));
    a2 = _mm256_add_pd(a2, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
    a3 = _mm256_add_pd(a3, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
  }
  __m256d a = _mm256_add_pd(_mm256_add_pd(a0, a1), _mm256_add_pd(a2, a3));
  __m128d h = _mm_add_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
  double s = _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
  for (; i < n; i++) s += p[i];
  return s;
}
#endif

static double plane_sum(const float *p, int64_t n, int avx) {
#if defined(__x86_64__)
  if (avx) return plane_sum_avx(p, n);
#endif
  (void)avx;
  double s = 0;
  for (int64_t i = 0; i < n; i++) s += p[i];
  return s;
}

static nbl_status k_conv_grad_fast(nbl_kctx *c) {
  const nbl_rt_tensor *x0 = grad_in(c, 1);
  if (c->reference || !x0 || x0->dtype != NBL_DT_FLOAT) return k_conv_grad_ref(c);
  nbl_conv_geom g;
  const nbl_rt_tensor *dY, *X, *W;
  nbl_status st = grad_setup(c, 0, &g, &dY, &X, &W);
  if (st) return st;
  nbl_rt_tensor *DX, *DW, *DB;
  if ((st = alloc_grads(c, X, W, g.M, &DX, &DW, &DB))) return st;
  int64_t Cg = g.C / g.group, Mg = g.M / g.group, K = Cg * g.k_sz, out = g.out_sz;
  const float *dy = dY->data, *w = W->data;
  if (DB) {
    float *db = DB->data;
    const int avx = nbl_cpu_has(NBL_CPU_AVX);
    for (int64_t m = 0; m < g.M; m++) {
      double s = 0;
      for (int64_t n = 0; n < g.N; n++) s += plane_sum(dy + (n * g.M + m) * out, out, avx);
      db[m] = (float)s;
    }
  }
  /* 1 x 1 kernels (a strided shortcut): im2col is a gather and col2im a
   * scatter of one tap, one product each; the shifted-rows kernels' tap and
   * phase machinery is not worth it */
  int k1 = g.k_sz == 1;
  if (DX && X->numel) {
    int done = g.N && out && K ? dx_by_conv(c, &g, dy, w, DX->data) : 0;
    /* strided 2-D layers: one stride-1 convolution per phase of dX */
    if (!done && !k1 && g.N && out && K && g.s[0] * (g.ns == 2 ? g.s[1] : 1) > 1)
      done = nbl_conv_shift_dx(c, &g, dy, w, DX->data);
    if (done < 0) return grad_oom(c);
    if (done) DX = NULL; /* written */
    /* one tap (2-D or pointwise): each image's planes zeroed by cg_col2im
     * just before its columns go in, while they are in cache */
    else if (!(k1 && (nbl_conv_pointwise(&g) || g.ns == 2) && g.N && out && K))
      memset(DX->data, 0, sizeof(float) * (size_t)X->numel);
  }
  /* dW of 2-D layers without im2col where AVX-512 runs */
  if (DW && W->numel && g.N && out && !k1 && nbl_conv_shift_dw(c, &g, X->data, dy, DW->data)) DW = NULL;
  if (DW && W->numel) memset(DW->data, 0, sizeof(float) * (size_t)W->numel);
  if ((!DX && !DW) || g.N == 0 || out == 0 || K == 0) return NBL_OK;
  /* images per chunk: about CG_COLS columns (measured best for LeNet-sized
   * layers: fewer, larger products without very long inner dimensions), and
   * col within its budget */
  int64_t nb = CG_COLS / out;
  if (nb * K * out > CG_COL_FLOATS) nb = CG_COL_FLOATS / (K * out);
  nb = nb < 1 ? 1 : nb > g.N ? g.N : nb;
  int point = nbl_conv_pointwise(&g), serial = !point && g.ns != 2;
  float *col = malloc(sizeof(float) * (size_t)(K * nb * out)), *dyg = malloc(sizeof(float) * (size_t)(Mg * nb * out));
  float *tmp = serial ? malloc(sizeof(float) * (size_t)(K * out)) : NULL;
  if (!col || !dyg || (serial && !tmp)) {
    free(col);
    free(dyg);
    free(tmp);
    return grad_oom(c);
  }
  cg_task t = {&g, Cg, K, 0, 0, 0, point, nbl_cpu_has(NBL_CPU_AVX512F), X->data, col, DX ? DX->data : NULL};
  for (int64_t n0 = 0; n0 < g.N; n0 += nb) {
    int64_t cnt = g.N - n0 < nb ? g.N - n0 : nb, L = cnt * out;
    t.n0 = n0;
    t.L = L;
    for (int64_t gr = 0; gr < g.group; gr++) {
      t.gr = gr;
      for (int64_t b = 0; b < cnt; b++)
        for (int64_t m = 0; m < Mg; m++)
          memcpy(dyg + m * L + b * out, dy + ((n0 + b) * g.M + gr * Mg + m) * out, sizeof(float) * (size_t)out);
      if (DW) {
        if (serial) cg_serial(&t, cnt, 1, tmp);
        else nbl_parallel_for(c, cnt, 1, cg_im2col, &t);
        nbl_sgemm(c, 0, 1, Mg, K, L, 1.0f, dyg, L, col, L, 1.0f, (float *)DW->data + gr * Mg * K, K);
      }
      if (DX) {
        nbl_sgemm(c, 1, 0, K, L, Mg, 1.0f, w + gr * Mg * K, K, dyg, L, 0.0f, col, L);
        if (serial) cg_serial(&t, cnt, 0, tmp);
        else nbl_parallel_for(c, cnt, 1, cg_col2im, &t);
      }
    }
  }
  free(col);
  free(dyg);
  free(tmp);
  return NBL_OK;
}

/* ------------------------------------------------------------------ table */

/* ------------------------------------------------------------------ shape rules */

/* dX = shape(X), dW = shape(W), dB = [the output channels: W[0] for Conv,
 * W[1] * group for ConvTranspose]. */
static nbl_status conv_grad_shapes(nbl_shape_ctx *c, bool transpose) {
  nbl_status st = nbl_shp_copy_in(c, 0, 1);
  if (!st) st = nbl_shp_copy_in(c, 1, 2);
  if (st) return st;
  nbl_shp w, b;
  nbl_shp_in(c, 2, &w);
  nbl_shp_rank(&b, w.dt, 1);
  if (w.rank >= 2) {
    nbl_dim d = w.d[transpose ? 1 : 0];
    int64_t group = nbl_attr_int(c->node, "group", 1);
    if (transpose && nbl_dim_known(d) && group > 0 && d.value <= INT64_MAX / group)
      d = nbl_dim_val(d.value * group);
    else if (transpose && group != 1)
      d = nbl_dim_unk();
    b.d[0] = d;
  }
  return nbl_shp_set(c, 2, &b);
}

static nbl_status shape_conv_grad(nbl_shape_ctx *c) { return conv_grad_shapes(c, false); }
static nbl_status shape_convt_grad(nbl_shape_ctx *c) { return conv_grad_shapes(c, true); }

const nbl_op_def nbl_ops_grad_conv[] = {
    NBL_OP_DEF(NBL_MS_DOMAIN, "ConvGrad", 1, 1, .ref = k_conv_grad_ref, .fast = k_conv_grad_fast, .shape = shape_conv_grad, .no_grad = NBL_NO_GRAD_BACKWARD),
    NBL_OP_DEF(NBL_MS_DOMAIN, "ConvTransposeGrad", 1, 1, .ref = k_convt_grad_ref, .shape = shape_convt_grad, .no_grad = NBL_NO_GRAD_BACKWARD),
};
const size_t nbl_ops_grad_conv_count = sizeof nbl_ops_grad_conv / sizeof nbl_ops_grad_conv[0];
