/* test_grad_rules.c - the gradient rules of PRelu, Max/Min, ReduceMax/Min
 * with ties, Tile, DepthToSpace/SpaceToDepth, LRN, InstanceNormalization,
 * Resize/Upsample, GatherElements, TopK, Einsum, RNN, GRU, LSTM, more
 * unary functions (trigonometric, Elu, Selu, Celu, Mish, ...), ReduceProd,
 * LpNormalization, Scatter, LpPool, MaxUnpool and GridSample, each
 * against central finite differences in float64 through the whole generated
 * training graph (tests/train/grad_fd.h; the older rules are in
 * test_grad.c). */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/core/grad.h"
#include "runtime/core/kernel.h"
#include "grad_case.h"

/* The rules of PRelu, Max/Min, the extremes with ties, Tile, DepthToSpace
 * and SpaceToDepth. At a tie the central difference of max(a, b) in a is
 * exactly 1/2 (max(a + h, b) - max(a - h, b) = h), so it checks the even
 * split the rules give (PyTorch's). */
START_TEST(test_fd_prelu_extremes_tile_space) {
  fd_case c;
  fd_begin(&c, 13);
  fd_param_range(&c, D(2, 3, 2, 2), -2, 2);
  fd_param_range(&c, D(3, 1, 1), 0.1, 0.5);
  fd_node(&c, "PRelu", 1);
  expect_fd(&c, "PRelu, slope per channel");
  fd_begin(&c, 9);
  fd_param_range(&c, D(3, 4), -2, 2);
  fd_param_range(&c, D(4), -0.5, 0.5);
  fd_node(&c, "PRelu", 1);
  expect_fd(&c, "PRelu opset 9, slope broadcast from the right");

  const char *ext[2] = {"Max", "Min"};
  for (int k = 0; k < 2; k++) {
    char what[64];
    fd_begin(&c, 13);
    fd_param(&c, D(2, 3));
    fd_param(&c, D(3));
    fd_param(&c, D(2, 1));
    fd_node(&c, ext[k], 1);
    snprintf(what, sizeof what, "%s of 3 (broadcast)", ext[k]);
    expect_fd(&c, what);
    fd_begin(&c, 13);
    fd_param_data(&c, D(5), (double[]){1, 2, 3, 4, -1});
    fd_param_data(&c, D(5), (double[]){1, 0, 3, 5, -1});
    fd_param_data(&c, D(5), (double[]){0, 0, 2, 6, -2}); /* two-way ties only: at a three-way tie the central difference is 1/2, not 1/3 */
    fd_node(&c, ext[k], 1);
    snprintf(what, sizeof what, "%s of 3 with ties", ext[k]);
    expect_fd_kink(&c, what);
    fd_begin(&c, 13);
    fd_param(&c, D(2, 3));
    fd_node(&c, ext[k], 1);
    snprintf(what, sizeof what, "%s of 1", ext[k]);
    expect_fd(&c, what);
  }
  fd_begin(&c, 18);
  fd_param_data(&c, D(2, 3), (double[]){3, 1, 3, -2, -2, 0.5});
  fd_i64(&c, D(1), (int64_t[]){1});
  fd_node(&c, "ReduceMax", 1);
  expect_fd_kink(&c, "ReduceMax with ties");
  fd_begin(&c, 13);
  fd_param_data(&c, D(2, 3), (double[]){3, 1, 3, -2, -2, 0.5});
  fd_node(&c, "ReduceMin", 1);
  attr_i(&c, "keepdims", 0);
  expect_fd_kink(&c, "ReduceMin of all with ties");

  fd_begin(&c, 13);
  fd_param(&c, D(2, 3));
  fd_i64(&c, D(2), (int64_t[]){2, 3});
  fd_node(&c, "Tile", 1);
  expect_fd(&c, "Tile 2x3 by (2, 3)");
  fd_begin(&c, 13);
  fd_param(&c, D(2, 1, 3));
  fd_i64(&c, D(3), (int64_t[]){1, 3, 2});
  fd_node(&c, "Tile", 1);
  expect_fd(&c, "Tile 2x1x3 by (1, 3, 2)");

  const char *modes[2] = {"DCR", "CRD"};
  for (int k = 0; k < 2; k++) {
    char what[64];
    fd_begin(&c, 13);
    fd_param(&c, D(2, 8, 2, 3));
    fd_node(&c, "DepthToSpace", 1);
    attr_i(&c, "blocksize", 2);
    attr_s(&c, "mode", modes[k]);
    snprintf(what, sizeof what, "DepthToSpace %s", modes[k]);
    expect_fd(&c, what);
  }
  fd_begin(&c, 13);
  fd_param(&c, D(1, 3, 4, 6));
  fd_node(&c, "SpaceToDepth", 1);
  attr_i(&c, "blocksize", 2);
  expect_fd(&c, "SpaceToDepth");
}
END_TEST

/* LRN (ai.nibble LRNGrad) and InstanceNormalization (composed of
 * reductions), windows cut at both channel ends, even and odd sizes. */
