/* test_exchange.c - the data-parallel exchange (runtime/train/exchange.c) in
 * one process (the one-rank transport of dist_none.c), on the hand-built MLP
 * training model of tests/train/mlp_train.h: FP32 exchange on one rank
 * changes nothing (bit for bit, running statistics included); the 4-bit
 * exchange puts every gradient element on the radix-4 grid of its tensor (or
 * bucket) at one of the two levels around it, with the probability of
 * stochastic rounding; error feedback makes the mean of many exchanged
 * copies of one gradient converge to it; payload bytes; shards; errors.
 * The multi-rank behaviour is tests/train/check_mpi.py (suite 'mpi'). */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/train/train.h"
#include "train/mlp_train.h"

static mlp_cfg cfg_default(void) {
  return (mlp_cfg){.dt = NBL_DT_FLOAT, .c = 2, .h = 6, .w = 5, .hidden = 9, .classes = 4,
                   .opt = "momentum", .momentum = 0.9f, .wd = 0.0f, .bn = 1, .seed = 11};
}

typedef struct batch {
  nbl_host_tensor t[2];
  float x[64 * 60];
  int64_t y[64];
} batch;

static void make_batch(const mlp_cfg *c, int n, unsigned long long seed, batch *b) {
  int64_t D = (int64_t)c->c * c->h * c->w;
  ck_assert_int_le(n * D, 64 * 60);
  for (int64_t i = 0; i < n * D; i++) b->x[i] = (float)mlp_uniform(&seed, 1.0);
  for (int i = 0; i < n; i++) b->y[i] = (int64_t)(mlp_rng(&seed) % (unsigned long long)c->classes);
  b->t[0] = (nbl_host_tensor){.name = "input", .dtype = NBL_DT_FLOAT, .rank = 4,
                              .dims = {n, c->c, c->h, c->w}, .data = b->x, .nbytes = 4 * (size_t)(n * D)};
  b->t[1] = (nbl_host_tensor){.name = "label", .dtype = NBL_DT_INT64, .rank = 1, .dims = {n},
                              .data = b->y, .nbytes = 8 * (size_t)n};
}

static nbl_train_session *session(const mlp_cfg *c) {
  nbl_model *m = mlp_train_model(c);
  nbl_train_session *s = NULL;
  nbl_train_options o = {.threads = 1};
  ck_assert_msg(nbl_train_session_create(m, &o, &s) == NBL_OK, "%s", nbl_last_error());
  nbl_model_free(m);
  return s;
}

static void step(nbl_train_session *s, const batch *b) {
  ck_assert_int_eq(nbl_train_reset_grad(s), NBL_OK);
  ck_assert_msg(nbl_train_step(s, 2, b->t, NULL) == NBL_OK, "%s", nbl_last_error());
  ck_assert_msg(nbl_optimizer_step(s) == NBL_OK, "%s", nbl_last_error());
}

START_TEST(test_fp32_one_rank_is_plain_training) {
  mlp_cfg c = cfg_default();
  nbl_train_session *a = session(&c), *b = session(&c);
  nbl_train_dist_options o = {.exchange = NBL_GRAD_EXCHANGE_FP32, .bucket_bytes = 64};
  ck_assert_msg(nbl_train_dist_init(b, &o) == NBL_OK, "%s", nbl_last_error());
  ck_assert_int_eq(nbl_train_dist_rank(b), 0);
  ck_assert_int_eq(nbl_train_dist_size(b), 1);
  for (int i = 0; i < 6; i++) {
    batch x;
    make_batch(&c, 8, 100 + (unsigned long long)i, &x);
    int64_t first, count;
    nbl_train_dist_shard(b, 8, &first, &count);
    ck_assert_int_eq(first, 0);
    ck_assert_int_eq(count, 8);
    step(a, &x);
    step(b, &x);
  }
  for (int i = 0; i < a->n_slots; i++) /* parameters, momentum, BatchNorm running statistics */
    ck_assert_msg(!memcmp(a->slots[i].t.data, b->slots[i].t.data, a->slots[i].t.nbytes), "%s differs",
                  a->slots[i].name);
  nbl_train_dist_stats st;
  nbl_train_dist_get_stats(b, &st);
  int64_t D = 2 * 6 * 5, H = 9, K = 4;
  ck_assert_int_eq(st.grad_elements, H * D + H + K * H + K);
  ck_assert_int_eq(st.payload_bytes, 4 * (H * D + H + K * H + K) + 4 * 2 * 2); /* + bn mean, var */
  ck_assert_int_gt(st.n_buckets, 1);  /* 64-byte buckets: one per tensor */
  ck_assert(st.sent_bytes == 0);      /* one rank sends nothing */
  ck_assert_int_eq(st.steps, 6);
  ck_assert_str_eq(st.transport, "none");
  nbl_train_session_free(a);
  nbl_train_session_free(b);
}
END_TEST

