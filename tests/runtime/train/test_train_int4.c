/* test_train_int4.c - 4-bit training graphs with integer backward products.
 *
 * On the shipped LeNet-5 and ResNet-8 (models/lenet5_init.onnx, resnet8_init.onnx)
 * the pipeline of `nibble train --int4 --log4-grad=MODE`
 *   quantize-int4, build-training, quantize-grad-log4{rounding=MODE}, int4-backward
 * (with skip-1x1=0, so that ResNet-8's strided 1x1 shortcuts run on the
 * integer kernels too) must replace every backward product of the layers whose output gradient is
 * log-quantized (with tpr, both halves of the split ConvGrad; the first
 * layer's dW and the last layer's products keep a float dY and stay float).
 *
 * products: the algorithm graph runs a few training steps (updates written
 *   back, lr 0.05) on real images (the first 32 shipped Fashion-MNIST test
 *   images) with, next to every Int4LogConvGrad / Int4LogGemm and every
 *   forward Int4CodedConv, its float counterpart (ConvGrad / Gemm / Conv,
 *   the same attributes) on the same operands as an extra output: every
 *   integer product equals the float product of the same quantized graph to
 *   float rounding, at every step, and every one ran on the integer kernels
 *   (the op's counters: no fallback).
 * sessions: the graphs with and without int4-backward train side by side
 *   (nbl_train_step / nbl_optimizer_step). The forward products differ by
 *   float rounding only (the integer forward's sums are exact), so the
 *   first loss agrees to 1e-5; the gradients agree except
 *   where a gradient value lies on a rounding boundary of the next
 *   QuantizeLog: the backward sums are multiples of a grid step, so a value
 *   can fall exactly on the boundary (in tpr, phase 1's boundaries are phase
 *   0's levels, e.g. max|g| / 4; in nearest, 2^-3 max|g|), and the integer
 *   sum (exact) and the float sum (rounded) then round to neighbouring
 *   levels. Such a tie moves one element by one level; through BatchNorm's
 *   backward (which mixes a whole channel) that moves other values of the
 *   layers below across their rounding boundaries (on ResNet-8, 2 ties at
 *   blocks.1 give a few hundred changed codes at blocks.0). So the check
 *   there is loose: at the first step the relative L2 norm of each
 *   gradient's difference at most 0.15 (LeNet-5: below 0.03; ResNet-8:
 *   below 0.04); then the parameters differ a little (and ResNet-8's
 *   BatchNorm gradients by up to 40% at step 2), so only the losses of the
 *   following steps are compared, within 1e-2. The strict check is
 *   `products`.
 * given_scale: build-training wires the forward quantizer's scale and
 *   zero_point into QuantizeInt4Grad; saved and loaded, the model trains
 *   bit for bit as without them (QuantizeInt4Grad scanning X).
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "include/nibble.h"
#include "ir/ir.h"
#include "runtime/core/exec.h"
#include "runtime/kernels/q4_train.h"
#include "runtime/ops/grad_int4.h"
#include "test_model.h"
#include "ck_elem.h"

/* Nodes of op type `op` in the algorithm graph. */
static int count_op(const nbl_model *m, const char *op) {
  const nbl_graph *g = m->training[0].algorithm;
  int n = 0;
  for (int i = 0; i < g->n_nodes; i++) n += !g->nodes[i].dead && !strcmp(g->nodes[i].op_type, op);
  return n;
}

/* No float backward product (ConvGrad, Gemm, MatMul) reads a QuantizeLog output. */
static void no_float_product_on_log(const nbl_model *m) {
  const nbl_graph *g = m->training[0].algorithm;
  for (int i = 0; i < g->n_nodes; i++) {
    const nbl_node *n = &g->nodes[i];
    if (n->dead || (strcmp(n->op_type, "ConvGrad") && strcmp(n->op_type, "Gemm") && strcmp(n->op_type, "MatMul")))
      continue;
    for (int k = 0; k < n->n_inputs; k++) {
      nbl_id v = n->inputs[k];
      nbl_id p = v == NBL_NONE ? NBL_NONE : g->values[v].producer;
      ck_assert_msg(p == NBL_NONE || strcmp(g->nodes[p].op_type, "QuantizeLog"),
                    "%s (%s) still multiplies the log-quantized '%s' in float", n->name, n->op_type,
                    g->values[v].name);
    }
  }
}

