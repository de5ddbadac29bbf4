/* int4_quant.c - activation quantization for the integer kernels: float
 * activations to bytes (code + offset) or centered floats, and bytes back to
 * centered floats, vectorized (AVX-512, AVX2) for half-even rounding with
 * codes identical to runtime/formats/int4.c; see int4_gemm.h. */
#include "runtime/kernels/int4_gemm.h"
#include "runtime/kernels/int4_vq.h"
#include "runtime/kernels/simd16.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define NBL_I4_X86 1
#else
#define NBL_I4_X86 0
#endif

int nbl_i4_act_offset(const nbl_q4_params *p) {
  int lo = -p->qmin, hi = 255 - p->qmax;
  if (-p->zero > lo) lo = -p->zero;
  if (255 - p->zero < hi) hi = 255 - p->zero;
  (void)hi;
  return lo;
}

/* What the vector quantizer needs, computed once per tensor: 1 / s (0 when
 * s or 1 / s is not a normal float: always divide) and the near-tie band.
 * x * (1 / s) differs from x / s by at most 2 ulp, which changes the rounded
 * code only next to a half-way point: lanes within tol of one take the
 * division. Only |x / s| <= R matters, R = 1 + the largest |code - zero|
 * (beyond it both quotients clamp to the same end code), so one tolerance,
 * 2^-20 * R, covers every lane that can matter (2 ulp of R is 2^-22 * R). */
void nbl_i4_quantizer_init(nbl_i4_quantizer *q, const nbl_q4_config *cfg, const nbl_q4_params *p) {
  q->cfg = cfg;
  q->p = p;
  q->inv = 1.0f / p->scale;
  if (!isnormal(p->scale) || !isnormal(q->inv)) q->inv = 0.0f;
  int lo = abs(p->qmin - p->zero), hi = abs(p->qmax - p->zero);
  q->tie = 0.5f - (float)((lo > hi ? lo : hi) + 1) * 0x1p-20f;
  nbl_i4_isa isa = nbl_i4_best_isa();
  q->vec = cfg->rounding != NBL_Q4_ROUND_HALF_EVEN ? 0
           : isa == NBL_I4_VNNI                    ? 2
           : isa == NBL_I4_AVX2                    ? 1
                                                   : 0;
}

#if NBL_I4_X86
/* The 32 values of a (lanes 0-15) and b (16-31), the first r of them real:
 * even ones to ev, odd ones to od (the last block of a row masked). */
NBL_TARGET_VNNI static inline void deint2_store(__m512 a, __m512 b, size_t r, float *ev, float *od) {
  const __m512i ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i io = _mm512_add_epi32(ie, _mm512_set1_epi32(1));
  _mm512_mask_storeu_ps(ev, nbl_tail_mask((r + 1) / 2), _mm512_permutex2var_ps(a, ie, b));
  _mm512_mask_storeu_ps(od, nbl_tail_mask(r / 2), _mm512_permutex2var_ps(a, io, b));
}

