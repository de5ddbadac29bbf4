/* test_log4.c - the ai.nibble QuantizeLog op (runtime/ops/nibble.c) through
 * sessions: the reference and the fast kernel give the same bits in every
 * mode (threaded chunks, vector tails), the values are those of
 * runtime/formats/log.c, the step input changes the stochastic draws
 * reproducibly, the top output, errors naming the node; and the pass
 * quantize-grad-log4 on a hand-built training graph. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nibble.h"
#include "one_node.h"
#include "runtime/formats/log.h"

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static float frand(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (float)((double)(rng >> 11) / 9007199254740992.0);
}

/* Gradient-like data: signed, magnitudes spread over many octaves, some
 * exact zeros. */
static float *grad_data(int64_t n) {
  float *x = malloc(sizeof(float) * (size_t)n);
  for (int64_t i = 0; i < n; i++) {
    float m = exp2f(-20.0f * frand());
    x[i] = (i % 97 == 5) ? 0.0f : (frand() < 0.5f ? -m : m);
  }
  return x;
}

/* One QuantizeLog node with the attributes of cfg (rounding, radix, phase,
 * seed; exp_bits when not 3), with a step input when step >= 0, and the top
 * output when want_top. */
static one *qlog_node(const nbl_log_config *cfg, int with_step, int want_top) {
  one *o = one_new_domain("QuantizeLog", "ai.nibble", 1, with_step ? 2 : 1, want_top ? 2 : 1);
  nbl_graph *g = G(o);
  nbl_node_set_attr_string(g, o->node, "rounding", nbl_log_rounding_name(cfg->rounding));
  nbl_node_set_attr_int(g, o->node, "radix", cfg->radix);
  if (cfg->exp_bits != 3) nbl_node_set_attr_int(g, o->node, "exp_bits", cfg->exp_bits);
  if (cfg->phase) nbl_node_set_attr_int(g, o->node, "phase", cfg->phase);
  if (cfg->seed) nbl_node_set_attr_int(g, o->node, "seed", cfg->seed);
  return o;
}

START_TEST(test_qlog_ref_fast_formats) {
  /* large enough for several threaded chunks, odd for the vector tails */
  const int64_t n = 3 * 32768 + 77;
  float *x = grad_data(n);
  x[10] = NAN;
  x[11] = -INFINITY;
  float *want = malloc(sizeof(float) * (size_t)n);
  struct {
    nbl_log_rounding r;
    int radix, exp_bits, phase;
  } modes[] = {{NBL_LOG_NEAREST, 4, 3, 0}, {NBL_LOG_TPR, 4, 3, 0},       {NBL_LOG_TPR, 4, 3, 1},
               {NBL_LOG_NEAREST, 2, 3, 0}, {NBL_LOG_NEAREST, 10, 3, 0}, {NBL_LOG_NEAREST, 4, 2, 0},
               {NBL_LOG_TPR, 2, 4, 1},     {NBL_LOG_STOCHASTIC, 4, 3, 0}, {NBL_LOG_LUQ, 2, 3, 0}};
  int64_t dims[1] = {n};
  const int64_t step = 41;
  for (size_t k = 0; k < sizeof modes / sizeof *modes; k++) {
    nbl_log_config c;
    nbl_log_config_default(&c);
    c.rounding = modes[k].r;
    c.radix = modes[k].radix;
    c.exp_bits = modes[k].exp_bits;
    c.phase = modes[k].phase;
    c.seed = 1000 + (int64_t)k;
    /* formats: the numbers of the format file, with the step's key */
    nbl_log_config keyed = c;
    keyed.seed = nbl_log_step_seed(c.seed, step);
    nbl_log_params p;
    nbl_log_choose(&keyed, x, (size_t)n, &p);
    nbl_log_fake_quant(&keyed, &p, x, want, (size_t)n, 0);
    one *o = qlog_node(&c, 1, 1);
    one_in(o, 0, NBL_DT_FLOAT, 1, dims, x);
    one_in(o, 1, NBL_DT_INT64, 0, NULL, &step);
    for (int ref = 0; ref < 2; ref++) {
      ck_assert_int_eq(one_run(o, ref), NBL_OK);
      const float *y = outf(o, 0);
      for (int64_t i = 0; i < n; i++) {
        uint32_t a, b;
        memcpy(&a, &want[i], 4);
        memcpy(&b, &y[i], 4);
        ck_assert_msg(a == b || (isnan(want[i]) && isnan(y[i])), "mode %zu %s: x[%lld]=%a -> %a, want %a", k,
                      ref ? "reference" : "fast", (long long)i, (double)x[i], (double)y[i], (double)want[i]);
      }
      ck_assert_float_eq(outf(o, 1)[0], p.top);
    }
    one_free(o);
  }
  free(x);
  free(want);
}
END_TEST

