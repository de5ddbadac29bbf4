/* runtime/ops/grad_norm.c - op family 'grad_norm': backward ops of
 * normalization, and the training-mode BatchNorm forward that saves the
 * batch statistics (forward ops in runtime/ops/nn_norm.c); kernel contract
 * in runtime/core/kernel.h. The pooling backward ops are the family
 * 'grad_pool' (runtime/ops/grad_pool.c).
 *
 * ONNX Runtime's training op names and signatures, domain com.microsoft,
 * version 1. T is float32 or float64 (float16/bfloat16 through the double
 * reference path). Reference kernels compute in double. Fast float32
 * paths: BatchNormInternal and BatchNormalizationGrad take per-channel sums
 * in sixteen double lanes (nbl_bn_acc: the same bits on every CPU and
 * thread count; the statistics in one pass about the channel's first
 * element) and write in float (within 1e-5); tests/runtime/ops/test_ops_grad.c
 * checks them, tests/runtime/ops/test_bn_sums.c the sums.
 *
 * BatchNormInternal (com.microsoft 1)  -- BatchNormalization in training mode
 *   inputs:  X (T, [N, C, ...]), scale (T, [C]), B (T, [C]),
 *            input_mean (T, [C]), input_var (T, [C]) (the running statistics)
 *   outputs: Y (T, X's shape), running_mean (optional, [C]), running_var
 *            (optional, [C]), saved_mean (optional, [C]: the batch mean),
 *            saved_inv_std (optional, [C]: 1 / sqrt(batch_var + epsilon))
 *   attributes: epsilon (float, default 1e-5), momentum (float, default 0.9),
 *            training_mode (int, default 1; 0 = inference with the running
 *            statistics, then only Y may be requested)
 *   semantics: ONNX BatchNormalization-15 with training_mode=1: batch_var is
 *            the biased variance over N and the spatial dims; running_x =
 *            input_x * momentum + batch_x * (1 - momentum)
 * BatchNormalizationGrad (com.microsoft 1)
 *   inputs:  dY (T, X's shape), X (T, [N, C, ...]), scale (T, [C]),
 *            saved_mean (T, [C]), saved_inv_std (T, [C]) (BatchNormInternal outputs 3, 4)
 *   outputs: X_grad (T, X's shape, optional), scale_grad (T, [C], optional),
 *            bias_grad (T, [C], optional)
 *   attributes: epsilon (float; accepted, unused: saved_inv_std carries it)
 *   semantics: the gradient through the batch statistics (training mode):
 *            xhat = (x - mean) * inv_std, m = N * spatial,
 *            bias_grad = sum dY, scale_grad = sum dY * xhat,
 *            X_grad = scale * inv_std * (dY - bias_grad / m - xhat * scale_grad / m)
 * LayerNormalizationGrad (com.microsoft 1)
 *   inputs:  Y_grad (T, X's shape), X (T), scale (T, broadcastable to
 *            X.shape[axis:]), mean (float/double, X.shape[:axis] + [1]*(rank-axis):
 *            LayerNormalization's output 1), inv_std_dev (same: output 2)
 *   outputs: X_grad (T, X's shape, optional), scale_grad (T, scale's shape,
 *            optional), bias_grad (T, scale's shape, optional)
 *   attributes: axis (int, default -1)
 * LRNGrad (ai.nibble 1)
 *   inputs:  Y_grad (T, X's shape), X (T, [N, C, ...]), Y (T: LRN's output)
 *   outputs: X_grad (T, X's shape)
 *   attributes: LRN's alpha, beta, bias, size
 *   semantics: with d_c = bias + alpha / size * sum over c's window of x^2
 *            (the window [c - floor((size-1)/2), c + ceil((size-1)/2)]),
 *            y_c = x_c d_c^-beta, so
 *            X_grad_c = Y_grad_c d_c^-beta - 2 alpha beta / size * x_c *
 *                       sum over c' whose window holds c of Y_grad_c' y_c' / d_c'
 *            (reference kernel in double)
 */

#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "runtime/core/cpu.h"
#include "runtime/core/shape.h"
#include "runtime/kernels/gemm.h"
#include "runtime/core/grad.h"
#include "runtime/ops/grad_norm.h"
#include "runtime/ops/grad_util.h"

/* ------------------------------------------------------------------ BatchNormInternal */

/* Inputs of BatchNormInternal / BatchNormalizationGrad: X [N, C, ...] and
 * `nper` per-channel inputs starting at input `first`, each [C] and float. */
static nbl_status bn_inputs(nbl_kctx *c, const nbl_rt_tensor *X, int first, int nper, const char *const *names) {
  nbl_status st = NBL_OK;
  if ((st = grad_check_float(c, X, "X"))) return st;
  if (X->rank < 2) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "X has rank %d, expected >= 2", X->rank);
  for (int i = first; i < first + nper; i++) {
    const nbl_rt_tensor *t = grad_need(c, i, names[i], &st);
    if (!t) return st;
    if ((st = grad_check_float(c, t, names[i]))) return st;
    if (t->rank != 1 || t->dims[0] != X->dims[1])
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input %s must have shape [%lld]", names[i], (long long)X->dims[1]);
  }
  return NBL_OK;
}

/* The per-channel sums of the fast (float32) BatchNorm kernels: sixteen
 * double lanes per sum (nbl_bn_acc), element i of every plane added to lane
 * i % 16, the lanes combined by nbl_bn_acc_total in a fixed tree. Each lane
 * sees the same double operations in the same order on every path (AVX-512:
 * two registers of eight lanes per sum, a plane's last partial block
 * masked; AVX2: four registers of four, the partial block blended; scalar:
 * the lanes one by one), so the sums are the same bits on every CPU and
 * thread count, and the add chains are sixteen independent ones (the loop
 * runs at the loads' pace, not one dependent add per element). */
#if defined(__x86_64__)
/* one block of 16 (the lanes of mask m) into the accumulators */
#define ACC512_BLOCK(m, xv, gv)                                                                                 \
  do {                                                                                                          \
    __m512d x0 = _mm512_sub_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(xv)), vk);                                \
    __m512d x1 = _mm512_sub_pd(_mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(xv), 1))), \
                               vk);                                                                             \
    __m512d t0 = x0, t1 = x1;                                                                                   \
    if (gp) {                                                                                                   \
      t0 = _mm512_cvtps_pd(_mm512_castps512_ps256(gv));                                                         \
      t1 = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(gv), 1)));                  \
    }                                                                                                           \
    a0 = _mm512_mask_add_pd(a0, (__mmask8)(m), a0, t0);                                                         \
    a1 = _mm512_mask_add_pd(a1, (__mmask8)((m) >> 8), a1, t1);                                                  \
    b0 = _mm512_mask_add_pd(b0, (__mmask8)(m), b0, _mm512_mul_pd(t0, x0));                                      \
    b1 = _mm512_mask_add_pd(b1, (__mmask8)((m) >> 8), b1, _mm512_mul_pd(t1, x1));                               \
  } while (0)