/* Two vectors at once, one branch for both. */
NBL_TARGET_VNNI static inline void quant_centered32(const quant_consts *k, __m512 v0, __m512 v1,
                                                __m512 *c0, __m512 *c1) {
  if (k->clip) {
    v0 = _mm512_min_ps(_mm512_max_ps(v0, k->clo), k->chi);
    v1 = _mm512_min_ps(_mm512_max_ps(v1, k->clo), k->chi);
  }
  __m512 y0 = _mm512_mul_ps(v0, k->inv), y1 = _mm512_mul_ps(v1, k->inv);
  __m512 r0 = _mm512_roundscale_ps(y0, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r1 = _mm512_roundscale_ps(y1, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __mmask16 n0 = _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_sub_ps(y0, r0)), k->tie, _CMP_GT_OQ) |
                 k->divide_all;
  __mmask16 n1 = _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_sub_ps(y1, r1)), k->tie, _CMP_GT_OQ) |
                 k->divide_all;
  if (n0 | n1) {
    y0 = _mm512_mask_div_ps(y0, n0, v0, k->scale);
    r0 = _mm512_roundscale_ps(y0, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    y1 = _mm512_mask_div_ps(y1, n1, v1, k->scale);
    r1 = _mm512_roundscale_ps(y1, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  *c0 = _mm512_min_ps(_mm512_max_ps(r0, k->cmin), k->cmax);
  *c1 = _mm512_min_ps(_mm512_max_ps(r1, k->cmin), k->cmax);
}

/* The up to 32 floats x[0..r) (r > 0; r >= 32: all) quantized: lanes of
 * the masks *m0, *m1 into *a, *b. */
NBL_TARGET_VNNI static inline void quant_block32(const quant_consts *k, const float *x, size_t r,
                                             __m512 *a, __m512 *b, __mmask16 *m0,
                                             __mmask16 *m1) {
  *m0 = nbl_tail_mask((int64_t)r);
  *m1 = nbl_tail_mask(r > 16 ? (int64_t)r - 16 : 0);
  quant_centered32(k, _mm512_maskz_loadu_ps(*m0, x), _mm512_maskz_loadu_ps(*m1, x + 16), a, b);
}

NBL_TARGET_VNNI static void quant_u8_avx512(const nbl_i4_quantizer *q, const float *x, uint8_t *u,
                                        size_t n, int off) {
  const quant_consts k = quant_consts_of(q);
  const __m512i vo = _mm512_set1_epi32(off + q->p->zero);
  for (size_t i = 0; i < n; i += 32) {
    __m512 a, b;
    __mmask16 m0, m1;
    quant_block32(&k, x + i, n - i, &a, &b, &m0, &m1);
    _mm_mask_storeu_epi8(u + i, m0, _mm512_cvtepi32_epi8(_mm512_add_epi32(_mm512_cvtps_epi32(a), vo)));
    _mm_mask_storeu_epi8(u + i + 16, m1,
                         _mm512_cvtepi32_epi8(_mm512_add_epi32(_mm512_cvtps_epi32(b), vo)));
  }
}

/* Rows of w floats, x + r * w to f + r * ld. */
NBL_TARGET_VNNI static void quant_f_rows_avx512(const nbl_i4_quantizer *q, const float *x, size_t w,
                                            size_t rows, float *f, size_t ld) {
  const quant_consts k = quant_consts_of(q);
  for (size_t row = 0; row < rows; row++, x += w, f += ld)
    for (size_t i = 0; i < w; i += 32) {
      __m512 a, b;
      __mmask16 m0, m1;
      quant_block32(&k, x + i, w - i, &a, &b, &m0, &m1);
      _mm512_mask_storeu_ps(f + i, m0, a);
      _mm512_mask_storeu_ps(f + i + 16, m1, b);
    }
}

/* Rows of w floats (row r at x + r * xs), even columns to ev + r * ld, odd
 * ones to od + r * ld, 32 at a time (the last block of a row masked). */
NBL_TARGET_VNNI static void quant_f_deint2_avx512(const nbl_i4_quantizer *q, const float *x, size_t w,
                                              size_t rows, size_t xs, float *ev, float *od,
                                              size_t ld) {
  const quant_consts k = quant_consts_of(q);
  for (size_t row = 0; row < rows; row++, x += xs, ev += ld, od += ld)
    for (size_t i = 0; i < w; i += 32) {
      __m512 a, b;
      __mmask16 m0, m1;
      quant_block32(&k, x + i, w - i, &a, &b, &m0, &m1);
      deint2_store(a, b, w - i < 32 ? w - i : 32, ev + i / 2, od + i / 2);
    }
}
#endif

#if NBL_I4_X86
/* The same quantizer on AVX2, 8 lanes at a time: the operations and operand
 * orders of quant_centered16 (min/max return their second operand for a
 * NaN, as the AVX-512 ones do), so the codes are the same integers. The
 * lanes past a row's end are loaded as 0 and not stored. */
typedef struct quant_consts8 {
  __m256 inv, tie, scale, cmin, cmax, clo, chi;
  int clip, divide_all;
} quant_consts8;

NBL_TARGET_AVX2 static inline quant_consts8 quant_consts8_of(const nbl_i4_quantizer *q) {
  const nbl_q4_params *p = q->p;
  quant_consts8 k = {_mm256_set1_ps(q->inv),
                     _mm256_set1_ps(q->tie),
                     _mm256_set1_ps(p->scale),
                     _mm256_set1_ps((float)(p->qmin - p->zero)),
                     _mm256_set1_ps((float)(p->qmax - p->zero)),
                     _mm256_set1_ps(p->clip_lo),
                     _mm256_set1_ps(p->clip_hi),
                     p->clip,
                     q->inv == 0.0f};
  return k;
}

NBL_TARGET_AVX2 static inline __m256 quant_centered8(const quant_consts8 *k, __m256 v) {
  if (k->clip) v = _mm256_min_ps(_mm256_max_ps(v, k->clo), k->chi);
  __m256 y = _mm256_mul_ps(v, k->inv);
  __m256 r = _mm256_round_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 d = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), _mm256_sub_ps(y, r));
  __m256 near = _mm256_cmp_ps(d, k->tie, _CMP_GT_OQ);
  if (k->divide_all) near = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
  if (_mm256_movemask_ps(near)) {
    y = _mm256_blendv_ps(y, _mm256_div_ps(v, k->scale), near);
    r = _mm256_round_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  return _mm256_min_ps(_mm256_max_ps(r, k->cmin), k->cmax);
}

/* The low byte of each of the 8 int32 lanes of c (each in 0..255), the first r stored. */
NBL_TARGET_AVX2 static inline void store_bytes8(uint8_t *u, __m256i c, size_t r) {
  __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1));
  __m128i b = _mm_packus_epi16(w, w);
  if (r >= 8) {
    _mm_storel_epi64((__m128i *)(void *)u, b);
  } else {
    uint8_t t[16];
    _mm_storeu_si128((__m128i *)(void *)t, b);
    memcpy(u, t, r);
  }
}

