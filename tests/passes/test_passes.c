/* test_passes.c - the pass manager and the standard passes on hand-built graphs. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ir/ir.h"
#include "nibble.h"
#include "passes/pass.h"

static nbl_id val(nbl_graph *g, const char *name, nbl_dtype dt, int rank, const int64_t *dims) {
  nbl_id v = nbl_graph_add_value(g, name);
  nbl_type_set_tensor(g->model->arena, &g->values[v].type, dt, rank, dims);
  return v;
}

static nbl_id init(nbl_graph *g, const char *name, int rank, const int64_t *dims, const float *d) {
  nbl_id v = val(g, name, NBL_DT_FLOAT, rank, dims);
  nbl_graph_set_initializer(g, v, nbl_tensor_new(g->model->arena, name, NBL_DT_FLOAT, rank, dims, d));
  return v;
}

static nbl_model *new_model(void) {
  nbl_model *m = nbl_model_new();
  nbl_model_set_opset(m, "", 13);
  return m;
}

/* Run one pipeline spec on m; returns the status. */
static nbl_status run(nbl_model *m, const char *spec, int *changed_total) {
  nbl_pipeline *p;
  nbl_status st = nbl_pipeline_parse(spec, &p);
  if (st) return st;
  FILE *devnull = fopen("/dev/null", "w");
  nbl_pipeline_options o = {.out = devnull, .log = devnull};
  st = nbl_pipeline_run(p, m, &o);
  fclose(devnull);
  nbl_pipeline_free(p);
  (void)changed_total;
  return st;
}

static int live_nodes(const nbl_graph *g, const char *op) {
  int n = 0;
  for (int i = 0; i < g->n_nodes; i++)
    if (!g->nodes[i].dead && (!op || strcmp(g->nodes[i].op_type, op) == 0)) n++;
  return n;
}

