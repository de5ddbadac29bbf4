/* test_convert_opset.c - convert-opset (passes/convert_opset.c) and the op
 * table's adapters: hand-built models in an old form, run by the runtime
 * before and after conversion (saved and loaded again), must give the same
 * outputs; the converted node has its new form; downgrades where exact come
 * back; what no adapter covers is refused with a message naming the node.
 * The experimental ops ONNX removed in opset 10 (Affine, ImageScaler, Crop,
 * ..., MeanVarianceNormalization-1) become standard ops. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ir/ir.h"
#include "nibble.h"

/* ------------------------------------------------------------------ a small model builder */

#define MAXIO 16

typedef struct tm {
  nbl_model *m;
  int n_in;
  nbl_host_tensor in[MAXIO];
} tm;

static tm *tm_new(int opset) {
  tm *t = calloc(1, sizeof *t);
  t->m = nbl_model_new();
  nbl_model_set_opset(t->m, "", opset);
  return t;
}

static void tm_free(tm *t) {
  nbl_model_free(t->m);
  free(t);
}

static nbl_graph *G(tm *t) { return t->m->graph; }

/* A graph input fed with data at run time; declared with its shape unless
 * shapeless (then only the element type is declared). */
static nbl_id tm_input_x(tm *t, const char *name, nbl_dtype dt, int rank, const int64_t *dims,
                         const void *data, int shapeless) {
  nbl_id v = nbl_graph_add_value(G(t), name);
  nbl_type_set_tensor(t->m->arena, &G(t)->values[v].type, dt, rank, dims);
  if (shapeless) G(t)->values[v].type.rank = -1;
  nbl_graph_add_input(G(t), v);
  nbl_host_tensor *h = &t->in[t->n_in++];
  memset(h, 0, sizeof *h);
  h->name = G(t)->values[v].name;
  h->dtype = dt;
  h->rank = rank;
  for (int i = 0; i < rank; i++) h->dims[i] = dims[i];
  h->data = (void *)data;
  h->nbytes = nbl_dtype_nbytes(dt, nbl_shape_numel(rank, dims));
  return v;
}

static nbl_id tm_input(tm *t, const char *name, nbl_dtype dt, int rank, const int64_t *dims,
                       const void *data) {
  return tm_input_x(t, name, dt, rank, dims, data, 0);
}

static nbl_id tm_init(tm *t, const char *name, nbl_dtype dt, int rank, const int64_t *dims,
                      const void *data) {
  nbl_id v = nbl_graph_add_value(G(t), name);
  nbl_tensor *tn = nbl_tensor_new(t->m->arena, name, dt, rank, dims, data);
  nbl_type_set_tensor(t->m->arena, &G(t)->values[v].type, dt, rank, dims);
  nbl_graph_set_initializer(G(t), v, tn);
  return v;
}

static nbl_id tm_val(tm *t, const char *name) { return nbl_graph_add_value(G(t), name); }

static nbl_id tm_out(tm *t, const char *name) {
  nbl_id v = nbl_graph_add_value(G(t), name);
  nbl_graph_add_output(G(t), v);
  return v;
}

/* Node `op` named "n<k>" in graph g. */
static nbl_id tm_node(nbl_graph *g, const char *op, const char *name, int n_in, const nbl_id *in,
                      int n_out, const nbl_id *out) {
  nbl_id n = nbl_graph_add_node(g, op, "", name, n_in, in, n_out, out);
  ck_assert_int_ne(n, NBL_NONE);
  return n;
}

/* ------------------------------------------------------------------ running and converting */

typedef struct outs {
  int n;
  nbl_host_tensor t[MAXIO];
} outs;

static void outs_free(outs *o) {
  for (int i = 0; i < o->n; i++) free(o->t[i].data);
  o->n = 0;
}

static nbl_status run(const nbl_model *m, tm *t, outs *o) {
  nbl_session *s = NULL;
  nbl_session_options opt = {.threads = 1, .reference = 1};
  nbl_status st = nbl_session_create(m, &opt, &s);
  const nbl_host_tensor *res = NULL;
  if (!st) st = nbl_session_run(s, t->n_in, t->in, &res);
  o->n = 0;
  ck_assert_int_le(m->graph->n_outputs, MAXIO);
  for (int i = 0; !st && i < m->graph->n_outputs; i++) {
    o->t[i] = res[i];
    o->t[i].data = malloc(res[i].nbytes ? res[i].nbytes : 1);
    memcpy(o->t[i].data, res[i].data, res[i].nbytes);
    o->n++;
  }
  nbl_session_free(s);
  return st;
}

/* Run the pass pipeline `spec` on m (verifying after each pass, log discarded). */
static nbl_status pipeline(nbl_model *m, const char *spec) {
  nbl_pipeline *p = NULL;
  nbl_status st = nbl_pipeline_parse(spec, &p);
  FILE *devnull = fopen("/dev/null", "w");
  nbl_pipeline_options opt = {.verify_each = 1, .log = devnull};
  if (!st) st = nbl_pipeline_run(p, m, &opt);
  fclose(devnull);
  nbl_pipeline_free(p);
  return st;
}

static nbl_status convert(nbl_model *m, int target) {
  char spec[64];
  snprintf(spec, sizeof spec, "convert-opset{target=%d}", target);
  return pipeline(m, spec);
}

/* The model saved and loaded again (what a converted file holds). */
static nbl_model *reload(const nbl_model *m) {
  void *buf = NULL;
  size_t len = 0;
  ck_assert_int_eq(nbl_model_save_buffer(m, &buf, &len), NBL_OK);
  nbl_model *r = NULL;
  nbl_status st = nbl_model_load_buffer(buf, len, "converted", NULL, &r);
  free(buf);
  ck_assert_msg(st == NBL_OK, "reload: %s", nbl_last_error());
  return r;
}

static void expect_same(const outs *a, const outs *b, double tol) {
  ck_assert_int_eq(a->n, b->n);
  for (int i = 0; i < a->n; i++) {
    const nbl_host_tensor *x = &a->t[i], *y = &b->t[i];
    ck_assert_int_eq(x->dtype, y->dtype);
    ck_assert_int_eq(x->rank, y->rank);
    for (int d = 0; d < x->rank; d++) ck_assert_int_eq(x->dims[d], y->dims[d]);
    ck_assert_uint_eq(x->nbytes, y->nbytes);
    if (x->dtype == NBL_DT_FLOAT && tol > 0) {
      const float *p = x->data, *q = y->data;
      for (size_t k = 0; k < x->nbytes / 4; k++)
        ck_assert_msg((isnan(p[k]) && isnan(q[k])) || fabs(p[k] - q[k]) <= tol,
                      "output %d[%zu]: %g vs %g", i, k, p[k], q[k]);
    } else {
      ck_assert_msg(!memcmp(x->data, y->data, x->nbytes), "output %d differs", i);
    }
  }
}

/* Run t's model, convert it to `target` (the model in t becomes the
 * converted one), save and reload it, run again: the same outputs (within
 * tol for float outputs, NaN where NaN; 0: bit-identical). Returns the outputs. */
static void check_convert(tm *t, int target, double tol, outs *before) {
  nbl_status st = run(t->m, t, before);
  ck_assert_msg(st == NBL_OK, "before: %s", nbl_last_error());
  st = convert(t->m, target);
  ck_assert_msg(st == NBL_OK, "convert: %s", nbl_last_error());
  ck_assert_int_eq(nbl_model_opset(t->m, ""), target);
  nbl_model *r = reload(t->m);
  outs after;
  st = run(r, t, &after);
  ck_assert_msg(st == NBL_OK, "after: %s", nbl_last_error());
  expect_same(before, &after, tol);
  outs_free(&after);
  nbl_model_free(r);
}

static void check_convert_same(tm *t, int target, double tol) {
  outs o;
  check_convert(t, target, tol, &o);
  outs_free(&o);
}

/* The only live node of op type `op` in g. */
static const nbl_node *find_op(const nbl_graph *g, const char *op) {
  const nbl_node *f = NULL;
  for (int i = 0; i < g->n_nodes; i++)
    if (!g->nodes[i].dead && !strcmp(g->nodes[i].op_type, op)) {
      ck_assert_msg(!f, "more than one %s", op);
      f = &g->nodes[i];
    }
  ck_assert_msg(f != NULL, "no %s node", op);
  return f;
}

static int count_op(const nbl_graph *g, const char *op) {
  int k = 0;
  for (int i = 0; i < g->n_nodes; i++) k += !g->nodes[i].dead && !strcmp(g->nodes[i].op_type, op);
  return k;
}

/* Constant data of input i of node n (an initializer of g). */
static const nbl_tensor *const_in(const nbl_graph *g, const nbl_node *n, int i) {
  ck_assert_int_lt(i, n->n_inputs);
  ck_assert_int_ne(n->inputs[i], NBL_NONE);
  const nbl_tensor *c = g->values[n->inputs[i]].init;
  ck_assert_ptr_nonnull(c);
  return c;
}

static void expect_refused(nbl_model *m, int target, const char *what) {
  int64_t before = nbl_model_opset(m, "");
  nbl_status st = convert(m, target);
  ck_assert_int_ne(st, NBL_OK);
  ck_assert_msg(strstr(nbl_last_error(), what), "message '%s' lacks '%s'", nbl_last_error(), what);
  (void)before;
}

static float seqf(int i) { return (float)((i * 37) % 23) - 11.0f + 0.25f * (float)(i % 4); }

static float *fill(float *a, int n) {
  for (int i = 0; i < n; i++) a[i] = seqf(i);
  return a;
}

/* ------------------------------------------------------------------ Slice, Pad, Clip, TopK */