typedef struct run {
  nbl_train_session *s;
  nbl_host_tensor in[2];
} run;

static void run_open(run *r, const nbl_model *m, int reference, const nbl_host_tensor *x, const nbl_host_tensor *y) {
  nbl_train_options o = {.threads = 2, .reference = reference};
  ck_assert_msg(nbl_train_session_create(m, &o, &r->s) == NBL_OK, "%s", nbl_last_error());
  ck_assert_int_eq(nbl_train_input_count(r->s), 2);
  for (int i = 0; i < 2; i++) {
    const char *nm = nbl_train_input_name(r->s, i);
    r->in[i] = strcmp(nm, "label") ? *x : *y;
    r->in[i].name = nm;
  }
  ck_assert_int_eq(nbl_train_set_lr(r->s, 0.05), NBL_OK);
}

typedef struct model_case {
  const char *model, *rounding;
  int n_conv, n_gemm, n_fwd; /* Int4LogConvGrad, Int4LogGemm, Int4CodedConv nodes expected */
} model_case;

static const model_case cases[] = {
    /* LeNet-5: features.3 (ConvGrad dX+dW), classifier.1 and .3 (dX and dW Gemm each) */
    {"models/lenet5_init.onnx", "nearest", 1, 4, 2},
    {"models/lenet5_init.onnx", "tpr", 2, 4, 2},
    {"models/lenet5_init.onnx", "stochastic", 1, 4, 2},
    {"models/lenet5_init.onnx", "luq", 1, 4, 2},
    /* ResNet-8: the 8 inner convolutions (BatchNorm after each); forward: all 9 */
    {"models/resnet8_init.onnx", "nearest", 8, 0, 9},
    {"models/resnet8_init.onnx", "tpr", 16, 0, 9},
};

static nbl_rt_tensor rt_view(const nbl_host_tensor *h) {
  nbl_rt_tensor t = {.dtype = h->dtype, .rank = h->rank, .data = h->data, .nbytes = h->nbytes, .numel = 1};
  for (int i = 0; i < h->rank; i++) t.dims[i] = h->dims[i], t.numel *= h->dims[i];
  return t;
}

/* Next to every integer product of the algorithm graph, its float
 * counterpart on the same operands; both as graph outputs (pairs from
 * output first_out on: integer, float). Returns the number of pairs. */
