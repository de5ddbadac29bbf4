/* q4_train.c - QuantizeInt4 and QuantizeInt4Grad in training graphs:
 * parameters from a parallel range scan, fake quantization through the
 * vector activation quantizer (int4_quant.c: codes identical to
 * runtime/formats/int4.c), and the straight-through mask as the interval of
 * x that the same division and rounding as nbl_q4_passes let through (two
 * comparisons per element, vectorized); see q4_train.h. */
#include "runtime/kernels/q4_train.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/core/cpu.h"
#include "runtime/kernels/int4_fused.h"
#include "runtime/kernels/int4_gemm.h"

#if defined(__x86_64__)
#include <immintrin.h>

#include "runtime/kernels/simd16.h"
#endif

#define GRAIN (1 << 14)

/* SAWB's statistics of x (max |x|, sum |x|, sum x^2; the sums in double)
 * per block of GRAIN floats, each in 16 (AVX-512) or 8 (AVX2) double lanes,
 * then the blocks added in order: the same numbers at any thread count, and
 * within double rounding of the reference's one running sum (the products
 * x^2 of floats are exact in double). bad: a non-finite element. */
typedef struct sawb_part {
  double s1, s2;
  float mx;
  int bad;
} sawb_part;

typedef struct sawb_job {
  const float *x;
  int64_t n;
  sawb_part *part;
} sawb_job;

#if defined(__x86_64__)
__attribute__((target("avx512f"))) static void sawb_block_avx512(const float *x, int64_t n, sawb_part *r) {
  __m512d a0 = _mm512_setzero_pd(), a1 = a0, q0 = a0, q1 = a0;
  __m512 mx = _mm512_setzero_ps();
  const __m512 inf = _mm512_set1_ps(INFINITY);
  __mmask16 bad = 0;
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = nbl_tail_mask(n - i);
    const __m512 v = _mm512_abs_ps(_mm512_maskz_loadu_ps(m, x + i));
    bad |= _mm512_cmp_ps_mask(v, inf, _CMP_NLT_UQ); /* Inf or NaN */
    mx = _mm512_max_ps(mx, v);
    const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
    const __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    a0 = _mm512_add_pd(a0, lo);
    a1 = _mm512_add_pd(a1, hi);
    q0 = _mm512_fmadd_pd(lo, lo, q0);
    q1 = _mm512_fmadd_pd(hi, hi, q1);
  }
  r->s1 = _mm512_reduce_add_pd(_mm512_add_pd(a0, a1));
  r->s2 = _mm512_reduce_add_pd(_mm512_add_pd(q0, q1));
  r->mx = _mm512_reduce_max_ps(mx);
  r->bad = bad != 0;
}

__attribute__((target("avx2,fma"))) static void sawb_block_avx2(const float *x, int64_t n, sawb_part *r) {
  __m256d a0 = _mm256_setzero_pd(), a1 = a0, q0 = a0, q1 = a0;
  __m256 mx = _mm256_setzero_ps(), bad = mx;
  const __m256 sign = _mm256_set1_ps(-0.0f), inf = _mm256_set1_ps(INFINITY);
  for (int64_t i = 0; i < n; i += 8) {
    const __m256 v = _mm256_andnot_ps(sign, nbl_load8(x + i, n - i));
    bad = _mm256_or_ps(bad, _mm256_cmp_ps(v, inf, _CMP_NLT_UQ));
    mx = _mm256_max_ps(mx, v);
    const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v)), hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
    a0 = _mm256_add_pd(a0, lo);
    a1 = _mm256_add_pd(a1, hi);
    q0 = _mm256_fmadd_pd(lo, lo, q0);
    q1 = _mm256_fmadd_pd(hi, hi, q1);
  }
  double t[4], u[4];
  _mm256_storeu_pd(t, _mm256_add_pd(a0, a1));
  _mm256_storeu_pd(u, _mm256_add_pd(q0, q1));
  r->s1 = (t[0] + t[2]) + (t[1] + t[3]);
  r->s2 = (u[0] + u[2]) + (u[1] + u[3]);
  r->mx = nbl_hmax8(mx);
  r->bad = _mm256_movemask_ps(bad) != 0;
}
#endif

