/* runtime/ops/nn_pool.c - op family 'nn_pool': pooling (MaxPool with
 * indices, AveragePool, LpPool, their global forms, MaxUnpool). The window
 * geometry is the convolution's (nbl_conv_geom_init, kernels/gemm.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "runtime/core/cpu.h"
#include "runtime/core/grad.h"
#include "runtime/core/shape.h"
#include "runtime/kernels/gemm.h"
#include "runtime/kernels/pool_f32.h"
#include "runtime/kernels/simd16.h"
#include "runtime/ops/elementwise.h"
#include "runtime/ops/nn_pool.h"
#include "runtime/ops/ref_common.h"

/* ------------------------------------------------------------------ pooling */

enum { POOL_MAX = NBL_POOL_MAX, POOL_AVG = NBL_POOL_AVG, POOL_LP = NBL_POOL_LP };

typedef struct pool_task {
  const nbl_conv_geom *g;
  const float *x;
  float *y;
  const float *relu; /* the fused Relu -> MaxPool: x = Relu(relu), made plane by plane here */
} pool_task;

/* The fused Relu -> MaxPool: plane q of x made from plane q of relu (Relu's
 * own float kernel) while the pooling of the plane follows in cache. */
static void relu_plane(const float *relu, const float *x, int64_t q, int64_t sz) {
  if (relu) nbl_relu_f32(relu + q * sz, (float *)x + q * sz, sz);
}

/* Float 2-D max pooling without indices, one (n, c) plane per item; same
 * result as the reference (NaN in a window gives NaN, an empty window -inf). */
/* max that lets NaN through from either side */
static inline float nan_max(float m, float v) { return v > m || v != v ? v : m; }

/* m[i] = nan_max(m[i], v[i]) for i < n */
static void nan_max_row_c(float *m, const float *v, int64_t n) {
  for (int64_t i = 0; i < n; i++) m[i] = nan_max(m[i], v[i]);
}
#if defined(__x86_64__)
__attribute__((target("avx"))) static void nan_max_row_avx(float *m, const float *v, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 a = _mm256_loadu_ps(m + i), b = _mm256_loadu_ps(v + i);
    /* vmaxps(b, a) is b > a ? b : a (a when either is NaN); a NaN b is
     * then OR-ed in: all-ones exponent and a nonzero mantissa stay NaN */
    __m256 r = _mm256_max_ps(b, a);
    r = _mm256_or_ps(r, _mm256_and_ps(_mm256_cmp_ps(b, b, _CMP_UNORD_Q), b));
    _mm256_storeu_ps(m + i, r);
  }
  nan_max_row_c(m + i, v + i, n - i);
}
#endif

/* nan_max_row_c, 8 lanes at a time when avx */
static void nan_max_row(float *m, const float *v, int64_t n, int avx) {
#if defined(__x86_64__)
  if (avx) {
    nan_max_row_avx(m, v, n);
    return;
  }
#endif
  (void)avx;
  nan_max_row_c(m, v, n);
}

/* 2-D max pooling, one (n, c) plane per item: for each output row, the max
 * over the window's input rows (a vector pass over whole rows, into a row
 * padded with -inf), then over the window's columns at every column (vector
 * passes over shifted copies), of which every stride-th is an output. NaN
 * anywhere in a window gives NaN, as in the reference kernel. */
static void maxpool2d_f32(void *arg, int64_t begin, int64_t end) {
  const pool_task *t = arg;
  const nbl_conv_geom *g = t->g;
  int64_t H = g->in[0], W = g->in[1], OH = g->out[0], OW = g->out[1];
  /* AVX-512, column strides 1 and 2: 16 lanes, masked tails, two passes a
   * row (pool_f32.c); GoogLeNet's 3x3 layers on 28x28 planes took the
   * per-row passes below 9x ONNX Runtime's time */
  if (g->s[1] <= 2 && nbl_cpu_has(NBL_CPU_AVX512F)) {
    int64_t len = nbl_maxpool2d_vm_len(g);
    float *vm = malloc(sizeof(float) * (size_t)len);
    if (vm) {
      for (int64_t i = 0; i < len; i++) vm[i] = -INFINITY;
      int64_t q = begin;
      for (; q < end; q++) {
        relu_plane(t->relu, t->x, q, H * W);
        if (!nbl_maxpool2d_plane_avx512(g, t->x + q * H * W, t->y + q * OH * OW, vm)) break;
      }
      free(vm);
      if (q == end) return;
      begin = q; /* not taken (never past the first plane): the passes below */
    }
  }
  int64_t pl = g->pb[1], KW = g->k[1], dw = g->d[1], sw = g->s[1];
  /* columns of the padded row: every window column in range */
  int64_t Wp = (OW - 1) * sw + (KW - 1) * dw + 1;
  if (Wp < pl + W) Wp = pl + W;
  float *row = malloc(sizeof(float) * (size_t)(2 * Wp)), *hm = row + Wp;
  if (!row) { /* out of memory: the direct loop */
    for (int64_t q = begin; q < end; q++) {
      relu_plane(t->relu, t->x, q, H * W);
      const float *xp = t->x + q * H * W;
      float *yp = t->y + q * OH * OW;
      for (int64_t oh = 0; oh < OH; oh++)
        for (int64_t ow = 0; ow < OW; ow++) {
          float m = -INFINITY;
          for (int64_t kh = 0; kh < g->k[0]; kh++) {
            int64_t ih = oh * g->s[0] - g->pb[0] + kh * g->d[0];
            for (int64_t kw = 0; ih >= 0 && ih < H && kw < KW; kw++) {
              int64_t iw = ow * sw - pl + kw * dw;
              if (iw >= 0 && iw < W) m = nan_max(m, xp[ih * W + iw]);
            }
          }
          yp[oh * OW + ow] = m;
        }
    }
    return;
  }
  int avx = 0;
#if defined(__x86_64__)
  avx = nbl_cpu_has(NBL_CPU_AVX);
#endif
  for (int64_t i = 0; i < Wp; i++) row[i] = -INFINITY;
  for (int64_t q = begin; q < end; q++) {
    relu_plane(t->relu, t->x, q, H * W);
    const float *xp = t->x + q * H * W;
    float *yp = t->y + q * OH * OW;
    for (int64_t oh = 0; oh < OH; oh++) {
      float *mid = row + pl; /* the input columns; the padding stays -inf */
      int first = 1;
      for (int64_t kh = 0; kh < g->k[0]; kh++) {
        int64_t ih = oh * g->s[0] - g->pb[0] + kh * g->d[0];
        if (ih < 0 || ih >= H) continue;
        if (first) {
          memcpy(mid, xp + ih * W, sizeof(float) * (size_t)W);
          first = 0;
        } else {
          nan_max_row(mid, xp + ih * W, W, avx);
        }
      }
      if (first)
        for (int64_t i = 0; i < W; i++) mid[i] = -INFINITY;
      /* window max at every column start, then every sw-th of them */
      int64_t nh = (OW - 1) * sw + 1;
      memcpy(hm, row, sizeof(float) * (size_t)nh);
      for (int64_t kw = 1; kw < KW; kw++) nan_max_row(hm, row + kw * dw, nh, avx);
      float *yr = yp + oh * OW;
      for (int64_t ow = 0; ow < OW; ow++) yr[ow] = hm[ow * sw];
    }
  }
  free(row);
}

typedef struct pool_idx_task {
  const nbl_conv_geom *g;
  const float *x;
  float *y;
  int64_t *idx;
  int storage_order;
  const float *relu; /* as pool_task's */
} pool_idx_task;

/* 2-D float max pooling with the Indices output (MaxPool in training graphs:
 * MaxPoolGrad reads them), one (n, c) plane per item. The same choice as the
 * reference loop below: the first window element in (kh, kw) order unless a
 * later one is strictly greater; NaN in a window gives NaN and keeps the
 * index the scan holds; an empty window gives -inf and index 0 of the plane. */
