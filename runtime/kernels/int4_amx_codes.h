/* int4_amx_codes.h - the packing of X's codes for the AMX products
 * (int4_amx.c): from QuantizeInt4's floats (the codes recovered and
 * checked) or from its int8 codes output (runtime/formats/int4.h,
 * nbl_q4_codes8: the code minus the zero point). Internal to the kernels;
 * AVX-512 (F, BW, VL, DQ), x86-64 only: call only where the AMX path runs. */
#ifndef NBL_INT4_AMX_CODES_H
#define NBL_INT4_AMX_CODES_H

#include <stdint.h>

#if defined(__x86_64__)
#include <immintrin.h>

/* Four rows of 16 bytes interleaved into quads: byte 4 i + b of the result
 * is v[b][i] (the layout of the AMX tiles' K groups). */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"))) static inline __m512i
nbl_i4b_interleave4(const __m128i v[4]) {
  const __m128i t0 = _mm_unpacklo_epi8(v[0], v[1]), t1 = _mm_unpackhi_epi8(v[0], v[1]);
  const __m128i t2 = _mm_unpacklo_epi8(v[2], v[3]), t3 = _mm_unpackhi_epi8(v[2], v[3]);
  __m512i o = _mm512_castsi128_si512(_mm_unpacklo_epi16(t0, t2));
  o = _mm512_inserti32x4(o, _mm_unpackhi_epi16(t0, t2), 1);
  o = _mm512_inserti32x4(o, _mm_unpacklo_epi16(t1, t3), 2);
  return _mm512_inserti32x4(o, _mm_unpackhi_epi16(t1, t3), 3);
}

/* The codes of four rows of n values (r[b] NULL: zeros) as quads of bytes:
 * with sw == 1 to d0 (pixel i at 4 i); with sw == 2, the even pixels to d0
 * and the odd ones to d1, each at 4 (i / 2) (NULL: not stored).
 * nbl_i4b_quad_f takes floats, c = rint(v / sx), and returns 1 when a value
 * is off the grid (sx * c != v) or c past -128..127; nbl_i4b_quad_k8 takes
 * QuantizeInt4 codes q, c = q - z, and returns 1 when a q is not a code
 * (outside -126..126: the non-finite marks) or c past -128..127. */
int nbl_i4b_quad_f(int8_t *d0, int8_t *d1, int64_t sw, const float *const r[4], int64_t n, float sx);
int nbl_i4b_quad_k8(int8_t *d0, int8_t *d1, int64_t sw, const int8_t *const r[4], int64_t n, int z);

/* dst[i] = src[i * sw] - z, i < n (any sw >= 1), from QuantizeInt4 codes:
 * 1 when one is not a code (outside -126..126) or the difference past
 * -127..127 (then dst is partly written). */
int nbl_i4b_narrow_k8(int8_t *dst, const int8_t *src, int64_t n, int64_t sw, int z);
#endif

#endif /* NBL_INT4_AMX_CODES_H */
