/* test_ops_random.c - the random ops (runtime/ops/random.c) through one-node
 * graphs: RandomNormal, RandomUniform, RandomNormalLike, RandomUniformLike,
 * Bernoulli, Multinomial. Statistical checks on 100,000 draws, ranges, exact
 * cases (p = 0 and 1, low == high, zero-weight classes), seeds (the same
 * values run after run and session after session; fresh values without one),
 * output types, shape rules and the errors for bad attributes and inputs.
 *
 * False alarms. Every statistical bound is 5 standard errors of the
 * statistic (mean, variance, a frequency, a correlation: asymptotically
 * normal, so a correct kernel lands outside with probability 5.7e-7), or the
 * 1 - 1e-6 quantile of the chi-square distribution with the test's degrees of
 * freedom (19 dof: 63.68, 4 dof: 33.38, 2 dof: 27.63). About 30 such checks run
 * per pass of the suite: a correct build fails one with probability below
 * 2e-5. With a seed attribute the draws are fixed, so the odds are those of
 * having picked an unlucky seed; the unseeded cases redraw on every run. The
 * bounds are tight: at n = 100,000 a normal's variance off by 4 % (its scale
 * by 2 %) fails the 5-SE bound 5 * sqrt(2 / n) = 2.2 %, Bernoulli's
 * frequency for p = 0.3 off by 3 % fails, and so does Multinomial's
 * chi-square for logits scaled by 1.05 or Box-Muller pairs made of cos and
 * cos (the neighbour correlation). */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ir/ir.h"
#include "nibble.h"
#include "one_node.h"
#include "passes/pass.h"
#include "ck_elem.h"

#define N 100000 /* draws of the statistical checks */

/* ------------------------------------------------------------------ helpers */

static one *op(const char *name, int opset, int n_in) { return one_new(name, opset, n_in, 1); }
static void attr_f(one *o, const char *name, float v) { nbl_node_set_attr_float(G(o), o->node, name, v); }
static void attr_i(one *o, const char *name, int64_t v) { nbl_node_set_attr_int(G(o), o->node, name, v); }
static void attr_shape(one *o, int n, const int64_t *d) { nbl_node_set_attr_ints(G(o), o->node, "shape", n, d); }

static void run_ok(one *o) {
  nbl_status st = one_run(o, 1);
  ck_assert_msg(st == NBL_OK, "%s", nbl_last_error());
}
static void rerun_ok(one *o) {
  nbl_status st = one_rerun(o);
  ck_assert_msg(st == NBL_OK, "%s", nbl_last_error());
}

/* The run fails and the message names the node and contains `what`. */
static void run_fails(one *o, const char *op_type, const char *what) {
  nbl_status st = one_run(o, 1);
  ck_assert_msg(st != NBL_OK, "%s: expected an error about '%s'", op_type, what);
  char node[64];
  snprintf(node, sizeof node, "node 'n0' (%s)", op_type);
  const char *msg = nbl_last_error();
  ck_assert_msg(strstr(msg, node) && strstr(msg, what), "message '%s' lacks '%s' or '%s'", msg, node, what);
}

static int64_t numel(const nbl_host_tensor *t) {
  int64_t n = 1;
  for (int d = 0; d < t->rank; d++) n *= t->dims[d];
  return n;
}

/* Element i of a host tensor as double. */
static double hget(const nbl_host_tensor *t, int64_t i) {
  switch (t->dtype) {
  case NBL_DT_FLOAT: return ((const float *)t->data)[i];
  case NBL_DT_DOUBLE: return ((const double *)t->data)[i];
  case NBL_DT_FLOAT16: return nbl_half_to_float(((const uint16_t *)t->data)[i]);
  case NBL_DT_BFLOAT16: return nbl_bf16_to_float(((const uint16_t *)t->data)[i]);
  case NBL_DT_INT32: return ((const int32_t *)t->data)[i];
  case NBL_DT_INT64: return (double)((const int64_t *)t->data)[i];
  case NBL_DT_BOOL:
  case NBL_DT_UINT8: return ((const uint8_t *)t->data)[i];
  default: ck_abort_msg("hget: type %s", nbl_dtype_name(t->dtype)); return 0;
  }
}

/* A malloc'd copy of output 0's bytes (to compare runs). */
static void *copy_out(one *o) {
  void *p = malloc(o->out[0].nbytes + 1);
  memcpy(p, o->out[0].data, o->out[0].nbytes);
  return p;
}

static void expect_type(const nbl_host_tensor *t, nbl_dtype dt, int rank, const int64_t *dims) {
  ck_assert_msg(t->dtype == dt, "type %s, expected %s", nbl_dtype_name(t->dtype), nbl_dtype_name(dt));
  ck_assert_int_eq(t->rank, rank);
  for (int d = 0; d < rank; d++) ck_assert_int_eq(t->dims[d], dims[d]);
}

