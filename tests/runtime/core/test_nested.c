/* test_nested.c - values captured from every enclosing graph, three levels
 * deep (If in If; Loop in If with a Scan in the Loop): run against
 * hand-computed results, after a save/load round trip and after the passes
 * "default,dce". And a run of an endless Loop (with a Scan inside) stopped
 * from another thread by nbl_session_terminate. */
#include <check.h>
#include <pthread.h>
#include <time.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ir/ir.h"
#include "nibble.h"

static nbl_id val(nbl_graph *g, const char *name) {
  nbl_id v = nbl_graph_add_value(g, name);
  ck_assert_int_ne(v, NBL_NONE);
  return v;
}

/* A value of sub captured by name from an enclosing graph. */
static nbl_id outer(nbl_graph *sub, const char *name) {
  nbl_id v = val(sub, name);
  sub->values[v].flags |= NBL_VAL_OUTER;
  return v;
}

static void op(nbl_graph *g, const char *type, const char *name, int n_in, const nbl_id *in,
               nbl_id out) {
  ck_assert_int_ne(nbl_graph_add_node(g, type, "", name, n_in, in, 1, &out), NBL_NONE);
}

static nbl_model *main_graph(nbl_id *c, nbl_id *x, nbl_id *a) {
  nbl_model *m = nbl_model_new();
  nbl_model_set_opset(m, "", 13);
  nbl_graph *g = m->graph;
  *c = val(g, "c");
  nbl_type_set_tensor(m->arena, &g->values[*c].type, NBL_DT_BOOL, 0, NULL);
  *x = val(g, "x");
  nbl_type_set_tensor(m->arena, &g->values[*x].type, NBL_DT_FLOAT, 1, (int64_t[]){2});
  nbl_graph_add_input(g, *c);
  nbl_graph_add_input(g, *x);
  *a = val(g, "a");
  op(g, "Add", "a_add", 2, (nbl_id[]){*x, *x}, *a); /* a = 2x, level 0 */
  return m;
}

/* a2 = a*x (level 0, two nodes from the inputs);
 * If(c) { b = a*a; bb = b + a;
 *         If(c) { r = (bb + a2) + x } else { r = bb - a2 } } else { -a }
 * The innermost branches use bb (level 1, two nodes deep), a2 and x
 * (level 0, neither used by level 1). */
static nbl_model *if_in_if(void) {
  nbl_id c, x, a;
  nbl_model *m = main_graph(&c, &x, &a);
  nbl_graph *g = m->graph;
  nbl_id a2 = val(g, "a2");
  nbl_id out = val(g, "out");
  /* stored before the producer of a2 (as a pass appending nodes leaves it):
   * the planner and the saver must order them */
  nbl_id if1 = nbl_graph_add_node(g, "If", "", "if1", 1, &c, 1, &out);
  op(g, "Mul", "a2_mul", 2, (nbl_id[]){a, x}, a2);
  nbl_graph_add_output(g, out);
  nbl_graph *t1 = nbl_graph_new(m, g, "then1");
  nbl_id b = val(t1, "b"), bb = val(t1, "bb"), r1 = val(t1, "r1");
  nbl_id ta = outer(t1, "a");
  op(t1, "Mul", "b_mul", 2, (nbl_id[]){ta, ta}, b);
  op(t1, "Add", "bb_add", 2, (nbl_id[]){b, ta}, bb);
  nbl_id c1 = outer(t1, "c");
  nbl_id if2 = nbl_graph_add_node(t1, "If", "", "if2", 1, &c1, 1, &r1);
  nbl_graph_add_output(t1, r1);
  nbl_graph *t2 = nbl_graph_new(m, t1, "then2");
  nbl_id s = val(t2, "s"), r2 = val(t2, "r2");
  op(t2, "Add", "s_add", 2, (nbl_id[]){outer(t2, "bb"), outer(t2, "a2")}, s);
  op(t2, "Add", "r_add", 2, (nbl_id[]){s, outer(t2, "x")}, r2);
  nbl_graph_add_output(t2, r2);
  nbl_graph *e2 = nbl_graph_new(m, t1, "else2");
  nbl_id r3 = val(e2, "r3");
  op(e2, "Sub", "r_sub", 2, (nbl_id[]){outer(e2, "bb"), outer(e2, "a2")}, r3);
  nbl_graph_add_output(e2, r3);
  nbl_node_set_attr_graph(t1, if2, "then_branch", t2);
  nbl_node_set_attr_graph(t1, if2, "else_branch", e2);
  nbl_graph *e1 = nbl_graph_new(m, g, "else1");
  nbl_id n1 = val(e1, "n1");
  op(e1, "Neg", "neg", 1, (nbl_id[]){outer(e1, "a")}, n1);
  nbl_graph_add_output(e1, n1);
  nbl_node_set_attr_graph(g, if1, "then_branch", t1);
  nbl_node_set_attr_graph(g, if1, "else_branch", e1);
  return m;
}

