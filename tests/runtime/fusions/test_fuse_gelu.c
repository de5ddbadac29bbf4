/* test_fuse_gelu.c - GELU in its erf form written out, as PyTorch exports it
 * below opset 20: Mul(Mul(x, Add(Erf(Div(x, sqrt 2)), 1)), 0.5), the
 * operands of the Add and the Muls in either order, run as one node at plan
 * time (gelu, runtime/fusions/fuse_gelu.c).
 *
 * Each case builds the pattern (or a near miss that must not fuse) and runs
 * it fused (the default) and with NBL_NO_FUSION=all (the five op kernels),
 * at 1 and 2 threads and at every instruction-set cap the CPU allows; the
 * profile says whether a fused step ran. Every output must be the unfused
 * one bit for bit: random data mixed with large and small magnitudes, NaNs
 * of both signs and other payloads, signalling NaNs, +-Inf, -0, denormals
 * and Erf's thresholds, sizes that are no multiple of a vector; the
 * constants as initializers (scalars and one-element tensors) and as
 * Constant nodes (value and value_float). The kernel alone
 * (nbl_unary_f32_gelu_erf) is checked against nbl_unary_f32's Erf and the
 * float operations at every variant, tails and the NaN rule included. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nibble.h"
#include "ir/ir.h"
#include "runtime/core/cpu.h"
#include "runtime/kernels/unary_f32.h"
#include "test_data.h"
#include "fuse_test.h"

#define C1 0x1.6a09e6p+0f /* sqrt 2 rounded to float: 1.4142135381698608 */

static uint32_t rng = 1414;

static const float special_vals[] = {
    1.0f, -1.0f, 0.5f, -0.5f, 1.2727922f, -1.2727922f, /* erf's 0.9 switch (x / sqrt 2) */
    1.2727921f, -1.2727921f, 1.2727923f, -1.2727923f, 5.5f, -5.5f, 14.85f, -14.85f, /* erfc's 10.5 */
    14.849242f, -14.849242f, 20.0f, -20.0f, 1e-20f, -1e-20f, 1e30f, -1e30f, 1e-38f, -1e-38f,
    C1, -C1, 3.4e38f, -3.4e38f,
};

static void fill(float *x, int64_t n) {
  ft_fill(&rng, x, n, special_vals, (int)(sizeof special_vals / sizeof *special_vals), 12.0f);
}

enum { /* the constants' form */
  INIT,        /* scalar initializers */
  INIT_1,      /* initializers of shape [1] */
  CONST_NODE,  /* Constant nodes, value a scalar tensor */
  CONST_FLOAT, /* Constant nodes, value_float */
  INIT_5D,     /* initializers of shape [1,1,1,1,1]: x broadcast to rank 5 (run as the five ops) */
};

enum {
  PLAIN,          /* the pattern */
  UNTYPED_F32,    /* x = Neg(input), untyped: fused */
  OTHER_X,        /* Mul(y, Add(...)), y another input: no fusion */
  HALF_FIRST,     /* Mul(Mul(x, 0.5), Add(...)): not this fusion's shape */
  WRONG_C1,       /* Div(x, 1.4142137): no fusion */
  WRONG_C2,       /* Add(erf, 2): no fusion */
  WRONG_C3,       /* Mul(v, -0.5): no fusion */
  T_OUTPUT,       /* x / sqrt 2 a graph output too: no fusion */
  E_TWICE,        /* the Erf read by a Neg too: no fusion */
  U_TWICE,        /* the Add read by a Neg too: no fusion */
  V_OUTPUT,       /* x (1 + erf) kept as a graph output: no fusion */
  DOUBLE_TYPED,   /* x typed double (constants double): no fusion */
};

typedef struct gcase {
  const char *what;
  int add_first; /* Add(erf, C2) */
  int x_first;   /* Mul(x, u) */
  int mul_first; /* Mul(v, C3) */
  int form, kind;
  int64_t dims[4];
  int fuse; /* expected */
} gcase;

static int64_t numel(const gcase *c) { return c->dims[0] * c->dims[1] * c->dims[2] * c->dims[3]; }