/* Sample mean and variance (n - 1) of t. */
static void moments(const nbl_host_tensor *t, double *mean, double *var) {
  int64_t n = numel(t);
  double s = 0, q = 0;
  for (int64_t i = 0; i < n; i++) s += hget(t, i);
  *mean = s / (double)n;
  for (int64_t i = 0; i < n; i++) {
    double d = hget(t, i) - *mean;
    q += d * d;
  }
  *var = q / (double)(n - 1);
}

/* |got - want| <= 5 standard errors. */
static void within5(const char *what, double got, double want, double se) {
  ck_assert_msg(fabs(got - want) <= 5 * se, "%s: %.6g, expected %.6g within 5 SE (%.3g)", what, got, want,
                5 * se);
}

/* Uniform on [lo, hi): every value in range; mean (SE w / sqrt(12 n)) and
 * variance (SE w^2 / sqrt(180 n), from the fourth central moment w^4 / 80)
 * within 5 SE; 20 equal bins pass chi-square (19 dof, bound 63.68). */
static void check_uniform(const nbl_host_tensor *t, double lo, double hi) {
  int64_t n = numel(t);
  double w = hi - lo, mean, var;
  int64_t bins[20] = {0};
  for (int64_t i = 0; i < n; i++) {
    double v = hget(t, i);
    ck_elem_msg(v >= lo && v < hi, "element %lld: %.17g outside [%g, %g)", (long long)i, v, lo, hi);
    int b = (int)((v - lo) / w * 20);
    bins[b < 20 ? b : 19]++;
  }
  moments(t, &mean, &var);
  within5("uniform mean", mean, (lo + hi) / 2, w / sqrt(12.0 * (double)n));
  within5("uniform variance", var, w * w / 12, w * w / sqrt(180.0 * (double)n));
  double chi = 0, e = (double)n / 20;
  for (int b = 0; b < 20; b++) chi += (bins[b] - e) * (bins[b] - e) / e;
  ck_assert_msg(chi < 63.68, "uniform histogram: chi-square %.2f over 19 dof (bound 63.68)", chi);
}

/* Normal(mu, sigma): mean (SE sigma / sqrt(n)), variance (SE sigma^2
 * sqrt(2 / n)), the share within one sigma (0.682689, binomial SE) and the
 * correlation of neighbours (Box-Muller's pairs; SE 1 / sqrt(n)) within 5 SE. */
static void check_normal(const nbl_host_tensor *t, double mu, double sigma) {
  int64_t n = numel(t), in1 = 0;
  double mean, var, c = 0;
  moments(t, &mean, &var);
  for (int64_t i = 0; i < n; i++) {
    double z = (hget(t, i) - mu) / sigma;
    ck_elem_msg(isfinite(z), "element %lld is not finite", (long long)i);
    if (fabs(z) < 1) in1++;
    if (i + 1 < n) c += z * ((hget(t, i + 1) - mu) / sigma);
  }
  double dn = (double)n, p1 = 0.682689492137086;
  within5("normal mean", mean, mu, sigma / sqrt(dn));
  within5("normal variance", var, sigma * sigma, sigma * sigma * sqrt(2.0 / dn));
  within5("normal share within one sigma", (double)in1 / dn, p1, sqrt(p1 * (1 - p1) / dn));
  within5("normal lag-1 correlation", c / (dn - 1), 0.0, 1 / sqrt(dn - 1));
}

/* ------------------------------------------------------------------ RandomUniform */

START_TEST(test_uniform_stats) {
  int64_t shape[2] = {250, 400};
  one *o = op("RandomUniform", 1, 0);
  attr_shape(o, 2, shape);
  attr_f(o, "low", -2.0f);
  attr_f(o, "high", 3.0f);
  attr_f(o, "seed", 11.0f);
  run_ok(o);
  expect_type(&o->out[0], NBL_DT_FLOAT, 2, shape);
  check_uniform(&o->out[0], -2.0, 3.0);
  one_free(o);
  /* no seed, default [0, 1) */
  o = op("RandomUniform", 1, 0);
  int64_t n = N;
  attr_shape(o, 1, &n);
  run_ok(o);
  check_uniform(&o->out[0], 0.0, 1.0);
  one_free(o);
}
END_TEST

/* double: values carry more than float's 24 bits (computed in double) */
START_TEST(test_uniform_double) {
  int64_t n = N;
  one *o = op("RandomUniform", 1, 0);
  attr_shape(o, 1, &n);
  attr_i(o, "dtype", NBL_DT_DOUBLE);
  attr_f(o, "seed", 2.0f);
  run_ok(o);
  expect_type(&o->out[0], NBL_DT_DOUBLE, 1, &n);
  check_uniform(&o->out[0], 0.0, 1.0);
  int64_t finer = 0;
  for (int64_t i = 0; i < n; i++) finer += (double)(float)outd(o, 0)[i] != outd(o, 0)[i];
  ck_assert_msg(finer > n * 9 / 10, "only %lld of %lld values need more than float precision",
                (long long)finer, (long long)n);
  one_free(o);
}
END_TEST

