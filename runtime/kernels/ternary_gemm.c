/* ternary_gemm.c - products with ternary weights and INT8 activations
 * (AVX-512 VNNI, AVX2, scalar) and the activation quantizer's byte forms;
 * see ternary_gemm.h. */
#include "runtime/kernels/ternary_gemm.h"
#include "runtime/core/cpu.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define T_X86 1
#else
#define T_X86 0
#endif

/* ------------------------------------------------------------------ variants */

/* The features each variant needs (the target attributes it is built with);
 * the one CPU dispatch (runtime/core/cpu.h) says which are usable. */
static const unsigned k_needs[3] = {
    [NBL_T_SCALAR] = 0,
    [NBL_T_AVX2] = NBL_CPU_AVX2,
    [NBL_T_AVX512] = NBL_CPU_AVX2 | NBL_CPU_AVX512F | NBL_CPU_AVX512BW | NBL_CPU_AVX512VL |
                     NBL_CPU_AVX512VNNI,
};

nbl_t_isa nbl_t_best_isa(void) {
  unsigned a = nbl_cpu_allowed();
  return (a & k_needs[NBL_T_AVX512]) == k_needs[NBL_T_AVX512] ? NBL_T_AVX512
         : (a & k_needs[NBL_T_AVX2]) == k_needs[NBL_T_AVX2]   ? NBL_T_AVX2
                                                               : NBL_T_SCALAR;
}

int nbl_t_isa_supported(nbl_t_isa isa) {
  /* asked on every call of the activation kernels (once a row): the CPU's
   * features kept after the first call, not asked for again */
  static _Atomic unsigned feats; /* the features | 1u << 31 once read */
  unsigned f = atomic_load_explicit(&feats, memory_order_relaxed);
  if (!f) atomic_store_explicit(&feats, f = nbl_cpu_features() | 1u << 31, memory_order_relaxed);
  return isa >= NBL_T_SCALAR && isa <= NBL_T_AVX512 && (f & k_needs[isa]) == k_needs[isa];
}

const char *nbl_t_isa_name(nbl_t_isa isa) {
  return isa == NBL_T_AVX512 ? "avx512vnni" : isa == NBL_T_AVX2 ? "avx2" : "scalar";
}

/* ------------------------------------------------------------------ packing */

int nbl_t_pack(const int8_t *q, int64_t M, int64_t K, int64_t sm, int64_t sk, int vectors,
               nbl_t_weights *out) {
  memset(out, 0, sizeof *out);
  out->M = M;
  out->K = K;
  out->Mp = (M + NBL_T_CR - 1) / NBL_T_CR * NBL_T_CR;
  out->Kp = (K + 3) / 4 * 4;
  out->Kv = (K + 63) / 64 * 64;
  size_t bytes = (size_t)(out->Mp * out->Kp);
  size_t alloc = (bytes + 63) / 64 * 64;
  out->w = aligned_alloc(64, alloc ? alloc : 64);
  out->rowsum = calloc((size_t)(out->Mp ? out->Mp : 1), sizeof(int32_t));
  if (vectors) out->v = malloc((size_t)(M * out->Kv / 4) + 1);
  if (!out->w || !out->rowsum || (vectors && !out->v)) goto fail;
  memset(out->w, 0, alloc ? alloc : 64);
  if (vectors) memset(out->v, 0x55, (size_t)(M * out->Kv / 4) + 1); /* u = 1 (code 0) everywhere */
  for (int64_t m = 0; m < M; m++)
    for (int64_t k = 0; k < K; k++) {
      int v = q[m * sm + k * sk];
      if (v < -1 || v > 1) goto fail;
      out->w[((m / NBL_T_CR) * (out->Kp / 4) + k / 4) * 32 + (m % NBL_T_CR) * 4 + k % 4] = (int8_t)v;
      out->rowsum[m] += v;
      if (vectors) {
        uint8_t *byte = out->v + m * (out->Kv / 4) + (k / 64) * 16 + (k % 64) / 4;
        int j = (int)(k % 4);
        *byte = (uint8_t)((*byte & ~(3u << (2 * j))) | (unsigned)(v + 1) << (2 * j));
      }
    }
  return 0;
fail:
  nbl_t_weights_free(out);
  return -1;
}

void nbl_t_weights_free(nbl_t_weights *w) {
  free(w->w);
  free(w->rowsum);
  free(w->v);
  memset(w, 0, sizeof *w);
}

/* ------------------------------------------------------------------ reference */

void nbl_t_ref(const int8_t *q, const int8_t *w, int64_t P, int64_t M, int64_t K, int32_t *acc) {
  for (int64_t m = 0; m < M; m++)
    for (int64_t p = 0; p < P; p++) {
      int32_t s = 0;
      for (int64_t k = 0; k < K; k++) s += (int32_t)q[p * K + k] * (int32_t)w[m * K + k];
      acc[m * P + p] = s;
    }
}

/* ------------------------------------------------------------------ tiles */

/* Four weight codes as one int32 (unaligned). */
static inline int32_t load4(const int8_t *p) {
  int32_t v;
  memcpy(&v, p, 4);
  return v;
}

static inline float code1(float x, float s) {
  float r = rintf(x / s);
  return r < -128.0f ? -128.0f : r > 127.0f ? 127.0f : r;
}

/* The mask of the first n lanes of 16 (n <= 0: none). */
static inline uint16_t nbl_tmask(int64_t n) {
  return n >= 16 ? 0xFFFF : n <= 0 ? 0 : (uint16_t)((1u << n) - 1);
}

/* The epilogue of one value: sc * acc, then + bias, + the residual r, then the activation. */
static inline float epi1(const nbl_t_epi *e, int32_t acc, float bias, float r) {
  float v = e->sc * (float)acc;
  v = v + bias;
  if (e->res) v = v + r;
  if (e->act) {
    v = v < e->lo ? e->lo : v;
    v = v > e->hi ? e->hi : v;
  }
  return v;
}

/* The largest of m and the bits of |y[i]|, i < n. */
static uint32_t amax_bits(const float *y, int64_t n, uint32_t m) {
  for (int64_t i = 0; i < n; i++) {
    uint32_t b;
    memcpy(&b, y + i, 4);
    b &= 0x7fffffffu;
    m = b > m ? b : m;
  }
  return m;
}

/* Writes the tile's accumulators a[r][p] (r < nm, p < np), already
 * corrected, for channels m.. and pixels p..: as they are (Ci), or their
 * epilogue as floats, as codes (e->codes) or nowhere (e->no_store). */