/* A constant of value val as the case's form says, type dt. */
static nbl_id constant(nbl_model *m, const gcase *c, const char *name, float val, nbl_dtype dt) {
  nbl_graph *g = m->graph;
  nbl_id v = nbl_graph_add_value(g, name);
  static const int64_t ones[5] = {1, 1, 1, 1, 1};
  double dv = val;
  const void *data = dt == NBL_DT_DOUBLE ? (const void *)&dv : (const void *)&val;
  int rank = c->form == INIT_1 ? 1 : c->form == INIT_5D ? 5 : 0;
  if (c->form == CONST_FLOAT && dt == NBL_DT_FLOAT) {
    nbl_id k = nbl_graph_add_node(g, "Constant", "", name, 0, NULL, 1, &v);
    nbl_node_set_attr_float(g, k, "value_float", val);
  } else if (c->form == CONST_NODE || c->form == CONST_FLOAT) {
    nbl_id k = nbl_graph_add_node(g, "Constant", "", name, 0, NULL, 1, &v);
    nbl_node_set_attr_tensor(g, k, "value", nbl_tensor_new(m->arena, name, dt, 0, ones, data));
  } else {
    nbl_graph_set_initializer(g, v, nbl_tensor_new(m->arena, name, dt, rank, ones, data));
  }
  return v;
}

/* The case's outputs concatenated (malloc'd, *nbytes), whether a fused step
 * ran. fused = 0: NBL_NO_FUSION=all. */
/* ft_run_fn for case cv */
static unsigned char *run(const void *cv, const float *x, const float *y, int threads, nbl_isa isa, int fused,
                          int *fused_ran, size_t *nbytes) {
  const gcase *c = cv;
  nbl_model *m = nbl_model_new();
  nbl_model_set_opset(m, "", 13);
  nbl_graph *g = m->graph;
  int64_t n = numel(c);
  int dbl = c->kind == DOUBLE_TYPED;
  nbl_dtype dt = dbl ? NBL_DT_DOUBLE : NBL_DT_FLOAT;
  nbl_id vin = nbl_graph_add_value(g, "in"), vy = nbl_graph_add_value(g, "y");
  nbl_type_set_tensor(m->arena, &g->values[vin].type, dt, 4, c->dims);
  nbl_graph_add_input(g, vin);
  double *xd = NULL;
  nbl_host_tensor feeds[2];
  memset(feeds, 0, sizeof feeds);
  if (dbl) {
    xd = malloc(sizeof(double) * (size_t)n);
    for (int64_t i = 0; i < n; i++) xd[i] = x[i];
  }
  feeds[0] = (nbl_host_tensor){.name = "in", .dtype = dt, .rank = 4, .data = dbl ? (void *)xd : (void *)x,
                               .nbytes = (dbl ? sizeof(double) : sizeof(float)) * (size_t)n};
  memcpy(feeds[0].dims, c->dims, sizeof c->dims);
  int nf = 1;
  nbl_id vx = vin;
  if (c->kind == UNTYPED_F32) {
    vx = nbl_graph_add_value(g, "x");
    nbl_graph_add_node(g, "Neg", "", "neg0", 1, &vin, 1, &vx);
  }
  nbl_id other = vx;
  if (c->kind == OTHER_X) {
    nbl_type_set_tensor(m->arena, &g->values[vy].type, NBL_DT_FLOAT, 4, c->dims);
    nbl_graph_add_input(g, vy);
    feeds[1] = feeds[0];
    feeds[1].name = "y";
    feeds[1].data = (void *)y;
    nf = 2;
    other = vy;
  }
  nbl_id c1 = constant(m, c, "c1", c->kind == WRONG_C1 ? 1.4142137f : C1, dt);
  nbl_id c2 = constant(m, c, "c2", c->kind == WRONG_C2 ? 2.0f : 1.0f, dt);
  nbl_id c3 = constant(m, c, "c3", c->kind == WRONG_C3 ? -0.5f : 0.5f, dt);
  nbl_id vt = nbl_graph_add_value(g, "t"), ve = nbl_graph_add_value(g, "e");
  nbl_id vu = nbl_graph_add_value(g, "u"), vv = nbl_graph_add_value(g, "v");
  nbl_id vz = nbl_graph_add_value(g, "z"), vw = nbl_graph_add_value(g, "w");
  nbl_id di[2] = {vx, c1};
  nbl_graph_add_node(g, "Div", "", "div", 2, di, 1, &vt);
  nbl_graph_add_node(g, "Erf", "", "erf", 1, &vt, 1, &ve);
  nbl_id ai[2] = {c->add_first ? ve : c2, c->add_first ? c2 : ve};
  nbl_graph_add_node(g, "Add", "", "add", 2, ai, 1, &vu);
  if (c->kind == HALF_FIRST) { /* h = Mul(x, 0.5), z = Mul(h, u) */
    nbl_id hi[2] = {c->mul_first ? other : c3, c->mul_first ? c3 : other};
    nbl_graph_add_node(g, "Mul", "", "half", 2, hi, 1, &vv);
    nbl_id mi[2] = {c->x_first ? vv : vu, c->x_first ? vu : vv};
    nbl_graph_add_node(g, "Mul", "", "mul", 2, mi, 1, &vz);
  } else {
    nbl_id mi[2] = {c->x_first ? other : vu, c->x_first ? vu : other};
    nbl_graph_add_node(g, "Mul", "", "mul", 2, mi, 1, &vv);
    nbl_id hi[2] = {c->mul_first ? vv : c3, c->mul_first ? c3 : vv};
    nbl_graph_add_node(g, "Mul", "", "half", 2, hi, 1, &vz);
  }
  nbl_graph_add_output(g, vz);
  if (c->kind == T_OUTPUT) nbl_graph_add_output(g, vt);
  if (c->kind == V_OUTPUT) nbl_graph_add_output(g, vv);
  if (c->kind == E_TWICE || c->kind == U_TWICE) {
    nbl_id r = c->kind == E_TWICE ? ve : vu;
    nbl_graph_add_node(g, "Neg", "", "neg", 1, &r, 1, &vw);
    nbl_graph_add_output(g, vw);
  }
  ck_assert_msg(nbl_graph_verify(g, "test") == NBL_OK, "%s", nbl_last_error());
  nbl_session_options opt = {.threads = threads, .profile = 1, .isa = isa};
  nbl_session *s = NULL;
  if (!fused) setenv("NBL_NO_FUSION", "all", 1);
  nbl_status st = nbl_session_create(m, &opt, &s);
  unsetenv("NBL_NO_FUSION");
  ck_assert_msg(st == NBL_OK, "%s", nbl_last_error());
  int rank0 = 0;
  unsigned char *out = ft_outputs(s, nf, feeds, c->what, nbytes, &rank0);
  ck_assert_int_eq(rank0, c->form == INIT_5D ? 5 : 4); /* x's shape, or broadcast to rank 5 */
  char *text = ft_profile(s);
  *fused_ran = strstr(text, "Gelu(erf)") != NULL;
  if (*fused_ran) ck_assert_msg(!strstr(text, "Erf "), "%s: an Erf step left:\n%s", c->what, text);
  free(text);
  nbl_session_free(s);
  nbl_model_free(m);
  free(xd);
  return out;
}

