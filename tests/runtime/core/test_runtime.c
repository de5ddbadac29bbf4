/* test_runtime.c - the runtime core on hand-built graphs: liveness and arena
 * reuse, re-planning on a shape change, thread counts, planning errors,
 * If/Loop/Scan with outer-scope captures, persistent state, sessions, .npy. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ir/ir.h"
#include "nibble.h"
#include "parser/parser.h"
#include "runtime/core/exec.h"
#include "ck_elem.h"

/* NumPy 1.x np.save() output for float32 [[1.5,-2,3.25],[0,1e-3,-7]] and int64 [1,-2,300]. */
static const unsigned char npy_f32[] = "\x93\x4e\x55\x4d\x50\x59\x01\x00\x76\x00\x7b\x27\x64\x65\x73\x63\x72\x27\x3a\x20\x27\x3c\x66\x34\x27\x2c\x20\x27\x66\x6f\x72\x74\x72\x61\x6e\x5f\x6f\x72\x64\x65\x72\x27\x3a\x20\x46\x61\x6c\x73\x65\x2c\x20\x27\x73\x68\x61\x70\x65\x27\x3a\x20\x28\x32\x2c\x20\x33\x29\x2c\x20\x7d\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x0a\x00\x00\xc0\x3f\x00\x00\x00\xc0\x00\x00\x50\x40\x00\x00\x00\x00\x6f\x12\x83\x3a\x00\x00\xe0\xc0";
static const unsigned char npy_i64[] = "\x93\x4e\x55\x4d\x50\x59\x01\x00\x76\x00\x7b\x27\x64\x65\x73\x63\x72\x27\x3a\x20\x27\x3c\x69\x38\x27\x2c\x20\x27\x66\x6f\x72\x74\x72\x61\x6e\x5f\x6f\x72\x64\x65\x72\x27\x3a\x20\x46\x61\x6c\x73\x65\x2c\x20\x27\x73\x68\x61\x70\x65\x27\x3a\x20\x28\x33\x2c\x29\x2c\x20\x7d\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x0a\x01\x00\x00\x00\x00\x00\x00\x00\xfe\xff\xff\xff\xff\xff\xff\xff\x2c\x01\x00\x00\x00\x00\x00\x00";

static nbl_id val(nbl_graph *g, const char *name, nbl_dtype dt, int rank, const int64_t *dims) {
  nbl_id v = nbl_graph_add_value(g, name);
  ck_assert_int_ne(v, NBL_NONE);
  if (dt) nbl_type_set_tensor(g->model->arena, &g->values[v].type, dt, rank, dims);
  return v;
}

static nbl_id node(nbl_graph *g, const char *op, const char *name, int n_in, const nbl_id *in,
                   int n_out, const nbl_id *out) {
  nbl_id n = nbl_graph_add_node(g, op, "", name, n_in, in, n_out, out);
  ck_assert_int_ne(n, NBL_NONE);
  return n;
}

static nbl_rt_tensor view_f32(float *data, int rank, const int64_t *dims) {
  nbl_rt_tensor t = {.dtype = NBL_DT_FLOAT, .rank = rank, .data = data};
  int64_t n = 1;
  for (int d = 0; d < rank; d++) n *= (t.dims[d] = dims[d]);
  t.numel = n;
  t.nbytes = (size_t)n * 4;
  return t;
}

/* y = ((x + x) * x + (x + x)) - x, through a chain of intermediates;
 * hand-computed: y = 2x^2 + x. Input x has a symbolic length. */