START_TEST(test_slice9) {
  tm *t = tm_new(9);
  float x[60];
  int64_t d[] = {3, 4, 5};
  nbl_id in = tm_input(t, "x", NBL_DT_FLOAT, 3, d, fill(x, 60)), y = tm_out(t, "y");
  nbl_id n = tm_node(G(t), "Slice", "n", 1, &in, 1, &y);
  int64_t st[] = {1, -4}, en[] = {3, 100}, ax[] = {0, 2};
  nbl_node_set_attr_ints(G(t), n, "starts", 2, st);
  nbl_node_set_attr_ints(G(t), n, "ends", 2, en);
  nbl_node_set_attr_ints(G(t), n, "axes", 2, ax);
  outs o;
  check_convert(t, 21, 0, &o);
  ck_assert_int_eq(o.t[0].dims[0], 2);
  ck_assert_int_eq(o.t[0].dims[2], 4);
  outs_free(&o);
  const nbl_node *s = find_op(G(t), "Slice");
  ck_assert_int_eq(s->n_inputs, 4);
  ck_assert_ptr_null(nbl_node_attr(s, "starts"));
  ck_assert_int_eq(nbl_tensor_get_i64(const_in(G(t), s, 2), 1), 100);
  ck_assert_int_eq(nbl_tensor_get_i64(const_in(G(t), s, 3), 1), 2);
  /* and back: the exact downgrade to 9 restores the attributes */
  check_convert_same(t, 9, 0);
  s = find_op(G(t), "Slice");
  ck_assert_int_eq(s->n_inputs, 1);
  int cnt = 0;
  ck_assert_int_eq(nbl_attr_ints(s, "ends", &cnt)[0], 3);
  ck_assert_int_eq(cnt, 2);
  ck_assert_int_eq(G(t)->n_initializers, 0); /* the moved constants went with their inputs */
  tm_free(t);
}
END_TEST

START_TEST(test_slice_steps_no_downgrade) {
  tm *t = tm_new(13);
  float x[10];
  int64_t d[] = {10}, one = 1;
  int64_t s0 = 0, e0 = 10, st2 = 2;
  nbl_id in[5] = {tm_input(t, "x", NBL_DT_FLOAT, 1, d, fill(x, 10)),
                  tm_init(t, "s", NBL_DT_INT64, 1, &one, &s0), tm_init(t, "e", NBL_DT_INT64, 1, &one, &e0),
                  NBL_NONE, tm_init(t, "st", NBL_DT_INT64, 1, &one, &st2)};
  nbl_id y = tm_out(t, "y");
  tm_node(G(t), "Slice", "n", 5, in, 1, &y);
  expect_refused(t->m, 9, "node 'n' (Slice, opset 13 -> 9): steps other than 1");
  tm_free(t);
}
END_TEST

START_TEST(test_pad2) {
  const char *modes[] = {"constant", "reflect", "edge"};
  for (int k = 0; k < 3; k++) {
    tm *t = tm_new(7);
    float x[12];
    int64_t d[] = {3, 4};
    nbl_id in = tm_input(t, "x", NBL_DT_FLOAT, 2, d, fill(x, 12)), y = tm_out(t, "y");
    nbl_id n = tm_node(G(t), "Pad", "n", 1, &in, 1, &y);
    int64_t pads[] = {1, 2, 2, 1};
    nbl_node_set_attr_ints(G(t), n, "pads", 4, pads);
    nbl_node_set_attr_string(G(t), n, "mode", modes[k]);
    if (k == 0) nbl_node_set_attr_float(G(t), n, "value", 1.5f);
    outs o;
    check_convert(t, 21, 0, &o);
    ck_assert_int_eq(o.t[0].dims[0], 6);
    if (k == 0) ck_assert_float_eq(((float *)o.t[0].data)[0], 1.5f);
    outs_free(&o);
    const nbl_node *p = find_op(G(t), "Pad");
    ck_assert_int_eq(p->n_inputs, k == 0 ? 3 : 2);
    if (k == 0) ck_assert_int_eq(G(t)->values[p->inputs[2]].init->dtype, NBL_DT_FLOAT);
    check_convert_same(t, 10, 0);
    ck_assert_int_eq(find_op(G(t), "Pad")->n_inputs, 1);
    tm_free(t);
  }
}
END_TEST

/* Pad's value becomes an input of the data's type: double data, double value */
START_TEST(test_pad2_double_value) {
  tm *t = tm_new(9);
  double x[6] = {1, 2, 3, 4, 5, 6};
  int64_t d[] = {6};
  nbl_id in = tm_input(t, "x", NBL_DT_DOUBLE, 1, d, x), y = tm_out(t, "y");
  nbl_id n = tm_node(G(t), "Pad", "n", 1, &in, 1, &y);
  int64_t pads[] = {2, 1};
  nbl_node_set_attr_ints(G(t), n, "pads", 2, pads);
  nbl_node_set_attr_float(G(t), n, "value", -0.5f);
  check_convert_same(t, 18, 0);
  const nbl_node *p = find_op(G(t), "Pad");
  ck_assert_int_eq(G(t)->values[p->inputs[2]].init->dtype, NBL_DT_DOUBLE);
  tm_free(t);
}
END_TEST

START_TEST(test_clip6) {
  for (int k = 0; k < 3; k++) {
    tm *t = tm_new(6);
    float x[20];
    int64_t d[] = {20};
    nbl_id in = tm_input(t, "x", NBL_DT_FLOAT, 1, d, fill(x, 20)), y = tm_out(t, "y");
    nbl_id n = tm_node(G(t), "Clip", "n", 1, &in, 1, &y);
    if (k != 1) nbl_node_set_attr_float(G(t), n, "min", -2.5f);
    if (k != 2) nbl_node_set_attr_float(G(t), n, "max", 3.0f);
    check_convert_same(t, 21, 0);
    const nbl_node *c = find_op(G(t), "Clip");
    ck_assert_int_eq(c->n_inputs, k == 2 ? 2 : 3);
    ck_assert(k == 1 ? c->inputs[1] == NBL_NONE : c->inputs[1] != NBL_NONE);
    check_convert_same(t, 10, 0);
    ck_assert_int_eq(find_op(G(t), "Clip")->n_inputs, 1);
    tm_free(t);
  }
}
END_TEST

START_TEST(test_topk1) {
  tm *t = tm_new(7);
  float x[24];
  int64_t d[] = {4, 6};
  nbl_id in = tm_input(t, "x", NBL_DT_FLOAT, 2, d, fill(x, 24));
  nbl_id ys[2] = {tm_out(t, "values"), tm_out(t, "indices")};
  nbl_id n = tm_node(G(t), "TopK", "n", 1, &in, 2, ys);
  nbl_node_set_attr_int(G(t), n, "k", 3);
  check_convert_same(t, 21, 0);
  const nbl_node *k = find_op(G(t), "TopK");
  ck_assert_int_eq(nbl_tensor_get_i64(const_in(G(t), k, 1), 0), 3);
  check_convert_same(t, 9, 0);
  ck_assert_int_eq(nbl_attr_int(find_op(G(t), "TopK"), "k", 0), 3);
  tm_free(t);
}
END_TEST

/* ------------------------------------------------------------------ Split, Squeeze, Reduce */

START_TEST(test_split) {
  /* opset 2..12 with the split attribute; opset 11 equal parts (num_outputs at 18) */
  for (int k = 0; k < 2; k++) {
    tm *t = tm_new(k ? 11 : 7);
    float x[36];
    int64_t d[] = {2, 6, 3};
    nbl_id in = tm_input(t, "x", NBL_DT_FLOAT, 3, d, fill(x, 36));
    nbl_id ys[3] = {tm_out(t, "a"), tm_out(t, "b"), tm_out(t, "c")};
    nbl_id n = tm_node(G(t), "Split", "n", 1, &in, 3, ys);
    nbl_node_set_attr_int(G(t), n, "axis", 1);
    int64_t sp[] = {1, 3, 2};
    if (!k) nbl_node_set_attr_ints(G(t), n, "split", 3, sp);
    check_convert_same(t, 21, 0);
    const nbl_node *s = find_op(G(t), "Split");
    if (!k) ck_assert_int_eq(nbl_tensor_get_i64(const_in(G(t), s, 1), 1), 3);
    else ck_assert_int_eq(nbl_attr_int(s, "num_outputs", 0), 3);
    check_convert_same(t, 12, 0);
    s = find_op(G(t), "Split");
    ck_assert_int_eq(s->n_inputs, 1);
    ck_assert_ptr_null(nbl_node_attr(s, "num_outputs"));
    tm_free(t);
  }
}
END_TEST

START_TEST(test_squeeze_unsqueeze) {
  tm *t = tm_new(9);
  float x[6];
  int64_t d[] = {1, 6, 1};
  nbl_id in = tm_input(t, "x", NBL_DT_FLOAT, 3, d, fill(x, 6)), mid = tm_val(t, "m"),
         y = tm_out(t, "y");
  nbl_id a = tm_node(G(t), "Squeeze", "sq", 1, &in, 1, &mid);
  nbl_id b = tm_node(G(t), "Unsqueeze", "unsq", 1, &mid, 1, &y);
  int64_t ax1[] = {0, 2}, ax2[] = {0, 2, 3};
  nbl_node_set_attr_ints(G(t), a, "axes", 2, ax1);
  nbl_node_set_attr_ints(G(t), b, "axes", 3, ax2);
  outs o;
  check_convert(t, 13, 0, &o);
  ck_assert_int_eq(o.t[0].rank, 4);
  outs_free(&o);
  ck_assert_int_eq(find_op(G(t), "Squeeze")->n_inputs, 2);
  ck_assert_int_eq(find_op(G(t), "Unsqueeze")->n_inputs, 2);
  check_convert_same(t, 12, 0);
  ck_assert_int_eq(find_op(G(t), "Unsqueeze")->n_inputs, 1);
  tm_free(t);
}
END_TEST

