/* int4_backward.c - the integer GEMM of the 4-bit backward products: CPU
 * variant choice, code recovery (power-of-two and linear grids), operand
 * packing and the three micro-kernels (AVX-512 VNNI, AVX2, C). The layout
 * and the exactness argument are in int4_backward.h. */
#include "runtime/kernels/int4_backward.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/core/cpu.h"

#if defined(__x86_64__)
#define I4B_X86 1
#include <immintrin.h>

#include "runtime/kernels/simd16.h"
#else
#define I4B_X86 0
#endif

/* ------------------------------------------------------------------ CPU variant
 * Through the one CPU dispatch configuration (runtime/core/cpu.h): what the
 * CPU has, and what the cap in force on the calling thread allows. */

static const unsigned k_need[3] = {0, NBL_CPU_AVX2,
                                   NBL_CPU_AVX512F | NBL_CPU_AVX512BW | NBL_CPU_AVX512VL | NBL_CPU_AVX512VNNI};
static _Atomic int g_forced = -1;

int nbl_i4b_isa_supported(nbl_i4b_isa isa) {
  return isa >= NBL_I4B_SCALAR && isa <= NBL_I4B_AVX512 && (nbl_cpu_features() & k_need[isa]) == k_need[isa];
}

/* isa, or the best variant below it that the CPU has. */
static nbl_i4b_isa usable(int isa) {
  if (isa > NBL_I4B_AVX512) isa = NBL_I4B_AVX512;
  while (isa > NBL_I4B_SCALAR && !nbl_i4b_isa_supported((nbl_i4b_isa)isa)) isa--;
  return isa < NBL_I4B_SCALAR ? NBL_I4B_SCALAR : (nbl_i4b_isa)isa;
}

nbl_i4b_isa nbl_i4b_best_isa(void) {
  int f = atomic_load(&g_forced);
  if (f >= 0) return usable(f);
  const unsigned ok = nbl_cpu_allowed();
  return (ok & k_need[NBL_I4B_AVX512]) == k_need[NBL_I4B_AVX512] ? NBL_I4B_AVX512
         : (ok & k_need[NBL_I4B_AVX2]) == k_need[NBL_I4B_AVX2]     ? NBL_I4B_AVX2
                                                                  : NBL_I4B_SCALAR;
}

void nbl_i4b_set_isa(int isa) { atomic_store(&g_forced, isa < 0 ? -1 : isa); }

const char *nbl_i4b_isa_name(nbl_i4b_isa isa) {
  switch (isa) {
  case NBL_I4B_AVX512: return "avx512";
  case NBL_I4B_AVX2: return "avx2";
  default: return "scalar";
  }
}

/* ------------------------------------------------------------------ codes
 * Each variant computes the same integers with the same float operations
 * (exact bit tests; x * inv, rint to nearest-even and scale * c are single
 * IEEE operations in every variant), so validity and codes agree. */

/* Pass 1 of the power-of-two codes over x[i0, n): *bad, and the exponent range of the non-zero elements. */
static void pow2_scan_c(const float *x, int64_t i0, int64_t n, uint32_t mant, uint32_t *emin, uint32_t *emax,
                        uint32_t *bad) {
  for (int64_t i = i0; i < n; i++) {
    uint32_t a;
    memcpy(&a, x + i, 4);
    a &= 0x7fffffffu;
    uint32_t e = a >> 23, nz = a != 0;
    *bad |= nz & (((a & 0x7fffffu) != mant) | (e == 0) | (e == 255));
    uint32_t lo = nz ? e : 255, hi = nz ? e : 0;
    *emin = lo < *emin ? lo : *emin;
    *emax = hi > *emax ? hi : *emax;
  }
}

static void pow2_codes_c(const float *x, int64_t i0, int64_t n, uint32_t emin, int16_t *q) {
  for (int64_t i = i0; i < n; i++) {
    uint32_t a;
    memcpy(&a, x + i, 4);
    uint32_t m = a & 0x7fffffffu;
    int32_t c = m ? (int32_t)1 << ((m >> 23) - emin) : 0;
    q[i] = (int16_t)(a >> 31 ? -c : c);
  }
}

/* Linear codes of x[i0, n): 0, or -1 at the first element off the grid. */
static int linear_codes_c(const float *x, int64_t i0, int64_t n, float scale, float inv, int16_t *q, int32_t *mx) {
  for (int64_t i = i0; i < n; i++) {
    float r = rintf(x[i] * inv);
    if (!(fabsf(r) <= (float)NBL_I4B_MAX_CODE)) return -1; /* NaN, Inf, out of range */
    int32_t c = (int32_t)r;
    if (scale * (float)c != x[i]) return -1;
    int32_t a = c < 0 ? -c : c;
    *mx = a > *mx ? a : *mx;
    if (q) q[i] = (int16_t)c;
  }
  return 0;
}

#if I4B_X86
__attribute__((target("avx512f,avx512bw"))) static int64_t pow2_scan_512(const float *x, int64_t i0, int64_t n,
                                                                          uint32_t mant, uint32_t *emin,
                                                                          uint32_t *emax, uint32_t *bad) {
  const __m512i vabs = _mm512_set1_epi32(0x7fffffff), vm = _mm512_set1_epi32(0x7fffff),
                vmant = _mm512_set1_epi32((int)mant), v255 = _mm512_set1_epi32(255), z = _mm512_setzero_si512();
  __m512i lo = _mm512_set1_epi32((int)*emin), hi = _mm512_set1_epi32((int)*emax);
  __mmask16 b = 0;
  int64_t i = i0;
  for (; i + 16 <= n; i += 16) {
    __m512i a = _mm512_and_si512(_mm512_loadu_si512(x + i), vabs), e = _mm512_srli_epi32(a, 23);
    __mmask16 nz = _mm512_cmpneq_epi32_mask(a, z);
    b |= nz & (_mm512_cmpneq_epi32_mask(_mm512_and_si512(a, vm), vmant) | _mm512_cmpeq_epi32_mask(e, z) |
               _mm512_cmpeq_epi32_mask(e, v255));
    lo = _mm512_mask_min_epu32(lo, nz, lo, e);
    hi = _mm512_mask_max_epu32(hi, nz, hi, e);
  }
  *emin = _mm512_reduce_min_epu32(lo);
  *emax = _mm512_reduce_max_epu32(hi);
  *bad |= b != 0;
  return i;
}

/* pow2_scan_512 that also writes each element's sign and biased exponent
 * to q (+-e, 0 for a zero): one sweep over the floats, the codes then made
 * from q in place by pow2_exp_codes_512 (q stays in cache, x is read once) */