static int add_shadows(nbl_model *m, int *first_out) {
  nbl_graph *g = m->training[0].algorithm;
  *first_out = g->n_outputs;
  int pairs = 0;
  const int n0 = g->n_nodes;
  for (nbl_id id = 0; id < n0; id++) {
    const nbl_node *n = &g->nodes[id];
    const int conv = !strcmp(n->op_type, "Int4LogConvGrad"), fwd = !strcmp(n->op_type, "Int4CodedConv");
    if (n->dead || (!conv && !fwd && strcmp(n->op_type, "Int4LogGemm"))) continue;
    nbl_id in[3], out[3] = {NBL_NONE, NBL_NONE, NBL_NONE}, mine[3];
    const int n_in = conv || fwd ? 3 : 2, n_out = n->n_outputs;
    ck_assert_int_le(n_out, 3);
    for (int i = 0; i < n_in; i++) in[i] = n->inputs[i];
    char nm[600];
    if (conv && in[0] == NBL_NONE) { /* dY handed over as codes: the shadow reads the QuantizeLog's Y, given back */
      ck_assert_int_ge(n->n_inputs, 8);
      nbl_node *q = &g->nodes[g->values[n->inputs[6]].producer];
      ck_assert_str_eq(q->op_type, "QuantizeLog");
      ck_assert_int_eq(q->outputs[0], NBL_NONE); /* dropped by the pass: nothing else read it */
      snprintf(nm, sizeof nm, "%s_Y", g->values[q->outputs[2]].name);
      in[0] = q->outputs[0] = nbl_graph_add_value(g, nm);
      ck_assert_int_ne(in[0], NBL_NONE);
      g->values[in[0]].producer = (nbl_id)(q - g->nodes);
      n = &g->nodes[id];
    }
    const int xi = fwd ? 0 : 1, ic = fwd ? 5 : 8;
    if ((conv || fwd) && in[xi] == NBL_NONE) { /* X handed over as codes: the shadow reads the QuantizeInt4's Y, given back */
      ck_assert_int_ge(n->n_inputs, ic + 2);
      nbl_node *q = &g->nodes[g->values[n->inputs[ic]].producer];
      ck_assert_str_eq(q->op_type, "QuantizeInt4");
      if (q->outputs[0] == NBL_NONE) { /* dropped by the pass (given back once for all its readers) */
        snprintf(nm, sizeof nm, "%s_Y", g->values[q->outputs[3]].name);
        q->outputs[0] = nbl_graph_add_value(g, nm);
        ck_assert_int_ne(q->outputs[0], NBL_NONE);
        g->values[q->outputs[0]].producer = (nbl_id)(q - g->nodes);
      }
      in[xi] = q->outputs[0];
      n = &g->nodes[id];
    }
    for (int o = 0; o < n_out; o++) {
      mine[o] = n->outputs[o];
      if (mine[o] == NBL_NONE) continue;
      snprintf(nm, sizeof nm, "%s_float", g->values[mine[o]].name);
      out[o] = nbl_graph_add_value(g, nm);
      ck_assert_int_ne(out[o], NBL_NONE);
    }
    snprintf(nm, sizeof nm, "%s_float", g->nodes[id].name);
    nbl_id sid = nbl_graph_add_node(g, conv ? "ConvGrad" : fwd ? "Conv" : "Gemm", conv ? "com.microsoft" : "", nm,
                                    n_in, in, n_out, out);
    ck_assert_int_ne(sid, NBL_NONE);
    g->nodes[sid].attrs = g->nodes[id].attrs; /* the same attributes (Int4LogGemm's are Gemm's, ...) */
    g->nodes[sid].n_attrs = g->nodes[id].n_attrs;
    for (int o = 0; o < n_out; o++)
      if (mine[o] != NBL_NONE) {
        nbl_graph_add_output(g, mine[o]);
        nbl_graph_add_output(g, out[o]);
        pairs++;
      }
  }
  if (nbl_model_opset(m, "com.microsoft") < 1) nbl_model_set_opset(m, "com.microsoft", 1);
  return pairs;
}

