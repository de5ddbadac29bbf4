/* test_fuse_train.c - the training-graph fusions (runtime/fusions/fuse_bn_act.c,
 * fuse_bn_grad.c, fuse_log_pair.c, fuse_pool_grad.c) against the unfused
 * graph, which stays the reference (NBL_NO_FUSION).
 *
 * sessions: the shipped LeNet-5 and ResNet-8 training graphs, FP32
 *   (build-training) and 4-bit (quantize-int4, build-training,
 *   quantize-grad-log4{rounding=tpr}, int4-backward), train four steps side
 *   by side, one session planned with the fusions and one with
 *   NBL_NO_FUSION=all, at 1 and 2 threads: every loss, every gradient and
 *   every updated parameter must be equal bit for bit. The fused kernels
 *   compute the same float operations in the same order as the op kernels
 *   they replace (selections of the same float sums, then
 *   BatchNormalizationGrad's own per-channel kernel), so there is no
 *   rounding to allow for: any difference is a bug. The profile must show
 *   the fused nodes: on ResNet-8 bn-grad takes every BatchNormalizationGrad
 *   but the two of the projection shortcuts (their ReluGrad is shared; the
 *   stem's with the QuantizeInt4Grad on its Add's operand, 4-bit),
 *   bn-act every BatchNorm -> [Add ->] Relu [-> QuantizeInt4] (7; the
 *   shortcuts' BatchNorms feed an Add whose other operand is a BatchNorm
 *   too, and only one of them is taken); of the 8 pairs of tpr QuantizeLog
 *   the 6 on a fused BatchNormalizationGrad's dX run in that node, the 2 of
 *   the shortcuts (skip-1x1=0) as log-pair nodes; LeNet-5 has no BatchNorm (log-pair,
 *   3 pairs), two MaxPoolGrad -> ReluGrad (pool-grad) and, in the 4-bit
 *   graph (FP32: conv-act takes the Relu), two Relu -> MaxPool
 *   (relu-pool); ResNet-8 no MaxPool.
 * pool: hand-built Relu -> MaxPool ... MaxPoolGrad -> ReluGrad (relu-pool, pool-grad),
 *   2 x 2 windows of stride 2 on even, odd and wide planes and 3 x 3 with
 *   pads, NaN, zeros and -0 in X and dY, 1 and 2 threads: the same bits.
 * fwd: hand-built BatchNormInternal -> [Add ->] Relu [-> QuantizeInt4] (affine,
 *   symmetric, stochastic) and two QuantizeLog beside them, odd sizes, NaN
 *   and -Inf in X (the quantizer's reference path), 1 and 2 threads; and two
 *   QuantizeLog alone on sizes around the kernel's chunk: the same bits.
 * chain: a hand-built chain Add -> QuantizeInt4Grad -> ReluGrad ->
 *   BatchNormalizationGrad (and the shorter chains) on odd sizes (channels
 *   and planes off the vector widths), with zeros, NaN and Inf among the
 *   inputs, a broadcast Add operand and a ReluGrad output that is also a
 *   graph output, and dX read by a tpr QuantizeLog pair (which the fused
 *   node then runs too), and QuantizeInt4Grad on one operand of the Add
 *   instead of its sum (the stem's chain; either operand, with the other
 *   broadcast): fused and unfused engines give the same bits; and
 *   with QuantizeInt4Grad given the scale and zero point of a QuantizeInt4
 *   of V (as build-training wires them), fused and unfused, the same bits
 *   as the unfused chain that scans V.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "include/nibble.h"
#include "fuse_test.h"
#include "ir/ir.h"
#include "runtime/core/exec.h"
#include "runtime/formats/int4.h"
#include "runtime/kernels/q4_train.h"
#include "test_model.h"
#include "ck_elem.h"

typedef struct run {
  nbl_train_session *s;
  nbl_host_tensor in[2];
} run;

/* A session of m; fused = 0 plans it with NBL_NO_FUSION=all. */
static void run_open(run *r, const nbl_model *m, int fused, int threads, const nbl_host_tensor *x,
                     const nbl_host_tensor *y) {
  if (!fused) setenv("NBL_NO_FUSION", "all", 1);
  nbl_train_options o = {.threads = threads, .profile = 1};
  nbl_status st = nbl_train_session_create(m, &o, &r->s);
  unsetenv("NBL_NO_FUSION");
  ck_assert_msg(st == NBL_OK, "%s", nbl_last_error());
  for (int i = 0; i < 2; i++) {
    const char *nm = nbl_train_input_name(r->s, i);
    r->in[i] = strcmp(nm, "label") ? *x : *y;
    r->in[i].name = nm;
  }
  ck_assert_int_eq(nbl_train_set_lr(r->s, 0.05), NBL_OK);
}

/* Nodes of the session's profile whose op type contains `what`. */
static int fused_nodes(const run *r, const char *what) {
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  ck_assert_ptr_nonnull(f);
  ck_assert_int_eq(nbl_train_print_profile(r->s, f, 0), NBL_OK);
  fclose(f);
  int n = 0;
  for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
    char op[128];
    int cnt;
    if (sscanf(line, "%127[^ ] %*s %d", op, &cnt) == 2 && strstr(op, what)) n += cnt;
  }
  free(buf);
  return n;
}

static void same_bits(const nbl_host_tensor *a, const nbl_host_tensor *b, const char *what, const char *model,
                      int threads, int step) {
  ck_assert_uint_eq(a->nbytes, b->nbytes);
  const float *pa = a->data, *pb = b->data;
  for (size_t k = 0; k < a->nbytes / sizeof(float); k++)
    ck_elem_msg(!memcmp(&pa[k], &pb[k], sizeof(float)), "%s, %d thread(s), step %d: %s %s [%zu]: fused %.9g vs %.9g",
                model, threads, step, what, a->name ? a->name : "?", k, pa[k], pb[k]);
}