NBL_TARGET_AVX2 static void quant_u8_avx2(const nbl_i4_quantizer *q, const float *x, uint8_t *u,
                                      size_t n, int off) {
  const quant_consts8 k = quant_consts8_of(q);
  const __m256i vo = _mm256_set1_epi32(off + q->p->zero);
  for (size_t i = 0; i < n; i += 8) {
    __m256 c = quant_centered8(&k, nbl_load8(x + i, (int64_t)(n - i)));
    store_bytes8(u + i, _mm256_add_epi32(_mm256_cvtps_epi32(c), vo), n - i);
  }
}

NBL_TARGET_AVX2 static void quant_f_rows_avx2(const nbl_i4_quantizer *q, const float *x, size_t w,
                                          size_t rows, float *f, size_t ld) {
  const quant_consts8 k = quant_consts8_of(q);
  for (size_t row = 0; row < rows; row++, x += w, f += ld)
    for (size_t i = 0; i < w; i += 8) {
      int64_t r = (int64_t)(w - i);
      nbl_store8(f + i, r, quant_centered8(&k, nbl_load8(x + i, r)));
    }
}

/* The 16 values of a (0-7) and b (8-15), the first r of them real: even
 * ones to ev, odd ones to od. */
NBL_TARGET_AVX2 static inline void deint2_store8(__m256 a, __m256 b, size_t r, float *ev, float *od) {
  /* [a0 a2 b0 b2 | a4 a6 b4 b6] -> [a0 a2 a4 a6 b0 b2 b4 b6] */
  __m256 e = _mm256_castpd_ps(_mm256_permute4x64_pd(
      _mm256_castps_pd(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0))), _MM_SHUFFLE(3, 1, 2, 0)));
  __m256 o = _mm256_castpd_ps(_mm256_permute4x64_pd(
      _mm256_castps_pd(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1))), _MM_SHUFFLE(3, 1, 2, 0)));
  nbl_store8(ev, (int64_t)(r + 1) / 2, e);
  nbl_store8(od, (int64_t)r / 2, o);
}