START_TEST(test_parse_errors) {
  nbl_pipeline *p = NULL;
  ck_assert_int_eq(nbl_pipeline_parse("dce,nosuch", &p), NBL_ERR_INVALID_ARGUMENT);
  ck_assert_ptr_null(p);
  ck_assert_ptr_nonnull(strstr(nbl_last_error(), "unknown pass 'nosuch' (passes: infer-shapes, fold-constants, dce, "));
  ck_assert_int_eq(nbl_pipeline_parse("dce{depth=3}", &p), NBL_ERR_INVALID_ARGUMENT);
  ck_assert_str_eq(nbl_last_error(), "pass 'dce' has no option 'depth' (options: (none))");
  ck_assert_int_eq(nbl_pipeline_parse("dce{", &p), NBL_ERR_INVALID_ARGUMENT);
  ck_assert_str_eq(nbl_last_error(), "pipeline 'dce{': missing '}'");
  ck_assert_int_eq(nbl_pipeline_parse("default{x=1}", &p), NBL_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(nbl_pipeline_parse(" dce , eliminate-identity ,", &p), NBL_OK);
  nbl_pipeline_free(p);
  /* "default" expands to the cleanup pipeline; with options it is an unknown pass */
  ck_assert_int_eq(nbl_pipeline_parse("default,dce", &p), NBL_OK);
  nbl_pipeline_free(p);
}
END_TEST

START_TEST(test_dce) {
  nbl_model *m = new_model();
  nbl_graph *g = m->graph;
  int64_t d[] = {4};
  float w[4] = {1, 2, 3, 4};
  nbl_id x = val(g, "x", NBL_DT_FLOAT, 1, d), y = val(g, "y", NBL_DT_FLOAT, 1, d);
  nbl_id n1 = val(g, "n1", NBL_DT_FLOAT, 1, d), n2 = val(g, "n2", NBL_DT_FLOAT, 1, d);
  nbl_id W = init(g, "W", 1, d, w);
  (void)W;
  nbl_graph_add_input(g, x);
  nbl_graph_add_node(g, "Relu", "", "keep", 1, &x, 1, &y);
  nbl_graph_add_node(g, "Neg", "", "dead1", 1, &x, 1, &n1);
  nbl_graph_add_node(g, "Abs", "", "dead2", 1, &n1, 1, &n2);
  nbl_graph_add_output(g, y);
  ck_assert_int_eq(run(m, "dce", NULL), NBL_OK);
  ck_assert_int_eq(g->n_nodes, 1);
  ck_assert_str_eq(g->nodes[0].name, "keep");
  ck_assert_int_eq(g->n_initializers, 0);
  ck_assert_int_eq(nbl_graph_find(g, "W"), NBL_NONE);
  ck_assert_int_eq(nbl_graph_find(g, "n2"), NBL_NONE);
  ck_assert_int_eq(g->n_values, 2);
  /* no change the second time */
  nbl_pipeline *p;
  nbl_pipeline_parse("dce", &p);
  ck_assert_int_eq(nbl_graph_dce(g), 0);
  ck_assert_int_eq(g->n_nodes, 1);
  nbl_pipeline_free(p);
  nbl_model_free(m);
}
END_TEST

START_TEST(test_eliminate_identity) {
  nbl_model *m = new_model();
  nbl_graph *g = m->graph;
  int64_t d[] = {2};
  nbl_id x = val(g, "x", NBL_DT_FLOAT, 1, d), t = val(g, "t", NBL_DT_FLOAT, 1, d),
         r = val(g, "r", NBL_DT_FLOAT, 1, d), out = val(g, "out", NBL_DT_FLOAT, 1, d),
         pass = val(g, "pass", NBL_DT_FLOAT, 1, d);
  nbl_graph_add_input(g, x);
  nbl_graph_add_node(g, "Identity", "", "id1", 1, &x, 1, &t);
  nbl_graph_add_node(g, "Relu", "", "relu", 1, &t, 1, &r);
  nbl_graph_add_node(g, "Identity", "", "id2", 1, &r, 1, &out);
  nbl_graph_add_node(g, "Identity", "", "id3", 1, &x, 1, &pass); /* input -> output: must stay */
  nbl_graph_add_output(g, out);
  nbl_graph_add_output(g, pass);
  ck_assert_int_eq(run(m, "eliminate-identity", NULL), NBL_OK);
  ck_assert_int_eq(live_nodes(g, NULL), 2);
  ck_assert_int_eq(live_nodes(g, "Identity"), 1);
  nbl_id relu = NBL_NONE;
  for (int i = 0; i < g->n_nodes; i++)
    if (!strcmp(g->nodes[i].op_type, "Relu")) relu = i;
  ck_assert_int_ne(relu, NBL_NONE);
  ck_assert_str_eq(g->values[g->nodes[relu].inputs[0]].name, "x");
  ck_assert_str_eq(g->values[g->nodes[relu].outputs[0]].name, "out");
  ck_assert_str_eq(g->values[g->outputs[0]].name, "out");
  ck_assert_int_eq(g->values[g->outputs[0]].producer, relu);
  ck_assert_int_eq(nbl_graph_find(g, "t"), NBL_NONE);
  ck_assert_int_eq(nbl_graph_find(g, "r"), NBL_NONE);
  nbl_model_free(m);
}
END_TEST

START_TEST(test_fold_batchnorm) {
  nbl_model *m = new_model();
  nbl_graph *g = m->graph;
  int64_t xd[] = {1, 1, 2, 2}, wd[] = {2, 1, 1, 1}, cd[] = {2};
  float w[] = {2.0f, -1.0f}, cb[] = {0.5f, 1.0f};
  float sc[] = {3.0f, 0.5f}, bb[] = {1.0f, -2.0f}, mean[] = {0.25f, 4.0f}, var[] = {3.0f, 0.0f};
  nbl_id x = val(g, "x", NBL_DT_FLOAT, 4, xd), c = val(g, "c", NBL_DT_FLOAT, 0, NULL),
         y = val(g, "y", NBL_DT_FLOAT, 0, NULL);
  nbl_id W = init(g, "W", 4, wd, w), B = init(g, "B", 1, cd, cb);
  nbl_id s = init(g, "s", 1, cd, sc), b = init(g, "b", 1, cd, bb), mu = init(g, "mu", 1, cd, mean),
         vv = init(g, "var", 1, cd, var);
  nbl_graph_add_input(g, x);
  nbl_id cin[] = {x, W, B};
  nbl_graph_add_node(g, "Conv", "", "conv", 3, cin, 1, &c);
  nbl_id bin[] = {c, s, b, mu, vv};
  nbl_id bn = nbl_graph_add_node(g, "BatchNormalization", "", "bn", 5, bin, 1, &y);
  nbl_node_set_attr_float(g, bn, "epsilon", 1.0f);
  nbl_graph_add_output(g, y);
  ck_assert_int_eq(run(m, "fold-batchnorm", NULL), NBL_OK);
  ck_assert_int_eq(live_nodes(g, NULL), 1);
  const nbl_node *conv = &g->nodes[0];
  ck_assert_str_eq(conv->op_type, "Conv");
  ck_assert_str_eq(g->values[conv->outputs[0]].name, "y");
  const nbl_tensor *nw = g->values[conv->inputs[1]].init, *nb = g->values[conv->inputs[2]].init;
  ck_assert_ptr_nonnull(nw);
  ck_assert_ptr_nonnull(nb);
  /* hand-computed: f = s / sqrt(var + eps) = {3/2, 0.5/1}; W' = W*f; B' = (B - mu)*f + b */
  const float *fw = nw->data, *fb = nb->data;
  ck_assert_float_eq_tol(fw[0], 3.0f, 1e-6f);
  ck_assert_float_eq_tol(fw[1], -0.5f, 1e-6f);
  ck_assert_float_eq_tol(fb[0], (0.5f - 0.25f) * 1.5f + 1.0f, 1e-6f);
  ck_assert_float_eq_tol(fb[1], (1.0f - 4.0f) * 0.5f - 2.0f, 1e-6f);
  ck_assert_int_eq(g->n_initializers, 2); /* old W, B and BN parameters are gone */
  /* no-change case: nothing left to fold */
  ck_assert_int_eq(run(m, "fold-batchnorm", NULL), NBL_OK);
  ck_assert_int_eq(live_nodes(g, NULL), 1);
  nbl_model_free(m);
}
END_TEST

/* Initializers that are also graph inputs of an IR >= 4 model are defaults
 * a caller may override, not constants: fold-batchnorm leaves them; after
 * constant-initializers they are constants (out of graph.input, the other
 * inputs kept in order) and the fold happens; a second run changes nothing.
 * (Below IR 4 the loader already takes them out: test_parser.) */
START_TEST(test_constant_initializers) {
  nbl_model *m = new_model();
  m->ir_version = 4;
  nbl_graph *g = m->graph;
  int64_t xd[] = {1, 1, 2, 2}, wd[] = {2, 1, 1, 1}, cd[] = {2};
  float w[] = {2.0f, -1.0f}, cb[] = {0.5f, 1.0f};
  float sc[] = {3.0f, 0.5f}, bb[] = {1.0f, -2.0f}, mean[] = {0.25f, 4.0f}, var[] = {3.0f, 0.0f};
  nbl_id x = val(g, "x", NBL_DT_FLOAT, 4, xd), x2 = val(g, "x2", NBL_DT_FLOAT, 4, xd),
         c = val(g, "c", NBL_DT_FLOAT, 0, NULL), y = val(g, "y", NBL_DT_FLOAT, 0, NULL),
         z = val(g, "z", NBL_DT_FLOAT, 0, NULL);
  nbl_id W = init(g, "W", 4, wd, w), B = init(g, "B", 1, cd, cb);
  nbl_id s = init(g, "s", 1, cd, sc), b = init(g, "b", 1, cd, bb), mu = init(g, "mu", 1, cd, mean),
         vv = init(g, "var", 1, cd, var);
  nbl_id ins[] = {x, W, B, s, x2, b, mu, vv};
  for (int i = 0; i < 8; i++) nbl_graph_add_input(g, ins[i]);
  nbl_id cin[] = {x, W, B};
  nbl_graph_add_node(g, "Conv", "", "conv", 3, cin, 1, &c);
  nbl_id bin[] = {c, s, b, mu, vv};
  nbl_graph_add_node(g, "BatchNormalization", "", "bn", 5, bin, 1, &y);
  nbl_id ain[] = {y, x2};
  nbl_graph_add_node(g, "Add", "", "add", 2, ain, 1, &z);
  nbl_graph_add_output(g, z);
  ck_assert_int_eq(run(m, "fold-batchnorm", NULL), NBL_OK);
  ck_assert_int_eq(live_nodes(g, "BatchNormalization"), 1); /* overridable: not folded */
  ck_assert_int_eq(run(m, "constant-initializers,fold-batchnorm", NULL), NBL_OK);
  ck_assert_int_eq(live_nodes(g, "BatchNormalization"), 0);
  ck_assert_int_eq(g->n_inputs, 2);
  ck_assert_str_eq(g->values[g->inputs[0]].name, "x");
  ck_assert_str_eq(g->values[g->inputs[1]].name, "x2");
  ck_assert_int_eq(m->ir_version, 4);
  ck_assert(!(g->values[W].flags & NBL_VAL_INPUT));
  ck_assert_int_eq(run(m, "constant-initializers", NULL), NBL_OK);
  ck_assert_int_eq(g->n_inputs, 2);
  nbl_model_free(m);
}
END_TEST

START_TEST(test_fold_batchnorm_guards) {
  /* the conv output feeds a second user: folding would change that user's input */
  nbl_model *m = new_model();
  nbl_graph *g = m->graph;
  int64_t wd[] = {1, 1, 1, 1}, cd[] = {1};
  float one[] = {1.0f};
  nbl_id x = val(g, "x", NBL_DT_FLOAT, 0, NULL), c = nbl_graph_add_value(g, "c"),
         y = nbl_graph_add_value(g, "y"), z = nbl_graph_add_value(g, "z");
  nbl_id W = init(g, "W", 4, wd, one);
  nbl_id s = init(g, "s", 1, cd, one), b = init(g, "b", 1, cd, one), mu = init(g, "mu", 1, cd, one),
         vv = init(g, "var", 1, cd, one);
  nbl_graph_add_input(g, x);
  nbl_id cin[] = {x, W};
  nbl_graph_add_node(g, "Conv", "", "conv", 2, cin, 1, &c);
  nbl_id bin[] = {c, s, b, mu, vv};
  nbl_graph_add_node(g, "BatchNormalization", "", "bn", 5, bin, 1, &y);
  nbl_graph_add_node(g, "Relu", "", "other", 1, &c, 1, &z);
  nbl_graph_add_output(g, y);
  nbl_graph_add_output(g, z);
  ck_assert_int_eq(run(m, "fold-batchnorm", NULL), NBL_OK);
  ck_assert_int_eq(live_nodes(g, "BatchNormalization"), 1);
  nbl_model_free(m);
}
END_TEST

START_TEST(test_fuse_bias) {
  nbl_model *m = new_model();
  nbl_graph *g = m->graph;
  int64_t ad[] = {2, 3}, wd[] = {3, 4}, bd[] = {4}, yd[] = {2, 4};
  float w[12] = {0}, b[4] = {1, 2, 3, 4};
  nbl_id a = val(g, "a", NBL_DT_FLOAT, 2, ad), t = val(g, "t", NBL_DT_FLOAT, 2, yd),
         y = val(g, "y", NBL_DT_FLOAT, 2, yd);
  nbl_id W = init(g, "W", 2, wd, w), B = init(g, "B", 1, bd, b);
  nbl_graph_add_input(g, a);
  nbl_id min[] = {a, W};
  nbl_graph_add_node(g, "MatMul", "", "mm", 2, min, 1, &t);
  nbl_id ain[] = {B, t}; /* bias first: Add is commutative */
  nbl_graph_add_node(g, "Add", "", "add", 2, ain, 1, &y);
  nbl_graph_add_output(g, y);
  ck_assert_int_eq(run(m, "fuse-bias", NULL), NBL_OK);
  ck_assert_int_eq(g->n_nodes, 1);
  const nbl_node *n = &g->nodes[0];
  ck_assert_str_eq(n->op_type, "Gemm");
  ck_assert_int_eq(n->n_inputs, 3);
  ck_assert_str_eq(g->values[n->inputs[0]].name, "a");
  ck_assert_str_eq(g->values[n->inputs[1]].name, "W");
  ck_assert_str_eq(g->values[n->inputs[2]].name, "B");
  ck_assert_str_eq(g->values[n->outputs[0]].name, "y");
  ck_assert_int_eq(nbl_graph_find(g, "t"), NBL_NONE);
  nbl_model_free(m);
}
END_TEST

START_TEST(test_fuse_bias_rank3_untouched) {
  nbl_model *m = new_model();
  nbl_graph *g = m->graph;
  int64_t ad[] = {5, 2, 3}, wd[] = {3, 4}, bd[] = {4};
  float w[12] = {0}, b[4] = {0};
  nbl_id a = val(g, "a", NBL_DT_FLOAT, 3, ad), t = nbl_graph_add_value(g, "t"),
         y = nbl_graph_add_value(g, "y");
  nbl_id W = init(g, "W", 2, wd, w), B = init(g, "B", 1, bd, b);
  nbl_graph_add_input(g, a);
  nbl_id min[] = {a, W};
  nbl_graph_add_node(g, "MatMul", "", "mm", 2, min, 1, &t);
  nbl_id ain[] = {t, B};
  nbl_graph_add_node(g, "Add", "", "add", 2, ain, 1, &y);
  nbl_graph_add_output(g, y);
  ck_assert_int_eq(run(m, "fuse-bias", NULL), NBL_OK);
  ck_assert_int_eq(live_nodes(g, "MatMul"), 1);
  ck_assert_int_eq(live_nodes(g, "Gemm"), 0);
  nbl_model_free(m);
}
END_TEST


/* Constant -> Add(A, c) -> Mul(x, .): the Add and the Constant fold, Mul stays. */
static nbl_model *fold_model(void) {
  nbl_model *m = new_model();
  nbl_graph *g = m->graph;
  int64_t d[] = {3};
  float a[] = {1.0f, 2.0f, 3.0f}, cv[] = {0.5f, -1.0f, 10.0f};
  nbl_id x = val(g, "x", NBL_DT_FLOAT, 1, d), y = val(g, "y", NBL_DT_FLOAT, 1, d);
  nbl_id A = init(g, "A", 1, d, a), c = nbl_graph_add_value(g, "c"), s = nbl_graph_add_value(g, "s");
  nbl_graph_add_input(g, x);
  nbl_id cn = nbl_graph_add_node(g, "Constant", "", "const", 0, NULL, 1, &c);
  nbl_node_set_attr_tensor(g, cn, "value", nbl_tensor_new(m->arena, "", NBL_DT_FLOAT, 1, d, cv));
  nbl_id ain[] = {A, c};
  nbl_graph_add_node(g, "Add", "", "add", 2, ain, 1, &s);
  nbl_id min[] = {x, s};
  nbl_graph_add_node(g, "Mul", "", "mul", 2, min, 1, &y);
  nbl_graph_add_output(g, y);
  return m;
}

START_TEST(test_fold_constants) {
  nbl_model *m = fold_model();
  nbl_graph *g = m->graph;
  ck_assert_int_eq(run(m, "fold-constants", NULL), NBL_OK);
  ck_assert_int_eq(live_nodes(g, NULL), 1);
  ck_assert_str_eq(g->nodes[0].op_type, "Mul");
  nbl_id s = nbl_graph_find(g, "s");
  ck_assert_int_ne(s, NBL_NONE);
  const nbl_tensor *t = g->values[s].init;
  ck_assert_ptr_nonnull(t);
  ck_assert_int_eq(t->dtype, NBL_DT_FLOAT);
  ck_assert_int_eq(t->rank, 1);
  ck_assert_int_eq(t->dims[0], 3);
  const float *f = t->data;
  ck_assert(f[0] == 1.5f && f[1] == 1.0f && f[2] == 13.0f);
  ck_assert_int_eq(nbl_graph_find(g, "A"), NBL_NONE); /* no longer used */
  ck_assert_int_eq(nbl_graph_find(g, "c"), NBL_NONE);
  nbl_model_free(m);
  /* size limit: nothing above 4 bytes is folded */
  m = fold_model();
  ck_assert_int_eq(run(m, "fold-constants{max-bytes=4}", NULL), NBL_OK);
  ck_assert_int_eq(live_nodes(m->graph, NULL), 3);
  nbl_model_free(m);
}
END_TEST

/* This test's own pass: it breaks the IR on purpose (the first node reads a
 * value that nothing defines), so that --verify-each has something to catch. */
static nbl_status break_run(nbl_pass_ctx *ctx) {
  nbl_graph *g = ctx->model->graph;
  if (g->n_nodes == 0) return NBL_OK;
  nbl_id v = nbl_graph_add_value(g, nbl_graph_unique_name(g, "undefined_by_test_pass"));
  if (v == NBL_NONE) return NBL_ERR_OUT_OF_MEMORY;
  nbl_node_set_input(g, 0, 0, v);
  ctx->changed = 1;
  return NBL_OK;
}

static const nbl_pass_def break_ir = {
    .name = "test-break-ir",
    .description = "make the first node read an undefined value",
    .run = break_run,
};

START_TEST(test_register_pass) {
  /* unknown until registered; then listed, found, and refused a second name */
  nbl_pipeline *p = NULL;
  ck_assert_int_eq(nbl_pipeline_parse("test-break-ir", &p), NBL_ERR_INVALID_ARGUMENT);
  int n = nbl_pass_count();
  ck_assert_int_eq(nbl_pass_register(&break_ir), NBL_OK);
  ck_assert_int_eq(nbl_pass_register(&break_ir), NBL_OK); /* the same def again: no-op */
  ck_assert_int_eq(nbl_pass_count(), n + 1);
  ck_assert_ptr_eq(nbl_pass_at(n), &break_ir);
  ck_assert_ptr_eq(nbl_pass_find("test-break-ir"), &break_ir);
  ck_assert_int_eq(nbl_pipeline_parse("dce,test-break-ir", &p), NBL_OK);
  nbl_pipeline_free(p);
  nbl_pass_def twin = break_ir;
  ck_assert_int_eq(nbl_pass_register(&twin), NBL_ERR_INVALID_ARGUMENT);
  ck_assert_str_eq(nbl_last_error(), "nbl_pass_register: a pass named 'test-break-ir' exists");
  nbl_pass_def dce_twin = break_ir;
  dce_twin.name = "dce";
  ck_assert_int_eq(nbl_pass_register(&dce_twin), NBL_ERR_INVALID_ARGUMENT);
  nbl_pass_def no_run = {.name = "no-run"};
  ck_assert_int_eq(nbl_pass_register(&no_run), NBL_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(nbl_pass_count(), n + 1);
}
END_TEST

START_TEST(test_verify_each_names_pass) {
  ck_assert_int_eq(nbl_pass_register(&break_ir), NBL_OK);
  nbl_model *m = fold_model();
  nbl_pipeline *p;
  ck_assert_int_eq(nbl_pipeline_parse("dce,test-break-ir,dce", &p), NBL_OK);
  FILE *devnull = fopen("/dev/null", "w");
  nbl_pipeline_options o = {.verify_each = 1, .out = devnull, .log = devnull};
  ck_assert_int_eq(nbl_pipeline_run(p, m, &o), NBL_ERR_INVALID_MODEL);
  ck_assert_str_eq(nbl_last_error(),
                   "the IR is invalid after pass 'test-break-ir' (2/3): <model>: graph 'main': "
                   "node 'const' (Constant): input 'undefined_by_test_pass' is not defined");
  fclose(devnull);
  nbl_pipeline_free(p);
  nbl_model_free(m);
}
END_TEST

Suite *passes_suite(void) {
  Suite *s = suite_create("passes");
  TCase *tc = tcase_create("standard");
  tcase_add_test(tc, test_parse_errors);
  tcase_add_test(tc, test_dce);
  tcase_add_test(tc, test_eliminate_identity);
  tcase_add_test(tc, test_fold_batchnorm);
  tcase_add_test(tc, test_constant_initializers);
  tcase_add_test(tc, test_fold_batchnorm_guards);
  tcase_add_test(tc, test_fuse_bias);
  tcase_add_test(tc, test_fuse_bias_rank3_untouched);
  tcase_add_test(tc, test_fold_constants);
  tcase_add_test(tc, test_register_pass);
  tcase_add_test(tc, test_verify_each_names_pass);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(passes_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
