/* int4_gemm.c - integer GEMM micro-kernels (AVX-512 VNNI, AVX2, scalar) and
 * activation quantization to bytes; see int4_gemm.h. */
#include "int4_gemm.h"

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
  return 0;
}

void nbl_i4_weights_free(nbl_i4_weights *w) {
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
  nbl_i4_gemm_strided(isa, W, A, lda, m0, m1, a_zero, C, ldc, 1);
}

void nbl_i4_gemm_strided(nbl_i4_isa isa, const nbl_i4_weights *W, const uint8_t *A, int64_t lda,
                         int64_t m0, int64_t m1, int32_t a_zero, int32_t *C, int64_t cs_m,
                         int64_t cs_n) {
  pthread_once(&g_table_once, init_table);
  if (isa < NBL_I4_SCALAR || isa > NBL_I4_VNNI || !g_have[isa]) isa = NBL_I4_SCALAR;
  if (isa == NBL_I4_AVX2 && W->maxabs > 64) isa = NBL_I4_SCALAR; /* vpmaddubsw could saturate */
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
        mk(rows, p0, p1, np, kq, tile);
        const int32_t *cs = W->colsum + n0;
        if (cs_n == 1) {
          for (int r = 0; r < mr; r++) {
            int32_t *cr = C + (m + r) * cs_m + n0;
            const int32_t *tr = tile + r * 32;
            for (int64_t c = 0; c < nc; c++) cr[c] = tr[c] - a_zero * cs[c];
          }
        } else {
          for (int64_t c = 0; c < nc; c++) {
            int32_t *cc = C + m * cs_m + (n0 + c) * cs_n, corr = a_zero * cs[c];
            for (int r = 0; r < mr; r++) cc[r * cs_m] = tile[r * 32 + c] - corr;
          }
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

#if NBL_I4_X86
/* Half-even codes, 16 floats at a time (the last chunk masked); the same
 * float operations as nbl_q4_code (clamp, x / s, round to nearest even,
 * + z, clamp). Bytes u[i] = code + off, or floats f[i] = code - zero. */
VNNI_TARGET static inline __m512 quant_codes16(const nbl_q4_params *p, __m512 v) {
  if (p->clip)
    v = _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(p->clip_lo)), _mm512_set1_ps(p->clip_hi));
  v = _mm512_div_ps(v, _mm512_set1_ps(p->scale));
  v = _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  v = _mm512_add_ps(v, _mm512_set1_ps((float)p->zero));
  return _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps((float)p->qmin)),
                       _mm512_set1_ps((float)p->qmax));
}

VNNI_TARGET static void quant_u8_avx512(const nbl_q4_params *p, const float *x, uint8_t *u,
                                        size_t n, int off) {
  const __m512i vo = _mm512_set1_epi32(off);
  for (size_t i = 0; i < n; i += 16) {
    __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
    __m512 v = quant_codes16(p, _mm512_maskz_loadu_ps(m, x + i));
    __m512i q = _mm512_add_epi32(_mm512_cvtps_epi32(v), vo);
    _mm_mask_storeu_epi8(u + i, m, _mm512_cvtepi32_epi8(q));
  }
}

VNNI_TARGET static void quant_f_avx512(const nbl_q4_params *p, const float *x, float *f,
                                       size_t n) {
  const __m512 z = _mm512_set1_ps((float)p->zero);
  for (size_t i = 0; i < n; i += 16) {
    __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
    __m512 v = quant_codes16(p, _mm512_maskz_loadu_ps(m, x + i));
    _mm512_mask_storeu_ps(f + i, m, _mm512_sub_ps(v, z));
  }
}
#endif

void nbl_i4_quantize_u8(const nbl_q4_config *cfg, const nbl_q4_params *p, const float *x,
                        uint8_t *u, size_t n, uint64_t index0, int off) {
#if NBL_I4_X86
  if (cfg->rounding == NBL_Q4_ROUND_HALF_EVEN && nbl_i4_isa_supported(NBL_I4_VNNI)) {
    quant_u8_avx512(p, x, u, n, off);
    return;
  }
#endif
  for (size_t i = 0; i < n; i++) u[i] = (uint8_t)(nbl_q4_code(cfg, p, x[i], index0 + i) + off);
}

void nbl_i4_quantize_centered(const nbl_q4_config *cfg, const nbl_q4_params *p, const float *x,
                              float *f, size_t n, uint64_t index0) {
#if NBL_I4_X86
  if (cfg->rounding == NBL_Q4_ROUND_HALF_EVEN && nbl_i4_isa_supported(NBL_I4_VNNI)) {
    quant_f_avx512(p, x, f, n);
    return;
  }
#endif
  for (size_t i = 0; i < n; i++) f[i] = (float)(nbl_q4_code(cfg, p, x[i], index0 + i) - p->zero);
}
