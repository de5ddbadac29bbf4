/* test_grad.c - automatic differentiation (runtime/core/grad.h, the
 * build-training pass): every op table entry has a gradient rule or a reason;
 * every rule against central finite differences in float64 through the whole
 * generated training graph (tests/train/grad_fd.h); the structure the
 * contract fixes (names, bindings, the optimizer part); bad input. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/core/grad.h"
#include "runtime/core/kernel.h"
#include "train/grad_fd.h"
#include "test_model.h"

#include "grad_case.h"
#include "ck_elem.h"

/* ------------------------------------------------------------------ the op table */

START_TEST(test_table_every_op_has_rule_or_reason) {
  int missing = 0, rules = 0, reasons = 0, not_yet = 0;
  char list[8192] = "", yet[8192] = "";
  for (size_t i = 0; i < nbl_op_count(); i++) {
    const nbl_op_def *d = nbl_op_at(i);
    if (d->grad) {
      rules++;
      continue;
    }
    if (d->no_grad && d->no_grad[0]) {
      reasons++;
      if (strstr(d->no_grad, "no rule yet")) {
        not_yet++;
        size_t l = strlen(yet);
        snprintf(yet + l, sizeof yet - l, " %s%s%s", d->domain[0] ? d->domain : "", d->domain[0] ? ":" : "", d->name);
      }
      continue;
    }
    missing++;
    size_t l = strlen(list);
    snprintf(list + l, sizeof list - l, " %s%s%s(%d)", d->domain[0] ? d->domain : "", d->domain[0] ? ":" : "",
             d->name, d->since_version);
  }
  printf("op table: %zu entries, %d gradient rules, %d without (%d of them \"no rule yet\":%s)\n",
         nbl_op_count(), rules, reasons, not_yet, yet);
  ck_assert_msg(missing == 0, "%d op table entries have neither a gradient rule nor a no_grad reason:%s",
                missing, list);
}
END_TEST

/* ------------------------------------------------------------------ products */

START_TEST(test_fd_gemm) {
  static const struct {
    int ta, tb;
    float alpha, beta;
    int crank;
    int64_t c0, c1;
  } v[] = {{0, 0, 1, 1, 1, 5, 0}, {0, 1, 1, 1, 2, 3, 5}, {1, 0, 0.5f, 2, 2, 1, 5},
           {1, 1, 1.5f, 1, 0, 0, 0}, {0, 0, 1, 0.5f, 2, 3, 1}};
  for (size_t k = 0; k < sizeof v / sizeof v[0]; k++) {
    fd_case c;
    fd_begin(&c, 13);
    int64_t a[2] = {v[k].ta ? 4 : 3, v[k].ta ? 3 : 4}, b[2] = {v[k].tb ? 5 : 4, v[k].tb ? 4 : 5};
    fd_param(&c, 2, a);
    fd_param(&c, 2, b);
    int64_t cd[2] = {v[k].c0, v[k].c1};
    fd_param(&c, v[k].crank, v[k].crank == 1 ? (int64_t[]){5} : cd);
    fd_node(&c, "Gemm", 1);
    attr_i(&c, "transA", v[k].ta);
    attr_i(&c, "transB", v[k].tb);
    attr_f(&c, "alpha", v[k].alpha);
    attr_f(&c, "beta", v[k].beta);
    char what[64];
    snprintf(what, sizeof what, "Gemm transA=%d transB=%d C rank %d", v[k].ta, v[k].tb, v[k].crank);
    expect_fd(&c, what);
  }
}
END_TEST

START_TEST(test_fd_matmul) {
  static const struct {
    int ra, rb;
    int64_t a[4], b[4];
  } v[] = {{2, 2, {3, 4}, {4, 5}},          {3, 3, {2, 3, 4}, {2, 4, 5}}, {3, 2, {2, 3, 4}, {4, 5}},
           {2, 3, {3, 4}, {2, 4, 5}},       {3, 3, {1, 3, 4}, {2, 4, 5}}, {1, 2, {4}, {4, 5}},
           {2, 1, {3, 4}, {4}},             {1, 1, {4}, {4}},             {4, 3, {2, 1, 3, 4}, {3, 4, 2}},
           {1, 3, {4}, {2, 4, 5}}};
  for (size_t k = 0; k < sizeof v / sizeof v[0]; k++) {
    fd_case c;
    fd_begin(&c, 13);
    fd_param(&c, v[k].ra, v[k].a);
    fd_param(&c, v[k].rb, v[k].b);
    fd_node(&c, "MatMul", 1);
    char what[64];
    snprintf(what, sizeof what, "MatMul rank %d x rank %d (case %zu)", v[k].ra, v[k].rb, k);
    expect_fd(&c, what);
  }
}
END_TEST

typedef struct conv_v {
  const char *what;
  int rank; /* of X */
  int64_t x[5], w[5];
  int bias;
  int64_t group, stride, pad, dil;
  const char *auto_pad;
} conv_v;

static void conv_case(const conv_v *v, const char *op) {
  fd_case c;
  fd_begin(&c, 13);
  fd_param(&c, v->rank, v->x);
  fd_param(&c, v->rank, v->w);
  if (v->bias) fd_param(&c, 1, (int64_t[]){!strcmp(op, "Conv") ? v->w[0] : v->w[1] * v->group});
  fd_node(&c, op, 1);
  int ns = v->rank - 2;
  int64_t s[3], p[6], d[3];
  for (int i = 0; i < ns; i++) {
    s[i] = v->stride;
    d[i] = v->dil;
    p[i] = p[i + ns] = v->pad;
  }
  attr_i(&c, "group", v->group);
  ints(&c, "strides", ns, s);
  ints(&c, "dilations", ns, d);
  if (v->auto_pad)
    attr_s(&c, "auto_pad", v->auto_pad);
  else
    ints(&c, "pads", 2 * ns, p);
  char what[80];
  snprintf(what, sizeof what, "%s %s", op, v->what);
  expect_fd(&c, what);
}

START_TEST(test_fd_conv) {
  static const conv_v v[] = {
      {"plain 3x3", 4, {2, 3, 6, 6}, {4, 3, 3, 3}, 1, 1, 1, 0, 1, NULL},
      {"strided padded", 4, {2, 3, 7, 7}, {4, 3, 3, 3}, 1, 1, 2, 1, 1, NULL},
      {"dilated", 4, {1, 2, 7, 7}, {3, 2, 3, 3}, 1, 1, 1, 1, 2, NULL},
      {"grouped", 4, {2, 4, 5, 5}, {6, 2, 3, 3}, 1, 2, 1, 1, 1, NULL},
      {"depthwise", 4, {2, 3, 5, 5}, {3, 1, 3, 3}, 1, 3, 2, 1, 1, NULL},
      {"1-D", 3, {2, 3, 9}, {2, 3, 4}, 1, 1, 2, 1, 1, NULL},
      {"SAME_UPPER", 4, {1, 2, 5, 5}, {2, 2, 2, 2}, 0, 1, 2, 0, 1, "SAME_UPPER"},
      {"no bias 1x1", 4, {2, 3, 4, 4}, {5, 3, 1, 1}, 0, 1, 1, 0, 1, NULL},
  };
  for (size_t k = 0; k < sizeof v / sizeof v[0]; k++) conv_case(&v[k], "Conv");
}
END_TEST

START_TEST(test_fd_conv_transpose) {
  static const conv_v v[] = {
      {"plain", 4, {2, 3, 4, 4}, {3, 2, 3, 3}, 1, 1, 1, 0, 1, NULL},
      {"strided padded", 4, {1, 2, 4, 4}, {2, 3, 3, 3}, 1, 1, 2, 1, 1, NULL},
      {"grouped", 4, {1, 4, 3, 3}, {4, 1, 3, 3}, 1, 2, 2, 0, 1, NULL},
      {"dilated 1-D", 3, {2, 2, 5}, {2, 2, 3}, 1, 1, 1, 0, 2, NULL},
  };
  for (size_t k = 0; k < sizeof v / sizeof v[0]; k++) conv_case(&v[k], "ConvTranspose");
}
END_TEST

/* ------------------------------------------------------------------ elementwise */

START_TEST(test_fd_unary) {
  unary("Relu", 13, -1, 1, NULL, 0, NULL, NULL);
  unary("LeakyRelu", 13, -1, 1, "alpha", 0.1, NULL, NULL);
  unary("Sigmoid", 13, -3, 3, NULL, 0, NULL, NULL);
  unary("Tanh", 13, -2, 2, NULL, 0, NULL, NULL);
  unary("Gelu", 20, -3, 3, NULL, 0, "approximate", "none");
  unary("Gelu", 20, -3, 3, NULL, 0, "approximate", "tanh");
  unary("Erf", 13, -2, 2, NULL, 0, NULL, NULL);
  unary("Exp", 13, -2, 2, NULL, 0, NULL, NULL);
  unary("Log", 13, 0.5, 3, NULL, 0, NULL, NULL);
  unary("Sqrt", 13, 0.5, 3, NULL, 0, NULL, NULL);
  unary("Abs", 13, -1, 1, NULL, 0, NULL, NULL);
  unary("Neg", 13, -1, 1, NULL, 0, NULL, NULL);
  unary("Reciprocal", 13, 0.5, 2, NULL, 0, NULL, NULL);
  unary("Sin", 13, -3, 3, NULL, 0, NULL, NULL);
  unary("Cos", 13, -3, 3, NULL, 0, NULL, NULL);
  unary("Softplus", 13, -3, 3, NULL, 0, NULL, NULL);
  unary("Softsign", 13, -3, 3, NULL, 0, NULL, NULL);
  /* both sides of the kinks (exactly at them: test_hard_activation_kinks) */
  unary("HardSigmoid", 13, -4, 4, NULL, 0, NULL, NULL);
  unary("HardSigmoid", 13, -4, 4, "alpha", 1.0 / 6, NULL, NULL);
  unary("HardSwish", 14, -5, 5, NULL, 0, NULL, NULL);
  unary("Identity", 13, -1, 1, NULL, 0, NULL, NULL);
}
END_TEST