static void expect_if_in_if(int cond, const float *x, float *want) {
  for (int i = 0; i < 2; i++) {
    float a = 2 * x[i], a2 = a * x[i], b = a * a, bb = b + a;
    want[i] = cond ? (bb + a2) + x[i] : -a;
  }
}

/* If(c) { b = a*x; Loop 3 times (v from x) { l = v + b;
 *           Scan over the elements e of x (state s from l) { s = s + ((a + b) + l) + e };
 *           v = s } } else { -a }
 * The Scan body uses l (Loop body, level 2), b (then branch, level 1) and a
 * (level 0); the Loop body uses b and x from two levels. */
static nbl_model *loop_in_if(void) {
  nbl_id c, x, a;
  nbl_model *m = main_graph(&c, &x, &a);
  nbl_graph *g = m->graph;
  nbl_id out = val(g, "out");
  nbl_id if1 = nbl_graph_add_node(g, "If", "", "if1", 1, &c, 1, &out);
  nbl_graph_add_output(g, out);
  nbl_graph *t1 = nbl_graph_new(m, g, "then1");
  nbl_id b = val(t1, "b"), vf = val(t1, "v_final");
  nbl_id tx = outer(t1, "x");
  op(t1, "Mul", "b_mul", 2, (nbl_id[]){outer(t1, "a"), tx}, b);
  nbl_id M = val(t1, "M"), tru = val(t1, "true");
  int64_t mv = 3;
  uint8_t tv = 1;
  nbl_graph_set_initializer(t1, M, nbl_tensor_new(m->arena, "M", NBL_DT_INT64, 0, NULL, &mv));
  nbl_graph_set_initializer(t1, tru, nbl_tensor_new(m->arena, "true", NBL_DT_BOOL, 0, NULL, &tv));
  nbl_id loop = nbl_graph_add_node(t1, "Loop", "", "loop", 3, (nbl_id[]){M, tru, tx},
                                   1, &vf);
  nbl_graph_add_output(t1, vf);
  nbl_graph *body = nbl_graph_new(m, t1, "body");
  nbl_id it = val(body, "it"), ci = val(body, "c_in"), vi = val(body, "v_in");
  nbl_graph_add_input(body, it);
  nbl_graph_add_input(body, ci);
  nbl_graph_add_input(body, vi);
  nbl_id co = val(body, "c_out"), l = val(body, "l"), vo = val(body, "v_out");
  op(body, "Identity", "c_id", 1, &ci, co);
  op(body, "Add", "l_add", 2, (nbl_id[]){vi, outer(body, "b")}, l);
  nbl_id scan = nbl_graph_add_node(body, "Scan", "", "scan", 2, (nbl_id[]){l, outer(body, "x")}, 1, &vo);
  nbl_node_set_attr_int(body, scan, "num_scan_inputs", 1);
  nbl_graph_add_output(body, co);
  nbl_graph_add_output(body, vo);
  nbl_graph *sb = nbl_graph_new(m, body, "scan_body");
  nbl_id si = val(sb, "s_in"), e = val(sb, "e");
  nbl_graph_add_input(sb, si);
  nbl_graph_add_input(sb, e);
  nbl_id ab = val(sb, "ab"), abl = val(sb, "abl"), s1 = val(sb, "s1"), so = val(sb, "s_out");
  op(sb, "Add", "ab_add", 2, (nbl_id[]){outer(sb, "a"), outer(sb, "b")}, ab);
  op(sb, "Add", "abl_add", 2, (nbl_id[]){ab, outer(sb, "l")}, abl);
  op(sb, "Add", "s1_add", 2, (nbl_id[]){si, abl}, s1);
  op(sb, "Add", "s_add", 2, (nbl_id[]){s1, e}, so);
  nbl_graph_add_output(sb, so);
  nbl_node_set_attr_graph(body, scan, "body", sb);
  nbl_node_set_attr_graph(t1, loop, "body", body);
  nbl_graph *e1 = nbl_graph_new(m, g, "else1");
  nbl_id n1 = val(e1, "n1");
  op(e1, "Neg", "neg", 1, (nbl_id[]){outer(e1, "a")}, n1);
  nbl_graph_add_output(e1, n1);
  nbl_node_set_attr_graph(g, if1, "then_branch", t1);
  nbl_node_set_attr_graph(g, if1, "else_branch", e1);
  return m;
}