START_TEST(test_fd_lrn_instnorm) {
  const int64_t sizes[3] = {3, 4, 1};
  for (int k = 0; k < 3; k++) {
    fd_case c;
    char what[64];
    fd_begin(&c, 13);
    fd_param_range(&c, D(2, 5, 2, 3), -2, 2);
    fd_node(&c, "LRN", 1);
    attr_i(&c, "size", sizes[k]);
    attr_f(&c, "alpha", 0.3f);
    attr_f(&c, "beta", 0.75f);
    attr_f(&c, "bias", 1.5f);
    snprintf(what, sizeof what, "LRN size %lld", (long long)sizes[k]);
    expect_fd(&c, what);
  }
  fd_case c;
  fd_begin(&c, 13);
  fd_param_range(&c, D(2, 3, 4, 5), -2, 2);
  fd_param_range(&c, D(3), 0.5, 1.5);
  fd_param(&c, D(3));
  fd_node(&c, "InstanceNormalization", 1);
  attr_f(&c, "epsilon", 1e-3f);
  expect_fd(&c, "InstanceNormalization 2-D");
  fd_begin(&c, 13);
  fd_param_range(&c, D(2, 3, 7), -2, 2);
  fd_param_range(&c, D(3), 0.5, 1.5);
  fd_param(&c, D(3));
  fd_node(&c, "InstanceNormalization", 1);
  expect_fd(&c, "InstanceNormalization 1-D");
}
END_TEST

/* Resize / Upsample (ai.nibble ResizeGrad, the adjoint of the forward's
 * taps): every mode is linear in X, so the central differences are exact
 * up to rounding; taps clamped at the edges, extrapolated outputs
 * (tf_crop_and_resize), antialiased downsampling, sizes instead of scales. */
static void resize_case(const char *what, int opset, const char *mode, const char *ctm, const double *scales,
                        const int64_t *sizes, const double *roi, int antialias, int exclude) {
  fd_case c;
  fd_begin(&c, opset);
  fd_param_range(&c, D(1, 2, 4, 5), -2, 2);
  if (roi) fd_f64(&c, D(8), roi);
  else fd_none(&c);
  if (scales) fd_f64(&c, D(4), scales);
  else fd_none(&c);
  if (sizes) fd_i64(&c, D(4), sizes);
  fd_node(&c, "Resize", 1);
  attr_s(&c, "mode", mode);
  attr_s(&c, "coordinate_transformation_mode", ctm);
  if (antialias) attr_i(&c, "antialias", 1);
  if (exclude) attr_i(&c, "exclude_outside", 1);
  if (roi) attr_f(&c, "extrapolation_value", 0.5f);
  expect_fd(&c, what);
}

START_TEST(test_fd_resize) {
  const double up[4] = {1, 1, 2, 1.5}, down[4] = {1, 1, 0.5, 0.6}, roi[8] = {0, 0, -0.2, 0.1, 1, 1, 0.9, 1.3};
  const int64_t sz[4] = {1, 2, 7, 3};
  resize_case("Resize nearest asymmetric up", 13, "nearest", "asymmetric", up, NULL, NULL, 0, 0);
  resize_case("Resize nearest half_pixel down", 13, "nearest", "half_pixel", down, NULL, NULL, 0, 0);
  resize_case("Resize linear half_pixel up", 13, "linear", "half_pixel", up, NULL, NULL, 0, 0);
  resize_case("Resize linear align_corners sizes", 13, "linear", "align_corners", NULL, sz, NULL, 0, 0);
  resize_case("Resize linear pytorch_half_pixel down", 13, "linear", "pytorch_half_pixel", down, NULL, NULL, 0, 0);
  resize_case("Resize cubic half_pixel up", 13, "cubic", "half_pixel", up, NULL, NULL, 0, 0);
  resize_case("Resize cubic exclude_outside down", 13, "cubic", "half_pixel", down, NULL, NULL, 0, 1);
  resize_case("Resize linear tf_crop_and_resize (extrapolated)", 13, "linear", "tf_crop_and_resize", up, NULL, roi, 0, 0);
  resize_case("Resize linear antialias down", 18, "linear", "half_pixel", down, NULL, NULL, 1, 0);
  resize_case("Resize cubic antialias down", 18, "cubic", "half_pixel", down, NULL, NULL, 1, 0);
  fd_case c;
  fd_begin(&c, 9);
  fd_param_range(&c, D(1, 2, 3, 4), -2, 2);
  fd_f64(&c, D(4), (double[]){1, 1, 2, 2});
  fd_node(&c, "Upsample", 1);
  attr_s(&c, "mode", "nearest");
  expect_fd(&c, "Upsample nearest (opset 9)");
  fd_begin(&c, 8); /* Upsample-7 (scales an attribute); the loss's Expand needs opset 8 */
  fd_param_range(&c, D(1, 1, 3, 4), -2, 2);
  fd_node(&c, "Upsample", 1);
  attr_s(&c, "mode", "linear");
  nbl_node_set_attr_floats(c.g, c.node, "scales", 4, (float[]){1, 1, 2, 3});
  expect_fd(&c, "Upsample linear (opset 8, scales attribute)");
  fd_begin(&c, 10);
  fd_param_range(&c, D(1, 1, 3, 4), -2, 2);
  fd_f64(&c, D(4), (double[]){1, 1, 1.5, 0.5});
  fd_node(&c, "Resize", 1);
  attr_s(&c, "mode", "linear");
  expect_fd(&c, "Resize linear (opset 10)");
}
END_TEST