static void binary(const char *op, int ra, const int64_t *a, int rb, const int64_t *b, double lo) {
  fd_case c;
  fd_begin(&c, 14);
  fd_param_range(&c, ra, a, lo, 2);
  fd_param_range(&c, rb, b, lo, 2);
  fd_node(&c, op, 1);
  char what[80];
  snprintf(what, sizeof what, "%s rank %d with rank %d (%lld, %lld)", op, ra, rb,
           (long long)(ra ? a[0] : 0), (long long)(rb ? b[0] : 0));
  expect_fd(&c, what);
}

START_TEST(test_fd_binary_broadcast) {
  const char *ops[] = {"Add", "Sub", "Mul", "Div", "Pow"};
  for (int k = 0; k < 5; k++) {
    double lo = !strcmp(ops[k], "Div") || !strcmp(ops[k], "Pow") ? 0.5 : -2;
    binary(ops[k], D(2, 3, 4), D(2, 3, 4), lo);
    binary(ops[k], D(2, 3, 4), D(3, 1), lo);
    binary(ops[k], D(1, 3), D(2, 1), lo);
    binary(ops[k], D(4), D(2, 3, 4), lo);
    binary(ops[k], 0, NULL, D(2, 3), lo);
  }
}
END_TEST

START_TEST(test_fd_where_clip_sum_mean) {
  fd_case c;
  fd_begin(&c, 13);
  uint8_t cond[6] = {1, 0, 0, 1, 1, 0};
  fd_const(&c, NBL_DT_BOOL, D(2, 3), cond);
  fd_param(&c, D(2, 3));
  fd_param(&c, D(3));
  fd_node(&c, "Where", 1);
  expect_fd(&c, "Where (broadcast)");

  fd_begin(&c, 13);
  fd_param_range(&c, D(3, 4), -2, 2);
  fd_f64(&c, 0, NULL, (double[]){-0.7});
  fd_f64(&c, 0, NULL, (double[]){0.9});
  fd_node(&c, "Clip", 1);
  expect_fd(&c, "Clip min and max");

  fd_begin(&c, 13);
  fd_param(&c, D(2, 3));
  fd_param(&c, D(3));
  fd_param(&c, D(2, 1));
  fd_node(&c, "Sum", 1);
  expect_fd(&c, "Sum of 3 (broadcast)");

  fd_begin(&c, 13);
  fd_param(&c, D(2, 3));
  fd_param(&c, D(1, 3));
  fd_node(&c, "Mean", 1);
  expect_fd(&c, "Mean of 2 (broadcast)");
}
END_TEST

/* ------------------------------------------------------------------ pooling and normalization */

static void pool_case(const char *what, const char *op, int64_t k, int64_t s, int64_t p, int ceil,
                      int64_t dil, int cip) {
  fd_case c;
  fd_begin(&c, 13);
  fd_param(&c, D(2, 2, 6, 6));
  fd_node(&c, op, 1);
  ints(&c, "kernel_shape", 2, (int64_t[]){k, k});
  ints(&c, "strides", 2, (int64_t[]){s, s});
  ints(&c, "pads", 4, (int64_t[]){p, p, p, p});
  if (ceil) attr_i(&c, "ceil_mode", 1);
  if (dil > 1) ints(&c, "dilations", 2, (int64_t[]){dil, dil});
  if (cip) attr_i(&c, "count_include_pad", 1);
  expect_fd(&c, what);
}

START_TEST(test_fd_pooling) {
  pool_case("MaxPool 2x2/2", "MaxPool", 2, 2, 0, 0, 1, 0);
  pool_case("MaxPool 3x3/1 pad 1", "MaxPool", 3, 1, 1, 0, 1, 0);
  pool_case("MaxPool 3x3/2 ceil", "MaxPool", 3, 2, 0, 1, 1, 0);
  pool_case("MaxPool 2x2 dilated 2", "MaxPool", 2, 1, 0, 0, 2, 0);
  pool_case("AveragePool 2x2/2", "AveragePool", 2, 2, 0, 0, 1, 0);
  pool_case("AveragePool 3x3/2 pad 1", "AveragePool", 3, 2, 1, 0, 1, 0);
  pool_case("AveragePool 3x3/2 pad 1 incl pad", "AveragePool", 3, 2, 1, 0, 1, 1);
  pool_case("AveragePool 3x3/2 ceil", "AveragePool", 3, 2, 0, 1, 1, 0);
  fd_case c;
  fd_begin(&c, 13);
  fd_param(&c, D(2, 3, 4, 5));
  fd_node(&c, "GlobalAveragePool", 1);
  expect_fd(&c, "GlobalAveragePool");
  fd_begin(&c, 13);
  fd_param(&c, D(2, 3, 4, 5));
  fd_node(&c, "GlobalMaxPool", 1);
  expect_fd(&c, "GlobalMaxPool");
  fd_begin(&c, 13);
  fd_param_data(&c, D(1, 2, 2, 2), (double[]){1, 3, 3, 2, -1, -4, 0.5, -2});
  fd_node(&c, "GlobalMaxPool", 1);
  expect_fd_kink(&c, "GlobalMaxPool with a tie");
}
END_TEST

START_TEST(test_fd_batchnorm_training) {
  /* the inference BatchNormalization becomes BatchNormInternal (batch
   * statistics): the gradient flows through the batch mean and variance */
  for (int r = 2; r <= 4; r++) {
    fd_case c;
    fd_begin(&c, 15);
    int64_t x[4] = {4, 3, 3, 2};
    fd_param(&c, r, x);
    fd_param_range(&c, D(3), 0.5, 1.5);
    fd_param(&c, D(3));
    fd_f64(&c, D(3), (double[]){0.1, -0.2, 0.3});
    fd_f64(&c, D(3), (double[]){1.1, 0.9, 1.3});
    /* rank 3: a node exported in training mode already (training_mode=1,
     * its new running statistics as outputs 1 and 2) */
    fd_node(&c, "BatchNormalization", r == 3 ? 3 : 1);
    attr_f(&c, "epsilon", 1e-3f);
    if (r == 3) attr_i(&c, "training_mode", 1);
    char what[64];
    snprintf(what, sizeof what, "BatchNormalization training, rank %d%s", r, r == 3 ? " (training_mode=1)" : "");
    expect_fd(&c, what);
  }
}
END_TEST

START_TEST(test_fd_layernorm) {
  for (int axis = -1; axis >= -2; axis--) {
    fd_case c;
    fd_begin(&c, 17);
    fd_param(&c, D(2, 3, 4));
    if (axis == -1) {
      fd_param_range(&c, D(4), 0.5, 1.5);
      fd_param(&c, D(4));
    } else {
      fd_param_range(&c, D(3, 4), 0.5, 1.5);
      fd_param(&c, D(3, 4));
    }
    fd_node(&c, "LayerNormalization", 1);
    attr_i(&c, "axis", axis);
    char what[64];
    snprintf(what, sizeof what, "LayerNormalization axis %d", axis);
    expect_fd(&c, what);
  }
}
END_TEST

/* ------------------------------------------------------------------ reductions, softmax, losses */

static void reduce_case(const char *op, int opset, int na, const int64_t *axes, int keepdims) {
  fd_case c;
  fd_begin(&c, opset);
  fd_param_range(&c, D(2, 3, 4), 0.5, 2);
  int axes_input = (!strcmp(op, "ReduceSum") && opset >= 13) || opset >= 18;
  if (axes_input && na) fd_i64(&c, D(na), axes);
  fd_node(&c, op, 1);
  if (!axes_input && na) ints(&c, "axes", na, axes);
  attr_i(&c, "keepdims", keepdims);
  char what[80];
  snprintf(what, sizeof what, "%s opset %d axes %d keepdims %d", op, opset, na ? (int)axes[0] : -9, keepdims);
  expect_fd(&c, what);
}

START_TEST(test_fd_reduce) {
  const char *ops[] = {"ReduceSum", "ReduceMean", "ReduceSumSquare", "ReduceL1", "ReduceL2",
                       "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMin"};
  for (int k = 0; k < 9; k++) {
    reduce_case(ops[k], 13, 1, (int64_t[]){1}, 1);
    reduce_case(ops[k], 13, 2, (int64_t[]){-1, 0}, 0);
    reduce_case(ops[k], 18, 0, NULL, 0);
  }
  reduce_case("ReduceSum", 11, 1, (int64_t[]){2}, 0);
  reduce_case("ReduceMean", 11, 1, (int64_t[]){1}, 0);
}
END_TEST

START_TEST(test_fd_softmax) {
  const char *ops[] = {"Softmax", "LogSoftmax"};
  for (int k = 0; k < 2; k++)
    for (int opset = 11; opset <= 13; opset += 2)
      for (int axis = 1; axis <= 2; axis++) {
        fd_case c;
        fd_begin(&c, opset);
        fd_param_range(&c, D(2, 3, 4), -2, 2);
        fd_node(&c, ops[k], 1);
        attr_i(&c, "axis", axis);
        char what[64];
        snprintf(what, sizeof what, "%s opset %d axis %d", ops[k], opset, axis);
        expect_fd(&c, what);
      }
}
END_TEST