__attribute__((target("avx512f,avx512bw"))) static int64_t pow2_scan_exp_512(const float *x, int64_t i0, int64_t n,
                                                                              uint32_t mant, uint32_t *emin,
                                                                              uint32_t *emax, uint32_t *bad,
                                                                              int16_t *q) {
  const __m512i vabs = _mm512_set1_epi32(0x7fffffff), vm = _mm512_set1_epi32(0x7fffff),
                vmant = _mm512_set1_epi32((int)mant), v255 = _mm512_set1_epi32(255), z = _mm512_setzero_si512();
  __m512i lo = _mm512_set1_epi32((int)*emin), hi = _mm512_set1_epi32((int)*emax);
  __mmask16 b = 0;
  int64_t i = i0;
  for (; i + 16 <= n; i += 16) {
    const __m512i v = _mm512_loadu_si512(x + i), a = _mm512_and_si512(v, vabs), e = _mm512_srli_epi32(a, 23);
    const __mmask16 nz = _mm512_cmpneq_epi32_mask(a, z), neg = _mm512_cmplt_epi32_mask(v, z);
    b |= nz & (_mm512_cmpneq_epi32_mask(_mm512_and_si512(a, vm), vmant) | _mm512_cmpeq_epi32_mask(e, z) |
               _mm512_cmpeq_epi32_mask(e, v255));
    lo = _mm512_mask_min_epu32(lo, nz, lo, e);
    hi = _mm512_mask_max_epu32(hi, nz, hi, e);
    const __m512i t = _mm512_mask_sub_epi32(_mm512_maskz_mov_epi32(nz, e), neg & nz, z, e);
    _mm256_storeu_si256((__m256i *)(q + i), _mm512_cvtepi32_epi16(t));
  }
  *emin = _mm512_reduce_min_epu32(lo);
  *emax = _mm512_reduce_max_epu32(hi);
  *bad |= b != 0;
  return i;
}

/* q[i] = +-e (pow2_scan_exp_512) -> the code +-2^(e - emin), i in [i0, n);
 * every e of a valid grid is in [emin, emin + 14] */
__attribute__((target("avx512f,avx512bw"))) static void pow2_exp_codes_512(int16_t *q, int64_t i0, int64_t n,
                                                                           uint32_t emin) {
  const __m512i one = _mm512_set1_epi16(1), ve = _mm512_set1_epi16((short)emin), z = _mm512_setzero_si512();
  for (int64_t i = i0; i < n; i += 32) {
    const __mmask32 k = n - i >= 32 ? ~(__mmask32)0 : (((__mmask32)1 << (n - i)) - 1);
    const __m512i t = _mm512_maskz_loadu_epi16(k, q + i);
    const __mmask32 nz = _mm512_cmpneq_epi16_mask(t, z), neg = _mm512_cmplt_epi16_mask(t, z);
    __m512i c = _mm512_maskz_sllv_epi16(nz, one, _mm512_sub_epi16(_mm512_abs_epi16(t), ve));
    c = _mm512_mask_sub_epi16(c, neg, z, c);
    _mm512_mask_storeu_epi16(q + i, k, c);
  }
}

__attribute__((target("avx512f,avx512bw"))) static int64_t pow2_codes_512(const float *x, int64_t i0, int64_t n,
                                                                           uint32_t emin, int16_t *q) {
  const __m512i vabs = _mm512_set1_epi32(0x7fffffff), one = _mm512_set1_epi32(1),
                ve = _mm512_set1_epi32((int)emin), z = _mm512_setzero_si512();
  int64_t i = i0;
  for (; i + 16 <= n; i += 16) {
    __m512i v = _mm512_loadu_si512(x + i), a = _mm512_and_si512(v, vabs);
    __mmask16 nz = _mm512_cmpneq_epi32_mask(a, z), neg = _mm512_cmplt_epi32_mask(v, z);
    __m512i c = _mm512_maskz_sllv_epi32(nz, one, _mm512_sub_epi32(_mm512_srli_epi32(a, 23), ve));
    c = _mm512_mask_sub_epi32(c, neg, z, c);
    _mm256_storeu_si256((__m256i *)(q + i), _mm512_cvtepi32_epi16(c));
  }
  return i;
}

__attribute__((target("avx512f,avx512bw"))) static int64_t linear_codes_512(const float *x, int64_t i0, int64_t n,
                                                                             float scale, float inv, int16_t *q,
                                                                             int32_t *mx, int *bad) {
  const __m512 vinv = _mm512_set1_ps(inv), vs = _mm512_set1_ps(scale), vmax = _mm512_set1_ps((float)NBL_I4B_MAX_CODE);
  const __m512i absm = _mm512_set1_epi32(0x7fffffff);
  __m512i m = _mm512_setzero_si512();
  __mmask16 b = 0;
  int64_t i = i0;
  for (; i + 16 <= n; i += 16) {
    __m512 v = _mm512_loadu_ps(x + i);
    __m512 r = _mm512_roundscale_ps(_mm512_mul_ps(v, vinv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 ra = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(r), absm));
    __mmask16 in = _mm512_cmp_ps_mask(ra, vmax, _CMP_LE_OQ);
    __m512i c = _mm512_maskz_cvtps_epi32(in, r);
    __mmask16 eq = _mm512_cmp_ps_mask(_mm512_mul_ps(vs, _mm512_cvtepi32_ps(c)), v, _CMP_EQ_OQ);
    b |= (__mmask16)~(in & eq);
    m = _mm512_max_epi32(m, _mm512_abs_epi32(c));
    if (q) _mm256_storeu_si256((__m256i *)(q + i), _mm512_cvtepi32_epi16(c));
  }
  int32_t r = _mm512_reduce_max_epi32(m);
  *mx = r > *mx ? r : *mx;
  *bad |= b != 0;
  return i;
}

__attribute__((target("avx2"))) static int64_t pow2_scan_256(const float *x, int64_t i0, int64_t n, uint32_t mant,
                                                             uint32_t *emin, uint32_t *emax, uint32_t *bad) {
  const __m256i vabs = _mm256_set1_epi32(0x7fffffff), vm = _mm256_set1_epi32(0x7fffff),
                vmant = _mm256_set1_epi32((int)mant), v255 = _mm256_set1_epi32(255), z = _mm256_setzero_si256();
  __m256i lo = _mm256_set1_epi32((int)*emin), hi = _mm256_set1_epi32((int)*emax), b = z;
  int64_t i = i0;
  for (; i + 8 <= n; i += 8) {
    __m256i a = _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(x + i)), vabs), e = _mm256_srli_epi32(a, 23);
    __m256i zero = _mm256_cmpeq_epi32(a, z); /* all ones where a == 0 */
    __m256i off = _mm256_or_si256(
        _mm256_or_si256(_mm256_andnot_si256(_mm256_cmpeq_epi32(_mm256_and_si256(a, vm), vmant), _mm256_set1_epi32(-1)),
                        _mm256_cmpeq_epi32(e, z)),
        _mm256_cmpeq_epi32(e, v255));
    b = _mm256_or_si256(b, _mm256_andnot_si256(zero, off));
    lo = _mm256_min_epu32(lo, _mm256_blendv_epi8(e, v255, zero));
    hi = _mm256_max_epu32(hi, _mm256_andnot_si256(zero, e));
  }
  uint32_t l[8], h[8];
  _mm256_storeu_si256((__m256i *)l, lo);
  _mm256_storeu_si256((__m256i *)h, hi);
  for (int k = 0; k < 8; k++) {
    *emin = l[k] < *emin ? l[k] : *emin;
    *emax = h[k] > *emax ? h[k] : *emax;
  }
  *bad |= !_mm256_testz_si256(b, b);
  return i;
}

