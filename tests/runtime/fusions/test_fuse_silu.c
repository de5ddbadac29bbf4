/* test_fuse_silu.c - SiLU and HardSwish written out, Mul(x, Sigmoid(x)) and
 * Mul(x, HardSigmoid(x)) in either operand order, run as one node at plan
 * time (silu, runtime/fusions/fuse_silu.c).
 *
 * Each case builds the pattern (or a near miss that must not fuse) and runs
 * it fused (the default) and with NBL_NO_FUSION=all (the two op kernels), at
 * 1 and 2 threads and at every instruction-set cap the CPU allows; the
 * profile says whether a fused step ran. Every output must be the unfused
 * one bit for bit: random data mixed with large and small magnitudes, NaNs
 * of both signs and other payloads, signalling NaNs, +-Inf, -0, denormals
 * and the activations' thresholds, sizes that are no multiple of a vector.
 * The kernel alone (nbl_unary_f32_mul) is checked against nbl_unary_f32 and
 * a float product at every variant, tails and NaN rule included. */
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

static uint32_t rng = 2718;

static const float special_vals[] = {
    1.0f, -1.0f, 0.5f, -0.5f, 3.0f, -3.0f, 2.5f, -2.5f, 6.0f, -6.0f, /* HardSigmoid's corners */
    17.0f, -17.0f, 88.7f, -88.7f, 103.98f, -103.98f, 200.0f, -200.0f, 201.0f, -201.0f,
    1e-20f, -1e-20f, 1e30f, -1e30f, 1e-38f, -1e-38f,
};

static void fill(float *x, int64_t n) {
  ft_fill(&rng, x, n, special_vals, (int)(sizeof special_vals / sizeof *special_vals), 24.0f);
}

enum {
  PLAIN,          /* the pattern */
  OTHER_OPERAND,  /* Mul(act(x), y), y another input: no fusion */
  ACT_OUTPUT,     /* act(x) a graph output too: no fusion */
  SECOND_READER,  /* act(x) also read by a Neg: no fusion */
  DOUBLE_TYPED,   /* x typed double: no fusion */
  UNTYPED_F32,    /* x = Neg(input), untyped: fused */
  UNTYPED_DOUBLE, /* x = Cast(input, double), untyped: fused, run as the two ops */
};

typedef struct scase {
  const char *what;
  const char *act; /* Sigmoid or HardSigmoid */
  int act_first;   /* Mul(act(x), x) */
  int ab;          /* HardSigmoid with alpha and beta of its own */
  int kind;
  int64_t dims[4];
  int fuse; /* expected */
} scase;

static int64_t numel(const scase *c) { return c->dims[0] * c->dims[1] * c->dims[2] * c->dims[3]; }

/* The case's outputs concatenated (malloc'd, *nbytes), whether a fused step
 * ran. fused = 0: NBL_NO_FUSION=all. */
