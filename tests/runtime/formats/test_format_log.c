/* test_format_log.c - the logarithmic quantizer (runtime/formats/log.c) on
 * hand-computed cases: the exact levels of radix 4 with 3 exponent bits, ties,
 * zero, underflow, the two TPR grids, radix 2 and 10, NaN/Inf, all-zero
 * tensors, the integer form, and the stochastic modes' unbiasedness; the
 * threshold table and the vectorized kernels (runtime/kernels/log_quant.c,
 * every variant the CPU runs) bit for bit against nbl_log_code; the
 * attribute decoder and the step key. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/core/cpu.h"
#include "runtime/formats/log.h"
#include "runtime/kernels/log_quant.h"
#include "test_data.h"
#include "ck_elem.h"

static nbl_log_config cfg_of(int radix, nbl_log_rounding r, int phase) {
  nbl_log_config c;
  nbl_log_config_default(&c);
  c.radix = radix;
  c.rounding = r;
  c.phase = phase;
  const char *why = NULL;
  ck_assert_msg(nbl_log_validate(&c, &why) == 0, "%s", why ? why : "");
  return c;
}

static void fq(const nbl_log_config *c, const float *x, float *y, size_t n, nbl_log_params *p) {
  nbl_log_choose(c, x, n, p);
  nbl_log_fake_quant(c, p, x, y, n, 0);
}

START_TEST(test_radix4_levels) {
  /* max|x| = 1: levels 1, 1/4, 1/16, 1/64, 1/256, 1/1024, 1/4096 */
  nbl_log_config c = cfg_of(4, NBL_LOG_NEAREST, 0);
  nbl_log_params p;
  const float m = 1.0f / 4096;
  const float x[] = {1.0f,  -0.25f,    0.0625f,  0.5f,      0.49f,    0.3f, 0.0f, -0.0f,
                     m,     0.6f * m,  0.5f * m, 0.49f * m, 1.9f * m, 0.126f, 0.124f};
  const float want[] = {1.0f, -0.25f, 0.0625f, 1.0f, 0.25f, 0.25f, 0.0f, 0.0f,
                        m,    m,      m,       0.0f, m,     0.25f, 0.0625f};
  float y[15];
  fq(&c, x, y, 15, &p);
  ck_assert_int_eq(p.levels, 7);
  /* 2m is the geometric midpoint of m and 4m: ties go to the larger level */
  ck_assert_int_eq(nbl_log_code(&c, &p, 2.0f * m, 0), 6);
  ck_assert_float_eq(p.top, 1.0f);
  for (int k = 0; k < 7; k++) ck_assert_float_eq(nbl_log_level(&c, &p, k), ldexpf(1.0f, -2 * k));
  for (int i = 0; i < 15; i++)
    ck_assert_msg(y[i] == want[i], "x[%d] = %g -> %g, want %g", i, x[i], y[i], want[i]);
  /* codes and their integer form: 4^(6-k) */
  ck_assert_int_eq(nbl_log_code(&c, &p, 1.0f, 0), 1);
  ck_assert_int_eq(nbl_log_code(&c, &p, -0.25f, 0), -2);
  ck_assert_int_eq(nbl_log_code(&c, &p, m, 0), 7);
  ck_assert_int_eq(nbl_log_code_int(&c, 1), 4096);
  ck_assert_int_eq(nbl_log_code_int(&c, -2), -1024);
  ck_assert_int_eq(nbl_log_code_int(&c, 7), 1);
  ck_assert_int_eq(nbl_log_code_int(&c, 0), 0);
}
END_TEST

START_TEST(test_scale_follows_max) {
  /* max|x| = 3: levels 3*4^-k; 1 lies between 3/4 and 3, geometric mean 1.5 */
  nbl_log_config c = cfg_of(4, NBL_LOG_NEAREST, 0);
  nbl_log_params p;
  const float x[] = {-3.0f, 1.0f, 1.5f, 0.75f};
  float y[4];
  fq(&c, x, y, 4, &p);
  ck_assert_float_eq(p.top, 3.0f);
  ck_assert_float_eq(y[0], -3.0f);
  ck_assert_float_eq(y[1], 0.75f);
  ck_assert_float_eq(y[2], 3.0f);
  ck_assert_float_eq(y[3], 0.75f);
}
END_TEST