__attribute__((target("avx2"))) static int64_t pow2_codes_256(const float *x, int64_t i0, int64_t n, uint32_t emin,
                                                              int16_t *q) {
  const __m256i vabs = _mm256_set1_epi32(0x7fffffff), one = _mm256_set1_epi32(1), ve = _mm256_set1_epi32((int)emin),
                z = _mm256_setzero_si256();
  int64_t i = i0;
  for (; i + 8 <= n; i += 8) {
    __m256i v = _mm256_loadu_si256((const __m256i *)(x + i)), a = _mm256_and_si256(v, vabs);
    __m256i c = _mm256_andnot_si256(_mm256_cmpeq_epi32(a, z),
                                    _mm256_sllv_epi32(one, _mm256_sub_epi32(_mm256_srli_epi32(a, 23), ve)));
    c = _mm256_sign_epi32(c, _mm256_or_si256(v, one)); /* negate where the sign bit is set */
    __m128i p = _mm_packs_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1));
    _mm_storeu_si128((__m128i *)(q + i), p);
  }
  return i;
}

__attribute__((target("avx2"))) static int64_t linear_codes_256(const float *x, int64_t i0, int64_t n, float scale,
                                                                float inv, int16_t *q, int32_t *mx, int *bad) {
  const __m256 vinv = _mm256_set1_ps(inv), vs = _mm256_set1_ps(scale), vmax = _mm256_set1_ps((float)NBL_I4B_MAX_CODE);
  const __m256 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  __m256i m = _mm256_setzero_si256();
  __m256 ok = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
  int64_t i = i0;
  for (; i + 8 <= n; i += 8) {
    __m256 v = _mm256_loadu_ps(x + i);
    __m256 r = _mm256_round_ps(_mm256_mul_ps(v, vinv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 in = _mm256_cmp_ps(_mm256_and_ps(r, absm), vmax, _CMP_LE_OQ);
    __m256i c = _mm256_and_si256(_mm256_cvtps_epi32(r), _mm256_castps_si256(in));
    __m256 eq = _mm256_cmp_ps(_mm256_mul_ps(vs, _mm256_cvtepi32_ps(c)), v, _CMP_EQ_OQ);
    ok = _mm256_and_ps(ok, _mm256_and_ps(in, eq));
    m = _mm256_max_epi32(m, _mm256_abs_epi32(c));
    if (q)
      _mm_storeu_si128((__m128i *)(q + i), _mm_packs_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1)));
  }
  int32_t t[8];
  _mm256_storeu_si256((__m256i *)t, m);
  for (int k = 0; k < 8; k++) *mx = t[k] > *mx ? t[k] : *mx;
  *bad |= _mm256_movemask_ps(ok) != 0xff;
  return i;
}
#endif

int nbl_i4b_codes_pow2(nbl_i4b_isa isa, const float *x, int64_t n, int16_t *q, nbl_i4b_grid *g) {
  isa = usable(isa);
  int64_t i0 = 0;
  uint32_t b = 0;
  for (; i0 < n; i0++) {
    memcpy(&b, x + i0, 4);
    if (b & 0x7fffffffu) break;
  }
  if (i0 == n) { /* all zero */
    g->unit = 1.0f;
    g->maxabs = 0;
    if (q && n > 0) memset(q, 0, sizeof(int16_t) * (size_t)n);
    return 0;
  }
  const uint32_t mant = b & 0x7fffffu;
  uint32_t emin = 255, emax = 0, bad = 0;
  int64_t i = i0, iexp = i0; /* q[i0, iexp): +-exponents from the scan */
#if I4B_X86
  if (isa == NBL_I4B_AVX512 && q) i = iexp = pow2_scan_exp_512(x, i0, n, mant, &emin, &emax, &bad, q);
  else if (isa == NBL_I4B_AVX512) i = pow2_scan_512(x, i0, n, mant, &emin, &emax, &bad);
  else if (isa == NBL_I4B_AVX2) i = pow2_scan_256(x, i0, n, mant, &emin, &emax, &bad);
#endif
  pow2_scan_c(x, i, n, mant, &emin, &emax, &bad);
  if (bad || emax - emin > 14) return -1;
  uint32_t ub = (emin << 23) | mant;
  memcpy(&g->unit, &ub, 4);
  g->maxabs = (int32_t)1 << (emax - emin);
  if (q) {
    if (i0 > 0) memset(q, 0, sizeof(int16_t) * (size_t)i0);
    i = i0;
#if I4B_X86
    if (iexp > i0) pow2_exp_codes_512(q, i0, iexp, emin), i = iexp;
    else if (isa == NBL_I4B_AVX512) i = pow2_codes_512(x, i0, n, emin, q);
    else if (isa == NBL_I4B_AVX2) i = pow2_codes_256(x, i0, n, emin, q);
#endif
    pow2_codes_c(x, i, n, emin, q);
  }
  return 0;
}

#if I4B_X86
/* int8 codes to int16, 32 at a time: the integer of each code by table
 * lookup (vpermw over t16, indexed by code + 16: nbl_i4b_codes_log), or
 * without a table the code minus z (nbl_i4b_codes_int8); *bad set when a
 * |code| is past lim, *mx the largest |integer|. */
__attribute__((target("avx512f,avx512bw"))) static int64_t codes8_512(const int8_t *codes, int64_t n, int lim,
                                                                       const int16_t *t16, int z, int16_t *q,
                                                                       int32_t *mx, int *bad) {
  const __m512i tab = t16 ? _mm512_loadu_si512(t16) : _mm512_setzero_si512(), off = _mm512_set1_epi16(16);
  const __m512i vlim = _mm512_set1_epi16((short)lim), vz = _mm512_set1_epi16((short)z);
  __m512i m = _mm512_setzero_si512();
  __mmask32 b = 0;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m512i c = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(codes + i)));
    b |= _mm512_cmpgt_epi16_mask(_mm512_abs_epi16(c), vlim);
    const __m512i v = t16 ? _mm512_permutexvar_epi16(_mm512_add_epi16(c, off), tab) : _mm512_sub_epi16(c, vz);
    m = _mm512_max_epi16(m, _mm512_abs_epi16(v));
    _mm512_storeu_si512(q + i, v);
  }
  int16_t t[32];
  _mm512_storeu_si512(t, m);
  for (int k = 0; k < 32; k++) *mx = t[k] > *mx ? t[k] : *mx;
  *bad |= b != 0;
  return i;
}
#endif

#if I4B_X86
/* codes8_512 on AVX2, 32 codes at a time: the table lookup as two vpshufb
 * per byte half of the integers (the table's low and high bytes, entries
 * 0-15 and 16-31 chosen by bit 4 of code + 16), the halves interleaved. */
