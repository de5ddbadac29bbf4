/* log_quant.c - vectorized max scan, nearest and stochastic rounding of the
 * logarithmic quantizer; see runtime/kernels/log_quant.h. */
#include "runtime/kernels/log_quant.h"

#include "runtime/core/cpu.h"
#include "runtime/formats/int4.h"
#include "runtime/formats/log.h"

#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* The CPU's best variant, no cap: what a variant asked for is lowered to. */
static nbl_logq_isa cpu_best(void) {
  const unsigned f = nbl_cpu_features();
  return (f & NBL_CPU_AVX512F) ? NBL_LOGQ_AVX512 : (f & NBL_CPU_AVX2) ? NBL_LOGQ_AVX2 : NBL_LOGQ_SCALAR;
}

/* The variant to use: the runtime's one CPU dispatch (runtime/core/cpu.h),
 * the cap in force on the calling thread included. */
nbl_logq_isa nbl_logq_best_isa(void) {
  return nbl_cpu_has(NBL_CPU_AVX512F) ? NBL_LOGQ_AVX512 : nbl_cpu_has(NBL_CPU_AVX2) ? NBL_LOGQ_AVX2 : NBL_LOGQ_SCALAR;
}

int nbl_logq_isa_ok(nbl_logq_isa isa) { return isa <= cpu_best(); }

/* ------------------------------------------------------------------ scalar */

static float absmax_scalar(const float *x, size_t n) {
  float m = 0.0f;
  for (size_t i = 0; i < n; i++) {
    float a = fabsf(x[i]);
    if (a < INFINITY && a > m) m = a; /* NaN compares false */
  }
  return m;
}

static inline uint32_t bits_of(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}
static inline float float_of(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

static void nearest_scalar(const float *lev, const float *thr, int L, const float *x, float *y,
                           size_t n) {
  for (size_t i = 0; i < n; i++) {
    float v = x[i], a = fabsf(v);
    if (!(a < INFINITY)) { /* NaN, +-Inf */
      y[i] = v;
      continue;
    }
    float mag = 0.0f;
    for (int j = L - 1; j >= 0; j--)
      if (a >= thr[j]) mag = lev[j];
    int nz = a > 0.0f && a >= thr[L - 1];
    y[i] = nz ? float_of(bits_of(mag) | (bits_of(v) & 0x80000000u)) : 0.0f;
  }
}

/* nearest_scalar with the codes (see nbl_logq_nearest_codes) */
static void nearest_codes_scalar(const float *lev, const float *thr, int L, const float *x, float *y,
                                 signed char *codes, size_t n) {
  for (size_t i = 0; i < n; i++) {
    float v = x[i], a = fabsf(v);
    if (!(a < INFINITY)) { /* NaN, +-Inf */
      if (y) y[i] = v;
      codes[i] = (signed char)nbl_log_code8_nonfinite(v);
      continue;
    }
    int k = 0;
    for (int j = L - 1; j >= 0; j--)
      if (a >= thr[j]) k = j + 1;
    int nz = a > 0.0f && a >= thr[L - 1];
    if (y) y[i] = nz ? float_of(bits_of(lev[k - 1]) | (bits_of(v) & 0x80000000u)) : 0.0f;
    codes[i] = (signed char)(nz ? (bits_of(v) >> 31 ? -k : k) : 0);
  }
}

/* ------------------------------------------------------------------ AVX2 */

__attribute__((target("avx2"))) static float absmax_avx2(const float *x, size_t n) {
  const __m256 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256 inf = _mm256_set1_ps(INFINITY);
  __m256 m = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 a = _mm256_and_ps(_mm256_loadu_ps(x + i), absm);
    __m256 fin = _mm256_cmp_ps(a, inf, _CMP_LT_OQ);
    m = _mm256_max_ps(m, _mm256_and_ps(a, fin));
  }
  float t[8];
  _mm256_storeu_ps(t, m);
  float r = absmax_scalar(x + i, n - i);
  for (int k = 0; k < 8; k++)
    if (t[k] > r) r = t[k];
  return r;
}

__attribute__((target("avx2"))) static void nearest_avx2(const float *lev, const float *thr, int L,
                                                         const float *x, float *y, size_t n) {
  __m256 vl[15], vt[15];
  for (int j = 0; j < L; j++) {
    vl[j] = _mm256_set1_ps(lev[j]);
    vt[j] = _mm256_set1_ps(thr[j]);
  }
  const __m256 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256 sgnm = _mm256_castsi256_ps(_mm256_set1_epi32((int)0x80000000u));
  const __m256 inf = _mm256_set1_ps(INFINITY), zero = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 v = _mm256_loadu_ps(x + i);
    __m256 a = _mm256_and_ps(v, absm);
    __m256 mag = zero;
    for (int j = L - 1; j >= 0; j--) mag = _mm256_blendv_ps(mag, vl[j], _mm256_cmp_ps(a, vt[j], _CMP_GE_OQ));
    __m256 nz = _mm256_and_ps(_mm256_cmp_ps(a, zero, _CMP_GT_OQ), _mm256_cmp_ps(a, vt[L - 1], _CMP_GE_OQ));
    __m256 r = _mm256_and_ps(_mm256_or_ps(mag, _mm256_and_ps(v, sgnm)), nz);
    r = _mm256_blendv_ps(v, r, _mm256_cmp_ps(a, inf, _CMP_LT_OQ));
    _mm256_storeu_ps(y + i, r);
  }
  nearest_scalar(lev, thr, L, x + i, y + i, n - i);
}