START_TEST(test_tpr_grids) {
  /* phase 0: 1, 1/4, ...; phase 1: 2, 1/2, 1/8, ... (max 1 times sqrt(4)) */
  const float x[] = {1.0f, 0.9f, 0.5f, 0.3f, 0.2f, 0.1f};
  float y0[6], y1[6];
  nbl_log_params p0, p1;
  nbl_log_config c0 = cfg_of(4, NBL_LOG_TPR, 0), c1 = cfg_of(4, NBL_LOG_TPR, 1);
  fq(&c0, x, y0, 6, &p0);
  fq(&c1, x, y1, 6, &p1);
  ck_assert_float_eq(p0.top, 1.0f);
  ck_assert_float_eq(p1.top, 2.0f);
  const float w0[] = {1.0f, 1.0f, 1.0f, 0.25f, 0.25f, 0.0625f};
  const float w1[] = {2.0f, 0.5f, 0.5f, 0.5f, 0.125f, 0.125f};
  for (int i = 0; i < 6; i++) {
    ck_assert_msg(y0[i] == w0[i], "phase 0: x=%g -> %g, want %g", x[i], y0[i], w0[i]);
    ck_assert_msg(y1[i] == w1[i], "phase 1: x=%g -> %g, want %g", x[i], y1[i], w1[i]);
  }
  /* the two grids interleave: together they are the radix-2 levels */
  for (int k = 0; k < 6; k++)
    ck_assert_float_eq(nbl_log_level(&c1, &p1, k + 1) * 2.0f, nbl_log_level(&c0, &p0, k));
}
END_TEST

START_TEST(test_radix2_and_10) {
  nbl_log_config c2 = cfg_of(2, NBL_LOG_NEAREST, 0), c10 = cfg_of(10, NBL_LOG_NEAREST, 0);
  nbl_log_params p;
  /* radix 2: between 1/2 and 1 the threshold is sqrt(1/2) = 0.7071 */
  const float x2[] = {1.0f, 0.71f, 0.70f, 1.0f / 64, 1.0f / 200};
  const float w2[] = {1.0f, 1.0f, 0.5f, 1.0f / 64, 0.0f};
  float y[5];
  fq(&c2, x2, y, 5, &p);
  for (int i = 0; i < 5; i++) ck_assert_msg(y[i] == w2[i], "radix 2: x=%g -> %g", x2[i], y[i]);
  /* radix 10: levels 1, 0.1, ..., 1e-6; threshold between 0.1 and 1 is 0.316 */
  const float x10[] = {1.0f, 0.32f, 0.31f, 4e-7f, 6e-7f};
  float y10[5];
  fq(&c10, x10, y10, 5, &p);
  ck_assert_float_eq(y10[0], 1.0f);
  ck_assert_float_eq(y10[1], 1.0f);
  ck_assert_float_eq(y10[2], 0.1f);
  ck_assert_float_eq(y10[3], 0.0f);
  ck_assert_float_eq(y10[4], nbl_log_level(&c10, &p, 6));
  ck_assert_float_eq(nbl_log_level(&c10, &p, 6), (float)1e-6);
}
END_TEST

START_TEST(test_zero_nan_inf) {
  nbl_log_config c = cfg_of(4, NBL_LOG_NEAREST, 0);
  nbl_log_params p;
  const float z[] = {0.0f, 0.0f, -0.0f};
  float y[3];
  fq(&c, z, y, 3, &p);
  ck_assert_float_eq(p.top, 1.0f);
  for (int i = 0; i < 3; i++) ck_assert_float_eq(y[i], 0.0f);
  /* NaN and Inf pass through and do not set the scale */
  const float x[] = {NAN, INFINITY, -INFINITY, 0.5f, 0.125f};
  float w[5];
  fq(&c, x, w, 5, &p);
  ck_assert_float_eq(p.top, 0.5f);
  ck_assert(isnan(w[0]));
  ck_assert(isinf(w[1]) && w[1] > 0);
  ck_assert(isinf(w[2]) && w[2] < 0);
  ck_assert_float_eq(w[3], 0.5f);
  ck_assert_float_eq(w[4], 0.125f);
}
END_TEST

/* Mean of n stochastic draws of x (grid top fixed at 1 by a first element). */
static double mean_draws(const nbl_log_config *c, float x, int n) {
  float *in = malloc(sizeof(float) * (size_t)(n + 1)), *out = malloc(sizeof(float) * (size_t)(n + 1));
  in[0] = 1.0f;
  for (int i = 1; i <= n; i++) in[i] = x;
  nbl_log_params p;
  fq(c, in, out, (size_t)n + 1, &p);
  double s = 0;
  for (int i = 1; i <= n; i++) s += out[i];
  free(in);
  free(out);
  return s / n;
}