__attribute__((target("avx2"))) static int64_t codes8_256(const int8_t *codes, int64_t n, int lim, const int16_t *t16,
                                                          int z, int16_t *q, int32_t *mx, int *bad) {
  uint8_t tb[2][32] = {{0}};
  for (int k = 0; t16 && k < 32; k++) tb[0][k] = (uint8_t)((uint16_t)t16[k] & 0xff), tb[1][k] = (uint8_t)((uint16_t)t16[k] >> 8);
  __m256i tab[2][2];
  for (int h = 0; h < 2; h++)
    for (int j = 0; j < 2; j++) tab[h][j] = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(tb[h] + 16 * j)));
  const __m256i off = _mm256_set1_epi8(16), vlim = _mm256_set1_epi8((char)lim), vz = _mm256_set1_epi16((short)z);
  __m256i m = _mm256_setzero_si256(), b = _mm256_setzero_si256();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m256i c = _mm256_loadu_si256((const __m256i *)(codes + i));
    b = _mm256_or_si256(b, _mm256_xor_si256(_mm256_max_epu8(_mm256_abs_epi8(c), vlim), vlim)); /* |c| > lim */
    __m256i v0, v1;
    if (t16) {
      const __m256i idx = _mm256_add_epi8(c, off), sel = _mm256_slli_epi16(idx, 3); /* bit 4 to each byte's sign */
      const __m256i lo = _mm256_blendv_epi8(_mm256_shuffle_epi8(tab[0][0], idx), _mm256_shuffle_epi8(tab[0][1], idx), sel);
      const __m256i hi = _mm256_blendv_epi8(_mm256_shuffle_epi8(tab[1][0], idx), _mm256_shuffle_epi8(tab[1][1], idx), sel);
      const __m256i u0 = _mm256_unpacklo_epi8(lo, hi), u1 = _mm256_unpackhi_epi8(lo, hi);
      v0 = _mm256_permute2x128_si256(u0, u1, 0x20);
      v1 = _mm256_permute2x128_si256(u0, u1, 0x31);
    } else {
      v0 = _mm256_sub_epi16(_mm256_cvtepi8_epi16(_mm256_castsi256_si128(c)), vz);
      v1 = _mm256_sub_epi16(_mm256_cvtepi8_epi16(_mm256_extracti128_si256(c, 1)), vz);
    }
    m = _mm256_max_epi16(m, _mm256_max_epi16(_mm256_abs_epi16(v0), _mm256_abs_epi16(v1)));
    _mm256_storeu_si256((__m256i *)(q + i), v0);
    _mm256_storeu_si256((__m256i *)(q + i + 16), v1);
  }
  int16_t t[16];
  _mm256_storeu_si256((__m256i *)t, m);
  for (int k = 0; k < 16; k++) *mx = t[k] > *mx ? t[k] : *mx;
  *bad |= !_mm256_testz_si256(b, b);
  return i;
}

/* log_range_512 on AVX2, 32 bytes at a time. */
__attribute__((target("avx2"))) static int64_t log_range_256(const int8_t *codes, int64_t n, int *amin, int *amax) {
  __m256i hi = _mm256_setzero_si256(), lo = _mm256_set1_epi8(-1), z = _mm256_setzero_si256();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m256i a = _mm256_abs_epi8(_mm256_loadu_si256((const __m256i *)(codes + i))); /* unsigned: |-128| = 128 */
    hi = _mm256_max_epu8(hi, a);
    lo = _mm256_min_epu8(lo, _mm256_or_si256(a, _mm256_cmpeq_epi8(a, z))); /* zeros as 255 */
  }
  uint8_t h[32], l[32];
  _mm256_storeu_si256((__m256i *)h, hi);
  _mm256_storeu_si256((__m256i *)l, lo);
  for (int k = 0; k < 32; k++) {
    *amax = h[k] > *amax ? h[k] : *amax;
    *amin = l[k] < *amin ? l[k] : *amin;
  }
  return i;
}
#endif

#if I4B_X86
/* The check of nbl_i4b_codes_log without q: the range of |codes| present
 * (nonzero ones), 64 bytes at a time; elements [0, returned) scanned. */
__attribute__((target("avx512f,avx512bw"))) static int64_t log_range_512(const int8_t *codes, int64_t n, int *amin,
                                                                          int *amax) {
  __m512i hi = _mm512_setzero_si512(), lo = _mm512_set1_epi8(-1), z = _mm512_setzero_si512();
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    const __m512i a = _mm512_abs_epi8(_mm512_loadu_si512(codes + i)); /* unsigned: |-128| = 128 */
    hi = _mm512_max_epu8(hi, a);
    lo = _mm512_min_epu8(lo, _mm512_mask_mov_epi8(a, _mm512_cmpeq_epi8_mask(a, z), _mm512_set1_epi8(-1)));
  }
  uint8_t h[64], l[64];
  _mm512_storeu_si512(h, hi);
  _mm512_storeu_si512(l, lo);
  for (int k = 0; k < 64; k++) {
    *amax = h[k] > *amax ? h[k] : *amax;
    *amin = l[k] < *amin ? l[k] : *amin;
  }
  return i;
}
#endif

int nbl_i4b_codes_log(nbl_i4b_isa isa, const int8_t *codes, int64_t n, int L, const int32_t lut[32], int16_t *q,
                      int32_t *maxabs) {
  if (L < 1 || L > 15) return -1;
  int16_t t16[32] = {0};
  for (int c = -L; c <= L; c++) {
    const int32_t v = lut[c + 16];
    if (v > NBL_I4B_MAX_CODE || v < -NBL_I4B_MAX_CODE) return -1;
    t16[c + 16] = (int16_t)v;
  }
  isa = usable(isa);
  int32_t mx = 0;
  int bad = 0;
  int64_t i = 0;
  if (!q) { /* check only: the range of |code| present, then the bound of its integers */
    int amin = 255, amax = 0;
#if I4B_X86
    if (isa == NBL_I4B_AVX512) i = log_range_512(codes, n, &amin, &amax);
    else if (isa == NBL_I4B_AVX2) i = log_range_256(codes, n, &amin, &amax);
#endif
    for (; i < n; i++) {
      const int a = codes[i] < 0 ? -codes[i] : codes[i];
      amax = a > amax ? a : amax;
      if (a) amin = a < amin ? a : amin;
    }
    if (amax > L) return -1;
    for (int a = amin; a <= amax; a++) mx = abs(t16[a + 16]) > mx ? abs(t16[a + 16]) : mx;
    *maxabs = mx;
    return 0;
  }
#if I4B_X86
  if (isa == NBL_I4B_AVX512) i = codes8_512(codes, n, L, t16, 0, q, &mx, &bad);
  else if (isa == NBL_I4B_AVX2) i = codes8_256(codes, n, L, t16, 0, q, &mx, &bad);
#endif
  for (; i < n; i++) {
    const int c = codes[i];
    if (c < -L || c > L) return -1;
    const int32_t a = t16[c + 16] < 0 ? -t16[c + 16] : t16[c + 16];
    q[i] = t16[c + 16];
    mx = a > mx ? a : mx;
  }
  if (bad) return -1;
  *maxabs = mx;
  return 0;
}

int nbl_i4b_codes_int8(nbl_i4b_isa isa, const int8_t *codes, int64_t n, int zero, int16_t *q, int32_t *maxabs) {
  if (zero < -128 || zero > 127) return -1;
  isa = usable(isa);
  int32_t mx = 0;
  int bad = 0;
  int64_t i = 0;
#if I4B_X86
  if (isa == NBL_I4B_AVX512) i = codes8_512(codes, n, 126, NULL, zero, q, &mx, &bad);
  else if (isa == NBL_I4B_AVX2) i = codes8_256(codes, n, 126, NULL, zero, q, &mx, &bad);
#endif
  for (; i < n; i++) {
    const int c = codes[i], v = c - zero, a = v < 0 ? -v : v;
    bad |= c < -126 || c > 126;
    q[i] = (int16_t)v;
    mx = a > mx ? a : mx;
  }
  if (bad) return -1;
  *maxabs = mx;
  return 0;
}

int nbl_i4b_codes_linear(nbl_i4b_isa isa, const float *x, int64_t n, float scale, int16_t *q, nbl_i4b_grid *g) {
  if (!(scale > 0.0f) || !isfinite(scale)) return -1;
  isa = usable(isa);
  const float inv = 1.0f / scale;
  int32_t mx = 0;
  int bad = 0;
  int64_t i = 0;
#if I4B_X86
  if (isa == NBL_I4B_AVX512) i = linear_codes_512(x, 0, n, scale, inv, q, &mx, &bad);
  else if (isa == NBL_I4B_AVX2) i = linear_codes_256(x, 0, n, scale, inv, q, &mx, &bad);
#endif
  if (bad || linear_codes_c(x, i, n, scale, inv, q, &mx)) return -1;
  g->unit = scale;
  g->maxabs = mx;
  return 0;
}

