/* pool_f32.c - FP32 2-D pooling (pool_f32.h): average pooling by separable
 * window sums, rows first, then columns, 8 lanes at a time where AVX runs;
 * MaxPool's AVX-512 plane kernel, the same way with 16 lanes. */
#include "runtime/kernels/pool_f32.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/core/cpu.h"
#include "runtime/kernels/simd16.h"
#if defined(__x86_64__)
#include <immintrin.h>
#endif

/* The window positions of output o along spatial dim i that count: those
 * inside [0, in), or with include_pad inside the padded [-pb, in + pe) (a
 * ceil_mode window may reach past the end padding: those positions never
 * count, as in the reference kernel). */
static int64_t win_count(const nbl_conv_geom *g, int i, int64_t o, int include_pad) {
  const int64_t lo = include_pad ? -g->pb[i] : 0, hi = include_pad ? g->in[i] + g->pe[i] : g->in[i];
  int64_t n = 0;
  for (int64_t k = 0; k < g->k[i]; k++) {
    const int64_t p = o * g->s[i] - g->pb[i] + k * g->d[i];
    n += p >= lo && p < hi;
  }
  return n;
}

/* a[i] += b[i], i < n */
static void add_row_c(float *restrict a, const float *restrict b, int64_t n) {
  for (int64_t i = 0; i < n; i++) a[i] += b[i];
}

/* y[i] = (r[i] + r[i + d] + ... + r[i + (k - 1) d]) / (rc cc[i]), i < n,
 * added left to right (the AVX loop below in the same order) */
static void hsum_div_c(float *restrict y, const float *r, int64_t n, int64_t k, int64_t d, const float *cc,
                       float rc) {
  for (int64_t i = 0; i < n; i++) {
    float s = r[i];
    for (int64_t j = 1; j < k; j++) s += r[i + j * d];
    y[i] = s / (rc * cc[i]);
  }
}

#if defined(__x86_64__)
/* The lanes l < n (n < 8) of an 8-lane mask, for the tails. */
__attribute__((target("avx2"))) static inline __m256i tail8(int64_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
__attribute__((target("avx2"))) static void add_row_avx2(float *a, const float *b, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(a + i, _mm256_add_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i)));
  if (i < n) { /* masked: no scalar tail on rows of a few dozen columns */
    const __m256i m = tail8(n - i);
    _mm256_maskstore_ps(a + i, m, _mm256_add_ps(_mm256_maskload_ps(a + i, m), _mm256_maskload_ps(b + i, m)));
  }
}
__attribute__((target("avx2"))) static void hsum_div_avx2(float *y, const float *r, int64_t n, int64_t k, int64_t d,
                                                          const float *cc, float rc) {
  const __m256 vr = _mm256_set1_ps(rc);
  for (int64_t i = 0; i < n; i += 8) {
    /* the tail lanes masked (loads of 0 there, 0 / 0 not stored) */
    const __m256i m = n - i >= 8 ? _mm256_set1_epi32(-1) : tail8(n - i);
    __m256 s = _mm256_maskload_ps(r + i, m);
    for (int64_t j = 1; j < k; j++) s = _mm256_add_ps(s, _mm256_maskload_ps(r + i + j * d, m));
    _mm256_maskstore_ps(y + i, m, _mm256_div_ps(s, _mm256_mul_ps(vr, _mm256_maskload_ps(cc + i, m))));
  }
}
#endif

#if defined(__x86_64__)
/* The AVX-512 forms of add_row and hsum_div (the same float operations in
 * the same order, 16 lanes, masked tails), hsum_div at column strides 1
 * and 2 (the even columns by a permute). */
/* mid[0..W) = the sum of rows[0..nr) (rows of W floats), added in order,
 * 16 columns at a time in a register: one store per vector (a pass per row
 * stored and reloaded each vector, and masked stores do not forward to the
 * next loads: that ran at a third of this speed). nr >= 1. */