static nbl_model *chain_model(void) {
  nbl_model *m = nbl_model_new();
  nbl_model_set_opset(m, "", 13);
  nbl_graph *g = m->graph;
  nbl_id x = nbl_graph_add_value(g, "x");
  nbl_type_set_tensor(m->arena, &g->values[x].type, NBL_DT_FLOAT, 1, (int64_t[]){-1});
  nbl_graph_add_input(g, x);
  nbl_id a = val(g, "a", 0, 0, NULL), b = val(g, "b", 0, 0, NULL), c = val(g, "c", 0, 0, NULL);
  nbl_id y = val(g, "y", 0, 0, NULL);
  node(g, "Add", "add0", 2, (nbl_id[]){x, x}, 1, &a);
  node(g, "Mul", "mul0", 2, (nbl_id[]){a, x}, 1, &b);
  node(g, "Add", "add1", 2, (nbl_id[]){b, a}, 1, &c);
  node(g, "Sub", "sub0", 2, (nbl_id[]){c, x}, 1, &y);
  nbl_graph_add_output(g, y);
  return m;
}

static void check_chain(nbl_engine *e, int n) {
  float *x = malloc(sizeof(float) * (size_t)n);
  for (int i = 0; i < n; i++) x[i] = (float)i * 0.5f - 3.0f;
  int64_t d = n;
  nbl_rt_tensor v = view_f32(x, 1, &d);
  ck_assert_int_eq(nbl_engine_bind(e, "x", &v), NBL_OK);
  ck_assert_msg(nbl_engine_run(e) == NBL_OK, "%s", nbl_last_error());
  const nbl_rt_tensor *y = nbl_engine_output(e, 0);
  ck_assert_ptr_nonnull(y);
  ck_assert_int_eq(y->rank, 1);
  ck_assert_int_eq(y->dims[0], n);
  for (int i = 0; i < n; i++)
    ck_assert_float_eq(((float *)y->data)[i], 2.0f * x[i] * x[i] + x[i]);
  free(x);
}

START_TEST(test_arena_reuse_same_results) {
  nbl_model *m = chain_model();
  nbl_engine *e, *plain;
  nbl_engine_options o = {.threads = 1};
  ck_assert_int_eq(nbl_engine_create(m, NULL, &o, &e), NBL_OK);
  o.no_arena = 1;
  ck_assert_int_eq(nbl_engine_create(m, NULL, &o, &plain), NBL_OK);
  for (int r = 0; r < 3; r++) {
    check_chain(e, 1000);
    check_chain(plain, 1000);
  }
  nbl_engine_stats st;
  nbl_engine_get_stats(e, &st);
  ck_assert_int_eq(st.runs, 3);
  ck_assert_int_eq(st.plans, 1);
  /* a, b, c are intermediates (4000 bytes each); y is a graph output (malloc).
   * Liveness: a dies after add1, b after add1, c after sub0; a and b are
   * alive together, c overlaps both at add1 -> three live buffers at most,
   * but the arena must be smaller than keeping every value plus the output. */
  ck_assert_uint_le(st.arena_bytes, 3 * 4032);
  ck_assert_uint_ge(st.arena_bytes, 3 * 4000);
  ck_assert_int_eq(st.arena_hits, 2 * 3); /* runs 2 and 3: a, b, c from the arena */
  ck_assert_int_ge(st.frees_early, 3 * 3);
  nbl_engine_get_stats(plain, &st);
  ck_assert_int_eq(st.arena_hits, 0);
  ck_assert_int_eq(st.arena_bytes, 0);
  nbl_engine_free(e);
  nbl_engine_free(plain);
  nbl_model_free(m);
}
END_TEST

START_TEST(test_replan_on_shape_change) {
  nbl_model *m = chain_model();
  nbl_engine *e;
  ck_assert_int_eq(nbl_engine_create(m, NULL, NULL, &e), NBL_OK);
  nbl_engine_stats st;
  check_chain(e, 16);
  check_chain(e, 16);
  nbl_engine_get_stats(e, &st);
  ck_assert_int_eq(st.plans, 1);
  ck_assert_int_eq(st.arena_hits, 3);
  check_chain(e, 4096); /* bigger: new plan, nothing from the old arena */
  nbl_engine_get_stats(e, &st);
  ck_assert_int_eq(st.plans, 2);
  ck_assert_int_eq(st.arena_hits, 3);
  ck_assert_uint_ge(st.arena_bytes, 3 * 4096 * 4);
  check_chain(e, 4096);
  check_chain(e, 7); /* smaller again: re-plan */
  check_chain(e, 7);
  nbl_engine_get_stats(e, &st);
  ck_assert_int_eq(st.plans, 3);
  ck_assert_int_eq(st.arena_hits, 9);
  ck_assert_uint_lt(st.arena_bytes, 4096);
  nbl_engine_free(e);
  nbl_model_free(m);
}
END_TEST