int64_t nbl_i4b_kchunk(int32_t maxa, int32_t maxb) {
  int64_t p = (int64_t)(maxa > 0 ? maxa : 1) * (int64_t)(maxb > 0 ? maxb : 1);
  int64_t k = ((int64_t)INT32_MAX / p) & ~(int64_t)1;
  return k < 2 ? 2 : k;
}

/* ------------------------------------------------------------------ packing */

int nbl_i4b_panels_reserve(nbl_i4b_panels *b, int64_t K, int64_t N) {
  b->K = K;
  b->N = N;
  b->Kp = (K + 1) & ~(int64_t)1;
  b->np = (N + NBL_I4B_NR - 1) / NBL_I4B_NR;
  size_t need = (size_t)(b->np * b->Kp * NBL_I4B_NR);
  if (need < 32) need = 32;
  if (need > b->cap) {
    free(b->p);
    size_t bytes = (need * sizeof(int16_t) + 63) & ~(size_t)63;
    b->p = aligned_alloc(64, bytes);
    b->cap = b->p ? need : 0;
    if (!b->p) return -1;
  }
  return 0;
}

void nbl_i4b_panels_free(nbl_i4b_panels *b) {
  free(b->p);
  memset(b, 0, sizeof *b);
}

#if I4B_X86
/* Row k of a panel's source: rows[k] when rows is given (nbl_i4b_pack_ptrs),
 * else src + k * sk (nbl_i4b_pack). */
static inline const int16_t *src_row(const int16_t *const *rows, const int16_t *src, int64_t sk, int64_t k) {
  return rows ? rows[k] : src + k * sk;
}

/* Panel columns [n0, n0 + nc) (nc <= 16; the other lanes 0), pairs [0, jn):
 * rows 2j and 2j+1 (src_row) interleaved, one vpermw per pair. */
__attribute__((target("avx512f,avx512bw,avx512vl"))) static void pack_rows_interleave_512(
    const int16_t *const *rows, const int16_t *src, int64_t sk, int64_t n0, int nc, int64_t jn, int16_t *dst) {
  const __mmask16 cm = (__mmask16)((1u << nc) - 1);
  static const int16_t idx[32] __attribute__((aligned(64))) = {
      0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23,
      8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  const __m512i perm = _mm512_load_si512(idx);
  for (int64_t j = 0; j < jn; j++) {
    __m256i a = _mm256_maskz_loadu_epi16(cm, src_row(rows, src, sk, 2 * j) + n0);
    __m256i c = _mm256_maskz_loadu_epi16(cm, src_row(rows, src, sk, 2 * j + 1) + n0);
    __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(a), c, 1);
    _mm512_store_si512(dst + 32 * j, _mm512_permutexvar_epi16(perm, v));
  }
}

__attribute__((target("avx512f,avx512bw"))) static int64_t pack_units_transpose_512(
    const int16_t *src, int64_t sn, int64_t n0, int nc, int64_t jn, int16_t *dst) {
  int64_t j = 0;
  for (; j + 16 <= jn; j += 16) {
    __m512 r[16];
    for (int l = 0; l < 16; l++)
      r[l] = l < nc ? _mm512_loadu_ps((const float *)(const void *)(src + (n0 + l) * sn + 2 * j)) : _mm512_setzero_ps();
    nbl_transpose16(r);
    for (int i = 0; i < 16; i++) _mm512_store_ps((float *)(void *)(dst + 32 * (j + i)), r[i]);
  }
  return j;
}

/* AVX2: the same interleave, 16 columns per pair from two 256-bit rows. */
__attribute__((target("avx2"))) static void pack_rows_interleave_256(const int16_t *const *rows, const int16_t *src,
                                                                     int64_t sk, int64_t n0, int64_t jn, int16_t *dst) {
  for (int64_t j = 0; j < jn; j++) {
    __m256i a = _mm256_loadu_si256((const __m256i *)(src_row(rows, src, sk, 2 * j) + n0));
    __m256i c = _mm256_loadu_si256((const __m256i *)(src_row(rows, src, sk, 2 * j + 1) + n0));
    __m256i lo = _mm256_unpacklo_epi16(a, c), hi = _mm256_unpackhi_epi16(a, c);
    _mm256_store_si256((__m256i *)(dst + 32 * j), _mm256_permute2x128_si256(lo, hi, 0x20));
    _mm256_store_si256((__m256i *)(dst + 32 * j + 16), _mm256_permute2x128_si256(lo, hi, 0x31));
  }
}

/* AVX2: the unit transpose in 8 x 8 blocks (two per 16-column panel). */
__attribute__((target("avx2"))) static int64_t pack_units_transpose_256(const int16_t *src, int64_t sn,
                                                                        int64_t n0, int nc, int64_t jn, int16_t *dst) {
  int64_t j = 0;
  for (; j + 8 <= jn; j += 8)
    for (int h = 0; h < 2; h++) {
      __m256i r[8], t[8], u[8];
      for (int l = 0; l < 8; l++)
        r[l] = 8 * h + l < nc ? _mm256_loadu_si256((const __m256i *)(src + (n0 + 8 * h + l) * sn + 2 * j))
                              : _mm256_setzero_si256();
      for (int l = 0; l < 8; l += 2) {
        t[l] = _mm256_unpacklo_epi32(r[l], r[l + 1]);
        t[l + 1] = _mm256_unpackhi_epi32(r[l], r[l + 1]);
      }
      for (int l = 0; l < 8; l += 4) {
        u[l] = _mm256_unpacklo_epi64(t[l], t[l + 2]);
        u[l + 1] = _mm256_unpackhi_epi64(t[l], t[l + 2]);
        u[l + 2] = _mm256_unpacklo_epi64(t[l + 1], t[l + 3]);
        u[l + 3] = _mm256_unpackhi_epi64(t[l + 1], t[l + 3]);
      }
      for (int i = 0; i < 4; i++) {
        _mm256_store_si256((__m256i *)(dst + 32 * (j + i) + 16 * h), _mm256_permute2x128_si256(u[i], u[i + 4], 0x20));
        _mm256_store_si256((__m256i *)(dst + 32 * (j + i + 4) + 16 * h),
                           _mm256_permute2x128_si256(u[i], u[i + 4], 0x31));
      }
    }
  return j;
}
#endif