START_TEST(test_fd_losses) {
  static const int64_t lab[6] = {1, 0, 4, 2, 2, 3};
  const char *red[] = {"mean", "sum"};
  for (int k = 0; k < 2; k++)
    for (int w = 0; w < 2; w++)
      for (int ig = 0; ig < 2; ig++) {
        fd_case c;
        fd_begin(&c, 13);
        c.loss_output = 1;
        fd_param_range(&c, D(6, 5), -2, 2);
        fd_i64(&c, D(6), lab);
        if (w) fd_f64(&c, D(5), (double[]){0.5, 1, 2, 1.5, 0.7});
        fd_node(&c, "SoftmaxCrossEntropyLoss", 1);
        attr_s(&c, "reduction", red[k]);
        if (ig) attr_i(&c, "ignore_index", 2);
        char what[80];
        snprintf(what, sizeof what, "SoftmaxCrossEntropyLoss %s%s%s", red[k], w ? " weights" : "",
                 ig ? " ignore_index" : "");
        expect_fd(&c, what);

        fd_begin(&c, 13);
        c.loss_output = 1;
        fd_param_range(&c, D(6, 5), -3, 0);
        fd_i64(&c, D(6), lab);
        if (w) fd_f64(&c, D(5), (double[]){0.5, 1, 2, 1.5, 0.7});
        fd_node(&c, "NegativeLogLikelihoodLoss", 1);
        attr_s(&c, "reduction", red[k]);
        if (ig) attr_i(&c, "ignore_index", 2);
        snprintf(what, sizeof what, "NegativeLogLikelihoodLoss %s%s%s", red[k], w ? " weights" : "",
                 ig ? " ignore_index" : "");
        expect_fd(&c, what);
      }
  /* [N, C, d] scores */
  fd_case c;
  fd_begin(&c, 13);
  c.loss_output = 1;
  fd_param_range(&c, D(2, 4, 3), -2, 2);
  fd_i64(&c, D(2, 3), (int64_t[]){3, 0, 1, 2, 2, 1});
  fd_node(&c, "SoftmaxCrossEntropyLoss", 1);
  expect_fd(&c, "SoftmaxCrossEntropyLoss [N, C, d]");
}
END_TEST

/* ------------------------------------------------------------------ data movement */


START_TEST(test_fd_shape_ops) {
  fd_case c;
  fd_begin(&c, 13);
  fd_param(&c, D(2, 3, 4));
  fd_i64(&c, D(2), (int64_t[]){4, -1});
  fd_node(&c, "Reshape", 1);
  expect_fd(&c, "Reshape");

  fd_begin(&c, 13);
  fd_param(&c, D(2, 3, 4));
  fd_node(&c, "Flatten", 1);
  attr_i(&c, "axis", 2);
  expect_fd(&c, "Flatten axis 2");

  fd_begin(&c, 13);
  fd_param(&c, D(2, 1, 4));
  fd_i64(&c, D(1), (int64_t[]){1});
  fd_node(&c, "Squeeze", 1);
  expect_fd(&c, "Squeeze");

  fd_begin(&c, 11);
  fd_param(&c, D(2, 4));
  fd_node(&c, "Unsqueeze", 1);
  ints(&c, "axes", 2, (int64_t[]){0, 2});
  expect_fd(&c, "Unsqueeze (opset 11)");

  fd_begin(&c, 13);
  fd_param(&c, D(2, 3, 4));
  fd_node(&c, "Transpose", 1);
  ints(&c, "perm", 3, (int64_t[]){1, 2, 0});
  expect_fd(&c, "Transpose perm 1,2,0");

  fd_begin(&c, 13);
  fd_param(&c, D(2, 3, 4));
  fd_node(&c, "Transpose", 1);
  expect_fd(&c, "Transpose default perm");

  fd_begin(&c, 13);
  fd_param(&c, D(2, 1, 4));
  fd_param(&c, D(2, 3, 4));
  fd_param(&c, D(2, 2, 4));
  fd_node(&c, "Concat", 1);
  attr_i(&c, "axis", 1);
  expect_fd(&c, "Concat of 3, axis 1");

  fd_begin(&c, 13);
  fd_param(&c, D(2, 6));
  fd_i64(&c, D(3), (int64_t[]){1, 3, 2});
  fd_node(&c, "Split", 3);
  attr_i(&c, "axis", 1);
  expect_fd(&c, "Split (one output used)");

  fd_begin(&c, 13);
  fd_param(&c, D(4, 6));
  fd_i64(&c, D(2), (int64_t[]){1, -1});
  fd_i64(&c, D(2), (int64_t[]){4, -6});
  fd_i64(&c, D(2), (int64_t[]){0, 1});
  fd_i64(&c, D(2), (int64_t[]){2, -2});
  fd_node(&c, "Slice", 1);
  expect_fd(&c, "Slice steps 2 and -2");

  fd_begin(&c, 9);
  fd_param(&c, D(4, 6));
  fd_node(&c, "Slice", 1);
  ints(&c, "starts", 2, (int64_t[]){1, 2});
  ints(&c, "ends", 2, (int64_t[]){3, 100});
  expect_fd(&c, "Slice (opset 9 attributes)");

  fd_begin(&c, 13);
  fd_param(&c, D(3, 5));
  fd_i64(&c, D(2, 2), (int64_t[]){4, 0, 4, -1});
  fd_node(&c, "Gather", 1);
  attr_i(&c, "axis", 1);
  expect_fd(&c, "Gather axis 1, repeated and negative indices");

  fd_begin(&c, 13);
  fd_param(&c, D(2, 3));
  fd_i64(&c, D(4), (int64_t[]){1, 0, 2, 3});
  fd_node(&c, "Pad", 1);
  expect_fd(&c, "Pad constant");

  fd_begin(&c, 13);
  fd_param(&c, D(3, 1));
  fd_i64(&c, D(3), (int64_t[]){2, 3, 4});
  fd_node(&c, "Expand", 1);
  expect_fd(&c, "Expand");

  fd_begin(&c, 13);
  fd_param(&c, D(2, 3));
  fd_i64(&c, 0, NULL, (int64_t[]){1});
  fd_node(&c, "CumSum", 1);
  attr_i(&c, "reverse", 1);
  expect_fd(&c, "CumSum reverse");
}
END_TEST

START_TEST(test_fd_cast) {
  /* float32 parameter cast to float64: the loss is quadratic, so central
   * differences with a power-of-two step are exact */
  fd_case c;
  fd_begin(&c, 13);
  float x[6] = {0.25f, -0.5f, 0.75f, -0.125f, 0.375f, 0.625f};
  fd_const(&c, NBL_DT_FLOAT, D(2, 3), x);
  c.is_param[0] = 1;
  snprintf(c.trainable, sizeof c.trainable, "x0");
  fd_node(&c, "Cast", 1);
  attr_i(&c, "to", NBL_DT_DOUBLE);
  expect_fd(&c, "Cast float32 -> float64");
}
END_TEST

/* ------------------------------------------------------------------ a small network */

START_TEST(test_fd_chain_shared_values) {
  /* y = Relu(Conv(x)) + Conv(x)  (a value used twice, summed gradients), then
   * Gemm through Flatten: the driver's accumulation and the product's own dY */
  fd_case c;
  fd_begin(&c, 13);
  nbl_graph *g = c.g;
  nbl_id x = fd_param(&c, D(2, 2, 4, 4));
  nbl_id w = fd_param(&c, D(3, 2, 3, 3));
  nbl_id fw = fd_param(&c, D(12, 5));
  nbl_id cv = nbl_graph_add_value(g, "conv"), rl = nbl_graph_add_value(g, "relu");
  nbl_id ad = nbl_graph_add_value(g, "add"), fl = nbl_graph_add_value(g, "flat");
  nbl_id y = nbl_graph_add_value(g, "y");
  nbl_graph_add_node(g, "Conv", "", "conv", 2, (nbl_id[]){x, w}, 1, &cv);
  nbl_graph_add_node(g, "Relu", "", "relu", 1, &cv, 1, &rl);
  nbl_graph_add_node(g, "Add", "", "add", 2, (nbl_id[]){rl, cv}, 1, &ad);
  nbl_graph_add_node(g, "Flatten", "", "flat", 1, &ad, 1, &fl);
  nbl_graph_add_node(g, "MatMul", "", "mm", 2, (nbl_id[]){fl, fw}, 1, &y);
  nbl_graph_add_output(g, y);
  double e = fd_run(&c, "Conv-Relu-Add-Flatten-MatMul");
  /* the structure issue 16 relies on: the Conv's output gradient is its own value */
  nbl_graph *alg = c.m->training[0].algorithm;
  nbl_id cg = nbl_graph_find(alg, "conv_grad");
  ck_assert_int_ne(cg, NBL_NONE);
  for (int i = 0; i < alg->values[cg].n_consumers; i++) {
    const nbl_node *n = &alg->nodes[alg->values[cg].consumers[i]];
    ck_assert_msg(!strncmp(n->name, "conv_grad/", 10), "conv_grad consumed by '%s'", n->name);
  }
  fd_end(&c);
  ck_assert(e >= 0 && e <= TOL);
}
END_TEST


/* ------------------------------------------------------------------ the training model (contract) */

static char *src_path(const char *rel) {
  static char buf[1024];
  const char *root = getenv("NBL_SOURCE_ROOT");
  snprintf(buf, sizeof buf, "%s/%s", root ? root : "..", rel);
  return buf;
}

static nbl_status run_spec(nbl_model *m, const char *spec) {
  nbl_pipeline *p = NULL;
  FILE *devnull = fopen("/dev/null", "w");
  nbl_pipeline_options po = {.out = devnull, .log = devnull, .verify_each = 1};
  nbl_status st = nbl_pipeline_parse(spec, &p);
  if (!st) st = nbl_pipeline_run(p, m, &po);
  nbl_pipeline_free(p);
  fclose(devnull);
  return st;
}

static int is_opt_node(const nbl_node *n) {
  return !strcmp(n->domain, "ai.onnx.preview.training") || !strcmp(n->op_type, "Mul") ||
         !strcmp(n->op_type, "Sub") || !strcmp(n->op_type, "Add");
}

static const char *binding(const nbl_kv *kv, int n, const char *key) {
  for (int i = 0; i < n; i++)
    if (!strcmp(kv[i].key, key)) return kv[i].value;
  return NULL;
}