START_TEST(test_reduce) {
  static const char *ops[] = {"ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin",
                              "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSumExp",
                              "ReduceSumSquare"};
  for (size_t k = 0; k < sizeof ops / sizeof ops[0]; k++)
    for (int variant = 0; variant < 2; variant++) {
      tm *t = tm_new(11);
      float x[24];
      int64_t d[] = {2, 3, 4};
      for (int i = 0; i < 24; i++) x[i] = 0.1f * (float)(i % 7) + 0.05f;
      nbl_id in = tm_input(t, "x", NBL_DT_FLOAT, 3, d, x), y = tm_out(t, "y");
      nbl_id n = tm_node(G(t), ops[k], "n", 1, &in, 1, &y);
      int64_t axes[] = {-1, 0};
      if (!variant) nbl_node_set_attr_ints(G(t), n, "axes", 2, axes);
      nbl_node_set_attr_int(G(t), n, "keepdims", variant);
      check_convert_same(t, 21, 0);
      const nbl_node *r = find_op(G(t), ops[k]);
      ck_assert_int_eq(r->n_inputs, variant ? 1 : 2); /* no axes: all of them, no input */
      check_convert_same(t, 11, 0);
      tm_free(t);
    }
}
END_TEST

START_TEST(test_reduce_noop_no_downgrade) {
  tm *t = tm_new(18);
  float x[4] = {1, 2, 3, 4};
  int64_t d[] = {4};
  nbl_id in = tm_input(t, "x", NBL_DT_FLOAT, 1, d, x), y = tm_out(t, "y");
  nbl_id n = tm_node(G(t), "ReduceMean", "mean", 1, &in, 1, &y);
  nbl_node_set_attr_int(G(t), n, "noop_with_empty_axes", 1);
  expect_refused(t->m, 17, "node 'mean' (ReduceMean, opset 18 -> 17): noop_with_empty_axes=1");
  tm_free(t);
}
END_TEST

/* ------------------------------------------------------------------ softmax family */

/* Softmax, LogSoftmax, Hardmax of opset 9 on x [2,3,4,5] at every axis (the
 * old 2-D coercion), and on a shapeless x: the same outputs at 13+. */
START_TEST(test_softmax_axes) {
  static const char *ops[] = {"Softmax", "LogSoftmax", "Hardmax"};
  for (int k = 0; k < 3; k++)
    for (int axis = -1; axis <= 4; axis++)
      for (int shapeless = 0; shapeless < 2; shapeless++) {
        tm *t = tm_new(axis < 0 ? 11 : 9);
        float x[120];
        int64_t d[] = {2, 3, 4, 5};
        for (int i = 0; i < 120; i++) x[i] = seqf(i) * 0.3f + (i % 5 == 0 ? 4.0f : 0.0f);
        nbl_id in = tm_input_x(t, "x", NBL_DT_FLOAT, 4, d, x, shapeless), y = tm_out(t, "y");
        nbl_id n = tm_node(G(t), ops[k], "sm", 1, &in, 1, &y);
        if (axis != 4) nbl_node_set_attr_int(G(t), n, "axis", axis == -1 ? -1 : axis);
        /* axis 4 stands for the default (1) */
        check_convert_same(t, 13 + 8 * shapeless, k == 2 ? 0 : 1e-6);
        int last = axis == -1 || (axis == 3 && !shapeless);
        ck_assert_int_eq(count_op(G(t), "Flatten"), !last);
        ck_assert_int_eq(count_op(G(t), "Reshape"), !last);
        tm_free(t);
      }
}
END_TEST

START_TEST(test_softmax_down) {
  tm *t = tm_new(13);
  float x[12];
  int64_t d[] = {3, 4};
  nbl_id in = tm_input(t, "x", NBL_DT_FLOAT, 2, d, fill(x, 12)), y = tm_out(t, "y");
  tm_node(G(t), "Softmax", "sm", 1, &in, 1, &y); /* default axis -1: the last one */
  check_convert_same(t, 10, 1e-7);
  ck_assert_int_eq(nbl_attr_int(find_op(G(t), "Softmax"), "axis", 0), 1);
  tm_free(t);
  t = tm_new(13);
  in = tm_input(t, "x", NBL_DT_FLOAT, 2, d, x), y = tm_out(t, "y");
  nbl_id n = tm_node(G(t), "Softmax", "sm", 1, &in, 1, &y);
  nbl_node_set_attr_int(G(t), n, "axis", 0);
  expect_refused(t->m, 12, "node 'sm' (Softmax, opset 13 -> 12): axis 0 is not known to be the last");
  tm_free(t);
}
END_TEST

/* ------------------------------------------------------------------ normalization, Dropout */

START_TEST(test_batchnorm) {
  /* opset 6 (is_test=1, consumed_inputs), 7 (spatial=1), 9 with the
   * training outputs present but unused: all inference, kept at 21 with Y
   * alone; the outputs against y = scale (x - mean) / sqrt(var + eps) + b */
  for (int from = 6; from <= 9; from++) {
    if (from == 8) continue;
    tm *t = tm_new(from);
    float x[24], sc[3] = {1.5f, 0.5f, 2}, b[3] = {0, 1, -1}, mu[3] = {0.5f, -1, 2},
                 var[3] = {1, 4, 0.25f}, eps = from == 6 ? 1e-3f : 1e-5f;
    int64_t d[] = {2, 3, 2, 2}, c = 3;
    nbl_id in[5] = {tm_input(t, "x", NBL_DT_FLOAT, 4, d, fill(x, 24)),
                    tm_init(t, "scale", NBL_DT_FLOAT, 1, &c, sc), tm_init(t, "b", NBL_DT_FLOAT, 1, &c, b),
                    tm_init(t, "mean", NBL_DT_FLOAT, 1, &c, mu), tm_init(t, "var", NBL_DT_FLOAT, 1, &c, var)};
    nbl_id ys[3] = {tm_out(t, "y"), tm_val(t, "m_out"), tm_val(t, "v_out")};
    nbl_id n = tm_node(G(t), "BatchNormalization", "bn", 5, in, from == 9 ? 3 : 1, ys);
    int64_t consumed[] = {0, 0, 0, 1, 1};
    if (from == 6) {
      nbl_node_set_attr_int(G(t), n, "is_test", 1);
      nbl_node_set_attr_ints(G(t), n, "consumed_inputs", 5, consumed);
      nbl_node_set_attr_float(G(t), n, "epsilon", eps);
    }
    if (from == 7) nbl_node_set_attr_int(G(t), n, "spatial", 1);
    if (from != 9) {
      check_convert_same(t, 21, 0); /* the runtime runs opsets 6, 7 as they are */
    } else { /* it refuses the training outputs before 14 even unused: convert only */
      ck_assert_msg(convert(t->m, 21) == NBL_OK, "%s", nbl_last_error());
    }
    const nbl_node *bn = find_op(G(t), "BatchNormalization");
    ck_assert_int_eq(bn->n_outputs, 1);
    ck_assert_ptr_null(nbl_node_attr(bn, "is_test"));
    ck_assert_ptr_null(nbl_node_attr(bn, "spatial"));
    ck_assert_ptr_null(nbl_node_attr(bn, "consumed_inputs"));
    outs o;
    ck_assert_msg(run(t->m, t, &o) == NBL_OK, "%s", nbl_last_error());
    for (int k = 0; k < 24; k++) {
      int ch = (k / 4) % 3;
      double want = sc[ch] * (x[k] - mu[ch]) / sqrt(var[ch] + eps) + b[ch];
      ck_assert_msg(fabs(((float *)o.t[0].data)[k] - want) < 1e-5, "y[%d]", k);
    }
    outs_free(&o);
    tm_free(t);
  }
}
END_TEST

START_TEST(test_batchnorm_refused) {
  /* spatial=0 (opset 7), is_test=0 (the opset-6 default: training), a used
   * mean output (opset 9: training) */
  static const int from[] = {7, 6, 9};
  static const char *why[] = {"node 'bn' (BatchNormalization, opset 7 -> 9): spatial=0",
                              "node 'bn' (BatchNormalization, opset 6 -> 7): is_test=0",
                              "node 'bn' (BatchNormalization, opset 9 -> 14): output 1 is used"};
  for (int k = 0; k < 3; k++) {
    tm *t = tm_new(from[k]);
    int64_t d[] = {1, 1}, c = 1;
    float one = 1;
    nbl_id in[5] = {tm_input(t, "x", NBL_DT_FLOAT, 2, d, &one),
                    tm_init(t, "s", NBL_DT_FLOAT, 1, &c, &one), tm_init(t, "b", NBL_DT_FLOAT, 1, &c, &one),
                    tm_init(t, "m", NBL_DT_FLOAT, 1, &c, &one), tm_init(t, "v", NBL_DT_FLOAT, 1, &c, &one)};
    nbl_id ys[2] = {tm_out(t, "y"), k == 2 ? tm_out(t, "mean_out") : NBL_NONE};
    nbl_id n = tm_node(G(t), "BatchNormalization", "bn", 5, in, k == 2 ? 2 : 1, ys);
    if (k == 0) nbl_node_set_attr_int(G(t), n, "spatial", 0);
    expect_refused(t->m, 21, why[k]);
    tm_free(t);
  }
}
END_TEST