typedef struct train_case {
  const char *model, *spec;
  int bn_act, bn_grad, log_pair, pool_grad, relu_pool; /* fused nodes expected of each fusion */
  int grad_log;                  /* bn-grad nodes that run the QuantizeLog pair of their dX too */
  int q4_operand;                /* bn-grad nodes with QuantizeInt4Grad on an Add operand (the stem's) */
} train_case;

/* skip-1x1=0: the shortcuts' gradients in 4 bits too (their QuantizeLog pairs
 * fused); the activations=mse cases keep the default (float shortcuts) */
#define Q4_TRAIN "build-training,quantize-grad-log4{rounding=tpr,skip-1x1=0},int4-backward"
#define Q4_TRAIN_DEFAULT "build-training,quantize-grad-log4{rounding=tpr},int4-backward"
#define Q4 "quantize-int4," Q4_TRAIN
static const train_case tcases[] = {
    {"models/resnet8_init.onnx", "build-training", 7, 7, 0, 0, 0, 0},
    {"models/resnet8_init.onnx", Q4, 7, 7, 2, 0, 0, 6, 1},
    {"models/lenet5_init.onnx", "build-training", 0, 0, 0, 2, 0, 0},
    {"models/lenet5_init.onnx", Q4, 0, 0, 3, 2, 2, 0},
    /* activations clipped where the squared error is least (nibble train --int4) */
    {"models/resnet8_init.onnx", "quantize-int4{activations=mse}," Q4_TRAIN_DEFAULT, 7, 7, 0, 0, 0, 6, 1},
    {"models/lenet5_init.onnx", "quantize-int4{activations=mse}," Q4_TRAIN_DEFAULT, 0, 0, 3, 2, 2, 0},
};

START_TEST(test_sessions) {
  const train_case *c = &tcases[_i / 2];
  int threads = 1 + _i % 2;
  nbl_model *m = tm_prepared(c->model, c->spec);
  nbl_host_tensor x, y;
  tm_batch(16, &x, &y);
  run rf, ru;
  run_open(&rf, m, 1, threads, &x, &y);
  run_open(&ru, m, 0, threads, &x, &y);
  for (int step = 1; step <= 4; step++) {
    float lf, lu;
    ck_assert_msg(nbl_train_step(rf.s, 2, rf.in, &lf) == NBL_OK, "%s", nbl_last_error());
    ck_assert_msg(nbl_train_step(ru.s, 2, ru.in, &lu) == NBL_OK, "%s", nbl_last_error());
    ck_assert_msg(!memcmp(&lf, &lu, sizeof lf), "%s %s, %d thread(s), step %d: loss %.9g fused vs %.9g", c->model,
                  c->spec, threads, step, lf, lu);
    int n = nbl_train_grad_count(rf.s);
    ck_assert_int_eq(n, nbl_train_grad_count(ru.s));
    for (int i = 0; i < n; i++) {
      nbl_host_tensor a, b;
      ck_assert_int_eq(nbl_train_grad(rf.s, i, &a), NBL_OK);
      ck_assert_int_eq(nbl_train_grad(ru.s, i, &b), NBL_OK);
      same_bits(&a, &b, "gradient", c->model, threads, step);
    }
    for (run *r = &rf; r; r = r == &rf ? &ru : NULL) {
      ck_assert_msg(nbl_optimizer_step(r->s) == NBL_OK, "%s", nbl_last_error());
      ck_assert_int_eq(nbl_train_reset_grad(r->s), NBL_OK);
    }
    n = nbl_train_param_count(rf.s);
    for (int i = 0; i < n; i++) {
      nbl_host_tensor a, b;
      ck_assert_int_eq(nbl_train_param(rf.s, i, &a), NBL_OK);
      ck_assert_int_eq(nbl_train_param(ru.s, i, &b), NBL_OK);
      same_bits(&a, &b, "parameter", c->model, threads, step);
    }
  }
  ck_assert_int_eq(fused_nodes(&rf, "BN+"), c->bn_act);
  ck_assert_int_eq(fused_nodes(&rf, "BNGrad"), c->bn_grad);
  ck_assert_int_eq(fused_nodes(&rf, "QuantizeLog*2"), c->log_pair);
  ck_assert_int_eq(fused_nodes(&rf, "MaxPoolGrad+ReluGrad"), c->pool_grad);
  ck_assert_int_eq(fused_nodes(&rf, "Relu+MaxPool"), c->relu_pool);
  ck_assert_int_eq(fused_nodes(&rf, "BNGrad+Log*2"), c->grad_log);
  ck_assert_int_eq(fused_nodes(&rf, "Q4Grad+Add+ReluGrad+BNGrad"), c->q4_operand);
  ck_assert_int_eq(fused_nodes(&ru, "+") + fused_nodes(&ru, "*2"), 0);
  nbl_train_session_free(rf.s);
  nbl_train_session_free(ru.s);
  nbl_host_tensor_free(&x);
  nbl_host_tensor_free(&y);
  nbl_model_free(m);
}
END_TEST


/* ------------------------------------------------------------------ one chain, hand-built */