/* The 2 x 2 windows of stride 2 without padding or dilation that lie inside
 * the plane (all of them but a last odd row or column), as the general scan
 * below computes them: the scan over (0,0), (0,1), (1,0), (1,1). */
static void maxpool2x2_idx_rows(const float *xp, int64_t W, int64_t OW, int64_t oh, int64_t ow1, int64_t base,
                                float *yr, int64_t *ir) {
  const float *r0 = xp + 2 * oh * W, *r1 = r0 + W;
  for (int64_t ow = 0; ow < ow1; ow++) {
    const float a = r0[2 * ow], b = r0[2 * ow + 1], c = r1[2 * ow], d = r1[2 * ow + 1];
    int64_t best = 2 * oh * W + 2 * ow;
    float bv = a;
    int gt = b > bv;
    bv = gt ? b : bv, best = gt ? best + 1 : best;
    gt = c > bv;
    bv = gt ? c : bv, best = gt ? (2 * oh + 1) * W + 2 * ow : best;
    gt = d > bv;
    bv = gt ? d : bv, best = gt ? (2 * oh + 1) * W + 2 * ow + 1 : best;
    const int nan = (a != a) | (b != b) | (c != c) | (d != d);
    yr[ow] = nan ? NAN : bv;
    ir[ow] = base + best;
  }
  (void)OW;
}

/* The window rows of output row oh inside the plane: [*kh0, *kh1). */
static void pool_rows_in(const nbl_conv_geom *g, int64_t oh, int64_t *kh0, int64_t *kh1) {
  int64_t h0 = oh * g->s[0] - g->pb[0], a = 0, b = g->k[0];
  while (a < b && h0 + a * g->d[0] < 0) a++;
  while (b > a && h0 + (b - 1) * g->d[0] >= g->in[0]) b--;
  *kh0 = a, *kh1 = b;
}

#if defined(__x86_64__)
/* base + at[l] for the lanes l of act (AVX-512): lanes 0-7 to ir, 8-15 to
 * ir8 (ir + 8 for one row of 16 outputs). */
__attribute__((target("avx512f"), always_inline)) static inline void store_idx16(int64_t *ir, int64_t *ir8,
                                                                               __mmask16 act, __m512i at,
                                                                               int64_t base) {
  const __m512i vb = _mm512_set1_epi64(base);
  _mm512_mask_storeu_epi64(ir, (__mmask8)act, _mm512_add_epi64(vb, _mm512_cvtepi32_epi64(_mm512_castsi512_si256(at))));
  _mm512_mask_storeu_epi64(ir8, (__mmask8)(act >> 8),
                           _mm512_add_epi64(vb, _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(at, 1))));
}

/* The vector scans of one output row oh of plane xp (column stride 1 or 2,
 * any window, dilation and pads; positions as int32: the caller checks that
 * H W fits): per lane (output column), the same scan as the scalar loop,
 * over the window elements inside the plane in (kh, kw) order: the first one
 * taken, a later one only when strictly greater (an ordered compare: never a
 * NaN, never past a NaN), NaN noted on the side. */
__attribute__((target("avx512f"))) static void maxpool_idx_row_avx512(const pool_idx_task *t, const float *xp,
                                                                      int64_t oh, int64_t base, float *yr,
                                                                      int64_t *ir) {
  const nbl_conv_geom *g = t->g;
  const int64_t H = g->in[0], W = g->in[1], OW = g->out[1], sw = g->s[1], dw = g->d[1];
  int64_t kh0, kh1;
  pool_rows_in(g, oh, &kh0, &kh1);
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i even = _mm512_slli_epi32(lane, 1), vsw = _mm512_set1_epi32((int)sw);
  const __m512i zero = _mm512_setzero_si512(), vW = _mm512_set1_epi32((int)W);
  const __m512 qnan = _mm512_set1_ps(NAN);
  for (int64_t ow0 = 0; ow0 < OW; ow0 += 16) {
    const __mmask16 act = nbl_tail_mask(OW - ow0);
    __m512 bv = _mm512_set1_ps(-INFINITY);
    __m512i best = zero;
    __mmask16 seen = 0, nan = 0;
    for (int64_t kh = kh0; kh < kh1; kh++) {
      const int64_t ih = oh * g->s[0] - g->pb[0] + kh * g->d[0];
      const float *row = xp + ih * W;
      for (int64_t kw = 0; kw < g->k[1]; kw++) {
        const int64_t c0 = ow0 * sw - g->pb[1] + kw * dw; /* lane 0's column */
        const __m512i col = _mm512_add_epi32(_mm512_set1_epi32((int)c0), _mm512_mullo_epi32(lane, vsw));
        const __mmask16 in = act & _mm512_cmpge_epi32_mask(col, zero) & _mm512_cmplt_epi32_mask(col, vW);
        if (!in) continue;
        __m512 v;
        if (sw == 1) {
          v = _mm512_maskz_loadu_ps(in, row + c0);
        } else { /* the even ones of 32 floats from c0: the columns in [0, W) loaded */
          const __m512 lo = _mm512_maskz_loadu_ps(nbl_lane_range16(-c0, W - c0), row + c0);
          const __m512 hi = _mm512_maskz_loadu_ps(nbl_lane_range16(-c0 - 16, W - c0 - 16), row + c0 + 16);
          v = _mm512_permutex2var_ps(lo, even, hi);
        }
        const __mmask16 take = in & (~seen | _mm512_cmp_ps_mask(v, bv, _CMP_GT_OQ));
        const __m512i at = t->storage_order ? _mm512_add_epi32(_mm512_mullo_epi32(col, _mm512_set1_epi32((int)H)),
                                                               _mm512_set1_epi32((int)ih))
                                            : _mm512_add_epi32(_mm512_set1_epi32((int)(ih * W)), col);
        bv = _mm512_mask_mov_ps(bv, take, v);
        best = _mm512_mask_mov_epi32(best, take, at);
        nan |= _mm512_mask_cmp_ps_mask(in, v, v, _CMP_UNORD_Q);
        seen |= in;
      }
    }
    _mm512_mask_storeu_ps(yr + ow0, act, _mm512_mask_mov_ps(bv, nan, qnan));
    store_idx16(ir + ow0, ir + ow0 + 8, act, best, base);
  }
}

/* The 2 x 2 windows of stride 2 (no padding or dilation, row-major
 * indices) of output row oh, columns [0, ow1) (inside the plane), 16 at a
 * time: the scan a, b, c, d = (0,0), (0,1), (1,0), (1,1) as the pairs
 * ab = fold(a, b), cd = fold(c, d), then fold(ab, cd), where fold(u, v) takes
 * v only when v > u; in cd also when c is NaN (the scan would not stop at
 * a NaN c: d still wins over ab when greater). Same value and index as the
 * scan. */
/* The pair-fold of the windows whose elements a, b (top row) and c, d
 * (bottom row) are in the lanes: the maxima (NaN where a window holds one)
 * and each one's offset in its window: 0, 1, W or W + 1. */