static void sawb_blocks(void *arg, int64_t b, int64_t e) {
  const sawb_job *j = arg;
  for (int64_t k = b; k < e; k++) {
    const float *x = j->x + k * GRAIN;
    const int64_t n = j->n - k * GRAIN < GRAIN ? j->n - k * GRAIN : GRAIN;
    sawb_part *r = &j->part[k];
#if defined(__x86_64__)
    if (nbl_cpu_has(NBL_CPU_AVX512F)) {
      sawb_block_avx512(x, n, r);
      continue;
    }
    if (nbl_cpu_has(NBL_CPU_AVX2 | NBL_CPU_FMA)) {
      sawb_block_avx2(x, n, r);
      continue;
    }
#endif
    r->s1 = r->s2 = 0, r->mx = 0.0f, r->bad = 0;
    for (int64_t i = 0; i < n; i++) {
      const float a = fabsf(x[i]);
      r->bad |= !isfinite(a);
      r->mx = a > r->mx ? a : r->mx;
      r->s1 += a;
      r->s2 += (double)a * a;
    }
  }
}

/* 0 and the statistics, or -1: a non-finite element or no memory (the
 * caller takes the reference path). */
static int sawb_stats(nbl_kctx *c, const float *x, int64_t n, double *mx, double *s1, double *s2) {
  const int64_t blocks = (n + GRAIN - 1) / GRAIN;
  sawb_part one, *part = blocks > 1 ? malloc(sizeof(sawb_part) * (size_t)blocks) : &one;
  if (!part) return -1;
  sawb_job j = {x, n, part};
  if (blocks > 1) nbl_parallel_for(c, blocks, 1, sawb_blocks, &j);
  else if (blocks == 1) sawb_blocks(&j, 0, 1);
  double a = 0, q = 0;
  float m = 0.0f;
  int bad = 0;
  for (int64_t k = 0; k < blocks; k++) {
    a += part[k].s1, q += part[k].s2, bad |= part[k].bad;
    m = part[k].mx > m ? part[k].mx : m;
  }
  if (part != &one) free(part);
  *mx = m, *s1 = a, *s2 = q;
  return bad ? -1 : 0;
}

int nbl_q4t_params(nbl_kctx *c, const nbl_q4_config *cfg, const nbl_rt_tensor *X, nbl_q4_params *p) {
  if (cfg->rounding != NBL_Q4_ROUND_HALF_EVEN || cfg->scale_source == NBL_Q4_SCALE_PACT) return -1;
  const float *x = X->data;
  if (cfg->scale_source == NBL_Q4_SCALE_MAX) {
    float lo, hi;
    if (!nbl_i4_scan(c, X, &lo, &hi)) return -1; /* a NaN or Inf: the reference path */
    nbl_i4_params_from_range(cfg, X->numel, lo, hi, p);
    return 0;
  }
  if (cfg->scale_source == NBL_Q4_SCALE_MSE && cfg->bits >= 2 && cfg->bits <= 8) {
    float lo, hi;
    if (!nbl_i4_scan(c, X, &lo, &hi)) return -1;
    nbl_q4_params_from_mse(cfg, x, (size_t)X->numel, lo, hi, p);
    return 0;
  }
  if (cfg->scale_source == NBL_Q4_SCALE_SAWB && cfg->mode == NBL_Q4_SYMMETRIC && cfg->bits >= 2 &&
      cfg->bits <= 8) {
    double mx, s1, s2;
    if (sawb_stats(c, x, X->numel, &mx, &s1, &s2)) return -1;
    nbl_q4_params_from_sawb(cfg, nbl_q4_sawb_clip_from(mx, s1, s2, (size_t)X->numel, cfg->bits), p);
    return 0;
  }
  if (!nbl_i4_all_finite(x, X->numel)) return -1;
  const char *why = NULL;
  return nbl_q4_choose(cfg, x, (size_t)X->numel, 0.0f, p, &why) == 0 ? 0 : -1;
}

typedef struct fq_job {
  nbl_i4_quantizer q;
  const float *x;
  float *y;
  int8_t *codes; /* NULL: not written */
  float scale;
  int zero;
} fq_job;