NBL_TARGET_AVX2 static void quant_f_deint2_avx2(const nbl_i4_quantizer *q, const float *x, size_t w,
                                            size_t rows, size_t xs, float *ev, float *od,
                                            size_t ld) {
  const quant_consts8 k = quant_consts8_of(q);
  for (size_t row = 0; row < rows; row++, x += xs, ev += ld, od += ld)
    for (size_t i = 0; i < w; i += 16) {
      size_t r = w - i < 16 ? w - i : 16;
      __m256 a = quant_centered8(&k, nbl_load8(x + i, (int64_t)r));
      __m256 b = quant_centered8(&k, r > 8 ? nbl_load8(x + i + 8, (int64_t)r - 8)
                                           : _mm256_setzero_ps());
      deint2_store8(a, b, r, ev + i / 2, od + i / 2);
    }
}

/* Up to 8 bytes u[0..r) as int32 lanes (the rest 0). */
NBL_TARGET_AVX2 static inline __m256i load_bytes8(const uint8_t *u, size_t r) {
  if (r >= 8) return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)u));
  uint8_t t[8] = {0};
  memcpy(t, u, r);
  return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)t));
}

NBL_TARGET_AVX2 static void codes_rows_avx2(const uint8_t *u, size_t w, size_t rows, float *f,
                                        size_t ld, int bias) {
  const __m256i vb = _mm256_set1_epi32(bias);
  for (size_t r = 0; r < rows; r++, u += w, f += ld)
    for (size_t i = 0; i < w; i += 8)
      nbl_store8(f + i, (int64_t)(w - i),
                 _mm256_cvtepi32_ps(_mm256_sub_epi32(load_bytes8(u + i, w - i), vb)));
}

NBL_TARGET_AVX2 static void codes_deint2_avx2(const uint8_t *u, size_t w, size_t rows, size_t us,
                                          float *ev, float *od, size_t ld, int bias) {
  const __m256i vb = _mm256_set1_epi32(bias);
  for (size_t row = 0; row < rows; row++, u += us, ev += ld, od += ld)
    for (size_t i = 0; i < w; i += 16) {
      size_t r = w - i < 16 ? w - i : 16;
      __m256 a = _mm256_cvtepi32_ps(_mm256_sub_epi32(load_bytes8(u + i, r), vb));
      __m256 b = _mm256_cvtepi32_ps(
          _mm256_sub_epi32(r > 8 ? load_bytes8(u + i + 8, r - 8) : _mm256_setzero_si256(), vb));
      deint2_store8(a, b, r, ev + i / 2, od + i / 2);
    }
}
#endif

void nbl_i4_quantize_u8(const nbl_i4_quantizer *q, const float *x, uint8_t *u, size_t n,
                        uint64_t index0, int off) {
#if NBL_I4_X86
  if (q->vec == 2) {
    quant_u8_avx512(q, x, u, n, off);
    return;
  }
  if (q->vec == 1) {
    quant_u8_avx2(q, x, u, n, off);
    return;
  }
#endif
  for (size_t i = 0; i < n; i++) u[i] = (uint8_t)(nbl_q4_code(q->cfg, q->p, x[i], index0 + i) + off);
}

void nbl_i4_quantize_centered(const nbl_i4_quantizer *q, const float *x, float *f, size_t n,
                              uint64_t index0) {
#if NBL_I4_X86
  if (q->vec == 2) {
    quant_f_rows_avx512(q, x, n, 1, f, n);
    return;
  }
  if (q->vec == 1) {
    quant_f_rows_avx2(q, x, n, 1, f, n);
    return;
  }
#endif
  for (size_t i = 0; i < n; i++) f[i] = (float)(nbl_q4_code(q->cfg, q->p, x[i], index0 + i) - q->p->zero);
}

#if NBL_I4_X86
NBL_TARGET_VNNI static void codes_rows_avx512(const uint8_t *u, size_t w, size_t rows, float *f,
                                          size_t ld, int bias) {
  const __m512i vb = _mm512_set1_epi32(bias);
  for (size_t r = 0; r < rows; r++, u += w, f += ld)
    for (size_t i = 0; i < w; i += 16) {
      __mmask16 m = nbl_tail_mask(w - i);
      __m512i c = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, u + i));
      _mm512_mask_storeu_ps(f + i, m, _mm512_cvtepi32_ps(_mm512_sub_epi32(c, vb)));
    }
}

