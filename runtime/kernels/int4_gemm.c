/* int4_gemm.c - integer GEMM micro-kernels (AVX-512 VNNI, AVX2, scalar) and
 * activation quantization to bytes; see int4_gemm.h. */
#include "runtime/kernels/int4_gemm.h"
#include "runtime/kernels/simd16.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>
#define NBL_I4_X86 1
#else
#define NBL_I4_X86 0
#endif

/* ------------------------------------------------------------------ CPU features */

static int g_have[3];
static nbl_i4_isa g_best;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

#if NBL_I4_X86
static unsigned long long xgetbv0(void) {
  unsigned eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return ((unsigned long long)edx << 32) | eax;
}
#endif

static void detect(void) {
  g_have[NBL_I4_SCALAR] = 1;
#if NBL_I4_X86
  unsigned a, b, c, d;
  if (__get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 27)) /* OSXSAVE */) {
    unsigned long long xcr = xgetbv0();
    int ymm = (xcr & 0x6) == 0x6, zmm = (xcr & 0xe6) == 0xe6;
    if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
      int avx2 = (b >> 5) & 1, f = (b >> 16) & 1, bw = (b >> 30) & 1, vnni = (c >> 11) & 1;
      g_have[NBL_I4_AVX2] = ymm && avx2;
      g_have[NBL_I4_VNNI] = zmm && f && bw && vnni;
    }
  }
#endif
  g_best = g_have[NBL_I4_VNNI] ? NBL_I4_VNNI : g_have[NBL_I4_AVX2] ? NBL_I4_AVX2 : NBL_I4_SCALAR;
  const char *cap = getenv("NBL_INT4_ISA");
  if (cap) {
    nbl_i4_isa want = !strcmp(cap, "scalar") ? NBL_I4_SCALAR
                      : !strcmp(cap, "avx2") ? NBL_I4_AVX2
                                             : NBL_I4_VNNI;
    if (want < g_best) g_best = want;
  }
}

nbl_i4_isa nbl_i4_best_isa(void) {
  pthread_once(&g_once, detect);
  return g_best;
}

int nbl_i4_isa_supported(nbl_i4_isa isa) {
  pthread_once(&g_once, detect);
  return isa >= NBL_I4_SCALAR && isa <= NBL_I4_VNNI && g_have[isa];
}

const char *nbl_i4_isa_name(nbl_i4_isa isa) {
  switch (isa) {
  case NBL_I4_VNNI: return "avx512vnni";
  case NBL_I4_AVX2: return "avx2";
  default: return "scalar";
  }
}

/* ------------------------------------------------------------------ packing */

int nbl_i4_pack_weights(const int8_t *w, int64_t K, int64_t N, int64_t sk, int64_t sn,
                        nbl_i4_weights *out) {
  memset(out, 0, sizeof *out);
  out->K = K;
  out->N = N;
  out->Kp = (K + 3) / 4 * 4;
  out->Np = (N + NBL_I4_NR - 1) / NBL_I4_NR * NBL_I4_NR;
  size_t bytes = (size_t)(out->Kp * out->Np);
  size_t alloc = (bytes + 63) / 64 * 64;
  out->panels = aligned_alloc(64, alloc ? alloc : 64);
  out->colsum = calloc((size_t)(N ? N : 1), sizeof(int32_t));
  if (!out->panels || !out->colsum) {
    nbl_i4_weights_free(out);
    return -1;
  }
  memset(out->panels, 0, alloc ? alloc : 64);
  int maxabs = 0;
  for (int64_t k = 0; k < K; k++)
    for (int64_t n = 0; n < N; n++) {
      int v = w[k * sk + n * sn];
      int64_t j = n / NBL_I4_NR, c = n % NBL_I4_NR;
      out->panels[j * out->Kp * NBL_I4_NR + ((k / 4) * NBL_I4_NR + c) * 4 + k % 4] = (int8_t)v;
      out->colsum[n] += v;
      if (abs(v) > maxabs) maxabs = abs(v);
    }
  out->maxabs = maxabs;
  if (maxabs > 64) { /* AVX2 splits such weights in two halves of at most 64 */
    out->panels_half = aligned_alloc(64, alloc ? alloc : 64);
    if (!out->panels_half) {
      nbl_i4_weights_free(out);
      return -1;
    }
    for (size_t i = 0; i < (alloc ? alloc : 64); i++)
      out->panels_half[i] = (int8_t)(out->panels[i] >> 1);
  }
  return 0;
}