__attribute__((target("avx512f"))) static void vsum_avx512(float *mid, const float *const *rows, int nr, int64_t W) {
  for (int64_t j = 0; j < W; j += 16) {
    __mmask16 k = nbl_tail_mask(W - j);
    __m512 v = _mm512_maskz_loadu_ps(k, rows[0] + j);
    for (int r = 1; r < nr; r++) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(k, rows[r] + j));
    _mm512_mask_storeu_ps(mid + j, k, v);
  }
}
__attribute__((target("avx512f"))) static void hsum_div_avx512(float *y, const float *r, int64_t n, int64_t k,
                                                              int64_t d, int64_t s, const float *cc, float rc) {
  const __m512 vr = _mm512_set1_ps(rc);
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  for (int64_t i = 0; i < n; i += 16) {
    __mmask16 m = nbl_tail_mask(n - i);
    __m512 acc = _mm512_setzero_ps();
    for (int64_t j = 0; j < k; j++) { /* the row buffer holds n s + (k - 1) d + 32 floats */
      const float *p = r + i * s + j * d;
      __m512 v = s == 1 ? _mm512_loadu_ps(p) : _mm512_permutex2var_ps(_mm512_loadu_ps(p), even, _mm512_loadu_ps(p + 16));
      acc = j ? _mm512_add_ps(acc, v) : v;
    }
    _mm512_mask_storeu_ps(y + i, m, _mm512_div_ps(acc, _mm512_mul_ps(vr, _mm512_maskz_loadu_ps(m, cc + i))));
  }
}
#endif

#if defined(__x86_64__)
/* One plane of average pooling with AVX-512 (column strides 1 and 2, at
 * most 64 window rows): the window's row sums of output row oh + 1 are made
 * into one buffer while row oh's column sums read the other, so that the
 * loads never wait on the stores just made (masked stores do not forward:
 * with one buffer the column pass ran at a third of its speed). The same
 * sums in the same order as the loops of nbl_avgpool2d_f32. buf[i] holds
 * Wp + 64 floats, zero outside the input columns. */
__attribute__((target("avx512f"))) static void avg_plane_avx512(const nbl_avgpool_task *t, const float *xp,
                                                               float *yp, float *const buf[2], const float *cc) {
  const nbl_conv_geom *g = t->g;
  const int64_t H = g->in[0], W = g->in[1], OH = g->out[0], OW = g->out[1], pl = g->pb[1];
  for (int64_t oh = -1; oh < OH; oh++) {
    int64_t nx = oh + 1; /* the row sums of output row nx, into buf[nx & 1] */
    if (nx < OH) {
      const float *rows[64];
      int nr = 0;
      for (int64_t kh = 0; kh < g->k[0]; kh++) {
        const int64_t ih = nx * g->s[0] - g->pb[0] + kh * g->d[0];
        if (ih >= 0 && ih < H) rows[nr++] = xp + ih * W;
      }
      float *mid = buf[nx & 1] + pl;
      if (nr) vsum_avx512(mid, rows, nr, W);
      else
        for (int64_t j = 0; j < W; j += 16) _mm512_mask_storeu_ps(mid + j, nbl_tail_mask(W - j), _mm512_setzero_ps());
    }
    if (oh >= 0)
      hsum_div_avx512(yp + oh * OW, buf[oh & 1], OW, g->k[1], g->d[1], g->s[1], cc,
                      (float)win_count(g, 0, oh, t->include_pad));
  }
}
#endif

/* The same sums without row buffers (out of memory): per output, the column
 * sums of the window (0 in the padding) in kw order, each over kh. */