/* Add -> Softmax -> ReduceSum on [256 x 1024] through kernels that split
 * their work with nbl_parallel_for: 1 and 2 threads give bit-identical
 * results, the pool really ran, and the values match a double reference. */
START_TEST(test_threads_identical) {
  enum { R = 256, C = 1024 };
  nbl_model *m = nbl_model_new();
  nbl_model_set_opset(m, "", 13);
  nbl_graph *g = m->graph;
  nbl_id x = val(g, "x", NBL_DT_FLOAT, 2, (int64_t[]){R, C});
  nbl_graph_add_input(g, x);
  nbl_id ax = val(g, "axes", NBL_DT_INT64, 1, (int64_t[]){1});
  int64_t one = 1;
  nbl_graph_set_initializer(g, ax, nbl_tensor_new(m->arena, "axes", NBL_DT_INT64, 1, (int64_t[]){1}, &one));
  nbl_id a = val(g, "a", 0, 0, NULL), y = val(g, "y", 0, 0, NULL), s = val(g, "s", 0, 0, NULL);
  node(g, "Add", "add", 2, (nbl_id[]){x, x}, 1, &a);
  nbl_id sm = node(g, "Softmax", "sm", 1, &a, 1, &y);
  nbl_node_set_attr_int(g, sm, "axis", 1);
  nbl_id rs = node(g, "ReduceSum", "rs", 2, (nbl_id[]){y, ax}, 1, &s);
  nbl_node_set_attr_int(g, rs, "keepdims", 0);
  nbl_graph_add_output(g, y);
  nbl_graph_add_output(g, s);
  float *X = malloc(sizeof(float) * R * C);
  unsigned seed = 1;
  for (int i = 0; i < R * C; i++)
    X[i] = (float)((seed = seed * 1103515245u + 12345u) >> 16) / 8192.0f - 4.0f;
  float *res[2], *sums[2];
  for (int t = 0; t < 2; t++) {
    nbl_engine *e;
    nbl_engine_options o = {.threads = t + 1};
    ck_assert_int_eq(nbl_engine_create(m, NULL, &o, &e), NBL_OK);
    nbl_rt_tensor vx = view_f32(X, 2, (int64_t[]){R, C});
    ck_assert_int_eq(nbl_engine_bind(e, "x", &vx), NBL_OK);
    ck_assert_msg(nbl_engine_run(e) == NBL_OK, "%s", nbl_last_error());
    const nbl_rt_tensor *o0 = nbl_engine_output(e, 0), *o1 = nbl_engine_output(e, 1);
    ck_assert_int_eq(o0->dims[0], R);
    ck_assert_int_eq(o0->dims[1], C);
    ck_assert_int_eq(o1->rank, 1);
    ck_assert_int_eq(o1->dims[0], R);
    res[t] = malloc(sizeof(float) * R * C);
    sums[t] = malloc(sizeof(float) * R);
    memcpy(res[t], o0->data, sizeof(float) * R * C);
    memcpy(sums[t], o1->data, sizeof(float) * R);
    nbl_engine_stats st;
    nbl_engine_get_stats(e, &st);
    if (t == 0) ck_assert_int_eq(st.parallel_regions, 0);
    else ck_assert_int_gt(st.parallel_regions, 0);
    nbl_engine_free(e);
  }
  ck_assert_int_eq(memcmp(res[0], res[1], sizeof(float) * R * C), 0);
  ck_assert_int_eq(memcmp(sums[0], sums[1], sizeof(float) * R), 0);
  for (int r = 0; r < R; r += 37) {
    double mx = -1e300, z = 0;
    for (int c = 0; c < C; c++) mx = fmax(mx, 2.0 * X[r * C + c]);
    for (int c = 0; c < C; c++) z += exp(2.0 * X[r * C + c] - mx);
    for (int c = 0; c < C; c += 101)
      ck_assert_double_eq_tol(res[0][r * C + c], exp(2.0 * X[r * C + c] - mx) / z, 1e-6);
    ck_assert_double_eq_tol(sums[0][r], 1.0, 1e-4);
  }
  free(X);
  for (int t = 0; t < 2; t++) {
    free(res[t]);
    free(sums[t]);
  }
  nbl_model_free(m);
}
END_TEST