static void check_products(const model_case *c) {
  char spec[300];
  snprintf(spec, sizeof spec, "quantize-int4,build-training,quantize-grad-log4{rounding=%s,skip-1x1=0},int4-backward",
           c->rounding);
  nbl_model *m = tm_prepared(c->model, spec);
  int first = 0, pairs = add_shadows(m, &first);
  ck_assert_int_ge(pairs, c->n_conv + c->n_gemm + c->n_fwd);
  const nbl_graph *alg = m->training[0].algorithm;
  nbl_engine_options eo = {.threads = 2};
  nbl_engine *e = NULL;
  ck_assert_msg(nbl_engine_create(m, alg, &eo, &e) == NBL_OK, "%s", nbl_last_error());
  /* the parameters: writable copies the updates go back into */
  const int n_init = m->graph->n_initializers;
  nbl_rt_tensor *params = calloc((size_t)n_init + 1, sizeof *params);
  ck_assert_ptr_nonnull(params);
  for (int i = 0; i < n_init; i++) {
    const nbl_value *val = &m->graph->values[m->graph->initializers[i]];
    if (nbl_graph_find(alg, val->name) == NBL_NONE) continue;
    nbl_rt_tensor v;
    ck_assert_int_eq(nbl_rt_from_ir(val->init, &v), NBL_OK);
    ck_assert_int_eq(nbl_rt_copy(&params[i], &v), NBL_OK);
    ck_assert_msg(nbl_engine_bind(e, val->name, &params[i]) == NBL_OK, "%s", nbl_last_error());
  }
  nbl_host_tensor x, y;
  tm_batch(32, &x, &y);
  nbl_rt_tensor tx = rt_view(&x), ty = rt_view(&y);
  float lr = 0.05f;
  int64_t step = 1;
  nbl_rt_tensor tl = {.dtype = NBL_DT_FLOAT, .numel = 1, .data = &lr, .nbytes = 4};
  nbl_rt_tensor ts = {.dtype = NBL_DT_INT64, .numel = 1, .data = &step, .nbytes = 8};
  ck_assert_int_eq(nbl_engine_bind(e, "input", &tx), NBL_OK);
  ck_assert_int_eq(nbl_engine_bind(e, "label", &ty), NBL_OK);
  ck_assert_int_eq(nbl_engine_bind(e, "lr", &tl), NBL_OK);
  ck_assert_int_eq(nbl_engine_bind(e, "step", &ts), NBL_OK);
  const nbl_training_info *ti = &m->training[0];
  for (step = 1; step <= 3; step++) {
    long ir0 = nbl_i4b_integer_runs(), fr0 = nbl_i4b_float_runs();
    ck_assert_msg(nbl_engine_run(e) == NBL_OK, "%s", nbl_last_error());
    ck_assert_int_eq(nbl_i4b_integer_runs() - ir0, c->n_conv + c->n_gemm + c->n_fwd); /* all integer */
    ck_assert_int_eq(nbl_i4b_float_runs(), fr0);
    for (int p = 0; p < pairs; p++) {
      const nbl_rt_tensor *ti_ = nbl_engine_output(e, first + 2 * p), *tf = nbl_engine_output(e, first + 2 * p + 1);
      ck_assert_int_eq(ti_->numel, tf->numel);
      const float *a = ti_->data, *b = tf->data;
      double mx = 0, d = 0;
      for (int64_t k = 0; k < tf->numel; k++) {
        mx = fmax(mx, fabs(b[k]));
        d = fmax(d, fabs((double)a[k] - b[k]));
      }
      const char *nm = alg->values[alg->outputs[first + 2 * p]].name;
      ck_assert_msg(mx > 0, "%s %s: product '%s' is all zeros", c->model, c->rounding, nm);
      ck_assert_msg(d <= 1e-5 * mx, "%s %s step %d: integer '%s' differs from the float product by %g (max %g)",
                    c->model, c->rounding, (int)step, nm, d, mx);
    }
    for (int k = 0; k < ti->n_update_binding; k++) { /* write the updates back */
      nbl_id key = nbl_graph_find(m->graph, ti->update_binding[k].key);
      int out = -1, slot = -1;
      for (int o = 0; o < alg->n_outputs; o++)
        if (!strcmp(alg->values[alg->outputs[o]].name, ti->update_binding[k].value)) out = o;
      for (int i = 0; i < n_init; i++)
        if (m->graph->initializers[i] == key) slot = i;
      ck_assert(out >= 0 && slot >= 0);
      const nbl_rt_tensor *nv = nbl_engine_output(e, out);
      ck_assert_uint_eq(nv->nbytes, params[slot].nbytes);
      memcpy(params[slot].data, nv->data, nv->nbytes);
    }
  }
  nbl_engine_free(e);
  for (int i = 0; i < n_init; i++) free(params[i].data);
  free(params);
  nbl_host_tensor_free(&x);
  nbl_host_tensor_free(&y);
  nbl_model_free(m);
}

START_TEST(test_products) { check_products(&cases[_i]); }
END_TEST