static void avgpool_direct(const nbl_avgpool_task *t, int64_t begin, int64_t end) {
  const nbl_conv_geom *g = t->g;
  const int64_t H = g->in[0], W = g->in[1], OH = g->out[0], OW = g->out[1];
  for (int64_t q = begin; q < end; q++) {
    const float *xp = t->x + q * H * W;
    float *yp = t->y + q * OH * OW;
    for (int64_t oh = 0; oh < OH; oh++) {
      const float rc = (float)win_count(g, 0, oh, t->include_pad);
      for (int64_t ow = 0; ow < OW; ow++) {
        float s = 0.0f;
        for (int64_t kw = 0; kw < g->k[1]; kw++) {
          const int64_t iw = ow * g->s[1] - g->pb[1] + kw * g->d[1];
          float cs = 0.0f;
          int first = 1;
          for (int64_t kh = 0; kh < g->k[0] && iw >= 0 && iw < W; kh++) {
            const int64_t ih = oh * g->s[0] - g->pb[0] + kh * g->d[0];
            if (ih < 0 || ih >= H) continue;
            cs = first ? xp[ih * W + iw] : cs + xp[ih * W + iw];
            first = 0;
          }
          s = kw ? s + cs : cs;
        }
        yp[oh * OW + ow] = s / (rc * (float)win_count(g, 1, ow, t->include_pad));
      }
    }
  }
}

void nbl_avgpool2d_f32(void *arg, int64_t begin, int64_t end) {
  const nbl_avgpool_task *t = arg;
  const nbl_conv_geom *g = t->g;
  const int64_t H = g->in[0], W = g->in[1], OH = g->out[0], OW = g->out[1];
  const int64_t pl = g->pb[1], KW = g->k[1], sw = g->s[1], dw = g->d[1];
  if (OH <= 0 || OW <= 0) return;
  /* columns of the padded row: every window column in range; the padding
   * stays 0 */
  int64_t Wp = (OW - 1) * sw + (KW - 1) * dw + 1;
  if (Wp < pl + W) Wp = pl + W;
  /* 64 zeros of slack past the row: the AVX-512 loads' reach; a second row
   * for avg_plane_avx512 */
  float *row = calloc((size_t)(2 * (Wp + 64) + OW), sizeof(float)), *cc = row ? row + 2 * (Wp + 64) : NULL;
  if (!row) {
    avgpool_direct(t, begin, end);
    return;
  }
  for (int64_t ow = 0; ow < OW; ow++) cc[ow] = (float)win_count(g, 1, ow, t->include_pad);
  int avx2 = 0, avx512 = 0;
#if defined(__x86_64__)
  avx2 = nbl_cpu_has(NBL_CPU_AVX2);
  avx512 = nbl_cpu_has(NBL_CPU_AVX512F);
#endif
  for (int64_t q = begin; q < end; q++) {
    const float *xp = t->x + q * H * W;
    float *yp = t->y + q * OH * OW;
#if defined(__x86_64__)
    if (avx512 && sw <= 2 && g->k[0] <= 64) {
      float *const bufs[2] = {row, row + Wp + 64};
      avg_plane_avx512(t, xp, yp, bufs, cc);
      continue;
    }
#endif
    for (int64_t oh = 0; oh < OH; oh++) {
      float *mid = row + pl; /* the input columns */
      int first = 1;
      for (int64_t kh = 0; kh < g->k[0]; kh++) {
        const int64_t ih = oh * g->s[0] - g->pb[0] + kh * g->d[0];
        if (ih < 0 || ih >= H) continue;
        if (first) {
          memcpy(mid, xp + ih * W, sizeof(float) * (size_t)W);
          first = 0;
        } else {
#if defined(__x86_64__)
          if (avx2) {
            add_row_avx2(mid, xp + ih * W, W);
            continue;
          }
#endif
          add_row_c(mid, xp + ih * W, W);
        }
      }
      if (first) memset(mid, 0, sizeof(float) * (size_t)W);
      const float rc = (float)win_count(g, 0, oh, t->include_pad);
      float *yr = yp + oh * OW;
      if (sw == 1) {
#if defined(__x86_64__)
        if (avx2) {
          hsum_div_avx2(yr, row, OW, KW, dw, cc, rc);
          continue;
        }
#endif
        hsum_div_c(yr, row, OW, KW, dw, cc, rc);
      } else { /* strided: few outputs per row, each its own short sum */
        for (int64_t ow = 0; ow < OW; ow++) {
          const float *r = row + ow * sw;
          float s = r[0];
          for (int64_t kw = 1; kw < KW; kw++) s += r[kw * dw];
          yr[ow] = s / (rc * cc[ow]);
        }
      }
    }
  }
  free(row);
}

