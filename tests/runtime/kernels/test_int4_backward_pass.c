/* test_int4_backward_pass.c - the int4-backward pass (passes/int4_backward.c)
 * on a hand-built training graph: it rewrites exactly the matching backward
 * nodes (ConvGrad, Gemm, MatMul) with the quantizers' scales, hands over the
 * QuantizeLog's codes and top and the QuantizeInt4's codes and zero point
 * in place of the floats (dropping Y where nothing else reads it), keeps the
 * rest with the reason in its summary, and the rewritten model runs to the
 * same values. (Moved out of test_int4_backward.c, which tests the kernels.) */
#include <check.h>
#include <math.h>
#include <stdio.h>

#include "grad_check.h"
#include "runtime/core/cpu.h"
#include "runtime/formats/int4.h"
#include "runtime/formats/log.h"
#include "runtime/kernels/int4_backward.h"
#include "runtime/kernels/kdebug.h"
#include "runtime/ops/grad_int4.h"
#include "test_model.h"

#define MS "com.microsoft"

/* ------------------------------------------------------------------ the int4-backward pass */

typedef struct pm {
  nbl_model *m;
  nbl_graph *g;
  tens feed[6];
  const char *feed_name[6];
  int n_feed;
  int n_out;
} pm;

static nbl_id pm_input(pm *p, const char *name, int rank, const int64_t *dims, double lo, double hi) {
  nbl_id v = nbl_graph_add_value(p->g, name);
  nbl_type_set_tensor(p->m->arena, &p->g->values[v].type, NBL_DT_FLOAT, rank, dims);
  nbl_graph_add_input(p->g, v);
  p->feed[p->n_feed] = t_rand(NBL_DT_FLOAT, lo, hi, rank, dims);
  p->feed_name[p->n_feed++] = name;
  return v;
}

/* A node with one output named `out` (typed when rank >= 0), NULL attrs ok. */
static nbl_id pm_node(pm *p, const char *op, const char *dom, const char *name, int n_in, const nbl_id *in,
                      const char *out, int rank, const int64_t *dims, int graph_out) {
  nbl_id o = nbl_graph_add_value(p->g, out);
  if (rank >= 0) nbl_type_set_tensor(p->m->arena, &p->g->values[o].type, NBL_DT_FLOAT, rank, dims);
  nbl_id n = nbl_graph_add_node(p->g, op, dom, name, n_in, in, 1, &o);
  ck_assert(n != NBL_NONE);
  if (graph_out) {
    nbl_graph_add_output(p->g, o);
    p->n_out++;
  } else if (rank >= 0) {
    nbl_graph_add_value_info(p->g, o);
  }
  return o;
}

static nbl_id pm_find_node(const nbl_graph *g, const char *name) {
  for (int i = 0; i < g->n_nodes; i++)
    if (!g->nodes[i].dead && !strcmp(g->nodes[i].name, name)) return i;
  return NBL_NONE;
}

/* The hand-built backward of a quantized Conv and a quantized Gemm layer,
 * the gradients quantized by grad_op ("QuantizeLog", or "QuantizeInt4"):
 *   cg:    ConvGrad(Q(G), Q4(X), Q4(W))             -> Int4LogConvGrad
 *   cg_f:  ConvGrad(G, Q4(X), Q4(W)), float dY       -> kept
 *   cg_10: ConvGrad(radix-10 QuantizeLog(G), ...)    -> kept (log only)
 *   g_dx:  Gemm(Q(Gd), Q4(Wg))                       -> Int4LogGemm
 *   g_dw:  Gemm(Q(Gd), Q4(A), transA=1)              -> Int4LogGemm
 *   g_c0:  Gemm(Q(Gd), Q4(Wg), C=0, beta=0)          -> Int4LogGemm, C dropped
 *   g_c1:  Gemm(Q(Gd), Q4(Wg), C, beta=1)            -> kept
 *   mm:    MatMul(Q(Gd), Q4(Wg)) (2-D)               -> Int4LogGemm */
