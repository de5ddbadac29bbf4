/* int4_gemm.c - the integer products of the INT4 path: GEMM micro-kernels
 * and convolution tiles (AVX-512 VNNI, AVX2, scalar; identical results),
 * exact int32 sums finished by the float epilogue; see int4_gemm.h. Weight
 * packing is in int4_pack.c, activation quantization in int4_quant.c. */
#include "runtime/kernels/int4_gemm.h"
#include "runtime/core/cpu.h"
#include "runtime/kernels/int4_vq.h"
#include "runtime/kernels/simd16.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define NBL_I4_X86 1
#else
#define NBL_I4_X86 0
#endif

/* ------------------------------------------------------------------ variants */

/* The features each variant needs (the target attributes it is built with). */
static const unsigned k_needs[3] = {
    [NBL_I4_SCALAR] = 0,
    [NBL_I4_AVX2] = NBL_CPU_AVX2 | NBL_CPU_FMA,
    [NBL_I4_VNNI] = NBL_CPU_AVX512F | NBL_CPU_AVX512BW | NBL_CPU_AVX512VL | NBL_CPU_AVX512VNNI,
};

nbl_i4_isa nbl_i4_best_isa(void) {
  unsigned a = nbl_cpu_allowed();
  return (a & k_needs[NBL_I4_VNNI]) == k_needs[NBL_I4_VNNI]   ? NBL_I4_VNNI
         : (a & k_needs[NBL_I4_AVX2]) == k_needs[NBL_I4_AVX2] ? NBL_I4_AVX2
                                                             : NBL_I4_SCALAR;
}

int nbl_i4_isa_supported(nbl_i4_isa isa) {
  return isa >= NBL_I4_SCALAR && isa <= NBL_I4_VNNI &&
         (nbl_cpu_features() & k_needs[isa]) == k_needs[isa];
}

const char *nbl_i4_isa_name(nbl_i4_isa isa) {
  switch (isa) {
  case NBL_I4_VNNI: return "avx512vnni";
  case NBL_I4_AVX2: return "avx2";
  default: return "scalar";
  }
}

/* ------------------------------------------------------------------ micro-kernels
 * Each computes a 6 x (16*np) tile of sum_k a[r][k] * W[k][col] over kq groups
 * of 4 k, rows from the 6 row pointers (duplicates allowed for short tiles),
 * and stores it to tile[6][32]. */

typedef void (*micro_fn)(const uint8_t *const *a, const int8_t *p0, const int8_t *p1, int np,
                         int64_t kq, int32_t *tile);

static void mk_scalar(const uint8_t *const *a, const int8_t *p0, const int8_t *p1, int np,
                      int64_t kq, int32_t *tile) {
  for (int r = 0; r < NBL_I4_MR; r++)
    for (int j = 0; j < np; j++) {
      const int8_t *p = j ? p1 : p0;
      int32_t acc[NBL_I4_NR] = {0};
      for (int64_t k = 0; k < kq; k++) {
        const uint8_t *ar = a[r] + 4 * k;
        const int8_t *pk = p + k * 4 * NBL_I4_NR;
        for (int c = 0; c < NBL_I4_NR; c++)
          acc[c] += ar[0] * pk[4 * c] + ar[1] * pk[4 * c + 1] + ar[2] * pk[4 * c + 2] +
                    ar[3] * pk[4 * c + 3];
      }
      memcpy(tile + r * 32 + j * NBL_I4_NR, acc, sizeof acc);
    }
}

#if NBL_I4_X86
static inline int32_t load4(const uint8_t *p) {
  int32_t v;
  memcpy(&v, p, 4);
  return v;
}