/* float16 on [1, 2): half's grid there is 2^-10, so 1 in 2048 draws rounds up
 * to 2 and is drawn again. Every value must stay below 2; the mean is that of
 * the grid points 1 + k 2^-10 (k = 0 at half weight, as it gets only the
 * draws that round down to 1): 1 + 1023/2047, SE (1/sqrt(12)) / sqrt(n). */
START_TEST(test_uniform_float16) {
  int64_t n = N;
  one *o = op("RandomUniform", 1, 0);
  attr_shape(o, 1, &n);
  attr_i(o, "dtype", NBL_DT_FLOAT16);
  attr_f(o, "low", 1.0f);
  attr_f(o, "high", 2.0f);
  attr_f(o, "seed", 5.0f);
  run_ok(o);
  expect_type(&o->out[0], NBL_DT_FLOAT16, 1, &n);
  double mean, var;
  for (int64_t i = 0; i < n; i++) {
    double v = hget(&o->out[0], i);
    ck_elem_msg(v >= 1.0 && v < 2.0, "element %lld: %g outside [1, 2)", (long long)i, v);
  }
  moments(&o->out[0], &mean, &var);
  within5("float16 uniform mean", mean, 1.0 + 1023.0 / 2047.0, 1 / sqrt(12.0 * (double)n));
  one_free(o);
}
END_TEST

START_TEST(test_uniform_edges) {
  /* low == high: every value is low */
  int64_t n = 1000;
  one *o = op("RandomUniform", 1, 0);
  attr_shape(o, 1, &n);
  attr_f(o, "low", 0.25f);
  attr_f(o, "high", 0.25f);
  run_ok(o);
  for (int64_t i = 0; i < n; i++) ck_assert_float_eq(outf(o, 0)[i], 0.25f);
  one_free(o);
  /* an empty output (a zero dimension) and a scalar (shape []) */
  int64_t z[2] = {3, 0};
  o = op("RandomUniform", 1, 0);
  attr_shape(o, 2, z);
  run_ok(o);
  expect_type(&o->out[0], NBL_DT_FLOAT, 2, z);
  one_free(o);
  o = op("RandomUniform", 1, 0);
  attr_shape(o, 0, NULL);
  run_ok(o);
  expect_type(&o->out[0], NBL_DT_FLOAT, 0, NULL);
  ck_assert(outf(o, 0)[0] >= 0.0f && outf(o, 0)[0] < 1.0f);
  one_free(o);
}
END_TEST

/* ------------------------------------------------------------------ RandomNormal */

START_TEST(test_normal_stats) {
  int64_t n = N;
  one *o = op("RandomNormal", 1, 0);
  attr_shape(o, 1, &n);
  attr_i(o, "dtype", NBL_DT_DOUBLE);
  attr_f(o, "mean", 1.5f);
  attr_f(o, "scale", 2.0f);
  attr_f(o, "seed", 7.0f);
  run_ok(o);
  expect_type(&o->out[0], NBL_DT_DOUBLE, 1, &n);
  check_normal(&o->out[0], 1.5, 2.0);
  one_free(o);
  /* float, defaults (0, 1), no seed, an odd count (the last pair is half used) */
  int64_t shape[3] = {7, 101, 141};
  o = op("RandomNormal", 1, 0);
  attr_shape(o, 3, shape);
  run_ok(o);
  expect_type(&o->out[0], NBL_DT_FLOAT, 3, shape);
  check_normal(&o->out[0], 0.0, 1.0);
  one_free(o);
  /* scale 0: every value is the mean */
  o = op("RandomNormal", 1, 0);
  int64_t m = 5;
  attr_shape(o, 1, &m);
  attr_f(o, "mean", -3.0f);
  attr_f(o, "scale", 0.0f);
  run_ok(o);
  for (int i = 0; i < 5; i++) ck_assert_float_eq(outf(o, 0)[i], -3.0f);
  one_free(o);
}
END_TEST

/* RandomNormalLike: the input's shape and type (float16 here), or dtype's */
START_TEST(test_normal_like) {
  int64_t d[2] = {250, 400};
  uint16_t *h = calloc(N, sizeof *h);
  one *o = op("RandomNormalLike", 1, 1);
  one_in(o, 0, NBL_DT_FLOAT16, 2, d, h);
  attr_f(o, "mean", -1.0f);
  attr_f(o, "scale", 0.5f);
  run_ok(o);
  expect_type(&o->out[0], NBL_DT_FLOAT16, 2, d);
  check_normal(&o->out[0], -1.0, 0.5);
  one_free(o);
  free(h);
  /* an integer input with dtype double */
  int64_t d2[3] = {2, 3, 4};
  int32_t x[24] = {0};
  o = op("RandomNormalLike", 1, 1);
  one_in(o, 0, NBL_DT_INT32, 3, d2, x);
  attr_i(o, "dtype", NBL_DT_DOUBLE);
  run_ok(o);
  expect_type(&o->out[0], NBL_DT_DOUBLE, 3, d2);
  one_free(o);
}
END_TEST