typedef struct chain_case {
  int64_t N, C, H, W;
  int add;       /* 0: none; 1: Add of two X-shaped gradients; 2: the second broadcast from [C, 1, 1] */
  int q4;        /* 0: none; 1: QuantizeInt4Grad affine/max; 2: symmetric/max; 3: affine/max, stochastic */
  int keep_r;    /* ReluGrad's output is a graph output too */
  int specials;  /* zeros, NaN and Inf among V and the gradients */
  int logs;      /* dX read by two QuantizeLog (tpr phases 0 and 1) instead of being an output */
  int given;     /* QuantizeInt4Grad takes the scale and zero point of a QuantizeInt4 of V (as
                    build-training wires them) instead of scanning V */
  int q_op;      /* 0: QuantizeInt4Grad (when q4) on the Add's sum; 1, 2: on the Add's operand 0, 1
                    (the stem's Relu output feeding a quantized conv and an identity shortcut) */
} chain_case;

static float urand(unsigned *st) {
  *st = *st * 1664525u + 1013904223u;
  return (float)((*st >> 8) & 0xFFFF) / 32768.0f - 1.0f;
}

/* Runs model m twice (the second run in the planned arena, which must give
 * the same bits) on feeds[0..nf), planned with the fusions or with
 * NBL_NO_FUSION=all; returns its outputs concatenated (malloc'd, *n floats)
 * and in *hit whether the profile names an op type containing `pattern`. */
static float *exec_model(nbl_model *m, const nbl_host_tensor *feeds, int nf, int fused, int threads,
                         const char *pattern, int64_t *n, int *hit) {
  if (!fused) setenv("NBL_NO_FUSION", "all", 1);
  nbl_session_options opt = {.threads = threads, .profile = 1};
  nbl_session *s = NULL;
  nbl_status cst = nbl_session_create(m, &opt, &s);
  unsetenv("NBL_NO_FUSION");
  ck_assert_msg(cst == NBL_OK, "%s", nbl_last_error());
  float *out = NULL;
  for (int run = 0; run < 2; run++) {
    const nbl_host_tensor *res = NULL;
    ck_assert_msg(nbl_session_run(s, nf, feeds, &res) == NBL_OK, "%s", nbl_last_error());
    int no = nbl_session_output_count(s);
    size_t total = 0;
    for (int o = 0; o < no; o++) total += res[o].nbytes;
    float *cat = malloc(total ? total : 1);
    size_t at = 0;
    for (int o = 0; o < no; o++) {
      memcpy((char *)cat + at, res[o].data, res[o].nbytes);
      at += res[o].nbytes;
    }
    *n = (int64_t)(total / sizeof(float));
    if (run == 0) {
      out = cat;
    } else {
      ck_assert(memcmp(out, cat, total) == 0);
      free(cat);
    }
  }
  char *text = ft_profile(s);
  *hit = strstr(text, pattern) != NULL;
  free(text);
  nbl_session_free(s);
  return out;
}

/* Adds QuantizeInt4Grad(dy, v) of chain case c (its mode, and with c->given
 * a QuantizeInt4 of v giving it the scale and zero point) to g; returns its
 * output. */
static nbl_id add_q4grad(nbl_graph *g, const chain_case *c, nbl_id dy, nbl_id v) {
  nbl_id qout = nbl_graph_add_value(g, "gq");
  nbl_id qin[5] = {dy, v, NBL_NONE, NBL_NONE, NBL_NONE}, fq = NBL_NONE;
  if (c->given) { /* the forward quantizer of V, its scale and zero point wired as build-training does */
    nbl_id fo[3] = {nbl_graph_add_value(g, "vq"), nbl_graph_add_value(g, "vq_scale"),
                    nbl_graph_add_value(g, "vq_zero")};
    fq = nbl_graph_add_node(g, "QuantizeInt4", "ai.nibble", "q4fwd", 1, &v, 3, fo);
    qin[3] = fo[1];
    qin[4] = fo[2];
  }
  nbl_id q = nbl_graph_add_node(g, "QuantizeInt4Grad", "ai.nibble", "q4grad", c->given ? 5 : 2, qin, 1, &qout);
  for (nbl_id qn = q; qn != NBL_NONE; qn = qn == q ? fq : NBL_NONE) {
    nbl_node_set_attr_int(g, qn, "bits", 4);
    nbl_node_set_attr_string(g, qn, "mode", c->q4 == 2 ? "symmetric" : "affine");
    nbl_node_set_attr_string(g, qn, "scale_source", "max");
    if (c->q4 == 3) nbl_node_set_attr_string(g, qn, "rounding", "stochastic");
  }
  return qout;
}

/* The chain's outputs (dX, dscale, dbias[, ReluGrad's]) concatenated
 * (malloc'd, *n floats); *fused: the profile showed a fused node. */
