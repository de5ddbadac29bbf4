/* test_infer_shapes.c - the infer-shapes pass on hand-built graphs (exact
 * dtypes and dims, hand-computed), and against the ONNX backend test data:
 * every node / pytorch-converted / pytorch-operator / simple model with its output
 * types stripped, compared with the dtype and shape of the expected outputs. */
#include <check.h>
#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ir/ir.h"
#include "nibble.h"
#include "parser/parser.h"
#include "passes/pass.h"

/* ------------------------------------------------------------------ helpers */

/* A tensor value; dims < 0 become unknown; syms[i] (may be NULL) names dim i. */
static nbl_id tval(nbl_graph *g, const char *name, nbl_dtype dt, int rank, const int64_t *dims,
                   const char *const *syms) {
  nbl_id v = nbl_graph_add_value(g, name);
  nbl_type_set_tensor(g->model->arena, &g->values[v].type, dt, rank, dims);
  for (int i = 0; i < rank; i++)
    if (syms && syms[i]) g->values[v].type.dims[i].param = nbl_arena_strdup(g->model->arena, syms[i]);
  return v;
}

/* A value with no type (what the pass fills in). */
static nbl_id uval(nbl_graph *g, const char *name) { return nbl_graph_add_value(g, name); }

static nbl_id input(nbl_graph *g, const char *name, nbl_dtype dt, int rank, const int64_t *dims,
                    const char *const *syms) {
  nbl_id v = tval(g, name, dt, rank, dims, syms);
  nbl_graph_add_input(g, v);
  return v;
}

static nbl_id i64_init(nbl_graph *g, const char *name, int rank, int n, const int64_t *data) {
  int64_t d[1] = {n};
  nbl_id v = tval(g, name, NBL_DT_INT64, rank, d, NULL);
  nbl_graph_set_initializer(g, v, nbl_tensor_new(g->model->arena, name, NBL_DT_INT64, rank, d, data));
  return v;
}

static nbl_id node1(nbl_graph *g, const char *op, const char *name, int n_in, const nbl_id *in,
                    nbl_id out) {
  return nbl_graph_add_node(g, op, "", name, n_in, in, 1, &out);
}

static nbl_model *new_model(int opset) {
  nbl_model *m = nbl_model_new();
  nbl_model_set_opset(m, "", opset);
  return m;
}

static char logbuf[4096];

static nbl_status run_pass(nbl_model *m, int *changed) {
  const nbl_pass_def *d = nbl_pass_find("infer-shapes");
  ck_assert_ptr_nonnull(d);
  FILE *log = fmemopen(logbuf, sizeof logbuf, "w");
  nbl_pass_ctx ctx = {.model = m, .pass = d, .log = log};
  nbl_status st = d->run(&ctx);
  fclose(log);
  if (changed) *changed = ctx.changed;
  return st;
}

/* "float[N,3]" form of a value's type, for exact comparisons. */
static const char *tstr(const nbl_graph *g, nbl_id v) {
  static char buf[512];
  const nbl_type *t = &g->values[v].type;
  if (t->kind != NBL_TYPE_TENSOR) return "none";
  size_t k = (size_t)snprintf(buf, sizeof buf, "%s", t->elem ? nbl_dtype_name(t->elem) : "?");
  if (t->rank < 0) {
    snprintf(buf + k, sizeof buf - k, "[?]");
    return buf;
  }
  k += (size_t)snprintf(buf + k, sizeof buf - k, "[");
  for (int i = 0; i < t->rank; i++) {
    const nbl_dim *d = &t->dims[i];
    if (d->value >= 0)
      k += (size_t)snprintf(buf + k, sizeof buf - k, "%s%lld", i ? "," : "", (long long)d->value);
    else
      k += (size_t)snprintf(buf + k, sizeof buf - k, "%s%s", i ? "," : "", d->param ? d->param : "?");
  }
  snprintf(buf + k, sizeof buf - k, "]");
  return buf;
}

#define TYPE_IS(g, v, s) ck_assert_str_eq(tstr(g, v), s)

/* ------------------------------------------------------------------ hand-built graphs */

START_TEST(test_symbolic_elementwise) {
  nbl_model *m = new_model(13);
  nbl_graph *g = m->graph;
  const char *n3[] = {"N", NULL};
  int64_t d_n3[] = {-1, 3}, d_34[] = {3, 4}, d_n14[] = {-1, 1, 4}, d_54[] = {5, 4};
  const char *n14[] = {"N", NULL, NULL};
  nbl_id x = input(g, "x", NBL_DT_FLOAT, 2, d_n3, n3);
  nbl_id w = input(g, "w", NBL_DT_FLOAT, 2, d_34, NULL);
  nbl_id a = input(g, "a", NBL_DT_FLOAT, 3, d_n14, n14);
  nbl_id b = input(g, "b", NBL_DT_FLOAT, 2, d_54, NULL);
  nbl_id r = uval(g, "r"), mm = uval(g, "mm"), s = uval(g, "s"), e = uval(g, "e"),
         sg = uval(g, "sg");
  node1(g, "Relu", "relu", 1, &x, r);
  node1(g, "MatMul", "mm", 2, (nbl_id[]){r, w}, mm);
  node1(g, "Add", "add", 2, (nbl_id[]){a, b}, s);
  node1(g, "Equal", "eq", 2, (nbl_id[]){s, b}, e);
  node1(g, "Sigmoid", "sig", 1, &mm, sg);
  nbl_graph_add_output(g, sg);
  nbl_graph_add_output(g, e);
  int changed = 0;
  ck_assert_int_eq(run_pass(m, &changed), NBL_OK);
  TYPE_IS(g, r, "float[N,3]");
  TYPE_IS(g, mm, "float[N,4]");
  TYPE_IS(g, s, "float[N,5,4]");
  TYPE_IS(g, e, "bool[N,5,4]");
  TYPE_IS(g, sg, "float[N,4]");
  ck_assert_int_eq(changed, 5);
  /* intermediates (not outputs) are listed in value_info */
  ck_assert_int_eq(g->n_value_infos, 3);
  ck_assert(g->values[r].flags & NBL_VAL_VALUE_INFO);
  ck_assert(!(g->values[sg].flags & NBL_VAL_VALUE_INFO));
  ck_assert_str_eq(logbuf, "infer-shapes: 5 values typed, 0 left unknown\n");
  nbl_model_free(m);
}
END_TEST

START_TEST(test_broadcast_error) {
  nbl_model *m = new_model(13);
  nbl_graph *g = m->graph;
  int64_t d23[] = {2, 3}, d24[] = {2, 4};
  nbl_id a = input(g, "a", NBL_DT_FLOAT, 2, d23, NULL), b = input(g, "b", NBL_DT_FLOAT, 2, d24, NULL);
  nbl_id y = uval(g, "y");
  node1(g, "Mul", "mul", 2, (nbl_id[]){a, b}, y);
  nbl_graph_add_output(g, y);
  ck_assert_int_eq(run_pass(m, NULL), NBL_ERR_INVALID_MODEL);
  ck_assert_ptr_nonnull(strstr(nbl_last_error(), "node 'mul' (Mul): shapes float[2,3] and float[2,4] do not broadcast"));
  nbl_model_free(m);
}
END_TEST