START_TEST(test_lenet_training_model) {
  nbl_model *m = NULL, *orig = NULL;
  ck_assert_int_eq(nbl_model_load(src_path("models/lenet5.onnx"), &m), NBL_OK);
  ck_assert_int_eq(nbl_model_load(src_path("models/lenet5.onnx"), &orig), NBL_OK);
  nbl_status st = run_spec(m, "build-training{optimizer=momentum,trainable=classifier.*|features.3.*,"
                              "frozen=classifier.5.bias,weight-decay=0.0005}");
  ck_assert_msg(st == NBL_OK, "%s", nbl_last_error());
  ck_assert_int_eq(m->n_training, 1);
  const nbl_training_info *ti = &m->training[0];
  const nbl_graph *alg = ti->algorithm, *g = m->graph;
  /* inputs: data, label, lr, step; output 0: the float scalar loss */
  ck_assert_int_eq(alg->n_inputs, 4);
  const char *want_in[4] = {"input", "label", "lr", "step"};
  for (int i = 0; i < 4; i++) ck_assert_str_eq(alg->values[alg->inputs[i]].name, want_in[i]);
  ck_assert_int_eq(alg->values[alg->inputs[1]].type.elem, NBL_DT_INT64);
  ck_assert_int_eq(alg->values[alg->inputs[3]].type.elem, NBL_DT_INT64);
  const nbl_value *loss = &alg->values[alg->outputs[0]];
  ck_assert_str_eq(loss->name, "loss");
  ck_assert_int_eq(loss->type.elem, NBL_DT_FLOAT);
  ck_assert_int_eq(loss->type.rank, 0);
  ck_assert_int_eq(alg->n_outputs, 1 + ti->n_update_binding);
  /* the inference graph is unchanged, the state is added next to it */
  ck_assert_int_eq(g->n_nodes, orig->graph->n_nodes);
  for (int i = 0; i < g->n_nodes; i++) ck_assert_str_eq(g->nodes[i].op_type, orig->graph->nodes[i].op_type);
  int n_train = 0;
  for (int i = 0; i < orig->graph->n_initializers; i++) {
    const char *p = orig->graph->values[orig->graph->initializers[i]].name;
    int trained = (!strncmp(p, "classifier.", 11) || !strncmp(p, "features.3.", 11)) &&
                  strcmp(p, "classifier.5.bias") != 0;
    char gname[256], sname[256], nname[256];
    snprintf(gname, sizeof gname, "%s_grad", p);
    snprintf(sname, sizeof sname, "%s.momentum", p);
    snprintf(nname, sizeof nname, "%s.new", p);
    nbl_id gv = nbl_graph_find(alg, gname);
    if (!trained) {
      ck_assert_msg(gv == NBL_NONE && !binding(ti->update_binding, ti->n_update_binding, p),
                    "frozen '%s' is trained", p);
      ck_assert_int_eq(nbl_graph_find(g, sname), NBL_NONE);
      continue;
    }
    n_train++;
    ck_assert_msg(gv != NBL_NONE, "no '%s'", gname);
    /* gradients are read by the optimizer part only */
    for (int k = 0; k < alg->values[gv].n_consumers; k++)
      ck_assert_msg(is_opt_node(&alg->nodes[alg->values[gv].consumers[k]]), "'%s' read by %s", gname,
                    alg->nodes[alg->values[gv].consumers[k]].op_type);
    ck_assert_str_eq(binding(ti->update_binding, ti->n_update_binding, p), nname);
    char snew[300];
    snprintf(snew, sizeof snew, "%s.new", sname);
    ck_assert_str_eq(binding(ti->update_binding, ti->n_update_binding, sname), snew);
    nbl_id sv = nbl_graph_find(g, sname);
    ck_assert_int_ne(sv, NBL_NONE);
    const nbl_tensor *st_t = g->values[sv].init, *p_t = g->values[nbl_graph_find(g, p)].init;
    ck_assert_ptr_nonnull(st_t);
    ck_assert_int_eq(nbl_tensor_numel(st_t), nbl_tensor_numel(p_t));
    for (int64_t k = 0; k < nbl_tensor_numel(st_t); k++) ck_elem(nbl_tensor_get_f64(st_t, k) == 0.0);
    ck_assert_ptr_nonnull(binding(ti->init_binding, ti->n_init_binding, sname));
  }
  ck_assert_int_eq(n_train, 7);
  ck_assert_int_eq(ti->n_update_binding, 2 * n_train);
  /* Momentum nodes: PyTorch's SGD momentum (dampening 0) with L2 decay */
  int n_mom = 0;
  for (int i = 0; i < alg->n_nodes; i++) {
    const nbl_node *n = &alg->nodes[i];
    if (n->dead || strcmp(n->op_type, "Momentum")) continue;
    n_mom++;
    ck_assert_str_eq(nbl_attr_string(n, "mode", ""), "standard");
    ck_assert(fabsf(nbl_attr_float(n, "alpha", 0) - 0.9f) < 1e-7f);
    ck_assert(nbl_attr_float(n, "beta", 0) == 1.0f);
    ck_assert(fabsf(nbl_attr_float(n, "norm_coefficient", 0) - 0.0005f) < 1e-9f);
    ck_assert_str_eq(alg->values[n->inputs[0]].name, "lr");
    ck_assert_str_eq(alg->values[n->inputs[1]].name, "step");
  }
  ck_assert_int_eq(n_mom, n_train);
  /* room for issue 16: every trained Conv / Gemm gets its output gradient as
   * a value of its own, "<Y>_grad", read only by its backward nodes, which
   * are named ".../dX", ".../dW", ".../dXdW" or ".../dB" */
  int n_prod = 0;
  for (int i = 0; i < alg->n_nodes; i++) {
    const nbl_node *n = &alg->nodes[i];
    if (n->dead || (strcmp(n->op_type, "Conv") && strcmp(n->op_type, "Gemm")) || strstr(n->name, "_grad/")) continue;
    if (!strncmp(n->name, "/features/features.0", 20)) continue; /* frozen: no backward */
    char yg[512], pre[512];
    snprintf(yg, sizeof yg, "%s_grad", alg->values[n->outputs[0]].name);
    snprintf(pre, sizeof pre, "%s_grad/", n->name);
    nbl_id v = nbl_graph_find(alg, yg);
    ck_assert_msg(v != NBL_NONE, "no '%s'", yg);
    ck_assert_int_gt(alg->values[v].n_consumers, 0);
    for (int k = 0; k < alg->values[v].n_consumers; k++) {
      const char *cn = alg->nodes[alg->values[v].consumers[k]].name;
      ck_assert_msg(!strncmp(cn, pre, strlen(pre)), "'%s' is read by '%s'", yg, cn);
      const char *tag = cn + strlen(pre);
      ck_assert_msg(!strcmp(tag, "dX") || !strcmp(tag, "dW") || !strcmp(tag, "dXdW") || !strcmp(tag, "dB") ||
                        !strncmp(tag, "ReduceSum", 9),
                    "backward node '%s'", cn);
    }
    n_prod++;
  }
  ck_assert_int_eq(n_prod, 4);
  /* saved as ONNX and loaded back: the same model */
  nbl_model *back = tm_saved_and_loaded(m);
  /* a pass pipeline after it keeps the state (dce knows what training reads) */
  ck_assert_int_eq(run_spec(back, "default"), NBL_OK);
  ck_assert_int_ne(nbl_graph_find(back->graph, "classifier.1.weight.momentum"), NBL_NONE);
  nbl_model_free(back);
  nbl_model_free(m);
  nbl_model_free(orig);
}
END_TEST

START_TEST(test_every_optimizer_builds) {
  const char *opts[] = {"sgd", "momentum", "nesterov", "adam", "adamw", "adagrad"};
  const char *state[] = {NULL, ".momentum", ".momentum", ".adam_v", ".adam_m", ".adagrad_h"};
  for (int k = 0; k < 6; k++) {
    nbl_model *m = NULL;
    ck_assert_int_eq(nbl_model_load(src_path("models/lenet5.onnx"), &m), NBL_OK);
    char spec[200];
    snprintf(spec, sizeof spec, "build-training{optimizer=%s,weight-decay=0.01}", opts[k]);
    nbl_status st = run_spec(m, spec);
    ck_assert_msg(st == NBL_OK, "%s: %s", opts[k], nbl_last_error());
    if (state[k]) {
      char nm[128];
      snprintf(nm, sizeof nm, "features.0.weight%s", state[k]);
      ck_assert_msg(nbl_graph_find(m->graph, nm) != NBL_NONE, "%s: no %s", opts[k], nm);
      ck_assert_ptr_nonnull(m->training[0].initialization);
    } else {
      ck_assert_ptr_null(m->training[0].initialization);
    }
    nbl_model_free(m);
  }
}
END_TEST

/* ------------------------------------------------------------------ QuantizeInt4, Dropout: the formulas */

typedef struct grab {
  int n;
  const char *names[6];
  double *v[6];
  int64_t len[6];
} grab;

static void on_grab(void *user, const char *name, const nbl_rt_tensor *t) {
  grab *g = user;
  for (int i = 0; i < g->n; i++)
    if (!strcmp(name, g->names[i])) {
      free(g->v[i]);
      g->v[i] = malloc(sizeof(double) * (size_t)(t->numel + 1));
      for (int64_t k = 0; k < t->numel; k++) g->v[i][k] = nbl_rt_get_f64(t, k);
      g->len[i] = t->numel;
    }
}

/* Run a training model's algorithm graph once (main initializers bound, a
 * label of zeros); values named in g are caught. */
