/* test_ops_transformer_fast.c - the float32 fast paths of the transformer
 * ops against their reference kernels: LayerNormalization
 * (k_layernorm_fast, runtime/ops/nn_norm.c), Softmax and LogSoftmax
 * (k_softmax_fast / k_logsoftmax_fast, runtime/ops/reduce.c, rows by
 * nbl_softmax_f32 of runtime/kernels/unary_f32.c), and Dropout in inference
 * mode (runtime/ops/control.c: the input as it is, the mask all true).
 *
 * The bound: every output element of the fast path within one ulp of the
 * reference's (NaN exactly where the reference has NaN, infinities equal).
 * Both compute in double and round once to float; the fast path sums in
 * vector lanes (LayerNormalization's mean and variance, Softmax's sum of
 * exponentials) and Softmax's exp is a polynomial good to 2e-10, so a
 * result may land on the neighbouring float, never further. Rows of 1, 7,
 * 16, 17, 384 and 1000 elements (Softmax also 1025 and 2000), enough rows that 2 threads split them, at
 * 1 and 2 threads; axis variants (negative, a row over two axes, an axis
 * the fast path leaves to the reference), NaN and infinities, magnitudes up
 * to 3e38; one hand-computed case per op. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ir/ir.h"
#include "nibble.h"
#include "one_node.h"
#include "ck_elem.h"

enum { PLAIN, SPECIAL, HUGE_VALS };

static uint32_t lcg(uint32_t *s) {
  *s = *s * 1664525u + 1013904223u;
  return *s >> 8;
}

/* values in [-5, 5) (PLAIN), some NaN and +-Inf in a few rows (SPECIAL), or
 * magnitudes up to 3e38 (HUGE_VALS); `row` elements per row */
static void fill(float *x, int64_t n, int64_t row, int data, uint32_t seed) {
  for (int64_t i = 0; i < n; i++) {
    uint32_t r = lcg(&seed);
    x[i] = (float)(r % 100003) / 10000.0f - 5.0f;
    if (data == HUGE_VALS) x[i] *= (r % 3 == 0 ? 6e37f : r % 3 == 1 ? 1e4f : 1.0f);
  }
  if (data == SPECIAL) {
    int64_t rows = n / row;
    for (int64_t k = 0; k < rows; k += 5) {
      float *p = x + k * row;
      int64_t at = (k * 7) % row;
      switch ((k / 5) % 5) {
      case 0: p[at] = NAN; break;
      case 1: p[at] = INFINITY; break;
      case 2: p[at] = -INFINITY; break;
      case 3: for (int64_t i = 0; i < row; i++) p[i] = -INFINITY; break;
      default: break;
      }
    }
  }
}

/* ulp distance of two floats (+0 and -0 at 0 apart); NaN handled by the caller */
static int64_t ulps(float a, float b) {
  int32_t ia, ib;
  memcpy(&ia, &a, 4);
  memcpy(&ib, &b, 4);
  int64_t la = ia < 0 ? -(int64_t)(ia & 0x7fffffff) : ia, lb = ib < 0 ? -(int64_t)(ib & 0x7fffffff) : ib;
  return la > lb ? la - lb : lb - la;
}

static int64_t n_diff_total, n_elems_total; /* elements off by one ulp, of all compared */

/* Runs o on the fast path and on the reference at `threads` threads and
 * checks every output within one ulp (NaN where the reference has NaN). */