__attribute__((target("avx512f"), always_inline)) static inline __m512 fold2x2_avx512(__m512 a, __m512 b, __m512 c,
                                                                                    __m512 d, int64_t W,
                                                                                    __m512i *off) {
  const __m512i one = _mm512_set1_epi32(1), vW = _mm512_set1_epi32((int)W), vW1 = _mm512_set1_epi32((int)W + 1);
  const __mmask16 tb = _mm512_cmp_ps_mask(b, a, _CMP_GT_OQ);
  const __mmask16 td = _mm512_cmp_ps_mask(d, c, _CMP_GT_OQ) | _mm512_cmp_ps_mask(c, c, _CMP_UNORD_Q);
  const __m512 ab = _mm512_mask_mov_ps(a, tb, b), cd = _mm512_mask_mov_ps(c, td, d);
  const __m512i iab = _mm512_maskz_mov_epi32(tb, one), icd = _mm512_mask_mov_epi32(vW, td, vW1);
  const __mmask16 t2 = _mm512_cmp_ps_mask(cd, ab, _CMP_GT_OQ);
  const __mmask16 nan = _mm512_cmp_ps_mask(a, b, _CMP_UNORD_Q) | _mm512_cmp_ps_mask(c, d, _CMP_UNORD_Q);
  *off = _mm512_mask_mov_epi32(iab, t2, icd);
  return _mm512_mask_mov_ps(_mm512_mask_mov_ps(ab, t2, cd), nan, _mm512_set1_ps(NAN));
}

__attribute__((target("avx512f"))) static void maxpool2x2_idx_row_avx512(const float *xp, int64_t W, int64_t oh,
                                                                         int64_t ow1, int64_t base, float *yr,
                                                                         int64_t *ir) {
  const float *r0 = xp + 2 * oh * W, *r1 = r0 + W;
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i even = _mm512_slli_epi32(lane, 1), odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  for (int64_t ow0 = 0; ow0 < ow1; ow0 += 16) {
    const int64_t r = ow1 - ow0;
    const __mmask16 act = nbl_tail_mask(r), l0 = nbl_tail_mask(2 * r), l1 = r > 8 ? nbl_tail_mask(2 * r - 16) : 0;
    const float *p0 = r0 + 2 * ow0, *p1 = r1 + 2 * ow0;
    const __m512 t0 = _mm512_maskz_loadu_ps(l0, p0), t1 = _mm512_maskz_loadu_ps(l1, p0 + 16);
    const __m512 u0 = _mm512_maskz_loadu_ps(l0, p1), u1 = _mm512_maskz_loadu_ps(l1, p1 + 16);
    __m512i off;
    const __m512 m = fold2x2_avx512(_mm512_permutex2var_ps(t0, even, t1), _mm512_permutex2var_ps(t0, odd, t1),
                                    _mm512_permutex2var_ps(u0, even, u1), _mm512_permutex2var_ps(u0, odd, u1), W, &off);
    _mm512_mask_storeu_ps(yr + ow0, act, m);
    const __m512i at = _mm512_add_epi32(_mm512_set1_epi32((int)(2 * oh * W + 2 * ow0)), _mm512_add_epi32(even, off));
    store_idx16(ir + ow0, ir + ow0 + 8, act, at, base);
  }
}

/* Output rows oh and oh + 1 of at most 8 columns (ow1 <= 8) in one vector:
 * lanes 0-7 the first row's windows, 8-15 the second's (narrow planes, as
 * LeNet-5's second pooling: 4 columns). */
__attribute__((target("avx512f"))) static void maxpool2x2_idx_rows2_avx512(const float *xp, int64_t W, int64_t OW,
                                                                           int64_t oh, int64_t ow1, int64_t base,
                                                                           float *yr, int64_t *ir) {
  const float *r0 = xp + 2 * oh * W;
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i half = _mm512_srli_epi32(lane, 3), col = _mm512_and_si512(lane, _mm512_set1_epi32(7));
  /* lane l: element 2 (l % 8) of the first source (l < 8) or the second */
  const __m512i even = _mm512_add_epi32(_mm512_slli_epi32(col, 1), _mm512_slli_epi32(half, 4));
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  const __mmask16 l = nbl_tail_mask(2 * ow1), act = (__mmask16)(nbl_tail_mask(ow1) | nbl_tail_mask(ow1) << 8);
  const __m512 t0 = _mm512_maskz_loadu_ps(l, r0), t1 = _mm512_maskz_loadu_ps(l, r0 + 2 * W);
  const __m512 u0 = _mm512_maskz_loadu_ps(l, r0 + W), u1 = _mm512_maskz_loadu_ps(l, r0 + 3 * W);
  __m512i off;
  const __m512 m = fold2x2_avx512(_mm512_permutex2var_ps(t0, even, t1), _mm512_permutex2var_ps(t0, odd, t1),
                                  _mm512_permutex2var_ps(u0, even, u1), _mm512_permutex2var_ps(u0, odd, u1), W, &off);
  /* lane l's window starts at 2 (oh + l / 8) W + 2 (l % 8) */
  const __m512i start = _mm512_add_epi32(_mm512_set1_epi32((int)(2 * oh * W)),
                                         _mm512_add_epi32(_mm512_mullo_epi32(half, _mm512_set1_epi32((int)(2 * W))),
                                                          _mm512_slli_epi32(col, 1)));
  _mm512_mask_storeu_ps(yr, (__mmask16)(act & 0xff), m);
  _mm512_mask_storeu_ps(yr + OW, (__mmask16)(act & 0xff), _mm512_shuffle_f32x4(m, m, _MM_SHUFFLE(1, 0, 3, 2)));
  store_idx16(ir, ir + OW, act, _mm512_add_epi32(start, off), base);
}

/* The same 8 at a time (AVX2). */
__attribute__((target("avx2"))) static void maxpool2x2_idx_row_avx2(const float *xp, int64_t W, int64_t oh,
                                                                    int64_t ow1, int64_t base, float *yr,
                                                                    int64_t *ir) {
  const float *r0 = xp + 2 * oh * W, *r1 = r0 + W;
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), even = _mm256_slli_epi32(lane, 1);
  const __m256i one = _mm256_set1_epi32(1), vW = _mm256_set1_epi32((int)W), vW1 = _mm256_set1_epi32((int)W + 1);
  const __m256 qnan = _mm256_set1_ps(NAN);
  const __m256i vb = _mm256_set1_epi64x(base);
  for (int64_t ow0 = 0; ow0 < ow1; ow0 += 8) {
    const int64_t r = ow1 - ow0;
    const float *p0 = r0 + 2 * ow0, *p1 = r1 + 2 * ow0;
    const __m256 t0 = nbl_load8(p0, 2 * r), t1 = nbl_load8(p0 + 8, 2 * r - 8);
    const __m256 u0 = nbl_load8(p1, 2 * r), u1 = nbl_load8(p1 + 8, 2 * r - 8);
    /* [t0_0 t0_2 t1_0 t1_2 | t0_4 t0_6 t1_4 t1_6] -> evens in order (0x88), odds (0xDD) */
#define MP_PICK(x, y, sel) \
  _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(x, y, sel)), _MM_SHUFFLE(3, 1, 2, 0)))
    const __m256 a = MP_PICK(t0, t1, 0x88), b = MP_PICK(t0, t1, 0xDD);
    const __m256 c = MP_PICK(u0, u1, 0x88), d = MP_PICK(u0, u1, 0xDD);