/* ------------------------------------------------------------------ AVX-512 */

__attribute__((target("avx512f"))) static float absmax_avx512(const float *x, size_t n) {
  const __m512 inf = _mm512_set1_ps(INFINITY);
  __m512 m = _mm512_setzero_ps();
  for (size_t i = 0; i < n; i += 16) {
    __mmask16 k = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1);
    __m512 a = _mm512_abs_ps(_mm512_maskz_loadu_ps(k, x + i));
    m = _mm512_mask_max_ps(m, _mm512_cmp_ps_mask(a, inf, _CMP_LT_OQ), m, a);
  }
  return _mm512_reduce_max_ps(m);
}

/* The table lookup of nearest_avx512: thresholds spaced at least a factor 2
 * apart (every radix >= 2) leave at most one threshold in each binade
 * [2^e, 2^(e+1)). With et the exponent field of thr[0], the binade of a
 * normal a = |x| is bin = clamp(et - e(a), 0, 31); the magnitude is
 * hi[bin] when a >= t[bin] (the threshold in that binade, or 0 without
 * one) and lo[bin] otherwise, both levels (or 0: below every threshold).
 * Bin 0 also takes every a above thr[0]'s binade, bin 31 everything below
 * the last threshold's (zero and subnormals included). Returns 0, leaving
 * the compare chain to do the work, when the table cannot hold the grid:
 * a threshold or level that is not a normal float, thresholds not
 * decreasing, two in one binade, more than 30 binades between the first
 * and the last, or a first threshold below 2^-96. */
static int binade_table(const float *lev, const float *thr, int L, int *et, float t[32], float hi[32],
                        float lo[32], int32_t hk[32], int32_t lk[32]) {
  int e[15] = {0};
  for (int j = 0; j < L; j++) {
    if (!isnormal(thr[j]) || !isnormal(lev[j]) || thr[j] < 0 || (j && !(thr[j] < thr[j - 1]))) return 0;
    e[j] = (int)(bits_of(thr[j]) >> 23);
    if (j && e[j] == e[j - 1]) return 0;
  }
  *et = e[0];
  if (e[0] < 32 || e[0] - e[L - 1] > 30) return 0;
  int above = 0; /* the thresholds in the binades above this one */
  for (int b = 0; b < 32; b++) {
    int E = e[0] - b;
    while (above < L && e[above] > E) above++;
    hi[b] = above < L ? lev[above] : 0.0f;
    hk[b] = above < L ? above + 1 : 0; /* the codes of hi[b] and lo[b] */
    if (above < L && e[above] == E) {
      t[b] = thr[above];
      lo[b] = above + 1 < L ? lev[above + 1] : 0.0f;
      lk[b] = above + 1 < L ? above + 2 : 0;
    } else {
      t[b] = 0.0f;
      lo[b] = hi[b];
      lk[b] = hk[b];
    }
  }
  return 1;
}

/* The codes of 16 elements v in the binade lookup: the chosen table entry
 * (ge: the upper one), signed as v, the codes of NaN and +-Inf where v is
 * not finite (fin clear); stored to codes (lanes k). */
__attribute__((target("avx512f"))) static inline void codes_store(signed char *codes, __mmask16 k, __m512 v,
                                                                  __mmask16 ge, __mmask16 fin, __m512i bin,
                                                                  __m512i kl0, __m512i kl1, __m512i kh0,
                                                                  __m512i kh1) {
  const __m512i z = _mm512_setzero_si512();
  const __mmask16 neg = _mm512_cmplt_epi32_mask(_mm512_castps_si512(v), z);
  __m512i cd = _mm512_mask_mov_epi32(_mm512_permutex2var_epi32(kl0, bin, kl1), ge,
                                     _mm512_permutex2var_epi32(kh0, bin, kh1));
  cd = _mm512_mask_sub_epi32(cd, neg, z, cd);
  __m512i sp = _mm512_mask_blend_epi32(neg, _mm512_set1_epi32(NBL_LOG_CODE_POS_INF),
                                       _mm512_set1_epi32(NBL_LOG_CODE_NEG_INF));
  sp = _mm512_mask_mov_epi32(sp, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(NBL_LOG_CODE_NAN));
  cd = _mm512_mask_mov_epi32(sp, fin, cd);
  if (k == 0xFFFF) _mm_storeu_si128((__m128i *)codes, _mm512_cvtepi32_epi8(cd));
  else _mm512_mask_cvtepi32_storeu_epi8(codes, k, cd);
}

/* The binade lookup of the AVX2 kernels (the tables of binade_table): per
 * grid the threshold and the two candidate codes (hk | lk << 8) of each of
 * the 32 bins in four registers each, a 32-entry lookup as four vpermd and
 * three blends on the bin's bits 3 and 4; the levels by code (0 for code 0)
 * for Y. */
typedef struct bt_avx2 {
  int32_t et;
  int32_t top; /* the last bin: 15 when bins 15..31 are one entry (a grid of at most 15 binades), else 31 */
  int32_t t[32], e[32];
  float lv[16];
} bt_avx2;