static void check_vs_ref(one *o, int threads, const char *what) {
  o->threads = threads;
  nbl_status st = one_run(o, 0);
  ck_assert_msg(st == NBL_OK, "%s: fast: %s", what, nbl_last_error());
  int nout = G(o)->n_outputs;
  nbl_host_tensor f[ONE_MAX_OUT];
  for (int k = 0; k < nout; k++) {
    f[k] = o->out[k];
    f[k].data = malloc(f[k].nbytes + 1);
    memcpy(f[k].data, o->out[k].data, f[k].nbytes);
  }
  st = one_run(o, 1);
  ck_assert_msg(st == NBL_OK, "%s: reference: %s", what, nbl_last_error());
  for (int k = 0; k < nout; k++) {
    const nbl_host_tensor *r = &o->out[k];
    ck_assert_msg(r->dtype == f[k].dtype && r->rank == f[k].rank && r->nbytes == f[k].nbytes,
                  "%s: output %d: type or shape differ", what, k);
    for (int d = 0; d < r->rank; d++) ck_assert_int_eq(r->dims[d], f[k].dims[d]);
    if (r->dtype != NBL_DT_FLOAT) {
      ck_assert_msg(!memcmp(r->data, f[k].data, r->nbytes), "%s: output %d differs", what, k);
      continue;
    }
    const float *a = f[k].data, *b = r->data;
    int64_t n = (int64_t)(r->nbytes / 4);
    for (int64_t i = 0; i < n; i++) {
      if (isnan(b[i]) || isnan(a[i])) {
        ck_elem_msg(isnan(b[i]) && isnan(a[i]), "%s: output %d [%lld]: fast %g, reference %g",
                    what, k, (long long)i, a[i], b[i]);
        continue;
      }
      int64_t u = ulps(a[i], b[i]);
      ck_elem_msg(u <= 1, "%s threads %d: output %d [%lld]: fast %.9g, reference %.9g (%lld ulps)",
                  what, threads, k, (long long)i, a[i], b[i], (long long)u);
      n_diff_total += u != 0;
    }
    n_elems_total += n;
    free(f[k].data);
  }
}

/* ------------------------------------------------------------------ LayerNormalization */

static const int64_t lens[] = {1, 7, 16, 17, 384, 1000};

/* X [rows, len] as [2, rows/2, len] (rows even) normalized over the last axis
 * (axis given as -1 or 2), or as [2, rows/2, a, len/a] over the last two
 * (axis 2 or -2); Scale, B of the row's shape (lead1: [1, len] when a is 1,
 * else [len / a], broadcast over the first normalized axis, which the fast
 * path leaves to the reference), B omitted when !bias; Mean and InvStdDev
 * requested when stats. */
static void ln_case(int64_t len, int two_axes, int neg, int bias, int stats, int lead1, int data,
                    int threads) {
  int64_t rows = 2 * (1 + 25000 / len);
  int64_t a = two_axes && len % 2 == 0 ? 2 : 1;
  int rank = two_axes ? 4 : 3;
  int64_t xd[4] = {2, rows / 2, two_axes ? a : len, len / a};
  int nr = two_axes ? 2 : 1;
  int64_t sd[2] = {len, 0};
  int srank = 1;
  if (two_axes && lead1 && a == 1) sd[0] = 1, sd[1] = len, srank = 2;
  else if (two_axes && lead1) sd[0] = len / a; /* broadcast over the first: the reference's */
  else if (two_axes) sd[0] = a, sd[1] = len / a, srank = 2;
  int axis = rank - nr;
  float *x = malloc((size_t)(rows * len) * 4), *s = malloc((size_t)len * 4), *b = malloc((size_t)len * 4);
  fill(x, rows * len, len, data, (uint32_t)(len * 31 + data));
  fill(s, len, len, PLAIN, 7u + (uint32_t)len);
  fill(b, len, len, PLAIN, 9u + (uint32_t)len);
  one *o = one_new("LayerNormalization", 17, bias ? 3 : 2, 3);
  nbl_node_set_attr_int(G(o), o->node, "axis", neg ? axis - rank : axis);
  one_in(o, 0, NBL_DT_FLOAT, rank, xd, x);
  one_in(o, 1, NBL_DT_FLOAT, srank, sd, s);
  if (bias) one_in(o, 2, NBL_DT_FLOAT, srank, sd, b);
  if (!stats) {
    one_skip_out(o, 2);
    one_skip_out(o, 1);
  }
  char what[160];
  snprintf(what, sizeof what, "LayerNormalization len %lld axis %d%s bias %d stats %d lead1 %d data %d",
           (long long)len, neg ? axis - rank : axis, two_axes ? " (two axes)" : "", bias, stats, lead1, data);
  check_vs_ref(o, threads, what);
  one_free(o);
  free(x);
  free(s);
  free(b);
}