static void tile_store(const int32_t a[NBL_T_CR][NBL_T_PX], int nm, int np, int64_t m, int64_t p,
                       int32_t *Ci, float *Y, int64_t ld, const nbl_t_epi *e) {
  for (int r = 0; r < nm; r++) {
    if (Ci) {
      memcpy(Ci + (m + r) * ld + p, a[r], sizeof(int32_t) * (size_t)np);
      continue;
    }
    float b = e->bias ? e->bias[m + r] : 0.0f;
    float *y = Y + (m + r) * ld + p;
    int8_t *cq = e->codes ? e->codes + (m + r) * ld + p : NULL;
    const float *rr = e->res ? e->res + (m + r) * ld + p : NULL;
    uint32_t mx = e->amax ? *e->amax : 0;
    for (int q = 0; q < np; q++) {
      float v = epi1(e, a[r][q], b, rr ? rr[q] : 0.0f);
      if (cq) cq[q] = (int8_t)code1(v, e->cs);
      else if (!e->no_store) y[q] = v;
      uint32_t bits;
      memcpy(&bits, &v, 4);
      bits &= 0x7fffffffu;
      mx = bits > mx ? bits : mx;
    }
    if (e->amax) *e->amax = mx;
  }
}

/* Scalar: adds and subtracts. One block of 8 channels x one panel. */
static void tile_scalar(const nbl_t_weights *W, const uint8_t *x, const int8_t *w, int32_t a[NBL_T_CR][NBL_T_PX]) {
  memset(a, 0, sizeof(int32_t) * NBL_T_CR * NBL_T_PX);
  for (int64_t k4 = 0; k4 < W->Kp / 4; k4++) {
    const uint8_t *xk = x + k4 * 128;
    const int8_t *wk = w + k4 * 32;
    for (int r = 0; r < NBL_T_CR; r++)
      for (int t = 0; t < 4; t++) {
        int c = wk[r * 4 + t];
        if (!c) continue;
        int32_t pos = -(int32_t)(c > 0), neg = -(int32_t)(c < 0);
        for (int p = 0; p < NBL_T_PX; p++) {
          int32_t v = (int32_t)xk[p * 4 + t] - 128;
          a[r][p] += (v & pos) - (v & neg);
        }
      }
  }
}

/* The vector quantizers multiply by 1 / s and round; where the product lies
 * within TIE_BAND of a half (where x * (1/s) and x / s might round apart:
 * they differ by a few ulps of a value below 128.5, far less than the band)
 * they divide instead, so every code equals rint(x / s). */
#define TIE_BAND 1e-3f

#if T_X86
/* 16 codes of v (rint(v / s) clamped to -128..127) as floats */
__attribute__((target("avx512f"))) static inline __m512 codes16(__m512 v, __m512 vs, __m512 inv) {
  __m512 t = _mm512_mul_ps(v, inv);
  __m512 r = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 d = _mm512_abs_ps(_mm512_sub_ps(t, r));
  __mmask16 near = _mm512_cmp_ps_mask(d, _mm512_set1_ps(0.5f - TIE_BAND), _CMP_GT_OQ);
  if (near)
    r = _mm512_mask_roundscale_ps(r, near, _mm512_div_ps(v, vs),
                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  return _mm512_min_ps(_mm512_max_ps(r, _mm512_set1_ps(-128.0f)), _mm512_set1_ps(127.0f));
}

/* AVX-512 VNNI: 8 channels x 32 pixels in 16 accumulators. */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) static void
tile_avx512(const nbl_t_weights *W, const uint8_t *x, const int8_t *w, const int32_t *rowsum,
            int nm, int np, int64_t m, int64_t p, int32_t *Ci, float *Y, int64_t ld,
            const nbl_t_epi *e) {
  __m512i a00 = _mm512_setzero_si512(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00,
          a30 = a00, a31 = a00, a40 = a00, a41 = a00, a50 = a00, a51 = a00, a60 = a00, a61 = a00,
          a70 = a00, a71 = a00;
  int64_t K4 = W->Kp / 4;
  /* the weights broadcast straight from memory (a load, no shuffle) */
#define T_ROW(r)                                                                                   \
  do {                                                                                             \
    __m512i wb = _mm512_set1_epi32(load4(wk + 4 * (r)));                                           \
    a##r##0 = _mm512_dpbusd_epi32(a##r##0, x0, wb);                                                \
    a##r##1 = _mm512_dpbusd_epi32(a##r##1, x1, wb);                                                \
  } while (0)
#define T_ROW1(r) a##r##0 = _mm512_dpbusd_epi32(a##r##0, x0, _mm512_set1_epi32(load4(wk + 4 * (r))))
  if (np > 16) {
    for (int64_t k4 = 0; k4 < K4; k4++) {
      __m512i x0 = _mm512_loadu_si512(x + k4 * 128), x1 = _mm512_loadu_si512(x + k4 * 128 + 64);
      const int8_t *wk = w + k4 * 32;
      T_ROW(0);
      T_ROW(1);
      T_ROW(2);
      T_ROW(3);
      T_ROW(4);
      T_ROW(5);
      T_ROW(6);
      T_ROW(7);
    }
  } else { /* a last panel of at most 16 pixels: half the work */
    for (int64_t k4 = 0; k4 < K4; k4++) {
      __m512i x0 = _mm512_loadu_si512(x + k4 * 128);
      const int8_t *wk = w + k4 * 32;
      T_ROW1(0);
      T_ROW1(1);
      T_ROW1(2);
      T_ROW1(3);
      T_ROW1(4);
      T_ROW1(5);
      T_ROW1(6);
      T_ROW1(7);
    }
  }
#undef T_ROW
#undef T_ROW1
  __m512i acc[NBL_T_CR][2] = {{a00, a01}, {a10, a11}, {a20, a21}, {a30, a31},
                              {a40, a41}, {a50, a51}, {a60, a61}, {a70, a71}};
  __mmask16 k0 = np >= 16 ? 0xFFFF : (__mmask16)((1u << np) - 1);
  __mmask16 k1 = np >= 32 ? 0xFFFF : np <= 16 ? 0 : (__mmask16)((1u << (np - 16)) - 1);
  __m512 sc = _mm512_set1_ps(e ? e->sc : 0.0f);
  const __m512 vcs = _mm512_set1_ps(e && e->codes ? e->cs : 1.0f),
               vinv = _mm512_set1_ps(e && e->codes ? 1.0f / e->cs : 1.0f);
  const __m512i abs = _mm512_set1_epi32(0x7fffffff);
  __m512i vmax = _mm512_setzero_si512();
  for (int r = 0; r < nm; r++) {
    __m512i corr = _mm512_set1_epi32(128 * rowsum[r]);
    __m512i v0 = _mm512_sub_epi32(acc[r][0], corr), v1 = _mm512_sub_epi32(acc[r][1], corr);
    if (Ci) {
      _mm512_mask_storeu_epi32(Ci + (m + r) * ld + p, k0, v0);
      _mm512_mask_storeu_epi32(Ci + (m + r) * ld + p + 16, k1, v1);
      continue;
    }
    __m512 b = _mm512_set1_ps(e->bias ? e->bias[m + r] : 0.0f);
    __m512 f0 = _mm512_add_ps(_mm512_mul_ps(sc, _mm512_cvtepi32_ps(v0)), b);
    __m512 f1 = _mm512_add_ps(_mm512_mul_ps(sc, _mm512_cvtepi32_ps(v1)), b);
    if (e->res) {
      const float *rr = e->res + (m + r) * ld + p;
      f0 = _mm512_add_ps(f0, _mm512_maskz_loadu_ps(k0, rr));
      f1 = _mm512_add_ps(f1, _mm512_maskz_loadu_ps(k1, rr + 16));
    }
    if (e->act) { /* Clip's semantics: v < lo ? lo : v, then > hi ? hi (NaN passes) */
      __m512 lo = _mm512_set1_ps(e->lo), hi = _mm512_set1_ps(e->hi);
      f0 = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(f0, lo, _CMP_LT_OQ), f0, lo);
      f1 = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(f1, lo, _CMP_LT_OQ), f1, lo);
      f0 = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(f0, hi, _CMP_GT_OQ), f0, hi);
      f1 = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(f1, hi, _CMP_GT_OQ), f1, hi);
    }
    if (e->codes) {
      int8_t *cq = e->codes + (m + r) * ld + p;
      _mm512_mask_cvtepi32_storeu_epi8(cq, k0, _mm512_cvtps_epi32(codes16(f0, vcs, vinv)));
      _mm512_mask_cvtepi32_storeu_epi8(cq + 16, k1, _mm512_cvtps_epi32(codes16(f1, vcs, vinv)));
    } else if (!e->no_store) {
      _mm512_mask_storeu_ps(Y + (m + r) * ld + p, k0, f0);
      _mm512_mask_storeu_ps(Y + (m + r) * ld + p + 16, k1, f1);
    }
    vmax = _mm512_mask_max_epu32(vmax, k0, vmax, _mm512_and_si512(_mm512_castps_si512(f0), abs));
    vmax = _mm512_mask_max_epu32(vmax, k1, vmax, _mm512_and_si512(_mm512_castps_si512(f1), abs));
  }
  if (!Ci && e->amax) {
    uint32_t b = _mm512_reduce_max_epu32(vmax);
    if (b > *e->amax) *e->amax = b;
  }
}