static void expect_loop_in_if(int cond, const float *x, float *want) {
  for (int i = 0; i < 2; i++) {
    float a = 2 * x[i], b = a * x[i];
    if (!cond) {
      want[i] = -a;
      continue;
    }
    float v = x[i];
    for (int k = 0; k < 3; k++) {
      float l = v + b, s = l;
      for (int j = 0; j < 2; j++) s = s + ((a + b) + l) + x[j];
      v = s;
    }
    want[i] = v;
  }
}

typedef void (*expect_fn)(int cond, const float *x, float *want);

static void check_runs(const nbl_model *m, expect_fn expect, const char *what) {
  ck_assert_msg(nbl_model_verify(m) == NBL_OK, "%s: %s", what, nbl_last_error());
  for (int ref = 0; ref < 2; ref++) {
    nbl_session *s;
    nbl_session_options so = {.threads = 1, .reference = ref};
    ck_assert_msg(nbl_session_create(m, &so, &s) == NBL_OK, "%s: %s", what, nbl_last_error());
    float xv[2] = {1.5f, -0.75f};
    for (int cond = 0; cond < 2; cond++) {
      uint8_t cb = (uint8_t)cond;
      nbl_host_tensor in[2] = {
          {.name = "c", .dtype = NBL_DT_BOOL, .rank = 0, .data = &cb, .nbytes = 1},
          {.name = "x", .dtype = NBL_DT_FLOAT, .rank = 1, .dims = {2}, .data = xv, .nbytes = 8}};
      const nbl_host_tensor *o;
      ck_assert_msg(nbl_session_run(s, 2, in, &o) == NBL_OK, "%s (cond %d): %s", what, cond,
                    nbl_last_error());
      float want[2];
      expect(cond, xv, want);
      ck_assert_int_eq(o[0].rank, 1);
      ck_assert_int_eq(o[0].dims[0], 2);
      for (int i = 0; i < 2; i++)
        ck_assert_msg(((float *)o[0].data)[i] == want[i], "%s (cond %d): out[%d] = %g, want %g",
                      what, cond, i, ((float *)o[0].data)[i], want[i]);
    }
    nbl_session_free(s);
  }
}