static void check(const gcase *c) {
  int64_t n = numel(c);
  float *x = malloc(sizeof(float) * (size_t)n), *y = malloc(sizeof(float) * (size_t)n);
  fill(x, n);
  fill(y, n);
  ft_fused_as_unfused(c, c->what, c->fuse, run, x, y, n);
  free(x);
  free(y);
}

static const gcase cases[] = {
    /* the order PyTorch 1.13 exports: Add(erf, 1), Mul(x, u), Mul(v, 0.5) */
    {"PyTorch's order, Constant nodes", 1, 1, 1, CONST_NODE, PLAIN, {1, 3, 37, 41}, 1},
    {"PyTorch's order, initializers", 1, 1, 1, INIT, PLAIN, {1, 3, 37, 41}, 1},
    {"PyTorch's order, [1] initializers", 1, 1, 1, INIT_1, PLAIN, {2, 7, 61, 67}, 1},
    {"PyTorch's order, value_float", 1, 1, 1, CONST_FLOAT, PLAIN, {1, 1, 1, 5}, 1},
    {"Add(1, erf)", 0, 1, 1, INIT, PLAIN, {1, 5, 19, 23}, 1},
    {"Mul(u, x)", 1, 0, 1, CONST_NODE, PLAIN, {1, 5, 19, 23}, 1},
    {"Mul(0.5, v)", 1, 1, 0, INIT, PLAIN, {1, 5, 19, 23}, 1},
    {"every operand swapped", 0, 0, 0, CONST_NODE, PLAIN, {2, 3, 97, 101}, 1},
    {"untyped float x", 1, 1, 1, CONST_NODE, UNTYPED_F32, {1, 4, 33, 35}, 1},
    {"untyped float x, Mul(u, x)", 1, 0, 1, INIT, UNTYPED_F32, {1, 4, 33, 35}, 1},
    {"constants broadcasting x to rank 5", 1, 1, 1, INIT_5D, PLAIN, {1, 3, 37, 41}, 1},
    {"Mul(y, u)", 1, 1, 1, CONST_NODE, OTHER_X, {1, 3, 37, 41}, 0},
    {"Mul(u, y)", 1, 0, 1, CONST_NODE, OTHER_X, {1, 3, 37, 41}, 0},
    {"Mul(Mul(x, 0.5), u)", 1, 1, 1, CONST_NODE, HALF_FIRST, {1, 3, 37, 41}, 0},
    {"another C1", 1, 1, 1, CONST_NODE, WRONG_C1, {1, 3, 37, 41}, 0},
    {"another C2", 1, 1, 1, INIT, WRONG_C2, {1, 3, 37, 41}, 0},
    {"another C3", 1, 1, 1, CONST_NODE, WRONG_C3, {1, 3, 37, 41}, 0},
    {"x / sqrt 2 a graph output", 1, 1, 1, CONST_NODE, T_OUTPUT, {1, 3, 37, 41}, 0},
    {"Erf read twice", 1, 1, 1, CONST_NODE, E_TWICE, {1, 3, 37, 41}, 0},
    {"Add read twice", 1, 1, 1, INIT, U_TWICE, {1, 3, 37, 41}, 0},
    {"x (1 + erf) a graph output", 1, 1, 1, CONST_NODE, V_OUTPUT, {1, 3, 37, 41}, 0},
    {"double x", 1, 1, 1, CONST_NODE, DOUBLE_TYPED, {1, 3, 37, 41}, 0},
    {"double x, initializers", 1, 1, 1, INIT, DOUBLE_TYPED, {1, 3, 37, 41}, 0},
};