/* AVX2: 4 channels x 16 pixels at a time in int16 (vpmaddubsw), widened
 * every 64 k-quads into the int32 sums of the whole 8 x 32 tile in a. The
 * sums stay in a (memory) rather than in registers: with 8 int16
 * accumulators, two activation vectors and the broadcast weights the inner
 * loop needs 12 of the 16 registers, and 8 more int32 accumulators made the
 * compiler spill and copy inside it. Panels of at most 16 pixels skip the
 * second half (its sums are left 0). */
/* *h += v in int16, in h's register (GCC otherwise adds into v's register
 * and copies it back, a move per product in the loop below). */
__attribute__((target("avx2"), always_inline)) static inline void acc16(__m256i *h, __m256i v) {
  __asm__("vpaddw %1, %0, %0" : "+x"(*h) : "x"(v));
}

__attribute__((target("avx2"))) static void tile_avx2(const nbl_t_weights *W, const uint8_t *x,
                                                      const int8_t *w, int np,
                                                      int32_t a[NBL_T_CR][NBL_T_PX]) {
  int64_t K4 = W->Kp / 4;
  const __m256i ones = _mm256_set1_epi16(1);
  memset(a, 0, sizeof(int32_t) * NBL_T_CR * NBL_T_PX);
  for (int rh = 0; rh < 2; rh++)
    for (int ph = 0; ph < (np > 16 ? 2 : 1); ph++) {
      int32_t *o = &a[rh * 4][ph * 16];
      for (int64_t c0 = 0; c0 < K4; c0 += 64) {
        int64_t c1 = c0 + 64 < K4 ? c0 + 64 : K4;
        __m256i h00 = _mm256_setzero_si256(), h01 = h00, h10 = h00, h11 = h00, h20 = h00,
                h21 = h00, h30 = h00, h31 = h00;
        const uint8_t *xk = x + c0 * 128 + ph * 64;
        const int8_t *wk = w + c0 * 32 + rh * 16;
        for (int64_t k4 = c0; k4 < c1; k4++, xk += 128, wk += 32) {
          __m256i x0 = _mm256_loadu_si256((const __m256i *)(const void *)xk);
          __m256i x1 = _mm256_loadu_si256((const __m256i *)(const void *)(xk + 32));
#define T_ROW2(r)                                                                                  \
  do {                                                                                             \
    __m256i wb = _mm256_set1_epi32(load4(wk + 4 * (r)));                                           \
    acc16(&h##r##0, _mm256_maddubs_epi16(x0, wb));                                                \
    acc16(&h##r##1, _mm256_maddubs_epi16(x1, wb));                                                \
  } while (0)
          T_ROW2(0);
          T_ROW2(1);
          T_ROW2(2);
          T_ROW2(3);
#undef T_ROW2
        }
#define T_WIDEN(r)                                                                                 \
  do {                                                                                             \
    __m256i *d0 = (__m256i *)(void *)(o + (r)*NBL_T_PX), *d1 = (__m256i *)(void *)(o + (r)*NBL_T_PX + 8); \
    _mm256_storeu_si256(d0, _mm256_add_epi32(_mm256_loadu_si256(d0), _mm256_madd_epi16(h##r##0, ones))); \
    _mm256_storeu_si256(d1, _mm256_add_epi32(_mm256_loadu_si256(d1), _mm256_madd_epi16(h##r##1, ones))); \
  } while (0)
        T_WIDEN(0);
        T_WIDEN(1);
        T_WIDEN(2);
        T_WIDEN(3);
#undef T_WIDEN
      }
    }
}

/* The AVX2 epilogue of one row of np <= 32 values (the correction applied). */
__attribute__((target("avx2"))) static void epi_row_avx2(const int32_t *a, int np, int32_t corr,
                                                         float *y, const nbl_t_epi *e, float bias,
                                                         const float *rr) {
  __m256 sc = _mm256_set1_ps(e->sc), b = _mm256_set1_ps(bias);
  __m256i c = _mm256_set1_epi32(corr), vm = _mm256_setzero_si256();
  const __m256i absm = _mm256_set1_epi32(0x7fffffff);
  int q = 0;
  for (; q + 8 <= np; q += 8) {
    __m256i v = _mm256_sub_epi32(_mm256_loadu_si256((const __m256i *)(const void *)(a + q)), c);
    __m256 f = _mm256_add_ps(_mm256_mul_ps(sc, _mm256_cvtepi32_ps(v)), b);
    if (rr) f = _mm256_add_ps(f, _mm256_loadu_ps(rr + q));
    if (e->act) {
      __m256 lo = _mm256_set1_ps(e->lo), hi = _mm256_set1_ps(e->hi);
      f = _mm256_blendv_ps(f, lo, _mm256_cmp_ps(f, lo, _CMP_LT_OQ));
      f = _mm256_blendv_ps(f, hi, _mm256_cmp_ps(f, hi, _CMP_GT_OQ));
    }
    _mm256_storeu_ps(y + q, f);
    vm = _mm256_max_epu32(vm, _mm256_and_si256(_mm256_castps_si256(f), absm)); /* the bits of |y| */
  }
  for (int l = q; l < np; l++) y[l] = epi1(e, a[l] - corr, bias, rr ? rr[l] : 0.0f);
  if (e->amax) {
    uint32_t t[8], mx = amax_bits(y + q, np - q, *e->amax);
    _mm256_storeu_si256((__m256i *)t, vm);
    for (int l = 0; l < 8; l++) mx = t[l] > mx ? t[l] : mx;
    *e->amax = mx;
  }
}
#endif

void nbl_t_tile(nbl_t_isa isa, const nbl_t_weights *W, const uint8_t *X4, int64_t m0, int64_t m1,
                int64_t p0, int64_t p1, int32_t *Ci, float *Y, int64_t ld, const nbl_t_epi *e) {
  if (!nbl_t_isa_supported(isa)) isa = NBL_T_SCALAR;
  int32_t a[NBL_T_CR][NBL_T_PX];
  for (int64_t m = m0; m < m1; m += NBL_T_CR) {
    int nm = (int)(m1 - m < NBL_T_CR ? m1 - m : NBL_T_CR);
    const int8_t *w = W->w + (m / NBL_T_CR) * (W->Kp / 4) * 32;
    for (int64_t p = p0; p < p1; p += NBL_T_PX) {
      int np = (int)(p1 - p < NBL_T_PX ? p1 - p : NBL_T_PX);
      const uint8_t *x = X4 + (p / NBL_T_PX) * W->Kp * NBL_T_PX;
#if T_X86
      if (isa == NBL_T_AVX512) {
        tile_avx512(W, x, w, W->rowsum + m, nm, np, m, p, Ci, Y, ld, e);
        continue;
      }
      if (isa == NBL_T_AVX2) {
        tile_avx2(W, x, w, np, a);
        for (int r = 0; r < nm; r++) {
          int32_t corr = 128 * W->rowsum[m + r];
          if (Ci || e->codes || e->no_store) {
            for (int q = 0; q < np; q++) a[r][q] -= corr;
          } else {
            epi_row_avx2(a[r], np, corr, Y + (m + r) * ld + p, e, e->bias ? e->bias[m + r] : 0.0f,
                         e->res ? e->res + (m + r) * ld + p : NULL);
          }
        }
        if (Ci || e->codes || e->no_store)
          tile_store((const int32_t(*)[NBL_T_PX])a, nm, np, m, p, Ci, Y, ld, e);
        continue;
      }
#endif
      tile_scalar(W, x, w, a);
      tile_store((const int32_t(*)[NBL_T_PX])a, nm, np, m, p, Ci, Y, ld, e);
    }
  }
}

/* ------------------------------------------------------------------ direct convolutions */

#if T_X86
/* The epilogue of tile_avx512 on the valid lanes k of one vector of
 * corrected sums, written packed from out index at on (the valid lanes are
 * consecutive outputs); the bits of |y| into *vmax. */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"), always_inline)) static inline void
direct_store(const nbl_t_epi *e, __m512i v, __mmask16 k, int64_t at, float *Y, float bias,
             __m512 vcs, __m512 vinv, __m512i *vmax) {
  __m512 f = _mm512_add_ps(_mm512_mul_ps(_mm512_set1_ps(e->sc), _mm512_cvtepi32_ps(v)),
                           _mm512_set1_ps(bias));
  __mmask16 t = k;
  if (k != 0xFFFF) { /* the valid lanes first, in order */
    f = _mm512_maskz_compress_ps(k, f);
    t = (__mmask16)((1u << __builtin_popcount(k)) - 1);
  }
  if (e->res) f = _mm512_add_ps(f, _mm512_maskz_loadu_ps(t, e->res + at));
  if (e->act) {
    __m512 lo = _mm512_set1_ps(e->lo), hi = _mm512_set1_ps(e->hi);
    f = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(f, lo, _CMP_LT_OQ), f, lo);
    f = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(f, hi, _CMP_GT_OQ), f, hi);
  }
  if (e->codes)
    _mm512_mask_cvtepi32_storeu_epi8(e->codes + at, t, _mm512_cvtps_epi32(codes16(f, vcs, vinv)));
  else if (!e->no_store)
    _mm512_mask_storeu_ps(Y + at, t, f);
  *vmax = _mm512_mask_max_epu32(*vmax, t, *vmax,
                                _mm512_and_si512(_mm512_castps_si512(f), _mm512_set1_epi32(0x7fffffff)));
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) static void
direct_store_avx512(const nbl_t_direct_out *o, int64_t m, int nm, const int32_t *acc,
                    const uint16_t k[2], const int64_t at[2]) {
  const nbl_t_epi *e = o->e;
  const __m512 vcs = _mm512_set1_ps(e->codes ? e->cs : 1.0f),
               vinv = _mm512_set1_ps(e->codes ? 1.0f / e->cs : 1.0f);
  __m512i vmax = _mm512_setzero_si512();
  for (int r = 0; r < nm; r++) {
    float b = e->bias ? e->bias[m + r] : 0.0f;
    int64_t row = (m + r) * o->ld;
    for (int h = 0; h < 2; h++)
      if (k[h])
        direct_store(e, _mm512_loadu_si512(acc + r * 32 + 16 * h), (__mmask16)k[h], row + at[h],
                     o->Y, b, vcs, vinv, &vmax);
  }
  if (e->amax) {
    uint32_t b = _mm512_reduce_max_epu32(vmax);
    if (b > *e->amax) *e->amax = b;
  }
}
#endif

void nbl_t_direct_store(const void *ctx, int64_t m, int nm, const int32_t *acc,
                        const uint16_t k[2], const int64_t at[2]) {
#if T_X86
  direct_store_avx512(ctx, m, nm, acc, k, at);
#else
  (void)ctx, (void)m, (void)nm, (void)acc, (void)k, (void)at;
#endif
}

/* ------------------------------------------------------------------ vectors */

int32_t nbl_t_gemv_prep(const int8_t *q, int64_t K, int64_t Kv, int8_t *a) {
  int32_t sum = 0;
  memset(a, 0, (size_t)Kv);
  for (int64_t k = 0; k < K; k++) {
    int64_t b = k / 64, r = k % 64, i = r / 4, j = r % 4;
    a[b * 64 + j * 16 + i] = q[k];
    sum += q[k];
  }
  return sum;
}

static void gemv_scalar(const nbl_t_weights *W, const int8_t *a, int32_t qsum, int64_t m0,
                        int64_t m1, int32_t *out) {
  (void)qsum;
  int64_t nb = W->Kv / 64;
  for (int64_t m = m0; m < m1; m++) {
    const uint8_t *v = W->v + m * (W->Kv / 4);
    int32_t acc = 0;
    for (int64_t b = 0; b < nb; b++)
      for (int i = 0; i < 16; i++) {
        unsigned byte = v[b * 16 + i];
        for (int j = 0; j < 4; j++) {
          unsigned u = (byte >> (2 * j)) & 3;
          int32_t x = a[b * 64 + j * 16 + i];
          if (u == 2) acc += x;
          else if (u == 0) acc -= x;
        }
      }
    out[m - m0] = acc;
  }
}

#if T_X86
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) static void
gemv_avx512(const nbl_t_weights *W, const int8_t *a, int32_t qsum, int64_t m0, int64_t m1,
            int32_t *out) {
  int64_t nb = W->Kv / 64, rs = W->Kv / 4;
  const __m512i sh = _mm512_set_epi64(6, 6, 4, 4, 2, 2, 0, 0);
  const __m512i m3 = _mm512_set1_epi8(3);
  int64_t m = m0;
  for (; m + 4 <= m1; m += 4) {
    __m512i c0 = _mm512_setzero_si512(), c1 = c0, c2 = c0, c3 = c0;
    const uint8_t *v = W->v + m * rs;
    for (int64_t b = 0; b < nb; b++) {
      __m512i x = _mm512_loadu_si512(a + b * 64);
#define T_VROW(r)                                                                                  \
  do {                                                                                             \
    __m512i wb = _mm512_broadcast_i32x4(                                                           \
        _mm_loadu_si128((const __m128i *)(const void *)(v + (r)*rs + b * 16)));                    \
    c##r = _mm512_dpbusd_epi32(c##r, _mm512_and_si512(_mm512_srlv_epi64(wb, sh), m3), x);          \
  } while (0)
      T_VROW(0);
      T_VROW(1);
      T_VROW(2);
      T_VROW(3);
#undef T_VROW
    }
    out[m - m0] = _mm512_reduce_add_epi32(c0) - qsum;
    out[m + 1 - m0] = _mm512_reduce_add_epi32(c1) - qsum;
    out[m + 2 - m0] = _mm512_reduce_add_epi32(c2) - qsum;
    out[m + 3 - m0] = _mm512_reduce_add_epi32(c3) - qsum;
  }
  for (; m < m1; m++) {
    __m512i c = _mm512_setzero_si512();
    const uint8_t *v = W->v + m * rs;
    for (int64_t b = 0; b < nb; b++) {
      __m512i wb = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(const void *)(v + b * 16)));
      c = _mm512_dpbusd_epi32(c, _mm512_and_si512(_mm512_srlv_epi64(wb, sh), m3),
                              _mm512_loadu_si512(a + b * 64));
    }
    out[m - m0] = _mm512_reduce_add_epi32(c) - qsum;
  }
}

/* AVX2: two halves of a block per row; int16 sums (at most 4 * 2 * 127 a
 * block) widened every 32 blocks. */
__attribute__((target("avx2"))) static void gemv_avx2(const nbl_t_weights *W, const int8_t *a,
                                                      int32_t qsum, int64_t m0, int64_t m1,
                                                      int32_t *out) {
  int64_t nb = W->Kv / 64, rs = W->Kv / 4;
  const __m256i sh_lo = _mm256_set_epi64x(2, 2, 0, 0), sh_hi = _mm256_set_epi64x(6, 6, 4, 4);
  const __m256i m3 = _mm256_set1_epi8(3), ones = _mm256_set1_epi16(1);
  for (int64_t m = m0; m < m1; m++) {
    const uint8_t *v = W->v + m * rs;
    __m256i s = _mm256_setzero_si256();
    for (int64_t c0 = 0; c0 < nb; c0 += 32) {
      int64_t c1 = c0 + 32 < nb ? c0 + 32 : nb;
      __m256i h = _mm256_setzero_si256();
      for (int64_t b = c0; b < c1; b++) {
        __m256i wb = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(const void *)(v + b * 16)));
        __m256i ul = _mm256_and_si256(_mm256_srlv_epi64(wb, sh_lo), m3);
        __m256i uh = _mm256_and_si256(_mm256_srlv_epi64(wb, sh_hi), m3);
        __m256i xl = _mm256_loadu_si256((const __m256i *)(const void *)(a + b * 64));
        __m256i xh = _mm256_loadu_si256((const __m256i *)(const void *)(a + b * 64 + 32));
        h = _mm256_add_epi16(h, _mm256_maddubs_epi16(ul, xl));
        h = _mm256_add_epi16(h, _mm256_maddubs_epi16(uh, xh));
      }
      s = _mm256_add_epi32(s, _mm256_madd_epi16(h, ones));
    }
    __m128i t = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0x4E));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0xB1));
    out[m - m0] = _mm_cvtsi128_si32(t) - qsum;
  }
}
#endif

