/* test_format_log.c - the logarithmic quantizer (runtime/formats/log.c) on
 * hand-computed cases: the exact levels of radix 4 with 3 exponent bits, ties,
 * zero, underflow, the two TPR grids, radix 2 and 10, NaN/Inf, all-zero
 * tensors, the integer form, and the stochastic modes' unbiasedness. */
#include <check.h>
#include <math.h>
#include <stdlib.h>

#include "runtime/formats/log.h"

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

int main(void) {
  Suite *s = suite_create("format_log");
  TCase *tc = tcase_create("log");
  tcase_add_test(tc, test_radix4_levels);
  tcase_add_test(tc, test_scale_follows_max);
  tcase_add_test(tc, test_tpr_grids);
  tcase_add_test(tc, test_radix2_and_10);
  tcase_add_test(tc, test_zero_nan_inf);
  tcase_add_test(tc, test_stochastic_unbiased);
  tcase_add_test(tc, test_validate);
  tcase_add_test(tc, test_codes_batch);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