static pm pm_build(const char *grad_op) {
  pm p;
  memset(&p, 0, sizeof p);
  p.m = nbl_model_new();
  nbl_model_set_opset(p.m, "", 17);
  nbl_model_set_opset(p.m, "ai.nibble", 1);
  nbl_model_set_opset(p.m, MS, 1);
  p.g = p.m->graph;
  const int64_t dx[4] = {2, 3, 8, 8}, dw[4] = {4, 3, 3, 3}, dg[4] = {2, 4, 6, 6}, da[2] = {5, 7}, dwg[2] = {6, 7},
                dgd[2] = {5, 6}, dy2[2] = {5, 7}, dw2[2] = {6, 7};
  nbl_id X = pm_input(&p, "X", 4, dx, -1, 2), W = pm_input(&p, "W", 4, dw, -1, 1), G = pm_input(&p, "G", 4, dg, -1, 1);
  nbl_id A = pm_input(&p, "A", 2, da, -1, 2), Wg = pm_input(&p, "Wg", 2, dwg, -1, 1),
         Gd = pm_input(&p, "Gd", 2, dgd, -1, 1);
  nbl_id xq = pm_node(&p, "QuantizeInt4", "ai.nibble", "q_x", 1, &X, "Xq", 4, dx, 0);
  nbl_node_set_attr_string(p.g, p.g->values[xq].producer, "mode", "affine");
  nbl_id wq = pm_node(&p, "QuantizeInt4", "ai.nibble", "q_w", 1, &W, "Wq", 4, dw, 0);
  nbl_node_set_attr_string(p.g, p.g->values[wq].producer, "scale_source", "sawb");
  nbl_id gq = pm_node(&p, grad_op, "ai.nibble", "q_g", 1, &G, "Gq", 4, dg, 0);
  nbl_id aq = pm_node(&p, "QuantizeInt4", "ai.nibble", "q_a", 1, &A, "Aq", 2, da, 0);
  nbl_id wgq = pm_node(&p, "QuantizeInt4", "ai.nibble", "q_wg", 1, &Wg, "Wgq", 2, dwg, 0);
  nbl_id gdq = pm_node(&p, grad_op, "ai.nibble", "q_gd", 1, &Gd, "Gdq", 2, dgd, 0);
  const int64_t ks[2] = {3, 3};
  nbl_id o3[3] = {nbl_graph_add_value(p.g, "dX"), nbl_graph_add_value(p.g, "dW"), nbl_graph_add_value(p.g, "dB")};
  nbl_id in3[3] = {gq, xq, wq};
  nbl_id cg = nbl_graph_add_node(p.g, "ConvGrad", MS, "cg", 3, in3, 3, o3);
  nbl_node_set_attr_ints(p.g, cg, "kernel_shape", 2, ks);
  for (int i = 0; i < 3; i++) nbl_graph_add_output(p.g, o3[i]), p.n_out++;
  nbl_id f3[3] = {G, xq, wq}, fo[1] = {nbl_graph_add_value(p.g, "dX_f")};
  nbl_id cgf = nbl_graph_add_node(p.g, "ConvGrad", MS, "cg_f", 3, f3, 1, fo);
  nbl_node_set_attr_ints(p.g, cgf, "kernel_shape", 2, ks);
  nbl_graph_add_output(p.g, fo[0]), p.n_out++;
  if (!strcmp(grad_op, "QuantizeLog")) {
    nbl_id g10 = pm_node(&p, "QuantizeLog", "ai.nibble", "q_g10", 1, &G, "G10", 4, dg, 0);
    nbl_node_set_attr_int(p.g, p.g->values[g10].producer, "radix", 10);
    nbl_id t3[3] = {g10, xq, wq}, to[1] = {nbl_graph_add_value(p.g, "dX_10")};
    nbl_id c10 = nbl_graph_add_node(p.g, "ConvGrad", MS, "cg_10", 3, t3, 1, to);
    nbl_node_set_attr_ints(p.g, c10, "kernel_shape", 2, ks);
    nbl_graph_add_output(p.g, to[0]), p.n_out++;
  }
  nbl_id i2[2] = {gdq, wgq};
  pm_node(&p, "Gemm", "", "g_dx", 2, i2, "Y_dx", 2, dy2, 1);
  nbl_id i2w[2] = {gdq, aq};
  nbl_id y = pm_node(&p, "Gemm", "", "g_dw", 2, i2w, "Y_dw", 2, dw2, 1);
  nbl_node_set_attr_int(p.g, p.g->values[y].producer, "transA", 1);
  float zeros[35] = {0};
  nbl_id C = nbl_graph_add_value(p.g, "C0");
  nbl_graph_set_initializer(p.g, C, nbl_tensor_new(p.m->arena, "C0", NBL_DT_FLOAT, 2, dy2, zeros));
  nbl_id i3[3] = {gdq, wgq, C};
  y = pm_node(&p, "Gemm", "", "g_c0", 3, i3, "Y_c0", 2, dy2, 1);
  nbl_node_set_attr_float(p.g, p.g->values[y].producer, "beta", 0.0f);
  y = pm_node(&p, "Gemm", "", "g_c1", 3, i3, "Y_c1", 2, dy2, 1);
  pm_node(&p, "MatMul", "", "mm", 2, i2, "Y_mm", 2, dy2, 1);
  return p;
}