static int bt_avx2_init(bt_avx2 *b, const float *lev, const float *thr, int L) {
  float tt[32], th[32], tl[32];
  int32_t hk[32], lk[32];
  int et;
  if (L < 1 || L > 15 || !binade_table(lev, thr, L, &et, tt, th, tl, hk, lk)) return 0;
  b->et = et;
  for (int k = 0; k < 32; k++) b->t[k] = (int32_t)bits_of(tt[k]), b->e[k] = hk[k] | lk[k] << 8;
  memset(b->lv, 0, sizeof b->lv);
  for (int j = 0; j < L; j++) b->lv[j + 1] = lev[j];
  b->top = 15;
  for (int k = 16; k < 32; k++)
    if (b->t[k] != b->t[15] || b->e[k] != b->e[15]) b->top = 31;
  return 1;
}

/* A 16-entry lookup for bins 0..15 (vpermd takes bits 0-2): two vpermd
 * and one blend on bit 3. */
__attribute__((target("avx2"))) static inline __m256i lut16_avx2(const int32_t *t, __m256i bin) {
  const __m256 b3 = _mm256_castsi256_ps(_mm256_slli_epi32(bin, 28));
  const __m256 p0 = _mm256_castsi256_ps(_mm256_permutevar8x32_epi32(_mm256_loadu_si256((const __m256i *)t), bin));
  const __m256 p1 = _mm256_castsi256_ps(_mm256_permutevar8x32_epi32(_mm256_loadu_si256((const __m256i *)(t + 8)), bin));
  return _mm256_castps_si256(_mm256_blendv_ps(p0, p1, b3));
}

/* The 32-entry lookup: the two halves' lut16_avx2, chosen by bit 4. */
__attribute__((target("avx2"))) static inline __m256i lut32_avx2(const int32_t *t, __m256i bin) {
  const __m256 b4 = _mm256_castsi256_ps(_mm256_slli_epi32(bin, 27));
  return _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(lut16_avx2(t, bin)),
                                              _mm256_castsi256_ps(lut16_avx2(t + 16, bin)), b4));
}

/* Eight int32 lanes (codes, within int8) stored as eight bytes. */
__attribute__((target("avx2"))) static inline void store8_avx2(signed char *dst, __m256i c) {
  const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1));
  _mm_storel_epi64((__m128i *)dst, _mm_packs_epi16(w, w));
}

/* Nearest rounding on G (1 or 2) grids by the binade lookup, eight elements
 * at a time, as codes2_avx512 and nearest_avx512 do it: codes[g] (NULL: not
 * written) and y[g] (y NULL or y[g] NULL: not written). Returns the number
 * of elements done (a multiple of 8); the caller finishes the tail. */
__attribute__((target("avx2"))) static size_t lookup_avx2(const bt_avx2 *b, int G, const float *x,
                                                          float *const *y, signed char *const *codes, size_t n) {
  const __m256i z = _mm256_setzero_si256(), m8 = _mm256_set1_epi32(8),
                mff = _mm256_set1_epi32(0xff), absm = _mm256_set1_epi32(0x7fffffff),
                infb = _mm256_set1_epi32(0x7f800000), sgnm = _mm256_set1_epi32((int)0x80000000u);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i v = _mm256_loadu_si256((const __m256i *)(x + i)), a = _mm256_and_si256(v, absm);
    const __m256i ex = _mm256_srli_epi32(a, 23), s = _mm256_srai_epi32(v, 31);
    const __m256i fin = _mm256_cmpgt_epi32(infb, a);
    const int all_fin = _mm256_movemask_ps(_mm256_castsi256_ps(fin)) == 0xff;
    for (int g = 0; g < G; g++) {
      const __m256i bin =
          _mm256_min_epi32(_mm256_max_epi32(_mm256_sub_epi32(_mm256_set1_epi32(b[g].et), ex), z), _mm256_set1_epi32(b[g].top));
      const __m256i t = b[g].top == 15 ? lut16_avx2(b[g].t, bin) : lut32_avx2(b[g].t, bin);
      const __m256i e = b[g].top == 15 ? lut16_avx2(b[g].e, bin) : lut32_avx2(b[g].e, bin);
      const __m256i lt = _mm256_srai_epi32(_mm256_sub_epi32(a, t), 31); /* -1 where |x| < t */
      const __m256i k = _mm256_and_si256(_mm256_srlv_epi32(e, _mm256_and_si256(lt, m8)), mff);
      if (codes && codes[g]) {
        __m256i cd = _mm256_sub_epi32(_mm256_xor_si256(k, s), s);
        if (!all_fin) { /* NaN, +-Inf: their marks */
          __m256i sp = _mm256_blendv_epi8(_mm256_set1_epi32(NBL_LOG_CODE_POS_INF), _mm256_set1_epi32(NBL_LOG_CODE_NEG_INF), s);
          sp = _mm256_blendv_epi8(sp, _mm256_set1_epi32(NBL_LOG_CODE_NAN), _mm256_cmpgt_epi32(a, infb));
          cd = _mm256_blendv_epi8(sp, cd, fin);
        }
        store8_avx2(codes[g] + i, cd);
      }
      if (y && y[g]) { /* the level of code k signed as x, +0 for code 0, x itself where not finite */
        const __m256 lv0 = _mm256_loadu_ps(b[g].lv), lv1 = _mm256_loadu_ps(b[g].lv + 8);
        const __m256 mag = _mm256_blendv_ps(_mm256_permutevar8x32_ps(lv0, k), _mm256_permutevar8x32_ps(lv1, k),
                                            _mm256_castsi256_ps(_mm256_slli_epi32(k, 28)));
        __m256i r = _mm256_or_si256(_mm256_castps_si256(mag), _mm256_and_si256(v, sgnm));
        r = _mm256_andnot_si256(_mm256_cmpeq_epi32(k, z), r);
        _mm256_storeu_si256((__m256i *)(y[g] + i), _mm256_blendv_epi8(v, r, fin));
      }
    }
  }
  return i;
}