NBL_TARGET_VNNI static void codes_deint2_avx512(const uint8_t *u, size_t w, size_t rows, size_t us,
                                            float *ev, float *od, size_t ld, int bias) {
  const __m512i vb = _mm512_set1_epi32(bias);
  for (size_t row = 0; row < rows; row++, u += us, ev += ld, od += ld)
    for (size_t i = 0; i < w; i += 32) {
      size_t r = w - i < 32 ? w - i : 32;
      __mmask16 m0 = nbl_tail_mask(r), m1 = nbl_tail_mask(r > 16 ? r - 16 : 0);
      __m512 a = _mm512_cvtepi32_ps(
          _mm512_sub_epi32(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m0, u + i)), vb));
      __m512 b = _mm512_cvtepi32_ps(
          _mm512_sub_epi32(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m1, u + i + 16)), vb));
      deint2_store(a, b, r, ev + i / 2, od + i / 2);
    }
}
#endif

void nbl_i4_codes_centered_rows(const uint8_t *u, size_t w, size_t rows, float *f, size_t ld,
                                int bias) {
#if NBL_I4_X86
  nbl_i4_isa isa = nbl_i4_best_isa();
  if (isa != NBL_I4_SCALAR && ld == w) w *= rows, rows = 1; /* contiguous: one row */
  if (isa == NBL_I4_VNNI) {
    codes_rows_avx512(u, w, rows, f, ld, bias);
    return;
  }
  if (isa == NBL_I4_AVX2) {
    codes_rows_avx2(u, w, rows, f, ld, bias);
    return;
  }
#endif
  for (size_t r = 0; r < rows; r++)
    for (size_t i = 0; i < w; i++) f[r * ld + i] = (float)(u[r * w + i] - bias);
}

void nbl_i4_codes_centered_deint2(const uint8_t *u, size_t w, size_t rows, size_t us, float *ev,
                                  float *od, size_t ld, int bias) {
#if NBL_I4_X86
  nbl_i4_isa isa = nbl_i4_best_isa();
  if (isa == NBL_I4_VNNI) {
    codes_deint2_avx512(u, w, rows, us, ev, od, ld, bias);
    return;
  }
  if (isa == NBL_I4_AVX2) {
    codes_deint2_avx2(u, w, rows, us, ev, od, ld, bias);
    return;
  }
#endif
  for (size_t r = 0; r < rows; r++)
    for (size_t i = 0; i < w; i++) {
      float v = (float)(u[r * us + i] - bias);
      if (i & 1) od[r * ld + i / 2] = v;
      else ev[r * ld + i / 2] = v;
    }
}

void nbl_i4_quantize_centered_rows(const nbl_i4_quantizer *q, const float *x, size_t w,
                                   size_t rows, float *f, size_t ld, uint64_t index0) {
#if NBL_I4_X86
  if (q->vec) {
    if (ld == w) w *= rows, rows = 1; /* contiguous: one row, whole vectors */
    if (q->vec == 2) quant_f_rows_avx512(q, x, w, rows, f, ld);
    else quant_f_rows_avx2(q, x, w, rows, f, ld);
    return;
  }
#endif
  for (size_t r = 0; r < rows; r++)
    nbl_i4_quantize_centered(q, x + r * w, f + r * ld, w, index0 + r * w);
}

void nbl_i4_quantize_centered_deint2(const nbl_i4_quantizer *q, const float *x, size_t w,
                                     size_t rows, size_t xs, float *ev, float *od, size_t ld,
                                     uint64_t index0) {
#if NBL_I4_X86
  if (q->vec == 2) {
    quant_f_deint2_avx512(q, x, w, rows, xs, ev, od, ld);
    return;
  }
  if (q->vec == 1) {
    quant_f_deint2_avx2(q, x, w, rows, xs, ev, od, ld);
    return;
  }
#endif
  for (size_t r = 0; r < rows; r++)
    for (size_t i = 0; i < w; i++) {
      float v = (float)(nbl_q4_code(q->cfg, q->p, x[r * xs + i], index0 + r * xs + i) - q->p->zero);
      if (i & 1) od[r * ld + i / 2] = v;
      else ev[r * ld + i / 2] = v;
    }
}