/* RandomUniformLike: int64 input with dtype float; double input without */
START_TEST(test_uniform_like) {
  int64_t d[2] = {400, 250};
  int64_t *x = calloc(N, sizeof *x);
  one *o = op("RandomUniformLike", 1, 1);
  one_in(o, 0, NBL_DT_INT64, 2, d, x);
  attr_i(o, "dtype", NBL_DT_FLOAT);
  attr_f(o, "low", 10.0f);
  attr_f(o, "high", 12.0f);
  run_ok(o);
  expect_type(&o->out[0], NBL_DT_FLOAT, 2, d);
  check_uniform(&o->out[0], 10.0, 12.0);
  one_free(o);
  free(x);
  double y[6] = {0};
  int64_t d1 = 6;
  o = op("RandomUniformLike", 1, 1);
  one_in(o, 0, NBL_DT_DOUBLE, 1, &d1, y);
  run_ok(o);
  expect_type(&o->out[0], NBL_DT_DOUBLE, 1, &d1);
  one_free(o);
}
END_TEST

/* ------------------------------------------------------------------ Bernoulli */

/* p = 0 gives 0 and p = 1 gives 1 every time; p = 0.3 about 30 % ones
 * (binomial SE sqrt(p (1 - p) / n), 5 SE); only 0 and 1 appear. */
START_TEST(test_bernoulli) {
  int64_t n = N;
  float *p = malloc(sizeof(float) * N);
  for (int64_t i = 0; i < n; i++) p[i] = i < 1000 ? 0.0f : i < 2000 ? 1.0f : 0.3f;
  one *o = op("Bernoulli", 15, 1);
  one_in(o, 0, NBL_DT_FLOAT, 1, &n, p);
  run_ok(o);
  expect_type(&o->out[0], NBL_DT_FLOAT, 1, &n);
  int64_t ones = 0;
  for (int64_t i = 0; i < n; i++) {
    float v = outf(o, 0)[i];
    ck_elem_msg(v == 0.0f || v == 1.0f, "element %lld is %g", (long long)i, v);
    if (i < 1000) ck_assert_msg(v == 0.0f, "p = 0 gave 1 at %lld", (long long)i);
    else if (i < 2000) ck_assert_msg(v == 1.0f, "p = 1 gave 0 at %lld", (long long)i);
    else ones += v == 1.0f;
  }
  double m = (double)(n - 2000);
  within5("Bernoulli(0.3) frequency", (double)ones / m, 0.3, sqrt(0.3 * 0.7 / m));
  /* fresh values every run (no seed) */
  void *first = copy_out(o);
  rerun_ok(o);
  ck_assert_msg(memcmp(first, o->out[0].data, o->out[0].nbytes) != 0, "two runs drew the same values");
  free(first);
  one_free(o);
  free(p);
}
END_TEST

/* The output type: the input's (double, float16) by default, else dtype's
 * (int64, bool, bfloat16 ...). */
START_TEST(test_bernoulli_types) {
  int64_t n = 8;
  double pd[8] = {0, 1, 0, 1, 1, 0, 0, 1};
  uint16_t ph[8];
  for (int i = 0; i < 8; i++) ph[i] = nbl_float_to_half((float)pd[i]);
  static const struct {
    nbl_dtype in, attr, out;
  } cases[] = {
      {NBL_DT_DOUBLE, NBL_DT_UNDEFINED, NBL_DT_DOUBLE}, {NBL_DT_FLOAT16, NBL_DT_UNDEFINED, NBL_DT_FLOAT16},
      {NBL_DT_DOUBLE, NBL_DT_INT64, NBL_DT_INT64},      {NBL_DT_FLOAT16, NBL_DT_BOOL, NBL_DT_BOOL},
      {NBL_DT_DOUBLE, NBL_DT_INT32, NBL_DT_INT32},      {NBL_DT_DOUBLE, NBL_DT_BFLOAT16, NBL_DT_BFLOAT16},
      {NBL_DT_FLOAT16, NBL_DT_FLOAT, NBL_DT_FLOAT},
  };
  for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
    one *o = op("Bernoulli", 15, 1);
    one_in(o, 0, cases[k].in, 1, &n, cases[k].in == NBL_DT_DOUBLE ? (const void *)pd : (const void *)ph);
    if (cases[k].attr != NBL_DT_UNDEFINED) attr_i(o, "dtype", cases[k].attr);
    run_ok(o);
    expect_type(&o->out[0], cases[k].out, 1, &n);
    for (int i = 0; i < 8; i++) ck_assert_msg(hget(&o->out[0], i) == pd[i], "case %zu element %d", k, i);
    one_free(o);
  }
}
END_TEST