START_TEST(test_stochastic_unbiased) {
  /* Each draw is lo or hi with p = (x-lo)/(hi-lo): the mean of n draws has
   * standard deviation (hi-lo)*sqrt(p(1-p)/n); we accept 5 of them (two-sided
   * false-alarm rate 5.7e-7 per check). */
  const int n = 200000;
  struct {
    int radix;
    nbl_log_rounding r;
    float x, lo, hi;
  } cases[] = {
      {4, NBL_LOG_STOCHASTIC, 0.4f, 0.25f, 1.0f},
      {4, NBL_LOG_STOCHASTIC, 0.05f, 0.015625f, 0.0625f},
      {4, NBL_LOG_STOCHASTIC, 0.3f / 4096, 0.0f, 1.0f / 4096}, /* stochastic underflow */
      {2, NBL_LOG_LUQ, 0.6f, 0.5f, 1.0f},
      {2, NBL_LOG_LUQ, 0.004f, 0.0f, 1.0f / 64}, /* LUQ's stochastic underflow */
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    nbl_log_config c = cfg_of(cases[i].radix, cases[i].r, 0);
    c.seed = 1234 + (int64_t)i;
    double p = (cases[i].x - cases[i].lo) / (cases[i].hi - cases[i].lo);
    double sd = (cases[i].hi - cases[i].lo) * sqrt(p * (1 - p) / n);
    double m = mean_draws(&c, cases[i].x, n);
    ck_assert_msg(fabs(m - cases[i].x) < 5 * sd, "case %zu: mean %.8g vs x %.8g (sd %.3g)", i, m,
                  (double)cases[i].x, sd);
  }
  /* reproducible: same seed, same draws; another seed, other draws */
  nbl_log_config c = cfg_of(4, NBL_LOG_STOCHASTIC, 0);
  double a = mean_draws(&c, 0.4f, 1000), b = mean_draws(&c, 0.4f, 1000);
  ck_assert(a == b);
  c.seed = 99;
  ck_assert(mean_draws(&c, 0.4f, 1000) != a);
}
END_TEST

START_TEST(test_codes_batch) {
  /* nbl_log_codes is nbl_log_code element by element (its draws at index0 + i) */
  const nbl_log_rounding modes[] = {NBL_LOG_NEAREST, NBL_LOG_STOCHASTIC};
  float x[2000];
  int8_t codes[2000];
  srand(7);
  for (int i = 0; i < 2000; i++)
    x[i] = (float)((rand() / (double)RAND_MAX - 0.5) * pow(4.0, -(double)(rand() % 9)));
  x[5] = NAN;
  x[6] = -INFINITY;
  x[7] = 0.0f;
  for (int mi = 0; mi < 2; mi++) {
    nbl_log_config c = cfg_of(4, modes[mi], 0);
    c.seed = 12345;
    nbl_log_params p;
    nbl_log_choose(&c, x, 2000, &p);
    nbl_log_codes(&c, &p, x, codes, 2000, 1000);
    for (int i = 0; i < 2000; i++) {
      int want = isfinite(x[i]) ? nbl_log_code(&c, &p, x[i], 1000 + (uint64_t)i) : 0;
      ck_assert_msg(codes[i] == want, "mode %d x[%d] = %g: code %d, want %d", mi, i, x[i], codes[i], want);
    }
  }
}
END_TEST

START_TEST(test_validate) {
  nbl_log_config c;
  const char *why;
  nbl_log_config_default(&c);
  c.radix = 3;
  ck_assert_int_eq(nbl_log_validate(&c, &why), -1);
  nbl_log_config_default(&c);
  c.exp_bits = 5;
  ck_assert_int_eq(nbl_log_validate(&c, &why), -1);
  nbl_log_config_default(&c);
  c.phase = 1; /* phase without tpr */
  ck_assert_int_eq(nbl_log_validate(&c, &why), -1);
  nbl_log_config_default(&c);
  c.rounding = NBL_LOG_LUQ; /* luq needs radix 2 */
  ck_assert_int_eq(nbl_log_validate(&c, &why), -1);
  nbl_log_rounding r;
  ck_assert_int_eq(nbl_log_parse_rounding("tpr", &r), 0);
  ck_assert_int_eq(r, NBL_LOG_TPR);
  ck_assert_int_eq(nbl_log_parse_rounding("even", &r), -1);
}
END_TEST

