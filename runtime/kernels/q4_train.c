/* q4_train.c - QuantizeInt4 and QuantizeInt4Grad in training graphs:
 * parameters from a parallel range scan, fake quantization through the
 * vector activation quantizer (int4_quant.c: codes identical to
 * runtime/formats/int4.c), and the straight-through mask as the interval of
 * x that the same division and rounding as nbl_q4_passes let through (two
 * comparisons per element, vectorized); see q4_train.h. */
#include "runtime/kernels/q4_train.h"

#include <float.h>
#include <math.h>
#include <string.h>

#include "runtime/kernels/int4_fused.h"
#include "runtime/kernels/int4_gemm.h"

#if defined(__x86_64__)
#include <immintrin.h>

#include "runtime/kernels/simd16.h"
#endif

#define GRAIN (1 << 14)

int nbl_q4t_params(nbl_kctx *c, const nbl_q4_config *cfg, const nbl_rt_tensor *X, nbl_q4_params *p) {
  if (cfg->rounding != NBL_Q4_ROUND_HALF_EVEN || cfg->scale_source == NBL_Q4_SCALE_PACT) return -1;
  const float *x = X->data;
  if (cfg->scale_source == NBL_Q4_SCALE_MAX) {
    float lo, hi;
    if (!nbl_i4_scan(c, X, &lo, &hi)) return -1; /* a NaN or Inf: the reference path */
    nbl_i4_params_from_range(cfg, X->numel, lo, hi, p);
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
  float scale;
} fq_job;

static void fq_chunk(void *arg, int64_t b, int64_t e) {
  const fq_job *j = arg;
  float *y = j->y + b;
  nbl_i4_quantize_centered(&j->q, j->x + b, y, (size_t)(e - b), (uint64_t)b);
  const float s = j->scale;
  /* scale * (q - zero), as nbl_q4_fake_quant; + 0 turns the vector path's -0 (a
   * negative value rounded to code zero) into the +0 of the integer code */
  for (int64_t i = 0; i < e - b; i++) y[i] = s * y[i] + 0.0f;
}

void nbl_q4t_fake_quant(nbl_kctx *c, const nbl_q4_config *cfg, const nbl_q4_params *p, const float *x,
                        float *y, int64_t n) {
  fq_job j = {.x = x, .y = y, .scale = p->scale};
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