/* GatherElements and TopK (com.microsoft GatherElementsGrad): repeated and
 * negative indices accumulate; TopK's values on both axes, largest and
 * smallest (random values: no ties). */
START_TEST(test_fd_gather_elements_topk) {
  fd_case c;
  fd_begin(&c, 13);
  fd_param(&c, D(3, 4));
  fd_i64(&c, D(2, 4), (int64_t[]){0, 2, -1, 1, 2, 2, 0, -3});
  fd_node(&c, "GatherElements", 1);
  expect_fd(&c, "GatherElements axis 0, repeated and negative indices");
  fd_begin(&c, 13);
  fd_param(&c, D(2, 3, 2));
  fd_i64(&c, D(2, 3, 3), (int64_t[]){0, 1, 1, 0, 0, 1, 1, 1, 1, -1, 0, 1, 0, 0, 0, 1, -2, 1});
  fd_node(&c, "GatherElements", 1);
  attr_i(&c, "axis", 2);
  expect_fd(&c, "GatherElements axis 2, more indices than the axis holds");
  for (int largest = 0; largest < 2; largest++) {
    char what[64];
    fd_begin(&c, 13);
    fd_param(&c, D(3, 5));
    fd_i64(&c, D(1), (int64_t[]){3});
    fd_node(&c, "TopK", 2);
    attr_i(&c, "largest", largest);
    snprintf(what, sizeof what, "TopK k 3 of 5, largest %d", largest);
    expect_fd(&c, what);
  }
  fd_begin(&c, 13);
  fd_param(&c, D(4, 2));
  fd_i64(&c, D(1), (int64_t[]){2});
  fd_node(&c, "TopK", 2);
  attr_i(&c, "axis", 0);
  expect_fd(&c, "TopK axis 0");
}
END_TEST

/* Einsum: products, transposes, reductions, a label only one operand has,
 * three operands, the implicit output, a scalar result; ellipses (ranks
 * that differ, dims of 1 broadcast), labels repeated in one operand
 * (diagonals, traces). */
static void einsum_case(const char *eq, int n, const int64_t dims[][3], const int *ranks) {
  fd_case c;
  fd_begin(&c, 13);
  for (int i = 0; i < n; i++) fd_param(&c, ranks[i], dims[i]);
  fd_node(&c, "Einsum", 1);
  attr_s(&c, "equation", eq);
  char what[64];
  snprintf(what, sizeof what, "Einsum %s", eq);
  expect_fd(&c, what);
}

START_TEST(test_fd_einsum) {
  einsum_case("ij,jk->ik", 2, (const int64_t[][3]){{2, 3}, {3, 4}}, (int[]){2, 2});
  einsum_case("bij,bkj->bik", 2, (const int64_t[][3]){{2, 3, 4}, {2, 5, 4}}, (int[]){3, 3});
  einsum_case("ij->ji", 1, (const int64_t[][3]){{2, 3}}, (int[]){2});
  einsum_case("ijk->i", 1, (const int64_t[][3]){{2, 3, 2}}, (int[]){3});
  einsum_case("ijk,k->ij", 2, (const int64_t[][3]){{2, 3, 4}, {4}}, (int[]){3, 1});
  einsum_case("ij,jk,kl->il", 3, (const int64_t[][3]){{2, 3}, {3, 2}, {2, 4}}, (int[]){2, 2, 2});
  einsum_case("ij,kj", 2, (const int64_t[][3]){{2, 3}, {4, 3}}, (int[]){2, 2});
  einsum_case("ij,ij->", 2, (const int64_t[][3]){{2, 3}, {2, 3}}, (int[]){2, 2});
  einsum_case("ik,j->ijk", 2, (const int64_t[][3]){{2, 3}, {4}}, (int[]){2, 1});
  /* ellipses (broadcast ellipsis dims, implicit output), repeated labels (diagonals, a trace) */
  einsum_case("...ij,...jk->...ik", 2, (const int64_t[][3]){{2, 3, 4}, {2, 4, 3}}, (int[]){3, 3});
  einsum_case("...ij,...jk->...ik", 2, (const int64_t[][3]){{2, 3, 4}, {1, 4, 3}}, (int[]){3, 3});
  einsum_case("...j,jk", 2, (const int64_t[][3]){{2, 3, 4}, {4, 2}}, (int[]){3, 2});
  einsum_case("i...,i...->i", 2, (const int64_t[][3]){{2, 3, 4}, {2, 1, 4}}, (int[]){3, 3});
  einsum_case("...ii->...i", 1, (const int64_t[][3]){{2, 3, 3}}, (int[]){3});
  einsum_case("ii", 1, (const int64_t[][3]){{3, 3}}, (int[]){2});
  einsum_case("iij,jk->ik", 2, (const int64_t[][3]){{3, 3, 2}, {2, 4}}, (int[]){3, 2});
  einsum_case("iii->", 1, (const int64_t[][3]){{3, 3, 3}}, (int[]){3});
  einsum_case("iij,ik->ijk", 2, (const int64_t[][3]){{2, 2, 3}, {2, 2}}, (int[]){3, 2});
  einsum_case("ija,ii->ja", 2, (const int64_t[][3]){{2, 3, 2}, {2, 2}}, (int[]){3, 2});
  einsum_case("...ij,...j->...i", 2, (const int64_t[][3]){{2, 3, 4}, {4}}, (int[]){3, 1});
  einsum_case("...j,...j", 2, (const int64_t[][3]){{3, 1, 4}, {2, 4}}, (int[]){3, 2});
  einsum_case("iij->j", 1, (const int64_t[][3]){{3, 3, 2}}, (int[]){3});
}
END_TEST