START_TEST(test_layernorm_vs_ref) {
  for (int t = 1; t <= 2; t++)
    for (size_t l = 0; l < sizeof lens / sizeof lens[0]; l++) {
      ln_case(lens[l], 0, 0, 1, 0, 0, PLAIN, t);
      ln_case(lens[l], 0, 1, 0, 1, 0, PLAIN, t);
      ln_case(lens[l], 1, 1, 1, 1, 1, PLAIN, t);
      ln_case(lens[l], 1, 0, 1, 0, 0, SPECIAL, t);
      ln_case(lens[l], 0, 1, 1, 1, 0, SPECIAL, t);
      ln_case(lens[l], 0, 0, 1, 0, 0, HUGE_VALS, t);
    }
}
END_TEST

/* Scale of shape [len] over a row of [3, len]: broadcast, left to the
 * reference (still compared), and a float64 X (also the reference). */
START_TEST(test_layernorm_fallbacks) {
  float x[2 * 3 * 5], s[5], b[1] = {0.25f};
  fill(x, 30, 15, PLAIN, 5);
  fill(s, 5, 5, PLAIN, 6);
  int64_t xd[] = {2, 3, 5}, sd[] = {5}, bd[] = {1};
  one *o = one_new("LayerNormalization", 17, 3, 3);
  nbl_node_set_attr_int(G(o), o->node, "axis", 1);
  one_in(o, 0, NBL_DT_FLOAT, 3, xd, x);
  one_in(o, 1, NBL_DT_FLOAT, 1, sd, s);
  one_in(o, 2, NBL_DT_FLOAT, 1, bd, b);
  check_vs_ref(o, 2, "LayerNormalization broadcast scale");
  one_free(o);
  /* a bad axis names the node, on both paths */
  o = one_new("LayerNormalization", 17, 2, 1);
  nbl_node_set_attr_int(G(o), o->node, "axis", 3);
  one_in(o, 0, NBL_DT_FLOAT, 3, xd, x);
  one_in(o, 1, NBL_DT_FLOAT, 1, sd, s);
  for (int ref = 0; ref <= 1; ref++) {
    ck_assert_int_ne(one_run(o, ref), NBL_OK);
    ck_assert_ptr_nonnull(strstr(nbl_last_error(), "n0"));
  }
  one_free(o);
  /* Scale that does not broadcast to the row */
  int64_t sd4[] = {4};
  o = one_new("LayerNormalization", 17, 2, 1);
  one_in(o, 0, NBL_DT_FLOAT, 3, xd, x);
  one_in(o, 1, NBL_DT_FLOAT, 1, sd4, s);
  for (int ref = 0; ref <= 1; ref++) {
    ck_assert_int_ne(one_run(o, ref), NBL_OK);
    ck_assert_ptr_nonnull(strstr(nbl_last_error(), "n0"));
  }
  one_free(o);
}
END_TEST

/* [1, 2, 3, 4], epsilon 0, scale 2, bias 1: mean 2.5, variance 1.25,
 * y = (x - 2.5) / sqrt(1.25) * 2 + 1; Mean 2.5, InvStdDev 1 / sqrt(1.25). */
START_TEST(test_layernorm_by_hand) {
  float x[8] = {1, 2, 3, 4, 4, 3, 2, 1}, s[4] = {2, 2, 2, 2}, b[4] = {1, 1, 1, 1};
  int64_t xd[] = {2, 4}, sd[] = {4};
  one *o = one_new("LayerNormalization", 17, 3, 3);
  nbl_node_set_attr_float(G(o), o->node, "epsilon", 0.0f);
  one_in(o, 0, NBL_DT_FLOAT, 2, xd, x);
  one_in(o, 1, NBL_DT_FLOAT, 1, sd, s);
  one_in(o, 2, NBL_DT_FLOAT, 1, sd, b);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  const double want[4] = {-1.683281573, 0.105572809, 1.894427191, 3.683281573};
  for (int i = 0; i < 4; i++) {
    ck_assert_double_eq_tol(outf(o, 0)[i], want[i], 1e-6);
    ck_assert_double_eq_tol(outf(o, 0)[7 - i], want[i], 1e-6);
  }
  for (int r = 0; r < 2; r++) {
    ck_assert_double_eq_tol(outf(o, 1)[r], 2.5, 1e-7);
    ck_assert_double_eq_tol(outf(o, 2)[r], 0.894427191, 1e-7);
  }
  ck_assert_int_eq(o->out[1].rank, 2);
  ck_assert_int_eq(o->out[1].dims[0], 2);
  ck_assert_int_eq(o->out[1].dims[1], 1);
  one_free(o);
}
END_TEST