NBL_TARGET_VNNI static void mk_vnni(const uint8_t *const *a, const int8_t *p0, const int8_t *p1,
                                int np, int64_t kq, int32_t *tile) {
  const uint8_t *a0 = a[0], *a1 = a[1], *a2 = a[2], *a3 = a[3], *a4 = a[4], *a5 = a[5];
  __m512i c00 = _mm512_setzero_si512(), c10 = c00, c20 = c00, c30 = c00, c40 = c00, c50 = c00;
  if (np == 2) {
    __m512i c01 = c00, c11 = c00, c21 = c00, c31 = c00, c41 = c00, c51 = c00;
    for (int64_t k = 0; k < kq; k++) {
      __m512i b0 = _mm512_load_si512((const void *)(p0 + k * 64));
      __m512i b1 = _mm512_load_si512((const void *)(p1 + k * 64));
      __m512i v;
#define ROW2(r)                                         \
  v = _mm512_set1_epi32(load4(a##r + 4 * k));           \
  c##r##0 = _mm512_dpbusd_epi32(c##r##0, v, b0);        \
  c##r##1 = _mm512_dpbusd_epi32(c##r##1, v, b1);
      ROW2(0) ROW2(1) ROW2(2) ROW2(3) ROW2(4) ROW2(5)
#undef ROW2
    }
    _mm512_storeu_si512((void *)(tile + 0 * 32 + 16), c01);
    _mm512_storeu_si512((void *)(tile + 1 * 32 + 16), c11);
    _mm512_storeu_si512((void *)(tile + 2 * 32 + 16), c21);
    _mm512_storeu_si512((void *)(tile + 3 * 32 + 16), c31);
    _mm512_storeu_si512((void *)(tile + 4 * 32 + 16), c41);
    _mm512_storeu_si512((void *)(tile + 5 * 32 + 16), c51);
  } else {
    for (int64_t k = 0; k < kq; k++) {
      __m512i b0 = _mm512_load_si512((const void *)(p0 + k * 64));
      __m512i v;
#define ROW1(r)                               \
  v = _mm512_set1_epi32(load4(a##r + 4 * k)); \
  c##r##0 = _mm512_dpbusd_epi32(c##r##0, v, b0);
      ROW1(0) ROW1(1) ROW1(2) ROW1(3) ROW1(4) ROW1(5)
#undef ROW1
    }
  }
  _mm512_storeu_si512((void *)(tile + 0 * 32), c00);
  _mm512_storeu_si512((void *)(tile + 1 * 32), c10);
  _mm512_storeu_si512((void *)(tile + 2 * 32), c20);
  _mm512_storeu_si512((void *)(tile + 3 * 32), c30);
  _mm512_storeu_si512((void *)(tile + 4 * 32), c40);
  _mm512_storeu_si512((void *)(tile + 5 * 32), c50);
}

/* AVX2: one panel at a time (columns 0..7 and 8..15 as two ymm halves);
 * vpmaddubsw sums pairs of u8*s8 products into int16 (exact while
 * max|W| <= 64), vpmaddwd with ones widens pairs into the int32 lanes. */
NBL_TARGET_AVX2 static void mk_avx2(const uint8_t *const *a, const int8_t *p0, const int8_t *p1,
                                int np, int64_t kq, int32_t *tile) {
  const __m256i ones = _mm256_set1_epi16(1);
  for (int j = 0; j < np; j++) {
    const int8_t *p = j ? p1 : p0;
    const uint8_t *a0 = a[0], *a1 = a[1], *a2 = a[2], *a3 = a[3], *a4 = a[4], *a5 = a[5];
    __m256i c0l = _mm256_setzero_si256(), c0h = c0l, c1l = c0l, c1h = c0l, c2l = c0l, c2h = c0l,
            c3l = c0l, c3h = c0l, c4l = c0l, c4h = c0l, c5l = c0l, c5h = c0l;
    for (int64_t k = 0; k < kq; k++) {
      __m256i bl = _mm256_loadu_si256((const __m256i *)(p + k * 64));
      __m256i bh = _mm256_loadu_si256((const __m256i *)(p + k * 64 + 32));
      __m256i v;
#define ROWA(r)                                                                          \
  v = _mm256_set1_epi32(load4(a##r + 4 * k));                                            \
  c##r##l = _mm256_add_epi32(c##r##l, _mm256_madd_epi16(_mm256_maddubs_epi16(v, bl), ones)); \
  c##r##h = _mm256_add_epi32(c##r##h, _mm256_madd_epi16(_mm256_maddubs_epi16(v, bh), ones));
      ROWA(0) ROWA(1) ROWA(2) ROWA(3) ROWA(4) ROWA(5)
#undef ROWA
    }
    int32_t *t = tile + j * NBL_I4_NR;
    _mm256_storeu_si256((__m256i *)(t + 0 * 32), c0l);
    _mm256_storeu_si256((__m256i *)(t + 0 * 32 + 8), c0h);
    _mm256_storeu_si256((__m256i *)(t + 1 * 32), c1l);
    _mm256_storeu_si256((__m256i *)(t + 1 * 32 + 8), c1h);
    _mm256_storeu_si256((__m256i *)(t + 2 * 32), c2l);
    _mm256_storeu_si256((__m256i *)(t + 2 * 32 + 8), c2h);
    _mm256_storeu_si256((__m256i *)(t + 3 * 32), c3l);
    _mm256_storeu_si256((__m256i *)(t + 3 * 32 + 8), c3h);
    _mm256_storeu_si256((__m256i *)(t + 4 * 32), c4l);
    _mm256_storeu_si256((__m256i *)(t + 4 * 32 + 8), c4h);
    _mm256_storeu_si256((__m256i *)(t + 5 * 32), c5l);
    _mm256_storeu_si256((__m256i *)(t + 5 * 32 + 8), c5h);
  }
}
#endif

#if NBL_I4_X86
/* mk_avx2 for weights above 64 in magnitude: W = h + (W - h) with h = W >> 1
 * (the panels at p + hd), each part's vpmaddubsw exact, summed in int32. */
NBL_TARGET_AVX2 static void mk_avx2_split(const uint8_t *const *a, const int8_t *p0,
                                      const int8_t *p1, int np, int64_t kq, int32_t *tile,
                                      ptrdiff_t hd) {
  const __m256i ones = _mm256_set1_epi16(1);
  for (int j = 0; j < np; j++) {
    const int8_t *p = j ? p1 : p0;
    __m256i c[NBL_I4_MR][2];
    for (int r = 0; r < NBL_I4_MR; r++) c[r][0] = c[r][1] = _mm256_setzero_si256();
    for (int64_t k = 0; k < kq; k++) {
      __m256i bl = _mm256_loadu_si256((const __m256i *)(p + k * 64));
      __m256i bh = _mm256_loadu_si256((const __m256i *)(p + k * 64 + 32));
      __m256i hl = _mm256_loadu_si256((const __m256i *)(p + hd + k * 64));
      __m256i hh = _mm256_loadu_si256((const __m256i *)(p + hd + k * 64 + 32));
      __m256i ll = _mm256_sub_epi8(bl, hl), lh = _mm256_sub_epi8(bh, hh);
      for (int r = 0; r < NBL_I4_MR; r++) {
        __m256i v = _mm256_set1_epi32(load4(a[r] + 4 * k));
        c[r][0] = _mm256_add_epi32(c[r][0], _mm256_madd_epi16(_mm256_maddubs_epi16(v, hl), ones));
        c[r][0] = _mm256_add_epi32(c[r][0], _mm256_madd_epi16(_mm256_maddubs_epi16(v, ll), ones));
        c[r][1] = _mm256_add_epi32(c[r][1], _mm256_madd_epi16(_mm256_maddubs_epi16(v, hh), ones));
        c[r][1] = _mm256_add_epi32(c[r][1], _mm256_madd_epi16(_mm256_maddubs_epi16(v, lh), ones));
      }
    }
    int32_t *t = tile + j * NBL_I4_NR;
    for (int r = 0; r < NBL_I4_MR; r++) {
      _mm256_storeu_si256((__m256i *)(t + r * 32), c[r][0]);
      _mm256_storeu_si256((__m256i *)(t + r * 32 + 8), c[r][1]);
    }
  }
}
#endif

/* The init-once dispatch table, indexed by nbl_i4_isa. */
static micro_fn g_micro[3];
static pthread_once_t g_table_once = PTHREAD_ONCE_INIT;

static void init_table(void) {
  g_micro[NBL_I4_SCALAR] = mk_scalar;
  g_micro[NBL_I4_AVX2] = mk_scalar;
  g_micro[NBL_I4_VNNI] = mk_scalar;
#if NBL_I4_X86
  if (nbl_i4_isa_supported(NBL_I4_AVX2)) g_micro[NBL_I4_AVX2] = mk_avx2;
  if (nbl_i4_isa_supported(NBL_I4_VNNI)) g_micro[NBL_I4_VNNI] = mk_vnni;
#endif
}

/* Rows per cache block: A rows of a block stay in L2 while all panels pass. */
#define MB (NBL_I4_MR * 8)

void nbl_i4_gemm(nbl_i4_isa isa, const nbl_i4_weights *W, const uint8_t *A, int64_t lda,
                 int64_t m0, int64_t m1, int32_t a_zero, int32_t *C, int64_t ldc) {
  pthread_once(&g_table_once, init_table);
  if (!nbl_i4_isa_supported(isa)) isa = NBL_I4_SCALAR;
  int split = isa == NBL_I4_AVX2 && W->maxabs > 64; /* vpmaddubsw could saturate */
  if (split && !W->panels_half) isa = NBL_I4_SCALAR, split = 0;
  micro_fn mk = g_micro[isa];
  int64_t kq = W->Kp / 4, panels = W->Np / NBL_I4_NR;
  int32_t tile[NBL_I4_MR * 32];
  for (int64_t mb = m0; mb < m1; mb += MB) {
    int64_t me = mb + MB < m1 ? mb + MB : m1;
    for (int64_t j = 0; j < panels; j += 2) {
      int np = j + 1 < panels ? 2 : 1;
      const int8_t *p0 = W->panels + j * W->Kp * NBL_I4_NR;
      const int8_t *p1 = np == 2 ? p0 + W->Kp * NBL_I4_NR : NULL;
      int64_t n0 = j * NBL_I4_NR, nc = W->N - n0 < np * NBL_I4_NR ? W->N - n0 : np * NBL_I4_NR;
      for (int64_t m = mb; m < me; m += NBL_I4_MR) {
        int mr = me - m < NBL_I4_MR ? (int)(me - m) : NBL_I4_MR;
        const uint8_t *rows[NBL_I4_MR];
        for (int r = 0; r < NBL_I4_MR; r++) rows[r] = A + (m + (r < mr ? r : mr - 1)) * lda;
#if NBL_I4_X86
        if (split) mk_avx2_split(rows, p0, p1, np, kq, tile, W->panels_half - W->panels);
        else
#endif
          mk(rows, p0, p1, np, kq, tile);
        const int32_t *cs = W->colsum + n0;
        for (int r = 0; r < mr; r++) {
          int32_t *cr = C + (m + r) * ldc + n0;
          const int32_t *tr = tile + r * 32;
          for (int64_t c = 0; c < nc; c++) cr[c] = tr[c] - a_zero * cs[c];
        }
      }
    }
  }
}

/* ------------------------------------------------------------------ convolution products
 * Output channels x pixels: 16 pixels per AVX-512 vector (8 per AVX2 one),
 * weights broadcast, so a tile of 8 output channels x 32 pixels lands in
 * registers in the output's NCHW order and leaves through the epilogue. */


/* One tile: rows m..m+nr-1 (nr <= 8) of the block whose weights start at wb
 * ([Kp/4][8][4]), pixels p..p+np-1 (np <= 32), results to Ci or Y. */
typedef struct tile_args {
  const nbl_i4_rows *W;
  const uint8_t *X4;
  int64_t ld;
  int32_t a_zero;
  int32_t *Ci;
  float *Y;
  const nbl_i4_epi *e;
} tile_args;

static inline float epi_one(const nbl_i4_epi *e, int64_t m, int32_t acc, int64_t o) {
  float v = e->sc * (float)acc + (e->bias ? e->bias[m] : 0.0f);
  if (e->res) v = v + e->res[o];
  if (e->act) {
    v = v < e->lo ? e->lo : v;
    v = v > e->hi ? e->hi : v;
  }
  return v;
}

/* acc[r][i] (r < nr, i < np) with the zero-point correction applied, out. */
static void tile_store(const tile_args *t, int64_t m, int nr, int64_t p, int np,
                       const int32_t *acc /* [8][32] */) {
  for (int r = 0; r < nr; r++) {
    int32_t corr = t->a_zero * t->W->rowsum[m + r];
    const int32_t *a = acc + r * 32;
    if (t->Ci) {
      int32_t *c = t->Ci + (m + r) * t->ld + p;
      for (int i = 0; i < np; i++) c[i] = a[i] - corr;
    } else {
      const nbl_i4_epi *e = t->e;
      for (int i = 0; i < np; i++) {
        int64_t o = (m + r) * t->ld + p + i;
        float v = epi_one(e, m + r, a[i] - corr, o);
        if (e->codes)
          e->codes[o] = (uint8_t)(nbl_q4_code(e->q->cfg, e->q->p, v, 0) + e->off);
        else if (!e->no_store)
          t->Y[o] = v;
        if (e->range) nbl_i4_range_widen(e->range, v, v, v != v);
      }
    }
  }
}

static void tile_scalar(const tile_args *t, int64_t m, int nr, int64_t p, int np) {
  int32_t acc[NBL_I4_CR * 32];
  memset(acc, 0, sizeof acc);
  const int8_t *wb = t->W->w + (m / NBL_I4_CR) * t->W->Kp * NBL_I4_CR;
  for (int64_t k4 = 0; k4 < t->W->Kp / 4; k4++) {
    const uint8_t *x = t->X4 + (p / 32 * t->W->Kp / 4 + k4) * 128;
    const int8_t *w = wb + k4 * 4 * NBL_I4_CR;
    for (int r = 0; r < nr; r++)
      for (int i = 0; i < np; i++)
        acc[r * 32 + i] += x[4 * i] * w[4 * r] + x[4 * i + 1] * w[4 * r + 1] +
                           x[4 * i + 2] * w[4 * r + 2] + x[4 * i + 3] * w[4 * r + 3];
  }
  tile_store(t, m, nr, p, np, acc);
}

#if NBL_I4_X86
NBL_TARGET_VNNI static void tile_vnni(const tile_args *t, int64_t m, int nr, int64_t p, int np) {
  const uint8_t *wb = (const uint8_t *)t->W->w + (m / NBL_I4_CR) * t->W->Kp * NBL_I4_CR;
  const uint8_t *x = t->X4 + p / 32 * t->W->Kp * 32;
  int64_t kq = t->W->Kp / 4, xs = 128;
  /* named accumulators: an array indexed in a loop would live on the stack */
  __m512i a00 = _mm512_setzero_si512(), a10 = a00, a20 = a00, a30 = a00, a40 = a00, a50 = a00,
          a60 = a00, a70 = a00;
  __m512i a01 = a00, a11 = a00, a21 = a00, a31 = a00, a41 = a00, a51 = a00, a61 = a00, a71 = a00;
#define TV_ROW2(r)                                                  \
  w = _mm512_set1_epi32(load4(wb + 4 * r));                         \
  a##r##0 = _mm512_dpbusd_epi32(a##r##0, x0, w);                    \
  a##r##1 = _mm512_dpbusd_epi32(a##r##1, x1, w);
#define TV_ROW1(r)                                                  \
  a##r##0 = _mm512_dpbusd_epi32(a##r##0, x0, _mm512_set1_epi32(load4(wb + 4 * r)));
  if (np > 16) {
    for (int64_t k = 0; k < kq; k++, x += xs, wb += 4 * NBL_I4_CR) {
      __m512i x0 = _mm512_loadu_si512((const void *)x);
      __m512i x1 = _mm512_loadu_si512((const void *)(x + 64));
      __m512i w;
      TV_ROW2(0) TV_ROW2(1) TV_ROW2(2) TV_ROW2(3) TV_ROW2(4) TV_ROW2(5) TV_ROW2(6) TV_ROW2(7)
    }
  } else {
    for (int64_t k = 0; k < kq; k++, x += xs, wb += 4 * NBL_I4_CR) {
      __m512i x0 = _mm512_loadu_si512((const void *)x);
      TV_ROW1(0) TV_ROW1(1) TV_ROW1(2) TV_ROW1(3) TV_ROW1(4) TV_ROW1(5) TV_ROW1(6) TV_ROW1(7)
    }
  }
#undef TV_ROW1
#undef TV_ROW2
  __m512i a[NBL_I4_CR][2] = {{a00, a01}, {a10, a11}, {a20, a21}, {a30, a31},
                             {a40, a41}, {a50, a51}, {a60, a61}, {a70, a71}};
  __mmask16 m0 = nbl_tail_mask(np), m1 = nbl_tail_mask(np > 16 ? np - 16 : 0);
  if (t->Ci) { /* raw accumulators */
    for (int r = 0; r < nr; r++) {
      __m512i corr = _mm512_set1_epi32(t->a_zero * t->W->rowsum[m + r]);
      int32_t *c = t->Ci + (m + r) * t->ld + p;
      _mm512_mask_storeu_epi32(c, m0, _mm512_sub_epi32(a[r][0], corr));
      if (m1) _mm512_mask_storeu_epi32(c + 16, m1, _mm512_sub_epi32(a[r][1], corr));
    }
    return;
  }
  const nbl_i4_epi *e = t->e;
  nbl_i4_range *rg = e->range;
  __m512 vmin = _mm512_set1_ps(INFINITY), vmax = _mm512_set1_ps(-INFINITY);
  __mmask16 nan = 0;
  /* the parameters in registers (the stores could alias them); the clamp as
   * max(lo, v), min(hi, v), which return v when it is NaN, like the
   * comparisons of the reference; a NaN needs a non-finite scale or bias */
  const int act = e->act;
  const __m512 vs = _mm512_set1_ps(e->sc), lo = _mm512_set1_ps(act ? e->lo : -INFINITY),
               hi = _mm512_set1_ps(act ? e->hi : INFINITY);
  const int sc_finite = isfinite(e->sc) && !e->res; /* a residual can bring a NaN */
  const float *res = e->res;
  uint8_t *codes = e->codes;
  quant_consts qk;
  __m512i voff = _mm512_set1_epi32(e->off + (codes ? e->q->p->zero : 0)); /* centered codes + */
  if (codes) qk = quant_consts_of(e->q);
  for (int r = 0; r < nr; r++) {
    __m512i corr = _mm512_set1_epi32(t->a_zero * t->W->rowsum[m + r]);
    __m512i v0 = _mm512_sub_epi32(a[r][0], corr), v1 = _mm512_sub_epi32(a[r][1], corr);
    float bias = e->bias ? e->bias[m + r] : 0.0f;
    const __m512 vb = _mm512_set1_ps(bias);
    __m512 f0 = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(v0), vs), vb);
    __m512 f1 = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(v1), vs), vb);
    if (res) {
      const float *rr = res + (m + r) * t->ld + p;
      f0 = _mm512_add_ps(f0, _mm512_maskz_loadu_ps(m0, rr));
      f1 = _mm512_add_ps(f1, _mm512_maskz_loadu_ps(m1, rr + 16));
    }
    if (act) {
      f0 = _mm512_min_ps(hi, _mm512_max_ps(lo, f0));
      f1 = _mm512_min_ps(hi, _mm512_max_ps(lo, f1));
    }
    if (codes) {
      uint8_t *u = codes + (m + r) * t->ld + p;
      __m512i c0 = _mm512_add_epi32(_mm512_cvtps_epi32(quant_centered16(&qk, f0)), voff);
      _mm_mask_storeu_epi8(u, m0, _mm512_cvtepi32_epi8(c0));
      if (m1) {
        __m512i c1 = _mm512_add_epi32(_mm512_cvtps_epi32(quant_centered16(&qk, f1)), voff);
        _mm_mask_storeu_epi8(u + 16, m1, _mm512_cvtepi32_epi8(c1));
      }
    } else if (!e->no_store) {
      float *y = t->Y + (m + r) * t->ld + p;
      _mm512_mask_storeu_ps(y, m0, f0);
      if (m1) _mm512_mask_storeu_ps(y + 16, m1, f1);
    }
    if (rg) { /* min/max of the stored lanes; NaN noted apart */
      vmin = _mm512_mask_min_ps(vmin, m0, vmin, f0);
      vmax = _mm512_mask_max_ps(vmax, m0, vmax, f0);
      vmin = _mm512_mask_min_ps(vmin, m1, vmin, f1);
      vmax = _mm512_mask_max_ps(vmax, m1, vmax, f1);
      if (!sc_finite || !isfinite(bias))
        nan |= _mm512_mask_cmp_ps_mask(m0, f0, f0, _CMP_UNORD_Q) |
               _mm512_mask_cmp_ps_mask(m1, f1, f1, _CMP_UNORD_Q);
    }
  }
  if (rg) nbl_i4_range_widen(rg, _mm512_reduce_min_ps(vmin), _mm512_reduce_max_ps(vmax), nan != 0);
}

/* The direct kernel's epilogue (code_direct.h) on the valid lanes k of one
 * vector of corrected sums, packed to the consecutive outputs from o on:
 * tile_vnni's operations in its order. */
NBL_TARGET_VNNI static inline void direct_vec(const nbl_i4_epi *e, const quant_consts *qk,
                                              __m512i v, __mmask16 k, int64_t o, float *Y,
                                              float bias, __m512 *vmin, __m512 *vmax,
                                              __mmask16 *nan) {
  const __m512 vs = _mm512_set1_ps(e->sc), vb = _mm512_set1_ps(bias);
  __m512 f = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(v), vs), vb);
  __mmask16 t = k;
  if (k != 0xFFFF) { /* the valid lanes first, in order */
    f = _mm512_maskz_compress_ps(k, f);
    t = (__mmask16)((1u << __builtin_popcount(k)) - 1);
  }
  if (e->res) f = _mm512_add_ps(f, _mm512_maskz_loadu_ps(t, e->res + o));
  if (e->act)
    f = _mm512_min_ps(_mm512_set1_ps(e->hi), _mm512_max_ps(_mm512_set1_ps(e->lo), f));
  if (e->codes) {
    __m512i c = _mm512_add_epi32(_mm512_cvtps_epi32(quant_centered16(qk, f)),
                                 _mm512_set1_epi32(e->off + e->q->p->zero));
    _mm_mask_storeu_epi8(e->codes + o, t, _mm512_cvtepi32_epi8(c));
  } else if (!e->no_store) {
    _mm512_mask_storeu_ps(Y + o, t, f);
  }
  if (e->range) {
    *vmin = _mm512_mask_min_ps(*vmin, t, *vmin, f);
    *vmax = _mm512_mask_max_ps(*vmax, t, *vmax, f);
    *nan |= _mm512_mask_cmp_ps_mask(t, f, f, _CMP_UNORD_Q);
  }
}