/* xorshift for test data */
static uint64_t rng = 88172645463325252ull;
static uint64_t next_u64(void) { return td_xs64(&rng); }

/* Values that probe every decision of the grid p: each level and threshold
 * and their float neighbours, both signs, zero, NaN, Inf, random magnitudes
 * over the whole range and above the top. */
static size_t probe_values(const nbl_log_config *c, const nbl_log_params *p, float *x, size_t cap) {
  float lev[NBL_LOG_MAX_LEVELS], thr[NBL_LOG_MAX_LEVELS];
  nbl_log_table(c, p, lev, thr);
  size_t n = 0;
  for (int j = 0; j < p->levels; j++) {
    const float pts[2] = {lev[j], thr[j]};
    for (int k = 0; k < 2; k++) {
      const float cand[3] = {nextafterf(pts[k], 0.0f), pts[k], nextafterf(pts[k], INFINITY)};
      for (int q = 0; q < 3 && n + 2 <= cap; q++) {
        x[n++] = cand[q];
        x[n++] = -cand[q];
      }
    }
  }
  const float special[] = {0.0f, -0.0f, NAN, INFINITY, -INFINITY, p->top * 3.0f, -p->top * 1.5f};
  for (size_t k = 0; k < sizeof special / sizeof *special && n < cap; k++) x[n++] = special[k];
  while (n < cap) {
    double e = (double)(next_u64() % 100000) / 100000.0 * (p->levels + 2) * log2((double)c->radix);
    double v = (double)p->top * exp2(-e) * ((next_u64() & 1) ? -1.0 : 1.0);
    x[n++] = (float)v;
  }
  return n;
}

/* The stochastic kernel (nbl_logq_stochastic, every variant the CPU runs)
 * gives nbl_log_fake_quant's Y and nbl_log_codes's codes (NaN and Inf
 * marked) bit for bit: stochastic and luq, every radix and exponent width,
 * ordinary, tiny and huge tops (subnormal and zero levels), the probe values
 * (levels, thresholds and their neighbours, zeros, NaN, Inf, past the top),
 * several seeds and index offsets, lengths around the vector width; Y in
 * place of X too. */
START_TEST(test_stochastic_kernel) {
  const int radices[] = {2, 4, 10};
  const float tops[] = {1.0f, 3.3e-3f, 7.1e5f, 2.5e-30f, 1.2e-38f, 3.0e38f};
  const size_t N = 1003;
  float *x = malloc(sizeof(float) * N), *want = malloc(sizeof(float) * N), *got = malloc(sizeof(float) * N);
  int8_t *wc = malloc(N);
  signed char *gc = malloc(N);
  int checked = 0;
  for (int ri = 0; ri < 3; ri++)
    for (int eb = 1; eb <= 4; eb++)
      for (int luq = 0; luq < 2; luq++)
        for (size_t ti = 0; ti < sizeof tops / sizeof *tops; ti++) {
          if (luq && radices[ri] != 2) continue;
          nbl_log_config c;
          nbl_log_config_default(&c);
          c.radix = radices[ri];
          c.exp_bits = eb;
          c.rounding = luq ? NBL_LOG_LUQ : NBL_LOG_STOCHASTIC;
          c.seed = (int64_t)(ti * 7919 + (size_t)eb) - 3;
          nbl_log_params p;
          nbl_log_choose_max(&c, tops[ti], &p);
          size_t n = probe_values(&c, &p, x, N);
          const uint64_t index0 = ti * 1000003u;
          const size_t lens[] = {0, 1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 23, 57, 131, 400, n};
          for (size_t li = 0; li < sizeof lens / sizeof *lens; li++) {
            const size_t len = lens[li] < n ? lens[li] : n;
            nbl_log_codes(&c, &p, x, wc, len, index0);
            for (size_t i = 0; i < len; i++)
              if (!isfinite(x[i])) wc[i] = (int8_t)nbl_log_code8_nonfinite(x[i]);
            nbl_log_fake_quant(&c, &p, x, want, len, index0);
            for (int isa = NBL_LOGQ_SCALAR; isa <= NBL_LOGQ_AVX512; isa++) {
              if (!nbl_logq_isa_ok((nbl_logq_isa)isa)) continue;
              memset(got, 0x55, sizeof(float) * N);
              memset(gc, 0x55, N);
              nbl_logq_stochastic((nbl_logq_isa)isa, &c, &p, x, got, gc, len, index0);
              for (size_t i = 0; i < len; i++) {
                uint32_t a, b;
                memcpy(&a, &want[i], 4);
                memcpy(&b, &got[i], 4);
                ck_elem_msg((a == b || (isnan(want[i]) && isnan(got[i]))) && wc[i] == gc[i],
                            "isa %d radix %d exp_bits %d luq %d top %g [%zu]: x=%a -> %a code %d, reference %a "
                            "code %d",
                            isa, c.radix, eb, luq, (double)tops[ti], i, (double)x[i], (double)got[i], gc[i],
                            (double)want[i], wc[i]);
              }
              if (len < N) { /* nothing written past len */
                uint32_t past;
                memcpy(&past, &got[len], 4);
                ck_assert(past == 0x55555555u && (unsigned char)gc[len] == 0x55);
              }
              /* Y in place of X, without the codes */
              memcpy(got, x, sizeof(float) * len);
              nbl_logq_stochastic((nbl_logq_isa)isa, &c, &p, got, got, NULL, len, index0);
              for (size_t i = 0; i < len; i++) ck_elem(!memcmp(&got[i], &want[i], 4) || isnan(want[i]));
              checked++;
            }
          }
        }
  ck_assert_int_gt(checked, 200);
  free(x);
  free(want);
  free(got);
  free(wc);
  free(gc);
}
END_TEST