/* Dropout 7 (mask of X's type, used), 10 (ratio attribute) -> 12+ */
START_TEST(test_dropout) {
  for (int from = 7; from <= 10; from += 3) {
    tm *t = tm_new(from);
    float x[8];
    int64_t d[] = {2, 4};
    nbl_id in = tm_input(t, "x", NBL_DT_FLOAT, 2, d, fill(x, 8));
    nbl_id ys[2] = {tm_out(t, "y"), tm_out(t, "mask")};
    nbl_id n = tm_node(G(t), "Dropout", "drop", 1, &in, 2, ys);
    nbl_node_set_attr_float(G(t), n, "ratio", 0.25f);
    outs o;
    check_convert(t, 21, 0, &o);
    ck_assert_int_eq(o.t[1].dtype, from == 7 ? NBL_DT_FLOAT : NBL_DT_BOOL);
    outs_free(&o);
    const nbl_node *dr = find_op(G(t), "Dropout");
    ck_assert_float_eq(nbl_tensor_get_f64(const_in(G(t), dr, 1), 0), 0.25);
    ck_assert_int_eq(count_op(G(t), "Cast"), from == 7);
    check_convert_same(t, from, 0);
    ck_assert_float_eq(nbl_attr_float(find_op(G(t), "Dropout"), "ratio", 0), 0.25f);
    tm_free(t);
  }
}
END_TEST

/* ------------------------------------------------------------------ resizing */

/* Upsample 7 (scales attribute) and 9 (scales input) -> Resize. */
START_TEST(test_upsample) {
  const char *modes[] = {"nearest", "linear"};
  for (int from = 7; from <= 9; from += 2)
    for (int m = 0; m < 2; m++) {
      tm *t = tm_new(from);
      float x[12], sc[4] = {1, 1, 2, 3};
      int64_t d[] = {1, 1, 3, 4}, four = 4;
      nbl_id in[2] = {tm_input(t, "x", NBL_DT_FLOAT, 4, d, fill(x, 12)), NBL_NONE};
      if (from == 9) in[1] = tm_init(t, "scales", NBL_DT_FLOAT, 1, &four, sc);
      nbl_id y = tm_out(t, "y");
      nbl_id n = tm_node(G(t), "Upsample", "up", from == 9 ? 2 : 1, in, 1, &y);
      if (from == 7) nbl_node_set_attr_floats(G(t), n, "scales", 4, sc);
      nbl_node_set_attr_string(G(t), n, "mode", modes[m]);
      outs o;
      check_convert(t, 21, 1e-6, &o);
      ck_assert_int_eq(o.t[0].dims[3], 12);
      outs_free(&o);
      const nbl_node *r = find_op(G(t), "Resize");
      ck_assert_str_eq(nbl_attr_string(r, "coordinate_transformation_mode", ""), "asymmetric");
      ck_assert_int_eq(count_op(G(t), "Upsample"), 0);
      tm_free(t);
    }
}
END_TEST

/* Resize 10: nearest rounds down when upsampling, up when downsampling. */
START_TEST(test_resize10) {
  float ups[4] = {1, 1, 2, 1.5f}, downs[4] = {1, 1, 0.5f, 0.6f}, mixed[4] = {1, 1, 2, 0.5f};
  const float *cases[3] = {ups, downs, mixed};
  for (int k = 0; k < 3; k++)
    for (int linear = 0; linear < 2; linear++) {
      tm *t = tm_new(10);
      float x[30];
      int64_t d[] = {1, 1, 5, 6}, four = 4;
      nbl_id in[2] = {tm_input(t, "x", NBL_DT_FLOAT, 4, d, fill(x, 30)),
                      tm_init(t, "scales", NBL_DT_FLOAT, 1, &four, cases[k])};
      nbl_id y = tm_out(t, "y");
      nbl_id n = tm_node(G(t), "Resize", "rs", 2, in, 1, &y);
      if (linear) nbl_node_set_attr_string(G(t), n, "mode", "linear");
      if (k == 2 && !linear) {
        expect_refused(t->m, 21, "node 'rs' (Resize, opset 10 -> 11): nearest mode with scales");
        tm_free(t);
        continue;
      }
      check_convert_same(t, 21, 1e-6);
      const nbl_node *r = find_op(G(t), "Resize");
      ck_assert_int_eq(r->n_inputs, 3);
      ck_assert_int_eq(r->inputs[1], NBL_NONE); /* the empty roi went at 13 */
      if (!linear)
        ck_assert_str_eq(nbl_attr_string(r, "nearest_mode", ""), k == 0 ? "floor" : "ceil");
      check_convert_same(t, 10, 1e-6); /* and back */
      ck_assert_int_eq(find_op(G(t), "Resize")->n_inputs, 2);
      tm_free(t);
    }
}
END_TEST

/* Resize 11 tf_half_pixel_for_nn (gone at 13) with floor / round_prefer_floor */
START_TEST(test_resize11_tf_half_pixel) {
  const char *modes[] = {"floor", "round_prefer_floor", "round_prefer_ceil"};
  float scales[3][4] = {{1, 1, 0.6f, 0.8f}, {1, 1, 1.7f, 2.5f}, {1, 1, 0.5f, 3}};
  for (int m = 0; m < 3; m++)
    for (int s = 0; s < 3; s++) {
      tm *t = tm_new(11);
      float x[30];
      int64_t d[] = {1, 1, 5, 6}, four = 4, zero = 0;
      nbl_id in[3] = {tm_input(t, "x", NBL_DT_FLOAT, 4, d, fill(x, 30)),
                      tm_init(t, "roi", NBL_DT_FLOAT, 1, &zero, NULL),
                      tm_init(t, "scales", NBL_DT_FLOAT, 1, &four, scales[s])};
      nbl_id y = tm_out(t, "y");
      nbl_id n = tm_node(G(t), "Resize", "rs", 3, in, 1, &y);
      nbl_node_set_attr_string(G(t), n, "coordinate_transformation_mode", "tf_half_pixel_for_nn");
      nbl_node_set_attr_string(G(t), n, "nearest_mode", modes[m]);
      if (m == 2) {
        expect_refused(t->m, 13, "tf_half_pixel_for_nn with nearest_mode 'round_prefer_ceil'");
        tm_free(t);
        continue;
      }
      check_convert_same(t, 13, 0);
      const nbl_node *r = find_op(G(t), "Resize");
      ck_assert_str_eq(nbl_attr_string(r, "coordinate_transformation_mode", ""), "half_pixel");
      ck_assert_str_eq(nbl_attr_string(r, "nearest_mode", ""), m ? "ceil" : "round_prefer_ceil");
      tm_free(t);
    }
}
END_TEST

/* ------------------------------------------------------------------ indexing, broadcasting */

START_TEST(test_scatter9) {
  tm *t = tm_new(9);
  float x[12], u[4] = {100, 200, 300, 400};
  int64_t idx[4] = {2, 0, 1, 3}, d[] = {3, 4}, du[] = {1, 4};
  nbl_id in[3] = {tm_input(t, "x", NBL_DT_FLOAT, 2, d, fill(x, 12)),
                  tm_input(t, "i", NBL_DT_INT64, 2, du, idx), tm_input(t, "u", NBL_DT_FLOAT, 2, du, u)};
  nbl_id y = tm_out(t, "y");
  nbl_id n = tm_node(G(t), "Scatter", "sc", 3, in, 1, &y);
  nbl_node_set_attr_int(G(t), n, "axis", 1);
  check_convert_same(t, 21, 0);
  ck_assert_int_eq(count_op(G(t), "Scatter"), 0);
  ck_assert_int_eq(nbl_attr_int(find_op(G(t), "ScatterElements"), "axis", 0), 1);
  tm_free(t);
}
END_TEST

/* The binary ops before opset 7: broadcast=1 with an axis (B aligned with A
 * from axis on), without one (suffix), and no broadcast. */
START_TEST(test_legacy_broadcast) {
  static const char *ops[] = {"Add", "Sub", "Mul", "Div", "Pow"};
  int64_t da[] = {2, 3, 4, 5};
  int64_t dbs[3][2] = {{3, 4}, {4, 5}, {0, 0}};
  for (size_t k = 0; k < sizeof ops / sizeof ops[0]; k++)
    for (int c = 0; c < 3; c++) {
      tm *t = tm_new(6);
      float a[120], b[120];
      for (int i = 0; i < 120; i++) a[i] = 0.5f + (float)(i % 9) * 0.25f, b[i] = 1 + (float)(i % 5);
      nbl_id in[2] = {tm_input(t, "a", NBL_DT_FLOAT, 4, da, a),
                      c < 2 ? tm_input(t, "b", NBL_DT_FLOAT, 2, dbs[c], b)
                            : tm_input(t, "b", NBL_DT_FLOAT, 4, da, b)};
      nbl_id y = tm_out(t, "y");
      nbl_id n = tm_node(G(t), ops[k], "op", 2, in, 1, &y);
      if (c < 2) nbl_node_set_attr_int(G(t), n, "broadcast", 1);
      if (c == 0) nbl_node_set_attr_int(G(t), n, "axis", 1);
      check_convert_same(t, 21, 0);
      ck_assert_int_eq(count_op(G(t), "Unsqueeze"), c == 0);
      ck_assert_ptr_null(nbl_node_attr(find_op(G(t), ops[k]), "broadcast"));
      tm_free(t);
    }
}
END_TEST

/* Two legacy-broadcast ops in a row: y = (x + b) * c, b and c lined up with x
 * at axis 1. The Mul's A has no declared type: the converter takes its rank
 * from the shape rules. Hand-computed values, the same after conversion. */