void nbl_i4b_pack(nbl_i4b_isa isa, const int16_t *src, int64_t sk, int64_t sn, nbl_i4b_panels *b) {
  const int64_t K = b->K, N = b->N, Kp = b->Kp, kfull = K / 2; /* pairs with both k < K */
  isa = usable(isa);
  for (int64_t P = 0; P < b->np; P++) {
    int16_t *dst = b->p + P * Kp * NBL_I4B_NR;
    const int64_t n0 = P * NBL_I4B_NR;
    int64_t j0 = 0; /* pairs [0, j0) done by a vector path */
#if I4B_X86
    const int nc = (int)(N - n0 < NBL_I4B_NR ? N - n0 : NBL_I4B_NR);
    if (isa != NBL_I4B_SCALAR && sn == 1 && (isa == NBL_I4B_AVX512 || nc == NBL_I4B_NR)) {
      if (isa == NBL_I4B_AVX512) pack_rows_interleave_512(NULL, src, sk, n0, nc, kfull, dst);
      else pack_rows_interleave_256(NULL, src, sk, n0, kfull, dst);
      j0 = kfull;
    } else if (isa != NBL_I4B_SCALAR && sk == 1) {
      j0 = isa == NBL_I4B_AVX512 ? pack_units_transpose_512(src, sn, n0, nc, kfull, dst)
                                 : pack_units_transpose_256(src, sn, n0, nc, kfull, dst);
    }
#endif
    for (int64_t j = j0; j < Kp / 2; j++)
      for (int l = 0; l < NBL_I4B_NR; l++)
        for (int t = 0; t < 2; t++) {
          int64_t k = 2 * j + t, n = n0 + l;
          dst[(j * NBL_I4B_NR + l) * 2 + t] = k < K && n < N ? src[k * sk + n * sn] : 0;
        }
  }
}

void nbl_i4b_pack_ptrs(nbl_i4b_isa isa, const int16_t *const *rows, nbl_i4b_panels *b) {
  const int64_t K = b->K, N = b->N, Kp = b->Kp, kfull = K / 2;
  isa = usable(isa);
  for (int64_t P = 0; P < b->np; P++) {
    int16_t *dst = b->p + P * Kp * NBL_I4B_NR;
    const int64_t n0 = P * NBL_I4B_NR;
    const int nc = (int)(N - n0 < NBL_I4B_NR ? N - n0 : NBL_I4B_NR);
    int64_t j0 = 0;
#if I4B_X86
    if (isa == NBL_I4B_AVX512) pack_rows_interleave_512(rows, NULL, 0, n0, nc, kfull, dst), j0 = kfull;
    else if (isa == NBL_I4B_AVX2 && nc == NBL_I4B_NR) pack_rows_interleave_256(rows, NULL, 0, n0, kfull, dst), j0 = kfull;
#endif
    for (int64_t j = j0; j < Kp / 2; j++)
      for (int l = 0; l < NBL_I4B_NR; l++)
        for (int t = 0; t < 2; t++) {
          int64_t k = 2 * j + t, n = n0 + l;
          dst[(j * NBL_I4B_NR + l) * 2 + t] = k < K && n < N ? rows[k][n] : 0;
        }
  }
}

void nbl_i4b_pack_rows(const int16_t *src, int64_t M, int64_t K, int64_t sm, int64_t sk, int16_t *dst,
                       int64_t lda) {
  for (int64_t m = 0; m < M; m++) {
    int16_t *d = dst + m * lda;
    const int16_t *s = src + m * sm;
    if (sk == 1) {
      if (K > 0) memcpy(d, s, sizeof(int16_t) * (size_t)K);
    } else {
      for (int64_t k = 0; k < K; k++) d[k] = s[k * sk];
    }
    for (int64_t k = K; k < lda; k++) d[k] = 0;
  }
}

/* ------------------------------------------------------------------ micro-kernels
 * T[r][c] (r < mr, c < 16 * np; row stride 32) = sum over pairs j < kp of
 * A[r][2j] * B[2j][c] + A[r][2j+1] * B[2j+1][c], B's pair j of panel p at
 * B + ps * p + 32 * j (packed panels), or at Bj[j] + boff + 32 * p (B's
 * pair rows by pointer, Bj not NULL: nbl_i4b_gemm_pairs). */

#define I4B_MR1 12 /* rows of a one-panel AVX-512 tile */

typedef void (*mk_fn)(const int16_t *const *A, int mr, const int16_t *B, int64_t ps, const int16_t *const *Bj,
                      int64_t boff, int np, int64_t kp, int32_t *T);

static void mk_scalar(const int16_t *const *A, int mr, const int16_t *B, int64_t ps, const int16_t *const *Bj,
                      int64_t boff, int np, int64_t kp, int32_t *T) {
  int32_t acc[NBL_I4B_MR][2 * NBL_I4B_NR];
  memset(acc, 0, sizeof acc);
  for (int64_t j = 0; j < kp; j++)
    for (int r = 0; r < mr; r++) {
      const int32_t a0 = A[r][2 * j], a1 = A[r][2 * j + 1];
      for (int p = 0; p < np; p++) {
        const int16_t *b = Bj ? Bj[j] + boff + 32 * p : B + p * ps + 32 * j;
        for (int l = 0; l < NBL_I4B_NR; l++) acc[r][p * 16 + l] += a0 * b[2 * l] + a1 * b[2 * l + 1];
      }
    }
  for (int r = 0; r < mr; r++) memcpy(T + r * 32, acc[r], sizeof(int32_t) * (size_t)(16 * np));
}

#if I4B_X86
static inline int32_t pair_at(const int16_t *p) {
  int32_t v;
  memcpy(&v, p, 4);
  return v;
}

__attribute__((target("avx512f,avx512bw,avx512vnni"), always_inline)) static inline void mk512_body(
    const int16_t *const *Ar, const int16_t *B, int64_t ps, const int16_t *const *Bj, int64_t boff, int64_t kp,
    int32_t *T, const int MR, const int NP, const int BP) {
  __m512i c[I4B_MR1][2];
#pragma GCC unroll 12
  for (int r = 0; r < MR; r++) c[r][0] = c[r][1] = _mm512_setzero_si512();
  for (int64_t j = 0; j < kp; j++) {
    const int16_t *bj = BP ? Bj[j] + boff : B + 32 * j;
    const __m512i b0 = BP ? _mm512_loadu_si512(bj) : _mm512_load_si512(bj);
    const __m512i b1 = NP != 2 ? b0 : BP ? _mm512_loadu_si512(bj + 32) : _mm512_load_si512(bj + ps);
#pragma GCC unroll 12
    for (int r = 0; r < MR; r++) {
      const __m512i a = _mm512_set1_epi32(pair_at(Ar[r] + 2 * j));
      c[r][0] = _mm512_dpwssd_epi32(c[r][0], a, b0);
      if (NP == 2) c[r][1] = _mm512_dpwssd_epi32(c[r][1], a, b1);
    }
  }
#pragma GCC unroll 12
  for (int r = 0; r < MR; r++) {
    _mm512_storeu_si512(T + r * 32, c[r][0]);
    if (NP == 2) _mm512_storeu_si512(T + r * 32 + 16, c[r][1]);
  }
}

__attribute__((target("avx512f,avx512bw,avx512vnni"))) static void mk_avx512(const int16_t *const *A, int mr,
                                                                             const int16_t *B, int64_t ps,
                                                                             const int16_t *const *Bj, int64_t boff,
                                                                             int np, int64_t kp, int32_t *T) {
#define MK512(R)                                                                   \
  case R:                                                                          \
    if (Bj) {                                                                      \
      if (np == 2) mk512_body(A, B, ps, Bj, boff, kp, T, R, 2, 1);                 \
      else mk512_body(A, B, ps, Bj, boff, kp, T, R, 1, 1);                         \
    } else if (np == 2) mk512_body(A, B, ps, Bj, boff, kp, T, R, 2, 0);            \
    else mk512_body(A, B, ps, Bj, boff, kp, T, R, 1, 0);                           \
    break;
#define MK512_1(R) /* one panel only */                                            \
  case R:                                                                          \
    if (Bj) mk512_body(A, B, ps, Bj, boff, kp, T, R, 1, 1);                        \
    else mk512_body(A, B, ps, Bj, boff, kp, T, R, 1, 0);                           \
    break;
  switch (mr) {
    MK512(1)
    MK512(2)
    MK512(3)
    MK512(4)
    MK512(5)
    MK512(6)
    MK512_1(7) /* 7..12 rows: one panel (gemm_run) */
    MK512_1(8)
    MK512_1(9)
    MK512_1(10)
    MK512_1(11)
    MK512_1(12)
  }
#undef MK512
#undef MK512_1
}