static void pm_free(pm *p) {
  for (int i = 0; i < p->n_feed; i++) t_free(&p->feed[i]);
  nbl_model_free(p->m);
}

/* Run p's model (fast kernels) and copy its outputs into out[]. */
static void pm_run(pm *p, tens *out) {
  nbl_session *s = NULL;
  nbl_session_options opt = {.threads = 2};
  ck_assert_msg(nbl_session_create(p->m, &opt, &s) == NBL_OK, "%s", nbl_last_error());
  nbl_host_tensor f[6];
  memset(f, 0, sizeof f);
  for (int i = 0; i < p->n_feed; i++) {
    f[i].name = p->feed_name[i];
    f[i].dtype = NBL_DT_FLOAT;
    f[i].rank = p->feed[i].rank;
    memcpy(f[i].dims, p->feed[i].dims, sizeof(int64_t) * 8);
    f[i].data = p->feed[i].data;
    f[i].nbytes = sizeof(float) * (size_t)p->feed[i].n;
  }
  const nbl_host_tensor *o = NULL;
  ck_assert_msg(nbl_session_run(s, p->n_feed, f, &o) == NBL_OK, "%s", nbl_last_error());
  for (int i = 0; i < p->n_out; i++) out[i] = t_copy_host(&o[i]);
  nbl_session_free(s);
}

static nbl_status pm_pass(pm *p, const char *spec, char *log, size_t loglen) {
  nbl_pipeline *pl;
  nbl_status st = nbl_pipeline_parse(spec, &pl);
  ck_assert_msg(st == NBL_OK, "%s", nbl_last_error());
  FILE *lf = fmemopen(log, loglen, "w");
  nbl_pipeline_options o = {.verify_each = 1, .log = lf, .out = lf};
  st = nbl_pipeline_run(pl, p->m, &o);
  fclose(lf);
  nbl_pipeline_free(pl);
  return st;
}

/* The rewritten nodes: op types, inputs (the scale outputs of the operands'
 * quantizers), C and beta dropped; the kept nodes untouched. */