NBL_TARGET_VNNI static void direct_store_vnni(const nbl_i4_direct_out *o, int64_t m, int nm,
                                              const int32_t *acc, const uint16_t k[2],
                                              const int64_t at[2]) {
  const nbl_i4_epi *e = o->e;
  quant_consts qk;
  if (e->codes) qk = quant_consts_of(e->q);
  else memset(&qk, 0, sizeof qk);
  __m512 vmin = _mm512_set1_ps(INFINITY), vmax = _mm512_set1_ps(-INFINITY);
  __mmask16 nan = 0;
  for (int r = 0; r < nm; r++) {
    float bias = e->bias ? e->bias[m + r] : 0.0f;
    int64_t row = (m + r) * o->ld;
    for (int h = 0; h < 2; h++)
      if (k[h])
        direct_vec(e, &qk, _mm512_loadu_si512(acc + r * 32 + 16 * h), (__mmask16)k[h],
                   row + at[h], o->Y, bias, &vmin, &vmax, &nan);
  }
  if (e->range)
    nbl_i4_range_widen(e->range, _mm512_reduce_min_ps(vmin), _mm512_reduce_max_ps(vmax), nan != 0);
}

/* AVX2: 8 pixels per vector, vpmaddubsw and vpmaddwd with ones. vpmaddubsw
 * adds two u8 * s8 products into an int16, exact while max|W| <= 64; larger
 * weights (8-bit layers) are split as W = h + (W - h), h = W >> 1 (packed as
 * W->w_half), each part at most 64 in magnitude, and summed in int32. The
 * epilogue (as tile_vnni's: zero-point correction, mul then add, residual,
 * clamp, range) runs on the registers of each group of 8 pixels. */