START_TEST(test_qlog_step_and_levels) {
  /* radix 4, nearest: hand-computed levels of max 2 (2, 1/2, 1/8, ...) */
  nbl_log_config c;
  nbl_log_config_default(&c);
  one *o = qlog_node(&c, 0, 1);
  const float x[6] = {-2.0f, 0.9f, 1.1f, 0.3f, 1e-9f, -0.0f};
  const float w[6] = {-2.0f, 0.5f, 2.0f, 0.5f, 0.0f, 0.0f};
  int64_t d6[1] = {6};
  one_in(o, 0, NBL_DT_FLOAT, 1, d6, x);
  for (int ref = 0; ref < 2; ref++) {
    ck_assert_int_eq(one_run(o, ref), NBL_OK);
    for (int i = 0; i < 6; i++) ck_assert_msg(outf(o, 0)[i] == w[i], "x=%g -> %g", x[i], outf(o, 0)[i]);
    ck_assert(!signbit(outf(o, 0)[5])); /* -0 gives +0 (code 0) */
    ck_assert_float_eq(outf(o, 1)[0], 2.0f);
  }
  one_free(o);
  /* stochastic: the same step draws the same numbers, another step others */
  c.rounding = NBL_LOG_STOCHASTIC;
  c.seed = 5;
  const int64_t n = 4096;
  float *g = grad_data(n);
  int64_t dn[1] = {n};
  float *first = malloc(sizeof(float) * (size_t)n);
  one *s = qlog_node(&c, 1, 0);
  int64_t step = 1;
  one_in(s, 0, NBL_DT_FLOAT, 1, dn, g);
  one_in(s, 1, NBL_DT_INT64, 0, NULL, &step);
  ck_assert_int_eq(one_run(s, 0), NBL_OK);
  memcpy(first, outf(s, 0), sizeof(float) * (size_t)n);
  ck_assert_int_eq(one_run(s, 1), NBL_OK);
  ck_assert_int_eq(memcmp(first, outf(s, 0), sizeof(float) * (size_t)n), 0);
  step = 2;
  ck_assert_int_eq(one_run(s, 0), NBL_OK);
  int differ = 0;
  for (int64_t i = 0; i < n; i++) differ += first[i] != outf(s, 0)[i];
  ck_assert_int_gt(differ, n / 20);
  /* a bad step: an error naming the node and the input */
  float fstep = 2.0f;
  one_in(s, 1, NBL_DT_FLOAT, 0, NULL, &fstep);
  ck_assert_int_eq(one_run(s, 0), NBL_ERR_INVALID_MODEL);
  ck_assert_ptr_nonnull(strstr(nbl_last_error(), "step must be an int64 scalar"));
  ck_assert_ptr_nonnull(strstr(nbl_last_error(), "'n'"));
  one_free(s);
  /* a bad attribute: the node and the attribute */
  one *b = one_new_domain("QuantizeLog", "ai.nibble", 1, 1, 1);
  nbl_node_set_attr_int(G(b), b->node, "radix", 8);
  one_in(b, 0, NBL_DT_FLOAT, 1, dn, g);
  ck_assert_int_eq(one_run(b, 0), NBL_ERR_UNSUPPORTED);
  ck_assert_ptr_nonnull(strstr(nbl_last_error(), "radix=8"));
  one_free(b);
  free(g);
  free(first);
}
END_TEST

/* PASS TESTS */

int main(void) {
  Suite *s = suite_create("log4");
  TCase *tc = tcase_create("log4");
  tcase_set_timeout(tc, 300);
  tcase_add_test(tc, test_qlog_ref_fast_formats);
  tcase_add_test(tc, test_qlog_step_and_levels);
  /* PASS CASES */
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