/* y[i] = s * y[i] + 0 for i < n (vector forms: the same products and sums) */
#if defined(__x86_64__)
__attribute__((target("avx512f"))) static int64_t scale_avx512(float *y, int64_t n, float s) {
  const __m512 vs = _mm512_set1_ps(s), z = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, _mm512_add_ps(_mm512_mul_ps(vs, _mm512_loadu_ps(y + i)), z));
  return i;
}
__attribute__((target("avx"))) static int64_t scale_avx(float *y, int64_t n, float s) {
  const __m256 vs = _mm256_set1_ps(s), z = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_mul_ps(vs, _mm256_loadu_ps(y + i)), z));
  return i;
}

/* codes[i] = y[i] + z for i < n, y the centered codes q - z (integers) */
__attribute__((target("avx512f"))) static int64_t codes_avx512(int8_t *codes, const float *y, int64_t n, int z) {
  const __m512i vz = _mm512_set1_epi32(z);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm_storeu_si128((__m128i *)(codes + i),
                     _mm512_cvtepi32_epi8(_mm512_add_epi32(_mm512_cvtps_epi32(_mm512_loadu_ps(y + i)), vz)));
  return i;
}
#endif

#if defined(__x86_64__)
/* codes_avx512 on AVX2: eight at a time, each int32's low byte (the same
 * truncation to int8). */
__attribute__((target("avx2"))) static int64_t codes_avx2(int8_t *codes, const float *y, int64_t n, int z) {
  const __m256i vz = _mm256_set1_epi32(z);
  const __m256i low = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 4, 8, 12, -1,
                                       -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i t = _mm256_shuffle_epi8(_mm256_add_epi32(_mm256_cvtps_epi32(_mm256_loadu_ps(y + i)), vz), low);
    _mm_storel_epi64((__m128i *)(codes + i), _mm_unpacklo_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1)));
  }
  return i;
}
#endif

/* Floats quantized, then scaled, at a time: the scale pass reads what the
 * quantizer wrote from L1, not from memory (a whole tensor at one thread). */
#define FQ_BLOCK 2048

static void fq_chunk(void *arg, int64_t b, int64_t e) {
  const fq_job *j = arg;
  const float s = j->scale;
  float tmp[FQ_BLOCK]; /* the centered codes when Y is not written */
  for (int64_t b0 = b; b0 < e; b0 += FQ_BLOCK) {
    const int64_t n = e - b0 < FQ_BLOCK ? e - b0 : FQ_BLOCK;
    float *y = j->y ? j->y + b0 : tmp;
    nbl_i4_quantize_centered(&j->q, j->x + b0, y, (size_t)n, (uint64_t)b0);
    if (j->codes) { /* q = (q - z) + z, exact small integers (the fast path has finite x only) */
      int8_t *k = j->codes + b0;
      int64_t i = 0;
#if defined(__x86_64__)
      if (nbl_cpu_has(NBL_CPU_AVX512F)) i = codes_avx512(k, y, n, j->zero);
      else if (nbl_cpu_has(NBL_CPU_AVX2)) i = codes_avx2(k, y, n, j->zero);
#endif
      for (; i < n; i++) k[i] = (int8_t)((int)y[i] + j->zero);
    }
    if (!j->y) continue;
    /* scale * (q - zero), as nbl_q4_fake_quant; + 0 turns the vector path's -0 (a
     * negative value rounded to code zero) into the +0 of the integer code */
    int64_t i = 0;
#if defined(__x86_64__)
    if (nbl_cpu_has(NBL_CPU_AVX512F)) i = scale_avx512(y, n, s);
    else if (nbl_cpu_has(NBL_CPU_AVX)) i = scale_avx(y, n, s);
#endif
    for (; i < n; i++) y[i] = s * y[i] + 0.0f;
  }
}

void nbl_q4t_fake_quant(nbl_kctx *c, const nbl_q4_config *cfg, const nbl_q4_params *p, const float *x,
                        float *y, int8_t *codes, int64_t n) {
  fq_job j = {.x = x, .y = y, .codes = codes, .scale = p->scale, .zero = p->zero};
  nbl_i4_quantizer_init(&j.q, cfg, p);
  nbl_parallel_for(c, n, GRAIN, fq_chunk, &j);
}

/* The mask as the interval of x it passes (nbl_q4t_ste_bounds): two
 * comparisons per element instead of a division and a rounding. */
typedef struct ste_job {
  const float *x, *g;
  float *dx;
  float lo, hi;
} ste_job;