/* Gradient element x was exchanged as q on a grid with top level `top`:
 * q must be 0 or +-top*4^-k (k = 0..6), with x's sign, and one of the two
 * levels around |x| (0 and the smallest level below the grid). Returns 1 when
 * q is the upper one. */
static int check_on_grid(float x, float q, float top, const char *what) {
  double a = fabs((double)x), lo = 0, hi = top;
  for (int k = 0; k < 7; k++) {
    double lev = ldexp((double)top, -2 * k);
    if (lev <= a) {
      lo = lev;
      break;
    }
    hi = lev;
  }
  if (a >= top) lo = hi = top;
  double aq = fabs((double)q);
  ck_assert_msg(q == 0 || (q < 0) == (x < 0), "%s: %g -> %g changes sign", what, x, q);
  ck_assert_msg(aq == lo || aq == hi, "%s: %.9g -> %.9g, not %.9g or %.9g (top %g)", what, x, q, lo, hi, top);
  return aq == hi && hi != lo;
}

static void log4_grid_case(int per_bucket) {
  mlp_cfg c = cfg_default();
  c.opt = "sgd";
  nbl_train_session *s = session(&c);
  nbl_train_dist_options o = {.exchange = NBL_GRAD_EXCHANGE_LOG4, .seed = 5,
                              .scale_per_bucket = per_bucket};
  ck_assert_msg(nbl_train_dist_init(s, &o) == NBL_OK, "%s", nbl_last_error());
  batch x;
  make_batch(&c, 16, 7, &x);
  ck_assert_int_eq(nbl_train_reset_grad(s), NBL_OK);
  ck_assert_msg(nbl_train_step(s, 2, x.t, NULL) == NBL_OK, "%s", nbl_last_error());
  int n = nbl_train_grad_count(s);
  float *g[8];
  int64_t len[8];
  float top_all = 0;
  for (int i = 0; i < n; i++) {
    nbl_host_tensor v;
    ck_assert_int_eq(nbl_train_grad(s, i, &v), NBL_OK);
    len[i] = (int64_t)(v.nbytes / 4);
    g[i] = malloc(v.nbytes);
    memcpy(g[i], v.data, v.nbytes);
    for (int64_t e = 0; e < len[i]; e++) top_all = fmaxf(top_all, fabsf(g[i][e]));
  }
  ck_assert_msg(nbl_optimizer_step(s) == NBL_OK, "%s", nbl_last_error());
  int64_t ups = 0, total = 0, bytes = 0;
  double expect_ups = 0;
  for (int i = 0; i < n; i++) {
    nbl_host_tensor v;
    ck_assert_int_eq(nbl_train_grad(s, i, &v), NBL_OK); /* now the exchanged gradient */
    const float *q = v.data;
    float top = 0;
    for (int64_t e = 0; e < len[i]; e++) top = fmaxf(top, fabsf(g[i][e]));
    if (per_bucket) top = top_all; /* the default bucket holds the whole (small) model */
    for (int64_t e = 0; e < len[i]; e++) {
      ups += check_on_grid(g[i][e], q[e], top, v.name);
      double a = fabs((double)g[i][e]), lo = 0, hi = top;
      for (int k = 0; k < 7 && ldexp((double)top, -2 * k) > a; k++) hi = ldexp((double)top, -2 * k);
      for (int k = 0; k < 7; k++)
        if (ldexp((double)top, -2 * k) <= a) {
          lo = ldexp((double)top, -2 * k);
          break;
        }
      if (a < top && hi > lo) expect_ups += (a - lo) / (hi - lo);
    }
    total += len[i];
    bytes += (len[i] + 1) / 2;
    free(g[i]);
  }
  /* stochastic rounding: the upward roundings follow their probabilities
   * (a sum of independent Bernoullis: within 5 standard deviations) */
  ck_assert_msg(fabs((double)ups - expect_ups) <= 5 * sqrt(expect_ups + 1), "%lld up, expected %.1f",
                (long long)ups, expect_ups);
  nbl_train_dist_stats st;
  nbl_train_dist_get_stats(s, &st);
  ck_assert_int_eq(st.grad_elements, total);
  ck_assert_int_eq(st.n_buckets, 1);
  /* one bucket: scales (one per tensor, or one) + codes, two per byte; + FP32 bn statistics */
  ck_assert_int_eq(st.payload_bytes, 4 * (per_bucket ? 1 : n) + (total + 1) / 2 + 4 * 2 * 2);
  (void)bytes;
  nbl_train_session_free(s);
}

