/* runtime/formats/int4.c - per-tensor INT4 (2..8 bit) quantizer math; see runtime/formats/int4.h. */
#include "runtime/formats/int4.h"
#include "runtime/core/kernel.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

void nbl_q4_config_default(nbl_q4_config *cfg) {
  memset(cfg, 0, sizeof *cfg);
  cfg->bits = 4;
  cfg->mode = NBL_Q4_SYMMETRIC;
  cfg->scale_source = NBL_Q4_SCALE_MAX;
  cfg->rounding = NBL_Q4_ROUND_HALF_EVEN;
}

/* The attribute strings: 0 and *out set, or -1 for an unknown spelling. */
static int parse_mode(const char *s, nbl_q4_mode *out) {
  if (!s) return -1;
  if (strcmp(s, "symmetric") == 0) *out = NBL_Q4_SYMMETRIC;
  else if (strcmp(s, "affine") == 0) *out = NBL_Q4_AFFINE;
  else return -1;
  return 0;
}

static int parse_scale_source(const char *s, nbl_q4_scale_source *out) {
  if (!s) return -1;
  if (strcmp(s, "max") == 0) *out = NBL_Q4_SCALE_MAX;
  else if (strcmp(s, "sawb") == 0) *out = NBL_Q4_SCALE_SAWB;
  else if (strcmp(s, "fixed") == 0) *out = NBL_Q4_SCALE_FIXED;
  else if (strcmp(s, "pact") == 0) *out = NBL_Q4_SCALE_PACT;
  else if (strcmp(s, "mse") == 0) *out = NBL_Q4_SCALE_MSE;
  else return -1;
  return 0;
}

static int parse_rounding(const char *s, nbl_q4_rounding *out) {
  if (!s) return -1;
  if (strcmp(s, "half_even") == 0) *out = NBL_Q4_ROUND_HALF_EVEN;
  else if (strcmp(s, "stochastic") == 0) *out = NBL_Q4_ROUND_STOCHASTIC;
  else return -1;
  return 0;
}

nbl_status nbl_q4_config_decode(const nbl_node *n, nbl_q4_config *out, char *err, size_t errlen) {
  static const char *const names[] = {"bits", "mode", "scale_source", "rounding",
                                      "narrow", "seed", "scale"};
  static const nbl_attr_type types[] = {NBL_ATTR_INT,    NBL_ATTR_STRING, NBL_ATTR_STRING,
                                        NBL_ATTR_STRING, NBL_ATTR_INT,    NBL_ATTR_INT,
                                        NBL_ATTR_FLOAT};
  const nbl_attr *a[sizeof names / sizeof names[0]];
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    nbl_status st = nbl_node_attr_typed(n, names[i], types[i], &a[i], err, errlen);
    if (st != NBL_OK) return st;
  }
  const nbl_attr *bits = a[0], *mode = a[1], *source = a[2], *rounding = a[3], *narrow = a[4],
                 *seed = a[5], *scale = a[6];
  nbl_q4_config cfg;
  nbl_q4_config_default(&cfg);
  if (bits) {
    if (bits->i < 2 || bits->i > 8)
      return nbl_errbuf(err, errlen, NBL_ERR_UNSUPPORTED, "bits=%lld is not supported (2..8)",
                        (long long)bits->i);
    cfg.bits = (int)bits->i;
  }
  if (mode && parse_mode(mode->s, &cfg.mode) != 0)
    return nbl_errbuf(err, errlen, NBL_ERR_UNSUPPORTED,
                      "mode '%s' is not supported (symmetric|affine)", mode->s);
  if (source && parse_scale_source(source->s, &cfg.scale_source) != 0)
    return nbl_errbuf(err, errlen, NBL_ERR_UNSUPPORTED,
                      "scale_source '%s' is not supported (max|sawb|fixed|pact|mse)", source->s);
  if (rounding && parse_rounding(rounding->s, &cfg.rounding) != 0)
    return nbl_errbuf(err, errlen, NBL_ERR_UNSUPPORTED,
                      "rounding '%s' is not supported (half_even|stochastic)", rounding->s);
  if (narrow) {
    if (narrow->i != 0 && narrow->i != 1)
      return nbl_errbuf(err, errlen, NBL_ERR_INVALID_MODEL, "narrow must be 0 or 1, got %lld",
                        (long long)narrow->i);
    cfg.narrow = (int)narrow->i;
  }
  if (seed) cfg.seed = seed->i;
  if (cfg.scale_source == NBL_Q4_SCALE_FIXED) {
    if (!scale)
      return nbl_errbuf(err, errlen, NBL_ERR_INVALID_MODEL,
                        "scale_source=fixed needs attribute 'scale'");
    if (!isfinite(scale->f) || scale->f <= 0)
      return nbl_errbuf(err, errlen, NBL_ERR_INVALID_MODEL,
                        "scale_source=fixed needs a finite scale > 0, got scale=%g",
                        (double)scale->f);
    cfg.fixed_scale = scale->f;
  }
  if (cfg.scale_source == NBL_Q4_SCALE_SAWB && cfg.mode != NBL_Q4_SYMMETRIC)
    return nbl_errbuf(err, errlen, NBL_ERR_INVALID_MODEL,
                      "scale_source=sawb is symmetric only (mode 'affine')");
  *out = cfg;
  return NBL_OK;
}

