/* test_ops_train.c - loss and optimizer kernels (NegativeLogLikelihoodLoss,
 * SoftmaxCrossEntropyLoss, ai.onnx.preview.training Momentum / Adam / Adagrad)
 * against hand-computed values, each run as a one-node graph through the
 * session API: reductions, weights and ignore_index, several tensors per
 * optimizer node, empty tensors, NaN propagation, fast vs reference path and
 * clear errors on bad input. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ir/ir.h"
#include "nibble.h"
#include "one_node.h"
#include "ck_elem.h"

#define TRAIN "ai.onnx.preview.training"

/* ------------------------------------------------------------------ one-node graphs */


static void attr_f(one *o, const char *name, float v) { nbl_node_set_attr_float(G(o), o->node, name, v); }
static void attr_s(one *o, const char *name, const char *v) { nbl_node_set_attr_string(G(o), o->node, name, v); }
static void attr_i(one *o, const char *name, int64_t v) { nbl_node_set_attr_int(G(o), o->node, name, v); }

/* equal with NaN == NaN and a relative tolerance */
static int feq(double a, double b, double tol) {
  if (isnan(a) || isnan(b)) return isnan(a) && isnan(b);
  if (isinf(a) || isinf(b)) return a == b;
  return fabs(a - b) <= tol * (1 + fabs(b));
}

#define CK_F(got, want, tol) \
  ck_assert_msg(feq((got), (want), (tol)), "got %.9g, want %.9g", (double)(got), (double)(want))

static void ck_dims(const nbl_host_tensor *t, int rank, const int64_t *dims) {
  ck_assert_int_eq(t->rank, rank);
  for (int d = 0; d < rank; d++) ck_assert_int_eq(t->dims[d], dims[d]);
}

static const int64_t S0[1] = {0}; /* dims of a scalar (unused) */

/* ------------------------------------------------------------------ NegativeLogLikelihoodLoss */

/* [2,3] log-probabilities, weights {1,2,3}, int32 target {1,-1} with
 * ignore_index -1: sample 0 loses -w[1]*x[0,1] = 2, sample 1 is ignored.
 * mean divides by the weights used (2): 1. Without ignore_index, target {1,2}:
 * losses 2 and 3*4 = 12, sum 14, mean 14/(2+3) = 2.8. */
START_TEST(test_nll_weight_ignore) {
  float x[6] = {-0.5f, -1, -2, -3, -0.25f, -4}, w[3] = {1, 2, 3};
  int32_t tg_ii[2] = {1, -1}, tg[2] = {1, 2};
  const char *red[3] = {"none", "sum", "mean"};
  const double want_ii[3] = {0, 2, 1}, want[3] = {0, 14, 2.8};
  for (int ii = 0; ii < 2; ii++)
    for (int r = 0; r < 3; r++) {
      one *o = one_new_domain("NegativeLogLikelihoodLoss", "", r == 1 ? 12 : 13, 3, 1);
      attr_s(o, "reduction", red[r]);
      if (ii) attr_i(o, "ignore_index", -1);
      one_in(o, 0, NBL_DT_FLOAT, 2, (int64_t[]){2, 3}, x);
      one_in(o, 1, NBL_DT_INT32, 1, (int64_t[]){2}, ii ? tg_ii : tg);
      one_in(o, 2, NBL_DT_FLOAT, 1, (int64_t[]){3}, w);
      ck_assert_int_eq(one_run(o, 0), NBL_OK);
      if (r == 0) {
        ck_dims(&o->out[0], 1, (int64_t[]){2});
        CK_F(outf(o, 0)[0], 2, 0);
        CK_F(outf(o, 0)[1], ii ? 0 : 12, 0);
      } else {
        ck_assert_int_eq(o->out[0].rank, 0);
        CK_F(outf(o, 0)[0], ii ? want_ii[r] : want[r], 1e-7);
      }
      one_free(o);
    }
}
END_TEST

/* [N=1, C=2, d1=2] in double, no weights, int64 target [[1, 0]]:
 * losses -x[0,1,0] = 3 and -x[0,0,1] = 2; mean 2.5. */
START_TEST(test_nll_spatial_double) {
  double x[4] = {-1, -2, -3, -4};
  int64_t tg[2] = {1, 0};
  one *o = one_new_domain("NegativeLogLikelihoodLoss", "", 13, 2, 1);
  attr_s(o, "reduction", "none");
  one_in(o, 0, NBL_DT_DOUBLE, 3, (int64_t[]){1, 2, 2}, x);
  one_in(o, 1, NBL_DT_INT64, 2, (int64_t[]){1, 2}, tg);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  ck_assert_int_eq(o->out[0].dtype, NBL_DT_DOUBLE);
  ck_dims(&o->out[0], 2, (int64_t[]){1, 2});
  CK_F(outd(o, 0)[0], 3, 0);
  CK_F(outd(o, 0)[1], 2, 0);
  one_free(o);

  o = one_new_domain("NegativeLogLikelihoodLoss", "", 13, 2, 1); /* default reduction: mean */
  one_in(o, 0, NBL_DT_DOUBLE, 3, (int64_t[]){1, 2, 2}, x);
  one_in(o, 1, NBL_DT_INT64, 2, (int64_t[]){1, 2}, tg);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  CK_F(outd(o, 0)[0], 2.5, 0);
  one_free(o);
}
END_TEST