NBL_TARGET_AVX2 static void tile_avx2(const tile_args *t, int64_t m, int nr, int64_t p, int np) {
  const __m256i ones = _mm256_set1_epi16(1);
  int64_t kq = t->W->Kp / 4, xs = 128;
  const int8_t *w0 = t->W->w + (m / NBL_I4_CR) * t->W->Kp * NBL_I4_CR;
  const int8_t *h0 = t->W->w_half ? t->W->w_half + (w0 - t->W->w) : NULL;
  const nbl_i4_epi *e = t->e;
  /* the float epilogue's constants in registers (the stores could alias e) */
  const int act = e && e->act, store = e && !e->no_store && !e->codes;
  const __m256 vs = _mm256_set1_ps(e ? e->sc : 0.0f);
  const __m256 lo = _mm256_set1_ps(act ? e->lo : -INFINITY), hi = _mm256_set1_ps(act ? e->hi : INFINITY);
  const float *res = e ? e->res : NULL;
  nbl_i4_range *rg = e ? e->range : NULL;
  const int sc_finite = e && isfinite(e->sc) && !res; /* a residual can bring a NaN */
  __m256 vmin = _mm256_set1_ps(INFINITY), vmax = _mm256_set1_ps(-INFINITY);
  int nan = 0;
  int32_t acc[NBL_I4_CR * 32]; /* codes: the scalar store */
  for (int q = 0; q < np; q += 8) {
    const int8_t *wb = w0, *hb = h0;
    const uint8_t *x = t->X4 + p / 32 * t->W->Kp * 32 + q * 4;
    /* named accumulators: an array indexed in a loop would live on the stack */
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0,
            a7 = a0;
#define TA_ROW(r)                                                                        \
  a##r = _mm256_add_epi32(                                                               \
      a##r, _mm256_madd_epi16(                                                           \
                _mm256_maddubs_epi16(x0, _mm256_set1_epi32(load4((const uint8_t *)wb + 4 * r))), \
                ones));