/* The binary ops before opset 7 (legacy broadcast): with broadcast=1 and an
 * axis, B's dims line up with A's from the axis on; without an axis, with A's
 * last dims; with broadcast=0, the shapes must be equal. The output has A's
 * shape. From opset 7 the same attributes mean nothing (numpy rule). */
static nbl_id legacy_node(nbl_graph *g, const char *op, const char *name, nbl_id a, nbl_id b,
                          int bc, int64_t axis, nbl_id out) {
  nbl_id n = node1(g, op, name, 2, (nbl_id[]){a, b}, out);
  if (bc) nbl_node_set_attr_int(g, n, "broadcast", 1);
  if (axis != INT64_MIN) nbl_node_set_attr_int(g, n, "axis", axis);
  return n;
}

START_TEST(test_legacy_broadcast) {
  const int64_t NO_AXIS = INT64_MIN;
  for (int opset = 1; opset <= 6; opset += 5) {
    nbl_model *m = new_model(opset);
    nbl_graph *g = m->graph;
    const char *n4[] = {"N", NULL, NULL, NULL};
    int64_t d_x[] = {-1, 4, 3, 3}, d4[] = {4}, d33[] = {3, 3}, d43[] = {4, 3}, dn[] = {-1};
    nbl_id x = input(g, "x", NBL_DT_FLOAT, 4, d_x, n4);
    nbl_id b = input(g, "b", NBL_DT_FLOAT, 1, d4, NULL);
    nbl_id s = input(g, "s", NBL_DT_FLOAT, 2, d33, NULL);
    nbl_id t = input(g, "t", NBL_DT_FLOAT, 2, d43, NULL);
    nbl_id bn = input(g, "bn", NBL_DT_FLOAT, 0, NULL, NULL); /* a scalar */
    nbl_id ub = input(g, "ub", NBL_DT_FLOAT, 1, dn, NULL);
    g->values[ub].type.rank = -1; /* rank unknown */
    nbl_id a = uval(g, "a"), y = uval(g, "y"), p = uval(g, "p"), e = uval(g, "e"),
           q = uval(g, "q"), r = uval(g, "r"), w = uval(g, "w"), u = uval(g, "u"),
           z = uval(g, "z");
    legacy_node(g, "Add", "add", x, b, 1, 1, a);      /* [4] at axis 1 */
    legacy_node(g, "Mul", "mul", a, b, 1, 1, y);      /* chained: A inferred */
    legacy_node(g, "Pow", "pow", y, t, 1, -3, p);     /* [4,3] at axis -3 */
    legacy_node(g, "Greater", "gt", p, s, 1, NO_AXIS, e); /* suffix [3,3] */
    legacy_node(g, "Sub", "sub", a, bn, 1, 4, q);     /* a scalar at the end */
    legacy_node(g, "Div", "div", q, y, 0, NO_AXIS, r); /* broadcast=0: same shapes */
    legacy_node(g, "Equal", "eq", r, ub, 1, 2, w);    /* B's rank unknown */
    node1(g, "And", "and", 2, (nbl_id[]){e, w}, u);   /* no legacy attributes: same shapes */
    legacy_node(g, "Less", "lt", x, t, 1, 1, z);      /* bool */
    nbl_graph_add_output(g, u);
    nbl_graph_add_output(g, z);
    ck_assert_msg(run_pass(m, NULL) == NBL_OK, "opset %d: %s", opset, nbl_last_error());
    TYPE_IS(g, a, "float[N,4,3,3]");
    TYPE_IS(g, y, "float[N,4,3,3]");
    TYPE_IS(g, p, "float[N,4,3,3]");
    TYPE_IS(g, e, "bool[N,4,3,3]");
    TYPE_IS(g, q, "float[N,4,3,3]");
    TYPE_IS(g, r, "float[N,4,3,3]");
    TYPE_IS(g, w, "bool[N,4,3,3]");
    TYPE_IS(g, u, "bool[N,4,3,3]");
    TYPE_IS(g, z, "bool[N,4,3,3]");
    nbl_model_free(m);
  }
  /* a dim of 1 in A under B's unknown rank: unknown; before the axis: kept */
  nbl_model *m = new_model(6);
  nbl_graph *g = m->graph;
  int64_t d_a[] = {1, 1, 5}, dn[] = {-1};
  nbl_id a = input(g, "a", NBL_DT_FLOAT, 3, d_a, NULL), ub = input(g, "ub", NBL_DT_FLOAT, 1, dn, NULL);
  g->values[ub].type.rank = -1;
  nbl_id y = uval(g, "y");
  legacy_node(g, "Add", "add", a, ub, 1, 1, y);
  nbl_graph_add_output(g, y);
  ck_assert_msg(run_pass(m, NULL) == NBL_OK, "%s", nbl_last_error());
  TYPE_IS(g, y, "float[1,?,5]");
  nbl_model_free(m);
}
END_TEST

