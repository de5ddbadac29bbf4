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

#define D(...) (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), ((const int64_t[]){__VA_ARGS__})
#define TOL 1e-6

static void expect_fd(fd_case *c, const char *what) {
  double e = fd_run(c, what);
  fd_end(c);
  ck_assert_msg(e >= 0, "%s: the training graph failed", what);
  ck_assert_msg(e <= TOL, "%s: relative error %.3e > %.0e", what, e, TOL);
}

static void ints(fd_case *c, const char *name, int n, const int64_t *v) {
  nbl_node_set_attr_ints(c->g, c->node, name, n, v);
}
static void attr_i(fd_case *c, const char *name, int64_t v) { nbl_node_set_attr_int(c->g, c->node, name, v); }
static void attr_f(fd_case *c, const char *name, float v) { nbl_node_set_attr_float(c->g, c->node, name, v); }
static void attr_s(fd_case *c, const char *name, const char *v) {
  nbl_node_set_attr_string(c->g, c->node, name, v);
}

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

static void unary(const char *op, int opset, double lo, double hi, const char *attr, double av,
                  const char *sattr, const char *sv) {
  fd_case c;
  fd_begin(&c, opset);
  fd_param_range(&c, D(2, 3, 4), lo, hi);
  fd_node(&c, op, 1);
  if (attr) attr_f(&c, attr, (float)av);
  if (sattr) attr_s(&c, sattr, sv);
  char what[64];
  snprintf(what, sizeof what, "%s%s%s", op, sv ? " " : "", sv ? sv : "");
  expect_fd(&c, what);
}

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
    fd_node(&c, "BatchNormalization", 1);
    attr_f(&c, "epsilon", 1e-3f);
    char what[64];
    snprintf(what, sizeof what, "BatchNormalization training, rank %d", r);
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
                       "ReduceLogSum", "ReduceLogSumExp"};
  for (int k = 0; k < 7; k++) {
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