void nbl_t_gemv(nbl_t_isa isa, const nbl_t_weights *W, const int8_t *a, int32_t qsum, int64_t m0,
                int64_t m1, int32_t *out) {
  if (!nbl_t_isa_supported(isa)) isa = NBL_T_SCALAR;
#if T_X86
  if (isa == NBL_T_AVX512) {
    gemv_avx512(W, a, qsum, m0, m1, out);
    return;
  }
  if (isa == NBL_T_AVX2) {
    gemv_avx2(W, a, qsum, m0, m1, out);
    return;
  }
#endif
  gemv_scalar(W, a, qsum, m0, m1, out);
}

/* ------------------------------------------------------------------ activations */

static int absmax_scalar(const float *x, int64_t n, float *mx) {
  float m = 0.0f;
  int ok = 1;
  for (int64_t i = 0; i < n; i++) {
    float a = fabsf(x[i]);
    if (!isfinite(a)) ok = 0;
    else if (a > m) m = a;
  }
  *mx = m;
  return ok;
}



#if T_X86
__attribute__((target("avx512f"))) static int absmax_avx512(const float *x, int64_t n, float *mx) {
  const __m512i abs = _mm512_set1_epi32(0x7fffffff);
  __m512i m0 = _mm512_setzero_si512(), m1 = m0, m2 = m0, m3 = m0;
  int64_t i = 0;
  /* max of the absolute values' bits: a non-finite value has bits >= 0x7f800000 */
  for (; i + 64 <= n; i += 64) {
    m0 = _mm512_max_epu32(m0, _mm512_and_si512(_mm512_loadu_si512(x + i), abs));
    m1 = _mm512_max_epu32(m1, _mm512_and_si512(_mm512_loadu_si512(x + i + 16), abs));
    m2 = _mm512_max_epu32(m2, _mm512_and_si512(_mm512_loadu_si512(x + i + 32), abs));
    m3 = _mm512_max_epu32(m3, _mm512_and_si512(_mm512_loadu_si512(x + i + 48), abs));
  }
  for (; i < n; i += 16) {
    __mmask16 k = n - i >= 16 ? 0xFFFF : (__mmask16)((1u << (n - i)) - 1);
    m0 = _mm512_max_epu32(m0, _mm512_and_si512(_mm512_maskz_loadu_epi32(k, x + i), abs));
  }
  uint32_t b = _mm512_reduce_max_epu32(_mm512_max_epu32(_mm512_max_epu32(m0, m1),
                                                        _mm512_max_epu32(m2, m3)));
  memcpy(mx, &b, 4);
  return b < 0x7f800000u;
}

