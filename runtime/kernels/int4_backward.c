/* int4_backward.c - the integer GEMM of the 4-bit backward products: CPU
 * variant choice, code recovery (power-of-two and linear grids), operand
 * packing and the three micro-kernels (AVX-512 VNNI, AVX2, C). The layout
 * and the exactness argument are in int4_backward.h. */
#include "runtime/kernels/int4_backward.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
#define I4B_X86 1
#include <immintrin.h>

#include "runtime/kernels/simd16.h"
#else
#define I4B_X86 0
#endif

/* ------------------------------------------------------------------ CPU variant */

static int g_have[3];
static nbl_i4b_isa g_best;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static _Atomic int g_forced = -1;

/* The one place that asks the CPU (init-once). */
static void detect(void) {
  g_have[NBL_I4B_SCALAR] = 1;
#if I4B_X86
  __builtin_cpu_init();
  g_have[NBL_I4B_AVX2] = __builtin_cpu_supports("avx2");
  g_have[NBL_I4B_AVX512] = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                           __builtin_cpu_supports("avx512vnni");
#endif
  g_best = g_have[NBL_I4B_AVX512] ? NBL_I4B_AVX512 : g_have[NBL_I4B_AVX2] ? NBL_I4B_AVX2 : NBL_I4B_SCALAR;
  const char *cap = getenv("NBL_ISA");
  if (!cap || !*cap) cap = getenv("NBL_INT4_ISA");
  if (cap) {
    nbl_i4b_isa want = !strcmp(cap, "scalar") ? NBL_I4B_SCALAR
                       : !strcmp(cap, "avx2") ? NBL_I4B_AVX2
                                              : NBL_I4B_AVX512;
    if (want < g_best) g_best = want;
  }
}

int nbl_i4b_isa_supported(nbl_i4b_isa isa) {
  pthread_once(&g_once, detect);
  return isa >= NBL_I4B_SCALAR && isa <= NBL_I4B_AVX512 && g_have[isa];
}

/* isa, or the best supported variant below it. */
static nbl_i4b_isa usable(int isa) {
  pthread_once(&g_once, detect);
  if (isa > NBL_I4B_AVX512) isa = NBL_I4B_AVX512;
  while (isa > NBL_I4B_SCALAR && !g_have[isa]) isa--;
  return isa < NBL_I4B_SCALAR ? NBL_I4B_SCALAR : (nbl_i4b_isa)isa;
}

nbl_i4b_isa nbl_i4b_best_isa(void) {
  pthread_once(&g_once, detect);
  int f = atomic_load(&g_forced);
  return f >= 0 ? usable(f) : g_best;
}

void nbl_i4b_set_isa(int isa) { atomic_store(&g_forced, isa < 0 ? -1 : isa); }

const char *nbl_i4b_isa_name(nbl_i4b_isa isa) {
  switch (isa) {
  case NBL_I4B_AVX512: return "avx512";
  case NBL_I4B_AVX2: return "avx2";
  default: return "scalar";
  }
}

/* ------------------------------------------------------------------ codes */

int nbl_i4b_codes_pow2(const float *x, int64_t n, int16_t *q, nbl_i4b_grid *g) {
  int64_t i0 = 0;
  uint32_t b;
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
  for (int64_t i = i0; i < n; i++) {
    uint32_t a;
    memcpy(&a, x + i, 4);
    a &= 0x7fffffffu;
    uint32_t e = a >> 23, nz = a != 0;
    bad |= nz & (((a & 0x7fffffu) != mant) | (e == 0) | (e == 255));
    uint32_t lo = nz ? e : 255, hi = nz ? e : 0;
    emin = lo < emin ? lo : emin;
    emax = hi > emax ? hi : emax;
  }
  if (bad || emax - emin > 14) return -1;
  uint32_t ub = (emin << 23) | mant;
  memcpy(&g->unit, &ub, 4);
  g->maxabs = (int32_t)1 << (emax - emin);
  if (q) {
    if (i0 > 0) memset(q, 0, sizeof(int16_t) * (size_t)i0);
    for (int64_t i = i0; i < n; i++) {
      uint32_t a;
      memcpy(&a, x + i, 4);
      uint32_t m = a & 0x7fffffffu;
      int32_t c = m ? (int32_t)1 << ((m >> 23) - emin) : 0;
      q[i] = (int16_t)(a >> 31 ? -c : c);
    }
  }
  return 0;
}