START_TEST(test_unsupported_op_message) {
  nbl_model *m = nbl_model_new();
  nbl_model_set_opset(m, "", 13);
  nbl_graph *g = m->graph;
  nbl_id x = val(g, "x", NBL_DT_FLOAT, 1, (int64_t[]){2});
  nbl_graph_add_input(g, x);
  nbl_id y = val(g, "y", 0, 0, NULL), z = val(g, "z", 0, 0, NULL);
  node(g, "Relu", "r", 1, &x, 1, &y);
  node(g, "Foo", "x", 1, &y, 1, &z);
  nbl_graph_add_output(g, z);
  nbl_engine *e = NULL;
  ck_assert_int_eq(nbl_engine_create(m, NULL, NULL, &e), NBL_ERR_UNSUPPORTED);
  ck_assert_ptr_null(e);
  ck_assert_str_eq(nbl_last_error(), "<model>: node 'x' (Foo, domain '', opset 13): no kernel");
  nbl_session *s = NULL;
  ck_assert_int_eq(nbl_session_create(m, NULL, &s), NBL_ERR_UNSUPPORTED);
  ck_assert_str_eq(nbl_last_error(), "<model>: node 'x' (Foo, domain '', opset 13): no kernel");
  /* an op outside its opset range is unsupported too (Range exists from 11) */
  nbl_model *m2 = nbl_model_new();
  nbl_model_set_opset(m2, "", 10);
  g = m2->graph;
  nbl_id a = val(g, "a", NBL_DT_FLOAT, 0, NULL), r = val(g, "r", 0, 0, NULL);
  nbl_graph_add_input(g, a);
  node(g, "Range", "rg", 3, (nbl_id[]){a, a, a}, 1, &r);
  nbl_graph_add_output(g, r);
  ck_assert_int_eq(nbl_engine_create(m2, NULL, NULL, &e), NBL_ERR_UNSUPPORTED);
  ck_assert_str_eq(nbl_last_error(), "<model>: node 'rg' (Range, domain '', opset 10): no kernel");
  nbl_model_free(m2);
  nbl_model_free(m);
}
END_TEST

/* If: then = x + y (y computed in the main graph, captured), else = x * k
 * (k an initializer of the main graph, captured). */