/* ------------------------------------------------------------------ Softmax, LogSoftmax */

/* X [rows, len] as [rows/2, 2, len]; axis -1 or 2 (the fast rows), or 1 (the
 * reference's strided path); opset 11: the coerced 2-D form at axis 1 (one
 * row of 2 * len per outer index) */
static void sm_case(const char *op, int opset, int64_t len, int axis, int data, int threads) {
  int64_t rows = 2 * (1 + 20000 / len);
  int64_t xd[3] = {rows / 2, 2, len};
  float *x = malloc((size_t)(rows * len) * 4);
  fill(x, rows * len, len, data, (uint32_t)(len * 13 + data + (uint32_t)axis));
  one *o = one_new(op, opset, 1, 1);
  nbl_node_set_attr_int(G(o), o->node, "axis", axis);
  one_in(o, 0, NBL_DT_FLOAT, 3, xd, x);
  char what[120];
  snprintf(what, sizeof what, "%s opset %d len %lld axis %d data %d", op, opset, (long long)len, axis, data);
  check_vs_ref(o, threads, what);
  one_free(o);
  free(x);
}

START_TEST(test_softmax_vs_ref) {
  const char *ops[] = {"Softmax", "LogSoftmax"};
  for (int t = 1; t <= 2; t++)
    for (int k = 0; k < 2; k++)
      for (size_t l = 0; l < sizeof lens / sizeof lens[0]; l++) {
        sm_case(ops[k], 13, lens[l], -1, PLAIN, t);
        sm_case(ops[k], 13, lens[l], 2, SPECIAL, t);
        sm_case(ops[k], 13, lens[l], -1, HUGE_VALS, t);
        sm_case(ops[k], 13, lens[l], 1, PLAIN, t);
        sm_case(ops[k], 13, lens[l], -2, SPECIAL, t);
        sm_case(ops[k], 11, lens[l], 1, PLAIN, t);
        sm_case(ops[k], 11, lens[l], 1, SPECIAL, t);
      }
  /* rows longer than the kernel keeps (UF_SM_KEEP, 1024): exp computed again */
  for (int t = 1; t <= 2; t++)
    for (int k = 0; k < 2; k++) {
      sm_case(ops[k], 13, 2000, -1, PLAIN, t);
      sm_case(ops[k], 13, 1025, -1, SPECIAL, t);
    }
}
END_TEST

/* [1, 2, 3] and [-1000, 0, 1000] */
START_TEST(test_softmax_by_hand) {
  float x[6] = {1, 2, 3, -1000, 0, 1000};
  int64_t xd[] = {2, 3};
  one *o = one_new("Softmax", 13, 1, 1);
  one_in(o, 0, NBL_DT_FLOAT, 2, xd, x);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  const double want[6] = {0.0900305732, 0.2447284711, 0.6652409558, 0, 0, 1};
  for (int i = 0; i < 6; i++) ck_assert_double_eq_tol(outf(o, 0)[i], want[i], 1e-7);
  one_free(o);
  o = one_new("LogSoftmax", 13, 1, 1);
  one_in(o, 0, NBL_DT_FLOAT, 2, xd, x);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  const double wl[6] = {-2.4076059644, -1.4076059644, -0.4076059644, -2000, -1000, 0};
  for (int i = 0; i < 6; i++) ck_assert_double_eq_tol(outf(o, 0)[i], wl[i], 1e-6);
  one_free(o);
}
END_TEST

/* ------------------------------------------------------------------ Dropout */

/* inference: no training_mode, or a false one, any ratio: Y = X bit for bit
 * (NaN payloads, -0 included), the mask all true; opset 7 and 10 too. */