int nbl_i4b_codes_linear(const float *x, int64_t n, float scale, int16_t *q, nbl_i4b_grid *g) {
  if (!(scale > 0.0f) || !isfinite(scale)) return -1;
  const float inv = 1.0f / scale;
  int32_t mx = 0;
  int bad = 0;
  for (int64_t i = 0; i < n && !bad; i++) {
    float r = rintf(x[i] * inv);
    if (!(fabsf(r) <= (float)NBL_I4B_MAX_CODE)) { /* NaN, Inf, out of range */
      bad = 1;
      break;
    }
    int32_t c = (int32_t)r;
    bad = scale * (float)c != x[i];
    int32_t a = c < 0 ? -c : c;
    mx = a > mx ? a : mx;
    if (q) q[i] = (int16_t)c;
  }
  if (bad) return -1;
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
/* Whole panel P, pairs [0, jn): rows 2j and 2j+1 of src (n contiguous)
 * interleaved, one vpermw per pair. */
__attribute__((target("avx512f,avx512bw"))) static void pack_rows_interleave_512(
    const int16_t *src, int64_t sk, int64_t n0, int64_t jn, int16_t *dst) {
  static const int16_t idx[32] __attribute__((aligned(64))) = {
      0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23,
      8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  const __m512i perm = _mm512_load_si512(idx);
  for (int64_t j = 0; j < jn; j++) {
    const int16_t *r0 = src + 2 * j * sk + n0;
    __m256i a = _mm256_loadu_si256((const __m256i *)r0);
    __m256i c = _mm256_loadu_si256((const __m256i *)(r0 + sk));
    __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(a), c, 1);
    _mm512_store_si512(dst + 32 * j, _mm512_permutexvar_epi16(perm, v));
  }
}

/* Whole panel P, pairs [0, jn) in blocks of 16: the 32-bit units (k pairs)
 * of 16 source rows (k contiguous, row n at src + n * sn) transposed. */
__attribute__((target("avx512f,avx512bw"))) static int64_t pack_units_transpose_512(
    const int16_t *src, int64_t sn, int64_t n0, int64_t jn, int16_t *dst) {
  int64_t j = 0;
  for (; j + 16 <= jn; j += 16) {
    __m512 r[16];
    for (int l = 0; l < 16; l++) r[l] = _mm512_loadu_ps((const float *)(const void *)(src + (n0 + l) * sn + 2 * j));
    nbl_transpose16(r);
    for (int i = 0; i < 16; i++) _mm512_store_ps((float *)(void *)(dst + 32 * (j + i)), r[i]);
  }
  return j;
}

/* AVX2: the same interleave, 16 columns per pair from two 256-bit rows. */
__attribute__((target("avx2"))) static void pack_rows_interleave_256(const int16_t *src, int64_t sk,
                                                                     int64_t n0, int64_t jn, int16_t *dst) {
  for (int64_t j = 0; j < jn; j++) {
    const int16_t *r0 = src + 2 * j * sk + n0;
    __m256i a = _mm256_loadu_si256((const __m256i *)r0);
    __m256i c = _mm256_loadu_si256((const __m256i *)(r0 + sk));
    __m256i lo = _mm256_unpacklo_epi16(a, c), hi = _mm256_unpackhi_epi16(a, c);
    _mm256_store_si256((__m256i *)(dst + 32 * j), _mm256_permute2x128_si256(lo, hi, 0x20));
    _mm256_store_si256((__m256i *)(dst + 32 * j + 16), _mm256_permute2x128_si256(lo, hi, 0x31));
  }
}

/* AVX2: the unit transpose in 8 x 8 blocks (two per 16-column panel). */
__attribute__((target("avx2"))) static int64_t pack_units_transpose_256(const int16_t *src, int64_t sn,
                                                                        int64_t n0, int64_t jn, int16_t *dst) {
  int64_t j = 0;
  for (; j + 8 <= jn; j += 8)
    for (int h = 0; h < 2; h++) {
      __m256i r[8], t[8], u[8];
      for (int l = 0; l < 8; l++)
        r[l] = _mm256_loadu_si256((const __m256i *)(src + (n0 + 8 * h + l) * sn + 2 * j));
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
    if (n0 + NBL_I4B_NR <= N && isa != NBL_I4B_SCALAR) {
      if (sn == 1) {
        if (isa == NBL_I4B_AVX512) pack_rows_interleave_512(src, sk, n0, kfull, dst);
        else pack_rows_interleave_256(src, sk, n0, kfull, dst);
        j0 = kfull;
      } else if (sk == 1) {
        j0 = isa == NBL_I4B_AVX512 ? pack_units_transpose_512(src, sn, n0, kfull, dst)
                                   : pack_units_transpose_256(src, sn, n0, kfull, dst);
      }
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
 * A[r][2j] * B[2j][c] + A[r][2j+1] * B[2j+1][c], B at panel p + ps * panel. */

typedef void (*mk_fn)(const int16_t *A, int64_t lda, int mr, const int16_t *B, int64_t ps, int np,
                      int64_t kp, int32_t *T);

static void mk_scalar(const int16_t *A, int64_t lda, int mr, const int16_t *B, int64_t ps, int np, int64_t kp,
                      int32_t *T) {
  int32_t acc[NBL_I4B_MR][2 * NBL_I4B_NR];
  memset(acc, 0, sizeof acc);
  for (int64_t j = 0; j < kp; j++)
    for (int r = 0; r < mr; r++) {
      const int32_t a0 = A[r * lda + 2 * j], a1 = A[r * lda + 2 * j + 1];
      for (int p = 0; p < np; p++) {
        const int16_t *b = B + p * ps + 32 * j;
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
    const int16_t *A, int64_t lda, const int16_t *B, int64_t ps, int64_t kp, int32_t *T, const int MR,
    const int NP) {
  __m512i c[NBL_I4B_MR][2];
  for (int r = 0; r < MR; r++) c[r][0] = c[r][1] = _mm512_setzero_si512();
  for (int64_t j = 0; j < kp; j++) {
    const __m512i b0 = _mm512_load_si512(B + 32 * j);
    const __m512i b1 = NP == 2 ? _mm512_load_si512(B + ps + 32 * j) : b0;
    for (int r = 0; r < MR; r++) {
      const __m512i a = _mm512_set1_epi32(pair_at(A + r * lda + 2 * j));
      c[r][0] = _mm512_dpwssd_epi32(c[r][0], a, b0);
      if (NP == 2) c[r][1] = _mm512_dpwssd_epi32(c[r][1], a, b1);
    }
  }
  for (int r = 0; r < MR; r++) {
    _mm512_storeu_si512(T + r * 32, c[r][0]);
    if (NP == 2) _mm512_storeu_si512(T + r * 32 + 16, c[r][1]);
  }
}

__attribute__((target("avx512f,avx512bw,avx512vnni"))) static void mk_avx512(const int16_t *A, int64_t lda, int mr,
                                                                             const int16_t *B, int64_t ps, int np,
                                                                             int64_t kp, int32_t *T) {
#define MK512(R)                                              \
  case R:                                                     \
    if (np == 2) mk512_body(A, lda, B, ps, kp, T, R, 2);      \
    else mk512_body(A, lda, B, ps, kp, T, R, 1);              \
    break;
  switch (mr) {
    MK512(1)
    MK512(2)
    MK512(3)
    MK512(4)
    MK512(5)
    MK512(6)
  }
#undef MK512
}

__attribute__((target("avx2"), always_inline)) static inline void mk256_body(const int16_t *A, int64_t lda,
                                                                              const int16_t *B, int64_t kp,
                                                                              int32_t *T, const int MR) {
  __m256i c[NBL_I4B_MR][2];
  for (int r = 0; r < MR; r++) c[r][0] = c[r][1] = _mm256_setzero_si256();
  for (int64_t j = 0; j < kp; j++) {
    const __m256i b0 = _mm256_load_si256((const __m256i *)(B + 32 * j));
    const __m256i b1 = _mm256_load_si256((const __m256i *)(B + 32 * j + 16));
    for (int r = 0; r < MR; r++) {
      const __m256i a = _mm256_set1_epi32(pair_at(A + r * lda + 2 * j));
      c[r][0] = _mm256_add_epi32(c[r][0], _mm256_madd_epi16(a, b0));
      c[r][1] = _mm256_add_epi32(c[r][1], _mm256_madd_epi16(a, b1));
    }
  }
  for (int r = 0; r < MR; r++) {
    _mm256_storeu_si256((__m256i *)(T + r * 32), c[r][0]);
    _mm256_storeu_si256((__m256i *)(T + r * 32 + 8), c[r][1]);
  }
}

/* One panel per call (np is always 1 for this variant). */
__attribute__((target("avx2"))) static void mk_avx2(const int16_t *A, int64_t lda, int mr, const int16_t *B,
                                                     int64_t ps, int np, int64_t kp, int32_t *T) {
  (void)ps;
  (void)np;
#define MK256(R)                         \
  case R:                                \
    mk256_body(A, lda, B, kp, T, R);     \
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

/* Write the tile's rows [0, mr) x columns [0, nc) (exact sums: T64 when not
 * NULL, else T) to rows m.. and columns n0.. of the sink. */
static void sink_tile(const nbl_i4b_sink *o, int64_t m, int mr, int64_t n0, int nc, const int32_t *T,
                      const int64_t *T64) {
  const int64_t ld = o->ldc;
  const int64_t sr = o->trans ? 1 : ld, sc = o->trans ? ld : 1; /* strides of rows and columns */
  const int64_t base = m * sr + n0 * sc;
  switch (o->kind) {
  case NBL_I4B_STORE32: {
    int32_t *c = (int32_t *)o->c + base;
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
    float *c = (float *)o->c + base;
    const double s = o->scale;
    for (int r = 0; r < mr; r++)
      for (int l = 0; l < nc; l++)
        c[r * sr + l * sc] = (float)((double)(T64 ? T64[r * 32 + l] : T[r * 32 + l]) * s);
    break;
  }
  }
}

void nbl_i4b_gemm(nbl_i4b_isa isa, const int16_t *A, int64_t lda, int64_t m0, int64_t m1,
                  const nbl_i4b_panels *B, int64_t kchunk, const nbl_i4b_sink *out) {
  isa = usable(isa);
  mk_fn mk = mk_scalar;
  int nr = NBL_I4B_NR;
#if I4B_X86
  if (isa == NBL_I4B_AVX512) mk = mk_avx512, nr = 2 * NBL_I4B_NR;
  else if (isa == NBL_I4B_AVX2) mk = mk_avx2;
#endif
  const int64_t Kp = B->Kp, ps = Kp * NBL_I4B_NR, N = B->N;
  kchunk &= ~(int64_t)1;
  if (kchunk < 2) kchunk = 2;
  const int multi = Kp > kchunk;
  int32_t T[NBL_I4B_MR * 32];
  int64_t T64[NBL_I4B_MR * 32];
  for (int64_t m = m0; m < m1; m += NBL_I4B_MR) {
    const int mr = (int)(m1 - m < NBL_I4B_MR ? m1 - m : NBL_I4B_MR);
    for (int64_t n0 = 0; n0 < N; n0 += nr) {
      const int np = nr == 32 && n0 + NBL_I4B_NR < N ? 2 : 1;
      const int nc = (int)(N - n0 < 16 * np ? N - n0 : 16 * np);
      const int16_t *Bp = B->p + (n0 / NBL_I4B_NR) * ps;
      if (!multi) {
        mk(A + m * lda, lda, mr, Bp, ps, np, Kp / 2, T);
        sink_tile(out, m, mr, n0, nc, T, NULL);
        continue;
      }
      memset(T64, 0, sizeof T64);
      for (int64_t k0 = 0; k0 < Kp; k0 += kchunk) {
        const int64_t kk = Kp - k0 < kchunk ? Kp - k0 : kchunk;
        mk(A + m * lda + k0, lda, mr, Bp + k0 * NBL_I4B_NR, ps, np, kk / 2, T);
        for (int r = 0; r < mr; r++)
          for (int l = 0; l < nc; l++) T64[r * 32 + l] += T[r * 32 + l];
      }
      sink_tile(out, m, mr, n0, nc, NULL, T64);
    }
  }
}