static const float chain_b[2] = {1, 2}, chain_c[2] = {2, -0.5f};
static tm *legacy_chain(int opset, int shapeless) {
  static float x[24];
  for (int i = 0; i < 24; i++) x[i] = (float)i;
  tm *t = tm_new(opset);
  int64_t dx[] = {2, 2, 2, 3}, dc = 2;
  nbl_id xi = tm_input_x(t, "x", NBL_DT_FLOAT, 4, dx, x, shapeless);
  nbl_id bi = tm_init(t, "b", NBL_DT_FLOAT, 1, &dc, chain_b),
         ci = tm_init(t, "c", NBL_DT_FLOAT, 1, &dc, chain_c);
  nbl_id a = tm_val(t, "a"), y = tm_out(t, "y");
  nbl_id n[2] = {tm_node(G(t), "Add", "add", 2, (nbl_id[]){xi, bi}, 1, &a),
                 tm_node(G(t), "Mul", "mul", 2, (nbl_id[]){a, ci}, 1, &y)};
  for (int k = 0; k < 2; k++) {
    nbl_node_set_attr_int(G(t), n[k], "broadcast", 1);
    nbl_node_set_attr_int(G(t), n[k], "axis", 1);
  }
  return t;
}

static void expect_chain_values(const outs *o) {
  ck_assert_int_eq(o->n, 1);
  ck_assert_int_eq(o->t[0].rank, 4);
  ck_assert_uint_eq(o->t[0].nbytes, 24 * sizeof(float));
  const float *y = o->t[0].data;
  for (int i = 0; i < 24; i++) /* x[n, ch, h, w] = i: ch = i / 6 % 2 */
    ck_assert_msg(y[i] == (i + chain_b[i / 6 % 2]) * chain_c[i / 6 % 2], "y[%d] = %g", i, y[i]);
}

START_TEST(test_legacy_broadcast_chain) {
  for (int opset = 6; opset >= 4; opset -= 2) {
    tm *t = legacy_chain(opset, 0);
    if (opset == 4) /* the default pipeline (infer-shapes) first */
      ck_assert_msg(pipeline(t->m, "default") == NBL_OK, "%s", nbl_last_error());
    outs before;
    check_convert(t, 13, 0, &before);
    expect_chain_values(&before);
    ck_assert_int_eq(count_op(G(t), "Unsqueeze"), 2);
    ck_assert_ptr_null(nbl_node_attr(find_op(G(t), "Mul"), "axis"));
    outs_free(&before);
    tm_free(t);
  }
}
END_TEST

/* x of unknown rank: the model runs, but convert-opset cannot line b up. */
START_TEST(test_legacy_broadcast_unknown_rank) {
  tm *t = legacy_chain(6, 1);
  outs o;
  ck_assert_msg(run(t->m, t, &o) == NBL_OK, "%s", nbl_last_error());
  expect_chain_values(&o);
  outs_free(&o);
  expect_refused(t->m, 13, "node 'add' (Add, opset 6 -> 7): input 1 aligned at axis 1 needs the "
                           "rank of input 0 'x', which is not known");
  tm_free(t);
}
END_TEST

/* PRelu before 7: a 1-D slope of the channel count is per channel. */
START_TEST(test_prelu6) {
  tm *t = tm_new(6);
  float x[24], s[3] = {0.1f, 0.2f, 0.3f};
  int64_t d[] = {2, 3, 4}, c = 3;
  nbl_id in[2] = {tm_input(t, "x", NBL_DT_FLOAT, 3, d, fill(x, 24)),
                  tm_init(t, "slope", NBL_DT_FLOAT, 1, &c, s)};
  nbl_id y = tm_out(t, "y");
  tm_node(G(t), "PRelu", "pr", 2, in, 1, &y);
  check_convert_same(t, 21, 0);
  ck_assert_int_eq(count_op(G(t), "Unsqueeze"), 1);
  tm_free(t);
}
END_TEST

START_TEST(test_gemm6) {
  tm *t = tm_new(6);
  float a[6], b[12], cc[4] = {1, 2, 3, 4};
  int64_t da[] = {2, 3}, db[] = {3, 4}, dc[] = {4};
  nbl_id in[3] = {tm_input(t, "a", NBL_DT_FLOAT, 2, da, fill(a, 6)),
                  tm_init(t, "b", NBL_DT_FLOAT, 2, db, fill(b, 12)),
                  tm_init(t, "c", NBL_DT_FLOAT, 1, dc, cc)};
  nbl_id y = tm_out(t, "y");
  nbl_id n = tm_node(G(t), "Gemm", "gemm", 3, in, 1, &y);
  nbl_node_set_attr_int(G(t), n, "broadcast", 1);
  nbl_node_set_attr_float(G(t), n, "beta", 0.5f);
  check_convert_same(t, 21, 0);
  ck_assert_ptr_null(nbl_node_attr(find_op(G(t), "Gemm"), "broadcast"));
  tm_free(t);
}
END_TEST

/* Ops whose meaning did not change since the model's opset (types only, or
 * new attributes with neutral defaults) are kept as they are. */
START_TEST(test_stable_ops_kept) {
  tm *t = tm_new(8);
  float a[12], b[4];
  int64_t da[] = {3, 4}, db[] = {4};
  nbl_id ia = tm_input(t, "a", NBL_DT_FLOAT, 2, da, fill(a, 12));
  nbl_id ib = tm_input(t, "b", NBL_DT_FLOAT, 1, db, fill(b, 4));
  static const char *ops[] = {"Max", "Min", "Sum", "Mean", "Pow", "Equal", "Greater", "Less"};
  nbl_id ab[2] = {ia, ib};
  for (int k = 0; k < 8; k++) {
    char name[16];
    snprintf(name, sizeof name, "y%d", k);
    nbl_id y = tm_out(t, name);
    tm_node(G(t), ops[k], name, 2, ab, 1, &y);
  }
  nbl_id c = tm_val(t, "cast"), y = tm_out(t, "mm");
  nbl_id n = tm_node(G(t), "Cast", "cast", 1, &ia, 1, &c);
  nbl_node_set_attr_int(G(t), n, "to", NBL_DT_DOUBLE);
  nbl_id mm[2] = {c, c};
  int64_t perm[] = {1, 0};
  nbl_id tr = tm_val(t, "tr");
  nbl_node_set_attr_ints(G(t), tm_node(G(t), "Transpose", "tr", 1, &c, 1, &tr), "perm", 2, perm);
  mm[1] = tr;
  tm_node(G(t), "MatMul", "mm", 2, mm, 1, &y);
  int n_nodes = G(t)->n_nodes;
  check_convert_same(t, 21, 0);
  ck_assert_int_eq(G(t)->n_nodes, n_nodes);
  ck_assert_int_eq(G(t)->n_initializers, 0);
  tm_free(t);
}
END_TEST

START_TEST(test_reshape1) {
  tm *t = tm_new(1);
  float x[12];
  int64_t d[] = {3, 4}, shape[] = {2, -1, 3};
  nbl_id in = tm_input(t, "x", NBL_DT_FLOAT, 2, d, fill(x, 12)), y = tm_out(t, "y");
  nbl_id n = tm_node(G(t), "Reshape", "rs", 1, &in, 1, &y);
  nbl_node_set_attr_ints(G(t), n, "shape", 3, shape);
  check_convert_same(t, 21, 0);
  ck_assert_int_eq(find_op(G(t), "Reshape")->n_inputs, 2);
  tm_free(t);
}
END_TEST

/* ------------------------------------------------------------------ opset 16..20 changes */

START_TEST(test_roialign_gridsample_dft) {
  /* RoiAlign 10 -> 16: the old pixel shift, output_half_pixel, said explicitly */
  tm *t = tm_new(10);
  float x[32], rois[8] = {0, 0, 3, 3, 1, 0.5f, 3.5f, 2};
  int64_t bi[2] = {0, 0}, dx[] = {1, 2, 4, 4}, dr[] = {2, 4}, db[] = {2};
  nbl_id in[3] = {tm_input(t, "x", NBL_DT_FLOAT, 4, dx, fill(x, 32)),
                  tm_input(t, "rois", NBL_DT_FLOAT, 2, dr, rois), tm_input(t, "bi", NBL_DT_INT64, 1, db, bi)};
  nbl_id y = tm_out(t, "y");
  nbl_id n = tm_node(G(t), "RoiAlign", "roi", 3, in, 1, &y);
  nbl_node_set_attr_int(G(t), n, "output_height", 2);
  nbl_node_set_attr_int(G(t), n, "output_width", 2);
  check_convert_same(t, 21, 0);
  ck_assert_str_eq(nbl_attr_string(find_op(G(t), "RoiAlign"), "coordinate_transformation_mode", ""),
                   "output_half_pixel");
  check_convert_same(t, 15, 0);
  ck_assert_ptr_null(nbl_node_attr(find_op(G(t), "RoiAlign"), "coordinate_transformation_mode"));
  tm_free(t);
  /* GridSample 16 -> 20: bilinear / bicubic are linear / cubic */
  const char *modes[] = {"bilinear", "bicubic", "nearest", NULL};
  for (int m = 0; m < 4; m++) {
    t = tm_new(16);
    float g[16] = {-1, -1, 0.3f, -0.2f, 0.9f, 0.1f, 1, 1, -0.5f, 0.5f, 0, 0, 0.25f, 0.75f, -1, 1};
    int64_t dg[] = {1, 2, 4, 2}, dx1[] = {1, 2, 4, 4};
    nbl_id gin[2] = {tm_input(t, "x", NBL_DT_FLOAT, 4, dx1, fill(x, 32)),
                     tm_input(t, "grid", NBL_DT_FLOAT, 4, dg, g)};
    y = tm_out(t, "y");
    n = tm_node(G(t), "GridSample", "gs", 2, gin, 1, &y);
    if (modes[m]) nbl_node_set_attr_string(G(t), n, "mode", modes[m]);
    check_convert_same(t, 21, 0);
    const char *now = nbl_attr_string(find_op(G(t), "GridSample"), "mode", "linear");
    ck_assert_str_eq(now, m == 0 || m == 3 ? "linear" : m == 1 ? "cubic" : "nearest");
    check_convert_same(t, 16, 0);
    tm_free(t);
  }
  /* DFT 17 -> 20: axis attribute (default 1) -> input 2 */
  for (int ax = 0; ax < 2; ax++) {
    t = tm_new(17);
    float s[24];
    int64_t ds[] = {2, 3, 4, 1};
    nbl_id din = tm_input(t, "s", NBL_DT_FLOAT, 4, ds, fill(s, 24));
    y = tm_out(t, "y");
    n = tm_node(G(t), "DFT", "dft", 1, &din, 1, &y);
    if (ax) nbl_node_set_attr_int(G(t), n, "axis", 2);
    check_convert_same(t, 21, 0);
    ck_assert_int_eq(nbl_tensor_get_i64(const_in(G(t), find_op(G(t), "DFT"), 2), 0), ax ? 2 : 1);
    check_convert_same(t, 19, 0);
    tm_free(t);
  }
}
END_TEST