/* The codes of two grids at once (nbl_logq_nearest_codes2; both grids
 * held by the binade lookup, else 0 and nothing written): |x|, its binade
 * and sign taken once for both; per grid one lookup of the threshold and
 * one of the two candidate codes (hk | lk << 8), the comparison |x| >= t as
 * the integers of the bit patterns (both non-negative: the same order),
 * the choice a shift by 8 or 0, the sign applied as (c ^ s) - s: the
 * compare-to-mask and select operations of codes_store left for the
 * vectors that hold a NaN or an infinity. */
__attribute__((target("avx512f"))) static int codes2_avx512(const float *const lev[2], const float *const thr[2],
                                                            const int L[2], const float *x,
                                                            signed char *const codes[2], size_t n) {
  float tt[2][32], th[32], tl[32];
  int32_t hk[32], lk[32], ek[2][32];
  int et[2];
  for (int g = 0; g < 2; g++) {
    if (!binade_table(lev[g], thr[g], L[g], &et[g], tt[g], th, tl, hk, lk)) return 0;
    for (int b = 0; b < 32; b++) ek[g][b] = hk[b] | lk[b] << 8;
  }
  const __m512i z = _mm512_setzero_si512(), top = _mm512_set1_epi32(31), m8 = _mm512_set1_epi32(8),
                mff = _mm512_set1_epi32(0xff), absm = _mm512_set1_epi32(0x7fffffff),
                infb = _mm512_set1_epi32(0x7f800000);
  __m512i vet[2], t0[2], t1[2], e0[2], e1[2];
  for (int g = 0; g < 2; g++) {
    vet[g] = _mm512_set1_epi32(et[g]);
    t0[g] = _mm512_castps_si512(_mm512_loadu_ps(tt[g]));
    t1[g] = _mm512_castps_si512(_mm512_loadu_ps(tt[g] + 16));
    e0[g] = _mm512_loadu_si512(ek[g]);
    e1[g] = _mm512_loadu_si512(ek[g] + 16);
  }
  for (size_t i = 0; i < n; i += 16) {
    const __mmask16 k = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1);
    const __m512i v = _mm512_maskz_loadu_epi32(k, x + i), a = _mm512_and_si512(v, absm);
    const __m512i ex = _mm512_srli_epi32(a, 23), s = _mm512_srai_epi32(v, 31);
    const __mmask16 fin = _mm512_cmplt_epi32_mask(a, infb);
#pragma GCC unroll 2
    for (int g = 0; g < 2; g++) {
      const __m512i bin = _mm512_min_epi32(_mm512_max_epi32(_mm512_sub_epi32(vet[g], ex), z), top);
      const __m512i t = _mm512_permutex2var_epi32(t0[g], bin, t1[g]), e = _mm512_permutex2var_epi32(e0[g], bin, e1[g]);
      const __m512i lt = _mm512_srai_epi32(_mm512_sub_epi32(a, t), 31); /* -1 where |x| < t */
      __m512i cd = _mm512_and_si512(_mm512_srlv_epi32(e, _mm512_and_si512(lt, m8)), mff);
      cd = _mm512_sub_epi32(_mm512_xor_si512(cd, s), s);
      if (fin != 0xFFFF) { /* NaN, +-Inf: their marks */
        __m512i sp = _mm512_mask_blend_epi32(_mm512_cmplt_epi32_mask(v, z), _mm512_set1_epi32(NBL_LOG_CODE_POS_INF),
                                             _mm512_set1_epi32(NBL_LOG_CODE_NEG_INF));
        sp = _mm512_mask_mov_epi32(sp, _mm512_cmpgt_epi32_mask(a, infb), _mm512_set1_epi32(NBL_LOG_CODE_NAN));
        cd = _mm512_mask_mov_epi32(sp, fin, cd);
      }
      if (k == 0xFFFF) _mm_storeu_si128((__m128i *)(codes[g] + i), _mm512_cvtepi32_epi8(cd));
      else _mm512_mask_cvtepi32_storeu_epi8(codes[g] + i, k, cd);
    }
  }
  return 1;
}

/* codes NULL: y only; else the codes too (nbl_logq_nearest_codes; y NULL:
 * the codes only) */