#define TA_ROWS(r)                                                                       \
  w = _mm256_set1_epi32(load4((const uint8_t *)wb + 4 * r));                             \
  h = _mm256_set1_epi32(load4((const uint8_t *)hb + 4 * r));                             \
  a##r = _mm256_add_epi32(a##r, _mm256_madd_epi16(_mm256_maddubs_epi16(x0, h), ones));   \
  a##r = _mm256_add_epi32(                                                               \
      a##r, _mm256_madd_epi16(_mm256_maddubs_epi16(x0, _mm256_sub_epi8(w, h)), ones));
    if (!hb) {
      for (int64_t k = 0; k < kq; k++, x += xs, wb += 4 * NBL_I4_CR) {
        __m256i x0 = _mm256_loadu_si256((const __m256i *)(const void *)x);
        TA_ROW(0) TA_ROW(1) TA_ROW(2) TA_ROW(3) TA_ROW(4) TA_ROW(5) TA_ROW(6) TA_ROW(7)
      }
    } else {
      for (int64_t k = 0; k < kq; k++, x += xs, wb += 4 * NBL_I4_CR, hb += 4 * NBL_I4_CR) {
        __m256i x0 = _mm256_loadu_si256((const __m256i *)(const void *)x), w, h;
        TA_ROWS(0) TA_ROWS(1) TA_ROWS(2) TA_ROWS(3) TA_ROWS(4) TA_ROWS(5) TA_ROWS(6) TA_ROWS(7)
      }
    }