/* Relative L2 norm of the difference of the gradients of two sessions. */
static void compare_grads(run *a, run *b, double tol, const char *what, int step) {
  int n = nbl_train_grad_count(a->s);
  ck_assert_int_eq(n, nbl_train_grad_count(b->s));
  for (int i = 0; i < n; i++) {
    nbl_host_tensor ga, gb;
    ck_assert_int_eq(nbl_train_grad(a->s, i, &ga), NBL_OK);
    ck_assert_int_eq(nbl_train_grad(b->s, i, &gb), NBL_OK);
    ck_assert_str_eq(ga.name, gb.name);
    ck_assert_uint_eq(ga.nbytes, gb.nbytes);
    const float *pa = ga.data, *pb = gb.data;
    size_t ne = ga.nbytes / sizeof(float);
    double nd = 0, nb = 0;
    for (size_t k = 0; k < ne; k++) {
      ck_elem_msg(isfinite(pa[k]), "%s: gradient of %s [%zu] is %g", what, ga.name, k, pa[k]);
      nd += ((double)pa[k] - pb[k]) * ((double)pa[k] - pb[k]);
      nb += (double)pb[k] * pb[k];
    }
    ck_assert_msg(sqrt(nd) <= tol * sqrt(nb), "%s, step %d: gradient of %s: |a - b| / |b| = %g (tolerance %g)",
                  what, step, ga.name, sqrt(nd / nb), tol);
  }
}

START_TEST(test_sessions) {
  const model_case *c = &cases[_i];
  char spec[256], spec_i[300];
  snprintf(spec, sizeof spec, "quantize-int4,build-training,quantize-grad-log4{rounding=%s,skip-1x1=0}", c->rounding);
  snprintf(spec_i, sizeof spec_i, "%s,int4-backward", spec);
  nbl_model *mf = tm_prepared(c->model, spec), *mi = tm_prepared(c->model, spec_i);
  ck_assert_int_eq(count_op(mf, "Int4LogConvGrad") + count_op(mf, "Int4LogGemm"), 0);
  ck_assert_int_eq(count_op(mi, "Int4LogConvGrad"), c->n_conv);
  ck_assert_int_eq(count_op(mi, "Int4LogGemm"), c->n_gemm);
  ck_assert_int_eq(count_op(mi, "Int4CodedConv"), c->n_fwd);
  ck_assert_int_eq(count_op(mf, "Int4CodedConv"), 0);
  for (int i = 0; i < mi->graph->n_nodes; i++) /* the main graph (inference) keeps its Conv */
    ck_assert_str_ne(mi->graph->nodes[i].op_type, "Int4CodedConv");
  no_float_product_on_log(mi);
  nbl_host_tensor x, y;
  tm_batch(32, &x, &y);
  run ri, rf;
  run_open(&ri, mi, 0, &x, &y);
  run_open(&rf, mf, 0, &x, &y);
  for (int step = 1; step <= 3; step++) {
    float li, lf;
    ck_assert_msg(nbl_train_step(ri.s, 2, ri.in, &li) == NBL_OK, "%s", nbl_last_error());
    ck_assert_msg(nbl_train_step(rf.s, 2, rf.in, &lf) == NBL_OK, "%s", nbl_last_error());
    ck_assert_msg(fabsf(li - lf) <= (step == 1 ? 1e-5f : 1e-2f) * fabsf(lf),
                  "%s %s step %d: loss %.9g (integer) vs %.9g (float)", c->model, c->rounding, step, li, lf);
    if (step == 1) compare_grads(&ri, &rf, 0.15, "integer vs float products", step);
    for (run *r = &ri; r; r = r == &ri ? &rf : NULL) {
      ck_assert_msg(nbl_optimizer_step(r->s) == NBL_OK, "%s", nbl_last_error());
      ck_assert_int_eq(nbl_train_reset_grad(r->s), NBL_OK);
    }
  }
  nbl_train_session_free(ri.s);
  nbl_train_session_free(rf.s);
  nbl_host_tensor_free(&x);
  nbl_host_tensor_free(&y);
  nbl_model_free(mi);
  nbl_model_free(mf);
}
END_TEST

/* build-training hands QuantizeInt4Grad the forward quantizer's scale and
 * zero_point (scale_source max and sawb; PACT's clip is its alpha input):
 * every such QuantizeInt4Grad reads outputs 1 and 2 of the QuantizeInt4 of
 * its X with the same bits (4 and the 8-bit first/last layers), the wiring
 * survives saving and loading the training model, and the loaded model
 * trains bit for bit as the same model with those inputs removed (the
 * graphs built before: QuantizeInt4Grad scans X), fused chains included. */