__attribute__((target("avx512f"))) static void nearest_avx512(const float *lev, const float *thr,
                                                              int L, const float *x, float *y,
                                                              signed char *codes, size_t n) {
  float tt[32], th[32], tl[32];
  int32_t hk[32], lk[32];
  int et;
  const __m512i sgnm = _mm512_set1_epi32((int)0x80000000u);
  const __m512 inf = _mm512_set1_ps(INFINITY), zero = _mm512_setzero_ps();
  if (binade_table(lev, thr, L, &et, tt, th, tl, hk, lk)) {
    const __m512 t0 = _mm512_loadu_ps(tt), t1 = _mm512_loadu_ps(tt + 16), h0 = _mm512_loadu_ps(th),
                 h1 = _mm512_loadu_ps(th + 16), l0 = _mm512_loadu_ps(tl), l1 = _mm512_loadu_ps(tl + 16);
    const __m512i vet = _mm512_set1_epi32(et), z = _mm512_setzero_si512(), top = _mm512_set1_epi32(31);
    const __m512i kh0 = _mm512_loadu_si512(hk), kh1 = _mm512_loadu_si512(hk + 16), kl0 = _mm512_loadu_si512(lk),
                  kl1 = _mm512_loadu_si512(lk + 16);
    for (size_t i = 0; i < n && !y; i += 16) { /* the codes only (the table's levels are normal: code 0 = level 0) */
      __mmask16 k = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1);
      __m512 v = _mm512_maskz_loadu_ps(k, x + i);
      __m512 a = _mm512_abs_ps(v);
      __m512i bin = _mm512_sub_epi32(vet, _mm512_srli_epi32(_mm512_castps_si512(a), 23));
      bin = _mm512_min_epi32(_mm512_max_epi32(bin, z), top);
      const __mmask16 ge = _mm512_cmp_ps_mask(a, _mm512_permutex2var_ps(t0, bin, t1), _CMP_GE_OQ);
      codes_store(codes + i, k, v, ge, _mm512_cmp_ps_mask(a, inf, _CMP_LT_OQ), bin, kl0, kl1, kh0, kh1);
    }
    for (size_t i = 0; i < n && y; i += 16) {
      __mmask16 k = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1);
      __m512 v = _mm512_maskz_loadu_ps(k, x + i);
      __m512 a = _mm512_abs_ps(v);
      __m512i bin = _mm512_sub_epi32(vet, _mm512_srli_epi32(_mm512_castps_si512(a), 23));
      bin = _mm512_min_epi32(_mm512_max_epi32(bin, z), top);
      const __mmask16 ge = _mm512_cmp_ps_mask(a, _mm512_permutex2var_ps(t0, bin, t1), _CMP_GE_OQ);
      __m512 mag = _mm512_mask_mov_ps(_mm512_permutex2var_ps(l0, bin, l1), ge, _mm512_permutex2var_ps(h0, bin, h1));
      __m512i r = _mm512_or_si512(_mm512_castps_si512(mag), _mm512_and_si512(_mm512_castps_si512(v), sgnm));
      const __mmask16 nz = _mm512_cmp_ps_mask(mag, zero, _CMP_NEQ_UQ), fin = _mm512_cmp_ps_mask(a, inf, _CMP_LT_OQ);
      __m512 out = _mm512_maskz_mov_ps(nz, _mm512_castsi512_ps(r));
      out = _mm512_mask_mov_ps(v, fin, out);
      _mm512_mask_storeu_ps(y + i, k, out);
      if (codes) codes_store(codes + i, k, v, ge, fin, bin, kl0, kl1, kh0, kh1); /* the chosen level's code */
    }
    return;
  }
  if (codes) { /* grids the table cannot hold (subnormal levels, ...): the plain loop */
    nearest_codes_scalar(lev, thr, L, x, y, codes, n);
    return;
  }
  __m512 vl[15], vt[15];
  for (int j = 0; j < L; j++) {
    vl[j] = _mm512_set1_ps(lev[j]);
    vt[j] = _mm512_set1_ps(thr[j]);
  }
  for (size_t i = 0; i < n; i += 16) {
    __mmask16 k = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1);
    __m512 v = _mm512_maskz_loadu_ps(k, x + i);
    __m512 a = _mm512_abs_ps(v);
    __m512 mag = zero;
    for (int j = L - 1; j >= 0; j--) mag = _mm512_mask_mov_ps(mag, _mm512_cmp_ps_mask(a, vt[j], _CMP_GE_OQ), vl[j]);
    __mmask16 nz = _mm512_cmp_ps_mask(a, zero, _CMP_GT_OQ) & _mm512_cmp_ps_mask(a, vt[L - 1], _CMP_GE_OQ);
    __m512i r = _mm512_or_si512(_mm512_castps_si512(mag), _mm512_and_si512(_mm512_castps_si512(v), sgnm));
    __m512 out = _mm512_maskz_mov_ps(nz, _mm512_castsi512_ps(r));
    out = _mm512_mask_mov_ps(v, _mm512_cmp_ps_mask(a, inf, _CMP_LT_OQ), out);
    _mm512_mask_storeu_ps(y + i, k, out);
  }
}

/* ------------------------------------------------------------------ stochastic */

/* nbl_log_codes / nbl_log_fake_quant's stochastic rounding (code_on in
 * runtime/formats/log.c) eight elements at a time, in double as there: with
 * a = |x| and the levels lev[] (the float levels as doubles, non-increasing),
 *   a >= lev[0]: code 1; a = 0: 0; else k = 1 + #{j in 1..L-1: a < lev[j]}
 *   (the first level below a), and with u = the element's draw,
 *   k = L (below the grid): code L when u < a / lev[L-1], else 0;
 *   else k when u < (a - lev[k]) / (lev[k-1] - lev[k]), else k + 1 (the
 *   format's a = lev[k] case is this one with the quotient 0);
 * the code signed as x (x < 0), Y its level as a float (+0 for code 0), a
 * NaN or Inf passed to Y and marked in the codes. The draws are
 * nbl_q4_uniform's splitmix64 of key ^ index in 64-bit lanes. */