static void run_alg(nbl_model *m, grab *g, int times) {
  nbl_graph *alg = m->training[0].algorithm;
  nbl_engine_options eo = {.threads = 1, .reference = 1, .on_value = on_grab, .user = g};
  nbl_engine *e = NULL;
  ck_assert_msg(nbl_engine_create(m, alg, &eo, &e) == NBL_OK, "%s", nbl_last_error());
  nbl_rt_tensor views[16];
  for (int i = 0; i < m->graph->n_initializers && i < 16; i++) {
    const nbl_value *v = &m->graph->values[m->graph->initializers[i]];
    if (nbl_graph_find(alg, v->name) == NBL_NONE) continue;
    ck_assert_int_eq(nbl_rt_from_ir(v->init, &views[i]), NBL_OK);
    ck_assert_int_eq(nbl_engine_bind(e, v->name, &views[i]), NBL_OK);
  }
  static double zeros[256];
  static float lr = 0;
  static int64_t step = 1;
  const nbl_value *lab = NULL;
  for (int i = 0; i < alg->n_inputs; i++) {
    const nbl_value *v = &alg->values[alg->inputs[i]];
    if (strcmp(v->name, "lr") && strcmp(v->name, "step")) lab = v;
  }
  ck_assert_ptr_nonnull(lab);
  nbl_rt_tensor tl = {.dtype = lab->type.elem, .rank = lab->type.rank, .data = zeros};
  for (int k = 0; k < tl.rank; k++) tl.dims[k] = lab->type.dims[k].value;
  tl.numel = nbl_shape_numel(tl.rank, tl.dims);
  tl.nbytes = nbl_dtype_nbytes(tl.dtype, tl.numel);
  nbl_rt_tensor tr = {.dtype = NBL_DT_FLOAT, .numel = 1, .data = &lr, .nbytes = 4};
  nbl_rt_tensor ts = {.dtype = NBL_DT_INT64, .numel = 1, .data = &step, .nbytes = 8};
  ck_assert_int_eq(nbl_engine_bind(e, lab->name, &tl), NBL_OK);
  ck_assert_int_eq(nbl_engine_bind(e, "lr", &tr), NBL_OK);
  ck_assert_int_eq(nbl_engine_bind(e, "step", &ts), NBL_OK);
  for (int r = 0; r < times; r++) ck_assert_msg(nbl_engine_run(e) == NBL_OK, "%s", nbl_last_error());
  nbl_engine_free(e);
}

START_TEST(test_quantize_int4_straight_through_and_pact) {
  /* mse against zeros: dL/dY = 2 Y / n */
  for (int pact = 0; pact < 2; pact++) {
    fd_case c;
    fd_begin(&c, 13);
    nbl_model_set_opset(c.m, "ai.nibble", 1);
    float x[16];
    for (int i = 0; i < 16; i++) x[i] = (float)(1.75 * fd_rand() - 0.875);
    x[5] = 0.875f; /* max |x| = 7/8: s = 1/8 and 7 s = max exactly (see the report) */
    fd_const(&c, NBL_DT_FLOAT, D(2, 8), x);
    if (pact) fd_const(&c, NBL_DT_FLOAT, 0, NULL, (float[]){0.5f});
    fd_node_dom(&c, "QuantizeInt4", "ai.nibble", 1);
    if (pact) {
      attr_s(&c, "mode", "affine");
      attr_s(&c, "scale_source", "pact");
    }
    ck_assert_msg(run_spec(c.m, "build-training{loss=mse,label=lab}") == NBL_OK, "%s", nbl_last_error());
    grab g = {.n = 3, .names = {"y0", "x0_grad", "x1_grad"}};
    run_alg(c.m, &g, 1);
    ck_assert_ptr_nonnull(g.v[0]);
    ck_assert_ptr_nonnull(g.v[1]);
    double dalpha = 0;
    for (int i = 0; i < 16; i++) {
      double dy = 2 * g.v[0][i] / 16;
      int inside = pact ? (x[i] >= 0 && x[i] <= 0.5f) : 1; /* symmetric max: every x is inside */
      ck_assert_msg(fabs(g.v[1][i] - (inside ? dy : 0)) <= 1e-7, "x=%g: dX %g, want %g", x[i],
                    g.v[1][i], inside ? dy : 0);
      if (pact && x[i] > 0.5f) dalpha += dy;
    }
    if (pact) {
      ck_assert_ptr_nonnull(g.v[2]);
      ck_assert_msg(fabs(g.v[2][0] - dalpha) <= 1e-6, "dAlpha %g, want %g", g.v[2][0], dalpha);
    }
    printf("QuantizeInt4%s: straight-through%s match the hand formula\n", pact ? " PACT" : "",
           pact ? " and alpha gradient" : "");
    for (int i = 0; i < 3; i++) free(g.v[i]);
    fd_end(&c);
  }
}
END_TEST

START_TEST(test_dropout_training) {
  fd_case c;
  fd_begin(&c, 13);
  fd_param(&c, D(16, 16));
  fd_f64(&c, 0, NULL, (double[]){0.25});
  fd_node(&c, "Dropout", 1);
  ck_assert_msg(run_spec(c.m, "build-training{loss=mse,seed=7}") == NBL_OK, "%s", nbl_last_error());
  nbl_graph *alg = c.m->training[0].algorithm;
  const nbl_node *dn = NULL;
  for (int i = 0; i < alg->n_nodes; i++)
    if (!strcmp(alg->nodes[i].op_type, "Dropout")) dn = &alg->nodes[i];
  ck_assert_ptr_nonnull(dn);
  ck_assert_int_eq(nbl_attr_int(dn, "seed", -1), 7);
  ck_assert_int_eq(dn->n_inputs, 3);
  ck_assert_int_ge(dn->n_outputs, 2);
  const char *mask = alg->values[dn->outputs[1]].name;
  grab g = {.n = 4, .names = {"y0", "", "x0_grad", mask}};
  const nbl_tensor *xt = c.m->graph->values[nbl_graph_find(c.m->graph, "x0")].init;
  run_alg(c.m, &g, 1);
  double *first = malloc(sizeof(double) * 256);
  memcpy(first, g.v[3], sizeof(double) * 256);
  run_alg(c.m, &g, 1); /* same input, same seed: the same mask */
  int kept = 0;
  for (int i = 0; i < 256; i++) {
    ck_assert(first[i] == g.v[3][i]);
    kept += g.v[3][i] != 0;
    double want_y = g.v[3][i] ? nbl_tensor_get_f64(xt, i) / 0.75 : 0;
    ck_assert(fabs(g.v[0][i] - want_y) <= 1e-12);
    double dx = 2 * g.v[0][i] / 256 * (g.v[3][i] ? 1 / 0.75 : 0);
    ck_assert_msg(fabs(g.v[2][i] - dx) <= 1e-12, "element %d: dX %g, want %g", i, g.v[2][i], dx);
  }
  printf("Dropout training (ratio 0.25): %d of 256 kept, dX = dY mask / (1 - ratio) exactly\n", kept);
  ck_assert(kept > 160 && kept < 224); /* 192 expected; 4 sigma = 28 */
  free(first);
  for (int i = 0; i < 4; i++) free(g.v[i]);
  fd_end(&c);
}
END_TEST

/* HardSigmoid and HardSwish at and beside their kinks, where finite
 * differences cannot decide: dX against PyTorch's backward formulas
 * (hardsigmoid_backward: alpha where 0 < alpha x + beta < 1 strictly;
 * hardswish_backward: 0 below -3, x/3 + 1/2 up to 3 inclusive, 1 above). */
START_TEST(test_hard_activation_kinks) {
  static const double xs[16] = {-4, -3.001, -3, -2.999, -2.5, -2.4999, -1, -0.0,
                                0,  0.25,   1.5, 2.4999, 2.5, 2.999, 3, 3.001};
  static const struct {
    const char *op;
    int opset;
    double alpha; /* 0: the default 0.2 */
  } cases[] = {{"HardSigmoid", 13, 0}, {"HardSigmoid", 13, 1.0 / 6}, {"HardSwish", 14, 0}};
  for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
    fd_case c;
    fd_begin(&c, cases[k].opset);
    fd_const(&c, NBL_DT_DOUBLE, D(2, 8), xs);
    fd_node(&c, cases[k].op, 1);
    if (cases[k].alpha) attr_f(&c, "alpha", (float)cases[k].alpha);
    ck_assert_msg(run_spec(c.m, "build-training{loss=mse,label=lab}") == NBL_OK, "%s", nbl_last_error());
    grab g = {.n = 2, .names = {"y0", "x0_grad"}};
    run_alg(c.m, &g, 1);
    ck_assert_ptr_nonnull(g.v[0]);
    ck_assert_ptr_nonnull(g.v[1]);
    double a = (float)(cases[k].alpha ? cases[k].alpha : 0.2), b = 0.5;
    int hs = !strcmp(cases[k].op, "HardSwish");
    for (int i = 0; i < 16; i++) {
      double x = xs[i], t = a * x + b, d;
      if (hs)
        d = x < -3 ? 0 : x <= 3 ? x / 3 + 0.5 : 1;
      else
        d = t > 0 && t < 1 ? a : 0;
      double want = 2 * g.v[0][i] / 16 * d; /* mse against zeros: dL/dY = 2 Y / n */
      ck_assert_msg(fabs(g.v[1][i] - want) <= 1e-15, "%s alpha %g at x = %.17g: dX %.17g, want %.17g", cases[k].op,
                    a, x, g.v[1][i], want);
    }
    printf("%s%s: dX at the kinks as PyTorch's backward\n", cases[k].op, cases[k].alpha ? " (alpha 1/6)" : "");
    for (int i = 0; i < 2; i++) free(g.v[i]);
    fd_end(&c);
  }
}
END_TEST

/* ------------------------------------------------------------------ bad input */

static void expect_error(nbl_model *m, const char *spec, const char *needle) {
  nbl_status st = run_spec(m, spec);
  ck_assert_msg(st != NBL_OK, "%s: accepted", spec);
  ck_assert_msg(strstr(nbl_last_error(), needle), "%s: message '%s' lacks '%s'", spec, nbl_last_error(), needle);
}

/* A model below opset 12 (no SoftmaxCrossEntropyLoss yet) is converted to 13
 * by build-training, whose gradients then hold (the same case at 13 is in
 * test_fd_gemm's family). */
START_TEST(test_old_opset_converted) {
  fd_case c;
  fd_begin(&c, 9);
  fd_param(&c, D(3, 4));
  fd_param(&c, D(4, 5));
  fd_node(&c, "MatMul", 1);
  c.extra = NULL;
  expect_fd(&c, "MatMul at opset 9 (mse)");
  nbl_model *m = nbl_model_new();
  nbl_model_set_opset(m, "", 9);
  nbl_graph *g = m->graph;
  int64_t xd[2] = {2, 4}, wd[2] = {4, 3};
  float w[12] = {0.1f, -0.2f, 0.3f, 0.4f, 0.5f, -0.6f, 0.7f, 0.8f, -0.9f, 1.0f, 1.1f, -1.2f};
  nbl_id x = nbl_graph_add_value(g, "x"), W = nbl_graph_add_value(g, "W"), y = nbl_graph_add_value(g, "y");
  nbl_type_set_tensor(m->arena, &g->values[x].type, NBL_DT_FLOAT, 2, xd);
  nbl_type_set_tensor(m->arena, &g->values[W].type, NBL_DT_FLOAT, 2, wd);
  nbl_graph_set_initializer(g, W, nbl_tensor_new(m->arena, "W", NBL_DT_FLOAT, 2, wd, w));
  nbl_graph_add_input(g, x);
  nbl_id in[2] = {x, W};
  nbl_graph_add_node(g, "MatMul", "", "mm", 2, in, 1, &y);
  nbl_graph_add_output(g, y);
  ck_assert_msg(run_spec(m, "build-training") == NBL_OK, "%s", nbl_last_error());
  ck_assert_int_eq(nbl_model_opset(m, ""), 13);
  ck_assert_int_eq(m->n_training, 1);
  nbl_model_free(m);
}
END_TEST