/* ------------------------------------------------------------------ Multinomial */

/* Counts of each class against softmax of the row: chi-square over the
 * classes with weight (bound: the 1 - 1e-6 quantile of their dof), and never
 * a class of weight 0 (-inf or NaN logit). */
static void check_multinomial(const nbl_host_tensor *t, int64_t row, int64_t S, int K, const double *logit,
                              double bound) {
  double w[16], tot = 0, mx = -INFINITY;
  int64_t cnt[16] = {0};
  for (int k = 0; k < K; k++)
    if (isfinite(logit[k]) && logit[k] > mx) mx = logit[k];
  for (int k = 0; k < K; k++) tot += w[k] = isfinite(logit[k]) ? exp(logit[k] - mx) : 0.0;
  for (int64_t s = 0; s < S; s++) {
    double c = hget(t, row * S + s);
    ck_elem_msg(c >= 0 && c < K && c == floor(c), "row %lld sample %lld: class %g", (long long)row,
                (long long)s, c);
    cnt[(int)c]++;
  }
  double chi = 0;
  for (int k = 0; k < K; k++) {
    if (w[k] == 0) {
      ck_assert_msg(cnt[k] == 0, "row %lld: class %d has weight 0 but %lld samples", (long long)row, k,
                    (long long)cnt[k]);
      continue;
    }
    double e = (double)S * w[k] / tot;
    chi += (cnt[k] - e) * (cnt[k] - e) / e;
  }
  ck_assert_msg(chi < bound, "row %lld: chi-square %.2f (bound %.2f)", (long long)row, chi, bound);
}

START_TEST(test_multinomial) {
  /* row 0: log(1..4) + 7 (unnormalized); row 1: a -inf and a NaN class */
  double x[2][5] = {{log(1) + 7, log(2) + 7, log(3) + 7, log(4) + 7, log(0.5) + 7},
                    {0.5, -INFINITY, 2.0, -1.0, NAN}};
  int64_t d[2] = {2, 5}, S = N;
  one *o = op("Multinomial", 7, 1);
  one_in(o, 0, NBL_DT_DOUBLE, 2, d, x);
  attr_i(o, "sample_size", S);
  attr_f(o, "seed", 9.0f);
  run_ok(o);
  int64_t od[2] = {2, S};
  expect_type(&o->out[0], NBL_DT_INT32, 2, od);
  check_multinomial(&o->out[0], 0, S, 5, x[0], 33.38); /* 4 dof */
  check_multinomial(&o->out[0], 1, S, 5, x[1], 27.63); /* 2 dof (3 classes with weight) */
  one_free(o);
  /* float input, int64 output, no seed, sample_size 1 (the default) */
  float xf[3][2] = {{0, 0}, {-50, 50}, {3, -INFINITY}};
  int64_t d3[2] = {3, 2};
  o = op("Multinomial", 7, 1);
  one_in(o, 0, NBL_DT_FLOAT, 2, d3, xf);
  attr_i(o, "dtype", NBL_DT_INT64);
  run_ok(o);
  int64_t od3[2] = {3, 1};
  expect_type(&o->out[0], NBL_DT_INT64, 2, od3);
  const int64_t *c = o->out[0].data;
  ck_assert(c[0] == 0 || c[0] == 1);
  ck_assert_int_eq(c[1], 1); /* weight e^-100 against 1 */
  ck_assert_int_eq(c[2], 0); /* the other class weighs 0 */
  one_free(o);
  /* two equal rows draw apart (each sample has its own draw) */
  float eq[2][10] = {{0}};
  int64_t de[2] = {2, 10};
  o = op("Multinomial", 7, 1);
  one_in(o, 0, NBL_DT_FLOAT, 2, de, eq);
  attr_i(o, "sample_size", 1000);
  run_ok(o);
  const int32_t *r = o->out[0].data;
  ck_assert_msg(memcmp(r, r + 1000, 1000 * sizeof *r) != 0, "equal rows drew the same samples");
  one_free(o);
}
END_TEST

/* ------------------------------------------------------------------ seeds */

/* A seed attribute: the same values on every run of a session, in a new
 * session and with another thread count; another seed (a fractional one
 * too) gives other values. */