/* a[l] += x - k, b[l] += (x - k)^2 (stats, g NULL) or a[l] += g, b[l] +=
 * g (x - k) (grad) over the planes of channels [c0, c1) (sums s[c - c0],
 * about k[c - c0]), h->before run on each plane first. The planes go in
 * the order n, then c (bn_block): each channel's planes in plane order,
 * so the sums do not depend on the block. With one channel a block, the
 * plane nbl_bn_ahead is fetched while one is summed. */
__attribute__((target("avx512f"))) static void acc_avx512(nbl_bn_acc *s, const float *g, const float *x,
                                                         int64_t N, int64_t C, int64_t sp, int64_t c0, int64_t c1,
                                                         const double *kk, const nbl_bn_grad_hooks *h) {
  const int pre_g = g && !(h && h->before), one = c1 - c0 == 1; /* g of the planes ahead is there already */
  for (int64_t n = 0; n < N; n++)
    for (int64_t ch = c0; ch < c1; ch++) {
      nbl_bn_acc *sc = s + (ch - c0);
      __m512d a0 = _mm512_loadu_pd(sc->a), a1 = _mm512_loadu_pd(sc->a + 8);
      __m512d b0 = _mm512_loadu_pd(sc->b), b1 = _mm512_loadu_pd(sc->b + 8), vk = _mm512_set1_pd(kk[ch - c0]);
      int64_t o = (n * C + ch) * sp, next = one ? nbl_bn_ahead(n, N, C, sp) : 0;
      if (h && h->before) h->before(h->arg, o, sp);
      const float *xp = x + o, *gp = g ? g + o : NULL;
      int64_t i = 0;
      for (; i + 16 <= sp; i += 16) {
        if (next) {
          _mm_prefetch((const char *)(xp + next + i), _MM_HINT_T0);
          if (pre_g) _mm_prefetch((const char *)(gp + next + i), _MM_HINT_T0);
        }
        __m512 xv = _mm512_loadu_ps(xp + i), gv = gp ? _mm512_loadu_ps(gp + i) : xv;
        ACC512_BLOCK(0xFFFF, xv, gv);
      }
      if (i < sp) {
        __mmask16 m = (__mmask16)((1u << (sp - i)) - 1);
        __m512 xv = _mm512_maskz_loadu_ps(m, xp + i), gv = gp ? _mm512_maskz_loadu_ps(m, gp + i) : xv;
        ACC512_BLOCK(m, xv, gv);
      }
      _mm512_storeu_pd(sc->a, a0);
      _mm512_storeu_pd(sc->a + 8, a1);
      _mm512_storeu_pd(sc->b, b0);
      _mm512_storeu_pd(sc->b + 8, b1);
    }
}
#undef ACC512_BLOCK

__attribute__((target("avx2"))) static void acc_avx2(nbl_bn_acc *s, const float *g, const float *x, int64_t N,
                                                    int64_t C, int64_t sp, int64_t c0, int64_t c1, const double *kk,
                                                    const nbl_bn_grad_hooks *h) {
  for (int64_t n = 0; n < N; n++)
    for (int64_t ch = c0; ch < c1; ch++) {
      nbl_bn_acc *sc = s + (ch - c0);
      __m256d a[4], b[4], vk = _mm256_set1_pd(kk[ch - c0]);
      for (int q = 0; q < 4; q++) a[q] = _mm256_loadu_pd(sc->a + 4 * q), b[q] = _mm256_loadu_pd(sc->b + 4 * q);
      int64_t o = (n * C + ch) * sp;
      if (h && h->before) h->before(h->arg, o, sp);
      const float *xp = x + o, *gp = g ? g + o : NULL;
      int64_t i = 0;
      for (; i + 16 <= sp; i += 16) /* whole blocks: no masks */
        for (int q = 0; q < 4; q++) {
          __m256d xv = _mm256_sub_pd(_mm256_cvtps_pd(_mm_loadu_ps(xp + i + 4 * q)), vk);
          __m256d t = gp ? _mm256_cvtps_pd(_mm_loadu_ps(gp + i + 4 * q)) : xv;
          a[q] = _mm256_add_pd(a[q], t);
          b[q] = _mm256_add_pd(b[q], _mm256_mul_pd(t, xv));
        }
      for (; i < sp; i += 16)
        for (int q = 0; q < 4; q++) {
          int64_t r = sp - i - 4 * q; /* elements left from this quarter on */
          if (r <= 0) break;
          __m128i m = _mm_cmpgt_epi32(_mm_set1_epi32(r > 4 ? 4 : (int)r), _mm_setr_epi32(0, 1, 2, 3));
          __m256d xv = _mm256_sub_pd(_mm256_cvtps_pd(_mm_maskload_ps(xp + i + 4 * q, m)), vk);
          __m256d t = gp ? _mm256_cvtps_pd(_mm_maskload_ps(gp + i + 4 * q, m)) : xv;
          __m256d md = _mm256_castsi256_pd(_mm256_cvtepi32_epi64(m));
          a[q] = _mm256_blendv_pd(a[q], _mm256_add_pd(a[q], t), md);
          b[q] = _mm256_blendv_pd(b[q], _mm256_add_pd(b[q], _mm256_mul_pd(t, xv)), md);
        }
      for (int q = 0; q < 4; q++) _mm256_storeu_pd(sc->a + 4 * q, a[q]), _mm256_storeu_pd(sc->b + 4 * q, b[q]);
    }
}
#endif

static void bn_acc(nbl_bn_acc *s, const float *g, const float *x, int64_t N, int64_t C, int64_t sp, int64_t c0,
                   int64_t c1, const double *kk, const nbl_bn_grad_hooks *h) {
#if defined(__x86_64__)
  if (nbl_cpu_has(NBL_CPU_AVX512F)) {
    acc_avx512(s, g, x, N, C, sp, c0, c1, kk, h);
    return;
  }
  if (nbl_cpu_has(NBL_CPU_AVX2)) {
    acc_avx2(s, g, x, N, C, sp, c0, c1, kk, h);
    return;
  }
#endif
  for (int64_t n = 0; n < N; n++)
    for (int64_t ch = c0; ch < c1; ch++) {
      int64_t o = (n * C + ch) * sp;
      nbl_bn_acc *sc = s + (ch - c0);
      if (h && h->before) h->before(h->arg, o, sp);
      for (int64_t i = 0; i < sp; i++) { /* lane i % 16, the same operations */
        double d = (double)x[o + i] - kk[ch - c0], t = g ? (double)g[o + i] : d;
        sc->a[i & 15] += t;
        sc->b[i & 15] += t * d;
      }
    }
}

void nbl_bn_acc_stats(nbl_bn_acc *s, const float *x, int64_t N, int64_t C, int64_t sp, int64_t ch, double k) {
  bn_acc(s, NULL, x, N, C, sp, ch, ch + 1, &k, NULL);
}