int nbl_q4_scale_from_data(const nbl_q4_config *cfg) {
  return cfg->scale_source == NBL_Q4_SCALE_MAX || cfg->scale_source == NBL_Q4_SCALE_SAWB ||
         cfg->scale_source == NBL_Q4_SCALE_MSE;
}

void nbl_q4_range(const nbl_q4_config *cfg, int *qmin, int *qmax) {
  int b = cfg->bits < 2 ? 2 : cfg->bits > 8 ? 8 : cfg->bits;
  *qmax = (1 << (b - 1)) - 1;
  *qmin = -(1 << (b - 1));
  if (cfg->narrow && cfg->mode == NBL_Q4_SYMMETRIC && cfg->scale_source != NBL_Q4_SCALE_PACT)
    *qmin = -*qmax;
}

int nbl_q4_sawb_coeffs(int bits, double *c1, double *c2) {
  switch (bits) {
  case 2: *c1 = 3.12; *c2 = -2.064; return 0;
  case 3: *c1 = 7.509; *c2 = -6.892; return 0;
  case 4: *c1 = 12.68; *c2 = -12.80; return 0;
  case 8: *c1 = 31.76; *c2 = -35.04; return 0;
  default: return -1;
  }
}

static float max_abs_finite(const float *x, size_t n) {
  float m = 0.0f;
  for (size_t i = 0; i < n; i++) {
    float a = fabsf(x[i]);
    if (isfinite(a) && a > m) m = a;
  }
  return m;
}

double nbl_q4_sawb_clip_from(double mx, double s1, double s2, size_t cnt, int bits) {
  double c1, c2;
  if (nbl_q4_sawb_coeffs(bits, &c1, &c2) != 0 || cnt == 0) return mx;
  double mean_abs = s1 / (double)cnt;
  double c = c1 * sqrt(s2 / (double)cnt) + c2 * mean_abs;
  /* The fit is for bell-shaped tensors; on flat ones (E[x^2] / E|x|^2 near
   * (c2 / c1)^2, which 8-bit weights reach in training) it falls towards 0
   * and a clip below E|x| would saturate most elements: max|x| there. */
  return c >= mean_abs && c > 0 ? c : mx;
}

double nbl_q4_sawb_clip(const float *x, size_t n, int bits) {
  double mx = max_abs_finite(x, n), s2 = 0, s1 = 0;
  size_t cnt = 0;
  for (size_t i = 0; i < n; i++) {
    if (!isfinite(x[i])) continue;
    double v = x[i];
    s2 += v * v;
    s1 += fabs(v);
    cnt++;
  }
  return nbl_q4_sawb_clip_from(mx, s1, s2, cnt, bits);
}

void nbl_q4_params_from_sawb(const nbl_q4_config *cfg, double clip, nbl_q4_params *p) {
  memset(p, 0, sizeof *p);
  nbl_q4_range(cfg, &p->qmin, &p->qmax);
  float s = (float)clip / (float)p->qmax;
  if (!(s > 0.0f) || !isfinite(s)) s = 1.0f;
  p->scale = s;
}