START_TEST(test_bad_input) {
  nbl_model *m = NULL;
  ck_assert_int_eq(nbl_model_load(src_path("models/lenet5.onnx"), &m), NBL_OK);
  expect_error(m, "build-training{trainable=features.*|nosuch.*}", "trainable glob 'nosuch.*' matches no initializer");
  expect_error(m, "build-training{frozen=zzz}", "frozen glob 'zzz' matches no initializer");
  expect_error(m, "build-training{optimizer=lion}", "optimizer 'lion' is not one of");
  expect_error(m, "build-training{loss=hinge}", "loss 'hinge' is not one of");
  expect_error(m, "build-training{loss=output}", "does not fit loss=output");
  expect_error(m, "build-training{label=input}", "the name 'input' is already used");
  expect_error(m, "build-training{optimizer=adam,beta1=1.5}", "hyper-parameters out of range");
  expect_error(m, "build-training{trainable=features.0.weight,frozen=features.0.weight}", "no trainable parameter");
  ck_assert_int_eq(m->n_training, 0);
  ck_assert_int_eq(run_spec(m, "build-training"), NBL_OK);
  expect_error(m, "build-training", "already has training_info");
  nbl_model_free(m);
  /* an output that does not fit the loss */
  fd_case c;
  fd_begin(&c, 13);
  fd_param(&c, D(6));
  fd_node(&c, "Relu", 1);
  expect_error(c.m, "build-training", "does not fit loss=cross-entropy: it must be scores of rank >= 2");
  fd_end(&c);
  fd_begin(&c, 13);
  fd_param(&c, D(2, 3));
  fd_node(&c, "ArgMax", 1);
  expect_error(c.m, "build-training{loss=mse}", "it must be a float tensor");
  fd_end(&c);
  /* an op without a rule on the path names the node */
  fd_begin(&c, 13);
  fd_param(&c, D(2, 3, 3));
  fd_node(&c, "Det", 1);
  expect_error(c.m, "build-training{loss=mse}", "node 'n' (Det, domain 'ai.onnx', opset 13): no gradient (no rule yet)");
  fd_end(&c);
  /* a parameter asked for (trainable=) that feeds an input without a gradient
   * is an error; by default such an initializer is simply not trained */
  fd_begin(&c, 13);
  fd_param(&c, D(3, 4));
  fd_param(&c, 0, NULL);
  fd_node(&c, "Clip", 1);
  expect_error(c.m, "build-training{loss=mse,trainable=x0;x1}",
               "no gradient for input 1 ('x1'): the bounds of Clip get no gradient");
  ck_assert_int_eq(run_spec(c.m, "build-training{loss=mse}"), NBL_OK);
  ck_assert_int_eq(nbl_graph_find(c.m->training[0].algorithm, "x1_grad"), NBL_NONE);
  ck_assert_int_ne(nbl_graph_find(c.m->training[0].algorithm, "x0_grad"), NBL_NONE);
  fd_end(&c);
}
END_TEST

/* ------------------------------------------------------------------ Identity aliases (untie) */

/* PyTorch's eval-mode export writes equal tensors once and the others as
 * Identity nodes reading the survivor. Here the BatchNorm bias 'src' survives;
 * the Conv bias and the running mean are aliases of it, the running variance
 * an alias of the scale through a chain of two Identity nodes, and a graph
 * output 'scale_out' one more alias of the scale (only an output: it stays an
 * Identity); the running mean is a graph output too. W is a weight shared the
 * PyTorch way (two Conv nodes read it directly):
 *   x [2,3,4,4] -> Conv(W, conv.bias) -> Relu -> BatchNormalization(scale, src,
 *   bn.running_mean, bn.running_var) -> Conv(W) -> z.
 * root_is_input: 'src' and 'scale' are also graph inputs (an IR < 4 model). */
static const float alias_src[3] = {0.1f, -0.2f, 0.3f}, alias_scale[3] = {1.0f, 1.5f, 0.5f};

static nbl_id alias_val(nbl_model *m, const char *name, int rank, const int64_t *dims, const float *data) {
  nbl_graph *g = m->graph;
  nbl_id v = nbl_graph_add_value(g, name);
  ck_assert_int_ne(v, NBL_NONE);
  if (data) /* typed by its tensor, as loaded initializers are */
    nbl_graph_set_initializer(g, v, nbl_tensor_new(m->arena, name, NBL_DT_FLOAT, rank, dims, data));
  else
    nbl_type_set_tensor(m->arena, &g->values[v].type, NBL_DT_FLOAT, rank, dims);
  return v;
}

static nbl_model *alias_model(int root_is_input) {
  nbl_model *m = nbl_model_new();
  nbl_model_set_opset(m, "", 14);
  nbl_graph *g = m->graph;
  const int64_t xd[4] = {2, 3, 4, 4}, wd[4] = {3, 3, 3, 3}, cd[1] = {3};
  float w[81];
  for (int i = 0; i < 81; i++) w[i] = 0.3f * sinf(0.7f * (float)i + 0.2f); /* the same in every copy */
  nbl_id x = alias_val(m, "x", 4, xd, NULL), W = alias_val(m, "W", 4, wd, w);
  nbl_id src = alias_val(m, "src", 1, cd, alias_src), scale = alias_val(m, "scale", 1, cd, alias_scale);
  nbl_graph_add_input(g, x);
  if (root_is_input) {
    nbl_graph_add_input(g, src);
    nbl_graph_add_input(g, scale);
  }
  const char *an[5][3] = {{"alias_bias", "src", "conv.bias"},
                          {"alias_mean", "src", "bn.running_mean"},
                          {"link", "scale", "mid"},
                          {"alias_var", "mid", "bn.running_var"},
                          {"alias_out", "scale", "scale_out"}};
  for (int k = 0; k < 5; k++) {
    nbl_id in = nbl_graph_find(g, an[k][1]), out = nbl_graph_add_value(g, an[k][2]);
    ck_assert_int_ne(nbl_graph_add_node(g, "Identity", "", an[k][0], 1, &in, 1, &out), NBL_NONE);
  }
  nbl_id c = nbl_graph_add_value(g, "c"), r = nbl_graph_add_value(g, "r"), y = nbl_graph_add_value(g, "y");
  nbl_id z = nbl_graph_add_value(g, "z");
  const int64_t pads[4] = {1, 1, 1, 1};
  nbl_id n = nbl_graph_add_node(g, "Conv", "", "conv1", 3, (nbl_id[]){x, W, nbl_graph_find(g, "conv.bias")}, 1, &c);
  nbl_node_set_attr_ints(g, n, "pads", 4, pads);
  nbl_graph_add_node(g, "Relu", "", "relu", 1, &c, 1, &r);
  nbl_graph_add_node(g, "BatchNormalization", "", "bn", 5,
                     (nbl_id[]){r, scale, src, nbl_graph_find(g, "bn.running_mean"), nbl_graph_find(g, "bn.running_var")},
                     1, &y);
  n = nbl_graph_add_node(g, "Conv", "", "conv2", 2, (nbl_id[]){y, W}, 1, &z);
  nbl_node_set_attr_ints(g, n, "pads", 4, pads);
  nbl_graph_add_output(g, z);
  nbl_graph_add_output(g, nbl_graph_find(g, "scale_out"));
  nbl_graph_add_output(g, nbl_graph_find(g, "bn.running_mean"));
  ck_assert_msg(nbl_model_verify(m) == NBL_OK, "%s", nbl_last_error());
  return m;
}

static const float *init_data(const nbl_model *m, const char *name) {
  nbl_id v = nbl_graph_find(m->graph, name);
  ck_assert_msg(v != NBL_NONE && m->graph->values[v].init, "'%s' is not an initializer", name);
  return m->graph->values[v].init->data;
}

static const float *train_param(nbl_train_session *s, const char *name) {
  for (int i = 0; i < nbl_train_param_count(s); i++) {
    nbl_host_tensor t;
    ck_assert_int_eq(nbl_train_param(s, i, &t), NBL_OK);
    if (!strcmp(t.name, name)) return t.data;
  }
  ck_abort_msg("no trained tensor '%s'", name);
  return NULL;
}

static const float *train_grad(nbl_train_session *s, const char *name) {
  for (int i = 0; i < nbl_train_grad_count(s); i++) {
    nbl_host_tensor t;
    ck_assert_int_eq(nbl_train_grad(s, i, &t), NBL_OK);
    if (!strcmp(t.name, name)) return t.data;
  }
  ck_abort_msg("no gradient of '%s'", name);
  return NULL;
}

/* Equal tensors merged without Identity (eliminate-identity after an
 * eval-mode export): BatchNorm's running mean is the initializer that is
 * also its bias and the Conv's bias, its running variance the one that is
 * also its scale. build-training gives each statistic its own initializer
 * (named after the BatchNorm node), so the bias and the scale train as
 * parameters and the statistics update on their own; untie=0 refuses,
 * naming both readers. (Before, the merged tensors were silently left
 * untrained and overwritten by the running statistics.) */