/* float16 in, float16 out: values exact in half precision. */
START_TEST(test_nll_float16) {
  uint16_t x[4];
  const float xf[4] = {-1.5f, -0.25f, -8, -0.5f};
  for (int i = 0; i < 4; i++) x[i] = nbl_float_to_half(xf[i]);
  int64_t tg[2] = {0, 1};
  one *o = one_new_domain("NegativeLogLikelihoodLoss", "", 13, 2, 1);
  attr_s(o, "reduction", "sum");
  one_in(o, 0, NBL_DT_FLOAT16, 2, (int64_t[]){2, 2}, x);
  one_in(o, 1, NBL_DT_INT64, 1, (int64_t[]){2}, tg);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  ck_assert_int_eq(o->out[0].dtype, NBL_DT_FLOAT16);
  CK_F(nbl_half_to_float(((const uint16_t *)o->out[0].data)[0]), 1.5 + 0.5, 0);
  one_free(o);
}
END_TEST

/* Edge cases: an empty batch, every sample ignored (mean 0/0 = NaN, as NumPy
 * and PyTorch), NaN in a used log-probability, and bad inputs. */
START_TEST(test_nll_edges) {
  /* N = 0: none gives shape [0], sum gives 0 */
  one *o = one_new_domain("NegativeLogLikelihoodLoss", "", 13, 2, 1);
  attr_s(o, "reduction", "none");
  one_in(o, 0, NBL_DT_FLOAT, 2, (int64_t[]){0, 3}, NULL);
  one_in(o, 1, NBL_DT_INT64, 1, (int64_t[]){0}, NULL);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  ck_dims(&o->out[0], 1, (int64_t[]){0});
  one_free(o);
  o = one_new_domain("NegativeLogLikelihoodLoss", "", 13, 2, 1);
  attr_s(o, "reduction", "sum");
  one_in(o, 0, NBL_DT_FLOAT, 2, (int64_t[]){0, 3}, NULL);
  one_in(o, 1, NBL_DT_INT64, 1, (int64_t[]){0}, NULL);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  CK_F(outf(o, 0)[0], 0, 0);
  one_free(o);

  float x[6] = {-1, NAN, -3, -4, -5, -6};
  int64_t all_ign[2] = {7, 7}, tg[2] = {1, 0};
  o = one_new_domain("NegativeLogLikelihoodLoss", "", 13, 2, 1);
  attr_i(o, "ignore_index", 7);
  one_in(o, 0, NBL_DT_FLOAT, 2, (int64_t[]){2, 3}, x);
  one_in(o, 1, NBL_DT_INT64, 1, (int64_t[]){2}, all_ign);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  ck_assert(isnan(outf(o, 0)[0]));
  one_free(o);

  o = one_new_domain("NegativeLogLikelihoodLoss", "", 13, 2, 1);
  attr_s(o, "reduction", "none");
  one_in(o, 0, NBL_DT_FLOAT, 2, (int64_t[]){2, 3}, x);
  one_in(o, 1, NBL_DT_INT64, 1, (int64_t[]){2}, tg);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  ck_assert(isnan(outf(o, 0)[0]));
  CK_F(outf(o, 0)[1], 4, 0);
  one_free(o);

  /* target outside [0, C) */
  int64_t bad[2] = {3, 0};
  o = one_new_domain("NegativeLogLikelihoodLoss", "", 13, 2, 1);
  one_in(o, 0, NBL_DT_FLOAT, 2, (int64_t[]){2, 3}, x);
  one_in(o, 1, NBL_DT_INT64, 1, (int64_t[]){2}, bad);
  ck_assert_int_ne(one_run(o, 0), NBL_OK);
  one_free(o);
  /* float target, weight of the wrong length, target of the wrong shape */
  float ft[2] = {1, 0}, w2[2] = {1, 1};
  o = one_new_domain("NegativeLogLikelihoodLoss", "", 13, 2, 1);
  one_in(o, 0, NBL_DT_FLOAT, 2, (int64_t[]){2, 3}, x);
  one_in(o, 1, NBL_DT_FLOAT, 1, (int64_t[]){2}, ft);
  ck_assert_int_eq(one_run(o, 0), NBL_ERR_INVALID_MODEL);
  one_free(o);
  o = one_new_domain("NegativeLogLikelihoodLoss", "", 13, 3, 1);
  one_in(o, 0, NBL_DT_FLOAT, 2, (int64_t[]){2, 3}, x);
  one_in(o, 1, NBL_DT_INT64, 1, (int64_t[]){2}, tg);
  one_in(o, 2, NBL_DT_FLOAT, 1, (int64_t[]){2}, w2);
  ck_assert_int_eq(one_run(o, 0), NBL_ERR_INVALID_MODEL);
  one_free(o);
  o = one_new_domain("NegativeLogLikelihoodLoss", "", 13, 2, 1);
  one_in(o, 0, NBL_DT_FLOAT, 2, (int64_t[]){2, 3}, x);
  one_in(o, 1, NBL_DT_INT64, 2, (int64_t[]){1, 2}, tg);
  ck_assert_int_eq(one_run(o, 0), NBL_ERR_INVALID_MODEL);
  one_free(o);
}
END_TEST

