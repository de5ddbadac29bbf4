/* test_fuse_pad.c - zero Pads folded into the op after them at plan time:
 * Pad -> Conv [-> Relu] (conv-act, runtime/fusions/fuse_f32.c) and
 * Pad -> AveragePool (pad-pool, runtime/fusions/fuse_pad_pool.c).
 *
 * Each case builds Pad -> consumer and runs it fused (the default) and with
 * NBL_NO_FUSION=all (Pad, then the consumer on the padded tensor, each op
 * checked against ONNX's own test data by the conformance suite), at 1 and
 * 2 threads. The profile says whether the Pad ran as a step of its own; the
 * cases that must not fold (a non-zero value, another mode, padded
 * channels, negative pads, pads not constant, the padded tensor read
 * elsewhere, automatic padding, a pool that does not count the padding,
 * ceil mode, MaxPool) must keep it. Outputs: the same as unfused within
 * float rounding (the same sums; another convolution path may add them in
 * another order), and a hand-computed average for one pool. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nibble.h"
#include "ir/ir.h"
#include "test_data.h"
#include "fuse_test.h"
#include "ck_elem.h"

static uint32_t rng = 515;

enum { PADS_ATTR, PADS_INIT, PADS_CONST_NODE, PADS_INPUT };
enum { VAL_ABSENT, VAL_INIT, VAL_ATTR };

typedef struct pcase {
  const char *what;
  int opset;
  const char *op; /* the consumer: Conv, AveragePool, MaxPool */
  int pads_form;
  int64_t pads[8]; /* the Pad's, [N C H W] begins then ends */
  int val_form;
  float value;
  const char *mode;      /* NULL: absent */
  int own;               /* the consumer has pads own[] */
  int64_t own_pads[4];
  int stride, count_include_pad, ceil_mode; /* count_include_pad < 0: absent */
  const char *auto_pad;  /* NULL: absent */
  int relu;              /* Conv -> Relu */
  int pad_out_kept;      /* the Pad's output is a graph output too */
  int fold;              /* expected */
} pcase;

enum { C_ = 5, H_ = 9, W_ = 11, M_ = 6 };