/* The integer grid of the codes: every level exactly unit * 2^(j * (L-1-k)),
 * unit the smallest level; refused where that fails. */
START_TEST(test_int_grid) {
  nbl_log_config c;
  nbl_log_config_default(&c); /* radix 4, 3 bits: 7 levels, 4^6 apart */
  float u = 0;
  ck_assert_int_eq(nbl_log_int_grid(&c, 1.0f, &u), 1);
  ck_assert_float_eq(u, 1.0f / 4096.0f);
  ck_assert_int_eq(nbl_log_int_grid(&c, 3.0f, &u), 1);
  ck_assert_float_eq(u, 3.0f / 4096.0f);
  c.radix = 2;
  ck_assert_int_eq(nbl_log_int_grid(&c, 0.75f, &u), 1);
  ck_assert_float_eq(u, 0.75f / 64.0f);
  c.exp_bits = 4; /* 15 levels, 2^14 apart */
  ck_assert_int_eq(nbl_log_int_grid(&c, 1.0f, &u), 1);
  ck_assert_float_eq(u, 1.0f / 16384.0f);
  ck_assert_int_eq(nbl_log_int_grid(&c, 1e-34f, &u), 0); /* the smallest level subnormal */
  ck_assert_int_eq(nbl_log_int_grid(&c, INFINITY, &u), 0);
  ck_assert_int_eq(nbl_log_int_grid(&c, NAN, &u), 0);
  ck_assert_int_eq(nbl_log_int_grid(&c, 0.0f, &u), 0);
  c.radix = 10;
  c.exp_bits = 3;
  ck_assert_int_eq(nbl_log_int_grid(&c, 1.0f, &u), 0); /* not powers of two */
}
END_TEST

