/* simd16.h - small AVX-512 (and AVX2) helpers: lane masks and partial
 * loads/stores for the vector loops, and
 * the tile layout of the depthwise kernels that work 16 channels at a time
 * (depthwise_f32.c FP32, code_depthwise.c INT4 and ternary codes). */
#ifndef NBL_SIMD16_H
#define NBL_SIMD16_H

#if defined(__x86_64__)
#include <immintrin.h>
#include <stdint.h>

/* The target attributes of the INT4 kernels' AVX-512 VNNI and AVX2 variants. */
#define NBL_TARGET_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
#define NBL_TARGET_AVX2 __attribute__((target("avx2,fma")))

/* The mask of the first min(n, 16) lanes (n >= 0). */
static inline __mmask16 nbl_tail_mask(int64_t n) {
  return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1);
}

/* The mask of the lanes i < 16 with lo <= i < hi (any lo, hi). */
static inline __mmask16 nbl_lane_range16(int64_t lo, int64_t hi) {
  if (lo < 0) lo = 0;
  if (hi > 16) hi = 16;
  if (hi <= lo) return 0;
  return (__mmask16)(((1u << hi) - 1) & ~((1u << lo) - 1));
}

/* Rows of column stride 2 in float (AVX-512F): d[i] = s[2 i] for i < n
 * (reads s[0 .. 2 n - 2] only), and its adjoint d[2 i] += s[i]. */
__attribute__((target("avx512f"))) static inline void nbl_even_gather_ps(const float *s, int64_t n, float *d) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  for (int64_t i = 0; i < n; i += 16) {
    const int64_t e = 2 * (n - i) - 1; /* elements of s from 2 i on */
    const __m512 v0 = _mm512_maskz_loadu_ps(nbl_tail_mask(e), s + 2 * i);
    const __m512 v1 = _mm512_maskz_loadu_ps(nbl_tail_mask(e - 16 > 0 ? e - 16 : 0), s + 2 * i + 16);
    _mm512_mask_storeu_ps(d + i, nbl_tail_mask(n - i), _mm512_permutex2var_ps(v0, even, v1));
  }
}
__attribute__((target("avx512f"))) static inline void nbl_even_scatter_add_ps(const float *s, int64_t n, float *d) {
  const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  const __mmask16 ev = 0x5555;
  for (int64_t i = 0; i < n; i += 16) {
    const int64_t e = 2 * (n - i) - 1; /* elements of d from 2 i on */
    const __m512 v = _mm512_maskz_loadu_ps(nbl_tail_mask(n - i), s + i), z = _mm512_setzero_ps();
    const __mmask16 k0 = nbl_tail_mask(e) & ev, k1 = nbl_tail_mask(e - 16 > 0 ? e - 16 : 0) & ev;
    float *d0 = d + 2 * i, *d1 = d0 + 16;
    _mm512_mask_storeu_ps(d0, k0, _mm512_add_ps(_mm512_maskz_loadu_ps(k0, d0), _mm512_permutex2var_ps(v, lo, z)));
    if (k1) _mm512_mask_storeu_ps(d1, k1, _mm512_add_ps(_mm512_maskz_loadu_ps(k1, d1), _mm512_permutex2var_ps(v, hi, z)));
  }
}

/* AVX2: the mask of the first r lanes (r clamped to 0..8) for maskload/maskstore. */
__attribute__((target("avx2"), always_inline)) static inline __m256i nbl_tail8(int64_t r) {
  if (r > 8) r = 8;
  if (r < 0) r = 0;
  return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)r), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* AVX2: the first r floats of x (r >= 8: all 8; the other lanes 0), and the
 * store of the first r lanes. Masked moves only for a partial vector: they
 * are slow on some CPUs (microcoded stores). */
__attribute__((target("avx2"), always_inline)) static inline __m256 nbl_load8(const float *x,
                                                                               int64_t r) {
  return r >= 8 ? _mm256_loadu_ps(x) : _mm256_maskload_ps(x, nbl_tail8(r));
}
__attribute__((target("avx2"), always_inline)) static inline void nbl_store8(float *x, int64_t r,
                                                                              __m256 v) {
  if (r >= 8) _mm256_storeu_ps(x, v);
  else if (r > 0) _mm256_maskstore_ps(x, nbl_tail8(r), v);
}

/* AVX2: the running *vmin, *vmax widened by the lanes of v that m selects
 * (all bits set per lane), with min/max returning v's lane for a NaN as the
 * AVX-512 masked forms do; returns the selected lanes of v that are NaN as a
 * bit mask when nan is set, else 0. */