void nbl_bn_acc_grad(nbl_bn_acc *s, const float *g, const float *x, int64_t N, int64_t C, int64_t sp, int64_t ch,
                     double mean, const nbl_bn_grad_hooks *h) {
  bn_acc(s, g, x, N, C, sp, ch, ch + 1, &mean, h);
}

int64_t nbl_bn_block(int64_t C, int64_t sp, int threads) {
  if (C <= 0 || sp >= NBL_BN_BLOCK_PLANE) return 1;
  int64_t b = (NBL_BN_BLOCK_PLANE + sp - 1) / sp, per = (C + (threads > 1 ? threads : 1) - 1) / (threads > 1 ? threads : 1);
  b = b > NBL_BN_BLOCK_MAX ? NBL_BN_BLOCK_MAX : b;
  b = b > per ? per : b;
  return b < 1 ? 1 : b;
}

double nbl_bn_acc_total(const double lanes[16]) {
  double t[16];
  memcpy(t, lanes, sizeof t);
  for (int h = 8; h >= 1; h /= 2)
    for (int l = 0; l < h; l++) t[l] += t[l + h];
  return t[0];
}

/* d[i] = a g[i] - b x[i] + off for i in [i, n) (the scalar path and the
 * vector tails); with m, *m = max(*m, |d[i]|) over the finite ones */
static void bn_dx_tail(float *d, const float *g, const float *x, float a, float b, float off, int64_t i, int64_t n,
                       float *m) {
  for (; i < n; i++) {
    d[i] = a * g[i] - b * x[i] + off;
    float u = fabsf(d[i]);
    if (m && u < INFINITY && u > *m) *m = u; /* NaN compares false */
  }
}

#if defined(__x86_64__)
/* d = a g - b x + off (BatchNormalizationGrad's X_grad), over n floats: 8
 * lanes with AVX, the same operations in the same order as the scalar
 * tails; with m, *m = max(*m, |d|) over the finite d written (the
 * QuantizeLog pair's scale, as nbl_logq_absmax takes it). */
__attribute__((target("avx"))) static void bn_dx_avx(float *d, const float *g, const float *x, float a, float b,
                                                     float off, int64_t n, float *m) {
  __m256 va = _mm256_set1_ps(a), vb = _mm256_set1_ps(b), vo = _mm256_set1_ps(off);
  const __m256 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff)), inf = _mm256_set1_ps(INFINITY);
  __m256 mx = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 t = _mm256_sub_ps(_mm256_mul_ps(va, _mm256_loadu_ps(g + i)), _mm256_mul_ps(vb, _mm256_loadu_ps(x + i)));
    t = _mm256_add_ps(t, vo);
    _mm256_storeu_ps(d + i, t);
    if (m) {
      __m256 u = _mm256_and_ps(t, absm);
      mx = _mm256_max_ps(mx, _mm256_and_ps(u, _mm256_cmp_ps(u, inf, _CMP_LT_OQ)));
    }
  }
  if (m) {
    float l[8];
    _mm256_storeu_ps(l, mx);
    for (int k = 0; k < 8; k++) *m = l[k] > *m ? l[k] : *m;
  }
  bn_dx_tail(d, g, x, a, b, off, i, n, m);
}

/* The same with 16 lanes (AVX-512F), the same operations per element, over
 * the planes of channels [c0, c1) (their coefficients at [c - c0]) at
 * once: the planes' last partial blocks masked, the max kept in a
 * register. */
__attribute__((target("avx512f"))) static void bn_dx_avx512(float *d, const float *g, const float *x, const float *fa,
                                                            const float *fb, const float *fo, int64_t N, int64_t C,
                                                            int64_t sp, int64_t c0, int64_t c1, float *m) {
  const __m512 inf = _mm512_set1_ps(INFINITY);
  __m512 mx = _mm512_setzero_ps();
  for (int64_t n = 0; n < N; n++)
    for (int64_t ch = c0; ch < c1; ch++) {
      __m512 va = _mm512_set1_ps(fa[ch - c0]), vb = _mm512_set1_ps(fb[ch - c0]), vo = _mm512_set1_ps(fo[ch - c0]);
      int64_t o = (n * C + ch) * sp;
      for (int64_t i = o; i < o + sp; i += 16) {
        __mmask16 k = o + sp - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (o + sp - i)) - 1);
        __m512 t = _mm512_sub_ps(_mm512_mul_ps(va, _mm512_maskz_loadu_ps(k, g + i)),
                                 _mm512_mul_ps(vb, _mm512_maskz_loadu_ps(k, x + i)));
        t = _mm512_add_ps(t, vo);
        _mm512_mask_storeu_ps(d + i, k, t);
        if (m) {
          __m512 u = _mm512_abs_ps(t);
          mx = _mm512_mask_max_ps(mx, k & _mm512_cmp_ps_mask(u, inf, _CMP_LT_OQ), mx, u);
        }
      }
    }
  if (m) {
    float t = _mm512_reduce_max_ps(mx);
    *m = t > *m ? t : *m;
  }
}
#endif

/* BatchNormInternal's output y = x a + b (a product, then a sum, in float)
 * over n floats, and for the fused chains in the same sweep: + r (when r is
 * not NULL, a float sum), relu (t < 0 ? 0 : t, when relu) and, when rg is
 * not NULL, the minimum rg[0] and maximum rg[1] of the values written;
 * returns 1 when one of them is NaN or Inf (rg then undefined), else 0.
 * Every path gives the same floats. */
static int bn_apply_tail(float *y, const float *x, float a, float b, const float *r, int relu, float *rg, int64_t i,
                         int64_t n, int bad) {
  for (; i < n; i++) {
    float t = x[i] * a + b;
    if (r) t = t + r[i];
    if (relu) t = t < 0 ? 0.0f : t;
    y[i] = t;
    if (rg) {
      bad |= !isfinite(t);
      rg[0] = t < rg[0] ? t : rg[0];
      rg[1] = t > rg[1] ? t : rg[1];
    }
  }
  return bad;
}

/* rg = the range of w lanes' minima l and maxima h; 1 if a lane's check k
 * (a sum of t * 0) is not 0: an element was NaN or Inf */
static int lanes_range(const float *l, const float *h, const float *k, int w, float *rg) {
  int bad = 0;
  rg[0] = INFINITY, rg[1] = -INFINITY;
  for (int j = 0; j < w; j++) {
    bad |= k[j] != 0.0f;
    rg[0] = l[j] < rg[0] ? l[j] : rg[0];
    rg[1] = h[j] > rg[1] ? h[j] : rg[1];
  }
  return bad;
}

#if defined(__x86_64__)
/* The planes of channels [c0, c1) (coefficients at [c - c0]) at once: the
 * planes' last partial blocks masked, the range kept in registers. */