START_TEST(test_table_and_vector_kernels) {
  /* every radix, exponent width and tpr phase; the top from a first element
   * (ordinary, tiny and huge scales) */
  const int radices[] = {2, 4, 10};
  const float tops[] = {1.0f, 3.3e-3f, 7.1e5f, 2.5e-30f, 1.2e-38f, 3.0e38f};
  const size_t N = 1003; /* not a multiple of 8 or 16: the vector tails too */
  float *x = malloc(sizeof(float) * N), *want = malloc(sizeof(float) * N), *got = malloc(sizeof(float) * N);
  int checked = 0;
  for (int ri = 0; ri < 3; ri++)
    for (int eb = 1; eb <= 4; eb++)
      for (int ph = 0; ph < 3; ph++)
        for (size_t ti = 0; ti < sizeof tops / sizeof *tops; ti++) {
          nbl_log_config c;
          nbl_log_config_default(&c);
          c.radix = radices[ri];
          c.exp_bits = eb;
          c.rounding = ph == 0 ? NBL_LOG_NEAREST : NBL_LOG_TPR;
          c.phase = ph == 2;
          nbl_log_params p;
          nbl_log_choose_max(&c, tops[ti], &p);
          size_t n = probe_values(&c, &p, x, N);
          x[0] = tops[ti]; /* the max: the grid of the kernels is p */
          for (size_t i = 1; i < n; i++)
            if (isfinite(x[i]) && fabsf(x[i]) > tops[ti]) x[i] = nextafterf(tops[ti], 0.0f);
          nbl_log_params pc;
          nbl_log_choose(&c, x, n, &pc);
          ck_assert_float_eq(pc.top, p.top);
          nbl_log_fake_quant(&c, &p, x, want, n, 0);
          float lev[NBL_LOG_MAX_LEVELS], thr[NBL_LOG_MAX_LEVELS];
          nbl_log_table(&c, &p, lev, thr);
          for (int isa = NBL_LOGQ_SCALAR; isa <= NBL_LOGQ_AVX512; isa++) {
            if (!nbl_logq_isa_ok((nbl_logq_isa)isa)) continue;
            ck_assert_float_eq(nbl_logq_absmax((nbl_logq_isa)isa, x, n), tops[ti]);
            memset(got, 0x55, sizeof(float) * N);
            nbl_logq_nearest((nbl_logq_isa)isa, lev, thr, p.levels, x, got, n);
            for (size_t i = 0; i < n; i++) {
              uint32_t a, b;
              memcpy(&a, &want[i], 4);
              memcpy(&b, &got[i], 4);
              ck_elem_msg(a == b || (isnan(want[i]) && isnan(got[i])),
                          "isa %d radix %d exp_bits %d phase %d top %g: x=%a -> %a, reference %a", isa,
                          c.radix, eb, c.phase, (double)tops[ti], (double)x[i], (double)got[i],
                          (double)want[i]);
            }
            /* with the codes (QuantizeLog's codes output): the same y, and
             * each code nbl_log_code's (nbl_log_code8_nonfinite for NaN, Inf) */
            signed char *codes = malloc(N);
            memset(got, 0x55, sizeof(float) * N);
            memset(codes, 0x55, N);
            nbl_logq_nearest_codes((nbl_logq_isa)isa, lev, thr, p.levels, x, got, codes, n);
            for (size_t i = 0; i < n; i++) {
              const int wc = isfinite(x[i]) ? nbl_log_code(&c, &p, x[i], i) : nbl_log_code8_nonfinite(x[i]);
              ck_elem_msg(memcmp(&want[i], &got[i], 4) == 0 || (isnan(want[i]) && isnan(got[i])),
                          "codes variant, isa %d: x=%a -> %a, reference %a", isa, (double)x[i], (double)got[i],
                          (double)want[i]);
              ck_elem_msg(codes[i] == wc, "isa %d radix %d exp_bits %d phase %d top %g: x=%a: code %d, want %d",
                          isa, c.radix, eb, c.phase, (double)tops[ti], (double)x[i], codes[i], wc);
            }
            /* the codes alone (Y omitted): the same codes */
            signed char *alone = malloc(N);
            memset(alone, 0x55, N);
            nbl_logq_nearest_codes((nbl_logq_isa)isa, lev, thr, p.levels, x, NULL, alone, n);
            ck_assert_msg(memcmp(alone, codes, n) == 0, "isa %d radix %d exp_bits %d: codes alone differ", isa,
                          c.radix, eb);
            /* two tables at once (the tpr pair): this one beside the other
             * phase's grid of the same top, in both positions; the partner's
             * codes as nbl_logq_nearest_codes gives them */
            nbl_log_config c2 = c;
            c2.rounding = NBL_LOG_TPR;
            c2.phase = !c.phase;
            nbl_log_params p2;
            nbl_log_choose_max(&c2, tops[ti], &p2);
            float lev2[NBL_LOG_MAX_LEVELS], thr2[NBL_LOG_MAX_LEVELS];
            nbl_log_table(&c2, &p2, lev2, thr2);
            signed char *other = malloc(N), *pair[2] = {malloc(N + 1), malloc(N + 1)};
            nbl_logq_nearest_codes((nbl_logq_isa)isa, lev2, thr2, p2.levels, x, NULL, other, n);
            for (int sw = 0; sw < 2; sw++) {
              const float *lv[2] = {sw ? lev2 : lev, sw ? lev : lev2}, *th[2] = {sw ? thr2 : thr, sw ? thr : thr2};
              const int nl[2] = {sw ? p2.levels : p.levels, sw ? p.levels : p2.levels};
              memset(pair[0], 0x55, N + 1);
              memset(pair[1], 0x55, N + 1);
              nbl_logq_nearest_codes2((nbl_logq_isa)isa, lv, th, nl, x, pair, n);
              for (size_t i = 0; i < n; i++)
                ck_elem_msg(pair[sw][i] == codes[i] && pair[!sw][i] == other[i],
                            "codes2 isa %d radix %d exp_bits %d phase %d top %g (swap %d): x=%a: %d %d, want %d %d",
                            isa, c.radix, eb, c.phase, (double)tops[ti], sw, (double)x[i], pair[sw][i],
                            pair[!sw][i], codes[i], other[i]);
              ck_assert_int_eq(pair[0][n], 0x55); /* nothing past n */
              ck_assert_int_eq(pair[1][n], 0x55);
            }
            free(other);
            free(pair[0]);
            free(pair[1]);
            free(alone);
            free(codes);
            checked++;
          }
        }
  ck_assert_int_ge(checked, 3 * 4 * 3 * 6);
  /* fake_quant (levels computed once per call) equals the element-wise
   * definition nbl_log_value(nbl_log_code(x, index)) in the stochastic modes too */
  for (int mode = 0; mode < 2; mode++)
    for (int eb = 1; eb <= 4; eb++) {
      nbl_log_config c;
      nbl_log_config_default(&c);
      c.rounding = mode ? NBL_LOG_LUQ : NBL_LOG_STOCHASTIC;
      c.radix = mode ? 2 : 4;
      c.exp_bits = eb;
      c.seed = 77 + eb;
      nbl_log_params p;
      nbl_log_choose_max(&c, 1.0f, &p);
      size_t n = probe_values(&c, &p, x, N);
      x[0] = 1.0f;
      for (size_t i = 1; i < n; i++)
        if (isfinite(x[i]) && fabsf(x[i]) > 1.0f) x[i] = 0.999f;
      nbl_log_fake_quant(&c, &p, x, got, n, 1000);
      for (size_t i = 0; i < n; i++) {
        float w = isfinite(x[i]) ? nbl_log_value(&c, &p, nbl_log_code(&c, &p, x[i], 1000 + i)) : x[i];
        ck_elem_msg(memcmp(&w, &got[i], 4) == 0 || (isnan(w) && isnan(got[i])), "mode %d: x=%a -> %a, want %a",
                    mode, (double)x[i], (double)got[i], (double)w);
      }
    }
  /* in place (y == x) */
  nbl_log_config c;
  nbl_log_config_default(&c);
  nbl_log_params p;
  const float v[5] = {1.0f, -0.3f, 0.0f, 0.01f, -1e-9f};
  float w[5], t[5];
  memcpy(t, v, sizeof v);
  nbl_log_choose(&c, v, 5, &p);
  nbl_log_fake_quant(&c, &p, v, w, 5, 0);
  float lev[NBL_LOG_MAX_LEVELS], thr[NBL_LOG_MAX_LEVELS];
  nbl_log_table(&c, &p, lev, thr);
  nbl_logq_nearest(nbl_logq_best_isa(), lev, thr, p.levels, t, t, 5);
  ck_assert_int_eq(memcmp(t, w, sizeof w), 0);
  /* in place with the codes */
  memcpy(t, v, sizeof v);
  signed char k5[5];
  nbl_logq_nearest_codes(nbl_logq_best_isa(), lev, thr, p.levels, t, t, k5, 5);
  ck_assert_int_eq(memcmp(t, w, sizeof w), 0);
  for (int i = 0; i < 5; i++) ck_assert_int_eq(k5[i], nbl_log_code(&c, &p, v[i], 0));
  /* all NaN / no finite element: the max is 0 */
  const float nn[3] = {NAN, INFINITY, -NAN};
  for (int isa = NBL_LOGQ_SCALAR; isa <= NBL_LOGQ_AVX512; isa++)
    if (nbl_logq_isa_ok((nbl_logq_isa)isa)) ck_assert_float_eq(nbl_logq_absmax((nbl_logq_isa)isa, nn, 3), 0.0f);
  free(x);
  free(want);
  free(got);
}
END_TEST