START_TEST(test_log4_on_the_grid_per_tensor) { log4_grid_case(0); }
END_TEST

START_TEST(test_log4_on_the_grid_per_bucket) { log4_grid_case(1); }
END_TEST

/* With lr = 0 the gradient is the same every step; the mean of T exchanged
 * copies must approach it: with error feedback the residual is carried, so
 * sum(q) = T g - e_T with |e_T| below a few top levels; without it only the
 * stochastic rounding averages out. */
static double mean_error(int feedback, int T, double *gmax) {
  mlp_cfg c = cfg_default();
  c.opt = "sgd";
  c.bn = 0;
  nbl_train_session *s = session(&c);
  nbl_train_set_lr(s, 0.0);
  nbl_train_dist_options o = {.exchange = NBL_GRAD_EXCHANGE_LOG4, .seed = 3, .no_error_feedback = !feedback};
  ck_assert_msg(nbl_train_dist_init(s, &o) == NBL_OK, "%s", nbl_last_error());
  batch x;
  make_batch(&c, 16, 9, &x);
  int n = nbl_train_grad_count(s);
  double *sum[8] = {0}, *g[8] = {0};
  int64_t len[8];
  *gmax = 0;
  for (int t = 0; t < T; t++) {
    ck_assert_int_eq(nbl_train_reset_grad(s), NBL_OK);
    ck_assert_msg(nbl_train_step(s, 2, x.t, NULL) == NBL_OK, "%s", nbl_last_error());
    for (int i = 0; t == 0 && i < n; i++) {
      nbl_host_tensor v;
      nbl_train_grad(s, i, &v);
      len[i] = (int64_t)(v.nbytes / 4);
      g[i] = calloc((size_t)len[i], sizeof(double));
      sum[i] = calloc((size_t)len[i], sizeof(double));
      for (int64_t e = 0; e < len[i]; e++) {
        g[i][e] = ((const float *)v.data)[e];
        *gmax = fmax(*gmax, fabs(g[i][e]));
      }
    }
    ck_assert_msg(nbl_optimizer_step(s) == NBL_OK, "%s", nbl_last_error());
    for (int i = 0; i < n; i++) {
      nbl_host_tensor v;
      nbl_train_grad(s, i, &v);
      for (int64_t e = 0; e < len[i]; e++) sum[i][e] += ((const float *)v.data)[e];
    }
  }
  double worst = 0;
  for (int i = 0; i < n; i++) {
    for (int64_t e = 0; e < len[i]; e++) worst = fmax(worst, fabs(sum[i][e] / T - g[i][e]));
    free(g[i]);
    free(sum[i]);
  }
  nbl_train_session_free(s);
  return worst;
}