#undef MP_PICK
    const __m256 tb = _mm256_cmp_ps(b, a, _CMP_GT_OQ);
    const __m256 td = _mm256_or_ps(_mm256_cmp_ps(d, c, _CMP_GT_OQ), _mm256_cmp_ps(c, c, _CMP_UNORD_Q));
    const __m256 ab = _mm256_blendv_ps(a, b, tb), cd = _mm256_blendv_ps(c, d, td);
    const __m256i iab = _mm256_and_si256(_mm256_castps_si256(tb), one);
    const __m256i icd = _mm256_blendv_epi8(vW, vW1, _mm256_castps_si256(td));
    const __m256 t2 = _mm256_cmp_ps(cd, ab, _CMP_GT_OQ);
    const __m256 nan = _mm256_or_ps(_mm256_cmp_ps(a, b, _CMP_UNORD_Q), _mm256_cmp_ps(c, d, _CMP_UNORD_Q));
    nbl_store8(yr + ow0, r, _mm256_blendv_ps(_mm256_blendv_ps(ab, cd, t2), qnan, nan));
    const __m256i at = _mm256_add_epi32(_mm256_set1_epi32((int)(2 * oh * W + 2 * ow0)),
                                        _mm256_add_epi32(even, _mm256_blendv_epi8(iab, icd, _mm256_castps_si256(t2))));
    const __m256i i0 = _mm256_add_epi64(vb, _mm256_cvtepi32_epi64(_mm256_castsi256_si128(at)));
    const __m256i i1 = _mm256_add_epi64(vb, _mm256_cvtepi32_epi64(_mm256_extracti128_si256(at, 1)));
    if (r >= 8) {
      _mm256_storeu_si256((__m256i *)(ir + ow0), i0);
      _mm256_storeu_si256((__m256i *)(ir + ow0 + 4), i1);
    } else {
      const __m256i act = nbl_tail8(r);
      _mm256_maskstore_epi64((long long *)(ir + ow0), _mm256_cvtepi32_epi64(_mm256_castsi256_si128(act)), i0);
      _mm256_maskstore_epi64((long long *)(ir + ow0 + 4), _mm256_cvtepi32_epi64(_mm256_extracti128_si256(act, 1)),
                             i1);
    }
  }
}

/* The same scans 8 lanes at a time (AVX2: masks as vectors). */
__attribute__((target("avx2"))) static void maxpool_idx_row_avx2(const pool_idx_task *t, const float *xp,
                                                                 int64_t oh, int64_t base, float *yr,
                                                                 int64_t *ir) {
  const nbl_conv_geom *g = t->g;
  const int64_t H = g->in[0], W = g->in[1], OW = g->out[1], sw = g->s[1], dw = g->d[1];
  int64_t kh0, kh1;
  pool_rows_in(g, oh, &kh0, &kh1);
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), vsw = _mm256_set1_epi32((int)sw);
  const __m256i neg1 = _mm256_set1_epi32(-1), vW = _mm256_set1_epi32((int)W);
  for (int64_t ow0 = 0; ow0 < OW; ow0 += 8) {
    const __m256i act = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(OW - ow0 < 8 ? OW - ow0 : 8)), lane);
    __m256 bv = _mm256_set1_ps(-INFINITY);
    __m256i best = _mm256_setzero_si256(), seen = _mm256_setzero_si256(), nan = seen;
    for (int64_t kh = kh0; kh < kh1; kh++) {
      const int64_t ih = oh * g->s[0] - g->pb[0] + kh * g->d[0];
      const float *row = xp + ih * W;
      for (int64_t kw = 0; kw < g->k[1]; kw++) {
        const int64_t c0 = ow0 * sw - g->pb[1] + kw * dw;
        const __m256i col = _mm256_add_epi32(_mm256_set1_epi32((int)c0), _mm256_mullo_epi32(lane, vsw));
        const __m256i in = _mm256_and_si256(
            act, _mm256_and_si256(_mm256_cmpgt_epi32(col, neg1), _mm256_cmpgt_epi32(vW, col)));
        if (_mm256_testz_si256(in, in)) continue;
        __m256 v;
        if (sw == 1) {
          v = _mm256_maskload_ps(row + c0, in);
        } else { /* the even ones of 16 floats from c0: the columns in [0, W) loaded */
          const __m256i e = _mm256_add_epi32(_mm256_set1_epi32((int)c0), lane);
          const __m256i e8 = _mm256_add_epi32(e, _mm256_set1_epi32(8));
          const __m256 lo = _mm256_maskload_ps(
              row + c0, _mm256_and_si256(_mm256_cmpgt_epi32(e, neg1), _mm256_cmpgt_epi32(vW, e)));
          const __m256 hi = _mm256_maskload_ps(
              row + c0 + 8, _mm256_and_si256(_mm256_cmpgt_epi32(e8, neg1), _mm256_cmpgt_epi32(vW, e8)));
          /* [lo0 lo2 hi0 hi2 | lo4 lo6 hi4 hi6] -> [lo0 lo2 lo4 lo6 hi0 hi2 hi4 hi6] */
          v = _mm256_castpd_ps(
              _mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(lo, hi, 0x88)), _MM_SHUFFLE(3, 1, 2, 0)));
        }
        const __m256i gt = _mm256_castps_si256(_mm256_cmp_ps(v, bv, _CMP_GT_OQ));
        const __m256i take = _mm256_and_si256(in, _mm256_or_si256(_mm256_xor_si256(seen, neg1), gt));
        const __m256i at = t->storage_order
                               ? _mm256_add_epi32(_mm256_mullo_epi32(col, _mm256_set1_epi32((int)H)),
                                                  _mm256_set1_epi32((int)ih))
                               : _mm256_add_epi32(_mm256_set1_epi32((int)(ih * W)), col);
        bv = _mm256_blendv_ps(bv, v, _mm256_castsi256_ps(take));
        best = _mm256_blendv_epi8(best, at, take);
        nan = _mm256_or_si256(nan, _mm256_and_si256(in, _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q))));
        seen = _mm256_or_si256(seen, in);
      }
    }
    bv = _mm256_blendv_ps(bv, _mm256_set1_ps(NAN), _mm256_castsi256_ps(nan));
    _mm256_maskstore_ps(yr + ow0, act, bv);
    const __m256i vb = _mm256_set1_epi64x(base);
    const __m256i i0 = _mm256_add_epi64(vb, _mm256_cvtepi32_epi64(_mm256_castsi256_si128(best)));
    const __m256i i1 = _mm256_add_epi64(vb, _mm256_cvtepi32_epi64(_mm256_extracti128_si256(best, 1)));
    _mm256_maskstore_epi64((long long *)(ir + ow0), _mm256_cvtepi32_epi64(_mm256_castsi256_si128(act)), i0);
    _mm256_maskstore_epi64((long long *)(ir + ow0 + 4), _mm256_cvtepi32_epi64(_mm256_extracti128_si256(act, 1)),
                           i1);
  }
}
#endif

/* The vector row scan usable for geometry g on this thread: 2 (AVX-512),
 * 1 (AVX2), 0 (none: column stride above 2, or positions past int32). */
static int maxpool_idx_vec(const nbl_conv_geom *g) {
#if defined(__x86_64__)
  int64_t W = g->in[1], reach = g->out[1] * g->s[1] + g->k[1] * g->d[1] + g->pb[1] + 32;
  if (g->s[1] > 2 || g->in[0] * W >= INT32_MAX || reach >= INT32_MAX || W + reach >= INT32_MAX) return 0;
  if (nbl_cpu_has(NBL_CPU_AVX512F)) return 2;
  if (nbl_cpu_has(NBL_CPU_AVX2)) return 1;
#else
  (void)g;
#endif
  return 0;
}