/* ------------------------------------------------------------------ SoftmaxCrossEntropyLoss */

/* x [2,3] = {1,2,3 ; 0,0,0}, target {2, 0}: log_softmax row 0 is
 * x - (3 + log(1 + e^-1 + e^-2)), row 1 is -log 3. Weights {1,1,2}. */
START_TEST(test_sce_values) {
  float x[6] = {1, 2, 3, 0, 0, 0}, w[3] = {1, 1, 2};
  int64_t tg[2] = {2, 0};
  double lse0 = 3 + log(1 + exp(-1.0) + exp(-2.0)), l0 = lse0 - 3, l1 = log(3.0);
  const char *red[3] = {"none", "sum", "mean"};
  for (int wt = 0; wt < 2; wt++)
    for (int r = 0; r < 3; r++) {
      one *o = one_new_domain("SoftmaxCrossEntropyLoss", "", 13, wt ? 3 : 2, 2);
      attr_s(o, "reduction", red[r]);
      one_in(o, 0, NBL_DT_FLOAT, 2, (int64_t[]){2, 3}, x);
      one_in(o, 1, NBL_DT_INT64, 1, (int64_t[]){2}, tg);
      if (wt) one_in(o, 2, NBL_DT_FLOAT, 1, (int64_t[]){3}, w);
      ck_assert_int_eq(one_run(o, 0), NBL_OK);
      double a = (wt ? 2 : 1) * l0, b = l1;
      if (r == 0) {
        CK_F(outf(o, 0)[0], a, 1e-6);
        CK_F(outf(o, 0)[1], b, 1e-6);
      } else {
        CK_F(outf(o, 0)[0], r == 1 ? a + b : (a + b) / (wt ? 3 : 2), 1e-6);
      }
      /* log_prob output */
      ck_dims(&o->out[1], 2, (int64_t[]){2, 3});
      for (int k = 0; k < 3; k++) {
        CK_F(outf(o, 1)[k], x[k] - lse0, 1e-6);
        CK_F(outf(o, 1)[3 + k], -l1, 1e-6);
      }
      one_free(o);
    }
}
END_TEST

/* Large logits stay finite (max subtracted), NaN propagates to its sample
 * only, ignore_index on a spatial input [N=1, C=2, d=3]. */
START_TEST(test_sce_edges) {
  float x[6] = {1000, 0, 0, NAN, 1, 2};
  int64_t tg[2] = {1, 2};
  one *o = one_new_domain("SoftmaxCrossEntropyLoss", "", 12, 2, 1);
  attr_s(o, "reduction", "none");
  one_in(o, 0, NBL_DT_FLOAT, 2, (int64_t[]){2, 3}, x);
  one_in(o, 1, NBL_DT_INT64, 1, (int64_t[]){2}, tg);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  CK_F(outf(o, 0)[0], 1000, 1e-7);
  ck_assert(isnan(outf(o, 0)[1]));
  one_free(o);

  /* x[0, c, d]: c0 = {0, 0, 0}, c1 = {ln 3, 0, 5}; targets {1, 0, -5}, ii -5:
   * d0: -log(3/4) , d1: log 2, d2 ignored; mean over 2 used elements */
  double xs[6] = {0, 0, 0, log(3.0), 0, 5};
  int32_t ts[3] = {1, 0, -5};
  o = one_new_domain("SoftmaxCrossEntropyLoss", "", 13, 2, 1);
  attr_i(o, "ignore_index", -5);
  one_in(o, 0, NBL_DT_DOUBLE, 3, (int64_t[]){1, 2, 3}, xs);
  one_in(o, 1, NBL_DT_INT32, 2, (int64_t[]){1, 3}, ts);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  CK_F(outd(o, 0)[0], (-log(0.75) + log(2.0)) / 2, 1e-12);
  one_free(o);
}
END_TEST

/* ------------------------------------------------------------------ Momentum */

/* R = 0.5, alpha 0.9, beta 0.5, norm_coefficient 0.1, X {1,-2}, G {0.5,1},
 * V {1,2}: G_reg = {0.6, 0.8}.
 *  T = 0 (beta' = 1): V_new = {1.5, 2.6}, X_new = X - R*V_new = {0.25, -3.3}
 *  T = 3 (beta' = .5): V_new = {1.2, 2.2}, standard X_new = {0.4, -3.1},
 *  nesterov X_new = X - R*(G_reg + alpha*V_new) = {0.16, -3.39}. */