__attribute__((target("avx512f,avx512dq,avx512bw,avx512vl"))) static inline __m512i splitmix_512(__m512i z) {
  z = _mm512_add_epi64(z, _mm512_set1_epi64((long long)0x9E3779B97F4A7C15ull));
  z = _mm512_mullo_epi64(_mm512_xor_si512(z, _mm512_srli_epi64(z, 30)), _mm512_set1_epi64((long long)0xBF58476D1CE4E5B9ull));
  z = _mm512_mullo_epi64(_mm512_xor_si512(z, _mm512_srli_epi64(z, 27)), _mm512_set1_epi64((long long)0x94D049BB133111EBull));
  return _mm512_xor_si512(z, _mm512_srli_epi64(z, 31));
}

__attribute__((target("avx512f,avx512dq,avx512bw,avx512vl"))) static void stochastic_avx512(
    const double lev[16], const float lf[16], int L, uint64_t key, const float *x, float *y, signed char *codes,
    size_t n, uint64_t index0) {
  const __m512d t0 = _mm512_loadu_pd(lev), t1 = _mm512_loadu_pd(lev + 8), top = _mm512_set1_pd(lev[0]);
  const __m512d m = _mm512_set1_pd(lev[L - 1]), inf = _mm512_set1_pd(INFINITY), zero = _mm512_setzero_pd();
  const __m512d scale = _mm512_set1_pd(1.0 / 9007199254740992.0);
  const __m512 lft = _mm512_loadu_ps(lf);
  const __m512i one = _mm512_set1_epi64(1), vL = _mm512_set1_epi64(L), vkey = _mm512_set1_epi64((long long)key);
  const __m512i lanes = _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7);
  for (size_t i = 0; i < n; i += 8) {
    const __mmask8 k8 = n - i >= 8 ? (__mmask8)0xFF : (__mmask8)((1u << (n - i)) - 1);
    const __m256 xf = _mm256_maskz_loadu_ps(k8, x + i);
    const __m512d xd = _mm512_cvtps_pd(xf), a = _mm512_abs_pd(xd);
    const __mmask8 fin = _mm512_cmp_pd_mask(a, inf, _CMP_LT_OQ), neg = _mm512_cmp_pd_mask(xd, zero, _CMP_LT_OQ);
    __m512i k = one;
    for (int j = 1; j < L; j++) k = _mm512_mask_add_epi64(k, _mm512_cmp_pd_mask(a, _mm512_set1_pd(lev[j]), _CMP_LT_OQ), k, one);
    const __m512d hi = _mm512_permutex2var_pd(t0, _mm512_sub_epi64(k, one), t1), lo = _mm512_permutex2var_pd(t0, k, t1);
    const __mmask8 under = _mm512_cmpeq_epi64_mask(k, vL);
    const __m512i h = splitmix_512(_mm512_xor_si512(vkey, _mm512_add_epi64(_mm512_set1_epi64((long long)(index0 + i)), lanes)));
    const __m512d u = _mm512_mul_pd(_mm512_cvtepu64_pd(_mm512_srli_epi64(h, 11)), scale);
    const __m512d num = _mm512_mask_mov_pd(_mm512_sub_pd(a, lo), under, a), den = _mm512_mask_mov_pd(_mm512_sub_pd(hi, lo), under, m);
    const __m512d q = _mm512_div_pd(num, den); /* (one division: the slow part) */
    const __mmask8 up = _mm512_cmp_pd_mask(u, q, _CMP_LT_OQ);
    /* the magnitude: under the grid L or 0; else k (up) or k + 1 (a = lev[k]
     * gives q = 0 or NaN, never up: k + 1, the format's answer for it) */
    __m512i mag = _mm512_mask_mov_epi64(_mm512_add_epi64(k, one), up, k);
    mag = _mm512_mask_mov_epi64(mag, under, _mm512_maskz_mov_epi64(up, vL));
    mag = _mm512_mask_mov_epi64(mag, _mm512_cmp_pd_mask(a, zero, _CMP_EQ_OQ), _mm512_setzero_si512());
    mag = _mm512_mask_mov_epi64(mag, _mm512_cmp_pd_mask(a, top, _CMP_GE_OQ), one); /* (checked first there) */
    if (codes) {
      __m512i c = _mm512_mask_sub_epi64(mag, neg, _mm512_setzero_si512(), mag);
      const __mmask8 nan = _mm512_cmp_pd_mask(xd, xd, _CMP_UNORD_Q), pinf = _mm512_cmp_pd_mask(xd, inf, _CMP_EQ_OQ);
      c = _mm512_mask_mov_epi64(c, (__mmask8)~fin, _mm512_set1_epi64(NBL_LOG_CODE_NEG_INF));
      c = _mm512_mask_mov_epi64(c, pinf, _mm512_set1_epi64(NBL_LOG_CODE_POS_INF));
      c = _mm512_mask_mov_epi64(c, nan, _mm512_set1_epi64(NBL_LOG_CODE_NAN));
      _mm_mask_storeu_epi8(codes + i, (__mmask16)k8, _mm512_cvtepi64_epi8(c));
    }
    if (y) {
      const __m256 lv = _mm512_castps512_ps256(_mm512_permutexvar_ps(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(mag)), lft));
      __m256 out = _mm256_mask_sub_ps(lv, neg, _mm256_setzero_ps(), lv); /* (code 0: 0 - 0 = +0, the format's) */
      out = _mm256_mask_mov_ps(xf, fin, out);
      _mm256_mask_storeu_ps(y + i, k8, out);
    }
  }
}