static void maxpool2d_idx_f32(void *arg, int64_t begin, int64_t end) {
  const pool_idx_task *t = arg;
  const nbl_conv_geom *g = t->g;
  int64_t H = g->in[0], W = g->in[1], OH = g->out[0], OW = g->out[1];
  int64_t KH = g->k[0], KW = g->k[1], sh = g->s[0], sw = g->s[1], dh = g->d[0], dw = g->d[1];
  /* 2 x 2, stride 2, no padding, row-major indices: the windows inside the
   * plane by the short loop, the rest (a ceil_mode edge) by the scan */
  const int two = KH == 2 && KW == 2 && sh == 2 && sw == 2 && dh == 1 && dw == 1 && g->pb[0] == 0 &&
                  g->pb[1] == 0 && !t->storage_order;
  const int64_t oh_in = two ? (H / 2 < OH ? H / 2 : OH) : 0, ow_in = two ? (W / 2 < OW ? W / 2 : OW) : 0;
  const int vec = maxpool_idx_vec(g);
  for (int64_t q = begin; q < end; q++) {
    const int64_t base = q * H * W;
    relu_plane(t->relu, t->x, q, H * W);
    if (two) {
      const float *xp = t->x + base;
      for (int64_t oh = 0; oh < oh_in; oh++) {
        float *yr = t->y + (q * OH + oh) * OW;
        int64_t *ir = t->idx + (q * OH + oh) * OW;
#if defined(__x86_64__)
        if (vec == 2 && ow_in <= 8 && oh + 1 < oh_in) maxpool2x2_idx_rows2_avx512(xp, W, OW, oh++, ow_in, base, yr, ir);
        else if (vec == 2) maxpool2x2_idx_row_avx512(xp, W, oh, ow_in, base, yr, ir);
        else if (vec == 1) maxpool2x2_idx_row_avx2(xp, W, oh, ow_in, base, yr, ir);
        else
#endif
          maxpool2x2_idx_rows(xp, W, OW, oh, ow_in, base, yr, ir);
      }
      if (oh_in == OH && ow_in == OW) continue;
    }
#if defined(__x86_64__)
    if (vec && !two) { /* every row by the vector scans */
      for (int64_t oh = 0; oh < OH; oh++) {
        const float *xp = t->x + base;
        float *yr = t->y + (q * OH + oh) * OW;
        int64_t *ir = t->idx + (q * OH + oh) * OW;
        if (vec == 2) maxpool_idx_row_avx512(t, xp, oh, base, yr, ir);
        else maxpool_idx_row_avx2(t, xp, oh, base, yr, ir);
      }
      continue;
    }
#endif
    const float *xp = t->x + q * H * W;
    float *yp = t->y + q * OH * OW;
    int64_t *ip = t->idx + q * OH * OW;
    for (int64_t oh = 0; oh < OH; oh++) {
      /* the window rows and columns inside the plane: [kh0, kh1) x [kw0, kw1) */
      int64_t h0 = oh * sh - g->pb[0], kh0, kh1;
      pool_rows_in(g, oh, &kh0, &kh1);
      for (int64_t ow = oh < oh_in ? ow_in : 0; ow < OW; ow++) {
        int64_t w0 = ow * sw - g->pb[1], kw0 = 0, kw1 = KW;
        while (kw0 < KW && w0 + kw0 * dw < 0) kw0++;
        while (kw1 > kw0 && w0 + (kw1 - 1) * dw >= W) kw1--;
        float bv = -INFINITY;
        int64_t best = 0;
        int nan = 0;
        if (kh0 < kh1 && kw0 < kw1) {
          best = (h0 + kh0 * dh) * W + w0 + kw0 * dw;
          bv = xp[best];
          nan = bv != bv;
          /* branch-free scan (a data-dependent branch mispredicts on every
           * other element): a later element wins only when strictly greater */
          for (int64_t kh = kh0; kh < kh1; kh++) {
            int64_t r = (h0 + kh * dh) * W + w0;
            for (int64_t kw = kh == kh0 ? kw0 + 1 : kw0; kw < kw1; kw++) {
              int64_t at = r + kw * dw;
              float v = xp[at];
              int gt = v > bv;
              nan |= v != v;
              bv = gt ? v : bv;
              best = gt ? at : best;
            }
          }
        }
        yp[oh * OW + ow] = nan ? NAN : bv;
        if (t->storage_order) best = (best % W) * H + best / W; /* column-major within the plane */
        ip[oh * OW + ow] = q * H * W + best;
      }
    }
  }
}

/* Pooling of X into outputs o0 (Y) and o0 + 1 (MaxPool's Indices, when
 * requested). With relu (the fused Relu -> MaxPool, float32 only), X is
 * Relu(relu), written here: plane by plane on the fast paths, whole first
 * on the others. */
void nbl_pool_plane_ref(const nbl_conv_geom *g, int kind, int include_pad, double p, const double *xp, double *y,
                        int64_t *best_at) {
  const int ns = g->ns;
  int64_t o[NBL_CONV_MAX_SP], kk[NBL_CONV_MAX_SP], pos[NBL_CONV_MAX_SP];
  for (int64_t oi = 0; oi < g->out_sz; oi++) {
    int64_t r = oi;
    for (int i = ns - 1; i >= 0; i--) {
      o[i] = r % g->out[i];
      r /= g->out[i];
    }
    double acc = kind == POOL_MAX ? -INFINITY : 0.0;
    int64_t best = -1, cnt_in = 0, cnt_pad = 0;
    int nan = 0;
    for (int64_t ki = 0; ki < g->k_sz; ki++) {
      int64_t rk = ki;
      for (int i = ns - 1; i >= 0; i--) {
        kk[i] = rk % g->k[i];
        rk /= g->k[i];
      }
      int inside = 1, in_pad = 1;
      int64_t xi = 0;
      for (int i = 0; i < ns; i++) {
        pos[i] = o[i] * g->s[i] - g->pb[i] + kk[i] * g->d[i];
        if (pos[i] < 0 || pos[i] >= g->in[i]) inside = 0;
        if (pos[i] < -g->pb[i] || pos[i] >= g->in[i] + g->pe[i]) in_pad = 0;
        xi = xi * g->in[i] + pos[i];
      }
      cnt_pad += in_pad;
      if (!inside) continue;
      cnt_in++;
      double v = xp[xi];
      if (kind == POOL_MAX) {
        if (isnan(v)) nan = 1;
        if (best < 0 || v > xp[best]) best = xi;
      } else if (kind == POOL_AVG) {
        acc += v;
      } else {
        acc += pow(fabs(v), p);
      }
    }
    double out;
    if (kind == POOL_MAX) {
      out = nan ? NAN : best >= 0 ? xp[best] : -INFINITY;
    } else if (kind == POOL_AVG) {
      int64_t div = include_pad ? cnt_pad : cnt_in;
      out = div ? acc / (double)div : NAN;
    } else {
      out = pow(acc, 1.0 / p);
    }
    y[oi] = out;
    if (best_at) best_at[oi] = best < 0 ? 0 : best;
  }
}