static nbl_model *round_trip(const nbl_model *m) {
  void *buf;
  size_t len;
  ck_assert_msg(nbl_model_save_buffer(m, &buf, &len) == NBL_OK, "%s", nbl_last_error());
  nbl_model *back;
  ck_assert_msg(nbl_model_load_buffer(buf, len, "nested.onnx", NULL, &back) == NBL_OK, "%s",
                nbl_last_error());
  free(buf);
  /* the saved node list is in ONNX order: the producer of a value only the
   * innermost branches capture comes before the If that holds them */
  nbl_id a2 = nbl_graph_find(back->graph, "a2"), o = nbl_graph_find(back->graph, "out");
  ck_assert_int_ne(o, NBL_NONE);
  if (a2 != NBL_NONE)
    ck_assert_int_lt(back->graph->values[a2].producer, back->graph->values[o].producer);
  /* and the reloaded model prints the same as the original */
  int nd = -1;
  FILE *devnull = fopen("/dev/null", "w");
  ck_assert_int_eq(nbl_model_diff(m, back, devnull, &nd), NBL_OK);
  fclose(devnull);
  ck_assert_int_eq(nd, 0);
  return back;
}

static void check_model(nbl_model *(*build)(void), expect_fn expect) {
  nbl_model *m = build();
  check_runs(m, expect, "as built");
  nbl_model *back = round_trip(m);
  check_runs(back, expect, "after save/load");
  nbl_model_free(back);
  nbl_pipeline *p;
  ck_assert_int_eq(nbl_pipeline_parse("default,dce", &p), NBL_OK);
  nbl_pipeline_options po = {.verify_each = 1, .log = fopen("/dev/null", "w")};
  ck_assert_msg(nbl_pipeline_run(p, m, &po) == NBL_OK, "%s", nbl_last_error());
  fclose(po.log);
  nbl_pipeline_free(p);
  /* infer-shapes typed the output through every level (the shape too
   * through If in If; a Loop's carried value keeps an open shape) */
  const nbl_value *ov = &m->graph->values[nbl_graph_find(m->graph, "out")];
  ck_assert_int_eq(ov->type.kind, NBL_TYPE_TENSOR);
  ck_assert_int_eq(ov->type.elem, NBL_DT_FLOAT);
  if (nbl_graph_find(m->graph, "a2") != NBL_NONE) {
    ck_assert_int_eq(ov->type.rank, 1);
    ck_assert_int_eq(ov->type.dims[0].value, 2);
  }
  check_runs(m, expect, "after default,dce");
  back = round_trip(m);
  check_runs(back, expect, "after default,dce and save/load");
  nbl_model_free(back);
  nbl_model_free(m);
}

START_TEST(test_if_in_if) { check_model(if_in_if, expect_if_in_if); }
END_TEST

START_TEST(test_loop_scan_in_if) { check_model(loop_in_if, expect_loop_in_if); }
END_TEST

/* Loop M times (M an input) { Scan over the elements e of x (state s from v)
 * { s = s + e }; v = s }: v = x + M * (x0 + x1). */
static nbl_model *counted_loop(void) {
  nbl_model *m = nbl_model_new();
  nbl_model_set_opset(m, "", 13);
  nbl_graph *g = m->graph;
  nbl_id M = val(g, "M"), x = val(g, "x"), y = val(g, "y");
  nbl_type_set_tensor(m->arena, &g->values[M].type, NBL_DT_INT64, 0, NULL);
  nbl_type_set_tensor(m->arena, &g->values[x].type, NBL_DT_FLOAT, 1, (int64_t[]){2});
  nbl_graph_add_input(g, M);
  nbl_graph_add_input(g, x);
  nbl_id loop = nbl_graph_add_node(g, "Loop", "", "loop", 3, (nbl_id[]){M, NBL_NONE, x}, 1, &y);
  ck_assert_int_ne(loop, NBL_NONE);
  nbl_graph_add_output(g, y);
  nbl_graph *body = nbl_graph_new(m, g, "body");
  nbl_id it = val(body, "it"), ci = val(body, "c_in"), vi = val(body, "v_in");
  nbl_graph_add_input(body, it);
  nbl_graph_add_input(body, ci);
  nbl_graph_add_input(body, vi);
  nbl_id co = val(body, "c_out"), vo = val(body, "v_out");
  op(body, "Identity", "c_id", 1, &ci, co);
  nbl_id scan = nbl_graph_add_node(body, "Scan", "", "scan", 2, (nbl_id[]){vi, outer(body, "x")}, 1, &vo);
  nbl_node_set_attr_int(body, scan, "num_scan_inputs", 1);
  nbl_graph_add_output(body, co);
  nbl_graph_add_output(body, vo);
  nbl_graph *sb = nbl_graph_new(m, body, "scan_body");
  nbl_id si = val(sb, "s_in"), e = val(sb, "e"), so = val(sb, "s_out");
  nbl_graph_add_input(sb, si);
  nbl_graph_add_input(sb, e);
  op(sb, "Add", "s_add", 2, (nbl_id[]){si, e}, so);
  nbl_graph_add_output(sb, so);
  nbl_node_set_attr_graph(body, scan, "body", sb);
  nbl_node_set_attr_graph(g, loop, "body", body);
  return m;
}