/* RNN / GRU / LSTM (ai.nibble RNNGrad / GRUGrad / LSTMGrad: the forward
 * recomputed, then back through time). The loss sees Y summed over time
 * plus Y_h and, for LSTM, 0.7 Y_c, so every output's gradient is used;
 * directions, layouts, biases, peepholes, initial states, sequence lengths
 * (one of them 0), clip, input_forget, GRU's linear_before_reset and other
 * activations. */
typedef struct rnn_fd {
  const char *op, *dir, *acts;
  int layout, bias, init, peep, seqlens, lbr, input_forget;
  float clip;
} rnn_fd;

static void rnn_case(const rnn_fd *k) {
  const int G = !strcmp(k->op, "RNN") ? 1 : !strcmp(k->op, "GRU") ? 3 : 4, lstm = G == 4;
  const int64_t S = 3, Bt = 2, I = 3, H = 2, nd = strcmp(k->dir, "bidirectional") ? 1 : 2;
  fd_case c;
  fd_begin(&c, 14);
  if (k->layout) fd_param(&c, D(Bt, S, I));
  else fd_param(&c, D(S, Bt, I));
  fd_param(&c, D(nd, G * H, I));
  fd_param(&c, D(nd, G * H, H));
  if (k->bias) fd_param(&c, D(nd, 2 * G * H));
  else fd_none(&c);
  if (k->seqlens) fd_const(&c, NBL_DT_INT32, D(Bt), (int32_t[]){3, 0});
  else fd_none(&c);
  if (k->init) {
    if (k->layout) fd_param(&c, D(Bt, nd, H));
    else fd_param(&c, D(nd, Bt, H));
  } else if (lstm && (k->init || k->peep)) {
    fd_none(&c);
  }
  if (lstm && k->init) {
    if (k->layout) fd_param(&c, D(Bt, nd, H));
    else fd_param(&c, D(nd, Bt, H));
  } else if (lstm && k->peep) {
    fd_none(&c);
  }
  if (lstm && k->peep) fd_param(&c, D(nd, 3 * H));
  while (c.n_in > 0 && c.in[c.n_in - 1] == NBL_NONE) c.n_in--;
  fd_node(&c, k->op, lstm ? 3 : 2);
  attr_i(&c, "hidden_size", H);
  attr_s(&c, "direction", k->dir);
  if (k->layout) attr_i(&c, "layout", 1);
  if (k->clip > 0) attr_f(&c, "clip", k->clip);
  if (k->lbr) attr_i(&c, "linear_before_reset", 1);
  if (k->input_forget) attr_i(&c, "input_forget", 1);
  if (k->acts) {
    const char *names[6];
    int n = 0;
    char buf[128];
    snprintf(buf, sizeof buf, "%s", k->acts);
    for (char *t = strtok(buf, ","); t && n < 6; t = strtok(NULL, ",")) names[n++] = t;
    nbl_attr *a = nbl_node_add_attr(c.g, c.node, "activations", NBL_ATTR_STRINGS);
    a->n = n;
    a->strings = nbl_arena_alloc(c.m->arena, sizeof(char *) * (size_t)n);
    a->string_lens = nbl_arena_alloc(c.m->arena, sizeof(size_t) * (size_t)n);
    for (int i = 0; i < n; i++) {
      a->strings[i] = nbl_arena_strdup(c.m->arena, names[i]);
      a->string_lens[i] = strlen(names[i]);
    }
  }
  /* the loss's input: sum over time of Y, + Y_h (+ 0.7 Y_c) */
  const nbl_node *nd0 = &c.g->nodes[c.node];
  nbl_id y = nd0->outputs[0], yh = nd0->outputs[1], yc = lstm ? nd0->outputs[2] : NBL_NONE;
  /* constants of the loss's nodes (not inputs of the node under test) */
  nbl_id ax = nbl_graph_add_value(c.g, "ax"), k7 = nbl_graph_add_value(c.g, "k7");
  const int64_t one = 1, axv = k->layout ? 1 : 0;
  const double sev = 0.7;
  nbl_type_set_tensor(c.m->arena, &c.g->values[ax].type, NBL_DT_INT64, 1, &one);
  nbl_graph_set_initializer(c.g, ax, nbl_tensor_new(c.m->arena, "ax", NBL_DT_INT64, 1, &one, &axv));
  nbl_type_set_tensor(c.m->arena, &c.g->values[k7].type, NBL_DT_DOUBLE, 0, NULL);
  nbl_graph_set_initializer(c.g, k7, nbl_tensor_new(c.m->arena, "k7", NBL_DT_DOUBLE, 0, NULL, &sev));
  nbl_id ys = nbl_graph_add_value(c.g, "ysum"), t1 = nbl_graph_add_value(c.g, "t1"), out = t1;
  nbl_id rin[2] = {y, ax};
  nbl_id rs = nbl_graph_add_node(c.g, "ReduceSum", "", "rs", 2, rin, 1, &ys);
  nbl_node_set_attr_int(c.g, rs, "keepdims", 0);
  nbl_id ain[2] = {ys, yh};
  nbl_graph_add_node(c.g, "Add", "", "a1", 2, ain, 1, &t1);
  if (lstm) {
    nbl_id m = nbl_graph_add_value(c.g, "m"), t2 = nbl_graph_add_value(c.g, "t2");
    nbl_id min[2] = {yc, k7}, a2[2] = {t1, m};
    nbl_graph_add_node(c.g, "Mul", "", "mc", 2, min, 1, &m);
    nbl_graph_add_node(c.g, "Add", "", "a2", 2, a2, 1, &t2);
    out = t2;
  }
  c.g->outputs[0] = out;
  char what[160];
  snprintf(what, sizeof what, "%s %s layout %d bias %d init %d peep %d seqlens %d lbr %d if %d clip %g %s", k->op,
           k->dir, k->layout, k->bias, k->init, k->peep, k->seqlens, k->lbr, k->input_forget, k->clip,
           k->acts ? k->acts : "");
  expect_fd(&c, what);
}