START_TEST(test_seed_reproducible) {
  static const char *const ops[] = {"RandomNormal", "RandomUniform", "Bernoulli", "Multinomial"};
  for (int k = 0; k < 4; k++) {
    int64_t n = 20000, d2[2] = {4, 5000};
    float *p = malloc(sizeof(float) * (size_t)n);
    for (int64_t i = 0; i < n; i++) p[i] = k == 3 ? (float)(i % 7) * 0.1f : 0.5f;
    void *ref = NULL;
    float seeds[4] = {3.0f, 3.0f, 4.0f, 3.5f};
    for (int v = 0; v < 4; v++) {
      one *o = op(ops[k], k == 2 ? 15 : k == 3 ? 7 : 1, k >= 2);
      if (k < 2) attr_shape(o, 1, &n);
      if (k == 2) one_in(o, 0, NBL_DT_FLOAT, 1, &n, p);
      if (k == 3) {
        one_in(o, 0, NBL_DT_FLOAT, 2, d2, p);
        attr_i(o, "sample_size", 1000);
      }
      attr_f(o, "seed", seeds[v]);
      o->threads = v == 1 ? 1 : 2;
      run_ok(o);
      if (v == 0) {
        ref = copy_out(o);
        rerun_ok(o); /* the same session again */
        ck_assert_msg(!memcmp(ref, o->out[0].data, o->out[0].nbytes), "%s: a rerun with a seed differs", ops[k]);
      } else if (v == 1) { /* a new session, one thread */
        ck_assert_msg(!memcmp(ref, o->out[0].data, o->out[0].nbytes), "%s: a new session with the seed differs",
                      ops[k]);
      } else {
        ck_assert_msg(memcmp(ref, o->out[0].data, o->out[0].nbytes), "%s: seed %g gives seed 3's values", ops[k],
                      seeds[v]);
      }
      one_free(o);
    }
    free(ref);
    free(p);
  }
}
END_TEST

/* No seed attribute: every run of a session and every session draws fresh
 * values; nbl_session_options.seed makes a session's sequence of runs
 * repeatable. */
START_TEST(test_unseeded) {
  int64_t n = 1000;
  one *o = op("RandomNormal", 1, 0);
  attr_shape(o, 1, &n);
  run_ok(o);
  void *a = copy_out(o);
  rerun_ok(o);
  ck_assert_msg(memcmp(a, o->out[0].data, o->out[0].nbytes), "two runs drew the same values");
  run_ok(o); /* a new session */
  ck_assert_msg(memcmp(a, o->out[0].data, o->out[0].nbytes), "two sessions drew the same values");
  free(a);
  /* two sessions with the same stream seed: run for run the same values */
  void *runs[2][2];
  for (int s = 0; s < 2; s++) {
    nbl_session *ss = NULL;
    nbl_session_options opt = {.threads = 1 + s, .seed = 42};
    ck_assert_int_eq(nbl_session_create(o->m, &opt, &ss), NBL_OK);
    for (int r = 0; r < 2; r++) {
      const nbl_host_tensor *out = NULL;
      ck_assert_int_eq(nbl_session_run(ss, 0, NULL, &out), NBL_OK);
      runs[s][r] = malloc(out[0].nbytes);
      memcpy(runs[s][r], out[0].data, out[0].nbytes);
    }
    nbl_session_free(ss);
  }
  size_t nb = (size_t)n * sizeof(float);
  ck_assert_msg(!memcmp(runs[0][0], runs[1][0], nb) && !memcmp(runs[0][1], runs[1][1], nb),
                "sessions with seed 42 differ");
  ck_assert_msg(memcmp(runs[0][0], runs[0][1], nb), "the second run repeated the first");
  for (int s = 0; s < 2; s++)
    for (int r = 0; r < 2; r++) free(runs[s][r]);
  one_free(o);
}
END_TEST

/* ------------------------------------------------------------------ errors */