__attribute__((target("avx512f,avx512bw"))) static void quant_avx512(const float *x, uint8_t *u,
                                                                     int64_t n, float s, int off) {
  const __m512 vs = _mm512_set1_ps(s), inv = _mm512_set1_ps(1.0f / s);
  const __m512i vo = _mm512_set1_epi32(off);
  for (int64_t i = 0; i < n; i += 16) {
    __mmask16 k = n - i >= 16 ? 0xFFFF : (__mmask16)((1u << (n - i)) - 1);
    __m512 v = _mm512_maskz_loadu_ps(k, x + i);
    __m512i q = _mm512_add_epi32(_mm512_cvtps_epi32(codes16(v, vs, inv)), vo);
    _mm512_mask_cvtepi32_storeu_epi8(u + i, k, q);
  }
}

__attribute__((target("avx512f"))) static void quantf_avx512(const float *x, float *f, int64_t n,
                                                             float s) {
  const __m512 vs = _mm512_set1_ps(s), inv = _mm512_set1_ps(1.0f / s);
  for (int64_t i = 0; i < n; i += 16) {
    __mmask16 k = n - i >= 16 ? 0xFFFF : (__mmask16)((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(f + i, k, codes16(_mm512_maskz_loadu_ps(k, x + i), vs, inv));
  }
}

__attribute__((target("avx512f,avx512bw,avx512vl"))) static void codes_f_avx512(const int8_t *q, float *f, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    __mmask16 k = n - i >= 16 ? 0xFFFF : (__mmask16)((1u << (n - i)) - 1);
    __m128i b = _mm_maskz_loadu_epi8(k, q + i);
    _mm512_mask_storeu_ps(f + i, k, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b)));
  }
}