int64_t nbl_maxpool2d_vm_len(const nbl_conv_geom *g) {
  int64_t Wp = (g->out[1] - 1) * g->s[1] + (g->k[1] - 1) * g->d[1] + 1;
  if (Wp < g->pb[1] + g->in[1]) Wp = g->pb[1] + g->in[1];
  return 2 * (Wp + 64); /* two rows, each with the vector loads' reach past the last window */
}

#if defined(__x86_64__)
/* nan_max of runtime/ops/nn_pool.c per lane: b > a ? b : a, and b where b
 * is NaN (vmaxps gives a when either is NaN, so a NaN a stays) */
__attribute__((target("avx512f"), always_inline)) static inline __m512 nanmax16(__m512 a, __m512 b) {
  return _mm512_mask_mov_ps(_mm512_max_ps(b, a), _mm512_cmp_ps_mask(b, b, _CMP_UNORD_Q), b);
}

__attribute__((target("avx512f"))) int nbl_maxpool2d_plane_avx512(const nbl_conv_geom *g, const float *x,
                                                               float *y, float *vm) {
  const int64_t H = g->in[0], W = g->in[1], OH = g->out[0], OW = g->out[1];
  const int64_t KH = g->k[0], KW = g->k[1], sh = g->s[0], sw = g->s[1], dh = g->d[0], dw = g->d[1];
  if (sw > 2 || g->ns != 2 || KH > 64) return 0;
  const __m512 ninf = _mm512_set1_ps(-INFINITY);
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const int64_t len = nbl_maxpool2d_vm_len(g) / 2;
  for (int64_t oh = -1; oh < OH; oh++) {
    /* the max over output row oh + 1's window rows at every input column,
     * in kh order, 16 columns at a time in a register, into one half of vm
     * while row oh's column pass reads the other (as avg_plane_avx512) */
    int64_t nx = oh + 1;
    if (nx < OH) {
      const float *rows[64];
      int nr = 0;
      for (int64_t kh = 0; kh < KH; kh++) {
        int64_t ih = nx * sh - g->pb[0] + kh * dh;
        if (ih >= 0 && ih < H) rows[nr++] = x + ih * W;
      }
      float *mid = vm + (nx & 1) * len + g->pb[1];
      for (int64_t j = 0; j < W; j += 16) {
        __mmask16 k = nbl_tail_mask(W - j);
        __m512 v = ninf;
        for (int r = 0; r < nr; r++) {
          __m512 b = _mm512_mask_loadu_ps(ninf, k, rows[r] + j);
          v = r ? nanmax16(v, b) : b;
        }
        _mm512_mask_storeu_ps(mid + j, k, v);
      }
    }
    if (oh < 0) continue;
    /* then over the window's columns, in kw order */
    const float *row = vm + (oh & 1) * len;
    float *yr = y + oh * OW;
    for (int64_t ow = 0; ow < OW; ow += 16) {
      __m512 m = ninf;
      for (int64_t kw = 0; kw < KW; kw++) {
        const float *p = row + ow * sw + kw * dw;
        __m512 v = sw == 1 ? _mm512_loadu_ps(p)
                           : _mm512_permutex2var_ps(_mm512_loadu_ps(p), even, _mm512_loadu_ps(p + 16));
        m = kw ? nanmax16(m, v) : v;
      }
      _mm512_mask_storeu_ps(yr + ow, nbl_tail_mask(OW - ow), m);
    }
  }
  return 1;
}
#else
int nbl_maxpool2d_plane_avx512(const nbl_conv_geom *g, const float *x, float *y, float *vm) {
  (void)g, (void)x, (void)y, (void)vm;
  return 0;
}
#endif