START_TEST(test_errors) {
  int64_t n = 4, d2[2] = {2, 2};
  float p[4] = {0.5f, 1.5f, 0.0f, 1.0f};
  one *o = op("RandomNormal", 1, 0);
  attr_shape(o, 1, &n);
  attr_i(o, "dtype", NBL_DT_INT32);
  run_fails(o, "RandomNormal", "dtype=6 (int32) is not supported");
  one_free(o);
  o = op("RandomUniform", 1, 0);
  run_fails(o, "RandomUniform", "'shape' (ints) is required");
  one_free(o);
  int64_t neg[2] = {2, -1};
  o = op("RandomUniform", 1, 0);
  attr_shape(o, 2, neg);
  run_fails(o, "RandomUniform", "dimension 1 is -1");
  one_free(o);
  o = op("RandomUniform", 1, 0);
  attr_shape(o, 1, &n);
  attr_f(o, "low", 2.0f);
  attr_f(o, "high", 1.0f);
  run_fails(o, "RandomUniform", "low <= high");
  one_free(o);
  /* float16 has no value in [1.0001, 1.0002) */
  o = op("RandomUniform", 1, 0);
  attr_shape(o, 1, &n);
  attr_i(o, "dtype", NBL_DT_FLOAT16);
  attr_f(o, "low", 1.0001f);
  attr_f(o, "high", 1.0002f);
  run_fails(o, "RandomUniform", "rounded out of [low, high) in float16");
  one_free(o);
  o = op("RandomNormal", 1, 0);
  attr_shape(o, 1, &n);
  attr_f(o, "scale", -1.0f);
  run_fails(o, "RandomNormal", "scale >= 0");
  one_free(o);
  int64_t xi[4] = {0};
  o = op("RandomUniformLike", 1, 1);
  one_in(o, 0, NBL_DT_INT64, 1, &n, xi);
  run_fails(o, "RandomUniformLike", "input 'x0' has type int64 and there is no dtype attribute");
  one_free(o);
  o = op("RandomNormalLike", 1, 1);
  one_in(o, 0, NBL_DT_FLOAT, 1, &n, p);
  attr_i(o, "dtype", NBL_DT_BFLOAT16);
  run_fails(o, "RandomNormalLike", "dtype=16 (bfloat16) is not supported");
  one_free(o);
  /* Bernoulli: a probability outside [0, 1], a non-float input, a bad dtype */
  o = op("Bernoulli", 15, 1);
  one_in(o, 0, NBL_DT_FLOAT, 1, &n, p);
  run_fails(o, "Bernoulli", "input 'x0': element 1 is 1.5, not a probability in [0, 1]");
  one_free(o);
  o = op("Bernoulli", 15, 1);
  one_in(o, 0, NBL_DT_INT64, 1, &n, xi);
  run_fails(o, "Bernoulli", "input 'x0' has type int64");
  one_free(o);
  float q[4] = {0.5f, 0.5f, 0.5f, 0.5f};
  o = op("Bernoulli", 15, 1);
  one_in(o, 0, NBL_DT_FLOAT, 1, &n, q);
  attr_i(o, "dtype", NBL_DT_STRING);
  run_fails(o, "Bernoulli", "dtype=8 (string) is not supported");
  one_free(o);
  /* Multinomial: rank 1, sample_size 0, a float dtype, a row without weight */
  o = op("Multinomial", 7, 1);
  one_in(o, 0, NBL_DT_FLOAT, 1, &n, q);
  run_fails(o, "Multinomial", "input 'x0' has rank 1; expected rank 2");
  one_free(o);
  o = op("Multinomial", 7, 1);
  one_in(o, 0, NBL_DT_FLOAT, 2, d2, q);
  attr_i(o, "sample_size", 0);
  run_fails(o, "Multinomial", "sample_size=0; must be at least 1");
  one_free(o);
  o = op("Multinomial", 7, 1);
  one_in(o, 0, NBL_DT_FLOAT, 2, d2, q);
  attr_i(o, "dtype", NBL_DT_FLOAT);
  run_fails(o, "Multinomial", "dtype=1 (float) is not supported");
  one_free(o);
  float r[4] = {0.0f, 1.0f, -INFINITY, NAN};
  o = op("Multinomial", 7, 1);
  one_in(o, 0, NBL_DT_FLOAT, 2, d2, r);
  run_fails(o, "Multinomial", "row 1 has no finite log-probability");
  one_free(o);
}
END_TEST

/* ------------------------------------------------------------------ shape rules */

/* The infer-shapes pass on a one-node graph whose output has no type; the
 * output's inferred type as "float[2,3]" ("?" unknown), or the error. */
static const char *infer(one *o, char *buf, size_t cap) {
  nbl_graph *g = G(o);
  for (int i = 0; i < o->n_in; i++) {
    nbl_id v = g->nodes[o->node].inputs[i];
    const nbl_host_tensor *t = &o->in[i];
    if (v != NBL_NONE && t->dtype != NBL_DT_UNDEFINED)
      nbl_type_set_tensor(o->m->arena, &g->values[v].type, t->dtype, t->rank, t->dims);
  }
  const nbl_pass_def *d = nbl_pass_find("infer-shapes");
  ck_assert_ptr_nonnull(d);
  char logbuf[2048];
  FILE *log = fmemopen(logbuf, sizeof logbuf, "w");
  nbl_pass_ctx ctx = {.model = o->m, .pass = d, .log = log};
  nbl_status st = d->run(&ctx);
  fclose(log);
  if (st != NBL_OK) {
    snprintf(buf, cap, "error: %s", nbl_last_error());
    return buf;
  }
  const nbl_type *t = &g->values[g->nodes[o->node].outputs[0]].type;
  if (t->kind != NBL_TYPE_TENSOR) return "none";
  size_t k = (size_t)snprintf(buf, cap, "%s[", t->elem ? nbl_dtype_name(t->elem) : "?");
  for (int i = 0; i < t->rank; i++) {
    if (t->dims[i].param) k += (size_t)snprintf(buf + k, cap - k, "%s%s", i ? "," : "", t->dims[i].param);
    else if (t->dims[i].value >= 0)
      k += (size_t)snprintf(buf + k, cap - k, "%s%lld", i ? "," : "", (long long)t->dims[i].value);
    else k += (size_t)snprintf(buf + k, cap - k, "%s?", i ? "," : "");
  }
  snprintf(buf + k, cap - k, "]");
  return buf;
}