static nbl_status k_pool_at(nbl_kctx *c, int kind, const nbl_rt_tensor *X, int o0, const float *relu) {
  nbl_status st;
  const nbl_node *n = c->node;
  nbl_dtype dt = X->dtype;
  int int_ok = kind == POOL_MAX && (dt == NBL_DT_INT8 || dt == NBL_DT_UINT8);
  if (!is_float(dt) && !int_ok)
    return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "pooling on element type %s", nbl_dtype_name(dt));
  int ceil_mode = (int)nbl_attr_int(n, "ceil_mode", 0);
  nbl_conv_geom g;
  if ((st = nbl_conv_geom_init(c, &g, X, NULL, ceil_mode))) return st;
  int include_pad = (int)nbl_attr_int(n, "count_include_pad", 0);
  double p = kind == POOL_LP ? (double)nbl_attr_int(n, "p", 2) : 0;
  int storage_order = (int)nbl_attr_int(n, "storage_order", 0);
  int64_t od[NBL_MAX_RANK] = {g.N, g.C};
  for (int i = 0; i < g.ns; i++) od[2 + i] = g.out[i];
  if ((st = nbl_kctx_alloc_out(c, o0, dt, X->rank, od))) return st;
  int with_idx = kind == POOL_MAX && want_out(c, o0 + 1);
  if (with_idx && (st = nbl_kctx_alloc_out(c, o0 + 1, NBL_DT_INT64, X->rank, od))) return st;
  if (with_idx && storage_order && g.ns != 2)
    return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "storage_order=1 is supported for 2-D pooling only");
  nbl_rt_tensor *Y = nbl_kctx_out(c, o0);
  if (kind == POOL_MAX && dt == NBL_DT_FLOAT && !with_idx && !c->reference && g.ns == 2) {
    pool_task t = {&g, X->data, Y->data, relu};
    nbl_parallel_for(c, g.N * g.C, 1, maxpool2d_f32, &t);
    return NBL_OK;
  }
  if (kind == POOL_AVG && dt == NBL_DT_FLOAT && !c->reference && g.ns == 2) {
    nbl_avgpool_task t = {&g, X->data, Y->data, include_pad};
    nbl_parallel_for(c, g.N * g.C, 1, nbl_avgpool2d_f32, &t);
    return NBL_OK;
  }
  int64_t *idx = with_idx ? nbl_kctx_out(c, o0 + 1)->data : NULL;
  if (kind == POOL_MAX && dt == NBL_DT_FLOAT && with_idx && !c->reference && g.ns == 2) {
    pool_idx_task t = {&g, X->data, Y->data, idx, storage_order, relu};
    nbl_parallel_for(c, g.N * g.C, 1, maxpool2d_idx_f32, &t);
    return NBL_OK;
  }
  if (relu) nbl_relu_f32(relu, X->data, X->numel);
  double *x = nbl_to_f64(X);
  double *y = malloc((size_t)(Y->numel ? Y->numel : 1) * sizeof(double));
  if (!x || !y) {
    free(x);
    free(y);
    return oom(c);
  }
  for (int64_t pl = 0; pl < g.N * g.C; pl++) {
    int64_t *ip = idx ? idx + pl * g.out_sz : NULL;
    nbl_pool_plane_ref(&g, kind, include_pad, p, x + pl * g.in_sz, y + pl * g.out_sz, ip);
    for (int64_t oi = 0; ip && oi < g.out_sz; oi++) {
      int64_t b = ip[oi];
      if (storage_order) { /* column-major within the plane: w * H + h */
        int64_t h = b / g.in[1], w = b % g.in[1];
        b = w * g.in[0] + h;
      }
      ip[oi] = pl * g.in_sz + b;
    }
  }
  nbl_from_f64(Y, y);
  free(x);
  free(y);
  return NBL_OK;
}

static nbl_status k_pool(nbl_kctx *c, int kind) {
  nbl_status st = need_input(c, 0, "X");
  return st ? st : k_pool_at(c, kind, c->in[0], 0, NULL);
}

nbl_status nbl_relu_maxpool(nbl_kctx *c) {
  nbl_status st = need_input(c, 0, "X");
  if (st) return st;
  const nbl_rt_tensor *X = c->in[0];
  if (X->dtype != NBL_DT_FLOAT)
    return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "the fused Relu -> MaxPool runs on float32 only, got %s",
                    nbl_dtype_name(X->dtype));
  if ((st = nbl_kctx_alloc_out(c, 0, NBL_DT_FLOAT, X->rank, X->dims))) return st;
  return k_pool_at(c, POOL_MAX, nbl_kctx_out(c, 0), 1, X->data);
}

static nbl_status k_maxpool(nbl_kctx *c) { return k_pool(c, POOL_MAX); }
static nbl_status k_avgpool(nbl_kctx *c) { return k_pool(c, POOL_AVG); }
/* float32 2-D: the separable kernel of kernels/pool_f32.c (k_pool_at takes
 * it when the session is not on the reference kernels); others as k_avgpool */
static nbl_status k_avgpool_fast(nbl_kctx *c) { return k_pool(c, POOL_AVG); }
static nbl_status k_lppool(nbl_kctx *c) { return k_pool(c, POOL_LP); }

static nbl_status k_global_pool(nbl_kctx *c, int kind) {
  nbl_status st;
  if ((st = need_input(c, 0, "X"))) return st;
  const nbl_rt_tensor *X = c->in[0];
  if ((st = need_float(c, X, "X"))) return st;
  if (X->rank < 2) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input rank %d < 2", X->rank);
  int64_t od[NBL_MAX_RANK];
  int64_t sp = 1;
  for (int i = 0; i < X->rank; i++) {
    od[i] = i < 2 ? X->dims[i] : 1;
    if (i >= 2) sp *= X->dims[i];
  }
  if ((st = nbl_kctx_alloc_out(c, 0, X->dtype, X->rank, od))) return st;
  nbl_rt_tensor *Y = nbl_kctx_out(c, 0);
  double p = kind == POOL_LP ? (double)nbl_attr_int(c->node, "p", 2) : 0;
  int64_t planes = X->dims[0] * X->dims[1];
  if (X->dtype == NBL_DT_FLOAT && kind != POOL_LP) {
    const float *x = X->data;
    float *y = Y->data;
    int64_t pl = 0;
    if (kind == POOL_AVG) /* 8 planes at a time: independent sums, each in its own order */
      for (; pl + 8 <= planes; pl += 8) {
        double s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (int64_t i = 0; i < sp; i++)
          for (int k = 0; k < 8; k++) s[k] += x[(pl + k) * sp + i];
        for (int k = 0; k < 8; k++) y[pl + k] = (float)(s[k] / (double)sp);
      }
    for (; pl < planes; pl++) {
      const float *xp = x + pl * sp;
      if (kind == POOL_AVG) {
        double s = 0;
        for (int64_t i = 0; i < sp; i++) s += xp[i];
        y[pl] = (float)(s / (double)sp);
      } else {
        float m = sp ? xp[0] : -INFINITY;
        for (int64_t i = 1; i < sp; i++)
          if (xp[i] > m || isnan(xp[i])) m = isnan(m) ? m : xp[i];
        y[pl] = m;
      }
    }
    return NBL_OK;
  }
  double *x = nbl_to_f64(X), *y = malloc((size_t)(planes ? planes : 1) * sizeof(double));
  if (!x || !y) {
    free(x);
    free(y);
    return oom(c);
  }
  for (int64_t pl = 0; pl < planes; pl++) {
    const double *xp = x + pl * sp;
    double acc = kind == POOL_MAX ? -INFINITY : 0.0;
    int nan = 0;
    for (int64_t i = 0; i < sp; i++) {
      if (isnan(xp[i])) nan = 1;
      if (kind == POOL_MAX) acc = xp[i] > acc ? xp[i] : acc;
      else if (kind == POOL_AVG) acc += xp[i];
      else acc += pow(fabs(xp[i]), p);
    }
    if (kind == POOL_AVG) acc /= (double)sp;
    if (kind == POOL_LP) acc = pow(acc, 1.0 / p);
    y[pl] = nan ? NAN : acc;
  }
  nbl_from_f64(Y, y);
  free(x);
  free(y);
  return NBL_OK;
}
static nbl_status k_gmaxpool(nbl_kctx *c) { return k_global_pool(c, POOL_MAX); }
static nbl_status k_gavgpool(nbl_kctx *c) { return k_global_pool(c, POOL_AVG); }
static nbl_status k_glppool(nbl_kctx *c) { return k_global_pool(c, POOL_LP); }