static float *run_chain(const chain_case *c, int fused, int threads, int64_t *n, int *was_fused) {
  nbl_model *m = nbl_model_new();
  nbl_model_set_opset(m, "", 13);
  nbl_model_set_opset(m, "com.microsoft", 1);
  nbl_model_set_opset(m, "ai.nibble", 1);
  nbl_graph *g = m->graph;
  int64_t dims[4] = {c->N, c->C, c->H, c->W}, cd[1] = {c->C}, bd[3] = {c->C, 1, 1};
  int64_t numel = c->N * c->C * c->H * c->W;
  const char *names[7] = {"d0", "d1", "v", "x", "scale", "mean", "inv"};
  nbl_id in[7];
  float *data[7];
  unsigned st = 12345u + (unsigned)(c->C * 7 + c->H);
  nbl_host_tensor feeds[7];
  memset(feeds, 0, sizeof feeds);
  int nf = 0;
  for (int k = 0; k < 7; k++) {
    int per_c = k >= 4, bc = k == 1 && c->add == 2;
    int rank = per_c ? 1 : bc ? 3 : 4;
    const int64_t *d = per_c ? cd : bc ? bd : dims;
    int64_t cnt = per_c || bc ? c->C : numel;
    data[k] = malloc(sizeof(float) * (size_t)cnt);
    for (int64_t i = 0; i < cnt; i++) {
      float r = urand(&st);
      if (k == 6) r = 0.5f + fabsf(r) * 2; /* inverse std > 0 */
      if (k == 2 && i % 5 == 0) r = 0.0f;  /* Relu outputs: zeros, and some negatives */
      if (c->specials && k == 2 && i % 97 == 3) r = NAN;
      if (c->specials && k == 2 && i % 131 == 7) r = INFINITY;
      if (c->specials && k == 0 && i % 89 == 5) r = NAN;
      if (c->specials && k == 0 && i % 61 == 1) r = 0.0f;
      data[k][i] = r;
    }
    in[k] = nbl_graph_add_value(g, names[k]);
    if (k == 1 && !c->add) continue;
    nbl_type_set_tensor(m->arena, &g->values[in[k]].type, NBL_DT_FLOAT, rank, d);
    nbl_graph_add_input(g, in[k]);
    feeds[nf] = (nbl_host_tensor){.name = names[k], .dtype = NBL_DT_FLOAT, .rank = rank, .data = data[k],
                                  .nbytes = sizeof(float) * (size_t)cnt};
    memcpy(feeds[nf].dims, d, sizeof(int64_t) * (size_t)rank);
    nf++;
  }
  nbl_id ain[2] = {in[0], in[1]};
  if (c->q_op) ain[c->q_op - 1] = add_q4grad(g, c, ain[c->q_op - 1], in[2]);
  nbl_id gsum = in[0];
  if (c->add) {
    gsum = nbl_graph_add_value(g, "gsum");
    nbl_graph_add_node(g, "Add", "", "sum", 2, ain, 1, &gsum);
  }
  nbl_id gq = c->q4 && !c->q_op ? add_q4grad(g, c, gsum, in[2]) : gsum;
  nbl_id gr = nbl_graph_add_value(g, "gr");
  nbl_id rin[2] = {gq, in[2]};
  nbl_graph_add_node(g, "ReluGrad", "com.microsoft", "relugrad", 2, rin, 1, &gr);
  nbl_id outs[3] = {nbl_graph_add_value(g, "dx"), nbl_graph_add_value(g, "dscale"), nbl_graph_add_value(g, "dbias")};
  nbl_id bin[5] = {gr, in[3], in[4], in[5], in[6]};
  nbl_graph_add_node(g, "BatchNormalizationGrad", "com.microsoft", "bngrad", 5, bin, 3, outs);
  for (int k = c->logs ? 1 : 0; k < 3; k++) nbl_graph_add_output(g, outs[k]);
  if (c->keep_r) nbl_graph_add_output(g, gr);
  for (int k = 0; c->logs && k < 2; k++) {
    nbl_id y = nbl_graph_add_value(g, k ? "log1" : "log0");
    nbl_id l = nbl_graph_add_node(g, "QuantizeLog", "ai.nibble", k ? "l1" : "l0", 1, &outs[0], 1, &y);
    nbl_node_set_attr_int(g, l, "radix", 4);
    nbl_node_set_attr_string(g, l, "rounding", "tpr");
    nbl_node_set_attr_int(g, l, "phase", k);
    nbl_graph_add_output(g, y);
  }
  ck_assert_msg(nbl_graph_verify(g, "chain") == NBL_OK, "%s", nbl_last_error());
  const char *pattern = c->logs ? "BNGrad+Log*2" : "BNGrad";
  if (c->q_op) pattern = c->logs ? "Q4Grad+Add+ReluGrad+BNGrad+Log*2" : "Q4Grad+Add+ReluGrad+BNGrad";
  float *out = exec_model(m, feeds, nf, fused, threads, pattern, n, was_fused);
  nbl_model_free(m);
  for (int k = 0; k < 7; k++) free(data[k]);
  return out;
}

static const chain_case ccases[] = {
    {3, 5, 7, 9, 1, 1, 0, 0},  {3, 5, 7, 9, 1, 1, 1, 1},  {2, 17, 5, 5, 0, 1, 0, 1}, {2, 17, 5, 5, 1, 0, 0, 0},
    {2, 3, 11, 3, 0, 0, 1, 1}, {2, 3, 11, 3, 2, 1, 0, 0}, {4, 6, 4, 5, 2, 2, 1, 1},  {3, 5, 6, 7, 1, 3, 0, 0},
    {1, 1, 1, 1, 1, 1, 0, 0},  {64, 3, 4, 4, 1, 1, 0, 1},  {3, 5, 7, 9, 1, 1, 0, 0, 1}, {2, 17, 5, 5, 0, 1, 1, 1, 1},
    {2, 3, 11, 3, 2, 0, 0, 1, 1}, {64, 3, 4, 4, 1, 3, 1, 0, 1},
    /* with the forward's scale and zero point */
    {3, 5, 7, 9, 1, 1, 0, 1, 0, 1}, {2, 17, 5, 5, 0, 2, 1, 1, 1, 1}, {3, 5, 6, 7, 1, 3, 0, 1, 0, 1},
    {64, 3, 4, 4, 1, 1, 0, 0, 1, 1}, {2, 3, 11, 3, 2, 2, 0, 0, 0, 1},
    /* QuantizeInt4Grad on one operand of the Add */
    {3, 5, 7, 9, 1, 1, 0, 1, 0, 0, 1}, {2, 17, 5, 5, 1, 2, 1, 1, 1, 1, 2}, {4, 6, 4, 5, 2, 1, 0, 1, 0, 1, 1},
    {3, 5, 6, 7, 1, 3, 0, 1, 0, 0, 2}, {64, 3, 4, 4, 1, 1, 0, 0, 1, 1, 1}, {2, 3, 11, 3, 2, 3, 0, 1, 0, 1, 1},
    {1, 1, 1, 1, 1, 2, 0, 0, 0, 0, 2},
};