START_TEST(test_if_outer_scope) {
  nbl_model *m = nbl_model_new();
  nbl_model_set_opset(m, "", 13);
  nbl_graph *g = m->graph;
  nbl_id c = val(g, "c", NBL_DT_BOOL, 0, NULL), x = val(g, "x", NBL_DT_FLOAT, 1, (int64_t[]){3});
  nbl_graph_add_input(g, c);
  nbl_graph_add_input(g, x);
  nbl_id k = val(g, "k", NBL_DT_FLOAT, 1, (int64_t[]){1});
  float kv = 10.0f;
  nbl_graph_set_initializer(g, k, nbl_tensor_new(m->arena, "k", NBL_DT_FLOAT, 1, (int64_t[]){1}, &kv));
  nbl_id y = val(g, "y", 0, 0, NULL), out = val(g, "out", 0, 0, NULL);
  node(g, "Neg", "neg", 1, &x, 1, &y);
  nbl_id ifn = node(g, "If", "if", 1, &c, 1, &out);
  nbl_graph_add_output(g, out);
  nbl_graph *tg = nbl_graph_new(m, g, "then");
  nbl_id tx = nbl_graph_add_value(tg, "x"), ty = nbl_graph_add_value(tg, "y");
  tg->values[tx].flags |= NBL_VAL_OUTER;
  tg->values[ty].flags |= NBL_VAL_OUTER;
  nbl_id to = nbl_graph_add_value(tg, "t_out");
  nbl_graph_add_node(tg, "Add", "", "t_add", 2, (nbl_id[]){tx, ty}, 1, &to);
  nbl_graph_add_output(tg, to);
  nbl_graph *eg = nbl_graph_new(m, g, "else");
  nbl_id ex = nbl_graph_add_value(eg, "x"), ek = nbl_graph_add_value(eg, "k");
  eg->values[ex].flags |= NBL_VAL_OUTER;
  eg->values[ek].flags |= NBL_VAL_OUTER;
  nbl_id eo = nbl_graph_add_value(eg, "e_out");
  nbl_graph_add_node(eg, "Mul", "", "e_mul", 2, (nbl_id[]){ex, ek}, 1, &eo);
  nbl_graph_add_output(eg, eo);
  nbl_node_set_attr_graph(g, ifn, "then_branch", tg);
  nbl_node_set_attr_graph(g, ifn, "else_branch", eg);
  nbl_session *s;
  ck_assert_msg(nbl_session_create(m, NULL, &s) == NBL_OK, "%s", nbl_last_error());
  float xv[3] = {1, -2, 3.5f};
  for (int cond = 0; cond < 2; cond++) {
    uint8_t cb = (uint8_t)cond;
    nbl_host_tensor in[2] = {{.name = "c", .dtype = NBL_DT_BOOL, .rank = 0, .data = &cb, .nbytes = 1},
                             {.name = "x", .dtype = NBL_DT_FLOAT, .rank = 1, .dims = {3}, .data = xv, .nbytes = 12}};
    const nbl_host_tensor *o;
    ck_assert_msg(nbl_session_run(s, 2, in, &o) == NBL_OK, "%s", nbl_last_error());
    ck_assert_str_eq(o[0].name, "out");
    ck_assert_int_eq(o[0].rank, 1);
    ck_assert_int_eq(o[0].dims[0], 3);
    for (int i = 0; i < 3; i++)
      ck_assert_float_eq(((float *)o[0].data)[i], cond ? 0.0f : xv[i] * 10.0f);
    float copy[3];
    ck_assert_int_eq(nbl_session_copy_output(s, 0, copy, sizeof copy), NBL_OK);
    ck_assert_int_eq(memcmp(copy, o[0].data, 12), 0);
    ck_assert_int_eq(nbl_session_copy_output(s, 0, copy, 8), NBL_ERR_INVALID_ARGUMENT);
  }
  nbl_session_free(s);
  nbl_model_free(m);
}
END_TEST

/* Loop 4 times: v <- v + d (d = 2*x computed outside, captured), scan output
 * v each iteration; the body's condition stays true. */