static void pm_expect_rewrite(pm *p, int log) {
  nbl_graph *g = p->g;
  const nbl_node *n = &g->nodes[pm_find_node(g, "cg")];
  ck_assert_str_eq(n->op_type, "Int4LogConvGrad");
  ck_assert_str_eq(n->domain, "ai.nibble");
  const nbl_node *qx = &g->nodes[pm_find_node(g, "q_x")], *qw = &g->nodes[pm_find_node(g, "q_w")];
  const nbl_node *qg = &g->nodes[pm_find_node(g, "q_g")];
  ck_assert_int_eq(qx->n_outputs, 4); /* scale, and (dW: X's codes handed over) zero_point and codes */
  ck_assert_int_eq(qw->n_outputs, 2);
  ck_assert_int_eq(n->n_inputs, 10);
  ck_assert_int_eq(n->inputs[1], NBL_NONE); /* X's codes in X's place */
  ck_assert_int_ne(qx->outputs[0], NBL_NONE); /* its Y kept: cg_f (left in float) reads it */
  ck_assert_int_eq(n->inputs[8], qx->outputs[3]);
  ck_assert_int_eq(n->inputs[9], qx->outputs[2]);
  ck_assert_str_eq(g->values[qx->outputs[3]].name, "Xq_codes");
  ck_assert_str_eq(g->values[qx->outputs[2]].name, "Xq_zero_point");
  ck_assert_int_eq(g->values[qx->outputs[3]].type.elem, NBL_DT_INT8);
  ck_assert_int_eq(g->values[qx->outputs[3]].type.rank, 4);
  ck_assert_int_eq(g->values[qx->outputs[2]].type.rank, 0);
  if (!log) ck_assert_int_eq(n->inputs[6], NBL_NONE);
  ck_assert_int_eq(n->inputs[3], qx->outputs[1]);
  ck_assert_int_eq(n->inputs[4], qw->outputs[1]);
  if (!log) ck_assert_int_eq(n->inputs[5], qg->outputs[1]);
  else { /* the log quantizer's codes and top handed over in place of its Y
          * (which nothing else reads: dropped), its grid as attributes */
    ck_assert_int_eq(qg->n_outputs, 3);
    ck_assert_int_eq(n->inputs[0], NBL_NONE);
    ck_assert_int_eq(qg->outputs[0], NBL_NONE);
    ck_assert_int_eq(n->inputs[5], NBL_NONE);
    ck_assert_int_eq(n->inputs[6], qg->outputs[2]);
    ck_assert_int_eq(n->inputs[7], qg->outputs[1]);
    ck_assert_str_eq(g->values[qg->outputs[2]].name, "Gq_codes");
    ck_assert_str_eq(g->values[qg->outputs[1]].name, "Gq_top");
    ck_assert_int_eq(g->values[qg->outputs[2]].type.elem, NBL_DT_INT8);
    ck_assert_int_eq(g->values[qg->outputs[2]].type.rank, 4);
    ck_assert_int_eq(nbl_attr_int(n, "log_radix", 0), 4);
    ck_assert_int_eq(nbl_attr_int(n, "log_exp_bits", 0), 3);
  }
  ck_assert_str_eq(g->values[qx->outputs[1]].name, "Xq_scale");
  ck_assert_str_eq(g->nodes[pm_find_node(g, "cg_f")].op_type, "ConvGrad");
  if (log) ck_assert_str_eq(g->nodes[pm_find_node(g, "cg_10")].op_type, "ConvGrad");
  const nbl_node *qa = &g->nodes[pm_find_node(g, "q_a")], *qwg = &g->nodes[pm_find_node(g, "q_wg")],
                 *qgd = &g->nodes[pm_find_node(g, "q_gd")];
  static const char *const prods[3] = {"g_dx", "g_c0", "mm"};
  for (int i = 0; i < 3; i++) {
    const nbl_node *q = &g->nodes[pm_find_node(g, prods[i])];
    ck_assert_str_eq(q->op_type, "Int4LogGemm");
    ck_assert_int_eq(q->n_inputs, 4);
    ck_assert_int_eq(q->inputs[2], log ? NBL_NONE : qgd->outputs[1]);
    ck_assert_int_eq(q->inputs[3], qwg->outputs[1]);
    ck_assert_ptr_null(nbl_node_attr(q, "beta"));
  }
  const nbl_node *q = &g->nodes[pm_find_node(g, "g_dw")];
  ck_assert_str_eq(q->op_type, "Int4LogGemm");
  ck_assert_int_eq(nbl_attr_int(q, "transA", 0), 1);
  ck_assert_int_eq(q->inputs[3], qa->outputs[1]);
  ck_assert_str_eq(g->nodes[pm_find_node(g, "g_c1")].op_type, "Gemm");
  ck_assert_int_eq(g->values[nbl_graph_find(g, "C0")].n_consumers, 1); /* g_c1 only */
}

/* a[o] and b[o] (o < n) equal to float rounding: within 1e-5 of each output's
 * largest |a|; frees them. */