__attribute__((target("avx512f"))) static int bn_apply_avx512(float *y, const float *x, const float *fa,
                                                             const float *fb, const float *r, int relu, float *rg,
                                                             int64_t N, int64_t C, int64_t sp, int64_t c0,
                                                             int64_t c1) {
  const __m512 z = _mm512_setzero_ps();
  __m512 mn = _mm512_set1_ps(INFINITY), mx = _mm512_set1_ps(-INFINITY), chk = z;
  const int one = c1 - c0 == 1;
  for (int64_t n = 0; n < N; n++)
    for (int64_t ch = c0; ch < c1; ch++) {
      const __m512 va = _mm512_set1_ps(fa[ch - c0]), vb = _mm512_set1_ps(fb[ch - c0]);
      int64_t o = (n * C + ch) * sp, next = one ? nbl_bn_ahead(n, N, C, sp) : 0;
      for (int64_t i = o; i < o + sp; i += 16) {
        __mmask16 k = o + sp - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (o + sp - i)) - 1);
        __m512 t = _mm512_add_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(k, x + i), va), vb);
        if (r) {
          if (next) _mm_prefetch((const char *)(r + i + next), _MM_HINT_T0); /* the residual comes from further away */
          t = _mm512_add_ps(t, _mm512_maskz_loadu_ps(k, r + i));
        }
        if (relu) t = _mm512_mask_mov_ps(t, _mm512_cmp_ps_mask(t, z, _CMP_LT_OQ), z); /* t < 0 ? 0 : t */
        _mm512_mask_storeu_ps(y + i, k, t);
        if (rg) {
          chk = _mm512_mask_add_ps(chk, k, chk, _mm512_mul_ps(t, z)); /* NaN once an element is NaN or Inf */
          mn = _mm512_mask_min_ps(mn, k, mn, t);
          mx = _mm512_mask_max_ps(mx, k, mx, t);
        }
      }
    }
  if (!rg) return 0;
  float l[16], h[16], kk[16];
  _mm512_storeu_ps(l, mn);
  _mm512_storeu_ps(h, mx);
  _mm512_storeu_ps(kk, chk);
  return lanes_range(l, h, kk, 16, rg);
}

__attribute__((target("avx"))) static int bn_apply_avx(float *y, const float *x, float a, float b, const float *r,
                                                      int relu, float *rg, int64_t n) {
  __m256 va = _mm256_set1_ps(a), vb = _mm256_set1_ps(b), z = _mm256_setzero_ps();
  __m256 mn = _mm256_set1_ps(INFINITY), mx = _mm256_set1_ps(-INFINITY), chk = z;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 t = _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), va), vb);
    if (r) t = _mm256_add_ps(t, _mm256_loadu_ps(r + i));
    if (relu) t = _mm256_andnot_ps(_mm256_cmp_ps(t, z, _CMP_LT_OQ), t); /* t < 0 ? +0 : t (GCC 12 turned the blendv into a per-lane branch) */
    _mm256_storeu_ps(y + i, t);
    if (rg) {
      chk = _mm256_add_ps(chk, _mm256_mul_ps(t, z));
      mn = _mm256_min_ps(mn, t);
      mx = _mm256_max_ps(mx, t);
    }
  }
  if (!rg) return bn_apply_tail(y, x, a, b, r, relu, NULL, i, n, 0);
  float l[8], h[8], k[8];
  _mm256_storeu_ps(l, mn);
  _mm256_storeu_ps(h, mx);
  _mm256_storeu_ps(k, chk);
  return bn_apply_tail(y, x, a, b, r, relu, rg, i, n, lanes_range(l, h, k, 8, rg));
}
#endif

/* The apply sweep over the planes of channels [c0, c1) (coefficients at
 * [c - c0]; r's and y's planes where x's are), rg the range over them. */
static int bn_apply(float *y, const float *x, const float *fa, const float *fb, const float *r, int relu, float *rg,
                    int64_t N, int64_t C, int64_t sp, int64_t c0, int64_t c1) {
#if defined(__x86_64__)
  if (nbl_cpu_has(NBL_CPU_AVX512F)) return bn_apply_avx512(y, x, fa, fb, r, relu, rg, N, C, sp, c0, c1);
#endif
  int bad = 0;
  float p[2];
  if (rg) rg[0] = INFINITY, rg[1] = -INFINITY;
  for (int64_t n = 0; n < N; n++)
    for (int64_t ch = c0; ch < c1; ch++) {
      int64_t o = (n * C + ch) * sp;
      const float *rp = r ? r + o : NULL;
      float *pp = rg ? p : NULL, a = fa[ch - c0], b = fb[ch - c0];
#if defined(__x86_64__)
      if (nbl_cpu_has(NBL_CPU_AVX)) bad |= bn_apply_avx(y + o, x + o, a, b, rp, relu, pp, sp);
      else
#endif
      {
        if (pp) p[0] = INFINITY, p[1] = -INFINITY;
        bad |= bn_apply_tail(y + o, x + o, a, b, rp, relu, pp, 0, sp, 0);
      }
      if (rg) {
        rg[0] = p[0] < rg[0] ? p[0] : rg[0];
        rg[1] = p[1] > rg[1] ? p[1] : rg[1];
      }
    }
  return bad;
}

/* X_grad of the planes of channels [c0, c1) (coefficients at [c - c0]) */
static void bn_dx(float *d, const float *g, const float *x, const float *fa, const float *fb, const float *fo,
                  int64_t N, int64_t C, int64_t sp, int64_t c0, int64_t c1, float *m) {
#if defined(__x86_64__)
  if (nbl_cpu_has(NBL_CPU_AVX512F)) {
    bn_dx_avx512(d, g, x, fa, fb, fo, N, C, sp, c0, c1, m);
    return;
  }
#endif
  for (int64_t n = 0; n < N; n++)
    for (int64_t ch = c0; ch < c1; ch++) {
      int64_t o = (n * C + ch) * sp, j = ch - c0;
#if defined(__x86_64__)
      if (nbl_cpu_has(NBL_CPU_AVX)) {
        bn_dx_avx(d + o, g + o, x + o, fa[j], fb[j], fo[j], sp, m);
        continue;
      }
#endif
      bn_dx_tail(d + o, g + o, x + o, fa[j], fb[j], fo[j], 0, sp, m);
    }
}

/* The fast kernels' work, one block of channels per item (nbl_bn_block,
 * nbl_parallel_for). */
typedef struct bn_task {
  nbl_kctx *c;
  int64_t N, C, sp, blk;
  int training;
  double eps, mom;
  const float *x, *g; /* X; dY (gradient) */
  float *y;           /* Y (forward) or X_grad (gradient, NULL when not wanted) */
} bn_task;