/* ------------------------------------------------------------------ Scan 8, subgraphs */

static nbl_graph *sum_body(nbl_model *m, nbl_graph *parent) {
  nbl_graph *b = nbl_graph_new(m, parent, "body");
  int64_t two = 2;
  nbl_id s = nbl_graph_add_value(b, "s_in"), x = nbl_graph_add_value(b, "x_in");
  nbl_type_set_tensor(m->arena, &b->values[s].type, NBL_DT_FLOAT, 1, &two);
  nbl_type_set_tensor(m->arena, &b->values[x].type, NBL_DT_FLOAT, 1, &two);
  nbl_graph_add_input(b, s);
  nbl_graph_add_input(b, x);
  nbl_id so = nbl_graph_add_value(b, "s_out"), yo = nbl_graph_add_value(b, "y_out");
  nbl_id ab[2] = {s, x};
  nbl_graph_add_node(b, "Add", "", "add", 2, ab, 1, &so);
  nbl_graph_add_node(b, "Neg", "", "neg", 1, &so, 1, &yo);
  nbl_graph_add_output(b, so);
  nbl_graph_add_output(b, yo);
  return b;
}

START_TEST(test_scan8) {
  for (int batch = 1; batch <= 2; batch++) {
    tm *t = tm_new(8);
    float init[4] = {1, 2, 3, 4}, x[12];
    int64_t di[] = {batch, 2}, dx[] = {batch, 3, 2};
    nbl_id in[3] = {NBL_NONE, tm_input(t, "init", NBL_DT_FLOAT, 2, di, init),
                    tm_input(t, "x", NBL_DT_FLOAT, 3, dx, fill(x, 12))};
    nbl_id ys[2] = {tm_out(t, "final"), tm_out(t, "seq")};
    nbl_id n = tm_node(G(t), "Scan", "scan", 3, in, 2, ys);
    nbl_node_set_attr_graph(G(t), n, "body", sum_body(t->m, G(t)));
    nbl_node_set_attr_int(G(t), n, "num_scan_inputs", 1);
    int64_t dir = 1;
    nbl_node_set_attr_ints(G(t), n, "directions", 1, &dir);
    if (batch == 2) {
      expect_refused(t->m, 21, "node 'scan' (Scan, opset 8 -> 9): the batch size of input 1 is "
                               "not known to be 1");
      tm_free(t);
      continue;
    }
    check_convert_same(t, 21, 0);
    const nbl_node *s = find_op(G(t), "Scan");
    ck_assert_int_eq(s->n_inputs, 2);
    ck_assert_int_eq(nbl_attr_ints(s, "scan_input_directions", &(int){0})[0], 1);
    ck_assert_int_eq(count_op(G(t), "Squeeze"), 2);
    ck_assert_int_eq(count_op(G(t), "Unsqueeze"), 2);
    tm_free(t);
  }
}
END_TEST

/* If inside If at opset 9: the inner branches hold Slice-9 and Squeeze-1
 * nodes (and use values of both enclosing graphs); all are converted. */
START_TEST(test_nested_subgraphs) {
  tm *t = tm_new(9);
  float x[12];
  int64_t d[] = {1, 12}, one = 1;
  uint8_t c1 = 1, c2 = 0;
  tm_input(t, "x", NBL_DT_FLOAT, 2, d, fill(x, 12));
  nbl_id cond1 = tm_input(t, "c1", NBL_DT_BOOL, 1, &one, &c1);
  nbl_id cond2 = tm_input(t, "c2", NBL_DT_BOOL, 1, &one, &c2);
  nbl_id y = tm_out(t, "y");
  nbl_model *m = t->m;
  /* the outer If's then-branch: an inner If on c2 */
  nbl_graph *outer_then = nbl_graph_new(m, G(t), "outer_then");
  nbl_graph *outer_else = nbl_graph_new(m, G(t), "outer_else");
  nbl_graph *inner_then = nbl_graph_new(m, outer_then, "inner_then");
  nbl_graph *inner_else = nbl_graph_new(m, outer_then, "inner_else");
  /* outer_then: sq = Squeeze(x, axes=[0]) (opset-1 form); r = If(c2) */
  nbl_id ox = nbl_graph_add_value(outer_then, "x"), oc = nbl_graph_add_value(outer_then, "c2");
  outer_then->values[ox].flags |= NBL_VAL_OUTER;
  outer_then->values[oc].flags |= NBL_VAL_OUTER;
  nbl_id sq = nbl_graph_add_value(outer_then, "sq"), r = nbl_graph_add_value(outer_then, "r");
  int64_t ax0 = 0;
  nbl_node_set_attr_ints(outer_then, tm_node(outer_then, "Squeeze", "sq", 1, &ox, 1, &sq), "axes", 1,
                         &ax0);
  nbl_id inner_if = tm_node(outer_then, "If", "inner_if", 1, &oc, 1, &r);
  nbl_graph_add_output(outer_then, r);
  /* inner branches: Slice-9 of sq (captured from outer_then) and Softmax-9 of x */
  nbl_id isq = nbl_graph_add_value(inner_then, "sq");
  inner_then->values[isq].flags |= NBL_VAL_OUTER;
  nbl_id sl = nbl_graph_add_value(inner_then, "sl");
  nbl_id sn = tm_node(inner_then, "Slice", "inner_slice", 1, &isq, 1, &sl);
  int64_t s0 = 2, e0 = 8;
  nbl_node_set_attr_ints(inner_then, sn, "starts", 1, &s0);
  nbl_node_set_attr_ints(inner_then, sn, "ends", 1, &e0);
  nbl_graph_add_output(inner_then, sl);
  nbl_id ix = nbl_graph_add_value(inner_else, "x");
  inner_else->values[ix].flags |= NBL_VAL_OUTER;
  nbl_id sm = nbl_graph_add_value(inner_else, "sm"), sm2 = nbl_graph_add_value(inner_else, "sm2");
  tm_node(inner_else, "Softmax", "inner_softmax", 1, &ix, 1, &sm);
  nbl_id six = nbl_graph_add_value(inner_else, "six");
  int64_t shape6[] = {6, 2};
  int64_t two = 2;
  nbl_id shp = nbl_graph_add_value(inner_else, "shape6");
  nbl_graph_set_initializer(inner_else, shp, nbl_tensor_new(m->arena, "shape6", NBL_DT_INT64, 1, &two, shape6));
  nbl_id rin[2] = {sm, shp};
  tm_node(inner_else, "Reshape", "r6", 2, rin, 1, &six);
  nbl_id rs = nbl_graph_add_value(inner_else, "rs");
  int64_t ax = 1;
  nbl_id rsum = tm_node(inner_else, "ReduceSum", "rsum", 1, &six, 1, &rs);
  nbl_node_set_attr_ints(inner_else, rsum, "axes", 1, &ax);
  nbl_node_set_attr_int(inner_else, rsum, "keepdims", 0);
  tm_node(inner_else, "Identity", "id", 1, &rs, 1, &sm2);
  nbl_graph_add_output(inner_else, sm2);
  nbl_node_set_attr_graph(outer_then, inner_if, "then_branch", inner_then);
  nbl_node_set_attr_graph(outer_then, inner_if, "else_branch", inner_else);
  /* outer_else: Slice-9 of x too */
  nbl_id ex = nbl_graph_add_value(outer_else, "x");
  outer_else->values[ex].flags |= NBL_VAL_OUTER;
  nbl_id esl = nbl_graph_add_value(outer_else, "esl"), e2 = nbl_graph_add_value(outer_else, "e2");
  nbl_id en = tm_node(outer_else, "Slice", "else_slice", 1, &ex, 1, &esl);
  int64_t s1 = 0, e1 = 6, a1 = 1;
  nbl_node_set_attr_ints(outer_else, en, "starts", 1, &s1);
  nbl_node_set_attr_ints(outer_else, en, "ends", 1, &e1);
  nbl_node_set_attr_ints(outer_else, en, "axes", 1, &a1);
  nbl_node_set_attr_ints(outer_else, tm_node(outer_else, "Squeeze", "esq", 1, &esl, 1, &e2), "axes", 1,
                         &ax0);
  nbl_graph_add_output(outer_else, e2);
  nbl_id outer_if = tm_node(G(t), "If", "outer_if", 1, &cond1, 1, &y);
  nbl_node_set_attr_graph(G(t), outer_if, "then_branch", outer_then);
  nbl_node_set_attr_graph(G(t), outer_if, "else_branch", outer_else);
  (void)cond2;
  /* every path: (c1, c2) = (1,0) Softmax+ReduceSum path, (1,1) inner Slice, (0,*) else Slice */
  uint8_t conds[3][2] = {{1, 0}, {1, 1}, {0, 0}};
  outs before[3];
  for (int k = 0; k < 3; k++) {
    c1 = conds[k][0], c2 = conds[k][1];
    ck_assert_msg(run(t->m, t, &before[k]) == NBL_OK, "%s", nbl_last_error());
  }
  ck_assert_msg(convert(t->m, 21) == NBL_OK, "%s", nbl_last_error());
  nbl_model *rl = reload(t->m);
  for (int k = 0; k < 3; k++) {
    c1 = conds[k][0], c2 = conds[k][1];
    outs after;
    ck_assert_msg(run(rl, t, &after) == NBL_OK, "%s", nbl_last_error());
    expect_same(&before[k], &after, 1e-6);
    outs_free(&after);
    outs_free(&before[k]);
  }
  nbl_model_free(rl);
  ck_assert_int_eq(find_op(inner_then, "Slice")->n_inputs, 3);
  ck_assert_int_eq(find_op(outer_else, "Slice")->n_inputs, 4);
  ck_assert_int_eq(find_op(outer_then, "Squeeze")->n_inputs, 2);
  ck_assert_int_eq(find_op(inner_else, "ReduceSum")->n_inputs, 2);
  tm_free(t);
}
END_TEST