static void run_momentum(nbl_dtype dt, int reference) {
  struct {
    int64_t T;
    const char *mode;
    double x[2], v[2];
  } cases[3] = {{0, "standard", {0.25, -3.3}, {1.5, 2.6}},
                {3, "standard", {0.4, -3.1}, {1.2, 2.2}},
                {3, "nesterov", {0.16, -3.39}, {1.2, 2.2}}};
  double xd[2] = {1, -2}, gd[2] = {0.5, 1}, vd[2] = {1, 2}, Rd = 0.5;
  float xf[2] = {1, -2}, gf[2] = {0.5f, 1}, vf[2] = {1, 2}, Rf = 0.5f;
  int isd = dt == NBL_DT_DOUBLE;
  for (int c = 0; c < 3; c++) {
    one *o = one_new_domain("Momentum", TRAIN, 1, 5, 2);
    attr_f(o, "alpha", 0.9f);
    attr_f(o, "beta", 0.5f);
    attr_f(o, "norm_coefficient", 0.1f);
    attr_s(o, "mode", cases[c].mode);
    /* R may be float or double independently of X */
    one_in(o, 0, isd ? NBL_DT_FLOAT : NBL_DT_DOUBLE, 0, S0, isd ? (void *)&Rf : (void *)&Rd);
    one_in(o, 1, NBL_DT_INT64, 0, S0, &cases[c].T);
    one_in(o, 2, dt, 1, (int64_t[]){2}, isd ? (void *)xd : (void *)xf);
    one_in(o, 3, dt, 1, (int64_t[]){2}, isd ? (void *)gd : (void *)gf);
    one_in(o, 4, dt, 1, (int64_t[]){2}, isd ? (void *)vd : (void *)vf);
    ck_assert_int_eq(one_run(o, reference), NBL_OK);
    for (int i = 0; i < 2; i++) {
      ck_assert_int_eq(o->out[0].dtype, dt);
      double gx = isd ? outd(o, 0)[i] : outf(o, 0)[i], gv = isd ? outd(o, 1)[i] : outf(o, 1)[i];
      /* attributes are float32: 0.9f and 0.1f differ from 0.9 and 0.1 by ~1e-8 */
      CK_F(gx, cases[c].x[i], isd ? 1e-7 : 1e-6);
      CK_F(gv, cases[c].v[i], isd ? 1e-7 : 1e-6);
    }
    one_free(o);
  }
}

START_TEST(test_momentum_values) {
  for (int ref = 0; ref < 2; ref++) {
    run_momentum(NBL_DT_FLOAT, ref);
    run_momentum(NBL_DT_DOUBLE, ref);
  }
}
END_TEST

/* Two tensors in one node: outputs are X1_new, X2_new, V1_new, V2_new.
 * X2 = 0 so G_reg = G; T = 0: V2_new = G2, X2_new = -R*G2. An empty X3
 * gives empty outputs. */
START_TEST(test_momentum_multiple) {
  float R = 0.5f, x1[1] = {2}, g1[1] = {1}, v1[1] = {4};
  float x2[3] = {0, 0, 0}, g2[3] = {1, 2, 3}, v2[3] = {0, 0, 0};
  int64_t T = 0;
  one *o = one_new_domain("Momentum", TRAIN, 1, 11, 6);
  attr_f(o, "alpha", 0.5f);
  attr_f(o, "beta", 0.25f); /* unused at T = 0 */
  attr_f(o, "norm_coefficient", 0.5f);
  attr_s(o, "mode", "standard");
  one_in(o, 0, NBL_DT_FLOAT, 0, S0, &R);
  one_in(o, 1, NBL_DT_INT64, 0, S0, &T);
  one_in(o, 2, NBL_DT_FLOAT, 1, (int64_t[]){1}, x1);
  one_in(o, 3, NBL_DT_FLOAT, 1, (int64_t[]){3}, x2);
  one_in(o, 4, NBL_DT_FLOAT, 2, (int64_t[]){0, 4}, NULL);
  one_in(o, 5, NBL_DT_FLOAT, 1, (int64_t[]){1}, g1);
  one_in(o, 6, NBL_DT_FLOAT, 1, (int64_t[]){3}, g2);
  one_in(o, 7, NBL_DT_FLOAT, 2, (int64_t[]){0, 4}, NULL);
  one_in(o, 8, NBL_DT_FLOAT, 1, (int64_t[]){1}, v1);
  one_in(o, 9, NBL_DT_FLOAT, 1, (int64_t[]){3}, v2);
  one_in(o, 10, NBL_DT_FLOAT, 2, (int64_t[]){0, 4}, NULL);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  /* tensor 1: G_reg = 0.5*2 + 1 = 2, V_new = 0.5*4 + 2 = 4, X_new = 2 - 0.5*4 = 0 */
  CK_F(outf(o, 0)[0], 0, 0);
  CK_F(outf(o, 3)[0], 4, 0);
  ck_dims(&o->out[1], 1, (int64_t[]){3});
  ck_dims(&o->out[4], 1, (int64_t[]){3});
  for (int i = 0; i < 3; i++) {
    CK_F(outf(o, 1)[i], -0.5 * g2[i], 0);
    CK_F(outf(o, 4)[i], g2[i], 0);
  }
  ck_dims(&o->out[2], 2, (int64_t[]){0, 4});
  ck_dims(&o->out[5], 2, (int64_t[]){0, 4});
  one_free(o);
}
END_TEST