/* MaxUnpool: scatter X into zeros at the flat indices I (as MaxPool returned them). */
static nbl_status k_maxunpool(nbl_kctx *c) {
  nbl_status st;
  if ((st = need_input(c, 0, "X")) || (st = need_input(c, 1, "I"))) return st;
  const nbl_rt_tensor *X = c->in[0], *I = c->in[1], *OS = in_at(c, 2);
  if ((st = need_float(c, X, "X"))) return st;
  if (I->dtype != NBL_DT_INT64 || I->numel != X->numel)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "I must be int64 with X's shape");
  nbl_conv_geom g;
  if ((st = nbl_conv_geom_init(c, &g, X, NULL, 0))) return st;
  int64_t od[NBL_MAX_RANK] = {X->dims[0], X->dims[1]};
  for (int i = 0; i < g.ns; i++) {
    int cnt;
    const int64_t *pd = nbl_attr_ints(c->node, "pads", &cnt);
    od[2 + i] = nbl_window_out_t(g.in[i], g.k[i], g.s[i], 1, 0, pd ? pd[i] : 0, pd ? pd[g.ns + i] : 0);
  }
  int64_t dd[NBL_MAX_RANK]; /* default shape: the layout the indices refer to */
  memcpy(dd, od, sizeof dd);
  int64_t dnum = nbl_shape_numel(X->rank, dd);
  if (OS) {
    if (OS->numel != X->rank || !is_int(OS->dtype))
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "output_shape must hold %d integers", X->rank);
    for (int i = 0; i < X->rank; i++) od[i] = nbl_rt_get_i64(OS, i);
  }
  if ((st = nbl_kctx_alloc_out(c, 0, X->dtype, X->rank, od))) return st;
  nbl_rt_tensor *Y = nbl_kctx_out(c, 0);
  if (Y->nbytes) memset(Y->data, 0, Y->nbytes);
  const int64_t *idx = I->data;
  for (int64_t i = 0; i < X->numel; i++) {
    if (idx[i] < 0 || idx[i] >= dnum)
      return nbl_kerr(c, NBL_ERR_RUNTIME, "index %lld out of range [0, %lld)", (long long)idx[i],
                      (long long)dnum);
    /* decode in the default shape, re-encode in the requested output shape */
    int64_t r = idx[i], co[NBL_MAX_RANK], yi = 0;
    int inside = 1;
    for (int d = X->rank - 1; d >= 0; d--) {
      co[d] = r % dd[d];
      r /= dd[d];
    }
    for (int d = 0; d < X->rank; d++) {
      if (co[d] >= od[d]) inside = 0;
      yi = yi * od[d] + co[d];
    }
    if (inside) nbl_rt_set_f64(Y, yi, nbl_rt_get_f64(X, i));
  }
  return NBL_OK;
}

/* ------------------------------------------------------------------ shape rules */

static nbl_status shape_pool(nbl_shape_ctx *c, bool global) {
  nbl_shp x, o;
  nbl_shp_in(c, 0, &x);
  if (x.rank < 0) return nbl_shp_set_dt(c, 0, x.dt, -1);
  if (x.rank < 2) return nbl_shp_set(c, 0, &x);
  o = x;
  int nsp = x.rank - 2;
  if (global) {
    for (int i = 0; i < nsp; i++) o.d[2 + i] = nbl_dim_val(1);
  } else {
    int nk = 0;
    const int64_t *ks = nbl_attr_ints(c->node, "kernel_shape", &nk);
    bool ceil_mode = nbl_attr_int(c->node, "ceil_mode", 0) != 0;
    nbl_shp_window(c, &x, nsp, nk == nsp ? ks : NULL, false, ceil_mode, o.d + 2);
  }
  nbl_status st = nbl_shp_set(c, 0, &o);
  if (st) return st;
  o.dt = NBL_DT_INT64; /* MaxPool Indices */
  return nbl_shp_set(c, 1, &o);
}

static nbl_status shape_window_pool(nbl_shape_ctx *c) { return shape_pool(c, false); }
static nbl_status shape_global_pool(nbl_shape_ctx *c) { return shape_pool(c, true); }

/* ------------------------------------------------------------------ gradient rules
 * (runtime/core/grad.h) */

/* dX = the backward op `op` of `domain` on inputs in[0..n), with the pool's
 * attributes: the rule of every pool whose backward op takes them. */
static nbl_status pool_grad(nbl_grad_ctx *gc, const char *op, const char *domain, int n, const nbl_id *in) {
  nbl_id dx = nbl_grad_op(gc, op, domain, n, in);
  nbl_grad_attr_copy(gc, NULL);
  nbl_grad_set_dx(gc, 0, dx);
  return nbl_grad_status(gc);
}

/* MaxPool: com.microsoft MaxPoolGrad (dY, Indices, shape of X); the forward
 * node is made to produce its Indices output. */
static nbl_status g_maxpool(nbl_grad_ctx *gc) {
  if (!nbl_grad_wants(gc, 0)) return NBL_OK;
  if (nbl_grad_opset(gc, "") < 8)
    return nbl_grad_fail(gc, NBL_ERR_UNSUPPORTED,
                         "gradient of MaxPool needs opset >= 8 (the Indices output)");
  nbl_id in[3] = {nbl_grad_dy(gc, 0), nbl_grad_y_need(gc, 1), nbl_grad_shape(gc, nbl_grad_x(gc, 0))};
  return pool_grad(gc, "MaxPoolGrad", "com.microsoft", 3, in);
}

/* AveragePool: com.microsoft AveragePoolGrad (dY, shape of X), same attributes. */
static nbl_status g_avgpool(nbl_grad_ctx *gc) {
  if (!nbl_grad_wants(gc, 0)) return NBL_OK;
  nbl_id in[2] = {nbl_grad_dy(gc, 0), nbl_grad_shape(gc, nbl_grad_x(gc, 0))};
  return pool_grad(gc, "AveragePoolGrad", "com.microsoft", 2, in);
}

/* LpPool: ai.nibble LpPoolGrad (runtime/ops/grad_pool.c) on dY, X and Y, same attributes. */
static nbl_status g_lppool(nbl_grad_ctx *gc) {
  if (!nbl_grad_wants(gc, 0)) return NBL_OK;
  nbl_id in[3] = {nbl_grad_dy(gc, 0), nbl_grad_x(gc, 0), nbl_grad_y(gc, 0)};
  return pool_grad(gc, "LpPoolGrad", "ai.nibble", 3, in);
}

/* MaxUnpool: dX = dY gathered at the indices (as PyTorch: each of repeated
 * indices gets it). With output_shape, dY is first cut (Slice) or padded
 * with zeros (Pad: positions the forward dropped) to the default shape the
 * indices refer to; that needs output_shape constant and X's shape known. */
static nbl_status g_maxunpool(nbl_grad_ctx *gc) {
  if (!nbl_grad_wants(gc, 0)) return NBL_OK;
  const nbl_node *n = nbl_grad_node(gc);
  nbl_id X = nbl_grad_x(gc, 0), dY = nbl_grad_dy(gc, 0);
  int r = nbl_grad_rank(gc, X);
  if (nbl_grad_x(gc, 2) != NBL_NONE) {
    int64_t od[NBL_MAX_RANK], dd[NBL_MAX_RANK], pads[2 * NBL_MAX_RANK] = {0}, axes[NBL_MAX_RANK];
    int nk = 0, ns = 0, np = 0, ok = r >= 3 && nbl_grad_const_ints(gc, nbl_grad_x(gc, 2), od, NBL_MAX_RANK) == r;
    int pad = 0, cut = 0;
    const int64_t *k = nbl_attr_ints(n, "kernel_shape", &nk), *st = nbl_attr_ints(n, "strides", &ns),
                  *p = nbl_attr_ints(n, "pads", &np);
    for (int d = 0; ok && d < r; d++) {
      int64_t in = nbl_grad_dim(gc, X, d), i = d - 2;
      dd[d] = d < 2 ? in
                    : (in - 1) * (ns == r - 2 ? st[i] : 1) + (nk == r - 2 ? k[i] : 1) -
                          (np == 2 * (r - 2) ? p[i] + p[r - 2 + i] : 0);
      ok = in >= 0 && nk == r - 2;
      axes[d] = d;
      pads[r + d] = od[d] < dd[d] ? dd[d] - od[d] : 0;
      pad |= od[d] < dd[d], cut |= od[d] > dd[d];
    }
    if (!ok)
      return nbl_grad_fail(gc, NBL_ERR_UNSUPPORTED, "gradient with output_shape: it must be constant and X's shape known");
    if (pad) dY = nbl_grad_bin(gc, "Pad", dY, nbl_grad_const_i64(gc, 2 * r, pads));
    if (cut) {
      nbl_id in[4] = {dY, nbl_grad_const_i64(gc, r, pads) /* the begin pads: zeros */, nbl_grad_const_i64(gc, r, dd),
                      nbl_grad_const_i64(gc, r, axes)};
      dY = nbl_grad_op(gc, "Slice", "", 4, in);
    }
  }
  nbl_id flat = nbl_grad_bin(gc, "Reshape", dY, nbl_grad_const_i64(gc, 1, (int64_t[]){-1}));
  nbl_grad_set_dx(gc, 0, nbl_grad_bin(gc, "Gather", flat, nbl_grad_x(gc, 1)));
  return nbl_grad_status(gc);
}