/* ------------------------------------------------------------------ refusals and the driver */

/* ------------------------------------------------------------------ the ops ONNX removed */

/* A model x [2, 3, 2, 2] -> op `op` (node "n") -> y at opset `opset`. */
static tm *removed_model(int opset, const char *op, float *x, nbl_id *node) {
  tm *t = tm_new(opset);
  int64_t d[] = {2, 3, 2, 2};
  nbl_id in = tm_input(t, "x", NBL_DT_FLOAT, 4, d, fill(x, 24)), y = tm_out(t, "y");
  *node = tm_node(G(t), op, "n", 1, &in, 1, &y);
  return t;
}

/* Affine, Scale, ScaledTanh, ParametricSoftplus and ImageScaler (opsets 1-9)
 * become standard ops at opset 10, where ONNX removed them: Mul + Add; Mul; Mul, Tanh or
 * Softplus, Mul; Mul + Add with the bias as [1, C, 1, 1] (Mul alone without
 * bias). ThresholdedRelu-1 becomes ThresholdedRelu-10 with alpha written out,
 * and goes back. */
START_TEST(test_removed_elementwise) {
  static const struct {
    const char *op, *act;
    int muls, adds;
  } cases[] = {{"Affine", NULL, 1, 1}, {"ScaledTanh", "Tanh", 2, 0},
               {"ParametricSoftplus", "Softplus", 2, 0}, {"ImageScaler", NULL, 1, 1},
               {"ImageScaler", NULL, 1, 0}, {"Scale", NULL, 1, 0}};
  const float bias[3] = {1, -2, 0.25f};
  for (int target = 13; target <= 21; target += 8)
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
      float x[24];
      nbl_id n;
      tm *t = removed_model(k == 3 ? 9 : 7, cases[k].op, x, &n);
      if (k < 3) {
        nbl_node_set_attr_float(G(t), n, "alpha", 1.5f);
        nbl_node_set_attr_float(G(t), n, "beta", -0.75f);
      } else if (k < 5) {
        nbl_node_set_attr_float(G(t), n, "scale", 0.5f);
        if (k == 3) nbl_node_set_attr_floats(G(t), n, "bias", 3, bias);
      } else {
        nbl_node_set_attr_float(G(t), n, "scale", -1.75f);
      }
      check_convert_same(t, target, 1e-5);
      ck_assert_int_eq(count_op(G(t), cases[k].op), 0);
      ck_assert_int_eq(count_op(G(t), "Mul"), cases[k].muls);
      ck_assert_int_eq(count_op(G(t), "Add"), cases[k].adds);
      if (cases[k].act) ck_assert_int_eq(count_op(G(t), cases[k].act), 1);
      if (k == 3) {
        const nbl_tensor *b = const_in(G(t), find_op(G(t), "Add"), 1);
        ck_assert_int_eq(b->rank, 4);
        ck_assert_int_eq(b->dims[1], 3);
        ck_assert_int_eq(b->dims[3], 1);
        ck_assert_float_eq((float)nbl_tensor_get_f64(b, 1), -2.0f);
      }
      tm_free(t);
    }
  /* below opset 10 they stay */
  float x[24];
  nbl_id n;
  tm *t = removed_model(7, "Affine", x, &n);
  check_convert_same(t, 9, 0);
  ck_assert_int_eq(count_op(G(t), "Affine"), 1);
  tm_free(t);
  /* ThresholdedRelu 1 -> 10 (default alpha 1 said explicitly) and back */
  t = removed_model(7, "ThresholdedRelu", x, &n);
  check_convert_same(t, 13, 0);
  ck_assert_float_eq(nbl_attr_float(find_op(G(t), "ThresholdedRelu"), "alpha", 0.0f), 1.0f);
  check_convert_same(t, 9, 0);
  ck_assert_int_eq(count_op(G(t), "ThresholdedRelu"), 1);
  tm_free(t);
}
END_TEST

/* Crop and DynamicSlice become Slice-10: Crop's border (left, top, right,
 * bottom) as starts (top, left) and ends (-bottom or the end, -right) on
 * axes 2, 3, or with scale ends (top + height, left + width); DynamicSlice
 * is renamed (the same inputs). */
START_TEST(test_removed_slices) {
  for (int k = 0; k < 3; k++) {
    float x[24];
    nbl_id n;
    tm *t;
    if (k < 2) {
      t = removed_model(8, "Crop", x, &n);
      int64_t border[4] = {1, 0, 0, 1}, scale[2] = {1, 1};
      nbl_node_set_attr_ints(G(t), n, "border", 4, border);
      if (k) nbl_node_set_attr_ints(G(t), n, "scale", 2, scale);
    } else {
      t = tm_new(9);
      int64_t d[] = {2, 3, 2, 2}, two = 2, st[2] = {1, -2}, en[2] = {100, -1}, ax[2] = {1, -1};
      nbl_id in[4] = {tm_input(t, "x", NBL_DT_FLOAT, 4, d, fill(x, 24)),
                      tm_init(t, "s", NBL_DT_INT64, 1, &two, st), tm_init(t, "e", NBL_DT_INT64, 1, &two, en),
                      tm_init(t, "a", NBL_DT_INT64, 1, &two, ax)};
      nbl_id y = tm_out(t, "y");
      tm_node(G(t), "DynamicSlice", "n", 4, in, 1, &y);
    }
    outs o;
    check_convert(t, 21, 0, &o);
    ck_assert_int_eq(o.t[0].dims[1], k < 2 ? 3 : 2);
    ck_assert_int_eq(o.t[0].dims[2], k < 2 ? 1 : 2);
    ck_assert_int_eq(o.t[0].dims[3], 1);
    outs_free(&o);
    const nbl_node *s = find_op(G(t), "Slice");
    ck_assert_int_eq(s->n_inputs, 4);
    if (k < 2) {
      ck_assert_int_eq(nbl_tensor_get_i64(const_in(G(t), s, 1), 1), 1);
      ck_assert_int_eq(nbl_tensor_get_i64(const_in(G(t), s, 2), 0), k ? 1 : -1);
      ck_assert_int_eq(nbl_tensor_get_i64(const_in(G(t), s, 3), 0), 2);
    }
    ck_assert_int_eq(count_op(G(t), k < 2 ? "Crop" : "DynamicSlice"), 0);
    tm_free(t);
  }
}
END_TEST

/* MeanVarianceNormalization-1 -> the formula in standard ops (version 9 adds
 * an epsilon version 1 lacks): the same values, NaN on a constant channel
 * included, for every across_channels and normalize_variance. */
START_TEST(test_removed_mvn1) {
  for (int target = 13; target <= 21; target += 8)
    for (int k = 0; k < 4; k++) {
      float x[24];
      nbl_id n;
      tm *t = removed_model(8, "MeanVarianceNormalization", x, &n);
      for (int i = 0; i < 24; i++)
        if ((i / 4) % 3 == 1) x[i] = 0.5f; /* channel 1 constant */
      nbl_node_set_attr_int(G(t), n, "across_channels", k & 1);
      nbl_node_set_attr_int(G(t), n, "normalize_variance", k >> 1);
      outs o;
      check_convert(t, target, 1e-5, &o);
      ck_assert(isnan(((float *)o.t[0].data)[4]) == (k == 2)); /* 0 / 0 per channel */
      outs_free(&o);
      ck_assert_int_eq(count_op(G(t), "MeanVarianceNormalization"), 0);
      ck_assert_int_eq(count_op(G(t), "ReduceMean"), k >> 1 ? 2 : 1);
      ck_assert_int_eq(count_op(G(t), "Div"), k >> 1);
      tm_free(t);
    }
}
END_TEST