/* Bad inputs are errors naming the problem, never a crash. */
START_TEST(test_momentum_errors) {
  float R = 0.1f, x[2] = {1, 2}, g[2] = {1, 1}, v[2] = {0, 0};
  int64_t T = 1;
  int32_t xi[2] = {1, 2};
  float Tf = 1;
  for (int c = 0; c < 7; c++) {
    int n_in = c == 5 ? 4 : 5;
    one *o = one_new_domain("Momentum", TRAIN, 1, n_in, 2);
    attr_f(o, "alpha", 0.9f);
    if (c != 0) attr_f(o, "beta", 1);
    attr_f(o, "norm_coefficient", 0);
    if (c != 1) attr_s(o, "mode", c == 2 ? "heavy-ball" : "standard");
    one_in(o, 0, NBL_DT_FLOAT, c == 6 ? 1 : 0, (int64_t[]){2}, c == 6 ? (void *)x : (void *)&R);
    one_in(o, 1, c == 4 ? NBL_DT_FLOAT : NBL_DT_INT64, 0, S0, c == 4 ? (void *)&Tf : (void *)&T);
    one_in(o, 2, c == 3 ? NBL_DT_INT32 : NBL_DT_FLOAT, 1, (int64_t[]){2}, c == 3 ? (void *)xi : (void *)x);
    one_in(o, 3, NBL_DT_FLOAT, 1, (int64_t[]){2}, g);
    if (n_in == 5) one_in(o, 4, NBL_DT_FLOAT, 1, (int64_t[]){2}, v);
    nbl_status st = one_run(o, 0);
    ck_assert_int_eq(st, c == 3 ? NBL_ERR_UNSUPPORTED : NBL_ERR_INVALID_MODEL);
    ck_assert_ptr_nonnull(strstr(nbl_last_error(), "Momentum"));
    one_free(o);
  }
  /* G of another shape than X */
  one *o = one_new_domain("Momentum", TRAIN, 1, 5, 2);
  attr_f(o, "alpha", 0.9f);
  attr_f(o, "beta", 1);
  attr_f(o, "norm_coefficient", 0);
  attr_s(o, "mode", "standard");
  one_in(o, 0, NBL_DT_FLOAT, 0, S0, &R);
  one_in(o, 1, NBL_DT_INT64, 0, S0, &T);
  one_in(o, 2, NBL_DT_FLOAT, 1, (int64_t[]){2}, x);
  one_in(o, 3, NBL_DT_FLOAT, 2, (int64_t[]){2, 1}, g);
  one_in(o, 4, NBL_DT_FLOAT, 1, (int64_t[]){2}, v);
  ck_assert_int_eq(one_run(o, 0), NBL_ERR_INVALID_MODEL);
  ck_assert_ptr_nonnull(strstr(nbl_last_error(), "'x3'"));
  one_free(o);
}
END_TEST

/* ------------------------------------------------------------------ Adam */

/* One step by hand: X = 1, G = 0.5, V = H = 0, R = 0.1, alpha 0.9,
 * beta 0.999 (the defaults), epsilon 0:
 *  V_new = 0.1*0.5 = 0.05, H_new = 0.001*0.25 = 2.5e-4, sqrt = 0.0158113883,
 *  T = 1: R' = 0.1*sqrt(0.001)/0.1 = 0.0316227766, step = R'*V/sqrt(H) = 0.1
 *         (Adam's first step is lr * sign(g)): X_new = 0.9
 *  T = 0: R' = R, step = 0.1*0.05/0.0158113883 = 0.316227766: X_new = 0.683772234
 * norm_coefficient 0.2 makes G_reg = 0.7 (same first step, V 0.07, H 4.9e-4);
 * norm_coefficient_post 0.5 halves X_new. */