/* GlobalLpPool (y = (sum over the plane of |x|^p)^(1/p)): dX = dY / y^(p-1)
 * * |x|^(p-1) sign(x), nothing from a plane whose norm is 0 (as LpPoolGrad). */
static nbl_status g_glppool(nbl_grad_ctx *gc) {
  if (!nbl_grad_wants(gc, 0)) return NBL_OK;
  nbl_id X = nbl_grad_x(gc, 0), Y = nbl_grad_y(gc, 0);
  nbl_dtype dt = nbl_grad_dtype(gc, X);
  int64_t p = nbl_attr_int(nbl_grad_node(gc), "p", 2);
  if (p < 1) return nbl_grad_fail(gc, NBL_ERR_INVALID_MODEL, "attribute 'p' must be >= 1");
  nbl_id zero = nbl_grad_const(gc, dt, 0.0), f = nbl_grad_un(gc, "Sign", X), s = nbl_grad_dy(gc, 0);
  if (p > 1) {
    nbl_id e = nbl_grad_const(gc, dt, (double)(p - 1));
    f = nbl_grad_bin(gc, "Mul", f, nbl_grad_bin(gc, "Pow", nbl_grad_un(gc, "Abs", X), e));
    nbl_id w[3] = {nbl_grad_bin(gc, "Equal", Y, zero), zero, NBL_NONE};
    w[2] = nbl_grad_bin(gc, "Div", s, nbl_grad_bin(gc, "Pow", Y, e));
    s = nbl_grad_op(gc, "Where", "", 3, w);
  }
  nbl_grad_set_dx(gc, 0, nbl_grad_bin(gc, "Mul", s, f));
  return nbl_grad_status(gc);
}

/* GlobalAveragePool: dY / (spatial size), expanded to X's shape. */
static nbl_status g_gavgpool(nbl_grad_ctx *gc) {
  if (!nbl_grad_wants(gc, 0)) return NBL_OK;
  nbl_id X = nbl_grad_x(gc, 0);
  nbl_id g = nbl_grad_bin(gc, "Div", nbl_grad_dy(gc, 0), nbl_grad_count_ratio(gc, X, nbl_grad_y(gc, 0)));
  nbl_grad_set_dx(gc, 0, nbl_grad_bin(gc, "Expand", g, nbl_grad_shape(gc, X)));
  return nbl_grad_status(gc);
}

/* GlobalMaxPool: dY to the elements equal to their plane's maximum, split
 * evenly among ties (as ReduceMax's rule and PyTorch's amax). */
static nbl_status g_gmaxpool(nbl_grad_ctx *gc) {
  if (!nbl_grad_wants(gc, 0)) return NBL_OK;
  nbl_id X = nbl_grad_x(gc, 0);
  int r = nbl_grad_rank(gc, X);
  if (r < 3 || r > NBL_MAX_RANK) return nbl_grad_fail(gc, NBL_ERR_UNSUPPORTED, "the rank of the input must be known");
  int64_t axes[NBL_MAX_RANK];
  for (int k = 2; k < r; k++) axes[k - 2] = k;
  nbl_id share = nbl_grad_tie_share(gc, X, nbl_grad_y(gc, 0), r - 2, axes);
  nbl_grad_set_dx(gc, 0, nbl_grad_bin(gc, "Mul", nbl_grad_dy(gc, 0), share));
  return nbl_grad_status(gc);
}

/* MaxUnpool: output_shape (input 2) when it is known, else each spatial dim
 * (in - 1) * stride + kernel - pads, the transposed window. */
static nbl_status shape_maxunpool(nbl_shape_ctx *c) {
  nbl_shp x, o;
  nbl_shp_in(c, 0, &x);
  int64_t os[NBL_SHP_MAXK];
  int nos = 0;
  if (nbl_shp_in_ints(c, 2, os, &nos) && nos <= NBL_SHP_MAXR && (x.rank < 0 || nos == x.rank)) {
    o.dt = x.dt;
    o.rank = nos;
    for (int i = 0; i < nos; i++) o.d[i] = os[i] >= 0 ? nbl_dim_val(os[i]) : nbl_dim_unk();
    return nbl_shp_set(c, 0, &o);
  }
  if (x.rank < 3 || nbl_shp_has_in(c, 2)) return nbl_shp_set_dt(c, 0, x.dt, x.rank);
  int nsp = x.rank - 2, nk = 0, ns = 0, np = 0;
  const int64_t *k = nbl_attr_ints(c->node, "kernel_shape", &nk);
  const int64_t *s = nbl_attr_ints(c->node, "strides", &ns);
  const int64_t *p = nbl_attr_ints(c->node, "pads", &np);
  o = x;
  for (int i = 0; i < nsp; i++) {
    nbl_dim in = x.d[2 + i];
    o.d[2 + i] = nbl_dim_unk();
    if (nk != nsp || !nbl_dim_known(in)) continue;
    int64_t st = ns == nsp ? s[i] : 1, pb = np == 2 * nsp ? p[i] : 0, pe = np == 2 * nsp ? p[nsp + i] : 0;
    const int64_t lim = (int64_t)1 << 31; /* keeps the formula in range; larger is not a real model */
    if (in.value >= lim || k[i] < 1 || k[i] >= lim || st < 1 || st >= lim || pb < 0 || pb >= lim ||
        pe < 0 || pe >= lim)
      continue;
    int64_t v = nbl_window_out_t(in.value, k[i], st, 1, 0, pb, pe);
    if (v >= 0) o.d[2 + i] = nbl_dim_val(v);
  }
  return nbl_shp_set(c, 0, &o);
}

/* ------------------------------------------------------------------ table */

const nbl_op_def nbl_ops_nn_pool[] = {
    NBL_OP("MaxPool", 1, .ref = k_maxpool, .shape = shape_window_pool, .stable_since = 1, .grad = g_maxpool),
    NBL_OP("AveragePool", 1, .ref = k_avgpool, .fast = k_avgpool_fast, .shape = shape_window_pool, .stable_since = 1, .grad = g_avgpool),
    NBL_OP("LpPool", 1, .ref = k_lppool, .shape = shape_window_pool, .stable_since = 2, .grad = g_lppool),
    NBL_OP("MaxUnpool", 9, .ref = k_maxunpool, .shape = shape_maxunpool, .stable_since = 9, .grad = g_maxunpool),
    NBL_OP("GlobalMaxPool", 1, .ref = k_gmaxpool, .shape = shape_global_pool, .stable_since = 1, .grad = g_gmaxpool),
    NBL_OP("GlobalAveragePool", 1, .ref = k_gavgpool, .shape = shape_global_pool,
        .stable_since = 1, .grad = g_gavgpool),
    NBL_OP("GlobalLpPool", 1, .ref = k_glppool, .shape = shape_global_pool, .stable_since = 2, .grad = g_glppool),
};
const size_t nbl_ops_nn_pool_count = sizeof nbl_ops_nn_pool / sizeof nbl_ops_nn_pool[0];