typedef struct given_case {
  const char *model, *spec;
  int wired, wired8, plain; /* QuantizeInt4Grad nodes: wired, of them 8-bit; not wired (pact) */
} given_case;

static const given_case gcases[] = {
    /* weights (sawb) and activations (affine max) of every layer but the input's activation */
    {"models/resnet8_init.onnx", "quantize-int4,build-training,quantize-grad-log4{rounding=tpr},int4-backward", 17,
     3, 0},
    {"models/lenet5_init.onnx", "quantize-int4{activations=max,weights=max,narrow=1},build-training", 9, 3, 0},
    {"models/lenet5_init.onnx", "quantize-int4{activations=pact},build-training", 5, 2, 5},
};

/* Checks the wiring of every QuantizeInt4Grad of m's algorithm graph and
 * counts them (see given_case); unwire: remove inputs 3 and 4 instead. */
static void check_wiring(nbl_model *m, const given_case *c, int unwire) {
  nbl_graph *g = m->training[0].algorithm;
  int wired = 0, wired8 = 0, plain = 0;
  for (nbl_id id = 0; id < g->n_nodes; id++) {
    const nbl_node *q = &g->nodes[id];
    if (q->dead || strcmp(q->op_type, "QuantizeInt4Grad")) continue;
    nbl_q4_config cfg;
    ck_assert_int_eq(nbl_q4_config_decode(q, &cfg, NULL, 0), NBL_OK);
    if (cfg.scale_source != NBL_Q4_SCALE_MAX && cfg.scale_source != NBL_Q4_SCALE_SAWB) {
      ck_assert_int_le(q->n_inputs, 3);
      plain++;
      continue;
    }
    ck_assert_int_eq(q->n_inputs, 5);
    nbl_id sv = q->inputs[3], zv = q->inputs[4];
    ck_assert(sv != NBL_NONE && zv != NBL_NONE && g->values[sv].producer != NBL_NONE);
    const nbl_node *f = &g->nodes[g->values[sv].producer];
    ck_assert_str_eq(f->op_type, "QuantizeInt4");
    ck_assert_msg((f->n_outputs == 3 || f->n_outputs == 4) && f->outputs[1] == sv && f->outputs[2] == zv && f->inputs[0] == q->inputs[1],
                  "%s: %s is not wired to the quantizer of its X", c->model, q->name);
    ck_assert_int_eq(nbl_attr_int(f, "bits", 4), cfg.bits);
    wired++;
    wired8 += cfg.bits == 8;
    if (unwire) {
      nbl_node_set_input(g, id, 3, NBL_NONE);
      nbl_node_set_input(g, id, 4, NBL_NONE);
      g->nodes[id].n_inputs = g->nodes[id].inputs[2] == NBL_NONE ? 2 : 3;
    }
  }
  ck_assert_int_eq(wired, c->wired);
  ck_assert_int_eq(wired8, c->wired8);
  ck_assert_int_eq(plain, c->plain);
}