/* A model with one QuantizeLog node carrying the given attributes. */
static nbl_status decode_attrs(const char *k1, int64_t i1, const char *s1, nbl_log_config *cfg, char *err) {
  nbl_model *m = nbl_model_new();
  nbl_graph *g = m->graph;
  nbl_id x = nbl_graph_add_value(g, "x"), y = nbl_graph_add_value(g, "y");
  nbl_id n = nbl_graph_add_node(g, "QuantizeLog", "ai.nibble", "q", 1, &x, 1, &y);
  if (k1 && s1) nbl_node_set_attr_string(g, n, k1, s1);
  else if (k1) nbl_node_set_attr_int(g, n, k1, i1);
  nbl_status st = nbl_log_config_decode(&g->nodes[n], cfg, err, 256);
  nbl_model_free(m);
  return st;
}

START_TEST(test_decode) {
  nbl_log_config c;
  char err[256] = "";
  ck_assert_int_eq(decode_attrs(NULL, 0, NULL, &c, err), NBL_OK);
  ck_assert_int_eq(c.radix, 4);
  ck_assert_int_eq(c.exp_bits, 3);
  ck_assert_int_eq(c.rounding, NBL_LOG_NEAREST);
  ck_assert_int_eq(decode_attrs("radix", 10, NULL, &c, err), NBL_OK);
  ck_assert_int_eq(c.radix, 10);
  ck_assert_int_eq(decode_attrs("rounding", 0, "tpr", &c, err), NBL_OK);
  ck_assert_int_eq(c.rounding, NBL_LOG_TPR);
  ck_assert_int_eq(decode_attrs("radix", 3, NULL, &c, err), NBL_ERR_UNSUPPORTED);
  ck_assert_ptr_nonnull(strstr(err, "radix=3"));
  ck_assert_int_eq(decode_attrs("exp_bits", 5, NULL, &c, err), NBL_ERR_UNSUPPORTED);
  ck_assert_ptr_nonnull(strstr(err, "exp_bits=5"));
  ck_assert_int_eq(decode_attrs("rounding", 0, "even", &c, err), NBL_ERR_UNSUPPORTED);
  ck_assert_ptr_nonnull(strstr(err, "'even'"));
  ck_assert_int_eq(decode_attrs("phase", 1, NULL, &c, err), NBL_ERR_INVALID_MODEL); /* without tpr */
  ck_assert_ptr_nonnull(strstr(err, "phase"));
  ck_assert_int_eq(decode_attrs("rounding", 0, "luq", &c, err), NBL_ERR_INVALID_MODEL); /* radix 4 */
  ck_assert_ptr_nonnull(strstr(err, "luq"));
  ck_assert_int_eq(decode_attrs("radix", 0, "four", &c, err), NBL_ERR_INVALID_MODEL); /* a string */
  ck_assert_ptr_nonnull(strstr(err, "'radix' must be"));
  /* the step key: the seed itself at no step, new keys per step, reproducible */
  ck_assert(nbl_log_step_seed(7, 0) == 7);
  ck_assert(nbl_log_step_seed(7, 1) != nbl_log_step_seed(7, 2));
  ck_assert(nbl_log_step_seed(7, 5) == nbl_log_step_seed(7, 5));
  ck_assert(nbl_log_step_seed(7, 5) != nbl_log_step_seed(8, 5));
}
END_TEST