static nbl_model *merged_stats_model(void) {
  nbl_model *m = nbl_model_new();
  nbl_model_set_opset(m, "", 14);
  nbl_graph *g = m->graph;
  const int64_t xd[4] = {2, 3, 4, 4}, wd[4] = {3, 3, 3, 3}, cd[1] = {3};
  float w[81];
  for (int i = 0; i < 81; i++) w[i] = 0.3f * sinf(0.7f * (float)i + 0.2f);
  nbl_id x = alias_val(m, "x", 4, xd, NULL), W = alias_val(m, "W", 4, wd, w);
  nbl_id src = alias_val(m, "src", 1, cd, alias_src), scale = alias_val(m, "scale", 1, cd, alias_scale);
  nbl_graph_add_input(g, x);
  nbl_id c = nbl_graph_add_value(g, "c"), y = nbl_graph_add_value(g, "y"), z = nbl_graph_add_value(g, "z");
  const int64_t pads[4] = {1, 1, 1, 1};
  nbl_id n = nbl_graph_add_node(g, "Conv", "", "conv1", 3, (nbl_id[]){x, W, src}, 1, &c);
  nbl_node_set_attr_ints(g, n, "pads", 4, pads);
  nbl_graph_add_node(g, "BatchNormalization", "", "bn", 5, (nbl_id[]){c, scale, src, src, scale}, 1, &y);
  n = nbl_graph_add_node(g, "Conv", "", "conv2", 2, (nbl_id[]){y, W}, 1, &z);
  nbl_node_set_attr_ints(g, n, "pads", 4, pads);
  nbl_graph_add_output(g, z);
  ck_assert_msg(nbl_model_verify(m) == NBL_OK, "%s", nbl_last_error());
  return m;
}

START_TEST(test_untie_merged_stats) {
  nbl_model *m = merged_stats_model();
  expect_error(m, "build-training{label=lab,untie=0}",
               "node 'bn' (BatchNormalization): its running_mean 'src' is also read by node 'conv1' (Conv) as a "
               "parameter");
  nbl_model_free(m);
  m = merged_stats_model();
  ck_assert_msg(run_spec(m, "build-training{label=lab}") == NBL_OK, "%s", nbl_last_error());
  const nbl_graph *g = m->graph;
  nbl_id bn = NBL_NONE;
  for (int i = 0; i < g->n_nodes; i++)
    if (!g->nodes[i].dead && !strcmp(g->nodes[i].op_type, "BatchNormalization")) bn = i;
  ck_assert_int_ne(bn, NBL_NONE);
  ck_assert_str_eq(g->values[g->nodes[bn].inputs[2]].name, "src");
  ck_assert_str_eq(g->values[g->nodes[bn].inputs[3]].name, "bn.running_mean");
  ck_assert_str_eq(g->values[g->nodes[bn].inputs[4]].name, "bn.running_var");
  ck_assert_mem_eq(init_data(m, "bn.running_mean"), alias_src, sizeof alias_src);
  ck_assert_mem_eq(init_data(m, "bn.running_var"), alias_scale, sizeof alias_scale);
  const nbl_training_info *ti = &m->training[0];
  const char *trained[] = {"W", "src", "scale"};
  for (int k = 0; k < 3; k++) {
    char nn[64];
    snprintf(nn, sizeof nn, "%s.new", trained[k]);
    ck_assert_str_eq(binding(ti->update_binding, ti->n_update_binding, trained[k]), nn);
  }
  ck_assert_str_eq(binding(ti->update_binding, ti->n_update_binding, "bn.running_mean"), "bn.running_mean.new");
  ck_assert_str_eq(binding(ti->update_binding, ti->n_update_binding, "bn.running_var"), "bn.running_var.new");
  nbl_model_free(m);
}
END_TEST

START_TEST(test_untie_aliases) {
  /* untie=0: the old error, naming the Identity that makes the running mean an alias */
  nbl_model *m = alias_model(0);
  expect_error(m, "build-training{label=lab,untie=0}",
               "no gradient for input 3 ('bn.running_mean', an alias of 'src' made by node 'alias_mean' "
               "(Identity)): the running mean is a statistic, not a parameter");
  ck_assert_msg(strstr(nbl_last_error(), "left tied: untie=0"), "%s", nbl_last_error());
  nbl_model_free(m);
  /* initializers that are graph inputs are overridable: left tied, the message says what unties them */
  m = alias_model(1);
  expect_error(m, "build-training{label=lab}", "made by node 'alias_mean' (Identity)");
  ck_assert_msg(strstr(nbl_last_error(), "constant-initializers first unties them"), "%s", nbl_last_error());
  nbl_model_free(m);
  m = alias_model(1);
  ck_assert_msg(run_spec(m, "constant-initializers,build-training{label=lab}") == NBL_OK, "%s",
                nbl_last_error());
  ck_assert_int_ne(nbl_graph_find(m->graph, "bn.running_mean"), NBL_NONE);
  ck_assert_ptr_nonnull(m->graph->values[nbl_graph_find(m->graph, "bn.running_mean")].init);
  nbl_model_free(m);

  /* untie=1 (the default): each alias an initializer of its own */
  nbl_model *orig = alias_model(0);
  m = alias_model(0);
  ck_assert_msg(run_spec(m, "build-training{label=lab}") == NBL_OK, "%s", nbl_last_error());
  const nbl_graph *g = m->graph;
  int n_id = 0;
  for (int i = 0; i < g->n_nodes; i++)
    if (!g->nodes[i].dead && !strcmp(g->nodes[i].op_type, "Identity")) {
      ck_assert_str_eq(g->nodes[i].name, "alias_out"); /* only a graph output */
      n_id++;
    }
  ck_assert_int_eq(n_id, 1);
  ck_assert_int_eq(nbl_graph_find(g, "mid"), NBL_NONE); /* the chain's link nothing reads any more */
  const char *of_src[] = {"conv.bias", "bn.running_mean"};
  for (int k = 0; k < 2; k++) {
    ck_assert(init_data(m, of_src[k]) != init_data(m, "src"));
    ck_assert_mem_eq(init_data(m, of_src[k]), alias_src, sizeof alias_src);
  }
  ck_assert(init_data(m, "bn.running_var") != init_data(m, "scale"));
  ck_assert_mem_eq(init_data(m, "bn.running_var"), alias_scale, sizeof alias_scale);
  ck_assert(g->values[nbl_graph_find(g, "bn.running_mean")].flags & NBL_VAL_OUTPUT);
  /* W stays one parameter read by both Conv nodes of the forward copy */
  const nbl_training_info *ti = &m->training[0];
  const nbl_graph *alg = ti->algorithm;
  nbl_id aw = nbl_graph_find(alg, "W");
  int w_convs = 0;
  for (int k = 0; k < alg->values[aw].n_consumers; k++)
    w_convs += !strcmp(alg->nodes[alg->values[aw].consumers[k]].op_type, "Conv");
  ck_assert_int_eq(w_convs, 2);
  const char *trained[] = {"W", "conv.bias", "src", "scale"};
  for (int k = 0; k < 4; k++) {
    char gn[64], nn[64];
    snprintf(gn, sizeof gn, "%s_grad", trained[k]);
    snprintf(nn, sizeof nn, "%s.new", trained[k]);
    ck_assert_msg(nbl_graph_find(alg, gn) != NBL_NONE, "no '%s'", gn);
    ck_assert_str_eq(binding(ti->update_binding, ti->n_update_binding, trained[k]), nn);
  }
  ck_assert_str_eq(binding(ti->update_binding, ti->n_update_binding, "bn.running_mean"), "bn.running_mean.new");
  ck_assert_str_eq(binding(ti->update_binding, ti->n_update_binding, "bn.running_var"), "bn.running_var.new");
  ck_assert_int_eq(nbl_graph_find(alg, "bn.running_mean_grad"), NBL_NONE);
  ck_assert_ptr_null(binding(ti->update_binding, ti->n_update_binding, "scale_out")); /* no gradient path */
  ck_assert_int_eq(ti->n_update_binding, 6);
  /* the inference graph computes what the tied one did, saved and loaded back too */
  nbl_model *back = tm_saved_and_loaded(m);
  float xs[96];
  int64_t lab[32];
  for (int i = 0; i < 96; i++) xs[i] = (float)(2 * fd_rand() - 1);
  for (int i = 0; i < 32; i++) lab[i] = i * 7 % 3;
  nbl_host_tensor hx = {.name = "x", .dtype = NBL_DT_FLOAT, .rank = 4, .dims = {2, 3, 4, 4}, .data = xs,
                        .nbytes = sizeof xs};
  nbl_session_options so = {.threads = 1, .reference = 1};
  const nbl_model *both[2] = {orig, back};
  float outs[2][96 + 6];
  for (int k = 0; k < 2; k++) {
    nbl_session *s = NULL;
    const nbl_host_tensor *o = NULL;
    ck_assert_msg(nbl_session_create(both[k], &so, &s) == NBL_OK, "%s", nbl_last_error());
    ck_assert_msg(nbl_session_run(s, 1, &hx, &o) == NBL_OK, "%s", nbl_last_error());
    ck_assert_int_eq(nbl_session_output_count(s), 3);
    memcpy(outs[k], o[0].data, sizeof(float) * 96);
    memcpy(outs[k] + 96, o[1].data, sizeof(float) * 3);
    memcpy(outs[k] + 99, o[2].data, sizeof(float) * 3);
    nbl_session_free(s);
  }
  ck_assert_mem_eq(outs[0], outs[1], sizeof outs[0]);
  nbl_model_free(back);
  /* one SGD step: the former aliases take their own gradients and statistics */
  nbl_train_options to = {.threads = 1, .reference = 1};
  nbl_train_session *ts = NULL;
  ck_assert_msg(nbl_train_session_create(m, &to, &ts) == NBL_OK, "%s", nbl_last_error());
  ck_assert_int_eq(nbl_train_set_lr(ts, 0.5), NBL_OK);
  nbl_host_tensor in[2] = {hx, hx};
  in[1] = (nbl_host_tensor){.name = "lab", .dtype = NBL_DT_INT64, .rank = 3, .dims = {2, 4, 4}, .data = lab,
                            .nbytes = sizeof lab};
  float loss = 0;
  ck_assert_msg(nbl_train_step(ts, 2, in, &loss) == NBL_OK, "%s", nbl_last_error());
  float gb[3], gs[3];
  memcpy(gb, train_grad(ts, "conv.bias"), sizeof gb);
  memcpy(gs, train_grad(ts, "src"), sizeof gs);
  ck_assert_msg(nbl_optimizer_step(ts) == NBL_OK, "%s", nbl_last_error());
  const float *nb = train_param(ts, "conv.bias"), *ns = train_param(ts, "src"), *nm = train_param(ts, "bn.running_mean");
  const float *nsc = train_param(ts, "scale"), *nv = train_param(ts, "bn.running_var");
  double apart = 0;
  for (int k = 0; k < 3; k++) {
    ck_assert(fabsf(nb[k] - (alias_src[k] - 0.5f * gb[k])) <= 1e-7f);
    ck_assert(fabsf(ns[k] - (alias_src[k] - 0.5f * gs[k])) <= 1e-7f);
    apart = fmax(apart, fabs(nb[k] - ns[k]));
    ck_assert(nm[k] != alias_src[k] && nm[k] != nb[k] && nm[k] != ns[k]); /* the batch's statistics */
    ck_assert(nv[k] != alias_scale[k] && nv[k] != nsc[k]);
  }
  ck_assert(apart > 1e-3); /* the tie would have kept them equal */
  printf("untie: 3 aliases untied (a chain's link dropped, an output-only one kept), W shared; after one step conv.bias and the "
         "BatchNorm bias %.3g apart, the running statistics their own (loss %.4f)\n",
         apart, loss);
  nbl_train_session_free(ts);
  nbl_model_free(m);
  nbl_model_free(orig);
}
END_TEST