START_TEST(test_loop_outer_scope) {
  nbl_model *m = nbl_model_new();
  nbl_model_set_opset(m, "", 13);
  nbl_graph *g = m->graph;
  nbl_id x = val(g, "x", NBL_DT_FLOAT, 1, (int64_t[]){2});
  nbl_graph_add_input(g, x);
  nbl_id M = val(g, "M", NBL_DT_INT64, 0, NULL), cond = val(g, "cond", NBL_DT_BOOL, 0, NULL);
  int64_t mv = 4;
  uint8_t cv = 1;
  nbl_graph_set_initializer(g, M, nbl_tensor_new(m->arena, "M", NBL_DT_INT64, 0, NULL, &mv));
  nbl_graph_set_initializer(g, cond, nbl_tensor_new(m->arena, "cond", NBL_DT_BOOL, 0, NULL, &cv));
  nbl_id d = val(g, "d", 0, 0, NULL), vf = val(g, "v_final", 0, 0, NULL), sc = val(g, "scan", 0, 0, NULL);
  node(g, "Add", "dbl", 2, (nbl_id[]){x, x}, 1, &d);
  nbl_id ln = node(g, "Loop", "loop", 3, (nbl_id[]){M, cond, x}, 2, (nbl_id[]){vf, sc});
  nbl_graph_add_output(g, vf);
  nbl_graph_add_output(g, sc);
  nbl_graph *b = nbl_graph_new(m, g, "body");
  nbl_id it = nbl_graph_add_value(b, "it"), ci = nbl_graph_add_value(b, "c_in"),
         vi = nbl_graph_add_value(b, "v_in"), bd = nbl_graph_add_value(b, "d");
  b->values[bd].flags |= NBL_VAL_OUTER;
  nbl_graph_add_input(b, it);
  nbl_graph_add_input(b, ci);
  nbl_graph_add_input(b, vi);
  nbl_id co = nbl_graph_add_value(b, "c_out"), vo = nbl_graph_add_value(b, "v_out"),
         so = nbl_graph_add_value(b, "s_out");
  nbl_graph_add_node(b, "Identity", "", "cid", 1, &ci, 1, &co);
  nbl_graph_add_node(b, "Add", "", "acc", 2, (nbl_id[]){vi, bd}, 1, &vo);
  nbl_graph_add_node(b, "Identity", "", "sid", 1, &vo, 1, &so);
  nbl_graph_add_output(b, co);
  nbl_graph_add_output(b, vo);
  nbl_graph_add_output(b, so);
  nbl_node_set_attr_graph(g, ln, "body", b);
  for (int threads = 1; threads <= 2; threads++) {
    nbl_engine *e;
    nbl_engine_options o = {.threads = threads};
    ck_assert_msg(nbl_engine_create(m, NULL, &o, &e) == NBL_OK, "%s", nbl_last_error());
    float xv[2] = {1.5f, -0.25f};
    nbl_rt_tensor xt = view_f32(xv, 1, (int64_t[]){2});
    for (int run = 0; run < 2; run++) {
      ck_assert_int_eq(nbl_engine_bind(e, "x", &xt), NBL_OK);
      ck_assert_msg(nbl_engine_run(e) == NBL_OK, "%s", nbl_last_error());
      const nbl_rt_tensor *v = nbl_engine_output(e, 0), *s = nbl_engine_output(e, 1);
      ck_assert_int_eq(v->rank, 1);
      ck_assert_int_eq(s->rank, 2);
      ck_assert_int_eq(s->dims[0], 4);
      ck_assert_int_eq(s->dims[1], 2);
      for (int i = 0; i < 2; i++) {
        ck_assert_float_eq(((float *)v->data)[i], xv[i] + 4 * 2 * xv[i]);
        for (int k = 0; k < 4; k++)
          ck_assert_float_eq(((float *)s->data)[k * 2 + i], xv[i] + (float)(k + 1) * 2 * xv[i]);
      }
    }
    nbl_engine_free(e);
  }
  nbl_model_free(m);
}
END_TEST