START_TEST(test_cases) { check(&cases[_i]); }
END_TEST

/* The chain as the five kernels compute it: Erf by nbl_unary_f32 (e[]),
 * the rest one float operation each; Mul(a, b) with a NaN first operand
 * gives that operand, quieted. */

static float chain_ref(float x, float e, int x_first) {
  volatile float u = e + 1.0f;
  float v = x_first ? ft_mul(x, u) : ft_mul(u, x);
  return ft_mul(v, 0.5f);
}

typedef struct gelu_case {
  const float *x, *e; /* the test's input and Erf of x / sqrt 2 */
  int first;
} gelu_case;

static nbl_status gelu_run(const void *ctx, const float *x, float *y, int64_t n) {
  return nbl_unary_f32_gelu_erf(x, y, n, C1, 1.0f, 0.5f, ((const gelu_case *)ctx)->first);
}

static float gelu_want(const void *ctx, int64_t i) {
  const gelu_case *g = ctx;
  return chain_ref(g->x[i], g->e[i], g->first);
}

START_TEST(test_kernel) {
  enum { N = 100003 };
  float *x = malloc(sizeof(float) * N), *t = malloc(sizeof(float) * N), *e = malloc(sizeof(float) * N);
  float *y = malloc(sizeof(float) * (N + 8));
  fill(x, N);
  for (int64_t i = 0; i < N; i++) {
    volatile float q = x[i] / C1;
    t[i] = q;
  }
  for (int k = 0; k < FT_CAPS; k++) {
    nbl_isa cap;
    if (!ft_cap(k, &cap)) continue;
    nbl_isa prev = nbl_cpu_set_thread_cap(cap);
    ck_assert_int_eq(nbl_unary_f32(NBL_UF_ERF, t, e, N, 0, 0), NBL_OK);
    for (int first = 0; first <= 1; first++) {
      const gelu_case gc = {x, e, first};
      char what[48];
      snprintf(what, sizeof what, "cap %d first %d", (int)cap, first);
      ft_check_kernel(what, &gc, gelu_run, gelu_want, x, y, N);
    }
    nbl_cpu_set_thread_cap(prev);
  }
  ck_assert_int_eq(nbl_unary_f32_gelu_erf(x, y, -1, C1, 1.0f, 0.5f, 1), NBL_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(nbl_unary_f32_gelu_erf(NULL, y, 4, C1, 1.0f, 0.5f, 1), NBL_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(nbl_unary_f32_gelu_erf(x, y, 4, C1, NAN, 0.5f, 1), NBL_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(nbl_unary_f32_gelu_erf(NULL, NULL, 0, C1, 1.0f, 0.5f, 1), NBL_OK);
  free(x);
  free(t);
  free(e);
  free(y);
}
END_TEST

/* Off: NBL_NO_FUSION=gelu leaves the pattern as five steps. */
START_TEST(test_switch) {
  setenv("NBL_NO_FUSION", "gelu", 1);
  float x[5] = {1, 2, 3, 4, 5}, y[5];
  int fu = -1;
  size_t nb = 0;
  gcase c = {"switched off", 1, 1, 1, CONST_NODE, PLAIN, {1, 1, 1, 5}, 0};
  unsigned char *o = run(&c, x, y, 1, NBL_ISA_DEFAULT, 1, &fu, &nb);
  unsetenv("NBL_NO_FUSION");
  ck_assert_int_eq(fu, 0);
  free(o);
}
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("fuse_gelu");
  TCase *t = tcase_create("gelu");
  tcase_set_timeout(t, 300);
  tcase_add_loop_test(t, test_cases, 0, (int)(sizeof cases / sizeof *cases));
  tcase_add_test(t, test_kernel);
  tcase_add_test(t, test_switch);
  suite_add_tcase(s, t);
  return s;
}

int main(void) {
  SRunner *r = srunner_create(suite());
  srunner_run_all(r, CK_NORMAL);
  int failed = srunner_ntests_failed(r);
  srunner_free(r);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