/* ------------------------------------------------------------------ the Gradient op */

/* y = ReduceSum(Mul(Relu(BatchNormalization(x, s, b, mean, var)) , r)) with
 * BatchNormalization in inference mode (its own rule), Gradient(x, s, b;
 * xs = [x, s, b], y) beside it in the same graph; the session runs it and
 * the gradients are checked against central differences of y. */
START_TEST(test_gradient_op_fd) {
  nbl_model *m = nbl_model_new();
  nbl_model_set_opset(m, "", 15);
  nbl_model_set_opset(m, "ai.onnx.preview.training", 1);
  nbl_graph *g = m->graph;
  const int64_t xd[4] = {2, 3, 2, 2}, cd[1] = {3};
  const char *in_names[3] = {"x", "s", "b"};
  nbl_id in[3];
  for (int i = 0; i < 3; i++) {
    in[i] = nbl_graph_add_value(g, in_names[i]);
    nbl_type_set_tensor(m->arena, &g->values[in[i]].type, NBL_DT_DOUBLE, i ? 1 : 4, i ? cd : xd);
    nbl_graph_add_input(g, in[i]);
  }
  double mean[3] = {0.1, -0.2, 0.05}, var[3] = {0.9, 1.3, 0.7}, r[24];
  for (int i = 0; i < 24; i++) r[i] = 2 * fd_rand() - 1;
  nbl_id mv = nbl_graph_add_value(g, "mean"), vv = nbl_graph_add_value(g, "var"), rv = nbl_graph_add_value(g, "r");
  nbl_graph_set_initializer(g, mv, nbl_tensor_new(m->arena, "mean", NBL_DT_DOUBLE, 1, cd, mean));
  nbl_graph_set_initializer(g, vv, nbl_tensor_new(m->arena, "var", NBL_DT_DOUBLE, 1, cd, var));
  nbl_graph_set_initializer(g, rv, nbl_tensor_new(m->arena, "r", NBL_DT_DOUBLE, 4, xd, r));
  nbl_id bn = nbl_graph_add_value(g, "bn"), rl = nbl_graph_add_value(g, "relu"), pr = nbl_graph_add_value(g, "prod");
  nbl_id y = nbl_graph_add_value(g, "y");
  nbl_graph_add_node(g, "BatchNormalization", "", "bn", 5, (nbl_id[]){in[0], in[1], in[2], mv, vv}, 1, &bn);
  nbl_graph_add_node(g, "Relu", "", "relu", 1, &bn, 1, &rl);
  nbl_graph_add_node(g, "Mul", "", "mul", 2, (nbl_id[]){rl, rv}, 1, &pr);
  nbl_id rs = nbl_graph_add_node(g, "ReduceSum", "", "sum", 1, &pr, 1, &y);
  nbl_node_set_attr_int(g, rs, "keepdims", 0);
  nbl_id dv[3];
  for (int i = 0; i < 3; i++) {
    char nm[16];
    snprintf(nm, sizeof nm, "d%s", in_names[i]);
    dv[i] = nbl_graph_add_value(g, nm);
  }
  nbl_id gn = nbl_graph_add_node(g, "Gradient", "ai.onnx.preview.training", "grad", 3, in, 3, dv);
  nbl_attr *a = nbl_node_add_attr(g, gn, "xs", NBL_ATTR_STRINGS);
  a->n = 3;
  a->strings = nbl_arena_alloc(m->arena, sizeof(char *) * 3);
  a->string_lens = nbl_arena_alloc(m->arena, sizeof(size_t) * 3);
  for (int i = 0; i < 3; i++) {
    a->strings[i] = nbl_arena_strdup(m->arena, in_names[i]);
    a->string_lens[i] = 1;
  }
  nbl_node_set_attr_string(g, gn, "y", "y");
  nbl_graph_add_output(g, y);
  for (int i = 0; i < 3; i++) nbl_graph_add_output(g, dv[i]);
  ck_assert_msg(nbl_model_verify(m) == NBL_OK, "%s", nbl_last_error());
  double x[24], sc[3] = {0.8, 1.2, 1.1}, bb[3] = {0.1, -0.3, 0.2};
  for (int i = 0; i < 24; i++) x[i] = 2 * fd_rand() - 1;
  double *data[3] = {x, sc, bb};
  int64_t n[3] = {24, 3, 3};
  nbl_host_tensor hin[3];
  for (int i = 0; i < 3; i++) {
    memset(&hin[i], 0, sizeof hin[i]);
    hin[i].name = in_names[i];
    hin[i].dtype = NBL_DT_DOUBLE;
    hin[i].rank = i ? 1 : 4;
    memcpy(hin[i].dims, i ? cd : xd, sizeof(int64_t) * (size_t)hin[i].rank);
    hin[i].data = data[i];
    hin[i].nbytes = sizeof(double) * (size_t)n[i];
  }
  nbl_session_options so = {.threads = 1, .reference = 1};
  nbl_session *sess = NULL;
  ck_assert_msg(nbl_session_create(m, &so, &sess) == NBL_OK, "%s", nbl_last_error());
  const nbl_host_tensor *out = NULL;
  ck_assert_msg(nbl_session_run(sess, 3, hin, &out) == NBL_OK, "%s", nbl_last_error());
  double grads[3][24];
  for (int i = 0; i < 3; i++) memcpy(grads[i], out[1 + i].data, sizeof(double) * (size_t)n[i]);
  double worst = 0;
  for (int i = 0; i < 3; i++) {
    double num = 0, den = 0;
    for (int64_t j = 0; j < n[i]; j++) {
      double x0 = data[i][j], h = 1e-5;
      data[i][j] = x0 + h;
      ck_assert_int_eq(nbl_session_run(sess, 3, hin, &out), NBL_OK);
      double lp = ((const double *)out[0].data)[0];
      data[i][j] = x0 - h;
      ck_assert_int_eq(nbl_session_run(sess, 3, hin, &out), NBL_OK);
      double lm = ((const double *)out[0].data)[0];
      data[i][j] = x0;
      double fd = (lp - lm) / (2 * h);
      if (fabs(fd - grads[i][j]) > num) num = fabs(fd - grads[i][j]);
      if (fabs(fd) > den) den = fabs(fd);
    }
    if (num / den > worst) worst = num / den;
  }
  printf("FD %-40s max rel err %.2e over 3 gradient(s)\n", "Gradient op (BatchNormalization inference)", worst);
  ck_assert(worst <= TOL);
  nbl_session_free(sess);
  nbl_model_free(m);
}
END_TEST

/* ------------------------------------------------------------------ suite */

static Suite *suite(void) {
  Suite *s = suite_create("grad");
  TCase *t = tcase_create("core");
  tcase_set_timeout(t, 600);
  tcase_add_test(t, test_table_every_op_has_rule_or_reason);
  tcase_add_test(t, test_fd_gemm);
  tcase_add_test(t, test_fd_matmul);
  tcase_add_test(t, test_fd_conv);
  tcase_add_test(t, test_fd_conv_transpose);
  tcase_add_test(t, test_fd_unary);
  tcase_add_test(t, test_fd_binary_broadcast);
  tcase_add_test(t, test_fd_where_clip_sum_mean);
  tcase_add_test(t, test_fd_pooling);
  tcase_add_test(t, test_fd_batchnorm_training);
  tcase_add_test(t, test_fd_layernorm);
  tcase_add_test(t, test_fd_reduce);
  tcase_add_test(t, test_fd_softmax);
  tcase_add_test(t, test_fd_losses);
  tcase_add_test(t, test_fd_shape_ops);
  tcase_add_test(t, test_fd_cast);
  tcase_add_test(t, test_fd_chain_shared_values);
  tcase_add_test(t, test_lenet_training_model);
  tcase_add_test(t, test_every_optimizer_builds);
  tcase_add_test(t, test_quantize_int4_straight_through_and_pact);
  tcase_add_test(t, test_hard_activation_kinks);
  tcase_add_test(t, test_dropout_training);
  tcase_add_test(t, test_bad_input);
  tcase_add_test(t, test_untie_aliases);
  tcase_add_test(t, test_untie_merged_stats);
  tcase_add_test(t, test_old_opset_converted);
  tcase_add_test(t, test_gradient_op_fd);
  suite_add_tcase(s, t);
  return s;
}

int main(void) {
  SRunner *r = srunner_create(suite());
  srunner_run_all(r, CK_NORMAL);
  int failed = srunner_ntests_failed(r);
  srunner_free(r);
  return failed ? 1 : 0;
}