static void expect_close(tens *a, tens *b, int n) {
  for (int o = 0; o < n; o++) {
    double mx = 0;
    for (int64_t i = 0; i < a[o].n; i++) mx = fmax(mx, fabs(t_get(&a[o], i)));
    for (int64_t i = 0; i < a[o].n; i++)
      ck_assert_msg(fabs(t_get(&a[o], i) - t_get(&b[o], i)) <= 1e-5 * mx, "output %d [%lld]: %g vs %g", o,
                    (long long)i, t_get(&b[o], i), t_get(&a[o], i));
    t_free(&a[o]);
    t_free(&b[o]);
  }
}

START_TEST(test_pass_log) {
  pm p = pm_build("QuantizeLog");
  /* runs when the QuantizeLog op is in the table (it comes with quantize-grad-log4) */
  const int runnable = nbl_op_lookup("ai.nibble", "QuantizeLog", 1) != NULL;
  tens a[16], b[16];
  if (runnable) pm_run(&p, a);
  char log[2048] = {0};
  ck_assert_int_eq(pm_pass(&p, "int4-backward", log, sizeof log), NBL_OK);
  pm_expect_rewrite(&p, 1);
  ck_assert_msg(strstr(log, "1 ConvGrad and 4 Gemm/MatMul backward products, 0 forward Conv to integer kernels") &&
                    strstr(log, "cg_f (dY not log-quantized)") && strstr(log, "cg_10 (dY not log-quantized)") &&
                    strstr(log, "g_c1 (Gemm with a C term)"),
                "%s", log);
  /* the rewritten model saves and loads back equal (the codes, int8, and
   * the omitted Y as any other tensor and optional output) */
  nbl_model *back = tm_saved_and_loaded(p.m);
  tens c2[16];
  if (runnable) { /* the loaded model runs: the same bits as the one in memory (below) */
    nbl_model *mem = p.m;
    p.m = back;
    pm_run(&p, c2);
    p.m = mem;
  }
  nbl_model_free(back);
  if (runnable) {
    long runs = nbl_i4b_integer_runs() - 5; /* (the loaded model's five above) */
    pm_run(&p, b);
    ck_assert_int_eq(nbl_i4b_integer_runs(), runs + 10);
    for (int o = 0; o < p.n_out; o++) {
      ck_assert(c2[o].n == b[o].n && memcmp(c2[o].data, b[o].data, sizeof(float) * (size_t)b[o].n) == 0);
      t_free(&c2[o]);
    }
    expect_close(a, b, p.n_out);
  }
  pm_free(&p);
}
END_TEST

/* Linear INT4 gradients (QuantizeInt4 on dY): only with linear=1; the
 * model runs before and after with the same results to float rounding, the
 * five products on the integer path. */
START_TEST(test_pass_linear_runs) {
  pm p = pm_build("QuantizeInt4");
  char log[2048] = {0};
  ck_assert_int_eq(pm_pass(&p, "int4-backward", log, sizeof log), NBL_OK);
  ck_assert_str_eq(p.g->nodes[pm_find_node(p.g, "cg")].op_type, "ConvGrad"); /* not without linear=1 */
  ck_assert_msg(strstr(log, "0 ConvGrad and 0 Gemm") && strstr(log, "linear dY"), "%s", log);
  tens a[16], b[16];
  pm_run(&p, a);
  ck_assert_int_eq(pm_pass(&p, "int4-backward{linear=1}", log, sizeof log), NBL_OK);
  pm_expect_rewrite(&p, 0);
  long runs = nbl_i4b_integer_runs(), fl = nbl_i4b_float_runs();
  pm_run(&p, b);
  ck_assert_int_eq(nbl_i4b_integer_runs(), runs + 5);
  ck_assert_int_eq(nbl_i4b_float_runs(), fl);
  expect_close(a, b, p.n_out);
  /* the rewritten model saves and loads back equal */
  nbl_model_free(tm_saved_and_loaded(p.m));
  pm_free(&p);
}
END_TEST

int main(void) {
  Suite *s = suite_create("int4_backward_pass");
  TCase *tc = tcase_create("pass");
  tcase_set_timeout(tc, 300);
  tcase_add_test(tc, test_pass_log);
  tcase_add_test(tc, test_pass_linear_runs);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int nf = srunner_ntests_failed(sr);
  srunner_free(sr);
  return nf == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