void nbl_bn_stats_f32_block(const float *x, int64_t N, int64_t C, int64_t sp, int64_t c0, int64_t c1, double *mean,
                            double *var) {
  const int64_t m = N * sp;
  for (int64_t b0 = c0; b0 < c1; b0 += NBL_BN_BLOCK_MAX) {
    const int64_t b1 = c1 - b0 > NBL_BN_BLOCK_MAX ? b0 + NBL_BN_BLOCK_MAX : c1, nb = b1 - b0;
    double *mu = mean + (b0 - c0), *va = var + (b0 - c0);
    if (m <= 0) {
      for (int64_t j = 0; j < nb; j++) mu[j] = va[j] = 0.0;
      continue;
    }
    /* one pass: the sums of x - k and (x - k)^2 about k = the channel's first
     * element (0 if not finite), then mean = k + d and var = S2 / m - d^2 with
     * d = S1 / m. k is one of the elements, so (mean - k)^2 <= m var and the
     * subtraction loses at most log2(m) of double's 53 bits. */
    double k[NBL_BN_BLOCK_MAX];
    nbl_bn_acc s[NBL_BN_BLOCK_MAX];
    for (int64_t j = 0; j < nb; j++) {
      k[j] = x[(b0 + j) * sp];
      if (!isfinite(k[j])) k[j] = 0.0;
    }
    memset(s, 0, sizeof(nbl_bn_acc) * (size_t)nb);
    bn_acc(s, NULL, x, N, C, sp, b0, b1, k, NULL);
    for (int64_t j = 0; j < nb; j++) {
      double d = nbl_bn_acc_total(s[j].a) / (double)m, v = nbl_bn_acc_total(s[j].b) / (double)m - d * d;
      mu[j] = k[j] + d;
      va[j] = v < 0 ? 0.0 : v; /* rounding; a NaN stays */
    }
  }
}

void nbl_bn_stats_f32_channel(const float *x, int64_t N, int64_t C, int64_t sp, int64_t ch, double *mean,
                              double *var) {
  nbl_bn_stats_f32_block(x, N, C, sp, ch, ch + 1, mean, var);
}

double nbl_bn_affine_f32(double mean, double var, double eps, double scale, double bias, float *fa, float *fb) {
  double inv = 1.0 / sqrt(var + eps), a = scale * inv;
  *fa = (float)a;
  *fb = (float)(bias - mean * a);
  return inv;
}

int nbl_bn_apply_relu_f32_block(float *v, const float *x, const float *r, int64_t N, int64_t C, int64_t sp,
                                int64_t c0, int64_t c1, const float *fa, const float *fb, float range[2]) {
  return bn_apply(v, x, fa, fb, r, 1, range, N, C, sp, c0, c1);
}

int nbl_bn_apply_relu_f32(float *v, const float *x, const float *r, int64_t N, int64_t C, int64_t sp, int64_t ch,
                          float fa, float fb, float range[2]) {
  return bn_apply(v, x, &fa, &fb, r, 1, range, N, C, sp, ch, ch + 1);
}

static void bn_internal_run(void *arg, int64_t begin, int64_t end) {
  const bn_task *t = arg;
  nbl_kctx *c = t->c;
  int64_t N = t->N, C = t->C, sp = t->sp;
  for (int64_t it = begin; it < end; it++) {
    const int64_t c0 = it * t->blk, c1 = c0 + t->blk < C ? c0 + t->blk : C;
    double mean[NBL_BN_BLOCK_MAX], var[NBL_BN_BLOCK_MAX], inv[NBL_BN_BLOCK_MAX];
    float fa[NBL_BN_BLOCK_MAX], fb[NBL_BN_BLOCK_MAX];
    for (int64_t ch = c0; ch < c1; ch++)
      mean[ch - c0] = nbl_rt_get_f64(c->in[3], ch), var[ch - c0] = nbl_rt_get_f64(c->in[4], ch);
    if (t->training) nbl_bn_stats_f32_block(t->x, N, C, sp, c0, c1, mean, var);
    for (int64_t ch = c0; ch < c1; ch++)
      inv[ch - c0] = nbl_bn_affine_f32(mean[ch - c0], var[ch - c0], t->eps, nbl_rt_get_f64(c->in[1], ch),
                                       nbl_rt_get_f64(c->in[2], ch), &fa[ch - c0], &fb[ch - c0]);
    bn_apply(t->y, t->x, fa, fb, NULL, 0, NULL, N, C, sp, c0, c1);
    for (int64_t ch = c0; ch < c1; ch++) {
      const int64_t j = ch - c0;
      if (grad_want(c, 1))
        nbl_rt_set_f64(nbl_kctx_out(c, 1), ch, nbl_rt_get_f64(c->in[3], ch) * t->mom + mean[j] * (1 - t->mom));
      if (grad_want(c, 2))
        nbl_rt_set_f64(nbl_kctx_out(c, 2), ch, nbl_rt_get_f64(c->in[4], ch) * t->mom + var[j] * (1 - t->mom));
      if (grad_want(c, 3)) nbl_rt_set_f64(nbl_kctx_out(c, 3), ch, mean[j]);
      if (grad_want(c, 4)) nbl_rt_set_f64(nbl_kctx_out(c, 4), ch, inv[j]);
    }
  }
}

void nbl_bn_grad_f32_block(const float *g, const float *x, float *dx, int64_t N, int64_t C, int64_t sp, int64_t c0,
                           int64_t c1, const double *mean, const double *inv, const double *scale, double *sg_out,
                           double *sgx_out, const nbl_bn_grad_hooks *hooks) {
  const int64_t m = N * sp;
  for (int64_t b0 = c0; b0 < c1; b0 += NBL_BN_BLOCK_MAX) {
    const int64_t b1 = c1 - b0 > NBL_BN_BLOCK_MAX ? b0 + NBL_BN_BLOCK_MAX : c1, nb = b1 - b0, o = b0 - c0;
    nbl_bn_acc s[NBL_BN_BLOCK_MAX]; /* sum dY, sum dY * (x - mean); times inv: sum dY * xhat */
    float fa[NBL_BN_BLOCK_MAX], fb[NBL_BN_BLOCK_MAX], fo[NBL_BN_BLOCK_MAX];
    memset(s, 0, sizeof(nbl_bn_acc) * (size_t)nb);
    bn_acc(s, g, x, N, C, sp, b0, b1, mean + o, hooks);
    for (int64_t j = 0; j < nb; j++) {
      const double sg = nbl_bn_acc_total(s[j].a), sgx = nbl_bn_acc_total(s[j].b) * inv[o + j];
      sg_out[o + j] = sg;
      sgx_out[o + j] = sgx;
      const double k = scale[o + j] * inv[o + j], mg = m ? sg / (double)m : 0, mgx = m ? sgx / (double)m : 0;
      /* dx = k (g - mg - (x - mean) inv mgx) = k g + (k inv mgx) (mean - x) - k mg */
      fa[j] = (float)k;
      fb[j] = (float)(k * inv[o + j] * mgx);
      fo[j] = (float)(k * inv[o + j] * mgx * mean[o + j] - k * mg);
    }
    if (dx) bn_dx(dx, g, x, fa, fb, fo, N, C, sp, b0, b1, hooks ? hooks->dx_absmax : NULL);
  }
}