/* The variant follows the cap in force on the thread (runtime/core/cpu.h);
 * the variants a test asks for follow the CPU alone. */
START_TEST(test_isa_follows_cap) {
  const nbl_isa prev = nbl_cpu_set_thread_cap(NBL_ISA_SCALAR);
  ck_assert_int_eq(nbl_logq_best_isa(), NBL_LOGQ_SCALAR);
  nbl_cpu_set_thread_cap(NBL_ISA_AVX2);
  ck_assert_int_le(nbl_logq_best_isa(), NBL_LOGQ_AVX2);
  ck_assert_int_eq(nbl_logq_isa_ok(NBL_LOGQ_AVX2), (nbl_cpu_features() & NBL_CPU_AVX2) != 0);
  nbl_cpu_set_thread_cap(prev);
  ck_assert_int_eq(nbl_logq_best_isa() == NBL_LOGQ_AVX512, nbl_cpu_has(NBL_CPU_AVX512F));
}
END_TEST

int main(void) {
  Suite *s = suite_create("format_log");
  TCase *tc = tcase_create("log");
  tcase_add_test(tc, test_radix4_levels);
  tcase_add_test(tc, test_scale_follows_max);
  tcase_add_test(tc, test_tpr_grids);
  tcase_add_test(tc, test_radix2_and_10);
  tcase_add_test(tc, test_zero_nan_inf);
  tcase_add_test(tc, test_stochastic_unbiased);
  tcase_add_test(tc, test_stochastic_kernel);
  tcase_add_test(tc, test_validate);
  tcase_add_test(tc, test_table_and_vector_kernels);
  tcase_add_test(tc, test_int_grid);
  tcase_add_test(tc, test_decode);
  tcase_add_test(tc, test_isa_follows_cap);
  tcase_add_test(tc, test_codes_batch);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