START_TEST(test_adam_values) {
  struct {
    int64_t T;
    float nc, post;
    double x, v, h;
  } cases[4] = {{1, 0, 0, 0.9, 0.05, 2.5e-4},
                {0, 0, 0, 1 - 0.1 * 0.05 / sqrt(2.5e-4), 0.05, 2.5e-4},
                {1, 0.2f, 0, 0.9, 0.07, 4.9e-4},
                {1, 0, 0.5f, 0.45, 0.05, 2.5e-4}};
  for (int ref = 0; ref < 2; ref++)
    for (int isd = 0; isd < 2; isd++)
      for (int c = 0; c < 4; c++) {
        double xd = 1, gd = 0.5, zd = 0;
        float xf = 1, gf = 0.5f, zf = 0, R = 0.1f;
        nbl_dtype dt = isd ? NBL_DT_DOUBLE : NBL_DT_FLOAT;
        one *o = one_new_domain("Adam", TRAIN, 1, 6, 3);
        attr_f(o, "epsilon", 0);
        if (cases[c].nc != 0) attr_f(o, "norm_coefficient", cases[c].nc);
        if (cases[c].post != 0) attr_f(o, "norm_coefficient_post", cases[c].post);
        one_in(o, 0, NBL_DT_FLOAT, 0, S0, &R);
        one_in(o, 1, NBL_DT_INT64, 0, S0, &cases[c].T);
        one_in(o, 2, dt, 0, S0, isd ? (void *)&xd : (void *)&xf);
        one_in(o, 3, dt, 0, S0, isd ? (void *)&gd : (void *)&gf);
        one_in(o, 4, dt, 0, S0, isd ? (void *)&zd : (void *)&zf);
        one_in(o, 5, dt, 0, S0, isd ? (void *)&zd : (void *)&zf);
        ck_assert_int_eq(one_run(o, ref), NBL_OK);
        ck_assert_int_eq(o->out[0].rank, 0);
        /* the attributes are float32: 0.9f and 0.999f make 1 - alpha and
         * 1 - beta off by 2.4e-7 and 1.3e-5 relative */
        CK_F(isd ? outd(o, 0)[0] : outf(o, 0)[0], cases[c].x, 1e-5);
        CK_F(isd ? outd(o, 1)[0] : outf(o, 1)[0], cases[c].v, 1e-6);
        CK_F(isd ? outd(o, 2)[0] : outf(o, 2)[0], cases[c].h, 2e-5);
        one_free(o);
      }
}
END_TEST

/* The default epsilon (1e-6) is added outside the square root; NaN in G
 * propagates to all three outputs of that element only. */
START_TEST(test_adam_epsilon_nan) {
  double x[2] = {1, 1}, g[2] = {0.5, NAN}, z[2] = {0, 0}, R = 0.1;
  int64_t T = 1;
  one *o = one_new_domain("Adam", TRAIN, 1, 6, 3);
  one_in(o, 0, NBL_DT_DOUBLE, 0, S0, &R);
  one_in(o, 1, NBL_DT_INT64, 0, S0, &T);
  one_in(o, 2, NBL_DT_DOUBLE, 1, (int64_t[]){2}, x);
  one_in(o, 3, NBL_DT_DOUBLE, 1, (int64_t[]){2}, g);
  one_in(o, 4, NBL_DT_DOUBLE, 1, (int64_t[]){2}, z);
  one_in(o, 5, NBL_DT_DOUBLE, 1, (int64_t[]){2}, z);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  double a = 0.9f, b = 0.999f, eps = 1e-6f;
  double rr = 0.1 * sqrt(1 - b) / (1 - a);
  double vn = (1 - a) * 0.5, hn = (1 - b) * 0.25;
  CK_F(outd(o, 0)[0], 1 - rr * vn / (sqrt(hn) + eps), 1e-12);
  ck_assert(fabs(outd(o, 0)[0] - 0.9) > 1e-6); /* epsilon did matter */
  for (int k = 0; k < 3; k++) ck_assert(isnan(outd(o, k)[1]));
  one_free(o);
}
END_TEST

/* A tensor larger than one parallel chunk: the fast path (2 threads) and the
 * reference path both equal a direct double computation of the formula. */