/* stochastic_avx512 on AVX2, four elements at a time in double: the
 * draws' 64-bit products from 32-bit ones (the low 64 bits of a * b as
 * lo(a) lo(b) + (hi(a) lo(b) + lo(a) hi(b)) << 32), the 53-bit integer to
 * double in two exact halves, the same operations in the same order. */
__attribute__((target("avx2"))) static inline __m256i mullo64_256(__m256i a, __m256i b) {
  const __m256i lo = _mm256_mul_epu32(a, b);
  const __m256i cross = _mm256_add_epi64(_mm256_mul_epu32(_mm256_srli_epi64(a, 32), b),
                                         _mm256_mul_epu32(a, _mm256_srli_epi64(b, 32)));
  return _mm256_add_epi64(lo, _mm256_slli_epi64(cross, 32));
}

__attribute__((target("avx2"))) static inline __m256i splitmix_256(__m256i z) {
  z = _mm256_add_epi64(z, _mm256_set1_epi64x((long long)0x9E3779B97F4A7C15ull));
  z = mullo64_256(_mm256_xor_si256(z, _mm256_srli_epi64(z, 30)), _mm256_set1_epi64x((long long)0xBF58476D1CE4E5B9ull));
  z = mullo64_256(_mm256_xor_si256(z, _mm256_srli_epi64(z, 27)), _mm256_set1_epi64x((long long)0x94D049BB133111EBull));
  return _mm256_xor_si256(z, _mm256_srli_epi64(z, 31));
}

/* an integer below 2^53 as a double (exact): its two 32-bit halves */
__attribute__((target("avx2"))) static inline __m256d u53_to_pd(__m256i x) {
  const __m256i magic = _mm256_set1_epi64x(0x4330000000000000ll); /* 2^52 */
  const __m256d two52 = _mm256_set1_pd(4503599627370496.0);
  const __m256d lo = _mm256_sub_pd(_mm256_castsi256_pd(_mm256_or_si256(_mm256_and_si256(x, _mm256_set1_epi64x(0xffffffffll)), magic)), two52);
  const __m256d hi = _mm256_sub_pd(_mm256_castsi256_pd(_mm256_or_si256(_mm256_srli_epi64(x, 32), magic)), two52);
  return _mm256_add_pd(_mm256_mul_pd(hi, _mm256_set1_pd(4294967296.0)), lo);
}

__attribute__((target("avx2"))) static size_t stochastic_avx2(const double lev[16], const float lf[16], int L,
                                                            uint64_t key, const float *x, float *y, signed char *codes,
                                                            size_t n, uint64_t index0) {
  const __m256d top = _mm256_set1_pd(lev[0]), m = _mm256_set1_pd(lev[L - 1]), zero = _mm256_setzero_pd(), scale = _mm256_set1_pd(1.0 / 9007199254740992.0),
                absm = _mm256_castsi256_pd(_mm256_set1_epi64x(0x7fffffffffffffffll));
  const __m256i one = _mm256_set1_epi64x(1), vL = _mm256_set1_epi64x(L), vkey = _mm256_set1_epi64x((long long)key);
  const __m256i lanes = _mm256_setr_epi64x(0, 1, 2, 3);
  size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const __m128 xf = _mm_loadu_ps(x + i);
    const __m256d xd = _mm256_cvtps_pd(xf), a = _mm256_and_pd(xd, absm);
    __m256i k = one;
    for (int j = 1; j < L; j++)
      k = _mm256_sub_epi64(k, _mm256_castpd_si256(_mm256_cmp_pd(a, _mm256_set1_pd(lev[j]), _CMP_LT_OQ)));
    const __m256d hi = _mm256_i64gather_pd(lev, _mm256_sub_epi64(k, one), 8), lo = _mm256_i64gather_pd(lev, k, 8);
    const __m256d under = _mm256_castsi256_pd(_mm256_cmpeq_epi64(k, vL));
    const __m256i h = splitmix_256(_mm256_xor_si256(vkey, _mm256_add_epi64(_mm256_set1_epi64x((long long)(index0 + i)), lanes)));
    const __m256d u = _mm256_mul_pd(u53_to_pd(_mm256_srli_epi64(h, 11)), scale);
    const __m256d num = _mm256_blendv_pd(_mm256_sub_pd(a, lo), a, under),
                  den = _mm256_blendv_pd(_mm256_sub_pd(hi, lo), m, under);
    const __m256d q = _mm256_div_pd(num, den);
    const __m256i up = _mm256_castpd_si256(_mm256_cmp_pd(u, q, _CMP_LT_OQ));
    __m256i mag = _mm256_blendv_epi8(_mm256_add_epi64(k, one), k, up);
    mag = _mm256_blendv_epi8(mag, _mm256_and_si256(up, vL), _mm256_castpd_si256(under));
    mag = _mm256_andnot_si256(_mm256_castpd_si256(_mm256_cmp_pd(a, zero, _CMP_EQ_OQ)), mag);
    mag = _mm256_blendv_epi8(mag, one, _mm256_castpd_si256(_mm256_cmp_pd(a, top, _CMP_GE_OQ)));
    int64_t mg[4];
    _mm256_storeu_si256((__m256i *)mg, mag);
    for (int l = 0; l < 4; l++) { /* the sign, the level, the marks of NaN and Inf: per element */
      const float v = x[i + l];
      const int neg = v < 0.0f;
      if (codes) codes[i + l] = (signed char)(isfinite(v) ? (neg ? -mg[l] : mg[l]) : nbl_log_code8_nonfinite(v));
      if (y) y[i + l] = isfinite(v) ? (neg ? 0.0f - lf[mg[l]] : lf[mg[l]]) : v;
    }
  }
  return i;
}