/* Output 0 of the case (malloc'ed, *n elements) and whether a Pad step ran. */
static float *run(const pcase *c, const float *x, const float *w, const float *b, int threads,
                  int fused, int *pad_ran, size_t *n) {
  nbl_model *m = nbl_model_new();
  nbl_model_set_opset(m, "", c->opset);
  nbl_graph *g = m->graph;
  int64_t dx[4] = {1, C_, H_, W_}, dw[4] = {M_, C_, 3, 3}, db[1] = {M_}, dp[1] = {8};
  nbl_id vx = nbl_graph_add_value(g, "x"), vp = nbl_graph_add_value(g, "p");
  nbl_id vpads = nbl_graph_add_value(g, "pads"), vval = nbl_graph_add_value(g, "v");
  nbl_id vy = nbl_graph_add_value(g, "y"), vr = nbl_graph_add_value(g, "r");
  nbl_type_set_tensor(m->arena, &g->values[vx].type, NBL_DT_FLOAT, 4, dx);
  nbl_graph_add_input(g, vx);
  nbl_host_tensor feeds[2];
  memset(feeds, 0, sizeof feeds);
  feeds[0] = (nbl_host_tensor){.name = "x", .dtype = NBL_DT_FLOAT, .rank = 4, .data = (void *)x,
                               .nbytes = sizeof(float) * C_ * H_ * W_};
  memcpy(feeds[0].dims, dx, sizeof dx);
  int nf = 1;
  nbl_id pin[3] = {vx, vpads, vval};
  int npin = 1;
  if (c->pads_form != PADS_ATTR) {
    npin = c->val_form == VAL_INIT ? 3 : 2;
    if (c->pads_form == PADS_INIT) {
      nbl_graph_set_initializer(g, vpads, nbl_tensor_new(m->arena, "pads", NBL_DT_INT64, 1, dp, c->pads));
    } else if (c->pads_form == PADS_CONST_NODE) {
      nbl_id k = nbl_graph_add_node(g, "Constant", "", "k", 0, NULL, 1, &vpads);
      nbl_node_set_attr_tensor(g, k, "value", nbl_tensor_new(m->arena, "pads", NBL_DT_INT64, 1, dp, c->pads));
    } else {
      nbl_type_set_tensor(m->arena, &g->values[vpads].type, NBL_DT_INT64, 1, dp);
      nbl_graph_add_input(g, vpads);
      feeds[1] = (nbl_host_tensor){.name = "pads", .dtype = NBL_DT_INT64, .rank = 1,
                                   .data = (void *)c->pads, .nbytes = sizeof(int64_t) * 8};
      feeds[1].dims[0] = 8;
      nf = 2;
    }
    if (c->val_form == VAL_INIT)
      nbl_graph_set_initializer(g, vval, nbl_tensor_new(m->arena, "v", NBL_DT_FLOAT, 0, NULL, &c->value));
  }
  nbl_id pn = nbl_graph_add_node(g, "Pad", "", "pad", npin, pin, 1, &vp);
  if (c->pads_form == PADS_ATTR) nbl_node_set_attr_ints(g, pn, "pads", 8, c->pads);
  if (c->val_form == VAL_ATTR) nbl_node_set_attr_float(g, pn, "value", c->value);
  if (c->mode) nbl_node_set_attr_string(g, pn, "mode", c->mode);
  nbl_id vw = nbl_graph_add_value(g, "w"), vb = nbl_graph_add_value(g, "b");
  nbl_id cin[3] = {vp, vw, vb};
  int conv = !strcmp(c->op, "Conv");
  if (conv) {
    nbl_graph_set_initializer(g, vw, nbl_tensor_new(m->arena, "w", NBL_DT_FLOAT, 4, dw, w));
    nbl_graph_set_initializer(g, vb, nbl_tensor_new(m->arena, "b", NBL_DT_FLOAT, 1, db, b));
  }
  nbl_id on = nbl_graph_add_node(g, c->op, "", "op", conv ? 3 : 1, cin, 1, &vy);
  int64_t ks[2] = {3, 3}, st[2] = {c->stride, c->stride};
  if (!conv) nbl_node_set_attr_ints(g, on, "kernel_shape", 2, ks);
  nbl_node_set_attr_ints(g, on, "strides", 2, st);
  if (c->own) nbl_node_set_attr_ints(g, on, "pads", 4, c->own_pads);
  if (c->count_include_pad >= 0) nbl_node_set_attr_int(g, on, "count_include_pad", c->count_include_pad);
  if (c->ceil_mode) nbl_node_set_attr_int(g, on, "ceil_mode", 1);
  if (c->auto_pad) nbl_node_set_attr_string(g, on, "auto_pad", c->auto_pad);
  if (c->relu) nbl_graph_add_node(g, "Relu", "", "relu", 1, &vy, 1, &vr);
  nbl_graph_add_output(g, c->relu ? vr : vy);
  if (c->pad_out_kept) nbl_graph_add_output(g, vp);
  ck_assert_msg(nbl_graph_verify(g, "test") == NBL_OK, "%s: %s", c->what, nbl_last_error());
  if (!fused) setenv("NBL_NO_FUSION", "all", 1);
  nbl_session_options opt = {.threads = threads, .profile = 1};
  nbl_session *s = NULL;
  ck_assert_msg(nbl_session_create(m, &opt, &s) == NBL_OK, "%s: %s", c->what, nbl_last_error());
  unsetenv("NBL_NO_FUSION");
  const nbl_host_tensor *res = NULL;
  ck_assert_msg(nbl_session_run(s, nf, feeds, &res) == NBL_OK, "%s: %s", c->what, nbl_last_error());
  *n = res[0].nbytes / sizeof(float);
  float *out = malloc(res[0].nbytes);
  memcpy(out, res[0].data, res[0].nbytes);
  char *text = ft_profile(s);
  *pad_ran = strstr(text, "\nPad ") != NULL;
  free(text);
  nbl_session_free(s);
  nbl_model_free(m);
  return out;
}

static void check(const pcase *c) {
  float x[C_ * H_ * W_], w[M_ * C_ * 9], b[M_];
  for (size_t i = 0; i < sizeof x / sizeof x[0]; i++) x[i] = td_lcg_float(&rng);
  for (size_t i = 0; i < sizeof w / sizeof w[0]; i++) w[i] = td_lcg_float(&rng);
  for (size_t i = 0; i < sizeof b / sizeof b[0]; i++) b[i] = td_lcg_float(&rng);
  for (int t = 1; t <= 2; t++) {
    int ran_f, ran_u;
    size_t nf, nu;
    float *yf = run(c, x, w, b, t, 1, &ran_f, &nf), *yu = run(c, x, w, b, t, 0, &ran_u, &nu);
    ck_assert_msg(ran_u, "%s: the unfused session runs the Pad", c->what);
    ck_assert_msg(ran_f == !c->fold, "%s: the Pad %s", c->what, ran_f ? "ran" : "was folded");
    ck_assert_uint_eq(nf, nu);
    ck_assert_uint_gt(nf, 0);
    for (size_t i = 0; i < nf; i++)
      ck_elem_msg(fabsf(yf[i] - yu[i]) <= 1e-5f * (1.0f + fabsf(yu[i])),
                  "%s, %d thread(s): y[%zu] fused %.9g unfused %.9g", c->what, t, i, yf[i], yu[i]);
    free(yf);
    free(yu);
  }
}