/* ------------------------------------------------------------------ MaxPoolGrad -> ReluGrad, hand-built */

typedef struct pool_case {
  int64_t N, C, H, W, k, s, p; /* k x k windows, stride s, pads p on every side */
} pool_case;

/* V = Relu(X), (Y, I) = MaxPool(V), dX = MaxPoolGrad(dY, I, Shape(V)),
 * out = ReluGrad(dX, V); X with zeros, negatives and NaN, dY with -0 and
 * NaN; returns out, Y and V (malloc'd, *n floats); *was_fused: the profile
 * showed an op type containing pattern. */
static float *run_pool(const pool_case *c, int fused, int threads, const char *pattern, int64_t *n,
                       int *was_fused) {
  nbl_model *m = nbl_model_new();
  nbl_model_set_opset(m, "", 13);
  nbl_model_set_opset(m, "com.microsoft", 1);
  nbl_graph *g = m->graph;
  int64_t OH = (c->H + 2 * c->p - c->k) / c->s + 1, OW = (c->W + 2 * c->p - c->k) / c->s + 1;
  int64_t xd[4] = {c->N, c->C, c->H, c->W}, yd[4] = {c->N, c->C, OH, OW};
  int64_t nx = c->N * c->C * c->H * c->W, ny = c->N * c->C * OH * OW;
  float *x = malloc(sizeof(float) * (size_t)nx), *dy = malloc(sizeof(float) * (size_t)ny);
  unsigned st = 777u + (unsigned)(c->H * 31 + c->k);
  for (int64_t i = 0; i < nx; i++) x[i] = i % 7 == 0 ? 0.0f : i % 101 == 5 ? NAN : urand(&st);
  for (int64_t i = 0; i < ny; i++) dy[i] = i % 5 == 0 ? -0.0f : i % 53 == 7 ? NAN : urand(&st);
  nbl_id X = nbl_graph_add_value(g, "x"), DY = nbl_graph_add_value(g, "dy");
  nbl_type_set_tensor(m->arena, &g->values[X].type, NBL_DT_FLOAT, 4, xd);
  nbl_type_set_tensor(m->arena, &g->values[DY].type, NBL_DT_FLOAT, 4, yd);
  nbl_graph_add_input(g, X);
  nbl_graph_add_input(g, DY);
  nbl_id V = nbl_graph_add_value(g, "v"), YI[2] = {nbl_graph_add_value(g, "y"), nbl_graph_add_value(g, "i")};
  nbl_id S = nbl_graph_add_value(g, "s"), DX = nbl_graph_add_value(g, "dx"), OUT = nbl_graph_add_value(g, "out");
  nbl_graph_add_node(g, "Relu", "", "relu", 1, &X, 1, &V);
  int64_t ks[2] = {c->k, c->k}, ss[2] = {c->s, c->s}, ps[4] = {c->p, c->p, c->p, c->p};
  nbl_id mp = nbl_graph_add_node(g, "MaxPool", "", "pool", 1, &V, 2, YI);
  nbl_graph_add_node(g, "Shape", "", "shape", 1, &V, 1, &S);
  nbl_id gin[3] = {DY, YI[1], S}, rin[2] = {DX, V};
  nbl_id mg = nbl_graph_add_node(g, "MaxPoolGrad", "com.microsoft", "poolgrad", 3, gin, 1, &DX);
  for (nbl_id node = mp; node != NBL_NONE; node = node == mp ? mg : NBL_NONE) {
    nbl_node_set_attr_ints(g, node, "kernel_shape", 2, ks);
    nbl_node_set_attr_ints(g, node, "strides", 2, ss);
    nbl_node_set_attr_ints(g, node, "pads", 4, ps);
  }
  nbl_graph_add_node(g, "ReluGrad", "com.microsoft", "relugrad", 2, rin, 1, &OUT);
  nbl_graph_add_output(g, OUT);
  nbl_graph_add_output(g, YI[0]);
  nbl_graph_add_output(g, V);
  ck_assert_msg(nbl_graph_verify(g, "pool") == NBL_OK, "%s", nbl_last_error());
  nbl_host_tensor feeds[2] = {{.name = "x", .dtype = NBL_DT_FLOAT, .rank = 4, .data = x, .nbytes = sizeof(float) * (size_t)nx},
                              {.name = "dy", .dtype = NBL_DT_FLOAT, .rank = 4, .data = dy, .nbytes = sizeof(float) * (size_t)ny}};
  memcpy(feeds[0].dims, xd, sizeof xd);
  memcpy(feeds[1].dims, yd, sizeof yd);
  float *out = exec_model(m, feeds, 2, fused, threads, pattern, n, was_fused);
  nbl_model_free(m);
  free(x);
  free(dy);
  return out;
}

static const pool_case pcases[] = {
    {4, 6, 8, 8, 2, 2, 0}, {2, 3, 7, 9, 2, 2, 0}, {1, 1, 2, 70, 2, 2, 0}, {2, 3, 24, 24, 2, 2, 0},
    {2, 3, 7, 6, 3, 2, 1}, /* the sparse kernel, masked */
};

/* The relu-pool and pool-grad fusions against the unfused nodes, bit for
 * bit, at 1 and 2 threads: 2 x 2 windows of stride 2 (the dense kernel) on
 * even, odd and wide planes, and 3 x 3 windows of stride 2 with pads (the
 * sparse one). */