void nbl_bn_grad_f32_channel(const float *g, const float *x, float *dx, int64_t N, int64_t C, int64_t sp,
                             int64_t ch, double mean, double inv, double scale, double *sg_out,
                             double *sgx_out, const nbl_bn_grad_hooks *hooks) {
  nbl_bn_grad_f32_block(g, x, dx, N, C, sp, ch, ch + 1, &mean, &inv, &scale, sg_out, sgx_out, hooks);
}

static void bn_grad_run(void *arg, int64_t begin, int64_t end) {
  const bn_task *t = arg;
  nbl_kctx *c = t->c;
  for (int64_t it = begin; it < end; it++) {
    const int64_t c0 = it * t->blk, c1 = c0 + t->blk < t->C ? c0 + t->blk : t->C;
    double mean[NBL_BN_BLOCK_MAX], inv[NBL_BN_BLOCK_MAX], scale[NBL_BN_BLOCK_MAX], sg[NBL_BN_BLOCK_MAX],
        sgx[NBL_BN_BLOCK_MAX];
    for (int64_t ch = c0; ch < c1; ch++)
      mean[ch - c0] = nbl_rt_get_f64(c->in[3], ch), inv[ch - c0] = nbl_rt_get_f64(c->in[4], ch),
               scale[ch - c0] = nbl_rt_get_f64(c->in[2], ch);
    nbl_bn_grad_f32_block(t->g, t->x, t->y, t->N, t->C, t->sp, c0, c1, mean, inv, scale, sg, sgx, NULL);
    for (int64_t ch = c0; ch < c1; ch++) {
      if (grad_want(c, 1)) nbl_rt_set_f64(nbl_kctx_out(c, 1), ch, sgx[ch - c0]);
      if (grad_want(c, 2)) nbl_rt_set_f64(nbl_kctx_out(c, 2), ch, sg[ch - c0]);
    }
  }
}

static nbl_status k_bn_internal(nbl_kctx *c) {
  static const char *const names[] = {"X", "scale", "B", "input_mean", "input_var"};
  nbl_status st = NBL_OK;
  const nbl_rt_tensor *X = grad_need(c, 0, "X", &st);
  if (!X || (st = bn_inputs(c, X, 1, 4, names))) return st;
  int training = (int)nbl_attr_int(c->node, "training_mode", 1) != 0;
  if (!training && (grad_want(c, 1) || grad_want(c, 2) || grad_want(c, 3) || grad_want(c, 4)))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "with training_mode=0 only output Y may be requested");
  double eps = nbl_attr_float(c->node, "epsilon", 1e-5f), mom = nbl_attr_float(c->node, "momentum", 0.9f);
  int64_t N = X->dims[0], C = X->dims[1], sp = N * C > 0 ? X->numel / (N * C) : 0, m = N * sp;
  if ((st = nbl_kctx_alloc_out(c, 0, X->dtype, X->rank, X->dims))) return st;
  for (int o = 1; o <= 4; o++)
    if (grad_want(c, o) && (st = nbl_kctx_alloc_out(c, o, c->in[o == 2 || o == 4 ? 4 : 3]->dtype, 1, &C)))
      return st;
  nbl_rt_tensor *Y = nbl_kctx_out(c, 0);
  if (!c->reference && X->dtype == NBL_DT_FLOAT) {
    const int64_t blk = nbl_bn_block(C, sp, c->threads);
    bn_task t = {c, N, C, sp, blk, training, eps, mom, X->data, NULL, Y->data};
    nbl_parallel_for(c, (C + blk - 1) / blk, 1, bn_internal_run, &t);
    return NBL_OK;
  }
  double *x = nbl_to_f64(X);
  double *y = malloc(sizeof(double) * (size_t)(X->numel ? X->numel : 1));
  if (!x || !y) {
    free(x);
    free(y);
    return grad_oom(c);
  }
  for (int64_t ch = 0; ch < C; ch++) {
    double mean = nbl_rt_get_f64(c->in[3], ch), var = nbl_rt_get_f64(c->in[4], ch);
    if (training) { /* two passes over the channel: mean, then the biased variance */
      double s = 0, s2 = 0;
      for (int64_t n = 0; n < N; n++) {
        int64_t base = (n * C + ch) * sp;
        for (int64_t i = 0; i < sp; i++) s += x[base + i];
      }
      mean = m ? s / (double)m : 0.0;
      for (int64_t n = 0; n < N; n++) {
        int64_t base = (n * C + ch) * sp;
        for (int64_t i = 0; i < sp; i++) {
          double d = x[base + i] - mean;
          s2 += d * d;
        }
      }
      var = m ? s2 / (double)m : 0.0;
    }
    double inv = 1.0 / sqrt(var + eps), a = nbl_rt_get_f64(c->in[1], ch) * inv, b = nbl_rt_get_f64(c->in[2], ch);
    for (int64_t n = 0; n < N; n++) {
      int64_t base = (n * C + ch) * sp;
      for (int64_t i = 0; i < sp; i++) y[base + i] = (x[base + i] - mean) * a + b;
    }
    if (grad_want(c, 1)) nbl_rt_set_f64(nbl_kctx_out(c, 1), ch, nbl_rt_get_f64(c->in[3], ch) * mom + mean * (1 - mom));
    if (grad_want(c, 2)) nbl_rt_set_f64(nbl_kctx_out(c, 2), ch, nbl_rt_get_f64(c->in[4], ch) * mom + var * (1 - mom));
    if (grad_want(c, 3)) nbl_rt_set_f64(nbl_kctx_out(c, 3), ch, mean);
    if (grad_want(c, 4)) nbl_rt_set_f64(nbl_kctx_out(c, 4), ch, inv);
  }
  nbl_from_f64(Y, y);
  free(x);
  free(y);
  return NBL_OK;
}

/* ------------------------------------------------------------------ BatchNormalizationGrad */