__attribute__((target("avx2"), always_inline)) static inline void mk256_body(const int16_t *const *Ar,
                                                                              const int16_t *B,
                                                                              const int16_t *const *Bj, int64_t boff,
                                                                              int64_t kp, int32_t *T, const int MR) {
  __m256i c[NBL_I4B_MR][2];
#pragma GCC unroll 6
  for (int r = 0; r < MR; r++) c[r][0] = c[r][1] = _mm256_setzero_si256();
  for (int64_t j = 0; j < kp; j++) {
    const int16_t *bj = Bj ? Bj[j] + boff : B + 32 * j;
    const __m256i b0 = _mm256_loadu_si256((const __m256i *)bj);
    const __m256i b1 = _mm256_loadu_si256((const __m256i *)(bj + 16));
#pragma GCC unroll 6
    for (int r = 0; r < MR; r++) {
      const __m256i a = _mm256_set1_epi32(pair_at(Ar[r] + 2 * j));
      c[r][0] = _mm256_add_epi32(c[r][0], _mm256_madd_epi16(a, b0));
      c[r][1] = _mm256_add_epi32(c[r][1], _mm256_madd_epi16(a, b1));
    }
  }
#pragma GCC unroll 6
  for (int r = 0; r < MR; r++) {
    _mm256_storeu_si256((__m256i *)(T + r * 32), c[r][0]);
    _mm256_storeu_si256((__m256i *)(T + r * 32 + 8), c[r][1]);
  }
}

/* One panel per call (np is always 1 for this variant). */
__attribute__((target("avx2"))) static void mk_avx2(const int16_t *const *A, int mr, const int16_t *B,
                                                     int64_t ps, const int16_t *const *Bj, int64_t boff, int np,
                                                     int64_t kp, int32_t *T) {
  (void)ps;
  (void)np;
#define MK256(R)                                  \
  case R:                                         \
    mk256_body(A, B, Bj, boff, kp, T, R);         \
    break;
  switch (mr) {
    MK256(1)
    MK256(2)
    MK256(3)
    MK256(4)
    MK256(5)
    MK256(6)
  }
#undef MK256
}
#endif

/* ------------------------------------------------------------------ driver */

#if I4B_X86
/* y[l] = (float)((double)t[l] * s) for l < nc (<= 32), 8 lanes per step. */
__attribute__((target("avx512f,avx512vl"))) static void scale_row_512(const int32_t *t, int nc, double s, float *y) {
  const __m512d vs = _mm512_set1_pd(s);
  for (int l = 0; l < nc; l += 8) {
    const __mmask8 m = (__mmask8)(nc - l >= 8 ? 0xff : (1u << (nc - l)) - 1);
    __m512d v = _mm512_mul_pd(_mm512_cvtepi32_pd(_mm256_maskz_loadu_epi32(m, t + l)), vs);
    _mm256_mask_storeu_ps(y + l, m, _mm512_cvtpd_ps(v));
  }
}

/* scale_row_512 on AVX2: whole groups of 8 as two of 4 doubles, the rest
 * one by one (the same double product rounded once). */
__attribute__((target("avx2"))) static void scale_row_256(const int32_t *t, int nc, double s, float *y) {
  const __m256d vs = _mm256_set1_pd(s);
  int l = 0;
  for (; l + 8 <= nc; l += 8) {
    const __m128 lo = _mm256_cvtpd_ps(_mm256_mul_pd(_mm256_cvtepi32_pd(_mm_loadu_si128((const __m128i *)(t + l))), vs));
    const __m128 hi = _mm256_cvtpd_ps(_mm256_mul_pd(_mm256_cvtepi32_pd(_mm_loadu_si128((const __m128i *)(t + l + 4))), vs));
    _mm256_storeu_ps(y + l, _mm256_set_m128(hi, lo));
  }
  for (; l < nc; l++) y[l] = (float)((double)t[l] * s);
}

/* y[l] = (float)((double)t[l] * s), l < nc, by the epilogue's vectors (vec 2 AVX-512, else AVX2). */
static void scale_row(int vec, const int32_t *t, int nc, double s, float *y) {
  if (vec == 2) scale_row_512(t, nc, s, y);
  else scale_row_256(t, nc, s, y);
}

/* rows r < mr of the tile (32 int32 each, nc <= 32 used) to c + r * ld. */
__attribute__((target("avx512f"))) static void store_rows_512(const int32_t *T, int mr, int nc, int32_t *c,
                                                               int64_t ld) {
  const __mmask16 m0 = (__mmask16)(nc >= 16 ? 0xffff : (1u << nc) - 1),
                  m1 = (__mmask16)(nc >= 32 ? 0xffff : nc > 16 ? (1u << (nc - 16)) - 1 : 0);
  for (int r = 0; r < mr; r++) {
    _mm512_mask_storeu_epi32(c + r * ld, m0, _mm512_loadu_si512(T + r * 32));
    if (m1) _mm512_mask_storeu_epi32(c + r * ld + 16, m1, _mm512_loadu_si512(T + r * 32 + 16));
  }
}
#endif

/* Write the tile's rows [0, mr) x columns [0, nc) (exact sums: T64 when not
 * NULL, else T) to rows m.. and columns n0.. of the sink. */
static void sink_tile(const nbl_i4b_sink *o, int64_t m, int mr, int64_t n0, int nc, const int32_t *T,
                      const int64_t *T64, int vec) {
  const int64_t ld = o->ldc;
  const int64_t sr = o->trans ? 1 : ld, sc = o->trans ? ld : 1; /* strides of rows and columns */
  const int64_t base = m * sr + n0 * sc;
  switch (o->kind) {
  case NBL_I4B_STORE32: {
    int32_t *c = (int32_t *)o->c + base;
#if I4B_X86
    if (vec == 2 && !T64 && sc == 1) {
      store_rows_512(T, mr, nc, c, sr);
      break;
    }
#endif
    for (int r = 0; r < mr; r++)
      if (!T64 && sc == 1) memcpy(c + r * sr, T + r * 32, sizeof(int32_t) * (size_t)nc);
      else
        for (int l = 0; l < nc; l++) c[r * sr + l * sc] = T64 ? (int32_t)T64[r * 32 + l] : T[r * 32 + l];
    break;
  }
  case NBL_I4B_ADD64: {
    int64_t *c = (int64_t *)o->c + base;
    for (int r = 0; r < mr; r++)
      for (int l = 0; l < nc; l++) c[r * sr + l * sc] += T64 ? T64[r * 32 + l] : T[r * 32 + l];
    break;
  }
  case NBL_I4B_SCALE_F32: {
    const double s = o->scale;
    if (o->wq > 0) { /* columns over a padded width: the runs of kept ones */
      float *c = (float *)o->c + m * ld;
      for (int l = 0; l < nc;) {
        const int64_t p = n0 + l, i = p / o->wq, j = p % o->wq;
        const int run = (int)(o->wq - j < nc - l ? o->wq - j : nc - l);
        const int keep = j < o->w ? (int)(o->w - j < run ? o->w - j : run) : 0;
        for (int r = 0; keep && r < mr; r++) {
          float *d = c + r * ld + i * o->w + j;
#if I4B_X86
          if (vec && !T64) {
            scale_row(vec, T + r * 32 + l, keep, s, d);
            continue;
          }
#endif
          for (int q = 0; q < keep; q++) d[q] = (float)((double)(T64 ? T64[r * 32 + l + q] : T[r * 32 + l + q]) * s);
        }
        l += run;
      }
      break;
    }
    float *c = (float *)o->c + base;
#if I4B_X86
    if (vec && !T64 && sc == 1) {
      for (int r = 0; r < mr; r++)
        scale_row(vec, T + r * 32, nc, s, c + r * sr);
      break;
    }
#endif
    for (int r = 0; r < mr; r++)
      for (int l = 0; l < nc; l++)
        c[r * sr + l * sc] = (float)((double)(T64 ? T64[r * 32 + l] : T[r * 32 + l]) * s);
    break;
  }
  }
}