START_TEST(test_pool_grad) {
  const pool_case *c = &pcases[_i / 2];
  int threads = 1 + _i % 2;
  const char *pat[2] = {"MaxPoolGrad+ReluGrad", "Relu+MaxPool"};
  for (int k = 0; k < 2; k++) {
    int fu, fr;
    int64_t nf_, nu;
    float *yf = run_pool(c, 1, threads, pat[k], &nf_, &fu), *yu = run_pool(c, 0, threads, pat[k], &nu, &fr);
    ck_assert_msg(fu == 1, "%s not fused", pat[k]);
    ck_assert_int_eq(fr, 0);
    ck_assert_int_eq(nf_, nu);
    for (int64_t i = 0; i < nu; i++)
      ck_elem_msg(!memcmp(&yf[i], &yu[i], sizeof(float)), "pool case %d, %d thread(s): [%lld] fused %a vs %a", _i / 2,
                  threads, (long long)i, yf[i], yu[i]);
    free(yf);
    free(yu);
  }
}
END_TEST

START_TEST(test_chain) {
  const chain_case *c = &ccases[_i / 2];
  int threads = 1 + _i % 2, fu, fr;
  int64_t nf_, nu;
  /* the reference: unfused, QuantizeInt4Grad scanning V for its parameters */
  chain_case scan = *c;
  scan.given = 0;
  float *yf = run_chain(c, 1, threads, &nf_, &fu), *yu = run_chain(&scan, 0, threads, &nu, &fr);
  ck_assert_int_eq(fu, 1);
  ck_assert_int_eq(fr, 0);
  for (int v = 0; v < 1 + c->given; v++) { /* given: the unfused node with the forward's parameters too */
    float *y = yf;
    if (v) {
      y = run_chain(c, 0, threads, &nf_, &fr);
      ck_assert_int_eq(fr, 0);
    }
    ck_assert_int_eq(nf_, nu);
    for (int64_t i = 0; i < nu; i++)
      ck_elem_msg(!memcmp(&y[i], &yu[i], sizeof(float)),
                  "case %d (%lldx%lldx%lldx%lld add %d q4 %d keep %d specials %d given %d q_op %d), %d thread(s): "
                  "[%lld] %s %.9g vs %.9g",
                  _i / 2, (long long)c->N, (long long)c->C, (long long)c->H, (long long)c->W, c->add, c->q4,
                  c->keep_r, c->specials, c->given, c->q_op, threads, (long long)i, v ? "unfused given" : "fused",
                  y[i], yu[i]);
    if (v) free(y);
  }
  free(yf);
  free(yu);
}
END_TEST

/* ------------------------------------------------------------------ bn-act and log-pair, hand-built */

typedef struct fwd_case {
  int64_t N, C, H, W;
  int add;      /* a residual Add between BatchNormInternal and Relu (the BatchNorm as operand `add - 1`) */
  int q4;       /* 0: none (FP32); 1: affine/max; 2: symmetric/max; 3: affine/max, stochastic */
  int specials; /* NaN and Inf in X */
  int threads;
} fwd_case;

static float *run_fwd(const fwd_case *c, int fused, int64_t *n, int *was_fused) {
  nbl_model *m = nbl_model_new();
  nbl_model_set_opset(m, "", 13);
  nbl_model_set_opset(m, "com.microsoft", 1);
  nbl_model_set_opset(m, "ai.nibble", 1);
  nbl_graph *g = m->graph;
  int64_t dims[4] = {c->N, c->C, c->H, c->W}, cd[1] = {c->C}, numel = c->N * c->C * c->H * c->W;
  const char *names[6] = {"x", "scale", "bias", "mean", "var", "res"};
  nbl_id in[6];
  float *data[6];
  nbl_host_tensor feeds[6];
  memset(feeds, 0, sizeof feeds);
  unsigned st = 777u + (unsigned)(c->C * 3 + c->W);
  int nf = 0;
  for (int k = 0; k < 6; k++) {
    int per_c = k >= 1 && k <= 4;
    int64_t cnt = per_c ? c->C : numel;
    data[k] = malloc(sizeof(float) * (size_t)cnt);
    for (int64_t i = 0; i < cnt; i++) {
      float r = urand(&st) * (k == 0 ? 3.0f : 1.0f) + (k == 0 ? 0.5f : 0.0f);
      if (k == 4) r = fabsf(r) + 0.1f;
      if (c->specials && k == 0 && i % 211 == 17) r = NAN;
      if (c->specials && k == 0 && i % 307 == 5) r = -INFINITY;
      data[k][i] = r;
    }
    in[k] = nbl_graph_add_value(g, names[k]);
    if (k == 5 && !c->add) continue;
    nbl_type_set_tensor(m->arena, &g->values[in[k]].type, NBL_DT_FLOAT, per_c ? 1 : 4, per_c ? cd : dims);
    nbl_graph_add_input(g, in[k]);
    feeds[nf] = (nbl_host_tensor){.name = names[k], .dtype = NBL_DT_FLOAT, .rank = per_c ? 1 : 4, .data = data[k],
                                  .nbytes = sizeof(float) * (size_t)cnt};
    memcpy(feeds[nf].dims, per_c ? cd : dims, sizeof(int64_t) * (per_c ? 1 : 4));
    nf++;
  }
  nbl_id bo[5];
  const char *bn_out[5] = {"y", "run_mean", "run_var", "saved_mean", "saved_inv"};
  for (int k = 0; k < 5; k++) bo[k] = nbl_graph_add_value(g, bn_out[k]);
  nbl_type_set_tensor(m->arena, &g->values[bo[0]].type, NBL_DT_FLOAT, 4, dims);
  nbl_id b = nbl_graph_add_node(g, "BatchNormInternal", "com.microsoft", "bn", 5, in, 5, bo);
  nbl_node_set_attr_float(g, b, "epsilon", 1e-3f);
  nbl_node_set_attr_float(g, b, "momentum", 0.8f);
  nbl_id u = bo[0];
  if (c->add) {
    u = nbl_graph_add_value(g, "sum");
    nbl_type_set_tensor(m->arena, &g->values[u].type, NBL_DT_FLOAT, 4, dims);
    nbl_id ain[2] = {c->add == 1 ? bo[0] : in[5], c->add == 1 ? in[5] : bo[0]};
    nbl_graph_add_node(g, "Add", "", "add", 2, ain, 1, &u);
  }
  nbl_id v = nbl_graph_add_value(g, "relu");
  nbl_type_set_tensor(m->arena, &g->values[v].type, NBL_DT_FLOAT, 4, dims);
  nbl_graph_add_node(g, "Relu", "", "relu", 1, &u, 1, &v);
  nbl_id qo[2] = {nbl_graph_add_value(g, "q"), nbl_graph_add_value(g, "qscale")};
  if (c->q4) {
    nbl_id q = nbl_graph_add_node(g, "QuantizeInt4", "ai.nibble", "q4", 1, &v, 2, qo);
    nbl_node_set_attr_int(g, q, "bits", 4);
    nbl_node_set_attr_string(g, q, "mode", c->q4 == 2 ? "symmetric" : "affine");
    nbl_node_set_attr_string(g, q, "scale_source", "max");
    if (c->q4 == 3) nbl_node_set_attr_string(g, q, "rounding", "stochastic");
  }
  /* two tpr QuantizeLog beside the chain (of X, which the fused node reads too) */
  nbl_id lo[2] = {nbl_graph_add_value(g, "log0"), nbl_graph_add_value(g, "log1")};
  for (int k = 0; k < 2; k++) {
    nbl_id l = nbl_graph_add_node(g, "QuantizeLog", "ai.nibble", k ? "log1" : "log0", 1, &in[0], 1, &lo[k]);
    nbl_node_set_attr_int(g, l, "radix", 4);
    nbl_node_set_attr_string(g, l, "rounding", "tpr");
    nbl_node_set_attr_int(g, l, "phase", k);
  }
  if (c->q4) {
    nbl_graph_add_output(g, qo[0]);
    nbl_graph_add_output(g, qo[1]);
  }
  nbl_graph_add_output(g, v);
  for (int k = 1; k < 5; k++) nbl_graph_add_output(g, bo[k]);
  ck_assert_msg(nbl_graph_verify(g, "fwd") == NBL_OK, "%s", nbl_last_error());
  nbl_graph_add_output(g, lo[0]);
  nbl_graph_add_output(g, lo[1]);
  float *out = exec_model(m, feeds, nf, fused, c->threads, "BN+", n, was_fused);
  nbl_model_free(m);
  for (int k = 0; k < 6; k++) free(data[k]);
  return out;
}