static void *terminate_later(void *arg) {
  struct timespec d = {0, 200 * 1000 * 1000};
  nanosleep(&d, NULL);
  nbl_session_terminate(arg, 1);
  return NULL;
}

static nbl_status run_loop(nbl_session *s, int64_t trips, float *xv) {
  nbl_host_tensor in[2] = {
      {.name = "M", .dtype = NBL_DT_INT64, .rank = 0, .data = &trips, .nbytes = 8},
      {.name = "x", .dtype = NBL_DT_FLOAT, .rank = 1, .dims = {2}, .data = xv, .nbytes = 8}};
  return nbl_session_run(s, 2, in, NULL);
}

START_TEST(test_terminate_from_thread) {
  nbl_model *m = counted_loop();
  float xv[2] = {0.5f, -2.0f};
  for (int threads = 1; threads <= 2; threads++) {
    nbl_session *s;
    nbl_session_options so = {.threads = threads};
    ck_assert_msg(nbl_session_create(m, &so, &s) == NBL_OK, "%s", nbl_last_error());
    ck_assert_msg(run_loop(s, 3, xv) == NBL_OK, "%s", nbl_last_error());
    float y[2];
    ck_assert_int_eq(nbl_session_copy_output(s, 0, y, sizeof y), NBL_OK);
    for (int i = 0; i < 2; i++) ck_assert_float_eq(y[i], xv[i] + 3 * (xv[0] + xv[1]));
    /* 2^40 iterations: runs until the other thread stops it */
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, terminate_later, s), 0);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    nbl_status st = run_loop(s, (int64_t)1 << 40, xv);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    pthread_join(th, NULL);
    ck_assert_int_eq(st, NBL_ERR_TERMINATED);
    ck_assert_msg(strstr(nbl_last_error(), "node 'loop' (Loop)") &&
                      strstr(nbl_last_error(), "run terminated"),
                  "%s", nbl_last_error());
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
    ck_assert_msg(secs >= 0.19 && secs < 10, "stopped after %.3f s", secs);
    /* the request stays until cleared */
    ck_assert_int_eq(run_loop(s, 3, xv), NBL_ERR_TERMINATED);
    nbl_session_terminate(s, 0);
    ck_assert_msg(run_loop(s, 2, xv) == NBL_OK, "%s", nbl_last_error());
    ck_assert_int_eq(nbl_session_copy_output(s, 0, y, sizeof y), NBL_OK);
    for (int i = 0; i < 2; i++) ck_assert_float_eq(y[i], xv[i] + 2 * (xv[0] + xv[1]));
    nbl_session_free(s);
  }
  nbl_session_terminate(NULL, 1); /* allowed */
  nbl_model_free(m);
}
END_TEST

int main(void) {
  Suite *s = suite_create("nested");
  TCase *tc = tcase_create("core");
  tcase_add_test(tc, test_if_in_if);
  tcase_add_test(tc, test_loop_scan_in_if);
  tcase_add_test(tc, test_terminate_from_thread);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