/* Initializers are state: written through nbl_engine_state, read by the next run. */
START_TEST(test_state_update_in_place) {
  nbl_model *m = nbl_model_new();
  nbl_model_set_opset(m, "", 13);
  nbl_graph *g = m->graph;
  nbl_id x = val(g, "x", NBL_DT_FLOAT, 1, (int64_t[]){2}), w = val(g, "w", NBL_DT_FLOAT, 1, (int64_t[]){2});
  nbl_graph_add_input(g, x);
  float w0[2] = {1, 2};
  nbl_graph_set_initializer(g, w, nbl_tensor_new(m->arena, "w", NBL_DT_FLOAT, 1, (int64_t[]){2}, w0));
  nbl_id y = val(g, "y", 0, 0, NULL);
  node(g, "Mul", "mul", 2, (nbl_id[]){x, w}, 1, &y);
  nbl_graph_add_output(g, y);
  nbl_engine *e;
  ck_assert_int_eq(nbl_engine_create(m, NULL, NULL, &e), NBL_OK);
  float xv[2] = {3, 4};
  nbl_rt_tensor xt = view_f32(xv, 1, (int64_t[]){2});
  ck_assert_int_eq(nbl_engine_bind(e, "x", &xt), NBL_OK);
  ck_assert_int_eq(nbl_engine_run(e), NBL_OK);
  ck_assert_float_eq(((float *)nbl_engine_output(e, 0)->data)[1], 8.0f);
  nbl_rt_tensor *ws = nbl_engine_state(e, "w");
  ck_assert_ptr_nonnull(ws);
  ((float *)ws->data)[1] = -0.5f;
  ck_assert_int_eq(nbl_engine_run(e), NBL_OK);
  ck_assert_float_eq(((float *)nbl_engine_output(e, 0)->data)[0], 3.0f);
  ck_assert_float_eq(((float *)nbl_engine_output(e, 0)->data)[1], -2.0f);
  /* the model's own tensor is untouched (copy on first write access) */
  ck_assert_float_eq(((const float *)g->values[w].init->data)[1], 2.0f);
  ck_assert_ptr_null(nbl_engine_state(e, "x"));
  /* a missing input is an error naming it */
  ck_assert_int_eq(nbl_engine_bind(e, "x", NULL), NBL_OK);
  ck_assert_int_eq(nbl_engine_run(e), NBL_ERR_INVALID_ARGUMENT);
  ck_assert_str_eq(nbl_last_error(), "<model>: input 'x' was not given");
  /* wrong dtype / shape are caught at bind time */
  nbl_rt_tensor bad = xt;
  bad.dtype = NBL_DT_INT32;
  ck_assert_int_eq(nbl_engine_bind(e, "x", &bad), NBL_ERR_INVALID_ARGUMENT);
  ck_assert_str_eq(nbl_last_error(), "input 'x': got element type int32, the model expects float");
  bad = view_f32(xv, 1, (int64_t[]){1});
  ck_assert_int_eq(nbl_engine_bind(e, "x", &bad), NBL_ERR_INVALID_ARGUMENT);
  nbl_engine_free(e);
  nbl_model_free(m);
}
END_TEST