void nbl_i4_weights_free(nbl_i4_weights *w) {
  free(w->panels_half);
  free(w->panels);
  free(w->colsum);
  memset(w, 0, sizeof *w);
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

#define VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
#define AVX2_TARGET __attribute__((target("avx2,fma")))

VNNI_TARGET static void mk_vnni(const uint8_t *const *a, const int8_t *p0, const int8_t *p1,
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
AVX2_TARGET static void mk_avx2(const uint8_t *const *a, const int8_t *p0, const int8_t *p1,
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
AVX2_TARGET static void mk_avx2_split(const uint8_t *const *a, const int8_t *p0,
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
  pthread_once(&g_once, detect);
  g_micro[NBL_I4_SCALAR] = mk_scalar;
  g_micro[NBL_I4_AVX2] = mk_scalar;
  g_micro[NBL_I4_VNNI] = mk_scalar;
#if NBL_I4_X86
  if (g_have[NBL_I4_AVX2]) g_micro[NBL_I4_AVX2] = mk_avx2;
  if (g_have[NBL_I4_VNNI]) g_micro[NBL_I4_VNNI] = mk_vnni;
#endif
}

/* Rows per cache block: A rows of a block stay in L2 while all panels pass. */
#define MB (NBL_I4_MR * 8)

void nbl_i4_gemm(nbl_i4_isa isa, const nbl_i4_weights *W, const uint8_t *A, int64_t lda,
                 int64_t m0, int64_t m1, int32_t a_zero, int32_t *C, int64_t ldc) {
  pthread_once(&g_table_once, init_table);
  if (isa < NBL_I4_SCALAR || isa > NBL_I4_VNNI || !g_have[isa]) isa = NBL_I4_SCALAR;
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

/* ------------------------------------------------------------------ activation bytes */

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
VNNI_TARGET static inline void deint2_store(__m512 a, __m512 b, size_t r, float *ev, float *od) {
  const __m512i ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i io = _mm512_add_epi32(ie, _mm512_set1_epi32(1));
  _mm512_mask_storeu_ps(ev, nbl_tail_mask((r + 1) / 2), _mm512_permutex2var_ps(a, ie, b));
  _mm512_mask_storeu_ps(od, nbl_tail_mask(r / 2), _mm512_permutex2var_ps(a, io, b));
}

/* The quantizer's constants as vectors, in registers for a whole row: the
 * output stores could alias the parameters, which would otherwise be
 * reloaded and converted for every vector. */
typedef struct quant_consts {
  __m512 inv, tie, scale, cmin, cmax, clo, chi; /* cmin, cmax: qmin - zero, qmax - zero */
  int clip;
  __mmask16 divide_all; /* all lanes take the division (1 / s is not usable) */
} quant_consts;

VNNI_TARGET static inline quant_consts quant_consts_of(const nbl_i4_quantizer *q) {
  const nbl_q4_params *p = q->p;
  quant_consts k = {_mm512_set1_ps(q->inv),
                    _mm512_set1_ps(q->tie),
                    _mm512_set1_ps(p->scale),
                    _mm512_set1_ps((float)(p->qmin - p->zero)),
                    _mm512_set1_ps((float)(p->qmax - p->zero)),
                    _mm512_set1_ps(p->clip_lo),
                    _mm512_set1_ps(p->clip_hi),
                    p->clip,
                    q->inv == 0.0f ? (__mmask16)0xffff : (__mmask16)0};
  return k;
}

/* Half-even codes minus the zero point, 16 floats at a time: the float
 * operations of nbl_q4_code (clamp, x / s, round to nearest even, + z,
 * clamp) with the zero point taken out of the last clamp, to qmin - z and
 * qmax - z: the same integers (r + z is exact below 2^24, and beyond the
 * code range both sides clamp to the same end; a NaN clamps to qmin - z
 * both ways). */
VNNI_TARGET static inline __m512 quant_centered16(const quant_consts *k, __m512 v) {
  if (k->clip) v = _mm512_min_ps(_mm512_max_ps(v, k->clo), k->chi);
  __m512 y = _mm512_mul_ps(v, k->inv);
  __m512 r = _mm512_roundscale_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 d = _mm512_abs_ps(_mm512_sub_ps(y, r));
  __mmask16 near = _mm512_cmp_ps_mask(d, k->tie, _CMP_GT_OQ) | k->divide_all;
  if (near) {
    y = _mm512_mask_div_ps(y, near, v, k->scale);
    r = _mm512_roundscale_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  return _mm512_min_ps(_mm512_max_ps(r, k->cmin), k->cmax);
}

/* Two vectors at once, one branch for both. */
VNNI_TARGET static inline void quant_centered32(const quant_consts *k, __m512 v0, __m512 v1,
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
VNNI_TARGET static inline void quant_block32(const quant_consts *k, const float *x, size_t r,
                                             __m512 *a, __m512 *b, __mmask16 *m0,
                                             __mmask16 *m1) {
  *m0 = nbl_tail_mask((int64_t)r);
  *m1 = nbl_tail_mask(r > 16 ? (int64_t)r - 16 : 0);
  quant_centered32(k, _mm512_maskz_loadu_ps(*m0, x), _mm512_maskz_loadu_ps(*m1, x + 16), a, b);
}

VNNI_TARGET static void quant_u8_avx512(const nbl_i4_quantizer *q, const float *x, uint8_t *u,
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
VNNI_TARGET static void quant_f_rows_avx512(const nbl_i4_quantizer *q, const float *x, size_t w,
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
VNNI_TARGET static void quant_f_deint2_avx512(const nbl_i4_quantizer *q, const float *x, size_t w,
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

AVX2_TARGET static inline quant_consts8 quant_consts8_of(const nbl_i4_quantizer *q) {
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

AVX2_TARGET static inline __m256 quant_centered8(const quant_consts8 *k, __m256 v) {
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
AVX2_TARGET static inline void store_bytes8(uint8_t *u, __m256i c, size_t r) {
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

AVX2_TARGET static void quant_u8_avx2(const nbl_i4_quantizer *q, const float *x, uint8_t *u,
                                      size_t n, int off) {
  const quant_consts8 k = quant_consts8_of(q);
  const __m256i vo = _mm256_set1_epi32(off + q->p->zero);
  for (size_t i = 0; i < n; i += 8) {
    __m256 c = quant_centered8(&k, nbl_load8(x + i, (int64_t)(n - i)));
    store_bytes8(u + i, _mm256_add_epi32(_mm256_cvtps_epi32(c), vo), n - i);
  }
}

AVX2_TARGET static void quant_f_rows_avx2(const nbl_i4_quantizer *q, const float *x, size_t w,
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
AVX2_TARGET static inline void deint2_store8(__m256 a, __m256 b, size_t r, float *ev, float *od) {
  /* [a0 a2 b0 b2 | a4 a6 b4 b6] -> [a0 a2 a4 a6 b0 b2 b4 b6] */
  __m256 e = _mm256_castpd_ps(_mm256_permute4x64_pd(
      _mm256_castps_pd(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0))), _MM_SHUFFLE(3, 1, 2, 0)));
  __m256 o = _mm256_castpd_ps(_mm256_permute4x64_pd(
      _mm256_castps_pd(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1))), _MM_SHUFFLE(3, 1, 2, 0)));
  nbl_store8(ev, (int64_t)(r + 1) / 2, e);
  nbl_store8(od, (int64_t)r / 2, o);
}

AVX2_TARGET static void quant_f_deint2_avx2(const nbl_i4_quantizer *q, const float *x, size_t w,
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
AVX2_TARGET static inline __m256i load_bytes8(const uint8_t *u, size_t r) {
  if (r >= 8) return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)u));
  uint8_t t[8] = {0};
  memcpy(t, u, r);
  return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)t));
}

AVX2_TARGET static void codes_rows_avx2(const uint8_t *u, size_t w, size_t rows, float *f,
                                        size_t ld, int bias) {
  const __m256i vb = _mm256_set1_epi32(bias);
  for (size_t r = 0; r < rows; r++, u += w, f += ld)
    for (size_t i = 0; i < w; i += 8)
      nbl_store8(f + i, (int64_t)(w - i),
                 _mm256_cvtepi32_ps(_mm256_sub_epi32(load_bytes8(u + i, w - i), vb)));
}

AVX2_TARGET static void codes_deint2_avx2(const uint8_t *u, size_t w, size_t rows, size_t us,
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
VNNI_TARGET static void codes_rows_avx512(const uint8_t *u, size_t w, size_t rows, float *f,
                                          size_t ld, int bias) {
  const __m512i vb = _mm512_set1_epi32(bias);
  for (size_t r = 0; r < rows; r++, u += w, f += ld)
    for (size_t i = 0; i < w; i += 16) {
      __mmask16 m = nbl_tail_mask(w - i);
      __m512i c = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, u + i));
      _mm512_mask_storeu_ps(f + i, m, _mm512_cvtepi32_ps(_mm512_sub_epi32(c, vb)));
    }
}

VNNI_TARGET static void codes_deint2_avx512(const uint8_t *u, size_t w, size_t rows, size_t us,
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

/* ------------------------------------------------------------------ convolution products
 * Output channels x pixels: 16 pixels per AVX-512 vector (8 per AVX2 one),
 * weights broadcast, so a tile of 8 output channels x 32 pixels lands in
 * registers in the output's NCHW order and leaves through the epilogue. */

int nbl_i4_pack_rows(const int8_t *w, int64_t M, int64_t K, int64_t sm, int64_t sk,
                     nbl_i4_rows *out) {
  memset(out, 0, sizeof *out);
  out->M = M;
  out->K = K;
  out->Kp = (K + 3) / 4 * 4;
  int64_t Mb = (M + NBL_I4_CR - 1) / NBL_I4_CR;
  size_t bytes = (size_t)(Mb * NBL_I4_CR * out->Kp);
  size_t alloc = (bytes + 63) / 64 * 64;
  out->w = aligned_alloc(64, alloc ? alloc : 64);
  out->rowsum = calloc((size_t)(Mb * NBL_I4_CR + 1), sizeof(int32_t));
  if (!out->w || !out->rowsum) {
    nbl_i4_rows_free(out);
    return -1;
  }
  memset(out->w, 0, alloc ? alloc : 64);
  int maxabs = 0;
  for (int64_t m = 0; m < M; m++)
    for (int64_t k = 0; k < K; k++) {
      int v = w[m * sm + k * sk];
      out->w[((m / NBL_I4_CR) * out->Kp + (k / 4) * 4) * NBL_I4_CR + (m % NBL_I4_CR) * 4 + k % 4] =
          (int8_t)v;
      out->rowsum[m] += v;
      if (abs(v) > maxabs) maxabs = abs(v);
    }
  out->maxabs = maxabs;
  if (maxabs > 64) { /* AVX2 splits such weights in two halves of at most 64 */
    out->w_half = aligned_alloc(64, alloc ? alloc : 64);
    if (!out->w_half) {
      nbl_i4_rows_free(out);
      return -1;
    }
    for (size_t i = 0; i < (alloc ? alloc : 64); i++) out->w_half[i] = (int8_t)(out->w[i] >> 1);
  }
  return 0;
}

void nbl_i4_rows_free(nbl_i4_rows *w) {
  free(w->w_half);
  free(w->w);
  free(w->rowsum);
  memset(w, 0, sizeof *w);
}

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
VNNI_TARGET static void tile_vnni(const tile_args *t, int64_t m, int nr, int64_t p, int np) {
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

/* AVX2: 8 pixels per vector, vpmaddubsw and vpmaddwd with ones. vpmaddubsw
 * adds two u8 * s8 products into an int16, exact while max|W| <= 64; larger
 * weights (8-bit layers) are split as W = h + (W - h), h = W >> 1 (packed as
 * W->w_half), each part at most 64 in magnitude, and summed in int32. The
 * epilogue (as tile_vnni's: zero-point correction, mul then add, residual,
 * clamp, range) runs on the registers of each group of 8 pixels. */
AVX2_TARGET static void tile_avx2(const tile_args *t, int64_t m, int nr, int64_t p, int np) {
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
  pthread_once(&g_once, detect);
  if (isa < NBL_I4_SCALAR || isa > NBL_I4_VNNI || !g_have[isa]) isa = NBL_I4_SCALAR;
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