START_TEST(test_fd_recurrent) {
  const rnn_fd cases[] = {
      {"RNN", "forward", NULL, 0, 1, 1, 0, 0, 0, 0, 0},
      {"RNN", "bidirectional", NULL, 1, 1, 0, 0, 1, 0, 0, 0},
      {"RNN", "reverse", "Relu", 0, 0, 1, 0, 0, 0, 0, 0},
      {"GRU", "forward", NULL, 0, 1, 1, 0, 0, 0, 0, 0},
      {"GRU", "forward", NULL, 0, 1, 1, 0, 0, 1, 0, 0},
      {"GRU", "bidirectional", NULL, 1, 1, 1, 0, 1, 0, 0, 0},
      {"GRU", "reverse", "HardSigmoid,Softsign", 0, 1, 0, 0, 0, 1, 0, 0},
      {"LSTM", "forward", NULL, 0, 1, 1, 1, 0, 0, 0, 0},
      {"LSTM", "bidirectional", NULL, 1, 1, 1, 0, 1, 0, 0, 0},
      {"LSTM", "reverse", NULL, 0, 0, 0, 1, 0, 0, 1, 0},
      {"LSTM", "forward", NULL, 0, 1, 1, 1, 1, 0, 0, 0.9f},
      {"LSTM", "forward", "Sigmoid,Tanh,Softsign", 0, 1, 0, 0, 0, 0, 0, 0},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) rnn_case(&cases[i]);
}
END_TEST

/* The trigonometric, hyperbolic and piecewise activations added on
 * 2026-12-05 (ranges away from the kinks and the domains' edges). */
START_TEST(test_fd_more_unary) {
  unary("Tan", 13, -1.2, 1.2, NULL, 0, NULL, NULL);
  unary("Asin", 13, -0.9, 0.9, NULL, 0, NULL, NULL);
  unary("Acos", 13, -0.9, 0.9, NULL, 0, NULL, NULL);
  unary("Atan", 13, -3, 3, NULL, 0, NULL, NULL);
  unary("Sinh", 13, -2, 2, NULL, 0, NULL, NULL);
  unary("Cosh", 13, -2, 2, NULL, 0, NULL, NULL);
  unary("Asinh", 13, -3, 3, NULL, 0, NULL, NULL);
  unary("Acosh", 13, 1.1, 3, NULL, 0, NULL, NULL);
  unary("Atanh", 13, -0.9, 0.9, NULL, 0, NULL, NULL);
  unary("Elu", 13, -2, 2, "alpha", 0.7, NULL, NULL);
  unary("Selu", 13, -2, 2, NULL, 0, NULL, NULL);
  unary("Celu", 13, -2, 2, "alpha", 1.5, NULL, NULL);
  unary("ThresholdedRelu", 13, -2, 2, "alpha", 0.3, NULL, NULL);
  unary("Shrink", 13, -2, 2, "lambd", 0.4, NULL, NULL);
  unary("Mish", 18, -3, 3, NULL, 0, NULL, NULL);
}
END_TEST

/* GatherND (com.microsoft GatherNDGrad: repeats accumulate, negative
 * indices, batch_dims), ScatterElements and ScatterND (reduction none: the
 * overwritten data positions get no gradient; add: all of dY). */