START_TEST(test_removed_refusals) {
  float x[24];
  nbl_id n;
  /* ScaledTanh has no default alpha or beta */
  tm *t = removed_model(7, "ScaledTanh", x, &n);
  nbl_node_set_attr_float(G(t), n, "alpha", 1.0f);
  expect_refused(t->m, 13, "node 'n' (ScaledTanh, opset 7 -> 10): attribute 'beta' is missing");
  ck_assert_int_eq(nbl_model_opset(t->m, ""), 7);
  tm_free(t);
  /* ImageScaler's bias against the known channels; Crop's window against the known size */
  t = removed_model(7, "ImageScaler", x, &n);
  nbl_node_set_attr_floats(G(t), n, "bias", 2, (float[]){1, 2});
  expect_refused(t->m, 21, "node 'n' (ImageScaler, opset 7 -> 10): attribute 'bias' has 2 values "
                           "for 3 channels");
  tm_free(t);
  t = removed_model(7, "Crop", x, &n);
  nbl_node_set_attr_ints(G(t), n, "border", 4, (int64_t[]){0, 2, 0, 1});
  expect_refused(t->m, 21, "node 'n' (Crop, opset 7 -> 10): top and bottom borders 2 + 1 exceed");
  tm_free(t);
  /* version 9 of MeanVarianceNormalization (with its epsilon) has no form before 9 */
  t = removed_model(9, "MeanVarianceNormalization", x, &n);
  expect_refused(t->m, 8, "node 'n' (MeanVarianceNormalization, opset 9): no exact downgrade to "
                          "opset 8");
  tm_free(t);
}
END_TEST

START_TEST(test_refusals) {
  /* an op the table does not know */
  tm *t = tm_new(9);
  float x[2] = {1, 2};
  int64_t d[] = {2};
  nbl_id in = tm_input(t, "x", NBL_DT_FLOAT, 1, d, x), y = tm_out(t, "y");
  tm_node(G(t), "Relu", "ok", 1, &in, 1, &y);
  nbl_id z = tm_out(t, "z");
  tm_node(G(t), "NoSuchOp", "weird", 1, &in, 1, &z);
  expect_refused(t->m, 21, "node 'weird' (NoSuchOp, opset 9): not in nibble's op table: no adapter "
                           "to opset 21");
  ck_assert_int_eq(nbl_model_opset(t->m, ""), 9); /* nothing changed */
  tm_free(t);
  /* an op older than the history nibble knows (Pad-1's paddings) */
  t = tm_new(1);
  in = tm_input(t, "x", NBL_DT_FLOAT, 1, d, x), y = tm_out(t, "y");
  int64_t pads[] = {1, 1};
  nbl_node_set_attr_ints(G(t), tm_node(G(t), "Pad", "pad1", 1, &in, 1, &y), "paddings", 2, pads);
  expect_refused(t->m, 21, "node 'pad1' (Pad, opset 1): no adapter to opset 21");
  tm_free(t);
  /* a downgrade with no exact form: Resize 13 -> 9 (no Resize before 10) */
  t = tm_new(13);
  float sc[1] = {2};
  int64_t one = 1;
  nbl_id rin[3] = {tm_input(t, "x", NBL_DT_FLOAT, 1, d, x), NBL_NONE,
                   tm_init(t, "sc", NBL_DT_FLOAT, 1, &one, sc)};
  y = tm_out(t, "y");
  tm_node(G(t), "Resize", "rs", 3, rin, 1, &y);
  expect_refused(t->m, 9, "node 'rs' (Resize, opset 10): no exact downgrade to opset 9");
  /* the target must be an opset nibble knows */
  expect_refused(t->m, 22, "target 22 is outside");
  tm_free(t);
}
END_TEST

/* Quantize (pass spec q) and run t's model, pack it (pass spec pk), which
 * needs opset 21: the model must end at 21 and, saved and reloaded, give
 * the quantized outputs. */
static void quantize_pack_same(tm *t, const char *q, const char *pk) {
  ck_assert_msg(pipeline(t->m, q) == NBL_OK, "%s", nbl_last_error());
  outs qo;
  ck_assert_msg(run(t->m, t, &qo) == NBL_OK, "%s", nbl_last_error());
  nbl_status rc = pipeline(t->m, pk);
  ck_assert_msg(rc == NBL_OK, "%s: %s", pk, nbl_last_error());
  ck_assert_int_eq(nbl_model_opset(t->m, ""), 21);
  nbl_model *r = reload(t->m);
  outs packed;
  ck_assert_msg(run(r, t, &packed) == NBL_OK, "%s", nbl_last_error());
  expect_same(&qo, &packed, 1e-5);
  outs_free(&qo);
  outs_free(&packed);
  nbl_model_free(r);
}

/* The old refusal: a Slice-9 model through quantize-int4,pack-int4 now
 * converts (pack-int4 needs opset 21) and packing keeps the outputs. */
START_TEST(test_pack_int4_slice9) {
  tm *t = tm_new(9);
  float x[16], w[32];
  int64_t dx[] = {2, 8}, dw[] = {8, 4};
  nbl_id in[2] = {tm_input(t, "x", NBL_DT_FLOAT, 2, dx, fill(x, 16)),
                  tm_init(t, "w", NBL_DT_FLOAT, 2, dw, fill(w, 32))};
  nbl_id mm = tm_val(t, "mm"), y = tm_out(t, "y");
  tm_node(G(t), "MatMul", "mm", 2, in, 1, &mm);
  nbl_id s = tm_node(G(t), "Slice", "slice", 1, &mm, 1, &y);
  int64_t st = 1, en = 3, ax = 1;
  nbl_node_set_attr_ints(G(t), s, "starts", 1, &st);
  nbl_node_set_attr_ints(G(t), s, "ends", 1, &en);
  nbl_node_set_attr_ints(G(t), s, "axes", 1, &ax);
  quantize_pack_same(t, "quantize-int4{skip-first-last=0}", "pack-int4");
  ck_assert_int_eq(find_op(G(t), "Slice")->n_inputs, 4);
  ck_assert_int_eq(count_op(G(t), "DequantizeLinear"), 1);
  tm_free(t);
}
END_TEST

/* pack-ternary on an opset-9 model: the first and last layers stay 8-bit
 * and become DequantizeLinear (opset 21), so the model is converted before
 * they are written (it used to insert them at opset 9, then fail to convert
 * a DequantizeLinear that opset 9 does not have); outputs kept. */
START_TEST(test_pack_ternary_opset9) {
  tm *t = tm_new(9);
  float x[16], w0[64], w1[64], w2[32];
  int64_t dx[] = {2, 8}, dw[] = {8, 8}, dw2[] = {8, 4};
  nbl_id in0[2] = {tm_input(t, "x", NBL_DT_FLOAT, 2, dx, fill(x, 16)),
                   tm_init(t, "w0", NBL_DT_FLOAT, 2, dw, fill(w0, 64))};
  nbl_id a = tm_val(t, "a"), b = tm_val(t, "b"), y = tm_out(t, "y");
  tm_node(G(t), "MatMul", "mm0", 2, in0, 1, &a);
  nbl_id in1[2] = {a, tm_init(t, "w1", NBL_DT_FLOAT, 2, dw, fill(w1, 64))};
  tm_node(G(t), "MatMul", "mm1", 2, in1, 1, &b);
  nbl_id in2[2] = {b, tm_init(t, "w2", NBL_DT_FLOAT, 2, dw2, fill(w2, 32))};
  tm_node(G(t), "MatMul", "mm2", 2, in2, 1, &y);
  quantize_pack_same(t, "quantize-ternary", "pack-ternary");
  ck_assert_int_eq(count_op(G(t), "DequantizeLinear"), 2);
  ck_assert_int_eq(count_op(G(t), "DequantizeTernary"), 1);
  tm_free(t);
}
END_TEST

int main(void) {
  Suite *s = suite_create("convert_opset");
  TCase *tc = tcase_create("adapters");
  tcase_add_test(tc, test_slice9);
  tcase_add_test(tc, test_slice_steps_no_downgrade);
  tcase_add_test(tc, test_pad2);
  tcase_add_test(tc, test_pad2_double_value);
  tcase_add_test(tc, test_clip6);
  tcase_add_test(tc, test_topk1);
  tcase_add_test(tc, test_split);
  tcase_add_test(tc, test_squeeze_unsqueeze);
  tcase_add_test(tc, test_reduce);
  tcase_add_test(tc, test_reduce_noop_no_downgrade);
  tcase_add_test(tc, test_softmax_axes);
  tcase_add_test(tc, test_softmax_down);
  tcase_add_test(tc, test_batchnorm);
  tcase_add_test(tc, test_batchnorm_refused);
  tcase_add_test(tc, test_dropout);
  tcase_add_test(tc, test_upsample);
  tcase_add_test(tc, test_resize10);
  tcase_add_test(tc, test_resize11_tf_half_pixel);
  tcase_add_test(tc, test_scatter9);
  tcase_add_test(tc, test_legacy_broadcast);
  tcase_add_test(tc, test_legacy_broadcast_chain);
  tcase_add_test(tc, test_legacy_broadcast_unknown_rank);
  tcase_add_test(tc, test_prelu6);
  tcase_add_test(tc, test_gemm6);
  tcase_add_test(tc, test_stable_ops_kept);
  tcase_add_test(tc, test_reshape1);
  tcase_add_test(tc, test_roialign_gridsample_dft);
  tcase_add_test(tc, test_scan8);
  tcase_add_test(tc, test_nested_subgraphs);
  tcase_add_test(tc, test_removed_elementwise);
  tcase_add_test(tc, test_removed_slices);
  tcase_add_test(tc, test_removed_mvn1);
  tcase_add_test(tc, test_removed_refusals);
  tcase_add_test(tc, test_refusals);
  tcase_add_test(tc, test_pack_int4_slice9);
  tcase_add_test(tc, test_pack_ternary_opset9);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