#undef TA_ROW
#undef TA_ROWS
    const __m256i a[NBL_I4_CR] = {a0, a1, a2, a3, a4, a5, a6, a7};
    int cnt = np - q < 8 ? np - q : 8;
    __m256i mk = nbl_tail8(cnt);
    for (int r = 0; r < nr; r++) {
      __m256i v = _mm256_sub_epi32(a[r], _mm256_set1_epi32(t->a_zero * t->W->rowsum[m + r]));
      int64_t o = (m + r) * t->ld + p + q;
      if (t->Ci) {
        if (cnt == 8) _mm256_storeu_si256((__m256i *)(void *)(t->Ci + o), v);
        else _mm256_maskstore_epi32(t->Ci + o, mk, v);
        continue;
      }
      if (e->codes) {
        _mm256_storeu_si256((__m256i *)(void *)(acc + r * 32 + q), a[r]);
        continue;
      }
      float bias = e->bias ? e->bias[m + r] : 0.0f;
      __m256 f = _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(v), vs), _mm256_set1_ps(bias));
      if (res) f = _mm256_add_ps(f, nbl_load8(res + o, cnt));
      if (act) f = _mm256_min_ps(hi, _mm256_max_ps(lo, f));
      if (store) nbl_store8(t->Y + o, cnt, f);
      if (rg) /* min/max of the stored lanes; NaN noted apart */
        nan |= nbl_minmax8(&vmin, &vmax, f, _mm256_castsi256_ps(mk),
                           !sc_finite || !isfinite(bias));
    }
  }
  if (e && e->codes) {
    tile_store(t, m, nr, p, np, acc);
    return;
  }
  if (!t->Ci && rg) nbl_i4_range_widen(rg, nbl_hmin8(vmin), nbl_hmax8(vmax), nan != 0);
}
#endif