static nbl_status k_bn_grad(nbl_kctx *c) {
  static const char *const names[] = {"dY", "X", "scale", "saved_mean", "saved_inv_std"};
  nbl_status st = NBL_OK;
  const nbl_rt_tensor *dY = grad_need(c, 0, "dY", &st), *X = dY ? grad_need(c, 1, "X", &st) : NULL;
  if (!X || (st = bn_inputs(c, X, 2, 3, names))) return st;
  if ((st = grad_check_type(c, dY, X->dtype, "dY", "X")) || (st = grad_check_same_shape(c, dY, X, "dY", "X")))
    return st;
  int64_t N = X->dims[0], C = X->dims[1], sp = N * C > 0 ? X->numel / (N * C) : 0, m = N * sp;
  if (grad_want(c, 0) && (st = nbl_kctx_alloc_out(c, 0, X->dtype, X->rank, X->dims))) return st;
  for (int o = 1; o <= 2; o++)
    if (grad_want(c, o) && (st = nbl_kctx_alloc_out(c, o, c->in[2]->dtype, 1, &C))) return st;
  nbl_rt_tensor *DX = grad_want(c, 0) ? nbl_kctx_out(c, 0) : NULL;
  if (!c->reference && X->dtype == NBL_DT_FLOAT) {
    const int64_t blk = nbl_bn_block(C, sp, c->threads);
    bn_task t = {c, N, C, sp, blk, 1, 0, 0, X->data, dY->data, DX ? DX->data : NULL};
    nbl_parallel_for(c, (C + blk - 1) / blk, 1, bn_grad_run, &t);
    return NBL_OK;
  }
  double *x = nbl_to_f64(X), *g = nbl_to_f64(dY);
  if (!x || !g) {
    free(x);
    free(g);
    return grad_oom(c);
  }
  for (int64_t ch = 0; ch < C; ch++) {
    double mean = nbl_rt_get_f64(c->in[3], ch), inv = nbl_rt_get_f64(c->in[4], ch);
    double sg = 0, sgx = 0; /* sum dY, sum dY * xhat */
    for (int64_t n = 0; n < N; n++) {
      int64_t base = (n * C + ch) * sp;
      for (int64_t i = 0; i < sp; i++) {
        sg += g[base + i];
        sgx += g[base + i] * (x[base + i] - mean) * inv;
      }
    }
    if (grad_want(c, 1)) nbl_rt_set_f64(nbl_kctx_out(c, 1), ch, sgx);
    if (grad_want(c, 2)) nbl_rt_set_f64(nbl_kctx_out(c, 2), ch, sg);
    if (!DX) continue;
    double k = nbl_rt_get_f64(c->in[2], ch) * inv, mg = m ? sg / (double)m : 0, mgx = m ? sgx / (double)m : 0;
    for (int64_t n = 0; n < N; n++) {
      int64_t base = (n * C + ch) * sp;
      for (int64_t i = 0; i < sp; i++) g[base + i] = k * (g[base + i] - mg - (x[base + i] - mean) * inv * mgx);
    }
  }
  if (DX) nbl_from_f64(DX, g);
  free(x);
  free(g);
  return NBL_OK;
}

/* ------------------------------------------------------------------ LayerNormalizationGrad */

static nbl_status k_layernorm_grad(nbl_kctx *c) {
  nbl_status st = NBL_OK;
  const nbl_rt_tensor *dY = grad_need(c, 0, "Y_grad", &st), *X = dY ? grad_need(c, 1, "X", &st) : NULL;
  const nbl_rt_tensor *S = X ? grad_need(c, 2, "scale", &st) : NULL, *MU = S ? grad_need(c, 3, "mean", &st) : NULL;
  const nbl_rt_tensor *IV = MU ? grad_need(c, 4, "inv_std_dev", &st) : NULL;
  if (!IV) return st;
  if ((st = grad_check_float(c, X, "X")) || (st = grad_check_float(c, dY, "Y_grad")) ||
      (st = grad_check_float(c, S, "scale")) || (st = grad_check_float(c, MU, "mean")) ||
      (st = grad_check_float(c, IV, "inv_std_dev")) || (st = grad_check_same_shape(c, X, dY, "X", "Y_grad")))
    return st;
  int axis = nbl_norm_axis(nbl_attr_int(c->node, "axis", -1), X->rank);
  if (axis < 0) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "axis out of range for rank %d", X->rank);
  int nr = X->rank - axis;
  const int64_t *nd = X->dims + axis;
  int64_t outer = 1, inner = 1, tmp[NBL_MAX_RANK];
  for (int i = 0; i < axis; i++) outer *= X->dims[i];
  for (int i = axis; i < X->rank; i++) inner *= X->dims[i];
  int rr;
  if (S->rank > nr || nbl_broadcast_shape(nr, nd, S->rank, S->dims, &rr, tmp) || rr != nr ||
      memcmp(tmp, nd, sizeof(int64_t) * (size_t)nr))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "scale does not broadcast to the normalized shape");
  if (MU->numel != outer || IV->numel != outer)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "mean and inv_std_dev must have %lld elements (X.shape[:axis])",
                    (long long)outer);
  if (grad_want(c, 0) && (st = nbl_kctx_alloc_out(c, 0, X->dtype, X->rank, X->dims))) return st;
  for (int o = 1; o <= 2; o++)
    if (grad_want(c, o) && (st = nbl_kctx_alloc_out(c, o, S->dtype, S->rank, S->dims))) return st;
  double *x = nbl_to_f64(X), *g = nbl_to_f64(dY), *sc = nbl_to_f64(S);
  double *ds = calloc((size_t)(S->numel ? S->numel : 1), sizeof(double));
  double *dbias = calloc((size_t)(S->numel ? S->numel : 1), sizeof(double));
  int64_t *si = malloc(sizeof(int64_t) * (size_t)(inner ? inner : 1));
  if (!x || !g || !sc || !ds || !dbias || !si) {
    st = grad_oom(c);
    goto done;
  }
  for (int64_t i = 0; i < inner; i++) si[i] = nbl_broadcast_index(nr, nd, i, S->rank, S->dims);
  for (int64_t o = 0; o < outer; o++) {
    double mu = nbl_rt_get_f64(MU, o), inv = nbl_rt_get_f64(IV, o), mgs = 0, mgsx = 0;
    double *xp = x + o * inner, *gp = g + o * inner;
    for (int64_t i = 0; i < inner; i++) {
      double xh = (xp[i] - mu) * inv, gs = gp[i] * sc[si[i]];
      ds[si[i]] += gp[i] * xh;
      dbias[si[i]] += gp[i];
      mgs += gs;
      mgsx += gs * xh;
    }
    mgs /= (double)inner;
    mgsx /= (double)inner;
    for (int64_t i = 0; i < inner; i++) /* g becomes dX */
      gp[i] = inv * (gp[i] * sc[si[i]] - mgs - (xp[i] - mu) * inv * mgsx);
  }
  if (grad_want(c, 0)) nbl_from_f64(nbl_kctx_out(c, 0), g);
  if (grad_want(c, 1)) nbl_from_f64(nbl_kctx_out(c, 1), ds);
  if (grad_want(c, 2)) nbl_from_f64(nbl_kctx_out(c, 2), dbias);
done:
  free(x);
  free(g);
  free(sc);
  free(ds);
  free(dbias);
  free(si);
  return st;
}

/* ------------------------------------------------------------------ gradient rule */

/* BatchNormInternal (BatchNormalization in training mode): com.microsoft
 * BatchNormalizationGrad (dY, X, scale, saved mean, saved inv_std -> dX,
 * dscale, dB), the forward node made to produce its saved statistics. The
 * running statistics get no gradient. (runtime/core/grad.h) */