START_TEST(test_adam_large) {
  enum { N = 100003 };
  float *x = malloc(N * sizeof *x), *g = malloc(N * sizeof *g), *v = malloc(N * sizeof *v),
        *h = malloc(N * sizeof *h), R = 0.01f;
  for (int i = 0; i < N; i++) {
    x[i] = (float)((i % 97) - 48) / 16;
    g[i] = (float)((i % 13) - 6) / 8;
    v[i] = (float)((i % 7) - 3) / 32;
    h[i] = (float)(i % 5) / 64;
  }
  int64_t T = 5;
  float a = 0.8f, b = 0.99f, eps = 1e-4f, nc = 0.01f, post = 0.001f;
  for (int ref = 0; ref < 2; ref++) {
    one *o = one_new_domain("Adam", TRAIN, 1, 6, 3);
    attr_f(o, "alpha", a);
    attr_f(o, "beta", b);
    attr_f(o, "epsilon", eps);
    attr_f(o, "norm_coefficient", nc);
    attr_f(o, "norm_coefficient_post", post);
    one_in(o, 0, NBL_DT_FLOAT, 0, S0, &R);
    one_in(o, 1, NBL_DT_INT64, 0, S0, &T);
    one_in(o, 2, NBL_DT_FLOAT, 1, (int64_t[]){N}, x);
    one_in(o, 3, NBL_DT_FLOAT, 1, (int64_t[]){N}, g);
    one_in(o, 4, NBL_DT_FLOAT, 1, (int64_t[]){N}, v);
    one_in(o, 5, NBL_DT_FLOAT, 1, (int64_t[]){N}, h);
    ck_assert_int_eq(one_run(o, ref), NBL_OK);
    double rr = (double)R * sqrt(1 - pow(b, 5)) / (1 - pow(a, 5));
    for (int i = 0; i < N; i++) {
      double gr = (double)nc * x[i] + g[i];
      double vn = (double)a * v[i] + (1 - (double)a) * gr;
      double hn = (double)b * h[i] + (1 - (double)b) * gr * gr;
      double xn = (1 - (double)post) * (x[i] - rr * vn / (sqrt(hn) + eps));
      ck_elem_msg(feq(outf(o, 0)[i], xn, 1e-5) && feq(outf(o, 1)[i], vn, 1e-5) &&
                        feq(outf(o, 2)[i], hn, 1e-5),
                  "element %d: x %.9g want %.9g", i, outf(o, 0)[i], xn);
    }
    one_free(o);
  }
  free(x);
  free(g);
  free(v);
  free(h);
}
END_TEST

/* Fast (AVX2, 2 threads) and reference paths give bit-identical float32
 * results for every optimizer, on a length that is not a multiple of the
 * vector width and spans several parallel chunks. */
START_TEST(test_optimizers_fast_equals_reference) {
  enum { N = 70001 };
  float *buf = malloc(4 * N * sizeof *buf), R = 0.03f;
  float *x = buf, *g = buf + N, *v = buf + 2 * N, *h = buf + 3 * N;
  for (int i = 0; i < N; i++) {
    x[i] = (float)((i * 37 % 101) - 50) / 7;
    g[i] = (float)((i * 11 % 29) - 14) / 5;
    v[i] = (float)((i % 17) - 8) / 9;
    h[i] = (float)(i % 23) / 3;
  }
  int64_t T = 4;
  const char *ops[4] = {"Momentum", "Momentum", "Adam", "Adagrad"};
  const int nst[4] = {1, 1, 2, 1};
  for (int c = 0; c < 4; c++) {
    float *got[2][3] = {{0}};
    for (int ref = 0; ref < 2; ref++) {
      one *o = one_new_domain(ops[c], TRAIN, 1, 4 + nst[c], 1 + nst[c]);
      attr_f(o, "norm_coefficient", 0.05f);
      if (c < 2) {
        attr_f(o, "alpha", 0.7f);
        attr_f(o, "beta", 0.3f);
        attr_s(o, "mode", c ? "nesterov" : "standard");
      } else if (c == 2) {
        attr_f(o, "norm_coefficient_post", 0.01f);
      } else {
        attr_f(o, "decay_factor", 0.2f);
      }
      one_in(o, 0, NBL_DT_FLOAT, 0, S0, &R);
      one_in(o, 1, NBL_DT_INT64, 0, S0, &T);
      one_in(o, 2, NBL_DT_FLOAT, 1, (int64_t[]){N}, x);
      one_in(o, 3, NBL_DT_FLOAT, 1, (int64_t[]){N}, g);
      one_in(o, 4, NBL_DT_FLOAT, 1, (int64_t[]){N}, c == 3 ? h : v);
      if (nst[c] == 2) one_in(o, 5, NBL_DT_FLOAT, 1, (int64_t[]){N}, h);
      ck_assert_int_eq(one_run(o, ref), NBL_OK);
      for (int k = 0; k <= nst[c]; k++) {
        got[ref][k] = malloc(N * sizeof(float));
        memcpy(got[ref][k], o->out[k].data, N * sizeof(float));
      }
      one_free(o);
    }
    for (int k = 0; k <= nst[c]; k++) {
      for (int i = 0; i < N; i++)
        ck_elem_msg(memcmp(&got[0][k][i], &got[1][k][i], sizeof(float)) == 0,
                    "%s output %d element %d: fast %.9g, reference %.9g", ops[c], k, i, got[0][k][i],
                    got[1][k][i]);
      free(got[0][k]);
      free(got[1][k]);
    }
  }
  free(buf);
}
END_TEST

/* ------------------------------------------------------------------ Adagrad */

/* R = 0.1, T = 2, decay_factor 0.5: r = 0.1/(1 + 1) = 0.05. X = 1, G = 2,
 * norm_coefficient 1: G_reg = 3; H = 7: H_new = 16; epsilon 0:
 * X_new = 1 - 0.05*3/4 = 0.9625. Second tensor, T's decay the same:
 * X = 0, G = -1, H = 0: H_new = 1, X_new = 0.05. */