START_TEST(test_npy_against_numpy) {
  nbl_arena *a = nbl_arena_new();
  nbl_tensor *t = NULL;
  ck_assert_int_eq(nbl_tensor_parse_npy(npy_f32, sizeof npy_f32 - 1, "f32", a, &t), NBL_OK);
  ck_assert_int_eq(t->dtype, NBL_DT_FLOAT);
  ck_assert_int_eq(t->rank, 2);
  ck_assert_int_eq(t->dims[0], 2);
  ck_assert_int_eq(t->dims[1], 3);
  const float want[6] = {1.5f, -2.0f, 3.25f, 0.0f, 1e-3f, -7.0f};
  ck_assert_uint_eq(t->nbytes, sizeof want);
  ck_assert_int_eq(memcmp(t->data, want, sizeof want), 0);
  char path[] = "/tmp/nbl_rt_npyXXXXXX";
  int fd = mkstemp(path);
  ck_assert_int_ge(fd, 0);
  close(fd);
  /* writing reproduces NumPy's bytes exactly */
  ck_assert_int_eq(nbl_tensor_save_npy(t, path), NBL_OK);
  FILE *f = fopen(path, "rb");
  unsigned char buf[512];
  size_t n = fread(buf, 1, sizeof buf, f);
  fclose(f);
  ck_assert_uint_eq(n, sizeof npy_f32 - 1);
  ck_assert_int_eq(memcmp(buf, npy_f32, n), 0);
  nbl_buffer_unref(t->buf);
  ck_assert_int_eq(nbl_tensor_parse_npy(npy_i64, sizeof npy_i64 - 1, "i64", a, &t), NBL_OK);
  ck_assert_int_eq(t->dtype, NBL_DT_INT64);
  ck_assert_int_eq(t->rank, 1);
  ck_assert_int_eq(((const int64_t *)t->data)[2], 300);
  ck_assert_int_eq(nbl_tensor_save_npy(t, path), NBL_OK);
  f = fopen(path, "rb");
  n = fread(buf, 1, sizeof buf, f);
  fclose(f);
  ck_assert_uint_eq(n, sizeof npy_i64 - 1);
  ck_assert_int_eq(memcmp(buf, npy_i64, n), 0);
  nbl_buffer_unref(t->buf);
  /* truncated data and big-endian are errors, not crashes */
  ck_assert_int_eq(nbl_tensor_parse_npy(npy_f32, sizeof npy_f32 - 5, "short", a, &t),
                   NBL_ERR_PARSE);
  ck_assert_str_eq(nbl_last_error(), "short: .npy data is truncated (20 bytes, 24 needed)");
  unsigned char be[sizeof npy_f32];
  memcpy(be, npy_f32, sizeof be);
  be[21] = '>';
  ck_assert_int_eq(nbl_tensor_parse_npy(be, sizeof be - 1, "be", a, &t), NBL_ERR_UNSUPPORTED);
  nbl_arena_free(a);
  /* .npy through the public API: the file written above reads back */
  nbl_host_tensor r;
  char npy[64];
  snprintf(npy, sizeof npy, "%s.npy", path);
  ck_assert_int_eq(rename(path, npy), 0);
  ck_assert_msg(nbl_tensor_read(npy, &r) == NBL_OK, "%s", nbl_last_error());
  ck_assert_ptr_null(r.name);
  ck_assert_int_eq(r.dtype, NBL_DT_INT64);
  ck_assert_int_eq(r.rank, 1);
  ck_assert_int_eq(((const int64_t *)r.data)[2], 300);
  ck_assert_msg(nbl_tensor_write(npy, &r) == NBL_OK, "%s", nbl_last_error());
  nbl_host_tensor_free(&r);
  f = fopen(npy, "rb");
  n = fread(buf, 1, sizeof buf, f);
  fclose(f);
  ck_assert_uint_eq(n, sizeof npy_i64 - 1);
  ck_assert_int_eq(memcmp(buf, npy_i64, n), 0);
  unlink(npy);
  /* .pb round trip through the public API */
  char pb[64];
  snprintf(pb, sizeof pb, "%s.pb", path);
  int64_t iv[3] = {7, -8, 9};
  nbl_host_tensor h = {.name = "ints", .dtype = NBL_DT_INT64, .rank = 2, .dims = {1, 3}, .data = iv, .nbytes = 24};
  ck_assert_msg(nbl_tensor_write(pb, &h) == NBL_OK, "%s", nbl_last_error());
  ck_assert_msg(nbl_tensor_read(pb, &r) == NBL_OK, "%s", nbl_last_error());
  ck_assert_str_eq(r.name, "ints");
  ck_assert_int_eq(r.dtype, NBL_DT_INT64);
  ck_assert_int_eq(r.rank, 2);
  ck_assert_int_eq(r.dims[1], 3);
  ck_assert_int_eq(memcmp(r.data, iv, 24), 0);
  nbl_host_tensor_free(&r);
  unlink(pb);
}
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("runtime");
  TCase *tc = tcase_create("core");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_arena_reuse_same_results);
  tcase_add_test(tc, test_replan_on_shape_change);
  tcase_add_test(tc, test_threads_identical);
  tcase_add_test(tc, test_unsupported_op_message);
  tcase_add_test(tc, test_if_outer_scope);
  tcase_add_test(tc, test_loop_outer_scope);
  tcase_add_test(tc, test_state_update_in_place);
  tcase_add_test(tc, test_npy_against_numpy);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