void nbl_q4_params_from_range(const nbl_q4_config *cfg, float lo, float hi, nbl_q4_params *p) {
  memset(p, 0, sizeof *p);
  nbl_q4_range(cfg, &p->qmin, &p->qmax);
  if (lo > hi) lo = hi = 0.0f; /* no finite element */
  float s;
  if (cfg->mode == NBL_Q4_SYMMETRIC) {
    float m = 0.0f; /* max |x| over the finite elements */
    if (-lo > m) m = -lo;
    if (hi > m) m = hi;
    s = m / (float)p->qmax;
    if (!(s > 0.0f) || !isfinite(s)) s = 1.0f;
    p->scale = s;
    return;
  }
  s = (hi - lo) / (float)(p->qmax - p->qmin);
  if (!(s > 0.0f) || !isfinite(s)) s = 1.0f;
  float z = nearbyintf((float)p->qmin - lo / s);
  if (z < -128.0f) z = -128.0f;
  if (z > 127.0f) z = 127.0f;
  p->scale = s;
  p->zero = (int)z;
}

/* ------------------------------------------------------------------ scale_source=mse */

/* The sample of nbl_q4_mse_clip: every element when n <= NBL_Q4_MSE_SAMPLE,
 * else blocks of 64 consecutive elements, every step-th block. */