START_TEST(test_adagrad_values) {
  for (int ref = 0; ref < 2; ref++)
    for (int isd = 0; isd < 2; isd++) {
      nbl_dtype dt = isd ? NBL_DT_DOUBLE : NBL_DT_FLOAT;
      double x1d = 1, g1d = 2, h1d = 7, x2d[2] = {0, 0}, g2d[2] = {-1, 0}, h2d[2] = {0, 9}, R = 0.1;
      float x1f = 1, g1f = 2, h1f = 7, x2f[2] = {0, 0}, g2f[2] = {-1, 0}, h2f[2] = {0, 9};
      int64_t T = 2;
      one *o = one_new_domain("Adagrad", TRAIN, 1, 8, 4);
      attr_f(o, "decay_factor", 0.5f);
      attr_f(o, "norm_coefficient", 1);
      attr_f(o, "epsilon", 0);
      one_in(o, 0, NBL_DT_DOUBLE, 0, S0, &R);
      one_in(o, 1, NBL_DT_INT64, 0, S0, &T);
      one_in(o, 2, dt, 1, (int64_t[]){1}, isd ? (void *)&x1d : (void *)&x1f);
      one_in(o, 3, dt, 1, (int64_t[]){2}, isd ? (void *)x2d : (void *)x2f);
      one_in(o, 4, dt, 1, (int64_t[]){1}, isd ? (void *)&g1d : (void *)&g1f);
      one_in(o, 5, dt, 1, (int64_t[]){2}, isd ? (void *)g2d : (void *)g2f);
      one_in(o, 6, dt, 1, (int64_t[]){1}, isd ? (void *)&h1d : (void *)&h1f);
      one_in(o, 7, dt, 1, (int64_t[]){2}, isd ? (void *)h2d : (void *)h2f);
      ck_assert_int_eq(one_run(o, ref), NBL_OK);
#define AT(k, i) (isd ? outd(o, k)[i] : (double)outf(o, k)[i])
      CK_F(AT(0, 0), 0.9625, 1e-7);
      CK_F(AT(1, 0), 0.05, 1e-7);
      CK_F(AT(1, 1), 0, 0); /* G_reg = 0: no move, H unchanged */
      CK_F(AT(2, 0), 16, 0);
      CK_F(AT(3, 0), 1, 0);
      CK_F(AT(3, 1), 9, 0);
#undef AT
      one_free(o);
    }
}
END_TEST

/* Defaults: decay 0, epsilon 1e-6, norm_coefficient 0; T may be 0. */
START_TEST(test_adagrad_defaults) {
  float R = 1, x = 0, g = 2, h = 0;
  int64_t T = 0;
  one *o = one_new_domain("Adagrad", TRAIN, 1, 5, 2);
  one_in(o, 0, NBL_DT_FLOAT, 0, S0, &R);
  one_in(o, 1, NBL_DT_INT64, 0, S0, &T);
  one_in(o, 2, NBL_DT_FLOAT, 0, S0, &x);
  one_in(o, 3, NBL_DT_FLOAT, 0, S0, &g);
  one_in(o, 4, NBL_DT_FLOAT, 0, S0, &h);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  CK_F(outf(o, 0)[0], -2 / (2 + 1e-6), 1e-7);
  CK_F(outf(o, 1)[0], 4, 0);
  one_free(o);
  /* Momentum's attributes are required; Adagrad with a missing H is an error */
  o = one_new_domain("Adagrad", TRAIN, 1, 4, 2);
  one_in(o, 0, NBL_DT_FLOAT, 0, S0, &R);
  one_in(o, 1, NBL_DT_INT64, 0, S0, &T);
  one_in(o, 2, NBL_DT_FLOAT, 0, S0, &x);
  one_in(o, 3, NBL_DT_FLOAT, 0, S0, &g);
  ck_assert_int_eq(one_run(o, 0), NBL_ERR_INVALID_MODEL);
  one_free(o);
}
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("ops_train");
  TCase *t = tcase_create("core");
  tcase_set_timeout(t, 120);
  tcase_add_test(t, test_nll_weight_ignore);
  tcase_add_test(t, test_nll_spatial_double);
  tcase_add_test(t, test_nll_float16);
  tcase_add_test(t, test_nll_edges);
  tcase_add_test(t, test_sce_values);
  tcase_add_test(t, test_sce_edges);
  tcase_add_test(t, test_momentum_values);
  tcase_add_test(t, test_momentum_multiple);
  tcase_add_test(t, test_momentum_errors);
  tcase_add_test(t, test_adam_values);
  tcase_add_test(t, test_adam_epsilon_nan);
  tcase_add_test(t, test_adam_large);
  tcase_add_test(t, test_optimizers_fast_equals_reference);
  tcase_add_test(t, test_adagrad_values);
  tcase_add_test(t, test_adagrad_defaults);
  suite_add_tcase(s, t);
  return s;
}

int main(void) {
  SRunner *r = srunner_create(suite());
  srunner_run_all(r, CK_NORMAL);
  int failed = srunner_ntests_failed(r);
  srunner_free(r);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