START_TEST(test_dropout_inference) {
  int64_t xd[] = {3, 1000};
  float *x = malloc(3000 * 4);
  fill(x, 3000, 1000, SPECIAL, 3);
  x[5] = -0.0f;
  float ratio = 0.3f;
  uint8_t f = 0;
  int64_t d0[1] = {0};
  const int opsets[] = {7, 10, 12, 13};
  for (size_t k = 0; k < sizeof opsets / sizeof opsets[0]; k++)
    for (int tm = 0; tm < 2; tm++) {
      int op = opsets[k];
      if (op < 12 && tm) continue;
      one *o = one_new("Dropout", op, op >= 12 ? (tm ? 3 : 2) : 1, 2);
      if (op < 12) nbl_node_set_attr_float(G(o), o->node, "ratio", ratio);
      one_in(o, 0, NBL_DT_FLOAT, 2, xd, x);
      if (op >= 12) one_in(o, 1, NBL_DT_FLOAT, 0, d0, &ratio);
      if (tm) one_in(o, 2, NBL_DT_BOOL, 0, d0, &f);
      for (int ref = 0; ref <= 1; ref++) {
        ck_assert_msg(one_run(o, ref) == NBL_OK, "Dropout opset %d: %s", op, nbl_last_error());
        ck_assert_int_eq(o->out[0].nbytes, 3000 * 4);
        ck_assert(!memcmp(o->out[0].data, x, 3000 * 4));
        nbl_dtype mdt = op >= 10 ? NBL_DT_BOOL : NBL_DT_FLOAT;
        ck_assert_int_eq(o->out[1].dtype, mdt);
        ck_assert_int_eq(o->out[1].rank, 2);
        for (int64_t i = 0; i < 3000; i++)
          if (mdt == NBL_DT_BOOL) ck_elem_int_eq(((const uint8_t *)o->out[1].data)[i], 1);
          else ck_elem(((const float *)o->out[1].data)[i] == 1.0f);
      }
      one_free(o);
    }
  /* training mode true: unchanged (kept elements scaled by 1 / (1 - ratio),
   * the others 0, the mask saying which) */
  uint8_t t = 1;
  one *o = one_new("Dropout", 13, 3, 2);
  fill(x, 3000, 1000, PLAIN, 4);
  one_in(o, 0, NBL_DT_FLOAT, 2, xd, x);
  one_in(o, 1, NBL_DT_FLOAT, 0, d0, &ratio);
  one_in(o, 2, NBL_DT_BOOL, 0, d0, &t);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  int64_t kept = 0;
  for (int64_t i = 0; i < 3000; i++) {
    uint8_t m = ((const uint8_t *)o->out[1].data)[i];
    float y = outf(o, 0)[i];
    kept += m;
    ck_assert(y == (m ? (float)(x[i] * (1.0 / (1.0 - (double)ratio))) : 0.0f));
  }
  ck_assert(kept > 1800 && kept < 2400);
  one_free(o);
  free(x);
}
END_TEST

/* The fast paths agree with the reference to the bit in nearly every
 * element: print the share that differs by one ulp. */
START_TEST(test_report) {
  fprintf(stderr, "transformer_fast: %lld of %lld compared elements one ulp apart\n",
          (long long)n_diff_total, (long long)n_elems_total);
}
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("transformer_fast");
  TCase *tc = tcase_create("core");
  tcase_set_timeout(tc, 600);
  tcase_add_test(tc, test_layernorm_by_hand);
  tcase_add_test(tc, test_layernorm_vs_ref);
  tcase_add_test(tc, test_layernorm_fallbacks);
  tcase_add_test(tc, test_softmax_by_hand);
  tcase_add_test(tc, test_softmax_vs_ref);
  tcase_add_test(tc, test_dropout_inference);
  tcase_add_test(tc, test_report);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(suite());
  srunner_set_fork_status(sr, CK_NOFORK);
  srunner_run_all(sr, CK_NORMAL);
  int nf = srunner_ntests_failed(sr);
  srunner_free(sr);
  return nf ? 1 : 0;
}