__attribute__((target("avx512f"))) static uint32_t finish_avx512(float *y, int64_t n, float sc,
                                                                 float bias, const float *res,
                                                                 int act, float lo, float hi) {
  const __m512 vs = _mm512_set1_ps(sc), vb = _mm512_set1_ps(bias), vl = _mm512_set1_ps(lo),
               vh = _mm512_set1_ps(hi);
  const __m512i abs = _mm512_set1_epi32(0x7fffffff);
  __m512i mx = _mm512_setzero_si512();
  for (int64_t i = 0; i < n; i += 16) {
    __mmask16 k = n - i >= 16 ? 0xFFFF : (__mmask16)((1u << (n - i)) - 1);
    __m512 v = _mm512_add_ps(_mm512_mul_ps(vs, _mm512_maskz_loadu_ps(k, y + i)), vb);
    if (res) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(k, res + i));
    if (act) {
      v = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v, vl, _CMP_LT_OQ), v, vl);
      v = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v, vh, _CMP_GT_OQ), v, vh);
    }
    _mm512_mask_storeu_ps(y + i, k, v);
    mx = _mm512_mask_max_epu32(mx, k, mx, _mm512_and_si512(_mm512_castps_si512(v), abs));
  }
  return _mm512_reduce_max_epu32(mx);
}

__attribute__((target("avx2"))) static int absmax_avx2(const float *x, int64_t n, float *mx) {
  const __m256i abs = _mm256_set1_epi32(0x7fffffff);
  __m256i m0 = _mm256_setzero_si256(), m1 = m0;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    m0 = _mm256_max_epu32(m0, _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(const void *)(x + i)), abs));
    m1 = _mm256_max_epu32(m1, _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(const void *)(x + i + 8)), abs));
  }
  uint32_t b[8], r = 0;
  _mm256_storeu_si256((__m256i *)(void *)b, _mm256_max_epu32(m0, m1));
  for (int j = 0; j < 8; j++) r = b[j] > r ? b[j] : r;
  for (; i < n; i++) {
    uint32_t v;
    memcpy(&v, x + i, 4);
    v &= 0x7fffffffu;
    r = v > r ? v : r;
  }
  memcpy(mx, &r, 4);
  return r < 0x7f800000u;
}

__attribute__((target("avx2"))) static inline __m256 codes8(__m256 v, __m256 vs, __m256 inv) {
  __m256 t = _mm256_mul_ps(v, inv);
  __m256 r = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 d = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), _mm256_sub_ps(t, r));
  __m256 near = _mm256_cmp_ps(d, _mm256_set1_ps(0.5f - TIE_BAND), _CMP_GT_OQ);
  if (_mm256_movemask_ps(near))
    r = _mm256_blendv_ps(r, _mm256_round_ps(_mm256_div_ps(v, vs), _MM_FROUND_TO_NEAREST_INT |
                                                                     _MM_FROUND_NO_EXC), near);
  return _mm256_min_ps(_mm256_max_ps(r, _mm256_set1_ps(-128.0f)), _mm256_set1_ps(127.0f));
}

__attribute__((target("avx2"))) static void quant_avx2(const float *x, uint8_t *u, int64_t n,
                                                       float s, int off) {
  const __m256 vs = _mm256_set1_ps(s), inv = _mm256_set1_ps(1.0f / s);
  const __m256i vo = _mm256_set1_epi32(off), perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    __m256i q[4];
    for (int j = 0; j < 4; j++)
      q[j] = _mm256_add_epi32(_mm256_cvtps_epi32(codes8(_mm256_loadu_ps(x + i + 8 * j), vs, inv)), vo);
    __m256i ab = _mm256_packs_epi32(q[0], q[1]), cd = _mm256_packs_epi32(q[2], q[3]);
    __m256i r = off ? _mm256_packus_epi16(ab, cd) : _mm256_packs_epi16(ab, cd);
    _mm256_storeu_si256((__m256i *)(void *)(u + i), _mm256_permutevar8x32_epi32(r, perm));
  }
  for (; i < n; i++) u[i] = (uint8_t)((int)code1(x[i], s) + off);
}

