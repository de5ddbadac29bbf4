/* int4_amx_codes.c - X's codes packed for the AMX products of int4_amx.c
 * (contracts in int4_amx_codes.h): recovered from QuantizeInt4's floats,
 * or taken from its int8 codes output (runtime/formats/int4.h), which
 * int4-backward hands to Int4CodedConv and Int4LogConvGrad: one byte read
 * per element instead of a float, a multiply, a rounding and a check. The
 * same codes either way (Y = scale * (q - z) exactly, so rint(Y / scale) =
 * q - z), hence the same sums. */
#include "runtime/kernels/int4_amx_codes.h"

#if defined(__x86_64__)
#include <immintrin.h>

#if defined(__GNUC__) && !defined(__clang__)
#define PACK_FN __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"), optimize("O3")))
#else
#define PACK_FN __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))
#endif

/* The m <= 16 pixels at i of four rows' bytes v[] as quads: sw == 1 to d0
 * (pixel i at 4 i); sw == 2 the even pixels to d0, the odd ones to d1 (each
 * at 4 (i / 2); with sw == 2 the rows' bytes come even lanes first). */
PACK_FN static inline void quads_store(const __m128i v[4], int8_t *d0, int8_t *d1, int64_t sw, int64_t i,
                                       int64_t m) {
  const __m512i o = nbl_i4b_interleave4(v);
  if (sw == 1) {
    _mm512_mask_storeu_epi8(d0 + 4 * i, m >= 16 ? ~(__mmask64)0 : (((__mmask64)1 << (4 * m)) - 1), o);
  } else { /* first half: the (m + 1) / 2 even pixels, second: the odd ones */
    const int64_t m0 = (m + 1) / 2, m1 = m / 2;
    if (d0)
      _mm256_mask_storeu_epi8(d0 + 2 * i, (__mmask32)(m0 >= 8 ? 0xffffffffu : (1u << (4 * m0)) - 1),
                              _mm512_castsi512_si256(o));
    if (d1 && m1)
      _mm256_mask_storeu_epi8(d1 + 2 * i, (__mmask32)(m1 >= 8 ? 0xffffffffu : (1u << (4 * m1)) - 1),
                              _mm512_extracti64x4_epi64(o, 1));
  }
}

PACK_FN int nbl_i4b_quad_f(int8_t *d0, int8_t *d1, int64_t sw, const float *const r[4], int64_t n, float sx) {
  const __m512 vinv = _mm512_set1_ps(1.0f / sx), vs = _mm512_set1_ps(sx), lim = _mm512_set1_ps(127.0f);
  const __m512 nlim = _mm512_set1_ps(-128.0f);
  const __m128i sel = _mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15); /* even lanes first */
  __mmask16 bad = 0;
  for (int64_t i = 0; i < n; i += 16) {
    const int64_t m = n - i < 16 ? n - i : 16;
    const __mmask16 k = (__mmask16)(m >= 16 ? 0xffff : (1u << m) - 1);
    __m128i v[4];
    for (int b = 0; b < 4; b++) {
      const __m512 f = r[b] ? _mm512_maskz_loadu_ps(k, r[b] + i) : _mm512_setzero_ps();
      const __m512 c = _mm512_roundscale_ps(_mm512_mul_ps(f, vinv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      bad |= _mm512_mask_cmp_ps_mask(k, _mm512_mul_ps(vs, c), f, _CMP_NEQ_UQ);
      bad |= _mm512_mask_cmp_ps_mask(k, c, lim, _CMP_GT_OQ) | _mm512_mask_cmp_ps_mask(k, c, nlim, _CMP_LT_OQ);
      v[b] = _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(c));
      if (sw == 2) v[b] = _mm_shuffle_epi8(v[b], sel);
    }
    quads_store(v, d0, d1, sw, i, m);
  }
  return bad != 0;
}


PACK_FN int nbl_i4b_quad_k8(int8_t *d0, int8_t *d1, int64_t sw, const int8_t *const r[4], int64_t n, int z) {
  const __m512i vz = _mm512_set1_epi32(z), qlo = _mm512_set1_epi32(-126), qhi = _mm512_set1_epi32(126);
  const __m512i clo = _mm512_set1_epi32(-128), chi = _mm512_set1_epi32(127);
  const __m128i sel = _mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15); /* even lanes first */
  __mmask16 bad = 0;
  for (int64_t i = 0; i < n; i += 16) {
    const int64_t m = n - i < 16 ? n - i : 16;
    const __mmask16 k = (__mmask16)(m >= 16 ? 0xffff : (1u << m) - 1);
    __m128i v[4];
    for (int b = 0; b < 4; b++) {
      if (!r[b]) {
        v[b] = _mm_setzero_si128();
        continue;
      }
      const __m512i q = _mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(k, r[b] + i));
      const __m512i c = _mm512_sub_epi32(q, vz);
      bad |= _mm512_mask_cmplt_epi32_mask(k, q, qlo) | _mm512_mask_cmpgt_epi32_mask(k, q, qhi) |
             _mm512_mask_cmplt_epi32_mask(k, c, clo) | _mm512_mask_cmpgt_epi32_mask(k, c, chi);
      v[b] = _mm512_cvtepi32_epi8(c);
      if (sw == 2) v[b] = _mm_shuffle_epi8(v[b], sel);
    }
    quads_store(v, d0, d1, sw, i, m);
  }
  return bad != 0;
}


PACK_FN int nbl_i4b_narrow_k8(int8_t *dst, const int8_t *src, int64_t n, int64_t sw, int z) {
  if (sw > 2) { /* (the stride-3+ layers: a few, short rows) */
    int bad = 0;
    for (int64_t i = 0; i < n; i++) {
      const int q = src[i * sw], c = q - z;
      bad |= q < -126 || q > 126 || c < -127 || c > 127;
      dst[i] = (int8_t)c;
    }
    return bad;
  }
  const __m512i vz = _mm512_set1_epi32(z), qlo = _mm512_set1_epi32(-126), qhi = _mm512_set1_epi32(126);
  const __m512i clo = _mm512_set1_epi32(-127), chi = _mm512_set1_epi32(127);
  __mmask16 bad = 0;
  for (int64_t i = 0; i < n; i += 16) {
    const int64_t m = n - i;
    const __mmask16 k = (__mmask16)(m >= 16 ? 0xffff : (1u << m) - 1);
    __m512i q;
    if (sw == 1) {
      q = _mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(k, src + i));
    } else { /* elements 2 i .. 2 i + 30 (the last one read: 2 (n - 1)): the even bytes */
      const int64_t e = 2 * m - 1;
      const __mmask32 k2 = (__mmask32)(e >= 32 ? 0xffffffffu : (1u << e) - 1);
      const __m256i w = _mm256_maskz_loadu_epi8(k2, src + 2 * i); /* 32 bytes: pairs (even, odd) */
      q = _mm512_srai_epi32(_mm512_slli_epi32(_mm512_cvtepu16_epi32(w), 24), 24); /* the even byte, signed */
    }
    const __m512i c = _mm512_sub_epi32(q, vz);
    bad |= _mm512_mask_cmplt_epi32_mask(k, q, qlo) | _mm512_mask_cmpgt_epi32_mask(k, q, qhi) |
           _mm512_mask_cmplt_epi32_mask(k, c, clo) | _mm512_mask_cmpgt_epi32_mask(k, c, chi);
    _mm_mask_storeu_epi8(dst + i, k, _mm512_cvtepi32_epi8(c));
  }
  return bad != 0;
}
#endif