START_TEST(test_pad_conv_folds) {
  static const pcase cases[] = {
      {"opset 13, pads an initializer, value 0, Conv's own pads, stride 2, Relu", 13, "Conv",
       PADS_INIT, {0, 0, 1, 2, 0, 0, 0, 1}, VAL_INIT, 0.0f, "constant", 1, {1, 0, 1, 1}, 2, -1, 0,
       NULL, 1, 0, 1},
      {"opset 11, pads a Constant node, no value, no pads on the Conv", 11, "Conv", PADS_CONST_NODE,
       {0, 0, 2, 1, 0, 0, 2, 3}, VAL_ABSENT, 0.0f, NULL, 0, {0}, 1, -1, 0, NULL, 0, 0, 1},
      {"opset 9, pads and value as attributes, auto_pad NOTSET", 9, "Conv", PADS_ATTR,
       {0, 0, 1, 1, 0, 0, 1, 1}, VAL_ATTR, 0.0f, "constant", 1, {0, 0, 0, 0}, 1, -1, 0, "NOTSET", 1, 0,
       1},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) check(&cases[i]);
}
END_TEST

START_TEST(test_pad_pool_folds) {
  static const pcase cases[] = {
      {"AveragePool, pads 0, count_include_pad absent (PyTorch's export)", 13, "AveragePool",
       PADS_INIT, {0, 0, 1, 1, 0, 0, 1, 1}, VAL_ABSENT, 0.0f, "constant", 1, {0, 0, 0, 0}, 1, -1, 0,
       NULL, 0, 0, 1},
      {"AveragePool counting its own pads, stride 2", 13, "AveragePool", PADS_INIT,
       {0, 0, 0, 2, 0, 0, 1, 0}, VAL_INIT, 0.0f, NULL, 1, {1, 1, 0, 1}, 2, 1, 0, NULL, 0, 0, 1},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) check(&cases[i]);
}
END_TEST

START_TEST(test_pad_kept) {
  static const pcase cases[] = {
      {"value 1", 13, "Conv", PADS_INIT, {0, 0, 1, 1, 0, 0, 1, 1}, VAL_INIT, 1.0f, NULL, 0, {0}, 1,
       -1, 0, NULL, 0, 0, 0},
      {"value 1 as an attribute", 9, "Conv", PADS_ATTR, {0, 0, 1, 1, 0, 0, 1, 1}, VAL_ATTR, 1.0f,
       NULL, 0, {0}, 1, -1, 0, NULL, 0, 0, 0},
      {"mode reflect", 13, "Conv", PADS_INIT, {0, 0, 1, 1, 0, 0, 1, 1}, VAL_ABSENT, 0.0f, "reflect", 0,
       {0}, 1, -1, 0, NULL, 0, 0, 0},
      {"channels padded", 13, "AveragePool", PADS_INIT, {0, 1, 1, 1, 0, 0, 1, 1}, VAL_ABSENT, 0.0f,
       NULL, 0, {0}, 1, -1, 0, NULL, 0, 0, 0},
      {"negative pads", 13, "Conv", PADS_INIT, {0, 0, -1, 1, 0, 0, 1, 1}, VAL_ABSENT, 0.0f, NULL, 0,
       {0}, 1, -1, 0, NULL, 0, 0, 0},
      {"pads a graph input", 13, "Conv", PADS_INPUT, {0, 0, 1, 1, 0, 0, 1, 1}, VAL_ABSENT, 0.0f, NULL,
       0, {0}, 1, -1, 0, NULL, 0, 0, 0},
      {"the padded tensor a graph output", 13, "Conv", PADS_INIT, {0, 0, 1, 1, 0, 0, 1, 1}, VAL_ABSENT,
       0.0f, NULL, 0, {0}, 1, -1, 0, NULL, 1, 1, 0},
      {"Conv auto_pad SAME_UPPER", 13, "Conv", PADS_INIT, {0, 0, 1, 1, 0, 0, 1, 1}, VAL_ABSENT, 0.0f,
       NULL, 0, {0}, 1, -1, 0, "SAME_UPPER", 0, 0, 0},
      {"AveragePool not counting its own pads", 13, "AveragePool", PADS_INIT,
       {0, 0, 1, 1, 0, 0, 1, 1}, VAL_ABSENT, 0.0f, NULL, 1, {1, 1, 1, 1}, 1, 0, 0, NULL, 0, 0, 0},
      {"AveragePool ceil mode", 13, "AveragePool", PADS_INIT, {0, 0, 1, 1, 0, 0, 1, 1}, VAL_ABSENT,
       0.0f, NULL, 0, {0}, 2, -1, 1, NULL, 0, 0, 0},
      {"MaxPool", 13, "MaxPool", PADS_INIT, {0, 0, 1, 1, 0, 0, 1, 1}, VAL_ABSENT, 0.0f, NULL, 0, {0},
       1, -1, 0, NULL, 0, 0, 0},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) check(&cases[i]);
}
END_TEST