static size_t mse_step(size_t n) {
  if (n <= NBL_Q4_MSE_SAMPLE) return 1;
  size_t blocks = (n + 63) / 64, want = NBL_Q4_MSE_SAMPLE / 64;
  return (blocks + want - 1) / want;
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
/* The bins of nbl_q4_mse_clip over x[i..i1) in 16 lanes, the same float
 * operations as mse_bin (max with 0 sends NaN to 0 as the scalar rule does),
 * written to bin[0..): returns the index where the scalar loop takes over
 * (fewer than 16 left). */
__attribute__((target("avx512f"))) static size_t mse_bins_avx512(const float *x, size_t i, size_t i1, int affine,
                                                                 float lo, float inv, float R, uint16_t *bin) {
  const __m512 vlo = _mm512_set1_ps(lo), vinv = _mm512_set1_ps(inv), vR = _mm512_set1_ps(R);
  const __m512 zero = _mm512_setzero_ps(), last = _mm512_set1_ps((float)(NBL_Q4_MSE_BINS - 1));
  const __m512i dummy = _mm512_set1_epi32(NBL_Q4_MSE_BINS);
  for (; i + 16 <= i1; i += 16, bin += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    const __m512 d = affine ? _mm512_sub_ps(v, vlo) : _mm512_abs_ps(v);
    __m512 t = _mm512_max_ps(_mm512_mul_ps(d, vinv), zero); /* NaN -> 0 (the second operand) */
    t = _mm512_min_ps(t, last);
    const __mmask16 ok = _mm512_cmp_ps_mask(d, zero, _CMP_GT_OQ) & _mm512_cmp_ps_mask(d, vR, _CMP_LE_OQ);
    _mm256_storeu_si256((__m256i *)bin, _mm512_cvtepi32_epi16(_mm512_mask_mov_epi32(dummy, ok, _mm512_cvttps_epi32(t))));
  }
  return i;
}
#endif

/* The bin of one element (NBL_Q4_MSE_BINS: d = 0, on the grid's end and
 * exact, or not finite: counted nowhere) */
static inline int mse_bin(float v, int affine, float lo, float inv, float R) {
  enum { B = NBL_Q4_MSE_BINS };
  float d = affine ? v - lo : fabsf(v);
  float t = d * inv;
  t = t > 0.0f ? t : 0.0f;                     /* NaN -> 0 */
  t = t < (float)(B - 1) ? t : (float)(B - 1); /* +Inf clamped */
  return d > 0.0f && d <= R ? (int)t : B;
}

/* Count the bins b[0..n) into the four interleaved histograms (no chain of
 * increments on one counter). The bins are written first and counted
 * apart: counting each vector's bins straight from its store stalls on
 * every load (1.7 against 0.4 ns an element). */
static void mse_count(const uint16_t *b, size_t n, uint32_t (*cnt4)[NBL_Q4_MSE_BINS + 1]) {
  size_t k = 0;
  for (; k + 4 <= n; k += 4) cnt4[0][b[k]]++, cnt4[1][b[k + 1]]++, cnt4[2][b[k + 2]]++, cnt4[3][b[k + 3]]++;
  for (; k < n; k++) cnt4[0][b[k]]++;
}

/* R of nbl_q4_mse_clip: the largest distance from the bottom of the grid. */
static float mse_reach(const nbl_q4_config *cfg, float lo, float hi) {
  return cfg->mode == NBL_Q4_AFFINE ? hi - lo : fmaxf(fabsf(lo), fabsf(hi));
}

float nbl_q4_mse_clip(const nbl_q4_config *cfg, const float *x, size_t n, float lo, float hi) {
  enum { B = NBL_Q4_MSE_BINS };
  int affine = cfg->mode == NBL_Q4_AFFINE;
  float R = mse_reach(cfg, lo, hi);
  if (lo > hi || !(R > 0.0f) || !isfinite(R)) return R;
  int qmin, qmax;
  nbl_q4_range(cfg, &qmin, &qmax);
  double L = affine ? (double)(qmax - qmin) : (double)qmax; /* steps between 0 and the clip */
  /* a dummy bin B for d = 0 and non-finite elements: no branch per element */
  uint32_t cnt4[4][B + 1];
  memset(cnt4, 0, sizeof cnt4);
  size_t step = mse_step(n);
  float inv = (float)B / R;
  enum { CHUNK = 1024 };
  size_t blk = step == 1 ? CHUNK : 64; /* (step 1: every element, in chunks) */
  uint16_t bin[CHUNK];
  size_t nb = 0;
#if defined(__x86_64__) && defined(__GNUC__)
  int vec = __builtin_cpu_supports("avx512f");
#else
  int vec = 0;
#endif
  for (size_t i0 = 0; i0 < n; i0 += blk * step) {
    size_t i1 = n - i0 > blk ? i0 + blk : n, i = i0;
    if (nb + (i1 - i0) > sizeof bin / sizeof bin[0]) mse_count(bin, nb, cnt4), nb = 0;
#if defined(__GNUC__)
    if (step > 1) /* the blocks two ahead: the sample's lines are far apart */
      for (size_t a = i0 + 2 * blk * step, l = 0; l < 64 && a + l < n; l += 16) __builtin_prefetch(x + a + l);
#endif
#if defined(__x86_64__) && defined(__GNUC__)
    if (vec) {
      size_t e = mse_bins_avx512(x, i, i1, affine, lo, inv, R, bin + nb);
      nb += e - i, i = e;
    }
#endif
    for (; i < i1; i++) bin[nb++] = (uint16_t)mse_bin(x[i], affine, lo, inv, R);
  }
  mse_count(bin, nb, cnt4);
  uint32_t cnt[B];
  for (int j = 0; j < B; j++) cnt[j] = cnt4[0][j] + cnt4[1][j] + cnt4[2][j] + cnt4[3][j];
  /* E(k) * (B/R)^2 = sum_{j>=k} cnt_j (j + 1/2 - k)^2 + below(k) k^2 / (12 L^2), from the
   * suffix sums S0 = sum cnt_j, S1 = sum cnt_j u_j, S2 = sum cnt_j u_j^2 (u_j = j + 1/2):
   * every term is a multiple of 1/4 below 2^53, so the sums are exact in double and the
   * estimate depends on the counts alone. */
  double S0 = 0, S1 = 0, S2 = 0, total = 0;
  for (int j = 0; j < B; j++) total += cnt[j];
  double best = INFINITY;
  int bestk = B;
  int j = B - 1;
  for (int k = B; k >= NBL_Q4_MSE_STEP; k -= NBL_Q4_MSE_STEP) {
    for (; j >= k; j--) {
      double u = j + 0.5;
      S0 += cnt[j], S1 += cnt[j] * u, S2 += cnt[j] * u * u;
    }
    double above = S2 - 2.0 * k * S1 + (double)k * k * S0;
    double e = above + (total - S0) * ((double)k * k) / (12.0 * L * L);
    if (e < best) best = e, bestk = k; /* ties keep the larger clip */
  }
  return bestk == B ? R : R * (float)bestk / (float)B;
}

void nbl_q4_params_from_mse(const nbl_q4_config *cfg, const float *x, size_t n, float lo, float hi,
                            nbl_q4_params *p) {
  float c = nbl_q4_mse_clip(cfg, x, n, lo, hi);
  float R = mse_reach(cfg, lo, hi);
  if (lo > hi || !(c > 0.0f) || !isfinite(c) || !(c < R)) { /* no clip: max's parameters */
    nbl_q4_params_from_range(cfg, lo, hi, p);
    return;
  }
  if (cfg->mode == NBL_Q4_AFFINE) {
    float top = lo + c;
    nbl_q4_params_from_range(cfg, lo, top < hi ? top : hi, p);
  } else {
    nbl_q4_params_from_range(cfg, 0.0f, c, p);
  }
}

int nbl_q4_choose(const nbl_q4_config *cfg, const float *x, size_t n, float alpha,
                  nbl_q4_params *p, const char **why) {
  static const char *dummy;
  if (!why) why = &dummy;
  memset(p, 0, sizeof *p);
  if (cfg->bits < 2 || cfg->bits > 8) {
    *why = "bits must be in 2..8";
    return -1;
  }
  nbl_q4_range(cfg, &p->qmin, &p->qmax);
  switch (cfg->scale_source) {
  case NBL_Q4_SCALE_FIXED:
    if (!isfinite(cfg->fixed_scale) || cfg->fixed_scale <= 0) {
      *why = "scale_source=fixed needs a finite scale > 0";
      return -1;
    }
    p->scale = cfg->fixed_scale;
    return 0;
  case NBL_Q4_SCALE_PACT:
    if (!isfinite(alpha) || alpha <= 0) {
      *why = "scale_source=pact needs a finite alpha > 0";
      return -1;
    }
    p->scale = alpha / (float)(p->qmax - p->qmin);
    p->zero = p->qmin;
    p->clip = 1;
    p->clip_lo = 0.0f;
    p->clip_hi = alpha;
    return 0;
  case NBL_Q4_SCALE_SAWB:
    if (cfg->mode != NBL_Q4_SYMMETRIC) {
      *why = "scale_source=sawb is symmetric only";
      return -1;
    }
    nbl_q4_params_from_sawb(cfg, nbl_q4_sawb_clip(x, n, cfg->bits), p);
    return 0;
  case NBL_Q4_SCALE_MAX:
  case NBL_Q4_SCALE_MSE: {
    float lo = INFINITY, hi = -INFINITY;
    for (size_t i = 0; i < n; i++) {
      if (!isfinite(x[i])) continue;
      if (x[i] < lo) lo = x[i];
      if (x[i] > hi) hi = x[i];
    }
    if (cfg->scale_source == NBL_Q4_SCALE_MSE) nbl_q4_params_from_mse(cfg, x, n, lo, hi, p);
    else nbl_q4_params_from_range(cfg, lo, hi, p);
    return 0;
  }
  default:
    *why = "unknown scale_source";
    return -1;
  }
}

uint64_t nbl_q4_uniform_key(int64_t seed) { return nbl_splitmix64((uint64_t)seed); }

double nbl_q4_uniform(int64_t seed, uint64_t index) {
  uint64_t h = nbl_splitmix64(nbl_q4_uniform_key(seed) ^ index);
  return (double)(h >> 11) * (1.0 / 9007199254740992.0);
}

/* The code of x before the clamp to [qmin, qmax] (PACT's input clip applied). */
static float code_unclamped(const nbl_q4_config *cfg, const nbl_q4_params *p, float x,
                            uint64_t index) {
  if (p->clip) x = x < p->clip_lo ? p->clip_lo : x > p->clip_hi ? p->clip_hi : x;
  float v = x / p->scale;
  float r;
  if (cfg->rounding == NBL_Q4_ROUND_STOCHASTIC) {
    double fl = floor((double)v);
    double frac = (double)v - fl;
    r = (float)(fl + (nbl_q4_uniform(cfg->seed, index) < frac ? 1.0 : 0.0));
  } else {
    r = nearbyintf(v);
  }
  return r + (float)p->zero;
}

int nbl_q4_code(const nbl_q4_config *cfg, const nbl_q4_params *p, float x, uint64_t index) {
  float r = code_unclamped(cfg, p, x, index);
  if (r < (float)p->qmin) r = (float)p->qmin;
  if (r > (float)p->qmax) r = (float)p->qmax;
  return (int)r;
}

int nbl_q4_passes(const nbl_q4_config *cfg, const nbl_q4_params *p, float x, uint64_t index) {
  if (p->clip) return x >= p->clip_lo && x <= p->clip_hi;
  float r = code_unclamped(cfg, p, x, index);
  return r >= (float)p->qmin && r <= (float)p->qmax;
}

void nbl_q4_fake_quant(const nbl_q4_config *cfg, const nbl_q4_params *p, const float *x,
                       float *y, size_t n, uint64_t index0) {
  for (size_t i = 0; i < n; i++) {
    float v = x[i];
    if (!isfinite(v)) {
      y[i] = v;
      continue;
    }
    int q = nbl_q4_code(cfg, p, v, index0 + i);
    y[i] = p->scale * (float)(q - p->zero);
  }
}

void nbl_q4_quantize_codes(const nbl_q4_config *cfg, const nbl_q4_params *p, const float *x,
                           int8_t *q, size_t n, uint64_t index0) {
  for (size_t i = 0; i < n; i++) {
    float v = x[i];
    if (isnan(v)) q[i] = (int8_t)p->zero;
    else if (isinf(v)) q[i] = (int8_t)(v > 0 ? p->qmax : p->qmin);
    else q[i] = (int8_t)nbl_q4_code(cfg, p, v, index0 + i);
  }
}

int nbl_q4_codes8_ok(const nbl_q4_config *cfg) { return cfg->bits >= 2 && cfg->bits <= 6; }

void nbl_q4_codes8(const nbl_q4_config *cfg, const nbl_q4_params *p, const float *x, int8_t *q, size_t n,
                   uint64_t index0) {
  for (size_t i = 0; i < n; i++) {
    const float v = x[i];
    if (isnan(v)) q[i] = NBL_Q4_CODE8_NAN;
    else if (isinf(v)) q[i] = v > 0 ? NBL_Q4_CODE8_PINF : NBL_Q4_CODE8_NINF;
    else q[i] = (int8_t)nbl_q4_code(cfg, p, v, index0 + i);
  }
}

float nbl_q4_value8(float s, int z, int8_t q) {
  if (q == NBL_Q4_CODE8_NAN) return NAN;
  if (q == NBL_Q4_CODE8_PINF) return INFINITY;
  if (q == NBL_Q4_CODE8_NINF) return -INFINITY;
  return s * (float)(q - z);
}

#if defined(__x86_64__) && defined(__GNUC__)
/* nbl_q4_values8 16 at a time: the same float product, the marks' values
 * blended in; returns where the scalar loop takes over */
__attribute__((target("avx512f"))) static size_t values8_avx512(float s, int z, const int8_t *q, float *y,
                                                                size_t n) {
  const __m512 vs = _mm512_set1_ps(s), nan = _mm512_set1_ps(NAN), pinf = _mm512_set1_ps(INFINITY);
  const __m512i vz = _mm512_set1_epi32(z), mnan = _mm512_set1_epi32(NBL_Q4_CODE8_NAN),
                mp = _mm512_set1_epi32(NBL_Q4_CODE8_PINF), mn = _mm512_set1_epi32(NBL_Q4_CODE8_NINF);
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512i c = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(q + i)));
    __m512 v = _mm512_mul_ps(vs, _mm512_cvtepi32_ps(_mm512_sub_epi32(c, vz)));
    v = _mm512_mask_mov_ps(v, _mm512_cmpeq_epi32_mask(c, mnan), nan);
    v = _mm512_mask_mov_ps(v, _mm512_cmpeq_epi32_mask(c, mp), pinf);
    v = _mm512_mask_mov_ps(v, _mm512_cmpeq_epi32_mask(c, mn), _mm512_sub_ps(_mm512_setzero_ps(), pinf));
    _mm512_storeu_ps(y + i, v);
  }
  return i;
}
#endif

void nbl_q4_values8(float s, int z, const int8_t *q, float *y, size_t n) {
  size_t i = 0;
#if defined(__x86_64__) && defined(__GNUC__)
  if (__builtin_cpu_supports("avx512f")) i = values8_avx512(s, z, q, y, n);
#endif
  for (; i < n; i++) y[i] = nbl_q4_value8(s, z, q[i]);
}

void nbl_q4_pack(const int8_t *q, size_t n, uint8_t *dst) {
  for (size_t i = 0; i < n; i += 2) {
    uint8_t lo = (uint8_t)q[i] & 0x0F;
    uint8_t hi = i + 1 < n ? (uint8_t)((uint8_t)q[i + 1] & 0x0F) : 0;
    dst[i / 2] = (uint8_t)(lo | (hi << 4));
  }
}

void nbl_q4_unpack(const uint8_t *src, size_t n, int8_t *q) {
  for (size_t i = 0; i < n; i++) {
    int v = (src[i / 2] >> ((i & 1) * 4)) & 0x0F;
    q[i] = (int8_t)(v >= 8 ? v - 16 : v);
  }
}