typedef struct gemm_ctx {
  mk_fn mk;
  int vec; /* the epilogue's vectors: 2 AVX-512, 1 AVX2, 0 none */
  const int16_t *A;
  const int16_t *const *rows; /* or A's rows by pointer */
  int64_t lda, Kp, ps, kchunk, m1, n1;
  const nbl_i4b_panels *B;
  const int16_t *const *Bj; /* or B's pair rows by pointer (B NULL) */
  const nbl_i4b_sink *out;
  int mrmax; /* rows per tile: NBL_I4B_MR, or I4B_MR1 (AVX-512, one panel) */
} gemm_ctx;

/* The tile of rows m.. (up to g->mrmax) and columns n0.. (one or two panels). */
static void gemm_tile(const gemm_ctx *g, int64_t m, int64_t n0, int two) {
  int32_t T[I4B_MR1 * 32];
  int64_t T64[I4B_MR1 * 32];
  const int mr = (int)(g->m1 - m < g->mrmax ? g->m1 - m : g->mrmax);
  const int np = two && n0 + NBL_I4B_NR < g->n1 ? 2 : 1;
  const int nc = (int)(g->n1 - n0 < 16 * np ? g->n1 - n0 : 16 * np);
  const int16_t *Bp = g->Bj ? NULL : g->B->p + (n0 / NBL_I4B_NR) * g->ps, *Ar[I4B_MR1];
  const int64_t boff = 2 * n0; /* B's pair rows: column n0's pair */
  for (int r = 0; r < mr; r++) Ar[r] = g->rows ? g->rows[m + r] : g->A + (m + r) * g->lda;
  if (g->Kp <= g->kchunk) {
    g->mk(Ar, mr, Bp, g->ps, g->Bj, boff, np, g->Kp / 2, T);
    sink_tile(g->out, m, mr, n0, nc, T, NULL, g->vec);
    return;
  }
  memset(T64, 0, sizeof T64);
  for (int64_t k0 = 0; k0 < g->Kp; k0 += g->kchunk) {
    const int64_t kk = g->Kp - k0 < g->kchunk ? g->Kp - k0 : g->kchunk;
    const int16_t *Ak[I4B_MR1];
    for (int r = 0; r < mr; r++) Ak[r] = Ar[r] + k0;
    g->mk(Ak, mr, Bp ? Bp + k0 * NBL_I4B_NR : NULL, g->ps, g->Bj ? g->Bj + k0 / 2 : NULL, boff, np, kk / 2, T);
    for (int r = 0; r < mr; r++)
      for (int l = 0; l < nc; l++) T64[r * 32 + l] += T[r * 32 + l];
  }
  sink_tile(g->out, m, mr, n0, nc, NULL, T64, g->vec);
}

static void gemm_run(gemm_ctx *g, nbl_i4b_isa isa, int64_t m0, int64_t m1, int64_t n0, int64_t kchunk);

void nbl_i4b_gemm(nbl_i4b_isa isa, const int16_t *A, int64_t lda, int64_t m0, int64_t m1, int64_t n0, int64_t n1,
                  const nbl_i4b_panels *B, int64_t kchunk, const nbl_i4b_sink *out) {
  gemm_ctx g = {.mk = mk_scalar, .A = A, .lda = lda, .Kp = B->Kp, .ps = B->Kp * NBL_I4B_NR, .m1 = m1,
                .n1 = n1 < B->N ? n1 : B->N, .B = B, .out = out};
  gemm_run(&g, isa, m0, m1, n0, kchunk);
}

void nbl_i4b_gemm_rows(nbl_i4b_isa isa, const int16_t *const *rows, int64_t m0, int64_t m1, int64_t n0,
                       int64_t n1, const nbl_i4b_panels *B, int64_t kchunk, const nbl_i4b_sink *out) {
  gemm_ctx g = {.mk = mk_scalar, .rows = rows, .Kp = B->Kp, .ps = B->Kp * NBL_I4B_NR, .m1 = m1,
                .n1 = n1 < B->N ? n1 : B->N, .B = B, .out = out};
  gemm_run(&g, isa, m0, m1, n0, kchunk);
}

void nbl_i4b_gemm_pairs(nbl_i4b_isa isa, const int16_t *A, int64_t lda, int64_t m0, int64_t m1, int64_t n0,
                        int64_t n1, const int16_t *const *Bj, int64_t Kp, int64_t kchunk, const nbl_i4b_sink *out) {
  gemm_ctx g = {.mk = mk_scalar, .A = A, .lda = lda, .Kp = Kp, .ps = 0, .m1 = m1, .n1 = n1, .Bj = Bj, .out = out};
  gemm_run(&g, isa, m0, m1, n0, kchunk);
}

static void gemm_run(gemm_ctx *gp, nbl_i4b_isa isa, int64_t m0, int64_t m1, int64_t n0, int64_t kchunk) {
  gemm_ctx g = *gp;
  isa = usable(isa);
  int nr = NBL_I4B_NR;
#if I4B_X86
  if (isa == NBL_I4B_AVX512) g.mk = mk_avx512, nr = 2 * NBL_I4B_NR, g.vec = 2;
  else if (isa == NBL_I4B_AVX2) g.mk = mk_avx2, g.vec = 1;
#endif
  g.kchunk = kchunk & ~(int64_t)1;
  if (g.kchunk < 2) g.kchunk = 2;
  n0 -= n0 % NBL_I4B_NR;
  /* one panel of columns: tiles of 12 rows on AVX-512 (12 accumulators,
   * each B load shared by twice the rows as with 6) */
  g.mrmax = isa == NBL_I4B_AVX512 && g.n1 - n0 <= NBL_I4B_NR ? I4B_MR1 : NBL_I4B_MR;
  /* keep in cache whichever operand is reused: a short panel (all row
   * blocks run against it), else the row block (all panels run against it) */
  if (g.Kp * nr * (int64_t)sizeof(int16_t) <= 32768) {
    for (int64_t n = n0; n < g.n1; n += nr)
      for (int64_t m = m0; m < m1; m += g.mrmax) gemm_tile(&g, m, n, nr == 32);
  } else {
    for (int64_t m = m0; m < m1; m += g.mrmax)
      for (int64_t n = n0; n < g.n1; n += nr) gemm_tile(&g, m, n, nr == 32);
  }
}