__attribute__((target("avx2"), always_inline)) static inline int nbl_minmax8(__m256 *vmin,
                                                                              __m256 *vmax,
                                                                              __m256 v, __m256 m,
                                                                              int nan) {
  *vmin = _mm256_blendv_ps(*vmin, _mm256_min_ps(*vmin, v), m);
  *vmax = _mm256_blendv_ps(*vmax, _mm256_max_ps(*vmax, v), m);
  return nan ? _mm256_movemask_ps(_mm256_and_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q), m)) : 0;
}

/* AVX2: the smallest and the largest of the 8 lanes of v. */
__attribute__((target("avx2"), always_inline)) static inline float nbl_hmin8(__m256 v) {
  __m128 a = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  a = _mm_min_ps(a, _mm_movehl_ps(a, a));
  return _mm_cvtss_f32(_mm_min_ss(a, _mm_movehdup_ps(a)));
}
__attribute__((target("avx2"), always_inline)) static inline float nbl_hmax8(__m256 v) {
  __m128 a = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  a = _mm_max_ps(a, _mm_movehl_ps(a, a));
  return _mm_cvtss_f32(_mm_max_ss(a, _mm_movehdup_ps(a)));
}

/* r[i][k] <- r[k][i]: four rounds swapping the off-diagonal blocks of 8, 4,
 * 2 and 1 lanes between row pairs (i, i + h). */
__attribute__((target("avx512f"), always_inline)) static inline void nbl_transpose16(__m512 r[16]) {
  static const int32_t idx[4][2][16] __attribute__((aligned(64))) = {
      {{0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23},
       {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31}},
      {{0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27},
       {4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31}},
      {{0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29},
       {2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31}},
      {{0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30},
       {1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31}}};
#pragma GCC unroll 4
  for (int s = 0, h = 8; s < 4; s++, h >>= 1) {
    const __m512i lo = _mm512_load_si512(idx[s][0]), hi = _mm512_load_si512(idx[s][1]);
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++)
      if (!(i & h)) {
        __m512 a = r[i], b = r[i | h];
        r[i] = _mm512_permutex2var_ps(a, lo, b);
        r[i | h] = _mm512_permutex2var_ps(a, hi, b);
      }
  }
}

/* The planes x[l * HW ...] (l < nc, HW = H * W) into the tile T laid out
 * [row][col][16] with rows of Wp pixels, input (ih, iw) at (ih + pt, iw + pl);
 * lanes nc..15 get 0. */
__attribute__((target("avx512f"))) static inline void nbl_planes_to_tile(const float *x, int64_t nc,
                                                                        int64_t H, int64_t W,
                                                                        float *T, int64_t Wp,
                                                                        int64_t pt, int64_t pl) {
  int64_t HW = H * W;
  for (int64_t p = 0; p < HW; p += 16) { /* 16 pixels of 16 planes -> 16 pixel vectors */
    int64_t cnt = HW - p < 16 ? HW - p : 16;
    __mmask16 pm = nbl_tail_mask(cnt);
    __m512 r[16];
#pragma GCC unroll 16
    for (int l = 0; l < 16; l++)
      r[l] = l < nc ? _mm512_maskz_loadu_ps(pm, x + l * HW + p) : _mm512_setzero_ps();
    nbl_transpose16(r);
    int64_t ih = p / W, iw = p % W;
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++) {
      if (i >= cnt) break;
      _mm512_storeu_ps(T + ((ih + pt) * Wp + iw + pl) * 16, r[i]);
      if (++iw == W) iw = 0, ih++;
    }
  }
}

/* The pixel vectors O[p * 16 ...] (p < P) back into planes y[l * P ...],
 * l < nc. */
__attribute__((target("avx512f"))) static inline void nbl_tile_to_planes(const float *O, int64_t P,
                                                                        int64_t nc, float *y) {
  for (int64_t p = 0; p < P; p += 16) { /* 16 pixel vectors -> 16 pixels of 16 planes */
    int64_t cnt = P - p < 16 ? P - p : 16;
    __mmask16 pm = nbl_tail_mask(cnt);
    __m512 r[16];
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++) r[i] = i < cnt ? _mm512_loadu_ps(O + (p + i) * 16) : _mm512_setzero_ps();
    nbl_transpose16(r);
#pragma GCC unroll 16
    for (int l = 0; l < 16; l++)
      if (l < nc) _mm512_mask_storeu_ps(y + l * P + p, pm, r[l]);
  }
}

/* The tap weights w[c * nt + k] of channels c0 + l (l where cm is set) as
 * one vector per tap k < nt. */
__attribute__((target("avx512f"))) static inline void nbl_tap_vectors(const float *w, int64_t c0,
                                                                     int nt, __mmask16 cm,
                                                                     __m512 *wv) {
  const __m512i by_tap = _mm512_mullo_epi32(
      _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32(nt));
  for (int k = 0; k < nt; k++)
    wv[k] = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), cm, by_tap, w + c0 * nt + k, 4);
}
#endif

#endif /* NBL_SIMD16_H */