__attribute__((target("avx2"))) static void quantf_avx2(const float *x, float *f, int64_t n,
                                                        float s) {
  const __m256 vs = _mm256_set1_ps(s), inv = _mm256_set1_ps(1.0f / s);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(f + i, codes8(_mm256_loadu_ps(x + i), vs, inv));
  for (; i < n; i++) f[i] = code1(x[i], s);
}

/* f[i] = q[i] for whole vectors of 8; returns how many were done. */
__attribute__((target("avx2"))) static int64_t codes_f_avx2(const int8_t *q, float *f, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m128i b = _mm_loadl_epi64((const __m128i *)(const void *)(q + i));
    _mm256_storeu_ps(f + i, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)));
  }
  return i;
}

__attribute__((target("avx2"))) static uint32_t finish_avx2(float *y, int64_t n, float sc,
                                                            float bias, const float *res, int act,
                                                            float lo, float hi) {
  const __m256 vs = _mm256_set1_ps(sc), vb = _mm256_set1_ps(bias), vl = _mm256_set1_ps(lo),
               vh = _mm256_set1_ps(hi);
  const __m256i abs = _mm256_set1_epi32(0x7fffffff);
  __m256i mx = _mm256_setzero_si256();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 v = _mm256_add_ps(_mm256_mul_ps(vs, _mm256_loadu_ps(y + i)), vb);
    if (res) v = _mm256_add_ps(v, _mm256_loadu_ps(res + i));
    if (act) {
      v = _mm256_blendv_ps(v, vl, _mm256_cmp_ps(v, vl, _CMP_LT_OQ));
      v = _mm256_blendv_ps(v, vh, _mm256_cmp_ps(v, vh, _CMP_GT_OQ));
    }
    _mm256_storeu_ps(y + i, v);
    mx = _mm256_max_epu32(mx, _mm256_and_si256(_mm256_castps_si256(v), abs));
  }
  uint32_t b[8], r = 0;
  _mm256_storeu_si256((__m256i *)(void *)b, mx);
  for (int j = 0; j < 8; j++) r = b[j] > r ? b[j] : r;
  for (; i < n; i++) {
    float v = sc * y[i];
    v = v + bias;
    if (res) v = v + res[i];
    if (act) {
      v = v < lo ? lo : v;
      v = v > hi ? hi : v;
    }
    y[i] = v;
    uint32_t bits;
    memcpy(&bits, &v, 4);
    bits &= 0x7fffffffu;
    r = bits > r ? bits : r;
  }
  return r;
}
#endif

int nbl_t_absmax(nbl_t_isa isa, const float *x, int64_t n, float *mx) {
  if (!nbl_t_isa_supported(isa)) isa = NBL_T_SCALAR;
#if T_X86
  if (isa == NBL_T_AVX512) return absmax_avx512(x, n, mx);
  if (isa == NBL_T_AVX2) return absmax_avx2(x, n, mx);
#endif
  return absmax_scalar(x, n, mx);
}

void nbl_t_quant(nbl_t_isa isa, const float *x, uint8_t *u, int64_t n, float s, int off) {
  if (!nbl_t_isa_supported(isa) || !isfinite(1.0f / s)) isa = NBL_T_SCALAR; /* tiny s: divide */
#if T_X86
  if (isa == NBL_T_AVX512) {
    quant_avx512(x, u, n, s, off);
    return;
  }
  if (isa == NBL_T_AVX2) {
    quant_avx2(x, u, n, s, off);
    return;
  }
#endif
  for (int64_t i = 0; i < n; i++) u[i] = (uint8_t)((int)code1(x[i], s) + off);
}

void nbl_t_codes_f(nbl_t_isa isa, const int8_t *q, float *f, int64_t n) {
  int64_t i = 0;
#if T_X86
  if (isa == NBL_T_AVX512 && nbl_t_isa_supported(isa)) {
    codes_f_avx512(q, f, n);
    return;
  }
  if (isa == NBL_T_AVX2 && nbl_t_isa_supported(isa)) i = codes_f_avx2(q, f, n);
#endif
  for (; i < n; i++) f[i] = (float)q[i];
}

#if T_X86
/* Row x (W values; floats quantized with scale s, or codes q) as float
 * codes, even columns to ev, odd ones to od. */
__attribute__((target("avx512f,avx512bw,avx512vl"))) static void
deint2_avx512(const float *x, const int8_t *q, int64_t W, float s, float *ev, float *od) {
  const __m512 vs = _mm512_set1_ps(s), inv = _mm512_set1_ps(x ? 1.0f / s : 1.0f);
  const __m512i ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i io = _mm512_add_epi32(ie, _mm512_set1_epi32(1));
  for (int64_t i = 0; i < W; i += 32) {
    __mmask16 k0 = nbl_tmask(W - i), k1 = nbl_tmask(W - i - 16);
    __m512 a, b;
    if (x) {
      a = codes16(_mm512_maskz_loadu_ps(k0, x + i), vs, inv);
      b = codes16(_mm512_maskz_loadu_ps(k1, x + i + 16), vs, inv);
    } else {
      a = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(k0, q + i)));
      b = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(k1, q + i + 16)));
    }
    int64_t left = W - i; /* evens: (left + 1) / 2 of them, odds: left / 2 */
    _mm512_mask_storeu_ps(ev + i / 2, nbl_tmask((left + 1) / 2), _mm512_permutex2var_ps(a, ie, b));
    _mm512_mask_storeu_ps(od + i / 2, nbl_tmask(left / 2), _mm512_permutex2var_ps(a, io, b));
  }
}
#endif

void nbl_t_deint2_f(nbl_t_isa isa, const float *x, const int8_t *q, int64_t W, float s, float *ev,
                    float *od) {
#if T_X86
  if (isa == NBL_T_AVX512 && nbl_t_isa_supported(isa) && (!x || isfinite(1.0f / s))) {
    deint2_avx512(x, q, W, s, ev, od);
    return;
  }
#endif
  for (int64_t i = 0; i < W; i++) {
    float v = x ? code1(x[i], s) : (float)q[i];
    if (i % 2) od[i / 2] = v;
    else ev[i / 2] = v;
  }
}