START_TEST(test_fd_gather_nd_scatter) {
  fd_case c;
  fd_begin(&c, 13);
  fd_param(&c, D(3, 4));
  fd_i64(&c, D(4, 2), (int64_t[]){0, 1, 2, 3, 0, 1, -1, 0});
  fd_node(&c, "GatherND", 1);
  expect_fd(&c, "GatherND tuples of 2, a repeat, a negative index");
  fd_begin(&c, 13);
  fd_param(&c, D(2, 3, 2));
  fd_i64(&c, D(2, 2, 1), (int64_t[]){2, 0, 1, 1});
  fd_node(&c, "GatherND", 1);
  attr_i(&c, "batch_dims", 1);
  expect_fd(&c, "GatherND batch_dims 1, slices");
  const char *reds[2] = {"none", "add"};
  for (int k = 0; k < 2; k++) {
    char what[64];
    fd_begin(&c, 16);
    fd_param(&c, D(3, 4));
    fd_i64(&c, D(2, 3), (int64_t[]){0, 2, 1, 1, 0, 2});
    fd_param(&c, D(2, 3));
    fd_node(&c, "ScatterElements", 1);
    attr_i(&c, "axis", 0);
    attr_s(&c, "reduction", reds[k]);
    snprintf(what, sizeof what, "ScatterElements axis 0 reduction %s", reds[k]);
    expect_fd(&c, what);
    fd_begin(&c, 16);
    fd_param(&c, D(4, 3));
    fd_i64(&c, D(2, 1), (int64_t[]){3, 1});
    fd_param(&c, D(2, 3));
    fd_node(&c, "ScatterND", 1);
    attr_s(&c, "reduction", reds[k]);
    snprintf(what, sizeof what, "ScatterND rows, reduction %s", reds[k]);
    expect_fd(&c, what);
  }
  fd_begin(&c, 13);
  fd_param(&c, D(3, 4));
  fd_i64(&c, D(3, 1), (int64_t[]){3, 0, 1});
  fd_param(&c, D(3, 1));
  fd_node(&c, "ScatterElements", 1);
  attr_i(&c, "axis", 1);
  expect_fd(&c, "ScatterElements axis 1 (opset 13)");
}
END_TEST

/* ReduceProd: axes as attribute (opset 13) and as input (opset 18),
 * keepdims 0 and 1, every axis, the identity of noop_with_empty_axes; zeros
 * as PyTorch's prod backward: one zero in a slice gets the product of the
 * others and the rest 0, two zeros give 0 throughout (the product is linear
 * in each element, so the central differences are exact there too). */
static void prod_case(const char *what, int opset, const int64_t *axes, int na, int keepdims, int noop,
                      const double *data) {
  fd_case c;
  fd_begin(&c, opset);
  if (data) fd_param_data(&c, D(3, 4), data);
  else fd_param_range(&c, D(2, 3, 4), 0.5, 1.5);
  if (opset >= 18 && na) fd_i64(&c, 1, (int64_t[]){na}, axes);
  fd_node(&c, "ReduceProd", 1);
  if (opset < 18 && na) ints(&c, "axes", na, axes);
  attr_i(&c, "keepdims", keepdims);
  if (noop) attr_i(&c, "noop_with_empty_axes", 1);
  expect_fd(&c, what);
}

START_TEST(test_fd_reduceprod) {
  prod_case("ReduceProd axis 1 keepdims (opset 13)", 13, (int64_t[]){1}, 1, 1, 0, NULL);
  prod_case("ReduceProd axes 0, 2 (opset 13)", 13, (int64_t[]){0, 2}, 2, 0, 0, NULL);
  prod_case("ReduceProd all (opset 13)", 13, NULL, 0, 0, 0, NULL);
  prod_case("ReduceProd axes -1, 0 as input (opset 18)", 18, (int64_t[]){-1, 0}, 2, 0, 0, NULL);
  prod_case("ReduceProd all keepdims (opset 18)", 18, NULL, 0, 1, 0, NULL);
  prod_case("ReduceProd noop_with_empty_axes", 18, NULL, 0, 1, 1, NULL);
  /* rows: no zero, one zero, two zeros */
  const double z[12] = {0.9, -1.2, 1.1, 0.7, 1.3, 0, -0.8, 1.4, 0, 0.6, 0, -1.1};
  prod_case("ReduceProd rows with 0, 1 and 2 zeros", 13, (int64_t[]){1}, 1, 0, 0, z);
  prod_case("ReduceProd columns with zeros (opset 18)", 18, (int64_t[]){0}, 1, 1, 0, z);
  prod_case("ReduceProd all with two zeros", 18, NULL, 0, 0, 0, z);
  const double z1[12] = {0.9, -1.2, 1.1, 0.7, 1.3, 0, -0.8, 1.4, 1.2, 0.6, 0.8, -1.1};
  prod_case("ReduceProd all with one zero", 13, NULL, 0, 0, 0, z1);
}
END_TEST

