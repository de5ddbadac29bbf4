/* test_log4.c - the ai.nibble QuantizeLog op (runtime/ops/nibble.c) through
 * sessions: the reference and the fast kernel give the same bits in every
 * mode (threaded chunks, vector tails), the values are those of
 * runtime/formats/log.c, the step input changes the stochastic draws
 * reproducibly, the top and codes outputs, errors naming the node; and the pass
 * quantize-grad-log4 on a hand-built training graph. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nibble.h"
#include "one_node.h"
#include "test_data.h"
#include "runtime/formats/log.h"
#include "ck_elem.h"

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static float frand(void) { return (float)td_xs64_unit(&rng); }

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
 * output when want_top (want_top 2: the codes output too). */
static one *qlog_node(const nbl_log_config *cfg, int with_step, int want_top) {
  one *o = one_new_domain("QuantizeLog", "ai.nibble", 1, with_step ? 2 : 1, 1 + want_top);
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
    one *o = qlog_node(&c, 1, 2);
    one_in(o, 0, NBL_DT_FLOAT, 1, dims, x);
    one_in(o, 1, NBL_DT_INT64, 0, NULL, &step);
    for (int ref = 0; ref < 2; ref++) {
      /* the codes output: each element's code, nbl_log_code8_nonfinite for NaN, Inf */
      ck_assert_int_eq(one_run(o, ref), NBL_OK);
      ck_assert_int_eq(o->out[2].dtype, NBL_DT_INT8);
      ck_assert_int_eq((int64_t)o->out[2].nbytes, n);
      const int8_t *codes = o->out[2].data;
      for (int64_t i = 0; i < n; i++) {
        const int wc = isfinite(x[i]) ? nbl_log_code(&keyed, &p, x[i], (uint64_t)i) : nbl_log_code8_nonfinite(x[i]);
        ck_elem_msg(codes[i] == wc, "mode %zu %s: x[%lld]=%a: code %d, want %d", k, ref ? "reference" : "fast",
                    (long long)i, (double)x[i], codes[i], wc);
        const float back = nbl_log_value8(&keyed, &p, wc); /* Y from the codes and top */
        ck_elem(memcmp(&back, &want[i], 4) == 0 || (isnan(back) && isnan(want[i])) || (back == 0 && want[i] == 0));
      }
      ck_assert_int_eq(one_run(o, ref), NBL_OK);
      const float *y = outf(o, 0);
      for (int64_t i = 0; i < n; i++) {
        uint32_t a, b;
        memcpy(&a, &want[i], 4);
        memcpy(&b, &y[i], 4);
        ck_elem_msg(a == b || (isnan(want[i]) && isnan(y[i])), "mode %zu %s: x[%lld]=%a -> %a, want %a", k,
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
  ck_assert_ptr_nonnull(strstr(nbl_last_error(), "'n0'"));
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

/* ------------------------------------------------------------------ quantize-grad-log4 */

static void add_init(nbl_graph *g, const char *name, int rank, const int64_t *dims) {
  int64_t n = 1;
  for (int i = 0; i < rank; i++) n *= dims[i];
  float *d = malloc(sizeof(float) * (size_t)n);
  for (int64_t i = 0; i < n; i++) d[i] = frand() - 0.5f;
  nbl_id v = nbl_graph_add_value(g, name);
  nbl_type_set_tensor(g->model->arena, &g->values[v].type, NBL_DT_FLOAT, rank, dims);
  nbl_graph_set_initializer(g, v, nbl_tensor_new(g->model->arena, name, NBL_DT_FLOAT, rank, dims, d));
  free(d);
}

static nbl_id vadd(nbl_graph *g, const char *name) {
  nbl_id v = nbl_graph_find(g, name);
  return v != NBL_NONE ? v : nbl_graph_add_value(g, name);
}

/* input [2,1,6,6] -> conv1 (W1, b1) -> Relu -> conv2 (W2, no bias, pads 1) -> Flatten
 * -> fc (Gemm W3 transB, b3) -> logits [2,4]; with pw, a 1 x 1 convolution
 * "pw" (Wp [3,3,1,1], no kernel_shape: the weight says 1 x 1) between the
 * Relu and conv2 */
static nbl_model *small_cnn_pw(int pw) {
  nbl_model *m = nbl_model_new();
  nbl_model_set_opset(m, "", 13);
  nbl_graph *g = m->graph;
  nbl_id x = vadd(g, "input");
  nbl_type_set_tensor(m->arena, &g->values[x].type, NBL_DT_FLOAT, 4, (int64_t[]){2, 1, 6, 6});
  nbl_graph_add_input(g, x);
  add_init(g, "W1", 4, (int64_t[]){3, 1, 3, 3});
  add_init(g, "b1", 1, (int64_t[]){3});
  add_init(g, "W2", 4, (int64_t[]){2, 3, 3, 3});
  add_init(g, "W3", 2, (int64_t[]){4, 32});
  add_init(g, "b3", 1, (int64_t[]){4});
  nbl_id in[3], out;
  in[0] = x, in[1] = vadd(g, "W1"), in[2] = vadd(g, "b1"), out = vadd(g, "c1");
  nbl_graph_add_node(g, "Conv", "", "conv1", 3, in, 1, &out);
  in[0] = out, out = vadd(g, "r1");
  nbl_graph_add_node(g, "Relu", "", "relu1", 1, in, 1, &out);
  if (pw) {
    add_init(g, "Wp", 4, (int64_t[]){3, 3, 1, 1});
    in[0] = out, in[1] = vadd(g, "Wp"), out = vadd(g, "cp");
    nbl_graph_add_node(g, "Conv", "", "pw", 2, in, 1, &out);
  }
  in[0] = out, in[1] = vadd(g, "W2"), out = vadd(g, "c2");
  nbl_id c2 = nbl_graph_add_node(g, "Conv", "", "conv2", 2, in, 1, &out);
  nbl_node_set_attr_ints(g, c2, "pads", 4, (int64_t[]){1, 1, 1, 1});
  in[0] = out, out = vadd(g, "flat");
  nbl_graph_add_node(g, "Flatten", "", "flatten", 1, in, 1, &out);
  in[0] = out, in[1] = vadd(g, "W3"), in[2] = vadd(g, "b3"), out = vadd(g, "logits");
  nbl_id fc = nbl_graph_add_node(g, "Gemm", "", "fc", 3, in, 1, &out);
  nbl_node_set_attr_int(g, fc, "transB", 1);
  nbl_graph_add_output(g, out);
  return m;
}

static nbl_model *small_cnn(void) { return small_cnn_pw(0); }

/* Run pipeline spec on m; the pass summaries into log (NUL-terminated). */
static void run_pipe(nbl_model *m, const char *spec, char *log, size_t cap) {
  nbl_pipeline *p = NULL;
  ck_assert_msg(nbl_pipeline_parse(spec, &p) == NBL_OK, "%s", nbl_last_error());
  FILE *f = tmpfile();
  nbl_pipeline_options o = {.verify_each = 1, .log = f};
  nbl_status st = nbl_pipeline_run(p, m, &o);
  ck_assert_msg(st == NBL_OK, "%s: %s", spec, nbl_last_error());
  nbl_pipeline_free(p);
  rewind(f);
  size_t n = fread(log, 1, cap - 1, f);
  log[n] = 0;
  fclose(f);
}

/* lower-to-onnx: a QuantizeLog whose codes output is used (or whose Y is
 * omitted) has no standard form: a clear error naming the node. */
START_TEST(test_codes_output_not_lowered) {
  for (int omit_y = 0; omit_y < 2; omit_y++) {
    nbl_log_config c;
    nbl_log_config_default(&c);
    one *o = qlog_node(&c, 0, 2);
    const int64_t d[1] = {8};
    const float x[8] = {1, -0.5f, 0.25f, 0, 0.01f, -2, 0.125f, 3};
    one_in(o, 0, NBL_DT_FLOAT, 1, d, x);
    if (omit_y) one_skip_out(o, 0);
    nbl_log_params lp;
    nbl_log_choose(&c, x, 8, &lp);
    for (int ref = 0; ref < 2; ref++) { /* it runs (Y omitted: the codes and top) */
      ck_assert_int_eq(one_run(o, ref), NBL_OK);
      const nbl_host_tensor *k = &o->out[omit_y ? 1 : 2];
      ck_assert_int_eq(k->dtype, NBL_DT_INT8);
      for (int i = 0; i < 8; i++) ck_assert_int_eq(((const int8_t *)k->data)[i], nbl_log_code(&c, &lp, x[i], 0));
    }
    nbl_pipeline *p = NULL;
    ck_assert_int_eq(nbl_pipeline_parse("lower-to-onnx", &p), NBL_OK);
    FILE *f = tmpfile();
    nbl_pipeline_options po = {.log = f};
    ck_assert_int_eq(nbl_pipeline_run(p, o->m, &po), NBL_ERR_UNSUPPORTED);
    ck_assert_msg(strstr(nbl_last_error(), "codes output") && strstr(nbl_last_error(), "QuantizeLog"), "%s",
                  nbl_last_error());
    fclose(f);
    nbl_pipeline_free(p);
    one_free(o);
  }
}
END_TEST

static const nbl_node *node_named(const nbl_graph *g, const char *name) {
  for (int i = 0; i < g->n_nodes; i++)
    if (!g->nodes[i].dead && !strcmp(g->nodes[i].name, name)) return &g->nodes[i];
  return NULL;
}

static int count_op(const nbl_graph *g, const char *op) {
  int n = 0;
  for (int i = 0; i < g->n_nodes; i++) n += !g->nodes[i].dead && !strcmp(g->nodes[i].op_type, op);
  return n;
}

static const char *vname(const nbl_graph *g, nbl_id v) { return v == NBL_NONE ? "" : g->values[v].name; }

/* The QuantizeLog node `name` reads `dy` (and `step` when stochastic), has
 * the given rounding and phase, and exactly the readers listed (node names). */
static void expect_qlog(const nbl_graph *g, const char *name, const char *dy, const char *rounding, int phase,
                        int stochastic, const char *const *readers, int n_readers) {
  const nbl_node *q = node_named(g, name);
  ck_assert_msg(q != NULL, "no node '%s'", name);
  ck_assert_str_eq(q->op_type, "QuantizeLog");
  ck_assert_str_eq(q->domain, "ai.nibble");
  ck_assert_int_eq(q->n_inputs, stochastic ? 2 : 1);
  ck_assert_str_eq(vname(g, q->inputs[0]), dy);
  if (stochastic) ck_assert_str_eq(vname(g, q->inputs[1]), "step");
  ck_assert_int_eq(nbl_attr_int(q, "radix", 0), 4);
  ck_assert_int_eq(nbl_attr_int(q, "exp_bits", 0), 3);
  ck_assert_str_eq(nbl_attr_string(q, "rounding", ""), rounding);
  ck_assert_int_eq(nbl_attr_int(q, "phase", -1), !strcmp(rounding, "tpr") ? phase : -1);
  ck_assert_int_eq(nbl_node_attr(q, "seed") != NULL, stochastic);
  const nbl_value *out = &g->values[q->outputs[0]];
  ck_assert_int_eq(out->n_consumers, n_readers);
  for (int k = 0; k < n_readers; k++) {
    int found = 0;
    for (int j = 0; j < out->n_consumers; j++) found |= !strcmp(g->nodes[out->consumers[j]].name, readers[k]);
    ck_assert_msg(found, "'%s' does not read '%s'", readers[k], out->name);
  }
  /* the float gradient now feeds only the quantizers */
  const nbl_value *dv = &g->values[q->inputs[0]];
  for (int j = 0; j < dv->n_consumers; j++)
    ck_assert_str_eq(g->nodes[dv->consumers[j]].op_type, "QuantizeLog");
}

#define RD(...) ((const char *const[]){__VA_ARGS__}), (int)(sizeof((const char *const[]){__VA_ARGS__}) / sizeof(char *))

START_TEST(test_pass_build_training_graph) {
  char log[4096];
  /* nearest on every layer: one quantizer per layer, before all its backward nodes */
  nbl_model *m = small_cnn();
  run_pipe(m, "build-training", log, sizeof log);
  nbl_graph *al = m->training[0].algorithm;
  int before = 0;
  for (int i = 0; i < al->n_nodes; i++) before += !al->nodes[i].dead;
  const nbl_node *cg2 = node_named(al, "conv2_grad/dXdW");
  ck_assert_ptr_nonnull(cg2);
  run_pipe(m, "quantize-grad-log4{skip-first-last=0}", log, sizeof log);
  al = m->training[0].algorithm;
  int after = 0;
  for (int i = 0; i < al->n_nodes; i++) after += !al->nodes[i].dead;
  ck_assert_int_eq(after, before + 3);
  ck_assert_int_eq(count_op(al, "QuantizeLog"), 3);
  expect_qlog(al, "conv1_grad/log4", "c1_grad", "nearest", 0, 0, RD("conv1_grad/dW"));
  expect_qlog(al, "conv2_grad/log4", "c2_grad", "nearest", 0, 0, RD("conv2_grad/dXdW"));
  expect_qlog(al, "fc_grad/log4", "logits_grad", "nearest", 0, 0, RD("fc_grad/dX", "fc_grad/dW", "fc_grad/dB"));
  ck_assert_ptr_nonnull(strstr(log, "log-quantized the output gradients of 3 layers with 3 QuantizeLog (radix 4, 3 "
                                    "exponent bits, rounding nearest): conv1, conv2, fc"));
  ck_assert_ptr_nonnull(strstr(log, "kept in float (first/last): none; (1x1): none; skipped: none"));
  ck_assert_int_eq(nbl_model_verify(m), NBL_OK);
  nbl_model_free(m);

  /* tpr with the defaults: first and last kept, conv2's ConvGrad split */
  m = small_cnn();
  run_pipe(m, "build-training,quantize-grad-log4{rounding=tpr}", log, sizeof log);
  al = m->training[0].algorithm;
  ck_assert_int_eq(count_op(al, "QuantizeLog"), 2);
  ck_assert_ptr_null(node_named(al, "conv2_grad/dXdW"));
  expect_qlog(al, "conv2_grad/log4_dX", "c2_grad", "tpr", 0, 0, RD("conv2_grad/dX"));
  expect_qlog(al, "conv2_grad/log4_dW", "c2_grad", "tpr", 1, 0, RD("conv2_grad/dW"));
  const nbl_node *dx = node_named(al, "conv2_grad/dX"), *dw = node_named(al, "conv2_grad/dW");
  ck_assert_str_eq(dx->op_type, "ConvGrad");
  ck_assert_str_eq(dw->op_type, "ConvGrad");
  ck_assert_int_eq(dx->n_outputs, 1);
  ck_assert_str_eq(vname(al, dx->inputs[1]), "r1");
  ck_assert_str_eq(vname(al, dx->inputs[2]), "W2");
  ck_assert_int_eq(dw->n_outputs, 3);
  ck_assert(dw->outputs[0] == NBL_NONE && dw->outputs[2] == NBL_NONE); /* conv2 has no bias */
  ck_assert_str_eq(vname(al, dw->outputs[1]), "W2_grad");
  ck_assert_int_gt(al->values[dx->outputs[0]].n_consumers, 0); /* dX flows on to relu1's rule */
  ck_assert_int_eq(nbl_attr_ints(dx, "pads", &(int){0})[0], 1); /* the forward's attributes, both */
  ck_assert_int_eq(dw->n_attrs, dx->n_attrs);
  ck_assert_int_eq(nbl_attr_ints(dw, "pads", &(int){0})[3], 1);
  ck_assert_ptr_nonnull(strstr(log, "kept in float (first/last): conv1, fc"));
  ck_assert_ptr_nonnull(strstr(log, "split 1 ConvGrad into dX and dW nodes"));
  ck_assert_ptr_null(node_named(al, "conv1_grad/log4"));
  ck_assert_int_eq(nbl_model_verify(m), NBL_OK);
  /* the dumps show them: the text form has the training graph as comments, the DOT form as a cluster */
  char *buf = NULL;
  size_t len = 0;
  FILE *mf = open_memstream(&buf, &len);
  ck_assert_int_eq(nbl_model_print(m, NBL_FORMAT_TEXT, NULL, mf), NBL_OK);
  fclose(mf);
  ck_assert_ptr_nonnull(strstr(buf, "# training_info[0] (no textual syntax: shown as comments)"));
  ck_assert_ptr_nonnull(strstr(buf, "#   c2_grad_log4_dW = ai.nibble.QuantizeLog <radix = 4, exp_bits = 3, rounding = \"tpr\", phase = 1> (c2_grad)   # conv2_grad/log4_dW"));
  ck_assert_ptr_nonnull(strstr(buf, "(c2_grad_log4_dX, r1, W2)   # conv2_grad/dX"));
  free(buf);
  mf = open_memstream(&buf, &len);
  ck_assert_int_eq(nbl_model_print(m, NBL_FORMAT_DOT, NULL, mf), NBL_OK);
  fclose(mf);
  ck_assert_ptr_nonnull(strstr(buf, "label=\"training_info[0].algorithm\""));
  ck_assert_ptr_nonnull(strstr(buf, "ai.nibble.QuantizeLog\\nconv2_grad/log4_dX"));
  free(buf);
  nbl_model_free(m);

  /* stochastic on the layers matching a glob: the step input and a seed per layer */
  m = small_cnn();
  run_pipe(m, "build-training,quantize-grad-log4{rounding=stochastic,layers=conv*,skip-first-last=0,seed=40}", log,
           sizeof log);
  al = m->training[0].algorithm;
  ck_assert_int_eq(count_op(al, "QuantizeLog"), 2);
  expect_qlog(al, "conv1_grad/log4", "c1_grad", "stochastic", 0, 1, RD("conv1_grad/dW"));
  expect_qlog(al, "conv2_grad/log4", "c2_grad", "stochastic", 0, 1, RD("conv2_grad/dXdW"));
  ck_assert_int_eq(nbl_attr_int(node_named(al, "conv1_grad/log4"), "seed", 0), 40);
  ck_assert_int_eq(nbl_attr_int(node_named(al, "conv2_grad/log4"), "seed", 0), 41);
  ck_assert_ptr_nonnull(strstr(log, "skipped: fc (not in layers)"));
  /* applied again: every layer is already quantized */
  run_pipe(m, "quantize-grad-log4{layers=conv*,skip-first-last=0}", log, sizeof log);
  ck_assert_int_eq(count_op(m->training[0].algorithm, "QuantizeLog"), 2);
  ck_assert_ptr_nonnull(strstr(log, "conv2 (its output gradient is already log-quantized)"));
  nbl_model_free(m);

  /* format=int4: linear INT4 gradients (QuantizeInt4 with its defaults: symmetric, max, half-even) */
  m = small_cnn();
  run_pipe(m, "build-training,quantize-grad-log4{format=int4}", log, sizeof log);
  al = m->training[0].algorithm;
  ck_assert_int_eq(count_op(al, "QuantizeLog"), 0);
  const nbl_node *q4 = node_named(al, "conv2_grad/int4");
  ck_assert_ptr_nonnull(q4);
  ck_assert_str_eq(q4->op_type, "QuantizeInt4");
  ck_assert_int_eq(nbl_attr_int(q4, "bits", 0), 4);
  ck_assert_str_eq(vname(al, q4->inputs[0]), "c2_grad");
  ck_assert_int_eq(al->values[q4->outputs[0]].n_consumers, 1);
  ck_assert_str_eq(al->nodes[al->values[q4->outputs[0]].consumers[0]].name, "conv2_grad/dXdW");
  ck_assert_ptr_nonnull(strstr(log, "linear INT4 gradients (format=int4"));
  nbl_model_free(m);

  /* luq: radix 2 by default; an inference model and bad options are clear errors */
  m = small_cnn();
  run_pipe(m, "build-training,quantize-grad-log4{rounding=luq,skip-first-last=0}", log, sizeof log);
  ck_assert_int_eq(nbl_attr_int(node_named(m->training[0].algorithm, "fc_grad/log4"), "radix", 0), 2);
  nbl_model_free(m);
  const char *bad[][2] = {{"quantize-grad-log4", "no training graph"},
                          {"build-training,quantize-grad-log4{radix=3}", "radix must be 2, 4 or 10"},
                          {"build-training,quantize-grad-log4{rounding=luq,radix=4}", "luq needs radix=2"},
                          {"build-training,quantize-grad-log4{rounding=even}", "rounding='even'"},
                          {"build-training,quantize-grad-log4{format=int4,rounding=tpr}", "format=log only"},
                          {"build-training,quantize-int4", "run quantize-int4 before build-training"}};
  for (size_t k = 0; k < sizeof bad / sizeof *bad; k++) {
    m = small_cnn();
    nbl_pipeline *p = NULL;
    ck_assert_int_eq(nbl_pipeline_parse(bad[k][0], &p), NBL_OK);
    ck_assert_int_eq(nbl_pipeline_run(p, m, NULL), NBL_ERR_INVALID_ARGUMENT);
    ck_assert_msg(strstr(nbl_last_error(), bad[k][1]), "%s: %s", bad[k][0], nbl_last_error());
    nbl_pipeline_free(p);
    nbl_model_free(m);
  }
}
END_TEST

/* skip-1x1 (default on): a 1 x 1 convolution keeps float gradients, as the
 * paper's FP8 1 x 1 layers; known from the weight's shape or kernel_shape */
START_TEST(test_pass_skip_1x1) {
  char log[4096];
  nbl_model *m = small_cnn_pw(1);
  run_pipe(m, "build-training,quantize-grad-log4{skip-first-last=0}", log, sizeof log);
  nbl_graph *al = m->training[0].algorithm;
  ck_assert_int_eq(count_op(al, "QuantizeLog"), 3);
  ck_assert_ptr_null(node_named(al, "pw_grad/log4"));
  expect_qlog(al, "conv2_grad/log4", "c2_grad", "nearest", 0, 0, RD("conv2_grad/dXdW"));
  ck_assert_ptr_nonnull(strstr(log, "kept in float (first/last): none; (1x1): pw; skipped: none"));
  ck_assert_int_eq(nbl_model_verify(m), NBL_OK);
  nbl_model_free(m);
  /* kernel_shape decides when given */
  m = small_cnn_pw(1);
  nbl_graph *g = m->graph;
  for (int i = 0; i < g->n_nodes; i++)
    if (!strcmp(g->nodes[i].name, "conv2")) nbl_node_set_attr_ints(g, i, "kernel_shape", 2, (int64_t[]){3, 3});
    else if (!strcmp(g->nodes[i].name, "pw")) nbl_node_set_attr_ints(g, i, "kernel_shape", 2, (int64_t[]){1, 1});
  run_pipe(m, "build-training,quantize-grad-log4{skip-first-last=0}", log, sizeof log);
  ck_assert_int_eq(count_op(m->training[0].algorithm, "QuantizeLog"), 3);
  ck_assert_ptr_nonnull(strstr(log, "(1x1): pw;"));
  nbl_model_free(m);
  /* through the forward's weight quantizer */
  m = small_cnn_pw(1);
  run_pipe(m, "quantize-int4{skip-first-last=0},build-training,quantize-grad-log4{skip-first-last=0}", log, sizeof log);
  ck_assert_int_eq(count_op(m->training[0].algorithm, "QuantizeLog"), 3);
  ck_assert_msg(strstr(log, "(1x1): pw;"), "%s", log);
  nbl_model_free(m);
  /* the quantizer's output without a shape in either graph: the weight's
   * shape found through the quantizer to its input */
  m = small_cnn_pw(1);
  run_pipe(m, "quantize-int4{skip-first-last=0},build-training", log, sizeof log);
  nbl_graph *gs[2] = {m->graph, m->training[0].algorithm};
  int untyped = 0;
  for (int k = 0; k < 2; k++)
    for (int i = 0; i < gs[k]->n_nodes; i++) {
      const nbl_node *q = &gs[k]->nodes[i];
      if (q->dead || strcmp(q->op_type, "QuantizeInt4") || q->n_inputs < 1 || q->inputs[0] == NBL_NONE ||
          strcmp(gs[k]->values[q->inputs[0]].name, "Wp"))
        continue;
      gs[k]->values[q->outputs[0]].type.rank = -1;
      untyped++;
    }
  ck_assert_int_ge(untyped, 1);
  run_pipe(m, "quantize-grad-log4{skip-first-last=0}", log, sizeof log);
  ck_assert_int_eq(count_op(m->training[0].algorithm, "QuantizeLog"), 3);
  ck_assert_msg(strstr(log, "(1x1): pw;"), "%s", log);
  nbl_model_free(m);
  /* skip-1x1=0: quantized like the others */
  m = small_cnn_pw(1);
  run_pipe(m, "build-training,quantize-grad-log4{skip-first-last=0,skip-1x1=0}", log, sizeof log);
  al = m->training[0].algorithm;
  ck_assert_msg(count_op(al, "QuantizeLog") == 4, "%s", log);
  expect_qlog(al, "pw_grad/log4", "cp_grad", "nearest", 0, 0, RD("pw_grad/dXdW"));
  ck_assert_ptr_nonnull(strstr(log, "(1x1): none;"));
  nbl_model_free(m);
}
END_TEST

#include "train/mlp_train.h"

START_TEST(test_pass_hand_built_training_model) {
  /* tests/train/mlp_train.h: a training model built by hand (not by
   * build-training): its output gradients are "g/dlogits" and "g/dh1", found
   * from the backward products that read the layers' X or W */
  mlp_cfg c = {.dt = NBL_DT_FLOAT, .c = 1, .h = 4, .w = 4, .hidden = 8, .classes = 3, .opt = "momentum",
               .momentum = 0.9f, .seed = 3};
  nbl_model *m = mlp_train_model(&c);
  char log[4096];
  run_pipe(m, "quantize-grad-log4{rounding=tpr,skip-first-last=0}", log, sizeof log);
  nbl_graph *al = m->training[0].algorithm;
  ck_assert_int_eq(count_op(al, "QuantizeLog"), 3);
  /* fc2: phase 0 to the input-gradient Gemm (reads W2), phase 1 to the weight
   * gradient (reads t/a1) and the bias reduction */
  expect_qlog(al, "t/fc2_grad/log4_dX", "g/dlogits", "tpr", 0, 0, RD("g/da1"));
  expect_qlog(al, "t/fc2_grad/log4_dW", "g/dlogits", "tpr", 1, 0, RD("g/W2", "g/b2"));
  /* fc1: only weight-side products */
  expect_qlog(al, "t/fc1_grad/log4_dW", "g/dh1", "tpr", 1, 0, RD("g/W1", "g/b1"));
  ck_assert_ptr_null(node_named(al, "t/fc1_grad/log4_dX"));
  ck_assert_ptr_nonnull(strstr(log, "of 2 layers with 3 QuantizeLog"));
  ck_assert_int_eq(nbl_model_verify(m), NBL_OK);
  nbl_model_free(m);
}
END_TEST

int main(void) {
  Suite *s = suite_create("log4");
  TCase *tc = tcase_create("log4");
  tcase_set_timeout(tc, 300);
  tcase_add_test(tc, test_qlog_ref_fast_formats);
  tcase_add_test(tc, test_qlog_step_and_levels);
  tcase_add_test(tc, test_codes_output_not_lowered);
  tcase_add_test(tc, test_pass_build_training_graph);
  tcase_add_test(tc, test_pass_skip_1x1);
  tcase_add_test(tc, test_pass_hand_built_training_model);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