void nbl_t_quant_f(nbl_t_isa isa, const float *x, float *f, int64_t n, float s) {
  if (!nbl_t_isa_supported(isa) || !isfinite(1.0f / s)) isa = NBL_T_SCALAR;
#if T_X86
  if (isa == NBL_T_AVX512) {
    quantf_avx512(x, f, n, s);
    return;
  }
  if (isa == NBL_T_AVX2) {
    quantf_avx2(x, f, n, s);
    return;
  }
#endif
  for (int64_t i = 0; i < n; i++) f[i] = code1(x[i], s);
}

uint32_t nbl_t_finish(nbl_t_isa isa, float *y, int64_t n, float sc, float bias, const float *res,
                      int act, float lo, float hi) {
  if (!nbl_t_isa_supported(isa)) isa = NBL_T_SCALAR;
#if T_X86
  if (isa == NBL_T_AVX512) return finish_avx512(y, n, sc, bias, res, act, lo, hi);
  if (isa == NBL_T_AVX2) return finish_avx2(y, n, sc, bias, res, act, lo, hi);
#endif
  uint32_t r = 0;
  for (int64_t i = 0; i < n; i++) {
    float v = sc * y[i];
    v = v + bias;
    if (res) v = v + res[i];
    if (act) {
      v = v < lo ? lo : v;
      v = v > hi ? hi : v;
    }
    y[i] = v;
    uint32_t bits;
    memcpy(&bits, &v, 4);
    bits &= 0x7fffffffu;
    r = bits > r ? bits : r;
  }
  return r;
}

/* ------------------------------------------------------------------ depthwise rows */

#if T_X86
/* Up to 4 vectors of output (row, 16 columns) at a time, in independent
 * accumulators (one chain of adds would wait on each add's latency): a
 * row's vectors in groups of 4, or for rows of 1 or 2 vectors, 4 or 2 rows
 * together. */
__attribute__((target("avx512f"))) static void dw_rows_avx512(
    const float *const *tap, const int *sign, int nt, int64_t Wp, int64_t oh0, int64_t oh1,
    int64_t OW, float *y, const nbl_t_epi *e, float bias) {
  const __m512 vs = _mm512_set1_ps(e->sc), vb = _mm512_set1_ps(bias),
               vl = _mm512_set1_ps(e->lo), vh = _mm512_set1_ps(e->hi);
  const __m512i abs = _mm512_set1_epi32(0x7fffffff);
  __m512i mx = _mm512_setzero_si512();
  int64_t nv = (OW + 15) / 16, rg = nv >= 3 ? 1 : 4 / nv;
  for (int64_t oh = oh0; oh < oh1; oh += rg) {
    int64_t nr = oh1 - oh < rg ? oh1 - oh : rg;
    for (int64_t v0 = 0; v0 < nv * nr; v0 += 4) {
      /* slot i: vector v0 + i of the nr rows' nv vectors each */
      int64_t src[4], dst[4];
      __mmask16 k[4];
      const float *rr[4];
      for (int i = 0; i < 4; i++) {
        int64_t v = v0 + i, r = v / nv, ow = v % nv * 16;
        k[i] = v < nv * nr ? (OW - ow >= 16 ? 0xFFFF : (__mmask16)((1u << (OW - ow)) - 1)) : 0;
        if (!k[i]) r = 0, ow = 0;
        src[i] = (oh + r) * Wp + ow;
        dst[i] = (oh + r - oh0) * OW + ow;
        rr[i] = e->res ? e->res + dst[i] : NULL;
      }
      __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
      for (int t = 0; t < nt; t++) {
        const float *p = tap[t];
        __m512 x0 = _mm512_maskz_loadu_ps(k[0], p + src[0]);
        __m512 x1 = _mm512_maskz_loadu_ps(k[1], p + src[1]);
        __m512 x2 = _mm512_maskz_loadu_ps(k[2], p + src[2]);
        __m512 x3 = _mm512_maskz_loadu_ps(k[3], p + src[3]);
        if (sign[t] > 0) {
          a0 = _mm512_add_ps(a0, x0), a1 = _mm512_add_ps(a1, x1);
          a2 = _mm512_add_ps(a2, x2), a3 = _mm512_add_ps(a3, x3);
        } else {
          a0 = _mm512_sub_ps(a0, x0), a1 = _mm512_sub_ps(a1, x1);
          a2 = _mm512_sub_ps(a2, x2), a3 = _mm512_sub_ps(a3, x3);
        }
      }
      __m512 acc[4] = {a0, a1, a2, a3};
      for (int i = 0; i < 4 && k[i]; i++) {
        __m512 f = _mm512_add_ps(_mm512_mul_ps(vs, acc[i]), vb);
        if (rr[i]) f = _mm512_add_ps(f, _mm512_maskz_loadu_ps(k[i], rr[i]));
        if (e->act) {
          f = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(f, vl, _CMP_LT_OQ), f, vl);
          f = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(f, vh, _CMP_GT_OQ), f, vh);
        }
        _mm512_mask_storeu_ps(y + dst[i], k[i], f);
        mx = _mm512_mask_max_epu32(mx, k[i], mx, _mm512_and_si512(_mm512_castps_si512(f), abs));
      }
    }
  }
  if (e->amax) {
    uint32_t b = _mm512_reduce_max_epu32(mx);
    if (b > *e->amax) *e->amax = b;
  }
}
#endif

int nbl_t_dw_rows(nbl_t_isa isa, const float *ph, int64_t plane, int64_t Wp, int64_t R, int64_t S,
                  int64_t KH, int64_t KW, int64_t dh, int64_t dw, const float *w, int64_t oh0,
                  int64_t oh1, int64_t OW, float *y, const nbl_t_epi *e, float bias) {
#if T_X86
  /* narrow planes: the plane kernel (a 16-lane row would be mostly masked) */
  if (isa != NBL_T_AVX512 || !nbl_t_isa_supported(isa) || KH * KW > 64 || OW < 16) return 0;
  const float *tap[64];
  int sign[64], nt = 0;
  for (int64_t kh = 0; kh < KH; kh++)
    for (int64_t kw = 0; kw < KW; kw++) {
      float c = w[kh * KW + kw];
      if (c == 0.0f) continue; /* a zero weight: nothing to add */
      int64_t ro = kh * dh, co = kw * dw;
      tap[nt] = ph + ((ro % R) * S + co % S) * plane + (ro / R) * Wp + co / S;
      sign[nt++] = c > 0.0f ? 1 : -1;
    }
  dw_rows_avx512(tap, sign, nt, Wp, oh0, oh1, OW, y, e, bias);
  return 1;
#else
  (void)isa, (void)ph, (void)plane, (void)Wp, (void)R, (void)S, (void)KH, (void)KW, (void)dh;
  (void)dw, (void)w, (void)oh0, (void)oh1, (void)OW, (void)y, (void)e, (void)bias;
  return 0;
#endif
}