/* LpNormalization p = 1 and 2, the default axis (-1) and axis 1. */
START_TEST(test_fd_lpnorm) {
  for (int p = 1; p <= 2; p++)
    for (int ax = 0; ax < 2; ax++) {
      fd_case c;
      char what[64];
      fd_begin(&c, 13);
      fd_param_range(&c, D(2, 3, 4), -2, 2);
      fd_node(&c, "LpNormalization", 1);
      attr_i(&c, "p", p);
      if (ax) attr_i(&c, "axis", 1);
      snprintf(what, sizeof what, "LpNormalization p %d axis %d", p, ax ? 1 : -1);
      expect_fd(&c, what);
    }
}
END_TEST

/* Scatter: ScatterElements without reduction. At opsets 9-10 build-training
 * renames it (conversion to 13); a Scatter node in an opset-13 model reaches
 * its own rule. */
START_TEST(test_fd_scatter_old) {
  for (int opset = 9; opset <= 13; opset += opset == 10 ? 3 : 1) {
    fd_case c;
    char what[64];
    fd_begin(&c, opset);
    fd_param(&c, D(3, 4));
    fd_i64(&c, D(2, 3), (int64_t[]){0, 2, 1, 1, 0, 2});
    fd_param(&c, D(2, 3));
    fd_node(&c, "Scatter", 1);
    attr_i(&c, "axis", opset & 1);
    snprintf(what, sizeof what, "Scatter opset %d axis %d", opset, opset & 1);
    expect_fd(&c, what);
  }
}
END_TEST

/* LpPool (ai.nibble LpPoolGrad): 2-D and 1-D, p 1, 2 and 3, strides,
 * pads, auto_pad, ceil_mode and dilations (opset 18), overlapping windows;
 * GlobalLpPool (composed of standard ops). */
static void lppool_case(const char *what, int opset, int rank, const int64_t *xd, int p, const int64_t *k,
                        const int64_t *s, const int64_t *pads, const char *auto_pad, int ceil, const int64_t *dil) {
  fd_case c;
  int ns = rank - 2;
  fd_begin(&c, opset);
  fd_param_range(&c, rank, xd, -2, 2);
  fd_node(&c, "LpPool", 1);
  ints(&c, "kernel_shape", ns, k);
  attr_i(&c, "p", p);
  if (s) ints(&c, "strides", ns, s);
  if (pads) ints(&c, "pads", 2 * ns, pads);
  if (auto_pad) attr_s(&c, "auto_pad", auto_pad);
  if (ceil) attr_i(&c, "ceil_mode", 1);
  if (dil) ints(&c, "dilations", ns, dil);
  expect_fd(&c, what);
}

START_TEST(test_fd_lppool) {
  lppool_case("LpPool 2-D p 2 k 3 s 2 pads 1", 13, 4, (int64_t[]){2, 2, 5, 6}, 2, (int64_t[]){3, 3},
              (int64_t[]){2, 2}, (int64_t[]){1, 1, 1, 1}, NULL, 0, NULL);
  lppool_case("LpPool 2-D p 3 k 2x3 overlapping", 13, 4, (int64_t[]){1, 2, 4, 5}, 3, (int64_t[]){2, 3},
              NULL, NULL, NULL, 0, NULL);
  lppool_case("LpPool 2-D p 1 k 2 s 2", 13, 4, (int64_t[]){1, 3, 4, 4}, 1, (int64_t[]){2, 2},
              (int64_t[]){2, 2}, NULL, NULL, 0, NULL);
  lppool_case("LpPool 1-D p 2 k 3 s 2 pads 0, 2", 13, 3, (int64_t[]){2, 3, 7}, 2, (int64_t[]){3},
              (int64_t[]){2}, (int64_t[]){0, 2}, NULL, 0, NULL);
  lppool_case("LpPool 1-D p 1 SAME_UPPER", 13, 3, (int64_t[]){1, 2, 6}, 1, (int64_t[]){4}, (int64_t[]){1},
              NULL, "SAME_UPPER", 0, NULL);
  lppool_case("LpPool 2-D p 2 ceil_mode dilations 2 (opset 18)", 18, 4, (int64_t[]){1, 2, 8, 7}, 2,
              (int64_t[]){2, 2}, (int64_t[]){2, 2}, NULL, NULL, 1, (int64_t[]){2, 1});
  for (int p = 1; p <= 3; p++) {
    fd_case c;
    char what[64];
    fd_begin(&c, 13);
    fd_param_range(&c, p == 2 ? 3 : 4, p == 2 ? (int64_t[]){2, 3, 5} : (int64_t[]){2, 3, 2, 3}, -2, 2);
    fd_node(&c, "GlobalLpPool", 1);
    attr_i(&c, "p", p);
    snprintf(what, sizeof what, "GlobalLpPool p %d %s", p, p == 2 ? "1-D" : "2-D");
    expect_fd(&c, what);
  }
}
END_TEST

/* MaxUnpool: dY gathered at the indices (one per window of a 2x2 / 3 pool,
 * distinct); output_shape larger than the default (Slice), smaller (Pad:
 * the indices beyond it dropped, no gradient), 1-D with pads. */