START_TEST(test_log4_error_feedback) {
  const int T = 200;
  double gmax, gmax2;
  double with = mean_error(1, T, &gmax), without = mean_error(0, T, &gmax2);
  ck_assert(gmax == gmax2);
  /* with feedback: the residual stays below the top level of x = g + e <= 4 max|g| */
  ck_assert_msg(with <= 4 * gmax / T, "error feedback: worst |mean - g| %g > %g", with, 4 * gmax / T);
  ck_assert_msg(with < without, "error feedback %g not better than without %g", with, without);
  printf("log4 exchange, mean of %d copies: worst |mean - g| / max|g| = %.2e with error feedback, %.2e without\n",
         T, with / gmax, without / gmax);
}
END_TEST

START_TEST(test_errors_and_launcher) {
  mlp_cfg c = cfg_default();
  nbl_train_session *s = session(&c);
  nbl_train_dist_options o = {.exchange = (nbl_grad_exchange)7};
  ck_assert_int_eq(nbl_train_dist_init(s, &o), NBL_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(nbl_train_dist_init(s, NULL), NBL_OK);
  ck_assert_int_eq(nbl_train_dist_init(s, NULL), NBL_ERR_INVALID_ARGUMENT); /* twice */
  /* accumulation over two train steps needs no_overlap only when buckets start early (N > 1) */
  batch x;
  make_batch(&c, 4, 1, &x);
  ck_assert_int_eq(nbl_train_step(s, 2, x.t, NULL), NBL_OK);
  ck_assert_int_eq(nbl_train_step(s, 2, x.t, NULL), NBL_OK);
  ck_assert_int_eq(nbl_optimizer_step(s), NBL_OK);
  double v[2] = {1.5, -2};
  ck_assert_int_eq(nbl_train_dist_sum(s, v, 2), NBL_OK);
  ck_assert(v[0] == 1.5 && v[1] == -2);
  nbl_train_session_free(s);
  /* float64 gradients are not exchanged */
  c.dt = NBL_DT_DOUBLE;
  s = session(&c);
  ck_assert_int_eq(nbl_train_dist_init(s, NULL), NBL_ERR_UNSUPPORTED);
  ck_assert_msg(strstr(nbl_last_error(), "float32"), "%s", nbl_last_error());
  nbl_train_session_free(s);
  /* the launcher's environment */
  int local = -1, rank = -1;
  ck_assert_int_eq(nbl_train_dist_launcher_size(&local, &rank), 0);
  setenv("OMPI_COMM_WORLD_SIZE", "4", 1);
  setenv("OMPI_COMM_WORLD_LOCAL_SIZE", "2", 1);
  setenv("OMPI_COMM_WORLD_RANK", "3", 1);
  ck_assert_int_eq(nbl_train_dist_launcher_size(&local, &rank), 4);
  ck_assert_int_eq(local, 2);
  ck_assert_int_eq(rank, 3);
  if (!nbl_train_dist_mpi_built()) { /* a build without MPI says so instead of training alone */
    c.dt = NBL_DT_FLOAT;
    s = session(&c);
    ck_assert_int_eq(nbl_train_dist_init(s, NULL), NBL_ERR_UNSUPPORTED);
    ck_assert_msg(strstr(nbl_last_error(), "built without MPI"), "%s", nbl_last_error());
    nbl_train_session_free(s);
  }
  unsetenv("OMPI_COMM_WORLD_SIZE");
  unsetenv("OMPI_COMM_WORLD_LOCAL_SIZE");
  unsetenv("OMPI_COMM_WORLD_RANK");
}
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("exchange");
  TCase *tc = tcase_create("core");
  tcase_set_timeout(tc, 300);
  tcase_add_test(tc, test_fp32_one_rank_is_plain_training);
  tcase_add_test(tc, test_log4_on_the_grid_per_tensor);
  tcase_add_test(tc, test_log4_on_the_grid_per_bucket);
  tcase_add_test(tc, test_log4_error_feedback);
  tcase_add_test(tc, test_errors_and_launcher);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