/* ft_run_fn for case cv */
static unsigned char *run(const void *cv, const float *x, const float *y, int threads, nbl_isa isa, int fused,
                          int *fused_ran, size_t *nbytes) {
  const scase *c = cv;
  nbl_model *m = nbl_model_new();
  nbl_model_set_opset(m, "", 13);
  nbl_graph *g = m->graph;
  int64_t n = numel(c);
  nbl_id vin = nbl_graph_add_value(g, "in"), vy = nbl_graph_add_value(g, "y");
  nbl_id vs = nbl_graph_add_value(g, "s"), vz = nbl_graph_add_value(g, "z");
  nbl_id vw = nbl_graph_add_value(g, "w");
  int dbl = c->kind == DOUBLE_TYPED;
  nbl_type_set_tensor(m->arena, &g->values[vin].type, dbl ? NBL_DT_DOUBLE : NBL_DT_FLOAT, 4, c->dims);
  nbl_graph_add_input(g, vin);
  double *xd = NULL;
  nbl_host_tensor feeds[2];
  memset(feeds, 0, sizeof feeds);
  if (dbl) {
    xd = malloc(sizeof(double) * (size_t)n);
    for (int64_t i = 0; i < n; i++) xd[i] = x[i];
  }
  feeds[0] = (nbl_host_tensor){.name = "in", .dtype = dbl ? NBL_DT_DOUBLE : NBL_DT_FLOAT, .rank = 4,
                               .data = dbl ? (void *)xd : (void *)x,
                               .nbytes = (dbl ? sizeof(double) : sizeof(float)) * (size_t)n};
  memcpy(feeds[0].dims, c->dims, sizeof c->dims);
  int nf = 1;
  nbl_id vx = vin;
  if (c->kind == UNTYPED_F32 || c->kind == UNTYPED_DOUBLE) {
    vx = nbl_graph_add_value(g, "x");
    if (c->kind == UNTYPED_F32) {
      nbl_graph_add_node(g, "Neg", "", "neg0", 1, &vin, 1, &vx);
    } else {
      nbl_id k = nbl_graph_add_node(g, "Cast", "", "cast", 1, &vin, 1, &vx);
      nbl_node_set_attr_int(g, k, "to", NBL_DT_DOUBLE);
    }
  }
  nbl_id a = nbl_graph_add_node(g, c->act, "", "act", 1, &vx, 1, &vs);
  if (c->ab) {
    nbl_node_set_attr_float(g, a, "alpha", 1.0f / 6);
    nbl_node_set_attr_float(g, a, "beta", 0.5f);
  }
  nbl_id other = vx;
  if (c->kind == OTHER_OPERAND) {
    nbl_type_set_tensor(m->arena, &g->values[vy].type, NBL_DT_FLOAT, 4, c->dims);
    nbl_graph_add_input(g, vy);
    feeds[1] = feeds[0];
    feeds[1].name = "y";
    feeds[1].data = (void *)y;
    nf = 2;
    other = vy;
  }
  nbl_id mi[2] = {c->act_first ? vs : other, c->act_first ? other : vs};
  nbl_graph_add_node(g, "Mul", "", "mul", 2, mi, 1, &vz);
  nbl_graph_add_output(g, vz);
  if (c->kind == ACT_OUTPUT) nbl_graph_add_output(g, vs);
  if (c->kind == SECOND_READER) {
    nbl_graph_add_node(g, "Neg", "", "neg", 1, &vs, 1, &vw);
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
  char *text = ft_profile(s);
  *fused_ran = strstr(text, "Sigmoid+Mul") != NULL;
  free(text);
  nbl_session_free(s);
  nbl_model_free(m);
  free(xd);
  return out;
}

static void check(const scase *c) {
  int64_t n = numel(c);
  float *x = malloc(sizeof(float) * (size_t)n), *y = malloc(sizeof(float) * (size_t)n);
  fill(x, n);
  fill(y, n);
  ft_fused_as_unfused(c, c->what, c->fuse, run, x, y, n);
  free(x);
  free(y);
}

static const scase cases[] = {
    {"Mul(x, Sigmoid(x))", "Sigmoid", 0, 0, PLAIN, {1, 3, 37, 41}, 1},
    {"Mul(Sigmoid(x), x)", "Sigmoid", 1, 0, PLAIN, {1, 3, 37, 41}, 1},
    {"Mul(x, Sigmoid(x)) large", "Sigmoid", 0, 0, PLAIN, {2, 7, 61, 67}, 1},
    {"Mul(Sigmoid(x), x) large", "Sigmoid", 1, 0, PLAIN, {2, 7, 61, 67}, 1},
    {"Mul(x, Sigmoid(x)) tiny", "Sigmoid", 0, 0, PLAIN, {1, 1, 1, 5}, 1},
    {"Mul(x, HardSigmoid(x))", "HardSigmoid", 0, 0, PLAIN, {1, 5, 19, 23}, 1},
    {"Mul(HardSigmoid(x), x)", "HardSigmoid", 1, 0, PLAIN, {1, 5, 19, 23}, 1},
    {"HardSwish written out", "HardSigmoid", 0, 1, PLAIN, {2, 3, 97, 101}, 1},
    {"HardSwish written out, act first", "HardSigmoid", 1, 1, PLAIN, {2, 3, 97, 101}, 1},
    {"untyped float x", "Sigmoid", 0, 0, UNTYPED_F32, {1, 4, 33, 35}, 1},
    {"untyped double x", "Sigmoid", 0, 0, UNTYPED_DOUBLE, {1, 4, 33, 35}, 1},
    {"untyped double x, HardSigmoid", "HardSigmoid", 1, 1, UNTYPED_DOUBLE, {1, 4, 33, 35}, 1},
    {"Mul(Sigmoid(x), y)", "Sigmoid", 1, 0, OTHER_OPERAND, {1, 3, 37, 41}, 0},
    {"Mul(y, Sigmoid(x))", "Sigmoid", 0, 0, OTHER_OPERAND, {1, 3, 37, 41}, 0},
    {"Sigmoid(x) a graph output", "Sigmoid", 0, 0, ACT_OUTPUT, {1, 3, 37, 41}, 0},
    {"Sigmoid(x) read twice", "Sigmoid", 1, 0, SECOND_READER, {1, 3, 37, 41}, 0},
    {"HardSigmoid(x) read twice", "HardSigmoid", 0, 0, SECOND_READER, {1, 3, 37, 41}, 0},
    {"double x", "Sigmoid", 0, 0, DOUBLE_TYPED, {1, 3, 37, 41}, 0},
};

START_TEST(test_cases) { check(&cases[_i]); }
END_TEST

/* The kernel against the op kernel and a float product with Mul's NaN rule
 * (the first operand's NaN, quieted), every variant, every short length. */

typedef struct mul_case {
  const float *x, *s; /* the test's input and the activation's values of it */
  nbl_uf32 op;
  double al, be;
  int first;
} mul_case;

static nbl_status mul_run(const void *ctx, const float *x, float *y, int64_t n) {
  const mul_case *m = ctx;
  return nbl_unary_f32_mul(m->op, x, y, n, m->al, m->be, m->first);
}

static float mul_want(const void *ctx, int64_t i) {
  const mul_case *m = ctx;
  return m->first ? ft_mul(m->s[i], m->x[i]) : ft_mul(m->x[i], m->s[i]);
}

START_TEST(test_kernel) {
  enum { N = 100003 };
  float *x = malloc(sizeof(float) * N), *s = malloc(sizeof(float) * N), *y = malloc(sizeof(float) * (N + 8));
  fill(x, N);
  const nbl_uf32 ops[2] = {NBL_UF_SIGMOID, NBL_UF_HARDSIGMOID};
  for (int k = 0; k < FT_CAPS; k++) {
    nbl_isa cap;
    if (!ft_cap(k, &cap)) continue;
    nbl_isa prev = nbl_cpu_set_thread_cap(cap);
    for (int o = 0; o < 2; o++)
      for (int first = 0; first <= 1; first++) {
        const mul_case mc = {x, s, ops[o], o ? 0.2 : 0, o ? 0.5 : 0, first};
        ck_assert_int_eq(nbl_unary_f32(ops[o], x, s, N, mc.al, mc.be), NBL_OK);
        char what[64];
        snprintf(what, sizeof what, "cap %d op %d first %d", (int)cap, o, first);
        ft_check_kernel(what, &mc, mul_run, mul_want, x, y, N);
      }
    nbl_cpu_set_thread_cap(prev);
  }
  ck_assert_int_eq(nbl_unary_f32_mul(NBL_UF_EXP, x, y, 4, 0, 0, 0), NBL_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(nbl_unary_f32_mul(NBL_UF_SIGMOID, x, y, -1, 0, 0, 0), NBL_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(nbl_unary_f32_mul(NBL_UF_SIGMOID, NULL, y, 4, 0, 0, 0), NBL_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(nbl_unary_f32_mul(NBL_UF_SIGMOID, NULL, NULL, 0, 0, 0, 0), NBL_OK);
  free(x);
  free(s);
  free(y);
}
END_TEST

/* Off: NBL_NO_FUSION=silu leaves the pattern as two steps. */
START_TEST(test_switch) {
  setenv("NBL_NO_FUSION", "silu", 1);
  float x[5] = {1, 2, 3, 4, 5}, y[5];
  int fu = -1;
  size_t nb = 0;
  scase c = {"switched off", "Sigmoid", 0, 0, PLAIN, {1, 1, 1, 5}, 0};
  unsigned char *o = run(&c, x, y, 1, NBL_ISA_DEFAULT, 1, &fu, &nb);
  unsetenv("NBL_NO_FUSION");
  ck_assert_int_eq(fu, 0);
  free(o);
}
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("fuse_silu");
  TCase *t = tcase_create("silu");
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