static const fwd_case fcases[] = {
    {3, 5, 7, 9, 0, 1, 0, 1},  {3, 5, 7, 9, 1, 1, 0, 2},  {2, 17, 5, 5, 2, 2, 0, 1}, {2, 17, 5, 5, 0, 1, 1, 2},
    {2, 3, 11, 3, 1, 3, 0, 1}, {2, 3, 11, 3, 2, 1, 1, 2}, {1, 1, 1, 1, 0, 1, 0, 1},  {16, 4, 33, 35, 1, 1, 0, 2},
    {3, 5, 7, 9, 0, 0, 0, 1},  {2, 17, 5, 5, 1, 0, 1, 2}, {4, 6, 4, 5, 2, 0, 0, 2},
};

START_TEST(test_fwd) {
  const fwd_case *c = &fcases[_i];
  int fu, fr;
  int64_t nf_, nu;
  float *yf = run_fwd(c, 1, &nf_, &fu), *yu = run_fwd(c, 0, &nu, &fr);
  ck_assert_int_eq(fu, 1);
  ck_assert_int_eq(fr, 0);
  ck_assert_int_eq(nf_, nu);
  for (int64_t i = 0; i < nu; i++)
    ck_elem_msg(!memcmp(&yf[i], &yu[i], sizeof(float)),
                "case %d (%lldx%lldx%lldx%lld add %d q4 %d specials %d), %d thread(s): [%lld] fused %.9g vs %.9g", _i,
                (long long)c->N, (long long)c->C, (long long)c->H, (long long)c->W, c->add, c->q4, c->specials,
                c->threads, (long long)i, yf[i], yu[i]);
  free(yf);
  free(yu);
}
END_TEST

/* log-pair alone: two QuantizeLog (tpr phases, and nearest with 2 exponent
 * bits) of one input with zeros, NaN and Inf, sizes around the sweep's chunk
 * (32768) and the parallel scan's threshold (65536). */