/* A folded AveragePool by hand: a 1x1x2x2 input padded by one all round,
 * 3x3 windows of stride 1: every window holds the four values and five
 * zeros, so each output is their sum / 9. */
START_TEST(test_pad_pool_by_hand) {
  nbl_model *m = nbl_model_new();
  nbl_model_set_opset(m, "", 13);
  nbl_graph *g = m->graph;
  int64_t dx[4] = {1, 1, 2, 2}, dp[1] = {8}, pads[8] = {0, 0, 1, 1, 0, 0, 1, 1}, ks[2] = {3, 3};
  nbl_id vx = nbl_graph_add_value(g, "x"), vpads = nbl_graph_add_value(g, "pads");
  nbl_id vp = nbl_graph_add_value(g, "p"), vy = nbl_graph_add_value(g, "y");
  nbl_type_set_tensor(m->arena, &g->values[vx].type, NBL_DT_FLOAT, 4, dx);
  nbl_graph_add_input(g, vx);
  nbl_graph_set_initializer(g, vpads, nbl_tensor_new(m->arena, "pads", NBL_DT_INT64, 1, dp, pads));
  nbl_id pin[2] = {vx, vpads};
  nbl_graph_add_node(g, "Pad", "", "pad", 2, pin, 1, &vp);
  nbl_id a = nbl_graph_add_node(g, "AveragePool", "", "avg", 1, &vp, 1, &vy);
  nbl_node_set_attr_ints(g, a, "kernel_shape", 2, ks);
  nbl_graph_add_output(g, vy);
  float x[4] = {1.0f, 2.0f, 4.0f, 11.0f};
  nbl_host_tensor feed = {.name = "x", .dtype = NBL_DT_FLOAT, .rank = 4, .data = x, .nbytes = sizeof x};
  memcpy(feed.dims, dx, sizeof dx);
  nbl_session_options opt = {.threads = 1, .profile = 1};
  nbl_session *s = NULL;
  ck_assert_msg(nbl_session_create(m, &opt, &s) == NBL_OK, "%s", nbl_last_error());
  const nbl_host_tensor *res = NULL;
  ck_assert_msg(nbl_session_run(s, 1, &feed, &res) == NBL_OK, "%s", nbl_last_error());
  ck_assert_int_eq(res[0].rank, 4);
  ck_assert_int_eq(res[0].dims[2], 2);
  ck_assert_int_eq(res[0].dims[3], 2);
  const float *y = res[0].data;
  for (int i = 0; i < 4; i++) ck_assert_float_eq_tol(y[i], 18.0f / 9.0f, 1e-6f);
  char *text = ft_profile(s);
  ck_assert_msg(!strstr(text, "\nPad "), "the Pad ran:\n%s", text);
  free(text);
  nbl_session_free(s);
  nbl_model_free(m);
}
END_TEST

int main(void) {
  Suite *s = suite_create("fuse_pad");
  TCase *tc = tcase_create("all");
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, test_pad_conv_folds);
  tcase_add_test(tc, test_pad_pool_folds);
  tcase_add_test(tc, test_pad_kept);
  tcase_add_test(tc, test_pad_pool_by_hand);
  suite_add_tcase(s, tc);
  SRunner *r = srunner_create(s);
  srunner_run_all(r, CK_NORMAL);
  int nf = srunner_ntests_failed(r);
  srunner_free(r);
  return nf ? 1 : 0;
}