START_TEST(test_shape_rules) {
  char b[1024];
  int64_t s23[2] = {2, 3}, d45[2] = {4, 5}, d3 = 3, d2[2] = {6, 10};
  one *o = op("RandomNormal", 1, 0);
  attr_shape(o, 2, s23);
  attr_i(o, "dtype", NBL_DT_DOUBLE);
  ck_assert_str_eq(infer(o, b, sizeof b), "double[2,3]");
  one_free(o);
  o = op("RandomUniform", 1, 0);
  attr_shape(o, 2, s23);
  ck_assert_str_eq(infer(o, b, sizeof b), "float[2,3]");
  one_free(o);
  o = op("RandomUniformLike", 1, 1);
  one_in(o, 0, NBL_DT_INT32, 2, d45, NULL);
  attr_i(o, "dtype", NBL_DT_FLOAT16);
  ck_assert_str_eq(infer(o, b, sizeof b), "float16[4,5]");
  one_free(o);
  o = op("RandomNormalLike", 1, 1);
  one_in(o, 0, NBL_DT_DOUBLE, 2, d45, NULL);
  ck_assert_str_eq(infer(o, b, sizeof b), "double[4,5]");
  one_free(o);
  o = op("Bernoulli", 15, 1);
  one_in(o, 0, NBL_DT_FLOAT, 1, &d3, NULL);
  ck_assert_str_eq(infer(o, b, sizeof b), "float[3]");
  one_free(o);
  o = op("Bernoulli", 15, 1);
  one_in(o, 0, NBL_DT_FLOAT, 1, &d3, NULL);
  attr_i(o, "dtype", NBL_DT_INT64);
  ck_assert_str_eq(infer(o, b, sizeof b), "int64[3]");
  one_free(o);
  o = op("Multinomial", 7, 1);
  one_in(o, 0, NBL_DT_FLOAT, 2, d2, NULL);
  attr_i(o, "sample_size", 7);
  ck_assert_str_eq(infer(o, b, sizeof b), "int32[6,7]");
  one_free(o);
  o = op("Multinomial", 7, 1);
  one_in(o, 0, NBL_DT_FLOAT, 2, d2, NULL);
  attr_i(o, "dtype", NBL_DT_INT64);
  ck_assert_str_eq(infer(o, b, sizeof b), "int64[6,1]");
  one_free(o);
  o = op("Multinomial", 7, 1);
  one_in(o, 0, NBL_DT_FLOAT, 1, &d3, NULL);
  ck_assert_msg(strstr(infer(o, b, sizeof b), "node 'n0' (Multinomial): input has rank 1"), "%s", b);
  one_free(o);
  o = op("Multinomial", 7, 1);
  one_in(o, 0, NBL_DT_FLOAT, 2, d2, NULL);
  attr_i(o, "sample_size", 0);
  ck_assert_msg(strstr(infer(o, b, sizeof b), "sample_size=0"), "%s", b);
  one_free(o);
}
END_TEST

/* fold-constants never evaluates a random node ahead of time, seeded or not */
START_TEST(test_not_folded) {
  int64_t n = 3;
  one *o = op("RandomUniform", 1, 0);
  attr_shape(o, 1, &n);
  attr_f(o, "seed", 1.0f);
  const nbl_pass_def *d = nbl_pass_find("fold-constants");
  ck_assert_ptr_nonnull(d);
  char logbuf[2048];
  FILE *log = fmemopen(logbuf, sizeof logbuf, "w");
  nbl_pass_ctx ctx = {.model = o->m, .pass = d, .log = log};
  ck_assert_int_eq(d->run(&ctx), NBL_OK);
  fclose(log);
  ck_assert(!G(o)->nodes[o->node].dead);
  ck_assert_ptr_null(G(o)->values[G(o)->nodes[o->node].outputs[0]].init);
  one_free(o);
}
END_TEST

int main(void) {
  Suite *s = suite_create("ops_random");
  TCase *tc = tcase_create("random");
  tcase_set_timeout(tc, 300);
  tcase_add_test(tc, test_uniform_stats);
  tcase_add_test(tc, test_uniform_double);
  tcase_add_test(tc, test_uniform_float16);
  tcase_add_test(tc, test_uniform_edges);
  tcase_add_test(tc, test_normal_stats);
  tcase_add_test(tc, test_normal_like);
  tcase_add_test(tc, test_uniform_like);
  tcase_add_test(tc, test_bernoulli);
  tcase_add_test(tc, test_bernoulli_types);
  tcase_add_test(tc, test_multinomial);
  tcase_add_test(tc, test_seed_reproducible);
  tcase_add_test(tc, test_unseeded);
  tcase_add_test(tc, test_errors);
  tcase_add_test(tc, test_shape_rules);
  tcase_add_test(tc, test_not_folded);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