static float *run_logs(int64_t numel, int threads, int specials, int fused, int64_t *n, int *hit) {
  nbl_model *m = nbl_model_new();
  nbl_model_set_opset(m, "", 13);
  nbl_model_set_opset(m, "ai.nibble", 1);
  nbl_graph *g = m->graph;
  nbl_id x = nbl_graph_add_value(g, "x");
  nbl_type_set_tensor(m->arena, &g->values[x].type, NBL_DT_FLOAT, 1, &numel);
  nbl_graph_add_input(g, x);
  float *d = malloc(sizeof(float) * (size_t)numel);
  unsigned st = 99u;
  for (int64_t i = 0; i < numel; i++) {
    d[i] = urand(&st) * 0.01f;
    if (i % 13 == 0) d[i] = 0.0f;
    if (specials && i % 1001 == 7) d[i] = NAN;
    if (specials && i % 4099 == 3) d[i] = INFINITY;
  }
  if (numel > 50000) d[50000] = -0.5f; /* the maximum late, in another part */
  nbl_id y[2] = {nbl_graph_add_value(g, "y0"), nbl_graph_add_value(g, "y1")};
  for (int k = 0; k < 2; k++) {
    nbl_id l = nbl_graph_add_node(g, "QuantizeLog", "ai.nibble", k ? "l1" : "l0", 1, &x, 1, &y[k]);
    nbl_node_set_attr_int(g, l, "radix", 4);
    if (specials) {
      nbl_node_set_attr_string(g, l, "rounding", "tpr");
      nbl_node_set_attr_int(g, l, "phase", k);
    } else {
      nbl_node_set_attr_string(g, l, "rounding", "nearest");
      nbl_node_set_attr_int(g, l, "exp_bits", 2 + k);
    }
    nbl_graph_add_output(g, y[k]);
  }
  ck_assert_msg(nbl_graph_verify(g, "logs") == NBL_OK, "%s", nbl_last_error());
  nbl_host_tensor feed = {.name = "x", .dtype = NBL_DT_FLOAT, .rank = 1, .data = d,
                          .nbytes = sizeof(float) * (size_t)numel};
  feed.dims[0] = numel;
  float *out = exec_model(m, &feed, 1, fused, threads, "QuantizeLog*2", n, hit);
  nbl_model_free(m);
  free(d);
  return out;
}

START_TEST(test_log_pair) {
  static const int64_t sizes[] = {1, 37, 32768 + 5, 65536 + 9, 200003};
  int64_t numel = sizes[_i % 5];
  int threads = 1 + (_i / 5) % 2, specials = _i / 10;
  int fu, fr;
  int64_t nf_, nu;
  float *yf = run_logs(numel, threads, specials, 1, &nf_, &fu), *yu = run_logs(numel, threads, specials, 0, &nu, &fr);
  ck_assert_int_eq(fu, 1);
  ck_assert_int_eq(fr, 0);
  ck_assert_int_eq(nf_, nu);
  for (int64_t i = 0; i < nu; i++)
    ck_elem_msg(!memcmp(&yf[i], &yu[i], sizeof(float)), "%lld floats, %d thread(s), specials %d: [%lld] %.9g vs %.9g",
                (long long)numel, threads, specials, (long long)i, yf[i], yu[i]);
  free(yf);
  free(yu);
}
END_TEST

/* ------------------------------------------------------------------ nbl_q4t_ste_bounds */

/* The interval against the STE's own formula: random parameters of every
 * mode, the floats around both ends, and random floats over many scales. */
START_TEST(test_ste_bounds) {
  unsigned st = 4242u;
  for (int t = 0; t < 300; t++) {
    nbl_q4_config cfg = {.bits = 2 + t % 7, .mode = t % 3 ? NBL_Q4_AFFINE : NBL_Q4_SYMMETRIC,
                         .scale_source = NBL_Q4_SCALE_MAX, .rounding = NBL_Q4_ROUND_HALF_EVEN};
    float a = urand(&st) * powf(10.0f, (float)(t % 9 - 4)), b = urand(&st) * powf(10.0f, (float)(t % 7 - 3));
    if (t % 5 == 0) a = 0.0f;
    nbl_q4_params p;
    nbl_q4_params_from_range(&cfg, a < b ? a : b, a < b ? b : a, &p);
    float lo, hi;
    nbl_q4t_ste_bounds(&p, &lo, &hi);
    float probes[64];
    int np = 0;
    for (int e = 0; e < 2; e++) {
      float x = e ? hi : lo;
      if (!isfinite(x)) continue;
      float d = x, u = x;
      for (int k = 0; k < 4; k++) {
        probes[np++] = d;
        probes[np++] = u;
        d = nextafterf(d, -INFINITY);
        u = nextafterf(u, INFINITY);
      }
    }
    for (int k = 0; k < 24; k++) probes[np++] = urand(&st) * p.scale * (float)(1 << (k % 8)) * 4.0f;
    probes[np++] = 0.0f;
    probes[np++] = -0.0f;
    for (int k = 0; k < np; k++) {
      float x = probes[k];
      if (!isfinite(x)) continue;
      volatile float q = x / p.scale;
      float r = nearbyintf(q) + (float)p.zero;
      int pass = r >= (float)p.qmin && r <= (float)p.qmax;
      ck_elem_msg(pass == (x >= lo && x <= hi), "scale %g zero %d [%d, %d]: x %.9g passes %d, interval [%.9g, %.9g]",
                  (double)p.scale, p.zero, p.qmin, p.qmax, (double)x, pass, (double)lo, (double)hi);
    }
  }
}
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("fuse_train");
  TCase *tc = tcase_create("sessions");
  tcase_set_timeout(tc, 300);
  tcase_add_loop_test(tc, test_sessions, 0, (int)(2 * sizeof tcases / sizeof tcases[0]));
  suite_add_tcase(s, tc);
  TCase *tk = tcase_create("chain");
  tcase_add_loop_test(tk, test_chain, 0, (int)(2 * sizeof ccases / sizeof ccases[0]));
  tcase_add_loop_test(tk, test_pool_grad, 0, (int)(2 * sizeof pcases / sizeof pcases[0]));
  suite_add_tcase(s, tk);
  TCase *tb = tcase_create("ste_bounds");
  tcase_add_test(tb, test_ste_bounds);
  suite_add_tcase(s, tb);
  TCase *tf = tcase_create("fwd");
  tcase_add_loop_test(tf, test_fwd, 0, (int)(sizeof fcases / sizeof fcases[0]));
  tcase_add_loop_test(tf, test_log_pair, 0, 20);
  suite_add_tcase(s, tf);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(suite());
  srunner_run_all(sr, CK_NORMAL);
  int nf = srunner_ntests_failed(sr);
  srunner_free(sr);
  return nf == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