static void maxunpool_case(const char *what, int rank, const int64_t *xd, const int64_t *k, const int64_t *pads,
                           const int64_t *os) {
  fd_case c;
  int ns = rank - 2;
  int64_t n = nbl_shape_numel(rank, xd), idx[64], H = ns == 2 ? xd[2] * k[0] : 1, W = xd[rank - 1] * k[ns - 1];
  if (pads) W -= pads[ns - 1] + pads[2 * ns - 1];
  for (int64_t i = 0; i < n; i++) { /* element i of window (oh, ow) of plane pl: a tap of its own */
    int64_t ow = i % xd[rank - 1], oh = ns == 2 ? i / xd[rank - 1] % xd[2] : 0, pl = i / (xd[rank - 1] * (ns == 2 ? xd[2] : 1));
    int64_t a = ns == 2 ? (i * 7 / 3) % k[0] : 0, b = (i * 5 + 1) % k[ns - 1], col = ow * k[ns - 1] + b;
    if (pads) col = col - pads[ns - 1] < 0 ? 0 : col - pads[ns - 1] >= W ? W - 1 : col - pads[ns - 1];
    idx[i] = pl * H * W + (oh * (ns == 2 ? k[0] : 1) + a) * W + col;
  }
  fd_begin(&c, 13);
  fd_param(&c, rank, xd);
  fd_i64(&c, rank, xd, idx);
  if (os) fd_i64(&c, 1, (int64_t[]){rank}, os);
  fd_node(&c, "MaxUnpool", 1);
  ints(&c, "kernel_shape", ns, k);
  ints(&c, "strides", ns, k);
  if (pads) ints(&c, "pads", 2 * ns, pads);
  expect_fd(&c, what);
}

START_TEST(test_fd_maxunpool) {
  maxunpool_case("MaxUnpool 2-D k 2", 4, (int64_t[]){1, 2, 2, 3}, (int64_t[]){2, 2}, NULL, NULL);
  maxunpool_case("MaxUnpool 2-D k 2x3", 4, (int64_t[]){2, 1, 2, 3}, (int64_t[]){2, 3}, NULL, NULL);
  maxunpool_case("MaxUnpool output_shape larger", 4, (int64_t[]){1, 2, 2, 3}, (int64_t[]){2, 2}, NULL,
                 (int64_t[]){1, 2, 5, 7});
  maxunpool_case("MaxUnpool output_shape smaller (drops)", 4, (int64_t[]){1, 2, 2, 3}, (int64_t[]){2, 2}, NULL,
                 (int64_t[]){1, 2, 3, 5});
  maxunpool_case("MaxUnpool 1-D k 3 pads 1, 1", 3, (int64_t[]){2, 2, 3}, (int64_t[]){3}, (int64_t[]){1, 1}, NULL);
}
END_TEST

/* GridSample (ai.nibble GridSampleGrad): bilinear and nearest, align_corners
 * 0 and 1, padding zeros, border and reflection, a grid reaching outside
 * [-1, 1]; gradients for X and the grid (nearest: the grid's is 0, as
 * PyTorch's; the central differences agree away from the rounding points). */
START_TEST(test_fd_gridsample) {
  const char *modes[2] = {"bilinear", "nearest"}, *pads[3] = {"zeros", "border", "reflection"};
  for (int m = 0; m < 2; m++)
    for (int ac = 0; ac < 2; ac++)
      for (int p = 0; p < 3; p++) {
        fd_case c;
        char what[96];
        fd_begin(&c, 16);
        fd_param_range(&c, D(1, 2, 4, 5), -2, 2);
        fd_param_range(&c, D(1, 3, 2, 2), -1.3, 1.3);
        fd_node(&c, "GridSample", 1);
        attr_s(&c, "mode", modes[m]);
        attr_s(&c, "padding_mode", pads[p]);
        attr_i(&c, "align_corners", ac);
        snprintf(what, sizeof what, "GridSample %s align_corners %d %s", modes[m], ac, pads[p]);
        expect_fd(&c, what);
      }
  fd_case c;
  fd_begin(&c, 20);
  fd_param_range(&c, D(2, 1, 3, 3), -2, 2);
  fd_param_range(&c, D(2, 2, 3, 2), -1, 1);
  fd_node(&c, "GridSample", 1);
  expect_fd(&c, "GridSample linear (opset 20 default)");
}
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("grad_rules");
  TCase *t = tcase_create("core");
  tcase_set_timeout(t, 600);
  tcase_add_test(t, test_fd_prelu_extremes_tile_space);
  tcase_add_test(t, test_fd_lrn_instnorm);
  tcase_add_test(t, test_fd_resize);
  tcase_add_test(t, test_fd_gather_elements_topk);
  tcase_add_test(t, test_fd_einsum);
  tcase_add_test(t, test_fd_recurrent);
  tcase_add_test(t, test_fd_more_unary);
  tcase_add_test(t, test_fd_gather_nd_scatter);
  tcase_add_test(t, test_fd_reduceprod);
  tcase_add_test(t, test_fd_lpnorm);
  tcase_add_test(t, test_fd_scatter_old);
  tcase_add_test(t, test_fd_lppool);
  tcase_add_test(t, test_fd_maxunpool);
  tcase_add_test(t, test_fd_gridsample);
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