static nbl_status g_bn_internal(nbl_grad_ctx *gc) {
  nbl_grad_no_dx(gc, 3, "the running mean is a statistic, not a parameter");
  nbl_grad_no_dx(gc, 4, "the running variance is a statistic, not a parameter");
  int want[3] = {nbl_grad_wants(gc, 0), nbl_grad_wants(gc, 1), nbl_grad_wants(gc, 2)};
  if (!want[0] && !want[1] && !want[2]) return nbl_grad_status(gc);
  if (!nbl_attr_int(nbl_grad_node(gc), "training_mode", 1))
    return nbl_grad_fail(gc, NBL_ERR_UNSUPPORTED, "gradient with training_mode=0: no rule yet");
  nbl_id in[5] = {nbl_grad_dy(gc, 0), nbl_grad_x(gc, 0), nbl_grad_x(gc, 1), nbl_grad_y_need(gc, 3),
                  nbl_grad_y_need(gc, 4)};
  nbl_id out[3];
  nbl_grad_opn(gc, "BatchNormalizationGrad", "com.microsoft", NULL, 5, in, 3, want, out);
  nbl_grad_attr_float(gc, "epsilon", nbl_attr_float(nbl_grad_node(gc), "epsilon", 1e-5f));
  for (int i = 0; i < 3; i++) nbl_grad_set_dx(gc, i, out[i]);
  return nbl_grad_status(gc);
}

/* ------------------------------------------------------------------ LRNGrad */

static nbl_status k_lrn_grad(nbl_kctx *c) {
  nbl_status st = NBL_OK;
  const nbl_rt_tensor *dY = grad_need(c, 0, "Y_grad", &st), *X = dY ? grad_need(c, 1, "X", &st) : NULL;
  const nbl_rt_tensor *Y = X ? grad_need(c, 2, "Y", &st) : NULL;
  if (!Y) return st;
  if ((st = grad_check_float(c, X, "X")) || (st = grad_check_float(c, dY, "Y_grad")) ||
      (st = grad_check_float(c, Y, "Y")) || (st = grad_check_same_shape(c, X, dY, "X", "Y_grad")) ||
      (st = grad_check_same_shape(c, X, Y, "X", "Y")))
    return st;
  if (X->rank < 2) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "X has rank %d, expected >= 2", X->rank);
  int64_t size = nbl_attr_int(c->node, "size", 0);
  if (size <= 0) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "attribute 'size' must be positive");
  const double alpha = nbl_attr_float(c->node, "alpha", 1e-4f), beta = nbl_attr_float(c->node, "beta", 0.75f),
               bias = nbl_attr_float(c->node, "bias", 1.0f);
  if ((st = nbl_kctx_alloc_out(c, 0, X->dtype, X->rank, X->dims))) return st;
  const int64_t N = X->dims[0], C = X->dims[1], sp = N * C != 0 ? X->numel / (N * C) : 0;
  const int64_t lo = (size - 1) / 2, hi = size - 1 - lo;
  nbl_rt_tensor *dX = nbl_kctx_out(c, 0);
  double *x = nbl_to_f64(X), *y = nbl_to_f64(Y), *g = nbl_to_f64(dY);
  double *d = malloc(sizeof(double) * (size_t)(C ? C : 1)), *t = malloc(sizeof(double) * (size_t)(C ? C : 1));
  double *dx = malloc(sizeof(double) * (size_t)(dX->numel ? dX->numel : 1));
  if (!x || !y || !g || !d || !t || !dx) {
    free(x), free(y), free(g), free(d), free(t), free(dx);
    return nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory");
  }
  for (int64_t n = 0; n < N; n++)
    for (int64_t i = 0; i < sp; i++) {
#define AT(ch) ((n * C + (ch)) * sp + i)
      for (int64_t ch = 0; ch < C; ch++) {
        double ss = 0;
        for (int64_t cc = ch - lo; cc <= ch + hi; cc++)
          if (cc >= 0 && cc < C) ss += x[AT(cc)] * x[AT(cc)];
        d[ch] = bias + alpha / (double)size * ss;
        t[ch] = g[AT(ch)] * y[AT(ch)] / d[ch];
      }
      for (int64_t ch = 0; ch < C; ch++) { /* the windows holding ch: c' in [ch - hi, ch + lo] */
        double s = 0;
        for (int64_t cc = ch - hi; cc <= ch + lo; cc++)
          if (cc >= 0 && cc < C) s += t[cc];
        dx[AT(ch)] = g[AT(ch)] * pow(d[ch], -beta) - 2 * alpha * beta / (double)size * x[AT(ch)] * s;
      }
#undef AT
    }
  nbl_from_f64(dX, dx);
  free(x), free(y), free(g), free(d), free(t), free(dx);
  return NBL_OK;
}

/* ------------------------------------------------------------------ shape rules */

/* Y = shape(X); running mean/var and saved mean/inv_std: [C] (C = X[1]),
 * outputs 1 and 3 with input_mean's type, 2 and 4 with input_var's. */
static nbl_status shape_bn_internal(nbl_shape_ctx *c) {
  nbl_status st = nbl_shp_copy_in(c, 0, 0);
  if (st) return st;
  nbl_shp x;
  nbl_shp_in(c, 0, &x);
  for (int k = 1; k <= 4 && !st; k++) {
    nbl_shp s;
    nbl_shp_rank(&s, nbl_shp_in_dtype(c, k % 2 ? 3 : 4), 1);
    if (x.rank >= 2) s.d[0] = x.d[1];
    st = nbl_shp_set(c, k, &s);
  }
  return st;
}

/* X_grad = shape(X) (input 1); scale_grad and bias_grad = shape(scale) (input 2). */
static nbl_status shape_norm_grad(nbl_shape_ctx *c) {
  nbl_status st = nbl_shp_copy_in(c, 0, 1);
  if (!st) st = nbl_shp_copy_in(c, 1, 2);
  return st ? st : nbl_shp_copy_in(c, 2, 2);
}

/* X_grad = shape(X) (input 1). */
static nbl_status shape_lrn_grad(nbl_shape_ctx *c) { return nbl_shp_copy_in(c, 0, 1); }

/* ------------------------------------------------------------------ table */

const nbl_op_def nbl_ops_grad_norm[] = {
    NBL_OP_DEF(NBL_MS_DOMAIN, "BatchNormInternal", 1, 1, .ref = k_bn_internal, .fast = k_bn_internal, .shape = shape_bn_internal, .grad = g_bn_internal),
    NBL_OP_DEF(NBL_MS_DOMAIN, "BatchNormalizationGrad", 1, 1, .ref = k_bn_grad, .fast = k_bn_grad, .shape = shape_norm_grad, .no_grad = NBL_NO_GRAD_BACKWARD),
    NBL_OP_DEF(NBL_MS_DOMAIN, "LayerNormalizationGrad", 1, 1, .ref = k_layernorm_grad, .shape = shape_norm_grad, .no_grad = NBL_NO_GRAD_BACKWARD),
    NBL_OP_DEF("ai.nibble", "LRNGrad", 1, 1, .ref = k_lrn_grad, .shape = shape_lrn_grad, .no_grad = NBL_NO_GRAD_BACKWARD),
};
const size_t nbl_ops_grad_norm_count = sizeof nbl_ops_grad_norm / sizeof nbl_ops_grad_norm[0];