static int has_avx512dq(void) {
  const unsigned m = NBL_CPU_AVX512DQ | NBL_CPU_AVX512BW | NBL_CPU_AVX512VL;
  return (nbl_cpu_features() & m) == m;
}

void nbl_logq_stochastic(nbl_logq_isa isa, const nbl_log_config *cfg, const nbl_log_params *p, const float *x,
                         float *y, signed char *codes, size_t n, uint64_t index0) {
  const int L = p->levels;
  if (isa > cpu_best()) isa = cpu_best();
  /* the vector kernels' tables: the float levels as doubles (lev[k], 0 past
   * L - 1), and the level of each |code| (lf[code], lf[0] = 0) */
  double lev[16] = {0};
  float lf[16] = {0};
  const int vec = isa >= NBL_LOGQ_AVX2 && L >= 1 && L <= NBL_LOG_MAX_LEVELS; /* (NBL_LOG_MAX_LEVELS < 16) */
  for (int k = 0; vec && k < L; k++) lf[k + 1] = nbl_log_level(cfg, p, k), lev[k] = (double)lf[k + 1];
  if (vec && isa == NBL_LOGQ_AVX512 && has_avx512dq()) {
    stochastic_avx512(lev, lf, L, nbl_q4_uniform_key(cfg->seed), x, y, codes, n, index0);
    return;
  }
  if (vec) { /* AVX2 (AVX-512 without DQ too) */
    const size_t i = stochastic_avx2(lev, lf, L, nbl_q4_uniform_key(cfg->seed), x, y, codes, n, index0);
    x += i, n -= i, index0 += i;
    if (codes) codes += i;
    if (y) y += i;
  }
  if (codes) { /* before Y: y may share x's memory */
    nbl_log_codes(cfg, p, x, (int8_t *)codes, n, index0);
    for (size_t i = 0; i < n; i++)
      if (!isfinite(x[i])) codes[i] = (signed char)nbl_log_code8_nonfinite(x[i]);
  }
  if (y) nbl_log_fake_quant(cfg, p, x, y, n, index0);
}

/* ------------------------------------------------------------------ dispatch */

float nbl_logq_absmax(nbl_logq_isa isa, const float *x, size_t n) {
  if (isa > cpu_best()) isa = cpu_best();
  switch (isa) {
  case NBL_LOGQ_AVX512: return absmax_avx512(x, n);
  case NBL_LOGQ_AVX2: return absmax_avx2(x, n);
  default: return absmax_scalar(x, n);
  }
}

void nbl_logq_nearest(nbl_logq_isa isa, const float *lev, const float *thr, int L, const float *x,
                      float *y, size_t n) {
  if (L < 1 || L > 15) return;
  if (isa > cpu_best()) isa = cpu_best();
  switch (isa) {
  case NBL_LOGQ_AVX512: nearest_avx512(lev, thr, L, x, y, NULL, n); break;
  case NBL_LOGQ_AVX2: nearest_avx2(lev, thr, L, x, y, n); break;
  default: nearest_scalar(lev, thr, L, x, y, n); break;
  }
}

void nbl_logq_nearest_codes2(nbl_logq_isa isa, const float *const lev[2], const float *const thr[2], const int L[2],
                             const float *x, signed char *const codes[2], size_t n) {
  if (isa > cpu_best()) isa = cpu_best();
  if (isa == NBL_LOGQ_AVX512 && L[0] >= 1 && L[0] <= 15 && L[1] >= 1 && L[1] <= 15 &&
      codes2_avx512(lev, thr, L, x, codes, n))
    return;
  bt_avx2 b[2];
  if (isa == NBL_LOGQ_AVX2 && bt_avx2_init(&b[0], lev[0], thr[0], L[0]) && bt_avx2_init(&b[1], lev[1], thr[1], L[1])) {
    const size_t i = lookup_avx2(b, 2, x, NULL, codes, n);
    for (int g = 0; g < 2; g++) nearest_codes_scalar(lev[g], thr[g], L[g], x + i, NULL, codes[g] + i, n - i);
    return;
  }
  for (int g = 0; g < 2; g++) nbl_logq_nearest_codes(isa, lev[g], thr[g], L[g], x, NULL, codes[g], n);
}

void nbl_logq_nearest_codes(nbl_logq_isa isa, const float *lev, const float *thr, int L, const float *x,
                            float *y, signed char *codes, size_t n) {
  if (L < 1 || L > 15) return;
  if (isa > cpu_best()) isa = cpu_best();
  bt_avx2 b;
  if (isa == NBL_LOGQ_AVX512) {
    nearest_avx512(lev, thr, L, x, y, codes, n);
  } else if (isa == NBL_LOGQ_AVX2 && bt_avx2_init(&b, lev, thr, L)) {
    float *const ys[1] = {y};
    signed char *const cs[1] = {codes};
    const size_t i = lookup_avx2(&b, 1, x, ys, cs, n);
    nearest_codes_scalar(lev, thr, L, x + i, y ? y + i : NULL, codes + i, n - i);
  } else {
    nearest_codes_scalar(lev, thr, L, x, y, codes, n);
  }
}