START_TEST(test_given_scale) {
  const given_case *c = &gcases[_i];
  nbl_model *m = tm_prepared(c->model, c->spec), *ml = NULL, *mu = NULL;
  check_wiring(m, c, 0);
  void *buf = NULL;
  size_t len = 0;
  ck_assert_msg(nbl_model_save_buffer(m, &buf, &len) == NBL_OK, "%s", nbl_last_error());
  ck_assert_msg(nbl_model_load_buffer(buf, len, "saved", NULL, &ml) == NBL_OK, "%s", nbl_last_error());
  ck_assert_msg(nbl_model_load_buffer(buf, len, "unwired", NULL, &mu) == NBL_OK, "%s", nbl_last_error());
  free(buf);
  check_wiring(ml, c, 0);
  check_wiring(mu, c, 1);
  nbl_host_tensor x, y;
  tm_batch(16, &x, &y);
  run rw, ru;
  run_open(&rw, ml, 0, &x, &y);
  run_open(&ru, mu, 0, &x, &y);
  for (int step = 1; step <= 2; step++) {
    float lw, lu;
    ck_assert_msg(nbl_train_step(rw.s, 2, rw.in, &lw) == NBL_OK, "%s", nbl_last_error());
    ck_assert_msg(nbl_train_step(ru.s, 2, ru.in, &lu) == NBL_OK, "%s", nbl_last_error());
    ck_assert_msg(!memcmp(&lw, &lu, sizeof lw), "%s step %d: loss %.9g vs %.9g", c->model, step, lw, lu);
    int n = nbl_train_grad_count(rw.s);
    ck_assert_int_eq(n, nbl_train_grad_count(ru.s));
    for (int i = 0; i < n; i++) {
      nbl_host_tensor a, b;
      ck_assert_int_eq(nbl_train_grad(rw.s, i, &a), NBL_OK);
      ck_assert_int_eq(nbl_train_grad(ru.s, i, &b), NBL_OK);
      ck_assert_msg(a.nbytes == b.nbytes && !memcmp(a.data, b.data, a.nbytes), "%s step %d: gradient of %s differs",
                    c->model, step, a.name);
    }
    for (run *r = &rw; r; r = r == &rw ? &ru : NULL) {
      ck_assert_msg(nbl_optimizer_step(r->s) == NBL_OK, "%s", nbl_last_error());
      ck_assert_int_eq(nbl_train_reset_grad(r->s), NBL_OK);
    }
  }
  nbl_train_session_free(rw.s);
  nbl_train_session_free(ru.s);
  nbl_host_tensor_free(&x);
  nbl_host_tensor_free(&y);
  nbl_model_free(m);
  nbl_model_free(ml);
  nbl_model_free(mu);
}
END_TEST

/* The training kernels of QuantizeInt4 / QuantizeInt4Grad (q4_train.h)
 * against runtime/formats/int4.c bit for bit: parameters, fake-quantized
 * values and the straight-through mask, on random tensors with exact
 * half-way points, values on the clip edges and sizes off the vector width,
 * for symmetric (max, sawb, fixed) and affine quantizers of 4 and 8 bits
 * (sawb's statistics by blocks of 16384 floats: 40007 spans three).
 * Tagged "capped": the suite runs it again as AVX2 and scalar (NBL_ISA). */