#if defined(__x86_64__)
__attribute__((target("avx512f"))) static int64_t ste_avx512(const ste_job *j, int64_t b, int64_t e) {
  const __m512 lo = _mm512_set1_ps(j->lo), hi = _mm512_set1_ps(j->hi);
  int64_t i = b;
  for (; i + 16 <= e; i += 16) {
    __m512 x = _mm512_loadu_ps(j->x + i);
    __mmask16 ok = _mm512_cmp_ps_mask(x, lo, _CMP_GE_OQ) & _mm512_cmp_ps_mask(x, hi, _CMP_LE_OQ);
    _mm512_storeu_ps(j->dx + i, _mm512_maskz_mov_ps(ok, _mm512_loadu_ps(j->g + i)));
  }
  return i;
}

__attribute__((target("avx2"))) static int64_t ste_avx2(const ste_job *j, int64_t b, int64_t e) {
  const __m256 lo = _mm256_set1_ps(j->lo), hi = _mm256_set1_ps(j->hi);
  int64_t i = b;
  for (; i + 8 <= e; i += 8) {
    __m256 x = _mm256_loadu_ps(j->x + i);
    __m256 ok = _mm256_and_ps(_mm256_cmp_ps(x, lo, _CMP_GE_OQ), _mm256_cmp_ps(x, hi, _CMP_LE_OQ));
    _mm256_storeu_ps(j->dx + i, _mm256_and_ps(ok, _mm256_loadu_ps(j->g + i)));
  }
  return i;
}
#endif

static void ste_chunk(void *arg, int64_t b, int64_t e) {
  const ste_job *j = arg;
  int64_t i = b;
#if defined(__x86_64__)
  nbl_i4_isa isa = nbl_i4_best_isa();
  if (isa == NBL_I4_VNNI) i = ste_avx512(j, b, e);
  else if (isa == NBL_I4_AVX2) i = ste_avx2(j, b, e);
#endif
  for (; i < e; i++) j->dx[i] = j->x[i] >= j->lo && j->x[i] <= j->hi ? j->g[i] : 0.0f;
}

void nbl_q4t_ste(nbl_kctx *c, const nbl_q4_config *cfg, const nbl_q4_params *p, const float *x,
                 const float *g, float *dx, int64_t n) {
  (void)cfg;
  ste_job j = {.x = x, .g = g, .dx = dx};
  nbl_q4t_ste_bounds(p, &j.lo, &j.hi);
  nbl_parallel_for(c, n, GRAIN, ste_chunk, &j);
}

/* Floats in their order as integers (-0 and +0 both 0) and back. */
static int64_t f_key(float f) {
  uint32_t b;
  memcpy(&b, &f, sizeof b);
  return (b & 0x80000000u) ? -(int64_t)(b & 0x7FFFFFFFu) : (int64_t)b;
}

static float key_f(int64_t k) {
  uint32_t b = k < 0 ? (uint32_t)(-k) | 0x80000000u : (uint32_t)k;
  float f;
  memcpy(&f, &b, sizeof f);
  return f;
}

/* The code nbl_q4t_ste compares (volatile: the same float division and
 * rounding as the kernels, never folded or contracted). */
static float ste_code(float x, float s, float z) {
  volatile float q = x / s;
  return nearbyintf(q) + z;
}

void nbl_q4t_ste_bounds(const nbl_q4_params *p, float *lo, float *hi) {
  const float s = p->scale, z = (float)p->zero, qmin = (float)p->qmin, qmax = (float)p->qmax;
  const int64_t kmin = f_key(-FLT_MAX), kmax = f_key(FLT_MAX);
  /* lo: the first float whose code is >= qmin (codes rise with x) */
  int64_t a = kmin, b = kmax + 1; /* answer in [a, b]; b = none */
  while (a < b) {
    int64_t m = a + (b - a) / 2;
    if (ste_code(key_f(m), s, z) >= qmin) b = m;
    else a = m + 1;
  }
  *lo = a > kmax ? INFINITY : key_f(a);
  /* hi: the last float whose code is <= qmax */
  a = kmin - 1;
  b = kmax; /* answer in [a, b]; a = none */
  while (a < b) {
    int64_t m = b - (b - a) / 2;
    if (ste_code(key_f(m), s, z) <= qmax) a = m;
    else b = m - 1;
  }
  *hi = a < kmin ? -INFINITY : key_f(a);
  if (!(*lo <= *hi)) *lo = INFINITY, *hi = -INFINITY;
}