/* What does not fit is an error naming the node and the shapes. */
START_TEST(test_legacy_broadcast_errors) {
  static const struct {
    int opset, bc;
    int64_t axis;
    int rb;
    int64_t db[2];
    const char *msg;
  } cases[] = {
      {6, 1, 1, 1, {5}, "node 'op' (Add): broadcast=1: input 'b' float[5] does not line up with "
                        "input 'x' float[1,4,3,3] from axis 1"},
      {6, 1, 3, 2, {3, 3}, "node 'op' (Add): broadcast=1: input 'b' float[3,3] does not line up "
                           "with input 'x' float[1,4,3,3] from axis 3"},
      {6, 1, -5, 1, {1}, "from axis -5"},
      {6, 1, INT64_MIN, 1, {4}, "node 'op' (Add): shapes float[1,4,3,3] and float[4] do not broadcast"},
      {6, 0, INT64_MIN, 1, {3}, "node 'op' (Add): opset 6 without broadcast=1 needs inputs of the "
                                "same shape: 'x' is float[1,4,3,3], 'b' is float[3]"},
      /* from opset 7 the legacy attributes are not read: numpy broadcasting */
      {7, 1, 1, 1, {4}, "node 'op' (Add): shapes float[1,4,3,3] and float[4] do not broadcast"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    nbl_model *m = new_model(cases[i].opset);
    nbl_graph *g = m->graph;
    int64_t dx[] = {1, 4, 3, 3};
    nbl_id x = input(g, "x", NBL_DT_FLOAT, 4, dx, NULL);
    nbl_id b = input(g, "b", NBL_DT_FLOAT, cases[i].rb, cases[i].db, NULL);
    nbl_id y = uval(g, "y");
    legacy_node(g, "Add", "op", x, b, cases[i].bc, cases[i].axis, y);
    nbl_graph_add_output(g, y);
    ck_assert_int_eq(run_pass(m, NULL), NBL_ERR_INVALID_MODEL);
    ck_assert_msg(strstr(nbl_last_error(), cases[i].msg), "case %zu: '%s' lacks '%s'", i,
                  nbl_last_error(), cases[i].msg);
    nbl_model_free(m);
  }
}
END_TEST

START_TEST(test_conv_pool) {
  nbl_model *m = new_model(13);
  nbl_graph *g = m->graph;
  int64_t dx[] = {1, 3, 32, 32}, dw[] = {8, 3, 3, 3}, dx2[] = {1, 3, 33, 33};
  int64_t dsym[] = {-1, 3, -1, 32};
  const char *nsym[] = {"N", NULL, "H", NULL};
  nbl_id x = input(g, "x", NBL_DT_FLOAT, 4, dx, NULL);
  nbl_id x2 = input(g, "x2", NBL_DT_FLOAT, 4, dx2, NULL);
  nbl_id xs = input(g, "xs", NBL_DT_FLOAT, 4, dsym, nsym);
  nbl_id w = input(g, "w", NBL_DT_FLOAT, 4, dw, NULL);
  nbl_id c1 = uval(g, "c1"), c2 = uval(g, "c2"), c3 = uval(g, "c3"), c4 = uval(g, "c4"),
         c5 = uval(g, "c5"), p1 = uval(g, "p1"), p2 = uval(g, "p2"), gp = uval(g, "gp"),
         ct = uval(g, "ct");
  nbl_id n;
  /* pads 1, stride 2: floor((32 + 2 - 3) / 2) + 1 = 16 */
  n = node1(g, "Conv", "c1", 2, (nbl_id[]){x, w}, c1);
  nbl_node_set_attr_ints(g, n, "pads", 4, (int64_t[]){1, 1, 1, 1});
  nbl_node_set_attr_ints(g, n, "strides", 2, (int64_t[]){2, 2});
  /* dilation 2, no pads: effective kernel 5: 32 - 5 + 1 = 28; asymmetric pads on W: 32+0+1-5+1 = 29 */
  n = node1(g, "Conv", "c2", 2, (nbl_id[]){x, w}, c2);
  nbl_node_set_attr_ints(g, n, "dilations", 2, (int64_t[]){2, 2});
  nbl_node_set_attr_ints(g, n, "pads", 4, (int64_t[]){0, 0, 0, 1});
  /* SAME_UPPER stride 2 on 33: ceil(33/2) = 17 */
  n = node1(g, "Conv", "c3", 2, (nbl_id[]){x2, w}, c3);
  nbl_node_set_attr_string(g, n, "auto_pad", "SAME_UPPER");
  nbl_node_set_attr_ints(g, n, "strides", 2, (int64_t[]){2, 2});
  /* VALID stride 3 on 33: floor((33 - 3) / 3) + 1 = 11 */
  n = node1(g, "Conv", "c4", 2, (nbl_id[]){x2, w}, c4);
  nbl_node_set_attr_string(g, n, "auto_pad", "VALID");
  nbl_node_set_attr_ints(g, n, "strides", 2, (int64_t[]){3, 3});
  /* symbolic N passes through, symbolic H becomes unknown, W = 30 */
  node1(g, "Conv", "c5", 2, (nbl_id[]){xs, w}, c5);
  /* MaxPool 3x3 stride 2 on 32: floor 15, ceil_mode 16 */
  n = node1(g, "MaxPool", "p1", 1, &x, p1);
  nbl_node_set_attr_ints(g, n, "kernel_shape", 2, (int64_t[]){3, 3});
  nbl_node_set_attr_ints(g, n, "strides", 2, (int64_t[]){2, 2});
  n = node1(g, "AveragePool", "p2", 1, &x, p2);
  nbl_node_set_attr_ints(g, n, "kernel_shape", 2, (int64_t[]){3, 3});
  nbl_node_set_attr_ints(g, n, "strides", 2, (int64_t[]){2, 2});
  nbl_node_set_attr_int(g, n, "ceil_mode", 1);
  node1(g, "GlobalAveragePool", "gp", 1, &xs, gp);
  /* ConvTranspose: W [3, 8, 3, 3] -> 8 channels; 2*(32-1) + 3 - 2 = 63 */
  int64_t dwt[] = {3, 8, 3, 3};
  nbl_id wt = input(g, "wt", NBL_DT_FLOAT, 4, dwt, NULL);
  n = node1(g, "ConvTranspose", "ct", 2, (nbl_id[]){x, wt}, ct);
  nbl_node_set_attr_ints(g, n, "strides", 2, (int64_t[]){2, 2});
  nbl_node_set_attr_ints(g, n, "pads", 4, (int64_t[]){1, 1, 1, 1});
  nbl_graph_add_output(g, c1);
  ck_assert_int_eq(run_pass(m, NULL), NBL_OK);
  TYPE_IS(g, c1, "float[1,8,16,16]");
  TYPE_IS(g, c2, "float[1,8,28,29]");
  TYPE_IS(g, c3, "float[1,8,17,17]");
  TYPE_IS(g, c4, "float[1,8,11,11]");
  TYPE_IS(g, c5, "float[N,8,?,30]");
  ck_assert_ptr_null(g->values[c5].type.dims[2].param);
  TYPE_IS(g, p1, "float[1,3,15,15]");
  TYPE_IS(g, p2, "float[1,3,16,16]");
  TYPE_IS(g, gp, "float[N,3,1,1]");
  TYPE_IS(g, ct, "float[1,8,63,63]");
  nbl_model_free(m);
}
END_TEST

START_TEST(test_reshape_constant) {
  nbl_model *m = new_model(14);
  nbl_graph *g = m->graph;
  int64_t d234[] = {2, 3, 4}, dn34[] = {-1, 3, 4};
  const char *nn[] = {"N", NULL, NULL};
  nbl_id x = input(g, "x", NBL_DT_FLOAT, 3, d234, NULL);
  nbl_id xs = input(g, "xs", NBL_DT_FLOAT, 3, dn34, nn);
  nbl_id s1 = i64_init(g, "s1", 1, 2, (int64_t[]){0, -1});
  nbl_id s2 = i64_init(g, "s2", 1, 3, (int64_t[]){-1, 2, 0});
  nbl_id y1 = uval(g, "y1"), y2 = uval(g, "y2"), y3 = uval(g, "y3"), y4 = uval(g, "y4");
  node1(g, "Reshape", "r1", 2, (nbl_id[]){x, s1}, y1);
  node1(g, "Reshape", "r2", 2, (nbl_id[]){xs, s1}, y2);
  nbl_id n = node1(g, "Reshape", "r3", 2, (nbl_id[]){x, s2}, y3);
  (void)n;
  /* allowzero: the 0 is a real 0, so -1 cannot be inferred (numel 24 / 0) and stays unknown */
  n = node1(g, "Reshape", "r4", 2, (nbl_id[]){x, s1}, y4);
  nbl_node_set_attr_int(g, n, "allowzero", 1);
  nbl_graph_add_output(g, y1);
  ck_assert_int_eq(run_pass(m, NULL), NBL_OK);
  TYPE_IS(g, y1, "float[2,12]");
  TYPE_IS(g, y2, "float[N,12]");
  TYPE_IS(g, y3, "float[3,2,4]"); /* 0 copies dim 2 of x (4); -1 = 24 / (2 * 4) */
  TYPE_IS(g, y4, "float[0,?]");
  nbl_model_free(m);
}
END_TEST

/* The PyTorch export pattern: Shape -> Gather -> Unsqueeze -> Concat -> Reshape. */
START_TEST(test_shape_chain) {
  nbl_model *m = new_model(13);
  nbl_graph *g = m->graph;
  int64_t dx[] = {-1, 3, 4, 4};
  const char *nx[] = {"batch", NULL, NULL, NULL};
  nbl_id x = input(g, "x", NBL_DT_FLOAT, 4, dx, nx);
  nbl_id zero = uval(g, "zero"), ax = i64_init(g, "ax", 1, 1, (int64_t[]){0});
  nbl_id minus1 = i64_init(g, "minus1", 1, 1, (int64_t[]){-1});
  nbl_id s = uval(g, "s"), b = uval(g, "b"), u = uval(g, "u"), c = uval(g, "c"), y = uval(g, "y");
  nbl_id sl = uval(g, "sl"), st = i64_init(g, "st", 1, 1, (int64_t[]){1}),
         en = i64_init(g, "en", 1, 1, (int64_t[]){3}), y2 = uval(g, "y2"), c2 = uval(g, "c2");
  nbl_id kn = nbl_graph_add_node(g, "Constant", "", "k0", 0, NULL, 1, &zero);
  int64_t zero_v = 0;
  nbl_node_set_attr_tensor(g, kn, "value", nbl_tensor_new(m->arena, "", NBL_DT_INT64, 0, NULL, &zero_v));
  node1(g, "Shape", "shape", 1, &x, s);
  node1(g, "Gather", "gather", 2, (nbl_id[]){s, zero}, b);
  node1(g, "Unsqueeze", "unsq", 2, (nbl_id[]){b, ax}, u);
  node1(g, "Concat", "cat", 2, (nbl_id[]){u, minus1}, c);
  nbl_node_set_attr_int(g, g->n_nodes - 1, "axis", 0);
  node1(g, "Reshape", "reshape", 2, (nbl_id[]){x, c}, y);
  /* Slice of the shape: [3,4], then Concat([batch], [3,4]) ... -> [batch, 3, 16]? use [b, 3, -1] */
  node1(g, "Slice", "slice", 3, (nbl_id[]){s, st, en}, sl);
  node1(g, "Concat", "cat2", 3, (nbl_id[]){u, sl, minus1}, c2);
  nbl_node_set_attr_int(g, g->n_nodes - 1, "axis", 0);
  node1(g, "Reshape", "reshape2", 2, (nbl_id[]){x, c2}, y2);
  nbl_graph_add_output(g, y);
  nbl_graph_add_output(g, y2);
  ck_assert_int_eq(run_pass(m, NULL), NBL_OK);
  TYPE_IS(g, s, "int64[4]");
  TYPE_IS(g, b, "int64[]");
  TYPE_IS(g, u, "int64[1]");
  TYPE_IS(g, c, "int64[2]");
  TYPE_IS(g, y, "float[batch,48]");
  TYPE_IS(g, sl, "int64[2]");
  TYPE_IS(g, y2, "float[batch,3,4,4]");
  nbl_model_free(m);
}
END_TEST

START_TEST(test_no_change) {
  nbl_model *m = new_model(13);
  nbl_graph *g = m->graph;
  int64_t d[] = {2, 3}, dt[] = {3, 2};
  nbl_id x = input(g, "x", NBL_DT_FLOAT, 2, d, NULL);
  nbl_id r = tval(g, "r", NBL_DT_FLOAT, 2, d, NULL), t = tval(g, "t", NBL_DT_FLOAT, 2, dt, NULL);
  nbl_graph_add_value_info(g, r);
  node1(g, "Relu", "relu", 1, &x, r);
  nbl_id n = node1(g, "Transpose", "tr", 1, &r, t);
  nbl_node_set_attr_ints(g, n, "perm", 2, (int64_t[]){1, 0});
  nbl_graph_add_output(g, t);
  int changed = -1;
  ck_assert_int_eq(run_pass(m, &changed), NBL_OK);
  ck_assert_int_eq(changed, 0);
  ck_assert_int_eq(g->n_value_infos, 1);
  TYPE_IS(g, t, "float[3,2]");
  nbl_model_free(m);
}
END_TEST

START_TEST(test_conflict) {
  nbl_model *m = new_model(13);
  nbl_graph *g = m->graph;
  int64_t d[] = {2, 3}, bad[] = {2, 5};
  nbl_id x = input(g, "x", NBL_DT_FLOAT, 2, d, NULL);
  nbl_id y = tval(g, "y", NBL_DT_FLOAT, 2, bad, NULL);
  node1(g, "Relu", "relu1", 1, &x, y);
  nbl_graph_add_output(g, y);
  ck_assert_int_eq(run_pass(m, NULL), NBL_ERR_INVALID_MODEL);
  ck_assert_ptr_nonnull(strstr(nbl_last_error(),
      "node 'relu1' (Relu): value 'y' is declared float[2,5] but inferred float[2,3]"));
  /* a declared symbolic dim is refined by an inferred number; a more specific declared one is kept */
  nbl_model *m2 = new_model(13);
  g = m2->graph;
  int64_t dq[] = {-1, -1};
  const char *nq[] = {"N", NULL};
  x = input(g, "x", NBL_DT_FLOAT, 2, (int64_t[]){-1, 3}, (const char *[]){"M", NULL});
  y = tval(g, "y", NBL_DT_FLOAT, 2, dq, nq);
  node1(g, "Relu", "relu1", 1, &x, y);
  nbl_graph_add_output(g, y);
  ck_assert_int_eq(run_pass(m2, NULL), NBL_OK);
  TYPE_IS(g, y, "float[N,3]");
  /* dtype conflict */
  nbl_model *m3 = new_model(13);
  g = m3->graph;
  x = input(g, "x", NBL_DT_FLOAT, 2, d, NULL);
  y = tval(g, "y", NBL_DT_INT32, -1, NULL, NULL);
  node1(g, "Abs", "abs", 1, &x, y);
  ck_assert_int_eq(run_pass(m3, NULL), NBL_ERR_INVALID_MODEL);
  ck_assert_ptr_nonnull(strstr(nbl_last_error(), "value 'y' is declared int32[?] but inferred float[2,3]"));
  nbl_model_free(m);
  nbl_model_free(m2);
  nbl_model_free(m3);
}
END_TEST

START_TEST(test_opset_rules_and_unknown) {
  /* Squeeze/Unsqueeze axes: attribute before opset 13 */
  nbl_model *m = new_model(11);
  nbl_graph *g = m->graph;
  int64_t d[] = {1, 3, 1, 5};
  nbl_id x = input(g, "x", NBL_DT_FLOAT, 4, d, NULL);
  nbl_id s = uval(g, "s"), sa = uval(g, "sa"), u = uval(g, "u"), f = uval(g, "f"), q = uval(g, "q");
  nbl_id n = node1(g, "Squeeze", "sq", 1, &x, s);
  nbl_node_set_attr_ints(g, n, "axes", 1, (int64_t[]){-2});
  node1(g, "Squeeze", "sq_all", 1, &x, sa);
  n = node1(g, "Unsqueeze", "unsq", 1, &sa, u);
  nbl_node_set_attr_ints(g, n, "axes", 2, (int64_t[]){0, 3});
  node1(g, "Flatten", "flat", 1, &x, f);
  nbl_id cu = nbl_graph_add_node(g, "FancyOp", "com.example", "fancy", 1, &x, 1, &q);
  (void)cu;
  /* Split into equal parts (opset 11: attribute form) */
  int64_t d6[] = {6, 4};
  nbl_id z = input(g, "z", NBL_DT_FLOAT, 2, d6, NULL);
  nbl_id o[3] = {uval(g, "o0"), uval(g, "o1"), uval(g, "o2")};
  nbl_graph_add_node(g, "Split", "", "split", 1, &z, 3, o);
  nbl_id o2[2] = {uval(g, "p0"), uval(g, "p1")};
  n = nbl_graph_add_node(g, "Split", "", "split2", 1, &z, 2, o2);
  nbl_node_set_attr_ints(g, n, "split", 2, (int64_t[]){1, 5});
  nbl_graph_add_output(g, q);
  ck_assert_int_eq(run_pass(m, NULL), NBL_OK);
  TYPE_IS(g, s, "float[1,3,5]");
  TYPE_IS(g, sa, "float[3,5]");
  TYPE_IS(g, u, "float[1,3,5,1]");
  TYPE_IS(g, f, "float[1,15]");
  TYPE_IS(g, o[1], "float[2,4]");
  TYPE_IS(g, o2[1], "float[5,4]");
  ck_assert(g->values[q].type.kind == NBL_TYPE_NONE);
  ck_assert_str_eq(logbuf, "infer-shapes: 9 values typed, 1 left unknown (ops: FancyOp)\n");
  nbl_model_free(m);

  /* opset 13: axes as an input; an axes input that is not constant gives the rank only */
  m = new_model(13);
  g = m->graph;
  x = input(g, "x", NBL_DT_FLOAT, 4, d, NULL);
  nbl_id ax = i64_init(g, "ax", 1, 1, (int64_t[]){2});
  int64_t d1[] = {2};
  nbl_id dyn = input(g, "dyn", NBL_DT_INT64, 1, d1, NULL);
  s = uval(g, "s");
  u = uval(g, "u");
  node1(g, "Squeeze", "sq", 2, (nbl_id[]){x, ax}, s);
  node1(g, "Unsqueeze", "unsq", 2, (nbl_id[]){x, dyn}, u);
  ck_assert_int_eq(run_pass(m, NULL), NBL_OK);
  TYPE_IS(g, s, "float[1,3,5]");
  TYPE_IS(g, u, "float[?,?,?,?,?,?]");
  nbl_model_free(m);
}
END_TEST

START_TEST(test_misc_ops) {
  nbl_model *m = new_model(13);
  nbl_graph *g = m->graph;
  int64_t d[] = {2, 3, 4};
  nbl_id x = input(g, "x", NBL_DT_FLOAT, 3, d, NULL);
  nbl_id r = uval(g, "r"), am = uval(g, "am"), e = uval(g, "e"), gm = uval(g, "gm"),
         nz = uval(g, "nz"), cs = uval(g, "cs"), sh = uval(g, "sh"), ex = uval(g, "ex"),
         cst = uval(g, "cst");
  nbl_id axes = i64_init(g, "axes", 1, 1, (int64_t[]){1});
  node1(g, "ReduceSum", "rs", 2, (nbl_id[]){x, axes}, r); /* keepdims 1: [2,1,4] */
  nbl_id n = node1(g, "ArgMax", "am", 1, &x, am);
  nbl_node_set_attr_int(g, n, "axis", -1);
  nbl_node_set_attr_int(g, n, "keepdims", 0);
  n = node1(g, "Einsum", "es", 2, (nbl_id[]){x, x}, e);
  nbl_node_set_attr_string(g, n, "equation", "bij,bkj->bik");
  int64_t dw[] = {4, 5};
  nbl_id w = input(g, "w", NBL_DT_FLOAT, 2, dw, NULL);
  int64_t dm[] = {5, 4};
  nbl_id a2 = input(g, "a2", NBL_DT_FLOAT, 2, dm, NULL);
  n = node1(g, "Gemm", "gemm", 2, (nbl_id[]){a2, w}, gm);
  nbl_node_set_attr_int(g, n, "transA", 1);
  nbl_node_set_attr_int(g, n, "transB", 1);
  node1(g, "NonZero", "nz", 1, &x, nz);
  n = node1(g, "Cast", "cast", 1, &x, cs);
  nbl_node_set_attr_int(g, n, "to", NBL_DT_FLOAT16);
  node1(g, "Shape", "shape", 1, &x, sh);
  nbl_id rep = i64_init(g, "rep", 1, 4, (int64_t[]){3, 1, 1, 1});
  node1(g, "Expand", "expand", 2, (nbl_id[]){x, rep}, ex);
  node1(g, "ConstantOfShape", "cos", 1, &sh, cst);
  nbl_graph_add_output(g, r);
  ck_assert_msg(run_pass(m, NULL) == NBL_OK, "%s", nbl_last_error());
  TYPE_IS(g, r, "float[2,1,4]");
  TYPE_IS(g, am, "int64[2,3]");
  TYPE_IS(g, e, "float[2,3,3]");
  TYPE_IS(g, gm, "float[4,4]");
  TYPE_IS(g, nz, "int64[3,?]");
  TYPE_IS(g, cs, "float16[2,3,4]");
  TYPE_IS(g, ex, "float[3,2,3,4]");
  TYPE_IS(g, cst, "float[2,3,4]");
  nbl_model_free(m);
}
END_TEST

START_TEST(test_if_subgraph) {
  nbl_model *m = new_model(13);
  nbl_graph *g = m->graph;
  int64_t d[] = {2, 3};
  nbl_id cond = input(g, "cond", NBL_DT_BOOL, 0, NULL, NULL);
  nbl_id x = input(g, "x", NBL_DT_FLOAT, 2, d, NULL);
  (void)x; /* used by name from both branches */
  nbl_id y = uval(g, "y");
  nbl_id n = nbl_graph_add_node(g, "If", "", "if", 1, &cond, 1, &y);
  nbl_graph *tb = nbl_graph_new(m, g, "then"), *eb = nbl_graph_new(m, g, "else");
  /* both branches use x from the enclosing graph; their outputs have no declared type */
  nbl_id tx = nbl_graph_add_value(tb, "x"), to = nbl_graph_add_value(tb, "t_out");
  tb->values[tx].flags |= NBL_VAL_OUTER;
  nbl_graph_add_node(tb, "Relu", "", "t_relu", 1, &tx, 1, &to);
  nbl_graph_add_output(tb, to);
  nbl_id ex = nbl_graph_add_value(eb, "x"), eo = nbl_graph_add_value(eb, "e_out");
  eb->values[ex].flags |= NBL_VAL_OUTER;
  nbl_graph_add_node(eb, "Neg", "", "e_neg", 1, &ex, 1, &eo);
  nbl_graph_add_output(eb, eo);
  nbl_node_set_attr_graph(g, n, "then_branch", tb);
  nbl_node_set_attr_graph(g, n, "else_branch", eb);
  nbl_graph_add_output(g, y);
  ck_assert_int_eq(run_pass(m, NULL), NBL_OK);
  TYPE_IS(tb, to, "float[2,3]");
  TYPE_IS(eb, eo, "float[2,3]");
  TYPE_IS(g, y, "float[2,3]");
  nbl_model_free(m);
}
END_TEST

/* Rules the op table gained with the move into family files, hand-computed. */
START_TEST(test_table_rules) {
  nbl_model *m = new_model(14);
  nbl_model_set_opset(m, "ai.nibble", 1);
  nbl_model_set_opset(m, "ai.onnx.preview.training", 1);
  nbl_graph *g = m->graph;
  const char *nsym[] = {"N", NULL}, *bsym[] = {"B", NULL, NULL};
  int64_t d_n3[] = {-1, 3};
  nbl_id x = input(g, "x", NBL_DT_FLOAT, 2, d_n3, nsym);
  /* QuantizeInt4: Y like X, scale float scalar, zero point int8 scalar */
  nbl_id q[3] = {uval(g, "q"), uval(g, "qs"), uval(g, "qz")};
  nbl_graph_add_node(g, "QuantizeInt4", "ai.nibble", "q4", 1, &x, 3, q);
  /* LSTM, batch first (layout 1), both directions, hidden size from W: [2, 4 * 8, 4] */
  int64_t d_x[] = {-1, 5, 4}, d_w[] = {2, 32, 4}, d_r[] = {2, 32, 8};
  nbl_id lx = input(g, "lx", NBL_DT_FLOAT, 3, d_x, bsym);
  nbl_id lw = input(g, "lw", NBL_DT_FLOAT, 3, d_w, NULL), lr = input(g, "lr", NBL_DT_FLOAT, 3, d_r, NULL);
  nbl_id ly[3] = {uval(g, "ly"), uval(g, "lyh"), uval(g, "lyc")};
  nbl_id n = nbl_graph_add_node(g, "LSTM", "", "lstm", 3, (nbl_id[]){lx, lw, lr}, 3, ly);
  nbl_node_set_attr_int(g, n, "layout", 1);
  nbl_node_set_attr_string(g, n, "direction", "bidirectional");
  /* Compress along axis 1 with a constant condition [1, 0, 1]: 2 of 3 kept */
  uint8_t cond_v[3] = {1, 0, 1};
  int64_t d3[] = {3};
  nbl_id cond = tval(g, "cond", NBL_DT_BOOL, 1, d3, NULL);
  nbl_graph_set_initializer(g, cond, nbl_tensor_new(m->arena, "cond", NBL_DT_BOOL, 1, d3, cond_v));
  nbl_id cx = uval(g, "cx");
  n = node1(g, "Compress", "compress", 2, (nbl_id[]){x, cond}, cx);
  nbl_node_set_attr_int(g, n, "axis", 1);
  /* MaxUnpool 2x2 stride 2: [1, 1, 2, 2] -> [1, 1, 4, 4] */
  int64_t d_p[] = {1, 1, 2, 2};
  nbl_id px = input(g, "px", NBL_DT_FLOAT, 4, d_p, NULL), pi = input(g, "pi", NBL_DT_INT64, 4, d_p, NULL);
  nbl_id pu = uval(g, "pu");
  n = node1(g, "MaxUnpool", "unpool", 2, (nbl_id[]){px, pi}, pu);
  nbl_node_set_attr_ints(g, n, "kernel_shape", 2, (int64_t[]){2, 2});
  nbl_node_set_attr_ints(g, n, "strides", 2, (int64_t[]){2, 2});
  /* Momentum over two tensors: outputs X1', X2', V1', V2' like X1, X2, V1, V2 */
  int64_t d22[] = {2, 2}, d5[] = {5};
  nbl_id r = input(g, "r", NBL_DT_FLOAT, 0, NULL, NULL), t = input(g, "t", NBL_DT_INT64, 0, NULL, NULL);
  nbl_id x1 = input(g, "x1", NBL_DT_FLOAT, 2, d22, NULL), x2 = input(g, "x2", NBL_DT_FLOAT, 1, d5, NULL);
  nbl_id g1 = input(g, "g1", NBL_DT_FLOAT, 2, d22, NULL), g2 = input(g, "g2", NBL_DT_FLOAT, 1, d5, NULL);
  nbl_id v1 = input(g, "v1", NBL_DT_FLOAT, 2, d22, NULL), v2 = input(g, "v2", NBL_DT_FLOAT, 1, d5, NULL);
  nbl_id mo[4] = {uval(g, "x1n"), uval(g, "x2n"), uval(g, "v1n"), uval(g, "v2n")};
  nbl_graph_add_node(g, "Momentum", "ai.onnx.preview.training", "mom", 8,
                     (nbl_id[]){r, t, x1, x2, g1, g2, v1, v2}, 4, mo);
  ck_assert_msg(run_pass(m, NULL) == NBL_OK, "%s", nbl_last_error());
  TYPE_IS(g, q[0], "float[N,3]");
  TYPE_IS(g, q[1], "float[]");
  TYPE_IS(g, q[2], "int8[]");
  TYPE_IS(g, ly[0], "float[B,5,2,8]");
  TYPE_IS(g, ly[1], "float[B,2,8]");
  TYPE_IS(g, ly[2], "float[B,2,8]");
  TYPE_IS(g, cx, "float[N,2]");
  TYPE_IS(g, pu, "float[1,1,4,4]");
  TYPE_IS(g, mo[0], "float[2,2]");
  TYPE_IS(g, mo[1], "float[5]");
  TYPE_IS(g, mo[2], "float[2,2]");
  TYPE_IS(g, mo[3], "float[5]");
  nbl_model_free(m);

  /* Dropout before opset 10: the mask has the input's type */
  m = new_model(7);
  g = m->graph;
  x = input(g, "x", NBL_DT_FLOAT, 2, d_n3, nsym);
  nbl_id dr[2] = {uval(g, "y"), uval(g, "mask")};
  nbl_graph_add_node(g, "Dropout", "", "drop", 1, &x, 2, dr);
  ck_assert_int_eq(run_pass(m, NULL), NBL_OK);
  TYPE_IS(g, dr[1], "float[N,3]");
  nbl_model_free(m);
}
END_TEST

/* Scan (opset 9): the body's inputs are typed from the node's (the scan input
 * without its scan axis), and the scan output stacks the body's along
 * scan_output_axes with the sequence length. */
START_TEST(test_scan_body) {
  nbl_model *m = new_model(11);
  nbl_graph *g = m->graph;
  int64_t d3[] = {3}, d63[] = {6, 3};
  nbl_id s0 = input(g, "s0", NBL_DT_FLOAT, 1, d3, NULL), xs = input(g, "xs", NBL_DT_FLOAT, 2, d63, NULL);
  nbl_id out[3] = {uval(g, "s_final"), uval(g, "ys"), uval(g, "ys_t")};
  nbl_id n = nbl_graph_add_node(g, "Scan", "", "scan", 2, (nbl_id[]){s0, xs}, 3, out);
  nbl_node_set_attr_int(g, n, "num_scan_inputs", 1);
  nbl_node_set_attr_ints(g, n, "scan_output_axes", 2, (int64_t[]){0, 1});
  nbl_graph *b = nbl_graph_new(m, g, "body");
  nbl_id bs = nbl_graph_add_value(b, "s"), bx = nbl_graph_add_value(b, "x");
  nbl_id bo = nbl_graph_add_value(b, "s_next"), by = nbl_graph_add_value(b, "y"), bt = nbl_graph_add_value(b, "y2");
  nbl_graph_add_input(b, bs);
  nbl_graph_add_input(b, bx);
  nbl_graph_add_node(b, "Add", "", "add", 2, (nbl_id[]){bs, bx}, 1, &bo);
  nbl_graph_add_node(b, "Identity", "", "id", 1, &bo, 1, &by);
  nbl_graph_add_node(b, "Identity", "", "id2", 1, &bo, 1, &bt);
  nbl_graph_add_output(b, bo);
  nbl_graph_add_output(b, by);
  nbl_graph_add_output(b, bt);
  nbl_node_set_attr_graph(g, n, "body", b);
  ck_assert_msg(run_pass(m, NULL) == NBL_OK, "%s", nbl_last_error());
  TYPE_IS(b, bx, "float[3]");
  TYPE_IS(b, by, "float[3]");
  TYPE_IS(g, out[0], "float[3]");
  TYPE_IS(g, out[1], "float[6,3]");
  TYPE_IS(g, out[2], "float[3,6]");
  nbl_model_free(m);
}
END_TEST

/* ------------------------------------------------------------------ ONNX test data */

static const char *const coverage_ops[] = {
    "Conv", "ConvTranspose", "Gemm", "MatMul", "MaxPool", "AveragePool", "GlobalMaxPool",
    "GlobalAveragePool", "GlobalLpPool", "LpPool", "BatchNormalization", "LayerNormalization",
    "InstanceNormalization", "LRN", "Softmax", "LogSoftmax", "Hardmax", "ArgMax", "ArgMin",
    "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Concat", "Split", "Slice", "Gather",
    "GatherElements", "GatherND", "Expand", "Tile", "Pad", "Resize", "Where", "Cast", "CastLike",
    "Shape", "Size", "ConstantOfShape", "Range", "Constant", "Identity", "Dropout", "Einsum", "TopK",
    "CumSum", "NonZero", "OneHot", "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
    "MatMulInteger", "ConvInteger", "QLinearConv", "QLinearMatMul", "DepthToSpace", "SpaceToDepth",
    "Trilu", "If", "Loop", "Add", "Sub", "Mul", "Div", "Pow", "Mod", "Max", "Min", "Sum", "Mean",
    "PRelu", "And", "Or", "Xor", "Not", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual",
    "Abs", "Neg", "Exp", "Log", "Sqrt", "Reciprocal", "Sigmoid", "Tanh", "Relu", "Floor", "Ceil",
    "Round", "Sign", "Sin", "Cos", "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh",
    "Atanh", "Erf", "Softplus", "Softsign", "Elu", "Selu", "LeakyRelu", "HardSigmoid", "HardSwish",
    "ThresholdedRelu", "Celu", "Mish", "Gelu", "Clip", "IsNaN", "IsInf", "BitShift", "ReduceSum",
    "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum",
    "ReduceLogSumExp", "ReduceSumSquare", NULL};

static int covered_model(const nbl_graph *g) {
  for (int i = 0; i < g->n_nodes; i++) {
    int ok = 0;
    for (const char *const *p = coverage_ops; *p; p++)
      if (!strcmp(*p, g->nodes[i].op_type)) ok = 1;
    if (!ok || g->nodes[i].domain[0]) return 0;
  }
  return 1;
}

typedef struct {
  int models, outputs, agree, unknown, disagree, skipped, cov_outputs, cov_agree, excepted;
} tally;

static char *exceptions; /* tests/infer/exceptions.txt, one "dir/test" first word per line */

static int is_exception(const char *name) {
  if (!exceptions) return 0;
  size_t n = strlen(name);
  for (const char *p = exceptions; p && *p;) {
    if (*p != '#' && !strncmp(p, name, n) && (p[n] == ' ' || p[n] == '\t' || p[n] == '\n'))
      return 1;
    p = strchr(p, '\n');
    if (p) p++;
  }
  return 0;
}

/* Make the small inputs of the test's data set 0 constants (initializers), so
 * the rules that read shape data (Reshape, Slice, Resize, Pad, Tile, ...) run. */
static void inputs_as_constants(nbl_model *m, const char *dir) {
  nbl_graph *g = m->graph;
  char path[4096];
  struct stat sb;
  for (int i = 0; i < g->n_inputs; i++) {
    nbl_value *v = &g->values[g->inputs[i]];
    if (v->init) continue;
    snprintf(path, sizeof path, "%s/test_data_set_0/input_%d.pb", dir, i);
    nbl_tensor *t = NULL;
    if (stat(path, &sb) != 0 || nbl_tensor_load_file(path, m->arena, &t) != NBL_OK) continue;
    if (t->dtype == NBL_DT_STRING || nbl_tensor_numel(t) > 64) {
      nbl_buffer_unref(t->buf);
      continue;
    }
    nbl_graph_set_initializer(g, g->inputs[i], t);
  }
}

static int const_inputs; /* 1: check_model turns small inputs into constants */

static void check_model(const char *root, const char *sub, const char *test, tally *t, FILE *rep) {
  char path[4096], name[512];
  snprintf(name, sizeof name, "%s/%s", sub, test);
  snprintf(path, sizeof path, "%s/%s/%s/model.onnx", root, sub, test);
  struct stat sb;
  if (stat(path, &sb) != 0) return;
  nbl_model *m = NULL;
  if (nbl_model_load(path, &m) != NBL_OK) {
    t->skipped++;
    return;
  }
  nbl_graph *g = m->graph;
  /* strip what the pass must find by itself */
  for (int i = 0; i < g->n_outputs; i++) {
    nbl_value *v = &g->values[g->outputs[i]];
    if (v->type.kind == NBL_TYPE_TENSOR) memset(&v->type, 0, sizeof v->type);
  }
  for (int i = 0; i < g->n_value_infos; i++) {
    nbl_value *v = &g->values[g->value_infos[i]];
    if (!(v->flags & (NBL_VAL_INPUT | NBL_VAL_OUTPUT))) memset(&v->type, 0, sizeof v->type);
  }
  t->models++;
  if (const_inputs) {
    snprintf(path, sizeof path, "%s/%s/%s", root, sub, test);
    inputs_as_constants(m, path);
  }
  int cov = covered_model(g);
  nbl_status st = run_pass(m, NULL);
  if (st) {
    if (is_exception(name)) {
      t->excepted++;
    } else {
      t->disagree++;
      fprintf(rep, "ERROR %s: %s\n", name, nbl_last_error());
    }
    nbl_model_free(m);
    return;
  }
  nbl_arena *a = nbl_arena_new();
  for (int i = 0; i < g->n_outputs; i++) {
    snprintf(path, sizeof path, "%s/%s/%s/test_data_set_0/output_%d.pb", root, sub, test, i);
    nbl_tensor *ref = NULL;
    if (stat(path, &sb) != 0 || nbl_tensor_load_file(path, a, &ref) != NBL_OK) {
      t->skipped++;
      continue;
    }
    t->outputs++;
    if (cov) t->cov_outputs++;
    nbl_buffer_unref(ref->buf); /* only the header (dtype, dims) is compared */
    ref->buf = NULL;
    const nbl_type *ty = &g->values[g->outputs[i]].type;
    int known = ty->kind == NBL_TYPE_TENSOR && ty->elem && ty->rank >= 0;
    for (int d = 0; known && d < ty->rank; d++)
      if (ty->dims[d].value < 0) known = 0;
    int bad = 0;
    if (ty->kind == NBL_TYPE_TENSOR) {
      if (ty->elem && ty->elem != ref->dtype) bad = 1;
      if (ty->rank >= 0 && ty->rank != ref->rank) bad = 1;
      for (int d = 0; !bad && ty->rank >= 0 && d < ty->rank; d++)
        if (ty->dims[d].value >= 0 && ty->dims[d].value != ref->dims[d]) bad = 1;
    }
    if (bad) {
      if (is_exception(name)) {
        t->excepted++;
        continue;
      }
      t->disagree++;
      char want[512];
      size_t k = (size_t)snprintf(want, sizeof want, "%s[", nbl_dtype_name(ref->dtype));
      for (int d = 0; d < ref->rank; d++)
        k += (size_t)snprintf(want + k, sizeof want - k, "%s%lld", d ? "," : "", (long long)ref->dims[d]);
      snprintf(want + k, sizeof want - k, "]");
      fprintf(rep, "DISAGREE %s output %d: inferred %s, expected %s\n", name, i,
              tstr(g, g->outputs[i]), want);
    } else if (known) {
      t->agree++;
      if (cov) t->cov_agree++;
    } else {
      t->unknown++;
      fprintf(rep, "UNKNOWN %s output %d: %s\n", name, i, tstr(g, g->outputs[i]));
    }
  }
  nbl_arena_free(a);
  nbl_model_free(m);
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

START_TEST(test_onnx_testdata) {
  const char *root = getenv("NBL_TESTDATA");
  if (!root || !*root) root = "/usr/share/libonnx-testdata/data";
  const char *src = getenv("NBL_SOURCE_ROOT");
  char path[4096];
  snprintf(path, sizeof path, "%s/tests/infer/exceptions.txt", src ? src : ".");
  FILE *ef = fopen(path, "r");
  if (ef) {
    exceptions = calloc(1, 1 << 16);
    size_t n = fread(exceptions, 1, (1 << 16) - 1, ef);
    exceptions[n] = 0;
    fclose(ef);
  }
  const char *report = getenv("NBL_INFER_REPORT");
  FILE *rep = report ? fopen(report, "w") : NULL;
  if (!rep) rep = stderr;
  const char *subs[5] = {"node", "pytorch-converted", "pytorch-operator", "simple"};
  tally all = {0};
  for (int s = 0; s < 5; s++) {
    /* the last round: node/ again, with the small inputs made constant */
    const_inputs = s == 4;
    if (s == 4) subs[s] = "node";
    snprintf(path, sizeof path, "%s/%s", root, subs[s]);
    DIR *dir = opendir(path);
    if (!dir) continue;
    char **names = NULL;
    int n = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(dir))) {
      if (de->d_name[0] == '.') continue;
      if (n == cap) {
        cap = cap ? 2 * cap : 256;
        names = realloc(names, sizeof(char *) * (size_t)cap);
      }
      names[n++] = strdup(de->d_name);
    }
    closedir(dir);
    qsort(names, (size_t)n, sizeof(char *), cmp_str);
    tally t = {0};
    for (int i = 0; i < n; i++) {
      check_model(root, subs[s], names[i], &t, rep);
      free(names[i]);
    }
    free(names);
    printf("infer-shapes vs %s%s: %d models, %d outputs: %d agree, %d unknown, %d disagree, %d excepted, "
           "%d skipped; coverage-list models: %d/%d agree\n",
           subs[s], const_inputs ? " (small inputs constant)" : "", t.models, t.outputs, t.agree, t.unknown, t.disagree, t.excepted, t.skipped,
           t.cov_agree, t.cov_outputs);
    all.models += t.models;
    all.outputs += t.outputs;
    all.agree += t.agree;
    all.unknown += t.unknown;
    all.disagree += t.disagree;
    all.cov_agree += t.cov_agree;
    all.cov_outputs += t.cov_outputs;
  }
  if (rep != stderr) fclose(rep);
  free(exceptions);
  exceptions = NULL;
  if (all.models == 0) {
    printf("infer-shapes: no ONNX test data under %s, skipped\n", root);
    return;
  }
  ck_assert_int_gt(all.agree, 0);
  ck_assert_int_eq(all.disagree, 0);
}
END_TEST

int main(void) {
  Suite *s = suite_create("infer_shapes");
  TCase *tc = tcase_create("hand");
  tcase_add_test(tc, test_symbolic_elementwise);
  tcase_add_test(tc, test_broadcast_error);
  tcase_add_test(tc, test_legacy_broadcast);
  tcase_add_test(tc, test_legacy_broadcast_errors);
  tcase_add_test(tc, test_conv_pool);
  tcase_add_test(tc, test_reshape_constant);
  tcase_add_test(tc, test_shape_chain);
  tcase_add_test(tc, test_no_change);
  tcase_add_test(tc, test_conflict);
  tcase_add_test(tc, test_opset_rules_and_unknown);
  tcase_add_test(tc, test_misc_ops);
  tcase_add_test(tc, test_if_subgraph);
  tcase_add_test(tc, test_table_rules);
  tcase_add_test(tc, test_scan_body);
  suite_add_tcase(s, tc);
  TCase *td = tcase_create("testdata");
  tcase_set_timeout(td, 600);
  tcase_add_test(td, test_onnx_testdata);
  suite_add_tcase(s, td);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