START_TEST(test_q4_kernels) {
  uint64_t r = 0x9e3779b97f4a7c15ull;
  const int64_t sizes[] = {1, 15, 16, 17, 1000, 40007};
  struct {
    int bits;
    nbl_q4_mode mode;
    nbl_q4_scale_source src;
  } cfgs[] = {{4, NBL_Q4_SYMMETRIC, NBL_Q4_SCALE_MAX}, {4, NBL_Q4_AFFINE, NBL_Q4_SCALE_MAX},
              {8, NBL_Q4_AFFINE, NBL_Q4_SCALE_MAX}, {4, NBL_Q4_SYMMETRIC, NBL_Q4_SCALE_SAWB},
              {8, NBL_Q4_SYMMETRIC, NBL_Q4_SCALE_SAWB}, {4, NBL_Q4_SYMMETRIC, NBL_Q4_SCALE_FIXED}};
  nbl_kctx kc = {.threads = 1};
  for (size_t ci = 0; ci < sizeof cfgs / sizeof cfgs[0]; ci++)
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++)
      for (int relu = 0; relu < 2; relu++) {
        int64_t n = sizes[si];
        float *x = malloc(sizeof(float) * (size_t)n), *g = malloc(sizeof(float) * (size_t)n);
        float *y0 = malloc(sizeof(float) * (size_t)n), *y1 = malloc(sizeof(float) * (size_t)n);
        float *d1 = malloc(sizeof(float) * (size_t)n);
        ck_assert(x && g && y0 && y1 && d1);
        for (int64_t i = 0; i < n; i++) {
          r = r * 6364136223846793005ull + 1442695040888963407ull;
          float u = (float)((r >> 40) & 0xffffff) / 16777216.0f; /* [0, 1) */
          x[i] = relu ? u * 3.0f : (u - 0.4f) * 2.0f;
          g[i] = u - 0.5f;
        }
        nbl_q4_config cfg;
        nbl_q4_config_default(&cfg);
        cfg.bits = cfgs[ci].bits, cfg.mode = cfgs[ci].mode, cfg.scale_source = cfgs[ci].src;
        cfg.rounding = NBL_Q4_ROUND_HALF_EVEN;
        cfg.fixed_scale = 0.125f;
        nbl_q4_params p0, p1;
        const char *why = NULL;
        ck_assert_int_eq(nbl_q4_choose(&cfg, x, (size_t)n, 0.0f, &p0, &why), 0);
        /* half-way points and the clip edges of these parameters */
        for (int64_t i = 0; i + 7 < n; i += 7) x[i] = ((float)((i / 7) % 19) - 9.0f + 0.5f) * p0.scale;
        if (n > 3) x[3] = (float)(p0.qmax - p0.zero) * p0.scale + 0.5f * p0.scale;
        ck_assert_int_eq(nbl_q4_choose(&cfg, x, (size_t)n, 0.0f, &p0, &why), 0);
        nbl_rt_tensor X = {.dtype = NBL_DT_FLOAT, .rank = 1, .dims = {n}, .numel = n, .data = x,
                           .nbytes = sizeof(float) * (size_t)n};
        ck_assert_int_eq(nbl_q4t_params(&kc, &cfg, &X, &p1), 0);
        ck_assert(p0.scale == p1.scale && p0.zero == p1.zero && p0.qmin == p1.qmin && p0.qmax == p1.qmax);
        nbl_q4_fake_quant(&cfg, &p0, x, y0, (size_t)n, 0);
        nbl_q4t_fake_quant(&kc, &cfg, &p1, x, y1, NULL, n);
        nbl_q4t_ste(&kc, &cfg, &p1, x, g, d1, n);
        int64_t dropped = 0;
        for (int64_t i = 0; i < n; i++) {
          ck_elem_msg(memcmp(&y0[i], &y1[i], sizeof(float)) == 0, "cfg %zu n %lld [%lld]: %a vs %a", ci,
                      (long long)n, (long long)i, y1[i], y0[i]);
          float want = nbl_q4_passes(&cfg, &p0, x[i], (uint64_t)i) ? g[i] : 0.0f;
          ck_elem_msg(memcmp(&want, &d1[i], sizeof(float)) == 0, "ste cfg %zu n %lld [%lld]: %a vs %a", ci,
                      (long long)n, (long long)i, d1[i], want);
          dropped += d1[i] == 0.0f && g[i] != 0.0f;
        }
        if (cfgs[ci].src == NBL_Q4_SCALE_FIXED && n > 3) ck_assert_int_gt(dropped, 0); /* the mask acts */
        /* a NaN or an infinity (in the last vector of a block too): the reference path */
        if (n > 1) {
          x[1] = NAN;
          ck_assert_int_eq(nbl_q4t_params(&kc, &cfg, &X, &p1), -1);
          x[1] = 0.0f;
          x[n - 1] = -INFINITY;
          ck_assert_int_eq(nbl_q4t_params(&kc, &cfg, &X, &p1), -1);
        }
        free(x), free(g), free(y0), free(y1), free(d1);
      }
}
END_TEST

int main(void) {
  Suite *s = suite_create("train_int4");
  TCase *tq = tcase_create("q4_kernels");
  tcase_set_tags(tq, "capped");
  tcase_add_test(tq, test_q4_kernels);
  suite_add_tcase(s, tq);
  TCase *tc = tcase_create("models");
  tcase_set_timeout(tc, 600);
  tcase_add_loop_test(tc, test_products, 0, (int)(sizeof cases / sizeof cases[0]));
  tcase_add_loop_test(tc, test_sessions, 0, (int)(sizeof cases / sizeof cases[0]));
  tcase_add_loop_test(tc, test_given_scale, 0, (int)(sizeof gcases / sizeof gcases[0]));
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