void nbl_i4_conv_gemm(nbl_i4_isa isa, const nbl_i4_rows *W, const uint8_t *X4, int32_t a_zero, int64_t m0, int64_t m1, int64_t p0, int64_t p1, int32_t *Ci,
                      float *Y, int64_t ld, const nbl_i4_epi *e) {
  if (!nbl_i4_isa_supported(isa)) isa = NBL_I4_SCALAR;
  if (isa == NBL_I4_AVX2 && W->maxabs > 64 && !W->w_half) isa = NBL_I4_SCALAR;
  tile_args t = {W, X4, ld, a_zero, Ci, Y, e};
  /* m0 is a multiple of NBL_I4_CR and p0 of 32: tiles start at block boundaries */
  for (int64_t p = p0; p < p1; p += 32) {
    int np = p1 - p < 32 ? (int)(p1 - p) : 32;
    for (int64_t m = m0; m < m1; m += NBL_I4_CR) {
      int nr = m1 - m < NBL_I4_CR ? (int)(m1 - m) : NBL_I4_CR;
#if NBL_I4_X86
      if (isa == NBL_I4_VNNI) {
        tile_vnni(&t, m, nr, p, np);
        continue;
      }
      if (isa == NBL_I4_AVX2) {
        tile_avx2(&t, m, nr, p, np);
        continue;
      }
#endif
      tile_scalar(&t, m, nr, p, np);
    }
  }
}

void nbl_i4_direct_store(const void *ctx, int64_t m, int nm, const int32_t *acc,
                         const uint16_t k[2], const int64_t at[2]) {
#if NBL_I4_X86
  direct_store_vnni(ctx, m, nm, acc, k, at);
#else
  (void)ctx, (void)m, (void)nm, (void)acc, (void)k, (void)at;
#endif
}
